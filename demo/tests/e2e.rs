//! End-to-end: the demo binary against a test nats-server, exporting to an OTLP
//! receiver in this test process.

use std::collections::{HashMap, HashSet};
use std::process::Command;

use nats_otel_testkit::{receiver, NatsServer};

mod webdriver;

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

/// A request with extra header lines and a body over a fresh connection: the
/// status line and the body.
fn http_request(address: &str, head: &str, extra: &[&str], body: &[u8]) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("web view reachable");
    let mut request = format!("{head} HTTP/1.1\r\nConnection: close\r\n");
    if !extra
        .iter()
        .any(|l| l.to_ascii_lowercase().starts_with("host:"))
    {
        request.push_str(&format!("Host: {address}\r\n"));
    }
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    // The head first: after a 101 the connection stays open (a WebSocket).
    let mut response = Vec::new();
    let mut byte = [0u8; 1];
    while !response.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
        response.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&response).into_owned();
    let status = head.lines().next().unwrap_or_default().to_owned();
    let mut body = Vec::new();
    if !status.contains(" 101 ") {
        stream.read_to_end(&mut body).unwrap();
    }
    (status, String::from_utf8_lossy(&body).into_owned())
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
    // A page whose own name was made to resolve to 127.0.0.1 is refused.
    let (status, body) = http_request(
        &address,
        "GET /api/traces",
        &["Host: rebound.example:8088"],
        b"",
    );
    assert_eq!(
        (status.as_str(), body.as_str()),
        (
            "HTTP/1.1 403 Forbidden",
            "this view listens on loopback: reach it as localhost or by IP address"
        )
    );
    // With NATS_URL set the order form is off, and says why.
    let config = json_at(&address, "/api/config");
    assert_eq!(config["orders"], false);
    assert_eq!(
        config["why"],
        format!(
            "NATS_URL is set ({}): the order form talks to the demo's own nats-server \
             over WebSocket; unset NATS_URL to use it",
            server.url()
        )
    );
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

    // The dead-letter publish span may be exported after the run's end: wait
    // (on the view's updates) until the map has its edge.
    let has_dead_letter_edge = |map: &serde_json::Value| {
        map["edges"].as_array().is_some_and(|edges| {
            edges
                .iter()
                .any(|e| e["from"] == "task-worker" && e["to"] == "dead letters")
        })
    };
    await_event(&address, "/events", |_| {
        has_dead_letter_edge(&json_at(&address, "/api/map"))
    });
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
    // Keep-alive comments arrive every 15 s: bound the whole wait too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for line in std::io::BufReader::new(stream).lines() {
        let line = line.expect("an event within 30 s");
        assert!(
            std::time::Instant::now() < deadline,
            "no awaited event within 60 s"
        );
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
        rest.iter().any(|l| l.trim()
            == "orders from the web page: 1 placed, 1 reserved, 1 notified, 0 dead-lettered"),
        "{rest:#?}"
    );
    assert!(
        rest.iter()
            .any(|l| l.trim().starts_with("orders: 2 created, 2 reserved")),
        "{rest:#?}"
    );
}

/// Starts the demo with its own nats-server (WebSocket on) and the web view on
/// a free loopback port, `args` added; returns it, the web address and the rest
/// of its output once the scripted run is over.
fn demo_with_own_server(
    args: &[&str],
) -> (
    KillOnDrop,
    String,
    std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
) {
    use std::io::BufRead;
    let address = format!("127.0.0.1:{}", nats_otel_testkit::free_port());
    let mut demo = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_nats-otel-demo"))
            .args(["--web", &address])
            .args(args)
            .env_remove("NATS_URL")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("demo runs"),
    );
    let mut lines = std::io::BufReader::new(demo.0.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        println!("{line}");
        if line.starts_with("web view: still serving") {
            break;
        }
    }
    (demo, address, lines)
}

/// What `#order-result` says once it no longer says "placing…".
const ORDER_RESULT: &str = "(() => { const r = document.getElementById('order-result'); \
     return r.textContent && r.textContent !== 'placing…' && r.textContent !== arguments[0] \
     ? { text: r.textContent, class: r.className, trace: r.dataset.trace || '' } : null; })()";

/// Submits the order form with these fields; returns what the page said.
fn submit_order(browser: &webdriver::Browser, user: &str, amount: &str) -> serde_json::Value {
    browser.run(
        "document.getElementById('order-result').textContent = 'submitting'; \
         document.getElementById('order-result').className = '';",
        serde_json::json!([]),
    );
    browser.fill("#order-form input[name=user_id]", user);
    browser.fill("#order-form input[name=amount]", amount);
    browser.click("#order-form button");
    browser.wait_for(
        "the order form's answer",
        ORDER_RESULT,
        serde_json::json!(["submitting"]),
        30,
    )
}

/// The waterfall rows the page shows: (service, name, span id).
const SHOWN_ROWS: &str = "[...document.querySelectorAll('#waterfall .row')].map((r) => \
     [r.children[0].textContent, r.children[1].firstChild.textContent.trim().replace(/ ✗$/, ''), \
     r.dataset.span, r.classList.contains('failed')])";

/// Waits until the page's waterfall shows exactly the rows `/api/traces/{trace}`
/// holds (spans may still be arriving: then it looks again), and returns them.
fn waterfall_as_shown(
    browser: &webdriver::Browser,
    address: &str,
    trace: &str,
) -> Vec<serde_json::Value> {
    for _ in 0..10 {
        let held = json_at(address, &format!("/api/traces/{trace}"));
        let rows = held["rows"].as_array().unwrap().clone();
        let expected: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| serde_json::json!([r["service"], r["name"], r["span_id"], r["error"]]))
            .collect();
        let expected = serde_json::Value::Array(expected);
        let condition =
            format!("JSON.stringify({SHOWN_ROWS}) === JSON.stringify(arguments[0]) ? true : null");
        let matched = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            browser.wait_for(
                "the waterfall",
                &condition,
                serde_json::json!([expected]),
                5,
            )
        }));
        if matched.is_ok() {
            return rows;
        }
    }
    let shown = browser.run(&format!("return {SHOWN_ROWS};"), serde_json::json!([]));
    panic!(
        "the page's waterfall never matched the receiver's spans: shows {shown}, holds {}",
        json_at(address, &format!("/api/traces/{trace}"))
    );
}

#[test]
fn an_order_placed_in_the_browser_is_traced_from_the_click_through_every_service() {
    let browser = webdriver::Browser::start().unwrap_or_else(|e| panic!("{e}"));
    let (demo, address, lines) =
        demo_with_own_server(&["--orders", "20", "--tasks", "20", "--seed", "5"]);
    let port = address.rsplit(':').next().unwrap();
    // Reached by another name than 127.0.0.1: the page finds NATS by its own host.
    browser.goto(&format!("http://localhost:{port}/"));
    browser.wait_for(
        "the trace list",
        "document.querySelectorAll('#traces li').length > 0",
        serde_json::json!([]),
        30,
    );

    // The order form's server side refuses other origins and anything but OTLP
    // protobuf.
    assert_eq!(
        json_at(&address, "/api/config"),
        serde_json::json!({"orders": true, "why": null})
    );
    let upgrade = [
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];
    let evil = [&upgrade[..], &["Origin: http://evil.example"]].concat();
    assert_eq!(
        http_request(&address, "GET /nats", &evil, b""),
        (
            "HTTP/1.1 403 Forbidden".to_owned(),
            "WebSocket upgrades are accepted from this page only".to_owned()
        )
    );
    let own_origin = format!("Origin: http://{address}");
    let (status, _) = http_request(
        &address,
        "GET /nats",
        &[&upgrade[..], &[own_origin.as_str()]].concat(),
        b"",
    );
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
    let (status, body) = http_request(
        &address,
        "POST /v1/traces",
        &["Content-Type: application/json", &own_origin],
        b"{}",
    );
    assert_eq!(
        (status.as_str(), body.as_str()),
        (
            "HTTP/1.1 415 Unsupported Media Type",
            "OTLP/HTTP with Content-Type: application/x-protobuf only"
        )
    );
    let (status, body) = http_request(
        &address,
        "POST /v1/traces",
        &["Content-Type: application/x-protobuf", &own_origin],
        b"\xff\xff\xff",
    );
    assert_eq!(status, "HTTP/1.1 400 Bad Request");
    assert!(
        body.starts_with("not an OTLP trace export (protobuf): "),
        "{body}"
    );
    let (status, _) = http_request(
        &address,
        "POST /v1/traces",
        &[
            "Content-Type: application/x-protobuf",
            "Origin: http://evil.example",
        ],
        b"",
    );
    assert_eq!(status, "HTTP/1.1 403 Forbidden");

    // Bad input is refused in the page: a message, nothing published (every
    // publish is inside a browser span, and none reaches the receiver).
    for (user, amount, message) in [
        ("", "42.50", "Enter a customer id (1-1000)."),
        (
            "12x",
            "42.50",
            "Customer id \"12x\" is not a whole number between 1 and 1000.",
        ),
        (
            "1001",
            "42.50",
            "Customer id \"1001\" is not a whole number between 1 and 1000.",
        ),
        ("7", "", "Enter an amount (0.01-100000)."),
        (
            "7",
            "-3",
            "Amount \"-3\" is not a number with at most two decimals.",
        ),
        ("7", "0", "Amount 0 is not between 0.01 and 100000."),
    ] {
        let said = submit_order(&browser, user, amount);
        assert_eq!(said["text"], message, "user {user:?} amount {amount:?}");
        assert_eq!(said["class"], "error");
    }

    // A good order: placed over NATS WebSocket inside the browser's span.
    let said = submit_order(&browser, "7", "42.50");
    assert_eq!(said["class"], "ok", "{said}");
    let text = said["text"].as_str().unwrap();
    assert!(text.starts_with("order w-"), "{text}");
    let trace = said["trace"].as_str().unwrap().to_owned();
    assert_eq!(trace.len(), 32, "{said}");
    assert!(
        text.ends_with(&format!(" placed · trace {trace}")),
        "{text}"
    );

    // Listed once every service has handled it, then opened by the page.
    let services = [
        "web-shop",
        "order-service",
        "inventory-service",
        "users-service",
        "notification-service",
    ];
    browser.wait_for(
        "the order's trace through every service in the list",
        "(() => { const li = document.querySelector(`#traces li[data-trace=\"${arguments[0]}\"]`); \
         return li && arguments[1].every((s) => li.textContent.includes(s)); })()",
        serde_json::json!([trace, services]),
        60,
    );
    let rows = waterfall_as_shown(&browser, &address, &trace);
    // The root span is the browser's; the trace runs through every Rust service.
    assert_eq!(rows[0]["service"], "web-shop", "{rows:#?}");
    assert_eq!(rows[0]["name"], "request orders.place");
    assert_eq!(rows[0]["depth"], 0);
    assert!(
        rows[1..].iter().all(|r| r["depth"].as_u64() > Some(0)),
        "{rows:#?}"
    );
    let in_trace: HashSet<&str> = rows
        .iter()
        .map(|r| r["service"].as_str().unwrap())
        .collect();
    for service in services {
        assert!(in_trace.contains(service), "{service} in {in_trace:?}");
    }
    assert!(rows.iter().all(|r| r["error"] == false), "{rows:#?}");
    let title = browser.run(
        "return document.getElementById('trace-title').textContent;",
        serde_json::json!([]),
    );
    assert!(
        title
            .as_str()
            .unwrap()
            .starts_with(&format!("Trace {trace} (")),
        "{title}"
    );

    // The service map has the order flow's edges.
    let flows = browser.wait_for(
        "the order flow on the service map",
        "(() => { const flows = [...document.querySelectorAll('#map line')].map((l) => l.dataset.flow); \
         return ['orders.place', 'orders.created', 'users.get'].every((f) => flows.includes(f)) ? flows : null; })()",
        serde_json::json!([]),
        30,
    );
    let map = json_at(&address, "/api/map");
    let edge = |from: &str, to: &str, flow: &str| {
        map["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["from"] == from && e["to"] == to && e["flow"] == flow)
    };
    assert!(edge("web-shop", "order-service", "orders.place"), "{map}");
    assert!(
        edge("order-service", "inventory-service", "orders.created"),
        "{map}"
    );
    assert!(
        edge("inventory-service", "users-service", "users.get"),
        "{map}"
    );
    assert!(flows.as_array().unwrap().len() >= 3);

    let screenshot = browser.screenshot();
    assert_eq!(&screenshot[..8], b"\x89PNG\r\n\x1a\n");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-view.png");
    std::fs::write(&shot, &screenshot).unwrap();
    println!("screenshot: {}", shot.display());

    // A failing service shows its error in the waterfall: customer 950 is not on
    // file, so inventory-service dead-letters the order.
    let said = submit_order(&browser, "950", "19.99");
    assert_eq!(said["class"], "ok", "{said}");
    let failed = said["trace"].as_str().unwrap().to_owned();
    // The page opens the placed order's trace by itself once it is listed.
    browser.wait_for(
        "the failed order's dead letter in its trace",
        "document.getElementById('trace-title').textContent.includes(arguments[0]) && \
         [...document.querySelectorAll('#waterfall .row.failed')].some((r) => r.textContent.includes('users-service'))",
        serde_json::json!([failed]),
        60,
    );
    let rows = waterfall_as_shown(&browser, &address, &failed);
    let failed_rows: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r["error"] == true)
        .map(|r| (r["service"].as_str().unwrap(), r["name"].as_str().unwrap()))
        .collect();
    assert!(
        failed_rows.contains(&("users-service", "process users.get")),
        "{failed_rows:?}"
    );
    assert!(
        failed_rows.contains(&("inventory-service", "process orders.created")),
        "{failed_rows:?}"
    );
    let dead = browser.wait_for(
        "the dead letter listed",
        "[...document.querySelectorAll('#dead-letters tbody tr')].map((r) => r.textContent).find((t) => t.includes('unknown customer 950'))",
        serde_json::json!([]),
        30,
    );
    assert!(
        dead.as_str().unwrap().starts_with("orders.created"),
        "{dead}"
    );

    // The browser's own spans: exactly the two orders placed (the refused
    // inputs published nothing).
    let spans = json_at(&address, "/api/traces");
    let from_browser: Vec<&str> = spans
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["services"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s == "web-shop")
        })
        .map(|t| t["trace_id"].as_str().unwrap())
        .collect();
    assert_eq!(from_browser.len(), 2, "{from_browser:?}");

    // No console errors from the page's JavaScript.
    let errors: Vec<serde_json::Value> = browser
        .console()
        .into_iter()
        .filter(|entry| entry["level"] == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");

    // Ctrl-C: the summary counts both, apart from the scripted orders.
    Command::new("kill")
        .args(["-INT", &demo.0.id().to_string()])
        .status()
        .unwrap();
    let mut demo = demo;
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert_eq!(demo.0.wait().unwrap().code(), Some(0), "{rest:#?}");
    // Both were notified; the one for a customer not on file was not reserved
    // but dead-lettered.
    let expected = "orders from the web page: 2 placed, 1 reserved, 2 notified, 1 dead-lettered";
    assert!(
        rest.iter().any(|l| l.trim() == expected),
        "{expected}: {rest:#?}"
    );
}
