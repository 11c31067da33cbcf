//! YAML files as documents to walk: loading (every document of a file),
//! and the few accessors the checks use on `yaml_rust2`'s tree.

use std::path::Path;

pub use yaml_rust2::Yaml;
use yaml_rust2::YamlLoader;

/// Every document of a YAML file; panics naming the file when it does not
/// parse.
pub fn load(path: &Path) -> Vec<Yaml> {
    let text = crate::read(path);
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// Every document of a YAML text.
pub fn parse(text: &str) -> Result<Vec<Yaml>, String> {
    YamlLoader::load_from_str(text).map_err(|e| e.to_string())
}

/// The single document of a YAML file.
pub fn load_one(path: &Path) -> Yaml {
    let mut docs = load(path);
    assert_eq!(
        docs.len(),
        1,
        "{}: one YAML document expected",
        path.display()
    );
    docs.remove(0)
}

/// A scalar as text: strings as they are, numbers and booleans as YAML
/// writes them. `None` for maps, lists, null and missing values.
pub fn text(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The entries of a map with scalar keys (empty for anything else).
pub fn entries(y: &Yaml) -> Vec<(String, &Yaml)> {
    y.as_hash()
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| text(k).map(|k| (k, v)))
                .collect()
        })
        .unwrap_or_default()
}

/// The items of a list (empty for anything else).
pub fn items(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

/// The value at a path of map keys, e.g. `at(doc, &["spec", "template"])`.
pub fn at<'a>(y: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(y, |y, key| &y[*key])
}

/// Whether the value is absent (a missing key).
pub fn missing(y: &Yaml) -> bool {
    y.is_badvalue() || y.is_null()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_documents() {
        let docs = YamlLoader::load_from_str(
            "a:\n  b: [1, x, true, 1.5]\n  c: {d: e}\n---\nkind: Second\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        let b: Vec<_> = items(at(&docs[0], &["a", "b"])).iter().map(text).collect();
        assert_eq!(
            b,
            [
                Some("1".into()),
                Some("x".into()),
                Some("true".into()),
                Some("1.5".into())
            ]
        );
        assert_eq!(entries(at(&docs[0], &["a", "c"]))[0].0, "d");
        assert!(missing(at(&docs[0], &["a", "nope", "deeper"])));
        assert_eq!(text(&docs[1]["kind"]).as_deref(), Some("Second"));
    }
}
