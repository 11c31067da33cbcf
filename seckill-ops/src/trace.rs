//! Distributed traces, exported over OTLP/HTTP (JSON) to a collector.
//!
//! Off unless `--otlp-endpoint` is given; then a sampled purchase is one
//! trace across processes: the gateway's `purchase` span (a child of the
//! client's W3C `traceparent` when it sends one), the seckill service's
//! `decide` span (the context travels in the queue entry), and the
//! gateway's `callback` span for the result (the context travels in the
//! callback's result). Span ids and the `traceparent` format are W3C
//! Trace Context's.
//!
//! Finished spans go to a bounded channel; one task sends them in batches
//! to `<endpoint>/v1/traces`. A span that finds the channel full, or whose
//! batch the collector does not take, is dropped and counted
//! (`seckill_trace_spans_dropped_total`): tracing never slows a purchase
//! down or holds it up.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::process::ConfigError;

/// Spans in one export request at most.
const BATCH: usize = 512;
/// Finished spans waiting for export at most; more are dropped.
const BACKLOG: usize = 16_384;
/// How long spans wait for company before they are sent.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// One export request's deadline, connecting included.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The tracing options of a binary (flattened into its options).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TraceArgs {
    /// OTLP/HTTP collector to send traces to, e.g. `http://127.0.0.1:4318`
    /// (spans are POSTed as JSON to `<endpoint>/v1/traces`). Unset = no
    /// tracing.
    #[arg(long, env = "SECKILL_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Share of purchases traced (0..=1) when the client sends no
    /// `traceparent`; a client's sampled flag is followed.
    #[arg(long, env = "SECKILL_OTLP_SAMPLE_RATIO", default_value_t = 0.01, value_parser = ratio)]
    pub otlp_sample_ratio: f64,
}

fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a number from 0 to 1")),
    }
}

/// A span's identity, as `traceparent` carries it between processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl SpanContext {
    /// Reads a W3C `traceparent` (version 00, or a later one by its first
    /// four fields); `None` for anything malformed or all-zero ids.
    pub fn parse(traceparent: &str) -> Option<SpanContext> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(version, 2)
            || version == "ff"
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(SpanContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` value of this span.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

/// What a span does, as OTLP numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

/// A span in progress; sent for export by [`Span::end`]. Only sampled
/// spans exist: [`Span::start`] says `None` otherwise.
#[derive(Debug)]
pub struct Span {
    context: SpanContext,
    parent: Option<u64>,
    name: &'static str,
    kind: Kind,
    start_ns: u64,
    attributes: Vec<(&'static str, Value)>,
    error: bool,
}

impl Span {
    /// Starts a span: a child of `parent` when there is one (and it is
    /// sampled), else the root of a new trace, sampled at the configured
    /// ratio. `None` when tracing is off or this trace is not sampled.
    pub fn start(name: &'static str, kind: Kind, parent: Option<SpanContext>) -> Option<Span> {
        let tracer = TRACER.get()?;
        let (trace_id, parent_id) = match parent {
            Some(p) if !p.sampled => return None,
            Some(p) => (p.trace_id, Some(p.span_id)),
            None if rand::random::<f64>() < tracer.ratio => (nonzero_u128(), None),
            None => return None,
        };
        Some(Span {
            context: SpanContext {
                trace_id,
                span_id: nonzero_u64(),
                sampled: true,
            },
            parent: parent_id,
            name,
            kind,
            start_ns: unix_ns(),
            attributes: Vec::new(),
            error: false,
        })
    }

    /// As [`Span::start`], the parent read from a `traceparent` value;
    /// a malformed one is ignored (a new trace begins).
    pub fn start_from(name: &'static str, kind: Kind, traceparent: Option<&str>) -> Option<Span> {
        Span::start(name, kind, traceparent.and_then(SpanContext::parse))
    }

    pub fn context(&self) -> SpanContext {
        self.context
    }

    /// Adds an attribute (a string, number or bool).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        self.attributes.push((key, value.into()));
    }

    /// Marks the span as failed.
    pub fn fail(&mut self) {
        self.error = true;
    }

    /// Ends the span and hands it to the exporter.
    pub fn end(self) {
        let Some(tracer) = TRACER.get() else { return };
        let end_ns = unix_ns();
        if tracer.spans.try_send((self, end_ns)).is_err() {
            metrics::counter!("seckill_trace_spans_dropped_total", "reason" => "backlog_full")
                .increment(1);
        }
    }
}

/// Whether this process exports traces.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

struct Tracer {
    ratio: f64,
    spans: mpsc::Sender<(Span, u64)>,
}

static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Starts exporting traces as `args` say, in the name of `service` (OTLP's
/// `service.name`); nothing without an endpoint. Call it once, within the
/// Tokio runtime.
pub fn init(args: &TraceArgs, service: &'static str) -> Result<(), ConfigError> {
    let Some(endpoint) = &args.otlp_endpoint else {
        return Ok(());
    };
    let target = Target::parse(endpoint)?;
    let (tx, rx) = mpsc::channel(BACKLOG);
    let tracer = Tracer {
        ratio: args.otlp_sample_ratio,
        spans: tx,
    };
    if TRACER.set(tracer).is_err() {
        return Err(ConfigError("tracing is set up already".into()));
    }
    metrics::describe_counter!(
        "seckill_trace_spans_dropped_total",
        "Trace spans not exported, by reason (backlog_full, export_failed)."
    );
    tokio::spawn(export(target, service, rx));
    Ok(())
}

/// Where spans are sent.
#[derive(Clone, Debug)]
struct Target {
    authority: String,
    path: String,
}

impl Target {
    fn parse(endpoint: &str) -> Result<Target, ConfigError> {
        let bad = |why: &str| ConfigError(format!("--otlp-endpoint {endpoint:?}: {why}"));
        let uri: Uri = endpoint.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(bad(
                "https is not supported; send to a collector on the node or in the pod over http",
            )),
            _ => return Err(bad("must start with http://")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.port_u16().is_none() {
            return Err(bad("name the port (the OTLP/HTTP default is 4318)"));
        }
        let base = uri.path().trim_end_matches('/');
        let path = if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        };
        Ok(Target {
            authority: authority.to_string(),
            path,
        })
    }
}

async fn export(target: Target, service: &'static str, mut rx: mpsc::Receiver<(Span, u64)>) {
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // The first span, then whatever comes within the flush interval.
        match rx.recv().await {
            Some(s) => batch.push(s),
            None => return,
        }
        let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = Bytes::from(encode(service, batch.drain(..)).to_string());
        let sent = tokio::time::timeout(EXPORT_TIMEOUT, post(&target, &mut sender, body)).await;
        if !matches!(sent, Ok(Ok(()))) {
            sender = None;
            metrics::counter!("seckill_trace_spans_dropped_total", "reason" => "export_failed")
                .increment(n);
            tracing::debug!(endpoint = %target.authority, "trace export failed");
        }
    }
}

async fn post(
    target: &Target,
    sender: &mut Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
    body: Bytes,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = tokio::net::TcpStream::connect(&target.authority).await?;
        let _ = stream.set_nodelay(true);
        let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        *sender = Some(s);
    }
    let s = sender.as_mut().expect("connected above");
    s.ready().await?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(&target.path)
        .header(HOST, &target.authority)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = s.send_request(request).await?;
    if !response.status().is_success() {
        return Err(format!("the collector answered {}", response.status()).into());
    }
    Ok(())
}

/// An OTLP `ExportTraceServiceRequest` in its JSON form.
fn encode(service: &str, spans: impl Iterator<Item = (Span, u64)>) -> Value {
    let spans: Vec<Value> = spans
        .map(|(s, end_ns)| {
            let mut span = json!({
                "traceId": format!("{:032x}", s.context.trace_id),
                "spanId": format!("{:016x}", s.context.span_id),
                "name": s.name,
                "kind": s.kind as u8,
                "startTimeUnixNano": s.start_ns.to_string(),
                "endTimeUnixNano": end_ns.max(s.start_ns).to_string(),
                "attributes": attributes(&s.attributes),
                "status": { "code": if s.error { 2 } else { 0 } },
            });
            if let Some(parent) = s.parent {
                span["parentSpanId"] = format!("{parent:016x}").into();
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": attributes(&[
                ("service.name", service.into()),
                ("service.version", env!("CARGO_PKG_VERSION").into()),
                ("process.pid", std::process::id().into()),
            ]) },
            "scopeSpans": [{
                "scope": { "name": "seckill", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }],
        }],
    })
}

/// OTLP `KeyValue`s.
fn attributes(attrs: &[(&'static str, Value)]) -> Vec<Value> {
    attrs
        .iter()
        .map(|(key, v)| {
            let value = match v {
                Value::Bool(b) => json!({ "boolValue": b }),
                Value::Number(n) if n.is_i64() || n.is_u64() => {
                    json!({ "intValue": n.to_string() })
                }
                Value::Number(n) => json!({ "doubleValue": n }),
                Value::String(s) => json!({ "stringValue": s }),
                other => json!({ "stringValue": other.to_string() }),
            };
            json!({ "key": key, "value": value })
        })
        .collect()
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn nonzero_u128() -> u128 {
    loop {
        let v: u128 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

fn nonzero_u64() -> u64 {
    loop {
        let v: u64 = rand::random();
        if v != 0 {
            return v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_read_and_written_as_w3c_says() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = SpanContext::parse(tp).unwrap();
        assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(c.span_id, 0x00f067aa0ba902b7);
        assert!(c.sampled);
        assert_eq!(c.traceparent(), tp);
        let unsampled = SpanContext::parse(&tp.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled);
        // A later version may add fields; version 00 may not.
        assert!(SpanContext::parse(&format!("01{}-extra", &tp[2..])).is_some());
        for bad in [
            "",
            "00",
            &format!("{tp}-extra"),
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(SpanContext::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn endpoints_are_checked_and_get_the_traces_path() {
        let t = Target::parse("http://collector:4318").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("collector:4318", "/v1/traces")
        );
        let t = Target::parse("http://127.0.0.1:4318/otlp/").unwrap();
        assert_eq!(t.path, "/otlp/v1/traces");
        let t = Target::parse("http://127.0.0.1:4318/v1/traces").unwrap();
        assert_eq!(t.path, "/v1/traces");
        for bad in [
            "collector:4318",
            "https://c:4318",
            "http://collector",
            "ftp://c:1",
            "::",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert!(ratio("0.5").is_ok() && ratio("1").is_ok());
        assert!(ratio("1.5").is_err() && ratio("-0.1").is_err() && ratio("NaN").is_err());
    }

    #[test]
    fn spans_encode_as_otlp_json() {
        let span = Span {
            context: SpanContext {
                trace_id: 1,
                span_id: 2,
                sampled: true,
            },
            parent: Some(3),
            name: "purchase",
            kind: Kind::Server,
            start_ns: 10,
            attributes: vec![("sale", "s".into()), ("http.status_code", 200.into())],
            error: true,
        };
        let v = encode("seckill-gateway", std::iter::once((span, 20)));
        let rs = &v["resourceSpans"][0];
        assert_eq!(
            rs["resource"]["attributes"][0],
            json!({"key": "service.name", "value": {"stringValue": "seckill-gateway"}})
        );
        let s = &rs["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "00000000000000000000000000000001");
        assert_eq!(s["spanId"], "0000000000000002");
        assert_eq!(s["parentSpanId"], "0000000000000003");
        assert_eq!(s["kind"], 2);
        assert_eq!(s["startTimeUnixNano"], "10");
        assert_eq!(s["endTimeUnixNano"], "20");
        assert_eq!(s["status"]["code"], 2);
        assert_eq!(
            s["attributes"][1],
            json!({"key": "http.status_code", "value": {"intValue": "200"}})
        );
    }
}
