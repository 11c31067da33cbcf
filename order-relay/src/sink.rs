//! The sinks: PostgreSQL, a signed webhook, JSON lines on stdout. Each
//! makes a redelivery harmless: the table's primary key, the event `id`
//! a receiver keys on, and (stdout) the consumer's own care.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use seckill_inventory::{now_ms, OrderEvent, OrderEventKind};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::signature;
use crate::tls;

/// Why a batch was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The sink failed; the batch stays unacknowledged and is tried again.
    #[error("{0}")]
    Failed(String),
    /// The webhook refused every attempt: the batch (its body) goes to the
    /// dead-letter stream.
    #[error("gave up after {attempts} attempts: {error}")]
    Exhausted {
        body: Bytes,
        attempts: u32,
        error: String,
    },
    /// Shutdown began while retrying.
    #[error("stopped")]
    Stopped,
}

/// One of the sinks.
pub enum Sink {
    Postgres(Postgres),
    Webhook(Box<Webhook>),
    Stdout(Stdout),
}

impl Sink {
    /// The `sink` label of the metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Postgres(_) => "postgres",
            Sink::Webhook(_) => "webhook",
            Sink::Stdout(_) => "stdout",
        }
    }

    /// Delivers a batch, and with it the feed's `cursor` (`(feed, next)`)
    /// when the source is the order feed: PostgreSQL in the same
    /// transaction, stdout in its cursor file once the lines are out.
    pub async fn deliver(
        &mut self,
        events: &[OrderEvent],
        cursor: Option<(&str, &str)>,
        shutdown: &CancellationToken,
    ) -> Result<(), SinkError> {
        let name = self.name();
        let result = match self {
            Sink::Postgres(p) => p.deliver(events, cursor).await,
            Sink::Webhook(w) => w.deliver(events, shutdown).await,
            Sink::Stdout(s) => s.deliver(events, cursor),
        };
        match &result {
            Ok(()) => {
                metrics::relayed(name, "ok", events.len());
                let now = now_ms();
                let h = ::metrics::histogram!(metrics::DELIVERY, "sink" => name);
                for e in events {
                    h.record(now.saturating_sub(e.at_ms) as f64 / 1000.0);
                }
            }
            Err(SinkError::Failed(_)) => metrics::relayed(name, "error", events.len()),
            Err(_) => {}
        }
        result
    }

    /// The feed cursor stored for `feed`, if any.
    pub async fn cursor(&mut self, feed: &str) -> Result<Option<String>, SinkError> {
        match self {
            Sink::Postgres(p) => p.cursor(feed).await,
            Sink::Stdout(s) => s.cursor(),
            Sink::Webhook(_) => Ok(None),
        }
    }
}

// === impl Postgres ===

/// The table of the contract, and the relay's feed cursors.
/// Relays starting together serialise on an advisory lock: concurrent
/// `CREATE TABLE IF NOT EXISTS` can still collide in the catalog. The
/// statements run as one implicit transaction, which releases the lock.
const SCHEMA: &str = "
SELECT pg_advisory_xact_lock(7215200416);
CREATE TABLE IF NOT EXISTS seckill_orders (
    order_id     text PRIMARY KEY,
    sale_id      text NOT NULL,
    user_id      text NOT NULL,
    quantity     integer NOT NULL,
    request_id   text NOT NULL,
    ordered_at   timestamptz NOT NULL,
    cancelled_at timestamptz NULL
);
CREATE INDEX IF NOT EXISTS seckill_orders_sale ON seckill_orders (sale_id);
CREATE TABLE IF NOT EXISTS seckill_relay_cursors (
    feed       text PRIMARY KEY,
    cursor     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
";

/// Placed orders, one statement per batch; a redelivered order is ignored.
const INSERT_PLACED: &str = "
INSERT INTO seckill_orders (order_id, sale_id, user_id, quantity, request_id, ordered_at)
SELECT o, s, u, q, r, to_timestamp(a / 1000.0)
FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::bigint[])
    AS t(o, s, u, q, r, a)
ON CONFLICT (order_id) DO NOTHING";

/// Cancellations: the first one's time stays. Should a cancellation be
/// delivered before its order (two relays of a group, each with one), it
/// creates the row, with the cancellation's time as `ordered_at`, and the
/// order's later insert is ignored.
const APPLY_CANCELLED: &str = "
INSERT INTO seckill_orders
    (order_id, sale_id, user_id, quantity, request_id, ordered_at, cancelled_at)
SELECT o, s, u, q, r, to_timestamp(a / 1000.0), to_timestamp(a / 1000.0)
FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], $6::bigint[])
    AS t(o, s, u, q, r, a)
ON CONFLICT (order_id) DO UPDATE
    SET cancelled_at = COALESCE(seckill_orders.cancelled_at, EXCLUDED.cancelled_at)";

const SAVE_CURSOR: &str = "
INSERT INTO seckill_relay_cursors (feed, cursor) VALUES ($1, $2)
ON CONFLICT (feed) DO UPDATE SET cursor = EXCLUDED.cursor, updated_at = now()";

/// The PostgreSQL sink. Reconnects by itself after the server went away.
pub struct Postgres {
    url: String,
    /// Set when the URL asks for `sslmode=require`.
    tls: Option<tls::PostgresTls>,
    client: Option<tokio_postgres::Client>,
}

/// A connection to `url` over `tls`, driven by its own task.
async fn open<T>(url: &str, tls: T) -> Result<tokio_postgres::Client, SinkError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let connect = tokio_postgres::connect(url, tls);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(10), connect)
        .await
        .map_err(|_| SinkError::Failed("postgres: connect timed out".into()))?
        .map_err(pg_error)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "postgres connection lost");
        }
    });
    Ok(client)
}

fn pg_error(e: tokio_postgres::Error) -> SinkError {
    match e.as_db_error() {
        Some(db) => SinkError::Failed(format!("postgres: {}: {}", db.code().code(), db.message())),
        None => SinkError::Failed(format!("postgres: {e}")),
    }
}

impl Postgres {
    /// A sink for `url`, not yet connected. `sslmode=require` in the URL:
    /// TLS, the server's certificate checked against the system's CAs (or
    /// `SSL_CERT_FILE`) and the URL's host. Otherwise plain TCP, as
    /// `disable` and `prefer` allow: a server's self-signed certificate
    /// (Debian's default) is never half-trusted.
    pub fn new(url: &str) -> Result<Postgres, String> {
        let config: tokio_postgres::Config =
            url.parse().map_err(|e| format!("--postgres-url: {e}"))?;
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => Some(tls::PostgresTls::new(
                tls::client_config("--postgres-url sslmode=require")?,
            )),
            _ => None,
        };
        Ok(Postgres {
            url: url.to_string(),
            tls,
            client: None,
        })
    }

    /// Connects and creates the schema if absent.
    pub async fn connect(&mut self) -> Result<(), SinkError> {
        self.client().await.map(|_| ())
    }

    async fn client(&mut self) -> Result<&mut tokio_postgres::Client, SinkError> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            let client = match &self.tls {
                Some(tls) => open(&self.url, tls.clone()).await?,
                None => open(&self.url, NoTls).await?,
            };
            client.batch_execute(SCHEMA).await.map_err(pg_error)?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected above"))
    }

    async fn deliver(
        &mut self,
        events: &[OrderEvent],
        cursor: Option<(&str, &str)>,
    ) -> Result<(), SinkError> {
        let client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        for (kind, statement) in [
            (OrderEventKind::Placed, INSERT_PLACED),
            (OrderEventKind::Cancelled, APPLY_CANCELLED),
        ] {
            let part: Vec<&OrderEvent> = events.iter().filter(|e| e.kind == kind).collect();
            if part.is_empty() {
                continue;
            }
            let col =
                |f: fn(&OrderEvent) -> &str| -> Vec<&str> { part.iter().map(|e| f(e)).collect() };
            let ids = col(|e| &e.order_id);
            let sales = col(|e| &e.sale_id);
            let users = col(|e| &e.user_id);
            let requests = col(|e| &e.request_id);
            let quantities: Vec<i32> = part
                .iter()
                .map(|e| i32::try_from(e.quantity).unwrap_or(i32::MAX))
                .collect();
            let at: Vec<i64> = part.iter().map(|e| e.at_ms as i64).collect();
            tx.execute(
                statement,
                &[&ids, &sales, &users, &quantities, &requests, &at],
            )
            .await
            .map_err(pg_error)?;
        }
        if let Some((feed, next)) = cursor {
            tx.execute(SAVE_CURSOR, &[&feed, &next])
                .await
                .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)
    }

    async fn cursor(&mut self, feed: &str) -> Result<Option<String>, SinkError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT cursor FROM seckill_relay_cursors WHERE feed = $1",
                &[&feed],
            )
            .await
            .map_err(pg_error)?;
        Ok(row.map(|r| r.get(0)))
    }
}

// === impl Webhook ===

/// The webhook sink: a batch per request, `{"events":[...]}`, signed;
/// retried with exponential backoff and jitter up to `max_attempts`.
pub struct Webhook {
    url: hyper::Uri,
    secret: Vec<u8>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    pub max_attempts: u32,
    pub retry_min: Duration,
    pub retry_max: Duration,
    pub timeout: Duration,
}

/// Unix seconds now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Webhook {
    pub fn new(url: &str, secret: Vec<u8>) -> Result<Webhook, String> {
        let url: hyper::Uri = url.parse().map_err(|e| format!("--webhook-url: {e}"))?;
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.enforce_http(false);
        // The system's CAs are read only when a connection will use them.
        let tls = if url.scheme_str() == Some("https") {
            tls::client_config("--webhook-url https://")?
        } else {
            tls::no_tls_config()?
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Webhook {
            url,
            secret,
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            max_attempts: 8,
            retry_min: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        })
    }

    /// The body of a batch.
    pub fn body(events: &[OrderEvent]) -> Bytes {
        let events: Vec<_> = events.iter().map(crate::event_json).collect();
        serde_json::to_vec(&serde_json::json!({ "events": events }))
            .expect("events serialize")
            .into()
    }

    /// One signed POST of `body`; any 2xx is a delivery.
    pub async fn post(&self, body: Bytes) -> Result<(), String> {
        let req = hyper::Request::post(self.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "seckill-order-relay")
            .header(
                signature::HEADER,
                signature::sign(&self.secret, unix_now(), &body),
            )
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            // Read the answer whole, so the connection can be used again.
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err("timed out".into()))
    }

    async fn deliver(
        &mut self,
        events: &[OrderEvent],
        shutdown: &CancellationToken,
    ) -> Result<(), SinkError> {
        let body = Self::body(events);
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(self.retry_min)
            .with_max_delay(self.retry_max)
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let error = match self.post(body.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            metrics::relayed("webhook", "error", events.len());
            if attempts >= self.max_attempts {
                return Err(SinkError::Exhausted {
                    body,
                    attempts,
                    error,
                });
            }
            let pause = pauses.next().unwrap_or(self.retry_max);
            tracing::debug!(attempts, error = %error, ?pause, "webhook attempt failed; retrying");
            tokio::select! {
                _ = shutdown.cancelled() => return Err(SinkError::Stopped),
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }
}

// === impl Stdout ===

/// JSON lines on stdout; with the order feed, the cursor in a file
/// written after the lines are flushed (replaced atomically).
pub struct Stdout {
    pub cursor_file: Option<std::path::PathBuf>,
}

impl Stdout {
    fn deliver(
        &mut self,
        events: &[OrderEvent],
        cursor: Option<(&str, &str)>,
    ) -> Result<(), SinkError> {
        let mut out = std::io::stdout().lock();
        let mut text = Vec::with_capacity(events.len() * 256);
        for e in events {
            serde_json::to_writer(&mut text, &crate::event_json(e)).expect("events serialize");
            text.push(b'\n');
        }
        out.write_all(&text)
            .and_then(|()| out.flush())
            .map_err(|e| SinkError::Failed(format!("stdout: {e}")))?;
        if let (Some(path), Some((_, next))) = (&self.cursor_file, cursor) {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, next)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| SinkError::Failed(format!("cursor file {}: {e}", path.display())))?;
        }
        Ok(())
    }

    fn cursor(&self) -> Result<Option<String>, SinkError> {
        match &self.cursor_file {
            None => Ok(None),
            Some(path) => match std::fs::read_to_string(path) {
                Ok(s) => Ok(Some(s.trim().to_string()).filter(|s| !s.is_empty())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(SinkError::Failed(format!(
                    "cursor file {}: {e}",
                    path.display()
                ))),
            },
        }
    }
}
