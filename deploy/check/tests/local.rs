//! The "multi-node on one machine" topology as an operator runs it:
//! `deploy/local/up` starts Redis, two gateways, two seckill services and
//! (when installed) Prometheus on free loopback ports; a second `up` changes
//! nothing; a spike through the load harness buys on one gateway a sale
//! created on the other, and its audit passes (the order feed included); Prometheus
//! scrapes every process and loads the rules; `deploy/local/down` then
//! leaves no process behind: not one of the recorded pids, nothing carrying
//! the topology's folder in its environment, no port still open.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use deploy_check::command::{promtool, run, which, Output};
use deploy_check::{deploy, read};
use seckill_test_support::free_port;
use seckill_test_support::metrics::Scrape;
use seckill_test_support::process::{binary, http, wait_until};

const TOKEN: &str = "local-topology-token";
const STOCK: u64 = 300;

/// What `up` starts, and the program each pid must belong to.
const PROCESSES: &[(&str, &str)] = &[
    ("redis", "redis-server"),
    ("gateway-1", "gateway"),
    ("gateway-2", "gateway"),
    ("seckill-service-1", "seckill-service"),
    ("seckill-service-2", "seckill-service"),
    ("order-relay", "order-relay"),
];

/// The ports `up` is given, by its variable.
const PORTS: &[&str] = &[
    "SECKILL_LOCAL_REDIS_PORT",
    "SECKILL_LOCAL_GATEWAY1_HTTP",
    "SECKILL_LOCAL_GATEWAY1_ADMIN",
    "SECKILL_LOCAL_GATEWAY1_GRPC",
    "SECKILL_LOCAL_GATEWAY2_HTTP",
    "SECKILL_LOCAL_GATEWAY2_ADMIN",
    "SECKILL_LOCAL_GATEWAY2_GRPC",
    "SECKILL_LOCAL_SERVICE1_ADMIN",
    "SECKILL_LOCAL_SERVICE2_ADMIN",
    "SECKILL_LOCAL_RELAY_ADMIN",
    "SECKILL_LOCAL_PROMETHEUS_PORT",
    "SECKILL_LOCAL_BLACKBOX_PORT",
];

/// A topology started by `up` in a folder of its own. Dropping it (also
/// when a check fails) runs `down`, then kills whatever recorded pid is
/// still running, so a failing test leaves nothing behind either.
struct Topology {
    dir: PathBuf,
    ports: BTreeMap<&'static str, u16>,
    pids: BTreeMap<String, u32>,
}

impl Topology {
    fn new() -> Self {
        let mut distinct = BTreeSet::new();
        while distinct.len() < PORTS.len() {
            distinct.insert(free_port());
        }
        Topology {
            dir: seckill_test_support::temp_dir().join("run"),
            ports: PORTS.iter().copied().zip(distinct).collect(),
            pids: BTreeMap::new(),
        }
    }

    fn port(&self, var: &str) -> u16 {
        self.ports[var]
    }

    fn addr(&self, var: &str) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port(var)))
    }

    /// Runs `deploy/local/<script>` with this topology's settings.
    fn script(&self, script: &str, args: &[&str]) -> Output {
        // `up` starts these; build whichever is missing first.
        let bin_dir = ["gateway", "seckill-service", "loadtest", "order-relay"]
            .map(binary)
            .first()
            .and_then(|b| b.parent())
            .unwrap()
            .to_path_buf();
        let mut cmd = Command::new(deploy(&format!("local/{script}")));
        cmd.args(args)
            .env("SECKILL_BIN_DIR", &bin_dir)
            .env("SECKILL_LOCAL_DIR", &self.dir)
            .env("SECKILL_ADMIN_TOKEN", TOKEN)
            .env("SECKILL_LOCAL_LOG", "warn")
            .env("SECKILL_LOCAL_SCRAPE_INTERVAL", "1s")
            .env("SECKILL_LOCAL_WAIT_S", "20");
        for (var, port) in &self.ports {
            cmd.env(var, port.to_string());
        }
        run(
            &format!("deploy/local/{script}"),
            &mut cmd,
            Duration::from_secs(60),
        )
    }

    /// The pid files `up` left: name → pid.
    fn pid_files(&self) -> BTreeMap<String, u32> {
        let mut pids = BTreeMap::new();
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "pid") {
                let name = path.file_stem().unwrap().to_string_lossy().to_string();
                let pid = read(&path).trim().parse().expect("a pid");
                pids.insert(name, pid);
            }
        }
        pids
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if self.dir.exists() && !self.pid_files().is_empty() {
            let out = self.script("down", &[]);
            if !out.status.success() {
                eprintln!("down after a failure: {}", out.describe());
            }
        }
        for (name, pid) in &self.pids {
            if alive(*pid) && comm(*pid).as_deref() == expected_comm(name) {
                eprintln!("{name} (pid {pid}) survived: SIGKILL");
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
        if std::thread::panicking() {
            for entry in std::fs::read_dir(self.dir.join("logs"))
                .into_iter()
                .flatten()
            {
                let path = entry.unwrap().path();
                eprintln!("--- {} ---\n{}", path.display(), read(&path));
            }
        }
        let _ = std::fs::remove_dir_all(self.dir.parent().unwrap());
    }
}

/// The process exists and is not a zombie (a stopped process whose parent
/// has not reaped it is gone for every purpose here).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) STATE ...`; comm may hold spaces and parentheses.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

fn expected_comm(name: &str) -> Option<&'static str> {
    match name {
        "prometheus" => Some("prometheus"),
        "blackbox" => Some("prometheus-blac"),
        _ => PROCESSES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c),
    }
}

/// Live processes whose environment names this topology's folder (every
/// process `up` starts inherits SECKILL_LOCAL_DIR).
fn processes_of(dir: &Path) -> Vec<(u32, String)> {
    let marker = format!("SECKILL_LOCAL_DIR={}", dir.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let has = environ
            .split(|b| *b == 0)
            .any(|var| var == marker.as_bytes());
        if has && alive(pid) {
            found.push((pid, comm(pid).unwrap_or_default()));
        }
    }
    found
}

fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) =
        http(addr, "GET", path, &[], "").unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn up_spike_observe_down() {
    let mut topo = Topology::new();

    // --- up ---
    let out = topo.script("up", &[]);
    assert!(out.status.success(), "up failed: {}", out.describe());
    topo.pids = topo.pid_files();
    assert!(
        out.stdout.contains(TOKEN),
        "up prints the admin token:\n{}",
        out.stdout
    );
    for var in [
        "SECKILL_LOCAL_GATEWAY1_HTTP",
        "SECKILL_LOCAL_GATEWAY1_ADMIN",
        "SECKILL_LOCAL_GATEWAY2_HTTP",
        "SECKILL_LOCAL_GATEWAY2_ADMIN",
        "SECKILL_LOCAL_SERVICE1_ADMIN",
        "SECKILL_LOCAL_SERVICE2_ADMIN",
    ] {
        let url = format!("http://127.0.0.1:{}", topo.port(var));
        assert!(
            out.stdout.contains(&url),
            "up prints {url}:\n{}",
            out.stdout
        );
    }
    let prometheus = which("prometheus").is_some();
    let mut expected: BTreeSet<&str> = PROCESSES.iter().map(|(n, _)| *n).collect();
    if prometheus {
        expected.insert("prometheus");
    } else {
        eprintln!("prometheus is not installed: the topology runs without it");
    }
    let names: BTreeSet<&str> = topo.pids.keys().map(String::as_str).collect();
    assert!(
        expected.is_subset(&names),
        "pid files {names:?}, expected {expected:?}"
    );
    for (name, pid) in &topo.pids {
        assert!(alive(*pid), "{name} (pid {pid}) is not running");
        assert_eq!(
            comm(*pid).as_deref(),
            expected_comm(name),
            "{name} (pid {pid})"
        );
    }
    for addr in [
        "SECKILL_LOCAL_GATEWAY1_ADMIN",
        "SECKILL_LOCAL_GATEWAY2_ADMIN",
        "SECKILL_LOCAL_SERVICE1_ADMIN",
        "SECKILL_LOCAL_SERVICE2_ADMIN",
    ] {
        assert_eq!(
            http(topo.addr(addr), "GET", "/readyz", &[], "").unwrap().0,
            200,
            "{addr}"
        );
    }
    // Redis keeps an append-only file.
    assert!(
        topo.dir.join("redis/appendonlydir").exists(),
        "no AOF in {}",
        topo.dir.display()
    );

    // --- up again: nothing new ---
    let again = topo.script("up", &[]);
    assert!(
        again.status.success(),
        "second up failed: {}",
        again.describe()
    );
    assert!(again.stdout.contains("already running"), "{}", again.stdout);
    assert_eq!(
        topo.pid_files(),
        topo.pids,
        "a second up changed the processes"
    );

    // --- a spike: the sale is created on gateway-1, bought on gateway-2 ---
    let report = topo.dir.join("spike.json");
    let spike = run(
        "loadtest run",
        Command::new(binary("loadtest")).args([
            "run",
            "--target",
            &format!("http://{}", topo.addr("SECKILL_LOCAL_GATEWAY2_HTTP")),
            "--sale",
            "local-spike",
            "--create-sale",
            &STOCK.to_string(),
            "--admin-url",
            &format!("http://{}", topo.addr("SECKILL_LOCAL_GATEWAY1_ADMIN")),
            "--admin-token",
            TOKEN,
            "--token-rate",
            "2000",
            "--token-capacity",
            "500",
            "--queue-capacity",
            "10000",
            "--profile",
            "at-once:3000/1s",
            "--assert",
            "oversell==0",
            "--assert",
            "missing==0",
            "--assert",
            &format!("sold=={STOCK}"),
            // A busy machine may put the load generator behind its
            // schedule; the audit is what this test is about.
            "--allow-invalid",
            "--quiet",
            "--json",
            report.to_str().unwrap(),
        ]),
        Duration::from_secs(60),
    );
    assert!(
        spike.status.success(),
        "the spike failed: {}",
        spike.describe()
    );
    let report: serde_json::Value = serde_json::from_str(&read(&report)).unwrap();
    let audit = &report["audit"];
    assert_eq!(audit["passed"], true, "audit: {audit:#}");
    for check in audit["checks"].as_array().unwrap() {
        assert_eq!(check["passed"], true, "audit check {check}");
    }
    assert_eq!(audit["sold_after"], STOCK, "{audit:#}");
    // The orders the store recorded, as the gateway's order feed lists
    // them: one per unit of stock, none twice.
    assert_eq!(audit["feed"]["orders"], STOCK, "{audit:#}");
    assert_eq!(audit["feed"]["duplicate_order_ids"], 0, "{audit:#}");
    assert_eq!(audit["feed"]["told_not_in_feed"], 0, "{audit:#}");
    assert_eq!(report["answered"], report["requests_sent"]);

    // Both services decided requests between them; gateway-2 answered.
    let decided: f64 = [
        "SECKILL_LOCAL_SERVICE1_ADMIN",
        "SECKILL_LOCAL_SERVICE2_ADMIN",
    ]
    .iter()
    .map(|a| {
        let (_, m) = http(topo.addr(a), "GET", "/metrics", &[], "").unwrap();
        let scrape = Scrape::parse(&m).unwrap_or_else(|e| panic!("{a} /metrics: {e}"));
        scrape
            .series()
            .iter()
            .filter(|s| s.name == "seckill_service_processed_total")
            .map(|s| s.value)
            .sum::<f64>()
    })
    .sum();
    assert!(
        decided >= STOCK as f64,
        "the services decided {decided} requests"
    );

    // --- Prometheus scrapes every process and has the rules ---
    if prometheus {
        let config = topo.dir.join("prometheus/prometheus.yml");
        let check = run(
            "promtool check config (generated)",
            Command::new(promtool()).args(["check", "config", config.to_str().unwrap()]),
            Duration::from_secs(30),
        );
        assert!(check.status.success(), "{}", check.describe());

        let prom = topo.addr("SECKILL_LOCAL_PROMETHEUS_PORT");
        let mut targets = serde_json::Value::Null;
        let all_up = wait_until(Duration::from_secs(20), || {
            targets = get_json(prom, "/api/v1/targets?state=active");
            let active = targets["data"]["activeTargets"].as_array().unwrap();
            let seckill = active
                .iter()
                .filter(|t| {
                    t["labels"]["job"]
                        .as_str()
                        .is_some_and(|j| j.starts_with("seckill-"))
                })
                .count();
            // Two gateways, two services, the relay.
            seckill >= 5 && active.iter().all(|t| t["health"] == "up")
        });
        assert!(all_up, "not every target is up: {targets:#}");

        let rules = get_json(prom, "/api/v1/rules");
        let loaded: BTreeSet<&str> = rules["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .filter_map(|r| r["name"].as_str())
            .collect();
        let alerts = read(deploy("prometheus/rules/seckill-alerts.yml"));
        for line in alerts.lines() {
            if let Some(name) = line.trim().strip_prefix("- alert: ") {
                assert!(loaded.contains(name), "Prometheus did not load {name}");
            }
        }

        // The spike's successes reached Prometheus through a recording rule.
        let query = format!(
            "/api/v1/query?query={}",
            encode(r#"sum(seckill_gateway_requests_total{outcome="success"})"#)
        );
        let mut last = serde_json::Value::Null;
        let seen = wait_until(Duration::from_secs(15), || {
            last = get_json(prom, &query);
            last["data"]["result"][0]["value"][1].as_str() == Some(&STOCK.to_string())
        });
        assert!(
            seen,
            "Prometheus does not see the {STOCK} successes: {last:#}"
        );
    }

    // --- down: nothing left ---
    let down = topo.script("down", &[]);
    assert!(down.status.success(), "down failed: {}", down.describe());
    for (name, pid) in &topo.pids {
        assert!(!alive(*pid), "{name} (pid {pid}) still runs after down");
    }
    assert!(
        topo.pid_files().is_empty(),
        "pid files left: {:?}",
        topo.pid_files()
    );
    let left = processes_of(&topo.dir);
    assert!(left.is_empty(), "processes of the topology left: {left:?}");
    for (var, port) in &topo.ports {
        let addr = SocketAddr::from(([127, 0, 0, 1], *port));
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err(),
            "{var} {port} still accepts connections"
        );
    }
    assert!(
        topo.dir.join("redis/appendonlydir").exists(),
        "down keeps the Redis data"
    );

    // A second down has nothing to stop.
    let again = topo.script("down", &[]);
    assert!(again.status.success(), "{}", again.describe());
    assert!(!again.stdout.contains("stopped (pid"), "{}", again.stdout);
}

#[test]
fn up_refuses_a_taken_port_and_starts_nothing() {
    let topo = Topology::new();
    // Something else holds gateway-2's admin port.
    let squatter = std::net::TcpListener::bind(topo.addr("SECKILL_LOCAL_GATEWAY2_ADMIN")).unwrap();
    let out = topo.script("up", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("SECKILL_LOCAL_GATEWAY2_ADMIN"),
        "the error names the variable to change: {}",
        out.stderr
    );
    assert!(
        topo.pid_files().is_empty(),
        "started {:?}",
        topo.pid_files()
    );
    assert!(processes_of(&topo.dir).is_empty());
    drop(squatter);
}
