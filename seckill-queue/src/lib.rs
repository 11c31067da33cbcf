//! The request queue between the gateways and the seckill services.
//!
//! Admitted purchase requests wait here until a seckill service takes them,
//! at its own pace: the queue absorbs the spike the token bucket let
//! through. Each sale has its own bounded queue; a full queue refuses the
//! request (the gateway answers 503), it never drops or trims an entry that
//! has not been consumed.
//!
//! Delivery is at-least-once: a consumer takes a batch, decides it, and
//! acknowledges it only after the results are recorded and the callback was
//! attempted. The purchase step is idempotent, so a redelivery is harmless.
//!
//! [`MemoryQueue`] serves the embedded mode; the Redis implementation sits
//! behind the same trait.

#![forbid(unsafe_code)]

mod memory;

pub use memory::MemoryQueue;

use std::time::Duration;

use async_trait::async_trait;
use seckill_inventory::Purchase;
use serde::{Deserialize, Serialize};

/// One queued request: what to decide and where to send the result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub purchase: Purchase,
    /// gRPC address of the gateway that holds the client's connection.
    pub reply_to: String,
    /// Unix ms when the request entered the queue.
    pub enqueued_at_ms: u64,
    /// The W3C `traceparent` of the gateway's span, when the purchase is
    /// traced: the service's span joins its trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// A ticket handed to a consumer, to be acknowledged once decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub ticket: Ticket,
    /// The queue's own id of the entry (opaque to consumers).
    pub entry_id: String,
    /// How many times the entry has been handed out, this time included.
    pub deliveries: u32,
}

/// Errors of a request queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The sale's queue holds its capacity; the request is refused.
    #[error("request queue of sale {0} is full")]
    Full(String),
    /// The sale has no open queue.
    #[error("no request queue for sale {0}")]
    UnknownSale(String),
    /// The backing store cannot be reached; callers fail closed.
    #[error("queue store unavailable: {0}")]
    Unavailable(String),
}

/// The request queues of all sales.
#[async_trait]
pub trait RequestQueue: Send + Sync + 'static {
    /// Opens the queue of a sale with the given capacity, or changes the
    /// capacity of an open one.
    async fn open(&self, sale_id: &str, capacity: u32) -> Result<(), QueueError>;

    /// Closes a sale's queue to new entries. Entries already in it are
    /// still delivered, so every admitted request gets its answer.
    async fn close(&self, sale_id: &str) -> Result<(), QueueError>;

    /// Appends a ticket to its sale's queue, or refuses it when full.
    async fn enqueue(&self, ticket: Ticket) -> Result<(), QueueError>;

    /// Takes up to `max` entries, waiting up to `wait` for the first one.
    /// Sales are served in turn. An empty result means nothing arrived.
    async fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;

    /// Acknowledges decided entries; they will not be delivered again.
    async fn ack(&self, deliveries: &[Delivery]) -> Result<(), QueueError>;

    /// Moves entries that failed too many deliveries out of the queue, for
    /// inspection, after their requests were given a definite failure.
    async fn dead_letter(&self, deliveries: &[Delivery]) -> Result<(), QueueError>;

    /// Entries waiting in a sale's queue.
    async fn depth(&self, sale_id: &str) -> Result<u64, QueueError>;

    /// Succeeds while the queue store is reachable (readiness).
    async fn ping(&self) -> Result<(), QueueError>;
}

/// Gives the consumers' wait an upper bound that keeps shutdown prompt.
pub const MAX_WAIT: Duration = Duration::from_secs(1);
