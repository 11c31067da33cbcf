//! First come, first served, as the load harness measures it: a spike of
//! buyers on a `fifo` sale, embedded and distributed (two gateways, two
//! services, one Redis), and the first moment of a sale in distributed
//! mode (created active, created on one gateway and bought on another).

mod procs;

use std::time::Duration;

use procs::{redis_args, Gw, Svc};
use seckill_test_support::process::{binary, Process};
use seckill_test_support::RedisServer;
use serde_json::{json, Value};

/// Runs the load harness with `args` after the common ones; its exit
/// status, its JSON report and its output.
fn harness(name: &str, gw: &Gw, args: &[&str]) -> (Option<i32>, Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let mut all: Vec<String> = [
        "run",
        "--target",
        &format!("http://{}", gw.public),
        "--admin-url",
        &format!("http://{}", gw.admin),
        "--admin-token",
        procs::TOKEN,
        // Buyers beyond it wait for a connection in arrival order. Far
        // more new connections at once than a debug build on a small
        // machine accepts in time would reorder the crowd before it
        // reaches the gateway, and measure the client, not the line.
        "--connections",
        "256",
        "--timeout-ms",
        "30000",
        "--allow-invalid",
        "--json",
        report.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    all.extend(args.iter().map(|s| s.to_string()));
    let mut lt = Process::spawn(name, &binary("loadtest"), &all, &[]);
    let status = lt.wait_exit(Duration::from_secs(120));
    let out = lt.log();
    // The figure, for whoever runs this with --nocapture.
    for line in out.lines().filter(|l| l.starts_with("fairness ")) {
        eprintln!("{name}: {line}");
    }
    let report = std::fs::read_to_string(&report)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    (status.and_then(|s| s.code()), report, out)
}

/// The sale of the issue: 1,500 units, 2,000 tokens/s, a bucket of 200.
const SALE: [&str; 6] = [
    "--create-sale",
    "1500",
    "--token-rate",
    "2000",
    "--token-capacity",
    "200",
];

fn fairness(report: &Value) -> f64 {
    report["fairness"]["fairness"]
        .as_f64()
        .unwrap_or_else(|| panic!("no fairness in the report: {report}"))
}

#[test]
fn embedded_fifo_serves_the_first_buyers_first() {
    let gw = Gw::start(
        "gateway",
        &[],
        &["--demo-sale", "none", "--request-timeout-ms", "5000"],
    );
    let mut fifo = vec![
        "--sale",
        "fair",
        "--admission",
        "fifo",
        "--max-wait-ms",
        "1000",
    ];
    fifo.extend(SALE);
    fifo.extend([
        "--profile",
        "at-once:10000/1s",
        "--assert",
        "fairness>0.95",
        "--assert",
        "missing==0",
        "--assert",
        "oversell==0",
        "--assert",
        "orders==1500",
    ]);
    let (code, report, out) = harness("loadtest-fifo", &gw, &fifo);
    assert_eq!(code, Some(0), "{out}");
    assert!(fairness(&report) >= 0.95, "{out}");
    assert_eq!(report["answered"], report["requests_sent"], "{out}");
    assert_eq!(gw.sold("fair"), (1500, 0));

    // The same crowd on a bucket alone: a lottery, and the harness says so.
    let mut immediate = vec!["--sale", "lottery"];
    immediate.extend(SALE);
    immediate.extend(["--profile", "at-once:10000/1s", "--assert", "oversell==0"]);
    let (code, report, out) = harness("loadtest-immediate", &gw, &immediate);
    assert_eq!(code, Some(0), "{out}");
    let lottery = fairness(&report);
    assert!((0.0..=1.0).contains(&lottery), "{out}");
    assert!(report["fairness"]["inversion_buyers"].is_u64(), "{out}");
}

#[test]
fn distributed_fifo_keeps_arrival_order_across_gateways() {
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let timeout = ["--request-timeout-ms", "5000"];
    let a = Gw::start("gateway-a", &store, &timeout);
    let b = Gw::start("gateway-b", &store, &timeout);
    let _s1 = Svc::start("service-1", &store, &[]);
    let _s2 = Svc::start("service-2", &store, &[]);
    let also = format!("http://{}", b.public);
    let mut fifo = vec![
        "--sale",
        "fair",
        "--admission",
        "fifo",
        "--max-wait-ms",
        "1000",
        "--also-target",
        &also,
    ];
    fifo.extend(SALE);
    fifo.extend([
        "--profile",
        "at-once:6000/1s",
        "--assert",
        "fairness>0.90",
        "--assert",
        "missing==0",
        "--assert",
        "oversell==0",
        "--assert",
        "orders==1500",
    ]);
    let (code, report, out) = harness("loadtest-distributed", &a, &fifo);
    assert_eq!(code, Some(0), "{out}");
    assert!(fairness(&report) >= 0.90, "{out}");
    assert_eq!(a.sold("fair"), (1500, 0));
    assert_eq!(b.sold("fair"), (1500, 0));
}

#[test]
fn a_new_sale_sells_at_once_on_every_gateway() {
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let a = Gw::start("gateway-a", &store, &[]);
    let b = Gw::start("gateway-b", &store, &[]);
    let _svc = Svc::start("service", &store, &[]);
    // A slow generator: only a full bucket serves these buyers at once.
    let sale = json!({"stock": 10, "token_rate": 1, "token_capacity": 4});
    assert_eq!(a.put_sale("fresh", &sale), 201);
    assert_eq!(a.buy("fresh", "on-a").0, 200);
    // Created on A, bought on B the moment the PUT returned.
    assert_eq!(b.put_sale("only-b-knows", &sale), 201);
    for (i, gw) in [&a, &b, &a].iter().enumerate() {
        let (s, v) = gw.buy("only-b-knows", &format!("u{i}"));
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = b.buy("fresh", "on-b");
    assert_eq!(s, 200, "{v}");
    // An unknown sale is still a 404, however often it is asked for.
    for _ in 0..3 {
        assert_eq!(b.buy("never-created", "u").0, 404);
    }
}
