//! Untrusted trace headers: every bad input gives a fresh root span, no panic, no
//! lost message.

use nats_otel::semconv;
use opentelemetry::trace::{SpanId, TraceContextExt};

use crate::support::{attr_str, next, sync, NatsServer, Telemetry};

fn headers(pairs: &[(&str, String)]) -> async_nats::HeaderMap {
    let mut map = async_nats::HeaderMap::new();
    for (k, v) in pairs {
        map.insert(*k, v.as_str());
    }
    map
}

#[tokio::test]
async fn bad_trace_headers_start_a_fresh_root_span() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let raw = server.raw_client().await;
    let mut sub = client.subscribe("hostile.*").await.unwrap();
    client.ping().await.expect("ping");

    let garbage_state: String = (0..10 * 1024)
        .map(|i| (b'!' + (i % 90) as u8) as char)
        .collect();
    let junk: String = "\u{0}\u{1}\u{7f}\u{ff}\u{fffd}\u{1f600}\t-00-zz".to_owned();
    let cases: Vec<(&str, Option<async_nats::HeaderMap>)> = vec![
        ("none", None),
        ("empty", Some(async_nats::HeaderMap::new())),
        (
            "malformed",
            Some(headers(&[(
                "traceparent",
                "00-not-a-trace-context-01".to_owned(),
            )])),
        ),
        (
            "zero",
            Some(headers(&[(
                "traceparent",
                format!("00-{}-{}-01", "0".repeat(32), "1".repeat(16)),
            )])),
        ),
        (
            "zerospan",
            Some(headers(&[(
                "traceparent",
                format!("00-{}-{}-01", "ab".repeat(16), "0".repeat(16)),
            )])),
        ),
        (
            "version",
            Some(headers(&[(
                "traceparent",
                format!("ff-{}-{}-01", "ab".repeat(16), "cd".repeat(8)),
            )])),
        ),
        ("state", Some(headers(&[("tracestate", garbage_state)]))),
        (
            "junk",
            Some(headers(&[
                ("traceparent", junk.clone()),
                ("tracestate", junk),
            ])),
        ),
        (
            "huge",
            Some(headers(&[("traceparent", "0".repeat(60_000))])),
        ),
    ];
    let count = cases.len();
    for (name, h) in cases {
        let subject = format!("hostile.{name}");
        match h {
            Some(h) => raw
                .publish_with_headers(subject, h, name.into())
                .await
                .unwrap(),
            None => raw.publish(subject, name.into()).await.unwrap(),
        }
    }
    sync(&raw).await;

    for _ in 0..count {
        let delivery = next(&mut sub).await;
        assert!(!delivery.producer_context().has_active_span());
        delivery
            .process(|_| async { Ok::<_, String>(()) })
            .await
            .unwrap();
    }

    let spans = telemetry.spans();
    assert_eq!(spans.len(), count);
    let mut traces = std::collections::HashSet::new();
    for span in &spans {
        let subject = attr_str(span, semconv::MESSAGING_DESTINATION_NAME).unwrap();
        assert_eq!(span.parent_span_id, SpanId::INVALID, "{subject} is a root");
        assert!(span.links.links.is_empty(), "{subject} has no link");
        assert!(span.span_context.is_valid());
        traces.insert(span.span_context.trace_id());
    }
    assert_eq!(traces.len(), count, "each message got its own fresh trace");
}
