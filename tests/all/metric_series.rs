//! Metric series are bound once per attribute set (the SDK's bound instruments):
//! the values stay exact with delta temporality, past the per-connection bound
//! of bound series, and nothing is exported for a series never used.

use nats_otel::metrics::names;
use opentelemetry_sdk::metrics::{InMemoryMetricExporterBuilder, SdkMeterProvider, Temporality};

use crate::metrics::total;
use crate::support::{next, Metrics, NatsServer, Point, Telemetry};

/// A client metered by `metrics`.
async fn metered(
    server: &NatsServer,
    telemetry: &Telemetry,
    metrics: &Metrics,
) -> nats_otel::Client {
    telemetry
        .connect(
            server,
            telemetry
                .builder()
                .with_tracing(false)
                .with_meter_provider(&metrics.provider)
                .build(),
        )
        .await
}

/// Publishes `n` messages to `delta.orders` and receives them on `sub`.
async fn round(client: &nats_otel::Client, sub: &mut nats_otel::Subscriber, n: usize) {
    for _ in 0..n {
        client.publish("delta.orders", "x".into()).await.unwrap();
    }
    for _ in 0..n {
        drop(next(sub).await);
    }
}

#[tokio::test]
async fn delta_collections_report_what_happened_since_the_last_one() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let exporter = InMemoryMetricExporterBuilder::new()
        .with_temporality(Temporality::Delta)
        .build();
    let metrics = Metrics {
        provider: SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .build(),
        exporter,
    };
    let client = metered(&server, &telemetry, &metrics).await;
    let mut sub = client.subscribe("delta.orders").await.unwrap();
    // Each collection (one per round) reports that round's messages only.
    let totals = |points: &[Point]| {
        [
            names::SENT_MESSAGES,
            names::OPERATION_DURATION,
            names::CONSUMED_MESSAGES,
            names::PROCESS_DURATION,
        ]
        .map(|name| {
            let of: Vec<Point> = points.iter().filter(|p| p.name == name).cloned().collect();
            (of.len(), total(&of))
        })
    };
    round(&client, &mut sub, 3).await;
    assert_eq!(totals(&metrics.collect()), [(1, 3.0); 4]);
    round(&client, &mut sub, 2).await;
    assert_eq!(totals(&metrics.collect()), [(1, 2.0); 4]);
    // Nothing happened since: the bound series export no point.
    assert_eq!(totals(&metrics.collect()), [(0, 0.0); 4]);
}

#[tokio::test]
async fn operations_past_the_bound_series_are_still_recorded_exactly() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let metrics = Metrics::new();
    let client = metered(&server, &telemetry, &metrics).await;
    // One connection binds at most 1024 operation series; 1100 templates (two
    // publishes each) go past it, and the rest record unbound.
    const TEMPLATES: usize = 1100;
    let subject = |i: usize| {
        let letters: String = format!("{i:04}")
            .bytes()
            .map(|d| char::from(b'a' + (d - b'0')))
            .collect();
        format!("series.{letters}")
    };
    for _ in 0..2 {
        for i in 0..TEMPLATES {
            client.publish(subject(i), "x".into()).await.unwrap();
        }
    }
    client.flush().await.unwrap();

    let sent = metrics.points(names::SENT_MESSAGES);
    assert_eq!(sent.len(), TEMPLATES);
    assert!(
        sent.iter().all(|p| p.value == 2.0),
        "every template counted twice: {:?}",
        sent.iter().find(|p| p.value != 2.0)
    );
    let last = subject(TEMPLATES - 1);
    let point = sent
        .iter()
        .find(|p| {
            p.attr(nats_otel::semconv::MESSAGING_DESTINATION_TEMPLATE)
                .as_deref()
                == Some(&last)
        })
        .expect("the last template's series");
    assert_eq!(point.value, 2.0);
    let durations = metrics.points(names::OPERATION_DURATION);
    assert_eq!(durations.len(), TEMPLATES);
    assert_eq!(total(&durations), 2.0 * TEMPLATES as f64);
}

#[tokio::test]
async fn a_source_that_delivers_nothing_exports_no_process_points() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let metrics = Metrics::new();
    let client = metered(&server, &telemetry, &metrics).await;
    let _quiet = client.subscribe("quiet.orders").await.unwrap();
    let mut busy = client.subscribe("busy.orders").await.unwrap();
    client.publish("busy.orders", "x".into()).await.unwrap();
    drop(next(&mut busy).await);

    let consumed = metrics.points(names::CONSUMED_MESSAGES);
    let templates: Vec<String> = consumed
        .iter()
        .filter_map(|p| p.attr(nats_otel::semconv::MESSAGING_DESTINATION_TEMPLATE))
        .collect();
    assert_eq!(templates, ["busy.orders"]);
    assert_eq!(metrics.points(names::PROCESS_DURATION).len(), 1);
    assert_eq!(metrics.points(names::QUEUE_WAIT).len(), 0);
    assert_eq!(metrics.points(names::END_TO_END).len(), 0);
}
