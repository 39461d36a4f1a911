//! Object stores, traced, with the writer's trace context in each object's
//! headers.
//!
//! `put` streams from any `AsyncRead` and records size, chunk count and digest;
//! the writer's context is stored in the object's headers (a `send` PRODUCER
//! span). `get` streams too: its `receive` span stays open while you read, links
//! to the writer, and records whether the digest checked out at the end. `info`
//! and `list` are `receive` spans, `delete` a `send` CLIENT span, and `watch`
//! yields each change as an [`ObjectChange`] with a `process {bucket}` span,
//! parented and linked to its writer as
//! [`ProcessParenting`](crate::ProcessParenting) says. The destination is the
//! bucket. Object names can carry ids or personal data, so
//! `messaging.nats.object.name` is only recorded after
//! [`ObjectStore::with_name_attribute`]`(true)`.
//!
//! This module is async-nats's `jetstream::object_store` too: everything of theirs
//! is re-exported here (`Config`, `ObjectInfo`, `ObjectMetadata`, the error types
//! …), and [`ObjectStore`], [`Object`] and [`Watch`] replace theirs under the same
//! names, with the same methods.

pub use async_nats::jetstream::object_store::*;

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use async_nats::jetstream::object_store;
use futures_util::Stream;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context as OtelContext, KeyValue};
use tokio::io::{AsyncRead, ReadBuf};

use crate::error::error_type;
use crate::names::SpanName;
use crate::operation::{Op, Operation, Processing, Start, Target};
use crate::semconv;
use crate::telemetry::Telemetry;

use super::Context;

/// One object change with its `process {bucket}` span; dereferences to the
/// [`ObjectInfo`].
pub type ObjectChange = crate::Delivery<ObjectInfo>;

impl Context {
    /// Opens the object store `bucket_name`, traced.
    pub async fn get_object_store<T: AsRef<str>>(
        &self,
        bucket_name: T,
    ) -> Result<ObjectStore, async_nats::jetstream::context::ObjectStoreError> {
        let bucket = bucket_name.as_ref();
        let store = self.inner().get_object_store(bucket).await?;
        Ok(self.object_store(bucket, store))
    }

    /// Creates the object store described by `config`, traced.
    pub async fn create_object_store(
        &self,
        config: object_store::Config,
    ) -> Result<ObjectStore, async_nats::jetstream::context::CreateObjectStoreError> {
        let bucket = config.bucket.clone();
        let store = self.inner().create_object_store(config).await?;
        Ok(self.object_store(&bucket, store))
    }

    /// Traces an async-nats object store handle for bucket `bucket`.
    pub fn object_store(&self, bucket: &str, store: object_store::ObjectStore) -> ObjectStore {
        ObjectStore {
            bucket: bucket.to_owned(),
            inner: store,
            shared: Arc::new(ObjectShared {
                telemetry: self.telemetry().clone(),
                record_names: false,
            }),
        }
    }
}

struct ObjectShared {
    telemetry: Telemetry,
    record_names: bool,
}

/// A traced object store bucket.
#[derive(Clone)]
pub struct ObjectStore {
    inner: object_store::ObjectStore,
    bucket: String,
    shared: Arc<ObjectShared>,
}

impl fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStore")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

/// Pushes an object's size, chunk count and digest.
fn push_info_attributes(attributes: &mut Vec<KeyValue>, info: &ObjectInfo) {
    attributes.push(KeyValue::new(
        semconv::MESSAGING_NATS_OBJECT_SIZE,
        i64::try_from(info.size).unwrap_or(i64::MAX),
    ));
    attributes.push(KeyValue::new(
        semconv::MESSAGING_NATS_OBJECT_CHUNKS,
        i64::try_from(info.chunks).unwrap_or(i64::MAX),
    ));
    if let Some(digest) = &info.digest {
        attributes.push(KeyValue::new(
            semconv::MESSAGING_NATS_OBJECT_DIGEST,
            digest.clone(),
        ));
    }
}

impl ObjectStore {
    /// The untraced async-nats store.
    pub fn inner(&self) -> &object_store::ObjectStore {
        &self.inner
    }

    /// Seals the bucket: no more writes or deletes.
    pub async fn seal(&mut self) -> Result<(), object_store::SealError> {
        self.inner.seal().await
    }

    delegate_async! {
        /// Renames an object or changes its description, headers or metadata.
        fn update_metadata[A: AsRef<str>](&self, object: A, metadata: object_store::UpdateMetadata)
            -> Result<ObjectInfo, object_store::UpdateMetadataError>;
        /// Adds `name`, a link to `object`.
        fn add_link[T, O](&self, name: T, object: O) -> Result<ObjectInfo, object_store::AddLinkError>
            where [T: ToString, O: object_store::AsObjectInfo];
        /// Adds `name`, a link to the object store `bucket`.
        fn add_bucket_link[T: ToString, U: ToString](&self, name: T, bucket: U)
            -> Result<ObjectInfo, object_store::AddLinkError>;
    }

    /// Records object names in `messaging.nats.object.name` (off by default).
    pub fn with_name_attribute(self, enabled: bool) -> Self {
        let shared = ObjectShared {
            telemetry: self.shared.telemetry.clone(),
            record_names: enabled,
        };
        Self {
            inner: self.inner,
            bucket: self.bucket,
            shared: Arc::new(shared),
        }
    }

    /// Pushes the bucket and, if asked for, the object's name.
    fn push_name_attributes(&self, attributes: &mut Vec<KeyValue>, name: Option<&str>) {
        attributes.push(KeyValue::new(
            semconv::MESSAGING_NATS_OBJECT_BUCKET,
            self.bucket.clone(),
        ));
        if let Some(name) = name.filter(|_| self.shared.record_names) {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_OBJECT_NAME,
                name.to_owned(),
            ));
        }
    }

    /// Starts `op` on this bucket (the destination).
    fn start(&self, op: Op, name: Option<&str>) -> Operation {
        let span_name = SpanName::new(op.name, &self.bucket);
        let start = Start::default().with_room(7);
        self.shared
            .telemetry
            .start(op, &Target::named(&span_name), start, |a| {
                self.push_name_attributes(a, name)
            })
    }

    fn finish<T, K>(op: Operation, result: &Result<T, async_nats::error::Error<K>>)
    where
        K: fmt::Debug + fmt::Display + Clone + PartialEq,
    {
        op.finish(result, |err| error_type(&err.kind()));
    }

    /// Streams `data` into the object described by `meta`, chunk by chunk (memory
    /// stays bounded by the chunk size). The writer's trace context is stored in the
    /// object's headers. An empty name fails before anything is uploaded.
    pub async fn put<T>(
        &self,
        meta: T,
        data: &mut (impl AsyncRead + Unpin),
    ) -> Result<ObjectInfo, PutError>
    where
        ObjectMetadata: From<T>,
    {
        let mut meta: ObjectMetadata = meta.into();
        let op = self.start(Op::send(semconv::object::PUT), Some(&meta.name));
        if meta.name.is_empty() {
            let result = Err(PutError::with_source(
                PutErrorKind::InvalidName,
                "object name is empty",
            ));
            Self::finish(op, &result);
            return result;
        }
        let inst = self.shared.telemetry.inst();
        let from = op.context().cloned().or_else(|| inst.ambient_context());
        if let Some(from) = from {
            let headers = meta.headers.get_or_insert_with(async_nats::HeaderMap::new);
            inst.inject(&from, headers);
        }
        let result = self.inner.put::<ObjectMetadata>(meta, data).await;
        if let Ok(info) = &result {
            op.record(|a| push_info_attributes(a, info));
        }
        Self::finish(op, &result);
        result
    }

    /// Opens `name` for streaming reads. The `get {bucket}` span links to the
    /// writer and stays open until the object is read to the end (recording
    /// whether the digest matched) or dropped.
    pub async fn get<T: AsRef<str> + Send>(&self, name: T) -> Result<Object, GetError> {
        let name = name.as_ref();
        let op = self.start(Op::receive(semconv::object::GET), Some(name));
        if name.is_empty() {
            let result = Err(GetError::with_source(
                GetErrorKind::InvalidName,
                "object name is empty",
            ));
            Self::finish(op, &result);
            return result.map(|never: Object| never);
        }
        match self.inner.get(name).await {
            Ok(object) => {
                let producer = object
                    .info()
                    .headers
                    .as_ref()
                    .map(|h| self.shared.telemetry.inst().extract(h))
                    .unwrap_or_default();
                op.record(|a| push_info_attributes(a, object.info()));
                op.link(producer.span().span_context().clone());
                Ok(Object {
                    inner: object,
                    context: op.context().cloned().unwrap_or_default(),
                    producer,
                    op: Some(op),
                })
            }
            Err(err) => {
                let result = Err(err);
                Self::finish(op, &result);
                result
            }
        }
    }

    /// The object's info.
    pub async fn info<T: AsRef<str>>(&self, name: T) -> Result<ObjectInfo, InfoError> {
        let name = name.as_ref();
        let op = self.start(Op::receive(semconv::object::INFO), Some(name));
        let result = self.inner.info(name).await;
        if let Ok(info) = &result {
            op.record(|a| push_info_attributes(a, info));
        }
        Self::finish(op, &result);
        result
    }

    /// Deletes the object.
    pub async fn delete<T: AsRef<str>>(&self, name: T) -> Result<(), DeleteError> {
        let name = name.as_ref();
        let op = self.start(
            Op::send_without_context(semconv::object::DELETE),
            Some(name),
        );
        let result = self.inner.delete(name).await;
        Self::finish(op, &result);
        result
    }

    /// Lists the objects (the span covers starting the listing).
    pub async fn list(&self) -> Result<object_store::List, ListError> {
        let op = self.start(Op::receive(semconv::object::LIST), None);
        let result = self.inner.list().await;
        Self::finish(op, &result);
        result
    }

    /// Changes from now on, each an [`ObjectChange`] with a `process {bucket}` span.
    pub async fn watch(&self) -> Result<Watch, WatchError> {
        self.watch_traced(false).await
    }

    /// The current info of every object, then changes as they happen, each an
    /// [`ObjectChange`] with a `process {bucket}` span.
    pub async fn watch_with_history(&self) -> Result<Watch, WatchError> {
        self.watch_traced(true).await
    }

    async fn watch_traced(&self, history: bool) -> Result<Watch, WatchError> {
        let op = self.start(Op::call(semconv::object::WATCH), None);
        let result = if history {
            self.inner.watch_with_history().await
        } else {
            self.inner.watch().await
        };
        Self::finish(op, &result);
        let inner = result?;
        Ok(Watch {
            inner,
            store: self.clone(),
            processing: self.shared.telemetry.processing(&self.bucket, None),
        })
    }
}

/// A streaming read of one object; implements [`AsyncRead`].
pub struct Object {
    inner: object_store::Object,
    context: OtelContext,
    producer: OtelContext,
    /// The `get` operation, until the object is read to its end or fails.
    op: Option<Operation>,
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Object")
            .field("name", &self.inner.info().name)
            .finish_non_exhaustive()
    }
}

impl Object {
    /// The object's info.
    pub fn info(&self) -> &ObjectInfo {
        self.inner.info()
    }

    /// The writer's trace context (empty if the writer did not trace).
    pub fn producer_context(&self) -> &OtelContext {
        &self.producer
    }

    /// The `get` span's context.
    pub fn context(&self) -> &OtelContext {
        &self.context
    }
}

/// An object being read is linkable like async-nats's (`add_link(name, &object)`).
impl AsObjectInfo for &Object {
    fn as_info(&self) -> &ObjectInfo {
        self.inner.info()
    }
}

impl AsyncRead for Object {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {
                // End of object: async-nats has checked the digest by now.
                if let Some(op) = self.op.take() {
                    op.record(|a| {
                        a.push(KeyValue::new(
                            semconv::MESSAGING_NATS_OBJECT_DIGEST_OK,
                            true,
                        ))
                    });
                    op.succeed();
                }
            }
            Poll::Ready(Err(err)) => {
                if let Some(op) = self.op.take() {
                    let digest_failed = err.kind() == io::ErrorKind::InvalidData;
                    if digest_failed {
                        op.record(|a| {
                            a.push(KeyValue::new(
                                semconv::MESSAGING_NATS_OBJECT_DIGEST_OK,
                                false,
                            ))
                        });
                    }
                    let error_type = if digest_failed {
                        semconv::error_type::DIGEST_MISMATCH
                    } else {
                        semconv::error_type::READ
                    };
                    op.fail(error_type, err);
                }
            }
            _ => {}
        }
        polled
    }
}

/// Object changes, each an [`ObjectChange`] with a `process {bucket}` span.
pub struct Watch {
    inner: object_store::Watch,
    store: ObjectStore,
    processing: Processing,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("bucket", &self.store.bucket)
            .finish_non_exhaustive()
    }
}

impl Watch {
    fn change(&self, info: ObjectInfo) -> ObjectChange {
        let store = &self.store;
        let telemetry = &store.shared.telemetry;
        let published = info.modified.map(|time| time.unix_timestamp_nanos());
        let span = telemetry.start_process(
            &self.processing,
            None,
            info.headers.as_ref(),
            None,
            crate::metrics::age_if_metered(telemetry.inst().instruments(), published),
            7,
            |a| {
                store.push_name_attributes(a, Some(&info.name));
                push_info_attributes(a, &info);
            },
        );
        crate::Delivery::new(info, span)
    }
}

impl Stream for Watch {
    type Item = Result<ObjectChange, WatcherError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(info))) => Poll::Ready(Some(Ok(self.change(info)))),
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
