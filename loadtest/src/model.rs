//! The report's data: what a run measured and what its audit found, as
//! plain serde types. This module is the leaf the others build on: it uses
//! nothing else of the crate, and the text summary (module `summary`), the
//! JSON form (serde) and the HTML page (module `html`) are all rendered
//! from it.
//!
//! Latencies are whole microseconds so the JSON form reads back exactly.
//! `version` changes only when a field changes meaning or goes away; new
//! optional fields keep version 1.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The outcome of one request, as the client saw it. The order ranks
/// them for a buyer with several clicks: the smallest is the best.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// 200 `success`: a unit was reserved.
    Success,
    /// 410 `sold_out`.
    SoldOut,
    /// 429 `rate_limited`: no token, or the per-user edge limit.
    RateLimited,
    /// 403 `limit_exceeded`: the user already holds the per-user limit.
    LimitExceeded,
    /// 403 `rejected`: refused by risk control.
    Rejected,
    /// 503 `overloaded`: queue full or store unreachable.
    Overloaded,
    /// 504 `timeout`: no result before the deadline.
    Timeout,
    /// 202 `pending`: a repeat of an idempotency key still in flight.
    Pending,
    /// An HTTP answer outside the contract (wrong code, unknown status,
    /// unparsable body, 400, 404, 409, 500...).
    Error,
    /// No HTTP answer at all: connection refused or dropped, or the
    /// client's own timeout. Every one of these fails the audit.
    NoAnswer,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Success,
        Outcome::SoldOut,
        Outcome::RateLimited,
        Outcome::LimitExceeded,
        Outcome::Rejected,
        Outcome::Overloaded,
        Outcome::Timeout,
        Outcome::Pending,
        Outcome::Error,
        Outcome::NoAnswer,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The name used in reports and assertions (the API's `status` value
    /// where there is one).
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::SoldOut => "sold_out",
            Outcome::RateLimited => "rate_limited",
            Outcome::LimitExceeded => "limit_exceeded",
            Outcome::Rejected => "rejected",
            Outcome::Overloaded => "overloaded",
            Outcome::Timeout => "timeout",
            Outcome::Pending => "pending",
            Outcome::Error => "error",
            Outcome::NoAnswer => "no_answer",
        }
    }

    pub fn from_name(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.name() == name)
    }

    /// Position in [`Outcome::ALL`], for per-outcome arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Answers a client may retry after a backoff.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Outcome::RateLimited | Outcome::Timeout | Outcome::Overloaded
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Version of the JSON report layout.
pub const REPORT_VERSION: u32 = 1;

/// Everything about one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// HTTP answers by status code (requests without one are `no_answer`).
    #[serde(default)]
    pub statuses: BTreeMap<u16, u64>,
    /// 429 answers with reason `address_limit`: the gateway refused this
    /// client's connections beyond its per-address cap.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub address_limited: u64,
    /// What to change before the next run (see `connections::advice`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Distinct orders among the success answers (a repeat of one order,
    /// as a double-click's second answer, counts once).
    #[serde(default)]
    pub success_orders: u64,
    pub sell_out: SellOut,
    pub timeline: Timeline,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<Audit>,
    /// Whether the buyers who came first won (needs the audit's stock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fairness: Option<Fairness>,
    #[serde(default)]
    pub assertions: Vec<AssertionResult>,
}

/// Did the buyers who came first get the goods: winners against their
/// intended arrival order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Fairness {
    /// The first buyers by intended arrival who could all have won: the
    /// units on sale at the start over the quantity each buys.
    pub first_buyers: u64,
    /// Buyers whose final outcome was a success.
    pub winners: u64,
    /// Winners among the first buyers.
    pub early_winners: u64,
    /// `early_winners / winners` (1 when nobody won).
    pub fairness: f64,
    /// How late the latest winner came: arrival ranks past the first
    /// buyers, and its intended arrival after the last of them, in ms.
    pub inversion_buyers: u64,
    pub inversion_ms: f64,
    /// Final outcomes by arrival rank, in groups of equal size.
    pub by_rank: Vec<RankGroup>,
}

/// Buyers of consecutive arrival ranks and their final outcomes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RankGroup {
    /// Ranks `first..=last` (0 = the first buyer to arrive).
    pub first: u64,
    pub last: u64,
    pub outcomes: BTreeMap<String, u64>,
}

/// The options a run was made with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub connections: usize,
    /// How `--connections auto` chose `connections`; absent when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_sizing: Option<String>,
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
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// The time range of every plot over time is `0..end_ms` (from the
    /// start of the schedule to the end of the last bucket).
    #[serde(default)]
    pub end_ms: u64,
    pub buckets: Vec<TimelineBucket>,
}

impl Timeline {
    /// The common time range, in seconds; reports written before
    /// `end_ms` existed take it from their buckets.
    pub fn range_s(&self) -> (f64, f64) {
        let end = if self.end_ms > 0 {
            self.end_ms
        } else {
            self.buckets.len() as u64 * self.bucket_ms
        };
        (0.0, end as f64 / 1000.0)
    }
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
    /// Requests started and not yet ended at the end of the interval, and
    /// those of them still waiting for a connection.
    #[serde(default)]
    pub in_flight: u64,
    #[serde(default)]
    pub waiting: u64,
    /// The connection wait of requests whose task started in the interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_wait_p99_us: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_wait_max_us: Option<u64>,
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
}

/// The audit's findings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Audit {
    pub sale_id: String,
    pub stock: u64,
    pub per_user_limit: u32,
    /// `sold` of the sale before and after the run.
    pub sold_before: u64,
    pub sold_after: u64,
    pub remaining_after: u64,
    pub state_after: String,
    /// 200 answers, repeats of one order included.
    pub success_answers: u64,
    /// Distinct orders the buyers were told of (answers and resolved 504s).
    pub orders: u64,
    /// Units in those orders.
    pub units: u64,
    /// 504 answers, and what polling their request ids found.
    pub timeouts: u64,
    pub timeouts_resolved: BTreeMap<String, u64>,
    /// Units sold beyond the stock.
    pub oversell: u64,
    /// Users holding more than the per-user limit.
    pub users_over_limit: u64,
    /// Requests that got no HTTP answer.
    pub missing: u64,
    /// Units buyers were told of that the sale does not count.
    pub unrecorded: u64,
    /// Units the sale counts that no buyer of this run was told of (504s
    /// not resolved, or other clients); informational.
    pub unconfirmed: u64,
    /// The gateway's order feed, when it was read (with an admin token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed: Option<FeedAudit>,
    pub checks: Vec<Check>,
    pub passed: bool,
}

/// What the gateway's order feed (`GET /admin/v1/orders`) holds for the
/// sale.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FeedAudit {
    /// Orders of the sale in the feed, repeats included, and their units.
    pub orders: u64,
    pub units: u64,
    /// Entries whose order id the feed had listed already.
    pub duplicate_order_ids: u64,
    /// Users holding more units than the per-user limit, by the feed.
    pub users_over_limit: u64,
    /// Orders told to buyers (200 answers, resolved 504s) the feed lacks,
    /// and the first few of their ids.
    pub told_not_in_feed: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub told_not_in_feed_sample: Vec<String>,
    /// Pages read.
    pub pages: u64,
    /// Reading stopped at its bound on orders, before the feed's end.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// Why the feed could not be read; no other check is made on it then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One audit check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// The result of checking one assertion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AssertionResult {
    pub expr: String,
    /// The measured value as text (or why there is none).
    pub actual: String,
    pub passed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_written_with_the_redis_part_still_reads() {
        // Reports of version 1 written before the order feed replaced the
        // Redis keys: the old part is ignored, the feed is absent.
        let json = r#"{"sale_id":"s","stock":2,"per_user_limit":1,"sold_before":0,
            "sold_after":2,"remaining_after":0,"state_after":"sold_out",
            "success_answers":2,"orders":2,"units":2,"timeouts":0,
            "timeouts_resolved":{},"oversell":0,"users_over_limit":0,"missing":0,
            "unrecorded":0,"unconfirmed":0,
            "redis":{"orders_stream_len":2,"hash_stock":2,"hash_sold":2},
            "checks":[],"passed":true}"#;
        let audit: Audit = serde_json::from_str(json).unwrap();
        assert!(audit.passed && audit.feed.is_none());
    }

    #[test]
    fn names_round_trip() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_name(o.name()), Some(o));
            assert_eq!(Outcome::ALL[o.index()], o);
        }
    }
}
