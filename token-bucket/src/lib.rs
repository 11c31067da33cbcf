//! The queue-backed token bucket in front of each sale.
//!
//! A generator puts tokens into a fixed-capacity token queue at the
//! backend's pace and discards them when the queue is full; a gateway takes
//! one token per purchase request and refuses the request at once when there
//! is none. The bucket thus caps what reaches the request queue at the rate
//! the seckill service can bear, plus at most one queue's worth of burst.
//!
//! [`MemoryBucket`] serves the embedded mode; the Redis implementation sits
//! behind the same traits.

#![forbid(unsafe_code)]

mod memory;

pub use memory::{MemoryBucket, MemoryBuckets};

use std::sync::Arc;

use async_trait::async_trait;

/// The shape of one sale's bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens the generator adds per second.
    pub rate_per_sec: u32,
    /// Capacity of the token queue; tokens beyond it are discarded.
    pub capacity: u32,
}

/// Errors of a token bucket.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// The backing store cannot be reached; callers fail closed.
    #[error("token store unavailable: {0}")]
    Unavailable(String),
}

/// One sale's token bucket.
#[async_trait]
pub trait TokenBucket: Send + Sync + 'static {
    /// Takes one token if there is one. Never waits for a token.
    async fn try_take(&self) -> Result<bool, BucketError>;

    /// Tokens available now (as far as this process knows).
    fn available(&self) -> u64;

    /// Whether a take now would surely find no token, known without I/O:
    /// lets a caller refuse before costlier work (verifying a buyer's
    /// token). `false` whenever the bucket cannot be sure.
    fn known_empty(&self) -> bool;
}

/// Makes the bucket of each sale; a gateway holds one factory.
pub trait BucketFactory: Send + Sync + 'static {
    /// The bucket of `sale_id`, generating at its rate: a memory bucket
    /// adds the tokens due since it was last looked at (no task per sale);
    /// a Redis bucket takes part in the shared generator lease.
    fn bucket(&self, sale_id: &str, config: BucketConfig) -> Arc<dyn TokenBucket>;
}

/// Counters every implementation reports, labelled by sale.
pub(crate) struct BucketMetrics {
    pub issued: metrics::Counter,
    pub taken: metrics::Counter,
    pub discarded: metrics::Counter,
    pub available: metrics::Gauge,
}

impl BucketMetrics {
    pub fn new(sale_id: &str) -> Self {
        let sale = sale_id.to_string();
        BucketMetrics {
            issued: metrics::counter!("seckill_tokens_issued_total", "sale" => sale.clone()),
            taken: metrics::counter!("seckill_tokens_taken_total", "sale" => sale.clone()),
            discarded: metrics::counter!("seckill_tokens_discarded_total", "sale" => sale.clone()),
            available: metrics::gauge!("seckill_tokens_available", "sale" => sale),
        }
    }
}
