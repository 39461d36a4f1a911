//! What operators decide is traced and metered: subject filters for spans (NATS
//! wildcards matched against the real subject), a predicate, per-operation
//! switches, a template filter for metrics, and the same settings read from
//! `OTEL_INSTRUMENTATION_NATS_*` variables.
//!
//! A message whose span is filtered out still propagates the caller's context (a
//! publish injects the current span's context; a delivery's context is the
//! producer's), so other services' traces stay whole, and its metrics are still
//! recorded unless the metrics filter says otherwise.
//!
//! | variable | value | builder method |
//! |---|---|---|
//! | `OTEL_INSTRUMENTATION_NATS_INCLUDE` | comma-separated subject patterns: only these are traced | [`with_span_filter`](crate::InstrumentationBuilder::with_span_filter) |
//! | `OTEL_INSTRUMENTATION_NATS_EXCLUDE` | comma-separated subject patterns: these are not traced | same |
//! | `OTEL_INSTRUMENTATION_NATS_DISABLED_OPERATIONS` | comma-separated [`OperationKind`] names (`settle,receive`) | [`with_disabled_operations`](crate::InstrumentationBuilder::with_disabled_operations) |
//! | `OTEL_INSTRUMENTATION_NATS_METRICS_EXCLUDE` | comma-separated template patterns: no metrics for these | [`with_metrics_filter`](crate::InstrumentationBuilder::with_metrics_filter) |
//! | `OTEL_INSTRUMENTATION_NATS_BODY_SIZE` | `true` or `false` | [`with_message_body_size`](crate::InstrumentationBuilder::with_message_body_size) |
//! | `OTEL_INSTRUMENTATION_NATS_SERVER_NODE` | `true` or `false` | [`with_server_node_attributes`](crate::InstrumentationBuilder::with_server_node_attributes) |
//! | `OTEL_INSTRUMENTATION_NATS_CAPTURE_HEADERS` | comma-separated header names recorded on spans (see [`capture`](crate::capture)) | [`with_header_capture`](crate::InstrumentationBuilder::with_header_capture) |
//!
//! Settings made in code win over the environment, whatever the order of the calls.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use async_nats::HeaderMap;

use crate::operation::{Op, OpType};
use crate::semconv;

/// Why a filter setting was rejected.
pub type FilterError = async_nats::error::Error<FilterErrorKind>;

/// The kinds of [`FilterError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FilterErrorKind {
    /// A subject pattern that is not one: empty, an empty token, whitespace, or
    /// `>` before the last token.
    InvalidPattern,
    /// An operation name that is not an [`OperationKind`].
    UnknownOperation,
    /// A variable whose value cannot be read (`..._BODY_SIZE=maybe`).
    InvalidValue,
}

impl fmt::Display for FilterErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FilterErrorKind::InvalidPattern => "invalid subject pattern",
            FilterErrorKind::UnknownOperation => "unknown operation",
            FilterErrorKind::InvalidValue => "invalid value",
        })
    }
}

/// The operations that can be switched off one by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OperationKind {
    /// `publish` spans (core and JetStream).
    Publish,
    /// `request` spans.
    Request,
    /// `receive` spans of JetStream pulls.
    Receive,
    /// `process` spans: deliveries, Service requests, KV and Object Store watches
    /// (the producer's context is still handed on).
    Process,
    /// `ack`, `nak`, `term`, `progress` and `double_ack` spans.
    Settle,
    /// KV and Object Store reads (`get`, `entry`, `keys`, …).
    StoreRead,
    /// KV and Object Store writes and deletions (`put`, `create`, `delete`, …).
    StoreWrite,
}

impl OperationKind {
    /// Every kind, in the order of their names below.
    pub const ALL: [OperationKind; 7] = [
        OperationKind::Publish,
        OperationKind::Request,
        OperationKind::Receive,
        OperationKind::Process,
        OperationKind::Settle,
        OperationKind::StoreRead,
        OperationKind::StoreWrite,
    ];

    /// The name used in `OTEL_INSTRUMENTATION_NATS_DISABLED_OPERATIONS`.
    pub const fn as_str(self) -> &'static str {
        match self {
            OperationKind::Publish => "publish",
            OperationKind::Request => "request",
            OperationKind::Receive => "receive",
            OperationKind::Process => "process",
            OperationKind::Settle => "settle",
            OperationKind::StoreRead => "store_read",
            OperationKind::StoreWrite => "store_write",
        }
    }

    /// The kind of `op` (`None`: an operation no switch covers).
    pub(crate) fn of(op: Op) -> Option<Self> {
        match (op.name, op.ty) {
            (semconv::operation::PUBLISH, _) => Some(OperationKind::Publish),
            (semconv::operation::REQUEST, _) => Some(OperationKind::Request),
            (semconv::operation::RECEIVE, _) => Some(OperationKind::Receive),
            (_, Some(OpType::Process)) => Some(OperationKind::Process),
            (_, Some(OpType::Settle)) => Some(OperationKind::Settle),
            (_, Some(OpType::Receive)) => Some(OperationKind::StoreRead),
            (_, Some(OpType::Send)) => Some(OperationKind::StoreWrite),
            (_, None) => None,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl FromStr for OperationKind {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, FilterError> {
        OperationKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = OperationKind::ALL.iter().map(|k| k.as_str()).collect();
                FilterError::with_source(
                    FilterErrorKind::UnknownOperation,
                    format!("`{s}` (known: {})", known.join(", ")),
                )
            })
    }
}

/// A set of [`OperationKind`]s, as bits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Kinds(u8);

impl Kinds {
    pub(crate) fn from_kinds(kinds: impl IntoIterator<Item = OperationKind>) -> Self {
        Kinds(kinds.into_iter().fold(0, |bits, kind| bits | kind.bit()))
    }

    pub(crate) fn contains(self, kind: OperationKind) -> bool {
        self.0 & kind.bit() != 0
    }
}

/// A NATS subject pattern: tokens separated by `.`, `*` for any one token, `>`
/// (last) for one or more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectPattern {
    text: String,
}

impl SubjectPattern {
    /// Parses `pattern`, rejecting empty patterns and tokens, whitespace, and `>`
    /// anywhere but last.
    pub fn new(pattern: &str) -> Result<Self, FilterError> {
        let bad = |why: &str| {
            Err(FilterError::with_source(
                FilterErrorKind::InvalidPattern,
                format!("`{pattern}`: {why}"),
            ))
        };
        if pattern.is_empty() {
            return bad("empty");
        }
        if pattern.chars().any(char::is_whitespace) {
            return bad("contains whitespace");
        }
        let tokens: Vec<&str> = pattern.split('.').collect();
        for (i, token) in tokens.iter().enumerate() {
            if token.is_empty() {
                return bad("empty token");
            }
            if *token == ">" && i + 1 != tokens.len() {
                return bad("`>` must be the last token");
            }
        }
        Ok(Self {
            text: pattern.to_owned(),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `subject` matches.
    pub fn matches(&self, subject: &str) -> bool {
        let mut subject = subject.split('.');
        for token in self.text.split('.') {
            match (token, subject.next()) {
                (">", Some(_)) => return true,
                (_, None) => return false,
                ("*", Some(_)) => {}
                (token, Some(got)) if token == got => {}
                _ => return false,
            }
        }
        subject.next().is_none()
    }
}

/// Include and exclude subject patterns: a subject passes when it matches an
/// include pattern (or none are given) and no exclude pattern.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectFilter {
    include: Vec<SubjectPattern>,
    exclude: Vec<SubjectPattern>,
}

impl SubjectFilter {
    /// A filter that lets everything pass.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only subjects matching one of `patterns` pass.
    pub fn include<I, S>(mut self, patterns: I) -> Result<Self, FilterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for pattern in patterns {
            self.include.push(SubjectPattern::new(pattern.as_ref())?);
        }
        Ok(self)
    }

    /// Subjects matching one of `patterns` do not pass.
    pub fn exclude<I, S>(mut self, patterns: I) -> Result<Self, FilterError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for pattern in patterns {
            self.exclude.push(SubjectPattern::new(pattern.as_ref())?);
        }
        Ok(self)
    }

    /// Whether `subject` passes.
    pub fn passes(&self, subject: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| p.matches(subject)))
            && !self.exclude.iter().any(|p| p.matches(subject))
    }

    fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }
}

/// What a span predicate sees: the operation about to be traced.
#[derive(Debug)]
#[non_exhaustive]
pub struct SpanRequest<'a> {
    /// `messaging.operation.name` (`publish`, `process`, `ack`, `get`, …).
    pub operation: &'static str,
    /// Its switchable kind, if any.
    pub kind: Option<OperationKind>,
    /// The real subject (the bucket or stream for KV, Object Store and pulls).
    pub subject: &'a str,
    /// The destination template.
    pub template: &'a str,
    /// The message's headers, where there is a message.
    pub headers: Option<&'a HeaderMap>,
}

/// A predicate deciding per operation whether a span is made.
pub(crate) type SpanPredicate = Arc<dyn Fn(&SpanRequest<'_>) -> bool + Send + Sync>;

/// Everything that decides whether an operation is traced.
#[derive(Clone, Default)]
pub(crate) struct SpanRules {
    pub(crate) subjects: SubjectFilter,
    pub(crate) predicate: Option<SpanPredicate>,
    pub(crate) disabled: Kinds,
}

impl SpanRules {
    /// Whether no rule is set (then every operation is traced, at no cost).
    pub(crate) fn is_empty(&self) -> bool {
        self.subjects.is_empty() && self.predicate.is_none() && self.disabled == Kinds::default()
    }

    /// Whether an operation of `kind` on `subject` is ruled out whatever its
    /// template and headers.
    pub(crate) fn never_traces(&self, kind: OperationKind, subject: &str) -> bool {
        self.disabled.contains(kind) || !self.subjects.passes(subject)
    }

    /// Whether `op` on `subject` (template `template`) gets a span.
    pub(crate) fn traces(
        &self,
        op: Op,
        subject: &str,
        template: &str,
        headers: Option<&HeaderMap>,
    ) -> bool {
        let kind = OperationKind::of(op);
        if kind.is_some_and(|kind| self.disabled.contains(kind)) {
            return false;
        }
        if !self.subjects.passes(subject) {
            return false;
        }
        match &self.predicate {
            Some(predicate) => predicate(&SpanRequest {
                operation: op.name,
                kind,
                subject,
                template,
                headers,
            }),
            None => true,
        }
    }
}

/// The settings `otlp::init` read from the environment: the defaults of every
/// builder started afterwards (code still wins).
static ENV_DEFAULTS: std::sync::RwLock<Option<EnvSettings>> = std::sync::RwLock::new(None);

/// Makes `settings` the environment layer of builders started from now on.
#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
pub(crate) fn set_env_defaults(settings: EnvSettings) {
    *ENV_DEFAULTS.write().unwrap_or_else(|p| p.into_inner()) = Some(settings);
}

/// The environment layer set by `otlp::init`, if any.
pub(crate) fn env_defaults() -> EnvSettings {
    ENV_DEFAULTS
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_default()
}

/// The `OTEL_INSTRUMENTATION_NATS_*` settings, each `None` when not set.
#[derive(Debug, Clone, Default)]
pub(crate) struct EnvSettings {
    pub(crate) spans: Option<SubjectFilter>,
    pub(crate) disabled: Option<Kinds>,
    pub(crate) metrics: Option<SubjectFilter>,
    pub(crate) body_size: Option<bool>,
    pub(crate) capture: Option<crate::capture::HeaderCapture>,
    pub(crate) exception_signal: Option<crate::exceptions::ExceptionSignal>,
    pub(crate) server_node: Option<bool>,
}

/// The variable names.
pub mod vars {
    /// Subject patterns to trace (all others are not).
    pub const INCLUDE: &str = "OTEL_INSTRUMENTATION_NATS_INCLUDE";
    /// Subject patterns not to trace.
    pub const EXCLUDE: &str = "OTEL_INSTRUMENTATION_NATS_EXCLUDE";
    /// Operation kinds not to trace.
    pub const DISABLED_OPERATIONS: &str = "OTEL_INSTRUMENTATION_NATS_DISABLED_OPERATIONS";
    /// Template patterns to record no metrics for.
    pub const METRICS_EXCLUDE: &str = "OTEL_INSTRUMENTATION_NATS_METRICS_EXCLUDE";
    /// Whether the opt-in body-size attributes are recorded.
    pub const BODY_SIZE: &str = "OTEL_INSTRUMENTATION_NATS_BODY_SIZE";
    /// Header names recorded on spans.
    pub const CAPTURE_HEADERS: &str = "OTEL_INSTRUMENTATION_NATS_CAPTURE_HEADERS";
    /// Whether spans name the server node (`true`/`false`).
    pub const SERVER_NODE: &str = "OTEL_INSTRUMENTATION_NATS_SERVER_NODE";
}

impl EnvSettings {
    /// Reads the variables through `var`; the error names the variable and value.
    pub(crate) fn read(var: impl Fn(&str) -> Option<String>) -> Result<Self, FilterError> {
        let named = |name: &str, value: &str, e: FilterError| {
            FilterError::with_source(e.kind(), format!("{name}=`{value}`: {e}"))
        };
        let list = |name: &str| -> Option<(String, Vec<String>)> {
            let value = var(name)?;
            let items = value.split(',').map(|s| s.trim().to_owned()).collect();
            Some((value, items))
        };
        let mut settings = EnvSettings::default();
        let include = list(vars::INCLUDE);
        let exclude = list(vars::EXCLUDE);
        if include.is_some() || exclude.is_some() {
            let mut filter = SubjectFilter::new();
            if let Some((value, items)) = include {
                filter = filter
                    .include(&items)
                    .map_err(|e| named(vars::INCLUDE, &value, e))?;
            }
            if let Some((value, items)) = exclude {
                filter = filter
                    .exclude(&items)
                    .map_err(|e| named(vars::EXCLUDE, &value, e))?;
            }
            settings.spans = Some(filter);
        }
        if let Some((value, items)) = list(vars::DISABLED_OPERATIONS) {
            let kinds = items
                .iter()
                .filter(|item| !item.is_empty() || items.len() > 1)
                .map(|item| item.parse::<OperationKind>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| named(vars::DISABLED_OPERATIONS, &value, e))?;
            settings.disabled = Some(Kinds::from_kinds(kinds));
        }
        if let Some((value, items)) = list(vars::METRICS_EXCLUDE) {
            settings.metrics = Some(
                SubjectFilter::new()
                    .exclude(&items)
                    .map_err(|e| named(vars::METRICS_EXCLUDE, &value, e))?,
            );
        }
        if let Some((value, items)) = list(vars::CAPTURE_HEADERS) {
            settings.capture = Some(
                crate::capture::HeaderCapture::new(&items)
                    .map_err(|e| named(vars::CAPTURE_HEADERS, &value, e))?,
            );
        }
        settings.exception_signal = var(crate::exceptions::OPT_IN_VAR)
            .and_then(|value| crate::exceptions::ExceptionSignal::from_opt_in(&value));
        let switch = |name: &str| -> Result<Option<bool>, FilterError> {
            let Some(value) = var(name) else {
                return Ok(None);
            };
            match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Some(true)),
                "false" | "0" => Ok(Some(false)),
                _ => Err(FilterError::with_source(
                    FilterErrorKind::InvalidValue,
                    format!("{name}=`{value}`: expected true or false"),
                )),
            }
        };
        settings.body_size = switch(vars::BODY_SIZE)?;
        settings.server_node = switch(vars::SERVER_NODE)?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_nats_wildcards() {
        let p = |s: &str| SubjectPattern::new(s).unwrap();
        assert!(p("orders.*").matches("orders.created"));
        assert!(!p("orders.*").matches("orders.created.eu"));
        assert!(!p("orders.*").matches("orders"));
        assert!(p("orders.>").matches("orders.created.eu"));
        assert!(!p("orders.>").matches("orders"));
        assert!(p(">").matches("anything.at.all"));
        assert!(p("a.*.c").matches("a.b.c"));
        assert!(!p("a.*.c").matches("a.b.d"));
        assert!(p("health").matches("health"));
        assert!(!p("health").matches("health.check"));
    }

    #[test]
    fn bad_patterns_are_rejected_with_the_reason() {
        for (pattern, why) in [
            ("", "empty"),
            ("orders..x", "empty token"),
            ("orders.", "empty token"),
            ("orders created", "contains whitespace"),
            ("orders.>.x", "`>` must be the last token"),
        ] {
            let err = SubjectPattern::new(pattern).unwrap_err();
            assert_eq!(err.kind(), FilterErrorKind::InvalidPattern);
            assert_eq!(
                err.to_string(),
                format!("invalid subject pattern: `{pattern}`: {why}")
            );
        }
    }

    #[test]
    fn every_operation_kind_round_trips_through_its_name() {
        for kind in OperationKind::ALL {
            assert_eq!(kind.as_str().parse::<OperationKind>().unwrap(), kind);
        }
        let err = "acks".parse::<OperationKind>().unwrap_err();
        assert_eq!(err.kind(), FilterErrorKind::UnknownOperation);
    }
}
