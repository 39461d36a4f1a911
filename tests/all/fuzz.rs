//! Fuzz targets for what comes off the network: trace headers, subjects,
//! dead-letter headers and compressed payloads. Each target takes raw bytes and
//! must never panic and keep its invariants. The suite replays the committed
//! corpus (`tests/corpus/<target>/`) and runs property tests with `proptest`
//! (stable Rust; no `cargo fuzz` nightly toolchain needed).

use std::path::Path;
use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use nats_otel::jetstream::dead_letter::DeadLetterInfo;
use nats_otel::{HeaderExtractor, Instrumentation, W3cPropagator};
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use proptest::prelude::*;

/// `name: value` lines; entries NATS cannot carry are skipped, as the network
/// layer would never deliver them.
fn header_map(data: &[u8]) -> HeaderMap {
    let text = String::from_utf8_lossy(data);
    let mut headers = HeaderMap::new();
    for line in text.split('\n') {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_str(name.trim()),
            HeaderValue::from_str(value.trim_start()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    headers
}

/// Target `headers`: extraction through every propagator never panics, and a
/// context it yields is a valid remote one.
pub fn headers(data: &[u8]) {
    let headers = header_map(data);
    let extractor = HeaderExtractor(&headers);
    for key in [
        "traceparent",
        "tracestate",
        "baggage",
        "Traceparent",
        "bad key:",
    ] {
        let _ = opentelemetry::propagation::Extractor::get(&extractor, key);
    }
    let _ = opentelemetry::propagation::Extractor::keys(&extractor);
    let composite = TextMapCompositePropagator::new(vec![
        Box::new(W3cPropagator::new()),
        Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
    ]);
    for cx in [
        nats_otel::propagation::extract_context(&W3cPropagator::new(), &headers),
        nats_otel::propagation::extract_context(&composite, &headers),
        nats_otel::propagation::extract_context(
            &opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            &headers,
        ),
    ] {
        if cx.has_active_span() {
            let span = cx.span();
            let sc = span.span_context();
            assert!(sc.is_valid() && sc.is_remote(), "{sc:?}");
        }
        // Whatever was extracted can be injected again without panicking.
        let mut out = HeaderMap::new();
        W3cPropagator::new().inject_context(&cx, &mut nats_otel::HeaderInjector(&mut out));
    }
}

/// Target `subjects`: mapping never panics, is deterministic, and never yields
/// whitespace or control characters (span names stay clean).
pub fn subjects(data: &[u8]) {
    let subject = String::from_utf8_lossy(data);
    let inst = Instrumentation::builder()
        .with_tracing(false)
        .with_metrics(false)
        .build();
    let template = inst.template(&subject).into_owned();
    assert_eq!(template, inst.template(&subject));
    assert!(
        !template.contains(|c: char| c.is_whitespace() || c.is_control()),
        "{template:?}"
    );
    assert!(!template.is_empty());
    let templates = nats_otel::SubjectTemplates::new(["orders.*.items", "tenant.>", "a.*.>"]);
    let _ = nats_otel::SubjectMapper::template(&templates, &subject);
    let _ = nats_otel::destination::subject_matches("orders.*.>", &subject);
}

/// Target `dead_letter`: reading provenance never panics, and a message without
/// `Dlq-Reason` is not taken for a dead letter.
pub fn dead_letter(data: &[u8]) {
    let headers = header_map(data);
    let info = DeadLetterInfo::from_headers(&headers);
    let has_reason = headers
        .iter()
        .any(|(name, _)| AsRef::<str>::as_ref(name).eq_ignore_ascii_case("Dlq-Reason"));
    assert_eq!(info.is_some(), has_reason);
}

/// Target `decompress`: the first byte picks the encoding, the rest is the
/// payload. Decoding never panics and never returns more than the limit.
pub fn decompress(data: &[u8]) {
    const LIMIT: usize = 1 << 20;
    let Some((&selector, payload)) = data.split_first() else {
        return;
    };
    let encoding = match selector {
        0 => "zstd",
        1 => "gzip",
        2 => "br",
        3 => "identity",
        _ => "x-unknown",
    };
    let mut headers = HeaderMap::new();
    headers.insert(nats_otel::compression::CONTENT_ENCODING, encoding);
    match nats_otel::compression::decode(Some(&headers), payload, LIMIT) {
        Ok(Some(decoded)) => assert!(decoded.len() <= LIMIT),
        Ok(None) => assert_eq!(encoding, "identity"),
        Err(error) => {
            // Every failure explains itself.
            assert!(!error.to_string().is_empty());
        }
    }
}

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    entries.sort();
    assert!(
        entries.len() >= 8,
        "corpus {target} has {} inputs",
        entries.len()
    );
    for path in entries {
        let data = std::fs::read(&path).expect("corpus input");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{target}: {} failed", path.display());
    }
}

#[test]
fn corpus_replays_for_every_target() {
    replay("headers", headers);
    replay("subjects", subjects);
    replay("dead_letter", dead_letter);
    replay("decompress", decompress);
}

fn traceparent_like() -> impl Strategy<Value = String> {
    (
        "[0-9a-fA-F]{0,3}",
        "[0-9a-f]{30,34}",
        "[0-9a-fA-F]{14,18}",
        "[0-9a-f]{1,3}",
        "(-[a-z]{0,4})?",
    )
        .prop_map(|(v, t, s, f, rest)| format!("{v}-{t}-{s}-{f}{rest}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn headers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
        headers(&data);
    }

    #[test]
    fn traceparent_like_headers_never_panic(value in traceparent_like(), state in "[ -~]{0,64}") {
        headers(format!("traceparent: {value}\ntracestate: {state}\n").as_bytes());
    }

    #[test]
    fn subjects_never_panic(subject in "[a-zA-Z0-9_.*>\\- \t\u{0}-\u{1f}é]{0,200}") {
        subjects(subject.as_bytes());
    }

    #[test]
    fn dead_letter_headers_never_panic(
        reason in proptest::option::of("[ -~]{0,40}"),
        sequence in "[0-9a-z\\-]{0,24}",
        count in "[0-9 ]{0,24}",
    ) {
        let mut text = String::new();
        if let Some(reason) = reason {
            text.push_str(&format!("Dlq-Reason: {reason}\n"));
        }
        text.push_str(&format!("Dlq-Source-Sequence: {sequence}\nDlq-Delivery-Count: {count}\n"));
        dead_letter(text.as_bytes());
    }

    #[test]
    fn decompression_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        decompress(&data);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
        gzip in any::<bool>(),
    ) {
        let text = b"{\"order\":1,\"sku\":\"SKU-1\"}\n".repeat(64);
        let mut frame = if gzip {
            use std::io::Write;
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(&text).unwrap();
            encoder.finish().unwrap()
        } else {
            zstd::bulk::compress(&text, 1).unwrap()
        };
        for (at, byte) in flips {
            let len = frame.len();
            frame[at % len] ^= byte;
        }
        frame.truncate(cut % (frame.len() + 1));
        let mut data = vec![u8::from(gzip)];
        data.extend_from_slice(&frame);
        decompress(&data);
    }
}
