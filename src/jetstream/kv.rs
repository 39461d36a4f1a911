//! Key-value buckets, traced, with the writer's trace context stored with each
//! value.
//!
//! async-nats's KV API takes no headers, so [`Store::put`], [`Store::create`] and
//! [`Store::update`] publish to the bucket's subject themselves (same subjects,
//! same `Nats-Expected-Last-Subject-Sequence` revision checks, same errors) with the
//! writer's context in the headers. [`Store::watch`] yields each change as a
//! [`Change`] with a `process {bucket}` span, parented and linked to the writer as
//! [`ProcessParenting`](crate::ProcessParenting) says, and
//! [`Store::entry_with_context`] returns the writer's context with the entry.
//!
//! Every operation is a span `{operation} {bucket}`: writes that store the writer's
//! context (`put`, `create`, `update`) are `send` PRODUCER spans, `delete` and
//! `purge` `send` CLIENT spans, reads (`get`, `entry`, `keys`, `history`) `receive`
//! CLIENT spans, and starting a watch a CLIENT span. The destination (name and
//! template) is the bucket; spans carry `messaging.nats.kv.bucket` and, where
//! known, `messaging.nats.kv.revision`. Keys can carry ids or personal data, so
//! `messaging.nats.kv.key` is only recorded after
//! [`Store::with_key_attribute`]`(true)`.

use std::fmt;
use std::sync::Arc;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{
    self, CreateError, CreateErrorKind, DeleteError, Entry, EntryError, EntryErrorKind,
    HistoryError, Operation, PurgeError, PutError, PutErrorKind, UpdateError, UpdateErrorKind,
};
use async_nats::HeaderMap;
use bytes::Bytes;
use opentelemetry::{Context as OtelContext, KeyValue};

use crate::error::error_type;
use crate::names::SpanName;
use crate::operation::{Op, Operation as Traced, Start, Target};
use crate::semconv;
use crate::telemetry::Telemetry;

use super::Context;

mod watch;

pub use watch::{Change, Watch};

const KV_OPERATION: &str = "KV-Operation";
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

/// Whether `key` is a valid KV key (`[-/_=.a-zA-Z0-9]+`, no leading or trailing
/// dot), the same rule async-nats and the server apply.
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && !key.ends_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'=' | b'.'))
}

impl Context {
    /// Traces an async-nats KV bucket handle.
    pub fn key_value(&self, store: kv::Store) -> Store {
        Store {
            inner: store,
            shared: Arc::new(KvShared {
                telemetry: self.telemetry().clone(),
                record_keys: false,
                js: self.clone(),
            }),
        }
    }
}

struct KvShared {
    telemetry: Telemetry,
    record_keys: bool,
    js: Context,
}

/// A traced KV bucket.
#[derive(Clone)]
pub struct Store {
    inner: kv::Store,
    shared: Arc<KvShared>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("bucket", &self.inner.name)
            .field("record_keys", &self.shared.record_keys)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The untraced async-nats store.
    pub fn inner(&self) -> &kv::Store {
        &self.inner
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.inner.name
    }

    /// Records keys in `messaging.nats.kv.key` (off by default: keys can carry ids
    /// or personal data, and many distinct values).
    pub fn with_key_attribute(self, enabled: bool) -> Self {
        let shared = KvShared {
            telemetry: self.shared.telemetry.clone(),
            record_keys: enabled,
            js: self.shared.js.clone(),
        };
        Self {
            inner: self.inner,
            shared: Arc::new(shared),
        }
    }

    /// Starts `op` on this bucket (the destination), recording the bucket and,
    /// if asked for, the key.
    fn start(&self, op: Op, key: Option<&str>) -> Traced {
        let name = SpanName::new(op.name, &self.inner.name);
        self.shared
            .telemetry
            .start(op, &Target::named(&name), Start::default(), |a| {
                self.push_key_attributes(a, key)
            })
    }

    /// The bucket and, if asked for, the key.
    fn push_key_attributes(&self, attributes: &mut Vec<KeyValue>, key: Option<&str>) {
        attributes.push(KeyValue::new(
            semconv::MESSAGING_NATS_KV_BUCKET,
            self.inner.name.clone(),
        ));
        if let Some(key) = key.filter(|_| self.shared.record_keys) {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_KV_KEY,
                key.to_owned(),
            ));
        }
    }

    /// A write of a value: PRODUCER when the writer's context goes with it.
    fn write_op(&self, name: &'static str) -> Op {
        if self.can_write_headers() {
            Op::send(name)
        } else {
            Op::send_without_context(name)
        }
    }

    fn finish<T, K>(
        op: Traced,
        result: &Result<T, async_nats::error::Error<K>>,
        revision: impl FnOnce(&T) -> Option<u64>,
    ) where
        K: fmt::Debug + fmt::Display + Clone + PartialEq,
    {
        if let Ok(value) = result {
            if let Some(revision) = revision(value) {
                op.record(|a| {
                    a.push(KeyValue::new(
                        semconv::MESSAGING_NATS_KV_REVISION,
                        i64::try_from(revision).unwrap_or(i64::MAX),
                    ))
                });
            }
        }
        op.finish(result, |err| error_type(&err.kind()));
    }

    /// The subject a key's values are published to.
    fn subject(&self, key: &str) -> String {
        format!(
            "{}{key}",
            self.inner.put_prefix.as_ref().unwrap_or(&self.inner.prefix)
        )
    }

    /// Publishes `value` for `key` with the current (operation span) context in the
    /// headers, optionally expecting `revision` as the key's last revision.
    async fn write(
        &self,
        cx: Option<&OtelContext>,
        key: &str,
        value: Bytes,
        expected_revision: Option<u64>,
    ) -> Result<u64, async_nats::jetstream::context::PublishError> {
        let mut headers = HeaderMap::new();
        if let Some(revision) = expected_revision {
            headers.insert(
                EXPECTED_LAST_SUBJECT_SEQUENCE,
                revision.to_string().as_str(),
            );
        }
        let inst = self.shared.telemetry.inst();
        let from = cx.cloned().or_else(|| inst.ambient_context());
        if let Some(from) = from {
            inst.inject(&from, &mut headers);
        }
        let ack = self
            .shared
            .js
            .inner()
            .publish_with_headers(self.subject(key), headers, value)
            .await?
            .await?;
        Ok(ack.sequence)
    }

    /// Whether writes can carry headers here; with a JetStream API prefix (domains)
    /// the subject is only known to async-nats, so writes go through it untraced.
    fn can_write_headers(&self) -> bool {
        !self.inner.use_jetstream_prefix
    }

    /// Stores `value` under `key`; returns the new revision. The writer's trace
    /// context is stored with it.
    pub async fn put<T: AsRef<str>>(&self, key: T, value: Bytes) -> Result<u64, PutError> {
        let key = key.as_ref();
        let op = self.start(self.write_op(semconv::kv::PUT), Some(key));
        let result = if !is_valid_key(key) {
            Err(PutError::new(PutErrorKind::InvalidKey))
        } else if !self.can_write_headers() {
            self.inner.put(key, value).await
        } else {
            self.write(op.context(), key, value, None)
                .await
                .map_err(|e| PutError::with_source(PutErrorKind::Ack, e))
        };
        Self::finish(op, &result, |r| Some(*r));
        result
    }

    /// Stores `value` only if `key` does not exist (or was deleted or purged).
    pub async fn create<T: AsRef<str>>(&self, key: T, value: Bytes) -> Result<u64, CreateError> {
        let key = key.as_ref();
        let op = self.start(self.write_op(semconv::kv::CREATE), Some(key));
        let result = self.create_inner(op.context(), key, value).await;
        Self::finish(op, &result, |r| Some(*r));
        result
    }

    async fn create_inner(
        &self,
        cx: Option<&OtelContext>,
        key: &str,
        value: Bytes,
    ) -> Result<u64, CreateError> {
        if !is_valid_key(key) {
            return Err(CreateError::new(CreateErrorKind::InvalidKey));
        }
        if !self.can_write_headers() {
            return self.inner.create(key, value).await;
        }
        let first = match self.write(cx, key, value.clone(), Some(0)).await {
            Ok(revision) => return Ok(revision),
            Err(err) => err,
        };
        if first.kind() != PublishErrorKind::WrongLastSequence {
            return Err(CreateError::with_source(CreateErrorKind::Publish, first));
        }
        // The key has history: creating is allowed over a delete or purge marker.
        match self.inner.entry(key).await {
            Ok(Some(Entry {
                operation: Operation::Delete | Operation::Purge,
                revision,
                ..
            })) => self
                .write(cx, key, value, Some(revision))
                .await
                .map_err(|e| match e.kind() {
                    PublishErrorKind::WrongLastSequence => {
                        CreateError::new(CreateErrorKind::AlreadyExists)
                    }
                    _ => CreateError::with_source(CreateErrorKind::Publish, e),
                }),
            Ok(Some(_)) => Err(CreateError::new(CreateErrorKind::AlreadyExists)),
            Ok(None) => Err(CreateError::with_source(CreateErrorKind::Publish, first)),
            Err(e) => Err(CreateError::with_source(CreateErrorKind::Other, e)),
        }
    }

    /// Stores `value` only if the key's last revision is `revision`
    /// (compare-and-set). A stale revision fails with `WrongLastRevision` and
    /// leaves the stored value unchanged.
    pub async fn update<T: AsRef<str>>(
        &self,
        key: T,
        value: Bytes,
        revision: u64,
    ) -> Result<u64, UpdateError> {
        let key = key.as_ref();
        let op = self.start(self.write_op(semconv::kv::UPDATE), Some(key));
        let result = if !is_valid_key(key) {
            Err(UpdateError::new(UpdateErrorKind::InvalidKey))
        } else if !self.can_write_headers() {
            self.inner.update(key, value, revision).await
        } else {
            self.write(op.context(), key, value, Some(revision))
                .await
                .map_err(|e| match e.kind() {
                    PublishErrorKind::WrongLastSequence => {
                        UpdateError::with_source(UpdateErrorKind::WrongLastRevision, e)
                    }
                    PublishErrorKind::TimedOut => {
                        UpdateError::with_source(UpdateErrorKind::TimedOut, e)
                    }
                    _ => UpdateError::with_source(UpdateErrorKind::Other, e),
                })
        };
        Self::finish(op, &result, |r| Some(*r));
        result
    }

    /// The current value of `key`.
    pub async fn get<T: AsRef<str>>(&self, key: T) -> Result<Option<Bytes>, EntryError> {
        let key = key.as_ref();
        let op = self.start(Op::receive(semconv::kv::GET), Some(key));
        let result = self.inner.entry(key).await;
        Self::finish(op, &result, |e| e.as_ref().map(|e| e.revision));
        result.map(|entry| match entry {
            Some(Entry {
                operation: Operation::Put,
                value,
                ..
            }) => Some(value),
            _ => None,
        })
    }

    /// The latest entry of `key` (including delete and purge markers).
    pub async fn entry<T: AsRef<str>>(&self, key: T) -> Result<Option<Entry>, EntryError> {
        let key = key.as_ref();
        let op = self.start(Op::receive(semconv::kv::ENTRY), Some(key));
        let result = self.inner.entry(key).await;
        Self::finish(op, &result, |e| e.as_ref().map(|e| e.revision));
        result
    }

    /// The latest entry of `key` with the trace context of whoever wrote it (an
    /// empty context if the writer did not trace).
    pub async fn entry_with_context<T: AsRef<str>>(
        &self,
        key: T,
    ) -> Result<Option<(Entry, OtelContext)>, EntryError> {
        let key = key.as_ref();
        let op = self.start(Op::receive(semconv::kv::ENTRY), Some(key));
        let result = self.entry_with_context_inner(key).await;
        Self::finish(op, &result, |e| e.as_ref().map(|(e, _)| e.revision));
        result
    }

    async fn entry_with_context_inner(
        &self,
        key: &str,
    ) -> Result<Option<(Entry, OtelContext)>, EntryError> {
        if !is_valid_key(key) {
            return Err(EntryError::new(EntryErrorKind::InvalidKey));
        }
        let subject = format!("{}{key}", self.inner.prefix);
        let stream = &self.inner.stream;
        let message = if stream.cached_info().config.allow_direct {
            match stream.direct_get_last_for_subject(subject.as_str()).await {
                Ok(message) => message,
                Err(e)
                    if e.kind() == async_nats::jetstream::stream::DirectGetErrorKind::NotFound =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(EntryError::with_source(EntryErrorKind::Other, e)),
            }
        } else {
            match stream.get_last_raw_message_by_subject(subject.as_str()).await {
                Ok(message) => message,
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(EntryError::with_source(EntryErrorKind::Other, e)),
            }
        };
        let operation = operation_of(Some(&message.headers));
        let writer = self.shared.telemetry.inst().extract(&message.headers);
        let entry = Entry {
            bucket: self.inner.name.clone(),
            key: key.to_owned(),
            value: message.payload,
            revision: message.sequence,
            delta: 0,
            created: message.time,
            operation,
            seen_current: false,
        };
        Ok(Some((entry, writer)))
    }

    /// Deletes `key` (a delete marker; history is kept).
    pub async fn delete<T: AsRef<str>>(&self, key: T) -> Result<(), DeleteError> {
        let key = key.as_ref();
        let op = self.start(Op::send_without_context(semconv::kv::DELETE), Some(key));
        let result = self.inner.delete(key).await;
        Self::finish(op, &result, |_| None);
        result
    }

    /// Purges `key` (a purge marker; history is removed).
    pub async fn purge<T: AsRef<str>>(&self, key: T) -> Result<(), PurgeError> {
        let key = key.as_ref();
        let op = self.start(Op::send_without_context(semconv::kv::PURGE), Some(key));
        let result = self.inner.purge(key).await;
        Self::finish(op, &result, |_| None);
        result
    }

    /// The bucket's keys (the span covers starting the listing).
    pub async fn keys(&self) -> Result<kv::Keys, HistoryError> {
        let op = self.start(Op::receive(semconv::kv::KEYS), None);
        let result = self.inner.keys().await;
        Self::finish(op, &result, |_| None);
        result
    }

    /// The history of `key` (the span covers starting the listing).
    pub async fn history<T: AsRef<str>>(&self, key: T) -> Result<kv::History, HistoryError> {
        let key = key.as_ref();
        let op = self.start(Op::receive(semconv::kv::HISTORY), Some(key));
        let result = self.inner.history(key).await;
        Self::finish(op, &result, |_| None);
        result
    }
}

/// The operation a stored KV message records (a value, a delete or a purge).
fn operation_of(headers: Option<&HeaderMap>) -> Operation {
    let Some(headers) = headers else {
        return Operation::Put;
    };
    if let Some(op) = headers.get(KV_OPERATION) {
        return match op.as_str() {
            "DEL" => Operation::Delete,
            "PURGE" => Operation::Purge,
            _ => Operation::Put,
        };
    }
    match headers
        .get(async_nats::header::NATS_MARKER_REASON)
        .map(|v| v.as_str())
    {
        Some("MaxAge" | "Purge") => Operation::Purge,
        Some("Remove") => Operation::Delete,
        _ => Operation::Put,
    }
}
