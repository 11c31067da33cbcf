//! The container files against the binaries' real options: the Dockerfile,
//! docker-compose.yml (with the Prometheus configuration it runs), the
//! Kubernetes base, the single-node deployments and the Helm chart
//! (rendered: see its section) all parse, and every image, port,
//! environment variable, probe and grace period they name matches the
//! options the binaries parse
//! (`gateway::Args`, `seckill_service::Args`, `order_relay::Args`: flags,
//! environment variables, default ports), and what the other files name
//! (stages, services, labels, ports).
//!
//! Docker is not needed: the files are read, not run. When `kubectl` is on
//! the PATH, `kubectl kustomize` also builds the Kubernetes base; when
//! kubernetes-validate is installed, the built base and the rendered chart
//! pass it with --strict.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use deploy_check::command::{run, which};
use deploy_check::options::Options;
use deploy_check::yaml::{self, at, entries, items, missing, text, Yaml};
use deploy_check::{deploy, read, repo_root};

/// The version images are tagged with: the workspace's.
const VERSION: &str = env!("CARGO_PKG_VERSION");

// === The binaries ===

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Bin {
    Gateway,
    Service,
    Relay,
}

impl Bin {
    const ALL: [Bin; 3] = [Bin::Gateway, Bin::Service, Bin::Relay];

    /// The binary, its crate and its Dockerfile stage.
    fn name(self) -> &'static str {
        match self {
            Bin::Gateway => "gateway",
            Bin::Service => "seckill-service",
            Bin::Relay => "order-relay",
        }
    }

    /// The image name deploy files use for it; in Kubernetes also its pods'
    /// `app.kubernetes.io/name`, which Prometheus takes as the job name.
    fn image(self) -> &'static str {
        match self {
            Bin::Gateway => "seckill-gateway",
            Bin::Service => "seckill-service",
            Bin::Relay => "seckill-order-relay",
        }
    }

    /// Its job in the Compose Prometheus (and the local topology's): the
    /// image name, as Kubernetes and Helm name the job, so one dashboard
    /// and one set of rules fit every deployment.
    fn job(self) -> &'static str {
        self.image()
    }

    fn from_image(image: &str) -> Option<Bin> {
        let name = image.split(':').next().unwrap();
        Bin::ALL.into_iter().find(|b| b.image() == name)
    }

    fn from_stage(stage: &str) -> Option<Bin> {
        Bin::ALL.into_iter().find(|b| b.name() == stage)
    }
}

struct Binaries {
    gateway: Options,
    service: Options,
    relay: Options,
}

impl Binaries {
    fn load() -> Self {
        Binaries {
            gateway: Options::of::<gateway::Args>(),
            service: Options::of::<seckill_service::Args>(),
            relay: Options::of::<order_relay::Args>(),
        }
    }

    fn of(&self, bin: Bin) -> &Options {
        match bin {
            Bin::Gateway => &self.gateway,
            Bin::Service => &self.service,
            Bin::Relay => &self.relay,
        }
    }
}

/// One process's configuration as a deploy file sets it: command-line
/// flags over environment variables over the binary's defaults (clap's
/// order).
struct Config<'a> {
    bin: Bin,
    options: &'a Options,
    /// Variable → value (`None`: set from elsewhere, e.g. a Secret).
    env: BTreeMap<String, Option<String>>,
    /// `--flag` → value given on the command line (`true` for a bare
    /// `--flag`).
    args: BTreeMap<String, String>,
    /// Where it was read, for messages.
    origin: String,
}

impl<'a> Config<'a> {
    fn new(bins: &'a Binaries, bin: Bin, origin: impl Into<String>) -> Self {
        Config {
            bin,
            options: bins.of(bin),
            env: BTreeMap::new(),
            args: BTreeMap::new(),
            origin: origin.into(),
        }
    }

    fn set(&mut self, name: &str, value: Option<String>) {
        self.env.insert(name.to_string(), value);
    }

    /// One command-line argument, `--flag=value` or `--flag`.
    fn arg(&mut self, arg: &str) {
        assert!(
            arg.starts_with("--"),
            "{}: argument {arg} is no --flag (subcommands are not for deployments)",
            self.origin
        );
        let (flag, value) = arg.split_once('=').unwrap_or((arg, "true"));
        self.args.insert(flag.to_string(), value.to_string());
    }

    /// Every variable and flag is an option of the binary (or, for a
    /// variable, a helper another one refers to as `$(NAME)`), none is a
    /// drill option, and every listen address is `0.0.0.0` on the binary's
    /// default port.
    fn check(&self, helpers: &BTreeSet<String>) {
        let mut set = Vec::new();
        for (name, value) in &self.env {
            let Some(opt) = self.options.env(name) else {
                assert!(
                    helpers.contains(name),
                    "{}: {name} is not an environment variable of {} (see {} --help)",
                    self.origin,
                    self.bin.name(),
                    self.bin.name()
                );
                continue;
            };
            set.push((name.as_str(), opt, value.as_deref()));
        }
        for (flag, value) in &self.args {
            let opt = self.options.flag(flag).unwrap_or_else(|| {
                panic!(
                    "{}: {flag} is not an option of {} (see {} --help)",
                    self.origin,
                    self.bin.name(),
                    self.bin.name()
                )
            });
            set.push((flag.as_str(), opt, Some(value.as_str())));
        }
        for (name, opt, value) in set {
            assert!(
                !opt.hidden,
                "{}: {name} is a drill option of {}, left out of its --help, not for deployments",
                self.origin,
                self.bin.name()
            );
            if opt.flag.ends_with("listen") {
                let default = self.options.default_port(&opt.flag).unwrap();
                assert_eq!(
                    value,
                    Some(format!("0.0.0.0:{default}").as_str()),
                    "{}: {name} should listen on every interface on {}'s default port",
                    self.origin,
                    self.bin.name()
                );
            }
        }
    }

    /// How an option is given: `Some(Some(v))` a value, `Some(None)` from
    /// elsewhere (a Secret), `None` not at all (the default applies).
    fn given(&self, flag: &str) -> Option<Option<String>> {
        let opt = self
            .options
            .flag(flag)
            .unwrap_or_else(|| panic!("{} has no {flag}", self.bin.name()));
        if let Some(v) = self.args.get(flag) {
            return Some(Some(v.clone()));
        }
        opt.env.as_ref().and_then(|e| self.env.get(e)).cloned()
    }

    /// The value of an option: the command line's, the environment's,
    /// else the default.
    fn value(&self, flag: &str) -> Option<String> {
        match self.given(flag) {
            Some(v) => v,
            None => self.options.flag(flag).unwrap().default.clone(),
        }
    }

    /// The relay's one sink, as its `check` would find it (`postgres`,
    /// `webhook` or `stdout`), and its one source.
    fn relay_sink(&self) -> &'static str {
        assert_eq!(self.bin, Bin::Relay);
        let origin = &self.origin;
        let named: Vec<&'static str> = [
            ("postgres", self.given("--postgres-url").is_some()),
            ("webhook", self.given("--webhook-url").is_some()),
            ("stdout", self.value("--stdout").as_deref() == Some("true")),
        ]
        .into_iter()
        .filter_map(|(sink, set)| set.then_some(sink))
        .collect();
        assert_eq!(named.len(), 1, "{origin}: exactly one sink, not {named:?}");
        let sources = ["--redis-url", "--redis-cluster", "--gateway-admin-url"]
            .into_iter()
            .filter(|f| self.given(f).is_some())
            .count();
        assert_eq!(sources, 1, "{origin}: one source of orders");
        if named[0] == "webhook" {
            assert!(
                self.given("--webhook-secret-file").is_some(),
                "{origin}: the webhook sink without --webhook-secret-file"
            );
        }
        named[0]
    }

    fn port(&self, flag: &str) -> u16 {
        let v = self.value(flag).unwrap();
        v.rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("{}: {flag} = {v} has no port", self.origin))
    }

    fn number(&self, flag: &str) -> u64 {
        let v = self.value(flag).unwrap();
        v.parse()
            .unwrap_or_else(|_| panic!("{}: {flag} = {v} is not a number", self.origin))
    }

    /// Every listening port: flag → port.
    fn listen_ports(&self) -> BTreeMap<String, u16> {
        self.options
            .all()
            .filter(|o| o.flag.ends_with("listen"))
            .map(|o| (o.flag.clone(), self.port(&o.flag)))
            .collect()
    }

    fn admin_port(&self) -> u16 {
        self.port("--admin-listen")
    }

    /// Seconds a graceful stop may take: a gateway answers its waiting
    /// requests (request timeout + shutdown grace), a service finishes its
    /// batches (shutdown grace). A relay stops at once on SIGTERM (its loop
    /// and retry pauses watch the signal) but for the delivery in hand: a
    /// webhook request, bounded by its timeout; a transaction or a write,
    /// about a second. What it leaves unacknowledged is delivered again.
    fn drain_seconds(&self) -> u64 {
        let ms = match self.bin {
            Bin::Gateway => {
                self.number("--request-timeout-ms") + self.number("--shutdown-grace-ms")
            }
            Bin::Service => self.number("--shutdown-grace-ms"),
            Bin::Relay => match self.relay_sink() {
                "webhook" => self.number("--webhook-timeout-ms"),
                _ => 1000,
            },
        };
        ms.div_ceil(1000)
    }
}

#[test]
fn every_binary_has_the_contracts_options() {
    let bins = Binaries::load();
    for (bin, flag, env, port) in [
        (Bin::Gateway, "--listen", "SECKILL_LISTEN", Some(8080)),
        (
            Bin::Gateway,
            "--admin-listen",
            "SECKILL_ADMIN_LISTEN",
            Some(8081),
        ),
        (
            Bin::Gateway,
            "--grpc-listen",
            "SECKILL_GRPC_LISTEN",
            Some(50051),
        ),
        (
            Bin::Gateway,
            "--advertise-grpc",
            "SECKILL_ADVERTISE_GRPC",
            None,
        ),
        (Bin::Gateway, "--redis-url", "SECKILL_REDIS_URL", None),
        (
            Bin::Gateway,
            "--redis-cluster",
            "SECKILL_REDIS_CLUSTER",
            None,
        ),
        (Bin::Gateway, "--admin-token", "SECKILL_ADMIN_TOKEN", None),
        (
            Bin::Gateway,
            "--request-timeout-ms",
            "SECKILL_REQUEST_TIMEOUT_MS",
            None,
        ),
        (
            Bin::Gateway,
            "--shutdown-grace-ms",
            "SECKILL_SHUTDOWN_GRACE_MS",
            None,
        ),
        (
            Bin::Service,
            "--admin-listen",
            "SECKILL_ADMIN_LISTEN",
            Some(8091),
        ),
        (Bin::Service, "--redis-url", "SECKILL_REDIS_URL", None),
        (
            Bin::Service,
            "--shutdown-grace-ms",
            "SECKILL_SHUTDOWN_GRACE_MS",
            None,
        ),
        (
            Bin::Relay,
            "--admin-listen",
            "SECKILL_ADMIN_LISTEN",
            Some(8095),
        ),
        (Bin::Relay, "--redis-url", "SECKILL_REDIS_URL", None),
        (Bin::Relay, "--group", "SECKILL_RELAY_GROUP", None),
        (Bin::Relay, "--postgres-url", "SECKILL_POSTGRES_URL", None),
        (Bin::Relay, "--webhook-url", "SECKILL_WEBHOOK_URL", None),
        (
            Bin::Relay,
            "--webhook-secret-file",
            "SECKILL_WEBHOOK_SECRET_FILE",
            None,
        ),
        (Bin::Relay, "--stdout", "SECKILL_RELAY_STDOUT", None),
        (
            Bin::Relay,
            "--webhook-timeout-ms",
            "SECKILL_WEBHOOK_TIMEOUT_MS",
            None,
        ),
    ] {
        let options = bins.of(bin);
        let opt = options
            .flag(flag)
            .unwrap_or_else(|| panic!("{} has no {flag}", bin.name()));
        assert_eq!(opt.env.as_deref(), Some(env), "{} {flag}", bin.name());
        assert!(!opt.hidden, "{} {flag} is left out of --help", bin.name());
        if port.is_some() {
            assert_eq!(options.default_port(flag), port, "{} {flag}", bin.name());
        }
    }
}

// === Dockerfile ===

struct Stage {
    name: String,
    from: String,
    /// (INSTRUCTION, arguments), continuation lines joined.
    lines: Vec<(String, String)>,
}

fn dockerfile() -> Vec<Stage> {
    let text = read(deploy("Dockerfile"));
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue;
        }
        if let Some(part) = t.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
        } else {
            current.push_str(t);
            joined.push(std::mem::take(&mut current));
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for line in joined {
        let (instr, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let (instr, args) = (instr.to_ascii_uppercase(), args.trim().to_string());
        if instr == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => name.to_string(),
                _ => format!("stage-{}", stages.len()),
            };
            stages.push(Stage {
                name,
                from: words[0].to_string(),
                lines: Vec::new(),
            });
        } else if let Some(stage) = stages.last_mut() {
            stage.lines.push((instr, args));
        }
    }
    stages
}

impl Stage {
    fn all<'a>(&'a self, instr: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.lines
            .iter()
            .filter(move |(i, _)| i == instr)
            .map(|(_, a)| a.as_str())
    }
}

/// The stage and its ancestors, oldest first.
fn lineage<'a>(stages: &'a [Stage], name: &str) -> Vec<&'a Stage> {
    let stage = stages.iter().find(|s| s.name == name).unwrap();
    let mut chain = match stages.iter().find(|s| s.name == stage.from) {
        Some(parent) => lineage(stages, &parent.name),
        None => Vec::new(),
    };
    chain.push(stage);
    chain
}

/// `ENV A=1 B=2` (and the old `ENV A 1`) of a stage and its ancestors.
fn image_env(stages: &[Stage], name: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for stage in lineage(stages, name) {
        for args in stage.all("ENV") {
            if args.contains('=') {
                for pair in args.split_whitespace() {
                    let (k, v) = pair.split_once('=').unwrap();
                    env.insert(k.to_string(), v.trim_matches('"').to_string());
                }
            } else if let Some((k, v)) = args.split_once(' ') {
                env.insert(k.to_string(), v.trim().to_string());
            }
        }
    }
    env
}

/// The user a stage runs as (from it or its ancestors).
fn image_user(stages: &[Stage], name: &str) -> Option<String> {
    lineage(stages, name)
        .iter()
        .flat_map(|s| s.all("USER"))
        .last()
        .map(String::from)
}

/// The image's configuration of `bin`, as the Dockerfile sets it.
fn image_config<'a>(bins: &'a Binaries, stages: &[Stage], bin: Bin) -> Config<'a> {
    let mut config = Config::new(bins, bin, format!("Dockerfile stage {}", bin.name()));
    for (k, v) in image_env(stages, bin.name()) {
        config.set(&k, Some(v));
    }
    config
}

/// The numeric user id the images run as.
fn image_uid(stages: &[Stage]) -> u32 {
    let user = image_user(stages, "gateway").expect("the gateway image sets USER");
    user.split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER")
}

#[test]
fn dockerfile_builds_every_binary_into_small_non_root_images() {
    let bins = Binaries::load();
    let stages = dockerfile();
    let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
    // The gateway last: the default target.
    assert_eq!(
        names,
        [
            "build",
            "runtime",
            "seckill-service",
            "order-relay",
            "gateway"
        ]
    );

    // Builder: the Rust image, at least the workspace's rust-version.
    let build = &stages[0];
    assert!(build.from.starts_with("rust:"), "{}", build.from);
    let rust_version = read(repo_root().join("Cargo.toml"))
        .lines()
        .find_map(|l| {
            l.strip_prefix("rust-version = ")
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap();
    let arg = stages_arg("RUST_VERSION");
    assert!(
        version_at_least(&arg, &rust_version),
        "RUST_VERSION {arg} is older than the workspace's rust-version {rust_version}"
    );
    let cargo = build
        .all("RUN")
        .find(|r| r.contains("cargo build"))
        .expect("a cargo build");
    for part in ["--release", "--locked"] {
        assert!(cargo.contains(part), "cargo build without {part}: {cargo}");
    }
    // Each binary is built and put where its stage copies it from; the
    // header's build command tags it as the deploy files name it.
    let header = read(deploy("Dockerfile"));
    for bin in Bin::ALL {
        let name = bin.name();
        for part in [format!("-p {name}"), format!("target/release/{name}")] {
            assert!(cargo.contains(&part), "cargo build without {part}: {cargo}");
        }
        let build = format!("--target {name} -t {}:{VERSION} .", bin.image());
        assert!(
            header.contains(&build),
            "the Dockerfile's header does not say how to build {name}: {build}"
        );
    }

    // Runtime: slim Debian, an unprivileged user.
    assert!(stages[1].from.contains("slim"), "{}", stages[1].from);
    assert!(
        image_uid(&stages) >= 1000,
        "the images run as a system user id"
    );

    for bin in Bin::ALL {
        let stage = stages.iter().find(|s| s.name == bin.name()).unwrap();
        assert_eq!(stage.from, "runtime", "{}", bin.name());
        assert_ne!(image_user(&stages, bin.name()).as_deref(), Some("root"));
        let path = format!("/usr/local/bin/{}", bin.name());
        let entry = stage.all("ENTRYPOINT").last().expect("an ENTRYPOINT");
        let entry: Vec<String> = serde_json::from_str(entry).expect("ENTRYPOINT in exec form");
        assert_eq!(
            entry,
            std::slice::from_ref(&path),
            "{} ENTRYPOINT",
            bin.name()
        );
        assert!(
            stage
                .all("COPY")
                .any(|c| c.starts_with("--from=build") && c.ends_with(&path)),
            "{}: the binary is not copied from the build stage",
            bin.name()
        );
        assert!(
            stages
                .iter()
                .all(|s| s.name == bin.name() || !s.all("COPY").any(|c| c.ends_with(&path))),
            "{} lands in another image too",
            bin.name()
        );

        if bin == Bin::Relay {
            // https:// webhooks: the relay refuses to start without CAs to
            // check the receiver's certificate against.
            assert!(
                lineage(&stages, bin.name())
                    .iter()
                    .flat_map(|s| s.all("RUN"))
                    .any(|r| r.contains("install") && r.contains("ca-certificates")),
                "the order-relay image has no CA certificates for https:// webhooks"
            );
        }

        let config = image_config(&bins, &stages, bin);
        config.check(&BTreeSet::new());
        let exposed: BTreeSet<u16> = stage
            .all("EXPOSE")
            .flat_map(|e| e.split_whitespace())
            .map(|p| p.parse().unwrap())
            .collect();
        let listening: BTreeSet<u16> = config.listen_ports().into_values().collect();
        assert_eq!(exposed, listening, "{}: EXPOSE vs listen ports", bin.name());
    }
    assert!(deploy("Dockerfile.dockerignore").exists());
    let ignore = read(deploy("Dockerfile.dockerignore"));
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "the build context leaves out target/"
    );
}

fn stages_arg(name: &str) -> String {
    read(deploy("Dockerfile"))
        .lines()
        .find_map(|l| l.strip_prefix(&format!("ARG {name}=")).map(String::from))
        .unwrap_or_else(|| panic!("no ARG {name}"))
}

fn version_at_least(version: &str, min: &str) -> bool {
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap()).collect() };
    parse(version) >= parse(min)
}

// === docker-compose.yml ===

/// `15s`, `1m30s`, `500ms` → whole seconds (rounded down).
fn seconds(duration: &str) -> u64 {
    let mut total_ms = 0;
    let mut number = String::new();
    let mut chars = duration.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().unwrap();
        number.clear();
        total_ms += match c {
            'h' => n * 3_600_000,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                n
            }
            'm' => n * 60_000,
            's' => n * 1000,
            _ => panic!("bad duration {duration}"),
        };
    }
    assert!(number.is_empty(), "bad duration {duration}");
    total_ms / 1000
}

/// A Compose `environment:` (map or `K=V` list).
fn compose_env(service: &Yaml) -> BTreeMap<String, String> {
    let env = &service["environment"];
    let mut out = BTreeMap::new();
    for (k, v) in entries(env) {
        out.insert(k, text(v).unwrap_or_default());
    }
    for item in items(env).iter().filter_map(text) {
        let (k, v) = item.split_once('=').unwrap_or((&item, ""));
        out.insert(k.to_string(), v.to_string());
    }
    out
}

#[test]
fn compose_matches_the_binaries_and_prometheus() {
    let bins = Binaries::load();
    let stages = dockerfile();
    let compose = yaml::load_one(&deploy("docker-compose.yml"));
    let services = entries(&compose["services"]);
    let names: BTreeSet<&str> = services.iter().map(|(n, _)| n.as_str()).collect();
    for wanted in [
        "redis",
        "gateway-1",
        "gateway-2",
        "seckill-service-1",
        "seckill-service-2",
        "order-relay",
        "postgres",
        "prometheus",
        "grafana",
        "blackbox",
    ] {
        assert!(names.contains(wanted), "docker-compose.yml has no {wanted}");
    }

    let mut host_ports = BTreeSet::new();
    // job → targets Prometheus should scrape, from the Compose services.
    let mut expected_targets: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut expected_probes = BTreeSet::new();
    for (name, service) in &services {
        // Published ports: loopback only, no host port twice.
        for port in items(&service["ports"]).iter().filter_map(text) {
            let parts: Vec<&str> = port.split(':').collect();
            assert_eq!(
                parts.len(),
                3,
                "{name}: publish as IP:HOST:CONTAINER, got {port}"
            );
            assert_eq!(
                parts[0], "127.0.0.1",
                "{name}: {port} is published beyond loopback"
            );
            assert!(
                host_ports.insert(parts[1].to_string()),
                "{name}: host port {} twice",
                parts[1]
            );
        }
        let image = text(&service["image"]).unwrap_or_else(|| panic!("{name}: no image"));
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "{name}: pin the image version ({image})"
        );
        let Some(target) = text(&service["build"]["target"]) else {
            continue;
        };

        // A process of ours, built from the Dockerfile.
        let bin = Bin::from_stage(&target)
            .unwrap_or_else(|| panic!("{name}: build target {target} is not a binary's stage"));
        assert_eq!(image, format!("{}:{VERSION}", bin.image()), "{name}: image");
        let context = text(&service["build"]["context"]).unwrap();
        let file = text(&service["build"]["dockerfile"]).unwrap();
        let dockerfile = deploy(&context).join(&file);
        assert_eq!(
            dockerfile.canonicalize().ok(),
            deploy("Dockerfile").canonicalize().ok(),
            "{name}: build {context} {file}"
        );

        let mut config = image_config(&bins, &stages, bin);
        config.origin = format!("docker-compose.yml {name}");
        let env = compose_env(service);
        for (k, v) in &env {
            config.set(k, Some(v.clone()));
        }
        config.check(&BTreeSet::new());
        let listening: BTreeSet<u16> = config.listen_ports().into_values().collect();
        for port in items(&service["ports"]).iter().filter_map(text) {
            let container: u16 = port.rsplit(':').next().unwrap().parse().unwrap();
            assert!(
                listening.contains(&container),
                "{name}: publishes {container}, but the process listens on {listening:?}"
            );
        }
        let admin = config.admin_port();

        // Redis (and the relay's PostgreSQL) is a Compose service it waits
        // for until that one is healthy.
        let waits_for = |url: &str, scheme: &str| {
            let rest = url
                .strip_prefix(scheme)
                .unwrap_or_else(|| panic!("{name}: {url} is no {scheme} URL"));
            let authority = rest.split('/').next().unwrap();
            let host = authority
                .rsplit('@')
                .next()
                .unwrap()
                .split(':')
                .next()
                .unwrap();
            assert!(
                names.contains(host),
                "{name}: {url} names no Compose service"
            );
            assert_eq!(
                text(at(service, &["depends_on", host, "condition"])).as_deref(),
                Some("service_healthy"),
                "{name}: does not wait for {host}"
            );
            assert!(
                !missing(&compose["services"][host]["healthcheck"]),
                "{host}: no health check to wait for"
            );
            host.to_string()
        };
        let redis = config.value("--redis-url").expect("a Redis URL");
        waits_for(&redis, "redis://");
        if bin == Bin::Relay {
            assert_eq!(
                config.relay_sink(),
                "postgres",
                "{name}: Compose runs a PostgreSQL for the relay"
            );
            let url = config.value("--postgres-url").unwrap();
            let host = waits_for(&url, "postgres://");
            postgres_matches(&url, &compose["services"][host.as_str()], name);
        }

        if bin == Bin::Gateway {
            let advertised = config.value("--advertise-grpc").unwrap();
            assert_eq!(
                advertised,
                format!("{name}:{}", config.port("--grpc-listen")),
                "{name}: the services must call it back on its own name and gRPC port"
            );
            let token = env.get("SECKILL_ADMIN_TOKEN").expect("an admin token");
            assert!(
                token.starts_with("${SECKILL_ADMIN_TOKEN:?"),
                "{name}: the admin token must come from the operator's environment, required"
            );
        }

        let health: Vec<String> = items(&service["healthcheck"]["test"])
            .iter()
            .filter_map(text)
            .collect();
        let health = health.join(" ");
        assert!(
            health.contains(&format!("/dev/tcp/127.0.0.1/{admin}")) && health.contains("/readyz"),
            "{name}: the health check probes /readyz on the admin port {admin}: {health}"
        );
        let grace = seconds(&text(&service["stop_grace_period"]).expect("a stop_grace_period"));
        assert!(
            grace > config.drain_seconds(),
            "{name}: stop_grace_period {grace}s does not cover the drain ({}s)",
            config.drain_seconds()
        );

        expected_targets
            .entry(bin.job())
            .or_default()
            .insert(format!("{name}:{admin}"));
        expected_probes.insert(format!("http://{name}:{admin}/readyz"));
    }
    assert_eq!(expected_targets["seckill-gateway"].len(), 2);
    assert_eq!(expected_targets["seckill-service"].len(), 2);
    assert_eq!(expected_targets["seckill-order-relay"].len(), 1);

    // Redis keeps an append-only file.
    let redis_cmd: Vec<String> = items(&compose["services"]["redis"]["command"])
        .iter()
        .filter_map(text)
        .collect();
    assert!(
        redis_cmd
            .windows(2)
            .any(|w| w[0] == "--appendonly" && w[1] == "yes"),
        "Redis without AOF: {redis_cmd:?}"
    );

    // Mounted files exist.
    for (name, service) in &services {
        for volume in items(&service["volumes"]).iter().filter_map(text) {
            let source = volume.split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(
                    deploy(source).exists(),
                    "{name}: mounts {source}, which does not exist"
                );
            }
        }
    }

    // Prometheus scrapes exactly these processes, and probes their readiness.
    let prom = yaml::load_one(&deploy("prometheus/prometheus.yml"));
    let jobs = items(&prom["scrape_configs"]);
    let targets_of = |job: &str| -> BTreeSet<String> {
        let j = jobs
            .iter()
            .find(|j| text(&j["job_name"]).as_deref() == Some(job))
            .unwrap_or_else(|| panic!("prometheus.yml has no job {job}"));
        items(&j["static_configs"])
            .iter()
            .flat_map(|s| items(&s["targets"]))
            .filter_map(text)
            .collect()
    };
    for (job, targets) in &expected_targets {
        assert_eq!(&targets_of(job), targets, "prometheus.yml job {job}");
    }
    assert_eq!(targets_of("seckill-readyz"), expected_probes);
    let readyz = jobs
        .iter()
        .find(|j| text(&j["job_name"]).as_deref() == Some("seckill-readyz"))
        .unwrap();
    let exporter = items(&readyz["relabel_configs"])
        .iter()
        .find(|r| text(&r["target_label"]).as_deref() == Some("__address__"))
        .and_then(|r| text(&r["replacement"]))
        .unwrap();
    let (host, port) = exporter.split_once(':').unwrap();
    assert!(
        names.contains(host),
        "the blackbox exporter {exporter} is no Compose service"
    );
    assert_eq!(port, "9115");
}

/// The relay's `postgres://USER:PASSWORD@HOST:PORT/DB` is the Compose
/// PostgreSQL's user, password (the same `${VAR:-default}`), database and
/// port; its data is on a named volume.
fn postgres_matches(url: &str, postgres: &Yaml, relay: &str) {
    let rest = url.strip_prefix("postgres://").unwrap();
    let (auth, rest) = rest
        .rsplit_once('@')
        .unwrap_or_else(|| panic!("{relay}: {url} has no user"));
    let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
    let (host_port, db) = rest
        .split_once('/')
        .unwrap_or_else(|| panic!("{relay}: {url} names no database"));
    let env = compose_env(postgres);
    let image = text(&postgres["image"]).unwrap();
    assert!(image.starts_with("postgres:"), "{image}");
    assert_eq!(
        env.get("POSTGRES_USER").map(String::as_str),
        Some(user),
        "{relay}: user"
    );
    assert_eq!(
        env.get("POSTGRES_DB").map(String::as_str),
        Some(db),
        "{relay}: database"
    );
    let secret = env.get("POSTGRES_PASSWORD").expect("POSTGRES_PASSWORD");
    assert_eq!(
        secret, password,
        "{relay}: the password PostgreSQL is given"
    );
    assert!(
        secret.starts_with("${") && secret.ends_with('}'),
        "the PostgreSQL password comes from the operator's environment: {secret}"
    );
    assert_eq!(
        host_port.rsplit_once(':').map(|(_, p)| p),
        Some("5432"),
        "{relay}: port"
    );
    let health: Vec<String> = items(&postgres["healthcheck"]["test"])
        .iter()
        .filter_map(text)
        .collect();
    assert!(
        health.iter().any(|t| t == "pg_isready"),
        "postgres health check: {health:?}"
    );
    assert!(
        items(&postgres["volumes"])
            .iter()
            .filter_map(text)
            .any(|v| v.ends_with(":/var/lib/postgresql/data") && !v.starts_with('.')),
        "postgres: the orders on a named volume"
    );
}

// === Kubernetes ===

struct Manifests {
    docs: Vec<(String, Yaml)>,
    kustomization: Yaml,
}

impl Manifests {
    fn load() -> Self {
        let base = deploy("k8s/base");
        let kustomization = yaml::load_one(&base.join("kustomization.yaml"));
        let mut docs = Vec::new();
        for resource in items(&kustomization["resources"]).iter().filter_map(text) {
            for doc in yaml::load(&base.join(&resource)) {
                assert!(
                    text(&doc["kind"]).is_some() && text(&doc["apiVersion"]).is_some(),
                    "{resource}: a document without kind or apiVersion"
                );
                docs.push((resource.clone(), doc));
            }
        }
        Manifests {
            docs,
            kustomization,
        }
    }

    fn of_kind(&self, kind: &str) -> impl Iterator<Item = &Yaml> + '_ {
        let kind = kind.to_string();
        self.docs
            .iter()
            .map(|(_, d)| d)
            .filter(move |d| text(&d["kind"]).as_deref() == Some(kind.as_str()))
    }

    fn get(&self, kind: &str, name: &str) -> Option<&Yaml> {
        self.of_kind(kind)
            .find(|d| text(&d["metadata"]["name"]).as_deref() == Some(name))
    }

    /// Deployments and StatefulSets.
    fn workloads(&self) -> impl Iterator<Item = &Yaml> {
        self.of_kind("Deployment")
            .chain(self.of_kind("StatefulSet"))
    }
}

fn labels(y: &Yaml) -> BTreeMap<String, String> {
    entries(y)
        .into_iter()
        .map(|(k, v)| (k, text(v).unwrap_or_default()))
        .collect()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A container's port by name or number.
fn container_port(container: &Yaml, port: &Yaml) -> Option<u16> {
    let ports = items(&container["ports"]);
    match port {
        Yaml::Integer(n) => ports
            .iter()
            .find(|p| p["containerPort"].as_i64() == Some(*n))
            .map(|_| *n as u16),
        _ => {
            let name = text(port)?;
            ports
                .iter()
                .find(|p| text(&p["name"]).as_deref() == Some(&name))
                .and_then(|p| p["containerPort"].as_i64())
                .map(|n| n as u16)
        }
    }
}

/// A container's configuration: the image's environment, the ConfigMaps'
/// (`envFrom`), the container's `env` in order (a `$(NAME)` refers to a
/// variable defined above it) and its `args`, checked against the binary's
/// options. No secret reaches the command line (`ps` shows it): an argument
/// never refers to a variable read from a Secret, or built from one.
fn container_config<'a>(
    bins: &'a Binaries,
    stages: &[Stage],
    m: &Manifests,
    bin: Bin,
    c: &Yaml,
    origin: &str,
) -> Config<'a> {
    let mut config = image_config(bins, stages, bin);
    config.origin = origin.to_string();
    for from in items(&c["envFrom"]) {
        let cm_name = text(&from["configMapRef"]["name"]).expect("envFrom a ConfigMap");
        let cm = m
            .get("ConfigMap", &cm_name)
            .unwrap_or_else(|| panic!("{origin}: no ConfigMap {cm_name}"));
        for (k, v) in entries(&cm["data"]) {
            config.set(&k, text(v));
        }
    }
    let refers = |value: &str| -> Vec<String> {
        value
            .split("$(")
            .skip(1)
            .map(|part| part.split(')').next().unwrap().to_string())
            .collect()
    };
    let mut defined = BTreeSet::new();
    let mut secret = BTreeSet::new();
    let mut helpers = BTreeSet::new();
    for e in items(&c["env"]) {
        let var = text(&e["name"]).unwrap();
        let value = text(&e["value"]);
        match &value {
            Some(v) => {
                for referred in refers(v) {
                    assert!(
                        defined.contains(&referred),
                        "{origin}: {var} refers to $({referred}) before it is defined"
                    );
                    if secret.contains(&referred) {
                        secret.insert(var.clone());
                    }
                    helpers.insert(referred);
                }
            }
            None => assert!(!missing(&e["valueFrom"]), "{origin}: {var} has no value"),
        }
        if secret_ref(e).is_some() {
            secret.insert(var.clone());
        }
        defined.insert(var.clone());
        config.set(&var, value);
    }
    for a in items(&c["args"]).iter().filter_map(text) {
        for referred in refers(&a) {
            assert!(
                defined.contains(&referred),
                "{origin}: argument {a} refers to $({referred}), which is not defined"
            );
            assert!(
                !secret.contains(&referred),
                "{origin}: argument {a} puts the secret $({referred}) on the command line; \
                 set the option's variable instead"
            );
            helpers.insert(referred);
        }
        config.arg(&a);
    }
    config.check(&helpers);
    config
}

#[test]
fn kubernetes_base_matches_the_binaries() {
    let bins = Binaries::load();
    let stages = dockerfile();
    let uid = image_uid(&stages) as i64;
    let m = Manifests::load();
    let kinds: BTreeSet<String> = m
        .docs
        .iter()
        .filter_map(|(_, d)| text(&d["kind"]))
        .collect();
    for kind in [
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "StatefulSet",
    ] {
        assert!(kinds.contains(kind), "the base has no {kind}");
    }
    assert_eq!(
        text(&m.kustomization["namespace"]),
        m.of_kind("Namespace")
            .next()
            .and_then(|n| text(&n["metadata"]["name"])),
        "kustomization namespace"
    );

    // Images: ours are tagged with the workspace version.
    let images: BTreeMap<String, String> = items(&m.kustomization["images"])
        .iter()
        .map(|i| (text(&i["name"]).unwrap(), text(&i["newTag"]).unwrap()))
        .collect();
    for bin in Bin::ALL {
        assert_eq!(
            images.get(bin.image()).map(String::as_str),
            Some(VERSION),
            "{} tag",
            bin.image()
        );
    }

    let mut seen = BTreeSet::new();
    // ConfigMap → the binaries that read it.
    let mut config_readers: BTreeMap<String, BTreeSet<Bin>> = BTreeMap::new();
    for deployment in m.of_kind("Deployment") {
        let name = text(&deployment["metadata"]["name"]).unwrap();
        let template = &deployment["spec"]["template"];
        let pod_labels = labels(&template["metadata"]["labels"]);
        assert!(
            selects(
                &labels(&deployment["spec"]["selector"]["matchLabels"]),
                &pod_labels
            ),
            "{name}: the selector does not match the pod labels"
        );
        let spec = &template["spec"];
        let containers = items(&spec["containers"]);
        assert_eq!(containers.len(), 1, "{name}: one container");
        let c = &containers[0];
        let image = text(&c["image"]).unwrap();
        let bin =
            Bin::from_image(&image).unwrap_or_else(|| panic!("{name}: image {image} is not ours"));
        assert!(
            images.contains_key(&image),
            "{name}: image {image} not tagged by the kustomization"
        );
        seen.insert(bin.image());
        let origin = format!("k8s {name}");
        for from in items(&c["envFrom"]) {
            let cm = text(&from["configMapRef"]["name"]).expect("envFrom a ConfigMap");
            config_readers.entry(cm).or_default().insert(bin);
        }

        // Environment: the image's, the ConfigMaps', then the container's;
        // the arguments.
        let config = container_config(&bins, &stages, &m, bin, c, &origin);
        if bin == Bin::Relay {
            config.relay_sink();
        }

        // Ports, probes, scrape annotations.
        let listening = config.listen_ports();
        let declared: BTreeSet<u16> = items(&c["ports"])
            .iter()
            .map(|p| p["containerPort"].as_i64().unwrap() as u16)
            .collect();
        assert_eq!(
            declared,
            listening.values().copied().collect::<BTreeSet<_>>(),
            "{origin}: container ports vs listen ports"
        );
        let admin = config.admin_port();
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(
                text(&get["path"]).as_deref(),
                Some(path),
                "{origin}: {probe} path"
            );
            assert_eq!(
                container_port(c, &get["port"]),
                Some(admin),
                "{origin}: {probe} port"
            );
        }
        let annotations = labels(&template["metadata"]["annotations"]);
        assert_eq!(
            annotations.get("prometheus.io/scrape").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            annotations.get("prometheus.io/port"),
            Some(&admin.to_string()),
            "{origin}"
        );
        assert_eq!(
            annotations.get("prometheus.io/path").map(String::as_str),
            Some("/metrics")
        );
        assert_eq!(
            pod_labels.get("app.kubernetes.io/name").map(String::as_str),
            Some(bin.image()),
            "{origin}: the job name Prometheus takes from app.kubernetes.io/name (alerts use it)"
        );

        // Callbacks reach the gateway on its pod IP.
        if bin == Bin::Gateway {
            assert_eq!(
                config.value("--advertise-grpc"),
                Some(format!("$(POD_IP):{}", config.port("--grpc-listen"))),
                "{origin}: advertise the pod IP"
            );
            let pod_ip = items(&c["env"])
                .iter()
                .find(|e| text(&e["name"]).as_deref() == Some("POD_IP"))
                .expect("POD_IP");
            assert_eq!(
                text(&pod_ip["valueFrom"]["fieldRef"]["fieldPath"]).as_deref(),
                Some("status.podIP")
            );
            assert!(
                config.env.contains_key("SECKILL_ADMIN_TOKEN"),
                "{origin}: no admin token"
            );
            assert!(
                config.env["SECKILL_ADMIN_TOKEN"].is_none(),
                "{origin}: the admin token comes from a Secret, not the manifest"
            );
        }

        // The drain fits in the termination grace period.
        let grace = spec["terminationGracePeriodSeconds"]
            .as_i64()
            .expect("terminationGracePeriodSeconds") as u64;
        let pre_stop: u64 = items(&c["lifecycle"]["preStop"]["exec"]["command"])
            .iter()
            .filter_map(text)
            .collect::<Vec<_>>()
            .windows(2)
            .find(|w| w[0] == "sleep")
            .map(|w| w[1].parse().unwrap())
            .unwrap_or(0);
        assert!(
            grace > pre_stop + config.drain_seconds(),
            "{origin}: terminationGracePeriodSeconds {grace} <= preStop {pre_stop}s + drain {}s",
            config.drain_seconds()
        );
        if bin == Bin::Gateway {
            assert!(
                pre_stop > 0,
                "{origin}: a preStop pause lets endpoints drop the pod before it stops accepting"
            );
        }

        // Resources and hardening.
        for key in ["cpu", "memory"] {
            assert!(
                text(&c["resources"]["requests"][key]).is_some(),
                "{origin}: no {key} request"
            );
        }
        assert!(
            text(&c["resources"]["limits"]["memory"]).is_some(),
            "{origin}: no memory limit"
        );
        assert_eq!(
            spec["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{origin}"
        );
        assert_eq!(
            spec["securityContext"]["runAsUser"].as_i64(),
            Some(uid),
            "{origin}: the image's user"
        );
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{origin}"
        );
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{origin}"
        );
    }
    assert_eq!(seen.len(), Bin::ALL.len(), "a Deployment for each binary");

    // Every ConfigMap key is an option of every binary that reads it.
    for cm in m.of_kind("ConfigMap") {
        let cm_name = text(&cm["metadata"]["name"]).unwrap();
        let readers = config_readers.get(&cm_name).cloned().unwrap_or_default();
        assert!(!readers.is_empty(), "ConfigMap {cm_name}: nobody reads it");
        for (key, _) in entries(&cm["data"]) {
            for &bin in &readers {
                assert!(
                    bins.of(bin).env(&key).is_some_and(|o| !o.hidden),
                    "ConfigMap {cm_name}: {key} is not an option of {}",
                    bin.name()
                );
            }
        }
    }

    // Services select a workload and target its named ports.
    for service in m.of_kind("Service") {
        let name = text(&service["metadata"]["name"]).unwrap();
        let selector = labels(&service["spec"]["selector"]);
        let workload = m
            .workloads()
            .find(|w| {
                selects(
                    &selector,
                    &labels(&w["spec"]["template"]["metadata"]["labels"]),
                )
            })
            .unwrap_or_else(|| panic!("Service {name} selects no workload"));
        let c = &items(&workload["spec"]["template"]["spec"]["containers"])[0];
        for port in items(&service["spec"]["ports"]) {
            let target = if missing(&port["targetPort"]) {
                &port["port"]
            } else {
                &port["targetPort"]
            };
            assert!(
                container_port(c, target).is_some(),
                "Service {name}: targetPort {target:?} is no container port"
            );
        }
    }

    // The autoscaler drives the seckill service on CPU, which it requests.
    let hpas: Vec<&Yaml> = m.of_kind("HorizontalPodAutoscaler").collect();
    assert_eq!(hpas.len(), 1);
    let target = &hpas[0]["spec"]["scaleTargetRef"];
    assert_eq!(text(&target["kind"]).as_deref(), Some("Deployment"));
    let target_name = text(&target["name"]).unwrap();
    let scaled = m
        .get("Deployment", &target_name)
        .expect("the HPA's target exists");
    let image = text(&scaled["spec"]["template"]["spec"]["containers"][0]["image"]).unwrap();
    assert_eq!(Bin::from_image(&image), Some(Bin::Service));
    let (min, max) = (
        hpas[0]["spec"]["minReplicas"].as_i64().unwrap(),
        hpas[0]["spec"]["maxReplicas"].as_i64().unwrap(),
    );
    assert!(1 < min && min < max, "HPA replicas {min}..{max}");

    // Disruption budgets cover the gateways and services and leave room to
    // evict (the one relay is rescheduled; another takes over its entries).
    for bin in [Bin::Gateway, Bin::Service] {
        let workload = m
            .of_kind("Deployment")
            .find(|d| {
                text(&d["spec"]["template"]["spec"]["containers"][0]["image"]).as_deref()
                    == Some(bin.image())
            })
            .unwrap();
        let pod_labels = labels(&workload["spec"]["template"]["metadata"]["labels"]);
        let pdb = m
            .of_kind("PodDisruptionBudget")
            .find(|p| selects(&labels(&p["spec"]["selector"]["matchLabels"]), &pod_labels))
            .unwrap_or_else(|| panic!("no PodDisruptionBudget for {}", bin.name()));
        let replicas = workload["spec"]["replicas"].as_i64().unwrap();
        if let Some(min) = pdb["spec"]["minAvailable"].as_i64() {
            assert!(
                min < replicas,
                "{}: minAvailable {min} blocks every eviction",
                bin.name()
            );
        }
        if let Some(max) = pdb["spec"]["maxUnavailable"].as_i64() {
            assert!(max >= 1);
        }
    }

    redis_is_private_and_durable(&m);
}

/// A container's environment variable.
fn env_var<'a>(container: &'a Yaml, name: &str) -> Option<&'a Yaml> {
    items(&container["env"])
        .iter()
        .find(|e| text(&e["name"]).as_deref() == Some(name))
}

/// (Secret, key) a variable is read from.
fn secret_ref(var: &Yaml) -> Option<(String, String)> {
    let r = &var["valueFrom"]["secretKeyRef"];
    Some((text(&r["name"])?, text(&r["key"])?))
}

/// Redis of a set of manifests: every gateway and service reaches the
/// StatefulSet's first pod through its headless Service, with the password
/// Redis requires, from the same Secret key; Redis keeps an append-only
/// file and evicts nothing.
fn redis_is_private_and_durable(m: &Manifests) {
    let sts = m
        .of_kind("StatefulSet")
        .find(|s| {
            text(&s["spec"]["template"]["spec"]["containers"][0]["image"])
                .is_some_and(|i| i.starts_with("redis:"))
        })
        .expect("a Redis StatefulSet");
    let redis = &sts["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = items(&redis["args"]).iter().filter_map(text).collect();
    let arg = |name: &str| {
        args.windows(2)
            .find(|w| w[0] == name)
            .map(|w| w[1].clone())
            .unwrap_or_else(|| panic!("Redis without {name}: {args:?}"))
    };
    assert_eq!(arg("--appendonly"), "yes", "Redis without AOF");
    assert_eq!(arg("--maxmemory-policy"), "noeviction");
    let requirepass = arg("--requirepass");
    let var = requirepass
        .strip_prefix("$(")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("--requirepass {requirepass}: not from a variable"));
    let password = env_var(redis, var)
        .and_then(secret_ref)
        .unwrap_or_else(|| panic!("Redis's {var} is not read from a Secret"));
    // The probe authenticates (redis-cli reads REDISCLI_AUTH) and fails
    // on anything but PONG.
    assert_eq!(
        var, "REDISCLI_AUTH",
        "the probe's redis-cli has no password"
    );
    let probe: Vec<String> = items(&redis["readinessProbe"]["exec"]["command"])
        .iter()
        .filter_map(text)
        .collect();
    assert!(
        probe.last().is_some_and(|c| c.contains("grep -q PONG")),
        "{probe:?}"
    );
    let service_name = text(&sts["spec"]["serviceName"]).unwrap();
    let svc = m
        .get("Service", &service_name)
        .unwrap_or_else(|| panic!("no Service {service_name}"));
    assert_eq!(
        text(&svc["spec"]["clusterIP"]).as_deref(),
        Some("None"),
        "a headless Service"
    );
    let sts_name = text(&sts["metadata"]["name"]).unwrap();
    let mut clients = 0;
    for d in m.of_kind("Deployment") {
        let name = text(&d["metadata"]["name"]).unwrap();
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        let Some(url) = env_var(c, "SECKILL_REDIS_URL") else {
            continue;
        };
        clients += 1;
        let url = text(&url["value"]).unwrap_or_else(|| panic!("{name}: SECKILL_REDIS_URL"));
        let rest = url
            .strip_prefix("redis://:$(")
            .unwrap_or_else(|| panic!("{name}: {url} has no password"));
        let (var, host_port) = rest.split_once(")@").unwrap();
        assert_eq!(
            env_var(c, var).and_then(secret_ref),
            Some(password.clone()),
            "{name}: the password is not the one Redis requires"
        );
        let (host, port) = host_port.split_once(':').unwrap();
        assert_eq!(host, format!("{sts_name}-0.{service_name}"), "{name}");
        assert!(items(&svc["spec"]["ports"])
            .iter()
            .any(|p| text(&p["port"]).as_deref() == Some(port)));
    }
    assert!(clients >= 2, "gateways and services reach Redis");
}

/// With kubectl at hand, the base also builds as Kustomize sees it.
#[test]
fn kustomize_builds_the_base_when_kubectl_is_installed() {
    let Some(kubectl) = which("kubectl") else {
        eprintln!(
            "kubectl not installed: the Kustomize build is not checked (the YAML checks still run)"
        );
        return;
    };
    let out = run(
        "kubectl kustomize deploy/k8s/base",
        Command::new(kubectl)
            .args(["kustomize", "deploy/k8s/base"])
            .current_dir(repo_root()),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        out.describe()
    );
    let built = yaml::parse(&out.stdout).expect("kustomize output is YAML");
    if let Some(valid) = kubernetes_validate(&built) {
        assert!(valid.status.success(), "the base: {}", valid.describe());
    }
    let m = Manifests::load();
    assert_eq!(built.len(), m.docs.len());
    for doc in &built {
        let kind = text(&doc["kind"]).unwrap();
        if kind != "Namespace" {
            assert_eq!(
                text(&doc["metadata"]["namespace"]).as_deref(),
                Some("seckill"),
                "{kind}"
            );
        }
        if kind == "Deployment" {
            let image = text(&doc["spec"]["template"]["spec"]["containers"][0]["image"]).unwrap();
            assert!(image.ends_with(&format!(":{VERSION}")), "{image}");
        }
    }
}

// === Helm chart ===
//
// `deploy/helm/seckill` is linted and rendered offline by Helm's own engine
// (the Helm v4 SDK from PyPI's helm-python-sdk, through
// deploy/check/helm.py: no `helm` binary comes from the registries here),
// in the configurations below; what it renders is checked as the base is,
// and validated by kubernetes-validate --strict. `scripts/test` installs
// both Python packages.

const CHART: &str = "helm/seckill";

/// Defaults: in-chart Redis, generated secrets, NetworkPolicies, CPU HPA.
const DEFAULTS: &str = "{}";
/// Everything on: external Redis, the relay on PostgreSQL, the Operator's
/// objects, both metric autoscalers.
const EVERYTHING: &str = r#"{
  "orderRelay": {"enabled": true, "sink": {"type": "postgres"}, "postgresUrl": "postgres://relay@db/orders"},
  "redis": {"external": {"url": "redis://:s3cret@redis.example:6379"}},
  "metrics": {"serviceMonitor": {"enabled": true}, "prometheusRule": {"enabled": true}},
  "service": {"autoscaling": {"metric": "queueDepth"}},
  "gateway": {"autoscaling": {"enabled": true}, "env": {"SECKILL_MAX_SALES": 100}}
}"#;
/// Secrets made by the operator; the relay on a webhook, in its own group;
/// no policies.
const EXISTING_SECRETS: &str = r#"{
  "secrets": {"existingSecret": "sale-tokens"},
  "orderRelay": {"enabled": true, "group": "payments", "existingSecret": "relay-secrets", "sink": {"type": "webhook", "webhookUrl": "https://orders.example/hook"}},
  "networkPolicy": {"enabled": false}
}"#;

/// `deploy/check/helm.py` with the Helm SDK: `None` (and a message) when
/// the SDK is not installed.
fn helm(what: &str, values: &str) -> Option<deploy_check::command::Output> {
    let python = which("python3")?;
    let out = run(
        &format!("helm.py {what}"),
        Command::new(python)
            .arg(deploy("check/helm.py"))
            .args([what, &deploy(CHART).to_string_lossy(), values])
            .current_dir(repo_root()),
        Duration::from_secs(60),
    );
    if out.status.code() == Some(3) {
        eprintln!(
            "{}: the chart is not linted nor rendered (scripts/test installs helm-python-sdk)",
            out.stderr.trim()
        );
        return None;
    }
    Some(out)
}

/// The chart rendered with `values`, as manifests (template path, document).
fn render(values: &str) -> Option<Manifests> {
    let out = helm("render", values)?;
    assert!(out.status.success(), "render {values}: {}", out.describe());
    let rendered: BTreeMap<String, String> =
        serde_json::from_str(&out.stdout).expect("helm.py render prints JSON");
    let mut docs = Vec::new();
    for (path, manifest) in rendered {
        for doc in yaml::parse(&manifest).unwrap_or_else(|e| panic!("{path}: {e}\n{manifest}")) {
            if missing(&doc) {
                continue;
            }
            assert!(
                text(&doc["kind"]).is_some() && text(&doc["apiVersion"]).is_some(),
                "{path}: a document without kind or apiVersion"
            );
            docs.push((path.clone(), doc));
        }
    }
    Some(Manifests {
        docs,
        kustomization: Yaml::Null,
    })
}

fn kinds(m: &Manifests) -> BTreeSet<String> {
    m.docs
        .iter()
        .filter_map(|(_, d)| text(&d["kind"]))
        .collect()
}

fn name_of(doc: &Yaml) -> String {
    text(&doc["metadata"]["name"]).unwrap()
}

/// The Deployment whose container runs `image` (its name without the tag).
fn deployment_of<'a>(m: &'a Manifests, image: &str) -> Option<&'a Yaml> {
    m.of_kind("Deployment").find(|d| {
        text(&d["spec"]["template"]["spec"]["containers"][0]["image"])
            .is_some_and(|i| i.split(':').next() == Some(image))
    })
}

fn pod_labels(workload: &Yaml) -> BTreeMap<String, String> {
    labels(&workload["spec"]["template"]["metadata"]["labels"])
}

#[test]
fn helm_chart_lints_clean_under_strict() {
    for values in [DEFAULTS, EVERYTHING, EXISTING_SECRETS] {
        let Some(out) = helm("lint", values) else {
            return;
        };
        assert!(out.status.success(), "lint: {}", out.describe());
        let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(report["total_charts_linted"], 1, "{report}");
        assert_eq!(
            report["errors"],
            serde_json::json!([]),
            "{values}: {report}"
        );
        // Severity 2 is a warning, 3 an error; 1 (info) is only the
        // recommended icon.
        for msg in report["messages"].as_array().unwrap() {
            assert!(msg["severity"].as_i64() < Some(2), "{values}: {msg}");
        }
    }
}

#[test]
fn helm_chart_renders_what_the_binaries_accept() {
    let bins = Binaries::load();
    let stages = dockerfile();
    let chart = yaml::load_one(&deploy(&format!("{CHART}/Chart.yaml")));
    assert_eq!(text(&chart["version"]).as_deref(), Some(VERSION));
    assert_eq!(text(&chart["appVersion"]).as_deref(), Some(VERSION));
    for values in [DEFAULTS, EVERYTHING, EXISTING_SECRETS] {
        let Some(m) = render(values) else {
            return;
        };
        let v: serde_json::Value = serde_json::from_str(values).unwrap();
        // Secrets the operator makes.
        let existing: Vec<&str> = [
            &v["secrets"]["existingSecret"],
            &v["orderRelay"]["existingSecret"],
        ]
        .into_iter()
        .filter_map(|s| s.as_str())
        .collect();
        let existing = existing.as_slice();
        let external_redis = v["redis"]["external"]["url"].is_string();

        // Names are unique per kind.
        let mut names = BTreeSet::new();
        for (path, doc) in &m.docs {
            assert!(
                names.insert((text(&doc["kind"]).unwrap(), name_of(doc))),
                "{path}: {} {} twice",
                text(&doc["kind"]).unwrap(),
                name_of(doc)
            );
        }

        let relay_enabled = v["orderRelay"]["enabled"].as_bool().unwrap_or(false);
        for bin in Bin::ALL {
            let Some(d) = deployment_of(&m, bin.image()) else {
                assert!(
                    bin == Bin::Relay && !relay_enabled,
                    "{values}: no {} Deployment",
                    bin.name()
                );
                continue;
            };
            assert!(
                bin != Bin::Relay || relay_enabled,
                "{values}: a relay not asked for"
            );
            let origin = format!("chart {} ({values})", name_of(d));
            let spec = &d["spec"]["template"]["spec"];
            let c = &spec["containers"][0];
            assert_eq!(
                text(&c["image"]),
                Some(format!("{}:{VERSION}", bin.image())),
                "{origin}"
            );
            assert!(selects(
                &labels(&d["spec"]["selector"]["matchLabels"]),
                &pod_labels(d)
            ));
            assert_eq!(
                pod_labels(d)
                    .get("app.kubernetes.io/name")
                    .map(String::as_str),
                Some(bin.image()),
                "{origin}: the job name the alert rules select"
            );

            // Environment: the image's, the ConfigMap's, the container's;
            // the arguments; every variable and flag an option of the
            // binary, every Secret key it reads there.
            let config = container_config(&bins, &stages, &m, bin, c, &origin);
            for e in items(&c["env"]) {
                if let Some((secret, key)) = secret_ref(e) {
                    secret_has(&m, existing, &secret, &key, &origin);
                }
            }
            if let (Bin::Gateway, Some(n)) =
                (bin, v["gateway"]["env"]["SECKILL_MAX_SALES"].as_i64())
            {
                assert_eq!(
                    config.value("--max-sales"),
                    Some(n.to_string()),
                    "{origin}: gateway.env reaches the container"
                );
            }

            // Ports, probes, drain, as the base does it.
            let declared: BTreeSet<u16> = items(&c["ports"])
                .iter()
                .map(|p| p["containerPort"].as_i64().unwrap() as u16)
                .collect();
            assert_eq!(
                declared,
                config.listen_ports().into_values().collect(),
                "{origin}: container ports vs listen ports"
            );
            for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
                assert_eq!(text(&c[probe]["httpGet"]["path"]).as_deref(), Some(path));
                assert_eq!(
                    container_port(c, &c[probe]["httpGet"]["port"]),
                    Some(config.admin_port()),
                    "{origin}: {probe}"
                );
            }
            let pre_stop = items(&c["lifecycle"]["preStop"]["exec"]["command"])
                .get(1)
                .and_then(text)
                .map(|s| s.parse::<u64>().unwrap())
                .unwrap_or(0);
            if bin == Bin::Gateway {
                assert!(
                    pre_stop >= 5,
                    "{origin}: preStop lets load balancers catch up"
                );
            }
            let grace = spec["terminationGracePeriodSeconds"].as_i64().unwrap() as u64;
            assert!(
                grace > pre_stop + config.drain_seconds(),
                "{origin}: grace {grace} s does not cover preStop {pre_stop} s + drain {} s",
                config.drain_seconds()
            );
            for vol in items(&spec["volumes"]) {
                if let Some(secret) = text(&vol["secret"]["secretName"]) {
                    for item in items(&vol["secret"]["items"]) {
                        secret_has(&m, existing, &secret, &text(&item["key"]).unwrap(), &origin);
                    }
                }
            }
            if bin == Bin::Relay {
                order_relay_follows_the_contract(&m, d, &config, &v, existing);
            } else {
                let token_file = config.value("--callback-token-file").unwrap();
                let mount = text(&c["volumeMounts"][0]["mountPath"]).unwrap();
                assert_eq!(token_file, format!("{mount}/token"), "{origin}");
            }

            // Callbacks reach the gateway on its pod IP.
            if bin == Bin::Gateway {
                assert_eq!(
                    config.value("--advertise-grpc"),
                    Some(format!("$(POD_IP):{}", config.port("--grpc-listen"))),
                    "{origin}: advertise the pod IP"
                );
                assert_eq!(
                    text(&env_var(c, "POD_IP").unwrap()["valueFrom"]["fieldRef"]["fieldPath"])
                        .as_deref(),
                    Some("status.podIP")
                );
            }
            if external_redis {
                let url = env_var(c, "SECKILL_REDIS_URL").unwrap();
                secret_has(
                    &m,
                    existing,
                    &secret_ref(url).unwrap().0,
                    "redis-url",
                    &origin,
                );
            }
        }
        if external_redis {
            assert!(
                !kinds(&m).contains("StatefulSet"),
                "{values}: an unused Redis"
            );
        } else {
            redis_is_private_and_durable(&m);
        }

        // Services select pods, on ports those pods have.
        for svc in m.of_kind("Service") {
            let selector = labels(&svc["spec"]["selector"]);
            let workload = m
                .workloads()
                .find(|w| selects(&selector, &pod_labels(w)))
                .unwrap_or_else(|| panic!("Service {} selects no pods", name_of(svc)));
            let c = &workload["spec"]["template"]["spec"]["containers"][0];
            for port in items(&svc["spec"]["ports"]) {
                assert!(
                    container_port(c, &port["targetPort"]).is_some(),
                    "Service {}: no such port",
                    name_of(svc)
                );
            }
        }
        let gateway = deployment_of(&m, "seckill-gateway").unwrap();
        for svc in ["gateway", "gateway-admin", "gateway-grpc"] {
            assert!(
                m.get("Service", &format!("sale-seckill-{svc}")).is_some(),
                "{values}: no {svc} Service"
            );
        }

        // Secrets: made by the chart, or the operator's.
        match v["secrets"]["existingSecret"].as_str() {
            Some(name) => assert!(m.get("Secret", name).is_none()),
            None => {
                let secret = m.get("Secret", "sale-seckill-secrets").unwrap();
                for (key, value) in entries(&secret["data"]) {
                    assert!(
                        text(value).is_some_and(|v| v.len() >= 32),
                        "{values}: {key} too short or empty"
                    );
                }
            }
        }

        if v["networkPolicy"]["enabled"].as_bool() == Some(false) {
            assert!(!kinds(&m).contains("NetworkPolicy"));
        } else {
            network_policies_close_admin_and_grpc(&m, gateway);
        }
        autoscalers_read_what_the_adapter_serves(&m);
        if v["metrics"]["serviceMonitor"]["enabled"].as_bool() == Some(true) {
            operator_objects_match_the_rules(&m);
        } else {
            assert!(!kinds(&m).contains("ServiceMonitor") && !kinds(&m).contains("PrometheusRule"));
        }
    }
}

/// The Secret `name` has `key` (a Secret of the operator's is taken on
/// trust: only its name is checked).
fn secret_has(m: &Manifests, existing: &[&str], name: &str, key: &str, origin: &str) {
    match m.get("Secret", name) {
        Some(secret) => assert!(
            !missing(&secret["data"][key]),
            "{origin}: Secret {name} has no {key}"
        ),
        None => assert!(existing.contains(&name), "{origin}: no Secret {name}"),
    }
}

/// The relay as the chart renders it (its options are already checked
/// against `order_relay::Args`, its admin port against the binary's
/// default): every flag is in docs/API.md's "Order relay" section, it reads
/// the Redis of the release, its one sink is the one the values ask for,
/// with the Secret or file that sink needs, and its group is the values'.
fn order_relay_follows_the_contract(
    m: &Manifests,
    relay: &Yaml,
    config: &Config,
    values: &serde_json::Value,
    existing: &[&str],
) {
    let origin = &config.origin;
    let api = read("docs/API.md");
    let section = api
        .split("## Order relay")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/API.md has an Order relay section");
    let c = &relay["spec"]["template"]["spec"]["containers"][0];
    for flag in config.args.keys() {
        assert!(
            section.contains(&format!("`{flag}")),
            "{origin}: {flag} is not in docs/API.md's Order relay section"
        );
    }
    assert!(
        env_var(c, "SECKILL_REDIS_URL").is_some(),
        "{origin}: the relay reads the release's Redis"
    );
    let wanted = values["orderRelay"]["sink"]["type"]
        .as_str()
        .unwrap_or("stdout");
    assert_eq!(config.relay_sink(), wanted, "{origin}: the sink");
    match wanted {
        "postgres" => {
            let url = env_var(c, "SECKILL_POSTGRES_URL")
                .and_then(secret_ref)
                .unwrap_or_else(|| {
                    panic!("{origin}: the PostgreSQL URL is not read from a Secret")
                });
            secret_has(m, existing, &url.0, &url.1, origin);
        }
        "webhook" => {
            assert_eq!(
                config.value("--webhook-url").as_deref(),
                values["orderRelay"]["sink"]["webhookUrl"].as_str(),
                "{origin}: the webhook URL"
            );
            let file = config.value("--webhook-secret-file").unwrap();
            let mount = text(&c["volumeMounts"][0]["mountPath"]).unwrap();
            assert!(file.starts_with(&format!("{mount}/")), "{origin}: {file}");
        }
        "stdout" => {}
        _ => panic!("sink {wanted}"),
    }
    let group = values["orderRelay"]["group"].as_str().unwrap_or("relay");
    assert_eq!(config.value("--group").as_deref(), Some(group), "{origin}");
}

/// Gateways: the admin port only from `networkPolicy.admin.from`, the gRPC
/// port only from seckill services; services: only their admin port.
fn network_policies_close_admin_and_grpc(m: &Manifests, gateway: &Yaml) {
    let service = deployment_of(m, "seckill-service").unwrap();
    let policy_for = |workload: &Yaml| {
        let pods = pod_labels(workload);
        m.of_kind("NetworkPolicy")
            .find(|p| policy_selects(&p["spec"]["podSelector"], &pods))
            .unwrap_or_else(|| panic!("no NetworkPolicy for {}", name_of(workload)))
    };
    let rule_for = |policy: &Yaml, port: &str| -> Vec<Yaml> {
        let rules: Vec<&Yaml> = items(&policy["spec"]["ingress"])
            .iter()
            .filter(|r| {
                items(&r["ports"])
                    .iter()
                    .any(|p| text(&p["port"]).as_deref() == Some(port))
            })
            .collect();
        assert_eq!(rules.len(), 1, "{}: one rule for {port}", name_of(policy));
        items(&rules[0]["from"]).to_vec()
    };
    let gw = policy_for(gateway);
    assert_eq!(
        items(&gw["spec"]["policyTypes"])
            .iter()
            .filter_map(text)
            .collect::<Vec<_>>(),
        ["Ingress"]
    );
    let grpc = rule_for(gw, "grpc");
    assert_eq!(grpc.len(), 1, "gRPC from one peer: {grpc:?}");
    assert!(
        missing(&grpc[0]["namespaceSelector"]),
        "gRPC from this namespace only"
    );
    assert!(policy_selects(
        &grpc[0]["podSelector"],
        &pod_labels(service)
    ));
    assert!(!policy_selects(
        &grpc[0]["podSelector"],
        &pod_labels(gateway)
    ));
    let admin = rule_for(gw, "admin");
    assert!(!admin.is_empty(), "the admin port open to everyone");
    assert_eq!(
        text(&admin[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"])
            .as_deref(),
        Some("monitoring"),
        "admin from networkPolicy.admin.from"
    );
    // Service pods: admin only, from the same peers.
    let svc = policy_for(service);
    assert_eq!(items(&svc["spec"]["ingress"]).len(), 1);
    assert_eq!(rule_for(svc, "admin"), admin);
    if let Some(relay) = deployment_of(m, "seckill-order-relay") {
        assert_eq!(rule_for(policy_for(relay), "admin"), admin);
    }
    // Redis: only from the release's gateways and services (and relay).
    if let Some(redis) = m.of_kind("StatefulSet").next() {
        let from = rule_for(policy_for(redis), "redis");
        assert_eq!(from.len(), 1, "{from:?}");
        assert!(missing(&from[0]["namespaceSelector"]));
        for client in [gateway, service] {
            assert!(policy_selects(&from[0]["podSelector"], &pod_labels(client)));
        }
        assert!(!policy_selects(&from[0]["podSelector"], &pod_labels(redis)));
    }
    // Every pod of the chart is under a policy.
    for w in m.workloads() {
        policy_for(w);
    }
}

/// A label selector (matchLabels and `In` expressions) selects `pods`.
fn policy_selects(selector: &Yaml, pods: &BTreeMap<String, String>) -> bool {
    let labels_match = labels(&selector["matchLabels"])
        .iter()
        .all(|(k, v)| pods.get(k) == Some(v));
    let expressions = items(&selector["matchExpressions"]);
    let exprs_match = expressions.iter().all(|e| {
        assert_eq!(text(&e["operator"]).as_deref(), Some("In"));
        let key = text(&e["key"]).unwrap();
        items(&e["values"])
            .iter()
            .filter_map(text)
            .any(|v| pods.get(&key) == Some(&v))
    });
    (!missing(&selector["matchLabels"]) || !expressions.is_empty()) && labels_match && exprs_match
}

/// Every autoscaler targets a Deployment of the chart, and reads a metric
/// that deploy/helm/prometheus-adapter.yaml serves from series the
/// binaries export.
fn autoscalers_read_what_the_adapter_serves(m: &Manifests) {
    let adapter = yaml::load_one(&deploy("helm/prometheus-adapter.yaml"));
    let api = read("docs/API.md");
    let served = |kind: &str| -> BTreeMap<String, String> {
        items(&adapter["rules"][kind])
            .iter()
            .map(|r| {
                let name = text(&r["name"]["as"]).unwrap();
                let series = text(&r["seriesQuery"]).unwrap();
                let metric = deploy_check::promql::references(&series).unwrap().selectors[0]
                    .metric
                    .clone();
                assert!(
                    api.contains(&format!("`{metric}`")),
                    "{metric} is not in docs/API.md"
                );
                let query = text(&r["metricsQuery"])
                    .unwrap()
                    .replace("<<.Series>>", &metric)
                    .replace("<<.LabelMatchers>>", "namespace=\"seckill\"")
                    .replace("<<.GroupBy>>", "namespace");
                deploy_check::promql::references(&query)
                    .unwrap_or_else(|e| panic!("adapter rule {name}: {e}"));
                (name, metric)
            })
            .collect()
    };
    let (custom, external) = (served("custom"), served("external"));
    for hpa in m.of_kind("HorizontalPodAutoscaler") {
        let target = text(&hpa["spec"]["scaleTargetRef"]["name"]).unwrap();
        assert!(m.get("Deployment", &target).is_some(), "HPA of {target}");
        assert!(hpa["spec"]["minReplicas"].as_i64() <= hpa["spec"]["maxReplicas"].as_i64());
        for metric in items(&hpa["spec"]["metrics"]) {
            match text(&metric["type"]).unwrap().as_str() {
                "Resource" => {}
                "Pods" => {
                    assert!(custom.contains_key(&text(&metric["pods"]["metric"]["name"]).unwrap()))
                }
                "External" => {
                    assert!(external
                        .contains_key(&text(&metric["external"]["metric"]["name"]).unwrap()))
                }
                other => panic!("{target}: metric type {other}"),
            }
        }
    }
}

/// The ServiceMonitor scrapes the admin Services under the job names the
/// rules select; the PrometheusRule carries deploy/prometheus/rules as they
/// are, and the chart's copies are identical to them.
fn operator_objects_match_the_rules(m: &Manifests) {
    let sm = m
        .of_kind("ServiceMonitor")
        .next()
        .expect("a ServiceMonitor");
    let job_label = text(&sm["spec"]["jobLabel"]).unwrap();
    let selector = labels(&sm["spec"]["selector"]["matchLabels"]);
    let port = text(&sm["spec"]["endpoints"][0]["port"]).unwrap();
    let jobs: BTreeSet<String> = m
        .of_kind("Service")
        .filter(|s| selects(&selector, &labels(&s["metadata"]["labels"])))
        .map(|s| {
            assert!(items(&s["spec"]["ports"])
                .iter()
                .any(|p| text(&p["name"]).as_deref() == Some(port.as_str())));
            labels(&s["metadata"]["labels"])[&job_label].clone()
        })
        .collect();
    for bin in Bin::ALL {
        if bin != Bin::Relay || deployment_of(m, bin.image()).is_some() {
            assert!(
                jobs.contains(bin.image()),
                "no job {}: {jobs:?}",
                bin.image()
            );
        }
    }

    let rule = m
        .of_kind("PrometheusRule")
        .next()
        .expect("a PrometheusRule");
    let mut expected = Vec::new();
    let rules_dir = deploy("prometheus/rules");
    let mut files: Vec<_> = std::fs::read_dir(&rules_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in &files {
        let copy = deploy(&format!(
            "{CHART}/files/{}",
            file.file_name().unwrap().to_string_lossy()
        ));
        assert_eq!(
            read(file),
            read(&copy),
            "{} differs from {}: copy it",
            copy.display(),
            file.display()
        );
        expected.extend(items(&yaml::load_one(file)["groups"]).iter().cloned());
    }
    assert_eq!(
        std::fs::read_dir(deploy(&format!("{CHART}/files")))
            .unwrap()
            .count(),
        files.len()
    );
    // Helm writes keys in its own order: compare them sorted.
    assert_eq!(
        canonical(&rule["spec"]["groups"]),
        canonical(&Yaml::Array(expected)),
        "the PrometheusRule's groups are not prometheus/rules/"
    );
}

/// A YAML value as JSON with its map keys sorted.
fn canonical(y: &Yaml) -> serde_json::Value {
    match y {
        Yaml::Hash(h) => serde_json::Value::Object(
            h.iter()
                .map(|(k, v)| (text(k).unwrap(), canonical(v)))
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect(),
        ),
        Yaml::Array(a) => a.iter().map(canonical).collect(),
        other => text(other).map_or(serde_json::Value::Null, serde_json::Value::String),
    }
}

#[test]
fn helm_chart_refuses_values_it_cannot_deploy() {
    for (values, says) in [
        (
            r#"{"orderRelay": {"enabled": true, "sink": {"type": "postgres"}}}"#,
            "orderRelay.postgresUrl",
        ),
        (
            r#"{"orderRelay": {"enabled": true, "sink": {"type": "kafka"}}}"#,
            "postgres, webhook or stdout",
        ),
        (
            r#"{"orderRelay": {"enabled": true, "sink": {"type": "webhook"}, "webhookSecret": "x"}}"#,
            "orderRelay.sink.webhookUrl",
        ),
        (
            r#"{"service": {"autoscaling": {"metric": "memory"}}}"#,
            "cpu or queueDepth",
        ),
        (
            r#"{"networkPolicy": {"admin": {"from": []}}}"#,
            "networkPolicy.admin.from",
        ),
    ] {
        let Some(out) = helm("render", values) else {
            return;
        };
        assert!(!out.status.success(), "{values} renders");
        assert!(out.stderr.contains(says), "{values}: {}", out.stderr);
    }
}

#[test]
fn helm_chart_generates_secrets_and_takes_given_ones() {
    let given = r#"{"secrets": {"adminToken": "admin-token-of-the-operator", "callbackToken": "callback"}, "redis": {"password": "pw"}}"#;
    let (Some(a), Some(b), Some(g)) = (render(DEFAULTS), render(DEFAULTS), render(given)) else {
        return;
    };
    let data = |m: &Manifests, key: &str| {
        text(&m.get("Secret", "sale-seckill-secrets").unwrap()["data"][key]).unwrap()
    };
    for key in ["admin-token", "callback-token", "redis-password"] {
        assert_ne!(
            data(&a, key),
            data(&b, key),
            "{key}: the same generated twice"
        );
    }
    // Base64 of the values given.
    assert_eq!(
        data(&g, "admin-token"),
        "YWRtaW4tdG9rZW4tb2YtdGhlLW9wZXJhdG9y"
    );
    assert_eq!(data(&g, "callback-token"), "Y2FsbGJhY2s=");
    assert_eq!(data(&g, "redis-password"), "cHc=");
}

/// What the chart renders passes kubernetes-validate --strict (the
/// Operator's objects have no schema there and are checked above), and a
/// deliberately wrong field is caught, so the validator is really looking.
#[test]
fn helm_chart_renders_valid_kubernetes_objects() {
    for (i, values) in [DEFAULTS, EVERYTHING, EXISTING_SECRETS].iter().enumerate() {
        let Some(m) = render(values) else {
            return;
        };
        let docs: Vec<Yaml> = m
            .docs
            .iter()
            .map(|(_, d)| d.clone())
            .filter(|d| {
                !text(&d["apiVersion"])
                    .unwrap()
                    .starts_with("monitoring.coreos.com/")
            })
            .collect();
        let Some(out) = kubernetes_validate(&docs) else {
            return;
        };
        assert!(out.status.success(), "{values}: {}", out.describe());
        if i == 0 {
            let mut wrong = docs.clone();
            let mut doc = wrong[0].as_hash().unwrap().clone();
            doc.insert(Yaml::String("spek".into()), Yaml::String("typo".into()));
            wrong[0] = Yaml::Hash(doc);
            assert!(
                !kubernetes_validate(&wrong).unwrap().status.success(),
                "kubernetes-validate let an unknown field through"
            );
        }
    }
}

/// `kubernetes-validate --strict` on `docs`; `None` (and a message) when it
/// is not installed.
fn kubernetes_validate(docs: &[Yaml]) -> Option<deploy_check::command::Output> {
    let python = which("python3")?;
    let probe = run(
        "kubernetes-validate --version",
        Command::new(&python).args(["-m", "kubernetes_validate", "--version"]),
        Duration::from_secs(30),
    );
    if !probe.status.success() {
        eprintln!("kubernetes-validate not installed (scripts/test installs it): not run");
        return None;
    }
    let mut text = String::new();
    for doc in docs {
        yaml_rust2::YamlEmitter::new(&mut text).dump(doc).unwrap();
        text.push('\n');
    }
    let path = seckill_test_support::temp_dir().join("manifests.yaml");
    std::fs::write(&path, text).unwrap();
    Some(run(
        "kubernetes-validate --strict",
        Command::new(&python)
            .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
            .arg(&path),
        Duration::from_secs(60),
    ))
}

// === Single node ===

/// The embedded gateway's options in a single-node deployment: no Redis,
/// and a data directory inside one of `mounts` (the volumes it mounts).
fn embedded_on_a_volume(config: &Config, mounts: &[String]) {
    let origin = &config.origin;
    assert_eq!(
        config.value("--redis-url"),
        None,
        "{origin}: the embedded mode has no Redis"
    );
    let dir = config.value("--data-dir").expect("a data directory");
    assert_ne!(dir, "none", "{origin}: memory only would lose every order");
    assert!(
        mounts.iter().any(|m| Path::new(&dir).starts_with(m)),
        "{origin}: the data directory {dir} is on no volume ({mounts:?})"
    );
}

#[test]
fn single_node_deployments_keep_the_data_directory_on_a_volume() {
    let bins = Binaries::load();
    let stages = dockerfile();

    let compose = yaml::load_one(&deploy("docker-compose.single-node.yml"));
    let services = entries(&compose["services"]);
    assert_eq!(services.len(), 1, "one gateway, nothing else");
    let (name, service) = &services[0];
    assert_eq!(
        text(&service["build"]["target"]).as_deref(),
        Some("gateway")
    );
    let mut config = image_config(&bins, &stages, Bin::Gateway);
    config.origin = format!("docker-compose.single-node.yml {name}");
    for (k, v) in compose_env(service) {
        config.set(&k, Some(v));
    }
    config.check(&BTreeSet::new());
    let volumes: BTreeSet<String> = entries(&compose["volumes"])
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let mounts: Vec<String> = items(&service["volumes"])
        .iter()
        .filter_map(text)
        .filter_map(|v| {
            let mut parts = v.split(':');
            let (source, target) = (parts.next()?, parts.next()?);
            volumes.contains(source).then(|| target.to_string())
        })
        .collect();
    embedded_on_a_volume(&config, &mounts);
    for port in items(&service["ports"]).iter().filter_map(text) {
        assert!(
            port.starts_with("127.0.0.1:"),
            "{name}: {port} beyond loopback"
        );
    }

    let dir = deploy("k8s/single-node");
    let kustomization = yaml::load_one(&dir.join("kustomization.yaml"));
    let docs: Vec<Yaml> = items(&kustomization["resources"])
        .iter()
        .filter_map(text)
        .flat_map(|r| yaml::load(&dir.join(r)))
        .collect();
    let sets: Vec<&Yaml> = docs
        .iter()
        .filter(|d| text(&d["kind"]).as_deref() == Some("StatefulSet"))
        .collect();
    assert_eq!(sets.len(), 1, "one StatefulSet");
    let set = sets[0];
    assert_eq!(
        set["spec"]["replicas"].as_i64(),
        Some(1),
        "one gateway per volume"
    );
    let c = &items(&set["spec"]["template"]["spec"]["containers"])[0];
    let mut config = image_config(&bins, &stages, Bin::Gateway);
    config.origin = "k8s single-node".into();
    for e in items(&c["env"]) {
        let value = text(&e["value"]);
        assert!(
            value.is_some() || !missing(&e["valueFrom"]),
            "{:?} has no value",
            e["name"]
        );
        config.set(&text(&e["name"]).unwrap(), value);
    }
    config.check(&BTreeSet::new());
    let claims: BTreeSet<String> = items(&set["spec"]["volumeClaimTemplates"])
        .iter()
        .filter_map(|t| text(&t["metadata"]["name"]))
        .collect();
    let mounts: Vec<String> = items(&c["volumeMounts"])
        .iter()
        .filter(|m| text(&m["name"]).is_some_and(|n| claims.contains(&n)))
        .filter_map(|m| text(&m["mountPath"]))
        .collect();
    embedded_on_a_volume(&config, &mounts);
}
