//! Closed-loop throughput: C connections, each sending its next request as
//! soon as the previous answer is in, for a fixed time. This finds the most
//! a server can answer (which an open-model run at a fixed rate cannot);
//! its latencies are *not* corrected and say little on their own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use crate::model::LatencyStats;
use crate::record::{histogram, record, stats};
use crate::summary::fmt_us;

/// A closed-loop measurement.
#[derive(Clone, Debug)]
pub struct ThroughputConfig {
    pub url: String,
    pub method: Method,
    /// Request body; every `{n}` becomes a counter unique to the request.
    pub body: Option<String>,
    pub headers: Vec<(String, String)>,
    /// `Authorization` values; request k sends value k mod len (none when
    /// empty).
    pub bearer: Vec<String>,
    pub connections: usize,
    pub duration: Duration,
    /// Time at full load before measuring starts.
    pub warmup: Duration,
}

/// What a closed-loop measurement found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThroughputResult {
    pub requests: u64,
    /// Transport failures (each costs a reconnect).
    pub errors: u64,
    pub duration_s: f64,
    pub rps: f64,
    /// Answers by HTTP status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Raw latency (closed loop: no correction is possible).
    pub latency: LatencyStats,
}

impl ThroughputResult {
    /// One `key=value` line, easy to read and to parse in scripts.
    pub fn line(&self) -> String {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(c, n)| format!("{c}:{n}"))
            .collect();
        format!(
            "rps={:.0} requests={} errors={} duration={:.2}s p50={} p99={} max={} statuses={}",
            self.rps,
            self.requests,
            self.errors,
            self.duration_s,
            fmt_us(self.latency.p50_us),
            fmt_us(self.latency.p99_us),
            fmt_us(self.latency.max_us),
            statuses.join(",")
        )
    }
}

struct Shared {
    uri: Uri,
    authority: String,
    cfg: ThroughputConfig,
    counter: AtomicU64,
    measure_from: Instant,
    until: Instant,
}

#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    statuses: BTreeMap<u16, u64>,
    latency: Option<hdrhistogram::Histogram<u64>>,
}

/// Runs the measurement.
pub async fn run(cfg: ThroughputConfig) -> anyhow::Result<ThroughputResult> {
    anyhow::ensure!(cfg.connections > 0, "connections must be at least 1");
    let uri: Uri = cfg
        .url
        .parse()
        .with_context(|| format!("'{}' is not a URL", cfg.url))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "'{}' must be an http:// URL",
        cfg.url
    );
    let authority = uri
        .authority()
        .context("the URL has no host")?
        .as_str()
        .to_string();
    // Fail fast when nothing listens.
    TcpStream::connect(&authority)
        .await
        .with_context(|| format!("cannot connect to {authority}"))?;
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let shared = Arc::new(Shared {
        uri,
        authority,
        counter: AtomicU64::new(0),
        measure_from,
        until: measure_from + cfg.duration,
        cfg,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..shared.cfg.connections {
        tasks.spawn(connection(shared.clone()));
    }
    let mut total = Tally::default();
    let mut latency = histogram();
    while let Some(t) = tasks.join_next().await {
        let t = t.context("a connection task panicked")?;
        total.requests += t.requests;
        total.errors += t.errors;
        for (c, n) in t.statuses {
            *total.statuses.entry(c).or_default() += n;
        }
        if let Some(h) = t.latency {
            latency.add(&h).expect("same bounds");
        }
    }
    let duration = shared.cfg.duration.as_secs_f64();
    Ok(ThroughputResult {
        requests: total.requests,
        errors: total.errors,
        duration_s: duration,
        rps: total.requests as f64 / duration.max(1e-3),
        statuses: total.statuses,
        latency: stats(&latency),
    })
}

/// One connection's loop; reconnects after a transport error.
///
/// The reconnects stay hand-written rather than going through the backoff
/// the buyers use: this is the measurement itself (a closed loop at full
/// speed), each failure counts as an error, and a growing pause would
/// lower the very rate being measured. Only a refused connect pauses, a
/// fixed 10 ms, so a target that is down is not spun on.
async fn connection(s: Arc<Shared>) -> Tally {
    let mut tally = Tally {
        latency: Some(histogram()),
        ..Default::default()
    };
    let path = s
        .uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    'connect: while Instant::now() < s.until {
        let Ok(stream) = TcpStream::connect(&s.authority).await else {
            count_error(&s, &mut tally);
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await
        else {
            count_error(&s, &mut tally);
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < s.until {
            let mut req = Request::builder()
                .method(s.cfg.method.clone())
                .uri(path.as_str())
                .header(HOST, s.authority.as_str());
            for (k, v) in &s.cfg.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let n = s.counter.fetch_add(1, Ordering::Relaxed);
            if !s.cfg.bearer.is_empty() {
                let token = &s.cfg.bearer[(n % s.cfg.bearer.len() as u64) as usize];
                req = req.header(AUTHORIZATION, token.as_str());
            }
            let body = match &s.cfg.body {
                Some(b) => {
                    req = req.header(CONTENT_TYPE, "application/json");
                    if b.contains("{n}") {
                        Bytes::from(b.replace("{n}", &n.to_string()))
                    } else {
                        Bytes::from(b.clone())
                    }
                }
                None => Bytes::new(),
            };
            let Ok(req) = req.body(Full::new(body)) else {
                return tally;
            };
            if sender.ready().await.is_err() {
                count_error(&s, &mut tally);
                continue 'connect;
            }
            let sent = Instant::now();
            let answer = async {
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                resp.into_body().collect().await?;
                Ok::<_, hyper::Error>(status)
            }
            .await;
            let done = Instant::now();
            match answer {
                Ok(status) if sent >= s.measure_from && done <= s.until => {
                    tally.requests += 1;
                    *tally.statuses.entry(status.as_u16()).or_default() += 1;
                    if let Some(h) = tally.latency.as_mut() {
                        record(h, done - sent);
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    count_error(&s, &mut tally);
                    continue 'connect;
                }
            }
        }
    }
    tally
}

fn count_error(s: &Shared, tally: &mut Tally) {
    let now = Instant::now();
    if now >= s.measure_from && now <= s.until {
        tally.errors += 1;
    }
}
