//! External commands with a time limit. Output goes to files rather than
//! pipes: a script that leaves background processes behind (as
//! `deploy/local/up` does on purpose) would otherwise hold the pipe open and
//! a reader would wait for those processes, not for the script.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// What a finished command left.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Exit status, stdout and stderr, for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` (stdin closed) and waits for it at most `timeout`; kills it
/// and panics past that, naming `what`.
pub fn run(what: &str, cmd: &mut Command, timeout: Duration) -> Output {
    run_with_input(what, cmd, None, timeout)
}

/// [`run`], with `input` as the command's stdin.
pub fn run_with_input(
    what: &str,
    cmd: &mut Command,
    input: Option<&str>,
    timeout: Duration,
) -> Output {
    let dir = seckill_test_support::temp_dir();
    let out_path = dir.join("stdout");
    let err_path = dir.join("stderr");
    let stdin = match input {
        Some(text) => {
            let path = dir.join("stdin");
            std::fs::write(&path, text).expect("write the command's input");
            Stdio::from(std::fs::File::open(&path).expect("open the command's input"))
        }
        None => Stdio::null(),
    };
    let mut child = cmd
        .stdin(stdin)
        .stdout(std::fs::File::create(&out_path).expect("create the stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("create the stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the command") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let output = collect(&dir, &out_path, &err_path);
            panic!(
                "{what}: no exit within {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                output.0, output.1
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = collect(&dir, &out_path, &err_path);
    Output {
        status,
        stdout,
        stderr,
    }
}

/// Reads what the command wrote and removes its scratch folder.
fn collect(dir: &Path, out: &Path, err: &Path) -> (String, String) {
    let stdout = std::fs::read_to_string(out).unwrap_or_default();
    let stderr = std::fs::read_to_string(err).unwrap_or_default();
    let _ = std::fs::remove_dir_all(dir);
    (stdout, stderr)
}

/// `promtool`, or a panic with the one line that says how to get it.
pub fn promtool() -> PathBuf {
    which("promtool").unwrap_or_else(|| {
        panic!(
            "promtool not found: install it (Debian: apt-get install -y prometheus), or run scripts/test as root, which does"
        )
    })
}

/// The first `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_with_input_and_reports_status() {
        let out = run_with_input(
            "cat",
            &mut Command::new("cat"),
            Some("hello"),
            Duration::from_secs(5),
        );
        assert!(out.status.success());
        assert_eq!(out.stdout, "hello");
    }

    #[test]
    fn a_background_child_does_not_hold_the_run() {
        // The shell exits at once; its child sleeps on with the same stdout.
        let started = Instant::now();
        let out = run(
            "sh",
            Command::new("sh").args(["-c", "sleep 3 & echo $!"]),
            Duration::from_secs(2),
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        let pid = out.stdout.trim().to_string();
        let _ = Command::new("kill").arg(&pid).status();
    }

    #[test]
    #[should_panic(expected = "no exit within")]
    fn a_hung_command_is_killed() {
        run(
            "sleep",
            Command::new("sleep").arg("5"),
            Duration::from_millis(200),
        );
    }
}
