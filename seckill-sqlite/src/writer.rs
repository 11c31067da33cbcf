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
//! Admissions take another way: they wait in a buffer, without waking the
//! writer each, for up to [`LINGER`]. Most are decided within it, and the
//! decision's commit writes the request once, decided; the others are
//! written pending when their linger ends, so an admission is on disk as
//! soon as before, without a row written twice or a wake per request.
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

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use rustc_hash::FxHashMap;
use seckill_inventory::{now_ms, Change, InventoryError, Journal, Outcome};
use tokio::sync::{oneshot, watch};

/// Most steps in one transaction: bounds a group's time, so the first
/// barrier of a long queue is not held back by all the rest.
const MAX_GROUP: usize = 4096;
/// How long changes nobody waits for (admissions above all) may wait for
/// a commit that somebody waits for, before they are committed on their
/// own.
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
    /// The admissions buffer was empty and is not any more.
    Admitted,
    /// Answered once everything before it is committed.
    Barrier(oneshot::Sender<()>),
}

/// An admission's changes, waiting to be written.
struct Admission {
    at: Instant,
    changes: Vec<Change>,
}

/// Admissions not written yet: in arrival order, and found by their
/// request, so that a commit takes those its decisions refer to without
/// looking at every admission still waiting (hundreds in a spike).
#[derive(Default)]
struct Waiting {
    /// By arrival number: the oldest first.
    by_arrival: BTreeMap<u64, Admission>,
    /// The arrival number of each request's admission.
    arrival_of: FxHashMap<String, u64>,
    arrivals: u64,
}

impl Waiting {
    /// Adds an admission; true when it is the only one.
    fn push(&mut self, request_id: String, admission: Admission) -> bool {
        self.arrivals += 1;
        self.arrival_of.insert(request_id, self.arrivals);
        self.by_arrival.insert(self.arrivals, admission);
        self.by_arrival.len() == 1
    }

    fn oldest(&self) -> Option<Instant> {
        self.by_arrival.first_key_value().map(|(_, a)| a.at)
    }

    fn take(&mut self, request_id: &str) -> Option<(u64, Admission)> {
        let n = self.arrival_of.remove(request_id)?;
        Some((n, self.by_arrival.remove(&n)?))
    }

    fn take_oldest(&mut self) -> Option<(u64, Admission)> {
        let (n, a) = self.by_arrival.pop_first()?;
        if let Some(id) = a.changes.iter().find_map(request_of) {
            self.arrival_of.remove(id);
        }
        Some((n, a))
    }
}

type Admissions = Arc<Mutex<Waiting>>;

/// The inventory's side of the writer: its journal, its barriers, and
/// whether it failed.
pub(crate) struct Link {
    tx: mpsc::Sender<Msg>,
    admissions: Admissions,
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

    /// Waits until every step recorded before the call is committed, but
    /// for admissions that no step since refers to (see
    /// [`Journal::admitted`]).
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

    fn admitted(&self, changes: Vec<Change>) {
        let Some(id) = changes.iter().find_map(request_of).map(str::to_string) else {
            return self.record(changes);
        };
        let admission = Admission {
            at: Instant::now(),
            changes,
        };
        let first = self.admissions.lock().unwrap().push(id, admission);
        // Only the first wakes the writer: it then knows when the oldest
        // one is due, and looks at the buffer at every commit.
        if first {
            let _ = self.tx.send(Msg::Admitted);
        }
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
    let admissions = Admissions::default();
    let mut writer = Writer {
        admissions: admissions.clone(),
        conn,
        seq: last_seq,
        retention_ms,
        committed,
        failed: failed.clone(),
        since_checkpoint: 0,
        pending: FxHashMap::default(),
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
    Ok(Arc::new(Link {
        tx,
        admissions,
        failed,
    }))
}

struct Writer {
    admissions: Admissions,
    conn: Connection,
    /// Sequence number of the last order written.
    seq: u64,
    retention_ms: u64,
    committed: watch::Sender<u64>,
    failed: Arc<OnceLock<String>>,
    since_checkpoint: u32,
    /// The row of each request written while pending, by request id: its
    /// decision updates that row. Bounded by the requests in the queues.
    pending: FxHashMap<String, i64>,
    last_sweep: Instant,
    commits: metrics::Counter,
    fsyncs: metrics::Counter,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let mut group = Vec::new();
        loop {
            let oldest = self.oldest_admission();
            let wait = oldest.map_or(IDLE, |at| {
                (at + LINGER).saturating_duration_since(Instant::now())
            });
            let closed = match rx.recv_timeout(wait) {
                Ok(m) => {
                    group.push(m);
                    // Changes nobody waits for linger for company, up to
                    // when the oldest admission is due.
                    let now = Instant::now();
                    let until = oldest.map_or(now + LINGER, |at| (at + LINGER).min(now + LINGER));
                    gather(&rx, &mut group, until)
                }
                // Admissions whose linger ran out go on their own.
                Err(RecvTimeoutError::Timeout) if oldest.is_some() => false,
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.housekeeping(true) {
                        return self.fail(e);
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => true,
            };
            // Closed: everything left is written, and a short log left behind.
            if let Err(e) = self
                .commit(&mut group, closed)
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

    fn oldest_admission(&self) -> Option<Instant> {
        self.admissions.lock().unwrap().oldest()
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

    /// Commits the group's changes, with the admissions due, in one
    /// transaction, then releases its barriers. A group of barriers alone
    /// needs no commit: everything before them is committed already.
    fn commit(&mut self, group: &mut Vec<Msg>, all: bool) -> rusqlite::Result<()> {
        let mut barriers = Vec::new();
        let mut changes = Vec::new();
        for m in group.drain(..) {
            match m {
                Msg::Changes(c) => changes.extend(c),
                Msg::Barrier(b) => barriers.push(b),
                Msg::Admitted => {}
            }
        }
        // Taken after the group's messages: an admission is recorded
        // before any change that refers to its request.
        let mut due = take_due(&self.admissions, &changes, all, Instant::now());
        if !due.is_empty() || !changes.is_empty() {
            due.append(&mut changes);
            let tx = self.conn.transaction()?;
            let mut seq = self.seq;
            for c in coalesce(due) {
                apply(&tx, c, &mut seq, &mut self.pending)?;
            }
            tx.commit()?;
            self.seq = seq;
            self.commits.increment(1);
            self.fsyncs.increment(1);
            self.since_checkpoint += 1;
            self.committed.send_replace(seq);
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
/// arrives before `deadline`. Changes nobody waits for so ride along with
/// the next commit somebody does wait for, instead of starting an fsync of
/// their own that the next barrier would queue behind. True when the
/// channel closed.
fn gather(rx: &mpsc::Receiver<Msg>, group: &mut Vec<Msg>, deadline: Instant) -> bool {
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

/// The admissions to write with `changes`, in arrival order: those whose
/// linger ran out by `now`, those `changes` refer to (a decision replaces
/// its admission's record, so it must not be written before it), or, with
/// `all`, every one. The others stay, for a later commit.
fn take_due(
    admissions: &Mutex<Waiting>,
    changes: &[Change],
    all: bool,
    now: Instant,
) -> Vec<Change> {
    let mut waiting = admissions.lock().unwrap();
    let mut due: Vec<(u64, Admission)> = changes
        .iter()
        .filter_map(request_of)
        .filter_map(|id| waiting.take(id))
        .collect();
    while waiting.oldest().is_some_and(|at| all || now >= at + LINGER) {
        due.extend(waiting.take_oldest());
    }
    drop(waiting);
    due.sort_unstable_by_key(|(n, _)| *n);
    due.into_iter().flat_map(|(_, a)| a.changes).collect()
}

/// The request a change is about, if any.
fn request_of(change: &Change) -> Option<&str> {
    match change {
        Change::Request { record, .. } => Some(&record.request_id),
        Change::Withdrawn { request_id }
        | Change::KeyClaimed { request_id, .. }
        | Change::KeyReleased { request_id, .. } => Some(request_id),
        Change::Order(o) => Some(&o.request_id),
        Change::Sale { .. } => None,
    }
}

/// The group's changes in order, with a request's record written once: a
/// later record of a request replaces an earlier one of the same group
/// (it carries every field), so an admission decided within its group
/// costs one row write, not two. A withdrawal of a request admitted in the
/// group takes its record away instead of deleting a row; one of a
/// request admitted before is kept.
fn coalesce(changes: Vec<Change>) -> impl Iterator<Item = Change> {
    let mut keep = vec![true; changes.len()];
    let mut last: FxHashMap<&str, usize> = FxHashMap::default();
    for (i, c) in changes.iter().enumerate() {
        match c {
            Change::Request { record, .. } => {
                if let Some(before) = last.insert(&record.request_id, i) {
                    keep[before] = false;
                }
            }
            Change::Withdrawn { request_id } => {
                if let Some(before) = last.remove(request_id.as_str()) {
                    let pending = matches!(
                        &changes[before],
                        Change::Request { record, .. } if record.outcome.is_none()
                    );
                    if pending {
                        keep[before] = false;
                        keep[i] = false;
                    }
                }
            }
            _ => {}
        }
    }
    changes
        .into_iter()
        .zip(keep)
        .filter_map(|(c, keep)| keep.then_some(c))
}

/// Writes one change.
fn apply(
    tx: &rusqlite::Transaction<'_>,
    change: Change,
    seq: &mut u64,
    pending: &mut FxHashMap<String, i64>,
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
            // A decision updates the row its admission wrote, if one did.
            // Otherwise (decided in the admission's group) it is the row,
            // but for a success: its order, written in the same
            // transaction, stands for it (one row per unit sold).
            if let Some(rid) = pending.remove(&record.request_id) {
                tx.prepare_cached(
                    "UPDATE requests SET status = ?1, detail = ?2, at_ms = ?3 WHERE rid = ?4",
                )?
                .execute(params![status, detail, at_ms as i64, rid])?;
            } else if !matches!(record.outcome, Some(Outcome::Success { .. })) {
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
    use seckill_inventory::RequestRecord;

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
            ["a:true"]
        );
        // A withdrawal of a request admitted in an earlier group deletes
        // its row; one after the decision changes nothing, and is kept.
        assert_eq!(
            shape(vec![
                Change::Withdrawn {
                    request_id: "b".into()
                },
                record("c", Some(Outcome::Expired)),
                Change::Withdrawn {
                    request_id: "c".into()
                },
            ]),
            ["b:withdrawn", "c:true", "c:withdrawn"]
        );
    }

    #[test]
    fn changes_nobody_waits_for_linger_a_barrier_does_not() {
        let (tx, rx) = mpsc::channel();
        // Alone, a change waits out the linger for company, then goes.
        let mut group = vec![Msg::Changes(vec![])];
        let started = Instant::now();
        assert!(!gather(&rx, &mut group, Instant::now() + LINGER));
        assert!(started.elapsed() >= LINGER);
        assert_eq!(group.len(), 1);
        // With a barrier queued, what is queued goes at once, the barrier
        // with it.
        let (b, _answer) = oneshot::channel();
        tx.send(Msg::Changes(vec![])).unwrap();
        tx.send(Msg::Barrier(b)).unwrap();
        let mut group = vec![Msg::Changes(vec![])];
        assert!(!gather(&rx, &mut group, Instant::now() + LINGER));
        assert_eq!(group.len(), 3);
        assert!(matches!(group[2], Msg::Barrier(_)));
        // A closed channel ends the group at once.
        drop(tx);
        let mut group = vec![Msg::Changes(vec![])];
        assert!(gather(&rx, &mut group, Instant::now() + LINGER));
    }

    #[test]
    fn admissions_wait_until_due_referred_to_or_the_end() {
        let buffer = Mutex::new(Waiting::default());
        let t0 = Instant::now();
        let admit = |id: &str, at: Instant| {
            let admission = Admission {
                at,
                changes: vec![record(id, None)],
            };
            buffer.lock().unwrap().push(id.to_string(), admission)
        };
        assert!(admit("old", t0), "the first into an empty buffer");
        assert!(!admit("young", t0 + LINGER));
        admit("decided", t0 + LINGER);
        admit("quiet", t0 + LINGER);
        let decision = [record("decided", Some(Outcome::SoldOut))];
        let ids = |changes: Vec<Change>| -> Vec<String> {
            changes
                .iter()
                .filter_map(request_of)
                .map(str::to_string)
                .collect()
        };
        // At the old one's due time: it, and the one the group decides.
        assert_eq!(
            ids(take_due(&buffer, &decision, false, t0 + LINGER)),
            ["old", "decided"]
        );
        // The rest waits, in order, ahead of what came meanwhile.
        admit("later", t0 + LINGER * 3);
        assert!(take_due(&buffer, &[], false, t0 + LINGER).is_empty());
        assert_eq!(
            ids(take_due(&buffer, &[], false, t0 + LINGER * 2)),
            ["young", "quiet"]
        );
        // At the end, everything.
        assert_eq!(ids(take_due(&buffer, &[], true, t0)), ["later"]);
        let left = buffer.lock().unwrap();
        assert!(left.by_arrival.is_empty() && left.arrival_of.is_empty());
    }
}
