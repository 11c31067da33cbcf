//! The values the store keeps and hands out: sales, purchases, outcomes.

use serde::{Deserialize, Serialize};

/// Default units one user may buy in a sale.
pub const DEFAULT_PER_USER_LIMIT: u32 = 1;
/// Default tokens per second of a sale's bucket (the backend's pace).
pub const DEFAULT_TOKEN_RATE: u32 = 2000;
/// Default capacity of a sale's token queue.
pub const DEFAULT_TOKEN_CAPACITY: u32 = 500;
/// Default capacity of a sale's request queue.
pub const DEFAULT_QUEUE_CAPACITY: u32 = 10_000;
/// Default longest estimated wait a `fifo` sale lets a buyer wait in line.
pub const DEFAULT_MAX_WAIT_MS: u32 = 1000;
/// Default most buyers waiting in a `fifo` sale's line.
pub const DEFAULT_WAIT_CAPACITY: u32 = 10_000;

/// How a sale admits a purchase that finds no token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdmissionMode {
    /// Refused at once (`429 no_token`).
    #[default]
    Immediate,
    /// Waits in line, in arrival order, for the next token.
    Fifo,
}

impl AdmissionMode {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionMode::Immediate => "immediate",
            AdmissionMode::Fifo => "fifo",
        }
    }
}

fn default_max_wait_ms() -> u32 {
    DEFAULT_MAX_WAIT_MS
}

fn default_wait_capacity() -> u32 {
    DEFAULT_WAIT_CAPACITY
}

/// The definition of a sale, as the admin API sets it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleSpec {
    /// 1..=64 chars of `[A-Za-z0-9_-]`.
    pub sale_id: String,
    /// Units on sale.
    pub stock: u64,
    /// Units one user may hold.
    pub per_user_limit: u32,
    /// Opening time, Unix ms; `None` = open now.
    pub starts_at_ms: Option<u64>,
    /// Closing time, Unix ms; `None` = until sold out or removed.
    pub ends_at_ms: Option<u64>,
    /// Tokens per second the bucket's generator adds.
    pub token_rate: u32,
    /// Capacity of the token queue.
    pub token_capacity: u32,
    /// Capacity of the request queue.
    pub queue_capacity: u32,
    /// Paused by an operator: purchases are refused at once (`409
    /// paused`); what was queued before is still decided.
    #[serde(default)]
    pub paused: bool,
    /// What a purchase without a token gets: a refusal or a place in line.
    #[serde(default)]
    pub admission: AdmissionMode,
    /// `fifo`: the longest estimated wait a buyer is let wait; beyond it
    /// `429 wait_too_long`.
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u32,
    /// `fifo`: the most buyers in line; beyond it `429 line_full`.
    #[serde(default = "default_wait_capacity")]
    pub wait_capacity: u32,
}

impl SaleSpec {
    /// A sale open now with the default limits.
    pub fn new(sale_id: impl Into<String>, stock: u64) -> Self {
        SaleSpec {
            sale_id: sale_id.into(),
            stock,
            per_user_limit: DEFAULT_PER_USER_LIMIT,
            starts_at_ms: None,
            ends_at_ms: None,
            token_rate: DEFAULT_TOKEN_RATE,
            token_capacity: DEFAULT_TOKEN_CAPACITY,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            paused: false,
            admission: AdmissionMode::Immediate,
            max_wait_ms: DEFAULT_MAX_WAIT_MS,
            wait_capacity: DEFAULT_WAIT_CAPACITY,
        }
    }
}

/// Whether `id` is a valid sale id: 1..=64 chars of `[A-Za-z0-9_-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A sale with its sold count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaleStatus {
    pub spec: SaleSpec,
    pub sold: u64,
}

/// Where a sale stands at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaleState {
    Upcoming,
    Active,
    Paused,
    SoldOut,
    Ended,
}

impl SaleState {
    /// The name the API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            SaleState::Upcoming => "upcoming",
            SaleState::Active => "active",
            SaleState::Paused => "paused",
            SaleState::SoldOut => "sold_out",
            SaleState::Ended => "ended",
        }
    }
}

impl SaleStatus {
    /// Units left.
    pub fn remaining(&self) -> u64 {
        self.spec.stock.saturating_sub(self.sold)
    }

    /// The sale's state at `now_ms`: an ended sale is ended, paused or not.
    pub fn state(&self, now_ms: u64) -> SaleState {
        match window_state(&self.spec, now_ms) {
            Some(SaleState::Ended) => SaleState::Ended,
            _ if self.spec.paused => SaleState::Paused,
            Some(state) => state,
            None if self.remaining() == 0 => SaleState::SoldOut,
            None => SaleState::Active,
        }
    }
}

/// `Some(Upcoming | Ended)` when `now_ms` lies outside the sale's window.
pub fn window_state(spec: &SaleSpec, now_ms: u64) -> Option<SaleState> {
    if spec.ends_at_ms.is_some_and(|end| now_ms >= end) {
        Some(SaleState::Ended)
    } else if spec.starts_at_ms.is_some_and(|start| now_ms < start) {
        Some(SaleState::Upcoming)
    } else {
        None
    }
}

/// Result of [`crate::Inventory::put_sale`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    Created,
    Replaced,
}

/// One admitted purchase request, as queued and decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase {
    /// `<sale_id>.<random>`: the sale is recoverable from the id alone, so
    /// a store can keep a request's record next to its sale; the random
    /// part (128 bits, see [`crate::unique_id`]) makes it unguessable.
    pub request_id: String,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: u32,
    pub idempotency_key: Option<String>,
    /// Unix ms after which the purchase must not be committed.
    pub deadline_ms: u64,
    /// Unix ms after which the store must not admit or queue the request
    /// any more: by then the gateway has given up on the store and answered
    /// (503), so a command that runs late (a stalled Redis resuming) must
    /// not make an order nobody was told of. 0 = no such limit.
    #[serde(default)]
    pub store_by_ms: u64,
}

/// Builds a request id for `sale_id`: `<sale_id>.<random>`, 128 random bits
/// after the sale so nobody can derive another buyer's id from their own.
pub fn request_id(sale_id: &str) -> String {
    crate::ids::prefixed_id(&[sale_id, "."])
}

/// The sale a request id belongs to (see [`Purchase::request_id`]).
pub fn sale_of_request(request_id: &str) -> Option<&str> {
    let (sale, rest) = request_id.split_once('.')?;
    (valid_id(sale) && !rest.is_empty()).then_some(sale)
}

/// The final outcome of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Success { order_id: String },
    SoldOut,
    LimitExceeded,
    Rejected { reason: String },
    Expired,
}

impl Outcome {
    /// The `status` name the API uses.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Success { .. } => "success",
            Outcome::SoldOut => "sold_out",
            Outcome::LimitExceeded => "limit_exceeded",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Expired => "expired",
        }
    }
}

impl Outcome {
    /// The outcome as a store keeps it: its `status` and a detail (the
    /// order id of a success, the reason of a rejection, else empty).
    pub fn parts(&self) -> (&'static str, &str) {
        let detail = match self {
            Outcome::Success { order_id } => order_id.as_str(),
            Outcome::Rejected { reason } => reason.as_str(),
            _ => "",
        };
        (self.status(), detail)
    }

    /// The outcome [`Outcome::parts`] made; `None` for an unknown status.
    pub fn from_parts(status: &str, detail: &str) -> Option<Outcome> {
        Some(match status {
            "success" => Outcome::Success {
                order_id: detail.to_string(),
            },
            "sold_out" => Outcome::SoldOut,
            "limit_exceeded" => Outcome::LimitExceeded,
            "rejected" => Outcome::Rejected {
                reason: detail.to_string(),
            },
            "expired" => Outcome::Expired,
            _ => return None,
        })
    }
}

/// A request's final result, as the seckill service reports it to the
/// gateway that holds the buyer's connection (the callback port and the
/// waiter table carry it; only the gRPC client and server see its wire form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub request_id: String,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: u32,
    pub outcome: Outcome,
    /// The W3C `traceparent` of the span that decided it, when traced.
    pub trace: Option<String>,
}

impl Completion {
    /// The result of `purchase`.
    pub fn of(purchase: &Purchase, outcome: Outcome) -> Self {
        Completion {
            request_id: purchase.request_id.clone(),
            sale_id: purchase.sale_id.clone(),
            user_id: purchase.user_id.clone(),
            quantity: purchase.quantity,
            outcome,
            trace: None,
        }
    }
}

/// What the purchase step decided for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// The request (or its idempotency key) had been decided before; the
    /// stored outcome is returned and nothing changed.
    pub duplicate: bool,
}

/// Result of [`crate::Inventory::admit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// The idempotency key belongs to this earlier request.
    Duplicate {
        request_id: String,
    },
}

/// A request's recorded state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    pub request_id: String,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: u32,
    /// `None` while pending.
    pub outcome: Option<Outcome>,
}

/// An event of the order topic: a successful purchase appends an order
/// (`Placed`), and cancelling it appends the same order again as
/// `Cancelled`, with the time of the cancellation as `at_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub order_id: String,
    pub request_id: String,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: u32,
    pub at_ms: u64,
    #[serde(default)]
    pub kind: OrderEventKind,
}

/// What an [`OrderEvent`] says of its order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderEventKind {
    /// A purchase made the order.
    #[default]
    Placed,
    /// An operator cancelled it: its units went back to the sale.
    Cancelled,
}

impl OrderEventKind {
    /// The name the order feed and the relay's sinks use.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderEventKind::Placed => "placed",
            OrderEventKind::Cancelled => "cancelled",
        }
    }
}

/// Builds an order id for `sale_id`: `o-<sale_id>.<random>`, so a store can
/// find the order's sale from the id alone (see [`sale_of_order`]).
pub fn order_id(sale_id: &str) -> String {
    crate::ids::prefixed_id(&["o-", sale_id, "."])
}

/// The sale an order id belongs to (see [`order_id`]).
pub fn sale_of_order(order_id: &str) -> Option<&str> {
    let (sale, rest) = order_id.strip_prefix("o-")?.split_once('.')?;
    (valid_id(sale) && !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then_some(sale)
}

/// Result of [`crate::Inventory::cancel_order`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cancellation {
    /// The order as it was placed.
    pub order: OrderEvent,
    /// When it was cancelled (the first time), Unix ms.
    pub cancelled_at_ms: u64,
    /// It had been cancelled before: nothing changed this time.
    pub repeat: bool,
}

/// A change to the catalog of sales.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaleEvent {
    /// Created or replaced.
    Changed(String),
    Removed(String),
    SoldOut(String),
    /// Units came back (a cancelled order): a sale marked sold out sells
    /// again if the store now has units left.
    Released(String),
}

/// Formats Unix ms as RFC 3339 (UTC, second precision unless sub-second).
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    if ms.is_multiple_of(1000) {
        humantime::format_rfc3339_seconds(t).to_string()
    } else {
        humantime::format_rfc3339_millis(t).to_string()
    }
}

/// Parses an RFC 3339 time into Unix ms.
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("demo"));
        assert!(valid_id("A-z_09"));
        assert!(!valid_id(""));
        assert!(!valid_id("a.b"));
        assert!(!valid_id("sale/1"));
        assert!(!valid_id(&"x".repeat(65)));
        let rid = request_id("flash-1");
        assert_eq!(sale_of_request(&rid), Some("flash-1"));
        assert_eq!(sale_of_request("nodot"), None);
        assert_eq!(sale_of_request("bad/.x"), None);
        let oid = order_id("flash-1");
        assert_eq!(sale_of_order(&oid), Some("flash-1"));
        for bad in ["", "o-", "o-s", "o-s.", "x-s.ab", "o-a/b.ab", "o-s.a:b"] {
            assert_eq!(sale_of_order(bad), None, "{bad}");
        }
    }

    #[test]
    fn states() {
        let mut s = SaleStatus {
            spec: SaleSpec::new("s", 2),
            sold: 0,
        };
        assert_eq!(s.state(10), SaleState::Active);
        s.sold = 2;
        assert_eq!(s.state(10), SaleState::SoldOut);
        s.spec.starts_at_ms = Some(100);
        s.spec.ends_at_ms = Some(200);
        assert_eq!(s.state(99), SaleState::Upcoming);
        assert_eq!(s.state(200), SaleState::Ended);
        s.spec.paused = true;
        assert_eq!(s.state(99), SaleState::Paused);
        assert_eq!(s.state(150), SaleState::Paused);
        assert_eq!(s.state(200), SaleState::Ended, "ended wins over paused");
    }

    #[test]
    fn specs_without_admission_fields_read_as_immediate() {
        let old = r#"{"sale_id":"s","stock":1,"per_user_limit":1,"starts_at_ms":null,
            "ends_at_ms":null,"token_rate":1,"token_capacity":1,"queue_capacity":1}"#;
        let spec: SaleSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec.admission, AdmissionMode::Immediate);
        assert_eq!(spec.max_wait_ms, DEFAULT_MAX_WAIT_MS);
        assert_eq!(spec.wait_capacity, DEFAULT_WAIT_CAPACITY);
    }

    #[test]
    fn times_round_trip() {
        let ms = 1_790_000_000_000;
        assert_eq!(parse_rfc3339(&rfc3339(ms)), Some(ms));
        assert_eq!(parse_rfc3339(&rfc3339(ms + 5)), Some(ms + 5));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
