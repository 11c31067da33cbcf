//! Checks of the `deploy/` folder against the real binaries. The tests in
//! `tests/` are the checks; this library holds what they share: the options
//! the binaries really take (read from their clap definitions), the metric
//! selectors of a PromQL expression, YAML loading, and bounded runs of
//! external commands. Prometheus text is read with
//! `seckill_test_support::metrics`, as in every other test.
//!
//! The tests need the workspace's binaries built next to them
//! (`cargo test --workspace` builds them; for `cargo test -p deploy-check`
//! alone run `cargo build -p gateway -p seckill-service -p order-relay -p loadtest`
//! first),
//! `redis-server`, and `promtool` (Debian package `prometheus`; `scripts/test`
//! installs both).

#![forbid(unsafe_code)]

pub mod command;
pub mod options;
pub mod promql;
pub mod yaml;

use std::path::PathBuf;

/// The repository's root folder.
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(|deploy| deploy.parent())
        .expect("the crate lives in deploy/check")
        .to_path_buf()
}

/// `deploy/` in the repository, or one of its files.
pub fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

/// Reads a file of the repository (relative to its root), naming it on
/// failure.
pub fn read(path: impl Into<PathBuf>) -> String {
    let path = path.into();
    let path = if path.is_absolute() {
        path
    } else {
        repo_root().join(path)
    };
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}
