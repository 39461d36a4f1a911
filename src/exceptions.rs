//! Exceptions as log events: the `messaging.{operation type}.exception` events
//! of the messaging conventions (1.41+), emitted through an OpenTelemetry logger
//! and correlated to the operation's span, as an opt-in beside (or instead of)
//! the `exception` span events.
//!
//! | failure | [`SpanEvents`](ExceptionSignal::SpanEvents) (default) | [`Logs`](ExceptionSignal::Logs) | [`LogsAndSpanEvents`](ExceptionSignal::LogsAndSpanEvents) |
//! |---|---|---|---|
//! | a handler's error on a `process` span (`process(..)` returning `Err`, `record_error`, the `Worker`'s handler failures) | `exception` span event | `messaging.process.exception` log record, severity ERROR (17) | both |
//! | a client operation that fails (publish, request, JetStream publish, fetch, ack, KV and Object Store operations) | `error.type` and the span status only | `messaging.{send, receive, settle}.exception` log record, severity WARN (13) | the log record |
//!
//! Every log record carries `exception.type` (the `error.type` value) and
//! `exception.message`, and the trace and span id of the operation's span,
//! sampled or not (a log is kept even when the trace is not). Operations
//! nats-otel does not trace (tracing off, a span filter) emit none. `error.type`
//! and the error status stay on spans whatever the setting.
//!
//! Choosing: [`InstrumentationBuilder::with_exception_signal`](crate::InstrumentationBuilder::with_exception_signal),
//! or the conventions' variable `OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN` (`logs`:
//! logs only; `logs/dup`: logs and span events) read by
//! [`from_env`](crate::InstrumentationBuilder::from_env); code wins over the
//! variable. Logs need a logger provider (feature `logs`,
//! `InstrumentationBuilder::with_logger_provider`); supplying one without a
//! setting means [`LogsAndSpanEvents`](ExceptionSignal::LogsAndSpanEvents).
//! Without a logger provider, exceptions stay span events whatever the setting:
//! none is lost.

use std::fmt::{self, Display};
use std::sync::Arc;

use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;

use crate::operation::OpType;

/// The variable the conventions name for the choice (`logs`, `logs/dup`).
pub const OPT_IN_VAR: &str = "OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN";

/// Where exceptions go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExceptionSignal {
    /// `exception` span events (the default, as before).
    #[default]
    SpanEvents,
    /// Log records only (`OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN=logs`).
    Logs,
    /// Log records and span events (`OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN=logs/dup`).
    LogsAndSpanEvents,
}

impl ExceptionSignal {
    /// The setting an `OTEL_SEMCONV_EXCEPTION_SIGNAL_OPT_IN` value asks for:
    /// `logs` or `logs/dup` among its comma-separated entries, `None` otherwise
    /// (the variable is shared with other instrumentations: other entries are
    /// not errors).
    pub fn from_opt_in(value: &str) -> Option<Self> {
        let entries = || value.split(',').map(str::trim);
        if entries().any(|e| e.eq_ignore_ascii_case("logs/dup")) {
            Some(Self::LogsAndSpanEvents)
        } else if entries().any(|e| e.eq_ignore_ascii_case("logs")) {
            Some(Self::Logs)
        } else {
            None
        }
    }

    /// Whether exceptions are span events.
    pub(crate) fn span_events(self) -> bool {
        !matches!(self, Self::Logs)
    }

    /// Whether exceptions are log records.
    pub(crate) fn logs(self) -> bool {
        !matches!(self, Self::SpanEvents)
    }
}

/// Emits one exception log record.
pub(crate) trait EmitException: Send + Sync {
    fn emit(&self, exception: &Exception<'_>);
}

/// What one exception log record says.
#[cfg_attr(not(feature = "logs"), allow(dead_code))]
pub(crate) struct Exception<'a> {
    pub(crate) event_name: &'static str,
    /// ERROR for processing, WARN for client operations, as the conventions say.
    pub(crate) error: bool,
    pub(crate) error_type: &'a str,
    pub(crate) message: String,
    pub(crate) span: opentelemetry::trace::SpanContext,
}

/// The exception log records of one [`Instrumentation`](crate::Instrumentation).
#[derive(Clone)]
pub(crate) struct ExceptionLogs(Arc<dyn EmitException>);

impl fmt::Debug for ExceptionLogs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExceptionLogs")
    }
}

impl ExceptionLogs {
    /// Emits the exception of an operation of type `ty` that failed with
    /// `error_type` and `message`, in the span of `cx`.
    pub(crate) fn emit(&self, ty: OpType, error_type: &str, message: &dyn Display, cx: &Context) {
        let event_name = match ty {
            OpType::Send => "messaging.send.exception",
            OpType::Receive => "messaging.receive.exception",
            OpType::Process => "messaging.process.exception",
            OpType::Settle => "messaging.settle.exception",
        };
        self.0.emit(&Exception {
            event_name,
            error: matches!(ty, OpType::Process),
            error_type,
            message: message.to_string(),
            span: cx.span().span_context().clone(),
        });
    }
}

#[cfg(feature = "logs")]
mod logger {
    use opentelemetry::logs::{AnyValue, LogRecord, Logger, Severity};

    use super::{EmitException, Exception};
    use crate::semconv;

    /// An OpenTelemetry logger as the sink of exception records.
    pub(crate) struct LoggerSink<L>(pub(crate) L);

    impl<L> EmitException for LoggerSink<L>
    where
        L: Logger + Send + Sync,
    {
        fn emit(&self, exception: &Exception<'_>) {
            let mut record = self.0.create_log_record();
            let now = std::time::SystemTime::now();
            record.set_event_name(exception.event_name);
            record.set_timestamp(now);
            record.set_observed_timestamp(now);
            let (number, text) = match exception.error {
                true => (Severity::Error, "ERROR"),
                false => (Severity::Warn, "WARN"),
            };
            record.set_severity_number(number);
            record.set_severity_text(text);
            record.add_attribute(
                semconv::EXCEPTION_TYPE,
                AnyValue::from(exception.error_type.to_owned()),
            );
            record.add_attribute(
                semconv::EXCEPTION_MESSAGE,
                AnyValue::from(exception.message.clone()),
            );
            if exception.span.is_valid() {
                record.set_trace_context(
                    exception.span.trace_id(),
                    exception.span.span_id(),
                    Some(exception.span.trace_flags()),
                );
            }
            self.0.emit(record);
        }
    }
}

/// The sink for `provider`'s logger, with this crate's scope.
#[cfg(feature = "logs")]
pub(crate) fn from_provider<P>(provider: &P) -> ExceptionLogs
where
    P: opentelemetry::logs::LoggerProvider,
    P::Logger: Send + Sync + 'static,
{
    let logger = provider.logger_with_scope(crate::instrumentation::scope());
    ExceptionLogs(Arc::new(logger::LoggerSink(logger)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_opt_in_values_of_the_conventions_are_understood() {
        assert_eq!(
            ExceptionSignal::from_opt_in("logs"),
            Some(ExceptionSignal::Logs)
        );
        assert_eq!(
            ExceptionSignal::from_opt_in("logs/dup"),
            Some(ExceptionSignal::LogsAndSpanEvents)
        );
        assert_eq!(
            ExceptionSignal::from_opt_in("http, logs/dup"),
            Some(ExceptionSignal::LogsAndSpanEvents)
        );
        assert_eq!(ExceptionSignal::from_opt_in("span_events"), None);
        assert_eq!(ExceptionSignal::from_opt_in(""), None);
    }
}
