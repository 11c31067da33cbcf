//! Redis going away and coming back: errors come fast (never a hang), and
//! service resumes by itself, from the append-only file or from empty.
//! Also the hot path's Redis round trips per admitted purchase.

use std::sync::Arc;
use std::time::{Duration, Instant};

use seckill_inventory::{Admission, Inventory, InventoryError, Outcome};
use seckill_queue::{QueueError, RequestQueue, Ticket};
use seckill_redis::RedisStore;
use seckill_stores::Stores;
use seckill_test_support::Options;
use token_bucket::BucketConfig;

use super::harness::{connect, purchase, sale_id, spec, Env, Kind};

const FAST: Duration = Duration::from_secs(2);

fn ticket(sale: &str, user: &str) -> Ticket {
    Ticket {
        purchase: purchase(sale, user, 1),
        reply_to: "127.0.0.1:50051".into(),
        enqueued_at_ms: seckill_inventory::now_ms(),
        trace: None,
    }
}

/// Retries `f` until it succeeds, for up to five seconds.
async fn eventually<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    mut f: impl FnMut() -> F,
) -> T {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > until => panic!("did not recover: {e:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_fast_then_recovers_from_the_aof() {
    let mut env = Env::with_options(
        Kind::Single,
        Options {
            appendonly: true,
            cluster: false,
        },
    )
    .await;
    let (inv, q) = (env.inventory.clone(), env.queue.clone());
    let bucket = env.buckets.bucket(
        &sale_id("down"),
        BucketConfig {
            rate_per_sec: 10,
            capacity: 10,
        },
    );
    let sale = sale_id("down");
    inv.put_sale(spec(&sale, 10, 1)).await.unwrap();
    q.open(&sale, 100).await.unwrap();
    let bought = inv.purchase(&[purchase(&sale, "u0", 1)]).await.unwrap();
    assert!(matches!(bought[0].outcome, Outcome::Success { .. }));
    q.enqueue(ticket(&sale, "pending")).await.unwrap();
    let taken = q.next_batch(10, Duration::from_millis(200)).await.unwrap();
    assert_eq!(taken.len(), 1);

    env.server.as_mut().unwrap().stop();
    let started = Instant::now();
    assert!(matches!(
        inv.ping().await,
        Err(InventoryError::Unavailable(_))
    ));
    assert!(matches!(
        inv.purchase(&[purchase(&sale, "u1", 1)]).await,
        Err(InventoryError::Unavailable(_))
    ));
    assert!(inv.sale(&sale).await.is_err());
    assert!(matches!(
        q.enqueue(ticket(&sale, "u2")).await,
        Err(QueueError::Unavailable(_))
    ));
    assert!(q.next_batch(10, Duration::from_millis(100)).await.is_err());
    assert!(bucket.try_take().await.is_err());
    assert!(
        started.elapsed() < 6 * FAST,
        "errors took {:?}",
        started.elapsed()
    );
    for _ in 0..3 {
        let t = Instant::now();
        assert!(inv.ping().await.is_err());
        assert!(t.elapsed() < FAST, "one failed call took {:?}", t.elapsed());
    }

    env.server.as_mut().unwrap().restart();
    eventually(|| inv.ping()).await;
    eventually(|| q.ping()).await;
    // The data came back from the append-only file.
    let status = eventually(|| inv.sale(&sale)).await.unwrap();
    assert_eq!(status.sold, 1);
    // The entry taken before the outage is still pending and is reclaimed.
    let until = Instant::now() + Duration::from_secs(5);
    let again = loop {
        let got = q.next_batch(10, Duration::from_millis(100)).await;
        if let Ok(got) = got {
            if !got.is_empty() {
                break got;
            }
        }
        assert!(Instant::now() < until, "pending entry not redelivered");
    };
    assert_eq!(again[0].entry_id, taken[0].entry_id);
    assert_eq!(again[0].deliveries, 2);
    q.ack(&again).await.unwrap();
    let d = inv.purchase(&[purchase(&sale, "u3", 1)]).await.unwrap();
    assert!(matches!(d[0].outcome, Outcome::Success { .. }));
    // The generator resumes as well.
    let until = Instant::now() + Duration::from_secs(5);
    while !bucket.try_take().await.unwrap_or(false) {
        assert!(Instant::now() < until, "no tokens after recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_redis_comes_back_empty() {
    let mut env = Env::new(Kind::Single).await;
    let (inv, q) = (env.inventory.clone(), env.queue.clone());
    let sale = sale_id("empty");
    inv.put_sale(spec(&sale, 10, 1)).await.unwrap();
    q.open(&sale, 100).await.unwrap();
    q.enqueue(ticket(&sale, "lost")).await.unwrap();
    // Restarted without persistence: everything is gone.
    env.server.as_mut().unwrap().restart();
    eventually(|| inv.ping()).await;
    assert!(eventually(|| inv.sale(&sale)).await.is_none());
    assert!(matches!(
        q.enqueue(ticket(&sale, "x")).await,
        Err(QueueError::UnknownSale(_))
    ));
    assert!(q
        .next_batch(10, Duration::from_millis(50))
        .await
        .unwrap()
        .is_empty());
    // The sale is created again and everything works.
    inv.put_sale(spec(&sale, 10, 1)).await.unwrap();
    q.open(&sale, 100).await.unwrap();
    q.enqueue(ticket(&sale, "new")).await.unwrap();
    let got = q.next_batch(10, Duration::from_millis(500)).await.unwrap();
    assert_eq!(got.len(), 1);
    let d = inv
        .purchase(&[got[0].ticket.purchase.clone()])
        .await
        .unwrap();
    assert!(matches!(d[0].outcome, Outcome::Success { .. }));
    q.ack(&got).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_to_nothing_fails_fast() {
    let started = Instant::now();
    let r = RedisStore::connect_with(
        &["redis://127.0.0.1:1/".to_string()],
        false,
        super::harness::test_config("none"),
    )
    .await;
    assert!(r.is_err());
    assert!(started.elapsed() < FAST);
}

/// Round trips per admitted purchase on the hot path, counted by the
/// connection: token (amortised by `LPOP` batches), the one admit-and-enqueue
/// script, and the service's read, purchase script and acknowledgement
/// (amortised by batches). The generator runs on another connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_per_admitted_purchase() {
    let env = Env::new(Kind::Single).await;
    let url = env.server.as_ref().unwrap().url();
    let sale = sale_id("rt");
    let generator_side = connect(std::slice::from_ref(&url), false, &env.namespace).await;
    let config = BucketConfig {
        rate_per_sec: 20_000,
        capacity: 1000,
    };
    let generator = generator_side.buckets().start(&sale, config);
    let gateway = Arc::new(Stores::redis(
        connect(std::slice::from_ref(&url), false, &env.namespace).await,
    ));
    let service: RedisStore = connect(&[url], false, &env.namespace).await;
    let (g_inv, g_queue) = (gateway.inventory.clone(), gateway.queue.clone());
    let g_conn = gateway.redis.as_ref().unwrap().conn();
    let s_inv = service.inventory();
    let s_queue = service.queue();
    g_inv.put_sale(spec(&sale, 1_000_000, 1)).await.unwrap();
    g_queue.open(&sale, 100_000).await.unwrap();
    while !generator.is_generating() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bucket = gateway.buckets.bucket(&sale, config);

    const N: usize = 2000;
    let server = env.server.as_ref().unwrap();
    let stats0 = top_level_calls(server);
    let (g0, s0) = (g_conn.round_trips(), service.conn().round_trips());
    let started = Instant::now();
    let mut admitted = tokio::task::JoinSet::new();
    for t in 0..50 {
        let (bucket, stores, sale) = (bucket.clone(), gateway.clone(), sale.clone());
        admitted.spawn(async move {
            for i in 0..N / 50 {
                while !bucket.try_take().await.unwrap() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let t = ticket(&sale, &format!("u{t}-{i}"));
                let admitted = stores.admit_and_enqueue(&t).await.unwrap();
                assert_eq!(admitted, Admission::Admitted);
            }
        });
    }
    let mut decided = 0;
    while decided < N {
        let batch = s_queue
            .next_batch(64, Duration::from_millis(100))
            .await
            .unwrap();
        if batch.is_empty() {
            continue;
        }
        let ps: Vec<_> = batch.iter().map(|d| d.ticket.purchase.clone()).collect();
        let ds = s_inv.purchase(&ps).await.unwrap();
        assert!(ds
            .iter()
            .all(|d| matches!(d.outcome, Outcome::Success { .. })));
        s_queue.ack(&batch).await.unwrap();
        decided += batch.len();
    }
    while admitted.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let g = g_conn.round_trips() - g0;
    let s = service.conn().round_trips() - s0;
    let per = (g + s) as f64 / N as f64;
    let stats1 = top_level_calls(server);
    for (name, before) in &stats0 {
        let after = stats1
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| *c);
        eprintln!(
            "  INFO commandstats {name}: {:.3} per purchase",
            (after - before) as f64 / N as f64
        );
    }
    eprintln!(
        "round trips per admitted purchase: {per:.2} (gateway {:.2}, service {:.2}); {N} purchases in {elapsed:?}",
        g as f64 / N as f64,
        s as f64 / N as f64,
    );
    // The gateway's part is one script per purchase (two before the
    // admission and the enqueue were one) plus the amortised token takes.
    let at_gateway = g as f64 / N as f64;
    assert!(
        at_gateway <= 1.5,
        "{at_gateway} gateway round trips per purchase"
    );
    assert!(per <= 2.5, "{per} round trips per purchase");
    assert_eq!(s_inv.orders(&sale).await.unwrap().len(), N);
}

/// Calls of the commands the hot path sends at top level (EVALSHA includes
/// the generator's ticks), from `INFO commandstats`.
fn top_level_calls(server: &seckill_test_support::RedisServer) -> Vec<(String, u64)> {
    let info = match server.command(&["INFO", "commandstats"]) {
        Ok(seckill_test_support::Reply::Bulk(Some(info))) => info,
        other => panic!("INFO: {other:?}"),
    };
    ["evalsha", "lpop", "xreadgroup"]
        .iter()
        .map(|name| {
            let prefix = format!("cmdstat_{name}:calls=");
            let calls = info
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (name.to_string(), calls)
        })
        .collect()
}
