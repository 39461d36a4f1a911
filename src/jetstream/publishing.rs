//! Publishing helpers on top of the traced JetStream publish: retries that keep
//! the message id, deterministic ids, and pipelining with a bounded in-flight count.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::{HeaderMap, Subject, ToSubject};
use bytes::Bytes;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use super::{Backoff, Context};

/// How a JetStream publish is retried after transient failures.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishRetry {
    attempts: u32,
    backoff: Backoff,
}

impl Default for PublishRetry {
    /// 5 attempts, 100 ms doubling to at most 2 s, ±20 % jitter.
    fn default() -> Self {
        Self::new(
            5,
            Backoff::Exponential {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(2),
                multiplier: 2.0,
                jitter: 0.2,
            },
        )
    }
}

impl PublishRetry {
    /// At most `attempts` tries (at least 1), waiting `backoff` between them.
    pub fn new(attempts: u32, backoff: Backoff) -> Self {
        Self {
            attempts: attempts.max(1),
            backoff,
        }
    }
}

/// Whether a publish failure may go away by itself: a timeout, a broken
/// connection, back-pressure, or no stream answering (as during a leader election).
pub fn is_transient(kind: PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending
            | PublishErrorKind::StreamNotFound
    )
}

/// A deterministic message id for `subject` and `payload` (32 hex characters), for
/// callers without an id of their own: publishing the same content to the same
/// subject twice within the stream's duplicate window stores it once. Not a
/// cryptographic hash; use your own ids where content may legitimately repeat.
pub fn content_id(subject: &str, payload: &[u8]) -> String {
    fn fnv1a(seed: u64, parts: &[&[u8]]) -> u64 {
        let mut hash = seed;
        for part in parts {
            for byte in part.iter() {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
            // Separate the parts so ("ab", "c") and ("a", "bc") differ.
            hash ^= 0xff;
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }
    let parts: [&[u8]; 2] = [subject.as_bytes(), payload];
    format!(
        "{:016x}{:016x}",
        fnv1a(0xcbf2_9ce4_8422_2325, &parts),
        fnv1a(0x8422_2325_cbf2_9ce4, &parts)
    )
}

impl Context {
    /// Publishes with `Nats-Msg-Id = message_id` and awaits the ack, retrying
    /// transient failures with the same id, so a retry of a publish the server did
    /// store is reported as a duplicate instead of storing a second copy. Each
    /// attempt is its own `publish` span.
    pub async fn publish_with_retry<S: ToSubject>(
        &self,
        subject: S,
        message_id: &str,
        headers: Option<HeaderMap>,
        payload: Bytes,
        retry: &PublishRetry,
    ) -> Result<PublishAck, PublishError> {
        let subject: Subject = subject.to_subject();
        let mut attempt = 1u32;
        loop {
            let result = match self
                .send_with_id(
                    subject.clone(),
                    message_id,
                    headers.clone(),
                    payload.clone(),
                )
                .await
            {
                Ok(ack) => ack.await,
                Err(err) => Err(err),
            };
            match result {
                Err(err) if attempt < retry.attempts && is_transient(err.kind()) => {
                    tokio::time::sleep(retry.backoff.delay(u64::from(attempt))).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// A pipeline keeping at most `max_in_flight` publishes awaiting their ack
    /// (at least 1; at most `u32::MAX`, where larger values are capped).
    pub fn pipeline(&self, max_in_flight: usize) -> Pipeline {
        let max_in_flight = max_in_flight
            .clamp(1, u32::MAX as usize)
            .min(Semaphore::MAX_PERMITS);
        Pipeline {
            js: self.clone(),
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            stash: Arc::new(Mutex::new(None)),
            queue: Arc::new(Queue::default()),
            open: Arc::new(Open(OnceLock::new())),
        }
    }
}

/// Publishes without waiting for each ack, with a bounded number in flight.
///
/// Each publish returns an [`AckHandle`] at once (after waiting for room when
/// `max_in_flight` acks are outstanding). Acks are awaited in the background by one
/// task per pipeline (not one per message), so every message's span ends when its
/// own ack arrives, whether or not the handle is awaited yet. That task awaits
/// them in publish order: it is woken by arriving acks, and by a publish only
/// when it has none to wait for. (Acks of different streams may arrive out of
/// order; a later one is then taken, and its span ended, after the earlier.)
#[derive(Debug, Clone)]
pub struct Pipeline {
    js: Context,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    /// Room taken from `permits` and not used yet: a publish waiting for room
    /// takes a sixteenth of the window at once, so the background task's freed
    /// permits wake it once per batch of acks, not per ack.
    stash: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
    queue: Arc<Queue>,
    /// Dropped with the last clone: the background task ends once it has
    /// awaited the acks in flight.
    open: Arc<Open>,
}

/// One ack for the background task to await.
type Job = (
    super::PublishAckFuture,
    OwnedSemaphorePermit,
    oneshot::Sender<Result<PublishAck, PublishError>>,
);

/// Acks handed to the background task, and whether it waits for one.
#[derive(Default)]
struct Queue {
    /// The queued acks, and how many were ever queued (for `flush`).
    jobs: Mutex<(Vec<Job>, u64)>,
    /// The task has no ack to await and waits on `wake`.
    idle: AtomicBool,
    /// No pipeline clone is left.
    closed: AtomicBool,
    wake: Notify,
    progress: Progress,
    flushed: Notify,
}

/// Acks taken so far (in queue order) and flushes waiting on `Queue::flushed`
/// (the task notifies only when there are some). A cache line of its own: the
/// task writes it per ack, publishes never touch it.
#[derive(Default)]
#[repr(align(64))]
struct Progress {
    taken: AtomicU64,
    flushes: AtomicUsize,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

impl Queue {
    fn push(&self, job: Job) {
        {
            let mut jobs = self
                .jobs
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            jobs.0.push(job);
            jobs.1 += 1;
        }
        // A task awaiting an earlier ack picks this one up after it; an idle one
        // needs waking.
        if self.idle.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Swaps the queued jobs into `into` (empty; its buffer becomes the queue's).
    fn take_into(&self, into: &mut Vec<Job>) {
        let mut jobs = self
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::swap(&mut jobs.0, into);
    }
}

/// Starts the background task on first use; closes the queue when dropped.
#[derive(Debug)]
struct Open(OnceLock<Arc<Queue>>);

impl Drop for Open {
    fn drop(&mut self) {
        if let Some(queue) = self.0.get() {
            queue.closed.store(true, Ordering::Release);
            queue.wake.notify_one();
        }
    }
}

/// Awaits the queued acks in publish order (JetStream acks a stream's messages
/// in order: the ones behind the first are then ready at once), handing each
/// result to its handle; ends once every pipeline clone is gone and the acks in
/// flight have come. One ack future is alive at a time.
async fn drive(queue: Arc<Queue>) {
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut taken = Vec::new();
    loop {
        queue.take_into(&mut taken);
        pending.extend(taken.drain(..));
        if let Some((ack, permit, reply)) = pending.pop_front() {
            // Publishes meanwhile queue their acks without waking this task.
            let result = ack.await;
            drop(permit);
            let _ = reply.send(result);
            queue.progress.taken.fetch_add(1, Ordering::SeqCst);
            if queue.progress.flushes.load(Ordering::SeqCst) > 0 {
                queue.flushed.notify_waiters();
            }
            continue;
        }
        queue.idle.store(true, Ordering::Release);
        // A job pushed before `idle` was set did not wake us: look again.
        if !queue.jobs.lock().map_or(true, |jobs| jobs.0.is_empty()) {
            queue.idle.store(false, Ordering::Release);
            continue;
        }
        if queue.closed.load(Ordering::Acquire) {
            break;
        }
        queue.wake.notified().await;
    }
}

impl Pipeline {
    /// Publishes `payload` to `subject`.
    pub async fn publish<S: ToSubject>(
        &self,
        subject: S,
        payload: Bytes,
    ) -> Result<AckHandle, PublishError> {
        self.send(subject.to_subject(), None, None, payload).await
    }

    /// Publishes with a `Nats-Msg-Id`.
    pub async fn publish_with_id<S: ToSubject>(
        &self,
        subject: S,
        message_id: &str,
        payload: Bytes,
    ) -> Result<AckHandle, PublishError> {
        self.send(subject.to_subject(), Some(message_id), None, payload)
            .await
    }

    /// Publishes with headers.
    pub async fn publish_with_headers<S: ToSubject>(
        &self,
        subject: S,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<AckHandle, PublishError> {
        self.send(subject.to_subject(), None, Some(headers), payload)
            .await
    }

    /// Publishes still awaiting their ack.
    pub fn in_flight(&self) -> usize {
        let stashed = self.stash.lock().map_or(0, |stash| {
            stash.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
        });
        self.max_in_flight
            .saturating_sub(self.permits.available_permits() + stashed)
    }

    /// Waits until every publish this pipeline has returned a handle for has its
    /// ack: its span has ended and its handle has its result, dropped handles
    /// included. The way to know a pipeline whose handles are not kept is done
    /// (before a shutdown, say). Publishes made meanwhile are not waited for.
    pub async fn flush(&self) {
        let queue = &self.queue;
        let target = queue
            .jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .1;
        let progress = &queue.progress;
        if progress.taken.load(Ordering::SeqCst) >= target {
            return;
        }
        /// Counts this flush among the waiting ones until it ends or is dropped.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        progress.flushes.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&progress.flushes);
        loop {
            let notified = queue.flushed.notified();
            tokio::pin!(notified);
            // Registered before the count is read: a notification in between
            // is not missed.
            notified.as_mut().enable();
            if progress.taken.load(Ordering::SeqCst) >= target {
                return;
            }
            notified.await;
        }
    }

    /// Room for one publish: from the stash, else free room, else (waiting) a
    /// batch of it.
    async fn room(&self) -> Result<OwnedSemaphorePermit, PublishError> {
        let closed = |e| PublishError::with_source(PublishErrorKind::Other, e);
        if let Some(permit) = self.take_stashed() {
            return Ok(permit);
        }
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let batch = u32::try_from((self.max_in_flight / 16).max(1)).unwrap_or(1);
        let mut permit = self
            .permits
            .clone()
            .acquire_many_owned(batch)
            .await
            .map_err(closed)?;
        if let Some(one) = permit.split(1) {
            if permit.num_permits() > 0 {
                let mut stash = self.stash.lock().unwrap_or_else(|p| p.into_inner());
                match stash.as_mut() {
                    Some(stashed) => stashed.merge(permit),
                    None => *stash = Some(permit),
                }
            }
            return Ok(one);
        }
        Ok(permit)
    }

    fn take_stashed(&self) -> Option<OwnedSemaphorePermit> {
        let mut stash = self.stash.lock().unwrap_or_else(|p| p.into_inner());
        let one = stash.as_mut()?.split(1);
        if stash.as_ref().is_some_and(|s| s.num_permits() == 0) {
            *stash = None;
        }
        one
    }

    async fn send(
        &self,
        subject: Subject,
        message_id: Option<&str>,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<AckHandle, PublishError> {
        let permit = self.room().await?;
        let pending = match message_id {
            Some(id) => self.js.send_with_id(subject, id, headers, payload).await?,
            // Tracing and metrics off: nothing of this crate's per message.
            None => self.js.send_or_pass(subject, headers, payload).await?,
        };
        self.open.0.get_or_init(|| {
            tokio::spawn(drive(self.queue.clone()));
            self.queue.clone()
        });
        let (reply, handle) = oneshot::channel();
        // The queue is unbounded, but the permits bound what is in it.
        self.queue.push((pending, permit, reply));
        Ok(AckHandle(handle))
    }
}

/// The ack of a pipelined publish: a future of its [`PublishAck`] (dropping it
/// does not cancel the publish).
#[derive(Debug)]
#[must_use = "an ack handle does nothing unless awaited (the publish happens anyway)"]
pub struct AckHandle(oneshot::Receiver<Result<PublishAck, PublishError>>);

impl Future for AckHandle {
    type Output = Result<PublishAck, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|received| match received {
                Ok(result) => result,
                // The runtime shut down before the ack came.
                Err(closed) => Err(PublishError::with_source(PublishErrorKind::Other, closed)),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ids_are_stable_and_distinguish_inputs() {
        let a = content_id("orders.created", b"{\"id\":1}");
        assert_eq!(a, content_id("orders.created", b"{\"id\":1}"));
        assert_eq!(a.len(), 32);
        assert_ne!(a, content_id("orders.created", b"{\"id\":2}"));
        assert_ne!(content_id("ab", b"c"), content_id("a", b"bc"));
    }

    #[test]
    fn transient_kinds_are_the_ones_that_can_heal() {
        assert!(is_transient(PublishErrorKind::TimedOut));
        assert!(is_transient(PublishErrorKind::StreamNotFound));
        assert!(!is_transient(PublishErrorKind::WrongLastSequence));
        assert!(!is_transient(PublishErrorKind::MaxPayloadExceeded));
    }
}
