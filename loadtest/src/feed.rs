//! The gateway's order feed of one sale, read for the audit through the
//! admin API (`GET /admin/v1/orders`), page by page and folded into a
//! [`FeedTally`] as it comes: only what the audit's checks need is kept.
//!
//! The read is bounded three ways, so a broken feed cannot hold the audit
//! up: the total time, the number of pages, and the number of orders (a
//! feed far past the stock has already failed the audit; reading on would
//! only use memory). A page that fails on the way (no answer, 429, 5xx) is
//! asked for again after a pause; a refusal (400, 401) is final.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use hyper::{Method, StatusCode};
use serde::Deserialize;

use crate::http::{call, excerpt, AdminApi, HttpClient};

/// Orders asked for per page (the most the API serves).
pub const PAGE_LIMIT: u32 = 10_000;
/// The whole read, all pages, within this.
const DEADLINE: Duration = Duration::from_secs(60);
/// Pages read at most; a server may serve pages smaller than asked.
const MAX_PAGES: u64 = 10_000;
/// One page within this.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries of one page after the first, when it fails on the way.
const PAGE_RETRIES: usize = 3;

/// One order of the feed.
#[derive(Clone, Debug, Deserialize)]
pub struct FeedOrder {
    pub order_id: String,
    pub sale_id: String,
    pub user_id: String,
    pub quantity: u64,
    #[serde(default)]
    pub request_id: Option<String>,
    /// RFC 3339; read, not checked.
    #[serde(default)]
    pub at: Option<String>,
    /// `placed` (or absent) for an order, `cancelled` for the event a
    /// cancellation appends: its units went back on sale.
    #[serde(default)]
    pub event: Option<String>,
}

/// One page of the feed.
#[derive(Debug, Deserialize)]
struct Page {
    orders: Vec<FeedOrder>,
    #[serde(default)]
    next: Option<String>,
}

/// What the feed holds for the sale.
#[derive(Debug, Default)]
pub struct FeedTally {
    /// Orders of the sale, repeats included, and their units.
    pub orders: u64,
    pub units: u64,
    /// Entries whose order id an earlier entry already had.
    pub duplicate_order_ids: u64,
    /// Pages read.
    pub pages: u64,
    /// Reading stopped at the order bound, before the feed's end.
    pub truncated: bool,
    order_ids: HashSet<String>,
    units_by_user: HashMap<String, u64>,
}

impl FeedTally {
    /// Counts one order of the sale; a cancellation takes its units back.
    pub fn add(&mut self, o: FeedOrder) {
        if o.event.as_deref() == Some("cancelled") {
            self.units = self.units.saturating_sub(o.quantity);
            if let Some(u) = self.units_by_user.get_mut(&o.user_id) {
                *u = u.saturating_sub(o.quantity);
            }
            return;
        }
        self.orders += 1;
        self.units += o.quantity;
        *self.units_by_user.entry(o.user_id).or_default() += o.quantity;
        if !self.order_ids.insert(o.order_id) {
            self.duplicate_order_ids += 1;
        }
    }

    /// Whether the feed lists this order id.
    pub fn contains(&self, order_id: &str) -> bool {
        self.order_ids.contains(order_id)
    }

    /// Users holding more than `limit` units.
    pub fn users_over(&self, limit: u64) -> u64 {
        self.units_by_user.values().filter(|&&u| u > limit).count() as u64
    }
}

/// Reads the sale's orders to the end of the feed (a page without orders),
/// stopping early once more than `max_orders` were read. The error says why
/// the feed could not be read, in words for the audit's report.
pub async fn read(
    client: &HttpClient,
    admin: &AdminApi,
    sale_id: &str,
    max_orders: u64,
) -> Result<FeedTally, String> {
    let started = Instant::now();
    let mut tally = FeedTally::default();
    let mut after: Option<String> = None;
    loop {
        if tally.pages >= MAX_PAGES {
            return Err(format!("no end of the feed after {MAX_PAGES} pages"));
        }
        let url = page_url(&admin.url, sale_id, after.as_deref(), PAGE_LIMIT);
        let fetch = || async {
            let left = DEADLINE.saturating_sub(started.elapsed());
            if left.is_zero() {
                let why = format!("no end of the feed within {DEADLINE:?}");
                return Err(PageError::refused(why));
            }
            fetch_page(client, &url, &admin.token, left.min(PAGE_TIMEOUT)).await
        };
        let page = fetch
            .retry(page_retry_policy())
            .when(|e| e.passing)
            .await
            .map_err(|e| e.reason)?;
        tally.pages += 1;
        if page.orders.is_empty() {
            return Ok(tally);
        }
        // The sale filter is the server's; an order of another sale is
        // skipped rather than counted against this one.
        for o in page.orders.into_iter().filter(|o| o.sale_id == sale_id) {
            tally.add(o);
        }
        if tally.orders > max_orders {
            tally.truncated = true;
            return Ok(tally);
        }
        after = Some(next_cursor(page.next, after)?);
    }
}

/// The cursor of the next page: present, and not the one just read (which
/// would read the same page forever).
fn next_cursor(next: Option<String>, after: Option<String>) -> Result<String, String> {
    match next {
        None => Err("a page with orders has no `next` cursor".into()),
        Some(n) if Some(&n) == after.as_ref() => Err(format!("the cursor did not advance ({n})")),
        Some(n) => Ok(n),
    }
}

/// `{admin}/admin/v1/orders?sale_id=..&after=..&limit=..`, the values
/// form-encoded (a cursor is opaque and may hold `+`, `/` or `=`).
fn page_url(admin: &str, sale_id: &str, after: Option<&str>, limit: u32) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("sale_id", sale_id);
    if let Some(cursor) = after {
        query.append_pair("after", cursor);
    }
    query.append_pair("limit", &limit.to_string());
    format!("{admin}/admin/v1/orders?{}", query.finish())
}

/// Pauses between tries of a page: 100 ms, doubling, at most a second.
fn page_retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_max_times(PAGE_RETRIES)
}

/// Why a page could not be had, and whether asking again may help.
#[derive(Debug)]
struct PageError {
    reason: String,
    /// The failure may pass (no answer, 429, 5xx).
    passing: bool,
}

impl PageError {
    fn passing(reason: String) -> PageError {
        PageError {
            reason,
            passing: true,
        }
    }

    fn refused(reason: String) -> PageError {
        PageError {
            reason,
            passing: false,
        }
    }
}

/// One page, or why there is none.
async fn fetch_page(
    client: &HttpClient,
    url: &str,
    token: &str,
    timeout: Duration,
) -> Result<Page, PageError> {
    let (status, body) = call(client, Method::GET, url, Some(token), None, timeout)
        .await
        .map_err(|e| PageError::passing(format!("{e:#}")))?;
    let why = |what: &str| format!("GET {url}: HTTP {} {what}", status.as_u16());
    match status {
        StatusCode::OK => serde_json::from_slice(&body)
            .map_err(|e| PageError::refused(format!("GET {url}: not a page of orders: {e}"))),
        StatusCode::UNAUTHORIZED => Err(PageError::refused(why("(the admin token is refused)"))),
        StatusCode::BAD_REQUEST => Err(PageError::refused(why(&format!(
            "(bad cursor?) {}",
            excerpt(&body)
        )))),
        s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
            Err(PageError::passing(why(&excerpt(&body))))
        }
        _ => Err(PageError::refused(why(&excerpt(&body)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, user: &str, quantity: u64) -> FeedOrder {
        FeedOrder {
            order_id: id.into(),
            sale_id: "s".into(),
            user_id: user.into(),
            quantity,
            request_id: None,
            at: None,
            event: None,
        }
    }

    #[test]
    fn a_cancellation_takes_its_units_back() {
        let mut t = FeedTally::default();
        t.add(order("o1", "u1", 2));
        t.add(FeedOrder {
            event: Some("cancelled".into()),
            ..order("o1", "u1", 2)
        });
        t.add(order("o2", "u1", 1));
        assert_eq!((t.orders, t.units, t.duplicate_order_ids), (2, 1, 0));
        assert_eq!(t.users_over(1), 0);
    }

    #[test]
    fn pages_are_asked_for_with_encoded_values() {
        assert_eq!(
            page_url("http://a:1", "s-1", None, 10_000),
            "http://a:1/admin/v1/orders?sale_id=s-1&limit=10000"
        );
        assert_eq!(
            page_url("http://a:1", "s", Some("c+7/="), 5),
            "http://a:1/admin/v1/orders?sale_id=s&after=c%2B7%2F%3D&limit=5"
        );
    }

    #[test]
    fn a_cursor_must_advance() {
        assert_eq!(
            next_cursor(Some("b".into()), Some("a".into())),
            Ok("b".into())
        );
        assert!(next_cursor(Some("a".into()), Some("a".into())).is_err());
        assert!(next_cursor(None, None).is_err());
    }

    #[test]
    fn the_tally_counts_units_repeats_and_users() {
        let mut t = FeedTally::default();
        t.add(order("o1", "u1", 1));
        t.add(order("o2", "u2", 2));
        t.add(order("o1", "u1", 1));
        assert_eq!((t.orders, t.units, t.duplicate_order_ids), (3, 4, 1));
        assert!(t.contains("o2") && !t.contains("o3"));
        assert_eq!(t.users_over(1), 2);
        assert_eq!(t.users_over(2), 0);
    }
}
