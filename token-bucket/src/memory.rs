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
//!
//! A bucket starts full, so a sale is served at its full burst from its
//! first moment. Fair admission keeps its line as two numbers under a
//! lock (the last ticket handed out, the last one served): tokens move to
//! the oldest tickets in the same step that looks at them.

use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use crate::{BucketConfig, BucketError, BucketFactory, BucketMetrics, Place, TokenBucket, Turns};

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
    /// The fair-admission line; its lock also serialises the grants.
    turns: Mutex<Turns>,
    metrics: BucketMetrics,
}

impl MemoryBucket {
    /// A bucket that starts full and refills at `config.rate_per_sec`.
    pub fn start(sale_id: &str, config: BucketConfig) -> Self {
        let metrics = BucketMetrics::new(sale_id);
        let capacity = u64::from(config.capacity);
        metrics.issued.increment(capacity);
        let shared = Arc::new(Shared {
            tokens: AtomicU64::new(capacity),
            capacity: u64::from(config.capacity),
            rate: u64::from(config.rate_per_sec),
            start: Instant::now(),
            generated: AtomicU64::new(0),
            issued: AtomicU64::new(capacity),
            discarded: AtomicU64::new(0),
            turns: Mutex::new(Turns::default()),
            metrics,
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

    /// Hands out the next ticket (see [`TokenBucket::join`]).
    pub fn join_line(&self) -> Place {
        let mut turns = self.shared.turns.lock().unwrap();
        turns.issued += 1;
        self.shared.grant(&mut turns);
        Place {
            ticket: turns.issued,
            turns: *turns,
        }
    }

    /// Grants what is due (see [`TokenBucket::turn`]).
    pub fn turn_line(&self) -> Turns {
        let mut turns = self.shared.turns.lock().unwrap();
        self.shared.grant(&mut turns);
        *turns
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

    /// Moves tokens to the waiting tickets, oldest first.
    fn grant(&self, turns: &mut Turns) {
        self.refill();
        let want = turns.waiting();
        if want == 0 {
            return;
        }
        let mut got = 0;
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                got = cur.min(want);
                Some(cur - got)
            });
        turns.served += got;
        self.metrics.taken.increment(got);
        self.show_available();
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

    async fn join(&self) -> Result<Place, BucketError> {
        Ok(self.join_line())
    }

    async fn turn(&self) -> Result<Turns, BucketError> {
        Ok(self.turn_line())
    }

    fn turn_interval(&self) -> Duration {
        let between = Duration::from_nanos(1_000_000_000 / self.shared.rate.max(1));
        between.clamp(Duration::from_millis(1), Duration::from_millis(20))
    }

    async fn open(&self) -> Result<(), BucketError> {
        // Full from its start already.
        Ok(())
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

    /// A started bucket, emptied of its initial burst.
    fn drained(rate: u32, capacity: u32) -> MemoryBucket {
        let b = MemoryBucket::start("t", config(rate, capacity));
        while b.take() {}
        b
    }

    #[tokio::test(start_paused = true)]
    async fn issues_exactly_the_rate_while_drained() {
        let b = drained(1000, 1_000_000);
        tokio::task::yield_now().await;
        let mut taken = 0;
        for _ in 0..100 {
            run_for(TICK).await;
            while b.take() {
                taken += 1;
            }
        }
        // 100 ticks of 10 ms = 1 s at 1000/s (after the initial capacity).
        assert_eq!(taken, 1000);
        assert_eq!(b.issued(), 1_000_000 + 1000);
        assert_eq!(b.discarded(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_rates_do_not_drift() {
        let b = drained(3, 100);
        tokio::task::yield_now().await;
        run_for(Duration::from_millis(10_000)).await;
        assert_eq!(b.issued(), 100 + 30);
        run_for(Duration::from_millis(330)).await;
        assert_eq!(b.issued(), 100 + 30, "the 31st token is due at 10.333 s");
        // It goes out with the first tick after it is due.
        run_for(TICK).await;
        assert_eq!(b.issued(), 100 + 31);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_discards_and_caps_the_burst() {
        let b = MemoryBucket::start("t", config(500, 200));
        tokio::task::yield_now().await;
        run_for(Duration::from_secs(2)).await;
        assert_eq!(b.available(), 200);
        assert_eq!(b.issued(), 200);
        assert_eq!(
            b.discarded(),
            1000,
            "full from the start: all 2 s discarded"
        );
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
        assert!(b.try_take().await.unwrap(), "a new bucket is full");
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
        assert_eq!(b.available(), 50, "full at once, before any refill");
        run_for(Duration::from_secs(3)).await;
        assert_eq!(b.available(), 50);
        assert_eq!(b.issued(), 50);
        assert_eq!(b.discarded(), 300);
    }

    #[tokio::test(start_paused = true)]
    async fn tickets_get_tokens_in_order_at_the_rate() {
        let b = MemoryBucket::start("t", config(100, 2));
        // The full bucket serves the first two at once.
        assert!(b.join_line().served());
        assert!(b.join_line().served());
        let third = b.join_line();
        let fourth = b.join_line();
        assert!(!third.served());
        assert_eq!((third.position(), fourth.position()), (1, 2));
        run_for(Duration::from_millis(10)).await;
        assert_eq!(b.turn_line().served, 3);
        run_for(Duration::from_millis(10)).await;
        let turns = b.turn_line();
        assert_eq!((turns.issued, turns.served), (4, 4));
        // With nobody waiting, tokens pile up to the capacity again.
        run_for(Duration::from_secs(1)).await;
        assert_eq!(b.available(), 2);
        assert!(b.join_line().served());
    }
}
