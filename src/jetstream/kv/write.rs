//! KV writes: values (`put`, `create`, `update`, which store the writer's trace
//! context) and markers (`delete`, `purge`), each in a `{operation} {bucket}` span.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{
    self, CreateError, CreateErrorKind, DeleteError, Entry, Operation, PurgeError, PutError,
    PutErrorKind, UpdateError, UpdateErrorKind,
};
use bytes::Bytes;
use opentelemetry::Context as OtelContext;

use super::{is_valid_key, Store};
use crate::operation::Op;
use crate::semconv;

impl Store {
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
            self.write(op.context(), key, value, None, None)
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
        let result = self.create_inner(op.context(), key, value, None).await;
        Self::finish(op, &result, |r| Some(*r));
        result
    }

    /// Like [`create`](Self::create), the value expiring after `ttl` (the bucket
    /// must allow per-message TTLs).
    pub async fn create_with_ttl<T: AsRef<str>>(
        &self,
        key: T,
        value: Bytes,
        ttl: Duration,
    ) -> Result<u64, CreateError> {
        let key = key.as_ref();
        let op = self.start(self.write_op(semconv::kv::CREATE), Some(key));
        let result = self.create_inner(op.context(), key, value, Some(ttl)).await;
        Self::finish(op, &result, |r| Some(*r));
        result
    }

    async fn create_inner(
        &self,
        cx: Option<&OtelContext>,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<u64, CreateError> {
        if !is_valid_key(key) {
            return Err(CreateError::new(CreateErrorKind::InvalidKey));
        }
        if !self.can_write_headers() {
            return match ttl {
                Some(ttl) => self.inner.create_with_ttl(key, value, ttl).await,
                None => self.inner.create(key, value).await,
            };
        }
        let first = match self.write(cx, key, value.clone(), Some(0), ttl).await {
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
                .write(cx, key, value, Some(revision), ttl)
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
            self.write(op.context(), key, value, Some(revision), None)
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

    /// Deletes `key` (a delete marker; history is kept).
    pub async fn delete<T: AsRef<str>>(&self, key: T) -> Result<(), DeleteError> {
        let key = key.as_ref();
        let op = self.start(Op::send_without_context(semconv::kv::DELETE), Some(key));
        let result = self.inner.delete(key).await;
        Self::finish(op, &result, |_| None);
        result
    }

    /// Deletes `key` only if its last revision is `revison` (when given).
    pub async fn delete_expect_revision<T: AsRef<str>>(
        &self,
        key: T,
        revison: Option<u64>,
    ) -> Result<(), DeleteError> {
        let key = key.as_ref();
        let op = self.start(Op::send_without_context(semconv::kv::DELETE), Some(key));
        let result = self.inner.delete_expect_revision(key, revison).await;
        Self::finish(op, &result, |_| None);
        result
    }

    /// Purges `key` (a purge marker; history is removed).
    pub async fn purge<T: AsRef<str>>(&self, key: T) -> Result<(), PurgeError> {
        self.purge_traced(key.as_ref(), |store, key| store.purge(key))
            .await
    }

    /// Purges `key`, the purge marker expiring after `ttl`.
    pub async fn purge_with_ttl<T: AsRef<str>>(
        &self,
        key: T,
        ttl: Duration,
    ) -> Result<(), PurgeError> {
        self.purge_traced(key.as_ref(), |store, key| store.purge_with_ttl(key, ttl))
            .await
    }

    /// Purges `key` only if its last revision is `revision` (when given).
    pub async fn purge_expect_revision<T: AsRef<str>>(
        &self,
        key: T,
        revision: Option<u64>,
    ) -> Result<(), PurgeError> {
        self.purge_traced(key.as_ref(), |store, key| {
            store.purge_expect_revision(key, revision)
        })
        .await
    }

    /// Purges `key` only if its last revision is `revision`, the purge marker
    /// expiring after `ttl`.
    pub async fn purge_expect_revision_with_ttl<T: AsRef<str>>(
        &self,
        key: T,
        revision: u64,
        ttl: Duration,
    ) -> Result<(), PurgeError> {
        self.purge_traced(key.as_ref(), |store, key| {
            store.purge_expect_revision_with_ttl(key, revision, ttl)
        })
        .await
    }

    /// Runs one of async-nats's purges inside a `purge {bucket}` span.
    async fn purge_traced<'a, F>(
        &'a self,
        key: &'a str,
        purge: impl FnOnce(&'a kv::Store, &'a str) -> F,
    ) -> Result<(), PurgeError>
    where
        F: Future<Output = Result<(), PurgeError>>,
    {
        let op = self.start(Op::send_without_context(semconv::kv::PURGE), Some(key));
        let result = purge(&self.inner, key).await;
        Self::finish(op, &result, |_| None);
        result
    }
}
