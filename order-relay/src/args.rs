//! The options of `order-relay`. Each is a flag and an environment
//! variable; a bad value or combination is one line on stderr and exit
//! status 64.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use seckill_ops::process::ConfigError;

/// Options of the `order-relay` binary.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "order-relay",
    version,
    about = "Follows the order topic and delivers every order to one sink (PostgreSQL, a signed webhook, or JSON lines), exactly once in effect."
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Admin HTTP listener (/metrics, /healthz, /readyz).
    #[arg(long, env = "SECKILL_ADMIN_LISTEN", default_value = "127.0.0.1:8095")]
    pub admin_listen: SocketAddr,
    /// Redis URL: read the sales' order streams (distributed mode).
    #[arg(long, env = "SECKILL_REDIS_URL", conflicts_with = "redis_cluster")]
    pub redis_url: Option<String>,
    /// Comma-separated seed nodes of a Redis Cluster (instead of --redis-url).
    #[arg(long, env = "SECKILL_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,
    /// Consumer group: relays of one group share the work, each group sees every order.
    #[arg(long, env = "SECKILL_RELAY_GROUP", default_value = "relay")]
    pub group: String,
    /// This instance's consumer name in the group (default: random, unique per start).
    #[arg(long, env = "SECKILL_RELAY_CONSUMER")]
    pub consumer: Option<String>,
    /// Gateway admin URL: follow the embedded mode's order feed (`http://host:port`).
    #[arg(long, env = "SECKILL_GATEWAY_ADMIN_URL", conflicts_with_all = ["redis_url", "redis_cluster"])]
    pub gateway_admin_url: Option<String>,
    /// File holding the gateway's admin token (embedded mode).
    #[arg(long, env = "SECKILL_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Follow only this sale's orders in the feed (embedded mode).
    #[arg(long, env = "SECKILL_RELAY_SALE_ID")]
    pub sale_id: Option<String>,
    /// How long one feed request waits for new orders, ms (0 = do not ask the gateway to wait).
    #[arg(long, env = "SECKILL_RELAY_FEED_WAIT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub feed_wait_ms: u64,
    /// Where the feed's cursor is kept for the stdout sink (embedded mode;
    /// PostgreSQL keeps it in the database, in the orders' transaction).
    #[arg(long, env = "SECKILL_RELAY_CURSOR_FILE")]
    pub cursor_file: Option<PathBuf>,
    /// Sink: PostgreSQL connection string (table seckill_orders, created if absent).
    #[arg(long, env = "SECKILL_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// Sink: POST batches of events to this http:// or https:// URL, signed (Seckill-Signature).
    #[arg(long, env = "SECKILL_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// File holding the webhook signing secret.
    #[arg(long, env = "SECKILL_WEBHOOK_SECRET_FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Sink: one JSON line per event on stdout (logs go to stderr).
    #[arg(long, env = "SECKILL_RELAY_STDOUT")]
    pub stdout: bool,
    /// Events per batch: one transaction, one webhook request (1..=10000).
    #[arg(long, env = "SECKILL_RELAY_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,
    /// Webhook attempts of a batch before it goes to the dead-letter stream (1..=100).
    #[arg(long, env = "SECKILL_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// First pause between webhook attempts, ms; doubles each time, with jitter.
    #[arg(long = "webhook-retry-min-ms", env = "SECKILL_WEBHOOK_RETRY_MIN_MS", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub retry_min_ms: u64,
    /// Longest pause between webhook attempts, ms.
    #[arg(long = "webhook-retry-max-ms", env = "SECKILL_WEBHOOK_RETRY_MAX_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub retry_max_ms: u64,
    /// Deadline of one webhook request, ms.
    #[arg(long, env = "SECKILL_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub webhook_timeout_ms: u64,
    /// A delivered-but-unacknowledged entry idle this long belongs to a dead relay and is reclaimed, ms.
    #[arg(long, env = "SECKILL_RELAY_RECLAIM_IDLE_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub reclaim_idle_ms: u64,
    /// Retention floor: order entries younger than this are never trimmed, ms.
    #[arg(long, env = "SECKILL_RELAY_RETAIN_MS", default_value_t = 3_600_000)]
    pub retain_ms: u64,
    /// How often streams are trimmed, new sales looked for and lag measured, ms.
    #[arg(long, env = "SECKILL_RELAY_MAINTAIN_EVERY_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub maintain_every_ms: u64,
    /// Pause after a pass that found nothing new, ms.
    #[arg(long, env = "SECKILL_RELAY_POLL_MS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub poll_ms: u64,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "SECKILL_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Sends the dead-letter stream's batches to the webhook again; each
    /// delivered one leaves the stream. Stops at the first failure (status 1).
    Redrive,
}

/// Where orders come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Redis { urls: Vec<String>, cluster: bool },
    Feed { url: String, token_file: PathBuf },
}

/// Where they go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkKind {
    Postgres(String),
    Webhook { url: String, secret_file: PathBuf },
    Stdout,
}

impl Args {
    /// The source the options name; an error when they name none.
    pub fn source(&self) -> Result<Source, ConfigError> {
        let seeds: Vec<String> = self
            .redis_cluster
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        match (&self.redis_url, seeds.is_empty(), &self.gateway_admin_url) {
            (Some(url), _, _) => Ok(Source::Redis {
                urls: vec![url.clone()],
                cluster: false,
            }),
            (None, false, _) => Ok(Source::Redis {
                urls: seeds,
                cluster: true,
            }),
            (None, true, Some(url)) => {
                let token_file = self.admin_token_file.clone().ok_or_else(|| {
                    ConfigError("--gateway-admin-url needs --admin-token-file".into())
                })?;
                if !url.starts_with("http://") {
                    return Err(ConfigError(
                        "--gateway-admin-url must be an http:// URL".into(),
                    ));
                }
                Ok(Source::Feed {
                    url: url.trim_end_matches('/').to_string(),
                    token_file,
                })
            }
            (None, true, None) => Err(ConfigError(
                "a source is required: --redis-url, --redis-cluster or --gateway-admin-url".into(),
            )),
        }
    }

    /// The one sink the options name.
    pub fn sink(&self) -> Result<SinkKind, ConfigError> {
        let named = [
            self.postgres_url.is_some(),
            self.webhook_url.is_some(),
            self.stdout,
        ];
        if named.iter().filter(|n| **n).count() != 1 {
            return Err(ConfigError(
                "exactly one sink is required: --postgres-url, --webhook-url or --stdout".into(),
            ));
        }
        if let Some(url) = &self.postgres_url {
            return Ok(SinkKind::Postgres(url.clone()));
        }
        if let Some(url) = &self.webhook_url {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(ConfigError(
                    "--webhook-url must be an http:// or https:// URL".into(),
                ));
            }
            url.parse::<hyper::Uri>()
                .map_err(|e| ConfigError(format!("--webhook-url: {e}")))?;
            let secret_file = self
                .webhook_secret_file
                .clone()
                .ok_or_else(|| ConfigError("--webhook-url needs --webhook-secret-file".into()))?;
            return Ok(SinkKind::Webhook {
                url: url.clone(),
                secret_file,
            });
        }
        Ok(SinkKind::Stdout)
    }

    /// Checks the options together, before anything starts.
    pub fn check(&self) -> Result<(Source, SinkKind), ConfigError> {
        let source = self.source()?;
        let sink = self.sink()?;
        if !seckill_inventory::valid_id(&self.group) {
            return Err(ConfigError(
                "--group must be 1..=64 characters of [A-Za-z0-9_-]".into(),
            ));
        }
        if let Some(s) = &self.sale_id {
            if !seckill_inventory::valid_id(s) {
                return Err(ConfigError(
                    "--sale-id must be 1..=64 characters of [A-Za-z0-9_-]".into(),
                ));
            }
        }
        match (&source, &sink) {
            (Source::Feed { .. }, SinkKind::Webhook { .. }) => {
                return Err(ConfigError(
                    "the webhook sink needs Redis (--redis-url) for its dead-letter stream".into(),
                ))
            }
            (Source::Feed { .. }, SinkKind::Stdout) if self.cursor_file.is_none() => {
                return Err(ConfigError(
                    "the order feed with --stdout needs --cursor-file".into(),
                ))
            }
            _ => {}
        }
        if matches!(self.command, Some(Command::Redrive))
            && !matches!(
                (&source, &sink),
                (Source::Redis { .. }, SinkKind::Webhook { .. })
            )
        {
            return Err(ConfigError(
                "redrive needs the Redis source and --webhook-url".into(),
            ));
        }
        if self.retry_max_ms < self.retry_min_ms {
            return Err(ConfigError(
                "--webhook-retry-max-ms must be at least --webhook-retry-min-ms".into(),
            ));
        }
        Ok((source, sink))
    }

    /// The consumer name: given, or unique to this start.
    pub fn consumer_name(&self) -> String {
        self.consumer
            .clone()
            .unwrap_or_else(|| format!("relay-{}", &seckill_inventory::unique_id()[..12]))
    }

    pub fn reclaim_idle(&self) -> Duration {
        Duration::from_millis(self.reclaim_idle_ms)
    }

    pub fn maintain_every(&self) -> Duration {
        Duration::from_millis(self.maintain_every_ms)
    }

    pub fn poll(&self) -> Duration {
        Duration::from_millis(self.poll_ms)
    }
}

/// A secret from a file: its content without the trailing newline; an
/// empty or unreadable file is a configuration error (the path is named,
/// the content never).
pub fn read_secret(flag: &str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{flag} {}: {e}", path.display())))?;
    let secret = text.trim_end_matches(['\r', '\n']).to_string();
    if secret.trim().is_empty() {
        return Err(ConfigError(format!("{flag} {} is empty", path.display())));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<(Source, SinkKind), String> {
        let mut all = vec!["order-relay"];
        all.extend_from_slice(args);
        let a = Args::try_parse_from(all).map_err(|e| e.to_string())?;
        a.check().map_err(|e| e.0)
    }

    #[test]
    fn one_source_and_one_sink() {
        let ok = parse(&["--redis-url", "redis://r/", "--stdout"]).unwrap();
        assert_eq!(ok.1, SinkKind::Stdout);
        let ok = parse(&["--redis-cluster", "a:1, b:2", "--postgres-url", "host=x"]).unwrap();
        assert_eq!(
            ok.0,
            Source::Redis {
                urls: vec!["a:1".into(), "b:2".into()],
                cluster: true
            }
        );
        for bad in [
            &["--stdout"][..],
            &["--redis-url", "r", "--stdout", "--postgres-url", "p"],
            &["--redis-url", "r"],
            &["--redis-url", "r", "--webhook-url", "http://h/x"],
            &[
                "--redis-url",
                "r",
                "--webhook-url",
                "ftp://h/x",
                "--webhook-secret-file",
                "f",
            ],
            &["--gateway-admin-url", "http://g", "--stdout"],
            &[
                "--gateway-admin-url",
                "http://g",
                "--admin-token-file",
                "t",
                "--stdout",
            ],
            &[
                "--gateway-admin-url",
                "g:1",
                "--admin-token-file",
                "t",
                "--postgres-url",
                "p",
            ],
            &[
                "--gateway-admin-url",
                "http://g",
                "--admin-token-file",
                "t",
                "--webhook-url",
                "http://h",
                "--webhook-secret-file",
                "f",
            ],
            &["--redis-url", "r", "--stdout", "--group", "a b"],
            &["--redis-url", "r", "--stdout", "--batch-size", "0"],
            &["--redis-url", "r", "--stdout", "redrive"],
            &[
                "--redis-url",
                "r",
                "--gateway-admin-url",
                "http://g",
                "--stdout",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_come_from_files_without_their_newline() {
        let dir = std::env::temp_dir().join(format!("relay-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(read_secret("--x", &f).unwrap(), "s3cret");
        std::fs::write(&f, "\n").unwrap();
        let e = read_secret("--x", &f).unwrap_err().0;
        assert!(e.contains("empty"), "{e}");
        assert!(read_secret("--x", &dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
