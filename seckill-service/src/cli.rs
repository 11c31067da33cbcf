//! The options the `gateway` and `seckill-service` binaries share: where
//! the shared state lives (Redis or Redis Cluster) and how the seckill
//! workers run. Each option is a flag and an environment variable.

use std::collections::HashSet;
use std::process::ExitCode;
use std::time::Duration;

use seckill_redis::{RedisStore, StoreConfig, StoreError};

use crate::{RiskConfig, ServiceConfig};

/// Exit status for bad configuration (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// A configuration error: one line for stderr.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Where the shared state lives.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// Redis URL: distributed mode. Unset = embedded mode (gateway only: all in one process).
    #[arg(long, env = "SECKILL_REDIS_URL", conflicts_with = "redis_cluster")]
    pub redis_url: Option<String>,
    /// Comma-separated seed nodes of a Redis Cluster (instead of --redis-url).
    #[arg(long, env = "SECKILL_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,
    /// How long request results and idempotency keys stay readable.
    #[arg(long, env = "SECKILL_RESULT_RETENTION_MS", default_value_t = 600_000)]
    pub result_retention_ms: u64,
}

/// Where the shared state lives, decided from [`StoreArgs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Everything in one process, in memory.
    Embedded,
    Redis(String),
    RedisCluster(Vec<String>),
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

    pub fn result_retention(&self) -> Result<Duration, ConfigError> {
        if self.result_retention_ms < 1000 {
            return Err(ConfigError(format!(
                "--result-retention-ms must be at least 1000, got {}",
                self.result_retention_ms
            )));
        }
        Ok(Duration::from_millis(self.result_retention_ms))
    }

    /// Connects to Redis (or the cluster). `None` in embedded mode.
    pub async fn connect(&self) -> Option<Result<RedisStore, StoreError>> {
        let config = StoreConfig {
            retention: Duration::from_millis(self.result_retention_ms),
            ..StoreConfig::default()
        };
        Some(match self.mode() {
            Mode::Embedded => return None,
            Mode::Redis(url) => RedisStore::connect_with(&[url], false, config).await,
            Mode::RedisCluster(seeds) => RedisStore::connect_with(&seeds, true, config).await,
        })
    }
}

/// How the seckill workers run.
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceArgs {
    /// Seckill workers, each deciding one batch at a time.
    #[arg(long, env = "SECKILL_WORKERS", default_value_t = 4)]
    pub workers: usize,
    /// Requests one worker decides at once.
    #[arg(long, env = "SECKILL_BATCH_SIZE", default_value_t = 64)]
    pub batch_size: usize,
    /// Comma-separated users refused by risk control.
    #[arg(long, env = "SECKILL_BLACKLIST", value_delimiter = ',')]
    pub blacklist: Vec<String>,
    /// Risk control: attempts per user per second reaching the service (0 = off).
    #[arg(long, env = "SECKILL_RISK_MAX_ATTEMPTS_PER_SEC", default_value_t = 0)]
    pub risk_max_attempts_per_sec: u32,
    /// Deliveries of a queue entry after which it is dead-lettered and its
    /// request given a definite failure.
    #[arg(long, env = "SECKILL_MAX_DELIVERIES", default_value_t = 5)]
    pub max_deliveries: u32,
    /// Extra time spent on every batch, standing in for a slow backend
    /// (drills and benchmarks; 0 in production).
    #[arg(long, env = "SECKILL_WORK_DELAY_MS", default_value_t = 0, hide = true)]
    pub work_delay_ms: u64,
}

impl ServiceArgs {
    /// Validates the options into a service configuration.
    pub fn service_config(&self) -> Result<ServiceConfig, ConfigError> {
        if self.workers == 0 || self.workers > 1024 {
            return Err(ConfigError("--workers must be 1..=1024".into()));
        }
        if self.batch_size == 0 || self.batch_size > 10_000 {
            return Err(ConfigError("--batch-size must be 1..=10000".into()));
        }
        if self.max_deliveries == 0 {
            return Err(ConfigError("--max-deliveries must be at least 1".into()));
        }
        Ok(ServiceConfig {
            workers: self.workers,
            batch_size: self.batch_size,
            max_deliveries: self.max_deliveries,
            work_delay: Duration::from_millis(self.work_delay_ms),
            risk: RiskConfig {
                blacklist: self
                    .blacklist
                    .iter()
                    .map(|u| u.trim().to_string())
                    .filter(|u| !u.is_empty())
                    .collect::<HashSet<_>>(),
                max_attempts_per_user_per_sec: self.risk_max_attempts_per_sec,
            },
            ..ServiceConfig::default()
        })
    }
}

/// Parses a binary's options. `--help` and `--version` print and end with
/// status 0; a bad option is one line on stderr and status 64.
pub fn parse_args<T: clap::Parser>(program: &str) -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        if e.use_stderr() {
            config_error(
                program,
                e.to_string().lines().next().unwrap_or("bad options"),
            )
        } else {
            let _ = e.print();
            ExitCode::SUCCESS
        }
    })
}

/// Reports a configuration error as `program: message` on stderr and
/// returns the status for it ([`EXIT_CONFIG`]).
pub fn config_error(program: &str, message: &str) -> ExitCode {
    let message = message.strip_prefix("error: ").unwrap_or(message);
    eprintln!("{program}: {message}");
    ExitCode::from(EXIT_CONFIG)
}

/// Sets up logging with a tracing `EnvFilter` expression.
pub fn init_logging(filter: &str) -> Result<(), ConfigError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| ConfigError(format!("--log: {e}")))?;
    tracing_subscriber::fmt().with_env_filter(filter).init();
    Ok(())
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
}
