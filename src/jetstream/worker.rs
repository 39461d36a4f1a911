//! The consumer worker: its builder and settings, statistics, and `run` (pulls in
//! `pull_loop`, per-message handling in `handle`, open pulls in `pulls`).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::backoff::Backoff;
use super::dead_letter::DeadLetter;
use super::dedup::IdempotencyStore;
use super::shared::Failure as PullFailure;
use super::{Context, PullConsumer};

mod handle;
mod pull_loop;
mod pulls;

use handle::Shared;
use pull_loop::{Handlers, PullLoop};
use pulls::Pulls;

/// What a [`Worker`]'s handler receives: the message with its `process` span (the
/// worker settles it, so the message is async-nats's own).
pub type Task = crate::Delivery<async_nats::jetstream::Message>;

/// Boxed error a handler returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a handler failed, which decides what happens to the message.
#[derive(Debug)]
#[non_exhaustive]
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
#[non_exhaustive]
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
/// It asks the server for as many messages as it has room for: free handler slots
/// ([`concurrency`](Self::concurrency)) plus a window of messages pulled ahead
/// ([`prefetch`](Self::prefetch)), which wait in a buffer and get `progress` so
/// buffering never causes a redelivery. Handlers are polled from the worker's own
/// task by default (see [`spawn_handlers`](Self::spawn_handlers)).
///
/// The handler gets a [`Task`]: the same [`Delivery`](crate::Delivery) every source
/// hands out (`context`, `producer_context`, `in_span`, `record_error`, …),
/// dereferencing to the message. The worker settles it, and records the outcome:
///
/// | handler result | settlement | `error.type` (span and `messaging.process.duration`) |
/// |---|---|---|
/// | `Ok(())` | `ack` | – |
/// | [`HandlerError::Transient`], deliveries left | `nak` after [`Backoff`] delay | `transient` |
/// | a panic, deliveries left | `nak` after [`Backoff`] delay | `panic` |
/// | transient or panic with no deliveries left | dead-letter, then `term` | `transient` / `panic` |
/// | [`HandlerError::Fatal`] | dead-letter, then `term` | `fatal` |
/// | payload that cannot be decoded (feature `compression`) | dead-letter, then `term` (handler not called) | the decode error's kind |
/// | dead-letter publish failed | `nak` (redelivered; nothing is lost) | as above |
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
/// let consumer = js.get_stream("TASKS").await?.get_consumer("workers").await?;
/// // Send on `stop` (or drop it) to shut down gracefully.
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// # drop(stop);
/// let stats = Worker::new(&js, consumer)
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
    prefetch: usize,
    spawn_handlers: bool,
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
            .field("prefetch", &self.prefetch)
            .field("spawn_handlers", &self.spawn_handlers)
            .field("backoff", &self.backoff)
            .field("max_deliver", &self.max_deliver)
            .field("dead_letter", &self.dead_letter)
            .field("progress_interval", &self.progress_interval)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker with defaults taken from the consumer's configuration:
    /// concurrency 16; up to 256 messages pulled ahead; the consumer's `backoff` list if it has one, else
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
            prefetch: 256,
            spawn_handlers: false,
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

    /// At most `n` handlers run at once. At least 1.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Runs each handler as a task of its own on the runtime (`true`: handlers that
    /// compute for long run in parallel on its threads), instead of polling them
    /// all from the worker's own task (`false`, the default: no task spawn and no
    /// thread wake-up per message; handlers interleave at their `.await`s, as in a
    /// hand-written consume loop). Keep the default for handlers that wait (I/O,
    /// other services); with it, move CPU-heavy work to
    /// `tokio::task::spawn_blocking`, or set this.
    pub fn spawn_handlers(mut self, spawn: bool) -> Self {
        self.spawn_handlers = spawn;
        self
    }

    /// At most `n` messages pulled ahead of free handler slots (default 256), so
    /// fast handlers never wait for a pull. They wait in a buffer in arrival
    /// order; the server counts them as delivered, so each gets `progress` once
    /// it has waited a `progress_interval` (one timer for the whole buffer):
    /// buffering never lets `ack_wait` run out. The window adapts: it halves
    /// whenever a buffered message needed `progress` (handlers are slower than
    /// it assumed) and doubles back, up to `n`, when a handler slot frees with
    /// the buffer empty. `0` pulls only for free slots; with
    /// `progress_interval(None)` nothing is pulled ahead. Several workers on one
    /// consumer share its messages less evenly the deeper this is.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
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
        H: Fn(Task) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let counters = Arc::new(Counters::default());
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
                        let _ = consumer.get_info().await;
                    }
                }))
            }
            _ => None,
        };
        let mut shutdown = std::pin::pin!(shutdown);
        let consumer = self.consumer.shared().clone();
        let client = self.js.inner().client();
        // One subscription for every pull: a pull's replies go to `{prefix}.{id}`
        // (statuses arrive on that subject), its messages to the same subscription.
        // A subscription per pull would cost the server a SUB and an UNSUB each.
        let prefix = client.new_inbox();
        let mut inbox = loop {
            match client.subscribe(format!("{prefix}.*")).await {
                Ok(inbox) => break Some(inbox),
                Err(err) => {
                    consumer.record_receive_of(
                        SystemTime::now(),
                        Vec::new(),
                        Some(PullFailure::of(&err)),
                        None,
                    );
                    tokio::select! {
                        () = &mut shutdown => break None,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        if let Some(inbox) = inbox.as_mut() {
            let pulls = Pulls {
                open: VecDeque::new(),
                reserved: 0,
                next_id: 0,
                consumer: consumer.clone(),
            };
            // Without progress, a buffered message could outwait `ack_wait`.
            let prefetch = match self.progress_interval {
                Some(_) => self.prefetch,
                None => 0,
            };
            PullLoop {
                consumer: self.consumer.clone(),
                shared,
                handler,
                concurrency: self.concurrency,
                prefetch,
                window: prefetch,
                buffer: VecDeque::new(),
                pull_expires: self.pull_expires,
                prefix,
                pulls,
                tasks: Handlers::new(self.spawn_handlers),
                stopping: false,
                pull_failures: 0,
                hold: false,
            }
            .run(inbox, shutdown.as_mut())
            .await;
        }
        drop(inbox);
        if let Some(health) = health {
            health.abort();
        }
        counters.snapshot()
    }
}
