//! Failed admin authentications, counted per client address, so the admin
//! token cannot be guessed at network speed.
//!
//! A fixed window per address opens at its first failure; once it holds
//! [`MAX_FAILURES`] failures the address is refused, right token or not,
//! until the window closes (refused attempts do not extend it). Nothing else closes it early: a success from
//! the same address (an admin behind the guesser's NAT) neither resets nor
//! lifts it, so a guess that happens to be right is not recognizable.
//!
//! Memory is bounded: at most [`MAX_TRACKED`] windows, the oldest evicted
//! first; expired windows are dropped as new failures come in. IPv6
//! clients count per /64, the block one host usually holds.
//!
//! The table is process-wide (one admin listener per gateway process), and
//! keyed by listener as well as client, so gateways that tests run side by
//! side in one process keep separate counts.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Failures an address may have in one window; the next attempt is refused.
pub(crate) const MAX_FAILURES: u32 = 10;
/// How long an address's failures count.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most.
pub(crate) const MAX_TRACKED: usize = 10_000;

/// Who failed: the client (IPv6 by /64) on a listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    listener: Option<SocketAddr>,
    client: IpAddr,
}

impl Key {
    pub(crate) fn new(listener: Option<SocketAddr>, client: IpAddr) -> Self {
        let client = match client.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(bits))
            }
            v4 => v4,
        };
        Key { listener, client }
    }

    pub(crate) fn client(&self) -> IpAddr {
        self.client
    }
}

#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Failure windows by address.
pub(crate) struct Lockout {
    max_failures: u32,
    window: Duration,
    capacity: usize,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    windows: HashMap<Key, Window>,
    /// Windows by start, oldest first; an entry whose key has a newer
    /// window since is stale and skipped.
    order: VecDeque<(Key, Instant)>,
}

/// The gateway's admin lockout.
pub(crate) fn admin() -> &'static Lockout {
    static ADMIN: LazyLock<Lockout> =
        LazyLock::new(|| Lockout::new(MAX_FAILURES, WINDOW, MAX_TRACKED));
    &ADMIN
}

impl Lockout {
    pub(crate) fn new(max_failures: u32, window: Duration, capacity: usize) -> Self {
        Lockout {
            max_failures,
            window,
            capacity: capacity.max(1),
            state: Mutex::default(),
        }
    }

    /// Lets `key` make one attempt, counted as a failure until
    /// [`Lockout::succeeded`] says otherwise, so concurrent guesses cannot
    /// slip past the count; `Ok(true)` when it is the window's last.
    /// `Err(wait)` while `key` is refused, for `wait` more.
    pub(crate) fn attempt(&self, key: Key, now: Instant) -> Result<bool, Duration> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.prune(now, self.window);
        if let Some(w) = state.windows.get_mut(&key) {
            if w.failures >= self.max_failures {
                return Err((w.started + self.window).saturating_duration_since(now));
            }
            w.failures += 1;
            return Ok(w.failures == self.max_failures);
        }
        while state.windows.len() >= self.capacity {
            state.evict_oldest();
        }
        state.windows.insert(
            key,
            Window {
                started: now,
                failures: 1,
            },
        );
        state.order.push_back((key, now));
        Ok(self.max_failures == 1)
    }

    /// The attempt `key` made at `at` was no failure: takes back its count
    /// (others' counts and the window stay as they are).
    pub(crate) fn succeeded(&self, key: Key, at: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = state.windows.get_mut(&key) {
            if w.started <= at {
                w.failures = w.failures.saturating_sub(1);
            }
        }
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state.lock().unwrap().windows.len()
    }
}

impl State {
    /// Drops the windows that closed by `now`.
    fn prune(&mut self, now: Instant, window: Duration) {
        while let Some(&(_, started)) = self.order.front() {
            if now < started + window {
                break;
            }
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        while let Some((key, started)) = self.order.pop_front() {
            if self.windows.get(&key).is_some_and(|w| w.started == started) {
                self.windows.remove(&key);
                return;
            }
        }
        // The order has no live entry left: it and the table agree again.
        self.windows.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8) -> Key {
        Key::new(None, IpAddr::from([10, 0, 0, last]))
    }

    #[test]
    fn the_eleventh_failure_in_a_window_is_refused_until_it_closes() {
        let l = Lockout::new(10, WINDOW, 100);
        let t0 = Instant::now();
        for i in 1..=10 {
            assert_eq!(l.attempt(key(1), t0), Ok(i == 10), "attempt {i}");
        }
        let later = t0 + Duration::from_secs(20);
        assert_eq!(l.attempt(key(1), later), Err(Duration::from_secs(40)));
        // Refused attempts do not extend the window.
        assert_eq!(l.attempt(key(1), later), Err(Duration::from_secs(40)));
        // Another address has its own count.
        assert_eq!(l.attempt(key(2), later), Ok(false));
        l.succeeded(key(2), later);
        // A new window opens when the old one closed.
        assert_eq!(l.attempt(key(1), t0 + WINDOW), Ok(false));
    }

    #[test]
    fn a_success_takes_back_only_its_own_count() {
        let l = Lockout::new(3, WINDOW, 100);
        let t0 = Instant::now();
        l.attempt(key(1), t0).unwrap();
        l.attempt(key(1), t0).unwrap();
        l.attempt(key(1), t0).unwrap();
        l.succeeded(key(1), t0);
        assert_eq!(l.attempt(key(1), t0), Ok(true), "two failures stay");
        assert!(l.attempt(key(1), t0).is_err());
        // Neither does a success of one address lift another's refusal.
        l.attempt(key(2), t0).unwrap();
        l.succeeded(key(2), t0);
        assert!(l.attempt(key(1), t0).is_err());
    }

    #[test]
    fn memory_is_bounded_and_the_oldest_go_first() {
        let l = Lockout::new(2, WINDOW, 3);
        let t0 = Instant::now();
        for i in 0..3u8 {
            let at = t0 + Duration::from_millis(i.into());
            l.attempt(key(i), at).unwrap();
            l.attempt(key(i), at).unwrap();
        }
        let now = t0 + Duration::from_millis(10);
        l.attempt(key(9), now).unwrap();
        assert_eq!(l.tracked(), 3);
        assert!(l.attempt(key(0), now).is_ok(), "the oldest was evicted");
        assert!(l.attempt(key(2), now).is_err(), "the newer are kept");
        // Closed windows are dropped by the next attempt.
        l.attempt(key(7), t0 + WINDOW + Duration::from_secs(1))
            .unwrap();
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Key::new(None, a), Key::new(None, b));
        assert_ne!(Key::new(None, a), Key::new(None, c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Key::new(None, mapped), key(1));
    }
}
