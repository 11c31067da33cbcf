//! TLS on the two links that cross the network: the gRPC callback
//! (`--grpc-tls-cert`/`--grpc-tls-key` on the gateway, `--grpc-tls-ca` on
//! the service) and Redis (`rediss://` with an ACL user and password in the
//! URL, the server's CA trusted through `SSL_CERT_FILE`). Certificates are
//! made here, at test time: a CA, and a server certificate for `127.0.0.1`
//! and `localhost` signed by it.

mod procs;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use procs::{redis_args, Gw, Svc, CALLBACK_TOKEN};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use seckill_proto::pb;
use seckill_proto::pb::callback_client::CallbackClient;
use seckill_test_support::process::{binary, wait_until, Process};
use seckill_test_support::{free_port, scratch_dir, RedisServer};
use serde_json::{json, Value};
use tempfile::TempDir;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A CA and a server certificate it signed, as PEM files in a temporary
/// directory.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = scratch_dir();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).to_str().unwrap().to_string()
    }

    fn ca(&self) -> String {
        self.path("ca.pem")
    }

    fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.ca()).unwrap()
    }

    fn cert(&self) -> String {
        self.path("server.pem")
    }

    fn key(&self) -> String {
        self.path("server.key")
    }
}

fn sale() -> Value {
    json!({
        "stock": 5,
        "per_user_limit": 1,
        "token_rate": 1000,
        "token_capacity": 100,
        "queue_capacity": 1000,
    })
}

/// Creates sale `id` and waits until the gateway serves it.
fn open_sale(gw: &Gw, id: &str) {
    assert_eq!(gw.put_sale(id, &sale()), 201);
    let path = format!("/api/v1/sales/{id}");
    assert!(wait_until(Duration::from_secs(5), || gw.get(&path).0 == 200));
}

/// One purchase, sent again while the new sale's bucket has no token yet
/// (429): the status and body of the first other answer.
fn buy(gw: &Gw, sale: &str, user: &str) -> (u16, Value) {
    let mut answer = (0, Value::Null);
    wait_until(Duration::from_secs(5), || {
        answer = gw.buy(sale, user);
        answer.0 != 429
    });
    answer
}

/// A gateway whose callback listener speaks TLS only.
fn tls_gateway(pki: &Pki, store: &[String], extra: &[&str]) -> Gw {
    let (cert, key) = (pki.cert(), pki.key());
    let mut args = vec!["--grpc-tls-cert", &cert, "--grpc-tls-key", &key];
    args.extend_from_slice(extra);
    Gw::start("gateway", store, &args)
}

#[test]
fn a_tls_callback_carries_a_purchase() {
    let pki = Pki::new();
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let gw = tls_gateway(&pki, &store, &["--request-timeout-ms", "10000"]);
    let svc = Svc::start("service", &store, &["--grpc-tls-ca", &pki.ca()]);
    open_sale(&gw, "t");

    let (status, body) = buy(&gw, "t", "buyer");
    assert_eq!(status, 200, "{body}\n{}\n{}", gw.p.log(), svc.p.log());
    assert_eq!(body["status"], "success", "{body}");
    assert_eq!(gw.sold("t"), (1, 4));
    assert_eq!(svc.metric(r#"seckill_callback_total{result="error"}"#), 0.0);
}

#[test]
fn a_service_that_cannot_verify_the_gateway_delivers_nothing() {
    let pki = Pki::new();
    let other = Pki::new();
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let gw = tls_gateway(&pki, &store, &["--request-timeout-ms", "1500"]);
    open_sale(&gw, "w");
    // Without a CA the service calls in plaintext; with another CA it
    // does not trust the gateway's certificate. Either way the buyer
    // times out and the decided result stays readable.
    let wrong_ca = other.ca();
    let cases: [(&str, &[&str]); 2] = [("no-ca", &[]), ("wrong-ca", &["--grpc-tls-ca", &wrong_ca])];
    for (i, (name, extra)) in cases.into_iter().enumerate() {
        let svc = Svc::start(name, &store, extra);
        let user = format!("buyer-{i}");
        let (status, body) = buy(&gw, "w", &user);
        assert_eq!(status, 504, "{name}: {body}");
        let id = body["request_id"]
            .as_str()
            .expect("a request id")
            .to_string();
        let path = format!("/api/v1/requests/{id}");
        let mut last = Value::Null;
        assert!(
            wait_until(Duration::from_secs(5), || {
                last = gw.get(&path).1;
                last["status"] == "success"
            }),
            "{name}: {last}"
        );
        let errors = r#"seckill_callback_total{result="error"}"#;
        assert!(
            wait_until(Duration::from_secs(5), || svc.metric(errors) > 0.0),
            "{name}: the failed callback is counted"
        );
    }
    assert_eq!(gw.sold("w"), (2, 3));
}

/// A success for `request_id` that no service decided, with the real token.
fn result_for(request_id: &str) -> tonic::Request<pb::CompleteRequest> {
    let mut request = tonic::Request::new(pb::CompleteRequest {
        results: vec![pb::RequestResult {
            request_id: request_id.into(),
            sale_id: "p".into(),
            user_id: "buyer".into(),
            outcome: pb::Outcome::Success as i32,
            order_id: "o-1".into(),
            quantity: 1,
            reason: String::new(),
            traceparent: String::new(),
        }],
    });
    let bearer = format!("Bearer {CALLBACK_TOKEN}");
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_gateway_refuses_plaintext() {
    let pki = Pki::new();
    let redis = RedisServer::start();
    let gw = tls_gateway(&pki, &redis_args(&redis.url()), &[]);

    // Plaintext HTTP/2, the right token: the handshake fails, no call runs.
    let plain = async {
        let mut client = CallbackClient::connect(format!("http://{}", gw.grpc))
            .await
            .map_err(|e| e.to_string())?;
        client
            .complete(result_for("p.1"))
            .await
            .map_err(|s| s.to_string())
    };
    let refused = tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .expect("refused at once, not hung");
    assert!(refused.is_err(), "a plaintext call was answered");

    // The same call over TLS with the CA goes through to the server (the
    // request is unknown to it: nobody waits for it).
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pki.ca_pem()));
    let channel = Endpoint::from_shared(format!("https://{}", gw.grpc))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("a TLS client that trusts the CA connects");
    let reply = CallbackClient::new(channel)
        .complete(result_for("p.1"))
        .await
        .expect("answered over TLS")
        .into_inner();
    assert_eq!((reply.delivered, reply.unknown), (0, 1));
}

// === rediss:// ===

/// A private `redis-server` that speaks TLS only, with ACL user `seckill`
/// (password `PASSWORD`) and the default user disabled. Killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
    _dir: TempDir,
}

const PASSWORD: &str = "s3cret-redis-password";

impl TlsRedis {
    fn start(pki: &Pki) -> TlsRedis {
        let dir = scratch_dir();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &pki.cert(), "--tls-key-file", &pki.key()])
            .args(["--tls-ca-cert-file", &pki.ca(), "--tls-auth-clients", "no"])
            .args(["--user", "default", "off"])
            .args(["--user", "seckill", "on", &format!(">{PASSWORD}")])
            .args(["~*", "&*", "+@all"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--logfile", "redis.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        let redis = TlsRedis {
            child,
            port,
            _dir: dir,
        };
        let log = redis._dir.path().join("redis.log");
        assert!(
            wait_until(Duration::from_secs(10), || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && read(&log).contains("Ready to accept connections")
            }),
            "redis-server with TLS did not start: {}",
            read(&log)
        );
        redis
    }

    fn url(&self) -> String {
        format!("rediss://seckill:{PASSWORD}@127.0.0.1:{}/", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_gateway_and_service_sell_over_rediss_with_an_acl_user() {
    let pki = Pki::new();
    let redis = TlsRedis::start(&pki);
    let store = redis_args(&redis.url());
    // The server's CA, trusted the standard way (rustls' native roots read
    // SSL_CERT_FILE), so nothing is verified less than in production.
    let ca = pki.ca();
    let env = [("SSL_CERT_FILE", ca.as_str())];
    let gw = Gw::start_env("gateway", &store, &["--request-timeout-ms", "10000"], &env);
    let svc = Svc::start_env("service", &store, &[], &env);
    open_sale(&gw, "r");
    let (status, body) = buy(&gw, "r", "buyer");
    assert_eq!(status, 200, "{body}\n{}\n{}", gw.p.log(), svc.p.log());
    assert_eq!(body["status"], "success", "{body}");
    assert_eq!(gw.sold("r"), (1, 4));
    assert_eq!(gw.admin_get("/readyz").0, 200);
    for log in [gw.p.log(), svc.p.log()] {
        assert!(!log.contains(PASSWORD), "the password was printed:\n{log}");
    }

    // Without the CA the server's certificate is not trusted: no start.
    let mut p = Process::spawn(
        "untrusting",
        &binary("seckill-service"),
        &[
            "--redis-url".into(),
            redis.url(),
            "--admin-listen".into(),
            format!("127.0.0.1:{}", free_port()),
        ],
        &[
            ("SSL_CERT_FILE", "/nonexistent"),
            ("SECKILL_CALLBACK_TOKEN", CALLBACK_TOKEN),
        ],
    );
    let exit = p.wait_exit(Duration::from_secs(15));
    assert!(
        exit.is_some_and(|s| !s.success()),
        "a service that cannot verify Redis must not start: {}",
        p.log()
    );
    assert!(p.log().contains("cannot connect to Redis"), "{}", p.log());
    assert!(!p.log().contains(PASSWORD), "{}", p.log());
}
