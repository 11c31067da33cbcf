//! Backends for the suites: one [`Env`] per test, whatever the store.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use seckill_inventory::{Purchase, SaleSpec};
use seckill_redis::{RedisStore, StoreConfig};
use seckill_stores::Stores;
use seckill_test_support::{scratch_dir, Options, RedisCluster, RedisServer};
use tempfile::TempDir;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Memory,
    /// The embedded mode's durable stores, in a data directory of the test.
    Durable,
    Single,
    Cluster,
}

/// The stores of one backend, and what keeps it running. Derefs to the
/// [`Stores`], so a suite reads `env.inventory`, `env.queue`, `env.buckets`.
pub struct Env {
    pub kind: Kind,
    pub stores: Stores,
    pub server: Option<RedisServer>,
    pub cluster: Option<Arc<RedisCluster>>,
    /// Global-key namespace of this test (tests share the cluster).
    pub namespace: String,
    /// The data directory of a durable backend, removed with the test.
    pub _data_dir: Option<TempDir>,
}

impl std::ops::Deref for Env {
    type Target = Stores;
    fn deref(&self) -> &Stores {
        &self.stores
    }
}

impl Env {
    pub async fn new(kind: Kind) -> Env {
        Self::with_options(kind, Options::default()).await
    }

    pub async fn with_options(kind: Kind, options: Options) -> Env {
        match kind {
            Kind::Memory => Env {
                kind,
                namespace: String::new(),
                stores: Stores::memory(Duration::from_secs(600)),
                server: None,
                cluster: None,
                _data_dir: None,
            },
            Kind::Durable => {
                let dir = scratch_dir();
                let stores = Stores::durable(dir.path(), Duration::from_secs(600))
                    .expect("open the data directory");
                Env {
                    kind,
                    namespace: String::new(),
                    stores,
                    server: None,
                    cluster: None,
                    _data_dir: Some(dir),
                }
            }
            Kind::Single => {
                let server = tokio::task::block_in_place(|| RedisServer::start_with(options));
                let namespace = format!("t{}", seckill_inventory::unique_id());
                let store = connect(&[server.url()], false, &namespace).await;
                Env::redis(kind, store, Some(server), None, namespace)
            }
            Kind::Cluster => {
                let cluster = shared_cluster();
                let namespace = format!("t{}", seckill_inventory::unique_id());
                let store = connect(&cluster.urls(), true, &namespace).await;
                Env::redis(kind, store, None, Some(cluster), namespace)
            }
        }
    }

    fn redis(
        kind: Kind,
        store: RedisStore,
        server: Option<RedisServer>,
        cluster: Option<Arc<RedisCluster>>,
        namespace: String,
    ) -> Env {
        Env {
            kind,
            namespace,
            stores: Stores::redis(store),
            server,
            cluster,
            _data_dir: None,
        }
    }

    pub fn is_redis(&self) -> bool {
        matches!(self.kind, Kind::Single | Kind::Cluster)
    }

    /// Another connection to the same Redis (another "process").
    pub async fn second_store(&self) -> RedisStore {
        self.second_store_with(test_config(&self.namespace)).await
    }

    /// Another connection to the same Redis, with its own configuration.
    pub async fn second_store_with(&self, config: StoreConfig) -> RedisStore {
        let (urls, cluster) = match (&self.server, &self.cluster) {
            (Some(s), _) => (vec![s.url()], false),
            (_, Some(c)) => (c.urls(), true),
            _ => panic!("memory has no second store"),
        };
        RedisStore::connect_with(&urls, cluster, config)
            .await
            .expect("connect to redis")
    }

    pub fn store(&self) -> &RedisStore {
        self.stores.redis.as_ref().expect("a Redis backend")
    }
}

/// Short timeouts so failure and reclaim tests run in seconds.
pub fn test_config(namespace: &str) -> StoreConfig {
    StoreConfig {
        namespace: namespace.to_string(),
        command_timeout: Duration::from_millis(500),
        reclaim_idle: Duration::from_millis(500),
        reclaim_every: Duration::from_millis(100),
        generator_lease: Duration::from_millis(1500),
        ..StoreConfig::default()
    }
}

pub async fn connect(urls: &[String], cluster: bool, namespace: &str) -> RedisStore {
    RedisStore::connect_with(urls, cluster, test_config(namespace))
        .await
        .expect("connect to redis")
}

/// One cluster for all tests that run at the same time; the last one to
/// finish stops it (its `Drop` kills the nodes).
fn shared_cluster() -> Arc<RedisCluster> {
    static CLUSTER: Mutex<Weak<RedisCluster>> = Mutex::new(Weak::new());
    let mut slot = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = slot.upgrade() {
        return c;
    }
    let c = Arc::new(tokio::task::block_in_place(|| RedisCluster::start(3)));
    *slot = Arc::downgrade(&c);
    c
}

/// A sale id unique to this test run.
pub fn sale_id(name: &str) -> String {
    format!("{name}-{}", seckill_inventory::unique_id())
}

pub fn spec(sale: &str, stock: u64, limit: u32) -> SaleSpec {
    SaleSpec {
        per_user_limit: limit,
        ..SaleSpec::new(sale, stock)
    }
}

/// A purchase of `qty` by `user`, due in ten seconds.
pub fn purchase(sale: &str, user: &str, qty: u32) -> Purchase {
    Purchase {
        request_id: seckill_inventory::request_id(sale),
        sale_id: sale.to_string(),
        user_id: user.to_string(),
        quantity: qty,
        idempotency_key: None,
        deadline_ms: seckill_inventory::now_ms() + 10_000,
        store_by_ms: 0,
    }
}

/// Generates one `#[tokio::test]` per backend for a suite function.
#[macro_export]
macro_rules! each_backend {
    ($($suite:ident),* $(,)?) => {
        $(
            mod $suite {
                use $crate::suites::harness::{Env, Kind};

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    super::$suite(Env::new(Kind::Memory).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn durable() {
                    super::$suite(Env::new(Kind::Durable).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn single() {
                    super::$suite(Env::new(Kind::Single).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn cluster() {
                    super::$suite(Env::new(Kind::Cluster).await).await;
                }
            }
        )*
    };
}
