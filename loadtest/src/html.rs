//! The HTML report: one self-contained page (inline CSS and SVG, no
//! scripts, nothing fetched) with the summary, the audit and three plots:
//! answers per second over time, latency over time, and the latency
//! distribution by percentile.

use std::fmt::Write as _;

use crate::model::{Outcome, PercentilePoint, Report};
use crate::summary::{feed_line, fmt_us};

const W: f64 = 1100.0;
const H: f64 = 340.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 50.0;

/// A colour per outcome, stable across reports.
fn color(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "#2e7d32",
        Outcome::SoldOut => "#1565c0",
        Outcome::RateLimited => "#f9a825",
        Outcome::LimitExceeded => "#6a1b9a",
        Outcome::Rejected => "#8d6e63",
        Outcome::Overloaded => "#ef6c00",
        Outcome::Timeout => "#c62828",
        Outcome::Pending => "#00838f",
        Outcome::Error => "#d81b60",
        Outcome::NoAnswer => "#424242",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders the report as one HTML page.
pub fn render(r: &Report) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let verdict = if r.passed() { "PASS" } else { "FAIL" };
    let _ = write!(
        h,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>loadtest: sale {sale} — {verdict}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1140px; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }} h2 {{ font-size: 17px; margin: 28px 0 8px; }}
.muted {{ color: #666; }}
.badge {{ display: inline-block; padding: 2px 10px; border-radius: 4px; color: #fff; font-weight: 600; }}
.pass {{ background: #2e7d32; }} .fail {{ background: #c62828; }} .warn {{ background: #ef6c00; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; }}
.card {{ border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; min-width: 120px; }}
.card b {{ display: block; font-size: 20px; }}
table {{ border-collapse: collapse; margin: 6px 0; }}
th, td {{ border-bottom: 1px solid #e5e5e5; padding: 4px 10px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
td.l {{ text-align: left; }}
.sw {{ display: inline-block; width: 10px; height: 10px; margin-right: 6px; border-radius: 2px; }}
svg {{ background: #fff; border: 1px solid #e5e5e5; }}
svg text {{ font: 11px system-ui, sans-serif; fill: #444; }}
.legend span {{ margin-right: 14px; }}
</style></head><body>
<h1>Flash-sale load test: sale <code>{sale}</code> <span class="badge {cls}">{verdict}</span></h1>
<div class="muted">{gen} · target {target} · profile <code>{profile}</code> · started {started}</div>
"#,
        sale = esc(&r.sale_id),
        verdict = verdict,
        cls = if r.passed() { "pass" } else { "fail" },
        gen = esc(&r.generator),
        target = esc(&r.target),
        profile = esc(&r.profile),
        started = utc(r.started_unix_ms),
    );
    if !r.valid {
        let _ = write!(
            h,
            r#"<p><span class="badge warn">INVALID RUN</span> {}</p>"#,
            esc(r
                .invalid_reason
                .as_deref()
                .unwrap_or("the generator fell behind"))
        );
    }
    cards(&mut h, r);

    h.push_str("<h2>Answers per second, by outcome</h2>\n");
    legend(&mut h, r, true);
    h.push_str(&throughput_chart(r));
    h.push_str(
        "<h2>Latency over time (by intended send time; solid p99, dashed p50, corrected)</h2>\n",
    );
    legend(&mut h, r, false);
    h.push_str(&latency_chart(r));
    h.push_str("<h2>Latency distribution (solid corrected, dashed raw)</h2>\n");
    legend(&mut h, r, false);
    h.push_str(&distribution_chart(r));

    outcome_table(&mut h, r);
    audit_section(&mut h, r);
    assertion_section(&mut h, r);
    settings_section(&mut h, r);
    h.push_str("</body></html>\n");
    h
}

fn cards(h: &mut String, r: &Report) {
    let so = r
        .sell_out
        .time_to_sell_out_s
        .map_or("-".to_string(), |s| format!("{s:.3}s"));
    let audit = match &r.audit {
        Some(a) if a.passed => "passed".to_string(),
        Some(_) => "FAILED".to_string(),
        None => "not run".to_string(),
    };
    let items = [
        ("buyers", r.buyers_planned.to_string()),
        ("requests", r.requests_sent.to_string()),
        ("offered", format!("{:.0}/s", r.offered_rps)),
        ("throughput", format!("{:.0}/s", r.throughput_rps)),
        ("successes", r.count(Outcome::Success).to_string()),
        ("time to sell out", so),
        ("p99 all", fmt_us(r.all.p99_us)),
        ("schedule lag p99", fmt_us(r.schedule.start_lag.p99_us)),
        ("audit", audit),
    ];
    h.push_str("<div class=\"cards\">");
    for (k, v) in items {
        let _ = write!(
            h,
            "<div class=\"card\"><span class=\"muted\">{k}</span><b>{}</b></div>",
            esc(&v)
        );
    }
    h.push_str("</div>\n");
}

fn present(r: &Report) -> Vec<Outcome> {
    Outcome::ALL
        .into_iter()
        .filter(|o| r.outcomes.contains_key(o.name()))
        .collect()
}

fn legend(h: &mut String, r: &Report, offered: bool) {
    h.push_str("<div class=\"legend\">");
    for o in present(r) {
        let _ = write!(
            h,
            "<span><i class=\"sw\" style=\"background:{}\"></i>{}</span>",
            color(o),
            o.name()
        );
    }
    if offered {
        h.push_str("<span>- - - offered (sent by intended time)</span>");
    }
    h.push_str("</div>\n");
}

/// A plot area with linear x and linear or log-10 y.
struct Plot {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    log_y: bool,
}

impl Plot {
    fn px(&self, x: f64) -> f64 {
        let span = (self.x1 - self.x0).max(1e-12);
        LEFT + (x - self.x0) / span * (W - LEFT - RIGHT)
    }

    fn py(&self, y: f64) -> f64 {
        let (y, y0, y1) = if self.log_y {
            (y.max(1e-12).log10(), self.y0.log10(), self.y1.log10())
        } else {
            (y, self.y0, self.y1)
        };
        let span = (y1 - y0).max(1e-12);
        let f = ((y - y0) / span).clamp(0.0, 1.0);
        H - BOTTOM - f * (H - TOP - BOTTOM)
    }

    /// Axes, grid and labels.
    fn frame(&self, x_ticks: &[(f64, String)], y_ticks: &[(f64, String)], x_label: &str) -> String {
        let mut s = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}">"#
        );
        for (y, label) in y_ticks {
            let py = self.py(*y);
            let _ = write!(
                s,
                r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - RIGHT,
                LEFT - 6.0,
                py + 4.0,
                esc(label)
            );
        }
        for (x, label) in x_ticks {
            let px = self.px(*x);
            let _ = write!(
                s,
                r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#f2f2f2"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                H - BOTTOM,
                H - BOTTOM + 16.0,
                esc(label)
            );
        }
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{b:.1}" stroke="#999"/><line x1="{LEFT}" y1="{b:.1}" x2="{:.1}" y2="{b:.1}" stroke="#999"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            W - RIGHT,
            (LEFT + W - RIGHT) / 2.0,
            H - 10.0,
            esc(x_label),
            b = H - BOTTOM,
        );
        s
    }
}

fn polyline(points: &[(f64, f64)], color: &str, width: f64, dash: bool) -> String {
    if points.is_empty() {
        return String::new();
    }
    let pts: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    format!(
        r#"<polyline fill="none" stroke="{color}" stroke-width="{width}"{} points="{}"/>"#,
        if dash {
            r#" stroke-dasharray="5,4""#
        } else {
            ""
        },
        pts.join(" ")
    )
}

/// Ticks at 1-2-5 steps covering `0..=max`.
fn linear_ticks(max: f64, fmt: impl Fn(f64) -> String) -> Vec<(f64, String)> {
    if max <= 0.0 {
        return vec![(0.0, fmt(0.0))];
    }
    let raw = max / 6.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    (0..)
        .map(|i| i as f64 * step)
        .take_while(|v| *v <= max * 1.0001)
        .map(|v| (v, fmt(v)))
        .collect()
}

/// Ticks at 1, 2, 5 × powers of ten within `lo..=hi` (microseconds).
fn log_ticks(lo: f64, hi: f64) -> Vec<(f64, String)> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.max(1.0).log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v >= lo && v <= hi {
                ticks.push((v, tick_us(v as u64)));
            }
        }
        decade *= 10.0;
    }
    ticks
}

/// Compact axis labels: `500µs`, `2ms`, `1.5s`.
fn tick_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}µs"),
        1_000..=999_999 => format!("{}ms", us as f64 / 1e3),
        _ => format!("{}s", us as f64 / 1e6),
    }
}

/// `2026-11-25T09:23:59.902Z` (RFC 3339, UTC) from Unix milliseconds.
fn utc(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

fn secs(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else if x < 1.0 {
        format!("{:.0}ms", x * 1000.0)
    } else {
        format!("{x:.1}s")
    }
}

fn latency_range(values: impl Iterator<Item = u64>) -> (f64, f64) {
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if hi == 0 {
        return (1.0, 1000.0);
    }
    let lo = 10f64.powf((lo.max(1) as f64).log10().floor());
    let hi = 10f64.powf((hi as f64).log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

fn throughput_chart(r: &Report) -> String {
    let tl = &r.timeline;
    let width_s = tl.bucket_ms as f64 / 1000.0;
    if tl.buckets.is_empty() || width_s <= 0.0 {
        return "<p class=\"muted\">no data</p>".into();
    }
    let n = tl.buckets.len();
    let outcomes = present(r);
    // Stacked rates per bucket.
    let mut stacks = vec![vec![0.0; n]; outcomes.len() + 1];
    for (i, b) in tl.buckets.iter().enumerate() {
        let mut acc = 0.0;
        for (k, o) in outcomes.iter().enumerate() {
            acc += *b.answers.get(o.name()).unwrap_or(&0) as f64 / width_s;
            stacks[k + 1][i] = acc;
        }
    }
    let offered: Vec<f64> = tl.buckets.iter().map(|b| b.sent as f64 / width_s).collect();
    let ymax = stacks
        .last()
        .into_iter()
        .flatten()
        .chain(offered.iter())
        .fold(0.0f64, |m, v| m.max(*v))
        * 1.08;
    let plot = Plot {
        x0: 0.0,
        x1: n as f64 * width_s,
        y0: 0.0,
        y1: ymax.max(1.0),
        log_y: false,
    };
    let mut s = plot.frame(
        &linear_ticks(plot.x1, secs),
        &linear_ticks(plot.y1 / 1.0001, |v| format!("{v:.0}/s")),
        "time since start",
    );
    for (k, o) in outcomes.iter().enumerate() {
        let mut pts = Vec::with_capacity(4 * n);
        for (i, top) in stacks[k + 1].iter().enumerate() {
            let (a, b) = (i as f64 * width_s, (i + 1) as f64 * width_s);
            pts.push((plot.px(a), plot.py(*top)));
            pts.push((plot.px(b), plot.py(*top)));
        }
        for (i, bottom) in stacks[k].iter().enumerate().rev() {
            let (a, b) = (i as f64 * width_s, (i + 1) as f64 * width_s);
            pts.push((plot.px(b), plot.py(*bottom)));
            pts.push((plot.px(a), plot.py(*bottom)));
        }
        let p: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = write!(
            s,
            r#"<polygon fill="{c}" fill-opacity="0.75" stroke="{c}" stroke-width="0.5" points="{}"><title>{}</title></polygon>"#,
            p.join(" "),
            o.name(),
            c = color(*o)
        );
    }
    let mut line = Vec::with_capacity(2 * n);
    for (i, v) in offered.iter().enumerate() {
        line.push((plot.px(i as f64 * width_s), plot.py(*v)));
        line.push((plot.px((i + 1) as f64 * width_s), plot.py(*v)));
    }
    s.push_str(&polyline(&line, "#000", 1.2, true));
    s.push_str("</svg>\n");
    s
}

fn latency_chart(r: &Report) -> String {
    let tl = &r.timeline;
    let width_s = tl.bucket_ms as f64 / 1000.0;
    if tl.buckets.is_empty() {
        return "<p class=\"muted\">no data</p>".into();
    }
    let (lo, hi) = latency_range(
        tl.buckets
            .iter()
            .flat_map(|b| b.p50_us.values().chain(b.p99_us.values()).copied()),
    );
    // Only the span where requests were sent.
    let last = tl
        .buckets
        .iter()
        .rposition(|b| !b.p99_us.is_empty())
        .unwrap_or(0);
    let plot = Plot {
        x0: 0.0,
        x1: (last + 1) as f64 * width_s,
        y0: lo,
        y1: hi,
        log_y: true,
    };
    let mut s = plot.frame(
        &linear_ticks(plot.x1, secs),
        &log_ticks(lo, hi),
        "intended send time since start",
    );
    for o in present(r) {
        for (dash, pick) in [(true, 0), (false, 1)] {
            let pts: Vec<(f64, f64)> = tl
                .buckets
                .iter()
                .enumerate()
                .filter_map(|(i, b)| {
                    let m = if pick == 0 { &b.p50_us } else { &b.p99_us };
                    m.get(o.name())
                        .map(|v| (plot.px((i as f64 + 0.5) * width_s), plot.py(*v as f64)))
                })
                .collect();
            if pts.len() == 1 {
                let (x, y) = pts[0];
                let _ = write!(
                    s,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{}"/>"#,
                    color(o)
                );
            }
            s.push_str(&polyline(
                &pts,
                color(o),
                if dash { 1.0 } else { 1.8 },
                dash,
            ));
        }
    }
    s.push_str("</svg>\n");
    s
}

/// "Nines" of a percentile: 90 % → 1, 99 % → 2, ...
fn nines(p: f64) -> f64 {
    -(1.0 - (p / 100.0).min(0.999_999_9)).log10()
}

fn distribution_chart(r: &Report) -> String {
    let outcomes = present(r);
    let curves: Vec<(Outcome, &Vec<PercentilePoint>, &Vec<PercentilePoint>)> = outcomes
        .iter()
        .filter_map(|o| {
            r.outcomes
                .get(o.name())
                .map(|s| (*o, &s.distribution, &s.raw_distribution))
        })
        .collect();
    if curves.is_empty() {
        return "<p class=\"muted\">no data</p>".into();
    }
    let (lo, hi) = latency_range(
        curves
            .iter()
            .flat_map(|(_, c, raw)| c.iter().chain(raw.iter()).map(|p| p.us)),
    );
    // The max sits half a decade past the last real percentile.
    let last_nines = curves
        .iter()
        .flat_map(|(_, c, _)| c.iter())
        .filter(|p| p.percentile < 100.0)
        .map(|p| nines(p.percentile))
        .fold(1.0f64, f64::max);
    let max_x = last_nines + 0.5;
    let x_of = |p: f64| if p >= 100.0 { max_x } else { nines(p) };
    let plot = Plot {
        x0: 0.0,
        x1: max_x,
        y0: lo,
        y1: hi,
        log_y: true,
    };
    let labels = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"];
    let mut x_ticks: Vec<(f64, String)> = labels
        .iter()
        .enumerate()
        .filter(|(i, _)| (*i as f64) <= last_nines + 1e-9)
        .map(|(i, l)| (i as f64, l.to_string()))
        .collect();
    x_ticks.push((max_x, "max".into()));
    let mut s = plot.frame(&x_ticks, &log_ticks(lo, hi), "percentile");
    for (o, corrected, raw) in curves {
        for (dash, curve) in [(true, raw), (false, corrected)] {
            let pts: Vec<(f64, f64)> = curve
                .iter()
                .map(|p| (plot.px(x_of(p.percentile)), plot.py(p.us as f64)))
                .collect();
            s.push_str(&polyline(
                &pts,
                color(o),
                if dash { 1.0 } else { 1.8 },
                dash,
            ));
        }
    }
    s.push_str("</svg>\n");
    s
}

fn outcome_table(h: &mut String, r: &Report) {
    h.push_str(
        "<h2>Latency by outcome (corrected, from the intended send time)</h2>\n<table><tr><th>outcome</th><th>count</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>p99.99</th><th>max</th><th>raw p50</th><th>raw p99</th><th>raw max</th></tr>\n",
    );
    for o in present(r) {
        let s = &r.outcomes[o.name()];
        let c = &s.corrected;
        let _ = writeln!(
            h,
            "<tr><td><i class=\"sw\" style=\"background:{}\"></i>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            color(o),
            o.name(),
            s.count,
            fmt_us(c.p50_us),
            fmt_us(c.p90_us),
            fmt_us(c.p99_us),
            fmt_us(c.p999_us),
            fmt_us(c.p9999_us),
            fmt_us(c.max_us),
            fmt_us(s.raw.p50_us),
            fmt_us(s.raw.p99_us),
            fmt_us(s.raw.max_us),
        );
    }
    let a = &r.all;
    let _ = writeln!(
        h,
        "<tr><td><b>all answered</b></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td></td><td></td><td></td></tr></table>",
        a.count,
        fmt_us(a.p50_us),
        fmt_us(a.p90_us),
        fmt_us(a.p99_us),
        fmt_us(a.p999_us),
        fmt_us(a.p9999_us),
        fmt_us(a.max_us)
    );
    let lag = &r.schedule;
    let _ = writeln!(
        h,
        "<p class=\"muted\">Schedule lag: dispatch p99 {} (max {}), task start p99 {} (max {}); waiting for one of the {} connections p99 {} (max {}). Buyers by final outcome: {}.</p>",
        fmt_us(lag.dispatch_lag.p99_us),
        fmt_us(lag.dispatch_lag.max_us),
        fmt_us(lag.start_lag.p99_us),
        fmt_us(lag.start_lag.max_us),
        r.settings.connections,
        fmt_us(lag.connection_wait.p99_us),
        fmt_us(lag.connection_wait.max_us),
        esc(&r
            .buyers
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", "))
    );
    if !r.errors.is_empty() {
        h.push_str("<table><tr><th>error</th><th>count</th></tr>");
        for (k, v) in &r.errors {
            let _ = write!(h, "<tr><td>{}</td><td>{v}</td></tr>", esc(k));
        }
        h.push_str("</table>\n");
    }
}

fn audit_section(h: &mut String, r: &Report) {
    let Some(a) = &r.audit else {
        h.push_str("<h2>Audit</h2><p class=\"muted\">not run</p>\n");
        return;
    };
    let _ = writeln!(
        h,
        "<h2>Audit <span class=\"badge {}\">{}</span></h2>\n<p>stock {}, sold {} → {}, remaining {}, state {}; {} success answers = {} orders, {} units; {} timeouts.</p>",
        if a.passed { "pass" } else { "fail" },
        if a.passed { "passed" } else { "FAILED" },
        a.stock,
        a.sold_before,
        a.sold_after,
        a.remaining_after,
        esc(&a.state_after),
        a.success_answers,
        a.orders,
        a.units,
        a.timeouts
    );
    let _ = writeln!(h, "<p>Order feed: {}.</p>", esc(&feed_line(a)));
    h.push_str("<table><tr><th>check</th><th>result</th><th>detail</th></tr>");
    for c in &a.checks {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
            esc(&c.name),
            if c.passed { "ok" } else { "<b>FAIL</b>" },
            esc(&c.detail)
        );
    }
    h.push_str("</table>\n");
}

fn assertion_section(h: &mut String, r: &Report) {
    if r.assertions.is_empty() {
        return;
    }
    h.push_str(
        "<h2>Assertions</h2><table><tr><th>assertion</th><th>actual</th><th>result</th></tr>",
    );
    for a in &r.assertions {
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"l\">{}</td></tr>",
            esc(&a.expr),
            esc(&a.actual),
            if a.passed { "pass" } else { "<b>FAIL</b>" }
        );
    }
    h.push_str("</table>\n");
}

fn settings_section(h: &mut String, r: &Report) {
    let s = &r.settings;
    let _ = writeln!(
        h,
        "<h2>Settings</h2><p class=\"muted\">connections {}, client timeout {} ms, quantity {}, double-click share {} (gap {} ms), retries {} (backoff {}–{} ms), idempotency keys {}, user prefix <code>{}</code>, max lag {} ms, timeline bucket {} ms.</p>",
        s.connections,
        s.timeout_ms,
        s.quantity,
        s.double_click_share,
        s.double_click_gap_ms,
        s.retries,
        s.retry_backoff_ms,
        s.retry_max_backoff_ms,
        s.idempotency_keys,
        esc(&s.user_prefix),
        s.max_lag_ms,
        r.timeline.bucket_ms
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_cover_their_range() {
        let t = linear_ticks(1000.0, |v| format!("{v}"));
        assert_eq!(t.first().unwrap().0, 0.0);
        assert!(t.last().unwrap().0 <= 1000.0 && t.len() >= 4);
        let t = log_ticks(100.0, 100_000.0);
        assert_eq!(t.first().unwrap().1, "100µs");
        assert_eq!(t.last().unwrap().1, "100ms");
        assert!((nines(99.0) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn start_time_is_a_utc_date() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(utc(1_795_598_639_902), "2026-11-25T09:23:59.902Z");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<a&\">"), "&lt;a&amp;&quot;&gt;");
    }
}
