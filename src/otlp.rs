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
//!
//! `init` and [`init_with`] also read the `OTEL_INSTRUMENTATION_NATS_*` variables
//! (span filters, disabled operations, metrics filter, body sizes; see
//! [`filter`](crate::filter)): every `Instrumentation` built afterwards, the default
//! one included, starts from them, and settings made in code still win.

use std::fmt;

use opentelemetry::global;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry_otlp::{MetricExporter, SpanExporter, WithExportConfig};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::BaggagePropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};

mod settings;

pub use settings::Settings;
use settings::{
    batch_config, endpoint, export_timeout, exporter_enabled, protocol, resource, sampler, Protocol,
};

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
    // `OTEL_INSTRUMENTATION_NATS_*`: the environment layer of every builder from now.
    let instrumentation =
        crate::filter::EnvSettings::read(|name| settings.var(name).map(str::to_owned))
            .map_err(|e| invalid(e.to_string()))?;
    let guard = providers(settings)?;
    crate::filter::set_env_defaults(instrumentation);
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

fn require_runtime(protocol: Protocol) -> Result<(), SetupError> {
    if protocol == Protocol::Grpc && tokio::runtime::Handle::try_current().is_err() {
        return Err(SetupError::with_source(
            SetupErrorKind::NoRuntime,
            "the gRPC OTLP exporter needs a Tokio runtime: call init() inside #[tokio::main], or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
        ));
    }
    Ok(())
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
    fn grpc_outside_a_runtime_is_an_error_not_a_panic() {
        let err = init_with(Settings::from_vars([("OTEL_METRICS_EXPORTER", "none")])).unwrap_err();
        assert_eq!(err.kind(), SetupErrorKind::NoRuntime);
        assert!(err.to_string().contains("Tokio runtime"), "{err}");
    }
}
