//! One connection type over a single Redis and a Redis Cluster.
//!
//! Both variants multiplex many concurrent commands over few sockets and
//! reconnect by themselves. Every command is bounded by a response timeout,
//! so a dead or unreachable Redis turns into an error within that time,
//! never into a hang.
//!
//! A stalled Redis (alive, accepting, answering nothing) would still cost
//! every caller the whole timeout, and under load thousands of callers
//! wait at once. So the connection carries a circuit breaker: a command
//! that timed out opens it, and then the commands still waiting fail at
//! once (replies come in order, so none sent after the one that timed out
//! can have been answered), and for a short while every new command fails
//! at once; then one command goes through as a probe (all others still
//! fail at once while it is in flight), and its answer closes the breaker,
//! its timeout opens it again. Only timeouts open it: a refused connection
//! fails fast by itself, and a server's error reply is an answer.
//!
//! Every command is timed and its failure counted here, the one place all
//! of them pass (see [`crate::commands`] for their names).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::commands::{self, CommandMetrics};

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
    breaker: Arc<Breaker>,
    metrics: Arc<CommandMetrics>,
}

#[derive(Clone)]
enum Inner {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connects to `urls[0]` (single) or to the cluster seeded by `urls`.
    /// Every command is bounded by `timeout`; after one timed out, commands
    /// fail at once for `fail_fast` (see the module's documentation).
    pub async fn connect(
        urls: &[String],
        cluster: bool,
        timeout: Duration,
        fail_fast: Duration,
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
            breaker: Arc::new(Breaker::new(fail_fast)),
            metrics: Arc::new(CommandMetrics::new()),
        })
    }

    /// Whether commands fail fast now: one timed out recently, and no
    /// command has been answered since. Callers about to wait for another
    /// caller's command can refuse at once instead.
    pub fn is_failing_fast(&self) -> bool {
        self.breaker.is_open()
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
        let started = Instant::now();
        let result = match &mut self.inner {
            Inner::Single(c) => bounded(self.timeout, cmd.query_async::<Value>(c))
                .await
                .map(drop),
            Inner::Cluster(c) => {
                // No response policy: one reply per primary, by address, so
                // the error can name the shard that refuses.
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                bounded(self.timeout, c.route_command(cmd, routing))
                    .await
                    .and_then(first_refusal)
            }
        };
        let ready = commands::plain("ready");
        self.metrics.record(ready, started.elapsed(), &result);
        result
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

// === impl Breaker ===

/// The circuit breaker of one connection and its clones.
///
/// Written by hand: the whole state is two atomics, and a breaker crate
/// would bring its own timer and error types for what is one comparison
/// per command.
struct Breaker {
    /// How long commands fail at once after a timeout.
    fail_fast: Duration,
    /// Reference point of `open_until_ms`.
    epoch: Instant,
    /// Milliseconds since `epoch` until which commands fail at once, plus
    /// one; 0 = closed. Past that time the breaker is half-open.
    open_until_ms: AtomicU64,
    /// A half-open breaker's one probe is in flight.
    probing: AtomicBool,
    /// Wakes the commands in flight when the breaker opens.
    opened: Notify,
}

/// Held by a half-open breaker's one probe. Frees the probe slot when the probe is dropped unanswered (its caller
/// gave up), so the next command probes instead.
struct ProbeGuard(Arc<Breaker>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::Release);
    }
}

impl Breaker {
    fn new(fail_fast: Duration) -> Self {
        Breaker {
            fail_fast,
            epoch: Instant::now(),
            open_until_ms: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            opened: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Acquire) != 0
    }

    /// Whether a command may go now (as the probe, when it holds the
    /// guard); `Err` is the fail-fast error.
    fn pass(self: &Arc<Self>) -> Result<Option<ProbeGuard>, RedisError> {
        let until = self.open_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return Ok(None);
        }
        if self.now_ms() >= until
            && self
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Ok(Some(ProbeGuard(self.clone())));
        }
        Err(failing_fast())
    }

    /// Records a command's result: a timeout opens the breaker, anything
    /// else proves the server answers and closes it.
    fn record<T>(&self, result: &Result<T, RedisError>) {
        match result {
            Err(e) if e.is_timeout() => {
                let until = self.now_ms() + self.fail_fast.as_millis() as u64;
                self.open_until_ms.store(until, Ordering::Release);
                self.opened.notify_waiters();
            }
            _ => {
                if self.is_open() {
                    self.open_until_ms.store(0, Ordering::Release);
                }
            }
        }
    }
}

/// Runs one command through the breaker and the timeout.
async fn guarded<T>(
    breaker: &Arc<Breaker>,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    let _probe = breaker.pass()?;
    let opened = breaker.opened.notified();
    tokio::pin!(opened);
    opened.as_mut().enable();
    tokio::select! {
        result = bounded(timeout, fut) => {
            breaker.record(&result);
            result
        }
        () = opened => Err(failing_fast()),
    }
}

/// The error of a command refused, or given up, by an open breaker.
fn failing_fast() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "redis unreachable: a command timed out just before",
    ))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let timeout = self.timeout;
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let breaker = &self.breaker;
            let started = Instant::now();
            let result = match &mut self.inner {
                Inner::Single(c) => guarded(breaker, timeout, c.req_packed_command(cmd)).await,
                Inner::Cluster(c) => guarded(breaker, timeout, c.req_packed_command(cmd)).await,
            };
            let command = commands::index_of(cmd);
            self.metrics.record(command, started.elapsed(), &result);
            result
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
            let breaker = &self.breaker;
            let started = Instant::now();
            let result = match &mut self.inner {
                Inner::Single(c) => {
                    let fut = c.req_packed_commands(pipeline, offset, count);
                    guarded(breaker, timeout, fut).await
                }
                Inner::Cluster(c) => {
                    let fut = c.req_packed_commands(pipeline, offset, count);
                    guarded(breaker, timeout, fut).await
                }
            };
            let pipeline = commands::plain("pipeline");
            self.metrics.record(pipeline, started.elapsed(), &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
            Inner::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed_out() -> Result<(), RedisError> {
        Err(RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "redis command timed out",
        )))
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_fails_fast_then_lets_one_probe_through() {
        let b = Arc::new(Breaker::new(Duration::from_millis(200)));
        assert!(matches!(b.pass(), Ok(None)), "closed: every command goes");
        b.record(&timed_out());
        assert!(b.is_open());
        assert!(b.pass().is_err(), "open: fails at once");
        tokio::time::advance(Duration::from_millis(201)).await;
        let probe = b.pass().expect("half-open: one probe");
        assert!(probe.is_some());
        assert!(b.pass().is_err(), "the others fail while it is in flight");
        // The probe's caller gave up: the next command probes instead.
        drop(probe);
        let probe = b.pass().expect("a new probe");
        assert!(probe.is_some());
        b.record(&timed_out());
        drop(probe);
        assert!(b.pass().is_err(), "a timed-out probe opens it again");
        tokio::time::advance(Duration::from_millis(201)).await;
        let probe = b.pass().expect("a probe");
        b.record(&Ok::<(), RedisError>(()));
        drop(probe);
        assert!(!b.is_open());
        assert!(matches!(b.pass(), Ok(None)), "an answer closes it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_fails_the_commands_waiting_behind_it() {
        let b = Arc::new(Breaker::new(Duration::from_millis(200)));
        let stalled = std::future::pending::<Result<(), RedisError>>();
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { guarded(&b, Duration::from_secs(1), stalled).await }
        });
        tokio::time::advance(Duration::from_millis(100)).await;
        // Another command, sent earlier, times out now.
        b.record(&timed_out());
        let started = Instant::now();
        let result = waiting.await.unwrap();
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_millis(10));
    }

    #[tokio::test]
    async fn a_server_error_is_an_answer() {
        let b = Arc::new(Breaker::new(Duration::from_millis(200)));
        b.record(&timed_out());
        b.record(&Err::<(), _>(RedisError::from((
            ErrorKind::Extension,
            "ERR from a script",
        ))));
        assert!(!b.is_open());
    }
}
