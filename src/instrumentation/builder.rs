//! [`InstrumentationBuilder`]: the settings of an [`Instrumentation`], each layered
//! over the `OTEL_INSTRUMENTATION_NATS_*` environment where code sets nothing.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use opentelemetry::global;

use crate::instrumentation::{SpanStarter, Typed};
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Tracer, TracerProvider};

use async_nats::{HeaderMap, Message};
use opentelemetry::KeyValue;

use super::{scope, Inner, Instrumentation, ProcessHook, ProcessParenting, PublishHook, NEXT_ID};
use crate::destination::{DefaultSubjectMapper, SubjectMapper, DEFAULT_INBOX_PREFIX};
use crate::error::{ErrorTypeHook, HandlerFailure};
use crate::exceptions::{ExceptionLogs, ExceptionSignal};
use crate::filter::{
    EnvSettings, FilterError, Kinds, OperationKind, SpanPredicate, SpanRequest, SpanRules,
    SubjectFilter,
};

/// Builder for [`Instrumentation`].
#[must_use]
pub struct InstrumentationBuilder {
    tracer: Option<Arc<dyn SpanStarter>>,
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
    server_node: Option<bool>,
    span_filter: Option<SubjectFilter>,
    span_predicate: Option<SpanPredicate>,
    disabled: Option<Kinds>,
    metrics_filter: Option<SubjectFilter>,
    capture: Option<crate::capture::HeaderCapture>,
    baggage_allowed: Option<Arc<[String]>>,
    baggage_attributes: bool,
    /// `OTEL_INSTRUMENTATION_NATS_*`: applies where code set nothing.
    env: EnvSettings,
    max_decoded: usize,
    exception_signal: Option<ExceptionSignal>,
    exception_logs: Option<ExceptionLogs>,
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
            server_node: None,
            span_filter: None,
            span_predicate: None,
            disabled: None,
            metrics_filter: None,
            capture: None,
            baggage_allowed: None,
            baggage_attributes: false,
            env: crate::filter::env_defaults(),
            max_decoded: 16 * 1024 * 1024,
            exception_signal: None,
            exception_logs: None,
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
        self.tracer = Some(Arc::new(Typed(provider.tracer_with_scope(scope()))));
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

    /// Records which node of a cluster each recording span went through (default
    /// off: it costs about half a microsecond per span): `messaging.nats.server.name`,
    /// `messaging.nats.server.id` and, when the node listens on a concrete IP,
    /// `network.peer.address`/`network.peer.port`, from the current connection's
    /// INFO, read again after a reconnect. `OTEL_INSTRUMENTATION_NATS_SERVER_NODE`
    /// sets it from the environment.
    pub fn with_server_node_attributes(mut self, enabled: bool) -> Self {
        self.server_node = Some(enabled);
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

    /// Records the baggage entries the allow-list
    /// ([`with_baggage_allow_list`](Self::with_baggage_allow_list)) lets through
    /// as attributes of every recording span made in their context (`publish`
    /// under the caller's baggage, `process` under the producer's): the
    /// attribute key is the baggage key, the value its value. Without an
    /// allow-list nothing is recorded: baggage can carry anything. Off by default.
    pub fn with_baggage_attributes(mut self, enabled: bool) -> Self {
        self.baggage_attributes = enabled;
        self
    }

    /// Where exceptions go: span events (the default), log records, or both
    /// (see [`exceptions`](crate::exceptions)). Log records need a logger
    /// provider ([`with_logger_provider`](Self::with_logger_provider), feature
    /// `logs`); without one, exceptions stay span events.
    pub fn with_exception_signal(mut self, signal: ExceptionSignal) -> Self {
        self.exception_signal = Some(signal);
        self
    }

    /// Emits exceptions as `messaging.{operation type}.exception` log records
    /// through `provider`'s logger (scope `nats-otel`), correlated to their span.
    /// Unless [`with_exception_signal`](Self::with_exception_signal) or
    /// `OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN` says otherwise, exceptions are then
    /// both log records and span events.
    #[cfg(feature = "logs")]
    pub fn with_logger_provider<P>(mut self, provider: &P) -> Self
    where
        P: opentelemetry::logs::LoggerProvider,
        P::Logger: Send + Sync + 'static,
    {
        self.exception_logs = Some(crate::exceptions::from_provider(provider));
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
        // Logs only with a logger: without one, exceptions stay span events.
        let signal = match (
            self.exception_signal.or(self.env.exception_signal),
            &self.exception_logs,
        ) {
            (_, None) => ExceptionSignal::SpanEvents,
            (Some(signal), Some(_)) => signal,
            (None, Some(_)) => ExceptionSignal::LogsAndSpanEvents,
        };
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
                    .unwrap_or_else(|| Arc::new(Typed(global::tracer_with_scope(scope())))),
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
                server_node: self.server_node.or(self.env.server_node).unwrap_or(false),
                capture: self.capture.or(self.env.capture),
                baggage_attributes: self.baggage_attributes && self.baggage_allowed.is_some(),
                baggage_allowed: self.baggage_allowed,
                filtering: !spans.is_empty(),
                spans,
                metrics_filter: self.metrics_filter.or(self.env.metrics).unwrap_or_default(),
                max_decoded: self.max_decoded,
                health: std::sync::OnceLock::new(),
                exception_logs: self.exception_logs.filter(|_| signal.logs()),
                exception_span_events: signal.span_events(),
            }),
        }
    }
}
