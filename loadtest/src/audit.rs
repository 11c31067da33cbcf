//! The audit after a run: did the sale come out right?
//!
//! The client's view (every success it was told of, every request left
//! without an answer) is checked against the stock and against the sale as
//! the gateway reports it before and after the run, and, with an admin
//! token, against the gateway's order feed of the sale. Oversell and
//! missing answers fail the run; so do users over their limit, successes
//! the sale does not count, and a feed that disagrees with the sale or with
//! what buyers were told.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::feed::FeedTally;
use crate::http::{get_request, HttpClient, SaleView};
use crate::model::{Audit, Check, FeedAudit};
use crate::record::Order;

/// Timed-out requests polled at once when resolving them.
const RESOLVE_CONCURRENCY: usize = 32;
/// Order ids named in the report when the feed lacks some.
const SAMPLE: usize = 5;

/// What the audit is computed from.
pub struct AuditInput<'a> {
    pub before: &'a SaleView,
    pub after: &'a SaleView,
    pub orders: &'a HashMap<String, Order>,
    pub success_answers: u64,
    pub timeouts: u64,
    pub timeouts_resolved: BTreeMap<String, u64>,
    pub missing: u64,
    /// The order feed as read, or why it could not be; `None` when it was
    /// not read (no admin token).
    pub feed: Option<Result<FeedTally, String>>,
}

/// What the buyers were told, summed up.
struct Told {
    units: u64,
    users_over_limit: u64,
}

impl Told {
    fn of(orders: &HashMap<String, Order>, limit: u32) -> Told {
        let mut per_user: HashMap<u64, u64> = HashMap::new();
        for o in orders.values() {
            *per_user.entry(o.user).or_default() += u64::from(o.quantity);
        }
        Told {
            units: orders.values().map(|o| u64::from(o.quantity)).sum(),
            users_over_limit: per_user.values().filter(|&&u| u > u64::from(limit)).count() as u64,
        }
    }
}

/// Judges a run from what the buyers were told and what the gateway says.
pub fn compute(i: AuditInput<'_>) -> Audit {
    let (before, after) = (i.before, i.after);
    let stock = after.stock;
    let limit = after.per_user_limit;
    let told = Told::of(i.orders, limit);
    let sold_delta = after.sold.saturating_sub(before.sold);
    let oversell = after
        .sold
        .saturating_sub(stock)
        .max((before.sold + told.units).saturating_sub(stock));
    let unrecorded = told.units.saturating_sub(sold_delta);
    let unconfirmed = sold_delta.saturating_sub(told.units);

    let mut checks = vec![
        no_oversell(oversell, stock, before, after, told.units),
        every_request_answered(i.missing),
        per_user_limit_held(told.users_over_limit, limit),
        successes_counted(unrecorded, sold_delta, told.units, unconfirmed),
        books_balance(after),
    ];
    let feed = i.feed.map(|f| feed_audit(f, i.orders, limit));
    if let Some(f) = &feed {
        checks.extend(feed_checks(f, stock, after.sold, i.orders.len() as u64));
    }
    let passed = checks.iter().all(|c| c.passed);
    Audit {
        sale_id: after.sale_id.clone(),
        stock,
        per_user_limit: limit,
        sold_before: before.sold,
        sold_after: after.sold,
        remaining_after: after.remaining,
        state_after: after.state.clone(),
        success_answers: i.success_answers,
        orders: i.orders.len() as u64,
        units: told.units,
        timeouts: i.timeouts,
        timeouts_resolved: i.timeouts_resolved,
        oversell,
        users_over_limit: told.users_over_limit,
        missing: i.missing,
        unrecorded,
        unconfirmed,
        feed,
        checks,
        passed,
    }
}

fn check(name: &str, passed: bool, detail: String) -> Check {
    Check {
        name: name.into(),
        passed,
        detail,
    }
}

// === checks of the sale against what buyers were told ===

/// No more units sold than the stock, by the sale's count or by what
/// buyers were told on top of the sale's count before the run.
fn no_oversell(
    oversell: u64,
    stock: u64,
    before: &SaleView,
    after: &SaleView,
    units: u64,
) -> Check {
    check(
        "no oversell",
        oversell == 0,
        format!(
            "stock {stock}, sold {} (before the run {}), units told success {units}",
            after.sold, before.sold
        ),
    )
}

/// A request without any HTTP answer leaves its buyer not knowing; the
/// API promises one to every request.
fn every_request_answered(missing: u64) -> Check {
    check(
        "every request answered",
        missing == 0,
        format!("{missing} requests without an HTTP answer"),
    )
}

/// No buyer told of more units than the per-user limit allows.
fn per_user_limit_held(users_over_limit: u64, limit: u32) -> Check {
    check(
        "per-user limit held",
        users_over_limit == 0,
        format!("{users_over_limit} users over the limit of {limit}"),
    )
}

/// Every unit a buyer was told of is in the sale's `sold` (the reverse
/// need not hold: a 504 may have sold, and other clients may buy too).
fn successes_counted(unrecorded: u64, sold_delta: u64, units: u64, unconfirmed: u64) -> Check {
    check(
        "successes counted by the sale",
        unrecorded == 0,
        format!(
            "sale sold {sold_delta} during the run; buyers were told of {units} \
             ({unconfirmed} sold without a success answer seen)"
        ),
    )
}

/// `sold + remaining == stock`: the sale's own view adds up.
fn books_balance(after: &SaleView) -> Check {
    check(
        "sale's books balance",
        after.sold + after.remaining == after.stock,
        format!(
            "sold {} + remaining {} vs stock {}",
            after.sold, after.remaining, after.stock
        ),
    )
}

// === checks of the order feed ===

/// The feed's findings for the report.
fn feed_audit(
    feed: Result<FeedTally, String>,
    told: &HashMap<String, Order>,
    limit: u32,
) -> FeedAudit {
    let tally = match feed {
        Ok(t) => t,
        Err(error) => {
            return FeedAudit {
                error: Some(error),
                ..Default::default()
            }
        }
    };
    let missing = told_not_in_feed(&tally, told);
    FeedAudit {
        orders: tally.orders,
        units: tally.units,
        duplicate_order_ids: tally.duplicate_order_ids,
        users_over_limit: tally.users_over(u64::from(limit)),
        told_not_in_feed: missing.len() as u64,
        told_not_in_feed_sample: missing.iter().take(SAMPLE).map(|s| s.to_string()).collect(),
        pages: tally.pages,
        truncated: tally.truncated,
        error: None,
    }
}

/// Order ids told to buyers that the feed lacks, in order. A success that
/// came without an order id cannot be found in the feed, so it counts too.
fn told_not_in_feed<'a>(feed: &FeedTally, told: &'a HashMap<String, Order>) -> Vec<&'a str> {
    let mut missing: Vec<&str> = told
        .iter()
        .filter(|(id, o)| !o.has_order_id || !feed.contains(id))
        .map(|(id, _)| id.as_str())
        .collect();
    missing.sort_unstable();
    missing
}

/// The feed against the stock, the sale's `sold`, the per-user limit and
/// what buyers were told. The feed is the record of orders an operator
/// would ship from, so it must agree with the counters exactly.
fn feed_checks(f: &FeedAudit, stock: u64, sold: u64, told: u64) -> Vec<Check> {
    if let Some(e) = &f.error {
        return vec![check("order feed readable", false, e.clone())];
    }
    let stopped = if f.truncated {
        format!(
            " (reading stopped after {} orders, past the stock)",
            f.orders
        )
    } else {
        String::new()
    };
    vec![
        check(
            "feed: orders within the stock",
            f.units <= stock,
            format!(
                "{} units in {} orders, stock {stock}{stopped}",
                f.units, f.orders
            ),
        ),
        check(
            "feed: units equal the sale's sold",
            f.units == sold,
            format!("feed {} units, sale sold {sold}{stopped}", f.units),
        ),
        check(
            "feed: order ids distinct",
            f.duplicate_order_ids == 0,
            format!("{} entries repeat an order id", f.duplicate_order_ids),
        ),
        check(
            "feed: per-user limit held",
            f.users_over_limit == 0,
            format!("{} users over the limit", f.users_over_limit),
        ),
        check(
            "feed: every success told is in it",
            f.told_not_in_feed == 0,
            format!(
                "{} of {told} orders told to buyers are not in the feed{}{stopped}",
                f.told_not_in_feed,
                if f.told_not_in_feed_sample.is_empty() {
                    String::new()
                } else {
                    format!(" (e.g. {})", f.told_not_in_feed_sample.join(", "))
                }
            ),
        ),
    ]
}

/// Polls `GET /api/v1/requests/{id}` for each timed-out request and adds the
/// successes found to `orders`. Returns the final statuses counted.
pub async fn resolve_timeouts(
    client: &HttpClient,
    base: &str,
    timeouts: &[(String, u64)],
    quantity: u32,
    orders: &mut HashMap<String, Order>,
) -> BTreeMap<String, u64> {
    let permits = Arc::new(Semaphore::new(RESOLVE_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for (id, user) in timeouts.iter().cloned() {
        let (client, base, permits) = (client.clone(), base.to_string(), permits.clone());
        tasks.spawn(async move {
            let _p = permits.acquire_owned().await;
            (user, id.clone(), get_request(&client, &base, &id).await)
        });
    }
    let mut tally = BTreeMap::new();
    while let Some(Ok((user, id, r))) = tasks.join_next().await {
        let status = match r {
            Ok(Some(view)) => {
                if view.status == "success" {
                    let has_order_id = view.order_id.is_some();
                    orders.entry(view.order_id.unwrap_or(id)).or_insert(Order {
                        user,
                        quantity,
                        has_order_id,
                    });
                }
                view.status
            }
            Ok(None) => "unknown".into(),
            Err(_) => "unreadable".into(),
        };
        *tally.entry(status).or_insert(0) += 1;
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(stock: u64, sold: u64) -> SaleView {
        SaleView {
            sale_id: "s".into(),
            stock,
            remaining: stock.saturating_sub(sold),
            sold,
            per_user_limit: 1,
            state: "active".into(),
        }
    }

    fn orders(users: &[u64]) -> HashMap<String, Order> {
        users
            .iter()
            .enumerate()
            .map(|(i, &user)| {
                let order = Order {
                    user,
                    quantity: 1,
                    has_order_id: true,
                };
                (format!("o{i}"), order)
            })
            .collect()
    }

    fn input<'a>(
        before: &'a SaleView,
        after: &'a SaleView,
        orders: &'a HashMap<String, Order>,
    ) -> AuditInput<'a> {
        AuditInput {
            before,
            after,
            orders,
            success_answers: orders.len() as u64,
            timeouts: 0,
            timeouts_resolved: BTreeMap::new(),
            missing: 0,
            feed: None,
        }
    }

    #[test]
    fn a_clean_sale_passes() {
        let (b, a, o) = (sale(3, 0), sale(3, 3), orders(&[1, 2, 3]));
        let audit = compute(input(&b, &a, &o));
        assert!(audit.passed, "{}", audit.summary());
        assert_eq!(audit.units, 3);
    }

    #[test]
    fn oversell_missing_and_limits_fail() {
        let (b, a, o) = (sale(2, 0), sale(2, 2), orders(&[1, 2, 3]));
        let audit = compute(input(&b, &a, &o));
        assert_eq!(audit.oversell, 1);
        assert_eq!(audit.unrecorded, 1);
        assert!(!audit.passed);

        let (b, a, o) = (sale(5, 0), sale(5, 2), orders(&[1, 1]));
        let mut i = input(&b, &a, &o);
        i.missing = 4;
        let audit = compute(i);
        assert_eq!(audit.users_over_limit, 1);
        assert_eq!(audit.missing, 4);
        assert!(!audit.passed);
    }

    /// A feed as the gateway might serve it: `(order id, user, quantity)`.
    fn feed(entries: &[(&str, &str, u64)]) -> FeedTally {
        let mut t = FeedTally::default();
        for &(id, user, quantity) in entries {
            t.add(crate::feed::FeedOrder {
                order_id: id.into(),
                sale_id: "s".into(),
                user_id: user.into(),
                quantity,
                request_id: None,
                at: None,
                event: None,
            });
        }
        t.pages = 2;
        t
    }

    fn failed(audit: &Audit) -> Vec<&str> {
        let failed = audit.checks.iter().filter(|c| !c.passed);
        failed.map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn a_feed_that_matches_the_sale_passes() {
        let (b, a, o) = (sale(2, 0), sale(2, 2), orders(&[1, 2]));
        let mut i = input(&b, &a, &o);
        i.feed = Some(Ok(feed(&[("o0", "u1", 1), ("o1", "u2", 1)])));
        let audit = compute(i);
        assert!(audit.passed, "{}", audit.summary());
        assert_eq!(audit.feed.as_ref().unwrap().units, 2);
    }

    #[test]
    fn feed_findings_are_checked() {
        // Three units in a sale of two, one order id twice, one user with
        // two units, and a success the buyer was told of missing.
        let (b, a, o) = (sale(2, 0), sale(2, 2), orders(&[1, 2]));
        let mut i = input(&b, &a, &o);
        i.feed = Some(Ok(feed(&[
            ("o0", "u1", 1),
            ("o0", "u1", 1),
            ("o9", "u3", 1),
        ])));
        let audit = compute(i);
        assert_eq!(
            failed(&audit),
            [
                "feed: orders within the stock",
                "feed: units equal the sale's sold",
                "feed: order ids distinct",
                "feed: per-user limit held",
                "feed: every success told is in it",
            ],
            "{}",
            audit.summary()
        );
        assert_eq!(audit.feed.as_ref().unwrap().told_not_in_feed_sample, ["o1"]);
    }

    #[test]
    fn an_unreadable_feed_is_a_failed_check_with_its_reason() {
        let (b, a, o) = (sale(2, 0), sale(2, 2), orders(&[1, 2]));
        let mut i = input(&b, &a, &o);
        i.feed = Some(Err("HTTP 401, the admin token is refused".into()));
        let audit = compute(i);
        assert_eq!(failed(&audit), ["order feed readable"]);
        assert!(audit.checks.iter().any(|c| c.detail.contains("401")));
        assert!(!audit.passed);
    }

    #[test]
    fn a_success_without_an_order_id_is_not_in_the_feed() {
        let (b, a) = (sale(2, 0), sale(2, 1));
        let mut o = orders(&[1]);
        o.get_mut("o0").unwrap().has_order_id = false;
        let mut i = input(&b, &a, &o);
        i.feed = Some(Ok(feed(&[("o0", "u1", 1)])));
        assert_eq!(failed(&compute(i)), ["feed: every success told is in it"]);
    }
}
