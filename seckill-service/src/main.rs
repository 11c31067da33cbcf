//! `seckill-service`: the seckill workers of the distributed mode. Any
//! number of instances consume the sales' request queues in Redis, decide
//! the purchases, and send each result to the gateway named in its
//! `reply_to` over gRPC. On SIGINT or SIGTERM each worker finishes the
//! batch in hand and the process exits.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hyper::{Method, StatusCode};
use seckill_inventory::Inventory;
use seckill_queue::RequestQueue;
use seckill_service::cli::{
    self, init_logging, parse_args, shutdown_signal, ConfigError, Mode, ServiceArgs, StoreArgs,
};
use seckill_service::http::{
    healthz, json, metrics_response, readyz, serve, HttpResponse, ServerLimits,
};
use seckill_service::{GrpcCallback, Service};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Options of the `seckill-service` binary.
#[derive(Parser, Debug)]
#[command(
    name = "seckill-service",
    version,
    about = "Seckill service: consumes the request queues in Redis at its own pace and decides the purchases."
)]
struct Args {
    /// Admin HTTP listener (/metrics, /healthz, /readyz).
    #[arg(long, env = "SECKILL_ADMIN_LISTEN", default_value = "127.0.0.1:8091")]
    admin_listen: SocketAddr,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    service: ServiceArgs,
    /// Deadline of each gRPC callback to a gateway, connecting included.
    #[arg(long, env = "SECKILL_CALLBACK_TIMEOUT_MS", default_value_t = 2000)]
    callback_timeout_ms: u64,
    /// How long shutdown waits for the batches in hand; entries still
    /// unacknowledged after it are reclaimed by another instance.
    #[arg(long, env = "SECKILL_SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    shutdown_grace_ms: u64,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "SECKILL_LOG", default_value = "info")]
    log: String,
}

fn main() -> ExitCode {
    let args: Args = match parse_args("seckill-service") {
        Ok(a) => a,
        Err(status) => return status,
    };
    let config = match check(&args) {
        Ok(c) => c,
        Err(e) => return config_error(&e.0),
    };
    if let Err(e) = init_logging(&args.log) {
        return config_error(&e.0);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the Tokio runtime starts");
    runtime.block_on(run(args, config))
}

fn check(args: &Args) -> Result<seckill_service::ServiceConfig, ConfigError> {
    if args.store.mode() == Mode::Embedded {
        return Err(ConfigError(
            "--redis-url or --redis-cluster is required (the embedded mode runs inside the gateway)"
                .into(),
        ));
    }
    args.store.result_retention()?;
    if !(1..=60_000).contains(&args.callback_timeout_ms) {
        return Err(ConfigError(format!(
            "--callback-timeout-ms must be 1..=60000, got {}",
            args.callback_timeout_ms
        )));
    }
    args.service.service_config()
}

async fn run(args: Args, config: seckill_service::ServiceConfig) -> ExitCode {
    // Before any metric handle is resolved, here or in the store.
    let _ = seckill_service::metrics::recorder();
    let admin = match TcpListener::bind(args.admin_listen).await {
        Ok(l) => l,
        Err(e) => {
            return config_error(&format!(
                "cannot bind the admin listener {}: {e}",
                args.admin_listen
            ))
        }
    };
    let store = match args.store.connect().await {
        Some(Ok(store)) => store,
        Some(Err(e)) => {
            eprintln!("seckill-service: cannot connect to Redis: {e}");
            return ExitCode::FAILURE;
        }
        None => unreachable!("checked: distributed mode"),
    };
    let inventory: Arc<dyn Inventory> = Arc::new(store.inventory());
    let queue: Arc<dyn RequestQueue> = Arc::new(store.queue());
    let callback = Arc::new(GrpcCallback::new(Duration::from_millis(
        args.callback_timeout_ms,
    )));
    println!("seckill service");
    println!(
        "  admin API   http://{}  (/metrics, /healthz, /readyz)",
        args.admin_listen
    );
    println!(
        "  workers     {} x batch {}",
        config.workers, config.batch_size
    );

    let shutdown = CancellationToken::new();
    let admin_stop = CancellationToken::new();
    let admin = {
        let (inventory, queue) = (inventory.clone(), queue.clone());
        tokio::spawn(serve(
            admin,
            move |req| {
                let (inventory, queue) = (inventory.clone(), queue.clone());
                async move { admin_handle(req.method(), req.uri().path(), &*inventory, &*queue).await }
            },
            ServerLimits {
                max_connections: 256,
                drain_grace: Duration::from_secs(1),
                ..ServerLimits::default()
            },
            admin_stop.clone(),
        ))
    };
    let service = Service::new(queue, inventory, callback, config);
    let mut workers = tokio::spawn(service.run(shutdown.clone()));
    tokio::select! {
        _ = shutdown_signal() => {}
        _ = &mut workers => {
            eprintln!("seckill-service: the worker pool stopped by itself");
            return ExitCode::FAILURE;
        }
    }
    shutdown.cancel();
    let grace = Duration::from_millis(args.shutdown_grace_ms);
    if tokio::time::timeout(grace, workers).await.is_err() {
        tracing::warn!(
            "batches still in hand after the shutdown grace; another instance reclaims them"
        );
    }
    admin_stop.cancel();
    let _ = admin.await;
    ExitCode::SUCCESS
}

async fn admin_handle(
    method: &Method,
    path: &str,
    inventory: &dyn Inventory,
    queue: &dyn RequestQueue,
) -> HttpResponse {
    match (method, path) {
        (&Method::GET, "/metrics") => metrics_response(),
        (&Method::GET, "/healthz") => healthz(),
        (&Method::GET, "/readyz") => readyz(ready(inventory, queue).await),
        (_, "/metrics" | "/healthz" | "/readyz") => json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"status":"method_not_allowed","error":"method not allowed"}"#,
        ),
        _ => json(
            StatusCode::NOT_FOUND,
            r#"{"status":"not_found","error":"no such endpoint"}"#,
        ),
    }
}

async fn ready(inventory: &dyn Inventory, queue: &dyn RequestQueue) -> Result<(), String> {
    inventory
        .ping()
        .await
        .map_err(|e| format!("inventory: {e}"))?;
    queue.ping().await.map_err(|e| format!("queue: {e}"))
}

fn config_error(message: &str) -> ExitCode {
    cli::config_error("seckill-service", message)
}
