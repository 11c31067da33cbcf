//! The HTTP/1.1 server loop shared by every listener of the project, the
//! response helpers, and the operational endpoints (`/metrics`,
//! `/healthz`, `/readyz`).
//!
//! A connection permit is taken before each accept, so the connection count
//! is bounded and excess clients wait in the kernel's backlog instead of
//! costing memory here. Every connection has a header read timeout and a
//! bounded read buffer. On shutdown the loop stops accepting and lets each
//! connection finish the requests it is serving.
//!
//! Open connections are also counted per client address (the TCP peer,
//! IPv6 by /64): a connection beyond `max_connections_per_ip` hands its
//! permit straight back, so one address holding idle connections cannot
//! take every slot. It is answered as HTTP (its first request gets a 429
//! `address_limit` and the connection is closed) from a small pool of
//! refusal slots with a short deadline; when that pool is busy it is
//! closed at once.
//!
//! Each request carries its connection's addresses ([`ConnAddrs`], read
//! with [`peer_addr`] and [`local_addr`]) in its extensions, so a handler
//! that limits by client address needs no other signature than
//! `Fn(Request) -> Response`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// The addresses of the connection a request came on, in the request's
/// extensions: one entry, since each costs an allocation per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnAddrs {
    /// The TCP peer (a proxy's address when there is one in front).
    pub peer: SocketAddr,
    /// The local address: tells the listeners of one process apart (tests
    /// run several servers in one).
    pub local: Option<SocketAddr>,
}

/// The TCP peer of the connection `req` came on.
pub fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    req.extensions().get::<ConnAddrs>().map(|a| a.peer)
}

/// The local address of the connection `req` came on.
pub fn local_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    req.extensions().get::<ConnAddrs>().and_then(|a| a.local)
}

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections per client address (see [`address_key`]) at most;
    /// 0 = no per-address cap.
    pub max_connections_per_ip: usize,
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// Bound on the buffered request head (and pipelined bytes), in bytes.
    pub max_buf_size: usize,
    /// How long shutdown waits for open connections before closing them.
    pub drain_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 10_000,
            max_connections_per_ip: 256,
            header_read_timeout: Duration::from_secs(5),
            max_buf_size: 16 * 1024,
            drain_grace: Duration::from_secs(10),
        }
    }
}

/// The unit per-address limits count: an IPv4 address, or the /64 of an
/// IPv6 one (a single host is commonly handed a whole /64, so counting
/// /128s would let it take 2^64 shares). IPv4-mapped IPv6 is IPv4.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// Open connections per client address. An entry exists only while its
/// address has a connection open, so the map never holds more entries
/// than the listener has connections.
#[derive(Default)]
struct OpenPerAddress(Mutex<HashMap<IpAddr, usize>>);

impl OpenPerAddress {
    /// Counts a new connection from `ip`; `None` when the address already
    /// holds `cap` (0 = no cap).
    fn open(self: &Arc<Self>, ip: IpAddr, cap: usize) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut open = self.0.lock().unwrap();
        let n = open.entry(key).or_insert(0);
        if cap > 0 && *n >= cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }
}

/// One open connection of an address; dropping it uncounts it.
struct AddressSlot {
    table: Arc<OpenPerAddress>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.0.lock().unwrap();
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What a connection over its address's cap is told before it is closed.
const TOO_MANY_CONNECTIONS: &str = "{\"status\":\"rate_limited\",\
\"error\":\"too many connections from this address\",\"reason\":\"address_limit\"}";

/// Connections over their address's cap answered at the same time at most;
/// beyond that they are closed without an answer.
const REFUSAL_SLOTS: usize = 64;

/// How long a refused connection has to send its request and take the 429.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(1);

/// Reads one request from a connection over its address's cap and answers
/// it 429 `address_limit` with `connection: close`, within
/// [`REFUSAL_DEADLINE`]. A client sees an answer to the request it sent,
/// not bytes before its request (which HTTP clients report as a broken
/// connection).
async fn refuse(stream: tokio::net::TcpStream, limits: ServerLimits) {
    let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
        let mut resp = json(StatusCode::TOO_MANY_REQUESTS, TOO_MANY_CONNECTIONS);
        let headers = resp.headers_mut();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        Ok::<_, Infallible>(resp)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(false)
        .header_read_timeout(limits.header_read_timeout.min(REFUSAL_DEADLINE))
        .max_buf_size(limits.max_buf_size)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(REFUSAL_DEADLINE, conn).await;
}

/// Serves HTTP/1.1 on `listener` with `handler` until `shutdown` fires,
/// then drains: no new connections, in-flight requests completed, idle
/// keep-alive connections closed, all within `limits.drain_grace`.
pub async fn serve<H, F>(
    listener: TcpListener,
    handler: H,
    limits: ServerLimits,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_address = Arc::new(OpenPerAddress::default());
    let refusals = Arc::new(Semaphore::new(REFUSAL_SLOTS));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = per_address.open(peer.ip(), limits.max_connections_per_ip) else {
            drop(permit);
            tracing::debug!(%peer, "connection over the per-address cap refused");
            if let Ok(refusal) = refusals.clone().try_acquire_owned() {
                connections.spawn(async move {
                    let _held = refusal;
                    refuse(stream, limits).await;
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _held = (permit, slot);
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ConnAddrs { peer, local });
                let f = handler(req);
                async move { Ok::<_, Infallible>(f.await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_buf_size)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
        // Reap finished connection tasks so the set stays small.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let drained = tokio::time::timeout(limits.drain_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open after the drain grace; closing them"
        );
        connections.shutdown().await;
    }
}

/// A JSON response with the given status and body.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `/metrics` in the Prometheus text format.
pub fn metrics_response() -> HttpResponse {
    let mut resp = text(StatusCode::OK, crate::metrics::render());
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// `/healthz`: the process runs.
pub fn healthz() -> HttpResponse {
    json(StatusCode::OK, &br#"{"status":"ok"}"#[..])
}

/// `/readyz`: 200 when `ready` holds, 503 with the reason otherwise.
pub fn readyz(ready: Result<(), String>) -> HttpResponse {
    match ready {
        Ok(()) => json(StatusCode::OK, &br#"{"status":"ready"}"#[..]),
        Err(reason) => {
            let body = serde_json::json!({"status": "unavailable", "error": reason});
            json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn handlers_see_the_peer_and_local_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            |req: Request<Incoming>| async move {
                let peer = peer_addr(&req);
                let local = local_addr(&req);
                text(StatusCode::OK, format!("{peer:?} {local:?}"))
            },
            ServerLimits::default(),
            shutdown.clone(),
        ));
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let me = conn.local_addr().unwrap();
        conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.ends_with(&format!("Some({me}) Some({addr})")),
            "{answer}"
        );
        shutdown.cancel();
        server.await.unwrap();
    }

    #[test]
    fn the_refusal_body_is_the_contract_json() {
        let v: serde_json::Value = serde_json::from_str(TOO_MANY_CONNECTIONS).unwrap();
        assert_eq!(v["status"], "rate_limited");
        assert_eq!(v["reason"], "address_limit");
    }

    #[test]
    fn addresses_are_counted_by_v4_address_and_v6_64() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("192.0.2.1"), key("::ffff:192.0.2.1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }

    #[test]
    fn an_address_holds_its_cap_and_no_more_and_its_entry_goes_with_it() {
        let table = Arc::new(OpenPerAddress::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| table.open(a, 3).unwrap()).collect();
        assert!(table.open(a, 3).is_none());
        let other = table.open(b, 3).unwrap();
        drop(held);
        assert!(table.open(a, 0).is_some(), "0 = no cap");
        drop(other);
        assert!(table.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_connection_over_the_per_address_cap_is_answered_429_and_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let limits = ServerLimits {
            max_connections: 4,
            max_connections_per_ip: 2,
            ..ServerLimits::default()
        };
        let server = tokio::spawn(serve(
            listener,
            |_req: Request<Incoming>| async move { text(StatusCode::OK, "ok") },
            limits,
            shutdown.clone(),
        ));
        let idle = [
            tokio::net::TcpStream::connect(addr).await.unwrap(),
            tokio::net::TcpStream::connect(addr).await.unwrap(),
        ];
        // A client that asks gets an answer to its request, then the close.
        let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
        over.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), over.read_to_end(&mut answer));
        assert!(read.await.is_ok(), "closed, not left waiting");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        assert!(answer.contains("\"reason\":\"address_limit\""), "{answer}");
        // One that says nothing is closed after the short deadline, with
        // nothing sent before a request.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), silent.read_to_end(&mut answer));
        assert!(read.await.is_ok(), "closed, not left waiting");
        assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
        drop(idle);
        shutdown.cancel();
        server.await.unwrap();
    }
}
