//! The gateway's side of the callback: the `seckill.v1.Callback` gRPC
//! server, which decodes the wire results, and the same delivery
//! in-process for the embedded service, which has nothing to decode.
//!
//! A result over gRPC is taken only with the shared callback token in its
//! `authorization` metadata: anyone else who reaches the port could answer
//! a waiting buyer with a forged order. The check runs before the message
//! is decoded, and a refused call changes nothing.
//!
//! With `--grpc-tls-cert`/`--grpc-tls-key` the listener speaks TLS only
//! (rustls), so the token and the results cannot be read or changed on the
//! way; a plaintext client's connection fails in the handshake.
//!
//! Limits, like the HTTP listeners': a connection is accepted only with a
//! permit of a semaphore of `max_connections` (taken before accept, so a
//! flood waits in the kernel's backlog instead of costing memory here), and
//! a peer silent for the idle timeout is closed. tonic 0.14 has no idle
//! timeout of its own (its `max_connection_age` closes busy connections
//! too), so the accepted socket is wrapped: a read that waits longer than
//! the timeout fails, which drops the connection and frees its permit.
//! HTTP/2 keepalive pings at a third of the timeout make a live peer answer
//! in time, so only dead, stalled or never-speaking peers are closed, and a
//! service's pooled channel survives quiet minutes. Each connection also
//! runs at most [`STREAMS_PER_CONNECTION`] calls at once, and every call is
//! bounded by [`CALL_TIMEOUT`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use seckill_inventory::{Completion, Outcome};
use seckill_ops::trace::{Kind, Span, SpanContext};
use seckill_proto::pb;
use seckill_proto::pb::callback_server::{Callback as CallbackRpc, CallbackServer};
use seckill_service::callback::CallbackToken;
use seckill_service::{Callback, CallbackError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tonic::service::Interceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status};

use crate::Shared;

/// Delivers a batch of results to the waiting requests; counts the ones
/// nobody waits for.
fn deliver(shared: &Shared, results: impl IntoIterator<Item = Completion>) -> pb::CompleteReply {
    let mut reply = pb::CompleteReply::default();
    for r in results {
        let span = r.trace.as_deref().and_then(|t| {
            let parent = SpanContext::parse(t)?;
            let mut span = Span::start("callback", Kind::Server, Some(parent))?;
            span.set("seckill.request_id", r.request_id.as_str());
            span.set("seckill.outcome", r.outcome.status());
            Some(span)
        });
        let delivered = shared.waiters.complete(r);
        if let Some(mut span) = span {
            span.set("seckill.delivered", delivered);
            span.end();
        }
        if delivered {
            reply.delivered += 1;
        } else {
            reply.unknown += 1;
        }
    }
    let m = &shared.metrics;
    if reply.delivered > 0 {
        m.callback_delivered.increment(u64::from(reply.delivered));
    }
    if reply.unknown > 0 {
        let n = u64::from(reply.unknown);
        m.callback_unknown.iter().for_each(|c| c.increment(n));
    }
    reply
}

/// The gRPC server of `seckill.v1.Callback`.
struct CallbackService(Arc<Shared>);

#[tonic::async_trait]
impl CallbackRpc for CallbackService {
    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteReply>, Status> {
        // A result with an outcome this build does not know answers nobody
        // (its request times out and stays readable); it counts as unknown.
        let wire = request.into_inner().results;
        let sent = wire.len();
        let results: Vec<Completion> = wire.into_iter().filter_map(completion).collect();
        let undecodable = (sent - results.len()) as u32;
        let mut reply = deliver(&self.0, results);
        if undecodable > 0 {
            reply.unknown += undecodable;
            let unknown = &self.0.metrics.callback_unknown;
            unknown
                .iter()
                .for_each(|c| c.increment(u64::from(undecodable)));
        }
        Ok(Response::new(reply))
    }
}

/// Lets through the calls that carry the callback token; refuses all when
/// the gateway has none (embedded mode, where results come in-process).
#[derive(Clone)]
struct Authenticate {
    token: Option<CallbackToken>,
    /// `seckill_callbacks_received_total{result="unauthenticated"}` and its
    /// deprecated alias.
    refused: [metrics::Counter; 2],
}

impl Interceptor for Authenticate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request.metadata().get("authorization");
        match (&self.token, presented) {
            (Some(token), Some(value)) if token.accepts(value.as_bytes()) => Ok(request),
            _ => {
                self.refused.iter().for_each(|c| c.increment(1));
                Err(Status::unauthenticated(
                    "a valid callback token is required",
                ))
            }
        }
    }
}

/// Bound of every callback call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls one connection runs at once; a service sends one batch per
/// worker, so more would only queue inside one peer.
const STREAMS_PER_CONNECTION: usize = 256;

/// Serves the callback on `listener` until `shutdown` fires.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, shutdown: CancellationToken) {
    let config = &shared.config;
    let idle = config.grpc_idle_timeout;
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let incoming = limited(listener, permits, idle);
    let authenticate = Authenticate {
        token: config.callback_token.clone(),
        // Resolved here, beside the only place that counts it.
        refused: crate::metrics::received("unauthenticated"),
    };
    let mut server = tonic::transport::Server::builder()
        .timeout(CALL_TIMEOUT)
        .concurrency_limit_per_connection(STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(idle / 3))
        .http2_keepalive_timeout(Some(idle / 3));
    if let Some(tls) = &config.grpc_tls {
        // Checked while the configuration was built.
        server = match server.tls_config(tls.server_config().timeout(idle)) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "gRPC callback TLS configuration refused");
                return;
            }
        };
    }
    let result = server
        .serve_with_incoming_shutdown(
            CallbackServer::with_interceptor(CallbackService(shared), authenticate),
            incoming,
            shutdown.cancelled_owned(),
        )
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC callback server failed");
    }
}

// === impl Limited ===

/// The accepted connections: each only with a permit from `permits`, each
/// closed after `idle` without a byte from its peer.
fn limited(
    listener: TcpListener,
    permits: Arc<Semaphore>,
    idle: Duration,
) -> impl futures_util::Stream<Item = std::io::Result<Limited>> {
    futures_util::stream::unfold(listener, move |listener| {
        let permits = permits.clone();
        async move {
            let permit = permits.acquire_owned().await.expect("never closed");
            loop {
                match listener.accept().await {
                    Ok((io, _)) => {
                        let _ = io.set_nodelay(true);
                        let conn = Limited {
                            io,
                            idle,
                            silent_until: Box::pin(tokio::time::sleep(idle)),
                            _permit: permit,
                        };
                        return Some((Ok(conn), listener));
                    }
                    // Out of descriptors and the like: passes; do not spin.
                    Err(e) => {
                        tracing::warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    })
}

/// One accepted connection, holding its permit and its idle timer.
struct Limited {
    io: TcpStream,
    idle: Duration,
    /// Fires when the peer has sent nothing for `idle`.
    silent_until: Pin<Box<Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Limited {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + this.idle;
                    this.silent_until.as_mut().reset(next);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match this.silent_until.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "gRPC peer idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

/// The in-process callback of the embedded mode: same delivery, no network.
pub(crate) struct LocalCallback(pub Arc<Shared>);

#[async_trait]
impl Callback for LocalCallback {
    async fn complete(
        &self,
        _reply_to: &str,
        results: Vec<Completion>,
    ) -> Result<(), CallbackError> {
        deliver(&self.0, results);
        Ok(())
    }
}

/// The result a wire result carries; `None` for an unknown outcome code.
fn completion(r: pb::RequestResult) -> Option<Completion> {
    let outcome = match pb::Outcome::try_from(r.outcome).ok()? {
        pb::Outcome::Success => Outcome::Success {
            order_id: r.order_id,
        },
        pb::Outcome::SoldOut => Outcome::SoldOut,
        pb::Outcome::LimitExceeded => Outcome::LimitExceeded,
        pb::Outcome::Rejected => Outcome::Rejected { reason: r.reason },
        pb::Outcome::Expired => Outcome::Expired,
        pb::Outcome::Unspecified => return None,
    };
    Some(Completion {
        request_id: r.request_id,
        sale_id: r.sale_id,
        user_id: r.user_id,
        quantity: r.quantity,
        outcome,
        trace: (!r.traceparent.is_empty()).then_some(r.traceparent),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(outcome: pb::Outcome) -> pb::RequestResult {
        pb::RequestResult {
            request_id: "s.1".into(),
            sale_id: "s".into(),
            user_id: "u".into(),
            outcome: outcome as i32,
            order_id: "o-1".into(),
            quantity: 2,
            reason: "blacklisted".into(),
            traceparent: String::new(),
        }
    }

    #[test]
    fn wire_results_decode_to_their_outcomes() {
        let cases = [
            (
                pb::Outcome::Success,
                Outcome::Success {
                    order_id: "o-1".into(),
                },
            ),
            (pb::Outcome::SoldOut, Outcome::SoldOut),
            (pb::Outcome::LimitExceeded, Outcome::LimitExceeded),
            (
                pb::Outcome::Rejected,
                Outcome::Rejected {
                    reason: "blacklisted".into(),
                },
            ),
            (pb::Outcome::Expired, Outcome::Expired),
        ];
        for (code, outcome) in cases {
            let c = completion(wire(code)).unwrap();
            assert_eq!((c.quantity, c.outcome), (2, outcome));
        }
        assert_eq!(completion(wire(pb::Outcome::Unspecified)), None);
        let mut unknown = wire(pb::Outcome::SoldOut);
        unknown.outcome = 99;
        assert_eq!(completion(unknown), None);
    }
}
