//! Metric series bound once: each instrument of one attribute set is bound with
//! the SDK's bound instruments the first time it is used, so recording a
//! message costs no attribute hashing. Series are kept per source (a
//! subscription, consumer, endpoint or watch: [`ProcessSeries`],
//! [`HealthSeries`]) and per connection for client operations
//! ([`OpSeriesCache`], bounded).

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use opentelemetry::metrics::{BoundCounter, BoundGauge, BoundHistogram};
use opentelemetry::KeyValue;

use super::{with_error, Instruments};
use crate::names::Fast;

/// The process metrics of one source: `messaging.client.consumed.messages`,
/// `messaging.process.duration`, end-to-end latency and JetStream queue wait.
pub(crate) struct ProcessSeries {
    instruments: Arc<Instruments>,
    attributes: Arc<[KeyValue]>,
    consumed: OnceLock<BoundCounter<u64>>,
    duration: OnceLock<BoundHistogram<f64>>,
    end_to_end: OnceLock<BoundHistogram<f64>>,
    queue_wait: OnceLock<BoundHistogram<f64>>,
}

impl std::fmt::Debug for ProcessSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessSeries")
            .field("attributes", &self.attributes)
            .finish_non_exhaustive()
    }
}

impl ProcessSeries {
    pub(crate) fn new(instruments: &Arc<Instruments>, attributes: Arc<[KeyValue]>) -> Arc<Self> {
        Arc::new(Self {
            instruments: instruments.clone(),
            attributes,
            consumed: OnceLock::new(),
            duration: OnceLock::new(),
            end_to_end: OnceLock::new(),
            queue_wait: OnceLock::new(),
        })
    }

    /// The series' attributes.
    pub(crate) fn attributes(&self) -> &Arc<[KeyValue]> {
        &self.attributes
    }

    /// Every instrument (for the rarer, unbound recordings).
    pub(crate) fn instruments(&self) -> &Instruments {
        &self.instruments
    }

    pub(crate) fn instruments_arc(&self) -> &Arc<Instruments> {
        &self.instruments
    }

    /// Counts one message handed to the application.
    pub(crate) fn consumed(&self) {
        self.consumed
            .get_or_init(|| self.instruments.consumed.bind(&self.attributes))
            .add(1);
    }

    /// Records one processing's duration, with `error.type` when it failed.
    pub(crate) fn process_duration(&self, seconds: f64, error_type: Option<&str>) {
        match error_type {
            None => self
                .duration
                .get_or_init(|| self.instruments.process_duration.bind(&self.attributes))
                .record(seconds),
            Some(e) => self
                .instruments
                .process_duration
                .record(seconds, &with_error(&self.attributes, e)),
        }
    }

    /// Records publish → end of processing, with `error.type` when it failed.
    pub(crate) fn end_to_end(&self, seconds: f64, error_type: Option<&str>) {
        match error_type {
            None => self
                .end_to_end
                .get_or_init(|| self.instruments.end_to_end.bind(&self.attributes))
                .record(seconds),
            Some(e) => self
                .instruments
                .end_to_end
                .record(seconds, &with_error(&self.attributes, e)),
        }
    }

    /// Records a JetStream message's stored → delivered wait.
    pub(crate) fn queue_wait(&self, seconds: f64) {
        self.queue_wait
            .get_or_init(|| self.instruments.queue_wait.bind(&self.attributes))
            .record(seconds);
    }
}

/// A JetStream consumer's health gauges (`consumer.lag`, `consumer.pending`).
pub(crate) struct HealthSeries {
    instruments: Arc<Instruments>,
    attributes: Arc<[KeyValue]>,
    lag: OnceLock<BoundGauge<f64>>,
    pending: OnceLock<BoundGauge<u64>>,
}

impl HealthSeries {
    pub(crate) fn new(instruments: &Arc<Instruments>, attributes: Arc<[KeyValue]>) -> Self {
        Self {
            instruments: instruments.clone(),
            attributes,
            lag: OnceLock::new(),
            pending: OnceLock::new(),
        }
    }

    /// The series' attributes.
    pub(crate) fn attributes(&self) -> &[KeyValue] {
        &self.attributes
    }

    /// Every instrument (for the rarer, unbound recordings).
    pub(crate) fn instruments(&self) -> &Instruments {
        &self.instruments
    }

    /// The age of the message being delivered.
    pub(crate) fn lag(&self, seconds: f64) {
        self.lag
            .get_or_init(|| self.instruments.consumer_lag.bind(&self.attributes))
            .record(seconds);
    }

    /// Messages left for the consumer.
    pub(crate) fn pending(&self, messages: u64) {
        self.pending
            .get_or_init(|| self.instruments.consumer_pending.bind(&self.attributes))
            .record(messages);
    }
}

/// The metrics of one client operation on one template:
/// `messaging.client.operation.duration` and, for sends,
/// `messaging.client.sent.messages`.
pub(crate) struct OpSeries {
    instruments: Arc<Instruments>,
    attributes: Arc<[KeyValue]>,
    /// Bound on first use; an uncached series (past the cache's bound) records
    /// with its attributes instead, as binding per operation would cost more.
    bind: bool,
    duration: OnceLock<BoundHistogram<f64>>,
    sent: OnceLock<BoundCounter<u64>>,
    key: OpKey,
}

/// What identifies an operation's series on one connection.
#[derive(PartialEq, Eq)]
struct OpKey {
    operation: &'static str,
    ty: Option<&'static str>,
    template: Box<str>,
    group: Option<Box<str>>,
}

impl OpKey {
    fn is(&self, operation: &str, ty: Option<&str>, template: &str, group: Option<&str>) -> bool {
        self.operation == operation
            && self.ty == ty
            && &*self.template == template
            && self.group.as_deref() == group
    }
}

impl OpSeries {
    /// Records the operation's duration, with `error.type` when it failed.
    pub(crate) fn duration(&self, seconds: f64, error_type: Option<&str>) {
        match error_type {
            None if self.bind => self
                .duration
                .get_or_init(|| self.instruments.operation_duration.bind(&self.attributes))
                .record(seconds),
            None => self
                .instruments
                .operation_duration
                .record(seconds, &self.attributes),
            Some(e) => self
                .instruments
                .operation_duration
                .record(seconds, &with_error(&self.attributes, e)),
        }
    }

    /// Counts one sent message, with `error.type` when sending failed.
    pub(crate) fn count_sent(&self, error_type: Option<&str>) {
        match error_type {
            None if self.bind => self
                .sent
                .get_or_init(|| self.instruments.sent.bind(&self.attributes))
                .add(1),
            None => self.instruments.sent.add(1, &self.attributes),
            Some(e) => self
                .instruments
                .sent
                .add(1, &with_error(&self.attributes, e)),
        }
    }
}

/// How many operation series one connection keeps bound. Templates are
/// low-cardinality by design; past this, operations record unbound (the SDK's
/// own cardinality limit still applies).
pub(crate) const MAX_OP_SERIES: usize = 1024;

/// The operation series of one connection, by operation, type, template and
/// consumer group.
pub(crate) struct OpSeriesCache {
    /// Tells this cache's entry in [`LAST_SERIES`] from another cache's.
    id: u64,
    map: RwLock<Cached>,
}

impl Default for OpSeriesCache {
    fn default() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            map: RwLock::default(),
        }
    }
}

thread_local! {
    /// The (bound) series this thread looked up last, with its cache's id: a
    /// publisher sending to one template again and again finds it with one
    /// comparison, without hashing the key or taking the map's lock. It keeps at
    /// most one series per thread alive after its connection is gone.
    static LAST_SERIES: RefCell<Option<(u64, Arc<OpSeries>)>> = const { RefCell::new(None) };
}

#[derive(Default)]
struct Cached {
    /// Hash of the key → the series with that hash.
    by_hash: HashMap<u64, Vec<Arc<OpSeries>>, Fast>,
    len: usize,
}

impl Cached {
    fn find(
        &self,
        hash: u64,
        operation: &str,
        ty: Option<&str>,
        template: &str,
        group: Option<&str>,
    ) -> Option<Arc<OpSeries>> {
        self.by_hash
            .get(&hash)?
            .iter()
            .find(|series| series.key.is(operation, ty, template, group))
            .cloned()
    }
}

impl std::fmt::Debug for OpSeriesCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpSeriesCache").finish_non_exhaustive()
    }
}

impl OpSeriesCache {
    /// The series of `operation` (of type `ty`) on `template` in `group`,
    /// created with `attributes` on first sight.
    pub(crate) fn get(
        &self,
        instruments: &Arc<Instruments>,
        operation: &'static str,
        ty: Option<&'static str>,
        template: &str,
        group: Option<&str>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Arc<OpSeries> {
        let last = LAST_SERIES
            .try_with(|last| {
                let last = last.try_borrow().ok()?;
                let (id, series) = last.as_ref()?;
                (*id == self.id && series.key.is(operation, ty, template, group))
                    .then(|| series.clone())
            })
            .ok()
            .flatten();
        if let Some(series) = last {
            return series;
        }
        let hash = Fast::default().hash_one((operation, ty, template, group));
        let mut cached = false;
        {
            let map = self
                .map
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(series) = map.find(hash, operation, ty, template, group) {
                drop(map);
                self.remember(&series);
                return series;
            }
            if map.len < MAX_OP_SERIES {
                cached = true;
            }
        }
        let mut map = None;
        if cached {
            let locked = self
                .map
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(series) = locked.find(hash, operation, ty, template, group) {
                drop(locked);
                self.remember(&series);
                return series;
            }
            cached = locked.len < MAX_OP_SERIES;
            map = Some(locked);
        }
        let series = Arc::new(OpSeries {
            instruments: instruments.clone(),
            attributes: attributes().into(),
            bind: cached,
            duration: OnceLock::new(),
            sent: OnceLock::new(),
            key: OpKey {
                operation,
                ty,
                template: template.into(),
                group: group.map(Into::into),
            },
        });
        if let Some(mut map) = map.filter(|_| cached) {
            map.by_hash.entry(hash).or_default().push(series.clone());
            map.len += 1;
            drop(map);
            self.remember(&series);
        }
        series
    }

    /// Makes `series` (one of this cache's) this thread's last.
    fn remember(&self, series: &Arc<OpSeries>) {
        let _ = LAST_SERIES.try_with(|last| {
            if let Ok(mut last) = last.try_borrow_mut() {
                *last = Some((self.id, series.clone()));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;

    #[test]
    fn each_connection_gets_its_own_series_when_one_thread_alternates_between_them() {
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
        let instruments = Arc::new(Instruments::new(&provider.meter("test")));
        let (a, b) = (OpSeriesCache::default(), OpSeriesCache::default());
        let get = |cache: &OpSeriesCache, port: i64, template: &str| {
            cache.get(
                &instruments,
                "publish",
                Some("send"),
                template,
                None,
                || vec![KeyValue::new(crate::semconv::SERVER_PORT, port)],
            )
        };
        let port = |series: &OpSeries| series.attributes[0].value.clone();
        for _ in 0..3 {
            // Same key, two caches, one thread: the last-series slot must not
            // hand one connection's series to the other.
            let (x, y) = (get(&a, 1, "orders"), get(&b, 2, "orders"));
            assert_eq!(port(&x), opentelemetry::Value::I64(1));
            assert_eq!(port(&y), opentelemetry::Value::I64(2));
            assert!(Arc::ptr_eq(&x, &get(&a, 9, "orders")), "cached series");
            let other = get(&a, 3, "users");
            assert_eq!(port(&other), opentelemetry::Value::I64(3));
            assert_eq!(&*other.key.template, "users");
        }
        assert_eq!(a.map.read().expect("lock").len, 2);
        assert_eq!(b.map.read().expect("lock").len, 1);
    }
}
