//! The `OTEL_*` variables [`init_with`](super::init_with) reads, parsed into what
//! the SDK needs; every bad value is an `InvalidVariable` error naming it.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{BatchConfig, BatchConfigBuilder, Sampler};
use opentelemetry_sdk::Resource;

use super::{invalid, SetupError};

/// Where [`init_with`](super::init_with) reads its variables from, plus defaults the variables
/// override.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    vars: HashMap<String, String>,
    pub(super) default_service_name: Option<String>,
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

    pub(super) fn var(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn signal_var(&self, signal: &str, suffix: &str) -> Option<&str> {
        self.var(&format!("OTEL_EXPORTER_OTLP_{signal}_{suffix}"))
    }
}

/// The resource: `OTEL_RESOURCE_ATTRIBUTES` and the service name.
pub(super) fn resource(settings: &Settings) -> Resource {
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

/// The sampler `OTEL_TRACES_SAMPLER` (and `_ARG`) names.
pub(super) fn sampler(settings: &Settings) -> Result<Sampler, SetupError> {
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

/// Whether the exporter variable `var` asks for OTLP (`otlp`) or nothing (`none`).
pub(super) fn exporter_enabled(settings: &Settings, var: &str) -> Result<bool, SetupError> {
    match settings.var(var).unwrap_or("otlp") {
        "otlp" => Ok(true),
        "none" => Ok(false),
        other => Err(invalid(format!(
            "{var}: unsupported exporter `{other}` (supported: otlp, none)"
        ))),
    }
}

/// The OTLP protocol for `signal`.
pub(super) fn protocol(settings: &Settings, signal: &str) -> Result<Protocol, SetupError> {
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
pub(super) fn endpoint(settings: &Settings, signal: &str, protocol: Protocol) -> Option<String> {
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

/// A positive whole number from `var`, if set.
pub(super) fn number(settings: &Settings, var: &str) -> Result<Option<u64>, SetupError> {
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
pub(super) fn batch_config(settings: &Settings) -> Result<BatchConfig, SetupError> {
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
pub(super) fn export_timeout(settings: &Settings) -> Result<Option<Duration>, SetupError> {
    let ms = match number(settings, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")? {
        Some(ms) => Some(ms),
        None => number(settings, "OTEL_EXPORTER_OTLP_TIMEOUT")?,
    };
    Ok(ms.map(Duration::from_millis))
}

/// An OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    Grpc,
    HttpProtobuf,
}

#[cfg(test)]
mod tests {
    use super::super::SetupErrorKind;
    use super::*;

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
}
