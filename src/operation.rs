//! The telemetry contract in one place: every instrumented operation starts here.
//!
//! Core NATS, JetStream, KV, Object Store, the Service API and the Worker all
//! describe what they do as an [`Op`] on a [`Target`] and start it through
//! [`Telemetry`](crate::telemetry::Telemetry). From those two, identically for spans
//! and metrics, come the name (`{operation} {template}`), the span kind that
//! matches the operation type, and the attributes. Only what samplers
//! conventionally read goes into the span builder; everything else is computed
//! once the sampler decided to record, so an unsampled message costs little more
//! than its `traceparent`. Outcomes are recorded by [`Operation::fail`] /
//! [`Operation::succeed`] (client operations) and by the processing type
//! ([`crate::Delivery`]).

use std::fmt::{self, Display};
use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::trace::{Link, SpanContext, SpanKind, SpanRef, Status, TraceContextExt};
use opentelemetry::{Context, KeyValue, Value};

use crate::compression::Compressed;
use crate::instrumentation::Instrumentation;
use crate::metrics::{OpSeries, OpTimer, ProcessSeries};
use crate::names::SpanName;
use crate::semconv;

/// `messaging.operation.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpType {
    Send,
    Receive,
    Process,
    Settle,
}

impl OpType {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            OpType::Send => semconv::operation_type::SEND,
            OpType::Receive => semconv::operation_type::RECEIVE,
            OpType::Process => semconv::operation_type::PROCESS,
            OpType::Settle => semconv::operation_type::SETTLE,
        }
    }
}

/// One kind of messaging operation: `messaging.operation.name`, its
/// `messaging.operation.type` where the conventions define one, and so its kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Op {
    pub(crate) name: &'static str,
    pub(crate) ty: Option<OpType>,
    /// A send whose context goes into the message (PRODUCER, else CLIENT).
    injects: bool,
}

impl Op {
    /// Sends a message carrying this operation's context (PRODUCER).
    pub(crate) const fn send(name: &'static str) -> Self {
        Self {
            name,
            ty: Some(OpType::Send),
            injects: true,
        }
    }

    /// Sends a message that carries no context of ours (CLIENT).
    pub(crate) const fn send_without_context(name: &'static str) -> Self {
        Self {
            name,
            ty: Some(OpType::Send),
            injects: false,
        }
    }

    /// Reads from the server (CLIENT).
    pub(crate) const fn receive(name: &'static str) -> Self {
        Self {
            name,
            ty: Some(OpType::Receive),
            injects: false,
        }
    }

    /// Settles a delivered message (CLIENT).
    pub(crate) const fn settle(name: &'static str) -> Self {
        Self {
            name,
            ty: Some(OpType::Settle),
            injects: false,
        }
    }

    /// A client call the conventions give no operation type (CLIENT).
    pub(crate) const fn call(name: &'static str) -> Self {
        Self {
            name,
            ty: None,
            injects: false,
        }
    }

    /// The span kind the conventions pair with this operation type.
    pub(crate) fn kind(self) -> SpanKind {
        match self.ty {
            Some(OpType::Send) if self.injects => SpanKind::Producer,
            Some(OpType::Process) => SpanKind::Consumer,
            _ => SpanKind::Client,
        }
    }
}

/// Handling one delivered message (CONSUMER).
pub(crate) const PROCESS: Op = Op {
    name: semconv::operation::PROCESS,
    ty: Some(OpType::Process),
    injects: false,
};
/// A core or JetStream publish.
pub(crate) const PUBLISH: Op = Op::send(semconv::operation::PUBLISH);
/// A request whose reply is awaited.
pub(crate) const REQUEST: Op = Op::send(semconv::operation::REQUEST);
/// Pulling messages from a JetStream consumer.
pub(crate) const RECEIVE: Op = Op::receive(semconv::operation::RECEIVE);

/// What an operation acts on.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    /// `{operation} {template}`: the span name and the destination template.
    pub(crate) name: &'a SpanName,
    /// `messaging.destination.name`, the real destination, when it is not the
    /// template itself.
    pub(crate) destination: Option<&'a str>,
    /// An inbox: temporary and anonymous.
    pub(crate) temporary: bool,
    /// `messaging.consumer.group.name`.
    pub(crate) group: Option<Value>,
}

impl<'a> Target<'a> {
    /// A subject named `name` (whose template ends it).
    pub(crate) fn subject(inst: &Instrumentation, name: &'a SpanName, subject: &'a str) -> Self {
        Self {
            name,
            destination: Some(subject),
            temporary: inst.is_temporary(subject),
            group: None,
        }
    }

    /// A destination whose name is its template (a bucket, a stream).
    pub(crate) fn named(name: &'a SpanName) -> Self {
        Self {
            name,
            destination: None,
            temporary: false,
            group: None,
        }
    }

    /// With `messaging.consumer.group.name`.
    pub(crate) fn with_group(mut self, group: Option<Value>) -> Self {
        self.group = group;
        self
    }
}

/// Where a source's messages are processed: the `process {template}` name, the
/// consumer group, and the process metrics' series (when metering), built once
/// per subscription, consumer, endpoint or watch.
#[derive(Debug, Clone)]
pub(crate) struct Processing {
    pub(crate) name: SpanName,
    pub(crate) group: Option<Value>,
    pub(crate) metrics: Option<Arc<ProcessSeries>>,
}

impl Processing {
    /// With `extra` attributes on the process metrics (bounded, see
    /// [`bounded_extra`](crate::metrics::bounded_extra)).
    pub(crate) fn with_metric_attributes<I>(mut self, extra: I) -> Self
    where
        I: IntoIterator<Item = KeyValue>,
    {
        if let Some(series) = &self.metrics {
            let mut all: Vec<KeyValue> = series.attributes().to_vec();
            all.extend(crate::metrics::bounded_extra(extra, &all));
            self.metrics = Some(ProcessSeries::new(series.instruments_arc(), all.into()));
        }
        self
    }

    /// The destination template.
    pub(crate) fn template(&self) -> &str {
        self.name.template()
    }

    /// The target of a message on `subject` (the template itself when `None`).
    pub(crate) fn target<'a>(
        &'a self,
        inst: &Instrumentation,
        subject: Option<&'a str>,
    ) -> Target<'a> {
        Target {
            name: &self.name,
            destination: subject,
            temporary: subject.is_some_and(|s| inst.is_temporary(s)),
            group: self.group.clone(),
        }
    }
}

/// Where a span starts, what it links to, and how many attributes it may add once
/// it records.
pub(crate) struct Start<'a> {
    pub(crate) parent: Option<&'a Context>,
    pub(crate) links: Vec<Link>,
    /// A link added only once the span records: one that samplers need not see
    /// (the parent's own span context).
    pub(crate) late_link: Option<SpanContext>,
    pub(crate) time: Option<SystemTime>,
    pub(crate) room: usize,
    /// The operation's metric series, when its caller keeps it (else looked up).
    pub(crate) series: Option<Arc<OpSeries>>,
    /// The message's headers, for a span predicate to see.
    pub(crate) headers: Option<&'a async_nats::HeaderMap>,
}

impl Default for Start<'_> {
    fn default() -> Self {
        Self {
            parent: None,
            links: Vec::new(),
            late_link: None,
            time: None,
            room: 4,
            series: None,
            headers: None,
        }
    }
}

impl<'a> Start<'a> {
    /// Under `parent` instead of the current context.
    #[inline]
    pub(crate) fn under(parent: &'a Context) -> Self {
        Self {
            parent: Some(parent),
            ..Self::default()
        }
    }

    /// Room for `n` attributes added once the span records (`messaging.client.id`
    /// included), so a recording span does not grow its attribute buffer. An
    /// unsampled span allocates the room too: keep it tight (the buffer should stay
    /// under the allocator's 1 KiB per-thread cache).
    #[inline]
    pub(crate) fn with_room(mut self, n: usize) -> Self {
        self.room = n;
        self
    }

    /// Linking `links`.
    #[inline]
    pub(crate) fn with_links(mut self, links: Vec<Link>) -> Self {
        self.links = links;
        self
    }

    /// Linking `span_context` too, once the span records (the sampler does not
    /// see it: for a link that repeats the parent, which it does see).
    #[inline]
    pub(crate) fn with_late_link(mut self, span_context: Option<SpanContext>) -> Self {
        self.late_link = span_context;
        self
    }

    /// With the message's `headers` (what a span predicate sees).
    #[inline]
    pub(crate) fn with_headers(mut self, headers: Option<&'a async_nats::HeaderMap>) -> Self {
        self.headers = headers;
        self
    }

    /// Recording its metrics in `series` (kept by the caller).
    #[inline]
    pub(crate) fn in_series(mut self, series: Option<Arc<OpSeries>>) -> Self {
        self.series = series;
        self
    }

    /// Started at `time` (an operation recorded after it happened).
    pub(crate) fn at(mut self, time: SystemTime) -> Self {
        self.time = Some(time);
        self
    }
}

/// A message's payload as the conventions' opt-in size attributes see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Body {
    /// Uncompressed size.
    pub(crate) size: usize,
    /// Encoding and size on the wire, when it travelled compressed.
    pub(crate) compressed: Option<Compressed>,
}

impl Body {
    pub(crate) fn plain(size: usize) -> Self {
        Self {
            size,
            compressed: None,
        }
    }

    /// A payload of `size` bytes on the wire, or of the original size when it
    /// was compressed.
    pub(crate) fn sent(size: usize, compressed: Option<(usize, Compressed)>) -> Self {
        match compressed {
            Some((original, compressed)) => Self {
                size: original,
                compressed: Some(compressed),
            },
            None => Self::plain(size),
        }
    }
}

/// One client operation in flight: its span (when tracing) and duration timer
/// (when metering). Ends exactly once: through [`succeed`](Self::succeed) or
/// [`fail`](Self::fail), or, when dropped unfinished, with the span ended, a send
/// counted, and no duration recorded (the outcome is unknown).
pub(crate) struct Operation {
    cx: Option<Context>,
    /// Whether the span records: a span that does not needs no explicit end
    /// (dropping its context is enough, and saves a clock read and a lock).
    records: bool,
    timer: Option<OpTimer>,
    sends: bool,
    /// Where a failure is logged (traced operations, when exceptions are logs).
    exceptions: Option<(crate::exceptions::ExceptionLogs, OpType)>,
}

impl fmt::Debug for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operation")
            .field("traced", &self.cx.is_some())
            .field("metered", &self.timer.is_some())
            .finish()
    }
}

impl Operation {
    /// An operation with span context `cx` (recording or not) and `timer`; a
    /// `send` counts its message when it ends.
    pub(crate) fn new(
        cx: Option<Context>,
        records: bool,
        timer: Option<OpTimer>,
        sends: bool,
    ) -> Self {
        Self {
            cx,
            records,
            timer,
            sends,
            exceptions: None,
        }
    }

    /// Logs a failure of this operation, of type `ty`, through `logs` (only
    /// when it is traced).
    pub(crate) fn with_exception_logs(
        mut self,
        logs: Option<&crate::exceptions::ExceptionLogs>,
        ty: Option<OpType>,
    ) -> Self {
        if let (Some(logs), Some(ty), true) = (logs, ty, self.cx.is_some()) {
            self.exceptions = Some((logs.clone(), ty));
        }
        self
    }

    /// An operation that records nothing.
    pub(crate) fn none() -> Self {
        Self {
            cx: None,
            records: false,
            timer: None,
            sends: false,
            exceptions: None,
        }
    }

    /// Whether ending this operation would record nothing: no recording span,
    /// no metric, no exception log. Such an operation can be dropped as soon as
    /// its context has been injected.
    pub(crate) fn is_inert(&self) -> bool {
        !self.records && self.timer.is_none() && self.exceptions.is_none()
    }

    /// The span's context, when tracing.
    pub(crate) fn context(&self) -> Option<&Context> {
        self.cx.as_ref()
    }

    /// The span, if it records.
    pub(crate) fn recording(&self) -> Option<SpanRef<'_>> {
        self.cx
            .as_ref()
            .filter(|_| self.records)
            .map(TraceContextExt::span)
    }

    /// Adds the attributes `push` pushes to the span if it records (computed
    /// only then).
    pub(crate) fn record(&self, push: impl FnOnce(&mut Vec<KeyValue>)) {
        if let Some(span) = self.recording() {
            set_attributes(&span, push);
        }
    }

    /// Links `span_context` (valid ones only) to the span if it records.
    pub(crate) fn link(&self, span_context: SpanContext) {
        if span_context.is_valid() {
            if let Some(span) = self.recording() {
                span.add_link(span_context, Vec::new());
            }
        }
    }

    /// Ends the operation as a success.
    pub(crate) fn succeed(mut self) {
        self.end(None, None);
    }

    /// Ends the operation as of `ended` (an earlier moment), failed when
    /// `failure` gives an `error.type` and a message.
    pub(crate) fn end_at(mut self, ended: SystemTime, failure: Option<(&str, &dyn Display)>) {
        self.end(failure, Some(ended));
    }

    /// Ends the operation as failed with `error_type` (from the documented
    /// vocabulary) and `message` as the status description.
    pub(crate) fn fail(mut self, error_type: &str, message: &dyn Display) {
        self.end(Some((error_type, message)), None);
    }

    /// Ends the operation with `result`, failed with `error_type(err)` on `Err`.
    pub(crate) fn finish<T, E: Display>(
        self,
        result: &Result<T, E>,
        error_type: impl FnOnce(&E) -> String,
    ) {
        match result {
            Ok(_) => self.succeed(),
            Err(err) => self.fail(&error_type(err), err),
        }
    }

    fn end(&mut self, failure: Option<(&str, &dyn Display)>, ended: Option<SystemTime>) {
        let error_type = failure.map(|(error_type, _)| error_type);
        if let Some(timer) = self.timer.take() {
            if self.sends {
                timer.count_sent(error_type);
            }
            timer.finish(error_type, ended);
        }
        if let Some(cx) = self.cx.take() {
            if let (Some((logs, ty)), Some((error_type, message))) = (&self.exceptions, failure) {
                logs.emit(*ty, error_type, message, &cx);
            }
            if self.records {
                if let Some((error_type, message)) = failure {
                    record_failure(&cx, error_type, message);
                }
                match ended {
                    Some(ended) => cx.span().end_with_timestamp(ended),
                    None => cx.span().end(),
                }
            }
        }
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            // Abandoned before its outcome: the message went out, how it fared is unknown.
            if self.sends {
                timer.count_sent(None);
            }
        }
        if let Some(cx) = self.cx.take() {
            if self.records {
                cx.span().end();
            }
        }
    }
}

thread_local! {
    /// The buffer recording attributes are gathered in before they go to a span
    /// under one lock (kept per thread: no allocation per span).
    static SCRATCH: std::cell::Cell<Vec<KeyValue>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Sets the attributes `push` pushes on `span`, through the per-thread buffer.
pub(crate) fn set_attributes(span: &SpanRef<'_>, push: impl FnOnce(&mut Vec<KeyValue>)) {
    // Taken, not borrowed: `push` may run hooks that start spans themselves.
    let mut attributes = SCRATCH.try_with(std::cell::Cell::take).unwrap_or_default();
    push(&mut attributes);
    span.set_attributes(attributes.drain(..));
    let _ = SCRATCH.try_with(|scratch| scratch.set(attributes));
}

/// Records a failure on the span in `cx`: `error.type` and an error status.
pub(crate) fn record_failure(cx: &Context, error_type: &str, message: &dyn Display) {
    let span = cx.span();
    if !span.is_recording() {
        return;
    }
    span.set_attribute(KeyValue::new(semconv::ERROR_TYPE, error_type.to_owned()));
    span.set_status(Status::error(message.to_string()));
}
