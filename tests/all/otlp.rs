//! OTLP over the wire: `otlp::init_with` exports to a real gRPC receiver, and
//! `otlp::providers` over HTTP/protobuf to a real HTTP receiver.

use std::time::Duration;

use nats_otel::otlp::{init_with, providers, Settings};

use crate::support::{next, NatsServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_setup_exports_spans_and_metrics_to_a_real_receiver() {
    let receiver = nats_otel_testkit::receiver::start().await.unwrap();
    let guard = init_with(Settings::from_vars([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("OTEL_SERVICE_NAME", "otlp-wire-test".to_owned()),
        // Applied to every instrumentation built from now on (only this subject).
        ("OTEL_INSTRUMENTATION_NATS_EXCLUDE", "wire.skip".to_owned()),
    ]))
    .expect("telemetry setup");

    let server = NatsServer::start();
    // Default instrumentation: the globals the setup just installed.
    let client = nats_otel::connect(server.url()).await.unwrap();
    let mut sub = client.subscribe("wire.test").await.unwrap();
    client.ping().await.expect("ping");
    client.publish("wire.skip", "x".into()).await.unwrap();
    client.publish("wire.test", "x".into()).await.unwrap();
    let delivery = next(&mut sub).await;
    assert!(
        delivery.producer_context().has_active_span_context(),
        "the global propagator carried the context"
    );
    drop(delivery);

    // Dropping the guard flushes the batch processor to the receiver.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let spans = receiver
        .wait_for(Duration::from_secs(10), |store| {
            (store.spans.len() >= 2).then(|| store.spans.clone())
        })
        .await
        .expect("the receiver got both spans");
    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    // `wire.skip` was excluded through OTEL_INSTRUMENTATION_NATS_EXCLUDE.
    assert_eq!(names, ["process wire.test", "publish wire.test"]);
    assert!(spans.iter().all(|s| s.service == "otlp-wire-test"));

    // Metrics travel the same way: the guard's flush exported them.
    let metric_names = receiver
        .wait_for(Duration::from_secs(10), |store| {
            let names = &store.metric_names;
            (names.contains(nats_otel::metrics::names::SENT_MESSAGES)
                && names.contains(nats_otel::metrics::names::CONSUMED_MESSAGES))
            .then(|| names.clone())
        })
        .await
        .expect("the receiver got the messaging metrics");
    assert!(metric_names.contains(nats_otel::health::names::CONNECTS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_over_http_protobuf_exports_spans_and_metrics_to_a_real_receiver() {
    let receiver = nats_otel_testkit::receiver::start().await.unwrap();
    // No globals: the providers go to this test's instrumentation only.
    let guard = providers(Settings::from_vars([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
        ("OTEL_SERVICE_NAME", "otlp-http-test".to_owned()),
    ]))
    .expect("telemetry setup");
    let inst = nats_otel::Instrumentation::builder()
        .with_tracer_provider(guard.tracer_provider().expect("a tracer provider"))
        .with_meter_provider(guard.meter_provider().expect("a meter provider"))
        .with_propagator(nats_otel::W3cPropagator::new())
        .build();

    let server = NatsServer::start();
    let client = inst
        .connect(server.url(), nats_otel::ConnectOptions::new())
        .await
        .unwrap();
    let mut sub = client.subscribe("wire.http").await.unwrap();
    client.ping().await.expect("ping");
    client.publish("wire.http", "x".into()).await.unwrap();
    drop(next(&mut sub).await);

    // The HTTP exporter blocks: flush it off the runtime's threads.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let spans = receiver
        .wait_for(Duration::from_secs(10), |store| {
            (store.spans.len() >= 2).then(|| store.spans.clone())
        })
        .await
        .expect("the receiver got both spans");
    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["process wire.http", "publish wire.http"]);
    assert!(spans.iter().all(|s| s.service == "otlp-http-test"));
    let publish = spans
        .iter()
        .find(|s| s.name == "publish wire.http")
        .unwrap();
    let process = spans
        .iter()
        .find(|s| s.name == "process wire.http")
        .unwrap();
    assert_eq!(process.trace_id, publish.trace_id);
    assert_eq!(process.parent_span_id, publish.span_id);
    let names = receiver
        .wait_for(Duration::from_secs(10), |store| {
            store
                .metric_names
                .contains(nats_otel::metrics::names::SENT_MESSAGES)
                .then(|| store.metric_names.clone())
        })
        .await
        .expect("the receiver got the messaging metrics");
    assert!(names.contains(nats_otel::metrics::names::CONSUMED_MESSAGES));
    // Every export came over HTTP: one of the two spans, and the metrics'.
    let store = receiver.store.lock().unwrap();
    assert_eq!(store.http_exports, 1 + store.metric_exports);
}

#[test]
fn otlp_setup_rejects_a_malformed_instrumentation_variable_before_installing_anything() {
    let err = init_with(Settings::from_vars([(
        "OTEL_INSTRUMENTATION_NATS_DISABLED_OPERATIONS",
        "settle,recieve",
    )]))
    .unwrap_err();
    assert_eq!(err.kind(), nats_otel::otlp::SetupErrorKind::InvalidVariable);
    assert!(
        err.to_string().contains(
            "OTEL_INSTRUMENTATION_NATS_DISABLED_OPERATIONS=`settle,recieve`: unknown operation: `recieve`"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn the_receiver_answers_bad_http_requests_with_a_status() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let receiver = nats_otel_testkit::receiver::start().await.unwrap();
    for (request, status) in [
        (
            "GET /v1/traces HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
            "405",
        ),
        ("POST /v1/logs HTTP/1.1\r\ncontent-length: 0\r\n\r\n", "404"),
        ("POST /v1/traces HTTP/1.1\r\n\r\n", "411"),
        (
            "POST /v1/traces HTTP/1.1\r\ncontent-length: 3\r\n\r\n\u{ff}\u{ff}",
            "400",
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(receiver.address)
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer[9..12], status.as_bytes(), "{request:?}");
    }
    assert_eq!(receiver.store.lock().unwrap().http_exports, 0);
}

trait HasSpanContext {
    fn has_active_span_context(&self) -> bool;
}

impl HasSpanContext for opentelemetry::Context {
    fn has_active_span_context(&self) -> bool {
        use opentelemetry::trace::TraceContextExt;
        self.span().span_context().is_valid()
    }
}

/// The bound this test states: traced messaging with the collector down grows
/// the process by less than this, whatever the message count (the batch queue
/// holds at most 2048 spans and drops the rest).
const OUTAGE_RSS_BOUND: u64 = 64 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_down_messaging_completes_memory_stays_bounded_and_export_resumes() {
    let server = NatsServer::start();
    // RSS is per process and this binary runs many tests at once: measure in a
    // process of its own, the `collector_outage` example (built by `cargo test`).
    let example = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("examples/collector_outage")))
        .filter(|path| path.exists())
        .expect("examples/collector_outage built (run the suite with `cargo test --all-features`)");
    let output = tokio::process::Command::new(&example)
        .arg("200000")
        .env("NATS_URL", server.url())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .await
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |name: &str| -> u64 {
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("{name} in {stdout:?}"))
    };
    assert_eq!(field("published"), 200_000, "the run completed");
    let grown = field("rss_growth_bytes");
    eprintln!(
        "collector down: 200000 traced publishes in {} s, RSS grew {:.1} MiB (bound {} MiB)",
        field("seconds"),
        grown as f64 / (1 << 20) as f64,
        OUTAGE_RSS_BOUND >> 20
    );
    assert!(grown < OUTAGE_RSS_BOUND, "RSS grew {grown} bytes");

    // In this process: the collector is down, then comes back on the same
    // address, and export resumes.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let guard = nats_otel::otlp::providers(Settings::from_vars([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_METRICS_EXPORTER", "none".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500".to_owned()),
    ]))
    .expect("telemetry setup");
    let inst = nats_otel::Instrumentation::builder()
        .with_tracer_provider(guard.tracer_provider().expect("tracing on"))
        .with_propagator(nats_otel::W3cPropagator::new())
        .with_metrics(false)
        .build();
    let client = inst
        .connect(server.url(), nats_otel::ConnectOptions::new())
        .await
        .unwrap();
    for i in 0..1000 {
        client
            .publish(format!("outage.{i}"), "x".into())
            .await
            .expect("publishing is unaffected by the collector");
    }
    client.ping().await.expect("ping");

    // The collector comes back on the same address: export resumes.
    let receiver = nats_otel_testkit::receiver::start_at(([127, 0, 0, 1], port).into())
        .await
        .unwrap();
    let mut exported = 0;
    for round in 0..50 {
        client
            .publish("outage.back", format!("{round}").into())
            .await
            .unwrap();
        let received = receiver
            .wait_for(Duration::from_millis(500), |store| {
                (store.received > 0).then_some(store.received)
            })
            .await;
        if let Some(received) = received {
            exported = received;
            break;
        }
    }
    assert!(exported > 0, "spans reach the collector once it is back");
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
}
