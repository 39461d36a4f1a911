//! The cross-language header contract's test vectors (`interop/vectors.json`, see
//! CONTRACT.md), run through nats-otel's readers and through the Python and Node
//! peers': every MUST case extracts exactly what it says in all three; a MAY case
//! either does or yields no context (nats-otel does all of them).

use std::collections::BTreeMap;
use std::path::PathBuf;

use nats_otel::jetstream::dead_letter::DeadLetterInfo;
use nats_otel::{HeaderExtractor, W3cPropagator};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use serde::Deserialize;
use serde_json::{json, Value};

use super::harness::Lang;

#[derive(Debug, Deserialize)]
struct Vectors {
    traceparent: Vec<Case>,
    dead_letter: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    name: String,
    level: String,
    headers: BTreeMap<String, String>,
    expect: Value,
}

fn vectors() -> Vectors {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop/vectors.json");
    let text = std::fs::read_to_string(&path).expect("interop/vectors.json");
    serde_json::from_str(&text).expect("the vectors parse")
}

fn header_map(headers: &BTreeMap<String, String>) -> async_nats::HeaderMap {
    let mut map = async_nats::HeaderMap::new();
    for (name, value) in headers {
        map.insert(name.as_str(), value.as_str());
    }
    map
}

/// What nats-otel extracts from a message with `headers` (its propagator over
/// NATS headers, as every instrumented consumer does).
fn read_traceparent(headers: &BTreeMap<String, String>) -> Value {
    let map = header_map(headers);
    let cx = W3cPropagator::new().extract(&HeaderExtractor(&map));
    let span = cx.span();
    let span = span.span_context();
    if !span.is_valid() {
        return Value::Null;
    }
    json!({
        "trace_id": format!("{:032x}", span.trace_id()),
        "span_id": format!("{:016x}", span.span_id()),
        "sampled": span.is_sampled(),
        "trace_state": span.trace_state().header(),
    })
}

/// What nats-otel reads of a dead letter's provenance.
fn read_dead_letter(headers: &BTreeMap<String, String>) -> Value {
    match DeadLetterInfo::from_headers(&header_map(headers)) {
        None => Value::Null,
        Some(info) => json!({
            "reason": info.reason,
            "source_stream": info.stream,
            "source_sequence": info.sequence,
            "source_subject": info.subject,
            "consumer": info.consumer,
            "delivery_count": info.delivery_count,
            "original_traceparent": info.original_traceparent,
        }),
    }
}

#[test]
fn nats_otel_reads_every_vector_must_and_may() {
    let vectors = vectors();
    assert_eq!(vectors.traceparent.len(), 11);
    assert_eq!(vectors.dead_letter.len(), 5);
    for case in &vectors.traceparent {
        assert_eq!(
            read_traceparent(&case.headers),
            case.expect,
            "traceparent: {}",
            case.name
        );
    }
    for case in &vectors.dead_letter {
        assert_eq!(
            read_dead_letter(&case.headers),
            case.expect,
            "dead letter: {}",
            case.name
        );
    }
}

/// Checks `lang`'s results against the vectors: MUST cases exactly, MAY cases
/// either exactly or as no context. Returns the MAY cases it does not do.
async fn peer_reads_the_vectors(lang: Lang) -> Vec<String> {
    let vectors = vectors();
    let results = lang.vectors().await;
    let cases: Vec<(&str, &Case)> = vectors
        .traceparent
        .iter()
        .map(|c| ("traceparent", c))
        .chain(vectors.dead_letter.iter().map(|c| ("dead_letter", c)))
        .collect();
    assert_eq!(results.len(), cases.len(), "{lang:?}: one result per case");
    let mut not_done = Vec::new();
    for ((group, case), result) in cases.iter().zip(&results) {
        assert_eq!(
            (result.group.as_str(), result.name.as_str()),
            (*group, case.name.as_str())
        );
        match case.level.as_str() {
            "MUST" => assert_eq!(result.got, case.expect, "{lang:?} {group}: {}", case.name),
            "MAY" if result.got == case.expect => {}
            "MAY" => {
                assert_eq!(result.got, Value::Null, "{lang:?} {group}: {}", case.name);
                not_done.push(case.name.clone());
            }
            other => panic!("unknown level {other:?} in {}", case.name),
        }
    }
    not_done
}

#[tokio::test]
async fn the_python_peer_reads_every_must_vector() {
    // Its SDK's default getter is case-sensitive, and its Dlq-* reader takes the
    // exact names: both MAY cases yield nothing.
    assert_eq!(
        peer_reads_the_vectors(Lang::Python).await,
        [
            "capitalised header name Traceparent",
            "lowercase header names"
        ]
    );
}

#[tokio::test]
async fn the_node_peer_reads_every_must_vector() {
    assert_eq!(
        peer_reads_the_vectors(Lang::Node).await,
        [
            "capitalised header name Traceparent",
            "lowercase header names"
        ]
    );
}
