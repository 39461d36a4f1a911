//! A 3-node JetStream cluster: the worker keeps every acknowledged message while
//! the stream leader is killed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::pull;
use nats_otel::jetstream::{Backoff, PublishRetry, Worker};

use crate::support::Telemetry;
use nats_otel_testkit::NatsCluster;

const MESSAGES: usize = 5000;

/// Retries `op` until it succeeds or 30 s pass (a new cluster elects its
/// JetStream meta leader first).
async fn eventually<T, E: std::fmt::Display, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match op().await {
            Ok(value) => return value,
            // Nothing announces "JetStream ready" to a client: retry with a pause.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("{what}: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_loses_no_acknowledged_message_when_the_stream_leader_is_killed() {
    let mut cluster = NatsCluster::start(3);
    let telemetry = Telemetry::new();
    let client = telemetry
        .builder()
        .build()
        .connect(
            cluster.urls(),
            nats_otel::ConnectOptions::new().retry_on_initial_connect(),
        )
        .await
        .unwrap();
    let js = nats_otel::jetstream::new(&client);
    let stream = eventually("create an R3 stream", || {
        js.inner()
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "TASKS".to_owned(),
                subjects: vec!["tasks.>".to_owned()],
                num_replicas: 3,
                ..Default::default()
            })
    })
    .await;
    let consumer = eventually("create the consumer", || {
        stream.get_or_create_consumer(
            "workers",
            pull::Config {
                durable_name: Some("workers".to_owned()),
                ack_wait: Duration::from_secs(5),
                ..Default::default()
            },
        )
    })
    .await;
    let consumer = js.pull_consumer(consumer);

    // Every handled message id, as the handler sees it.
    let (processed_tx, mut processed) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = {
        let worker = Worker::new(&js, consumer)
            .pull_expires(Duration::from_millis(500))
            .backoff(Backoff::List(vec![Duration::from_millis(100)]));
        tokio::spawn(worker.run(
            move |message| {
                let id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    .map(|v| v.as_str().to_owned());
                if let Some(id) = id {
                    let _ = processed_tx.send(id);
                }
                async { Ok(()) }
            },
            async move {
                let _ = stopped.await;
            },
        ))
    };

    let retry = PublishRetry::new(
        20,
        Backoff::Exponential {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.1,
        },
    );
    let mut acknowledged = Vec::with_capacity(MESSAGES);
    let started = Instant::now();
    let mut killed = None;
    for i in 0..MESSAGES {
        if i == MESSAGES / 2 {
            let info = eventually("stream info", || async {
                js.inner()
                    .get_stream("TASKS")
                    .await?
                    .info()
                    .await
                    .cloned()
                    .map_err(async_nats::Error::from)
            })
            .await;
            let leader = info
                .cluster
                .and_then(|c| c.leader)
                .expect("a stream leader");
            cluster.kill(&leader);
            killed = Some(leader);
        }
        let id = format!("task-{i}");
        if js
            .publish_with_retry(format!("tasks.{i}"), &id, None, "work".into(), &retry)
            .await
            .is_ok()
        {
            acknowledged.push(id);
        }
    }
    let killed = killed.expect("a leader was killed");
    eprintln!("cluster: published in {:?}", started.elapsed());
    assert!(
        acknowledged.len() >= MESSAGES * 9 / 10,
        "most publishes were acknowledged ({})",
        acknowledged.len()
    );

    // Every acknowledged message is processed; redeliveries are allowed.
    let mut missing: HashSet<&str> = acknowledged.iter().map(String::as_str).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !missing.is_empty() {
        match tokio::time::timeout_at(deadline, processed.recv()).await {
            Ok(Some(id)) => {
                missing.remove(id.as_str());
            }
            _ => panic!("{} acknowledged messages never processed", missing.len()),
        }
    }
    let _ = stop.send(());
    let stats = worker.await.unwrap();
    eprintln!(
        "cluster: killed stream leader {killed} after {} publishes; {} of {MESSAGES} acknowledged, all processed ({} handler runs, {} acks)",
        MESSAGES / 2,
        acknowledged.len(),
        stats.handled,
        stats.acked
    );
    assert!(stats.acked >= acknowledged.len() as u64);

    // The client is on a surviving node.
    assert_eq!(
        client.connection_state(),
        async_nats::connection::State::Connected
    );
    assert_ne!(client.server_info().server_name, killed);
    // Traces continue across the failover: a message published after the kill is
    // processed in its producer's trace.
    let spans = telemetry.spans();
    let last = format!("task-{}", MESSAGES - 1);
    let published = spans
        .iter()
        .filter(|s| s.name == "publish tasks.*")
        .find(|s| {
            crate::support::attr_str(s, nats_otel::semconv::MESSAGING_MESSAGE_ID).as_deref()
                == Some(last.as_str())
        })
        .expect("the last publish span");
    let trace = published.span_context.trace_id();
    assert!(
        spans
            .iter()
            .any(|s| s.name == "process TASKS" && s.span_context.trace_id() == trace),
        "the last message's process span is in its producer's trace"
    );
}
