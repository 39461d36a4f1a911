//! Metrics: convention instruments, attributes, switches, worker counters.

use std::time::Duration;

use nats_otel::metrics::names;
use nats_otel::semconv;

use crate::support::{next, Metrics, NatsServer, Telemetry};

/// A traced client whose metrics go to a fresh in-memory meter provider.
async fn metered(server: &NatsServer) -> (Telemetry, Metrics, nats_otel::Client) {
    let telemetry = Telemetry::new();
    let metrics = Metrics::new();
    let client = telemetry
        .connect(
            server,
            telemetry
                .builder()
                .with_meter_provider(&metrics.provider)
                .build(),
        )
        .await;
    (telemetry, metrics, client)
}

pub(crate) fn total(points: &[crate::support::Point]) -> f64 {
    points.iter().map(|p| p.value).sum()
}

#[tokio::test]
async fn publishes_and_processed_messages_are_counted_with_exact_attributes() {
    let server = NatsServer::start();
    let (_telemetry, metrics, client) = metered(&server).await;
    let mut sub = client.subscribe("users.*.orders").await.unwrap();
    const N: usize = 5;
    for user in 0..N {
        client
            .publish(format!("users.{}.orders", 8810 + user), "x".into())
            .await
            .unwrap();
    }
    for _ in 0..N {
        next(&mut sub)
            .await
            .process(|_| async { Ok::<_, String>(()) })
            .await
            .unwrap();
    }

    let sent = metrics.points(names::SENT_MESSAGES);
    let consumed = metrics.points(names::CONSUMED_MESSAGES);
    assert_eq!(total(&sent), N as f64);
    assert_eq!(total(&consumed), N as f64);
    let expected_keys = |group: bool| {
        let mut keys = vec![
            semconv::MESSAGING_DESTINATION_TEMPLATE,
            semconv::MESSAGING_OPERATION_NAME,
            semconv::MESSAGING_OPERATION_TYPE,
            semconv::MESSAGING_SYSTEM,
            semconv::SERVER_ADDRESS,
            semconv::SERVER_PORT,
        ];
        if group {
            keys.push(semconv::MESSAGING_CONSUMER_GROUP_NAME);
        }
        keys.sort();
        keys.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(sent.len(), 1, "one series for all user ids: {sent:?}");
    assert_eq!(sent[0].keys(), expected_keys(false));
    assert_eq!(
        sent[0]
            .attr(semconv::MESSAGING_DESTINATION_TEMPLATE)
            .as_deref(),
        Some("users.*.orders")
    );
    assert_eq!(
        sent[0].attr(semconv::MESSAGING_OPERATION_NAME).as_deref(),
        Some("publish")
    );
    assert_eq!(
        sent[0].attr(semconv::MESSAGING_OPERATION_TYPE).as_deref(),
        Some("send")
    );
    assert_eq!(
        sent[0].attr(semconv::MESSAGING_SYSTEM).as_deref(),
        Some("nats")
    );
    assert_eq!(consumed.len(), 1);
    assert_eq!(consumed[0].keys(), expected_keys(false));
    assert_eq!(
        consumed[0]
            .attr(semconv::MESSAGING_OPERATION_NAME)
            .as_deref(),
        Some("process")
    );

    let publish_durations: Vec<_> = metrics
        .points(names::OPERATION_DURATION)
        .into_iter()
        .filter(|p| p.attr(semconv::MESSAGING_OPERATION_NAME).as_deref() == Some("publish"))
        .collect();
    assert_eq!(
        total(&publish_durations),
        N as f64,
        "one observation per publish"
    );
    assert_eq!(total(&metrics.points(names::PROCESS_DURATION)), N as f64);

    // No raw subject with an id anywhere (the server's port, a number that may
    // contain the same digits, is not a subject).
    for point in metrics.collect() {
        for kv in &point.attributes {
            if kv.key.as_str() == semconv::SERVER_PORT {
                continue;
            }
            assert!(!kv.value.as_str().contains("users.881"), "{point:?}");
        }
    }
}

#[tokio::test]
async fn metrics_and_tracing_switch_independently() {
    let server = NatsServer::start();

    // Metrics on, tracing off: metrics only.
    let telemetry = Telemetry::new();
    let metrics = Metrics::new();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_tracing(false)
                .with_meter_provider(&metrics.provider)
                .build(),
        )
        .await;
    let mut sub = client.subscribe("switch.a").await.unwrap();
    client.publish("switch.a", "x".into()).await.unwrap();
    drop(next(&mut sub).await);
    assert!(telemetry.spans().is_empty());
    assert_eq!(total(&metrics.points(names::SENT_MESSAGES)), 1.0);
    assert_eq!(total(&metrics.points(names::CONSUMED_MESSAGES)), 1.0);

    // Tracing on, metrics off: spans only.
    let telemetry = Telemetry::new();
    let metrics = Metrics::new();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_metrics(false)
                .with_meter_provider(&metrics.provider)
                .build(),
        )
        .await;
    let mut sub = client.subscribe("switch.b").await.unwrap();
    client.publish("switch.b", "x".into()).await.unwrap();
    drop(next(&mut sub).await);
    assert_eq!(telemetry.spans().len(), 2);
    assert!(
        metrics.collect().is_empty(),
        "no metric when metrics are off"
    );
}

#[tokio::test]
async fn failed_request_records_error_type_on_the_duration() {
    let server = NatsServer::start();
    let (_telemetry, metrics, client) = metered(&server).await;
    assert!(client.request("nobody.here", "?".into()).await.is_err());
    let durations = metrics.points(names::OPERATION_DURATION);
    let failed: Vec<_> = durations
        .iter()
        .filter(|p| p.attr(semconv::MESSAGING_OPERATION_NAME).as_deref() == Some("request"))
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(
        failed[0].attr(semconv::ERROR_TYPE).as_deref(),
        Some("no_responders")
    );
    assert_eq!(failed[0].value, 1.0);
}

#[tokio::test]
async fn end_to_end_latency_uses_the_publish_time_header_when_enabled() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let metrics = Metrics::new();
    let client = telemetry
        .connect(
            &server,
            telemetry
                .builder()
                .with_meter_provider(&metrics.provider)
                .with_publish_time_header(true)
                .build(),
        )
        .await;
    let mut sub = client.subscribe("timed.>").await.unwrap();
    client.publish("timed.one", "x".into()).await.unwrap();
    let delivery = next(&mut sub).await;
    assert!(delivery
        .headers
        .as_ref()
        .and_then(|h| h.get(nats_otel::metrics::PUBLISHED_HEADER))
        .is_some());
    drop(delivery);
    assert_eq!(total(&metrics.points(names::END_TO_END)), 1.0);
}

#[tokio::test]
async fn subscription_attributes_are_added_and_bounded() {
    let server = NatsServer::start();
    let (_telemetry, metrics, client) = metered(&server).await;
    let mut sub = client
        .subscribe("tenant.events")
        .await
        .unwrap()
        .with_metric_attributes([
            opentelemetry::KeyValue::new("tenant", "acme"),
            opentelemetry::KeyValue::new(semconv::MESSAGING_DESTINATION_NAME, "tenant.events.8812"),
        ]);
    client.publish("tenant.events", "x".into()).await.unwrap();
    drop(next(&mut sub).await);
    let consumed = metrics.points(names::CONSUMED_MESSAGES);
    assert_eq!(consumed.len(), 1);
    assert_eq!(consumed[0].attr("tenant").as_deref(), Some("acme"));
    assert!(
        consumed[0]
            .attr(semconv::MESSAGING_DESTINATION_NAME)
            .is_none(),
        "reserved keys are ignored"
    );
}

#[tokio::test]
async fn jetstream_and_worker_metrics_count_retries_dead_letters_and_latency() {
    use async_nats::jetstream::consumer::pull;
    use nats_otel::jetstream::dead_letter::{self, DeadLetter};
    use nats_otel::jetstream::{Backoff, HandlerError, Worker};

    let server = NatsServer::start();
    let (_telemetry, metrics, client) = metered(&server).await;
    let js = nats_otel::jetstream::new(&client);
    dead_letter::ensure_stream(&js, "DLQ", &DeadLetter::default())
        .await
        .unwrap();
    let stream = js
        .inner()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "JOBS".to_owned(),
            subjects: vec!["jobs.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .get_or_create_consumer(
            "runner",
            pull::Config {
                durable_name: Some("runner".to_owned()),
                filter_subject: "jobs.*".to_owned(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let consumer = js.pull_consumer(consumer);
    for payload in ["ok", "poison"] {
        js.publish("jobs.run", payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(&js, consumer)
        .max_deliver(2)
        .backoff(Backoff::List(vec![Duration::from_millis(20)]));
    let task = tokio::spawn(worker.run(
        move |message| {
            let done_tx = done_tx.clone();
            async move {
                let poison = &message.payload[..] == b"poison";
                let last = message.info().map(|i| i.delivered).unwrap_or(0) >= 2;
                if !poison || last {
                    let _ = done_tx.send(());
                }
                if poison {
                    Err(HandlerError::transient("bad job"))
                } else {
                    Ok(())
                }
            }
        },
        async move {
            let _ = stopped.await;
        },
    ));
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), done.recv())
            .await
            .unwrap();
    }
    // The last attempt's dead letter is settled after the handler returns; the
    // dead-letter stream holding it is the event to wait for.
    let dlq = js.inner().get_stream("DLQ").await.unwrap();
    let reader = dlq.create_consumer(pull::Config::default()).await.unwrap();
    let mut copies = reader.messages().await.unwrap();
    let _ = next(&mut copies).await;
    stop.send(()).unwrap();
    let stats = task.await.unwrap();
    assert_eq!(stats.dead_lettered, 1);

    assert_eq!(total(&metrics.points(names::WORKER_RETRIES)), 1.0);
    assert_eq!(total(&metrics.points(names::WORKER_DEAD_LETTERS)), 1.0);
    let consumed = metrics.points(names::CONSUMED_MESSAGES);
    assert_eq!(total(&consumed), 3.0, "ok + two poison deliveries");
    assert!(consumed.iter().all(
        |p| p.attr(semconv::MESSAGING_DESTINATION_TEMPLATE).as_deref() == Some("jobs.*")
            && p.attr(semconv::MESSAGING_CONSUMER_GROUP_NAME).as_deref() == Some("runner")
    ));
    assert_eq!(total(&metrics.points(names::QUEUE_WAIT)), 3.0);
    assert_eq!(total(&metrics.points(names::END_TO_END)), 3.0);
    assert!(!metrics.points(names::CONSUMER_LAG).is_empty());
    let failed_processing: Vec<(String, f64)> = metrics
        .points(names::PROCESS_DURATION)
        .into_iter()
        .filter_map(|p| Some((p.attr(semconv::ERROR_TYPE)?, p.value)))
        .collect();
    assert_eq!(failed_processing, [("transient".to_owned(), 2.0)]);
    let settles: Vec<String> = metrics
        .points(names::OPERATION_DURATION)
        .into_iter()
        .filter(|p| p.attr(semconv::MESSAGING_OPERATION_TYPE).as_deref() == Some("settle"))
        .filter_map(|p| p.attr(semconv::MESSAGING_OPERATION_NAME))
        .collect();
    for op in ["ack", "nak", "term"] {
        assert!(settles.iter().any(|s| s == op), "{op} in {settles:?}");
    }
}

/// Connects with an event callback that forwards every event's text to a channel.
async fn connect_with_events(
    server: &NatsServer,
    metrics: &Metrics,
    options: nats_otel::ConnectOptions,
) -> (
    nats_otel::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let telemetry = Telemetry::new();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = telemetry
        .builder()
        .with_meter_provider(&metrics.provider)
        .build()
        .connect(
            server.url(),
            options.event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(event.to_string());
                }
            }),
        )
        .await
        .unwrap();
    (client, rx)
}

async fn wait_for_event(events: &mut tokio::sync::mpsc::UnboundedReceiver<String>, text: &str) {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(15), events.recv())
            .await
            .unwrap_or_else(|_| panic!("no `{text}` event"))
            .expect("callback alive");
        if event.contains(text) {
            return;
        }
    }
}

fn value(metrics: &Metrics, name: &str) -> f64 {
    total(&metrics.points(name))
}

#[tokio::test]
async fn reconnect_shows_in_connects_and_connection_state_and_user_callback_still_fires() {
    use nats_otel::health::names as health;
    let mut server = NatsServer::start();
    let metrics = Metrics::new();
    let options = nats_otel::ConnectOptions::new().max_reconnects(None);
    let (client, mut events) = connect_with_events(&server, &metrics, options).await;
    assert_eq!(value(&metrics, health::CONNECTION_STATE), 1.0);
    assert_eq!(value(&metrics, health::CONNECTS), 1.0);

    server.kill();
    wait_for_event(&mut events, "disconnected").await;
    assert_eq!(
        value(&metrics, health::CONNECTION_STATE),
        0.0,
        "outage reported"
    );

    server.restart();
    wait_for_event(&mut events, "connected").await;
    assert_eq!(
        value(&metrics, health::CONNECTION_STATE),
        1.0,
        "recovery reported"
    );
    assert!(value(&metrics, health::CONNECTS) >= 2.0);
    assert!(value(&metrics, health::RECONNECTS) >= 1.0);
    drop(client);
}

#[tokio::test]
async fn slow_consumer_drops_are_counted_and_the_user_callback_still_fires() {
    use nats_otel::health::names as health;
    let server = NatsServer::start();
    let metrics = Metrics::new();
    let options = nats_otel::ConnectOptions::new().subscription_capacity(8);
    let (client, mut events) = connect_with_events(&server, &metrics, options).await;
    // A subscriber that never reads.
    let _stuck = client.subscribe("flood").await.unwrap();
    client.ping().await.expect("ping");
    let raw = server.raw_client().await;
    for i in 0..500 {
        raw.publish("flood", format!("{i}").into()).await.unwrap();
    }
    raw.flush().await.unwrap();
    wait_for_event(&mut events, "slow consumers").await;
    assert!(value(&metrics, health::SLOW_CONSUMERS) >= 1.0);
    assert!(value(&metrics, health::MESSAGES_IN) >= 8.0);
    assert!(value(&metrics, health::BYTES_OUT) > 0.0);
}

#[tokio::test]
async fn consumer_health_gauges_report_pending_ack_pending_and_redelivered() {
    use async_nats::jetstream::consumer::pull;
    let server = NatsServer::start();
    let (_telemetry, metrics, client) = metered(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let stream = js
        .inner()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "HEALTH".to_owned(),
            subjects: vec!["health.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .get_or_create_consumer(
            "watcher",
            pull::Config {
                durable_name: Some("watcher".to_owned()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let consumer = js.pull_consumer(consumer);
    for i in 0..3 {
        js.publish(format!("health.{i}"), "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Take one and nak it (redelivered), take another and hold it (ack pending).
    let first = crate::support::batch(&consumer, 1, Duration::from_secs(5))
        .await
        .remove(0);
    first.nak(None).await.unwrap();
    let held = crate::support::batch(&consumer, 1, Duration::from_secs(5)).await;
    assert_eq!(held.len(), 1);

    let info = consumer.get_info().await.unwrap();
    let gauge = |name: &str| {
        let points = metrics.points(name);
        assert!(points
            .iter()
            .all(
                |p| p.attr(semconv::MESSAGING_NATS_STREAM).as_deref() == Some("HEALTH")
                    && p.attr(semconv::MESSAGING_CONSUMER_GROUP_NAME).as_deref() == Some("watcher")
            ));
        total(&points)
    };
    assert_eq!(
        gauge(names::CONSUMER_ACK_PENDING),
        info.num_ack_pending as f64
    );
    assert!(
        gauge(names::CONSUMER_ACK_PENDING) >= 1.0,
        "one message is held unacked"
    );
    assert_eq!(
        gauge(names::CONSUMER_REDELIVERED),
        info.num_redelivered as f64
    );
    assert_eq!(gauge(names::CONSUMER_PENDING), info.num_pending as f64);
    assert!(!metrics.points(names::CONSUMER_LAG).is_empty());
}

#[tokio::test]
async fn kv_and_object_store_operations_record_durations_per_bucket() {
    let server = NatsServer::start();
    let (_telemetry, metrics, client) = metered(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let kv = js.key_value(
        js.inner()
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: "PREFS".to_owned(),
                ..Default::default()
            })
            .await
            .unwrap(),
    );
    kv.put("user.1", "dark".into()).await.unwrap();
    kv.get("user.1").await.unwrap();
    assert!(kv.update("user.1", "light".into(), 99).await.is_err());
    let objects = js
        .create_object_store(async_nats::jetstream::object_store::Config {
            bucket: "FILES".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    objects.put("a.txt", &mut &b"hello"[..]).await.unwrap();

    let durations = metrics.points(names::OPERATION_DURATION);
    let find = |op: &str, bucket: &str| {
        durations
            .iter()
            .filter(|p| {
                p.attr(semconv::MESSAGING_OPERATION_NAME).as_deref() == Some(op)
                    && p.attr(semconv::MESSAGING_DESTINATION_TEMPLATE).as_deref() == Some(bucket)
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(total(&find("put", "PREFS")), 1.0);
    assert_eq!(total(&find("get", "PREFS")), 1.0);
    let update = find("update", "PREFS");
    assert_eq!(update.len(), 1);
    assert_eq!(
        update[0].attr(semconv::ERROR_TYPE).as_deref(),
        Some("wrong_last_revision")
    );
    assert_eq!(total(&find("put", "FILES")), 1.0);
    assert!(durations.iter().all(|p| !p
        .attributes
        .iter()
        .any(|kv| kv.value.as_str().contains("user.1"))));
}
