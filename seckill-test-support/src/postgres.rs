//! A private PostgreSQL server for tests: `initdb` into a temporary
//! directory, `postgres` on a free loopback port, trust authentication,
//! fsync off; stopped (SIGQUIT, immediate) and removed on drop.
//!
//! The binaries are Debian's (`apt-get install postgresql`), found under
//! `/usr/lib/postgresql/<version>/bin` (the newest) or on `PATH`.
//! PostgreSQL refuses to run as root, so when the tests run as root (CI
//! does) the directory is handed to `nobody` and both programs run as that
//! user through util-linux's `setpriv`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustix::process::{kill_process, Pid, Signal};
use tempfile::TempDir;

use crate::backoff;

const MISSING: &str = "PostgreSQL not found: install it (Debian: apt-get install -y postgresql)";
/// `nobody` / `nogroup` on Debian.
const NOBODY: u32 = 65534;

/// One private PostgreSQL server with a database `postgres`, user `postgres`.
pub struct PostgresServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// Serves TLS with `server.crt`/`server.key` of its data directory.
    tls: bool,
}

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().unwrap_or_default()
}

/// A command for `program` in `bin`, as `nobody` when we are root.
fn command(bin: &Path, program: &str) -> Command {
    let path = bin.join(program);
    if rustix::process::geteuid().is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            format!("--reuid={NOBODY}"),
            format!("--regid={NOBODY}"),
            "--clear-groups".into(),
            "--".into(),
        ])
        .arg(path);
        c
    } else {
        Command::new(path)
    }
}

impl PostgresServer {
    /// Initialises and starts a server, ready for connections.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A server that also accepts TLS, with this certificate and key (PEM).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Self {
        let bin = bin_dir();
        assert!(bin.join("initdb").exists(), "{MISSING}");
        let dir = crate::scratch_dir();
        if rustix::process::geteuid().is_root() {
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY))
                .expect("hand the data directory to nobody");
        }
        let data = dir.path().join("data");
        let out = command(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}"));
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some((cert, key)) = tls {
            use std::os::unix::fs::PermissionsExt;
            for (file, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = data.join(file);
                std::fs::write(&path, pem).expect("write the server's TLS files");
                // The server refuses a key others can read.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("restrict the server's TLS files");
                if rustix::process::geteuid().is_root() {
                    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY))
                        .expect("hand the TLS files to nobody");
                }
            }
        }
        let mut server = PostgresServer {
            port: 0,
            dir,
            child: None,
            tls: tls.is_some(),
        };
        let mut last = String::new();
        for _ in 0..5 {
            server.port = crate::free_port();
            match server.spawn(&bin) {
                Ok(()) => return server,
                Err(e) => {
                    last = e;
                    server.stop();
                }
            }
        }
        panic!("postgres did not start: {last}");
    }

    fn spawn(&mut self, bin: &Path) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.path().join("postgres.log"))
            .map_err(|e| e.to_string())?;
        let child = command(bin, "postgres")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(self.dir.path())
            .args([
                "-F",
                "-c",
                "max_connections=50",
                "-c",
                "shared_buffers=32MB",
            ])
            .args(if self.tls { &["-c", "ssl=on"][..] } else { &[] })
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot spawn postgres: {e}"))?;
        self.child = Some(child);
        let port = self.port.to_string();
        backoff::retry(Duration::from_secs(20), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("postgres exited: {status}: {}", self.log()));
            }
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-q"])
                .status()
                .map_err(|e| e.to_string())?;
            if ready.success() {
                Ok(())
            } else {
                Err("not ready".to_string())
            }
        })
    }

    /// `host=127.0.0.1 port=PORT user=postgres dbname=postgres`.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Stops the server at once (SIGQUIT). Idempotent.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = Pid::from_raw(child.id() as i32) {
                let _ = kill_process(pid, Signal::QUIT);
            }
            let stopped = backoff::retry(Duration::from_secs(10), || match child.try_wait() {
                Ok(Some(_)) => Ok(()),
                _ => Err(()),
            });
            if stopped.is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
    }
}
