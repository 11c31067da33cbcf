//! The Redis [`RequestQueue`]: one stream per sale with one consumer group.
//!
//! * `enqueue` is a script that refuses when the sale's queue is closed or
//!   holds its capacity (the stream's length, since acknowledged entries are
//!   deleted), else `XADD`s: one round trip, never a trim.
//! * `next_batch` reads new entries with `XREADGROUP` per sale, in turn, and
//!   every [`StoreConfig::reclaim_every`](crate::StoreConfig) first claims
//!   entries idle longer than the reclaim time (`XAUTOCLAIM`, with their
//!   delivery counts from `XPENDING`), so a dead consumer's entries are
//!   delivered again. When nothing is there, the queues are polled again
//!   after a pause that grows to
//!   [`StoreConfig::max_poll_interval`](crate::StoreConfig); a queue empty
//!   for a second (a quiet or sold-out sale) is read only every
//!   [`StoreConfig::idle_queue_poll`](crate::StoreConfig), by one of the
//!   handle's workers, until it has entries again. A blocking read
//!   would hold the shared multiplexed connection, and in a cluster the
//!   sales' streams live on different shards.
//! * `ack` and `dead_letter` acknowledge and delete in one script per sale.
//! * A lost consumer group (`NOGROUP`: the stream was deleted, or Redis came
//!   back without it) is recreated from the stream's start, transparently.
//!
//! Consumers learn the sales to read from the set [`keys::queues(&self.shared.config.namespace)`], which
//! `open` adds to; a closed queue leaves it once drained.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use redis::{AsyncCommands, RedisError, Script};
use seckill_inventory::{Admission, SaleEvent};
use seckill_queue::{Delivery, QueueError, RequestQueue, Ticket, MAX_WAIT};
use tokio::sync::broadcast::{self, error::TryRecvError};
use tokio::time::Instant;

use crate::{describe, keys, Conn, Shared};

mod admissions;

static OPEN: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("queue_open", include_str!("queue_open.lua")));
static ENQUEUE: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("enqueue", include_str!("enqueue.lua")));
static RECLAIM: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("reclaim", include_str!("reclaim.lua")));
static ACK: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("ack", include_str!("ack.lua")));
static DEAD_LETTER: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("dead_letter", include_str!("dead_letter.lua")));
static CLOSE: LazyLock<Script> = LazyLock::new(|| {
    crate::commands::script("queue_close", "if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'open', 0) end return 0")
});

/// A queue found empty for this long is idle: read every
/// [`StoreConfig::idle_queue_poll`](crate::StoreConfig) instead of on every pass.
const IDLE_AFTER: Duration = Duration::from_secs(1);
/// Dead letters kept per sale (approximately), for inspection.
const MAX_DEAD_LETTERS: u32 = 100_000;

/// The distributed-mode [`RequestQueue`].
pub struct RedisQueue {
    shared: Arc<Shared>,
    /// This consumer's name in every group: unique per queue handle.
    consumer: String,
    state: Mutex<State>,
    cursor: AtomicUsize,
    admissions: admissions::Admissions,
}

struct State {
    sales: Arc<Vec<String>>,
    refreshed: Option<Instant>,
    /// Catalog events: a new queue is announced with `changed:ID`, so an
    /// idle consumer reads it at once instead of at the next refresh.
    events: broadcast::Receiver<SaleEvent>,
    reclaimed: Option<Instant>,
    metrics: HashMap<String, SaleMetrics>,
    /// When each queue last had entries, and when it is read next: a sold
    /// out or quiet sale costs a read per idle interval, not one per pass
    /// of every worker.
    activity: HashMap<String, Activity>,
}

struct Activity {
    worked: Instant,
    next_read: Instant,
}

#[derive(Clone)]
struct SaleMetrics {
    enqueued: metrics::Counter,
    depth: metrics::Gauge,
    /// Registered at this consumer's first read of the sale, from zero: a
    /// gateway (which only enqueues) never shows it.
    reclaimed: Arc<OnceLock<metrics::Counter>>,
}

/// A ticket as a queue entry holds it.
fn encode(ticket: &Ticket) -> Result<String, QueueError> {
    serde_json::to_string(ticket)
        .map_err(|e| QueueError::Unavailable(format!("cannot encode ticket: {e}")))
}

fn unavailable(e: RedisError) -> QueueError {
    QueueError::Unavailable(describe(&e))
}

fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

impl RedisQueue {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        RedisQueue {
            shared: shared.clone(),
            consumer: format!(
                "c-{}-{}",
                std::process::id(),
                seckill_inventory::unique_id()
            ),
            state: Mutex::new(State {
                sales: Arc::default(),
                refreshed: None,
                events: shared.events.subscribe(),
                reclaimed: None,
                metrics: HashMap::new(),
                activity: HashMap::new(),
            }),
            cursor: AtomicUsize::new(0),
            admissions: admissions::Admissions::default(),
        }
    }

    /// Whether `sale_id`'s queue is due for a read.
    fn due(&self, sale_id: &str, now: Instant) -> bool {
        let state = self.state.lock().unwrap();
        state
            .activity
            .get(sale_id)
            .is_none_or(|a| now >= a.next_read)
    }

    /// Records what a read of `sale_id` found.
    fn note_read(&self, sale_id: &str, found: bool) {
        let now = Instant::now();
        let idle_poll = self.shared.config.idle_queue_poll;
        let mut state = self.state.lock().unwrap();
        let a = state
            .activity
            .entry(sale_id.to_string())
            .or_insert(Activity {
                worked: now,
                next_read: now,
            });
        if found {
            a.worked = now;
            a.next_read = now;
        } else if now.duration_since(a.worked) >= IDLE_AFTER {
            a.next_read = now + idle_poll;
        }
    }

    /// This consumer's name in the groups.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    fn conn(&self) -> Conn {
        self.shared.conn.clone()
    }

    /// Admits the ticket's request (records it pending and claims its
    /// idempotency key, as the inventory's `admit`) and queues the ticket,
    /// in one script with the other admissions of its sale that wait for
    /// one (see [`admissions`]). Nothing is written unless the ticket is
    /// queued; a repeat of a key is `Duplicate` whatever the queue's state.
    /// On `Unavailable` the script may have run, or may yet run.
    pub async fn admit_and_enqueue(&self, ticket: &Ticket) -> Result<Admission, QueueError> {
        let p = &ticket.purchase;
        let json = encode(ticket)?;
        let (idem, keyed) = crate::inventory::idem_key(p);
        let answer = self
            .admissions
            .admit(&self.shared, &p.sale_id, |reply| admissions::Pending {
                record: keys::request(&p.sale_id, &p.request_id),
                idempotency: idem,
                keyed,
                request_id: p.request_id.clone(),
                user_id: p.user_id.clone(),
                quantity: p.quantity,
                store_by_ms: p.store_by_ms,
                ticket: json,
                reply,
            })
            .await?;
        match answer.as_str() {
            "" => {
                self.metrics(&p.sale_id).enqueued.increment(1);
                Ok(Admission::Admitted)
            }
            "!late" => Err(QueueError::Unavailable(
                "admission ran after the gateway gave up on it".into(),
            )),
            "!full" => Err(QueueError::Full(p.sale_id.clone())),
            "!closed" => Err(QueueError::UnknownSale(p.sale_id.clone())),
            _ => Ok(Admission::Duplicate { request_id: answer }),
        }
    }

    fn metrics(&self, sale_id: &str) -> SaleMetrics {
        let mut state = self.state.lock().unwrap();
        state
            .metrics
            .entry(sale_id.to_string())
            .or_insert_with(|| {
                let sale = sale_id.to_string();
                SaleMetrics {
                    enqueued: metrics::counter!("seckill_queue_enqueued_total", "sale" => sale.clone()),
                    depth: metrics::gauge!("seckill_queue_depth", "sale" => sale),
                    reclaimed: Arc::default(),
                }
            })
            .clone()
    }

    /// `seckill_service_reclaimed_total` of `sale_id`.
    fn reclaimed(&self, sale_id: &str) -> metrics::Counter {
        self.metrics(sale_id)
            .reclaimed
            .get_or_init(|| {
                metrics::counter!("seckill_service_reclaimed_total", "sale" => sale_id.to_string())
            })
            .clone()
    }

    /// The sales to read, re-read from Redis at most once per
    /// [`StoreConfig::queue_refresh_every`](crate::StoreConfig), at once after a
    /// catalog event (or when `force`).
    async fn sales(&self, force: bool) -> Result<Arc<Vec<String>>, QueueError> {
        {
            let mut state = self.state.lock().unwrap();
            let mut fresh = state
                .refreshed
                .is_some_and(|at| at.elapsed() < self.shared.config.queue_refresh_every);
            loop {
                match state.events.try_recv() {
                    Ok(SaleEvent::Changed(id)) => {
                        // A new or changed sale is read at once, idle or not.
                        state.activity.remove(&id);
                        fresh = false;
                    }
                    Err(TryRecvError::Lagged(_)) => fresh = false,
                    Ok(_) => {}
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
            if fresh && !force {
                return Ok(state.sales.clone());
            }
        }
        let mut ids: Vec<String> = self
            .conn()
            .smembers(keys::queues(&self.shared.config.namespace))
            .await
            .map_err(unavailable)?;
        ids.sort();
        let mut kept = Vec::with_capacity(ids.len());
        for id in ids {
            if self.retire_if_drained(&id).await? {
                continue;
            }
            kept.push(id);
        }
        let kept = Arc::new(kept);
        let mut state = self.state.lock().unwrap();
        state.activity.retain(|sale, _| kept.contains(sale));
        state.sales = kept.clone();
        state.refreshed = Some(Instant::now());
        Ok(kept)
    }

    /// Takes a closed and drained queue out of the set. A concurrent `open`
    /// marks the queue open before adding it to the set, so re-checking the
    /// flag after the removal never loses a reopened queue.
    async fn retire_if_drained(&self, sale_id: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn();
        let (open, len): (Option<String>, u64) = redis::pipe()
            .hget(keys::queue_config(sale_id), "open")
            .xlen(keys::queue(sale_id))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        if open.as_deref() == Some("1") || len > 0 {
            return Ok(false);
        }
        let _: i64 = conn
            .srem(keys::queues(&self.shared.config.namespace), sale_id)
            .await
            .map_err(unavailable)?;
        let open: Option<String> = conn
            .hget(keys::queue_config(sale_id), "open")
            .await
            .map_err(unavailable)?;
        if open.as_deref() == Some("1") {
            let _: i64 = conn
                .sadd(keys::queues(&self.shared.config.namespace), sale_id)
                .await
                .map_err(unavailable)?;
            return Ok(false);
        }
        Ok(true)
    }

    /// Whether a reclaim round is due now (and claims it for this caller).
    fn reclaim_due(&self) -> bool {
        let mut state = self.state.lock().unwrap();
        let due = state
            .reclaimed
            .is_none_or(|at| at.elapsed() >= self.shared.config.reclaim_every);
        if due {
            state.reclaimed = Some(Instant::now());
        }
        due
    }

    /// Recreates a lost consumer group, from the stream's first entry.
    async fn recreate_group(&self, sale_id: &str) -> Result<(), QueueError> {
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(keys::queue(sale_id))
            .arg(keys::GROUP)
            .arg("0")
            .query_async(&mut self.conn())
            .await;
        match created {
            Ok(()) => {
                tracing::info!(sale = %sale_id, "request queue consumer group recreated");
                Ok(())
            }
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            // No stream at all: nothing to read until something is queued.
            Err(e) if e.to_string().contains("requires the key to exist") => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Claims up to `count` entries of `sale_id` idle past the reclaim time.
    async fn reclaim(
        &self,
        sale_id: &str,
        count: usize,
        out: &mut Vec<Delivery>,
    ) -> Result<(), QueueError> {
        let min_idle = self.shared.config.reclaim_idle.as_millis() as u64;
        let claimed: Result<Vec<(String, String, u32)>, RedisError> = RECLAIM
            .key(keys::queue(sale_id))
            .arg(keys::GROUP)
            .arg(&self.consumer)
            .arg(min_idle)
            .arg(count)
            .invoke_async(&mut self.conn())
            .await;
        let claimed = match claimed {
            Ok(c) => c,
            Err(e) if is_nogroup(&e) => {
                self.recreate_group(sale_id).await?;
                return Ok(());
            }
            Err(e) => return Err(unavailable(e)),
        };
        if !claimed.is_empty() {
            self.reclaimed(sale_id).increment(claimed.len() as u64);
        }
        for (id, json, deliveries) in claimed {
            self.push_delivery(sale_id, id, &json, deliveries, out)
                .await?;
        }
        Ok(())
    }

    /// Reads up to `count` new entries of `sale_id`.
    async fn read(
        &self,
        sale_id: &str,
        count: usize,
        out: &mut Vec<Delivery>,
    ) -> Result<(), QueueError> {
        type Reply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;
        // A consumer shows its reclaims of every sale it reads, from zero.
        let _ = self.reclaimed(sale_id);
        let key = keys::queue(sale_id);
        let cmd = {
            let mut c = redis::cmd("XREADGROUP");
            c.arg("GROUP")
                .arg(keys::GROUP)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(count)
                .arg("STREAMS")
                .arg(&key)
                .arg(">");
            c
        };
        let reply: Reply = match cmd.query_async(&mut self.conn()).await {
            Ok(r) => r,
            Err(e) if is_nogroup(&e) => {
                self.recreate_group(sale_id).await?;
                cmd.query_async(&mut self.conn()).await.or_else(|e| {
                    if is_nogroup(&e) {
                        Ok(None)
                    } else {
                        Err(unavailable(e))
                    }
                })?
            }
            Err(e) => return Err(unavailable(e)),
        };
        for (_, entries) in reply.unwrap_or_default() {
            for (id, fields) in entries {
                let json = fields
                    .chunks(2)
                    .find(|kv| kv[0] == "t" && kv.len() == 2)
                    .map(|kv| kv[1].clone())
                    .unwrap_or_default();
                self.push_delivery(sale_id, id, &json, 1, out).await?;
            }
        }
        Ok(())
    }

    async fn push_delivery(
        &self,
        sale_id: &str,
        id: String,
        json: &str,
        deliveries: u32,
        out: &mut Vec<Delivery>,
    ) -> Result<(), QueueError> {
        match serde_json::from_str::<Ticket>(json) {
            Ok(ticket) => out.push(Delivery {
                ticket,
                entry_id: id,
                deliveries,
            }),
            Err(e) => {
                // Not a ticket: nobody can decide it; drop it from the queue.
                tracing::warn!(sale = %sale_id, entry = %id, error = %e, "unreadable queue entry dropped");
                let _: i64 = ACK
                    .key(keys::queue(sale_id))
                    .arg(keys::GROUP)
                    .arg(&id)
                    .invoke_async(&mut self.conn())
                    .await
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }
}

/// Deliveries grouped by sale, in first-seen order.
fn by_sale(deliveries: &[Delivery]) -> Vec<(&str, Vec<&Delivery>)> {
    let mut groups: Vec<(&str, Vec<&Delivery>)> = Vec::new();
    for d in deliveries.iter().filter(|d| !d.entry_id.is_empty()) {
        let sale = d.ticket.purchase.sale_id.as_str();
        match groups.iter_mut().find(|(s, _)| *s == sale) {
            Some((_, v)) => v.push(d),
            None => groups.push((sale, vec![d])),
        }
    }
    groups
}

#[async_trait]
impl RequestQueue for RedisQueue {
    async fn open(&self, sale_id: &str, capacity: u32) -> Result<(), QueueError> {
        let _: i64 = OPEN
            .key(keys::queue_config(sale_id))
            .key(keys::queue(sale_id))
            .arg(capacity.max(1))
            .arg(keys::GROUP)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let added: i64 = self
            .conn()
            .sadd(keys::queues(&self.shared.config.namespace), sale_id)
            .await
            .map_err(unavailable)?;
        if added == 1 {
            // Consumers elsewhere learn of the queue now, not at their next
            // refresh: the first buyers of a new sale do not wait for it.
            self.shared.publish(format!("changed:{sale_id}")).await;
        }
        let mut state = self.state.lock().unwrap();
        if !state.sales.iter().any(|s| s == sale_id) {
            let mut sales = (*state.sales).clone();
            sales.push(sale_id.to_string());
            state.sales = Arc::new(sales);
        }
        Ok(())
    }

    async fn close(&self, sale_id: &str) -> Result<(), QueueError> {
        let _: i64 = CLOSE
            .key(keys::queue_config(sale_id))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn enqueue(&self, ticket: Ticket) -> Result<(), QueueError> {
        let sale = ticket.purchase.sale_id.clone();
        let json = encode(&ticket)?;
        let queued: i64 = ENQUEUE
            .key(keys::queue_config(&sale))
            .key(keys::queue(&sale))
            .arg(json)
            .arg(ticket.purchase.store_by_ms)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        match queued {
            1 => {
                self.metrics(&sale).enqueued.increment(1);
                Ok(())
            }
            0 => Err(QueueError::Full(sale)),
            -2 => Err(QueueError::Unavailable(
                "enqueue ran after the gateway gave up on it".into(),
            )),
            _ => Err(QueueError::UnknownSale(sale)),
        }
    }

    async fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let max = max.max(1);
        let deadline = Instant::now() + wait.min(MAX_WAIT);
        let mut out = Vec::new();
        let mut sales = self.sales(false).await?;
        if self.reclaim_due() {
            for sale in sales.iter() {
                self.reclaim(sale, max - out.len(), &mut out).await?;
                if out.len() >= max {
                    break;
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
        let mut pause = Duration::from_millis(1);
        loop {
            let n = sales.len();
            let start = self.cursor.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            for i in 0..n {
                let sale = &sales[(start + i) % n];
                if !self.due(sale, now) {
                    continue;
                }
                let before = out.len();
                self.read(sale, max - out.len(), &mut out).await?;
                self.note_read(sale, out.len() > before);
                if out.len() >= max {
                    break;
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(self.shared.config.max_poll_interval);
            sales = self.sales(false).await?;
        }
    }

    async fn ack(&self, deliveries: &[Delivery]) -> Result<(), QueueError> {
        for (sale, ds) in by_sale(deliveries) {
            let mut inv = ACK.prepare_invoke();
            inv.key(keys::queue(sale)).arg(keys::GROUP);
            for d in &ds {
                inv.arg(&d.entry_id);
            }
            let _: i64 = inv
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn dead_letter(&self, deliveries: &[Delivery]) -> Result<(), QueueError> {
        for (sale, ds) in by_sale(deliveries) {
            let mut inv = DEAD_LETTER.prepare_invoke();
            inv.key(keys::queue(sale))
                .key(keys::dead_letters(sale))
                .arg(keys::GROUP)
                .arg(MAX_DEAD_LETTERS);
            for d in &ds {
                let json = serde_json::to_string(&d.ticket).unwrap_or_default();
                inv.arg(&d.entry_id).arg(json).arg(d.deliveries);
            }
            let _: i64 = inv
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn depth(&self, sale_id: &str) -> Result<u64, QueueError> {
        let len: u64 = self
            .conn()
            .xlen(keys::queue(sale_id))
            .await
            .map_err(unavailable)?;
        self.metrics(sale_id).depth.set(len as f64);
        Ok(len)
    }

    /// Reachable *and* accepting writes (see [`Conn::check_writable`](crate::Conn::check_writable)):
    /// a Redis that only reads cannot admit anyone.
    async fn ping(&self) -> Result<(), QueueError> {
        self.conn().check_writable().await.map_err(unavailable)
    }
}
