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
