//! The options a binary really takes, read from its `--help` (clap's long
//! help): each `--flag`, its environment variable (`[env: NAME=]`) and its
//! default (`[default: VALUE]`). Deploy files are checked against these,
//! never against a list kept by hand.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// One option of a binary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Opt {
    /// `--flag`, with the dashes.
    pub flag: String,
    /// The environment variable that sets it too.
    pub env: Option<String>,
    /// The default clap prints (may be prose, e.g. "random, printed once").
    pub default: Option<String>,
}

/// Every option of one binary.
#[derive(Clone, Debug, Default)]
pub struct Options {
    by_flag: BTreeMap<String, Opt>,
}

impl Options {
    /// Runs `binary --help` and reads its options.
    pub fn of(binary: &Path) -> Self {
        let out = crate::command::run(
            &format!("{} --help", binary.display()),
            Command::new(binary).arg("--help"),
            Duration::from_secs(10),
        );
        assert!(
            out.status.success(),
            "{} --help: {}",
            binary.display(),
            out.describe()
        );
        let options = Self::parse(&out.stdout);
        assert!(
            options.by_flag.len() > 3,
            "no options found in {} --help:\n{}",
            binary.display(),
            out.stdout
        );
        options
    }

    /// Reads clap's long help: an option line starts with `-x, --flag` or
    /// `--flag`; the lines up to the next option are its description.
    pub fn parse(help: &str) -> Self {
        let mut by_flag = BTreeMap::new();
        let mut current: Option<(String, String)> = None;
        let mut finish = |cur: Option<(String, String)>| {
            if let Some((flag, text)) = cur {
                let opt = Opt {
                    env: bracketed(&text, "env").map(|e| {
                        e.split_once('=')
                            .map_or(e.as_str(), |(name, _)| name)
                            .trim()
                            .to_string()
                    }),
                    default: bracketed(&text, "default"),
                    flag: flag.clone(),
                };
                by_flag.insert(flag, opt);
            }
        };
        for line in help.lines() {
            let trimmed = line.trim_start();
            // `--flag <X>`, or `-x, --flag` for options with a short form.
            let long = trimmed.strip_prefix("--").or_else(|| {
                let rest = trimmed.strip_prefix('-')?;
                let mut chars = rest.chars();
                chars.next().filter(char::is_ascii_alphanumeric)?;
                chars.as_str().strip_prefix(", --")
            });
            let flag = long.map(|f| {
                let name: String = f
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                format!("--{name}")
            });
            match flag {
                Some(flag) if line.starts_with("  ") && !line.starts_with("          ") => {
                    finish(current.take());
                    current = Some((flag, trimmed.to_string()));
                }
                _ => {
                    if let Some((_, text)) = current.as_mut() {
                        text.push(' ');
                        text.push_str(trimmed);
                    }
                }
            }
        }
        finish(current);
        Options { by_flag }
    }

    /// The option `--flag`, if the binary has it.
    pub fn flag(&self, flag: &str) -> Option<&Opt> {
        self.by_flag.get(flag)
    }

    /// The option set by environment variable `name`, if any.
    pub fn env(&self, name: &str) -> Option<&Opt> {
        self.by_flag
            .values()
            .find(|o| o.env.as_deref() == Some(name))
    }

    /// Every option.
    pub fn all(&self) -> impl Iterator<Item = &Opt> {
        self.by_flag.values()
    }

    /// The port of a `HOST:PORT` default, e.g. `--admin-listen` → 8081.
    pub fn default_port(&self, flag: &str) -> Option<u16> {
        let default = self.flag(flag)?.default.as_deref()?;
        default.rsplit_once(':')?.1.parse().ok()
    }
}

/// The text of `[key: ...]` in `text` (brackets may nest one level, as in
/// `[default: the gRPC listen address]`).
fn bracketed(text: &str, key: &str) -> Option<String> {
    let open = format!("[{key}: ");
    let start = text.find(&open)? + open.len();
    let mut depth = 0;
    for (i, c) in text[start..].char_indices() {
        match c {
            '[' => depth += 1,
            ']' if depth == 0 => return Some(text[start..start + i].trim().to_string()),
            ']' => depth -= 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELP: &str = "\
Flash-sale gateway.

Usage: gateway [OPTIONS]

Options:
      --listen <LISTEN>
          Public HTTP listener [env: SECKILL_LISTEN=] [default: 127.0.0.1:8080]
      --advertise-grpc <ADVERTISE_GRPC>
          Address seckill services call back on [default: the gRPC listen address] [env: SECKILL_ADVERTISE_GRPC=]
      --admin-token <ADMIN_TOKEN>
          Bearer token for /admin/* [default: random, printed once at start] [env: SECKILL_ADMIN_TOKEN]
      --log <LOG>
          Log filter (tracing `EnvFilter` syntax)
          over two lines [env: SECKILL_LOG=warn] [default: info]
  -h, --help
          Print help
";

    #[test]
    fn reads_flags_envs_and_defaults() {
        let o = Options::parse(HELP);
        let listen = o.flag("--listen").unwrap();
        assert_eq!(listen.env.as_deref(), Some("SECKILL_LISTEN"));
        assert_eq!(listen.default.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(o.default_port("--listen"), Some(8080));
        assert_eq!(
            o.env("SECKILL_ADVERTISE_GRPC").unwrap().flag,
            "--advertise-grpc"
        );
        assert_eq!(
            o.flag("--admin-token").unwrap().env.as_deref(),
            Some("SECKILL_ADMIN_TOKEN")
        );
        // The value clap shows for a set variable is not part of the name.
        assert_eq!(o.flag("--log").unwrap().env.as_deref(), Some("SECKILL_LOG"));
        assert_eq!(o.flag("--log").unwrap().default.as_deref(), Some("info"));
        assert!(o.flag("--help").is_some());
        assert!(o.flag("--nope").is_none());
        assert_eq!(o.all().count(), 5);
    }
}
