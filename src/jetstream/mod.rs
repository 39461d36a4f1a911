//! JetStream, traced, with the reliability loop most services write by hand.
//!
//! [`new`] (or [`with_domain`], [`with_prefix`], or [`wrap`] for a context you
//! configured) traces a JetStream context on an instrumented [`Client`]'s
//! connection.
//!
//! This module mirrors async-nats's `jetstream`: [`Context`] has every method of
//! theirs, and the submodules [`consumer`] (with `pull` and `push`), [`stream`],
//! [`kv`], [`object_store`], [`message`] and [`context`] re-export everything of
//! async-nats's modules of the same names, with this crate's traced types in
//! place of theirs. Code written against async-nats compiles after changing
//! `use async_nats::jetstream` to `use nats_otel::jetstream`. Where a message
//! moves (publish, consume, KV and Object Store reads, writes and watches) it is
//! traced; management calls pass through with async-nats's own types, and the
//! streams, consumers and buckets they return are traced.
//!
//! # Publishing
//!
//! * Each publish gets a `publish {template}` PRODUCER span that ends when the
//!   server's acknowledgement arrives (or fails, or the [`PublishAckFuture`] is
//!   dropped), recording `messaging.nats.stream`, `messaging.nats.stream.sequence`,
//!   `messaging.message.id` and `messaging.nats.duplicate`.
//! * [`Context::publish_with_id`] sets `Nats-Msg-Id` (the stream drops repeats in
//!   its duplicate window); [`content_id`] derives a deterministic id when you have
//!   none; [`Context::publish_with_retry`] retries transient failures with the same
//!   id, so a retry never stores a second copy.
//! * [`Context::pipeline`] keeps many publishes in flight, bounded, each span ending
//!   at its own ack.
//!
//! # Consuming
//!
//! * Consumers bound or created through this crate (`js.get_stream(..)?
//!   .get_consumer(..)`, `create_consumer_on_stream`, …, or an async-nats
//!   consumer passed to [`Context::consumer`]) are traced. A pull consumer's
//!   `messages()` and `stream()` yield one [`Delivery`] per message with a
//!   `process {template}` CONSUMER span (stream, consumer, sequences, delivery
//!   count, pending, queue wait); each pull of `fetch()`, `batch()` and
//!   `sequence()` adds one `receive {template}` CLIENT span linking every message's
//!   producer, with `messaging.batch.message_count`. Push and ordered consumers'
//!   `messages()` yield the same deliveries.
//! * [`Context::messages`] does the same for any other stream of JetStream
//!   messages.
//! * A [`Delivery`] is the crate's one processing type ([`crate::Delivery`]) around
//!   a traced [`Message`]: `delivery.process(|message| async move { ...;
//!   message.ack().await })` runs the handler in the span and records an `Err`.
//!   Settlement (`ack`, `double_ack`, `nak`, `term`, `progress`, on the delivery or
//!   the message) gets a CLIENT span `{operation} {template}`, child of the process
//!   span, never named after the `$JS.ACK…` reply subject.
//!
//! The template of a consumer's spans is its filter subject (through the subject
//! mapper), or the stream name when it has none or several.
//!
//! # Reliability
//!
//! * [`Worker`] runs a handler with bounded concurrency, `ack` on success, `nak`
//!   with [`Backoff`] on transient failure, dead-letter when attempts run out or the
//!   failure is fatal, `progress` heartbeats, caught panics and graceful shutdown.
//! * [`dead_letter`] copies failures under a disjoint root (`dlq.…`) with reason and
//!   provenance headers, validates the layout, and forwards messages other
//!   consumers gave up on (max-deliveries advisories).
//! * [`dedup`] skips already processed ids: bounded in memory, or shared in KV.

#[macro_use]
mod delegate;

mod backoff;
mod consume;
pub mod consumer;
pub mod dead_letter;
pub mod dedup;
pub mod kv;
mod manage;
pub mod message;
pub mod object_store;
mod publishing;
mod reply;
mod shared;
pub mod stream;
mod worker;

pub use async_nats::jetstream::{account, publish, response, AckKind, Error, ErrorCode};
pub use backoff::Backoff;
pub use consume::{Delivery, Messages};
pub use consumer::{Consumer, PullConsumer};
pub use message::Message;
pub use publishing::{content_id, is_transient, AckHandle, Pipeline, PublishRetry};
pub use worker::{BoxError, HandlerError, Task, Worker, WorkerStats};

/// async-nats's `jetstream::context` module (its error types, `Publish` …), with
/// this crate's traced [`Context`] and [`PublishAckFuture`] in place of theirs.
pub mod context {
    pub use super::{Context, PublishAckFuture};
    pub use async_nats::jetstream::context::*;
}

use std::borrow::Borrow;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use async_nats::jetstream::context::{PublishAckFuture as InnerAckFuture, PublishError};
use async_nats::jetstream::publish::PublishAck;
use async_nats::{HeaderMap, ToSubject};
use bytes::Bytes;
use futures_util::FutureExt;
use opentelemetry::KeyValue;

use crate::instrumentation::Instrumentation;
use crate::operation::{self, Body, Operation};
use crate::telemetry::Telemetry;
use crate::{semconv, Client};

/// Creates a traced JetStream context on `client`'s connection and telemetry.
/// Takes the client by value (as async-nats's `jetstream::new`) or by reference.
pub fn new<C: Borrow<Client>>(client: C) -> Context {
    let client = client.borrow();
    wrap(client, async_nats::jetstream::new(client.inner().clone()))
}

/// Creates a traced JetStream context for JetStream domain `domain`.
pub fn with_domain<C: Borrow<Client>, T: AsRef<str>>(client: C, domain: T) -> Context {
    let client = client.borrow();
    wrap(
        client,
        async_nats::jetstream::with_domain(client.inner().clone(), domain),
    )
}

/// Creates a traced JetStream context whose API subjects start with `prefix`
/// (instead of `$JS.API`).
pub fn with_prefix<C: Borrow<Client>>(client: C, prefix: &str) -> Context {
    let client = client.borrow();
    wrap(
        client,
        async_nats::jetstream::with_prefix(client.inner().clone(), prefix),
    )
}

/// Traces an async-nats JetStream context you configured yourself (domain, API
/// prefix, ack timeout …) on `client`'s telemetry.
pub fn wrap(client: &Client, inner: async_nats::jetstream::Context) -> Context {
    Context {
        inner,
        client: client.clone(),
        telemetry: client.telemetry().clone(),
        events: client.events(),
        outgoing: client.outgoing(),
    }
}

/// A traced JetStream context. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Context {
    inner: async_nats::jetstream::Context,
    client: Client,
    telemetry: Telemetry,
    events: Option<Arc<crate::health::EventCounters>>,
    /// What is done to the payloads this context publishes.
    outgoing: crate::compression::Outgoing,
}

impl Context {
    /// This context, compressing what it publishes with `compression` (or not at
    /// all with `None`); by default it compresses as the client it was made from.
    #[cfg(feature = "compression")]
    pub fn with_compression(
        mut self,
        compression: Option<crate::compression::Compression>,
    ) -> Self {
        self.outgoing = crate::compression::Outgoing::compressing(compression);
        self
    }

    /// The untraced async-nats context (stream and consumer management).
    pub fn inner(&self) -> &async_nats::jetstream::Context {
        &self.inner
    }

    /// The telemetry settings of this context.
    pub fn instrumentation(&self) -> &Instrumentation {
        self.telemetry.inst()
    }

    /// This connection's telemetry.
    pub(crate) fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// The untraced client of this context's connection.
    pub(crate) fn raw_client(&self) -> async_nats::Client {
        self.inner.client()
    }

    /// Traces an async-nats pull consumer you already have.
    pub fn pull_consumer(
        &self,
        consumer: async_nats::jetstream::consumer::PullConsumer,
    ) -> PullConsumer {
        self.consumer(consumer)
    }

    /// Traces any async-nats consumer you already have (pull, push, ordered).
    pub fn consumer<T: consumer::IntoConsumerConfig>(
        &self,
        consumer: async_nats::jetstream::consumer::Consumer<T>,
    ) -> Consumer<T> {
        Consumer::new(consumer, self.telemetry.clone())
    }

    /// Traces any stream of JetStream messages (a push or ordered consumer's
    /// `messages()`), naming spans after the consumer described by `info`.
    pub fn messages<S>(
        &self,
        info: &async_nats::jetstream::consumer::Info,
        stream: S,
    ) -> Messages<S> {
        let shared = shared::ConsumerShared::new(self.telemetry.clone(), info);
        Messages::new(stream, shared)
    }

    /// Publishes to a stream's subject. Await the returned future for the PubAck;
    /// the span covers both.
    pub async fn publish<S: ToSubject>(
        &self,
        subject: S,
        payload: Bytes,
    ) -> Result<PublishAckFuture, PublishError> {
        if self.passthrough() {
            let inner = self.inner.publish(subject, payload).await?;
            return Ok(PublishAckFuture::untraced(inner));
        }
        Box::pin(self.send_traced(subject.to_subject(), None, payload)).await
    }

    /// Publishes with headers; trace context is added to them.
    pub async fn publish_with_headers<S: ToSubject>(
        &self,
        subject: S,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<PublishAckFuture, PublishError> {
        Box::pin(self.send_traced(subject.to_subject(), Some(headers), payload)).await
    }

    /// Publishes a message built with async-nats's
    /// [`PublishMessage`](message::PublishMessage) (message id, expected last
    /// sequence or id, expected stream, TTL …); trace context is added to its
    /// headers.
    pub async fn send_publish<S: ToSubject>(
        &self,
        subject: S,
        publish: message::PublishMessage,
    ) -> Result<PublishAckFuture, PublishError> {
        if self.passthrough() {
            let inner = self.inner.send_publish(subject, publish).await?;
            return Ok(PublishAckFuture::untraced(inner));
        }
        let subject = subject.to_subject();
        let message = publish.outbound_message(subject.clone());
        Box::pin(self.send_traced(subject, message.headers, message.payload)).await
    }

    /// Publishes with a `Nats-Msg-Id`, so the stream drops repeats within its
    /// duplicate window (the ack then reports `duplicate`). An id NATS cannot carry
    /// in a header (CR/LF) is an error, not a panic.
    pub async fn publish_with_id<S: ToSubject>(
        &self,
        subject: S,
        message_id: &str,
        payload: Bytes,
    ) -> Result<PublishAckFuture, PublishError> {
        self.send_with_id(subject.to_subject(), message_id, None, payload)
            .await
    }

    pub(crate) async fn send_with_id(
        &self,
        subject: async_nats::Subject,
        message_id: &str,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<PublishAckFuture, PublishError> {
        let value: async_nats::HeaderValue = message_id.parse().map_err(|e| {
            PublishError::with_source(async_nats::jetstream::context::PublishErrorKind::Other, e)
        })?;
        let mut headers = headers.unwrap_or_default();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, value);
        self.send_traced(subject, Some(headers), payload).await
    }

    /// The traced publish. The span is started and the headers are built
    /// synchronously, so the returned future holds only async-nats's publish,
    /// the span and the timer (it is boxed per message: small enough for the
    /// allocator's per-thread cache).
    /// [`send_traced`](Self::send_traced), or straight to async-nats when this
    /// crate has nothing to do ([`passthrough`](Self::passthrough)), as
    /// [`publish`](Self::publish) does.
    pub(crate) async fn send_or_pass(
        &self,
        subject: async_nats::Subject,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<PublishAckFuture, PublishError> {
        if self.passthrough() {
            let inner = match headers {
                Some(headers) => {
                    self.inner
                        .publish_with_headers(subject, headers, payload)
                        .await?
                }
                None => self.inner.publish(subject, payload).await?,
            };
            return Ok(PublishAckFuture::untraced(inner));
        }
        self.send_traced(subject, headers, payload).await
    }

    pub(crate) fn send_traced(
        &self,
        subject: async_nats::Subject,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> impl Future<Output = Result<PublishAckFuture, PublishError>> + Send + '_ {
        self.send_traced_linked(subject, headers, payload, Vec::new())
    }

    /// [`send_traced`](Self::send_traced) with `links` on the `publish` span.
    pub(crate) fn send_traced_linked(
        &self,
        subject: async_nats::Subject,
        headers: Option<HeaderMap>,
        payload: Bytes,
        links: Vec<opentelemetry::trace::Link>,
    ) -> impl Future<Output = Result<PublishAckFuture, PublishError>> + Send + '_ {
        let (headers, payload, compressed) = self.outgoing.prepare(headers, payload);
        let telemetry = &self.telemetry;
        // Room for the ack's stream, sequence and duplicate flag too.
        let op = telemetry.start_send_linked(
            operation::PUBLISH,
            subject.as_str(),
            headers.as_ref(),
            Body::sent(payload.len(), compressed),
            8,
            links,
        );
        let headers = match op.context() {
            Some(cx) => Some(self.injected(cx, headers)),
            None => match telemetry.inst().ambient_context() {
                Some(ambient) => Some(self.injected(&ambient, headers)),
                None => headers,
            },
        };
        let mut message = async_nats::jetstream::message::PublishMessage::build().payload(payload);
        if let Some(headers) = headers.filter(|h| !h.is_empty()) {
            message = message.headers(headers);
        }
        // When the server refuses the subject, the ack never comes: remember what to
        // look for if it times out.
        let refusal = self
            .events
            .clone()
            .map(|events| (events, subject.clone(), std::time::Instant::now()));
        let span = AckSpan { op, refusal };
        self.inner
            .send_publish(subject, message)
            .map(move |result| match result {
                Ok(inner) => Ok(PublishAckFuture { inner, span }),
                Err(err) => {
                    span.fail(&err);
                    Err(err)
                }
            })
    }
}

impl Context {
    /// Whether a publish needs nothing from this crate (no span, no metric, no
    /// caller's trace to propagate).
    fn passthrough(&self) -> bool {
        let inst = self.telemetry.inst();
        self.outgoing.is_plain()
            && !inst.tracing_enabled()
            && !inst.metrics_enabled()
            && !inst.has_ambient_span()
    }

    fn injected(&self, cx: &opentelemetry::Context, headers: Option<HeaderMap>) -> HeaderMap {
        let mut headers = headers.unwrap_or_default();
        self.telemetry.inst().inject(cx, &mut headers);
        headers
    }
}

/// The publish operation, ended with what the ack says (or, dropped before the
/// ack, with the message counted and its outcome unknown).
struct AckSpan {
    op: Operation,
    refusal: Option<(
        Arc<crate::health::EventCounters>,
        async_nats::Subject,
        std::time::Instant,
    )>,
}

impl std::fmt::Debug for AckSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckSpan").finish_non_exhaustive()
    }
}

impl AckSpan {
    /// `err`, or a [`PermissionViolation`](crate::PermissionViolation) when the
    /// server refused this publish's subject since it was sent.
    fn explain(&self, err: PublishError) -> PublishError {
        match &self.refusal {
            Some((events, subject, since)) if events.refused_since(subject.as_str(), *since) => {
                PublishError::with_source(
                    async_nats::jetstream::context::PublishErrorKind::Other,
                    crate::error::PermissionViolation {
                        subject: subject.to_string(),
                    },
                )
            }
            _ => err,
        }
    }

    fn fail(self, err: &PublishError) {
        self.op.fail(&crate::error::refusal_or_kind(err), err);
    }

    fn acked(self, ack: &PublishAck) {
        self.op.record(|a| {
            a.extend([
                KeyValue::new(semconv::MESSAGING_NATS_STREAM, ack.stream.clone()),
                KeyValue::new(
                    semconv::MESSAGING_NATS_STREAM_SEQUENCE,
                    i64::try_from(ack.sequence).unwrap_or(i64::MAX),
                ),
                KeyValue::new(semconv::MESSAGING_NATS_DUPLICATE, ack.duplicate),
            ])
        });
        self.op.succeed();
    }
}

/// The pending acknowledgement of a traced JetStream publish; `.await` it for the
/// [`PublishAck`]. Dropping it without awaiting ends the span with no ack recorded.
#[derive(Debug)]
pub struct PublishAckFuture {
    inner: InnerAckFuture,
    span: AckSpan,
}

impl PublishAckFuture {
    /// An ack future with nothing of this crate's to record.
    fn untraced(inner: InnerAckFuture) -> Self {
        Self {
            inner,
            span: AckSpan {
                op: Operation::none(),
                refusal: None,
            },
        }
    }
}

impl IntoFuture for PublishAckFuture {
    type Output = Result<PublishAck, PublishError>;
    type IntoFuture = AckFuture;

    fn into_future(self) -> Self::IntoFuture {
        AckFuture {
            inner: self.inner.into_future(),
            span: Some(self.span),
        }
    }
}

/// The future of a [`PublishAckFuture`]: resolves to the [`PublishAck`], ending
/// the publish span with what the ack says.
pub struct AckFuture {
    inner: <InnerAckFuture as IntoFuture>::IntoFuture,
    span: Option<AckSpan>,
}

impl std::fmt::Debug for AckFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckFuture").finish_non_exhaustive()
    }
}

impl Future for AckFuture {
    type Output = Result<PublishAck, PublishError>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let result = std::task::ready!(self.inner.as_mut().poll(cx));
        let Some(span) = self.span.take() else {
            return std::task::Poll::Ready(result);
        };
        let result = result.map_err(|err| span.explain(err));
        match &result {
            Ok(ack) => span.acked(ack),
            Err(err) => span.fail(err),
        }
        std::task::Poll::Ready(result)
    }
}
