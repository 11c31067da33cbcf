//! Command-line options (each also an environment variable) and the
//! validated configuration built from them. Bad configuration is reported
//! as one line and exit status 64.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::IpNet;
use seckill_inventory::{valid_id, SaleSpec};

pub use crate::identity::{Identity, IdentityArgs};
pub use seckill_ops::process::{ConfigError, EXIT_CONFIG};
use seckill_service::callback::read_secret_file;
pub use seckill_service::callback::{CallbackToken, CallbackTokenArgs};
pub use seckill_service::ServiceArgs;
use seckill_service::ServiceConfig;
pub use seckill_stores::{Mode, StoreArgs};

/// Options of the `gateway` binary.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "gateway",
    version,
    about = "Flash-sale gateway: token bucket, request queue and callback in front of a seckill backend."
)]
pub struct Args {
    /// Public HTTP listener (purchase and read API).
    #[arg(long, env = "SECKILL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Admin HTTP listener (sale admin API, /metrics, /healthz, /readyz).
    #[arg(long, env = "SECKILL_ADMIN_LISTEN", default_value = "127.0.0.1:8081")]
    pub admin_listen: SocketAddr,
    /// gRPC listener of the seckill.v1.Callback server.
    #[arg(long, env = "SECKILL_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// Address seckill services call back on [default: the gRPC listen address].
    /// With TLS its host must be named in the certificate (DNS or IP SAN).
    #[arg(long, env = "SECKILL_ADVERTISE_GRPC")]
    pub advertise_grpc: Option<String>,
    /// PEM certificate chain of the gRPC listener: TLS on the callback
    /// (with --grpc-tls-key; services then need --grpc-tls-ca).
    #[arg(long, env = "SECKILL_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// PEM private key of --grpc-tls-cert.
    #[arg(long, env = "SECKILL_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// Time a gRPC peer may stay silent before its connection is closed;
    /// the listener pings live peers at a third of it (at least 1000).
    #[arg(
        long,
        env = "SECKILL_GRPC_IDLE_TIMEOUT_MS",
        default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(1000..)
    )]
    pub grpc_idle_timeout_ms: u64,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub callback: CallbackTokenArgs,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Bearer token for /admin/* [default: random, printed once at start].
    #[arg(
        long,
        env = "SECKILL_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    pub admin_token: Option<String>,
    /// File holding the bearer token for /admin/* (instead of --admin-token).
    #[arg(long, env = "SECKILL_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Deadline stamped on each admitted request (1..=600000).
    #[arg(
        long,
        env = "SECKILL_REQUEST_TIMEOUT_MS",
        default_value_t = 2000,
        value_parser = clap::value_parser!(u64).range(1..=600_000)
    )]
    pub request_timeout_ms: u64,
    /// `ID:STOCK` sale created at start; `none` = no demo sale
    /// [default: demo:100 in embedded mode, none in distributed mode].
    #[arg(long, env = "SECKILL_DEMO_SALE")]
    pub demo_sale: Option<String>,
    /// Open connections per HTTP listener at most (at least 1).
    #[arg(
        long,
        env = "SECKILL_MAX_CONNECTIONS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,
    /// Requests waiting for their result at most; beyond it, 503 (at least 1).
    #[arg(
        long,
        env = "SECKILL_MAX_WAITERS",
        default_value_t = 100_000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_waiters: u32,
    /// Time a client has to send a request's headers (at least 1).
    #[arg(
        long,
        env = "SECKILL_HEADER_READ_TIMEOUT_MS",
        default_value_t = 5000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub header_read_timeout_ms: u64,
    /// Per-user edge limit: purchase attempts per second per user and sale (0 = off).
    #[arg(long, env = "SECKILL_USER_RATE_PER_SEC", default_value_t = 5)]
    pub user_rate_per_sec: u32,
    /// Per-user edge limit: burst allowed above the rate.
    #[arg(long, env = "SECKILL_USER_BURST", default_value_t = 5)]
    pub user_burst: u32,
    /// Peers (comma-separated CIDRs or addresses) whose X-Forwarded-For or
    /// Forwarded header names the client address [default: none].
    #[arg(
        long,
        env = "SECKILL_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = crate::client::parse_trusted_proxy
    )]
    pub trusted_proxies: Vec<IpNet>,
    /// Per-address edge limit: purchase attempts per second per client address (0 = off).
    #[arg(long, env = "SECKILL_IP_RATE_PER_SEC", default_value_t = 0)]
    pub ip_rate_per_sec: u32,
    /// Per-address edge limit: burst allowed above the rate (0 = the rate).
    #[arg(long, env = "SECKILL_IP_BURST", default_value_t = 0)]
    pub ip_burst: u32,
    /// Open connections per client TCP address (IPv6: per /64) and HTTP
    /// listener at most; beyond it, the connection's request is answered 429
    /// `address_limit` and the connection closed (0 = off). Behind a proxy
    /// its connections are counted: raise it there.
    #[arg(long, env = "SECKILL_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: u32,
    /// How long shutdown waits for waiting requests to be answered.
    #[arg(long, env = "SECKILL_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
    /// Live sales this gateway serves at most; creating one more is refused
    /// (409) until one is removed (at least 1).
    #[arg(
        long,
        env = "SECKILL_MAX_SALES",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_sales: u32,
    #[command(flatten)]
    pub logging: seckill_ops::process::LogArgs,
    #[command(flatten)]
    pub tracing: seckill_ops::trace::TraceArgs,
    /// Log one line per purchase at info (request id, sale, outcome,
    /// microseconds); without it the line is at debug.
    #[arg(long, env = "SECKILL_LOG_REQUESTS")]
    pub log_requests: bool,
}

/// The gateway's validated configuration.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub admin_token: String,
    /// The token a callback must carry; `None` refuses every callback over
    /// gRPC (the embedded mode delivers in-process).
    pub callback_token: Option<CallbackToken>,
    pub advertise_grpc: String,
    /// Certificate and key of the gRPC listener; `None` = plaintext.
    pub grpc_tls: Option<GrpcTls>,
    /// Time a gRPC peer may stay silent (see `--grpc-idle-timeout-ms`).
    pub grpc_idle_timeout: Duration,
    pub request_timeout: Duration,
    /// Extra wait past the deadline for a result decided just in time.
    pub reply_grace: Duration,
    pub max_connections: usize,
    pub max_waiters: usize,
    pub header_read_timeout: Duration,
    /// Time a client has to send its body once the headers are in.
    pub body_read_timeout: Duration,
    pub user_rate_per_sec: u32,
    pub user_burst: u32,
    /// Peers whose forwarding headers name the client address.
    pub trusted_proxies: Vec<IpNet>,
    /// Per-address purchase attempts per second (0 = off), and burst.
    pub ip_rate_per_sec: u32,
    pub ip_burst: u32,
    /// Open connections per peer address and listener (0 = off).
    pub max_connections_per_ip: usize,
    pub shutdown_grace: Duration,
    pub demo_sale: Option<SaleSpec>,
    /// Live sales this gateway serves at most.
    pub max_sales: usize,
    /// The per-purchase log line at info instead of debug.
    pub log_requests: bool,
    /// Who the buyer of a request is (`--buyer-auth`).
    pub identity: Identity,
}

impl GatewayConfig {
    /// Defaults for a gateway advertising `advertise_grpc`, with the given
    /// admin token (tests and embedding programs start from here).
    pub fn new(admin_token: impl Into<String>, advertise_grpc: impl Into<String>) -> Self {
        GatewayConfig {
            admin_token: admin_token.into(),
            callback_token: None,
            advertise_grpc: advertise_grpc.into(),
            grpc_tls: None,
            grpc_idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_millis(2000),
            reply_grace: Duration::from_millis(250),
            max_connections: 10_000,
            max_waiters: 100_000,
            header_read_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(5),
            user_rate_per_sec: 5,
            user_burst: 5,
            trusted_proxies: Vec::new(),
            ip_rate_per_sec: 0,
            ip_burst: 0,
            max_connections_per_ip: 256,
            shutdown_grace: Duration::from_secs(10),
            demo_sale: None,
            max_sales: 10_000,
            log_requests: false,
            identity: Identity::Body,
        }
    }
}

impl Args {
    /// Embedded unless a Redis URL or cluster is given.
    pub fn mode(&self) -> Mode {
        self.store.mode()
    }

    /// Validates the options into a gateway configuration.
    pub fn gateway_config(&self) -> Result<GatewayConfig, ConfigError> {
        let err = |m: String| Err(ConfigError(m));
        if self.user_rate_per_sec > 0 && self.user_burst == 0 {
            return err("--user-burst must be at least 1 when --user-rate-per-sec is set".into());
        }
        let admin_token = match (&self.admin_token, &self.admin_token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => Some(read_secret_file("--admin-token-file", path)?),
            (None, None) => None,
        };
        let admin_token = match admin_token {
            Some(t) if t.len() < 8 || t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return err("--admin-token must be at least 8 characters, without spaces".into())
            }
            Some(t) => t,
            None => random_token(),
        };
        // Embedded: results come in-process, so the gRPC listener takes none.
        let callback_token = match self.mode() {
            Mode::Embedded => None,
            Mode::Redis(_) | Mode::RedisCluster(_) => Some(self.callback.required()?),
        };
        let demo_default = (self.mode() == Mode::Embedded).then_some("demo:100");
        let demo_sale = match self.demo_sale.as_deref().or(demo_default) {
            None | Some("none") => None,
            Some(s) => Some(parse_demo_sale(s)?),
        };
        let advertise_grpc = self
            .advertise_grpc
            .clone()
            .unwrap_or_else(|| self.grpc_listen.to_string());
        let request_timeout = Duration::from_millis(self.request_timeout_ms);
        let mut config = GatewayConfig::new(admin_token, advertise_grpc);
        config.callback_token = callback_token;
        config.grpc_tls = self.grpc_tls()?;
        config.grpc_idle_timeout = Duration::from_millis(self.grpc_idle_timeout_ms);
        config.request_timeout = request_timeout;
        config.max_connections = self.max_connections as usize;
        config.max_waiters = self.max_waiters as usize;
        config.header_read_timeout = Duration::from_millis(self.header_read_timeout_ms);
        config.user_rate_per_sec = self.user_rate_per_sec;
        config.user_burst = self.user_burst;
        config.trusted_proxies = self.trusted_proxies.clone();
        config.ip_rate_per_sec = self.ip_rate_per_sec;
        config.ip_burst = self.ip_burst;
        config.max_connections_per_ip = self.max_connections_per_ip as usize;
        config.shutdown_grace = Duration::from_millis(self.shutdown_grace_ms);
        config.demo_sale = demo_sale;
        config.max_sales = self.max_sales as usize;
        config.log_requests = self.log_requests;
        config.identity = self.identity.identity(&config.trusted_proxies)?;
        Ok(config)
    }

    /// The gRPC listener's certificate and key, read and checked once here
    /// so a bad file stops the start (exit 64), not the listener later.
    fn grpc_tls(&self) -> Result<Option<GrpcTls>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.grpc_tls_cert, &self.grpc_tls_key) else {
            return Ok(None);
        };
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path)
                .map_err(|e| ConfigError(format!("{flag}: cannot read {}: {e}", path.display())))
        };
        let tls = GrpcTls {
            cert: read("--grpc-tls-cert", cert)?,
            key: read("--grpc-tls-key", key)?,
        };
        tonic::transport::Server::builder()
            .tls_config(tls.server_config())
            .map_err(|e| ConfigError(format!("--grpc-tls-cert/--grpc-tls-key: {e}")))?;
        Ok(Some(tls))
    }

    /// The configuration of the embedded seckill service.
    pub fn service_config(&self) -> ServiceConfig {
        self.service.service_config()
    }
}

/// The PEM certificate chain and private key of the gRPC listener. `Debug`
/// hides the key.
#[derive(Clone)]
pub struct GrpcTls {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl GrpcTls {
    /// The listener's TLS settings.
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert, &self.key);
        tonic::transport::ServerTlsConfig::new().identity(identity)
    }
}

impl std::fmt::Debug for GrpcTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcTls(..)")
    }
}

/// Parses `ID:STOCK`.
pub fn parse_demo_sale(s: &str) -> Result<SaleSpec, ConfigError> {
    let bad = || ConfigError(format!("--demo-sale must be ID:STOCK or none, got {s:?}"));
    let (id, stock) = s.split_once(':').ok_or_else(bad)?;
    let stock: u64 = stock.parse().map_err(|_| bad())?;
    if !valid_id(id) {
        return Err(bad());
    }
    Ok(SaleSpec::new(id, stock))
}

/// 32 hex digits from the OS's entropy source.
pub(crate) fn random_token() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS provides entropy");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("gateway").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_are_the_embedded_quick_start() {
        let a = parse(&[]);
        assert_eq!(a.mode(), Mode::Embedded);
        let c = a.gateway_config().unwrap();
        assert_eq!(c.demo_sale, Some(SaleSpec::new("demo", 100)));
        assert_eq!(c.advertise_grpc, "127.0.0.1:50051");
        assert_eq!(c.request_timeout, Duration::from_millis(2000));
        assert_eq!(c.admin_token.len(), 32);
        assert_eq!(c.max_sales, 10_000);
        assert_eq!(c.max_connections_per_ip, 256);
        assert_eq!((c.ip_rate_per_sec, c.trusted_proxies.len()), (0, 0));
    }

    #[test]
    fn per_client_options() {
        let c = parse(&[
            "--trusted-proxies",
            "10.0.0.0/8, 192.0.2.7,::1",
            "--ip-rate-per-sec",
            "3",
            "--max-connections-per-ip",
            "0",
        ])
        .gateway_config()
        .unwrap();
        assert_eq!(c.trusted_proxies.len(), 3);
        assert_eq!((c.ip_rate_per_sec, c.ip_burst), (3, 0));
        assert_eq!(c.max_connections_per_ip, 0);
        assert!(Args::try_parse_from(["gateway", "--trusted-proxies", "proxy.lan"]).is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Args::try_parse_from(["gateway", "--request-timeout-ms", "0"]).is_err());
        assert!(Args::try_parse_from(["gateway", "--max-waiters", "0"]).is_err());
        assert!(Args::try_parse_from(["gateway", "--max-sales", "0"]).is_err());
        assert!(parse(&["--demo-sale", "x"]).gateway_config().is_err());
        assert!(parse(&["--demo-sale", "a/b:1"]).gateway_config().is_err());
        assert!(parse(&["--admin-token", "short"]).gateway_config().is_err());
        assert!(Args::try_parse_from(["gateway", "--workers", "0"]).is_err());
        assert!(Args::try_parse_from(["gateway", "--listen", "nowhere"]).is_err());
        assert!(Args::try_parse_from([
            "gateway",
            "--redis-url",
            "redis://x",
            "--redis-cluster",
            "a:1"
        ])
        .is_err());
    }

    #[test]
    fn distributed_mode_needs_the_callback_token() {
        let e = parse(&["--redis-url", "redis://x"])
            .gateway_config()
            .unwrap_err();
        assert!(e.0.contains("--callback-token-file"), "{}", e.0);
        assert!(e.0.contains("SECKILL_CALLBACK_TOKEN"), "{}", e.0);
        let c = parse(&[
            "--redis-url",
            "redis://x",
            "--callback-token",
            "0123456789abcdef",
        ])
        .gateway_config()
        .unwrap();
        assert!(c.callback_token.is_some());
        assert!(
            parse(&["--redis-url", "redis://x", "--callback-token", "0123456789"])
                .gateway_config()
                .is_err()
        );
        // Embedded: delivered in-process, no token taken over gRPC.
        assert_eq!(parse(&[]).gateway_config().unwrap().callback_token, None);
    }

    #[test]
    fn the_admin_token_can_come_from_a_file() {
        let scratch = seckill_test_support::scratch_dir();
        let dir = scratch.path();
        let file = dir.join("admin");
        std::fs::write(&file, "admin-secret\n").unwrap();
        let path = file.to_str().unwrap();
        let c = parse(&["--admin-token-file", path])
            .gateway_config()
            .unwrap();
        assert_eq!(c.admin_token, "admin-secret");
        assert!(Args::try_parse_from([
            "gateway",
            "--admin-token-file",
            path,
            "--admin-token",
            "x"
        ])
        .is_err());
        let missing = dir.join("missing");
        let e = parse(&["--admin-token-file", missing.to_str().unwrap()])
            .gateway_config()
            .unwrap_err();
        assert!(e.0.contains(missing.to_str().unwrap()), "{}", e.0);
    }

    #[test]
    fn demo_sale_none_and_custom() {
        assert_eq!(
            parse(&["--demo-sale", "none"])
                .gateway_config()
                .unwrap()
                .demo_sale,
            None
        );
        let c = parse(&["--demo-sale", "flash:7"]).gateway_config().unwrap();
        assert_eq!(c.demo_sale, Some(SaleSpec::new("flash", 7)));
    }
}
