//! The token-bucket suite: rate and capacity with real time and generous
//! bounds; a bucket full from its start; fair admission's tickets in
//! arrival order; for Redis, one generator per sale and its failover, a
//! generator quiet while its sale is sold out, and tickets shared by every
//! process.

use std::sync::Arc;
use std::time::{Duration, Instant};

use seckill_redis::keys;
use token_bucket::{BucketConfig, TokenBucket};

use super::harness::{sale_id, Env};

crate::each_backend!(
    issues_at_the_configured_rate,
    capacity_caps_the_burst,
    empty_bucket_refuses_at_once,
    an_opened_bucket_is_full,
    tickets_get_tokens_in_arrival_order,
    tickets_are_one_sequence_across_processes,
    one_generator_and_failover,
    dead_generator_is_replaced,
    a_quiet_generator_sends_nothing,
    a_full_bucket_is_one_look_a_tick,
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
    b.open().await.unwrap();
    assert!(
        b.try_take().await.unwrap(),
        "a new bucket holds its capacity"
    );
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

async fn a_quiet_generator_sends_nothing(env: Env) {
    if !env.is_redis() {
        return;
    }
    let b = env
        .store()
        .buckets()
        .start(&sale_id("quiet"), config(1000, 100));
    let until = Instant::now() + Duration::from_secs(3);
    while !b.is_generating() {
        assert!(Instant::now() < until, "nobody took the lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Sold out: after the tick in flight, not one command.
    b.quiet(true);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let conn = env.store().conn();
    let before = conn.round_trips();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        conn.round_trips() - before,
        0,
        "a quiet generator ticked Redis"
    );
    assert!(!b.is_generating(), "a quiet generator claims the lease");
    // Selling again: the generator is back, tokens with it.
    b.quiet(false);
    let b: Arc<dyn TokenBucket> = Arc::new(b);
    warm_up(&b).await;
    let n = drain_for(std::slice::from_ref(&b), Duration::from_millis(500)).await;
    assert!((250..=750).contains(&n), "{n} tokens in 500 ms at 1000/s");
}

/// Commands Redis ran so far, those inside scripts included.
fn commands(server: &seckill_test_support::RedisServer) -> u64 {
    let info = match server.command(&["INFO", "stats"]) {
        Ok(seckill_test_support::Reply::Bulk(Some(info))) => info,
        other => panic!("INFO: {other:?}"),
    };
    info.lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_commands_processed")
}

async fn a_full_bucket_is_one_look_a_tick(env: Env) {
    // One server, so that its counters are all the commands.
    let Some(server) = env.server.as_ref() else {
        return;
    };
    let b = env
        .store()
        .buckets()
        .start(&sale_id("idle"), config(1000, 200));
    let until = Instant::now() + Duration::from_secs(3);
    while b.available() < 200 {
        assert!(Instant::now() < until, "the bucket did not fill");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Full: about 50 ticks in 500 ms, each one LLEN, and at most one
    // script tick renewing the lease (about ten commands). A tick that ran
    // the script each time would be about 450.
    let before = commands(server);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spent = commands(server) - before;
    assert!(spent <= 150, "{spent} commands in 500 ms for a full bucket");
    assert!(b.is_generating(), "the holder keeps its lease");
    // Room again: the rate, not a refill to the capacity at once (a clock
    // left behind while the list was full would count a second due).
    let b: Arc<dyn TokenBucket> = Arc::new(b);
    let started = Instant::now();
    let mut taken = 0;
    while b.try_take().await.unwrap() {
        taken += 1;
    }
    let n = drain_for(std::slice::from_ref(&b), Duration::from_millis(500)).await;
    let extra = started.elapsed().as_millis() as u64 + 40;
    assert!(
        taken + n <= 200 + extra,
        "{taken} + {n} tokens within {:?} at 1000/s, capacity 200",
        started.elapsed()
    );
    assert!(n >= 250, "{n} tokens in 500 ms at 1000/s");
}

async fn an_opened_bucket_is_full(env: Env) {
    // One token a second: only the opening fill serves a burst at once.
    let b = env.buckets.bucket(&sale_id("full"), config(1, 20));
    b.open().await.unwrap();
    let mut burst = 0;
    while b.try_take().await.unwrap() {
        burst += 1;
        assert!(burst <= 100, "the bucket never ran dry");
    }
    assert!((20..=21).contains(&burst), "burst {burst} (capacity 20)");
    // Opening again (another gateway, a restart) adds nothing.
    b.open().await.unwrap();
    assert!(!b.try_take().await.unwrap());
}

async fn tickets_get_tokens_in_arrival_order(env: Env) {
    let b = env.buckets.bucket(&sale_id("line"), config(20, 2));
    b.open().await.unwrap();
    // The full bucket serves the first two at once.
    let first = b.join().await.unwrap();
    let second = b.join().await.unwrap();
    assert!(first.served() && second.served(), "{first:?} {second:?}");
    let mut waiting = Vec::new();
    for _ in 0..5 {
        waiting.push(b.join().await.unwrap());
    }
    let tickets: Vec<u64> = waiting.iter().map(|p| p.ticket).collect();
    assert!(tickets.windows(2).all(|w| w[1] == w[0] + 1), "{tickets:?}");
    assert_eq!(tickets[0], second.ticket + 1);
    let last = *tickets.last().unwrap();
    // Five tokens at 20/s come within about 250 ms, to the tickets in order.
    let until = Instant::now() + Duration::from_secs(3);
    let mut seen = 0;
    loop {
        let turns = b.turn().await.unwrap();
        assert!(turns.served >= seen, "served went back");
        assert!(turns.served <= turns.issued);
        seen = turns.served;
        if turns.served >= last {
            break;
        }
        assert!(Instant::now() < until, "tickets not served: {turns:?}");
        tokio::time::sleep(b.turn_interval()).await;
    }
}

async fn tickets_are_one_sequence_across_processes(env: Env) {
    if !env.is_redis() {
        return;
    }
    let sale = sale_id("shared-line");
    let other = env.second_store().await;
    let a: Arc<dyn TokenBucket> = Arc::new(env.store().buckets().start(&sale, config(1, 1)));
    let b: Arc<dyn TokenBucket> = Arc::new(other.buckets().start(&sale, config(1, 1)));
    // A crowd at both: every ticket once, and arrivals at one process
    // share round trips.
    let conn = env.store().conn();
    let before = conn.round_trips();
    let crowd: Vec<_> = (0..400)
        .map(|i| {
            let bucket = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { bucket.join().await.unwrap().ticket })
        })
        .collect();
    let mut tickets = Vec::new();
    for c in crowd {
        tickets.push(c.await.unwrap());
    }
    let trips = conn.round_trips() - before;
    tickets.sort_unstable();
    let first = tickets[0];
    assert_eq!(
        tickets,
        (first..first + 400).collect::<Vec<_>>(),
        "tickets are distinct and gapless"
    );
    assert!(trips < 200, "{trips} round trips for 200 tickets");
}
