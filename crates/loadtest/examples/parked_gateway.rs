//! The embedded gateway with deliberately slow seckill workers, for
//! measuring what a waiting request costs.
//!
//! It takes the `gateway` binary's options and runs the same
//! `run_embedded`, except that every worker batch takes
//! `PARKED_WORK_DELAY_MS` (default 10 minutes) before deciding: admitted
//! requests stay parked in the waiter table until their deadline.
//! `scripts/bench` parks N requests on it and reads the process's RSS.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gateway::config::Args;
use gateway::{run_embedded, EmbeddedOptions, Listeners};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let args = Args::parse();
    let (config, mut service) = match (args.gateway_config(), args.service_config()) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("parked_gateway: {e}");
            return ExitCode::from(64);
        }
    };
    let delay_ms = std::env::var("PARKED_WORK_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600_000);
    service.work_delay = Duration::from_millis(delay_ms);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the Tokio runtime starts");
    runtime.block_on(async move {
        let listeners =
            match Listeners::bind(args.listen, args.admin_listen, args.grpc_listen).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("parked_gateway: cannot bind the listeners: {e}");
                    return ExitCode::from(64);
                }
            };
        println!(
            "parked gateway on http://{} (work delay {delay_ms} ms)",
            args.listen
        );
        let shutdown = CancellationToken::new();
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                let _ = tokio::signal::ctrl_c().await;
                shutdown.cancel();
            }
        });
        let retention = Duration::from_millis(args.result_retention_ms);
        match run_embedded(
            listeners,
            config,
            service,
            EmbeddedOptions::default(),
            retention,
            shutdown,
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("parked_gateway: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
