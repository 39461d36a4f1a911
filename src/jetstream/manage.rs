//! The rest of async-nats's JetStream `Context`: stream, consumer, KV and Object
//! Store management, and JetStream API requests. Streams, consumers and buckets
//! come back traced; everything else is async-nats's own.

use std::borrow::Borrow;
use std::time::Duration;

use async_nats::jetstream::account::Account;
use async_nats::jetstream::consumer::{FromConsumer, IntoConsumerConfig};
use async_nats::jetstream::context::{
    AccountError, CreateKeyValueError, CreateStreamError, DeleteObjectStore, DeleteStreamError,
    GetStreamByNameError, GetStreamError, KeyValueError, RequestError, StreamNames, Streams,
    UpdateKeyValueError, UpdateStreamError,
};
use async_nats::jetstream::stream::{
    ConsumerCreateStrictError, ConsumerError, ConsumerUpdateError, DeleteStatus, Info,
};
use async_nats::jetstream::{kv, stream};
use async_nats::ToSubject;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::consumer::Consumer;
use super::stream::Stream;
use super::Context;
use crate::Client;

impl Context {
    /// The instrumented client of this context's connection.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Sets how long JetStream API requests (and acks) wait.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.inner.set_timeout(timeout);
    }

    /// Waits until every publish of this context in flight has its ack (async-nats's
    /// `wait_for_acks`, for contexts built with an in-flight limit).
    pub async fn wait_for_acks(&self) {
        self.inner.wait_for_acks().await;
    }

    delegate_async! {
        /// The account's JetStream limits and usage.
        fn query_account(&self) -> Result<Account, AccountError>;
        /// Deletes stream `stream`.
        fn delete_stream[T: AsRef<str>](&self, stream: T) -> Result<DeleteStatus, DeleteStreamError>;
        /// Updates a stream's configuration.
        fn update_stream[S](&self, config: S) -> Result<Info, UpdateStreamError>
            where [S: Borrow<stream::Config>];
        /// Creates the stream, or updates it to `config`.
        fn create_or_update_stream(&self, config: stream::Config) -> Result<Info, CreateStreamError>;
        /// The name of the stream that holds `subject`.
        fn stream_by_subject[T: Into<String>](&self, subject: T) -> Result<String, GetStreamByNameError>;
        /// Deletes KV bucket `bucket`.
        fn delete_key_value[T: AsRef<str>](&self, bucket: T) -> Result<DeleteStatus, KeyValueError>;
        /// Deletes object store `bucket_name`.
        fn delete_object_store[T: AsRef<str>](&self, bucket_name: T) -> Result<(), DeleteObjectStore>;
        /// Deletes consumer `consumer` of stream `stream`.
        fn delete_consumer_from_stream[C: AsRef<str>, S: AsRef<str>](&self, consumer: C, stream: S)
            -> Result<DeleteStatus, ConsumerError>;
        /// Sends a JetStream API request and decodes its JSON response.
        fn request[S, T, V](&self, subject: S, payload: &T) -> Result<V, RequestError>
            where [S: ToSubject, T: ?Sized + Serialize, V: DeserializeOwned];
        /// Sends a JetStream API request without waiting for its response.
        fn send_request[S: ToSubject](&self, subject: S, request: async_nats::Request)
            -> Result<(), async_nats::PublishError>;
    }

    delegate! {
        /// The names of every stream.
        fn stream_names(&self) -> StreamNames;
        /// The info of every stream.
        fn streams(&self) -> Streams;
    }

    fn traced_stream<I>(&self, inner: stream::Stream<I>) -> Stream<I> {
        Stream::new(inner, self.clone())
    }

    /// Creates a stream; its consumers come back traced.
    pub async fn create_stream<S>(&self, stream_config: S) -> Result<Stream, CreateStreamError>
    where
        stream::Config: From<S>,
    {
        Ok(self.traced_stream(self.inner.create_stream(stream_config).await?))
    }

    /// Binds stream `stream` without reading its info.
    pub async fn get_stream_no_info<T: AsRef<str>>(
        &self,
        stream: T,
    ) -> Result<Stream<()>, GetStreamError> {
        Ok(self.traced_stream(self.inner.get_stream_no_info(stream).await?))
    }

    /// Binds stream `stream`; its consumers come back traced.
    pub async fn get_stream<T: AsRef<str>>(&self, stream: T) -> Result<Stream, GetStreamError> {
        Ok(self.traced_stream(self.inner.get_stream(stream).await?))
    }

    /// Binds the stream, creating it from `stream_config` if it does not exist.
    pub async fn get_or_create_stream<S>(
        &self,
        stream_config: S,
    ) -> Result<Stream, CreateStreamError>
    where
        S: Into<stream::Config>,
    {
        Ok(self.traced_stream(self.inner.get_or_create_stream(stream_config).await?))
    }

    /// Opens KV bucket `bucket`, traced.
    pub async fn get_key_value<T: Into<String>>(
        &self,
        bucket: T,
    ) -> Result<super::kv::Store, KeyValueError> {
        Ok(self.key_value(self.inner.get_key_value(bucket).await?))
    }

    /// Creates a KV bucket, traced.
    pub async fn create_key_value(
        &self,
        config: kv::Config,
    ) -> Result<super::kv::Store, CreateKeyValueError> {
        Ok(self.key_value(self.inner.create_key_value(config).await?))
    }

    /// Updates a KV bucket's configuration.
    pub async fn update_key_value(
        &self,
        config: kv::Config,
    ) -> Result<super::kv::Store, UpdateKeyValueError> {
        Ok(self.key_value(self.inner.update_key_value(config).await?))
    }

    /// Creates the KV bucket, or updates it to `config`.
    pub async fn create_or_update_key_value(
        &self,
        config: kv::Config,
    ) -> Result<super::kv::Store, CreateKeyValueError> {
        Ok(self.key_value(self.inner.create_or_update_key_value(config).await?))
    }

    /// Binds consumer `consumer` of stream `stream`, traced.
    pub async fn get_consumer_from_stream<T, C, S>(
        &self,
        consumer: C,
        stream: S,
    ) -> Result<Consumer<T>, ConsumerError>
    where
        T: FromConsumer + IntoConsumerConfig,
        S: AsRef<str>,
        C: AsRef<str>,
    {
        let inner = self
            .inner
            .get_consumer_from_stream(consumer, stream)
            .await?;
        Ok(self.consumer(inner))
    }

    /// Creates a consumer on stream `stream`, traced.
    pub async fn create_consumer_on_stream<C: IntoConsumerConfig + FromConsumer, S: AsRef<str>>(
        &self,
        config: C,
        stream: S,
    ) -> Result<Consumer<C>, ConsumerError> {
        let inner = self.inner.create_consumer_on_stream(config, stream).await?;
        Ok(self.consumer(inner))
    }

    /// Updates a consumer on stream `stream`, traced.
    pub async fn update_consumer_on_stream<C: IntoConsumerConfig + FromConsumer, S: AsRef<str>>(
        &self,
        config: C,
        stream: S,
    ) -> Result<Consumer<C>, ConsumerUpdateError> {
        let inner = self.inner.update_consumer_on_stream(config, stream).await?;
        Ok(self.consumer(inner))
    }

    /// Creates a consumer on stream `stream`, failing if one exists, traced.
    pub async fn create_consumer_strict_on_stream<
        C: IntoConsumerConfig + FromConsumer,
        S: AsRef<str>,
    >(
        &self,
        config: C,
        stream: S,
    ) -> Result<Consumer<C>, ConsumerCreateStrictError> {
        let inner = self
            .inner
            .create_consumer_strict_on_stream(config, stream)
            .await?;
        Ok(self.consumer(inner))
    }
}
