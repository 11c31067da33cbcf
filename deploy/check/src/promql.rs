//! The metric selectors of a PromQL expression (as written in rules and
//! Grafana panels), so each metric name and label matcher can be checked
//! against what the processes really expose. `promql-parser` reads the
//! expression as Prometheus does; this module walks its tree for the
//! selectors and the labels the expression groups or matches on.

use std::collections::BTreeSet;

use promql_parser::label::{Labels, MatchOp};
use promql_parser::parser::{self, Expr, LabelModifier, VectorSelector};
use promql_parser::util::{walk_expr, ExprVisitor};

/// `metric{label op "value", ...}` as written in an expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    /// The metric name, written before the braces or as `__name__="..."`;
    /// empty for a selector that names none (`{__name__=~"seckill_.*"}`).
    pub metric: String,
    /// Every other matcher, in the order written.
    pub matchers: Vec<Matcher>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    pub label: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: String,
    /// The value as written (a regex unanchored, a Grafana `$variable`
    /// kept).
    pub value: String,
}

/// What an expression refers to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Instant and range selectors, in the order written.
    pub selectors: Vec<Selector>,
    /// Labels named in `by (...)`, `without (...)`, `on (...)`,
    /// `ignoring (...)`, `group_left (...)`, `group_right (...)`.
    pub grouping: BTreeSet<String>,
}

/// The selectors and grouping labels of `expr`, which may use Grafana's
/// variables: `$__rate_interval` and the like as a range, `$sale` inside a
/// matcher's value.
pub fn references(expr: &str) -> Result<References, String> {
    let promql = without_grafana_ranges(expr)?;
    let tree = parser::parse(&promql).map_err(|e| format!("{e}: {expr}"))?;
    let mut refs = References::default();
    walk_expr(&mut refs, &tree)?;
    Ok(refs)
}

impl ExprVisitor for References {
    type Error = String;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, String> {
        match expr {
            Expr::VectorSelector(vs) => self.selectors.push(selector(vs)),
            Expr::MatrixSelector(ms) => self.selectors.push(selector(&ms.vs)),
            Expr::Aggregate(agg) => {
                if let Some(modifier) = &agg.modifier {
                    self.group(modifier.labels());
                }
                // The walk skips the parameter (`topk(5, ...)`,
                // `quantile(scalar(q), ...)`), which may select too.
                if let Some(param) = &agg.param {
                    walk_expr(self, param)?;
                }
            }
            Expr::Binary(bin) => {
                if let Some(modifier) = &bin.modifier {
                    if let Some(matching) = &modifier.matching {
                        match matching {
                            LabelModifier::Include(l) | LabelModifier::Exclude(l) => self.group(l),
                        }
                    }
                    if let Some(extra) = modifier.card.labels() {
                        self.group(extra);
                    }
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

impl References {
    fn group(&mut self, labels: &Labels) {
        self.grouping.extend(labels.labels.iter().cloned());
    }
}

fn selector(vs: &VectorSelector) -> Selector {
    let mut metric = vs.name.clone();
    let mut matchers = Vec::new();
    let all = vs
        .matchers
        .matchers
        .iter()
        .chain(vs.matchers.or_matchers.iter().flatten());
    for m in all {
        if m.name == "__name__" && m.op == MatchOp::Equal {
            // `x{...}` and `{__name__="x", ...}` are the same selector.
            if metric.is_none() || metric.as_ref() == Some(&m.value) {
                metric = Some(m.value.clone());
                continue;
            }
        }
        matchers.push(Matcher {
            label: m.name.clone(),
            op: m.op.to_string(),
            value: m.value.clone(),
        });
    }
    Selector {
        metric: metric.unwrap_or_default(),
        matchers,
    }
}

/// `expr` with every Grafana variable used as a range or subquery step
/// (`[$__rate_interval]`, `[${window}:$__interval]`) replaced by a duration,
/// so that PromQL can read it. Grafana substitutes variables as text before
/// Prometheus sees the query, so no PromQL parser knows them; this scan only
/// needs to tell quoted strings (where `$sale` stays, as part of a value)
/// from the rest. A variable anywhere else is refused: the checks could not
/// say what it stands for.
fn without_grafana_ranges(expr: &str) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    let mut quote: Option<char> = None;
    let mut brackets = 0usize;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            out.push(c);
            if c == '\\' && q != '`' {
                out.extend(chars.next());
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '[' => brackets += 1,
            ']' => brackets = brackets.saturating_sub(1),
            '#' => {
                // A comment runs to the end of the line; PromQL skips it.
                while chars.next_if(|&c| c != '\n').is_some() {}
                continue;
            }
            '$' => {
                let mut name = String::new();
                if chars.next_if_eq(&'{').is_some() {
                    while let Some(c) = chars.next_if(|&c| c != '}') {
                        name.push(c);
                    }
                    if chars.next().is_none() {
                        return Err(format!("unclosed ${{ in {expr}"));
                    }
                } else {
                    while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_') {
                        name.push(c);
                    }
                }
                if brackets == 0 {
                    return Err(format!(
                        "Grafana variable ${name} outside a range or a string in {expr}"
                    ));
                }
                // Any duration does: the checks look at selectors, not at
                // windows.
                out.push_str("5m");
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(expr: &str) -> Vec<String> {
        references(expr)
            .unwrap()
            .selectors
            .into_iter()
            .map(|s| s.metric)
            .collect()
    }

    fn grouping(expr: &str) -> Vec<String> {
        references(expr).unwrap().grouping.into_iter().collect()
    }

    fn matcher(label: &str, op: &str, value: &str) -> Matcher {
        Matcher {
            label: label.into(),
            op: op.into(),
            value: value.into(),
        }
    }

    #[test]
    fn finds_metrics_behind_functions_and_aggregations() {
        assert_eq!(
            metrics(
                "histogram_quantile(0.99, sum by (outcome, le) (rate(a_bucket{sale=~\"$sale\"}[$__rate_interval])))"
            ),
            ["a_bucket"]
        );
        assert_eq!(
            metrics("sum(rate(x_total[5m])) / sum without (outcome) (y) > bool 0.5"),
            ["x_total", "y"]
        );
        assert_eq!(
            metrics("r:rate1m / ignoring (outcome) group_left sum(r:rate1m)"),
            ["r:rate1m", "r:rate1m"]
        );
        assert_eq!(
            metrics("a == 0 and on (sale) b > 0 unless c offset 5m"),
            ["a", "b", "c"]
        );
        assert_eq!(metrics("deriv(q:max[2m]) > 0"), ["q:max"]);
        assert_eq!(metrics("max_over_time(q[10m:1m])"), ["q"]);
        assert_eq!(metrics("absent(up{job=\"x\"} == 1)"), ["up"]);
    }

    #[test]
    fn reads_matchers_and_grouping() {
        let r = references(
            "sum by (result) (rate(c_total{result=~\"ok|error\", job!=\"x\"}[1m])) / on () group_left sum(d)",
        )
        .unwrap();
        assert_eq!(r.grouping.iter().collect::<Vec<_>>(), ["result"]);
        assert_eq!(
            r.selectors[0].matchers,
            [
                matcher("result", "=~", "ok|error"),
                matcher("job", "!=", "x")
            ]
        );
        assert_eq!(r.selectors[1].metric, "d");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(references("x{a=\"b\"").is_err());
        assert!(references("x{a}").is_err());
        assert!(references("rate(x[5m)").is_err());
        // Not PromQL at all, and PromQL that Prometheus refuses.
        assert!(references("label_values(x, sale)").is_err());
        assert!(references("rate(x)").is_err());
        assert!(references("sum by (le) (x) / on (sale) group_left (le) y{a=~\"(\"}").is_err());
    }

    // === One test per kind of expression deploy/ uses ===

    /// Panels "scrape targets up", "ready", "alerts firing"; alerts on `up`.
    #[test]
    fn a_bare_selector_with_matchers() {
        let r = references(r#"ALERTS{alertname=~"Seckill.*", alertstate="firing"}"#).unwrap();
        assert_eq!(
            r.selectors,
            [Selector {
                metric: "ALERTS".into(),
                matchers: vec![
                    matcher("alertname", "=~", "Seckill.*"),
                    matcher("alertstate", "=", "firing"),
                ],
            }]
        );
        assert!(r.grouping.is_empty());
        // `__name__` is the metric, however it is written.
        let r = references(r#"{__name__="up", job="seckill-readyz"}"#).unwrap();
        assert_eq!(r.selectors[0].metric, "up");
        assert_eq!(
            r.selectors[0].matchers,
            [matcher("job", "=", "seckill-readyz")]
        );
    }

    /// `sum(seckill_gateway_waiting_requests)`.
    #[test]
    fn an_aggregation_without_grouping() {
        let r = references("sum(seckill_gateway_waiting_requests)").unwrap();
        assert_eq!(r.selectors.len(), 1);
        assert_eq!(r.selectors[0].metric, "seckill_gateway_waiting_requests");
        assert!(r.selectors[0].matchers.is_empty());
        assert!(r.grouping.is_empty());
    }

    /// `sum by (sale) (rate(..._total{sale=~"$sale"}[$__rate_interval]))`,
    /// and the same with the grouping written after the body.
    #[test]
    fn an_aggregation_by_labels_over_a_rate_with_a_grafana_range() {
        for expr in [
            r#"sum by (sale) (rate(seckill_tokens_taken_total{sale=~"$sale"}[$__rate_interval]))"#,
            r#"sum(rate(seckill_tokens_taken_total{sale=~"${sale}"}[${__rate_interval}])) by (sale)"#,
        ] {
            let r = references(expr).unwrap();
            assert_eq!(
                r.selectors[0].metric, "seckill_tokens_taken_total",
                "{expr}"
            );
            assert_eq!(r.selectors[0].matchers[0].label, "sale", "{expr}");
            assert_eq!(r.selectors[0].matchers[0].op, "=~", "{expr}");
            // The variable is kept, so a check knows it is one.
            assert!(r.selectors[0].matchers[0].value.contains('$'), "{expr}");
            assert_eq!(grouping(expr), ["sale"], "{expr}");
        }
    }

    /// `sum without (outcome) (seckill:gateway_requests:rate1m)`.
    #[test]
    fn an_aggregation_without_labels_over_a_recorded_series() {
        let expr = "sum without (outcome) (seckill:gateway_requests:rate1m)";
        assert_eq!(metrics(expr), ["seckill:gateway_requests:rate1m"]);
        assert_eq!(grouping(expr), ["outcome"]);
    }

    /// `histogram_quantile(0.99, sum by (outcome, le) (rate(..._bucket[1m])))`.
    #[test]
    fn a_quantile_of_a_histogram() {
        let expr = "histogram_quantile(0.99, sum by (outcome, le) (rate(seckill_gateway_request_duration_seconds_bucket[1m])))";
        assert_eq!(
            metrics(expr),
            ["seckill_gateway_request_duration_seconds_bucket"]
        );
        assert_eq!(grouping(expr), ["le", "outcome"]);
    }

    /// Ratios and sums of series: the callback error share, tokens issued
    /// plus discarded, expired over (processed + expired).
    #[test]
    fn arithmetic_between_series_compared_with_a_number() {
        let expr = r#"sum(rate(seckill_callback_total{result="error"}[5m]))
            / sum(rate(seckill_callback_total{result=~"ok|error"}[5m])) > 0.01"#;
        let r = references(expr).unwrap();
        assert_eq!(
            r.selectors
                .iter()
                .map(|s| &s.matchers[0])
                .collect::<Vec<_>>(),
            [
                &matcher("result", "=", "error"),
                &matcher("result", "=~", "ok|error")
            ]
        );
        assert_eq!(
            metrics(
                "seckill:service_expired:rate1m\n  / (seckill:service_processed:rate1m + seckill:service_expired:rate1m)"
            ),
            [
                "seckill:service_expired:rate1m",
                "seckill:service_processed:rate1m",
                "seckill:service_expired:rate1m"
            ]
        );
        let expr = "sum by (sale) (rate(seckill_tokens_issued_total[1m]))\n  + sum by (sale) (rate(seckill_tokens_discarded_total[1m]))";
        assert_eq!(
            metrics(expr),
            [
                "seckill_tokens_issued_total",
                "seckill_tokens_discarded_total"
            ]
        );
        assert_eq!(grouping(expr), ["sale"]);
    }

    /// `seckill:gateway_requests:ratio_rate1m{outcome="overloaded"} > 0.05`,
    /// `up{...} == 0`.
    #[test]
    fn a_recorded_series_with_a_matcher_compared_with_a_number() {
        let r = references(r#"seckill:gateway_requests:ratio_rate1m{outcome="overloaded"} > 0.05"#)
            .unwrap();
        assert_eq!(
            r.selectors[0].metric,
            "seckill:gateway_requests:ratio_rate1m"
        );
        assert_eq!(
            r.selectors[0].matchers,
            [matcher("outcome", "=", "overloaded")]
        );
        assert_eq!(
            metrics(r#"up{job=~"seckill-gateway|seckill-service"} == 0"#),
            ["up"]
        );
    }

    /// `a == 0 and on (sale) b > 0`; `max by (sale) (q) > 100 and deriv(r[2m]) > 0`.
    #[test]
    fn a_conjunction_matched_on_labels() {
        let expr =
            "seckill:tokens_generated:rate1m == 0\n  and on (sale) seckill:stock_remaining:min > 0";
        assert_eq!(
            metrics(expr),
            [
                "seckill:tokens_generated:rate1m",
                "seckill:stock_remaining:min"
            ]
        );
        assert_eq!(grouping(expr), ["sale"]);
        let expr = "max by (sale) (seckill_queue_depth) > 100\n  and deriv(seckill:queue_depth:max[2m]) > 0";
        assert_eq!(
            metrics(expr),
            ["seckill_queue_depth", "seckill:queue_depth:max"]
        );
        assert_eq!(grouping(expr), ["sale"]);
    }

    /// `a / ignoring (outcome) group_left sum without (outcome) (a)`, and
    /// the labels `group_left (...)` copies.
    #[test]
    fn a_many_to_one_division() {
        let expr = "seckill:gateway_requests:rate1m\n  / ignoring (outcome) group_left\nsum without (outcome) (seckill:gateway_requests:rate1m)";
        assert_eq!(
            metrics(expr),
            [
                "seckill:gateway_requests:rate1m",
                "seckill:gateway_requests:rate1m"
            ]
        );
        assert_eq!(grouping(expr), ["outcome"]);
        assert_eq!(
            grouping("a / on (sale) group_right (instance) b"),
            ["instance", "sale"]
        );
    }

    /// `absent(up{job="seckill-service"} == 1)`.
    #[test]
    fn absent_of_a_comparison() {
        let r = references(r#"absent(up{job="seckill-service"} == 1)"#).unwrap();
        assert_eq!(r.selectors[0].metric, "up");
        assert_eq!(
            r.selectors[0].matchers,
            [matcher("job", "=", "seckill-service")]
        );
    }

    /// Selectors in an aggregation's parameter count too.
    #[test]
    fn an_aggregation_parameter_that_selects() {
        assert_eq!(
            metrics("quantile(scalar(q), sum by (sale) (x))"),
            ["q", "x"]
        );
    }

    #[test]
    fn grafana_variables_only_as_ranges_or_inside_strings() {
        assert_eq!(
            without_grafana_ranges(r#"rate(x{s=~"$sale"}[$__rate_interval]) # $not_a_range"#)
                .unwrap(),
            r#"rate(x{s=~"$sale"}[5m]) "#
        );
        assert_eq!(
            without_grafana_ranges(r#"max_over_time(x{a="\"$b"}[${w}:$__interval])"#).unwrap(),
            r#"max_over_time(x{a="\"$b"}[5m:5m])"#
        );
        assert!(references("topk($n, x)").is_err());
        assert!(references("rate(x[${w)").is_err());
    }
}
