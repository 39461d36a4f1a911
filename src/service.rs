//! The NATS Service API (`async_nats::service`), traced.
//!
//! [`Client::service_builder`] starts a service whose endpoints yield a
//! [`Delivery`]`<`[`Request`]`>` per request, with a `process {template}` span (the
//! template of the endpoint's subject) that is a child of the caller's context (a
//! traced `request` on the other side makes one unbroken trace) and carries the
//! service's name, version and endpoint as `messaging.nats.service.*`. Replies
//! carry the process span's context in their headers, and `respond(Err(..))`
//! marks the span and `messaging.process.duration` as failed with the service
//! error code as `error.type` (`"503"`). `$SRV.PING`, `$SRV.INFO` and
//! `$SRV.STATS` are async-nats's own and keep working, including request and error
//! counts.
//!
//! The span kind is CONSUMER, like every other `process` span here: the caller's
//! side is a messaging `request` (PRODUCER) and the conventions pair it with a
//! consumer, so service traffic reads the same as any request/reply.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use async_nats::client::PublishError;
use async_nats::service::{self, ServiceExt as _};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::Stream;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::KeyValue;

use crate::delivery::{Delivery, ProcessSpan};
use crate::operation::{Body, Processing};
use crate::telemetry::Telemetry;
use crate::{semconv, Client};

/// async-nats's default queue group for service endpoints.
const DEFAULT_QUEUE_GROUP: &str = "q";

impl Client {
    /// Starts building a traced service on this connection.
    pub fn service_builder(&self) -> ServiceBuilder {
        ServiceBuilder {
            inner: self.inner().service_builder(),
            client: self.clone(),
            queue_group: None,
        }
    }
}

/// Builds a traced [`Service`]; mirrors `async_nats::service::ServiceBuilder`.
#[must_use]
pub struct ServiceBuilder {
    inner: service::ServiceBuilder,
    client: Client,
    queue_group: Option<String>,
}

impl fmt::Debug for ServiceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceBuilder")
            .field("queue_group", &self.queue_group)
            .finish_non_exhaustive()
    }
}

impl ServiceBuilder {
    /// A human-readable description.
    pub fn description<S: ToString>(mut self, description: S) -> Self {
        self.inner = self.inner.description(description);
        self
    }

    /// Metadata reported by `$SRV.INFO`.
    pub fn metadata(mut self, metadata: HashMap<String, String>) -> Self {
        self.inner = self.inner.metadata(metadata);
        self
    }

    /// The queue group of the service's endpoints (default `q`).
    pub fn queue_group<S: ToString>(mut self, queue_group: S) -> Self {
        let queue_group = queue_group.to_string();
        self.inner = self.inner.queue_group(&queue_group);
        self.queue_group = Some(queue_group);
        self
    }

    /// Starts the service. An invalid name (only `A-Z a-z 0-9 _ -`) or a version
    /// that is not semver is an error.
    pub async fn start<N: ToString, V: ToString>(
        self,
        name: N,
        version: V,
    ) -> Result<Service, async_nats::Error> {
        let name = name.to_string();
        let version = version.to_string();
        let inner = self.inner.start(&name, &version).await?;
        Ok(Service {
            inner,
            shared: Arc::new(ServiceShared {
                telemetry: self.client.telemetry().clone(),
                name,
                version,
            }),
            queue_group: self
                .queue_group
                .unwrap_or_else(|| DEFAULT_QUEUE_GROUP.to_owned()),
        })
    }
}

struct ServiceShared {
    telemetry: Telemetry,
    name: String,
    version: String,
}

/// A running traced service.
pub struct Service {
    inner: service::Service,
    shared: Arc<ServiceShared>,
    queue_group: String,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.shared.name)
            .field("version", &self.shared.version)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// The untraced async-nats service.
    pub fn inner(&self) -> &service::Service {
        &self.inner
    }

    /// Adds an endpoint listening on `subject` (also its name).
    pub async fn endpoint<S: ToString>(&self, subject: S) -> Result<Endpoint, async_nats::Error> {
        let subject = subject.to_string();
        let inner = self.inner.endpoint(&subject).await?;
        Ok(self.wrap(inner, &subject, &subject, None, &self.queue_group))
    }

    /// Adds an endpoint named `name` on `subject` with its own queue group.
    pub async fn endpoint_with<S: ToString>(
        &self,
        name: &str,
        subject: S,
        queue_group: Option<&str>,
    ) -> Result<Endpoint, async_nats::Error> {
        let subject = subject.to_string();
        let mut builder = self.inner.endpoint_builder().name(name);
        if let Some(queue_group) = queue_group {
            builder = builder.queue_group(queue_group);
        }
        let inner = builder.add(&subject).await?;
        let queue_group = queue_group.unwrap_or(&self.queue_group).to_owned();
        Ok(self.wrap(inner, name, &subject, None, &queue_group))
    }

    /// Endpoints under a common subject prefix.
    pub fn group<S: ToString>(&self, prefix: S) -> Group {
        let prefix = prefix.to_string();
        Group {
            inner: self.inner.group(&prefix),
            service: self.shallow(),
            prefix,
            queue_group: self.queue_group.clone(),
        }
    }

    /// Stops the service and its endpoints.
    pub async fn stop(self) -> Result<(), async_nats::Error> {
        self.inner.stop().await
    }

    fn shallow(&self) -> ServiceRef {
        ServiceRef {
            shared: self.shared.clone(),
        }
    }

    fn wrap(
        &self,
        inner: service::endpoint::Endpoint,
        name: &str,
        subject: &str,
        group: Option<&str>,
        queue_group: &str,
    ) -> Endpoint {
        self.shallow()
            .wrap(inner, name, subject, group, queue_group)
    }
}

struct ServiceRef {
    shared: Arc<ServiceShared>,
}

impl ServiceRef {
    fn wrap(
        &self,
        inner: service::endpoint::Endpoint,
        name: &str,
        subject: &str,
        group: Option<&str>,
        queue_group: &str,
    ) -> Endpoint {
        let shared = &self.shared;
        let telemetry = &shared.telemetry;
        let queue_group = crate::names::attribute_value(queue_group);
        let processing =
            telemetry.processing(&telemetry.inst().template(subject), Some(queue_group));
        let mut attributes = vec![
            KeyValue::new(semconv::MESSAGING_NATS_SERVICE_NAME, shared.name.clone()),
            KeyValue::new(
                semconv::MESSAGING_NATS_SERVICE_VERSION,
                shared.version.clone(),
            ),
            KeyValue::new(semconv::MESSAGING_NATS_SERVICE_ENDPOINT, name.to_owned()),
        ];
        if let Some(group) = group {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_NATS_SERVICE_GROUP,
                group.to_owned(),
            ));
        }
        Endpoint {
            inner,
            shared: shared.clone(),
            processing,
            attributes: attributes.into(),
        }
    }
}

/// Endpoints under a common prefix; mirrors `async_nats::service::Group`.
pub struct Group {
    inner: service::Group,
    service: ServiceRef,
    prefix: String,
    queue_group: String,
}

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Group {
    /// Adds an endpoint on `{prefix}.{subject}`, named `subject`.
    pub async fn endpoint<S: ToString>(&self, subject: S) -> Result<Endpoint, async_nats::Error> {
        let subject = subject.to_string();
        let inner = self.inner.endpoint(&subject).await?;
        let full = format!("{}.{subject}", self.prefix);
        Ok(self.service.wrap(
            inner,
            &subject,
            &full,
            Some(&self.prefix),
            &self.queue_group,
        ))
    }

    /// A nested group on `{prefix}.{sub}`.
    pub fn group<S: ToString>(&self, sub: S) -> Group {
        let sub = sub.to_string();
        Group {
            inner: self.inner.group(&sub),
            service: ServiceRef {
                shared: self.service.shared.clone(),
            },
            prefix: format!("{}.{sub}", self.prefix),
            queue_group: self.queue_group.clone(),
        }
    }
}

/// A stream of requests to one endpoint, each a [`Delivery`] with its `process`
/// span.
pub struct Endpoint {
    inner: service::endpoint::Endpoint,
    shared: Arc<ServiceShared>,
    processing: Processing,
    /// The service's attributes on every recording span.
    attributes: Arc<[KeyValue]>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("template", &self.processing.template())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Stops this endpoint.
    pub async fn stop(&mut self) -> Result<(), std::io::Error> {
        self.inner.stop().await
    }

    fn request(&self, request: service::Request) -> Delivery<Request> {
        let telemetry = &self.shared.telemetry;
        let message = &request.message;
        let mut span = telemetry.start_process(
            &self.processing,
            Some(message.subject.as_str()),
            message.headers.as_ref(),
            Some(message),
            None,
            8,
            |a| {
                a.extend_from_slice(&self.attributes);
                telemetry.push_message_attributes(
                    a,
                    message.headers.as_ref(),
                    Body::plain(message.payload.len()),
                );
            },
        );
        let request = Request {
            inner: request,
            telemetry: telemetry.clone(),
            span: span.share(),
        };
        Delivery::new(request, span)
    }
}

impl Stream for Endpoint {
    type Item = Delivery<Request>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Delivery<Request>>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(request)) => Poll::Ready(Some(self.request(request))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// One service request, answered with [`respond`](Self::respond). Endpoints hand
/// it out inside a [`Delivery`] (its `process` span); it dereferences to the
/// request message.
pub struct Request {
    inner: service::Request,
    telemetry: Telemetry,
    /// The delivery's span, to answer inside it.
    span: ProcessSpan,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("subject", &self.inner.message.subject)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Request {
    type Target = async_nats::Message;

    fn deref(&self) -> &async_nats::Message {
        &self.inner.message
    }
}

impl Request {
    /// The untraced async-nats request.
    pub fn inner(&self) -> &service::Request {
        &self.inner
    }

    /// Replies, with the process span's context in the reply headers. An `Err`
    /// marks the span and `messaging.process.duration` as failed (`error.type` =
    /// the service error code) and is counted by `$SRV.STATS`.
    pub async fn respond(
        &self,
        response: Result<Bytes, service::error::Error>,
    ) -> Result<(), PublishError> {
        self.respond_with_headers(response, HeaderMap::new()).await
    }

    /// [`respond`](Self::respond) with headers of your own.
    pub async fn respond_with_headers(
        &self,
        response: Result<Bytes, service::error::Error>,
        mut headers: HeaderMap,
    ) -> Result<(), PublishError> {
        let context = self.span.context();
        if let Err(err) = &response {
            let span = context.span();
            if span.is_recording() {
                span.set_attribute(KeyValue::new(
                    semconv::MESSAGING_NATS_SERVICE_ERROR_CODE,
                    i64::try_from(err.code).unwrap_or(i64::MAX),
                ));
            }
            self.span.fail(&err.code.to_string(), &err.status, false);
        }
        if context.span().span_context().is_valid() {
            self.telemetry.inst().inject(context, &mut headers);
        }
        self.inner.respond_with_headers(response, headers).await
    }
}
