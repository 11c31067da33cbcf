//! The HTML page of `loadtest compare --html`: the two runs' table and
//! their plots overlaid (answers per second and latency over time, latency
//! by percentile). Each outcome keeps its colour; run a is solid, run b
//! dashed.

use askama::Template;

use super::{
    color, latency_range, line, linear_ticks, log_ticks, nines, percentile_frame, secs, utc, Chart,
    LegendItem, Plot, Shape,
};
use crate::compare::{rows, Row};
use crate::model::{Outcome, Report};

/// Renders the comparison of `a` and `b` (named as given on the command
/// line) as one self-contained page.
pub fn render(a: &Report, b: &Report, a_name: &str, b_name: &str) -> String {
    let runs = [(a, a_name), (b, b_name)];
    ComparePage {
        runs: runs
            .iter()
            .map(|(r, name)| RunLine {
                name: name.to_string(),
                target: r.target.clone(),
                sale: r.sale_id.clone(),
                profile: r.profile.clone(),
                started: utc(r.started_unix_ms),
                valid: r.valid,
            })
            .collect(),
        rows: rows(a, b)
            .into_iter()
            .map(|row: Row| {
                [
                    row.name.clone(),
                    row.show(row.a),
                    row.show(row.b),
                    row.show_ratio(),
                ]
            })
            .collect(),
        legend: present(a, b)
            .into_iter()
            .map(|o| LegendItem {
                color: color(o),
                name: o.name(),
            })
            .collect(),
        answers: answers_chart(a, b),
        latency: latency_chart(a, b),
        distribution: distribution_chart(a, b),
    }
    .render()
    .expect("the comparison's template renders into a String")
}

#[derive(Template)]
#[template(path = "compare.html")]
struct ComparePage {
    runs: Vec<RunLine>,
    /// Figure, a, b, b/a.
    rows: Vec<[String; 4]>,
    legend: Vec<LegendItem>,
    answers: Chart,
    latency: Chart,
    distribution: Chart,
}

struct RunLine {
    name: String,
    target: String,
    sale: String,
    profile: String,
    started: String,
    valid: bool,
}

/// Outcomes of either run, in their fixed order.
fn present(a: &Report, b: &Report) -> Vec<Outcome> {
    Outcome::ALL
        .into_iter()
        .filter(|o| a.outcomes.contains_key(o.name()) || b.outcomes.contains_key(o.name()))
        .collect()
}

/// The time range both runs fit in.
fn time_range(a: &Report, b: &Report) -> f64 {
    a.timeline.range_s().1.max(b.timeline.range_s().1).max(1e-3)
}

fn answers_chart(a: &Report, b: &Report) -> Chart {
    let rate = |r: &Report, n: u64| n as f64 * 1000.0 / r.timeline.bucket_ms.max(1) as f64;
    let ymax = [a, b]
        .iter()
        .flat_map(|r| {
            r.timeline
                .buckets
                .iter()
                .flat_map(|k| k.answers.values().map(|n| rate(r, *n)))
        })
        .fold(0.0f64, f64::max)
        * 1.08;
    if ymax <= 0.0 {
        return Chart::empty();
    }
    let plot = Plot {
        x0: 0.0,
        x1: time_range(a, b),
        y0: 0.0,
        y1: ymax,
        log_y: false,
    };
    let mut chart = plot.chart(
        &linear_ticks(plot.x1, secs),
        &linear_ticks(plot.y1 / 1.0001, |v| format!("{v:.0}/s")),
        "time since start",
    );
    chart.x_range = format!("{} {}", plot.x0, plot.x1);
    for o in present(a, b).into_iter().rev() {
        for (dashed, r) in [(false, a), (true, b)] {
            let w = r.timeline.bucket_ms as f64 / 1000.0;
            let mut pts = Vec::new();
            for (i, k) in r.timeline.buckets.iter().enumerate() {
                let y = plot.py(rate(r, *k.answers.get(o.name()).unwrap_or(&0)));
                pts.push((plot.px(i as f64 * w), y));
                pts.push((plot.px((i + 1) as f64 * w), y));
            }
            let width = if o == Outcome::Success { 2.4 } else { 1.3 };
            chart
                .shapes
                .extend(line(&pts, color(o), width, dashed, o.name()));
        }
    }
    chart
}

fn latency_chart(a: &Report, b: &Report) -> Chart {
    let (lo, hi) = latency_range([a, b].iter().flat_map(|r| {
        r.timeline
            .buckets
            .iter()
            .flat_map(|k| k.p99_us.values().copied())
    }));
    if [a, b].iter().all(|r| r.timeline.buckets.is_empty()) {
        return Chart::empty();
    }
    let plot = Plot {
        x0: 0.0,
        x1: time_range(a, b),
        y0: lo,
        y1: hi,
        log_y: true,
    };
    let mut chart = plot.chart(
        &linear_ticks(plot.x1, secs),
        &log_ticks(lo, hi),
        "intended send time since start (p99)",
    );
    chart.x_range = format!("{} {}", plot.x0, plot.x1);
    for o in present(a, b) {
        for (dashed, r) in [(false, a), (true, b)] {
            let w = r.timeline.bucket_ms as f64 / 1000.0;
            let pts: Vec<(f64, f64)> = r
                .timeline
                .buckets
                .iter()
                .enumerate()
                .filter_map(|(i, k)| {
                    k.p99_us
                        .get(o.name())
                        .map(|v| (plot.px((i as f64 + 0.5) * w), plot.py(*v as f64)))
                })
                .collect();
            chart
                .shapes
                .extend(line(&pts, color(o), 1.6, dashed, o.name()));
        }
    }
    chart
}

fn distribution_chart(a: &Report, b: &Report) -> Chart {
    let curves: Vec<_> = [a, b]
        .iter()
        .flat_map(|r| r.outcomes.values().flat_map(|s| s.distribution.iter()))
        .collect();
    if curves.is_empty() {
        return Chart::empty();
    }
    let (lo, hi) = latency_range(curves.iter().map(|p| p.us));
    let last = curves
        .iter()
        .filter(|p| p.percentile < 100.0)
        .map(|p| nines(p.percentile))
        .fold(1.0f64, f64::max);
    let (plot, x_ticks) = percentile_frame(lo, hi, last);
    let max_x = plot.x1;
    let mut chart = plot.chart(&x_ticks, &log_ticks(lo, hi), "percentile (corrected)");
    for o in present(a, b) {
        for (dashed, r) in [(false, a), (true, b)] {
            let Some(s) = r.outcomes.get(o.name()) else {
                continue;
            };
            let pts: Vec<(f64, f64)> = s
                .distribution
                .iter()
                .map(|p| {
                    let x = if p.percentile >= 100.0 {
                        max_x
                    } else {
                        nines(p.percentile)
                    };
                    (plot.px(x), plot.py(p.us as f64))
                })
                .collect();
            chart
                .shapes
                .extend(line(&pts, color(o), 1.6, dashed, o.name()));
        }
    }
    chart
}
