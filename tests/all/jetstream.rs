//! JetStream publish: one span per message, open until the PubAck.

use nats_otel::semconv;
use opentelemetry::trace::Status;

use crate::support::{attr, attr_str, NatsServer, Telemetry};

#[tokio::test]
async fn publish_span_records_the_ack_and_duplicates() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    js.inner()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".to_owned(),
            subjects: vec!["orders.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();

    let first = js
        .publish_with_id("orders.created", "order-1", "a".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let again = js
        .publish_with_id("orders.created", "order-1", "a".into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(again.sequence, first.sequence);

    let spans: Vec<_> = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "publish orders.created")
        .collect();
    assert_eq!(spans.len(), 2);
    for (span, duplicate) in spans.iter().zip([false, true]) {
        assert_eq!(
            attr_str(span, semconv::MESSAGING_NATS_STREAM).as_deref(),
            Some("ORDERS")
        );
        assert_eq!(
            attr(span, semconv::MESSAGING_NATS_STREAM_SEQUENCE),
            Some(1i64.into())
        );
        assert_eq!(
            attr(span, semconv::MESSAGING_NATS_DUPLICATE),
            Some(duplicate.into())
        );
        assert_eq!(
            attr_str(span, semconv::MESSAGING_MESSAGE_ID).as_deref(),
            Some("order-1")
        );
        assert_eq!(span.status, Status::Unset);
    }
}

#[tokio::test]
async fn publish_without_a_stream_fails_with_error_type_on_the_span() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);

    let result = match js.publish("nowhere.stored", "x".into()).await {
        Ok(ack) => ack.await.map(|_| ()),
        Err(err) => Err(err),
    };
    let err = result.unwrap_err();
    let expected = nats_otel::error_type(&err.kind());

    let span = telemetry.span("publish nowhere.stored");
    assert_eq!(attr_str(&span, semconv::ERROR_TYPE), Some(expected));
    assert!(matches!(span.status, Status::Error { .. }));
    assert!(attr(&span, semconv::MESSAGING_NATS_STREAM).is_none());
}

#[tokio::test]
async fn message_id_that_cannot_be_a_header_is_an_error_not_a_panic() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    assert!(js
        .publish_with_id("orders.x", "bad\r\nid", "x".into())
        .await
        .is_err());
}
