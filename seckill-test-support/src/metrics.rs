//! Prometheus text exposition, read one way for every test: a page (or
//! several, merged) becomes a [`Scrape`] that answers what the tests ask —
//! the value of one series, which sample names are exposed, with which
//! label names and values, and the declared `TYPE` of each metric family.
//!
//! The reading is `prometheus-parse`'s. That crate is lenient where a test
//! wants to be strict, so [`Scrape::parse`] checks each line first and
//! refuses, with the line number, what the crate would skip or misread:
//!
//! - a line that is neither a comment nor a sample (the crate ignores it);
//! - a value that is not a number (the crate drops the sample);
//! - a `TYPE` other than counter, gauge, histogram, summary or untyped (the
//!   crate calls it untyped);
//! - label values holding `\`, `"`, `,`, `=` or `}`: the crate splits the
//!   label list on `,` and `=` and does not unescape, so it would read them
//!   wrong. The project's processes never write such values (sale ids are
//!   `[A-Za-z0-9_-]`), so for them this is no loss;
//! - metric names with `:` (recording-rule names; no process exposes one)
//!   and empty braces `name{}`, which the crate's sample pattern does not
//!   match;
//! - a histogram bucket without `le`, or with one that is not a number
//!   (the crate drops it or calls it untyped).
//!
//! Histograms and summaries come back from the crate folded into one value
//! per family; here they are unfolded again into the samples of the page
//! (`name_bucket{le="…"}`, `name{quantile="…"}`), so a test sees the names
//! PromQL sees. `le` and `quantile` are numbers to the crate and are written
//! back in Rust's shortest form (`0.005`, `1`, `+Inf`) — which is also how
//! metrics-exporter-prometheus writes them — and a series asked for with
//! `le="1.0"` finds `le="1"`.

use std::collections::{BTreeMap, BTreeSet};

use prometheus_parse::{LineInfo, Value};

/// The declared type of a metric family (`# TYPE name counter`).
pub use prometheus_parse::SampleType;

/// One sample as a page exposes it.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// The sample name: `x_total`, `x_bucket`, `x_sum`, …
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples, types and help texts of one or more `/metrics` pages.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    series: Vec<Series>,
    /// Family name (without `_bucket`, `_sum`, `_count`) → declared type.
    types: BTreeMap<String, SampleType>,
    help: BTreeMap<String, String>,
}

impl Scrape {
    /// Reads one page; an error names the first line it refuses.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut scrape = Scrape::default();
        scrape.add(text)?;
        Ok(scrape)
    }

    /// Adds the samples of another page (e.g. a second process's).
    pub fn add(&mut self, text: &str) -> Result<(), String> {
        let mut samples = 0;
        for (n, line) in text.lines().enumerate() {
            let fail = |e: String| format!("line {}: {e}: {line}", n + 1);
            match LineInfo::parse(line) {
                LineInfo::Sample {
                    metric_name,
                    labels,
                    value,
                    ..
                } => {
                    check_name(metric_name).map_err(fail)?;
                    let labels = labels.map(label_set).transpose().map_err(fail)?;
                    // The crate keeps a bucket without labels as an untyped
                    // sample, and drops one whose labels lack `le`.
                    let bucket = metric_name.ends_with("_bucket")
                        && self.type_of(metric_name) == Some(SampleType::Histogram);
                    if bucket && !labels.is_some_and(|l| l.contains_key("le")) {
                        return Err(fail("histogram bucket without le".into()));
                    }
                    number(value).ok_or_else(|| fail(format!("bad value {value:?}")))?;
                    samples += 1;
                }
                LineInfo::Type {
                    metric_name,
                    metric_alias,
                    sample_type,
                } => {
                    // `# TYPE name kind`: the crate maps unknown kinds to
                    // untyped without saying so.
                    let kind = line.split_whitespace().nth(3).unwrap_or_default();
                    if !KINDS.contains(&kind) {
                        return Err(fail(format!("unknown type {kind:?}")));
                    }
                    // For histograms the crate names the `_bucket` samples
                    // and gives the family as the alias.
                    self.types
                        .insert(metric_alias.unwrap_or(metric_name), sample_type);
                }
                LineInfo::Ignored if !line.trim_start().starts_with('#') => {
                    return Err(fail("not a sample prometheus-parse can read".into()));
                }
                // HELP (taken from the crate's scrape below), comments,
                // blank lines.
                _ => {}
            }
        }

        let lines = text.lines().map(|l| Ok(l.to_string()));
        let parsed =
            prometheus_parse::Scrape::parse(lines).map_err(|e| format!("prometheus-parse: {e}"))?;
        let before = self.series.len();
        for s in parsed.samples {
            let labels: BTreeMap<String, String> = s
                .labels
                .iter()
                .map(|(k, v)| (k.trim().to_string(), v.clone()))
                .collect();
            match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => {
                    self.push(s.metric, labels, v)
                }
                Value::Histogram(buckets) => {
                    let name = format!("{}_bucket", s.metric);
                    for b in buckets {
                        let mut labels = labels.clone();
                        labels.insert("le".into(), float_text(b.less_than));
                        self.push(name.clone(), labels, b.count);
                    }
                }
                Value::Summary(quantiles) => {
                    for q in quantiles {
                        let mut labels = labels.clone();
                        labels.insert("quantile".into(), float_text(q.quantile));
                        self.push(s.metric.clone(), labels, q.count);
                    }
                }
            }
        }
        let read = self.series.len() - before;
        if read != samples {
            return Err(format!(
                "prometheus-parse read {read} of {samples} samples (an le or quantile that is not a number?)"
            ));
        }
        self.help.extend(parsed.docs);
        Ok(())
    }

    fn push(&mut self, name: String, mut labels: BTreeMap<String, String>, value: f64) {
        normalize(&mut labels);
        self.series.push(Series {
            name,
            labels,
            value,
        });
    }

    /// The value of one series, given as `name` or `name{a="x",b="y"}`
    /// (label order free; every label must match and no other may exist).
    /// `None` if the page has no such series or `series` is not that form.
    pub fn value(&self, series: &str) -> Option<f64> {
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, label_set(rest.strip_suffix('}')?).ok()?),
            None => (series, BTreeMap::new()),
        };
        let mut labels = labels;
        normalize(&mut labels);
        self.series
            .iter()
            .find(|s| s.name == name && s.labels == labels)
            .map(|s| s.value)
    }

    /// Whether a sample of this name is exposed: `x_total`, `x_bucket`,
    /// `x_sum`… For a histogram's or summary's family name see
    /// [`Scrape::type_of`].
    pub fn has(&self, name: &str) -> bool {
        self.series.iter().any(|s| s.name == name)
    }

    /// The label names the samples of this name carry (empty if unknown).
    pub fn labels(&self, name: &str) -> BTreeSet<&str> {
        self.series
            .iter()
            .filter(|s| s.name == name)
            .flat_map(|s| s.labels.keys().map(String::as_str))
            .collect()
    }

    /// The values one label takes across the samples of this name.
    pub fn values(&self, name: &str, label: &str) -> BTreeSet<&str> {
        self.series
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).map(String::as_str))
            .collect()
    }

    /// Every sample name, sorted, once each.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.series
            .iter()
            .map(|s| s.name.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
    }

    /// The declared type of every family that has a `TYPE` line, by family
    /// name (`x_seconds` for a histogram, not `x_seconds_bucket`).
    pub fn types(&self) -> &BTreeMap<String, SampleType> {
        &self.types
    }

    /// The declared type of a family, or of the family a sample name
    /// belongs to (`x_bucket`, `x_sum`, `x_count` of a histogram or
    /// summary); `None` without a `TYPE` line.
    pub fn type_of(&self, name: &str) -> Option<SampleType> {
        self.types.get(self.family(name)).copied()
    }

    /// The family a sample name belongs to: `x` for `x_bucket` of a
    /// histogram `x`, and for `x_sum` and `x_count` of a histogram or
    /// summary `x`; otherwise the name itself.
    pub fn family<'a>(&self, name: &'a str) -> &'a str {
        let of = |suffix: &str, kinds: &[SampleType]| {
            name.strip_suffix(suffix)
                .filter(|f| self.types.get(*f).is_some_and(|t| kinds.contains(t)))
        };
        use SampleType::{Histogram, Summary};
        of("_bucket", &[Histogram])
            .or_else(|| of("_sum", &[Histogram, Summary]))
            .or_else(|| of("_count", &[Histogram, Summary]))
            .unwrap_or(name)
    }

    /// The `HELP` text of a family.
    pub fn help(&self, family: &str) -> Option<&str> {
        self.help.get(family).map(String::as_str)
    }

    /// Every sample, in the order read (histograms after the other samples
    /// of their page: the crate collects them last).
    pub fn series(&self) -> &[Series] {
        &self.series
    }
}

/// The `TYPE` kinds of the text format.
const KINDS: &[&str] = &["counter", "gauge", "histogram", "summary", "untyped"];

/// `[a-zA-Z_][a-zA-Z0-9_]*`: the crate's pattern takes any `\w` run,
/// digits first included; metric names may also hold `:`, which the crate
/// does not match at all (such lines never get here).
fn check_name(name: &str) -> Result<(), String> {
    let ok = name
        .chars()
        .enumerate()
        .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit()));
    if ok && !name.is_empty() {
        Ok(())
    } else {
        Err(format!("bad name {name:?}"))
    }
}

/// The labels between the braces, `a="x",b="y"` (a trailing comma
/// allowed), restricted to what prometheus-parse reads faithfully.
///
/// This is the crate's own split (on `,`, then `=`) made strict; it is not
/// a second parser of the format: values it cannot hold are refused.
fn label_set(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("label {pair:?} without a value"))?;
        let key = key.trim();
        check_name(key).map_err(|_| format!("bad label name {key:?}"))?;
        let value = value
            .trim()
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| format!("label {key:?} without a quoted value"))?;
        if value.contains(['\\', '"', '=']) {
            return Err(format!(
                "label {key:?}: prometheus-parse cannot read a value with \\, \", ',', = or }}"
            ));
        }
        if labels.insert(key.to_string(), value.to_string()).is_some() {
            return Err(format!("label {key:?} twice"));
        }
    }
    Ok(labels)
}

/// A sample value or bound as the format writes numbers (Go's float
/// syntax: `NaN`, `+Inf`, `-Inf` too).
fn number(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// `le` and `quantile` in one spelling, so `1`, `1.0` and `1e0` agree.
fn normalize(labels: &mut BTreeMap<String, String>) {
    for key in ["le", "quantile"] {
        if let Some(v) = labels.get_mut(key) {
            if let Some(x) = number(v) {
                *v = float_text(x);
            }
        }
    }
}

fn float_text(x: f64) -> String {
    if x == f64::INFINITY {
        "+Inf".into()
    } else if x == f64::NEG_INFINITY {
        "-Inf".into()
    } else if x.is_nan() {
        "NaN".into()
    } else {
        x.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/metrics` of the gateway binary in embedded mode (so with the
    /// seckill service's metrics too) after six purchases, a seventh by a
    /// user over the limit and one bad request: metrics-exporter-prometheus
    /// 0.17's output, unedited.
    const GATEWAY: &str = include_str!("../testdata/gateway-metrics.prom");

    #[test]
    fn reads_the_gateway_page() {
        let s = Scrape::parse(GATEWAY).unwrap();
        // Every line that is not blank or a comment is one series.
        let lines = GATEWAY
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .count();
        assert_eq!(s.series().len(), lines);

        assert_eq!(
            s.value(r#"seckill_gateway_requests_total{outcome="success"}"#),
            Some(6.0)
        );
        assert_eq!(
            s.value(r#"seckill_stock_remaining{sale="demo"}"#),
            Some(94.0)
        );
        assert_eq!(s.value("seckill_service_expired_total"), Some(0.0));
        assert_eq!(s.value(r#"seckill_stock_remaining{sale="nope"}"#), None);
        // A label too many or too few is another series.
        assert_eq!(s.value("seckill_stock_remaining"), None);
        assert_eq!(
            s.value(
                r#"seckill_gateway_request_duration_seconds_bucket{le="+Inf",outcome="success"}"#
            ),
            Some(6.0)
        );
        assert_eq!(
            s.value(
                r#"seckill_gateway_request_duration_seconds_bucket{outcome="success",le="1.0"}"#
            ),
            Some(6.0)
        );
        assert_eq!(
            s.value(r#"seckill_gateway_request_duration_seconds_count{outcome="success"}"#),
            Some(6.0)
        );

        assert_eq!(
            s.types()["seckill_gateway_requests_total"],
            SampleType::Counter
        );
        assert_eq!(
            s.type_of("seckill_gateway_request_duration_seconds"),
            Some(SampleType::Histogram)
        );
        assert_eq!(
            s.type_of("seckill_gateway_request_duration_seconds_bucket"),
            Some(SampleType::Histogram)
        );
        assert_eq!(
            s.type_of("seckill_gateway_waiting_requests"),
            Some(SampleType::Gauge)
        );
        assert_eq!(s.types().len(), 15);
        assert!(
            s.names().all(|n| s.type_of(n).is_some()),
            "a sample without TYPE"
        );
        assert_eq!(
            s.help("seckill_stock_remaining"),
            Some("Units left, by sale.")
        );

        assert!(s.has("seckill_service_queue_wait_seconds_bucket"));
        assert!(s.has("seckill_service_queue_wait_seconds_sum"));
        assert!(!s.has("seckill_service_queue_wait_seconds"));
        assert_eq!(
            s.labels("seckill_gateway_request_duration_seconds_bucket")
                .into_iter()
                .collect::<Vec<_>>(),
            ["le", "outcome"]
        );
        let le = s.values("seckill_service_queue_wait_seconds_bucket", "le");
        assert_eq!(le.len(), 15);
        assert!(le.contains("0.0005") && le.contains("1") && le.contains("+Inf"));
        assert_eq!(
            s.values("seckill_service_processed_total", "result")
                .into_iter()
                .collect::<Vec<_>>(),
            [
                "duplicate",
                "limit_exceeded",
                "rejected",
                "sold_out",
                "success"
            ]
        );
        assert!(s.labels("seckill_service_expired_total").is_empty());
        assert!(s.labels("no_such_metric").is_empty());
    }

    #[test]
    fn merges_pages() {
        let mut s = Scrape::parse("# TYPE a_total counter\na_total{p=\"1\"} 1\n").unwrap();
        s.add("# TYPE a_total counter\na_total{p=\"2\"} 2\nb 3 1700000000000\n")
            .unwrap();
        assert_eq!(s.names().collect::<Vec<_>>(), ["a_total", "b"]);
        assert_eq!(
            s.values("a_total", "p").into_iter().collect::<Vec<_>>(),
            ["1", "2"]
        );
        assert_eq!(s.value("b"), Some(3.0));
        assert_eq!(s.type_of("b"), None);
    }

    #[test]
    fn reads_summaries_and_untyped_histograms() {
        let s = Scrape::parse(
            "# TYPE rpc summary\nrpc{quantile=\"0.5\"} 4\nrpc{quantile=\"0.99\"} 9\n\
             rpc_sum 20\nrpc_count 3\n\
             h_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nnan NaN\n",
        )
        .unwrap();
        assert_eq!(s.value(r#"rpc{quantile="0.99"}"#), Some(9.0));
        assert_eq!(s.type_of("rpc_count"), Some(SampleType::Summary));
        assert_eq!(s.family("rpc_sum"), "rpc");
        // Without a TYPE line buckets are plain samples.
        assert_eq!(s.family("h_bucket"), "h_bucket");
        assert_eq!(s.value(r#"h_bucket{le="+Inf"}"#), Some(2.0));
        assert!(s.value("nan").unwrap().is_nan());
    }

    #[test]
    fn refuses_what_it_would_misread() {
        for (page, why) in [
            ("x{a=\"b\" 1", "not a sample"),
            ("x one", "bad value"),
            ("x{a=b} 1", "quoted"),
            ("x{a=\"b,c\"} 1", "quoted"),
            ("x{a=\"b=c\"} 1", "cannot read"),
            ("x{a=\"say \\\"hi\\\"\"} 1", "cannot read"),
            ("x{a=\"b\",a=\"c\"} 1", "twice"),
            ("x:rate5m 1", "not a sample"),
            ("1x 1", "bad name"),
            ("# TYPE x countr\nx 1", "unknown type"),
            ("# TYPE h histogram\nh_bucket 1", "without le"),
            ("# TYPE h histogram\nh_bucket{a=\"1\"} 1", "without le"),
            ("# TYPE h histogram\nh_bucket{le=\"x\"} 1", "read 0 of 1"),
        ] {
            let e = Scrape::parse(page).unwrap_err();
            assert!(e.contains(why), "{page:?}: {e}");
        }
        assert!(Scrape::parse("x one").unwrap_err().starts_with("line 1:"));
        assert!(Scrape::parse("# just a comment\n\n").is_ok());
    }

    #[test]
    fn asks_for_series_in_the_exposed_form_only() {
        let s = Scrape::parse("x{a=\"1\",b=\"2\"} 7\n").unwrap();
        assert_eq!(s.value(r#"x{b="2",a="1"}"#), Some(7.0));
        assert_eq!(s.value(r#"x{a="1",b="2",}"#), Some(7.0));
        assert_eq!(s.value(r#"x{a="1"}"#), None);
        assert_eq!(s.value(r#"x{a="1",b="2""#), None);
    }
}
