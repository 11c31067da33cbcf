//! A gateway with many sales: 20,000 of them on one embedded gateway
//! (`--max-sales` raised for the test). What must hold exactly is
//! structural: the bound refuses one more sale, `/metrics` carries the
//! per-sale series of the live sales and no others, and removed sales'
//! series leave. Timings are printed, and asserted only with margins wide
//! enough for a shared 2-core machine that still catch the defect they
//! guard against (seconds per purchase, a core kept busy while idle).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use seckill_test_support::free_port;
use seckill_test_support::process::Process;
use serde_json::{json, Value};
use support::{Setup, TestGateway, TOKEN};

const SALES: usize = 20_000;
/// Series per live sale: queue depth and enqueued, four token series, stock.
const SERIES_PER_SALE: usize = 7;
/// Requests in flight while creating or removing the sales.
const CONCURRENCY: usize = 32;

/// The two tests each load a gateway with 20,000 sales; one at a time, so
/// neither measures the other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(CONCURRENCY * 2)
        .pool_idle_timeout(Duration::from_secs(2))
        .build(connector)
}

async fn exchange(
    client: &HttpClient,
    method: Method,
    url: String,
    body: String,
) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("answered within 30 s")
        .expect("HTTP exchange");
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn sale_id(prefix: &str, i: usize) -> String {
    format!("{prefix}-{i}")
}

fn sale_body() -> String {
    json!({
        "stock": 1_000_000,
        "token_rate": 1_000_000,
        "token_capacity": 100_000,
        "queue_capacity": 10_000_000,
    })
    .to_string()
}

/// Sends `method` to `/admin/v1/sales/{id}` for the sales `range` of
/// `prefix`, `CONCURRENCY` at a time; asserts every answer is `want`, and
/// returns the time each chunk of 1,000 took.
async fn each_sale(
    client: &HttpClient,
    admin: SocketAddr,
    method: Method,
    prefix: &str,
    range: std::ops::Range<usize>,
    want: StatusCode,
) -> Vec<Duration> {
    let mut chunks = Vec::new();
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(1000) {
        let started = Instant::now();
        for wave in chunk.chunks(CONCURRENCY) {
            let mut set = tokio::task::JoinSet::new();
            for &i in wave {
                let (client, method) = (client.clone(), method.clone());
                let url = format!("http://{admin}/admin/v1/sales/{}", sale_id(prefix, i));
                let body = if method == Method::PUT {
                    sale_body()
                } else {
                    String::new()
                };
                set.spawn(async move { exchange(&client, method, url, body).await });
            }
            while let Some(r) = set.join_next().await {
                let (status, body) = r.unwrap();
                assert_eq!(status, want, "{method} {prefix}: {body}");
            }
        }
        chunks.push(started.elapsed());
    }
    chunks
}

/// Families a sale has only once it is bought from (registered at the
/// first answer, or the workers' first decision), so not among the series
/// every quiet sale has.
const BOUGHT: [&str; 4] = [
    "seckill_sale_requests_total",
    "seckill_sale_request_duration_seconds",
    "seckill_service_redelivered_total",
    "seckill_service_dead_lettered_total",
];

/// The `sale` labels of the per-sale samples every sale has, on a
/// `/metrics` page, one per sample ("(other)"'s and the series of
/// [`BOUGHT`] left out).
fn sale_series(page: &str) -> Vec<&str> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| !BOUGHT.iter().any(|f| l.starts_with(f)))
        .filter(|l| !l.contains(r#"sale="(other)""#))
        .filter_map(|l| {
            let at = l.find("sale=\"")? + "sale=\"".len();
            let rest = &l[at..];
            Some(&rest[..rest.find('"')?])
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_sales_on_one_embedded_gateway() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut setup = Setup::default();
    setup.config.max_sales = SALES;
    let gw = Arc::new(TestGateway::with(setup).await);
    let client = gw.client.clone();

    let started = Instant::now();
    let chunks = each_sale(
        &client,
        gw.admin,
        Method::PUT,
        "s",
        0..SALES,
        StatusCode::CREATED,
    )
    .await;
    let created_in = started.elapsed();
    let (first, last) = (chunks[0], *chunks.last().unwrap());
    println!(
        "created {SALES} sales in {created_in:?}: first 1000 in {first:?}, last 1000 in {last:?}"
    );
    // Creating a sale costs the same with 19,000 others as with none (a
    // cost that grew with the sales would make the last chunk many times
    // the first).
    assert!(
        last < first * 10 + Duration::from_secs(1),
        "creation slows down with the number of sales: {chunks:?}"
    );

    // The bound: one more is refused, and says why.
    let (status, body) = exchange(
        &client,
        Method::PUT,
        format!("http://{}/admin/v1/sales/one-more", gw.admin),
        sale_body(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "conflict", "{body}");
    assert!(
        v["error"].as_str().unwrap().contains("--max-sales"),
        "{body}"
    );
    // Replacing a live sale is no new sale: still allowed at the bound.
    let (status, body) = exchange(
        &client,
        Method::PUT,
        format!("http://{}/admin/v1/sales/{}", gw.admin, sale_id("s", 7)),
        sale_body(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Purchases and reads, one at a time, across the sales.
    let mut buys = Vec::new();
    let mut reads = Vec::new();
    for i in 0..200 {
        let sale = sale_id("s", (i * 97) % SALES);
        let t = Instant::now();
        let (s, v) = gw.buy(&sale, &format!("u{i}")).await;
        buys.push(t.elapsed());
        assert_eq!(s, StatusCode::OK, "{sale}: {v}");
        let t = Instant::now();
        let (s, v) = gw.get(&format!("/api/v1/sales/{sale}")).await;
        reads.push(t.elapsed());
        assert_eq!(s, StatusCode::OK, "{v}");
    }
    let (buy_median, buy_p99) = (median(buys.clone()), percentile(buys, 0.99));
    let read_median = median(reads);
    println!("purchase: median {buy_median:?}, p99 {buy_p99:?}; sale read: median {read_median:?}");
    assert!(
        buy_median < Duration::from_millis(100),
        "purchase median {buy_median:?}"
    );
    assert!(
        read_median < Duration::from_millis(100),
        "read median {read_median:?}"
    );

    // /metrics: the live sales' series, each sale's exactly once per family.
    let t = Instant::now();
    let page = gw.metrics().await;
    let scraped_in = t.elapsed();
    let series = sale_series(&page);
    println!(
        "/metrics: {} bytes, {} per-sale series, scraped in {scraped_in:?}",
        page.len(),
        series.len()
    );
    assert!(
        scraped_in < Duration::from_secs(5),
        "scrape took {scraped_in:?}"
    );
    assert_eq!(series.len(), SERIES_PER_SALE * SALES);
    assert!(
        series.iter().all(|s| s.starts_with("s-")),
        "only this gateway's sales"
    );
    // Each of the 200 sales bought from has its answers counted, and no
    // other sale has.
    let answered: std::collections::HashSet<&str> = page
        .lines()
        .filter(|l| l.starts_with("seckill_sale_requests_total{"))
        .filter_map(|l| {
            let at = l.find("sale=\"")? + "sale=\"".len();
            let rest = &l[at..];
            Some(&rest[..rest.find('"')?])
        })
        .collect();
    assert_eq!(answered.len(), 200, "{answered:?}");

    // Half the sales removed: their series leave /metrics, and their room
    // under the bound is free again.
    each_sale(
        &client,
        gw.admin,
        Method::DELETE,
        "s",
        0..SALES / 2,
        StatusCode::NO_CONTENT,
    )
    .await;
    let page = gw.metrics().await;
    let series = sale_series(&page);
    assert_eq!(series.len(), SERIES_PER_SALE * (SALES - SALES / 2));
    let removed = sale_id("s", 1);
    assert!(
        !series.contains(&removed.as_str()),
        "series of removed sale {removed} are still on /metrics"
    );
    assert!(series.contains(&sale_id("s", SALES - 1).as_str()));
    let (status, body) = exchange(
        &client,
        Method::PUT,
        format!("http://{}/admin/v1/sales/one-more", gw.admin),
        sale_body(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    drop(client);
    let t = Instant::now();
    Arc::into_inner(gw).unwrap().stop().await;
    println!("stopped in {:?}", t.elapsed());
}

/// utime + stime of a process, in clock ticks, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 3 is the first after `)`.
    fields[14 - 3].parse::<u64>().unwrap() + fields[15 - 3].parse::<u64>().unwrap()
}

/// Clock ticks per second (`getconf CLK_TCK`); 100 on every Linux we run.
const CLK_TCK: f64 = 100.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateway_process_with_twenty_thousand_sales_stays_idle() {
    let _one = ONE_AT_A_TIME.lock().await;
    let addr = || SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (public, admin, grpc) = (addr(), addr(), addr());
    let args: Vec<String> = [
        "--listen",
        &public.to_string(),
        "--admin-listen",
        &admin.to_string(),
        "--grpc-listen",
        &grpc.to_string(),
        "--admin-token",
        TOKEN,
        "--demo-sale",
        "none",
        "--max-sales",
        &SALES.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut p = Process::spawn(
        "gateway",
        env!("CARGO_BIN_EXE_gateway").as_ref(),
        &args,
        &[("SECKILL_LOG", "warn")],
    );
    let client = client();
    let up = {
        let mut up = false;
        for _ in 0..400 {
            let req = Request::get(format!("http://{admin}/healthz"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            if let Ok(Ok(r)) =
                tokio::time::timeout(Duration::from_secs(1), client.request(req)).await
            {
                if r.status() == StatusCode::OK {
                    up = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        up
    };
    assert!(up, "gateway did not come up: {}", p.log());
    let started = Instant::now();
    each_sale(
        &client,
        admin,
        Method::PUT,
        "idle",
        0..SALES,
        StatusCode::CREATED,
    )
    .await;
    println!("created {SALES} sales in {:?}", started.elapsed());
    drop(client);

    // Past the first periodic resync of the full catalog, then measure.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = p.pid().unwrap();
    let window = Duration::from_secs(2);
    let before = cpu_ticks(pid);
    let t = Instant::now();
    tokio::time::sleep(window).await;
    let used = (cpu_ticks(pid) - before) as f64 / CLK_TCK;
    let share = used / t.elapsed().as_secs_f64();
    println!("idle with {SALES} sales: {:.1} % of a core", share * 100.0);
    assert!(
        share < 0.5,
        "an idle gateway used {:.0} % of a core",
        share * 100.0
    );

    // And it still stops promptly on SIGTERM.
    let t = Instant::now();
    p.terminate();
    let status = tokio::task::spawn_blocking(move || {
        let status = p.wait_exit(Duration::from_secs(30));
        (status, p)
    })
    .await
    .unwrap();
    let (status, p) = status;
    println!("SIGTERM to exit: {:?}", t.elapsed());
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        p.log()
    );
}
