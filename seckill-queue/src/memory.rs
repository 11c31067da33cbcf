//! The in-memory request queue of the embedded mode: one bounded FIFO per
//! sale, a list of the sales that have entries, and a notifier that wakes
//! an idle consumer.
//!
//! A sale's FIFO allocates as it fills (and gives memory back once
//! drained), so a large capacity costs nothing until requests arrive. The
//! consumers are served from the list of sales with entries, in turn: a
//! call costs the entries it takes and the sales it visits, never a walk
//! over every open sale, so thousands of idle sales cost nothing.
//!
//! Entries leave the queue when a consumer takes them, so acknowledging is
//! a no-op here: in one process a consumer cannot die and leave entries
//! behind without the whole gateway going with it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use crate::{Delivery, QueueError, RequestQueue, Ticket, MAX_WAIT};

/// A drained FIFO keeps at most this much room for the next spike; more is
/// given back.
const KEEP_ALLOCATED: usize = 1024;

/// The embedded-mode [`RequestQueue`].
#[derive(Default)]
pub struct MemoryQueue {
    /// Every sale's queue: open ones, and closed ones until drained. One
    /// queue per sale, whatever its capacity changes and reopenings, so
    /// its entries come out in the order they went in.
    sales: RwLock<HashMap<String, Arc<SaleQueue>>>,
    /// The sales that have entries, in the order they are served. Lock
    /// order: a sale's state before this list.
    ready: Mutex<VecDeque<Arc<SaleQueue>>>,
    notify: Notify,
}

struct SaleQueue {
    sale_id: String,
    state: Mutex<SaleState>,
    enqueued: metrics::Counter,
    depth: metrics::Gauge,
}

struct SaleState {
    entries: VecDeque<Ticket>,
    capacity: usize,
    /// Closed to new entries; forgotten once drained.
    closed: bool,
    /// In the ready list (set exactly while it is, or while a consumer
    /// that took it from the list is serving it).
    ready: bool,
}

impl SaleQueue {
    fn new(sale_id: &str, capacity: u32) -> Self {
        let sale = sale_id.to_string();
        SaleQueue {
            sale_id: sale.clone(),
            state: Mutex::new(SaleState {
                entries: VecDeque::new(),
                capacity: capacity.max(1) as usize,
                closed: false,
                ready: false,
            }),
            enqueued: metrics::counter!("seckill_queue_enqueued_total", "sale" => sale.clone()),
            depth: metrics::gauge!("seckill_queue_depth", "sale" => sale),
        }
    }
}

impl MemoryQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes up to `max` entries from the sales with entries, in turn: each
    /// sale visited gives what it has (up to what is still wanted), then
    /// goes to the back of the list if it has more.
    fn take(&self, max: usize) -> Vec<Delivery> {
        let mut out = Vec::new();
        let mut drained_closed = Vec::new();
        // Each sale at most once per call, however the list changes meanwhile.
        let mut turns = self.ready.lock().unwrap().len();
        while out.len() < max && turns > 0 {
            turns -= 1;
            let Some(q) = self.ready.lock().unwrap().pop_front() else {
                break;
            };
            let mut st = q.state.lock().unwrap();
            while out.len() < max {
                match st.entries.pop_front() {
                    Some(ticket) => out.push(Delivery {
                        ticket,
                        entry_id: String::new(),
                        deliveries: 1,
                    }),
                    None => break,
                }
            }
            q.depth.set(st.entries.len() as f64);
            if st.entries.is_empty() {
                st.ready = false;
                if st.entries.capacity() > KEEP_ALLOCATED {
                    st.entries.shrink_to(KEEP_ALLOCATED);
                }
                if st.closed {
                    drained_closed.push(q.clone());
                }
            } else {
                self.ready.lock().unwrap().push_back(q.clone());
            }
        }
        for q in drained_closed {
            self.forget_if_drained(&q);
        }
        out
    }

    /// Drops a closed queue that has no entries left, unless it was
    /// reopened meanwhile.
    fn forget_if_drained(&self, q: &Arc<SaleQueue>) {
        let mut sales = self.sales.write().unwrap();
        let Some(current) = sales.get(&q.sale_id) else {
            return;
        };
        if !Arc::ptr_eq(current, q) {
            return;
        }
        let st = q.state.lock().unwrap();
        if st.closed && st.entries.is_empty() {
            drop(st);
            sales.remove(&q.sale_id);
        }
    }

    /// Room the FIFO of a sale holds allocated now (tests).
    #[cfg(test)]
    fn allocated(&self, sale_id: &str) -> usize {
        self.sales.read().unwrap()[sale_id]
            .state
            .lock()
            .unwrap()
            .entries
            .capacity()
    }
}

#[async_trait]
impl RequestQueue for MemoryQueue {
    async fn open(&self, sale_id: &str, capacity: u32) -> Result<(), QueueError> {
        let mut sales = self.sales.write().unwrap();
        if let Some(q) = sales.get(sale_id) {
            // The same FIFO with a new bound: what is queued keeps its
            // place, and a bound below the backlog only refuses new entries
            // until the backlog is below it.
            let mut st = q.state.lock().unwrap();
            st.capacity = capacity.max(1) as usize;
            st.closed = false;
            return Ok(());
        }
        sales.insert(
            sale_id.to_string(),
            Arc::new(SaleQueue::new(sale_id, capacity)),
        );
        Ok(())
    }

    async fn close(&self, sale_id: &str) -> Result<(), QueueError> {
        let mut sales = self.sales.write().unwrap();
        if let Some(q) = sales.get(sale_id) {
            let mut st = q.state.lock().unwrap();
            st.closed = true;
            if st.entries.is_empty() {
                drop(st);
                sales.remove(sale_id);
            }
        }
        Ok(())
    }

    async fn enqueue(&self, ticket: Ticket) -> Result<(), QueueError> {
        let by = ticket.purchase.store_by_ms;
        if by > 0 && seckill_inventory::now_ms() > by {
            return Err(QueueError::Unavailable(
                "enqueue ran after the gateway gave up on it".into(),
            ));
        }
        let q = self
            .sales
            .read()
            .unwrap()
            .get(&ticket.purchase.sale_id)
            .cloned();
        let Some(q) = q else {
            return Err(QueueError::UnknownSale(ticket.purchase.sale_id));
        };
        {
            let mut st = q.state.lock().unwrap();
            if st.closed {
                return Err(QueueError::UnknownSale(ticket.purchase.sale_id));
            }
            if st.entries.len() >= st.capacity {
                return Err(QueueError::Full(q.sale_id.clone()));
            }
            st.entries.push_back(ticket);
            q.depth.set(st.entries.len() as f64);
            if !st.ready {
                st.ready = true;
                self.ready.lock().unwrap().push_back(q.clone());
            }
        }
        q.enqueued.increment(1);
        self.notify.notify_one();
        Ok(())
    }

    async fn next_batch(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let max = max.max(1);
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            // Register interest before looking, so an enqueue between the
            // look and the wait is not missed.
            let ready = self.notify.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let batch = self.take(max);
            if !batch.is_empty() {
                if batch.len() == max {
                    // More may be waiting: pass the wake-up on.
                    self.notify.notify_one();
                }
                return Ok(batch);
            }
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
        let q = self.sales.read().unwrap().get(sale_id).cloned();
        Ok(q.map_or(0, |q| q.state.lock().unwrap().entries.len() as u64))
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
                store_by_ms: 0,
            },
            reply_to: "127.0.0.1:50051".to_string(),
            enqueued_at_ms: now_ms(),
            trace: None,
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
        assert!(q.sales.read().unwrap().is_empty());
        assert!(q.ready.lock().unwrap().is_empty());
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

    #[tokio::test(start_paused = true)]
    async fn new_capacity_keeps_first_in_first_out() {
        let q = MemoryQueue::new();
        assert!(q.next_batch(10, Duration::ZERO).await.unwrap().is_empty());
        q.open("s", 2).await.unwrap();
        q.enqueue(ticket("s", "a")).await.unwrap();
        q.enqueue(ticket("s", "b")).await.unwrap();
        q.open("s", 4).await.unwrap();
        q.enqueue(ticket("s", "c")).await.unwrap();
        let got = q.next_batch(10, WAIT).await.unwrap();
        assert_eq!(users(&got), ["a", "b", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn new_capacity_bounds_the_backlog_and_keeps_one_turn() {
        let q = MemoryQueue::new();
        q.open("s", 3).await.unwrap();
        q.open("t", 10).await.unwrap();
        for u in ["a", "b", "c"] {
            q.enqueue(ticket("s", u)).await.unwrap();
        }
        // A smaller bound than the backlog keeps the backlog and refuses
        // new entries: the bound is the new capacity, not old + new.
        q.open("s", 2).await.unwrap();
        assert!(matches!(
            q.enqueue(ticket("s", "d")).await,
            Err(QueueError::Full(_))
        ));
        q.enqueue(ticket("t", "x")).await.unwrap();
        // One turn per sale and round: s, then t, then s again.
        assert_eq!(users(&q.next_batch(1, WAIT).await.unwrap()), ["a"]);
        assert_eq!(users(&q.next_batch(1, WAIT).await.unwrap()), ["x"]);
        assert_eq!(users(&q.next_batch(1, WAIT).await.unwrap()), ["b"]);
        q.enqueue(ticket("s", "d")).await.unwrap();
        assert_eq!(q.depth("s").await.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn reopened_before_drained_keeps_first_in_first_out() {
        let q = MemoryQueue::new();
        q.open("s", 10).await.unwrap();
        q.enqueue(ticket("s", "a")).await.unwrap();
        q.close("s").await.unwrap();
        q.open("s", 10).await.unwrap();
        q.enqueue(ticket("s", "b")).await.unwrap();
        assert_eq!(users(&q.next_batch(10, WAIT).await.unwrap()), ["a", "b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_is_allocated_as_the_queue_fills() {
        // The largest capacity the admin API accepts, a hundred times: none
        // of it is allocated before entries arrive.
        let q = MemoryQueue::new();
        for i in 0..100 {
            q.open(&format!("s{i}"), 10_000_000).await.unwrap();
        }
        for i in 0..100 {
            assert_eq!(q.allocated(&format!("s{i}")), 0);
        }
        for i in 0..10 {
            q.enqueue(ticket("s0", &format!("u{i}"))).await.unwrap();
        }
        let room = q.allocated("s0");
        assert!((10..=KEEP_ALLOCATED).contains(&room), "{room}");

        // A spike's room is given back once drained.
        q.open("big", 10_000_000).await.unwrap();
        for i in 0..10_000 {
            q.enqueue(ticket("big", &format!("u{i}"))).await.unwrap();
        }
        while !q.next_batch(1000, Duration::ZERO).await.unwrap().is_empty() {}
        assert!(
            q.allocated("big") <= KEEP_ALLOCATED,
            "{}",
            q.allocated("big")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn taking_visits_only_sales_with_entries() {
        // Many idle sales and one busy one: each call visits the busy sale
        // alone, so its cost does not grow with the idle ones.
        let q = MemoryQueue::new();
        for i in 0..20_000 {
            q.open(&format!("idle{i}"), 10).await.unwrap();
        }
        q.open("busy", 10).await.unwrap();
        q.enqueue(ticket("busy", "a")).await.unwrap();
        assert_eq!(q.ready.lock().unwrap().len(), 1, "only the busy sale");
        assert_eq!(users(&q.next_batch(10, WAIT).await.unwrap()), ["a"]);
        assert!(q.ready.lock().unwrap().is_empty());
    }
}
