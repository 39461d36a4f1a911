//! Configuration shared by every instrumented handle: which tracer, meter and
//! propagator to use, what to record, and how to name destinations.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use async_nats::{HeaderMap, Message};
use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanBuilder, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, InstrumentationScope, KeyValue};

use crate::destination::{
    is_temporary, DefaultSubjectMapper, SubjectMapper, DEFAULT_INBOX_PREFIX, TEMPORARY_DESTINATION,
};
use crate::error::{ErrorTypeHook, HandlerFailure};
use crate::filter::{
    EnvSettings, FilterError, Kinds, OperationKind, SpanPredicate, SpanRequest, SpanRules,
    SubjectFilter,
};
use crate::names::SpanName;
use crate::propagation::{extract_context, inject_context};
use crate::semconv;

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

fn scope() -> InstrumentationScope {
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
    tracer: BoxedTracer,
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
    /// What is traced; `filtering` is false when no rule is set (the fast path).
    spans: SpanRules,
    filtering: bool,
    /// Templates metrics are recorded for.
    metrics_filter: SubjectFilter,
    #[cfg_attr(not(feature = "compression"), allow(dead_code))]
    max_decoded: usize,
    /// The client health instruments, registered on the first connect.
    health: std::sync::OnceLock<Arc<crate::health::HealthRegistry>>,
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
    /// and metrics on, child-and-link parenting, [`DefaultSubjectMapper`], `_INBOX`.
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

    /// Starts a span from `builder` under `parent` with this instrumentation's tracer.
    pub(crate) fn start_span(&self, builder: SpanBuilder, parent: &Context) -> Context {
        let span = self.inner.tracer.build_with_context(builder, parent);
        parent.with_span(span)
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

/// Builder for [`Instrumentation`].
#[must_use]
pub struct InstrumentationBuilder {
    tracer: Option<BoxedTracer>,
    tracing: bool,
    meter: Option<Meter>,
    metrics: bool,
    publish_time_header: bool,
    propagator: Option<Arc<dyn TextMapPropagator + Send + Sync>>,
    parenting: ProcessParenting,
    mapper: Arc<dyn SubjectMapper>,
    inbox_prefix: String,
    publish_hook: Option<PublishHook>,
    process_hook: Option<ProcessHook>,
    error_type_hook: Option<ErrorTypeHook>,
    body_size: Option<bool>,
    span_filter: Option<SubjectFilter>,
    span_predicate: Option<SpanPredicate>,
    disabled: Option<Kinds>,
    metrics_filter: Option<SubjectFilter>,
    capture: Option<crate::capture::HeaderCapture>,
    baggage_allowed: Option<Arc<[String]>>,
    /// `OTEL_INSTRUMENTATION_NATS_*`: applies where code set nothing.
    env: EnvSettings,
    max_decoded: usize,
}

impl Default for InstrumentationBuilder {
    fn default() -> Self {
        Self {
            tracer: None,
            tracing: true,
            meter: None,
            metrics: true,
            publish_time_header: false,
            propagator: None,
            parenting: ProcessParenting::default(),
            mapper: Arc::new(DefaultSubjectMapper),
            inbox_prefix: DEFAULT_INBOX_PREFIX.to_owned(),
            publish_hook: None,
            process_hook: None,
            error_type_hook: None,
            body_size: None,
            span_filter: None,
            span_predicate: None,
            disabled: None,
            metrics_filter: None,
            capture: None,
            baggage_allowed: None,
            env: crate::filter::env_defaults(),
            max_decoded: 16 * 1024 * 1024,
        }
    }
}

impl fmt::Debug for InstrumentationBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstrumentationBuilder")
            .field("tracing", &self.tracing)
            .field("metrics", &self.metrics)
            .field("parenting", &self.parenting)
            .field("inbox_prefix", &self.inbox_prefix)
            .finish_non_exhaustive()
    }
}

impl InstrumentationBuilder {
    /// Uses `provider` instead of the global tracer provider.
    pub fn with_tracer_provider<P>(mut self, provider: &P) -> Self
    where
        P: TracerProvider,
        P::Tracer: Send + Sync + 'static,
        <P::Tracer as Tracer>::Span: Send + Sync + 'static,
    {
        self.tracer = Some(BoxedTracer::new(Box::new(
            provider.tracer_with_scope(scope()),
        )));
        self
    }

    /// Uses `provider` instead of the global meter provider.
    pub fn with_meter_provider<P: MeterProvider>(mut self, provider: &P) -> Self {
        self.meter = Some(provider.meter_with_scope(scope()));
        self
    }

    /// Uses `propagator` instead of the global text-map propagator.
    pub fn with_propagator<P>(mut self, propagator: P) -> Self
    where
        P: TextMapPropagator + Send + Sync + 'static,
    {
        self.propagator = Some(Arc::new(propagator));
        self
    }

    /// Switches span creation on or off (default on). With tracing off no span is
    /// created, but a valid context the caller already has is still propagated
    /// and a message's context is still extracted for the handler.
    pub fn with_tracing(mut self, enabled: bool) -> Self {
        self.tracing = enabled;
        self
    }

    /// Switches metrics on or off (default on), independently of tracing.
    pub fn with_metrics(mut self, enabled: bool) -> Self {
        self.metrics = enabled;
        self
    }

    /// Adds a `Nats-Otel-Published` header (Unix nanoseconds) to core NATS publishes,
    /// so consumers can record end-to-end latency (default off; subject to clock
    /// skew between hosts; JetStream messages carry their stored time anyway).
    pub fn with_publish_time_header(mut self, enabled: bool) -> Self {
        self.publish_time_header = enabled;
        self
    }

    /// How `process` spans relate to the producer's context.
    pub fn with_process_parenting(mut self, parenting: ProcessParenting) -> Self {
        self.parenting = parenting;
        self
    }

    /// Maps publish subjects to low-cardinality templates (default:
    /// [`DefaultSubjectMapper`]).
    pub fn with_subject_mapper<M: SubjectMapper>(mut self, mapper: M) -> Self {
        self.mapper = Arc::new(mapper);
        self
    }

    /// The inbox prefix whose subjects are temporary destinations (default
    /// `_INBOX`; set it if you use `ConnectOptions::custom_inbox_prefix`).
    pub fn with_inbox_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.inbox_prefix = prefix.into();
        self
    }

    /// Adds attributes to every `publish`/`request` span.
    pub fn with_publish_hook<F>(mut self, hook: F) -> Self
    where
        F: Fn(&str, Option<&HeaderMap>, &mut Vec<KeyValue>) + Send + Sync + 'static,
    {
        self.publish_hook = Some(Arc::new(hook));
        self
    }

    /// Adds attributes to every `process` span.
    pub fn with_process_hook<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Message, &mut Vec<KeyValue>) + Send + Sync + 'static,
    {
        self.process_hook = Some(Arc::new(hook));
        self
    }

    /// Classifies the errors handlers return or record (`process`,
    /// `record_error`) into `error.type`: return `Some` to name the error, `None`
    /// for the default (the error type's name, or `_OTHER` for types that say
    /// nothing, such as `String`, `&str` and boxed `dyn Error`). Keep the values
    /// few: they become metric attributes.
    ///
    /// ```
    /// use std::borrow::Cow;
    /// let inst = nats_otel::Instrumentation::builder()
    ///     .with_error_type_hook(|failure| {
    ///         failure
    ///             .to_string()
    ///             .starts_with("timeout")
    ///             .then_some(Cow::Borrowed("timeout"))
    ///     })
    ///     .build();
    /// # drop(inst);
    /// ```
    pub fn with_error_type_hook<F>(mut self, hook: F) -> Self
    where
        F: Fn(&HandlerFailure<'_>) -> Option<Cow<'static, str>> + Send + Sync + 'static,
    {
        self.error_type_hook = Some(Arc::new(hook));
        self
    }

    /// Records the conventions' opt-in size attributes (default off, as the
    /// conventions say): `messaging.message.body.size` on `publish`, `request` and
    /// `process` spans, `messaging.nats.message.body.compressed_size` for
    /// compressed payloads and `messaging.nats.reply.body.size` on requests.
    pub fn with_message_body_size(mut self, enabled: bool) -> Self {
        self.body_size = Some(enabled);
        self
    }

    /// Traces only operations whose subject passes `filter` (NATS wildcards,
    /// matched against the real subject; a bucket or stream for KV, Object Store
    /// and pulls). A filtered-out operation still propagates the caller's context
    /// and still records metrics. See [`filter`](crate::filter).
    pub fn with_span_filter(mut self, filter: SubjectFilter) -> Self {
        self.span_filter = Some(filter);
        self
    }

    /// Decides per operation whether a span is made (after the subject filter
    /// and the operation switches). Keep it cheap: it runs for every message.
    pub fn with_span_predicate<F>(mut self, predicate: F) -> Self
    where
        F: Fn(&SpanRequest<'_>) -> bool + Send + Sync + 'static,
    {
        self.span_predicate = Some(Arc::new(predicate));
        self
    }

    /// Makes no span for these kinds of operation (a `process` span switched off
    /// still hands the producer's context on). Replaces earlier calls.
    pub fn with_disabled_operations<I>(mut self, kinds: I) -> Self
    where
        I: IntoIterator<Item = OperationKind>,
    {
        self.disabled = Some(Kinds::from_kinds(kinds));
        self
    }

    /// Records metrics only for destination templates passing `filter` (span
    /// filters never silence metrics; this does).
    pub fn with_metrics_filter(mut self, filter: SubjectFilter) -> Self {
        self.metrics_filter = Some(filter);
        self
    }

    /// Records the headers `capture` lists on `publish`, `request` and `process`
    /// spans (see [`capture`](crate::capture); a PII risk: list only what is safe
    /// to keep in traces).
    pub fn with_header_capture(mut self, capture: crate::capture::HeaderCapture) -> Self {
        self.capture = Some(capture);
        self
    }

    /// Lets only the baggage entries whose keys are in `keys` cross the NATS
    /// boundary, both ways: others are dropped before a message's headers are
    /// written and after they are read. Without it, all baggage the propagator
    /// carries passes.
    pub fn with_baggage_allow_list<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.baggage_allowed = Some(keys.into_iter().map(Into::into).collect());
        self
    }

    /// Reads the `OTEL_INSTRUMENTATION_NATS_*` variables (see
    /// [`filter`](crate::filter)) from the process environment. They apply where
    /// code sets nothing: code settings win, whatever the order of the calls.
    /// A malformed value is an error naming the variable and the value.
    pub fn from_env(self) -> Result<Self, FilterError> {
        self.from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) with the variables from `var`.
    pub fn from_vars(mut self, var: impl Fn(&str) -> Option<String>) -> Result<Self, FilterError> {
        self.env = EnvSettings::read(var)?;
        Ok(self)
    }

    /// The largest size a compressed payload may decode to before it is rejected
    /// as [`DecodeError::TooLarge`](crate::compression::DecodeError::TooLarge)
    /// (default 16 MiB).
    #[cfg(feature = "compression")]
    pub fn with_max_decoded_size(mut self, bytes: usize) -> Self {
        self.max_decoded = bytes;
        self
    }

    /// Builds the settings, resolving global providers now.
    pub fn build(self) -> Instrumentation {
        let meter = self
            .meter
            .unwrap_or_else(|| global::meter_with_scope(scope()));
        let instruments = self
            .metrics
            .then(|| Arc::new(crate::metrics::Instruments::new(&meter)));
        let spans = SpanRules {
            subjects: self.span_filter.or(self.env.spans).unwrap_or_default(),
            predicate: self.span_predicate,
            disabled: self.disabled.or(self.env.disabled).unwrap_or_default(),
        };
        Instrumentation {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                tracer: self
                    .tracer
                    .unwrap_or_else(|| global::tracer_with_scope(scope())),
                tracing: self.tracing,
                meter,
                instruments,
                publish_time_header: self.publish_time_header,
                propagator: self.propagator,
                parenting: self.parenting,
                mapper: self.mapper,
                inbox_prefix: self.inbox_prefix,
                publish_hook: self.publish_hook,
                process_hook: self.process_hook,
                error_type_hook: self.error_type_hook,
                body_size: self.body_size.or(self.env.body_size).unwrap_or(false),
                capture: self.capture.or(self.env.capture),
                baggage_allowed: self.baggage_allowed,
                filtering: !spans.is_empty(),
                spans,
                metrics_filter: self.metrics_filter.or(self.env.metrics).unwrap_or_default(),
                max_decoded: self.max_decoded,
                health: std::sync::OnceLock::new(),
            }),
        }
    }
}
