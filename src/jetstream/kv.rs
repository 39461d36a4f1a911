//! Key-value buckets, traced, with the writer's trace context stored with each
//! value.
//!
//! async-nats's KV API takes no headers, so [`Store::put`], [`Store::create`] and
//! [`Store::update`] publish to the bucket's subject themselves (same subjects,
//! same `Nats-Expected-Last-Subject-Sequence` revision checks, same errors) with the
//! writer's context in the headers. [`Store::watch`] yields each change with a
//! `process {bucket}` span **linked** to the writer (not parented: the write may be
//! old), and [`Store::entry_with_context`] returns the writer's context with the
//! entry.
//!
//! Every operation is a CLIENT span `{operation} {bucket}` with
//! `messaging.nats.kv.bucket` and, where known, `messaging.nats.kv.revision`. Keys can
//! carry ids or personal data, so `messaging.nats.kv.key` is only recorded after
//! [`Store::with_key_attribute`]`(true)`.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::kv::{
    self, CreateError, CreateErrorKind, DeleteError, Entry, EntryError, EntryErrorKind,
    HistoryError, Operation, PurgeError, PutError, PutErrorKind, UpdateError, UpdateErrorKind,
    WatchError, WatchErrorKind, WatcherError, WatcherErrorKind,
};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::Stream;
use opentelemetry::trace::{FutureExt, Link, SpanBuilder, SpanKind, TraceContextExt};
use opentelemetry::{Context as OtelContext, ContextGuard, KeyValue};

use crate::error::error_type;
use crate::instrumentation::{record_failure, Instrumentation};
use crate::metrics::OpTimer;
use crate::semconv;
use crate::subscriber::SpanEnd;

use super::Context;

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
                inst: self.instrumentation().clone(),
                common: self.common.clone(),
                metric_common: self.metric_common.clone(),
                record_keys: false,
                js: self.clone(),
            }),
        }
    }
}

struct KvShared {
    inst: Instrumentation,
    common: Arc<[KeyValue]>,
    metric_common: Arc<[KeyValue]>,
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
            inst: self.shared.inst.clone(),
            common: self.shared.common.clone(),
            metric_common: self.shared.metric_common.clone(),
            record_keys: enabled,
            js: self.shared.js.clone(),
        };
        Self {
            inner: self.inner,
            shared: Arc::new(shared),
        }
    }

    fn start(&self, operation: &'static str, key: Option<&str>) -> KvOp {
        let timer = OpTimer::start(self.shared.inst.instruments(), || {
            crate::metrics::attributes(
                &self.shared.metric_common,
                operation,
                operation_type(operation),
                self.inner.name.clone(),
                None,
            )
        });
        KvOp {
            cx: self.start_span(operation, key),
            timer,
        }
    }

    fn start_span(&self, operation: &'static str, key: Option<&str>) -> Option<OtelContext> {
        if !self.shared.inst.tracing_enabled() {
            return None;
        }
        let mut attributes = Vec::with_capacity(self.shared.common.len() + 4);
        attributes.extend_from_slice(&self.shared.common);
        attributes.push(KeyValue::new(semconv::MESSAGING_OPERATION_NAME, operation));
        attributes.push(KeyValue::new(
            semconv::MESSAGING_NATS_KV_BUCKET,
            self.inner.name.clone(),
        ));
        if let (true, Some(key)) = (self.shared.record_keys, key) {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_KV_KEY,
                key.to_owned(),
            ));
        }
        let builder =
            SpanBuilder::from_name(crate::names::SpanName::new(operation, &self.inner.name).name())
                .with_kind(SpanKind::Client)
                .with_attributes(attributes);
        Some(
            self.shared
                .inst
                .start_span(builder, &OtelContext::current()),
        )
    }

    fn finish<T, K>(
        op: KvOp,
        result: &Result<T, async_nats::error::Error<K>>,
        revision: impl FnOnce(&T) -> Option<u64>,
    ) where
        K: fmt::Debug + fmt::Display + Clone + PartialEq,
    {
        if let Some(timer) = op.timer {
            let error = result.as_ref().err().map(|e| error_type(&e.kind()));
            timer.finish(error.as_deref());
        }
        let Some(cx) = op.cx else { return };
        match result {
            Ok(value) => {
                if let Some(revision) = revision(value) {
                    cx.span().set_attribute(KeyValue::new(
                        semconv::MESSAGING_NATS_KV_REVISION,
                        i64::try_from(revision).unwrap_or(i64::MAX),
                    ));
                }
            }
            Err(err) => record_failure(&cx, &error_type(&err.kind()), err.to_string()),
        }
        cx.span().end();
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
        let from = cx.cloned().or_else(|| self.shared.inst.ambient_context());
        if let Some(from) = from {
            self.shared.inst.inject(&from, &mut headers);
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
        let cx = self.start(semconv::kv::PUT, Some(key));
        let result = if !is_valid_key(key) {
            Err(PutError::new(PutErrorKind::InvalidKey))
        } else if !self.can_write_headers() {
            self.inner.put(key, value).await
        } else {
            self.write(cx.cx.as_ref(), key, value, None)
                .await
                .map_err(|e| PutError::with_source(PutErrorKind::Ack, e))
        };
        Self::finish(cx, &result, |r| Some(*r));
        result
    }

    /// Stores `value` only if `key` does not exist (or was deleted or purged).
    pub async fn create<T: AsRef<str>>(&self, key: T, value: Bytes) -> Result<u64, CreateError> {
        let key = key.as_ref();
        let cx = self.start(semconv::kv::CREATE, Some(key));
        let result = self.create_inner(cx.cx.as_ref(), key, value).await;
        Self::finish(cx, &result, |r| Some(*r));
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
        let cx = self.start(semconv::kv::UPDATE, Some(key));
        let result = if !is_valid_key(key) {
            Err(UpdateError::new(UpdateErrorKind::InvalidKey))
        } else if !self.can_write_headers() {
            self.inner.update(key, value, revision).await
        } else {
            self.write(cx.cx.as_ref(), key, value, Some(revision))
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
        Self::finish(cx, &result, |r| Some(*r));
        result
    }

    /// The current value of `key`.
    pub async fn get<T: AsRef<str>>(&self, key: T) -> Result<Option<Bytes>, EntryError> {
        let key = key.as_ref();
        let cx = self.start(semconv::kv::GET, Some(key));
        let result = self.inner.entry(key).await;
        Self::finish(cx, &result, |e| e.as_ref().map(|e| e.revision));
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
        let cx = self.start(semconv::kv::ENTRY, Some(key));
        let result = self.inner.entry(key).await;
        Self::finish(cx, &result, |e| e.as_ref().map(|e| e.revision));
        result
    }

    /// The latest entry of `key` with the trace context of whoever wrote it (an
    /// empty context if the writer did not trace).
    pub async fn entry_with_context<T: AsRef<str>>(
        &self,
        key: T,
    ) -> Result<Option<(Entry, OtelContext)>, EntryError> {
        let key = key.as_ref();
        let cx = self.start(semconv::kv::ENTRY, Some(key));
        let result = self.entry_with_context_inner(key).await;
        Self::finish(cx, &result, |e| e.as_ref().map(|(e, _)| e.revision));
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
        let writer = self.shared.inst.extract(&message.headers);
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
        let cx = self.start(semconv::kv::DELETE, Some(key));
        let result = self.inner.delete(key).await;
        Self::finish(cx, &result, |_| None);
        result
    }

    /// Purges `key` (a purge marker; history is removed).
    pub async fn purge<T: AsRef<str>>(&self, key: T) -> Result<(), PurgeError> {
        let key = key.as_ref();
        let cx = self.start(semconv::kv::PURGE, Some(key));
        let result = self.inner.purge(key).await;
        Self::finish(cx, &result, |_| None);
        result
    }

    /// The bucket's keys (the span covers starting the listing).
    pub async fn keys(&self) -> Result<kv::Keys, HistoryError> {
        let cx = self.start(semconv::kv::KEYS, None);
        let result = self.inner.keys().await;
        Self::finish(cx, &result, |_| None);
        result
    }

    /// The history of `key` (the span covers starting the listing).
    pub async fn history<T: AsRef<str>>(&self, key: T) -> Result<kv::History, HistoryError> {
        let key = key.as_ref();
        let cx = self.start(semconv::kv::HISTORY, Some(key));
        let result = self.inner.history(key).await;
        Self::finish(cx, &result, |_| None);
        result
    }

    /// Changes to `key` (a `*`/`>` pattern works) from now on.
    pub async fn watch<T: AsRef<str>>(&self, key: T) -> Result<Watch, WatchError> {
        self.watch_subjects(vec![key.as_ref().to_owned()], DeliverPolicy::New)
            .await
    }

    /// The latest value of each key matching `key`, then changes as they happen.
    pub async fn watch_with_history<T: AsRef<str>>(&self, key: T) -> Result<Watch, WatchError> {
        self.watch_subjects(vec![key.as_ref().to_owned()], DeliverPolicy::LastPerSubject)
            .await
    }

    /// Changes to any of `keys` from now on.
    pub async fn watch_many<T, K>(&self, keys: K) -> Result<Watch, WatchError>
    where
        T: AsRef<str>,
        K: IntoIterator<Item = T>,
    {
        let keys = keys.into_iter().map(|k| k.as_ref().to_owned()).collect();
        self.watch_subjects(keys, DeliverPolicy::New).await
    }

    /// Changes to every key from now on.
    pub async fn watch_all(&self) -> Result<Watch, WatchError> {
        self.watch_subjects(vec![">".to_owned()], DeliverPolicy::New)
            .await
    }

    async fn watch_subjects(
        &self,
        keys: Vec<String>,
        deliver_policy: DeliverPolicy,
    ) -> Result<Watch, WatchError> {
        let op = self.start(semconv::kv::WATCH, None);
        let result = self.watch_inner(keys, deliver_policy).await;
        Self::finish(op, &result, |_| None);
        result
    }

    async fn watch_inner(
        &self,
        keys: Vec<String>,
        deliver_policy: DeliverPolicy,
    ) -> Result<Watch, WatchError> {
        // Patterns may hold `*`/`>` tokens; everything else must be a valid key.
        let valid = |k: &str| {
            k.split('.')
                .all(|t| t == "*" || t == ">" || (!t.is_empty() && is_valid_key(t)))
        };
        if keys.is_empty() || !keys.iter().all(|k| valid(k)) {
            return Err(WatchError::new(WatchErrorKind::InvalidKey));
        }
        let filter_subjects = keys
            .iter()
            .map(|k| format!("{}{k}", self.inner.prefix))
            .collect();
        let consumer = self
            .inner
            .stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.shared.js.client().new_inbox(),
                description: Some("kv watch consumer".to_owned()),
                filter_subjects,
                replay_policy: ReplayPolicy::Instant,
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| WatchError::with_source(WatchErrorKind::ConsumerCreate, e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| WatchError::with_source(WatchErrorKind::Other, e))?;
        Ok(Watch {
            messages: Box::pin(messages),
            store: self.clone(),
            process_name: format!("{} {}", semconv::operation::PROCESS, self.inner.name),
            metric_attributes: crate::metrics::attributes(
                &self.shared.metric_common,
                semconv::operation::PROCESS,
                semconv::operation_type::PROCESS,
                self.inner.name.clone(),
                None,
            )
            .into(),
        })
    }
}

/// One KV operation's span and timer.
struct KvOp {
    cx: Option<OtelContext>,
    timer: Option<OpTimer>,
}

/// `messaging.operation.type` of a KV operation: writes send, reads receive.
fn operation_type(operation: &str) -> &'static str {
    match operation {
        semconv::kv::PUT
        | semconv::kv::CREATE
        | semconv::kv::UPDATE
        | semconv::kv::DELETE
        | semconv::kv::PURGE => semconv::operation_type::SEND,
        _ => semconv::operation_type::RECEIVE,
    }
}

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

type OrderedMessages = Pin<
    Box<
        dyn Stream<
                Item = Result<
                    async_nats::jetstream::Message,
                    async_nats::jetstream::consumer::push::OrderedError,
                >,
            > + Send,
    >,
>;

/// Changes to watched keys, each a [`Change`] with a `process {bucket}` span
/// linked to the writer's context.
pub struct Watch {
    messages: OrderedMessages,
    store: Store,
    process_name: String,
    metric_attributes: Arc<[KeyValue]>,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("bucket", &self.store.inner.name)
            .finish_non_exhaustive()
    }
}

impl Stream for Watch {
    type Item = Result<Change, WatcherError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        match self.messages.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Some(self.change(message))),
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(WatcherError::with_source(
                WatcherErrorKind::Consumer,
                err,
            )))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Watch {
    fn change(&self, message: async_nats::jetstream::Message) -> Result<Change, WatcherError> {
        let store = &self.store;
        let shared = &store.shared;
        let key = message
            .subject
            .as_str()
            .strip_prefix(store.inner.prefix.as_str())
            .unwrap_or(message.subject.as_str())
            .to_owned();
        let operation = operation_of(message.headers.as_ref());
        let (revision, delta, created) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending, info.published),
            Err(e) => return Err(WatcherError::with_source(WatcherErrorKind::Other, e)),
        };
        let writer = match &message.headers {
            Some(headers) => shared.inst.extract(headers),
            None => OtelContext::new(),
        };
        let entry = Entry {
            bucket: store.inner.name.clone(),
            key,
            value: message.payload.clone(),
            revision,
            delta,
            created,
            operation,
            seen_current: delta == 0,
        };
        let tracing = shared.inst.tracing_enabled();
        let context = if tracing {
            let mut attributes = Vec::with_capacity(shared.common.len() + 6);
            attributes.extend_from_slice(&shared.common);
            attributes.push(KeyValue::new(
                semconv::MESSAGING_OPERATION_NAME,
                semconv::operation::PROCESS,
            ));
            attributes.push(KeyValue::new(
                semconv::MESSAGING_OPERATION_TYPE,
                semconv::operation_type::PROCESS,
            ));
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_KV_BUCKET,
                store.inner.name.clone(),
            ));
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_KV_REVISION,
                i64::try_from(revision).unwrap_or(i64::MAX),
            ));
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_KV_OPERATION,
                match operation {
                    Operation::Put => "PUT",
                    Operation::Delete => "DEL",
                    Operation::Purge => "PURGE",
                },
            ));
            if shared.record_keys {
                attributes.push(KeyValue::new(
                    semconv::MESSAGING_NATS_KV_KEY,
                    entry.key.clone(),
                ));
            }
            let writer_span = writer.span().span_context().clone();
            let mut builder = SpanBuilder::from_name(self.process_name.clone())
                .with_kind(SpanKind::Consumer)
                .with_attributes(attributes);
            if writer_span.is_valid() {
                builder = builder.with_links(vec![Link::with_context(writer_span)]);
            }
            // A new root: the write may be arbitrarily old.
            shared.inst.start_span(builder, &OtelContext::new())
        } else {
            writer.clone()
        };
        let published = message
            .info()
            .ok()
            .map(|info| info.published.unix_timestamp_nanos());
        Ok(Change {
            entry,
            writer,
            span: SpanEnd {
                owns_span: tracing,
                context,
            },
            _timer: crate::metrics::ProcessTimer::start(
                shared.inst.instruments(),
                &self.metric_attributes,
                published,
            ),
        })
    }
}

/// One change of a watched key, with its `process` span (ended on drop).
pub struct Change {
    entry: Entry,
    writer: OtelContext,
    span: SpanEnd,
    _timer: Option<crate::metrics::ProcessTimer>,
}

impl fmt::Debug for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Change")
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Change {
    type Target = Entry;

    fn deref(&self) -> &Entry {
        &self.entry
    }
}

impl Change {
    /// The entry.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// The writer's trace context (empty if the writer did not trace).
    pub fn writer_context(&self) -> &OtelContext {
        &self.writer
    }

    /// The process span's context.
    pub fn context(&self) -> &OtelContext {
        &self.span.context
    }

    /// Makes the process span current until the guard is dropped.
    pub fn attach(&self) -> ContextGuard {
        self.span.context.clone().attach()
    }

    /// Runs `future` with the process span as its current context.
    pub async fn in_span<F: std::future::Future>(&self, future: F) -> F::Output {
        future.with_context(self.span.context.clone()).await
    }

    /// The entry, ending the span.
    pub fn into_entry(self) -> Entry {
        let Change { entry, .. } = self;
        entry
    }
}
