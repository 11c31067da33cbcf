//! A reader of the Prometheus text exposition format, as far as the checks
//! need it: which sample names a process exposes, with which label names
//! and values.

use std::collections::{BTreeMap, BTreeSet};

/// The samples of one or more `/metrics` pages, merged.
#[derive(Clone, Debug, Default)]
pub struct Exposition {
    /// Sample name (e.g. `seckill_queue_depth`, `..._bucket`) → label name →
    /// the values seen.
    samples: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

impl Exposition {
    /// Reads one page.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut e = Exposition::default();
        e.add(text)?;
        Ok(e)
    }

    /// Adds the samples of another page.
    pub fn add(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, labels) =
                sample(line).map_err(|e| format!("line {}: {e}: {line}", n + 1))?;
            let entry = self.samples.entry(name).or_default();
            for (k, v) in labels {
                entry.entry(k).or_default().insert(v);
            }
        }
        Ok(())
    }

    /// Whether a sample of this name is exposed.
    pub fn has(&self, name: &str) -> bool {
        self.samples.contains_key(name)
    }

    /// The label names of a sample name (empty if unknown).
    pub fn labels(&self, name: &str) -> BTreeSet<&str> {
        self.samples
            .get(name)
            .map(|l| l.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// The values a label of a sample name takes.
    pub fn values(&self, name: &str, label: &str) -> BTreeSet<&str> {
        self.samples
            .get(name)
            .and_then(|l| l.get(label))
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Every sample name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.samples.keys().map(String::as_str)
    }
}

type Labels = Vec<(String, String)>;

/// `name{a="x",b="y"} value [timestamp]` → name and labels.
fn sample(line: &str) -> Result<(String, Labels), String> {
    let end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = &line[..end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = Vec::new();
    let mut rest = &line[end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        loop {
            // label name
            while chars.next_if(|(_, c)| *c == ',' || *c == ' ').is_some() {}
            let Some(&(start, c)) = chars.peek() else {
                return Err("unclosed labels".into());
            };
            if c == '}' {
                rest = &inner[start + 1..];
                break;
            }
            let mut key_end = start;
            while let Some((i, c)) = chars.next_if(|(_, c)| *c != '=') {
                key_end = i + c.len_utf8();
            }
            let key = inner[start..key_end].trim().to_string();
            if chars.next().map(|(_, c)| c) != Some('=')
                || chars.next().map(|(_, c)| c) != Some('"')
            {
                return Err(format!("label {key:?} without a quoted value"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("unfinished escape".into()),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => return Err("unclosed label value".into()),
                }
            }
            labels.push((key, value));
        }
    }
    let value = rest.split_whitespace().next().ok_or("no value")?;
    let parsed = matches!(value, "+Inf" | "-Inf" | "NaN") || value.parse::<f64>().is_ok();
    if !parsed {
        return Err(format!("bad value {value:?}"));
    }
    Ok((name.to_string(), labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_labels_and_values() {
        let e = Exposition::parse(
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{outcome=\"ok\"} 3\n\
             x_total{outcome=\"bad \\\"one\\\"\",sale=\"a\"} 0\n\
             h_bucket{le=\"+Inf\"} 1\nplain 2.5 1700000000\n",
        )
        .unwrap();
        assert!(e.has("x_total") && e.has("h_bucket") && e.has("plain"));
        assert!(!e.has("x"));
        assert_eq!(
            e.labels("x_total").into_iter().collect::<Vec<_>>(),
            ["outcome", "sale"]
        );
        assert_eq!(
            e.values("x_total", "outcome")
                .into_iter()
                .collect::<Vec<_>>(),
            ["bad \"one\"", "ok"]
        );
        assert_eq!(
            e.values("h_bucket", "le").into_iter().collect::<Vec<_>>(),
            ["+Inf"]
        );
    }

    #[test]
    fn refuses_garbage() {
        assert!(Exposition::parse("x{a=\"b\" 1").is_err());
        assert!(Exposition::parse("x one").is_err());
        assert!(Exposition::parse("x{a=b} 1").is_err());
    }
}
