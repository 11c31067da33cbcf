//! The project's binaries as child processes of a test: spawned with their
//! output in a log file, stopped with SIGTERM or SIGKILL on request, and
//! always killed by `Drop`; plus a blocking HTTP/1.1 exchange (ureq) for
//! probing their ports from any thread, runtime or not.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use tempfile::TempDir;

use crate::backoff;

/// A binary of this workspace built next to the running test: test
/// executables live in `target/<profile>/deps/`, binaries in
/// `target/<profile>/`. `cargo test --workspace` builds every binary of a
/// package that has integration tests; a test of one package
/// (`cargo test -p gateway`) that needs another package's binary builds it
/// here, once, into the same target folder.
///
/// Only a missing binary is built: rebuilding one that exists would build
/// it with other features than the workspace's test run unified, and undo
/// that run's build. Each binary is named after its package.
pub fn binary(name: &str) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let exe = std::env::current_exe().expect("the test knows its own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let path = dir.join(name);
    let _one_build_at_a_time = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        build(name, dir);
    }
    assert!(
        path.exists(),
        "{} is not built: run the workspace's tests (scripts/test) or `cargo build -p {name}` first",
        path.display()
    );
    path
}

/// `cargo build -p <name>` into the target folder that holds `profile_dir`.
fn build(name: &str, profile_dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("this crate lives in the workspace root");
    let target = profile_dir.parent().expect("target/<profile>");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .args(["-p", name, "--bin", name, "--manifest-path"])
        .arg(root.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target);
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        cmd.arg("--release");
    }
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("cargo build -p {name} failed: {s}"),
        Err(e) => panic!("cannot run cargo to build {name}: {e}"),
    }
}

/// A running child process, killed when dropped.
pub struct Process {
    name: String,
    child: Option<Child>,
    /// Holds `out.log`; removed when the handle drops.
    dir: TempDir,
    status: Option<ExitStatus>,
}

impl Process {
    /// Spawns `program` with `args` and the extra environment `envs`; its
    /// stdout and stderr go to a log file (see [`Process::log`]). It runs in
    /// a scratch directory of its own, so whatever it writes relative to
    /// its working directory (a default `--data-dir`) never lands in the
    /// source tree.
    pub fn spawn(name: &str, program: &Path, args: &[String], envs: &[(&str, &str)]) -> Self {
        let dir = crate::scratch_dir();
        let log = std::fs::File::create(dir.path().join("out.log")).expect("create the log file");
        let err = log.try_clone().expect("clone the log file handle");
        let child = Command::new(program)
            .current_dir(dir.path())
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", program.display()));
        Process {
            name: name.to_string(),
            child: Some(child),
            dir,
            status: None,
        }
    }

    /// Spawns `program` with stdout and stderr on pipes that are closed
    /// once its first line of output has arrived, as in
    /// `gateway 2>&1 | head -1`: every later write of the child fails with
    /// EPIPE. Panics when the child prints nothing before it stops. Its
    /// output is not kept ([`Process::log`] is empty).
    pub fn spawn_headless(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(&str, &str)],
    ) -> Self {
        use std::io::BufRead;
        let dir = crate::scratch_dir();
        let mut child = Command::new(program)
            .current_dir(dir.path())
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", program.display()));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let mut first = String::new();
        let read = std::io::BufReader::new(stdout).read_line(&mut first);
        assert!(
            read.is_ok_and(|n| n > 0),
            "{name} printed nothing before it stopped"
        );
        // The reader goes away; so do both read ends.
        drop(stderr);
        Process {
            name: name.to_string(),
            child: Some(child),
            dir,
            status: None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// What the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("out.log")).unwrap_or_default()
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// SIGTERM: the graceful stop.
    pub fn terminate(&mut self) {
        // `is_running` reaps an exited child; until a child is reaped its
        // pid cannot be reused, so the signal reaches this process or none.
        if self.is_running() {
            if let Some(child) = &self.child {
                let _ = kill_process(Pid::from_child(child), Signal::TERM);
            }
        }
    }

    /// SIGKILL, and reaps the process. Idempotent.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if self.status.is_none() {
                let _ = child.kill();
                self.status = child.wait().ok();
            }
        }
    }

    /// Waits up to `timeout` for the process to exit; its status, or `None`
    /// when it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        backoff::retry(timeout, || self.try_status().ok_or(())).ok()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.status = child.try_wait().ok().flatten();
            }
        }
        self.status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} output ---\n{}", self.name, self.log());
        }
        // Then the `TempDir` field removes the log.
    }
}

/// The most of a response body [`http`] reads; far above any page the
/// binaries serve.
const BODY_LIMIT: u64 = 64 << 20;

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`):
/// the status code (any: 4xx and 5xx too) and the body, chunked or not,
/// as text (invalid UTF-8 replaced). Redirects are not followed and no
/// proxy is used. Errors are failures to connect (within 2 s), to send or
/// to receive (30 s without data), as text.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    // A new agent per call: no pooled connection outlives the exchange,
    // as the connection-per-request probes of the tests expect.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_connect(Some(Duration::from_secs(2)))
        .timeout_per_read(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut request = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("connection", "close");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(body).map_err(|e| e.to_string())?;
    let mut response = agent.run(request).map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(BODY_LIMIT)
        .read_to_vec()
        .map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls `check` until it holds or `timeout` passes, on the schedule of
/// [`backoff`](crate::backoff) (pauses of 5 ms growing to 50 ms).
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    backoff::retry(timeout, || if check() { Ok(()) } else { Err(()) }).is_ok()
}

/// The value of one sample, `name{labels}` as exposed (label order free),
/// in a Prometheus text exposition; `None` if the page does not have it or
/// is not one [`Scrape`](crate::metrics::Scrape) reads.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    crate::metrics::Scrape::parse(metrics).ok()?.value(series)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{Ipv4Addr, TcpListener};

    /// A one-shot server: answers the first connection with `response` and
    /// hands back the request head it read.
    fn serve_once(response: &'static str) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .map_or(0, |n| n.trim().parse().unwrap());
            let mut body = vec![0; length];
            std::io::Read::read_exact(&mut reader, &mut body).unwrap();
            head.push_str(&String::from_utf8(body).unwrap());
            reader.get_mut().write_all(response.as_bytes()).unwrap();
            head
        });
        (addr, server)
    }

    #[test]
    fn http_returns_status_and_body() {
        let (addr, server) = serve_once(
            "HTTP/1.1 201 Created\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
        );
        let answer = http(
            addr,
            "PUT",
            "/admin/sales/x?y=1",
            &[
                ("authorization", "Bearer t"),
                ("content-type", "application/json"),
            ],
            "{\"a\":1}",
        );
        assert_eq!(answer, Ok((201, "hello".to_string())));
        let request = server.join().unwrap().to_ascii_lowercase();
        assert!(
            request.starts_with("put /admin/sales/x?y=1 http/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains("authorization: bearer t\r\n"), "{request}");
        assert!(request.contains("connection: close\r\n"), "{request}");
        assert!(request.ends_with("{\"a\":1}"), "{request}");
    }

    #[test]
    fn http_reads_chunked_bodies_and_error_statuses() {
        let (addr, server) = serve_once(
            "HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n\
             4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n",
        );
        assert_eq!(
            http(addr, "GET", "/readyz", &[], ""),
            Ok((503, "not ready".to_string()))
        );
        server.join().unwrap();
    }

    #[test]
    fn http_to_a_closed_port_is_an_error() {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, crate::free_port()));
        assert!(http(addr, "GET", "/healthz", &[], "").is_err());
    }

    #[test]
    fn a_process_stops_on_sigterm_and_keeps_its_log_until_dropped() {
        let script = "trap 'echo bye; exit 7' TERM; echo up; while :; do sleep 0.05; done";
        let mut p = Process::spawn(
            "sh",
            Path::new("/bin/sh"),
            &["-c".to_string(), script.to_string()],
            &[],
        );
        assert!(wait_until(Duration::from_secs(10), || p
            .log()
            .contains("up")));
        assert!(p.is_running());
        assert_eq!(p.wait_exit(Duration::from_millis(100)), None);
        p.terminate();
        let status = p
            .wait_exit(Duration::from_secs(10))
            .expect("exits on SIGTERM");
        assert_eq!(status.code(), Some(7));
        assert!(p.log().contains("bye"), "{}", p.log());
        assert!(!p.is_running());
        // Idempotent once it is gone.
        p.terminate();
        p.kill();

        let dir = p.dir.path().to_path_buf();
        assert!(dir.join("out.log").exists());
        drop(p);
        assert!(!dir.exists());
    }

    #[test]
    fn kill_ends_a_process_that_ignores_sigterm() {
        let mut p = Process::spawn(
            "sh",
            Path::new("/bin/sh"),
            &[
                "-c".to_string(),
                "trap '' TERM; echo up; while :; do sleep 0.05; done".to_string(),
            ],
            &[],
        );
        assert!(wait_until(Duration::from_secs(10), || p
            .log()
            .contains("up")));
        p.terminate();
        assert_eq!(p.wait_exit(Duration::from_millis(300)), None);
        p.kill();
        assert!(!p.is_running());
        assert_eq!(p.wait_exit(Duration::ZERO).and_then(|s| s.code()), None);
    }

    #[test]
    fn sample_reads_one_series() {
        let page = "# TYPE a_total counter\na_total{x=\"1\",y=\"2\"} 3\n";
        assert_eq!(sample(page, r#"a_total{x="1",y="2"}"#), Some(3.0));
        assert_eq!(sample(page, r#"a_total{y="2",x="1"}"#), Some(3.0));
        assert_eq!(sample(page, r#"a_total{x="1"}"#), None);
        assert_eq!(sample("garbage line", "a_total"), None);
    }
}
