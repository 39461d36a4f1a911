//! KV reads, each a `receive` CLIENT span `{operation} {bucket}`; the bucket's
//! status.

use async_nats::jetstream::kv::{
    self, Entry, EntryError, EntryErrorKind, HistoryError, Operation, StatusError,
};
use bytes::Bytes;
use opentelemetry::Context as OtelContext;

use super::{is_valid_key, operation_of, Store};
use crate::operation::Op;
use crate::semconv;

impl Store {
    /// The current value of `key`.
    pub async fn get<T: Into<String>>(&self, key: T) -> Result<Option<Bytes>, EntryError> {
        let key: String = key.into();
        let op = self.start(Op::receive(semconv::kv::GET), Some(&key));
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
    pub async fn entry<T: Into<String>>(&self, key: T) -> Result<Option<Entry>, EntryError> {
        let key: String = key.into();
        let op = self.start(Op::receive(semconv::kv::ENTRY), Some(&key));
        let result = self.inner.entry(key).await;
        Self::finish(op, &result, |e| e.as_ref().map(|e| e.revision));
        result
    }

    /// The entry of `key` at `revision`, if that revision is one of `key`'s.
    pub async fn entry_for_revision<T: Into<String>>(
        &self,
        key: T,
        revision: u64,
    ) -> Result<Option<Entry>, EntryError> {
        let key: String = key.into();
        let op = self.start(Op::receive(semconv::kv::ENTRY), Some(&key));
        let result = self.inner.entry_for_revision(key, revision).await;
        Self::finish(op, &result, |e| e.as_ref().map(|e| e.revision));
        result
    }

    /// The bucket's status (configuration and size), as async-nats reads it;
    /// untraced, like other management calls.
    pub async fn status(&self) -> Result<kv::bucket::Status, StatusError> {
        self.inner.status().await
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
