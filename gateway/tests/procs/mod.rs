//! Gateways and seckill services as real processes, on free loopback
//! ports, and a concurrent HTTP client for spikes against them.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seckill_test_support::free_port;
use seckill_test_support::process::{binary, http, sample, wait_until, Process};
use serde_json::Value;

pub const TOKEN: &str = "test-admin-token";

/// The callback token every gateway and service of a test shares, passed
/// in the environment as a deployment does (never on the command line).
pub const CALLBACK_TOKEN: &str = "test-callback-token-0123456789";

fn addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The sum of the samples named `name` whose labels include `with`
/// (`("kind", "timeout")`, or none), on a `/metrics` page.
pub fn sum_of(page: &str, name: &str, with: Option<(&str, &str)>) -> f64 {
    let scrape = seckill_test_support::metrics::Scrape::parse(page).expect("a metrics page");
    scrape
        .series()
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| with.is_none_or(|(k, v)| s.labels.get(k).is_some_and(|l| l == v)))
        .map(|s| s.value)
        .sum()
}

/// A gateway process.
pub struct Gw {
    pub p: Process,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub grpc: SocketAddr,
}

impl Gw {
    /// Starts `gateway` with the store options and `extra`, and waits until
    /// its admin port answers.
    pub fn start(name: &str, store: &[String], extra: &[&str]) -> Gw {
        Gw::start_env(name, store, extra, &[])
    }

    /// [`Gw::start`] with extra environment (e.g. `SSL_CERT_FILE`).
    pub fn start_env(name: &str, store: &[String], extra: &[&str], envs: &[(&str, &str)]) -> Gw {
        let (public, admin, grpc) = (addr(), addr(), addr());
        let mut args = store.to_vec();
        args.extend(owned(&[
            "--listen",
            &public.to_string(),
            "--admin-listen",
            &admin.to_string(),
            "--grpc-listen",
            &grpc.to_string(),
            "--admin-token",
            TOKEN,
            "--user-rate-per-sec",
            "0",
            // The spikes come from one address as a thousand buyers.
            "--max-connections-per-ip",
            "0",
        ]));
        args.extend(owned(extra));
        let mut all = vec![
            ("SECKILL_LOG", "warn"),
            ("SECKILL_CALLBACK_TOKEN", CALLBACK_TOKEN),
        ];
        all.extend_from_slice(envs);
        let p = Process::spawn(name, env!("CARGO_BIN_EXE_gateway").as_ref(), &args, &all);
        let gw = Gw {
            p,
            public,
            admin,
            grpc,
        };
        assert!(
            wait_until(Duration::from_secs(20), || gw.admin_get("/healthz").0
                == 200),
            "{name} did not come up: {}",
            gw.p.log()
        );
        gw
    }

    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path, &[], "").unwrap_or((0, String::new()))
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let (s, body) = http(self.public, "GET", path, &[], "").unwrap_or((0, String::new()));
        (s, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.admin_get("/metrics").1, series)
    }

    /// `PUT /admin/v1/sales/{id}`; the status.
    pub fn put_sale(&self, id: &str, body: &Value) -> u16 {
        let auth = format!("Bearer {TOKEN}");
        http(
            self.admin,
            "PUT",
            &format!("/admin/v1/sales/{id}"),
            &[("authorization", &auth)],
            &body.to_string(),
        )
        .map(|r| r.0)
        .unwrap_or(0)
    }

    /// One purchase; the status and body (status 0: no answer).
    pub fn buy(&self, sale: &str, user: &str) -> (u16, Value) {
        let body = format!(r#"{{"user_id":"{user}"}}"#);
        match http(
            self.public,
            "POST",
            &format!("/api/v1/sales/{sale}/purchase"),
            &[("content-type", "application/json")],
            &body,
        ) {
            Ok((s, b)) => (s, serde_json::from_str(&b).unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    /// One purchase with an idempotency key; the status and body.
    pub fn buy_keyed(&self, sale: &str, user: &str, key: &str) -> (u16, Value) {
        let body = format!(r#"{{"user_id":"{user}"}}"#);
        match http(
            self.public,
            "POST",
            &format!("/api/v1/sales/{sale}/purchase"),
            &[
                ("content-type", "application/json"),
                ("idempotency-key", key),
            ],
            &body,
        ) {
            Ok((s, b)) => (s, serde_json::from_str(&b).unwrap_or(Value::Null)),
            Err(_) => (0, Value::Null),
        }
    }

    /// Every order of a sale, through the admin API's order feed.
    pub fn orders(&self, sale: &str) -> Vec<Value> {
        self.feed(Some(sale), "0").0
    }

    /// The order feed from `after` to its end (of one sale, or of all),
    /// page by page; the orders and the cursor to resume from.
    pub fn feed(&self, sale: Option<&str>, after: &str) -> (Vec<Value>, String) {
        let auth = format!("Bearer {TOKEN}");
        let filter = sale.map(|s| format!("&sale_id={s}")).unwrap_or_default();
        let (mut all, mut after) = (Vec::new(), after.to_string());
        for _ in 0..10_000 {
            let path = format!("/admin/v1/orders?after={after}&limit=1000{filter}");
            let (s, body) = http(self.admin, "GET", &path, &[("authorization", &auth)], "")
                .expect("the order feed answers");
            assert_eq!(s, 200, "{body}");
            let page: Value = serde_json::from_str(&body).unwrap();
            let orders = page["orders"].as_array().unwrap();
            after = page["next"].as_str().unwrap().to_string();
            if orders.is_empty() {
                return (all, after);
            }
            all.extend(orders.iter().cloned());
        }
        panic!("no end of the order feed");
    }

    /// The sale as every client sees it: (sold, remaining).
    pub fn sold(&self, sale: &str) -> (u64, u64) {
        let (s, v) = self.get(&format!("/api/v1/sales/{sale}"));
        assert_eq!(s, 200, "{v}");
        (
            v["sold"].as_u64().unwrap(),
            v["remaining"].as_u64().unwrap(),
        )
    }
}

/// A seckill-service process.
pub struct Svc {
    pub p: Process,
    pub admin: SocketAddr,
}

impl Svc {
    pub fn start(name: &str, store: &[String], extra: &[&str]) -> Svc {
        Svc::start_env(name, store, extra, &[])
    }

    /// [`Svc::start`] with extra environment (e.g. `SSL_CERT_FILE`).
    pub fn start_env(name: &str, store: &[String], extra: &[&str], envs: &[(&str, &str)]) -> Svc {
        let admin = addr();
        let mut args = store.to_vec();
        args.extend(owned(&["--admin-listen", &admin.to_string()]));
        args.extend(owned(extra));
        let mut all = vec![
            ("SECKILL_LOG", "warn"),
            ("SECKILL_CALLBACK_TOKEN", CALLBACK_TOKEN),
        ];
        all.extend_from_slice(envs);
        let p = Process::spawn(name, &binary("seckill-service"), &args, &all);
        let svc = Svc { p, admin };
        assert!(
            wait_until(Duration::from_secs(20), || svc.admin_get("/healthz").0
                == 200),
            "{name} did not come up: {}",
            svc.p.log()
        );
        svc
    }

    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http(self.admin, "GET", path, &[], "").unwrap_or((0, String::new()))
    }

    /// The value of one series; a series the service does not expose fails
    /// the test, so an assertion on it cannot pass for a renamed metric.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.admin_get("/metrics").1;
        sample(&text, series).unwrap_or_else(|| panic!("{series} is not exposed:\n{text}"))
    }
}

pub fn redis_args(url: &str) -> Vec<String> {
    owned(&["--redis-url", url])
}

pub fn cluster_args(urls: &[String]) -> Vec<String> {
    owned(&["--redis-cluster", &urls.join(",")])
}

/// What one buyer's request came back with.
#[derive(Clone, Debug)]
pub struct Answer {
    pub user: String,
    /// 0: no HTTP answer at all.
    pub status: u16,
    pub body: Value,
}

/// Checks that every answer has one of `statuses`, or is the gateway failing
/// closed (503 `store_unreachable`: the store missed the request's 1 s
/// budget, which a debug build on two busy cores can do), and that failing
/// closed stayed rare: at most a tenth of the answers. Such a refusal never
/// takes stock, which the callers check on the sold count.
pub fn assert_statuses_or_fail_closed(answers: &[Answer], statuses: &[u16]) {
    let mut closed = 0;
    for a in answers {
        if a.status == 503 && a.body["reason"] == "store_unreachable" {
            closed += 1;
        } else {
            assert!(
                statuses.contains(&a.status),
                "{}: {} {}",
                a.user,
                a.status,
                a.body
            );
        }
    }
    assert!(
        closed * 10 <= answers.len(),
        "{closed} of {} answers failed closed",
        answers.len()
    );
}

/// Sends one purchase per `(gateway, user)` at most `in_flight` at a time,
/// and returns every answer.
pub async fn spike(buyers: Vec<(SocketAddr, String)>, sale: &str, in_flight: usize) -> Vec<Answer> {
    spike_with(buyers, sale, in_flight, false).await
}

/// [`spike`] where each buyer sends `Idempotency-Key: key-<user>`, as a
/// client that can recover its order after a broken connection does.
pub async fn keyed_spike(
    buyers: Vec<(SocketAddr, String)>,
    sale: &str,
    in_flight: usize,
) -> Vec<Answer> {
    spike_with(buyers, sale, in_flight, true).await
}

async fn spike_with(
    buyers: Vec<(SocketAddr, String)>,
    sale: &str,
    in_flight: usize,
    keyed: bool,
) -> Vec<Answer> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(in_flight)
        // Below the gateway's 5 s idle close, so no request races it.
        .pool_idle_timeout(Duration::from_secs(2))
        .build(connector);
    let sale = sale.to_string();
    seckill_test_support::crowd(buyers, in_flight, move |(target, user)| {
        let (client, sale) = (client.clone(), sale.clone());
        async move {
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(format!("http://{target}/api/v1/sales/{sale}/purchase"))
                .header("content-type", "application/json");
            if keyed {
                req = req.header("idempotency-key", format!("key-{user}"));
            }
            let req = req
                .body(Full::new(Bytes::from(format!(r#"{{"user_id":"{user}"}}"#))))
                .unwrap();
            // Status 0 carries the client's error as its body, for the
            // failure message.
            let answer = tokio::time::timeout(Duration::from_secs(60), async {
                let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
                let status = resp.status().as_u16();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("body: {e:?}"))?
                    .to_bytes();
                Ok::<_, String>((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
            })
            .await
            .unwrap_or_else(|_| Err("no answer within 60 s".into()));
            let (status, body) = answer.unwrap_or_else(|e| (0, Value::String(e)));
            Answer { user, status, body }
        }
    })
    .await
}
