//! JetStream publish: one span per message, open until the PubAck.

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use nats_otel::semconv;
use opentelemetry::trace::{SpanKind, Status};

use crate::support::{attr, attr_str, next, NatsServer, Telemetry};

/// A stream `ORDERS` on `orders.>` and a durable pull consumer `inventory` on it.
async fn orders_consumer(
    js: &nats_otel::jetstream::Context,
    filter: &str,
) -> nats_otel::jetstream::PullConsumer {
    let stream = js
        .inner()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".to_owned(),
            subjects: vec!["orders.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .get_or_create_consumer(
            "inventory",
            pull::Config {
                durable_name: Some("inventory".to_owned()),
                filter_subject: filter.to_owned(),
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    js.pull_consumer(consumer)
}

#[tokio::test]
async fn publish_span_records_the_ack_and_duplicates() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    js.inner()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".to_owned(),
            subjects: vec!["orders.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();

    let first = js
        .publish_with_id("orders.created", "order-1", "a".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let again = js
        .publish_with_id("orders.created", "order-1", "a".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(again.sequence, first.sequence);
    let mut stream = js.inner().get_stream("ORDERS").await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        1,
        "stored once"
    );

    let spans: Vec<_> = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "publish orders.created")
        .collect();
    assert_eq!(spans.len(), 2);
    for (span, duplicate) in spans.iter().zip([false, true]) {
        assert_eq!(
            attr_str(span, semconv::MESSAGING_NATS_STREAM).as_deref(),
            Some("ORDERS")
        );
        assert_eq!(
            attr(span, semconv::MESSAGING_NATS_STREAM_SEQUENCE),
            Some(1i64.into())
        );
        assert_eq!(
            attr(span, semconv::MESSAGING_NATS_DUPLICATE),
            Some(duplicate.into())
        );
        assert_eq!(
            attr_str(span, semconv::MESSAGING_MESSAGE_ID).as_deref(),
            Some("order-1")
        );
        assert_eq!(span.status, Status::Unset);
    }
}

#[tokio::test]
async fn publish_without_a_stream_fails_with_error_type_on_the_span() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);

    let result = match js.publish("nowhere.stored", "x".into()).await {
        Ok(ack) => ack.await.map(|_| ()),
        Err(err) => Err(err),
    };
    let err = result.unwrap_err();
    let expected = nats_otel::error_type(&err.kind());

    let span = telemetry.span("publish nowhere.stored");
    assert_eq!(attr_str(&span, semconv::ERROR_TYPE), Some(expected));
    assert!(matches!(span.status, Status::Error { .. }));
    assert!(attr(&span, semconv::MESSAGING_NATS_STREAM).is_none());
}

#[tokio::test]
async fn message_id_that_cannot_be_a_header_is_an_error_not_a_panic() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    assert!(js
        .publish_with_id("orders.x", "bad\r\nid", "x".into())
        .await
        .is_err());
}

#[tokio::test]
async fn publish_process_ack_is_one_trace() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let consumer = orders_consumer(&js, "orders.*").await;
    assert_eq!(consumer.template(), "orders.*");

    let ack = js
        .publish("orders.created", "o-1".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let delivery = next(&mut messages).await.unwrap();
    delivery
        .in_span(async { assert_eq!(&delivery.payload[..], b"o-1") })
        .await;
    delivery.ack().await.unwrap();
    drop(delivery);

    let publish = telemetry.span("publish orders.created");
    let process = telemetry.span("process orders.*");
    let settle = telemetry.span("ack orders.*");
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(settle.span_kind, SpanKind::Client);
    let trace = publish.span_context.trace_id();
    assert_eq!(process.span_context.trace_id(), trace);
    assert_eq!(settle.span_context.trace_id(), trace);
    assert_eq!(process.parent_span_id, publish.span_context.span_id());
    assert_eq!(process.links.links.len(), 1);
    assert_eq!(settle.parent_span_id, process.span_context.span_id());
    let seq = i64::try_from(ack.sequence).unwrap();
    assert_eq!(
        attr(&publish, semconv::MESSAGING_NATS_STREAM_SEQUENCE),
        Some(seq.into())
    );

    assert_eq!(
        attr_str(&process, semconv::MESSAGING_NATS_STREAM).as_deref(),
        Some("ORDERS")
    );
    assert_eq!(
        attr_str(&process, semconv::MESSAGING_NATS_CONSUMER).as_deref(),
        Some("inventory")
    );
    assert_eq!(
        attr_str(&process, semconv::MESSAGING_CONSUMER_GROUP_NAME).as_deref(),
        Some("inventory")
    );
    assert_eq!(
        attr_str(&process, semconv::MESSAGING_DESTINATION_NAME).as_deref(),
        Some("orders.created")
    );
    assert_eq!(
        attr(&process, semconv::MESSAGING_NATS_STREAM_SEQUENCE),
        Some(seq.into())
    );
    assert_eq!(
        attr(&process, semconv::MESSAGING_NATS_CONSUMER_SEQUENCE),
        Some(1i64.into())
    );
    assert_eq!(
        attr(&process, semconv::MESSAGING_NATS_DELIVERED),
        Some(1i64.into())
    );
    assert_eq!(
        attr(&process, semconv::MESSAGING_NATS_PENDING),
        Some(0i64.into())
    );
    assert_eq!(
        attr_str(&process, semconv::MESSAGING_MESSAGE_ID),
        Some(ack.sequence.to_string()),
        "stream sequence stands in for a missing Nats-Msg-Id"
    );
    match attr(&process, semconv::MESSAGING_NATS_QUEUE_WAIT) {
        Some(opentelemetry::Value::F64(wait)) => assert!((0.0..60.0).contains(&wait), "{wait}"),
        other => panic!("queue wait missing: {other:?}"),
    }

    assert_eq!(
        attr_str(&settle, semconv::MESSAGING_OPERATION_NAME).as_deref(),
        Some("ack")
    );
    assert_eq!(
        attr_str(&settle, semconv::MESSAGING_OPERATION_TYPE).as_deref(),
        Some("settle")
    );
    assert_eq!(
        attr(&settle, semconv::MESSAGING_NATS_STREAM_SEQUENCE),
        Some(seq.into()),
        "the settle span names the message it settles"
    );
    assert!(telemetry.spans().iter().all(|s| !s.name.contains("$JS")));
}

#[tokio::test]
async fn fetch_is_one_receive_span_linking_every_message() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "ORDERS".to_owned(),
        subjects: vec!["orders.>".to_owned()],
        ..Default::default()
    })
    .await
    .unwrap();

    const N: usize = 5;
    for i in 0..N {
        js.publish(format!("orders.{i}.created"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // A no-wait fetch: the consumer, made after the publishes, has them all.
    let consumer = orders_consumer(&js, "").await;
    let deliveries = crate::support::fetch(&consumer, 10).await;
    assert_eq!(deliveries.len(), N);
    for delivery in &deliveries {
        delivery.ack().await.unwrap();
    }
    drop(deliveries);

    let receive = telemetry.span("receive ORDERS");
    assert_eq!(receive.span_kind, SpanKind::Client);
    assert_eq!(
        attr(&receive, semconv::MESSAGING_BATCH_MESSAGE_COUNT),
        Some((N as i64).into())
    );
    assert_eq!(receive.links.links.len(), N);
    let publishes: Vec<_> = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "publish orders.*.created")
        .collect();
    assert_eq!(publishes.len(), N);
    for publish in &publishes {
        assert!(receive
            .links
            .links
            .iter()
            .any(|l| l.span_context.span_id() == publish.span_context.span_id()));
    }
    let processes = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "process ORDERS")
        .count();
    assert_eq!(processes, N);
    let acks = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "ack ORDERS")
        .count();
    assert_eq!(acks, N);
}

#[tokio::test]
async fn nak_and_term_are_settle_spans_with_their_outcome() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let consumer = orders_consumer(&js, "orders.>").await;
    js.publish("orders.retry", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();

    let first = crate::support::batch(&consumer, 1, Duration::from_secs(5))
        .await
        .remove(0);
    first.nak(Some(Duration::from_millis(50))).await.unwrap();
    drop(first);
    // Redelivered after the nak delay: the batch waits for it.
    let second = crate::support::batch(&consumer, 1, Duration::from_secs(5))
        .await
        .remove(0);
    assert_eq!(second.info().unwrap().delivered, 2);
    second.progress().await.unwrap();
    second.term().await.unwrap();
    drop(second);

    let nak = telemetry.span("nak orders.>");
    assert_eq!(
        attr(&nak, semconv::MESSAGING_NATS_NAK_DELAY),
        Some(0.05.into())
    );
    assert_eq!(
        attr(&nak, semconv::MESSAGING_NATS_DELIVERED),
        Some(1i64.into())
    );
    let term = telemetry.span("term orders.>");
    assert_eq!(
        attr(&term, semconv::MESSAGING_NATS_DELIVERED),
        Some(2i64.into())
    );
    assert_eq!(term.status, Status::Unset);
    telemetry.span("progress orders.>");
    let processes: Vec<_> = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "process orders.>")
        .collect();
    assert_eq!(processes.len(), 2);
    assert_eq!(
        processes[0].span_context.trace_id(),
        processes[1].span_context.trace_id()
    );
}

#[tokio::test]
async fn pipelined_publishes_stay_bounded_and_each_span_ends_at_its_own_ack() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    orders_consumer(&js, "").await;

    const N: usize = 1000;
    const MAX: usize = 32;
    let pipeline = js.pipeline(MAX);
    let mut handles = Vec::with_capacity(N);
    for i in 0..N {
        handles.push(
            pipeline
                .publish_with_id("orders.piped", &format!("p-{i}"), "x".into())
                .await
                .unwrap(),
        );
        assert!(pipeline.in_flight() <= MAX);
    }
    let mut sequences = std::collections::HashSet::new();
    for handle in handles {
        sequences.insert(handle.await.unwrap().sequence);
    }
    assert_eq!(sequences.len(), N);

    let spans: Vec<_> = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "publish orders.piped")
        .collect();
    assert_eq!(spans.len(), N);
    // Sweep the span intervals: how many were open at once.
    let mut edges: Vec<(std::time::SystemTime, i32)> = spans
        .iter()
        .flat_map(|s| [(s.start_time, 1), (s.end_time, -1)])
        .collect();
    edges.sort();
    let (mut open, mut most) = (0, 0);
    for (_, step) in edges {
        open += step;
        most = most.max(open);
    }
    assert!(most > 1, "publishes overlapped (pipelined)");
    assert!(most <= MAX as i32, "at most {MAX} in flight, saw {most}");
    assert!(spans
        .iter()
        .all(|s| attr(s, semconv::MESSAGING_NATS_STREAM_SEQUENCE).is_some()));
}

/// A JetStream context with tracing and metrics off, and the ORDERS stream.
async fn untraced_orders(server: &NatsServer) -> nats_otel::jetstream::Context {
    let raw = async_nats::connect(server.url()).await.unwrap();
    let client = nats_otel::Client::new(
        raw,
        nats_otel::Instrumentation::builder()
            .with_tracing(false)
            .with_metrics(false)
            .build(),
    );
    let js = nats_otel::jetstream::new(&client);
    orders_consumer(&js, "").await;
    js
}

#[tokio::test]
async fn a_pipeline_with_tracing_and_metrics_off_stays_bounded_and_acks_every_publish() {
    // Nothing of this crate's to do per message: publishes go straight to
    // async-nats, with the same window and acks.
    let server = NatsServer::start();
    let js = untraced_orders(&server).await;

    const N: usize = 500;
    const MAX: usize = 16;
    let pipeline = js.pipeline(MAX);
    let mut handles = Vec::with_capacity(N);
    for _ in 0..N {
        handles.push(pipeline.publish("orders.plain", "x".into()).await.unwrap());
        assert!(pipeline.in_flight() <= MAX);
    }
    let mut sequences = Vec::with_capacity(N);
    for handle in handles {
        sequences.push(handle.await.unwrap().sequence);
    }
    // In publish order, one stored message each.
    assert_eq!(sequences, (1..=N as u64).collect::<Vec<_>>());
    assert_eq!(pipeline.in_flight(), 0);
    let mut stream = js.inner().get_stream("ORDERS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, N as u64);
    let stored = stream.get_raw_message(1).await.unwrap();
    assert!(stored.headers.get("traceparent").is_none());
}

/// Publishes `n` messages to `subject` through `pipeline`, dropping each handle.
async fn publish_dropping_handles(
    pipeline: &nats_otel::jetstream::Pipeline,
    subject: &str,
    n: usize,
) {
    for i in 0..n {
        drop(
            pipeline
                .publish(subject.to_owned(), format!("{i}").into())
                .await
                .unwrap(),
        );
    }
}

/// How many `publish {subject}` spans ended with their ack (a stream sequence).
fn publishes_ended_with_ack(telemetry: &Telemetry, subject: &str) -> usize {
    let name = format!("publish {subject}");
    telemetry
        .spans()
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| attr(s, semconv::MESSAGING_NATS_STREAM_SEQUENCE).is_some())
        .count()
}

#[tokio::test]
async fn pipelined_acks_are_awaited_even_when_nobody_awaits_the_handles() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    orders_consumer(&js, "").await;

    const N: usize = 200;
    let pipeline = js.pipeline(16);
    // Handles dropped at once: the background task still awaits every ack.
    publish_dropping_handles(&pipeline, "orders.unawaited", N).await;
    drop(pipeline);
    let ended_with_ack = || publishes_ended_with_ack(&telemetry, "orders.unawaited");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while ended_with_ack() < N && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ended_with_ack(), N, "every span ended at its ack");
    let stream = js.inner().get_stream("ORDERS").await.unwrap();
    assert_eq!(stream.cached_info().state.messages, N as u64);
}

#[tokio::test]
async fn a_pipeline_flush_returns_once_every_dropped_handles_ack_is_in() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    orders_consumer(&js, "").await;

    const N: usize = 300;
    let pipeline = js.pipeline(16);
    publish_dropping_handles(&pipeline, "orders.flushed", N).await;
    pipeline.flush().await;
    assert_eq!(pipeline.in_flight(), 0);
    // Every span ended at its ack before `flush` returned: no waiting here.
    assert_eq!(publishes_ended_with_ack(&telemetry, "orders.flushed"), N);
    let mut stream = js.inner().get_stream("ORDERS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, N as u64);
    // The pipeline is usable after a flush, and a flush with nothing in flight
    // returns at once.
    let handle = pipeline
        .publish("orders.flushed", "last".into())
        .await
        .unwrap();
    pipeline.flush().await;
    assert_eq!(handle.await.unwrap().sequence, N as u64 + 1);
    pipeline.flush().await;
}

#[tokio::test]
async fn a_pipeline_flush_waits_for_earlier_publishes_not_for_a_busy_clone() {
    let server = NatsServer::start();
    let raw = async_nats::connect(server.url()).await.unwrap();
    let client = nats_otel::Client::new(raw, nats_otel::Instrumentation::builder().build());
    let js = nats_otel::jetstream::new(&client);
    orders_consumer(&js, "").await;

    let pipeline = js.pipeline(64);
    // A clone keeps publishing (and keeps room set aside for its next publishes)
    // while this task flushes.
    let busy = {
        let pipeline = pipeline.clone();
        tokio::spawn(async move { publish_dropping_handles(&pipeline, "orders.busy", 2000).await })
    };
    let mut kept = Vec::new();
    for _ in 0..10 {
        kept.push(pipeline.publish("orders.mine", "x".into()).await.unwrap());
    }
    // A guard against a hang, not a wait: `flush` has an event to return on.
    tokio::time::timeout(Duration::from_secs(30), pipeline.flush())
        .await
        .expect("flush returns while a clone keeps publishing");
    for handle in kept {
        use futures_util::FutureExt as _;
        let ack = handle.now_or_never().expect("ready after flush").unwrap();
        assert_eq!(ack.stream, "ORDERS");
    }
    busy.await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), pipeline.flush())
        .await
        .expect("flush returns once the clone is done");
    assert_eq!(pipeline.in_flight(), 0);
    let mut stream = js.inner().get_stream("ORDERS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2010);
}

#[tokio::test]
async fn a_pipeline_with_tracing_off_flushes_and_caps_an_absurd_window() {
    let server = NatsServer::start();
    let js = untraced_orders(&server).await;

    // More than a semaphore holds: capped, not a panic.
    let pipeline = js.pipeline(usize::MAX);
    let mut kept = Vec::new();
    for i in 0..50 {
        let handle = pipeline.publish("orders.plain", "x".into()).await.unwrap();
        if i % 2 == 0 {
            kept.push(handle);
        }
    }
    pipeline.flush().await;
    assert_eq!(pipeline.in_flight(), 0);
    // Kept handles have their results at once.
    let mut sequences = Vec::new();
    for handle in kept {
        sequences.push(handle.await.unwrap().sequence);
    }
    assert_eq!(sequences, (1..=50).step_by(2).collect::<Vec<u64>>());
}

#[tokio::test]
async fn publish_retry_keeps_the_message_id_and_gives_up_after_its_attempts() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let retry = nats_otel::jetstream::PublishRetry::new(
        3,
        nats_otel::jetstream::Backoff::List(vec![Duration::from_millis(10)]),
    );
    // No stream stores `void.>`: every attempt fails with a transient kind.
    let err = js
        .publish_with_retry("void.events", "v-1", None, "x".into(), &retry)
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        async_nats::jetstream::context::PublishErrorKind::StreamNotFound
    );
    let attempts: Vec<_> = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "publish void.events")
        .collect();
    assert_eq!(attempts.len(), 3);
    for span in &attempts {
        assert_eq!(
            attr_str(span, semconv::MESSAGING_MESSAGE_ID).as_deref(),
            Some("v-1")
        );
        assert!(matches!(span.status, Status::Error { .. }));
    }
}

#[tokio::test]
async fn push_and_ordered_consumers_get_process_spans_too() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    orders_consumer(&js, "").await;
    js.publish("orders.shipped", "s".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let stream = js.inner().get_stream("ORDERS").await.unwrap();

    let push = stream
        .create_consumer(async_nats::jetstream::consumer::push::Config {
            durable_name: Some("shipping".to_owned()),
            deliver_subject: client.new_inbox(),
            filter_subject: "orders.shipped".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut pushed = js.messages(push.cached_info(), push.messages().await.unwrap());
    let delivery = next(&mut pushed).await.unwrap();
    delivery.ack().await.unwrap();
    drop(delivery);

    let ordered = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: "orders.>".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let info = ordered.cached_info().clone();
    let mut replay = js.messages(&info, Box::pin(ordered.messages().await.unwrap()));
    drop(next(&mut replay).await.unwrap());

    let publish = telemetry.span("publish orders.shipped");
    let pushed = telemetry.span("process orders.shipped");
    let replayed = telemetry.span("process orders.>");
    for span in [&pushed, &replayed] {
        assert_eq!(span.parent_span_id, publish.span_context.span_id());
        assert_eq!(
            attr_str(span, semconv::MESSAGING_NATS_STREAM).as_deref(),
            Some("ORDERS")
        );
    }
    assert_eq!(
        attr_str(&pushed, semconv::MESSAGING_NATS_CONSUMER).as_deref(),
        Some("shipping")
    );
    telemetry.span("ack orders.shipped");
}

#[tokio::test]
async fn delivery_process_records_an_err_and_ends_the_span_like_the_core_one() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let consumer = orders_consumer(&js, "orders.*").await;
    for order in ["orders.good", "orders.bad"] {
        js.publish(order, "o".into()).await.unwrap().await.unwrap();
    }
    let mut messages = consumer.messages().await.unwrap();

    // Settled inside the handler: the ack span is the process span's child.
    next(&mut messages)
        .await
        .unwrap()
        .process(|message| async move { message.ack().await })
        .await
        .unwrap();
    let failed = next(&mut messages)
        .await
        .unwrap()
        .process(|message| async move {
            message.nak(None).await.map_err(std::io::Error::other)?;
            Err::<(), _>(std::io::Error::other("inventory offline"))
        })
        .await;
    assert_eq!(failed.unwrap_err().to_string(), "inventory offline");

    // Both process spans were exported (ended) by the time `process` returned.
    let processes: Vec<_> = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "process orders.*")
        .collect();
    assert_eq!(processes.len(), 2);
    let (good, bad) = (&processes[0], &processes[1]);
    assert_eq!(good.status, Status::Unset);
    assert_eq!(attr(good, semconv::ERROR_TYPE), None);
    assert_eq!(bad.status, Status::error("inventory offline"));
    assert_eq!(
        attr_str(bad, semconv::ERROR_TYPE).as_deref(),
        Some("std::io::error::Error")
    );
    assert!(bad.events.events.iter().any(|e| e.name == "exception"));
    let ack = telemetry.span("ack orders.*");
    let nak = telemetry.span("nak orders.*");
    assert_eq!(ack.parent_span_id, good.span_context.span_id());
    assert_eq!(nak.parent_span_id, bad.span_context.span_id());
}
