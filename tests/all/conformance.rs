//! The telemetry contract: one scenario through every path, every exported span and
//! metric point checked against the tables in `src/conventions.md` (the same file
//! the `semconv` module docs and the README show).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, push};
use futures_util::StreamExt;
use nats_otel::jetstream::dead_letter::{self, DeadLetter};
use nats_otel::jetstream::{Backoff, HandlerError, Worker};
use nats_otel::metrics::names;
use nats_otel::semconv;
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SpanData;
use tokio::io::AsyncReadExt;

use crate::support::{attr, attr_str, next, Metrics, NatsServer, Point, Telemetry};

const CONVENTIONS: &str = include_str!("../../src/conventions.md");
const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.44.0";

/// One row of the span table.
#[derive(Debug)]
struct Row {
    kind: SpanKind,
    operation_type: Option<String>,
}

/// The documented contract: operations, attribute keys, literal `error.type` values.
struct Contract {
    operations: HashMap<String, Row>,
    attributes: BTreeSet<String>,
    error_types: BTreeSet<String>,
}

fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn contract() -> Contract {
    let mut contract = Contract {
        operations: HashMap::new(),
        attributes: BTreeSet::new(),
        error_types: BTreeSet::new(),
    };
    let mut table = "";
    for line in CONVENTIONS.lines() {
        if !line.starts_with('|') {
            table = "";
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        match (cells[0], cells.get(1).copied()) {
            ("`messaging.operation.name`", Some("kind")) => table = "spans",
            ("attribute", Some("on")) => table = "attributes",
            ("value", Some("when")) => table = "errors",
            (c, _) if c.starts_with("---") => {}
            _ => match table {
                "spans" => {
                    let kind = match cells[1] {
                        "PRODUCER" => SpanKind::Producer,
                        "CONSUMER" => SpanKind::Consumer,
                        "CLIENT" => SpanKind::Client,
                        other => panic!("unknown kind {other}"),
                    };
                    let operation_type = backticked(cells[2]).into_iter().next();
                    for op in backticked(cells[0]) {
                        contract.operations.insert(
                            op,
                            Row {
                                kind: kind.clone(),
                                operation_type: operation_type.clone(),
                            },
                        );
                    }
                }
                "attributes" => contract.attributes.extend(backticked(cells[0])),
                "errors" => contract.error_types.extend(backticked(cells[0])),
                _ => {}
            },
        }
    }
    assert!(contract.operations.len() >= 20, "{:?}", contract.operations);
    assert!(contract.attributes.len() >= 40);
    contract
}

/// Whether `value` is an `error.type` the documented vocabulary allows: a listed
/// value, an async-nats kind in snake_case, a Service code, or a type's path.
fn allowed_error_type(contract: &Contract, value: &str) -> bool {
    let snake = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let code = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    let type_path = value.contains("::") && value != "alloc::string::String";
    contract.error_types.contains(value) || snake || code || type_path
}

/// Fails unless `name` has no token that is an id.
fn assert_no_ids(name: &str) {
    for token in name.split([' ', '.']) {
        assert!(
            token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()),
            "raw id in span name {name:?}"
        );
    }
}

/// What every span of the scenario's one connection carries.
struct Connection {
    port: i64,
    client_id: String,
}

fn check_span(contract: &Contract, connection: &Connection, span: &SpanData) {
    let name = span.name.as_ref();
    let op = attr_str(span, semconv::MESSAGING_OPERATION_NAME)
        .unwrap_or_else(|| panic!("{name}: no operation name"));
    let row = contract
        .operations
        .get(&op)
        .unwrap_or_else(|| panic!("{name}: operation {op:?} not in the table"));
    assert_eq!(span.span_kind, row.kind, "{name}: kind");
    assert_eq!(
        attr_str(span, semconv::MESSAGING_OPERATION_TYPE),
        row.operation_type,
        "{name}: operation type"
    );
    let template = attr_str(span, semconv::MESSAGING_DESTINATION_TEMPLATE)
        .unwrap_or_else(|| panic!("{name}: no template"));
    assert_eq!(
        name,
        format!("{op} {template}"),
        "name = operation template"
    );
    assert_no_ids(name);
    assert_eq!(
        attr_str(span, semconv::MESSAGING_SYSTEM).as_deref(),
        Some("nats")
    );
    assert_eq!(
        attr_str(span, semconv::SERVER_ADDRESS).as_deref(),
        Some("127.0.0.1"),
        "{name}"
    );
    assert_eq!(
        attr(span, semconv::SERVER_PORT),
        Some(connection.port.into()),
        "{name}"
    );
    assert_eq!(
        attr_str(span, semconv::MESSAGING_CLIENT_ID).as_deref(),
        Some(connection.client_id.as_str()),
        "{name}"
    );
    // The real destination: the subject, or (KV, Object Store, receive) what the
    // template names.
    let destination = attr_str(span, semconv::MESSAGING_DESTINATION_NAME)
        .unwrap_or_else(|| panic!("{name}: no destination name"));
    assert!(
        destination == template
            || nats_otel::destination::subject_matches(&template, &destination)
            || template == "(temporary)" && destination.starts_with("_INBOX."),
        "{name}: destination {destination:?} is not of template {template:?}"
    );
    let temporary = attr_str(span, semconv::MESSAGING_DESTINATION_TEMPORARY);
    let anonymous = attr_str(span, semconv::MESSAGING_DESTINATION_ANONYMOUS);
    assert_eq!(temporary, anonymous, "{name}: temporary and anonymous");
    let mut keys = BTreeSet::new();
    for kv in &span.attributes {
        let key = kv.key.as_str();
        assert!(
            contract.attributes.contains(key),
            "{name}: attribute {key} is not documented"
        );
        assert!(keys.insert(key), "{name}: {key} set twice");
    }
    if let Some(error_type) = attr_str(span, semconv::ERROR_TYPE) {
        assert!(
            allowed_error_type(contract, &error_type),
            "{name}: error.type {error_type:?}"
        );
    }
    assert_eq!(
        span.instrumentation_scope.schema_url(),
        Some(SCHEMA_URL),
        "{name}"
    );
}

fn check_point(contract: &Contract, point: &Point) {
    let op = point
        .attr(semconv::MESSAGING_OPERATION_NAME)
        .unwrap_or_else(|| panic!("{}: no operation name", point.name));
    let row = contract
        .operations
        .get(&op)
        .unwrap_or_else(|| panic!("{}: operation {op:?} not in the table", point.name));
    assert_eq!(
        point.attr(semconv::MESSAGING_OPERATION_TYPE),
        row.operation_type,
        "{} {op}: operation type",
        point.name
    );
    let template = point
        .attr(semconv::MESSAGING_DESTINATION_TEMPLATE)
        .unwrap_or_else(|| panic!("{} {op}: no template", point.name));
    assert_no_ids(&template);
    assert_eq!(
        point.attr(semconv::MESSAGING_SYSTEM).as_deref(),
        Some("nats")
    );
    for raw in [
        semconv::MESSAGING_DESTINATION_NAME,
        semconv::MESSAGING_CLIENT_ID,
        semconv::MESSAGING_MESSAGE_ID,
    ] {
        assert_eq!(point.attr(raw), None, "{} {op}: {raw}", point.name);
    }
    if let Some(error_type) = point.attr(semconv::ERROR_TYPE) {
        assert!(allowed_error_type(contract, &error_type), "{error_type:?}");
    }
}

async fn stream(js: &nats_otel::jetstream::Context, name: &str, subjects: &str) {
    js.inner()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn pull_consumer(
    js: &nats_otel::jetstream::Context,
    stream: &str,
    name: &str,
    filter: &str,
) -> nats_otel::jetstream::PullConsumer {
    let consumer = js
        .inner()
        .get_stream(stream)
        .await
        .unwrap()
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.to_owned()),
                filter_subject: filter.to_owned(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    js.pull_consumer(consumer)
}

async fn js_publish(js: &nats_otel::jetstream::Context, subject: &str) {
    js.publish(subject.to_owned(), "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Core publish, subscribe, queue subscribe, request and handler errors.
async fn core(client: &nats_otel::Client) {
    let mut sub = client.subscribe("conf.core.*").await.unwrap();
    let mut queue = client
        .queue_subscribe("conf.queue.*", "workers".to_owned())
        .await
        .unwrap();
    let mut errors = client.subscribe("conf.errors.*").await.unwrap();
    let mut users = client.subscribe("conf.users.get").await.unwrap();
    client.ping().await.expect("ping");
    client.publish("conf.core.8812", "a".into()).await.unwrap();
    client.publish("conf.queue.17", "b".into()).await.unwrap();
    for sub in [&mut sub, &mut queue] {
        next(sub)
            .await
            .process(|_| async { Ok::<_, String>(()) })
            .await
            .unwrap();
    }
    client.publish("conf.errors.io", "c".into()).await.unwrap();
    client
        .publish("conf.errors.text", "d".into())
        .await
        .unwrap();
    let io = next(&mut errors)
        .await
        .process(|_| async { Err::<(), _>(std::io::Error::other("disk full")) })
        .await;
    assert_eq!(io.unwrap_err().to_string(), "disk full");
    let text = next(&mut errors)
        .await
        .process(|_| async { Err::<(), _>("bad input".to_owned()) })
        .await;
    assert_eq!(text, Err("bad input".to_owned()));

    let responder = {
        let client = client.clone();
        tokio::spawn(async move {
            next(&mut users)
                .await
                .process(|m| async move {
                    let reply = m.reply.ok_or("no reply subject")?;
                    client
                        .publish(reply, "alice".into())
                        .await
                        .map_err(|e| e.to_string())
                })
                .await
        })
    };
    let reply = client.request("conf.users.get", "42".into()).await.unwrap();
    assert_eq!(&reply.payload[..], b"alice");
    responder.await.unwrap().unwrap();
    let refused = client.request("conf.nobody", "".into()).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        async_nats::client::RequestErrorKind::NoResponders
    );
}

/// JetStream publish, pull (messages, fetch, batch), push and ordered consumers,
/// and every settlement.
async fn jetstream(client: &nats_otel::Client, js: &nats_otel::jetstream::Context) {
    stream(js, "CONF", "conf.js.>").await;
    let err = js
        .publish("conf.nostream", "x".into())
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        async_nats::jetstream::context::PublishErrorKind::StreamNotFound
    );

    js_publish(js, "conf.js.pull").await;
    let pulled = pull_consumer(js, "CONF", "pull", "conf.js.pull").await;
    let mut messages = pulled.messages().await.unwrap();
    next(&mut messages)
        .await
        .unwrap()
        .process(|message| async move { message.ack().await })
        .await
        .unwrap();

    js_publish(js, "conf.js.fetch").await;
    js_publish(js, "conf.js.fetch").await;
    let fetching = pull_consumer(js, "CONF", "fetch", "conf.js.fetch").await;
    let mut fetched = crate::support::fetch(&fetching, 2).await;
    assert_eq!(fetched.len(), 2);
    let second = fetched.pop().unwrap();
    let first = fetched.pop().unwrap();
    first.progress().await.unwrap();
    first.double_ack().await.unwrap();
    second.nak(Some(Duration::from_secs(60))).await.unwrap();
    drop((first, second));

    js_publish(js, "conf.js.batch").await;
    let batching = pull_consumer(js, "CONF", "batch", "conf.js.batch").await;
    let batch = crate::support::batch(&batching, 1, Duration::from_secs(5)).await;
    for delivery in batch {
        delivery.term().await.unwrap();
    }

    let stream = js.inner().get_stream("CONF").await.unwrap();
    let push_consumer = stream
        .create_consumer(push::Config {
            durable_name: Some("push".to_owned()),
            deliver_subject: client.new_inbox(),
            filter_subject: "conf.js.push".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let info = push_consumer.cached_info().clone();
    let mut pushed = js.messages(&info, push_consumer.messages().await.unwrap());
    js_publish(js, "conf.js.push").await;
    next(&mut pushed).await.unwrap().ack().await.unwrap();

    let ordered = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: "conf.js.ordered".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let info = ordered.cached_info().clone();
    let mut ordered = js.messages(&info, ordered.messages().await.unwrap());
    js_publish(js, "conf.js.ordered").await;
    drop(next(&mut ordered).await.unwrap());
}

/// The worker: success, transient, fatal, panic and (with compression) an
/// undecodable payload.
async fn worker(js: &nats_otel::jetstream::Context) {
    stream(js, "WORK", "conf.work.>").await;
    dead_letter::ensure_stream(js, "DLQ", &DeadLetter::default())
        .await
        .unwrap();
    let consumer = pull_consumer(js, "WORK", "workers", "conf.work.>").await;
    for outcome in ["ok", "transient", "fatal", "panic"] {
        js_publish(js, &format!("conf.work.{outcome}")).await;
    }
    #[cfg_attr(not(feature = "compression"), allow(unused_mut))]
    let mut dead = 3;
    #[cfg(feature = "compression")]
    {
        js.inner()
            .publish_with_headers(
                "conf.work.undecodable",
                crate::compression::encoded("zstd"),
                bytes::Bytes::from_static(b"not zstd"),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        dead += 1;
    }
    let (done, mut ok) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = Worker::new(js, consumer)
        .max_deliver(2)
        .backoff(Backoff::Exponential {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(50),
            multiplier: 2.0,
            jitter: 0.0,
        })
        .run(
            move |task| {
                let done = done.clone();
                async move {
                    match task.subject.as_str() {
                        "conf.work.ok" => {
                            let _ = done.send(());
                            Ok(())
                        }
                        "conf.work.transient" => Err(HandlerError::transient("try later")),
                        "conf.work.fatal" => Err(HandlerError::fatal("never")),
                        _ => panic!("handler bug"),
                    }
                }
            },
            async move {
                let _ = stopped.await;
            },
        );
    let worker = tokio::spawn(run);
    let dlq = js.inner().get_stream("DLQ").await.unwrap();
    let reader = dlq.create_consumer(pull::Config::default()).await.unwrap();
    let mut copies = reader.messages().await.unwrap();
    for _ in 0..dead {
        next(&mut copies).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), ok.recv())
        .await
        .unwrap();
    stop.send(()).unwrap();
    let stats = worker.await.unwrap();
    assert_eq!(stats.acked, 1);
    assert_eq!(stats.dead_lettered, dead);
}

/// KV writes, reads, deletes and a watch.
async fn kv(js: &nats_otel::jetstream::Context) {
    let store = js
        .inner()
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "STOCK".to_owned(),
            history: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    let store = js.key_value(store).with_key_attribute(true);
    let mut changes = store.watch("sku.>").await.unwrap();
    let revision = store.put("sku.1", "7".into()).await.unwrap();
    store.create("sku.2", "1".into()).await.unwrap();
    store.update("sku.1", "6".into(), revision).await.unwrap();
    let stale = store.update("sku.1", "5".into(), revision).await;
    assert_eq!(
        stale.unwrap_err().kind(),
        async_nats::jetstream::kv::UpdateErrorKind::WrongLastRevision
    );
    assert_eq!(
        store.get("sku.1").await.unwrap().as_deref(),
        Some(&b"6"[..])
    );
    store.entry("sku.2").await.unwrap().unwrap();
    store.delete("sku.2").await.unwrap();
    store.purge("sku.1").await.unwrap();
    drop(store.keys().await.unwrap());
    drop(store.history("sku.1").await.unwrap());
    for _ in 0..5 {
        drop(next(&mut changes).await.unwrap());
    }
}

/// Object Store put, get, info, list, delete and a watch.
async fn object_store(js: &nats_otel::jetstream::Context) {
    let store = js
        .create_object_store(async_nats::jetstream::object_store::Config {
            bucket: "RECEIPTS".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .with_name_attribute(true);
    let mut changes = store.watch().await.unwrap();
    store.put("a.txt", &mut &b"paid"[..]).await.unwrap();
    drop(next(&mut changes).await.unwrap());
    let mut object = store.get("a.txt").await.unwrap();
    let mut content = Vec::new();
    object.read_to_end(&mut content).await.unwrap();
    assert_eq!(content, b"paid");
    drop(object);
    store.info("a.txt").await.unwrap();
    drop(store.list().await.unwrap());
    store.delete("a.txt").await.unwrap();
    drop(next(&mut changes).await.unwrap());
}

/// A Service endpoint answering once, then with an error.
async fn service(client: &nats_otel::Client) {
    let service = client
        .service_builder()
        .start("conf", "1.0.0")
        .await
        .unwrap();
    let mut endpoint = service.endpoint("conf.echo").await.unwrap();
    let answering = tokio::spawn(async move {
        let first = endpoint.next().await.unwrap();
        first.respond(Ok("ok".into())).await.unwrap();
        let second = endpoint.next().await.unwrap();
        second
            .respond(Err(async_nats::service::error::Error {
                status: "unavailable".to_owned(),
                code: 503,
            }))
            .await
            .unwrap();
    });
    client.request("conf.echo", "1".into()).await.unwrap();
    client.request("conf.echo", "2".into()).await.unwrap();
    answering.await.unwrap();
}

#[tokio::test]
async fn every_span_and_metric_point_follows_the_documented_contract() {
    let contract = contract();
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let metrics = Metrics::new();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_meter_provider(&metrics.provider)
                .with_message_body_size(true)
                .build(),
        )
        .await;
    let js = nats_otel::jetstream::new(&client);

    core(&client).await;
    jetstream(&client, &js).await;
    worker(&js).await;
    kv(&js).await;
    object_store(&js).await;
    service(&client).await;

    let spans = telemetry.spans();
    let seen: BTreeSet<String> = spans
        .iter()
        .filter_map(|s| attr_str(s, semconv::MESSAGING_OPERATION_NAME))
        .collect();
    let documented: BTreeSet<String> = contract.operations.keys().cloned().collect();
    assert_eq!(
        seen, documented,
        "the scenario covers every documented operation"
    );
    let connection = Connection {
        port: i64::from(server.port()),
        client_id: client.server_info().client_id.to_string(),
    };
    for span in &spans {
        check_span(&contract, &connection, span);
    }

    // Exact error types, span by span.
    let mut failures: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for span in &spans {
        if let Some(error_type) = attr_str(span, semconv::ERROR_TYPE) {
            let destination = attr_str(span, semconv::MESSAGING_DESTINATION_NAME).unwrap();
            failures
                .entry((span.name.to_string(), destination))
                .or_default()
                .push(error_type);
        }
    }
    #[cfg_attr(not(feature = "compression"), allow(unused_mut))]
    let mut expected: BTreeMap<(String, String), Vec<String>> = [
        (
            ("request conf.nobody", "conf.nobody"),
            &["no_responders"][..],
        ),
        (
            ("publish conf.nostream", "conf.nostream"),
            &["stream_not_found"],
        ),
        (
            ("process conf.errors.*", "conf.errors.io"),
            &["std::io::error::Error"],
        ),
        (("process conf.errors.*", "conf.errors.text"), &["_OTHER"]),
        (
            ("process conf.work.>", "conf.work.transient"),
            &["transient", "transient"],
        ),
        (("process conf.work.>", "conf.work.fatal"), &["fatal"]),
        (
            ("process conf.work.>", "conf.work.panic"),
            &["panic", "panic"],
        ),
        (("update STOCK", "STOCK"), &["wrong_last_revision"]),
        (("process conf.echo", "conf.echo"), &["503"]),
    ]
    .into_iter()
    .map(|((name, destination), types)| {
        (
            (name.to_owned(), destination.to_owned()),
            types.iter().map(|t| (*t).to_owned()).collect(),
        )
    })
    .collect();
    #[cfg(feature = "compression")]
    expected.insert(
        (
            "process conf.work.>".to_owned(),
            "conf.work.undecodable".to_owned(),
        ),
        vec!["corrupt_payload".to_owned()],
    );
    assert_eq!(failures, expected);

    // Metric points: same table, no raw subjects, the same error types.
    let points = metrics.collect();
    let mut metric_errors = BTreeSet::new();
    for point in &points {
        if [
            names::OPERATION_DURATION,
            names::PROCESS_DURATION,
            names::SENT_MESSAGES,
            names::CONSUMED_MESSAGES,
        ]
        .contains(&point.name.as_str())
        {
            check_point(&contract, point);
            metric_errors.extend(point.attr(semconv::ERROR_TYPE));
        }
    }
    let span_errors: BTreeSet<String> = expected.into_values().flatten().collect();
    assert_eq!(metric_errors, span_errors);
    assert_eq!(
        metrics.schema_urls(),
        BTreeSet::from([SCHEMA_URL.to_owned()])
    );
}

#[test]
fn the_readme_shows_the_same_tables_as_the_module_docs() {
    let readme = include_str!("../../README.md");
    assert!(
        readme.contains(CONVENTIONS),
        "README.md must contain src/conventions.md verbatim"
    );
}
