//! Connecting: every connect path takes the connection's events and still runs the
//! user's callback; `ping` is a real round trip.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use nats_otel::{ConnectOptions, PingErrorKind};

use crate::support::{NatsServer, Telemetry};

/// A server whose default (no credentials) user may not publish to `secret.>`
/// nor to `_INBOX.denied.>`.
fn restricted_server(dir: &std::path::Path) -> NatsServer {
    let conf = dir.join("server.conf");
    std::fs::write(
        &conf,
        "no_auth_user: bob\nauthorization {\n  users = [ { user: bob, password: unused-s3cr3t, \
         permissions: { publish: { deny: [\"secret.>\", \"_INBOX.denied.>\"] } } } ]\n}\n",
    )
    .unwrap();
    NatsServer::start_with(&["-c", &conf.to_string_lossy()])
}

/// Sends a request to a refused subject and returns how long until it failed
/// and the refused subject it reported.
async fn refused_request(client: &nats_otel::Client) -> (Duration, String) {
    let started = std::time::Instant::now();
    let err = client
        .send_request(
            "secret.plans",
            async_nats::client::Request::new().timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect_err("refused");
    let refused = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<nats_otel::PermissionViolation>())
        .unwrap_or_else(|| panic!("a permission violation, got {err:?}"));
    (started.elapsed(), refused.subject.clone())
}

/// An event callback forwarding each event's text to the returned receiver.
fn forwarding() -> (
    impl Fn(async_nats::Event) -> std::future::Ready<()> + Send + Sync + 'static,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let callback = move |event: async_nats::Event| {
        let _ = tx.send(event.to_string());
        std::future::ready(())
    };
    (callback, rx)
}

async fn next_event_containing(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    text: &str,
) -> String {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap_or_else(|_| panic!("no event containing {text:?}"))
            .expect("callback alive");
        if event.contains(text) {
            return event;
        }
    }
}

#[tokio::test]
async fn every_connect_path_fails_refused_requests_fast_and_runs_the_users_callback() {
    let dir = tempfile::tempdir().unwrap();
    let server = restricted_server(dir.path());
    let telemetry = Telemetry::new();

    // No options at all.
    let plain = nats_otel::connect(server.url()).await.unwrap();
    let (took, subject) = refused_request(&plain).await;
    assert_eq!(subject, "secret.plans");
    assert!(took < Duration::from_secs(5), "connect: took {took:?}");

    // Three ways of passing options with a callback of the user's.
    for path in [
        "connect_with_options",
        "ConnectOptions::connect",
        "Instrumentation::connect",
    ] {
        let (callback, mut events) = forwarding();
        let options = ConnectOptions::new().name(path).event_callback(callback);
        let client = match path {
            "connect_with_options" => nats_otel::connect_with_options(server.url(), options).await,
            "ConnectOptions::connect" => options.connect(server.url()).await,
            _ => {
                telemetry
                    .builder()
                    .build()
                    .connect(server.url(), options)
                    .await
            }
        }
        .unwrap();
        assert_eq!(client.server_info().port, server.port(), "{path}");
        let (took, subject) = refused_request(&client).await;
        assert_eq!(subject, "secret.plans", "{path}");
        assert!(took < Duration::from_secs(5), "{path}: took {took:?}");
        // The user's callback received the same refusal.
        let event = next_event_containing(&mut events, "Permissions Violation").await;
        assert!(event.contains("secret.plans"), "{path}: {event}");
    }
}

#[tokio::test]
async fn the_users_callback_runs_and_reconnects_are_counted_on_the_same_connection() {
    use nats_otel::health::names as health;
    let mut server = NatsServer::start();
    let metrics = crate::support::Metrics::new();
    let (callback, mut events) = forwarding();
    let client = Telemetry::new()
        .builder()
        .with_meter_provider(&metrics.provider)
        .build()
        .connect(
            server.url(),
            ConnectOptions::new()
                .max_reconnects(None)
                .event_callback(callback),
        )
        .await
        .unwrap();
    let reconnects = || crate::metrics::total(&metrics.points(health::RECONNECTS));
    assert_eq!(reconnects(), 0.0);
    server.kill_and_restart();
    next_event_containing(&mut events, "disconnected").await;
    assert_eq!(
        next_event_containing(&mut events, "connected").await,
        "connected"
    );
    assert_eq!(reconnects(), 1.0);
    client.ping().await.expect("ping after the reconnect");
}

#[tokio::test]
async fn ping_waits_for_the_server_to_have_processed_earlier_subscriptions() {
    let server = NatsServer::start();
    let client = nats_otel::connect(server.url()).await.unwrap();
    let raw = server.raw_client().await;
    for round in 0..20 {
        let subject = format!("ping.{round}");
        let mut sub = client.subscribe(subject.clone()).await.unwrap();
        let rtt = client.ping().await.expect("ping");
        assert!(rtt < Duration::from_secs(5), "{rtt:?}");
        // Published from another connection right after: the subscription must
        // already exist on the server, or the message is lost.
        raw.publish(subject, "x".into()).await.unwrap();
        let delivery = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap_or_else(|_| panic!("round {round}: message lost"))
            .expect("subscription open");
        assert_eq!(&delivery.payload[..], b"x");
    }
}

#[tokio::test]
async fn ping_reports_a_timeout_a_refusal_and_an_answering_responder_by_kind() {
    let dir = tempfile::tempdir().unwrap();
    let server = restricted_server(dir.path());

    // Refused: this client's inbox prefix is one it may not publish to.
    let refused = ConnectOptions::new()
        .custom_inbox_prefix("_INBOX.denied")
        .connect(server.url())
        .await
        .unwrap();
    let err = refused.ping().await.expect_err("refused");
    assert_eq!(err.kind(), PingErrorKind::Other);
    assert!(err.to_string().contains("permissions violation"), "{err}");

    // Answered: something replies on every inbox subject.
    let raw = server.raw_client().await;
    let mut everything = raw.subscribe("_INBOX.>").await.unwrap();
    let responder = raw.clone();
    tokio::spawn(async move {
        while let Some(message) = everything.next().await {
            if let Some(reply) = message.reply {
                let _ = responder.publish(reply, "pong".into()).await;
            }
        }
    });
    // Once another connection gets an answer, the responder is in place.
    let answer = server
        .raw_client()
        .await
        .request("_INBOX.check", "".into())
        .await
        .expect("the responder answers");
    assert_eq!(&answer.payload[..], b"pong");
    let client = nats_otel::connect(server.url()).await.unwrap();
    let err = client.ping().await.expect_err("answered");
    assert_eq!(err.kind(), PingErrorKind::Answered);

    // Timed out: the server is gone and the client's request timeout is short.
    let mut server = NatsServer::start();
    let client = ConnectOptions::new()
        .request_timeout(Some(Duration::from_millis(300)))
        .connect(server.url())
        .await
        .unwrap();
    server.kill();
    let err = client.ping().await.expect_err("timed out");
    assert_eq!(err.kind(), PingErrorKind::TimedOut);
}

/// A meter provider that creates no-op instruments and counts the callbacks
/// registered on observable ones.
struct CallbackCounting(Arc<AtomicUsize>);

struct CountingInstruments(Arc<AtomicUsize>);

impl opentelemetry::metrics::MeterProvider for CallbackCounting {
    fn meter_with_scope(
        &self,
        _scope: opentelemetry::InstrumentationScope,
    ) -> opentelemetry::metrics::Meter {
        opentelemetry::metrics::Meter::new(Arc::new(CountingInstruments(self.0.clone())))
    }
}

impl opentelemetry::metrics::InstrumentProvider for CountingInstruments {
    fn u64_observable_counter(
        &self,
        builder: opentelemetry::metrics::AsyncInstrumentBuilder<
            '_,
            opentelemetry::metrics::ObservableCounter<u64>,
            u64,
        >,
    ) -> opentelemetry::metrics::ObservableCounter<u64> {
        self.0.fetch_add(builder.callbacks.len(), Ordering::SeqCst);
        opentelemetry::metrics::ObservableCounter::new()
    }

    fn i64_observable_gauge(
        &self,
        builder: opentelemetry::metrics::AsyncInstrumentBuilder<
            '_,
            opentelemetry::metrics::ObservableGauge<i64>,
            i64,
        >,
    ) -> opentelemetry::metrics::ObservableGauge<i64> {
        self.0.fetch_add(builder.callbacks.len(), Ordering::SeqCst);
        opentelemetry::metrics::ObservableGauge::new()
    }
}

#[tokio::test]
async fn health_callbacks_are_registered_once_per_instrumentation_not_per_connect() {
    let server = NatsServer::start();
    let callbacks = Arc::new(AtomicUsize::new(0));
    let inst = nats_otel::Instrumentation::builder()
        .with_meter_provider(&CallbackCounting(callbacks.clone()))
        .build();
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(
            inst.connect(server.url(), ConnectOptions::new())
                .await
                .unwrap(),
        );
    }
    // Eight observable counters and the connection-state gauge, once.
    assert_eq!(callbacks.load(Ordering::SeqCst), 9);
}

#[tokio::test]
async fn health_metrics_report_each_live_connection_and_forget_dropped_ones() {
    use nats_otel::health::names as health;
    let server = NatsServer::start();
    let metrics = crate::support::Metrics::new();
    let inst = nats_otel::Instrumentation::builder()
        .with_meter_provider(&metrics.provider)
        .build();
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(
            inst.connect(server.url(), ConnectOptions::new())
                .await
                .unwrap(),
        );
    }
    let points = metrics.points(health::CONNECTION_STATE);
    assert_eq!(points.len(), 100, "one series per connection");
    assert_eq!(crate::metrics::total(&points), 100.0, "all connected");
    let kept = clients.pop().unwrap();
    drop(clients);
    let points = metrics.points(health::CONNECTION_STATE);
    assert_eq!(
        points.len(),
        1,
        "dropped connections are no longer observed"
    );
    let id = nats_otel::semconv::MESSAGING_CLIENT_ID;
    let reported = points[0]
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == id)
        .map(|kv| kv.value.as_str().into_owned());
    assert_eq!(reported, Some(kept.server_info().client_id.to_string()));
}
