//! `order-relay`: follows the order topic and delivers every order event
//! (placed or cancelled) to one sink, exactly once in effect.
//!
//! The topic is, in the distributed mode, the order stream of every sale
//! in Redis, read through a consumer group ([`redis_source`]); in the
//! embedded mode, the gateway's order feed ([`feed`]). Delivery is at least
//! once (an entry is acknowledged, or the feed's cursor advanced, only
//! after the sink committed it) and every sink makes a redelivery
//! harmless: PostgreSQL by its primary key, a webhook receiver by the
//! event's `id`. The loop is one batch at a time: bounded work in flight,
//! and a slow sink slows the reading, never piles up memory.

#![forbid(unsafe_code)]

pub mod args;
pub mod feed;
pub mod metrics;
pub mod redis_source;
pub mod signature;
pub mod sink;
pub mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use seckill_inventory::{rfc3339, OrderEvent, OrderEventKind};
use serde_json::json;

pub use args::Args;

/// An event as sinks show it (webhook body, JSON line): the order's
/// fields, `event` (`order.placed` | `order.cancelled`), and `id`, unique
/// per event, for receivers to drop a redelivery.
pub fn event_json(e: &OrderEvent) -> serde_json::Value {
    let kind = e.kind.as_str();
    let mut v = json!({
        "id": format!("{}:{kind}", e.order_id),
        "event": format!("order.{kind}"),
        "order_id": e.order_id,
        "sale_id": e.sale_id,
        "user_id": e.user_id,
        "quantity": e.quantity,
        "request_id": e.request_id,
        "at": rfc3339(e.at_ms),
    });
    if e.kind == OrderEventKind::Cancelled {
        v["cancelled_at"] = v["at"].clone();
    }
    v
}

/// What `/readyz` reports: the source and the sink were reachable at the
/// last attempt.
#[derive(Default)]
pub struct Health {
    source: AtomicBool,
    sink: AtomicBool,
}

impl Health {
    pub fn source(&self, ok: bool) {
        self.source.store(ok, Ordering::Relaxed);
    }

    pub fn sink(&self, ok: bool) {
        self.sink.store(ok, Ordering::Relaxed);
    }

    pub fn ready(&self) -> Result<(), String> {
        match (
            self.source.load(Ordering::Relaxed),
            self.sink.load(Ordering::Relaxed),
        ) {
            (true, true) => Ok(()),
            (false, _) => Err("the order topic cannot be read".into()),
            (_, false) => Err("the sink cannot be written".into()),
        }
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` on the admin listener until
/// `shutdown`.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use hyper::{Method, StatusCode};
    use seckill_ops::http::{healthz, json as reply, metrics_response, readyz, serve};
    let handler = move |req: hyper::Request<hyper::body::Incoming>| {
        let health = health.clone();
        async move {
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/metrics") => metrics_response(),
                (&Method::GET, "/healthz") => healthz(),
                (&Method::GET, "/readyz") => readyz(health.ready()),
                (_, "/metrics" | "/healthz" | "/readyz") => reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &br#"{"status":"method_not_allowed"}"#[..],
                ),
                _ => reply(StatusCode::NOT_FOUND, &br#"{"status":"not_found"}"#[..]),
            }
        }
    };
    serve(listener, handler, Default::default(), shutdown).await;
}
