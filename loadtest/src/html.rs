//! The HTML report: one self-contained page (inline CSS and SVG, no
//! scripts, nothing fetched) with the summary, the audit and three plots:
//! answers per second over time, latency over time, and the latency
//! distribution by percentile.
//!
//! The markup is the askama template `templates/report.html`, which escapes
//! every value it writes; this module turns the report into what the
//! template shows: texts, table cells, and the plots' geometry (ticks and
//! shapes in pixel coordinates).

use std::collections::BTreeMap;
use std::fmt;

use askama::Template;

use crate::model::{Outcome, PercentilePoint, Report};

pub mod compare;
use crate::summary::{feed_line, fmt_us};

const W: f64 = 1100.0;
const H: f64 = 340.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 50.0;

/// Renders the report as one HTML page.
pub fn render(r: &Report) -> String {
    Page::of(r)
        .render()
        .expect("the report's template renders into a String")
}

/// What the page template shows.
#[derive(Template)]
#[template(path = "report.html")]
struct Page<'a> {
    r: &'a Report,
    verdict: &'static str,
    verdict_class: &'static str,
    started: String,
    invalid_reason: &'a str,
    cards: Vec<Card>,
    legend: Vec<LegendItem>,
    throughput: Chart,
    latency: Chart,
    in_flight: Chart,
    in_flight_legend: Vec<LegendItem>,
    connection_wait: Chart,
    statuses: Vec<StatusRow>,
    distribution: Chart,
    by_rank: Chart,
    rows: Vec<OutcomeRow>,
    all_cells: Vec<String>,
    lag: LagNote,
    buyers: String,
    feed: String,
}

impl<'a> Page<'a> {
    fn of(r: &'a Report) -> Page<'a> {
        Page {
            r,
            verdict: if r.passed() { "PASS" } else { "FAIL" },
            verdict_class: if r.passed() { "pass" } else { "fail" },
            started: utc(r.started_unix_ms),
            invalid_reason: r
                .invalid_reason
                .as_deref()
                .unwrap_or("the generator fell behind"),
            cards: cards(r),
            legend: legend(r),
            throughput: throughput_chart(r),
            latency: latency_chart(r),
            in_flight: in_flight_chart(r),
            in_flight_legend: vec![
                LegendItem {
                    color: IN_FLIGHT_COLOR,
                    name: "in flight",
                },
                LegendItem {
                    color: WAIT_COLOR,
                    name: "of them waiting for a connection",
                },
            ],
            connection_wait: connection_wait_chart(r),
            statuses: status_rows(r),
            distribution: distribution_chart(r),
            by_rank: rank_chart(r),
            rows: outcome_rows(r),
            all_cells: all_cells(r),
            lag: LagNote::of(r),
            buyers: counted(&r.buyers),
            feed: r.audit.as_ref().map(feed_line).unwrap_or_default(),
        }
    }
}

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

/// Outcomes that occurred, in their fixed order.
fn present(r: &Report) -> Vec<Outcome> {
    Outcome::ALL
        .into_iter()
        .filter(|o| r.outcomes.contains_key(o.name()))
        .collect()
}

/// `a 1, b 2`.
fn counted(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// === the page's parts ===

/// One headline number, with a note under it.
struct Card {
    label: &'static str,
    value: String,
    note: String,
}

fn card(label: &'static str, value: String) -> Card {
    Card {
        label,
        value,
        note: String::new(),
    }
}

/// `1,019`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line of the status-code table.
struct StatusRow {
    code: String,
    reason: &'static str,
    count: String,
    share: String,
}

/// HTTP answers by status, and the requests that got none.
fn status_rows(r: &Report) -> Vec<StatusRow> {
    let total = r.requests_sent.max(1) as f64;
    let share = |n: u64| format!("{:.2}%", n as f64 * 100.0 / total);
    let mut rows: Vec<StatusRow> = r
        .statuses
        .iter()
        .map(|(code, n)| StatusRow {
            code: code.to_string(),
            reason: hyper::StatusCode::from_u16(*code)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or(""),
            count: thousands(*n),
            share: share(*n),
        })
        .collect();
    let none = r.count(Outcome::NoAnswer);
    if none > 0 {
        rows.push(StatusRow {
            code: "-".into(),
            reason: "no answer",
            count: thousands(none),
            share: share(none),
        });
    }
    rows
}

/// The headline numbers.
fn cards(r: &Report) -> Vec<Card> {
    let so = r
        .sell_out
        .time_to_sell_out_s
        .map_or("-".to_string(), |s| format!("{s:.3}s"));
    let audit = match &r.audit {
        Some(a) if a.passed => "passed".to_string(),
        Some(_) => "FAILED".to_string(),
        None => "not run".to_string(),
    };
    // Orders, not answers: a double-click's second answer repeats the
    // first one's order. The audit's count adds the 504s it resolved.
    let orders = r.audit.as_ref().map_or(r.success_orders, |a| a.orders);
    let answers = r.count(Outcome::Success);
    vec![
        card("buyers", thousands(r.buyers_planned)),
        card("requests", thousands(r.requests_sent)),
        card("offered", format!("{:.0}/s", r.offered_rps)),
        card("throughput", format!("{:.0}/s", r.throughput_rps)),
        Card {
            label: "orders",
            value: thousands(orders),
            note: format!("{} success answers", thousands(answers)),
        },
        card("time to sell out", so),
        card("p99 all", fmt_us(r.all.p99_us)),
        Card {
            label: "schedule lag p99",
            value: fmt_us(r.schedule.start_lag.p99_us),
            note: format!(
                "connection wait p99 {}",
                fmt_us(r.schedule.connection_wait.p99_us)
            ),
        },
        card("audit", audit),
        card(
            "fairness",
            r.fairness
                .as_ref()
                .map_or("-".to_string(), |f| format!("{:.3}", f.fairness)),
        ),
    ]
}

/// One swatch of a plot's legend.
struct LegendItem {
    color: &'static str,
    name: &'static str,
}

fn legend(r: &Report) -> Vec<LegendItem> {
    present(r)
        .into_iter()
        .map(|o| LegendItem {
            color: color(o),
            name: o.name(),
        })
        .collect()
}

/// One outcome's line of the latency table.
struct OutcomeRow {
    color: &'static str,
    name: &'static str,
    /// Count, corrected p50 … max, raw p50, p99, max.
    cells: Vec<String>,
}

fn outcome_rows(r: &Report) -> Vec<OutcomeRow> {
    present(r)
        .into_iter()
        .map(|o| {
            let s = &r.outcomes[o.name()];
            let c = &s.corrected;
            let mut cells = vec![s.count.to_string()];
            cells.extend(
                [
                    c.p50_us,
                    c.p90_us,
                    c.p99_us,
                    c.p999_us,
                    c.p9999_us,
                    c.max_us,
                    s.raw.p50_us,
                    s.raw.p99_us,
                    s.raw.max_us,
                ]
                .map(fmt_us),
            );
            OutcomeRow {
                color: color(o),
                name: o.name(),
                cells,
            }
        })
        .collect()
}

/// Count and corrected latency over all answers.
fn all_cells(r: &Report) -> Vec<String> {
    let a = &r.all;
    let mut cells = vec![a.count.to_string()];
    cells.extend(
        [
            a.p50_us, a.p90_us, a.p99_us, a.p999_us, a.p9999_us, a.max_us,
        ]
        .map(fmt_us),
    );
    cells
}

/// The schedule's lag, under the latency table.
struct LagNote {
    dispatch_p99: String,
    dispatch_max: String,
    start_p99: String,
    start_max: String,
    wait_p99: String,
    wait_max: String,
}

impl LagNote {
    fn of(r: &Report) -> LagNote {
        let lag = &r.schedule;
        LagNote {
            dispatch_p99: fmt_us(lag.dispatch_lag.p99_us),
            dispatch_max: fmt_us(lag.dispatch_lag.max_us),
            start_p99: fmt_us(lag.start_lag.p99_us),
            start_max: fmt_us(lag.start_lag.max_us),
            wait_p99: fmt_us(lag.connection_wait.p99_us),
            wait_max: fmt_us(lag.connection_wait.max_us),
        }
    }
}

// === plots ===

/// A pixel coordinate, written with one decimal.
#[derive(Clone, Copy)]
struct Px(f64);

impl fmt::Display for Px {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1}", self.0)
    }
}

/// The fixed geometry every plot shares.
struct Frame {
    width: f64,
    height: f64,
    left: f64,
    top: f64,
    right: Px,
    bottom: Px,
    y_label_x: Px,
    x_label_x: Px,
    x_label_y: Px,
}

const FRAME: Frame = Frame {
    width: W,
    height: H,
    left: LEFT,
    top: TOP,
    right: Px(W - RIGHT),
    bottom: Px(H - BOTTOM),
    y_label_x: Px(LEFT - 6.0),
    x_label_x: Px((LEFT + W - RIGHT) / 2.0),
    x_label_y: Px(H - 10.0),
};

/// A grid line and its label.
struct Tick {
    /// Where the line is (y for the y axis, x for the x axis).
    at: Px,
    /// The label's y.
    label_at: Px,
    label: String,
}

/// What a plot draws, in order.
enum Shape {
    /// A filled band (one outcome's share of the answers).
    Area {
        color: &'static str,
        points: String,
        title: &'static str,
    },
    Line {
        color: &'static str,
        width: f64,
        dashed: bool,
        points: String,
        title: &'static str,
    },
    /// A vertical line with a label (the sell-out).
    Marker {
        x: Px,
        top: Px,
        bottom: Px,
        label_x: Px,
        label_y: Px,
        label: String,
    },
    /// A lone point, where a line would have one point only.
    Dot { x: Px, y: Px, color: &'static str },
}

/// One plot: its frame, ticks and shapes; or, without data, a note.
struct Chart {
    empty: bool,
    frame: Frame,
    y_ticks: Vec<Tick>,
    x_ticks: Vec<Tick>,
    x_label: &'static str,
    shapes: Vec<Shape>,
    /// `x0 x1` of a chart over time (empty for the others), written into
    /// the page so a check can compare the charts' ranges.
    x_range: String,
}

impl Chart {
    fn empty() -> Chart {
        Chart {
            empty: true,
            frame: FRAME,
            y_ticks: Vec::new(),
            x_ticks: Vec::new(),
            x_label: "",
            shapes: Vec::new(),
            x_range: String::new(),
        }
    }
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

    /// A chart on this plot area with its grid and labels, no shapes yet.
    fn chart(
        &self,
        x_ticks: &[(f64, String)],
        y_ticks: &[(f64, String)],
        x_label: &'static str,
    ) -> Chart {
        let y_ticks = y_ticks
            .iter()
            .map(|(y, label)| {
                let py = self.py(*y);
                Tick {
                    at: Px(py),
                    label_at: Px(py + 4.0),
                    label: label.clone(),
                }
            })
            .collect();
        let x_ticks = x_ticks
            .iter()
            .map(|(x, label)| Tick {
                at: Px(self.px(*x)),
                label_at: Px(H - BOTTOM + 16.0),
                label: label.clone(),
            })
            .collect();
        Chart {
            empty: false,
            frame: FRAME,
            y_ticks,
            x_ticks,
            x_label,
            shapes: Vec::new(),
            x_range: String::new(),
        }
    }
}

/// `x,y x,y ...` of an SVG `points` attribute.
fn points(pts: &[(f64, f64)]) -> String {
    pts.iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A line through `pts`, if there is any point; `title` names it.
fn line(
    pts: &[(f64, f64)],
    color: &'static str,
    width: f64,
    dashed: bool,
    title: &'static str,
) -> Option<Shape> {
    (!pts.is_empty()).then(|| Shape::Line {
        color,
        width,
        dashed,
        points: points(pts),
        title,
    })
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

/// The plot area of a chart over time: every one shares the timeline's
/// range, so their x axes line up.
fn time_plot(r: &Report, y0: f64, y1: f64, log_y: bool) -> Plot {
    let (x0, x1) = r.timeline.range_s();
    Plot {
        x0,
        x1: x1.max(x0 + 1e-3),
        y0,
        y1,
        log_y,
    }
}

/// A chart over time on `plot`: its grid, the range it covers (as an
/// attribute, for checks), and the sell-out marker.
fn time_chart(r: &Report, plot: &Plot, y_ticks: &[(f64, String)], x_label: &'static str) -> Chart {
    let mut chart = plot.chart(&linear_ticks(plot.x1, secs), y_ticks, x_label);
    chart.x_range = format!("{} {}", plot.x0, plot.x1);
    if let Some(t) = r.sell_out.time_to_sell_out_s {
        let x = Px(plot.px(t));
        chart.shapes.push(Shape::Marker {
            x,
            top: Px(TOP),
            bottom: Px(H - BOTTOM),
            label_x: Px(plot.px(t) + 4.0),
            label_y: Px(TOP + 12.0),
            label: format!("sold out {}", secs(t)),
        });
    }
    chart
}

/// Answers per second by outcome, one line each (not stacked: a few
/// thousand successes beside tens of thousands of refusals would be a
/// sliver), successes drawn last and thickest so nothing hides them.
fn throughput_chart(r: &Report) -> Chart {
    let tl = &r.timeline;
    let width_s = tl.bucket_ms as f64 / 1000.0;
    if tl.buckets.is_empty() || width_s <= 0.0 {
        return Chart::empty();
    }
    let rate = |n: u64| n as f64 / width_s;
    let ymax = tl
        .buckets
        .iter()
        .flat_map(|b| b.answers.values().copied().chain([b.sent]))
        .map(rate)
        .fold(0.0f64, f64::max)
        * 1.08;
    let plot = time_plot(r, 0.0, ymax.max(1.0), false);
    let mut chart = time_chart(
        r,
        &plot,
        &linear_ticks(plot.y1 / 1.0001, |v| format!("{v:.0}/s")),
        "time since start",
    );
    let steps = |value: &dyn Fn(&crate::model::TimelineBucket) -> f64| {
        let mut pts = Vec::with_capacity(2 * tl.buckets.len());
        for (i, b) in tl.buckets.iter().enumerate() {
            let v = plot.py(value(b));
            pts.push((plot.px(i as f64 * width_s), v));
            pts.push((plot.px((i + 1) as f64 * width_s), v));
        }
        pts
    };
    for o in present(r).into_iter().rev() {
        let pts = steps(&|b| rate(*b.answers.get(o.name()).unwrap_or(&0)));
        let width = if o == Outcome::Success { 2.6 } else { 1.4 };
        chart
            .shapes
            .extend(line(&pts, color(o), width, false, o.name()));
    }
    let offered = steps(&|b| rate(b.sent));
    chart.shapes.insert(
        0,
        line(&offered, "#000", 1.2, true, "offered").expect("buckets"),
    );
    chart
}

/// Requests in flight (holding a connection or waiting for one) and those
/// waiting, at the end of each interval, under the connections' cap.
fn in_flight_chart(r: &Report) -> Chart {
    let tl = &r.timeline;
    let width_s = tl.bucket_ms as f64 / 1000.0;
    if tl.buckets.is_empty() || width_s <= 0.0 {
        return Chart::empty();
    }
    let cap = r.settings.connections as f64;
    let ymax = tl
        .buckets
        .iter()
        .map(|b| b.in_flight as f64)
        .fold(cap, f64::max)
        * 1.08;
    let plot = time_plot(r, 0.0, ymax.max(1.0), false);
    let mut chart = time_chart(
        r,
        &plot,
        &linear_ticks(plot.y1 / 1.0001, |v| format!("{v:.0}")),
        "time since start",
    );
    let at_end = |value: fn(&crate::model::TimelineBucket) -> u64| -> Vec<(f64, f64)> {
        tl.buckets
            .iter()
            .enumerate()
            .map(|(i, b)| (plot.px((i + 1) as f64 * width_s), plot.py(value(b) as f64)))
            .collect()
    };
    let cap_line = [
        (plot.px(plot.x0), plot.py(cap)),
        (plot.px(plot.x1), plot.py(cap)),
    ];
    chart
        .shapes
        .extend(line(&cap_line, "#000", 1.0, true, "connections"));
    chart.shapes.extend(line(
        &at_end(|b| b.waiting),
        WAIT_COLOR,
        1.6,
        false,
        "waiting for a connection",
    ));
    chart.shapes.extend(line(
        &at_end(|b| b.in_flight),
        IN_FLIGHT_COLOR,
        2.0,
        false,
        "in flight",
    ));
    chart
}

const IN_FLIGHT_COLOR: &str = "#1565c0";
const WAIT_COLOR: &str = "#c62828";

/// The wait for a connection of the requests that started in each
/// interval: p99 and max.
fn connection_wait_chart(r: &Report) -> Chart {
    let tl = &r.timeline;
    let width_s = tl.bucket_ms as f64 / 1000.0;
    if tl
        .buckets
        .iter()
        .all(|b| b.connection_wait_max_us.is_none())
    {
        return Chart::empty();
    }
    let (lo, hi) = latency_range(tl.buckets.iter().flat_map(|b| {
        b.connection_wait_p99_us
            .into_iter()
            .chain(b.connection_wait_max_us)
    }));
    let plot = time_plot(r, lo, hi, true);
    let mut chart = time_chart(r, &plot, &log_ticks(lo, hi), "request start since start");
    for (dash, pick) in [(true, 1), (false, 0)] {
        let pts: Vec<(f64, f64)> = tl
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let v = if pick == 0 {
                    b.connection_wait_p99_us
                } else {
                    b.connection_wait_max_us
                };
                v.map(|v| (plot.px((i as f64 + 0.5) * width_s), plot.py(v as f64)))
            })
            .collect();
        let name = if dash { "max" } else { "p99" };
        chart.shapes.extend(line(
            &pts,
            WAIT_COLOR,
            if dash { 1.0 } else { 1.8 },
            dash,
            name,
        ));
    }
    chart
}

/// Buyers' final outcomes by arrival rank, stacked shares per group of
/// ranks; a dashed line where the first `stock` buyers end.
fn rank_chart(r: &Report) -> Chart {
    let Some(f) = r.fairness.as_ref().filter(|f| !f.by_rank.is_empty()) else {
        return Chart::empty();
    };
    let outcomes = present(r);
    let end = f.by_rank.last().map_or(1, |g| g.last + 1) as f64;
    let plot = Plot {
        x0: 0.0,
        x1: end,
        y0: 0.0,
        y1: 1.0,
        log_y: false,
    };
    let mut chart = plot.chart(
        &linear_ticks(end, |v| format!("{v:.0}")),
        &linear_ticks(1.0, |v| format!("{:.0}%", v * 100.0)),
        "arrival rank (intended)",
    );
    let mut below = vec![0.0; f.by_rank.len()];
    for o in &outcomes {
        let mut top = below.clone();
        for (i, g) in f.by_rank.iter().enumerate() {
            let total: u64 = g.outcomes.values().sum();
            let n = *g.outcomes.get(o.name()).unwrap_or(&0);
            top[i] += n as f64 / total.max(1) as f64;
        }
        let mut pts = Vec::with_capacity(4 * f.by_rank.len());
        for (g, t) in f.by_rank.iter().zip(&top) {
            pts.push((plot.px(g.first as f64), plot.py(*t)));
            pts.push((plot.px((g.last + 1) as f64), plot.py(*t)));
        }
        for (g, b) in f.by_rank.iter().zip(&below).rev() {
            pts.push((plot.px((g.last + 1) as f64), plot.py(*b)));
            pts.push((plot.px(g.first as f64), plot.py(*b)));
        }
        chart.shapes.push(Shape::Area {
            color: color(*o),
            points: points(&pts),
            title: o.name(),
        });
        below = top;
    }
    let x = plot.px(f.first_buyers as f64);
    chart.shapes.extend(line(
        &[(x, plot.py(0.0)), (x, plot.py(1.0))],
        "#000",
        1.2,
        true,
        "first stock buyers",
    ));
    chart
}

fn latency_chart(r: &Report) -> Chart {
    let tl = &r.timeline;
    let width_s = tl.bucket_ms as f64 / 1000.0;
    if tl.buckets.is_empty() {
        return Chart::empty();
    }
    let (lo, hi) = latency_range(
        tl.buckets
            .iter()
            .flat_map(|b| b.p50_us.values().chain(b.p99_us.values()).copied()),
    );
    // The same range as the answers' chart, so the two line up.
    let plot = time_plot(r, lo, hi, true);
    let mut chart = time_chart(
        r,
        &plot,
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
            if let [(x, y)] = pts[..] {
                chart.shapes.push(Shape::Dot {
                    x: Px(x),
                    y: Px(y),
                    color: color(o),
                });
            }
            let width = if dash { 1.0 } else { 1.8 };
            chart
                .shapes
                .extend(line(&pts, color(o), width, dash, o.name()));
        }
    }
    chart
}

/// "Nines" of a percentile: 90 % → 1, 99 % → 2, ...
fn nines(p: f64) -> f64 {
    -(1.0 - (p / 100.0).min(0.999_999_9)).log10()
}

fn distribution_chart(r: &Report) -> Chart {
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
        return Chart::empty();
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
    let (plot, x_ticks) = percentile_frame(lo, hi, last_nines);
    let max_x = plot.x1;
    let x_of = |p: f64| if p >= 100.0 { max_x } else { nines(p) };
    let mut chart = plot.chart(&x_ticks, &log_ticks(lo, hi), "percentile");
    for (o, corrected, raw) in curves {
        for (dash, curve) in [(true, raw), (false, corrected)] {
            let pts: Vec<(f64, f64)> = curve
                .iter()
                .map(|p| (plot.px(x_of(p.percentile)), plot.py(p.us as f64)))
                .collect();
            let width = if dash { 1.0 } else { 1.8 };
            chart
                .shapes
                .extend(line(&pts, color(o), width, dash, o.name()));
        }
    }
    chart
}

/// The frame of a latency-by-percentile chart: percentiles in nines on x,
/// up to half a decade past the last real one (`last_nines`), where the
/// max sits; latency from `lo` to `hi` on a log y.
fn percentile_frame(lo: f64, hi: f64, last_nines: f64) -> (Plot, Vec<(f64, String)>) {
    let max_x = last_nines + 0.5;
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
    (plot, x_ticks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AssertionResult, Audit, Check, FeedAudit};

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
        let r = Report {
            sale_id: "<a&\">".into(),
            ..Default::default()
        };
        let html = render(&r);
        assert!(
            html.contains("sale <code>&#60;a&#38;&#34;&#62;</code>"),
            "{html}"
        );
        assert!(!html.contains("<a&"));
    }

    /// Every text the page shows from outside (the sale id and settings
    /// given on the command line, and what the gateway answered: error
    /// kinds, sale state, check details, order ids) comes out as text.
    #[test]
    fn hostile_text_cannot_open_a_script() {
        let evil = "<script>alert(1)</script>";
        let mut r = Report {
            sale_id: evil.into(),
            target: evil.into(),
            profile: evil.into(),
            valid: false,
            invalid_reason: Some(evil.into()),
            ..Default::default()
        };
        r.settings.user_prefix = evil.into();
        r.errors.insert(evil.into(), 3);
        r.buyers.insert(evil.into(), 1);
        r.assertions.push(AssertionResult {
            expr: evil.into(),
            actual: evil.into(),
            passed: false,
        });
        r.audit = Some(Audit {
            state_after: evil.into(),
            checks: vec![Check {
                name: evil.into(),
                passed: false,
                detail: evil.into(),
            }],
            feed: Some(FeedAudit {
                error: Some(evil.into()),
                ..Default::default()
            }),
            ..audit()
        });
        let html = render(&r);
        assert!(!html.contains("<script"), "{html}");
        let shown = html
            .matches("&#60;script&#62;alert(1)&#60;/script&#62;")
            .count();
        // Title and heading, target, profile, invalid reason, error kind,
        // buyers, state, feed, check name and detail, assertion expression
        // and value, user prefix.
        assert_eq!(shown, 14, "{html}");
    }

    fn audit() -> Audit {
        Audit {
            sale_id: String::new(),
            stock: 1,
            per_user_limit: 1,
            sold_before: 0,
            sold_after: 1,
            remaining_after: 0,
            state_after: String::new(),
            success_answers: 1,
            orders: 1,
            units: 1,
            timeouts: 0,
            timeouts_resolved: Default::default(),
            oversell: 0,
            users_over_limit: 0,
            missing: 0,
            unrecorded: 0,
            unconfirmed: 0,
            feed: None,
            checks: Vec::new(),
            passed: false,
        }
    }
}
