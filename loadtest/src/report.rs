//! The report of a run: a versioned, serde-friendly record of everything
//! measured and audited, and its plain-text summary.
//!
//! Latencies are whole microseconds so the JSON form reads back exactly.
//! `version` changes only when a field changes meaning or goes away; new
//! optional fields keep version 1.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::assertion::AssertionResult;
use crate::audit::Audit;
use crate::outcome::Outcome;

/// Version of the JSON report layout.
pub const REPORT_VERSION: u32 = 1;

/// Everything about one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub version: u32,
    /// `loadtest <crate version>`.
    pub generator: String,
    /// Wall-clock start of the run, Unix milliseconds.
    pub started_unix_ms: u64,
    /// Base URL of the gateway.
    pub target: String,
    pub sale_id: String,
    /// The load profile, in the syntax of `--profile`.
    pub profile: String,
    pub settings: Settings,
    /// Buyers the profile scheduled (first clicks; double-clicks and
    /// retries come on top).
    pub buyers_planned: u64,
    /// Requests sent, every attempt counted.
    pub requests_sent: u64,
    /// Requests that got an HTTP answer.
    pub answered: u64,
    /// From the first intended send to the last answer, seconds.
    pub duration_s: f64,
    /// Answers per second over `duration_s`.
    pub throughput_rps: f64,
    /// Offered load: planned buyers per second over the profile's length.
    pub offered_rps: f64,
    pub schedule: Schedule,
    /// False when the generator fell behind its schedule: latencies then
    /// understate what a real crowd would have seen.
    pub valid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// Per outcome (only outcomes that occurred).
    pub outcomes: BTreeMap<String, OutcomeStats>,
    /// Corrected latency over all answered requests.
    pub all: LatencyStats,
    /// Final outcome of each buyer (after retries), by outcome.
    pub buyers: BTreeMap<String, u64>,
    /// Extra attempts made after a retryable answer.
    pub retries: u64,
    /// Second clicks sent (same user, same idempotency key).
    pub double_clicks: u64,
    /// Kinds of `error` and `no_answer`, counted.
    pub errors: BTreeMap<String, u64>,
    pub sell_out: SellOut,
    pub timeline: Timeline,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Audit>,
    #[serde(default)]
    pub assertions: Vec<AssertionResult>,
}

/// The options a run was made with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub connections: usize,
    pub timeout_ms: u64,
    pub quantity: u32,
    pub double_click_share: f64,
    pub double_click_gap_ms: u64,
    pub retries: u32,
    pub retry_backoff_ms: u64,
    pub retry_max_backoff_ms: u64,
    pub idempotency_keys: bool,
    pub user_prefix: String,
    pub max_lag_ms: u64,
}

/// How closely the generator kept to its schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Intended arrival → the generator handed the request over.
    pub dispatch_lag: LatencyStats,
    /// Intended arrival → the request's task started running (includes the
    /// dispatch lag; large values mean the client machine is saturated).
    pub start_lag: LatencyStats,
    /// Task start → a connection slot was free (`--connections` all busy).
    /// Part of the corrected latency, as behind any pool of connections.
    #[serde(default)]
    pub connection_wait: LatencyStats,
}

/// Latency percentiles, microseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub p9999_us: u64,
    pub max_us: u64,
}

impl LatencyStats {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencyStats::default();
        }
        LatencyStats {
            count: h.len(),
            min_us: h.min(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
        }
    }

    /// The value at a percentile (0..=100) the report keeps, if it keeps it.
    pub fn percentile_us(&self, p: f64) -> Option<u64> {
        let eq = |x: f64| (p - x).abs() < 1e-9;
        Some(match p {
            _ if eq(50.0) => self.p50_us,
            _ if eq(90.0) => self.p90_us,
            _ if eq(99.0) => self.p99_us,
            _ if eq(99.9) => self.p999_us,
            _ if eq(99.99) => self.p9999_us,
            _ if eq(100.0) => self.max_us,
            _ if eq(0.0) => self.min_us,
            _ => return None,
        })
    }
}

/// One outcome's counts and latencies.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutcomeStats {
    pub count: u64,
    /// From the intended send time (coordinated-omission corrected).
    pub corrected: LatencyStats,
    /// From the moment the request was actually sent.
    pub raw: LatencyStats,
    /// Corrected latency by percentile, for the distribution plot.
    pub distribution: Vec<PercentilePoint>,
    /// Raw latency by percentile.
    pub raw_distribution: Vec<PercentilePoint>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PercentilePoint {
    /// 0..=100.
    pub percentile: f64,
    pub us: u64,
}

/// The percentile curve of a histogram, dense towards the tail:
/// 0, 10, 20, ..., 90, 95, 99, 99.5, 99.9, ... down to 1 in 10⁶, and max.
pub fn distribution(h: &Histogram<u64>) -> Vec<PercentilePoint> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut points = Vec::new();
    let mut push = |q: f64| {
        let us = if q >= 1.0 {
            h.max()
        } else {
            h.value_at_quantile(q)
        };
        points.push(PercentilePoint {
            percentile: (q * 100.0 * 1e6).round() / 1e6,
            us,
        });
    };
    for k in 0..9 {
        push(k as f64 / 10.0);
    }
    // 1 - 10^(-k/10): 90 %, 92 %, 93.7 %, ... evenly spaced on the
    // "nines" axis of the plot.
    for k in 10..=60 {
        let q = 1.0 - 10f64.powf(-(k as f64) / 10.0);
        if (1.0 - q) * (h.len() as f64) < 1.0 {
            break;
        }
        push(q);
    }
    push(1.0);
    points
}

/// When the sale ran out, seen from the client; seconds from the start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SellOut {
    pub first_success_s: Option<f64>,
    pub last_success_s: Option<f64>,
    pub first_sold_out_s: Option<f64>,
    /// The first `sold_out` answer or, without one, the last success when
    /// the sale has nothing left.
    pub time_to_sell_out_s: Option<f64>,
}

/// Answers and latency over time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub bucket_ms: u64,
    pub buckets: Vec<TimelineBucket>,
}

/// One interval of the timeline. Answers are counted when they arrive;
/// latencies and `sent` by the intended send time of their request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TimelineBucket {
    pub t_ms: u64,
    pub sent: u64,
    pub answers: BTreeMap<String, u64>,
    pub p50_us: BTreeMap<String, u64>,
    pub p99_us: BTreeMap<String, u64>,
    pub max_us: BTreeMap<String, u64>,
}

impl Report {
    /// Requests that ended with `outcome`.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes.get(outcome.name()).map_or(0, |s| s.count)
    }

    /// True when the audit (if any) passed, every assertion held and the
    /// run was valid.
    pub fn passed(&self) -> bool {
        self.valid
            && self.audit.as_ref().is_none_or(|a| a.passed)
            && self.assertions.iter().all(|a| a.passed)
    }

    /// The plain-text summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} → {} sale {} profile {}",
            self.generator, self.target, self.sale_id, self.profile
        );
        let _ = writeln!(
            s,
            "buyers {}  requests {} (retries {}, double-clicks {})  answered {}  in {:.2}s",
            self.buyers_planned,
            self.requests_sent,
            self.retries,
            self.double_clicks,
            self.answered,
            self.duration_s
        );
        let _ = writeln!(
            s,
            "offered {:.0} req/s  throughput {:.0} answers/s",
            self.offered_rps, self.throughput_rps
        );
        let lag = &self.schedule;
        let _ = writeln!(
            s,
            "schedule lag: dispatch p99 {} max {}  start p99 {} max {}  → {}",
            fmt_us(lag.dispatch_lag.p99_us),
            fmt_us(lag.dispatch_lag.max_us),
            fmt_us(lag.start_lag.p99_us),
            fmt_us(lag.start_lag.max_us),
            if self.valid {
                "valid".to_string()
            } else {
                format!(
                    "INVALID ({})",
                    self.invalid_reason.as_deref().unwrap_or("fell behind")
                )
            }
        );
        let _ = writeln!(
            s,
            "waiting for one of the {} connections: p99 {} max {}",
            self.settings.connections,
            fmt_us(lag.connection_wait.p99_us),
            fmt_us(lag.connection_wait.max_us)
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "latency from intended send (corrected); raw p99 in the last column"
        );
        let _ = writeln!(
            s,
            "{:<15} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "outcome", "count", "p50", "p90", "p99", "p99.9", "p99.99", "max", "raw p99"
        );
        for o in Outcome::ALL {
            if let Some(st) = self.outcomes.get(o.name()) {
                let c = &st.corrected;
                let _ = writeln!(
                    s,
                    "{:<15} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                    o.name(),
                    st.count,
                    fmt_us(c.p50_us),
                    fmt_us(c.p90_us),
                    fmt_us(c.p99_us),
                    fmt_us(c.p999_us),
                    fmt_us(c.p9999_us),
                    fmt_us(c.max_us),
                    fmt_us(st.raw.p99_us),
                );
            }
        }
        let a = &self.all;
        let _ = writeln!(
            s,
            "{:<15} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "all",
            a.count,
            fmt_us(a.p50_us),
            fmt_us(a.p90_us),
            fmt_us(a.p99_us),
            fmt_us(a.p999_us),
            fmt_us(a.p9999_us),
            fmt_us(a.max_us),
        );
        if !self.errors.is_empty() {
            let kinds: Vec<String> = self
                .errors
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect();
            let _ = writeln!(s, "errors: {}", kinds.join(", "));
        }
        let so = &self.sell_out;
        let _ = writeln!(
            s,
            "\nfirst success {}  last success {}  first sold_out {}  time to sell out {}",
            fmt_s(so.first_success_s),
            fmt_s(so.last_success_s),
            fmt_s(so.first_sold_out_s),
            fmt_s(so.time_to_sell_out_s)
        );
        let buyers: Vec<String> = self
            .buyers
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(s, "buyers by final outcome: {}", buyers.join(", "));
        if let Some(audit) = &self.audit {
            let _ = writeln!(s, "\n{}", audit.summary());
        }
        if !self.assertions.is_empty() {
            let _ = writeln!(s, "\nassertions:");
            for a in &self.assertions {
                let _ = writeln!(
                    s,
                    "  {} {}  (actual {})",
                    if a.passed { "pass" } else { "FAIL" },
                    a.expr,
                    a.actual
                );
            }
        }
        let _ = writeln!(
            s,
            "\nresult: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s
    }
}

/// `1.23ms`, `456µs`, `2.50s`.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

fn fmt_s(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{s:.3}s"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_and_distribution_of_a_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let s = LatencyStats::of(&h);
        assert_eq!(s.count, 10_000);
        assert!((4990..=5010).contains(&s.p50_us));
        assert_eq!(s.percentile_us(50.0), Some(s.p50_us));
        assert_eq!(s.percentile_us(42.0), None);
        let d = distribution(&h);
        assert!(d.windows(2).all(|w| w[0].percentile < w[1].percentile));
        assert!(d.windows(2).all(|w| w[0].us <= w[1].us));
        assert_eq!(d.last().unwrap().percentile, 100.0);
        assert_eq!(LatencyStats::of(&Histogram::new(3).unwrap()).count, 0);
    }

    #[test]
    fn durations_print_in_readable_units() {
        assert_eq!(fmt_us(12), "12µs");
        assert_eq!(fmt_us(1_500), "1.50ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
    }
}
