//! The relay as a process against real parts: a private redis-server, a
//! private PostgreSQL, a real HTTP receiver, and (embedded mode) the
//! gateway binary. Orders are made by the Redis inventory's purchase step,
//! the one script every seckill service runs.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use order_relay::signature;
use seckill_inventory::{Inventory, Outcome, Purchase, SaleSpec};
use seckill_redis::RedisStore;
use seckill_test_support::process::{binary, http, sample, wait_until, Process};
use seckill_test_support::{free_port, scratch_dir, PostgresServer, RedisServer};

const WAIT: Duration = Duration::from_secs(60);

/// An entry as `XREADGROUP` returns it: id and fields.
type StreamEntry = (String, Vec<(String, redis::Value)>);

fn relay(name: &str, args: &[String]) -> Process {
    Process::spawn(
        name,
        &binary("order-relay"),
        args,
        &[("SECKILL_LOG", "info")],
    )
}

fn redis_args(redis: &RedisServer, group: &str, admin: u16) -> Vec<String> {
    vec![
        "--redis-url".into(),
        redis.url(),
        "--group".into(),
        group.into(),
        "--admin-listen".into(),
        format!("127.0.0.1:{admin}"),
        "--reclaim-idle-ms".into(),
        "1000".into(),
        "--maintain-every-ms".into(),
        "200".into(),
        "--retain-ms".into(),
        "0".into(),
    ]
}

fn with(mut args: Vec<String>, more: &[&str]) -> Vec<String> {
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

/// A webhook relay that gives up fast: batches of 10, two attempts 5–10 ms
/// apart, then the dead-letter stream.
fn quick_webhook_args(
    redis: &RedisServer,
    group: &str,
    admin: u16,
    url: &str,
    secret: &str,
) -> Vec<String> {
    with(
        redis_args(redis, group, admin),
        &[
            "--webhook-url",
            url,
            "--webhook-secret-file",
            secret,
            "--webhook-retry-min-ms",
            "5",
            "--webhook-retry-max-ms",
            "10",
            "--batch-size",
            "10",
            "--max-attempts",
            "2",
        ],
    )
}

async fn store(redis: &RedisServer) -> RedisStore {
    RedisStore::connect(&[redis.url()], false).await.unwrap()
}

/// Sells `n` units of a new sale of `stock`, `batch` requests per script
/// call, from two connections (two "services") at once; returns the order ids.
async fn spike(redis: &RedisServer, sale: &str, stock: u64, n: usize) -> Vec<String> {
    let a = store(redis).await.inventory();
    a.put_sale(SaleSpec::new(sale, stock)).await.unwrap();
    let b = store(redis).await.inventory();
    let buy = |inv: seckill_redis::RedisInventory, from: usize| {
        let sale = sale.to_string();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            let users: Vec<usize> = (from..n).step_by(2).collect();
            for chunk in users.chunks(50) {
                let batch: Vec<Purchase> = chunk
                    .iter()
                    .map(|u| Purchase {
                        request_id: seckill_inventory::request_id(&sale),
                        sale_id: sale.clone(),
                        user_id: format!("u{u}"),
                        quantity: 1,
                        idempotency_key: None,
                        deadline_ms: seckill_inventory::now_ms() + 10_000,
                        store_by_ms: 0,
                    })
                    .collect();
                for d in inv.purchase(&batch).await.unwrap() {
                    if let Outcome::Success { order_id } = d.outcome {
                        ids.push(order_id);
                    }
                }
            }
            ids
        })
    };
    let (x, y) = (buy(a, 0), buy(b, 1));
    let mut ids = x.await.unwrap();
    ids.extend(y.await.unwrap());
    ids
}

async fn pg(server: &PostgresServer, db: &str) -> tokio_postgres::Client {
    let url = format!(
        "host=127.0.0.1 port={} user=postgres dbname={db}",
        server.port()
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    match client.query_one(sql, &[]).await {
        Ok(row) => row.get(0),
        // The relay has not created the table yet.
        Err(_) => -1,
    }
}

/// Polls an async condition, bounded by `WAIT`.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn metrics(port: u16) -> String {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    http(addr, "GET", "/metrics", &[], "")
        .map(|r| r.1)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lands_every_order_once_across_a_kill_and_shares_groups() {
    let redis = RedisServer::start();
    let server = PostgresServer::start();
    let admin = pg(&server, "postgres").await;
    admin.batch_execute("CREATE DATABASE stats").await.unwrap();
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let sink = |db: &str| {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            server.port()
        )
    };
    // Two relays of group "relay" share the work; "stats" gets every order too.
    let mut a = relay(
        "relay-a",
        &with(
            redis_args(&redis, "relay", p1),
            &["--postgres-url", &sink("postgres"), "--batch-size", "50"],
        ),
    );
    let b = relay(
        "relay-b",
        &with(
            redis_args(&redis, "relay", p2),
            &["--postgres-url", &sink("postgres"), "--batch-size", "50"],
        ),
    );
    let stats = relay(
        "relay-stats",
        &with(
            redis_args(&redis, "stats", p3),
            &["--postgres-url", &sink("stats")],
        ),
    );
    let addr = |p: u16| -> SocketAddr { ([127, 0, 0, 1], p).into() };
    for p in [p1, p2, p3] {
        assert!(
            wait_until(WAIT, || http(addr(p), "GET", "/readyz", &[], "")
                .is_ok_and(|r| r.0 == 200)),
            "relay on {p} ready"
        );
    }
    let sale = "spike";
    let orders = spike(&redis, sale, 1000, 1500).await;
    assert_eq!(orders.len(), 1000, "the sale sold its stock");
    // SIGKILL one relay of the group while the orders flow.
    let main = pg(&server, "postgres").await;
    eventually("some rows", || async {
        count(&main, "SELECT count(*) FROM seckill_orders").await > 0
    })
    .await;
    a.kill();
    a = relay(
        "relay-a2",
        &with(
            redis_args(&redis, "relay", p1),
            &["--postgres-url", &sink("postgres"), "--batch-size", "50"],
        ),
    );
    let stats_db = pg(&server, "stats").await;
    eventually("1000 rows in both databases", || async {
        count(&main, "SELECT count(*) FROM seckill_orders").await == 1000
            && count(&stats_db, "SELECT count(*) FROM seckill_orders").await == 1000
    })
    .await;
    let sold: u64 = store(&redis)
        .await
        .inventory()
        .sale(sale)
        .await
        .unwrap()
        .unwrap()
        .sold;
    assert_eq!(sold, 1000);
    let rows = main
        .query(
            "SELECT order_id, sale_id, quantity FROM seckill_orders",
            &[],
        )
        .await
        .unwrap();
    let landed: HashSet<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    assert_eq!(
        landed,
        orders.iter().cloned().collect::<HashSet<_>>(),
        "exactly the orders made"
    );
    assert!(rows
        .iter()
        .all(|r| r.get::<_, String>(1) == sale && r.get::<_, i32>(2) == 1));
    // Both instances did part of the work.
    let relayed = |p: u16| {
        sample(
            &metrics(p),
            "seckill_orders_relayed_total{sink=\"postgres\",result=\"ok\"}",
        )
        .unwrap_or(0.0)
    };
    assert!(relayed(p2) > 0.0, "the second instance shared the work");

    // A cancellation reaches the row; every group acknowledged, so the
    // stream is trimmed and the lag is zero.
    let inv = store(&redis).await.inventory();
    inv.cancel_order(&orders[0]).await.unwrap();
    eventually("cancelled_at set", || async {
        count(
            &main,
            "SELECT count(*) FROM seckill_orders WHERE cancelled_at IS NOT NULL",
        )
        .await
            == 1
            && count(
                &stats_db,
                "SELECT count(*) FROM seckill_orders WHERE cancelled_at IS NOT NULL",
            )
            .await
                == 1
    })
    .await;
    assert_eq!(
        count(&main, "SELECT count(*) FROM seckill_orders").await,
        1000
    );
    eventually("the stream trimmed", || async {
        redis
            .command(&["XLEN", "{sale:spike}:orders"])
            .is_ok_and(|r| r == seckill_test_support::Reply::Int(0))
    })
    .await;
    eventually("no lag", || async {
        sample(&metrics(p3), "seckill_orders_lag{group=\"stats\"}") == Some(0.0)
    })
    .await;
    drop((a, b, stats));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_what_a_registered_group_has_not_acknowledged() {
    let redis = RedisServer::start();
    let p1 = free_port();
    // Group "slow" registered (it ran once), then stopped.
    let mut slow = relay(
        "slow",
        &with(redis_args(&redis, "slow", free_port()), &["--stdout"]),
    );
    assert!(wait_until(WAIT, || redis
        .command(&["SISMEMBER", "seckill:relay:groups", "slow"])
        .is_ok_and(|r| r == seckill_test_support::Reply::Int(1))));
    slow.terminate();
    let _fast = relay("fast", &with(redis_args(&redis, "fast", p1), &["--stdout"]));
    let orders = spike(&redis, "keep", 20, 20).await;
    assert_eq!(orders.len(), 20);
    eventually("fast relayed all", || async {
        sample(
            &metrics(p1),
            "seckill_orders_relayed_total{sink=\"stdout\",result=\"ok\"}",
        ) == Some(20.0)
    })
    .await;
    // The slow group takes and acknowledges the first 10 by hand.
    let mut conn = store(&redis).await.conn();
    let read: Vec<(String, Vec<StreamEntry>)> = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP",
            "slow",
            "by-hand",
            "COUNT",
            "10",
            "STREAMS",
            "{sale:keep}:orders",
            ">",
        ])
        .query_async(&mut conn)
        .await
        .unwrap();
    let taken: Vec<String> = read[0].1.iter().map(|(id, _)| id.clone()).collect();
    let taken_orders: HashSet<String> = read[0]
        .1
        .iter()
        .flat_map(|(_, fields)| fields.iter())
        .filter(|(k, _)| k == "order_id")
        .map(|(_, v)| redis::from_redis_value_ref::<String>(v).unwrap())
        .collect();
    assert_eq!(taken.len(), 10);
    let _: i64 = redis::cmd("XACK")
        .arg("{sale:keep}:orders")
        .arg("slow")
        .arg(&taken)
        .query_async(&mut conn)
        .await
        .unwrap();
    eventually(
        "trimmed to what the slow group has not acknowledged",
        || async {
            redis
                .command(&["XLEN", "{sale:keep}:orders"])
                .is_ok_and(|r| r == seckill_test_support::Reply::Int(10))
        },
    )
    .await;
    // The slow group comes back, gets exactly the other 10, and the stream empties.
    let p2 = free_port();
    let slow = relay(
        "slow2",
        &with(redis_args(&redis, "slow", p2), &["--stdout"]),
    );
    eventually("trimmed once both acknowledged", || async {
        redis
            .command(&["XLEN", "{sale:keep}:orders"])
            .is_ok_and(|r| r == seckill_test_support::Reply::Int(0))
    })
    .await;
    let out = slow.log();
    let seen: HashSet<String> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|l| l["order_id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(seen.len(), 10, "{out}");
    assert!(
        seen.is_disjoint(&taken_orders),
        "only what it had not acknowledged"
    );
    let all: HashSet<String> = seen.union(&taken_orders).cloned().collect();
    assert_eq!(
        all,
        orders.iter().cloned().collect::<HashSet<_>>(),
        "no entry lost"
    );
}

/// A webhook receiver: answers 500 to the first `fail_first` requests (or
/// to all while `down`), checks every signature, records event ids.
#[derive(Default)]
struct Receiver {
    requests: AtomicUsize,
    fail_first: usize,
    down: std::sync::atomic::AtomicBool,
    bad_signatures: AtomicUsize,
    ids: Mutex<HashMap<String, usize>>,
}

const SECRET: &str = "whsec-relay-test";

async fn receive(
    r: Arc<Receiver>,
    req: hyper::Request<hyper::body::Incoming>,
) -> seckill_ops::http::HttpResponse {
    use http_body_util::BodyExt;
    let n = r.requests.fetch_add(1, Ordering::SeqCst);
    let header = req
        .headers()
        .get(signature::HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if signature::verify(SECRET.as_bytes(), &header, &body, now, 300).is_err() {
        r.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return seckill_ops::http::json(hyper::StatusCode::UNAUTHORIZED, "{}");
    }
    if n < r.fail_first || r.down.load(Ordering::SeqCst) {
        return seckill_ops::http::json(hyper::StatusCode::INTERNAL_SERVER_ERROR, "{}");
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut ids = r.ids.lock().unwrap();
    for e in v["events"].as_array().unwrap() {
        *ids.entry(e["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    seckill_ops::http::json(hyper::StatusCode::OK, "{}")
}

async fn start_receiver(r: Arc<Receiver>) -> (SocketAddr, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let handler = move |req| receive(r.clone(), req);
    tokio::spawn(seckill_ops::http::serve(
        listener,
        handler,
        Default::default(),
        stop.clone(),
    ));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_retried_signed_dead_lettered_and_redriven() {
    let redis = RedisServer::start();
    let dir = scratch_dir();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let secret = secret.display().to_string();

    // A receiver that fails its first 3 requests gets every order.
    let flaky = Arc::new(Receiver {
        fail_first: 3,
        ..Receiver::default()
    });
    let (addr, _stop) = start_receiver(flaky.clone()).await;
    let p1 = free_port();
    let hook = format!("http://{addr}/hooks/orders");
    let common = [
        "--webhook-url",
        hook.as_str(),
        "--webhook-secret-file",
        secret.as_str(),
        "--webhook-retry-min-ms",
        "10",
        "--webhook-retry-max-ms",
        "50",
        "--batch-size",
        "10",
    ];
    let _r1 = relay(
        "hook",
        &with(
            redis_args(&redis, "hooks", p1),
            &with(
                common.iter().map(|s| s.to_string()).collect(),
                &["--max-attempts", "5"],
            )
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ),
    );
    // The group "down" below is registered before the orders exist, so the
    // first group's acknowledgements cannot trim them away from it.
    redis
        .command(&["SADD", "seckill:relay:groups", "down"])
        .unwrap();
    let orders = spike(&redis, "hooked", 30, 30).await;
    eventually("every order delivered", || async {
        flaky.ids.lock().unwrap().len() == 30
    })
    .await;
    assert!(flaky.requests.load(Ordering::SeqCst) > 3, "retried");
    assert_eq!(
        flaky.bad_signatures.load(Ordering::SeqCst),
        0,
        "every signature valid"
    );
    let ids: HashSet<String> = flaky.ids.lock().unwrap().keys().cloned().collect();
    let want: HashSet<String> = orders.iter().map(|o| format!("{o}:placed")).collect();
    assert_eq!(ids, want);

    // One that always fails fills the dead-letter stream...
    let dead = Arc::new(Receiver::default());
    dead.down.store(true, Ordering::SeqCst);
    let (addr2, _stop2) = start_receiver(dead.clone()).await;
    let hook2 = format!("http://{addr2}/hooks/orders");
    let p2 = free_port();
    let args2 = quick_webhook_args(&redis, "down", p2, &hook2, &secret);
    let mut r2 = relay("down", &args2);
    eventually("three batches dead-lettered", || async {
        redis
            .command(&["XLEN", "seckill:relay:down:dead"])
            .is_ok_and(|r| r == seckill_test_support::Reply::Int(3))
    })
    .await;
    eventually("dead letters counted", || async {
        sample(&metrics(p2), "seckill_orders_dead_letters{group=\"down\"}") == Some(3.0)
            && sample(
                &metrics(p2),
                "seckill_orders_relayed_total{sink=\"webhook\",result=\"dead_lettered\"}",
            ) == Some(30.0)
    })
    .await;
    r2.terminate();
    assert!(dead.ids.lock().unwrap().is_empty());

    // ...and `redrive` delivers them once it recovers.
    dead.down.store(false, Ordering::SeqCst);
    let mut redrive = relay("redrive", &with(args2.clone(), &["redrive"]));
    let status = redrive.wait_exit(WAIT).expect("redrive ends");
    assert!(status.success(), "{}", redrive.log());
    assert_eq!(
        dead.ids.lock().unwrap().len(),
        30,
        "every dead-lettered order delivered"
    );
    assert_eq!(
        redis.command(&["XLEN", "seckill:relay:down:dead"]).unwrap(),
        seckill_test_support::Reply::Int(0)
    );
    assert_eq!(dead.bad_signatures.load(Ordering::SeqCst), 0);
}

/// An embedded gateway on a data directory, on fixed ports so that a
/// restarted one is found where the relay knows it.
fn embedded_gateway(name: &str, data: &std::path::Path, ports: (u16, u16, u16)) -> Process {
    let (public, admin, grpc) = ports;
    Process::spawn(
        name,
        &binary("gateway"),
        &[
            "--listen".into(),
            format!("127.0.0.1:{public}"),
            "--admin-listen".into(),
            format!("127.0.0.1:{admin}"),
            "--grpc-listen".into(),
            format!("127.0.0.1:{grpc}"),
            "--admin-token".into(),
            "admintoken-0123456789abcdef".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--demo-sale".into(),
            "feed:100".into(),
        ],
        &[("SECKILL_LOG", "warn")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_feed_lands_in_postgres_across_gateway_and_relay_restarts() {
    let server = PostgresServer::start();
    let dir = scratch_dir();
    let token = dir.path().join("token");
    std::fs::write(&token, "admintoken-0123456789abcdef\n").unwrap();
    let data = dir.path().join("data");
    let ports = (free_port(), free_port(), free_port());
    let mut gw = embedded_gateway("gateway", &data, ports);
    let pub_addr: SocketAddr = ([127, 0, 0, 1], ports.0).into();
    let buy = |u: usize| {
        http(
            pub_addr,
            "POST",
            "/api/v1/sales/feed/purchase",
            &[("content-type", "application/json")],
            &format!(r#"{{"user_id":"u{u}","quantity":1}}"#),
        )
        .map(|r| r.0)
    };
    assert!(
        wait_until(WAIT, || buy(0).is_ok_and(|s| s == 200)),
        "gateway up"
    );
    for u in 1..20 {
        assert_eq!(buy(u), Ok(200));
    }
    let p = free_port();
    // The default feed: every sale, the gateway holding each request until
    // orders arrive.
    let args: Vec<String> = [
        "--gateway-admin-url",
        &format!("http://127.0.0.1:{}", ports.1),
        "--admin-token-file",
        &token.display().to_string(),
        "--postgres-url",
        &server.url(),
        "--batch-size",
        "7",
        "--admin-listen",
        &format!("127.0.0.1:{p}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut r = relay("feed-relay", &args);
    let db = pg(&server, "postgres").await;
    let rows = |n: i64| {
        let db = &db;
        async move { count(db, "SELECT count(*) FROM seckill_orders").await == n }
    };
    eventually("20 rows", || rows(20)).await;

    // The gateway crashes under the relay's feed request and comes back on
    // its data directory: the relay carries on from its cursor.
    gw.kill();
    gw = embedded_gateway("gateway-restarted", &data, ports);
    assert!(
        wait_until(WAIT, || buy(20).is_ok_and(|s| s == 200)),
        "gateway restarted"
    );
    for u in 21..35 {
        assert_eq!(buy(u), Ok(200));
    }
    eventually("35 rows", || rows(35)).await;

    // The relay crashes; orders go on; its successor resumes from the
    // cursor committed with the rows.
    r.kill();
    for u in 35..50 {
        assert_eq!(buy(u), Ok(200));
    }
    let _r = relay("feed-relay2", &args);
    eventually("50 rows", || rows(50)).await;
    let cursor = db
        .query_one(
            "SELECT cursor FROM seckill_relay_cursors WHERE feed = 'feed:relay'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        cursor.get::<_, String>(0),
        "50",
        "the cursor committed with the rows"
    );
    assert_eq!(
        count(&db, "SELECT count(DISTINCT user_id) FROM seckill_orders").await,
        50,
        "no gap, no repeat"
    );
    // Still 50 a moment later: nothing delivered twice after the restarts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rows(50).await);
    drop(gw);
}

/// A CA made here (its PEM file), and a certificate for `127.0.0.1` it
/// signed, with its key, as PEM and as DER.
struct Pki {
    ca: std::path::PathBuf,
    cert_pem: String,
    key_pem: String,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn pki(dir: &std::path::Path, name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let file = dir.join(format!("{name}.pem"));
    std::fs::write(&file, ca.pem()).unwrap();
    Pki {
        ca: file,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert: cert.der().clone(),
        key: rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    }
}

/// Environment for a relay that trusts exactly the CA file `ca` (no system
/// directory: `no_dir` is empty).
fn trusting<'a>(ca: &'a std::path::Path, no_dir: &'a std::path::Path) -> [(&'a str, &'a str); 3] {
    [
        ("SECKILL_LOG", "info"),
        ("SSL_CERT_FILE", ca.to_str().unwrap()),
        ("SSL_CERT_DIR", no_dir.to_str().unwrap()),
    ]
}

/// The webhook receiver behind TLS; counts refused handshakes in
/// `handshakes_failed`.
async fn start_tls_receiver(
    r: Arc<Receiver>,
    cert: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    handshakes_failed: Arc<AtomicUsize>,
) -> SocketAddr {
    let config = rustls::ServerConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, r, failed) = (acceptor.clone(), r.clone(), handshakes_failed.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let r = r.clone();
                    async move { Ok::<_, std::convert::Infallible>(receive(r, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhooks_reach_only_a_receiver_whose_certificate_checks_out() {
    let redis = RedisServer::start();
    let dir = scratch_dir();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let secret = secret.display().to_string();
    let own = pki(dir.path(), "ca");
    let (ca, other_ca) = (own.ca.clone(), pki(dir.path(), "other-ca").ca);
    let hook = Arc::new(Receiver::default());
    let failed = Arc::new(AtomicUsize::new(0));
    let addr = start_tls_receiver(hook.clone(), own.cert, own.key, failed.clone()).await;
    let url = format!("https://{addr}/hooks/orders");
    let args =
        |group: &str, port: u16| quick_webhook_args(&redis, group, port, &url, secret.as_str());
    // The relay trusts exactly the one CA file: no system directory.
    let no_dir = dir.path().join("no-certs");
    std::fs::create_dir(&no_dir).unwrap();
    let spawn = |name: &str, group: &str, port: u16, ca: &std::path::Path| {
        Process::spawn(
            name,
            &binary("order-relay"),
            &args(group, port),
            &trusting(ca, &no_dir),
        )
    };
    let (p1, p2) = (free_port(), free_port());
    // Trusts the receiver's CA: every order arrives, once.
    let _trusting = spawn("trusting", "trusting", p1, &ca);
    // Trusts another CA: the handshake fails, nothing is sent, and the
    // batches end in its group's dead-letter stream.
    let _other = spawn("other", "other", p2, &other_ca);
    for p in [p1, p2] {
        let a: SocketAddr = ([127, 0, 0, 1], p).into();
        assert!(
            wait_until(WAIT, || http(a, "GET", "/readyz", &[], "")
                .is_ok_and(|r| r.0 == 200)),
            "relay on {p} ready"
        );
    }
    let orders = spike(&redis, "tls", 20, 20).await;
    eventually("every order delivered over TLS", || async {
        hook.ids.lock().unwrap().len() == 20
    })
    .await;
    eventually("the untrusted receiver's batches dead-lettered", || async {
        redis
            .command(&["XLEN", "seckill:relay:other:dead"])
            .is_ok_and(|r| r == seckill_test_support::Reply::Int(2))
    })
    .await;
    let ids = hook.ids.lock().unwrap().clone();
    let want: HashSet<String> = orders.iter().map(|o| format!("{o}:placed")).collect();
    assert_eq!(ids.keys().cloned().collect::<HashSet<_>>(), want);
    assert!(ids.values().all(|&n| n == 1), "only one relay got through");
    assert!(
        failed.load(Ordering::SeqCst) > 0,
        "the handshake was refused"
    );
    assert_eq!(hook.bad_signatures.load(Ordering::SeqCst), 0);

    // An https:// webhook with no CA to check it against does not start.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let mut none = spawn("no-ca", "none", free_port(), &empty);
    let status = none.wait_exit(WAIT).expect("exits");
    assert_eq!(status.code(), Some(64), "{}", none.log());
    assert!(none.log().contains("no CA certificates"), "{}", none.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_with_sslmode_require_is_tls_to_a_certificate_that_checks_out() {
    let redis = RedisServer::start();
    let dir = scratch_dir();
    let own = pki(dir.path(), "ca");
    let other_ca = pki(dir.path(), "other-ca").ca;
    let no_dir = dir.path().join("no-certs");
    std::fs::create_dir(&no_dir).unwrap();
    let server = PostgresServer::start_tls(&own.cert_pem, &own.key_pem);
    let url = format!("{} sslmode=require", server.url());
    let args =
        |group: &str, port: u16| with(redis_args(&redis, group, port), &["--postgres-url", &url]);

    // A relay that trusts another CA does not open the sink.
    let mut refused = Process::spawn(
        "untrusting",
        &binary("order-relay"),
        &args("untrusting", free_port()),
        &trusting(&other_ca, &no_dir),
    );
    let status = refused.wait_exit(WAIT).expect("exits");
    assert!(!status.success(), "{}", refused.log());
    assert!(
        refused.log().contains("cannot open the PostgreSQL sink"),
        "{}",
        refused.log()
    );

    // One that trusts the server's CA lands every order, over TLS.
    let p = free_port();
    let _relay = Process::spawn(
        "trusting",
        &binary("order-relay"),
        &args("relay", p),
        &trusting(&own.ca, &no_dir),
    );
    let orders = spike(&redis, "tls-pg", 20, 20).await;
    let db = pg(&server, "postgres").await;
    eventually("20 rows", || async {
        count(&db, "SELECT count(*) FROM seckill_orders").await == 20
    })
    .await;
    let landed: HashSet<String> = db
        .query("SELECT order_id FROM seckill_orders", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(landed, orders.into_iter().collect::<HashSet<_>>());
    // The relay's session is the encrypted one (the test's own is not).
    assert_eq!(
        count(&db, "SELECT count(*) FROM pg_stat_ssl WHERE ssl").await,
        1,
        "one TLS session: the relay's"
    );
}
