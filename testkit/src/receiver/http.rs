//! OTLP/HTTP with protobuf bodies (`POST /v1/traces`, `POST /v1/metrics`), HTTP/1.1
//! with keep-alive, enough for the OpenTelemetry exporters; anything else gets a
//! 4xx status, never a hang or a panic.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::{record_metrics, record_spans, Store};

/// Longest request head accepted.
const MAX_HEAD: usize = 64 << 10;
/// Largest body accepted.
const MAX_BODY: usize = 64 << 20;

/// Serves the requests of one connection until it closes.
pub(super) async fn serve(mut stream: TcpStream, store: Arc<Mutex<Store>>, changed: Arc<Notify>) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 << 10);
    loop {
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if buf.len() > MAX_HEAD {
                let _ = respond(&mut stream, 431, "Request Header Fields Too Large").await;
                return;
            }
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (method, path) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let mut length = None;
        let mut encoded = false;
        let mut close = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse::<usize>().ok(),
                "content-encoding" => encoded = !value.eq_ignore_ascii_case("identity"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let Some(length) = length.filter(|&n| n <= MAX_BODY) else {
            let _ = respond(&mut stream, 411, "Length Required").await;
            return;
        };
        while buf.len() < head_end + length {
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        }
        let body: Vec<u8> = buf.drain(..head_end + length).skip(head_end).collect();
        let (status, reason) = if method != "POST" {
            (405, "Method Not Allowed")
        } else if encoded {
            (415, "Unsupported Media Type")
        } else {
            match path {
                "/v1/traces" => match ExportTraceServiceRequest::decode(body.as_slice()) {
                    Ok(request) => {
                        bump(&store);
                        record_spans(&store, &changed, request);
                        (200, "OK")
                    }
                    Err(_) => (400, "Bad Request"),
                },
                "/v1/metrics" => match ExportMetricsServiceRequest::decode(body.as_slice()) {
                    Ok(request) => {
                        bump(&store);
                        record_metrics(&store, &changed, request);
                        (200, "OK")
                    }
                    Err(_) => (400, "Bad Request"),
                },
                _ => (404, "Not Found"),
            }
        };
        if respond(&mut stream, status, reason).await.is_err() || close {
            return;
        }
    }
}

fn bump(store: &Mutex<Store>) {
    store.lock().unwrap_or_else(|p| p.into_inner()).http_exports += 1;
}

/// Reads what is available into `buf`; `false` at the end of the stream.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 << 10];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// An empty response (an empty protobuf message is zero bytes).
async fn respond(stream: &mut TcpStream, status: u16, reason: &str) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
    );
    stream.write_all(response.as_bytes()).await
}
