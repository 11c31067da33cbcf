//! The in-memory inventory of the embedded mode.
//!
//! One mutex per sale serialises its purchase steps, which makes each step
//! atomic with respect to stock, per-user holdings and the request's result.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::broadcast;

use crate::*;

/// How long results and idempotency keys are kept by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(600);

/// The embedded-mode [`Inventory`]: everything in this process's memory.
#[derive(Clone)]
pub struct MemoryInventory {
    inner: Arc<Inner>,
}

struct Inner {
    sales: RwLock<HashMap<String, Arc<Mutex<Book>>>>,
    requests: DashMap<String, Stored>,
    keys: DashMap<IdemKey, (String, u64)>,
    events: broadcast::Sender<SaleEvent>,
    retention_ms: u64,
}

/// (sale, user, idempotency key)
type IdemKey = (String, String, String);

struct Stored {
    record: RequestRecord,
    at_ms: u64,
}

/// One sale's mutable state.
struct Book {
    spec: SaleSpec,
    sold: u64,
    held: HashMap<String, u32>,
    orders: Vec<OrderEvent>,
}

impl Default for MemoryInventory {
    fn default() -> Self {
        Self::new(DEFAULT_RETENTION)
    }
}

impl MemoryInventory {
    /// An empty inventory that keeps results and idempotency keys for
    /// `retention`. Inside a Tokio runtime it also starts the task that
    /// forgets them afterwards; the task ends with the inventory.
    pub fn new(retention: Duration) -> Self {
        let (events, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            sales: RwLock::new(HashMap::new()),
            requests: DashMap::new(),
            keys: DashMap::new(),
            events,
            retention_ms: retention.as_millis() as u64,
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep_loop(Arc::downgrade(&inner)));
        }
        MemoryInventory { inner }
    }

    /// Forgets results and idempotency keys older than the retention.
    pub fn sweep(&self) {
        self.inner.sweep();
    }

    fn book(&self, sale_id: &str) -> Option<Arc<Mutex<Book>>> {
        self.inner.sales.read().unwrap().get(sale_id).cloned()
    }

    fn stored_outcome(&self, request_id: &str) -> Option<Outcome> {
        self.inner
            .requests
            .get(request_id)
            .and_then(|s| s.record.outcome.clone())
    }

    fn record(&self, p: &Purchase, outcome: Outcome) {
        let record = RequestRecord {
            request_id: p.request_id.clone(),
            sale_id: p.sale_id.clone(),
            user_id: p.user_id.clone(),
            quantity: p.quantity,
            outcome: Some(outcome),
        };
        let at_ms = now_ms();
        self.inner
            .requests
            .insert(p.request_id.clone(), Stored { record, at_ms });
    }

    fn decide(&self, p: &Purchase, now: u64) -> Decision {
        let duplicate = |outcome| Decision {
            outcome,
            duplicate: true,
        };
        let Some(book) = self.book(&p.sale_id) else {
            return self.finish(p, rejected("sale_removed"));
        };
        // Everything below runs under the sale's lock: the result check,
        // the key check and the stock decrement form one step.
        let mut book = book.lock().unwrap();
        if let Some(outcome) = self.stored_outcome(&p.request_id) {
            return duplicate(outcome);
        }
        if let Some(key) = &p.idempotency_key {
            let k = (p.sale_id.clone(), p.user_id.clone(), key.clone());
            match self.inner.keys.entry(k) {
                Entry::Occupied(e) if e.get().0 != p.request_id => {
                    let first = e.get().0.clone();
                    drop(e);
                    // The key's first request decides; a second one never
                    // buys, whether the first is decided yet or not.
                    let outcome = self
                        .stored_outcome(&first)
                        .unwrap_or_else(|| rejected("duplicate_in_flight"));
                    return duplicate(outcome);
                }
                Entry::Occupied(_) => {}
                Entry::Vacant(e) => {
                    e.insert((p.request_id.clone(), now));
                }
            }
        }
        if now > p.deadline_ms {
            return self.finish(p, Outcome::Expired);
        }
        match window_state(&book.spec, now) {
            Some(SaleState::Ended) => return self.finish(p, rejected("sale_ended")),
            Some(_) => return self.finish(p, rejected("sale_not_started")),
            None => {}
        }
        let held = book.held.get(&p.user_id).copied().unwrap_or(0);
        let outcome = if held.saturating_add(p.quantity) > book.spec.per_user_limit {
            Outcome::LimitExceeded
        } else if book.spec.stock - book.sold < u64::from(p.quantity) {
            Outcome::SoldOut
        } else {
            book.sold += u64::from(p.quantity);
            *book.held.entry(p.user_id.clone()).or_insert(0) += p.quantity;
            let order_id = format!("o-{}", unique_id());
            book.orders.push(OrderEvent {
                order_id: order_id.clone(),
                request_id: p.request_id.clone(),
                sale_id: p.sale_id.clone(),
                user_id: p.user_id.clone(),
                quantity: p.quantity,
                at_ms: now,
            });
            if book.sold == book.spec.stock {
                let _ = self
                    .inner
                    .events
                    .send(SaleEvent::SoldOut(p.sale_id.clone()));
            }
            Outcome::Success { order_id }
        };
        self.finish(p, outcome)
    }

    fn finish(&self, p: &Purchase, outcome: Outcome) -> Decision {
        self.record(p, outcome.clone());
        Decision {
            outcome,
            duplicate: false,
        }
    }
}

fn rejected(reason: &str) -> Outcome {
    Outcome::Rejected {
        reason: reason.to_string(),
    }
}

impl Inner {
    fn sweep(&self) {
        let cutoff = now_ms().saturating_sub(self.retention_ms);
        self.requests.retain(|_, s| s.at_ms >= cutoff);
        self.keys.retain(|_, (_, at)| *at >= cutoff);
    }
}

async fn sweep_loop(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match inner.upgrade() {
            Some(inner) => inner.sweep(),
            None => return,
        }
    }
}

#[async_trait]
impl Inventory for MemoryInventory {
    async fn put_sale(&self, spec: SaleSpec) -> Result<Put, InventoryError> {
        let id = spec.sale_id.clone();
        let put = {
            let mut sales = self.inner.sales.write().unwrap();
            match sales.get(&id) {
                Some(book) => {
                    let mut book = book.lock().unwrap();
                    if book.sold > 0 {
                        return Err(InventoryError::HasSales(id));
                    }
                    book.spec = spec;
                    Put::Replaced
                }
                None => {
                    let book = Book {
                        spec,
                        sold: 0,
                        held: HashMap::new(),
                        orders: Vec::new(),
                    };
                    sales.insert(id.clone(), Arc::new(Mutex::new(book)));
                    Put::Created
                }
            }
        };
        let _ = self.inner.events.send(SaleEvent::Changed(id));
        Ok(put)
    }

    async fn remove_sale(&self, sale_id: &str) -> Result<bool, InventoryError> {
        let removed = self.inner.sales.write().unwrap().remove(sale_id).is_some();
        if removed {
            let _ = self
                .inner
                .events
                .send(SaleEvent::Removed(sale_id.to_string()));
        }
        Ok(removed)
    }

    async fn sale(&self, sale_id: &str) -> Result<Option<SaleStatus>, InventoryError> {
        Ok(self.book(sale_id).map(|b| {
            let b = b.lock().unwrap();
            SaleStatus {
                spec: b.spec.clone(),
                sold: b.sold,
            }
        }))
    }

    async fn sales(&self) -> Result<Vec<SaleStatus>, InventoryError> {
        let books: Vec<_> = self.inner.sales.read().unwrap().values().cloned().collect();
        let mut all: Vec<SaleStatus> = books
            .iter()
            .map(|b| {
                let b = b.lock().unwrap();
                SaleStatus {
                    spec: b.spec.clone(),
                    sold: b.sold,
                }
            })
            .collect();
        all.sort_by(|a, b| a.spec.sale_id.cmp(&b.spec.sale_id));
        Ok(all)
    }

    async fn admit(&self, p: &Purchase) -> Result<Admission, InventoryError> {
        let now = now_ms();
        if let Some(key) = &p.idempotency_key {
            let k = (p.sale_id.clone(), p.user_id.clone(), key.clone());
            match self.inner.keys.entry(k) {
                Entry::Occupied(e) => {
                    return Ok(Admission::Duplicate {
                        request_id: e.get().0.clone(),
                    })
                }
                Entry::Vacant(e) => {
                    e.insert((p.request_id.clone(), now));
                }
            }
        }
        let record = RequestRecord {
            request_id: p.request_id.clone(),
            sale_id: p.sale_id.clone(),
            user_id: p.user_id.clone(),
            quantity: p.quantity,
            outcome: None,
        };
        self.inner
            .requests
            .insert(p.request_id.clone(), Stored { record, at_ms: now });
        Ok(Admission::Admitted)
    }

    async fn withdraw(&self, p: &Purchase) -> Result<(), InventoryError> {
        self.inner
            .requests
            .remove_if(&p.request_id, |_, s| s.record.outcome.is_none());
        if let Some(key) = &p.idempotency_key {
            let k = (p.sale_id.clone(), p.user_id.clone(), key.clone());
            self.inner
                .keys
                .remove_if(&k, |_, (rid, _)| *rid == p.request_id);
        }
        Ok(())
    }

    async fn purchase(&self, batch: &[Purchase]) -> Result<Vec<Decision>, InventoryError> {
        let now = now_ms();
        Ok(batch.iter().map(|p| self.decide(p, now)).collect())
    }

    async fn settle(&self, p: &Purchase, outcome: Outcome) -> Result<Decision, InventoryError> {
        // The sale's lock orders this against a concurrent purchase step.
        let book = self.book(&p.sale_id);
        let _guard = book.as_ref().map(|b| b.lock().unwrap());
        if let Some(stored) = self.stored_outcome(&p.request_id) {
            return Ok(Decision {
                outcome: stored,
                duplicate: true,
            });
        }
        Ok(self.finish(p, outcome))
    }

    async fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, InventoryError> {
        let cutoff = now_ms().saturating_sub(self.inner.retention_ms);
        Ok(self
            .inner
            .requests
            .get(request_id)
            .filter(|s| s.at_ms >= cutoff)
            .map(|s| s.record.clone()))
    }

    async fn orders(&self, sale_id: &str) -> Result<Vec<OrderEvent>, InventoryError> {
        Ok(self
            .book(sale_id)
            .map(|b| b.lock().unwrap().orders.clone())
            .unwrap_or_default())
    }

    fn events(&self) -> broadcast::Receiver<SaleEvent> {
        self.inner.events.subscribe()
    }

    async fn ping(&self) -> Result<(), InventoryError> {
        Ok(())
    }
}
