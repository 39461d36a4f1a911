//! The traced pull consumer, used the async-nats way: `fetch()`, `batch()`,
//! `stream()` and `sequence()` builders, one `receive` span per pull, typed errors.

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use futures_util::StreamExt;
use nats_otel::semconv;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::trace::SpanData;

use crate::support::{attr, attr_str, next, NatsServer, Telemetry};

/// A stream `JOBS` on `jobs.>`, `n` messages published to `jobs.run`, and a
/// durable pull consumer `runner` configured by `configure`.
async fn jobs(
    js: &nats_otel::jetstream::Context,
    n: usize,
    configure: impl FnOnce(pull::Config) -> pull::Config,
) -> nats_otel::jetstream::PullConsumer {
    let stream = js
        .inner()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "JOBS".to_owned(),
            subjects: vec!["jobs.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..n {
        js.publish("jobs.run", format!("{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let consumer = stream
        .create_consumer(configure(pull::Config {
            durable_name: Some("runner".to_owned()),
            filter_subject: "jobs.run".to_owned(),
            ..Default::default()
        }))
        .await
        .unwrap();
    js.pull_consumer(consumer)
}

fn receives(spans: &[SpanData]) -> Vec<&SpanData> {
    spans
        .iter()
        .filter(|s| s.name == "receive jobs.run")
        .collect()
}

fn count(span: &SpanData) -> Option<i64> {
    match attr(span, semconv::MESSAGING_BATCH_MESSAGE_COUNT) {
        Some(opentelemetry::Value::I64(n)) => Some(n),
        _ => None,
    }
}

#[tokio::test]
async fn fetch_and_batch_builders_yield_traced_deliveries_in_one_receive_span_per_pull() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let consumer = jobs(&js, 5, |c| c).await;

    let mut fetched = consumer
        .fetch()
        .max_messages(3)
        .messages()
        .await
        .expect("fetch");
    let mut payloads = Vec::new();
    let mut producers = Vec::new();
    let mut last_handed_over = std::time::SystemTime::UNIX_EPOCH;
    while let Some(delivery) = fetched.next().await {
        last_handed_over = std::time::SystemTime::now();
        let delivery = delivery.expect("delivered");
        payloads.push(String::from_utf8(delivery.payload.to_vec()).unwrap());
        producers.push(delivery.producer_context().span().span_context().clone());
        // The caller's own work (an ack and a round trip) between messages.
        delivery.ack().await.unwrap();
        client.ping().await.unwrap();
    }
    assert_eq!(payloads, ["0", "1", "2"]);
    drop(fetched);

    // A batch dropped after its first message still records its pull.
    let mut waiting = consumer
        .batch()
        .max_messages(10)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("batch");
    let first = waiting.next().await.unwrap().expect("delivered");
    assert_eq!(&first.payload[..], b"3");
    first.ack().await.unwrap();
    drop((first, waiting));

    let spans = telemetry.spans();
    let receives = receives(&spans);
    assert_eq!(receives.len(), 2, "one receive span per pull");
    let fetch = receives
        .iter()
        .find(|s| count(s) == Some(3))
        .expect("the fetch's span");
    let linked: Vec<_> = fetch
        .links
        .links
        .iter()
        .map(|l| l.span_context.clone())
        .collect();
    assert_eq!(linked, producers, "linked to every producer, in order");
    // The span ends with the last message, not after the caller's work on it.
    assert!(
        fetch.end_time <= last_handed_over,
        "receive ended {:?} after the last message was handed over",
        fetch
            .end_time
            .duration_since(last_handed_over)
            .unwrap_or_default()
    );
    assert_eq!(
        attr_str(fetch, semconv::MESSAGING_CONSUMER_GROUP_NAME).as_deref(),
        Some("runner")
    );
    assert!(
        receives.iter().any(|s| count(s) == Some(1)),
        "the dropped batch"
    );
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.name == "process jobs.run")
            .count(),
        4
    );
}

#[tokio::test]
async fn stream_builder_and_sequence_deliver_every_message_traced() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let consumer = jobs(&js, 6, |c| c).await;

    let mut stream = consumer
        .stream()
        .max_messages_per_batch(2)
        .heartbeat(Duration::from_secs(1))
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("stream");
    for expected in ["0", "1", "2", "3", "4", "5"] {
        let delivery = stream.next().await.unwrap().expect("delivered");
        assert_eq!(&delivery.payload[..], expected.as_bytes());
        delivery.ack().await.unwrap();
    }
    drop(stream);

    // A second consumer on the same messages, pulled three at a time.
    let other = js.inner().get_stream("JOBS").await.unwrap();
    let other = other
        .create_consumer(pull::Config {
            durable_name: Some("sequence".to_owned()),
            filter_subject: "jobs.run".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let other = js.pull_consumer(other);
    let mut sequence = other.sequence(3).expect("sequence");
    let mut seen = Vec::new();
    while seen.len() < 6 {
        let mut batch = sequence.next().await.unwrap().expect("a pull");
        while let Some(delivery) = batch.next().await {
            let delivery = delivery.expect("delivered");
            seen.push(String::from_utf8(delivery.payload.to_vec()).unwrap());
            delivery.ack().await.unwrap();
        }
    }
    assert_eq!(seen, ["0", "1", "2", "3", "4", "5"]);
    drop(sequence);

    let spans = telemetry.spans();
    assert_eq!(
        spans
            .iter()
            .filter(|s| s.name == "process jobs.run")
            .count(),
        12
    );
    let counts: Vec<i64> = receives(&spans).iter().filter_map(|s| count(s)).collect();
    assert_eq!(counts, [3, 3], "the sequence's two pulls");
}

#[tokio::test]
async fn pull_errors_are_async_nats_typed_errors_and_fail_the_receive_span() {
    use async_nats::jetstream::consumer::pull::BatchErrorKind;
    use async_nats::jetstream::consumer::PriorityPolicy;
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let consumer = jobs(&js, 1, |c| pull::Config {
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec!["A".to_owned()],
        ..c
    })
    .await;

    let err = consumer
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .expect_err("pinned");
    assert_eq!(err.kind(), BatchErrorKind::PinnedClient);
    let err = consumer
        .batch()
        .max_messages(1)
        .messages()
        .await
        .expect_err("pinned");
    assert_eq!(err.kind(), BatchErrorKind::PinnedClient);
    let err = consumer.sequence(1).expect_err("pinned");
    assert_eq!(err.kind(), BatchErrorKind::PinnedClient);

    let spans = telemetry.spans();
    let failed = receives(&spans);
    assert_eq!(failed.len(), 2, "one failed receive span per failed pull");
    for span in failed {
        assert_eq!(
            attr_str(span, semconv::ERROR_TYPE).as_deref(),
            Some("pinned_client")
        );
    }

    // Info through the traced consumer: async-nats's own types.
    let mut consumer = consumer;
    let info: &async_nats::jetstream::consumer::Info = consumer.info().await.unwrap();
    assert_eq!(info.num_pending, 1);
    assert_eq!(consumer.cached_info().name, "runner");
    assert_eq!(consumer.get_info().await.unwrap().num_pending, 1);
}

/// A continuous stream whose pull the server no longer holds (its batch was
/// dropped by a full subscription: async-nats still counts it as coming) is
/// restarted within seconds, not after async-nats's own `expires` + 5 s.
#[tokio::test]
async fn a_stalled_pull_stream_is_restarted_when_the_server_holds_no_pull() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry
        .builder()
        .build()
        .connect(
            server.url(),
            nats_otel::ConnectOptions::new()
                .subscription_capacity(32)
                .custom_inbox_prefix("_STALL"),
        )
        .await
        .unwrap();
    // A second connection sees what the server delivers to the stream's inbox.
    let monitor = async_nats::connect(server.url()).await.unwrap();
    let mut delivered = monitor.subscribe("_STALL.>").await.unwrap();
    crate::support::sync(&monitor).await;
    let js = nats_otel::jetstream::new(&client);
    // A first batch of 200 overflows the subscription; the 32 after it fit.
    let consumer = jobs(&js, 232, |c| pull::Config {
        ack_wait: Duration::from_secs(300),
        ..c
    })
    .await;
    // async-nats alone would wait `expires` + 5 s = 305 s before pulling again.
    let mut stream = consumer
        .stream()
        .max_messages_per_batch(200)
        .expires(Duration::from_secs(300))
        .messages()
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let first = next(&mut stream).await.unwrap();
    seen.insert(first.info().unwrap().stream_sequence);
    first.ack().await.unwrap();
    // The whole first batch is delivered while nobody reads: the subscription
    // keeps 32 and drops the rest. Seen by the monitor, then a round trip on the
    // client's connection: every delivery before it has been read (and dropped).
    let mut batch = 0;
    while batch < 200 {
        let message = next(&mut delivered).await;
        if message
            .reply
            .is_some_and(|reply| reply.starts_with("$JS.ACK."))
        {
            batch += 1;
        }
    }
    crate::support::sync(client.inner()).await;
    while !(201..=232).all(|seq| seen.contains(&seq)) {
        let delivery = next(&mut stream).await.unwrap();
        seen.insert(delivery.info().unwrap().stream_sequence);
        // Acknowledged by the server before the next: the counts below are exact.
        delivery.double_ack().await.unwrap();
    }
    assert_eq!(stream.restarts(), 1);
    assert_eq!(stream.stall_checks(), 1);
    // What the full subscription dropped is still owed (redelivered after
    // `ack_wait`), not lost.
    let dropped = 200 - (seen.len() - 32);
    assert!(
        dropped > 0,
        "the subscription dropped nothing: no stall was made"
    );
    let info = consumer.get_info().await.unwrap();
    assert_eq!(info.num_pending, 0);
    assert_eq!(info.num_ack_pending, dropped);
}

/// A stream waiting on a pull the server holds (here: `max_ack_pending`
/// reached) is checked once and left alone.
#[tokio::test]
async fn a_pull_stream_the_server_holds_a_pull_for_is_not_restarted() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let consumer = jobs(&js, 20, |c| pull::Config {
        max_ack_pending: 5,
        ..c
    })
    .await;
    let mut stream = consumer
        .stream()
        .stall_check(Some(Duration::from_millis(100)))
        .messages()
        .await
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next(&mut stream).await.unwrap());
    }
    // Nothing more comes until these are acked: wait for the check itself.
    tokio::time::timeout(
        Duration::from_secs(10),
        std::future::poll_fn(|cx| {
            use futures_util::StreamExt;
            match stream.poll_next_unpin(cx) {
                std::task::Poll::Ready(item) => panic!("unexpected item: {item:?}"),
                std::task::Poll::Pending if stream.stall_checks() >= 1 => {
                    std::task::Poll::Ready(())
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        }),
    )
    .await
    .expect("a stall check within 10 s");
    for delivery in held {
        delivery.double_ack().await.unwrap();
    }
    for _ in 0..15 {
        next(&mut stream).await.unwrap().double_ack().await.unwrap();
    }
    assert_eq!(stream.restarts(), 0);
    let info = consumer.get_info().await.unwrap();
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_pending, 0);
}
