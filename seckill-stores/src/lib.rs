//! The set of stores a gateway or a seckill service runs on: the token
//! buckets, the request queue and the inventory, behind their traits, so
//! neither knows which implementation it holds.
//!
//! [`Stores::open`] is the one place that chooses the implementation, from
//! the options: for the embedded mode the durable store in `--data-dir`
//! (or memory only with `--data-dir none`), or a shared Redis (or Redis
//! Cluster) for the distributed mode. The behavioural suites in
//! `tests/` run every trait against every implementation.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use seckill_inventory::{Admission, Inventory, MemoryInventory};
use seckill_queue::{MemoryQueue, QueueError, RequestQueue, Ticket};
use seckill_redis::{RedisQueue, RedisStore, StoreConfig};
use seckill_sqlite::SqliteInventory;
use token_bucket::{BucketFactory, MemoryBuckets};

pub use seckill_redis::StoreError;
pub use seckill_sqlite::OpenError as DataDirError;

/// Why the stores cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Redis(#[from] StoreError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
}

/// The `--data-dir` value that keeps everything in memory.
pub const NO_DATA_DIR: &str = "none";

/// Where the shared state lives. Each option is a flag and an environment
/// variable.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreArgs {
    /// Redis URL: distributed mode. Unset = embedded mode (gateway only: all in one process).
    #[arg(long, env = "SECKILL_REDIS_URL", conflicts_with = "redis_cluster")]
    pub redis_url: Option<String>,
    /// Comma-separated seed nodes of a Redis Cluster (instead of --redis-url).
    #[arg(long, env = "SECKILL_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,
    /// How long request results and idempotency keys stay readable (at least 1000).
    #[arg(
        long,
        env = "SECKILL_RESULT_RETENTION_MS",
        default_value_t = 600_000,
        value_parser = clap::value_parser!(u64).range(1000..)
    )]
    pub result_retention_ms: u64,
    /// Embedded mode: directory of the durable store (created if absent;
    /// one process at a time); `none` = memory only, lost at exit.
    #[arg(long, env = "SECKILL_DATA_DIR", default_value = "seckill-data")]
    pub data_dir: PathBuf,
}

/// The defaults of in-process use (tests, tools): memory only, so nothing
/// lands in the working directory; the command line's default is
/// `seckill-data`.
impl Default for StoreArgs {
    fn default() -> Self {
        StoreArgs {
            redis_url: None,
            redis_cluster: Vec::new(),
            result_retention_ms: 600_000,
            data_dir: PathBuf::from(NO_DATA_DIR),
        }
    }
}

/// Where the shared state lives, decided from [`StoreArgs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Everything in one process, in memory.
    Embedded,
    Redis(String),
    RedisCluster(Vec<String>),
}

impl Mode {
    /// The store as a banner or an error line shows it: passwords masked
    /// ([`redact_url`]).
    pub fn shown(&self) -> String {
        match self {
            Mode::Embedded => "in memory".to_string(),
            Mode::Redis(url) => redact_url(url),
            Mode::RedisCluster(seeds) => {
                let seeds: Vec<String> = seeds.iter().map(|s| redact_url(s)).collect();
                format!("Cluster {}", seeds.join(","))
            }
        }
    }

    /// An error's text as shown: should the Redis client ever quote a URL of
    /// the options, its password is masked too.
    pub fn redact(&self, e: &impl std::fmt::Display) -> String {
        let urls = match self {
            Mode::Embedded => &[][..],
            Mode::Redis(url) => std::slice::from_ref(url),
            Mode::RedisCluster(seeds) => &seeds[..],
        };
        urls.iter().fold(e.to_string(), |text, url| {
            text.replace(url.as_str(), &redact_url(url))
        })
    }
}

impl StoreArgs {
    /// Embedded unless a Redis URL or cluster is given.
    pub fn mode(&self) -> Mode {
        let seeds: Vec<String> = self
            .redis_cluster
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        match (&self.redis_url, seeds.is_empty()) {
            (Some(url), _) => Mode::Redis(url.clone()),
            (None, false) => Mode::RedisCluster(seeds),
            (None, true) => Mode::Embedded,
        }
    }

    /// How long results and idempotency keys are kept.
    pub fn result_retention(&self) -> Duration {
        Duration::from_millis(self.result_retention_ms)
    }

    /// The embedded mode's data directory; `None` for memory only.
    pub fn data_dir(&self) -> Option<&Path> {
        (self.data_dir != Path::new(NO_DATA_DIR)).then_some(self.data_dir.as_path())
    }
}

/// The stores a process works with; memory or Redis, it does not know which.
#[derive(Clone)]
pub struct Stores {
    pub inventory: Arc<dyn Inventory>,
    pub queue: Arc<dyn RequestQueue>,
    pub buckets: Arc<dyn BucketFactory>,
    /// The Redis connection behind them, in the distributed mode.
    pub redis: Option<RedisStore>,
    /// The queue again, where it can admit and enqueue in one step.
    joint: Option<Arc<RedisQueue>>,
    /// Elsewhere, the admissions that claim an idempotency key go one at a
    /// time (see `admit_and_enqueue`).
    keyed: Arc<tokio::sync::Mutex<()>>,
}

impl Stores {
    /// Opens the stores the options name: in the embedded mode the durable
    /// store in the data directory (recovering it) or memory, else a
    /// connection to Redis (or the cluster).
    pub async fn open(args: &StoreArgs) -> Result<Stores, OpenError> {
        let config = StoreConfig {
            retention: args.result_retention(),
            ..StoreConfig::default()
        };
        let store = match (args.mode(), args.data_dir()) {
            (Mode::Embedded, Some(dir)) => {
                return Ok(Stores::durable(dir, args.result_retention())?)
            }
            (Mode::Embedded, None) => return Ok(Stores::memory(args.result_retention())),
            (Mode::Redis(url), _) => RedisStore::connect_with(&[url], false, config).await?,
            (Mode::RedisCluster(seeds), _) => {
                RedisStore::connect_with(&seeds, true, config).await?
            }
        };
        Ok(Stores::redis(store))
    }

    /// The in-memory stores of the embedded mode.
    pub fn memory(result_retention: Duration) -> Stores {
        Stores {
            inventory: Arc::new(MemoryInventory::new(result_retention)),
            queue: Arc::new(MemoryQueue::new()),
            buckets: Arc::new(MemoryBuckets),
            redis: None,
            joint: None,
            keyed: Arc::default(),
        }
    }

    /// The embedded mode's durable stores: the inventory in `dir` (see
    /// `seckill-sqlite`); the token buckets and the request queue in
    /// memory, rebuilt from the recovered sales (a queued request that was
    /// not decided before a stop ends `expired`).
    pub fn durable(dir: &Path, result_retention: Duration) -> Result<Stores, DataDirError> {
        Ok(Stores {
            inventory: Arc::new(SqliteInventory::open(dir, result_retention)?),
            queue: Arc::new(MemoryQueue::new()),
            buckets: Arc::new(MemoryBuckets),
            redis: None,
            joint: None,
            keyed: Arc::default(),
        })
    }

    /// The shared stores of the distributed mode, on one Redis connection.
    pub fn redis(store: RedisStore) -> Stores {
        let queue = Arc::new(store.queue());
        Stores {
            inventory: Arc::new(store.inventory()),
            queue: queue.clone(),
            buckets: Arc::new(store.buckets()),
            redis: Some(store),
            joint: Some(queue),
            keyed: Arc::default(),
        }
    }

    /// Admits the ticket's request in the inventory and queues the ticket:
    /// on Redis in one script (one round trip), elsewhere `admit` then
    /// `enqueue`. `Duplicate` is a repeat of a claimed idempotency key,
    /// answered whatever the queue's state. After `Full` or `UnknownSale`
    /// nothing stays recorded; after `Unavailable` the admission may have
    /// been recorded, or may yet be, and the caller withdraws it.
    pub async fn admit_and_enqueue(&self, ticket: &Ticket) -> Result<Admission, QueueError> {
        if let Some(queue) = &self.joint {
            return queue.admit_and_enqueue(ticket).await;
        }
        let purchase = &ticket.purchase;
        // A repeat must never name a request that is then withdrawn (the
        // queue was full): while one request of a key is between its
        // admission and its queueing, the key's other requests wait. Both
        // steps are in memory here, so the wait is short; requests without
        // a key cannot be repeats and do not wait.
        let _one_at_a_time = match purchase.idempotency_key {
            Some(_) => Some(self.keyed.lock().await),
            None => None,
        };
        match self.inventory.admit(purchase).await {
            Ok(Admission::Admitted) => {}
            Ok(duplicate) => return Ok(duplicate),
            Err(e) => return Err(QueueError::Unavailable(e.to_string())),
        }
        match self.queue.enqueue(ticket.clone()).await {
            Ok(()) => Ok(Admission::Admitted),
            Err(e @ (QueueError::Full(_) | QueueError::UnknownSale(_))) => {
                // Best effort, like the caller's after `Unavailable`: a
                // record left pending ends expired.
                let _ = self.inventory.withdraw(purchase).await;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether everything lives in this process.
    pub fn is_embedded(&self) -> bool {
        self.redis.is_none()
    }

    /// Succeeds while the inventory and the queue can be reached
    /// (readiness); the error says which cannot.
    pub async fn ready(&self) -> Result<(), String> {
        self.inventory
            .ping()
            .await
            .map_err(|e| format!("inventory: {e}"))?;
        self.queue.ping().await.map_err(|e| format!("queue: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_follows_the_options() {
        let mut a = StoreArgs::default();
        assert_eq!(a.mode(), Mode::Embedded);
        a.redis_cluster = vec![" ".into(), "a:1".into()];
        assert_eq!(a.mode(), Mode::RedisCluster(vec!["a:1".into()]));
        a.redis_url = Some("redis://x".into());
        assert_eq!(a.mode(), Mode::Redis("redis://x".into()));
    }

    #[test]
    fn the_data_dir_is_a_path_or_none() {
        let mut a = StoreArgs::default();
        assert_eq!(a.data_dir(), None);
        a.data_dir = PathBuf::from("seckill-data");
        assert_eq!(a.data_dir(), Some(Path::new("seckill-data")));
    }

    #[test]
    fn memory_stores_are_embedded() {
        assert!(Stores::memory(Duration::from_secs(1)).is_embedded());
    }
}

/// A Redis URL (or a cluster seed, `host:port` with or without a scheme)
/// as it may be shown in a banner or a log line: a password in it, in the
/// user part (`redis://user:pw@host`, `rediss://:pw@host`) or in a
/// `pass=`/`password=` query parameter (`redis+unix:///sock?pass=pw`),
/// becomes `***`; the user name stays, to tell accounts apart.
///
/// The user part ends at the last `@`, so a password with an unescaped
/// `@`, `/` or `?` in it is hidden whole; a stray `@` later in the URL
/// hides more than needed, never less.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let mut shown = scheme.to_string();
    let rest = match rest.rfind('@') {
        Some(at) => {
            let user_info = &rest[..at];
            match user_info.split_once(':') {
                Some((user, _password)) => shown.push_str(&format!("{user}:***@")),
                None => shown.push_str(&rest[..=at]),
            }
            &rest[at + 1..]
        }
        None => rest,
    };
    let Some((address, query)) = rest.split_once('?') else {
        shown.push_str(rest);
        return shown;
    };
    shown.push_str(address);
    shown.push('?');
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _))
                if key.eq_ignore_ascii_case("pass") || key.eq_ignore_ascii_case("password") =>
            {
                format!("{key}=***")
            }
            _ => pair.to_string(),
        })
        .collect();
    shown.push_str(&pairs.join("&"));
    shown
}

#[cfg(test)]
mod redact_tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden_and_users_kept() {
        for (url, shown) in [
            (
                "redis://:s3cret@127.0.0.1:6379",
                "redis://:***@127.0.0.1:6379",
            ),
            ("redis://app:s3cret@h:1/0", "redis://app:***@h:1/0"),
            ("rediss://app:s3cret@h:6380/", "rediss://app:***@h:6380/"),
            ("app:s3cret@10.0.0.1:7000", "app:***@10.0.0.1:7000"),
            ("redis://:p@ss/w?rd@h:1/", "redis://:***@h:1/"),
            (
                "redis+unix:///tmp/r.sock?db=1&pass=s3cret",
                "redis+unix:///tmp/r.sock?db=1&pass=***",
            ),
            (
                "unix:///tmp/r.sock?PASSWORD=s3cret",
                "unix:///tmp/r.sock?PASSWORD=***",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn urls_without_a_password_are_shown_as_given() {
        for url in [
            "redis://127.0.0.1:6379/",
            "redis://app@h:1",
            "10.0.0.1:7000",
            "redis://h:1/?protocol=resp3",
            "",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
}
