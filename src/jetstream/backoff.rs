//! Redelivery delays: jittered exponential backoff, or a fixed list.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long to wait before the next delivery of a failed message.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Backoff {
    /// `initial × multiplier^(attempt-1)`, capped at `max`, each delay scaled by a
    /// random factor in `[1 - jitter, 1 + jitter]` so failures do not retry in
    /// lockstep.
    Exponential {
        /// Delay after the first failure.
        initial: Duration,
        /// Upper bound before jitter.
        max: Duration,
        /// Growth per attempt (≥ 1).
        multiplier: f64,
        /// Relative jitter, 0.0 to 1.0.
        jitter: f64,
    },
    /// Delay `n` is the `n`-th entry; the last one repeats (JetStream's consumer
    /// `backoff` list has the same meaning).
    List(Vec<Duration>),
}

impl Default for Backoff {
    /// 1 s, doubling, at most 60 s, ±20 % jitter.
    fn default() -> Self {
        Backoff::Exponential {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay after failed delivery number `attempt` (1-based).
    pub fn delay(&self, attempt: u64) -> Duration {
        let attempt = attempt.max(1);
        match self {
            Backoff::List(list) => {
                let index = usize::try_from(attempt - 1).unwrap_or(usize::MAX);
                list.get(index)
                    .or_else(|| list.last())
                    .copied()
                    .unwrap_or_default()
            }
            Backoff::Exponential {
                initial,
                max,
                multiplier,
                jitter,
            } => {
                let exponent = i32::try_from(attempt - 1).unwrap_or(i32::MAX);
                let base = initial.as_secs_f64() * multiplier.max(1.0).powi(exponent);
                let base = base.min(max.as_secs_f64());
                let jitter = jitter.clamp(0.0, 1.0);
                let factor = 1.0 + jitter * (2.0 * unit_random() - 1.0);
                Duration::try_from_secs_f64((base * factor).max(0.0)).unwrap_or(*max)
            }
        }
    }
}

/// A uniform value in `[0, 1)` from a small lock-free xorshift generator; good
/// enough to spread retries, not for anything secret.
fn unit_random() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15)
            | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_grows_is_capped_and_jitters_within_bounds() {
        let backoff = Backoff::Exponential {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.2,
        };
        for _ in 0..200 {
            let d1 = backoff.delay(1).as_secs_f64();
            let d3 = backoff.delay(3).as_secs_f64();
            let d10 = backoff.delay(10).as_secs_f64();
            assert!((0.08..=0.12).contains(&d1), "{d1}");
            assert!((0.32..=0.48).contains(&d3), "{d3}");
            assert!((0.8..=1.2).contains(&d10), "{d10}");
        }
        let distinct: std::collections::HashSet<_> =
            (0..50).map(|_| backoff.delay(2).as_nanos()).collect();
        assert!(distinct.len() > 10, "jitter varies the delays");
    }

    #[test]
    fn list_repeats_its_last_entry_and_absurd_attempts_do_not_panic() {
        let backoff = Backoff::List(vec![Duration::from_secs(1), Duration::from_secs(5)]);
        assert_eq!(backoff.delay(1), Duration::from_secs(1));
        assert_eq!(backoff.delay(2), Duration::from_secs(5));
        assert_eq!(backoff.delay(9), Duration::from_secs(5));
        assert_eq!(Backoff::List(vec![]).delay(3), Duration::ZERO);
        assert!(Backoff::default().delay(u64::MAX) <= Duration::from_secs(72));
        assert!(Backoff::default().delay(0) <= Duration::from_millis(1200));
    }
}
