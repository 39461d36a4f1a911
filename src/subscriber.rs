//! The instrumented subscription stream.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use async_nats::Message;
use async_nats::UnsubscribeError;
use futures_util::Stream;
use opentelemetry::KeyValue;

use crate::compression::decode_in_place;
use crate::delivery::Delivery;
use crate::health::EventCounters;
use crate::operation::{Body, Processing};
use crate::subscriptions::ActiveSubscription;
use crate::telemetry::Telemetry;

/// A subscription whose messages each come with their trace context and a
/// `process <template>` span.
///
/// A [`Stream`] of [`Delivery`]. The span starts when a message is handed to you
/// and ends when the [`Delivery`] is processed or dropped. The template is the
/// subscription pattern (`orders.*`), the real subject goes to
/// `messaging.destination.name`.
pub struct Subscriber {
    inner: async_nats::Subscriber,
    telemetry: Telemetry,
    processing: Processing,
    group: Option<String>,
    active: ActiveSubscription,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("template", &self.processing.template())
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    pub(crate) fn new(
        inner: async_nats::Subscriber,
        subject: &str,
        group: Option<String>,
        telemetry: Telemetry,
        events: Option<&Arc<EventCounters>>,
    ) -> Self {
        let group_value = group.as_deref().map(crate::names::attribute_value);
        let template = telemetry.inst().template(subject);
        let active =
            ActiveSubscription::start(&telemetry, events, &inner, &template, group_value.as_ref());
        let processing = telemetry.processing(&template, group_value);
        Self {
            inner,
            telemetry,
            processing,
            group,
            active,
        }
    }

    /// Adds attributes to this subscription's metrics (a tenant, a region). They
    /// are fixed for the subscription's lifetime, so they add at most one series
    /// per subscription; at most 4 are kept, values are cut to 64 bytes, and keys
    /// the crate sets itself are ignored.
    pub fn with_metric_attributes<I>(mut self, attributes: I) -> Self
    where
        I: IntoIterator<Item = KeyValue>,
    {
        self.processing = self.processing.with_metric_attributes(attributes);
        self
    }

    /// The destination template of this subscription.
    pub fn template(&self) -> &str {
        self.processing.template()
    }

    /// The queue group, if this is a queue subscription.
    pub fn queue_group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// Unsubscribes immediately; messages already buffered are still yielded.
    pub async fn unsubscribe(&mut self) -> Result<(), UnsubscribeError> {
        self.inner.unsubscribe().await?;
        self.active.end();
        Ok(())
    }

    /// Unsubscribes after `unsub_after` more messages.
    pub async fn unsubscribe_after(&mut self, unsub_after: u64) -> Result<(), UnsubscribeError> {
        self.inner.unsubscribe_after(unsub_after).await
    }

    /// Stops new messages and lets the buffered ones drain through the stream.
    pub async fn drain(&mut self) -> Result<(), UnsubscribeError> {
        self.inner.drain().await
    }

    /// Wraps a received message the way the stream does (extract context, start the
    /// `process` span).
    fn deliver(&self, mut message: Message) -> Delivery {
        let telemetry = &self.telemetry;
        let inst = telemetry.inst();
        let (compressed, decode_error) = decode_in_place(inst, &mut message);
        let body = Body {
            size: message.payload.len(),
            compressed,
        };
        let age = inst
            .metrics_enabled()
            .then_some(message.headers.as_ref())
            .flatten()
            // One pass over the few headers, no hashing (as for `traceparent`).
            .and_then(|h| crate::propagation::header_str(h, crate::metrics::PUBLISHED_HEADER))
            .and_then(|v| v.parse::<i128>().ok())
            .and_then(crate::metrics::age_of);
        let span = telemetry
            .start_process(
                &self.processing,
                Some(message.subject.as_str()),
                message.headers.as_ref(),
                Some(&message),
                age,
                5,
                |a| telemetry.push_message_attributes(a, message.headers.as_ref(), body),
            )
            .with_decode_failure(decode_error);
        Delivery::new(message, span)
    }
}

impl Stream for Subscriber {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Delivery>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(message)) => Poll::Ready(Some(self.deliver(message))),
            Poll::Ready(None) => {
                self.active.end();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
