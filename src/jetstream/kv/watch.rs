//! Watching a KV bucket: each change a [`Change`] with a `process {bucket}` span.

use std::fmt;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::kv::{
    Entry, Operation, WatchError, WatchErrorKind, WatcherError, WatcherErrorKind,
};
use futures_util::Stream;
use opentelemetry::KeyValue;

use super::{is_valid_key, operation_of, Store};
use crate::operation::{Op, Processing};
use crate::semconv;

/// One change of a watched key with its `process {bucket}` span; dereferences to
/// the [`Entry`].
pub type Change = crate::Delivery<Entry>;

impl Store {
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

    /// The latest value of each key matching any of `keys`, then changes as they
    /// happen.
    pub async fn watch_many_with_history<T: AsRef<str>, K: IntoIterator<Item = T>>(
        &self,
        keys: K,
    ) -> Result<Watch, WatchError> {
        let keys = keys.into_iter().map(|k| k.as_ref().to_owned()).collect();
        self.watch_subjects(keys, DeliverPolicy::LastPerSubject)
            .await
    }

    /// Changes to `key` from bucket revision `revision` on.
    pub async fn watch_from_revision<T: AsRef<str>>(
        &self,
        key: T,
        revision: u64,
    ) -> Result<Watch, WatchError> {
        let from = DeliverPolicy::ByStartSequence {
            start_sequence: revision,
        };
        self.watch_subjects(vec![key.as_ref().to_owned()], from)
            .await
    }

    /// Changes to every key from now on.
    pub async fn watch_all(&self) -> Result<Watch, WatchError> {
        self.watch_subjects(vec![">".to_owned()], DeliverPolicy::New)
            .await
    }

    /// Changes to every key from bucket revision `revision` on.
    pub async fn watch_all_from_revision(&self, revision: u64) -> Result<Watch, WatchError> {
        let from = DeliverPolicy::ByStartSequence {
            start_sequence: revision,
        };
        self.watch_subjects(vec![">".to_owned()], from).await
    }

    async fn watch_subjects(
        &self,
        keys: Vec<String>,
        deliver_policy: DeliverPolicy,
    ) -> Result<Watch, WatchError> {
        let op = self.start(Op::call(semconv::kv::WATCH), None);
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
                deliver_subject: self.shared.js.raw_client().new_inbox(),
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
            processing: self.shared.telemetry.processing(&self.inner.name, None),
        })
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

/// Changes to watched keys, each a [`Change`] with a `process {bucket}` span.
pub struct Watch {
    messages: OrderedMessages,
    store: Store,
    processing: Processing,
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
        let telemetry = &shared.telemetry;
        let span = telemetry.start_process(
            &self.processing,
            None,
            message.headers.as_ref(),
            None,
            crate::metrics::age_if_metered(
                telemetry.inst().instruments(),
                Some(created.unix_timestamp_nanos()),
            ),
            5,
            |a| {
                store.push_key_attributes(a, Some(&entry.key));
                a.push(KeyValue::new(
                    semconv::MESSAGING_NATS_KV_REVISION,
                    i64::try_from(revision).unwrap_or(i64::MAX),
                ));
                a.push(KeyValue::new(
                    semconv::MESSAGING_NATS_KV_OPERATION,
                    match operation {
                        Operation::Put => "PUT",
                        Operation::Delete => "DEL",
                        Operation::Purge => "PURGE",
                    },
                ));
            },
        );
        Ok(crate::Delivery::new(entry, span))
    }
}
