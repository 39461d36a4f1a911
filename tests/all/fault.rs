//! Fault test: kill -9 the server mid-stream and restart it on the same store.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use nats_otel::jetstream::{Backoff, PublishRetry, Worker};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::support::{NatsServer, Telemetry};

const N: usize = 10_000;
const PUBLISHERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_a_server_kill_and_are_stored_once() {
    let mut server = NatsServer::start();
    let telemetry = Telemetry::new();
    let options = nats_otel::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None);
    let client = telemetry
        .builder()
        .build()
        .connect(server.url(), options)
        .await
        .unwrap();
    let mut inner = async_nats::jetstream::new(client.inner().clone());
    inner.set_timeout(Duration::from_secs(1));
    let js = nats_otel::jetstream::wrap(&client, inner);
    let stream = js
        .inner()
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "FAULT".to_owned(),
            subjects: vec!["fault.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .get_or_create_consumer(
            "fault-worker",
            pull::Config {
                durable_name: Some("fault-worker".to_owned()),
                ack_wait: Duration::from_secs(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let consumer = js.pull_consumer(consumer);

    // Worker: report every processed id.
    let (processed_tx, mut processed) = mpsc::unbounded_channel::<String>();
    let (stop, stopped) = oneshot::channel::<()>();
    let worker = Worker::new(&js, consumer)
        .concurrency(64)
        .max_deliver(1000)
        .pull_expires(Duration::from_millis(500));
    let worker = tokio::spawn(worker.run(
        move |message| {
            let processed_tx = processed_tx.clone();
            async move {
                let id = String::from_utf8_lossy(&message.payload).into_owned();
                let _ = processed_tx.send(id);
                Ok(())
            }
        },
        async move {
            let _ = stopped.await;
        },
    ));

    // Publishers: every message has an id; retries reuse it.
    let acked = Arc::new(AtomicUsize::new(0));
    let halfway = Arc::new(Notify::new());
    let retry = PublishRetry::new(
        100,
        Backoff::Exponential {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            multiplier: 2.0,
            jitter: 0.2,
        },
    );
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let js = js.clone();
        let acked = acked.clone();
        let halfway = halfway.clone();
        let retry = retry.clone();
        publishers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in (p..N).step_by(PUBLISHERS) {
                let id = format!("m-{i}");
                js.publish_with_retry("fault.msg", &id, None, id.clone().into(), &retry)
                    .await
                    .unwrap_or_else(|e| panic!("publish {id} never acknowledged: {e}"));
                ids.push(id);
                if acked.fetch_add(1, Ordering::SeqCst) + 1 == N / 3 {
                    halfway.notify_one();
                }
            }
            ids
        }));
    }

    halfway.notified().await;
    server.kill_and_restart();

    let mut acknowledged = HashSet::new();
    for publisher in publishers {
        acknowledged.extend(publisher.await.unwrap());
    }
    assert_eq!(acknowledged.len(), N);

    let mut seen = HashSet::new();
    while !acknowledged.is_subset(&seen) {
        let id = tokio::time::timeout(Duration::from_secs(60), processed.recv())
            .await
            .expect("every acknowledged message gets processed")
            .expect("worker alive");
        seen.insert(id);
    }
    stop.send(()).unwrap();
    let stats = worker.await.unwrap();
    assert!(stats.acked as usize >= N);

    let connects = client.inner().statistics().connects.load(Ordering::Relaxed);
    assert!(
        connects >= 2,
        "the client reconnected after the kill ({connects})"
    );
    let failed_attempts = telemetry
        .spans()
        .iter()
        .filter(|s| {
            s.name == "publish fault.msg" && s.status != opentelemetry::trace::Status::Unset
        })
        .count();
    eprintln!("fault test: {failed_attempts} publish attempts failed and were retried");

    let mut stream = js.inner().get_stream("FAULT").await.unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    assert_eq!(stored as usize, N, "each message stored exactly once");
}
