//! The embedded flash sale end to end, over real HTTP and gRPC on loopback.
//!
//! Every row of the purchase table in docs/API.md, the spike, duplicates,
//! expiry, hostile input, metrics and graceful shutdown.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{json, Value};
use support::{sample, Setup, TestGateway, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn status_of(v: &Value) -> &str {
    v["status"].as_str().unwrap_or("<none>")
}

async fn sold(gw: &TestGateway, sale: &str) -> (u64, u64) {
    let v = gw.sale(sale).await;
    (
        v["sold"].as_u64().unwrap(),
        v["remaining"].as_u64().unwrap(),
    )
}

/// Polls `GET /api/v1/requests/{id}` until it has a final status.
async fn final_status(gw: &TestGateway, request_id: &str) -> Value {
    for _ in 0..200 {
        let (s, v) = gw.get(&format!("/api/v1/requests/{request_id}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        if status_of(&v) != "pending" {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("request {request_id} never left pending");
}

/// Polls `/metrics` until `holds` is true of it (at most 10 s) and returns
/// that scrape: the condition a test waits for, instead of a fixed sleep.
async fn until_metrics(gw: &TestGateway, what: &str, holds: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = gw.metrics().await;
        if holds(&m) {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends raw bytes on a fresh connection and returns what came back before
/// the server closed it (or `wait` passed).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------- table rows

/// Now, in Unix seconds, as the sell-out gauge counts.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn success_answers_with_the_order_and_is_readable_later() {
    let gw = TestGateway::start().await;
    gw.open_sale("s1", 10, 1).await;

    let (s, headers, v) = gw.purchase("s1", r#"{"user_id":"u-1","quantity":1}"#).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(status_of(&v), "success");
    assert_eq!(v["sale_id"], "s1");
    assert_eq!(v["user_id"], "u-1");
    assert_eq!(v["quantity"], 1);
    let order = v["order_id"].as_str().expect("order_id").to_string();
    let request_id = v["request_id"].as_str().expect("request_id").to_string();
    assert_eq!(headers["x-request-id"], request_id.as_str());
    assert_eq!(headers["content-type"], "application/json");

    let (s, r) = gw.get(&format!("/api/v1/requests/{request_id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(status_of(&r), "success");
    assert_eq!(r["order_id"], order.as_str());
    assert_eq!(r["user_id"], "u-1");

    let sale = gw.sale("s1").await;
    assert_eq!(sale["sold"], 1);
    assert_eq!(sale["remaining"], 9);
    assert_eq!(sale["stock"], 10);
    assert_eq!(sale["per_user_limit"], 1);
    assert_eq!(sale["state"], "active");
    assert!(sale["starts_at"].is_null() && sale["ends_at"].is_null());
    gw.stop().await;
}

#[tokio::test]
async fn a_second_purchase_over_the_limit_is_403_limit_exceeded() {
    let gw = TestGateway::start().await;
    gw.open_sale("lim", 10, 2).await;
    let (s, _, v) = gw.purchase("lim", r#"{"user_id":"u","quantity":2}"#).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = gw.buy("lim", "u").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(status_of(&v), "limit_exceeded");
    assert!(v["error"].is_string());
    let request_id = v["request_id"].as_str().unwrap();
    assert_eq!(
        status_of(&final_status(&gw, request_id).await),
        "limit_exceeded"
    );
    assert_eq!(sold(&gw, "lim").await, (2, 8));
    gw.stop().await;
}

#[tokio::test]
async fn a_blacklisted_user_is_403_rejected_with_a_reason() {
    let mut setup = Setup::default();
    setup.service.risk.blacklist = HashSet::from(["mallory".to_string()]);
    let gw = TestGateway::with(setup).await;
    gw.open_sale("risk", 10, 1).await;
    let (s, v) = gw.buy("risk", "mallory").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(status_of(&v), "rejected");
    assert!(v["reason"].is_string(), "{v}");
    let r = final_status(&gw, v["request_id"].as_str().unwrap()).await;
    assert_eq!(status_of(&r), "rejected");
    assert_eq!(sold(&gw, "risk").await, (0, 10));
    // Someone else still buys.
    assert_eq!(gw.buy("risk", "alice").await.0, StatusCode::OK);
    gw.stop().await;
}

#[tokio::test]
async fn an_unknown_sale_is_404() {
    let gw = TestGateway::start().await;
    let (s, v) = gw.buy("nope", "u").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(status_of(&v), "not_found");
    let (s, v) = gw.get("/api/v1/sales/nope").await;
    assert_eq!((s, status_of(&v)), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _) = gw.get("/api/v1/requests/nope.123").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = gw.get("/api/v1/nothing-here").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    gw.stop().await;
}

#[tokio::test]
async fn outside_the_window_is_409_not_started_or_ended() {
    let gw = TestGateway::start().await;
    let (s, v) = gw
        .put_sale(
            "later",
            json!({"stock": 5, "starts_at": "2999-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = gw
        .put_sale(
            "over",
            json!({"stock": 5, "starts_at": "2000-01-01T00:00:00Z", "ends_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    let (s, v) = gw.buy("later", "u").await;
    assert_eq!((s, status_of(&v)), (StatusCode::CONFLICT, "not_started"));
    let (s, v) = gw.buy("over", "u").await;
    assert_eq!((s, status_of(&v)), (StatusCode::CONFLICT, "ended"));
    let later = gw.sale("later").await;
    assert_eq!(later["state"], "upcoming");
    assert_eq!(later["starts_at"], "2999-01-01T00:00:00Z");
    assert_eq!(gw.sale("over").await["state"], "ended");
    gw.stop().await;
}

#[tokio::test]
async fn after_the_last_unit_buyers_get_410_sold_out() {
    let gw = TestGateway::start().await;
    gw.open_sale("one", 1, 1).await;
    let before = unix_now();
    assert_eq!(gw.buy("one", "a").await.0, StatusCode::OK);
    let (s, v) = gw.buy("one", "b").await;
    assert_eq!((s, status_of(&v)), (StatusCode::GONE, "sold_out"), "{v}");
    // The moment of the sell-out, for a dashboard's marker.
    let at = sample(
        &gw.metrics().await,
        r#"seckill_sale_sold_out_timestamp_seconds{sale="one"}"#,
    )
    .expect("the sell-out time is exposed");
    // (The gauge counts whole milliseconds.)
    assert!((before - 0.001..=unix_now()).contains(&at), "{before} {at}");
    // Later buyers are refused at the edge, without a token or the queue.
    for i in 0..5 {
        let (s, _) = gw.buy("one", &format!("c{i}")).await;
        assert_eq!(s, StatusCode::GONE);
    }
    assert_eq!(gw.sale("one").await["state"], "sold_out");
    assert_eq!(sold(&gw, "one").await, (1, 0));
    gw.stop().await;
}

#[tokio::test]
async fn a_body_over_4_kib_is_413_and_changes_nothing() {
    let gw = TestGateway::start().await;
    gw.open_sale("big", 5, 1).await;
    let big = format!(r#"{{"user_id":"u","pad":"{}"}}"#, "x".repeat(5000));
    let (s, _, v) = gw.purchase("big", &big).await;
    assert_eq!(
        (s, status_of(&v)),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );

    // Without a content-length: a chunked body that grows past the limit.
    let mut req = b"POST /api/v1/sales/big/purchase HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..5 {
        req.extend_from_slice(b"400\r\n");
        req.extend_from_slice(&[b' '; 0x400]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(gw.public, &req, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(sold(&gw, "big").await, (0, 5));
    gw.stop().await;
}

#[tokio::test]
async fn an_empty_bucket_answers_429_without_enqueueing() {
    let gw = TestGateway::start().await;
    // One token per second; the full bucket holds one.
    let (s, v) = gw
        .put_sale(
            "slow",
            json!({"stock": 100, "token_rate": 1, "token_capacity": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(gw.buy("slow", "first").await.0, StatusCode::OK);
    for i in 0..3 {
        let (s, h, v) = gw
            .purchase("slow", &format!(r#"{{"user_id":"u{i}"}}"#))
            .await;
        assert_eq!(
            (s, status_of(&v), v["reason"].as_str()),
            (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                Some("no_token")
            )
        );
        assert!(h.contains_key("retry-after"));
    }
    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"seckill_queue_enqueued_total{sale="slow"}"#),
        Some(1.0),
        "only the purchase with a token was enqueued:\n{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"seckill_gateway_refusals_total{sale="slow",reason="no_token"}"#
        ),
        Some(3.0),
        "{m}"
    );
    assert_eq!(sold(&gw, "slow").await, (1, 99));
    // The next token arrives after a second; then the purchase goes through.
    assert_eq!(buy_admitted(&gw, "slow", "late").await.0, StatusCode::OK);
    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"seckill_queue_enqueued_total{sale="slow"}"#),
        Some(2.0)
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_per_user_edge_limit_answers_429() {
    let mut setup = Setup::default();
    setup.config.user_rate_per_sec = 1;
    setup.config.user_burst = 2;
    let gw = TestGateway::with(setup).await;
    gw.open_sale("edge", 100, 10).await;
    assert_eq!(gw.buy("edge", "eager").await.0, StatusCode::OK);
    assert_eq!(gw.buy("edge", "eager").await.0, StatusCode::OK);
    let (s, h, v) = gw.purchase("edge", r#"{"user_id":"eager"}"#).await;
    assert_eq!(
        (s, status_of(&v)),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    assert!(h.contains_key("retry-after"));
    // Another user is not affected.
    assert_eq!(gw.buy("edge", "calm").await.0, StatusCode::OK);
    assert_eq!(sold(&gw, "edge").await.0, 3);
    gw.stop().await;
}

#[tokio::test]
async fn a_full_queue_is_503_overloaded() {
    let mut setup = Setup::default();
    // One slow worker taking one item at a time: the queue's one slot
    // stays taken while it works.
    setup.service.workers = 1;
    setup.service.batch_size = 1;
    setup.service.work_delay = Duration::from_millis(1500);
    setup.config.request_timeout = Duration::from_millis(400);
    let gw = Arc::new(TestGateway::with(setup).await);
    let (s, v) = gw
        .put_sale("q", json!({"stock": 10, "queue_capacity": 1}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    let mut parked = Vec::new();
    for (n, user) in ["in-work", "in-queue"].into_iter().enumerate() {
        let g = gw.clone();
        // A new sale's bucket may not have its token yet: retried on 429.
        parked.push(tokio::spawn(
            async move { buy_admitted(&g, "q", user).await },
        ));
        // Wait until it is enqueued, and the first one picked up by the
        // only worker: the queue then holds exactly the second.
        until_metrics(&gw, "the purchase enqueued", |m| {
            sample(m, r#"seckill_queue_enqueued_total{sale="q"}"#) == Some(n as f64 + 1.0)
                && sample(m, r#"seckill_queue_depth{sale="q"}"#) == Some(n as f64)
        })
        .await;
    }
    let (s, h, v) = gw.purchase("q", r#"{"user_id":"third"}"#).await;
    assert_eq!(
        (s, status_of(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        "{v}"
    );
    assert!(h.contains_key("retry-after"));
    assert!(v["request_id"].is_string());
    assert_eq!(v["reason"], "queue_full", "{v}");
    until_metrics(&gw, "the refusal counted by its reason", |m| {
        sample(
            m,
            r#"seckill_gateway_refusals_total{reason="queue_full",sale="q"}"#,
        ) == Some(1.0)
    })
    .await;

    // The queued ones are not decided before their deadline: 504 with
    // their request id, and no stock taken.
    for t in parked {
        let (s, v) = t.await.unwrap();
        assert_eq!(
            (s, status_of(&v)),
            (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            "{v}"
        );
        assert!(v["request_id"].is_string());
    }
    assert_eq!(sold(&gw, "q").await, (0, 10));
    Arc::into_inner(gw).unwrap().stop().await;
}

#[tokio::test]
async fn expired_items_are_dropped_without_stock_and_read_as_expired() {
    let mut setup = Setup::default();
    setup.config.request_timeout = Duration::from_millis(200);
    setup.config.reply_grace = Duration::from_millis(50);
    setup.service.workers = 1;
    setup.service.work_delay = Duration::from_millis(500);
    let gw = Arc::new(TestGateway::with(setup).await);
    gw.open_sale("late", 10, 1).await;

    let mut tasks = Vec::new();
    for i in 0..5 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            gw.buy("late", &format!("u{i}")).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        assert_eq!(
            (s, status_of(&v)),
            (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            "{v}"
        );
        ids.push(v["request_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        let r = final_status(&gw, id).await;
        assert_eq!(status_of(&r), "expired", "{r}");
        assert!(r.get("order_id").is_none());
    }
    assert_eq!(sold(&gw, "late").await, (0, 10));
    let m = gw.metrics().await;
    assert!(sample(&m, "seckill_service_expired_total").unwrap() >= 5.0);
    Arc::into_inner(gw).unwrap().stop().await;
}

// ------------------------------------------------------- spike and duplicates

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_of_20000_buyers_sells_exactly_the_stock() {
    let gw = Arc::new(TestGateway::start().await);
    gw.open_sale("spike", 500, 1).await;

    let g = gw.clone();
    let answers = seckill_test_support::crowd((0..20_000).collect(), 1000, move |i| {
        let gw = g.clone();
        async move {
            let (s, v) = gw.buy("spike", &format!("buyer-{i}")).await;
            (
                s,
                status_of(&v).to_string(),
                v["order_id"].as_str().map(String::from),
            )
        }
    })
    .await;
    let mut by_status: HashMap<String, usize> = HashMap::new();
    let mut orders = HashSet::new();
    for (s, status, order) in answers {
        match status.as_str() {
            "success" => {
                assert_eq!(s, StatusCode::OK);
                assert!(orders.insert(order.expect("order id")), "order ids unique");
            }
            "sold_out" => assert_eq!(s, StatusCode::GONE),
            other => panic!("unexpected answer {s} {other}"),
        }
        *by_status.entry(status).or_default() += 1;
    }
    assert_eq!(by_status.get("success"), Some(&500), "{by_status:?}");
    assert_eq!(by_status.values().sum::<usize>(), 20_000);
    let sale = gw.sale("spike").await;
    assert_eq!(
        (sale["sold"].as_u64(), sale["remaining"].as_u64()),
        (Some(500), Some(0))
    );
    assert_eq!(sale["state"], "sold_out");
    assert_eq!(gw.get_admin("/metrics").await.0, StatusCode::OK);
    Arc::into_inner(gw).unwrap().stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_never_exceed_the_per_user_limit() {
    let gw = Arc::new(TestGateway::start().await);
    gw.open_sale("dup", 100, 2).await;
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move { gw.buy("dup", "greedy").await }));
    }
    let mut ok = 0;
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match status_of(&v) {
            "success" => ok += 1,
            "limit_exceeded" => assert_eq!(s, StatusCode::FORBIDDEN),
            other => panic!("unexpected {s} {other}"),
        }
    }
    assert_eq!(ok, 2);
    assert_eq!(sold(&gw, "dup").await, (2, 98));
    Arc::into_inner(gw).unwrap().stop().await;
}

#[tokio::test]
async fn a_repeated_key_gets_the_first_result_after_sell_out_and_removal() {
    let gw = TestGateway::start().await;
    gw.open_sale("rk", 1, 1).await;
    let key = [("idempotency-key", "k-first")];
    let body = r#"{"user_id":"u-first"}"#;
    let (s, _, first) = gw.purchase_with("rk", body, &key).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    let (s, v) = gw.buy("rk", "u-late").await;
    assert_eq!((s, status_of(&v)), (StatusCode::GONE, "sold_out"), "{v}");

    // Sold out: the buyer whose connection broke repeats its key.
    let (s, _, again) = gw.purchase_with("rk", body, &key).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["order_id"], first["order_id"]);
    assert_eq!(again["request_id"], first["request_id"]);
    // Another user's same key is not theirs.
    let (s, _, v) = gw
        .purchase_with("rk", r#"{"user_id":"u-other"}"#, &key)
        .await;
    assert_eq!((s, status_of(&v)), (StatusCode::GONE, "sold_out"), "{v}");

    // Removed: the order still stands for its key.
    let auth = format!("Bearer {TOKEN}");
    let (s, _, _) = gw
        .request(
            hyper::Method::DELETE,
            gw.admin,
            "/admin/v1/sales/rk",
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, again) = gw.purchase_with("rk", body, &key).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["order_id"], first["order_id"]);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_of_one_idempotency_key_make_one_order() {
    let gw = Arc::new(TestGateway::start().await);
    gw.open_sale("idem", 100, 5).await;
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let (s, _, v) = gw
                .purchase_with(
                    "idem",
                    r#"{"user_id":"clicker"}"#,
                    &[("idempotency-key", "k-1")],
                )
                .await;
            (s, v)
        }));
    }
    let mut first_ids = HashSet::new();
    let mut orders = HashSet::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match status_of(&v) {
            "success" => {
                orders.insert(v["order_id"].as_str().unwrap().to_string());
            }
            "pending" => assert_eq!(s, StatusCode::ACCEPTED),
            other => panic!("unexpected {s} {other}"),
        }
        first_ids.insert(v["request_id"].as_str().unwrap().to_string());
    }
    assert_eq!(orders.len(), 1, "one order: {orders:?}");
    assert_eq!(first_ids.len(), 1, "every repeat names the first request");
    // A repeat after the fact gets the same order.
    let (s, _, v) = gw
        .purchase_with(
            "idem",
            r#"{"user_id":"clicker"}"#,
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(orders.contains(v["order_id"].as_str().unwrap()));
    // Another key of the same user is a second purchase.
    let (s, _, v) = gw
        .purchase_with(
            "idem",
            r#"{"user_id":"clicker"}"#,
            &[("idempotency-key", "k-2")],
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(!orders.contains(v["order_id"].as_str().unwrap()));
    assert_eq!(sold(&gw, "idem").await, (2, 98));
    Arc::into_inner(gw).unwrap().stop().await;
}

// ------------------------------------------------------------- hostile input

#[tokio::test]
async fn malformed_purchases_are_400_and_change_nothing() {
    let gw = TestGateway::start().await;
    gw.open_sale("bad", 5, 2).await;
    let long = "x".repeat(65);
    let cases: Vec<(String, &[(&str, &str)])> = vec![
        ("".into(), &[]),
        ("{".into(), &[]),
        ("not json".into(), &[]),
        ("[]".into(), &[]),
        ("null".into(), &[]),
        ("{}".into(), &[]),
        (r#"{"user_id":""}"#.into(), &[]),
        (r#"{"user_id":42}"#.into(), &[]),
        (r#"{"user_id":null}"#.into(), &[]),
        (r#"{"user_id":["u"]}"#.into(), &[]),
        (format!(r#"{{"user_id":"{long}"}}"#), &[]),
        (r#"{"user_id":"a\u0000b"}"#.into(), &[]),
        (r#"{"user_id":"u","quantity":0}"#.into(), &[]),
        (r#"{"user_id":"u","quantity":-1}"#.into(), &[]),
        (r#"{"user_id":"u","quantity":1.5}"#.into(), &[]),
        (r#"{"user_id":"u","quantity":"1"}"#.into(), &[]),
        (r#"{"user_id":"u","quantity":99999999999}"#.into(), &[]),
        (r#"{"user_id":"u","quantity":3}"#.into(), &[]),
        (r#"{"user_id":"u"}"#.into(), &[("idempotency-key", "")]),
        (
            r#"{"user_id":"u"}"#.into(),
            &[("idempotency-key", "has space")],
        ),
        (
            r#"{"user_id":"u"}"#.into(),
            &[("idempotency-key", "../../etc")],
        ),
    ];
    let long_key = "k".repeat(65);
    let mut cases = cases;
    let long_key_header: &[(&str, &str)] = &[("idempotency-key", &long_key)];
    cases.push((r#"{"user_id":"u"}"#.into(), long_key_header));
    for (body, headers) in &cases {
        let (s, h, v) = gw.purchase_with("bad", body, headers).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body} {headers:?} -> {v}");
        assert_eq!(status_of(&v), "bad_request");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert!(h.contains_key("x-request-id"));
    }
    // Hostile sale ids in the path.
    for sale in ["%00", "..", &"s".repeat(65), "a%2Fb", "%E2%98%83"] {
        let (s, _, v) = gw.purchase(sale, r#"{"user_id":"u"}"#).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{sale} -> {v}");
    }
    // Wrong method.
    let (s, _, _) = gw
        .request(
            hyper::Method::GET,
            gw.public,
            "/api/v1/sales/bad/purchase",
            &[],
            "",
        )
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(sold(&gw, "bad").await, (0, 5));
    // The sale still works.
    assert_eq!(gw.buy("bad", "u").await.0, StatusCode::OK);
    gw.stop().await;
}

#[tokio::test]
async fn hostile_connections_are_refused_without_harm() {
    let mut setup = Setup::default();
    setup.config.header_read_timeout = Duration::from_millis(300);
    setup.config.body_read_timeout = Duration::from_millis(300);
    let gw = TestGateway::with(setup).await;
    gw.open_sale("h", 5, 1).await;

    // Not HTTP at all.
    let answer = raw(
        gw.public,
        b"\x16\x03\x01garbage\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    // Huge headers.
    let mut req = b"POST /api/v1/sales/h/purchase HTTP/1.1\r\nhost: x\r\nx-junk: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 200_000));
    req.extend_from_slice(b"\r\n\r\n");
    let answer = raw(gw.public, &req, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    // Headers that never finish: the connection is closed after the header
    // read timeout, long before the test's own limit.
    let started = std::time::Instant::now();
    let _ = raw(
        gw.public,
        b"POST /api/v1/sales/h/purchase HTTP/1.1\r\nhost: x\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(4));

    // A body that stops halfway (a valid purchase, had it all come) is
    // answered 400 after the body read timeout; it took no token and holds
    // no stock and no waiter.
    let body = br#"{"user_id":"slow-body"}"#;
    let mut req = format!(
        "POST /api/v1/sales/h/purchase HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body[..body.len() - 1]);
    let started = std::time::Instant::now();
    let answer = raw(gw.public, &req, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive in time"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"seckill_tokens_taken_total{sale="h"}"#),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "seckill_gateway_waiting_requests"),
        Some(0.0),
        "{m}"
    );

    assert_eq!(sold(&gw, "h").await, (0, 5));
    assert_eq!(gw.buy("h", "u").await.0, StatusCode::OK);
    gw.stop().await;
}

/// A purchase retried while the bucket has no token (a new bucket fills at
/// its rate), for at most 10 s; the first answer that is not a 429.
async fn buy_admitted(gw: &TestGateway, sale: &str, user: &str) -> (StatusCode, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = gw.buy(sale, user).await;
        if s != StatusCode::TOO_MANY_REQUESTS || std::time::Instant::now() > deadline {
            assert_ne!(
                s,
                StatusCode::TOO_MANY_REQUESTS,
                "no token for {sale} within 10 s: {v}"
            );
            return (s, v);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `method` on an admin path with the token; the status and body.
async fn admin(
    gw: &TestGateway,
    method: hyper::Method,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let auth = format!("Bearer {TOKEN}");
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (s, _, v) = gw
        .request(method, gw.admin, path, &[("authorization", &auth)], body)
        .await;
    (s, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_steers_a_live_sale_without_losing_an_order() {
    use hyper::Method;
    let gw = TestGateway::start().await;
    let (s, v) = gw
        .put_sale(
            "live",
            json!({"stock": 1000, "token_rate": 2000, "token_capacity": 100}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for u in 0..50 {
        assert_eq!(
            buy_admitted(&gw, "live", &format!("early-{u}")).await.0,
            StatusCode::OK
        );
    }

    // Never below what was sold; bad values are 400; unknown sales 404.
    let (s, v) = admin(
        &gw,
        Method::PATCH,
        "/admin/v1/sales/live",
        json!({"stock": 49}),
    )
    .await;
    assert_eq!(
        (s, status_of(&v)),
        (StatusCode::CONFLICT, "conflict"),
        "{v}"
    );
    for bad in [
        json!({"per_user_limit": 0}),
        json!({"stock": -1}),
        json!({"admission": "x"}),
        json!({"ends_at": "soon"}),
    ] {
        let (s, v) = admin(&gw, Method::PATCH, "/admin/v1/sales/live", bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} -> {v}");
    }
    let (s, _) = admin(
        &gw,
        Method::PATCH,
        "/admin/v1/sales/nope",
        json!({"stock": 1}),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // The token rate down mid-sale: admissions follow it at once.
    let (s, v) = admin(
        &gw,
        Method::PATCH,
        "/admin/v1/sales/live",
        json!({"token_rate": 5, "token_capacity": 5}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["token_rate"].clone(), v["sold"].clone()),
        (json!(5), json!(50))
    );
    let started = std::time::Instant::now();
    let mut admitted = 0;
    for u in 0..100 {
        if gw.buy("live", &format!("slow-{u}")).await.0 == StatusCode::OK {
            admitted += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let allowed = 5.0 + 5.0 * started.elapsed().as_secs_f64() + 2.0;
    assert!(
        f64::from(admitted) <= allowed,
        "{admitted} admitted at 5 tokens/s in {:?}",
        started.elapsed()
    );

    // Pause and resume.
    let (s, v) = admin(&gw, Method::POST, "/admin/v1/sales/live/pause", Value::Null).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("paused")),
        "{v}"
    );
    let (s, v) = gw.buy("live", "while-paused").await;
    assert_eq!((s, status_of(&v)), (StatusCode::CONFLICT, "paused"), "{v}");
    assert_eq!(gw.sale("live").await["state"], "paused");
    let (s, v) = admin(
        &gw,
        Method::POST,
        "/admin/v1/sales/live/resume",
        Value::Null,
    )
    .await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("active")),
        "{v}"
    );
    assert_eq!(
        buy_admitted(&gw, "live", "after-resume").await.0,
        StatusCode::OK
    );

    // End: no more purchases, nothing lost.
    let (s, v) = admin(&gw, Method::POST, "/admin/v1/sales/live/end", Value::Null).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("ended")),
        "{v}"
    );
    let (s, v) = gw.buy("live", "too-late").await;
    assert_eq!((s, status_of(&v)), (StatusCode::CONFLICT, "ended"), "{v}");

    let sold = gw.sale("live").await["sold"].as_u64().unwrap();
    let (s, feed) = gw
        .get_authorized("/admin/v1/orders?sale_id=live&limit=10000")
        .await;
    assert_eq!(s, StatusCode::OK);
    let orders = feed["orders"].as_array().unwrap();
    assert_eq!(orders.len() as u64, sold, "every sold unit has its order");
    let users: std::collections::HashSet<_> = orders.iter().map(|o| o["user_id"].clone()).collect();
    assert_eq!(users.len(), orders.len(), "no buyer twice");
    gw.stop().await;
}

#[tokio::test]
async fn a_removed_sale_keeps_its_orders_and_its_id_never_sells_again() {
    use hyper::Method;
    let gw = TestGateway::start().await;
    gw.open_sale("once", 5, 1).await;
    for u in 0..3 {
        assert_eq!(gw.buy("once", &format!("u{u}")).await.0, StatusCode::OK);
    }
    let (s, _) = admin(&gw, Method::DELETE, "/admin/v1/sales/once", Value::Null).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(gw.get("/api/v1/sales/once").await.0, StatusCode::NOT_FOUND);
    // Creating it again would sell its 5 units a second time.
    let (s, v) = gw.put_sale("once", json!({"stock": 5})).await;
    assert_eq!(
        (s, status_of(&v)),
        (StatusCode::CONFLICT, "conflict"),
        "{v}"
    );
    assert_eq!(gw.buy("once", "u0").await.0, StatusCode::NOT_FOUND);
    let (s, feed) = gw.get_authorized("/admin/v1/orders?sale_id=once").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(feed["orders"].as_array().unwrap().len(), 3, "{feed}");
    // A sale that sold nothing leaves its id free.
    gw.open_sale("unsold", 5, 1).await;
    let (s, _) = admin(&gw, Method::DELETE, "/admin/v1/sales/unsold", Value::Null).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = gw.put_sale("unsold", json!({"stock": 5})).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    gw.stop().await;
}

#[tokio::test]
async fn the_order_feed_pages_orders_without_skip_or_repeat() {
    let gw = TestGateway::start().await;
    gw.open_sale("feed", 5, 1).await;
    let mut bought = std::collections::BTreeSet::new();
    for u in 0..5 {
        let (s, v) = gw.buy("feed", &format!("u{u}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        bought.insert(v["order_id"].as_str().unwrap().to_string());
    }
    let (mut seen, mut after) = (Vec::new(), String::new());
    for _ in 0..10 {
        let (s, page) = gw
            .get_authorized(&format!("/admin/v1/orders?sale_id=feed&limit=2{after}"))
            .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        let orders = page["orders"].as_array().unwrap();
        if orders.is_empty() {
            break;
        }
        assert!(orders.len() <= 2, "{page}");
        for o in orders {
            assert_eq!(o["sale_id"], "feed");
            assert_eq!(o["quantity"], 1);
            assert!(o["at"].as_str().unwrap().ends_with('Z'), "{o}");
            seen.push(o["order_id"].as_str().unwrap().to_string());
        }
        after = format!("&after={}", page["next"].as_str().unwrap());
    }
    assert_eq!(seen.len(), 5, "each order once: {seen:?}");
    assert_eq!(
        seen.iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        bought
    );

    // Every sale's orders, without the filter: the same five, and a read
    // at the end waits (wait_ms) and comes back empty at the same cursor.
    let (s, all) = gw.get_authorized("/admin/v1/orders?limit=100").await;
    assert_eq!(s, StatusCode::OK, "{all}");
    assert_eq!(all["orders"].as_array().unwrap().len(), 5, "{all}");
    let end = all["next"].as_str().unwrap().to_string();
    let (s, empty) = gw
        .get_authorized(&format!("/admin/v1/orders?after={end}&wait_ms=200"))
        .await;
    assert_eq!(s, StatusCode::OK, "{empty}");
    assert_eq!(empty["orders"].as_array().unwrap().len(), 0);
    assert_eq!(empty["next"], end.as_str());

    for bad in [
        "?sale_id=feed&after=99",
        "?sale_id=feed&after=x",
        "?after=%00",
        "?sale_id=a/b",
        "?wait_ms=30001",
        "?limit=0",
        "?cursor=1",
    ] {
        let (s, v) = gw.get_authorized(&format!("/admin/v1/orders{bad}")).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert_eq!(v["status"], "bad_request");
    }
    let (s, _, _) = gw
        .request(
            hyper::Method::GET,
            gw.admin,
            "/admin/v1/orders?sale_id=feed",
            &[],
            "",
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the feed needs the admin token"
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_admin_api_needs_the_token_and_validates_its_input() {
    let gw = TestGateway::start().await;
    let body = json!({"stock": 3}).to_string();
    let put = |auth: Option<String>, id: &str, body: String| {
        let gw = &gw;
        let id = id.to_string();
        async move {
            let mut h: Vec<(&str, &str)> = Vec::new();
            if let Some(a) = auth.as_deref() {
                h.push(("authorization", a));
            }
            let (s, _, v) = gw
                .request(
                    hyper::Method::PUT,
                    gw.admin,
                    &format!("/admin/v1/sales/{id}"),
                    &h,
                    body,
                )
                .await;
            (s, v)
        }
    };
    for auth in [
        None,
        Some("Bearer wrong".to_string()),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_string()),
        Some("Bearer ".to_string()),
    ] {
        let (s, v) = put(auth.clone(), "a1", body.clone()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{auth:?} -> {v}");
    }
    let (s, _) = gw.get("/api/v1/sales/a1").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "nothing was created");
    let (s, _) = gw.get_admin("/admin/v1/sales").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let bearer = Some(format!("Bearer {TOKEN}"));
    for bad in [
        "",
        "{",
        "{}",
        r#"{"stock":-1}"#,
        r#"{"stock":"10"}"#,
        r#"{"stock":10,"per_user_limit":0}"#,
        r#"{"stock":10,"token_rate":0}"#,
        r#"{"stock":10,"surprise":true}"#,
        r#"{"stock":10,"starts_at":"yesterday"}"#,
        r#"{"stock":10,"starts_at":"2030-01-02T00:00:00Z","ends_at":"2030-01-01T00:00:00Z"}"#,
    ] {
        let (s, v) = put(bearer.clone(), "a1", bad.to_string()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} -> {v}");
        assert_eq!(status_of(&v), "bad_request");
    }
    let (s, _) = put(bearer.clone(), &"x".repeat(65), body.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = put(bearer.clone(), "a%20b", body.clone()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let huge = format!(r#"{{"stock":1,"pad":"{}"}}"#, "x".repeat(5000));
    let (s, _) = put(bearer.clone(), "a1", huge).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);

    // Create, replace while nothing is sold, refuse once something is.
    assert_eq!(
        put(bearer.clone(), "a1", body.clone()).await.0,
        StatusCode::CREATED
    );
    let (s, _) = put(
        bearer.clone(),
        "a1",
        json!({"stock": 4, "token_rate": 100000, "token_capacity": 1000}).to_string(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(gw.sale("a1").await["stock"], 4);
    assert_eq!(buy_admitted(&gw, "a1", "u").await.0, StatusCode::OK);
    let (s, v) = put(bearer.clone(), "a1", body.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(gw.sale("a1").await["stock"], 4);

    // List with the token; delete.
    let auth = format!("Bearer {TOKEN}");
    let (s, _, v) = gw
        .request(
            hyper::Method::GET,
            gw.admin,
            "/admin/v1/sales",
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let listed = v
        .as_array()
        .or(v["sales"].as_array())
        .expect("a list of sales");
    assert!(listed.iter().any(|s| s["sale_id"] == "a1"));
    let (s, _, _) = gw
        .request(
            hyper::Method::DELETE,
            gw.admin,
            "/admin/v1/sales/a1",
            &[],
            "",
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _, _) = gw
        .request(
            hyper::Method::DELETE,
            gw.admin,
            "/admin/v1/sales/a1",
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(gw.get("/api/v1/sales/a1").await.0, StatusCode::NOT_FOUND);
    assert_eq!(gw.buy("a1", "v").await.0, StatusCode::NOT_FOUND);
    gw.stop().await;
}

// ------------------------------------------------------ operations and gRPC

/// Every metric of docs/API.md, as it appears in the text exposition.
const METRICS: &[&str] = &[
    "seckill_gateway_requests_total",
    "seckill_gateway_request_duration_seconds",
    "seckill_gateway_waiting_requests",
    "seckill_tokens_available",
    "seckill_tokens_issued_total",
    "seckill_tokens_taken_total",
    "seckill_tokens_discarded_total",
    "seckill_queue_depth",
    "seckill_queue_enqueued_total",
    "seckill_service_processed_total",
    "seckill_service_expired_total",
    "seckill_service_queue_wait_seconds",
    "seckill_service_process_duration_seconds",
    "seckill_callback_total",
    "seckill_callbacks_sent_total",
    "seckill_callbacks_received_total",
    "seckill_sale_requests_total",
    "seckill_sale_request_duration_seconds",
    "seckill_stock_remaining",
];

/// Checks the Prometheus text format line by line; returns the metric
/// families with their declared types.
fn parse_prometheus(text: &str) -> HashMap<String, String> {
    let mut types = HashMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, ty) = (it.next().unwrap(), it.next().unwrap());
            assert!(valid_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                "{line}"
            );
            types.insert(name.to_string(), ty.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').expect("series and value");
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "{line}");
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
                for pair in labels[1..labels.len() - 1].split("\",") {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    assert!(valid_name(k), "{line}");
                    assert!(v.starts_with('"'), "{line}");
                }
            }
        }
        let ok = value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value);
        assert!(ok, "bad value in {line}");
        let family = name
            .strip_suffix("_bucket")
            .or_else(|| name.strip_suffix("_sum"))
            .or_else(|| name.strip_suffix("_count"))
            .filter(|f| types.contains_key(*f))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample without TYPE: {line}");
    }
    types
}

#[tokio::test]
async fn metrics_expose_every_documented_series_and_parse() {
    let mut setup = Setup::default();
    setup.config.request_timeout = Duration::from_millis(200);
    let gw = TestGateway::with(setup).await;
    gw.open_sale("m", 1, 1).await;
    assert_eq!(gw.buy("m", "a").await.0, StatusCode::OK);
    let _ = gw.buy("m", "b").await;
    // The sync loop publishes the stock gauge.
    let text = until_metrics(&gw, "the stock gauge of sale m", |m| {
        sample(m, r#"seckill_stock_remaining{sale="m"}"#) == Some(0.0)
    })
    .await;
    let types = parse_prometheus(&text);
    for m in METRICS {
        assert!(types.contains_key(*m), "{m} missing from /metrics:\n{text}");
    }
    assert_eq!(types["seckill_gateway_requests_total"], "counter");
    assert_eq!(
        types["seckill_gateway_request_duration_seconds"],
        "histogram"
    );
    assert_eq!(types["seckill_gateway_waiting_requests"], "gauge");
    assert_eq!(types["seckill_service_queue_wait_seconds"], "histogram");
    assert!(
        sample(
            &text,
            r#"seckill_gateway_requests_total{outcome="success"}"#
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(&text, r#"seckill_stock_remaining{sale="m"}"#),
        Some(0.0)
    );
    assert!(
        !text.contains("user_id") && !text.contains("u-"),
        "no high-cardinality labels"
    );

    let (s, _) = gw.get_admin("/healthz").await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = gw.get_admin("/readyz").await;
    assert_eq!(s, StatusCode::OK);
    gw.stop().await;
}

/// A sample, 0 when absent (a counter not yet registered).
fn count(m: &str, series: &str) -> f64 {
    sample(m, series).unwrap_or(0.0)
}

#[tokio::test]
async fn requests_and_latency_are_counted_by_sale_and_leave_with_it() {
    use hyper::Method;
    let gw = TestGateway::start().await;
    gw.open_sale("per-a", 10, 5).await;
    gw.open_sale("per-b", 10, 1).await;
    let before = gw.metrics().await;
    let other = r#"seckill_sale_requests_total{sale="(other)",outcome="not_found"}"#;
    for u in ["a1", "a2"] {
        assert_eq!(gw.buy("per-a", u).await.0, StatusCode::OK);
    }
    assert_eq!(gw.buy("per-b", "b1").await.0, StatusCode::OK);
    assert_eq!(gw.buy("per-b", "b1").await.0, StatusCode::FORBIDDEN);
    assert_eq!(gw.buy("per-nowhere", "x").await.0, StatusCode::NOT_FOUND);

    let m = gw.metrics().await;
    let req = |sale: &str, outcome: &str| {
        count(
            &m,
            &format!(r#"seckill_sale_requests_total{{sale="{sale}",outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(req("per-a", "success"), 2.0, "{m}");
    assert_eq!(req("per-a", "limit_exceeded"), 0.0);
    assert_eq!(req("per-b", "success"), 1.0);
    assert_eq!(req("per-b", "limit_exceeded"), 1.0);
    let timed = |sale: &str| {
        count(
            &m,
            &format!(r#"seckill_sale_request_duration_seconds_count{{sale="{sale}"}}"#),
        )
    };
    assert_eq!((timed("per-a"), timed("per-b")), (2.0, 2.0));
    assert!(
        count(
            &m,
            r#"seckill_sale_request_duration_seconds_sum{sale="per-a"}"#
        ) > 0.0
    );
    // A sale the gateway does not hold has no series of its own.
    assert!(!m.contains("per-nowhere"), "{m}");
    assert!(count(&m, other) >= count(&before, other) + 1.0);
    // The per-outcome totals are still there, beside.
    assert!(count(&m, r#"seckill_gateway_requests_total{outcome="success"}"#) >= 3.0);
    // Results travel back in process here: received, and under the old
    // name too.
    let received = r#"seckill_callbacks_received_total{result="ok"}"#;
    assert!(count(&m, received) >= 4.0, "{m}");
    assert!(count(&m, r#"seckill_callback_total{result="ok"}"#) >= 4.0);

    let (s, _) = admin(&gw, Method::DELETE, "/admin/v1/sales/per-b", Value::Null).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let m = gw.metrics().await;
    assert!(
        !m.contains(r#"sale="per-b""#),
        "a removed sale's series stay:\n{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"seckill_sale_requests_total{sale="per-a",outcome="success"}"#
        ),
        Some(2.0)
    );
    gw.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_answers_a_waiting_request() {
    let mut setup = Setup::default();
    setup.service.work_delay = Duration::from_millis(600);
    let gw = Arc::new(TestGateway::with(setup).await);
    gw.open_sale("bye", 5, 1).await;
    let waiting = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.buy("bye", "patient").await })
    };
    // Shut down while the request waits for its result.
    until_metrics(&gw, "the purchase enqueued", |m| {
        sample(m, r#"seckill_queue_enqueued_total{sale="bye"}"#) == Some(1.0)
    })
    .await;
    gw.shutdown.cancel();
    let (s, v) = waiting.await.unwrap();
    assert_eq!((s, status_of(&v)), (StatusCode::OK, "success"), "{v}");
    let gw = Arc::into_inner(gw).unwrap();
    let public = gw.public;
    gw.stop().await;
    // And it no longer takes connections.
    assert!(TcpStream::connect(public).await.is_err());
}

#[tokio::test]
async fn results_travel_over_grpc_and_unknown_ones_are_counted() {
    const CALLBACK_TOKEN: &str = "test-callback-token-0123456789";
    let mut setup = Setup {
        options: gateway::EmbeddedOptions {
            callback_over_grpc: true,
        },
        ..Setup::default()
    };
    setup.config.callback_token =
        Some(gateway::config::CallbackToken::new(CALLBACK_TOKEN).unwrap());
    let gw = TestGateway::with(setup).await;
    gw.open_sale("g", 2, 1).await;
    let (s, v) = gw.buy("g", "a").await;
    assert_eq!((s, status_of(&v)), (StatusCode::OK, "success"), "{v}");
    let (s, v) = gw.buy("g", "a").await;
    assert_eq!(
        (s, status_of(&v)),
        (StatusCode::FORBIDDEN, "limit_exceeded"),
        "{v}"
    );
    let m = gw.metrics().await;
    assert!(sample(&m, r#"seckill_callback_total{result="ok"}"#).unwrap() >= 2.0);

    // A holder of the token completing a request the gateway never saw: a
    // no-op, counted.
    let mut client =
        seckill_proto::pb::callback_client::CallbackClient::connect(format!("http://{}", gw.grpc))
            .await
            .unwrap();
    let forged = || seckill_proto::pb::CompleteRequest {
        results: vec![seckill_proto::pb::RequestResult {
            request_id: "g.never-issued".into(),
            sale_id: "g".into(),
            user_id: "x".into(),
            outcome: seckill_proto::pb::Outcome::Success as i32,
            order_id: "o-1".into(),
            quantity: 1,
            reason: String::new(),
            traceparent: String::new(),
        }],
    };
    let mut call = tonic::Request::new(forged());
    call.metadata_mut().insert(
        "authorization",
        format!("Bearer {CALLBACK_TOKEN}").parse().unwrap(),
    );
    let reply = client.complete(call).await.unwrap().into_inner();
    assert_eq!((reply.delivered, reply.unknown), (0, 1));
    // Without the token: refused before anything is read.
    let refused = client.complete(forged()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let m = gw.metrics().await;
    assert!(sample(&m, r#"seckill_callback_total{result="unknown_request"}"#).unwrap() >= 1.0);
    // Nothing was sold by it.
    assert_eq!(sold(&gw, "g").await, (1, 1));
    gw.stop().await;
}

#[tokio::test]
async fn a_cancelled_order_sells_its_units_again_once() {
    use hyper::Method;
    let gw = TestGateway::start().await;
    gw.open_sale("cxl", 1, 1).await;
    let (s, v) = gw.buy("cxl", "u1").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let order = v["order_id"].as_str().unwrap().to_string();
    assert_eq!(gw.buy("cxl", "u2").await.0, StatusCode::GONE, "sold out");

    let path = format!("/admin/v1/orders/{order}/cancel");
    let cancelled_at = unix_now();
    let (s, first) = admin(&gw, Method::POST, &path, Value::Null).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(first["status"], "cancelled");
    assert_eq!(first["order_id"], order.as_str());
    assert_eq!(first["user_id"], "u1");
    let (s, again) = admin(&gw, Method::POST, &path, Value::Null).await;
    assert_eq!(
        (s, &again),
        (StatusCode::OK, &first),
        "a repeat is the same"
    );
    assert_eq!(sold(&gw, "cxl").await, (0, 1));

    // The sold-out flag is gone: the unit sells again, once.
    let bought = process_wait(|| async { gw.buy("cxl", "u2").await.0 == StatusCode::OK }).await;
    assert!(bought, "the released unit sells again");
    assert_eq!(gw.buy("cxl", "u3").await.0, StatusCode::GONE);
    // Sold out a second time: the sell-out time is the new one.
    let at = sample(
        &gw.metrics().await,
        r#"seckill_sale_sold_out_timestamp_seconds{sale="cxl"}"#,
    )
    .unwrap();
    // The gauge is in whole milliseconds: the same millisecond counts.
    assert!(at >= cancelled_at - 0.001, "{at} < {cancelled_at}");
    let (_, feed) = gw.get_authorized("/admin/v1/orders?sale_id=cxl").await;
    let events: Vec<_> = feed["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["placed", "cancelled", "placed"], "{feed}");

    let long = format!("o-cxl.{}", "a".repeat(200));
    for bad in [
        "nope",
        "o-cxl.ffff",
        "o-a%2Fb.ff",
        "o-.ff",
        long.as_str(),
        "o-nosuchsale.ab",
    ] {
        let (s, v) = admin(
            &gw,
            Method::POST,
            &format!("/admin/v1/orders/{bad}/cancel"),
            Value::Null,
        )
        .await;
        assert_eq!(
            (s, status_of(&v)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{bad}"
        );
    }
    let (s, _) = admin(&gw, Method::GET, &path, Value::Null).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    let (s, _, _) = gw.request(Method::POST, gw.admin, &path, &[], "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "cancel needs the admin token");
    gw.stop().await;
}

/// Polls an async check for up to 3 s.
async fn process_wait<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..60 {
        if check().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}
