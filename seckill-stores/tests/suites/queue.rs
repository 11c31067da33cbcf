//! The request-queue suite: bounds, delivery, acknowledgement, closing;
//! and for Redis, redelivery by reclaim, dead letters and a lost group.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use seckill_inventory::Admission;
use seckill_queue::{Delivery, QueueError, RequestQueue, Ticket};
use seckill_redis::keys;

use super::harness::{purchase, sale_id, test_config, Env};

crate::each_backend!(
    bounded_fifo_and_ack,
    closed_queue_drains,
    empty_queue_waits_then_returns,
    reclaims_a_dead_consumers_entries,
    recovers_a_lost_group,
    a_new_queue_is_read_at_once,
    idle_queues_are_read_sparingly,
    a_late_enqueue_queues_nothing,
    admitting_and_queueing_is_one_step_or_nothing,
    concurrent_admissions_keep_the_bound_and_the_keys,
);

fn ticket(sale: &str, user: &str) -> Ticket {
    Ticket {
        purchase: purchase(sale, user, 1),
        reply_to: "127.0.0.1:50051".into(),
        enqueued_at_ms: seckill_inventory::now_ms(),
        trace: None,
    }
}

/// Takes until `n` deliveries arrived or two seconds passed.
async fn take(q: &dyn RequestQueue, n: usize) -> Vec<Delivery> {
    let until = Instant::now() + Duration::from_secs(2);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < until {
        out.extend(
            q.next_batch(n - out.len(), Duration::from_millis(100))
                .await
                .unwrap(),
        );
    }
    out
}

async fn bounded_fifo_and_ack(env: Env) {
    let q = &env.queue;
    let sale = sale_id("q");
    q.open(&sale, 3).await.unwrap();
    let tickets: Vec<Ticket> = (0..3).map(|i| ticket(&sale, &format!("u{i}"))).collect();
    for t in &tickets {
        q.enqueue(t.clone()).await.unwrap();
    }
    assert!(matches!(
        q.enqueue(ticket(&sale, "over")).await,
        Err(QueueError::Full(s)) if s == sale
    ));
    assert_eq!(q.depth(&sale).await.unwrap(), 3);
    assert!(matches!(
        q.enqueue(ticket(&sale_id("nosuch"), "u")).await,
        Err(QueueError::UnknownSale(_))
    ));

    let got = take(&**q, 3).await;
    assert_eq!(
        got.iter().map(|d| d.ticket.clone()).collect::<Vec<_>>(),
        tickets,
        "first in, first out"
    );
    assert!(got.iter().all(|d| d.deliveries == 1));
    q.ack(&got).await.unwrap();
    assert_eq!(q.depth(&sale).await.unwrap(), 0);
    // Acknowledged entries free their room.
    for i in 0..3 {
        q.enqueue(ticket(&sale, &format!("v{i}"))).await.unwrap();
    }
    // A larger capacity applies to an open queue.
    q.open(&sale, 5).await.unwrap();
    q.enqueue(ticket(&sale, "w")).await.unwrap();
    let got = take(&**q, 4).await;
    assert_eq!(got.len(), 4);
    q.ack(&got).await.unwrap();
    q.ping().await.unwrap();
}

async fn closed_queue_drains(env: Env) {
    let q = &env.queue;
    let sale = sale_id("qc");
    q.open(&sale, 10).await.unwrap();
    q.enqueue(ticket(&sale, "a")).await.unwrap();
    q.enqueue(ticket(&sale, "b")).await.unwrap();
    q.close(&sale).await.unwrap();
    assert!(matches!(
        q.enqueue(ticket(&sale, "c")).await,
        Err(QueueError::UnknownSale(_))
    ));
    // Entries already queued are still delivered.
    let got = take(&**q, 2).await;
    assert_eq!(got.len(), 2);
    q.ack(&got).await.unwrap();
    // Reopening accepts again.
    q.open(&sale, 10).await.unwrap();
    q.enqueue(ticket(&sale, "d")).await.unwrap();
    let got = take(&**q, 1).await;
    assert_eq!(got[0].ticket.purchase.user_id, "d");
    q.ack(&got).await.unwrap();
}

async fn empty_queue_waits_then_returns(env: Env) {
    let q = &env.queue;
    let sale = sale_id("qe");
    q.open(&sale, 10).await.unwrap();
    let started = Instant::now();
    let got = q.next_batch(10, Duration::from_millis(200)).await.unwrap();
    let waited = started.elapsed();
    assert!(got.is_empty());
    assert!(waited >= Duration::from_millis(150), "waited {waited:?}");
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");
    // An entry enqueued while a consumer waits is picked up.
    let q2 = q.clone();
    let s2 = sale.clone();
    let waiter = tokio::spawn(async move { take(&*q2, 1).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    q.enqueue(ticket(&sale, "late")).await.unwrap();
    let got = waiter.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].ticket.purchase.sale_id, s2);
    q.ack(&got).await.unwrap();
}

async fn reclaims_a_dead_consumers_entries(env: Env) {
    if !env.is_redis() {
        // One process cannot lose a consumer without the queue itself.
        return;
    }
    let sale = sale_id("qr");
    let dead = env.second_store().await.queue();
    let alive = env.store().queue();
    dead.open(&sale, 10).await.unwrap();
    for i in 0..3 {
        dead.enqueue(ticket(&sale, &format!("u{i}"))).await.unwrap();
    }
    let taken = take(&dead, 3).await;
    assert_eq!(taken.len(), 3);
    drop(dead); // never acknowledges

    // Not before the idle time...
    let early = alive
        .next_batch(10, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(early.is_empty(), "reclaimed too early: {early:?}");
    // ... but after it, with the delivery count.
    let again = take(&alive, 3).await;
    assert_eq!(again.len(), 3);
    let ids: HashSet<_> = again.iter().map(|d| d.entry_id.clone()).collect();
    assert_eq!(ids, taken.iter().map(|d| d.entry_id.clone()).collect());
    assert!(again.iter().all(|d| d.deliveries == 2), "{again:?}");
    assert_eq!(
        alive.depth(&sale).await.unwrap(),
        3,
        "pending until acknowledged"
    );

    // Failing again: the third delivery; then dead-lettered.
    let third = take(&alive, 3).await;
    assert!(third.iter().all(|d| d.deliveries == 3), "{third:?}");
    alive.dead_letter(&third).await.unwrap();
    alive.ack(&third).await.unwrap();
    assert_eq!(alive.depth(&sale).await.unwrap(), 0);
    let dlq: u64 = env
        .store()
        .conn()
        .xlen(keys::dead_letters(&sale))
        .await
        .unwrap();
    assert_eq!(dlq, 3);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(alive
        .next_batch(10, Duration::from_millis(50))
        .await
        .unwrap()
        .is_empty());
}

async fn recovers_a_lost_group(env: Env) {
    if !env.is_redis() {
        return;
    }
    let q = env.store().queue();
    let sale = sale_id("qg");
    q.open(&sale, 10).await.unwrap();
    q.enqueue(ticket(&sale, "before")).await.unwrap();
    // The stream (and its group) is lost; the queue's settings remain.
    let _: i64 = env.store().conn().del(keys::queue(&sale)).await.unwrap();
    q.enqueue(ticket(&sale, "after")).await.unwrap();
    let got = take(&q, 1).await;
    assert_eq!(got.len(), 1, "NOGROUP recreated the group");
    assert_eq!(got[0].ticket.purchase.user_id, "after");
    q.ack(&got).await.unwrap();
    assert_eq!(q.depth(&sale).await.unwrap(), 0);
}

/// A consumer that listed the queues moments ago learns of a new one from
/// the catalog event, not at its next periodic refresh (set to an hour
/// here, so only the event can announce it).
async fn a_new_queue_is_read_at_once(env: Env) {
    if !env.is_redis() {
        // The memory queue has no list of queues to refresh.
        return;
    }
    let consumer = env
        .second_store_with(seckill_redis::StoreConfig {
            queue_refresh_every: Duration::from_secs(3600),
            ..test_config(&env.namespace)
        })
        .await
        .queue();
    let idle = consumer
        .next_batch(10, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(idle.is_empty(), "{idle:?}");

    let sale = sale_id("qn");
    env.queue.open(&sale, 10).await.unwrap();
    env.queue.enqueue(ticket(&sale, "first")).await.unwrap();
    let got = take(&consumer, 1).await;
    assert_eq!(got.len(), 1, "the new queue was not read");
    assert_eq!(got[0].ticket.purchase.user_id, "first");
    consumer.ack(&got).await.unwrap();
}

/// Quiet queues cost a read per idle interval, not one per pass of every
/// worker; an entry in one of them is still delivered.
async fn idle_queues_are_read_sparingly(env: Env) {
    if !env.is_redis() {
        return;
    }
    let store = env.second_store().await;
    let q = std::sync::Arc::new(store.queue());
    let sales: Vec<String> = (0..5).map(|i| sale_id(&format!("qi{i}"))).collect();
    for sale in &sales {
        q.open(sale, 10).await.unwrap();
    }
    // Four workers polling for 1.5 s: the queues become idle.
    let poll = |q: std::sync::Arc<seckill_redis::RedisQueue>, d: Duration| async move {
        let until = Instant::now() + d;
        while Instant::now() < until {
            assert!(q
                .next_batch(10, Duration::from_millis(100))
                .await
                .unwrap()
                .is_empty());
        }
    };
    let workers = |d: Duration| {
        let q = q.clone();
        async move {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..4 {
                set.spawn(poll(q.clone(), d));
            }
            while set.join_next().await.is_some() {}
        }
    };
    workers(Duration::from_millis(1500)).await;
    let conn = store.conn();
    let before = conn.round_trips();
    workers(Duration::from_secs(1)).await;
    let reads = conn.round_trips() - before;
    // Every 50 ms for each of 5 queues is 100 a second, with the reclaim
    // passes (every 100 ms here) and the queue list besides: about 300.
    // Four workers reading 5 queues on every pass (10 ms at most) make
    // about 2,000.
    assert!(
        reads < 800,
        "{reads} round trips in a second for 5 idle queues"
    );

    q.enqueue(ticket(&sales[3], "late")).await.unwrap();
    let got = take(&*q, 1).await;
    assert_eq!(got.len(), 1, "an entry in an idle queue was not delivered");
    q.ack(&got).await.unwrap();
}

/// An enqueue that runs after the gateway gave up on it (a stalled store
/// resuming) queues nothing: its buyer was answered already.
async fn a_late_enqueue_queues_nothing(env: Env) {
    let q = &env.queue;
    let sale = sale_id("late");
    q.open(&sale, 10).await.unwrap();
    let mut late = ticket(&sale, "late");
    late.purchase.store_by_ms = seckill_inventory::now_ms() - 1;
    let refused = q.enqueue(late).await;
    assert!(
        matches!(refused, Err(QueueError::Unavailable(_))),
        "{refused:?}"
    );
    let mut in_time = ticket(&sale, "in-time");
    in_time.purchase.store_by_ms = seckill_inventory::now_ms() + 60_000;
    q.enqueue(in_time).await.unwrap();
    assert_eq!(q.depth(&sale).await.unwrap(), 1, "only the one in time");
    let got = take(&**q, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].ticket.purchase.user_id, "in-time");
    q.ack(&got).await.unwrap();
}

/// `Stores::admit_and_enqueue` (one script on Redis, two steps elsewhere):
/// the ticket queued and its request recorded pending with its key; a
/// repeat of the key is a duplicate even with the queue full; a full queue,
/// a queue not open and a late step leave nothing recorded.
async fn admitting_and_queueing_is_one_step_or_nothing(env: Env) {
    let sale = sale_id("joint");
    env.queue.open(&sale, 1).await.unwrap();
    let keyed = |user: &str, key: &str| {
        let mut t = ticket(&sale, user);
        t.purchase.idempotency_key = Some(key.into());
        t
    };
    let nothing_of = |t: &Ticket| {
        let (inv, p) = (env.inventory.clone(), t.purchase.clone());
        async move {
            assert_eq!(inv.request(&p.request_id).await.unwrap(), None, "{p:?}");
            if let Some(key) = &p.idempotency_key {
                let held = inv.request_of_key(&p.sale_id, &p.user_id, key).await;
                assert_eq!(held.unwrap(), None, "{p:?}");
            }
        }
    };

    let first = keyed("k", "cart");
    let admitted = env.admit_and_enqueue(&first).await.unwrap();
    assert_eq!(admitted, Admission::Admitted);
    assert_eq!(env.queue.depth(&sale).await.unwrap(), 1);
    let id = &first.purchase.request_id;
    let record = env.inventory.request(id).await.unwrap().unwrap();
    assert_eq!((record.user_id.as_str(), record.outcome), ("k", None));
    assert_eq!(
        env.inventory
            .request_of_key(&sale, "k", "cart")
            .await
            .unwrap(),
        Some(id.clone())
    );

    // The queue (capacity 1) is full now: a repeat is still the first.
    let again = env.admit_and_enqueue(&keyed("k", "cart")).await.unwrap();
    assert_eq!(
        again,
        Admission::Duplicate {
            request_id: id.clone()
        }
    );
    let over = keyed("o", "cart-o");
    let refused = env.admit_and_enqueue(&over).await;
    assert!(matches!(refused, Err(QueueError::Full(_))), "{refused:?}");
    nothing_of(&over).await;

    let stray = ticket(&sale_id("none"), "s");
    let refused = env.admit_and_enqueue(&stray).await;
    assert!(
        matches!(refused, Err(QueueError::UnknownSale(_))),
        "{refused:?}"
    );
    nothing_of(&stray).await;

    let got = take(&*env.queue, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(&got[0].ticket.purchase.request_id, id);
    assert_eq!(
        got[0].ticket.purchase.idempotency_key.as_deref(),
        Some("cart")
    );
    env.queue.ack(&got).await.unwrap();

    let mut late = keyed("l", "cart-l");
    late.purchase.store_by_ms = seckill_inventory::now_ms() - 1;
    let refused = env.admit_and_enqueue(&late).await;
    assert!(
        matches!(refused, Err(QueueError::Unavailable(_))),
        "{refused:?}"
    );
    nothing_of(&late).await;
    assert_eq!(env.queue.depth(&sale).await.unwrap(), 0);
}

/// Many admissions into one sale at once (on Redis they share scripts, see
/// `seckill_redis`'s admissions): the queue's bound holds exactly, one
/// idempotency key admits one request and answers the others with it, a
/// late one is refused, and what was admitted is what is queued. On Redis,
/// fewer scripts run than requests were made.
async fn concurrent_admissions_keep_the_bound_and_the_keys(env: Env) {
    let sale = sale_id("crowd");
    const CAPACITY: usize = 150;
    env.queue.open(&sale, CAPACITY as u32).await.unwrap();
    let stores = Arc::new(env.stores.clone());
    let round_trips = |env: &Env| {
        env.redis
            .as_ref()
            .map(|r| r.conn().round_trips())
            .unwrap_or(0)
    };
    let trips0 = round_trips(&env);
    let mut tasks = tokio::task::JoinSet::new();
    // 40 buyers making 5 requests each, one after another; 20 more
    // buyers racing on one shared key each, 3 requests; 10 late ones.
    for b in 0..40 {
        let (stores, sale) = (stores.clone(), sale.clone());
        tasks.spawn(async move {
            let mut out = Vec::new();
            for i in 0..5 {
                let t = ticket(&sale, &format!("b{b}-{i}"));
                let a = stores.admit_and_enqueue(&t).await;
                out.push(("plain", t.purchase, a));
            }
            out
        });
    }
    for k in 0..20 {
        for _ in 0..3 {
            let (stores, sale) = (stores.clone(), sale.clone());
            tasks.spawn(async move {
                let mut t = ticket(&sale, &format!("k{k}"));
                t.purchase.idempotency_key = Some(format!("key{k}"));
                let a = stores.admit_and_enqueue(&t).await;
                vec![("keyed", t.purchase, a)]
            });
        }
    }
    for l in 0..10 {
        let (stores, sale) = (stores.clone(), sale.clone());
        tasks.spawn(async move {
            let mut t = ticket(&sale, &format!("l{l}"));
            t.purchase.store_by_ms = seckill_inventory::now_ms() - 1;
            let a = stores.admit_and_enqueue(&t).await;
            vec![("late", t.purchase, a)]
        });
    }
    let mut admitted = HashSet::new();
    let mut full = 0;
    let mut keyed: std::collections::HashMap<String, Vec<_>> = Default::default();
    while let Some(done) = tasks.join_next().await {
        for (kind, p, a) in done.unwrap() {
            match (kind, a) {
                ("late", a) => assert!(matches!(a, Err(QueueError::Unavailable(_))), "{a:?}"),
                (_, Ok(Admission::Admitted)) => {
                    admitted.insert(p.request_id.clone());
                    if kind == "keyed" {
                        keyed.entry(p.user_id.clone()).or_default().push(None);
                    }
                }
                ("keyed", Ok(Admission::Duplicate { request_id })) => {
                    keyed
                        .entry(p.user_id.clone())
                        .or_default()
                        .push(Some(request_id));
                }
                (_, Err(QueueError::Full(_))) => full += 1,
                (kind, a) => panic!("{kind} {p:?}: {a:?}"),
            }
        }
    }
    let trips = round_trips(&env) - trips0;
    // 200 plain + 20 keys' first requests compete for 150 places.
    assert_eq!(admitted.len(), CAPACITY, "admitted");
    assert_eq!(env.queue.depth(&sale).await.unwrap(), CAPACITY as u64);
    for (user, answers) in &keyed {
        // A key's first request is admitted or refused (full); every other
        // request of the key names an admitted one, or was refused too.
        let firsts = answers.iter().filter(|a| a.is_none()).count();
        assert!(firsts <= 1, "{user}: {answers:?}");
        for named in answers.iter().flatten() {
            assert!(
                admitted.contains(named),
                "{user} named {named}, not admitted"
            );
        }
    }
    assert_eq!(
        full + admitted.len() + keyed.values().flatten().filter(|a| a.is_some()).count(),
        200 + 60,
        "every request answered once"
    );
    let got = take(&*env.queue, CAPACITY).await;
    assert_eq!(got.len(), CAPACITY);
    for d in &got {
        let p = &d.ticket.purchase;
        assert!(admitted.contains(&p.request_id), "{p:?} was not admitted");
    }
    env.queue.ack(&got).await.unwrap();
    if env.redis.is_some() {
        eprintln!("{trips} round trips for 270 admissions");
        assert!(trips < 270, "{trips} round trips for 270 admissions");
    }
}
