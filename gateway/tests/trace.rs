//! One purchase is one trace: with `--otlp-endpoint`, a gateway and a
//! seckill service (real processes, on Redis) send their spans over
//! OTLP/HTTP to a receiver the test runs, and the gateway's `purchase`
//! span (a child of the client's `traceparent`), the service's `decide`
//! span and the gateway's `callback` span share one trace id, each the
//! child of the one before.

mod procs;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use procs::{redis_args, Gw, Svc};
use seckill_test_support::process::{http, wait_until};
use seckill_test_support::RedisServer;
use serde_json::{json, Value};

/// An OTLP/HTTP receiver: keeps every `POST /v1/traces` JSON body.
struct Receiver {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || serve(stream, &kept));
            }
        });
        Receiver { addr, bodies }
    }

    /// Every span received: (service.name, span).
    fn spans(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for body in self.bodies.lock().unwrap().iter() {
            for rs in body["resourceSpans"].as_array().into_iter().flatten() {
                let service = rs["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == "service.name")
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .unwrap_or_default()
                    .to_string();
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        out.push((service.clone(), span.clone()));
                    }
                }
            }
        }
        out
    }
}

/// HTTP/1.1 with keep-alive, as an exporter talks: one body per request.
fn serve(stream: std::net::TcpStream, kept: &Mutex<Vec<Value>>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target_ok = line.starts_with("POST /v1/traces ");
        let mut length = 0;
        let mut json = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end().to_ascii_lowercase();
            if header.is_empty() {
                break;
            }
            if let Some(v) = header.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            json |= header == "content-type: application/json";
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = match serde_json::from_slice::<Value>(&body) {
            Ok(v) if target_ok && json => {
                kept.lock().unwrap().push(v);
                "200 OK"
            }
            _ => "400 Bad Request",
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

/// The spans of `trace_id`, by name, once all three are in.
fn trace_of(receiver: &Receiver, trace_id: &str) -> Vec<(String, Value)> {
    let mut found = Vec::new();
    let complete = wait_until(Duration::from_secs(20), || {
        found = receiver
            .spans()
            .into_iter()
            .filter(|(_, s)| s["traceId"] == trace_id)
            .collect();
        ["purchase", "decide", "callback"]
            .iter()
            .all(|n| found.iter().any(|(_, s)| s["name"] == *n))
    });
    assert!(complete, "spans of {trace_id}: {found:#?}");
    found
}

fn one<'a>(spans: &'a [(String, Value)], name: &str) -> &'a (String, Value) {
    let named: Vec<_> = spans.iter().filter(|(_, s)| s["name"] == name).collect();
    assert_eq!(named.len(), 1, "{name}: {spans:#?}");
    named[0]
}

#[test]
fn a_purchase_is_one_trace_across_the_gateway_and_the_service() {
    let receiver = Receiver::start();
    let endpoint = format!("http://{}", receiver.addr);
    let redis = RedisServer::start();
    let store = redis_args(&redis.url());
    let tracing = ["--otlp-endpoint", &endpoint, "--otlp-sample-ratio", "1"];
    let gw = Gw::start("gateway", &store, &tracing);
    let _svc = Svc::start("service", &store, &tracing);
    let sale = json!({"stock": 10, "token_rate": 1000, "token_capacity": 100});
    assert_eq!(gw.put_sale("t", &sale), 201);
    assert!(wait_until(Duration::from_secs(5), || gw
        .get("/api/v1/sales/t")
        .0
        == 200));

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let buy = |headers: &[(&str, &str)], user: &str| {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        let body = format!(r#"{{"user_id":"{user}"}}"#);
        let (status, body) = http(gw.public, "POST", "/api/v1/sales/t/purchase", &all, &body)
            .expect("the gateway answers");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let answer = buy(&[("traceparent", &traceparent)], "traced");
    let request_id = answer["request_id"].as_str().unwrap();

    let spans = trace_of(&receiver, trace_id);
    let (gw_name, purchase) = one(&spans, "purchase");
    let (svc_name, decide) = one(&spans, "decide");
    let (cb_name, callback) = one(&spans, "callback");
    assert_eq!(
        (gw_name.as_str(), svc_name.as_str(), cb_name.as_str()),
        ("seckill-gateway", "seckill-service", "seckill-gateway")
    );
    // Each the child of the one before, the first of the client's.
    assert_eq!(purchase["parentSpanId"], client_span);
    assert_eq!(purchase["kind"], 2);
    assert_eq!(decide["parentSpanId"], purchase["spanId"]);
    assert_eq!(callback["parentSpanId"], decide["spanId"]);
    for span in [purchase, decide, callback] {
        assert_eq!(
            attribute(span, "seckill.request_id"),
            Some(&json!({"stringValue": request_id})),
            "{span}"
        );
        let start: u64 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
        let end: u64 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
        assert!(start > 0 && start <= end, "{span}");
    }
    assert_eq!(
        attribute(purchase, "seckill.outcome"),
        Some(&json!({"stringValue": "success"}))
    );
    assert_eq!(
        attribute(purchase, "http.response.status_code"),
        Some(&json!({"intValue": "200"}))
    );
    assert_eq!(
        attribute(decide, "seckill.outcome"),
        Some(&json!({"stringValue": "success"}))
    );

    // Without a traceparent, or with a malformed one, a purchase starts a
    // trace of its own.
    for (user, headers) in [
        ("fresh", vec![]),
        ("garbled", vec![("traceparent", "00-not-a-trace-01")]),
    ] {
        let answer = buy(&headers, user);
        let request_id = json!({"stringValue": answer["request_id"]});
        let mut root = None;
        assert!(wait_until(Duration::from_secs(20), || {
            root = receiver.spans().into_iter().find(|(_, s)| {
                s["name"] == "purchase" && attribute(s, "seckill.request_id") == Some(&request_id)
            });
            root.is_some()
        }));
        let (_, root) = root.unwrap();
        assert!(root.get("parentSpanId").is_none(), "{root}");
        assert_ne!(root["traceId"], trace_id);
        trace_of(&receiver, root["traceId"].as_str().unwrap());
    }
}
