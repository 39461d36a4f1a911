//! Object Store: streaming put/get of a large object with bounded memory, and
//! the writer's context carried in the object's headers.

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use nats_otel::semconv;
use opentelemetry::trace::TraceContextExt;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::alloc;
use crate::support::{attr, next, NatsServer, Telemetry};

const SIZE: usize = 50 * 1024 * 1024;

/// `len` pseudo-random bytes generated on the fly (never held in memory), with
/// their SHA-256 computed as they are read.
struct Generated {
    left: usize,
    state: u64,
    sha: ring::digest::Context,
}

impl Generated {
    fn new(len: usize, seed: u64) -> Self {
        Self {
            left: len,
            state: seed | 1,
            sha: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    fn digest(self) -> String {
        let digest = self.sha.finish();
        format!(
            "SHA-256={}",
            base64::engine::general_purpose::URL_SAFE.encode(digest.as_ref())
        )
    }
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = buf.remaining().min(self.left).min(32 * 1024);
        let mut chunk = [0u8; 32 * 1024];
        for byte in chunk.iter_mut().take(n) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *byte = (self.state >> 24) as u8;
        }
        self.sha.update(&chunk[..n]);
        buf.put_slice(&chunk[..n]);
        self.left -= n;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn fifty_megabytes_stream_through_with_bounded_memory_and_linked_traces() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let store = js
        .create_object_store(async_nats::jetstream::object_store::Config {
            bucket: "BLOBS".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();

    // The meter sees this thread's allocations: a probe must register.
    let before_probe = alloc::start();
    let probe = vec![1u8; 8 << 20];
    assert!(alloc::peak() - before_probe >= 8 << 20);
    drop(probe);

    let baseline = alloc::start();
    let mut source = Generated::new(SIZE, 0x5eed);
    let info = store.put("report.bin", &mut source).await.unwrap();
    let expected_digest = source.digest();
    assert_eq!(info.size, SIZE);
    assert_eq!(info.digest.as_deref(), Some(expected_digest.as_str()));

    let mut object = store.get("report.bin").await.unwrap();
    let mut expected = Generated::new(SIZE, 0x5eed);
    let mut got = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = object.read(&mut got).await.unwrap();
        if n == 0 {
            break;
        }
        expected.read_exact(&mut want[..n]).await.unwrap();
        assert_eq!(got[..n], want[..n], "content differs at byte {total}");
        total += n;
    }
    assert_eq!(total, SIZE);
    let writer_trace = object.producer_context().span().span_context().trace_id();
    drop(object);
    let growth = alloc::peak() - baseline;
    eprintln!(
        "object store: {} MiB streamed each way, peak memory growth {:.1} MiB",
        SIZE >> 20,
        growth as f64 / (1024.0 * 1024.0)
    );
    assert!(
        growth < (SIZE / 5) as isize,
        "peak memory grew by {growth} bytes for a {SIZE}-byte object"
    );

    let put = telemetry.span("put BLOBS");
    let get = telemetry.span("get BLOBS");
    assert_eq!(put.span_context.trace_id(), writer_trace);
    assert_eq!(
        attr(&put, semconv::MESSAGING_NATS_OBJECT_SIZE),
        Some((SIZE as i64).into())
    );
    assert_eq!(
        attr(&put, semconv::MESSAGING_NATS_OBJECT_CHUNKS),
        Some((info.chunks as i64).into())
    );
    assert!(info.chunks > 1, "streamed in chunks");
    assert_eq!(get.links.links.len(), 1);
    assert_eq!(
        get.links.links[0].span_context.span_id(),
        put.span_context.span_id()
    );
    assert_eq!(
        attr(&get, semconv::MESSAGING_NATS_OBJECT_DIGEST_OK),
        Some(true.into())
    );
    assert!(telemetry
        .spans()
        .iter()
        .all(|s| attr(s, semconv::MESSAGING_NATS_OBJECT_NAME).is_none()));
}

#[tokio::test]
async fn object_watch_links_to_the_writer_and_empty_names_fail_fast() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client);
    let store = js
        .create_object_store(async_nats::jetstream::object_store::Config {
            bucket: "DOCS".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .with_name_attribute(true);
    let mut changes = store.watch().await.unwrap();
    store.put("receipt-1.txt", &mut &b"paid"[..]).await.unwrap();
    let change = next(&mut changes).await.unwrap();
    assert_eq!(change.name, "receipt-1.txt");
    drop(change);

    let put = telemetry.span("put DOCS");
    let process = telemetry.span("process DOCS");
    assert_eq!(process.links.links.len(), 1);
    assert_eq!(
        process.links.links[0].span_context.span_id(),
        put.span_context.span_id()
    );
    // Child of the writer and linked to it, as every process span by default.
    assert_eq!(process.span_context.trace_id(), put.span_context.trace_id());
    assert_eq!(process.parent_span_id, put.span_context.span_id());
    assert_eq!(
        attr(&put, semconv::MESSAGING_NATS_OBJECT_NAME),
        Some("receipt-1.txt".into())
    );

    // An empty name fails before a single byte is uploaded.
    let mut endless = Generated::new(usize::MAX, 1);
    let err = store.put("", &mut endless).await.unwrap_err();
    assert_eq!(
        err.kind(),
        async_nats::jetstream::object_store::PutErrorKind::InvalidName
    );
    assert_eq!(endless.left, usize::MAX, "nothing was read");
    assert!(store.get("").await.is_err());
}
