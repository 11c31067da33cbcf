//! `loadtest compare a.json b.json`: two runs' key figures side by side,
//! with the ratio b/a, as a text table (the overlaid plots are in
//! `html::compare`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context};

use crate::model::{LatencyStats, Outcome, Report, REPORT_VERSION};
use crate::summary::fmt_us;

/// Reads a JSON report written by `loadtest run --json`, refusing files
/// that are not one, or of a version this build does not read.
pub fn read(path: &Path) -> anyhow::Result<Report> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    // The version first, so a report of another layout says so rather
    // than failing on a field.
    let value: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a report: not JSON", path.display()))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(REPORT_VERSION) => {}
        Some(v) => bail!(
            "{} is report version {v}; this loadtest reads version {REPORT_VERSION}",
            path.display()
        ),
        None => bail!("{} is not a report: it has no version", path.display()),
    }
    serde_json::from_value(value).with_context(|| format!("{} is not a report", path.display()))
}

/// How a figure is shown.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unit {
    Count,
    PerSecond,
    Micros,
    Seconds,
    Ratio,
}

/// One figure of both runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub name: String,
    pub unit: Unit,
    pub a: Option<f64>,
    pub b: Option<f64>,
}

impl Row {
    fn new(name: impl Into<String>, unit: Unit, a: Option<f64>, b: Option<f64>) -> Row {
        Row {
            name: name.into(),
            unit,
            a,
            b,
        }
    }

    /// `b / a`, when both are there and `a` is not zero.
    pub fn ratio(&self) -> Option<f64> {
        match (self.a, self.b) {
            (Some(a), Some(b)) if a != 0.0 => Some(b / a),
            _ => None,
        }
    }

    pub fn show(&self, v: Option<f64>) -> String {
        let Some(v) = v else {
            return "-".into();
        };
        match self.unit {
            Unit::Count => format!("{v:.0}"),
            Unit::PerSecond => format!("{v:.0}/s"),
            Unit::Micros => fmt_us(v as u64),
            Unit::Seconds => format!("{v:.3}s"),
            Unit::Ratio => format!("{v:.3}"),
        }
    }

    pub fn show_ratio(&self) -> String {
        self.ratio().map_or("-".into(), |r| format!("{r:.2}×"))
    }
}

/// A latency figure of a set of percentiles.
type Percentile = (&'static str, fn(&LatencyStats) -> u64);
/// A figure of the audit.
type AuditFigure = (&'static str, fn(&crate::model::Audit) -> u64);

/// The figures compared, in the order shown.
pub fn rows(a: &Report, b: &Report) -> Vec<Row> {
    let both =
        |name: &str, unit, f: &dyn Fn(&Report) -> Option<f64>| Row::new(name, unit, f(a), f(b));
    let mut rows = vec![
        both("offered", Unit::PerSecond, &|r| Some(r.offered_rps)),
        both("throughput", Unit::PerSecond, &|r| Some(r.throughput_rps)),
        both("requests", Unit::Count, &|r| Some(r.requests_sent as f64)),
        both("answered", Unit::Count, &|r| Some(r.answered as f64)),
        both("duration", Unit::Seconds, &|r| Some(r.duration_s)),
        both("connections", Unit::Count, &|r| {
            Some(r.settings.connections as f64)
        }),
        both("start lag p99", Unit::Micros, &|r| {
            Some(r.schedule.start_lag.p99_us as f64)
        }),
        both("connection wait p99", Unit::Micros, &|r| {
            Some(r.schedule.connection_wait.p99_us as f64)
        }),
    ];
    let latency =
        |o: Option<&LatencyStats>, pick: fn(&LatencyStats) -> u64| o.map(|s| pick(s) as f64);
    let percentiles: [Percentile; 5] = [
        ("p50", |s| s.p50_us),
        ("p90", |s| s.p90_us),
        ("p99", |s| s.p99_us),
        ("p99.9", |s| s.p999_us),
        ("max", |s| s.max_us),
    ];
    for (p, pick) in percentiles {
        rows.push(Row::new(
            format!("{p}(all)"),
            Unit::Micros,
            latency(Some(&a.all), pick),
            latency(Some(&b.all), pick),
        ));
    }
    for o in Outcome::ALL {
        let (sa, sb) = (a.outcomes.get(o.name()), b.outcomes.get(o.name()));
        if sa.is_none() && sb.is_none() {
            continue;
        }
        rows.push(Row::new(
            format!("count({o})"),
            Unit::Count,
            Some(sa.map_or(0, |s| s.count) as f64),
            Some(sb.map_or(0, |s| s.count) as f64),
        ));
        for (p, pick) in percentiles {
            rows.push(Row::new(
                format!("{p}({o})"),
                Unit::Micros,
                latency(sa.map(|s| &s.corrected), pick),
                latency(sb.map(|s| &s.corrected), pick),
            ));
        }
    }
    rows.push(both("time to sell out", Unit::Seconds, &|r| {
        r.sell_out.time_to_sell_out_s
    }));
    rows.push(both("fairness", Unit::Ratio, &|r| {
        r.fairness.as_ref().map(|f| f.fairness)
    }));
    rows.push(both("inversion (buyers)", Unit::Count, &|r| {
        r.fairness.as_ref().map(|f| f.inversion_buyers as f64)
    }));
    let audit = |f: fn(&crate::model::Audit) -> u64| {
        move |r: &Report| r.audit.as_ref().map(|x| f(x) as f64)
    };
    let figures: [AuditFigure; 7] = [
        ("orders", |x| x.orders),
        ("sold", |x| x.sold_after.saturating_sub(x.sold_before)),
        ("remaining", |x| x.remaining_after),
        ("oversell", |x| x.oversell),
        ("missing", |x| x.missing),
        ("over_limit", |x| x.users_over_limit),
        ("unrecorded", |x| x.unrecorded),
    ];
    for (name, f) in figures {
        let get = audit(f);
        rows.push(Row::new(name, Unit::Count, get(a), get(b)));
    }
    rows
}

/// The side-by-side table, as text.
pub fn table(a: &Report, b: &Report, a_name: &str, b_name: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "a: {a_name}  {} sale {} profile {}",
        a.target, a.sale_id, a.profile
    );
    let _ = writeln!(
        s,
        "b: {b_name}  {} sale {} profile {}",
        b.target, b.sale_id, b.profile
    );
    let _ = writeln!(s);
    let _ = writeln!(s, "{:<24} {:>12} {:>12} {:>9}", "figure", "a", "b", "b/a");
    for row in rows(a, b) {
        let _ = writeln!(
            s,
            "{:<24} {:>12} {:>12} {:>9}",
            row.name,
            row.show(row.a),
            row.show(row.b),
            row.show_ratio()
        );
    }
    for (name, r) in [("a", a), ("b", b)] {
        if !r.valid {
            let _ = writeln!(
                s,
                "\nrun {name} is INVALID ({}): its latencies describe the generator",
                r.invalid_reason.as_deref().unwrap_or("fell behind")
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_missing_figures() {
        let mut a = Report::default();
        let mut b = Report::default();
        a.throughput_rps = 1000.0;
        b.throughput_rps = 1500.0;
        let rows = rows(&a, &b);
        let t = rows.iter().find(|r| r.name == "throughput").unwrap();
        assert_eq!(t.show_ratio(), "1.50×");
        // Neither run was audited: its figures are absent, not zero.
        let o = rows.iter().find(|r| r.name == "oversell").unwrap();
        assert_eq!(
            (o.show(o.a), o.show_ratio()),
            ("-".to_string(), "-".to_string())
        );
        let text = table(&a, &b, "a.json", "b.json");
        assert!(
            text.contains("throughput") && text.contains("1.50×"),
            "{text}"
        );
    }

    #[test]
    fn files_that_are_not_reports_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let e = read(&write("x.json", "hello")).unwrap_err().to_string();
        assert!(e.contains("not a report"), "{e}");
        let e = read(&write("y.json", r#"{"rps": 3}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no version"), "{e}");
        let e = read(&write("z.json", r#"{"version": 2}"#))
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 2"), "{e}");
        let json = serde_json::to_string(&Report {
            version: REPORT_VERSION,
            ..Default::default()
        })
        .unwrap();
        assert!(read(&write("ok.json", &json)).is_ok());
    }
}
