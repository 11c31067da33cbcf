//! The life of a binary's process: its options (a bad one is one line on
//! stderr and exit status 64), its logging, and the signal that ends it.

use std::process::ExitCode;

/// Exit status for bad configuration (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// A configuration error: one line for stderr.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

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
