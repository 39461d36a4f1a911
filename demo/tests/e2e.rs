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

#[test]
fn bad_flags_and_an_unreachable_server_fail_before_the_run_naming_what_is_wrong() {
    let port = nats_otel_testkit::free_port();
    let unreachable = format!("nats://127.0.0.1:{port}");
    let cases: [(&[&str], Option<&str>, String); 3] = [
        (
            &["--timeout", "0"],
            None,
            "--timeout must be at least 1 second".to_owned(),
        ),
        (
            &["--json", "/nonexistent-dir/summary.json"],
            None,
            "--json /nonexistent-dir/summary.json: cannot write there".to_owned(),
        ),
        (
            &[],
            Some(unreachable.as_str()),
            format!("cannot connect to NATS_URL={unreachable}"),
        ),
    ];
    for (args, url, message) in cases {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nats-otel-demo"));
        command.args(args).env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
        match url {
            Some(url) => command.env("NATS_URL", url),
            // Never reached: the flags are refused first.
            None => command.env("NATS_URL", &unreachable),
        };
        let output = command.output().expect("demo runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(&message), "{args:?}: {stderr}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "",
            "{args:?}: nothing started"
        );
    }
}

/// A GET over a fresh connection: status line, headers (lowercase names) and body.
fn http_get(
    address: &str,
    path: &str,
    origin: Option<&str>,
) -> (String, Vec<(String, String)>, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("web view reachable");
    let origin = origin.map_or(String::new(), |o| format!("Origin: {o}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\n{origin}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn json_at(address: &str, path: &str) -> serde_json::Value {
    let (status, _, body) = http_get(address, path, None);
    assert_eq!(status, "HTTP/1.1 200 OK", "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[test]
fn the_web_view_serves_live_traces_a_service_map_and_dead_letters_until_ctrl_c() {
    use std::io::BufRead;
    let server = NatsServer::start();
    let address = format!("127.0.0.1:{}", nats_otel_testkit::free_port());
    let mut demo = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_nats-otel-demo"))
            .args(["--web", &address, "--orders", "3", "--tasks", "6"])
            .args(["--poison-rate", "0.5", "--fail-rate", "0", "--seed", "3"])
            .env("NATS_URL", server.url())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("demo runs"),
    );
    let mut lines = std::io::BufReader::new(demo.0.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("web view: still serving") {
            break;
        }
    }
    // The services keep running (and exporting) after the scripted run: wait for
    // an order trace across four services or more.
    await_event(&address, "/events", |update| {
        update["traces"].as_array().is_some_and(|traces| {
            traces.iter().any(|t| {
                t["root"] == "publish orders.created"
                    && t["services"].as_array().unwrap().len() >= 4
            })
        })
    });

    let (status, headers, page) = http_get(&address, "/", None);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(page.contains("<title>nats-otel demo: live traces</title>"));
    assert!(page.contains("No authentication"));
    let (_, script_headers, _) = http_get(&address, "/app.js", None);
    assert!(script_headers.contains(&(
        "content-type".to_owned(),
        "text/javascript; charset=utf-8".to_owned()
    )));
    assert!(!headers
        .iter()
        .any(|(k, _)| k.starts_with("access-control-")));

    // The order trace: four services or more, laid out parent before child.
    let traces = json_at(&address, "/api/traces");
    let order = traces
        .as_array()
        .unwrap()
        .iter()
        .find(|t| {
            t["root"] == "publish orders.created" && t["services"].as_array().unwrap().len() >= 4
        })
        .expect("an order trace is listed");
    let services = order["services"].as_array().unwrap().len();
    assert!(services >= 4, "{order}");
    let id = order["trace_id"].as_str().unwrap();
    let waterfall = json_at(&address, &format!("/api/traces/{id}"));
    let rows = waterfall["rows"].as_array().unwrap();
    assert_eq!(rows.len() as u64, order["spans"].as_u64().unwrap());
    assert_eq!(rows[0]["name"], "publish orders.created");
    assert_eq!(rows[0]["depth"], 0);
    for (i, row) in rows.iter().enumerate().skip(1) {
        let depth = row["depth"].as_u64().unwrap();
        if depth > 0 {
            assert!(
                rows[..i]
                    .iter()
                    .any(|p| p["span_id"] == row["parent_span_id"]
                        && p["depth"].as_u64() == Some(depth - 1)),
                "row {i} under its parent: {row}"
            );
        }
    }
    assert!(
        rows.iter()
            .any(|r| r["name"] == "process orders.created"
                && !r["links"].as_array().unwrap().is_empty()),
        "process spans show their link to the producer"
    );

    let map = json_at(&address, "/api/map");
    let edges: Vec<(String, String, String, bool)> = map["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_owned(),
                e["to"].as_str().unwrap().to_owned(),
                e["flow"].as_str().unwrap().to_owned(),
                e["dead_letter"].as_bool().unwrap(),
            )
        })
        .collect();
    for expected in [
        (
            "order-service",
            "inventory-service",
            "orders.created",
            false,
        ),
        (
            "order-service",
            "notification-service",
            "orders.created",
            false,
        ),
        ("inventory-service", "users-service", "users.get", false),
        ("task-producer", "task-worker", "tasks.email", false),
    ] {
        let expected = (
            expected.0.to_owned(),
            expected.1.to_owned(),
            expected.2.to_owned(),
            expected.3,
        );
        assert!(edges.contains(&expected), "{expected:?} in {edges:?}");
    }
    assert!(
        edges
            .iter()
            .any(|(from, to, flow, dead)| from == "task-worker"
                && to == "dead letters"
                && flow.starts_with("dlq.")
                && *dead),
        "{edges:?}"
    );
    let histograms = json_at(&address, "/api/histograms");
    for name in ["queue_wait", "processing", "end_to_end"] {
        assert!(
            histograms[name]["count"].as_u64().unwrap() > 0,
            "{name}: {histograms}"
        );
    }
    let dead = json_at(&address, "/api/dead-letters");
    let listed = dead.as_array().unwrap().len();
    assert!(listed > 0, "the seed dead-letters tasks");
    assert!(
        dead[0]["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{dead}"
    );
    let (status, _, _) = http_get(&address, "/api/traces/not-a-trace", None);
    assert_eq!(status, "HTTP/1.1 400 Bad Request");

    // Ctrl-C stops it, with the run's outcome.
    let stopped = Command::new("kill")
        .args(["-INT", &demo.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert_eq!(demo.0.wait().unwrap().code(), Some(0), "{rest:#?}");
    let summary = format!("dead-lettered (expected {listed})");
    assert!(
        rest.iter()
            .any(|l| l.trim().starts_with("tasks:") && l.contains(&format!("{listed} {summary}"))),
        "{listed} dead letters listed, as the summary counts: {rest:#?}"
    );
}

/// A child process killed if the test ends before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads server-sent events from `path` until one's data satisfies `done`.
fn await_event(
    address: &str,
    path: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    use std::io::{BufRead, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("web view reachable");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    for line in std::io::BufReader::new(stream).lines() {
        let line = line.expect("an event within 30 s");
        if let Some(data) = line.strip_prefix("data: ") {
            let value: serde_json::Value = serde_json::from_str(data).unwrap();
            if done(&value) {
                return value;
            }
        }
    }
    panic!("the event stream ended");
}

#[test]
fn orders_placed_by_request_go_through_every_service_in_the_callers_trace() {
    use std::io::BufRead;
    let server = NatsServer::start();
    let address = format!("127.0.0.1:{}", nats_otel_testkit::free_port());
    let mut demo = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_nats-otel-demo"))
            .args([
                "--web",
                &address,
                "--orders",
                "2",
                "--tasks",
                "2",
                "--poison-rate",
                "0",
            ])
            .env("NATS_URL", server.url())
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("demo runs"),
    );
    let mut lines = std::io::BufReader::new(demo.0.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("web view: still serving") {
            break;
        }
    }

    // What the page does: a request to orders.place carrying its span's context.
    let trace = "5e1f0c3b9a7d4e2f8c6b1a0d9e8f7a6b";
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (placed, refused) = runtime.block_on(async {
        let nc = async_nats::connect(server.url()).await.unwrap();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "traceparent",
            format!("00-{trace}-1a2b3c4d5e6f7081-01").as_str(),
        );
        let placed = nc
            .request_with_headers(
                "orders.place",
                headers,
                r#"{"user_id": 3, "amount": 12.5}"#.into(),
            )
            .await
            .unwrap();
        let refused = nc.request("orders.place", "{}".into()).await.unwrap();
        (placed, refused)
    });
    assert_eq!(
        placed
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code")),
        None
    );
    let reply: serde_json::Value = serde_json::from_slice(&placed.payload).unwrap();
    let order_id = reply["order_id"]
        .as_str()
        .unwrap_or_else(|| panic!("an order id in {reply}"));
    assert!(order_id.starts_with("w-"), "{order_id}");
    let refusal = refused.headers.as_ref().unwrap();
    assert_eq!(
        refusal.get("Nats-Service-Error-Code").map(|v| v.as_str()),
        Some("400")
    );
    assert!(
        refusal
            .get("Nats-Service-Error")
            .is_some_and(|v| v.as_str().starts_with("expected {\"user_id\": 1-1000")),
        "{refusal:?}"
    );

    // The order's trace is the caller's and runs through every Rust service.
    let update = await_event(&address, "/events", |update| {
        update["traces"].as_array().is_some_and(|traces| {
            traces.iter().any(|t| {
                t["trace_id"] == trace
                    && [
                        "order-service",
                        "inventory-service",
                        "notification-service",
                        "users-service",
                    ]
                    .iter()
                    .all(|s| t["services"].as_array().unwrap().iter().any(|x| x == s))
            })
        })
    });
    assert!(update["spans"].as_u64().unwrap() > 0);
    let waterfall = json_at(&address, &format!("/api/traces/{trace}"));
    let names: Vec<&str> = waterfall["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names[0], "process orders.place", "{names:?}");
    assert!(names.contains(&"publish orders.created"), "{names:?}");

    // Ctrl-C: the summary counts the placed order apart from the scripted ones.
    Command::new("kill")
        .args(["-INT", &demo.0.id().to_string()])
        .status()
        .unwrap();
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert_eq!(demo.0.wait().unwrap().code(), Some(0), "{rest:#?}");
    assert!(
        rest.iter()
            .any(|l| l.trim() == "orders from the web page: 1 placed, reserved and notified"),
        "{rest:#?}"
    );
    assert!(
        rest.iter()
            .any(|l| l.trim().starts_with("orders: 2 created, 2 reserved")),
        "{rest:#?}"
    );
}
