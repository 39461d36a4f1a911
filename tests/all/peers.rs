//! Cross-language interop: real Python (nats-py + the OpenTelemetry Python SDK,
//! `interop/python/peer.py`) and Node.js (`nats` + OpenTelemetry JS,
//! `interop/node/peer.mjs`) services and nats-otel in one trace, every way, against
//! a real nats-server.

pub(crate) mod harness;
mod vectors;

use nats_otel::jetstream::dead_letter::{self, headers as dlq, DeadLetter};
use nats_otel::jetstream::{HandlerError, Worker};
use opentelemetry::trace::{SpanKind, TraceContextExt};
use opentelemetry_sdk::trace::SpanData;

use crate::support::{next, NatsServer, Telemetry};
use harness::{in_trace, parent_id, span_id, trace_id, Lang, Peer, PeerSpan};

/// `from` publishes 20 messages, nats-otel processes each and publishes it on, `to`
/// consumes them: each message is one trace, each hop the previous one's child.
async fn chain(from: Lang, to: Lang) {
    const N: usize = 20;
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let consumer = Peer::start(to, &server, "consume", "interop.out", N, &[]).await;
    let mut sub = client.subscribe("interop.in").await.unwrap();
    client.ping().await.unwrap();
    let relay = {
        let client = client.clone();
        tokio::spawn(async move {
            for _ in 0..N {
                let delivery = next(&mut sub).await;
                let client = client.clone();
                delivery
                    .process(|message| async move {
                        client.publish("interop.out", message.payload).await
                    })
                    .await
                    .unwrap();
            }
        })
    };
    let producer = Peer::start(from, &server, "publish", "interop.in", N, &[]).await;
    let produced = producer.finish().await;
    relay.await.unwrap();
    let consumed = consumer.finish().await;
    assert_eq!(produced.len(), N);
    assert_eq!(consumed.len(), N);

    let spans = telemetry.spans();
    for python_publish in &produced {
        assert_eq!(python_publish.kind, "PRODUCER");
        assert_eq!(python_publish.parent_span_id, None);
        let trace = &python_publish.trace_id;
        // Python → Rust: the process span is the Python span's child.
        let process = in_trace(&spans, trace, "process interop.in");
        assert_eq!(process.span_kind, SpanKind::Consumer);
        assert_eq!(parent_id(process), python_publish.span_id);
        // Rust: the publish inside processing is the process span's child.
        let publish = in_trace(&spans, trace, "publish interop.out");
        assert_eq!(publish.span_kind, SpanKind::Producer);
        assert_eq!(parent_id(publish), span_id(process));
        // Rust → Python: the Python process span is the Rust publish's child.
        let python_process: Vec<&PeerSpan> =
            consumed.iter().filter(|s| &s.trace_id == trace).collect();
        assert_eq!(
            python_process.len(),
            1,
            "one {to:?} process span in {trace}"
        );
        assert_eq!(python_process[0].name, "process interop.out");
        assert_eq!(python_process[0].kind, "CONSUMER");
        assert_eq!(
            python_process[0].parent_span_id.as_deref(),
            Some(span_id(publish).as_str())
        );
    }
}

#[tokio::test]
async fn python_publish_rust_process_and_publish_node_consume_is_one_trace_per_message() {
    chain(Lang::Python, Lang::Node).await;
}

#[tokio::test]
async fn node_publish_rust_process_and_publish_python_consume_is_one_trace_per_message() {
    chain(Lang::Node, Lang::Python).await;
}

#[tokio::test]
async fn python_request_gets_the_rust_reply_and_the_rust_span_is_its_child() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let mut sub = client.subscribe("interop.rpc").await.unwrap();
    client.ping().await.unwrap();
    let responder = {
        let client = client.clone();
        tokio::spawn(async move {
            let delivery = next(&mut sub).await;
            let reply = delivery.reply.clone().expect("a reply subject");
            delivery
                .process(|_| async move { client.publish(reply, "pong from rust".into()).await })
                .await
                .unwrap();
        })
    };
    let requester = Peer::start(Lang::Python, &server, "request", "interop.rpc", 1, &[]).await;
    let spans = requester.finish().await;
    responder.await.unwrap();

    assert_eq!(spans.len(), 1);
    let request = &spans[0];
    assert_eq!(request.name, "request interop.rpc");
    assert_eq!(
        request.attr("nats_otel.interop.reply"),
        Some("pong from rust")
    );
    let process = telemetry.span("process interop.rpc");
    assert_eq!(trace_id(&process), request.trace_id);
    assert_eq!(parent_id(&process), request.span_id);
}

/// A nats-otel request answered by a `lang` responder: the reply arrives and the
/// responder's span is the request span's child.
async fn rust_request_answered_by(lang: Lang, reply: &[u8]) {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let responder = Peer::start(lang, &server, "respond", "interop.rpc", 1, &[]).await;
    let answer = client.request("interop.rpc", "ping".into()).await.unwrap();
    let spans = responder.finish().await;

    assert_eq!(&answer.payload[..], reply);
    let request = telemetry.span("request interop.rpc");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name, "process interop.rpc");
    assert_eq!(spans[0].trace_id, trace_id(&request));
    assert_eq!(
        spans[0].parent_span_id.as_deref(),
        Some(span_id(&request).as_str())
    );
}

#[tokio::test]
async fn rust_request_gets_the_node_reply_and_the_node_span_is_its_child() {
    rust_request_answered_by(Lang::Node, b"pong from node").await;
}

#[tokio::test]
async fn rust_request_gets_the_python_reply_and_the_python_span_is_its_child() {
    rust_request_answered_by(Lang::Python, b"pong from python").await;
}

/// Stream `INTEROP` on `interop.js.>` with a durable pull consumer `name`.
async fn interop_stream(
    js: &nats_otel::jetstream::Context,
    name: &str,
) -> nats_otel::jetstream::PullConsumer {
    let stream = js
        .inner()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "INTEROP".to_owned(),
            subjects: vec!["interop.js.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .get_or_create_consumer(
            name,
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(name.to_owned()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    js.pull_consumer(consumer)
}

#[tokio::test]
async fn python_jetstream_publishes_are_processed_by_a_rust_consumer_and_worker_in_their_traces() {
    const N: usize = 5;
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let pull = interop_stream(&js, "pull").await;
    let worked = interop_stream(&js, "worker").await;
    let producer = Peer::start(
        Lang::Python,
        &server,
        "js-publish",
        "interop.js.orders",
        N,
        &[],
    )
    .await;
    let produced = producer.finish().await;
    assert_eq!(produced.len(), N);

    // A pull consumer: every message processed inside the Python span's trace.
    let mut messages = pull.messages().await.unwrap();
    for _ in 0..N {
        let delivery = next(&mut messages).await.unwrap();
        delivery
            .process(|message| async move { message.ack().await })
            .await
            .unwrap();
    }
    // A Worker on the same messages.
    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(Worker::new(&js, worked.clone()).run(
        move |_| {
            let done_tx = done_tx.clone();
            async move {
                let _ = done_tx.send(());
                Ok(())
            }
        },
        async move {
            let _ = stopped.await;
        },
    ));
    for _ in 0..N {
        done.recv().await.expect("the worker handled a message");
    }
    stop.send(()).unwrap();
    assert_eq!(worker.await.unwrap().acked, N as u64);

    let spans = telemetry.spans();
    for python_publish in &produced {
        let processes: Vec<&SpanData> = spans
            .iter()
            .filter(|s| s.name == "process INTEROP" && trace_id(s) == python_publish.trace_id)
            .collect();
        assert_eq!(processes.len(), 2, "the pull consumer's and the worker's");
        for process in processes {
            assert_eq!(parent_id(process), python_publish.span_id);
        }
    }
    for consumer in [pull, worked] {
        let mut consumer = consumer.inner().clone();
        let info = consumer.info().await.unwrap();
        assert_eq!(
            (info.num_pending, info.num_ack_pending),
            (0, 0),
            "{}",
            info.name
        );
    }
}

#[tokio::test]
async fn a_node_message_dead_lettered_by_the_worker_is_read_by_python_in_the_same_trace() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let consumer = interop_stream(&js, "poison").await;
    let dead_letters = DeadLetter::default();
    dead_letter::ensure_stream(&js, "DLQ", &dead_letters)
        .await
        .unwrap();
    // Python reads the dead letters as they are published.
    let reader = Peer::start(Lang::Python, &server, "consume", "dlq.interop.js.>", 1, &[]).await;
    let producer = Peer::start(
        Lang::Node,
        &server,
        "js-publish",
        "interop.js.poison",
        1,
        &[],
    )
    .await;
    let produced = producer.finish().await;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let worker = tokio::spawn(Worker::new(&js, consumer).run(
        move |_| {
            let seen_tx = seen_tx.clone();
            async move {
                let _ = seen_tx.send(());
                Err(HandlerError::fatal("cannot parse the order"))
            }
        },
        async move {
            let _ = stopped.await;
        },
    ));
    seen.recv().await.expect("the handler ran");
    let read = reader.finish().await;
    stop.send(()).unwrap();
    assert_eq!(worker.await.unwrap().dead_lettered, 1);

    assert_eq!(produced.len(), 1);
    assert_eq!(read.len(), 1);
    let (node, python) = (&produced[0], &read[0]);
    assert_eq!(node.kind, "PRODUCER");
    let spans = telemetry.spans();
    let process = in_trace(&spans, &node.trace_id, "process INTEROP");
    assert_eq!(parent_id(process), node.span_id);
    let dead_letter = in_trace(&spans, &node.trace_id, "publish dlq.interop.js.poison");
    assert_eq!(parent_id(dead_letter), span_id(process));
    // Python continues the trace under the dead-letter publish, and reads its
    // provenance from the `Dlq-*` headers.
    assert_eq!(python.trace_id, node.trace_id);
    assert_eq!(
        python.parent_span_id.as_deref(),
        Some(span_id(dead_letter).as_str())
    );
    let header = |name: &str| python.attr(&format!("nats_otel.interop.header.{name}"));
    assert_eq!(header(dlq::REASON), Some("fatal: cannot parse the order"));
    assert_eq!(header(dlq::SOURCE_STREAM), Some("INTEROP"));
    assert_eq!(header(dlq::SOURCE_SEQUENCE), Some("1"));
    assert_eq!(header(dlq::SOURCE_SUBJECT), Some("interop.js.poison"));
    assert_eq!(header(dlq::CONSUMER), Some("poison"));
    assert_eq!(header(dlq::DELIVERY_COUNT), Some("1"));
    let original = header(dlq::ORIGINAL_TRACEPARENT).expect("the original traceparent");
    assert_eq!(
        original,
        format!("00-{}-{}-01", node.trace_id, node.span_id),
        "the Node producer's context"
    );
}

/// nats-otel publishes a zstd and a gzip payload; `lang` decodes both by their
/// `Content-Encoding` header, in the publisher's traces.
#[cfg(feature = "compression")]
async fn compressed_payloads_decoded_by(lang: Lang) {
    use nats_otel::compression::Compression;

    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let text: String = (0..400)
        .map(|i| format!("line {i} of the report\n"))
        .collect();
    let consumer = Peer::start(lang, &server, "consume", "interop.z.*", 2, &[]).await;
    for (subject, codec) in [
        ("interop.z.zstd", Compression::zstd()),
        ("interop.z.gzip", Compression::gzip()),
    ] {
        client
            .clone()
            .with_compression(Some(codec))
            .publish(subject, text.clone().into())
            .await
            .unwrap();
    }
    let consumed = consumer.finish().await;

    let mut encodings: Vec<&str> = consumed
        .iter()
        .map(|s| {
            s.attr("nats_otel.interop.content_encoding")
                .expect("an encoding")
        })
        .collect();
    encodings.sort_unstable();
    assert_eq!(encodings, ["gzip", "zstd"]);
    for span in &consumed {
        assert_eq!(span.attr("nats_otel.interop.payload"), Some(text.as_str()));
        let publish = telemetry
            .spans()
            .into_iter()
            .find(|s| trace_id(s) == span.trace_id)
            .expect("the Rust publish of this trace");
        assert_eq!(
            span.parent_span_id.as_deref(),
            Some(span_id(&publish).as_str())
        );
    }
}

#[cfg(feature = "compression")]
#[tokio::test]
async fn python_decodes_zstd_and_gzip_payloads_by_their_content_encoding() {
    compressed_payloads_decoded_by(Lang::Python).await;
}

#[cfg(feature = "compression")]
#[tokio::test]
async fn node_decodes_zstd_and_gzip_payloads_by_their_content_encoding() {
    compressed_payloads_decoded_by(Lang::Node).await;
}

#[tokio::test]
async fn python_trace_flags_capitalised_and_malformed_traceparents_are_handled() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let raw = server.raw_client().await;
    let mut seen = raw.subscribe("interop.flags").await.unwrap();
    let mut sub = client.subscribe("interop.flags").await.unwrap();
    crate::support::sync(&raw).await;
    client.ping().await.unwrap();
    // The Python peer consumes what nats-otel sends on, to show the flags it gets.
    let consumer = Peer::start(Lang::Python, &server, "consume", "interop.next", 3, &[]).await;

    // 1. The Python SDK's own header: flags 03 (sampled + W3C level 2 random).
    let producer = Peer::start(Lang::Python, &server, "publish", "interop.flags", 1, &[]).await;
    let sent = producer.finish().await;
    let header = next(&mut seen).await.headers.unwrap();
    let traceparent = header.get("traceparent").unwrap().as_str().to_owned();
    assert!(
        traceparent.ends_with("-03"),
        "Python 1.45 sends flags 03: {traceparent}"
    );
    let delivery = next(&mut sub).await;
    assert_eq!(
        format!(
            "{:032x}",
            delivery.producer_context().span().span_context().trace_id()
        ),
        sent[0].trace_id,
        "continued"
    );
    let relay = |delivery: nats_otel::Delivery| {
        let client = client.clone();
        async move {
            delivery
                .process(|m| async move { client.publish("interop.next", m.payload).await })
                .await
                .unwrap()
        }
    };
    relay(delivery).await;

    // 2. `Traceparent`, capitalised: continued (header names are matched without case).
    let producer = Peer::start(
        Lang::Python,
        &server,
        "publish",
        "interop.flags",
        1,
        &["--header-name", "Traceparent"],
    )
    .await;
    let capitalised = producer.finish().await;
    let _ = next(&mut seen).await;
    let delivery = next(&mut sub).await;
    assert_eq!(
        format!(
            "{:032x}",
            delivery.producer_context().span().span_context().trace_id()
        ),
        capitalised[0].trace_id
    );
    relay(delivery).await;

    // 3. A malformed value: a fresh root, never an error.
    let producer = Peer::start(
        Lang::Python,
        &server,
        "publish",
        "interop.flags",
        1,
        &["--header-value", "00-not-a-trace-01"],
    )
    .await;
    let malformed = producer.finish().await;
    let _ = next(&mut seen).await;
    let delivery = next(&mut sub).await;
    assert!(!delivery.producer_context().span().span_context().is_valid());
    relay(delivery).await;

    let consumed = consumer.finish().await;
    let spans = telemetry.spans();
    let processes: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "process interop.flags")
        .collect();
    assert_eq!(processes.len(), 3);
    assert_eq!(trace_id(processes[0]), sent[0].trace_id);
    assert_eq!(trace_id(processes[1]), capitalised[0].trace_id);
    assert_ne!(
        trace_id(processes[2]),
        malformed[0].trace_id,
        "a fresh root"
    );
    assert_eq!(
        processes[2].parent_span_id,
        opentelemetry::trace::SpanId::INVALID
    );
    // nats-otel keeps only the sampled bit (as the OpenTelemetry Rust SDK does):
    // every next hop carries flags 01.
    assert_eq!(consumed.len(), 3);
    for python_process in &consumed {
        let traceparent = python_process
            .attr("nats_otel.interop.traceparent")
            .unwrap();
        assert!(
            traceparent.ends_with("-01"),
            "next hop flags: {traceparent}"
        );
    }
}
