//! The consumer worker.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::Message;
use futures_util::{FutureExt as _, StreamExt as _};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::KeyValue;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::backoff::Backoff;
use super::dead_letter::DeadLetter;
use super::dedup::IdempotencyStore;
use super::{Context, Delivery, PullConsumer};

/// Boxed error a handler returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a handler failed, which decides what happens to the message.
#[derive(Debug)]
pub enum HandlerError {
    /// Worth retrying (a timeout, an unavailable dependency).
    Transient(BoxError),
    /// Retrying cannot help (a malformed payload): dead-letter at once.
    Fatal(BoxError),
}

impl HandlerError {
    /// A retryable failure.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self::Transient(error.into())
    }

    /// A failure retries cannot fix.
    pub fn fatal(error: impl Into<BoxError>) -> Self {
        Self::Fatal(error.into())
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transient(e) => write!(f, "transient: {e}"),
            Self::Fatal(e) => write!(f, "fatal: {e}"),
        }
    }
}

impl std::error::Error for HandlerError {}

/// Counts of what a worker did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerStats {
    /// Handler runs (a redelivered message counts again).
    pub handled: u64,
    /// Messages acknowledged after success.
    pub acked: u64,
    /// Failures sent back with `nak` for a retry.
    pub retried: u64,
    /// Messages copied to the dead-letter subject and terminated.
    pub dead_lettered: u64,
    /// Dead-letter publishes that failed (the message was left for redelivery).
    pub dead_letter_failures: u64,
    /// Handler panics caught.
    pub panics: u64,
    /// Messages skipped (and acked) because their id was already processed.
    pub duplicates_skipped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    handled: AtomicU64,
    acked: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    dead_letter_failures: AtomicU64,
    panics: AtomicU64,
    duplicates_skipped: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> WorkerStats {
        WorkerStats {
            handled: self.handled.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            dead_letter_failures: self.dead_letter_failures.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            duplicates_skipped: self.duplicates_skipped.load(Ordering::Relaxed),
        }
    }
}

/// A consumer worker: pulls with bounded concurrency, runs the handler inside each
/// message's `process` span and turns its result into settlement.
///
/// | handler result | settlement |
/// |---|---|
/// | `Ok(())` | `ack` |
/// | [`HandlerError::Transient`] or a panic, deliveries left | `nak` after [`Backoff`] delay |
/// | transient with no deliveries left, or [`HandlerError::Fatal`] | dead-letter, then `term` |
/// | dead-letter publish failed | `nak` (redelivered; nothing is lost) |
///
/// Long handlers send `progress` every `progress_interval` so `ack_wait` does not
/// expire mid-work. Each retry and dead letter is a span event (`retry`,
/// `dead_letter`, `dead_letter_failed`, `duplicate_skipped`) on the process span.
/// Shutdown stops pulling, lets in-flight handlers finish and settle, and returns.
///
/// ```no_run
/// use nats_otel::jetstream::{self, dead_letter, HandlerError, Worker};
///
/// # async fn run(client: nats_otel::Client) -> Result<(), async_nats::Error> {
/// let js = jetstream::new(&client);
/// dead_letter::ensure_stream(&js, "DLQ", &dead_letter::DeadLetter::default()).await?;
/// let consumer = js
///     .inner()
///     .get_stream("TASKS")
///     .await?
///     .get_consumer("workers")
///     .await?;
/// // Send on `stop` (or drop it) to shut down gracefully.
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// # drop(stop);
/// let stats = Worker::new(&js, js.pull_consumer(consumer))
///     .concurrency(8)
///     .run(
///         |task| async move {
///             match std::str::from_utf8(&task.payload) {
///                 Ok(_) => Ok(()),
///                 Err(e) => Err(HandlerError::fatal(e)),
///             }
///         },
///         async {
///             let _ = stopped.await;
///         },
///     )
///     .await;
/// println!("acked {}, dead-lettered {}", stats.acked, stats.dead_lettered);
/// # Ok(()) }
/// ```
#[must_use = "a worker does nothing until `run` is awaited"]
pub struct Worker {
    js: Context,
    consumer: PullConsumer,
    concurrency: usize,
    backoff: Backoff,
    max_deliver: i64,
    dead_letter: Option<DeadLetter>,
    progress_interval: Option<Duration>,
    pull_expires: Duration,
    dedup: Option<Arc<dyn IdempotencyStore>>,
    health_interval: Option<Duration>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("consumer", &self.consumer)
            .field("concurrency", &self.concurrency)
            .field("backoff", &self.backoff)
            .field("max_deliver", &self.max_deliver)
            .field("dead_letter", &self.dead_letter)
            .field("progress_interval", &self.progress_interval)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker with defaults taken from the consumer's configuration:
    /// concurrency 16; the consumer's `backoff` list if it has one, else
    /// [`Backoff::default`]; the consumer's `max_deliver` if set, else 5 attempts;
    /// dead letters to `dlq.{subject}`; `progress` every third of `ack_wait`.
    ///
    /// Give the consumer a `max_deliver` above the worker's (or none), so a message
    /// whose dead-letter publish failed can still be redelivered.
    pub fn new(js: &Context, consumer: PullConsumer) -> Self {
        let config = &consumer.inner().cached_info().config;
        let backoff = if config.backoff.is_empty() {
            Backoff::default()
        } else {
            Backoff::List(config.backoff.clone())
        };
        let max_deliver = if config.max_deliver > 0 {
            config.max_deliver
        } else {
            5
        };
        let progress_interval = (config.ack_wait > Duration::ZERO).then(|| config.ack_wait / 3);
        Self {
            js: js.clone(),
            consumer,
            concurrency: 16,
            backoff,
            max_deliver,
            dead_letter: Some(DeadLetter::default()),
            progress_interval,
            pull_expires: Duration::from_secs(1),
            dedup: None,
            health_interval: Some(Duration::from_secs(10)),
        }
    }

    /// How often the consumer's health gauges are refreshed from the server
    /// (default 10 s; `None` disables it).
    pub fn health_interval(mut self, interval: Option<Duration>) -> Self {
        self.health_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// At most `n` handlers run at once (and at most `n` messages are pulled
    /// ahead). At least 1.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Redelivery delays after transient failures.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Deliveries before a transiently failing message is dead-lettered (≥ 1).
    pub fn max_deliver(mut self, n: i64) -> Self {
        self.max_deliver = n.max(1);
        self
    }

    /// Where dead letters go; `None` terminates them without a copy.
    pub fn dead_letter(mut self, dead_letter: Option<DeadLetter>) -> Self {
        self.dead_letter = dead_letter;
        self
    }

    /// How often a running handler's message gets `progress`; `None` disables it.
    pub fn progress_interval(mut self, interval: Option<Duration>) -> Self {
        self.progress_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// How long one pull request stays open (default 1 s); also the longest a
    /// shutdown waits for messages already assigned to this worker.
    pub fn pull_expires(mut self, expires: Duration) -> Self {
        self.pull_expires = expires.max(Duration::from_millis(100));
        self
    }

    /// Skips messages whose id (`Nats-Msg-Id`, else `stream:sequence`) this store
    /// has seen processed.
    pub fn idempotency(mut self, store: impl IdempotencyStore) -> Self {
        self.dedup = Some(Arc::new(store));
        self
    }

    /// Runs until `shutdown` completes, then finishes the in-flight messages and
    /// returns what it did. Pull errors (a reconnect, a leader election) are retried
    /// after a short pause; they do not end the worker.
    pub async fn run<H, Fut>(self, handler: H, shutdown: impl Future<Output = ()>) -> WorkerStats
    where
        H: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let counters = Arc::new(Counters::default());
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let shared = Arc::new(Shared {
            js: self.js.clone(),
            backoff: self.backoff.clone(),
            max_deliver: self.max_deliver,
            dead_letter: self.dead_letter.clone(),
            progress_interval: self.progress_interval,
            dedup: self.dedup.clone(),
            counters: counters.clone(),
        });
        let health = match self.health_interval {
            Some(every) if self.js.instrumentation().metrics_enabled() => {
                let consumer = self.consumer.clone();
                Some(tokio::spawn(async move {
                    let mut ticks = tokio::time::interval(every);
                    loop {
                        ticks.tick().await;
                        // A failed read (reconnecting) just skips one sample.
                        let _ = consumer.record_health().await;
                    }
                }))
            }
            _ => None,
        };
        let mut tasks = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        let mut stopping = false;
        let mut pull_failures = 0u64;
        let consumer = self.consumer.shared().clone();
        while !stopping {
            let first = tokio::select! {
                biased;
                () = &mut shutdown => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let mut held = vec![first];
            while let Ok(permit) = permits.clone().try_acquire_owned() {
                held.push(permit);
            }
            let start = SystemTime::now();
            let batch = tokio::select! {
                biased;
                () = &mut shutdown => break,
                batch = self
                    .consumer
                    .inner()
                    .batch()
                    .max_messages(held.len())
                    .expires(self.pull_expires)
                    .messages() => batch,
            };
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(err) => {
                    consumer.record_receive_of(start, Vec::new(), Some(err.to_string()));
                    // The connection is down or the stream is moving: wait and
                    // pull again instead of spinning.
                    pull_failures += 1;
                    let pause = Backoff::default().delay(pull_failures.min(5));
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            };
            pull_failures = 0;
            // Hand each message to a handler as it arrives. Once asked to stop,
            // keep draining this pull (it ends by `pull_expires`): the server has
            // already assigned its messages to us, so they are in flight.
            let mut producers = Vec::new();
            let mut failure = None;
            loop {
                let item = if stopping {
                    batch.next().await
                } else {
                    tokio::select! {
                        biased;
                        () = &mut shutdown => {
                            stopping = true;
                            continue;
                        }
                        item = batch.next() => item,
                    }
                };
                let Some(item) = item else { break };
                let message = match item {
                    Ok(message) => message,
                    Err(err) => {
                        failure = Some(err.to_string());
                        break;
                    }
                };
                // The pull asked for `held.len()` messages, so a permit is there;
                // should the server send more, wait for one rather than drop it.
                let permit = match held.pop() {
                    Some(permit) => permit,
                    None => match permits.clone().acquire_owned().await {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                };
                let delivery = consumer.deliver(message);
                producers.push(delivery.producer_context().span().span_context().clone());
                let shared = shared.clone();
                let handler = handler.clone();
                tasks.spawn(async move {
                    shared.handle(delivery, handler.as_ref()).await;
                    drop(permit);
                });
                while tasks.try_join_next().is_some() {}
            }
            consumer.record_receive_of(start, producers, failure);
            drop(held);
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
        if let Some(health) = health {
            health.abort();
        }
        counters.snapshot()
    }
}

struct Shared {
    js: Context,
    backoff: Backoff,
    max_deliver: i64,
    dead_letter: Option<DeadLetter>,
    progress_interval: Option<Duration>,
    dedup: Option<Arc<dyn IdempotencyStore>>,
    counters: Arc<Counters>,
}

impl Shared {
    async fn handle<H, Fut>(&self, delivery: Delivery, handler: &H)
    where
        H: Fn(Message) -> Fut,
        Fut: Future<Output = Result<(), HandlerError>>,
    {
        let (delivered, id) = match delivery.message().info() {
            Ok(info) => (
                info.delivered,
                format!("{}:{}", info.stream, info.stream_sequence),
            ),
            Err(_) => (1, String::new()),
        };
        let id = delivery
            .message()
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
            .map(|v| v.as_str().to_owned())
            .unwrap_or(id);

        if let Some(dedup) = &self.dedup {
            if !id.is_empty() && dedup.seen(&id).await {
                event(
                    &delivery,
                    "duplicate_skipped",
                    vec![KeyValue::new("messaging.message.id", id)],
                );
                Counters::bump(&self.counters.duplicates_skipped);
                if let Some(m) = delivery.instruments() {
                    m.worker_duplicates.add(1, delivery.metric_attributes());
                }
                let _ = delivery.ack().await;
                return;
            }
        }

        Counters::bump(&self.counters.handled);
        let run = AssertUnwindSafe(handler(delivery.message().clone())).catch_unwind();
        let outcome = delivery.in_span(self.with_progress(&delivery, run)).await;
        let failure = match outcome {
            Ok(Ok(())) => {
                if let Some(dedup) = &self.dedup {
                    if !id.is_empty() {
                        dedup.record(&id).await;
                    }
                }
                if delivery.ack().await.is_ok() {
                    Counters::bump(&self.counters.acked);
                }
                return;
            }
            Ok(Err(HandlerError::Fatal(e))) => Failure {
                reason: format!("fatal: {e}"),
                retry: false,
            },
            Ok(Err(HandlerError::Transient(e))) => Failure {
                reason: format!("transient: {e}"),
                retry: true,
            },
            Err(panic) => {
                Counters::bump(&self.counters.panics);
                Failure {
                    reason: format!("handler panicked: {}", panic_message(&*panic)),
                    retry: true,
                }
            }
        };
        delivery.record_error(&failure.reason);

        let attempts_left = delivered < self.max_deliver;
        if failure.retry && attempts_left {
            let delay = self.backoff.delay(u64::try_from(delivered).unwrap_or(1));
            event(
                &delivery,
                "retry",
                vec![
                    KeyValue::new("messaging.nats.delivered", delivered),
                    KeyValue::new("messaging.nats.retry.delay", delay.as_secs_f64()),
                    KeyValue::new("messaging.nats.retry.reason", failure.reason.clone()),
                ],
            );
            if delivery.nak(Some(delay)).await.is_ok() {
                Counters::bump(&self.counters.retried);
                if let Some(m) = delivery.instruments() {
                    m.worker_retries.add(1, delivery.metric_attributes());
                }
            }
            return;
        }
        self.dead_letter(&delivery, &failure.reason, delivered)
            .await;
    }

    /// Runs `work`, sending `progress` for the delivery every interval meanwhile.
    async fn with_progress<F: Future>(&self, delivery: &Delivery, work: F) -> F::Output {
        let Some(interval) = self.progress_interval else {
            return work.await;
        };
        let mut work = std::pin::pin!(work);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = ticks.tick() => {
                    let _ = delivery.progress().await;
                }
            }
        }
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str, delivered: i64) {
        let Some(dead_letter) = &self.dead_letter else {
            event(
                delivery,
                "dead_letter",
                vec![KeyValue::new(
                    "messaging.nats.dlq.reason",
                    reason.to_owned(),
                )],
            );
            if delivery.term().await.is_ok() {
                Counters::bump(&self.counters.dead_lettered);
                if let Some(m) = delivery.instruments() {
                    m.worker_dead_letters.add(1, delivery.metric_attributes());
                }
            }
            return;
        };
        let subject = dead_letter.subject_for(delivery.message().subject.as_str());
        match delivery
            .in_span(dead_letter.send(&self.js, delivery, reason))
            .await
        {
            Ok(ack) => {
                event(
                    delivery,
                    "dead_letter",
                    vec![
                        KeyValue::new("messaging.nats.dlq.subject", subject),
                        KeyValue::new("messaging.nats.dlq.stream", ack.stream),
                        KeyValue::new("messaging.nats.dlq.reason", reason.to_owned()),
                    ],
                );
                if delivery.term().await.is_ok() {
                    Counters::bump(&self.counters.dead_lettered);
                    if let Some(m) = delivery.instruments() {
                        m.worker_dead_letters.add(1, delivery.metric_attributes());
                    }
                }
            }
            Err(err) => {
                event(
                    delivery,
                    "dead_letter_failed",
                    vec![
                        KeyValue::new("messaging.nats.dlq.subject", subject),
                        KeyValue::new("exception.message", err.to_string()),
                    ],
                );
                Counters::bump(&self.counters.dead_letter_failures);
                let delay = self.backoff.delay(u64::try_from(delivered).unwrap_or(1));
                let _ = delivery.nak(Some(delay)).await;
            }
        }
    }
}

struct Failure {
    reason: String,
    retry: bool,
}

fn event(delivery: &Delivery, name: &'static str, attributes: Vec<KeyValue>) {
    let span = delivery.context().span();
    if span.is_recording() {
        span.add_event(name, attributes);
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
