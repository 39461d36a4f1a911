//! Other transports and topologies: a service connected over WebSocket is traced
//! like one over TCP (and a Node peer over WebSocket continues its traces), and a
//! request made on a leaf node and answered on its hub stays in one trace.

use std::time::Duration;

use nats_otel_testkit::free_port;
use opentelemetry::trace::SpanKind;

use crate::peers::harness::{in_trace, parent_id, span_id, trace_id, Lang, Peer};
use crate::support::{attr, next, NatsServer, Telemetry};

#[tokio::test]
async fn a_service_over_websocket_is_traced_like_tcp_and_a_node_peer_over_websocket_continues_it() {
    const N: usize = 5;
    let ws_port = free_port();
    let _server = NatsServer::start_with_config(&format!(
        "websocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n"
    ));
    let ws_url = format!("ws://127.0.0.1:{ws_port}");
    let telemetry = Telemetry::new();
    let client = telemetry
        .builder()
        .build()
        .connect(ws_url.as_str(), nats_otel::ConnectOptions::new())
        .await
        .expect("connect over WebSocket");
    let consumer = Peer::start_at(
        Lang::Node,
        &ws_url,
        "consume",
        "ws.out",
        N,
        &["--transport", "ws"],
    )
    .await;
    let mut sub = client.subscribe("ws.in").await.unwrap();
    client.ping().await.unwrap();
    let relay = {
        let client = client.clone();
        tokio::spawn(async move {
            for _ in 0..N {
                let client = client.clone();
                next(&mut sub)
                    .await
                    .process(|m| async move { client.publish("ws.out", m.payload).await })
                    .await
                    .unwrap();
            }
        })
    };
    let producer = Peer::start_at(
        Lang::Node,
        &ws_url,
        "publish",
        "ws.in",
        N,
        &["--transport", "ws"],
    )
    .await;
    let produced = producer.finish().await;
    relay.await.unwrap();
    let consumed = consumer.finish().await;
    assert_eq!((produced.len(), consumed.len()), (N, N));

    let spans = telemetry.spans();
    for node_publish in &produced {
        let trace = &node_publish.trace_id;
        let process = in_trace(&spans, trace, "process ws.in");
        assert_eq!(process.span_kind, SpanKind::Consumer);
        assert_eq!(parent_id(process), node_publish.span_id);
        let publish = in_trace(&spans, trace, "publish ws.out");
        assert_eq!(parent_id(publish), span_id(process));
        // The address the client talks to: the WebSocket listener.
        assert_eq!(
            attr(publish, nats_otel::semconv::SERVER_PORT),
            Some(opentelemetry::Value::I64(i64::from(ws_port)))
        );
        let node_process: Vec<_> = consumed.iter().filter(|s| &s.trace_id == trace).collect();
        assert_eq!(node_process.len(), 1);
        assert_eq!(
            node_process[0].parent_span_id.as_deref(),
            Some(span_id(publish).as_str())
        );
    }
}

#[tokio::test]
async fn a_request_on_a_leaf_node_answered_on_the_hub_stays_in_one_trace() {
    let leaf_port = free_port();
    let hub = NatsServer::start_with_config(&format!(
        "leafnodes {{\n  listen: \"127.0.0.1:{leaf_port}\"\n}}\n"
    ));
    let leaf = NatsServer::start_with_config(&format!(
        "leafnodes {{\n  remotes: [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\" }} ]\n}}\n"
    ));
    let telemetry = Telemetry::new();
    let on_hub = telemetry.client(&hub).await;
    let on_leaf = telemetry.client(&leaf).await;
    let mut sub = on_hub.subscribe("leaf.rpc").await.unwrap();
    on_hub.ping().await.unwrap();
    let responder = {
        let on_hub = on_hub.clone();
        tokio::spawn(async move {
            loop {
                let delivery = next(&mut sub).await;
                let Some(reply) = delivery.reply.clone() else {
                    continue;
                };
                let on_hub = on_hub.clone();
                let probe = &delivery.payload[..] == b"probe";
                delivery
                    .process(|_| async move {
                        on_hub.publish(reply, "answer from the hub".into()).await
                    })
                    .await
                    .unwrap();
                if !probe {
                    break;
                }
            }
        })
    };
    // Until the leaf connection carries the hub's interest, requests on the leaf
    // have no responders: probe with an untraced client until one answers.
    let raw = leaf.raw_client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match raw.request("leaf.rpc", "probe".into()).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert_eq!(
                    e.kind(),
                    async_nats::client::RequestErrorKind::NoResponders,
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the leaf node never reached the hub: {e}"),
        }
    }

    let answer = on_leaf.request("leaf.rpc", "order 1".into()).await.unwrap();
    responder.await.unwrap();
    assert_eq!(&answer.payload[..], b"answer from the hub");

    let spans = telemetry.spans();
    let request = telemetry.span("request leaf.rpc");
    let trace = trace_id(&request);
    let process = in_trace(&spans, &trace, "process leaf.rpc");
    assert_eq!(parent_id(process), span_id(&request));
    let reply = spans
        .iter()
        .find(|s| {
            trace_id(s) == trace
                && s.span_kind == SpanKind::Producer
                && s.name.starts_with("publish")
        })
        .expect("the hub's reply publish in the request's trace");
    assert_eq!(parent_id(reply), span_id(process));
}
