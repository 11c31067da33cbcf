//! The one thread that writes the database: group commit.
//!
//! Steps arrive on a channel ([`Link`], the memory inventory's journal) in
//! the order they were made. The writer takes the first, then everything
//! that queued up behind it (and, until a barrier asks for a commit, what
//! arrives within a few milliseconds), applies it all in one transaction,
//! writing each request's row once, and commits it with one fsync of the
//! write-ahead log; then it releases every barrier that arrived in that
//! group. Under load a group holds several worker batches, so the fsyncs
//! per second stay near what the disk does while the purchases per fsync
//! grow with the load.
//!
//! The channel is unbounded on purpose: a step must not block under a sale
//! lock, and what can be on it is bounded upstream (admissions by the token
//! buckets and the request queues, decisions by the workers, which wait for
//! their commit before taking another batch).
//!
//! A failed write is final: the memory inventory has already made the
//! change, and what was not written must not be sold on. The writer stops,
//! every waiting and later call fails (`Unavailable`, and `/readyz` says
//! so), and a restart recovers the database as it was last committed.

use std::collections::HashMap;
use std::fs::File;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use seckill_inventory::{now_ms, Change, InventoryError, Journal};
use tokio::sync::{oneshot, watch};

/// Most steps in one transaction: bounds a group's time, so the first
/// barrier of a long queue is not held back by all the rest.
const MAX_GROUP: usize = 4096;
/// How long changes nobody waits for (admissions) may wait for a commit
/// that somebody waits for, before they are committed on their own.
const LINGER: Duration = Duration::from_millis(10);
/// Commits between two checkpoints (copying the log into the database,
/// so the log does not grow without end).
const CHECKPOINT_EVERY: u32 = 200;
/// A writer without work for this long checkpoints what it committed.
const IDLE: Duration = Duration::from_secs(1);
/// How often records and keys past the retention are deleted.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

enum Msg {
    Changes(Vec<Change>),
    /// Answered once everything before it is committed.
    Barrier(oneshot::Sender<()>),
}

/// The inventory's side of the writer: its journal, its barriers, and
/// whether it failed.
pub(crate) struct Link {
    tx: mpsc::Sender<Msg>,
    failed: Arc<OnceLock<String>>,
}

impl Link {
    /// `Unavailable` once the writer failed.
    pub(crate) fn check(&self) -> Result<(), InventoryError> {
        match self.failed.get() {
            None => Ok(()),
            Some(why) => Err(failure(why)),
        }
    }

    /// Waits until every step recorded before the call is committed.
    pub(crate) async fn barrier(&self) -> Result<(), InventoryError> {
        let (tx, rx) = oneshot::channel();
        let sent = self.tx.send(Msg::Barrier(tx)).is_ok();
        if sent && rx.await.is_ok() {
            return Ok(());
        }
        self.check()?;
        Err(failure("the writer stopped"))
    }
}

fn failure(why: &str) -> InventoryError {
    InventoryError::Unavailable(format!(
        "the data directory cannot be written ({why}); restart the gateway once it can"
    ))
}

impl Journal for Link {
    fn record(&self, changes: Vec<Change>) {
        // A writer that stopped has set `failed`; every caller sees it.
        let _ = self.tx.send(Msg::Changes(changes));
    }
}

/// Starts the writer on `conn`; it holds the directory's `lock` until it
/// ends (when the last [`Link`] is dropped, or on a failure).
pub(crate) fn spawn(
    conn: Connection,
    lock: File,
    last_seq: u64,
    retention_ms: u64,
    committed: watch::Sender<u64>,
) -> std::io::Result<Arc<Link>> {
    let (tx, rx) = mpsc::channel();
    let failed = Arc::new(OnceLock::new());
    let mut writer = Writer {
        conn,
        seq: last_seq,
        retention_ms,
        committed,
        failed: failed.clone(),
        since_checkpoint: 0,
        pending: HashMap::new(),
        last_sweep: Instant::now(),
        commits: metrics::counter!("seckill_store_commits_total"),
        fsyncs: metrics::counter!("seckill_store_fsyncs_total"),
    };
    std::thread::Builder::new()
        .name("seckill-store".into())
        .spawn(move || {
            let _lock = lock;
            writer.run(rx);
        })?;
    Ok(Arc::new(Link { tx, failed }))
}

struct Writer {
    conn: Connection,
    /// Sequence number of the last order written.
    seq: u64,
    retention_ms: u64,
    committed: watch::Sender<u64>,
    failed: Arc<OnceLock<String>>,
    since_checkpoint: u32,
    /// The row of each request written while pending, by request id: its
    /// decision updates that row. Bounded by the requests in the queues.
    pending: HashMap<String, i64>,
    last_sweep: Instant,
    commits: metrics::Counter,
    fsyncs: metrics::Counter,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let mut group = Vec::new();
        loop {
            match rx.recv_timeout(IDLE) {
                Ok(m) => group.push(m),
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.housekeeping(true) {
                        return self.fail(e);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Everything is committed; leave a short log behind.
                    self.checkpoint();
                    return;
                }
            }
            let closed = gather(&rx, &mut group);
            if let Err(e) = self
                .commit(&mut group)
                .and_then(|()| self.housekeeping(false))
            {
                return self.fail(e);
            }
            if closed {
                self.checkpoint();
                return;
            }
        }
    }

    fn fail(&self, e: rusqlite::Error) {
        tracing::error!(
            error = %e,
            "the durable store cannot write; refusing purchases until the gateway is restarted"
        );
        let _ = self.failed.set(e.to_string());
        // Returning drops the receiver (later steps fail to send) and the
        // pending barriers (their callers see the failure).
    }

    /// Commits the group's changes in one transaction, then releases its
    /// barriers. A group of barriers alone needs no commit: everything
    /// before them is committed already.
    fn commit(&mut self, group: &mut Vec<Msg>) -> rusqlite::Result<()> {
        let mut barriers = Vec::new();
        if group.iter().any(|m| matches!(m, Msg::Changes(_))) {
            let mut changes = Vec::new();
            for m in group.drain(..) {
                match m {
                    Msg::Changes(c) => changes.extend(c),
                    Msg::Barrier(b) => barriers.push(b),
                }
            }
            let tx = self.conn.transaction()?;
            let mut seq = self.seq;
            for c in coalesce(changes) {
                apply(&tx, c, &mut seq, &mut self.pending)?;
            }
            tx.commit()?;
            self.seq = seq;
            self.commits.increment(1);
            self.fsyncs.increment(1);
            self.since_checkpoint += 1;
            self.committed.send_replace(seq);
        } else {
            barriers.extend(group.drain(..).filter_map(|m| match m {
                Msg::Barrier(b) => Some(b),
                Msg::Changes(_) => None,
            }));
        }
        for b in barriers {
            let _ = b.send(());
        }
        Ok(())
    }

    /// Checkpoints and sweeps when due: after the barriers were released,
    /// so no answer waits for them.
    fn housekeeping(&mut self, idle: bool) -> rusqlite::Result<()> {
        if self.since_checkpoint >= CHECKPOINT_EVERY || (idle && self.since_checkpoint > 0) {
            self.checkpoint();
        }
        if self.last_sweep.elapsed() >= SWEEP_EVERY {
            self.last_sweep = Instant::now();
            let cutoff = now_ms().saturating_sub(self.retention_ms) as i64;
            let tx = self.conn.transaction()?;
            tx.execute("DELETE FROM requests WHERE at_ms < ?1", [cutoff])?;
            tx.execute("DELETE FROM idempotency_keys WHERE at_ms < ?1", [cutoff])?;
            tx.commit()?;
            self.commits.increment(1);
            self.fsyncs.increment(1);
            self.since_checkpoint += 1;
        }
        Ok(())
    }

    /// Copies the log into the database without waiting for readers
    /// (PASSIVE). It fsyncs the log and the database: two fsyncs. A
    /// checkpoint that cannot finish now is done by a later one.
    fn checkpoint(&mut self) {
        match self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        {
            Ok(()) => {
                self.since_checkpoint = 0;
                self.fsyncs.increment(2);
            }
            Err(e) => tracing::warn!(error = %e, "checkpoint failed; the next one retries"),
        }
    }
}

/// Adds to `group` (which holds one message) what is to be committed with
/// it: everything queued now, and, until a barrier asks for a commit, what
/// arrives within [`LINGER`]. Changes nobody waits for (admissions) so
/// ride along with the next commit somebody does wait for, instead of
/// starting an fsync of their own that the next barrier would queue
/// behind. True when the channel closed.
fn gather(rx: &mpsc::Receiver<Msg>, group: &mut Vec<Msg>) -> bool {
    let deadline = Instant::now() + LINGER;
    let mut waited_for = matches!(group[0], Msg::Barrier(_));
    while group.len() < MAX_GROUP {
        let m = match rx.try_recv() {
            Ok(m) => m,
            Err(mpsc::TryRecvError::Disconnected) => return true,
            Err(mpsc::TryRecvError::Empty) if waited_for => break,
            Err(mpsc::TryRecvError::Empty) => {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => return true,
                }
            }
        };
        waited_for |= matches!(m, Msg::Barrier(_));
        group.push(m);
    }
    false
}

/// The group's changes in order, with a request's record written once: a
/// later record of a request replaces an earlier one of the same group
/// (it carries every field), so an admission decided within its group
/// costs one row write, not two. A withdrawal in between keeps both.
fn coalesce(changes: Vec<Change>) -> impl Iterator<Item = Change> {
    let mut slots: Vec<Option<Change>> = Vec::with_capacity(changes.len());
    let mut last: HashMap<String, usize> = HashMap::new();
    for c in changes {
        match &c {
            Change::Request { record, .. } => {
                if let Some(i) = last.insert(record.request_id.clone(), slots.len()) {
                    slots[i] = None;
                }
            }
            Change::Withdrawn { request_id } => {
                last.remove(request_id);
            }
            _ => {}
        }
        slots.push(Some(c));
    }
    slots.into_iter().flatten()
}

/// Writes one change.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    change: Change,
    seq: &mut u64,
    pending: &mut HashMap<String, i64>,
) -> rusqlite::Result<()> {
    match change {
        Change::Sale { spec, removed } => {
            let json = serde_json::to_string(&spec).expect("a sale spec serializes");
            tx.prepare_cached(
                "INSERT INTO sales (sale_id, spec, removed) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (sale_id) DO UPDATE SET spec = excluded.spec, removed = excluded.removed",
            )?
            .execute(params![spec.sale_id, json, removed])?;
        }
        Change::Request { record, at_ms } => {
            let (status, detail) = match &record.outcome {
                Some(o) => {
                    let (status, detail) = o.parts();
                    (Some(status), detail)
                }
                None => (None, ""),
            };
            // A decision updates the row its admission wrote, if one did;
            // otherwise (decided in the admission's group) it is the row.
            if let Some(rid) = pending.remove(&record.request_id) {
                tx.prepare_cached(
                    "UPDATE requests SET status = ?1, detail = ?2, at_ms = ?3 WHERE rid = ?4",
                )?
                .execute(params![status, detail, at_ms as i64, rid])?;
            } else {
                tx.prepare_cached(
                    "INSERT INTO requests \
                     (request_id, sale_id, user_id, quantity, status, detail, at_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    record.request_id,
                    record.sale_id,
                    record.user_id,
                    record.quantity,
                    status,
                    detail,
                    at_ms as i64
                ])?;
                if status.is_none() {
                    pending.insert(record.request_id, tx.last_insert_rowid());
                }
            }
        }
        Change::Withdrawn { request_id } => {
            if let Some(rid) = pending.remove(&request_id) {
                tx.prepare_cached("DELETE FROM requests WHERE rid = ?1 AND status IS NULL")?
                    .execute([rid])?;
            }
        }
        Change::KeyClaimed {
            sale_id,
            user_id,
            key,
            request_id,
            at_ms,
        } => {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO idempotency_keys (sale_id, user_id, key, request_id, at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![sale_id, user_id, key, request_id, at_ms as i64])?;
        }
        Change::KeyReleased {
            sale_id,
            user_id,
            key,
            request_id,
        } => {
            tx.prepare_cached(
                "DELETE FROM idempotency_keys \
                 WHERE sale_id = ?1 AND user_id = ?2 AND key = ?3 AND request_id = ?4",
            )?
            .execute(params![sale_id, user_id, key, request_id])?;
        }
        Change::Order(o) => {
            *seq += 1;
            tx.prepare_cached(
                "INSERT INTO orders \
                 (seq, order_id, kind, sale_id, user_id, quantity, request_id, at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                *seq as i64,
                o.order_id,
                o.kind.as_str(),
                o.sale_id,
                o.user_id,
                o.quantity,
                o.request_id,
                o.at_ms as i64
            ])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use seckill_inventory::{Outcome, RequestRecord};

    fn record(id: &str, outcome: Option<Outcome>) -> Change {
        Change::Request {
            record: RequestRecord {
                request_id: id.into(),
                sale_id: "s".into(),
                user_id: "u".into(),
                quantity: 1,
                outcome,
            },
            at_ms: 1,
        }
    }

    fn shape(changes: Vec<Change>) -> Vec<String> {
        coalesce(changes)
            .map(|c| match c {
                Change::Request { record, .. } => {
                    format!("{}:{}", record.request_id, record.outcome.is_some())
                }
                Change::Withdrawn { request_id } => format!("{request_id}:withdrawn"),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn a_request_decided_in_its_group_is_written_once_and_last() {
        let sold = Some(Outcome::SoldOut);
        assert_eq!(
            shape(vec![
                record("a", None),
                record("b", None),
                record("a", sold.clone()),
            ]),
            ["b:false", "a:true"]
        );
        // A withdrawal deletes the pending row: what follows it is kept.
        assert_eq!(
            shape(vec![
                record("a", None),
                Change::Withdrawn {
                    request_id: "a".into()
                },
                record("a", sold),
            ]),
            ["a:false", "a:withdrawn", "a:true"]
        );
    }

    #[test]
    fn changes_nobody_waits_for_linger_a_barrier_does_not() {
        let (tx, rx) = mpsc::channel();
        // Alone, a change waits out the linger for company, then goes.
        let mut group = vec![Msg::Changes(vec![])];
        let started = Instant::now();
        assert!(!gather(&rx, &mut group));
        assert!(started.elapsed() >= LINGER);
        assert_eq!(group.len(), 1);
        // With a barrier queued, what is queued goes at once, the barrier
        // with it.
        let (b, _answer) = oneshot::channel();
        tx.send(Msg::Changes(vec![])).unwrap();
        tx.send(Msg::Barrier(b)).unwrap();
        let mut group = vec![Msg::Changes(vec![])];
        assert!(!gather(&rx, &mut group));
        assert_eq!(group.len(), 3);
        assert!(matches!(group[2], Msg::Barrier(_)));
        // A closed channel ends the group at once.
        drop(tx);
        let mut group = vec![Msg::Changes(vec![])];
        assert!(gather(&rx, &mut group));
    }
}
