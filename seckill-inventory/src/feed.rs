//! The order feed: every order of every sale in commit order, read a page
//! at a time from an opaque cursor, with a wait for new orders (long poll).
//!
//! Each store chooses its cursor: a sequence number where one process
//! commits every order (memory, the durable store), a position per sale's
//! order stream in Redis. A reader only ever hands back the `next` it was
//! given; resuming from it neither skips nor repeats an order.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

use crate::{InventoryError, OrderEvent};

/// What a reader of the order feed asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeedQuery {
    /// The `next` of the previous page; `None` (or empty) = from the start.
    pub after: Option<String>,
    /// Only this sale's orders (the cursor still covers the whole feed).
    pub sale_id: Option<String>,
    /// Most orders in the page (at least 1).
    pub limit: usize,
    /// How long to wait for an order when there is none after the cursor.
    pub wait: Duration,
}

/// One page of the order feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeedPage {
    /// Oldest first.
    pub orders: Vec<OrderEvent>,
    /// Where the next page starts.
    pub next: String,
}

fn bad_cursor() -> InventoryError {
    InventoryError::BadCursor("after must be a cursor from `next`".into())
}

/// The sequence number a cursor of a sequence-numbered feed stands for:
/// absent or empty is 0 (before the first order), otherwise the decimal
/// number of the last order read. Anything else is a bad cursor.
pub fn seq_cursor(after: Option<&str>) -> Result<u64, InventoryError> {
    match after.unwrap_or("") {
        "" => Ok(0),
        s if s.bytes().all(|b| b.is_ascii_digit()) => s.parse().map_err(|_| bad_cursor()),
        _ => Err(bad_cursor()),
    }
}

/// A cursor past the last order committed: from another store, or from
/// before the store was restored from an older backup. Refused, so the
/// reader notices instead of waiting for orders it would then skip.
pub fn check_head(after: u64, head: u64) -> Result<(), InventoryError> {
    if after > head {
        return Err(InventoryError::BadCursor(format!(
            "after {after} is past the last order ({head}): a cursor of another store, or of \
             one restored from an older backup"
        )));
    }
    Ok(())
}

/// Reads pages with `read` until one has orders or `wait` has passed.
/// `committed` counts committed orders (its changes wake the wait); it is
/// read before each page, so an order committed during a read is not
/// waited past. Bounded by `wait`, whatever the store does.
pub async fn wait_for_orders<F, Fut>(
    mut committed: watch::Receiver<u64>,
    wait: Duration,
    mut read: F,
) -> Result<FeedPage, InventoryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<FeedPage, InventoryError>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        committed.borrow_and_update();
        let page = read().await?;
        if !page.orders.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(page);
        }
        match tokio::time::timeout_at(deadline, committed.changed()).await {
            Ok(Ok(())) => {}
            // The deadline passed, or the store is gone: the empty page.
            Ok(Err(_)) | Err(_) => return Ok(page),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_cursors() {
        assert_eq!(seq_cursor(None).unwrap(), 0);
        assert_eq!(seq_cursor(Some("")).unwrap(), 0);
        assert_eq!(seq_cursor(Some("42")).unwrap(), 42);
        for bad in ["-1", "x", "1e3", " 1", "99999999999999999999999", "1.5"] {
            assert!(
                matches!(seq_cursor(Some(bad)), Err(InventoryError::BadCursor(_))),
                "{bad}"
            );
        }
        assert!(check_head(3, 3).is_ok());
        assert!(matches!(
            check_head(4, 3),
            Err(InventoryError::BadCursor(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_ends_with_an_order_or_the_deadline() {
        let (tx, rx) = watch::channel(0u64);
        let page = |n: usize| FeedPage {
            orders: (0..n)
                .map(|i| OrderEvent {
                    order_id: format!("o{i}"),
                    request_id: String::new(),
                    sale_id: "s".into(),
                    user_id: "u".into(),
                    quantity: 1,
                    at_ms: 0,
                    kind: crate::OrderEventKind::Placed,
                })
                .collect(),
            next: n.to_string(),
        };
        // Nothing comes: the empty page after the wait.
        let started = tokio::time::Instant::now();
        let got = wait_for_orders(rx.clone(), Duration::from_secs(2), || async { Ok(page(0)) })
            .await
            .unwrap();
        assert!(got.orders.is_empty());
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        // An order committed during the wait ends it.
        let reads = std::sync::atomic::AtomicUsize::new(0);
        let waiting = wait_for_orders(rx, Duration::from_secs(30), || {
            let n = reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok(page(usize::from(n > 0))) }
        });
        let commit = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send_replace(1);
        };
        let (got, ()) = tokio::join!(waiting, commit);
        assert_eq!(got.unwrap().orders.len(), 1);
        assert_eq!(started.elapsed(), Duration::from_millis(2100));
    }
}
