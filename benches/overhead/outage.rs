//! A collector that is up, down or black-holing, under traced publishing.

use std::fmt::Write as _;
use std::time::Instant;

use bytes::Bytes;
use nats_otel::{Instrumentation, W3cPropagator};

use crate::*;

/// How the OTLP collector behaves in the outage table.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Collector {
    /// An in-process gRPC receiver that accepts every export.
    Up,
    /// Nothing listens: every connection is refused.
    Down,
    /// Connections are accepted and never answered.
    BlackHole,
}

pub(crate) struct OutageSample {
    pub(crate) sample: Sample,
    pub(crate) received: u64,
    pub(crate) rss_growth: u64,
}

/// Traced publish-only through `otlp::providers` with the documented batch
/// settings, the collector `collector`.
pub(crate) async fn outage(url: &str, collector: Collector, n: u64) -> OutageSample {
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

/// The collector-outage table.
pub(crate) async fn run(out: &mut String, url: &str) {
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
}
