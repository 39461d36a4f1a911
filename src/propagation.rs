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
use std::sync::OnceLock;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
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
        let Some(name) = header_name(key) else {
            return;
        };
        // An empty `tracestate` means the same as none (W3C): skip it, unless it
        // must replace one already in the map.
        if value.is_empty() && key == TRACESTATE && self.0.get(name.clone()).is_none() {
            return;
        }
        if let Some(value) = header_value(value) {
            self.0.insert(name, value);
        }
    }
}

/// `value` as a header value, or `None` when it holds a CR or LF (which NATS
/// cannot carry and async-nats's `From<String>` panics on).
///
/// The check is one vectorised byte scan, and the value is then moved in
/// through `HeaderValue`'s (transparent) `Deserialize`, which keeps the buffer
/// and does not check again: `From<String>` checks with `str::contains` over a
/// char array, about 20 instructions a byte, which was a quarter of an
/// unsampled publish's instrumentation cost (a `traceparent` is 55 bytes).
pub(crate) fn header_value(value: String) -> Option<HeaderValue> {
    use serde::de::value::{Error, StringDeserializer};
    use serde::Deserialize;
    if memchr::memchr2(b'\r', b'\n', value.as_bytes()).is_some() {
        return None;
    }
    // A string deserializer always yields the string: the error is unreachable.
    HeaderValue::deserialize(StringDeserializer::<Error>::new(value)).ok()
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";
const BAGGAGE: &str = "baggage";

/// The header name for a propagation key, without allocating for the W3C keys;
/// `None` for a name NATS cannot carry.
fn header_name(key: &str) -> Option<HeaderName> {
    match key {
        TRACEPARENT => Some(HeaderName::from_static(TRACEPARENT)),
        TRACESTATE => Some(HeaderName::from_static(TRACESTATE)),
        BAGGAGE => Some(HeaderName::from_static(BAGGAGE)),
        _ => HeaderName::from_str(key).ok(),
    }
}

/// The first value of the header `key` in `headers`: an exact name match, else
/// the first case-insensitive one.
pub(crate) fn header_str<'a>(headers: &'a HeaderMap, key: &str) -> Option<&'a str> {
    // One pass over the (few) headers, no hashing: an exact match wins, else
    // the first case-insensitive one. A hashed lookup costs more than the
    // scan for the handful of headers a message carries, and a miss (no
    // `tracestate`, the common case) needed the scan anyway. (It also never
    // meets `HeaderMap::get(&str)`'s assertion on invalid names.)
    let mut folded = None;
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        if name.len() != key.len() {
            continue;
        }
        if name == key {
            return values.first().map(HeaderValue::as_str);
        }
        if folded.is_none() && name.eq_ignore_ascii_case(key) {
            folded = values.first();
        }
    }
    folded.map(HeaderValue::as_str)
}

/// Reads propagation fields from a NATS [`HeaderMap`].
///
/// Lookups try the exact key first and then a case-insensitive match, so a
/// `Traceparent` header is found when the propagator asks for `traceparent`.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        header_str(self.0, key)
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

/// The [W3C Trace Context] propagator (`traceparent`, `tracestate`), written for
/// the per-message path.
///
/// Behaves like `opentelemetry_sdk::propagation::TraceContextPropagator`, with
/// these differences: `traceparent` is built in one exact-size allocation instead
/// of through `format!`, an empty `tracestate` is not written (W3C: it means the
/// same as none), and parsing follows the W3C grammar strictly (ids of exactly
/// 32 and 16 lowercase hex digits, a 2-digit version other than `ff`) without
/// building intermediate vectors. [`crate::otlp::init`] installs it for
/// `OTEL_PROPAGATORS=tracecontext`; pass it to
/// [`InstrumentationBuilder::with_propagator`](crate::InstrumentationBuilder::with_propagator)
/// to skip the global propagator's lock as well.
///
/// [W3C Trace Context]: https://www.w3.org/TR/trace-context/
#[derive(Debug, Clone, Copy, Default)]
pub struct W3cPropagator;

impl W3cPropagator {
    /// A new propagator.
    pub fn new() -> Self {
        Self
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `bytes` as lowercase hex into `out` (twice their length).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    for (pair, &byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

/// `00-{trace id}-{span id}-{flags}` for a valid span context, built in a
/// stack buffer and copied once into an exact-size string.
pub(crate) fn traceparent(span_context: &SpanContext) -> String {
    let mut value = [0u8; 55];
    value[..3].copy_from_slice(b"00-");
    hex_into(&mut value[3..35], &span_context.trace_id().to_bytes());
    value[35] = b'-';
    hex_into(&mut value[36..52], &span_context.span_id().to_bytes());
    value[52] = b'-';
    hex_into(
        &mut value[53..],
        &[(span_context.trace_flags() & TraceFlags::SAMPLED).to_u8()],
    );
    // Hex digits and dashes: always ASCII, so this never falls back.
    String::from_utf8(value.to_vec()).unwrap_or_default()
}

/// Lowercase hex digit values; 0xff marks everything else.
const HEX_DECODE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// Parses exactly `N` bytes of lowercase hex.
fn parse_hex<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut invalid = 0u8;
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (high, low) = (
            HEX_DECODE[usize::from(pair[0])],
            HEX_DECODE[usize::from(pair[1])],
        );
        invalid |= (high | low) & 0xf0;
        *byte = (high << 4) | (low & 0x0f);
    }
    (invalid == 0).then_some(out)
}

/// Parses a `traceparent` value; `None` unless it is valid W3C.
pub(crate) fn parse_traceparent(value: &str) -> Option<(TraceId, SpanId, TraceFlags)> {
    let value = value.trim().as_bytes();
    // version "-" trace-id "-" parent-id "-" flags: 2+1+32+1+16+1+2 = 55 bytes.
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let [version] = parse_hex::<1>(&value[..2])?;
    match version {
        0 if value.len() != 55 => return None,
        // Later versions may append fields after another '-'.
        1..=0xfe if value.len() > 55 && value[55] != b'-' => return None,
        0xff => return None,
        _ => {}
    }
    let trace_id = TraceId::from_bytes(parse_hex::<16>(&value[3..35])?);
    let span_id = SpanId::from_bytes(parse_hex::<8>(&value[36..52])?);
    let [flags] = parse_hex::<1>(&value[53..55])?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some((
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
    ))
}

fn w3c_fields() -> &'static [String; 2] {
    static FIELDS: OnceLock<[String; 2]> = OnceLock::new();
    FIELDS.get_or_init(|| [TRACEPARENT.to_owned(), TRACESTATE.to_owned()])
}

impl TextMapPropagator for W3cPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let span_context = span.span_context();
        if !span_context.is_valid() {
            return;
        }
        injector.set(TRACEPARENT, traceparent(span_context));
        let state = span_context.trace_state();
        if *state != TraceState::NONE {
            let header = state.header();
            if !header.is_empty() {
                injector.set(TRACESTATE, header);
            }
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let Some((trace_id, span_id, flags)) =
            extractor.get(TRACEPARENT).and_then(parse_traceparent)
        else {
            return cx.clone();
        };
        let state = extractor
            .get(TRACESTATE)
            .filter(|s| !s.trim().is_empty())
            .and_then(|s| TraceState::from_str(s).ok())
            .unwrap_or_default();
        cx.with_remote_span_context(SpanContext::new(trace_id, span_id, flags, true, state))
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(w3c_fields())
    }
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
        injector.set("tracestate", String::new());
        assert_eq!(headers.len(), 1);
        assert_eq!(HeaderExtractor(&headers).get("ok"), Some("value"));
    }

    #[test]
    fn header_values_with_a_lone_cr_or_lf_anywhere_are_refused_and_others_kept_whole() {
        for bad in [
            "\r",
            "\n",
            "a\rb",
            "a\nb",
            "abc\r",
            &format!("{}\n", "x".repeat(70)),
        ] {
            assert!(header_value(bad.to_owned()).is_none(), "{bad:?} accepted");
        }
        let long = format!("{}-é-\t", "0123456789abcdef".repeat(5));
        for good in ["", "v", "vendor=a,other=b", long.as_str()] {
            let value = header_value(good.to_owned()).expect("value kept");
            assert_eq!(value.as_str(), good);
            // The same value async-nats's own (checking) conversion makes.
            assert_eq!(value, HeaderValue::from(good));
        }
    }

    #[test]
    fn traceparent_is_the_w3c_form_of_the_span_context() {
        let sampled = SpanContext::new(
            TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128),
            SpanId::from(0x00f0_67aa_0ba9_02b7_u64),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        assert_eq!(
            traceparent(&sampled),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        let unsampled = SpanContext::new(
            TraceId::from(1_u128),
            SpanId::from(u64::MAX),
            TraceFlags::new(0xfe),
            true,
            TraceState::NONE,
        );
        assert_eq!(
            traceparent(&unsampled),
            "00-00000000000000000000000000000001-ffffffffffffffff-00"
        );
    }

    #[test]
    fn empty_tracestate_is_skipped_but_replaces_a_stale_one() {
        let mut headers = HeaderMap::new();
        HeaderInjector(&mut headers).set("tracestate", String::new());
        assert!(headers.is_empty());
        headers.insert("tracestate", "vendor=stale");
        HeaderInjector(&mut headers).set("tracestate", String::new());
        assert_eq!(HeaderExtractor(&headers).get("tracestate"), Some(""));
        HeaderInjector(&mut headers).set("traceparent", "00-ab".to_string());
        assert_eq!(HeaderExtractor(&headers).get("traceparent"), Some("00-ab"));
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

    #[test]
    fn extractor_prefers_the_exact_key_over_a_capitalised_one_in_any_order() {
        for order in [
            ["Traceparent", "traceparent"],
            ["traceparent", "Traceparent"],
        ] {
            let mut headers = HeaderMap::new();
            for name in order {
                headers.insert(name, name);
            }
            headers.insert("Nats-Msg-Id", "7");
            let extractor = HeaderExtractor(&headers);
            assert_eq!(extractor.get("traceparent"), Some("traceparent"));
            // Neither is exact: one of the two, whichever the map holds first.
            assert!(matches!(
                extractor.get("TRACEPARENT"),
                Some("Traceparent" | "traceparent")
            ));
            assert_eq!(extractor.get("nats-msg-id"), Some("7"));
            assert_eq!(extractor.get("tracestate"), None);
        }
    }

    fn remote(cx: &Context) -> Option<SpanContext> {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| sc.clone())
    }

    #[test]
    fn w3c_propagator_writes_what_the_sdk_writes_and_reads_it_back() {
        use opentelemetry_sdk::propagation::TraceContextPropagator;
        let states = [
            TraceState::NONE,
            TraceState::from_str("vendor=a,other=b").expect("state"),
        ];
        for (i, state) in states.into_iter().enumerate() {
            for flags in [TraceFlags::SAMPLED, TraceFlags::default()] {
                let sc = SpanContext::new(
                    TraceId::from_bytes([0x0a ^ i as u8; 16]),
                    SpanId::from_bytes([0xf0, 1, 2, 3, 4, 5, 6, 7]),
                    flags,
                    false,
                    state.clone(),
                );
                let cx = Context::new().with_remote_span_context(sc.clone());
                let mut ours = HeaderMap::new();
                W3cPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut ours));
                let mut sdk = HeaderMap::new();
                TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut sdk));
                let get = |h: &HeaderMap, k: &str| HeaderExtractor(h).get(k).map(str::to_owned);
                assert_eq!(get(&ours, "traceparent"), get(&sdk, "traceparent"));
                assert_eq!(get(&ours, "tracestate"), get(&sdk, "tracestate"));
                for headers in [&ours, &sdk] {
                    let a = W3cPropagator::new().extract(&HeaderExtractor(headers));
                    let b = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
                    assert_eq!(remote(&a), remote(&b));
                    let got = remote(&a).expect("valid");
                    assert_eq!(got.trace_id(), sc.trace_id());
                    assert_eq!(got.span_id(), sc.span_id());
                    assert_eq!(got.trace_flags(), sc.trace_flags());
                    assert!(got.is_remote());
                }
            }
        }
        let propagator = W3cPropagator::new();
        let fields: Vec<&str> = propagator.fields().collect();
        assert_eq!(fields, ["traceparent", "tracestate"]);
    }

    #[test]
    fn w3c_propagator_parses_strictly_and_agrees_with_the_sdk_on_valid_input() {
        use opentelemetry_sdk::propagation::TraceContextPropagator;
        let valid = [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ",
            // Unknown flags are accepted and cleared; later versions may add fields.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
        ];
        let invalid = [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é1",
        ];
        for value in valid {
            let mut headers = HeaderMap::new();
            headers.insert("traceparent", value);
            let ours = remote(&W3cPropagator::new().extract(&HeaderExtractor(&headers)));
            let sdk = remote(&TraceContextPropagator::new().extract(&HeaderExtractor(&headers)));
            assert!(ours.is_some(), "{value}");
            assert_eq!(ours, sdk, "{value}");
        }
        for value in invalid {
            let mut headers = HeaderMap::new();
            headers.insert("traceparent", value);
            let ours = remote(&W3cPropagator::new().extract(&HeaderExtractor(&headers)));
            assert_eq!(ours, None, "{value}");
        }
    }
}
