//! Integration tests: every test runs against a real nats-server.

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

mod alloc;
mod object_store;
mod service;
mod support;
mod worker;
mod worker_prefetch;

mod baggage;
mod capture;
mod cluster;
#[cfg(feature = "compression")]
mod compression;
mod conformance;
mod connect;
mod dead_letters;
#[cfg(feature = "logs")]
mod exceptions;
mod fault;
mod filters;
#[cfg(feature = "compression")]
mod fuzz;
mod hostile;
#[cfg(feature = "tracing")]
mod interop;
mod jetstream;
mod kv;
mod metric_series;
mod metrics;
#[cfg(feature = "otlp")]
mod otlp;
mod parity;
mod peers;
mod propagation;
mod pubsub;
mod pull;
mod request_reply;
mod secure;
mod server_node;
mod subscriptions;
mod topology;
