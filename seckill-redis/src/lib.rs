//! Redis implementations of the token bucket, the request queue and the
//! inventory, for the distributed mode: any number of gateways and seckill
//! services share one Redis or one Redis Cluster.
//!
//! [`RedisStore::connect`] opens one multiplexed connection (single Redis,
//! or a cluster connection seeded by several nodes) and a pub/sub
//! subscription for catalog events, and hands out the three
//! implementations, which share them:
//!
//! ```no_run
//! # async fn f() -> Result<(), seckill_redis::StoreError> {
//! use std::sync::Arc;
//! let store = seckill_redis::RedisStore::connect(&["redis://127.0.0.1:6379/".to_string()], false).await?;
//! let inventory: Arc<dyn seckill_inventory::Inventory> = Arc::new(store.inventory());
//! let queue: Arc<dyn seckill_queue::RequestQueue> = Arc::new(store.queue());
//! let buckets: Arc<dyn token_bucket::BucketFactory> = Arc::new(store.buckets());
//! # Ok(()) }
//! ```
//!
//! Every key of a sale carries the hash tag `{sale:ID}` (see [`keys`]), so a
//! sale's multi-key scripts run on one shard. Every command is bounded by
//! [`StoreConfig::command_timeout`]: with Redis gone, callers get an
//! `Unavailable` error quickly and fail closed; with Redis stalled, after
//! one timeout they get it at once for [`StoreConfig::fail_fast_for`].

#![forbid(unsafe_code)]

mod bucket;
pub mod commands;
mod conn;
mod events;
mod inventory;
pub mod keys;
mod queue;

use std::sync::Arc;
use std::time::Duration;

pub use bucket::{RedisBucket, RedisBuckets};
pub use conn::Conn;
pub use inventory::{order_of, RedisInventory};
pub use queue::RedisQueue;

use ::seckill_inventory::SaleEvent;
use tokio::sync::broadcast;

/// Errors of connecting the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// Tunables of the Redis store. The defaults suit production; tests shorten
/// the timeouts.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Upper bound of every command (and of connecting).
    pub command_timeout: Duration,
    /// After a command timed out, how long every command fails at once
    /// before one goes through as a probe: a stalled Redis costs the
    /// callers under load one timeout, not one each.
    pub fail_fast_for: Duration,
    /// How long request results and idempotency keys are kept.
    pub retention: Duration,
    /// A pending queue entry idle this long is reclaimed by another consumer.
    pub reclaim_idle: Duration,
    /// How often a consumer looks for entries to reclaim.
    pub reclaim_every: Duration,
    /// Longest pause between two reads of idle queues.
    pub max_poll_interval: Duration,
    /// How often a consumer re-reads the set of open queues. A queue opened
    /// in between is announced by a catalog event and read at once.
    pub queue_refresh_every: Duration,
    /// How often a consumer reads a queue that has been empty for a second
    /// (a quiet or sold-out sale); busy queues are read on every pass.
    pub idle_queue_poll: Duration,
    /// Expiry of the generator lease; a dead generator is replaced after it.
    pub generator_lease: Duration,
    /// How often the lease holder adds tokens.
    pub generator_tick: Duration,
    /// How long tokens taken into a gateway's local lease stay usable.
    pub token_lease: Duration,
    /// Most tokens a gateway takes with one `LPOP`.
    pub max_token_batch: u32,
    /// Prefix of the global keys and the event channel (see [`keys`]).
    pub namespace: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            command_timeout: Duration::from_secs(1),
            // Short against a sale's seconds: a stall that has passed costs
            // at most this much more refusal.
            fail_fast_for: Duration::from_millis(200),
            // As the memory inventory: ten minutes (docs/API.md).
            retention: Duration::from_secs(600),
            reclaim_idle: Duration::from_secs(5),
            reclaim_every: Duration::from_secs(1),
            max_poll_interval: Duration::from_millis(10),
            queue_refresh_every: Duration::from_secs(1),
            idle_queue_poll: Duration::from_millis(50),
            generator_lease: Duration::from_secs(3),
            generator_tick: Duration::from_millis(10),
            token_lease: Duration::from_millis(150),
            max_token_batch: 32,
            namespace: keys::NAMESPACE.to_string(),
        }
    }
}

/// A connected Redis store: the shared connection, configuration and the
/// catalog-event subscription.
#[derive(Clone)]
pub struct RedisStore {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub conn: Conn,
    pub config: StoreConfig,
    pub events: broadcast::Sender<SaleEvent>,
    /// Ends the subscription task with the store.
    _subscriber: events::Subscriber,
}

impl Shared {
    /// How long results and idempotency keys are kept, in milliseconds.
    pub fn retention_ms(&self) -> u64 {
        self.config.retention.as_millis() as u64
    }

    /// Publishes a catalog event (`changed:ID`, `removed:ID`, `sold_out:ID`)
    /// to every process. Best effort: gateways and consumers also re-read
    /// the catalog periodically, so a lost event only delays.
    pub(crate) async fn publish(&self, message: String) {
        let mut conn = self.conn.clone();
        let sent: Result<i64, _> =
            redis::AsyncCommands::publish(&mut conn, keys::events(&self.config.namespace), message)
                .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "cannot publish a catalog event");
        }
    }
}

impl RedisStore {
    /// Connects with the default configuration. `urls`: one URL for a single
    /// Redis (`cluster` false), or the seed nodes of a Redis Cluster. A bare
    /// `host:port` means `redis://host:port/`.
    pub async fn connect(urls: &[String], cluster: bool) -> Result<RedisStore, StoreError> {
        Self::connect_with(urls, cluster, StoreConfig::default()).await
    }

    /// Connects with the given configuration.
    pub async fn connect_with(
        urls: &[String],
        cluster: bool,
        config: StoreConfig,
    ) -> Result<RedisStore, StoreError> {
        let urls: Vec<String> = urls.iter().map(|u| normalize(u)).collect();
        let urls = &urls[..];
        let conn =
            Conn::connect(urls, cluster, config.command_timeout, config.fail_fast_for).await?;
        let (events, _) = broadcast::channel(1024);
        let subscriber = events::Subscriber::start(
            urls.to_vec(),
            keys::events(&config.namespace),
            events.clone(),
            config.command_timeout,
        )
        .await?;
        Ok(RedisStore {
            shared: Arc::new(Shared {
                conn,
                config,
                events,
                _subscriber: subscriber,
            }),
        })
    }

    /// The inventory on this store.
    pub fn inventory(&self) -> RedisInventory {
        RedisInventory::new(self.shared.clone())
    }

    /// The request queue on this store, with a consumer name unique to it.
    pub fn queue(&self) -> RedisQueue {
        RedisQueue::new(self.shared.clone())
    }

    /// The token-bucket factory on this store.
    pub fn buckets(&self) -> RedisBuckets {
        RedisBuckets::new(self.shared.clone())
    }

    /// A handle on the shared connection, for tools and tests.
    pub fn conn(&self) -> Conn {
        self.shared.conn.clone()
    }

    /// The configuration in use.
    pub fn config(&self) -> &StoreConfig {
        &self.shared.config
    }
}

/// `host:port` → `redis://host:port/`; URLs with a scheme stay as they are.
fn normalize(url: &str) -> String {
    let url = url.trim();
    if url.contains("://") {
        url.to_string()
    } else {
        format!("redis://{url}/")
    }
}

/// Maps a Redis error to the text of an `Unavailable` error.
pub(crate) fn describe(e: &redis::RedisError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn bare_addresses_become_urls() {
        assert_eq!(super::normalize("10.0.0.1:7000"), "redis://10.0.0.1:7000/");
        assert_eq!(super::normalize(" redis://a:1/ "), "redis://a:1/");
        assert_eq!(super::normalize("rediss://a:1"), "rediss://a:1");
    }
}
