//! An in-process OTLP receiver on loopback, gRPC and HTTP/protobuf on one port (a
//! connection opening with the HTTP/2 preface is gRPC; any other is HTTP/1.1
//! `POST /v1/traces` or `/v1/metrics`): keeps the spans it is sent (or only counts
//! them) and the names of the metrics, and wakes whoever waits for them. The demo
//! builds its report from it; tests assert on it.

mod http;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

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

/// What was received so far.
#[derive(Debug, Default)]
pub struct Store {
    /// The spans kept (none in counting mode).
    pub spans: Vec<SpanRecord>,
    /// Spans received, kept or not.
    pub received: u64,
    /// Spans not kept because the store was full.
    pub dropped: u64,
    /// Metric export requests received.
    pub metric_exports: u64,
    /// Export requests (traces or metrics) that came over HTTP/protobuf.
    pub http_exports: u64,
    /// The name of every metric received.
    pub metric_names: BTreeSet<String>,
    /// Whether spans are only counted.
    counting: bool,
}

/// A running receiver; it stops with the runtime it was started on.
pub struct Receiver {
    /// Where it listens (`127.0.0.1`, a free port).
    pub address: SocketAddr,
    /// What it received.
    pub store: Arc<Mutex<Store>>,
    changed: Arc<Notify>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    /// The OTLP endpoint to export to, `http://127.0.0.1:{port}`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A handle that records OTLP/HTTP protobuf trace bodies as if they had
    /// arrived on the receiver's own port (the demo's web view forwards its page's
    /// spans through it).
    pub fn ingest(&self) -> Ingest {
        Ingest {
            store: self.store.clone(),
            changed: self.changed.clone(),
        }
    }

    /// A copy of the spans kept so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.lock().spans.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `check` finds what it wants in the store (checked now and after
    /// every export), or `timeout` passes (then `None`).
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Store) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before checking, so an export in between is not missed.
            changed.as_mut().enable();
            if let Some(found) = check(&self.lock()) {
                return Some(found);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }
}

/// Records trace exports handed over by another server; see [`Receiver::ingest`].
#[derive(Clone)]
pub struct Ingest {
    store: Arc<Mutex<Store>>,
    changed: Arc<Notify>,
}

impl Ingest {
    /// Records the body of an OTLP/HTTP `POST /v1/traces` (protobuf), or says
    /// why it is not one. Returns the number of spans in it.
    pub fn traces(&self, protobuf: &[u8]) -> Result<usize, String> {
        use prost::Message as _;
        let request = ExportTraceServiceRequest::decode(protobuf)
            .map_err(|e| format!("not an OTLP trace export (protobuf): {e}"))?;
        let spans = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .http_exports += 1;
        record_spans(&self.store, &self.changed, request);
        Ok(spans)
    }
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

struct Traces(Arc<Mutex<Store>>, Arc<Notify>);

#[tonic::async_trait]
impl TraceService for Traces {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        record_spans(&self.0, &self.1, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Keeps (or counts) the spans of one export and wakes the waiters.
fn record_spans(store: &Mutex<Store>, changed: &Notify, request: ExportTraceServiceRequest) {
    {
        let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
        for resource in request.resource_spans {
            let service = resource
                .resource
                .as_ref()
                .map(|r| map(&r.attributes))
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_else(|| "unknown_service".to_owned());
            for scope in resource.scope_spans {
                for span in scope.spans {
                    store.received += 1;
                    if store.counting {
                        continue;
                    }
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
    }
    changed.notify_waiters();
}

struct Metrics(Arc<Mutex<Store>>, Arc<Notify>);

#[tonic::async_trait]
impl MetricsService for Metrics {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        record_metrics(&self.0, &self.1, request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

/// Notes the metrics of one export and wakes the waiters.
fn record_metrics(store: &Mutex<Store>, changed: &Notify, request: ExportMetricsServiceRequest) {
    {
        let mut store = store.lock().unwrap_or_else(|p| p.into_inner());
        store.metric_exports += 1;
        for resource in request.resource_metrics {
            for scope in resource.scope_metrics {
                for metric in scope.metrics {
                    store.metric_names.insert(metric.name);
                }
            }
        }
    }
    changed.notify_waiters();
}

/// Starts a receiver keeping every span (up to 500,000) on a free loopback port.
pub async fn start() -> Result<Receiver, crate::Error> {
    start_with(false, LOOPBACK).await
}

/// Starts a receiver keeping every span on `address` (a collector coming back
/// where it was, say).
pub async fn start_at(address: SocketAddr) -> Result<Receiver, crate::Error> {
    start_with(false, address).await
}

/// Starts a receiver that only counts spans (memory stays flat however many
/// arrive) on a free loopback port.
pub async fn start_counting() -> Result<Receiver, crate::Error> {
    start_with(true, LOOPBACK).await
}

/// A free port on loopback.
const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

async fn start_with(counting: bool, address: SocketAddr) -> Result<Receiver, crate::Error> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let address = listener.local_addr()?;
    let store = Arc::new(Mutex::new(Store {
        counting,
        ..Store::default()
    }));
    let changed = Arc::new(Notify::new());
    // gRPC connections go to tonic through this channel; HTTP/1.1 ones are served
    // here.
    let (grpc, incoming) = tokio::sync::mpsc::channel::<tokio::net::TcpStream>(16);
    let incoming = futures_util::stream::unfold(incoming, |mut incoming| async move {
        let stream = incoming.recv().await?;
        Some((Ok::<_, std::io::Error>(stream), incoming))
    });
    let accept = {
        let (store, changed) = (store.clone(), changed.clone());
        async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let mut first = [0u8; 3];
                let (store, changed, grpc) = (store.clone(), changed.clone(), grpc.clone());
                tokio::spawn(async move {
                    match stream.peek(&mut first).await {
                        // The HTTP/2 connection preface: gRPC.
                        Ok(3) if &first == b"PRI" => {
                            let _ = grpc.send(stream).await;
                        }
                        Ok(_) => http::serve(stream, store, changed).await,
                        Err(_) => {}
                    }
                });
            }
        }
    };
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Traces(
            store.clone(),
            changed.clone(),
        )))
        .add_service(MetricsServiceServer::new(Metrics(
            store.clone(),
            changed.clone(),
        )))
        .serve_with_incoming(incoming);
    let server = tokio::spawn(async move {
        // The server ends only when aborted: then exports fail and whoever waits
        // times out.
        tokio::select! {
            _ = server => {}
            () = accept => {}
        }
    });
    Ok(Receiver {
        address,
        store,
        changed,
        server,
    })
}
