//! The Redis token bucket: a capped token list per sale, one generator at a
//! time, and a short local lease in each gateway.
//!
//! * **Generator.** Every bucket handle runs a generator task, but only the
//!   holder of the sale's lease (`SET {sale:ID}:gen <instance> NX PX`)
//!   pushes tokens: each tick one script renews the lease and pushes the
//!   tokens due since the last tick, capped at the capacity. While the list
//!   is full a tick is one `LLEN` (nothing is due that would fit), and the
//!   script runs only to renew the lease, every third of its time, or once
//!   the list has room; a sold-out sale's generator sends nothing at all.
//!   The schedule is kept in Redis, so a new holder continues it; a dead
//!   holder's lease expires and another handle takes over within
//!   [`StoreConfig::generator_lease`](crate::StoreConfig) plus one attempt
//!   interval; a dropped handle releases its lease at once.
//! * **Local lease.** A gateway takes tokens in batches (`LPOP key N`) and
//!   serves requests from them for at most
//!   [`StoreConfig::token_lease`](crate::StoreConfig); tokens left when the
//!   lease runs out are dropped (counted as discarded), so no gateway hoards
//!   what another could use. The batch size adapts: it doubles while leases
//!   are used up and halves when tokens are left over. Refills are
//!   single-flight: concurrent callers wait for the one `LPOP` in flight,
//!   and share its failure: behind a stalled Redis, a queue of callers
//!   each taking its turn at a timed-out `LPOP` would wait one timeout per
//!   caller ahead of it. While the connection fails fast (see
//!   [`Conn`](crate::Conn)) they do not wait at all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use token_bucket::{BucketConfig, BucketError, BucketFactory, Place, TokenBucket, Turns};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::{describe, keys, Shared};

/// The token list's fill loop, shared by the scripts that push tokens.
const FILL: &str = include_str!("fill.lua");
static TICK: LazyLock<Script> = LazyLock::new(|| {
    crate::commands::script(
        "bucket_tick",
        &format!("{FILL}{}", include_str!("bucket_tick.lua")),
    )
});
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("lease_release", include_str!("lease_release.lua")));
static LINE: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("line", include_str!("line.lua")));
static OPEN: LazyLock<Script> = LazyLock::new(|| {
    crate::commands::script(
        "bucket_open",
        &format!("{FILL}{}", include_str!("bucket_open.lua")),
    )
});

/// The first batch a gateway takes.
const FIRST_BATCH: u32 = 4;

/// Makes [`RedisBucket`]s on one store.
#[derive(Clone)]
pub struct RedisBuckets {
    shared: Arc<Shared>,
}

impl RedisBuckets {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        RedisBuckets { shared }
    }

    /// A bucket handle with its generator task (the concrete type, for
    /// callers that inspect the generator).
    pub fn start(&self, sale_id: &str, config: BucketConfig) -> RedisBucket {
        RedisBucket::start(self.shared.clone(), sale_id, config)
    }
}

impl BucketFactory for RedisBuckets {
    fn bucket(&self, sale_id: &str, config: BucketConfig) -> Arc<dyn TokenBucket> {
        Arc::new(self.start(sale_id, config))
    }
}

/// One sale's bucket as seen from one process. Must be created within a
/// Tokio runtime; dropping it stops its generator and releases the lease.
pub struct RedisBucket {
    inner: Arc<Inner>,
    generator: JoinHandle<()>,
}

struct Inner {
    shared: Arc<Shared>,
    sale: String,
    /// This handle's name in the generator lease.
    instance: String,
    config: BucketConfig,
    lease: Mutex<Lease>,
    /// Single-flight guard of the refill.
    refill: tokio::sync::Mutex<()>,
    /// Callers in `try_take` now: a refill takes a token for each of them
    /// (up to the capacity), so a crowd at a full bucket is served in a
    /// few round trips, not one small batch after another.
    callers: AtomicU64,
    /// Refills that failed: a caller that waited for another's refill
    /// sees from it whether that one failed.
    refill_failures: AtomicU64,
    /// Length of the token list when last seen.
    seen: AtomicU64,
    generating: AtomicBool,
    /// The sale needs no tokens (sold out): the generator sends nothing.
    quiet: AtomicBool,
    issued: AtomicU64,
    /// Arrivals waiting for their tickets: one `HINCRBY` at a time serves
    /// all who arrived while the previous one was in flight.
    joins: Mutex<Joins>,
    metrics: Metrics,
}

#[derive(Default)]
struct Joins {
    waiting: Vec<oneshot::Sender<Result<Place, BucketError>>>,
    in_flight: bool,
}

/// Tokens this process took from Redis and may hand out until `expires`.
struct Lease {
    tokens: u64,
    expires: Instant,
    batch: u32,
    /// The list was found empty: refuse locally until then instead of
    /// asking Redis again, so a spike on an empty bucket costs one `LPOP`
    /// per generator tick, not one per buyer.
    empty_until: Instant,
}

struct Metrics {
    issued: metrics::Counter,
    taken: metrics::Counter,
    discarded: metrics::Counter,
    available: metrics::Gauge,
}

impl Metrics {
    fn new(sale_id: &str) -> Self {
        let sale = sale_id.to_string();
        Metrics {
            issued: metrics::counter!("seckill_tokens_issued_total", "sale" => sale.clone()),
            taken: metrics::counter!("seckill_tokens_taken_total", "sale" => sale.clone()),
            discarded: metrics::counter!("seckill_tokens_discarded_total", "sale" => sale.clone()),
            available: metrics::gauge!("seckill_tokens_available", "sale" => sale),
        }
    }
}

impl RedisBucket {
    fn start(shared: Arc<Shared>, sale_id: &str, config: BucketConfig) -> Self {
        let inner = Arc::new(Inner {
            shared,
            sale: sale_id.to_string(),
            instance: format!(
                "g-{}-{}",
                std::process::id(),
                seckill_inventory::unique_id()
            ),
            config,
            lease: Mutex::new(Lease {
                tokens: 0,
                expires: Instant::now(),
                batch: FIRST_BATCH,
                empty_until: Instant::now(),
            }),
            refill: tokio::sync::Mutex::new(()),
            callers: AtomicU64::new(0),
            refill_failures: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            generating: AtomicBool::new(false),
            quiet: AtomicBool::new(false),
            issued: AtomicU64::new(0),
            joins: Mutex::new(Joins::default()),
            metrics: Metrics::new(sale_id),
        });
        let generator = tokio::spawn(generate(inner.clone()));
        RedisBucket { inner, generator }
    }

    /// Whether this handle holds the generator lease.
    pub fn is_generating(&self) -> bool {
        self.inner.generating.load(Ordering::Relaxed)
    }

    /// Tokens this handle's generator pushed into Redis.
    pub fn issued(&self) -> u64 {
        self.inner.issued.load(Ordering::Relaxed)
    }
}

impl Drop for RedisBucket {
    fn drop(&mut self) {
        self.generator.abort();
        if !self.is_generating() {
            return;
        }
        // Hand the lease over now rather than after its expiry.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let mut conn = self.inner.shared.conn.clone();
            let (key, instance) = (
                keys::generator(&self.inner.sale),
                self.inner.instance.clone(),
            );
            rt.spawn(async move {
                let _: Result<i64, _> =
                    RELEASE.key(key).arg(instance).invoke_async(&mut conn).await;
            });
        }
    }
}

impl Inner {
    /// Most tokens one `LPOP` takes: a fraction of the capacity, so a few
    /// gateways cannot empty the list between them in one go.
    fn max_batch(&self) -> u32 {
        (self.config.capacity / 4).clamp(1, self.shared.config.max_token_batch.max(1))
    }

    /// Takes a token from the local lease, if it has a live one.
    fn take_local(&self) -> bool {
        let mut lease = self.lease.lock().unwrap();
        if lease.tokens > 0 && Instant::now() < lease.expires {
            lease.tokens -= 1;
            self.metrics.taken.increment(1);
            return true;
        }
        false
    }

    /// Whether the list was found empty less than a generator tick ago.
    fn known_empty(&self) -> bool {
        Instant::now() < self.lease.lock().unwrap().empty_until
    }

    /// The size of the next batch, adapted to how the last lease went.
    fn next_batch(&self) -> u32 {
        let mut lease = self.lease.lock().unwrap();
        if lease.tokens > 0 {
            // Expired with tokens left: dropped; take fewer next time.
            self.metrics.discarded.increment(lease.tokens);
            lease.tokens = 0;
            lease.batch = (lease.batch / 2).max(1);
        } else {
            lease.batch = lease.batch.saturating_mul(2).min(self.max_batch());
        }
        lease.batch.min(self.max_batch())
    }

    async fn refill(&self) -> Result<bool, BucketError> {
        let crowd = self
            .callers
            .load(Ordering::Relaxed)
            .min(u64::from(self.config.capacity));
        let batch = self.next_batch().max(crowd as u32);
        let key = keys::tokens(&self.sale);
        let (popped, len): (Option<Vec<String>>, u64) = redis::pipe()
            .cmd("LPOP")
            .arg(&key)
            .arg(batch)
            .cmd("LLEN")
            .arg(&key)
            .query_async(&mut self.shared.conn.clone())
            .await
            .map_err(|e| BucketError::Unavailable(describe(&e)))?;
        self.seen.store(len, Ordering::Relaxed);
        let got = popped.map_or(0, |v| v.len() as u64);
        let mut lease = self.lease.lock().unwrap();
        if len == 0 {
            // This look emptied the list (or found it empty): nothing comes
            // before the generator's next tick, so once the lease is spent
            // the bucket refuses locally until then.
            lease.empty_until = Instant::now() + self.shared.config.generator_tick;
        }
        if got == 0 {
            return Ok(false);
        }
        lease.tokens = got - 1;
        lease.expires = Instant::now() + self.shared.config.token_lease;
        self.metrics.taken.increment(1);
        Ok(true)
    }
}

impl Inner {
    /// Runs the line script: `n` tickets (0 = only a look).
    async fn line(&self, n: usize) -> Result<Turns, BucketError> {
        let (issued, served): (u64, u64) = LINE
            .key(keys::tokens(&self.sale))
            .key(keys::line(&self.sale))
            .arg(n)
            .invoke_async(&mut self.shared.conn.clone())
            .await
            .map_err(|e| BucketError::Unavailable(describe(&e)))?;
        Ok(Turns { issued, served })
    }
}

/// Hands out tickets to the arrivals waiting for them, a batch per round
/// trip, in the order they arrived, until none waits.
async fn hand_out_tickets(inner: Arc<Inner>) {
    loop {
        let batch = {
            let mut joins = inner.joins.lock().unwrap();
            if joins.waiting.is_empty() {
                joins.in_flight = false;
                return;
            }
            std::mem::take(&mut joins.waiting)
        };
        let n = batch.len();
        match inner.line(n).await {
            Ok(turns) => {
                let first = turns.issued + 1 - n as u64;
                for (i, tx) in batch.into_iter().enumerate() {
                    let ticket = first + i as u64;
                    let _ = tx.send(Ok(Place { ticket, turns }));
                }
            }
            Err(BucketError::Unavailable(why)) => {
                for tx in batch {
                    let _ = tx.send(Err(BucketError::Unavailable(why.clone())));
                }
            }
        }
    }
}

/// Counts a caller of `try_take` until it returns.
struct Caller<'a>(&'a AtomicU64);

impl Drop for Caller<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The error of a caller that did not send a refill of its own.
fn unreachable() -> BucketError {
    BucketError::Unavailable("token store unreachable: the last refill failed".into())
}

/// The generator task of one handle: ticks while holding the lease, tries
/// to take it over at a slower pace otherwise.
async fn generate(inner: Arc<Inner>) {
    let cfg = &inner.shared.config;
    let lease_ms = cfg.generator_lease.as_millis() as u64;
    let attempt_every = (cfg.generator_lease / 6).max(cfg.generator_tick);
    let mut tick = tokio::time::interval(cfg.generator_tick);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_attempt = Instant::now();
    // The list was full when this holder last looked: until it has room,
    // a tick only reads its length, and the lease is renewed by a script
    // tick at `renew_at`.
    let mut full = false;
    let mut renew_at = Instant::now();
    let renew_every = cfg.generator_lease / 3;
    // The catch-up of the first script tick after a full list: nothing
    // accrued while it was full, at most a tick or two since it had room.
    let after_full_us = (cfg.generator_tick * 2).as_micros() as u64;
    let (list, gen, clock) = (
        keys::tokens(&inner.sale),
        keys::generator(&inner.sale),
        keys::generator_clock(&inner.sale),
    );
    loop {
        tick.tick().await;
        if inner.quiet.load(Ordering::Relaxed) {
            // Quiet: the lease runs out, and whoever needs tokens again
            // takes it. Its first tick fills the list as if the generator
            // had run on (at most its capacity, as ever): nobody took
            // tokens from a sold-out sale.
            inner.generating.store(false, Ordering::Relaxed);
            full = false;
            continue;
        }
        let holding = inner.generating.load(Ordering::Relaxed);
        if !holding && Instant::now() < next_attempt {
            continue;
        }
        if holding && full && Instant::now() < renew_at {
            let len: Result<u64, _> = redis::cmd("LLEN")
                .arg(&list)
                .query_async(&mut inner.shared.conn.clone())
                .await;
            match len {
                Ok(len) if len >= u64::from(inner.config.capacity) => {
                    inner.seen.store(len, Ordering::Relaxed);
                    inner.metrics.available.set(len as f64);
                    continue;
                }
                // Room again: this tick fills it.
                Ok(_) => {}
                // As a failed tick: the next one looks again.
                Err(e) => {
                    tracing::debug!(sale = %inner.sale, error = %e, "token list look failed");
                    continue;
                }
            }
        }
        let most_us = if full { after_full_us } else { 1_000_000 };
        let result: Result<(i64, u64, u64), _> = TICK
            .key(&list)
            .key(&gen)
            .key(&clock)
            .arg(&inner.instance)
            .arg(inner.config.rate_per_sec)
            .arg(inner.config.capacity)
            .arg(lease_ms)
            .arg(most_us)
            .invoke_async(&mut inner.shared.conn.clone())
            .await;
        full = false;
        match result {
            Ok((issued, discarded, len)) => {
                inner.seen.store(len, Ordering::Relaxed);
                inner.metrics.available.set(len as f64);
                if issued >= 0 {
                    if !holding {
                        tracing::debug!(sale = %inner.sale, "token generator lease taken");
                    }
                    inner.generating.store(true, Ordering::Relaxed);
                    full = len >= u64::from(inner.config.capacity);
                    renew_at = Instant::now() + renew_every;
                    inner.issued.fetch_add(issued as u64, Ordering::Relaxed);
                    inner.metrics.issued.increment(issued as u64);
                    inner.metrics.discarded.increment(discarded);
                } else {
                    inner.generating.store(false, Ordering::Relaxed);
                    next_attempt = Instant::now() + attempt_every;
                }
            }
            Err(e) => {
                // The lease may still be ours; the schedule in Redis lets
                // the next successful tick catch up.
                tracing::debug!(sale = %inner.sale, error = %e, "token generator tick failed");
                next_attempt = Instant::now() + Duration::from_millis(100);
                inner.generating.store(false, Ordering::Relaxed);
            }
        }
    }
}

#[async_trait]
impl TokenBucket for RedisBucket {
    async fn try_take(&self) -> Result<bool, BucketError> {
        if self.inner.take_local() {
            return Ok(true);
        }
        if self.inner.known_empty() {
            return Ok(false);
        }
        self.inner.callers.fetch_add(1, Ordering::Relaxed);
        let _caller = Caller(&self.inner.callers);
        let failures = self.inner.refill_failures.load(Ordering::Acquire);
        let _flight = match self.inner.refill.try_lock() {
            Ok(flight) => flight,
            // Another caller's refill is in flight. Behind a store that
            // fails fast it ends in an error: refuse now instead.
            Err(_) if self.inner.shared.conn.is_failing_fast() => return Err(unreachable()),
            Err(_) => self.inner.refill.lock().await,
        };
        // The refill another caller just made may have left tokens, or
        // found none, or failed: then its error is this caller's too, and
        // trying again would wait as long again.
        if self.inner.take_local() {
            return Ok(true);
        }
        if self.inner.known_empty() {
            return Ok(false);
        }
        if self.inner.refill_failures.load(Ordering::Acquire) != failures {
            return Err(unreachable());
        }
        let refilled = self.inner.refill().await;
        if refilled.is_err() {
            self.inner.refill_failures.fetch_add(1, Ordering::AcqRel);
        }
        refilled
    }

    fn available(&self) -> u64 {
        let local = {
            let lease = self.inner.lease.lock().unwrap();
            if Instant::now() < lease.expires {
                lease.tokens
            } else {
                0
            }
        };
        local + self.inner.seen.load(Ordering::Relaxed)
    }

    /// No leased token here, and the shared list was found empty less than
    /// a generator tick ago: what `try_take` would answer without I/O.
    fn known_empty(&self) -> bool {
        let lease = self.inner.lease.lock().unwrap();
        let now = Instant::now();
        let leased = lease.tokens > 0 && now < lease.expires;
        !leased && now < lease.empty_until
    }

    async fn join(&self) -> Result<Place, BucketError> {
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut joins = self.inner.joins.lock().unwrap();
            joins.waiting.push(tx);
            !std::mem::replace(&mut joins.in_flight, true)
        };
        if lead {
            // A task of its own: a caller that goes away must not strand
            // the others of its batch.
            tokio::spawn(hand_out_tickets(self.inner.clone()));
        }
        rx.await.unwrap_or_else(|_| Err(unreachable()))
    }

    async fn turn(&self) -> Result<Turns, BucketError> {
        self.inner.line(0).await
    }

    fn turn_interval(&self) -> Duration {
        self.inner.shared.config.generator_tick
    }

    fn quiet(&self, quiet: bool) {
        self.inner.quiet.store(quiet, Ordering::Relaxed);
    }

    async fn open(&self) -> Result<(), BucketError> {
        let _: u64 = OPEN
            .key(keys::tokens(&self.inner.sale))
            .key(keys::generator_clock(&self.inner.sale))
            .arg(self.inner.config.capacity)
            .invoke_async(&mut self.inner.shared.conn.clone())
            .await
            .map_err(|e| BucketError::Unavailable(describe(&e)))?;
        Ok(())
    }
}
