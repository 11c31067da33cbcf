//! The options a binary really takes, read from its clap definition
//! (`gateway::Args`, `seckill_service::Args`, `order_relay::Args`, which the
//! binaries' `main` parse): each `--flag`, its environment variable and its default.
//! Deploy files are checked against these, never against a list kept by
//! hand.

use std::collections::BTreeMap;

use clap::CommandFactory;

/// One option of a binary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Opt {
    /// `--flag`, with the dashes.
    pub flag: String,
    /// The environment variable that sets it too.
    pub env: Option<String>,
    /// The value used when neither the flag nor the variable is given.
    /// `None` when the program decides at run time: the help may describe
    /// that in prose (`[default: random, printed once at start]`), which is
    /// no value a deploy file could rely on.
    pub default: Option<String>,
    /// Left out of `--help`: a drill or benchmark knob, not for deployments.
    pub hidden: bool,
}

/// Every option of one binary.
#[derive(Clone, Debug, Default)]
pub struct Options {
    by_flag: BTreeMap<String, Opt>,
}

impl Options {
    /// The options of the program whose arguments `T` parses.
    pub fn of<T: CommandFactory>() -> Self {
        let mut command = T::command();
        let options = Self::from_command(&mut command);
        assert!(
            options.by_flag.len() > 3,
            "no options found in {}'s arguments",
            command.get_name()
        );
        options
    }

    /// Reads every long option of `command`, `--help` and `--version`
    /// included (clap adds those when it builds the command).
    pub fn from_command(command: &mut clap::Command) -> Self {
        command.build();
        let by_flag = command
            .get_arguments()
            .filter_map(|arg| {
                let flag = format!("--{}", arg.get_long()?);
                let defaults: Vec<_> = arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy())
                    .collect();
                let opt = Opt {
                    flag: flag.clone(),
                    env: arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                    default: (!defaults.is_empty()).then(|| defaults.join(",")),
                    hidden: arg.is_hide_set(),
                };
                Some((flag, opt))
            })
            .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Options shaped like the gateway's.
    #[derive(clap::Parser)]
    #[allow(dead_code)]
    struct Fixture {
        /// Public HTTP listener.
        #[arg(long, env = "SECKILL_LISTEN", default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Address seckill services call back on [default: the gRPC listen address].
        #[arg(long, env = "SECKILL_ADVERTISE_GRPC")]
        advertise_grpc: Option<String>,
        /// Bearer token for /admin/* [default: random, printed once at start].
        #[arg(long, env = "SECKILL_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Log filter (tracing `EnvFilter` syntax).
        #[arg(long, env = "SECKILL_LOG", default_value = "info")]
        log: String,
    }

    /// A binary with a hidden option, several default values and a
    /// positional argument.
    #[derive(clap::Parser)]
    #[command(version)]
    #[allow(dead_code)]
    struct Drill {
        #[arg(long, env = "SECKILL_WORK_DELAY_MS", default_value_t = 0, hide = true)]
        work_delay_ms: u64,
        #[arg(long, value_delimiter = ',', default_values = ["a", "b"])]
        seeds: Vec<String>,
        #[arg(short = 'n', long = "count", default_value_t = 3)]
        n: u8,
        file: Option<String>,
    }

    #[test]
    fn reads_flags_envs_and_defaults() {
        let o = Options::of::<Fixture>();
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
        assert_eq!(o.flag("--log").unwrap().env.as_deref(), Some("SECKILL_LOG"));
        assert_eq!(o.flag("--log").unwrap().default.as_deref(), Some("info"));
        assert!(o.flag("--help").is_some());
        assert!(o.flag("--nope").is_none());
        assert_eq!(o.all().count(), 5);
        // A default the help describes in prose is not a value.
        assert_eq!(o.flag("--advertise-grpc").unwrap().default, None);
        assert_eq!(o.flag("--admin-token").unwrap().default, None);
        assert_eq!(o.default_port("--advertise-grpc"), None);
        assert!(o.all().all(|opt| !opt.hidden));
    }

    #[test]
    fn reads_hidden_options_and_lists_of_defaults() {
        let o = Options::from_command(&mut <Drill as CommandFactory>::command());
        let delay = o.env("SECKILL_WORK_DELAY_MS").unwrap();
        assert_eq!(delay.flag, "--work-delay-ms");
        assert!(delay.hidden);
        assert_eq!(delay.default.as_deref(), Some("0"));
        assert_eq!(o.flag("--seeds").unwrap().default.as_deref(), Some("a,b"));
        assert_eq!(o.flag("--count").unwrap().default.as_deref(), Some("3"));
        assert!(o.flag("--version").is_some());
        // Positional arguments have no flag to set.
        assert_eq!(o.all().count(), 5);
    }
}
