//! Dead-lettering: copy a failed message to a subject under a root disjoint from
//! its source stream, with the reason and provenance in headers.
//!
//! The copy keeps the original headers and payload and adds the headers in
//! [`headers`]. Its `traceparent` is that of its own `publish` span, a child of the
//! failed `process` span, so the dead letter sits in the failed message's trace; the
//! original producer's `traceparent` is kept in `Dlq-Original-Traceparent`. The
//! copy's `Nats-Msg-Id` is `dlq:{stream}:{sequence}`, so a crash between the
//! dead-letter publish and the `term` of the original cannot store two copies;
//! the original's own id is kept in `Dlq-Original-Msg-Id`.
//!
//! [`DeadLetterQueue`] works with the letters a dead-letter stream holds: list
//! them with their provenance, show one, replay (redrive) a selection to where it
//! came from, and purge a selection.
//!
//! # Replay
//!
//! A replayed message is the original payload and headers, without the `Dlq-*`
//! set, published to the subject it came from (`Dlq-Source-Subject`) or to
//! [`ReplayOptions::to`]:
//!
//! - its `Nats-Msg-Id` is `replay:{dlq stream}:{dlq sequence}`, so a replay
//!   resumed after a crash stores one copy, as long as it runs again within the
//!   target stream's duplicate window (2 minutes by default);
//! - the original's `Nats-Msg-Id`, if it had one, is in
//!   [`REPLAY_ORIGINAL_MSG_ID`] (`Nats-Otel-Original-Msg-Id`);
//! - `Nats-Expected-*` headers are dropped: what the original expected of the
//!   stream when it was first published no longer holds;
//! - the dead letter is deleted only after the PubAck: a crash at any point
//!   leaves either the letter, or the letter and a stored replay that the rerun
//!   deduplicates; nothing is lost.
//!
//! Each replay is a `publish {template}` span whose parent is the dead letter's
//! trace (the failed message's trace continues) with a link to the original
//! producer, and is counted in `messaging.nats.dlq.replayed` (`error.type` on
//! failures).
//!
//! A consumer-side idempotency filter keyed on `Nats-Msg-Id` (the
//! [`dedup`](crate::jetstream::dedup) helpers) sees a replay as a new message,
//! which is what a message that failed needs. Key it on
//! `Nats-Otel-Original-Msg-Id` first (falling back to `Nats-Msg-Id`) to treat a
//! replay as its original.

use std::fmt;

use async_nats::jetstream::context::PublishError;
use async_nats::jetstream::publish::PublishAck;
use async_nats::{HeaderMap, HeaderValue};
use futures_util::{StreamExt, TryStreamExt};
use opentelemetry::trace::FutureExt;

use crate::destination::subject_matches;

use super::{Context, Delivery};

mod letter;
mod queue;

pub use letter::{Filter, Letter};
pub use queue::{
    DeadLetterError, DeadLetterErrorKind, DeadLetterQueue, OnFailure, PurgeReport, ReplayOptions,
    ReplayReport, Replayed, REPLAY_ORIGINAL_MSG_ID,
};

/// Header names on a dead-lettered copy (a cross-language contract).
pub mod headers {
    /// Why the message was dead-lettered.
    pub const REASON: &str = "Dlq-Reason";
    /// The stream the message came from.
    pub const SOURCE_STREAM: &str = "Dlq-Source-Stream";
    /// The message's sequence in that stream.
    pub const SOURCE_SEQUENCE: &str = "Dlq-Source-Sequence";
    /// The subject the message was published to.
    pub const SOURCE_SUBJECT: &str = "Dlq-Source-Subject";
    /// The consumer that gave up on it.
    pub const CONSUMER: &str = "Dlq-Consumer";
    /// How many times it had been delivered.
    pub const DELIVERY_COUNT: &str = "Dlq-Delivery-Count";
    /// The producer's `traceparent` as the original message carried it.
    pub const ORIGINAL_TRACEPARENT: &str = "Dlq-Original-Traceparent";
    /// The original message's `Nats-Msg-Id` (the copy carries its own).
    pub const ORIGINAL_MSG_ID: &str = "Dlq-Original-Msg-Id";
    /// The prefix every header above shares (removed from a replayed message).
    pub const PREFIX: &str = "Dlq-";
}

/// The provenance a dead-lettered copy carries, read back from its headers (for a
/// tool that inspects or replays dead letters). Every field comes from the
/// network: values are as found (or `None` when missing or not a number).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DeadLetterInfo {
    /// `Dlq-Reason`.
    pub reason: String,
    /// `Dlq-Source-Stream`.
    pub stream: Option<String>,
    /// `Dlq-Source-Sequence`.
    pub sequence: Option<u64>,
    /// `Dlq-Source-Subject`.
    pub subject: Option<String>,
    /// `Dlq-Consumer`.
    pub consumer: Option<String>,
    /// `Dlq-Delivery-Count`.
    pub delivery_count: Option<u64>,
    /// `Dlq-Original-Traceparent`.
    pub original_traceparent: Option<String>,
    /// `Dlq-Original-Msg-Id`.
    pub original_message_id: Option<String>,
}

impl DeadLetterInfo {
    /// Reads the provenance headers; `None` unless the message carries a
    /// `Dlq-Reason` (it is not a dead letter). Header names match without regard
    /// to case.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let get = |name: &str| -> Option<String> {
            headers
                .iter()
                .find(|(key, _)| AsRef::<str>::as_ref(*key).eq_ignore_ascii_case(name))
                .and_then(|(_, values)| values.first())
                .map(|value| value.as_str().trim().to_owned())
        };
        let number = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
        Some(Self {
            reason: get(headers::REASON)?,
            stream: get(headers::SOURCE_STREAM),
            sequence: number(headers::SOURCE_SEQUENCE),
            subject: get(headers::SOURCE_SUBJECT),
            consumer: get(headers::CONSUMER),
            delivery_count: number(headers::DELIVERY_COUNT),
            original_traceparent: get(headers::ORIGINAL_TRACEPARENT),
            original_message_id: get(headers::ORIGINAL_MSG_ID),
        })
    }
}

/// Longest reason kept in the header; longer ones are cut on a char boundary.
const MAX_REASON_LEN: usize = 1024;

/// Where dead letters go: `{prefix}.{source subject}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    prefix: String,
}

impl Default for DeadLetter {
    /// Prefix `dlq`: `orders.created` → `dlq.orders.created`.
    fn default() -> Self {
        Self::new("dlq")
    }
}

impl DeadLetter {
    /// Dead letters of `orders.created` go to `{prefix}.orders.created`. The prefix
    /// must not be covered by the source stream's subjects (see [`validate_layout`]).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into().trim_end_matches('.').to_owned(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The dead-letter subject for `subject`.
    pub fn subject_for(&self, subject: &str) -> String {
        format!("{}.{subject}", self.prefix)
    }

    /// The subjects a stream needs to hold every dead letter: `{prefix}.>`.
    pub fn stream_subjects(&self) -> Vec<String> {
        vec![format!("{}.>", self.prefix)]
    }

    /// Publishes the copy of `delivery` and awaits its ack. Run it inside the
    /// delivery's span (the worker does) so the copy joins the failed trace.
    pub async fn send(
        &self,
        js: &Context,
        delivery: &Delivery,
        reason: &str,
    ) -> Result<PublishAck, PublishError> {
        let message = delivery.message();
        let (stream, sequence, delivered) = match message.info() {
            Ok(info) => (info.stream.to_owned(), info.stream_sequence, info.delivered),
            Err(_) => (String::new(), 0, 0),
        };
        self.publish_copy(
            js,
            Provenance {
                subject: message.subject.as_str(),
                headers: message.headers.clone().unwrap_or_default(),
                payload: message.payload.clone(),
                stream: &stream,
                sequence,
                consumer: delivery.consumer_name(),
                delivered,
                reason,
            },
        )
        .await
    }

    async fn publish_copy(
        &self,
        js: &Context,
        from: Provenance<'_>,
    ) -> Result<PublishAck, PublishError> {
        let mut headers = from.headers;
        if let Some(original) = headers.get("traceparent").cloned() {
            headers.insert(headers::ORIGINAL_TRACEPARENT, original);
        }
        if let Some(id) = headers.get(async_nats::header::NATS_MESSAGE_ID).cloned() {
            headers.insert(headers::ORIGINAL_MSG_ID, id);
        }
        insert_lossy(&mut headers, headers::REASON, from.reason);
        insert_lossy(&mut headers, headers::SOURCE_STREAM, from.stream);
        insert_lossy(
            &mut headers,
            headers::SOURCE_SEQUENCE,
            &from.sequence.to_string(),
        );
        insert_lossy(&mut headers, headers::SOURCE_SUBJECT, from.subject);
        insert_lossy(&mut headers, headers::CONSUMER, from.consumer);
        insert_lossy(
            &mut headers,
            headers::DELIVERY_COUNT,
            &from.delivered.to_string(),
        );
        insert_lossy(
            &mut headers,
            async_nats::header::NATS_MESSAGE_ID.as_ref(),
            &format!("dlq:{}:{}", from.stream, from.sequence),
        );
        js.publish_with_headers(self.subject_for(from.subject), headers, from.payload)
            .await?
            .await
    }

    /// Dead-letters the messages a consumer *not* driven by the [`Worker`] gives up
    /// on. Subscribes to the server's max-deliveries advisories for
    /// `stream`/`consumer` now; [`MaxDeliveriesForwarder::run`] then copies each such
    /// message from the stream to the dead-letter subject (reason
    /// `max deliveries (N) reached`) inside the original producer's trace.
    ///
    /// Advisories are core NATS messages: one sent while nothing listens is lost,
    /// so create the forwarder before the consumer runs.
    ///
    /// [`Worker`]: super::Worker
    pub async fn max_deliveries_forwarder(
        &self,
        js: &Context,
        stream: &str,
        consumer: &str,
    ) -> Result<MaxDeliveriesForwarder, async_nats::Error> {
        let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}");
        let advisories = js.raw_client().subscribe(subject).await?;
        // A round trip on the same connection: once it returns, the server has
        // registered the subscription above.
        let source = js.inner().get_stream(stream).await?;
        Ok(MaxDeliveriesForwarder {
            dead_letter: self.clone(),
            js: js.clone(),
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
            advisories,
            source,
        })
    }
}

/// Copies messages a consumer gave up on to the dead-letter subject; see
/// [`DeadLetter::max_deliveries_forwarder`].
#[derive(Debug)]
pub struct MaxDeliveriesForwarder {
    dead_letter: DeadLetter,
    js: Context,
    stream: String,
    consumer: String,
    advisories: async_nats::Subscriber,
    source: async_nats::jetstream::stream::Stream,
}

impl MaxDeliveriesForwarder {
    /// Forwards until `shutdown` completes; returns how many messages it
    /// dead-lettered.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> u64 {
        let mut forwarded = 0;
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let advisory = tokio::select! {
                () = &mut shutdown => break,
                next = self.advisories.next() => match next {
                    Some(message) => message,
                    None => break,
                },
            };
            // Untrusted JSON from the wire: a malformed advisory is skipped.
            let Ok(advisory) = serde_json::from_slice::<MaxDeliveries>(&advisory.payload) else {
                continue;
            };
            let Ok(original) = self.source.get_raw_message(advisory.stream_seq).await else {
                // Already removed (limits, purge): nothing left to save.
                continue;
            };
            let producer = self.js.instrumentation().extract(&original.headers);
            let reason = format!("max deliveries ({}) reached", advisory.deliveries);
            // The advisory is not repeated, so retry the copy a few times; its
            // `Nats-Msg-Id` keeps retries from storing it twice.
            let retry = super::Backoff::default();
            for attempt in 1..=5u64 {
                let copy = self.dead_letter.publish_copy(
                    &self.js,
                    Provenance {
                        subject: original.subject.as_str(),
                        headers: original.headers.clone(),
                        payload: original.payload.clone(),
                        stream: &self.stream,
                        sequence: advisory.stream_seq,
                        consumer: &self.consumer,
                        delivered: advisory.deliveries,
                        reason: &reason,
                    },
                );
                if copy.with_context(producer.clone()).await.is_ok() {
                    forwarded += 1;
                    break;
                }
                if attempt < 5 {
                    tokio::time::sleep(retry.delay(attempt)).await;
                }
            }
        }
        forwarded
    }
}

/// Where a dead letter comes from.
struct Provenance<'a> {
    subject: &'a str,
    headers: HeaderMap,
    payload: bytes::Bytes,
    stream: &'a str,
    sequence: u64,
    consumer: &'a str,
    delivered: i64,
    reason: &'a str,
}

/// `io.nats.jetstream.advisory.v1.max_deliver`, the fields used here.
#[derive(serde::Deserialize)]
struct MaxDeliveries {
    stream_seq: u64,
    deliveries: i64,
}

/// Inserts `value` with CR/LF replaced and its length bounded, so a hostile error
/// message can neither break the header block nor bloat it.
fn insert_lossy(headers: &mut HeaderMap, name: &str, value: &str) {
    let mut clean: String = value
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    if clean.len() > MAX_REASON_LEN {
        let mut cut = MAX_REASON_LEN;
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean.truncate(cut);
    }
    if let (Ok(name), Ok(value)) = (
        name.parse::<async_nats::HeaderName>(),
        clean.parse::<HeaderValue>(),
    ) {
        headers.insert(name, value);
    }
}

/// Why a dead-letter stream could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LayoutErrorKind {
    /// Dead-letter subjects overlap a source stream's: the server would reject the
    /// stream, and dead letters would be consumed again.
    Overlap,
    /// The existing streams could not be listed.
    ListStreams,
    /// The dead-letter stream could not be created.
    CreateStream,
}

impl fmt::Display for LayoutErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Overlap => "dead-letter subjects overlap source subjects",
            Self::ListStreams => "could not list streams",
            Self::CreateStream => "could not create the dead-letter stream",
        })
    }
}

/// The error of [`validate_layout`] and [`ensure_stream`]: match on
/// [`kind`](async_nats::error::Error::kind).
pub type LayoutError = async_nats::error::Error<LayoutErrorKind>;

/// Whether some subject matches both NATS patterns `a` and `b`.
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    fn overlap(a: &[&str], b: &[&str]) -> bool {
        match (a.first(), b.first()) {
            (None, None) => true,
            (Some(&">"), Some(_)) | (Some(_), Some(&">")) => true,
            (Some(x), Some(y)) => (*x == "*" || *y == "*" || x == y) && overlap(&a[1..], &b[1..]),
            _ => false,
        }
    }
    let a: Vec<&str> = a.split('.').collect();
    let b: Vec<&str> = b.split('.').collect();
    overlap(&a, &b)
}

/// Checks that dead-letter subjects and source subjects share no subject: the
/// server refuses overlapping streams (error 10065), and a dead letter stored back
/// in its source stream would be consumed again.
pub fn validate_layout(
    source_subjects: &[String],
    dlq_subjects: &[String],
) -> Result<(), LayoutError> {
    for dlq in dlq_subjects {
        for source in source_subjects {
            if subjects_overlap(source, dlq) {
                return Err(LayoutError::with_source(
                    LayoutErrorKind::Overlap,
                    format!(
                        "`{dlq}` overlaps `{source}`: the server rejects overlapping streams \
                         (error 10065) and dead letters would be consumed again; put them under \
                         a disjoint root, e.g. `dlq.{}`",
                        source.trim_end_matches(".>")
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Creates (or reuses) the stream `name` holding `dead_letter`'s subjects, after
/// checking that no other stream's subjects overlap them.
pub async fn ensure_stream(
    js: &Context,
    name: &str,
    dead_letter: &DeadLetter,
) -> Result<super::stream::Stream, LayoutError> {
    let dlq_subjects = dead_letter.stream_subjects();
    let mut streams = js.streams();
    while let Some(info) = streams
        .try_next()
        .await
        .map_err(|e| LayoutError::with_source(LayoutErrorKind::ListStreams, e))?
    {
        if info.config.name == name {
            continue;
        }
        validate_layout(&info.config.subjects, &dlq_subjects).map_err(|e| {
            LayoutError::with_source(
                LayoutErrorKind::Overlap,
                format!("stream `{}`: {}", info.config.name, source_text(&e)),
            )
        })?;
    }
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: name.to_owned(),
        subjects: dlq_subjects,
        ..Default::default()
    })
    .await
    .map_err(|e| LayoutError::with_source(LayoutErrorKind::CreateStream, e))
}

/// The message an error's source carries.
fn source_text(error: &LayoutError) -> String {
    std::error::Error::source(error).map_or_else(String::new, |s| s.to_string())
}

/// Whether `subject` is a dead-letter subject of `dead_letter`.
pub fn is_dead_letter(dead_letter: &DeadLetter, subject: &str) -> bool {
    subject_matches(&format!("{}.>", dead_letter.prefix), subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_follows_wildcards() {
        assert!(subjects_overlap("orders.>", "orders.dlq.>"));
        assert!(!subjects_overlap("orders.>", "dlq.orders.>"));
        assert!(subjects_overlap("orders.*", "orders.created"));
        assert!(!subjects_overlap("orders.*", "orders.a.b"));
        assert!(subjects_overlap("*.created", "orders.*"));
        assert!(subjects_overlap(">", "anything.at.all"));
        assert!(!subjects_overlap("a.b", "a.c"));
    }

    #[test]
    fn layout_rejects_dlq_inside_the_source_root() {
        let err = validate_layout(&["orders.>".into()], &["orders.dlq.>".into()]).unwrap_err();
        assert_eq!(err.kind(), LayoutErrorKind::Overlap);
        let text = err.to_string();
        assert!(
            text.contains("10065") && text.contains("dlq.orders"),
            "{text}"
        );
        assert_eq!(
            validate_layout(&["orders.>".into()], &["dlq.>".into()]).map_err(|e| e.kind()),
            Ok(())
        );
    }

    #[test]
    fn hostile_reasons_are_cleaned_and_bounded() {
        let mut headers = HeaderMap::new();
        insert_lossy(&mut headers, headers::REASON, &"é\r\nx".repeat(2000));
        let value = headers
            .get(headers::REASON)
            .map(|v| v.as_str())
            .unwrap_or_default();
        assert!(!value.is_empty(), "reason kept");
        assert!(value.len() <= MAX_REASON_LEN);
        assert!(!value.contains(['\r', '\n']));
        assert!(is_dead_letter(&DeadLetter::default(), "dlq.orders.created"));
        assert_eq!(DeadLetter::new("dead.").subject_for("a.b"), "dead.a.b");
    }
}
