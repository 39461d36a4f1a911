//! Object stores, traced, with the writer's trace context in each object's
//! headers.
//!
//! `put` streams from any `AsyncRead` and records size, chunk count and digest;
//! the writer's context is stored in the object's headers. `get` streams too: its
//! span stays open while you read, links to the writer, and records whether the
//! digest checked out at the end. `watch` yields each change with a `process`
//! span linked to its writer. Object names can carry ids or personal data, so
//! `messaging.nats.object.name` is only recorded after
//! [`ObjectStore::with_name_attribute`]`(true)`.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use async_nats::jetstream::object_store::{
    self, DeleteError, GetError, GetErrorKind, InfoError, ListError, ObjectInfo, ObjectMetadata,
    PutError, PutErrorKind, WatchError, WatcherError,
};
use futures_util::Stream;
use opentelemetry::trace::{Link, SpanBuilder, SpanKind, Status, TraceContextExt};
use opentelemetry::{Context as OtelContext, KeyValue};
use tokio::io::{AsyncRead, ReadBuf};

use crate::error::error_type;
use crate::instrumentation::{record_failure, Instrumentation};
use crate::metrics::OpTimer;
use crate::semconv;
use crate::subscriber::SpanEnd;

use super::Context;

impl Context {
    /// Opens the object store `bucket`, traced.
    pub async fn get_object_store(
        &self,
        bucket: &str,
    ) -> Result<ObjectStore, async_nats::jetstream::context::ObjectStoreError> {
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
                inst: self.instrumentation().clone(),
                common: self.common.clone(),
                metric_common: self.metric_common.clone(),
                record_names: false,
            }),
        }
    }
}

struct ObjectShared {
    inst: Instrumentation,
    common: Arc<[KeyValue]>,
    metric_common: Arc<[KeyValue]>,
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

impl ObjectStore {
    /// The untraced async-nats store.
    pub fn inner(&self) -> &object_store::ObjectStore {
        &self.inner
    }

    /// Records object names in `messaging.nats.object.name` (off by default).
    pub fn with_name_attribute(self, enabled: bool) -> Self {
        let shared = ObjectShared {
            inst: self.shared.inst.clone(),
            common: self.shared.common.clone(),
            metric_common: self.shared.metric_common.clone(),
            record_names: enabled,
        };
        Self {
            inner: self.inner,
            bucket: self.bucket,
            shared: Arc::new(shared),
        }
    }

    fn start(
        &self,
        operation: &'static str,
        name: Option<&str>,
        kind: SpanKind,
        parent: &OtelContext,
        links: Vec<Link>,
    ) -> Option<OtelContext> {
        if !self.shared.inst.tracing_enabled() {
            return None;
        }
        let mut attributes = Vec::with_capacity(self.shared.common.len() + 4);
        attributes.extend_from_slice(&self.shared.common);
        attributes.push(KeyValue::new(semconv::MESSAGING_OPERATION_NAME, operation));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_NATS_OBJECT_BUCKET,
            self.bucket.clone(),
        ));
        if let (true, Some(name)) = (self.shared.record_names, name) {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_OBJECT_NAME,
                name.to_owned(),
            ));
        }
        let builder =
            SpanBuilder::from_name(crate::names::SpanName::new(operation, &self.bucket).name())
                .with_kind(kind)
                .with_attributes(attributes)
                .with_links(links);
        Some(self.shared.inst.start_span(builder, parent))
    }

    fn timer(&self, operation: &'static str) -> Option<OpTimer> {
        OpTimer::start(self.shared.inst.instruments(), || {
            let operation_type = match operation {
                semconv::object::PUT | semconv::object::DELETE => semconv::operation_type::SEND,
                _ => semconv::operation_type::RECEIVE,
            };
            crate::metrics::attributes(
                &self.shared.metric_common,
                operation,
                operation_type,
                self.bucket.clone(),
                None,
            )
        })
    }

    fn finish_timer<T, K>(timer: Option<OpTimer>, result: &Result<T, async_nats::error::Error<K>>)
    where
        K: fmt::Debug + fmt::Display + Clone + PartialEq,
    {
        if let Some(timer) = timer {
            let error = result.as_ref().err().map(|e| error_type(&e.kind()));
            timer.finish(error.as_deref());
        }
    }

    fn record_info(cx: &OtelContext, info: &ObjectInfo) {
        let span = cx.span();
        if !span.is_recording() {
            return;
        }
        span.set_attribute(KeyValue::new(
            semconv::MESSAGING_NATS_OBJECT_SIZE,
            i64::try_from(info.size).unwrap_or(i64::MAX),
        ));
        span.set_attribute(KeyValue::new(
            semconv::MESSAGING_NATS_OBJECT_CHUNKS,
            i64::try_from(info.chunks).unwrap_or(i64::MAX),
        ));
        if let Some(digest) = &info.digest {
            span.set_attribute(KeyValue::new(
                semconv::MESSAGING_NATS_OBJECT_DIGEST,
                digest.clone(),
            ));
        }
    }

    fn end<T, K>(cx: Option<OtelContext>, result: &Result<T, async_nats::error::Error<K>>)
    where
        K: fmt::Debug + fmt::Display + Clone + PartialEq,
    {
        let Some(cx) = cx else { return };
        if let Err(err) = result {
            record_failure(&cx, &error_type(&err.kind()), err.to_string());
        }
        cx.span().end();
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
        let timer = self.timer(semconv::object::PUT);
        let cx = self.start(
            semconv::object::PUT,
            Some(&meta.name),
            SpanKind::Client,
            &OtelContext::current(),
            Vec::new(),
        );
        if meta.name.is_empty() {
            let result = Err(PutError::with_source(
                PutErrorKind::InvalidName,
                "object name is empty",
            ));
            Self::finish_timer(timer, &result);
            Self::end(cx, &result);
            return result;
        }
        let from = cx.clone().or_else(|| self.shared.inst.ambient_context());
        if let Some(from) = from {
            let headers = meta.headers.get_or_insert_with(async_nats::HeaderMap::new);
            self.shared.inst.inject(&from, headers);
        }
        let result = self.inner.put::<ObjectMetadata>(meta, data).await;
        if let (Some(cx), Ok(info)) = (&cx, &result) {
            Self::record_info(cx, info);
        }
        Self::finish_timer(timer, &result);
        Self::end(cx, &result);
        result
    }

    /// Opens `name` for streaming reads. The `get {bucket}` span links to the
    /// writer and stays open until the object is read to the end (recording
    /// whether the digest matched) or dropped.
    pub async fn get<T: AsRef<str> + Send>(&self, name: T) -> Result<Object, GetError> {
        let name = name.as_ref();
        let timer = self.timer(semconv::object::GET);
        let cx = self.start(
            semconv::object::GET,
            Some(name),
            SpanKind::Client,
            &OtelContext::current(),
            Vec::new(),
        );
        if name.is_empty() {
            let result = Err(GetError::with_source(
                GetErrorKind::InvalidName,
                "object name is empty",
            ));
            Self::finish_timer(timer, &result);
            Self::end(cx, &result);
            return result.map(|never: Object| never);
        }
        match self.inner.get(name).await {
            Ok(object) => {
                let writer = object
                    .info()
                    .headers
                    .as_ref()
                    .map(|h| self.shared.inst.extract(h))
                    .unwrap_or_default();
                if let Some(cx) = &cx {
                    Self::record_info(cx, object.info());
                    let writer_span = writer.span().span_context().clone();
                    if writer_span.is_valid() {
                        cx.span().add_link(writer_span, Vec::new());
                    }
                }
                Ok(Object {
                    inner: object,
                    writer,
                    span: SpanEnd {
                        owns_span: cx.is_some(),
                        context: cx.unwrap_or_default(),
                    },
                    finished: false,
                    timer,
                })
            }
            Err(err) => {
                let result = Err(err);
                Self::finish_timer(timer, &result);
                Self::end(cx, &result);
                result
            }
        }
    }

    /// The object's info.
    pub async fn info<T: AsRef<str>>(&self, name: T) -> Result<ObjectInfo, InfoError> {
        let name = name.as_ref();
        let cx = self.start(
            semconv::object::INFO,
            Some(name),
            SpanKind::Client,
            &OtelContext::current(),
            Vec::new(),
        );
        let timer = self.timer(semconv::object::INFO);
        let result = self.inner.info(name).await;
        Self::finish_timer(timer, &result);
        if let (Some(cx), Ok(info)) = (&cx, &result) {
            Self::record_info(cx, info);
        }
        Self::end(cx, &result);
        result
    }

    /// Deletes the object.
    pub async fn delete<T: AsRef<str>>(&self, name: T) -> Result<(), DeleteError> {
        let name = name.as_ref();
        let cx = self.start(
            semconv::object::DELETE,
            Some(name),
            SpanKind::Client,
            &OtelContext::current(),
            Vec::new(),
        );
        let timer = self.timer(semconv::object::DELETE);
        let result = self.inner.delete(name).await;
        Self::finish_timer(timer, &result);
        Self::end(cx, &result);
        result
    }

    /// Lists the objects (the span covers starting the listing).
    pub async fn list(&self) -> Result<object_store::List, ListError> {
        let cx = self.start(
            semconv::object::LIST,
            None,
            SpanKind::Client,
            &OtelContext::current(),
            Vec::new(),
        );
        let timer = self.timer(semconv::object::LIST);
        let result = self.inner.list().await;
        Self::finish_timer(timer, &result);
        Self::end(cx, &result);
        result
    }

    /// Changes from now on, each with a `process {bucket}` span linked to its
    /// writer.
    pub async fn watch(&self) -> Result<Watch, WatchError> {
        let cx = self.start(
            semconv::object::WATCH,
            None,
            SpanKind::Client,
            &OtelContext::current(),
            Vec::new(),
        );
        let timer = self.timer(semconv::object::WATCH);
        let result = self.inner.watch().await;
        Self::finish_timer(timer, &result);
        let watch = match result {
            Ok(inner) => Ok(Watch {
                inner,
                store: self.clone(),
            }),
            Err(err) => Err(err),
        };
        Self::end(cx, &watch);
        watch
    }
}

/// A streaming read of one object; implements [`AsyncRead`].
pub struct Object {
    inner: object_store::Object,
    writer: OtelContext,
    span: SpanEnd,
    finished: bool,
    timer: Option<OpTimer>,
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
    pub fn writer_context(&self) -> &OtelContext {
        &self.writer
    }

    /// The `get` span's context.
    pub fn context(&self) -> &OtelContext {
        &self.span.context
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
        if self.finished {
            return polled;
        }
        match &polled {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {
                // End of object: async-nats has checked the digest by now.
                self.finished = true;
                if let Some(timer) = self.timer.take() {
                    timer.finish(None);
                }
                let span = self.span.context.span();
                if span.is_recording() {
                    span.set_attribute(KeyValue::new(
                        semconv::MESSAGING_NATS_OBJECT_DIGEST_OK,
                        true,
                    ));
                }
                self.span.context.span().end();
            }
            Poll::Ready(Err(err)) => {
                self.finished = true;
                if let Some(timer) = self.timer.take() {
                    timer.finish(Some(if err.kind() == io::ErrorKind::InvalidData {
                        "digest_mismatch"
                    } else {
                        "read"
                    }));
                }
                let span = self.span.context.span();
                if span.is_recording() {
                    let digest_failed = err.kind() == io::ErrorKind::InvalidData;
                    if digest_failed {
                        span.set_attribute(KeyValue::new(
                            semconv::MESSAGING_NATS_OBJECT_DIGEST_OK,
                            false,
                        ));
                    }
                    span.set_attribute(KeyValue::new(
                        semconv::ERROR_TYPE,
                        if digest_failed {
                            "digest_mismatch"
                        } else {
                            "read"
                        },
                    ));
                    span.set_status(Status::error(err.to_string()));
                }
                self.span.context.span().end();
            }
            _ => {}
        }
        polled
    }
}

/// Object changes, each with a `process {bucket}` span linked to its writer.
pub struct Watch {
    inner: object_store::Watch,
    store: ObjectStore,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("bucket", &self.store.bucket)
            .finish_non_exhaustive()
    }
}

/// One object change with its `process` span (ended on drop).
pub struct ObjectChange {
    info: ObjectInfo,
    writer: OtelContext,
    span: SpanEnd,
}

impl fmt::Debug for ObjectChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectChange")
            .field("name", &self.info.name)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for ObjectChange {
    type Target = ObjectInfo;

    fn deref(&self) -> &ObjectInfo {
        &self.info
    }
}

impl ObjectChange {
    /// The writer's trace context.
    pub fn writer_context(&self) -> &OtelContext {
        &self.writer
    }

    /// The process span's context.
    pub fn context(&self) -> &OtelContext {
        &self.span.context
    }
}

impl Stream for Watch {
    type Item = Result<ObjectChange, WatcherError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(info))) => {
                let store = &self.store;
                let writer = info
                    .headers
                    .as_ref()
                    .map(|h| store.shared.inst.extract(h))
                    .unwrap_or_default();
                let writer_span = writer.span().span_context().clone();
                let links = if writer_span.is_valid() {
                    vec![Link::with_context(writer_span)]
                } else {
                    Vec::new()
                };
                let span_cx = store.start(
                    semconv::operation::PROCESS,
                    Some(&info.name),
                    SpanKind::Consumer,
                    &OtelContext::new(),
                    links,
                );
                if let Some(span_cx) = &span_cx {
                    ObjectStore::record_info(span_cx, &info);
                }
                Poll::Ready(Some(Ok(ObjectChange {
                    info,
                    writer,
                    span: SpanEnd {
                        owns_span: span_cx.is_some(),
                        context: span_cx.unwrap_or_default(),
                    },
                })))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
