//! `--web`: the demo's traces in a browser, served from this binary and fed live
//! from the embedded OTLP receiver.
//!
//! | route | what |
//! |---|---|
//! | `/` | the page (HTML, JavaScript and CSS embedded in the binary) |
//! | `/events` | server-sent events: `update` with the newest trace summaries whenever spans arrive |
//! | `/api/traces` | trace summaries, newest first |
//! | `/api/traces/{trace id}` | one trace's waterfall rows, spans' attributes and links |
//! | `/api/map` | services and message flows (count, p50/p99 producer → consumer start) |
//! | `/api/histograms` | queue wait, processing, end-to-end latency |
//! | `/api/dead-letters` | the run's dead letters with their reasons |
//!
//! It has no authentication: it listens on loopback unless told otherwise, and
//! sends no CORS headers, so other origins' pages cannot read it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::Stream;
use nats_otel_testkit::receiver::Store;
use serde::Serialize;

pub mod model;

/// The page.
const INDEX: &str = include_str!("../web/index.html");
const SCRIPT: &str = include_str!("../web/app.js");
const STYLE: &str = include_str!("../web/style.css");

/// Traces listed at most.
const LIST_LIMIT: usize = 200;

/// One dead letter the run saw.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeadLetterRow {
    pub subject: String,
    pub reason: String,
    pub source_subject: String,
    pub trace_id: Option<String>,
}

/// The row of a message the dead-letter stream delivered.
pub fn dead_letter_row(message: &async_nats::Message) -> DeadLetterRow {
    let headers = message.headers.as_ref();
    let info = headers.and_then(nats_otel::jetstream::dead_letter::DeadLetterInfo::from_headers);
    let trace_id = headers
        .and_then(|h| h.get("traceparent"))
        .and_then(|v| v.as_str().split('-').nth(1).map(str::to_owned))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    DeadLetterRow {
        subject: message.subject.to_string(),
        reason: info
            .as_ref()
            .map_or_else(|| "(no Dlq-Reason)".to_owned(), |i| i.reason.clone()),
        source_subject: info.and_then(|i| i.subject).unwrap_or_default(),
        trace_id,
    }
}

/// What the handlers read.
#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    dead_letters: Arc<Mutex<Vec<DeadLetterRow>>>,
}

impl Shared {
    fn spans(&self) -> Vec<nats_otel_testkit::SpanRecord> {
        self.store
            .lock()
            .map(|store| store.spans.clone())
            .unwrap_or_default()
    }

    fn received(&self) -> u64 {
        self.store.lock().map(|store| store.received).unwrap_or(0)
    }
}

/// The running web view; stops when dropped.
pub struct WebView {
    pub address: SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Serves the web view on `address` from `store` (the receiver's) and
/// `dead_letters`.
pub async fn start(
    address: SocketAddr,
    store: Arc<Mutex<Store>>,
    dead_letters: Arc<Mutex<Vec<DeadLetterRow>>>,
) -> Result<WebView, crate::services::Error> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| format!("--web {address}: cannot listen there: {e}"))?;
    let address = listener.local_addr()?;
    let shared = Shared {
        store,
        dead_letters,
    };
    let app = Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/events", get(events))
        .route("/api/traces", get(traces))
        .route("/api/traces/{id}", get(trace))
        .route("/api/map", get(map))
        .route("/api/histograms", get(histograms))
        .route("/api/dead-letters", get(dead_letters_list))
        .with_state(shared);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(WebView {
        address,
        _stop: stop,
    })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn traces(State(shared): State<Shared>) -> Json<Vec<model::TraceSummary>> {
    Json(model::trace_summaries(&shared.spans(), LIST_LIMIT))
}

async fn trace(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    let well_formed = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return (StatusCode::BAD_REQUEST, "a trace id is 32 hex digits").into_response();
    }
    match model::waterfall(&shared.spans(), &id) {
        Some(waterfall) => Json(waterfall).into_response(),
        None => (StatusCode::NOT_FOUND, "no such trace (yet)").into_response(),
    }
}

async fn map(State(shared): State<Shared>) -> Json<model::ServiceMap> {
    Json(model::service_map(&shared.spans()))
}

async fn histograms(State(shared): State<Shared>) -> Json<model::Histograms> {
    Json(model::histograms(&shared.spans()))
}

async fn dead_letters_list(State(shared): State<Shared>) -> Json<Vec<DeadLetterRow>> {
    Json(
        shared
            .dead_letters
            .lock()
            .map(|rows| rows.clone())
            .unwrap_or_default(),
    )
}

/// The update sent to the page.
#[derive(Serialize)]
struct Update {
    spans: u64,
    traces: Vec<model::TraceSummary>,
}

/// An `update` event now and whenever spans arrive (checked every 250 ms).
async fn events(
    State(shared): State<Shared>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = futures_util::stream::unfold((shared, None::<u64>), |(shared, last)| async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let received = shared.received();
            if last != Some(received) {
                let update = Update {
                    spans: received,
                    traces: model::trace_summaries(&shared.spans(), LIST_LIMIT),
                };
                let event = Event::default()
                    .event("update")
                    .json_data(&update)
                    .unwrap_or_else(|_| Event::default().event("update"));
                return Some((Ok(event), (shared, Some(received))));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
