//! The worker's pull loop: one method per event it waits for (shutdown, a message
//! or status on the pull inbox, a pull that never ended, free handler slots).

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::{StatusCode, Subscriber};
use futures_util::StreamExt as _;
use opentelemetry::trace::TraceContextExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::handle::Shared;
use super::pulls::Pulls;
use super::{HandlerError, Task};
use crate::jetstream::backoff::Backoff;
use crate::jetstream::shared::{ConsumerShared, Failure as PullFailure};
use crate::jetstream::PullConsumer;

/// One running worker's pulls and handlers.
pub(super) struct PullLoop<H> {
    pub(super) consumer: PullConsumer,
    pub(super) shared: Arc<Shared>,
    pub(super) handler: Arc<H>,
    /// One per handler slot.
    pub(super) permits: Arc<Semaphore>,
    /// How many free slots a pull waits for while another pull is open.
    pub(super) refill: u32,
    pub(super) pull_expires: Duration,
    /// The pull inbox prefix: pull `id` replies on `{prefix}.{id}`.
    pub(super) prefix: String,
    pub(super) pulls: Pulls,
    pub(super) tasks: JoinSet<()>,
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
    /// Pulls and hands messages to handlers until shutdown has completed and the
    /// open pulls have drained (or the inbox closed); then waits for the handlers.
    pub(super) async fn run(
        mut self,
        inbox: &mut Subscriber,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
    ) {
        loop {
            if self.stopping && self.pulls.open.is_empty() {
                break;
            }
            let open = !self.pulls.open.is_empty();
            let want = if open { self.refill } else { 1 };
            let deadline = self
                .pulls
                .open
                .iter()
                .map(|p| p.deadline)
                .min()
                .unwrap_or_else(|| tokio::time::Instant::now() + self.pull_expires);
            let may_pull = !self.stopping && (!self.hold || !open);
            let flow = tokio::select! {
                biased;
                () = &mut shutdown, if !self.stopping => {
                    // Keep draining the open pulls (they end by `pull_expires`):
                    // the server has already assigned their messages to us.
                    self.stopping = true;
                    ControlFlow::Continue(())
                }
                message = inbox.next(), if open => match message {
                    Some(message) => self.on_message(message).await,
                    None => ControlFlow::Break(()),
                },
                () = tokio::time::sleep_until(deadline), if open => {
                    // No end status came (a reconnect loses pull requests): give
                    // the pull up so its slots are not lost.
                    self.pulls.expire(tokio::time::Instant::now());
                    ControlFlow::Continue(())
                }
                permit = self.permits.clone().acquire_many_owned(want), if may_pull => match permit {
                    Ok(permit) => self.on_free_slots(permit, shutdown.as_mut()).await,
                    Err(_) => ControlFlow::Break(()),
                },
            };
            if flow.is_break() {
                break;
            }
        }
        while self.tasks.join_next().await.is_some() {}
    }

    /// A message on the pull inbox: a status ending a pull, or a message to handle.
    async fn on_message(&mut self, message: async_nats::Message) -> ControlFlow<()> {
        if let Some(status) = message.status.filter(|s| *s != StatusCode::OK) {
            self.on_status(status, &message);
            return ControlFlow::Continue(());
        }
        let message = async_nats::jetstream::Message {
            message,
            context: self.shared.js.inner().clone(),
        };
        // The pull asked for as many messages as it reserved permits; should the
        // server send more, wait for one rather than drop the message.
        let permit = match self.pulls.take_permit() {
            Some(permit) => permit,
            None => match self.permits.clone().acquire_owned().await {
                Ok(permit) => permit,
                Err(_) => return ControlFlow::Break(()),
            },
        };
        self.pull_failures = 0;
        let delivery = self.consumer_shared().deliver(message);
        self.pulls
            .received(delivery.producer_context().span().span_context().clone());
        let shared = self.shared.clone();
        let handler = self.handler.clone();
        self.tasks.spawn(async move {
            shared.handle(delivery, handler.as_ref()).await;
            drop(permit);
        });
        while self.tasks.try_join_next().is_some() {}
        ControlFlow::Continue(())
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

    /// Free handler slots: one pull for all of them (and any freed meanwhile).
    async fn on_free_slots(
        &mut self,
        mut permit: OwnedSemaphorePermit,
        shutdown: Pin<&mut impl Future<Output = ()>>,
    ) -> ControlFlow<()> {
        while let Ok(more) = self.permits.clone().try_acquire_owned() {
            permit.merge(more);
        }
        let requested = permit.num_permits();
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
                self.pulls
                    .opened(start, requested, permit, self.pull_expires);
            }
            Err(err) => {
                drop(permit);
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
        ControlFlow::Continue(())
    }

    fn consumer_shared(&self) -> &Arc<ConsumerShared> {
        self.consumer.shared()
    }
}
