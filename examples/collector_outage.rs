//! Messaging while the OpenTelemetry collector is down: traced publishing goes
//! on at full speed and memory stays bounded by the batch span processor's queue.
//!
//! Run: `cargo run --example collector_outage --features otlp [MESSAGES]` (starts
//! its own nats-server unless `NATS_URL` is set). The collector endpoint comes
//! from `OTEL_EXPORTER_OTLP_ENDPOINT`, by default a port nothing listens on. It
//! prints one line, `published=N seconds=S rss_growth_bytes=B`, which the test
//! suite reads.

#[allow(dead_code)] // The shared setup also prints traces, which this example does not.
mod shared;

use std::time::Instant;

use nats_otel::otlp::{providers, Settings};

/// This process's resident memory in bytes.
fn rss() -> u64 {
    nats_otel_testkit::resident_memory()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let messages: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(200_000);
    let endpoint = match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) => endpoint,
        Err(_) => {
            // A port that was free a moment ago: exports are refused.
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            format!("http://127.0.0.1:{port}")
        }
    };
    let guard = providers(Settings::from_vars([
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_METRICS_EXPORTER", "none".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "500".to_owned()),
    ]))?;
    let setup = shared::Setup::new();
    let instrumentation = nats_otel::Instrumentation::builder()
        .with_tracer_provider(guard.tracer_provider().ok_or("tracing disabled")?)
        .with_propagator(nats_otel::W3cPropagator::new())
        .with_metrics(false)
        .build();
    let client = instrumentation
        .connect(&setup.url, nats_otel::ConnectOptions::new())
        .await?;

    let before = rss();
    let started = Instant::now();
    for i in 0..messages {
        client
            .publish(format!("outage.{}", i % 16), "x".into())
            .await?;
    }
    // A round trip: every message has reached the server.
    let _ = client.inner().request("outage.sync", "".into()).await;
    let seconds = started.elapsed().as_secs_f64();
    let grown = rss().saturating_sub(before);
    println!("published={messages} seconds={seconds:.2} rss_growth_bytes={grown}");
    // Shutting down waits (bounded by the export timeout) for the dead collector.
    tokio::task::spawn_blocking(move || drop(guard)).await?;
    Ok(())
}
