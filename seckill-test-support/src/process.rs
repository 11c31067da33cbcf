//! The project's binaries as child processes of a test: spawned with their
//! output in a log file, stopped with SIGTERM or SIGKILL on request, and
//! always killed by `Drop`; plus a blocking HTTP/1.1 exchange for probing
//! their admin ports without a client library.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A binary of this workspace built next to the running test: test
/// executables live in `target/<profile>/deps/`, binaries in
/// `target/<profile>/`. `cargo test --workspace` builds every binary of a
/// package that has integration tests.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executables live in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run the workspace's tests (scripts/test) or `cargo build -p {name}` first",
        path.display()
    );
    path
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
    /// stdout and stderr go to a log file (see [`Process::log`]).
    pub fn spawn(name: &str, program: &Path, args: &[String], envs: &[(&str, &str)]) -> Self {
        let dir = crate::scratch_dir();
        let log = std::fs::File::create(dir.path().join("out.log")).expect("create the log file");
        let err = log.try_clone().expect("clone the log file handle");
        let child = Command::new(program)
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
        if let Some(pid) = self.pid() {
            if self.is_running() {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
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
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            sleep(Duration::from_millis(20));
        }
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

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`):
/// the status code and the body. Errors are connection failures.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String), String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream
        .write_all(req.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no complete response: {text:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {head:?}"))?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `check` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        sleep(Duration::from_millis(20));
    }
}

/// The value of one sample, `name{labels}` as exposed (label order free),
/// in a Prometheus text exposition; `None` if the page does not have it or
/// is not one [`Scrape`](crate::metrics::Scrape) reads.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    crate::metrics::Scrape::parse(metrics).ok()?.value(series)
}
