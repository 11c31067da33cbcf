//! The public API: purchase, read a request's result, read a sale.

// The purchase steps refuse with the whole answer (`Answered`): a refusal
// is the common answer in a sale, and boxing it would allocate on the path
// that must cost least.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH};
use hyper::{Method, Request, StatusCode};
use seckill_inventory::{
    now_ms, rfc3339, valid_id, Admission, AdmissionMode, Outcome, Purchase, RequestRecord,
    SaleStatus,
};
use seckill_ops::http::{json, HttpResponse};
use seckill_ops::trace::{self, Kind, Span, SpanContext};
use seckill_queue::{QueueError, Ticket};
use serde::{Deserialize, Serialize};

use crate::answer::{error, Answer, Status};
use crate::catalog::{Reason, SaleEntry};
use crate::identity::Refusal;
use crate::line::{self, Call};
use crate::waiters::Waiter;
use crate::Shared;

/// Largest request body accepted.
pub(crate) const MAX_BODY: usize = 4096;

/// The most the store calls of one purchase take together, from its
/// arrival (and never past its deadline). Past it the store counts as
/// unreachable and the buyer gets `503 store_unreachable`: a stalled Redis
/// is answered within this, however many requests queue behind it.
const STORE_BUDGET: Duration = Duration::from_secs(1);

// Header names as constants: a lookup or insert by `&str` parses the name
// on every request.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The public endpoints, by path.
enum Route {
    Purchase(String),
    Sale(String),
    Request(String),
    /// A known path with a method it does not take.
    Method,
    NotFound,
}

impl Route {
    /// Parses the path without allocating but for the one id it keeps: a
    /// refused crowd comes through here.
    fn of(method: &Method, path: &str) -> Route {
        let path = path.trim_start_matches('/');
        let one = |id: &str| !id.contains('/');
        let (route, wants) = if let Some(rest) = path.strip_prefix("api/v1/sales/") {
            match rest.strip_suffix("/purchase") {
                Some(id) if one(id) => (Route::Purchase(id.to_string()), Method::POST),
                _ if one(rest) => (Route::Sale(rest.to_string()), Method::GET),
                _ => return Route::NotFound,
            }
        } else if let Some(id) = path.strip_prefix("api/v1/requests/").filter(|id| one(id)) {
            (Route::Request(id.to_string()), Method::GET)
        } else {
            return Route::NotFound;
        };
        if *method == wants {
            route
        } else {
            Route::Method
        }
    }
}

pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> HttpResponse {
    let mut resp = match Route::of(req.method(), req.uri().path()) {
        Route::Purchase(sale_id) => return purchase(&shared, sale_id, req).await,
        Route::Sale(sale_id) => get_sale(&shared, &sale_id).await,
        Route::Request(request_id) => get_request(&shared, &request_id, &req).await,
        Route::Method => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed",
        ),
        Route::NotFound => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    };
    set_request_id(&mut resp, seckill_inventory::unique_id());
    resp
}

/// Sets `x-request-id`, taking the id's buffer as the header's.
pub(crate) fn set_request_id(resp: &mut HttpResponse, id: String) {
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(id)) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
}

#[derive(Deserialize)]
struct PurchaseBody {
    /// Optional with buyer identity on (the buyer is then known already).
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    quantity: Option<u32>,
}

/// `POST /api/v1/sales/{sale_id}/purchase`.
async fn purchase(shared: &Arc<Shared>, sale_id: String, req: Request<Incoming>) -> HttpResponse {
    let started = Instant::now();
    let request_id = if valid_id(&sale_id) {
        seckill_inventory::request_id(&sale_id)
    } else {
        seckill_inventory::unique_id()
    };
    let mut span = trace::enabled().then(|| server_span(&req)).flatten();
    let trace = span.as_ref().map(Span::context);
    let (status, mut resp) = admit_and_wait(shared, &sale_id, &request_id, req, trace).await;
    let refused = resp
        .extensions_mut()
        .remove::<Refused>()
        .map(|Refused(reason)| reason);
    let elapsed = started.elapsed();
    let seconds = elapsed.as_secs_f64();
    shared.metrics.answered(status, seconds);
    shared.catalog.answered(&sale_id, status, seconds, refused);
    log_decision(shared, &request_id, &sale_id, status, elapsed);
    if let Some(mut span) = span.take() {
        span.set("seckill.sale", sale_id.as_str());
        span.set("seckill.request_id", request_id.as_str());
        span.set("seckill.outcome", status.name());
        span.set("http.response.status_code", status.code().as_u16());
        if status.code().is_server_error() {
            span.fail();
        }
        span.end();
    }
    set_request_id(&mut resp, request_id);
    resp
}

/// The span of one purchase: a child of the client's `traceparent`, or
/// the root of its own trace.
fn server_span(req: &Request<Incoming>) -> Option<Span> {
    let parent = req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok());
    let mut span = Span::start_from("purchase", Kind::Server, parent)?;
    span.set("http.request.method", "POST");
    span.set("url.path", req.uri().path());
    Some(span)
}

/// One line per purchase: at `debug`, or at `info` with `--log-requests`.
fn log_decision(
    shared: &Shared,
    request_id: &str,
    sale_id: &str,
    status: Status,
    elapsed: Duration,
) {
    let (outcome, micros) = (status.name(), elapsed.as_micros() as u64);
    if shared.config.log_requests {
        tracing::info!(target: "seckill::purchase", request_id, sale = sale_id, outcome, micros, "purchase");
    } else {
        tracing::debug!(target: "seckill::purchase", request_id, sale = sale_id, outcome, micros, "purchase");
    }
}

/// Refusal with the standard message of `status`.
fn refuse(status: Status) -> (Status, HttpResponse) {
    (status, Answer::fixed(status))
}

fn bad_request(message: &str) -> (Status, HttpResponse) {
    let s = Status::BadRequest;
    (s, Answer::of(s).error(message).into_response(s))
}

/// Marks a refusal whose reason is counted once the answer is made (the
/// steps that refuse for these reasons do not all hold the sale's entry).
/// The refusals of the hot paths (`no_token`, the fifo line) count where
/// they happen instead, without this.
#[derive(Clone, Copy)]
struct Refused(Reason);

/// A refusal with a `reason`, counted by [`purchase`].
fn refused(s: Status, answer: Answer<'_>, reason: Reason) -> Answered {
    let mut resp = answer.reason(reason.as_str()).into_response(s);
    resp.extensions_mut().insert(Refused(reason));
    (s, resp)
}

/// Refuses for want of room (the queue or the waiter table is full) or
/// because the gateway is going away.
fn overloaded(request_id: &str, reason: Reason) -> Answered {
    let s = Status::Overloaded;
    refused(s, Answer::of(s).request_id(request_id), reason)
}

/// A sale the store lost its data for: refused, never sold again by accident.
fn store_lost(request_id: Option<&str>) -> Answered {
    let s = Status::Overloaded;
    let mut answer =
        Answer::of(s).error("the store lost this sale's data; an operator is restoring it");
    answer.request_id = request_id;
    refused(s, answer, Reason::StoreLost)
}

/// Fails closed when a store cannot be reached within the budget.
fn store_unreachable(request_id: &str) -> Answered {
    let s = Status::Overloaded;
    refused(
        s,
        Answer::of(s).request_id(request_id),
        Reason::StoreUnreachable,
    )
}

/// The time limits of one purchase, counted from its arrival.
#[derive(Clone, Copy)]
struct Deadlines {
    /// Every store call of the request path ends by then, together.
    store: tokio::time::Instant,
    /// The wait for the result ends by then: the request's deadline plus
    /// the grace for a result decided just in time.
    answer: tokio::time::Instant,
}

impl Deadlines {
    /// The store deadline on the wall clock, for the store to check itself.
    fn store_by_ms(&self) -> u64 {
        let left = self
            .store
            .saturating_duration_since(tokio::time::Instant::now());
        now_ms() + left.as_millis() as u64
    }

    fn from_arrival(shared: &Shared) -> Self {
        let arrived = tokio::time::Instant::now();
        let cfg = &shared.config;
        Deadlines {
            store: arrived + STORE_BUDGET.min(cfg.request_timeout),
            answer: arrived + cfg.request_timeout + cfg.reply_grace,
        }
    }
}

/// Runs one store call within the request's store budget; `None` when the
/// budget ran out first.
async fn within<T>(by: tokio::time::Instant, call: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout_at(by, call).await.ok()
}

/// An answer with its status (for the metrics): the purchase path's early
/// returns are refusals of this type, so each step is `step(..)?`.
type Answered = (Status, HttpResponse);

/// The whole purchase path; returns the status for the metrics too.
async fn admit_and_wait(
    shared: &Arc<Shared>,
    sale_id: &str,
    request_id: &str,
    req: Request<Incoming>,
    trace: Option<SpanContext>,
) -> Answered {
    match purchase_steps(shared, sale_id, request_id, req, trace).await {
        Ok(answered) | Err(answered) => answered,
    }
}

/// The steps of the design's request path, in order; each refuses with
/// the answer for its failure.
async fn purchase_steps(
    shared: &Arc<Shared>,
    sale_id: &str,
    request_id: &str,
    req: Request<Incoming>,
    trace: Option<SpanContext>,
) -> Result<Answered, Answered> {
    let mut by = Deadlines::from_arrival(shared);
    check_address_limit(shared, &req)?;
    let idempotency_key = idempotency_key(&req)?;
    // An unkeyed request to a sale that cannot sell now (unknown, not
    // started, ended, paused, sold out, or, admitting immediately, no token
    // as far as the bucket knows without I/O) is answered before its body
    // is read and its buyer verified: the answer is the sale's public
    // state, and a crowd refused costs no signature checks. A keyed one may
    // repeat a paid request: its buyer comes first.
    let early = match idempotency_key {
        None => {
            let sale = sale_of(shared, sale_id, request_id, by).await?;
            check_state(shared, &sale, request_id, now_ms())?;
            if sale.spec.admission == AdmissionMode::Immediate && sale.bucket.known_empty() {
                sale.series.refused(Reason::NoToken);
                return Err((Status::RateLimited, Answer::no_token()));
            }
            Some(sale)
        }
        Some(_) => None,
    };
    // Boxed, like the steps after the token: a buyer waiting in line
    // holds none of their state.
    let input = Box::pin(read_input(shared, req, idempotency_key)).await?;
    if let Some(key) = &input.idempotency_key {
        // A repeat of a key is how a buyer whose connection broke recovers
        // its result, so it is answered before the sale's state refuses:
        // sold out, ended or removed, the first request's result stands.
        check_edge_limit(shared, sale_id, &input.user_id)?;
        Box::pin(answer_repeat(
            shared,
            by,
            sale_id,
            &input.user_id,
            key,
            request_id,
        ))
        .await?;
    }
    let sale = match early {
        Some(sale) => sale,
        None => {
            let sale = sale_of(shared, sale_id, request_id, by).await?;
            check_state(shared, &sale, request_id, now_ms())?;
            sale
        }
    };
    if input.quantity > sale.spec.per_user_limit {
        return Err(bad_request("quantity is over the sale's per-user limit"));
    }
    if input.idempotency_key.is_none() {
        check_edge_limit(shared, sale_id, &input.user_id).inspect_err(|_| {
            sale.series.refused(Reason::UserLimit);
        })?;
    }
    let waited = match sale.spec.admission {
        AdmissionMode::Immediate => {
            take_token(&sale, by, request_id).await?;
            None
        }
        AdmissionMode::Fifo => {
            let waited = wait_in_line(shared, &sale, by, request_id, &input.user_id).await?;
            if !waited.is_zero() {
                // Admitted now: the deadline and the store's budget count
                // from here, as for a request that found its token at once.
                by = Deadlines::from_arrival(shared);
            }
            Some(waited)
        }
    };
    let now = now_ms();
    let purchase = input.into_purchase(shared, sale_id, request_id, now, by.store_by_ms());
    // Boxed: the steps after the token are in the future's state only
    // while they run, not in every buyer's waiting in line.
    Box::pin(admit_park_and_wait(
        shared, &sale, by, purchase, now, waited, trace,
    ))
    .await
}

/// Steps 5 to 7: record, park, enqueue, wait for the result.
async fn admit_park_and_wait(
    shared: &Shared,
    sale: &SaleEntry,
    by: Deadlines,
    purchase: Purchase,
    now: u64,
    waited: Option<Duration>,
    trace: Option<SpanContext>,
) -> Result<Answered, Answered> {
    let (waiter, ticket) = park_and_admit(shared, by, purchase, now, trace).await?;
    Ok(wait_for_result(sale, by, waiter, &ticket.purchase, waited).await)
}

/// A purchase request's validated input.
struct Input {
    user_id: String,
    quantity: u32,
    idempotency_key: Option<String>,
}

impl Input {
    fn into_purchase(
        self,
        shared: &Shared,
        sale_id: &str,
        request_id: &str,
        now: u64,
        store_by_ms: u64,
    ) -> Purchase {
        Purchase {
            store_by_ms,
            request_id: request_id.to_string(),
            sale_id: sale_id.to_string(),
            user_id: self.user_id,
            quantity: self.quantity,
            idempotency_key: self.idempotency_key,
            deadline_ms: now + shared.config.request_timeout.as_millis() as u64,
        }
    }
}

/// Step 1a: the `Idempotency-Key` header, when there is one.
fn idempotency_key(req: &Request<Incoming>) -> Result<Option<String>, Answered> {
    match req.headers().get(IDEMPOTENCY_KEY) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(k) if valid_id(k) => Ok(Some(k.to_string())),
            _ => Err(bad_request(
                "Idempotency-Key must be 1..=64 characters of [A-Za-z0-9_-]",
            )),
        },
    }
}

/// Step 1b, input: the buyer, the body's size and JSON, the ids.
async fn read_input(
    shared: &Shared,
    req: Request<Incoming>,
    idempotency_key: Option<String>,
) -> Result<Input, Answered> {
    // Who buys, before the body is read: a refusal costs no body.
    let identity = &shared.config.identity;
    let buyer = identity.buyer(&req).map_err(Refusal::answer)?;
    let body = read_body(req, shared.config.body_read_timeout).await?;
    let body: PurchaseBody = serde_json::from_slice(&body)
        .map_err(|e| bad_request(&format!("invalid JSON body: {e}")))?;
    let user_id = match (buyer, body.user_id) {
        (Some(buyer), Some(named)) if named != buyer => return Err(refuse(Status::Forbidden)),
        (Some(buyer), _) => buyer,
        (None, Some(named)) => named,
        (None, None) => return Err(bad_request("user_id is required")),
    };
    if user_id.is_empty() || user_id.len() > 64 {
        return Err(bad_request("user_id must be 1..=64 characters"));
    }
    if user_id.chars().any(char::is_control) {
        return Err(bad_request("user_id must not contain control characters"));
    }
    let quantity = body.quantity.unwrap_or(1);
    if quantity == 0 {
        return Err(bad_request("quantity must be at least 1"));
    }
    Ok(Input {
        user_id,
        quantity,
        idempotency_key,
    })
}

/// Step 1b, for a keyed request: the first request's result when the key
/// was used before (a store read; unkeyed requests never make it). A store
/// that cannot say fails closed.
async fn answer_repeat(
    shared: &Shared,
    by: Deadlines,
    sale_id: &str,
    user_id: &str,
    key: &str,
    request_id: &str,
) -> Result<(), Answered> {
    if !valid_id(sale_id) {
        return Ok(()); // no such sale; step 2 answers 404
    }
    let inventory = &shared.stores.inventory;
    match within(by.store, inventory.request_of_key(sale_id, user_id, key)).await {
        Some(Ok(None)) => Ok(()),
        Some(Ok(Some(first))) => Err(repeat_of(shared, by, &first).await),
        Some(Err(_)) | None => Err(store_unreachable(request_id)),
    }
}

/// Step 2a: the sale, from the local catalog, or (boxed, off the hot
/// path's future) [`find_sale`].
async fn sale_of(
    shared: &Shared,
    sale_id: &str,
    request_id: &str,
    by: Deadlines,
) -> Result<Arc<SaleEntry>, Answered> {
    match shared.catalog.get(sale_id) {
        Some(sale) => Ok(sale),
        None => Box::pin(find_sale(shared, sale_id, request_id, by)).await,
    }
}

/// A sale the catalog does not hold is
/// read from the store once before the `404` (created through another
/// gateway a moment ago, its announcement not here yet); a miss is
/// remembered for a moment, and such reads are bounded in number, so
/// made-up sale ids cost the store little.
async fn find_sale(
    shared: &Shared,
    sale_id: &str,
    request_id: &str,
    by: Deadlines,
) -> Result<Arc<SaleEntry>, Answered> {
    if let Some(sale) = shared.catalog.get(sale_id) {
        return Ok(sale);
    }
    if shared.catalog.is_lost(sale_id) {
        return Err(store_lost(Some(request_id)));
    }
    if !valid_id(sale_id) || shared.catalog.missed_lately(sale_id) {
        return Err(refuse(Status::NotFound));
    }
    let Some(_read) = shared.catalog.read_permit() else {
        return Err(refuse(Status::NotFound));
    };
    match within(by.store, shared.stores.inventory.sale(sale_id)).await {
        Some(Ok(Some(status))) => {
            crate::install(shared, &status).await;
            shared
                .catalog
                .get(sale_id)
                .ok_or_else(|| refuse(Status::NotFound))
        }
        Some(Ok(None)) => {
            shared.catalog.note_miss(sale_id);
            Err(refuse(Status::NotFound))
        }
        Some(Err(_)) | None => Err(store_unreachable(request_id)),
    }
}

/// Step 2b: the sale's state, from the local catalog: no I/O.
fn check_state(
    shared: &Shared,
    sale: &SaleEntry,
    request_id: &str,
    now: u64,
) -> Result<(), Answered> {
    match seckill_inventory::window_state(&sale.spec, now) {
        Some(seckill_inventory::SaleState::Upcoming) => return Err(refuse(Status::NotStarted)),
        Some(_) => return Err(refuse(Status::Ended)),
        None => {}
    }
    if sale.spec.paused {
        return Err(refuse(Status::Paused));
    }
    if sale.sold_out() {
        return Err(refuse(Status::SoldOut));
    }
    if shared.draining.load(Ordering::Acquire) {
        return Err(overloaded(request_id, Reason::ShuttingDown));
    }
    Ok(())
}

/// Step 0: the per-address edge limit, before the body is even read: one
/// address's flood costs the others neither tokens nor work.
fn check_address_limit(shared: &Shared, req: &Request<Incoming>) -> Result<(), Answered> {
    if !shared.limiter.limits_addresses() {
        return Ok(());
    }
    let client = crate::client::client_addr(req, &shared.config.trusted_proxies);
    if client.is_none_or(|ip| shared.limiter.check_address(ip)) {
        return Ok(());
    }
    let s = Status::RateLimited;
    Err(refused(s, Answer::of(s), Reason::AddressLimit))
}

/// Step 3: the per-user edge limit.
fn check_edge_limit(shared: &Shared, sale_id: &str, user_id: &str) -> Result<(), Answered> {
    if shared.limiter.check(sale_id, user_id) {
        Ok(())
    } else {
        Err(rate_limited("user_limit"))
    }
}

fn rate_limited(reason: &str) -> Answered {
    let s = Status::RateLimited;
    (s, Answer::of(s).reason(reason).into_response(s))
}

/// Step 4: a token, or an immediate refusal: nothing before it touches the
/// store, so a crowd without tokens never reaches the backend.
async fn take_token(sale: &SaleEntry, by: Deadlines, request_id: &str) -> Result<(), Answered> {
    match within(by.store, sale.bucket.try_take()).await {
        Some(Ok(true)) => Ok(()),
        Some(Ok(false)) => {
            sale.series.refused(Reason::NoToken);
            Err((Status::RateLimited, Answer::no_token()))
        }
        Some(Err(_)) | None => Err(store_unreachable(request_id)),
    }
}

/// The estimated wait for the token of `position`, in ms (rounded up).
fn eta_ms(sale: &SaleEntry, position: u64) -> u64 {
    (position * 1000).div_ceil(u64::from(sale.spec.token_rate.max(1)))
}

/// Whether a buyer at `position` may wait: beyond the line's capacity
/// `429 line_full`, beyond `limit_ms` of estimated wait `429
/// wait_too_long`; both say the position and the estimate.
fn check_wait(sale: &SaleEntry, position: u64, limit_ms: u64) -> Result<(), Answered> {
    let eta = eta_ms(sale, position);
    let reason = if position > u64::from(sale.spec.wait_capacity) {
        sale.series.refused(Reason::LineFull);
        "line_full"
    } else if eta > limit_ms {
        sale.series.refused(Reason::WaitTooLong);
        "wait_too_long"
    } else {
        return Ok(());
    };
    let s = Status::RateLimited;
    let answer = Answer::of(s)
        .error("the wait for a token would be too long; try again later")
        .reason(reason)
        .estimate(position, eta);
    Err((s, answer.into_response(s)))
}

/// Step 4 of a `fifo` sale: a ticket in arrival order, then the wait for
/// its token. A buyer whose estimated wait is beyond the sale's
/// `max_wait_ms` (or the request timeout) is refused at once, first from
/// what this gateway knows (no store call), then from its ticket's real
/// place. Returns how long it waited.
async fn wait_in_line(
    shared: &Arc<Shared>,
    sale: &Arc<SaleEntry>,
    by: Deadlines,
    request_id: &str,
    user_id: &str,
) -> Result<Duration, Answered> {
    let arrived = tokio::time::Instant::now();
    let timeout = shared.config.request_timeout;
    let limit_ms = u64::from(sale.spec.max_wait_ms).min(timeout.as_millis() as u64);
    let line = &sale.line;
    if let Some(position) = line.next_position() {
        check_wait(sale, position, limit_ms)?;
    }
    let joining = line.joining();
    let place = match within(by.store, sale.bucket.join()).await {
        Some(Ok(place)) => place,
        Some(Err(_)) | None => return Err(store_unreachable(request_id)),
    };
    drop(joining);
    line.observe(place.turns);
    if place.served() {
        return Ok(Duration::ZERO);
    }
    if let Err(refused) = check_wait(sale, place.position(), limit_ms) {
        line.abandon(place.ticket);
        return Err(refused);
    }
    let (mut seat, start_pump) = line.sit(place.ticket, request_id, user_id);
    if start_pump {
        tokio::spawn(line::pump(
            shared.clone(),
            sale.spec.sale_id.clone(),
            line.clone(),
        ));
    }
    // The estimate may be off (tokens taken by another gateway's buyers
    // who came first): the wait ends at twice the limit at most.
    let until = arrived + Duration::from_millis(limit_ms * 2).min(timeout);
    match tokio::time::timeout_at(until, &mut seat.rx).await {
        Ok(Ok(Call::Served)) => {
            let waited = arrived.elapsed();
            sale.series.waited(waited.as_secs_f64());
            Ok(waited)
        }
        Ok(Ok(Call::Closed(status))) => Err(refuse(status)),
        // The line was closed under the waiter: the gateway is stopping.
        Ok(Err(_)) => Err(overloaded(request_id, Reason::ShuttingDown)),
        Err(_) => {
            let position = line.queued(request_id).map_or(1, |q| q.position);
            drop(seat);
            sale.series.refused(Reason::WaitTooLong);
            let s = Status::RateLimited;
            let answer = Answer::of(s)
                .error("no token came in time; try again later")
                .reason("wait_too_long")
                .estimate(position, eta_ms(sale, position));
            Err((s, answer.into_response(s)))
        }
    }
}

/// Steps 5 and 6: parks the waiter, then records the request, claims its
/// idempotency key and queues its ticket, in one step of the store (one
/// round trip on Redis; see `Stores::admit_and_enqueue`). The waiter comes
/// first so that an answer finds it however fast it comes. A repeat of a
/// key gets the first request's result (the token it took is spent: a
/// repeat without one is refused like any other request, and retries).
async fn park_and_admit(
    shared: &Shared,
    by: Deadlines,
    purchase: Purchase,
    now: u64,
    trace: Option<SpanContext>,
) -> Result<(Waiter<'_>, Ticket), Answered> {
    let Some(waiter) = shared.waiters.park(&purchase.request_id) else {
        return Err(overloaded(&purchase.request_id, Reason::WaitersFull));
    };
    let ticket = Ticket {
        purchase,
        reply_to: shared.config.advertise_grpc.clone(),
        enqueued_at_ms: now,
        trace: trace.map(|t| t.traceparent()),
    };
    let request_id = &ticket.purchase.request_id;
    let refused = match within(by.store, shared.stores.admit_and_enqueue(&ticket)).await {
        Some(Ok(Admission::Admitted)) => return Ok((waiter, ticket)),
        Some(Ok(Admission::Duplicate { request_id: first }))
            if ticket.purchase.idempotency_key.is_some() =>
        {
            drop(waiter);
            return Err(repeat_of(shared, by, &first).await);
        }
        // Unkeyed requests cannot collide; treat it as a store fault.
        Some(Ok(Admission::Duplicate { .. })) => store_unreachable(request_id),
        Some(Err(QueueError::UnknownSale(_))) => refuse(Status::NotFound),
        Some(Err(QueueError::Full(_))) => overloaded(request_id, Reason::QueueFull),
        // The step may still run when a stalled store comes back, and then
        // hold the key of a request nobody waits for: undo it, sent behind
        // it on the same connection.
        Some(Err(QueueError::Unavailable(_))) | None => {
            drop(waiter);
            withdraw(shared, by, &ticket.purchase).await;
            return Err(store_unreachable(request_id));
        }
    };
    Err(refused)
}

/// Step 7: waits for the result until the deadline, plus a grace for a result
/// decided just in time. Without one (timed out, or the gateway is going
/// away) the answer is 504, and the outcome is final only via
/// `GET /api/v1/requests/{id}`.
async fn wait_for_result(
    sale: &SaleEntry,
    by: Deadlines,
    waiter: Waiter<'_>,
    p: &Purchase,
    waited: Option<Duration>,
) -> Answered {
    match waiter.wait_until(by.answer).await.map(|c| c.outcome) {
        Some(outcome) => {
            if outcome == Outcome::SoldOut && p.quantity == 1 {
                // Not even one unit left: later buyers get 410 locally.
                sale.mark_sold_out();
            }
            let waited_ms = waited.map(|w| w.as_millis() as u64);
            answer_outcome(
                &outcome,
                &p.request_id,
                &p.sale_id,
                &p.user_id,
                p.quantity,
                waited_ms,
            )
        }
        None => {
            let s = Status::Timeout;
            (s, Answer::of(s).request_id(&p.request_id).into_response(s))
        }
    }
}

/// The answer for a request's final outcome; a success names what was
/// bought (and, in `fifo` admission, how long the buyer waited in line).
fn answer_outcome(
    outcome: &Outcome,
    request_id: &str,
    sale_id: &str,
    user_id: &str,
    quantity: u32,
    waited_ms: Option<u64>,
) -> Answered {
    let status = Status::of(outcome);
    let mut answer = Answer::outcome(outcome, request_id);
    if status == Status::Success {
        answer.sale_id = Some(sale_id);
        answer.user_id = Some(user_id);
        answer.quantity = Some(quantity);
        answer.waited_ms = waited_ms;
    }
    (status, answer.into_response(status))
}

/// Undoes the admission of a request that will not be queued. The answer
/// waits for it while the store budget lasts; past that it finishes on its
/// own, bounded by the store's own command timeout (and such undos are as
/// few as the requests that took a token).
async fn withdraw(shared: &Shared, by: Deadlines, purchase: &Purchase) {
    let (inventory, purchase) = (shared.stores.inventory.clone(), purchase.clone());
    let undo = tokio::spawn(async move {
        if let Err(e) = inventory.withdraw(&purchase).await {
            tracing::warn!(error = %e, "cannot withdraw an admission");
        }
    });
    let _ = within(by.store, undo).await;
}

/// The answer to a repeat of an idempotency key: the first request's
/// result, or 202 while it is in flight.
async fn repeat_of(shared: &Shared, by: Deadlines, first: &str) -> Answered {
    match within(by.store, shared.stores.inventory.request(first)).await {
        Some(Ok(Some(RequestRecord {
            outcome: Some(outcome),
            sale_id,
            user_id,
            quantity,
            ..
        }))) => answer_outcome(&outcome, first, &sale_id, &user_id, quantity, None),
        Some(Ok(_)) => {
            let s = Status::Pending;
            (s, Answer::of(s).request_id(first).into_response(s))
        }
        Some(Err(_)) | None => store_unreachable(first),
    }
}

/// Reads a body of at most [`MAX_BODY`] bytes within `timeout`.
pub(crate) async fn read_body(
    req: Request<Incoming>,
    timeout: Duration,
) -> Result<Bytes, Answered> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(refuse(Status::TooLarge));
    }
    let limited = Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(refuse(Status::TooLarge)),
        Ok(Err(_)) => Err(bad_request("the request body could not be read")),
        Err(_) => Err(bad_request("the request body did not arrive in time")),
    }
}

/// A sale as the read API shows it.
#[derive(Serialize)]
pub(crate) struct SaleView<'a> {
    sale_id: &'a str,
    stock: u64,
    remaining: u64,
    sold: u64,
    per_user_limit: u32,
    starts_at: Option<String>,
    ends_at: Option<String>,
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token_capacity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_capacity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admission: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_wait_ms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wait_capacity: Option<u32>,
}

impl<'a> SaleView<'a> {
    /// The public view; `admin` adds the flow-control settings.
    pub fn new(s: &'a SaleStatus, admin: bool) -> Self {
        let spec = &s.spec;
        SaleView {
            sale_id: &spec.sale_id,
            stock: spec.stock,
            remaining: s.remaining(),
            sold: s.sold,
            per_user_limit: spec.per_user_limit,
            starts_at: spec.starts_at_ms.map(rfc3339),
            ends_at: spec.ends_at_ms.map(rfc3339),
            state: s.state(now_ms()).as_str(),
            token_rate: admin.then_some(spec.token_rate),
            token_capacity: admin.then_some(spec.token_capacity),
            queue_capacity: admin.then_some(spec.queue_capacity),
            admission: admin.then_some(spec.admission.as_str()),
            max_wait_ms: admin.then_some(spec.max_wait_ms),
            wait_capacity: admin.then_some(spec.wait_capacity),
        }
    }
}

/// `GET /api/v1/sales/{sale_id}`.
async fn get_sale(shared: &Shared, sale_id: &str) -> HttpResponse {
    if !valid_id(sale_id) {
        return error(StatusCode::NOT_FOUND, "not_found", "no such sale");
    }
    match shared.stores.inventory.sale(sale_id).await {
        Ok(Some(s)) => json(
            StatusCode::OK,
            serde_json::to_vec(&SaleView::new(&s, false)).expect("views serialize"),
        ),
        Ok(None) if shared.catalog.is_lost(sale_id) => store_lost(None).1,
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such sale"),
        Err(_) => unavailable(),
    }
}

pub(crate) fn unavailable() -> HttpResponse {
    let mut resp = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
        "backend store unreachable; try again later",
    );
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

#[derive(Serialize)]
struct RequestView<'a> {
    request_id: &'a str,
    sale_id: &'a str,
    user_id: &'a str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    order_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eta_ms: Option<u64>,
}

/// A request waiting in a `fifo` line here: `queued`, with its place.
fn queued_view(shared: &Shared, request_id: &str, viewer: Option<&str>) -> Option<HttpResponse> {
    let sale_id = seckill_inventory::sale_of_request(request_id)?;
    let sale = shared.catalog.get(sale_id)?;
    let q = sale.line.queued(request_id)?;
    if viewer.is_some_and(|v| v != q.user_id) {
        return None;
    }
    let view = RequestView {
        request_id,
        sale_id,
        user_id: &q.user_id,
        status: "queued",
        order_id: None,
        reason: None,
        position: Some(q.position),
        eta_ms: Some(eta_ms(&sale, q.position)),
    };
    Some(json(
        StatusCode::OK,
        serde_json::to_vec(&view).expect("views serialize"),
    ))
}

/// `GET /api/v1/requests/{request_id}`.
/// With buyer identity on, only the request's own buyer sees it: to anyone
/// else it does not exist.
async fn get_request(shared: &Shared, request_id: &str, req: &Request<Incoming>) -> HttpResponse {
    let not_found = || error(StatusCode::NOT_FOUND, "not_found", "no such request");
    let viewer = match shared.config.identity.buyer(req) {
        Ok(viewer) => viewer,
        Err(refusal) => return refusal.answer().1,
    };
    if seckill_inventory::sale_of_request(request_id).is_none() || request_id.len() > 128 {
        return not_found();
    }
    // Waiting in line here: not in the store before its token.
    if let Some(resp) = queued_view(shared, request_id, viewer.as_deref()) {
        return resp;
    }
    match shared.stores.inventory.request(request_id).await {
        Ok(Some(r)) if viewer.as_ref().is_some_and(|v| *v != r.user_id) => not_found(),
        Ok(Some(r)) => {
            let (order_id, reason) = match &r.outcome {
                Some(Outcome::Success { order_id }) => (Some(order_id.as_str()), None),
                Some(Outcome::Rejected { reason }) => (None, Some(reason.as_str())),
                _ => (None, None),
            };
            let view = RequestView {
                request_id: &r.request_id,
                sale_id: &r.sale_id,
                user_id: &r.user_id,
                status: r.outcome.as_ref().map_or("pending", Outcome::status),
                order_id,
                reason,
                position: None,
                eta_ms: None,
            };
            json(
                StatusCode::OK,
                serde_json::to_vec(&view).expect("views serialize"),
            )
        }
        Ok(None) => not_found(),
        Err(_) => unavailable(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str) -> String {
        match Route::of(&method, path) {
            Route::Purchase(id) => format!("purchase {id}"),
            Route::Sale(id) => format!("sale {id}"),
            Route::Request(id) => format!("request {id}"),
            Route::Method => "405".into(),
            Route::NotFound => "404".into(),
        }
    }

    #[test]
    fn paths_route_as_the_contract_says() {
        let post = || Method::POST;
        let get = || Method::GET;
        assert_eq!(route(post(), "/api/v1/sales/s1/purchase"), "purchase s1");
        assert_eq!(route(get(), "/api/v1/sales/s1"), "sale s1");
        assert_eq!(route(get(), "/api/v1/requests/s1.ab"), "request s1.ab");
        // Leading slashes are one; an empty id is the handler's to refuse.
        assert_eq!(route(post(), "//api/v1/sales/s1/purchase"), "purchase s1");
        assert_eq!(route(post(), "/api/v1/sales//purchase"), "purchase ");
        // A known path with another method.
        assert_eq!(route(get(), "/api/v1/sales/s1/purchase"), "405");
        assert_eq!(route(Method::DELETE, "/api/v1/sales/s1"), "405");
        assert_eq!(route(post(), "/api/v1/requests/r"), "405");
        // Anything else.
        for path in [
            "/",
            "",
            "/api/v1/sales",
            "/api/v1/sales/s1/",
            "/api/v1/sales/s1/purchase/",
            "/api/v1/sales/s1/purchase/x",
            "/api/v1/requests/r/x",
            "/api/v2/sales/s1",
            "/admin/v1/sales/s1",
        ] {
            assert_eq!(route(post(), path), "404", "{path}");
            assert_eq!(route(get(), path), "404", "{path}");
        }
    }
}
