//! The durable store across restarts, in one process: what a purchase
//! returned is on disk when it returns, a reopened store is the store that
//! was closed (sales, holdings, keys, results, orders, the feed's cursor),
//! undecided requests end as expired, and one store per directory.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
use seckill_inventory::{
    now_ms, request_id, Admission, FeedQuery, Inventory, InventoryError, Outcome, Purchase,
    SaleSpec,
};
use seckill_sqlite::{OpenError, SqliteInventory, DB_FILE};
use seckill_test_support::scratch_dir;

const RETENTION: Duration = Duration::from_secs(600);

fn purchase(sale: &str, user: &str, key: Option<&str>) -> Purchase {
    Purchase {
        request_id: request_id(sale),
        sale_id: sale.into(),
        user_id: user.into(),
        quantity: 1,
        idempotency_key: key.map(str::to_string),
        deadline_ms: now_ms() + 60_000,
        store_by_ms: 0,
    }
}

fn order_id(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Success { order_id } => order_id.clone(),
        other => panic!("not a success: {other:?}"),
    }
}

/// Opens `dir`, waiting (bounded) for a store dropped just before to let
/// go of it: its writer thread ends once the last handle is gone.
fn reopen(dir: &Path) -> SqliteInventory {
    for _ in 0..200 {
        match SqliteInventory::open(dir, RETENTION) {
            Ok(inv) => return inv,
            Err(OpenError::Locked(_)) => std::thread::sleep(Duration::from_millis(25)),
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the directory stayed locked");
}

async fn feed(
    inv: &SqliteInventory,
    after: &str,
) -> Result<seckill_inventory::FeedPage, InventoryError> {
    inv.feed(&FeedQuery {
        after: Some(after.into()),
        limit: 1000,
        ..FeedQuery::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_is_on_disk_when_it_returns() {
    let dir = scratch_dir();
    let inv = SqliteInventory::open(dir.path(), RETENTION).unwrap();
    inv.put_sale(SaleSpec::new("disk", 10)).await.unwrap();
    let batch: Vec<_> = (0..5)
        .map(|u| purchase("disk", &format!("u{u}"), None))
        .collect();
    let decisions = inv.purchase(&batch).await.unwrap();
    // Another connection, as an operator's sqlite3 would read the file:
    // the batch is committed, orders and results with it.
    let other = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let orders: i64 = other
        .query_row(
            "SELECT count(*) FROM orders WHERE sale_id = 'disk'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orders, 5);
    // Each success is its order (no request row was written pending).
    for (p, d) in batch.iter().zip(&decisions) {
        let order: String = other
            .query_row(
                "SELECT order_id FROM orders WHERE request_id = ?1 AND kind = 'placed'",
                [&p.request_id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(order, order_id(&d.outcome));
    }
    let spec: String = other
        .query_row("SELECT spec FROM sales WHERE sale_id = 'disk'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(spec.contains("\"stock\":10"), "{spec}");
}

/// An admission nobody waits for is written within its linger (tens of
/// milliseconds), with nothing else happening, as a pending row; one
/// decided meanwhile is written once, decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_is_on_disk_soon_decided_or_not() {
    let dir = scratch_dir();
    let inv = SqliteInventory::open(dir.path(), RETENTION).unwrap();
    inv.put_sale(SaleSpec::new("line", 10)).await.unwrap();
    let waiting = purchase("line", "w", Some("cart-w"));
    let decided = purchase("line", "d", None);
    for p in [&waiting, &decided] {
        assert_eq!(inv.admit(p).await.unwrap(), Admission::Admitted);
    }
    inv.purchase(std::slice::from_ref(&decided)).await.unwrap();
    let other = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let rows = |id: &str| -> Vec<Option<String>> {
        let mut q = other
            .prepare("SELECT status FROM requests WHERE request_id = ?1")
            .unwrap();
        q.query_map([id], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    // A success decided before its admission was written is one row: its
    // order, which is its record after a restart too.
    assert!(rows(&decided.request_id).is_empty());
    let orders: i64 = other
        .query_row(
            "SELECT count(*) FROM orders WHERE request_id = ?1 AND kind = 'placed'",
            [&decided.request_id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(orders, 1);
    // Bounded: the linger is 10 ms; 5 s allows for a slow machine.
    let mut pending = rows(&waiting.request_id);
    for _ in 0..100 {
        if !pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        pending = rows(&waiting.request_id);
    }
    assert_eq!(
        pending,
        [None],
        "the undecided admission is written pending"
    );
    let key: String = other
        .query_row(
            "SELECT request_id FROM idempotency_keys WHERE key = 'cart-w'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(key, waiting.request_id, "with the key it claimed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_store_is_the_store_that_was_closed() {
    let dir = scratch_dir();
    let inv = SqliteInventory::open(dir.path(), RETENTION).unwrap();
    inv.put_sale(SaleSpec {
        per_user_limit: 1,
        ..SaleSpec::new("live", 5)
    })
    .await
    .unwrap();
    inv.put_sale(SaleSpec::new("gone", 5)).await.unwrap();
    let paused = SaleSpec {
        paused: true,
        token_rate: 7,
        ..SaleSpec::new("live", 6)
    };
    inv.update_sale(paused.clone()).await.unwrap();

    let keyed = purchase("live", "k", Some("cart-1"));
    assert_eq!(inv.admit(&keyed).await.unwrap(), Admission::Admitted);
    let batch = [
        keyed.clone(),
        purchase("live", "u2", None),
        purchase("gone", "g", None),
    ];
    let bought = inv.purchase(&batch).await.unwrap();
    let first_order = order_id(&bought[0].outcome);
    inv.remove_sale("gone").await.unwrap();
    let rejected = purchase("live", "r", None);
    inv.settle(
        &rejected,
        Outcome::Rejected {
            reason: "blacklisted".into(),
        },
    )
    .await
    .unwrap();
    // Admitted, queued, never decided: the process stops here.
    let undecided = purchase("live", "w", Some("cart-9"));
    inv.admit(&undecided).await.unwrap();
    let head = feed(&inv, "").await.unwrap().next;
    drop(inv);

    let inv = reopen(dir.path());
    let live = inv.sale("live").await.unwrap().unwrap();
    assert_eq!(
        (live.spec.clone(), live.sold),
        (paused, 2),
        "definition and sold"
    );
    assert_eq!(inv.sale("gone").await.unwrap(), None);
    assert!(inv.removed("gone").await.unwrap(), "the removal is kept");
    assert!(matches!(
        inv.put_sale(SaleSpec::new("gone", 5)).await,
        Err(InventoryError::Removed(_))
    ));

    // Keys and results.
    assert_eq!(
        inv.request_of_key("live", "k", "cart-1").await.unwrap(),
        Some(keyed.request_id.clone())
    );
    let again = purchase("live", "k", Some("cart-1"));
    assert_eq!(
        inv.admit(&again).await.unwrap(),
        Admission::Duplicate {
            request_id: keyed.request_id.clone()
        }
    );
    let record = inv.request(&keyed.request_id).await.unwrap().unwrap();
    assert_eq!(
        record.outcome,
        Some(Outcome::Success {
            order_id: first_order.clone()
        })
    );
    // A success never written pending has no request row: its order is
    // its record.
    let never_pending = inv.request(&batch[1].request_id).await.unwrap();
    assert_eq!(
        never_pending.map(|r| (r.user_id, r.outcome)),
        Some(("u2".to_string(), Some(bought[1].outcome.clone())))
    );
    let record = inv.request(&rejected.request_id).await.unwrap().unwrap();
    assert_eq!(
        record.outcome,
        Some(Outcome::Rejected {
            reason: "blacklisted".into()
        })
    );
    let record = inv.request(&undecided.request_id).await.unwrap().unwrap();
    assert_eq!(
        record.outcome,
        Some(Outcome::Expired),
        "undecided ends expired"
    );
    let late = inv
        .purchase(std::slice::from_ref(&undecided))
        .await
        .unwrap();
    assert!(
        late[0].duplicate && late[0].outcome == Outcome::Expired,
        "{late:?}"
    );

    // Holdings: the per-user limit still counts what was bought before.
    inv.update_sale(SaleSpec {
        paused: false,
        ..live.spec.clone()
    })
    .await
    .unwrap();
    let twice = inv.purchase(&[purchase("live", "u2", None)]).await.unwrap();
    assert_eq!(twice[0].outcome, Outcome::LimitExceeded);

    // Orders, and the feed resuming from the cursor read before the stop.
    let orders = inv.orders("live").await.unwrap();
    assert_eq!(orders.len(), 2);
    assert_eq!(orders[0].order_id, first_order);
    assert_eq!(
        inv.orders("gone").await.unwrap().len(),
        1,
        "a removed sale's orders stay"
    );
    let new = inv.purchase(&[purchase("live", "u3", None)]).await.unwrap();
    let page = feed(&inv, &head).await.unwrap();
    let ids: Vec<String> = page.orders.iter().map(|o| o.order_id.clone()).collect();
    assert_eq!(
        ids,
        vec![order_id(&new[0].outcome)],
        "only what came after the cursor"
    );
    let past: u64 = page.next.parse::<u64>().unwrap() + 1;
    assert!(matches!(
        feed(&inv, &past.to_string()).await,
        Err(InventoryError::BadCursor(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_store_per_directory() {
    let dir = scratch_dir();
    let first = SqliteInventory::open(dir.path(), RETENTION).unwrap();
    match SqliteInventory::open(dir.path(), RETENTION) {
        Err(e @ OpenError::Locked(_)) => assert!(e.to_string().contains("in use"), "{e}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a second store opened the same directory"),
    }
    first.put_sale(SaleSpec::new("s", 1)).await.unwrap();
    drop(first);
    let second = reopen(dir.path());
    assert!(second.sale("s").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_another_kind_is_refused() {
    let dir = scratch_dir();
    {
        let other = Connection::open(dir.path().join(DB_FILE)).unwrap();
        other.execute_batch("CREATE TABLE t (x INTEGER);").unwrap();
    }
    match SqliteInventory::open(dir.path(), RETENTION) {
        Err(OpenError::Unusable { message, .. }) => {
            assert!(message.contains("not a seckill store"), "{message}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened a database that is not a store"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_survives_a_reopen() {
    let dir = scratch_dir();
    let inv = SqliteInventory::open(dir.path(), RETENTION).unwrap();
    let spec = SaleSpec {
        per_user_limit: 1,
        ..SaleSpec::new("undo", 2)
    };
    inv.put_sale(spec).await.unwrap();
    let batch = [purchase("undo", "u1", None), purchase("undo", "u2", None)];
    let decisions = inv.purchase(&batch).await.unwrap();
    let first = order_id(&decisions[0].outcome);
    let second = order_id(&decisions[1].outcome);
    let cancelled = inv.cancel_order(&first).await.unwrap();
    assert!(!cancelled.repeat);
    // On disk when it returns.
    let other = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let kind: String = other
        .query_row(
            "SELECT kind FROM orders WHERE order_id = ?1 ORDER BY seq DESC LIMIT 1",
            [&first],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(kind, "cancelled");
    drop(other);
    drop(inv);

    let inv = reopen(dir.path());
    let sale = inv.sale("undo").await.unwrap().unwrap();
    assert_eq!(sale.sold, 1, "placed minus cancelled");
    // The cancelled order is known as cancelled: a repeat, same time.
    let again = inv.cancel_order(&first).await.unwrap();
    assert!(again.repeat);
    assert_eq!(again.cancelled_at_ms, cancelled.cancelled_at_ms);
    // u2 still holds its unit; u1 has its allowance back and buys the
    // released one.
    let d = inv
        .purchase(&[purchase("undo", "u2", None), purchase("undo", "u1", None)])
        .await
        .unwrap();
    assert_eq!(d[0].outcome, Outcome::LimitExceeded);
    let third = order_id(&d[1].outcome);
    assert_eq!(inv.sale("undo").await.unwrap().unwrap().sold, 2);
    // A sale that ever sold keeps its id, cancelled orders or not.
    assert!(matches!(
        inv.put_sale(SaleSpec::new("undo", 5)).await,
        Err(InventoryError::HasSales(_))
    ));
    let events: Vec<(String, &str)> = feed(&inv, "0")
        .await
        .unwrap()
        .orders
        .iter()
        .map(|o| (o.order_id.clone(), o.kind.as_str()))
        .collect();
    assert_eq!(
        events,
        [
            (first.clone(), "placed"),
            (second, "placed"),
            (first, "cancelled"),
            (third, "placed"),
        ]
    );
}

/// Turns a store of this build back into schema version 1 (its orders
/// unique by order id, its requests keyed by request id), as an older
/// build left it.
const DOWNGRADE_TO_1: &str = "
CREATE TABLE o1 (
    seq INTEGER PRIMARY KEY,
    order_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('placed', 'cancelled')),
    sale_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    UNIQUE (order_id, kind)
);
INSERT INTO o1 SELECT * FROM orders;
DROP TABLE orders;
ALTER TABLE o1 RENAME TO orders;
CREATE INDEX orders_by_sale ON orders (sale_id, seq);
CREATE TABLE r1 (
    request_id TEXT PRIMARY KEY,
    sale_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    status TEXT,
    detail TEXT NOT NULL,
    at_ms INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO r1 SELECT request_id, sale_id, user_id, quantity, status, detail, at_ms FROM requests;
DROP TABLE requests;
ALTER TABLE r1 RENAME TO requests;
CREATE INDEX requests_by_age ON requests (at_ms);
UPDATE meta SET value = '1' WHERE key = 'schema_version';
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_of_schema_version_1_is_upgraded_with_everything_in_it() {
    let dir = scratch_dir();
    let inv = SqliteInventory::open(dir.path(), RETENTION).unwrap();
    inv.put_sale(SaleSpec::new("old", 5)).await.unwrap();
    let batch = [purchase("old", "u1", None), purchase("old", "u2", None)];
    let decisions = inv.purchase(&batch).await.unwrap();
    let undecided = purchase("old", "u3", None);
    assert_eq!(inv.admit(&undecided).await.unwrap(), Admission::Admitted);
    drop(inv);
    // Once the writer let go, the file is as an older build left it.
    drop(reopen(dir.path()));
    Connection::open(dir.path().join(DB_FILE))
        .unwrap()
        .execute_batch(DOWNGRADE_TO_1)
        .unwrap();

    let inv = reopen(dir.path());
    let db = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let version: String = db
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, "3");
    let order_indexes: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'orders'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(order_indexes, ["orders_by_sale"]);
    assert_eq!(inv.sale("old").await.unwrap().unwrap().sold, 2);
    for (p, d) in batch.iter().zip(&decisions) {
        let record = inv.request(&p.request_id).await.unwrap().unwrap();
        assert_eq!(record.outcome.as_ref(), Some(&d.outcome));
    }
    let record = inv.request(&undecided.request_id).await.unwrap().unwrap();
    assert_eq!(record.outcome, Some(Outcome::Expired));
    let page = feed(&inv, "0").await.unwrap();
    assert_eq!(page.orders.len(), 2);

    // It sells on. An admission committed on its own is updated in place
    // by its decision: one row per request.
    let next = purchase("old", "u4", None);
    assert_eq!(inv.admit(&next).await.unwrap(), Admission::Admitted);
    let committed = || {
        db.query_row(
            "SELECT count(*) FROM requests WHERE request_id = ?1",
            [&next.request_id],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
    };
    let mut waited = 0;
    while committed() == 0 && waited < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert_eq!(committed(), 1, "the admission is committed by the linger");
    let decided = inv.purchase(std::slice::from_ref(&next)).await.unwrap();
    order_id(&decided[0].outcome);
    let (rows, status): (i64, String) = db
        .query_row(
            "SELECT count(*), max(status) FROM requests WHERE request_id = ?1",
            [&next.request_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((rows, status.as_str()), (1, "success"));
    let page = feed(&inv, &page.next).await.unwrap();
    assert_eq!(page.orders.len(), 1);
}
