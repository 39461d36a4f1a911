//! The node a span went through: `messaging.nats.server.name`/`.id`,
//! `network.peer.*` and `messaging.client.id` from the current connection's INFO,
//! followed across a reconnect to another node of a 3-node cluster.

use std::time::Duration;

use async_nats::Event;
use nats_otel::semconv;
use opentelemetry::Value;
use opentelemetry_sdk::trace::SpanData;

use crate::support::{attr, attr_str, Telemetry};
use nats_otel_testkit::NatsCluster;

/// The node attributes of `span`: name, id, peer address, peer port, client id.
fn node_of(span: &SpanData) -> (String, String, String, i64, String) {
    (
        attr_str(span, semconv::MESSAGING_NATS_SERVER_NAME).unwrap_or_default(),
        attr_str(span, semconv::MESSAGING_NATS_SERVER_ID).unwrap_or_default(),
        attr_str(span, semconv::NETWORK_PEER_ADDRESS).unwrap_or_default(),
        match attr(span, semconv::NETWORK_PEER_PORT) {
            Some(Value::I64(port)) => port,
            _ => -1,
        },
        attr_str(span, semconv::MESSAGING_CLIENT_ID).unwrap_or_default(),
    )
}

/// What the client's current INFO says, in the order of [`node_of`].
fn node_in_info(client: &nats_otel::Client) -> (String, String, String, i64, String) {
    let info = client.server_info();
    (
        info.server_name,
        info.server_id,
        "127.0.0.1".to_owned(),
        i64::from(info.port),
        info.client_id.to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_name_the_serving_node_and_follow_a_reconnect_to_another() {
    let mut cluster = NatsCluster::start(3);
    let telemetry = Telemetry::new();
    let (connected_tx, mut connected) = tokio::sync::mpsc::unbounded_channel();
    let client = telemetry
        .builder()
        .with_server_node_attributes(true)
        .build()
        .connect(
            cluster.urls(),
            nats_otel::ConnectOptions::new()
                .retain_servers_order()
                .reconnect_delay_callback(|_| Duration::from_millis(50))
                .event_callback(move |event| {
                    let connected_tx = connected_tx.clone();
                    async move {
                        if matches!(event, Event::Connected) {
                            let _ = connected_tx.send(());
                        }
                    }
                }),
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), connected.recv()).await;
    assert_eq!(first, Ok(Some(())), "the first connect is reported");

    let mut orders = client.subscribe("orders.>").await.unwrap();
    client.ping().await.unwrap();
    client.publish("orders.created", "a".into()).await.unwrap();
    let message = crate::support::next(&mut orders).await;
    message
        .process(|_| async { Ok::<_, String>(()) })
        .await
        .unwrap();

    let before = node_in_info(&client);
    assert_eq!(before.0, "node-0", "servers are tried in the order given");
    assert_eq!(before.3, i64::from(cluster.nodes[0].port()));
    let spans = telemetry.spans();
    for name in ["publish orders.created", "process orders.>"] {
        let span = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span"));
        assert_eq!(node_of(span), before, "{name} names node-0");
    }

    cluster.kill("node-0");
    let reconnected = tokio::time::timeout(Duration::from_secs(30), connected.recv()).await;
    assert_eq!(reconnected, Ok(Some(())), "the client reconnects");
    // A round trip on the new connection: async-nats has published its INFO.
    client.ping().await.unwrap();
    client.publish("orders.shipped", "b".into()).await.unwrap();
    let message = crate::support::next(&mut orders).await;
    message
        .process(|_| async { Ok::<_, String>(()) })
        .await
        .unwrap();

    let after = node_in_info(&client);
    assert_ne!(after.0, "node-0", "the client is on another node");
    let index = cluster
        .names
        .iter()
        .position(|n| *n == after.0)
        .expect("a node of the cluster");
    assert_eq!(after.3, i64::from(cluster.nodes[index].port()));
    assert_ne!(after.1, before.1, "another server id");
    let spans = telemetry.spans();
    for name in ["publish orders.shipped", "process orders.>"] {
        let span = spans
            .iter()
            .rfind(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span"));
        assert_eq!(node_of(span), after, "{name} names {}", after.0);
    }
}

#[tokio::test]
async fn spans_name_no_node_unless_asked_but_keep_the_client_id() {
    let server = nats_otel_testkit::NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    client.publish("orders.created", "a".into()).await.unwrap();
    let span = telemetry.span("publish orders.created");
    let (name, id, address, port, client_id) = node_of(&span);
    assert_eq!(
        (name.as_str(), id.as_str(), address.as_str(), port),
        ("", "", "", -1)
    );
    assert_eq!(client_id, client.server_info().client_id.to_string());
}
