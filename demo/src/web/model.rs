//! What the web view shows, computed from the spans the receiver holds: trace
//! summaries, one trace's waterfall, the service map, latency distributions.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use nats_otel_testkit::SpanRecord;
use serde::Serialize;

use crate::traces::{by_trace, hex, layout};

const OPERATION_TYPE: &str = "messaging.operation.type";
const TEMPLATE: &str = "messaging.destination.template";
const QUEUE_WAIT: &str = "messaging.nats.queue_wait";

/// The node dead letters flow into on the service map.
pub const DEAD_LETTERS: &str = "dead letters";

/// One trace in the list.
#[derive(Debug, Serialize, PartialEq)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The first root span's name and service.
    pub root: String,
    pub root_service: String,
    pub services: Vec<String>,
    pub spans: usize,
    pub duration_ms: f64,
    pub error: bool,
    /// Unix milliseconds of its first span's start.
    pub started_ms: u64,
}

/// The traces, newest first, at most `limit`.
pub fn trace_summaries(spans: &[SpanRecord], limit: usize) -> Vec<TraceSummary> {
    let mut summaries: Vec<TraceSummary> = by_trace(spans)
        .into_iter()
        .map(|(id, trace)| {
            let start = trace.iter().map(|s| s.start_ns).min().unwrap_or(0);
            let end = trace.iter().map(|s| s.end_ns).max().unwrap_or(start);
            let root = layout(&trace).first().map(|(_, s)| *s);
            TraceSummary {
                trace_id: hex(id),
                root: root.map(|s| s.name.clone()).unwrap_or_default(),
                root_service: root.map(|s| s.service.clone()).unwrap_or_default(),
                services: trace
                    .iter()
                    .map(|s| s.service.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect(),
                spans: trace.len(),
                duration_ms: end.saturating_sub(start) as f64 / 1e6,
                error: trace.iter().any(|s| s.error),
                started_ms: start / 1_000_000,
            }
        })
        .collect();
    summaries.sort_by(|a, b| {
        b.started_ms
            .cmp(&a.started_ms)
            .then_with(|| a.trace_id.cmp(&b.trace_id))
    });
    summaries.truncate(limit);
    summaries
}

/// A link of a span, and whether its target is in the same trace.
#[derive(Debug, Serialize, PartialEq)]
pub struct LinkView {
    pub trace_id: String,
    pub span_id: String,
    pub in_trace: bool,
}

/// One row of a waterfall.
#[derive(Debug, Serialize, PartialEq)]
pub struct Row {
    pub depth: usize,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub service: String,
    pub offset_ms: f64,
    pub duration_ms: f64,
    pub error: bool,
    pub attributes: BTreeMap<String, String>,
    pub links: Vec<LinkView>,
}

/// One trace laid out as the terminal waterfall lays it out.
#[derive(Debug, Serialize, PartialEq)]
pub struct Waterfall {
    pub trace_id: String,
    pub duration_ms: f64,
    pub rows: Vec<Row>,
}

/// The waterfall of the trace `trace_id` (hex), if the receiver holds it.
pub fn waterfall(spans: &[SpanRecord], trace_id: &str) -> Option<Waterfall> {
    let trace: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| hex(&s.trace_id).eq_ignore_ascii_case(trace_id))
        .collect();
    let start = trace.iter().map(|s| s.start_ns).min()?;
    let end = trace.iter().map(|s| s.end_ns).max().unwrap_or(start);
    let ids: BTreeSet<&[u8]> = trace.iter().map(|s| s.span_id.as_slice()).collect();
    let own = trace.first().map(|s| s.trace_id.as_slice());
    let rows = layout(&trace)
        .into_iter()
        .map(|(depth, span)| Row {
            depth,
            span_id: hex(&span.span_id),
            parent_span_id: hex(&span.parent_span_id),
            name: span.name.clone(),
            service: span.service.clone(),
            offset_ms: span.start_ns.saturating_sub(start) as f64 / 1e6,
            duration_ms: span.duration_ms(),
            error: span.error,
            attributes: span
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            links: span
                .links
                .iter()
                .map(|(linked_trace, linked_span)| LinkView {
                    trace_id: hex(linked_trace),
                    span_id: hex(linked_span),
                    in_trace: own == Some(linked_trace.as_slice())
                        && ids.contains(linked_span.as_slice()),
                })
                .collect(),
        })
        .collect();
    Some(Waterfall {
        trace_id: trace_id.to_ascii_lowercase(),
        duration_ms: end.saturating_sub(start) as f64 / 1e6,
        rows,
    })
}

/// A message flow between two services.
#[derive(Debug, Serialize, PartialEq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// The destination template.
    pub flow: String,
    pub messages: usize,
    /// Producer span start → consumer span start (absent for dead letters, which
    /// nothing in the demo consumes).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub dead_letter: bool,
}

/// Services and the message flows between them.
#[derive(Debug, Serialize, PartialEq)]
pub struct ServiceMap {
    pub nodes: Vec<String>,
    pub edges: Vec<Edge>,
}

fn attribute<'a>(span: &'a SpanRecord, key: &str) -> Option<&'a str> {
    span.attributes.get(key).map(String::as_str)
}

fn flow_of(span: &SpanRecord) -> String {
    attribute(span, TEMPLATE).map_or_else(
        || {
            span.name
                .split_once(' ')
                .map_or(span.name.clone(), |(_, t)| t.to_owned())
        },
        str::to_owned,
    )
}

/// Each `process` span with the `send` span that produced its message (its
/// parent, else a linked span).
fn deliveries(spans: &[SpanRecord]) -> Vec<(&SpanRecord, &SpanRecord)> {
    let index: HashMap<(&[u8], &[u8]), &SpanRecord> = spans
        .iter()
        .map(|s| ((s.trace_id.as_slice(), s.span_id.as_slice()), s))
        .collect();
    let is_send = |s: &&SpanRecord| attribute(s, OPERATION_TYPE) == Some("send");
    let producer_of =
        |trace: &[u8], span: &[u8]| index.get(&(trace, span)).copied().filter(is_send);
    spans
        .iter()
        .filter(|s| attribute(s, OPERATION_TYPE) == Some("process"))
        .filter_map(|consumer| {
            let parent = producer_of(&consumer.trace_id, &consumer.parent_span_id);
            let linked = || consumer.links.iter().find_map(|(t, s)| producer_of(t, s));
            parent.or_else(linked).map(|producer| (producer, consumer))
        })
        .collect()
}

/// Nearest-rank percentile of sorted `values`.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn ms_between(from_ns: u64, to_ns: u64) -> f64 {
    to_ns.saturating_sub(from_ns) as f64 / 1e6
}

/// The service map: an edge per (producer service, consumer service, flow), and
/// dead-letter copies as edges into [`DEAD_LETTERS`].
pub fn service_map(spans: &[SpanRecord]) -> ServiceMap {
    let mut latencies: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    for (producer, consumer) in deliveries(spans) {
        latencies
            .entry((
                producer.service.clone(),
                consumer.service.clone(),
                flow_of(producer),
            ))
            .or_default()
            .push(ms_between(producer.start_ns, consumer.start_ns));
    }
    let mut edges: Vec<Edge> = latencies
        .into_iter()
        .map(|((from, to, flow), mut values)| {
            values.sort_by(f64::total_cmp);
            Edge {
                from,
                to,
                dead_letter: flow.starts_with("dlq."),
                messages: values.len(),
                p50_ms: percentile(&values, 50.0),
                p99_ms: percentile(&values, 99.0),
                flow,
            }
        })
        .collect();
    let mut dead: BTreeMap<(String, String), usize> = BTreeMap::new();
    for span in spans {
        let flow = flow_of(span);
        if attribute(span, OPERATION_TYPE) == Some("send") && flow.starts_with("dlq.") {
            *dead.entry((span.service.clone(), flow)).or_default() += 1;
        }
    }
    edges.extend(dead.into_iter().map(|((from, flow), messages)| Edge {
        from,
        to: DEAD_LETTERS.to_owned(),
        flow,
        messages,
        p50_ms: None,
        p99_ms: None,
        dead_letter: true,
    }));
    let nodes = edges
        .iter()
        .flat_map(|e| [e.from.clone(), e.to.clone()])
        .chain(spans.iter().map(|s| s.service.clone()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    ServiceMap { nodes, edges }
}

/// Upper bounds of the histogram buckets, in ms (the last bucket is everything
/// above).
pub const BUCKETS_MS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// A latency distribution.
#[derive(Debug, Serialize, PartialEq)]
pub struct Distribution {
    pub count: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Counts per bucket of [`BUCKETS_MS`], plus one for everything above.
    pub buckets: Vec<usize>,
}

fn distribution(mut values: Vec<f64>) -> Distribution {
    values.sort_by(f64::total_cmp);
    let mut buckets = vec![0; BUCKETS_MS.len() + 1];
    for value in &values {
        let index = BUCKETS_MS
            .iter()
            .position(|le| value <= le)
            .unwrap_or(BUCKETS_MS.len());
        buckets[index] += 1;
    }
    Distribution {
        count: values.len(),
        p50_ms: percentile(&values, 50.0),
        p99_ms: percentile(&values, 99.0),
        buckets,
    }
}

/// Queue wait, processing and end-to-end latency.
#[derive(Debug, Serialize, PartialEq)]
pub struct Histograms {
    pub bucket_bounds_ms: Vec<f64>,
    /// JetStream: stored → delivered (`messaging.nats.queue_wait`).
    pub queue_wait: Distribution,
    /// `process` span durations.
    pub processing: Distribution,
    /// Producer span start → end of the consumer's `process` span.
    pub end_to_end: Distribution,
}

pub fn histograms(spans: &[SpanRecord]) -> Histograms {
    let process = spans
        .iter()
        .filter(|s| attribute(s, OPERATION_TYPE) == Some("process"));
    Histograms {
        bucket_bounds_ms: BUCKETS_MS.to_vec(),
        queue_wait: distribution(
            process
                .clone()
                .filter_map(|s| attribute(s, QUEUE_WAIT)?.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
                .map(|seconds| seconds * 1000.0)
                .collect(),
        ),
        processing: distribution(process.map(SpanRecord::duration_ms).collect()),
        end_to_end: distribution(
            deliveries(spans)
                .into_iter()
                .map(|(producer, consumer)| ms_between(producer.start_ns, consumer.end_ns))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(
        trace: u8,
        id: u8,
        parent: u8,
        name: &str,
        service: &str,
        start_ms: u64,
        end_ms: u64,
    ) -> SpanRecord {
        let ty = match name.split(' ').next() {
            Some("publish") => "send",
            Some("process") => "process",
            _ => "",
        };
        let mut attributes = HashMap::new();
        if !ty.is_empty() {
            attributes.insert(OPERATION_TYPE.to_owned(), ty.to_owned());
        }
        if let Some((_, template)) = name.split_once(' ') {
            attributes.insert(TEMPLATE.to_owned(), template.to_owned());
        }
        SpanRecord {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 {
                Vec::new()
            } else {
                vec![parent; 8]
            },
            name: name.to_owned(),
            start_ns: start_ms * 1_000_000,
            end_ns: end_ms * 1_000_000,
            service: service.to_owned(),
            attributes,
            links: Vec::new(),
            error: false,
        }
    }

    /// One order: published, processed by two services; one task dead-lettered.
    fn spans() -> Vec<SpanRecord> {
        let mut processed = span(
            1,
            3,
            1,
            "process orders.created",
            "notification-service",
            12,
            20,
        );
        processed.error = true;
        let mut linked = span(
            1,
            2,
            1,
            "process orders.created",
            "inventory-service",
            11,
            15,
        );
        linked.links.push((vec![1; 16], vec![1; 8]));
        linked
            .attributes
            .insert(QUEUE_WAIT.to_owned(), "0.004".to_owned());
        vec![
            span(1, 1, 0, "publish orders.created", "order-service", 10, 11),
            linked,
            processed,
            span(2, 5, 0, "publish tasks.email", "task-producer", 100, 101),
            span(2, 6, 5, "process TASKS", "task-worker", 103, 104),
            span(2, 7, 6, "publish dlq.tasks.email", "task-worker", 104, 105),
        ]
    }

    #[test]
    fn traces_are_summarised_newest_first() {
        let summaries = trace_summaries(&spans(), 10);
        assert_eq!(
            summaries
                .iter()
                .map(|s| (
                    s.root.as_str(),
                    s.services.len(),
                    s.spans,
                    s.error,
                    s.duration_ms
                ))
                .collect::<Vec<_>>(),
            [
                ("publish tasks.email", 2, 3, false, 5.0),
                ("publish orders.created", 3, 3, true, 10.0),
            ]
        );
        assert_eq!(trace_summaries(&spans(), 1).len(), 1);
    }

    #[test]
    fn a_waterfall_lays_children_under_parents_by_start_time_with_links() {
        let trace = waterfall(&spans(), &"01".repeat(16)).expect("trace 1");
        let rows: Vec<(usize, &str, &str, f64, bool)> = trace
            .rows
            .iter()
            .map(|r| {
                (
                    r.depth,
                    r.name.as_str(),
                    r.service.as_str(),
                    r.offset_ms,
                    r.error,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (0, "publish orders.created", "order-service", 0.0, false),
                (1, "process orders.created", "inventory-service", 1.0, false),
                (
                    1,
                    "process orders.created",
                    "notification-service",
                    2.0,
                    true
                ),
            ]
        );
        assert_eq!(
            trace.rows[1].links,
            [LinkView {
                trace_id: "01".repeat(16),
                span_id: "01".repeat(8),
                in_trace: true
            }]
        );
        assert_eq!(waterfall(&spans(), "ff"), None);
    }

    #[test]
    fn the_service_map_has_an_edge_per_flow_and_marks_dead_letters() {
        let map = service_map(&spans());
        type EdgeView<'a> = (&'a str, &'a str, &'a str, usize, Option<f64>, bool);
        let edges: Vec<EdgeView> = map
            .edges
            .iter()
            .map(|e| {
                (
                    e.from.as_str(),
                    e.to.as_str(),
                    e.flow.as_str(),
                    e.messages,
                    e.p50_ms,
                    e.dead_letter,
                )
            })
            .collect();
        assert_eq!(
            edges,
            [
                (
                    "order-service",
                    "inventory-service",
                    "orders.created",
                    1,
                    Some(1.0),
                    false
                ),
                (
                    "order-service",
                    "notification-service",
                    "orders.created",
                    1,
                    Some(2.0),
                    false
                ),
                (
                    "task-producer",
                    "task-worker",
                    "tasks.email",
                    1,
                    Some(3.0),
                    false
                ),
                (
                    "task-worker",
                    DEAD_LETTERS,
                    "dlq.tasks.email",
                    1,
                    None,
                    true
                ),
            ]
        );
        assert!(map.nodes.contains(&DEAD_LETTERS.to_owned()));
    }

    #[test]
    fn histograms_bucket_queue_wait_processing_and_end_to_end() {
        let h = histograms(&spans());
        assert_eq!((h.queue_wait.count, h.queue_wait.p50_ms), (1, Some(4.0)));
        assert_eq!(h.processing.count, 3);
        assert_eq!(h.processing.buckets.iter().sum::<usize>(), 3);
        // 10 → 15, 10 → 20, 100 → 104.
        assert_eq!(h.end_to_end.count, 3);
        assert_eq!(h.end_to_end.p50_ms, Some(5.0));
        assert_eq!(h.end_to_end.p99_ms, Some(10.0));
    }
}
