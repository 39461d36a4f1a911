//! OpenTelemetry for NATS on the official `async-nats` client.
//!
//! A drop-in instrumented [`Client`]: the same methods, argument and error types as
//! [`async_nats::Client`], emitting spans that follow the OpenTelemetry messaging
//! semantic conventions and carrying W3C trace context in NATS headers, so one
//! trace follows a message across services and languages.
//!
//! # Quick start
//!
//! ```no_run
//! use futures_util::StreamExt;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), async_nats::Error> {
//! // Install your tracer provider and propagator first (e.g. `nats_otel::otlp::init()`).
//! let client = nats_otel::connect("nats://127.0.0.1:4222").await?;
//! let mut orders = client.subscribe("orders.*").await?;
//! client.publish("orders.created", "{\"id\":42}".into()).await?;
//!
//! if let Some(delivery) = orders.next().await {
//!     // Runs inside the `process orders.*` span, a child of `publish orders.created`.
//!     delivery
//!         .process(|message| async move {
//!             println!("got {:?}", message.payload);
//!             Ok::<_, std::io::Error>(())
//!         })
//!         .await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # What is traced
//!
//! | operation | span name | kind | `messaging.operation.type` |
//! |---|---|---|---|
//! | `publish*` | `publish {template}` | PRODUCER | `send` |
//! | `request`, `request_with_headers`, `send_request` (reply awaited inside) | `request {template}` | PRODUCER | `send` |
//! | each message a [`Subscriber`] yields | `process {template}` | CONSUMER | `process` |
//!
//! JetStream ([`jetstream`]), KV ([`jetstream::kv`]), Object Store
//! ([`jetstream::object_store`]) and the Service API ([`service`]) follow the same
//! contract; [`semconv`] has the full table of span names, kinds, operation types,
//! attributes and `error.type` values, for every path (the README shows the same).
//!
//! Every span carries `messaging.system = "nats"`, `messaging.operation.name` and
//! `.type`, `messaging.destination.name` (the real subject),
//! `messaging.destination.template`, `messaging.client.id`, `server.address` and
//! `server.port`; inboxes add `messaging.destination.temporary` and
//! `.anonymous`, queue subscriptions `messaging.consumer.group.name`, a
//! `Nats-Msg-Id` header `messaging.message.id`. Body sizes are opt-in
//! ([`InstrumentationBuilder::with_message_body_size`]). Failures set `error.type`
//! (the async-nats error kind in `snake_case`, e.g. `no_responders`, `timed_out`;
//! for a handler's error, what [`InstrumentationBuilder::with_error_type_hook`]
//! says or the error's type name) and an error status; a failing handler adds an
//! `exception` event.
//!
//! Whatever the source, the application gets a [`Delivery`] with the same methods
//! (`process`, `in_span`, `attach`, `record_error`, `context`,
//! `producer_context`, `into_parts`). Its `process` span is a child of the
//! producer's span and carries one link to it, plus a link to the span current
//! where processing starts ([`ProcessParenting::LinkOnly`] makes it a root with
//! the producer link). A message without a valid trace context (missing,
//! malformed, all-zero trace id) gets a fresh root span — never the context of the
//! previous message or of the caller. An unsampled parent (`-00`) records nothing
//! downstream while the decision keeps propagating, and costs little: only what
//! samplers read is computed before the sampler decides.
//!
//! # Cardinality
//!
//! Span names never contain a raw subject with ids. Subscriptions are named after
//! their pattern (`process orders.*`); publishes after the template a
//! [`SubjectMapper`] returns ([`DefaultSubjectMapper`] turns `users.8812.orders` into
//! `users.*.orders`; [`SubjectTemplates`] matches patterns you list; any closure
//! works). Inbox subjects become `(temporary)`.
//!
//! # Configuration
//!
//! [`Instrumentation::builder`] sets the tracer provider, meter provider and
//! propagator (globals by default — this crate never sets globals itself, except
//! [`otlp::init`] whose job that is), tracing on/off, metrics on/off, parenting,
//! the subject mapper, the inbox prefix and hooks adding attributes. Propagation
//! goes through the configured propagator, so `OTEL_PROPAGATORS=tracecontext,baggage`
//! carries baggage and `tracecontext` alone does not.
//!
//! # How it is built
//!
//! One core publish and its processing, file by file:
//!
//! 1. `connect.rs`: [`ConnectOptions`] connects through async-nats with the
//!    connection's events counted (`health.rs`) and builds the [`Client`]
//!    (`client.rs`), whose `Telemetry` (`telemetry.rs`) holds what every span of
//!    the connection shares.
//! 2. `client.rs`: `publish` asks `compression.rs` for the bytes to send (compressed
//!    or not), then `Telemetry::start_send` (`telemetry.rs`) names the operation
//!    (`names.rs` caches `publish {template}`, `destination.rs` makes the template)
//!    and starts it. The result is an `Operation` (`operation.rs`): the span and
//!    the duration timer (`metrics.rs`). Its context goes into the headers
//!    (`instrumentation.rs`, through `propagation.rs`). When async-nats returns,
//!    `Operation::finish` records `error.type` (`error.rs`), the status, the
//!    duration and the sent counter.
//! 3. `subscriber.rs`: each message `compression.rs` decodes becomes a [`Delivery`]
//!    (`delivery.rs`). `Telemetry::start_process` extracts the producer's context,
//!    and starts the `process` span with its parent and links and its timer.
//!    `Delivery::process` runs the handler in it and ends it with the outcome.
//!
//! JetStream goes through the same two calls:
//! * `jetstream/mod.rs`: publish, whose span ends with the PubAck;
//! * `jetstream/consumer/pull.rs` and `push.rs`: consumers that use
//!   `jetstream/shared.rs` (what a consumer's spans share, the `receive` span) and
//!   `jetstream/consume.rs` (one delivery);
//! * `jetstream/message.rs`: settlement spans;
//! * `jetstream/worker/`: the `Worker`;
//! * `jetstream/kv/`, `jetstream/object_store.rs` and `service.rs`: each starts
//!   its operations through `Telemetry` too.
//!
//! Management calls pass straight to async-nats (`jetstream/manage.rs`,
//! `jetstream/stream.rs`). The span names, kinds and attributes every path writes
//! are in `conventions.md`, shown in [`semconv`].
//!
//! # Features
//!
//! * `otlp` — [`otlp::init`]: providers and propagators from `OTEL_*` variables,
//!   OTLP over gRPC or HTTP, with a guard that flushes on drop.
//! * `compression` — [`compression`]: opt-in zstd/gzip payload compression marked
//!   by `Content-Encoding`, decoded transparently (and boundedly) by every
//!   instrumented consumer.
//! * `logs` — [`exceptions`]: exceptions as `messaging.*.exception` log records
//!   through an OpenTelemetry logger (`InstrumentationBuilder::with_logger_provider`).
//! * `tracing` — [`tracing_interop`]: log correlation helpers for `tracing` users.
//!   (A publish inside a `#[tracing::instrument]` span is its child with
//!   tracing-opentelemetry installed, feature or not.)

#![warn(missing_docs)]
#![deny(unreachable_pub)]
#![forbid(unsafe_code)]

pub mod capture;
mod client;
#[cfg(feature = "compression")]
pub mod compression;
#[cfg(not(feature = "compression"))]
mod compression;
mod connect;
mod delivery;
pub mod destination;
mod error;
pub mod exceptions;
pub mod filter;
pub mod health;
mod instrumentation;
pub mod jetstream;
pub mod metrics;
mod names;
mod operation;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod propagation;
pub mod semconv;
pub mod service;
mod subscriber;
pub mod subscriptions;
mod telemetry;
#[cfg(feature = "tracing")]
pub mod tracing_interop;

pub use client::{Client, PingError, PingErrorKind};
pub use connect::{connect, connect_with_options, ConnectOptions};
pub use delivery::Delivery;
pub use destination::{DefaultSubjectMapper, SubjectMapper, SubjectTemplates};
pub use error::{error_type, handler_error_type, HandlerFailure, PermissionViolation};
pub use instrumentation::{Instrumentation, InstrumentationBuilder, ProcessParenting};
pub use propagation::{HeaderExtractor, HeaderInjector, W3cPropagator};
pub use subscriber::Subscriber;
