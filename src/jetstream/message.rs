//! JetStream messages, traced: async-nats's `jetstream::message` module, whose
//! [`Message`]'s settlement (`ack`, `double_ack`, `nak`, `term`, `progress`) gets a
//! CLIENT span `{operation} {template}`, child of the message's `process` span.
//!
//! Everything of async-nats's module is re-exported here (`PublishMessage`,
//! `StreamMessage`, `Info`, `AckKind` …); [`Message`] replaces theirs.

pub use async_nats::jetstream::message::*;

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;

use super::shared::{clamp, ConsumerShared};
use crate::error::boxed_error_type;
use crate::names::SpanName;
use crate::operation::{Op, Start, Target};
use crate::semconv;

/// A delivered JetStream message whose settlement is traced: `ack`,
/// `double_ack`, `nak`, `term` and `progress` each get a CLIENT span
/// `{operation} {template}` (never named after the `$JS.ACK…` reply subject),
/// child of the message's `process` span. It dereferences to the async-nats
/// message (payload, headers, [`info`](async_nats::jetstream::Message::info), …).
#[derive(Clone)]
pub struct Message {
    pub(crate) inner: async_nats::jetstream::Message,
    pub(crate) shared: Arc<ConsumerShared>,
    /// The process span settle spans are children of.
    pub(crate) process: opentelemetry::Context,
    /// Stream sequence and delivery count, read from the reply subject once on
    /// delivery (when something records them) for the settle span.
    pub(crate) sequence: Option<(u64, i64)>,
}

impl Message {
    /// Stream sequence and delivery count: from the delivery's parse when there
    /// was one, else read from the reply subject now.
    pub(crate) fn stream_position(&self) -> Option<(u64, i64)> {
        self.sequence.or_else(|| {
            let info = super::reply::parse(self.inner.reply.as_deref()?)?;
            Some((info.stream_sequence, info.delivered))
        })
    }

    /// How many times the server has delivered this message (1 when its reply
    /// subject does not say).
    pub(crate) fn delivered(&self) -> i64 {
        self.stream_position().map_or(1, |(_, delivered)| delivered)
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("subject", &self.inner.subject)
            .field("stream", &self.shared.stream)
            .field("consumer", &self.shared.consumer)
            .finish_non_exhaustive()
    }
}

impl Deref for Message {
    type Target = async_nats::jetstream::Message;

    fn deref(&self) -> &async_nats::jetstream::Message {
        &self.inner
    }
}

impl Message {
    /// The untraced async-nats message.
    pub fn inner(&self) -> &async_nats::jetstream::Message {
        &self.inner
    }

    /// Unwraps the untraced async-nats message.
    pub fn into_inner(self) -> async_nats::jetstream::Message {
        self.inner
    }

    /// The name of the consumer that delivered the message.
    pub fn consumer_name(&self) -> &str {
        &self.shared.consumer
    }

    /// The name of the stream the message is stored in.
    pub fn stream_name(&self) -> &str {
        &self.shared.stream
    }

    /// This message's consumer metrics (its process series), when metering.
    pub(crate) fn metrics(&self) -> Option<&crate::metrics::ProcessSeries> {
        self.shared.processing.metrics.as_deref()
    }

    /// Acknowledges the message (`ack {template}` span).
    pub async fn ack(&self) -> Result<(), async_nats::Error> {
        self.ack_with(AckKind::Ack).await
    }

    /// Settles the message as `kind` says (a span named after the kind).
    pub async fn ack_with(&self, kind: AckKind) -> Result<(), async_nats::Error> {
        self.shared
            .settle(self, settle_name(kind), kind, false)
            .await
    }

    /// Acknowledges and waits for the server to confirm (`double_ack {template}`).
    pub async fn double_ack(&self) -> Result<(), async_nats::Error> {
        self.double_ack_with(AckKind::Ack).await
    }

    /// Settles as `kind` says and waits for the server to confirm (`double_ack
    /// {template}` for an ack, else named after the kind).
    pub async fn double_ack_with(&self, kind: AckKind) -> Result<(), async_nats::Error> {
        let name = match kind {
            AckKind::Ack => semconv::settle::DOUBLE_ACK,
            other => settle_name(other),
        };
        self.shared.settle(self, name, kind, true).await
    }

    /// Asks for redelivery, after `delay` if given (`nak {template}` span).
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), async_nats::Error> {
        self.ack_with(AckKind::Nak(delay)).await
    }

    /// Stops redelivery for good (`term {template}` span).
    pub async fn term(&self) -> Result<(), async_nats::Error> {
        self.ack_with(AckKind::Term).await
    }

    /// Tells the server work is ongoing, resetting `ack_wait` (`progress {template}`).
    pub async fn progress(&self) -> Result<(), async_nats::Error> {
        self.ack_with(AckKind::Progress).await
    }
}

/// The settle operation an ack kind is.
fn settle_name(kind: AckKind) -> &'static str {
    match kind {
        AckKind::Ack => semconv::settle::ACK,
        AckKind::Nak(_) => semconv::settle::NAK,
        AckKind::Progress => semconv::settle::PROGRESS,
        AckKind::Next => semconv::settle::ACK,
        AckKind::Term => semconv::settle::TERM,
    }
}

impl ConsumerShared {
    /// Settles `message` with a `{operation} {template}` CLIENT span, child of
    /// its process span.
    pub(crate) async fn settle(
        &self,
        message: &Message,
        operation: &'static str,
        kind: AckKind,
        double: bool,
    ) -> Result<(), async_nats::Error> {
        let index = self.settle.iter().position(|(op, _)| *op == operation);
        let name = match index {
            Some(i) => self.settle[i].1.clone(),
            None => SpanName::new(operation, self.template()),
        };
        let target = Target::subject(self.telemetry.inst(), &name, message.subject.as_str())
            .with_group(Some(self.consumer_value.clone()));
        let op = Op::settle(operation);
        let series = index
            .zip(self.telemetry.inst().instruments())
            .map(|(i, instruments)| {
                self.settle_series[i]
                    .get_or_init(|| self.telemetry.op_series(instruments, op, &target))
                    .clone()
            });
        let op = self.telemetry.start(
            op,
            &target,
            Start::under(&message.process)
                .with_room(5)
                .in_series(series),
            |a| {
                a.push(KeyValue::new(
                    semconv::MESSAGING_NATS_STREAM,
                    self.stream_value.clone(),
                ));
                if let Some((stream, delivered)) = message.stream_position() {
                    a.push(KeyValue::new(
                        semconv::MESSAGING_NATS_STREAM_SEQUENCE,
                        clamp(stream),
                    ));
                    a.push(KeyValue::new(semconv::MESSAGING_NATS_DELIVERED, delivered));
                }
                if let AckKind::Nak(Some(delay)) = kind {
                    a.push(KeyValue::new(
                        semconv::MESSAGING_NATS_NAK_DELAY,
                        delay.as_secs_f64(),
                    ));
                }
            },
        );
        let result = if double {
            message.inner.double_ack_with(kind).await
        } else {
            message.inner.ack_with(kind).await
        };
        op.finish(&result, |err| boxed_error_type(err.as_ref()));
        result
    }
}
