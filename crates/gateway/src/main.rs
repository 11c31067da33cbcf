//! `gateway`: parses the options, sets up logging, binds the listeners and
//! runs the gateway until SIGINT or SIGTERM, then drains.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gateway::config::{Args, Mode, EXIT_CONFIG};
use gateway::{run_embedded, EmbeddedOptions, Listeners};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return config_error(e.to_string().lines().next().unwrap_or("bad options")),
    };
    let (config, service) = match (args.gateway_config(), args.service_config()) {
        (Ok(c), Ok(s)) => (c, s),
        (Err(e), _) | (_, Err(e)) => return config_error(&e.to_string()),
    };
    if args.mode() != Mode::Embedded {
        return config_error(
            "distributed mode (--redis-url / --redis-cluster) is not available in this build",
        );
    }
    let filter = match tracing_subscriber::EnvFilter::try_new(&args.log) {
        Ok(f) => f,
        Err(e) => return config_error(&format!("--log: {e}")),
    };
    tracing_subscriber::fmt().with_env_filter(filter).init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the Tokio runtime starts");
    runtime.block_on(async move {
        let listeners =
            match Listeners::bind(args.listen, args.admin_listen, args.grpc_listen).await {
                Ok(l) => l,
                Err(e) => return config_error(&format!("cannot bind the listeners: {e}")),
            };
        println!("seckill gateway (embedded mode)");
        println!("  public API  http://{}", args.listen);
        println!(
            "  admin API   http://{}  (/metrics, /healthz, /readyz)",
            args.admin_listen
        );
        println!("  gRPC        {}", args.grpc_listen);
        if args.admin_token.is_none() {
            println!("  admin token {}", config.admin_token);
        }
        if let Some(sale) = &config.demo_sale {
            println!("  demo sale   {} (stock {})", sale.sale_id, sale.stock);
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(signal(shutdown.clone()));
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
                eprintln!("gateway: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn config_error(message: &str) -> ExitCode {
    let message = message.strip_prefix("error: ").unwrap_or(message);
    eprintln!("gateway: {message}");
    ExitCode::from(EXIT_CONFIG as u8)
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown signal received");
    shutdown.cancel();
}
