//! The `seckill-service` binary as operators run it: option checking, the
//! admin endpoints against a real Redis, readiness following Redis, the
//! graceful stop on SIGTERM (also with its output on a pipe nobody reads any
//! more), and Redis passwords kept out of everything it prints.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use seckill_test_support::process::{http, sample, wait_until, Process};
use seckill_test_support::{free_port, RedisServer};

/// What the distributed mode requires of every gateway and service.
const CALLBACK_TOKEN: &str = "test-callback-token-0123456789";

fn spawn(args: &[&str]) -> Process {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    Process::spawn(
        "seckill-service",
        env!("CARGO_BIN_EXE_seckill-service").as_ref(),
        &args,
        &[
            ("SECKILL_LOG", "warn"),
            ("SECKILL_CALLBACK_TOKEN", CALLBACK_TOKEN),
        ],
    )
}

fn exit_code(p: &mut Process) -> Option<i32> {
    p.wait_exit(Duration::from_secs(10)).and_then(|s| s.code())
}

#[test]
fn bad_configuration_exits_64_with_one_line() {
    let cases: &[&[&str]] = &[
        &[],
        &["--redis-url", "redis://127.0.0.1:1", "--workers", "0"],
        &["--redis-url", "redis://127.0.0.1:1", "--batch-size", "x"],
        &[
            "--redis-url",
            "redis://127.0.0.1:1",
            "--callback-timeout-ms",
            "0",
        ],
        &[
            "--redis-url",
            "redis://127.0.0.1:1",
            "--admin-listen",
            "nowhere",
        ],
        &["--redis-url", "redis://a", "--redis-cluster", "b:1"],
        &["--no-such-flag"],
    ];
    for args in cases {
        let mut p = spawn(args);
        assert_eq!(exit_code(&mut p), Some(64), "{args:?}: {}", p.log());
        let log = p.log();
        assert_eq!(log.trim_end().lines().count(), 1, "{args:?}: {log}");
        assert!(log.starts_with("seckill-service: "), "{args:?}: {log}");
    }
    let mut p = spawn(&[]);
    exit_code(&mut p);
    assert!(p.log().contains("--redis-url"), "{}", p.log());
}

#[test]
fn unreachable_redis_fails_fast() {
    let started = Instant::now();
    let url = format!("redis://127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let mut p = spawn(&["--redis-url", &url, "--admin-listen", &admin]);
    assert_eq!(exit_code(&mut p), Some(1), "{}", p.log());
    assert!(started.elapsed() < Duration::from_secs(8));
    assert!(p.log().contains("cannot connect to Redis"), "{}", p.log());
}

#[test]
fn admin_endpoints_readiness_and_graceful_stop() {
    let mut redis = RedisServer::start();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut p = spawn(&[
        "--redis-url",
        &redis.url(),
        "--admin-listen",
        &admin.to_string(),
    ]);
    assert!(
        wait_until(Duration::from_secs(10), || http(
            admin,
            "GET",
            "/healthz",
            &[],
            ""
        )
        .is_ok_and(|(s, _)| s == 200)),
        "service did not come up: {}",
        p.log()
    );
    assert_eq!(http(admin, "GET", "/readyz", &[], "").unwrap().0, 200);
    let (s, metrics) = http(admin, "GET", "/metrics", &[], "").unwrap();
    assert_eq!(s, 200);
    for name in [
        "seckill_service_processed_total",
        "seckill_service_expired_total",
        "seckill_service_queue_wait_seconds",
        "seckill_service_process_duration_seconds",
        "seckill_callback_total",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{metrics}"
        );
    }
    assert_eq!(
        sample(
            &metrics,
            r#"seckill_service_processed_total{result="success"}"#
        ),
        Some(0.0)
    );

    // Hostile and wrong requests get their status, and the process stays up.
    assert_eq!(http(admin, "GET", "/nope", &[], "").unwrap().0, 404);
    assert_eq!(http(admin, "POST", "/metrics", &[], "x").unwrap().0, 405);
    let huge = "x".repeat(64 * 1024);
    let s = http(admin, "GET", "/healthz", &[("x-big", &huge)], "").map(|r| r.0);
    assert!(
        matches!(s, Ok(431) | Err(_)),
        "oversized head refused: {s:?}"
    );
    let (s, _) = http(admin, "GET", "/healthz?%ff%00", &[], "").unwrap();
    assert_eq!(s, 200);
    assert!(p.is_running());

    // Readiness follows Redis.
    redis.stop();
    assert!(
        wait_until(Duration::from_secs(5), || http(
            admin,
            "GET",
            "/readyz",
            &[],
            ""
        )
        .is_ok_and(|(s, _)| s == 503)),
        "readyz stays 200 with Redis gone"
    );
    assert_eq!(http(admin, "GET", "/healthz", &[], "").unwrap().0, 200);
    redis.restart();
    assert!(
        wait_until(Duration::from_secs(10), || http(
            admin,
            "GET",
            "/readyz",
            &[],
            ""
        )
        .is_ok_and(|(s, _)| s == 200)),
        "readyz does not recover: {}",
        p.log()
    );

    let stopping = Instant::now();
    p.terminate();
    let status = p.wait_exit(Duration::from_secs(10));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", p.log());
    assert!(stopping.elapsed() < Duration::from_secs(5));
}

fn healthy(admin: SocketAddr) -> bool {
    http(admin, "GET", "/healthz", &[], "").is_ok_and(|(s, _)| s == 200)
}

#[test]
fn sigterm_stops_it_even_when_nobody_reads_the_output() {
    let redis = RedisServer::start();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut p = Process::spawn_headless(
        "seckill-service",
        env!("CARGO_BIN_EXE_seckill-service").as_ref(),
        &[
            "--redis-url".into(),
            redis.url(),
            "--admin-listen".into(),
            admin.to_string(),
        ],
        // Info level, so the shutdown itself logs.
        &[
            ("SECKILL_LOG", "info"),
            ("SECKILL_CALLBACK_TOKEN", CALLBACK_TOKEN),
        ],
    );
    assert!(wait_until(Duration::from_secs(10), || healthy(admin)));
    p.terminate();
    let status = p.wait_exit(Duration::from_secs(5));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "SIGTERM did not stop the service: {status:?}"
    );
}

/// A password no line of output may contain.
const PASSWORD: &str = "s3cretpw";

#[test]
fn redis_passwords_are_never_printed() {
    let redis = RedisServer::start();
    let port = redis.port();
    redis.require_password("seckill", PASSWORD);
    let url = |userinfo: &str| format!("redis://{userinfo}@127.0.0.1:{port}/");
    let cases = [
        // Connected: the banner names the Redis.
        ("--redis-url", url(&format!(":{PASSWORD}")), false),
        ("--redis-url", url(&format!("seckill:{PASSWORD}")), false),
        // Refused: the error line names it.
        ("--redis-url", url(&format!(":{PASSWORD}x")), true),
        ("--redis-url", url(&format!("seckill:{PASSWORD}x")), true),
        (
            "--redis-url",
            format!("rediss://:{PASSWORD}@127.0.0.1:{port}/"),
            true,
        ),
        (
            "--redis-url",
            format!("redis://:{PASSWORD}@127.0.0.1:{}/", free_port()),
            true,
        ),
        (
            "--redis-cluster",
            format!(
                "redis://:{PASSWORD}@127.0.0.1:{},redis://u:{PASSWORD}@127.0.0.1:{}",
                free_port(),
                free_port()
            ),
            true,
        ),
    ];
    for (flag, value, exits) in cases {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut p = spawn(&[flag, &value, "--admin-listen", &admin.to_string()]);
        if exits {
            assert_eq!(exit_code(&mut p), Some(1), "{}", p.log());
            assert!(p.log().contains("cannot connect to Redis"), "{}", p.log());
        } else {
            assert!(
                wait_until(Duration::from_secs(10), || healthy(admin)),
                "{}",
                p.log()
            );
            assert!(p.log().contains("seckill service"), "{}", p.log());
        }
        let log = p.log();
        assert!(
            !log.contains(PASSWORD),
            "{flag} {value} printed its password:\n{log}"
        );
    }
}
