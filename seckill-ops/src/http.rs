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
//! Each request carries its connection's [`PeerAddr`] and [`LocalAddr`] in
//! its extensions, so a handler that limits by client address needs no
//! other signature than `Fn(Request) -> Response`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The response type of every handler.
pub type HttpResponse = Response<Full<Bytes>>;

/// The TCP peer of the connection a request came on (a proxy's address
/// when there is one in front), in the request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// The local address of the connection a request came on: tells the
/// listeners of one process apart (tests run several servers in one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LocalAddr(pub SocketAddr);

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Open connections at most.
    pub max_connections: usize,
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
            header_read_timeout: Duration::from_secs(5),
            max_buf_size: 16 * 1024,
            drain_grace: Duration::from_secs(10),
        }
    }
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
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok();
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                if let Some(local) = local {
                    req.extensions_mut().insert(LocalAddr(local));
                }
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
                let peer = req.extensions().get::<PeerAddr>().map(|p| p.0);
                let local = req.extensions().get::<LocalAddr>().map(|l| l.0);
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
}
