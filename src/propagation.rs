//! W3C (or any configured) trace-context propagation through NATS headers.
//!
//! [`HeaderInjector`] and [`HeaderExtractor`] adapt [`async_nats::HeaderMap`] to the
//! OpenTelemetry [`Injector`]/[`Extractor`] traits, so whichever propagator is
//! configured (`tracecontext`, `baggage`, B3 …) reads and writes NATS headers.
//!
//! Both adapters treat headers as untrusted: invalid names or values are skipped,
//! never unwrapped, and extraction falls back to a case-insensitive match so
//! senders that capitalise keys (`Traceparent`, as some Go code does) still
//! continue the trace.

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;

/// Writes propagation fields into a NATS [`HeaderMap`].
///
/// Keys the propagator produces are inserted as given (lowercase for W3C), replacing
/// any previous value. A key or value NATS cannot carry (a `:`, control or non-ASCII
/// character in a name, CR/LF in a value) is skipped instead of panicking.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(name) = HeaderName::from_str(key) else {
            return;
        };
        let Ok(value) = HeaderValue::from_str(&value) else {
            return;
        };
        self.0.insert(name, value);
    }
}

/// Reads propagation fields from a NATS [`HeaderMap`].
///
/// Lookups try the exact key first and then a case-insensitive match, so a
/// `Traceparent` header is found when the propagator asks for `traceparent`.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        // `HeaderMap::get(&str)` asserts on invalid names, so look up through a
        // fallibly parsed name, then fall back to a case-insensitive scan.
        if let Ok(name) = HeaderName::from_str(key) {
            if let Some(value) = self.0.get(name) {
                return Some(value.as_str());
            }
        }
        self.0
            .iter()
            .find(|(name, _)| AsRef::<str>::as_ref(*name).eq_ignore_ascii_case(key))
            .and_then(|(_, values)| values.first())
            .map(HeaderValue::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// Injects `cx` into `headers` with `propagator`.
pub fn inject_context(propagator: &dyn TextMapPropagator, cx: &Context, headers: &mut HeaderMap) {
    propagator.inject_context(cx, &mut HeaderInjector(headers));
}

/// Extracts the remote context carried by `headers` with `propagator`.
///
/// Extraction starts from an empty context, never from the caller's current one, so
/// a message without (valid) trace headers yields a context with no span rather than
/// inheriting whatever span happened to be active when it was received. Baggage, if
/// the propagator extracts it, is kept either way.
///
/// The returned context only carries a remote span when its span context is valid
/// (a malformed or all-zero `traceparent` yields none).
pub fn extract_context(propagator: &dyn TextMapPropagator, headers: &HeaderMap) -> Context {
    let cx = propagator.extract_with_context(&Context::new(), &HeaderExtractor(headers));
    if cx.has_active_span() && !cx.span().span_context().is_valid() {
        // A propagator should never hand back an invalid span context, but a
        // third-party one might; do not let it become a parent.
        return Context::new();
    }
    cx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injector_skips_values_nats_cannot_carry() {
        let mut headers = HeaderMap::new();
        let mut injector = HeaderInjector(&mut headers);
        injector.set("bad:name", "v".to_string());
        injector.set("bad name", "v".to_string());
        injector.set("name", "line\r\nbreak".to_string());
        injector.set("ok", "value".to_string());
        assert_eq!(headers.len(), 1);
        assert_eq!(HeaderExtractor(&headers).get("ok"), Some("value"));
    }

    #[test]
    fn extractor_finds_capitalised_keys_and_never_panics_on_odd_lookups() {
        let mut headers = HeaderMap::new();
        headers.insert("Traceparent", "x");
        let extractor = HeaderExtractor(&headers);
        assert_eq!(extractor.get("traceparent"), Some("x"));
        assert_eq!(extractor.get("bad key:\u{1}"), None);
        assert_eq!(extractor.keys(), vec!["Traceparent"]);
    }
}
