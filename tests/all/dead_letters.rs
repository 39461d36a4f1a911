//! Working with dead letters the real `Worker` produced: list with filters, show,
//! replay (traced, crash-safe), purge.

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use nats_otel::jetstream::dead_letter::{
    self, headers as dlq, DeadLetter, DeadLetterErrorKind, DeadLetterQueue, Filter, OnFailure,
    ReplayOptions, REPLAY_ORIGINAL_MSG_ID,
};
use nats_otel::jetstream::{HandlerError, Worker};
use opentelemetry_sdk::trace::SpanData;

use crate::support::{next, Metrics};
use crate::worker::{fixture_with, spawn_worker, Fixture};

/// Publishes `messages` (subject, id) to `TASKS`, lets a `Worker` whose handler
/// fails fatally ("bad image" for `tasks.resize`, "SMTP down" otherwise)
/// dead-letter them all into `DLQ`, and opens it.
async fn dead_lettered(f: &Fixture, messages: &[(&str, &str)]) -> DeadLetterQueue {
    dead_letter::ensure_stream(&f.js, "DLQ", &DeadLetter::default())
        .await
        .unwrap();
    for (subject, id) in messages {
        f.js.publish_with_id(subject.to_string(), id, "payload".into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let worker = Worker::new(&f.js, f.consumer.clone());
    let (stop, task) = spawn_worker(worker, |task| {
        let reason = match task.subject.as_str() {
            "tasks.resize" => "bad image",
            _ => "SMTP down",
        };
        async move { Err(HandlerError::fatal(reason)) }
    });
    // Every letter stored, seen through a consumer of the dead-letter stream.
    let stream = f.js.inner().get_stream("DLQ").await.unwrap();
    let watcher = stream
        .create_consumer(pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut stored = watcher.messages().await.unwrap();
    for _ in messages {
        next(&mut stored).await.unwrap();
    }
    stop.send(()).unwrap();
    task.await.unwrap();
    DeadLetterQueue::open(&f.js, "DLQ").await.unwrap()
}

async fn fixture() -> Fixture {
    fixture_with(|builder| builder).await
}

fn sequences(letters: &[dead_letter::Letter]) -> Vec<u64> {
    letters.iter().map(|l| l.sequence).collect()
}

#[tokio::test]
async fn letters_are_listed_filtered_and_shown_with_their_provenance() {
    let f = fixture().await;
    let queue = dead_lettered(
        &f,
        &[
            ("tasks.resize", "task-0"),
            ("tasks.email", "task-1"),
            ("tasks.resize", "task-2"),
        ],
    )
    .await;

    let all = queue.list(&Filter::new(), 100).await.unwrap();
    assert_eq!(sequences(&all), [1, 2, 3]);
    let first = &all[0];
    let info = first.info.as_ref().expect("a dead letter");
    assert_eq!(first.subject, "dlq.tasks.resize");
    assert_eq!(info.reason, "fatal: bad image");
    assert_eq!(info.subject.as_deref(), Some("tasks.resize"));
    assert_eq!(info.stream.as_deref(), Some("TASKS"));
    assert_eq!(info.sequence, Some(1));
    assert_eq!(info.consumer.as_deref(), Some("workers"));
    assert_eq!(info.delivery_count, Some(1));
    assert_eq!(info.original_message_id.as_deref(), Some("task-0"));
    assert_eq!(first.problems(), Vec::<String>::new());
    let original_trace = f
        .telemetry
        .spans()
        .iter()
        .find(|s| s.name == "publish tasks.resize")
        .map(|s| s.span_context.trace_id().to_string());
    assert_eq!(
        first.trace_id(),
        original_trace,
        "the failed message's trace"
    );
    assert!(first.age() < Duration::from_secs(60));

    let listed = |filter: Filter| {
        let queue = &queue;
        async move { sequences(&queue.list(&filter, 100).await.unwrap()) }
    };
    assert_eq!(
        listed(Filter::new().source_subject("tasks.resize").unwrap()).await,
        [1, 3]
    );
    assert_eq!(
        listed(Filter::new().source_subject("tasks.*").unwrap()).await,
        [1, 2, 3]
    );
    assert_eq!(listed(Filter::new().reason_contains("smtp")).await, [2]);
    assert_eq!(listed(Filter::new().consumer("workers")).await, [1, 2, 3]);
    assert_eq!(
        listed(Filter::new().consumer("others")).await,
        Vec::<u64>::new()
    );
    assert_eq!(
        listed(Filter::new().source_stream("TASKS")).await,
        [1, 2, 3]
    );
    assert_eq!(
        listed(Filter::new().newer_than(Duration::from_secs(3600))).await,
        [1, 2, 3]
    );
    assert_eq!(
        listed(Filter::new().older_than(Duration::from_secs(3600))).await,
        Vec::<u64>::new()
    );
    assert_eq!(listed(Filter::new().from_sequence(2)).await, [2, 3]);
    assert_eq!(
        sequences(&queue.list(&Filter::new(), 1).await.unwrap()),
        [1]
    );

    let shown = queue.get(2).await.unwrap();
    assert_eq!(
        shown.info.as_ref().map(|i| i.reason.as_str()),
        Some("fatal: SMTP down")
    );
    assert_eq!(&shown.payload[..], b"payload");
    assert_eq!(queue.len().await.unwrap(), 3);

    let missing = queue.get(99).await.unwrap_err();
    assert_eq!(missing.kind(), DeadLetterErrorKind::SequenceNotFound);
    assert_eq!(
        missing.to_string(),
        "no dead letter at that sequence: stream `DLQ` holds no message at sequence 99"
    );
    let nope = DeadLetterQueue::open(&f.js, "NOPE").await.unwrap_err();
    assert_eq!(nope.kind(), DeadLetterErrorKind::StreamNotFound);
    let tasks = DeadLetterQueue::open(&f.js, "TASKS").await.unwrap_err();
    assert_eq!(tasks.kind(), DeadLetterErrorKind::NotDeadLetters);
}

/// The span `name` whose trace is `trace`.
fn span_in<'a>(
    spans: &'a [SpanData],
    name: &str,
    trace: opentelemetry::trace::TraceId,
) -> Vec<&'a SpanData> {
    spans
        .iter()
        .filter(|s| s.name == name && s.span_context.trace_id() == trace)
        .collect()
}

#[tokio::test]
async fn replayed_letters_are_processed_again_in_the_failed_trace_and_leave_the_queue() {
    let metrics = Metrics::new();
    let f = fixture_with(|builder| builder.with_meter_provider(&metrics.provider)).await;
    let queue = dead_lettered(&f, &[("tasks.resize", "task-0"), ("tasks.email", "task-1")]).await;
    let letters = queue.list(&Filter::new(), 100).await.unwrap();

    // The bug is fixed: a worker that succeeds, reporting what it saw.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let worker = Worker::new(&f.js, f.consumer.clone());
    let (stop, task) = spawn_worker(worker, move |task| {
        let headers = task.headers.clone().unwrap_or_default();
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        let _ = seen_tx.send((
            task.subject.to_string(),
            get("Nats-Msg-Id"),
            get(REPLAY_ORIGINAL_MSG_ID),
            get(dlq::REASON),
        ));
        async { Ok(()) }
    });

    let report = queue.replay(&letters, &ReplayOptions::new()).await;
    assert_eq!(report.failed, Vec::<(u64, String)>::new());
    assert_eq!(report.replayed.len(), 2);
    assert_eq!(report.replayed[0].subject, "tasks.resize");
    assert_eq!(report.replayed[0].stored, Some(("TASKS".to_owned(), 3)));
    assert!(!report.replayed[0].duplicate);
    assert_eq!(queue.len().await.unwrap(), 0, "deleted after their PubAck");

    let mut processed = vec![
        tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .unwrap()
            .unwrap(),
        tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .unwrap()
            .unwrap(),
    ];
    processed.sort();
    assert_eq!(
        processed,
        [
            (
                "tasks.email".to_owned(),
                Some("replay:DLQ:2".to_owned()),
                Some("task-1".to_owned()),
                None
            ),
            (
                "tasks.resize".to_owned(),
                Some("replay:DLQ:1".to_owned()),
                Some("task-0".to_owned()),
                None
            ),
        ]
    );
    stop.send(()).unwrap();
    task.await.unwrap();

    // One trace: original publish → failed process → dead letter → replay →
    // processed again.
    let spans = f.telemetry.spans();
    let original = spans
        .iter()
        .find(|s| s.name == "publish tasks.resize")
        .unwrap();
    let trace = original.span_context.trace_id();
    let dead_letter = span_in(&spans, "publish dlq.tasks.resize", trace);
    assert_eq!(dead_letter.len(), 1);
    let publishes = span_in(&spans, "publish tasks.resize", trace);
    assert_eq!(publishes.len(), 2, "the original and the replay");
    let replay = publishes
        .iter()
        .find(|s| s.span_context.span_id() != original.span_context.span_id())
        .unwrap();
    assert_eq!(replay.parent_span_id, dead_letter[0].span_context.span_id());
    assert_eq!(
        replay
            .links
            .links
            .iter()
            .map(|l| l.span_context.span_id())
            .collect::<Vec<_>>(),
        [original.span_context.span_id()],
        "linked to the original producer"
    );
    assert_eq!(
        span_in(&spans, "process TASKS", trace).len(),
        2,
        "failed, then processed again"
    );
    let replayed = metrics
        .points(nats_otel::metrics::names::DLQ_REPLAYED)
        .into_iter()
        .map(|p| {
            (
                p.attr("messaging.nats.dlq.stream"),
                p.attr("error.type"),
                p.value,
            )
        })
        .collect::<Vec<_>>();
    assert_eq!(replayed, [(Some("DLQ".to_owned()), None, 2.0)]);
}

async fn stored_in_tasks(f: &Fixture) -> u64 {
    f.js.inner()
        .get_stream("TASKS")
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
        .messages
}

#[tokio::test]
async fn a_replay_interrupted_after_the_puback_stores_one_copy_when_rerun() {
    let f = fixture().await;
    let queue = dead_lettered(&f, &[("tasks.resize", "task-0"), ("tasks.email", "task-1")]).await;
    assert_eq!(
        stored_in_tasks(&f).await,
        2,
        "a limits stream keeps the originals"
    );
    let letters = queue.list(&Filter::new(), 100).await.unwrap();

    // The process dies after the first PubAck, before the delete.
    let halted = queue
        .replay(&letters, &ReplayOptions::new().halt_after_ack(1))
        .await;
    assert_eq!((halted.replayed.len(), halted.not_tried), (0, 1));
    assert_eq!(stored_in_tasks(&f).await, 3);
    assert_eq!(queue.len().await.unwrap(), 2, "nothing deleted");

    // Run again: the first replay is recognised, the second is new.
    let letters = queue.list(&Filter::new(), 100).await.unwrap();
    let rerun = queue.replay(&letters, &ReplayOptions::new()).await;
    assert_eq!(
        rerun
            .replayed
            .iter()
            .map(|r| (r.sequence, r.duplicate))
            .collect::<Vec<_>>(),
        [(1, true), (2, false)]
    );
    assert_eq!(stored_in_tasks(&f).await, 4, "one copy per letter");
    assert_eq!(queue.len().await.unwrap(), 0);
}

#[tokio::test]
async fn purge_takes_the_selection_and_a_dry_run_changes_nothing() {
    let f = fixture().await;
    let queue = dead_lettered(
        &f,
        &[
            ("tasks.resize", "task-0"),
            ("tasks.email", "task-1"),
            ("tasks.resize", "task-2"),
        ],
    )
    .await;
    let smtp = queue
        .list(&Filter::new().reason_contains("smtp"), 100)
        .await
        .unwrap();
    let dry = queue.purge(&smtp, true).await;
    assert_eq!(dry.purged, [2]);
    assert_eq!(queue.len().await.unwrap(), 3, "a dry run deletes nothing");
    let dry_replay = queue
        .replay(&smtp, &ReplayOptions::new().dry_run(true))
        .await;
    assert_eq!(dry_replay.replayed.len(), 1);
    assert_eq!(stored_in_tasks(&f).await, 3, "a dry run publishes nothing");

    let done = queue.purge(&smtp, false).await;
    assert_eq!((done.purged, done.failed), (vec![2], vec![]));
    let left = queue.list(&Filter::new(), 100).await.unwrap();
    assert_eq!(sequences(&left), [1, 3]);
}

#[tokio::test]
async fn malformed_letters_are_reported_and_skipped_without_a_crash() {
    let f = fixture().await;
    let queue = dead_lettered(&f, &[("tasks.resize", "task-0")]).await;
    // A hand-made letter: a reason, a sequence that is no number, no source subject.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(dlq::REASON, "manual");
    headers.insert(dlq::SOURCE_SEQUENCE, "seven");
    f.js.inner()
        .publish_with_headers("dlq.manual", headers, "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let letters = queue.list(&Filter::new(), 100).await.unwrap();
    assert_eq!(sequences(&letters), [1, 2]);
    assert_eq!(
        letters[1].problems(),
        [
            "Dlq-Source-Sequence is not a number: `seven`",
            "no Dlq-Source-Subject: the replay target is unknown",
        ]
    );
    // The bad one first: with Continue, the good one still goes.
    let bad_first = [letters[1].clone(), letters[0].clone()];
    let report = queue
        .replay(
            &bad_first,
            &ReplayOptions::new().on_failure(OnFailure::Continue),
        )
        .await;
    assert_eq!(
        report.failed,
        [(2, "no Dlq-Source-Subject: give a target subject".to_owned())]
    );
    assert_eq!(report.replayed.len(), 1);
    // With Stop (the default), nothing after the failure is tried.
    let stopped = queue.replay(&bad_first[..1], &ReplayOptions::new()).await;
    assert_eq!((stopped.failed.len(), stopped.not_tried), (1, 0));
    assert_eq!(
        sequences(&queue.list(&Filter::new(), 100).await.unwrap()),
        [2]
    );
}
