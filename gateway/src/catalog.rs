//! The gateway's local copy of the sales: what a purchase request is
//! checked against without any I/O (existence, window, sold-out flag), and
//! each sale's token bucket.
//!
//! It follows the inventory: the sale events as they come, and a periodic
//! resynchronisation that covers missed events. A purchase for a sale it
//! does not hold reads the store once before answering `404` (a sale
//! created through another gateway a moment ago is served at once), and
//! remembers a miss for a short while, so unknown sales stay cheap. It
//! holds at most `max_sales` sales (`--max-sales`), so what a gateway keeps
//! and does per sale is bounded.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use seckill_inventory::{SaleSpec, SaleStatus};
use token_bucket::{BucketConfig, BucketFactory, TokenBucket};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::answer::Status;
use crate::line::Line;

/// How long a sale the store did not have is answered `404` without
/// asking the store again.
const MISS_TTL: Duration = Duration::from_millis(250);
/// Most misses remembered (beyond it the memory starts afresh).
const MAX_MISSES: usize = 10_000;
/// Store reads for unknown sales in flight at once; a flood of made-up
/// sale ids beyond it is answered `404` without any.
const MAX_READS: usize = 16;

/// Why a purchase of a sale was refused, as `seckill_gateway_refusals_total`
/// counts it: the `reason` of the 429 and 503 answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    NoToken,
    WaitTooLong,
    LineFull,
    UserLimit,
    AddressLimit,
    QueueFull,
    WaitersFull,
    ShuttingDown,
    StoreUnreachable,
    StoreLost,
}

impl Reason {
    const ALL: [Reason; 10] = [
        Reason::NoToken,
        Reason::WaitTooLong,
        Reason::LineFull,
        Reason::UserLimit,
        Reason::AddressLimit,
        Reason::QueueFull,
        Reason::WaitersFull,
        Reason::ShuttingDown,
        Reason::StoreUnreachable,
        Reason::StoreLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoToken => "no_token",
            Reason::WaitTooLong => "wait_too_long",
            Reason::LineFull => "line_full",
            Reason::UserLimit => "user_limit",
            Reason::AddressLimit => "address_limit",
            Reason::QueueFull => "queue_full",
            Reason::WaitersFull => "waiters_full",
            Reason::ShuttingDown => "shutting_down",
            Reason::StoreUnreachable => "store_unreachable",
            Reason::StoreLost => "store_lost",
        }
    }
}

/// The `sale` label of refusals of a sale this gateway does not hold (an
/// unknown id, a lost sale, an address refused before its sale was looked
/// up): one series per reason, whatever ids a client makes up.
pub const OTHER_SALE: &str = "(other)";

/// A sale's metric series that only some sales ever have (its refusals,
/// its fifo waits): each is registered at its first use, so a catalog of
/// thousands of quiet sales adds nothing to `/metrics`.
pub struct SaleSeries {
    sale: String,
    /// `seckill_sale_requests_total{sale,outcome}`, by [`Status`].
    requests: [OnceLock<metrics::Counter>; Status::ALL.len()],
    /// `seckill_sale_request_duration_seconds{sale}`.
    duration: OnceLock<metrics::Histogram>,
    refusals: [OnceLock<metrics::Counter>; Reason::ALL.len()],
    waited: OnceLock<metrics::Histogram>,
    sold_out_at: OnceLock<metrics::Gauge>,
}

impl SaleSeries {
    fn new(sale_id: &str) -> Self {
        SaleSeries {
            sale: sale_id.to_string(),
            requests: Default::default(),
            duration: OnceLock::new(),
            refusals: Default::default(),
            waited: OnceLock::new(),
            sold_out_at: OnceLock::new(),
        }
    }

    /// A sale's series with a counter of every refusal reason from the
    /// start: for [`OTHER_SALE`], so that every reason has a series at zero
    /// (a rate sees the first refusal, a dashboard lists the reasons).
    fn with_every_refusal(sale_id: &str) -> Self {
        let series = SaleSeries::new(sale_id);
        for reason in Reason::ALL {
            series.refusal(reason);
        }
        series
    }

    /// `seckill_sale_sold_out_timestamp_seconds`: when this gateway saw the
    /// sale sell out (Unix seconds), 0 while it has stock again. Registered
    /// at the first sell-out.
    fn sold_out(&self, at: Option<f64>) {
        match at {
            Some(at) => self
                .sold_out_at
                .get_or_init(|| {
                    metrics::gauge!("seckill_sale_sold_out_timestamp_seconds",
                        "sale" => self.sale.clone())
                })
                .set(at),
            None => {
                if let Some(g) = self.sold_out_at.get() {
                    g.set(0.0);
                }
            }
        }
    }

    /// Counts one answered purchase request of the sale, and its time.
    pub fn answered(&self, status: Status, seconds: f64) {
        self.requests[status as usize]
            .get_or_init(|| {
                metrics::counter!("seckill_sale_requests_total",
                    "sale" => self.sale.clone(), "outcome" => status.name())
            })
            .increment(1);
        self.duration
            .get_or_init(|| {
                metrics::histogram!("seckill_sale_request_duration_seconds", "sale" => self.sale.clone())
            })
            .record(seconds);
    }

    /// Counts one refusal for `reason`.
    pub fn refused(&self, reason: Reason) {
        self.refusal(reason).increment(1);
    }

    fn refusal(&self, reason: Reason) -> &metrics::Counter {
        self.refusals[reason as usize].get_or_init(|| {
            metrics::counter!("seckill_gateway_refusals_total",
                "sale" => self.sale.clone(), "reason" => reason.as_str())
        })
    }

    /// Records the time a buyer waited in line for its token.
    pub fn waited(&self, seconds: f64) {
        self.waited
            .get_or_init(|| {
                metrics::histogram!("seckill_gateway_wait_duration_seconds", "sale" => self.sale.clone())
            })
            .record(seconds);
    }
}

/// Now, in Unix seconds (to the millisecond).
fn unix_seconds() -> f64 {
    seckill_inventory::now_ms() as f64 / 1000.0
}

/// One sale as the gateway sees it.
pub struct SaleEntry {
    pub spec: SaleSpec,
    pub bucket: Arc<dyn TokenBucket>,
    /// Buyers waiting here for a token (`fifo` admission).
    pub line: Arc<Line>,
    pub series: SaleSeries,
    sold_out: AtomicBool,
    /// Remaining stock as last read from the inventory, published as
    /// `seckill_stock_remaining` when it changes.
    remaining: AtomicU64,
    stock_gauge: metrics::Gauge,
}

impl SaleEntry {
    pub fn sold_out(&self) -> bool {
        self.sold_out.load(Ordering::Relaxed)
    }

    /// Sells again after units came back: only on a read of the store made
    /// after the release (a periodic read may predate a sell-out).
    pub fn mark_available(&self, remaining: u64) {
        if self.sold_out.swap(false, Ordering::Relaxed) {
            self.series.sold_out(None);
            self.bucket.quiet(false);
        }
        self.set_remaining(remaining);
    }

    /// Marks the sale sold out here; everyone waiting in line is answered
    /// `410` at once.
    pub fn mark_sold_out(&self) {
        if !self.sold_out.swap(true, Ordering::Relaxed) {
            self.series.sold_out(Some(unix_seconds()));
            self.bucket.quiet(true);
        }
        self.set_remaining(0);
        self.line.close(Status::SoldOut);
    }

    /// Records the remaining stock; the gauge moves only on a change.
    fn set_remaining(&self, remaining: u64) {
        if self.remaining.swap(remaining, Ordering::Relaxed) != remaining {
            self.stock_gauge.set(remaining as f64);
        }
    }
}

/// The local sales, by id.
pub struct Catalog {
    sales: DashMap<String, Arc<SaleEntry>>,
    /// Sales this gateway served that the store no longer has, though no
    /// operator removed them: the store lost its data. They are refused
    /// (`503 store_lost`) and cannot be created again until the store is
    /// restored or an operator acknowledges the loss.
    lost: DashMap<String, ()>,
    lost_gauge: metrics::Gauge,
    /// Refusals of sales not in the catalog.
    other: SaleSeries,
    /// Sales the store did not have when last asked, and when.
    misses: DashMap<String, Instant>,
    reads: Semaphore,
    max_sales: usize,
    /// Held while a sale is created through this gateway, so that
    /// concurrent creations cannot overshoot `max_sales` together.
    pub creating: tokio::sync::Mutex<()>,
}

impl Catalog {
    /// An empty catalog that holds at most `max_sales` sales.
    pub fn new(max_sales: usize) -> Self {
        Catalog {
            sales: DashMap::new(),
            lost: DashMap::new(),
            lost_gauge: metrics::gauge!("seckill_store_lost_sales"),
            other: SaleSeries::with_every_refusal(OTHER_SALE),
            misses: DashMap::new(),
            reads: Semaphore::new(MAX_READS),
            max_sales,
            creating: tokio::sync::Mutex::new(()),
        }
    }

    pub fn get(&self, sale_id: &str) -> Option<Arc<SaleEntry>> {
        self.sales.get(sale_id).map(|e| e.clone())
    }

    /// Counts an answered purchase of `sale_id` (and its refusal, if it
    /// was refused) on the sale's series, or on [`OTHER_SALE`]'s: one look
    /// into the catalog, then only atomics.
    pub fn answered(&self, sale_id: &str, status: Status, seconds: f64, refused: Option<Reason>) {
        let sale = self.sales.get(sale_id);
        let series = sale.as_deref().map_or(&self.other, |s| &s.series);
        series.answered(status, seconds);
        if let Some(reason) = refused {
            series.refused(reason);
        }
    }

    /// Whether the store said a moment ago that it has no `sale_id`.
    pub fn missed_lately(&self, sale_id: &str) -> bool {
        self.misses
            .get(sale_id)
            .is_some_and(|at| at.elapsed() < MISS_TTL)
    }

    /// Remembers that the store has no `sale_id`.
    pub fn note_miss(&self, sale_id: &str) {
        if self.misses.len() >= MAX_MISSES {
            self.misses.clear();
        }
        self.misses.insert(sale_id.to_string(), Instant::now());
    }

    /// Leave to read an unknown sale from the store; `None` while the most
    /// such reads are in flight.
    pub fn read_permit(&self) -> Option<SemaphorePermit<'_>> {
        self.reads.try_acquire().ok()
    }

    /// Whether `sale_id` is here already or there is room for it.
    pub fn has_room_for(&self, sale_id: &str) -> bool {
        self.sales.contains_key(sale_id) || self.sales.len() < self.max_sales
    }

    /// Most sales this catalog holds.
    pub fn max_sales(&self) -> usize {
        self.max_sales
    }

    /// Brings one sale up to date. A changed definition gets a fresh entry
    /// (and bucket); an unchanged one only has its sold-out flag and stock
    /// updated. A new sale beyond `max_sales` is not installed. Returns
    /// true when the entry was created or replaced.
    pub fn upsert(&self, status: &SaleStatus, buckets: &dyn BucketFactory) -> bool {
        let remaining = status.remaining();
        let sold_out = remaining == 0;
        if let Some(e) = self.sales.get(&status.spec.sale_id) {
            if e.spec == status.spec {
                if sold_out {
                    e.mark_sold_out();
                } else {
                    e.set_remaining(remaining);
                }
                return false;
            }
        } else if self.sales.len() >= self.max_sales {
            return false;
        }
        // Back in the store (restored from its backup): served again.
        self.forget_lost(&status.spec.sale_id);
        self.misses.remove(&status.spec.sale_id);
        let spec = status.spec.clone();
        let config = BucketConfig {
            rate_per_sec: spec.token_rate,
            capacity: spec.token_capacity,
        };
        // A change that leaves the bucket's shape keeps the bucket and the
        // line (a pause, a new stock): no burst of fresh tokens, nobody's
        // place lost. A new shape starts both afresh; the buyers waiting
        // are told to come back.
        let old = self.sales.get(&spec.sale_id).map(|e| e.clone());
        let (bucket, line) = match old {
            Some(e)
                if e.spec.token_rate == config.rate_per_sec
                    && e.spec.token_capacity == config.capacity =>
            {
                (e.bucket.clone(), e.line.clone())
            }
            old => {
                if let Some(e) = old {
                    e.line.close(Status::RateLimited);
                }
                (
                    buckets.bucket(&spec.sale_id, config),
                    Arc::new(Line::new(&spec.sale_id, spec.token_capacity)),
                )
            }
        };
        // A sold-out sale needs no tokens (a kept bucket may have been
        // quiet, and be needed again).
        bucket.quiet(sold_out);
        let stock_gauge =
            metrics::gauge!("seckill_stock_remaining", "sale" => spec.sale_id.clone());
        stock_gauge.set(remaining as f64);
        let entry = SaleEntry {
            series: SaleSeries::new(&spec.sale_id),
            spec,
            bucket,
            line,
            sold_out: AtomicBool::new(sold_out),
            remaining: AtomicU64::new(remaining),
            stock_gauge,
        };
        if sold_out {
            entry.series.sold_out(Some(unix_seconds()));
            entry.line.close(Status::SoldOut);
        }
        self.sales
            .insert(status.spec.sale_id.clone(), Arc::new(entry));
        true
    }

    pub fn remove(&self, sale_id: &str) -> bool {
        self.sales.remove(sale_id).is_some()
    }

    /// Takes a local sale out of service as lost from the store (its
    /// bucket goes with it, so no tokens are generated for it). False when
    /// it was not a local sale.
    pub fn mark_lost(&self, sale_id: &str) -> bool {
        if self.sales.remove(sale_id).is_none() {
            return false;
        }
        self.lost.insert(sale_id.to_string(), ());
        self.lost_gauge.set(self.lost.len() as f64);
        true
    }

    /// Whether `sale_id` was lost from the store.
    pub fn is_lost(&self, sale_id: &str) -> bool {
        self.lost.contains_key(sale_id)
    }

    /// Forgets a lost sale: the store has it again, or an operator
    /// acknowledged the loss. False when it was not lost.
    pub fn forget_lost(&self, sale_id: &str) -> bool {
        let forgot = self.lost.remove(sale_id).is_some();
        if forgot {
            self.lost_gauge.set(self.lost.len() as f64);
        }
        forgot
    }

    /// Whether `sale_id` is a local sale.
    pub fn contains(&self, sale_id: &str) -> bool {
        self.sales.contains_key(sale_id)
    }

    /// Number of local sales.
    pub fn len(&self) -> usize {
        self.sales.len()
    }

    /// Ids of the local sales.
    pub fn ids(&self) -> Vec<String> {
        self.sales.iter().map(|e| e.key().clone()).collect()
    }

    /// The local sales.
    pub fn entries(&self) -> Vec<Arc<SaleEntry>> {
        self.sales.iter().map(|e| e.value().clone()).collect()
    }
}
