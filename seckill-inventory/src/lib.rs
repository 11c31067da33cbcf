//! Sales, stock and the one atomic purchase step of a flash sale.
//!
//! [`Inventory`] is the store every seckill service decides purchases
//! against and every gateway reads sales and request results from. The
//! purchase step checks the deadline, idempotency, the per-user limit and
//! stock, decrements stock, records the result and appends the order event
//! in one atomic step per request: never check-then-act across two calls.
//!
//! [`MemoryInventory`] serves the embedded mode (alone with `--data-dir
//! none`, or as the deciding half of the durable store, which keeps its
//! [`Journal`]); the Redis implementation sits behind the same trait.

#![forbid(unsafe_code)]

mod feed;
mod ids;
mod journal;
mod memory;
mod model;

pub use feed::{check_head, seq_cursor, wait_for_orders, FeedPage, FeedQuery};
pub use ids::{now_ms, unique_id};
pub use journal::{Change, Journal, Placed, SavedKey, SavedSale, Snapshot};
pub use memory::{MemoryInventory, DEFAULT_RETENTION};
pub use model::*;

/// Checks a new definition of a sale against what it sold: `Conflict` when
/// the stock would fall below the units sold or the per-user limit below
/// the most a buyer holds. Every implementation applies it in its atomic
/// update step.
pub fn check_update(
    spec: &SaleSpec,
    sold: u64,
    most_held: Option<u32>,
) -> Result<(), InventoryError> {
    if spec.stock < sold {
        return Err(InventoryError::Conflict(format!(
            "stock {} is below the {sold} units sold",
            spec.stock
        )));
    }
    if let Some(held) = most_held.filter(|&h| h > spec.per_user_limit) {
        return Err(InventoryError::Conflict(format!(
            "per_user_limit {} is below the {held} units a buyer holds",
            spec.per_user_limit
        )));
    }
    Ok(())
}

use async_trait::async_trait;
use tokio::sync::broadcast;

/// Errors of an inventory store.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The sale has sold units already and cannot be replaced.
    #[error("sale {0} has sales already")]
    HasSales(String),
    /// No such sale.
    #[error("no sale {0}")]
    NotFound(String),
    /// The id belongs to a removed sale whose orders are kept: creating it
    /// again would sell its units twice.
    #[error("sale {0} was removed and its orders are kept")]
    Removed(String),
    /// A change that would break what was sold: stock below the units
    /// sold, or a per-user limit below what a buyer holds.
    #[error("{0}")]
    Conflict(String),
    /// A cursor of the order feed that this store did not hand out.
    #[error("{0}")]
    BadCursor(String),
    /// The store cannot be reached; callers fail closed.
    #[error("inventory store unavailable: {0}")]
    Unavailable(String),
}

/// The store of sales, stock, request results and orders.
#[async_trait]
pub trait Inventory: Send + Sync + 'static {
    /// Creates a sale, or replaces one that has sold nothing yet.
    async fn put_sale(&self, spec: SaleSpec) -> Result<Put, InventoryError>;

    /// Changes a live sale's definition in one atomic step: refused with
    /// [`InventoryError::Conflict`] when `spec.stock` is below the units
    /// sold or `spec.per_user_limit` below what a buyer already holds, and
    /// [`InventoryError::NotFound`] for an unknown or removed sale.
    async fn update_sale(&self, spec: SaleSpec) -> Result<SaleStatus, InventoryError>;

    /// Ends and removes a sale from the catalog. Its orders and results
    /// stay (readable, and in the order feed); a sale that sold anything
    /// keeps its id, so it can never be created and sold again. Returns
    /// false if it did not exist.
    async fn remove_sale(&self, sale_id: &str) -> Result<bool, InventoryError>;

    /// Whether an operator removed the sale (its removal is recorded),
    /// as opposed to a sale the store never had, or lost: a gateway that
    /// knew a sale the store no longer has tells the two apart with it.
    async fn removed(&self, sale_id: &str) -> Result<bool, InventoryError>;

    /// One sale with its sold count.
    async fn sale(&self, sale_id: &str) -> Result<Option<SaleStatus>, InventoryError>;

    /// All sales with their sold counts, ordered by id.
    async fn sales(&self) -> Result<Vec<SaleStatus>, InventoryError>;

    /// Records an admitted request as pending and, if it carries an
    /// idempotency key, claims the key for it in the same step.
    ///
    /// Returns [`Admission::Duplicate`] with the first request's id when the
    /// key was claimed before; nothing is recorded then.
    async fn admit(&self, purchase: &Purchase) -> Result<Admission, InventoryError>;

    /// The request that claimed `key` for `user_id` in `sale_id`, while
    /// within the result retention: how a repeat of the key finds the first
    /// request's result in any state of the sale.
    async fn request_of_key(
        &self,
        sale_id: &str,
        user_id: &str,
        key: &str,
    ) -> Result<Option<String>, InventoryError>;

    /// Undoes [`Inventory::admit`] for a request that never reached the
    /// queue (no token, queue full), so its key can be used again.
    async fn withdraw(&self, purchase: &Purchase) -> Result<(), InventoryError>;

    /// The atomic purchase step, for a batch of requests (one decision per
    /// request, in order). A request decided before (redelivery), or whose
    /// idempotency key belongs to a request decided before, gets the stored
    /// outcome back with `duplicate` set and changes nothing.
    async fn purchase(&self, batch: &[Purchase]) -> Result<Vec<Decision>, InventoryError>;

    /// Records a final outcome decided outside the purchase step (expired,
    /// rejected by risk control, dead-lettered). An outcome recorded before
    /// wins: the stored one is returned with `duplicate` set.
    async fn settle(
        &self,
        purchase: &Purchase,
        outcome: Outcome,
    ) -> Result<Decision, InventoryError>;

    /// The recorded state of a request, while within the result retention.
    async fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, InventoryError>;

    /// The order events of a sale, oldest first (the audit trail): each
    /// order as placed, and a `Cancelled` event for each cancellation.
    async fn orders(&self, sale_id: &str) -> Result<Vec<OrderEvent>, InventoryError>;

    /// A page of the order feed: every sale's orders in commit order after
    /// `query.after`, waiting up to `query.wait` when there is none yet;
    /// [`InventoryError::BadCursor`] for a cursor it did not hand out.
    async fn feed(&self, query: &FeedQuery) -> Result<FeedPage, InventoryError>;

    /// Cancels an order in one atomic step: its units go back to the
    /// sale's stock and to the buyer's per-user allowance, and a
    /// `Cancelled` event follows on the order topic. Once: a repeat
    /// returns the first cancellation with `repeat` set and changes
    /// nothing. A sale that had sold out is announced
    /// ([`SaleEvent::Released`]), so every gateway sells again. [`InventoryError::NotFound`] for an order id the
    /// store does not know.
    async fn cancel_order(&self, order_id: &str) -> Result<Cancellation, InventoryError>;

    /// Sale changes, for gateways that keep a local copy of the catalog.
    fn events(&self) -> broadcast::Receiver<SaleEvent>;

    /// Succeeds while the store is reachable (readiness).
    async fn ping(&self) -> Result<(), InventoryError>;
}
