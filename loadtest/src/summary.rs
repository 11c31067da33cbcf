//! The plain-text summary of a report, read from the model: one function per
//! part of it (run, schedule, latency table, sell-out, audit, assertions,
//! verdict), joined in order by [`Report::summary`].

use std::fmt::Write as _;

use crate::model::{Audit, Outcome, Report};

impl Report {
    /// The plain-text summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        write_run(&mut s, self);
        write_schedule(&mut s, self);
        write_latency_table(&mut s, self);
        write_errors(&mut s, self);
        write_sell_out(&mut s, self);
        if let Some(audit) = &self.audit {
            let _ = writeln!(s, "\n{}", audit.summary());
        }
        write_assertions(&mut s, self);
        for w in &self.warnings {
            let _ = writeln!(s, "\nwarning: {w}");
        }
        let _ = writeln!(
            s,
            "\nresult: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s
    }
}

impl Audit {
    /// The audit as a few lines of text.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        write_sale_books(&mut s, self);
        write_told(&mut s, self);
        write_feed(&mut s, self);
        write_checks(&mut s, self);
        let _ = write!(
            s,
            "audit: {}",
            if self.passed { "passed" } else { "FAILED" }
        );
        s
    }
}

// === the report's parts ===

/// What ran against what, and how much of it.
fn write_run(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "{} → {} sale {} profile {}",
        r.generator, r.target, r.sale_id, r.profile
    );
    let _ = writeln!(
        s,
        "buyers {}  requests {} (retries {}, double-clicks {})  answered {}  in {:.2}s",
        r.buyers_planned, r.requests_sent, r.retries, r.double_clicks, r.answered, r.duration_s
    );
    let _ = writeln!(
        s,
        "offered {:.0} req/s  throughput {:.0} answers/s",
        r.offered_rps, r.throughput_rps
    );
}

/// How closely the generator kept its schedule, and whether that makes
/// the run valid.
fn write_schedule(s: &mut String, r: &Report) {
    let lag = &r.schedule;
    let validity = if r.valid {
        "valid".to_string()
    } else {
        format!(
            "INVALID ({})",
            r.invalid_reason.as_deref().unwrap_or("fell behind")
        )
    };
    let _ = writeln!(
        s,
        "schedule lag: dispatch p99 {} max {}  start p99 {} max {}  → {validity}",
        fmt_us(lag.dispatch_lag.p99_us),
        fmt_us(lag.dispatch_lag.max_us),
        fmt_us(lag.start_lag.p99_us),
        fmt_us(lag.start_lag.max_us),
    );
    let sizing = r
        .settings
        .connections_sizing
        .as_deref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "waiting for one of the {} connections{sizing}: p99 {} max {}",
        r.settings.connections,
        fmt_us(lag.connection_wait.p99_us),
        fmt_us(lag.connection_wait.max_us)
    );
}

/// Corrected latency by outcome, the raw p99 beside it, and all answers.
fn write_latency_table(s: &mut String, r: &Report) {
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
        if let Some(st) = r.outcomes.get(o.name()) {
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
    let a = &r.all;
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
}

/// Kinds of errors and unanswered requests, counted (only when any).
fn write_errors(s: &mut String, r: &Report) {
    if r.errors.is_empty() {
        return;
    }
    let _ = writeln!(s, "errors: {}", counted(&r.errors, " ×"));
}

/// When the sale ran out, and how the buyers ended.
fn write_sell_out(s: &mut String, r: &Report) {
    let so = &r.sell_out;
    let _ = writeln!(
        s,
        "\nfirst success {}  last success {}  first sold_out {}  time to sell out {}",
        fmt_s(so.first_success_s),
        fmt_s(so.last_success_s),
        fmt_s(so.first_sold_out_s),
        fmt_s(so.time_to_sell_out_s)
    );
    let _ = writeln!(s, "buyers by final outcome: {}", counted(&r.buyers, " "));
    if let Some(f) = &r.fairness {
        let _ = writeln!(
            s,
            "fairness {:.4}: {} of {} winners among the first {} buyers; latest winner {} buyers \
             ({:.0} ms) after them",
            f.fairness,
            f.early_winners,
            f.winners,
            f.first_buyers,
            f.inversion_buyers,
            f.inversion_ms
        );
    }
}

/// Each assertion with its measured value (only when any).
fn write_assertions(s: &mut String, r: &Report) {
    if r.assertions.is_empty() {
        return;
    }
    let _ = writeln!(s, "\nassertions:");
    for a in &r.assertions {
        let _ = writeln!(
            s,
            "  {} {}  (actual {})",
            if a.passed { "pass" } else { "FAIL" },
            a.expr,
            a.actual
        );
    }
}

// === the audit's parts ===

/// The sale as the gateway reports it, before and after.
fn write_sale_books(s: &mut String, a: &Audit) {
    let _ = writeln!(
        s,
        "audit of sale {}: stock {}, sold {} → {}, remaining {}, state {}",
        a.sale_id, a.stock, a.sold_before, a.sold_after, a.remaining_after, a.state_after
    );
}

/// What the buyers were told: successes, orders, units, and 504s.
fn write_told(s: &mut String, a: &Audit) {
    let resolved = if a.timeouts_resolved.is_empty() {
        String::new()
    } else {
        format!(" (resolved: {})", counted(&a.timeouts_resolved, " "))
    };
    let _ = writeln!(
        s,
        "  success answers {} = {} orders, {} units; 504s {}{resolved}",
        a.success_answers, a.orders, a.units, a.timeouts
    );
}

/// The gateway's order feed: read or not, and what it holds.
fn write_feed(s: &mut String, a: &Audit) {
    let _ = writeln!(s, "  order feed: {}", feed_line(a));
}

/// `12 orders, 12 units in 2 pages`, or why there is nothing to show.
pub fn feed_line(a: &Audit) -> String {
    match &a.feed {
        None => "not read (no admin token)".into(),
        Some(f) => match &f.error {
            Some(e) => format!("unreadable: {e}"),
            None => format!(
                "{} orders, {} units in {} pages{}",
                f.orders,
                f.units,
                f.pages,
                if f.truncated {
                    " (stopped at the bound, past the stock)"
                } else {
                    ""
                }
            ),
        },
    }
}

/// One line per check.
fn write_checks(s: &mut String, a: &Audit) {
    for c in &a.checks {
        let _ = writeln!(
            s,
            "  {} {}: {}",
            if c.passed { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        );
    }
}

// === units ===

/// `1.23ms`, `456µs`, `2.50s`.
pub fn fmt_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{:.2}ms", us as f64 / 1e3),
        _ => format!("{:.2}s", us as f64 / 1e6),
    }
}

/// `1.234s`, or `-` for a moment that did not come.
fn fmt_s(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{s:.3}s"))
}

/// `a 1, b 2` from a map of counts, the name and count joined by `sep`.
fn counted(m: &std::collections::BTreeMap<String, u64>, sep: &str) -> String {
    m.iter()
        .map(|(k, n)| format!("{k}{sep}{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_has_its_parts_in_order() {
        let mut r = Report {
            generator: "loadtest 0.1.0".into(),
            valid: true,
            ..Default::default()
        };
        r.errors.insert("no answer: reset".into(), 2);
        r.assertions.push(crate::model::AssertionResult {
            expr: "oversell==0".into(),
            actual: "0".into(),
            passed: true,
        });
        let s = r.summary();
        let parts = [
            "loadtest 0.1.0 → ",
            "schedule lag: ",
            "→ valid",
            "latency from intended send",
            "errors: no answer: reset ×2",
            "first success -",
            "buyers by final outcome: ",
            "assertions:\n  pass oversell==0  (actual 0)",
            "result: PASS",
        ];
        let mut from = 0;
        for p in parts {
            let at = s[from..]
                .find(p)
                .unwrap_or_else(|| panic!("{p:?} after {from} in\n{s}"));
            from += at + p.len();
        }
    }

    #[test]
    fn durations_print_in_readable_units() {
        assert_eq!(fmt_us(12), "12µs");
        assert_eq!(fmt_us(1_500), "1.50ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
    }
}
