//! The durable inventory of the embedded mode: sales, stock, per-user
//! totals, idempotency keys, results and orders in a SQLite database in
//! the data directory (`--data-dir`), so a crash or a restart loses nothing
//! that was answered.
//!
//! Decisions are the memory inventory's (its per-sale locks, no I/O on the
//! hot path); every step's changes go, through its [`Journal`], to one
//! writer thread that owns the database connection. The writer takes
//! whatever has queued up while it was busy and commits it as one
//! transaction (group commit): one fsync of the write-ahead log for a
//! whole worker batch, or for several. Whatever must be durable before it
//! is answered waits for that commit (a barrier): a purchase batch's
//! decisions, a settled result, a sale change from the admin API, a
//! cancellation, and a final result read back. Admissions do not wait: a request is only
//! answered once decided, and its decision's commit carries its admission.
//! An admission decided within a few milliseconds is written once, with its
//! decision; one that waits longer is written pending on its own.
//!
//! Reads that gateways make per request (the sale, the sold-out flag, a
//! request's record) come from memory; the order feed and the per-sale
//! order list read the database (committed orders only) on a second,
//! read-only connection.
//!
//! Opening is recovery: the database is checked (`PRAGMA quick_check`),
//! sales, holdings, results and keys within the retention are loaded, and
//! requests that were admitted but never decided end as `expired` (no
//! stock was taken for them). A lock file (`flock`) keeps a second process
//! out of the directory.

#![forbid(unsafe_code)]

mod schema;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use seckill_inventory::{
    check_head, seq_cursor, wait_for_orders, Admission, Cancellation, Decision, FeedPage,
    FeedQuery, Inventory, InventoryError, MemoryInventory, OrderEvent, OrderEventKind, Outcome,
    Purchase, Put, RequestRecord, SaleEvent, SaleSpec, SaleStatus,
};
use tokio::sync::{broadcast, watch};

use writer::Link;

/// The database file in the data directory.
pub const DB_FILE: &str = "seckill.db";
/// The lock file in the data directory; held (`flock`) while a process
/// has the directory open.
pub const LOCK_FILE: &str = "LOCK";

/// Why the data directory cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the directory's lock.
    #[error(
        "the data directory {} is in use by another process (it holds {}); \
         one process per data directory",
        .0.display(), .0.join(LOCK_FILE).display()
    )]
    Locked(PathBuf),
    /// The directory, its lock file or its database cannot be used:
    /// unreadable, corrupt, not a store of this program, or of a newer
    /// version.
    #[error("cannot open the data directory {}: {message}", .dir.display())]
    Unusable { dir: PathBuf, message: String },
}

impl OpenError {
    fn unusable(dir: &Path, message: impl std::fmt::Display) -> Self {
        // One line, whatever the cause says.
        let message = message.to_string().replace('\n', " ");
        OpenError::Unusable {
            dir: dir.to_path_buf(),
            message,
        }
    }
}

/// The durable [`Inventory`].
#[derive(Clone)]
pub struct SqliteInventory {
    inner: Arc<Inner>,
}

struct Inner {
    memory: MemoryInventory,
    link: Arc<Link>,
    /// Read-only connection for the order feed (WAL: it never blocks the
    /// writer, and sees committed transactions only).
    reader: Arc<Mutex<Connection>>,
    /// Sequence number of the last committed order.
    committed: watch::Receiver<u64>,
}

impl SqliteInventory {
    /// Opens (creating if needed) the store in `dir` and recovers it;
    /// results and idempotency keys are kept for `retention`. Runs its
    /// blocking work on the calling thread: call it at start.
    pub fn open(dir: &Path, retention: Duration) -> Result<SqliteInventory, OpenError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| OpenError::unusable(dir, format!("cannot create it: {e}")))?;
        let lock = lock(dir)?;
        let path = dir.join(DB_FILE);
        let mut conn = Connection::open(&path).map_err(|e| OpenError::unusable(dir, e))?;
        let retention_ms = retention.as_millis() as u64;
        let recovered =
            schema::recover(&mut conn, retention_ms).map_err(|e| OpenError::unusable(dir, e))?;
        let reader = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| OpenError::unusable(dir, e))?;
        if recovered.expired > 0 {
            tracing::warn!(
                requests = recovered.expired,
                "requests admitted but not decided before the last stop end as expired"
            );
        }
        tracing::info!(
            dir = %dir.display(),
            sales = recovered.snapshot.sales.len(),
            orders = recovered.last_seq,
            "data directory opened"
        );
        let (committed_tx, committed) = watch::channel(recovered.last_seq);
        let link = writer::spawn(conn, lock, recovered.last_seq, retention_ms, committed_tx)
            .map_err(|e| OpenError::unusable(dir, format!("cannot start its writer: {e}")))?;
        let memory = MemoryInventory::restored(retention, link.clone(), recovered.snapshot);
        Ok(SqliteInventory {
            inner: Arc::new(Inner {
                memory,
                link,
                reader: Arc::new(Mutex::new(reader)),
                committed,
            }),
        })
    }

    fn mem(&self) -> Result<&MemoryInventory, InventoryError> {
        self.inner.link.check()?;
        Ok(&self.inner.memory)
    }

    /// Waits until every change made before the call is on disk.
    async fn durable(&self) -> Result<(), InventoryError> {
        self.inner.link.barrier().await
    }

    /// Runs a read on the read-only connection, off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, InventoryError> {
        let reader = self.inner.reader.clone();
        tokio::task::spawn_blocking(move || f(&reader.lock().unwrap_or_else(|e| e.into_inner())))
            .await
            .map_err(|e| InventoryError::Unavailable(format!("order read failed: {e}")))?
            .map_err(|e| InventoryError::Unavailable(format!("order read failed: {e}")))
    }
}

/// Takes the directory's lock file, or says who has it.
fn lock(dir: &Path) -> Result<File, OpenError> {
    use std::io::Write;
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| OpenError::unusable(dir, format!("{}: {e}", path.display())))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => return Err(OpenError::Locked(dir.to_path_buf())),
        Err(e) => return Err(OpenError::unusable(dir, format!("{}: {e}", path.display()))),
    }
    // For an operator who wonders who holds it.
    let _ = file.set_len(0);
    let _ = writeln!(file, "{}", std::process::id());
    Ok(file)
}

fn order_of(row: &rusqlite::Row<'_>) -> rusqlite::Result<OrderEvent> {
    Ok(OrderEvent {
        order_id: row.get(0)?,
        sale_id: row.get(1)?,
        user_id: row.get(2)?,
        quantity: row.get(3)?,
        request_id: row.get(4)?,
        at_ms: u64::try_from(row.get::<_, i64>(5)?).unwrap_or(0),
        // The schema allows only the two.
        kind: if row.get_ref(6)?.as_str()? == "cancelled" {
            OrderEventKind::Cancelled
        } else {
            OrderEventKind::Placed
        },
    })
}

const ORDER_COLUMNS: &str = "order_id, sale_id, user_id, quantity, request_id, at_ms, kind";

/// One page of committed orders after `after`, read in one transaction so
/// the head and the rows agree.
fn feed_page(
    conn: &Connection,
    after: u64,
    sale_id: Option<&str>,
    limit: usize,
) -> Result<FeedPage, InventoryError> {
    let read = || -> rusqlite::Result<(u64, Vec<(u64, OrderEvent)>)> {
        let tx = conn.unchecked_transaction()?;
        let head: Option<i64> = tx
            .query_row("SELECT max(seq) FROM orders", [], |r| r.get(0))
            .optional()?
            .flatten();
        let head = head.unwrap_or(0) as u64;
        let sql = format!(
            "SELECT {ORDER_COLUMNS}, seq FROM orders WHERE seq > ?1 AND seq <= ?2 \
             AND (?3 IS NULL OR sale_id = ?3) ORDER BY seq LIMIT ?4"
        );
        let mut stmt = tx.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(
                rusqlite::params![after as i64, head as i64, sale_id, limit as i64],
                |row| Ok((row.get::<_, i64>(7)? as u64, order_of(row)?)),
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok((head, rows))
    };
    let (head, rows) =
        read().map_err(|e| InventoryError::Unavailable(format!("order read failed: {e}")))?;
    check_head(after, head)?;
    // A full page resumes after its last order; a shorter one has seen
    // everything up to the head.
    let next = match rows.last() {
        Some((seq, _)) if rows.len() >= limit => *seq,
        _ => head,
    };
    Ok(FeedPage {
        orders: rows.into_iter().map(|(_, o)| o).collect(),
        next: next.to_string(),
    })
}

#[async_trait]
impl Inventory for SqliteInventory {
    async fn put_sale(&self, spec: SaleSpec) -> Result<Put, InventoryError> {
        let put = self.mem()?.put_sale(spec).await?;
        self.durable().await?;
        Ok(put)
    }

    async fn update_sale(&self, spec: SaleSpec) -> Result<SaleStatus, InventoryError> {
        let status = self.mem()?.update_sale(spec).await?;
        self.durable().await?;
        Ok(status)
    }

    async fn remove_sale(&self, sale_id: &str) -> Result<bool, InventoryError> {
        let removed = self.mem()?.remove_sale(sale_id).await?;
        self.durable().await?;
        Ok(removed)
    }

    async fn removed(&self, sale_id: &str) -> Result<bool, InventoryError> {
        self.mem()?.removed(sale_id).await
    }

    async fn sale(&self, sale_id: &str) -> Result<Option<SaleStatus>, InventoryError> {
        self.mem()?.sale(sale_id).await
    }

    async fn sales(&self) -> Result<Vec<SaleStatus>, InventoryError> {
        self.mem()?.sales().await
    }

    async fn admit(&self, purchase: &Purchase) -> Result<Admission, InventoryError> {
        // Not waited for: see the crate's documentation.
        self.mem()?.admit(purchase).await
    }

    async fn request_of_key(
        &self,
        sale_id: &str,
        user_id: &str,
        key: &str,
    ) -> Result<Option<String>, InventoryError> {
        self.mem()?.request_of_key(sale_id, user_id, key).await
    }

    async fn withdraw(&self, purchase: &Purchase) -> Result<(), InventoryError> {
        self.mem()?.withdraw(purchase).await
    }

    async fn purchase(&self, batch: &[Purchase]) -> Result<Vec<Decision>, InventoryError> {
        let decisions = self.mem()?.purchase(batch).await?;
        self.durable().await?;
        Ok(decisions)
    }

    async fn settle(
        &self,
        purchase: &Purchase,
        outcome: Outcome,
    ) -> Result<Decision, InventoryError> {
        let decision = self.mem()?.settle(purchase, outcome).await?;
        self.durable().await?;
        Ok(decision)
    }

    async fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, InventoryError> {
        let record = self.mem()?.request(request_id).await?;
        // A result read back (a repeat of its key, a poll) is one somebody
        // may act on: only once it is on disk.
        if record.as_ref().is_some_and(|r| r.outcome.is_some()) {
            self.durable().await?;
        }
        Ok(record)
    }

    async fn orders(&self, sale_id: &str) -> Result<Vec<OrderEvent>, InventoryError> {
        self.inner.link.check()?;
        let sale_id = sale_id.to_string();
        self.read(move |conn| {
            let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE sale_id = ?1 ORDER BY seq");
            let mut stmt = conn.prepare_cached(&sql)?;
            let orders = stmt.query_map([&sale_id], order_of)?.collect();
            orders
        })
        .await
    }

    async fn feed(&self, q: &FeedQuery) -> Result<FeedPage, InventoryError> {
        self.inner.link.check()?;
        let after = seq_cursor(q.after.as_deref())?;
        let limit = q.limit.max(1);
        wait_for_orders(self.inner.committed.clone(), q.wait, || {
            let reader = self.inner.reader.clone();
            let sale_id = q.sale_id.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let conn = reader.lock().unwrap_or_else(|e| e.into_inner());
                    feed_page(&conn, after, sale_id.as_deref(), limit)
                })
                .await
                .map_err(|e| InventoryError::Unavailable(format!("order read failed: {e}")))?
            }
        })
        .await
    }

    async fn cancel_order(&self, order_id: &str) -> Result<Cancellation, InventoryError> {
        let cancellation = self.mem()?.cancel_order(order_id).await?;
        // A repeat too: the first cancellation may still be on its way.
        self.durable().await?;
        Ok(cancellation)
    }

    fn events(&self) -> broadcast::Receiver<SaleEvent> {
        self.inner.memory.events()
    }

    async fn ping(&self) -> Result<(), InventoryError> {
        self.inner.link.check()
    }
}
