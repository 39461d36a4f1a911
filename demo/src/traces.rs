//! Traces as the demo shows them, in the terminal and in the web view: spans
//! grouped by trace, laid out parent before child, siblings by start time.

use std::collections::{BTreeSet, HashMap};

use nats_otel_testkit::SpanRecord;

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans of each trace.
pub fn by_trace(spans: &[SpanRecord]) -> HashMap<&[u8], Vec<&SpanRecord>> {
    let mut traces: HashMap<&[u8], Vec<&SpanRecord>> = HashMap::new();
    for span in spans {
        traces
            .entry(span.trace_id.as_slice())
            .or_default()
            .push(span);
    }
    traces
}

/// The waterfall order of `trace`: each span with its depth, children under
/// their parent, siblings (and roots, including spans whose parent is not in the
/// trace) by start time.
pub fn layout<'a>(trace: &[&'a SpanRecord]) -> Vec<(usize, &'a SpanRecord)> {
    let ids: BTreeSet<&[u8]> = trace.iter().map(|s| s.span_id.as_slice()).collect();
    let mut children: HashMap<&[u8], Vec<&'a SpanRecord>> = HashMap::new();
    let mut roots = Vec::new();
    for span in trace {
        if ids.contains(span.parent_span_id.as_slice()) && span.parent_span_id != span.span_id {
            children
                .entry(span.parent_span_id.as_slice())
                .or_default()
                .push(span);
        } else {
            roots.push(*span);
        }
    }
    roots.sort_by_key(|s| (s.start_ns, s.span_id.clone()));
    let mut rows = Vec::with_capacity(trace.len());
    // Iterative depth-first walk: a hostile parent chain cannot overflow the stack.
    let mut stack: Vec<(usize, &'a SpanRecord)> = roots.into_iter().rev().map(|s| (0, s)).collect();
    let mut seen: BTreeSet<&[u8]> = BTreeSet::new();
    while let Some((depth, span)) = stack.pop() {
        if !seen.insert(span.span_id.as_slice()) {
            continue;
        }
        rows.push((depth, span));
        if let Some(list) = children.get(span.span_id.as_slice()) {
            let mut list = list.clone();
            list.sort_by_key(|s| (s.start_ns, s.span_id.clone()));
            stack.extend(list.into_iter().rev().map(|s| (depth + 1, s)));
        }
    }
    rows
}
