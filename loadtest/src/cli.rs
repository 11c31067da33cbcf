//! The `loadtest` command line: `run`, `throughput`, `calibrate-server` and
//! `report`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::builder::RangedU64ValueParser;
use clap::{value_parser, Args, Parser, Subcommand};
use hyper::Method;

use crate::assertion::Assertion;
use crate::http::{self, AdminApi, SaleSetup, Tls};
use crate::model::{Report, REPORT_VERSION};
use crate::profile::Profile;
use crate::record::HIGHEST_US;
use crate::run::RunConfig;
use crate::throughput::ThroughputConfig;

/// Exit status: the audit failed (oversell, missing answers, ...).
pub const EXIT_AUDIT: u8 = 1;
/// Exit status: an `--assert` did not hold.
pub const EXIT_ASSERT: u8 = 2;
/// Exit status: the generator fell behind, the run is invalid.
pub const EXIT_INVALID: u8 = 3;
/// Exit status: the run could not be made (target unreachable, ...).
pub const EXIT_ERROR: u8 = 4;
/// Exit status: bad options (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    version,
    about = "Load harness for a flash sale: open-model spikes with honest latency, and an audit of the sale afterwards."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Drive a sale with an open-model profile, then audit it.
    Run(Box<RunArgs>),
    /// Closed-loop maximum throughput of one URL (C connections, fixed time).
    Throughput(ThroughputArgs),
    /// A bare hyper server answering a fixed JSON body, to compare against.
    CalibrateServer(CalibrateArgs),
    /// Re-check assertions on a JSON report and render it as HTML.
    Report(ReportArgs),
    /// Two JSON reports side by side: key figures with the ratio b/a, and
    /// overlaid plots with --html.
    Compare(CompareArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Base URL of the gateway's public API (http:// or https://).
    #[arg(long, env = "LOADTEST_TARGET", default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Public API of another gateway of the same sale (repeatable): buyers
    /// are spread over the targets in turn; the audit reads --target.
    #[arg(long)]
    also_target: Vec<String>,
    /// PEM file of a CA to trust for https:// targets and admin API, besides
    /// the system's (SSL_CERT_FILE / SSL_CERT_DIR when set).
    #[arg(long, env = "LOADTEST_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// The sale to buy from.
    #[arg(long, env = "LOADTEST_SALE", default_value = "demo")]
    sale: String,
    /// at-once:BUYERS[/WINDOW], ramp:RATE/DURATION, constant:RATE/DURATION,
    /// or stages:RATE/DURATION,RATE/DURATION,...
    #[arg(long, env = "LOADTEST_PROFILE")]
    profile: Profile,
    /// Requests in flight at most; each holds one connection. `auto` = the
    /// profile's peak rate × --expected-latency-ms, at least 16, at most
    /// 10000 and what the open-file limit allows (raised to its hard limit).
    #[arg(long, env = "LOADTEST_CONNECTIONS", default_value = "auto", value_parser = run_connections)]
    connections: Connections,
    /// With --connections auto: the latency to size the connections for
    /// (one request holds its connection this long).
    #[arg(long, env = "LOADTEST_EXPECTED_LATENCY_MS", default_value_t = 100, value_parser = value_parser!(u64).range(1..=60_000))]
    expected_latency_ms: u64,
    /// The client's own limit on one request (no answer by then = missing).
    #[arg(long, env = "LOADTEST_TIMEOUT_MS", default_value_t = 10_000, value_parser = value_parser!(u64).range(1..=MAX_TIMEOUT_MS))]
    timeout_ms: u64,
    /// Units each buyer asks for.
    #[arg(long, env = "LOADTEST_QUANTITY", default_value_t = 1, value_parser = value_parser!(u32).range(1..))]
    quantity: u32,
    /// Share of buyers (0..=1) who click twice (same user, same key).
    #[arg(long, env = "LOADTEST_DOUBLE_CLICK", default_value_t = 0.0, value_parser = share)]
    double_click: f64,
    /// Time between the two clicks of a double-click.
    #[arg(long, env = "LOADTEST_DOUBLE_CLICK_GAP_MS", default_value_t = 50)]
    double_click_gap_ms: u64,
    /// Extra attempts after 429, 503 or 504 (bounded, with backoff).
    #[arg(long, env = "LOADTEST_RETRIES", default_value_t = 0)]
    retries: u32,
    /// First retry backoff; doubles per attempt, with jitter.
    #[arg(long, env = "LOADTEST_RETRY_BACKOFF_MS", default_value_t = 100)]
    retry_backoff_ms: u64,
    /// Longest retry backoff.
    #[arg(long, env = "LOADTEST_RETRY_MAX_BACKOFF_MS", default_value_t = 2000)]
    retry_max_backoff_ms: u64,
    /// Send an Idempotency-Key with every buyer's requests (implied by
    /// --double-click and --retries).
    #[arg(long, env = "LOADTEST_IDEMPOTENCY_KEYS")]
    idempotency_keys: bool,
    /// User ids are this prefix and the buyer's number [default: random per run].
    #[arg(long, env = "LOADTEST_USER_PREFIX")]
    user_prefix: Option<String>,
    /// The run is invalid when the p99 schedule lag exceeds this.
    #[arg(long, env = "LOADTEST_MAX_LAG_MS", default_value_t = 50)]
    max_lag_ms: u64,
    /// Exit 0 even when the run is invalid (the report still says so).
    #[arg(long, env = "LOADTEST_ALLOW_INVALID")]
    allow_invalid: bool,
    /// Sign a buyer token per buyer (`sub` = its user id) with this key,
    /// for a gateway with --buyer-auth jwt: an RSA or P-256 EC private key
    /// in PEM (RS256, ES256), or a file holding an HS256 secret.
    #[arg(long, env = "LOADTEST_JWT_KEY")]
    jwt_key: Option<PathBuf>,
    /// The `iss` of the tokens --jwt-key signs.
    #[arg(long, env = "LOADTEST_JWT_ISSUER", requires = "jwt_key")]
    jwt_issuer: Option<String>,
    /// The `aud` of the tokens --jwt-key signs.
    #[arg(long, env = "LOADTEST_JWT_AUDIENCE", requires = "jwt_key")]
    jwt_audience: Option<String>,
    /// Skip reading and auditing the sale (for targets that are not a gateway).
    #[arg(long, env = "LOADTEST_NO_AUDIT")]
    no_audit: bool,
    /// Do not poll the final result of 504 answers for the audit.
    #[arg(long, env = "LOADTEST_NO_RESOLVE")]
    no_resolve: bool,
    /// Draw the progress line even when stderr is not a terminal.
    #[arg(long, env = "LOADTEST_PROGRESS")]
    progress: bool,
    /// Seed for the buyers' random choices [default: from the clock].
    #[arg(long, env = "LOADTEST_SEED")]
    seed: Option<u64>,
    /// Create (or replace) the sale with this stock before the run.
    #[arg(long, env = "LOADTEST_CREATE_SALE")]
    create_sale: Option<u64>,
    /// With --create-sale: a new sale id for every run, --sale and a random
    /// suffix (a sale that sold cannot be replaced), printed in the report.
    #[arg(long, env = "LOADTEST_FRESH_SALE", requires = "create_sale")]
    fresh_sale: bool,
    /// Base URL of the gateway's admin API (for --create-sale and the audit
    /// of its order feed).
    #[arg(
        long,
        env = "LOADTEST_ADMIN_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    admin_url: String,
    /// Bearer token of the admin API: needed by --create-sale; with it the
    /// audit also reads the gateway's order feed of the sale.
    #[arg(long, env = "SECKILL_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// For --create-sale: units one buyer may hold [default: the gateway's].
    #[arg(long, env = "LOADTEST_PER_USER_LIMIT", value_parser = value_parser!(u32).range(1..))]
    per_user_limit: Option<u32>,
    /// For --create-sale: purchase tokens issued per second [default: the
    /// gateway's].
    #[arg(long, env = "LOADTEST_TOKEN_RATE", value_parser = value_parser!(u32).range(1..))]
    token_rate: Option<u32>,
    /// For --create-sale: tokens the sale's bucket holds at most [default:
    /// the gateway's].
    #[arg(long, env = "LOADTEST_TOKEN_CAPACITY", value_parser = value_parser!(u32).range(1..))]
    token_capacity: Option<u32>,
    /// For --create-sale: admitted requests the sale's queue holds at most
    /// [default: the gateway's].
    #[arg(long, env = "LOADTEST_QUEUE_CAPACITY", value_parser = value_parser!(u32).range(1..))]
    queue_capacity: Option<u32>,
    /// For --create-sale: `immediate` or `fifo` [default: the gateway's].
    #[arg(long, env = "LOADTEST_ADMISSION")]
    admission: Option<String>,
    /// For --create-sale (`fifo`): the longest estimated wait in line.
    #[arg(long, env = "LOADTEST_MAX_WAIT_MS", value_parser = value_parser!(u32).range(1..))]
    max_wait_ms: Option<u32>,
    /// For --create-sale (`fifo`): the most buyers in line.
    #[arg(long, env = "LOADTEST_WAIT_CAPACITY", value_parser = value_parser!(u32).range(1..))]
    wait_capacity: Option<u32>,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args, Debug)]
struct OutputArgs {
    /// Write the JSON report here (`-` = stdout).
    #[arg(long, env = "LOADTEST_JSON")]
    json: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long, env = "LOADTEST_HTML")]
    html: Option<PathBuf>,
    /// A threshold that sets the exit code, e.g. 'p99(success)<50ms',
    /// 'oversell==0', 'count(success)==1000'. Repeatable.
    #[arg(long = "assert")]
    assertions: Vec<String>,
    /// Print no summary.
    #[arg(long, env = "LOADTEST_QUIET", short)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct ThroughputArgs {
    /// Full URL to request.
    #[arg(long, env = "LOADTEST_URL")]
    url: String,
    /// HTTP method of every request.
    #[arg(long, env = "LOADTEST_METHOD", default_value = "GET")]
    method: Method,
    // Not spelt `{n}` here: clap prints that token as a line break.
    /// Request body (sent as JSON); the letter n between braces becomes a
    /// counter unique to the request.
    #[arg(long, env = "LOADTEST_BODY")]
    body: Option<String>,
    /// Extra header `Name: value`. Repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Sign a buyer token per subject (`sub` = bench-0, bench-1, ...) with this key,
    /// for a gateway with --buyer-auth jwt: an RSA or P-256 EC private key
    /// in PEM (RS256, ES256), or a file holding an HS256 secret.
    #[arg(long, env = "LOADTEST_JWT_KEY")]
    jwt_key: Option<PathBuf>,
    /// The `iss` of the tokens --jwt-key signs.
    #[arg(long, env = "LOADTEST_JWT_ISSUER", requires = "jwt_key")]
    jwt_issuer: Option<String>,
    /// The `aud` of the tokens --jwt-key signs.
    #[arg(long, env = "LOADTEST_JWT_AUDIENCE", requires = "jwt_key")]
    jwt_audience: Option<String>,
    /// Subjects --jwt-key signs tokens for; request k sends token k mod N
    /// (N at least the requests made: every token is new to the gateway).
    #[arg(long, env = "LOADTEST_JWT_SUBJECTS", default_value_t = 1, requires = "jwt_key", value_parser = value_parser!(u64).range(1..=10_000_000))]
    jwt_subjects: u64,
    /// Connections, each sending its next request when the last is answered.
    #[arg(long, env = "LOADTEST_CONNECTIONS", default_value_t = 64, value_parser = connections())]
    connections: usize,
    /// How long to measure, after the warm-up.
    #[arg(long, env = "LOADTEST_DURATION_MS", default_value_t = 3000, value_parser = value_parser!(u64).range(1..))]
    duration_ms: u64,
    /// Time at full load before measuring starts.
    #[arg(long, env = "LOADTEST_WARMUP_MS", default_value_t = 500)]
    warmup_ms: u64,
    /// Write the result as JSON here (`-` = stdout).
    #[arg(long, env = "LOADTEST_JSON")]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct CalibrateArgs {
    /// Address to listen on (port 0 = any free port; the address is printed).
    #[arg(long, env = "LOADTEST_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// A JSON report written by `loadtest run --json`.
    input: PathBuf,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// The first report (a), written by `loadtest run --json`.
    a: PathBuf,
    /// The second report (b); ratios are b/a.
    b: PathBuf,
    /// Write a page with both runs' plots overlaid here.
    #[arg(long, env = "LOADTEST_HTML")]
    html: Option<PathBuf>,
}

/// Latencies are kept up to an hour; a longer client timeout would only
/// clamp them.
const MAX_TIMEOUT_MS: u64 = HIGHEST_US / 1_000;

/// Connections to one target: from one client address there are no more
/// ports than this.
fn connections() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..=65_535)
}

/// `--connections` of a run: a number, or sized from the profile.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Connections {
    Auto,
    Fixed(usize),
}

fn run_connections(s: &str) -> Result<Connections, String> {
    if s == "auto" {
        return Ok(Connections::Auto);
    }
    match s.parse::<usize>() {
        Ok(n) if (1..=65_535).contains(&n) => Ok(Connections::Fixed(n)),
        _ => Err(format!(
            "'{s}' is neither auto nor a number within 1..=65535"
        )),
    }
}

/// A share within 0..=1. Hand-written because clap's ranged parsers are
/// for integers only.
fn share(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a share within 0..=1"))
    }
}

/// Runs the command line and returns the exit status.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(EXIT_ERROR, &format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run(*args).await,
            Command::Throughput(args) => throughput(args).await,
            Command::CalibrateServer(args) => calibrate(args).await,
            Command::Report(args) => report(args),
            Command::Compare(args) => compare(args),
        }
    })
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("loadtest: {message}");
    ExitCode::from(code)
}

fn parse_assertions(list: &[String]) -> Result<Vec<Assertion>, ExitCode> {
    list.iter()
        .map(|s| s.parse::<Assertion>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(EXIT_CONFIG, &e.to_string()))
}

async fn run(mut a: RunArgs) -> ExitCode {
    if a.fresh_sale {
        a.sale = format!("{}-{:06x}", a.sale, crate::run::clock_seed() & 0xff_ffff);
    }
    let assertions = match parse_assertions(&a.output.assertions) {
        Ok(x) => x,
        Err(code) => return code,
    };
    for t in std::iter::once(&a.target).chain(&a.also_target) {
        if let Err(e) = http::base_url(t) {
            return fail(EXIT_CONFIG, &format!("--target: {e}"));
        }
    }
    let admin = match &a.admin_token {
        Some(token) => match http::base_url(&a.admin_url) {
            Ok(url) => Some(AdminApi {
                url,
                token: token.clone(),
            }),
            Err(e) => return fail(EXIT_CONFIG, &format!("--admin-url: {e}")),
        },
        None => None,
    };
    let urls = std::iter::once(&a.target).chain(&a.also_target);
    let admin_url = admin.iter().map(|a| a.url.as_str());
    let tls = match Tls::for_urls(
        urls.map(String::as_str).chain(admin_url),
        a.ca_file.as_deref(),
    ) {
        Ok(tls) => tls,
        Err(e) => return fail(EXIT_CONFIG, &format!("{e:#}")),
    };
    if let Some(stock) = a.create_sale {
        let Some(admin) = &admin else {
            return fail(
                EXIT_CONFIG,
                "--create-sale needs --admin-token (or SECKILL_ADMIN_TOKEN)",
            );
        };
        let setup = SaleSetup {
            stock,
            per_user_limit: a.per_user_limit,
            token_rate: a.token_rate,
            token_capacity: a.token_capacity,
            queue_capacity: a.queue_capacity,
            admission: a.admission.clone(),
            max_wait_ms: a.max_wait_ms,
            wait_capacity: a.wait_capacity,
        };
        let client = http::client(4, &tls);
        if let Err(e) = http::put_sale(&client, &admin.url, &admin.token, &a.sale, &setup).await {
            return fail(EXIT_ERROR, &format!("cannot create the sale: {e:#}"));
        }
    }

    let mut cfg = RunConfig::new(a.target.clone(), a.sale.clone(), a.profile.clone());
    cfg.also_targets = a.also_target.clone();
    let fd_cap = crate::connections::raise_fd_limit();
    match a.connections {
        Connections::Auto => {
            let expected = Duration::from_millis(a.expected_latency_ms);
            let (n, why) = crate::connections::auto(&cfg.profile, expected, fd_cap);
            cfg.connections = n;
            cfg.connections_sizing = Some(why);
        }
        Connections::Fixed(n) => {
            if n > fd_cap {
                return fail(
                    EXIT_CONFIG,
                    &format!(
                        "--connections {n}: the open-file limit leaves room for {fd_cap} \
                         (raise ulimit -n, or give fewer)"
                    ),
                );
            }
            cfg.connections = n;
            cfg.connections_sizing = None;
        }
    }
    cfg.timeout = Duration::from_millis(a.timeout_ms);
    cfg.quantity = a.quantity;
    cfg.double_click = a.double_click;
    cfg.double_click_gap = Duration::from_millis(a.double_click_gap_ms);
    cfg.retries = a.retries;
    cfg.retry_backoff = Duration::from_millis(a.retry_backoff_ms);
    cfg.retry_max_backoff = Duration::from_millis(a.retry_max_backoff_ms);
    cfg.idempotency_keys = a.idempotency_keys;
    if let Some(p) = a.user_prefix {
        cfg.user_prefix = p;
    }
    cfg.max_lag = Duration::from_millis(a.max_lag_ms);
    cfg.audit = !a.no_audit;
    cfg.resolve_timeouts = !a.no_resolve;
    cfg.admin = admin;
    cfg.tls = Some(tls);
    cfg.progress = a.progress || std::io::IsTerminal::is_terminal(&std::io::stderr());
    if let Some(seed) = a.seed {
        cfg.seed = seed;
    }
    if let Some(path) = &a.jwt_key {
        match sign_tokens(
            path,
            a.jwt_issuer,
            a.jwt_audience,
            &cfg.user_prefix,
            cfg.profile.arrivals_total(),
        )
        .await
        {
            Ok(tokens) => cfg.buyer_tokens = Some(Arc::new(tokens)),
            Err(e) => return fail(EXIT_CONFIG, &format!("--jwt-key: {e:#}")),
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn({
        let stop = stop.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("\nloadtest: stopping the schedule; waiting for answers in flight");
                stop.store(true, Ordering::Relaxed);
            }
        }
    });
    let report = match crate::run::run(&cfg, stop).await {
        Ok(r) => r,
        Err(e) => return fail(EXIT_ERROR, &format!("{e:#}")),
    };
    finish(report, Some(&assertions), &a.output, a.allow_invalid)
}

/// Checks assertions, writes the outputs, prints the summary and picks the
/// exit status.
fn finish(
    mut report: Report,
    assertions: Option<&[Assertion]>,
    out: &OutputArgs,
    allow_invalid: bool,
) -> ExitCode {
    if let Some(list) = assertions {
        report.assertions = list.iter().map(|a| a.check(&report)).collect();
    }
    if let Some(path) = &out.json {
        let json = serde_json::to_string_pretty(&report).expect("reports serialize");
        if let Err(e) = write_out(path, json.as_bytes()) {
            return fail(EXIT_ERROR, &format!("{e:#}"));
        }
    }
    if let Some(path) = &out.html {
        if let Err(e) = write_out(path, crate::html::render(&report).as_bytes()) {
            return fail(EXIT_ERROR, &format!("{e:#}"));
        }
    }
    if !out.quiet {
        // The summary goes to stderr when stdout carries the JSON.
        let summary = report.summary();
        if out.json.as_deref() == Some(Path::new("-")) {
            eprint!("{summary}");
        } else {
            print!("{summary}");
        }
    }
    ExitCode::from(exit_status(&report, allow_invalid))
}

/// The exit status a report calls for: the audit first (an oversell is one
/// however the run went), then validity (the figures of a run that fell
/// behind its schedule do not measure the target, so its assertions say
/// nothing), then the assertions.
pub fn exit_status(report: &Report, allow_invalid: bool) -> u8 {
    if report.audit.as_ref().is_some_and(|a| !a.passed) {
        EXIT_AUDIT
    } else if !report.valid && !allow_invalid {
        EXIT_INVALID
    } else if report.assertions.iter().any(|a| !a.passed) {
        EXIT_ASSERT
    } else {
        0
    }
}

fn write_out(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if path == Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)?;
        out.write_all(b"\n")?;
        return Ok(());
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

async fn throughput(a: ThroughputArgs) -> ExitCode {
    let mut headers = Vec::new();
    for h in &a.headers {
        match h.split_once(':') {
            Some((k, v)) => headers.push((k.trim().to_string(), v.trim().to_string())),
            None => return fail(EXIT_CONFIG, &format!("--header '{h}' is not 'Name: value'")),
        }
    }
    let bearer = match &a.jwt_key {
        Some(path) => {
            match sign_tokens(path, a.jwt_issuer, a.jwt_audience, "bench-", a.jwt_subjects).await {
                Ok(tokens) => tokens,
                Err(e) => return fail(EXIT_CONFIG, &format!("--jwt-key: {e:#}")),
            }
        }
        None => Vec::new(),
    };
    let cfg = ThroughputConfig {
        bearer,
        url: a.url,
        method: a.method,
        body: a.body,
        headers,
        connections: a.connections,
        duration: Duration::from_millis(a.duration_ms),
        warmup: Duration::from_millis(a.warmup_ms),
    };
    match crate::throughput::run(cfg).await {
        Ok(r) => {
            if let Some(path) = &a.json {
                let json = serde_json::to_string(&r).expect("results serialize");
                if let Err(e) = write_out(path, json.as_bytes()) {
                    return fail(EXIT_ERROR, &format!("{e:#}"));
                }
            }
            if a.json.as_deref() != Some(Path::new("-")) {
                println!("{}", r.line());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(EXIT_ERROR, &format!("{e:#}")),
    }
}

/// Signs tokens for `prefix` + 0..count off the runtime's threads.
async fn sign_tokens(
    path: &Path,
    issuer: Option<String>,
    audience: Option<String>,
    prefix: &str,
    count: u64,
) -> anyhow::Result<Vec<String>> {
    let key = crate::jwt::SigningKey::from_file(path, issuer, audience)?;
    let prefix = prefix.to_string();
    tokio::task::spawn_blocking(move || key.sign_all(&prefix, count)).await?
}

async fn calibrate(a: CalibrateArgs) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(a.listen).await {
        Ok(l) => l,
        Err(e) => return fail(EXIT_CONFIG, &format!("cannot listen on {}: {e}", a.listen)),
    };
    let addr = listener.local_addr().map_or(a.listen, |a| a);
    println!("calibration server listening on {addr}");
    let _ = std::io::stdout().flush();
    crate::calibrate::serve(listener, shutdown_signal()).await;
    ExitCode::SUCCESS
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn report(a: ReportArgs) -> ExitCode {
    let assertions = match parse_assertions(&a.output.assertions) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let text = match std::fs::read(&a.input) {
        Ok(t) => t,
        Err(e) => {
            return fail(
                EXIT_ERROR,
                &format!("cannot read {}: {e}", a.input.display()),
            )
        }
    };
    let report: Report = match serde_json::from_slice(&text) {
        Ok(r) => r,
        Err(e) => {
            return fail(
                EXIT_ERROR,
                &format!("{} is not a report: {e}", a.input.display()),
            )
        }
    };
    if report.version != REPORT_VERSION {
        return fail(
            EXIT_ERROR,
            &format!(
                "{} is report version {}; this loadtest reads version {}",
                a.input.display(),
                report.version,
                REPORT_VERSION
            ),
        );
    }
    // Assertions given here replace the stored ones; none given keeps them.
    let list = (!assertions.is_empty()).then_some(assertions.as_slice());
    finish(report, list, &a.output, true)
}

fn compare(a: CompareArgs) -> ExitCode {
    let (ra, rb) = match (crate::compare::read(&a.a), crate::compare::read(&a.b)) {
        (Ok(ra), Ok(rb)) => (ra, rb),
        (Err(e), _) | (_, Err(e)) => return fail(EXIT_ERROR, &format!("{e:#}")),
    };
    let (na, nb) = (a.a.display().to_string(), a.b.display().to_string());
    if let Some(path) = &a.html {
        let page = crate::html::compare::render(&ra, &rb, &na, &nb);
        if let Err(e) = write_out(path, page.as_bytes()) {
            return fail(EXIT_ERROR, &format!("{e:#}"));
        }
    }
    print!("{}", crate::compare::table(&ra, &rb, &na, &nb));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;

    #[test]
    fn every_flag_says_what_it_is_for() {
        Cli::command().debug_assert();
        let cmd = Cli::command();
        for sub in cmd.get_subcommands() {
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(
                    arg.get_help().is_some(),
                    "{} {id} has no help",
                    sub.get_name()
                );
                // Repeatable ones (--assert, --header) and positional
                // ones (report's input) are on the command line only.
                let repeatable = matches!(arg.get_action(), clap::ArgAction::Append);
                assert!(
                    repeatable || arg.is_positional() || arg.get_env().is_some(),
                    "{} {id} has no environment variable",
                    sub.get_name()
                );
            }
        }
    }

    #[test]
    fn option_bounds_are_checked_while_parsing() {
        let parse = |args: &[&str]| {
            let run = ["loadtest", "run", "--profile", "at-once:1"];
            Cli::try_parse_from(run.iter().chain(args))
        };
        assert!(parse(&[]).is_ok());
        assert!(parse(&["--double-click", "0.25", "--connections", "1"]).is_ok());
        assert!(parse(&["--connections", "auto"]).is_ok());
        for bad in [
            ["--connections", "0"],
            ["--connections", "70000"],
            ["--connections", "many"],
            ["--expected-latency-ms", "0"],
            ["--timeout-ms", "3600001"],
            ["--timeout-ms", "0"],
            ["--quantity", "0"],
            ["--double-click", "1.5"],
            ["--double-click", "often"],
            ["--per-user-limit", "0"],
            ["--token-rate", "0"],
        ] {
            let e = parse(&bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{bad:?}: {e}");
        }
        let throughput = |args: &[&str]| {
            let base = ["loadtest", "throughput", "--url", "http://127.0.0.1:1/"];
            Cli::try_parse_from(base.iter().chain(args))
        };
        assert!(throughput(&[]).is_ok());
        for bad in [["--connections", "0"], ["--duration-ms", "0"]] {
            let e = throughput(&bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ValueValidation, "{bad:?}: {e}");
        }
    }
}
