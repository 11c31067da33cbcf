//! How results reach the gateway that holds the buyer's connection.
//!
//! [`GrpcCallback`] is the real path: `seckill.v1.Callback/Complete` on the
//! gateway named in each ticket's `reply_to`, over one pooled HTTP/2
//! channel per gateway, with a deadline on every call. In the embedded mode
//! the gateway may hand results over in-process through the same trait.

use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use seckill_inventory::{Completion, Outcome};
use seckill_proto::pb;
use seckill_proto::pb::callback_client::CallbackClient;
use tonic::transport::{Channel, Endpoint};

/// Errors delivering results.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("bad callback address {0}")]
    Address(String),
    #[error("callback to {addr} failed: {status}")]
    Rpc { addr: String, status: tonic::Status },
}

/// Delivers a batch of results to the gateway at `reply_to`.
#[async_trait]
pub trait Callback: Send + Sync + 'static {
    async fn complete(&self, reply_to: &str, results: Vec<Completion>)
        -> Result<(), CallbackError>;
}

/// The gRPC client of `seckill.v1.Callback`, one channel per gateway.
pub struct GrpcCallback {
    channels: DashMap<String, CallbackClient<Channel>>,
    timeout: Duration,
}

impl GrpcCallback {
    /// `timeout` bounds every call, connection set-up included.
    pub fn new(timeout: Duration) -> Self {
        GrpcCallback {
            channels: DashMap::new(),
            timeout,
        }
    }

    fn client(&self, addr: &str) -> Result<CallbackClient<Channel>, CallbackError> {
        if let Some(c) = self.channels.get(addr) {
            return Ok(c.clone());
        }
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|_| CallbackError::Address(addr.to_string()))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .tcp_nodelay(true);
        // Lazy: the channel connects on first use and reconnects by itself
        // after the gateway comes back.
        let client = CallbackClient::new(endpoint.connect_lazy());
        self.channels.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

#[async_trait]
impl Callback for GrpcCallback {
    async fn complete(
        &self,
        reply_to: &str,
        results: Vec<Completion>,
    ) -> Result<(), CallbackError> {
        let mut client = self.client(reply_to)?;
        let results = results.iter().map(wire).collect();
        client
            .complete(pb::CompleteRequest { results })
            .await
            .map(|_| ())
            .map_err(|status| CallbackError::Rpc {
                addr: reply_to.to_string(),
                status,
            })
    }
}

/// The wire form of a result.
fn wire(c: &Completion) -> pb::RequestResult {
    let (code, order_id, reason) = match &c.outcome {
        Outcome::Success { order_id } => (pb::Outcome::Success, order_id.clone(), String::new()),
        Outcome::SoldOut => (pb::Outcome::SoldOut, String::new(), String::new()),
        Outcome::LimitExceeded => (pb::Outcome::LimitExceeded, String::new(), String::new()),
        Outcome::Rejected { reason } => (pb::Outcome::Rejected, String::new(), reason.clone()),
        Outcome::Expired => (pb::Outcome::Expired, String::new(), String::new()),
    };
    pb::RequestResult {
        request_id: c.request_id.clone(),
        sale_id: c.sale_id.clone(),
        user_id: c.user_id.clone(),
        outcome: code as i32,
        order_id,
        quantity: c.quantity,
        reason,
    }
}
