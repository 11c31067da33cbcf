//! The gateway's side of the callback: the `seckill.v1.Callback` gRPC
//! server, and the same delivery in-process for the embedded service.

use std::sync::Arc;

use async_trait::async_trait;
use seckill_proto::pb;
use seckill_proto::pb::callback_server::{Callback as CallbackRpc, CallbackServer};
use seckill_service::{Callback, CallbackError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::Shared;

/// Delivers a batch of results to the waiting requests; counts the ones
/// nobody waits for.
fn deliver(shared: &Shared, results: Vec<pb::RequestResult>) -> pb::CompleteReply {
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
        Ok(Response::new(deliver(
            &self.0,
            request.into_inner().results,
        )))
    }
}

/// Serves the callback on `listener` until `shutdown` fires.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, shutdown: CancellationToken) {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let result = tonic::transport::Server::builder()
        .timeout(std::time::Duration::from_secs(10))
        .serve_with_incoming_shutdown(
            CallbackServer::new(CallbackService(shared)),
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
        results: Vec<pb::RequestResult>,
    ) -> Result<(), CallbackError> {
        deliver(&self.0, results);
        Ok(())
    }
}
