//! The instrumented client: async-nats's `Client` API, traced.

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use async_nats::client::traits::Publisher;
use async_nats::client::{PublishError, Request, RequestError, SubscribeError};
use async_nats::message::OutboundMessage;
use async_nats::{HeaderMap, Message, Subject, ToSubject};
use bytes::Bytes;
use futures_util::FutureExt;
use opentelemetry::{Context, KeyValue};

use crate::compression::{Outgoing, Prepared};
use crate::error::{error_type, refusal_or_kind};
use crate::instrumentation::Instrumentation;
use crate::operation::{self, Body, Operation};
use crate::semconv;
use crate::subscriber::Subscriber;
use crate::telemetry::{Host, Telemetry};

mod connection;
pub(crate) mod node;

use node::ServerNode;

pub use connection::{PingError, PingErrorKind};

/// An instrumented NATS client.
///
/// Same method names, argument types and error types as [`async_nats::Client`];
/// every publish and request gets a PRODUCER span and carries its trace context in
/// the message headers, and [`subscribe`](Self::subscribe) yields messages with a
/// `process` span each. [`inner`](Self::inner) is the escape hatch to the
/// untraced client. Cloning is cheap and shares the connection.
#[derive(Clone, Debug)]
pub struct Client {
    inner: async_nats::Client,
    telemetry: Telemetry,
    // Keeps the health callbacks reporting while any clone of this client lives.
    _health: Option<Arc<crate::health::Health>>,
    // Connection events, when connected through an event callback of ours.
    events: Option<Arc<crate::health::EventCounters>>,
    /// What is done to the payloads this client publishes.
    outgoing: Outgoing,
}

impl Client {
    /// Wraps an already connected client.
    ///
    /// `server.address`/`server.port` come from the server's INFO here; prefer
    /// [`connect`](crate::connect)/[`Instrumentation::connect`], which record the address you
    /// connected to.
    pub fn new(inner: async_nats::Client, instrumentation: Instrumentation) -> Self {
        Self::build(inner, instrumentation, None, None)
    }

    pub(crate) fn build(
        inner: async_nats::Client,
        inst: Instrumentation,
        address: Option<(String, u16)>,
        events: Option<Arc<crate::health::EventCounters>>,
    ) -> Self {
        let info = inner.server_info();
        let address = address.or_else(|| {
            let unspecified = info.host.is_empty() || info.host == "0.0.0.0" || info.host == "::";
            (!unspecified).then(|| (info.host.clone(), info.port))
        });
        let server = address.map(|(host, port)| {
            // Interned (or else shared), so each span's copy is cheap.
            let host = match crate::names::static_str(&host) {
                Some(host) => Host::Static(host),
                None => Host::Shared(Arc::from(host)),
            };
            (host, i64::from(port))
        });
        let node = Arc::new(ServerNode::new(inner.clone()));
        let telemetry = Telemetry::new(inst, server, Some(node));
        if let (Some(instruments), Some(events)) = (telemetry.inst().instruments(), &events) {
            events.dropped().enable(
                instruments.dropped_messages.clone(),
                telemetry.connection().clone(),
            );
        }
        let health = telemetry.inst().metrics_enabled().then(|| {
            let mut attributes = telemetry.connection().to_vec();
            attributes.extend(telemetry.client_id());
            telemetry
                .inst()
                .health()
                .register(inner.clone(), events.clone(), attributes)
        });
        Self {
            inner,
            telemetry,
            _health: health,
            events,
            outgoing: Outgoing::default(),
        }
    }

    /// The connection's events, when this client receives them.
    pub(crate) fn events(&self) -> Option<Arc<crate::health::EventCounters>> {
        self.events.clone()
    }

    /// This connection's telemetry.
    pub(crate) fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// What is done to the payloads this client publishes.
    pub(crate) fn outgoing(&self) -> Outgoing {
        self.outgoing
    }

    /// This client, compressing the payloads it publishes (core NATS and JetStream
    /// contexts made from it) with `compression`, or not at all with `None`.
    /// Requests are not compressed. Clones share the connection.
    #[cfg(feature = "compression")]
    pub fn with_compression(
        mut self,
        compression: Option<crate::compression::Compression>,
    ) -> Self {
        self.outgoing = Outgoing::compressing(compression);
        self
    }

    /// The compression this client applies to what it publishes.
    #[cfg(feature = "compression")]
    pub fn compression(&self) -> Option<crate::compression::Compression> {
        self.outgoing.compression()
    }

    fn with_publish_time(&self, headers: Option<HeaderMap>) -> Option<HeaderMap> {
        if !self.telemetry.inst().publish_time_header() {
            return headers;
        }
        let mut headers = headers.unwrap_or_default();
        headers.insert(
            crate::metrics::PUBLISHED_HEADER,
            crate::metrics::now_unix_nanos().to_string().as_str(),
        );
        Some(headers)
    }

    /// Whether an operation needs nothing from this crate: no span, no metric, no
    /// publish-time header and no caller's trace to propagate. Such calls go
    /// straight to async-nats, without even this crate's future around them.
    fn passthrough(&self) -> bool {
        let inst = self.telemetry.inst();
        self.outgoing.is_plain()
            && !inst.tracing_enabled()
            && !inst.metrics_enabled()
            && !inst.publish_time_header()
            && !inst.has_ambient_span()
    }

    /// [`passthrough`](Self::passthrough) for a publish to `subject`, which the
    /// span filter or the `publish` switch may also leave untraced.
    fn passthrough_publish(&self, subject: &str) -> bool {
        let inst = self.telemetry.inst();
        self.outgoing.is_plain()
            && inst.never_traces_publish(subject)
            && !inst.metrics_enabled()
            && !inst.publish_time_header()
            && !inst.has_ambient_span()
    }

    /// The untraced async-nats client.
    pub fn inner(&self) -> &async_nats::Client {
        &self.inner
    }

    /// Unwraps the untraced async-nats client.
    pub fn into_inner(self) -> async_nats::Client {
        self.inner
    }

    /// The telemetry settings of this client.
    pub fn instrumentation(&self) -> &Instrumentation {
        self.telemetry.inst()
    }

    /// Publishes `payload` to `subject` (a `publish <template>` span).
    pub async fn publish<S: ToSubject>(
        &self,
        subject: S,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        let subject = subject.to_subject();
        if self.passthrough_publish(subject.as_str()) {
            return self.inner.publish(subject, payload).await;
        }
        self.send(subject, None, None, payload).await
    }

    /// Publishes with headers; trace context is added to them.
    pub async fn publish_with_headers<S: ToSubject>(
        &self,
        subject: S,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        let subject = subject.to_subject();
        if self.passthrough_publish(subject.as_str()) {
            return self
                .inner
                .publish_with_headers(subject, headers, payload)
                .await;
        }
        self.send(subject, None, Some(headers), payload).await
    }

    /// Publishes with a reply subject, without waiting for a response.
    pub async fn publish_with_reply<S: ToSubject, R: ToSubject>(
        &self,
        subject: S,
        reply: R,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        if self.passthrough() {
            return self.inner.publish_with_reply(subject, reply, payload).await;
        }
        self.send(
            subject.to_subject(),
            Some(reply.to_subject()),
            None,
            payload,
        )
        .await
    }

    /// Publishes with a reply subject and headers, without waiting for a response.
    pub async fn publish_with_reply_and_headers<S: ToSubject, R: ToSubject>(
        &self,
        subject: S,
        reply: R,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        if self.passthrough() {
            return self
                .inner
                .publish_with_reply_and_headers(subject, reply, headers, payload)
                .await;
        }
        self.send(
            subject.to_subject(),
            Some(reply.to_subject()),
            Some(headers),
            payload,
        )
        .await
    }

    /// Sends a request and awaits its reply inside one `request <template>` span.
    pub async fn request<S: ToSubject>(
        &self,
        subject: S,
        payload: Bytes,
    ) -> Result<Message, RequestError> {
        self.send_request(subject, Request::new().payload(payload))
            .await
    }

    /// Sends a request with headers; trace context is added to them.
    pub async fn request_with_headers<S: ToSubject>(
        &self,
        subject: S,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<Message, RequestError> {
        self.send_request(subject, Request::new().headers(headers).payload(payload))
            .await
    }

    /// Sends a [`Request`] (custom timeout, inbox, headers) inside one
    /// `request <template>` span. Failures (`no_responders`, `timed_out`, …) set
    /// `error.type` and an error status, and the original error is returned.
    pub async fn send_request<S: ToSubject>(
        &self,
        subject: S,
        request: Request,
    ) -> Result<Message, RequestError> {
        if self.passthrough() {
            return self.inner.send_request(subject, request).await;
        }
        Box::pin(self.send_request_traced(subject.to_subject(), request)).await
    }

    /// The traced request: name, timer, span and headers are prepared
    /// synchronously; the future holds the request itself and the operation.
    fn send_request_traced(
        &self,
        subject: Subject,
        mut request: Request,
    ) -> impl Future<Output = Result<Message, RequestError>> + Send + '_ {
        let telemetry = &self.telemetry;
        let op = telemetry.start_send(
            operation::REQUEST,
            subject.as_str(),
            request.headers.as_ref(),
            Body::plain(request.payload.as_ref().map_or(0, Bytes::len)),
            4,
        );
        if let Some(cx) = self.context_to_inject(&op) {
            let had_headers = request.headers.is_some();
            let headers = request.headers.get_or_insert_with(HeaderMap::new);
            telemetry.inst().inject(&cx, headers);
            // A no-op tracer yields no context to inject: keep the cheaper PUB path.
            if !had_headers && headers.is_empty() {
                request.headers = None;
            }
        }
        let body_size = telemetry.inst().body_size_enabled();
        self.request_or_refused(subject, request)
            .map(move |result| {
                match &result {
                    Ok(reply) => {
                        if body_size {
                            op.record(|a| {
                                a.push(KeyValue::new(
                                    semconv::MESSAGING_NATS_REPLY_BODY_SIZE,
                                    reply.payload.len() as i64,
                                ))
                            });
                        }
                        op.succeed();
                    }
                    Err(err) => op.fail(&refusal_or_kind(err), err),
                }
                result
            })
    }

    /// The context a message carries: the operation's span, or the caller's when
    /// nothing of ours is traced.
    fn context_to_inject<'a>(&self, op: &'a Operation) -> Option<Cow<'a, Context>> {
        match op.context() {
            Some(cx) => Some(Cow::Borrowed(cx)),
            None => self.telemetry.inst().ambient_context().map(Cow::Owned),
        }
    }

    /// Sends `request`, failing fast when the server refuses its subject (seen
    /// when this client receives the connection's events).
    async fn request_or_refused(
        &self,
        subject: Subject,
        request: Request,
    ) -> Result<Message, RequestError> {
        let Some(events) = &self.events else {
            return self.inner.send_request(subject, request).await;
        };
        let mut refused = events.violations();
        let wanted = subject.as_str().to_owned();
        let send = self.inner.send_request(subject, request);
        tokio::pin!(send);
        loop {
            tokio::select! {
                result = &mut send => return result,
                seen = refused.recv() => match seen {
                    Ok(denied) if *denied == *wanted => {
                        return Err(RequestError::with_source(
                            async_nats::client::RequestErrorKind::Other,
                            crate::error::PermissionViolation { subject: wanted },
                        ));
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    // No more events: just wait for the request.
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        return send.await;
                    }
                },
            }
        }
    }

    /// Subscribes to `subject` (wildcards allowed). The subscription pattern is the
    /// template of every `process` span.
    pub async fn subscribe<S: ToSubject>(&self, subject: S) -> Result<Subscriber, SubscribeError> {
        let subject = subject.to_subject();
        let inner = self.inner.subscribe(subject.clone()).await?;
        Ok(Subscriber::new(
            inner,
            &subject,
            None,
            self.telemetry.clone(),
            self.events.as_ref(),
        ))
    }

    /// Subscribes as a member of `queue_group`; the group is recorded as
    /// `messaging.consumer.group.name`.
    pub async fn queue_subscribe<S: ToSubject>(
        &self,
        subject: S,
        queue_group: String,
    ) -> Result<Subscriber, SubscribeError> {
        let subject = subject.to_subject();
        let inner = self
            .inner
            .queue_subscribe(subject.clone(), queue_group.clone())
            .await?;
        Ok(Subscriber::new(
            inner,
            &subject,
            Some(queue_group),
            self.telemetry.clone(),
            self.events.as_ref(),
        ))
    }

    /// A publish with something of this crate's to do. The span is started and
    /// the headers are built before anything is awaited. When the operation has
    /// nothing left to record (an unsampled span, metrics off), it ends there and
    /// the message goes out like an untraced one; otherwise the publish and the
    /// operation are boxed together (see [`traced`](Self::traced)).
    async fn send(
        &self,
        subject: Subject,
        reply: Option<Subject>,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<(), PublishError> {
        let (message, op) = self.prepare(subject, reply, headers, payload);
        if op.is_inert() {
            drop(op);
            return Publisher::publish_message(&self.inner, message).await;
        }
        Box::pin(self.traced(message, op)).await
    }

    /// The span (and timer) of a publish of `payload` to `subject`, and the
    /// message carrying its context.
    fn prepare(
        &self,
        subject: Subject,
        reply: Option<Subject>,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> (OutboundMessage, Operation) {
        let telemetry = &self.telemetry;
        let headers = self.with_publish_time(headers);
        let (headers, payload, compressed): Prepared = self.outgoing.prepare(headers, payload);
        let op = telemetry.start_send(
            operation::PUBLISH,
            subject.as_str(),
            headers.as_ref(),
            Body::sent(payload.len(), compressed),
            4,
        );
        let headers = match self.context_to_inject(&op) {
            Some(cx) => {
                let had_headers = headers.is_some();
                let injected = self.injected(&cx, headers);
                // A no-op tracer yields no context to inject: keep the cheaper PUB path.
                (had_headers || !injected.is_empty()).then_some(injected)
            }
            None => headers,
        };
        let message = OutboundMessage {
            subject,
            reply,
            payload,
            headers,
        };
        (message, op)
    }

    /// The publish of `message`, ending `op` with its outcome. Boxed per message
    /// by [`send`](Self::send): keep it small, since allocations above ~1 KiB miss
    /// the allocator's per-thread cache.
    fn traced(
        &self,
        message: OutboundMessage,
        op: Operation,
    ) -> impl Future<Output = Result<(), PublishError>> + Send + '_ {
        // `map`, not an async block: a block would hold the publish future twice.
        Publisher::publish_message(&self.inner, message).map(move |result| {
            op.finish(&result, |err| error_type(&err.kind()));
            result
        })
    }

    fn injected(&self, cx: &Context, headers: Option<HeaderMap>) -> HeaderMap {
        let mut headers = headers.unwrap_or_default();
        self.telemetry.inst().inject(cx, &mut headers);
        headers
    }
}

#[cfg(test)]
mod tests {
    /// glibc serves allocations of up to 1032-byte chunks (requests of about
    /// 1016 bytes) from a lock-free per-thread cache; larger ones take the arena
    /// lock, which the connection task contends for when it frees headers. The
    /// traced publish futures are boxed once per message, so they must fit.
    const PER_THREAD_CACHE_LIMIT: usize = 1016;

    #[tokio::test]
    async fn traced_publish_futures_fit_the_allocators_per_thread_cache() {
        // No server is needed: the futures are built, never polled.
        let raw = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:9")
            .await
            .expect("connect with retry returns at once");
        let client = super::Client::new(raw, crate::Instrumentation::builder().build());
        let (message, op) = client.prepare("a".into(), None, None, bytes::Bytes::new());
        let publish = client.traced(message, op);
        assert!(
            std::mem::size_of_val(&publish) <= PER_THREAD_CACHE_LIMIT,
            "core publish future is {} bytes",
            std::mem::size_of_val(&publish)
        );
        let js = crate::jetstream::new(&client);
        let js_publish = js.send_traced("a".into(), None, bytes::Bytes::new());
        assert!(
            std::mem::size_of_val(&js_publish) <= PER_THREAD_CACHE_LIMIT,
            "JetStream publish future is {} bytes",
            std::mem::size_of_val(&js_publish)
        );
    }
}
