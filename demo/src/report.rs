//! The terminal report: trace waterfalls and the run's summary.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde::Serialize;

use crate::run::Tally;
use crate::RunArgs;
use nats_otel_testkit::SpanRecord;

/// p50/p99 in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn percentiles(mut values: Vec<f64>) -> Percentiles {
    values.retain(|v| v.is_finite() && *v >= 0.0);
    if values.is_empty() {
        return Percentiles::default();
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        let index = ((values.len() as f64 - 1.0) * q).round() as usize;
        (values[index.min(values.len() - 1)] * 1000.0).round() / 1000.0
    };
    Percentiles {
        count: values.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// Latencies of one flow.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FlowLatency {
    pub publish: Percentiles,
    pub queue_wait: Percentiles,
    pub processing: Percentiles,
    pub end_to_end: Percentiles,
}

/// What the run did, and whether the accounting adds up.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub ok: bool,
    pub problems: Vec<String>,
    pub seconds: f64,
    pub orders_created: u32,
    pub orders_reserved: usize,
    pub orders_notified: usize,
    pub tasks: u32,
    pub tasks_done: usize,
    pub tasks_retried: u64,
    pub tasks_dead_lettered: usize,
    pub expected_poison: usize,
    pub foreign_dead_letters: u64,
    pub duplicate_events: u64,
    pub spans: usize,
    pub services: Vec<String>,
    pub latency_ms: BTreeMap<String, FlowLatency>,
    /// Orders placed from the web view's form, counted apart from the scripted ones.
    pub orders_from_page: PageOrders,
}

/// Orders placed from the web view's form, as the consumers saw them (an order
/// may be notified and also dead-lettered by inventory-service).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PageOrders {
    /// Orders seen by any consumer.
    pub placed: usize,
    pub reserved: usize,
    pub notified: usize,
    pub dead_lettered: usize,
}

fn flow_latency(
    spans: &[SpanRecord],
    by_id: &HashMap<&[u8], &SpanRecord>,
    publish: &str,
    process: &str,
) -> FlowLatency {
    let publishes: Vec<f64> = spans
        .iter()
        .filter(|s| s.name.starts_with(publish))
        .map(SpanRecord::duration_ms)
        .collect();
    let processes: Vec<&SpanRecord> = spans
        .iter()
        .filter(|s| s.name.starts_with(process))
        .collect();
    let queue_wait = processes
        .iter()
        .filter_map(|s| s.attributes.get("messaging.nats.queue_wait"))
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|seconds| seconds * 1000.0)
        .collect();
    let processing = processes.iter().map(|s| s.duration_ms()).collect();
    let end_to_end = processes
        .iter()
        .filter_map(|s| {
            let producer = by_id
                .get(s.parent_span_id.as_slice())
                .or_else(|| s.links.first().and_then(|(_, id)| by_id.get(id.as_slice())))?;
            producer
                .name
                .starts_with(publish)
                .then(|| s.end_ns.saturating_sub(producer.start_ns) as f64 / 1e6)
        })
        .collect();
    FlowLatency {
        publish: percentiles(publishes),
        queue_wait: percentiles(queue_wait),
        processing: percentiles(processing),
        end_to_end: percentiles(end_to_end),
    }
}

/// Builds the summary and checks the accounting.
pub fn summarise(
    args: &RunArgs,
    tally: &Tally,
    expected_poison: &BTreeSet<String>,
    spans: &[SpanRecord],
    failed_children: &[String],
    interrupted: bool,
    elapsed: Duration,
) -> Summary {
    let mut problems: Vec<String> = failed_children.to_vec();
    if interrupted {
        problems.push("interrupted".to_owned());
    }
    let orders = args.orders as usize;
    if tally.reserved.len() != orders {
        problems.push(format!(
            "{} of {orders} orders reserved",
            tally.reserved.len()
        ));
    }
    if tally.notified.len() != orders {
        problems.push(format!(
            "{} of {orders} orders notified",
            tally.notified.len()
        ));
    }
    let both: Vec<_> = tally.done.intersection(&tally.dead_lettered).collect();
    if !both.is_empty() {
        problems.push(format!("{} tasks both done and dead-lettered", both.len()));
    }
    let dead: BTreeSet<String> = tally.dead_lettered.iter().cloned().collect();
    if &dead != expected_poison {
        problems.push(format!(
            "dead-lettered {} tasks, expected exactly the {} poison ones",
            dead.len(),
            expected_poison.len()
        ));
    }
    if tally.done.len() + tally.dead_lettered.len() != args.tasks as usize {
        problems.push(format!(
            "{} done + {} dead-lettered != {} tasks",
            tally.done.len(),
            tally.dead_lettered.len(),
            args.tasks
        ));
    }
    let by_id: HashMap<&[u8], &SpanRecord> =
        spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let mut latency = BTreeMap::new();
    latency.insert(
        "orders".to_owned(),
        flow_latency(
            spans,
            &by_id,
            "publish orders.created",
            "process orders.created",
        ),
    );
    latency.insert(
        "tasks".to_owned(),
        flow_latency(spans, &by_id, "publish tasks.", "process TASKS"),
    );
    let services: BTreeSet<String> = spans.iter().map(|s| s.service.clone()).collect();
    Summary {
        ok: problems.is_empty(),
        problems,
        seconds: (elapsed.as_secs_f64() * 100.0).round() / 100.0,
        orders_created: args.orders,
        orders_reserved: tally.reserved.len(),
        orders_notified: tally.notified.len(),
        tasks: args.tasks,
        tasks_done: tally.done.len(),
        tasks_retried: tally.retries,
        tasks_dead_lettered: tally.dead_lettered.len(),
        expected_poison: expected_poison.len(),
        foreign_dead_letters: tally.foreign_dead_letters,
        duplicate_events: tally.duplicates,
        spans: spans.len(),
        services: services.into_iter().collect(),
        latency_ms: latency,
        orders_from_page: PageOrders {
            placed: tally
                .page_reserved
                .iter()
                .chain(&tally.page_notified)
                .chain(&tally.page_dead_lettered)
                .collect::<HashSet<_>>()
                .len(),
            reserved: tally.page_reserved.len(),
            notified: tally.page_notified.len(),
            dead_lettered: tally.page_dead_lettered.len(),
        },
    }
}

use crate::traces::hex;

/// Prints one trace as an indented waterfall with duration bars.
fn print_trace(title: &str, trace: &[&SpanRecord]) {
    let Some(start) = trace.iter().map(|s| s.start_ns).min() else {
        return;
    };
    let end = trace.iter().map(|s| s.end_ns).max().unwrap_or(start);
    let total = end.saturating_sub(start).max(1) as f64;
    const WIDTH: usize = 40;
    println!("\n{title}  (trace {})", hex(&trace[0].trace_id));
    println!(
        "  {:<22} {:<44} {:>9} {:>9}",
        "service", "span", "start", "duration"
    );
    let rows = crate::traces::layout(trace);
    for (depth, span) in rows {
        let offset = span.start_ns.saturating_sub(start) as f64;
        let from = ((offset / total) * WIDTH as f64) as usize;
        let len = (((span.end_ns.saturating_sub(span.start_ns)) as f64 / total) * WIDTH as f64)
            .ceil() as usize;
        let bar: String =
            " ".repeat(from.min(WIDTH)) + &"█".repeat(len.clamp(1, WIDTH - from.min(WIDTH - 1)));
        let name = format!(
            "{}{}{}",
            "  ".repeat(depth),
            span.name,
            if span.error { " ✗" } else { "" }
        );
        println!(
            "  {:<22} {:<44} {:>7.1}ms {:>7.1}ms |{bar}",
            span.service,
            name,
            offset / 1e6,
            span.duration_ms()
        );
    }
}

/// Prints a complete order trace and a retried-then-dead-lettered task trace.
pub fn print_waterfalls(spans: &[SpanRecord], order_prefix: &str) {
    let traces = crate::traces::by_trace(spans);
    let _ = order_prefix;
    let order = traces
        .values()
        .filter(|t| t.iter().any(|s| s.name == "publish orders.created"))
        .max_by_key(|t| {
            (
                t.iter().map(|s| &s.service).collect::<BTreeSet<_>>().len(),
                t.len(),
            )
        });
    if let Some(trace) = order {
        print_trace("One order, across services", trace);
    }
    let task = traces
        .values()
        .filter(|t| t.iter().any(|s| s.name.starts_with("publish dlq.tasks.")))
        .max_by_key(|t| t.len());
    if let Some(trace) = task {
        print_trace("One poison task: retried, then dead-lettered", trace);
    }
}

/// How to work with the run's dead letters: with the `nats-otel` command when
/// the demo ran against the user's own server (`external`, its URL), which keeps
/// them; the demo's own server takes them with it when it stops.
pub fn print_dead_letter_hint(summary: &Summary, external: Option<&str>) {
    if summary.tasks_dead_lettered == 0 {
        return;
    }
    match external {
        Some(url) => {
            println!(
                "  dead letters: stream {} on {url}; inspect them with `nats-otel --server {url} dlq ls` \
                 (`dlq show SEQ` for one), and after a fix send them back with \
                 `nats-otel --server {url} dlq replay --all` (install: `cargo install --path cli`)",
                crate::flows::DLQ_STREAM
            );
        }
        None => println!(
            "  dead letters: gone with the demo's own server; run with NATS_URL set to keep them \
             and inspect them with `nats-otel dlq ls`"
        ),
    }
}

/// Prints the summary.
pub fn print_summary(summary: &Summary) {
    println!("\nSummary ({:.1} s)", summary.seconds);
    println!(
        "  orders: {} created, {} reserved (inventory), {} notified",
        summary.orders_created, summary.orders_reserved, summary.orders_notified
    );
    println!(
        "  tasks:  {} total, {} done, {} retries, {} dead-lettered (expected {})",
        summary.tasks,
        summary.tasks_done,
        summary.tasks_retried,
        summary.tasks_dead_lettered,
        summary.expected_poison
    );
    let page = &summary.orders_from_page;
    if page.placed > 0 {
        println!(
            "  orders from the web page: {} placed, {} reserved, {} notified, {} dead-lettered",
            page.placed, page.reserved, page.notified, page.dead_lettered
        );
    }
    if summary.foreign_dead_letters > 0 {
        println!(
            "  foreign messages dead-lettered: {}",
            summary.foreign_dead_letters
        );
    }
    println!(
        "  spans received: {} from {}",
        summary.spans,
        summary.services.join(", ")
    );
    println!("  latency (ms)          p50      p99");
    for (flow, latency) in &summary.latency_ms {
        for (name, p) in [
            ("publish", &latency.publish),
            ("queue wait", &latency.queue_wait),
            ("processing", &latency.processing),
            ("end-to-end", &latency.end_to_end),
        ] {
            if p.count > 0 {
                println!("  {flow:<7} {name:<11} {:>8.2} {:>8.2}", p.p50_ms, p.p99_ms);
            }
        }
    }
    if summary.ok {
        println!("  accounting: OK (every order processed by both consumers, every task done or dead-lettered)");
    } else {
        println!("  accounting: FAILED: {}", summary.problems.join("; "));
    }
}
