//! `order-relay`: follows the order topic into one sink. `main` parses the
//! options, sets up logging and metrics, connects the source and the sink,
//! binds the admin listener and runs until SIGINT or SIGTERM, finishing
//! the batch in hand.

use std::process::ExitCode;
use std::sync::Arc;

use order_relay::args::{read_secret, Command, SinkKind, Source};
use order_relay::sink::{Postgres, Sink, Stdout, Webhook};
use order_relay::{feed, redis_source, Args, Health};
use seckill_ops::process::{self, eprint_line, parse_args, shutdown_on_signal};
use seckill_redis::{RedisStore, StoreConfig};
use tokio::net::TcpListener;

const PROGRAM: &str = "order-relay";

fn main() -> ExitCode {
    let args: Args = match parse_args(PROGRAM) {
        Ok(a) => a,
        Err(status) => return status,
    };
    let (source, sink) = match args.check() {
        Ok(s) => s,
        Err(e) => return process::config_error(PROGRAM, &e.0),
    };
    let logging = if sink == SinkKind::Stdout {
        process::init_logging_stderr(&args.log)
    } else {
        process::init_logging(&process::LogArgs {
            log: args.log.clone(),
            ..process::LogArgs::default()
        })
    };
    if let Err(e) = logging {
        return process::config_error(PROGRAM, &e.0);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the Tokio runtime starts");
    runtime.block_on(run(args, source, sink))
}

fn failure(message: impl std::fmt::Display) -> ExitCode {
    eprint_line(format_args!("{PROGRAM}: {message}"));
    ExitCode::FAILURE
}

async fn run(args: Args, source: Source, kind: SinkKind) -> ExitCode {
    seckill_ops::metrics::install();
    let sink = match open_sink(&args, &kind).await {
        Ok(s) => s,
        Err(Ok(config)) => return process::config_error(PROGRAM, &config),
        Err(Err(e)) => return failure(e),
    };
    order_relay::metrics::describe(sink.name(), &args.group);
    let store = match &source {
        Source::Redis { urls, cluster } => {
            match RedisStore::connect_with(urls, *cluster, StoreConfig::default()).await {
                Ok(s) => Some(s),
                Err(e) => return failure(format_args!("cannot connect to Redis: {e}")),
            }
        }
        Source::Feed { .. } => None,
    };
    if let Some(Command::Redrive) = args.command {
        let (Some(store), Sink::Webhook(webhook)) = (&store, &sink) else {
            unreachable!("checked with the options");
        };
        let ns = store.config().namespace.clone();
        return match redis_source::RedisSource::redrive(
            &mut store.conn(),
            &ns,
            &args.group,
            webhook,
        )
        .await
        {
            Ok(n) => {
                process::print_line(format_args!("redrive: {n} batches delivered"));
                ExitCode::SUCCESS
            }
            Err(e) => failure(format_args!("redrive stopped: {e}")),
        };
    }
    // Before anything listens: a stop from then on is a graceful one.
    let shutdown = shutdown_on_signal();
    let admin = match TcpListener::bind(args.admin_listen).await {
        Ok(l) => l,
        Err(e) => {
            return process::config_error(
                PROGRAM,
                &format!("cannot bind the admin listener {}: {e}", args.admin_listen),
            )
        }
    };
    let health = Arc::new(Health::default());
    // The sink answered when it was opened; the source says so once read.
    health.sink(true);
    let admin_task = tokio::spawn(order_relay::serve_admin(
        admin,
        health.clone(),
        shutdown.clone(),
    ));
    let consumer = args.consumer_name();
    tracing::info!(
        group = %args.group,
        consumer = %consumer,
        sink = sink.name(),
        admin = %args.admin_listen,
        "order relay started"
    );
    match (source, store) {
        (Source::Redis { .. }, Some(store)) => {
            let config = redis_source::Config {
                group: args.group.clone(),
                consumer,
                batch: args.batch_size as usize,
                reclaim_idle: args.reclaim_idle(),
                retain: std::time::Duration::from_millis(args.retain_ms),
                maintain_every: args.maintain_every(),
                poll: args.poll(),
            };
            let mut source = redis_source::RedisSource::new(&store, config);
            if let Err(e) = source.register().await {
                return failure(format_args!("cannot register the group in Redis: {e}"));
            }
            source.run(sink, health, shutdown.clone()).await;
        }
        (Source::Feed { url, token_file }, _) => {
            let token = match read_secret("--admin-token-file", &token_file) {
                Ok(t) => t,
                Err(e) => return process::config_error(PROGRAM, &e.0),
            };
            let name = match &args.sale_id {
                Some(s) => format!("feed:{}:{s}", args.group),
                None => format!("feed:{}", args.group),
            };
            let config = feed::Config {
                url,
                token,
                name,
                sale_id: args.sale_id.clone(),
                limit: args.batch_size,
                wait_ms: args.feed_wait_ms,
                poll: args.poll(),
            };
            feed::run(config, sink, health, shutdown.clone()).await;
        }
        (Source::Redis { .. }, None) => unreachable!("connected above"),
    }
    shutdown.cancel();
    let _ = admin_task.await;
    ExitCode::SUCCESS
}

/// The sink; `Err(Ok(_))` is bad configuration, `Err(Err(_))` a sink that
/// cannot be reached.
async fn open_sink(args: &Args, kind: &SinkKind) -> Result<Sink, Result<String, String>> {
    match kind {
        SinkKind::Postgres(url) => {
            let mut pg = Postgres::new(url).map_err(Ok)?;
            pg.connect()
                .await
                .map_err(|e| Err(format!("cannot open the PostgreSQL sink: {e}")))?;
            Ok(Sink::Postgres(pg))
        }
        SinkKind::Webhook { url, secret_file } => {
            let secret = read_secret("--webhook-secret-file", secret_file).map_err(|e| Ok(e.0))?;
            let mut w = Webhook::new(url, secret.into_bytes()).map_err(Ok)?;
            w.max_attempts = args.max_attempts;
            w.retry_min = std::time::Duration::from_millis(args.retry_min_ms);
            w.retry_max = std::time::Duration::from_millis(args.retry_max_ms);
            w.timeout = std::time::Duration::from_millis(args.webhook_timeout_ms);
            Ok(Sink::Webhook(Box::new(w)))
        }
        SinkKind::Stdout => Ok(Sink::Stdout(Stdout {
            cursor_file: args.cursor_file.clone(),
        })),
    }
}
