//! The admin API (`/admin/v1/sales`, the order feed `/admin/v1/orders`;
//! bearer token; failed authentications limited per client address) and
//! the operational endpoints (`/metrics`, `/healthz`, `/readyz`) on the
//! admin listener.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Method, Request, StatusCode};
use seckill_inventory::{
    parse_rfc3339, rfc3339, valid_id, AdmissionMode, FeedQuery, InventoryError, Put, SaleSpec,
    DEFAULT_MAX_WAIT_MS, DEFAULT_PER_USER_LIMIT, DEFAULT_QUEUE_CAPACITY, DEFAULT_TOKEN_CAPACITY,
    DEFAULT_TOKEN_RATE, DEFAULT_WAIT_CAPACITY,
};
use seckill_ops::http::{healthz, json, local_addr, peer_addr, readyz, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::answer::error;
use crate::lockout;
use crate::public::{read_body, set_request_id, unavailable, SaleView};
use crate::Shared;

/// Upper bound of every flow-control setting: well past any real sale,
/// low enough that a typo cannot make the gateway allocate gigabytes.
const MAX_SETTING: u32 = 10_000_000;

/// Longest `max_wait_ms`: a buyer's connection is held at most this long
/// in line (on top of its request timeout once admitted).
const MAX_WAIT_MS: u32 = 60_000;

/// Checks the `fifo` settings of a sale.
fn check_admission(spec: &SaleSpec) -> Result<(), String> {
    if !(1..=MAX_WAIT_MS).contains(&spec.max_wait_ms) {
        return Err(format!("max_wait_ms must be 1..={MAX_WAIT_MS}"));
    }
    if !(1..=MAX_SETTING).contains(&spec.wait_capacity) {
        return Err(format!("wait_capacity must be 1..={MAX_SETTING}"));
    }
    Ok(())
}

pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> HttpResponse {
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Decided once per request: each refusal is one counted failure.
    let refused = match segments.first() {
        Some(&"admin") => refusal(&shared, &req),
        _ => None,
    };
    let mut resp = match (req.method(), segments.as_slice()) {
        (&Method::GET, ["metrics"]) => crate::metrics::response(shared.clone()).await,
        (&Method::GET, ["healthz"]) => healthz(),
        (&Method::GET, ["readyz"]) => readyz(shared.stores.ready().await),
        (_, ["admin", ..]) if refused.is_some() => refused.expect("a refusal"),
        (&Method::GET, ["admin", "v1", "sales"]) => list(&shared).await,
        (&Method::GET, ["admin", "v1", "orders"]) => orders(&shared, req.uri().query()).await,
        (&Method::POST, ["admin", "v1", "orders", id, "cancel"]) => cancel(&shared, id).await,
        (&Method::PUT, ["admin", "v1", "sales", id]) => {
            let id = id.to_string();
            put(&shared, id, req).await
        }
        (&Method::DELETE, ["admin", "v1", "sales", id]) => delete(&shared, id).await,
        (&Method::PATCH, ["admin", "v1", "sales", id]) => {
            let id = id.to_string();
            patch(&shared, id, req).await
        }
        (&Method::POST, ["admin", "v1", "sales", id, action @ ("pause" | "resume" | "end")]) => {
            let change = match *action {
                "pause" => Change::Pause,
                "resume" => Change::Resume,
                _ => Change::End,
            };
            let id = id.to_string();
            change_sale(&shared, &id, change).await
        }
        (_, ["admin", "v1", "sales" | "orders", ..]) | (_, ["metrics" | "healthz" | "readyz"]) => {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            )
        }
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    };
    set_request_id(&mut resp, seckill_inventory::unique_id());
    resp
}

/// Why an admin request is refused, or `None` to serve it: 429 while its
/// client address has used up its failed authentications (see
/// `lockout.rs`; the right token does not lift that), 401 for a missing or
/// wrong token, which counts as one failure of the address.
fn refusal(shared: &Shared, req: &Request<Incoming>) -> Option<HttpResponse> {
    let local = local_addr(req);
    // Without a peer (no serve loop in front) all such requests share one
    // count: refusing is safer than not counting.
    let client = peer_addr(req).map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |p| p.ip());
    let key = lockout::Key::new(local, client);
    let lockout = lockout::admin();
    let now = Instant::now();
    let last = match lockout.attempt(key, now) {
        Ok(last) => last,
        Err(wait) => return Some(locked_out(wait)),
    };
    if authorized(shared, req) {
        lockout.succeeded(key, now);
        return None;
    }
    if last {
        // Once per address and window, not per request.
        tracing::warn!(
            client = %key.client(),
            failures = lockout::MAX_FAILURES,
            "admin authentication failures reached the limit; refusing the address for the rest of the window"
        );
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong bearer token",
    );
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(r)
}

/// 429 for an address that failed too often; `Retry-After` is when its
/// window closes, in whole seconds rounded up.
fn locked_out(wait: Duration) -> HttpResponse {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many failed admin authentications from this address; retry later",
    );
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
    r
}

/// Compares the bearer token in constant time.
fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let want = shared.config.admin_token.as_bytes();
    let given = given.trim().as_bytes();
    given.len() == want.len()
        && given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The body of `PUT /admin/v1/sales/{id}`; unknown fields are refused so a
/// typo in a setting is an error, not a silent default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SaleBody {
    stock: u64,
    per_user_limit: Option<u32>,
    starts_at: Option<String>,
    ends_at: Option<String>,
    token_rate: Option<u32>,
    token_capacity: Option<u32>,
    queue_capacity: Option<u32>,
    admission: Option<AdmissionMode>,
    max_wait_ms: Option<u32>,
    wait_capacity: Option<u32>,
}

/// The answer for a store error of an admin change.
fn inventory_error(e: InventoryError) -> HttpResponse {
    match e {
        InventoryError::NotFound(_) => error(StatusCode::NOT_FOUND, "not_found", "no such sale"),
        InventoryError::Removed(_) => error(
            StatusCode::CONFLICT,
            "conflict",
            "the sale id belongs to a removed sale whose orders are kept; choose another id",
        ),
        InventoryError::HasSales(_) | InventoryError::Conflict(_) => {
            error(StatusCode::CONFLICT, "conflict", &e.to_string())
        }
        InventoryError::BadCursor(message) => bad(&message),
        InventoryError::Unavailable(_) => unavailable(),
    }
}

fn bad(message: &str) -> HttpResponse {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Validates a sale body; the error is the message for the 400.
fn spec_of(sale_id: String, body: SaleBody) -> Result<SaleSpec, String> {
    let time = |name: &str, v: Option<String>| match v {
        None => Ok(None),
        Some(s) => parse_rfc3339(&s)
            .map(Some)
            .ok_or_else(|| format!("{name} must be an RFC 3339 time or null")),
    };
    let setting = |name: &str, v: Option<u32>, default: u32| match v.unwrap_or(default) {
        n @ 1..=MAX_SETTING => Ok(n),
        _ => Err(format!("{name} must be 1..={MAX_SETTING}")),
    };
    let spec = SaleSpec {
        sale_id,
        stock: body.stock,
        per_user_limit: setting(
            "per_user_limit",
            body.per_user_limit,
            DEFAULT_PER_USER_LIMIT,
        )?,
        starts_at_ms: time("starts_at", body.starts_at)?,
        ends_at_ms: time("ends_at", body.ends_at)?,
        token_rate: setting("token_rate", body.token_rate, DEFAULT_TOKEN_RATE)?,
        token_capacity: setting(
            "token_capacity",
            body.token_capacity,
            DEFAULT_TOKEN_CAPACITY,
        )?,
        queue_capacity: setting(
            "queue_capacity",
            body.queue_capacity,
            DEFAULT_QUEUE_CAPACITY,
        )?,
        paused: false,
        admission: body.admission.unwrap_or_default(),
        max_wait_ms: body.max_wait_ms.unwrap_or(DEFAULT_MAX_WAIT_MS),
        wait_capacity: body.wait_capacity.unwrap_or(DEFAULT_WAIT_CAPACITY),
    };
    check_admission(&spec)?;
    if spec.stock > u64::from(u32::MAX) {
        return Err("stock must be at most 4294967295".into());
    }
    if let (Some(s), Some(e)) = (spec.starts_at_ms, spec.ends_at_ms) {
        if e <= s {
            return Err("ends_at must be after starts_at".into());
        }
    }
    Ok(spec)
}

async fn put(shared: &Shared, sale_id: String, req: Request<Incoming>) -> HttpResponse {
    if !valid_id(&sale_id) {
        return bad("sale_id must be 1..=64 characters of [A-Za-z0-9_-]");
    }
    let body = match read_body(req, shared.config.body_read_timeout).await {
        Ok(b) => b,
        Err((_, resp)) => return resp,
    };
    let body: SaleBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad(&format!("invalid sale: {e}")),
    };
    let spec = match spec_of(sale_id, body) {
        Ok(s) => s,
        Err(message) => return bad(&message),
    };
    let sale_id = spec.sale_id.clone();
    let code = match crate::put_sale(shared, spec).await {
        Ok(Put::Created) => StatusCode::CREATED,
        Ok(Put::Replaced) => StatusCode::OK,
        Err(InventoryError::HasSales(_)) => {
            return error(
                StatusCode::CONFLICT,
                "conflict",
                "the sale has sold units already and cannot be replaced; PATCH changes it",
            )
        }
        Err(e) => return inventory_error(e),
    };
    tracing::info!(sale = %sale_id, created = code == StatusCode::CREATED, "sale put");
    match shared.stores.inventory.sale(&sale_id).await {
        Ok(Some(s)) => json(
            code,
            serde_json::to_vec(&SaleView::new(&s, true)).expect("views serialize"),
        ),
        Ok(None) => error(
            StatusCode::CONFLICT,
            "conflict",
            "the sale was removed meanwhile",
        ),
        Err(_) => unavailable(),
    }
}

async fn delete(shared: &Shared, sale_id: &str) -> HttpResponse {
    if !valid_id(sale_id) {
        return error(StatusCode::NOT_FOUND, "not_found", "no such sale");
    }
    match shared.stores.inventory.remove_sale(sale_id).await {
        Ok(true) => {
            crate::remove_local(shared, sale_id).await;
            tracing::info!(sale = %sale_id, "sale removed");
            let mut r = json(StatusCode::NO_CONTENT, bytes::Bytes::new());
            r.headers_mut().remove(hyper::header::CONTENT_TYPE);
            r
        }
        // A sale the store lost: the operator acknowledges the loss, and
        // the id may be created again.
        Ok(false) if shared.catalog.forget_lost(sale_id) => {
            tracing::warn!(sale = %sale_id, "loss of the sale acknowledged");
            let mut r = json(StatusCode::NO_CONTENT, bytes::Bytes::new());
            r.headers_mut().remove(hyper::header::CONTENT_TYPE);
            r
        }
        Ok(false) => error(StatusCode::NOT_FOUND, "not_found", "no such sale"),
        Err(_) => unavailable(),
    }
}

async fn list(shared: &Shared) -> HttpResponse {
    match shared.stores.inventory.sales().await {
        Ok(sales) => {
            let views: Vec<_> = sales.iter().map(|s| SaleView::new(s, true)).collect();
            json(
                StatusCode::OK,
                serde_json::to_vec(&serde_json::json!({ "sales": views }))
                    .expect("views serialize"),
            )
        }
        Err(_) => unavailable(),
    }
}

/// Most orders one page of the order feed returns.
const MAX_ORDERS_PAGE: usize = 10_000;
/// Longest wait of one read of the order feed (a long poll): a reader that
/// wants to wait longer asks again.
const MAX_FEED_WAIT_MS: u64 = 30_000;

/// One order as the order feed shows it.
#[derive(Serialize)]
struct OrderView<'a> {
    order_id: &'a str,
    sale_id: &'a str,
    user_id: &'a str,
    quantity: u32,
    request_id: &'a str,
    at: String,
    /// `placed`, or `cancelled` for the event a cancellation appends.
    event: &'static str,
}

/// Parses `[after=CURSOR][&limit=N][&wait_ms=W][&sale_id=ID]`
/// (percent-decoded); the error is the message for the 400. The cursor is
/// the store's to check.
fn orders_query(query: Option<&str>) -> Result<FeedQuery, String> {
    let mut q = FeedQuery {
        limit: 1000,
        ..FeedQuery::default()
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*key {
            "sale_id" if valid_id(&value) => q.sale_id = Some(value.into_owned()),
            "sale_id" => return Err("sale_id must be 1..=64 characters of [A-Za-z0-9_-]".into()),
            "after" => q.after = Some(value.into_owned()),
            "limit" => {
                q.limit = match value.parse() {
                    Ok(n @ 1..=MAX_ORDERS_PAGE) => n,
                    _ => return Err(format!("limit must be 1..={MAX_ORDERS_PAGE}")),
                }
            }
            "wait_ms" => {
                q.wait = match value.parse() {
                    Ok(ms @ 0..=MAX_FEED_WAIT_MS) => Duration::from_millis(ms),
                    _ => return Err(format!("wait_ms must be 0..={MAX_FEED_WAIT_MS}")),
                }
            }
            _ => return Err(format!("unknown query parameter {key:?}")),
        }
    }
    Ok(q)
}

/// `GET /admin/v1/orders?after=CURSOR&limit=N&wait_ms=W[&sale_id=ID]`:
/// every sale's orders in commit order, a page at a time, waiting up to
/// `wait_ms` for one when there is none after the cursor; resuming from
/// `next` neither skips nor repeats an order. A wait ends early (503) when
/// the gateway begins to stop, so a long poll never holds up the drain.
async fn orders(shared: &Shared, query: Option<&str>) -> HttpResponse {
    let q = match orders_query(query) {
        Ok(q) => q,
        Err(message) => return bad(&message),
    };
    let page = tokio::select! {
        page = shared.stores.inventory.feed(&q) => page,
        _ = shared.stopping.cancelled() => return unavailable(),
    };
    let page = match page {
        Ok(page) => page,
        Err(InventoryError::BadCursor(message)) => return bad(&message),
        Err(_) => return unavailable(),
    };
    let views: Vec<OrderView> = page
        .orders
        .iter()
        .map(|o| OrderView {
            order_id: &o.order_id,
            sale_id: &o.sale_id,
            user_id: &o.user_id,
            quantity: o.quantity,
            request_id: &o.request_id,
            at: rfc3339(o.at_ms),
            event: o.kind.as_str(),
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::to_vec(&serde_json::json!({ "orders": views, "next": page.next }))
            .expect("views serialize"),
    )
}

/// `POST /admin/v1/orders/{order_id}/cancel`: releases the order's units,
/// once; a repeat answers the same.
async fn cancel(shared: &Shared, order_id: &str) -> HttpResponse {
    // Order ids are `o-<sale>.<hex>`: anything else is no order of ours.
    if order_id.len() > 128 || seckill_inventory::sale_of_order(order_id).is_none() {
        return error(StatusCode::NOT_FOUND, "not_found", "no such order");
    }
    match shared.stores.inventory.cancel_order(order_id).await {
        Ok(c) => {
            if !c.repeat {
                tracing::info!(sale = %c.order.sale_id, order = %order_id, "order cancelled");
            }
            json(
                StatusCode::OK,
                serde_json::to_vec(&serde_json::json!({
                    "order_id": c.order.order_id,
                    "sale_id": c.order.sale_id,
                    "user_id": c.order.user_id,
                    "quantity": c.order.quantity,
                    "request_id": c.order.request_id,
                    "at": rfc3339(c.order.at_ms),
                    "status": "cancelled",
                    "cancelled_at": rfc3339(c.cancelled_at_ms),
                }))
                .expect("views serialize"),
            )
        }
        Err(InventoryError::NotFound(_)) => {
            error(StatusCode::NOT_FOUND, "not_found", "no such order")
        }
        Err(_) => unavailable(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_query_is_checked() {
        assert_eq!(
            orders_query(Some("sale_id=s-1&after=a%7E1-2&limit=2&wait_ms=500")),
            Ok(FeedQuery {
                sale_id: Some("s-1".into()),
                after: Some("a~1-2".into()),
                limit: 2,
                wait: Duration::from_millis(500),
            })
        );
        let plain = orders_query(None).unwrap();
        assert_eq!(
            (plain.limit, plain.wait, plain.after),
            (1000, Duration::ZERO, None)
        );
        assert_eq!(
            orders_query(Some("after=17")).unwrap().after.as_deref(),
            Some("17")
        );
        for bad in [
            Some("sale_id="),
            Some("sale_id=a/b"),
            Some("sale_id=s&limit=0"),
            Some("sale_id=s&limit=10001"),
            Some("limit=x"),
            Some("wait_ms=-1"),
            Some("wait_ms=30001"),
            Some("sale_id=s&evil=1"),
        ] {
            assert!(orders_query(bad).is_err(), "{bad:?}");
        }
    }
}

/// Deserializes a present field as `Some`, so `Option<Option<T>>` tells an
/// absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// The body of `PATCH /admin/v1/sales/{id}`: each field present is changed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    stock: Option<u64>,
    per_user_limit: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    ends_at: Option<Option<String>>,
    token_rate: Option<u32>,
    token_capacity: Option<u32>,
    admission: Option<AdmissionMode>,
    max_wait_ms: Option<u32>,
    wait_capacity: Option<u32>,
}

/// Applies a patch to a sale's definition; the error is the message for the 400.
fn patched(mut spec: SaleSpec, body: PatchBody) -> Result<SaleSpec, String> {
    let setting = |name: &str, v: u32| match v {
        n @ 1..=MAX_SETTING => Ok(n),
        _ => Err(format!("{name} must be 1..={MAX_SETTING}")),
    };
    if let Some(stock) = body.stock {
        if stock > u64::from(u32::MAX) {
            return Err("stock must be at most 4294967295".into());
        }
        spec.stock = stock;
    }
    if let Some(n) = body.per_user_limit {
        spec.per_user_limit = setting("per_user_limit", n)?;
    }
    if let Some(n) = body.token_rate {
        spec.token_rate = setting("token_rate", n)?;
    }
    if let Some(n) = body.token_capacity {
        spec.token_capacity = setting("token_capacity", n)?;
    }
    spec.admission = body.admission.unwrap_or(spec.admission);
    spec.max_wait_ms = body.max_wait_ms.unwrap_or(spec.max_wait_ms);
    spec.wait_capacity = body.wait_capacity.unwrap_or(spec.wait_capacity);
    check_admission(&spec)?;
    if let Some(ends_at) = body.ends_at {
        spec.ends_at_ms = match ends_at {
            None => None,
            Some(s) => Some(parse_rfc3339(&s).ok_or("ends_at must be an RFC 3339 time or null")?),
        };
    }
    if let (Some(s), Some(e)) = (spec.starts_at_ms, spec.ends_at_ms) {
        if e <= s {
            return Err("ends_at must be after starts_at".into());
        }
    }
    Ok(spec)
}

/// `PATCH /admin/v1/sales/{id}`: changes a live sale atomically.
async fn patch(shared: &Shared, sale_id: String, req: Request<Incoming>) -> HttpResponse {
    if !valid_id(&sale_id) {
        return error(StatusCode::NOT_FOUND, "not_found", "no such sale");
    }
    let body = match read_body(req, shared.config.body_read_timeout).await {
        Ok(b) => b,
        Err((_, resp)) => return resp,
    };
    let body: PatchBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return bad(&format!("invalid change: {e}")),
    };
    let current = match shared.stores.inventory.sale(&sale_id).await {
        Ok(Some(s)) => s.spec,
        Ok(None) => return error(StatusCode::NOT_FOUND, "not_found", "no such sale"),
        Err(_) => return unavailable(),
    };
    match patched(current, body) {
        Ok(spec) => update(shared, spec, "sale changed").await,
        Err(message) => bad(&message),
    }
}

/// The operator's controls of a live sale.
#[derive(Clone, Copy, Debug)]
enum Change {
    Pause,
    Resume,
    End,
}

/// `POST /admin/v1/sales/{id}/pause`, `/resume`, `/end`.
async fn change_sale(shared: &Shared, sale_id: &str, change: Change) -> HttpResponse {
    if !valid_id(sale_id) {
        return error(StatusCode::NOT_FOUND, "not_found", "no such sale");
    }
    let mut spec = match shared.stores.inventory.sale(sale_id).await {
        Ok(Some(s)) => s.spec,
        Ok(None) => return error(StatusCode::NOT_FOUND, "not_found", "no such sale"),
        Err(_) => return unavailable(),
    };
    match change {
        Change::Pause => spec.paused = true,
        Change::Resume => spec.paused = false,
        Change::End => {
            let now = seckill_inventory::now_ms();
            // An end already past stays; otherwise the sale ends now (a
            // start still ahead moves to now, so the window stays valid).
            if spec.ends_at_ms.is_none_or(|e| e > now) {
                spec.ends_at_ms = Some(now);
                spec.starts_at_ms = spec.starts_at_ms.map(|s| s.min(now.saturating_sub(1)));
            }
        }
    }
    update(shared, spec, "sale control").await
}

/// Stores a changed definition and answers with the sale.
async fn update(shared: &Shared, spec: SaleSpec, what: &str) -> HttpResponse {
    let sale_id = spec.sale_id.clone();
    match crate::update_sale(shared, spec).await {
        Ok(status) => {
            tracing::info!(sale = %sale_id, paused = status.spec.paused, "{what}");
            json(
                StatusCode::OK,
                serde_json::to_vec(&SaleView::new(&status, true)).expect("views serialize"),
            )
        }
        Err(e) => inventory_error(e),
    }
}
