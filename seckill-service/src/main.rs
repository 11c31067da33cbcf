//! `seckill-service`: the seckill workers of the distributed mode. Any
//! number of instances consume the sales' request queues in Redis, decide
//! the purchases, and send each result to the gateway named in its
//! `reply_to` over gRPC. On SIGINT or SIGTERM each worker finishes the
//! batch in hand and the process exits.

use std::process::ExitCode;
use std::sync::Arc;

use seckill_ops::process::{
    self, eprint_line, init_logging, parse_args, print_line, shutdown_on_signal,
};
use seckill_service::{Args, GrpcCallback};
use seckill_stores::{Mode, Stores};
use tokio::net::TcpListener;

fn main() -> ExitCode {
    let args: Args = match parse_args("seckill-service") {
        Ok(a) => a,
        Err(status) => return status,
    };
    if args.store.mode() == Mode::Embedded {
        return config_error(
            "--redis-url or --redis-cluster is required (the embedded mode runs inside the gateway)",
        );
    }
    let callback = match args
        .callback
        .required()
        .and_then(|token| args.callback_client(&token))
    {
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
    runtime.block_on(run(args, callback))
}

async fn run(args: Args, callback: GrpcCallback) -> ExitCode {
    // Before anything listens: a stop from then on is a graceful one.
    let shutdown = shutdown_on_signal();
    // Before any metric handle is resolved, here or in the stores.
    seckill_ops::metrics::install();
    seckill_service::metrics::describe();
    if let Err(e) = seckill_ops::trace::init(&args.tracing, "seckill-service") {
        return config_error(&e.0);
    }
    let admin = match TcpListener::bind(args.admin_listen).await {
        Ok(l) => l,
        Err(e) => {
            return config_error(&format!(
                "cannot bind the admin listener {}: {e}",
                args.admin_listen
            ))
        }
    };
    let stores = match Stores::open(&args.store).await {
        Ok(stores) => stores,
        Err(e) => {
            let mode = args.store.mode();
            eprint_line(format_args!(
                "seckill-service: cannot connect to Redis {}: {}",
                mode.shown(),
                mode.redact(&e)
            ));
            return ExitCode::FAILURE;
        }
    };
    let config = args.service.service_config();
    print_line(format_args!(
        "seckill service (Redis {})\n\
         \x20 admin API   http://{}  (/metrics, /healthz, /readyz)\n\
         \x20 workers     {} x batch {}",
        args.store.mode().shown(),
        args.admin_listen,
        config.workers,
        config.batch_size
    ));
    let callback = Arc::new(callback);
    match seckill_service::run(
        admin,
        stores,
        callback,
        config,
        args.shutdown_grace(),
        shutdown,
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint_line(format_args!("seckill-service: {e}"));
            ExitCode::FAILURE
        }
    }
}

fn config_error(message: &str) -> ExitCode {
    process::config_error("seckill-service", message)
}
