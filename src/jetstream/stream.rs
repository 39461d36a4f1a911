//! Streams, traced: async-nats's `jetstream::stream` module, whose [`Stream`]
//! hands out traced consumers.
//!
//! Everything of async-nats's module is re-exported here (`Config`, `Info`,
//! `RetentionPolicy`, `StorageType`, the error types …); [`Stream`] replaces theirs
//! under the same name, with the same methods. Messages read directly from a
//! stream (`direct_get*`, `get_raw_message*`) are stored copies, not deliveries:
//! they come back as async-nats returns them, untraced.

pub use async_nats::jetstream::stream::*;

use async_nats::jetstream::consumer::{self, FromConsumer, IntoConsumerConfig};
use async_nats::jetstream::context::ConsumerInfoError;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream as raw;

use super::consumer::Consumer;
use super::Context;

/// A traced JetStream stream: async-nats's [`Stream`](raw::Stream) with the same
/// methods and error types; the consumers it creates or binds are traced
/// [`Consumer`]s. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Stream<I = Info> {
    inner: raw::Stream<I>,
    js: Context,
}

impl<I> Stream<I> {
    pub(crate) fn new(inner: raw::Stream<I>, js: Context) -> Self {
        Self { inner, js }
    }

    /// The untraced async-nats stream.
    pub fn inner(&self) -> &raw::Stream<I> {
        &self.inner
    }

    /// Unwraps the untraced async-nats stream.
    pub fn into_inner(self) -> raw::Stream<I> {
        self.inner
    }

    fn traced<C: IntoConsumerConfig>(&self, inner: consumer::Consumer<C>) -> Consumer<C> {
        self.js.consumer(inner)
    }

    delegate_async! {
        /// Reads the stream's info from the server.
        fn get_info(&self) -> Result<Info, InfoError>;
        /// The stream's info with the subjects matching `subjects_filter`.
        fn info_with_subjects[F: AsRef<str>](&self, subjects_filter: F)
            -> Result<InfoWithSubjects, InfoError>;
        /// The next message on `subject` at or after `sequence` (direct get).
        fn direct_get_next_for_subject[T: Into<String>](&self, subject: T, sequence: Option<u64>)
            -> Result<StreamMessage, DirectGetError>;
        /// The first message on `subject` (direct get).
        fn direct_get_first_for_subject[T: Into<String>](&self, subject: T)
            -> Result<StreamMessage, DirectGetError>;
        /// The message at `sequence` (direct get).
        fn direct_get(&self, sequence: u64) -> Result<StreamMessage, DirectGetError>;
        /// The last message on `subject` (direct get).
        fn direct_get_last_for_subject[T: Into<String>](&self, subject: T)
            -> Result<StreamMessage, DirectGetError>;
        /// The message at `sequence`.
        fn get_raw_message(&self, sequence: u64) -> Result<StreamMessage, RawMessageError>;
        /// The first message on `subject` at or after `sequence`.
        fn get_first_raw_message_by_subject[T: AsRef<str>](&self, subject: T, sequence: u64)
            -> Result<StreamMessage, RawMessageError>;
        /// The next message on `subject`.
        fn get_next_raw_message_by_subject[T: AsRef<str>](&self, subject: T)
            -> Result<StreamMessage, RawMessageError>;
        /// The last message on `stream_subject`.
        fn get_last_raw_message_by_subject(&self, stream_subject: &str)
            -> Result<StreamMessage, LastRawMessageError>;
        /// Deletes the message at `sequence`.
        fn delete_message(&self, sequence: u64) -> Result<bool, DeleteMessageError>;
        /// Purges the messages on `subject`.
        #[deprecated(note = "as in async-nats: use `purge().filter(subject)`")]
        #[allow(deprecated)]
        fn purge_subject[T](&self, subject: T) -> Result<PurgeResponse, PurgeError>
            where [T: Into<String>];
        /// The info of consumer `name`.
        fn consumer_info[T: AsRef<str>](&self, name: T) -> Result<consumer::Info, ConsumerInfoError>;
        /// Deletes consumer `name`.
        fn delete_consumer(&self, name: &str) -> Result<DeleteStatus, ConsumerError>;
        /// Pauses consumer `name` until `pause_until`.
        fn pause_consumer(&self, name: &str, pause_until: async_nats::datetime::DateTime)
            -> Result<PauseResponse, ConsumerError>;
        /// Resumes paused consumer `name`.
        fn resume_consumer(&self, name: &str) -> Result<PauseResponse, ConsumerError>;
        /// Unpins the client pinned in priority group `group` of consumer `name`.
        fn unpin_consumer(&self, name: &str, group: &str) -> Result<(), ConsumerError>;
        /// Resets consumer `name` to stream sequence `seq` (or its start).
        fn reset_consumer(&self, name: &str, seq: Option<u64>)
            -> Result<ConsumerResetResponse, ConsumerResetError>;
    }

    delegate! {
        /// A builder for the stream's info (deleted details, subjects).
        fn info_builder(&self) -> StreamInfoBuilder;
        /// A builder for direct gets.
        fn direct_get_builder(&self) -> DirectGetBuilder<WithHeaders>;
        /// A builder for message gets.
        fn raw_message_builder(&self) -> RawMessageBuilder<WithHeaders>;
        /// A purge request (filter, keep, sequence).
        fn purge(&self) -> Purge<No, No>;
        /// The names of the stream's consumers.
        fn consumer_names(&self) -> ConsumerNames;
        /// The info of the stream's consumers.
        fn consumers(&self) -> Consumers;
    }

    /// Creates a consumer (or binds the same existing one), traced.
    pub async fn create_consumer<C: IntoConsumerConfig + FromConsumer>(
        &self,
        config: C,
    ) -> Result<Consumer<C>, ConsumerError> {
        Ok(self.traced(self.inner.create_consumer(config).await?))
    }

    /// Updates a consumer, traced.
    pub async fn update_consumer<C: IntoConsumerConfig + FromConsumer>(
        &self,
        config: C,
    ) -> Result<Consumer<C>, ConsumerUpdateError> {
        Ok(self.traced(self.inner.update_consumer(config).await?))
    }

    /// Creates a consumer, failing if one exists, traced.
    pub async fn create_consumer_strict<C: IntoConsumerConfig + FromConsumer>(
        &self,
        config: C,
    ) -> Result<Consumer<C>, ConsumerCreateStrictError> {
        Ok(self.traced(self.inner.create_consumer_strict(config).await?))
    }

    /// Binds consumer `name`, traced.
    pub async fn get_consumer<T: FromConsumer + IntoConsumerConfig>(
        &self,
        name: &str,
    ) -> Result<Consumer<T>, async_nats::Error> {
        Ok(self.traced(self.inner.get_consumer(name).await?))
    }

    /// Binds consumer `name`, creating it from `config` if it does not exist,
    /// traced.
    pub async fn get_or_create_consumer<T: FromConsumer + IntoConsumerConfig>(
        &self,
        name: &str,
        config: T,
    ) -> Result<Consumer<T>, ConsumerError> {
        Ok(self.traced(self.inner.get_or_create_consumer(name, config).await?))
    }
}

impl Stream<Info> {
    /// Reads the stream's info from the server and keeps it as the cached info.
    pub async fn info(&mut self) -> Result<&Info, InfoError> {
        self.inner.info().await
    }

    /// The info read when the stream was bound, or by the last
    /// [`info`](Self::info).
    pub fn cached_info(&self) -> &Info {
        self.inner.cached_info()
    }
}
