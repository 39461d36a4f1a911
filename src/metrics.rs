//! Metrics: the messaging conventions' instruments plus NATS-specific ones,
//! created once per [`Instrumentation`](crate::Instrumentation) and recorded
//! whether or not tracing is on.
//!
//! | instrument | kind | unit | recorded for |
//! |---|---|---|---|
//! | `messaging.client.operation.duration` | histogram | `s` | publish (JetStream: until the PubAck), request, receive, settle, KV and Object Store operations |
//! | `messaging.process.duration` | histogram | `s` | handler work (from delivery to the end of processing) |
//! | `messaging.client.sent.messages` | counter | `{message}` | every `send` operation: publish, request, KV and Object Store writes and deletions |
//! | `messaging.client.consumed.messages` | counter | `{message}` | every message, request or watched change handed to the application |
//! | `messaging.nats.queue_wait.duration` | histogram | `s` | JetStream: stored → delivered |
//! | `messaging.nats.end_to_end.duration` | histogram | `s` | published → processing ended (JetStream timestamp, or the opt-in `Nats-Otel-Published` header on core NATS) |
//! | `messaging.nats.consumer.lag` | gauge | `s` | JetStream: age of the message being delivered |
//! | `messaging.nats.consumer.pending` | gauge | `{message}` | JetStream: messages left for the consumer |
//! | `messaging.nats.consumer.ack_pending`, `.redelivered` | gauges | `{message}` | JetStream consumer info, read by the consumer's `info()` / `get_info()` (the worker does it periodically) |
//! | `messaging.nats.worker.retries`, `.dead_letters`, `.duplicates_skipped` | counters | `{message}` | the consumer worker |
//! | `messaging.nats.dlq.replayed` | counter | `{message}` | dead letters replayed by [`DeadLetterQueue::replay`](crate::jetstream::dead_letter::DeadLetterQueue::replay), `error.type` on failures, `messaging.nats.dlq.stream` |
//! | `messaging.nats.client.subscriptions.active` | up/down counter | `{subscription}` | core subscriptions, by template and queue group (see [`crate::subscriptions`]) |
//! | `messaging.nats.client.dropped_messages` | counter | `{message}` | messages async-nats dropped for a subscription that fell behind (a lower bound, see [`crate::subscriptions`]) |
//!
//! Attributes: `messaging.system`, `messaging.operation.name`,
//! `messaging.operation.type`, `messaging.destination.template` (never a raw
//! subject), `messaging.consumer.group.name`, `server.address`, `server.port`, and
//! `error.type` on failures: the same operation name, type and template as the
//! operation's span (the table is in [`crate::semconv`]). Latencies that compare
//! two clocks (queue wait, lag, end-to-end) are subject to clock skew between
//! hosts.
//!
//! Each attribute set is bound once, with the OpenTelemetry SDK's bound
//! instruments (`experimental_metrics_bound_instruments`, which nats-otel enables
//! on `opentelemetry_sdk`): per subscription, consumer, endpoint or watch for
//! processing, and per connection, operation and template for client operations
//! (at most 1024 per connection; past that, operations record with their
//! attributes as usual). A message then records without hashing its attributes.
//! An attribute set appears in the export only once something was recorded in it.
//! Failures (with `error.type`) record unbound. A meter provider that is not
//! `opentelemetry_sdk`'s must implement `bind` to see the bound measurements.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter, UpDownCounter};
use opentelemetry::KeyValue;

use crate::semconv;

mod series;

pub(crate) use series::{HealthSeries, OpSeries, OpSeriesCache, ProcessSeries};

/// Bucket boundaries the messaging conventions recommend for durations (s).
pub const DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Instrument names.
pub mod names {
    /// Duration of a client operation.
    pub const OPERATION_DURATION: &str = "messaging.client.operation.duration";
    /// Duration of processing one message.
    pub const PROCESS_DURATION: &str = "messaging.process.duration";
    /// Messages sent.
    pub const SENT_MESSAGES: &str = "messaging.client.sent.messages";
    /// Messages delivered to the application.
    pub const CONSUMED_MESSAGES: &str = "messaging.client.consumed.messages";
    /// JetStream queue wait.
    pub const QUEUE_WAIT: &str = "messaging.nats.queue_wait.duration";
    /// Publish to end of processing.
    pub const END_TO_END: &str = "messaging.nats.end_to_end.duration";
    /// Age of the message being delivered.
    pub const CONSUMER_LAG: &str = "messaging.nats.consumer.lag";
    /// Messages left for a consumer.
    pub const CONSUMER_PENDING: &str = "messaging.nats.consumer.pending";
    /// Messages delivered and awaiting acks.
    pub const CONSUMER_ACK_PENDING: &str = "messaging.nats.consumer.ack_pending";
    /// Messages being redelivered.
    pub const CONSUMER_REDELIVERED: &str = "messaging.nats.consumer.redelivered";
    /// Worker retries.
    pub const WORKER_RETRIES: &str = "messaging.nats.worker.retries";
    /// Worker dead letters.
    pub const WORKER_DEAD_LETTERS: &str = "messaging.nats.worker.dead_letters";
    /// Worker duplicate skips.
    pub const WORKER_DUPLICATES: &str = "messaging.nats.worker.duplicates_skipped";
    /// Dead letters replayed (`error.type` on failures).
    pub const DLQ_REPLAYED: &str = "messaging.nats.dlq.replayed";
}

/// Every instrument, built once.
#[derive(Debug, Clone)]
pub(crate) struct Instruments {
    pub(crate) operation_duration: Histogram<f64>,
    pub(crate) process_duration: Histogram<f64>,
    pub(crate) sent: Counter<u64>,
    pub(crate) consumed: Counter<u64>,
    pub(crate) queue_wait: Histogram<f64>,
    pub(crate) end_to_end: Histogram<f64>,
    pub(crate) consumer_lag: Gauge<f64>,
    pub(crate) consumer_pending: Gauge<u64>,
    pub(crate) consumer_ack_pending: Gauge<u64>,
    pub(crate) consumer_redelivered: Gauge<u64>,
    pub(crate) worker_retries: Counter<u64>,
    pub(crate) worker_dead_letters: Counter<u64>,
    pub(crate) worker_duplicates: Counter<u64>,
    pub(crate) active_subscriptions: UpDownCounter<i64>,
    pub(crate) dropped_messages: Counter<u64>,
    pub(crate) dlq_replayed: Counter<u64>,
}

impl Instruments {
    pub(crate) fn new(meter: &Meter) -> Self {
        let duration = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(description)
                .with_boundaries(DURATION_BOUNDARIES.to_vec())
                .build()
        };
        let messages = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_unit("{message}")
                .with_description(description)
                .build()
        };
        Self {
            operation_duration: duration(
                names::OPERATION_DURATION,
                "Duration of messaging operation initiated by a producer or consumer client.",
            ),
            process_duration: duration(
                names::PROCESS_DURATION,
                "Duration of processing operation.",
            ),
            sent: messages(
                names::SENT_MESSAGES,
                "Number of messages producer attempted to send to the broker.",
            ),
            consumed: messages(
                names::CONSUMED_MESSAGES,
                "Number of messages that were delivered to the application.",
            ),
            queue_wait: duration(
                names::QUEUE_WAIT,
                "Time from JetStream storing a message to its delivery.",
            ),
            end_to_end: duration(
                names::END_TO_END,
                "Time from publishing a message to the end of its processing.",
            ),
            consumer_lag: meter
                .f64_gauge(names::CONSUMER_LAG)
                .with_unit("s")
                .with_description("Age of the message a JetStream consumer is delivering.")
                .build(),
            consumer_pending: meter
                .u64_gauge(names::CONSUMER_PENDING)
                .with_unit("{message}")
                .with_description("Messages left for a JetStream consumer.")
                .build(),
            consumer_ack_pending: meter
                .u64_gauge(names::CONSUMER_ACK_PENDING)
                .with_unit("{message}")
                .with_description("Messages a JetStream consumer delivered and awaits acks for.")
                .build(),
            consumer_redelivered: meter
                .u64_gauge(names::CONSUMER_REDELIVERED)
                .with_unit("{message}")
                .with_description("Messages a JetStream consumer is redelivering.")
                .build(),
            worker_retries: messages(
                names::WORKER_RETRIES,
                "Messages the worker sent back for redelivery.",
            ),
            worker_dead_letters: messages(
                names::WORKER_DEAD_LETTERS,
                "Messages the worker dead-lettered.",
            ),
            worker_duplicates: messages(
                names::WORKER_DUPLICATES,
                "Messages the worker skipped as already processed.",
            ),
            active_subscriptions: meter
                .i64_up_down_counter(crate::subscriptions::names::ACTIVE_SUBSCRIPTIONS)
                .with_unit("{subscription}")
                .with_description("Core NATS subscriptions currently active.")
                .build(),
            dropped_messages: messages(
                crate::subscriptions::names::DROPPED_MESSAGES,
                "Messages the client dropped because a subscription fell behind (a lower bound).",
            ),
            dlq_replayed: messages(
                names::DLQ_REPLAYED,
                "Dead letters replayed (error.type set on those that failed).",
            ),
        }
    }
}

/// `attributes` plus `error.type`.
pub(crate) fn with_error(attributes: &[KeyValue], error_type: &str) -> Vec<KeyValue> {
    let mut with = Vec::with_capacity(attributes.len() + 1);
    with.extend_from_slice(attributes);
    with.push(KeyValue::new(semconv::ERROR_TYPE, error_type.to_owned()));
    with
}

/// How old a message published at `unix_nanos` is, when metrics are on
/// (`instruments`): the clock is only read then.
pub(crate) fn age_if_metered(
    instruments: Option<&std::sync::Arc<Instruments>>,
    unix_nanos: Option<i128>,
) -> Option<Duration> {
    instruments.and(unix_nanos).and_then(age_of)
}

/// Seconds from `unix_nanos` to now, if not in the future.
pub(crate) fn age_of(unix_nanos: i128) -> Option<Duration> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let now = i128::try_from(now).ok()?;
    let age = u64::try_from(now.checked_sub(unix_nanos)?).ok()?;
    Some(Duration::from_nanos(age))
}

/// Header carrying the publish time (Unix nanoseconds) on core NATS messages when
/// enabled with `InstrumentationBuilder::with_publish_time_header`.
pub const PUBLISHED_HEADER: &str = "Nats-Otel-Published";

/// Now as Unix nanoseconds.
pub(crate) fn now_unix_nanos() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
        .unwrap_or(0)
}

/// Times one client operation and records `messaging.client.operation.duration`.
pub(crate) struct OpTimer {
    series: std::sync::Arc<OpSeries>,
    started: std::time::Instant,
}

impl OpTimer {
    /// Starts timing if metrics are on (from `since`, when the operation began
    /// earlier); `series` is only looked up then.
    pub(crate) fn start(
        instruments: Option<&std::sync::Arc<Instruments>>,
        since: Option<SystemTime>,
        series: impl FnOnce(&std::sync::Arc<Instruments>) -> std::sync::Arc<OpSeries>,
    ) -> Option<Self> {
        let instruments = instruments?;
        let now = std::time::Instant::now();
        let started = since
            .and_then(|since| since.elapsed().ok())
            .and_then(|ago| now.checked_sub(ago))
            .unwrap_or(now);
        Some(Self {
            series: series(instruments),
            started,
        })
    }

    /// Counts one sent message in this operation's series.
    pub(crate) fn count_sent(&self, error_type: Option<&str>) {
        self.series.count_sent(error_type);
    }

    /// Records the duration until now (or until `ended`, when the operation ended
    /// earlier), with `error.type` when the operation failed.
    pub(crate) fn finish(self, error_type: Option<&str>, ended: Option<SystemTime>) {
        let since_end = ended
            .and_then(|ended| ended.elapsed().ok())
            .unwrap_or_default();
        let seconds = self
            .started
            .elapsed()
            .saturating_sub(since_end)
            .as_secs_f64();
        self.series.duration(seconds, error_type);
    }
}

/// Records `messaging.process.duration` (and end-to-end latency when the publish
/// time is known) when a delivered message is done with.
pub(crate) struct ProcessTimer {
    series: std::sync::Arc<ProcessSeries>,
    started: std::time::Instant,
    /// How old the message was when processing started (end-to-end latency is
    /// that plus the processing: one clock read fewer than reading the time again).
    age: Option<Duration>,
}

impl ProcessTimer {
    /// Counts the message as consumed and starts timing its processing, when
    /// metrics are on (`series`).
    pub(crate) fn start(
        series: Option<&std::sync::Arc<ProcessSeries>>,
        age: Option<Duration>,
    ) -> Option<Self> {
        let series = series?;
        series.consumed();
        Some(Self {
            series: series.clone(),
            started: std::time::Instant::now(),
            age,
        })
    }

    /// Records the processing's duration, with `error.type` if it failed.
    pub(crate) fn finish(self, error_type: Option<&str>) {
        let elapsed = self.started.elapsed();
        self.series
            .process_duration(elapsed.as_secs_f64(), error_type);
        if let Some(age) = self.age {
            self.series
                .end_to_end((age + elapsed).as_secs_f64(), error_type);
        }
    }
}

/// Keys the crate sets itself; per-subscription attributes may not override them.
const RESERVED: [&str; 8] = [
    semconv::MESSAGING_SYSTEM,
    semconv::MESSAGING_OPERATION_NAME,
    semconv::MESSAGING_OPERATION_TYPE,
    semconv::MESSAGING_DESTINATION_NAME,
    semconv::MESSAGING_DESTINATION_TEMPLATE,
    semconv::MESSAGING_CONSUMER_GROUP_NAME,
    semconv::ERROR_TYPE,
    semconv::SERVER_ADDRESS,
];

/// At most this many extra attributes per subscription.
pub const MAX_EXTRA_ATTRIBUTES: usize = 4;
/// Extra attribute string values are cut to this many bytes.
pub const MAX_EXTRA_VALUE_LEN: usize = 64;

/// Keeps at most [`MAX_EXTRA_ATTRIBUTES`] attributes whose keys are not reserved
/// or already present, with string values cut to [`MAX_EXTRA_VALUE_LEN`] bytes.
pub(crate) fn bounded_extra<I>(attributes: I, existing: &[KeyValue]) -> Vec<KeyValue>
where
    I: IntoIterator<Item = KeyValue>,
{
    let mut kept: Vec<KeyValue> = Vec::new();
    for kv in attributes {
        if kept.len() == MAX_EXTRA_ATTRIBUTES {
            break;
        }
        let key = kv.key.as_str();
        if RESERVED.contains(&key)
            || key == semconv::SERVER_PORT
            || existing
                .iter()
                .chain(kept.iter())
                .any(|e| e.key.as_str() == key)
        {
            continue;
        }
        let value = match kv.value {
            opentelemetry::Value::String(s) if s.as_str().len() > MAX_EXTRA_VALUE_LEN => {
                let mut cut = MAX_EXTRA_VALUE_LEN;
                let text = s.as_str();
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                opentelemetry::Value::String(text[..cut].to_owned().into())
            }
            other => other,
        };
        kept.push(KeyValue::new(kv.key, value));
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_attributes_are_bounded_and_cannot_override() {
        let existing = vec![KeyValue::new(semconv::MESSAGING_SYSTEM, "nats")];
        let extra = bounded_extra(
            vec![
                KeyValue::new(semconv::MESSAGING_DESTINATION_NAME, "users.8812"),
                KeyValue::new("tenant", "x".repeat(500)),
                KeyValue::new("tenant", "again"),
                KeyValue::new("a", 1),
                KeyValue::new("b", 2),
                KeyValue::new("c", 3),
                KeyValue::new("d", 4),
            ],
            &existing,
        );
        let keys: Vec<&str> = extra.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["tenant", "a", "b", "c"]);
        assert_eq!(extra[0].value.as_str().len(), MAX_EXTRA_VALUE_LEN);
    }
}
