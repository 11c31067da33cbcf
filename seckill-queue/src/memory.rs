//! The in-memory request queue of the embedded mode: one bounded lock-free
//! MPMC ring per sale, and a notifier that wakes an idle consumer.
//!
//! Entries leave the ring when a consumer takes them, so acknowledging is a
//! no-op here: in one process a consumer cannot die and leave entries behind
//! without the whole gateway going with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use crossbeam_queue::ArrayQueue;
use tokio::sync::Notify;

use crate::{Delivery, QueueError, RequestQueue, Ticket, MAX_WAIT};

/// The embedded-mode [`RequestQueue`].
#[derive(Default)]
pub struct MemoryQueue {
    sales: RwLock<Sales>,
    /// Where the next `next_batch` starts its round over the sales.
    cursor: AtomicUsize,
    ready: Notify,
}

#[derive(Default)]
struct Sales {
    open: HashMap<String, Arc<SaleQueue>>,
    /// Open and closed-but-not-yet-drained queues, in the order served.
    rotation: Vec<Arc<SaleQueue>>,
}

struct SaleQueue {
    sale_id: String,
    ring: ArrayQueue<Ticket>,
    closed: AtomicBool,
    enqueued: metrics::Counter,
    depth: metrics::Gauge,
}

impl SaleQueue {
    fn new(sale_id: &str, capacity: u32) -> Self {
        let sale = sale_id.to_string();
        SaleQueue {
            sale_id: sale.clone(),
            ring: ArrayQueue::new(capacity.max(1) as usize),
            closed: AtomicBool::new(false),
            enqueued: metrics::counter!("seckill_queue_enqueued_total", "sale" => sale.clone()),
            depth: metrics::gauge!("seckill_queue_depth", "sale" => sale),
        }
    }
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn take(&self, max: usize) -> Vec<Delivery> {
        let sales = self.sales.read().unwrap();
        let n = sales.rotation.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut out = Vec::new();
        for i in 0..n {
            let q = &sales.rotation[(start + i) % n];
            while out.len() < max {
                match q.ring.pop() {
                    Some(ticket) => out.push(Delivery {
                        ticket,
                        entry_id: String::new(),
                        deliveries: 1,
                    }),
                    None => break,
                }
            }
            q.depth.set(q.ring.len() as f64);
            if out.len() >= max {
                break;
            }
        }
        out
    }

    fn drop_drained(&self) {
        let mut sales = self.sales.write().unwrap();
        sales
            .rotation
            .retain(|q| !(q.closed.load(Ordering::Acquire) && q.ring.is_empty()));
    }
}

#[async_trait]
impl RequestQueue for MemoryQueue {
    async fn open(&self, sale_id: &str, capacity: u32) -> Result<(), QueueError> {
        let mut sales = self.sales.write().unwrap();
        if let Some(q) = sales.open.get(sale_id) {
            if q.ring.capacity() == capacity.max(1) as usize {
                return Ok(());
            }
            // A new capacity: the old ring stays in rotation, closed, until
            // its entries are consumed.
            q.closed.store(true, Ordering::Release);
        }
        let q = Arc::new(SaleQueue::new(sale_id, capacity));
        sales.open.insert(sale_id.to_string(), q.clone());
        sales.rotation.push(q);
        Ok(())
    }

    async fn close(&self, sale_id: &str) -> Result<(), QueueError> {
        let mut sales = self.sales.write().unwrap();
        if let Some(q) = sales.open.remove(sale_id) {
            q.closed.store(true, Ordering::Release);
        }
        Ok(())
    }

    async fn enqueue(&self, ticket: Ticket) -> Result<(), QueueError> {
        let q = self
            .sales
            .read()
            .unwrap()
            .open
            .get(&ticket.purchase.sale_id)
            .cloned();
        let Some(q) = q else {
            return Err(QueueError::UnknownSale(ticket.purchase.sale_id));
        };
        if q.ring.push(ticket).is_err() {
            return Err(QueueError::Full(q.sale_id.clone()));
        }
        q.enqueued.increment(1);
        q.depth.set(q.ring.len() as f64);
        self.ready.notify_one();
        Ok(())
    }

    async fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let max = max.max(1);
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            // Register interest before looking, so an enqueue between the
            // look and the wait is not missed.
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let batch = self.take(max);
            if !batch.is_empty() {
                if batch.len() == max {
                    // More may be waiting: pass the wake-up on.
                    self.ready.notify_one();
                }
                return Ok(batch);
            }
            self.drop_drained();
            if tokio::time::timeout_at(deadline, ready).await.is_err() {
                return Ok(Vec::new());
            }
        }
    }

    async fn ack(&self, _deliveries: &[Delivery]) -> Result<(), QueueError> {
        Ok(())
    }

    async fn dead_letter(&self, _deliveries: &[Delivery]) -> Result<(), QueueError> {
        Ok(())
    }

    async fn depth(&self, sale_id: &str) -> Result<u64, QueueError> {
        let sales = self.sales.read().unwrap();
        Ok(sales
            .rotation
            .iter()
            .filter(|q| q.sale_id == sale_id)
            .map(|q| q.ring.len() as u64)
            .sum())
    }

    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use seckill_inventory::{now_ms, request_id, Purchase};
    use tokio::time::Instant;

    use super::*;

    fn ticket(sale: &str, user: &str) -> Ticket {
        Ticket {
            purchase: Purchase {
                request_id: request_id(sale),
                sale_id: sale.to_string(),
                user_id: user.to_string(),
                quantity: 1,
                idempotency_key: None,
                deadline_ms: now_ms() + 60_000,
            },
            reply_to: "127.0.0.1:50051".to_string(),
            enqueued_at_ms: now_ms(),
        }
    }

    fn users(batch: &[Delivery]) -> Vec<&str> {
        batch
            .iter()
            .map(|d| d.ticket.purchase.user_id.as_str())
            .collect()
    }

    fn sales(batch: &[Delivery]) -> Vec<&str> {
        batch
            .iter()
            .map(|d| d.ticket.purchase.sale_id.as_str())
            .collect()
    }

    /// Long enough that a test which waits it out has failed.
    const WAIT: Duration = Duration::from_millis(500);

    #[tokio::test(start_paused = true)]
    async fn full_queue_refuses_and_keeps_every_entry() {
        let q = MemoryQueue::new();
        q.open("s", 3).await.unwrap();
        let queued: Vec<Ticket> = (0..3).map(|i| ticket("s", &format!("u{i}"))).collect();
        for t in &queued {
            q.enqueue(t.clone()).await.unwrap();
        }
        let refused = q.enqueue(ticket("s", "over")).await;
        assert!(
            matches!(&refused, Err(QueueError::Full(s)) if s == "s"),
            "{refused:?}"
        );
        assert_eq!(q.depth("s").await.unwrap(), 3);

        let got = q.next_batch(10, WAIT).await.unwrap();
        let got: Vec<Ticket> = got.into_iter().map(|d| d.ticket).collect();
        assert_eq!(got, queued, "the refusal dropped nothing and added nothing");
        // Taking frees the room.
        q.enqueue(ticket("s", "next")).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_sale_is_refused() {
        let q = MemoryQueue::new();
        let refused = q.enqueue(ticket("nosuch", "u")).await;
        assert!(
            matches!(&refused, Err(QueueError::UnknownSale(s)) if s == "nosuch"),
            "{refused:?}"
        );
        assert_eq!(q.depth("nosuch").await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn empty_queue_waits_up_to_wait_then_returns_empty() {
        let q = MemoryQueue::new();
        q.open("s", 10).await.unwrap();
        let started = Instant::now();
        let got = q.next_batch(10, Duration::from_millis(200)).await.unwrap();
        assert!(got.is_empty());
        assert_eq!(started.elapsed(), Duration::from_millis(200));

        // The wait is capped, so consumers notice a shutdown promptly.
        let started = Instant::now();
        let got = q.next_batch(10, MAX_WAIT * 10).await.unwrap();
        assert!(got.is_empty());
        assert_eq!(started.elapsed(), MAX_WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_consumer_wakes_when_an_entry_arrives() {
        let q = Arc::new(MemoryQueue::new());
        q.open("s", 10).await.unwrap();
        let started = Instant::now();
        let consumer = tokio::spawn({
            let q = q.clone();
            async move { q.next_batch(10, MAX_WAIT).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        q.enqueue(ticket("s", "late")).await.unwrap();
        let got = consumer.await.unwrap();
        assert_eq!(users(&got), ["late"]);
        assert!(
            started.elapsed() < MAX_WAIT,
            "woke at {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn entries_of_a_sale_come_out_first_in_first_out() {
        let q = MemoryQueue::new();
        q.open("s", 10).await.unwrap();
        let order: Vec<String> = (0..7).map(|i| format!("u{i}")).collect();
        for u in &order {
            q.enqueue(ticket("s", u)).await.unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..4 {
            let batch = q.next_batch(2, WAIT).await.unwrap();
            got.extend(users(&batch).into_iter().map(String::from));
        }
        assert_eq!(got, order);
    }

    #[tokio::test(start_paused = true)]
    async fn sales_are_served_in_turn() {
        let q = MemoryQueue::new();
        for s in ["a", "b"] {
            q.open(s, 10).await.unwrap();
            for i in 0..4 {
                q.enqueue(ticket(s, &format!("{s}{i}"))).await.unwrap();
            }
        }
        let first = q.next_batch(2, WAIT).await.unwrap();
        let second = q.next_batch(2, WAIT).await.unwrap();
        let third = q.next_batch(2, WAIT).await.unwrap();
        assert_eq!(sales(&first), [sales(&first)[0]; 2]);
        assert_ne!(
            sales(&second)[0],
            sales(&first)[0],
            "the next batch starts at the next sale"
        );
        assert_eq!(sales(&third), sales(&first));
    }

    #[tokio::test(start_paused = true)]
    async fn batch_larger_than_a_sales_backlog_is_filled_from_the_next_sale() {
        let q = MemoryQueue::new();
        for s in ["a", "b"] {
            q.open(s, 10).await.unwrap();
            for i in 0..2 {
                q.enqueue(ticket(s, &format!("{s}{i}"))).await.unwrap();
            }
        }
        let got = q.next_batch(3, WAIT).await.unwrap();
        assert_eq!(got.len(), 3, "{:?}", users(&got));
        let mut from: Vec<&str> = sales(&got);
        from.dedup();
        assert_eq!(from.len(), 2, "both sales, one after the other: {from:?}");
        let rest = q.next_batch(3, WAIT).await.unwrap();
        assert_eq!(rest.len(), 1, "{:?}", users(&rest));
    }

    #[tokio::test(start_paused = true)]
    async fn taken_entries_are_gone_acked_or_not() {
        // Entries leave the ring when taken; ack is a no-op. A consumer in
        // this process cannot die alone, so nothing is ever redelivered and
        // every delivery is the first.
        let q = MemoryQueue::new();
        q.open("s", 10).await.unwrap();
        q.enqueue(ticket("s", "a")).await.unwrap();
        q.enqueue(ticket("s", "b")).await.unwrap();

        let unacked = q.next_batch(1, WAIT).await.unwrap();
        assert_eq!(users(&unacked), ["a"]);
        assert_eq!(unacked[0].deliveries, 1);
        assert_eq!(q.depth("s").await.unwrap(), 1, "taken, not pending");

        let acked = q.next_batch(1, WAIT).await.unwrap();
        assert_eq!(users(&acked), ["b"], "the unacked entry does not come back");
        q.ack(&acked).await.unwrap();
        q.dead_letter(&acked).await.unwrap();

        let started = Instant::now();
        assert!(q.next_batch(10, WAIT).await.unwrap().is_empty());
        assert_eq!(started.elapsed(), WAIT, "nothing was pending");
        assert_eq!(q.depth("s").await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_queue_still_delivers_what_was_queued() {
        let q = MemoryQueue::new();
        q.open("s", 10).await.unwrap();
        q.enqueue(ticket("s", "a")).await.unwrap();
        q.enqueue(ticket("s", "b")).await.unwrap();
        q.close("s").await.unwrap();

        let refused = q.enqueue(ticket("s", "c")).await;
        assert!(
            matches!(&refused, Err(QueueError::UnknownSale(s)) if s == "s"),
            "{refused:?}"
        );
        assert_eq!(q.depth("s").await.unwrap(), 2);
        let got = q.next_batch(10, WAIT).await.unwrap();
        assert_eq!(users(&got), ["a", "b"]);

        // Drained, it leaves the rotation; reopening starts a fresh queue.
        assert!(q.next_batch(10, Duration::ZERO).await.unwrap().is_empty());
        assert!(q.sales.read().unwrap().rotation.is_empty());
        q.open("s", 10).await.unwrap();
        q.enqueue(ticket("s", "d")).await.unwrap();
        assert_eq!(users(&q.next_batch(10, WAIT).await.unwrap()), ["d"]);
    }

    #[tokio::test(start_paused = true)]
    async fn new_capacity_keeps_the_queued_entries() {
        let q = MemoryQueue::new();
        q.open("s", 2).await.unwrap();
        q.enqueue(ticket("s", "a")).await.unwrap();
        q.enqueue(ticket("s", "b")).await.unwrap();
        assert!(matches!(
            q.enqueue(ticket("s", "c")).await,
            Err(QueueError::Full(_))
        ));
        q.open("s", 4).await.unwrap();
        q.enqueue(ticket("s", "c")).await.unwrap();
        q.enqueue(ticket("s", "d")).await.unwrap();
        assert_eq!(q.depth("s").await.unwrap(), 4, "old and new entries");
        let got = q.next_batch(10, WAIT).await.unwrap();
        let mut got = users(&got);
        got.sort();
        assert_eq!(got, ["a", "b", "c", "d"], "none lost to the change");
    }
}
