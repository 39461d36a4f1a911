//! An embedded OTLP/gRPC receiver: the children export here when no collector is
//! configured, and the report is built from what arrives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;

/// Spans kept at most; beyond this new spans are counted and dropped.
const MAX_SPANS: usize = 500_000;

/// One received span, with what the report needs.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub name: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub service: String,
    pub attributes: HashMap<String, String>,
    pub links: Vec<(Vec<u8>, Vec<u8>)>,
    pub error: bool,
}

impl SpanRecord {
    /// Duration in milliseconds.
    pub fn duration_ms(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e6
    }
}

/// Spans received so far.
#[derive(Debug, Default)]
pub struct Store {
    pub spans: Vec<SpanRecord>,
    pub dropped: u64,
    pub metric_exports: u64,
}

/// A running receiver.
pub struct Receiver {
    pub address: SocketAddr,
    pub store: Arc<Mutex<Store>>,
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn map(attributes: &[KeyValue]) -> HashMap<String, String> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

struct Traces(Arc<Mutex<Store>>);

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let mut store = self
            .0
            .lock()
            .map_err(|_| tonic::Status::internal("receiver store poisoned"))?;
        for resource in request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .map(|r| map(&r.attributes))
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_else(|| "unknown_service".to_owned());
            for scope in resource.scope_spans {
                for span in scope.spans {
                    if store.spans.len() >= MAX_SPANS {
                        store.dropped += 1;
                        continue;
                    }
                    let error = span.status.as_ref().is_some_and(|s| s.code == 2);
                    store.spans.push(SpanRecord {
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        name: span.name,
                        start_ns: span.start_time_unix_nano,
                        end_ns: span.end_time_unix_nano,
                        service: service.clone(),
                        attributes: map(&span.attributes),
                        links: span
                            .links
                            .into_iter()
                            .map(|l| (l.trace_id, l.span_id))
                            .collect(),
                        error,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

struct Metrics(Arc<Mutex<Store>>);

#[tonic::async_trait]
impl MetricsService for Metrics {
    async fn export(
        &self,
        _request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        if let Ok(mut store) = self.0.lock() {
            store.metric_exports += 1;
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts the receiver on a free loopback port.
pub async fn start() -> Result<Receiver, crate::services::Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let store = Arc::new(Mutex::new(Store::default()));
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Traces(store.clone())))
        .add_service(MetricsServiceServer::new(Metrics(store.clone())))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    Ok(Receiver { address, store })
}
