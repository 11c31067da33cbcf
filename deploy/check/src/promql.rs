//! The metric selectors of a PromQL expression (as written in rules and
//! Grafana panels), so each metric name and label matcher can be checked
//! against what the processes really expose. Not a full PromQL parser: a
//! tokenizer that knows which identifiers are functions, keywords, grouping
//! labels and template variables, which is all the check needs.

/// `metric{label op "value", ...}` as written in an expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    pub label: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: String,
    pub value: String,
}

/// What an expression refers to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    pub selectors: Vec<Selector>,
    /// Labels named in `by (...)`, `without (...)`, `on (...)`,
    /// `ignoring (...)`, `group_left (...)`, `group_right (...)`.
    pub grouping: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    /// Numbers, durations, `$variables`: values the check does not need.
    Value,
    /// A range or subquery `[...]`, skipped whole.
    Range,
    Punct(char),
    /// `=`, `!=`, `=~`, `!~`, `==`, `>=`, ...
    Op(String),
}

const KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
];
/// Aggregation operators, which may take their grouping before the
/// parenthesis: `sum by (le) (...)`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The selectors and grouping labels of `expr`.
pub fn references(expr: &str) -> Result<References, String> {
    let tokens = tokenize(expr)?;
    let mut refs = References::default();
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(word) => {
                let lower = word.to_ascii_lowercase();
                let next_is_paren = tokens.get(i + 1) == Some(&Token::Punct('('));
                let next_is_grouping = matches!(
                    tokens.get(i + 1),
                    Some(Token::Ident(w)) if matches!(w.as_str(), "by" | "without")
                );
                if GROUPING.contains(&lower.as_str()) && next_is_paren {
                    let mut j = i + 2;
                    while let Some(t) = tokens.get(j) {
                        match t {
                            Token::Ident(label) => refs.grouping.push(label.clone()),
                            Token::Punct(')') => break,
                            Token::Punct(',') => {}
                            other => return Err(format!("unexpected {other:?} in {word}(...)")),
                        }
                        j += 1;
                    }
                    i = j + 1;
                    continue;
                }
                let aggregation = AGGREGATIONS.contains(&lower.as_str()) && next_is_grouping;
                if KEYWORDS.contains(&lower.as_str()) || next_is_paren || aggregation {
                    // An operator keyword, or a function / aggregation call.
                    i += 1;
                    continue;
                }
                let mut selector = Selector {
                    metric: word.clone(),
                    matchers: Vec::new(),
                };
                i += 1;
                if tokens.get(i) == Some(&Token::Punct('{')) {
                    i = matchers(&tokens, i + 1, &mut selector.matchers)?;
                }
                refs.selectors.push(selector);
                continue;
            }
            Token::Punct('{') => {
                // A selector without a metric name: `{__name__=~"..."}`.
                let mut selector = Selector {
                    metric: String::new(),
                    matchers: Vec::new(),
                };
                i = matchers(&tokens, i + 1, &mut selector.matchers)?;
                refs.selectors.push(selector);
                continue;
            }
            _ => i += 1,
        }
    }
    Ok(refs)
}

/// Reads `label op "value", ... }` from `i`; returns the index after `}`.
fn matchers(tokens: &[Token], mut i: usize, out: &mut Vec<Matcher>) -> Result<usize, String> {
    loop {
        match tokens.get(i) {
            Some(Token::Punct('}')) => return Ok(i + 1),
            Some(Token::Punct(',')) => i += 1,
            Some(Token::Ident(label)) => {
                let op = match tokens.get(i + 1) {
                    Some(Token::Op(op)) if matches!(op.as_str(), "=" | "!=" | "=~" | "!~") => op,
                    other => return Err(format!("label {label} without a matcher: {other:?}")),
                };
                let value = match tokens.get(i + 2) {
                    Some(Token::Str(v)) => v,
                    other => return Err(format!("label {label} without a string: {other:?}")),
                };
                out.push(Matcher {
                    label: label.clone(),
                    op: op.clone(),
                    value: value.clone(),
                });
                i += 3;
            }
            other => return Err(format!("unexpected {other:?} in a selector")),
        }
    }
}

fn tokenize(expr: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let ident_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let ident_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '#' {
            // A comment runs to the end of the line.
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '"' || c == '\'' || c == '`' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(format!("unclosed string in {expr}")),
                    Some('\\') if c != '`' => {
                        if let Some(&n) = chars.get(i + 1) {
                            s.push(n);
                        }
                        i += 2;
                    }
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(&o) => {
                        s.push(o);
                        i += 1;
                    }
                }
            }
            out.push(Token::Str(s));
        } else if c == '[' {
            let mut depth = 0;
            while i < chars.len() {
                match chars[i] {
                    '[' => depth += 1,
                    ']' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            if i >= chars.len() {
                return Err(format!("unclosed [ in {expr}"));
            }
            i += 1;
            out.push(Token::Range);
        } else if c == '$' {
            // Grafana variables: $sale, ${sale}, $__rate_interval.
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                while i < chars.len() && ident_char(chars[i]) {
                    i += 1;
                }
            }
            out.push(Token::Value);
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            // Numbers and durations (1.5, 1e3, 0x1f, 5m, 1h30m).
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            out.push(Token::Value);
        } else if ident_start(c) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if matches!(c, '=' | '!' | '<' | '>') {
            let mut op = c.to_string();
            if let Some(&n) = chars.get(i + 1) {
                if matches!(n, '=' | '~') {
                    op.push(n);
                }
            }
            i += op.len();
            out.push(Token::Op(op));
        } else if matches!(c, '(' | ')' | '{' | '}' | ',') {
            out.push(Token::Punct(c));
            i += 1;
        } else if matches!(c, '+' | '-' | '*' | '/' | '%' | '^' | '@') {
            out.push(Token::Op(c.to_string()));
            i += 1;
        } else {
            return Err(format!("unexpected {c:?} in {expr}"));
        }
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
        assert_eq!(r.grouping, ["result"]);
        assert_eq!(
            r.selectors[0].matchers,
            [
                Matcher {
                    label: "result".into(),
                    op: "=~".into(),
                    value: "ok|error".into()
                },
                Matcher {
                    label: "job".into(),
                    op: "!=".into(),
                    value: "x".into()
                },
            ]
        );
        assert_eq!(r.selectors[1].metric, "d");
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert!(references("x{a=\"b\"").is_err());
        assert!(references("x{a}").is_err());
        assert!(references("rate(x[5m)").is_err());
    }
}
