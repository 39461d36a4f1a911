//! Operators decide what is traced: subject filters, a predicate, per-operation
//! switches, a metrics filter, and the `OTEL_INSTRUMENTATION_NATS_*` variables.
//! Filtered operations still propagate context and still record metrics.

use std::collections::BTreeMap;

use nats_otel::filter::{FilterErrorKind, OperationKind, SubjectFilter};
use nats_otel::metrics::names;
use nats_otel::semconv;
use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};

use crate::metrics::total;
use crate::support::{fetch, next, Metrics, NatsServer, Telemetry};

/// The names of the spans exported, sorted.
fn span_names(telemetry: &Telemetry) -> Vec<String> {
    let mut names: Vec<String> = telemetry
        .spans()
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn include_and_exclude_patterns_decide_spans_yet_context_and_metrics_go_on() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let metrics = Metrics::new();
    let filter = SubjectFilter::new()
        .include(["orders.>"])
        .unwrap()
        .exclude(["orders.health.*"])
        .unwrap();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_span_filter(filter)
                .with_meter_provider(&metrics.provider)
                .build(),
        )
        .await;
    let raw = server.raw_client().await;
    let mut seen = futures_util::stream::select(
        raw.subscribe("orders.>").await.unwrap(),
        raw.subscribe("payments.>").await.unwrap(),
    );
    crate::support::sync(&raw).await;

    // A caller's span is current: a filtered-out publish still carries it.
    let caller = telemetry.provider.tracer("caller").start("handle order");
    let cx = opentelemetry::Context::current_with_span(caller);
    let caller_span = cx.span().span_context().span_id();
    {
        let _guard = cx.clone().attach();
        for subject in ["orders.created", "orders.health.ping", "payments.settled"] {
            client.publish(subject, "x".into()).await.unwrap();
        }
    }
    cx.span().end();
    client.flush().await.unwrap();
    let mut parents = BTreeMap::new();
    for _ in 0..3 {
        let message = next(&mut seen).await;
        let traceparent = message
            .headers
            .unwrap()
            .get("traceparent")
            .unwrap()
            .to_string();
        parents.insert(message.subject.to_string(), traceparent[36..52].to_owned());
    }
    let published = telemetry.span("publish orders.created");
    assert_eq!(
        parents,
        BTreeMap::from([
            (
                "orders.created".to_owned(),
                format!("{:016x}", published.span_context.span_id())
            ),
            (
                "orders.health.ping".to_owned(),
                format!("{caller_span:016x}")
            ),
            ("payments.settled".to_owned(), format!("{caller_span:016x}")),
        ]),
        "the traced publish injects its own span, the filtered ones the caller's"
    );
    assert_eq!(
        span_names(&telemetry),
        ["handle order", "publish orders.created"]
    );
    // Span filters do not silence metrics.
    assert_eq!(total(&metrics.points(names::SENT_MESSAGES)), 3.0);
}

#[tokio::test]
async fn a_filtered_process_span_hands_the_producers_context_to_the_next_hop() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let producer = telemetry.client(&server).await;
    let consumer = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_span_filter(SubjectFilter::new().exclude(["in.*"]).unwrap())
                .build(),
        )
        .await;
    let mut sub = consumer.subscribe("in.*").await.unwrap();
    consumer.ping().await.unwrap();
    producer.publish("in.orders", "x".into()).await.unwrap();
    let delivery = next(&mut sub).await;
    let next_hop = consumer.clone();
    delivery
        .process(|m| async move { next_hop.publish("out.orders", m.payload).await })
        .await
        .unwrap();

    assert_eq!(
        span_names(&telemetry),
        ["publish in.orders", "publish out.orders"],
        "no process span"
    );
    let first = telemetry.span("publish in.orders");
    let second = telemetry.span("publish out.orders");
    assert_eq!(
        second.span_context.trace_id(),
        first.span_context.trace_id()
    );
    assert_eq!(second.parent_span_id, first.span_context.span_id());
}

#[tokio::test]
async fn a_predicate_sees_operation_subject_template_and_headers() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_span_predicate(|span| {
                    let quiet = span
                        .headers
                        .and_then(|h| h.get("X-Trace"))
                        .is_some_and(|v| v.as_str() == "off");
                    !(quiet || span.template == "users.*.heartbeat")
                })
                .build(),
        )
        .await;
    let mut quiet = async_nats::HeaderMap::new();
    quiet.insert("X-Trace", "off");
    client
        .publish_with_headers("orders.created", quiet, "x".into())
        .await
        .unwrap();
    client
        .publish("users.8812.heartbeat", "x".into())
        .await
        .unwrap();
    client
        .publish("users.8812.orders", "x".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert_eq!(span_names(&telemetry), ["publish users.*.orders"]);
}

/// Runs one message through every kind of operation (publish, request, a pull
/// with its process and ack, KV put and get) with `disabled` switched off, and
/// returns the span names.
async fn scenario(disabled: &[OperationKind]) -> Vec<String> {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_disabled_operations(disabled.iter().copied())
                .build(),
        )
        .await;
    let js = nats_otel::jetstream::new(&client);
    let stream = js
        .inner()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "FLT".to_owned(),
            subjects: vec!["flt.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .get_or_create_consumer(
            "flt",
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("flt".to_owned()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let consumer = js.pull_consumer(consumer);
    let kv = js
        .inner()
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "FLTKV".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let kv = js.key_value(kv);

    // A responder on a raw connection, so only the request side is traced.
    let raw = server.raw_client().await;
    let mut rpc = raw.subscribe("rpc.flt").await.unwrap();
    crate::support::sync(&raw).await;
    let responder = tokio::spawn(async move {
        let message = next(&mut rpc).await;
        raw.publish(message.reply.unwrap(), "ok".into())
            .await
            .unwrap();
        raw.flush().await.unwrap();
    });
    client.request("rpc.flt", "x".into()).await.unwrap();
    responder.await.unwrap();

    js.publish("flt.orders", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let deliveries = fetch(&consumer, 1).await;
    for delivery in deliveries {
        delivery
            .process(|m| async move { m.ack().await })
            .await
            .unwrap();
    }
    kv.put("sku", "7".into()).await.unwrap();
    assert_eq!(kv.get("sku").await.unwrap().unwrap(), "7");
    let mut names = span_names(&telemetry);
    names.dedup();
    names
}

#[tokio::test]
async fn each_operation_kind_can_be_switched_off_on_its_own() {
    let all = scenario(&[]).await;
    assert_eq!(
        all,
        [
            "ack FLT",
            "get FLTKV",
            "process FLT",
            "publish flt.orders",
            "put FLTKV",
            "receive FLT",
            "request rpc.flt",
        ]
    );
    let off = |kind: OperationKind| -> Vec<String> {
        let gone = match kind {
            OperationKind::Publish => "publish flt.orders",
            OperationKind::Request => "request rpc.flt",
            OperationKind::Receive => "receive FLT",
            OperationKind::Process => "process FLT",
            OperationKind::Settle => "ack FLT",
            OperationKind::StoreRead => "get FLTKV",
            OperationKind::StoreWrite => "put FLTKV",
            other => panic!("no scenario for {other:?}"),
        };
        all.iter().filter(|n| *n != gone).cloned().collect()
    };
    for kind in OperationKind::ALL {
        assert_eq!(scenario(&[kind]).await, off(kind), "{kind:?} switched off");
    }
}

#[tokio::test]
async fn the_metrics_filter_silences_metrics_by_template_and_spans_stay() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let metrics = Metrics::new();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_meter_provider(&metrics.provider)
                .with_metrics_filter(SubjectFilter::new().exclude(["health.>"]).unwrap())
                .build(),
        )
        .await;
    let mut sub = client.subscribe("health.ping").await.unwrap();
    client.flush().await.unwrap();
    client.publish("health.ping", "x".into()).await.unwrap();
    client.publish("orders.created", "x".into()).await.unwrap();
    drop(next(&mut sub).await);

    let templates: Vec<String> = metrics
        .points(names::SENT_MESSAGES)
        .iter()
        .filter_map(|p| p.attr(semconv::MESSAGING_DESTINATION_TEMPLATE))
        .collect();
    assert_eq!(templates, ["orders.created"]);
    assert_eq!(metrics.points(names::CONSUMED_MESSAGES).len(), 0);
    assert_eq!(
        span_names(&telemetry),
        [
            "process health.ping",
            "publish health.ping",
            "publish orders.created"
        ]
    );
}

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

#[tokio::test]
async fn environment_variables_are_applied_and_code_wins() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let env = vars(&[
        ("OTEL_INSTRUMENTATION_NATS_EXCLUDE", "health.>, debug.*"),
        ("OTEL_INSTRUMENTATION_NATS_DISABLED_OPERATIONS", "process"),
        ("OTEL_INSTRUMENTATION_NATS_BODY_SIZE", "true"),
    ]);
    // Code set the disabled operations before reading the environment: code wins.
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_disabled_operations([])
                .from_vars(env)
                .unwrap()
                .build(),
        )
        .await;
    let mut sub = client.subscribe("orders.*").await.unwrap();
    client.flush().await.unwrap();
    for subject in ["health.db", "debug.x", "orders.created"] {
        client.publish(subject, "12345".into()).await.unwrap();
    }
    drop(next(&mut sub).await);
    assert_eq!(
        span_names(&telemetry),
        ["process orders.*", "publish orders.created"],
        "EXCLUDE applied, DISABLED_OPERATIONS overridden by code"
    );
    let publish = telemetry.span("publish orders.created");
    assert_eq!(
        crate::support::attr(&publish, semconv::MESSAGING_MESSAGE_BODY_SIZE),
        Some(opentelemetry::Value::I64(5)),
        "BODY_SIZE applied"
    );
}

#[test]
fn malformed_environment_variables_are_rejected_naming_the_variable_and_value() {
    for (name, value, kind, message) in [
        (
            "OTEL_INSTRUMENTATION_NATS_DISABLED_OPERATIONS",
            "settle,acks",
            FilterErrorKind::UnknownOperation,
            "unknown operation: OTEL_INSTRUMENTATION_NATS_DISABLED_OPERATIONS=`settle,acks`: \
             unknown operation: `acks` (known: publish, request, receive, process, settle, \
             store_read, store_write)",
        ),
        (
            "OTEL_INSTRUMENTATION_NATS_INCLUDE",
            "orders.>,,health",
            FilterErrorKind::InvalidPattern,
            "invalid subject pattern: OTEL_INSTRUMENTATION_NATS_INCLUDE=`orders.>,,health`: \
             invalid subject pattern: ``: empty",
        ),
        (
            "OTEL_INSTRUMENTATION_NATS_EXCLUDE",
            "orders..created",
            FilterErrorKind::InvalidPattern,
            "invalid subject pattern: OTEL_INSTRUMENTATION_NATS_EXCLUDE=`orders..created`: \
             invalid subject pattern: `orders..created`: empty token",
        ),
        (
            "OTEL_INSTRUMENTATION_NATS_METRICS_EXCLUDE",
            "health checks",
            FilterErrorKind::InvalidPattern,
            "invalid subject pattern: OTEL_INSTRUMENTATION_NATS_METRICS_EXCLUDE=`health checks`: \
             invalid subject pattern: `health checks`: contains whitespace",
        ),
        (
            "OTEL_INSTRUMENTATION_NATS_BODY_SIZE",
            "maybe",
            FilterErrorKind::InvalidValue,
            "invalid value: OTEL_INSTRUMENTATION_NATS_BODY_SIZE=`maybe`: expected true or false",
        ),
    ] {
        let err = nats_otel::Instrumentation::builder()
            .from_vars(vars(&[(name, value)]))
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{name}");
        assert_eq!(err.to_string(), message, "{name}");
    }
}
