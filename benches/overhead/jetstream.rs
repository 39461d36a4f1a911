//! JetStream: publish (sequential, windowed, `Pipeline`), pull consume + ack, and
//! the `Worker` against a hand-written loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    Span as _, SpanKind, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use crate::*;

/// A fresh memory stream for one measurement.
pub(crate) async fn bench_stream(
    raw_js: &async_nats::jetstream::Context,
    name: &str,
) -> (async_nats::jetstream::stream::Stream, String) {
    let subject = format!("bench.js.{name}");
    let _ = raw_js.delete_stream(name).await;
    let stream = raw_js
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![subject.clone()],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("stream");
    (stream, subject)
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum JsPublish {
    /// Await each ack before the next publish.
    Sequential,
    /// Keep `JS_WINDOW` acks outstanding, awaiting the oldest (both APIs alike).
    Window,
    /// nats-otel's `Pipeline` helper (acks awaited in the background).
    Pipeline,
}

/// JetStream publish of `n` messages.
pub(crate) async fn js_publish(url: &str, tracing: Tracing, mode: JsPublish, n: u64) -> Sample {
    use std::collections::VecDeque;
    let telemetry = telemetry(tracing);
    let raw = async_nats::connect(url).await.expect("connect");
    let raw_js = async_nats::jetstream::new(raw.clone());
    let (_stream, subject) = bench_stream(&raw_js, "BENCH_PUB").await;
    let client = nats_otel::Client::new(raw.clone(), instrumentation(tracing, &telemetry));
    let js = nats_otel::jetstream::new(&client);
    let start_cpu = cpu_seconds();
    let started = Instant::now();
    match (tracing, mode) {
        (Tracing::Raw, JsPublish::Sequential) => {
            for _ in 0..n {
                let ack = raw_js.publish(subject.clone(), "x".into()).await;
                let _ = ack.expect("publish").await;
            }
        }
        (_, JsPublish::Sequential) => {
            for _ in 0..n {
                let ack = js.publish(subject.clone(), "x".into()).await;
                let _ = ack.expect("publish").await;
            }
        }
        (Tracing::Raw | Tracing::HeaderOnly, _) => {
            let mut pending = VecDeque::with_capacity(JS_WINDOW);
            for _ in 0..n {
                if pending.len() == JS_WINDOW {
                    let ack: async_nats::jetstream::context::PublishAckFuture =
                        pending.pop_front().expect("pending");
                    let _ = ack.await;
                }
                let ack = if let Tracing::HeaderOnly = tracing {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(
                        "traceparent",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    );
                    raw_js
                        .publish_with_headers(subject.clone(), headers, "x".into())
                        .await
                } else {
                    raw_js.publish(subject.clone(), "x".into()).await
                };
                pending.push_back(ack.expect("publish"));
            }
            for ack in pending {
                let _ = ack.await;
            }
        }
        (Tracing::HandWritten, _) => {
            // What a user writes by hand: a producer span per publish, its context
            // injected, ended when the ack comes (as nats-otel's).
            let provider = &telemetry.as_ref().expect("sampled telemetry").provider;
            let tracer = provider.tracer("hand-written");
            let propagator = TraceContextPropagator::new();
            let mut pending = VecDeque::with_capacity(JS_WINDOW);
            for _ in 0..n {
                if pending.len() == JS_WINDOW {
                    let (ack, cx): (async_nats::jetstream::context::PublishAckFuture, Context) =
                        pending.pop_front().expect("pending");
                    let _ = ack.await;
                    cx.span().end();
                }
                let span = tracer
                    .span_builder("publish BENCH_PUB")
                    .with_kind(SpanKind::Producer)
                    .with_attributes([
                        KeyValue::new("messaging.system", "nats"),
                        KeyValue::new("messaging.operation.type", "send"),
                        KeyValue::new("messaging.destination.name", subject.clone()),
                        KeyValue::new("messaging.message.body.size", 1_i64),
                    ])
                    .start(&tracer);
                let cx = Context::current_with_span(span);
                let mut headers = async_nats::HeaderMap::new();
                propagator.inject_context(&cx, &mut HandInjector(&mut headers));
                let ack = raw_js
                    .publish_with_headers(subject.clone(), headers, "x".into())
                    .await;
                pending.push_back((ack.expect("publish"), cx));
            }
            for (ack, cx) in pending {
                let _ = ack.await;
                cx.span().end();
            }
        }
        (_, JsPublish::Window) => {
            let mut pending = VecDeque::with_capacity(JS_WINDOW);
            for _ in 0..n {
                if pending.len() == JS_WINDOW {
                    let ack: nats_otel::jetstream::PublishAckFuture =
                        pending.pop_front().expect("pending");
                    let _ = ack.await;
                }
                let ack = js.publish(subject.clone(), "x".into()).await;
                pending.push_back(ack.expect("publish"));
            }
            for ack in pending {
                let _ = ack.await;
            }
        }
        (_, JsPublish::Pipeline) => {
            let pipeline = js.pipeline(JS_WINDOW);
            let mut handles = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let handle = pipeline.publish(subject.clone(), "x".into()).await;
                handles.push(handle.expect("publish"));
            }
            for handle in handles {
                let _ = handle.await;
            }
        }
    }
    let sample = Sample {
        per_second: n as f64 / started.elapsed().as_secs_f64(),
        cpu_us: (cpu_seconds() - start_cpu) * 1e6 / n as f64,
        dropped: 0,
    };
    let _ = raw_js.delete_stream("BENCH_PUB").await;
    Sample {
        dropped: finish(telemetry),
        ..sample
    }
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum JsConsume {
    /// `messages()` then `ack()` each, in one loop.
    Loop,
    /// nats-otel's `Worker` with a handler that returns `Ok`.
    Worker,
}

/// Pull-consumes and acks `n` messages stored beforehand (untraced).
pub(crate) async fn js_consume(url: &str, tracing: Tracing, mode: JsConsume, n: u64) -> Sample {
    use async_nats::jetstream::consumer::pull;
    let telemetry = telemetry(tracing);
    let raw = async_nats::connect(url).await.expect("connect");
    let raw_js = async_nats::jetstream::new(raw.clone());
    let (stream, subject) = bench_stream(&raw_js, "BENCH_CONSUME").await;
    let mut pending = std::collections::VecDeque::new();
    for _ in 0..n {
        if pending.len() == JS_WINDOW {
            let ack: async_nats::jetstream::context::PublishAckFuture =
                pending.pop_front().expect("pending");
            let _ = ack.await;
        }
        pending.push_back(
            raw_js
                .publish(subject.clone(), "x".into())
                .await
                .expect("publish"),
        );
    }
    for ack in pending {
        let _ = ack.await;
    }
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".to_owned()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let client = nats_otel::Client::new(raw.clone(), instrumentation(tracing, &telemetry));
    let js = nats_otel::jetstream::new(&client);
    let start_cpu = cpu_seconds();
    let started = Instant::now();
    match (tracing, mode) {
        (Tracing::Raw, _) => {
            let mut messages = consumer.messages().await.expect("messages");
            let mut received = 0;
            while received < n {
                // A stream error (a missed heartbeat under load) is not a message.
                if let Ok(message) = messages.next().await.expect("message") {
                    let _ = message.ack().await;
                    received += 1;
                }
            }
        }
        (Tracing::HandWritten, _) => {
            // What a user writes by hand: a process span per message (child of
            // the producer's context when there is one) and an ack span in it.
            let provider = &telemetry.as_ref().expect("sampled telemetry").provider;
            let tracer = provider.tracer("hand-written");
            let propagator = TraceContextPropagator::new();
            let mut messages = consumer.messages().await.expect("messages");
            let mut received = 0;
            while received < n {
                let Ok(message) = messages.next().await.expect("message") else {
                    continue;
                };
                let parent = match &message.headers {
                    Some(headers) => propagator.extract(&HandExtractor(headers)),
                    None => Context::new(),
                };
                let span = tracer
                    .span_builder("process BENCH_CONSUME")
                    .with_kind(SpanKind::Consumer)
                    .with_attributes([
                        KeyValue::new("messaging.system", "nats"),
                        KeyValue::new("messaging.operation.type", "process"),
                        KeyValue::new("messaging.destination.name", message.subject.to_string()),
                        KeyValue::new("messaging.consumer.group.name", "bench"),
                    ])
                    .start_with_context(&tracer, &parent);
                let cx = parent.with_span(span);
                let mut ack = tracer
                    .span_builder("ack BENCH_CONSUME")
                    .with_kind(SpanKind::Client)
                    .with_attributes([
                        KeyValue::new("messaging.system", "nats"),
                        KeyValue::new("messaging.operation.type", "settle"),
                    ])
                    .start_with_context(&tracer, &cx);
                let _ = message.ack().await;
                ack.end();
                cx.span().end();
                received += 1;
            }
        }
        (_, JsConsume::Loop) => {
            let consumer = js.pull_consumer(consumer);
            let mut messages = consumer.messages().await.expect("messages");
            let mut received = 0;
            while received < n {
                if let Ok(delivery) = messages.next().await.expect("message") {
                    let _ = delivery.ack().await;
                    received += 1;
                }
            }
        }
        (_, JsConsume::Worker) => {
            let consumer = js.pull_consumer(consumer);
            let done = Arc::new(tokio::sync::Notify::new());
            let count = Arc::new(AtomicU64::new(0));
            // When the last message was handled: the worker's shutdown afterwards
            // (draining its open pull until it expires) is not part of the rate.
            let last = Arc::new(std::sync::OnceLock::new());
            let handler = {
                let done = done.clone();
                let count = count.clone();
                let last = last.clone();
                move |_delivery| {
                    if count.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        let _ = last.set((Instant::now(), cpu_seconds()));
                        done.notify_one();
                    }
                    async { Ok(()) }
                }
            };
            let stats = nats_otel::jetstream::Worker::new(&js, consumer)
                .health_interval(None)
                .run(handler, async move { done.notified().await })
                .await;
            assert_eq!(stats.acked, n, "the worker acked every message");
            let (at, cpu) = *last.get().expect("the last message was handled");
            let sample = Sample {
                per_second: n as f64 / (at - started).as_secs_f64(),
                cpu_us: (cpu - start_cpu) * 1e6 / n as f64,
                dropped: 0,
            };
            let _ = raw_js.delete_stream("BENCH_CONSUME").await;
            return Sample {
                dropped: finish(telemetry),
                ..sample
            };
        }
    }
    let sample = Sample {
        per_second: n as f64 / started.elapsed().as_secs_f64(),
        cpu_us: (cpu_seconds() - start_cpu) * 1e6 / n as f64,
        dropped: 0,
    };
    let _ = raw_js.delete_stream("BENCH_CONSUME").await;
    Sample {
        dropped: finish(telemetry),
        ..sample
    }
}

/// The `Pipeline` helper with tracing off against the windowed raw publish:
/// the helper should cost at most 0.3 µs client CPU per message when off.
fn pipeline_cost(rows: &[Row]) -> String {
    let row = |name: &str| rows.iter().find(|r| r.name == name);
    let (Some(raw), Some(pipeline)) = (
        row(Tracing::Raw.name()),
        row("nats-otel `Pipeline`, tracing off"),
    ) else {
        return String::new();
    };
    let cpu = |row: &Row| row.median(|s| s.cpu_us.client);
    let added = client_over(pipeline, raw);
    let met = added <= 0.3;
    format!(
        "\nPipeline: \"{}\" spends {:.2} µs client CPU per message against {:.2} µs for \"{}\" \
         ({added:+.2} µs; target ≤ 0.3 µs: {}).{}\n",
        pipeline.name,
        cpu(pipeline),
        cpu(raw),
        raw.name,
        if met { "met" } else { "not met" },
        if met { "" } else { PIPELINE_PROFILE },
    )
}

/// JetStream tables: publish, consume, the `Worker`.
pub(crate) async fn run(out: &mut String, url: &str, sdk: Option<SdkCost>) {
    let js = named(&[Tracing::Raw, Tracing::Off, Tracing::Sampled]);
    section(
        out,
        &format!("JetStream publish, sequential (await each ack), {JS_SEQUENTIAL} messages × {ROUNDS} rounds"),
        &js,
        |i| js_publish(url, js[i].1, JsPublish::Sequential, JS_SEQUENTIAL),
    )
    .await;
    // Row indices: raw 0, header-only 1, off 2, sampled 3, then `Pipeline` and
    // the metrics rows.
    let windowed = |tracing: Tracing| (tracing.name().to_owned(), (tracing, JsPublish::Window));
    let pipelined = [
        windowed(Tracing::Raw),
        windowed(Tracing::HeaderOnly),
        windowed(Tracing::Off),
        windowed(Tracing::Sampled),
        (
            "nats-otel `Pipeline`, tracing off".to_owned(),
            (Tracing::Off, JsPublish::Pipeline),
        ),
        (
            "nats-otel `Pipeline`, all sampled".to_owned(),
            (Tracing::Sampled, JsPublish::Pipeline),
        ),
        windowed(Tracing::MetricsOnly),
        windowed(Tracing::SampledMetrics),
        windowed(Tracing::SdkSpans),
        windowed(Tracing::HandWritten),
    ];
    let names: Vec<(String, Tracing)> = pipelined
        .iter()
        .map(|(name, (tracing, _))| (name.clone(), *tracing))
        .collect();
    let rows = section(
        out,
        &format!("JetStream publish, {JS_WINDOW} acks in flight, {JS_MESSAGES} messages × {ROUNDS} rounds"),
        &names,
        |i| {
            let (tracing, mode) = pipelined[i].1;
            async move {
                match tracing {
                    Tracing::SdkSpans => sdk_message_cost(1, 0, JS_MESSAGES),
                    _ => js_publish(url, tracing, mode, JS_MESSAGES).await,
                }
            }
        },
    )
    .await;
    note(
        out,
        metrics_cost(&rows, f64::NAN, JS_PUBLISH_METRICS_PROFILE),
    );
    note(out, pipeline_cost(&rows));
    if let Some(sdk) = sdk {
        let spans = sdk_cost_in(&rows, sdk.plain);
        note(out, own_cpu(&rows, 3, 1, spans));
        note(
            out,
            ceiling(
                &rows,
                1,
                spans,
                "one publish span",
                Target {
                    ratio: 0.85,
                    of: 0,
                    label: "raw",
                    sampled: 3,
                },
                JS_PUBLISH_PROFILE,
            ),
        );
    }
    let consume = named(&[
        Tracing::Raw,
        Tracing::Off,
        Tracing::Sampled,
        Tracing::MetricsOnly,
        Tracing::SampledMetrics,
        Tracing::SdkSpans,
        Tracing::HandWritten,
    ]);
    let rows = section(
        out,
        &format!("JetStream pull consume + ack, {JS_MESSAGES} messages × {ROUNDS} rounds"),
        &consume,
        |i| {
            let tracing = consume[i].1;
            async move {
                match tracing {
                    // A linked process span and an ack span.
                    Tracing::SdkSpans => sdk_message_cost(1, 1, JS_MESSAGES),
                    _ => js_consume(url, tracing, JsConsume::Loop, JS_MESSAGES).await,
                }
            }
        },
    )
    .await;
    note(out, metrics_cost(&rows, 0.5, PULL_METRICS_PROFILE));
    if let Some(sdk) = sdk {
        let spans = sdk_cost_in(&rows, sdk.plain + sdk.linked);
        note(out, own_cpu(&rows, 2, 0, spans));
        note(
            out,
            ceiling(
                &rows,
                0,
                spans,
                "a process span and an ack span",
                Target {
                    ratio: 0.85,
                    of: 0,
                    label: "raw",
                    sampled: 2,
                },
                PULL_PROFILE,
            ),
        );
    }
    let worker = vec![
        ("hand-written loop, raw async-nats".to_owned(), Tracing::Raw),
        ("nats-otel `Worker`, tracing off".to_owned(), Tracing::Off),
        (
            "nats-otel `Worker`, all sampled".to_owned(),
            Tracing::Sampled,
        ),
    ];
    section(
        out,
        &format!("JetStream worker runtime vs a hand-written loop, {JS_MESSAGES} messages × {ROUNDS} rounds"),
        &worker,
        |i| js_consume(url, worker[i].1, JsConsume::Worker, JS_MESSAGES),
    )
    .await;
}
