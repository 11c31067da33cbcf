//! How results reach the gateway that holds the buyer's connection.
//!
//! [`GrpcCallback`] is the real path: `seckill.v1.Callback/Complete` on the
//! gateway named in each ticket's `reply_to`, over one pooled HTTP/2
//! channel per gateway, with a deadline on every call, authenticated by the
//! [`CallbackToken`] that gateways and services share. In the embedded mode
//! the gateway may hand results over in-process through the same trait.
//!
//! With a CA ([`GrpcCallback::with_tls_ca`], `--grpc-tls-ca`) every call
//! goes over TLS (`https://`) and the gateway's certificate must chain to
//! that CA and name the host of the address the gateway advertises (a DNS
//! name, or an IP address SAN for an address like `10.0.0.5:50051`);
//! without one, calls go in plaintext, so a TLS gateway refuses them.

use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use seckill_inventory::{Completion, Outcome};
use seckill_ops::process::ConfigError;
use seckill_proto::pb;
use seckill_proto::pb::callback_client::CallbackClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// The secret that gateways and seckill services share so a gateway takes
/// results from services only: sent as `authorization: Bearer <token>` on
/// every callback. Its `Debug` form hides the value, so no log line or
/// panic message can show it.
#[derive(Clone, PartialEq, Eq)]
pub struct CallbackToken(String);

impl CallbackToken {
    /// Fewest characters a callback token has.
    pub const MIN_LEN: usize = 16;

    /// Accepts a token of at least [`Self::MIN_LEN`] printable ASCII
    /// characters without spaces (what a metadata value can carry as is).
    pub fn new(token: impl Into<String>) -> Result<Self, ConfigError> {
        let token = token.into();
        if token.len() < Self::MIN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError(format!(
                "the callback token must be at least {} printable characters, without spaces",
                Self::MIN_LEN
            )));
        }
        Ok(CallbackToken(token))
    }

    /// The `authorization` value that carries this token.
    pub fn bearer(&self) -> AsciiMetadataValue {
        let mut v = AsciiMetadataValue::try_from(format!("Bearer {}", self.0))
            .expect("a checked token is a valid metadata value");
        v.set_sensitive(true);
        v
    }

    /// Whether an `authorization` value carries this token. Compares in
    /// time independent of where the values differ, so response times do
    /// not reveal the token byte by byte; only its length shows.
    pub fn accepts(&self, authorization: &[u8]) -> bool {
        let Some(presented) = authorization.strip_prefix(b"Bearer ") else {
            return false;
        };
        let expected = self.0.as_bytes();
        presented.len() == expected.len()
            && presented
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Where a gateway or service finds the callback token: the environment,
/// or a file that holds it, so it need not sit on a command line (visible
/// to every local user). `Debug` hides the value.
#[derive(clap::Args, Clone, Default)]
pub struct CallbackTokenArgs {
    /// File holding the callback token shared by gateways and seckill
    /// services (or the token itself in SECKILL_CALLBACK_TOKEN); required in
    /// distributed mode.
    #[arg(long, env = "SECKILL_CALLBACK_TOKEN_FILE")]
    pub callback_token_file: Option<std::path::PathBuf>,
    /// The callback token itself (prefer the environment or the file to
    /// the command line).
    #[arg(
        long,
        env = "SECKILL_CALLBACK_TOKEN",
        hide_env_values = true,
        conflicts_with = "callback_token_file"
    )]
    pub callback_token: Option<String>,
}

impl CallbackTokenArgs {
    /// The configured token, checked; `None` when neither source is set.
    pub fn token(&self) -> Result<Option<CallbackToken>, ConfigError> {
        let token = match (&self.callback_token, &self.callback_token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(path)) => read_secret_file("--callback-token-file", path)?,
            (None, None) => return Ok(None),
        };
        CallbackToken::new(token).map(Some)
    }

    /// The configured token; its absence is a configuration error.
    pub fn required(&self) -> Result<CallbackToken, ConfigError> {
        self.token()?.ok_or_else(|| {
            ConfigError(
                "the distributed mode needs the callback token: set SECKILL_CALLBACK_TOKEN or \
                 --callback-token-file (the same on every gateway and seckill service)"
                    .into(),
            )
        })
    }
}

impl std::fmt::Debug for CallbackTokenArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackTokenArgs")
            .field("callback_token_file", &self.callback_token_file)
            .field(
                "callback_token",
                &self.callback_token.as_ref().map(|_| ".."),
            )
            .finish()
    }
}

/// Reads a secret from the file `path` named by option `flag`, once: the
/// whole file less a trailing line break.
pub fn read_secret_file(flag: &str, path: &std::path::Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{flag}: cannot read {}: {e}", path.display())))?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    Ok(secret.strip_suffix('\r').unwrap_or(secret).to_string())
}

impl std::fmt::Debug for CallbackToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallbackToken(..)")
    }
}

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
    /// `authorization` of every call.
    bearer: AsciiMetadataValue,
    /// The CA a gateway's certificate must chain to; `None` = plaintext.
    tls_ca: Option<Certificate>,
}

impl GrpcCallback {
    /// `timeout` bounds every call, connection set-up included; `token`
    /// authenticates it to the gateway.
    pub fn new(timeout: Duration, token: &CallbackToken) -> Self {
        GrpcCallback {
            channels: DashMap::new(),
            timeout,
            bearer: token.bearer(),
            tls_ca: None,
        }
    }

    /// Calls every gateway over TLS, trusting the CA certificates in
    /// `ca_pem` (PEM) only; refuses a file without a certificate.
    pub fn with_tls_ca(mut self, ca_pem: &[u8]) -> Result<Self, ConfigError> {
        let ca = Certificate::from_pem(ca_pem);
        // Builds a connector once, so a bad file fails the start.
        Endpoint::from_static("https://localhost")
            .tls_config(ClientTlsConfig::new().ca_certificate(ca.clone()))
            .map_err(|e| ConfigError(format!("the callback CA cannot be used: {e}")))?;
        self.tls_ca = Some(ca);
        Ok(self)
    }

    fn client(&self, addr: &str) -> Result<CallbackClient<Channel>, CallbackError> {
        if let Some(c) = self.channels.get(addr) {
            return Ok(c.clone());
        }
        let bad = || CallbackError::Address(addr.to_string());
        let uri = match (addr.split_once("://"), &self.tls_ca) {
            (None, None) => format!("http://{addr}"),
            (None, Some(_)) => format!("https://{addr}"),
            (Some(("http", _)), None) | (Some(("https", _)), Some(_)) => addr.to_string(),
            // With a CA, never send the token in plaintext.
            (Some(_), _) => return Err(bad()),
        };
        let mut endpoint = Endpoint::from_shared(uri)
            .map_err(|_| bad())?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .tcp_nodelay(true);
        if let Some(ca) = &self.tls_ca {
            let tls = ClientTlsConfig::new().ca_certificate(ca.clone());
            endpoint = endpoint.tls_config(tls).map_err(|_| bad())?;
        }
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
        let mut request = tonic::Request::new(pb::CompleteRequest { results });
        request
            .metadata_mut()
            .insert("authorization", self.bearer.clone());
        client
            .complete(request)
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
        traceparent: c.trace.clone().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_compared_whole() {
        assert!(CallbackToken::new("short-token").is_err());
        assert!(CallbackToken::new("sixteen chars ok").is_err());
        assert!(CallbackToken::new("sixteen-chars-ok\n").is_err());
        assert!(CallbackToken::new("sixteen-chars-\u{e9}k").is_err());
        let t = CallbackToken::new("sixteen-chars-ok").unwrap();
        assert!(t.accepts(b"Bearer sixteen-chars-ok"));
        assert!(!t.accepts(b"sixteen-chars-ok"));
        assert!(!t.accepts(b"Bearer sixteen-chars-o"));
        assert!(!t.accepts(b"Bearer sixteen-chars-ok!"));
        assert!(!t.accepts(b"Bearer sixteen-chars-oK"));
        assert!(t.accepts(t.bearer().as_bytes()));
        assert!(!format!("{t:?}").contains("sixteen"));
    }
}
