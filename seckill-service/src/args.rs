//! The options of the `seckill-service` binary, and the worker options the
//! embedded gateway shares with it. Each option is a flag and an
//! environment variable; bounds are clap value ranges, so a bad value is
//! refused while parsing (one line, exit status 64).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use seckill_stores::StoreArgs;

use crate::callback::{CallbackToken, CallbackTokenArgs, GrpcCallback};
use crate::{RiskConfig, ServiceConfig};
use seckill_ops::process::ConfigError;

/// Options of the `seckill-service` binary.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "seckill-service",
    version,
    about = "Seckill service: consumes the request queues in Redis at its own pace and decides the purchases."
)]
pub struct Args {
    /// Admin HTTP listener (/metrics, /healthz, /readyz).
    #[arg(long, env = "SECKILL_ADMIN_LISTEN", default_value = "127.0.0.1:8091")]
    pub admin_listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub callback: CallbackTokenArgs,
    /// Deadline of each gRPC callback to a gateway, connecting included (1..=60000).
    #[arg(
        long,
        env = "SECKILL_CALLBACK_TIMEOUT_MS",
        default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(1..=60_000)
    )]
    pub callback_timeout_ms: u64,
    /// PEM CA certificate(s): call gateways over TLS (https) and trust only
    /// these; a gateway's certificate must name the host of the address it
    /// advertises. Unset = plaintext callbacks.
    #[arg(long, env = "SECKILL_GRPC_TLS_CA")]
    pub grpc_tls_ca: Option<std::path::PathBuf>,
    /// How long shutdown waits for the batches in hand; entries still
    /// unacknowledged after it are reclaimed by another instance.
    #[arg(long, env = "SECKILL_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
    #[command(flatten)]
    pub logging: seckill_ops::process::LogArgs,
    #[command(flatten)]
    pub tracing: seckill_ops::trace::TraceArgs,
}

/// How the seckill workers run.
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceArgs {
    /// Seckill workers, each deciding one batch at a time (1..=1024).
    #[arg(
        long,
        env = "SECKILL_WORKERS",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..=1024)
    )]
    pub workers: u16,
    /// Requests one worker decides at once (1..=10000).
    #[arg(
        long,
        env = "SECKILL_BATCH_SIZE",
        default_value_t = 64,
        value_parser = clap::value_parser!(u16).range(1..=10_000)
    )]
    pub batch_size: u16,
    /// Comma-separated users refused by risk control.
    #[arg(long, env = "SECKILL_BLACKLIST", value_delimiter = ',')]
    pub blacklist: Vec<String>,
    /// Risk control: attempts per user per second reaching the service (0 = off).
    #[arg(long, env = "SECKILL_RISK_MAX_ATTEMPTS_PER_SEC", default_value_t = 0)]
    pub risk_max_attempts_per_sec: u32,
    /// Deliveries of a queue entry after which it is dead-lettered and its
    /// request given a definite failure (at least 1).
    #[arg(
        long,
        env = "SECKILL_MAX_DELIVERIES",
        default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_deliveries: u32,
    /// Extra time spent on every batch, standing in for a slow backend
    /// (drills and benchmarks; 0 in production).
    #[arg(long, env = "SECKILL_WORK_DELAY_MS", default_value_t = 0, hide = true)]
    pub work_delay_ms: u64,
}

impl ServiceArgs {
    /// The worker pool's configuration.
    pub fn service_config(&self) -> ServiceConfig {
        ServiceConfig {
            workers: usize::from(self.workers),
            batch_size: usize::from(self.batch_size),
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
        }
    }
}

impl Args {
    pub fn callback_timeout(&self) -> Duration {
        Duration::from_millis(self.callback_timeout_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The callback client these options describe: its deadline, its token
    /// and, with `--grpc-tls-ca`, TLS.
    pub fn callback_client(&self, token: &CallbackToken) -> Result<GrpcCallback, ConfigError> {
        let client = GrpcCallback::new(self.callback_timeout(), token);
        let Some(path) = &self.grpc_tls_ca else {
            return Ok(client);
        };
        let pem = std::fs::read(path).map_err(|e| {
            ConfigError(format!(
                "--grpc-tls-ca: cannot read {}: {e}",
                path.display()
            ))
        })?;
        client
            .with_tls_ca(&pem)
            .map_err(|e| ConfigError(format!("--grpc-tls-ca: {}", e.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("seckill-service").chain(args.iter().copied()))
    }

    #[test]
    fn bounds_are_checked_while_parsing() {
        assert!(parse(&["--workers", "0"]).is_err());
        assert!(parse(&["--workers", "1025"]).is_err());
        assert!(parse(&["--batch-size", "0"]).is_err());
        assert!(parse(&["--max-deliveries", "0"]).is_err());
        assert!(parse(&["--callback-timeout-ms", "60001"]).is_err());
        assert!(parse(&["--result-retention-ms", "999"]).is_err());
        let a = parse(&["--workers", "8", "--blacklist", " a,,b "]).unwrap();
        let c = a.service.service_config();
        assert_eq!(c.workers, 8);
        assert_eq!(c.risk.blacklist.len(), 2);
    }

    #[test]
    fn the_callback_token_comes_from_one_source_and_is_checked() {
        assert!(parse(&[]).unwrap().callback.required().is_err());
        let t = parse(&["--callback-token", "0123456789abcdef"]).unwrap();
        assert!(t.callback.required().is_ok());
        assert!(parse(&["--callback-token", "short"])
            .unwrap()
            .callback
            .required()
            .is_err());
        assert!(parse(&["--callback-token", "x", "--callback-token-file", "f"]).is_err());

        let scratch = seckill_test_support::scratch_dir();
        let dir = scratch.path();
        let file = dir.join("token");
        std::fs::write(&file, "0123456789abcdef\n").unwrap();
        let a = parse(&["--callback-token-file", file.to_str().unwrap()]).unwrap();
        let from_file = a.callback.required().unwrap();
        assert_eq!(Some(from_file), t.callback.token().unwrap());
        std::fs::write(&file, "0123456789 abcdef\n").unwrap();
        assert!(a.callback.required().is_err());
        let missing = dir.join("missing");
        let a = parse(&["--callback-token-file", missing.to_str().unwrap()]).unwrap();
        let e = a.callback.required().unwrap_err();
        assert!(e.0.contains(missing.to_str().unwrap()), "{}", e.0);
    }
}
