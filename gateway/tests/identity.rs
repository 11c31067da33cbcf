//! Buyer identity: with `--buyer-auth jwt` the buyer is the `sub` of a
//! verified token, with `header` the name an authenticating proxy in
//! `--trusted-proxies` sends; nothing else buys, and nobody reads another
//! buyer's requests. Real gateways on loopback; the proxy is a socket bound
//! to 127.0.0.2 (Linux routes all of 127/8 to `lo`).
//!
//! HS256 secrets are made here; the RSA and EC keys are test-only fixtures
//! (`tests/fixtures/`), and the JWKS is built from them at test time.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use gateway::config::Args;
use hyper::header::HeaderMap;
use hyper::StatusCode;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use support::{Setup, TestGateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

const RSA_PRIVATE: &[u8] = include_bytes!("fixtures/rsa-private.pem");
const RSA_PUBLIC: &[u8] = include_bytes!("fixtures/rsa-public.pem");
const EC_PRIVATE: &[u8] = include_bytes!("fixtures/ec-private.pem");
const EC_PUBLIC: &[u8] = include_bytes!("fixtures/ec-public.pem");

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims valid for ten minutes for buyer `sub`.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "exp": now() + 600})
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    encode(&Header::new(alg), claims, key).unwrap()
}

fn sign_with_kid(alg: Algorithm, key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    encode(&header, claims, key).unwrap()
}

fn hmac(secret: &[u8]) -> EncodingKey {
    EncodingKey::from_secret(secret).unwrap()
}

fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap()
}

fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_PRIVATE).unwrap()
}

/// The same token with its header replaced by `{"alg":"none","typ":"JWT"}`
/// and no signature: the classic forgery.
fn alg_none(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.")
}

fn random_secret() -> Vec<u8> {
    let mut b = [0u8; 48];
    getrandom::fill(&mut b).unwrap();
    b.to_vec()
}

/// A gateway configured as the binary would be by `args`.
async fn gateway_with(args: &[&str]) -> TestGateway {
    let args = Args::try_parse_from(std::iter::once("gateway").chain(args.iter().copied()))
        .expect("options parse");
    let mut setup = Setup::default();
    setup.config.identity = args.gateway_config().expect("valid options").identity;
    assert!(setup.config.identity.is_on());
    TestGateway::with(setup).await
}

async fn buy_as(
    gw: &TestGateway,
    sale: &str,
    token: &str,
    body: &str,
) -> (StatusCode, HeaderMap, Value) {
    let auth = format!("Bearer {token}");
    gw.purchase_with(sale, body, &[("authorization", &auth)])
        .await
}

async fn sold(gw: &TestGateway, sale: &str) -> u64 {
    gw.sale(sale).await["sold"].as_u64().unwrap()
}

fn challenge(headers: &HeaderMap) -> &str {
    headers
        .get("www-authenticate")
        .expect("a 401 carries WWW-Authenticate")
        .to_str()
        .unwrap()
}

/// Asserts a 401 for an invalid (not missing) token.
fn assert_invalid(what: &str, (s, h, v): &(StatusCode, HeaderMap, Value)) {
    assert_eq!(*s, StatusCode::UNAUTHORIZED, "{what}: {v}");
    assert_eq!(v["status"], "unauthorized", "{what}: {v}");
    assert_eq!(challenge(h), r#"Bearer error="invalid_token""#, "{what}");
}

// ------------------------------------------------------------------- JWT

#[tokio::test]
async fn hs256_tokens_buy_as_their_subject_and_forgeries_buy_nothing() {
    let dir = seckill_test_support::scratch_dir();
    let secret = random_secret();
    let file = dir.path().join("hs256");
    std::fs::write(&file, &secret).unwrap();
    let gw = gateway_with(&[
        "--buyer-auth",
        "jwt",
        "--jwt-hs256-secret-file",
        file.to_str().unwrap(),
    ])
    .await;
    gw.open_sale("hs", 100, 1).await;
    let key = hmac(&secret);

    // The buyer is `sub`; the body's user_id is optional.
    let (s, _, v) = buy_as(
        &gw,
        "hs",
        &sign(Algorithm::HS256, &key, &claims("alice")),
        "{}",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user_id"], "alice", "{v}");
    let t = sign(Algorithm::HS256, &key, &claims("bob"));
    let (s, _, v) = buy_as(&gw, "hs", &t, r#"{"user_id":"bob"}"#).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user_id"], "bob", "{v}");

    // Someone else's name in the body: 403, whoever the token is.
    let t = sign(Algorithm::HS256, &key, &claims("carol"));
    let (s, _, v) = buy_as(&gw, "hs", &t, r#"{"user_id":"alice"}"#).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["status"], "forbidden", "{v}");

    // No token at all: a bare challenge.
    let (s, h, v) = gw.purchase("hs", r#"{"user_id":"mallory"}"#).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["status"], "unauthorized", "{v}");
    assert_eq!(challenge(&h), "Bearer");
    let (s, h, _) = gw
        .purchase_with("hs", "{}", &[("authorization", "Basic bWFsbG9yeTp4")])
        .await;
    assert_eq!((s, challenge(&h)), (StatusCode::UNAUTHORIZED, "Bearer"));

    let mallory = claims("mallory");
    let other = hmac(&random_secret());
    let hour_ago = now() - 3600;
    let cases = [
        ("garbage", "not-a-jwt".to_string()),
        ("three garbage parts", "a.b.c".to_string()),
        ("wrong secret", sign(Algorithm::HS256, &other, &mallory)),
        (
            "alg none",
            alg_none(&sign(Algorithm::HS256, &key, &mallory)),
        ),
        (
            "another algorithm (RS256)",
            sign(Algorithm::RS256, &rsa_key(), &mallory),
        ),
        (
            "another HMAC size (HS512)",
            sign(Algorithm::HS512, &key, &mallory),
        ),
        (
            "expired",
            sign(
                Algorithm::HS256,
                &key,
                &json!({"sub": "mallory", "exp": hour_ago}),
            ),
        ),
        (
            "without exp",
            sign(Algorithm::HS256, &key, &json!({"sub": "mallory"})),
        ),
        (
            "without sub",
            sign(Algorithm::HS256, &key, &json!({"exp": now() + 600})),
        ),
        (
            "not yet valid",
            sign(
                Algorithm::HS256,
                &key,
                &json!({"sub": "mallory", "exp": now() + 7200, "nbf": now() + 3600}),
            ),
        ),
        (
            "a sub no body may name",
            sign(Algorithm::HS256, &key, &claims(&"m".repeat(65))),
        ),
    ];
    for (what, token) in &cases {
        assert_invalid(what, &buy_as(&gw, "hs", token, "{}").await);
        assert_invalid(
            what,
            &buy_as(&gw, "hs", token, r#"{"user_id":"mallory"}"#).await,
        );
    }
    // Within the leeway an expiry just past still counts.
    let t = sign(
        Algorithm::HS256,
        &key,
        &json!({"sub": "dave", "exp": now() - 5}),
    );
    let (s, _, v) = buy_as(&gw, "hs", &t, "{}").await;
    assert_eq!(s, StatusCode::OK, "{v}");

    assert_eq!(sold(&gw, "hs").await, 3, "only alice, bob and dave bought");
    let m = gw.metrics().await;
    assert!(
        support::sample(
            &m,
            r#"seckill_gateway_requests_total{outcome="unauthorized"}"#
        )
        .is_some_and(|n| n >= cases.len() as f64 * 2.0),
        "{m}"
    );
    assert!(
        // Other tests of this binary count into the same registry.
        support::sample(&m, r#"seckill_gateway_requests_total{outcome="forbidden"}"#)
            .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_per_user_limit_holds_the_subject_whatever_the_body_says() {
    let dir = seckill_test_support::scratch_dir();
    let secret = random_secret();
    let file = dir.path().join("hs256");
    std::fs::write(&file, &secret).unwrap();
    let gw = gateway_with(&[
        "--buyer-auth",
        "jwt",
        "--jwt-hs256-secret-file",
        file.to_str().unwrap(),
    ])
    .await;
    gw.open_sale("one-each", 100, 1).await;
    let t = sign(Algorithm::HS256, &hmac(&secret), &claims("bot"));
    let (s, _, v) = buy_as(&gw, "one-each", &t, "{}").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Invented ids no longer make new buyers.
    for i in 0..5 {
        let (s, _, v) = buy_as(&gw, "one-each", &t, &format!(r#"{{"user_id":"bot-{i}"}}"#)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    }
    let (s, _, v) = buy_as(&gw, "one-each", &t, "{}").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["status"], "limit_exceeded", "{v}");
    assert_eq!(sold(&gw, "one-each").await, 1);
    gw.stop().await;
}

/// A sale that cannot sell answers an unkeyed request from its public
/// state before the buyer is verified (a refused crowd costs no signature
/// checks); a keyed request is a possible repeat and is verified first.
#[tokio::test]
async fn a_sale_that_cannot_sell_answers_before_the_buyer_is_verified() {
    let dir = seckill_test_support::scratch_dir();
    let secret = random_secret();
    let file = dir.path().join("hs256");
    std::fs::write(&file, &secret).unwrap();
    let gw = gateway_with(&[
        "--buyer-auth",
        "jwt",
        "--jwt-hs256-secret-file",
        file.to_str().unwrap(),
    ])
    .await;
    let key = hmac(&secret);
    gw.open_sale("gone", 1, 1).await;
    let t = sign(Algorithm::HS256, &key, &claims("first"));
    assert_eq!(buy_as(&gw, "gone", &t, "{}").await.0, StatusCode::OK);
    // Sold out: 410 with no token, with garbage, even with a bad body.
    let (s, _, v) = gw.purchase("gone", "{}").await;
    assert_eq!(s, StatusCode::GONE, "{v}");
    let (s, _, v) = buy_as(&gw, "gone", "not-a-jwt", "not json").await;
    assert_eq!(s, StatusCode::GONE, "{v}");
    // A keyed request may be a repeat of a paid one: verified first.
    let (s, _, v) = gw
        .purchase_with("gone", "{}", &[("idempotency-key", "k1")])
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");

    // An empty bucket: 429 before verification, and nothing sold.
    let (s, v) = gw
        .put_sale(
            "dry",
            json!({"stock": 100, "per_user_limit": 1, "token_rate": 1,
                   "token_capacity": 1, "queue_capacity": 10}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let mut answers = Vec::new();
    for i in 0..3 {
        let t = sign(Algorithm::HS256, &key, &claims(&format!("dry-{i}")));
        answers.push(buy_as(&gw, "dry", &t, "{}").await.0);
    }
    assert!(
        answers.contains(&StatusCode::TOO_MANY_REQUESTS),
        "a 1-token bucket refuses: {answers:?}"
    );
    // (A token may come in between, once a second: then it is a 401.)
    let mut unverified = Vec::new();
    for _ in 0..5 {
        unverified.push(gw.purchase("dry", "{}").await.0);
    }
    assert!(
        unverified.contains(&StatusCode::TOO_MANY_REQUESTS),
        "no token, no verification: {unverified:?}"
    );
    let ok = answers.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(sold(&gw, "dry").await, ok as u64);

    // A sale that can sell still wants a buyer.
    gw.open_sale("open", 10, 1).await;
    let (s, _, v) = gw.purchase("open", "{}").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    gw.stop().await;
}

#[tokio::test]
async fn rs256_public_key_refuses_the_key_confusion_and_other_algorithms() {
    let path = fixture("rsa-public.pem");
    let gw = gateway_with(&[
        "--buyer-auth",
        "jwt",
        "--jwt-public-key-file",
        path.to_str().unwrap(),
    ])
    .await;
    gw.open_sale("rs", 100, 1).await;

    let (s, _, v) = buy_as(
        &gw,
        "rs",
        &sign(Algorithm::RS256, &rsa_key(), &claims("alice")),
        "{}",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user_id"], "alice", "{v}");

    let mallory = claims("mallory");
    // The public key is public: as an HMAC secret it signs anything.
    let as_secret = hmac(RSA_PUBLIC);
    let cases = [
        (
            "HS256 signed with the RSA public key",
            sign(Algorithm::HS256, &as_secret, &mallory),
        ),
        (
            "alg none",
            alg_none(&sign(Algorithm::RS256, &rsa_key(), &mallory)),
        ),
        ("ES256", sign(Algorithm::ES256, &ec_key(), &mallory)),
        (
            "PS256 with the right key",
            sign(Algorithm::PS256, &rsa_key(), &mallory),
        ),
        (
            "RS512 with the right key",
            sign(Algorithm::RS512, &rsa_key(), &mallory),
        ),
    ];
    for (what, token) in &cases {
        assert_invalid(what, &buy_as(&gw, "rs", token, "{}").await);
    }
    // A signature of other claims does not carry over.
    let good = sign(Algorithm::RS256, &rsa_key(), &mallory);
    let evil = sign(Algorithm::RS256, &rsa_key(), &claims("eve"));
    let parts: Vec<&str> = good.split('.').collect();
    let spliced = format!(
        "{}.{}.{}",
        parts[0],
        evil.split('.').nth(1).unwrap(),
        parts[2]
    );
    assert_invalid("spliced claims", &buy_as(&gw, "rs", &spliced, "{}").await);
    assert_eq!(sold(&gw, "rs").await, 1);
    gw.stop().await;
}

#[tokio::test]
async fn es256_public_key_verifies_and_issuer_and_audience_are_checked() {
    let path = fixture("ec-public.pem");
    let gw = gateway_with(&[
        "--buyer-auth",
        "jwt",
        "--jwt-public-key-file",
        path.to_str().unwrap(),
        "--jwt-issuer",
        "https://login.example",
        "--jwt-audience",
        "seckill",
    ])
    .await;
    gw.open_sale("es", 100, 1).await;
    let exp = now() + 600;
    let ok = json!({"sub": "alice", "exp": exp, "iss": "https://login.example", "aud": "seckill"});
    let (s, _, v) = buy_as(&gw, "es", &sign(Algorithm::ES256, &ec_key(), &ok), "{}").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let list = json!({"sub": "bob", "exp": exp, "iss": "https://login.example", "aud": ["other", "seckill"]});
    let (s, _, v) = buy_as(&gw, "es", &sign(Algorithm::ES256, &ec_key(), &list), "{}").await;
    assert_eq!(s, StatusCode::OK, "an audience list naming us: {v}");

    let cases = [
        (
            "wrong issuer",
            json!({"sub": "m", "exp": exp, "iss": "https://evil.example", "aud": "seckill"}),
        ),
        (
            "no issuer",
            json!({"sub": "m", "exp": exp, "aud": "seckill"}),
        ),
        (
            "wrong audience",
            json!({"sub": "m", "exp": exp, "iss": "https://login.example", "aud": "shop"}),
        ),
        (
            "no audience",
            json!({"sub": "m", "exp": exp, "iss": "https://login.example"}),
        ),
    ];
    for (what, c) in &cases {
        assert_invalid(
            what,
            &buy_as(&gw, "es", &sign(Algorithm::ES256, &ec_key(), c), "{}").await,
        );
    }
    let as_secret = hmac(EC_PUBLIC);
    assert_invalid(
        "HS256 signed with the EC public key",
        &buy_as(&gw, "es", &sign(Algorithm::HS256, &as_secret, &ok), "{}").await,
    );
    assert_eq!(sold(&gw, "es").await, 2);
    gw.stop().await;
}

#[tokio::test]
async fn a_jwks_picks_the_key_by_kid() {
    let dir = seckill_test_support::scratch_dir();
    let mut rsa = Jwk::from_encoding_key(&rsa_key(), Algorithm::RS256).unwrap();
    rsa.common.key_id = Some("rsa-1".into());
    let mut ec = Jwk::from_encoding_key(&ec_key(), Algorithm::ES256).unwrap();
    ec.common.key_id = Some("ec-1".into());
    let file = dir.path().join("jwks.json");
    std::fs::write(
        &file,
        serde_json::to_vec(&JwkSet {
            keys: vec![rsa, ec],
        })
        .unwrap(),
    )
    .unwrap();
    let gw = gateway_with(&["--buyer-auth", "jwt", "--jwks-file", file.to_str().unwrap()]).await;
    gw.open_sale("jwks", 100, 1).await;

    let t = sign_with_kid(Algorithm::RS256, &rsa_key(), "rsa-1", &claims("alice"));
    let (s, _, v) = buy_as(&gw, "jwks", &t, "{}").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let t = sign_with_kid(Algorithm::ES256, &ec_key(), "ec-1", &claims("bob"));
    let (s, _, v) = buy_as(&gw, "jwks", &t, "{}").await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let m = claims("mallory");
    let cases = [
        (
            "unknown kid",
            sign_with_kid(Algorithm::RS256, &rsa_key(), "rsa-2", &m),
        ),
        (
            "no kid among two keys",
            sign(Algorithm::RS256, &rsa_key(), &m),
        ),
        (
            "the other key's kid",
            sign_with_kid(Algorithm::ES256, &ec_key(), "rsa-1", &m),
        ),
        (
            "HS256 with the RSA key as secret",
            sign_with_kid(Algorithm::HS256, &hmac(RSA_PUBLIC), "rsa-1", &m),
        ),
        (
            "alg none",
            alg_none(&sign_with_kid(Algorithm::RS256, &rsa_key(), "rsa-1", &m)),
        ),
    ];
    for (what, token) in &cases {
        assert_invalid(what, &buy_as(&gw, "jwks", token, "{}").await);
    }
    assert_eq!(sold(&gw, "jwks").await, 2);
    gw.stop().await;
}

#[tokio::test]
async fn a_request_is_readable_by_its_own_buyer_only() {
    let dir = seckill_test_support::scratch_dir();
    let secret = random_secret();
    let file = dir.path().join("hs256");
    std::fs::write(&file, &secret).unwrap();
    let gw = gateway_with(&[
        "--buyer-auth",
        "jwt",
        "--jwt-hs256-secret-file",
        file.to_str().unwrap(),
    ])
    .await;
    gw.open_sale("mine", 100, 1).await;
    let key = hmac(&secret);
    let alice = sign(Algorithm::HS256, &key, &claims("alice"));
    let bob = sign(Algorithm::HS256, &key, &claims("bob"));
    let (s, _, v) = buy_as(&gw, "mine", &alice, "{}").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let path = format!("/api/v1/requests/{}", v["request_id"].as_str().unwrap());

    let (s, _, v) = get_as(&gw, &path, Some(&alice)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["user_id"].as_str(), v["status"].as_str()),
        (Some("alice"), Some("success"))
    );
    // Another buyer: as if it did not exist.
    let (s, _, v) = get_as(&gw, &path, Some(&bob)).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let unknown = format!("{}0", &path[..path.len() - 1]);
    let (unknown_s, _, unknown_v) = get_as(&gw, &unknown, Some(&bob)).await;
    assert_eq!(
        (s, &v),
        (unknown_s, &unknown_v),
        "the same answer as an unknown id"
    );
    // No buyer, or a forged one: 401.
    let (s, h, _) = get_as(&gw, &path, None).await;
    assert_eq!((s, challenge(&h)), (StatusCode::UNAUTHORIZED, "Bearer"));
    assert_invalid(
        "alg none",
        &get_as(&gw, &path, Some(&alg_none(&alice))).await,
    );
    gw.stop().await;
}

async fn get_as(
    gw: &TestGateway,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, HeaderMap, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    gw.request(
        hyper::Method::GET,
        gw.public,
        path,
        &headers,
        bytes::Bytes::new(),
    )
    .await
}

// ------------------------------------------------------- trusted header

/// One raw HTTP/1.1 exchange from the client address `from`.
async fn raw_from(
    from: &str,
    to: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, String, Value) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut conn = socket.connect(to).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += "\r\n";
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(30), conn.read_to_string(&mut answer))
        .await
        .expect("answered within 30 s")
        .unwrap();
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

#[tokio::test]
async fn the_buyer_header_counts_from_a_trusted_proxy_only() {
    let gw = gateway_with(&[
        "--buyer-auth",
        "header",
        "--user-header",
        "x-user-id",
        "--trusted-proxies",
        "127.0.0.2/32",
    ])
    .await;
    gw.open_sale("proxied", 100, 1).await;
    let purchase = "/api/v1/sales/proxied/purchase";
    let to = gw.public;

    let (s, _, v) = raw_from(
        "127.0.0.2",
        to,
        "POST",
        purchase,
        &[("x-user-id", "alice")],
        "{}",
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user_id"], "alice", "{v}");
    let request = format!("/api/v1/requests/{}", v["request_id"].as_str().unwrap());
    let (s, _, v) = raw_from(
        "127.0.0.2",
        to,
        "POST",
        purchase,
        &[("x-user-id", "bob")],
        r#"{"user_id":"bob"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // The body cannot name someone else.
    let (s, _, v) = raw_from(
        "127.0.0.2",
        to,
        "POST",
        purchase,
        &[("x-user-id", "carol")],
        r#"{"user_id":"alice"}"#,
    )
    .await;
    assert_eq!(
        (s, v["status"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{v}"
    );

    // Not from the proxy: 401, header or not.
    for headers in [&[("x-user-id", "mallory")][..], &[]] {
        let (s, head, v) = raw_from(
            "127.0.0.1",
            to,
            "POST",
            purchase,
            headers,
            r#"{"user_id":"mallory"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
        assert_eq!(v["status"], "unauthorized", "{v}");
        assert!(head.contains("\r\nwww-authenticate:"), "{head}");
    }
    // From the proxy, but it named nobody (or twice, or nonsense).
    let two = [("x-user-id", "alice"), ("x-user-id", "mallory")];
    for headers in [&[][..], &two[..], &[("x-user-id", "")][..]] {
        let (s, _, v) = raw_from(
            "127.0.0.2",
            to,
            "POST",
            purchase,
            headers,
            r#"{"user_id":"alice"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{headers:?}: {v}");
    }

    // Reading a request: its buyer through the proxy only.
    let (s, _, v) = raw_from(
        "127.0.0.2",
        to,
        "GET",
        &request,
        &[("x-user-id", "alice")],
        "",
    )
    .await;
    assert_eq!(
        (s, v["user_id"].as_str()),
        (StatusCode::OK, Some("alice")),
        "{v}"
    );
    let (s, _, v) = raw_from(
        "127.0.0.2",
        to,
        "GET",
        &request,
        &[("x-user-id", "bob")],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _, v) = raw_from(
        "127.0.0.1",
        to,
        "GET",
        &request,
        &[("x-user-id", "alice")],
        "",
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");

    assert_eq!(sold(&gw, "proxied").await, 2);
    gw.stop().await;
}

// ------------------------------------------------------- configuration

#[test]
fn bad_identity_configuration_exits_64_with_one_line() {
    let dir = seckill_test_support::scratch_dir();
    let short = dir.path().join("short");
    std::fs::write(&short, "too short").unwrap();
    let bad_pem = dir.path().join("bad.pem");
    std::fs::write(
        &bad_pem,
        "-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let not_jwks = dir.path().join("jwks.json");
    std::fs::write(&not_jwks, r#"{"keys": []}"#).unwrap();
    let missing = dir.path().join("missing");
    let p = |p: &Path| p.to_str().unwrap().to_string();
    let cases: Vec<Vec<String>> = vec![
        vec!["--buyer-auth".into(), "jwt".into()],
        vec![
            "--buyer-auth".into(),
            "jwt".into(),
            "--jwt-hs256-secret-file".into(),
            p(&missing),
        ],
        vec![
            "--buyer-auth".into(),
            "jwt".into(),
            "--jwt-hs256-secret-file".into(),
            p(&short),
        ],
        vec![
            "--buyer-auth".into(),
            "jwt".into(),
            "--jwt-public-key-file".into(),
            p(&bad_pem),
        ],
        vec![
            "--buyer-auth".into(),
            "jwt".into(),
            "--jwt-public-key-file".into(),
            p(&fixture("rsa-private.pem")),
        ],
        vec![
            "--buyer-auth".into(),
            "jwt".into(),
            "--jwt-public-key-file".into(),
            p(&fixture("rsa1024-public.pem")),
        ],
        vec![
            "--buyer-auth".into(),
            "jwt".into(),
            "--jwt-public-key-file".into(),
            p(&fixture("ec-p384-public.pem")),
        ],
        vec![
            "--buyer-auth".into(),
            "jwt".into(),
            "--jwks-file".into(),
            p(&not_jwks),
        ],
        vec![
            "--buyer-auth".into(),
            "jwt".into(),
            "--jwks-file".into(),
            p(&not_jwks),
            "--jwt-public-key-file".into(),
            p(&fixture("rsa-public.pem")),
        ],
        vec![
            "--jwt-public-key-file".into(),
            p(&fixture("rsa-public.pem")),
        ],
        vec![
            "--buyer-auth".into(),
            "header".into(),
            "--trusted-proxies".into(),
            "10.0.0.0/8".into(),
        ],
        vec![
            "--buyer-auth".into(),
            "header".into(),
            "--user-header".into(),
            "x-user-id".into(),
        ],
        vec![
            "--buyer-auth".into(),
            "header".into(),
            "--user-header".into(),
            "bad header".into(),
            "--trusted-proxies".into(),
            "10.0.0.0/8".into(),
        ],
        vec!["--user-header".into(), "x-user-id".into()],
        vec!["--buyer-auth".into(), "password".into()],
    ];
    for args in &cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(args)
            .env("SECKILL_LOG", "warn")
            .env("SECKILL_DATA_DIR", "none")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("gateway: "), "{args:?}: {stderr}");
    }
}

#[test]
fn buyer_auth_none_is_the_default() {
    let c = Args::try_parse_from(["gateway"])
        .unwrap()
        .gateway_config()
        .unwrap();
    assert!(!c.identity.is_on());
}
