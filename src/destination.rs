//! Subject → low-cardinality destination template.
//!
//! Span names (and, later, metric attributes) carry a *template* such as
//! `users.*.orders`, never the raw subject `users.8812.orders`: raw subjects with
//! ids explode the number of distinct span names and metric series. The raw subject
//! is still recorded, but only in the `messaging.destination.name` attribute.
//!
//! * On the consumer side the template is the subscription pattern (`orders.*`,
//!   `orders.>`), passed through the mapper so a literal subscription with an id in
//!   it is collapsed too.
//! * On the producer side a [`SubjectMapper`] decides. The default,
//!   [`DefaultSubjectMapper`], replaces tokens that look like ids (numbers, UUIDs,
//!   long tokens with digits, NUIDs) by `*`. [`SubjectTemplates`] matches a list of
//!   patterns you declare, and any closure `Fn(&str) -> Cow<str>` works too.
//! * Inbox subjects (`_INBOX.…`, replies) collapse to [`TEMPORARY_DESTINATION`] and
//!   are flagged `messaging.destination.temporary = true`.

use std::borrow::Cow;

/// Template used for temporary destinations (request inboxes, reply subjects).
pub const TEMPORARY_DESTINATION: &str = "(temporary)";

/// The default inbox prefix of async-nats (and every other NATS client).
pub const DEFAULT_INBOX_PREFIX: &str = "_INBOX";

/// Maps a concrete subject to a low-cardinality template.
///
/// Implemented for closures, so `|s: &str| Cow::Borrowed(s)` (no mapping) or any
/// custom rule can be passed to
/// [`InstrumentationBuilder::with_subject_mapper`](crate::InstrumentationBuilder::with_subject_mapper).
/// The mapper sees inbox subjects only if they do not use the configured inbox prefix.
pub trait SubjectMapper: Send + Sync + 'static {
    /// Returns the template for `subject`. Must return few distinct values.
    fn template<'a>(&self, subject: &'a str) -> Cow<'a, str>;
}

impl<F> SubjectMapper for F
where
    F: for<'a> Fn(&'a str) -> Cow<'a, str> + Send + Sync + 'static,
{
    fn template<'a>(&self, subject: &'a str) -> Cow<'a, str> {
        self(subject)
    }
}

/// The default mapper: replaces id-like tokens with `*`.
///
/// A token is id-like when it is all digits, a UUID, a hex string of 8+ characters
/// containing a digit, or any token of 16+ characters containing a digit (NUIDs,
/// hashes, ULIDs). Wildcards `*`/`>` and ordinary words (`orders`, `v2`, `eu-west`)
/// are kept, so `users.8812.orders` becomes `users.*.orders` and `orders.created`
/// stays as it is. Tenants or other words with many values still need a mapper of
/// your own (see [`SubjectTemplates`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultSubjectMapper;

impl SubjectMapper for DefaultSubjectMapper {
    fn template<'a>(&self, subject: &'a str) -> Cow<'a, str> {
        if !has_id_like_token(subject.as_bytes()) {
            return Cow::Borrowed(subject);
        }
        let mut out = String::with_capacity(subject.len());
        for (i, token) in subject.split('.').enumerate() {
            if i > 0 {
                out.push('.');
            }
            out.push_str(if is_id_like(token) { "*" } else { token });
        }
        Cow::Owned(out)
    }
}

/// Whether any `.`-separated token of `subject` is id-like: the same rule as
/// [`is_id_like`] in one pass over the bytes, since every publish asks.
fn has_id_like_token(subject: &[u8]) -> bool {
    let mut start = 0;
    let mut digits = 0;
    let mut hex_or_dash = 0;
    let mut i = 0;
    while i <= subject.len() {
        let b = if i < subject.len() { subject[i] } else { b'.' };
        if b == b'.' {
            let len = i - start;
            if digits > 0 && (digits == len || len >= 16 || (len >= 8 && hex_or_dash == len)) {
                return true;
            }
            start = i + 1;
            digits = 0;
            hex_or_dash = 0;
        } else if b.is_ascii_digit() {
            digits += 1;
            hex_or_dash += 1;
        } else if b.is_ascii_hexdigit() || b == b'-' {
            hex_or_dash += 1;
        }
        i += 1;
    }
    false
}

fn is_id_like(token: &str) -> bool {
    let bytes = token.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let has_digit = bytes.iter().any(u8::is_ascii_digit);
    if !has_digit {
        return false;
    }
    if bytes.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if bytes.len() >= 16 {
        return true;
    }
    bytes.len() >= 8 && bytes.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-')
}

/// Maps subjects by a list of NATS patterns: the first pattern that matches the
/// subject is its template; a subject no pattern matches falls back to
/// [`DefaultSubjectMapper`].
///
/// ```
/// use nats_otel::{SubjectMapper, SubjectTemplates};
/// let templates = SubjectTemplates::new(["tenants.*.orders.>", "users.*.profile"]);
/// assert_eq!(templates.template("tenants.acme.orders.eu.created"), "tenants.*.orders.>");
/// assert_eq!(templates.template("users.8812.profile"), "users.*.profile");
/// assert_eq!(templates.template("audit.4411"), "audit.*");
/// ```
#[derive(Debug, Clone, Default)]
pub struct SubjectTemplates {
    patterns: Vec<String>,
}

impl SubjectTemplates {
    /// Builds a mapper from NATS subject patterns (`*` matches one token, a final
    /// `>` matches one or more).
    pub fn new<I, S>(patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            patterns: patterns.into_iter().map(Into::into).collect(),
        }
    }
}

impl SubjectMapper for SubjectTemplates {
    fn template<'a>(&self, subject: &'a str) -> Cow<'a, str> {
        for pattern in &self.patterns {
            if subject_matches(pattern, subject) {
                return Cow::Owned(pattern.clone());
            }
        }
        DefaultSubjectMapper.template(subject)
    }
}

/// Whether `subject` matches the NATS subscription `pattern` (`*` one token, a
/// trailing `>` one or more tokens).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    let mut pattern_tokens = pattern.split('.').peekable();
    while let Some(p) = pattern_tokens.next() {
        if p == ">" && pattern_tokens.peek().is_none() {
            return subject_tokens.next().is_some_and(|t| !t.is_empty());
        }
        match subject_tokens.next() {
            Some(s) if !s.is_empty() && (p == "*" || p == s) => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Whether `subject` is a temporary (inbox) destination for `inbox_prefix`.
pub(crate) fn is_temporary(subject: &str, inbox_prefix: &str) -> bool {
    subject
        .strip_prefix(inbox_prefix)
        .is_some_and(|rest| rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_mapper_collapses_ids_and_keeps_words() {
        let m = DefaultSubjectMapper;
        assert_eq!(m.template("users.8812.orders"), "users.*.orders");
        assert_eq!(m.template("orders.created"), "orders.created");
        assert_eq!(m.template("api.v2.eu-west-1"), "api.v2.eu-west-1");
        assert_eq!(
            m.template("jobs.3f2b9c1e-8a7d-4c2e-9b1a-0c1d2e3f4a5b.done"),
            "jobs.*.done"
        );
        assert_eq!(m.template("blobs.deadbeef01"), "blobs.*");
        assert_eq!(m.template("x.Ab3kQ9zZpL0mN7vR2tY5wE"), "x.*");
        assert_eq!(m.template("orders.*"), "orders.*");
        assert_eq!(m.template(""), "");
    }

    #[test]
    fn the_one_pass_scan_agrees_with_the_token_rule() {
        for subject in [
            "users.8812.orders",
            "orders.created",
            "api.v2.eu-west-1",
            "jobs.3f2b9c1e-8a7d-4c2e-9b1a-0c1d2e3f4a5b.done",
            "blobs.deadbeef01",
            "blobs.deadbeef",
            "x.Ab3kQ9zZpL0mN7vR2tY5wE",
            "a..b",
            ".",
            "",
            "12345678",
            "abcdefg1",
            "ab-cd-e1",
            "né.42",
        ] {
            assert_eq!(
                has_id_like_token(subject.as_bytes()),
                subject.split('.').any(is_id_like),
                "{subject:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn the_one_pass_scan_agrees_on_any_subject(subject in "[a-fA-Z0-9.\\-é]{0,40}") {
            proptest::prop_assert_eq!(
                has_id_like_token(subject.as_bytes()),
                subject.split('.').any(is_id_like)
            );
        }
    }

    #[test]
    fn pattern_matching_follows_nats_wildcards() {
        assert!(subject_matches("orders.*", "orders.created"));
        assert!(!subject_matches("orders.*", "orders.created.eu"));
        assert!(subject_matches("orders.>", "orders.created.eu"));
        assert!(!subject_matches("orders.>", "orders"));
        assert!(!subject_matches("orders.*", "orders"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.b.c"));
        assert!(!subject_matches("a.*", "a."));
    }

    #[test]
    fn inbox_detection_needs_the_prefix_and_a_dot() {
        assert!(is_temporary("_INBOX.abc.1", "_INBOX"));
        assert!(!is_temporary("_INBOXES.abc", "_INBOX"));
        assert!(!is_temporary("orders._INBOX", "_INBOX"));
    }
}
