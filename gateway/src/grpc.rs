//! The gateway's side of the callback: the `seckill.v1.Callback` gRPC
//! server, which decodes the wire results, and the same delivery
//! in-process for the embedded service, which has nothing to decode.
//!
//! A result over gRPC is taken only with the shared callback token in its
//! `authorization` metadata: anyone else who reaches the port could answer
//! a waiting buyer with a forged order. The check runs before the message
//! is decoded, and a refused call changes nothing.

use std::sync::Arc;

use async_trait::async_trait;
use seckill_inventory::{Completion, Outcome};
use seckill_proto::pb;
use seckill_proto::pb::callback_server::{Callback as CallbackRpc, CallbackServer};
use seckill_service::callback::CallbackToken;
use seckill_service::{Callback, CallbackError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Interceptor;
use tonic::{Request, Response, Status};

use crate::Shared;

/// Delivers a batch of results to the waiting requests; counts the ones
/// nobody waits for.
fn deliver(shared: &Shared, results: impl IntoIterator<Item = Completion>) -> pb::CompleteReply {
    let mut reply = pb::CompleteReply::default();
    for r in results {
        if shared.waiters.complete(r) {
            reply.delivered += 1;
        } else {
            reply.unknown += 1;
        }
    }
    if reply.unknown > 0 {
        shared
            .metrics
            .callback_unknown
            .increment(u64::from(reply.unknown));
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
            self.0
                .metrics
                .callback_unknown
                .increment(u64::from(undecodable));
        }
        Ok(Response::new(reply))
    }
}

/// Lets through the calls that carry the callback token; refuses all when
/// the gateway has none (embedded mode, where results come in-process).
#[derive(Clone)]
struct Authenticate {
    token: Option<CallbackToken>,
    /// `seckill_callback_total{result="unauthenticated"}`.
    refused: metrics::Counter,
}

impl Interceptor for Authenticate {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request.metadata().get("authorization");
        match (&self.token, presented) {
            (Some(token), Some(value)) if token.accepts(value.as_bytes()) => Ok(request),
            _ => {
                self.refused.increment(1);
                Err(Status::unauthenticated(
                    "a valid callback token is required",
                ))
            }
        }
    }
}

/// Serves the callback on `listener` until `shutdown` fires.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, shutdown: CancellationToken) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let authenticate = Authenticate {
        token: shared.config.callback_token.clone(),
        // Resolved here, beside the only place that counts it.
        refused: metrics::counter!("seckill_callback_total", "result" => "unauthenticated"),
    };
    let result = tonic::transport::Server::builder()
        .timeout(std::time::Duration::from_secs(10))
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
