//! One letter of a dead-letter stream, and the filter that selects letters.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use bytes::Bytes;

use super::{headers, DeadLetterInfo};
use crate::filter::{FilterError, SubjectPattern};

/// Which letters to list: every condition set must hold.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    subject: Option<SubjectPattern>,
    stream: Option<String>,
    consumer: Option<String>,
    reason: Option<String>,
    older_than: Option<Duration>,
    newer_than: Option<Duration>,
    pub(super) from_sequence: u64,
}

impl Filter {
    /// Every letter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Letters whose original subject (`Dlq-Source-Subject`) matches the NATS
    /// pattern `pattern` (`orders.*`, `orders.>`).
    pub fn source_subject(mut self, pattern: &str) -> Result<Self, FilterError> {
        self.subject = Some(SubjectPattern::new(pattern)?);
        Ok(self)
    }

    /// Letters from the stream `stream` (`Dlq-Source-Stream`).
    pub fn source_stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(stream.into());
        self
    }

    /// Letters the consumer `consumer` gave up on (`Dlq-Consumer`).
    pub fn consumer(mut self, consumer: impl Into<String>) -> Self {
        self.consumer = Some(consumer.into());
        self
    }

    /// Letters whose reason contains `text` (case-insensitive).
    pub fn reason_contains(mut self, text: impl Into<String>) -> Self {
        self.reason = Some(text.into().to_lowercase());
        self
    }

    /// Letters stored at least `age` ago.
    pub fn older_than(mut self, age: Duration) -> Self {
        self.older_than = Some(age);
        self
    }

    /// Letters stored less than `age` ago.
    pub fn newer_than(mut self, age: Duration) -> Self {
        self.newer_than = Some(age);
        self
    }

    /// Letters at dead-letter stream sequence `sequence` or later (to page
    /// through a long queue).
    pub fn from_sequence(mut self, sequence: u64) -> Self {
        self.from_sequence = sequence;
        self
    }

    /// Whether `letter` passes. A letter that is not a dead letter passes only
    /// a filter without provenance conditions.
    pub fn matches(&self, letter: &Letter) -> bool {
        if letter.sequence < self.from_sequence {
            return false;
        }
        let age = letter.age();
        if self.older_than.is_some_and(|min| age < min)
            || self.newer_than.is_some_and(|max| age >= max)
        {
            return false;
        }
        let provenance = self.subject.is_some()
            || self.stream.is_some()
            || self.consumer.is_some()
            || self.reason.is_some();
        let Some(info) = &letter.info else {
            return !provenance;
        };
        let equal = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|want| have.as_ref() == Some(want))
        };
        self.subject
            .as_ref()
            .is_none_or(|pattern| info.subject.as_deref().is_some_and(|s| pattern.matches(s)))
            && equal(&self.stream, &info.stream)
            && equal(&self.consumer, &info.consumer)
            && self
                .reason
                .as_ref()
                .is_none_or(|text| info.reason.to_lowercase().contains(text))
    }
}

/// One message of a dead-letter stream.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Letter {
    /// Its sequence in the dead-letter stream.
    pub sequence: u64,
    /// The dead-letter subject it is stored under.
    pub subject: String,
    /// When the dead-letter stream stored it.
    pub stored: SystemTime,
    /// Its headers as stored (the original's plus the `Dlq-*` set).
    pub headers: HeaderMap,
    /// The original payload, as stored (still compressed if it was).
    pub payload: Bytes,
    /// Its provenance; `None` when it carries no `Dlq-Reason` (not a dead letter).
    pub info: Option<DeadLetterInfo>,
}

impl Letter {
    pub(super) fn new(
        sequence: u64,
        subject: String,
        stored_nanos: i128,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Self {
        let stored = u64::try_from(stored_nanos)
            .map(|nanos| UNIX_EPOCH + Duration::from_nanos(nanos))
            .unwrap_or(UNIX_EPOCH);
        let info = DeadLetterInfo::from_headers(&headers);
        Self {
            sequence,
            subject,
            stored,
            headers,
            payload,
            info,
        }
    }

    /// How long ago it was stored (zero for a clock behind the server's).
    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.stored)
            .unwrap_or_default()
    }

    /// The trace id of the failed message's trace (from the letter's own
    /// `traceparent`), if it carries a well-formed one.
    pub fn trace_id(&self) -> Option<String> {
        trace_id_of(self.headers.get("traceparent")?.as_str())
    }

    /// What is wrong with its `Dlq-*` headers, in words (empty when nothing is):
    /// a missing reason, numbers that are not numbers, a malformed original
    /// `traceparent`.
    pub fn problems(&self) -> Vec<String> {
        let Some(info) = &self.info else {
            return vec![format!("no {} header: not a dead letter", headers::REASON)];
        };
        let mut problems = Vec::new();
        let raw = |name: &str| self.headers.get(name).map(|v| v.as_str().trim().to_owned());
        for (name, parsed) in [
            (headers::SOURCE_SEQUENCE, info.sequence.is_some()),
            (headers::DELIVERY_COUNT, info.delivery_count.is_some()),
        ] {
            if let (Some(value), false) = (raw(name), parsed) {
                problems.push(format!("{name} is not a number: `{value}`"));
            }
        }
        if info.subject.as_deref().is_none_or(str::is_empty) {
            problems.push(format!(
                "no {}: the replay target is unknown",
                headers::SOURCE_SUBJECT
            ));
        }
        if let Some(parent) = &info.original_traceparent {
            if trace_id_of(parent).is_none() {
                problems.push(format!(
                    "{} is malformed: `{parent}`",
                    headers::ORIGINAL_TRACEPARENT
                ));
            }
        }
        problems
    }
}

/// The trace id of a W3C `traceparent`, if well formed.
fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let (_version, trace, span) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(trace, 32) && hex(span, 16) && trace.bytes().any(|b| b != b'0'))
        .then(|| trace.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_only_from_well_formed_traceparents() {
        assert_eq!(
            trace_id_of("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01").as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        for bad in [
            "",
            "00-xyz-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "garbage",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn malformed_provenance_is_described_not_fatal() {
        let mut h = HeaderMap::new();
        h.insert(headers::REASON, "boom");
        h.insert(headers::SOURCE_SUBJECT, "orders.created");
        h.insert(headers::SOURCE_SEQUENCE, "seven");
        h.insert(headers::ORIGINAL_TRACEPARENT, "not-a-traceparent");
        let letter = Letter::new(3, "dlq.orders.created".into(), 0, h, Bytes::new());
        assert_eq!(
            letter.problems(),
            [
                "Dlq-Source-Sequence is not a number: `seven`",
                "Dlq-Original-Traceparent is malformed: `not-a-traceparent`",
            ]
        );
        let plain = Letter::new(4, "x".into(), 0, HeaderMap::new(), Bytes::new());
        assert_eq!(
            plain.problems(),
            ["no Dlq-Reason header: not a dead letter"]
        );
        assert!(!Filter::new().source_stream("ORDERS").matches(&plain));
        assert!(Filter::new().matches(&plain));
    }
}
