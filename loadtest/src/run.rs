//! An open-model run against a gateway's purchase endpoint.
//!
//! A dedicated generator thread walks the profile's arrival times and
//! hands each buyer to the runtime at its intended time, whatever the
//! target is doing: a slow gateway makes answers late, never arrivals.
//! Latency is measured from the intended time (corrected) and from the
//! actual send (raw); the generator's own lag is measured too, and a run
//! whose generator fell behind is marked invalid.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Request, Uri};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, Semaphore};
use tokio_util::task::TaskTracker;

use crate::audit::{self, resolve_timeouts, AuditInput};
use crate::feed::{self, FeedTally};
use crate::http::{self, AdminApi, HttpClient, SaleView, Tls};
use crate::model::{Audit, LatencyStats, Outcome, Report, Schedule, Settings, REPORT_VERSION};
use crate::outcome::{classify, AnswerBody};
use crate::profile::Profile;
use crate::progress::Progress;
use crate::record::{self, bucket_for, histogram, Answer, Recorder};
use crate::summary::fmt_us;

/// How a run is made.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Base URL of the gateway's public API.
    pub target: String,
    /// Other gateways of the same sale: buyers go to the targets in turn
    /// (buyer `n` to target `n mod count`).
    pub also_targets: Vec<String>,
    pub sale_id: String,
    pub profile: Profile,
    /// Requests in flight at most (each holds one connection).
    pub connections: usize,
    /// How `connections` was chosen, when it was sized automatically.
    pub connections_sizing: Option<String>,
    /// The client's own limit on one request; past it the request counts
    /// as unanswered.
    pub timeout: Duration,
    pub quantity: u32,
    /// Share of buyers (0..=1) who click twice: same user, same key.
    pub double_click: f64,
    pub double_click_gap: Duration,
    /// Extra attempts after 429, 503 or 504, with exponential backoff.
    pub retries: u32,
    pub retry_backoff: Duration,
    pub retry_max_backoff: Duration,
    /// Send an `Idempotency-Key` with every buyer's requests (implied by
    /// double-clicks and retries).
    pub idempotency_keys: bool,
    /// User ids are this prefix and the buyer's number.
    pub user_prefix: String,
    /// The run is invalid when the p99 schedule lag exceeds this.
    pub max_lag: Duration,
    /// Read the sale before and after, and audit it.
    pub audit: bool,
    /// Poll the final result of each 504 for the audit.
    pub resolve_timeouts: bool,
    /// The gateway's admin API, to audit its order feed of the sale (not
    /// read without it).
    pub admin: Option<AdminApi>,
    /// Draw a progress line on stderr.
    pub progress: bool,
    /// Seed of the buyers' random choices (double-clicks, jitter).
    pub seed: u64,
    /// `Authorization` header values by buyer number, for a gateway that
    /// verifies its buyers (see [`crate::jwt`]).
    pub buyer_tokens: Option<Arc<Vec<String>>>,
    /// What https:// targets are checked against; `None` = the system's
    /// CAs when a target (or the admin API) is https://.
    pub tls: Option<Tls>,
}

impl RunConfig {
    /// Defaults for a run of `profile` against `sale_id` at `target`.
    pub fn new(target: impl Into<String>, sale_id: impl Into<String>, profile: Profile) -> Self {
        let (connections, sizing) = crate::connections::auto(
            &profile,
            crate::connections::DEFAULT_EXPECTED_LATENCY,
            crate::connections::fd_cap(),
        );
        RunConfig {
            target: target.into(),
            also_targets: Vec::new(),
            sale_id: sale_id.into(),
            profile,
            connections,
            connections_sizing: Some(sizing),
            timeout: Duration::from_secs(10),
            quantity: 1,
            double_click: 0.0,
            double_click_gap: Duration::from_millis(50),
            retries: 0,
            retry_backoff: Duration::from_millis(100),
            retry_max_backoff: Duration::from_secs(2),
            idempotency_keys: false,
            user_prefix: format!("u{:06x}-", per_run_rng().random_range(0..1u32 << 24)),
            max_lag: Duration::from_millis(50),
            audit: true,
            resolve_timeouts: true,
            admin: None,
            progress: false,
            seed: clock_seed(),
            buyer_tokens: None,
            tls: None,
        }
    }

    fn keys(&self) -> bool {
        self.idempotency_keys || self.double_click > 0.0 || self.retries > 0
    }
}

/// What every buyer task shares.
struct Ctx {
    client: HttpClient,
    /// The purchase URL of each target.
    uris: Vec<Uri>,
    /// The start of the schedule: arrivals are offsets from it.
    t0: Instant,
    rec: Mutex<Recorder>,
    /// Requests started (the recorder counts them when they end).
    sent: AtomicU64,
    conns: Semaphore,
    tracker: TaskTracker,
    stop: Arc<AtomicBool>,
    user_prefix: String,
    key_prefix: String,
    keys: bool,
    quantity: u32,
    timeout: Duration,
    double_click: f64,
    double_click_gap: Duration,
    retries: u32,
    retry_backoff: Duration,
    retry_max_backoff: Duration,
    seed: u64,
    buyer_tokens: Option<Arc<Vec<String>>>,
}

impl Ctx {
    fn rec(&self) -> MutexGuard<'_, Recorder> {
        self.rec.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Makes the run, waits for every answer, audits, and builds the report
/// (assertions are left to the caller). `stop` ends the schedule early.
pub async fn run(cfg: &RunConfig, stop: Arc<AtomicBool>) -> anyhow::Result<Report> {
    check(cfg)?;
    let target = Target::of(cfg)?;
    let before = read_sale_before(cfg, &target).await?;
    let started_unix_ms = unix_ms_now();
    let ctx = buyers_context(cfg, &target, stop);
    let dispatch_lag = drive_the_schedule(cfg, &ctx).await?;
    let audit = match &before {
        Some(before) => Some(audit_the_sale(cfg, &target, &ctx, before).await?),
        None => None,
    };
    let dispatch_lag = record::stats(&dispatch_lag);
    let report = build_report(
        cfg,
        target.base,
        &ctx.rec(),
        started_unix_ms,
        dispatch_lag,
        audit,
    );
    Ok(report)
}

/// The bounds the library enforces itself (the command line has its own).
fn check(cfg: &RunConfig) -> anyhow::Result<()> {
    anyhow::ensure!(cfg.connections > 0, "connections must be at least 1");
    anyhow::ensure!(
        (0.0..=1.0).contains(&cfg.double_click),
        "the double-click share must be within 0..=1"
    );
    Ok(())
}

/// Where the requests go and the client they go through.
struct Target {
    /// Base URL of the public API.
    base: String,
    /// The sale's purchase endpoint on each target (the first is `base`'s).
    purchases: Vec<Uri>,
    client: HttpClient,
}

impl Target {
    fn of(cfg: &RunConfig) -> anyhow::Result<Target> {
        let base = http::base_url(&cfg.target)?;
        let mut purchases = Vec::new();
        for t in std::iter::once(&cfg.target).chain(&cfg.also_targets) {
            let purchase: Uri = format!(
                "{}/api/v1/sales/{}/purchase",
                http::base_url(t)?,
                cfg.sale_id
            )
            .parse()
            .context("the sale id does not fit in a URL")?;
            purchases.push(purchase);
        }
        let tls = match &cfg.tls {
            Some(tls) => tls.clone(),
            None => {
                let admin = cfg.admin.iter().map(|a| a.url.as_str());
                let targets = std::iter::once(&cfg.target).chain(&cfg.also_targets);
                Tls::for_urls(targets.map(String::as_str).chain(admin), None)?
            }
        };
        Ok(Target {
            base,
            purchases,
            client: http::client(cfg.connections, &tls),
        })
    }
}

/// The sale as it stands before the run, when it is to be audited.
async fn read_sale_before(cfg: &RunConfig, target: &Target) -> anyhow::Result<Option<SaleView>> {
    if !cfg.audit {
        return Ok(None);
    }
    let sale = http::get_sale(&target.client, &target.base, &cfg.sale_id)
        .await
        .context("reading the sale before the run")?;
    Ok(Some(sale))
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What the buyers share, with the schedule starting shortly: a short lead
/// lets the generator thread start before the first arrival.
fn buyers_context(cfg: &RunConfig, target: &Target, stop: Arc<AtomicBool>) -> Arc<Ctx> {
    let t0 = Instant::now() + Duration::from_millis(20);
    let bucket = bucket_for(cfg.profile.duration() + cfg.timeout.min(Duration::from_secs(1)));
    Arc::new(Ctx {
        client: target.client.clone(),
        uris: target.purchases.clone(),
        t0,
        rec: Mutex::new(Recorder::new(t0, bucket)),
        sent: AtomicU64::new(0),
        conns: Semaphore::new(cfg.connections),
        tracker: TaskTracker::new(),
        stop,
        user_prefix: cfg.user_prefix.clone(),
        // Not from the seed: a rerun with the same seed and user prefix
        // must not replay the answers of the earlier run's keys.
        key_prefix: format!("k{:08x}-", per_run_rng().random::<u32>()),
        keys: cfg.keys(),
        quantity: cfg.quantity,
        timeout: cfg.timeout,
        double_click: cfg.double_click,
        double_click_gap: cfg.double_click_gap,
        retries: cfg.retries,
        retry_backoff: cfg.retry_backoff,
        retry_max_backoff: cfg.retry_max_backoff,
        seed: cfg.seed,
        buyer_tokens: cfg.buyer_tokens.clone(),
    })
}

/// Runs the generator thread over the profile, then waits until every
/// buyer it started is done (and the progress line has drawn its last).
/// Returns the generator's dispatch lag.
async fn drive_the_schedule(
    cfg: &RunConfig,
    ctx: &Arc<Ctx>,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let (total, planned) = (cfg.profile.arrivals_total(), cfg.profile.duration());
    let progress = cfg
        .progress
        .then(|| Progress::start(ctx.t0, total, planned, ctx_counts(ctx.clone())));
    let (lag_tx, lag_rx) = oneshot::channel();
    let generator = {
        let (ctx, profile, handle) = (ctx.clone(), cfg.profile.clone(), Handle::current());
        std::thread::Builder::new()
            .name("loadtest-generator".into())
            .spawn(move || {
                let lag = generate(&profile, &ctx, &handle);
                let _ = lag_tx.send(lag);
            })
            .context("starting the generator thread")?
    };
    let dispatch_lag = lag_rx.await.context("the generator thread died")?;
    let _ = generator.join();
    ctx.tracker.close();
    ctx.tracker.wait().await;
    if let Some(p) = progress {
        p.finish().await;
    }
    Ok(dispatch_lag)
}

/// Resolves the 504s, reads the sale again and its order feed, and audits
/// the recorder's findings against them.
async fn audit_the_sale(
    cfg: &RunConfig,
    target: &Target,
    ctx: &Ctx,
    before: &SaleView,
) -> anyhow::Result<Audit> {
    let (timeouts, mut orders) = {
        let mut r = ctx.rec();
        (
            std::mem::take(&mut r.timeouts),
            std::mem::take(&mut r.orders),
        )
    };
    let resolved = if cfg.resolve_timeouts && !timeouts.is_empty() {
        let (client, base) = (&target.client, &target.base);
        resolve_timeouts(client, base, &timeouts, cfg.quantity, &mut orders).await
    } else {
        Default::default()
    };
    let after: SaleView = http::get_sale(&target.client, &target.base, &cfg.sale_id)
        .await
        .context("reading the sale after the run")?;
    let feed = read_the_feed(cfg, target, &after).await;
    let r = ctx.rec();
    Ok(audit::compute(AuditInput {
        before,
        after: &after,
        orders: &orders,
        success_answers: r.success_answers,
        timeouts: r.counts()[Outcome::Timeout.index()],
        timeouts_resolved: resolved,
        missing: r.counts()[Outcome::NoAnswer.index()],
        feed,
    }))
}

/// The sale's order feed, when there is an admin API to read it from.
async fn read_the_feed(
    cfg: &RunConfig,
    target: &Target,
    after: &SaleView,
) -> Option<Result<FeedTally, String>> {
    let admin = cfg.admin.as_ref()?;
    // Every order of a full sale, and a margin past it: a feed that goes
    // on beyond that has failed already.
    let bound = after.stock.saturating_mul(2).saturating_add(1_000);
    Some(feed::read(&target.client, admin, &cfg.sale_id, bound).await)
}

/// Why the run is invalid, if it is: the generator or the client fell
/// behind the schedule by more than `max_lag`.
fn invalid_reason(
    dispatch: &LatencyStats,
    start: &LatencyStats,
    max_lag: Duration,
) -> Option<String> {
    let max_lag_us = max_lag.as_micros() as u64;
    if dispatch.p99_us > max_lag_us {
        Some(format!(
            "the generator fell behind: dispatch lag p99 {} over --max-lag {}",
            fmt_us(dispatch.p99_us),
            fmt_us(max_lag_us)
        ))
    } else if start.p99_us > max_lag_us {
        Some(format!(
            "the client could not keep up: start lag p99 {} over --max-lag {}",
            fmt_us(start.p99_us),
            fmt_us(max_lag_us)
        ))
    } else {
        None
    }
}

/// The options of the run, as the report keeps them.
fn settings(cfg: &RunConfig) -> Settings {
    Settings {
        connections: cfg.connections,
        connections_sizing: cfg.connections_sizing.clone(),
        timeout_ms: cfg.timeout.as_millis() as u64,
        quantity: cfg.quantity,
        double_click_share: cfg.double_click,
        double_click_gap_ms: cfg.double_click_gap.as_millis() as u64,
        retries: cfg.retries,
        retry_backoff_ms: cfg.retry_backoff.as_millis() as u64,
        retry_max_backoff_ms: cfg.retry_max_backoff.as_millis() as u64,
        idempotency_keys: cfg.keys(),
        user_prefix: cfg.user_prefix.clone(),
        max_lag_ms: cfg.max_lag.as_millis() as u64,
    }
}

/// The report from the recorder's measurements and the audit.
fn build_report(
    cfg: &RunConfig,
    target: String,
    r: &Recorder,
    started_unix_ms: u64,
    dispatch_lag: LatencyStats,
    audit: Option<Audit>,
) -> Report {
    let start_lag = r.start_lag();
    let invalid_reason = invalid_reason(&dispatch_lag, &start_lag, cfg.max_lag);
    let (total, planned) = (cfg.profile.arrivals_total(), cfg.profile.duration());
    let duration = r.last_answer().max(Duration::from_millis(1));
    let sold_out_now = audit.as_ref().is_some_and(|a| a.remaining_after == 0);
    // The units on sale when the run began; each buyer asks for `quantity`.
    let fairness = audit
        .as_ref()
        .map(|a| r.fairness(a.stock.saturating_sub(a.sold_before), cfg.quantity));
    let mut report = Report {
        version: REPORT_VERSION,
        generator: format!("loadtest {}", env!("CARGO_PKG_VERSION")),
        started_unix_ms,
        target,
        sale_id: cfg.sale_id.clone(),
        profile: cfg.profile.to_string(),
        settings: settings(cfg),
        buyers_planned: total,
        requests_sent: r.sent,
        answered: r.answered,
        duration_s: round6(duration.as_secs_f64()),
        throughput_rps: round6(r.answered as f64 / duration.as_secs_f64()),
        offered_rps: round6(total as f64 / planned.max(Duration::from_millis(1)).as_secs_f64()),
        schedule: Schedule {
            dispatch_lag,
            start_lag,
            connection_wait: r.connection_wait(),
        },
        valid: invalid_reason.is_none(),
        invalid_reason,
        outcomes: r.outcome_stats(),
        all: r.all_stats(),
        buyers: r.buyers(),
        retries: r.retries,
        double_clicks: r.double_clicks,
        errors: r.errors(),
        statuses: r.statuses.clone(),
        address_limited: r.address_limited,
        warnings: Vec::new(),
        success_orders: r.distinct_orders,
        sell_out: r.sell_out(sold_out_now),
        timeline: r.timeline(),
        audit,
        fairness,
        assertions: Vec::new(),
    };
    report.warnings = crate::connections::advice(&report);
    report
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

/// The progress line's view of the recorder.
fn ctx_counts(ctx: Arc<Ctx>) -> impl Fn() -> (u64, u64, [u64; Outcome::COUNT]) + Send + 'static {
    move || {
        let sent = ctx.sent.load(Ordering::Relaxed);
        let r = ctx.rec();
        (sent, r.answered, r.counts())
    }
}

/// The generator: sleeps until each arrival is due and hands the buyer to
/// the runtime. Arrivals already due go out at once, so a late wake-up
/// costs one sleep's overshoot, not a growing backlog. Returns the
/// dispatch lag.
fn generate(profile: &Profile, ctx: &Arc<Ctx>, handle: &Handle) -> hdrhistogram::Histogram<u64> {
    let mut lag = histogram();
    for (n, offset) in profile.arrivals().enumerate() {
        let intended = ctx.t0 + offset;
        loop {
            if ctx.stop.load(Ordering::Relaxed) {
                return lag;
            }
            let now = Instant::now();
            if now >= intended {
                break;
            }
            // Short naps while waiting long, so a stop is seen quickly.
            std::thread::sleep((intended - now).min(Duration::from_millis(100)));
        }
        record::record(&mut lag, intended.elapsed());
        ctx.tracker
            .spawn_on(buyer(ctx.clone(), n as u64, intended), handle);
    }
    lag
}

/// One virtual buyer: a first click, perhaps a second one, and retries.
/// The buyer's final outcome is the better of its clicks' (a success on
/// either click makes a successful buyer).
async fn buyer(ctx: Arc<Ctx>, n: u64, intended: Instant) {
    let key = ctx.keys.then(|| format!("{}{n}", ctx.key_prefix));
    let key = key.as_deref();
    let mut rng = buyer_rng(ctx.seed, n);
    let outcome = if ctx.double_click > 0.0 && rng.random_bool(ctx.double_click) {
        let (first_jitter, second_jitter) = (rng.random(), rng.random());
        let second = async {
            let at = intended + ctx.double_click_gap;
            tokio::time::sleep_until(at.into()).await;
            ctx.rec().double_clicks += 1;
            attempts(&ctx, n, key, at, second_jitter).await
        };
        let (a, b) = tokio::join!(attempts(&ctx, n, key, intended, first_jitter), second);
        a.min(b)
    } else {
        attempts(&ctx, n, key, intended, rng.random()).await
    };
    ctx.rec().buyer_done(n, intended, outcome);
}

/// Sends until the answer is final or the retries are spent, pausing
/// between tries by [`retry_policy`]. Each retry's latency counts from
/// the end of its pause, its intended send time.
async fn attempts(
    ctx: &Ctx,
    n: u64,
    key: Option<&str>,
    intended: Instant,
    jitter_seed: u64,
) -> Outcome {
    let next_intended = Mutex::new(intended);
    let at = || *next_intended.lock().unwrap_or_else(|e| e.into_inner());
    let attempt = || async {
        let outcome = send(ctx, n, key, at()).await;
        if outcome.retryable() {
            Err(outcome)
        } else {
            Ok(outcome)
        }
    };
    attempt
        .retry(retry_policy(
            ctx.retry_backoff,
            ctx.retry_max_backoff,
            ctx.retries,
            jitter_seed,
        ))
        .when(|_| !ctx.stop.load(Ordering::Relaxed))
        .notify(|_, pause| {
            ctx.rec().retries += 1;
            *next_intended.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now() + pause;
        })
        .await
        .unwrap_or_else(|last| last)
}

/// Exponential backoff with "equal jitter": each pause lies between half
/// and all of `retry_backoff · 2^attempt`, capped at `retry_max_backoff`.
/// backon's jitter adds up to the delay again at random, so the delays
/// start from half the configured ones.
fn retry_policy(
    backoff: Duration,
    max_backoff: Duration,
    retries: u32,
    jitter_seed: u64,
) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(backoff.min(max_backoff) / 2)
        .with_max_delay(max_backoff / 2)
        .with_factor(2.0)
        .with_max_times(retries as usize)
        .with_jitter()
        .with_jitter_seed(jitter_seed)
}

/// One request: waits for a connection slot, sends, reads the answer and
/// records it.
async fn send(ctx: &Ctx, n: u64, key: Option<&str>, intended: Instant) -> Outcome {
    let started = Instant::now();
    ctx.sent.fetch_add(1, Ordering::Relaxed);
    let permit = ctx.conns.acquire().await.expect("never closed");
    let sent = Instant::now();
    let body = format!(
        r#"{{"user_id":"{}{n}","quantity":{}}}"#,
        ctx.user_prefix, ctx.quantity
    );
    let uri = ctx.uris[(n % ctx.uris.len() as u64) as usize].clone();
    let mut req = Request::post(uri).header(CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    if let Some(token) = ctx.buyer_tokens.as_ref().and_then(|t| t.get(n as usize)) {
        req = req.header(AUTHORIZATION, token.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request");
    let answer = tokio::time::timeout(ctx.timeout, async {
        let resp = ctx.client.request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
    })
    .await;
    let done = Instant::now();
    drop(permit);
    let (outcome, body, error, status) = match answer {
        Ok(Ok((status, bytes))) => {
            let c = classify(status, &bytes);
            (c.outcome, c.body, c.error, Some(status.as_u16()))
        }
        Ok(Err(e)) => (
            Outcome::NoAnswer,
            AnswerBody::default(),
            Some(describe(&*e)),
            None,
        ),
        Err(_) => (
            Outcome::NoAnswer,
            AnswerBody::default(),
            Some("no answer within the client timeout".into()),
            None,
        ),
    };
    ctx.rec().answer(Answer {
        outcome,
        intended,
        started,
        sent,
        done,
        user: n,
        quantity: body.quantity.unwrap_or(ctx.quantity),
        request_id: body.request_id.as_deref(),
        order_id: body.order_id.as_deref(),
        error,
        reason: body.reason.as_deref(),
        status,
    });
    outcome
}

/// A short, low-variety description of a transport error: its innermost
/// cause.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = e;
    while let Some(s) = inner.source() {
        inner = s;
    }
    let text = inner.to_string();
    let text: String = text.chars().take(80).collect();
    format!("no answer: {text}")
}

/// The clock's nanoseconds: a seed that differs from run to run.
pub(crate) fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// Random draws that differ from run to run (prefixes of user ids and
/// idempotency keys).
fn per_run_rng() -> SmallRng {
    SmallRng::seed_from_u64(clock_seed())
}

/// Buyer `n`'s own random choices under `seed`: the same seed makes the
/// same choices whatever order the buyers run in. `seed_from_u64` expands
/// its argument through a PCG step, so neighbouring buyers get unrelated
/// streams. (`SmallRng` is not cryptographic, and needs not be: these are
/// load-shaping choices, not secrets.)
fn buyer_rng(seed: u64, n: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed ^ n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;

    #[test]
    fn buyer_choices_are_uniform_enough() {
        let picked = (0..10_000)
            .filter(|&n| buyer_rng(42, n).random_bool(0.1))
            .count();
        assert!((800..1200).contains(&picked), "{picked}");
        assert_eq!(
            buyer_rng(1, 5).random::<u64>(),
            buyer_rng(1, 5).random::<u64>()
        );
    }

    #[test]
    fn retry_pauses_are_exponential_with_equal_jitter() {
        let (backoff, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for seed in 0..50 {
            let pauses: Vec<Duration> = retry_policy(backoff, max, 8, seed).build().collect();
            assert_eq!(pauses.len(), 8);
            for (k, pause) in pauses.iter().enumerate() {
                let full = backoff.saturating_mul(1 << k).min(max);
                // f32 jitter: allow a microsecond of rounding.
                let slack = Duration::from_micros(1);
                assert!(
                    *pause + slack >= full / 2 && *pause <= full + slack,
                    "retry {k}: {pause:?} outside {:?}..={full:?}",
                    full / 2
                );
            }
        }
        // A longest backoff below the first still bounds every pause.
        let short = Duration::from_millis(40);
        assert!(retry_policy(backoff, short, 3, 1)
            .build()
            .all(|p| p <= short));
        assert_eq!(retry_policy(backoff, max, 0, 1).build().count(), 0);
    }

    #[test]
    fn a_run_behind_its_schedule_is_invalid() {
        let lag = |p99_us| LatencyStats {
            p99_us,
            ..Default::default()
        };
        let max = Duration::from_millis(50);
        assert_eq!(invalid_reason(&lag(10_000), &lag(50_000), max), None);
        let why = invalid_reason(&lag(60_000), &lag(0), max).unwrap();
        assert!(why.contains("the generator fell behind"), "{why}");
        let why = invalid_reason(&lag(0), &lag(60_000), max).unwrap();
        assert!(why.contains("could not keep up"), "{why}");
    }

    #[test]
    fn keys_follow_from_double_clicks_and_retries() {
        let p: Profile = "constant:1/1s".parse().unwrap();
        let mut c = RunConfig::new("http://127.0.0.1:1", "s", p);
        assert!(!c.keys());
        c.retries = 2;
        assert!(c.keys());
    }
}
