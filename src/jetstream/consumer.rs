//! Consumers, traced: async-nats's `jetstream::consumer` module, whose
//! [`Consumer`] hands out traced deliveries.
//!
//! Everything of async-nats's module is re-exported here (`Config`, `Info`,
//! `AckPolicy`, `DeliverPolicy`, the error types …); the consumer types replace
//! theirs under the same names: [`PullConsumer`], [`PushConsumer`],
//! [`OrderedPullConsumer`] and [`OrderedPushConsumer`] are this crate's
//! [`Consumer`] over async-nats's configs, with the same methods.

pub use async_nats::jetstream::consumer::*;

pub mod pull;
pub mod push;

use std::fmt;
use std::sync::Arc;

use async_nats::jetstream::consumer as raw;
use async_nats::jetstream::context::ConsumerInfoError;
use async_nats::jetstream::stream::{ConsumerResetError, ConsumerResetResponse};

use super::shared::ConsumerShared;
use crate::telemetry::Telemetry;

/// A traced pull consumer.
pub type PullConsumer = Consumer<pull::Config>;
/// A traced push consumer.
pub type PushConsumer = Consumer<push::Config>;
/// A traced ordered pull consumer.
pub type OrderedPullConsumer = Consumer<pull::OrderedConfig>;
/// A traced ordered push consumer.
pub type OrderedPushConsumer = Consumer<push::OrderedConfig>;

/// A traced JetStream consumer: async-nats's [`Consumer`](raw::Consumer) with the
/// same methods and error types; its messages come as traced
/// [`Delivery`](crate::jetstream::Delivery)s, each with a `process {template}`
/// span. The template is the consumer's filter subject (through the subject
/// mapper), or the stream name when it has none or several.
pub struct Consumer<T: IntoConsumerConfig> {
    pub(crate) inner: raw::Consumer<T>,
    pub(crate) shared: Arc<ConsumerShared>,
}

impl<T: IntoConsumerConfig + Clone> Clone for Consumer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<T: IntoConsumerConfig> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("stream", &self.shared.stream)
            .field("consumer", &self.shared.consumer)
            .field("template", &self.shared.template())
            .finish_non_exhaustive()
    }
}

impl<T: IntoConsumerConfig> Consumer<T> {
    pub(crate) fn new(inner: raw::Consumer<T>, telemetry: Telemetry) -> Self {
        let shared = ConsumerShared::new(telemetry, inner.cached_info());
        Self { inner, shared }
    }

    pub(crate) fn shared(&self) -> &Arc<ConsumerShared> {
        &self.shared
    }

    /// The untraced async-nats consumer.
    pub fn inner(&self) -> &raw::Consumer<T> {
        &self.inner
    }

    /// Unwraps the untraced async-nats consumer.
    pub fn into_inner(self) -> raw::Consumer<T> {
        self.inner
    }

    /// The destination template of this consumer's spans.
    pub fn template(&self) -> &str {
        self.shared.template()
    }

    /// Reads the consumer's info from the server, keeps it as the cached info and
    /// records the health gauges (`messaging.nats.consumer.pending`,
    /// `.ack_pending`, `.redelivered`).
    pub async fn info(&mut self) -> Result<&Info, ConsumerInfoError> {
        let info = self.inner.info().await?;
        record_health(&self.shared, info);
        Ok(info)
    }

    /// Reads the consumer's info from the server and records the health gauges;
    /// the cached info is left as it was.
    pub async fn get_info(&self) -> Result<Info, ConsumerInfoError> {
        let info = self.inner.get_info().await?;
        record_health(&self.shared, &info);
        Ok(info)
    }

    /// The info read when the consumer was bound, or by the last
    /// [`info`](Self::info).
    pub fn cached_info(&self) -> &Info {
        self.inner.cached_info()
    }

    /// Resets the consumer to stream sequence `seq` (or its start), as
    /// async-nats's `Consumer::reset`.
    pub async fn reset(
        &mut self,
        seq: Option<u64>,
    ) -> Result<ConsumerResetResponse, ConsumerResetError> {
        self.inner.reset(seq).await
    }

    /// [`get_info`](Self::get_info) under its former name.
    #[deprecated(since = "0.2.0", note = "use `get_info`, as with async-nats")]
    pub async fn record_health(&self) -> Result<Info, ConsumerInfoError> {
        self.get_info().await
    }
}

/// Records the consumer health gauges from `info`.
fn record_health(shared: &ConsumerShared, info: &Info) {
    if let Some(health) = &shared.health {
        let (instruments, attributes) = (health.instruments(), health.attributes());
        health.pending(info.num_pending);
        instruments
            .consumer_ack_pending
            .record(info.num_ack_pending as u64, attributes);
        instruments
            .consumer_redelivered
            .record(info.num_redelivered as u64, attributes);
    }
}
