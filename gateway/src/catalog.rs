//! The gateway's local copy of the sales: what a purchase request is
//! checked against without any I/O (existence, window, sold-out flag), and
//! each sale's token bucket.
//!
//! It follows the inventory: the sale events as they come, and a full
//! resynchronisation every second that also covers missed events.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use seckill_inventory::{SaleSpec, SaleStatus};
use token_bucket::{BucketConfig, BucketFactory, TokenBucket};

/// One sale as the gateway sees it.
pub struct SaleEntry {
    pub spec: SaleSpec,
    pub bucket: Arc<dyn TokenBucket>,
    sold_out: AtomicBool,
}

impl SaleEntry {
    pub fn sold_out(&self) -> bool {
        self.sold_out.load(Ordering::Relaxed)
    }

    pub fn mark_sold_out(&self) {
        self.sold_out.store(true, Ordering::Relaxed);
    }
}

/// The local sales, by id.
#[derive(Default)]
pub struct Catalog {
    sales: DashMap<String, Arc<SaleEntry>>,
}

impl Catalog {
    pub fn get(&self, sale_id: &str) -> Option<Arc<SaleEntry>> {
        self.sales.get(sale_id).map(|e| e.clone())
    }

    /// Brings one sale up to date. A changed definition gets a fresh entry
    /// (and bucket); an unchanged one only has its sold-out flag updated.
    /// Returns true when the entry was created or replaced.
    pub fn upsert(&self, status: &SaleStatus, buckets: &dyn BucketFactory) -> bool {
        let sold_out = status.remaining() == 0;
        if let Some(e) = self.sales.get(&status.spec.sale_id) {
            if e.spec == status.spec {
                if sold_out {
                    e.mark_sold_out();
                }
                return false;
            }
        }
        let spec = status.spec.clone();
        let bucket = buckets.bucket(
            &spec.sale_id,
            BucketConfig {
                rate_per_sec: spec.token_rate,
                capacity: spec.token_capacity,
            },
        );
        let entry = SaleEntry {
            spec,
            bucket,
            sold_out: AtomicBool::new(sold_out),
        };
        self.sales
            .insert(status.spec.sale_id.clone(), Arc::new(entry));
        true
    }

    pub fn remove(&self, sale_id: &str) -> bool {
        self.sales.remove(sale_id).is_some()
    }

    /// Ids of the local sales.
    pub fn ids(&self) -> Vec<String> {
        self.sales.iter().map(|e| e.key().clone()).collect()
    }
}
