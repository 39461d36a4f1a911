//! Secure connections: TLS and every auth method, clear failures, and no secret in
//! any span attribute.

use std::time::Duration;

use nats_otel::semconv;

use crate::support::{attr_str, next, NatsServer, Telemetry};

pub const PASSWORD: &str = "pw-s3cr3t-7731";
pub const TOKEN: &str = "tok3n-s3cr3t-9152";

/// A self-signed certificate for 127.0.0.1/localhost written to `dir`; returns
/// the certificate and key paths.
fn certificate(dir: &std::path::Path) -> (String, String) {
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("self-signed certificate");
    let cert = dir.join("server.pem");
    let key = dir.join("server-key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

/// A server with TLS and the given `authorization { … }` block.
fn secure_server(dir: &std::path::Path, authorization: &str) -> (NatsServer, String) {
    let (cert, key) = certificate(dir);
    let conf = dir.join("server.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{\n  cert_file: {cert:?}\n  key_file: {key:?}\n}}\nauthorization {{\n{authorization}\n}}\n"
        ),
    )
    .unwrap();
    let conf = conf.to_string_lossy().into_owned();
    (NatsServer::start_with(&["-c", &conf]), cert)
}

fn tls_options(cert: &str) -> nats_otel::ConnectOptions {
    nats_otel::ConnectOptions::new()
        .add_root_certificates(cert.into())
        .require_tls(true)
}

/// Publishes and receives one traced message on `client`; returns the spans.
async fn round_trip(telemetry: &Telemetry, client: &nats_otel::Client, subject: &str) {
    let mut sub = client.subscribe(subject.to_owned()).await.unwrap();
    client.ping().await.expect("ping");
    client
        .publish(subject.to_owned(), PAYLOAD.into())
        .await
        .unwrap();
    let delivery = next(&mut sub).await;
    assert_eq!(&delivery.payload[..], PAYLOAD.as_bytes());
    drop(delivery);
    let publish = telemetry.span(&format!("publish {subject}"));
    let process = telemetry.span(&format!("process {subject}"));
    assert_eq!(
        process.span_context.trace_id(),
        publish.span_context.trace_id()
    );
    assert_eq!(
        attr_str(&publish, semconv::SERVER_ADDRESS).as_deref(),
        Some("127.0.0.1")
    );
}

pub const PAYLOAD: &str = "payload-s3cr3t-4410";

#[tokio::test]
async fn tls_with_each_auth_method_connects_and_traces() {
    let seed_pair = nkeys::KeyPair::new_user();
    let seed = seed_pair.seed().unwrap();
    let methods: [(&str, String, nats_otel::ConnectOptions); 3] = [
        (
            "password",
            format!("user: alice\npassword: {PASSWORD:?}"),
            nats_otel::ConnectOptions::new(),
        ),
        (
            "token",
            format!("token: {TOKEN:?}"),
            nats_otel::ConnectOptions::new(),
        ),
        (
            "nkey",
            format!("users = [ {{ nkey: {:?} }} ]", seed_pair.public_key()),
            nats_otel::ConnectOptions::new(),
        ),
    ];
    for (method, authorization, _) in methods {
        let dir = tempfile::tempdir().unwrap();
        let (server, cert) = secure_server(dir.path(), &authorization);
        let telemetry = Telemetry::new();
        let options = match method {
            "password" => tls_options(&cert).user_and_password("alice".into(), PASSWORD.into()),
            "token" => tls_options(&cert).token(TOKEN.into()),
            _ => tls_options(&cert).nkey(seed.clone()),
        };
        let client = telemetry
            .builder()
            .build()
            .connect(server.url(), options)
            .await
            .unwrap_or_else(|e| panic!("{method} over TLS: {e}"));
        assert!(client.server_info().tls_required, "{method}: TLS in use");
        round_trip(&telemetry, &client, &format!("secure.{method}")).await;
        // A plain connection to the same server is refused.
        let plain = async_nats::ConnectOptions::new()
            .user_and_password("alice".into(), PASSWORD.into())
            .connect(server.url())
            .await;
        assert!(plain.is_err(), "{method}: plaintext refused");
        telemetry.assert_no_secrets(&[PASSWORD, TOKEN, PAYLOAD, &seed]);
    }
}

#[tokio::test]
async fn wrong_credentials_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = secure_server(dir.path(), &format!("user: alice\npassword: {PASSWORD:?}"));
    let telemetry = Telemetry::new();
    let inst = telemetry.builder().build();
    let wrong = [
        tls_options(&cert).user_and_password("alice".into(), "not-it".into()),
        tls_options(&cert).token("not-a-token".into()),
        tls_options(&cert),
    ];
    for options in wrong {
        let err = inst
            .connect(server.url(), options)
            .await
            .expect_err("refused");
        assert_eq!(
            err.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation,
            "{err}"
        );
        assert!(err.to_string().contains("authorization violation"), "{err}");
    }
    // An unknown certificate authority is a TLS error, not a hang.
    let other_dir = tempfile::tempdir().unwrap();
    let (_, stranger) = certificate(other_dir.path());
    let err = inst
        .connect(
            server.url(),
            tls_options(&stranger).user_and_password("alice".into(), PASSWORD.into()),
        )
        .await
        .expect_err("untrusted certificate");
    // async-nats reports it as an I/O error naming the certificate problem.
    assert!(
        err.to_string().contains("invalid peer certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn denied_requests_and_jetstream_publishes_report_permissions_violation_on_their_spans() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = secure_server(
        dir.path(),
        &format!(
            "users = [ {{ user: bob, password: {PASSWORD:?}, permissions: {{ publish: {{ deny: [\"secret.>\"] }} }} }} ]"
        ),
    );
    let telemetry = Telemetry::new();
    let client = telemetry
        .builder()
        .build()
        .connect(
            server.url(),
            tls_options(&cert).user_and_password("bob".into(), PASSWORD.into()),
        )
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let err = client
        .send_request(
            "secret.plans",
            async_nats::client::Request::new()
                .payload(PAYLOAD.into())
                .timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect_err("refused");
    // Well before the 10 s timeout: the server's refusal ended it.
    assert!(started.elapsed() < Duration::from_secs(5));
    let refused = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<nats_otel::PermissionViolation>())
        .expect("a permission violation");
    assert_eq!(refused.subject, "secret.plans");
    assert!(err.to_string().contains("permissions violation"), "{err}");
    let span = telemetry.span("request secret.plans");
    assert_eq!(
        attr_str(&span, semconv::ERROR_TYPE).as_deref(),
        Some("permissions_violation")
    );
    assert!(matches!(
        span.status,
        opentelemetry::trace::Status::Error { .. }
    ));
    // A JetStream publish to a refused subject: its ack can never come, and when it
    // times out the error and span say why.
    let inner = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(800))
        .build(client.inner().clone());
    let js = nats_otel::jetstream::wrap(&client, inner);
    js.inner()
        .create_stream(async_nats::jetstream::stream::Config {
            name: "SECRET".to_owned(),
            subjects: vec!["secret.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let err = js
        .publish("secret.ledger", PAYLOAD.into())
        .await
        .unwrap()
        .await
        .expect_err("refused");
    let refused = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<nats_otel::PermissionViolation>())
        .expect("a permission violation, not a bare timeout");
    assert_eq!(refused.subject, "secret.ledger");
    let span = telemetry.span("publish secret.ledger");
    assert_eq!(
        attr_str(&span, semconv::ERROR_TYPE).as_deref(),
        Some("permissions_violation")
    );

    // Allowed subjects still work on the same connection.
    round_trip(&telemetry, &client, "open.news").await;
    telemetry.assert_no_secrets(&[PASSWORD, PAYLOAD]);
}

#[test]
fn the_secret_scan_catches_a_leak() {
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    let leaky = Telemetry::new();
    let mut span = leaky.provider.tracer("t").start("leak");
    span.set_attribute(opentelemetry::KeyValue::new("db.password", PASSWORD));
    span.end();
    let mut sized = leaky.provider.tracer("t").start("body");
    sized.set_attribute(opentelemetry::KeyValue::new(
        "messaging.message.body",
        "raw bytes",
    ));
    sized.end();
    let spans = leaky.spans();
    leaky.exporter.reset();
    let secret =
        std::panic::catch_unwind(|| crate::support::assert_no_secrets_in(&spans[..1], &[PASSWORD]));
    assert!(secret.is_err(), "a password in an attribute is caught");
    let body = std::panic::catch_unwind(|| crate::support::assert_no_secrets_in(&spans[1..], &[]));
    assert!(body.is_err(), "a non-size body attribute is caught");
}
