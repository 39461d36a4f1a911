//! One message through the worker: dedup, the handler inside its span with
//! `progress` heartbeats, and the settlement its outcome calls for.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::FutureExt as _;
use opentelemetry::KeyValue;

use super::{Counters, HandlerError, Task};
use crate::jetstream::backoff::Backoff;
use crate::jetstream::dead_letter::DeadLetter;
use crate::jetstream::dedup::IdempotencyStore;
use crate::jetstream::{Context, Delivery};
use crate::semconv::{self, error_type, event as events};

pub(super) struct Shared {
    pub(super) js: Context,
    pub(super) backoff: Backoff,
    pub(super) max_deliver: i64,
    pub(super) dead_letter: Option<DeadLetter>,
    pub(super) progress_interval: Option<Duration>,
    pub(super) dedup: Option<Arc<dyn IdempotencyStore>>,
    pub(super) counters: Arc<Counters>,
}

impl Shared {
    pub(super) async fn handle<H, Fut>(&self, mut delivery: Delivery, handler: &H)
    where
        H: Fn(Task) -> Fut,
        Fut: Future<Output = Result<(), HandlerError>>,
    {
        let delivered = delivery.delivered();
        // The message's id, only needed for deduplication.
        let id = match &self.dedup {
            Some(_) => delivery
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_owned())
                .or_else(|| {
                    let info = delivery.info().ok()?;
                    Some(format!("{}:{}", info.stream, info.stream_sequence))
                })
                .unwrap_or_default(),
            None => String::new(),
        };

        if let Some(dedup) = &self.dedup {
            if !id.is_empty() && dedup.seen(&id).await {
                delivery.add_event(
                    events::DUPLICATE_SKIPPED,
                    vec![KeyValue::new(semconv::MESSAGING_MESSAGE_ID, id)],
                );
                Counters::bump(&self.counters.duplicates_skipped);
                if let Some(m) = delivery.metrics() {
                    m.instruments().worker_duplicates.add(1, m.attributes());
                }
                let _ = delivery.ack().await;
                return;
            }
        }

        if let Some(error) = delivery.decode_failure() {
            // The handler would only see bytes it cannot read: no retry can help.
            // The span already carries the decode error's kind.
            let reason = format!("undecodable payload: {error}");
            self.dead_letter(&delivery, &reason, delivered).await;
            return;
        }

        Counters::bump(&self.counters.handled);
        let task = delivery.share(delivery.inner().clone());
        let run = AssertUnwindSafe(handler(task)).catch_unwind();
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
                error_type: error_type::FATAL,
                retry: false,
            },
            Ok(Err(HandlerError::Transient(e))) => Failure {
                reason: format!("transient: {e}"),
                error_type: error_type::TRANSIENT,
                retry: true,
            },
            Err(panic) => {
                Counters::bump(&self.counters.panics);
                Failure {
                    reason: format!("handler panicked: {}", panic_message(&*panic)),
                    error_type: error_type::PANIC,
                    retry: true,
                }
            }
        };
        delivery.record_error_as(failure.error_type, &failure.reason);

        let attempts_left = delivered < self.max_deliver;
        if failure.retry && attempts_left {
            let delay = self.backoff.delay(u64::try_from(delivered).unwrap_or(1));
            delivery.add_event(
                events::RETRY,
                vec![
                    KeyValue::new(semconv::MESSAGING_NATS_DELIVERED, delivered),
                    KeyValue::new(events::RETRY_DELAY, delay.as_secs_f64()),
                    KeyValue::new(events::RETRY_REASON, failure.reason.clone()),
                ],
            );
            if delivery.nak(Some(delay)).await.is_ok() {
                Counters::bump(&self.counters.retried);
                if let Some(m) = delivery.metrics() {
                    m.instruments().worker_retries.add(1, m.attributes());
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
        // A handler that finishes at once needs no timer.
        let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
        if let Poll::Ready(out) = first {
            return out;
        }
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
            delivery.add_event(
                events::DEAD_LETTER,
                vec![KeyValue::new(events::DLQ_REASON, reason.to_owned())],
            );
            if delivery.term().await.is_ok() {
                Counters::bump(&self.counters.dead_lettered);
                if let Some(m) = delivery.metrics() {
                    m.instruments().worker_dead_letters.add(1, m.attributes());
                }
            }
            return;
        };
        let subject = dead_letter.subject_for(delivery.subject.as_str());
        match delivery
            .in_span(dead_letter.send(&self.js, delivery, reason))
            .await
        {
            Ok(ack) => {
                delivery.add_event(
                    events::DEAD_LETTER,
                    vec![
                        KeyValue::new(events::DLQ_SUBJECT, subject),
                        KeyValue::new(events::DLQ_STREAM, ack.stream),
                        KeyValue::new(events::DLQ_REASON, reason.to_owned()),
                    ],
                );
                if delivery.term().await.is_ok() {
                    Counters::bump(&self.counters.dead_lettered);
                    if let Some(m) = delivery.metrics() {
                        m.instruments().worker_dead_letters.add(1, m.attributes());
                    }
                }
            }
            Err(err) => {
                delivery.add_event(
                    events::DEAD_LETTER_FAILED,
                    vec![
                        KeyValue::new(events::DLQ_SUBJECT, subject),
                        KeyValue::new(semconv::EXCEPTION_MESSAGE, err.to_string()),
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
    error_type: &'static str,
    retry: bool,
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
