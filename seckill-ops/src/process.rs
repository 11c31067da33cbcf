//! The life of a binary's process: its options (a bad one is one line on
//! stderr and exit status 64), what it prints and logs, and the signal that
//! ends it.
//!
//! Output never stops a process. Rust ignores SIGPIPE, so a write to a
//! closed pipe (`gateway 2>&1 | head -1`) fails with EPIPE, and `println!`,
//! `eprintln!` and tracing's own error report panic on that failure: a
//! panic in the task that waits for SIGTERM would leave a process that only
//! SIGKILL stops. Everything here writes and drops the error instead.

use std::fmt::Display;
use std::io::{self, Write};
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

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
    eprint_line(format_args!("{program}: {message}"));
    ExitCode::from(EXIT_CONFIG)
}

/// `println!` that cannot panic: one line on stdout, a failed write (a
/// closed pipe) ignored.
pub fn print_line(line: impl Display) {
    write_line(io::stdout().lock(), line);
}

/// `eprintln!` that cannot panic: one line on stderr, a failed write
/// ignored.
pub fn eprint_line(line: impl Display) {
    write_line(io::stderr().lock(), line);
}

fn write_line(mut out: impl Write, line: impl Display) {
    // Nobody is left to tell about a failed write.
    let _ = writeln!(out, "{line}");
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Text with colours on a terminal, JSON lines anywhere else (a file, a
    /// pipe, a container's log collector).
    #[default]
    Auto,
    /// Text; colours only on a terminal.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the
    /// event's fields (`message` among them).
    Json,
}

/// The logging options of every binary (flattened into its options).
#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "SECKILL_LOG", default_value = "info")]
    pub log: String,
    /// Log line format.
    #[arg(long, env = "SECKILL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

impl Default for LogArgs {
    fn default() -> Self {
        LogArgs {
            log: "info".into(),
            log_format: LogFormat::Auto,
        }
    }
}

/// Sets up logging as `args` say. Log lines go to stdout; one that cannot
/// be written is dropped.
pub fn init_logging(args: &LogArgs) -> Result<(), ConfigError> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .map_err(|e| ConfigError(format!("--log: {e}")))?;
    let terminal = io::IsTerminal::is_terminal(&io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LossyStdout)
        // Its report of a failed write is an `eprintln!`.
        .log_internal_errors(false);
    match (args.log_format, terminal) {
        (LogFormat::Json, _) | (LogFormat::Auto, false) => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
        (LogFormat::Text, _) | (LogFormat::Auto, true) => builder.with_ansi(terminal).init(),
    }
    Ok(())
}

/// As [`init_logging`], with the log lines on stderr: for a program whose
/// stdout carries data (`order-relay --stdout`).
pub fn init_logging_stderr(filter: &str) -> Result<(), ConfigError> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| ConfigError(format!("--log: {e}")))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LossyStderr)
        .log_internal_errors(false)
        .init();
    Ok(())
}

/// The log writer of [`init_logging_stderr`].
#[derive(Clone, Copy, Debug)]
struct LossyStderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LossyStderr {
    type Writer = Lossy<io::StderrLock<'a>>;

    fn make_writer(&'a self) -> Self::Writer {
        Lossy(io::stderr().lock())
    }
}

/// The log writer: stdout, with write errors swallowed.
#[derive(Clone, Copy, Debug)]
struct LossyStdout;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LossyStdout {
    type Writer = Lossy<io::StdoutLock<'a>>;

    fn make_writer(&'a self) -> Self::Writer {
        Lossy(io::stdout().lock())
    }
}

/// A writer that reports every write as done, written or not.
#[derive(Debug)]
struct Lossy<W>(W);

impl<W: Write> Write for Lossy<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _ = self.0.write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// A token cancelled when SIGINT or SIGTERM arrives (or when the task that
/// waits for them panics). The handlers are in place when this returns, so
/// a binary calls it before it binds anything: a stop that arrives the
/// moment the process says it is up is a graceful stop, not a kill by the
/// signal's default action. Needs a Tokio runtime.
pub fn shutdown_on_signal() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    let shutdown = CancellationToken::new();
    let cancel = shutdown.clone().drop_guard();
    tokio::spawn(async move {
        let _cancel = cancel;
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown signal received");
    });
    shutdown
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader has gone, like a closed pipe.
    struct Closed;

    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }

        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    #[test]
    fn a_closed_output_is_no_error() {
        write_line(Closed, "banner");
        let mut log = Lossy(Closed);
        assert_eq!(log.write(b"line\n").unwrap(), 5);
        log.write_all(b"line\n").unwrap();
        log.flush().unwrap();
    }

    #[test]
    fn lines_are_written_whole() {
        let mut out = Vec::new();
        write_line(&mut out, format_args!("a {}", 1));
        assert_eq!(out, b"a 1\n");
    }
}
