//! Shared by the examples: a NATS server (yours via `NATS_URL`, or one started
//! here), an SDK tracer provider collecting spans in memory, and a printer that
//! shows each trace as a tree.

use std::collections::HashMap;

use nats_otel::Instrumentation;
use opentelemetry::trace::SpanId;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

/// Everything an example needs; drop it last (it stops a server it started).
pub struct Setup {
    pub url: String,
    pub exporter: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
    _server: Option<nats_otel_testkit::NatsServer>,
}

impl Setup {
    pub fn new() -> Self {
        let (url, server) = match std::env::var("NATS_URL") {
            Ok(url) => (url, None),
            Err(_) => {
                let server = nats_otel_testkit::NatsServer::start();
                println!("started nats-server at {}", server.url());
                (server.url(), Some(server))
            }
        };
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        Self {
            url,
            exporter,
            provider,
            _server: server,
        }
    }

    /// Instrumentation as one service would configure it.
    pub fn instrumentation(&self) -> Instrumentation {
        Instrumentation::builder()
            .with_tracer_provider(&self.provider)
            .with_propagator(TraceContextPropagator::new())
            .build()
    }

    /// Prints every collected trace as an indented tree.
    pub fn print_traces(&self) {
        let spans = self.exporter.get_finished_spans().unwrap_or_default();
        let mut by_trace: Vec<(opentelemetry::trace::TraceId, Vec<&SpanData>)> = Vec::new();
        for span in &spans {
            let trace = span.span_context.trace_id();
            match by_trace.iter_mut().find(|(t, _)| *t == trace) {
                Some((_, list)) => list.push(span),
                None => by_trace.push((trace, vec![span])),
            }
        }
        for (trace, list) in by_trace {
            println!("\ntrace {trace}");
            let mut children: HashMap<SpanId, Vec<&SpanData>> = HashMap::new();
            let ids: Vec<SpanId> = list.iter().map(|s| s.span_context.span_id()).collect();
            let mut roots = Vec::new();
            for span in &list {
                if ids.contains(&span.parent_span_id) {
                    children.entry(span.parent_span_id).or_default().push(span);
                } else {
                    roots.push(*span);
                }
            }
            roots.sort_by_key(|s| s.start_time);
            for root in roots {
                print_span(root, &children, 0);
            }
        }
    }
}

fn print_span(span: &SpanData, children: &HashMap<SpanId, Vec<&SpanData>>, depth: usize) {
    let micros = span
        .end_time
        .duration_since(span.start_time)
        .map(|d| d.as_micros())
        .unwrap_or_default();
    let subject = span
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == nats_otel::semconv::MESSAGING_DESTINATION_NAME)
        .map(|kv| kv.value.as_str().into_owned())
        .unwrap_or_default();
    let links = if span.links.links.is_empty() {
        String::new()
    } else {
        format!(" (+{} link)", span.links.links.len())
    };
    let error = match &span.status {
        opentelemetry::trace::Status::Error { description } => {
            let kind = span
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == nats_otel::semconv::ERROR_TYPE)
                .map(|kv| kv.value.as_str().into_owned())
                .unwrap_or_default();
            format!("  ERROR error.type={kind}: {description}")
        }
        _ => String::new(),
    };
    println!(
        "  {:indent$}{} [{:?}] subject={subject} {micros}µs{links}{error}",
        "",
        span.name,
        span.span_kind,
        indent = depth * 2
    );
    if let Some(list) = children.get(&span.span_context.span_id()) {
        let mut list = list.clone();
        list.sort_by_key(|s| s.start_time);
        for child in list {
            print_span(child, children, depth + 1);
        }
    }
}
