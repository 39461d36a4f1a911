//! KV: traced operations, and the writer's trace context stored with each value.

use nats_otel::semconv;
use opentelemetry::trace::{Status, TraceContextExt, Tracer, TracerProvider};

use crate::support::{attr, attr_str, next, NatsServer, Telemetry};

async fn bucket(telemetry: &Telemetry, server: &NatsServer) -> nats_otel::jetstream::kv::Store {
    let client = telemetry.client(server).await;
    let js = nats_otel::jetstream::new(&client);
    let store = match js.inner().get_key_value("STOCK").await {
        Ok(store) => store,
        Err(_) => js
            .inner()
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: "STOCK".to_owned(),
                history: 5,
                ..Default::default()
            })
            .await
            .unwrap(),
    };
    js.key_value(store)
}

#[tokio::test]
async fn watch_in_another_service_continues_the_writers_trace() {
    let server = NatsServer::start();
    let writer_telemetry = Telemetry::new();
    let watcher_telemetry = Telemetry::new();
    let writer = bucket(&writer_telemetry, &server).await;
    let watcher = bucket(&watcher_telemetry, &server).await;
    let mut changes = watcher.watch("sku.>").await.unwrap();

    // The write happens inside trace A.
    let tracer = writer_telemetry.provider.tracer("inventory");
    let trace_a = {
        let cx = opentelemetry::Context::current_with_span(tracer.start("reserve stock"));
        let trace = cx.span().span_context().trace_id();
        let _guard = cx.clone().attach();
        writer.put("sku.42", "7".into()).await.unwrap();
        cx.span().end();
        trace
    };

    let change = next(&mut changes).await.unwrap();
    assert_eq!(change.key, "sku.42");
    assert_eq!(&change.value[..], b"7");
    assert_eq!(
        change.producer_context().span().span_context().trace_id(),
        trace_a
    );
    drop(change);

    let put = writer_telemetry.span("put STOCK");
    assert_eq!(put.span_context.trace_id(), trace_a);
    // The write stores its context: a send whose context is injected.
    assert_eq!(put.span_kind, opentelemetry::trace::SpanKind::Producer);
    assert_eq!(
        attr_str(&put, semconv::MESSAGING_OPERATION_TYPE).as_deref(),
        Some("send")
    );
    assert_eq!(
        attr(&put, semconv::MESSAGING_NATS_KV_REVISION),
        Some(1i64.into())
    );
    let process = watcher_telemetry.span("process STOCK");
    // Child of the writer and linked to it, as every process span by default.
    assert_eq!(process.parent_span_id, put.span_context.span_id());
    assert_eq!(process.span_context.trace_id(), trace_a);
    assert_eq!(process.links.links.len(), 1);
    assert_eq!(process.links.links[0].span_context.trace_id(), trace_a);
    assert_eq!(
        process.links.links[0].span_context.span_id(),
        put.span_context.span_id()
    );
    assert_eq!(
        attr_str(&process, semconv::MESSAGING_NATS_KV_OPERATION).as_deref(),
        Some("PUT")
    );

    // The writer's context also comes back with a read.
    let (entry, writer_cx) = watcher.entry_with_context("sku.42").await.unwrap().unwrap();
    assert_eq!(entry.revision, 1);
    assert_eq!(writer_cx.span().span_context().trace_id(), trace_a);
}

#[tokio::test]
async fn stale_update_fails_with_error_type_and_leaves_the_value() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let store = bucket(&telemetry, &server).await;

    let first = store.put("sku.1", "10".into()).await.unwrap();
    let second = store.update("sku.1", "9".into(), first).await.unwrap();
    assert!(second > first);
    let err = store.update("sku.1", "8".into(), first).await.unwrap_err();
    assert_eq!(
        err.kind(),
        async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision
    );
    assert_eq!(&store.get("sku.1").await.unwrap().unwrap()[..], b"9");

    let updates: Vec<_> = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "update STOCK")
        .collect();
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0].status, Status::Unset);
    assert_eq!(
        attr_str(&updates[1], semconv::ERROR_TYPE).as_deref(),
        Some("wrong_last_revision")
    );
    assert!(matches!(updates[1].status, Status::Error { .. }));
}

#[tokio::test]
async fn create_refuses_existing_keys_but_recreates_deleted_ones() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let store = bucket(&telemetry, &server).await;

    store.create("sku.new", "1".into()).await.unwrap();
    let err = store.create("sku.new", "2".into()).await.unwrap_err();
    assert_eq!(
        err.kind(),
        async_nats::jetstream::kv::CreateErrorKind::AlreadyExists
    );
    store.delete("sku.new").await.unwrap();
    store.create("sku.new", "3".into()).await.unwrap();
    assert_eq!(&store.get("sku.new").await.unwrap().unwrap()[..], b"3");
    let failed = telemetry
        .spans()
        .into_iter()
        .filter(|s| s.name == "create STOCK" && s.status != Status::Unset)
        .count();
    assert_eq!(failed, 1);
}

#[tokio::test]
async fn keys_stay_out_of_attributes_unless_enabled() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let store = bucket(&telemetry, &server).await;
    store.put("user.8812.cart", "x".into()).await.unwrap();
    store.get("user.8812.cart").await.unwrap();
    assert!(telemetry
        .spans()
        .iter()
        .all(|s| attr(s, semconv::MESSAGING_NATS_KV_KEY).is_none() && !s.name.contains("8812")));

    let store = store.with_key_attribute(true);
    store.put("user.8812.cart", "y".into()).await.unwrap();
    let with_key = telemetry
        .spans()
        .into_iter()
        .filter(|s| {
            attr_str(s, semconv::MESSAGING_NATS_KV_KEY).as_deref() == Some("user.8812.cart")
        })
        .count();
    assert_eq!(with_key, 1);
}

#[tokio::test]
async fn invalid_keys_are_clear_errors_not_panics() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let store = bucket(&telemetry, &server).await;
    for key in ["bad key", "", ".lead", "trail.", "new\nline", "ünï"] {
        let err = store.put(key, "x".into()).await.unwrap_err();
        assert_eq!(
            err.kind(),
            async_nats::jetstream::kv::PutErrorKind::InvalidKey,
            "{key:?}"
        );
        assert!(store.update(key, "x".into(), 1).await.is_err());
        assert!(store.create(key, "x".into()).await.is_err());
        assert!(store.entry_with_context(key).await.is_err());
    }
    assert!(store.watch("bad key").await.is_err());
    assert!(telemetry
        .spans()
        .iter()
        .filter(|s| s.name == "put STOCK")
        .all(|s| attr_str(s, semconv::ERROR_TYPE).as_deref() == Some("invalid_key")));
}
