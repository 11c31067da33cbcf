//! The edge limits: keyed `governor` rate limiters, one on (sale, user)
//! and one on the client address, refusing excess attempts with 429 before
//! they cost a token.
//!
//! Keys are 64-bit hashes, so checking costs no allocation. Memory is
//! bounded: idle keys are swept every second, and should a flood of
//! distinct keys still push a table past its cap, it starts afresh
//! (briefly forgetting limits beats unbounded memory).

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use seckill_ops::http::address_key;

/// Keys kept at most per table before it starts afresh.
const MAX_KEYS: usize = 1_000_000;

/// The per-user and the per-address limit of one gateway.
pub(crate) struct EdgeLimiter {
    users: Keyed,
    addresses: Keyed,
}

impl EdgeLimiter {
    /// The per-user limit; `rate_per_sec` = 0 disables it. No per-address
    /// limit until [`EdgeLimiter::with_address_limit`].
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        EdgeLimiter {
            users: Keyed::new(rate_per_sec, burst),
            addresses: Keyed::new(0, 0),
        }
    }

    /// Adds the per-address limit; `rate_per_sec` = 0 disables it, a
    /// `burst` of 0 is the rate.
    pub fn with_address_limit(mut self, rate_per_sec: u32, burst: u32) -> Self {
        self.addresses = Keyed::new(rate_per_sec, burst);
        self
    }

    /// True when `user_id` may make another attempt on `sale_id` now.
    pub fn check(&self, sale_id: &str, user_id: &str) -> bool {
        self.users.check((sale_id, user_id))
    }

    /// True when the per-address limit is on.
    pub fn limits_addresses(&self) -> bool {
        self.addresses.quota.is_some()
    }

    /// True when the client address `ip` may make another attempt now
    /// (IPv6 counted by /64, like the connection cap).
    pub fn check_address(&self, ip: IpAddr) -> bool {
        self.addresses.check(address_key(ip))
    }

    /// Forgets keys whose state is back to full burst.
    pub fn sweep(&self) {
        self.users.sweep("per-user");
        self.addresses.sweep("per-address");
    }
}

/// One keyed limiter on hashed keys.
struct Keyed {
    quota: Option<Quota>,
    limiter: RwLock<Arc<DefaultKeyedRateLimiter<u64>>>,
    hasher: std::hash::RandomState,
}

impl Keyed {
    fn new(rate_per_sec: u32, burst: u32) -> Self {
        let quota = NonZeroU32::new(rate_per_sec)
            .map(|r| Quota::per_second(r).allow_burst(NonZeroU32::new(burst).unwrap_or(r)));
        let limiter = RateLimiter::keyed(quota.unwrap_or(Quota::per_second(NonZeroU32::MIN)));
        Keyed {
            quota,
            limiter: RwLock::new(Arc::new(limiter)),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn check(&self, key: impl Hash) -> bool {
        if self.quota.is_none() {
            return true;
        }
        let key = self.hasher.hash_one(key);
        let limiter = self.limiter.read().unwrap().clone();
        limiter.check_key(&key).is_ok()
    }

    fn sweep(&self, which: &'static str) {
        let Some(quota) = self.quota else { return };
        let limiter = self.limiter.read().unwrap().clone();
        limiter.retain_recent();
        if limiter.len() > MAX_KEYS {
            tracing::warn!(
                keys = limiter.len(),
                limit = which,
                "edge limiter over its cap; starting afresh"
            );
            *self.limiter.write().unwrap() = Arc::new(RateLimiter::keyed(quota));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_user_and_sale() {
        let l = EdgeLimiter::new(1, 2);
        assert!(l.check("s", "u"));
        assert!(l.check("s", "u"));
        assert!(!l.check("s", "u"), "burst of 2 used up");
        assert!(l.check("s", "v"), "another user");
        assert!(l.check("t", "u"), "another sale");
    }

    #[test]
    fn limits_per_address() {
        let l = EdgeLimiter::new(0, 0).with_address_limit(1, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.check_address(a));
        assert!(l.check_address(a));
        assert!(!l.check_address(a), "burst of 2 used up");
        assert!(
            l.check_address("192.0.2.2".parse().unwrap()),
            "another address"
        );
        assert!(
            !l.check_address("::ffff:192.0.2.1".parse().unwrap()),
            "the same address, mapped"
        );
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(l.check_address(v6("2001:db8::1")));
        assert!(l.check_address(v6("2001:db8::2")));
        assert!(!l.check_address(v6("2001:db8::3")), "one /64");
        assert!((0..100).all(|_| l.check("s", "u")), "no per-user limit");
    }

    #[test]
    fn zero_rate_disables() {
        let l = EdgeLimiter::new(0, 0);
        assert!((0..100).all(|_| l.check("s", "u")));
        let a = "192.0.2.1".parse().unwrap();
        assert!(!l.limits_addresses());
        assert!((0..100).all(|_| l.check_address(a)));
    }
}
