//! Consumer-side idempotency: skip messages whose id was already processed.
//!
//! JetStream's publish-side dedup (`Nats-Msg-Id` within the stream's duplicate
//! window) stops most duplicates; these filters catch the rest, such as a message
//! processed but whose ack was lost, or a republish after the window. Ids are
//! recorded only after successful processing, so a failed attempt is retried.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

/// Remembers processed message ids.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Whether `id` was recorded (and has not expired).
    fn seen<'a>(&'a self, id: &'a str) -> BoxFuture<'a, bool>;
    /// Records `id` as processed.
    fn record<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()>;
}

impl<T: IdempotencyStore> IdempotencyStore for std::sync::Arc<T> {
    fn seen<'a>(&'a self, id: &'a str) -> BoxFuture<'a, bool> {
        (**self).seen(id)
    }

    fn record<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        (**self).record(id)
    }
}

/// An in-memory filter bounded by size and age: at most `capacity` ids, each
/// forgotten after `ttl`, oldest evicted first. Per process, lost on restart.
#[derive(Debug)]
pub struct MemoryIdempotency {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    seen: HashMap<String, Instant>,
    order: VecDeque<(String, Instant)>,
}

impl MemoryIdempotency {
    /// A filter holding at most `capacity` ids for `ttl` each (capacity ≥ 1).
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            inner: Mutex::new(Recent::default()),
        }
    }

    /// Ids currently held.
    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        // A panic while holding the lock cannot leave the maps inconsistent in a
        // way that matters for a cache; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn contains(&self, id: &str) -> bool {
        let recent = self.lock();
        recent
            .seen
            .get(id)
            .is_some_and(|at| at.elapsed() < self.ttl)
    }

    fn insert(&self, id: &str) {
        let now = Instant::now();
        let mut recent = self.lock();
        recent.seen.insert(id.to_owned(), now);
        recent.order.push_back((id.to_owned(), now));
        while let Some((old, at)) = recent.order.front().cloned() {
            let expired = at.elapsed() >= self.ttl;
            if !expired
                && recent.seen.len() <= self.capacity
                && recent.order.len() <= 2 * self.capacity
            {
                break;
            }
            recent.order.pop_front();
            // Only forget the id if this queue entry is its latest recording.
            if recent.seen.get(&old) == Some(&at) {
                recent.seen.remove(&old);
            }
        }
    }
}

impl IdempotencyStore for MemoryIdempotency {
    fn seen<'a>(&'a self, id: &'a str) -> BoxFuture<'a, bool> {
        let hit = self.contains(id);
        Box::pin(async move { hit })
    }

    fn record<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        self.insert(id);
        Box::pin(async {})
    }
}

/// A filter shared by every replica through a KV bucket; the bucket's `max_age` is
/// the TTL. Lookup errors count as "not seen" (at-least-once, never a lost message).
#[derive(Debug, Clone)]
pub struct KvIdempotency {
    store: async_nats::jetstream::kv::Store,
}

impl KvIdempotency {
    /// Uses an existing bucket.
    pub fn new(store: async_nats::jetstream::kv::Store) -> Self {
        Self { store }
    }

    /// Creates (or opens) bucket `bucket` whose entries expire after `ttl`.
    pub async fn create(
        js: &async_nats::jetstream::Context,
        bucket: &str,
        ttl: Duration,
    ) -> Result<Self, async_nats::Error> {
        let store = match js.get_key_value(bucket).await {
            Ok(store) => store,
            Err(_) => {
                js.create_key_value(async_nats::jetstream::kv::Config {
                    bucket: bucket.to_owned(),
                    history: 1,
                    max_age: ttl,
                    ..Default::default()
                })
                .await?
            }
        };
        Ok(Self { store })
    }

    /// Message ids may hold characters KV keys cannot; hex keeps them exact.
    fn key(id: &str) -> String {
        let mut key = String::with_capacity(3 + id.len() * 2);
        key.push_str("id.");
        for byte in id.bytes() {
            key.push_str(&format!("{byte:02x}"));
        }
        key
    }
}

impl IdempotencyStore for KvIdempotency {
    fn seen<'a>(&'a self, id: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move { matches!(self.store.get(Self::key(id)).await, Ok(Some(_))) })
    }

    fn record<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            // A failed record only means a possible duplicate later, which the
            // at-least-once contract allows.
            let _ = self.store.put(Self::key(id), "1".into()).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_filter_stays_within_its_bound() {
        let filter = MemoryIdempotency::new(1000, Duration::from_secs(3600));
        for i in 0..100_000 {
            filter.insert(&format!("id-{i}"));
            assert!(filter.len() <= 1000);
        }
        assert!(filter.lock().order.len() <= 2000);
        assert!(filter.contains("id-99999"));
        assert!(!filter.contains("id-0"), "oldest evicted");
    }

    #[test]
    fn memory_filter_forgets_after_ttl() {
        let filter = MemoryIdempotency::new(10, Duration::ZERO);
        filter.insert("a");
        assert!(!filter.contains("a"));
        assert!(filter.len() <= 1);
    }

    #[test]
    fn kv_keys_are_valid_for_any_id() {
        assert_eq!(KvIdempotency::key("a b/*"), "id.6120622f2a");
    }
}
