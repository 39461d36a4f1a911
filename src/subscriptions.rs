//! Subscription metrics: how many core subscriptions are active, and how many
//! messages the client dropped because a subscription fell behind.
//!
//! | instrument | kind | unit | recorded |
//! |---|---|---|---|
//! | `messaging.nats.client.subscriptions.active` | up/down counter | `{subscription}` | +1 on `subscribe`/`queue_subscribe`, −1 once the subscription ends: `unsubscribe`, the end of the stream (after `drain`, `unsubscribe_after`, a closed connection) or dropping it |
//! | `messaging.nats.client.dropped_messages` | counter | `{message}` | each slow-consumer event async-nats reports: a message it dropped because the subscription's buffer (`subscription_capacity`) was full |
//!
//! Attributes: `messaging.system`, `server.address`, `server.port`,
//! `messaging.destination.template` and, for queue subscriptions,
//! `messaging.consumer.group.name`. A drop reported for a subscription this crate
//! does not know (one made on the untraced client, or already ended) carries the
//! connection's attributes only.
//!
//! The dropped-message count is a lower bound: async-nats reports each drop as an
//! event on a bounded channel and itself drops events when that channel is full,
//! and only connections made through this crate's connect paths (which receive
//! the events) count drops. The messages and bytes waiting in a subscription's
//! buffer are not exposed by async-nats and are not reported.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::metrics::{Counter, UpDownCounter};
use opentelemetry::{KeyValue, Value};

use crate::health::EventCounters;
use crate::semconv;
use crate::telemetry::Telemetry;

/// Instrument names.
pub mod names {
    /// Core subscriptions currently active.
    pub const ACTIVE_SUBSCRIPTIONS: &str = "messaging.nats.client.subscriptions.active";
    /// Messages the client dropped for a subscription that fell behind.
    pub const DROPPED_MESSAGES: &str = "messaging.nats.client.dropped_messages";
}

/// The dropped-message counter of one connection and the subscriptions it
/// attributes drops to, by subscription id. Lives in the connection's
/// [`EventCounters`], which receive the slow-consumer events.
#[derive(Debug, Default)]
pub(crate) struct DroppedMessages {
    /// The counter and the connection's attributes, once metrics are on.
    counter: OnceLock<(Counter<u64>, Arc<[KeyValue]>)>,
    by_sid: Mutex<HashMap<u64, Arc<[KeyValue]>>>,
}

impl DroppedMessages {
    /// Counts drops into `counter`, with `connection` for unknown subscriptions.
    pub(crate) fn enable(&self, counter: Counter<u64>, connection: Arc<[KeyValue]>) {
        let _ = self.counter.set((counter, connection));
    }

    /// Counts one message dropped for subscription `sid`.
    pub(crate) fn record(&self, sid: u64) {
        let Some((counter, connection)) = self.counter.get() else {
            return;
        };
        let known = self
            .by_sid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&sid)
            .cloned();
        counter.add(1, known.as_deref().unwrap_or(connection));
    }

    fn enabled(&self) -> bool {
        self.counter.get().is_some()
    }

    fn register(&self, sid: u64, attributes: Arc<[KeyValue]>) {
        self.by_sid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sid, attributes);
    }

    fn unregister(&self, sid: u64) {
        self.by_sid
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sid);
    }
}

/// One subscription's place in the subscription metrics: counted active from
/// its start to [`end`](Self::end) (or its drop), and known to the
/// dropped-message counter meanwhile.
#[derive(Default)]
pub(crate) struct ActiveSubscription {
    active: Option<(UpDownCounter<i64>, Arc<[KeyValue]>)>,
    dropped: Option<(Arc<EventCounters>, u64)>,
}

impl std::fmt::Debug for ActiveSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveSubscription")
            .field("counted", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl ActiveSubscription {
    /// Counts `inner` (on `template`, in `group`) active; nothing when metrics
    /// are off or filtered out for the template.
    pub(crate) fn start(
        telemetry: &Telemetry,
        events: Option<&Arc<EventCounters>>,
        inner: &async_nats::Subscriber,
        template: &str,
        group: Option<&Value>,
    ) -> Self {
        let inst = telemetry.inst();
        let Some(instruments) = inst.instruments().filter(|_| inst.meters(template)) else {
            return Self::default();
        };
        let mut attributes = Vec::with_capacity(telemetry.connection().len() + 2);
        attributes.extend_from_slice(telemetry.connection());
        attributes.push(KeyValue::new(
            semconv::MESSAGING_DESTINATION_TEMPLATE,
            template.to_owned(),
        ));
        if let Some(group) = group {
            attributes.push(KeyValue::new(
                semconv::MESSAGING_CONSUMER_GROUP_NAME,
                group.clone(),
            ));
        }
        let attributes: Arc<[KeyValue]> = attributes.into();
        let dropped = events
            .filter(|events| events.dropped().enabled())
            .and_then(|events| Some((events.clone(), subscription_id(inner)?)));
        if let Some((events, sid)) = &dropped {
            events.dropped().register(*sid, attributes.clone());
        }
        let counter = instruments.active_subscriptions.clone();
        counter.add(1, &attributes);
        Self {
            active: Some((counter, attributes)),
            dropped,
        }
    }

    /// The subscription is no longer active: counted down once.
    pub(crate) fn end(&mut self) {
        if let Some((counter, attributes)) = self.active.take() {
            counter.add(-1, &attributes);
        }
        if let Some((events, sid)) = self.dropped.take() {
            events.dropped().unregister(sid);
        }
    }
}

impl Drop for ActiveSubscription {
    fn drop(&mut self) {
        self.end();
    }
}

/// The id async-nats gave `subscriber`, which its slow-consumer events name. It
/// keeps the id private; its `Debug` output starts with it.
fn subscription_id(subscriber: &async_nats::Subscriber) -> Option<u64> {
    let debug = format!("{subscriber:?}");
    let digits = debug.strip_prefix("Subscriber { sid: ")?;
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}
