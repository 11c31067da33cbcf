//! The inventory suite: purchase decisions, idempotency, deadlines,
//! records, events and concurrency.

use std::sync::Arc;
use std::time::Duration;

use seckill_inventory::{
    Admission, FeedPage, FeedQuery, Inventory, InventoryError, OrderEventKind, Outcome, Put,
    SaleEvent,
};
use tokio::sync::broadcast;

use super::harness::{purchase, sale_id, spec, Env};

crate::each_backend!(
    decisions,
    idempotent_duplicates,
    deadlines_windows_and_settle,
    catalog_and_events,
    concurrent_purchases_never_oversell,
    live_changes_keep_what_was_sold,
    removal_keeps_orders_and_the_id,
    a_late_admission_records_nothing,
    the_order_feed_resumes_without_skip_or_repeat,
    the_order_feed_waits_for_an_order,
    cancelling_releases_the_units_once,
    cancels_racing_a_spike_sell_exactly_the_released_units,
    a_decided_record_expires,
    a_batch_that_fails_midway_counts_what_it_sold,
);

/// Waits for `want` among the events (other tests' events are skipped).
async fn expect_event(rx: &mut broadcast::Receiver<SaleEvent>, want: SaleEvent) {
    let found = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match rx.recv().await {
                Ok(e) if e == want => return,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("event channel closed"),
            }
        }
    })
    .await;
    assert!(found.is_ok(), "no {want:?} event");
}

async fn decisions(env: Env) {
    let inv = &env.inventory;
    let sale = sale_id("dec");
    let mut events = inv.events();
    assert_eq!(inv.put_sale(spec(&sale, 3, 2)).await.unwrap(), Put::Created);
    let a = purchase(&sale, "u1", 1);
    let b = purchase(&sale, "u1", 2);
    let c = purchase(&sale, "u2", 2);
    let d = purchase(&sale, "u3", 1);
    let got = inv
        .purchase(&[a.clone(), b.clone(), c.clone(), d.clone()])
        .await
        .unwrap();
    assert!(matches!(got[0].outcome, Outcome::Success { .. }), "{got:?}");
    assert_eq!(got[1].outcome, Outcome::LimitExceeded);
    assert!(matches!(got[2].outcome, Outcome::Success { .. }));
    assert_eq!(
        got[3].outcome,
        Outcome::SoldOut,
        "sold out exactly at stock"
    );
    assert!(got.iter().all(|d| !d.duplicate));
    expect_event(&mut events, SaleEvent::SoldOut(sale.clone())).await;

    let status = inv.sale(&sale).await.unwrap().unwrap();
    assert_eq!((status.sold, status.remaining()), (3, 0));
    let orders = inv.orders(&sale).await.unwrap();
    assert_eq!(orders.len(), 2);
    assert_eq!(orders.iter().map(|o| u64::from(o.quantity)).sum::<u64>(), 3);
    let Outcome::Success { order_id } = &got[0].outcome else {
        unreachable!()
    };
    assert_eq!(&orders[0].order_id, order_id);
    assert_eq!(orders[0].request_id, a.request_id);
    assert_eq!(orders[0].user_id, "u1");

    let rec = inv.request(&c.request_id).await.unwrap().unwrap();
    assert_eq!(rec.sale_id, sale);
    assert_eq!(rec.user_id, "u2");
    assert_eq!(rec.quantity, 2);
    assert_eq!(rec.outcome, Some(got[2].outcome.clone()));
    assert!(inv.request("nosuch.request").await.unwrap().is_none());
    assert!(inv.request("garbage").await.unwrap().is_none());

    // A redelivered request gets its stored outcome and changes nothing.
    let again = inv.purchase(std::slice::from_ref(&a)).await.unwrap();
    assert!(again[0].duplicate);
    assert_eq!(again[0].outcome, got[0].outcome);
    assert_eq!(inv.sale(&sale).await.unwrap().unwrap().sold, 3);

    // A sale with sales cannot be replaced.
    assert!(matches!(
        inv.put_sale(spec(&sale, 10, 1)).await,
        Err(InventoryError::HasSales(_))
    ));
}

async fn idempotent_duplicates(env: Env) {
    let inv = &env.inventory;
    let sale = sale_id("idem");
    inv.put_sale(spec(&sale, 10, 5)).await.unwrap();
    let keyed = |user: &str, key: &str| {
        let mut p = purchase(&sale, user, 1);
        p.idempotency_key = Some(key.to_string());
        p
    };
    let first = keyed("u1", "k1");
    let second = keyed("u1", "k1");
    assert_eq!(inv.admit(&first).await.unwrap(), Admission::Admitted);
    assert_eq!(
        inv.admit(&second).await.unwrap(),
        Admission::Duplicate {
            request_id: first.request_id.clone()
        }
    );
    let pending = inv.request(&first.request_id).await.unwrap().unwrap();
    assert_eq!(pending.outcome, None, "admitted and pending");
    // A repeat finds the key's first request, for that user only.
    assert_eq!(
        inv.request_of_key(&sale, "u1", "k1").await.unwrap(),
        Some(first.request_id.clone())
    );
    assert_eq!(inv.request_of_key(&sale, "u2", "k1").await.unwrap(), None);
    assert_eq!(inv.request_of_key(&sale, "u1", "k2").await.unwrap(), None);

    // The second request reaches the purchase step before the first is
    // decided: it never buys.
    let early = inv.purchase(std::slice::from_ref(&second)).await.unwrap();
    assert!(early[0].duplicate);
    assert_eq!(
        early[0].outcome,
        Outcome::Rejected {
            reason: "duplicate_in_flight".into()
        }
    );
    let decided = inv.purchase(std::slice::from_ref(&first)).await.unwrap();
    assert!(matches!(decided[0].outcome, Outcome::Success { .. }));
    assert!(!decided[0].duplicate);
    // Afterwards a repeat of the key gets the first decision.
    let third = keyed("u1", "k1");
    let repeat = inv.purchase(std::slice::from_ref(&third)).await.unwrap();
    assert!(repeat[0].duplicate);
    assert_eq!(repeat[0].outcome, decided[0].outcome);
    assert_eq!(inv.sale(&sale).await.unwrap().unwrap().sold, 1);
    // The same key of another user is another purchase.
    let other = inv.purchase(&[keyed("u2", "k1")]).await.unwrap();
    assert!(matches!(other[0].outcome, Outcome::Success { .. }));
    assert!(!other[0].duplicate);

    // Withdrawing frees the key and forgets the pending record.
    let w = keyed("u3", "k2");
    assert_eq!(inv.admit(&w).await.unwrap(), Admission::Admitted);
    inv.withdraw(&w).await.unwrap();
    assert!(inv.request(&w.request_id).await.unwrap().is_none());
    let w2 = keyed("u3", "k2");
    assert_eq!(inv.admit(&w2).await.unwrap(), Admission::Admitted);
    // Withdrawing a request that does not hold the key leaves it alone.
    inv.withdraw(&w).await.unwrap();
    assert_eq!(
        inv.admit(&keyed("u3", "k2")).await.unwrap(),
        Admission::Duplicate {
            request_id: w2.request_id.clone()
        }
    );
    // Unkeyed admissions record pending requests.
    let plain = purchase(&sale, "u4", 1);
    assert_eq!(inv.admit(&plain).await.unwrap(), Admission::Admitted);
    assert!(inv.request(&plain.request_id).await.unwrap().is_some());
}

async fn deadlines_windows_and_settle(env: Env) {
    let inv = &env.inventory;
    let now = seckill_inventory::now_ms();
    let sale = sale_id("late");
    inv.put_sale(spec(&sale, 5, 1)).await.unwrap();
    let mut late = purchase(&sale, "u1", 1);
    late.deadline_ms = now - 1000;
    let d = inv.purchase(std::slice::from_ref(&late)).await.unwrap();
    assert_eq!(d[0].outcome, Outcome::Expired);
    assert_eq!(
        inv.sale(&sale).await.unwrap().unwrap().sold,
        0,
        "no stock taken"
    );
    assert!(inv.orders(&sale).await.unwrap().is_empty());
    let rec = inv.request(&late.request_id).await.unwrap().unwrap();
    assert_eq!(rec.outcome, Some(Outcome::Expired));

    // Settle records once; the first recorded outcome wins.
    let p = purchase(&sale, "u2", 1);
    let rejected = Outcome::Rejected {
        reason: "blacklisted".into(),
    };
    let s1 = inv.settle(&p, rejected.clone()).await.unwrap();
    assert_eq!(
        (s1.outcome.clone(), s1.duplicate),
        (rejected.clone(), false)
    );
    let s2 = inv.settle(&p, Outcome::Expired).await.unwrap();
    assert_eq!((s2.outcome, s2.duplicate), (rejected.clone(), true));
    let d = inv.purchase(std::slice::from_ref(&p)).await.unwrap();
    assert_eq!((d[0].outcome.clone(), d[0].duplicate), (rejected, true));
    // ... and a purchase decided first wins over a later settle.
    let q = purchase(&sale, "u3", 1);
    let bought = inv.purchase(std::slice::from_ref(&q)).await.unwrap();
    let s3 = inv.settle(&q, Outcome::Expired).await.unwrap();
    assert!(s3.duplicate);
    assert_eq!(s3.outcome, bought[0].outcome);

    // The sale window.
    let upcoming = sale_id("soon");
    let mut s = spec(&upcoming, 5, 1);
    s.starts_at_ms = Some(now + 60_000);
    inv.put_sale(s).await.unwrap();
    let d = inv.purchase(&[purchase(&upcoming, "u1", 1)]).await.unwrap();
    assert_eq!(
        d[0].outcome,
        Outcome::Rejected {
            reason: "sale_not_started".into()
        }
    );
    let ended = sale_id("over");
    let mut s = spec(&ended, 5, 1);
    s.ends_at_ms = Some(now - 1);
    inv.put_sale(s).await.unwrap();
    let d = inv.purchase(&[purchase(&ended, "u1", 1)]).await.unwrap();
    assert_eq!(
        d[0].outcome,
        Outcome::Rejected {
            reason: "sale_ended".into()
        }
    );
}

async fn catalog_and_events(env: Env) {
    let inv = &env.inventory;
    let mut events = inv.events();
    let (a, b) = (sale_id("cat-a"), sale_id("cat-b"));
    let mut sa = spec(&a, 7, 2);
    sa.starts_at_ms = Some(1_900_000_000_000);
    sa.token_rate = 123;
    assert_eq!(inv.put_sale(sa.clone()).await.unwrap(), Put::Created);
    expect_event(&mut events, SaleEvent::Changed(a.clone())).await;
    inv.put_sale(spec(&b, 1, 1)).await.unwrap();
    assert_eq!(
        inv.sale(&a).await.unwrap().unwrap().spec,
        sa,
        "spec round-trips"
    );
    let listed: Vec<String> = inv
        .sales()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.spec.sale_id)
        .collect();
    let pos = |id: &str| listed.iter().position(|s| s == id).expect("listed");
    assert!(pos(&a) < pos(&b), "ordered by id");

    // Replacing a sale that sold nothing.
    sa.stock = 9;
    assert_eq!(inv.put_sale(sa).await.unwrap(), Put::Replaced);
    assert_eq!(inv.sale(&a).await.unwrap().unwrap().spec.stock, 9);

    assert!(inv.remove_sale(&a).await.unwrap());
    expect_event(&mut events, SaleEvent::Removed(a.clone())).await;
    assert!(!inv.remove_sale(&a).await.unwrap());
    assert!(inv.sale(&a).await.unwrap().is_none());
    assert!(inv
        .sales()
        .await
        .unwrap()
        .iter()
        .all(|s| s.spec.sale_id != a));
    // A request for a removed sale is refused, not bought.
    let d = inv.purchase(&[purchase(&a, "u1", 1)]).await.unwrap();
    assert_eq!(
        d[0].outcome,
        Outcome::Rejected {
            reason: "sale_removed".into()
        }
    );
    inv.ping().await.unwrap();
}

async fn concurrent_purchases_never_oversell(env: Env) {
    let inv: Arc<dyn Inventory> = env.inventory.clone();
    let sale = sale_id("race");
    inv.put_sale(spec(&sale, 100, 2)).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..50 {
        let (inv, sale) = (inv.clone(), sale.clone());
        tasks.spawn(async move {
            let mut wins = 0u64;
            for b in 0..4 {
                // Users overlap across tasks, so the per-user limit is
                // contended too; a redelivered request rides along.
                let mut batch: Vec<_> = (0..5)
                    .map(|i| purchase(&sale, &format!("u{}", (t * 7 + b * 5 + i) % 120), 1))
                    .collect();
                batch.push(batch[0].clone());
                for d in inv.purchase(&batch).await.unwrap() {
                    if matches!(d.outcome, Outcome::Success { .. }) && !d.duplicate {
                        wins += 1;
                    }
                }
            }
            wins
        });
    }
    let mut wins = 0;
    while let Some(w) = tasks.join_next().await {
        wins += w.unwrap();
    }
    assert_eq!(wins, 100, "every unit sold once, none twice");
    assert_eq!(inv.sale(&sale).await.unwrap().unwrap().sold, 100);
    let orders = inv.orders(&sale).await.unwrap();
    assert_eq!(orders.len(), 100, "one order event per success");
    let mut per_user = std::collections::HashMap::new();
    for o in &orders {
        *per_user.entry(o.user_id.clone()).or_insert(0u32) += o.quantity;
    }
    assert!(per_user.values().all(|&n| n <= 2), "per-user limit held");
}

async fn live_changes_keep_what_was_sold(env: Env) {
    let inv = &env.inventory;
    let sale = sale_id("live");
    inv.put_sale(spec(&sale, 5, 3)).await.unwrap();
    let mut events = inv.events();
    let got = inv
        .purchase(&[purchase(&sale, "u1", 2), purchase(&sale, "u2", 1)])
        .await
        .unwrap();
    assert!(got
        .iter()
        .all(|d| matches!(d.outcome, Outcome::Success { .. })));

    // Stock up, rate down, paused: one step, the sold count kept.
    let mut changed = spec(&sale, 10, 3);
    changed.token_rate = 10;
    changed.paused = true;
    let status = inv.update_sale(changed.clone()).await.unwrap();
    assert_eq!((status.spec.clone(), status.sold), (changed.clone(), 3));
    expect_event(&mut events, SaleEvent::Changed(sale.clone())).await;
    assert_eq!(inv.sale(&sale).await.unwrap().unwrap().spec, changed);

    // Never below what was sold, nor below what a buyer holds.
    let below_sold = inv.update_sale(spec(&sale, 2, 3)).await;
    assert!(
        matches!(below_sold, Err(InventoryError::Conflict(_))),
        "{below_sold:?}"
    );
    let below_held = inv.update_sale(spec(&sale, 10, 1)).await;
    assert!(
        matches!(below_held, Err(InventoryError::Conflict(_))),
        "{below_held:?}"
    );
    assert_eq!(
        inv.sale(&sale).await.unwrap().unwrap().spec,
        changed,
        "refused: unchanged"
    );
    // Exactly at the limits is fine.
    inv.update_sale(spec(&sale, 3, 2)).await.unwrap();
    let status = inv.sale(&sale).await.unwrap().unwrap();
    assert_eq!(
        (status.spec.stock, status.spec.per_user_limit, status.sold),
        (3, 2, 3)
    );
    let more = inv.purchase(&[purchase(&sale, "u3", 1)]).await.unwrap();
    assert_eq!(more[0].outcome, Outcome::SoldOut, "the new stock holds");

    let unknown = inv.update_sale(spec(&sale_id("nope"), 1, 1)).await;
    assert!(
        matches!(unknown, Err(InventoryError::NotFound(_))),
        "{unknown:?}"
    );
}

async fn removal_keeps_orders_and_the_id(env: Env) {
    let inv = &env.inventory;
    let sale = sale_id("gone");
    inv.put_sale(spec(&sale, 5, 1)).await.unwrap();
    let sold = inv
        .purchase(&[purchase(&sale, "u1", 1), purchase(&sale, "u2", 1)])
        .await
        .unwrap();
    let first = match &sold[0].outcome {
        Outcome::Success { order_id } => order_id.clone(),
        other => panic!("{other:?}"),
    };
    assert!(!inv.removed(&sale).await.unwrap());
    assert!(inv.remove_sale(&sale).await.unwrap());
    assert!(inv.removed(&sale).await.unwrap(), "its removal is recorded");
    assert_eq!(
        inv.sale(&sale).await.unwrap(),
        None,
        "gone from the catalog"
    );
    assert!(inv
        .sales()
        .await
        .unwrap()
        .iter()
        .all(|s| s.spec.sale_id != sale));
    assert!(!inv.remove_sale(&sale).await.unwrap(), "removed once");

    // Its orders stay, and its id never sells again.
    let orders = inv.orders(&sale).await.unwrap();
    assert_eq!(orders.len(), 2);
    assert_eq!(orders[0].order_id, first);
    let again = inv.put_sale(spec(&sale, 5, 1)).await;
    assert!(
        matches!(again, Err(InventoryError::Removed(_))),
        "{again:?}"
    );
    let late = inv.purchase(&[purchase(&sale, "u1", 1)]).await.unwrap();
    assert_eq!(
        late[0].outcome,
        Outcome::Rejected {
            reason: "sale_removed".into()
        }
    );
    assert_eq!(
        inv.orders(&sale).await.unwrap().len(),
        2,
        "nothing more sold"
    );
    let changed = inv.update_sale(spec(&sale, 9, 1)).await;
    assert!(
        matches!(changed, Err(InventoryError::NotFound(_))),
        "{changed:?}"
    );

    // A sale that sold nothing: its removal is recorded, and its id can be
    // used again.
    let unsold = sale_id("unsold");
    inv.put_sale(spec(&unsold, 5, 1)).await.unwrap();
    assert!(inv.remove_sale(&unsold).await.unwrap());
    assert!(inv.removed(&unsold).await.unwrap(), "recorded, unsold too");
    assert_eq!(inv.sale(&unsold).await.unwrap(), None);
    assert_eq!(
        inv.put_sale(spec(&unsold, 5, 1)).await.unwrap(),
        Put::Created
    );
    assert!(!inv.removed(&unsold).await.unwrap());
    assert_eq!(
        inv.sale(&unsold).await.unwrap().unwrap().spec,
        spec(&unsold, 5, 1)
    );
    // A sale the store never had is neither live nor removed.
    assert!(!inv.removed(&sale_id("never")).await.unwrap());
}

/// An admission that runs after the gateway gave up on it records nothing
/// and claims no key, so the buyer's repeat is a fresh attempt.
async fn a_late_admission_records_nothing(env: Env) {
    let inv = &env.inventory;
    let sale = sale_id("late");
    inv.put_sale(spec(&sale, 5, 1)).await.unwrap();
    let mut late = purchase(&sale, "u1", 1);
    late.idempotency_key = Some("k".into());
    late.store_by_ms = seckill_inventory::now_ms() - 1;
    let refused = inv.admit(&late).await;
    assert!(
        matches!(refused, Err(InventoryError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(inv.request(&late.request_id).await.unwrap(), None);
    assert_eq!(inv.request_of_key(&sale, "u1", "k").await.unwrap(), None);
    let mut again = purchase(&sale, "u1", 1);
    again.idempotency_key = Some("k".into());
    again.store_by_ms = seckill_inventory::now_ms() + 60_000;
    assert_eq!(inv.admit(&again).await.unwrap(), Admission::Admitted);
}

async fn page(inv: &dyn Inventory, after: &str, sale: Option<&str>, limit: usize) -> FeedPage {
    inv.feed(&FeedQuery {
        after: Some(after.to_string()),
        sale_id: sale.map(str::to_string),
        limit,
        wait: Duration::ZERO,
    })
    .await
    .unwrap()
}

/// Reads the feed from `after` to its end in pages of `limit`; the orders
/// read and the cursor at the end.
async fn read_to_end(
    inv: &dyn Inventory,
    mut after: String,
    sale: Option<&str>,
    limit: usize,
) -> (Vec<seckill_inventory::OrderEvent>, String) {
    let mut all = Vec::new();
    for _ in 0..1000 {
        let p = page(inv, &after, sale, limit).await;
        if p.orders.is_empty() {
            return (all, p.next);
        }
        assert!(p.orders.len() <= limit);
        assert_ne!(p.next, after, "a page with orders moves the cursor");
        all.extend(p.orders);
        after = p.next;
    }
    panic!("no end of the feed");
}

fn order_ids(decisions: &[seckill_inventory::Decision]) -> Vec<String> {
    decisions
        .iter()
        .filter_map(|d| match &d.outcome {
            Outcome::Success { order_id } => Some(order_id.clone()),
            _ => None,
        })
        .collect()
}

/// Orders of several sales, bought between the reads of small pages:
/// every order exactly once, each sale's in commit order; a filter by
/// sale; a removed sale's orders stay; a cursor the store did not hand out
/// is refused.
async fn the_order_feed_resumes_without_skip_or_repeat(env: Env) {
    let inv = &*env.inventory;
    let (a, b) = (sale_id("feed-a"), sale_id("feed-b"));
    inv.put_sale(spec(&a, 100, 1)).await.unwrap();
    inv.put_sale(spec(&b, 100, 1)).await.unwrap();
    let start = page(inv, "", None, 10_000).await.next;
    let (mut cursor, mut read, mut bought) = (start.clone(), Vec::new(), Vec::new());
    for round in 0..6 {
        let batch: Vec<_> = (0..3)
            .flat_map(|i| {
                let user = format!("u{round}-{i}");
                [purchase(&a, &user, 1), purchase(&b, &user, 1)]
            })
            .collect();
        bought.extend(order_ids(&inv.purchase(&batch).await.unwrap()));
        // A page of 4: a part of what was bought, so the next round's
        // purchases land behind a cursor in the middle.
        let p = page(inv, &cursor, None, 4).await;
        assert_eq!(p.orders.len(), 4, "round {round}");
        read.extend(p.orders);
        cursor = p.next;
    }
    let (rest, end) = read_to_end(inv, cursor, None, 5).await;
    read.extend(rest);
    let read_ids: Vec<&str> = read.iter().map(|o| o.order_id.as_str()).collect();
    let mut sorted = read_ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), read_ids.len(), "no order twice");
    let mut want: Vec<&str> = bought.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(sorted, want, "every order once");
    for sale in [&a, &b] {
        let committed: Vec<String> = inv
            .orders(sale)
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.order_id)
            .collect();
        let in_feed: Vec<String> = read
            .iter()
            .filter(|o| &o.sale_id == sale)
            .map(|o| o.order_id.clone())
            .collect();
        assert_eq!(in_feed, committed, "a sale's orders in commit order");
    }
    let o = read.iter().find(|o| o.sale_id == a).unwrap();
    assert!(o.user_id.starts_with('u') && o.quantity == 1 && o.request_id.starts_with(&a));
    assert!(o.at_ms > 0);

    // Nothing new: the end stays the end.
    let p = page(inv, &end, None, 10).await;
    assert!(p.orders.is_empty());

    // One sale's orders alone, from the start; then the removed sale's.
    let (only_b, _) = read_to_end(inv, start.clone(), Some(&b), 7).await;
    assert_eq!(only_b.len(), 18);
    assert!(only_b.iter().all(|o| o.sale_id == b));
    assert!(inv.remove_sale(&b).await.unwrap());
    let (after_removal, _) = read_to_end(inv, start, None, 1000).await;
    assert_eq!(
        after_removal.len(),
        36,
        "a removed sale's orders stay in the feed"
    );

    for bad in ["not-a-cursor", "a~1", "99999999999999999999999"] {
        let got = inv
            .feed(&FeedQuery {
                after: Some(bad.into()),
                limit: 10,
                ..FeedQuery::default()
            })
            .await;
        assert!(
            matches!(got, Err(InventoryError::BadCursor(_))),
            "{bad}: {got:?}"
        );
    }
}

/// A read with a wait returns as soon as an order is committed, and an
/// empty page at the end of its wait when none is.
async fn the_order_feed_waits_for_an_order(env: Env) {
    let inv = env.inventory.clone();
    let sale = sale_id("feed-wait");
    inv.put_sale(spec(&sale, 10, 1)).await.unwrap();
    let head = page(&*inv, "", None, 10_000).await.next;
    let query = |wait_ms| FeedQuery {
        after: Some(head.clone()),
        sale_id: Some(sale.clone()),
        limit: 10,
        wait: Duration::from_millis(wait_ms),
    };
    let empty = inv.feed(&query(300)).await.unwrap();
    assert!(empty.orders.is_empty());

    let buyer = {
        let (inv, sale) = (inv.clone(), sale.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            inv.purchase(&[purchase(&sale, "late", 1)]).await.unwrap()
        })
    };
    let woken = inv.feed(&query(20_000)).await.unwrap();
    let bought = order_ids(&buyer.await.unwrap());
    let got: Vec<String> = woken.orders.iter().map(|o| o.order_id.clone()).collect();
    assert_eq!(got, bought, "the wait ends with the order");
}

fn order_of(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Success { order_id } => order_id.clone(),
        other => panic!("not a success: {other:?}"),
    }
}

async fn cancelling_releases_the_units_once(env: Env) {
    let inv = &env.inventory;
    let sale = sale_id("cancel");
    inv.put_sale(spec(&sale, 3, 2)).await.unwrap();
    let mut events = inv.events();
    let got = inv
        .purchase(&[purchase(&sale, "u1", 2), purchase(&sale, "u2", 1)])
        .await
        .unwrap();
    let first = order_of(&got[0].outcome);
    order_of(&got[1].outcome);
    expect_event(&mut events, SaleEvent::SoldOut(sale.clone())).await;
    assert_eq!(inv.sale(&sale).await.unwrap().unwrap().sold, 3);

    let c = inv.cancel_order(&first).await.unwrap();
    assert!(!c.repeat);
    assert_eq!((c.order.user_id.as_str(), c.order.quantity), ("u1", 2));
    assert_eq!(c.order.sale_id, sale);
    assert!(c.cancelled_at_ms >= c.order.at_ms);
    assert_eq!(
        inv.sale(&sale).await.unwrap().unwrap().sold,
        1,
        "units back"
    );
    expect_event(&mut events, SaleEvent::Released(sale.clone())).await;

    // A repeat answers the same and changes nothing.
    let again = inv.cancel_order(&first).await.unwrap();
    assert!(again.repeat);
    assert_eq!(again.cancelled_at_ms, c.cancelled_at_ms);
    assert_eq!(again.order, c.order);
    assert_eq!(inv.sale(&sale).await.unwrap().unwrap().sold, 1);

    // The buyer's allowance is back: u1 can buy 2 again, and no more.
    let rebuy = inv
        .purchase(&[purchase(&sale, "u1", 2), purchase(&sale, "u1", 1)])
        .await
        .unwrap();
    order_of(&rebuy[0].outcome);
    assert_eq!(rebuy[1].outcome, Outcome::LimitExceeded);

    // The topic: two orders, the cancellation, the new order.
    let orders = inv.orders(&sale).await.unwrap();
    let kinds: Vec<_> = orders.iter().map(|o| o.kind).collect();
    use OrderEventKind::{Cancelled, Placed};
    assert_eq!(kinds, [Placed, Placed, Cancelled, Placed]);
    assert_eq!(orders[2].order_id, first);
    assert_eq!(orders[2].quantity, 2);

    for unknown in [
        "nope".to_string(),
        format!("o-{sale}.ffff"),
        format!("o-missing-{}.ab", seckill_inventory::unique_id()),
    ] {
        let r = inv.cancel_order(&unknown).await;
        assert!(matches!(r, Err(InventoryError::NotFound(_))), "{r:?}");
    }

    // A sale whose orders were all cancelled sold all the same: its orders
    // stay and it cannot be replaced.
    let sale2 = sale_id("cancelall");
    inv.put_sale(spec(&sale2, 1, 1)).await.unwrap();
    let got = inv.purchase(&[purchase(&sale2, "u1", 1)]).await.unwrap();
    inv.cancel_order(&order_of(&got[0].outcome)).await.unwrap();
    let put = inv.put_sale(spec(&sale2, 1, 1)).await;
    assert!(matches!(put, Err(InventoryError::HasSales(_))), "{put:?}");
    assert!(inv.remove_sale(&sale2).await.unwrap());
    let put = inv.put_sale(spec(&sale2, 1, 1)).await;
    assert!(matches!(put, Err(InventoryError::Removed(_))), "{put:?}");
    assert_eq!(inv.orders(&sale2).await.unwrap().len(), 2);
}

/// 100 cancels racing a spike on a sold-out sale: exactly the 100
/// released units sell again, never more, and repeats change nothing.
async fn cancels_racing_a_spike_sell_exactly_the_released_units(env: Env) {
    const STOCK: usize = 200;
    const CANCELS: usize = 100;
    let inv = env.inventory.clone();
    let sale = sale_id("race");
    inv.put_sale(spec(&sale, STOCK as u64, 1)).await.unwrap();
    let first: Vec<_> = (0..STOCK)
        .map(|i| purchase(&sale, &format!("u{i}"), 1))
        .collect();
    let mut orders = Vec::new();
    for chunk in first.chunks(50) {
        for d in inv.purchase(chunk).await.unwrap() {
            orders.push(order_of(&d.outcome));
        }
    }
    assert_eq!(inv.sale(&sale).await.unwrap().unwrap().sold, STOCK as u64);

    let mut tasks = tokio::task::JoinSet::new();
    for oid in orders.into_iter().take(CANCELS) {
        let inv = inv.clone();
        // Each cancel twice, concurrently: one of the two releases.
        tasks.spawn(async move {
            let (a, b) = tokio::join!(inv.cancel_order(&oid), inv.cancel_order(&oid));
            let (a, b) = (a.unwrap(), b.unwrap());
            assert!(a.repeat != b.repeat, "exactly one of two cancels releases");
            0usize
        });
    }
    // The spike: 3 * CANCELS new buyers, in small batches, racing them.
    for w in 0..6 {
        let inv = inv.clone();
        let sale = sale.clone();
        tasks.spawn(async move {
            let mut won = 0;
            for round in 0..10 {
                let batch: Vec<_> = (0..5)
                    .map(|i| purchase(&sale, &format!("n{w}-{round}-{i}"), 1))
                    .collect();
                let decisions = inv.purchase(&batch).await.unwrap();
                won += decisions
                    .iter()
                    .filter(|d| matches!(d.outcome, Outcome::Success { .. }))
                    .count();
                tokio::task::yield_now().await;
            }
            won
        });
    }
    let mut won = 0;
    while let Some(r) = tasks.join_next().await {
        won += r.unwrap();
    }
    // Whatever the spike missed, a second wave takes.
    let rest: Vec<_> = (0..CANCELS + 10)
        .map(|i| purchase(&sale, &format!("late{i}"), 1))
        .collect();
    won += inv
        .purchase(&rest)
        .await
        .unwrap()
        .iter()
        .filter(|d| matches!(d.outcome, Outcome::Success { .. }))
        .count();
    assert_eq!(won, CANCELS, "exactly the released units sold again");
    let status = inv.sale(&sale).await.unwrap().unwrap();
    assert_eq!(status.sold, STOCK as u64);
    let all = inv.orders(&sale).await.unwrap();
    let cancelled = all
        .iter()
        .filter(|o| o.kind == OrderEventKind::Cancelled)
        .count();
    assert_eq!(cancelled, CANCELS, "one cancelled event per order");
    assert_eq!(all.len(), STOCK + CANCELS + CANCELS);
}

/// Every result is kept for the retention, then forgotten: on Redis a
/// decided record has an expiry whether its admission wrote it (and set
/// it) or not (a record gone meanwhile, written anew by the decision).
async fn a_decided_record_expires(env: Env) {
    let inv = &env.inventory;
    let sale = sale_id("ttl");
    inv.put_sale(spec(&sale, 10, 1)).await.unwrap();
    let admitted = purchase(&sale, "a", 1);
    assert_eq!(inv.admit(&admitted).await.unwrap(), Admission::Admitted);
    let unannounced = purchase(&sale, "b", 1);
    let decided = inv
        .purchase(&[admitted.clone(), unannounced.clone()])
        .await
        .unwrap();
    assert!(decided
        .iter()
        .all(|d| matches!(d.outcome, Outcome::Success { .. })));
    if !env.is_redis() {
        return;
    }
    let mut conn = env.store().conn();
    for p in [&admitted, &unannounced] {
        let key = seckill_redis::keys::request(&p.sale_id, &p.request_id);
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            ttl > 0 && ttl <= 600_000,
            "{key}: PTTL {ttl}, the retention is 600 s"
        );
    }
}

/// Redis runs a batch's purchase script to its end or to its first failing
/// command, keeping what it wrote before: the units of the orders written
/// before the failure are counted as sold, so none is sold again.
async fn a_batch_that_fails_midway_counts_what_it_sold(env: Env) {
    if !env.is_redis() {
        return;
    }
    let inv = &env.inventory;
    let sale = sale_id("midway");
    inv.put_sale(spec(&sale, 5, 1)).await.unwrap();
    let batch: Vec<_> = (0..4)
        .map(|i| purchase(&sale, &format!("m{i}"), 1))
        .collect();
    // The third request's record has the wrong type: reading it fails.
    let key = seckill_redis::keys::request(&sale, &batch[2].request_id);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("not a record")
        .query_async(&mut env.store().conn())
        .await
        .unwrap();
    assert!(inv.purchase(&batch).await.is_err());
    let orders = inv.orders(&sale).await.unwrap().len();
    assert_eq!(orders, 2, "the two requests before the failure bought");
    assert_eq!(inv.sale(&sale).await.unwrap().unwrap().sold, 2);
    // The rest of the stock sells, and not a unit more.
    let more: Vec<_> = (0..5)
        .map(|i| purchase(&sale, &format!("n{i}"), 1))
        .collect();
    let won = inv
        .purchase(&more)
        .await
        .unwrap()
        .iter()
        .filter(|d| matches!(d.outcome, Outcome::Success { .. }))
        .count();
    assert_eq!(won, 3);
    assert_eq!(inv.sale(&sale).await.unwrap().unwrap().sold, 5);
}
