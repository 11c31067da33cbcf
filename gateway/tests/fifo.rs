//! Fair admission (`fifo`) and the clean first second, embedded mode, over
//! real HTTP: buyers wait in arrival order, a wait too long is refused at
//! once with an honest estimate, a sell-out answers the whole line, and a
//! new sale serves its full bucket from its first moment.

mod support;

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use hyper::header::HeaderMap;
use hyper::StatusCode;
use serde_json::{json, Value};
use support::{sample, Setup, TestGateway};

/// A gateway whose requests may wait a few seconds.
async fn patient_gateway() -> TestGateway {
    let mut setup = Setup::default();
    setup.config.request_timeout = Duration::from_secs(10);
    TestGateway::with(setup).await
}

/// Buys concurrently as `users`, all sent at once; the answers in order.
async fn buy_all(
    gw: &TestGateway,
    sale: &str,
    users: &[String],
) -> Vec<(StatusCode, HeaderMap, Value)> {
    let bodies: Vec<String> = users
        .iter()
        .map(|u| format!(r#"{{"user_id":"{u}"}}"#))
        .collect();
    join_all(bodies.iter().map(|b| gw.purchase(sale, b)).collect()).await
}

/// Runs `futures` together on this task; their outputs in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (slot, done) in futures.iter_mut().zip(out.iter_mut()) {
            if let Some(f) = slot {
                if let Poll::Ready(v) = f.as_mut().poll(cx) {
                    *done = Some(v);
                    *slot = None;
                }
            }
        }
        if futures.iter().all(Option::is_none) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    out.into_iter()
        .map(|v| v.expect("every future ran"))
        .collect()
}

#[tokio::test]
async fn a_sale_created_active_sells_at_once() {
    let gw = TestGateway::start().await;
    // A slow generator: only the full bucket can serve the first buyers.
    let (s, v) = gw
        .put_sale(
            "fresh",
            json!({"stock": 10, "token_rate": 1, "token_capacity": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    for u in ["a", "b", "c"] {
        let (s, v) = gw.buy("fresh", u).await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn buyers_without_a_token_wait_in_order_and_say_how_long() {
    let gw = patient_gateway().await;
    let (s, v) = gw
        .put_sale(
            "line",
            json!({"stock": 100, "token_rate": 20, "token_capacity": 1,
                   "admission": "fifo", "max_wait_ms": 5000}),
        )
        .await;
    assert_eq!(
        (s, v["admission"].as_str()),
        (StatusCode::CREATED, Some("fifo")),
        "{v}"
    );
    assert_eq!(gw.buy("line", "first").await.0, StatusCode::OK);
    let users: Vec<String> = (0..8).map(|i| format!("w{i}")).collect();
    let answers = buy_all(&gw, "line", &users).await;
    for (s, _, v) in &answers {
        assert_eq!(*s, StatusCode::OK, "{v}");
        assert!(v["waited_ms"].as_u64().is_some(), "{v}");
    }
    // Eight tokens at 20/s: the last one waited about 400 ms.
    let longest = answers
        .iter()
        .map(|(_, _, v)| v["waited_ms"].as_u64().unwrap())
        .max();
    assert!(longest.unwrap() >= 200, "{answers:?}");
    let m = gw.metrics().await;
    assert_eq!(
        sample(&m, r#"seckill_waiting_buyers{sale="line"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"seckill_gateway_wait_duration_seconds_count{sale="line"}"#
        ),
        Some(8.0),
        "{m}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_wait_too_long_is_refused_at_once_with_an_honest_retry_after() {
    let gw = patient_gateway().await;
    let rate = 4u64;
    let (s, v) = gw
        .put_sale(
            "honest",
            json!({"stock": 100, "token_rate": rate, "token_capacity": 1,
                   "admission": "fifo", "max_wait_ms": 2500}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(gw.buy("honest", "first").await.0, StatusCode::OK);
    // Ten places fit within 2.5 s at 4/s; the four after them do not.
    let users: Vec<String> = (0..14).map(|i| format!("h{i}")).collect();
    let answers = buy_all(&gw, "honest", &users).await;
    let served: Vec<&Value> = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::OK)
        .map(|(_, _, v)| v)
        .collect();
    let refused: Vec<_> = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    assert_eq!(served.len() + refused.len(), 14, "{answers:?}");
    assert!((3..=5).contains(&refused.len()), "{answers:?}");
    // When the last one served got its token, and so when each refused
    // buyer's token would have come: one more every 1/rate.
    let last_served_ms = served
        .iter()
        .map(|v| v["waited_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    let last_position = served.len() as u64;
    for (_, headers, v) in refused {
        assert_eq!(v["reason"], "wait_too_long", "{v}");
        let position = v["position"].as_u64().unwrap();
        let eta_ms = v["eta_ms"].as_u64().unwrap();
        assert!(position > last_position, "{v}");
        let actual_ms = (last_served_ms + (position - last_position) * 1000 / rate) as f64;
        let retry_after: f64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        for (what, told_ms) in [
            ("eta_ms", eta_ms as f64),
            ("Retry-After", retry_after * 1000.0),
        ] {
            let off = (told_ms - actual_ms).abs() / actual_ms;
            assert!(
                off <= 0.2,
                "{what} says {told_ms} ms, the token came after {actual_ms} ms: {v}"
            );
        }
    }
    let m = gw.metrics().await;
    let refusals = sample(
        &m,
        r#"seckill_gateway_refusals_total{sale="honest",reason="wait_too_long"}"#,
    );
    assert!(refusals.is_some_and(|n| n >= 3.0), "{m}");
    gw.stop().await;
}

#[tokio::test]
async fn a_sell_out_answers_the_whole_line_at_once() {
    let gw = patient_gateway().await;
    let (s, v) = gw
        .put_sale(
            "last",
            json!({"stock": 3, "token_rate": 2, "token_capacity": 1,
                   "admission": "fifo", "max_wait_ms": 8000}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(gw.buy("last", "first").await.0, StatusCode::OK);
    // Two more units, eight buyers in line: the sixth token would come
    // after 3 s, but the sell-out answers everyone still waiting then.
    let users: Vec<String> = (0..8).map(|i| format!("l{i}")).collect();
    let answers = buy_all(&gw, "last", &users).await;
    let count = |code| answers.iter().filter(|(s, _, _)| *s == code).count();
    assert_eq!(count(StatusCode::OK), 2, "{answers:?}");
    assert_eq!(count(StatusCode::GONE), 6, "{answers:?}");
    let m = gw.metrics().await;
    // Those told 410 never took a token: only the three buyers were queued
    // (plus at most the one whose token came as the sale sold out).
    let enqueued = sample(&m, r#"seckill_queue_enqueued_total{sale="last"}"#).unwrap();
    assert!(enqueued <= 4.0, "{enqueued} enqueued:\n{m}");
    assert_eq!(
        sample(&m, r#"seckill_waiting_buyers{sale="last"}"#),
        Some(0.0)
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_full_line_refuses_with_line_full() {
    let gw = patient_gateway().await;
    let (s, v) = gw
        .put_sale(
            "short",
            json!({"stock": 100, "token_rate": 10, "token_capacity": 1,
                   "admission": "fifo", "max_wait_ms": 5000, "wait_capacity": 3}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(gw.buy("short", "first").await.0, StatusCode::OK);
    let users: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    let answers = buy_all(&gw, "short", &users).await;
    let full: Vec<_> = answers
        .iter()
        .filter(|(_, _, v)| v["reason"] == "line_full")
        .collect();
    assert!(!full.is_empty(), "{answers:?}");
    for (s, h, v) in full {
        assert_eq!(*s, StatusCode::TOO_MANY_REQUESTS);
        assert!(v["position"].as_u64().unwrap() > 3, "{v}");
        assert!(h.contains_key("retry-after"));
    }
    gw.stop().await;
}

#[tokio::test]
async fn admission_settings_are_checked() {
    let gw = TestGateway::start().await;
    for bad in [
        json!({"stock": 1, "admission": "lottery"}),
        json!({"stock": 1, "admission": "fifo", "max_wait_ms": 0}),
        json!({"stock": 1, "admission": "fifo", "max_wait_ms": 600001}),
        json!({"stock": 1, "admission": "fifo", "wait_capacity": 0}),
        json!({"stock": 1, "admission": 7}),
    ] {
        let (s, v) = gw.put_sale("checked", bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let (s, v) = gw.put_sale("checked", json!({"stock": 1})).await;
    assert_eq!(
        (s, v["admission"].as_str()),
        (StatusCode::CREATED, Some("immediate"))
    );
    let (s, _, v) = gw
        .request(
            hyper::Method::PATCH,
            gw.admin,
            "/admin/v1/sales/checked",
            &[("authorization", &format!("Bearer {}", support::TOKEN))],
            r#"{"admission":"fifo","max_wait_ms":1500,"wait_capacity":50}"#,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["admission"].as_str(),
            v["max_wait_ms"].as_u64(),
            v["wait_capacity"].as_u64()
        ),
        (Some("fifo"), Some(1500), Some(50))
    );
    gw.stop().await;
}
