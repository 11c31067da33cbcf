//! The gateway's local copy of the sales: what a purchase request is
//! checked against without any I/O (existence, window, sold-out flag), and
//! each sale's token bucket.
//!
//! It follows the inventory: the sale events as they come, and a periodic
//! resynchronisation that covers missed events. It holds at most
//! `max_sales` sales (`--max-sales`), so what a gateway keeps and does per
//! sale is bounded.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use seckill_inventory::{SaleSpec, SaleStatus};
use token_bucket::{BucketConfig, BucketFactory, TokenBucket};

/// One sale as the gateway sees it.
pub struct SaleEntry {
    pub spec: SaleSpec,
    pub bucket: Arc<dyn TokenBucket>,
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
        self.sold_out.store(false, Ordering::Relaxed);
        self.set_remaining(remaining);
    }

    pub fn mark_sold_out(&self) {
        self.sold_out.store(true, Ordering::Relaxed);
        self.set_remaining(0);
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
            max_sales,
            creating: tokio::sync::Mutex::new(()),
        }
    }

    pub fn get(&self, sale_id: &str) -> Option<Arc<SaleEntry>> {
        self.sales.get(sale_id).map(|e| e.clone())
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
        let spec = status.spec.clone();
        let bucket = buckets.bucket(
            &spec.sale_id,
            BucketConfig {
                rate_per_sec: spec.token_rate,
                capacity: spec.token_capacity,
            },
        );
        let stock_gauge =
            metrics::gauge!("seckill_stock_remaining", "sale" => spec.sale_id.clone());
        stock_gauge.set(remaining as f64);
        let entry = SaleEntry {
            spec,
            bucket,
            sold_out: AtomicBool::new(sold_out),
            remaining: AtomicU64::new(remaining),
            stock_gauge,
        };
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
