//! The harness against fake gateways on real sockets: the scheduler keeps
//! its arrival times when the target stalls, the audit catches a gateway
//! that oversells, leaves requests unanswered or keeps an order feed that
//! disagrees with its sale, the JSON report round-trips, and assertions set
//! the binary's exit code.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use loadtest::http::AdminApi;
use loadtest::{Outcome, Profile, Report, RunConfig};
use tokio::net::TcpListener;

/// The admin token of every fake gateway.
const TOKEN: &str = "fake-admin-token";
/// Orders per page of a fake's feed: fewer than asked for, so a run reads
/// several pages.
const FEED_PAGE: usize = 7;

/// How a fake gateway misbehaves.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    /// Sells its stock, then answers 410.
    Honest,
    /// Answers success to everyone, while its sale view claims the stock
    /// was respected; its order feed lists every order it made.
    Oversell,
    /// Drops the connection without an answer for every fourth buyer.
    DropSome,
    /// Holds the very first purchase this long, then behaves.
    StallFirst(Duration),
}

/// How a fake gateway's order feed (`GET /admin/v1/orders`) misbehaves.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Feed {
    /// Lists the orders made, in order.
    Honest,
    /// Lists the first order twice.
    RepeatsAnOrder,
    /// Leaves out the last order made.
    LosesAnOrder,
    /// Lists the second order under the first order's buyer.
    MovesAnOrder,
    /// Refuses every token (401).
    RefusesTheToken,
    /// Answers 400 to its own cursor once past the first page.
    RefusesItsCursor,
    /// Never ends: every page holds new orders.
    Endless,
    /// Answers every other request with 503 (it passes when asked again).
    Flaky,
}

/// An order as the fake's feed lists it.
#[derive(Clone)]
struct FakeOrder {
    id: u64,
    user: String,
}

struct Fake {
    stock: u64,
    sold: AtomicU64,
    next: AtomicU64,
    stalled: AtomicBool,
    behaviour: Behaviour,
    feed: Feed,
    /// First answer per idempotency key: a repeat gets it again.
    answers: Mutex<HashMap<String, (StatusCode, String)>>,
    /// Orders made, in order.
    orders: Mutex<Vec<FakeOrder>>,
    /// Requests for pages of the feed.
    feed_requests: AtomicU64,
}

type Answer = Result<Response<Full<Bytes>>, std::io::Error>;

fn json(code: StatusCode, body: String) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = code;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(r)
}

impl Fake {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Answer {
        let path = req.uri().path().to_string();
        if req.method() == Method::PUT && path.starts_with("/admin/v1/sales/") {
            // --create-sale: the fake's one sale is there already.
            return json(StatusCode::OK, r#"{"status":"ok"}"#.into());
        }
        if req.method() == Method::GET && path == "/admin/v1/orders" {
            return self.feed_page(&req);
        }
        if req.method() == Method::GET && path.starts_with("/api/v1/sales/") {
            let sold = self.sold.load(Ordering::SeqCst);
            // A broken gateway's books look fine: sold never above stock.
            let shown = sold.min(self.stock);
            return json(
                StatusCode::OK,
                format!(
                    r#"{{"sale_id":"fake","stock":{},"remaining":{},"sold":{shown},"per_user_limit":1,"state":"active"}}"#,
                    self.stock,
                    self.stock - shown
                ),
            );
        }
        let key = req
            .headers()
            .get("idempotency-key")
            .map(|k| k.to_str().unwrap().to_string());
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let user = body["user_id"].as_str().unwrap_or("").to_string();
        let n: u64 = user.rsplit('-').next().unwrap().parse().unwrap();
        match self.behaviour {
            Behaviour::DropSome if n & 3 == 0 => {
                // An error from the service makes hyper drop the connection
                // without writing a response.
                return Err(std::io::Error::other("dropped on purpose"));
            }
            Behaviour::StallFirst(d) if !self.stalled.swap(true, Ordering::SeqCst) => {
                tokio::time::sleep(d).await;
            }
            _ => {}
        }
        if let Some(k) = &key {
            if let Some((code, body)) = self.answers.lock().unwrap().get(k).cloned() {
                return json(code, body);
            }
        }
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let sell = match self.behaviour {
            Behaviour::Oversell => {
                self.sold.fetch_add(1, Ordering::SeqCst);
                true
            }
            _ => self
                .sold
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                    (s < self.stock).then_some(s + 1)
                })
                .is_ok(),
        };
        let (code, body) = if sell {
            self.orders.lock().unwrap().push(FakeOrder {
                id,
                user: user.clone(),
            });
            (
                StatusCode::OK,
                format!(
                    r#"{{"status":"success","request_id":"r{id}","order_id":"o{id}","sale_id":"fake","user_id":"{user}","quantity":1}}"#
                ),
            )
        } else {
            (
                StatusCode::GONE,
                r#"{"status":"sold_out","error":"sold out"}"#.to_string(),
            )
        };
        if let Some(k) = key {
            self.answers.lock().unwrap().insert(k, (code, body.clone()));
        }
        json(code, body)
    }
}

impl Fake {
    /// `GET /admin/v1/orders?sale_id=..&after=..&limit=..`: the orders
    /// after the cursor (a position in the list, spelt so that it needs
    /// escaping in a URL), at most `FEED_PAGE` of them.
    fn feed_page(&self, req: &Request<Incoming>) -> Answer {
        let bearer = format!("Bearer {TOKEN}");
        let authorized = req.headers().get("authorization").map(|v| v.as_bytes());
        if authorized != Some(bearer.as_bytes()) || self.feed == Feed::RefusesTheToken {
            return json(
                StatusCode::UNAUTHORIZED,
                r#"{"status":"unauthorized","error":"bad token"}"#.into(),
            );
        }
        let query: HashMap<String, String> =
            form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                .into_owned()
                .collect();
        assert_eq!(query.get("sale_id").map(String::as_str), Some("fake"));
        let limit: usize = query["limit"].parse().unwrap();
        assert!((1..=10_000).contains(&limit), "limit {limit}");
        let bad_cursor = || {
            json(
                StatusCode::BAD_REQUEST,
                r#"{"status":"bad_request","error":"bad cursor"}"#.into(),
            )
        };
        let from = match query.get("after") {
            None => 0,
            Some(c) => match c.strip_prefix("at+").and_then(|n| n.strip_suffix("/=")) {
                Some(n) => n.parse::<usize>().unwrap(),
                None => return bad_cursor(),
            },
        };
        if self.feed == Feed::RefusesItsCursor && from > FEED_PAGE {
            return bad_cursor();
        }
        if self.feed == Feed::Flaky && self.feed_requests.fetch_add(1, Ordering::SeqCst) & 1 == 0 {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"overloaded","error":"try again"}"#.into(),
            );
        }
        let listed = self.listed();
        let to = match self.feed {
            Feed::Endless => from + FEED_PAGE,
            _ => listed.len().min(from + FEED_PAGE.min(limit)),
        };
        let orders: Vec<String> = (from..to)
            .map(|i| {
                let o = listed.get(i).cloned().unwrap_or_else(|| FakeOrder {
                    id: 1_000_000 + i as u64,
                    user: format!("u-endless-{i}"),
                });
                format!(
                    r#"{{"order_id":"o{}","sale_id":"fake","user_id":"{}","quantity":1,"request_id":"r{}","at":"2026-11-25T09:23:59.902Z"}}"#,
                    o.id, o.user, o.id
                )
            })
            .collect();
        json(
            StatusCode::OK,
            format!(r#"{{"orders":[{}],"next":"at+{to}/="}}"#, orders.join(",")),
        )
    }

    /// The orders as the feed shows them.
    fn listed(&self) -> Vec<FakeOrder> {
        let mut orders = self.orders.lock().unwrap().clone();
        match self.feed {
            Feed::RepeatsAnOrder if !orders.is_empty() => orders.push(orders[0].clone()),
            Feed::LosesAnOrder => {
                orders.pop();
            }
            Feed::MovesAnOrder if orders.len() >= 2 => orders[1].user = orders[0].user.clone(),
            _ => {}
        }
        orders
    }
}

/// Starts a fake gateway with an honest order feed on a free port; returns
/// its base URL.
async fn fake(stock: u64, behaviour: Behaviour) -> String {
    fake_with_feed(stock, behaviour, Feed::Honest).await
}

/// Starts a fake gateway on a free port; returns its base URL.
async fn fake_with_feed(stock: u64, behaviour: Behaviour, feed: Feed) -> String {
    serve_fake(stock, behaviour, feed, None).await
}

/// A CA made here (its PEM file), and the TLS configuration of a server
/// whose certificate for 127.0.0.1 it signed.
fn pki(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let file = dir.join(format!("{name}.pem"));
    std::fs::write(&file, ca.pem()).unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into();
    let config = rustls::ServerConfig::builder_with_provider(
        rustls::crypto::ring::default_provider().into(),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .unwrap();
    (file, Arc::new(config))
}

/// Starts a fake gateway on a free port, behind TLS with `tls`; returns
/// its base URL.
async fn serve_fake(
    stock: u64,
    behaviour: Behaviour,
    feed: Feed,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let tls_scheme = tls.is_some();
    let fake = Arc::new(Fake {
        stock,
        sold: AtomicU64::new(0),
        next: AtomicU64::new(0),
        stalled: AtomicBool::new(false),
        behaviour,
        feed,
        answers: Mutex::new(HashMap::new()),
        orders: Mutex::new(Vec::new()),
        feed_requests: AtomicU64::new(0),
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let fake = fake.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| fake.clone().handle(req));
                let http = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(tls) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            });
        }
    });
    let scheme = if tls_scheme { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

fn config(base: &str, profile: &str) -> RunConfig {
    let mut c = RunConfig::new(base, "fake", profile.parse::<Profile>().unwrap());
    c.user_prefix = "u-".into();
    c.timeout = Duration::from_secs(10);
    c.admin = Some(AdminApi {
        url: base.into(),
        token: TOKEN.into(),
    });
    c
}

/// Names of the audit's failed checks.
fn failed_checks(r: &Report) -> Vec<&str> {
    let audit = r.audit.as_ref().expect("an audit");
    let failed = audit.checks.iter().filter(|c| !c.passed);
    failed.map(|c| c.name.as_str()).collect()
}

async fn run(c: &RunConfig) -> Report {
    loadtest::run(c, Arc::new(AtomicBool::new(false)))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrivals_keep_their_schedule_while_the_target_stalls() {
    let stall = Duration::from_millis(600);
    let base = fake(1_000_000, Behaviour::StallFirst(stall)).await;
    // One connection: while it is held, later buyers queue behind it. A
    // closed-loop client would stop sending and hide that wait; the open
    // model sends on time and counts it.
    let mut c = config(&base, "constant:50/2s");
    c.connections = 1;
    // Validity at the bound asserted below: a busy machine may delay the
    // generator by tens of milliseconds, a generator waiting for the
    // target would lag by the whole stall.
    c.max_lag = stall / 4;
    let r = run(&c).await;
    assert_eq!(r.requests_sent, 100);
    assert_eq!(r.answered, 100);
    let success = &r.outcomes["success"];
    let stall_us = stall.as_micros() as u64;
    // The stall shows in the corrected latency: of the first request and,
    // spread out, of the ~30 that arrived behind it.
    assert!(
        success.corrected.max_us >= stall_us,
        "{:?}",
        success.corrected
    );
    assert!(
        success.corrected.p90_us >= stall_us / 3,
        "corrected {:?}",
        success.corrected
    );
    // The raw latency of those queued requests is their service time only.
    assert!(
        success.raw.p90_us < success.corrected.p90_us,
        "raw {:?} corrected {:?}",
        success.raw,
        success.corrected
    );
    // And the generator did not wait for the target.
    let lag = &r.schedule.dispatch_lag;
    assert!(lag.p99_us < stall_us / 4, "dispatch lag {lag:?}");
    assert!(r.valid, "{:?}", r.invalid_reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_catches_an_oversell() {
    let base = fake(5, Behaviour::Oversell).await;
    let r = run(&config(&base, "at-once:20/100ms")).await;
    let audit = r.audit.as_ref().unwrap();
    assert_eq!(r.count(Outcome::Success), 20);
    assert_eq!(audit.oversell, 15, "{}", audit.summary());
    assert!(!audit.passed);
    assert!(!r.passed());
    let failed: Vec<&str> = audit
        .checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect();
    assert!(failed.contains(&"no oversell"), "{failed:?}");
    // The feed shows the twenty orders the sale hides.
    assert!(
        failed.contains(&"feed: orders within the stock"),
        "{failed:?}"
    );
    assert!(
        failed.contains(&"feed: units equal the sale's sold"),
        "{failed:?}"
    );
    let feed = audit.feed.as_ref().unwrap();
    assert_eq!((feed.orders, feed.units), (20, 20), "{}", audit.summary());
    assert!(feed.pages > 2, "{feed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_reads_the_order_feed_and_catches_its_faults() {
    let cases: [(Feed, &[&str]); 8] = [
        (Feed::Honest, &[]),
        (Feed::Flaky, &[]),
        (
            Feed::RepeatsAnOrder,
            &[
                "feed: orders within the stock",
                "feed: units equal the sale's sold",
                "feed: order ids distinct",
                "feed: per-user limit held",
            ],
        ),
        (
            Feed::LosesAnOrder,
            &[
                "feed: units equal the sale's sold",
                "feed: every success told is in it",
            ],
        ),
        (Feed::MovesAnOrder, &["feed: per-user limit held"]),
        (Feed::RefusesTheToken, &["order feed readable"]),
        (Feed::RefusesItsCursor, &["order feed readable"]),
        (
            Feed::Endless,
            &[
                "feed: orders within the stock",
                "feed: units equal the sale's sold",
            ],
        ),
    ];
    for (feed, expected) in cases {
        let base = fake_with_feed(10, Behaviour::Honest, feed).await;
        let r = run(&config(&base, "at-once:20/100ms")).await;
        let audit = r.audit.as_ref().unwrap();
        assert_eq!(failed_checks(&r), expected, "{feed:?}: {}", audit.summary());
        assert_eq!(audit.passed, expected.is_empty(), "{feed:?}");
        let read = audit.feed.as_ref().unwrap();
        match feed {
            Feed::Honest | Feed::Flaky => {
                assert_eq!((read.orders, read.units), (10, 10), "{read:?}")
            }
            Feed::RefusesTheToken => {
                assert!(read.error.as_deref().unwrap().contains("401"), "{read:?}")
            }
            Feed::RefusesItsCursor => {
                assert!(read.error.as_deref().unwrap().contains("400"), "{read:?}")
            }
            // Reading stops at its bound on orders, not at the deadline.
            Feed::Endless => assert!(read.truncated && read.orders < 1_100, "{read:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_token_the_feed_is_not_read() {
    let base = fake(10, Behaviour::Honest).await;
    let mut c = config(&base, "at-once:20/100ms");
    c.admin = None;
    let r = run(&c).await;
    let audit = r.audit.as_ref().unwrap();
    assert!(audit.passed, "{}", audit.summary());
    assert!(audit.feed.is_none());
    assert!(!audit.checks.iter().any(|c| c.name.contains("feed")));
    assert!(audit.summary().contains("order feed: not read"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_catches_missing_answers() {
    let base = fake(1_000, Behaviour::DropSome).await;
    let r = run(&config(&base, "at-once:40/200ms")).await;
    let audit = r.audit.as_ref().unwrap();
    // Buyers 0, 4, ..., 36 got no answer.
    assert_eq!(audit.missing, 10, "{}", audit.summary());
    assert_eq!(r.count(Outcome::NoAnswer), 10);
    assert_eq!(r.count(Outcome::Success), 30);
    assert!(!audit.passed);
    assert!(!r.errors.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_sale_passes_and_its_report_round_trips() {
    let base = fake(10, Behaviour::Honest).await;
    let mut c = config(&base, "stages:100/200ms,50/200ms");
    c.double_click = 0.2;
    let mut r = run(&c).await;
    let audit = r.audit.clone().unwrap();
    assert!(audit.passed, "{}", audit.summary());
    assert_eq!(audit.feed.as_ref().unwrap().orders, 10);
    // Repeats of a key get the first answer again: more success answers
    // than orders.
    assert_eq!(audit.orders, 10);
    assert!(r.count(Outcome::Success) >= 10);
    assert!(r.double_clicks > 0);
    assert_eq!(r.requests_sent, 30 + r.double_clicks);
    assert!(r.sell_out.time_to_sell_out_s.is_some());
    r.assertions = ["oversell==0", "p99(success)<1h", "count(sold_out)>0"]
        .iter()
        .map(|a| a.parse::<loadtest::Assertion>().unwrap().check(&r))
        .collect();
    assert!(r.assertions.iter().all(|a| a.passed), "{:?}", r.assertions);

    let json = serde_json::to_string_pretty(&r).unwrap();
    assert!(json.contains(r#""version": 1"#));
    let back: Report = serde_json::from_str(&json).unwrap();
    assert_eq!(back, r);

    let fairness = r
        .fairness
        .as_ref()
        .expect("an audited run reports its fairness");
    assert_eq!(fairness.winners, r.buyers["success"]);
    assert!((0.0..=1.0).contains(&fairness.fairness));

    let html = loadtest::html::render(&r);
    // Throughput, latency, in flight, connection wait, distribution, and
    // outcome by arrival rank.
    assert_eq!(html.matches("<svg").count(), 6);
    assert!(!html.contains("<script"));
    assert!(!html.contains("src=") && !html.contains("<link"));
    // Every chart over time covers the same range, the report's.
    let (x0, x1) = r.timeline.range_s();
    assert!(
        r.timeline.end_ms > 0 && x1 >= r.duration_s - 0.05,
        "{x1} {}",
        r.duration_s
    );
    let ranges: Vec<&str> = html
        .split("data-x-range=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert_eq!(ranges, vec![format!("{x0} {x1}"); 4]);
    // Successes are drawn last in the answers' chart: nothing hides them.
    let answers = html.split("<svg").nth(1).unwrap();
    let lines: Vec<&str> = answers
        .split("data-line=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap())
        .collect();
    assert_eq!(lines.last(), Some(&"success"), "{lines:?}");
    assert!(lines.contains(&"sold_out") && !answers.contains("<polygon"));
    // The sell-out is marked on every chart over time.
    assert_eq!(html.matches("data-marker=\"sold-out\"").count(), 4);
    // The orders card counts orders, the answers beside it.
    let orders = format!(
        "<b>{}</b><span class=\"muted small\">{} success answers",
        10,
        r.count(Outcome::Success)
    );
    assert!(html.contains(&orders), "{html}");
    assert_eq!(r.success_orders, 10);
    // HTTP statuses: 200 and 410, adding up to the answers.
    assert_eq!(
        r.statuses.keys().copied().collect::<Vec<_>>(),
        vec![200, 410]
    );
    assert_eq!(r.statuses.values().sum::<u64>(), r.answered);
    assert!(
        html.contains("<td>410</td><td class=\"l\">Gone</td>"),
        "{html}"
    );

    // Compared with itself: ratios of one, and a page with three plots.
    let page = loadtest::html::compare::render(&r, &r, "a.json", "b.json");
    assert_eq!(page.matches("<svg").count(), 3);
    assert!(!page.contains("<script"));
    let table = loadtest::compare::table(&r, &r, "a.json", "b.json");
    let throughput = table.lines().find(|l| l.starts_with("throughput")).unwrap();
    assert!(throughput.ends_with("1.00×"), "{table}");
}

/// Runs the binary against `base` with extra arguments; returns its exit code.
async fn exit_code(base: &str, args: &[&str]) -> i32 {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    cmd.args(["run", "--target", base, "--sale", "fake", "--quiet"])
        .args(["--admin-url", base, "--admin-token", TOKEN])
        .args(args);
    let status = tokio::task::spawn_blocking(move || cmd.status().unwrap())
        .await
        .unwrap();
    status.code().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertions_and_the_audit_set_the_exit_code() {
    let honest = fake(5, Behaviour::Honest).await;
    let profile = ["--profile", "at-once:20/100ms", "--max-lag-ms", "5000"];
    let pass = [
        &profile[..],
        &["--assert", "oversell==0", "--assert", "count(success)==5"],
    ]
    .concat();
    assert_eq!(exit_code(&honest, &pass).await, 0);

    let honest = fake(5, Behaviour::Honest).await;
    let fail = [&profile[..], &["--assert", "count(success)==6"]].concat();
    assert_eq!(exit_code(&honest, &fail).await, 2);

    // A run behind its schedule is invalid (3), whatever its assertions
    // said: its figures do not measure the target.
    let honest = fake(5, Behaviour::Honest).await;
    let behind = ["--profile", "at-once:200/10ms", "--max-lag-ms", "0"];
    let invalid = [&behind[..], &["--assert", "count(success)==6"]].concat();
    assert_eq!(exit_code(&honest, &invalid).await, 3);

    let overselling = fake(5, Behaviour::Oversell).await;
    let audit = [&profile[..], &["--assert", "count(success)==20"]].concat();
    assert_eq!(exit_code(&overselling, &audit).await, 1);

    // Bad options are a usage error.
    assert_eq!(
        exit_code(
            &overselling,
            &[&profile[..], &["--assert", "p99(x)<1"]].concat()
        )
        .await,
        64
    );
    // So are values out of their bounds.
    for bad in [["--connections", "0"], ["--double-click", "2"]] {
        let args = [&profile[..], &bad[..]].concat();
        assert_eq!(exit_code(&overselling, &args).await, 64, "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_against_the_calibration_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(tokio::sync::Notify::new());
    let server = tokio::spawn({
        let stop = stop.clone();
        async move { loadtest::calibrate::serve(listener, async move { stop.notified().await }).await }
    });
    let r = loadtest::throughput::run(loadtest::throughput::ThroughputConfig {
        url: format!("http://{addr}/api/v1/sales/x/purchase"),
        method: Method::POST,
        body: Some(r#"{"user_id":"u-{n}"}"#.into()),
        headers: vec![],
        bearer: vec![],
        connections: 2,
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(50),
    })
    .await
    .unwrap();
    assert!(r.requests > 0);
    assert_eq!(r.statuses.keys().copied().collect::<Vec<_>>(), vec![200]);
    assert!(r.line().starts_with("rps="));
    stop.notify_one();
    server.await.unwrap();
}

/// Runs the binary with `args` and the environment `env`; returns its exit
/// code and what it wrote to stderr.
async fn binary(args: Vec<String>, env: Vec<(&'static str, String)>) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadtest"));
    cmd.args(args).envs(env);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap(), stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_targets_are_trusted_through_the_ca_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = pki(dir.path(), "ca");
    let (other_ca, _) = pki(dir.path(), "other-ca");
    let base = serve_fake(5, Behaviour::Honest, Feed::Honest, Some(tls)).await;
    assert!(base.starts_with("https://"));
    // Trust exactly what each case names: the machine's own CAs are out.
    let no_dir = dir.path().join("no-certs");
    std::fs::create_dir(&no_dir).unwrap();
    let env = |file: &std::path::Path| {
        vec![
            ("SSL_CERT_FILE", file.display().to_string()),
            ("SSL_CERT_DIR", no_dir.display().to_string()),
        ]
    };
    let args = |extra: &[&str]| -> Vec<String> {
        let base_args = [
            "run",
            "--target",
            &base,
            "--admin-url",
            &base,
            "--admin-token",
            TOKEN,
            "--sale",
            "fake",
            "--profile",
            "at-once:20/100ms",
            "--max-lag-ms",
            "5000",
            // One fake for every case: the first sells its stock.
            "--assert",
            "oversell==0",
        ];
        base_args
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    // The server's CA given by --ca-file: the run is made and audited.
    let ca_file = ca.display().to_string();
    let (code, err) = binary(args(&["--ca-file", &ca_file]), env(&empty)).await;
    assert_eq!(code, 0, "{err}");
    // Or by SSL_CERT_FILE, as other tools read it.
    let (code, err) = binary(args(&[]), env(&ca)).await;
    assert_eq!(code, 0, "{err}");
    // Another CA: the handshake fails, the run cannot be made.
    let (code, err) = binary(args(&[]), env(&other_ca)).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("reading the sale before the run"), "{err}");
    // No CA at all: a usage error, said before any request.
    let (code, err) = binary(args(&[]), env(&empty)).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--ca-file"), "{err}");
}

/// The README's example, as written there, scaled down (buyers, window,
/// stock and the orders it asserts, by the same factor) and pointed at a
/// fake gateway: the same flags and assertions hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_scaled_down_passes() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let section = readme.split("## Load test your sale").nth(1).unwrap();
    let block = section
        .split("```sh")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let command = block
        .replace("\\\n", " ")
        .lines()
        .find(|l| l.trim_start().starts_with("target/release/loadtest run"))
        .expect("the README runs loadtest")
        .to_string();
    let words: Vec<String> = command
        .split_whitespace()
        .skip(1)
        .map(|w| w.trim_matches('\'').to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let flag = |name: &str| {
        let i = words
            .iter()
            .position(|w| w == name)
            .unwrap_or_else(|| panic!("{name}"));
        words[i + 1].clone()
    };
    let stock: u64 = flag("--create-sale").parse().unwrap();
    const SCALE: u64 = 100;
    let base = fake(stock / SCALE, Behaviour::Honest).await;
    let (buyers, window) = flag("--profile")
        .strip_prefix("at-once:")
        .and_then(|p| {
            p.split_once('/')
                .map(|(b, w)| (b.to_string(), w.to_string()))
        })
        .expect("an at-once profile");
    let buyers: u64 = buyers.parse().unwrap();
    let mut args = Vec::new();
    let mut it = words.iter();
    while let Some(w) = it.next() {
        let value = |v: &str| v.to_string();
        match w.as_str() {
            "--target" => args.extend([value(w), base.clone(), "--admin-url".into(), base.clone()]),
            "--sale" => args.extend([value(w), "fake".into()]),
            "--create-sale" => args.extend([value(w), (stock / SCALE).to_string()]),
            "--profile" => args.extend([value(w), format!("at-once:{}/{window}", buyers / SCALE)]),
            "--admin-token" => args.extend([value(w), TOKEN.into()]),
            "--json" | "--html" => {
                let file = it.next().unwrap();
                args.extend([value(w), dir.path().join(file).display().to_string()]);
                continue;
            }
            _ => {
                let w = w.replace(&format!("=={stock}"), &format!("=={}", stock / SCALE));
                args.push(w);
                continue;
            }
        }
        it.next();
    }
    assert!(args.iter().any(|a| a == "p99(sold_out)<50ms"), "{args:?}");
    let (code, err) = binary(args.clone(), vec![]).await;
    assert_eq!(code, 0, "{args:?}: {err}");
    let report = std::fs::read(dir.path().join("report.json")).unwrap();
    let report: Report = serde_json::from_slice(&report).unwrap();
    assert!(
        report.assertions.len() >= 4 && report.passed(),
        "{:?}",
        report.assertions
    );
    assert!(
        report.settings.connections_sizing.is_some(),
        "sized automatically"
    );
    assert!(dir.path().join("report.html").exists());

    // Compared with itself through the command line; a file that is not
    // a report is refused.
    let json = dir.path().join("report.json").display().to_string();
    let page = dir.path().join("compare.html");
    let (code, err) = binary(
        vec![
            "compare".into(),
            json.clone(),
            json.clone(),
            "--html".into(),
            page.display().to_string(),
        ],
        vec![],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::read_to_string(&page).unwrap().contains("<svg"));
    let html = dir.path().join("report.html").display().to_string();
    let (code, err) = binary(vec!["compare".into(), json, html], vec![]).await;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("is not a report"), "{err}");
}
