//! The codecs (feature `compression`): what a [`Compression`] does to a payload,
//! and decoding by `Content-Encoding`, bounded.

use std::fmt;
use std::io::{self, Read, Write};

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

/// The header naming a payload's encoding.
pub const CONTENT_ENCODING: &str = "Content-Encoding";

/// Default cap on a decoded payload: 16 MiB. A message being decoded holds at most
/// this much (plus one byte), so a worker of concurrency N rejecting bombs holds
/// at most N times this limit.
pub const DEFAULT_MAX_DECODED_SIZE: usize = 16 * 1024 * 1024;

/// A compression algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Codec {
    /// Zstandard (`Content-Encoding: zstd`).
    Zstd,
    /// gzip (`Content-Encoding: gzip`).
    Gzip,
}

impl Codec {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
        }
    }

    fn from_token(token: &str) -> Option<Self> {
        let token = token.trim();
        if token.eq_ignore_ascii_case("zstd") {
            Some(Codec::Zstd)
        } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Some(Codec::Gzip)
        } else {
            None
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// How a publisher compresses payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    codec: Codec,
    threshold: usize,
    level: i32,
}

impl Compression {
    /// zstd at level 3, for payloads of 1 KiB and more.
    pub fn zstd() -> Self {
        Self {
            codec: Codec::Zstd,
            threshold: 1024,
            level: 3,
        }
    }

    /// gzip at level 6, for payloads of 1 KiB and more.
    pub fn gzip() -> Self {
        Self {
            codec: Codec::Gzip,
            threshold: 1024,
            level: 6,
        }
    }

    /// Payloads shorter than `bytes` are sent raw (default 1024).
    pub fn with_threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// The compression level (zstd 1–22, gzip 0–9; out-of-range values are clamped).
    pub fn with_level(mut self, level: i32) -> Self {
        self.level = level;
        self
    }

    /// The codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The size from which payloads are compressed.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    fn compress(&self, payload: &[u8]) -> io::Result<Vec<u8>> {
        match self.codec {
            Codec::Zstd => zstd::bulk::compress(payload, self.level.clamp(1, 22)),
            Codec::Gzip => {
                let level = u32::try_from(self.level.clamp(0, 9)).unwrap_or(6);
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(payload.len() / 2),
                    flate2::Compression::new(level),
                );
                encoder.write_all(payload)?;
                encoder.finish()
            }
        }
    }

    /// Compresses `payload` when it is at least the threshold, shrinks, and carries
    /// no `Content-Encoding` yet; returns the headers and payload to send and the
    /// compressed size when it did.
    pub(crate) fn apply(
        &self,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> (Option<HeaderMap>, Bytes, Option<usize>) {
        if payload.len() < self.threshold
            || headers
                .as_ref()
                .is_some_and(|h| h.get(content_encoding()).is_some())
        {
            return (headers, payload, None);
        }
        match self.compress(&payload) {
            Ok(compressed) if compressed.len() < payload.len() => {
                let mut headers = headers.unwrap_or_default();
                headers.insert(content_encoding(), HeaderValue::from(self.codec.token()));
                let size = compressed.len();
                (Some(headers), Bytes::from(compressed), Some(size))
            }
            // Incompressible (or the encoder failed): send it as it is.
            _ => (headers, payload, None),
        }
    }
}

fn content_encoding() -> HeaderName {
    HeaderName::from_static(CONTENT_ENCODING)
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// `Content-Encoding` names an encoding this crate does not decode.
    UnknownEncoding(String),
    /// The payload is not valid for its encoding (corrupt or truncated).
    Corrupt {
        /// The encoding.
        codec: Codec,
        /// What the decoder said.
        message: String,
    },
    /// The payload expands past the configured limit (a decompression bomb, or a
    /// limit set too low).
    TooLarge {
        /// The encoding.
        codec: Codec,
        /// The limit in bytes.
        limit: usize,
    },
}

impl DecodeError {
    /// A low-cardinality `error.type` value.
    pub fn error_type(&self) -> &'static str {
        match self {
            DecodeError::UnknownEncoding(_) => "unknown_content_encoding",
            DecodeError::Corrupt { .. } => "corrupt_payload",
            DecodeError::TooLarge { .. } => "decoded_payload_too_large",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::UnknownEncoding(token) => {
                // The value came from the network: bound what is echoed.
                let shown: String = token.chars().take(64).collect();
                write!(
                    f,
                    "unsupported Content-Encoding {shown:?} (zstd and gzip are supported)"
                )
            }
            DecodeError::Corrupt { codec, message } => {
                write!(f, "corrupt {codec} payload: {message}")
            }
            DecodeError::TooLarge { codec, limit } => {
                write!(
                    f,
                    "{codec} payload decodes to more than the {limit}-byte limit"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes `payload` according to its `Content-Encoding` header, reading at most
/// `max_decoded` bytes of output. `Ok(None)` when it is not encoded (no header,
/// `identity`, or an empty value).
pub fn decode(
    headers: Option<&HeaderMap>,
    payload: &[u8],
    max_decoded: usize,
) -> Result<Option<Bytes>, DecodeError> {
    let Some(value) = headers.and_then(|h| h.get(content_encoding())) else {
        return Ok(None);
    };
    let token = value.as_str().trim();
    if token.is_empty() || token.eq_ignore_ascii_case("identity") {
        return Ok(None);
    }
    let codec =
        Codec::from_token(token).ok_or_else(|| DecodeError::UnknownEncoding(token.to_owned()))?;
    let corrupt = |e: io::Error| DecodeError::Corrupt {
        codec,
        message: e.to_string(),
    };
    let out = match codec {
        Codec::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(payload).map_err(corrupt)?;
            read_capped(decoder, max_decoded, payload.len()).map_err(corrupt)?
        }
        Codec::Gzip => read_capped(
            flate2::read::GzDecoder::new(payload),
            max_decoded,
            payload.len(),
        )
        .map_err(corrupt)?,
    };
    if out.len() > max_decoded {
        return Err(DecodeError::TooLarge {
            codec,
            limit: max_decoded,
        });
    }
    Ok(Some(Bytes::from(out)))
}

/// Reads `reader` to its end or to one byte past `limit`, whichever comes first,
/// never holding a buffer larger than `limit + 1` (a doubling `Vec` could hold
/// twice that).
fn read_capped(mut reader: impl Read, limit: usize, encoded: usize) -> io::Result<Vec<u8>> {
    let most = limit.saturating_add(1);
    let mut out = vec![0u8; encoded.saturating_mul(4).clamp(1024, most.max(1))];
    let mut filled = 0;
    loop {
        if filled == out.len() {
            if out.len() >= most {
                break;
            }
            let grown = out.len().saturating_mul(2).min(most);
            out.resize(grown, 0);
        }
        match reader.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    out.truncate(filled);
    Ok(out)
}

/// `headers` without `Content-Encoding` (`None` when nothing else is left).
pub(crate) fn without_encoding(headers: &HeaderMap) -> Option<HeaderMap> {
    let mut rest = HeaderMap::new();
    for (name, values) in headers.iter() {
        if AsRef::<str>::as_ref(name).eq_ignore_ascii_case(CONTENT_ENCODING) {
            continue;
        }
        for value in values {
            rest.append(name.clone(), value.clone());
        }
    }
    (!rest.is_empty()).then_some(rest)
}

/// Decodes `message` in place when it is encoded: the payload becomes the decoded
/// bytes and `Content-Encoding` is removed. Returns the codec and encoded size
/// when it decoded, or the error (leaving the message as it arrived).
pub(crate) fn decode_message(
    message: &mut async_nats::Message,
    max_decoded: usize,
) -> Result<Option<(Codec, usize)>, DecodeError> {
    let codec = message
        .headers
        .as_ref()
        .and_then(|h| h.get(content_encoding()))
        .and_then(|v| Codec::from_token(v.as_str()));
    match decode(message.headers.as_ref(), &message.payload, max_decoded)? {
        None => Ok(None),
        Some(decoded) => {
            let size = message.payload.len();
            message.payload = decoded;
            message.headers = message.headers.as_ref().and_then(without_encoding);
            Ok(codec.map(|codec| (codec, size)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(codec: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_ENCODING, codec);
        headers
    }

    #[test]
    fn small_or_incompressible_payloads_are_sent_raw() {
        let small = Bytes::from(vec![b'a'; 100]);
        let (h, p, size) = Compression::zstd().apply(None, small.clone());
        assert!(h.is_none() && p == small && size.is_none());
        // Random-looking bytes do not shrink.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                // xorshift64: bytes no codec can shrink.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let (h, p, size) = Compression::gzip().apply(None, Bytes::from(noise.clone()));
        assert!(h.is_none() && p == noise && size.is_none());
        // Already encoded by the caller: left alone.
        let big = Bytes::from(vec![b'a'; 4096]);
        let (h, p, _) = Compression::zstd().apply(Some(encoded("br")), big.clone());
        assert_eq!(p, big);
        assert_eq!(h.unwrap().get(CONTENT_ENCODING).unwrap().as_str(), "br");
    }

    #[test]
    fn identity_and_missing_encodings_are_not_decoded() {
        assert_eq!(decode(None, b"x", 10), Ok(None));
        assert_eq!(decode(Some(&encoded("identity")), b"x", 10), Ok(None));
        assert_eq!(decode(Some(&HeaderMap::new()), b"x", 10), Ok(None));
    }

    #[test]
    fn unknown_encodings_and_garbage_are_clear_errors() {
        let err = decode(Some(&encoded("br")), b"x", 10).unwrap_err();
        assert_eq!(err.error_type(), "unknown_content_encoding");
        assert!(err.to_string().contains("\"br\""), "{err}");
        for codec in ["zstd", "gzip"] {
            let err =
                decode(Some(&encoded(codec)), b"definitely not compressed", 1 << 20).unwrap_err();
            assert_eq!(err.error_type(), "corrupt_payload", "{codec}: {err}");
        }
    }

    #[test]
    fn the_limit_is_exact() {
        for compression in [Compression::zstd(), Compression::gzip()] {
            let payload = Bytes::from(vec![b'z'; 10_000]);
            let (headers, wire, _) = compression.with_threshold(0).apply(None, payload.clone());
            let headers = headers.expect("compressed");
            let decoded = decode(Some(&headers), &wire, 10_000).unwrap().unwrap();
            assert_eq!(decoded, payload);
            let err = decode(Some(&headers), &wire, 9_999).unwrap_err();
            assert_eq!(err.error_type(), "decoded_payload_too_large");
        }
    }

    #[test]
    fn decoding_a_message_drops_only_the_encoding_header() {
        let payload = Bytes::from(vec![b'q'; 5000]);
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "00-x");
        let (headers, wire, size) = Compression::zstd().apply(Some(headers), payload.clone());
        let mut message = async_nats::Message {
            subject: "s".into(),
            reply: None,
            payload: wire.clone(),
            headers,
            status: None,
            description: None,
            length: 0,
        };
        let (codec, encoded_size) = decode_message(&mut message, 1 << 20)
            .unwrap()
            .expect("decoded");
        assert_eq!((codec.token(), encoded_size), ("zstd", wire.len()));
        assert_eq!(size, Some(wire.len()));
        assert_eq!(message.payload, payload);
        let headers = message.headers.expect("traceparent kept");
        assert!(headers.get(CONTENT_ENCODING).is_none());
        assert_eq!(headers.get("traceparent").unwrap().as_str(), "00-x");
    }
}
