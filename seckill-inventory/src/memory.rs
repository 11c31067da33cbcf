//! The in-memory inventory of the embedded mode.
//!
//! One mutex per sale serialises its purchase steps, which makes each step
//! atomic with respect to stock, per-user holdings and the request's result.
//! With a [`Journal`] (the durable store) every step's changes are handed
//! to it as they are made, and [`MemoryInventory::restored`] starts again
//! from what it kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::{broadcast, watch};

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
    /// Every order in commit order (the order feed; its index + 1 is the
    /// order's sequence number). Empty with a journal: the journal's store
    /// keeps the orders then.
    log: Mutex<Vec<OrderEvent>>,
    /// The number of orders in `log`, for the feed's long poll.
    committed: watch::Sender<u64>,
    journal: Option<Arc<dyn Journal>>,
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
    /// Every order of the sale, by id: as placed and, once cancelled,
    /// when (what a cancellation needs; with a journal, the log is empty).
    placed: HashMap<String, Placed>,
    /// Removed from the catalog after it sold: kept for its orders, and so
    /// that its id is never sold again.
    removed: bool,
}

impl Book {
    fn status(&self) -> SaleStatus {
        SaleStatus {
            spec: self.spec.clone(),
            sold: self.sold,
        }
    }

    fn change(&self) -> Change {
        Change::Sale {
            spec: self.spec.clone(),
            removed: self.removed,
        }
    }
}

/// The changes of one step, collected only when there is a journal.
struct Step(Option<Vec<Change>>);

impl Step {
    fn new(inner: &Inner) -> Self {
        Step(inner.journal.as_ref().map(|_| Vec::new()))
    }

    fn push(&mut self, change: impl FnOnce() -> Change) {
        if let Some(changes) = &mut self.0 {
            changes.push(change());
        }
    }

    fn journaled(&self) -> bool {
        self.0.is_some()
    }

    /// Hands the step to the journal, if there is one.
    fn send(self, inner: &Inner) {
        if let (Some(journal), Some(changes)) = (&inner.journal, self.0) {
            if !changes.is_empty() {
                journal.record(changes);
            }
        }
    }

    /// Hands an admission's step to the journal (see [`Journal::admitted`]).
    fn send_admission(self, inner: &Inner) {
        if let (Some(journal), Some(changes)) = (&inner.journal, self.0) {
            journal.admitted(changes);
        }
    }
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
        Self::build(retention, None, Snapshot::default())
    }

    /// An inventory that starts from `snapshot` and hands every change to
    /// `journal` (see [`Journal`]). Orders are the journal's: this
    /// inventory keeps only the holdings they add up to.
    pub fn restored(retention: Duration, journal: Arc<dyn Journal>, snapshot: Snapshot) -> Self {
        Self::build(retention, Some(journal), snapshot)
    }

    fn build(retention: Duration, journal: Option<Arc<dyn Journal>>, snap: Snapshot) -> Self {
        let (events, _) = broadcast::channel(1024);
        let sales = snap
            .sales
            .into_iter()
            .map(|s| {
                let book = Book {
                    sold: s.held.values().map(|&h| u64::from(h)).sum(),
                    spec: s.spec,
                    held: s.held,
                    placed: s.placed,
                    removed: s.removed,
                };
                (book.spec.sale_id.clone(), Arc::new(Mutex::new(book)))
            })
            .collect();
        let requests = snap
            .requests
            .into_iter()
            .map(|(record, at_ms)| (record.request_id.clone(), Stored { record, at_ms }))
            .collect();
        let keys = snap
            .keys
            .into_iter()
            .map(|k| ((k.sale_id, k.user_id, k.key), (k.request_id, k.at_ms)))
            .collect();
        let inner = Arc::new(Inner {
            sales: RwLock::new(sales),
            requests,
            keys,
            events,
            retention_ms: retention.as_millis() as u64,
            log: Mutex::new(Vec::new()),
            committed: watch::Sender::new(0),
            journal,
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

    fn record(&self, p: &Purchase, outcome: Outcome, step: &mut Step) {
        let record = RequestRecord {
            request_id: p.request_id.clone(),
            sale_id: p.sale_id.clone(),
            user_id: p.user_id.clone(),
            quantity: p.quantity,
            outcome: Some(outcome),
        };
        let at_ms = now_ms();
        step.push(|| Change::Request {
            record: record.clone(),
            at_ms,
        });
        self.inner
            .requests
            .insert(p.request_id.clone(), Stored { record, at_ms });
    }

    fn decide(&self, p: &Purchase, now: u64, step: &mut Step) -> Decision {
        let duplicate = |outcome| Decision {
            outcome,
            duplicate: true,
        };
        let Some(book) = self.book(&p.sale_id) else {
            return self.finish(p, rejected("sale_removed"), step);
        };
        // Everything below runs under the sale's lock: the result check,
        // the key check and the stock decrement form one step.
        let mut book = book.lock().unwrap();
        if let Some(outcome) = self.stored_outcome(&p.request_id) {
            return duplicate(outcome);
        }
        if book.removed {
            return self.finish(p, rejected("sale_removed"), step);
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
                    step.push(|| Change::KeyClaimed {
                        sale_id: p.sale_id.clone(),
                        user_id: p.user_id.clone(),
                        key: key.clone(),
                        request_id: p.request_id.clone(),
                        at_ms: now,
                    });
                    e.insert((p.request_id.clone(), now));
                }
            }
        }
        if now > p.deadline_ms {
            return self.finish(p, Outcome::Expired, step);
        }
        match window_state(&book.spec, now) {
            Some(SaleState::Ended) => return self.finish(p, rejected("sale_ended"), step),
            Some(_) => return self.finish(p, rejected("sale_not_started"), step),
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
            let order_id = order_id(&p.sale_id);
            let order = OrderEvent {
                order_id: order_id.clone(),
                request_id: p.request_id.clone(),
                sale_id: p.sale_id.clone(),
                user_id: p.user_id.clone(),
                quantity: p.quantity,
                at_ms: now,
                kind: OrderEventKind::Placed,
            };
            book.placed.insert(
                order_id.clone(),
                Placed {
                    order: order.clone(),
                    cancelled_at_ms: None,
                },
            );
            self.append(order, step);
            if book.sold == book.spec.stock {
                let _ = self
                    .inner
                    .events
                    .send(SaleEvent::SoldOut(p.sale_id.clone()));
            }
            Outcome::Success { order_id }
        };
        self.finish(p, outcome, step)
    }

    /// Appends an order event to the global log: through the journal's
    /// step when there is one (its store keeps the orders then), else to
    /// the memory log.
    fn append(&self, order: OrderEvent, step: &mut Step) {
        if step.journaled() {
            step.push(|| Change::Order(order));
        } else {
            let mut log = self.inner.log.lock().unwrap();
            log.push(order);
            self.inner.committed.send_replace(log.len() as u64);
        }
    }

    fn finish(&self, p: &Purchase, outcome: Outcome, step: &mut Step) -> Decision {
        self.record(p, outcome.clone(), step);
        Decision {
            outcome,
            duplicate: false,
        }
    }

    /// One page of the order log after sequence number `after`.
    fn page(
        &self,
        after: u64,
        sale_id: Option<&str>,
        limit: usize,
    ) -> Result<FeedPage, InventoryError> {
        let log = self.inner.log.lock().unwrap();
        let head = log.len() as u64;
        check_head(after, head)?;
        let mut orders = Vec::new();
        let mut next = head;
        for (i, o) in log.iter().enumerate().skip(after as usize) {
            if sale_id.is_none_or(|s| s == o.sale_id) {
                orders.push(o.clone());
                if orders.len() >= limit {
                    next = i as u64 + 1;
                    break;
                }
            }
        }
        Ok(FeedPage {
            orders,
            next: next.to_string(),
        })
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
        let mut step = Step::new(&self.inner);
        let put = {
            let mut sales = self.inner.sales.write().unwrap();
            let put = match sales.get(&id) {
                Some(book) => {
                    let mut book = book.lock().unwrap();
                    // Orders, cancelled or not, are never dropped: a sale
                    // that ever sold keeps its id.
                    let sold = !book.placed.is_empty();
                    if book.removed && sold {
                        return Err(InventoryError::Removed(id));
                    }
                    if sold {
                        return Err(InventoryError::HasSales(id));
                    }
                    let put = if book.removed {
                        Put::Created
                    } else {
                        Put::Replaced
                    };
                    book.spec = spec;
                    book.removed = false;
                    step.push(|| book.change());
                    put
                }
                None => {
                    let book = Book {
                        spec,
                        sold: 0,
                        held: HashMap::new(),
                        placed: HashMap::new(),
                        removed: false,
                    };
                    step.push(|| book.change());
                    sales.insert(id.clone(), Arc::new(Mutex::new(book)));
                    Put::Created
                }
            };
            // Under the lock: the journal sees a sale's changes in order.
            step.send(&self.inner);
            put
        };
        let _ = self.inner.events.send(SaleEvent::Changed(id));
        Ok(put)
    }

    async fn update_sale(&self, spec: SaleSpec) -> Result<SaleStatus, InventoryError> {
        let id = spec.sale_id.clone();
        let book = self
            .book(&id)
            .ok_or_else(|| InventoryError::NotFound(id.clone()))?;
        let status = {
            let mut book = book.lock().unwrap();
            if book.removed {
                return Err(InventoryError::NotFound(id));
            }
            check_update(&spec, book.sold, book.held.values().copied().max())?;
            book.spec = spec;
            let mut step = Step::new(&self.inner);
            step.push(|| book.change());
            step.send(&self.inner);
            book.status()
        };
        let _ = self.inner.events.send(SaleEvent::Changed(id));
        Ok(status)
    }

    async fn remove_sale(&self, sale_id: &str) -> Result<bool, InventoryError> {
        // The book stays as a removal record, even unsold: a gateway that
        // missed the event learns the sale was removed, not lost.
        let removed = self.book(sale_id).is_some_and(|book| {
            let mut b = book.lock().unwrap();
            let removed = !std::mem::replace(&mut b.removed, true);
            if removed {
                let mut step = Step::new(&self.inner);
                step.push(|| b.change());
                step.send(&self.inner);
            }
            removed
        });
        if removed {
            let _ = self
                .inner
                .events
                .send(SaleEvent::Removed(sale_id.to_string()));
        }
        Ok(removed)
    }

    async fn removed(&self, sale_id: &str) -> Result<bool, InventoryError> {
        Ok(self
            .book(sale_id)
            .is_some_and(|b| b.lock().unwrap().removed))
    }

    async fn sale(&self, sale_id: &str) -> Result<Option<SaleStatus>, InventoryError> {
        Ok(self.book(sale_id).and_then(|b| {
            let b = b.lock().unwrap();
            (!b.removed).then(|| b.status())
        }))
    }

    async fn sales(&self) -> Result<Vec<SaleStatus>, InventoryError> {
        let books: Vec<_> = self.inner.sales.read().unwrap().values().cloned().collect();
        let mut all: Vec<SaleStatus> = books
            .iter()
            .filter_map(|b| {
                let b = b.lock().unwrap();
                (!b.removed).then(|| b.status())
            })
            .collect();
        all.sort_by(|a, b| a.spec.sale_id.cmp(&b.spec.sale_id));
        Ok(all)
    }

    async fn admit(&self, p: &Purchase) -> Result<Admission, InventoryError> {
        let now = now_ms();
        if p.store_by_ms > 0 && now > p.store_by_ms {
            return Err(InventoryError::Unavailable(
                "admission ran after the gateway gave up on it".into(),
            ));
        }
        let mut step = Step::new(&self.inner);
        if let Some(key) = &p.idempotency_key {
            let k = (p.sale_id.clone(), p.user_id.clone(), key.clone());
            match self.inner.keys.entry(k) {
                Entry::Occupied(e) => {
                    return Ok(Admission::Duplicate {
                        request_id: e.get().0.clone(),
                    })
                }
                Entry::Vacant(e) => {
                    step.push(|| Change::KeyClaimed {
                        sale_id: p.sale_id.clone(),
                        user_id: p.user_id.clone(),
                        key: key.clone(),
                        request_id: p.request_id.clone(),
                        at_ms: now,
                    });
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
        step.push(|| Change::Request {
            record: record.clone(),
            at_ms: now,
        });
        self.inner
            .requests
            .insert(p.request_id.clone(), Stored { record, at_ms: now });
        step.send_admission(&self.inner);
        Ok(Admission::Admitted)
    }

    async fn request_of_key(
        &self,
        sale_id: &str,
        user_id: &str,
        key: &str,
    ) -> Result<Option<String>, InventoryError> {
        let cutoff = now_ms().saturating_sub(self.inner.retention_ms);
        let k = (sale_id.to_string(), user_id.to_string(), key.to_string());
        Ok(self
            .inner
            .keys
            .get(&k)
            .filter(|e| e.1 >= cutoff)
            .map(|e| e.0.clone()))
    }

    async fn withdraw(&self, p: &Purchase) -> Result<(), InventoryError> {
        let mut step = Step::new(&self.inner);
        let withdrawn = self
            .inner
            .requests
            .remove_if(&p.request_id, |_, s| s.record.outcome.is_none());
        if withdrawn.is_some() {
            step.push(|| Change::Withdrawn {
                request_id: p.request_id.clone(),
            });
        }
        if let Some(key) = &p.idempotency_key {
            let k = (p.sale_id.clone(), p.user_id.clone(), key.clone());
            let released = self
                .inner
                .keys
                .remove_if(&k, |_, (rid, _)| *rid == p.request_id);
            if released.is_some() {
                step.push(|| Change::KeyReleased {
                    sale_id: p.sale_id.clone(),
                    user_id: p.user_id.clone(),
                    key: key.clone(),
                    request_id: p.request_id.clone(),
                });
            }
        }
        step.send(&self.inner);
        Ok(())
    }

    async fn purchase(&self, batch: &[Purchase]) -> Result<Vec<Decision>, InventoryError> {
        let now = now_ms();
        // One step for the journal: a batch's orders and results are kept
        // together or not at all.
        let mut step = Step::new(&self.inner);
        let decisions = batch
            .iter()
            .map(|p| self.decide(p, now, &mut step))
            .collect();
        step.send(&self.inner);
        Ok(decisions)
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
        let mut step = Step::new(&self.inner);
        let decision = self.finish(p, outcome, &mut step);
        step.send(&self.inner);
        Ok(decision)
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
        let log = self.inner.log.lock().unwrap();
        Ok(log
            .iter()
            .filter(|o| o.sale_id == sale_id)
            .cloned()
            .collect())
    }

    async fn feed(&self, q: &FeedQuery) -> Result<FeedPage, InventoryError> {
        let after = seq_cursor(q.after.as_deref())?;
        let sale_id = q.sale_id.as_deref();
        let limit = q.limit.max(1);
        wait_for_orders(self.inner.committed.subscribe(), q.wait, || async move {
            self.page(after, sale_id, limit)
        })
        .await
    }

    async fn cancel_order(&self, order_id: &str) -> Result<Cancellation, InventoryError> {
        let not_found = || InventoryError::NotFound(order_id.to_string());
        let book = sale_of_order(order_id)
            .and_then(|sale| self.book(sale))
            .ok_or_else(not_found)?;
        // Under the sale's lock, like a purchase: the release is one step,
        // and the journal gets its event before the lock is let go.
        let mut book = book.lock().unwrap();
        let placed = book.placed.get(order_id).ok_or_else(not_found)?;
        let order = placed.order.clone();
        if let Some(at) = placed.cancelled_at_ms {
            return Ok(Cancellation {
                order,
                cancelled_at_ms: at,
                repeat: true,
            });
        }
        let now = now_ms();
        let sold_out = book.sold >= book.spec.stock;
        book.sold -= u64::from(order.quantity);
        if let Some(held) = book.held.get_mut(&order.user_id) {
            *held = held.saturating_sub(order.quantity);
            if *held == 0 {
                book.held.remove(&order.user_id);
            }
        }
        if let Some(placed) = book.placed.get_mut(order_id) {
            placed.cancelled_at_ms = Some(now);
        }
        let mut step = Step::new(&self.inner);
        self.append(
            OrderEvent {
                at_ms: now,
                kind: OrderEventKind::Cancelled,
                ..order.clone()
            },
            &mut step,
        );
        step.send(&self.inner);
        // Under the lock too, like a sell-out: a sale's events in the order
        // its steps took effect.
        if sold_out {
            let _ = self
                .inner
                .events
                .send(SaleEvent::Released(order.sale_id.clone()));
        }
        Ok(Cancellation {
            order,
            cancelled_at_ms: now,
            repeat: false,
        })
    }

    fn events(&self) -> broadcast::Receiver<SaleEvent> {
        self.inner.events.subscribe()
    }

    async fn ping(&self) -> Result<(), InventoryError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Far enough ahead that no test runs into it.
    const MINUTE_MS: u64 = 60_000;

    fn sale(id: &str, stock: u64, per_user_limit: u32) -> SaleSpec {
        SaleSpec {
            per_user_limit,
            ..SaleSpec::new(id, stock)
        }
    }

    fn purchase(sale: &str, user: &str, quantity: u32) -> Purchase {
        Purchase {
            request_id: request_id(sale),
            sale_id: sale.to_string(),
            user_id: user.to_string(),
            quantity,
            idempotency_key: None,
            deadline_ms: now_ms() + MINUTE_MS,
            store_by_ms: 0,
        }
    }

    fn keyed(sale: &str, user: &str, key: &str) -> Purchase {
        Purchase {
            idempotency_key: Some(key.to_string()),
            ..purchase(sale, user, 1)
        }
    }

    async fn buy(inv: &MemoryInventory, p: &Purchase) -> Decision {
        inv.purchase(std::slice::from_ref(p))
            .await
            .unwrap()
            .remove(0)
    }

    async fn sold(inv: &MemoryInventory, sale: &str) -> u64 {
        inv.sale(sale).await.unwrap().unwrap().sold
    }

    fn order_id(d: &Decision) -> String {
        match &d.outcome {
            Outcome::Success { order_id } => order_id.clone(),
            other => panic!("expected a success, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stock_never_goes_below_zero_under_concurrent_purchases() {
        const STOCK: u64 = 100;
        const USERS: usize = 200;
        let inv = MemoryInventory::default();
        inv.put_sale(sale("crowd", STOCK, 1)).await.unwrap();
        // Every user tries twice, from two different tasks, and the tasks
        // send batches of mixed users: twice the buyers of the stock, four
        // times the requests.
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..40 {
            let inv = inv.clone();
            tasks.spawn(async move {
                let mut won = Vec::new();
                for round in 0..5 {
                    let batch: Vec<Purchase> = (0..2)
                        .map(|j| {
                            let user = (t * 10 + round * 2 + j) % USERS;
                            purchase("crowd", &format!("u{user}"), 1)
                        })
                        .collect();
                    let decisions = inv.purchase(&batch).await.unwrap();
                    for (p, d) in batch.iter().zip(&decisions) {
                        if matches!(d.outcome, Outcome::Success { .. }) {
                            won.push(p.user_id.clone());
                        }
                    }
                    tokio::task::yield_now().await;
                }
                won
            });
        }
        let mut winners = Vec::new();
        while let Some(won) = tasks.join_next().await {
            winners.extend(won.unwrap());
        }

        assert_eq!(winners.len() as u64, STOCK, "exactly the stock is sold");
        assert_eq!(sold(&inv, "crowd").await, STOCK);
        let distinct: HashSet<_> = winners.iter().collect();
        assert_eq!(distinct.len(), winners.len(), "one unit per user");
        let orders = inv.orders("crowd").await.unwrap();
        assert_eq!(orders.len() as u64, STOCK, "one order per success");
        let ids: HashSet<_> = orders.iter().map(|o| &o.order_id).collect();
        assert_eq!(ids.len(), orders.len(), "order ids are distinct");
    }

    #[tokio::test]
    async fn per_user_limit_holds_across_batches() {
        let inv = MemoryInventory::default();
        inv.put_sale(sale("lim", 10, 2)).await.unwrap();

        let first = buy(&inv, &purchase("lim", "u", 1)).await;
        assert!(
            matches!(first.outcome, Outcome::Success { .. }),
            "{first:?}"
        );
        let too_many = buy(&inv, &purchase("lim", "u", 2)).await;
        assert_eq!(too_many.outcome, Outcome::LimitExceeded, "1 held + 2 > 2");
        let second = buy(&inv, &purchase("lim", "u", 1)).await;
        assert!(
            matches!(second.outcome, Outcome::Success { .. }),
            "{second:?}"
        );
        let third = buy(&inv, &purchase("lim", "u", 1)).await;
        assert_eq!(
            third.outcome,
            Outcome::LimitExceeded,
            "2 held: limit reached"
        );

        let other = buy(&inv, &purchase("lim", "v", 2)).await;
        assert!(
            matches!(other.outcome, Outcome::Success { .. }),
            "users are limited apart: {other:?}"
        );
        assert_eq!(sold(&inv, "lim").await, 4, "refusals sell nothing");
    }

    #[tokio::test]
    async fn same_idempotency_key_gets_the_first_outcome_and_changes_nothing() {
        let inv = MemoryInventory::default();
        inv.put_sale(sale("idem", 10, 5)).await.unwrap();
        let first = keyed("idem", "u", "k1");
        let again = keyed("idem", "u", "k1");
        assert_eq!(inv.admit(&first).await.unwrap(), Admission::Admitted);
        assert_eq!(
            inv.admit(&again).await.unwrap(),
            Admission::Duplicate {
                request_id: first.request_id.clone()
            },
            "the key names its first request"
        );

        let decided = buy(&inv, &first).await;
        assert!(!decided.duplicate);
        let repeat = buy(&inv, &again).await;
        assert!(repeat.duplicate, "{repeat:?}");
        assert_eq!(
            repeat.outcome, decided.outcome,
            "the first outcome, same order"
        );
        assert_eq!(sold(&inv, "idem").await, 1);
        assert_eq!(inv.orders("idem").await.unwrap().len(), 1);
        assert_eq!(
            inv.request(&again.request_id).await.unwrap(),
            None,
            "the duplicate leaves no record of its own"
        );

        // A key belongs to one user of one sale.
        let other_user = buy(&inv, &keyed("idem", "v", "k1")).await;
        assert!(!other_user.duplicate);
        assert_ne!(order_id(&other_user), order_id(&decided));
        assert_eq!(sold(&inv, "idem").await, 2);
    }

    #[tokio::test]
    async fn second_request_with_a_key_in_flight_never_buys() {
        let inv = MemoryInventory::default();
        inv.put_sale(sale("flight", 10, 5)).await.unwrap();
        let first = keyed("flight", "u", "k");
        let second = keyed("flight", "u", "k");
        inv.admit(&first).await.unwrap();

        // The second reaches the purchase step before the first is decided.
        let early = buy(&inv, &second).await;
        assert!(early.duplicate, "{early:?}");
        assert!(
            !matches!(early.outcome, Outcome::Success { .. }),
            "{early:?}"
        );
        assert_eq!(sold(&inv, "flight").await, 0);

        let decided = buy(&inv, &first).await;
        assert!(
            matches!(decided.outcome, Outcome::Success { .. }),
            "the key's first request still decides: {decided:?}"
        );
        assert_eq!(sold(&inv, "flight").await, 1);
    }

    #[tokio::test]
    async fn redelivered_request_is_a_duplicate_and_changes_nothing() {
        let inv = MemoryInventory::default();
        inv.put_sale(sale("redo", 10, 5)).await.unwrap();
        let p = purchase("redo", "u", 1);

        let first = buy(&inv, &p).await;
        assert!(!first.duplicate);
        let redelivered = buy(&inv, &p).await;
        assert!(redelivered.duplicate, "{redelivered:?}");
        assert_eq!(redelivered.outcome, first.outcome);

        // Twice in one batch: decided once.
        let q = purchase("redo", "v", 1);
        let both = inv.purchase(&[q.clone(), q]).await.unwrap();
        assert!(!both[0].duplicate);
        assert!(both[1].duplicate, "{both:?}");
        assert_eq!(both[1].outcome, both[0].outcome);

        assert_eq!(sold(&inv, "redo").await, 2);
        assert_eq!(inv.orders("redo").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn purchase_past_its_deadline_is_not_committed() {
        let inv = MemoryInventory::default();
        inv.put_sale(sale("late", 10, 1)).await.unwrap();
        let late = Purchase {
            deadline_ms: now_ms() - 1,
            ..purchase("late", "u", 1)
        };

        let d = buy(&inv, &late).await;
        assert_eq!(d.outcome, Outcome::Expired);
        assert_eq!(sold(&inv, "late").await, 0);
        assert!(inv.orders("late").await.unwrap().is_empty());
        let record = inv.request(&late.request_id).await.unwrap().unwrap();
        assert_eq!(
            record.outcome,
            Some(Outcome::Expired),
            "the outcome is recorded"
        );

        // The user's limit was not used up by the expired attempt.
        let on_time = buy(&inv, &purchase("late", "u", 1)).await;
        assert!(
            matches!(on_time.outcome, Outcome::Success { .. }),
            "{on_time:?}"
        );
    }

    #[tokio::test]
    async fn settle_does_not_overwrite_a_recorded_outcome() {
        let inv = MemoryInventory::default();
        inv.put_sale(sale("settle", 10, 1)).await.unwrap();

        let bought = purchase("settle", "u", 1);
        let success = buy(&inv, &bought).await.outcome;
        let late = inv.settle(&bought, Outcome::Expired).await.unwrap();
        assert!(late.duplicate, "{late:?}");
        assert_eq!(late.outcome, success, "the stored outcome comes back");
        let record = inv.request(&bought.request_id).await.unwrap().unwrap();
        assert_eq!(record.outcome, Some(success));
        assert_eq!(sold(&inv, "settle").await, 1, "settling sells nothing back");

        // A pending request is settled once; the first outcome wins.
        let pending = purchase("settle", "v", 1);
        inv.admit(&pending).await.unwrap();
        let first = inv.settle(&pending, Outcome::Expired).await.unwrap();
        assert_eq!(
            first,
            Decision {
                outcome: Outcome::Expired,
                duplicate: false
            }
        );
        let second = inv.settle(&pending, rejected("blacklisted")).await.unwrap();
        assert_eq!(
            second,
            Decision {
                outcome: Outcome::Expired,
                duplicate: true
            }
        );
        // Nor does a purchase step after it.
        let redelivered = buy(&inv, &pending).await;
        assert_eq!(redelivered.outcome, Outcome::Expired);
        assert!(redelivered.duplicate);
        assert_eq!(sold(&inv, "settle").await, 1);
    }

    #[tokio::test]
    async fn put_sale_replaces_until_the_first_sale_then_refuses() {
        let inv = MemoryInventory::default();
        assert_eq!(
            inv.put_sale(sale("swap", 5, 1)).await.unwrap(),
            Put::Created
        );
        assert_eq!(
            inv.put_sale(sale("swap", 7, 1)).await.unwrap(),
            Put::Replaced
        );
        // Attempts that sold nothing do not count as sales.
        let expired = Purchase {
            deadline_ms: now_ms() - 1,
            ..purchase("swap", "u", 1)
        };
        buy(&inv, &expired).await;
        assert_eq!(
            inv.put_sale(sale("swap", 8, 1)).await.unwrap(),
            Put::Replaced
        );

        buy(&inv, &purchase("swap", "u", 1)).await;
        let refused = inv.put_sale(sale("swap", 100, 1)).await;
        assert!(
            matches!(&refused, Err(InventoryError::HasSales(id)) if id == "swap"),
            "{refused:?}"
        );
        let status = inv.sale("swap").await.unwrap().unwrap();
        assert_eq!(
            (status.spec.stock, status.sold),
            (8, 1),
            "the sale is unchanged"
        );
    }

    #[tokio::test]
    async fn orders_are_listed_in_commit_order() {
        let inv = MemoryInventory::default();
        inv.put_sale(sale("feed", 10, 1)).await.unwrap();
        let mut committed = Vec::new();
        for batch in [vec!["a", "b", "a"], vec!["c"], vec!["d", "b", "e"]] {
            let batch: Vec<Purchase> = batch.iter().map(|u| purchase("feed", u, 1)).collect();
            let decisions = inv.purchase(&batch).await.unwrap();
            for (p, d) in batch.iter().zip(&decisions) {
                if let Outcome::Success { order_id } = &d.outcome {
                    committed.push((order_id.clone(), p.request_id.clone()));
                }
            }
        }
        assert_eq!(committed.len(), 5, "a and b are refused their second unit");

        let orders = inv.orders("feed").await.unwrap();
        let listed: Vec<_> = orders
            .iter()
            .map(|o| (o.order_id.clone(), o.request_id.clone()))
            .collect();
        assert_eq!(listed, committed);
        assert!(orders.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(inv.orders("nosuch").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn results_and_keys_older_than_the_retention_are_gone() {
        // Retention counts from the wall clock (`now_ms`) at which a record
        // was written: `request` hides older records at once, `sweep` (run
        // by a background task every ten seconds) forgets them and their
        // idempotency keys.
        let retention = Duration::from_millis(300);
        let inv = MemoryInventory::new(retention);
        inv.put_sale(sale("old", 10, 5)).await.unwrap();
        let first = keyed("old", "u", "k");
        inv.admit(&first).await.unwrap();
        buy(&inv, &first).await;
        assert!(inv.request(&first.request_id).await.unwrap().is_some());

        tokio::time::sleep(retention * 2).await;
        assert_eq!(
            inv.request(&first.request_id).await.unwrap(),
            None,
            "hidden past the retention, before any sweep"
        );
        inv.sweep();
        assert!(inv.inner.requests.is_empty(), "the record is forgotten");
        assert!(inv.inner.keys.is_empty(), "the key is forgotten");
        let reuse = keyed("old", "u", "k");
        assert_eq!(
            inv.admit(&reuse).await.unwrap(),
            Admission::Admitted,
            "the key is free again"
        );
        assert_eq!(inv.orders("old").await.unwrap().len(), 1, "orders stay");
    }
}
