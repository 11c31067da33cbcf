//! The in-memory token bucket: an atomic token count, refilled from the
//! clock whenever it is looked at.
//!
//! Tokens are interchangeable, so the fixed-capacity token queue is kept as
//! its length alone: "push a token unless full" and "pop a token unless
//! empty" are single compare-and-swap operations on that length, which is
//! what a bounded MPMC queue of unit values reduces to.
//!
//! The generator is not a task: what it would have pushed since start
//! (`rate × elapsed`, exact in integers) is pushed, capped at the capacity,
//! just before each look. With no take in between, a run of capped pushes
//! leaves the same tokens and the same issued and discarded counts as one
//! capped push of their sum, so this is the ticking generator without its
//! ticks: an idle sale costs no wake-ups, however many sales there are.

use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

use crate::{BucketConfig, BucketError, BucketFactory, BucketMetrics, TokenBucket};

/// The embedded-mode [`TokenBucket`].
pub struct MemoryBucket {
    shared: Arc<Shared>,
}

struct Shared {
    tokens: AtomicU64,
    capacity: u64,
    rate: u64,
    start: Instant,
    /// Tokens generated (pushed or discarded) since start.
    generated: AtomicU64,
    issued: AtomicU64,
    discarded: AtomicU64,
    metrics: BucketMetrics,
}

impl MemoryBucket {
    /// A bucket that starts empty and fills at `config.rate_per_sec`.
    pub fn start(sale_id: &str, config: BucketConfig) -> Self {
        let shared = Arc::new(Shared {
            tokens: AtomicU64::new(0),
            capacity: u64::from(config.capacity),
            rate: u64::from(config.rate_per_sec),
            start: Instant::now(),
            generated: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
            metrics: BucketMetrics::new(sale_id),
        });
        MemoryBucket { shared }
    }

    /// Takes one token if there is one (the synchronous core of `try_take`).
    pub fn take(&self) -> bool {
        self.shared.refill();
        let taken = self
            .shared
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if taken {
            self.shared.metrics.taken.increment(1);
        }
        self.shared.show_available();
        taken
    }

    /// Tokens issued into the queue since start (discarded ones excluded).
    pub fn issued(&self) -> u64 {
        self.shared.refill();
        self.shared.issued.load(Ordering::Relaxed)
    }

    /// Tokens discarded because the queue was full.
    pub fn discarded(&self) -> u64 {
        self.shared.refill();
        self.shared.discarded.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// Pushes the tokens that fell due since the last refill. The caller
    /// that advances `generated` pushes them, so each is pushed once.
    fn refill(&self) {
        let elapsed = self.start.elapsed().as_nanos();
        let due = (u128::from(self.rate) * elapsed / 1_000_000_000) as u64;
        let mut seen = self.generated.load(Ordering::Acquire);
        while due > seen {
            match self.generated.compare_exchange_weak(
                seen,
                due,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.push(due - seen);
                    return;
                }
                Err(now) => seen = now,
            }
        }
    }

    /// Pushes up to `n` tokens, discarding what does not fit.
    fn push(&self, n: u64) {
        let mut fitted = 0;
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                fitted = n.min(self.capacity.saturating_sub(cur));
                Some(cur + fitted)
            });
        self.issued.fetch_add(fitted, Ordering::Relaxed);
        self.discarded.fetch_add(n - fitted, Ordering::Relaxed);
        self.metrics.issued.increment(fitted);
        self.metrics.discarded.increment(n - fitted);
    }

    fn show_available(&self) {
        self.metrics
            .available
            .set(self.tokens.load(Ordering::Relaxed) as f64);
    }
}

#[async_trait]
impl TokenBucket for MemoryBucket {
    async fn try_take(&self) -> Result<bool, BucketError> {
        Ok(self.take())
    }

    fn available(&self) -> u64 {
        self.shared.refill();
        self.shared.show_available();
        self.shared.tokens.load(Ordering::Relaxed)
    }

    fn known_empty(&self) -> bool {
        self.shared.refill();
        self.shared.tokens.load(Ordering::Relaxed) == 0
    }
}

/// Makes [`MemoryBucket`]s.
#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryBuckets;

impl BucketFactory for MemoryBuckets {
    fn bucket(&self, sale_id: &str, config: BucketConfig) -> Arc<dyn TokenBucket> {
        Arc::new(MemoryBucket::start(sale_id, config))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The generator's old tick: tokens now go out as soon as they are due,
    /// never later than this.
    const TICK: Duration = Duration::from_millis(10);

    fn config(rate: u32, capacity: u32) -> BucketConfig {
        BucketConfig {
            rate_per_sec: rate,
            capacity,
        }
    }

    /// Lets the generator run up to `d` of paused time.
    async fn run_for(d: Duration) {
        tokio::time::sleep(d).await;
        // One more turn so the tick at exactly `d` has run.
        tokio::task::yield_now().await;
    }

    #[tokio::test(start_paused = true)]
    async fn issues_exactly_the_rate_while_drained() {
        let b = MemoryBucket::start("t", config(1000, 1_000_000));
        tokio::task::yield_now().await;
        let mut taken = 0;
        for _ in 0..100 {
            run_for(TICK).await;
            while b.take() {
                taken += 1;
            }
        }
        // 100 ticks of 10 ms = 1 s at 1000/s.
        assert_eq!(taken, 1000);
        assert_eq!(b.issued(), 1000);
        assert_eq!(b.discarded(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_rates_do_not_drift() {
        let b = MemoryBucket::start("t", config(3, 100));
        tokio::task::yield_now().await;
        run_for(Duration::from_millis(10_000)).await;
        assert_eq!(b.issued(), 30);
        run_for(Duration::from_millis(330)).await;
        assert_eq!(b.issued(), 30, "the 31st token is due at 10.333 s");
        // It goes out with the first tick after it is due.
        run_for(TICK).await;
        assert_eq!(b.issued(), 31);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_discards_and_caps_the_burst() {
        let b = MemoryBucket::start("t", config(500, 200));
        tokio::task::yield_now().await;
        run_for(Duration::from_secs(2)).await;
        assert_eq!(b.available(), 200);
        assert_eq!(b.issued(), 200);
        assert_eq!(b.discarded(), 800);
        let mut taken = 0;
        while b.take() {
            taken += 1;
        }
        assert_eq!(taken, 200, "a burst never exceeds the capacity");
        assert!(!b.take());
    }

    #[tokio::test(start_paused = true)]
    async fn empty_bucket_refuses_immediately() {
        let b = MemoryBucket::start("t", config(1, 1));
        assert!(!b.try_take().await.unwrap());
        run_for(Duration::from_secs(1)).await;
        assert!(b.try_take().await.unwrap());
        assert!(!b.try_take().await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn generator_stops_with_the_bucket() {
        let b = MemoryBucket::start("t", config(100, 10));
        let weak = Arc::downgrade(&b.shared);
        drop(b);
        run_for(Duration::from_millis(50)).await;
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn a_bucket_runs_no_task() {
        // No runtime here: a bucket that spawned a generator would panic.
        // Idle sales therefore cost no wake-ups, however many there are.
        let buckets: Vec<MemoryBucket> = (0..10_000)
            .map(|i| MemoryBucket::start(&format!("s{i}"), config(1000, 10)))
            .collect();
        assert!(buckets.iter().all(|b| b.available() <= 10));
    }

    #[tokio::test(start_paused = true)]
    async fn an_untouched_bucket_is_full_at_its_first_look() {
        let b = MemoryBucket::start("t", config(100, 50));
        run_for(Duration::from_secs(3)).await;
        assert_eq!(b.available(), 50);
        assert_eq!(b.issued(), 50);
        assert_eq!(b.discarded(), 250);
    }
}
