//! The waiter table: request id → the parked HTTP request waiting for its
//! result. Bounded; a full table refuses new requests (503) rather than
//! grow without limit.

use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use seckill_inventory::Completion;
use tokio::sync::oneshot;

/// Parked requests, by request id.
pub struct Waiters {
    map: DashMap<String, oneshot::Sender<Completion>>,
    len: AtomicUsize,
    max: usize,
    gauge: metrics::Gauge,
}

/// A parked request's handle. Dropping it (answered, timed out, client gone)
/// removes the entry, so the table only holds requests still waiting.
pub struct Waiter<'a> {
    waiters: &'a Waiters,
    request_id: String,
    rx: oneshot::Receiver<Completion>,
}

impl Waiter<'_> {
    /// The result, or `None` when it does not come before `until`.
    pub async fn wait_until(mut self, until: tokio::time::Instant) -> Option<Completion> {
        tokio::time::timeout_at(until, &mut self.rx)
            .await
            .ok()?
            .ok()
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.waiters.remove(&self.request_id);
    }
}

impl Waiters {
    pub fn new(max: usize) -> Self {
        Waiters {
            map: DashMap::new(),
            len: AtomicUsize::new(0),
            max,
            gauge: metrics::gauge!("seckill_gateway_waiting_requests"),
        }
    }

    /// Parks `request_id`, or `None` when the table is full.
    pub fn park(&self, request_id: &str) -> Option<Waiter<'_>> {
        if self.len.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.len.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.map.insert(request_id.to_string(), tx);
        self.gauge.increment(1.0);
        Some(Waiter {
            waiters: self,
            request_id: request_id.to_string(),
            rx,
        })
    }

    /// Hands a result to its waiting request. False when no request waits
    /// for it (unknown, already answered, or timed out).
    pub fn complete(&self, result: Completion) -> bool {
        match self.remove(&result.request_id) {
            Some(tx) => tx.send(result).is_ok(),
            None => false,
        }
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    fn remove(&self, request_id: &str) -> Option<oneshot::Sender<Completion>> {
        let (_, tx) = self.map.remove(request_id)?;
        self.len.fetch_sub(1, Ordering::AcqRel);
        self.gauge.decrement(1.0);
        Some(tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(id: &str) -> Completion {
        Completion {
            request_id: id.into(),
            sale_id: "s".into(),
            user_id: "u".into(),
            quantity: 1,
            outcome: seckill_inventory::Outcome::SoldOut,
            trace: None,
        }
    }

    #[tokio::test]
    async fn completes_once_and_bounds_the_table() {
        let w = Waiters::new(2);
        let a = w.park("a").unwrap();
        let _b = w.park("b").unwrap();
        assert!(w.park("c").is_none(), "full");
        assert!(w.complete(result("a")));
        assert!(!w.complete(result("a")), "answered already");
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        assert_eq!(a.wait_until(far).await.unwrap().request_id, "a");
        assert_eq!(w.len(), 1);
        assert!(w.park("c").is_some(), "room again");
    }

    #[test]
    fn dropped_waiter_leaves_the_table() {
        let w = Waiters::new(1);
        drop(w.park("a").unwrap());
        assert_eq!(w.len(), 0);
        assert!(!w.complete(result("a")));
    }
}
