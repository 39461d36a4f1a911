//! The cost of nats-otel against raw async-nats, measured in one run with the
//! variants interleaved (A B C … A B C …) over several rounds.
//!
//! `cargo bench --bench overhead --features otlp` starts its own nats-server, prints a table of
//! medians with min–max and the ratio to raw async-nats, and writes it to
//! `BENCHMARKS.md`. Client CPU per message comes from this process's CPU time
//! (`/proc/self/stat`), so it includes the async-nats connection task.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use nats_otel::{Instrumentation, W3cPropagator};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};

const ROUNDS: usize = 5;
const CORE_MESSAGES: u64 = 200_000;
const PUBLISH_MESSAGES: u64 = 500_000;
const REQUESTS: usize = 5_000;
const JS_MESSAGES: u64 = 50_000;
const JS_SEQUENTIAL: u64 = 5_000;
const JS_WINDOW: usize = 256;
const POOL_MESSAGES: u64 = 200_000;
const POOL_PUBLISHERS: usize = 4;
const OUTAGE_MESSAGES: u64 = 200_000;
const SDK_SPANS: u64 = 500_000;
const PACED_RATE: u64 = 100_000;
const PACED_MESSAGES: u64 = 100_000;

/// Counts exported spans and throws them away.
#[derive(Debug, Clone, Default)]
struct Counting(Arc<AtomicU64>);

impl SpanExporter for Counting {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        async { Ok(()) }
    }
}

/// The batch processor, counting the spans handed to it, so spans it drops
/// (queue full) show up as ended minus exported.
#[derive(Debug)]
struct CountingProcessor {
    inner: BatchSpanProcessor,
    ended: Arc<AtomicU64>,
}

impl SpanProcessor for CountingProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
}

/// This process's user+system CPU seconds.
/// CPU seconds used so far by this process (`client`) and by the benchmark's
/// nats-server (`server`).
#[derive(Clone, Copy, Default)]
struct Cpu {
    client: f64,
    server: f64,
}

impl std::ops::Sub for Cpu {
    type Output = Cpu;
    fn sub(self, other: Cpu) -> Cpu {
        Cpu {
            client: self.client - other.client,
            server: self.server - other.server,
        }
    }
}

impl std::ops::Mul<f64> for Cpu {
    type Output = Cpu;
    fn mul(self, k: f64) -> Cpu {
        Cpu {
            client: self.client * k,
            server: self.server * k,
        }
    }
}

impl std::ops::Div<f64> for Cpu {
    type Output = Cpu;
    fn div(self, k: f64) -> Cpu {
        Cpu {
            client: self.client / k,
            server: self.server / k,
        }
    }
}

/// The benchmark's nats-server, whose CPU time is reported beside the client's.
static SERVER_PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// CPU seconds of process `pid` (`self` or a number): the sum of its threads'
/// scheduler run times (`/proc/<pid>/task/*/schedstat`, nanoseconds; a thread
/// that exits between two readings drops out, so the benchmark keeps its threads
/// alive while measuring), or user+system time in clock ticks from `stat` where
/// schedstat is missing.
fn process_cpu_seconds(pid: &str) -> f64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
    let mut total_ns = 0u64;
    let mut found = false;
    for task in tasks.into_iter().flatten().flatten() {
        let path = task.path().join("schedstat");
        if let Ok(stat) = std::fs::read_to_string(path) {
            if let Some(ns) = stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
            {
                total_ns += ns;
                found = true;
            }
        }
    }
    if found {
        return total_ns as f64 / 1e9;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) … utime(11) stime(12), in clock ticks (100/s).
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn cpu_seconds() -> Cpu {
    Cpu {
        client: process_cpu_seconds("self"),
        server: SERVER_PID
            .get()
            .map_or(0.0, |pid| process_cpu_seconds(&pid.to_string())),
    }
}

#[derive(Clone, Copy)]
enum Tracing {
    /// Raw async-nats.
    Raw,
    /// Raw async-nats with one `traceparent` header built per message.
    HeaderOnly,
    /// Raw async-nats, a fresh `traceparent` written per message (`W3cPropagator`,
    /// unsampled) and parsed on receipt: propagation alone, no spans.
    Propagation,
    /// nats-otel with tracing and metrics off.
    Off,
    /// nats-otel, every message sampled, batch processor to a discarding exporter.
    Sampled,
    /// nats-otel with a parent-based sampler that drops root spans.
    Dropped,
    /// Every message sampled, with the SDK's default batch settings (queue 2048).
    SampledDefaultQueue,
    /// No nats-otel: producer and consumer spans written by hand on raw
    /// async-nats with the SDK's `TraceContextPropagator`, every message sampled.
    HandWritten,
}

impl Tracing {
    fn name(self) -> &'static str {
        match self {
            Tracing::Raw => "raw async-nats",
            Tracing::HeaderOnly => "raw + traceparent header",
            Tracing::Propagation => "raw + propagation only (fresh traceparent per message)",
            Tracing::Off => "nats-otel, tracing off",
            Tracing::Sampled => "nats-otel, all sampled",
            Tracing::Dropped => "nats-otel, sampler drops",
            Tracing::SampledDefaultQueue => "nats-otel, all sampled, default batch queue",
            Tracing::HandWritten => "hand-written OTel on raw async-nats, all sampled",
        }
    }
}

struct Telemetry {
    provider: SdkTracerProvider,
    exported: Counting,
    ended: Arc<AtomicU64>,
}

fn telemetry(tracing: Tracing) -> Option<Telemetry> {
    let exported = Counting::default();
    let sampler = match tracing {
        Tracing::Sampled | Tracing::SampledDefaultQueue | Tracing::HandWritten => Sampler::AlwaysOn,
        Tracing::Dropped => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        _ => return None,
    };
    let config = match tracing {
        Tracing::SampledDefaultQueue => BatchConfigBuilder::default().build(),
        // The documented settings for high rates: a queue deep enough for bursts.
        _ => BatchConfigBuilder::default()
            .with_max_queue_size(1 << 18)
            .with_max_export_batch_size(4096)
            .with_scheduled_delay(Duration::from_millis(200))
            .build(),
    };
    let ended = Arc::new(AtomicU64::new(0));
    let processor = CountingProcessor {
        inner: BatchSpanProcessor::builder(exported.clone())
            .with_batch_config(config)
            .build(),
        ended: ended.clone(),
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .build();
    Some(Telemetry {
        provider,
        exported,
        ended,
    })
}

fn instrumentation(tracing: Tracing, telemetry: &Option<Telemetry>) -> Instrumentation {
    let builder = Instrumentation::builder()
        .with_metrics(false)
        .with_propagator(W3cPropagator::new());
    match (tracing, telemetry) {
        (_, Some(t)) => builder.with_tracer_provider(&t.provider).build(),
        _ => builder.with_tracing(false).build(),
    }
}

/// One measurement.
#[derive(Clone, Copy, Default)]
struct Sample {
    per_second: f64,
    /// CPU µs per message, of this process and of the server.
    cpu_us: Cpu,
    dropped: u64,
}

async fn sync(client: &async_nats::Client) {
    let _ = client
        .request(format!("sync.{}", client.new_inbox()), "".into())
        .await;
}

/// Publishes `n` messages of `size` bytes and waits until a subscriber on the same
/// connection has received them all.
async fn pub_sub(url: &str, tracing: Tracing, n: u64, size: usize, pace: Option<u64>) -> Sample {
    let payload = Bytes::from(vec![b'x'; size]);
    let telemetry = telemetry(tracing);
    let raw = async_nats::connect(url).await.expect("connect");
    let start_cpu;
    let started;
    match tracing {
        Tracing::Raw | Tracing::HeaderOnly | Tracing::Propagation => {
            let mut sub = raw.subscribe("bench.core").await.expect("subscribe");
            sync(&raw).await;
            start_cpu = cpu_seconds();
            started = Instant::now();
            let publisher = {
                let raw = raw.clone();
                tokio::spawn(async move {
                    let mut propagation = Propagation::new();
                    let mut pace = Pace::new(pace);
                    for _ in 0..n {
                        pace.next().await;
                        if let Tracing::Propagation = tracing {
                            let headers = propagation.headers();
                            let _ = raw
                                .publish_with_headers("bench.core", headers, payload.clone())
                                .await;
                        } else if let Tracing::HeaderOnly = tracing {
                            let mut headers = async_nats::HeaderMap::new();
                            headers.insert(
                                "traceparent",
                                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                            );
                            let _ = raw
                                .publish_with_headers("bench.core", headers, payload.clone())
                                .await;
                        } else {
                            let _ = raw.publish("bench.core", payload.clone()).await;
                        }
                    }
                })
            };
            let propagation = Propagation::new();
            for _ in 0..n {
                let Some(message) = sub.next().await else {
                    break;
                };
                if let Tracing::Propagation = tracing {
                    std::hint::black_box(propagation.extract(&message));
                }
            }
            let _ = publisher.await;
        }
        Tracing::HandWritten => {
            let provider = &telemetry.as_ref().expect("sampled telemetry").provider;
            let tracer = Arc::new(provider.tracer("hand-written"));
            let mut sub = raw.subscribe("bench.core").await.expect("subscribe");
            sync(&raw).await;
            start_cpu = cpu_seconds();
            started = Instant::now();
            let publisher = {
                let raw = raw.clone();
                let tracer = tracer.clone();
                tokio::spawn(async move {
                    let propagator = TraceContextPropagator::new();
                    let mut pace = Pace::new(pace);
                    for _ in 0..n {
                        pace.next().await;
                        let span = tracer
                            .span_builder("publish bench.core")
                            .with_kind(SpanKind::Producer)
                            .with_attributes([
                                KeyValue::new("messaging.system", "nats"),
                                KeyValue::new("messaging.operation.type", "send"),
                                KeyValue::new("messaging.destination.name", "bench.core"),
                                KeyValue::new("messaging.message.body.size", size as i64),
                            ])
                            .start(&*tracer);
                        let cx = opentelemetry::Context::current_with_span(span);
                        let mut headers = async_nats::HeaderMap::new();
                        propagator.inject_context(&cx, &mut HandInjector(&mut headers));
                        let _ = raw
                            .publish_with_headers("bench.core", headers, payload.clone())
                            .await;
                        cx.span().end();
                    }
                })
            };
            let propagator = TraceContextPropagator::new();
            for _ in 0..n {
                let Some(message) = sub.next().await else {
                    break;
                };
                let parent = match &message.headers {
                    Some(headers) => propagator.extract(&HandExtractor(headers)),
                    None => opentelemetry::Context::new(),
                };
                let mut span = tracer
                    .span_builder("process bench.core")
                    .with_kind(SpanKind::Consumer)
                    .with_attributes([
                        KeyValue::new("messaging.system", "nats"),
                        KeyValue::new("messaging.operation.type", "process"),
                        KeyValue::new("messaging.destination.name", "bench.core"),
                        KeyValue::new("messaging.message.body.size", message.payload.len() as i64),
                    ])
                    .start_with_context(&*tracer, &parent);
                drop(message);
                span.end();
            }
            let _ = publisher.await;
        }
        _ => {
            let client = Client(nats_otel::Client::new(
                raw.clone(),
                instrumentation(tracing, &telemetry),
            ));
            let mut sub = client.0.subscribe("bench.core").await.expect("subscribe");
            sync(&raw).await;
            start_cpu = cpu_seconds();
            started = Instant::now();
            let publisher = {
                let client = client.0.clone();
                tokio::spawn(async move {
                    let mut pace = Pace::new(pace);
                    for _ in 0..n {
                        pace.next().await;
                        let _ = client.publish("bench.core", payload.clone()).await;
                    }
                })
            };
            for _ in 0..n {
                match sub.next().await {
                    Some(delivery) => drop(delivery),
                    None => break,
                }
            }
            let _ = publisher.await;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - start_cpu;
    let dropped = finish(telemetry);
    Sample {
        per_second: n as f64 / elapsed,
        cpu_us: cpu * 1e6 / n as f64,
        dropped,
    }
}

struct Client(nats_otel::Client);

/// Paces a publisher at `per_ms` messages per millisecond (catching up when it
/// falls behind), or lets it run flat out: at one fixed rate every variant's
/// connection batches its writes alike, so CPU per message compares work alone.
struct Pace {
    per_ms: u64,
    sent: u64,
    ticks: Option<tokio::time::Interval>,
}

impl Pace {
    fn new(per_ms: Option<u64>) -> Self {
        Self {
            per_ms: per_ms.unwrap_or(1).max(1),
            sent: 0,
            ticks: per_ms.map(|_| tokio::time::interval(Duration::from_millis(1))),
        }
    }

    /// Call before each message.
    async fn next(&mut self) {
        if let Some(ticks) = &mut self.ticks {
            if self.sent.is_multiple_of(self.per_ms) {
                ticks.tick().await;
            }
            self.sent += 1;
        }
    }
}

/// Propagation alone: a fresh (unsampled) trace context injected per message and
/// extracted on receipt, as an instrumentation must do even when nothing records.
struct Propagation {
    propagator: W3cPropagator,
    next: u64,
}

impl Propagation {
    fn new() -> Self {
        Self {
            propagator: W3cPropagator::new(),
            next: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Headers carrying a new trace context.
    fn headers(&mut self) -> async_nats::HeaderMap {
        // xorshift: distinct ids without a lock or a syscall.
        self.next ^= self.next << 13;
        self.next ^= self.next >> 7;
        self.next ^= self.next << 17;
        let span = opentelemetry::trace::SpanContext::new(
            opentelemetry::trace::TraceId::from(u128::from(self.next) << 64 | 1),
            opentelemetry::trace::SpanId::from(self.next | 1),
            opentelemetry::trace::TraceFlags::default(),
            false,
            Default::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(span);
        let mut headers = async_nats::HeaderMap::new();
        self.propagator
            .inject_context(&cx, &mut nats_otel::HeaderInjector(&mut headers));
        headers
    }

    /// The trace context a received message carries.
    fn extract(&self, message: &async_nats::Message) -> opentelemetry::trace::SpanContext {
        match &message.headers {
            Some(headers) => self
                .propagator
                .extract(&nats_otel::HeaderExtractor(headers))
                .span()
                .span_context()
                .clone(),
            None => opentelemetry::trace::SpanContext::empty_context(),
        }
    }
}

/// What a hand-written instrumentation injects with: plain `HeaderMap::insert`.
struct HandInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for HandInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// What a hand-written instrumentation extracts with.
struct HandExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for HandExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// The sample of `n` messages that started at `started` / `start_cpu` and have
/// all been handled now; flushes `telemetry` to count its drops (not timed).
fn measured(n: u64, started: Instant, start_cpu: Cpu, telemetry: Option<Telemetry>) -> Sample {
    let sample = Sample {
        per_second: n as f64 / started.elapsed().as_secs_f64(),
        cpu_us: (cpu_seconds() - start_cpu) * 1e6 / n as f64,
        dropped: 0,
    };
    Sample {
        dropped: finish(telemetry),
        ..sample
    }
}

/// Flushes the span pipeline; returns how many ended spans never reached the
/// exporter (a sampler's drops are not counted: those spans never record).
fn finish(telemetry: Option<Telemetry>) -> u64 {
    let Some(t) = telemetry else { return 0 };
    let _ = t.provider.force_flush();
    let _ = t.provider.shutdown();
    let ended = t.ended.load(Ordering::Relaxed);
    ended.saturating_sub(t.exported.0.load(Ordering::Relaxed))
}

/// Sequential request/reply latencies (µs).
async fn request_reply(url: &str, tracing: Tracing) -> Vec<f64> {
    let telemetry = telemetry(tracing);
    let raw = async_nats::connect(url).await.expect("connect");
    let responder_conn = async_nats::connect(url).await.expect("connect");
    let mut service = responder_conn
        .subscribe("bench.rr")
        .await
        .expect("subscribe");
    sync(&responder_conn).await;
    let responder = tokio::spawn(async move {
        while let Some(message) = service.next().await {
            if let Some(reply) = message.reply {
                let _ = responder_conn.publish(reply, message.payload).await;
            }
        }
    });
    let client = nats_otel::Client::new(raw.clone(), instrumentation(tracing, &telemetry));
    let mut latencies = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let started = Instant::now();
        let ok = match tracing {
            Tracing::Raw => raw.request("bench.rr", "ping".into()).await.is_ok(),
            Tracing::HeaderOnly => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                );
                raw.request_with_headers("bench.rr", headers, "ping".into())
                    .await
                    .is_ok()
            }
            _ => client.request("bench.rr", "ping".into()).await.is_ok(),
        };
        if ok {
            latencies.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    responder.abort();
    finish(telemetry);
    latencies.sort_by(|a, b| a.total_cmp(b));
    latencies
}

/// Publishes `n` messages of `size` bytes with no subscriber, then waits for a
/// server round trip so every message has left the client.
async fn publish_only(
    url: &str,
    tracing: Tracing,
    n: u64,
    size: usize,
    pace: Option<u64>,
) -> Sample {
    let payload = Bytes::from(vec![b'x'; size]);
    let telemetry = telemetry(tracing);
    let raw = async_nats::connect(url).await.expect("connect");
    let client = nats_otel::Client::new(raw.clone(), instrumentation(tracing, &telemetry));
    let mut propagation = Propagation::new();
    let mut pace = Pace::new(pace);
    let start_cpu = cpu_seconds();
    let started = Instant::now();
    for _ in 0..n {
        pace.next().await;
        match tracing {
            Tracing::Raw => {
                let _ = raw.publish("bench.only", payload.clone()).await;
            }
            Tracing::Propagation => {
                let headers = propagation.headers();
                let _ = raw
                    .publish_with_headers("bench.only", headers, payload.clone())
                    .await;
            }
            Tracing::HeaderOnly => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                );
                let _ = raw
                    .publish_with_headers("bench.only", headers, payload.clone())
                    .await;
            }
            _ => {
                let _ = client.publish("bench.only", payload.clone()).await;
            }
        }
    }
    sync(&raw).await;
    measured(n, started, start_cpu, telemetry)
}

/// `POOL_PUBLISHERS` tasks publishing 16 B messages, through one shared
/// connection or one connection each.
async fn pool(url: &str, tracing: Tracing, connections: usize) -> Sample {
    let telemetry = telemetry(tracing);
    let mut clients = Vec::new();
    for _ in 0..connections {
        let raw = async_nats::connect(url).await.expect("connect");
        let traced = nats_otel::Client::new(raw.clone(), instrumentation(tracing, &telemetry));
        clients.push((raw, traced));
    }
    let per_task = POOL_MESSAGES / POOL_PUBLISHERS as u64;
    let start_cpu = cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..POOL_PUBLISHERS {
        let (raw, traced) = clients[i % connections].clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                let payload = Bytes::from_static(b"xxxxxxxxxxxxxxxx");
                if let Tracing::Raw = tracing {
                    let _ = raw.publish("bench.pool", payload).await;
                } else {
                    let _ = traced.publish("bench.pool", payload).await;
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    for (raw, _) in &clients {
        sync(raw).await;
    }
    let n = per_task * POOL_PUBLISHERS as u64;
    measured(n, started, start_cpu, telemetry)
}

/// A fresh memory stream for one measurement.
async fn bench_stream(
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
enum JsPublish {
    /// Await each ack before the next publish.
    Sequential,
    /// Keep `JS_WINDOW` acks outstanding, awaiting the oldest (both APIs alike).
    Window,
    /// nats-otel's `Pipeline` helper (acks awaited in the background).
    Pipeline,
}

/// JetStream publish of `n` messages.
async fn js_publish(url: &str, tracing: Tracing, mode: JsPublish, n: u64) -> Sample {
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
enum JsConsume {
    /// `messages()` then `ack()` each, in one loop.
    Loop,
    /// nats-otel's `Worker` with a handler that returns `Ok`.
    Worker,
}

/// Pull-consumes and acks `n` messages stored beforehand (untraced).
async fn js_consume(url: &str, tracing: Tracing, mode: JsConsume, n: u64) -> Sample {
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

/// What one span costs in the OpenTelemetry SDK alone, with no NATS and no
/// nats-otel: `n` spans with nine messaging attributes (and one link when `link`)
/// started and ended through a `BoxedTracer`, with the benchmark's batch processor
/// and discarding exporter. Client CPU µs per span (the export thread included).
fn sdk_span_cost(tracing: Tracing, link: bool, n: u64) -> Sample {
    let telemetry = telemetry(tracing);
    let provider = &telemetry.as_ref().expect("sdk telemetry").provider;
    let tracer = opentelemetry::global::BoxedTracer::new(Box::new(provider.tracer("sdk-floor")));
    let linked = opentelemetry::trace::SpanContext::new(
        opentelemetry::trace::TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128),
        opentelemetry::trace::SpanId::from(0x00f0_67aa_0ba9_02b7_u64),
        opentelemetry::trace::TraceFlags::SAMPLED,
        true,
        Default::default(),
    );
    let start_cpu = cpu_seconds();
    let started = Instant::now();
    for _ in 0..n {
        let mut builder = opentelemetry::trace::SpanBuilder::from_name("publish bench.core")
            .with_kind(SpanKind::Producer)
            .with_attributes(vec![
                KeyValue::new("messaging.system", "nats"),
                KeyValue::new("messaging.client.id", "42"),
                KeyValue::new("server.address", "127.0.0.1"),
                KeyValue::new("server.port", 4222_i64),
                KeyValue::new("messaging.operation.name", "publish"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.destination.name", "bench.core"),
                KeyValue::new("messaging.destination.template", "bench.core"),
                KeyValue::new("messaging.message.body.size", 16_i64),
            ]);
        if link {
            builder = builder.with_links(vec![opentelemetry::trace::Link::with_context(
                linked.clone(),
            )]);
        }
        let parent = opentelemetry::Context::new();
        let span = tracer.build_with_context(builder, &parent);
        let cx = parent.with_span(span);
        cx.span().end();
    }
    measured(n, started, start_cpu, telemetry)
}

/// The SDK's own cost per span (client CPU µs), measured by `sdk_span_cost`.
#[derive(Clone, Copy)]
struct SdkCost {
    /// A recorded span without links.
    plain: f64,
    /// A recorded span with one link (a process span of a traced message).
    linked: f64,
    /// A span a parent-based sampler drops.
    dropped: f64,
}

/// The unsampled target: with a sampler that drops, the "sampler drops" row's
/// client CPU per message stays within propagation alone (row `propagation`) plus
/// the SDK's cost of `spans` dropped spans plus 0.3 µs. Returns a sentence.
fn unsampled(rows: &[Row], dropped: usize, propagation: usize, spans: f64, sdk: f64) -> String {
    let (Some(dropped), Some(propagation)) = (rows.get(dropped), rows.get(propagation)) else {
        return String::new();
    };
    let ours = dropped.median(|s| s.cpu_us.client);
    let alone = propagation.median(|s| s.cpu_us.client);
    let budget = alone + spans * sdk + 0.3;
    format!(
        "\nUnsampled: \"{}\" spends {ours:.2} µs client CPU per message; propagation alone \
         {alone:.2} µs, plus the SDK's {spans:.0} dropped span(s) at {sdk:.2} µs and 0.3 µs, \
         allows {budget:.2} µs: {} ({:+.2} µs).\n",
        dropped.name,
        if ours <= budget { "met" } else { "NOT met" },
        ours - budget,
    )
}

/// A target from the issue: `ratio`× the median of row `of` (`label` names it).
struct Target {
    ratio: f64,
    of: usize,
    label: &'static str,
}

/// The best any instrumentation built on the SDK could do on this box, from a
/// measured baseline row: while the box's CPUs are saturated, throughput is
/// inversely proportional to the CPU (client + server) spent per message, and
/// instrumentation adds at least the SDK's own cost of its spans. Also states
/// how much CPU per message `target` leaves for instrumentation. Returns
/// sentences for the report.
fn ceiling(rows: &[Row], baseline: usize, spans_us: f64, spans: &str, target: Target) -> String {
    let (Some(row), Some(reference)) = (rows.get(baseline), rows.get(target.of)) else {
        return String::new();
    };
    let rate = row.median(|s| s.per_second);
    let client = row.median(|s| s.cpu_us.client);
    let server = row.median(|s| s.cpu_us.server);
    let raw = rows.first().map_or(rate, |r| r.median(|s| s.per_second));
    let total = client + server;
    let best = rate * total / (total + spans_us);
    let wanted = target.ratio * reference.median(|s| s.per_second);
    // CPU per message the box can spend at the target rate, minus the baseline's.
    let budget = rate * total / wanted - total;
    let verdict = if budget <= 0.0 {
        "nothing: the baseline row alone is slower than the target".to_owned()
    } else {
        format!(
            "{budget:.2} µs per message for all instrumentation work, spans included, \
             against the SDK's own {spans_us:.2} µs"
        )
    };
    format!(
        "\nCeiling for any SDK-based instrumentation: the \"{}\" row uses {:.2} CPUs \
         ({:.2} µs client + {:.2} µs server per message at {:.0} msg/s). Adding only the SDK's \
         own cost of {spans} ({:.2} µs, from the SDK table) gives at most {:.0} msg/s: \
         {:.2}× raw, {:.2}× of that row. The target, {}× {} ({:.0} msg/s), leaves {verdict}.\n",
        row.name,
        rate * total / 1e6,
        client,
        server,
        rate,
        spans_us,
        best,
        best / raw,
        best / rate,
        target.ratio,
        target.label,
        wanted,
    )
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * q).round() as usize]
}

struct Row {
    name: String,
    samples: Vec<Sample>,
}

impl Row {
    /// The median over this row's rounds of `value`.
    fn median(&self, value: impl Fn(&Sample) -> f64) -> f64 {
        median(&mut self.samples.iter().map(value).collect::<Vec<_>>())
    }
}

fn table(out: &mut String, title: &str, rows: &[Row]) {
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| variant | msg/s median (min–max) | × raw | client CPU µs/msg | server CPU µs/msg | spans dropped |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let mut raw_median = None;
    for row in rows {
        let rates: Vec<f64> = row.samples.iter().map(|s| s.per_second).collect();
        let min = rates.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = rates.iter().cloned().fold(0.0, f64::max);
        let m = row.median(|s| s.per_second);
        let raw = *raw_median.get_or_insert(m);
        let dropped: u64 = row.samples.iter().map(|s| s.dropped).sum();
        let _ = writeln!(
            out,
            "| {} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.2} | {:.2} | {} |",
            row.name,
            m,
            min,
            max,
            m / raw,
            row.median(|s| s.cpu_us.client),
            row.median(|s| s.cpu_us.server),
            dropped
        );
    }
}

/// How the OTLP collector behaves in the outage table.
#[derive(Clone, Copy, PartialEq)]
enum Collector {
    /// An in-process gRPC receiver that accepts every export.
    Up,
    /// Nothing listens: every connection is refused.
    Down,
    /// Connections are accepted and never answered.
    BlackHole,
}

/// This process's resident memory in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}

struct OutageSample {
    sample: Sample,
    received: u64,
    rss_growth: u64,
}

/// Traced publish-only through `otlp::providers` with the documented batch
/// settings, the collector `collector`.
async fn outage(url: &str, collector: Collector, n: u64) -> OutageSample {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let mut port = listener.local_addr().expect("address").port();
    let mut receiver = None;
    let black_hole = match collector {
        Collector::Up => {
            drop(listener);
            // Counting only: keeping 200,000 spans would show in the RSS column.
            let up = nats_otel_testkit::receiver::start_counting()
                .await
                .expect("receiver");
            port = up.address.port();
            receiver = Some(up);
            None
        }
        Collector::Down => {
            drop(listener);
            None
        }
        Collector::BlackHole => Some(tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        })),
    };
    let guard = nats_otel::otlp::providers(nats_otel::otlp::Settings::from_vars([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_METRICS_EXPORTER", "none".to_owned()),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "262144".to_owned()),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000".to_owned()),
    ]))
    .expect("telemetry setup");
    let inst = Instrumentation::builder()
        .with_tracer_provider(guard.tracer_provider().expect("tracing on"))
        .with_propagator(W3cPropagator::new())
        .with_metrics(false)
        .build();
    let raw = async_nats::connect(url).await.expect("connect");
    let client = nats_otel::Client::new(raw.clone(), inst);
    let payload = Bytes::from_static(b"xxxxxxxxxxxxxxxx");
    let before = rss();
    let start_cpu = cpu_seconds();
    let started = Instant::now();
    for _ in 0..n {
        let _ = client.publish("bench.outage", payload.clone()).await;
    }
    sync(&raw).await;
    let sample = Sample {
        per_second: n as f64 / started.elapsed().as_secs_f64(),
        cpu_us: (cpu_seconds() - start_cpu) * 1e6 / n as f64,
        dropped: 0,
    };
    let rss_growth = rss().saturating_sub(before);
    // Shutting down waits for exports the collector never answers; do it off
    // the runtime, bounded by the export timeout.
    let _ = tokio::task::spawn_blocking(move || drop(guard)).await;
    if let Some(black_hole) = black_hole {
        black_hole.abort();
    }
    let received = receiver.map_or(0, |r| r.store.lock().map_or(0, |s| s.received));
    OutageSample {
        sample,
        received,
        rss_growth,
    }
}

/// Runs `measure` for every variant, interleaved, `ROUNDS` times, and appends the
/// table.
async fn section<F, Fut>(
    out: &mut String,
    title: &str,
    variants: &[(String, Tracing)],
    measure: F,
) -> Vec<Row>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Sample>,
{
    if !selected(title) {
        return Vec::new();
    }
    let mut rows: Vec<Row> = variants
        .iter()
        .map(|(name, _)| Row {
            name: name.clone(),
            samples: Vec::new(),
        })
        .collect();
    for _ in 0..ROUNDS {
        for (i, row) in rows.iter_mut().enumerate() {
            row.samples.push(measure(i).await);
        }
    }
    let before = out.len();
    table(out, title, &rows);
    eprint!("{}", &out[before..]);
    rows
}

/// Whether `BENCH_ONLY` (substrings of section titles separated by `|`, for
/// partial runs while developing) selects the section `title`.
fn selected(title: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| {
        only.split('|').any(|part| title.contains(part))
    })
}

fn named(variants: &[Tracing]) -> Vec<(String, Tracing)> {
    variants.iter().map(|v| (v.name().to_owned(), *v)).collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = nats_otel_testkit::NatsServer::start();
    let _ = SERVER_PID.set(server.pid());
    let url = server.url();
    let url = url.as_str();
    let mut out = String::new();

    let sdk_variants = vec![
        ("recorded span".to_owned(), Tracing::Sampled),
        ("recorded span with one link".to_owned(), Tracing::Sampled),
        (
            "span a parent-based sampler drops".to_owned(),
            Tracing::Dropped,
        ),
    ];
    let sdk_rows = section(
        &mut out,
        &format!(
            "OpenTelemetry SDK alone (no NATS, no nats-otel): one span per \"message\", \
             9 attributes, {SDK_SPANS} spans × {ROUNDS} rounds"
        ),
        &sdk_variants,
        |i| {
            let tracing = sdk_variants[i].1;
            async move { sdk_span_cost(tracing, i == 1, SDK_SPANS) }
        },
    )
    .await;
    let sdk_cpu = |i: usize| sdk_rows.get(i).map(|r| r.median(|s| s.cpu_us.client));
    let sdk = match (sdk_cpu(0), sdk_cpu(1), sdk_cpu(2)) {
        (Some(plain), Some(linked), Some(dropped)) => Some(SdkCost {
            plain,
            linked,
            dropped,
        }),
        _ => None,
    };
    let note = |out: &mut String, line: String| {
        eprint!("{line}");
        out.push_str(&line);
    };

    // Row indices below: raw 0, header-only 1, propagation 2, off 3, sampled 4, drops 5.
    let core = [
        Tracing::Raw,
        Tracing::HeaderOnly,
        Tracing::Propagation,
        Tracing::Off,
        Tracing::Sampled,
        Tracing::Dropped,
    ];
    for size in [16usize, 1024] {
        let variants = named(&core);
        let rows = section(
            &mut out,
            &format!("Core publish only, {size} B, {PUBLISH_MESSAGES} messages × {ROUNDS} rounds"),
            &variants,
            |i| publish_only(url, variants[i].1, PUBLISH_MESSAGES, size, None),
        )
        .await;
        if let Some(sdk) = sdk {
            note(&mut out, unsampled(&rows, 5, 2, 1.0, sdk.dropped));
        }
    }
    for size in [16usize, 1024] {
        let mut variants = named(&core);
        variants.push((Tracing::HandWritten.name().to_owned(), Tracing::HandWritten));
        if size == 16 {
            variants.push((
                Tracing::SampledDefaultQueue.name().to_owned(),
                Tracing::SampledDefaultQueue,
            ));
        }
        let rows = section(
            &mut out,
            &format!("Core pub→sub, {size} B, {CORE_MESSAGES} messages × {ROUNDS} rounds"),
            &variants,
            |i| pub_sub(url, variants[i].1, CORE_MESSAGES, size, None),
        )
        .await;
        if let Some(sdk) = sdk {
            note(&mut out, unsampled(&rows, 5, 2, 2.0, sdk.dropped));
            note(
                &mut out,
                ceiling(
                    &rows,
                    1,
                    sdk.plain + sdk.linked,
                    "a producer span and a linked process span",
                    Target {
                        ratio: 0.70,
                        of: 1,
                        label: "the header-only row",
                    },
                ),
            );
        }
    }

    // The unsampled target at one fixed rate, where batching is alike for every
    // variant. Row indices: raw 0, propagation 1, drops 2, sampled 3.
    let paced = named(&[
        Tracing::Raw,
        Tracing::Propagation,
        Tracing::Dropped,
        Tracing::Sampled,
    ]);
    for size in [16usize, 1024] {
        for subscribed in [false, true] {
            let what = if subscribed {
                "pub→sub"
            } else {
                "publish only"
            };
            let rows = section(
                &mut out,
                &format!(
                    "Unsampled cost at a fixed rate: core {what}, {size} B, \
                     {PACED_RATE} msg/s, {PACED_MESSAGES} messages × {ROUNDS} rounds"
                ),
                &paced,
                |i| {
                    let tracing = paced[i].1;
                    let per_ms = Some(PACED_RATE / 1000);
                    async move {
                        if subscribed {
                            pub_sub(url, tracing, PACED_MESSAGES, size, per_ms).await
                        } else {
                            publish_only(url, tracing, PACED_MESSAGES, size, per_ms).await
                        }
                    }
                },
            )
            .await;
            if let Some(sdk) = sdk {
                let spans = if subscribed { 2.0 } else { 1.0 };
                note(&mut out, unsampled(&rows, 2, 1, spans, sdk.dropped));
            }
        }
    }

    let rr_variants = [
        Tracing::Raw,
        Tracing::HeaderOnly,
        Tracing::Off,
        Tracing::Sampled,
    ];
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); rr_variants.len()];
    let rounds = if selected("Request/reply") { ROUNDS } else { 0 };
    for _ in 0..rounds {
        for (i, variant) in rr_variants.iter().enumerate() {
            latencies[i].extend(request_reply(url, *variant).await);
        }
    }
    if rounds > 0 {
        let _ = writeln!(
            out,
            "\n### Request/reply latency, {REQUESTS} sequential requests × {ROUNDS} rounds\n"
        );
        let _ = writeln!(
            out,
            "| variant | p50 µs | p99 µs | p99.9 µs | p50 overhead µs |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|");
        let raw_p50 = {
            let raw = &mut latencies[0];
            raw.sort_by(|a, b| a.total_cmp(b));
            percentile(raw, 0.5)
        };
        for (variant, samples) in rr_variants.iter().zip(latencies.iter_mut()) {
            samples.sort_by(|a, b| a.total_cmp(b));
            let p50 = percentile(samples, 0.5);
            let _ = writeln!(
                out,
                "| {} | {:.0} | {:.0} | {:.0} | {:+.0} |",
                variant.name(),
                p50,
                percentile(samples, 0.99),
                percentile(samples, 0.999),
                p50 - raw_p50
            );
        }
    }
    eprintln!("done: request/reply");

    let js = named(&[Tracing::Raw, Tracing::Off, Tracing::Sampled]);
    section(
        &mut out,
        &format!("JetStream publish, sequential (await each ack), {JS_SEQUENTIAL} messages × {ROUNDS} rounds"),
        &js,
        |i| js_publish(url, js[i].1, JsPublish::Sequential, JS_SEQUENTIAL),
    )
    .await;
    let mut pipelined = js.clone();
    pipelined.insert(
        1,
        (Tracing::HeaderOnly.name().to_owned(), Tracing::HeaderOnly),
    );
    pipelined.push(("nats-otel `Pipeline`, tracing off".to_owned(), Tracing::Off));
    pipelined.push((
        "nats-otel `Pipeline`, all sampled".to_owned(),
        Tracing::Sampled,
    ));
    let rows = section(
        &mut out,
        &format!("JetStream publish, {JS_WINDOW} acks in flight, {JS_MESSAGES} messages × {ROUNDS} rounds"),
        &pipelined,
        |i| {
            let mode = if i >= 4 { JsPublish::Pipeline } else { JsPublish::Window };
            js_publish(url, pipelined[i].1, mode, JS_MESSAGES)
        },
    )
    .await;
    if let Some(sdk) = sdk {
        note(
            &mut out,
            ceiling(
                &rows,
                1,
                sdk.plain,
                "one publish span",
                Target {
                    ratio: 0.85,
                    of: 0,
                    label: "raw",
                },
            ),
        );
    }
    let rows = section(
        &mut out,
        &format!("JetStream pull consume + ack, {JS_MESSAGES} messages × {ROUNDS} rounds"),
        &js,
        |i| js_consume(url, js[i].1, JsConsume::Loop, JS_MESSAGES),
    )
    .await;
    if let Some(sdk) = sdk {
        note(
            &mut out,
            ceiling(
                &rows,
                0,
                2.0 * sdk.plain,
                "a process span and an ack span",
                Target {
                    ratio: 0.85,
                    of: 0,
                    label: "raw",
                },
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
        &mut out,
        &format!("JetStream worker runtime vs a hand-written loop, {JS_MESSAGES} messages × {ROUNDS} rounds"),
        &worker,
        |i| js_consume(url, worker[i].1, JsConsume::Worker, JS_MESSAGES),
    )
    .await;

    let pool_variants = [
        ("raw, 1 connection".to_owned(), (Tracing::Raw, 1)),
        (
            format!("raw, {POOL_PUBLISHERS} connections"),
            (Tracing::Raw, POOL_PUBLISHERS),
        ),
        (
            "nats-otel all sampled, 1 connection".to_owned(),
            (Tracing::Sampled, 1),
        ),
        (
            format!("nats-otel all sampled, {POOL_PUBLISHERS} connections"),
            (Tracing::Sampled, POOL_PUBLISHERS),
        ),
    ];
    let names: Vec<(String, Tracing)> = pool_variants
        .iter()
        .map(|(name, (t, _))| (name.clone(), *t))
        .collect();
    section(
        &mut out,
        &format!("One connection vs a pool: {POOL_PUBLISHERS} publisher tasks, 16 B, {POOL_MESSAGES} messages × {ROUNDS} rounds"),
        &names,
        |i| {
            let (tracing, connections) = pool_variants[i].1;
            pool(url, tracing, connections)
        },
    )
    .await;

    let title = format!(
        "Collector outage: traced publish-only, 16 B, {OUTAGE_MESSAGES} messages × {ROUNDS} rounds"
    );
    if selected(&title) {
        let collectors = [
            ("collector up", Collector::Up),
            ("collector down (connection refused)", Collector::Down),
            (
                "collector black-holing (accepts, never answers)",
                Collector::BlackHole,
            ),
        ];
        let mut results: Vec<Vec<OutageSample>> = collectors.iter().map(|_| Vec::new()).collect();
        for _ in 0..ROUNDS {
            for (i, (_, collector)) in collectors.iter().enumerate() {
                results[i].push(outage(url, *collector, OUTAGE_MESSAGES).await);
            }
        }
        let before = out.len();
        let _ = writeln!(out, "\n### {title}\n");
        let _ = writeln!(
            out,
            "| collector | msg/s median (min–max) | × collector up | client CPU µs/msg | spans received | RSS growth MiB (max) |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|");
        let mut up = None;
        for ((name, _), samples) in collectors.iter().zip(results.iter()) {
            let mut rates: Vec<f64> = samples.iter().map(|s| s.sample.per_second).collect();
            let mut cpu: Vec<f64> = samples.iter().map(|s| s.sample.cpu_us.client).collect();
            let min = rates.iter().cloned().fold(f64::INFINITY, f64::min);
            let max = rates.iter().cloned().fold(0.0, f64::max);
            let m = median(&mut rates);
            let base = *up.get_or_insert(m);
            let received: u64 = samples.iter().map(|s| s.received).sum();
            let growth = samples.iter().map(|s| s.rss_growth).max().unwrap_or(0);
            let _ = writeln!(
                out,
                "| {name} | {m:.0} ({min:.0}–{max:.0}) | {:.2} | {:.2} | {received} | {:.1} |",
                m / base,
                median(&mut cpu),
                growth as f64 / (1 << 20) as f64
            );
        }
        eprint!("{}", &out[before..]);
    }

    let version = std::process::Command::new(
        std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server".into()),
    )
    .arg("--version")
    .output()
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let header = format!(
        "# Benchmarks\n\nGenerated by `cargo bench --bench overhead --features otlp` (release build). Machine: {cpus} CPUs, \
         {version} on loopback, async-nats 0.51, opentelemetry 0.33. Variants run interleaved in one \
         process, {ROUNDS} rounds each; throughput is the median with min–max; \"× raw\" is the ratio of \
         the median to the first row of the same table. Client CPU is this process's time on a CPU per \
         message, the sum of its threads' scheduler run times in nanoseconds (it includes the \
         publisher, the subscriber and the async-nats connection tasks); server CPU is the \
         nats-server process's, per message. Client and server share the same \
         {cpus} CPUs. The \"propagation only\" rows write a fresh unsampled `traceparent` per message \
         and parse it on receipt, with no spans; the \"Unsampled\" lines compare the \"sampler drops\" \
         rows with them, and the fixed-rate tables do so at one message rate for every variant. \
         nats-otel variants use `W3cPropagator`; the hand-written variant uses the \
         SDK's `TraceContextPropagator` and plain `HeaderMap` calls, as an application would \
         without this crate. Sampled variants use a batch span processor \
         (queue 262144, batches of 4096, 200 ms delay) exporting to a discarding exporter, except the \
         \"default batch queue\" row (the SDK defaults: queue 2048, batches of 512, 5 s delay); \
         \"spans dropped\" counts spans that ended but never reached the exporter, over all rounds. \
         The first table measures the SDK alone; the \"Ceiling\" lines under the traced tables \
         use it to bound what any instrumentation built on the SDK can reach on this machine.\n"
    );
    let report = header + &out;
    println!("{report}");
    if std::env::var_os("BENCH_ONLY").is_some() {
        return;
    }
    if let Err(err) = std::fs::write("BENCHMARKS.md", &report) {
        eprintln!("could not write BENCHMARKS.md: {err}");
    }
}
