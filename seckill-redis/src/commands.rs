//! What a command sent to Redis is called in the metrics, and its metrics:
//! `seckill_redis_command_duration_seconds{command}` and
//! `seckill_redis_errors_total{command,kind}`.
//!
//! The `command` label is one of a fixed set of names, never free text: a
//! script by the name it was made with ([`script`]), a plain command by its
//! lower-case name when it is one this workspace sends, else `other`. A
//! script goes as `EVALSHA <sha1>`, so the connection tells scripts apart by
//! their hash; each named script leaves its hash here when it is first
//! built, before it can be sent.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_histogram, Counter, Histogram, Unit};
use redis::{Arg, Cmd, RedisError, Script};

/// The scripts, by name. A name used with [`script`] must be here.
const SCRIPTS: [&str; 20] = [
    "bucket_open",
    "bucket_tick",
    "lease_release",
    "line",
    "queue_open",
    "queue_close",
    "enqueue",
    "admit_enqueue",
    "reclaim",
    "ack",
    "dead_letter",
    "purchase",
    "admit",
    "withdraw",
    "settle",
    "put_sale",
    "remove_sale",
    "cancel_order",
    "update_sale",
    "relay_trim",
];

/// The plain commands this workspace sends, lower case, then the names of
/// what is not one command: the readiness check, a pipeline, anything else.
const PLAIN: [&str; 28] = [
    "get",
    "set",
    "del",
    "hget",
    "hgetall",
    "hset",
    "sadd",
    "srem",
    "smembers",
    "publish",
    "llen",
    "lpop",
    "xack",
    "xadd",
    "xdel",
    "xlen",
    "xautoclaim",
    "xgroup",
    "xinfo",
    "xpending",
    "xrange",
    "xreadgroup",
    "script",
    "eval",
    "ping",
    "ready",
    "pipeline",
    "other",
];

const NAMES: usize = SCRIPTS.len() + PLAIN.len();

/// The hash of each script of [`SCRIPTS`], once built.
static HASHES: [OnceLock<String>; SCRIPTS.len()] = [const { OnceLock::new() }; SCRIPTS.len()];

/// Builds a script named `name` (one of [`SCRIPTS`]) for the metrics.
///
/// # Panics
///
/// When `name` is not in the list: a programming error, found by the first
/// test that runs the script.
pub fn script(name: &'static str, source: &str) -> Script {
    let script = Script::new(source);
    let at = SCRIPTS
        .iter()
        .position(|s| *s == name)
        .unwrap_or_else(|| panic!("script {name} is not in seckill_redis::commands::SCRIPTS"));
    let _ = HASHES[at].set(script.get_hash().to_string());
    script
}

/// The index of a command's name, from the command as sent.
pub(crate) fn index_of(cmd: &Cmd) -> usize {
    let mut args = cmd.args_iter().filter_map(|a| match a {
        Arg::Simple(bytes) => Some(bytes),
        _ => None,
    });
    let Some(first) = args.next() else {
        return plain("other");
    };
    if first.eq_ignore_ascii_case(b"EVALSHA") {
        let sha = args.next().unwrap_or_default();
        return HASHES
            .iter()
            .position(|h| {
                h.get()
                    .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(sha))
            })
            .unwrap_or(plain("other"));
    }
    PLAIN
        .iter()
        .position(|p| p.as_bytes().eq_ignore_ascii_case(first))
        .map_or(plain("other"), |at| SCRIPTS.len() + at)
}

/// The index of one of [`PLAIN`].
pub(crate) fn plain(name: &str) -> usize {
    SCRIPTS.len()
        + PLAIN
            .iter()
            .position(|p| *p == name)
            .expect("a name of PLAIN")
}

fn name(at: usize) -> &'static str {
    if at < SCRIPTS.len() {
        SCRIPTS[at]
    } else {
        PLAIN[at - SCRIPTS.len()]
    }
}

/// Why a command failed, as the `kind` label says it.
#[derive(Clone, Copy)]
enum Kind {
    /// No answer in time (or given up by the circuit breaker's timeout).
    Timeout,
    /// No connection: refused, dropped, or failing fast after a timeout.
    Unavailable,
    /// An error reply from the server (a script error, `OOM`, `READONLY`...).
    Server,
    Other,
}

const KINDS: [&str; 4] = ["timeout", "unavailable", "server", "other"];

fn kind_of(e: &RedisError) -> Option<Kind> {
    if e.is_timeout() {
        Some(Kind::Timeout)
    } else if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
        // The first call of a script on a fresh server: loaded and sent
        // again at once, not a failure.
        None
    } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        Some(Kind::Unavailable)
    } else if e.code().is_some() {
        Some(Kind::Server)
    } else {
        Some(Kind::Other)
    }
}

/// The metric handles of one connection and its clones, each command's
/// registered at its first use: a process shows the commands it sends, no
/// others, and each with its error counters from zero, so a rate sees the
/// first error.
pub(crate) struct CommandMetrics {
    durations: [OnceLock<Histogram>; NAMES],
    errors: [[OnceLock<Counter>; KINDS.len()]; NAMES],
}

impl CommandMetrics {
    pub(crate) fn new() -> Self {
        CommandMetrics {
            durations: [const { OnceLock::new() }; NAMES],
            errors: [const { [const { OnceLock::new() }; KINDS.len()] }; NAMES],
        }
    }

    /// Records one command (by its index) that took `took`.
    pub(crate) fn record<T>(&self, at: usize, took: Duration, result: &Result<T, RedisError>) {
        self.durations[at]
            .get_or_init(|| {
                for (kind, counter) in self.errors[at].iter().enumerate() {
                    counter.get_or_init(|| {
                        metrics::counter!("seckill_redis_errors_total",
                            "command" => name(at), "kind" => KINDS[kind])
                    });
                }
                metrics::histogram!("seckill_redis_command_duration_seconds", "command" => name(at))
            })
            .record(took.as_secs_f64());
        if let Err(e) = result {
            if let Some(kind) = kind_of(e) {
                if let Some(counter) = self.errors[at][kind as usize].get() {
                    counter.increment(1);
                }
            }
        }
    }
}

/// Describes the Redis command metrics; every binary on a Redis store calls
/// it once, after installing the recorder.
pub fn describe() {
    describe_histogram!(
        "seckill_redis_command_duration_seconds",
        Unit::Seconds,
        "Time of one command (a script, a plain command, a pipeline) sent to Redis, answer or error."
    );
    describe_counter!(
        "seckill_redis_errors_total",
        "Redis commands that failed, by command and kind (timeout, unavailable, server, other)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_named_from_a_fixed_set() {
        let s = script("settle", "return 1");
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(s.get_hash()).arg(0);
        assert_eq!(name(index_of(&evalsha)), "settle");
        let mut unknown = redis::cmd("EVALSHA");
        unknown
            .arg("0000000000000000000000000000000000000000")
            .arg(0);
        assert_eq!(name(index_of(&unknown)), "other");
        assert_eq!(
            name(index_of(redis::cmd("XREADGROUP").arg("GROUP"))),
            "xreadgroup"
        );
        assert_eq!(name(index_of(redis::cmd("smembers").arg("k"))), "smembers");
        assert_eq!(name(index_of(&redis::cmd("FLUSHALL"))), "other");
        assert_eq!(name(plain("pipeline")), "pipeline");
    }

    #[test]
    fn a_missing_script_is_no_error_and_a_timeout_is_one() {
        let noscript = RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::NoScript),
            "NOSCRIPT",
        ));
        assert!(kind_of(&noscript).is_none());
        let timeout = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "redis command timed out",
        ));
        assert!(matches!(kind_of(&timeout), Some(Kind::Timeout)));
        let refused = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        assert!(matches!(kind_of(&refused), Some(Kind::Unavailable)));
    }
}
