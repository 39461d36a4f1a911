//! One-call OpenTelemetry setup from the standard `OTEL_*` environment variables
//! (feature `otlp`).
//!
//! [`init`] builds an SDK tracer provider (batch span processor) and meter provider
//! (periodic reader), both exporting OTLP, installs them and the configured
//! propagators as the globals, and returns a [`TelemetryGuard`] that flushes and
//! shuts everything down when dropped.
//!
//! | variable | effect | default |
//! |---|---|---|
//! | `OTEL_SDK_DISABLED` | `true`: install nothing | `false` |
//! | `OTEL_SERVICE_NAME` | `service.name` resource attribute | the name given to [`Settings::with_default_service_name`], else `unknown_service` |
//! | `OTEL_RESOURCE_ATTRIBUTES` | extra resource attributes, `k=v,k2=v2` | none |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT` | collector address (HTTP appends `/v1/traces`, `/v1/metrics` to the generic one) | `http://localhost:4317` (gRPC), `http://localhost:4318` (HTTP) |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` / `OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL` | `grpc` or `http/protobuf` | `grpc` |
//! | `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER` | `otlp` or `none` | `otlp` |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio` | `parentbased_always_on` |
//! | `OTEL_PROPAGATORS` | comma list of `tracecontext`, `baggage`, `none` | `tracecontext,baggage` |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT` / `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` | span export timeout, ms | 10000 |
//! | `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY` (ms) | the batch span processor: spans buffered (dropped beyond, so memory stays bounded when the collector is down), spans per export, export interval | 2048, 512, 5000 |
//!
//! Headers and compression (`OTEL_EXPORTER_OTLP_HEADERS` …) and
//! `OTEL_METRIC_EXPORT_INTERVAL` are read by the exporter and SDK themselves. The gRPC exporter needs a Tokio runtime: call [`init`] from inside
//! a multi-threaded one (`#[tokio::main]`).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::{global, KeyValue};
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::BaggagePropagator;
use opentelemetry_sdk::trace::{
    BatchConfig, BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

/// Why [`init`] could not set telemetry up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetupErrorKind {
    /// An `OTEL_*` variable's value is not understood; the error's source names
    /// the variable, the value and what is accepted.
    InvalidVariable,
    /// The gRPC exporter was asked for outside a Tokio runtime.
    NoRuntime,
    /// An OTLP exporter could not be built.
    Exporter,
}

impl fmt::Display for SetupErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidVariable => "telemetry setup failed: invalid variable",
            Self::NoRuntime => "telemetry setup failed: no Tokio runtime",
            Self::Exporter => "telemetry setup failed: OTLP exporter",
        })
    }
}

/// The error of [`init`], [`init_with`], [`providers`] and [`propagator`]: match
/// on [`kind`](async_nats::error::Error::kind).
pub type SetupError = async_nats::error::Error<SetupErrorKind>;

/// An `InvalidVariable` error saying what is wrong.
fn invalid(message: String) -> SetupError {
    SetupError::with_source(SetupErrorKind::InvalidVariable, message)
}

/// Where [`init_with`] reads its variables from, plus defaults the variables
/// override.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    vars: HashMap<String, String>,
    default_service_name: Option<String>,
}

impl Settings {
    /// The process environment (only `OTEL_*` variables are kept).
    pub fn from_env() -> Self {
        Self::from_vars(std::env::vars().filter(|(k, _)| k.starts_with("OTEL_")))
    }

    /// Explicit variables instead of the process environment (useful in tests and
    /// for config files).
    pub fn from_vars<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            default_service_name: None,
        }
    }

    /// `service.name` to use when `OTEL_SERVICE_NAME` is not set.
    pub fn with_default_service_name(mut self, name: impl Into<String>) -> Self {
        self.default_service_name = Some(name.into());
        self
    }

    fn var(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn signal_var(&self, signal: &str, suffix: &str) -> Option<&str> {
        self.var(&format!("OTEL_EXPORTER_OTLP_{signal}_{suffix}"))
    }
}

/// Flushes and shuts the installed providers down when dropped.
#[must_use = "dropping the guard shuts telemetry down at once"]
#[derive(Debug)]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl TelemetryGuard {
    /// The installed tracer provider (`None` when the SDK is disabled).
    pub fn tracer_provider(&self) -> Option<&SdkTracerProvider> {
        self.tracer_provider.as_ref()
    }

    /// The installed meter provider (`None` when the SDK is disabled).
    pub fn meter_provider(&self) -> Option<&SdkMeterProvider> {
        self.meter_provider.as_ref()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Errors here mean the collector was unreachable; the process is ending
        // its telemetry either way, so there is nothing better to do than go on.
        if let Some(provider) = self.tracer_provider.take() {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
        if let Some(provider) = self.meter_provider.take() {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

/// Sets telemetry up from the process environment. See the [module docs](self).
pub fn init() -> Result<TelemetryGuard, SetupError> {
    init_with(Settings::from_env())
}

/// Sets telemetry up from `settings` and installs the providers and propagator as
/// the globals. See the [module docs](self).
pub fn init_with(settings: Settings) -> Result<TelemetryGuard, SetupError> {
    let propagator = propagator(&settings)?;
    let guard = providers(settings)?;
    global::set_text_map_propagator(propagator);
    if let Some(provider) = &guard.tracer_provider {
        global::set_tracer_provider(provider.clone());
    }
    if let Some(provider) = &guard.meter_provider {
        global::set_meter_provider(provider.clone());
    }
    Ok(guard)
}

/// Builds the providers `settings` describe without installing any global: pass
/// them to [`InstrumentationBuilder`](crate::InstrumentationBuilder) yourself (and
/// [`propagator`] for the propagator).
pub fn providers(settings: Settings) -> Result<TelemetryGuard, SetupError> {
    if settings
        .var("OTEL_SDK_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Ok(TelemetryGuard {
            tracer_provider: None,
            meter_provider: None,
        });
    }
    propagator(&settings)?;
    let resource = resource(&settings);
    let sampler = sampler(&settings)?;

    let mut tracer_builder = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_sampler(sampler);
    if exporter_enabled(&settings, "OTEL_TRACES_EXPORTER")? {
        let processor = BatchSpanProcessor::builder(span_exporter(&settings)?)
            .with_batch_config(batch_config(&settings)?)
            .build();
        tracer_builder = tracer_builder.with_span_processor(processor);
    }
    let tracer_provider = tracer_builder.build();

    let mut meter_builder = SdkMeterProvider::builder().with_resource(resource);
    if exporter_enabled(&settings, "OTEL_METRICS_EXPORTER")? {
        meter_builder = meter_builder.with_periodic_exporter(metric_exporter(&settings)?);
    }
    let meter_provider = meter_builder.build();
    Ok(TelemetryGuard {
        tracer_provider: Some(tracer_provider),
        meter_provider: Some(meter_provider),
    })
}

/// The propagators named by `OTEL_PROPAGATORS` (default `tracecontext,baggage`).
pub fn propagator(settings: &Settings) -> Result<TextMapCompositePropagator, SetupError> {
    let names = settings
        .var("OTEL_PROPAGATORS")
        .unwrap_or("tracecontext,baggage");
    let mut propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "tracecontext" => propagators.push(Box::new(crate::propagation::W3cPropagator::new())),
            "baggage" => propagators.push(Box::new(BaggagePropagator::new())),
            "none" => propagators.clear(),
            other => {
                return Err(invalid(format!(
                    "OTEL_PROPAGATORS: unsupported propagator `{other}` (supported: tracecontext, baggage, none)"
                )))
            }
        }
    }
    Ok(TextMapCompositePropagator::new(propagators))
}

fn resource(settings: &Settings) -> Resource {
    let mut attributes = Vec::new();
    if let Some(list) = settings.var("OTEL_RESOURCE_ATTRIBUTES") {
        for pair in list.split(',') {
            if let Some((k, v)) = pair.split_once('=') {
                let (k, v) = (k.trim(), v.trim());
                if !k.is_empty() {
                    attributes.push(KeyValue::new(k.to_owned(), v.to_owned()));
                }
            }
        }
    }
    let service_name = settings
        .var("OTEL_SERVICE_NAME")
        .map(str::to_owned)
        .or_else(|| settings.default_service_name.clone())
        .unwrap_or_else(|| "unknown_service".to_owned());
    Resource::builder_empty()
        .with_attributes(attributes)
        .with_service_name(service_name)
        .build()
}

fn sampler(settings: &Settings) -> Result<Sampler, SetupError> {
    let ratio = || -> Result<f64, SetupError> {
        match settings.var("OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(arg) => arg
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    invalid(format!(
                        "OTEL_TRACES_SAMPLER_ARG: `{arg}` is not a ratio between 0 and 1"
                    ))
                }),
        }
    };
    Ok(
        match settings
            .var("OTEL_TRACES_SAMPLER")
            .unwrap_or("parentbased_always_on")
        {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
            }
            other => {
                return Err(invalid(format!(
                    "OTEL_TRACES_SAMPLER: unsupported sampler `{other}`"
                )))
            }
        },
    )
}

fn exporter_enabled(settings: &Settings, var: &str) -> Result<bool, SetupError> {
    match settings.var(var).unwrap_or("otlp") {
        "otlp" => Ok(true),
        "none" => Ok(false),
        other => Err(invalid(format!(
            "{var}: unsupported exporter `{other}` (supported: otlp, none)"
        ))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Grpc,
    HttpProtobuf,
}

fn protocol(settings: &Settings, signal: &str) -> Result<Protocol, SetupError> {
    let value = settings
        .signal_var(signal, "PROTOCOL")
        .or_else(|| settings.var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or("grpc");
    match value {
        "grpc" => Ok(Protocol::Grpc),
        "http/protobuf" => Ok(Protocol::HttpProtobuf),
        other => Err(invalid(format!(
            "OTLP protocol `{other}` is not supported (use grpc or http/protobuf)"
        ))),
    }
}

/// The endpoint for `signal`, or `None` for the exporter's default.
fn endpoint(settings: &Settings, signal: &str, protocol: Protocol) -> Option<String> {
    if let Some(endpoint) = settings.signal_var(signal, "ENDPOINT") {
        return Some(endpoint.to_owned());
    }
    let base = settings.var("OTEL_EXPORTER_OTLP_ENDPOINT")?;
    Some(match protocol {
        Protocol::Grpc => base.to_owned(),
        Protocol::HttpProtobuf => format!(
            "{}/v1/{}",
            base.trim_end_matches('/'),
            signal.to_ascii_lowercase()
        ),
    })
}

fn require_runtime(protocol: Protocol) -> Result<(), SetupError> {
    if protocol == Protocol::Grpc && tokio::runtime::Handle::try_current().is_err() {
        return Err(SetupError::with_source(
            SetupErrorKind::NoRuntime,
            "the gRPC OTLP exporter needs a Tokio runtime: call init() inside #[tokio::main], or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
        ));
    }
    Ok(())
}

/// A positive whole number from `var`, if set.
fn number(settings: &Settings, var: &str) -> Result<Option<u64>, SetupError> {
    match settings.var(var) {
        None => Ok(None),
        Some(value) => match value.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(invalid(format!(
                "{var}={value:?}: expected a positive whole number"
            ))),
        },
    }
}

/// The batch span processor's settings: the SDK's (which read the process
/// environment), overridden by `OTEL_BSP_*` in `settings`.
fn batch_config(settings: &Settings) -> Result<BatchConfig, SetupError> {
    let mut config = BatchConfigBuilder::default();
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    if let Some(n) = number(settings, "OTEL_BSP_MAX_QUEUE_SIZE")? {
        config = config.with_max_queue_size(size(n));
    }
    if let Some(n) = number(settings, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE")? {
        config = config.with_max_export_batch_size(size(n));
    }
    if let Some(ms) = number(settings, "OTEL_BSP_SCHEDULE_DELAY")? {
        config = config.with_scheduled_delay(Duration::from_millis(ms));
    }
    Ok(config.build())
}

/// The span export timeout from `settings`, if set.
fn export_timeout(settings: &Settings) -> Result<Option<Duration>, SetupError> {
    let ms = match number(settings, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")? {
        Some(ms) => Some(ms),
        None => number(settings, "OTEL_EXPORTER_OTLP_TIMEOUT")?,
    };
    Ok(ms.map(Duration::from_millis))
}

fn span_exporter(settings: &Settings) -> Result<SpanExporter, SetupError> {
    let timeout = export_timeout(settings)?;
    let protocol = protocol(settings, "TRACES")?;
    require_runtime(protocol)?;
    let endpoint = endpoint(settings, "TRACES", protocol);
    let built = match protocol {
        Protocol::Grpc => {
            let mut b = SpanExporter::builder().with_tonic();
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            if let Some(t) = timeout {
                b = b.with_timeout(t);
            }
            b.build()
        }
        Protocol::HttpProtobuf => {
            let mut b = SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            if let Some(t) = timeout {
                b = b.with_timeout(t);
            }
            b.build()
        }
    };
    built.map_err(|e| SetupError::with_source(SetupErrorKind::Exporter, format!("spans: {e}")))
}

fn metric_exporter(settings: &Settings) -> Result<MetricExporter, SetupError> {
    let protocol = protocol(settings, "METRICS")?;
    require_runtime(protocol)?;
    let endpoint = endpoint(settings, "METRICS", protocol);
    let built = match protocol {
        Protocol::Grpc => {
            let mut b = MetricExporter::builder().with_tonic();
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            b.build()
        }
        Protocol::HttpProtobuf => {
            let mut b = MetricExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            b.build()
        }
    };
    built.map_err(|e| SetupError::with_source(SetupErrorKind::Exporter, format!("metrics: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::TextMapPropagator;

    #[test]
    fn propagators_follow_the_variable() {
        let fields = |vars: &[(&str, &str)]| -> Result<Vec<String>, SetupError> {
            let p = propagator(&Settings::from_vars(vars.iter().copied()))?;
            let mut fields: Vec<String> = p.fields().map(str::to_owned).collect();
            fields.sort();
            Ok(fields)
        };
        assert_eq!(
            fields(&[]).unwrap(),
            vec!["baggage", "traceparent", "tracestate"]
        );
        assert_eq!(
            fields(&[("OTEL_PROPAGATORS", "tracecontext")]).unwrap(),
            vec!["traceparent", "tracestate"]
        );
        assert!(fields(&[("OTEL_PROPAGATORS", "none")]).unwrap().is_empty());
        let err = fields(&[("OTEL_PROPAGATORS", "xray")]).unwrap_err();
        assert!(err.to_string().contains("xray"), "{err}");
    }

    #[test]
    fn http_endpoint_gets_the_signal_path_and_grpc_does_not() {
        let s = Settings::from_vars([("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]);
        assert_eq!(
            endpoint(&s, "TRACES", Protocol::HttpProtobuf).as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            endpoint(&s, "TRACES", Protocol::Grpc).as_deref(),
            Some("http://collector:4318/")
        );
        let s = Settings::from_vars([("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:1/x")]);
        assert_eq!(
            endpoint(&s, "METRICS", Protocol::HttpProtobuf).as_deref(),
            Some("http://m:1/x")
        );
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let s = Settings::from_vars([("OTEL_TRACES_SAMPLER", "sometimes")]);
        let err = sampler(&s).unwrap_err();
        assert_eq!(err.kind(), SetupErrorKind::InvalidVariable);
        assert!(err.to_string().contains("sometimes"));
        let s = Settings::from_vars([
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]);
        assert_eq!(
            sampler(&s).unwrap_err().kind(),
            SetupErrorKind::InvalidVariable
        );
        let s = Settings::from_vars([("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]);
        assert!(protocol(&s, "TRACES")
            .unwrap_err()
            .to_string()
            .contains("http/json"));
        let s = Settings::from_vars([("OTEL_TRACES_EXPORTER", "zipkin")]);
        assert_eq!(
            exporter_enabled(&s, "OTEL_TRACES_EXPORTER")
                .unwrap_err()
                .kind(),
            SetupErrorKind::InvalidVariable
        );
        for (var, value) in [
            ("OTEL_BSP_MAX_QUEUE_SIZE", "lots"),
            ("OTEL_BSP_SCHEDULE_DELAY", "0"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "-5"),
        ] {
            let s = Settings::from_vars([(var, value)]);
            let err = batch_config(&s).unwrap_err().to_string();
            assert!(err.contains(var) && err.contains(value), "{err}");
        }
        let s = Settings::from_vars([("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")]);
        assert!(export_timeout(&s).unwrap_err().to_string().contains("soon"));
        let s = Settings::from_vars([
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "9000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "250"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "65536"),
        ]);
        assert_eq!(
            export_timeout(&s).unwrap(),
            Some(Duration::from_millis(250))
        );
        assert!(batch_config(&s).is_ok());
    }

    #[test]
    fn grpc_outside_a_runtime_is_an_error_not_a_panic() {
        let err = init_with(Settings::from_vars([("OTEL_METRICS_EXPORTER", "none")])).unwrap_err();
        assert_eq!(err.kind(), SetupErrorKind::NoRuntime);
        assert!(err.to_string().contains("Tokio runtime"), "{err}");
    }
}
