//! The variants each table compares: raw async-nats, hand-written propagation,
//! nats-otel with tracing off, sampled or dropped, and the telemetry behind them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nats_otel::capture::HeaderCapture;
use nats_otel::filter::SubjectFilter;
use nats_otel::{Instrumentation, W3cPropagator};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};

/// Counts exported spans and throws them away.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counting(pub(crate) Arc<AtomicU64>);

impl SpanExporter for Counting {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        async { Ok(()) }
    }
}

/// The batch processor, counting the spans handed to it, so spans it drops
/// (queue full) show up as ended minus exported.
#[derive(Debug)]
pub(crate) struct CountingProcessor {
    pub(crate) inner: BatchSpanProcessor,
    pub(crate) ended: Arc<AtomicU64>,
}

impl SpanProcessor for CountingProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.ended.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Tracing {
    /// Raw async-nats.
    Raw,
    /// Raw async-nats with one `traceparent` header built per message.
    HeaderOnly,
    /// Raw async-nats, a fresh `traceparent` written per message (`W3cPropagator`,
    /// unsampled) and parsed on receipt: propagation alone, no spans.
    Propagation,
    /// nats-otel with tracing and metrics off.
    Off,
    /// nats-otel, every message sampled, batch processor to a discarding exporter.
    Sampled,
    /// nats-otel with a parent-based sampler that drops root spans.
    Dropped,
    /// No nats-otel: `Propagation` plus the SDK spans an instrumentation must
    /// make (a producer span per publish, a process span per delivery, with the
    /// SDK table's 9 attributes, through a `BoxedTracer`), with the sampler of
    /// `Dropped`: the SDK's cost of dropped spans where they are made.
    HandWrittenDropped,
    /// Every message sampled, with the SDK's default batch settings (queue 2048).
    SampledDefaultQueue,
    /// No nats-otel: producer and consumer spans written by hand on raw
    /// async-nats with the SDK's `TraceContextPropagator`, every message sampled.
    HandWritten,
    /// nats-otel with tracing off and metrics on: an SDK meter provider with a
    /// periodic reader (1 s) exporting to memory.
    MetricsOnly,
    /// nats-otel, every message sampled, and metrics on as in `MetricsOnly`.
    SampledMetrics,
    /// No NATS, no nats-otel: the SDK alone making the spans one message of the
    /// table makes, with the sampled rows' processor and exporter, in the same
    /// rounds (the ceiling's and "own CPU" line's SDK cost).
    SdkSpans,
    /// `Sampled` with a span filter every subject passes (`include >`).
    IncludeAll,
    /// `Sampled` with a span filter the benchmark's subjects fail (`exclude bench.>`).
    FilteredOut,
    /// `Sampled` with the opt-ins of what spans carry configured but with nothing
    /// to act on: a captured header no message has, a baggage allow-list (and
    /// baggage attributes) with no baggage.
    IdleOptIns,
    /// `Sampled` with the server node's attributes on every recording span.
    ServerNode,
}

impl Tracing {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Tracing::Raw => "raw async-nats",
            Tracing::HeaderOnly => "raw + traceparent header",
            Tracing::Propagation => "raw + propagation only (fresh traceparent per message)",
            Tracing::Off => "nats-otel, tracing off",
            Tracing::Sampled => "nats-otel, all sampled",
            Tracing::Dropped => "nats-otel, sampler drops",
            Tracing::HandWrittenDropped => {
                "hand-written: propagation + SDK spans on raw async-nats, sampler drops"
            }
            Tracing::SampledDefaultQueue => "nats-otel, all sampled, default batch queue",
            Tracing::HandWritten => "hand-written OTel on raw async-nats, all sampled",
            Tracing::MetricsOnly => "nats-otel, metrics only (tracing off)",
            Tracing::SampledMetrics => "nats-otel, all sampled + metrics",
            Tracing::SdkSpans => "OpenTelemetry SDK alone: one message's spans, no NATS",
            Tracing::IncludeAll => "nats-otel, all sampled, include-all span filter",
            Tracing::FilteredOut => "nats-otel, all sampled, span filter excludes the subject",
            Tracing::ServerNode => "nats-otel, all sampled, server node attributes",
            Tracing::IdleOptIns => {
                "nats-otel, all sampled, idle opt-ins (header capture, baggage allow-list)"
            }
        }
    }
}

pub(crate) struct Telemetry {
    pub(crate) provider: SdkTracerProvider,
    pub(crate) exported: Counting,
    pub(crate) ended: Arc<AtomicU64>,
    /// The meter provider of the metrics variants.
    pub(crate) meter: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

pub(crate) fn telemetry(tracing: Tracing) -> Option<Telemetry> {
    let exported = Counting::default();
    let sampler = match tracing {
        Tracing::Sampled
        | Tracing::SampledDefaultQueue
        | Tracing::HandWritten
        | Tracing::SampledMetrics
        | Tracing::SdkSpans
        | Tracing::IncludeAll
        | Tracing::FilteredOut
        | Tracing::IdleOptIns
        | Tracing::ServerNode
        // Tracing stays off in the instrumentation: no span is made.
        | Tracing::MetricsOnly => Sampler::AlwaysOn,
        Tracing::Dropped | Tracing::HandWrittenDropped => {
            Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
        }
        _ => return None,
    };
    let config = match tracing {
        Tracing::SampledDefaultQueue => BatchConfigBuilder::default().build(),
        // The documented settings for high rates: a queue deep enough for bursts.
        _ => BatchConfigBuilder::default()
            .with_max_queue_size(1 << 18)
            .with_max_export_batch_size(4096)
            .with_scheduled_delay(Duration::from_millis(200))
            .build(),
    };
    let ended = Arc::new(AtomicU64::new(0));
    let processor = CountingProcessor {
        inner: BatchSpanProcessor::builder(exported.clone())
            .with_batch_config(config)
            .build(),
        ended: ended.clone(),
    };
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .build();
    let meter = matches!(tracing, Tracing::MetricsOnly | Tracing::SampledMetrics).then(|| {
        let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(
            opentelemetry_sdk::metrics::InMemoryMetricExporter::default(),
        )
        .with_interval(Duration::from_secs(1))
        .build();
        opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_reader(reader)
            .build()
    });
    Some(Telemetry {
        provider,
        exported,
        ended,
        meter,
    })
}

pub(crate) fn instrumentation(tracing: Tracing, telemetry: &Option<Telemetry>) -> Instrumentation {
    let builder = Instrumentation::builder()
        .with_metrics(false)
        .with_propagator(W3cPropagator::new());
    match (tracing, telemetry) {
        (Tracing::MetricsOnly, Some(Telemetry { meter: Some(m), .. })) => builder
            .with_tracing(false)
            .with_metrics(true)
            .with_meter_provider(m)
            .build(),
        (
            _,
            Some(Telemetry {
                meter: Some(m),
                provider,
                ..
            }),
        ) => builder
            .with_tracer_provider(provider)
            .with_metrics(true)
            .with_meter_provider(m)
            .build(),
        (Tracing::IncludeAll, Some(t)) => builder
            .with_tracer_provider(&t.provider)
            .with_span_filter(SubjectFilter::new().include([">"]).expect("pattern"))
            .build(),
        (Tracing::FilteredOut, Some(t)) => builder
            .with_tracer_provider(&t.provider)
            .with_span_filter(SubjectFilter::new().exclude(["bench.>"]).expect("pattern"))
            .build(),
        (Tracing::IdleOptIns, Some(t)) => builder
            .with_tracer_provider(&t.provider)
            .with_header_capture(HeaderCapture::new(["X-Absent"]).expect("header name"))
            .with_baggage_allow_list(["tenant"])
            .with_baggage_attributes(true)
            .build(),
        (Tracing::ServerNode, Some(t)) => builder
            .with_tracer_provider(&t.provider)
            .with_server_node_attributes(true)
            .build(),
        (_, Some(t)) => builder.with_tracer_provider(&t.provider).build(),
        _ => builder.with_tracing(false).build(),
    }
}

pub(crate) struct Client(pub(crate) nats_otel::Client);

/// Propagation alone: a fresh (unsampled) trace context injected per message and
/// extracted on receipt, as an instrumentation must do even when nothing records.
pub(crate) struct Propagation {
    pub(crate) propagator: W3cPropagator,
    pub(crate) next: u64,
}

/// The nine messaging attributes of the SDK table's spans (and of the
/// hand-written unsampled rows' spans).
pub(crate) fn sdk_attributes() -> Vec<opentelemetry::KeyValue> {
    use opentelemetry::KeyValue;
    vec![
        KeyValue::new("messaging.system", "nats"),
        KeyValue::new("messaging.client.id", "42"),
        KeyValue::new("server.address", "127.0.0.1"),
        KeyValue::new("server.port", 4222_i64),
        KeyValue::new("messaging.operation.name", "publish"),
        KeyValue::new("messaging.operation.type", "send"),
        KeyValue::new("messaging.destination.name", "bench.core"),
        KeyValue::new("messaging.destination.template", "bench.core"),
        KeyValue::new("messaging.message.body.size", 16_i64),
    ]
}

/// A span as a hand-written instrumentation makes it (the SDK table's
/// attributes), child of `parent`.
pub(crate) fn hand_span(
    tracer: &opentelemetry::global::BoxedTracer,
    name: &'static str,
    kind: opentelemetry::trace::SpanKind,
    parent: &opentelemetry::Context,
) -> opentelemetry::Context {
    use opentelemetry::trace::{TraceContextExt, Tracer};
    let builder = opentelemetry::trace::SpanBuilder::from_name(name)
        .with_kind(kind)
        .with_attributes(sdk_attributes());
    let span = tracer.build_with_context(builder, parent);
    parent.with_span(span)
}

impl Propagation {
    pub(crate) fn new() -> Self {
        Self {
            propagator: W3cPropagator::new(),
            next: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Headers carrying `cx`.
    pub(crate) fn headers_of(&self, cx: &opentelemetry::Context) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        self.propagator
            .inject_context(cx, &mut nats_otel::HeaderInjector(&mut headers));
        headers
    }

    /// Headers carrying a new trace context.
    pub(crate) fn headers(&mut self) -> async_nats::HeaderMap {
        // xorshift: distinct ids without a lock or a syscall.
        self.next ^= self.next << 13;
        self.next ^= self.next >> 7;
        self.next ^= self.next << 17;
        let span = opentelemetry::trace::SpanContext::new(
            opentelemetry::trace::TraceId::from(u128::from(self.next) << 64 | 1),
            opentelemetry::trace::SpanId::from(self.next | 1),
            opentelemetry::trace::TraceFlags::default(),
            false,
            Default::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(span);
        let mut headers = async_nats::HeaderMap::new();
        self.propagator
            .inject_context(&cx, &mut nats_otel::HeaderInjector(&mut headers));
        headers
    }

    /// The trace context a received message carries.
    pub(crate) fn extract(
        &self,
        message: &async_nats::Message,
    ) -> opentelemetry::trace::SpanContext {
        match &message.headers {
            Some(headers) => self
                .propagator
                .extract(&nats_otel::HeaderExtractor(headers))
                .span()
                .span_context()
                .clone(),
            None => opentelemetry::trace::SpanContext::empty_context(),
        }
    }
}

/// What a hand-written instrumentation injects with: plain `HeaderMap::insert`.
pub(crate) struct HandInjector<'a>(pub(crate) &'a mut async_nats::HeaderMap);

impl Injector for HandInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// What a hand-written instrumentation extracts with.
pub(crate) struct HandExtractor<'a>(pub(crate) &'a async_nats::HeaderMap);

impl Extractor for HandExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

pub(crate) fn named(variants: &[Tracing]) -> Vec<(String, Tracing)> {
    variants.iter().map(|v| (v.name().to_owned(), *v)).collect()
}
