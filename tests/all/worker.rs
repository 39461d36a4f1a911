//! The consumer worker: retries, dead letters, panics, shutdown, dedup.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use nats_otel::jetstream::dead_letter::{self, headers as dlq, DeadLetter};
use nats_otel::jetstream::dedup::MemoryIdempotency;
use nats_otel::jetstream::{Backoff, HandlerError, Worker, WorkerStats};
use tokio::sync::{mpsc, oneshot};

use crate::support::{attr, next, NatsServer, Telemetry};

pub(crate) struct Fixture {
    _server: NatsServer,
    pub(crate) telemetry: Telemetry,
    pub(crate) js: nats_otel::jetstream::Context,
    pub(crate) consumer: nats_otel::jetstream::PullConsumer,
}

/// Stream `TASKS` on `tasks.>`, durable pull consumer `workers`.
pub(crate) async fn fixture() -> Fixture {
    fixture_with(|builder| builder).await
}

/// [`fixture`] with instrumentation settings of the test's own.
pub(crate) async fn fixture_with(
    configure: impl FnOnce(nats_otel::InstrumentationBuilder) -> nats_otel::InstrumentationBuilder,
) -> Fixture {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry
        .connect(&server, configure(telemetry.builder()).build())
        .await;
    let js = nats_otel::jetstream::new(&client);
    let stream = js
        .inner()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "TASKS".to_owned(),
            subjects: vec!["tasks.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .get_or_create_consumer(
            "workers",
            pull::Config {
                durable_name: Some("workers".to_owned()),
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let consumer = js.pull_consumer(consumer);
    Fixture {
        _server: server,
        telemetry,
        js,
        consumer,
    }
}

fn quick_backoff() -> Backoff {
    Backoff::Exponential {
        initial: Duration::from_millis(40),
        max: Duration::from_secs(1),
        multiplier: 2.0,
        jitter: 0.0,
    }
}

/// Runs `worker` with `handler` until `stop` fires; returns its stats.
pub(crate) fn spawn_worker<H, Fut>(
    worker: Worker,
    handler: H,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<WorkerStats>)
where
    H: Fn(nats_otel::jetstream::Task) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(handler, async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

pub(crate) async fn publish(
    js: &nats_otel::jetstream::Context,
    subject: &str,
    payload: &str,
) -> u64 {
    js.publish(subject.to_owned(), payload.to_owned().into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence
}

/// Stream `stream` on `{name}.>` with a durable pull consumer `name` whose
/// `ack_wait` is 1 s (so `progress` goes out about every 333 ms).
pub(crate) async fn one_second_ack_wait(
    js: &nats_otel::jetstream::Context,
    stream: &str,
    name: &str,
) -> (
    async_nats::jetstream::stream::Stream,
    nats_otel::jetstream::PullConsumer,
) {
    let stream = js
        .inner()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: stream.to_owned(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.to_owned()),
                ack_wait: Duration::from_secs(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    (stream, js.pull_consumer(consumer))
}

/// The next value on `rx`, failing the test after 10 s.
pub(crate) async fn recv<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("value within 10 s")
        .expect("sender alive")
}

pub(crate) async fn consumer_state(f: &Fixture) -> async_nats::jetstream::consumer::Info {
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        f.js.inner()
            .get_stream("TASKS")
            .await
            .unwrap()
            .get_consumer("workers")
            .await
            .unwrap();
    consumer.info().await.unwrap().clone()
}

#[tokio::test]
async fn transient_failures_are_retried_with_growing_delays_then_acked() {
    let f = fixture().await;
    publish(&f.js, "tasks.email", "hello").await;

    let (attempts_tx, mut attempts) = mpsc::unbounded_channel();
    let worker = Worker::new(&f.js, f.consumer.clone())
        .backoff(quick_backoff())
        .max_deliver(5);
    let (stop, task) = spawn_worker(worker, move |message| {
        let attempts_tx = attempts_tx.clone();
        async move {
            let delivered = message.info().map(|i| i.delivered).unwrap_or(0);
            let _ = attempts_tx.send(delivered);
            if delivered < 3 {
                Err(HandlerError::transient("smtp unavailable"))
            } else {
                Ok(())
            }
        }
    });
    for expected in 1..=3 {
        let got = tokio::time::timeout(Duration::from_secs(10), attempts.recv())
            .await
            .expect("handler ran again")
            .unwrap();
        assert_eq!(got, expected);
    }
    stop.send(()).unwrap();
    let stats = task.await.unwrap();
    assert_eq!(stats.handled, 3);
    assert_eq!(stats.retried, 2);
    assert_eq!(stats.acked, 1);
    assert_eq!(stats.dead_lettered, 0);
    assert_eq!(consumer_state(&f).await.num_ack_pending, 0);

    let spans = f.telemetry.spans();
    let naks: Vec<_> = spans.iter().filter(|s| s.name == "nak TASKS").collect();
    let delays: Vec<_> = naks
        .iter()
        .map(|s| attr(s, nats_otel::semconv::MESSAGING_NATS_NAK_DELAY).unwrap())
        .collect();
    assert_eq!(delays, vec![0.04.into(), 0.08.into()], "delays grow");
    let processes: Vec<_> = spans.iter().filter(|s| s.name == "process TASKS").collect();
    assert_eq!(processes.len(), 3);
    let retries = processes
        .iter()
        .filter(|s| s.events.events.iter().any(|e| e.name == "retry"))
        .count();
    assert_eq!(retries, 2, "each retry is visible on its process span");
    let trace = processes[0].span_context.trace_id();
    assert!(processes.iter().all(|s| s.span_context.trace_id() == trace));
    assert_eq!(spans.iter().filter(|s| s.name == "ack TASKS").count(), 1);
}

#[tokio::test]
async fn poison_message_is_dead_lettered_with_provenance_and_termed() {
    let f = fixture().await;
    let dead_letters = DeadLetter::default();
    dead_letter::ensure_stream(&f.js, "DLQ", &dead_letters)
        .await
        .unwrap();
    let sequence = publish(&f.js, "tasks.resize", "corrupt").await;
    let original_trace = f
        .telemetry
        .span("publish tasks.resize")
        .span_context
        .trace_id();

    let handled = Arc::new(AtomicUsize::new(0));
    let counter = handled.clone();
    let worker = Worker::new(&f.js, f.consumer.clone())
        .backoff(quick_backoff())
        .max_deliver(2);
    let (stop, task) = spawn_worker(worker, move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Err(HandlerError::transient("image decoder crashed")) }
    });

    let dlq_stream = f.js.inner().get_stream("DLQ").await.unwrap();
    let dlq_consumer = dlq_stream
        .create_consumer(pull::Config::default())
        .await
        .unwrap();
    let mut dlq_messages = dlq_consumer.messages().await.unwrap();
    let copy = next(&mut dlq_messages).await.unwrap();
    stop.send(()).unwrap();
    let stats = task.await.unwrap();

    assert_eq!(copy.subject.as_str(), "dlq.tasks.resize");
    assert_eq!(&copy.payload[..], b"corrupt");
    let headers = copy.headers.as_ref().unwrap();
    let get = |k: &str| headers.get(k).map(|v| v.as_str().to_owned());
    assert_eq!(
        get(dlq::REASON).as_deref(),
        Some("transient: image decoder crashed")
    );
    assert_eq!(get(dlq::SOURCE_STREAM).as_deref(), Some("TASKS"));
    assert_eq!(get(dlq::SOURCE_SEQUENCE), Some(sequence.to_string()));
    assert_eq!(get(dlq::SOURCE_SUBJECT).as_deref(), Some("tasks.resize"));
    assert_eq!(get(dlq::DELIVERY_COUNT).as_deref(), Some("2"));
    assert_eq!(get(dlq::CONSUMER).as_deref(), Some("workers"));
    // The same provenance, read back the way a replay tool would.
    let info = dead_letter::DeadLetterInfo::from_headers(headers).expect("a dead letter");
    assert_eq!(info.reason, "transient: image decoder crashed");
    assert_eq!(info.stream.as_deref(), Some("TASKS"));
    assert_eq!(info.sequence, Some(sequence));
    assert_eq!(info.subject.as_deref(), Some("tasks.resize"));
    assert_eq!(info.delivery_count, Some(2));
    let traceparent = get("traceparent").expect("trace context on the dead letter");
    assert!(
        traceparent.contains(&original_trace.to_string()),
        "same trace"
    );
    assert!(get(dlq::ORIGINAL_TRACEPARENT)
        .unwrap()
        .contains(&original_trace.to_string()));

    assert_eq!(handled.load(Ordering::SeqCst), 2);
    assert_eq!(stats.dead_lettered, 1);
    assert_eq!(stats.retried, 1);
    let state = consumer_state(&f).await;
    assert_eq!(state.num_ack_pending, 0, "original termed");
    assert_eq!(state.num_pending, 0);

    let spans = f.telemetry.spans();
    assert!(spans.iter().any(|s| s.name == "term TASKS"));
    let dlq_publish = spans
        .iter()
        .find(|s| s.name == "publish dlq.tasks.resize")
        .expect("dead-letter publish span");
    let last_process = spans.iter().rfind(|s| s.name == "process TASKS").unwrap();
    assert_eq!(
        dlq_publish.parent_span_id,
        last_process.span_context.span_id()
    );
    assert!(last_process
        .events
        .events
        .iter()
        .any(|e| e.name == "dead_letter"));
}

#[tokio::test]
async fn failed_dead_letter_publish_leaves_the_original_for_redelivery() {
    let f = fixture().await;
    publish(&f.js, "tasks.bill", "poison").await;
    // No stream holds `dlq.>` yet, so dead-lettering fails.
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let worker = Worker::new(&f.js, f.consumer.clone())
        .backoff(quick_backoff())
        .max_deliver(1);
    let (stop, task) = spawn_worker(worker, move |message| {
        let _ = seen_tx.send(message.info().map(|i| i.delivered).unwrap_or(0));
        async { Err(HandlerError::fatal("unparseable")) }
    });
    assert_eq!(recv(&mut seen).await, 1);
    assert_eq!(
        recv(&mut seen).await,
        2,
        "redelivered after the failed dead letter"
    );
    // Once the dead-letter stream exists, the next attempt lands there.
    dead_letter::ensure_stream(&f.js, "DLQ", &DeadLetter::default())
        .await
        .unwrap();
    let dlq = f.js.inner().get_stream("DLQ").await.unwrap();
    let consumer = dlq.create_consumer(pull::Config::default()).await.unwrap();
    let mut copies = consumer.messages().await.unwrap();
    let copy = next(&mut copies).await.unwrap();
    assert_eq!(&copy.payload[..], b"poison");
    stop.send(()).unwrap();
    let stats = task.await.unwrap();
    assert!(stats.dead_letter_failures >= 1);
    assert_eq!(stats.dead_lettered, 1);
}

#[tokio::test]
async fn dead_letter_layout_inside_the_source_root_is_rejected_clearly() {
    let f = fixture().await;
    let err = dead_letter::ensure_stream(&f.js, "TASKS_DLQ", &DeadLetter::new("tasks.dlq"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), dead_letter::LayoutErrorKind::Overlap);
    let err = err.to_string();
    assert!(err.contains("TASKS"), "{err}");
    assert!(err.contains("10065"), "{err}");
    assert!(
        f.js.inner().get_stream("TASKS_DLQ").await.is_err(),
        "nothing created"
    );
}

#[tokio::test]
async fn handler_panic_is_caught_and_the_message_retried() {
    let f = fixture().await;
    publish(&f.js, "tasks.flaky", "x").await;
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let worker = Worker::new(&f.js, f.consumer.clone()).backoff(quick_backoff());
    let (stop, task) = spawn_worker(worker, move |message| {
        let done_tx = done_tx.clone();
        async move {
            if message.info().map(|i| i.delivered).unwrap_or(0) == 1 {
                panic!("boom");
            }
            let _ = done_tx.send(());
            Ok(())
        }
    });
    tokio::time::timeout(Duration::from_secs(10), done.recv())
        .await
        .expect("retried after the panic");
    stop.send(()).unwrap();
    let stats = task.await.unwrap();
    assert_eq!(stats.panics, 1);
    assert_eq!(stats.retried, 1);
    assert_eq!(stats.acked, 1);
    let panicked = f
        .telemetry
        .spans()
        .into_iter()
        .find(|s| {
            s.name == "process TASKS"
                && matches!(s.status, opentelemetry::trace::Status::Error { .. })
        })
        .expect("panicking attempt marked as error");
    assert!(panicked.events.events.iter().any(|e| e.name == "exception"));
}

#[tokio::test]
async fn shutdown_finishes_in_flight_messages_and_acks_them() {
    let f = fixture().await;
    const N: usize = 5;
    for i in 0..N {
        publish(&f.js, &format!("tasks.{i}"), "slow").await;
    }
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let worker = Worker::new(&f.js, f.consumer.clone()).concurrency(N);
    let (stop, task) = spawn_worker(worker, move |_| {
        let started_tx = started_tx.clone();
        let gate = gate.clone();
        async move {
            let released = gate.notified();
            let _ = started_tx.send(());
            released.await;
            Ok(())
        }
    });
    for _ in 0..N {
        tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await
            .expect("handler started");
    }
    stop.send(()).unwrap();
    // Every handler is mid-work when shutdown begins; let them finish.
    release.notify_waiters();
    let stats = task.await.unwrap();
    assert_eq!(stats.acked, N as u64);
    let state = consumer_state(&f).await;
    assert_eq!(state.num_ack_pending, 0);
    assert_eq!(state.num_pending, 0);
}

#[tokio::test]
async fn redelivered_message_with_a_seen_id_is_not_processed_twice() {
    let f = fixture().await;
    let seen = Arc::new(MemoryIdempotency::new(1000, Duration::from_secs(600)));
    f.js.publish_with_id("tasks.order", "order-7", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // A replica processes order-7 and records it, but its ack never arrives: the
    // server hands the message out again.
    let first = crate::support::batch(&f.consumer, 1, Duration::from_secs(5))
        .await
        .pop()
        .unwrap();
    nats_otel::jetstream::dedup::IdempotencyStore::record(&*seen, "order-7").await;
    first.nak(None).await.unwrap();
    drop(first);
    f.js.publish_with_id("tasks.order", "order-8", "y".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let (done_tx, mut done) = mpsc::unbounded_channel();
    let worker = Worker::new(&f.js, f.consumer.clone()).idempotency(seen.clone());
    let (stop, task) = spawn_worker(worker, move |message| {
        let _ = done_tx.send(message.payload.clone());
        async { Ok(()) }
    });
    assert_eq!(&recv(&mut done).await[..], b"y");
    stop.send(()).unwrap();
    let stats = task.await.unwrap();
    assert_eq!(stats.duplicates_skipped, 1);
    assert_eq!(stats.handled, 1);
    assert!(
        done.try_recv().is_err(),
        "order-7 never reached the handler again"
    );
    assert_eq!(
        consumer_state(&f).await.num_ack_pending,
        0,
        "the skipped one is acked"
    );
    assert_eq!(seen.len(), 2, "order-8 recorded after success");
    let skipped: Vec<_> = f
        .telemetry
        .spans()
        .into_iter()
        .filter(|s| {
            s.events
                .events
                .iter()
                .any(|e| e.name == "duplicate_skipped")
        })
        .collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!(
        attr(&skipped[0], nats_otel::semconv::MESSAGING_NATS_DELIVERED),
        Some(2i64.into()),
        "it was a redelivery"
    );
}

#[tokio::test]
async fn max_deliveries_advisory_dead_letters_messages_of_other_consumers() {
    let f = fixture().await;
    let dead_letters = DeadLetter::default();
    dead_letter::ensure_stream(&f.js, "DLQ", &dead_letters)
        .await
        .unwrap();
    let stream = f.js.inner().get_stream("TASKS").await.unwrap();
    let manual = stream
        .get_or_create_consumer(
            "manual",
            pull::Config {
                durable_name: Some("manual".to_owned()),
                max_deliver: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let manual = f.js.pull_consumer(manual);
    let forwarder = dead_letters
        .max_deliveries_forwarder(&f.js, "TASKS", "manual")
        .await
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let forwarding = tokio::spawn(forwarder.run(async move {
        let _ = stopped.await;
    }));

    let sequence = publish(&f.js, "tasks.manual", "stuck").await;
    let trace = f
        .telemetry
        .span("publish tasks.manual")
        .span_context
        .trace_id();
    // A hand-written consumer that gives up without dead-lettering.
    for attempt in 1..=2 {
        let delivery = crate::support::batch(&manual, 1, Duration::from_secs(5))
            .await
            .pop()
            .expect("delivered");
        assert_eq!(delivery.info().unwrap().delivered, attempt);
        delivery.nak(None).await.unwrap();
    }
    // The server notices the limit when the consumer next pulls.
    let after = crate::support::batch(&manual, 1, Duration::from_millis(500)).await;
    assert!(after.is_empty(), "not delivered a third time");

    let dlq = f.js.inner().get_stream("DLQ").await.unwrap();
    let reader = dlq.create_consumer(pull::Config::default()).await.unwrap();
    let mut copies = reader.messages().await.unwrap();
    let copy = next(&mut copies).await.unwrap();
    stop.send(()).unwrap();
    assert_eq!(forwarding.await.unwrap(), 1);

    let headers = copy.headers.as_ref().unwrap();
    let get = |k: &str| headers.get(k).map(|v| v.as_str().to_owned());
    assert_eq!(copy.subject.as_str(), "dlq.tasks.manual");
    assert_eq!(
        get(dlq::REASON).as_deref(),
        Some("max deliveries (2) reached")
    );
    assert_eq!(get(dlq::SOURCE_SEQUENCE), Some(sequence.to_string()));
    assert_eq!(get(dlq::CONSUMER).as_deref(), Some("manual"));
    assert!(get("traceparent").unwrap().contains(&trace.to_string()));
}

#[tokio::test]
async fn kv_idempotency_is_shared_between_replicas() {
    let f = fixture().await;
    let one = nats_otel::jetstream::dedup::KvIdempotency::create(
        f.js.inner(),
        "processed",
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    let other = nats_otel::jetstream::dedup::KvIdempotency::create(
        f.js.inner(),
        "processed",
        Duration::from_secs(600),
    )
    .await
    .unwrap();
    use nats_otel::jetstream::dedup::IdempotencyStore;
    assert!(!other.seen("order 9/α").await);
    one.record("order 9/α").await;
    assert!(other.seen("order 9/α").await, "seen by another replica");
    assert!(!other.seen("order 10").await);
}

#[tokio::test]
async fn long_handlers_send_progress_so_ack_wait_does_not_expire() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let (_, consumer) = one_second_ack_wait(&js, "SLOW", "slow").await;
    publish(&js, "slow.report", "big").await;

    let (done_tx, mut done) = mpsc::unbounded_channel();
    let worker = Worker::new(&js, consumer).concurrency(2);
    let (stop, task) = spawn_worker(worker, move |message| {
        let done_tx = done_tx.clone();
        async move {
            // Work that outlasts ack_wait (1 s) more than twice over.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let _ = done_tx.send(message.info().map(|i| i.delivered).unwrap_or(0));
            Ok(())
        }
    });
    assert_eq!(recv(&mut done).await, 1, "first delivery finished");
    stop.send(()).unwrap();
    let stats = task.await.unwrap();
    assert_eq!(stats.handled, 1, "never redelivered while in progress");
    assert_eq!(stats.acked, 1);
    let progress = telemetry
        .spans()
        .iter()
        .filter(|s| s.name == "progress SLOW")
        .count();
    assert!(
        progress >= 2,
        "progress sent every third of ack_wait ({progress})"
    );
}

#[cfg(feature = "compression")]
#[tokio::test]
async fn undecodable_payloads_are_dead_lettered_with_the_reason_and_never_handled() {
    use crate::compression::{encoded, text, zstd_bomb};
    let f = fixture().await;
    let dead_letters = DeadLetter::default();
    dead_letter::ensure_stream(&f.js, "DLQ", &dead_letters)
        .await
        .unwrap();
    let good = zstd::bulk::compress(&text(50_000), 3).unwrap();
    let truncated = bytes::Bytes::copy_from_slice(&good[..good.len() - 7]);
    let raw = f.js.inner();
    for (subject, payload) in [
        ("tasks.truncated", truncated),
        ("tasks.bomb", zstd_bomb(8192)),
    ] {
        raw.publish_with_headers(subject, encoded("zstd"), payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // One well-formed compressed task goes through to the handler, decoded.
    let compressing =
        f.js.clone()
            .with_compression(Some(nats_otel::compression::Compression::zstd()));
    compressing
        .publish("tasks.fine", text(50_000))
        .await
        .unwrap()
        .await
        .unwrap();

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let worker = Worker::new(&f.js, f.consumer.clone()).max_deliver(3);
    let (stop, task) = spawn_worker(worker, move |message| {
        let _ = seen_tx.send((message.subject.to_string(), message.payload.len()));
        async { Ok(()) }
    });
    let dlq_stream = f.js.inner().get_stream("DLQ").await.unwrap();
    let dlq_consumer = dlq_stream
        .create_consumer(pull::Config::default())
        .await
        .unwrap();
    let mut dlq_messages = dlq_consumer.messages().await.unwrap();
    let mut reasons = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let copy = next(&mut dlq_messages).await.unwrap();
        let reason = copy
            .headers
            .as_ref()
            .and_then(|h| h.get(dlq::REASON))
            .map(|v| v.as_str().to_owned())
            .unwrap();
        reasons.insert(copy.subject.to_string(), reason);
    }
    assert_eq!(recv(&mut seen).await, ("tasks.fine".to_owned(), 50_000));
    stop.send(()).unwrap();
    let stats = task.await.unwrap();

    let truncated = &reasons["dlq.tasks.truncated"];
    assert!(
        truncated.starts_with("undecodable payload: corrupt zstd payload"),
        "{truncated}"
    );
    let bomb = &reasons["dlq.tasks.bomb"];
    assert!(
        bomb.starts_with("undecodable payload: zstd payload decodes to more than"),
        "{bomb}"
    );
    // Not retried, never handed to the handler, nothing left pending.
    assert_eq!(stats.handled, 1);
    assert_eq!(stats.retried, 0);
    assert_eq!(stats.dead_lettered, 2);
    let state = consumer_state(&f).await;
    assert_eq!(state.num_ack_pending, 0);
    assert_eq!(state.num_pending, 0);
}

#[tokio::test]
async fn worker_outcomes_set_exact_error_types_on_span_and_metric() {
    use nats_otel::metrics::names;
    use nats_otel::semconv;
    let metrics = crate::support::Metrics::new();
    let f = fixture_with(|builder| builder.with_meter_provider(&metrics.provider)).await;
    let (js, telemetry) = (&f.js, &f.telemetry);
    dead_letter::ensure_stream(js, "DLQ", &DeadLetter::default())
        .await
        .unwrap();
    for outcome in ["ok", "transient", "fatal", "panic", "recorded"] {
        publish(js, &format!("tasks.{outcome}"), "x").await;
    }
    let (done_tx, mut done) = mpsc::unbounded_channel();
    // One delivery each: failures go straight to the dead-letter stream.
    let worker = Worker::new(js, f.consumer.clone()).max_deliver(1);
    let (stop, task) = spawn_worker(worker, move |task| {
        let done_tx = done_tx.clone();
        async move {
            match task.subject.as_str() {
                "tasks.transient" => Err(HandlerError::transient("dependency down")),
                "tasks.fatal" => Err(HandlerError::fatal("malformed")),
                "tasks.panic" => panic!("handler bug"),
                "tasks.recorded" => {
                    // Recorded by the handler, yet acknowledged.
                    task.record_error(&std::io::Error::other("cache miss"));
                    let _ = done_tx.send(());
                    Ok(())
                }
                _ => {
                    let _ = done_tx.send(());
                    Ok(())
                }
            }
        }
    });
    let dlq = js.inner().get_stream("DLQ").await.unwrap();
    let reader = dlq.create_consumer(pull::Config::default()).await.unwrap();
    let mut copies = reader.messages().await.unwrap();
    for _ in 0..3 {
        next(&mut copies).await.unwrap();
    }
    for _ in 0..2 {
        recv(&mut done).await;
    }
    stop.send(()).unwrap();
    let stats = task.await.unwrap();
    assert_eq!(stats.acked, 2);
    assert_eq!(stats.dead_lettered, 3);

    let mut spans: Vec<(String, Option<String>)> = telemetry
        .spans()
        .iter()
        .filter(|s| s.name == "process TASKS")
        .map(|s| {
            (
                crate::support::attr_str(s, semconv::MESSAGING_DESTINATION_NAME).unwrap(),
                crate::support::attr_str(s, semconv::ERROR_TYPE),
            )
        })
        .collect();
    spans.sort();
    let expected = |t: &str| Some(t.to_owned());
    assert_eq!(
        spans,
        [
            ("tasks.fatal".to_owned(), expected("fatal")),
            ("tasks.ok".to_owned(), None),
            ("tasks.panic".to_owned(), expected("panic")),
            (
                "tasks.recorded".to_owned(),
                expected("std::io::error::Error")
            ),
            ("tasks.transient".to_owned(), expected("transient")),
        ]
    );
    let mut points: Vec<(Option<String>, f64)> = metrics
        .points(names::PROCESS_DURATION)
        .into_iter()
        .map(|p| (p.attr(semconv::ERROR_TYPE), p.value))
        .collect();
    points.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        points,
        [
            (None, 1.0),
            (expected("fatal"), 1.0),
            (expected("panic"), 1.0),
            (expected("std::io::error::Error"), 1.0),
            (expected("transient"), 1.0),
        ]
    );
}
