//! End-to-end: the demo binary against a test nats-server, exporting to an OTLP
//! receiver in this test process.

use std::collections::{HashMap, HashSet};
use std::process::Command;

use nats_otel_testkit::{receiver, NatsServer};

/// Runs the demo with `args` against `server`, exporting to `receiver`; returns
/// the exit code and the JSON summary.
fn run_demo(
    server: &NatsServer,
    receiver: &receiver::Receiver,
    args: &[&str],
) -> (i32, serde_json::Value) {
    let (code, summary, _) = run_demo_output(server, receiver, args);
    (code, summary)
}

/// [`run_demo`], with what the demo printed.
fn run_demo_output(
    server: &NatsServer,
    receiver: &receiver::Receiver,
    args: &[&str],
) -> (i32, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let output = Command::new(env!("CARGO_BIN_EXE_nats-otel-demo"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .env("NATS_URL", server.url())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}");
    let summary = std::fs::read(&json)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or(serde_json::Value::Null);
    (output.status.code().unwrap_or(-1), summary, stdout)
}

fn spans(receiver: &receiver::Receiver) -> Vec<receiver::SpanRecord> {
    receiver.spans()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_trace_spans_four_services_and_the_accounting_adds_up() {
    let server = NatsServer::start();
    let receiver = receiver::start().await.unwrap();
    let (code, summary, stdout) = tokio::task::block_in_place(|| {
        run_demo_output(
            &server,
            &receiver,
            &[
                "--orders",
                "6",
                "--tasks",
                "12",
                "--fail-rate",
                "0.25",
                "--poison-rate",
                "0.25",
                "--seed",
                "3",
            ],
        )
    });
    assert_eq!(code, 0, "summary: {summary}");
    assert_eq!(summary["orders_reserved"], 6);
    assert_eq!(summary["orders_notified"], 6);
    assert_eq!(summary["tasks"], 12);
    let dead = summary["tasks_dead_lettered"].as_u64().unwrap();
    assert_eq!(dead, summary["expected_poison"].as_u64().unwrap());
    assert_eq!(summary["tasks_done"].as_u64().unwrap() + dead, 12);
    assert!(dead > 0, "the seed yields poison tasks");
    // On the user's own server the dead letters stay: the summary says how to
    // work with them.
    let url = server.url();
    assert!(
        stdout.contains(&format!(
            "inspect them with `nats-otel --server {url} dlq ls`"
        )) && stdout.contains(&format!("`nats-otel --server {url} dlq replay --all`")),
        "{stdout}"
    );

    // One order trace reaches at least four services, with the conventions'
    // parent/child relations.
    let spans = spans(&receiver);
    let mut traces: HashMap<Vec<u8>, Vec<&receiver::SpanRecord>> = HashMap::new();
    for span in &spans {
        traces.entry(span.trace_id.clone()).or_default().push(span);
    }
    let order = traces
        .values()
        .find(|t| {
            t.iter().any(|s| s.name == "publish orders.created")
                && t.iter()
                    .map(|s| s.service.as_str())
                    .collect::<HashSet<_>>()
                    .len()
                    >= 4
        })
        .expect("an order trace across four services");
    let by_name = |name: &str, service: &str| {
        order
            .iter()
            .find(|s| s.name == name && s.service == service)
            .copied()
            .unwrap_or_else(|| panic!("{name} in {service}"))
    };
    let publish = by_name("publish orders.created", "order-service");
    for consumer in ["inventory-service", "notification-service"] {
        let process = by_name("process orders.created", consumer);
        assert_eq!(
            process.parent_span_id, publish.span_id,
            "{consumer} is a child of the publish"
        );
        assert!(process.links.iter().any(|(_, id)| *id == publish.span_id));
    }
    let request = by_name("request users.get", "inventory-service");
    let users = by_name("process users.get", "users-service");
    assert_eq!(users.parent_span_id, request.span_id);
    by_name("put RECEIPTS", "notification-service");
    by_name("update STOCK", "inventory-service");

    // The DLQ stream holds exactly the poison tasks.
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut dlq = js.get_stream("DLQ").await.unwrap();
    let info = dlq.info().await.unwrap();
    assert_eq!(info.state.messages, dead, "one dead letter per poison task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_malformed_messages_are_dead_lettered_and_the_run_still_passes() {
    let server = NatsServer::start();
    let receiver = receiver::start().await.unwrap();
    // Before the demo runs: junk on its subjects, with bad or missing trace headers.
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "ORDERS".to_owned(),
        subjects: vec!["orders.>".to_owned()],
        ..Default::default()
    })
    .await
    .unwrap();
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "TASKS".to_owned(),
        subjects: vec!["tasks.>".to_owned()],
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut garbage = async_nats::HeaderMap::new();
    garbage.insert("traceparent", "00-zzzz-not-a-context");
    js.publish_with_headers("orders.created", garbage, "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish("orders.created", "\u{0}\u{1}binary".into())
        .await
        .unwrap()
        .await
        .unwrap();
    js.publish("tasks.email", "[]".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let (code, summary) = tokio::task::block_in_place(|| {
        run_demo(
            &server,
            &receiver,
            &[
                "--orders",
                "4",
                "--tasks",
                "6",
                "--poison-rate",
                "0",
                "--fail-rate",
                "0",
            ],
        )
    });
    assert_eq!(code, 0, "summary: {summary}");
    assert!(
        summary["foreign_dead_letters"].as_u64().unwrap() >= 3,
        "{summary}"
    );
    assert_eq!(summary["orders_reserved"], 4);
    assert_eq!(summary["tasks_done"], 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_task_worker_mid_run_loses_no_task() {
    let server = NatsServer::start();
    let receiver = receiver::start().await.unwrap();
    let (code, summary) = tokio::task::block_in_place(|| {
        run_demo(
            &server,
            &receiver,
            &[
                "--orders",
                "2",
                "--tasks",
                "40",
                "--workers",
                "3",
                "--fail-rate",
                "0",
                "--poison-rate",
                "0",
                "--kill-worker-after",
                "5",
            ],
        )
    });
    assert_eq!(code, 0, "summary: {summary}");
    assert_eq!(summary["tasks_done"], 40);
    assert_eq!(summary["tasks_dead_lettered"], 0);
}

/// Pids of the processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces) start after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let _state = fields.next();
        if fields.next().and_then(|p| p.parse::<u32>().ok()) == Some(pid) {
            found.push(child);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_every_process() {
    use std::io::{BufRead, BufReader};
    let server = NatsServer::start();
    let receiver = receiver::start().await.unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_nats-otel-demo"))
        .args([
            "--orders",
            "100000",
            "--tasks",
            "100000",
            "--timeout",
            "120",
        ])
        .env("NATS_URL", server.url())
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{}", receiver.address),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The banner is printed once every service is ready.
    let stdout = demo.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let banner = lines.next().unwrap().unwrap();
    assert!(banner.starts_with("nats-otel demo:"), "{banner}");
    std::thread::spawn(move || for _ in lines {});
    let children = children_of(demo.id());
    assert!(children.len() >= 6, "services running: {children:?}");

    let status = Command::new("kill")
        .args(["-INT", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::block_in_place(|| demo.wait()).unwrap();
    assert_eq!(exit.code(), Some(130), "interrupted run exits 130");
    for child in children {
        assert!(
            !std::path::Path::new(&format!("/proc/{child}")).exists(),
            "child {child} still running"
        );
    }
}
