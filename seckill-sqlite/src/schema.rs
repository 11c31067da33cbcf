//! The database's tables, and opening it: checks, the schema, recovery
//! and the snapshot the memory inventory starts from.
//!
//! Operators may read the tables with the `sqlite3` tool (the data
//! directory's runbook shows how); `orders` is the record of every unit
//! sold, in commit order by `seq`.

use std::collections::HashMap;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use seckill_inventory::{
    now_ms, OrderEventKind, Outcome, Placed, RequestRecord, SaleSpec, SavedKey, SavedSale, Snapshot,
};

use crate::{order_of, ORDER_COLUMNS};

/// The schema this build writes and reads.
const SCHEMA_VERSION: &str = "3";

/// The orders table of schema version 2 (in [`SCHEMA`] and the upgrade).
macro_rules! orders_table {
    () => {
        "CREATE TABLE orders (
    seq INTEGER PRIMARY KEY,
    order_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('placed', 'cancelled')),
    sale_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
"
    };
}

/// The requests table of schema version 2 (in [`SCHEMA`] and the upgrade).
macro_rules! requests_table {
    () => {
        "CREATE TABLE requests (
    rid INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    sale_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    quantity INTEGER NOT NULL,
    status TEXT,
    detail TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
"
    };
}

const SCHEMA: &str = concat!(
    "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- A sale's definition (the admin API's, as JSON) and whether it was removed.
CREATE TABLE sales (
    sale_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    removed INTEGER NOT NULL
);
-- Every order event, never deleted; seq is the commit order (the feed's
-- cursor). kind 'placed' is a purchase, 'cancelled' its cancellation (the
-- same order again, at_ms the time it was cancelled). A sale's sold count
-- and each buyer's total are placed minus cancelled quantities.
--
-- Every table and index is keyed in the order rows are written (no index
-- on the random order or request ids): a commit appends to a few pages
-- instead of dirtying one random page per row, so its share of the
-- write-ahead log stays small. Lookups by id are the memory inventory's.
",
    orders_table!(),
    "CREATE INDEX orders_by_sale ON orders (sale_id, seq);
-- Request records within the result retention, in admission order (rid);
-- status NULL = pending. A request has one row; were there two, the later
-- one holds. A success decided before its admission was written has no
-- row: its order (kind 'placed', the same request_id) is its record, so a
-- unit sold costs one row, not two.
",
    requests_table!(),
    "CREATE INDEX requests_by_age ON requests (at_ms);
CREATE TABLE idempotency_keys (
    sale_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (sale_id, user_id, key)
) WITHOUT ROWID;
CREATE INDEX keys_by_age ON idempotency_keys (at_ms);
"
);

/// What opening found.
pub(crate) struct Recovered {
    pub snapshot: Snapshot,
    /// Sequence number of the last order.
    pub last_seq: u64,
    /// Requests that were pending at the last stop, now `expired`.
    pub expired: usize,
}

/// Sets the connection up (WAL, a full fsync at every commit), checks the
/// database, creates or checks the schema, ends the undecided requests and
/// reads everything the memory inventory needs. The error is one line.
pub(crate) fn recover(conn: &mut Connection, retention_ms: u64) -> Result<Recovered, String> {
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!(
            "cannot use a write-ahead log (journal mode {mode})"
        ));
    }
    // FULL: every commit fsyncs the log, so a committed batch survives a
    // power cut, not only a crash of the process. Checkpoints are the
    // writer's own (see writer.rs), so it counts their fsyncs too.
    conn.pragma_update(None, "synchronous", "FULL")
        .and_then(|()| conn.pragma_update(None, "wal_autocheckpoint", 0))
        // 64 MiB of page cache: request ids are random keys, so their
        // inserts touch pages all over the table.
        .and_then(|()| conn.pragma_update(None, "cache_size", -65536))
        .and_then(|()| conn.busy_timeout(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if check != "ok" {
        return Err(format!(
            "the database is damaged ({check}); restore it from a backup"
        ));
    }
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    check_schema(&tx)?;
    let expired = tx
        .execute(
            "UPDATE requests SET status = 'expired', detail = '' WHERE status IS NULL",
            [],
        )
        .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    let snapshot =
        snapshot(conn, now_ms().saturating_sub(retention_ms)).map_err(|e| e.to_string())?;
    let last_seq: i64 = conn
        .query_row("SELECT coalesce(max(seq), 0) FROM orders", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    Ok(Recovered {
        snapshot: snapshot?,
        last_seq: last_seq as u64,
        expired,
    })
}

/// Version 1 to 2: the orders lose their unique index on the (random)
/// order id, and requests are keyed by admission order instead of by
/// their random id. The rows stay as they were.
const MIGRATE_1_TO_2: &str =
    concat!("
ALTER TABLE orders RENAME TO orders_v1;
ALTER TABLE requests RENAME TO requests_v1;
DROP INDEX orders_by_sale;
DROP INDEX requests_by_age;
",
    orders_table!(),
    "INSERT INTO orders SELECT seq, order_id, kind, sale_id, user_id, quantity, request_id, at_ms
    FROM orders_v1 ORDER BY seq;
CREATE INDEX orders_by_sale ON orders (sale_id, seq);
",
    requests_table!(),
    "INSERT INTO requests (request_id, sale_id, user_id, quantity, status, detail, at_ms)
    SELECT request_id, sale_id, user_id, quantity, status, detail, at_ms
    FROM requests_v1 ORDER BY at_ms;
CREATE INDEX requests_by_age ON requests (at_ms);
DROP TABLE orders_v1;
DROP TABLE requests_v1;
UPDATE meta SET value = '2' WHERE key = 'schema_version';
");

/// Version 2 to 3: the tables stay; a success decided before its admission
/// was written is no longer given a request row (its order is its record).
/// A version-2 store reads the same; the version keeps an older build,
/// which reads request rows only, from opening a newer store.
const MIGRATE_2_TO_3: &str = "UPDATE meta SET value = '3' WHERE key = 'schema_version';";

/// Creates the schema in an empty database, brings an older one of ours
/// up to this build's (in the recovery's transaction: all or nothing), and
/// accepts nothing else.
fn check_schema(tx: &rusqlite::Transaction<'_>) -> Result<(), String> {
    let e = |e: rusqlite::Error| e.to_string();
    let tables: i64 = tx
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .map_err(e)?;
    if tables == 0 {
        tx.execute_batch(SCHEMA).map_err(e)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
            [SCHEMA_VERSION],
        )
        .map_err(e)?;
        return Ok(());
    }
    let version: Option<String> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(|_| "the database is not a seckill store (no schema version)".to_string())?;
    match version.as_deref() {
        Some(SCHEMA_VERSION) => Ok(()),
        Some(v @ ("1" | "2")) => {
            if v == "1" {
                tx.execute_batch(MIGRATE_1_TO_2)
                    .map_err(|e| format!("cannot upgrade the schema from version 1: {e}"))?;
            }
            tx.execute_batch(MIGRATE_2_TO_3)
                .map_err(|e| format!("cannot upgrade the schema from version {v}: {e}"))?;
            tracing::info!(
                "the data directory's schema was upgraded from version {v} to {SCHEMA_VERSION}"
            );
            Ok(())
        }
        Some(v) => Err(format!(
            "the database has schema version {v}; this build reads version {SCHEMA_VERSION}"
        )),
        None => Err("the database is not a seckill store (no schema version)".into()),
    }
}

/// Reads sales with their holdings, and the records and keys written at or
/// after `cutoff` (Unix ms). The inner error names data that makes no sense.
fn snapshot(conn: &Connection, cutoff: u64) -> rusqlite::Result<Result<Snapshot, String>> {
    let mut sales: HashMap<String, SavedSale> = HashMap::new();
    let mut stmt = conn.prepare("SELECT sale_id, spec, removed FROM sales")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let spec: String = row.get(1)?;
        let Ok(spec) = serde_json::from_str::<SaleSpec>(&spec) else {
            return Ok(Err(format!("sale {id} has an unreadable definition")));
        };
        let removed: bool = row.get(2)?;
        sales.insert(
            id,
            SavedSale {
                spec,
                removed,
                held: HashMap::new(),
                placed: HashMap::new(),
            },
        );
    }
    let mut stmt = conn.prepare(
        "SELECT sale_id, user_id, \
         sum(CASE kind WHEN 'cancelled' THEN -quantity ELSE quantity END) AS held \
         FROM orders GROUP BY sale_id, user_id HAVING held > 0",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let sale: String = row.get(0)?;
        let Some(s) = sales.get_mut(&sale) else {
            return Ok(Err(format!(
                "orders of sale {sale}, which has no definition"
            )));
        };
        s.held.insert(row.get(1)?, row.get(2)?);
    }
    let mut requests = Vec::new();
    // Every order by id, for cancellations: as placed, with when it was
    // cancelled (in seq order, a cancellation follows its order).
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders ORDER BY seq");
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let order = order_of(row)?;
        let Some(s) = sales.get_mut(&order.sale_id) else {
            return Ok(Err(format!(
                "orders of sale {}, which has no definition",
                order.sale_id
            )));
        };
        match order.kind {
            OrderEventKind::Placed => {
                // A success within the retention: its order is its record
                // (the requests table has a row only for one written
                // pending first).
                if order.at_ms >= cutoff {
                    requests.push((
                        RequestRecord {
                            request_id: order.request_id.clone(),
                            sale_id: order.sale_id.clone(),
                            user_id: order.user_id.clone(),
                            quantity: order.quantity,
                            outcome: Some(Outcome::Success {
                                order_id: order.order_id.clone(),
                            }),
                        },
                        order.at_ms,
                    ));
                }
                s.placed.insert(
                    order.order_id.clone(),
                    Placed {
                        order,
                        cancelled_at_ms: None,
                    },
                );
            }
            OrderEventKind::Cancelled => match s.placed.get_mut(&order.order_id) {
                Some(p) => p.cancelled_at_ms = Some(order.at_ms),
                None => {
                    return Ok(Err(format!(
                        "order {} is cancelled but was never placed",
                        order.order_id
                    )))
                }
            },
        }
    }

    // After the orders' records: a request's row, where it has one, holds.
    let mut stmt = conn.prepare(
        "SELECT request_id, sale_id, user_id, quantity, status, detail, at_ms FROM requests \
         WHERE at_ms >= ?1 ORDER BY rid",
    )?;
    let mut rows = stmt.query(params![cutoff as i64])?;
    while let Some(row) = rows.next()? {
        let request_id: String = row.get(0)?;
        let status: Option<String> = row.get(4)?;
        let detail: String = row.get(5)?;
        let outcome = match status.as_deref().map(|s| Outcome::from_parts(s, &detail)) {
            Some(Some(o)) => Some(o),
            _ => return Ok(Err(format!("request {request_id} has an unknown status"))),
        };
        let record = RequestRecord {
            request_id,
            sale_id: row.get(1)?,
            user_id: row.get(2)?,
            quantity: row.get(3)?,
            outcome,
        };
        requests.push((record, row.get::<_, i64>(6)? as u64));
    }

    let mut keys = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT sale_id, user_id, key, request_id, at_ms FROM idempotency_keys WHERE at_ms >= ?1",
    )?;
    let mut rows = stmt.query(params![cutoff as i64])?;
    while let Some(row) = rows.next()? {
        keys.push(SavedKey {
            sale_id: row.get(0)?,
            user_id: row.get(1)?,
            key: row.get(2)?,
            request_id: row.get(3)?,
            at_ms: row.get::<_, i64>(4)? as u64,
        });
    }
    let mut sales: Vec<SavedSale> = sales.into_values().collect();
    sales.sort_by(|a, b| a.spec.sale_id.cmp(&b.spec.sale_id));
    Ok(Ok(Snapshot {
        sales,
        requests,
        keys,
    }))
}
