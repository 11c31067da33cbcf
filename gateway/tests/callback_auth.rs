//! The callback is authenticated: a `Callback/Complete` without the shared
//! token, or with another one, is refused with `UNAUTHENTICATED`, counted,
//! and answers no waiting buyer, while the real service's results still
//! arrive; distributed processes without a token refuse to start, and the
//! token never shows in what they print.

mod procs;
mod support;

use std::time::Duration;

use procs::{redis_args, Gw, Svc, CALLBACK_TOKEN};
use seckill_proto::pb;
use seckill_proto::pb::callback_client::CallbackClient;
use seckill_redis::keys;
use seckill_test_support::process::{binary, wait_until, Process};
use seckill_test_support::{scratch_dir, RedisServer, Reply};
use serde_json::json;
use support::{sample, Setup, TestGateway};
use tonic::Code;

const UNAUTHENTICATED: &str = r#"seckill_callback_total{result="unauthenticated"}"#;

/// A success for `request_id` that no service decided.
fn forged(request_id: &str, sale: &str) -> pb::CompleteRequest {
    pb::CompleteRequest {
        results: vec![pb::RequestResult {
            request_id: request_id.into(),
            sale_id: sale.into(),
            user_id: "buyer".into(),
            outcome: pb::Outcome::Success as i32,
            order_id: "forged-order".into(),
            quantity: 1,
            reason: String::new(),
            traceparent: String::new(),
        }],
    }
}

/// Sends `request` to the callback server at `grpc`, with `authorization`
/// when given; the status code of the answer.
async fn complete(
    grpc: std::net::SocketAddr,
    request: pb::CompleteRequest,
    auth: Option<&str>,
) -> Code {
    let mut client = CallbackClient::connect(format!("http://{grpc}"))
        .await
        .expect("the callback server accepts connections");
    let mut request = tonic::Request::new(request);
    if let Some(auth) = auth {
        request
            .metadata_mut()
            .insert("authorization", auth.parse().unwrap());
    }
    match client.complete(request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// The forgeries every test tries: no token, a wrong one, the right one
/// without its scheme.
fn forgeries() -> [Option<String>; 3] {
    [
        None,
        Some("Bearer not-the-callback-token-at-all".into()),
        Some(CALLBACK_TOKEN.into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_result_is_refused_and_the_buyer_gets_the_real_one() {
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let gw = Gw::start("gateway", &store, &["--request-timeout-ms", "10000"]);
    // A slow service: the purchase stays parked while the forgeries land.
    let svc = Svc::start("service", &store, &["--work-delay-ms", "1500"]);
    let sale = json!({
        "stock": 5,
        "per_user_limit": 1,
        "token_rate": 1000,
        "token_capacity": 100,
        "queue_capacity": 1000,
    });
    assert_eq!(gw.put_sale("f", &sale), 201);
    assert!(wait_until(Duration::from_secs(5), || gw
        .get("/api/v1/sales/f")
        .0
        == 200));
    std::thread::sleep(Duration::from_millis(300));

    let buyer = {
        let public = gw.public;
        std::thread::spawn(move || {
            let body = r#"{"user_id":"buyer"}"#;
            seckill_test_support::process::http(
                public,
                "POST",
                "/api/v1/sales/f/purchase",
                &[("content-type", "application/json")],
                body,
            )
        })
    };
    // The parked request's id, from its record in the store.
    let mut request_id = None;
    assert!(wait_until(Duration::from_secs(5), || {
        let pattern = keys::request("f", "*");
        if let Ok(Reply::Array(Some(found))) = redis.command(&["KEYS", &pattern]) {
            if let Some(Reply::Bulk(Some(key))) = found.first() {
                request_id = key.rsplit_once(":req:").map(|(_, id)| id.to_string());
            }
        }
        request_id.is_some()
    }));
    let request_id = request_id.unwrap();

    for auth in forgeries() {
        let code = complete(gw.grpc, forged(&request_id, "f"), auth.as_deref()).await;
        assert_eq!(code, Code::Unauthenticated, "{auth:?}");
    }
    assert!(!buyer.is_finished(), "a forgery answered the buyer");

    let (status, body) = tokio::task::spawn_blocking(move || buyer.join().unwrap())
        .await
        .unwrap()
        .expect("the buyer is answered");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "success", "{body}");
    assert_ne!(body["order_id"], "forged-order", "{body}");
    assert_eq!(gw.sold("f"), (1, 4));
    assert_eq!(gw.metric(UNAUTHENTICATED), Some(3.0));
    assert_eq!(svc.metric(r#"seckill_callback_total{result="error"}"#), 0.0);
    // The same, under the names that say which side counts.
    let received = |r: &str| {
        gw.metric(&format!(
            r#"seckill_callbacks_received_total{{result="{r}"}}"#
        ))
    };
    assert_eq!(received("unauthenticated"), Some(3.0));
    assert_eq!(received("ok"), Some(1.0));
    assert_eq!(
        svc.metric(r#"seckill_callbacks_sent_total{result="ok"}"#),
        1.0
    );
    assert_eq!(
        svc.metric(r#"seckill_callbacks_sent_total{result="error"}"#),
        0.0
    );

    for log in [gw.p.log(), svc.p.log()] {
        assert!(
            !log.contains(CALLBACK_TOKEN),
            "the token was printed:\n{log}"
        );
    }
}

#[tokio::test]
async fn the_embedded_grpc_listener_takes_only_its_own_results() {
    // Calling back to itself over gRPC: real results arrive with its own
    // random token, forged ones are refused.
    let mut setup = Setup::default();
    setup.options.callback_over_grpc = true;
    let gw = TestGateway::with(setup).await;
    gw.open_sale("e", 2, 1).await;
    let before = sample(&gw.metrics().await, UNAUTHENTICATED).unwrap_or(0.0);
    for auth in forgeries() {
        let code = complete(gw.grpc, forged("e.1", "e"), auth.as_deref()).await;
        assert_eq!(code, Code::Unauthenticated, "{auth:?}");
    }
    let (status, v) = gw.buy("e", "a").await;
    assert_eq!(
        (status.as_u16(), &v["status"]),
        (200, &json!("success")),
        "{v}"
    );
    let after = sample(&gw.metrics().await, UNAUTHENTICATED).unwrap();
    assert!(after - before >= 3.0, "{before} -> {after}");
    gw.stop().await;

    // In-process delivery: the gRPC listener takes no result at all.
    let gw = TestGateway::start().await;
    let code = complete(gw.grpc, forged("demo.1", "demo"), None).await;
    assert_eq!(code, Code::Unauthenticated);
    gw.stop().await;
}

/// Runs `bin` with `args` and `envs` until it exits; its status and output.
fn run(bin: &str, args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut p = Process::spawn(bin, &binary(bin), &args, envs);
    let code = p.wait_exit(Duration::from_secs(10)).and_then(|s| s.code());
    (code, p.log())
}

/// Extra arguments, extra environment, and what the error line must say.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn distributed_processes_need_a_valid_token() {
    let scratch = scratch_dir();
    let missing = scratch.path().join("no-such-token");
    let missing = missing.to_str().unwrap();
    let spaced = scratch.path().join("spaced");
    std::fs::write(&spaced, "a token with spaces in it\n").unwrap();
    let spaced = spaced.to_str().unwrap();
    let store = ["--redis-url", "redis://127.0.0.1:1"];
    for bin in ["gateway", "seckill-service"] {
        let cases: [Case; 4] = [
            (&[], &[], "--callback-token-file"),
            (&[], &[("SECKILL_CALLBACK_TOKEN", "too-short")], "16"),
            (&["--callback-token-file", missing], &[], missing),
            (&["--callback-token-file", spaced], &[], "spaces"),
        ];
        for (extra, envs, says) in cases {
            let mut args = store.to_vec();
            args.extend_from_slice(extra);
            let (code, log) = run(bin, &args, envs);
            assert_eq!(code, Some(64), "{bin} {args:?}: {log}");
            assert_eq!(log.trim_end().lines().count(), 1, "{bin} {args:?}: {log}");
            assert!(log.starts_with(&format!("{bin}: ")), "{log}");
            assert!(log.contains(says), "{bin} {args:?}: {log}");
            if extra.is_empty() && envs.is_empty() {
                assert!(log.contains("SECKILL_CALLBACK_TOKEN"), "{log}");
            }
        }
    }
}

#[test]
fn the_token_is_not_shown_in_help() {
    for bin in ["gateway", "seckill-service"] {
        let (code, log) = run(
            bin,
            &["--help"],
            &[("SECKILL_CALLBACK_TOKEN", CALLBACK_TOKEN)],
        );
        assert_eq!(code, Some(0), "{log}");
        assert!(log.contains("--callback-token-file"), "{log}");
        assert!(
            !log.contains(CALLBACK_TOKEN),
            "{bin} --help shows the token:\n{log}"
        );
    }
}

#[test]
fn a_token_file_is_read_with_its_trailing_newline_trimmed() {
    let redis = RedisServer::start();
    let scratch = scratch_dir();
    let file = scratch.path().join("callback-token");
    std::fs::write(&file, format!("{CALLBACK_TOKEN}\n")).unwrap();
    let file = file.to_str().unwrap();
    // The gateway reads the token from the environment (the harness), the
    // service from the file: they agree, so a purchase gets its result.
    let store = redis_args(&redis.url());
    let gw = Gw::start("gateway", &store, &[]);
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], seckill_test_support::free_port()));
    let mut args = store.clone();
    args.extend(
        [
            "--admin-listen",
            &admin.to_string(),
            "--callback-token-file",
            file,
        ]
        .map(String::from),
    );
    let svc = Process::spawn(
        "service",
        &binary("seckill-service"),
        &args,
        &[("SECKILL_LOG", "warn")],
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            seckill_test_support::process::http(admin, "GET", "/healthz", &[], "")
                .is_ok_and(|r| r.0 == 200)
        }),
        "{}",
        svc.log()
    );
    let sale = json!({"stock": 1, "per_user_limit": 1, "token_rate": 1000, "token_capacity": 10});
    assert_eq!(gw.put_sale("t", &sale), 201);
    assert!(wait_until(Duration::from_secs(5), || gw
        .get("/api/v1/sales/t")
        .0
        == 200));
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = gw.buy("t", "u");
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("success")),
        "{body}"
    );
    assert_eq!(gw.metric(UNAUTHENTICATED).unwrap_or(0.0), 0.0);
}
