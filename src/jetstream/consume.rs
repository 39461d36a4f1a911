//! Delivering a JetStream message: its `process` span and metrics (a traced
//! [`Message`](super::Message) in a [`Delivery`]), and [`Messages`], the stream of
//! deliveries over any pull, push or ordered consumer's messages.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::Stream;
use opentelemetry::KeyValue;

use super::shared::{clamp, ConsumerShared};
use crate::compression::decode_in_place;
use crate::operation::Body;
use crate::semconv;

/// A JetStream message with its `process` span; dereferences to [`Message`].
pub type Delivery = crate::Delivery<Message>;

use super::message::Message;

impl ConsumerShared {
    pub(crate) fn deliver(
        self: &Arc<Self>,
        mut message: async_nats::jetstream::Message,
    ) -> Delivery {
        let telemetry = &self.telemetry;
        let inst = telemetry.inst();
        let (compressed, decode_error) = decode_in_place(inst, &mut message.message);
        let info = if inst.tracing_enabled() || inst.metrics_enabled() {
            message
                .reply
                .as_deref()
                .and_then(super::reply::parse)
                .map(|info| Sequence {
                    stream: info.stream_sequence,
                    consumer: info.consumer_sequence,
                    delivered: info.delivered,
                    pending: info.pending,
                    age: crate::metrics::age_of(info.published),
                })
        } else {
            None
        };
        let mut age = None;
        if let Some(info) = &info {
            age = info.age;
            if let (Some(process), Some(health)) = (&self.processing.metrics, &self.health) {
                if let Some(age) = info.age {
                    let age = age.as_secs_f64();
                    process.queue_wait(age);
                    health.lag(age);
                }
                health.pending(info.pending);
            }
        }
        let body = Body {
            size: message.payload.len(),
            compressed,
        };
        let span = telemetry
            .start_process(
                &self.processing,
                Some(message.subject.as_str()),
                message.headers.as_ref(),
                Some(&message.message),
                age,
                13,
                |a| self.push_process_attributes(a, &message, info.as_ref(), body),
            )
            .with_decode_failure(decode_error);
        let message = Message {
            process: span.context().clone(),
            inner: message,
            shared: self.clone(),
            sequence: info.map(|i| (i.stream, i.delivered)),
        };
        crate::Delivery::new(message, span)
    }

    /// Pushes what a recording `process` span adds: the consumer's and the
    /// message's attributes.
    fn push_process_attributes(
        &self,
        attributes: &mut Vec<KeyValue>,
        message: &async_nats::jetstream::Message,
        info: Option<&Sequence>,
        body: Body,
    ) {
        attributes.push(KeyValue::new(
            semconv::MESSAGING_NATS_STREAM,
            self.stream_value.clone(),
        ));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_NATS_CONSUMER,
            self.consumer_value.clone(),
        ));
        let headers = message.headers.as_ref();
        if let Some(info) = info {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_STREAM_SEQUENCE,
                clamp(info.stream),
            ));
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_CONSUMER_SEQUENCE,
                clamp(info.consumer),
            ));
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_DELIVERED,
                info.delivered,
            ));
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_PENDING,
                clamp(info.pending),
            ));
            if let Some(wait) = info.age {
                attributes.push(KeyValue::new(
                    semconv::MESSAGING_NATS_QUEUE_WAIT,
                    wait.as_secs_f64(),
                ));
            }
            let has_msg_id =
                headers.is_some_and(|h| h.get(async_nats::header::NATS_MESSAGE_ID).is_some());
            if !has_msg_id {
                attributes.push(KeyValue::new(
                    semconv::MESSAGING_MESSAGE_ID,
                    info.stream.to_string(),
                ));
            }
        }
        self.telemetry
            .push_message_attributes(attributes, headers, body);
    }
}

/// Where a delivered message sits in its stream and consumer.
#[derive(Clone, Copy)]
struct Sequence {
    stream: u64,
    consumer: u64,
    delivered: i64,
    pending: u64,
    /// Time since the stream stored it (`None` if the clocks disagree).
    age: Option<Duration>,
}

/// A stream of traced deliveries over any JetStream message stream (pull, push or
/// ordered consumer).
pub struct Messages<S> {
    inner: S,
    shared: Arc<ConsumerShared>,
}

impl<S> fmt::Debug for Messages<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Messages")
            .field("template", &self.shared.template())
            .finish_non_exhaustive()
    }
}

impl<S> Messages<S> {
    pub(crate) fn new(inner: S, shared: Arc<ConsumerShared>) -> Self {
        Self { inner, shared }
    }

    /// The async-nats stream the deliveries come from.
    pub(crate) fn source(&self) -> &S {
        &self.inner
    }
}

impl<S, E> Stream for Messages<S>
where
    S: Stream<Item = Result<async_nats::jetstream::Message, E>> + Unpin,
{
    type Item = Result<Delivery, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Some(Ok(self.shared.deliver(message)))),
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
