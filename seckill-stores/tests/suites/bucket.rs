//! The token-bucket suite: rate and capacity with real time and generous
//! bounds; for Redis, one generator per sale and its failover.

use std::sync::Arc;
use std::time::{Duration, Instant};

use seckill_redis::keys;
use token_bucket::{BucketConfig, TokenBucket};

use super::harness::{sale_id, Env};

crate::each_backend!(
    issues_at_the_configured_rate,
    capacity_caps_the_burst,
    empty_bucket_refuses_at_once,
    one_generator_and_failover,
    dead_generator_is_replaced,
);

fn config(rate: u32, capacity: u32) -> BucketConfig {
    BucketConfig {
        rate_per_sec: rate,
        capacity,
    }
}

/// Takes tokens as they come for `d`; returns how many.
async fn drain_for(buckets: &[Arc<dyn TokenBucket>], d: Duration) -> u64 {
    let until = Instant::now() + d;
    let mut taken = 0;
    while Instant::now() < until {
        for b in buckets {
            while b.try_take().await.unwrap() {
                taken += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    taken
}

/// Waits until something generated; empties the bucket.
async fn warm_up(b: &Arc<dyn TokenBucket>) {
    let until = Instant::now() + Duration::from_secs(3);
    while !b.try_take().await.unwrap() {
        assert!(Instant::now() < until, "no token within 3 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    while b.try_take().await.unwrap() {}
}

async fn issues_at_the_configured_rate(env: Env) {
    let b = env.buckets.bucket(&sale_id("rate"), config(100, 1000));
    warm_up(&b).await;
    let n = drain_for(std::slice::from_ref(&b), Duration::from_secs(1)).await;
    assert!((60..=140).contains(&n), "100/s over 1 s gave {n}");
}

async fn capacity_caps_the_burst(env: Env) {
    let b = env.buckets.bucket(&sale_id("cap"), config(1000, 50));
    warm_up(&b).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(b.available() >= 30, "available {}", b.available());
    let started = Instant::now();
    let mut burst = 0;
    while b.try_take().await.unwrap() {
        burst += 1;
        assert!(burst < 1000, "the bucket never ran dry");
    }
    // The capacity plus what arrived while draining.
    let extra = (started.elapsed().as_millis() as u64) + 20;
    assert!(
        (30..=50 + extra).contains(&burst),
        "burst {burst} (capacity 50)"
    );
}

async fn empty_bucket_refuses_at_once(env: Env) {
    let b = env.buckets.bucket(&sale_id("empty"), config(1, 1));
    let started = Instant::now();
    assert!(!b.try_take().await.unwrap());
    assert!(started.elapsed() < Duration::from_millis(500));
    // The refusal is known without I/O right after it.
    assert!(
        b.known_empty(),
        "a refused take leaves the bucket known empty"
    );
    let full = env.buckets.bucket(&sale_id("full"), config(1000, 100));
    let until = Instant::now() + Duration::from_secs(3);
    while !full.try_take().await.unwrap() {
        assert!(Instant::now() < until, "no token within 3 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !full.known_empty(),
        "a bucket that just gave a token is not known empty"
    );
    if !env.is_redis() {
        return;
    }
    // A crowd on an empty bucket is refused locally: one look at Redis per
    // generator tick, not one per buyer.
    let conn = env.store().conn();
    let before = conn.round_trips();
    let crowd: Vec<_> = (0..1000)
        .map(|_| {
            let b = b.clone();
            tokio::spawn(async move { b.try_take().await.unwrap() })
        })
        .collect();
    for c in crowd {
        assert!(!c.await.unwrap());
    }
    let trips = conn.round_trips() - before;
    assert!(trips < 100, "{trips} round trips for 1000 refusals");
}

async fn one_generator_and_failover(env: Env) {
    if !env.is_redis() {
        return;
    }
    let sale = sale_id("lease");
    let other = env.second_store().await;
    let a = env.store().buckets().start(&sale, config(100, 1000));
    let b = other.buckets().start(&sale, config(100, 1000));
    let until = Instant::now() + Duration::from_secs(3);
    while !(a.is_generating() || b.is_generating()) {
        assert!(Instant::now() < until, "nobody took the lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        a.is_generating() != b.is_generating(),
        "exactly one generator"
    );
    let (holder, standby) = if a.is_generating() { (a, b) } else { (b, a) };
    let standby: Arc<dyn TokenBucket> = Arc::new(standby);
    let holder: Arc<dyn TokenBucket> = Arc::new(holder);
    warm_up(&standby).await;
    // Two handles, one rate.
    let n = drain_for(&[holder.clone(), standby.clone()], Duration::from_secs(1)).await;
    assert!((60..=140).contains(&n), "two handles gave {n}/s, not 100/s");

    drop(holder);
    let started = Instant::now();
    warm_up(&standby).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "takeover took {:?}",
        started.elapsed()
    );
    let n = drain_for(std::slice::from_ref(&standby), Duration::from_secs(1)).await;
    assert!((60..=140).contains(&n), "after failover {n}/s, not 100/s");
}

async fn dead_generator_is_replaced(env: Env) {
    if !env.is_redis() {
        return;
    }
    let sale = sale_id("ghost");
    // A holder that died without releasing: its lease runs out by itself.
    let _: () = redis::cmd("SET")
        .arg(keys::generator(&sale))
        .arg("dead-instance")
        .arg("PX")
        .arg(1200)
        .query_async(&mut env.store().conn())
        .await
        .unwrap();
    let started = Instant::now();
    let b = env.store().buckets().start(&sale, config(100, 100));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!b.is_generating(), "took a live lease");
    while !b.is_generating() {
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "dead generator not replaced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(1100));
    let b: Arc<dyn TokenBucket> = Arc::new(b);
    warm_up(&b).await;
}
