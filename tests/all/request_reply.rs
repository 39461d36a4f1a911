//! Request/reply: one trace across requester and responder; failures on the span.

use std::time::Duration;

use nats_otel::semconv;
use opentelemetry::trace::{SpanKind, Status};

use crate::support::{attr, attr_str, next, NatsServer, Telemetry};

#[tokio::test]
async fn request_process_reply_is_one_trace() {
    let server = NatsServer::start();
    let requester_telemetry = Telemetry::new();
    let responder_telemetry = Telemetry::new();
    let requester = requester_telemetry.client(&server).await;
    let responder = responder_telemetry.client(&server).await;

    let mut service = responder.subscribe("users.get").await.unwrap();
    responder.ping().await.expect("ping");
    let responder_task = {
        let responder = responder.clone();
        tokio::spawn(async move {
            let delivery = next(&mut service).await;
            delivery
                .process(|m| async move {
                    let reply = m.reply.ok_or("no reply subject")?;
                    responder
                        .publish(reply, "alice".into())
                        .await
                        .map_err(|e| e.to_string())
                })
                .await
        })
    };

    let reply = requester.request("users.get", "42".into()).await.unwrap();
    assert_eq!(&reply.payload[..], b"alice");
    responder_task.await.unwrap().unwrap();

    let request = requester_telemetry.span("request users.get");
    let process = responder_telemetry.span("process users.get");
    let answer = responder_telemetry.span("publish (temporary)");
    assert_eq!(request.span_kind, SpanKind::Producer);
    assert_eq!(
        attr_str(&request, semconv::MESSAGING_OPERATION_NAME).as_deref(),
        Some("request")
    );
    assert_eq!(
        attr_str(&request, semconv::MESSAGING_OPERATION_TYPE).as_deref(),
        Some("send")
    );
    // Opt-in (see `pubsub::body_sizes_are_recorded_only_when_switched_on`).
    assert_eq!(
        attr(&request, semconv::MESSAGING_NATS_REPLY_BODY_SIZE),
        None
    );
    let trace = request.span_context.trace_id();
    assert_eq!(process.span_context.trace_id(), trace);
    assert_eq!(answer.span_context.trace_id(), trace);
    assert_eq!(process.parent_span_id, request.span_context.span_id());
    assert_eq!(answer.parent_span_id, process.span_context.span_id());
    assert_eq!(
        attr(&answer, semconv::MESSAGING_DESTINATION_TEMPORARY),
        Some(true.into())
    );
    assert!(attr_str(&answer, semconv::MESSAGING_DESTINATION_NAME)
        .unwrap()
        .starts_with("_INBOX."));
    // The reply arrived inside the request span.
    assert!(request.end_time >= answer.end_time);
}

#[tokio::test]
async fn no_responders_is_an_error_span_and_the_original_error() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;

    let err = client.request("nobody.home", "?".into()).await.unwrap_err();
    assert_eq!(
        err.kind(),
        async_nats::client::RequestErrorKind::NoResponders
    );

    let span = telemetry.span("request nobody.home");
    assert_eq!(
        attr_str(&span, semconv::ERROR_TYPE).as_deref(),
        Some("no_responders")
    );
    assert!(matches!(span.status, Status::Error { .. }));
}

#[tokio::test]
async fn request_timeout_is_an_error_span_and_the_original_error() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    // A responder that receives but never answers.
    let _silent = client.subscribe("slow.service").await.unwrap();
    client.ping().await.expect("ping");

    let request = async_nats::Request::new()
        .payload("?".into())
        .timeout(Some(Duration::from_millis(200)));
    let err = client
        .send_request("slow.service", request)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), async_nats::client::RequestErrorKind::TimedOut);

    let span = telemetry.span("request slow.service");
    assert_eq!(
        attr_str(&span, semconv::ERROR_TYPE).as_deref(),
        Some("timed_out")
    );
    assert!(matches!(span.status, Status::Error { .. }));
}
