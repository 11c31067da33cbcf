//! The Redis [`Inventory`]: sales, holdings, request records and orders in
//! the keys of each sale (see [`crate::keys`]).
//!
//! Each state change is one Lua script on one sale's keys, so it is atomic
//! in a single Redis and on the owning shard of a cluster. The purchase
//! script decides a whole batch of one sale in one round trip: per request
//! the deadline against the Redis clock, the idempotency key, the per-user
//! limit and the stock, then the result record (with the retention as its
//! expiry) and the order event, and a sold-out publish when the last unit
//! goes.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use redis::{AsyncCommands, Script, Value};
use seckill_inventory::{
    check_update, order_id, sale_of_order, sale_of_request, Admission, Cancellation, Decision,
    FeedPage, FeedQuery, Inventory, InventoryError, OrderEvent, OrderEventKind, Outcome, Purchase,
    Put, RequestRecord, SaleEvent, SaleSpec, SaleStatus,
};
use tokio::sync::broadcast;

use crate::{describe, keys, Shared};

mod feed;
pub use feed::order_of;

static PURCHASE: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("purchase", include_str!("purchase.lua")));
static ADMIT: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("admit", include_str!("admit.lua")));
static WITHDRAW: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("withdraw", include_str!("withdraw.lua")));
static SETTLE: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("settle", include_str!("settle.lua")));
static PUT_SALE: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("put_sale", include_str!("put_sale.lua")));
static REMOVE_SALE: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("remove_sale", include_str!("remove_sale.lua")));
/// How long the removal of a sale that sold nothing is remembered.
const UNSOLD_REMOVAL_RECORD: std::time::Duration = std::time::Duration::from_secs(86_400);

static CANCEL_ORDER: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("cancel_order", include_str!("cancel_order.lua")));

static UPDATE_SALE: LazyLock<Script> =
    LazyLock::new(|| crate::commands::script("update_sale", include_str!("update_sale.lua")));

/// Orders read per `XRANGE` page.
const ORDER_PAGE: usize = 1000;

/// The distributed-mode [`Inventory`].
#[derive(Clone)]
pub struct RedisInventory {
    shared: Arc<Shared>,
}

fn unavailable(e: redis::RedisError) -> InventoryError {
    InventoryError::Unavailable(describe(&e))
}

fn corrupt(what: &str) -> InventoryError {
    InventoryError::Unavailable(format!("unexpected data in redis: {what}"))
}

/// The idempotency key of a purchase, or its record key when it has none
/// (scripts take a fixed number of keys per request).
pub(crate) fn idem_key(p: &Purchase) -> (String, &'static str) {
    match &p.idempotency_key {
        Some(k) => (keys::idempotency(&p.sale_id, &p.user_id, k), "1"),
        None => (keys::request(&p.sale_id, &p.request_id), "0"),
    }
}

/// The outcome stored as `(status, detail)`; `None` while pending.
fn decode(status: &str, detail: &str) -> Result<Option<Outcome>, InventoryError> {
    match status {
        "" => Ok(None),
        _ => Outcome::from_parts(status, detail)
            .map(Some)
            .ok_or_else(|| corrupt(&format!("status {status:?}"))),
    }
}

fn decision(status: &str, detail: &str, duplicate: i64) -> Result<Decision, InventoryError> {
    let outcome = decode(status, detail)?.ok_or_else(|| corrupt("empty outcome"))?;
    Ok(Decision {
        outcome,
        duplicate: duplicate != 0,
    })
}

fn opt_ms(v: Option<u64>) -> String {
    v.map(|ms| ms.to_string()).unwrap_or_default()
}

impl RedisInventory {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        RedisInventory { shared }
    }

    fn conn(&self) -> crate::Conn {
        self.shared.conn.clone()
    }

    fn ns(&self) -> &str {
        &self.shared.config.namespace
    }

    fn retention_ms(&self) -> u64 {
        self.shared.retention_ms()
    }

    /// Decides one sale's part of a batch in one script.
    async fn purchase_sale(&self, batch: &[&Purchase]) -> Result<Vec<Decision>, InventoryError> {
        let sale = &batch[0].sale_id;
        let mut inv = PURCHASE.prepare_invoke();
        inv.key(keys::sale(sale))
            .key(keys::users(sale))
            .key(keys::orders(sale))
            .key(keys::order_index(sale))
            .arg(self.retention_ms())
            .arg(sale)
            .arg(keys::events(self.ns()))
            .arg(batch.len());
        for p in batch {
            let (idem, keyed) = idem_key(p);
            inv.key(keys::request(sale, &p.request_id))
                .key(idem)
                .arg(&p.request_id)
                .arg(&p.user_id)
                .arg(p.quantity)
                .arg(p.deadline_ms)
                .arg(keyed)
                .arg(order_id(sale));
        }
        let rows: Vec<(String, String, i64)> = inv
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if rows.len() != batch.len() {
            return Err(corrupt("purchase reply length"));
        }
        rows.iter()
            .map(|(status, detail, dup)| decision(status, detail, *dup))
            .collect()
    }
}

fn status_of(fields: HashMap<String, String>) -> Result<Option<SaleStatus>, InventoryError> {
    let Some(spec) = fields.get("spec") else {
        return Ok(None);
    };
    if fields.get("removed").is_some_and(|r| r == "1") {
        return Ok(None);
    }
    let spec: SaleSpec = serde_json::from_str(spec).map_err(|_| corrupt("sale spec"))?;
    let sold = fields.get("sold").and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok(Some(SaleStatus { spec, sold }))
}

fn field(fields: &[(String, Value)], name: &str) -> String {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| redis::from_redis_value_ref::<String>(v).ok())
        .unwrap_or_default()
}

#[async_trait]
impl Inventory for RedisInventory {
    async fn put_sale(&self, spec: SaleSpec) -> Result<Put, InventoryError> {
        let id = spec.sale_id.clone();
        let json = serde_json::to_string(&spec).map_err(|_| corrupt("spec"))?;
        let put: i64 = PUT_SALE
            .key(keys::sale(&id))
            .key(keys::users(&id))
            .key(keys::orders(&id))
            .key(keys::order_index(&id))
            .arg(json)
            .arg(spec.stock)
            .arg(spec.per_user_limit)
            .arg(opt_ms(spec.starts_at_ms))
            .arg(opt_ms(spec.ends_at_ms))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let put = match put {
            1 => Put::Created,
            0 => Put::Replaced,
            -2 => return Err(InventoryError::Removed(id)),
            _ => return Err(InventoryError::HasSales(id)),
        };
        // The catalog set lives in another slot: a separate command, after
        // the sale exists, so a listed id always resolves (or was removed).
        // The feed's set keeps the id after a removal, for its orders.
        let _: i64 = self
            .conn()
            .sadd(keys::order_sales(self.ns()), &id)
            .await
            .map_err(unavailable)?;
        let _: i64 = self
            .conn()
            .sadd(keys::sales(self.ns()), &id)
            .await
            .map_err(unavailable)?;
        self.shared.publish(format!("changed:{id}")).await;
        Ok(put)
    }

    async fn update_sale(&self, spec: SaleSpec) -> Result<SaleStatus, InventoryError> {
        let id = spec.sale_id.clone();
        let json = serde_json::to_string(&spec).map_err(|_| corrupt("spec"))?;
        // The spec as read, for the compare and set; another change in
        // between makes the caller's read stale, so it reads again.
        for _ in 0..8 {
            let read: Option<String> = self
                .conn()
                .hget(keys::sale(&id), "spec")
                .await
                .map_err(unavailable)?;
            let Some(read) = read else {
                return Err(InventoryError::NotFound(id));
            };
            let reply: Vec<i64> = UPDATE_SALE
                .key(keys::sale(&id))
                .arg(read)
                .arg(&json)
                .arg(spec.stock)
                .arg(spec.per_user_limit)
                .arg(opt_ms(spec.starts_at_ms))
                .arg(opt_ms(spec.ends_at_ms))
                .invoke_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let sold = reply.get(1).copied().unwrap_or(0).max(0) as u64;
            match reply.first().copied() {
                Some(1) => {
                    self.shared.publish(format!("changed:{id}")).await;
                    return Ok(SaleStatus { spec, sold });
                }
                Some(0) => continue,
                Some(-1) => return Err(InventoryError::NotFound(id)),
                // The script refused what check_update refuses; it names why.
                Some(-2) => {
                    return Err(check_update(&spec, sold, None)
                        .err()
                        .unwrap_or_else(|| corrupt("update_sale stock")))
                }
                Some(-3) => {
                    let held = u32::try_from(sold).unwrap_or(u32::MAX);
                    return Err(check_update(&spec, 0, Some(held))
                        .err()
                        .unwrap_or_else(|| corrupt("update_sale limit")));
                }
                _ => return Err(corrupt("update_sale reply")),
            }
        }
        Err(InventoryError::Unavailable(
            "the sale kept changing; try again".into(),
        ))
    }

    async fn remove_sale(&self, sale_id: &str) -> Result<bool, InventoryError> {
        let listed: i64 = self
            .conn()
            .srem(keys::sales(self.ns()), sale_id)
            .await
            .map_err(unavailable)?;
        let existed: i64 = REMOVE_SALE
            .key(keys::sale(sale_id))
            .key(keys::users(sale_id))
            .key(keys::tokens(sale_id))
            .key(keys::order_index(sale_id))
            .arg(UNSOLD_REMOVAL_RECORD.as_millis() as u64)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let removed = listed > 0 || existed > 0;
        if removed {
            self.shared.publish(format!("removed:{sale_id}")).await;
        }
        Ok(removed)
    }

    async fn removed(&self, sale_id: &str) -> Result<bool, InventoryError> {
        let removed: Option<String> = self
            .conn()
            .hget(keys::sale(sale_id), "removed")
            .await
            .map_err(unavailable)?;
        Ok(removed.is_some_and(|r| r == "1"))
    }

    async fn sale(&self, sale_id: &str) -> Result<Option<SaleStatus>, InventoryError> {
        let fields: HashMap<String, String> = self
            .conn()
            .hgetall(keys::sale(sale_id))
            .await
            .map_err(unavailable)?;
        status_of(fields)
    }

    async fn sales(&self) -> Result<Vec<SaleStatus>, InventoryError> {
        let mut ids: Vec<String> = self
            .conn()
            .smembers(keys::sales(self.ns()))
            .await
            .map_err(unavailable)?;
        ids.sort();
        // One read per sale (each in its own slot in a cluster); the
        // catalog is small and gateways read it about once a second.
        let mut all = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(status) = self.sale(&id).await? {
                all.push(status);
            }
        }
        Ok(all)
    }

    async fn admit(&self, p: &Purchase) -> Result<Admission, InventoryError> {
        let (idem, keyed) = idem_key(p);
        let holder: String = ADMIT
            .key(keys::request(&p.sale_id, &p.request_id))
            .key(idem)
            .arg(&p.request_id)
            .arg(keyed)
            .arg(self.retention_ms())
            .arg(&p.user_id)
            .arg(p.quantity)
            .arg(p.store_by_ms)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if holder == "!late" {
            return Err(InventoryError::Unavailable(
                "admission ran after the gateway gave up on it".into(),
            ));
        }
        Ok(if holder.is_empty() {
            Admission::Admitted
        } else {
            Admission::Duplicate { request_id: holder }
        })
    }

    async fn request_of_key(
        &self,
        sale_id: &str,
        user_id: &str,
        key: &str,
    ) -> Result<Option<String>, InventoryError> {
        self.conn()
            .get(keys::idempotency(sale_id, user_id, key))
            .await
            .map_err(unavailable)
    }

    async fn withdraw(&self, p: &Purchase) -> Result<(), InventoryError> {
        let (idem, keyed) = idem_key(p);
        let _: i64 = WITHDRAW
            .key(keys::request(&p.sale_id, &p.request_id))
            .key(idem)
            .arg(&p.request_id)
            .arg(keyed)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn purchase(&self, batch: &[Purchase]) -> Result<Vec<Decision>, InventoryError> {
        // One script per sale in the batch, in the order sales first appear;
        // decisions go back in the batch's order.
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            match groups.iter_mut().find(|(s, _)| *s == p.sale_id) {
                Some((_, idx)) => idx.push(i),
                None => groups.push((&p.sale_id, vec![i])),
            }
        }
        let mut out: Vec<Option<Decision>> = vec![None; batch.len()];
        for (_, idx) in groups {
            let part: Vec<&Purchase> = idx.iter().map(|&i| &batch[i]).collect();
            let decisions = self.purchase_sale(&part).await?;
            for (i, d) in idx.into_iter().zip(decisions) {
                out[i] = Some(d);
            }
        }
        Ok(out
            .into_iter()
            .map(|d| d.expect("every request decided"))
            .collect())
    }

    async fn settle(&self, p: &Purchase, outcome: Outcome) -> Result<Decision, InventoryError> {
        let (status, detail) = outcome.parts();
        let (status, detail, dup): (String, String, i64) = SETTLE
            .key(keys::request(&p.sale_id, &p.request_id))
            .arg(&p.user_id)
            .arg(p.quantity)
            .arg(status)
            .arg(detail)
            .arg(self.retention_ms())
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        decision(&status, &detail, dup)
    }

    async fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, InventoryError> {
        let Some(sale_id) = sale_of_request(request_id) else {
            return Ok(None);
        };
        let fields: HashMap<String, String> = self
            .conn()
            .hgetall(keys::request(sale_id, request_id))
            .await
            .map_err(unavailable)?;
        if fields.is_empty() {
            return Ok(None);
        }
        let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
        Ok(Some(RequestRecord {
            request_id: request_id.to_string(),
            sale_id: sale_id.to_string(),
            user_id: get("user").to_string(),
            quantity: get("qty").parse().unwrap_or(0),
            outcome: decode(get("status"), get("detail"))?,
        }))
    }

    async fn orders(&self, sale_id: &str) -> Result<Vec<OrderEvent>, InventoryError> {
        let key = keys::orders(sale_id);
        let mut out = Vec::new();
        let mut start = "-".to_string();
        loop {
            let page: Vec<(String, Vec<(String, Value)>)> = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(ORDER_PAGE)
                .query_async(&mut self.conn())
                .await
                .map_err(unavailable)?;
            let full = page.len() == ORDER_PAGE;
            for (id, fields) in &page {
                out.push(feed::order_of(sale_id, fields));
                start = format!("({id}");
            }
            if !full {
                return Ok(out);
            }
        }
    }

    async fn feed(&self, query: &FeedQuery) -> Result<FeedPage, InventoryError> {
        self.read_feed(query).await
    }

    async fn cancel_order(&self, order_id: &str) -> Result<Cancellation, InventoryError> {
        let Some(sale) = sale_of_order(order_id) else {
            return Err(InventoryError::NotFound(order_id.to_string()));
        };
        let reply: Vec<Value> = CANCEL_ORDER
            .key(keys::sale(sale))
            .key(keys::users(sale))
            .key(keys::orders(sale))
            .key(keys::order_index(sale))
            .arg(order_id)
            .arg(keys::events(self.ns()))
            .arg(sale)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        if reply.is_empty() {
            return Err(InventoryError::NotFound(order_id.to_string()));
        }
        let text = |i: usize| -> Result<String, InventoryError> {
            reply
                .get(i)
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .ok_or_else(|| corrupt("cancel_order reply"))
        };
        // Lua numbers come back as integer replies.
        let number = |i: usize| -> Result<u64, InventoryError> {
            reply
                .get(i)
                .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
                .ok_or_else(|| corrupt("cancel_order reply"))
        };
        Ok(Cancellation {
            order: OrderEvent {
                order_id: order_id.to_string(),
                request_id: text(0)?,
                sale_id: sale.to_string(),
                user_id: text(1)?,
                quantity: u32::try_from(number(2)?).map_err(|_| corrupt("quantity"))?,
                at_ms: number(3)?,
                kind: OrderEventKind::Placed,
            },
            cancelled_at_ms: number(4)?,
            repeat: number(5)? == 1,
        })
    }

    fn events(&self) -> broadcast::Receiver<SaleEvent> {
        self.shared.events.subscribe()
    }

    /// Reachable *and* accepting writes (see [`Conn::check_writable`](crate::Conn::check_writable)):
    /// a Redis that only reads cannot admit anyone.
    async fn ping(&self) -> Result<(), InventoryError> {
        self.conn().check_writable().await.map_err(unavailable)
    }
}
