//! The one processing type: whatever the source (a core subscription, a JetStream
//! consumer, the `Worker`, a Service endpoint, a KV or Object Store watch), the
//! application gets a [`Delivery`] with the same methods.

use std::fmt::{self, Display};
use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::{FutureExt, Status, TraceContextExt};
use opentelemetry::{Context, ContextGuard, KeyValue};

use crate::compression::{self, DecodeFailure};
use crate::error::{classify, ErrorTypeHook};
use crate::metrics::ProcessTimer;
use crate::operation::OpType;
use crate::semconv;

/// A delivered message with its `process` span.
///
/// Every source hands the application this type: core subscriptions
/// (`Delivery<async_nats::Message>`, the default), JetStream consumers
/// ([`jetstream::Delivery`](crate::jetstream::Delivery), whose message settles with
/// traced `ack`/`nak`/`term`/`progress`), the [`Worker`](crate::jetstream::Worker)'s
/// handler, Service endpoints (`Delivery<service::Request>`, which responds), KV
/// watches ([`kv::Change`](crate::jetstream::kv::Change)) and Object Store watches
/// ([`ObjectChange`](crate::jetstream::object_store::ObjectChange)).
///
/// Run your handler with [`process`](Self::process) (ends the span, records an
/// `Err`), [`in_span`](Self::in_span) (any future, the span stays open) or
/// [`attach`](Self::attach) (synchronous code). Inside, the process span is the
/// current context: messages you publish are its children, and `tracing` spans
/// (with tracing-opentelemetry) nest under it. Dropping the delivery ends the span
/// and records `messaging.process.duration`. It dereferences to the message.
pub struct Delivery<M = async_nats::Message> {
    message: M,
    span: ProcessSpan,
}

impl<M: fmt::Debug> fmt::Debug for Delivery<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("span_context", self.span.context.span().span_context())
            .finish_non_exhaustive()
    }
}

impl<M> Deref for Delivery<M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.message
    }
}

impl<M> Delivery<M> {
    pub(crate) fn new(message: M, span: ProcessSpan) -> Self {
        Self { message, span }
    }

    /// The message (its payload already decoded when it arrived compressed).
    pub fn message(&self) -> &M {
        &self.message
    }

    /// The process span's context (the producer's context when tracing is off).
    pub fn context(&self) -> &Context {
        &self.span.context
    }

    /// The producer's context extracted from the message; it carries no span when
    /// the message had no valid trace context.
    pub fn producer_context(&self) -> &Context {
        &self.span.producer
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

    /// Records a handler failure: `error.type` (from the hook set with
    /// [`with_error_type_hook`](crate::InstrumentationBuilder::with_error_type_hook),
    /// else [`handler_error_type`](crate::handler_error_type)) on the span and on
    /// `messaging.process.duration`, an `exception` event with the message, and an
    /// error status. The first failure recorded sets `error.type`.
    pub fn record_error<E: Display + ?Sized>(&self, error: &E) {
        let error_type = classify(self.span.hook.as_ref(), error);
        self.span.fail(&error_type, error, true);
    }

    /// Records a handler failure like [`record_error`](Self::record_error), with
    /// `error_type` as its `error.type` (keep such values few: they are metric
    /// attributes).
    pub fn record_error_as<E: Display + ?Sized>(&self, error_type: &str, error: &E) {
        self.span.fail(error_type, error, true);
    }

    /// Runs `handler` on the message inside the process span, records an `Err` as
    /// [`record_error`](Self::record_error) does, ends the span and returns the
    /// handler's result.
    pub async fn process<F, Fut, T, E>(self, handler: F) -> Result<T, E>
    where
        F: FnOnce(M) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Display,
    {
        let Delivery { message, span } = self;
        let result = handler(message).with_context(span.context.clone()).await;
        if let Err(error) = &result {
            let error_type = classify(span.hook.as_ref(), error);
            span.fail(&error_type, error, true);
        }
        drop(span);
        result
    }

    /// Splits into the message and the process span's context. The duration metric
    /// is recorded now; the span ends when the last clone of the context is dropped,
    /// or when you end it.
    pub fn into_parts(self) -> (M, Context) {
        let Delivery { message, mut span } = self;
        (message, span.detach())
    }

    /// Why the message's compressed payload could not be decoded: the message is
    /// then delivered as it arrived (still encoded, `Content-Encoding` kept) and its
    /// `process` span carries the error. Check it before trusting the payload.
    #[cfg(feature = "compression")]
    pub fn decode_error(&self) -> Option<&crate::compression::DecodeError> {
        self.decode_failure()
    }

    /// Why the payload could not be decoded, with or without feature `compression`.
    pub(crate) fn decode_failure(&self) -> Option<&DecodeFailure> {
        self.span.decode_error.as_ref()
    }

    /// A delivery of `message` sharing this one's span: failures recorded on either
    /// count once, and only this one ends the span.
    pub(crate) fn share<N>(&mut self, message: N) -> Delivery<N> {
        Delivery {
            message,
            span: self.span.share(),
        }
    }

    /// Adds an event to the process span if it records.
    pub(crate) fn add_event(&self, name: &'static str, attributes: Vec<KeyValue>) {
        let span = self.span.context.span();
        if span.is_recording() {
            span.add_event(name, attributes);
        }
    }
}

/// The first `error.type` recorded for a process span, shared with the views a
/// [`Worker`](crate::jetstream::Worker) handler or a Service request holds.
#[derive(Debug)]
enum ErrorCell {
    Own(OnceLock<String>),
    Shared(Arc<OnceLock<String>>),
}

impl ErrorCell {
    fn cell(&self) -> &OnceLock<String> {
        match self {
            ErrorCell::Own(cell) => cell,
            ErrorCell::Shared(cell) => cell,
        }
    }
}

/// A `process` span and its duration metric, ended (with the first recorded
/// `error.type`) when its owner is dropped.
pub(crate) struct ProcessSpan {
    context: Context,
    producer: Context,
    owns_span: bool,
    timer: Option<ProcessTimer>,
    error: ErrorCell,
    hook: Option<ErrorTypeHook>,
    decode_error: Option<DecodeFailure>,
    exceptions: Exceptions,
}

/// Where a process span's exceptions go.
#[derive(Clone, Debug, Default)]
pub(crate) struct Exceptions {
    /// Log records, when configured and the span is ours.
    pub(crate) logs: Option<crate::exceptions::ExceptionLogs>,
    /// `exception` span events.
    pub(crate) span_events: bool,
}

impl fmt::Debug for ProcessSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessSpan")
            .field("span_context", self.context.span().span_context())
            .field("owns_span", &self.owns_span)
            .finish_non_exhaustive()
    }
}

impl ProcessSpan {
    /// `context` is the process span's (the producer's when not tracing); the
    /// span is ended here only if it records (a span that does not needs no
    /// explicit end: dropping its context is enough).
    pub(crate) fn new(
        (context, producer, owns_span): (Context, Context, bool),
        timer: Option<ProcessTimer>,
        hook: Option<&ErrorTypeHook>,
        exceptions: Exceptions,
    ) -> Self {
        Self {
            context,
            producer,
            owns_span,
            timer,
            error: ErrorCell::Own(OnceLock::new()),
            hook: hook.cloned(),
            decode_error: None,
            exceptions,
        }
    }

    /// Marks the span failed for a payload that could not be decoded.
    pub(crate) fn with_decode_failure(mut self, failure: Option<DecodeFailure>) -> Self {
        if let Some(error) = &failure {
            self.fail(compression::failure_type(error), error, false);
        }
        self.decode_error = failure;
        self
    }

    pub(crate) fn context(&self) -> &Context {
        &self.context
    }

    /// Records a failure: the first `error_type` wins (span at its end, and the
    /// metric); the status always, with an `exception` event if `exception`.
    pub(crate) fn fail<E: Display + ?Sized>(&self, error_type: &str, error: &E, exception: bool) {
        let _ = self.error.cell().set(error_type.to_owned());
        if let Some(logs) = self.exceptions.logs.as_ref().filter(|_| exception) {
            logs.emit(OpType::Process, error_type, &error, &self.context);
        }
        let span = self.context.span();
        if !span.is_recording() {
            return;
        }
        let message = error.to_string();
        if exception && self.exceptions.span_events {
            span.add_event(
                semconv::EXCEPTION_EVENT,
                vec![
                    KeyValue::new(semconv::EXCEPTION_TYPE, error_type.to_owned()),
                    KeyValue::new(semconv::EXCEPTION_MESSAGE, message.clone()),
                ],
            );
        }
        span.set_status(Status::error(message));
    }

    /// A view on the same span: it records failures into the same cell but ends
    /// nothing.
    pub(crate) fn share(&mut self) -> ProcessSpan {
        if let ErrorCell::Own(cell) = &mut self.error {
            let shared = Arc::new(std::mem::take(cell));
            self.error = ErrorCell::Shared(shared);
        }
        let error = match &self.error {
            ErrorCell::Shared(shared) => ErrorCell::Shared(shared.clone()),
            ErrorCell::Own(_) => ErrorCell::Own(OnceLock::new()),
        };
        ProcessSpan {
            context: self.context.clone(),
            producer: self.producer.clone(),
            owns_span: false,
            timer: None,
            error,
            hook: self.hook.clone(),
            decode_error: None,
            exceptions: self.exceptions.clone(),
        }
    }

    /// Records the metric and the recorded `error.type` now and hands over the
    /// span's end.
    fn detach(&mut self) -> Context {
        self.finish(false);
        self.context.clone()
    }

    fn finish(&mut self, end_span: bool) {
        let error_type = self.error.cell().get().cloned();
        if let Some(timer) = self.timer.take() {
            timer.finish(error_type.as_deref());
        }
        if std::mem::take(&mut self.owns_span) {
            let span = self.context.span();
            if let Some(error_type) = error_type {
                if span.is_recording() {
                    span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type));
                }
            }
            if end_span {
                span.end();
            }
        }
    }
}

impl Drop for ProcessSpan {
    fn drop(&mut self) {
        self.finish(true);
    }
}
