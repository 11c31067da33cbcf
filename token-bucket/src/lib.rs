//! The queue-backed token bucket in front of each sale.
//!
//! A generator puts tokens into a fixed-capacity token queue at the
//! backend's pace and discards them when the queue is full; a gateway takes
//! one token per purchase request and refuses the request at once when there
//! is none. The bucket thus caps what reaches the request queue at the rate
//! the seckill service can bear, plus at most one queue's worth of burst.
//!
//! For fair admission (`fifo`) the same tokens are handed out in arrival
//! order instead: each arrival takes a ticket, and tokens go to the
//! tickets in order ([`TokenBucket::join`], [`TokenBucket::turn`]). Where
//! the bucket is shared (Redis) the tickets are too, so arrival order holds
//! across every gateway.
//!
//! A bucket starts full: a sale that becomes active has its capacity's
//! worth of tokens at that moment ([`TokenBucket::open`]).
//!
//! [`MemoryBucket`] serves the embedded mode; the Redis implementation sits
//! behind the same traits.

#![forbid(unsafe_code)]

mod memory;

pub use memory::{MemoryBucket, MemoryBuckets};

use std::sync::Arc;
use std::time::Duration;

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

/// Where a sale's line stands: tickets are numbered from 1 in arrival
/// order; every ticket up to `served` has had its token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Turns {
    /// The last ticket handed out.
    pub issued: u64,
    /// The last ticket that has its token.
    pub served: u64,
}

impl Turns {
    /// Tickets waiting for a token.
    pub fn waiting(&self) -> u64 {
        self.issued.saturating_sub(self.served)
    }
}

/// One arrival's ticket, and the line as its taking left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub ticket: u64,
    pub turns: Turns,
}

impl Place {
    /// Whether the ticket has its token already.
    pub fn served(&self) -> bool {
        self.ticket <= self.turns.served
    }

    /// Tokens still to come before this ticket's (1 = the next one).
    pub fn position(&self) -> u64 {
        self.ticket.saturating_sub(self.turns.served)
    }
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

    /// Fair admission: the next ticket, in arrival order (where the bucket
    /// is shared, across every process). Tokens available go to the
    /// waiting tickets, oldest first, before the answer.
    async fn join(&self) -> Result<Place, BucketError>;

    /// Hands the tokens generated since the last look to the oldest
    /// waiting tickets; the line as it stands then.
    async fn turn(&self) -> Result<Turns, BucketError>;

    /// How often a process with tickets waiting looks at [`turn`](Self::turn):
    /// about the time between two tokens, at least the generator's tick.
    fn turn_interval(&self) -> Duration;

    /// Called when the sale is created: its bucket is full (its capacity)
    /// from that moment, for every process, not after the generator's
    /// first ticks. A bucket already running is left as it is.
    async fn open(&self) -> Result<(), BucketError>;

    /// Whether the sale needs tokens for now: a sold-out sale takes none,
    /// so a generator that runs on its own (the shared bucket's) stops
    /// issuing store commands until it is told otherwise. A bucket that
    /// generates on demand (the memory one) has nothing to stop.
    fn quiet(&self, _quiet: bool) {}
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
