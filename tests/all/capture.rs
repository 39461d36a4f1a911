//! Header capture: listed headers (any case) on producer and consumer spans, the
//! length cap, unlisted headers never captured, and the environment variable.

use nats_otel::capture::HeaderCapture;
use opentelemetry::{Array, StringValue, Value};

use crate::support::{attr, next, NatsServer, Telemetry};

fn strings(values: &[&str]) -> Value {
    Value::Array(Array::String(
        values
            .iter()
            .map(|v| StringValue::from((*v).to_owned()))
            .collect(),
    ))
}

const TENANT: &str = "messaging.nats.message.header.x-tenant";
const REGION: &str = "messaging.nats.message.header.region";

#[tokio::test]
async fn listed_headers_are_captured_in_any_case_cut_to_length_and_others_never() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let capture = HeaderCapture::new(["x-tenant", "Region"])
        .unwrap()
        .max_value_len(8);
    let client = telemetry
        .connect(
            &server,
            telemetry.builder().with_header_capture(capture).build(),
        )
        .await;
    let mut sub = client.subscribe("orders.created").await.unwrap();
    client.flush().await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Tenant", "acme-corporation");
    headers.append("X-Tenant", "beta");
    headers.insert("REGION", "eu");
    headers.insert("Authorization", "Bearer secret-token");
    client
        .publish_with_headers("orders.created", headers, "x".into())
        .await
        .unwrap();
    drop(next(&mut sub).await);

    for name in ["publish orders.created", "process orders.created"] {
        let span = telemetry.span(name);
        assert_eq!(
            attr(&span, TENANT),
            Some(strings(&["acme-cor", "beta"])),
            "{name}"
        );
        assert_eq!(attr(&span, REGION), Some(strings(&["eu"])), "{name}");
        let captured: Vec<&str> = span
            .attributes
            .iter()
            .map(|kv| kv.key.as_str())
            .filter(|k| k.starts_with("messaging.nats.message.header."))
            .collect();
        assert_eq!(
            captured.len(),
            2,
            "{name}: only the listed headers: {captured:?}"
        );
    }
    telemetry.assert_no_secrets(&["secret-token"]);
}

#[tokio::test]
async fn nothing_is_captured_unless_listed_and_the_environment_can_list_headers() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let env = |name: &str| {
        (name == "OTEL_INSTRUMENTATION_NATS_CAPTURE_HEADERS").then(|| "x-tenant".to_owned())
    };
    let listed = telemetry
        .connect(&server, telemetry.builder().from_vars(env).unwrap().build())
        .await;
    let unlisted = telemetry.client(&server).await;
    for (client, subject) in [(&listed, "listed.x"), (&unlisted, "unlisted.x")] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("X-Tenant", "acme");
        client
            .publish_with_headers(subject, headers, "x".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    }
    assert_eq!(
        attr(&telemetry.span("publish listed.x"), TENANT),
        Some(strings(&["acme"]))
    );
    assert_eq!(attr(&telemetry.span("publish unlisted.x"), TENANT), None);

    let err = nats_otel::Instrumentation::builder()
        .from_vars(|name| {
            (name == "OTEL_INSTRUMENTATION_NATS_CAPTURE_HEADERS").then(|| "x-tenant,x-*".to_owned())
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value: OTEL_INSTRUMENTATION_NATS_CAPTURE_HEADERS=`x-tenant,x-*`: invalid value: \
         `x-*` is not a header name (exact names only, no wildcards)"
    );
}
