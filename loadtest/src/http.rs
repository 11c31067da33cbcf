//! The HTTP client side: one pooled hyper client for the load, and the few
//! plain calls around a run (read the sale, create it, poll a request; the
//! order feed is read in `feed`). Targets are http:// or https://; https
//! goes through rustls (ring), trusting the system's CAs (or
//! `SSL_CERT_FILE`/`SSL_CERT_DIR`) and those of `--ca-file`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;

/// The client every request of a run goes through (http:// or https://).
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The TLS side of the client: what https:// targets are checked against.
/// Cheap to clone.
#[derive(Clone)]
pub struct Tls(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// For http:// targets only: trusts nothing, and reads no CA store.
    pub fn none() -> Tls {
        Tls(Arc::new(
            config_builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        ))
    }

    /// Trusts the system's CAs (`SSL_CERT_FILE` and `SSL_CERT_DIR` replace
    /// them when set, as for other tools) and every certificate in
    /// `ca_file`, a PEM file of a private CA. Fails when there is no CA at
    /// all to check a server against.
    pub fn trusting(ca_file: Option<&Path>) -> anyhow::Result<Tls> {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
        if let Some(path) = ca_file {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("--ca-file {}: not a PEM file", path.display()))?;
            if certs.is_empty() {
                bail!("--ca-file {}: no certificate in it", path.display());
            }
            for cert in certs {
                roots.add(cert).with_context(|| {
                    format!("--ca-file {}: not a CA certificate", path.display())
                })?;
            }
        }
        if roots.is_empty() {
            bail!(
                "an https:// target needs CA certificates and none were found \
                 (install ca-certificates, set SSL_CERT_FILE, or give --ca-file){}",
                found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
        Ok(Tls(Arc::new(
            config_builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )))
    }

    /// What `urls` need: the CA store when one of them is https://, no TLS
    /// otherwise (so an http:// run reads no certificates, and a
    /// `--ca-file` is still checked).
    pub fn for_urls<'a>(
        urls: impl IntoIterator<Item = &'a str>,
        ca_file: Option<&Path>,
    ) -> anyhow::Result<Tls> {
        let https = urls.into_iter().any(|u| u.starts_with("https://"));
        if https || ca_file.is_some() {
            Tls::trusting(ca_file)
        } else {
            Ok(Tls::none())
        }
    }
}

/// rustls with ring, the one crypto provider of the build, and its safe
/// default protocol versions (TLS 1.2 and 1.3).
fn config_builder() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
}

/// How long an idle connection stays in the pool: shorter than the
/// servers' keep-alive timeouts (the gateway closes a connection that sends
/// no request for its header read timeout, 5 s by default), so a request is
/// never written to a connection the server is closing at that moment,
/// which would show as an answer missing although the server did nothing
/// wrong.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client keeping up to `connections` idle connections to each target,
/// speaking https:// through `tls`.
pub fn client(connections: usize, tls: &Tls) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(10)));
    connector.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config((*tls.0).clone())
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector)
}

/// Checks a base URL (`http://host:port` or `https://host:port`, no path)
/// and returns it without a trailing slash.
pub fn base_url(s: &str) -> anyhow::Result<String> {
    let trimmed = s.trim_end_matches('/');
    let uri: Uri = trimmed
        .parse()
        .with_context(|| format!("'{s}' is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        bail!("'{s}' must be an http:// or https:// URL with a host");
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        bail!("'{s}' must be a base URL without a path");
    }
    Ok(trimmed.to_string())
}

/// Sends one request and reads the whole answer, within `timeout`.
pub async fn call(
    client: &HttpClient,
    method: Method,
    url: &str,
    bearer: Option<&str>,
    body: Option<Bytes>,
    timeout: Duration,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut req = Request::builder().method(method).uri(url);
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    if let Some(token) = bearer {
        req = req.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req.body(Full::new(body.unwrap_or_default()))?;
    let answer = tokio::time::timeout(timeout, async {
        let resp = client.request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    })
    .await
    .with_context(|| format!("{url}: no answer within {timeout:?}"))?;
    answer.with_context(|| format!("{url}: request failed"))
}

/// The start of an answer's body, for an error message.
pub fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}

/// Where the admin API is and the bearer token it takes.
#[derive(Clone)]
pub struct AdminApi {
    /// Base URL of the gateway's admin API.
    pub url: String,
    pub token: String,
}

/// The token is a secret: never printed.
impl std::fmt::Debug for AdminApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminApi")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// `GET /api/v1/sales/{id}`, as the API describes it.
#[derive(Clone, Debug, Deserialize)]
pub struct SaleView {
    pub sale_id: String,
    pub stock: u64,
    pub remaining: u64,
    pub sold: u64,
    #[serde(default = "one")]
    pub per_user_limit: u32,
    #[serde(default)]
    pub state: String,
}

fn one() -> u32 {
    1
}

/// Reads a sale through the public API.
pub async fn get_sale(client: &HttpClient, base: &str, sale_id: &str) -> anyhow::Result<SaleView> {
    let url = format!("{base}/api/v1/sales/{sale_id}");
    let (status, body) = call(
        client,
        Method::GET,
        &url,
        None,
        None,
        Duration::from_secs(10),
    )
    .await?;
    if status != StatusCode::OK {
        bail!("GET {url}: HTTP {} {}", status.as_u16(), excerpt(&body));
    }
    serde_json::from_slice(&body).with_context(|| format!("GET {url}: not a sale"))
}

/// The body of `PUT /admin/v1/sales/{id}`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SaleSetup {
    pub stock: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_user_limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_rate: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_capacity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_capacity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admission: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_capacity: Option<u32>,
}

/// Creates (or replaces) a sale through the admin API.
pub async fn put_sale(
    client: &HttpClient,
    admin: &str,
    token: &str,
    sale_id: &str,
    setup: &SaleSetup,
) -> anyhow::Result<()> {
    let url = format!("{admin}/admin/v1/sales/{sale_id}");
    let body = Bytes::from(serde_json::to_vec(setup)?);
    let (status, resp) = call(
        client,
        Method::PUT,
        &url,
        Some(token),
        Some(body),
        Duration::from_secs(10),
    )
    .await?;
    if status == StatusCode::CONFLICT {
        bail!(
            "PUT {url}: HTTP 409 {}: a sale that has sold (or was removed) keeps its id; \
             run with another --sale, or with --fresh-sale for a new id per run",
            excerpt(&resp)
        );
    }
    if !status.is_success() {
        bail!("PUT {url}: HTTP {} {}", status.as_u16(), excerpt(&resp));
    }
    Ok(())
}

/// `GET /api/v1/requests/{id}`: the final status of a request, if known.
#[derive(Clone, Debug, Deserialize)]
pub struct RequestView {
    pub status: String,
    #[serde(default)]
    pub order_id: Option<String>,
}

pub async fn get_request(
    client: &HttpClient,
    base: &str,
    request_id: &str,
) -> anyhow::Result<Option<RequestView>> {
    let url = format!("{base}/api/v1/requests/{request_id}");
    let (status, body) = call(
        client,
        Method::GET,
        &url,
        None,
        None,
        Duration::from_secs(10),
    )
    .await?;
    match status {
        StatusCode::OK => Ok(Some(serde_json::from_slice(&body)?)),
        StatusCode::NOT_FOUND => Ok(None),
        s => bail!("GET {url}: HTTP {}", s.as_u16()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_checked() {
        assert_eq!(
            base_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(base_url("https://x:8443").unwrap(), "https://x:8443");
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("http://x/api").is_err());
        assert!(base_url("nonsense url").is_err());
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let e = Tls::trusting(Some(&empty)).unwrap_err().to_string();
        assert!(e.contains("no certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = Tls::trusting(Some(&missing)).unwrap_err().to_string();
        assert!(e.contains("not a PEM file"), "{e}");
        // Plain http:// needs no CA store.
        assert!(Tls::for_urls(["http://127.0.0.1:1"], None).is_ok());
    }

    #[test]
    fn the_admin_token_is_not_printed() {
        let admin = AdminApi {
            url: "http://127.0.0.1:8081".into(),
            token: "s3cret".into(),
        };
        let shown = format!("{admin:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("8081"),
            "{shown}"
        );
    }
}
