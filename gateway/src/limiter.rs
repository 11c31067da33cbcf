//! The per-user edge limit: a keyed `governor` rate limiter on
//! (sale, user), refusing a user's excess attempts with 429 before they
//! cost a token.
//!
//! Keys are 64-bit hashes, so checking costs no allocation. Memory is
//! bounded: idle keys are swept every second, and should a flood of
//! distinct users still push the table past its cap, it starts afresh
//! (briefly forgetting limits beats unbounded memory).

use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Keys kept at most before the table starts afresh.
const MAX_KEYS: usize = 1_000_000;

pub(crate) struct EdgeLimiter {
    quota: Option<Quota>,
    limiter: RwLock<Arc<DefaultKeyedRateLimiter<u64>>>,
    hasher: std::hash::RandomState,
}

impl EdgeLimiter {
    /// `rate_per_sec` = 0 disables the limit.
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        let quota = NonZeroU32::new(rate_per_sec)
            .map(|r| Quota::per_second(r).allow_burst(NonZeroU32::new(burst).unwrap_or(r)));
        let limiter = RateLimiter::keyed(quota.unwrap_or(Quota::per_second(NonZeroU32::MIN)));
        EdgeLimiter {
            quota,
            limiter: RwLock::new(Arc::new(limiter)),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// True when `user_id` may make another attempt on `sale_id` now.
    pub fn check(&self, sale_id: &str, user_id: &str) -> bool {
        if self.quota.is_none() {
            return true;
        }
        let key = self.hasher.hash_one((sale_id, user_id));
        let limiter = self.limiter.read().unwrap().clone();
        limiter.check_key(&key).is_ok()
    }

    /// Forgets keys whose state is back to full burst.
    pub fn sweep(&self) {
        let Some(quota) = self.quota else { return };
        let limiter = self.limiter.read().unwrap().clone();
        limiter.retain_recent();
        if limiter.len() > MAX_KEYS {
            tracing::warn!(
                keys = limiter.len(),
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
    fn zero_rate_disables() {
        let l = EdgeLimiter::new(0, 0);
        assert!((0..100).all(|_| l.check("s", "u")));
    }
}
