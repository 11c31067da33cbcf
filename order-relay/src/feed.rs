//! The embedded mode's source: the gateway's order feed,
//! `GET /admin/v1/orders?after=CURSOR&limit=N&wait_ms=W` with the admin
//! token. The cursor is the sink's: PostgreSQL keeps it in the orders'
//! own transaction, so a restart resumes exactly after the last order
//! committed, neither skipping nor repeating one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use seckill_inventory::{parse_rfc3339, OrderEvent, OrderEventKind};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::sink::{Sink, SinkError};
use crate::Health;

/// Largest feed page accepted (10,000 orders of a few hundred bytes).
const MAX_PAGE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Deserialize)]
struct Page {
    orders: Vec<FeedOrder>,
    next: String,
}

#[derive(Deserialize)]
struct FeedOrder {
    order_id: String,
    sale_id: String,
    user_id: String,
    quantity: u32,
    request_id: String,
    at: String,
    /// `placed` (also when absent) or `cancelled`.
    #[serde(default)]
    event: Option<String>,
}

impl FeedOrder {
    fn event(self) -> Result<OrderEvent, String> {
        let at_ms = parse_rfc3339(&self.at).ok_or_else(|| format!("bad time {:?}", self.at))?;
        let kind = match self.event.as_deref() {
            None | Some("placed") => OrderEventKind::Placed,
            Some("cancelled") => OrderEventKind::Cancelled,
            Some(other) => return Err(format!("unknown event {other:?}")),
        };
        Ok(OrderEvent {
            order_id: self.order_id,
            request_id: self.request_id,
            sale_id: self.sale_id,
            user_id: self.user_id,
            quantity: self.quantity,
            at_ms,
            kind,
        })
    }
}

/// How the feed is read.
#[derive(Clone, Debug)]
pub struct Config {
    /// `http://host:port` of the gateway's admin listener.
    pub url: String,
    pub token: String,
    /// The cursor's name in the sink.
    pub name: String,
    pub sale_id: Option<String>,
    pub limit: u32,
    /// 0: the gateway is not asked to wait; the relay pauses `poll` instead.
    pub wait_ms: u64,
    pub poll: Duration,
}

/// Follows the feed into `sink` until `shutdown`.
pub async fn run(config: Config, mut sink: Sink, health: Arc<Health>, shutdown: CancellationToken) {
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut cursor: Option<String> = None;
    let mut loaded = false;
    let mut failures = 0u32;
    while !shutdown.is_cancelled() {
        let step = async {
            if !loaded {
                cursor = sink.cursor(&config.name).await?;
                loaded = true;
                tracing::info!(cursor = ?cursor, "resuming the order feed");
            }
            let (events, next) = fetch(&client, &config, cursor.as_deref())
                .await
                .inspect_err(|_| health.source(false))?;
            health.source(true);
            if events.is_empty() && Some(&next) == cursor.as_ref() {
                return Ok(false);
            }
            sink.deliver(&events, Some((&config.name, &next)), &shutdown)
                .await
                .inspect_err(|_| health.sink(false))?;
            health.sink(true);
            cursor = Some(next);
            Ok::<bool, SinkError>(!events.is_empty())
        };
        let pause = match step.await {
            Ok(true) => {
                failures = 0;
                continue;
            }
            Ok(false) => {
                failures = 0;
                if config.wait_ms > 0 {
                    continue;
                }
                config.poll
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, "order feed pass failed; retrying");
                (config.poll * 2u32.saturating_pow(failures.min(8))).min(Duration::from_secs(5))
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    config: &Config,
    cursor: Option<&str>,
) -> Result<(Vec<OrderEvent>, String), SinkError> {
    let fail = |what: String| SinkError::Failed(format!("order feed: {what}"));
    let mut uri = format!("{}/admin/v1/orders?limit={}", config.url, config.limit);
    if let Some(c) = cursor {
        uri.push_str(&format!("&after={c}"));
    }
    if config.wait_ms > 0 {
        uri.push_str(&format!("&wait_ms={}", config.wait_ms));
    }
    if let Some(s) = &config.sale_id {
        uri.push_str(&format!("&sale_id={s}"));
    }
    let req = hyper::Request::get(uri)
        .header(
            hyper::header::AUTHORIZATION,
            format!("Bearer {}", config.token),
        )
        .body(Empty::new())
        .map_err(|e| fail(e.to_string()))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_PAGE_BYTES)
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(fail(format!("status {status}: {text}")));
        }
        let page: Page =
            serde_json::from_slice(&body).map_err(|e| fail(format!("bad page: {e}")))?;
        // The cursor goes back into a URL: plain characters only.
        if page.next.is_empty()
            || page.next.len() > 128
            || !page
                .next
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return Err(fail("bad cursor in the page".into()));
        }
        let events = page
            .orders
            .into_iter()
            .map(FeedOrder::event)
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        Ok((events, page.next))
    };
    let deadline = Duration::from_millis(config.wait_ms) + Duration::from_secs(10);
    tokio::time::timeout(deadline, exchange)
        .await
        .unwrap_or_else(|_| Err(fail("timed out".into())))
}
