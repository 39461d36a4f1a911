//! Configuration shared by every instrumented handle: which tracer, meter and
//! propagator to use, what to record, and how to name destinations.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use async_nats::{HeaderMap, Message};
use opentelemetry::global;
use opentelemetry::metrics::Meter;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanBuilder, TraceContextExt, Tracer};
use opentelemetry::{Context, InstrumentationScope, KeyValue};

use crate::destination::{is_temporary, SubjectMapper, TEMPORARY_DESTINATION};
use crate::error::ErrorTypeHook;
use crate::filter::{OperationKind, SpanRules, SubjectFilter};
use crate::names::SpanName;
use crate::propagation::{extract_context, inject_context};
use crate::semconv;

mod builder;

pub use builder::InstrumentationBuilder;

/// Hook adding attributes to `publish`/`request` spans: receives the subject and
/// the caller's headers (before trace context is injected).
pub(crate) type PublishHook =
    Arc<dyn Fn(&str, Option<&HeaderMap>, &mut Vec<KeyValue>) + Send + Sync>;

/// Hook adding attributes to `process` spans: receives the delivered message.
pub(crate) type ProcessHook = Arc<dyn Fn(&Message, &mut Vec<KeyValue>) + Send + Sync>;

/// How a `process` span relates to the producer's context carried by the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProcessParenting {
    /// Child of the producer's span with one link to it (the conventions'
    /// default), plus a link to the span current where processing starts (a
    /// caller's loop span), if any.
    #[default]
    ChildAndLink,
    /// A new root span with one link to the producer's span.
    LinkOnly,
}

/// The id of the next instrumentation built.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder(env!("CARGO_PKG_NAME"))
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_schema_url(semconv::SCHEMA_URL)
        .build()
}

/// Telemetry settings for instrumented NATS handles.
///
/// Cheap to clone (one `Arc`). [`Instrumentation::default`] uses the global tracer
/// provider, meter provider and text-map propagator as they are *when it is built*:
/// install your providers (for example with [`crate::otlp::init`]) before
/// connecting.
#[derive(Clone)]
pub struct Instrumentation {
    inner: Arc<Inner>,
}

struct Inner {
    /// Unique per built instrumentation (names are cached per mapper).
    id: u64,
    tracer: Arc<dyn SpanStarter>,
    tracing: bool,
    meter: Meter,
    instruments: Option<Arc<crate::metrics::Instruments>>,
    publish_time_header: bool,
    propagator: Option<Arc<dyn TextMapPropagator + Send + Sync>>,
    parenting: ProcessParenting,
    mapper: Arc<dyn SubjectMapper>,
    inbox_prefix: String,
    publish_hook: Option<PublishHook>,
    process_hook: Option<ProcessHook>,
    error_type_hook: Option<ErrorTypeHook>,
    body_size: bool,
    /// Headers recorded on spans.
    capture: Option<crate::capture::HeaderCapture>,
    /// Baggage keys allowed across the NATS boundary (`None`: all).
    baggage_allowed: Option<Arc<[String]>>,
    /// Whether allowed baggage entries become span attributes.
    baggage_attributes: bool,
    /// What is traced; `filtering` is false when no rule is set (the fast path).
    spans: SpanRules,
    filtering: bool,
    /// Templates metrics are recorded for.
    metrics_filter: SubjectFilter,
    #[cfg_attr(not(feature = "compression"), allow(dead_code))]
    max_decoded: usize,
    /// The client health instruments, registered on the first connect.
    health: std::sync::OnceLock<Arc<crate::health::HealthRegistry>>,
    /// Where exceptions are logged, when they are.
    exception_logs: Option<crate::exceptions::ExceptionLogs>,
    /// Whether exceptions are span events.
    exception_span_events: bool,
    /// Whether recording spans name the server node.
    server_node: bool,
}

impl fmt::Debug for Instrumentation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instrumentation")
            .field("tracing", &self.inner.tracing)
            .field("metrics", &self.inner.instruments.is_some())
            .field("propagator", &self.inner.propagator)
            .field("parenting", &self.inner.parenting)
            .field("inbox_prefix", &self.inner.inbox_prefix)
            .finish_non_exhaustive()
    }
}

impl Default for Instrumentation {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl Instrumentation {
    /// Starts a builder with the defaults: global providers and propagator, tracing
    /// and metrics on, child-and-link parenting, [`DefaultSubjectMapper`](crate::DefaultSubjectMapper), `_INBOX`.
    pub fn builder() -> InstrumentationBuilder {
        InstrumentationBuilder::default()
    }

    /// Whether spans are created.
    pub fn tracing_enabled(&self) -> bool {
        self.inner.tracing
    }

    /// Whether metrics are recorded.
    pub fn metrics_enabled(&self) -> bool {
        self.inner.instruments.is_some()
    }

    /// The instruments, when metrics are on.
    pub(crate) fn instruments(&self) -> Option<&Arc<crate::metrics::Instruments>> {
        self.inner.instruments.as_ref()
    }

    /// Whether core publishes carry the `Nats-Otel-Published` header.
    pub(crate) fn publish_time_header(&self) -> bool {
        self.inner.publish_time_header
    }

    /// The largest payload a compressed message may decode to.
    #[cfg_attr(not(feature = "compression"), allow(dead_code))]
    pub(crate) fn max_decoded_size(&self) -> usize {
        self.inner.max_decoded
    }

    /// The meter instruments are created from.
    pub fn meter(&self) -> &Meter {
        &self.inner.meter
    }

    /// The client health instruments, registered once for every client connected
    /// with these settings.
    pub(crate) fn health(&self) -> &Arc<crate::health::HealthRegistry> {
        self.inner
            .health
            .get_or_init(|| crate::health::HealthRegistry::new(&self.inner.meter))
    }

    /// Injects `cx` into `headers` through the configured propagator (with only
    /// the allowed baggage, when an allow-list is set).
    pub fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        let allowed;
        let cx = match self.allowed_baggage(cx) {
            Some(filtered) => {
                allowed = filtered;
                &allowed
            }
            None => cx,
        };
        match &self.inner.propagator {
            Some(p) => inject_context(p.as_ref(), cx, headers),
            None => global::get_text_map_propagator(|p| inject_context(p, cx, headers)),
        }
    }

    /// Extracts the producer's context from `headers` through the configured
    /// propagator (an empty context when there is none or it is invalid), keeping
    /// only the allowed baggage when an allow-list is set.
    pub fn extract(&self, headers: &HeaderMap) -> Context {
        let cx = match &self.inner.propagator {
            Some(p) => extract_context(p.as_ref(), headers),
            None => global::get_text_map_propagator(|p| extract_context(p, headers)),
        };
        self.allowed_baggage(&cx).unwrap_or(cx)
    }

    /// Pushes the allowed baggage entries of `cx` as attributes, when asked to.
    pub(crate) fn push_baggage_attributes(&self, cx: &Context, attributes: &mut Vec<KeyValue>) {
        use opentelemetry::baggage::BaggageExt;
        let Some(allowed) = self
            .inner
            .baggage_allowed
            .as_ref()
            .filter(|_| self.inner.baggage_attributes)
        else {
            return;
        };
        attributes.extend(
            cx.baggage()
                .iter()
                .filter(|(key, _)| allowed.iter().any(|a| a == key.as_str()))
                .map(|(key, (value, _))| KeyValue::new(key.clone(), value.clone())),
        );
    }

    /// `cx` with its baggage cut to the allow-list; `None` when nothing is cut.
    fn allowed_baggage(&self, cx: &Context) -> Option<Context> {
        use opentelemetry::baggage::BaggageExt;
        let allowed = self.inner.baggage_allowed.as_ref()?;
        let baggage = cx.baggage();
        if baggage
            .iter()
            .all(|(key, _)| allowed.iter().any(|a| a == key.as_str()))
        {
            return None;
        }
        let kept: opentelemetry::baggage::Baggage = baggage
            .iter()
            .filter(|(key, _)| allowed.iter().any(|a| a == key.as_str()))
            .map(|(key, (value, metadata))| (key.clone(), (value.clone(), metadata.clone())))
            .collect();
        Some(cx.with_cleared_baggage().with_baggage(kept))
    }

    /// The low-cardinality template for `subject`.
    pub fn template<'a>(&self, subject: &'a str) -> Cow<'a, str> {
        if self.is_temporary(subject) {
            return Cow::Borrowed(TEMPORARY_DESTINATION);
        }
        if !is_printable(subject) {
            // async-nats rejects these; never let junk become a span name.
            return Cow::Borrowed("(invalid)");
        }
        self.inner.mapper.template(subject)
    }

    pub(crate) fn is_temporary(&self, subject: &str) -> bool {
        is_temporary(subject, &self.inner.inbox_prefix)
    }

    /// The span name (`{operation} {template}`) of an operation on `subject`,
    /// computed once per operation and only when a span or a metric will use it.
    pub(crate) fn name_if_needed(
        &self,
        operation: &'static str,
        subject: &str,
    ) -> Option<SpanName> {
        if !self.tracing_enabled() && !self.metrics_enabled() {
            return None;
        }
        let id = self.inner.id;
        if let Some(name) = crate::names::cached(id, operation, subject) {
            return Some(name);
        }
        let name = SpanName::new(operation, &self.template(subject));
        crate::names::remember(id, operation, subject, &name);
        Some(name)
    }

    /// Whether `op` on `subject` (template `template`) gets a span: tracing is on
    /// and the span filter, predicate and operation switches let it through.
    pub(crate) fn traces(
        &self,
        op: crate::operation::Op,
        subject: &str,
        template: &str,
        headers: Option<&HeaderMap>,
    ) -> bool {
        self.inner.tracing
            && (!self.inner.filtering || self.inner.spans.traces(op, subject, template, headers))
    }

    /// Whether no publish to `subject` can get a span: tracing is off, or the
    /// `publish` switch or the subject filter rules it out (before any predicate).
    pub(crate) fn never_traces_publish(&self, subject: &str) -> bool {
        !self.inner.tracing
            || (self.inner.filtering
                && self
                    .inner
                    .spans
                    .never_traces(OperationKind::Publish, subject))
    }

    /// The headers recorded on spans, if any are listed.
    pub(crate) fn header_capture(&self) -> Option<&crate::capture::HeaderCapture> {
        self.inner.capture.as_ref()
    }

    /// Whether metrics are recorded for destination template `template`.
    pub(crate) fn meters(&self, template: &str) -> bool {
        self.inner.instruments.is_some() && self.inner.metrics_filter.passes(template)
    }

    /// How `process` spans relate to the producer's context.
    pub(crate) fn parenting(&self) -> ProcessParenting {
        self.inner.parenting
    }

    /// Whether the opt-in body-size attributes are recorded.
    pub(crate) fn body_size_enabled(&self) -> bool {
        self.inner.body_size
    }

    /// Pushes the publish hook's attributes for a `publish`/`request` on `subject`.
    pub(crate) fn push_publish_hook(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        attributes: &mut Vec<KeyValue>,
    ) {
        if let Some(hook) = &self.inner.publish_hook {
            hook(subject, headers, attributes);
        }
    }

    /// Pushes the process hook's attributes for a delivered `message`.
    pub(crate) fn push_process_hook(&self, message: &Message, attributes: &mut Vec<KeyValue>) {
        if let Some(hook) = &self.inner.process_hook {
            hook(message, attributes);
        }
    }

    /// The classification hook for handler errors, if one is set.
    pub(crate) fn error_type_hook(&self) -> Option<&ErrorTypeHook> {
        self.inner.error_type_hook.as_ref()
    }

    /// Where exceptions are logged, if they are.
    pub(crate) fn exception_logs(&self) -> Option<&crate::exceptions::ExceptionLogs> {
        self.inner.exception_logs.as_ref()
    }

    /// Whether recording spans carry the server node's attributes.
    pub(crate) fn server_node_enabled(&self) -> bool {
        self.inner.server_node
    }

    /// Whether exceptions are recorded as span events.
    pub(crate) fn exception_span_events(&self) -> bool {
        self.inner.exception_span_events
    }

    /// Starts a span from `builder` under `parent` with this instrumentation's tracer.
    pub(crate) fn start_span(&self, builder: SpanBuilder, parent: &Context) -> (Context, bool) {
        self.inner.tracer.start_in(builder, parent)
    }

    /// The current context if it carries a valid span (used to keep propagating a
    /// caller's trace while our own tracing is switched off).
    pub(crate) fn ambient_context(&self) -> Option<Context> {
        Context::map_current(|cx| cx.span().span_context().is_valid().then(|| cx.clone()))
    }

    /// Whether the current context carries a valid span.
    pub(crate) fn has_ambient_span(&self) -> bool {
        Context::map_current(|cx| cx.span().span_context().is_valid())
    }
}

/// Whether `subject` is non-empty and free of whitespace and control characters
/// (one pass over the bytes for ASCII subjects, the common case).
fn is_printable(subject: &str) -> bool {
    if subject.is_empty() {
        return false;
    }
    if subject.is_ascii() {
        return subject.bytes().all(|b| b > b' ' && b != 0x7f);
    }
    !subject.contains(|c: char| c.is_whitespace() || c.is_control())
}

/// Starts spans of one tracer straight into a context.
///
/// A `BoxedTracer` boxes each span, and `Context::with_span` boxes it again:
/// kept typed, a provider's recording spans are boxed once. A span that does not
/// record (the sampler dropped it) is not boxed: the context keeps its span
/// context only.
pub(crate) trait SpanStarter: Send + Sync {
    /// Builds the span from `builder` under `parent`; returns its context and
    /// whether it records.
    fn start_in(&self, builder: SpanBuilder, parent: &Context) -> (Context, bool);
}

/// A tracer kept as its own type: see [`SpanStarter`].
pub(crate) struct Typed<T>(pub(crate) T);

impl<T> SpanStarter for Typed<T>
where
    T: Tracer + Send + Sync,
    T::Span: Send + Sync + 'static,
{
    fn start_in(&self, builder: SpanBuilder, parent: &Context) -> (Context, bool) {
        let span = self.0.build_with_context(builder, parent);
        // Asked of the span itself: once in a context, it sits behind a mutex.
        if opentelemetry::trace::Span::is_recording(&span) {
            return (parent.with_span(span), true);
        }
        // A span that does not record does nothing when ended: only its span
        // context is kept (what propagation and children read), so it is not
        // boxed at all.
        let span_context = opentelemetry::trace::Span::span_context(&span).clone();
        drop(span);
        (parent.with_remote_span_context(span_context), false)
    }
}
