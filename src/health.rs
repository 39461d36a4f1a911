//! Client health as observable instruments, read from the connection's own
//! statistics and events at collection time (nothing is recorded per message).
//!
//! | instrument | kind | unit | source |
//! |---|---|---|---|
//! | `messaging.nats.client.bytes_in`, `.bytes_out` | observable counter | `By` | async-nats statistics |
//! | `messaging.nats.client.messages_in`, `.messages_out` | observable counter | `{message}` | async-nats statistics |
//! | `messaging.nats.client.connects` | observable counter | `{connect}` | async-nats statistics |
//! | `messaging.nats.client.connection.state` | observable gauge | `1` | 1 connected, 0 otherwise |
//! | `messaging.nats.client.reconnects` | observable counter | `{reconnect}` | connection events |
//! | `messaging.nats.client.slow_consumers` | observable counter | `{event}` | slow-consumer events |
//! | `messaging.nats.client.permission_violations` | observable counter | `{event}` | server's permission errors |
//!
//! Attributes: `messaging.system`, `server.address`, `server.port`,
//! `messaging.client.id` (one series per connection). The event-based counters need
//! the connection's events, which every connect path of this crate takes
//! ([`ConnectOptions`](crate::ConnectOptions) chains your own callback behind them);
//! a client wrapped with [`Client::new`](crate::Client::new) reports them as 0.
//!
//! The instruments and their callbacks are registered once per
//! [`Instrumentation`](crate::Instrumentation), on its first connect; each
//! collection observes every client of it still alive. Connect many clients
//! through one `Instrumentation` (`inst.connect(..)`): the free `connect`
//! functions build a new default one per call. Per-subscription pending
//! counts are not exposed by async-nats and are not reported.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use async_nats::connection::State;
use async_nats::Event;
use opentelemetry::metrics::Meter;
use opentelemetry::KeyValue;

/// Instrument names.
pub mod names {
    /// Bytes received.
    pub const BYTES_IN: &str = "messaging.nats.client.bytes_in";
    /// Bytes sent.
    pub const BYTES_OUT: &str = "messaging.nats.client.bytes_out";
    /// Messages received.
    pub const MESSAGES_IN: &str = "messaging.nats.client.messages_in";
    /// Messages sent.
    pub const MESSAGES_OUT: &str = "messaging.nats.client.messages_out";
    /// Successful connections (the first one included).
    pub const CONNECTS: &str = "messaging.nats.client.connects";
    /// 1 while connected, 0 otherwise.
    pub const CONNECTION_STATE: &str = "messaging.nats.client.connection.state";
    /// Reconnections after a disconnect.
    pub const RECONNECTS: &str = "messaging.nats.client.reconnects";
    /// Slow-consumer events (messages dropped for a subscriber that fell behind).
    pub const SLOW_CONSUMERS: &str = "messaging.nats.client.slow_consumers";
    /// Publishes the server refused for lack of permission (reported by the
    /// server after the fact, not per publish call).
    pub const PERMISSION_VIOLATIONS: &str = "messaging.nats.client.permission_violations";
}

/// Counts connection events; shared between the event callback and the metrics.
#[derive(Debug)]
pub(crate) struct EventCounters {
    reconnects: AtomicU64,
    slow_consumers: AtomicU64,
    permission_violations: AtomicU64,
    seen_disconnect: AtomicBool,
    /// Subjects the server refused a publish to, for requests waiting on them.
    violations: tokio::sync::broadcast::Sender<Arc<str>>,
    /// The last refusals and when they came, for acks that time out.
    recent: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, Arc<str>)>>,
    /// Messages dropped for slow subscriptions, by subscription.
    dropped: crate::subscriptions::DroppedMessages,
}

/// How many recent refusals are remembered.
const RECENT_REFUSALS: usize = 64;

impl Default for EventCounters {
    fn default() -> Self {
        Self {
            reconnects: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            permission_violations: AtomicU64::new(0),
            seen_disconnect: AtomicBool::new(false),
            violations: tokio::sync::broadcast::channel(64).0,
            recent: std::sync::Mutex::new(std::collections::VecDeque::new()),
            dropped: Default::default(),
        }
    }
}

/// The subject of a `Permissions Violation for Publish to "<subject>"` error.
pub(crate) fn denied_publish_subject(error: &str) -> Option<&str> {
    let rest = error.strip_prefix("Permissions Violation for Publish to ")?;
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    Some(rest.split('"').next().unwrap_or(rest).trim())
}

impl EventCounters {
    /// Whether the server refused a publish to `subject` at or after `since`.
    pub(crate) fn refused_since(&self, subject: &str, since: std::time::Instant) -> bool {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent
            .iter()
            .any(|(at, refused)| *at >= since && **refused == *subject)
    }

    /// Subjects the server refuses publishes to, from now on.
    pub(crate) fn violations(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.violations.subscribe()
    }

    /// The dropped-message counter of this connection's subscriptions.
    pub(crate) fn dropped(&self) -> &crate::subscriptions::DroppedMessages {
        &self.dropped
    }

    pub(crate) fn record(&self, event: &Event) {
        match event {
            Event::ServerError(async_nats::ServerError::Other(error)) => {
                if let Some(subject) = denied_publish_subject(error) {
                    self.permission_violations.fetch_add(1, Ordering::Relaxed);
                    let subject: Arc<str> = Arc::from(subject);
                    {
                        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                        if recent.len() == RECENT_REFUSALS {
                            recent.pop_front();
                        }
                        recent.push_back((std::time::Instant::now(), subject.clone()));
                    }
                    // No receiver (no request waiting) is fine.
                    let _ = self.violations.send(subject);
                }
            }
            Event::Disconnected => self.seen_disconnect.store(true, Ordering::Relaxed),
            Event::Connected if self.seen_disconnect.swap(false, Ordering::Relaxed) => {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            Event::SlowConsumer(sid) => {
                self.slow_consumers.fetch_add(1, Ordering::Relaxed);
                self.dropped.record(*sid);
            }
            _ => {}
        }
    }
}

/// What the health callbacks read; the client holds the only strong reference,
/// so a dropped client stops reporting.
pub(crate) struct Health {
    client: async_nats::Client,
    events: Option<Arc<EventCounters>>,
    attributes: Vec<KeyValue>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// The health instruments of one [`Instrumentation`](crate::Instrumentation):
/// registered once, their callbacks observe every live connection made through it
/// (each with its own attributes), so connecting many clients adds no callbacks.
pub(crate) struct HealthRegistry {
    connections: std::sync::Mutex<Vec<Weak<Health>>>,
}

impl std::fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthRegistry").finish_non_exhaustive()
    }
}

impl HealthRegistry {
    /// Registers the health instruments on `meter`.
    pub(crate) fn new(meter: &Meter) -> Arc<Self> {
        let registry = Arc::new(Self {
            connections: std::sync::Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&registry);
        let stat = |name: &'static str, unit: &'static str, read: fn(&Health) -> u64| {
            let weak: Weak<HealthRegistry> = weak.clone();
            meter
                .u64_observable_counter(name)
                .with_unit(unit)
                .with_callback(move |observer| {
                    if let Some(registry) = weak.upgrade() {
                        registry.each(|health| observer.observe(read(health), &health.attributes));
                    }
                })
                .build()
        };
        stat(names::BYTES_IN, "By", |h| {
            h.client.statistics().in_bytes.load(Ordering::Relaxed)
        });
        stat(names::BYTES_OUT, "By", |h| {
            h.client.statistics().out_bytes.load(Ordering::Relaxed)
        });
        stat(names::MESSAGES_IN, "{message}", |h| {
            h.client.statistics().in_messages.load(Ordering::Relaxed)
        });
        stat(names::MESSAGES_OUT, "{message}", |h| {
            h.client.statistics().out_messages.load(Ordering::Relaxed)
        });
        stat(names::CONNECTS, "{connect}", |h| {
            h.client.statistics().connects.load(Ordering::Relaxed)
        });
        stat(names::RECONNECTS, "{reconnect}", |h| {
            h.events
                .as_ref()
                .map_or(0, |e| e.reconnects.load(Ordering::Relaxed))
        });
        stat(names::SLOW_CONSUMERS, "{event}", |h| {
            h.events
                .as_ref()
                .map_or(0, |e| e.slow_consumers.load(Ordering::Relaxed))
        });
        stat(names::PERMISSION_VIOLATIONS, "{event}", |h| {
            h.events
                .as_ref()
                .map_or(0, |e| e.permission_violations.load(Ordering::Relaxed))
        });
        let weak_state = weak.clone();
        meter
            .i64_observable_gauge(names::CONNECTION_STATE)
            .with_unit("1")
            .with_callback(move |observer| {
                if let Some(registry) = weak_state.upgrade() {
                    registry.each(|health| {
                        let up = matches!(health.client.connection_state(), State::Connected);
                        observer.observe(i64::from(up), &health.attributes);
                    });
                }
            })
            .build();
        registry
    }

    /// Adds one connection; it is observed while the returned handle (kept by the
    /// client and its clones) lives.
    pub(crate) fn register(
        &self,
        client: async_nats::Client,
        events: Option<Arc<EventCounters>>,
        attributes: Vec<KeyValue>,
    ) -> Arc<Health> {
        let health = Arc::new(Health {
            client,
            events,
            attributes,
        });
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.retain(|c| c.strong_count() > 0);
        connections.push(Arc::downgrade(&health));
        health
    }

    /// Calls `observe` for each live connection, forgetting dropped ones.
    fn each(&self, mut observe: impl FnMut(&Health)) {
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        connections.retain(|c| match c.upgrade() {
            Some(health) => {
                observe(&health);
                true
            }
            None => false,
        });
    }
}
