//! What a durable store needs from the memory inventory: every change, as
//! it is made, and a way to start again from what was kept.
//!
//! The memory inventory stays the one place that decides (under its sale
//! locks, without I/O); a [`Journal`] receives each step's changes as one
//! unit, in the order the steps took effect on a sale, and writes them
//! down. [`Snapshot`] is what the journal's store read back at start.

use std::collections::HashMap;

use crate::{OrderEvent, RequestRecord, SaleSpec};

/// One change to the inventory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A sale's definition and removal flag, as they are now (created,
    /// replaced, changed or removed).
    Sale { spec: SaleSpec, removed: bool },
    /// A request's record as it is now: pending at admission, then its
    /// final outcome; `at_ms` starts its retention.
    Request { record: RequestRecord, at_ms: u64 },
    /// A pending request withdrawn (it never reached the queue): its record
    /// is gone, unless it was decided meanwhile.
    Withdrawn { request_id: String },
    /// An idempotency key claimed by a request.
    KeyClaimed {
        sale_id: String,
        user_id: String,
        key: String,
        request_id: String,
        at_ms: u64,
    },
    /// An idempotency key released by the request that claimed it (and
    /// only by it: a later claim by another request stays).
    KeyReleased {
        sale_id: String,
        user_id: String,
        key: String,
        request_id: String,
    },
    /// An order event: a unit (or several) sold (`Placed`), or given back
    /// by a cancellation (`Cancelled`, sent after its order's `Placed`).
    Order(OrderEvent),
}

/// Receives the inventory's changes, one step's changes at a time (a whole
/// purchase batch, an admission, a sale change), to be kept together or not
/// at all. A sale's [`Change::Sale`]s arrive in the order they took effect;
/// every other change commutes with the other steps' (orders only add,
/// and an order's cancellation follows the step that placed it; records
/// and keys are per request). It must not block.
pub trait Journal: Send + Sync + 'static {
    fn record(&self, changes: Vec<Change>);

    /// An admission's changes (its pending record, the key it claimed).
    /// Nobody waits for them, and most are followed within milliseconds by
    /// their request's decision, which replaces the record: the journal may
    /// keep them later than steps recorded after them, but never after a
    /// later change of the same request. By default, [`Journal::record`].
    fn admitted(&self, changes: Vec<Change>) {
        self.record(changes);
    }
}

/// A sale as kept: its definition, whether it was removed, the units each
/// buyer holds (its `sold` is their sum: placed minus cancelled), and its
/// orders by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedSale {
    pub spec: SaleSpec,
    pub removed: bool,
    pub held: HashMap<String, u32>,
    pub placed: HashMap<String, Placed>,
}

/// An order of a sale as placed and, once cancelled, when (Unix ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub order: OrderEvent,
    pub cancelled_at_ms: Option<u64>,
}

/// A claimed idempotency key as kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedKey {
    pub sale_id: String,
    pub user_id: String,
    pub key: String,
    pub request_id: String,
    pub at_ms: u64,
}

/// Everything a memory inventory starts again from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub sales: Vec<SavedSale>,
    /// Records within the retention, with the time their retention starts.
    pub requests: Vec<(RequestRecord, u64)>,
    pub keys: Vec<SavedKey>,
}
