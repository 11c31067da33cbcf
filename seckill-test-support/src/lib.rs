//! Private `redis-server` processes for tests: a single server or a
//! three-master cluster, on free loopback ports, in temporary directories;
//! a private PostgreSQL ([`PostgresServer`]);
//! the project's own binaries as child processes ([`process`]); a reader of
//! Prometheus text ([`metrics`]); one polling schedule for every wait
//! ([`backoff`]); and a crowd of concurrent clients ([`crowd()`]).
//!
//! Every process is a child of the test process and is killed by its
//! handle's `Drop` (also while a failing test unwinds), and its directory
//! (a [`TempDir`]) is removed. The few commands the setup sends (`PING`,
//! `CLUSTER ...`) go through the `redis` crate's blocking client, so a
//! server can be set up outside any runtime.

#![forbid(unsafe_code)]

pub mod backoff;
mod crowd;
pub mod metrics;
pub mod postgres;
pub mod process;

pub use crowd::crowd;
pub use postgres::PostgresServer;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tempfile::TempDir;

/// How long a server may take to answer `PING` after it was spawned.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new cluster may take to agree on `cluster_state:ok`.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);
/// Slots of a Redis Cluster.
const SLOTS: u32 = 16384;

const MISSING: &str =
    "redis-server not found: install it (Debian: apt-get install -y redis-server)";

/// How to run a server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Keep an append-only file, so a restart replays the data.
    pub appendonly: bool,
    /// Run as a cluster node (`cluster-enabled yes`).
    pub cluster: bool,
}

/// One private `redis-server` process.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    options: Options,
    child: Option<Child>,
}

impl RedisServer {
    /// A server without persistence, answering `PING`.
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// A server with the given options, answering `PING`.
    pub fn start_with(options: Options) -> Self {
        let mut server = RedisServer {
            port: 0,
            dir: scratch_dir(),
            options,
            child: None,
        };
        // A free port can be taken by someone else between probing and
        // binding; try a few, each at once (there is nothing to wait
        // for). On panic, `Drop` removes the directory.
        let mut last_error = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => {
                    last_error = e;
                    server.kill();
                }
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's working directory (AOF, cluster config, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the process (SIGKILL: no final save). Idempotent.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the process again on the same port and directory, so an
    /// append-only file is replayed.
    pub fn restart(&mut self) {
        self.kill();
        // The old socket may linger for a moment.
        backoff::retry(START_TIMEOUT, || {
            let started = self.spawn();
            if started.is_err() {
                self.kill();
            }
            started
        })
        .unwrap_or_else(|e| panic!("redis-server did not restart: {e}"));
    }

    /// Requires `password`: for the default user (`requirepass`) and for
    /// an ACL user `user` with every right.
    pub fn require_password(&self, user: &str, password: &str) {
        let pass = format!(">{password}");
        self.command(&["ACL", "SETUSER", user, "on", &pass, "~*", "&*", "+@all"])
            .expect("ACL SETUSER");
        self.command(&["CONFIG", "SET", "requirepass", password])
            .expect("CONFIG SET requirepass");
    }

    /// Sends one command and returns the reply (errors as `Err`).
    pub fn command(&self, args: &[&str]) -> Result<Reply, String> {
        command(self.port, args)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args([
                "--appendonly",
                if self.options.appendonly { "yes" } else { "no" },
            ])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", "redis.log"])
            .args(["--daemonize", "no"]);
        if self.options.cluster {
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "2000"]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{MISSING}"),
            Err(e) => return Err(format!("cannot spawn redis-server: {e}")),
        };
        self.child = Some(child);
        let port = self.port;
        backoff::retry_if(
            START_TIMEOUT,
            || {
                if let Ok(Reply::Status(s)) = command(port, &["PING"]) {
                    if s == "PONG" {
                        return Ok(());
                    }
                }
                match self.child.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => {
                        self.child = None;
                        Err(NotReady::Exited(format!(
                            "redis-server on port {port} exited with {status}"
                        )))
                    }
                    _ => Err(NotReady::Silent(format!(
                        "redis-server on port {port} did not answer"
                    ))),
                }
            },
            |e| matches!(e, NotReady::Silent(_)),
        )
        .map_err(|(NotReady::Exited(e) | NotReady::Silent(e))| e)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // Then the `TempDir` field removes the directory.
        self.kill();
    }
}

/// Why a spawned server does not answer yet.
enum NotReady {
    /// Still starting (or the port is someone else's); worth asking again.
    Silent(String),
    /// The process is gone: final.
    Exited(String),
}

/// A Redis Cluster of private masters (no replicas), all slots covered.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes, spreads the slots over them, joins them and
    /// waits until every node reports `cluster_state:ok`.
    pub fn start(masters: usize) -> Self {
        assert!(masters >= 1, "a cluster needs a master");
        let options = Options {
            appendonly: false,
            cluster: true,
        };
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| RedisServer::start_with(options))
            .collect();
        let n = masters as u32;
        for (i, node) in nodes.iter().enumerate() {
            let i = i as u32;
            let first = SLOTS * i / n;
            let last = SLOTS * (i + 1) / n - 1;
            node.command(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &first.to_string(),
                &last.to_string(),
            ])
            .expect("CLUSTER ADDSLOTSRANGE");
        }
        for node in &nodes[1..] {
            node.command(&["CLUSTER", "MEET", "127.0.0.1", &nodes[0].port.to_string()])
                .expect("CLUSTER MEET");
        }
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    /// The nodes' URLs (seed list for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes, for commands addressed to one of them.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    fn wait_ok(&self) {
        let want = format!("cluster_known_nodes:{}", self.nodes.len());
        let ok = |node: &RedisServer| match node.command(&["CLUSTER", "INFO"]) {
            Ok(Reply::Bulk(Some(info))) => {
                info.contains("cluster_state:ok") && info.contains(&want)
            }
            _ => false,
        };
        backoff::retry(CLUSTER_TIMEOUT, || {
            if self.nodes.iter().all(ok) {
                Ok(())
            } else {
                Err(())
            }
        })
        .unwrap_or_else(|()| panic!("redis cluster did not reach cluster_state:ok"));
    }
}

/// A RESP reply, as far as the setup needs one.
///
/// This is what [`RedisServer::command`] returned when it spoke RESP by
/// hand; tests match on it, so it stays, mapped from the `redis` crate's
/// [`redis::Value`]. RESP2 (the protocol the client speaks unless told
/// otherwise) has two nulls, and the crate reads both as `Nil`: a null
/// array (`XREAD` that timed out, an aborted `EXEC`) now arrives as
/// `Bulk(None)`, no longer as `Array(None)`, which is thus never returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply for a value of the `redis` crate; an error reply anywhere
    /// in it is an `Err`, as the whole command's.
    ///
    /// RESP3's kinds only arrive on a connection that asked for RESP3; they
    /// map to the nearest RESP2 form (maps and sets flattened to arrays,
    /// doubles and big numbers as text, booleans as 0 and 1).
    fn from_value(value: redis::Value) -> Result<Reply, String> {
        use redis::Value as V;
        let array = |items: Vec<V>| {
            items
                .into_iter()
                .map(Reply::from_value)
                .collect::<Result<Vec<_>, _>>()
                .map(|items| Reply::Array(Some(items)))
        };
        let text = |s: String| Ok(Reply::Bulk(Some(s)));
        match value {
            V::Nil => Ok(Reply::Bulk(None)),
            V::Int(n) => Ok(Reply::Int(n)),
            V::BulkString(bytes) => text(String::from_utf8_lossy(&bytes).into_owned()),
            V::Array(items) | V::Set(items) | V::Push { data: items, .. } => array(items),
            V::Map(pairs) => array(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()),
            V::Attribute { data, .. } => Reply::from_value(*data),
            V::SimpleString(s) => Ok(Reply::Status(s)),
            V::Okay => Ok(Reply::Status("OK".into())),
            V::Double(x) => text(x.to_string()),
            V::Boolean(b) => Ok(Reply::Int(b.into())),
            V::VerbatimString { text: s, .. } => text(s),
            V::BigNumber(n) => text(n.to_string()),
            V::ServerError(e) => Err(server_error(e.code(), e.details())),
            // A kind added to the crate later.
            other => Err(format!("unexpected reply {other:?}")),
        }
    }
}

/// `CODE detail`, as the server wrote it (`ERR unknown command ...`).
fn server_error(code: &str, detail: Option<&str>) -> String {
    match detail {
        Some(detail) => format!("{code} {detail}"),
        None => code.to_string(),
    }
}

/// Sends one command to `127.0.0.1:port` on a fresh connection (so a
/// restarted or stopped server needs no reconnect logic).
fn command(port: u16, args: &[&str]) -> Result<Reply, String> {
    let (name, rest) = args.split_first().ok_or("no command")?;
    let error = |e: redis::RedisError| match e.code() {
        Some(code) => server_error(code, e.detail()),
        None => e.to_string(),
    };
    // Without the client's CLIENT SETINFO handshake, each call is the one
    // command on the wire: tests count commands in INFO commandstats.
    let info =
        redis::IntoConnectionInfo::into_connection_info(("127.0.0.1", port)).map_err(error)?;
    let settings = info.redis_settings().clone().set_skip_set_lib_name();
    let client = redis::Client::open(info.set_redis_settings(settings)).map_err(error)?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .map_err(error)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(error)?;
    let mut cmd = redis::cmd(name);
    for arg in rest {
        cmd.arg(*arg);
    }
    Reply::from_value(cmd.query(&mut conn).map_err(error)?)
}

/// Where [`free_port`] looks: below the kernel's ephemeral range (Linux:
/// 32768 and up). A port the kernel picks for `bind(0)` comes from that
/// range, which every client socket's source port comes from too, so
/// between the probe and the server's own bind one of the tests' client
/// connections could take it (a gateway that "cannot bind the listeners",
/// seen under a test with thousands of buyers). Below it, only a listener
/// can.
const PORTS: std::ops::Range<u16> = 20000..32000;

/// Ports [`free_port`] handed out so far in this process.
static HANDED_OUT: AtomicU32 = AtomicU32::new(0);

/// A port nobody listens on right now, and that this process has not
/// handed out before (until the range wraps).
pub fn free_port() -> u16 {
    let span = u32::from(PORTS.end - PORTS.start);
    // Every process starts elsewhere in the range: tests run as several
    // processes at once (nextest, or one test binary beside another).
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = PORTS.start + ((start + n) % span) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {PORTS:?}");
}

/// A new empty directory under the system's temporary directory, that
/// stays: removing it is the caller's business, and nothing else will.
/// Where a guard can be held, [`scratch_dir`] removes it on drop.
pub fn temp_dir() -> PathBuf {
    scratch_dir().keep()
}

/// A new empty directory under the system's temporary directory
/// (`seckill-test-…`), removed with everything in it when the guard drops.
pub fn scratch_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("seckill-test-")
        .tempdir()
        .expect("create a temporary directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_listenable_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        for &p in &ports {
            assert!(PORTS.contains(&p), "{p}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, p)).unwrap();
        }
    }

    #[test]
    fn server_starts_restarts_and_stops() {
        let mut s = RedisServer::start_with(Options {
            appendonly: true,
            cluster: false,
        });
        assert_eq!(
            s.command(&["SET", "k", "v"]),
            Ok(Reply::Status("OK".into()))
        );
        s.restart();
        assert_eq!(s.command(&["GET", "k"]), Ok(Reply::Bulk(Some("v".into()))));
        let dir = s.dir().to_path_buf();
        let port = s.port();
        s.stop();
        assert!(command(port, &["PING"]).is_err());
        drop(s);
        assert!(!dir.exists());
    }

    #[test]
    fn replies_and_errors_read_as_the_server_wrote_them() {
        let s = RedisServer::start();
        let e = s.command(&["NO-SUCH-COMMAND"]).unwrap_err();
        assert!(e.starts_with("ERR unknown command"), "{e}");
        let e = s.command(&["INCR", "k", "extra"]).unwrap_err();
        assert!(e.starts_with("ERR wrong number of arguments"), "{e}");
        assert_eq!(s.command(&["RPUSH", "l", "a", "b"]), Ok(Reply::Int(2)));
        assert_eq!(
            s.command(&["LRANGE", "l", "0", "-1"]),
            Ok(Reply::Array(Some(vec![
                Reply::Bulk(Some("a".into())),
                Reply::Bulk(Some("b".into()))
            ])))
        );
        assert_eq!(s.command(&["GET", "missing"]), Ok(Reply::Bulk(None)));
        assert_eq!(s.command(&["PING"]), Ok(Reply::Status("PONG".into())));
        match s.command(&["INFO", "commandstats"]) {
            // Nothing but the commands sent: no handshake of the client's.
            Ok(Reply::Bulk(Some(info))) => {
                assert!(info.contains("cmdstat_rpush:calls=1,"), "{info}");
                assert!(!info.contains("cmdstat_client"), "{info}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn temporary_directories() {
        let kept = temp_dir();
        assert!(kept.is_dir());
        std::fs::remove_dir(&kept).unwrap();
        let guard = scratch_dir();
        let path = guard.path().to_path_buf();
        assert!(path.is_dir() && path.starts_with(std::env::temp_dir()));
        std::fs::write(path.join("f"), "x").unwrap();
        drop(guard);
        assert!(!path.exists());
    }

    #[test]
    fn cluster_covers_all_slots() {
        let c = RedisCluster::start(3);
        assert_eq!(c.urls().len(), 3);
        match c.nodes()[1].command(&["CLUSTER", "INFO"]) {
            Ok(Reply::Bulk(Some(info))) => assert!(info.contains("cluster_slots_assigned:16384")),
            other => panic!("unexpected {other:?}"),
        }
    }
}
