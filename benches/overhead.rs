//! The cost of nats-otel against raw async-nats, measured in one run with the
//! variants interleaved (A B C … A B C …) over several rounds.
//!
//! `cargo bench --bench overhead` starts its own nats-server, prints a table of
//! medians with min–max and the ratio to raw async-nats, and writes it to
//! `BENCHMARKS.md`. Client CPU per message comes from this process's CPU time
//! (`/proc/self/stat`), so it includes the async-nats connection task.

#[path = "../tests/all/server.rs"]
#[allow(dead_code)]
mod server;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use nats_otel::Instrumentation;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
};

const ROUNDS: usize = 3;
const CORE_MESSAGES: u64 = 100_000;
const REQUESTS: usize = 2_000;
const JS_MESSAGES: u64 = 20_000;

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

/// This process's user+system CPU seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
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

#[derive(Clone, Copy)]
enum Tracing {
    /// Raw async-nats.
    Raw,
    /// Raw async-nats with one `traceparent` header built per message.
    HeaderOnly,
    /// nats-otel with tracing and metrics off.
    Off,
    /// nats-otel, every message sampled, batch processor to a discarding exporter.
    Sampled,
    /// nats-otel with a parent-based sampler that drops root spans.
    Dropped,
}

impl Tracing {
    fn name(self) -> &'static str {
        match self {
            Tracing::Raw => "raw async-nats",
            Tracing::HeaderOnly => "raw + traceparent header",
            Tracing::Off => "nats-otel, tracing off",
            Tracing::Sampled => "nats-otel, all sampled",
            Tracing::Dropped => "nats-otel, sampler drops",
        }
    }
}

struct Telemetry {
    provider: SdkTracerProvider,
    exported: Counting,
}

fn telemetry(tracing: Tracing) -> Option<Telemetry> {
    let exported = Counting::default();
    let sampler = match tracing {
        Tracing::Sampled => Sampler::AlwaysOn,
        Tracing::Dropped => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        _ => return None,
    };
    // The documented settings for high rates: a queue deep enough for bursts.
    let processor = BatchSpanProcessor::builder(exported.clone())
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(1 << 18)
                .with_max_export_batch_size(4096)
                .with_scheduled_delay(Duration::from_millis(200))
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .build();
    Some(Telemetry { provider, exported })
}

fn instrumentation(tracing: Tracing, telemetry: &Option<Telemetry>) -> Instrumentation {
    let builder = Instrumentation::builder()
        .with_metrics(false)
        .with_propagator(TraceContextPropagator::new());
    match (tracing, telemetry) {
        (_, Some(t)) => builder.with_tracer_provider(&t.provider).build(),
        _ => builder.with_tracing(false).build(),
    }
}

/// One measurement.
#[derive(Clone, Copy, Default)]
struct Sample {
    per_second: f64,
    cpu_us: f64,
    dropped: u64,
}

async fn sync(client: &async_nats::Client) {
    let _ = client
        .request(format!("sync.{}", client.new_inbox()), "".into())
        .await;
}

/// Publishes `n` messages of `size` bytes and waits until a subscriber on the same
/// connection has received them all.
async fn pub_sub(url: &str, tracing: Tracing, n: u64, size: usize) -> Sample {
    let payload = Bytes::from(vec![b'x'; size]);
    let telemetry = telemetry(tracing);
    let raw = async_nats::connect(url).await.expect("connect");
    let start_cpu;
    let started;
    match tracing {
        Tracing::Raw | Tracing::HeaderOnly => {
            let mut sub = raw.subscribe("bench.core").await.expect("subscribe");
            sync(&raw).await;
            start_cpu = cpu_seconds();
            started = Instant::now();
            let publisher = {
                let raw = raw.clone();
                tokio::spawn(async move {
                    for _ in 0..n {
                        if let Tracing::HeaderOnly = tracing {
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
            for _ in 0..n {
                if sub.next().await.is_none() {
                    break;
                }
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
                    for _ in 0..n {
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
    let dropped = finish(telemetry, 2 * n);
    Sample {
        per_second: n as f64 / elapsed,
        cpu_us: cpu * 1e6 / n as f64,
        dropped,
    }
}

struct Client(nats_otel::Client);

/// Flushes the span pipeline; returns how many expected spans never arrived.
fn finish(telemetry: Option<Telemetry>, expected: u64) -> u64 {
    let Some(t) = telemetry else { return 0 };
    let _ = t.provider.force_flush();
    let _ = t.provider.shutdown();
    let exported = t.exported.0.load(Ordering::Relaxed);
    // A dropping sampler exports nothing by design.
    if exported == 0 {
        0
    } else {
        expected.saturating_sub(exported)
    }
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
            _ => client.request("bench.rr", "ping".into()).await.is_ok(),
        };
        if ok {
            latencies.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    responder.abort();
    finish(telemetry, 0);
    latencies.sort_by(|a, b| a.total_cmp(b));
    latencies
}

/// JetStream: pipelined publish (256 in flight) and pull consume + ack.
async fn jetstream(url: &str, tracing: Tracing, round: usize) -> (Sample, Sample) {
    use async_nats::jetstream::consumer::pull;
    let telemetry = telemetry(tracing);
    let raw = async_nats::connect(url).await.expect("connect");
    let raw_js = async_nats::jetstream::new(raw.clone());
    let stream_name = format!(
        "BENCH_{}_{round}",
        tracing.name().len() + round * 31 + tracing as usize
    );
    let subject = format!("bench.js.{stream_name}");
    let stream = raw_js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: stream_name.clone(),
            subjects: vec![subject.clone()],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("stream");
    let client = nats_otel::Client::new(raw.clone(), instrumentation(tracing, &telemetry));
    let js = nats_otel::jetstream::new(&client);

    let start_cpu = cpu_seconds();
    let started = Instant::now();
    match tracing {
        Tracing::Raw => {
            let mut pending = std::collections::VecDeque::new();
            for _ in 0..JS_MESSAGES {
                if pending.len() == 256 {
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
        }
        _ => {
            let pipeline = js.pipeline(256);
            let mut handles = Vec::with_capacity(JS_MESSAGES as usize);
            for _ in 0..JS_MESSAGES {
                handles.push(
                    pipeline
                        .publish(subject.clone(), "x".into())
                        .await
                        .expect("publish"),
                );
            }
            for handle in handles {
                let _ = handle.await;
            }
        }
    }
    let publish = Sample {
        per_second: JS_MESSAGES as f64 / started.elapsed().as_secs_f64(),
        cpu_us: (cpu_seconds() - start_cpu) * 1e6 / JS_MESSAGES as f64,
        dropped: 0,
    };

    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".to_owned()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let start_cpu = cpu_seconds();
    let started = Instant::now();
    match tracing {
        Tracing::Raw => {
            let mut messages = consumer.messages().await.expect("messages");
            for _ in 0..JS_MESSAGES {
                let message = messages.next().await.expect("message").expect("ok");
                let _ = message.ack().await;
            }
        }
        _ => {
            let consumer = js.pull_consumer(consumer);
            let mut messages = consumer.messages().await.expect("messages");
            for _ in 0..JS_MESSAGES {
                let delivery = messages.next().await.expect("message").expect("ok");
                let _ = delivery.ack().await;
            }
        }
    }
    let consume = Sample {
        per_second: JS_MESSAGES as f64 / started.elapsed().as_secs_f64(),
        cpu_us: (cpu_seconds() - start_cpu) * 1e6 / JS_MESSAGES as f64,
        dropped: finish(telemetry, 0),
    };
    let _ = raw_js.delete_stream(&stream_name).await;
    (publish, consume)
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

fn table(out: &mut String, title: &str, rows: &[Row]) {
    let _ = writeln!(out, "\n### {title}\n");
    let _ = writeln!(
        out,
        "| variant | msg/s median (min–max) | × raw | client CPU µs/msg | spans dropped |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    let mut raw_median = None;
    for row in rows {
        let mut rates: Vec<f64> = row.samples.iter().map(|s| s.per_second).collect();
        let mut cpu: Vec<f64> = row.samples.iter().map(|s| s.cpu_us).collect();
        let min = rates.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = rates.iter().cloned().fold(0.0, f64::max);
        let m = median(&mut rates);
        let raw = *raw_median.get_or_insert(m);
        let dropped: u64 = row.samples.iter().map(|s| s.dropped).sum();
        let _ = writeln!(
            out,
            "| {} | {:.0} ({:.0}–{:.0}) | {:.2} | {:.2} | {} |",
            row.name,
            m,
            min,
            max,
            m / raw,
            median(&mut cpu),
            dropped
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = server::NatsServer::start();
    let url = server.url();
    let variants = [
        Tracing::Raw,
        Tracing::HeaderOnly,
        Tracing::Off,
        Tracing::Sampled,
        Tracing::Dropped,
    ];
    let mut out = String::new();
    for size in [16usize, 1024] {
        let mut rows: Vec<Row> = variants
            .iter()
            .map(|v| Row {
                name: v.name().to_owned(),
                samples: Vec::new(),
            })
            .collect();
        for _ in 0..ROUNDS {
            for (i, variant) in variants.iter().enumerate() {
                let sample = pub_sub(&url, *variant, CORE_MESSAGES, size).await;
                rows[i].samples.push(sample);
            }
        }
        table(
            &mut out,
            &format!("Core pub→sub, {size} B, {CORE_MESSAGES} messages × {ROUNDS} rounds"),
            &rows,
        );
    }

    let rr_variants = [Tracing::Raw, Tracing::Off, Tracing::Sampled];
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); rr_variants.len()];
    for _ in 0..ROUNDS {
        for (i, variant) in rr_variants.iter().enumerate() {
            latencies[i].extend(request_reply(&url, *variant).await);
        }
    }
    let _ = writeln!(
        out,
        "\n### Request/reply latency, {REQUESTS} sequential requests × {ROUNDS} rounds\n"
    );
    let _ = writeln!(out, "| variant | p50 µs | p99 µs | p99.9 µs |");
    let _ = writeln!(out, "|---|---|---|---|");
    for (variant, samples) in rr_variants.iter().zip(latencies.iter_mut()) {
        samples.sort_by(|a, b| a.total_cmp(b));
        let _ = writeln!(
            out,
            "| {} | {:.0} | {:.0} | {:.0} |",
            variant.name(),
            percentile(samples, 0.5),
            percentile(samples, 0.99),
            percentile(samples, 0.999)
        );
    }

    let js_variants = [Tracing::Raw, Tracing::Off, Tracing::Sampled];
    let mut publish_rows: Vec<Row> = js_variants
        .iter()
        .map(|v| Row {
            name: v.name().to_owned(),
            samples: Vec::new(),
        })
        .collect();
    let mut consume_rows: Vec<Row> = js_variants
        .iter()
        .map(|v| Row {
            name: v.name().to_owned(),
            samples: Vec::new(),
        })
        .collect();
    for round in 0..ROUNDS {
        for (i, variant) in js_variants.iter().enumerate() {
            let (publish, consume) = jetstream(&url, *variant, round).await;
            publish_rows[i].samples.push(publish);
            consume_rows[i].samples.push(consume);
        }
    }
    table(
        &mut out,
        &format!("JetStream publish, 256 in flight, {JS_MESSAGES} messages × {ROUNDS} rounds"),
        &publish_rows,
    );
    table(
        &mut out,
        &format!("JetStream pull consume + ack, {JS_MESSAGES} messages × {ROUNDS} rounds"),
        &consume_rows,
    );

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
        "# Benchmarks\n\nGenerated by `cargo bench --bench overhead` (release build). Machine: {cpus} CPUs, \
         {version} on loopback, async-nats 0.51, opentelemetry 0.33. Variants run interleaved in one \
         process, {ROUNDS} rounds each; throughput is the median with min–max; \"× raw\" is the ratio of \
         the median to raw async-nats in the same table. Client CPU is this process's user+system time per \
         message (it includes the publisher, the subscriber and the async-nats connection tasks). \
         Sampled variants use a batch span processor (queue 262144, batches of 4096, 200 ms delay) \
         exporting to a discarding exporter; \"spans dropped\" counts spans that never reached it.\n"
    );
    let report = header + &out;
    println!("{report}");
    if let Err(err) = std::fs::write("BENCHMARKS.md", &report) {
        eprintln!("could not write BENCHMARKS.md: {err}");
    }
}
