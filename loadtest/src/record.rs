//! The recorder: every answer's latency, by outcome and over time, and what
//! the audit needs to know about successes and timeouts.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::model::{
    Fairness, LatencyStats, Outcome, OutcomeStats, PercentilePoint, RankGroup, SellOut, Timeline,
    TimelineBucket,
};

/// Highest latency a histogram tracks (values above are clamped): one hour.
pub const HIGHEST_US: u64 = 3_600_000_000;
/// Timeline buckets beyond this fold into the last one.
const MAX_BUCKETS: usize = 20_000;
/// Distinct error descriptions kept; the rest count as "other".
const MAX_ERROR_KINDS: usize = 32;
/// Timed-out request ids kept for resolving afterwards.
const MAX_TIMEOUT_IDS: usize = 100_000;

/// A latency histogram in microseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("valid histogram bounds")
}

/// Records `d` in microseconds (at least 1, at most an hour).
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, HIGHEST_US);
    h.saturating_record(us);
}

/// Percentiles of a latency histogram.
pub fn stats(h: &Histogram<u64>) -> LatencyStats {
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

/// Most groups of the outcome-by-arrival-rank plot.
const RANK_GROUPS: usize = 100;

/// Final outcomes in up to [`RANK_GROUPS`] groups of consecutive ranks.
fn rank_groups(finals: &[(u64, Duration, Outcome)]) -> Vec<RankGroup> {
    let size = finals.len().div_ceil(RANK_GROUPS).max(1);
    finals
        .chunks(size)
        .map(|chunk| {
            let mut outcomes = BTreeMap::new();
            for f in chunk {
                *outcomes.entry(f.2.name().to_string()).or_insert(0) += 1;
            }
            RankGroup {
                first: chunk[0].0,
                last: chunk[chunk.len() - 1].0,
                outcomes,
            }
        })
        .collect()
}

/// A success as the client saw it.
#[derive(Clone, Debug)]
pub struct Order {
    pub user: u64,
    pub quantity: u32,
    /// The answer named its order (its key is then the order id; otherwise
    /// the request id, or a placeholder).
    pub has_order_id: bool,
}

/// One answered (or unanswered) request.
pub struct Answer<'a> {
    pub outcome: Outcome,
    pub intended: Instant,
    /// When the request's task began (the schedule's lag ends here).
    pub started: Instant,
    /// When it got a connection and went out.
    pub sent: Instant,
    pub done: Instant,
    /// Index of the buyer (its user id is derived from it).
    pub user: u64,
    pub quantity: u32,
    pub request_id: Option<&'a str>,
    pub order_id: Option<&'a str>,
    pub error: Option<String>,
    /// The refusal's reason, when the answer gave one.
    pub reason: Option<&'a str>,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
}

#[derive(Default)]
struct Bucket {
    sent: u64,
    answers: [u64; Outcome::COUNT],
    latency: [Option<Histogram<u32>>; Outcome::COUNT],
    /// Requests whose task started here, and that got a connection here.
    started: u64,
    connected: u64,
    /// The connection wait of the requests that started here.
    wait: Option<Histogram<u32>>,
}

/// Collects a run's measurements. One per run, behind a mutex: each
/// answer takes the lock once, briefly.
pub struct Recorder {
    t0: Instant,
    bucket: Duration,
    corrected: [Histogram<u64>; Outcome::COUNT],
    raw: [Histogram<u64>; Outcome::COUNT],
    all: Histogram<u64>,
    start_lag: Histogram<u64>,
    conn_wait: Histogram<u64>,
    buckets: Vec<Bucket>,
    buyers: [u64; Outcome::COUNT],
    /// Each buyer's rank, intended arrival after `t0` and final outcome.
    finals: Vec<(u64, Duration, Outcome)>,
    errors: BTreeMap<String, u64>,
    /// Distinct orders by order id (or request id when there is none).
    pub orders: HashMap<String, Order>,
    /// Success answers, repeats of one order included.
    pub success_answers: u64,
    /// Distinct orders among them (`orders` may be taken by the audit).
    pub distinct_orders: u64,
    /// Answers by HTTP status.
    pub statuses: BTreeMap<u16, u64>,
    /// 429s for the gateway's cap on connections per client address.
    pub address_limited: u64,
    /// Request ids answered 504, to poll afterwards.
    pub timeouts: Vec<(String, u64)>,
    pub sent: u64,
    pub answered: u64,
    pub retries: u64,
    pub double_clicks: u64,
    first_success: Option<Duration>,
    last_success: Option<Duration>,
    first_sold_out: Option<Duration>,
    last_answer: Option<Duration>,
}

impl Recorder {
    pub fn new(t0: Instant, bucket: Duration) -> Self {
        Recorder {
            t0,
            bucket: bucket.max(Duration::from_millis(1)),
            corrected: std::array::from_fn(|_| histogram()),
            raw: std::array::from_fn(|_| histogram()),
            all: histogram(),
            start_lag: histogram(),
            conn_wait: histogram(),
            buckets: Vec::new(),
            buyers: [0; Outcome::COUNT],
            finals: Vec::new(),
            errors: BTreeMap::new(),
            orders: HashMap::new(),
            success_answers: 0,
            distinct_orders: 0,
            statuses: BTreeMap::new(),
            address_limited: 0,
            timeouts: Vec::new(),
            sent: 0,
            answered: 0,
            retries: 0,
            double_clicks: 0,
            first_success: None,
            last_success: None,
            first_sold_out: None,
            last_answer: None,
        }
    }

    fn bucket_mut(&mut self, at: Instant) -> &mut Bucket {
        let i = (at.saturating_duration_since(self.t0).as_nanos() / self.bucket.as_nanos())
            .min(MAX_BUCKETS as u128 - 1) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize_with(i + 1, Bucket::default);
        }
        &mut self.buckets[i]
    }

    /// A request ended, with or without an HTTP answer.
    pub fn answer(&mut self, a: Answer<'_>) {
        let o = a.outcome;
        self.sent += 1;
        record(
            &mut self.start_lag,
            a.started.saturating_duration_since(a.intended),
        );
        record(
            &mut self.conn_wait,
            a.sent.saturating_duration_since(a.started),
        );
        let corrected = a.done.saturating_duration_since(a.intended);
        let raw = a.done.saturating_duration_since(a.sent);
        let at = a.done.saturating_duration_since(self.t0);
        record(&mut self.corrected[o.index()], corrected);
        record(&mut self.raw[o.index()], raw);
        if o != Outcome::NoAnswer {
            self.answered += 1;
            record(&mut self.all, corrected);
        }
        self.bucket_mut(a.done).answers[o.index()] += 1;
        if let Some(code) = a.status {
            *self.statuses.entry(code).or_default() += 1;
        }
        if o == Outcome::RateLimited && a.reason == Some("address_limit") {
            self.address_limited += 1;
        }
        let wait = a.sent.saturating_duration_since(a.started);
        let b = self.bucket_mut(a.started);
        b.started += 1;
        b.wait
            .get_or_insert_with(|| {
                Histogram::new_with_bounds(1, HIGHEST_US, 2).expect("valid histogram bounds")
            })
            .saturating_record((wait.as_micros() as u64).clamp(1, HIGHEST_US));
        self.bucket_mut(a.sent).connected += 1;
        let b = self.bucket_mut(a.intended);
        b.sent += 1;
        let h = b.latency[o.index()].get_or_insert_with(|| {
            Histogram::new_with_bounds(1, HIGHEST_US, 2).expect("valid histogram bounds")
        });
        h.saturating_record((corrected.as_micros() as u64).clamp(1, HIGHEST_US));
        self.last_answer = self.last_answer.max(Some(at));
        match o {
            Outcome::Success => {
                self.success_answers += 1;
                self.first_success = Some(self.first_success.map_or(at, |f| f.min(at)));
                self.last_success = self.last_success.max(Some(at));
                let has_order_id = a.order_id.is_some();
                let id = a.order_id.or(a.request_id).map(str::to_string);
                // A success without any id cannot be told apart from a
                // repeat; give it its own entry so it is never hidden.
                let id = id.unwrap_or_else(|| format!("(no id #{})", self.success_answers));
                if let std::collections::hash_map::Entry::Vacant(e) = self.orders.entry(id) {
                    self.distinct_orders += 1;
                    e.insert(Order {
                        user: a.user,
                        quantity: a.quantity,
                        has_order_id,
                    });
                }
            }
            Outcome::SoldOut => {
                self.first_sold_out = Some(self.first_sold_out.map_or(at, |f| f.min(at)));
            }
            Outcome::Timeout => {
                if let Some(id) = a.request_id {
                    if self.timeouts.len() < MAX_TIMEOUT_IDS {
                        self.timeouts.push((id.to_string(), a.user));
                    }
                }
            }
            _ => {}
        }
        if let Some(e) = a.error {
            let key = if self.errors.len() < MAX_ERROR_KINDS || self.errors.contains_key(&e) {
                e
            } else {
                "other".into()
            };
            *self.errors.entry(key).or_default() += 1;
        }
    }

    /// Buyer `n` (its arrival rank), due at `intended`, is done: its last
    /// attempt ended with `outcome`.
    pub fn buyer_done(&mut self, n: u64, intended: Instant, outcome: Outcome) {
        self.buyers[outcome.index()] += 1;
        let at = intended.saturating_duration_since(self.t0);
        self.finals.push((n, at, outcome));
    }

    /// Winners against arrival order, when `units` were on sale at the
    /// start and each buyer asked for `quantity`.
    pub fn fairness(&self, units: u64, quantity: u32) -> Fairness {
        let mut finals = self.finals.clone();
        finals.sort_unstable_by_key(|f| f.0);
        let first_buyers = units / u64::from(quantity.max(1));
        let won = |f: &&(u64, Duration, Outcome)| f.2 == Outcome::Success;
        let winners = finals.iter().filter(won).count() as u64;
        let early_winners = finals
            .iter()
            .take(first_buyers as usize)
            .filter(won)
            .count() as u64;
        let latest = finals.iter().rposition(|f| f.2 == Outcome::Success);
        let (inversion_buyers, inversion_ms) = match latest {
            Some(i) if i as u64 >= first_buyers && first_buyers > 0 => {
                let last_early = finals[first_buyers as usize - 1].1;
                let late = finals[i].1.saturating_sub(last_early);
                (i as u64 + 1 - first_buyers, late.as_secs_f64() * 1e3)
            }
            _ => (0, 0.0),
        };
        Fairness {
            first_buyers,
            winners,
            early_winners,
            fairness: if winners == 0 {
                1.0
            } else {
                early_winners as f64 / winners as f64
            },
            inversion_buyers,
            inversion_ms: (inversion_ms * 1e3).round() / 1e3,
            by_rank: rank_groups(&finals),
        }
    }

    /// Answers so far by outcome (for the progress line).
    pub fn counts(&self) -> [u64; Outcome::COUNT] {
        std::array::from_fn(|i| self.corrected[i].len())
    }

    pub fn outcome_stats(&self) -> BTreeMap<String, OutcomeStats> {
        Outcome::ALL
            .iter()
            .filter(|o| !self.corrected[o.index()].is_empty())
            .map(|o| {
                let (c, r) = (&self.corrected[o.index()], &self.raw[o.index()]);
                let stats = OutcomeStats {
                    count: c.len(),
                    corrected: stats(c),
                    raw: stats(r),
                    distribution: distribution(c),
                    raw_distribution: distribution(r),
                };
                (o.name().to_string(), stats)
            })
            .collect()
    }

    pub fn all_stats(&self) -> LatencyStats {
        stats(&self.all)
    }

    pub fn start_lag(&self) -> LatencyStats {
        stats(&self.start_lag)
    }

    pub fn connection_wait(&self) -> LatencyStats {
        stats(&self.conn_wait)
    }

    pub fn buyers(&self) -> BTreeMap<String, u64> {
        Outcome::ALL
            .iter()
            .filter(|o| self.buyers[o.index()] > 0)
            .map(|o| (o.name().to_string(), self.buyers[o.index()]))
            .collect()
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.clone()
    }

    /// Time from the start to the last answer.
    pub fn last_answer(&self) -> Duration {
        self.last_answer.unwrap_or_default()
    }

    /// Sell-out times; `sold_out_now` says whether the sale has nothing left.
    pub fn sell_out(&self, sold_out_now: bool) -> SellOut {
        let s = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1e6).round() / 1e6);
        let time_to_sell_out = match (self.first_sold_out, sold_out_now) {
            (Some(t), _) => Some(t),
            (None, true) => self.last_success,
            (None, false) => None,
        };
        SellOut {
            first_success_s: s(self.first_success),
            last_success_s: s(self.last_success),
            first_sold_out_s: s(self.first_sold_out),
            time_to_sell_out_s: s(time_to_sell_out),
        }
    }

    pub fn timeline(&self) -> Timeline {
        // Requests in flight and waiting at each bucket's end: started so
        // far, less ended (or connected) so far.
        let (mut started, mut connected, mut ended) = (0u64, 0u64, 0u64);
        let buckets: Vec<TimelineBucket> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                started += b.started;
                connected += b.connected;
                ended += b.answers.iter().sum::<u64>();
                let mut tb = TimelineBucket {
                    t_ms: (i as u128 * self.bucket.as_millis()) as u64,
                    sent: b.sent,
                    in_flight: started.saturating_sub(ended),
                    waiting: started.saturating_sub(connected),
                    connection_wait_p99_us: b.wait.as_ref().map(|h| h.value_at_quantile(0.99)),
                    connection_wait_max_us: b.wait.as_ref().map(|h| h.max()),
                    ..Default::default()
                };
                for o in Outcome::ALL {
                    let n = b.answers[o.index()];
                    if n > 0 {
                        tb.answers.insert(o.name().into(), n);
                    }
                    if let Some(h) = &b.latency[o.index()] {
                        tb.p50_us.insert(o.name().into(), h.value_at_quantile(0.5));
                        tb.p99_us.insert(o.name().into(), h.value_at_quantile(0.99));
                        tb.max_us.insert(o.name().into(), h.max());
                    }
                }
                tb
            })
            .collect();
        let bucket_ms = self.bucket.as_millis() as u64;
        Timeline {
            bucket_ms,
            end_ms: buckets.len() as u64 * bucket_ms,
            buckets,
        }
    }
}

/// A timeline interval giving roughly 100–250 points over `span`, on a
/// 1-2-5 scale, at least 10 ms.
pub fn bucket_for(span: Duration) -> Duration {
    const STEPS_MS: [u64; 14] = [
        10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000,
    ];
    let target = span.as_millis() as u64 / 100;
    let ms = STEPS_MS
        .iter()
        .copied()
        .find(|&s| s * 2 >= target)
        .unwrap_or(600_000);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(o: Outcome, t0: Instant, intended_ms: u64, done_ms: u64, id: &str) -> Answer<'_> {
        Answer {
            outcome: o,
            intended: t0 + Duration::from_millis(intended_ms),
            started: t0 + Duration::from_millis(intended_ms),
            sent: t0 + Duration::from_millis(intended_ms + 1),
            done: t0 + Duration::from_millis(done_ms),
            user: 7,
            quantity: 1,
            request_id: Some(id),
            order_id: None,
            error: None,
            reason: None,
            status: Some(200),
        }
    }

    #[test]
    fn repeats_of_one_order_count_once_and_times_are_kept() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0, Duration::from_millis(10));
        r.answer(answer(Outcome::Success, t0, 0, 5, "r1"));
        r.answer(answer(Outcome::Success, t0, 20, 25, "r1"));
        r.answer(answer(Outcome::SoldOut, t0, 30, 42, "r2"));
        r.answer(answer(Outcome::Timeout, t0, 30, 50, "r3"));
        assert_eq!(r.orders.len(), 1);
        assert_eq!((r.success_answers, r.distinct_orders), (2, 1));
        assert_eq!(r.statuses[&200], 4);
        assert_eq!(r.timeouts, vec![("r3".to_string(), 7)]);
        let so = r.sell_out(true);
        assert_eq!(so.first_sold_out_s, Some(0.042));
        assert_eq!(so.time_to_sell_out_s, Some(0.042));
        assert_eq!(so.last_success_s, Some(0.025));
        let tl = r.timeline();
        assert_eq!(tl.buckets.len(), 6);
        assert_eq!(tl.end_ms, 60);
        // Every request ended by the last bucket; the one sent at 30 ms
        // and answered at 50 ms is still in flight at the end of bucket 4.
        assert_eq!(tl.buckets[5].in_flight, 0);
        assert_eq!(tl.buckets[4].in_flight, 1);
        // 1 ms between task start and send, at two significant digits.
        let wait = tl.buckets[3].connection_wait_p99_us.unwrap();
        assert!((1_000..=1_010).contains(&wait), "{wait}");
        assert_eq!(tl.buckets[4].answers["sold_out"], 1);
        // Latency is filed under the intended send time (30 ms → bucket 3).
        assert!(tl.buckets[3].p50_us["sold_out"] >= 11_000);
    }

    #[test]
    fn fairness_counts_winners_against_arrival_order() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0, Duration::from_millis(10));
        // Ten buyers 10 ms apart, finishing out of order; 3 units on sale.
        let won = [0, 2, 7];
        for n in (0..10u64).rev() {
            let o = if won.contains(&n) {
                Outcome::Success
            } else {
                Outcome::SoldOut
            };
            r.buyer_done(n, t0 + Duration::from_millis(10 * n), o);
        }
        let f = r.fairness(3, 1);
        assert_eq!((f.first_buyers, f.winners, f.early_winners), (3, 3, 2));
        assert!((f.fairness - 2.0 / 3.0).abs() < 1e-9);
        // The latest winner is rank 7: 5 ranks and 50 ms after rank 2.
        assert_eq!(f.inversion_buyers, 5);
        assert!((f.inversion_ms - 50.0).abs() < 1e-6);
        let grouped: u64 = f.by_rank.iter().flat_map(|g| g.outcomes.values()).sum();
        assert_eq!(grouped, 10);
        assert_eq!(f.by_rank[0].first, 0);
        // In order: fair, no inversion; two units each: the first buyer.
        let mut fair = Recorder::new(t0, Duration::from_millis(10));
        fair.buyer_done(0, t0, Outcome::Success);
        fair.buyer_done(1, t0, Outcome::SoldOut);
        let f = fair.fairness(2, 2);
        assert_eq!(
            (f.first_buyers, f.fairness, f.inversion_buyers),
            (1, 1.0, 0)
        );
    }

    #[test]
    fn stats_and_distribution_of_a_histogram() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let s = stats(&h);
        assert_eq!(s.count, 10_000);
        assert!((4990..=5010).contains(&s.p50_us));
        assert_eq!(s.percentile_us(50.0), Some(s.p50_us));
        assert_eq!(s.percentile_us(42.0), None);
        let d = distribution(&h);
        assert!(d.windows(2).all(|w| w[0].percentile < w[1].percentile));
        assert!(d.windows(2).all(|w| w[0].us <= w[1].us));
        assert_eq!(d.last().unwrap().percentile, 100.0);
        assert_eq!(stats(&Histogram::new(3).unwrap()).count, 0);
    }

    #[test]
    fn buckets_scale_with_the_span() {
        assert_eq!(
            bucket_for(Duration::from_secs(1)),
            Duration::from_millis(10)
        );
        assert_eq!(
            bucket_for(Duration::from_secs(3)),
            Duration::from_millis(20)
        );
        assert_eq!(
            bucket_for(Duration::from_secs(60)),
            Duration::from_millis(500)
        );
    }
}
