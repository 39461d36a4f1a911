//! Context propagation edge cases: capitalised keys, sampling, baggage.

use nats_otel::Instrumentation;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

use crate::support::{next, sync, traceparent, NatsServer, Telemetry};

const TRACE: TraceId = TraceId::from_bytes([0x4b; 16]);
const PARENT: SpanId = SpanId::from_bytes([0x7a; 8]);

#[tokio::test]
async fn capitalised_traceparent_continues_the_trace() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let raw = server.raw_client().await;
    let mut sub = client.subscribe("go.events").await.unwrap();
    client.ping().await.expect("ping");

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Traceparent", traceparent(TRACE, PARENT, true).as_str());
    raw.publish_with_headers("go.events", headers, "x".into())
        .await
        .unwrap();
    drop(next(&mut sub).await);

    let process = telemetry.span("process go.events");
    assert_eq!(process.span_context.trace_id(), TRACE);
    assert_eq!(process.parent_span_id, PARENT);
    assert!(process.parent_span_is_remote);
}

#[tokio::test]
async fn unsampled_parent_records_nothing_but_propagates_the_decision() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let raw = server.raw_client().await;
    let mut downstream = raw.subscribe("stage.two").await.unwrap();
    let mut sub = client.subscribe("stage.one").await.unwrap();
    sync(&raw).await;
    client.ping().await.expect("ping");

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent(TRACE, PARENT, false).as_str());
    raw.publish_with_headers("stage.one", headers, "x".into())
        .await
        .unwrap();
    let delivery = next(&mut sub).await;
    let forward = client.clone();
    delivery
        .process(|m| async move { forward.publish("stage.two", m.payload).await })
        .await
        .unwrap();

    let forwarded = next(&mut downstream).await;
    let header = forwarded
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .expect("decision propagated downstream")
        .as_str()
        .to_owned();
    assert!(header.starts_with(&format!("00-{TRACE}-")), "{header}");
    assert!(header.ends_with("-00"), "not sampled: {header}");
    assert!(telemetry.spans().is_empty(), "nothing recorded");
}

async fn baggage_seen_downstream(
    inst: Instrumentation,
    server: &NatsServer,
    telemetry: &Telemetry,
) -> Option<String> {
    let client = telemetry.connect(server, inst).await;
    let mut sub = client.subscribe("with.baggage").await.unwrap();
    client.ping().await.expect("ping");
    let cx = Context::current().with_baggage(vec![KeyValue::new("tenant", "acme")]);
    {
        let _guard = cx.attach();
        client.publish("with.baggage", "x".into()).await.unwrap();
    }
    let delivery = next(&mut sub).await;
    let seen = delivery
        .context()
        .baggage()
        .get("tenant")
        .map(|v| v.as_str().to_owned());
    assert!(delivery.context().span().span_context().is_valid());
    seen
}

#[tokio::test]
async fn baggage_propagates_only_when_its_propagator_is_configured() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let with = nats_otel::Instrumentation::builder()
        .with_tracer_provider(&telemetry.provider)
        .with_propagator(TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ]))
        .build();
    assert_eq!(
        baggage_seen_downstream(with, &server, &telemetry)
            .await
            .as_deref(),
        Some("acme")
    );
    let without = telemetry.builder().build();
    assert_eq!(
        baggage_seen_downstream(without, &server, &telemetry).await,
        None
    );
}
