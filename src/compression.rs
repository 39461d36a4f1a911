//! Opt-in payload compression (feature `compression`).
//!
//! A compressing publisher ([`Client::with_compression`](crate::Client::with_compression),
//! [`jetstream::Context::with_compression`](crate::jetstream::Context::with_compression))
//! compresses payloads of at least [`Compression::threshold`] bytes with zstd or gzip and
//! marks them with the standard `Content-Encoding` header (`zstd` or `gzip`), so a
//! consumer in any language knows how to decode them. Smaller payloads, payloads that
//! would not shrink, and messages that already carry a `Content-Encoding` are sent as
//! they are.
//!
//! Every instrumented consumer (core [`Subscriber`](crate::Subscriber), JetStream
//! consumers and the [`Worker`](crate::jetstream::Worker)) decodes such payloads before
//! the handler sees them and removes the header. Decoding is bounded: a payload that
//! would expand past [`InstrumentationBuilder::with_max_decoded_size`](crate::InstrumentationBuilder::with_max_decoded_size)
//! (16 MiB by default) is rejected after reading at most that many bytes, so a
//! decompression bomb costs neither memory nor much time. A corrupt, truncated or
//! oversized payload, or an encoding this crate does not know, leaves the message
//! as it arrived and sets [`DecodeError`] on the delivery
//! ([`Delivery::decode_error`](crate::Delivery::decode_error)), on its `process` span
//! (`error.type`) and, for the worker, as the reason it dead-letters the message.
//!
//! This module also holds what every publisher and consumer of the crate does to
//! payloads (compress on the way out, decode on delivery); without the feature,
//! payloads pass unchanged and only that glue is compiled.

#[cfg(feature = "compression")]
mod codecs;

#[cfg(feature = "compression")]
pub use codecs::{
    decode, Codec, Compression, DecodeError, CONTENT_ENCODING, DEFAULT_MAX_DECODED_SIZE,
};

use async_nats::{HeaderMap, Message};
use bytes::Bytes;

use crate::instrumentation::Instrumentation;

/// A payload sent or received compressed: its encoding and size on the wire.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Compressed {
    pub(crate) encoding: &'static str,
    pub(crate) size: usize,
}

/// What a publisher sends: the headers and payload and, when the payload was
/// compressed, its original size and what was done.
pub(crate) type Prepared = (Option<HeaderMap>, Bytes, Option<(usize, Compressed)>);

/// Why a delivered payload could not be decoded.
#[cfg(feature = "compression")]
pub(crate) type DecodeFailure = DecodeError;
/// Why a delivered payload could not be decoded: never, without the feature.
#[cfg(not(feature = "compression"))]
pub(crate) type DecodeFailure = std::convert::Infallible;

/// The `error.type` of a payload that could not be decoded.
pub(crate) fn failure_type(failure: &DecodeFailure) -> &'static str {
    #[cfg(feature = "compression")]
    return failure.error_type();
    #[cfg(not(feature = "compression"))]
    match *failure {}
}

/// What a publisher does to the payloads it sends (nothing, by default).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Outgoing {
    #[cfg(feature = "compression")]
    compression: Option<Compression>,
}

impl Outgoing {
    /// Payloads compressed with `compression` (or sent as given with `None`).
    #[cfg(feature = "compression")]
    pub(crate) fn compressing(compression: Option<Compression>) -> Self {
        Self { compression }
    }

    /// The compression applied, if any.
    #[cfg(feature = "compression")]
    pub(crate) fn compression(&self) -> Option<Compression> {
        self.compression
    }

    /// Whether payloads go out exactly as given.
    pub(crate) fn is_plain(&self) -> bool {
        #[cfg(feature = "compression")]
        return self.compression.is_none();
        #[cfg(not(feature = "compression"))]
        true
    }

    /// The headers and payload to send for `headers` and `payload`.
    pub(crate) fn prepare(&self, headers: Option<HeaderMap>, payload: Bytes) -> Prepared {
        #[cfg(feature = "compression")]
        if let Some(compression) = &self.compression {
            let original = payload.len();
            let (headers, payload, size) = compression.apply(headers, payload);
            let compressed = size.map(|size| {
                let encoding = compression.codec().token();
                (original, Compressed { encoding, size })
            });
            return (headers, payload, compressed);
        }
        (headers, payload, None)
    }
}

/// Decodes a delivered message's compressed payload in place: what was on the
/// wire, or why it could not be decoded (the message is then left as it came).
pub(crate) fn decode_in_place(
    inst: &Instrumentation,
    message: &mut Message,
) -> (Option<Compressed>, Option<DecodeFailure>) {
    #[cfg(feature = "compression")]
    return match codecs::decode_message(message, inst.max_decoded_size()) {
        Ok(decoded) => {
            let compressed = decoded.map(|(codec, size)| Compressed {
                encoding: codec.token(),
                size,
            });
            (compressed, None)
        }
        Err(error) => (None, Some(error)),
    };
    #[cfg(not(feature = "compression"))]
    {
        let _ = (inst, message);
        (None, None)
    }
}
