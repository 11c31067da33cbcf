//! Starts real embedded gateways on loopback port 0 and talks HTTP to them.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gateway::{run_embedded, EmbeddedOptions, GatewayConfig, Listeners};
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seckill_service::ServiceConfig;
use seckill_stores::Stores;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "test-admin-token";

/// A running embedded gateway.
pub struct TestGateway {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub grpc: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

/// What a test changes from the defaults.
pub struct Setup {
    pub config: GatewayConfig,
    pub service: ServiceConfig,
    pub options: EmbeddedOptions,
}

impl Default for Setup {
    fn default() -> Self {
        let mut config = GatewayConfig::new(TOKEN, "");
        // Tests send many attempts per user on purpose; the edge limit has
        // its own test.
        config.user_rate_per_sec = 0;
        // Spikes come from one address as a thousand buyers; the
        // per-address connection cap has its own test.
        config.max_connections_per_ip = 0;
        Setup {
            config,
            service: ServiceConfig::default(),
            options: EmbeddedOptions::default(),
        }
    }
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::with(Setup::default()).await
    }

    pub async fn with(mut setup: Setup) -> Self {
        // As a binary does, before any metric handle is resolved.
        seckill_ops::metrics::install();
        gateway::describe_metrics();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let listeners = Listeners::bind(any, any, any).await.unwrap();
        let public = listeners.public.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let grpc = listeners.grpc.local_addr().unwrap();
        setup.config.advertise_grpc = grpc.to_string();
        let shutdown = CancellationToken::new();
        let s = shutdown.clone();
        let task = tokio::spawn(async move {
            let stores = Stores::memory(Duration::from_secs(600));
            run_embedded(
                listeners,
                setup.config,
                stores,
                setup.service,
                setup.options,
                s,
            )
            .await
            .unwrap()
        });
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            // Below the gateway's 5 s idle close, so no request races it.
            .pool_idle_timeout(Duration::from_secs(2))
            .build(connector);
        let gw = TestGateway {
            public,
            admin,
            grpc,
            shutdown,
            task,
            client,
        };
        // Ready when the admin port answers.
        for _ in 0..100 {
            if gw.get_admin("/healthz").await.0 == StatusCode::OK {
                return gw;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("gateway did not come up");
    }

    pub async fn request(
        &self,
        method: Method,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body.into())).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("answered within 30 s")
            .expect("HTTP exchange");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        };
        (status, headers, value)
    }

    /// `POST /api/v1/sales/{sale}/purchase` with a JSON body.
    pub async fn purchase(&self, sale: &str, body: &str) -> (StatusCode, HeaderMap, Value) {
        self.purchase_with(sale, body, &[]).await
    }

    pub async fn purchase_with(
        &self,
        sale: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, Value) {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        self.request(
            Method::POST,
            self.public,
            &format!("/api/v1/sales/{sale}/purchase"),
            &h,
            body.to_string(),
        )
        .await
    }

    pub async fn buy(&self, sale: &str, user: &str) -> (StatusCode, Value) {
        let (s, _, v) = self
            .purchase(sale, &format!(r#"{{"user_id":"{user}"}}"#))
            .await;
        (s, v)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (s, _, v) = self
            .request(Method::GET, self.public, path, &[], Bytes::new())
            .await;
        (s, v)
    }

    pub async fn get_admin(&self, path: &str) -> (StatusCode, Value) {
        let (s, _, v) = self
            .request(Method::GET, self.admin, path, &[], Bytes::new())
            .await;
        (s, v)
    }

    /// `GET` on the admin port with the admin token.
    pub async fn get_authorized(&self, path: &str) -> (StatusCode, Value) {
        let auth = format!("Bearer {TOKEN}");
        let (s, _, v) = self
            .request(
                Method::GET,
                self.admin,
                path,
                &[("authorization", &auth)],
                Bytes::new(),
            )
            .await;
        (s, v)
    }

    /// `PUT /admin/v1/sales/{id}` with the admin token.
    pub async fn put_sale(&self, id: &str, body: Value) -> (StatusCode, Value) {
        let auth = format!("Bearer {TOKEN}");
        let (s, _, v) = self
            .request(
                Method::PUT,
                self.admin,
                &format!("/admin/v1/sales/{id}"),
                &[("authorization", &auth)],
                body.to_string(),
            )
            .await;
        (s, v)
    }

    /// Creates a sale that admits everything it can: tokens are plentiful.
    pub async fn open_sale(&self, id: &str, stock: u64, per_user_limit: u32) {
        let (s, v) = self
            .put_sale(
                id,
                serde_json::json!({
                    "stock": stock,
                    "per_user_limit": per_user_limit,
                    "token_rate": 1_000_000,
                    "token_capacity": 100_000,
                    "queue_capacity": 100_000,
                }),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        // Let the generator's first tick fill the bucket.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    pub async fn sale(&self, id: &str) -> Value {
        let (s, v) = self.get(&format!("/api/v1/sales/{id}")).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    pub async fn metrics(&self) -> String {
        let (s, v) = self.get_admin("/metrics").await;
        assert_eq!(s, StatusCode::OK);
        v.as_str().unwrap().to_string()
    }

    /// Stops the gateway and waits for it to drain.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("drained within 30 s")
            .unwrap();
    }
}

/// The value of one sample in Prometheus text, e.g. `name{sale="x"}`
/// (label order free). Not every test binary that has this module reads one.
#[allow(unused_imports)]
pub use seckill_test_support::process::sample;
