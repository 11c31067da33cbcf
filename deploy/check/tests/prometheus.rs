//! The Prometheus files as Prometheus itself reads them: `promtool check
//! config` on every configuration, `promtool check rules` on the rules,
//! `promtool test rules` on the alerts' unit tests; and each alert's
//! runbook entry exists. (`promtool check metrics` on live processes, and
//! the metric names the rules use, are in `live_metrics.rs`.)

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use deploy_check::command::{promtool, run};
use deploy_check::yaml::{self, items, text};
use deploy_check::{deploy, read};

const TIMEOUT: Duration = Duration::from_secs(30);

fn promtool_ok(args: &[&str], cwd: &Path) -> String {
    let out = run(
        &format!("promtool {}", args.join(" ")),
        Command::new(promtool()).args(args).current_dir(cwd),
        TIMEOUT,
    );
    assert!(
        out.status.success(),
        "promtool {} failed: {}",
        args.join(" "),
        out.describe()
    );
    out.stdout + &out.stderr
}

#[test]
fn compose_configuration_is_valid() {
    let out = promtool_ok(
        &["check", "config", "prometheus.yml"],
        &deploy("prometheus"),
    );
    assert!(out.contains("2 rule files found"), "{out}");
}

/// Some builds of promtool (Debian's among them) leave out Kubernetes
/// service discovery and refuse `kubernetes_sd_configs` as an unknown
/// field. Then the rest of the file (relabelling included) is checked with
/// the discovery swapped for an empty static list.
#[test]
fn kubernetes_configuration_is_valid() {
    let dir = deploy("prometheus");
    let out = run(
        "promtool check config kubernetes.yml",
        Command::new(promtool())
            .args(["check", "config", "kubernetes.yml"])
            .current_dir(&dir),
        TIMEOUT,
    );
    if out.status.success() {
        return;
    }
    let without_sd = out.stderr.contains("field kubernetes_sd_configs not found")
        || out.stdout.contains("field kubernetes_sd_configs not found");
    assert!(
        without_sd,
        "promtool check config kubernetes.yml: {}",
        out.describe()
    );
    eprintln!("this promtool has no Kubernetes discovery: checking kubernetes.yml with static targets instead");
    let scratch = seckill_test_support::temp_dir();
    let config = read(dir.join("kubernetes.yml"))
        .replace("kubernetes_sd_configs:", "static_configs:")
        .replace("- role: pod", "- targets: []");
    std::fs::write(scratch.join("kubernetes.yml"), config).unwrap();
    std::fs::create_dir(scratch.join("rules")).unwrap();
    for entry in std::fs::read_dir(dir.join("rules")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, scratch.join("rules").join(path.file_name().unwrap())).unwrap();
    }
    let out = promtool_ok(&["check", "config", "kubernetes.yml"], &scratch);
    assert!(out.contains("2 rule files found"), "{out}");
    let _ = std::fs::remove_dir_all(&scratch);
}

#[test]
fn rules_are_valid() {
    let dir = deploy("prometheus");
    let out = promtool_ok(
        &[
            "check",
            "rules",
            "rules/seckill-recording.yml",
            "rules/seckill-alerts.yml",
        ],
        &dir,
    );
    assert!(!out.contains("FAILED"), "{out}");
}

#[test]
fn alerts_pass_their_unit_tests() {
    let out = promtool_ok(
        &["test", "rules", "tests/seckill-alerts.test.yml"],
        &deploy("prometheus"),
    );
    assert!(out.contains("SUCCESS"), "{out}");
}

/// Every alert has a severity the routing knows, a runbook entry in
/// deploy/README.md, and a unit test in which it fires.
#[test]
fn every_alert_has_a_runbook_entry_and_a_firing_test() {
    let rules = yaml::load_one(&deploy("prometheus/rules/seckill-alerts.yml"));
    let readme = read(deploy("README.md"));
    let anchors: Vec<String> = readme
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| anchor(l.trim_start_matches('#').trim()))
        .collect();
    let tests = yaml::load_one(&deploy("prometheus/tests/seckill-alerts.test.yml"));
    let fired: Vec<String> = items(&tests["tests"])
        .iter()
        .flat_map(|t| items(&t["alert_rule_test"]))
        .filter(|t| !items(&t["exp_alerts"]).is_empty())
        .filter_map(|t| text(&t["alertname"]))
        .collect();

    let mut alerts = 0;
    for group in items(&rules["groups"]) {
        for rule in items(&group["rules"]) {
            let Some(name) = text(&rule["alert"]) else {
                continue;
            };
            alerts += 1;
            let severity = text(&rule["labels"]["severity"]);
            assert!(
                matches!(severity.as_deref(), Some("page" | "ticket")),
                "{name}: severity {severity:?}"
            );
            for key in ["summary", "description", "runbook"] {
                assert!(
                    text(&rule["annotations"][key]).is_some(),
                    "{name}: no {key} annotation"
                );
            }
            let runbook = text(&rule["annotations"]["runbook"]).unwrap();
            let target = runbook
                .strip_prefix("deploy/README.md#")
                .unwrap_or_else(|| panic!("{name}: runbook {runbook} is not in deploy/README.md"));
            assert_eq!(target, anchor(&name), "{name}: runbook anchor");
            assert!(
                anchors.iter().any(|a| a == target),
                "{name}: deploy/README.md has no heading for #{target}"
            );
            assert!(
                fired.contains(&name),
                "{name}: no unit test in which it fires"
            );
        }
    }
    assert!(alerts >= 10, "only {alerts} alerts");
}

/// The blackbox module the readiness probes use exists.
#[test]
fn readiness_probe_module_exists() {
    let blackbox = yaml::load_one(&deploy("prometheus/blackbox.yml"));
    assert_eq!(
        text(&blackbox["modules"]["http_ready"]["prober"]).as_deref(),
        Some("http")
    );
    for config in ["prometheus.yml", "kubernetes.yml"] {
        let config = yaml::load_one(&deploy(&format!("prometheus/{config}")));
        let probe = items(&config["scrape_configs"])
            .iter()
            .find(|j| text(&j["job_name"]).as_deref() == Some("seckill-readyz"))
            .expect("a seckill-readyz job");
        assert_eq!(
            text(&probe["params"]["module"][0]).as_deref(),
            Some("http_ready")
        );
    }
}

/// GitHub's anchor of a heading: lower case, spaces to dashes, other
/// punctuation dropped.
fn anchor(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}
