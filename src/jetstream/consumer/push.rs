//! Push consumers, traced: async-nats's `consumer::push` module, whose consumers'
//! `messages()` yield traced deliveries.
//!
//! Everything of async-nats's module is re-exported here (`Config`,
//! `OrderedConfig`, the error types …); the message streams this crate traces
//! replace theirs under the same names.

pub use async_nats::jetstream::consumer::push::*;

use async_nats::jetstream::consumer::push;
use async_nats::jetstream::consumer::StreamError;

use super::Consumer;
use crate::jetstream::Messages as Traced;

/// The traced push stream: each message a [`Delivery`](crate::jetstream::Delivery)
/// with its `process` span.
pub type Messages = Traced<push::Messages>;

/// The traced ordered push stream: each message a
/// [`Delivery`](crate::jetstream::Delivery) with its `process` span.
pub type Ordered = Traced<push::Ordered>;

impl Consumer<Config> {
    /// The consumer's messages (subscribed to its deliver subject, in its deliver
    /// group if it has one), each with its `process` span.
    pub async fn messages(&self) -> Result<Messages, StreamError> {
        let stream = self.inner.messages().await?;
        Ok(Traced::new(stream, self.shared.clone()))
    }
}

impl Consumer<OrderedConfig> {
    /// The ordered consumer's messages, each with its `process` span; the consumer
    /// is recreated on a gap, as async-nats does.
    pub async fn messages(self) -> Result<Ordered, StreamError> {
        let shared = self.shared;
        let stream = self.inner.messages().await?;
        Ok(Traced::new(stream, shared))
    }
}
