//! Service API: one trace from a traced request through the endpoint and back.

use futures_util::StreamExt;
use nats_otel::semconv;
use opentelemetry::trace::{SpanKind, Status};

use crate::support::{attr, attr_str, NatsServer, Telemetry};

#[tokio::test]
async fn request_to_a_service_endpoint_is_one_trace_and_stats_still_count() {
    let server = NatsServer::start();
    let caller_telemetry = Telemetry::new();
    let service_telemetry = Telemetry::new();
    let caller = caller_telemetry.client(&server).await;
    let host = service_telemetry.client(&server).await;

    let service = host
        .service_builder()
        .description("user directory")
        .start("users", "1.2.0")
        .await
        .unwrap();
    let mut get = service.group("users").endpoint("get").await.unwrap();
    // The endpoint subscribes on another connection than the caller's.
    host.ping().await.expect("ping");
    let responder = tokio::spawn(async move {
        for _ in 0..2 {
            let request = get.next().await.unwrap();
            let response = match &request.message().payload[..] {
                b"1" => Ok("alice".into()),
                _ => Err(async_nats::service::error::Error {
                    status: "no such user".to_owned(),
                    code: 404,
                }),
            };
            request.respond(response).await.unwrap();
        }
    });

    let reply = caller.request("users.get", "1".into()).await.unwrap();
    assert_eq!(&reply.payload[..], b"alice");
    let missing = caller.request("users.get", "2".into()).await.unwrap();
    responder.await.unwrap();
    let headers = missing.headers.as_ref().expect("error headers");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").map(|v| v.as_str()),
        Some("404")
    );
    assert_eq!(
        headers.get("Nats-Service-Error").map(|v| v.as_str()),
        Some("no such user")
    );

    let requests: Vec<_> = caller_telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "request users.get")
        .collect();
    let processes: Vec<_> = service_telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "process users.get")
        .collect();
    assert_eq!(requests.len(), 2);
    assert_eq!(processes.len(), 2);
    for (request, process) in requests.iter().zip(&processes) {
        assert_eq!(
            process.span_context.trace_id(),
            request.span_context.trace_id()
        );
        assert_eq!(process.parent_span_id, request.span_context.span_id());
        assert_eq!(process.span_kind, SpanKind::Consumer);
        assert_eq!(
            attr_str(process, semconv::MESSAGING_NATS_SERVICE_NAME).as_deref(),
            Some("users")
        );
        assert_eq!(
            attr_str(process, semconv::MESSAGING_NATS_SERVICE_VERSION).as_deref(),
            Some("1.2.0")
        );
        assert_eq!(
            attr_str(process, semconv::MESSAGING_NATS_SERVICE_ENDPOINT).as_deref(),
            Some("get")
        );
        assert_eq!(
            attr_str(process, semconv::MESSAGING_NATS_SERVICE_GROUP).as_deref(),
            Some("users")
        );
        assert_eq!(
            attr_str(process, semconv::MESSAGING_CONSUMER_GROUP_NAME).as_deref(),
            Some("q")
        );
    }
    assert_eq!(processes[0].status, Status::Unset);
    assert_eq!(
        attr_str(&processes[1], semconv::ERROR_TYPE).as_deref(),
        Some("404")
    );
    assert_eq!(
        attr(&processes[1], semconv::MESSAGING_NATS_SERVICE_ERROR_CODE),
        Some(404i64.into())
    );
    assert!(matches!(processes[1].status, Status::Error { .. }));
    // The reply carried the process span's context back.
    let traceparent = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .unwrap()
        .as_str()
        .to_owned();
    assert!(traceparent.contains(&processes[0].span_context.span_id().to_string()));

    // $SRV.STATS is async-nats's own and still counts.
    let stats = caller
        .inner()
        .request("$SRV.STATS.users", "".into())
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.payload).unwrap();
    let endpoint = &stats["endpoints"][0];
    assert_eq!(endpoint["num_requests"], 2, "{stats}");
    assert_eq!(endpoint["num_errors"], 1, "{stats}");
    let ping = caller.inner().request("$SRV.PING.users", "".into()).await;
    assert!(ping.is_ok());
}

#[tokio::test]
async fn bad_service_names_and_versions_are_clear_errors() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let err = client
        .service_builder()
        .start("user service", "1.0.0")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("service name"), "{err}");
    let err = client
        .service_builder()
        .start("users", "one")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("semver"), "{err}");
}
