//! One connection type over a single Redis and a Redis Cluster.
//!
//! Both variants multiplex many concurrent commands over few sockets and
//! reconnect by themselves. Every command is bounded by a response timeout,
//! so a dead or unreachable Redis turns into an error within that time,
//! never into a hang.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
use redis::{Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, Value};

/// Declared writing, writes nothing: see the script.
const WRITABLE: &str = include_str!("ready.lua");

/// A connection to a single Redis or to a Redis Cluster.
#[derive(Clone)]
pub struct Conn {
    inner: Inner,
    timeout: Duration,
    /// Requests sent (a pipeline counts once): round trips, for measuring.
    round_trips: Arc<AtomicU64>,
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to `urls[0]` (single) or to the cluster seeded by `urls`.
    pub async fn connect(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
    ) -> Result<Conn, RedisError> {
        let Some(first) = urls.first() else {
            return Err(invalid("no Redis URL given"));
        };
        let inner = if cluster {
            let client = ClusterClient::builder(urls.iter().map(String::as_str))
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(2)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .build()?;
            let conn = bounded(timeout, client.get_async_connection()).await?;
            Inner::Cluster(conn)
        } else {
            let client = redis::Client::open(first.as_str())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(200));
            let conn = bounded(timeout, ConnectionManager::new_with_config(client, config)).await?;
            Inner::Single(conn)
        };
        Ok(Conn {
            inner,
            timeout,
            round_trips: Arc::default(),
        })
    }

    /// Round trips made through this connection and its clones.
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Whether this is a cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner, Inner::Cluster(_))
    }

    /// Succeeds when the server accepts writes, in a cluster every primary:
    /// readiness. A Redis that answers `PING` and reads may still refuse
    /// every write (full at `maxmemory`, persistence failing, too few
    /// replicas), and then no purchase can be admitted.
    ///
    /// One round trip (in a cluster, one to each primary, in parallel). Every
    /// primary, not the shard of some readiness key: sales spread over all
    /// shards by their hash tags and every process serves every sale, so one
    /// shard refusing writes leaves sales that cannot sell. The script goes
    /// as `EVAL`, not `EVALSHA`: it is a few hundred bytes, and a node that
    /// lost its script cache then costs no second round trip.
    pub async fn check_writable(&mut self) -> Result<(), RedisError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(WRITABLE).arg(0);
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        match &mut self.inner {
            Inner::Single(c) => {
                let _: Value = bounded(self.timeout, cmd.query_async(c)).await?;
                Ok(())
            }
            Inner::Cluster(c) => {
                // No response policy: one reply per primary, by address, so
                // the error can name the shard that refuses.
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let replies = bounded(self.timeout, c.route_command(cmd, routing)).await?;
                first_refusal(replies)
            }
        }
    }
}

/// The first node's error among per-node replies (`address → reply`).
fn first_refusal(replies: Value) -> Result<(), RedisError> {
    let Value::Map(replies) = replies else {
        return Err(RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "per-node replies expected",
            format!("{replies:?}"),
        )));
    };
    for (node, reply) in replies {
        if let Value::ServerError(e) = reply {
            let node = match node {
                Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
                other => format!("{other:?}"),
            };
            let kind = e.kind().map_or(ErrorKind::Extension, ErrorKind::Server);
            let detail = match e.details() {
                Some(d) => format!("{node}: {} {d}", e.code()),
                None => format!("{node}: {}", e.code()),
            };
            return Err(RedisError::from((kind, "a primary refuses writes", detail)));
        }
    }
    Ok(())
}

/// Runs `fut` with a deadline; running out of time is an I/O timeout error.
async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "redis command timed out",
        ))),
    }
}

fn invalid(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::InvalidClientConfig, what))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let timeout = self.timeout;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            match &mut self.inner {
                Inner::Single(c) => bounded(timeout, c.req_packed_command(cmd)).await,
                Inner::Cluster(c) => bounded(timeout, c.req_packed_command(cmd)).await,
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let timeout = self.timeout;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            match &mut self.inner {
                Inner::Single(c) => {
                    bounded(timeout, c.req_packed_commands(pipeline, offset, count)).await
                }
                Inner::Cluster(c) => {
                    bounded(timeout, c.req_packed_commands(pipeline, offset, count)).await
                }
            }
        })
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
        }
    }
}
