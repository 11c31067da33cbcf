//! What a client cannot do to others: guess their request ids, or try admin
//! tokens without end. Real gateways on loopback; a second client address
//! is a socket bound to 127.0.0.2 (Linux routes all of 127/8 to `lo`).

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;

use hyper::StatusCode;
use serde_json::{json, Value};
use support::{TestGateway, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// One raw HTTP/1.1 exchange from the client address `from`: the status,
/// the head as text, and the body.
async fn request_from(
    from: &str,
    to: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
) -> (StatusCode, String, Value) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut conn = socket.connect(to).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {to}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole response");
    let code: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    (
        StatusCode::from_u16(code).unwrap(),
        head.to_lowercase(),
        body,
    )
}

async fn admin_from(gw: &TestGateway, from: &str, token: &str) -> (StatusCode, String, Value) {
    request_from(from, gw.admin, "GET", "/admin/v1/sales", token).await
}

#[tokio::test]
async fn failed_admin_logins_are_limited_per_client_address() {
    let gw = TestGateway::start().await;
    for i in 1..=10 {
        let (s, _, v) = admin_from(&gw, "127.0.0.1", &format!("guess-{i}")).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "attempt {i}: {v}");
    }
    let (s, head, v) = admin_from(&gw, "127.0.0.1", "guess-11").await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v}");
    assert_eq!(v["status"], "rate_limited", "{v}");
    assert!(v["error"].is_string(), "{v}");
    let retry_after: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");

    // Until the minute is over the address is refused, right token or not:
    // a guess that happens to be right tells the guesser nothing.
    let (s, _, _) = admin_from(&gw, "127.0.0.1", TOKEN).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);

    // Another address is not held back by the first one's failures...
    let (s, _, v) = admin_from(&gw, "127.0.0.2", TOKEN).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _, _) = admin_from(&gw, "127.0.0.2", "wrong").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "its own count starts at one");
    // ...and its success lifts nothing from the first.
    let (s, _, _) = admin_from(&gw, "127.0.0.1", TOKEN).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);

    // The public API and the ops endpoints do not share the admin limit.
    let (s, _, _) = request_from("127.0.0.1", gw.admin, "GET", "/healthz", "x").await;
    assert_eq!(s, StatusCode::OK);
    gw.stop().await;
}

#[tokio::test]
async fn gateways_in_one_process_keep_separate_counts() {
    let a = TestGateway::start().await;
    let b = TestGateway::start().await;
    for _ in 0..11 {
        admin_from(&a, "127.0.0.3", "wrong").await;
    }
    assert_eq!(
        admin_from(&a, "127.0.0.3", TOKEN).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(admin_from(&b, "127.0.0.3", TOKEN).await.0, StatusCode::OK);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn request_ids_cannot_be_derived_from_one_another() {
    let gw = TestGateway::start().await;
    let (s, v) = gw
        .put_sale(
            "ids",
            json!({"stock": 1000, "token_rate": 100000, "token_capacity": 1000}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let mut random = HashSet::new();
    let mut last: Option<String> = None;
    for i in 0..50 {
        let (_, v) = gw.buy("ids", &format!("u{i}")).await;
        let id = v["request_id"].as_str().expect("a request id").to_string();
        let part = id
            .strip_prefix("ids.")
            .expect("the sale prefix")
            .to_string();
        assert!(part.len() >= 24, "at least 96 bits: {id}");
        assert!(
            part.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "a plain key part: {id}"
        );
        if let Some(prev) = &last {
            let same = prev.bytes().zip(part.bytes()).filter(|(a, b)| a == b);
            assert!(same.count() < part.len() / 2, "{prev} then {part}");
        }
        assert!(random.insert(part.clone()), "{id} repeats");
        last = Some(part);
    }
    // A neighbour of a real id is nobody's request.
    let real = format!("ids.{}", last.unwrap());
    let mut guess = real.clone().into_bytes();
    let end = guess.len() - 1;
    guess[end] = if guess[end] == b'0' { b'1' } else { b'0' };
    let guess = String::from_utf8(guess).unwrap();
    assert_eq!(
        gw.get(&format!("/api/v1/requests/{real}")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        gw.get(&format!("/api/v1/requests/{guess}")).await.0,
        StatusCode::NOT_FOUND
    );
    gw.stop().await;
}
