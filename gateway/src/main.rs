//! `gateway`: parses the options, sets up logging, opens the stores, binds
//! the listeners and runs the gateway until SIGINT or SIGTERM, then drains.
//! Without Redis options it runs the whole sale in this process (embedded
//! mode); with `--redis-url` or `--redis-cluster` it is one of many
//! gateways sharing the sale through Redis, and seckill services run as
//! their own processes.

use std::process::ExitCode;

use gateway::config::{Args, Mode};
use gateway::{run_distributed, run_embedded, EmbeddedOptions, Listeners};
use seckill_ops::process::{
    self, eprint_line, init_logging, parse_args, print_line, shutdown_on_signal,
};
use seckill_stores::{OpenError, Stores};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Args = match parse_args("gateway") {
        Ok(a) => a,
        Err(status) => return status,
    };
    let config = match args.gateway_config() {
        Ok(c) => c,
        Err(e) => return config_error(&e.0),
    };
    if let Err(e) = init_logging(&args.logging) {
        return config_error(&e.0);
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the Tokio runtime starts");
    runtime.block_on(async move {
        // Before anything listens: a stop from then on is a graceful one.
        let shutdown = shutdown_on_signal();
        // Before any metric handle is resolved, here or in the stores.
        seckill_ops::metrics::install();
        gateway::describe_metrics();
        if let Err(e) = seckill_ops::trace::init(&args.tracing, "seckill-gateway") {
            return config_error(&e.0);
        }
        let listeners =
            match Listeners::bind(args.listen, args.admin_listen, args.grpc_listen).await {
                Ok(l) => l,
                Err(e) => return config_error(&format!("cannot bind the listeners: {e}")),
            };
        let mode = args.mode();
        let stores = match Stores::open(&args.store).await {
            Ok(stores) => stores,
            // Another gateway has the directory: a configuration mistake.
            Err(OpenError::DataDir(e @ seckill_stores::DataDirError::Locked(_))) => {
                return config_error(&e.to_string())
            }
            Err(OpenError::DataDir(e)) => {
                eprint_line(format_args!("gateway: {e}"));
                return ExitCode::FAILURE;
            }
            Err(OpenError::Redis(e)) => {
                eprint_line(format_args!(
                    "gateway: cannot connect to Redis {}: {}",
                    mode.shown(),
                    mode.redact(&e)
                ));
                return ExitCode::FAILURE;
            }
        };
        let mut banner = match &mode {
            Mode::Embedded => "seckill gateway (embedded mode)".to_string(),
            _ => format!("seckill gateway (distributed mode, Redis {})", mode.shown()),
        };
        banner += &format!("\n  public API  http://{}", args.listen);
        banner += &format!(
            "\n  admin API   http://{}  (/metrics, /healthz, /readyz)",
            args.admin_listen
        );
        banner += &format!(
            "\n  gRPC        {} (advertised as {})",
            args.grpc_listen, config.advertise_grpc
        );
        if mode == Mode::Embedded {
            banner += &match args.store.data_dir() {
                Some(dir) => format!("\n  data dir    {}", dir.display()),
                None => "\n  data dir    none (memory only: a stop forgets every sale and order)"
                    .to_string(),
            };
        }
        if args.admin_token.is_none() && args.admin_token_file.is_none() {
            banner += &format!("\n  admin token {}", config.admin_token);
        }
        if let Some(sale) = &config.demo_sale {
            banner += &format!("\n  demo sale   {} (stock {})", sale.sale_id, sale.stock);
        }
        print_line(banner);
        let result = match mode {
            Mode::Embedded => {
                let service = args.service_config();
                let options = EmbeddedOptions::default();
                run_embedded(listeners, config, stores, service, options, shutdown).await
            }
            Mode::Redis(_) | Mode::RedisCluster(_) => {
                run_distributed(listeners, config, stores, shutdown).await
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprint_line(format_args!("gateway: {e}"));
                ExitCode::FAILURE
            }
        }
    })
}

fn config_error(message: &str) -> ExitCode {
    process::config_error("gateway", message)
}
