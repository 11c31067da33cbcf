//! The distributed mode as it is deployed: gateway and seckill-service
//! processes sharing a private Redis (or a three-master Redis Cluster),
//! results travelling back over gRPC, and the faults a multi-node sale
//! meets: a service killed mid-spike, Redis gone and back, the callback's
//! gateway gone, the token generator's holder killed.

mod procs;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use procs::{
    assert_statuses_or_fail_closed, cluster_args, keyed_spike, redis_args, spike, sum_of, Answer,
    Gw, Svc,
};
use seckill_redis::keys;
use seckill_test_support::process::{binary, http, sample, wait_until, Process};
use seckill_test_support::{free_port, Options, PostgresServer, RedisCluster, RedisServer, Reply};
use serde_json::json;

fn int(r: Result<Reply, String>) -> i64 {
    match r {
        Ok(Reply::Int(n)) => n,
        other => panic!("expected an integer reply, got {other:?}"),
    }
}

fn by_status(answers: &[Answer]) -> HashMap<u16, usize> {
    let mut m = HashMap::new();
    for a in answers {
        *m.entry(a.status).or_default() += 1;
    }
    m
}

/// Users of the order stream, with how many orders each has.
fn orders_per_user(redis: &RedisServer, sale: &str) -> HashMap<String, u64> {
    let Ok(Reply::Array(Some(entries))) = redis.command(&["XRANGE", &keys::orders(sale), "-", "+"])
    else {
        panic!("XRANGE of the order stream")
    };
    let mut users = HashMap::new();
    for e in entries {
        let Reply::Array(Some(parts)) = e else {
            panic!("stream entry")
        };
        let Reply::Array(Some(fields)) = &parts[1] else {
            panic!("stream fields")
        };
        let mut it = fields.iter();
        while let (Some(Reply::Bulk(Some(k))), Some(Reply::Bulk(Some(v)))) = (it.next(), it.next())
        {
            if k == "user_id" {
                *users.entry(v.clone()).or_default() += 1;
            }
        }
    }
    users
}

/// Entries of a sale's queue delivered to the consumers of process `pid`
/// and not acknowledged.
fn pending_of(redis: &RedisServer, sale: &str, pid: u32) -> i64 {
    let Ok(Reply::Array(Some(summary))) =
        redis.command(&["XPENDING", &keys::queue(sale), keys::GROUP])
    else {
        panic!("XPENDING summary")
    };
    let Some(Reply::Array(Some(consumers))) = summary.get(3) else {
        return 0;
    };
    let prefix = format!("c-{pid}-");
    consumers
        .iter()
        .filter_map(|c| match c {
            Reply::Array(Some(pair)) => match (&pair[0], &pair[1]) {
                (Reply::Bulk(Some(name)), Reply::Bulk(Some(n))) if name.starts_with(&prefix) => {
                    n.parse::<i64>().ok()
                }
                _ => None,
            },
            _ => None,
        })
        .sum()
}

fn sale_body(stock: u64, token_rate: u64, token_capacity: u64) -> serde_json::Value {
    json!({
        "stock": stock,
        "per_user_limit": 1,
        "token_rate": token_rate,
        "token_capacity": token_capacity,
        "queue_capacity": 100_000,
    })
}

/// Waits until every gateway knows the sale and its bucket has tokens.
fn wait_sale(gws: &[&Gw], sale: &str) {
    for gw in gws {
        assert!(
            wait_until(Duration::from_secs(5), || gw
                .get(&format!("/api/v1/sales/{sale}"))
                .0
                == 200),
            "sale {sale} not visible on a gateway"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_two_services_sell_exactly_the_stock() {
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let timeout = ["--request-timeout-ms", "30000"];
    let gws = [
        Gw::start("gateway-a", &store, &timeout),
        Gw::start("gateway-b", &store, &timeout),
    ];
    let svcs = [
        Svc::start("service-a", &store, &[]),
        Svc::start("service-b", &store, &[]),
    ];
    // The order relay follows the order topic into PostgreSQL from before
    // the sale exists: it finds the new sale's stream by itself.
    let postgres = PostgresServer::start();
    let relay_admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let _relay = Process::spawn(
        "relay",
        &binary("order-relay"),
        &[
            "--redis-url".into(),
            redis.url(),
            "--postgres-url".into(),
            postgres.url(),
            "--admin-listen".into(),
            relay_admin.to_string(),
        ],
        &[],
    );
    assert!(
        wait_until(Duration::from_secs(30), || http(
            relay_admin,
            "GET",
            "/readyz",
            &[],
            ""
        )
        .is_ok_and(|r| r.0 == 200)),
        "the relay became ready"
    );
    // A bucket starts full: its capacity is the opening burst.
    assert_eq!(gws[0].put_sale("big", &sale_body(1000, 5000, 200)), 201);
    wait_sale(&[&gws[0], &gws[1]], "big");

    // 20,000 distinct buyers over both gateways, and 2,000 of them click
    // a second time.
    let mut buyers: Vec<_> = (0..20_000)
        .map(|i| (gws[i % 2].public, format!("u{i}")))
        .collect();
    buyers.extend((0..2_000).map(|i| (gws[(i + 1) % 2].public, format!("u{}", i * 10))));
    let answers = spike(buyers, "big", 1000).await;

    let statuses = by_status(&answers);
    let lost: Vec<_> = answers.iter().filter(|a| a.status == 0).take(3).collect();
    assert!(
        lost.is_empty(),
        "requests without an answer: {lost:?} ({statuses:?})"
    );
    assert_eq!(statuses.get(&200), Some(&1000), "{statuses:?}");
    assert_statuses_or_fail_closed(&answers, &[200, 403, 410, 429]);
    let mut wins: HashMap<&str, u32> = HashMap::new();
    for a in answers.iter().filter(|a| a.status == 200) {
        assert_eq!(a.body["status"], "success");
        *wins.entry(a.user.as_str()).or_default() += 1;
    }
    assert!(wins.values().all(|&n| n == 1), "a user bought twice");

    // Every view agrees: both gateways, the order stream, the services.
    for gw in &gws {
        assert_eq!(gw.sold("big"), (1000, 0));
    }
    assert_eq!(int(redis.command(&["XLEN", &keys::orders("big")])), 1000);
    let per_user = orders_per_user(&redis, "big");
    assert_eq!(per_user.len(), 1000);
    assert!(per_user.values().all(|&n| n == 1), "a user over the limit");
    let processed: f64 = svcs
        .iter()
        .map(|s| s.metric(r#"seckill_service_processed_total{result="success"}"#))
        .sum();
    assert_eq!(processed, 1000.0);
    assert!(
        svcs.iter()
            .all(|s| s.metric(r#"seckill_service_processed_total{result="success"}"#) > 0.0),
        "both services took part"
    );
    let callbacks: f64 = svcs
        .iter()
        .map(|s| s.metric(r#"seckill_callback_total{result="error"}"#))
        .sum();
    assert_eq!(callbacks, 0.0);

    // Every order a buyer was told of lands in PostgreSQL once, and no
    // other: exactly the sale's sold count.
    let told: HashSet<String> = answers
        .iter()
        .filter(|a| a.status == 200)
        .map(|a| a.body["order_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(told.len(), 1000);
    let (db, conn) = tokio_postgres::connect(&postgres.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let deadline = Instant::now() + Duration::from_secs(60);
    let landed: HashSet<String> = loop {
        let rows = db
            .query(
                "SELECT order_id FROM seckill_orders WHERE sale_id = 'big'",
                &[],
            )
            .await
            .unwrap();
        if rows.len() >= 1000 || Instant::now() > deadline {
            break rows.iter().map(|r| r.get(0)).collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(landed, told, "the relay landed exactly the sold orders");
    let total: i64 = db
        .query_one("SELECT count(*) FROM seckill_orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_service_is_taken_over_without_oversell() {
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let gw = Gw::start("gateway", &store, &["--request-timeout-ms", "20000"]);
    let slow = [
        "--work-delay-ms",
        "100",
        "--batch-size",
        "8",
        "--workers",
        "2",
    ];
    let mut victim = Svc::start("service-victim", &store, &slow);
    let survivor = Svc::start("service-survivor", &store, &slow);
    assert_eq!(gw.put_sale("kill", &sale_body(300, 2000, 1000)), 201);
    wait_sale(&[&gw], "kill");

    let buyers: Vec<_> = (0..3_000).map(|i| (gw.public, format!("k{i}"))).collect();
    let load = tokio::spawn(spike(buyers, "kill", 500));
    // Kill the victim in the middle of its work: entries in hand, pending.
    // Each batch stays pending for the work delay, so an instant when it
    // holds some is seen while the sale still runs.
    let victim_pid = victim.p.pid().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || victim
            .metric(r#"seckill_service_processed_total{result="success"}"#)
            >= 20.0
            && pending_of(&redis, "kill", victim_pid) > 0),
        "the victim was never seen holding entries after deciding 20"
    );
    victim.p.kill();
    let held = pending_of(&redis, "kill", victim_pid);
    assert!(held > 0, "the victim held no entries when it died");
    let answers = load.await.unwrap();
    // The buyers may all be answered before the victim's entries are idle
    // long enough to be claimed (a result recorded but not yet acknowledged
    // when it died): the survivor still has to take them over.
    assert!(
        wait_until(Duration::from_secs(20), || pending_of(
            &redis, "kill", victim_pid
        ) == 0),
        "the victim's entries were never reclaimed: {} left",
        pending_of(&redis, "kill", victim_pid)
    );

    let statuses = by_status(&answers);
    assert_statuses_or_fail_closed(&answers, &[200, 403, 410, 429, 504]);
    // Every admitted request that timed out has a final outcome to read.
    for a in answers.iter().filter(|a| a.status == 504) {
        let id = a.body["request_id"]
            .as_str()
            .expect("504 carries the request id");
        let final_state = wait_until(Duration::from_secs(30), || {
            let (s, v) = gw.get(&format!("/api/v1/requests/{id}"));
            s == 200 && v["status"] != "pending"
        });
        assert!(final_state, "request {id} has no final outcome");
    }
    let (sold, remaining) = gw.sold("kill");
    assert_eq!(sold + remaining, 300);
    assert_eq!(sold, 300, "{statuses:?}");
    let successes = answers.iter().filter(|a| a.status == 200).count() as u64;
    assert!(successes <= sold);
    assert_eq!(int(redis.command(&["XLEN", &keys::orders("kill")])), 300);
    assert!(orders_per_user(&redis, "kill").values().all(|&n| n == 1));
    assert!(
        survivor.metric(r#"seckill_service_processed_total{result="success"}"#) > 0.0,
        "the survivor took over"
    );
}

/// The id of the one entry of a sale's request stream.
fn only_entry(redis: &RedisServer, sale: &str) -> String {
    let Ok(Reply::Array(Some(entries))) = redis.command(&["XRANGE", &keys::queue(sale), "-", "+"])
    else {
        panic!("XRANGE of the request stream")
    };
    assert_eq!(entries.len(), 1, "{entries:?}");
    match &entries[0] {
        Reply::Array(Some(parts)) => match &parts[0] {
            Reply::Bulk(Some(id)) => id.clone(),
            other => panic!("entry id: {other:?}"),
        },
        other => panic!("stream entry: {other:?}"),
    }
}

#[test]
fn entries_a_dead_consumer_left_are_counted_reclaimed_redelivered_and_dead_lettered() {
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let gw = Gw::start("gateway", &store, &["--request-timeout-ms", "20000"]);
    for sale in ["again", "given-up"] {
        assert_eq!(gw.put_sale(sale, &sale_body(10, 1000, 100)), 201);
    }
    wait_sale(&[&gw], "given-up");
    // One buyer each, queued while no service runs.
    let buyers: Vec<_> = ["again", "given-up"]
        .into_iter()
        .map(|sale| {
            let public = gw.public;
            std::thread::spawn(move || {
                let path = format!("/api/v1/sales/{sale}/purchase");
                let json = [("content-type", "application/json")];
                http(public, "POST", &path, &json, r#"{"user_id":"u"}"#)
            })
        })
        .collect();
    for sale in ["again", "given-up"] {
        assert!(
            wait_until(Duration::from_secs(5), || int(
                redis.command(&["XLEN", &keys::queue(sale)])
            ) == 1),
            "{sale}'s purchase was not queued"
        );
    }
    // A consumer takes both and dies: its entries stay pending, idle long
    // past the reclaim time. One of them was already delivered ten times.
    for (sale, deliveries) in [("again", "1"), ("given-up", "10")] {
        let queue = keys::queue(sale);
        let read = redis.command(&[
            "XREADGROUP",
            "GROUP",
            keys::GROUP,
            "c-gone",
            "STREAMS",
            &queue,
            ">",
        ]);
        assert!(matches!(read, Ok(Reply::Array(Some(_)))), "{read:?}");
        let id = only_entry(&redis, sale);
        let claimed = redis.command(&[
            "XCLAIM",
            &queue,
            keys::GROUP,
            "c-gone",
            "0",
            &id,
            "IDLE",
            "600000",
            "RETRYCOUNT",
            deliveries,
        ]);
        assert!(matches!(claimed, Ok(Reply::Array(Some(_)))), "{claimed:?}");
    }

    let svc = Svc::start("service", &store, &["--max-deliveries", "5"]);
    let answers: Vec<_> = buyers.into_iter().map(|b| b.join().unwrap()).collect();
    let status = |a: &Result<(u16, String), _>| a.as_ref().map(|(s, _)| *s).ok();
    assert_eq!(status(&answers[0]), Some(200), "{:?}", answers[0]);
    // Given up on: rejected, and kept in the dead-letter stream (moved
    // there after the buyer was answered).
    assert_eq!(status(&answers[1]), Some(403), "{:?}", answers[1]);
    assert!(wait_until(Duration::from_secs(5), || int(
        redis.command(&["XLEN", &keys::dead_letters("given-up")])
    ) == 1));

    let dead = r#"seckill_service_dead_lettered_total{sale="given-up"}"#;
    let mut page = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            page = svc.admin_get("/metrics").1;
            sample(&page, dead).is_some_and(|n| n > 0.0)
        }),
        "{page}"
    );
    let count = |name: &str, sale: &str| sample(&page, &format!(r#"{name}{{sale="{sale}"}}"#));
    for sale in ["again", "given-up"] {
        assert_eq!(
            count("seckill_service_reclaimed_total", sale),
            Some(1.0),
            "{page}"
        );
        assert_eq!(count("seckill_service_redelivered_total", sale), Some(1.0));
    }
    assert_eq!(
        count("seckill_service_dead_lettered_total", "given-up"),
        Some(1.0)
    );
    assert_eq!(
        count("seckill_service_dead_lettered_total", "again").unwrap_or(0.0),
        0.0
    );
    for command in ["reclaim", "dead_letter", "ack"] {
        let series =
            format!(r#"seckill_redis_command_duration_seconds_count{{command="{command}"}}"#);
        assert!(
            sample(&page, &series).unwrap_or(0.0) >= 1.0,
            "{series}:\n{page}"
        );
    }
    // A gateway only enqueues: it reclaims nothing.
    let gw_page = gw.admin_get("/metrics").1;
    assert!(
        !gw_page.contains("seckill_service_reclaimed_total{"),
        "{gw_page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_gateway_crash_every_charged_buyer_recovers_its_order_by_its_key() {
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let timeout = ["--request-timeout-ms", "20000"];
    let mut crashed = Gw::start("gateway-crashed", &store, &timeout);
    let other = Gw::start("gateway-other", &store, &timeout);
    // A slow backend: the buyers are still waiting when their gateway dies.
    let _svc = Svc::start(
        "service",
        &store,
        &[
            "--work-delay-ms",
            "200",
            "--batch-size",
            "10",
            "--workers",
            "1",
        ],
    );
    const STOCK: usize = 40;
    assert_eq!(
        crashed.put_sale("crash", &sale_body(STOCK as u64, 5000, 1000)),
        201
    );
    wait_sale(&[&crashed, &other], "crash");

    let buyers: Vec<_> = (0..200)
        .map(|i| (crashed.public, format!("c{i}")))
        .collect();
    let load = tokio::spawn(keyed_spike(buyers, "crash", 200));
    assert!(
        wait_until(Duration::from_secs(20), || crashed
            .metric("seckill_gateway_waiting_requests")
            .is_some_and(|n| n >= 100.0)),
        "the buyers never waited on the gateway"
    );
    crashed.p.kill();
    let answers = load.await.unwrap();
    let cut_off = answers.iter().filter(|a| a.status == 0).count();
    assert!(cut_off >= 100, "{cut_off} buyers lost their connection");

    // The service decides what was queued; the results stay in the store.
    assert!(
        wait_until(Duration::from_secs(30), || other.sold("crash").0
            == STOCK as u64),
        "the sale did not sell out: {:?}",
        other.sold("crash")
    );
    let orders = other.orders("crash");
    assert_eq!(orders.len(), STOCK, "{orders:?}");

    // Every buyer repeats its key on the other gateway, until no result is
    // pending any more.
    let mut recovered = HashMap::new();
    for i in 0..200 {
        let user = format!("c{i}");
        let key = format!("key-{user}");
        let mut answer = other.buy_keyed("crash", &user, &key);
        let deadline = Instant::now() + Duration::from_secs(30);
        // 202: still pending; 503 store_unreachable: the store missed the
        // budget on a starved machine, and the key is simply asked again.
        while (answer.0 == 202 || answer.1["reason"] == "store_unreachable")
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
            answer = other.buy_keyed("crash", &user, &key);
        }
        let (status, body) = answer;
        assert!(matches!(status, 200 | 410 | 429), "{user}: {status} {body}");
        if status == 200 {
            assert_eq!(body["user_id"], user.as_str(), "{body}");
            recovered.insert(user, body["order_id"].as_str().unwrap().to_string());
        }
    }
    for o in &orders {
        let user = o["user_id"].as_str().unwrap();
        assert_eq!(
            recovered.get(user).map(String::as_str),
            o["order_id"].as_str(),
            "charged buyer {user} did not get its order back"
        );
    }
    assert_eq!(recovered.len(), STOCK, "a repeat made no new order");
    assert_eq!(other.sold("crash"), (STOCK as u64, 0));
}

/// Calls of `command` Redis has run so far (those run by scripts included).
fn calls(redis: &RedisServer, command: &str) -> u64 {
    let Ok(Reply::Bulk(Some(info))) = redis.command(&["INFO", "commandstats"]) else {
        panic!("INFO commandstats")
    };
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn keyed_buyers_without_a_token_never_reach_redis() {
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let gw = Gw::start("gateway", &store, &["--request-timeout-ms", "300"]);
    assert_eq!(gw.put_sale("dry", &sale_body(100, 1, 1)), 201);
    wait_sale(&[&gw], "dry");

    // Every buyer sends an Idempotency-Key; claiming one is a SET NX in
    // Redis, so the SET count tells which requests reached the store.
    let sets_before = calls(&redis, "set");
    let mut statuses: HashMap<u16, u64> = HashMap::new();
    for i in 0..200 {
        let key = format!("key-{i}");
        let (status, body) = http(
            gw.public,
            "POST",
            "/api/v1/sales/dry/purchase",
            &[
                ("content-type", "application/json"),
                ("idempotency-key", &key),
            ],
            &format!(r#"{{"user_id":"dry-{i}"}}"#),
        )
        .unwrap();
        assert!(matches!(status, 429 | 504), "{status} {body}");
        *statuses.entry(status).or_default() += 1;
    }
    let refused = statuses.get(&429).copied().unwrap_or(0);
    let admitted = 200 - refused;
    assert!(refused >= 190, "{statuses:?}");
    let sets = calls(&redis, "set") - sets_before;
    // The admitted few claimed their keys; a generator lease may be taken.
    assert!(
        sets <= admitted + 2,
        "{sets} SETs for {admitted} admitted requests: refused buyers reached Redis"
    );
}

#[test]
fn redis_gone_fails_fast_and_service_resumes_by_itself() {
    let mut redis = RedisServer::start_with(Options {
        appendonly: true,
        cluster: false,
    });
    let store = redis_args(&redis.url());
    let gw = Gw::start("gateway", &store, &[]);
    let svc = Svc::start("service", &store, &[]);
    assert_eq!(gw.put_sale("r", &sale_body(100, 1000, 100)), 201);
    wait_sale(&[&gw], "r");
    assert_eq!(gw.buy("r", "before").0, 200);

    // Every command is timed, by its name: the gateway's admission script,
    // the service's purchase script and its queue reads.
    let timed = |page: &str, command: &str| {
        sample(
            page,
            &format!(r#"seckill_redis_command_duration_seconds_count{{command="{command}"}}"#),
        )
        .unwrap_or(0.0)
    };
    let gw_page = gw.admin_get("/metrics").1;
    assert!(timed(&gw_page, "admit_enqueue") >= 1.0, "{gw_page}");
    let svc_page = svc.admin_get("/metrics").1;
    assert!(timed(&svc_page, "purchase") >= 1.0, "{svc_page}");
    assert!(timed(&svc_page, "xreadgroup") >= 1.0, "{svc_page}");
    let errors = |page: &str| sum_of(page, "seckill_redis_errors_total", None);
    let errors_before = errors(&gw_page);

    redis.stop();
    let started = Instant::now();
    let (s, v) = gw.buy("r", "during");
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["status"], "overloaded");
    let gw_page = gw.admin_get("/metrics").1;
    assert!(errors(&gw_page) > errors_before, "{gw_page}");
    assert!(
        sum_of(
            &gw_page,
            "seckill_redis_errors_total",
            Some(("kind", "unavailable"))
        ) > 0.0,
        "a Redis that is gone is unavailable:\n{gw_page}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the refusal took {:?}",
        started.elapsed()
    );
    assert!(wait_until(Duration::from_secs(5), || gw
        .admin_get("/readyz")
        .0
        == 503));
    assert!(wait_until(Duration::from_secs(5), || svc
        .admin_get("/readyz")
        .0
        == 503));
    assert_eq!(gw.admin_get("/healthz").0, 200);

    // Back from its append-only file: the sale, its stock and the order
    // are there, and purchases flow again without a restart of anything.
    redis.restart();
    assert!(wait_until(Duration::from_secs(15), || gw
        .admin_get("/readyz")
        .0
        == 200));
    assert!(wait_until(Duration::from_secs(15), || svc
        .admin_get("/readyz")
        .0
        == 200));
    assert!(
        wait_until(Duration::from_secs(15), || gw.buy("r", "after").0 == 200),
        "purchases do not resume: {}\n{}",
        gw.p.log(),
        svc.p.log()
    );
    assert_eq!(gw.sold("r"), (2, 98));

    // Back empty: the sale and its two sold units are lost. The gateway
    // refuses it rather than sell them again, until an operator
    // acknowledges the loss; created again then, it sells.
    redis.stop();
    let _ = std::fs::remove_dir_all(redis.dir().join("appendonlydir"));
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(15), || gw.get("/api/v1/sales/r").1
            ["reason"]
            == "store_lost"),
        "a sale Redis lost is not refused: {:?}",
        gw.get("/api/v1/sales/r")
    );
    assert_eq!(gw.put_sale("r", &sale_body(5, 1000, 100)), 409);
    let auth = format!("Bearer {}", procs::TOKEN);
    let acknowledged = http(
        gw.admin,
        "DELETE",
        "/admin/v1/sales/r",
        &[("authorization", &auth)],
        "",
    );
    assert_eq!(acknowledged.map(|r| r.0), Ok(204));
    assert_eq!(gw.put_sale("r", &sale_body(5, 1000, 100)), 201);
    assert!(
        wait_until(Duration::from_secs(15), || gw.buy("r", "fresh").0 == 200),
        "purchases do not resume on an empty Redis: {}\n{}",
        gw.p.log(),
        svc.p.log()
    );
    assert_eq!(gw.sold("r"), (1, 4));
}

#[test]
fn a_result_whose_gateway_is_gone_is_read_from_another() {
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let mut a = Gw::start("gateway-a", &store, &["--request-timeout-ms", "10000"]);
    let b = Gw::start("gateway-b", &store, &[]);
    let svc = Svc::start("service", &store, &["--work-delay-ms", "1500"]);
    assert_eq!(a.put_sale("cb", &sale_body(10, 1000, 100)), 201);
    wait_sale(&[&a, &b], "cb");

    let public = a.public;
    let buyer = std::thread::spawn(move || {
        seckill_test_support::process::http(
            public,
            "POST",
            "/api/v1/sales/cb/purchase",
            &[],
            r#"{"user_id":"orphan"}"#,
        )
    });
    if !wait_until(Duration::from_secs(10), || {
        a.metric("seckill_gateway_waiting_requests") == Some(1.0)
    }) {
        let answer = if buyer.is_finished() {
            format!("{:?}", buyer.join())
        } else {
            "none yet".into()
        };
        panic!(
            "the request is not parked (answer: {answer}): {}\n{}",
            a.p.log(),
            svc.p.log()
        );
    }
    a.p.kill();
    assert!(
        buyer.join().unwrap().is_err(),
        "the connection died with its gateway"
    );
    assert!(
        wait_until(Duration::from_secs(15), || svc
            .metric(r#"seckill_callback_total{result="error"}"#)
            >= 1.0),
        "the callback to the dead gateway did not fail"
    );
    let Ok(Reply::Array(Some(ids))) = redis.command(&["KEYS", &keys::request("cb", "*")]) else {
        panic!("request keys")
    };
    assert_eq!(ids.len(), 1);
    let Reply::Bulk(Some(key)) = &ids[0] else {
        panic!("key")
    };
    let id = key.rsplit(':').next().unwrap();
    let (s, v) = b.get(&format!("/api/v1/requests/{id}"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "success", "{v}");
    assert!(v["order_id"].is_string(), "{v}");
    assert_eq!(b.sold("cb"), (1, 9));
}

#[test]
fn token_generator_fails_over_at_the_same_rate() {
    const RATE: f64 = 100.0;
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let mut gws = vec![
        Gw::start("gateway-a", &store, &[]),
        Gw::start("gateway-b", &store, &[]),
    ];
    // Nobody buys: the token list grows at the generator's rate.
    assert_eq!(
        gws[0].put_sale("gen", &sale_body(10, RATE as u64, 100_000)),
        201
    );
    wait_sale(&[&gws[0], &gws[1]], "gen");
    let tokens = || int(redis.command(&["LLEN", &keys::tokens("gen")]));
    // A new sale's bucket is full from the start; empty it to watch the
    // generator refill it.
    assert!(tokens() >= 100_000 - 10, "a new bucket holds its capacity");
    int(redis.command(&["DEL", &keys::tokens("gen")]));
    let rate_over = |window: Duration| {
        let (n0, t0) = (tokens(), Instant::now());
        std::thread::sleep(window);
        (tokens() - n0) as f64 / t0.elapsed().as_secs_f64()
    };
    let window = Duration::from_secs(2);
    let before = rate_over(window);
    assert!(
        (0.6 * RATE..=1.3 * RATE).contains(&before),
        "two gateways issue {before:.0} tokens/s for a rate of {RATE}"
    );

    let issued = |gw: &Gw| {
        gw.metric(r#"seckill_tokens_issued_total{sale="gen"}"#)
            .unwrap_or(0.0)
    };
    let holder = gws
        .iter()
        .position(|g| issued(g) > 0.0)
        .expect("one gateway generates");
    assert_eq!(
        gws.iter().filter(|g| issued(g) > 0.0).count(),
        1,
        "only the lease holder generates"
    );
    gws[holder].p.kill();
    let other = gws.remove(1 - holder);
    // The survivor counts its pushes after Redis answers them, so its counter
    // is what proves the takeover; the token list alone may still grow from a
    // push the killed holder sent just before it died.
    let n = tokens();
    assert!(
        wait_until(Duration::from_secs(10), || issued(&other) > 0.0),
        "no generator took over"
    );
    assert!(
        wait_until(Duration::from_secs(2), || tokens() > n),
        "the new generator's tokens do not reach the list"
    );
    std::thread::sleep(Duration::from_millis(300));
    let after = rate_over(window);
    assert!(
        (0.6 * RATE..=1.3 * RATE).contains(&after),
        "after the failover {after:.0} tokens/s for a rate of {RATE}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_sells_exactly_the_stock() {
    let cluster = RedisCluster::start(3);
    let store = cluster_args(&cluster.urls());
    let gw = Gw::start("gateway", &store, &["--request-timeout-ms", "30000"]);
    let svc = Svc::start("service", &store, &[]);
    for (sale, stock) in [("c1", 300), ("c2", 200)] {
        // A bucket starts full: its capacity is the opening burst.
        assert_eq!(gw.put_sale(sale, &sale_body(stock, 5000, 100)), 201);
    }
    wait_sale(&[&gw], "c1");
    wait_sale(&[&gw], "c2");
    let buyers: Vec<_> = (0..3_000).map(|i| (gw.public, format!("c{i}"))).collect();
    let (one, two) = buyers.split_at(1_500);
    // 200 in flight per sale: enough to race every shard, few enough that
    // a debug build on two busy cores answers nearly all within the store
    // budget.
    let (a1, a2) = tokio::join!(
        spike(one.to_vec(), "c1", 200),
        spike(two.to_vec(), "c2", 200)
    );
    for (answers, sale, stock) in [(a1, "c1", 300u64), (a2, "c2", 200)] {
        let statuses = by_status(&answers);
        assert_eq!(
            statuses.get(&200).copied(),
            Some(stock as usize),
            "{statuses:?}"
        );
        assert_statuses_or_fail_closed(&answers, &[200, 410, 429]);
        assert_eq!(gw.sold(sale), (stock, 0));
        // The order stream lives on the shard that owns the sale's slot.
        let xlen = cluster
            .nodes()
            .iter()
            .find_map(|n| match n.command(&["XLEN", &keys::orders(sale)]) {
                Ok(Reply::Int(len)) => Some(len),
                _ => None,
            })
            .expect("one node owns the order stream");
        assert_eq!(xlen, stock as i64);
    }
    assert_eq!(
        svc.metric(r#"seckill_service_processed_total{result="success"}"#),
        500.0
    );
}

#[test]
fn the_load_harness_audits_a_distributed_sale_through_the_order_feed() {
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let gw = Gw::start("gateway", &store, &["--request-timeout-ms", "20000"]);
    let _svc = Svc::start("service", &store, &[]);
    let args: Vec<String> = [
        "run",
        "--target",
        &format!("http://{}", gw.public),
        "--admin-url",
        &format!("http://{}", gw.admin),
        "--admin-token",
        procs::TOKEN,
        "--sale",
        "audited",
        "--create-sale",
        "300",
        "--token-rate",
        "5000",
        "--token-capacity",
        "2000",
        "--profile",
        "at-once:3000/1s",
        "--double-click",
        "0.05",
        "--connections",
        "128",
        "--timeout-ms",
        "30000",
        "--allow-invalid",
        "--assert",
        "oversell==0",
        "--assert",
        "missing==0",
        "--assert",
        "orders==300",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut lt = seckill_test_support::process::Process::spawn(
        "loadtest",
        &seckill_test_support::process::binary("loadtest"),
        &args,
        &[],
    );
    let status = lt.wait_exit(Duration::from_secs(90));
    let out = lt.log();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{out}");
    assert!(out.contains("order feed: 300 orders, 300 units"), "{out}");
    assert_eq!(gw.sold("audited"), (300, 0));
}

#[test]
fn a_sale_lost_from_redis_is_refused_and_never_sold_again_by_accident() {
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let gw = Gw::start("gateway", &store, &[]);
    let _svc = Svc::start("service", &store, &[]);
    assert_eq!(gw.put_sale("lost", &sale_body(20, 2000, 100)), 201);
    wait_sale(&[&gw], "lost");
    for u in 0..5 {
        assert_eq!(gw.buy("lost", &format!("u{u}")).0, 200);
    }

    // Redis comes back without its data.
    assert!(redis.command(&["FLUSHALL"]).is_ok());
    let refused = wait_until(Duration::from_secs(10), || {
        let (s, v) = gw.buy("lost", "after-the-loss");
        s == 503 && v["reason"] == "store_lost"
    });
    assert!(
        refused,
        "purchases of a lost sale are not refused: {:?}",
        gw.buy("lost", "x")
    );
    assert_eq!(gw.metric("seckill_store_lost_sales"), Some(1.0));
    // Counted among the refusals of sales the gateway no longer holds.
    assert!(
        gw.metric(r#"seckill_gateway_refusals_total{reason="store_lost",sale="(other)"}"#)
            .is_some_and(|n| n >= 1.0),
        "{}",
        gw.admin_get("/metrics").1
    );
    let (s, v) = gw.get("/api/v1/sales/lost");
    assert_eq!((s, v["reason"].as_str()), (503, Some("store_lost")), "{v}");
    // Creating it again would sell its 5 sold units a second time.
    assert_eq!(gw.put_sale("lost", &sale_body(20, 2000, 100)), 409);
    assert_eq!(int(redis.command(&["EXISTS", &keys::sale("lost")])), 0);

    // The operator acknowledges the loss; then the id may be used again.
    let auth = format!("Bearer {}", procs::TOKEN);
    let (s, body) = http(
        gw.admin,
        "DELETE",
        "/admin/v1/sales/lost",
        &[("authorization", &auth)],
        "",
    )
    .unwrap();
    assert_eq!(s, 204, "{body}");
    assert_eq!(gw.metric("seckill_store_lost_sales"), Some(0.0));
    assert_eq!(gw.put_sale("lost", &sale_body(20, 2000, 100)), 201);
}

/// The order feed in Redis mode, over HTTP: two sales' orders read in
/// small pages while more are bought, each order once; the cursor resumes
/// on another gateway; a bad cursor is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_order_feed_resumes_from_its_cursor_on_any_gateway() {
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let (a, b) = (
        Gw::start("gateway-a", &store, &[]),
        Gw::start("gateway-b", &store, &[]),
    );
    let _svc = Svc::start("service", &store, &[]);
    for sale in ["f1", "f2"] {
        assert_eq!(a.put_sale(sale, &sale_body(100, 5000, 100)), 201);
    }
    wait_sale(&[&a, &b], "f1");
    wait_sale(&[&a, &b], "f2");
    let auth = format!("Bearer {}", procs::TOKEN);
    let page = |gw: &Gw, after: &str| {
        let (s, body) = http(
            gw.admin,
            "GET",
            &format!("/admin/v1/orders?after={after}&limit=3"),
            &[("authorization", &auth)],
            "",
        )
        .unwrap();
        assert_eq!(s, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let (mut cursor, mut seen, mut told) = ("0".to_string(), Vec::new(), Vec::new());
    for round in 0..4 {
        for sale in ["f1", "f2"] {
            for i in 0..2 {
                let (s, v) = a.buy(sale, &format!("u{round}-{i}"));
                assert_eq!(s, 200, "{v}");
                told.push(v["order_id"].as_str().unwrap().to_string());
            }
        }
        // Read on alternating gateways: the cursor is the store's, not a
        // gateway's.
        let gw = if round % 2 == 0 { &a } else { &b };
        let p = page(gw, &cursor);
        for o in p["orders"].as_array().unwrap() {
            seen.push(o["order_id"].as_str().unwrap().to_string());
        }
        cursor = p["next"].as_str().unwrap().to_string();
    }
    let (rest, _) = b.feed(None, &cursor);
    seen.extend(
        rest.iter()
            .map(|o| o["order_id"].as_str().unwrap().to_string()),
    );
    let distinct: std::collections::BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(distinct.len(), seen.len(), "no order twice: {seen:?}");
    let told: std::collections::BTreeSet<_> = told.into_iter().collect();
    assert_eq!(distinct, told, "every order once");

    for bad in ["x", "f1~1", "f1~1-2.f1~1-3", "f1~1-2."] {
        let (s, body) = http(
            a.admin,
            "GET",
            &format!("/admin/v1/orders?after={bad}"),
            &[("authorization", &auth)],
            "",
        )
        .unwrap();
        assert_eq!(s, 400, "{bad}: {body}");
    }
}

#[test]
fn a_cancel_on_one_gateway_reopens_a_sold_out_sale_on_every_gateway() {
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let (a, b) = (
        Gw::start("gateway-a", &store, &[]),
        Gw::start("gateway-b", &store, &[]),
    );
    let _svc = Svc::start("service", &store, &[]);
    assert_eq!(a.put_sale("one", &sale_body(1, 1000, 100)), 201);
    wait_sale(&[&a, &b], "one");
    let (s, v) = a.buy("one", "u1");
    assert_eq!(s, 200, "{v}");
    let order = v["order_id"].as_str().unwrap().to_string();
    // Gateway b learns of the sell-out from the broadcast.
    assert!(wait_until(Duration::from_secs(5), || b.buy("one", "u2").0 == 410));
    assert!(wait_until(Duration::from_secs(5), || a.buy("one", "u2").0 == 410));
    // Sold out everywhere: the sale's token generator is quiet. Every tick
    // reads the token list's length, holder or not; nothing else does
    // while no buyer gets past the sold-out flag.
    std::thread::sleep(Duration::from_millis(200));
    let looks = calls(&redis, "llen");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        calls(&redis, "llen"),
        looks,
        "the generator of a sold-out sale ticks"
    );

    let auth = format!("Bearer {}", procs::TOKEN);
    let cancel = |gw: &Gw| {
        http(
            gw.admin,
            "POST",
            &format!("/admin/v1/orders/{order}/cancel"),
            &[("authorization", &auth)],
            "",
        )
        .unwrap()
    };
    let (s, first) = cancel(&a);
    assert_eq!(s, 200, "{first}");
    // A repeat, through the other gateway, answers the same.
    assert_eq!(cancel(&b), (200, first));
    // b sells the released unit (its flag cleared by the release), once.
    assert!(
        wait_until(Duration::from_secs(5), || b.buy("one", "u3").0 == 200),
        "the released unit sells on the other gateway"
    );
    assert_eq!(a.buy("one", "u4").0, 410);
    assert_eq!(b.sold("one"), (1, 0));
    let events: Vec<String> = b
        .orders("one")
        .iter()
        .map(|o| o["event"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(events, ["placed", "cancelled", "placed"]);
}
