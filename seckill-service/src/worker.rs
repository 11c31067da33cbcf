//! One worker of the pool: take a batch, decide it, report it, acknowledge.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use seckill_inventory::{now_ms, Completion, Decision, Outcome, Purchase};
use seckill_ops::trace::{Kind, Span, SpanContext};
use seckill_queue::Delivery;
use tokio_util::sync::CancellationToken;

use crate::metrics::Again;
use crate::Service;

/// Why a batch was left unacknowledged.
#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error(transparent)]
    Inventory(#[from] seckill_inventory::InventoryError),
    #[error(transparent)]
    Queue(#[from] seckill_queue::QueueError),
}

/// Pause after a store error before trying again, so a Redis outage does
/// not turn into a busy loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(200);

pub(crate) async fn run(service: Arc<Service>, id: usize, shutdown: CancellationToken) {
    let cfg = &service.config;
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => return,
            b = service.queue.next_batch(cfg.batch_size, cfg.poll_wait) => b,
        };
        match batch {
            Ok(batch) if batch.is_empty() => {}
            Ok(batch) => {
                if let Err(e) = decide(&service, batch).await {
                    tracing::warn!(worker = id, error = %e, "batch left for redelivery");
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
            Err(e) => {
                tracing::warn!(worker = id, error = %e, "cannot read the request queue");
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
}

/// Decides one batch. On a store error the batch is not acknowledged, so a
/// queue with redelivery hands it out again; the purchase step is
/// idempotent, so whatever was already decided is not decided twice.
async fn decide(service: &Service, batch: Vec<Delivery>) -> Result<(), BatchError> {
    let started = Instant::now();
    let m = &service.metrics;
    let now = now_ms();
    // One span per traced entry, from pick-up to its decision, in the
    // trace of the purchase that queued it.
    let mut spans: HashMap<&str, Span> = batch
        .iter()
        .filter_map(|d| {
            let parent = SpanContext::parse(d.ticket.trace.as_deref()?)?;
            let mut span = Span::start("decide", Kind::Consumer, Some(parent))?;
            span.set("seckill.sale", d.ticket.purchase.sale_id.as_str());
            span.set("seckill.request_id", d.ticket.purchase.request_id.as_str());
            span.set("seckill.deliveries", d.deliveries);
            span.set(
                "seckill.queue_wait_ms",
                now.saturating_sub(d.ticket.enqueued_at_ms),
            );
            Some((d.entry_id.as_str(), span))
        })
        .collect();
    // The sales' counters of entries delivered again, looked up once per
    // sale of the batch (and so shown from zero).
    let mut again: HashMap<&str, Again> = HashMap::new();
    for d in &batch {
        m.queue_wait
            .record(now.saturating_sub(d.ticket.enqueued_at_ms) as f64 / 1000.0);
        let sale = d.ticket.purchase.sale_id.as_str();
        let counters = again.entry(sale).or_insert_with(|| m.again(sale));
        if d.deliveries > 1 {
            counters.redelivered.increment(1);
        }
    }
    if !service.config.work_delay.is_zero() {
        tokio::time::sleep(service.config.work_delay).await;
    }

    let mut results: Vec<(&Delivery, Decision)> = Vec::with_capacity(batch.len());
    let mut to_buy: Vec<&Delivery> = Vec::with_capacity(batch.len());
    let mut dead: Vec<Delivery> = Vec::new();
    let now = now_ms();
    for d in &batch {
        let p = &d.ticket.purchase;
        // Cheap refusals first: none of them touches stock.
        let settled = if d.deliveries > service.config.max_deliveries {
            dead.push(d.clone());
            Some(rejected("delivery_failed"))
        } else if now > p.deadline_ms {
            Some(Outcome::Expired)
        } else {
            service.risk.check(&p.user_id).map(rejected)
        };
        match settled {
            Some(outcome) => {
                let decision = service.inventory.settle(p, outcome).await?;
                results.push((d, decision));
            }
            None => to_buy.push(d),
        }
    }
    if !to_buy.is_empty() {
        let purchases: Vec<Purchase> = to_buy.iter().map(|d| d.ticket.purchase.clone()).collect();
        let decisions = service.inventory.purchase(&purchases).await?;
        results.extend(to_buy.into_iter().zip(decisions));
    }

    // Report, grouped by the gateway that waits for each result.
    let mut by_gateway: HashMap<&str, Vec<Completion>> = HashMap::new();
    for (d, decision) in &results {
        count(service, decision);
        let mut completion = Completion::of(&d.ticket.purchase, decision.outcome.clone());
        if let Some(mut span) = spans.remove(d.entry_id.as_str()) {
            span.set("seckill.outcome", decision.outcome.status());
            span.set("seckill.duplicate", decision.duplicate);
            completion.trace = Some(span.context().traceparent());
            span.end();
        }
        by_gateway
            .entry(d.ticket.reply_to.as_str())
            .or_default()
            .push(completion);
    }
    // One call per gateway, concurrently: a slow or dead gateway delays
    // only its own results, by at most the callback deadline.
    let mut calls = tokio::task::JoinSet::new();
    for (addr, results) in by_gateway {
        let (callback, addr) = (service.callback.clone(), addr.to_string());
        let (ok, error) = (m.callback_ok.clone(), m.callback_error.clone());
        calls.spawn(async move {
            let n = results.len() as u64;
            match callback.complete(&addr, results).await {
                Ok(()) => ok.iter().for_each(|c| c.increment(n)),
                Err(e) => {
                    // The result is recorded: the client can still read it.
                    error.iter().for_each(|c| c.increment(n));
                    tracing::warn!(error = %e, results = n, "callback failed");
                }
            }
        });
    }
    while calls.join_next().await.is_some() {}

    if !dead.is_empty() {
        service.queue.dead_letter(&dead).await?;
        for d in &dead {
            if let Some(counters) = again.get(d.ticket.purchase.sale_id.as_str()) {
                counters.dead_lettered.increment(1);
            }
        }
    }
    service.queue.ack(&batch).await?;
    m.process_duration.record(started.elapsed().as_secs_f64());
    Ok(())
}

fn count(service: &Service, decision: &Decision) {
    let m = &service.metrics;
    if decision.duplicate {
        m.duplicate.increment(1);
        return;
    }
    match decision.outcome {
        Outcome::Success { .. } => m.success.increment(1),
        Outcome::SoldOut => m.sold_out.increment(1),
        Outcome::LimitExceeded => m.limit_exceeded.increment(1),
        Outcome::Rejected { .. } => m.rejected.increment(1),
        Outcome::Expired => m.expired.increment(1),
    }
}

fn rejected(reason: &str) -> Outcome {
    Outcome::Rejected {
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use async_trait::async_trait;
    use seckill_inventory::{
        request_id, Admission, FeedPage, FeedQuery, Inventory, InventoryError, MemoryInventory,
        OrderEvent, Put, RequestRecord, SaleEvent, SaleSpec, SaleStatus,
    };
    use seckill_queue::{MemoryQueue, QueueError, RequestQueue, Ticket};
    use tokio::sync::broadcast;

    use super::*;
    use crate::{Callback, CallbackError, RiskConfig, ServiceConfig};

    const GATEWAY_A: &str = "10.0.0.1:50051";
    const GATEWAY_B: &str = "10.0.0.2:50051";
    const MAX_DELIVERIES: u32 = 3;

    /// Records every callback; fails them all when told to.
    #[derive(Default)]
    struct Gateways {
        calls: Mutex<Vec<(String, Vec<Completion>)>>,
        fail: AtomicBool,
    }

    #[async_trait]
    impl Callback for Gateways {
        async fn complete(
            &self,
            reply_to: &str,
            results: Vec<Completion>,
        ) -> Result<(), CallbackError> {
            self.calls
                .lock()
                .unwrap()
                .push((reply_to.to_string(), results));
            if self.fail.load(Ordering::SeqCst) {
                return Err(CallbackError::Address(reply_to.to_string()));
            }
            Ok(())
        }
    }

    impl Gateways {
        /// The calls made, ordered by gateway.
        fn calls(&self) -> Vec<(String, Vec<Completion>)> {
            let mut calls = self.calls.lock().unwrap().clone();
            calls.sort_by(|a, b| a.0.cmp(&b.0));
            calls
        }

        /// The outcome first reported for a request.
        fn outcome(&self, request_id: &str) -> Option<Outcome> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .flat_map(|(_, results)| results)
                .find(|c| c.request_id == request_id)
                .map(|c| c.outcome.clone())
        }
    }

    /// The memory queue, with a record of what was acknowledged and
    /// dead-lettered (the memory queue itself forgets entries once taken).
    #[derive(Default)]
    struct Ledger {
        queue: MemoryQueue,
        acked: Mutex<Vec<String>>,
        dead: Mutex<Vec<String>>,
    }

    fn ids(deliveries: &[Delivery]) -> Vec<String> {
        deliveries
            .iter()
            .map(|d| d.ticket.purchase.request_id.clone())
            .collect()
    }

    #[async_trait]
    impl RequestQueue for Ledger {
        async fn open(&self, sale_id: &str, capacity: u32) -> Result<(), QueueError> {
            self.queue.open(sale_id, capacity).await
        }
        async fn close(&self, sale_id: &str) -> Result<(), QueueError> {
            self.queue.close(sale_id).await
        }
        async fn enqueue(&self, ticket: Ticket) -> Result<(), QueueError> {
            self.queue.enqueue(ticket).await
        }
        async fn next_batch(
            &self,
            max: usize,
            wait: Duration,
        ) -> Result<Vec<Delivery>, QueueError> {
            self.queue.next_batch(max, wait).await
        }
        async fn ack(&self, deliveries: &[Delivery]) -> Result<(), QueueError> {
            self.acked.lock().unwrap().extend(ids(deliveries));
            self.queue.ack(deliveries).await
        }
        async fn dead_letter(&self, deliveries: &[Delivery]) -> Result<(), QueueError> {
            self.dead.lock().unwrap().extend(ids(deliveries));
            self.queue.dead_letter(deliveries).await
        }
        async fn depth(&self, sale_id: &str) -> Result<u64, QueueError> {
            self.queue.depth(sale_id).await
        }
        async fn ping(&self) -> Result<(), QueueError> {
            self.queue.ping().await
        }
    }

    /// The memory inventory, with a record of the requests that reached
    /// the purchase step, and a switch that makes the step fail.
    #[derive(Default)]
    struct Store {
        inventory: MemoryInventory,
        purchased: Mutex<Vec<String>>,
        down: AtomicBool,
    }

    #[async_trait]
    impl Inventory for Store {
        async fn put_sale(&self, spec: SaleSpec) -> Result<Put, InventoryError> {
            self.inventory.put_sale(spec).await
        }
        async fn update_sale(&self, spec: SaleSpec) -> Result<SaleStatus, InventoryError> {
            self.inventory.update_sale(spec).await
        }
        async fn remove_sale(&self, sale_id: &str) -> Result<bool, InventoryError> {
            self.inventory.remove_sale(sale_id).await
        }
        async fn removed(&self, sale_id: &str) -> Result<bool, InventoryError> {
            self.inventory.removed(sale_id).await
        }
        async fn request_of_key(
            &self,
            sale_id: &str,
            user_id: &str,
            key: &str,
        ) -> Result<Option<String>, InventoryError> {
            self.inventory.request_of_key(sale_id, user_id, key).await
        }
        async fn sale(&self, sale_id: &str) -> Result<Option<SaleStatus>, InventoryError> {
            self.inventory.sale(sale_id).await
        }
        async fn sales(&self) -> Result<Vec<SaleStatus>, InventoryError> {
            self.inventory.sales().await
        }
        async fn admit(&self, purchase: &Purchase) -> Result<Admission, InventoryError> {
            self.inventory.admit(purchase).await
        }
        async fn withdraw(&self, purchase: &Purchase) -> Result<(), InventoryError> {
            self.inventory.withdraw(purchase).await
        }
        async fn purchase(&self, batch: &[Purchase]) -> Result<Vec<Decision>, InventoryError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(InventoryError::Unavailable("down for the test".into()));
            }
            self.purchased
                .lock()
                .unwrap()
                .extend(batch.iter().map(|p| p.request_id.clone()));
            self.inventory.purchase(batch).await
        }
        async fn settle(
            &self,
            purchase: &Purchase,
            outcome: Outcome,
        ) -> Result<Decision, InventoryError> {
            self.inventory.settle(purchase, outcome).await
        }
        async fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, InventoryError> {
            self.inventory.request(request_id).await
        }
        async fn feed(&self, query: &FeedQuery) -> Result<FeedPage, InventoryError> {
            self.inventory.feed(query).await
        }
        async fn orders(&self, sale_id: &str) -> Result<Vec<OrderEvent>, InventoryError> {
            self.inventory.orders(sale_id).await
        }
        async fn cancel_order(
            &self,
            order_id: &str,
        ) -> Result<seckill_inventory::Cancellation, InventoryError> {
            self.inventory.cancel_order(order_id).await
        }
        fn events(&self) -> broadcast::Receiver<SaleEvent> {
            self.inventory.events()
        }
        async fn ping(&self) -> Result<(), InventoryError> {
            self.inventory.ping().await
        }
    }

    struct Harness {
        service: Arc<Service>,
        queue: Arc<Ledger>,
        store: Arc<Store>,
        gateways: Arc<Gateways>,
    }

    /// A service on the memory stores with one open sale of `stock` units.
    async fn harness(stock: u64) -> Harness {
        let queue = Arc::new(Ledger::default());
        let store = Arc::new(Store::default());
        let gateways = Arc::new(Gateways::default());
        store.put_sale(SaleSpec::new("s", stock)).await.unwrap();
        queue.open("s", 100).await.unwrap();
        let config = ServiceConfig {
            max_deliveries: MAX_DELIVERIES,
            risk: RiskConfig {
                blacklist: ["mallory".to_string()].into(),
                ..RiskConfig::default()
            },
            ..ServiceConfig::default()
        };
        let service = Service::new(queue.clone(), store.clone(), gateways.clone(), config);
        Harness {
            service,
            queue,
            store,
            gateways,
        }
    }

    fn ticket(user: &str, reply_to: &str) -> Ticket {
        Ticket {
            purchase: Purchase {
                request_id: request_id("s"),
                sale_id: "s".to_string(),
                user_id: user.to_string(),
                quantity: 1,
                idempotency_key: None,
                deadline_ms: now_ms() + 60_000,
                store_by_ms: 0,
            },
            reply_to: reply_to.to_string(),
            enqueued_at_ms: now_ms(),
            trace: None,
        }
    }

    fn expired(user: &str) -> Ticket {
        let mut t = ticket(user, GATEWAY_A);
        t.purchase.deadline_ms = now_ms() - 1;
        t
    }

    impl Harness {
        /// Queues the tickets and takes them back as one batch.
        async fn batch(&self, tickets: &[Ticket]) -> Vec<Delivery> {
            for t in tickets {
                self.queue.enqueue(t.clone()).await.unwrap();
            }
            let batch = self
                .queue
                .next_batch(tickets.len(), Duration::ZERO)
                .await
                .unwrap();
            assert_eq!(batch.len(), tickets.len());
            batch
        }

        async fn recorded(&self, t: &Ticket) -> Option<Outcome> {
            let record = self.store.request(&t.purchase.request_id).await.unwrap();
            record.and_then(|r| r.outcome)
        }

        async fn sold(&self) -> u64 {
            self.store.sale("s").await.unwrap().unwrap().sold
        }

        fn reached_purchase(&self, t: &Ticket) -> bool {
            let purchased = self.store.purchased.lock().unwrap();
            purchased.contains(&t.purchase.request_id)
        }

        fn acked(&self) -> Vec<String> {
            self.queue.acked.lock().unwrap().clone()
        }
    }

    fn rejected_for(reason: &str) -> Outcome {
        Outcome::Rejected {
            reason: reason.to_string(),
        }
    }

    fn is_success(outcome: &Option<Outcome>) -> bool {
        matches!(outcome, Some(Outcome::Success { .. }))
    }

    #[tokio::test]
    async fn expired_entries_are_settled_expired_without_touching_stock() {
        let h = harness(10).await;
        let late = expired("u1");
        let on_time = ticket("u2", GATEWAY_A);
        let batch = h.batch(&[late.clone(), on_time.clone()]).await;

        decide(&h.service, batch).await.unwrap();

        assert_eq!(h.recorded(&late).await, Some(Outcome::Expired));
        assert_eq!(
            h.gateways.outcome(&late.purchase.request_id),
            Some(Outcome::Expired)
        );
        assert!(
            !h.reached_purchase(&late),
            "dropped before the purchase step"
        );
        assert!(h.reached_purchase(&on_time));
        assert_eq!(h.sold().await, 1, "only the request on time bought");
        let orders = h.store.orders("s").await.unwrap();
        assert_eq!(orders.len(), 1);
        assert_eq!(orders[0].request_id, on_time.purchase.request_id);
    }

    #[tokio::test]
    async fn blacklisted_user_is_rejected_before_the_purchase_step() {
        let h = harness(10).await;
        let bad = ticket("mallory", GATEWAY_A);
        let batch = h.batch(std::slice::from_ref(&bad)).await;

        decide(&h.service, batch).await.unwrap();

        let want = rejected_for("blacklisted");
        assert_eq!(h.recorded(&bad).await, Some(want.clone()));
        assert_eq!(h.gateways.outcome(&bad.purchase.request_id), Some(want));
        assert!(!h.reached_purchase(&bad));
        assert_eq!(h.sold().await, 0);
        assert_eq!(h.acked(), vec![bad.purchase.request_id.clone()]);
    }

    #[tokio::test]
    async fn entry_over_max_deliveries_is_dead_lettered_and_rejected() {
        let h = harness(10).await;
        let mut batch = h
            .batch(&[ticket("u1", GATEWAY_A), ticket("u2", GATEWAY_A)])
            .await;
        // The memory queue never redelivers: stand in for a queue that did.
        batch[0].deliveries = MAX_DELIVERIES + 1;
        batch[1].deliveries = MAX_DELIVERIES;
        let (over, last_try) = (batch[0].ticket.clone(), batch[1].ticket.clone());

        decide(&h.service, batch).await.unwrap();

        let want = rejected_for("delivery_failed");
        assert_eq!(h.recorded(&over).await, Some(want.clone()));
        assert_eq!(h.gateways.outcome(&over.purchase.request_id), Some(want));
        assert!(!h.reached_purchase(&over));
        assert_eq!(
            *h.queue.dead.lock().unwrap(),
            vec![over.purchase.request_id.clone()],
            "only the entry over the limit is dead-lettered"
        );
        assert!(
            is_success(&h.recorded(&last_try).await),
            "the last allowed delivery is still decided"
        );
        let mut acked = h.acked();
        acked.sort();
        let mut all = vec![over.purchase.request_id, last_try.purchase.request_id];
        all.sort();
        assert_eq!(acked, all, "dead letters are acknowledged too");
    }

    #[tokio::test]
    async fn dead_lettered_entry_keeps_the_outcome_recorded_before() {
        let h = harness(10).await;
        let t = ticket("u1", GATEWAY_A);
        let first = h.batch(std::slice::from_ref(&t)).await;
        decide(&h.service, first.clone()).await.unwrap();
        let bought = h.recorded(&t).await;
        assert!(is_success(&bought), "{bought:?}");

        // The purchase was committed but the entry kept coming back.
        let mut again = first;
        again[0].deliveries = MAX_DELIVERIES + 1;
        decide(&h.service, again).await.unwrap();

        assert_eq!(h.recorded(&t).await, bought, "the purchase stands");
        let reported: Vec<_> = h.gateways.calls().into_iter().map(|(_, r)| r).collect();
        assert_eq!(reported.len(), 2);
        assert_eq!(
            Some(reported[1][0].outcome.clone()),
            bought,
            "the gateway is told the recorded outcome, not a failure"
        );
        assert_eq!(h.sold().await, 1);
    }

    #[tokio::test]
    async fn redelivered_entry_reports_its_recorded_outcome_and_buys_nothing() {
        let h = harness(10).await;
        let t = ticket("u1", GATEWAY_A);
        let first = h.batch(std::slice::from_ref(&t)).await;
        decide(&h.service, first.clone()).await.unwrap();
        let mut again = first;
        again[0].deliveries = 2;
        decide(&h.service, again).await.unwrap();

        let calls = h.gateways.calls();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].1, calls[1].1, "the same result, order id included");
        assert_eq!(h.sold().await, 1);
        assert_eq!(h.store.orders("s").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn results_of_a_batch_are_grouped_per_reply_to() {
        let h = harness(10).await;
        let tickets = [
            ticket("u1", GATEWAY_A),
            ticket("u2", GATEWAY_B),
            ticket("u3", GATEWAY_A),
            ticket("u4", GATEWAY_B),
            ticket("u5", GATEWAY_A),
        ];
        let batch = h.batch(&tickets).await;

        decide(&h.service, batch).await.unwrap();

        let calls = h.gateways.calls();
        let got: Vec<(String, Vec<String>)> = calls
            .iter()
            .map(|(gw, results)| {
                let ids = results.iter().map(|c| c.request_id.clone()).collect();
                (gw.clone(), ids)
            })
            .collect();
        let id = |i: usize| tickets[i].purchase.request_id.clone();
        assert_eq!(
            got,
            [
                (GATEWAY_A.to_string(), vec![id(0), id(2), id(4)]),
                (GATEWAY_B.to_string(), vec![id(1), id(3)]),
            ],
            "one call per gateway, each with its own results in batch order"
        );
        for (_, results) in &calls {
            for c in results {
                let t = tickets
                    .iter()
                    .find(|t| t.purchase.request_id == c.request_id)
                    .unwrap();
                assert_eq!(*c, Completion::of(&t.purchase, c.outcome.clone()));
                assert_eq!(h.recorded(t).await, Some(c.outcome.clone()));
            }
        }
    }

    #[tokio::test]
    async fn failing_callback_still_acks_and_results_stay_readable() {
        let h = harness(10).await;
        h.gateways.fail.store(true, Ordering::SeqCst);
        let tickets = [ticket("u1", GATEWAY_A), ticket("u2", GATEWAY_B)];
        let batch = h.batch(&tickets).await;

        decide(&h.service, batch).await.unwrap();

        assert_eq!(h.gateways.calls().len(), 2, "both gateways were tried");
        let mut acked = h.acked();
        acked.sort();
        let mut all: Vec<String> = tickets
            .iter()
            .map(|t| t.purchase.request_id.clone())
            .collect();
        all.sort();
        assert_eq!(acked, all, "the batch is acknowledged");
        for t in &tickets {
            let outcome = h.recorded(t).await;
            assert!(is_success(&outcome), "readable by request id: {outcome:?}");
        }
    }

    #[tokio::test]
    async fn store_error_leaves_the_batch_unacknowledged_for_redelivery() {
        let h = harness(10).await;
        let t = ticket("u1", GATEWAY_A);
        let batch = h.batch(std::slice::from_ref(&t)).await;
        h.store.down.store(true, Ordering::SeqCst);

        let failed = decide(&h.service, batch.clone()).await;

        assert!(
            matches!(failed, Err(BatchError::Inventory(_))),
            "{failed:?}"
        );
        assert!(h.acked().is_empty(), "nothing acknowledged");
        assert!(h.gateways.calls().is_empty(), "nothing reported");
        assert_eq!(h.recorded(&t).await, None, "still pending");

        // Redelivered once the store is back: decided once.
        h.store.down.store(false, Ordering::SeqCst);
        let mut again = batch;
        again[0].deliveries = 2;
        decide(&h.service, again).await.unwrap();
        assert!(is_success(&h.recorded(&t).await));
        assert_eq!(h.acked(), vec![t.purchase.request_id.clone()]);
        assert_eq!(h.sold().await, 1);
    }
}
