//! How many connections a run opens, and what to change when they were
//! the bottleneck.
//!
//! An open-model run holds one connection per request in flight, so by
//! Little's law it needs about *peak arrival rate × latency* of them; with
//! fewer, the arrivals queue for a free connection and the corrected
//! latency measures that queue rather than the target. `--connections
//! auto` sizes them so from the profile and an expected latency, within
//! the file descriptors the process may open. After the run, [`advice`]
//! says when the wait for a connection dominated the latency, and what to
//! change: the connections, the target's per-address cap, or the rate,
//! when the target (or the machine it shares with the generator) answered
//! less than was offered.

use std::time::Duration;

use crate::model::Report;
use crate::profile::Profile;
use crate::summary::fmt_us;

/// The latency `--connections auto` plans for: a spike's successes on a
/// durable store hold their connection this long, measured on a small
/// machine shared with the gateway.
pub const DEFAULT_EXPECTED_LATENCY: Duration = Duration::from_millis(100);
/// The fewest connections `auto` opens.
const MIN_AUTO: usize = 16;
/// The most `auto` opens: a default gateway accepts 10,000 connections per
/// listener, and setting up more would cost the generator more than they
/// help.
const MAX_AUTO: usize = 10_000;
/// File descriptors kept for everything else (the standard streams, the
/// report files, the admin API's connections, the resolver).
const FD_RESERVE: u64 = 64;

/// Raises the soft limit on open files to the hard one, as other load
/// generators do, and returns the connections it leaves room for.
pub fn raise_fd_limit() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current != limit.maximum {
        // Refused (a hard limit the kernel does not allow): keep the soft.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    fd_cap()
}

/// Connections the current limit on open files leaves room for.
pub fn fd_cap() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let fds = soft.unwrap_or(u64::MAX).saturating_sub(FD_RESERVE).max(1);
    fds.min(65_535) as usize
}

/// The connections `--connections auto` opens for `profile`, and how it
/// got there (for the report).
pub fn auto(profile: &Profile, expected: Duration, fd_cap: usize) -> (usize, String) {
    let cap = MAX_AUTO.min(fd_cap).max(1);
    let (want, why) = match profile.peak_rate() {
        Some(rate) => {
            let want = (rate * expected.as_secs_f64()).ceil() as usize;
            (
                want,
                format!(
                    "auto: peak {rate:.0}/s × {} expected latency",
                    fmt_us(expected.as_micros() as u64)
                ),
            )
        }
        None => (
            profile.arrivals_total() as usize,
            "auto: every buyer at the same instant".to_string(),
        ),
    };
    let n = want.clamp(MIN_AUTO.min(cap), cap);
    let why = if n < want {
        let limit = if cap == fd_cap {
            format!("the open-file limit (ulimit -n) leaves room for {fd_cap}")
        } else {
            format!("at most {MAX_AUTO}")
        };
        format!("{why} = {want}, capped: {limit}")
    } else {
        why
    };
    (n, why)
}

/// What to change, when the run's latency was mostly the wait for a free
/// connection, or the target refused connections beyond its cap.
pub fn advice(r: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let conns = r.settings.connections;
    if r.address_limited > 0 {
        out.push(format!(
            "{} answers were 429 address_limit: the gateway caps the connections of one \
             client address (--max-connections-per-ip, 256 by default) below the {conns} \
             this run opened; raise it on the gateway, or run with --connections under it",
            r.address_limited
        ));
    }
    let wait = r.schedule.connection_wait.p99_us;
    let dominated = wait > r.settings.max_lag_ms * 1_000 && wait * 2 > r.all.p99_us;
    if !dominated {
        return out;
    }
    let waited = format!(
        "requests waited p99 {} for one of the {conns} connections (latency p99 {})",
        fmt_us(wait),
        fmt_us(r.all.p99_us)
    );
    if r.throughput_rps < 0.9 * r.offered_rps {
        // More connections only move the queue into the target: it (or
        // the machine it shares with this generator) served no faster.
        let fits = (r.throughput_rps * 0.7).max(1.0);
        out.push(format!(
            "{waited}: the target answered {:.0}/s of the {:.0}/s offered, the most this \
             machine and target serve; lower the profile's rate to about {fits:.0}/s, or \
             run loadtest on another machine than the gateway",
            r.throughput_rps, r.offered_rps
        ));
    } else {
        let raw_p99 = r.outcomes.values().map(|o| o.raw.p99_us).max().unwrap_or(0);
        let need = (r.offered_rps * raw_p99 as f64 / 1e6 * 1.5).ceil() as u64;
        out.push(format!(
            "{waited}: raise --connections to about {} (offered {:.0}/s × raw p99 {}, \
             with room), or --expected-latency-ms with --connections auto",
            need.max(conns as u64 + 1),
            r.offered_rps,
            fmt_us(raw_p99)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LatencyStats, OutcomeStats};

    fn p(s: &str) -> Profile {
        s.parse().unwrap()
    }

    #[test]
    fn auto_follows_the_peak_rate_within_its_caps() {
        let ms100 = Duration::from_millis(100);
        assert_eq!(auto(&p("at-once:10000/1s"), ms100, 20_000).0, 1_000);
        assert_eq!(auto(&p("ramp:2000/30s"), ms100, 20_000).0, 200);
        assert_eq!(auto(&p("stages:100/1s,5000/1s"), ms100, 20_000).0, 500);
        // A trickle still gets a few; all at once gets one each, capped.
        assert_eq!(auto(&p("constant:10/1s"), ms100, 20_000).0, MIN_AUTO);
        assert_eq!(auto(&p("at-once:300"), ms100, 20_000).0, 300);
        let (n, why) = auto(&p("at-once:50000/1s"), ms100, 1_000);
        assert_eq!(n, 1_000);
        assert!(why.contains("ulimit -n") && why.contains("5000"), "{why}");
        let (n, why) = auto(&p("at-once:500000/1s"), ms100, 65_535);
        assert_eq!(n, MAX_AUTO);
        assert!(why.contains("at most"), "{why}");
    }

    fn report(offered: f64, throughput: f64, wait_us: u64, p99_us: u64) -> Report {
        let mut r = Report {
            offered_rps: offered,
            throughput_rps: throughput,
            ..Default::default()
        };
        r.settings.connections = 256;
        r.settings.max_lag_ms = 50;
        r.schedule.connection_wait.p99_us = wait_us;
        r.all.p99_us = p99_us;
        let raw = LatencyStats {
            p99_us: 100_000,
            ..Default::default()
        };
        r.outcomes.insert(
            "success".into(),
            OutcomeStats {
                count: 1,
                corrected: LatencyStats::default(),
                raw,
                distribution: vec![],
                raw_distribution: vec![],
            },
        );
        r
    }

    #[test]
    fn advice_names_what_to_change() {
        // Short waits: nothing to say.
        assert!(advice(&report(10_000.0, 9_990.0, 1_000, 20_000)).is_empty());
        // The target kept up, the connections did not: more of them.
        let a = advice(&report(10_000.0, 9_990.0, 127_000, 155_000));
        assert_eq!(a.len(), 1);
        assert!(a[0].contains("raise --connections to about 1500"), "{a:?}");
        // The target answered far less than offered: a lower rate.
        let a = advice(&report(50_000.0, 15_600.0, 2_280_000, 2_330_000));
        assert!(a[0].contains("lower the profile's rate"), "{a:?}");
        // Refused connections are named whatever the wait.
        let mut r = report(10_000.0, 9_990.0, 1_000, 20_000);
        r.address_limited = 3;
        assert!(advice(&r)[0].contains("--max-connections-per-ip"));
    }
}
