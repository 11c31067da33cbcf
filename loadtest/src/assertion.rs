//! Thresholds on a report (`--assert 'p99(success)<50ms'`) that decide the
//! exit code.
//!
//! Grammar: `METRIC OP VALUE`, OP one of `< <= > >= == !=`.
//!
//! - latency: `p50(o)`, `p99.9(o)`, `max(o)`, `min(o)`, `mean(o)` over the
//!   corrected latency of outcome `o` (or `all`); `raw_p99(o)` etc. for the
//!   raw latency; `p99(lag)` / `max(dispatch_lag)` for the generator's lag.
//!   Values take a unit (`us`, `ms`, `s`, `m`, `1h`, `1m30s`); a bare
//!   number means ms.
//! - counts: `count(o)`, `share(o)` (a fraction, or a percentage `5%`).
//! - run: `sent`, `answered`, `throughput` (answers/s), `retries`,
//!   `time_to_sell_out` (a duration), `valid` (1 or 0).
//! - audit: `oversell`, `missing`, `over_limit`, `unrecorded`, `sold`,
//!   `remaining`, `orders` (distinct orders buyers were told of; repeats
//!   of one idempotency key count once, unlike `count(success)`).
//! - fairness: `fairness` (the share of the winners among the first
//!   `stock` buyers by arrival), `inversion` (arrival ranks the latest
//!   winner came past them), `inversion_ms`.

use std::fmt;
use std::str::FromStr;

use crate::model::{AssertionResult, LatencyStats, Outcome, Report};
use crate::summary::fmt_us;

/// An assertion, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Assertion {
    expr: String,
    metric: Metric,
    op: Op,
    /// In the metric's base unit (seconds for durations).
    value: f64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stat {
    Percentile(f64),
    Max,
    Min,
    Mean,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Series {
    All,
    Outcome(Outcome),
    StartLag,
    DispatchLag,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Metric {
    Latency {
        series: Series,
        stat: Stat,
        raw: bool,
    },
    Count(Option<Outcome>),
    Share(Outcome),
    Sent,
    Answered,
    Throughput,
    Retries,
    TimeToSellOut,
    Valid,
    Oversell,
    Missing,
    OverLimit,
    Unrecorded,
    Sold,
    Remaining,
    Orders,
    Fairness,
    Inversion,
    InversionMs,
}

impl Metric {
    fn is_duration(self) -> bool {
        matches!(self, Metric::Latency { .. } | Metric::TimeToSellOut)
    }

    /// A fraction of 0..=1, also written as a percentage.
    fn is_share(self) -> bool {
        matches!(self, Metric::Share(_))
    }
}

/// An assertion that could not be parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct AssertionError(pub String);

impl fmt::Display for AssertionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AssertionError {}

impl FromStr for Assertion {
    type Err = AssertionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |m: String| AssertionError(format!("assertion '{s}': {m}"));
        let ops = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<", Op::Lt),
            (">", Op::Gt),
        ];
        let (pos, text, op) = ops
            .iter()
            .filter_map(|(t, op)| s.find(t).map(|p| (p, *t, *op)))
            .min_by_key(|(p, t, _)| (*p, usize::MAX - t.len()))
            .ok_or_else(|| err("no comparison (< <= > >= == !=)".into()))?;
        let metric = parse_metric(s[..pos].trim()).map_err(err)?;
        let value = parse_value(s[pos + text.len()..].trim(), metric).map_err(err)?;
        Ok(Assertion {
            expr: s.trim().to_string(),
            metric,
            op,
            value,
        })
    }
}

fn parse_metric(m: &str) -> Result<Metric, String> {
    let (name, arg) = match m.split_once('(') {
        Some((n, rest)) => {
            let arg = rest
                .strip_suffix(')')
                .ok_or_else(|| format!("'{m}' lacks a closing ')'"))?;
            (n.trim(), Some(arg.trim()))
        }
        None => (m, None),
    };
    let outcome = |a: &str| {
        Outcome::from_name(a).ok_or_else(|| {
            let names: Vec<_> = Outcome::ALL.iter().map(|o| o.name()).collect();
            format!(
                "unknown outcome '{a}' (one of {}, or all)",
                names.join(", ")
            )
        })
    };
    let (raw, stat_name) = match name.strip_prefix("raw_") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    let stat = match stat_name {
        "max" => Some(Stat::Max),
        "min" => Some(Stat::Min),
        "mean" => Some(Stat::Mean),
        p if p.starts_with('p') => p[1..]
            .parse::<f64>()
            .ok()
            .filter(|v| (0.0..=100.0).contains(v))
            .map(Stat::Percentile),
        _ => None,
    };
    if let Some(stat) = stat {
        let series = match arg.unwrap_or("all") {
            "all" => Series::All,
            "lag" | "start_lag" => Series::StartLag,
            "dispatch_lag" => Series::DispatchLag,
            a => Series::Outcome(outcome(a)?),
        };
        if raw && !matches!(series, Series::All | Series::Outcome(_)) {
            return Err("raw_ applies to outcomes only".into());
        }
        if raw && series == Series::All {
            return Err("raw latency is kept per outcome: use raw_pNN(outcome)".into());
        }
        return Ok(Metric::Latency { series, stat, raw });
    }
    if raw {
        return Err(format!("unknown metric '{name}'"));
    }
    Ok(match (name, arg) {
        ("count", Some("all")) => Metric::Count(None),
        ("count", Some(a)) => Metric::Count(Some(outcome(a)?)),
        ("share", Some(a)) => Metric::Share(outcome(a)?),
        ("sent", None) => Metric::Sent,
        ("answered", None) => Metric::Answered,
        ("throughput", None) => Metric::Throughput,
        ("retries", None) => Metric::Retries,
        ("time_to_sell_out", None) => Metric::TimeToSellOut,
        ("valid", None) => Metric::Valid,
        ("oversell", None) => Metric::Oversell,
        ("missing", None) => Metric::Missing,
        ("over_limit", None) => Metric::OverLimit,
        ("unrecorded", None) => Metric::Unrecorded,
        ("sold", None) => Metric::Sold,
        ("remaining", None) => Metric::Remaining,
        ("orders", None) => Metric::Orders,
        ("fairness", None) => Metric::Fairness,
        ("inversion", None) => Metric::Inversion,
        ("inversion_ms", None) => Metric::InversionMs,
        _ => return Err(format!("unknown metric '{m}'")),
    })
}

fn parse_value(v: &str, metric: Metric) -> Result<f64, String> {
    let bad = || format!("'{v}' is not a value for this metric");
    let v = v.replace('_', "");
    if metric.is_duration() {
        let units = [
            ("us", 1e-6),
            ("µs", 1e-6),
            ("ms", 1e-3),
            ("s", 1.0),
            ("m", 60.0),
        ];
        for (u, scale) in units {
            if let Some(n) = v.strip_suffix(u) {
                if let Ok(n) = n.trim().parse::<f64>() {
                    return Ok(n * scale);
                }
            }
        }
        if let Ok(d) = humantime::parse_duration(&v) {
            return Ok(d.as_secs_f64());
        }
        return v.parse::<f64>().map(|n| n * 1e-3).map_err(|_| bad());
    }
    let share = metric.is_share();
    let n = match v.strip_suffix('%') {
        Some(p) if share => p.trim().parse::<f64>().map(|n| n / 100.0),
        Some(_) => return Err(bad()),
        None => v.parse::<f64>(),
    }
    .map_err(|_| bad())?;
    if share && !(0.0..=1.0).contains(&n) {
        return Err(format!("'{v}' is not a share: give 0..=1 or 0%..=100%"));
    }
    Ok(n)
}

impl Assertion {
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// Checks the assertion against a report.
    pub fn check(&self, r: &Report) -> AssertionResult {
        let actual = self.actual(r);
        let (passed, actual) = match actual {
            Ok(v) => (self.holds(v), self.show(v)),
            Err(why) => (false, why),
        };
        AssertionResult {
            expr: self.expr.clone(),
            actual,
            passed,
        }
    }

    fn holds(&self, a: f64) -> bool {
        let b = self.value;
        let eq = (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
        match self.op {
            Op::Lt => a < b && !eq,
            Op::Le => a <= b || eq,
            Op::Gt => a > b && !eq,
            Op::Ge => a >= b || eq,
            Op::Eq => eq,
            Op::Ne => !eq,
        }
    }

    fn show(&self, v: f64) -> String {
        if self.metric.is_duration() {
            fmt_us((v * 1e6).round() as u64)
        } else if v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.4}")
        }
    }

    fn actual(&self, r: &Report) -> Result<f64, String> {
        let audit = || r.audit.as_ref().ok_or_else(|| "no audit".to_string());
        Ok(match self.metric {
            Metric::Latency { series, stat, raw } => {
                let stats = match series {
                    Series::All => Some(&r.all),
                    Series::StartLag => Some(&r.schedule.start_lag),
                    Series::DispatchLag => Some(&r.schedule.dispatch_lag),
                    Series::Outcome(o) => {
                        r.outcomes
                            .get(o.name())
                            .map(|s| if raw { &s.raw } else { &s.corrected })
                    }
                };
                let stats = stats
                    .filter(|s| s.count > 0)
                    .ok_or_else(|| "no samples".to_string())?;
                stat_of(stats, stat, series, r)? as f64 / 1e6
            }
            Metric::Count(None) => r.requests_sent as f64,
            Metric::Count(Some(o)) => r.count(o) as f64,
            Metric::Share(o) => {
                if r.requests_sent == 0 {
                    return Err("no requests".into());
                }
                r.count(o) as f64 / r.requests_sent as f64
            }
            Metric::Sent => r.requests_sent as f64,
            Metric::Answered => r.answered as f64,
            Metric::Throughput => r.throughput_rps,
            Metric::Retries => r.retries as f64,
            Metric::TimeToSellOut => r
                .sell_out
                .time_to_sell_out_s
                .ok_or_else(|| "not sold out".to_string())?,
            Metric::Valid => f64::from(u8::from(r.valid)),
            Metric::Oversell => audit()?.oversell as f64,
            Metric::Missing => match &r.audit {
                Some(a) => a.missing as f64,
                None => r.count(Outcome::NoAnswer) as f64,
            },
            Metric::OverLimit => audit()?.users_over_limit as f64,
            Metric::Unrecorded => audit()?.unrecorded as f64,
            Metric::Sold => audit()?.sold_after as f64,
            Metric::Remaining => audit()?.remaining_after as f64,
            Metric::Orders => audit()?.orders as f64,
            Metric::Fairness | Metric::Inversion | Metric::InversionMs => {
                let f = r
                    .fairness
                    .as_ref()
                    .ok_or_else(|| "no fairness (needs the audit)".to_string())?;
                match self.metric {
                    Metric::Fairness => f.fairness,
                    Metric::Inversion => f.inversion_buyers as f64,
                    _ => f.inversion_ms,
                }
            }
        })
    }
}

fn stat_of(s: &LatencyStats, stat: Stat, series: Series, r: &Report) -> Result<u64, String> {
    match stat {
        Stat::Max => Ok(s.max_us),
        Stat::Min => Ok(s.min_us),
        Stat::Mean => Ok(s.mean_us.round() as u64),
        Stat::Percentile(p) => {
            if let Some(v) = s.percentile_us(p) {
                return Ok(v);
            }
            // Other percentiles come from the distribution curve, where
            // the report keeps one.
            let curve = match series {
                Series::Outcome(o) => r.outcomes.get(o.name()).map(|x| &x.distribution),
                _ => None,
            };
            curve
                .and_then(|c| c.iter().find(|pt| pt.percentile >= p - 1e-9))
                .map(|pt| pt.us)
                .ok_or_else(|| format!("p{p} is not kept; use p50, p90, p99, p99.9 or p99.99"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        for s in [
            "p99(success)<50ms",
            "p99.9(sold_out) <= 1s",
            "raw_max(rate_limited)<2000",
            "max(lag) < 10ms",
            "oversell==0",
            "missing == 0",
            "count(success)==1000",
            "share(rate_limited) > 50%",
            "throughput >= 1000",
            "time_to_sell_out < 2s",
            "valid == 1",
            "orders == 1000",
            "fairness>0.95",
            "inversion <= 10",
            "inversion_ms < 100",
        ] {
            let a: Assertion = s.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(a.expr(), s.trim());
        }
        let a: Assertion = "p99(success)<50ms".parse().unwrap();
        assert_eq!(a.op, Op::Lt);
        assert!((a.value - 0.05).abs() < 1e-12);
        let a: Assertion = "p99(success)<=50".parse().unwrap();
        assert_eq!(a.op, Op::Le);
        assert!((a.value - 0.05).abs() < 1e-12);
        for out_of_range in [
            "share(success)>150%",
            "share(success)<1.5",
            "share(success)>-1%",
        ] {
            assert!(
                out_of_range.parse::<Assertion>().is_err(),
                "{out_of_range} is accepted"
            );
        }
        let a: Assertion = "share(success)>5%".parse().unwrap();
        assert!((a.value - 0.05).abs() < 1e-12);
    }

    #[test]
    fn fairness_needs_the_audit() {
        let a: Assertion = "fairness>0.95".parse().unwrap();
        let mut r = Report::default();
        let missing = a.check(&r);
        assert!(!missing.passed && missing.actual.contains("no fairness"));
        r.fairness = Some(crate::model::Fairness {
            fairness: 0.97,
            ..Default::default()
        });
        assert!(a.check(&r).passed);
        r.fairness.as_mut().unwrap().fairness = 0.5;
        assert!(!a.check(&r).passed);
    }

    #[test]
    fn bad_assertions_say_why() {
        let e = "p99(winners)<1ms".parse::<Assertion>().unwrap_err();
        assert!(e.0.contains("unknown outcome 'winners'"), "{e}");
        let e = "oversell".parse::<Assertion>().unwrap_err();
        assert!(e.0.contains("no comparison"), "{e}");
        let e = "speed>3".parse::<Assertion>().unwrap_err();
        assert!(e.0.contains("unknown metric"), "{e}");
        let e = "oversell==none".parse::<Assertion>().unwrap_err();
        assert!(e.0.contains("not a value"), "{e}");
    }

    #[test]
    fn comparisons_hold_as_written() {
        let a: Assertion = "oversell==0".parse().unwrap();
        assert!(a.holds(0.0));
        assert!(!a.holds(1.0));
        let a: Assertion = "count(success)>=10".parse().unwrap();
        assert!(a.holds(10.0));
        assert!(!a.holds(9.0));
        let a: Assertion = "missing!=0".parse().unwrap();
        assert!(a.holds(3.0));
    }
}
