//! The Grafana dashboard and its provisioning: valid JSON with the panels an
//! operator needs during a sale, every query readable PromQL on the
//! dashboard's data source variable, a layout without overlaps, and
//! provisioning files that point where Compose mounts things. (That every
//! metric a query uses is really exposed is checked in `live_metrics.rs`.)

use std::collections::BTreeSet;

use deploy_check::promql;
use deploy_check::yaml::{self, items, text};
use deploy_check::{deploy, read};
use serde_json::Value;

fn dashboard() -> Value {
    serde_json::from_str(&read(deploy("grafana/dashboards/seckill.json")))
        .expect("deploy/grafana/dashboards/seckill.json is not valid JSON")
}

#[test]
fn dashboard_has_the_panels_a_sale_needs() {
    let d = dashboard();
    assert_eq!(d["uid"], "seckill-overview");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let titles: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .map(|p| p["title"].as_str().unwrap().to_lowercase())
        .collect();
    for wanted in [
        "answers per second by outcome",
        "latency by outcome",
        "waiting requests",
        "tokens available vs issued",
        "queue depth",
        "queue wait",
        "expired drops",
        "stock remaining",
        "callback results per second (sent vs received)",
        "throughput per service",
        "scrape targets up",
        "ready",
        "answers per second by sale and outcome",
        "latency by sale",
        "refusals per second by reason",
        "capacity refusals (address_limit, queue_full, waiters_full, shutting_down)",
        "store refusals (store_unreachable, store_lost)",
        "sold out at",
        "reclaimed, redelivered, dead-lettered",
        "redis command latency by command",
        "redis errors per second by command and kind",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel about {wanted:?}; panels: {titles:?}"
        );
    }
}

#[test]
fn every_query_is_promql_on_the_data_source_variable() {
    let d = dashboard();
    let mut ids = BTreeSet::new();
    for panel in d["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap_or("?");
        assert!(
            ids.insert(panel["id"].as_u64().expect("a numeric panel id")),
            "duplicate panel id in {title}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: data source"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().unwrap()),
                "{title}: duplicate refId"
            );
            assert_eq!(
                t["datasource"]["uid"], "${datasource}",
                "{title}: target data source"
            );
            let expr = t["expr"].as_str().expect("an expr");
            let r = promql::references(expr).unwrap_or_else(|e| panic!("{title}: {e}"));
            assert!(!r.selectors.is_empty(), "{title}: no metric in {expr}");
        }
        assert!(
            panel["description"].as_str().is_some_and(|s| !s.is_empty()),
            "{title}: no description"
        );
    }
}

/// The sell-out marker: an annotation on the sale variable, placed at the
/// time the gauge holds (not at the time it was scraped).
#[test]
fn sell_outs_are_annotated() {
    let d = dashboard();
    let list = d["annotations"]["list"].as_array().unwrap();
    let sell_out = list
        .iter()
        .find(|a| a["name"] == "Sell-out")
        .expect("a Sell-out annotation");
    assert_eq!(sell_out["datasource"]["uid"], "${datasource}");
    assert_eq!(sell_out["useValueForTime"], true);
    let expr = sell_out["expr"].as_str().unwrap();
    assert!(expr.contains("$sale"), "{expr}");
    let r = promql::references(expr).unwrap();
    assert!(r
        .selectors
        .iter()
        .any(|s| s.metric == "seckill_sale_sold_out_timestamp_seconds"));
}

#[test]
fn layout_fits_the_grid_without_overlaps() {
    let d = dashboard();
    let mut boxes: Vec<(String, u64, u64, u64, u64)> = Vec::new();
    for panel in d["panels"].as_array().unwrap() {
        let g = &panel["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().unwrap(),
            g["y"].as_u64().unwrap(),
            g["w"].as_u64().unwrap(),
            g["h"].as_u64().unwrap(),
        );
        let title = panel["title"].as_str().unwrap().to_string();
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: {g}");
        for (other, ox, oy, ow, oh) in &boxes {
            let apart = x + w <= *ox || ox + ow <= x || y + h <= *oy || oy + oh <= y;
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((title, x, y, w, h));
    }
}

/// The data source variable defaults to the provisioned Prometheus, the
/// sale variable lists sales, and provisioning reads the folders Compose
/// mounts.
#[test]
fn provisioning_matches_the_dashboard_and_compose() {
    let d = dashboard();
    let vars = d["templating"]["list"].as_array().unwrap();
    let ds_var = vars.iter().find(|v| v["name"] == "datasource").unwrap();
    assert_eq!(ds_var["type"], "datasource");
    assert_eq!(ds_var["query"], "prometheus");
    let sale = vars.iter().find(|v| v["name"] == "sale").unwrap();
    assert_eq!(sale["includeAll"], true);

    let sources = yaml::load_one(&deploy("grafana/provisioning/datasources/prometheus.yml"));
    let source = &items(&sources["datasources"])[0];
    assert_eq!(text(&source["type"]).as_deref(), Some("prometheus"));
    assert_eq!(
        text(&source["uid"]),
        ds_var["current"]["value"].as_str().map(String::from),
        "the dashboard's default data source is the provisioned one"
    );
    let url = text(&source["url"]).unwrap();

    let compose = yaml::load_one(&deploy("docker-compose.yml"));
    let services = &compose["services"];
    // http://prometheus:9090 names the Compose service and its port.
    let host_port = url.strip_prefix("http://").unwrap();
    let (host, port) = host_port.split_once(':').unwrap();
    assert!(
        !yaml::missing(&services[host]),
        "{url}: no Compose service {host}"
    );
    assert_eq!(port, "9090");

    let providers = yaml::load_one(&deploy("grafana/provisioning/dashboards/seckill.yml"));
    let path = text(&items(&providers["providers"])[0]["options"]["path"]).unwrap();
    let mounts: Vec<String> = items(&services["grafana"]["volumes"])
        .iter()
        .filter_map(text)
        .collect();
    for (source, target) in [
        ("./grafana/dashboards", path.as_str()),
        ("./grafana/provisioning", "/etc/grafana/provisioning"),
    ] {
        assert!(
            mounts
                .iter()
                .any(|m| m.starts_with(&format!("{source}:{target}"))),
            "Grafana mounts {mounts:?}, not {source} at {target}"
        );
    }
    assert!(deploy("grafana/dashboards/seckill.json").exists());
}
