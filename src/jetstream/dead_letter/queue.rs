//! The letters a dead-letter stream holds: list them with their provenance, show
//! one, replay (redrive) a selection to where it came from, purge a selection.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::stream::Stream;
use async_nats::HeaderMap;
use futures_util::StreamExt;
use opentelemetry::trace::{Link, TraceContextExt};
use opentelemetry::KeyValue;

use super::letter::{Filter, Letter};
use super::{headers, DeadLetterInfo};
use crate::jetstream::Context;
use crate::semconv::{self, error_type};

/// The header a replayed message carries the original `Nats-Msg-Id` in.
pub const REPLAY_ORIGINAL_MSG_ID: &str = "Nats-Otel-Original-Msg-Id";

/// How long listing waits for the next stored message before giving up.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a dead-letter operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadLetterErrorKind {
    /// No stream has that name.
    StreamNotFound,
    /// The stream holds messages that are not dead letters (no `Dlq-Reason`).
    NotDeadLetters,
    /// No message is stored at that sequence.
    SequenceNotFound,
    /// The server could not be asked, or answered with an error.
    Request,
}

impl fmt::Display for DeadLetterErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::StreamNotFound => "dead-letter stream not found",
            Self::NotDeadLetters => "not a dead-letter stream",
            Self::SequenceNotFound => "no dead letter at that sequence",
            Self::Request => "request to the server failed",
        })
    }
}

/// The error of [`DeadLetterQueue`]'s operations: match on
/// [`kind`](async_nats::error::Error::kind); the message names the stream or
/// sequence.
pub type DeadLetterError = async_nats::error::Error<DeadLetterErrorKind>;

fn request_error(what: String, err: impl fmt::Display) -> DeadLetterError {
    DeadLetterError::with_source(DeadLetterErrorKind::Request, format!("{what}: {err}"))
}

/// What to do when one replay fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnFailure {
    /// Stop at the first failure (the default): the rest stay in the queue.
    #[default]
    Stop,
    /// Go on with the next letter and report every failure.
    Continue,
}

/// How to replay.
#[derive(Clone, Debug, Default)]
pub struct ReplayOptions {
    to: Option<String>,
    rate: Option<f64>,
    on_failure: OnFailure,
    dry_run: bool,
    halt_after_ack: Option<u64>,
}

impl ReplayOptions {
    /// Replay to each letter's source subject, as fast as acks come, stopping at
    /// the first failure.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replay every letter to `subject` instead of its source subject.
    pub fn to(mut self, subject: impl Into<String>) -> Self {
        self.to = Some(subject.into());
        self
    }

    /// At most `per_second` replays per second (ignored unless positive).
    pub fn rate(mut self, per_second: f64) -> Self {
        self.rate = (per_second.is_finite() && per_second > 0.0).then_some(per_second);
        self
    }

    /// Stop at the first failure, or go on.
    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    /// Report what would be replayed, publishing and deleting nothing.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Fault injection for crash tests: stop right after the PubAck of the
    /// letter at `sequence`, before deleting it, as a crash there would.
    #[doc(hidden)]
    pub fn halt_after_ack(mut self, sequence: u64) -> Self {
        self.halt_after_ack = Some(sequence);
        self
    }
}

/// One replayed letter.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Replayed {
    /// Its dead-letter stream sequence.
    pub sequence: u64,
    /// Where it went.
    pub subject: String,
    /// The stream that stored the replay and its sequence there (`None` on a
    /// dry run).
    pub stored: Option<(String, u64)>,
    /// Whether the target stream already held it (a replay resumed after a crash).
    pub duplicate: bool,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayReport {
    /// Letters replayed and deleted (on a dry run: those that would be).
    pub replayed: Vec<Replayed>,
    /// Letters not replayed, or replayed but not deleted, with why.
    pub failed: Vec<(u64, String)>,
    /// Letters not tried because an earlier one failed ([`OnFailure::Stop`]).
    pub not_tried: usize,
}

/// What a purge did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PurgeReport {
    /// Sequences deleted (on a dry run: those that would be).
    pub purged: Vec<u64>,
    /// Sequences not deleted, with why.
    pub failed: Vec<(u64, String)>,
}

/// A dead-letter stream, opened for inspection, replay and purge.
#[derive(Debug, Clone)]
pub struct DeadLetterQueue {
    js: Context,
    stream: Stream,
    name: String,
}

impl DeadLetterQueue {
    /// Opens the dead-letter stream `name`. Fails with
    /// [`StreamNotFound`](DeadLetterErrorKind::StreamNotFound) when there is none,
    /// and [`NotDeadLetters`](DeadLetterErrorKind::NotDeadLetters) when its first
    /// message is not a dead letter.
    pub async fn open(js: &Context, name: &str) -> Result<Self, DeadLetterError> {
        let stream = js
            .inner()
            .get_stream(name)
            .await
            .map_err(|err| match err.kind() {
                async_nats::jetstream::context::GetStreamErrorKind::JetStream(e)
                    if e.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    DeadLetterError::with_source(
                        DeadLetterErrorKind::StreamNotFound,
                        format!("no stream named `{name}`"),
                    )
                }
                _ => request_error(format!("looking up stream `{name}`"), err),
            })?;
        let queue = Self {
            js: js.clone(),
            stream,
            name: name.to_owned(),
        };
        let state = queue.state().await?;
        if state.messages > 0 {
            if let Ok(first) = queue.get(state.first_sequence).await {
                if first.info.is_none() {
                    return Err(DeadLetterError::with_source(
                        DeadLetterErrorKind::NotDeadLetters,
                        format!(
                            "stream `{name}` holds messages that are not dead letters (sequence {} \
                             has no {} header)",
                            first.sequence,
                            headers::REASON
                        ),
                    ));
                }
            }
        }
        Ok(queue)
    }

    /// The stream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn state(&self) -> Result<async_nats::jetstream::stream::State, DeadLetterError> {
        self.stream
            .get_info()
            .await
            .map(|info| info.state)
            .map_err(|err| request_error(format!("reading stream `{}`", self.name), err))
    }

    /// How many letters the stream holds.
    pub async fn len(&self) -> Result<u64, DeadLetterError> {
        Ok(self.state().await?.messages)
    }

    /// Whether the stream holds no letter.
    pub async fn is_empty(&self) -> Result<bool, DeadLetterError> {
        Ok(self.len().await? == 0)
    }

    /// The letter at `sequence`; [`SequenceNotFound`](DeadLetterErrorKind::SequenceNotFound)
    /// when none is stored there. A message without `Dlq-Reason` comes back with
    /// `info: None`.
    pub async fn get(&self, sequence: u64) -> Result<Letter, DeadLetterError> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        match self.stream.get_raw_message(sequence).await {
            Ok(message) => Ok(Letter::new(
                message.sequence,
                message.subject.to_string(),
                message.time.unix_timestamp_nanos(),
                message.headers,
                message.payload,
            )),
            Err(err) => match err.kind() {
                RawMessageErrorKind::NoMessageFound => Err(DeadLetterError::with_source(
                    DeadLetterErrorKind::SequenceNotFound,
                    format!(
                        "stream `{}` holds no message at sequence {sequence}",
                        self.name
                    ),
                )),
                RawMessageErrorKind::JetStream(e)
                    if e.error_code() == async_nats::jetstream::ErrorCode::NO_MESSAGE_FOUND =>
                {
                    Err(DeadLetterError::with_source(
                        DeadLetterErrorKind::SequenceNotFound,
                        format!(
                            "stream `{}` holds no message at sequence {sequence}",
                            self.name
                        ),
                    ))
                }
                _ => Err(request_error(
                    format!("reading sequence {sequence} of `{}`", self.name),
                    err,
                )),
            },
        }
    }

    /// The letters passing `filter`, oldest first, at most `limit` (listing
    /// reads the stream from the filter's first sequence to its last message).
    pub async fn list(
        &self,
        filter: &Filter,
        limit: usize,
    ) -> Result<Vec<Letter>, DeadLetterError> {
        let mut letters = Vec::new();
        let state = self.state().await?;
        let start = filter.from_sequence.max(state.first_sequence).max(1);
        if limit == 0 || state.messages == 0 || start > state.last_sequence {
            return Ok(letters);
        }
        let reading =
            |err: &dyn fmt::Display| request_error(format!("reading stream `{}`", self.name), err);
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| reading(&e))?;
        let mut messages = consumer.messages().await.map_err(|e| reading(&e))?;
        loop {
            let message = match tokio::time::timeout(READ_TIMEOUT, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(err))) => return Err(reading(&err)),
                Ok(None) => break,
                Err(_) => return Err(reading(&"timed out waiting for the next message")),
            };
            let (sequence, published, pending) = match message.info() {
                Ok(info) => (
                    info.stream_sequence,
                    info.published.unix_timestamp_nanos(),
                    info.pending,
                ),
                Err(err) => return Err(reading(&err)),
            };
            let message = message.split().0;
            let letter = Letter::new(
                sequence,
                message.subject.to_string(),
                published,
                message.headers.unwrap_or_default(),
                message.payload,
            );
            if filter.matches(&letter) {
                letters.push(letter);
            }
            // Letters stored after the listing began are left for the next one.
            if letters.len() >= limit || pending == 0 || sequence >= state.last_sequence {
                break;
            }
        }
        Ok(letters)
    }

    /// Replays `letters` (see the [module docs](super)): each is published, and
    /// deleted from this stream once its PubAck comes.
    pub async fn replay(&self, letters: &[Letter], options: &ReplayOptions) -> ReplayReport {
        let mut report = ReplayReport::default();
        let mut pace = options.rate.map(|rate| {
            let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        for (i, letter) in letters.iter().enumerate() {
            if let Some(pace) = &mut pace {
                pace.tick().await;
            }
            match self.replay_one(letter, options).await {
                Ok(Some(replayed)) => {
                    self.count(None);
                    report.replayed.push(replayed);
                }
                // Halted by the fault hook: as if the process had died here.
                Ok(None) => {
                    report.not_tried = letters.len() - i - 1;
                    return report;
                }
                Err((error_type, why)) => {
                    self.count(Some(&error_type));
                    report.failed.push((letter.sequence, why));
                    if options.on_failure == OnFailure::Stop {
                        report.not_tried = letters.len() - i - 1;
                        return report;
                    }
                }
            }
        }
        report
    }

    /// Counts one replay in `messaging.nats.dlq.replayed`.
    fn count(&self, error_type: Option<&str>) {
        let Some(instruments) = self.js.instrumentation().instruments() else {
            return;
        };
        let mut attributes = vec![
            KeyValue::new(semconv::MESSAGING_SYSTEM, semconv::MESSAGING_SYSTEM_NATS),
            KeyValue::new(semconv::event::DLQ_STREAM, self.name.clone()),
        ];
        attributes.extend(error_type.map(|t| KeyValue::new(semconv::ERROR_TYPE, t.to_owned())));
        instruments.dlq_replayed.add(1, &attributes);
    }

    /// Replays one letter: `Ok(None)` when halted by the fault hook.
    async fn replay_one(
        &self,
        letter: &Letter,
        options: &ReplayOptions,
    ) -> Result<Option<Replayed>, (String, String)> {
        let Some(info) = &letter.info else {
            return Err((
                error_type::NOT_A_DEAD_LETTER.to_owned(),
                format!("no {} header: not a dead letter", headers::REASON),
            ));
        };
        let subject = match (&options.to, &info.subject) {
            (Some(to), _) => to.clone(),
            (None, Some(subject)) if !subject.is_empty() => subject.clone(),
            _ => {
                return Err((
                    error_type::NO_SOURCE_SUBJECT.to_owned(),
                    format!("no {}: give a target subject", headers::SOURCE_SUBJECT),
                ))
            }
        };
        if options.dry_run {
            return Ok(Some(Replayed {
                sequence: letter.sequence,
                subject,
                stored: None,
                duplicate: false,
            }));
        }
        let inst = self.js.instrumentation();
        // The failed message's trace continues; the original producer is linked.
        let parent = inst.extract(&letter.headers);
        let links = info
            .original_traceparent
            .as_deref()
            .and_then(|traceparent| {
                let mut carrier = HeaderMap::new();
                carrier.insert("traceparent", traceparent);
                let producer = inst.extract(&carrier);
                let span = producer.span().span_context().clone();
                span.is_valid().then(|| vec![Link::with_context(span)])
            })
            .unwrap_or_default();
        let headers = replay_headers(&letter.headers, &self.name, letter.sequence, info);
        let publish = {
            let _parent = parent.attach();
            self.js.send_traced_linked(
                subject.clone().into(),
                Some(headers),
                letter.payload.clone(),
                links,
            )
        };
        let ack = match publish.await {
            Ok(ack) => ack.await,
            Err(err) => Err(err),
        }
        .map_err(|err| {
            (
                crate::error::refusal_or_kind(&err),
                format!("replay to `{subject}` failed: {err}"),
            )
        })?;
        if options.halt_after_ack == Some(letter.sequence) {
            return Ok(None);
        }
        self.stream
            .delete_message(letter.sequence)
            .await
            .map_err(|err| {
                (
                    error_type::DELETE_FAILED.to_owned(),
                    format!(
                        "replayed to `{subject}` (stream {} sequence {}) but not deleted: {err}; \
                         replaying it again within the stream's duplicate window stores no second copy",
                        ack.stream, ack.sequence
                    ),
                )
            })?;
        Ok(Some(Replayed {
            sequence: letter.sequence,
            subject,
            stored: Some((ack.stream, ack.sequence)),
            duplicate: ack.duplicate,
        }))
    }

    /// Deletes `letters` from the stream (nothing on a `dry_run`).
    pub async fn purge(&self, letters: &[Letter], dry_run: bool) -> PurgeReport {
        let mut report = PurgeReport::default();
        for letter in letters {
            if dry_run {
                report.purged.push(letter.sequence);
                continue;
            }
            match self.stream.delete_message(letter.sequence).await {
                Ok(_) => report.purged.push(letter.sequence),
                Err(err) => report.failed.push((letter.sequence, err.to_string())),
            }
        }
        report
    }
}

/// The replayed message's headers: the original's, without the `Dlq-*` set, the
/// trace context (injected afresh) and `Nats-Expected-*`; `Nats-Msg-Id` set to
/// `replay:{stream}:{sequence}`; the original id in [`REPLAY_ORIGINAL_MSG_ID`].
fn replay_headers(
    stored: &HeaderMap,
    stream: &str,
    sequence: u64,
    info: &DeadLetterInfo,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let dropped = |name: &str| {
        let lower = name.to_ascii_lowercase();
        lower.starts_with(&headers::PREFIX.to_ascii_lowercase())
            || lower.starts_with("nats-expected-")
            || lower == "nats-msg-id"
            || lower == "traceparent"
            || lower == "tracestate"
    };
    for (name, values) in stored.iter() {
        let text: &str = name.as_ref();
        if dropped(text) {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("replay:{stream}:{sequence}").as_str(),
    );
    if let Some(id) = &info.original_message_id {
        if let Ok(value) = id.parse::<async_nats::HeaderValue>() {
            headers.insert(REPLAY_ORIGINAL_MSG_ID, value);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        h.insert("Nats-Msg-Id", "dlq:ORDERS:7");
        h.insert("Nats-Expected-Last-Sequence", "6");
        h.insert("X-Tenant", "acme");
        h.insert(headers::REASON, "boom");
        h.insert(headers::SOURCE_SUBJECT, "orders.created");
        h.insert(headers::ORIGINAL_MSG_ID, "order-7");
        h
    }

    #[test]
    fn replay_headers_drop_the_dead_letter_set_and_restore_the_original_id() {
        let stored = stored();
        let info = DeadLetterInfo::from_headers(&stored).expect("a dead letter");
        let headers = replay_headers(&stored, "DLQ", 42, &info);
        let mut names: Vec<String> = headers
            .iter()
            .map(|(k, v)| format!("{}={}", AsRef::<str>::as_ref(k), v[0].as_str()))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "Nats-Msg-Id=replay:DLQ:42",
                "Nats-Otel-Original-Msg-Id=order-7",
                "X-Tenant=acme",
            ]
        );
    }
}
