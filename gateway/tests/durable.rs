//! The embedded gateway on its data directory, as a real process: a spike
//! SIGKILLed midway and a restart on the same directory lose nothing that
//! was answered and sell nothing twice; one process per directory; a
//! damaged database stops the start with one line.

mod procs;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use procs::{keyed_spike, Answer, Gw};
use seckill_test_support::process::{wait_until, Process};
use seckill_test_support::{free_port, scratch_dir};
use serde_json::{json, Value};

const STOCK: u64 = 1000;
const BUYERS: usize = 4000;

fn data_args(dir: &Path) -> Vec<String> {
    vec!["--data-dir".into(), dir.display().to_string()]
}

/// Workers slow enough that the spike takes about a second to sell out,
/// so the kill lands in the middle of it.
const PACED: [&str; 10] = [
    "--demo-sale",
    "none",
    "--request-timeout-ms",
    "20000",
    "--workers",
    "2",
    "--batch-size",
    "8",
    "--work-delay-ms",
    "10",
];

/// Feed orders by order id; every order id once.
fn by_id(orders: &[Value]) -> HashMap<String, Value> {
    let map: HashMap<String, Value> = orders
        .iter()
        .map(|o| (o["order_id"].as_str().unwrap().to_string(), o.clone()))
        .collect();
    assert_eq!(map.len(), orders.len(), "an order id twice in the feed");
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_spike_restarts_with_every_answered_order() {
    let scratch = scratch_dir();
    let store = data_args(&scratch.path().join("data"));
    let mut gw = Gw::start("gateway-1", &store, &PACED);
    let sale = json!({"stock": STOCK, "token_rate": 100000, "token_capacity": 100000,
                      "queue_capacity": 100000});
    assert_eq!(gw.put_sale("crash", &sale), 201);

    let buyers: Vec<_> = (0..BUYERS).map(|i| (gw.public, format!("b{i}"))).collect();
    let spike = tokio::spawn(keyed_spike(buyers, "crash", 128));
    let selling = tokio::task::block_in_place(|| {
        wait_until(Duration::from_secs(60), || gw.sold("crash").0 >= 100)
    });
    assert!(selling, "the spike did not start selling");
    gw.p.kill();
    let answers: Vec<Answer> = spike.await.unwrap();
    let told: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    assert!(
        !told.is_empty(),
        "nobody was told of an order before the kill"
    );

    let gw = Gw::start("gateway-2", &store, &PACED);
    let (sold, remaining) = gw.sold("crash");
    assert_eq!(sold + remaining, STOCK, "the sale is back with its stock");
    assert!(
        remaining > 0,
        "killed mid-spike: {sold} sold before the kill"
    );
    let (feed, cursor) = gw.feed(None, "0");
    let orders = by_id(&feed);
    assert_eq!(
        orders.len() as u64,
        sold,
        "sold equals the orders in the feed"
    );

    // Every buyer told 200 holds its order, readable by its request id,
    // and a repeat of its key after the restart gets that same order.
    for a in &told {
        let order_id = a.body["order_id"].as_str().unwrap();
        let order = orders
            .get(order_id)
            .unwrap_or_else(|| panic!("{} was told of {order_id}, not in the feed", a.user));
        assert_eq!(order["user_id"], a.user.as_str());
        let request_id = a.body["request_id"].as_str().unwrap();
        let (s, r) = gw.get(&format!("/api/v1/requests/{request_id}"));
        assert_eq!((s, r["status"].as_str()), (200, Some("success")), "{r}");
        assert_eq!(r["order_id"], order_id);
    }
    for a in told.iter().take(20) {
        let (s, again) = gw.buy_keyed("crash", &a.user, &format!("key-{}", a.user));
        assert_eq!(s, 200, "{again}");
        assert_eq!(again["order_id"], a.body["order_id"], "the first order");
    }
    // Buyers the kill left without an answer: a repeat of their key finds
    // an order that was committed, or the request ended without one
    // (expired, never pending), and never makes a second order.
    let unanswered: Vec<&Answer> = answers.iter().filter(|a| a.status == 0).collect();
    for a in unanswered.iter().take(50) {
        let (s, again) = gw.buy_keyed("crash", &a.user, &format!("key-{}", a.user));
        assert_ne!(again["status"], "pending", "{s} {again}");
        if s == 200 {
            assert!(orders.contains_key(again["order_id"].as_str().unwrap()));
        }
    }
    assert_eq!(gw.sold("crash").0, sold, "repeats sold nothing");

    // The sale sells on after the restart, to exactly its stock.
    let buyers: Vec<_> = (0..BUYERS).map(|i| (gw.public, format!("c{i}"))).collect();
    let after = keyed_spike(buyers, "crash", 128).await;
    procs::assert_statuses_or_fail_closed(&after, &[200, 410, 429]);
    let (sold, remaining) = gw.sold("crash");
    assert_eq!((sold, remaining), (STOCK, 0));
    let (new, _) = gw.feed(None, &cursor);
    let all: Vec<Value> = feed.iter().chain(&new).cloned().collect();
    let all = by_id(&all);
    assert_eq!(
        all.len() as u64,
        STOCK,
        "the feed from the cursor adds the rest, once"
    );
    let users: HashSet<&str> = all
        .values()
        .map(|o| o["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        users.len() as u64,
        STOCK,
        "no unit sold twice: one per buyer"
    );
    let told_after = after.iter().filter(|a| a.status == 200).count() as u64;
    assert_eq!(new.len() as u64, told_after, "every new order was told");
}

/// A gateway process that is expected to exit at start.
fn refused_start(name: &str, data_dir: &Path) -> Process {
    let addr = |_| format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "--listen",
        &addr(0),
        "--admin-listen",
        &addr(1),
        "--grpc-listen",
        &addr(2),
        "--admin-token",
        procs::TOKEN,
        "--data-dir",
        &data_dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    Process::spawn(
        name,
        env!("CARGO_BIN_EXE_gateway").as_ref(),
        &args,
        &[("SECKILL_LOG", "warn")],
    )
}

fn exit_of(p: &mut Process) -> (Option<i32>, Vec<String>) {
    let Some(status) = p.wait_exit(Duration::from_secs(20)) else {
        panic!("{} did not exit:\n{}", p.name(), p.log());
    };
    let lines = p.log().lines().map(str::to_string).collect();
    (status.code(), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_on_the_same_data_directory_refuses_to_start() {
    let scratch = scratch_dir();
    let data = scratch.path().join("data");
    let first = Gw::start("gateway-1", &data_args(&data), &["--demo-sale", "demo:5"]);
    let mut second = refused_start("gateway-2", &data);
    let (code, lines) = exit_of(&mut second);
    assert_eq!(code, Some(64), "{lines:?}");
    assert_eq!(lines.len(), 1, "one line: {lines:?}");
    assert!(lines[0].contains("in use by another process"), "{lines:?}");
    // The first one serves on, untouched.
    assert_eq!(first.buy("demo", "u1").0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_unreadable_data_directory_stops_the_start_with_one_line() {
    let scratch = scratch_dir();

    // A database file that is not one.
    let garbage = scratch.path().join("garbage");
    std::fs::create_dir_all(&garbage).unwrap();
    std::fs::write(garbage.join("seckill.db"), vec![0x5au8; 16384]).unwrap();

    // A store with orders, stopped, then a page in the middle overwritten.
    let damaged = scratch.path().join("damaged");
    {
        let mut gw = Gw::start(
            "gateway-0",
            &data_args(&damaged),
            &["--demo-sale", "demo:50"],
        );
        for u in 0..20 {
            assert_eq!(gw.buy("demo", &format!("u{u}")).0, 200);
        }
        // Until the idle writer's checkpoint has copied the log into the
        // database file, the pages to damage are only in the log.
        let size = || std::fs::metadata(damaged.join("seckill.db")).map_or(0, |m| m.len());
        assert!(
            wait_until(Duration::from_secs(20), || size() >= 3 * 4096),
            "no checkpoint: {} bytes",
            size()
        );
        gw.p.terminate();
        assert!(gw.p.wait_exit(Duration::from_secs(30)).is_some());
    }
    let db = damaged.join("seckill.db");
    // A process can end before its last connection closes, leaving a log
    // whose copies of the pages would hide the damage: fold it in first,
    // as an operator's sqlite3 would.
    rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    assert_eq!(
        std::fs::metadata(damaged.join("seckill.db-wal")).map_or(0, |m| m.len()),
        0,
        "the log is folded in"
    );
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() >= 3 * 4096, "{} bytes", bytes.len());
    bytes[4096..8192].fill(0xa5);
    std::fs::write(&db, bytes).unwrap();

    // A path that cannot be a directory.
    let file = scratch.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();

    for (name, dir) in [
        ("garbage", &garbage),
        ("damaged", &damaged),
        ("file", &file),
    ] {
        let mut p = refused_start(name, dir);
        let (code, lines) = exit_of(&mut p);
        assert_eq!(code, Some(1), "{name}: {lines:?}");
        assert_eq!(lines.len(), 1, "{name}: one line: {lines:?}");
        assert!(
            lines[0].contains("cannot open the data directory"),
            "{name}: {lines:?}"
        );
    }
}
