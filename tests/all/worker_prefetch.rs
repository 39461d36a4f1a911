//! The worker's pull-ahead window: how many messages the server assigns it, and
//! the guarantee that waiting in its buffer never causes a redelivery.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nats_otel::jetstream::Worker;
use tokio::sync::mpsc;

use crate::support::{NatsServer, Telemetry};
use crate::worker::{consumer_state, fixture, one_second_ack_wait, publish, recv, spawn_worker};

/// Runs `N` messages through a worker with `SLOTS` handler slots and `prefetch`
/// (handlers spawned as tasks when `spawn`), holding every handler until the test
/// has read the consumer's state while all slots are busy. Returns (ack pending,
/// pending) at that moment.
async fn assigned_while_slots_are_busy(prefetch: usize, spawn: bool) -> (usize, u64) {
    const SLOTS: usize = 4;
    const N: usize = 20;
    let f = fixture().await;
    for i in 0..N {
        publish(&f.js, &format!("tasks.{i}"), "gated").await;
    }
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let open = Arc::new(AtomicBool::new(false));
    let opened = open.clone();
    let worker = Worker::new(&f.js, f.consumer.clone())
        .concurrency(SLOTS)
        .prefetch(prefetch)
        .spawn_handlers(spawn);
    let (stop, task) = spawn_worker(worker, move |_| {
        let started_tx = started_tx.clone();
        let gate = gate.clone();
        let opened = opened.clone();
        async move {
            let released = gate.notified();
            let _ = started_tx.send(());
            if !opened.load(Ordering::SeqCst) {
                released.await;
            }
            Ok(())
        }
    });
    for _ in 0..SLOTS {
        recv(&mut started).await;
    }
    let state = consumer_state(&f).await;
    let busy = (state.num_ack_pending, state.num_pending);
    open.store(true, Ordering::SeqCst);
    release.notify_waiters();
    for _ in SLOTS..N {
        recv(&mut started).await;
    }
    stop.send(()).unwrap();
    let stats = task.await.unwrap();
    assert_eq!(stats.acked, N as u64);
    assert_eq!(stats.handled, N as u64);
    let state = consumer_state(&f).await;
    assert_eq!(state.num_ack_pending, 0);
    assert_eq!(state.num_redelivered, 0);
    busy
}

#[tokio::test]
async fn without_prefetch_the_worker_is_assigned_only_its_free_handler_slots() {
    // Every slot is busy: the server has handed out exactly those messages and
    // keeps the rest.
    assert_eq!(assigned_while_slots_are_busy(0, false).await, (4, 16));
}

#[tokio::test]
async fn with_prefetch_the_worker_is_assigned_its_slots_plus_the_window() {
    // 4 running, 8 waiting in the buffer, 8 left on the server.
    assert_eq!(assigned_while_slots_are_busy(8, false).await, (12, 8));
}

#[tokio::test]
async fn spawned_handlers_get_the_same_slots_and_window() {
    assert_eq!(assigned_while_slots_are_busy(8, true).await, (12, 8));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_handlers_that_block_their_thread_run_in_parallel() {
    let f = fixture().await;
    publish(&f.js, "tasks.a", "cpu").await;
    publish(&f.js, "tasks.b", "cpu").await;
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let started = Arc::new((Mutex::new(0_usize), std::sync::Condvar::new()));
    let worker = Worker::new(&f.js, f.consumer.clone())
        .concurrency(2)
        .spawn_handlers(true);
    let (stop, task) = spawn_worker(worker, move |_| {
        let done_tx = done_tx.clone();
        let started = started.clone();
        async move {
            // Blocks this thread until the other handler is running too (10 s at
            // most): only handlers on two threads at once both see it.
            let (count, changed) = &*started;
            let mut count = count.lock().unwrap();
            *count += 1;
            changed.notify_all();
            let (count, _) = changed
                .wait_timeout_while(count, Duration::from_secs(10), |n| *n < 2)
                .unwrap();
            let _ = done_tx.send(*count == 2);
            Ok(())
        }
    });
    assert!(recv(&mut done).await, "the other handler ran meanwhile");
    assert!(recv(&mut done).await, "the other handler ran meanwhile");
    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap().acked, 2);
}

#[tokio::test]
async fn buffered_messages_get_progress_so_slow_handlers_cause_no_redelivery() {
    const N: u64 = 24;
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    // Progress every third of ack_wait: about 333 ms.
    let (stream, consumer) = one_second_ack_wait(&js, "DEEP", "deep").await;
    for i in 0..N {
        publish(&js, &format!("deep.{i}"), "slow").await;
    }

    // Two slots, a window deeper than the whole stream: all 24 messages are
    // assigned at once, and the last ones wait about 2.4 s (twice ack_wait) in
    // the buffer before a handler takes them.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let worker = Worker::new(&js, consumer).concurrency(2).prefetch(64);
    let record = seen.clone();
    let (stop, task) = spawn_worker(worker, move |message| {
        let record = record.clone();
        let done_tx = done_tx.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let info = message.info().map(|i| (i.stream_sequence, i.delivered));
            record.lock().unwrap().push(info.unwrap_or((0, 0)));
            let _ = done_tx.send(());
            Ok(())
        }
    });
    for _ in 0..N {
        recv(&mut done).await;
    }
    stop.send(()).unwrap();
    let stats = task.await.unwrap();

    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    let expected: Vec<(u64, i64)> = (1..=N).map(|sequence| (sequence, 1)).collect();
    assert_eq!(seen, expected, "every message once, on its first delivery");
    assert_eq!(stats.handled, N);
    assert_eq!(stats.acked, N);
    let mut raw: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("deep").await.unwrap();
    let state = raw.info().await.unwrap();
    assert_eq!(state.num_redelivered, 0);
    assert_eq!(state.num_ack_pending, 0);
    assert_eq!(state.num_pending, 0);
    // One delivery per message: no consumer sequence was spent on a redelivery.
    assert_eq!(state.delivered.consumer_sequence, N);
    let progress = telemetry
        .spans()
        .iter()
        .filter(|s| s.name == "progress DEEP")
        .count();
    assert!(
        progress >= 10,
        "the buffered messages got progress while they waited ({progress})"
    );
}
