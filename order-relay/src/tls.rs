//! TLS for the sinks: one rustls client configuration (ring, the system's
//! CAs or `SSL_CERT_FILE`/`SSL_CERT_DIR`), used by https:// webhooks and by
//! PostgreSQL with `sslmode=require`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// A client configuration trusting the system's CAs; `what` names the
/// option that asked for TLS, for the error when there are none.
pub fn client_config(what: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(format!(
            "{what} needs TLS but no CA certificates were found \
             (install ca-certificates, or set SSL_CERT_FILE){}",
            found
                .errors
                .first()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        ));
    }
    Ok(empty_config()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A configuration builder with the build's one crypto provider.
fn empty_config(
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>, String> {
    rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))
}

/// A configuration that trusts nothing: for connectors that never make a
/// TLS connection (an http:// webhook).
pub fn no_tls_config() -> Result<rustls::ClientConfig, String> {
    Ok(empty_config()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

/// PostgreSQL over rustls: the server's certificate is checked against
/// the configuration's CAs and the host name of the URL. No channel
/// binding (SCRAM without `-PLUS`).
#[derive(Clone)]
pub struct PostgresTls(tokio_rustls::TlsConnector);

impl PostgresTls {
    pub fn new(config: rustls::ClientConfig) -> Self {
        PostgresTls(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }
}

impl<S> MakeTlsConnect<S> for PostgresTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type TlsConnect = PostgresTlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PostgresTlsConnect, Self::Error> {
        Ok(PostgresTlsConnect {
            connector: self.0.clone(),
            name: ServerName::try_from(domain.to_string())?,
        })
    }
}

pub struct PostgresTlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

type Connecting<S> = Pin<Box<dyn Future<Output = io::Result<PostgresTlsStream<S>>> + Send>>;

impl<S> TlsConnect<S> for PostgresTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PostgresTlsStream<S>;
    type Error = io::Error;
    type Future = Connecting<S>;

    fn connect(self, stream: S) -> Connecting<S> {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(PostgresTlsStream(tls))
        })
    }
}

pub struct PostgresTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PostgresTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PostgresTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for PostgresTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}
