//! The distributed mode's source: every sale's order stream in Redis, read
//! through the consumer group `--group`.
//!
//! Sales are found in the catalog set and the relay's own set of sales it
//! followed (a removed sale leaves the catalog, but its unrelayed orders
//! still go out), at start, on every catalog event and every maintenance
//! pass. On each stream the relay creates its group and, from the groups
//! registry, the group of every other registered relay, all at the
//! stream's start: a group sees every order from its first stream on.
//!
//! Each instance reads under its own consumer name, so the instances of
//! one group share the entries; an entry is acknowledged (`XACK`) only
//! after the sink committed it. Entries a dead instance held (pending,
//! idle past `--reclaim-idle-ms`) are taken over with `XAUTOCLAIM`.
//! Maintenance trims each stream below what every group acknowledged
//! (never past the retention floor) and measures the group's lag.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::{AsyncCommands, Script, Value};
use seckill_inventory::{now_ms, Inventory, OrderEvent, SaleEvent};
use seckill_redis::{keys, order_of, Conn, RedisStore};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::sink::{Sink, SinkError};
use crate::Health;

static TRIM: LazyLock<Script> =
    LazyLock::new(|| seckill_redis::commands::script("relay_trim", include_str!("trim.lua")));

/// The set of every relay group, so each one's group is on every stream.
pub fn groups_key(ns: &str) -> String {
    format!("{ns}:relay:groups")
}

/// The sales whose order streams relays follow (the catalog forgets a
/// removed sale; its stream still has orders to relay).
pub fn followed_key(ns: &str) -> String {
    format!("{ns}:relay:sales")
}

/// A group's dead-letter stream: webhook batches that exhausted their
/// attempts (`body`, `attempts`, `error`).
pub fn dead_letter_key(ns: &str, group: &str) -> String {
    format!("{ns}:relay:{group}:dead")
}

/// How the source runs.
#[derive(Clone, Debug)]
pub struct Config {
    pub group: String,
    pub consumer: String,
    pub batch: usize,
    pub reclaim_idle: Duration,
    pub retain: Duration,
    pub maintain_every: Duration,
    pub poll: Duration,
}

type Entry = (String, Vec<(String, Value)>);

fn is_code(e: &redis::RedisError, code: &str) -> bool {
    e.code() == Some(code)
}

/// The relay on Redis, until `shutdown`.
pub struct RedisSource {
    conn: Conn,
    ns: String,
    config: Config,
    events: broadcast::Receiver<SaleEvent>,
    sales: BTreeSet<String>,
    /// Streams whose groups exist (created this run).
    ready: BTreeSet<String>,
}

impl RedisSource {
    pub fn new(store: &RedisStore, config: Config) -> RedisSource {
        RedisSource {
            conn: store.conn(),
            ns: store.config().namespace.clone(),
            config,
            events: store.inventory().events(),
            sales: BTreeSet::new(),
            ready: BTreeSet::new(),
        }
    }

    /// Registers the group, so every relay creates it on the streams it finds.
    pub async fn register(&mut self) -> redis::RedisResult<()> {
        let _: i64 = self
            .conn
            .sadd(groups_key(&self.ns), &self.config.group)
            .await?;
        Ok(())
    }

    /// Finds sales: the catalog and the followed set.
    async fn discover(&mut self) -> redis::RedisResult<()> {
        let catalog: Vec<String> = self.conn.smembers(keys::sales(&self.ns)).await?;
        let followed: Vec<String> = self.conn.smembers(followed_key(&self.ns)).await?;
        let followed: BTreeSet<String> = followed.into_iter().collect();
        for sale in catalog {
            if !followed.contains(&sale) {
                let _: i64 = self.conn.sadd(followed_key(&self.ns), &sale).await?;
            }
            self.sales.insert(sale);
        }
        self.sales.extend(followed);
        Ok(())
    }

    /// Creates every registered group on a stream (at its start), once per run.
    async fn ensure_groups(&mut self, sale: &str) -> redis::RedisResult<()> {
        if self.ready.contains(sale) {
            return Ok(());
        }
        let mut groups: Vec<String> = self.conn.smembers(groups_key(&self.ns)).await?;
        if !groups.contains(&self.config.group) {
            groups.push(self.config.group.clone());
        }
        for g in groups {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(keys::orders(sale))
                .arg(&g)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut self.conn)
                .await;
            match created {
                Err(e) if !is_code(&e, "BUSYGROUP") => return Err(e),
                _ => {}
            }
        }
        self.ready.insert(sale.to_string());
        Ok(())
    }

    async fn read(&mut self, sale: &str) -> redis::RedisResult<Vec<Entry>> {
        let reply: Option<Vec<(String, Vec<Entry>)>> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(self.config.batch)
            .arg("STREAMS")
            .arg(keys::orders(sale))
            .arg(">")
            .query_async(&mut self.conn)
            .await?;
        Ok(reply
            .into_iter()
            .flatten()
            .flat_map(|(_, entries)| entries)
            .collect())
    }

    /// Takes over entries pending longer than the reclaim idle time.
    async fn reclaim(&mut self, sale: &str) -> redis::RedisResult<Vec<Entry>> {
        let (_, entries, _): (String, Vec<Entry>, Value) = redis::cmd("XAUTOCLAIM")
            .arg(keys::orders(sale))
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg(self.config.reclaim_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(self.config.batch)
            .query_async(&mut self.conn)
            .await?;
        // A trimmed or deleted entry comes back without fields: nothing to relay.
        Ok(entries.into_iter().filter(|(_, f)| !f.is_empty()).collect())
    }

    async fn ack(&mut self, sale: &str, ids: &[String]) -> redis::RedisResult<()> {
        let _: i64 = self
            .conn
            .xack(keys::orders(sale), &self.config.group, ids)
            .await?;
        Ok(())
    }

    /// Trims every stream and publishes the group's lag.
    async fn maintain(&mut self) -> redis::RedisResult<()> {
        self.discover().await?;
        let floor = now_ms().saturating_sub(self.config.retain.as_millis() as u64);
        let (mut lag, mut oldest) = (0u64, None::<u64>);
        let sales: Vec<String> = self.sales.iter().cloned().collect();
        for sale in sales {
            self.ensure_groups(&sale).await?;
            let key = keys::orders(&sale);
            let _: i64 = TRIM
                .key(&key)
                .arg(format!("{floor}-0"))
                .invoke_async(&mut self.conn)
                .await?;
            let (n, first) = self.unacknowledged(&key).await?;
            lag += n;
            if let Some(ms) = first {
                oldest = Some(oldest.map_or(ms, |o| o.min(ms)));
            }
        }
        let group = self.config.group.clone();
        ::metrics::gauge!(metrics::LAG, "group" => group.clone()).set(lag as f64);
        let age = oldest.map_or(0.0, |ms| now_ms().saturating_sub(ms) as f64 / 1000.0);
        ::metrics::gauge!(metrics::LAG_SECONDS, "group" => group.clone()).set(age);
        let dead: u64 = self.conn.xlen(dead_letter_key(&self.ns, &group)).await?;
        ::metrics::gauge!(metrics::DEAD_LETTERS, "group" => group).set(dead as f64);
        Ok(())
    }

    /// Entries of the stream the group has not acknowledged, and the time
    /// of the oldest.
    async fn unacknowledged(&mut self, key: &str) -> redis::RedisResult<(u64, Option<u64>)> {
        let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(key)
            .query_async(&mut self.conn)
            .await?;
        let Some(g) = groups.into_iter().find(|g| {
            g.get("name")
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .is_some_and(|n| n == self.config.group)
        }) else {
            return Ok((0, None));
        };
        let num = |k: &str| {
            g.get(k)
                .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
        };
        let pending = num("pending").unwrap_or(0);
        let last: String = g
            .get("last-delivered-id")
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .unwrap_or_else(|| "0-0".into());
        // Not yet delivered: the entries after the last delivered one;
        // Redis counts them (`lag`) unless a deletion made that unknown.
        let count = |n: usize| {
            redis::cmd("XRANGE")
                .arg(key)
                .arg(format!("({last}"))
                .arg("+")
                .arg("COUNT")
                .arg(n)
                .to_owned()
        };
        let next: Vec<Entry> = count(1).query_async(&mut self.conn).await?;
        let undelivered = match num("lag") {
            Some(n) => n,
            None if next.is_empty() => 0,
            None => {
                let all: Vec<Entry> = count(100_000).query_async(&mut self.conn).await?;
                all.len() as u64
            }
        };
        let ms_of = |id: &str| id.split('-').next().and_then(|ms| ms.parse().ok());
        let mut first = next.first().and_then(|(id, _)| ms_of(id));
        if pending > 0 {
            let summary: (u64, Option<String>, Value, Value) = redis::cmd("XPENDING")
                .arg(key)
                .arg(&self.config.group)
                .query_async(&mut self.conn)
                .await?;
            first = summary.1.as_deref().and_then(ms_of).or(first);
        }
        Ok((pending + undelivered, first))
    }

    /// Delivers one stream's entries and acknowledges them. A batch the
    /// webhook gave up on goes to the dead-letter stream first.
    async fn relay(
        &mut self,
        sale: &str,
        entries: Vec<Entry>,
        sink: &mut Sink,
        health: &Health,
        shutdown: &CancellationToken,
    ) -> Result<(), SinkError> {
        let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
        let events: Vec<OrderEvent> = entries.iter().map(|(_, f)| order_of(sale, f)).collect();
        match sink.deliver(&events, None, shutdown).await {
            Ok(()) => health.sink(true),
            Err(SinkError::Exhausted {
                body,
                attempts,
                error,
            }) => {
                health.sink(false);
                tracing::warn!(sale, events = events.len(), attempts, %error, "webhook batch dead-lettered");
                let _: String = self
                    .conn
                    .xadd(
                        dead_letter_key(&self.ns, &self.config.group),
                        "*",
                        &[
                            ("body", body.to_vec()),
                            ("attempts", attempts.to_string().into_bytes()),
                            ("error", error.into_bytes()),
                        ],
                    )
                    .await
                    .map_err(|e| SinkError::Failed(format!("dead-letter stream: {e}")))?;
                metrics::relayed(sink.name(), "dead_lettered", events.len());
            }
            Err(e) => {
                health.sink(false);
                return Err(e);
            }
        }
        self.ack(sale, &ids)
            .await
            .map_err(|e| SinkError::Failed(format!("ack: {e}")))
    }

    /// Runs until `shutdown`: the batch in hand is finished (or left
    /// pending, to be reclaimed) before it returns.
    pub async fn run(mut self, mut sink: Sink, health: Arc<Health>, shutdown: CancellationToken) {
        let mut next_maintain = tokio::time::Instant::now();
        let mut next_reclaim = tokio::time::Instant::now();
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let now = tokio::time::Instant::now();
            if now >= next_maintain {
                next_maintain = now + self.config.maintain_every;
                match self.maintain().await {
                    Ok(()) => health.source(true),
                    Err(e) => {
                        health.source(false);
                        tracing::warn!(error = %e, "cannot read the order streams");
                    }
                }
            }
            let reclaim = now >= next_reclaim;
            if reclaim {
                next_reclaim = now + self.config.reclaim_idle / 2;
            }
            match self.pass(reclaim, &mut sink, &health, &shutdown).await {
                Ok(true) => failures = 0,
                Ok(false) => {
                    failures = 0;
                    self.idle(&shutdown).await;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "relay pass failed; retrying");
                    // Sink or Redis trouble: back off, up to a few seconds.
                    let pause = self.config.poll * 2u32.saturating_pow(failures.min(8));
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(pause.min(Duration::from_secs(5))) => {}
                    }
                }
            }
        }
    }

    /// Waits for the poll pause, or a catalog event naming a new sale.
    async fn idle(&mut self, shutdown: &CancellationToken) {
        let sleep = tokio::time::sleep(self.config.poll);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = &mut sleep => return,
                ev = self.events.recv() => match ev {
                    Ok(SaleEvent::Changed(id)) if !self.sales.contains(&id) => {
                        let _: redis::RedisResult<i64> =
                            self.conn.sadd(followed_key(&self.ns), &id).await;
                        self.sales.insert(id);
                        return;
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        sleep.as_mut().await;
                        return;
                    }
                },
            }
        }
    }

    /// One pass over every stream; true when it relayed anything.
    async fn pass(
        &mut self,
        reclaim: bool,
        sink: &mut Sink,
        health: &Health,
        shutdown: &CancellationToken,
    ) -> Result<bool, SinkError> {
        let redis_error = |e: redis::RedisError| SinkError::Failed(format!("redis: {e}"));
        let mut any = false;
        let sales: Vec<String> = self.sales.iter().cloned().collect();
        for sale in sales {
            if shutdown.is_cancelled() {
                break;
            }
            if let Err(e) = self.ensure_groups(&sale).await {
                health.source(false);
                return Err(redis_error(e));
            }
            let mut entries = if reclaim {
                self.reclaim(&sale).await.map_err(redis_error)?
            } else {
                Vec::new()
            };
            if entries.is_empty() {
                entries = match self.read(&sale).await {
                    Ok(e) => e,
                    // The stream was replaced (an unsold sale put again):
                    // its groups are created again.
                    Err(e) if is_code(&e, "NOGROUP") => {
                        self.ready.remove(&sale);
                        continue;
                    }
                    Err(e) => {
                        health.source(false);
                        return Err(redis_error(e));
                    }
                };
            }
            health.source(true);
            if !entries.is_empty() {
                any = true;
                self.relay(&sale, entries, sink, health, shutdown).await?;
            }
        }
        Ok(any)
    }

    /// `order-relay redrive`: posts every dead-lettered batch again, oldest
    /// first; each delivered one leaves the stream. Returns how many were
    /// delivered, or the first failure.
    pub async fn redrive(
        conn: &mut Conn,
        ns: &str,
        group: &str,
        webhook: &crate::sink::Webhook,
    ) -> Result<usize, String> {
        let key = dead_letter_key(ns, group);
        let mut delivered = 0;
        loop {
            let page: Vec<Entry> = redis::cmd("XRANGE")
                .arg(&key)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(100)
                .query_async(conn)
                .await
                .map_err(|e| format!("redis: {e}"))?;
            if page.is_empty() {
                return Ok(delivered);
            }
            for (id, fields) in page {
                let body = fields
                    .iter()
                    .find(|(k, _)| k == "body")
                    .and_then(|(_, v)| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
                    .unwrap_or_default();
                webhook
                    .post(body.into())
                    .await
                    .map_err(|e| format!("webhook: {e} ({delivered} delivered before)"))?;
                let _: i64 = conn
                    .xdel(&key, &[&id])
                    .await
                    .map_err(|e| format!("redis: {e}"))?;
                delivered += 1;
            }
        }
    }
}
