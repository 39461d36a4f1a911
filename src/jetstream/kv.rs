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
//!
//! This module is async-nats's `jetstream::kv` too: everything of theirs is
//! re-exported here (`Config`, `Entry`, `Operation`, the error types …), and
//! [`Store`] and [`Watch`] replace theirs under the same names, with the same
//! methods.

use std::fmt;
use std::sync::Arc;

pub use async_nats::jetstream::kv::*;

use std::time::Duration;

use async_nats::jetstream::kv;
use async_nats::HeaderMap;
use bytes::Bytes;
use opentelemetry::{Context as OtelContext, KeyValue};

use crate::error::error_type;
use crate::names::SpanName;
use crate::operation::{Op, Operation as Traced, Start, Target};
use crate::semconv;
use crate::telemetry::Telemetry;

use super::Context;

mod read;
mod watch;
mod write;

pub use watch::{Change, Watch};

const KV_OPERATION: &str = "KV-Operation";

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
    /// headers, optionally expecting `revision` as the key's last revision and
    /// expiring after `ttl`.
    async fn write(
        &self,
        cx: Option<&OtelContext>,
        key: &str,
        value: Bytes,
        expected_revision: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<u64, async_nats::jetstream::context::PublishError> {
        let mut headers = HeaderMap::new();
        if let Some(revision) = expected_revision {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                revision.to_string().as_str(),
            );
        }
        if let Some(ttl) = ttl {
            headers.insert(
                async_nats::header::NATS_MESSAGE_TTL,
                ttl.as_secs().to_string().as_str(),
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
