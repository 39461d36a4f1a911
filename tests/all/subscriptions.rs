//! Subscription metrics: active subscriptions up and down, and messages dropped
//! for a subscription that fell behind, attributed to it.

use std::time::Duration;

use async_nats::Event;
use futures_util::StreamExt;
use nats_otel::semconv;
use nats_otel::subscriptions::names;
use nats_otel_testkit::NatsServer;

use crate::support::{Metrics, Telemetry};

/// The value of `instrument` for the series with `template` (and `group`), if
/// it was exported.
fn series(metrics: &Metrics, instrument: &str, template: &str, group: Option<&str>) -> Option<f64> {
    metrics
        .points(instrument)
        .into_iter()
        .find(|p| {
            p.attr(semconv::MESSAGING_DESTINATION_TEMPLATE).as_deref() == Some(template)
                && p.attr(semconv::MESSAGING_CONSUMER_GROUP_NAME).as_deref() == group
        })
        .map(|p| p.value)
}

async fn metered(
    server: &NatsServer,
    metrics: &Metrics,
    options: nats_otel::ConnectOptions,
) -> nats_otel::Client {
    Telemetry::new()
        .builder()
        .with_meter_provider(&metrics.provider)
        .build()
        .connect(server.url(), options)
        .await
        .unwrap()
}

#[tokio::test]
async fn active_subscriptions_count_up_and_down_across_subscribe_unsubscribe_and_drain() {
    let server = NatsServer::start();
    let metrics = Metrics::new();
    let client = metered(&server, &metrics, nats_otel::ConnectOptions::new()).await;
    let active = |template: &str, group: Option<&str>| {
        series(&metrics, names::ACTIVE_SUBSCRIPTIONS, template, group)
    };

    let mut orders = client.subscribe("orders.*").await.unwrap();
    let mut first = client
        .queue_subscribe("jobs.*", "workers".to_owned())
        .await
        .unwrap();
    let second = client
        .queue_subscribe("jobs.*", "workers".to_owned())
        .await
        .unwrap();
    assert_eq!(active("orders.*", None), Some(1.0));
    assert_eq!(active("jobs.*", Some("workers")), Some(2.0));
    let point = metrics
        .points(names::ACTIVE_SUBSCRIPTIONS)
        .into_iter()
        .find(|p| p.attr(semconv::MESSAGING_DESTINATION_TEMPLATE).as_deref() == Some("orders.*"))
        .expect("the orders.* series");
    assert_eq!(
        point.keys(),
        [
            semconv::MESSAGING_DESTINATION_TEMPLATE,
            semconv::MESSAGING_SYSTEM,
            semconv::SERVER_ADDRESS,
            semconv::SERVER_PORT,
        ]
    );

    orders.unsubscribe().await.unwrap();
    assert_eq!(
        active("orders.*", None),
        Some(0.0),
        "unsubscribe counts down"
    );
    // The stream's end after an unsubscribe does not count down twice.
    client.ping().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), orders.next()).await;
    assert!(matches!(end, Ok(None)), "the unsubscribed stream ends");
    assert_eq!(active("orders.*", None), Some(0.0));

    first.drain().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), first.next()).await;
    assert!(matches!(end, Ok(None)), "the drained stream ends");
    assert_eq!(
        active("jobs.*", Some("workers")),
        Some(1.0),
        "a drained subscription counts down at its end"
    );
    drop(first);
    assert_eq!(active("jobs.*", Some("workers")), Some(1.0), "counted once");

    drop(second);
    assert_eq!(
        active("jobs.*", Some("workers")),
        Some(0.0),
        "dropping a subscription counts down"
    );
}

#[tokio::test]
async fn messages_dropped_for_a_slow_subscription_are_counted_on_its_series() {
    const CAPACITY: usize = 8;
    const DROPPED: usize = 40;
    let server = NatsServer::start();
    let metrics = Metrics::new();
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let options = nats_otel::ConnectOptions::new()
        .subscription_capacity(CAPACITY)
        .event_callback(move |event| {
            let events_tx = events_tx.clone();
            async move {
                if matches!(event, Event::SlowConsumer(_)) {
                    let _ = events_tx.send(());
                }
            }
        });
    let client = metered(&server, &metrics, options).await;
    // A subscriber that stops reading, and one that keeps up.
    let mut stuck = client.subscribe("flood.>").await.unwrap();
    let mut calm = client.subscribe("calm").await.unwrap();
    client.ping().await.unwrap();

    let raw = server.raw_client().await;
    for i in 0..CAPACITY + DROPPED {
        raw.publish(format!("flood.{i}"), "x".into()).await.unwrap();
    }
    raw.publish("calm", "y".into()).await.unwrap();
    raw.flush().await.unwrap();
    // Fewer drops than async-nats's event channel holds: every one is reported.
    for seen in 0..DROPPED {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
        assert_eq!(event, Ok(Some(())), "slow-consumer event {seen}");
    }
    drop(crate::support::next(&mut calm).await);

    assert_eq!(
        series(&metrics, names::DROPPED_MESSAGES, "flood.>", None),
        Some(DROPPED as f64)
    );
    assert_eq!(
        series(&metrics, names::DROPPED_MESSAGES, "calm", None),
        None
    );
    // What the stuck subscriber kept: its buffer, in order.
    for i in 0..CAPACITY {
        let delivery = crate::support::next(&mut stuck).await;
        assert_eq!(delivery.subject.as_str(), format!("flood.{i}"));
    }
}
