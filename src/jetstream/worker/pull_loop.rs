//! The worker's pull loop: one method per event it waits for (shutdown, a handler
//! finished, a message or status on the pull inbox, a pull that never ended, a
//! progress tick for buffered messages), and pulls sized by the free room.

use std::collections::VecDeque;
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::{StatusCode, Subscriber};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt as _;
use opentelemetry::trace::TraceContextExt;
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval};

use super::handle::Shared;
use super::pulls::Pulls;
use super::{HandlerError, Task};
use crate::jetstream::backoff::Backoff;
use crate::jetstream::shared::{ConsumerShared, Failure as PullFailure};
use crate::jetstream::{Delivery, PullConsumer};

/// A message pulled ahead, waiting for a free handler slot since `since` (or
/// since its last `progress`).
pub(super) struct Buffered {
    delivery: Delivery,
    since: Instant,
}

/// The running handlers: polled by the worker's own task (no task spawn, no
/// thread wake-up per message), or each spawned on the runtime.
pub(super) enum Handlers {
    Inline(FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send>>>),
    Spawned(JoinSet<()>),
}

impl Handlers {
    pub(super) fn new(spawn: bool) -> Self {
        match spawn {
            true => Self::Spawned(JoinSet::new()),
            false => Self::Inline(FuturesUnordered::new()),
        }
    }

    /// Handlers running (or finished and not yet reaped).
    fn len(&self) -> usize {
        match self {
            Self::Inline(running) => running.len(),
            Self::Spawned(running) => running.len(),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, handler: impl Future<Output = ()> + Send + 'static) {
        match self {
            Self::Inline(running) => running.push(Box::pin(handler)),
            Self::Spawned(running) => {
                running.spawn(handler);
            }
        }
    }

    /// Waits for one handler to finish; `None` when none runs.
    async fn next(&mut self) -> Option<()> {
        match self {
            Self::Inline(running) => running.next().await,
            Self::Spawned(running) => running.join_next().await.map(|_| ()),
        }
    }

    /// Forgets spawned handlers that have finished (inline ones are reaped by
    /// [`next`](Self::next), which also runs them).
    fn reap(&mut self) {
        if let Self::Spawned(running) = self {
            while running.try_join_next().is_some() {}
        }
    }
}

/// One running worker's pulls, buffer and handlers.
pub(super) struct PullLoop<H> {
    pub(super) consumer: PullConsumer,
    pub(super) shared: Arc<Shared>,
    pub(super) handler: Arc<H>,
    /// At most this many handlers run at once.
    pub(super) concurrency: usize,
    /// At most this many messages wait in `buffer` (pulled ahead of free slots).
    pub(super) prefetch: usize,
    /// The current pull-ahead window (≤ `prefetch`): halved when buffered
    /// messages needed `progress`, doubled back when a slot frees with the buffer
    /// empty.
    pub(super) window: usize,
    pub(super) buffer: VecDeque<Buffered>,
    pub(super) pull_expires: Duration,
    /// The pull inbox prefix: pull `id` replies on `{prefix}.{id}`.
    pub(super) prefix: String,
    pub(super) pulls: Pulls,
    pub(super) tasks: Handlers,
    /// Shutdown asked for: no new pulls, the open ones drain.
    pub(super) stopping: bool,
    /// Consecutive failed pulls, for the pause before the next.
    pub(super) pull_failures: u64,
    /// After a failed pull request, no new one until the open ones end.
    pub(super) hold: bool,
}

impl<H, Fut> PullLoop<H>
where
    H: Fn(Task) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    /// Pulls and hands messages to handlers until shutdown has completed, the open
    /// pulls have drained and the buffer is empty (or the inbox closed); then
    /// waits for the handlers.
    pub(super) async fn run(
        mut self,
        inbox: &mut Subscriber,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) {
        // One timer for every buffered message: a message waits at most
        // `progress_interval` plus half of it before its `progress`.
        let mut ticks: Option<Interval> = self.shared.progress_interval.map(|every| {
            let mut ticks = tokio::time::interval(every / 2);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        loop {
            if self.stopping && self.pulls.open.is_empty() && self.buffer.is_empty() {
                break;
            }
            let open = !self.pulls.open.is_empty();
            let may_pull = !self.stopping && (!self.hold || !open);
            let free = self.free();
            // With a pull open, wait for a quarter of the room before the next
            // one instead of one pull per freed slot; with none open, pull at once.
            let want = if open { self.room() / 4 } else { 1 }.max(1);
            if may_pull && free >= want {
                self.pull(free, shutdown.as_mut()).await;
                continue;
            }
            let deadline = self
                .pulls
                .open
                .iter()
                .map(|p| p.deadline)
                .min()
                .unwrap_or_else(|| Instant::now() + self.pull_expires);
            let buffered = !self.buffer.is_empty();
            let flow = tokio::select! {
                biased;
                () = &mut shutdown, if !self.stopping => {
                    // Keep draining the open pulls (they end by `pull_expires`):
                    // the server has already assigned their messages to us.
                    self.stopping = true;
                    ControlFlow::Continue(())
                }
                Some(()) = self.tasks.next(), if !self.tasks.is_empty() => {
                    self.dispatch();
                    ControlFlow::Continue(())
                }
                message = inbox.next(), if open => match message {
                    Some(message) => self.on_message(message),
                    None => ControlFlow::Break(()),
                },
                () = tokio::time::sleep_until(deadline), if open => {
                    // No end status came (a reconnect loses pull requests): give
                    // the pull up so its room is not lost.
                    self.pulls.expire(Instant::now());
                    ControlFlow::Continue(())
                }
                () = tick(ticks.as_mut()), if buffered => {
                    self.keep_buffered_alive().await;
                    ControlFlow::Continue(())
                }
            };
            if flow.is_break() {
                break;
            }
        }
        // The inbox closed with messages still buffered: hand them out (their
        // settlement may fail, and the server redelivers them).
        while let Some(buffered) = self.buffer.pop_front() {
            while self.tasks.len() >= self.concurrency {
                let _ = self.tasks.next().await;
            }
            self.spawn(buffered.delivery);
        }
        while self.tasks.next().await.is_some() {}
    }

    /// Handler slots plus the current pull-ahead window.
    fn room(&self) -> usize {
        self.concurrency + self.window
    }

    /// Room not taken by running handlers, buffered messages or messages asked
    /// for and not yet arrived.
    fn free(&self) -> usize {
        self.room()
            .saturating_sub(self.tasks.len() + self.buffer.len() + self.pulls.reserved)
    }

    /// A message on the pull inbox: a status ending a pull, or a message to handle
    /// (or to buffer until a handler slot frees).
    fn on_message(&mut self, message: async_nats::Message) -> ControlFlow<()> {
        if let Some(status) = message.status.filter(|s| *s != StatusCode::OK) {
            self.on_status(status, &message);
            return ControlFlow::Continue(());
        }
        let message = async_nats::jetstream::Message {
            message,
            context: self.shared.js.inner().clone(),
        };
        self.pull_failures = 0;
        let delivery = self.consumer_shared().deliver(message);
        self.pulls
            .received(delivery.producer_context().span().span_context().clone());
        self.tasks.reap();
        if self.tasks.len() < self.concurrency && self.buffer.is_empty() {
            self.spawn(delivery);
        } else {
            self.buffer.push_back(Buffered {
                delivery,
                since: Instant::now(),
            });
            self.dispatch();
        }
        ControlFlow::Continue(())
    }

    /// Starts buffered messages in the free handler slots; with the buffer empty
    /// and a slot free, handlers keep up: the window grows back.
    fn dispatch(&mut self) {
        self.tasks.reap();
        while self.tasks.len() < self.concurrency {
            let Some(buffered) = self.buffer.pop_front() else {
                if self.window < self.prefetch {
                    self.window = (self.window * 2).clamp(1, self.prefetch);
                }
                return;
            };
            self.spawn(buffered.delivery);
        }
    }

    fn spawn(&mut self, delivery: Delivery) {
        let shared = self.shared.clone();
        let handler = self.handler.clone();
        self.tasks.push(async move {
            shared.handle(delivery, handler.as_ref()).await;
        });
    }

    /// Sends `progress` for every buffered message that has waited a
    /// `progress_interval`, so waiting in the buffer never lets `ack_wait` run
    /// out; handlers are slower than the window assumed, so it halves.
    async fn keep_buffered_alive(&mut self) {
        let Some(every) = self.shared.progress_interval else {
            return;
        };
        let now = Instant::now();
        let mut needed = false;
        for buffered in self.buffer.iter_mut() {
            if now.duration_since(buffered.since) >= every {
                let _ = buffered.delivery.progress().await;
                buffered.since = now;
                needed = true;
            }
        }
        if needed {
            self.window /= 2;
        }
    }

    /// A status on pull `{prefix}.{id}`: 408 (expired) and 404 (nothing to
    /// deliver) end it; any other status ends it with a failure.
    fn on_status(&mut self, status: StatusCode, message: &async_nats::Message) {
        if status == StatusCode::IDLE_HEARTBEAT {
            return;
        }
        let id = message
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .and_then(|id| id.parse::<u64>().ok());
        let failure =
            (status != StatusCode::TIMEOUT && status != StatusCode::NOT_FOUND).then(|| {
                PullFailure::other(match &message.description {
                    Some(description) => format!("{status}: {description}"),
                    None => status.to_string(),
                })
            });
        if failure.is_some() {
            self.pull_failures += 1;
        }
        if let Some(id) = id {
            self.pulls.end(id, failure);
        }
    }

    /// One pull for `requested` messages (the free room).
    async fn pull(&mut self, requested: usize, shutdown: Pin<&mut impl Future<Output = ()>>) {
        let start = SystemTime::now();
        let id = self.pulls.next_id;
        let request = self.consumer.inner().request_batch(
            BatchConfig {
                batch: requested,
                expires: Some(self.pull_expires),
                ..Default::default()
            },
            format!("{}.{id}", self.prefix).into(),
        );
        match request.await {
            Ok(()) => {
                self.hold = false;
                self.pulls.opened(start, requested, self.pull_expires);
            }
            Err(err) => {
                self.consumer_shared().record_receive_of(
                    start,
                    Vec::new(),
                    Some(PullFailure::of(&err)),
                    None,
                );
                // The connection is down: wait and pull again instead of spinning.
                self.pull_failures += 1;
                self.hold = true;
                if self.pulls.open.is_empty() {
                    let pause = Backoff::default().delay(self.pull_failures.min(5));
                    tokio::select! {
                        () = shutdown => self.stopping = true,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    fn consumer_shared(&self) -> &Arc<ConsumerShared> {
        self.consumer.shared()
    }
}

/// The next tick of `ticks`; never, without progress.
async fn tick(ticks: Option<&mut Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}
