//! The instrumented subscription stream and the message it yields.

use std::fmt::{self, Display};
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use async_nats::Message;
use async_nats::UnsubscribeError;
use futures_util::Stream;
use opentelemetry::trace::{FutureExt, TraceContextExt};
use opentelemetry::{Context, ContextGuard, KeyValue};

use crate::instrumentation::{
    decode_in_place, record_decode_failure, record_exception, DecodeFailure, Instrumentation,
};
use crate::metrics::ProcessTimer;
use crate::names::SpanName;

/// A subscription whose messages each come with their trace context and a
/// `process <template>` span.
///
/// A [`Stream`] of [`Delivery`]. The span starts when a message is handed to you
/// and ends when the [`Delivery`] is processed or dropped. The template is the
/// subscription pattern (`orders.*`), the real subject goes to
/// `messaging.destination.name`.
pub struct Subscriber {
    inner: async_nats::Subscriber,
    inst: Instrumentation,
    name: SpanName,
    group: Option<String>,
    common: Arc<[KeyValue]>,
    metric_attributes: Arc<[KeyValue]>,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("template", &self.name.template())
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    pub(crate) fn new(
        inner: async_nats::Subscriber,
        subject: &str,
        group: Option<String>,
        inst: Instrumentation,
        common: Arc<[KeyValue]>,
        metric_common: Arc<[KeyValue]>,
    ) -> Self {
        let name = SpanName::new(crate::semconv::operation::PROCESS, &inst.template(subject));
        let metric_attributes = crate::metrics::attributes(
            &metric_common,
            crate::semconv::operation::PROCESS,
            crate::semconv::operation_type::PROCESS,
            name.template_value(),
            group.as_deref(),
        )
        .into();
        Self {
            inner,
            inst,
            name,
            group,
            common,
            metric_attributes,
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
        let mut all: Vec<KeyValue> = self.metric_attributes.to_vec();
        all.extend(crate::metrics::bounded_extra(attributes, &all));
        self.metric_attributes = all.into();
        self
    }

    /// The destination template of this subscription.
    pub fn template(&self) -> &str {
        self.name.template()
    }

    /// The queue group, if this is a queue subscription.
    pub fn queue_group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// Unsubscribes immediately; messages already buffered are still yielded.
    pub async fn unsubscribe(&mut self) -> Result<(), UnsubscribeError> {
        self.inner.unsubscribe().await
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
        let (compressed, decode_error) = decode_in_place(&self.inst, &mut message);
        let mut extra = Vec::new();
        if let Some(compressed) = compressed.filter(|_| self.inst.tracing_enabled()) {
            compressed.push_attributes(&mut extra);
        }
        let (context, producer) = self.inst.start_process(
            &message,
            self.name.name(),
            &self.name,
            self.group.as_deref(),
            &self.common,
            extra,
        );
        record_decode_failure(&context, decode_error.as_ref());
        let published = self
            .inst
            .metrics_enabled()
            .then_some(message.headers.as_ref())
            .flatten()
            .and_then(|h| h.get(crate::metrics::published_header()))
            .and_then(|v| v.as_str().parse::<i128>().ok());
        Delivery {
            message,
            producer,
            span: SpanEnd {
                owns_span: self.inst.tracing_enabled(),
                context,
            },
            timer: ProcessTimer::start(self.inst.instruments(), &self.metric_attributes, published),
            decode_error,
        }
    }
}

impl Stream for Subscriber {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Delivery>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(message)) => Poll::Ready(Some(self.deliver(message))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Ends the process span when the delivery is done with, whichever way.
pub(crate) struct SpanEnd {
    pub(crate) owns_span: bool,
    pub(crate) context: Context,
}

impl Drop for SpanEnd {
    fn drop(&mut self) {
        if self.owns_span {
            self.context.span().end();
        }
    }
}

/// A delivered message with its `process` span.
///
/// Run your handler with [`process`](Self::process) (ends the span, marks errors),
/// [`in_span`](Self::in_span) (any future, span stays open) or
/// [`attach`](Self::attach) (synchronous code). Inside, the process span is the
/// current context: messages you publish are its children, and `tracing` spans
/// (with tracing-opentelemetry) nest under it. Dropping the delivery ends the span.
pub struct Delivery {
    message: Message,
    producer: Context,
    span: SpanEnd,
    timer: Option<ProcessTimer>,
    #[cfg_attr(not(feature = "compression"), allow(dead_code))]
    decode_error: Option<DecodeFailure>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.message.subject)
            .field(
                "span_context",
                &self.span.context.span().span_context().clone(),
            )
            .finish_non_exhaustive()
    }
}

impl Deref for Delivery {
    type Target = Message;

    fn deref(&self) -> &Message {
        &self.message
    }
}

impl Delivery {
    /// The message (its payload already decoded when it arrived compressed).
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// Why the message's compressed payload could not be decoded: the message is
    /// then delivered as it arrived (still encoded, `Content-Encoding` kept) and
    /// its `process` span carries the error. Check it before trusting the payload.
    #[cfg(feature = "compression")]
    pub fn decode_error(&self) -> Option<&crate::compression::DecodeError> {
        self.decode_error.as_ref()
    }

    /// The process span's context (the producer's context when tracing is off).
    pub fn context(&self) -> &Context {
        &self.span.context
    }

    /// The producer's context extracted from the message headers; carries no span
    /// when the message had no valid trace context.
    pub fn producer_context(&self) -> &Context {
        &self.producer
    }

    /// Makes the process span current until the guard is dropped (synchronous code).
    pub fn attach(&self) -> ContextGuard {
        self.span.context.clone().attach()
    }

    /// Runs `future` with the process span as its current context. The span stays
    /// open; it ends when the delivery is dropped.
    pub async fn in_span<F: Future>(&self, future: F) -> F::Output {
        future.with_context(self.span.context.clone()).await
    }

    /// Records a handler failure on the process span: `error.type` (the error's
    /// type name, see [`handler_error_type`]), an `exception` event with its message, and an error status.
    pub fn record_error<E: Display + ?Sized>(&self, error: &E) {
        let error_type = handler_error_type::<E>();
        if let Some(timer) = &self.timer {
            timer.fail(&error_type);
        }
        record_exception(&self.span.context, &error_type, error.to_string());
    }

    /// Runs `handler` on the message inside the process span, records an `Err` as a
    /// failure, ends the span and returns the handler's result.
    pub async fn process<F, Fut, T, E>(self, handler: F) -> Result<T, E>
    where
        F: FnOnce(Message) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Display,
    {
        let Delivery {
            message,
            span,
            timer,
            ..
        } = self;
        let result = handler(message).with_context(span.context.clone()).await;
        if let Err(error) = &result {
            let error_type = handler_error_type::<E>();
            if let Some(timer) = &timer {
                timer.fail(&error_type);
            }
            record_exception(&span.context, &error_type, error.to_string());
        }
        drop(timer);
        drop(span);
        result
    }

    /// Splits into the message and the process span's context; the span ends when
    /// the last clone of that context is dropped, or when you end it.
    pub fn into_parts(self) -> (Message, Context) {
        let Delivery { message, span, .. } = self;
        let mut span = span;
        span.owns_span = false;
        (message, span.context.clone())
    }
}

/// The `error.type` recorded for a handler error of type `E`: its full type name
/// (`std::io::error::Error`), or for generic types the name with module paths
/// dropped (`Box<dyn Error + Send + Sync>`), which stays readable.
pub fn handler_error_type<E: ?Sized>() -> String {
    let full = std::any::type_name::<E>();
    if !full.contains('<') {
        return full.to_owned();
    }
    let mut out = String::with_capacity(full.len());
    let mut word = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            out.push_str(word.rsplit("::").next().unwrap_or_default());
            word.clear();
            out.push(c);
        }
    }
    out.push_str(word.rsplit("::").next().unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::handler_error_type;

    #[test]
    fn handler_error_types_are_readable() {
        assert_eq!(
            handler_error_type::<std::io::Error>(),
            "std::io::error::Error"
        );
        assert_eq!(
            handler_error_type::<Box<dyn std::error::Error + Send + Sync>>(),
            "Box<dyn Error + Send + Sync>"
        );
        assert_eq!(handler_error_type::<Vec<String>>(), "Vec<String>");
    }
}
