//! What Prometheus and Grafana are told to query exists: a real gateway, a
//! real seckill service and an order relay on a private Redis serve a sale,
//! then
//!
//! * `promtool check metrics` lints the three `/metrics` pages;
//! * every metric the Grafana dashboard and the Prometheus rules select
//!   is exposed by one of them (or recorded by a rule), with the labels and
//!   label values the selectors name.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use deploy_check::command::{promtool, run_with_input};
use deploy_check::promql::{self, References};
use deploy_check::yaml::{self, items, text};
use deploy_check::{deploy, read};
use seckill_test_support::metrics::Scrape;
use seckill_test_support::process::{binary, http, wait_until, Process};
use seckill_test_support::{free_port, RedisServer};

const TOKEN: &str = "deploy-check-token";

/// Series Prometheus makes itself, not the processes.
const SYNTHETIC: &[&str] = &["up", "probe_success", "ALERTS"];
/// Labels Prometheus attaches to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

struct Live {
    gateway: String,
    service: String,
    relay: String,
    // Kept alive until the checks are done.
    _procs: (RedisServer, Process, Process, Process),
}

/// `n` distinct free loopback addresses.
fn addrs(n: usize) -> Vec<SocketAddr> {
    let mut ports = BTreeSet::new();
    while ports.len() < n {
        ports.insert(free_port());
    }
    ports
        .into_iter()
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect()
}

/// Waits for `/readyz` on `admin`, and makes sure the answer came from `p`
/// (not from another test's process that took the port first).
fn up(admin: SocketAddr, p: &mut Process) {
    assert!(
        wait_until(Duration::from_secs(15), || {
            http(admin, "GET", "/readyz", &[], "").is_ok_and(|(s, _)| s == 200)
        }),
        "{} not ready:\n{}",
        p.name(),
        p.log()
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        p.is_running(),
        "{} exited (its port taken?):\n{}",
        p.name(),
        p.log()
    );
}

/// A gateway and a service on a private Redis, after one sale and a few
/// purchases (so every per-sale series exists).
/// The callback token the gateway and the service share.
const CALLBACK_TOKEN: &str = "live-metrics-callback-token";

fn live() -> Live {
    let redis = RedisServer::start();
    let a = addrs(5);
    let (public, admin, grpc, service_admin, relay_admin) = (a[0], a[1], a[2], a[3], a[4]);
    let args = |a: &[String]| a.to_vec();
    let mut gateway = Process::spawn(
        "gateway",
        &binary("gateway"),
        &args(&[
            "--redis-url".into(),
            redis.url(),
            "--listen".into(),
            public.to_string(),
            "--admin-listen".into(),
            admin.to_string(),
            "--grpc-listen".into(),
            grpc.to_string(),
        ]),
        &[
            ("SECKILL_ADMIN_TOKEN", TOKEN),
            ("SECKILL_CALLBACK_TOKEN", CALLBACK_TOKEN),
            ("SECKILL_LOG", "warn"),
        ],
    );
    let mut service = Process::spawn(
        "seckill-service",
        &binary("seckill-service"),
        &args(&[
            "--redis-url".into(),
            redis.url(),
            "--admin-listen".into(),
            service_admin.to_string(),
        ]),
        &[
            ("SECKILL_CALLBACK_TOKEN", CALLBACK_TOKEN),
            ("SECKILL_LOG", "warn"),
        ],
    );
    // The order relay, into JSON lines (every sink has the same series).
    let mut relay = Process::spawn(
        "order-relay",
        &binary("order-relay"),
        &args(&[
            "--redis-url".into(),
            redis.url(),
            "--stdout".into(),
            "--admin-listen".into(),
            relay_admin.to_string(),
            "--maintain-every-ms".into(),
            "100".into(),
        ]),
        &[("SECKILL_LOG", "warn")],
    );
    up(admin, &mut gateway);
    up(service_admin, &mut service);
    up(relay_admin, &mut relay);

    let auth = format!("Bearer {TOKEN}");
    let (status, body) = http(
        admin,
        "PUT",
        "/admin/v1/sales/live",
        &[("authorization", &auth)],
        r#"{"stock":1,"token_rate":100,"token_capacity":10}"#,
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");
    // One success, then a sold-out answer.
    let buy = |user: &str| {
        http(
            public,
            "POST",
            "/api/v1/sales/live/purchase",
            &[("content-type", "application/json")],
            &format!(r#"{{"user_id":"{user}"}}"#),
        )
    };
    assert!(
        wait_until(Duration::from_secs(10), || buy("u-1")
            .is_ok_and(|(s, _)| s == 200)),
        "no successful purchase:\n{}\n{}",
        gateway.log(),
        service.log()
    );
    assert!(wait_until(Duration::from_secs(10), || buy("u-2")
        .is_ok_and(|(s, _)| s == 410)));

    let metrics = |a: SocketAddr| {
        let (s, body) = http(a, "GET", "/metrics", &[], "").unwrap();
        assert_eq!(s, 200);
        body
    };
    // The per-sale gauges follow the store once a second.
    let mut gateway_page = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            gateway_page = metrics(admin);
            gateway_page.contains("seckill_stock_remaining{sale=\"live\"} 0")
        }),
        "no seckill_stock_remaining for the sold-out sale:\n{gateway_page}"
    );
    // The relay delivered the order (its delivery histogram has samples).
    let mut relay_page = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            relay_page = metrics(relay_admin);
            relay_page.contains("seckill_orders_relayed_total{sink=\"stdout\",result=\"ok\"} 1")
        }),
        "the relay did not deliver the order:\n{relay_page}\n{}",
        relay.log()
    );
    Live {
        gateway: gateway_page,
        service: metrics(service_admin),
        relay: relay_page,
        _procs: (redis, gateway, service, relay),
    }
}

#[test]
fn live_metrics_pass_promtool_and_cover_dashboard_and_rules() {
    let live = live();

    for (who, page) in [
        ("gateway", &live.gateway),
        ("service", &live.service),
        ("relay", &live.relay),
    ] {
        let out = run_with_input(
            &format!("promtool check metrics < {who} /metrics"),
            Command::new(promtool()).args(["check", "metrics"]),
            Some(page),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success() && out.stdout.trim().is_empty() && out.stderr.trim().is_empty(),
            "promtool check metrics on the {who}'s /metrics: {}",
            out.describe()
        );
    }

    let mut exposed = Scrape::parse(&live.gateway).expect("the gateway's /metrics");
    exposed
        .add(&live.service)
        .expect("the seckill service's /metrics");
    exposed
        .add(&live.relay)
        .expect("the order relay's /metrics");
    // The API's metric table is what the dashboard and rules build on.
    for name in [
        "seckill_gateway_requests_total",
        "seckill_gateway_request_duration_seconds_bucket",
        "seckill_gateway_waiting_requests",
        "seckill_tokens_available",
        "seckill_tokens_issued_total",
        "seckill_tokens_taken_total",
        "seckill_tokens_discarded_total",
        "seckill_queue_depth",
        "seckill_queue_enqueued_total",
        "seckill_service_processed_total",
        "seckill_service_expired_total",
        "seckill_service_queue_wait_seconds_bucket",
        "seckill_service_process_duration_seconds_bucket",
        "seckill_callback_total",
        "seckill_callbacks_sent_total",
        "seckill_callbacks_received_total",
        "seckill_sale_requests_total",
        "seckill_sale_request_duration_seconds_bucket",
        "seckill_gateway_refusals_total",
        "seckill_sale_sold_out_timestamp_seconds",
        "seckill_service_reclaimed_total",
        "seckill_service_redelivered_total",
        "seckill_service_dead_lettered_total",
        "seckill_redis_command_duration_seconds_bucket",
        "seckill_redis_errors_total",
        "seckill_stock_remaining",
        "seckill_orders_relayed_total",
        "seckill_orders_lag",
        "seckill_orders_lag_seconds",
        "seckill_orders_dead_letters",
        "seckill_orders_delivery_seconds_bucket",
    ] {
        assert!(exposed.has(name), "{name} is not exposed");
    }

    // Recording rules add series of their own.
    let recording = yaml::load_one(&deploy("prometheus/rules/seckill-recording.yml"));
    let recorded: BTreeSet<String> = items(&recording["groups"])
        .iter()
        .flat_map(|g| items(&g["rules"]))
        .filter_map(|r| text(&r["record"]))
        .collect();

    // The dashboard.
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(deploy("grafana/dashboards/seckill.json")))
            .expect("the dashboard is JSON");
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let where_ = format!("dashboard panel {:?}", panel["title"]);
            check_expr(expr, &exposed, &BTreeSet::new(), &where_);
            queries += 1;
        }
    }
    assert!(queries >= 20, "only {queries} queries");
    for annotation in dashboard["annotations"]["list"].as_array().unwrap() {
        if let Some(expr) = annotation["expr"].as_str() {
            let where_ = format!("dashboard annotation {:?}", annotation["name"]);
            check_expr(expr, &exposed, &BTreeSet::new(), &where_);
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] == "query" {
            let q = var["query"]["query"].as_str().unwrap();
            let inner = q
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| {
                    panic!("variable query {q}: label_values(metric, label) expected")
                });
            let (metric, label) = inner.split_once(',').unwrap();
            let (metric, label) = (metric.trim(), label.trim());
            assert!(
                exposed.labels(metric).contains(label),
                "variable {}: {metric} has no label {label}",
                var["name"]
            );
        }
    }

    // The rules.
    for file in ["seckill-recording.yml", "seckill-alerts.yml"] {
        let rules = yaml::load_one(&deploy(&format!("prometheus/rules/{file}")));
        for group in items(&rules["groups"]) {
            for rule in items(&group["rules"]) {
                let name = text(&rule["record"]).or(text(&rule["alert"])).unwrap();
                let expr = text(&rule["expr"]).unwrap();
                check_expr(&expr, &exposed, &recorded, &format!("{file}: {name}"));
            }
        }
    }
}

/// Every selector of `expr` names an exposed (or recorded, or synthetic)
/// series, with labels it has and label values it takes.
fn check_expr(expr: &str, exposed: &Scrape, recorded: &BTreeSet<String>, where_: &str) {
    let References {
        selectors,
        grouping,
    } = promql::references(expr).unwrap_or_else(|e| panic!("{where_}: {e}"));
    assert!(!selectors.is_empty(), "{where_}: no metric in {expr}");
    let mut labels: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
    let mut uses_recorded = false;
    for s in &selectors {
        let m = s.metric.as_str();
        if recorded.contains(m) {
            uses_recorded = true;
            // Recorded series keep the grouping labels of their rule; a
            // matcher's value must at least be one the processes use.
            for matcher in &s.matchers {
                check_value(
                    exposed,
                    None,
                    &matcher.label,
                    &matcher.op,
                    &matcher.value,
                    where_,
                );
            }
            continue;
        }
        if SYNTHETIC.contains(&m) {
            continue;
        }
        assert!(
            exposed.has(m),
            "{where_}: {m} is not exposed by a gateway or a service"
        );
        let own = exposed.labels(m);
        labels.extend(own.iter().copied());
        for matcher in &s.matchers {
            assert!(
                own.contains(matcher.label.as_str())
                    || TARGET_LABELS.contains(&matcher.label.as_str()),
                "{where_}: {m} has no label {}",
                matcher.label
            );
            check_value(
                exposed,
                Some(m),
                &matcher.label,
                &matcher.op,
                &matcher.value,
                where_,
            );
        }
    }
    if !uses_recorded {
        for g in &grouping {
            assert!(
                labels.contains(g.as_str()),
                "{where_}: grouping by {g}, which none of its series has"
            );
        }
    }
}

/// `label="value"` (or a regex of plain alternatives) names values the
/// series really take. Grafana variables and other regexes pass.
fn check_value(
    exposed: &Scrape,
    metric: Option<&str>,
    label: &str,
    op: &str,
    value: &str,
    where_: &str,
) {
    if TARGET_LABELS.contains(&label) || value.contains('$') || label == "sale" {
        return;
    }
    let alternatives: Vec<&str> = match op {
        "=" | "!=" => vec![value],
        _ if value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '|') =>
        {
            value.split('|').collect()
        }
        _ => return,
    };
    let known: BTreeSet<&str> = match metric {
        Some(m) => exposed.values(m, label),
        None => exposed
            .names()
            .flat_map(|n| exposed.values(n, label))
            .collect(),
    };
    for v in alternatives {
        assert!(
            known.contains(v),
            "{where_}: {label}=\"{v}\" is not a value the processes expose (they have {known:?})"
        );
    }
}

/// What the checks above ask of the shared reader of `/metrics` pages:
/// sample names (a histogram's `_bucket` included), label names and values
/// merged over pages, and a refusal for what it cannot read.
#[test]
fn the_reader_answers_what_the_checks_ask() {
    let mut e = Scrape::parse(
        "# HELP x_total Things.\n# TYPE x_total counter\n\
         x_total{outcome=\"ok\"} 3\n\
         h_bucket{le=\"+Inf\"} 1\nplain 2.5 1700000000\n",
    )
    .unwrap();
    e.add("# TYPE x_total counter\nx_total{outcome=\"bad\",sale=\"a\"} 0\n")
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
        ["bad", "ok"]
    );
    assert_eq!(
        e.values("h_bucket", "le").into_iter().collect::<Vec<_>>(),
        ["+Inf"]
    );
    assert_eq!(
        e.names().collect::<Vec<_>>(),
        ["h_bucket", "plain", "x_total"]
    );

    assert!(Scrape::parse("x{a=\"b\" 1").is_err());
    assert!(Scrape::parse("x one").is_err());
    assert!(Scrape::parse("x{a=b} 1").is_err());
    // An escaped quote in a value is refused rather than misread; the
    // processes never write one (sale ids are [A-Za-z0-9_-]).
    assert!(Scrape::parse("x{outcome=\"bad \\\"one\\\"\"} 0").is_err());
}
