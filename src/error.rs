//! `error.type` values derived from async-nats error kinds.

use std::fmt::Debug;

/// The `error.type` value for an async-nats error kind: the variant's name in
/// `snake_case` (`NoResponders` → `no_responders`, `TimedOut` → `timed_out`,
/// `MaxPayloadExceeded` → `max_payload_exceeded`).
///
/// Derived from the kind's `Debug` name (fields dropped), so variants added in
/// later async-nats releases get a sensible value without a code change.
pub fn error_type<K: Debug>(kind: &K) -> String {
    let debug = format!("{kind:?}");
    let name = debug
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .next()
        .unwrap_or_default();
    if name.is_empty() {
        return "_OTHER".to_owned();
    }
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The server refused to let this connection publish to a subject (NATS reports
/// this after the fact, as a connection-level error). Returned, as the source of
/// a [`RequestError`](async_nats::client::RequestError) of kind `Other`, by a
/// request whose subject was refused, instead of waiting for its timeout; its
/// span gets `error.type = permissions_violation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionViolation {
    /// The refused subject.
    pub subject: String,
}

impl std::fmt::Display for PermissionViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "permissions violation: the server refused this connection's publish to {:?}",
            self.subject
        )
    }
}

impl std::error::Error for PermissionViolation {}

/// `error.type` for a [`PermissionViolation`].
pub(crate) const PERMISSIONS_VIOLATION: &str = "permissions_violation";

/// The `error.type` of a failed request or JetStream publish:
/// `permissions_violation` when the server refused its subject, else from the kind.
pub(crate) fn refusal_or_kind<K>(error: &async_nats::error::Error<K>) -> String
where
    K: Clone + Debug + std::fmt::Display + PartialEq,
{
    let refused = std::error::Error::source(error)
        .is_some_and(|source| source.downcast_ref::<PermissionViolation>().is_some());
    if refused {
        PERMISSIONS_VIOLATION.to_owned()
    } else {
        error_type(&error.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::client::{PublishErrorKind, RequestErrorKind};

    #[test]
    fn kinds_become_snake_case_names() {
        assert_eq!(error_type(&RequestErrorKind::NoResponders), "no_responders");
        assert_eq!(error_type(&RequestErrorKind::TimedOut), "timed_out");
        assert_eq!(
            error_type(&PublishErrorKind::MaxPayloadExceeded),
            "max_payload_exceeded"
        );
        assert_eq!(
            error_type(&PublishErrorKind::InvalidSubject),
            "invalid_subject"
        );
    }

    #[derive(Debug)]
    #[allow(dead_code)]
    enum WithFields {
        Other(u8),
        Named { x: u8 },
    }

    #[test]
    fn fields_are_dropped() {
        assert_eq!(error_type(&WithFields::Other(3)), "other");
        assert_eq!(error_type(&WithFields::Named { x: 1 }), "named");
        assert_eq!(error_type(&""), "_OTHER");
    }
}
