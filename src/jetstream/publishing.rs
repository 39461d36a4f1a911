//! Publishing helpers on top of the traced JetStream publish: retries that keep
//! the message id, deterministic ids, and pipelining with a bounded in-flight count.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::{HeaderMap, Subject, ToSubject};
use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

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

    /// A pipeline keeping at most `max_in_flight` publishes awaiting their ack.
    pub fn pipeline(&self, max_in_flight: usize) -> Pipeline {
        let max_in_flight = max_in_flight.max(1);
        Pipeline {
            js: self.clone(),
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            driver: Arc::new(OnceLock::new()),
        }
    }
}

/// Publishes without waiting for each ack, with a bounded number in flight.
///
/// Each publish returns an [`AckHandle`] at once (after waiting for room when
/// `max_in_flight` acks are outstanding). Acks are awaited in the background by one
/// task per pipeline (not one per message), so every message's span ends when its
/// own ack arrives, whether or not the handle is awaited yet.
#[derive(Debug, Clone)]
pub struct Pipeline {
    js: Context,
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    /// The background task's queue, started by the first publish.
    driver: Arc<OnceLock<mpsc::UnboundedSender<Job>>>,
}

/// One ack for the background task to await.
type Job = (
    super::PublishAckFuture,
    OwnedSemaphorePermit,
    oneshot::Sender<Result<PublishAck, PublishError>>,
);

/// Awaits every queued ack concurrently, handing each result to its handle;
/// ends once every pipeline clone is gone and the acks in flight have come.
async fn drive(mut jobs: mpsc::UnboundedReceiver<Job>) {
    let mut acks = FuturesUnordered::new();
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                Some((ack, permit, reply)) => acks.push(async move {
                    let result = ack.await;
                    drop(permit);
                    let _ = reply.send(result);
                }),
                None => break,
            },
            Some(()) = acks.next(), if !acks.is_empty() => {}
        }
    }
    while acks.next().await.is_some() {}
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
        self.max_in_flight
            .saturating_sub(self.permits.available_permits())
    }

    async fn send(
        &self,
        subject: Subject,
        message_id: Option<&str>,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<AckHandle, PublishError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| PublishError::with_source(PublishErrorKind::Other, e))?;
        let pending = match message_id {
            Some(id) => self.js.send_with_id(subject, id, headers, payload).await?,
            None => self.js.send_traced(subject, headers, payload).await?,
        };
        let driver = self.driver.get_or_init(|| {
            let (sender, jobs) = mpsc::unbounded_channel();
            tokio::spawn(drive(jobs));
            sender
        });
        let (reply, handle) = oneshot::channel();
        // The queue is unbounded, but the permits bound what is in it.
        driver
            .send((pending, permit, reply))
            .map_err(|e| PublishError::with_source(PublishErrorKind::Other, e.to_string()))?;
        Ok(AckHandle(handle))
    }
}

/// The ack of a pipelined publish; `.await` it for the [`PublishAck`].
#[derive(Debug)]
pub struct AckHandle(oneshot::Receiver<Result<PublishAck, PublishError>>);

impl IntoFuture for AckHandle {
    type Output = Result<PublishAck, PublishError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            match self.0.await {
                Ok(result) => result,
                // The runtime shut down before the ack came.
                Err(closed) => Err(PublishError::with_source(PublishErrorKind::Other, closed)),
            }
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
