//! A stalled Redis under load: the process is alive, its sockets accept,
//! but nothing answers (SIGSTOP: a long fork, a swapped-out host, a VM
//! paused). Every buyer must still get an answer within its deadline plus
//! one second, the store's part of it as `503 overloaded` with `reason:
//! store_unreachable`, and once Redis runs again nothing is oversold and
//! every `200` is an order.

#[path = "procs/mod.rs"]
mod procs;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use procs::{redis_args, Gw, Svc};
use rustix::process::{kill_process, Pid, Signal};
use seckill_test_support::process::wait_until;
use seckill_test_support::{RedisServer, Reply};
use serde_json::{json, Value};

/// The gateways' request deadline in this test.
const DEADLINE: Duration = Duration::from_millis(2000);
/// The contract: an answer within the deadline plus this.
const SLACK: Duration = Duration::from_secs(1);

/// The pid of a private redis-server, as it reports it.
fn redis_pid(redis: &RedisServer) -> Pid {
    let Ok(Reply::Bulk(Some(info))) = redis.command(&["INFO", "server"]) else {
        panic!("INFO server")
    };
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .expect("process_id in INFO server");
    Pid::from_raw(pid).expect("a positive pid")
}

/// SIGSTOPs a process; SIGCONTs it when dropped, also when a failing
/// assertion unwinds, so the server's own `Drop` finds it running.
struct Stopped(Option<Pid>);

impl Stopped {
    fn stop(pid: Pid) -> Self {
        kill_process(pid, Signal::STOP).expect("SIGSTOP redis-server");
        Stopped(Some(pid))
    }

    fn resume(&mut self) {
        if let Some(pid) = self.0.take() {
            kill_process(pid, Signal::CONT).expect("SIGCONT redis-server");
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.resume();
    }
}

/// One buyer's answer and how long it took, from the first byte sent.
#[derive(Debug)]
struct Timed {
    /// When it was sent, from the start of the spike.
    at: Duration,
    /// 0: no HTTP answer.
    status: u16,
    body: Value,
    took: Duration,
}

/// Sends `buyers` purchases spread evenly over `over`, each on its own
/// schedule, and times each one.
async fn paced_spike(target: SocketAddr, sale: &str, buyers: usize, over: Duration) -> Vec<Timed> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(2))
        .build(connector);
    let start = tokio::time::Instant::now();
    let step = over / buyers as u32;
    let items: Vec<_> = (0..buyers).map(|i| (i, format!("s{i}"))).collect();
    let sale = sale.to_string();
    // Enough workers that the schedule holds while answers take a second.
    seckill_test_support::crowd(items, 2000, move |(i, user)| {
        let (client, sale) = (client.clone(), sale.clone());
        async move {
            tokio::time::sleep_until(start + step * i as u32).await;
            let req = Request::builder()
                .method(Method::POST)
                .uri(format!("http://{target}/api/v1/sales/{sale}/purchase"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(format!(r#"{{"user_id":"{user}"}}"#))))
                .unwrap();
            let sent = Instant::now();
            let at = tokio::time::Instant::now() - start;
            let answer = tokio::time::timeout(Duration::from_secs(30), async {
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
            .unwrap_or_else(|_| Err("no answer within 30 s".into()));
            let took = sent.elapsed();
            let (status, body) = answer.unwrap_or_else(|e| (0, Value::String(e)));
            Timed {
                at,
                status,
                body,
                took,
            }
        }
    })
    .await
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_turns_into_fast_503s_and_nothing_is_oversold() {
    let redis = RedisServer::start();
    let pid = redis_pid(&redis);
    let store = redis_args(&redis.url());
    let gw = Gw::start(
        "gateway",
        &store,
        &["--request-timeout-ms", &DEADLINE.as_millis().to_string()],
    );
    let _svc = Svc::start("service", &store, &[]);
    let stock = 1000;
    let sale = json!({
        "stock": stock,
        "per_user_limit": 1,
        "token_rate": 400,
        "token_capacity": 100,
        "queue_capacity": 100_000,
    });
    assert_eq!(gw.put_sale("stall", &sale), 201);
    assert!(
        wait_until(Duration::from_secs(5), || gw.get("/api/v1/sales/stall").0
            == 200),
        "the sale is not visible"
    );
    std::thread::sleep(Duration::from_millis(300));

    // 3000 buyers over 2 s; Redis stops 0.6 s in, for 5 s.
    let load = tokio::spawn(paced_spike(
        gw.public,
        "stall",
        3000,
        Duration::from_secs(2),
    ));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut stopped = Stopped::stop(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    stopped.resume();
    let answers = load.await.unwrap();

    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for a in &answers {
        *statuses.entry(a.status).or_default() += 1;
    }
    let mut took: Vec<_> = answers.iter().map(|a| a.took).collect();
    took.sort();
    let mut took_503: Vec<_> = answers
        .iter()
        .filter(|a| a.status == 503)
        .map(|a| a.took)
        .collect();
    took_503.sort();
    println!(
        "statuses {statuses:?}; latency p50 {:?} p99 {:?} max {:?}; 503s p50 {:?} max {:?}",
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        percentile(&took, 1.0),
        percentile(&took_503, 0.5),
        percentile(&took_503, 1.0),
    );

    // Slowest answer and statuses by when buyers came, per 200 ms.
    let mut by_slot: BTreeMap<u128, (Duration, BTreeMap<u16, usize>)> = BTreeMap::new();
    for a in &answers {
        let slot = by_slot.entry(a.at.as_millis() / 200 * 200).or_default();
        slot.0 = slot.0.max(a.took);
        *slot.1.entry(a.status).or_default() += 1;
    }
    for (ms, (slowest, statuses)) in &by_slot {
        println!("  sent at {ms:>4} ms: slowest {slowest:>12.3?} {statuses:?}");
    }

    let lost: Vec<_> = answers.iter().filter(|a| a.status == 0).take(3).collect();
    assert!(lost.is_empty(), "buyers without an answer: {lost:?}");
    let late: Vec<_> = answers
        .iter()
        .filter(|a| a.took > DEADLINE + SLACK)
        .take(5)
        .collect();
    assert!(
        late.is_empty(),
        "{} answers later than the deadline + {SLACK:?}, e.g. {late:?} ({statuses:?})",
        answers.iter().filter(|a| a.took > DEADLINE + SLACK).count()
    );
    for (status, n) in &statuses {
        assert!(
            matches!(status, 200 | 410 | 429 | 503 | 504),
            "{n} answers with status {status}: {statuses:?}"
        );
    }
    assert!(
        statuses.get(&503).copied().unwrap_or(0) > 0,
        "the stall was never seen: {statuses:?}"
    );
    for a in answers.iter().filter(|a| a.status == 503) {
        assert_eq!(a.body["status"], "overloaded", "{a:?}");
        assert_eq!(a.body["reason"], "store_unreachable", "{a:?}");
    }

    // Redis runs again: the gateway recovers by itself, and a new buyer
    // is served.
    assert!(
        wait_until(Duration::from_secs(15), || matches!(
            gw.buy("stall", "after-the-stall").0,
            200 | 410
        )),
        "the gateway did not recover after SIGCONT"
    );
    // The stall is in the Redis metrics: commands timed out.
    let page = gw.admin_get("/metrics").1;
    let timeouts = procs::sum_of(
        &page,
        "seckill_redis_errors_total",
        Some(("kind", "timeout")),
    );
    assert!(timeouts > 0.0, "no Redis timeout counted:\n{page}");
    // Nothing oversold, and every 200 is in the order feed, once the
    // queue has drained (the deadline has passed for everything queued).
    std::thread::sleep(DEADLINE + Duration::from_millis(500));
    let (sold, _) = gw.sold("stall");
    assert!(sold <= stock, "sold {sold} of {stock}");
    let orders: HashSet<String> = gw
        .orders("stall")
        .iter()
        .map(|o| o["order_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(orders.len() as u64, sold, "the feed and the sale disagree");
    for a in answers.iter().filter(|a| a.status == 200) {
        let order = a.body["order_id"].as_str().unwrap_or_default();
        assert!(orders.contains(order), "a 200 without an order: {a:?}");
    }
}
