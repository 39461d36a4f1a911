//! What happens to payloads between the application and the wire: compression on
//! the way out and decoding on delivery, with feature `compression` (its codecs are
//! in [`crate::compression`]); without the feature, payloads pass unchanged.

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
pub(crate) type DecodeFailure = crate::compression::DecodeError;
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
    compression: Option<crate::compression::Compression>,
}

impl Outgoing {
    /// Payloads compressed with `compression` (or sent as given with `None`).
    #[cfg(feature = "compression")]
    pub(crate) fn compressing(compression: Option<crate::compression::Compression>) -> Self {
        Self { compression }
    }

    /// The compression applied, if any.
    #[cfg(feature = "compression")]
    pub(crate) fn compression(&self) -> Option<crate::compression::Compression> {
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
    return match crate::compression::decode_message(message, inst.max_decoded_size()) {
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
