//! The audit after a run: did the sale come out right?
//!
//! The client's view (every success it was told of, every request left
//! without an answer) is checked against the stock and against the sale as
//! the gateway reports it before and after the run, and, with a Redis URL,
//! against the sale's keys in Redis. Oversell and missing answers fail the
//! run; so do users over their limit and successes the sale does not count.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::http::{get_request, HttpClient, SaleView};
use crate::model::{Audit, Check, RedisAudit};
use crate::record::Order;

/// Timed-out requests polled at once when resolving them.
const RESOLVE_CONCURRENCY: usize = 32;

/// What the audit is computed from.
pub struct AuditInput<'a> {
    pub before: &'a SaleView,
    pub after: &'a SaleView,
    pub orders: &'a HashMap<String, Order>,
    pub success_answers: u64,
    pub timeouts: u64,
    pub timeouts_resolved: BTreeMap<String, u64>,
    pub missing: u64,
    pub redis: Option<RedisAudit>,
}

/// Judges a run from what the buyers were told and what the gateway says.
pub fn compute(i: AuditInput<'_>) -> Audit {
    let stock = i.after.stock;
    let limit = i.after.per_user_limit;
    let units: u64 = i.orders.values().map(|o| u64::from(o.quantity)).sum();
    let mut per_user: HashMap<u64, u64> = HashMap::new();
    for o in i.orders.values() {
        *per_user.entry(o.user).or_default() += u64::from(o.quantity);
    }
    let users_over_limit = per_user.values().filter(|&&u| u > u64::from(limit)).count() as u64;
    let sold_delta = i.after.sold.saturating_sub(i.before.sold);
    let oversell = i
        .after
        .sold
        .saturating_sub(stock)
        .max((i.before.sold + units).saturating_sub(stock));
    let unrecorded = units.saturating_sub(sold_delta);
    let unconfirmed = sold_delta.saturating_sub(units);

    let mut checks = vec![
        check(
            "no oversell",
            oversell == 0,
            format!(
                "stock {stock}, sold {} (before the run {}), units told success {units}",
                i.after.sold, i.before.sold
            ),
        ),
        check(
            "every request answered",
            i.missing == 0,
            format!("{} requests without an HTTP answer", i.missing),
        ),
        check(
            "per-user limit held",
            users_over_limit == 0,
            format!("{users_over_limit} users over the limit of {limit}"),
        ),
        check(
            "successes counted by the sale",
            unrecorded == 0,
            format!(
                "sale sold {sold_delta} during the run; buyers were told of {units} \
                     ({unconfirmed} sold without a success answer seen)"
            ),
        ),
        check(
            "sale's books balance",
            i.after.sold + i.after.remaining == stock,
            format!(
                "sold {} + remaining {} vs stock {stock}",
                i.after.sold, i.after.remaining
            ),
        ),
    ];
    if let Some(r) = &i.redis {
        checks.extend(redis_checks(r, stock, i.after.sold));
    }
    let passed = checks.iter().all(|c| c.passed);
    Audit {
        sale_id: i.after.sale_id.clone(),
        stock,
        per_user_limit: limit,
        sold_before: i.before.sold,
        sold_after: i.after.sold,
        remaining_after: i.after.remaining,
        state_after: i.after.state.clone(),
        success_answers: i.success_answers,
        orders: i.orders.len() as u64,
        units,
        timeouts: i.timeouts,
        timeouts_resolved: i.timeouts_resolved,
        oversell,
        users_over_limit,
        missing: i.missing,
        unrecorded,
        unconfirmed,
        redis: i.redis,
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

fn redis_checks(r: &RedisAudit, stock: u64, sold: u64) -> Vec<Check> {
    let mut checks = Vec::new();
    if let Some(e) = &r.error {
        checks.push(check("redis readable", false, e.clone()));
        return checks;
    }
    if let Some(n) = r.orders_stream_len {
        checks.push(check(
            "redis: order stream within the stock",
            n <= stock,
            format!("{n} order events, stock {stock}"),
        ));
    }
    if let (Some(hs), Some(hsold)) = (r.hash_stock, r.hash_sold) {
        checks.push(check(
            "redis: sale hash sold within its stock",
            hsold <= hs,
            format!("sold {hsold}, stock {hs}"),
        ));
        checks.push(check(
            "redis: sale hash agrees with the API",
            hsold == sold,
            format!("hash sold {hsold}, API sold {sold}"),
        ));
    }
    checks
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
                    orders
                        .entry(view.order_id.unwrap_or(id))
                        .or_insert(Order { user, quantity });
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
            .map(|(i, &user)| (format!("o{i}"), Order { user, quantity: 1 }))
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
            redis: None,
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

    #[test]
    fn redis_findings_are_checked() {
        let (b, a, o) = (sale(2, 0), sale(2, 2), orders(&[1, 2]));
        let mut i = input(&b, &a, &o);
        i.redis = Some(RedisAudit {
            orders_stream_len: Some(3),
            hash_stock: Some(2),
            hash_sold: Some(3),
            error: None,
        });
        let audit = compute(i);
        let failed: Vec<_> = audit.checks.iter().filter(|c| !c.passed).collect();
        assert_eq!(failed.len(), 3, "{}", audit.summary());
    }
}
