//! Per-client limits: what one client address can take from the others.
//! Real gateways on loopback; other client addresses are sockets bound to
//! 127.0.0.2 and 127.0.0.3 (Linux routes all of 127/8 to `lo`).

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Setup, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A connection to `to` from the client address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().unwrap())?;
    socket.connect(to).await
}

/// One raw purchase from the client address `from`, with extra header
/// lines: the status (0 when the connection closed without an answer),
/// the head in lower case, and the body.
async fn purchase_from(
    from: &str,
    to: SocketAddr,
    sale: &str,
    user: &str,
    headers: &str,
) -> (u16, String, Value) {
    let mut conn = connect_from(from, to).await.unwrap();
    let body = format!(r#"{{"user_id":"{user}"}}"#);
    let head = format!(
        "POST /api/v1/sales/{sale}/purchase HTTP/1.1\r\nHost: {to}\r\n\
         Content-Type: application/json\r\n{headers}Content-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    if conn.write_all(head.as_bytes()).await.is_err() {
        return (0, String::new(), Value::Null);
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "answered within 10 s");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let Some((head, body)) = answer.split_once("\r\n\r\n") else {
        return (0, String::new(), Value::Null);
    };
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    (code, head.to_lowercase(), body)
}

fn retry_after(head: &str) -> Option<u64> {
    head.lines()
        .find_map(|l| l.strip_prefix("retry-after:"))
        .and_then(|v| v.trim().parse().ok())
}

/// True when the server closed `conn` (after a refusal or without a word)
/// within `wait`; false when it is still open and idle.
async fn closed_by_server(conn: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(wait, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(n)) => {
                // Anything it says before closing is a 429.
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with("HTTP/1.1 429"), "{text}");
            }
        }
    }
}

fn is_address_limited(answer: &(u16, String, Value)) -> bool {
    answer.0 == 429 && answer.2["reason"] == "address_limit"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_of_one_address_do_not_lock_out_another() {
    let mut setup = Setup::default();
    setup.config.max_connections = 32;
    setup.config.max_connections_per_ip = 8;
    // Idle connections that never send a header are held for long: the
    // slow client the per-address cap is for.
    setup.config.header_read_timeout = Duration::from_secs(60);
    let gw = TestGateway::with(setup).await;
    gw.open_sale("conns", 100, 1).await;

    // More idle connections than the whole listener takes, from one address.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(connect_from("127.0.0.1", gw.public).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut open = Vec::new();
    for mut conn in idle {
        if !closed_by_server(&mut conn, Duration::from_millis(200)).await {
            open.push(conn);
        }
    }
    assert_eq!(open.len(), 8, "the address keeps its cap, no more");

    // Another address buys at once, several times over.
    for i in 0..5 {
        let started = Instant::now();
        let answer = purchase_from("127.0.0.3", gw.public, "conns", &format!("b{i}"), "").await;
        assert_eq!(answer.0, 200, "{answer:?}");
        assert_eq!(answer.2["status"], "success", "{answer:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "not queued");
    }

    // The capped address itself is refused at once while it holds the cap...
    let mut extra = connect_from("127.0.0.1", gw.public).await.unwrap();
    assert!(closed_by_server(&mut extra, Duration::from_secs(2)).await);
    // ...and gets a connection again once one of its own closed.
    drop(open.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = purchase_from("127.0.0.1", gw.public, "conns", "a0", "").await;
    assert_eq!(answer.0, 200, "{answer:?}");

    drop(open);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_from_one_address_is_held_to_its_rate_while_others_buy() {
    let mut setup = Setup::default();
    setup.config.ip_rate_per_sec = 2;
    setup.config.ip_burst = 20;
    let gw = TestGateway::with(setup).await;
    gw.open_sale("rate", 1000, 1).await;

    let started = Instant::now();
    let public = gw.public;
    let spike: Vec<_> = (0..200)
        .map(|i| {
            tokio::spawn(async move {
                purchase_from("127.0.0.1", public, "rate", &format!("s{i}"), "").await
            })
        })
        .collect();
    let mut others = Vec::new();
    for i in 0..10 {
        others.push(purchase_from("127.0.0.3", public, "rate", &format!("o{i}"), "").await);
    }
    let mut spike_answers = Vec::new();
    for s in spike {
        spike_answers.push(s.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();

    for answer in &others {
        assert_eq!(answer.0, 200, "the other address buys: {answer:?}");
    }
    let admitted = spike_answers
        .iter()
        .filter(|a| !is_address_limited(a))
        .count();
    let allowed = 20 + (2.0 * elapsed).ceil() as usize;
    assert!(
        (1..=allowed).contains(&admitted),
        "{admitted} of the spike admitted, at most {allowed}"
    );
    for answer in spike_answers.iter().filter(|a| is_address_limited(a)) {
        assert_eq!(answer.2["status"], "rate_limited", "{answer:?}");
        assert!(
            retry_after(&answer.1).is_some_and(|s| (1..=60).contains(&s)),
            "Retry-After: {answer:?}"
        );
    }
    for answer in spike_answers.iter().filter(|a| !is_address_limited(a)) {
        assert_eq!(answer.0, 200, "{answer:?}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
    let mut setup = Setup::default();
    setup.config.ip_rate_per_sec = 1;
    setup.config.ip_burst = 1;
    let gw = TestGateway::with(setup).await;
    gw.open_sale("xff", 100, 1).await;

    let first = purchase_from(
        "127.0.0.1",
        gw.public,
        "xff",
        "u1",
        "X-Forwarded-For: 10.0.0.1\r\n",
    )
    .await;
    assert_eq!(first.0, 200, "{first:?}");
    // Another claimed address changes nothing: the peer is the client.
    for headers in [
        "X-Forwarded-For: 10.0.0.2\r\n",
        "Forwarded: for=10.0.0.3\r\n",
        "",
    ] {
        let answer = purchase_from("127.0.0.1", gw.public, "xff", "u2", headers).await;
        assert!(is_address_limited(&answer), "{headers:?}: {answer:?}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_right_most_untrusted_address_counts() {
    let mut setup = Setup::default();
    setup.config.ip_rate_per_sec = 1;
    setup.config.ip_burst = 1;
    setup.config.trusted_proxies = vec!["127.0.0.2/32".parse().unwrap()];
    let gw = TestGateway::with(setup).await;
    gw.open_sale("proxy", 100, 1).await;
    let buy = |user: &'static str, headers: &'static str| {
        purchase_from("127.0.0.2", gw.public, "proxy", user, headers)
    };

    // The proxy appended 10.0.0.1; what the client wrote before it does
    // not count.
    let a = buy("u1", "X-Forwarded-For: 203.0.113.9, 10.0.0.1\r\n").await;
    assert_eq!(a.0, 200, "{a:?}");
    let a = buy("u2", "X-Forwarded-For: 10.0.0.1\r\n").await;
    assert!(is_address_limited(&a), "same client: {a:?}");
    let a = buy("u3", "X-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n").await;
    assert_eq!(a.0, 200, "another client: {a:?}");
    // Trusted hops are skipped: the client is the one before them.
    let a = buy("u4", "X-Forwarded-For: 10.0.0.2, 127.0.0.2\r\n").await;
    assert!(is_address_limited(&a), "{a:?}");
    // RFC 7239 `Forwarded` when there is no X-Forwarded-For.
    let a = buy("u5", "Forwarded: for=\"10.0.0.4:4711\";proto=http\r\n").await;
    assert_eq!(a.0, 200, "{a:?}");
    let a = buy("u6", "Forwarded: for=203.0.113.9, for=10.0.0.4\r\n").await;
    assert!(is_address_limited(&a), "{a:?}");
    // Without a header the proxy is the client.
    let a = buy("u7", "").await;
    assert_eq!(a.0, 200, "{a:?}");

    // A client straight from another address is itself, whatever it claims.
    let direct = purchase_from(
        "127.0.0.3",
        gw.public,
        "proxy",
        "u8",
        "X-Forwarded-For: 10.0.0.9\r\n",
    )
    .await;
    assert_eq!(direct.0, 200, "{direct:?}");
    let direct = purchase_from(
        "127.0.0.3",
        gw.public,
        "proxy",
        "u9",
        "X-Forwarded-For: 10.0.0.8\r\n",
    )
    .await;
    assert!(is_address_limited(&direct), "{direct:?}");
    gw.stop().await;
}
