//! The `nats-otel` command against a real nats-server: dead letters the real
//! `Worker` produced, replays killed mid-way, bad input, contexts, `tail`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use futures_util::StreamExt;
use nats_otel::jetstream::dead_letter::{self, headers as dlq, DeadLetter};
use nats_otel::jetstream::{HandlerError, Worker};
use nats_otel_testkit::NatsServer;

/// The command, with no connection settings from the environment and a config
/// directory of its own (no natscli context of the machine's user).
fn command(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nats-otel"));
    for name in [
        "NATS_URL",
        "NATS_CREDS",
        "NATS_USER",
        "NATS_PASSWORD",
        "NATS_CA",
        "NATS_CONTEXT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ] {
        command.env_remove(name);
    }
    command.env("XDG_CONFIG_HOME", config);
    command
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(server: &str, config: &Path, args: &[&str]) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = command(config)
        .arg("--server")
        .arg(server)
        .args(args)
        .output()
        .expect("the nats-otel binary runs");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

struct Setup {
    server: NatsServer,
    js: nats_otel::jetstream::Context,
    config: tempfile::TempDir,
}

/// Stream `TASKS` (`tasks.>`), dead-letter stream `DLQ` (`dlq.>`).
async fn setup() -> Setup {
    let server = NatsServer::start();
    // Traced as an application would be, so dead letters carry trace context.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let client = nats_otel::Instrumentation::builder()
        .with_tracer_provider(&provider)
        .with_propagator(nats_otel::W3cPropagator::new())
        .build()
        .connect(server.url(), nats_otel::ConnectOptions::new())
        .await
        .unwrap();
    let js = nats_otel::jetstream::new(&client);
    js.inner()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "TASKS".to_owned(),
            subjects: vec!["tasks.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    dead_letter::ensure_stream(&js, "DLQ", &DeadLetter::default())
        .await
        .unwrap();
    Setup {
        server,
        js,
        config: tempfile::tempdir().unwrap(),
    }
}

/// Publishes `messages` to `TASKS` and lets a `Worker` that fails each fatally
/// ("bad image" on `tasks.resize`, "SMTP down" otherwise) dead-letter them.
async fn dead_letter_with_worker(s: &Setup, messages: &[(&str, &str)]) {
    let stream = s.js.inner().get_stream("TASKS").await.unwrap();
    let consumer = stream
        .get_or_create_consumer(
            "workers",
            pull::Config {
                durable_name: Some("workers".to_owned()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for (subject, id) in messages {
        s.js.publish_with_id(subject.to_string(), id, "payload".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Worker::new(&s.js, s.js.pull_consumer(consumer)).run(
        |task| {
            let reason = if task.subject.as_str() == "tasks.resize" {
                "bad image"
            } else {
                "SMTP down"
            };
            async move { Err(HandlerError::fatal(reason)) }
        },
        async move {
            let _ = stopped.await;
        },
    ));
    let dlq_stream = s.js.inner().get_stream("DLQ").await.unwrap();
    let watcher = dlq_stream
        .create_consumer(pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut stored = watcher.messages().await.unwrap();
    for _ in messages {
        tokio::time::timeout(Duration::from_secs(10), stored.next())
            .await
            .expect("dead-lettered in time")
            .unwrap()
            .unwrap();
    }
    stop.send(()).unwrap();
    worker.await.unwrap();
}

async fn stored(s: &Setup, stream: &str) -> u64 {
    s.js.inner()
        .get_stream(stream)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
        .messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_and_show_describe_the_workers_dead_letters() {
    let s = setup().await;
    dead_letter_with_worker(
        &s,
        &[
            ("tasks.resize", "task-0"),
            ("tasks.email", "task-1"),
            ("tasks.resize", "task-2"),
        ],
    )
    .await;
    let url = s.server.url();
    let config = s.config.path();

    let listed = run(&url, config, &["dlq", "ls", "--json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let letters: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let summary: Vec<(u64, String, String, String, u64, String)> = letters
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["sequence"].as_u64().unwrap(),
                l["subject"].as_str().unwrap().to_owned(),
                format!(
                    "{}/{}",
                    l["source_stream"].as_str().unwrap(),
                    l["source_sequence"]
                ),
                l["reason"].as_str().unwrap().to_owned(),
                l["deliveries"].as_u64().unwrap(),
                l["original_message_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                1,
                "tasks.resize".into(),
                "TASKS/1".into(),
                "fatal: bad image".into(),
                1,
                "task-0".into()
            ),
            (
                2,
                "tasks.email".into(),
                "TASKS/2".into(),
                "fatal: SMTP down".into(),
                1,
                "task-1".into()
            ),
            (
                3,
                "tasks.resize".into(),
                "TASKS/3".into(),
                "fatal: bad image".into(),
                1,
                "task-2".into()
            ),
        ]
    );
    assert_eq!(letters[0]["trace_id"].as_str().map(str::len), Some(32));
    assert_eq!(letters[0]["consumer"].as_str(), Some("workers"));

    let filtered = run(&url, config, &["dlq", "ls", "--reason", "smtp", "--json"]);
    let filtered: serde_json::Value = serde_json::from_str(&filtered.stdout).unwrap();
    assert_eq!(filtered.as_array().map(Vec::len), Some(1));
    let by_subject = run(
        &url,
        config,
        &["dlq", "ls", "--subject", "tasks.resize", "--json"],
    );
    let by_subject: serde_json::Value = serde_json::from_str(&by_subject.stdout).unwrap();
    assert_eq!(by_subject.as_array().map(Vec::len), Some(2));

    let table = run(&url, config, &["dlq", "ls"]);
    assert_eq!(table.code, 0);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", table.stdout);
    assert!(lines[0].starts_with("SEQ"), "{}", lines[0]);
    assert!(lines[2].contains("tasks.email") && lines[2].contains("fatal: SMTP down"));
    assert_eq!(table.stderr.trim(), "3 dead letter(s) in DLQ");

    let shown = run(&url, config, &["dlq", "show", "2"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(
        shown.stdout.starts_with("dead letter 2 in DLQ (stored 20"),
        "{}",
        shown.stdout
    );
    for expected in [
        "  reason:        fatal: SMTP down",
        "  subject:       tasks.email",
        "  source:        stream TASKS sequence 2",
        "  consumer:      workers (delivered 1×)",
        "  message id:    task-1",
        "payload (7 bytes, as stored):",
        "  payload",
    ] {
        assert!(
            shown.stdout.lines().any(|l| l == expected),
            "{expected:?} in\n{}",
            shown.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_purge_act_on_their_selection_with_the_documented_exit_codes() {
    let s = setup().await;
    dead_letter_with_worker(
        &s,
        &[
            ("tasks.resize", "task-0"),
            ("tasks.email", "task-1"),
            ("tasks.resize", "task-2"),
        ],
    )
    .await;
    let url = s.server.url();
    let config = s.config.path();

    let dry = run(&url, config, &["dlq", "replay", "--all", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.stderr);
    assert!(
        dry.stdout
            .contains("would replay 3 dead letter(s) from DLQ"),
        "{}",
        dry.stdout
    );
    assert_eq!((stored(&s, "DLQ").await, stored(&s, "TASKS").await), (3, 3));

    let replayed = run(&url, config, &["dlq", "replay", "1"]);
    assert_eq!(replayed.code, 0, "{}", replayed.stderr);
    assert_eq!(replayed.stdout.trim(), "replayed 1 dead letter(s) from DLQ");
    assert_eq!((stored(&s, "DLQ").await, stored(&s, "TASKS").await), (2, 4));

    let refused = run(&url, config, &["dlq", "purge", "--reason", "smtp"]);
    assert_eq!(refused.code, 2);
    assert!(refused.stderr.contains("add --yes"), "{}", refused.stderr);
    let dry = run(
        &url,
        config,
        &["dlq", "purge", "--reason", "smtp", "--dry-run"],
    );
    assert_eq!(dry.code, 0);
    assert_eq!(
        dry.stdout,
        "would purge 2\nwould purge 1 dead letter(s) from DLQ\n"
    );
    assert_eq!(stored(&s, "DLQ").await, 2);
    let purged = run(&url, config, &["dlq", "purge", "--reason", "smtp", "--yes"]);
    assert_eq!(purged.code, 0, "{}", purged.stderr);
    assert_eq!(purged.stdout.trim(), "purged 1 dead letter(s) from DLQ");
    let left = run(&url, config, &["dlq", "ls", "--json"]);
    let left: serde_json::Value = serde_json::from_str(&left.stdout).unwrap();
    assert_eq!(left[0]["sequence"].as_u64(), Some(3));
    assert_eq!(left.as_array().map(Vec::len), Some(1));

    // A letter with no source subject cannot go anywhere: a partial failure.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(dlq::REASON, "hand-made");
    headers.insert(dlq::DELIVERY_COUNT, "many");
    s.js.inner()
        .publish_with_headers("dlq.manual", headers, "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let table = run(&url, config, &["dlq", "ls"]);
    assert_eq!(table.code, 0);
    assert!(table.stdout.contains("! hand-made"), "{}", table.stdout);
    assert!(
        table.stderr.contains("1 with malformed Dlq-* headers"),
        "{}",
        table.stderr
    );
    let shown = run(&url, config, &["dlq", "show", "4"]);
    assert!(shown
        .stdout
        .contains("  malformed:     Dlq-Delivery-Count is not a number: `many`"));
    let partial = run(
        &url,
        config,
        &["dlq", "replay", "--all", "--continue-on-error"],
    );
    assert_eq!(partial.code, 1, "{}", partial.stdout);
    assert!(
        partial
            .stderr
            .contains("sequence 4: no Dlq-Source-Subject: give a target subject"),
        "{}",
        partial.stderr
    );
    assert_eq!(
        partial.stdout.trim(),
        "replayed 1 dead letter(s) from DLQ; 1 failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_with_exit_code_2_and_a_message_naming_it() {
    let s = setup().await;
    dead_letter_with_worker(&s, &[("tasks.resize", "task-0")]).await;
    let url = s.server.url();
    let config = s.config.path();
    let cases: [(&[&str], &str); 8] = [
        (
            &["dlq", "--stream", "NOPE", "ls"],
            "no dead-letter stream `NOPE`",
        ),
        (
            &["dlq", "--stream", "TASKS", "ls"],
            "not a dead-letter stream",
        ),
        (&["dlq", "show", "99"], "holds no message at sequence 99"),
        (
            &["dlq", "replay", "99"],
            "no dead letter at sequence 99 in DLQ",
        ),
        (&["dlq", "replay"], "name sequences, --all, or a filter"),
        (
            &["dlq", "ls", "--older-than", "soon"],
            "expected a duration",
        ),
        (
            &["dlq", "ls", "--subject", "a..b"],
            "invalid subject pattern",
        ),
        (&["dlq", "frobnicate"], "unrecognized subcommand"),
    ];
    for (args, message) in cases {
        let result = run(&url, config, args);
        assert_eq!(result.code, 2, "{args:?}: {}", result.stderr);
        assert!(
            result.stderr.contains(message),
            "{args:?}: {}",
            result.stderr
        );
    }
    assert_eq!(stored(&s, "DLQ").await, 1, "nothing changed");

    let port = nats_otel_testkit::free_port();
    let down = run(&format!("nats://127.0.0.1:{port}"), config, &["dlq", "ls"]);
    assert_eq!(down.code, 2);
    assert!(
        down.stderr
            .contains(&format!("cannot connect to nats://127.0.0.1:{port}")),
        "{}",
        down.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn natscli_contexts_supply_the_server() {
    let s = setup().await;
    let config = s.config.path();
    let dir = config.join("nats/context");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("local.json"),
        format!(r#"{{"description": "test", "url": "{}"}}"#, s.server.url()),
    )
    .unwrap();
    let ls = |args: &[&str]| {
        let output = command(config).args(args).output().unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert_eq!(
        ls(&["--context", "local", "dlq", "ls"]),
        (Some(0), "0 dead letter(s) in DLQ\n".to_owned())
    );
    // The selected context, as `nats context select local` leaves it.
    std::fs::write(config.join("nats/context.txt"), "local").unwrap();
    assert_eq!(ls(&["dlq", "ls"]).0, Some(0));
    let (code, stderr) = ls(&["--context", "missing", "dlq", "ls"]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("context `missing`: cannot read"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_mid_way_and_rerun_stores_every_message_exactly_once() {
    const LETTERS: u64 = 2000;
    let s = setup().await;
    // Letters as the Worker writes them, made directly for speed.
    let raw = s.js.inner();
    for i in 0..LETTERS {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(dlq::REASON, "fatal: bug 17");
        headers.insert(dlq::SOURCE_SUBJECT, format!("tasks.{i}").as_str());
        headers.insert(dlq::SOURCE_STREAM, "TASKS");
        headers.insert(dlq::ORIGINAL_MSG_ID, format!("task-{i}").as_str());
        raw.publish_with_headers(format!("dlq.tasks.{i}"), headers, "x".into())
            .await
            .unwrap();
    }
    raw.publish("dlq.flush", "y".into())
        .await
        .unwrap()
        .await
        .unwrap();
    raw.get_stream("DLQ")
        .await
        .unwrap()
        .delete_message(LETTERS + 1)
        .await
        .unwrap();
    assert_eq!(stored(&s, "DLQ").await, LETTERS);

    // Count replays as they are stored, and kill the command a quarter of the way.
    let tasks = raw.get_stream("TASKS").await.unwrap();
    let watcher = tasks
        .create_consumer(pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut replays = watcher.messages().await.unwrap();
    let mut child = command(s.config.path())
        .args(["--server", &s.server.url(), "dlq", "replay", "--all"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..LETTERS / 4 {
        tokio::time::timeout(Duration::from_secs(30), replays.next())
            .await
            .expect("replays in time")
            .unwrap()
            .unwrap();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let left = stored(&s, "DLQ").await;
    assert!(left > 0 && left < LETTERS, "killed mid-way ({left} left)");

    let rerun = run(
        &s.server.url(),
        s.config.path(),
        &["dlq", "replay", "--all"],
    );
    assert_eq!(rerun.code, 0, "{}", rerun.stderr);
    assert_eq!(stored(&s, "DLQ").await, 0, "the queue is empty");
    assert_eq!(
        stored(&s, "TASKS").await,
        LETTERS,
        "every message stored exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_one_line_per_message_with_its_trace_context() {
    let s = setup().await;
    let mut child = command(s.config.path())
        .args([
            "--server",
            &s.server.url(),
            "tail",
            "orders.>",
            "--json",
            "--count",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut ready = String::new();
    stderr.read_line(&mut ready).unwrap();
    assert_eq!(ready, "listening on orders.> (Ctrl-C stops)\n");

    let raw = s.server.raw_client().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    headers.insert("Nats-Msg-Id", "order-1");
    raw.publish_with_headers("orders.created", headers, "12345".into())
        .await
        .unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(dlq::REASON, "fatal: no stock");
    raw.publish_with_headers("orders.failed", headers, "".into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let fields = |l: &serde_json::Value| {
        (
            l["subject"].as_str().map(str::to_owned),
            l["size"].as_u64(),
            l["trace_id"].as_str().map(str::to_owned),
            l["sampled"].as_bool(),
            l["message_id"].as_str().map(str::to_owned),
            l["dead_letter_reason"].as_str().map(str::to_owned),
        )
    };
    assert_eq!(
        lines.iter().map(fields).collect::<Vec<_>>(),
        [
            (
                Some("orders.created".to_owned()),
                Some(5),
                Some("0af7651916cd43dd8448eb211c80319c".to_owned()),
                Some(true),
                Some("order-1".to_owned()),
                None
            ),
            (
                Some("orders.failed".to_owned()),
                Some(0),
                None,
                None,
                None,
                Some("fatal: no stock".to_owned())
            ),
        ]
    );
}
