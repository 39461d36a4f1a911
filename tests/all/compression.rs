//! Payload compression: zstd and gzip round trips over a real server, raw small
//! payloads, and hostile encoded payloads (corrupt, truncated, bombs).

use async_nats::HeaderMap;
use bytes::Bytes;
use nats_otel::compression::{Compression, DecodeError, CONTENT_ENCODING};
use nats_otel::semconv;

use crate::support::{attr, attr_str, next, sync, NatsServer, Telemetry};

/// Compressible, JSON-like bytes of exactly `size` (lines repeat every 64, so
/// even 8 MiB compresses far below the server's 1 MiB payload limit).
pub fn text(size: usize) -> Bytes {
    let mut out = Vec::with_capacity(size + 64);
    let mut i = 0u64;
    while out.len() < size {
        out.extend_from_slice(
            format!(
                "{{\"order\":{},\"sku\":\"SKU-{}\",\"qty\":{}}}\n",
                i % 64,
                (i * 7) % 64,
                i % 13
            )
            .as_bytes(),
        );
        i += 1;
    }
    out.truncate(size);
    Bytes::from(out)
}

/// A valid zstd frame that expands to `blocks` × 128 KiB of zeros from 4 bytes a
/// block (run-length blocks): a decompression bomb.
pub fn zstd_bomb(blocks: usize) -> Bytes {
    let mut frame = vec![0x28, 0xB5, 0x2F, 0xFD]; // magic
    frame.push(0x00); // no content size, no checksum, no dictionary, windowed
    frame.push(7 << 3); // window 128 KiB
    const BLOCK: u32 = 128 * 1024;
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = (BLOCK << 3) | (1 << 1) | last; // RLE block of BLOCK bytes
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.push(0);
    }
    Bytes::from(frame)
}

pub fn encoded(encoding: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_ENCODING, encoding);
    headers
}

#[tokio::test]
async fn both_codecs_round_trip_from_0_bytes_to_8_mib_and_small_payloads_stay_raw() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    // Body sizes are opt-in.
    let sized = || telemetry.builder().with_message_body_size(true).build();
    let consumer = telemetry.connect(&server, sized()).await;
    let raw = server.raw_client().await;
    let mut wire = raw.subscribe("zip.>").await.unwrap();
    let mut sub = consumer.subscribe("zip.>").await.unwrap();
    sync(&raw).await;

    let sizes = [0usize, 1, 1023, 1024, 64 * 1024, 1 << 20, 8 << 20];
    for compression in [Compression::zstd(), Compression::gzip()] {
        let codec = compression.codec().token();
        let publisher = telemetry
            .connect(&server, sized())
            .await
            .with_compression(Some(compression));
        for size in sizes {
            let payload = text(size);
            let subject = format!("zip.{codec}.{size}");
            publisher
                .publish(subject.clone(), payload.clone())
                .await
                .unwrap();
            let on_wire = next(&mut wire).await;
            let delivery = next(&mut sub).await;
            let wire_encoding = on_wire
                .headers
                .as_ref()
                .and_then(|h| h.get(CONTENT_ENCODING))
                .map(|v| v.as_str().to_owned());
            if size < compression.threshold() {
                assert_eq!(wire_encoding, None, "{codec} {size} B is sent raw");
                assert_eq!(on_wire.payload, payload);
            } else {
                assert_eq!(wire_encoding.as_deref(), Some(codec), "{size} B");
                assert!(on_wire.payload.len() < size, "{codec} {size} B shrank");
            }
            assert!(delivery.decode_error().is_none());
            assert_eq!(delivery.payload.len(), size, "{codec} {size} B");
            assert!(
                delivery.payload == payload,
                "{codec} {size} B decoded exactly"
            );
            // The handler sees a plain message: no encoding header left behind.
            assert!(delivery
                .headers
                .as_ref()
                .is_none_or(|h| h.get(CONTENT_ENCODING).is_none()));
            drop(delivery);
        }
    }

    // Spans: the uncompressed size as body size, the wire size beside it.
    let spans = telemetry.spans();
    let big = |name: &str| {
        spans
            .iter()
            .find(|s| {
                s.name == name
                    && attr_str(s, semconv::MESSAGING_DESTINATION_NAME).as_deref()
                        == Some("zip.zstd.1048576")
            })
            .cloned()
            .unwrap_or_else(|| panic!("{name} for 1 MiB"))
    };
    for name in ["publish zip.zstd.*", "process zip.>"] {
        let span = big(name);
        assert_eq!(
            attr(&span, semconv::MESSAGING_MESSAGE_BODY_SIZE).and_then(|v| match v {
                opentelemetry::Value::I64(n) => Some(n),
                _ => None,
            }),
            Some(1 << 20),
            "{name}"
        );
        let compressed = match attr(&span, semconv::MESSAGING_NATS_BODY_COMPRESSED_SIZE) {
            Some(opentelemetry::Value::I64(n)) => n,
            other => panic!("{name}: compressed size {other:?}"),
        };
        assert!(
            compressed > 0 && compressed < 1 << 20,
            "{name}: {compressed}"
        );
        assert_eq!(
            attr_str(&span, semconv::MESSAGING_NATS_CONTENT_ENCODING).as_deref(),
            Some("zstd")
        );
    }
}

#[tokio::test]
async fn jetstream_publishes_are_compressed_and_consumers_decode_them() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let client = telemetry.client(&server).await;
    let js = nats_otel::jetstream::new(&client).with_compression(Some(Compression::gzip()));
    let stream = js
        .inner()
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ZIP".to_owned(),
            subjects: vec!["zjs.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let payload = text(200_000);
    js.publish("zjs.a", payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    // What the stream stored is the compressed payload.
    let stored = stream.get_raw_message(1).await.unwrap();
    assert!(stored.payload.len() < payload.len());
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let consumer = js.pull_consumer(consumer);
    let mut messages = consumer.messages().await.unwrap();
    let delivery = next(&mut messages).await.unwrap();
    assert!(delivery.decode_error().is_none());
    assert!(delivery.payload == payload);
    delivery.ack().await.unwrap();
}

#[tokio::test]
async fn corrupt_truncated_unknown_and_bomb_payloads_arrive_flagged_and_untouched() {
    let server = NatsServer::start();
    let telemetry = Telemetry::new();
    let limit = 16 << 20;
    let client = telemetry
        .connect(
            &server,
            telemetry.builder().with_max_decoded_size(limit).build(),
        )
        .await;
    let raw = server.raw_client().await;
    let mut sub = client.subscribe("bad.*").await.unwrap();
    client.ping().await.expect("ping");

    let good = zstd::bulk::compress(&text(100_000), 3).unwrap();
    let truncated = Bytes::copy_from_slice(&good[..good.len() / 2]);
    // 8192 blocks of 128 KiB: 1 GiB from 32 KiB on the wire.
    let bomb = zstd_bomb(8192);
    assert!(bomb.len() < 40_000);
    let gzip_bomb = {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            encoder.write_all(&zeros).unwrap();
        }
        Bytes::from(encoder.finish().unwrap())
    };
    let cases: [(&str, &str, Bytes, &str); 5] = [
        ("bad.truncated", "zstd", truncated, "corrupt_payload"),
        (
            "bad.garbage",
            "gzip",
            Bytes::from_static(b"not gzip"),
            "corrupt_payload",
        ),
        (
            "bad.unknown",
            "br",
            Bytes::from_static(b"x"),
            "unknown_content_encoding",
        ),
        ("bad.bomb", "zstd", bomb, "decoded_payload_too_large"),
        ("bad.gzbomb", "gzip", gzip_bomb, "decoded_payload_too_large"),
    ];
    for (subject, encoding, payload, expected) in cases.iter().cloned() {
        raw.publish_with_headers(subject, encoded(encoding), payload.clone())
            .await
            .unwrap();
        let delivery = next(&mut sub).await;
        let error = delivery.decode_error().expect("flagged");
        assert_eq!(error.error_type(), expected, "{subject}: {error}");
        if expected == "decoded_payload_too_large" {
            assert!(matches!(error, DecodeError::TooLarge { limit: l, .. } if *l == limit));
        }
        // Delivered as it arrived, so nothing is lost and it can be inspected.
        assert!(delivery.payload == payload, "{subject}");
        assert_eq!(
            delivery
                .headers
                .as_ref()
                .and_then(|h| h.get(CONTENT_ENCODING))
                .map(|v| v.as_str()),
            Some(encoding)
        );
        drop(delivery);
    }
    let spans = telemetry.spans();
    for (subject, _, _, expected) in cases {
        let span = spans
            .iter()
            .find(|s| {
                s.name == "process bad.*"
                    && attr_str(s, semconv::MESSAGING_DESTINATION_NAME).as_deref() == Some(subject)
            })
            .expect("process span");
        assert_eq!(
            attr_str(span, semconv::ERROR_TYPE).as_deref(),
            Some(expected),
            "{subject}"
        );
        assert!(matches!(
            span.status,
            opentelemetry::trace::Status::Error { .. }
        ));
    }
    // The subscription is still alive after all that.
    raw.publish("bad.after", "ok".into()).await.unwrap();
    let after = next(&mut sub).await;
    assert_eq!(&after.payload[..], b"ok");
}

#[test]
fn a_gigabyte_bomb_is_rejected_within_the_limit_of_memory() {
    let bomb = zstd_bomb(8192); // 1 GiB decoded
    let headers = encoded("zstd");
    let limit = nats_otel::compression::DEFAULT_MAX_DECODED_SIZE;
    let baseline = crate::alloc::start();
    let started = std::time::Instant::now();
    let error = nats_otel::compression::decode(Some(&headers), &bomb, limit).unwrap_err();
    let growth = crate::alloc::peak() - baseline;
    assert_eq!(error.error_type(), "decoded_payload_too_large");
    eprintln!(
        "zstd bomb (1 GiB from {} KiB): rejected after {:?}, peak memory growth {:.1} MiB",
        bomb.len() / 1024,
        started.elapsed(),
        growth as f64 / (1024.0 * 1024.0)
    );
    assert!(growth <= limit as isize + (1 << 20), "grew {growth} bytes");
}
