//! Baggage across the NATS boundary: an allow-list applied on both ends, and the
//! producer's baggage kept when a `process` span only links the producer.

use nats_otel::ProcessParenting;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use crate::support::{next, traceparent, NatsServer, Telemetry};

fn with_baggage() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// The baggage of `cx` as sorted `key=value` strings.
fn entries(cx: &opentelemetry::Context) -> Vec<String> {
    let mut entries: Vec<String> = cx
        .baggage()
        .iter()
        .map(|(k, (v, _))| format!("{k}={}", v.as_str()))
        .collect();
    entries.sort();
    entries
}

#[tokio::test]
async fn only_allowed_baggage_crosses_the_boundary_both_ways() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_propagator(with_baggage())
                .with_baggage_allow_list(["tenant"])
                .build(),
        )
        .await;
    let raw = server.raw_client().await;
    let mut seen = raw.subscribe("out.orders").await.unwrap();
    let mut sub = client.subscribe("in.orders").await.unwrap();
    crate::support::sync(&raw).await;
    client.ping().await.unwrap();

    // Sending: only `tenant` is written.
    let cx = opentelemetry::Context::current().with_baggage([
        KeyValue::new("tenant", "acme"),
        KeyValue::new("session", "s3cr3t"),
    ]);
    {
        let _guard = cx.attach();
        client.publish("out.orders", "x".into()).await.unwrap();
    }
    let headers = next(&mut seen).await.headers.unwrap();
    assert_eq!(headers.get("baggage").unwrap().as_str(), "tenant=acme");

    // Receiving: only `tenant` is read.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        traceparent(
            opentelemetry::trace::TraceId::from(7_u128),
            opentelemetry::trace::SpanId::from(9_u64),
            true,
        )
        .as_str(),
    );
    headers.insert("baggage", "tenant=acme,session=s3cr3t");
    raw.publish_with_headers("in.orders", headers, "x".into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let delivery = next(&mut sub).await;
    assert_eq!(entries(delivery.producer_context()), ["tenant=acme"]);
    assert_eq!(entries(delivery.context()), ["tenant=acme"]);
}

#[tokio::test]
async fn link_only_processing_keeps_the_producers_baggage() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_propagator(with_baggage())
                .with_process_parenting(ProcessParenting::LinkOnly)
                .build(),
        )
        .await;
    let mut sub = client.subscribe("orders.created").await.unwrap();
    client.ping().await.unwrap();
    let cx = opentelemetry::Context::current().with_baggage([KeyValue::new("tenant", "acme")]);
    {
        let _guard = cx.attach();
        client.publish("orders.created", "x".into()).await.unwrap();
    }
    let delivery = next(&mut sub).await;
    // A new root (the producer only linked), with the producer's baggage.
    assert_eq!(entries(delivery.context()), ["tenant=acme"]);
    delivery
        .in_span(async {
            assert_eq!(entries(&opentelemetry::Context::current()), ["tenant=acme"]);
        })
        .await;
}

#[tokio::test]
async fn allowed_baggage_entries_become_span_attributes_when_asked() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_propagator(with_baggage())
                .with_baggage_allow_list(["tenant"])
                .with_baggage_attributes(true)
                .build(),
        )
        .await;
    let mut sub = client.subscribe("orders.created").await.unwrap();
    client.ping().await.unwrap();
    let cx = opentelemetry::Context::current().with_baggage([
        KeyValue::new("tenant", "acme"),
        KeyValue::new("session", "s3cr3t"),
    ]);
    {
        let _guard = cx.attach();
        client.publish("orders.created", "x".into()).await.unwrap();
    }
    next(&mut sub)
        .await
        .process(|_| async { Ok::<_, String>(()) })
        .await
        .unwrap();

    for name in ["publish orders.created", "process orders.created"] {
        let span = telemetry.span(name);
        assert_eq!(
            crate::support::attr_str(&span, "tenant").as_deref(),
            Some("acme"),
            "{name}"
        );
        assert_eq!(crate::support::attr_str(&span, "session"), None, "{name}");
    }
}

#[tokio::test]
async fn baggage_is_no_span_attribute_unless_asked() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_propagator(with_baggage())
                .with_baggage_allow_list(["tenant"])
                .build(),
        )
        .await;
    let cx = opentelemetry::Context::current().with_baggage([KeyValue::new("tenant", "acme")]);
    {
        let _guard = cx.attach();
        client.publish("orders.created", "x".into()).await.unwrap();
    }
    let span = telemetry.span("publish orders.created");
    assert_eq!(crate::support::attr_str(&span, "tenant"), None);
}
