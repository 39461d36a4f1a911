//! Interop with the `tracing` ecosystem (feature `tracing`).
//!
//! Nothing needs wiring for the two directions to work, as long as
//! `tracing-opentelemetry` (0.34+, which activates a span's OpenTelemetry context
//! when the span is entered) is installed:
//!
//! * a publish or request made inside a `#[tracing::instrument]` function is a
//!   child of that function's span, because the instrumented client parents its
//!   spans on the current OpenTelemetry context;
//! * code run through [`Delivery::process`](crate::Delivery::process) or
//!   [`Delivery::in_span`](crate::Delivery::in_span) has the `process` span as its
//!   current context, so `tracing` spans opened there nest under it.
//!
//! What is left is log correlation: a `tracing` event emitted in a handler outside
//! any `tracing` span has no span of its own to take ids from. [`current_span_context`]
//! gives a log formatter the ids to print in either case.

use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The span context logs emitted here should carry: the current `tracing` span's
/// OpenTelemetry context when there is one, else the current OpenTelemetry context
/// (for example the `process` span of the message being handled).
///
/// Returns an invalid (all-zero) span context when there is no trace at all.
pub fn current_span_context() -> SpanContext {
    let from_tracing = tracing::Span::current().context();
    let span = from_tracing.span();
    if span.span_context().is_valid() {
        return span.span_context().clone();
    }
    opentelemetry::Context::map_current(|cx| cx.span().span_context().clone())
}
