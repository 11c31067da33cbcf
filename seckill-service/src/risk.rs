//! Risk control: the checks that may refuse a purchase before it touches
//! stock. A blacklist of users, and a per-user velocity cap on attempts
//! that reach the service.

use std::collections::HashSet;
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

/// Users tracked by the velocity check before old windows are forgotten.
const MAX_TRACKED_USERS: usize = 100_000;

/// What risk control refuses.
#[derive(Clone, Debug, Default)]
pub struct RiskConfig {
    /// Users refused outright.
    pub blacklist: HashSet<String>,
    /// Most attempts one user may make per second of service time; zero
    /// disables the check.
    pub max_attempts_per_user_per_sec: u32,
}

/// Applies a [`RiskConfig`].
pub struct RiskControl {
    config: RiskConfig,
    /// user → (window start, attempts in it)
    attempts: DashMap<String, (Instant, u32)>,
}

impl RiskControl {
    pub fn new(config: RiskConfig) -> Self {
        RiskControl {
            config,
            attempts: DashMap::new(),
        }
    }

    /// `Some(reason)` when the attempt must be refused.
    pub fn check(&self, user_id: &str) -> Option<&'static str> {
        if self.config.blacklist.contains(user_id) {
            return Some("blacklisted");
        }
        let cap = self.config.max_attempts_per_user_per_sec;
        if cap == 0 {
            return None;
        }
        if self.attempts.len() >= MAX_TRACKED_USERS {
            // Bounded memory: forget windows that have closed.
            let now = Instant::now();
            self.attempts
                .retain(|_, (start, _)| now.duration_since(*start) < Duration::from_secs(1));
        }
        let now = Instant::now();
        let mut entry = self.attempts.entry(user_id.to_string()).or_insert((now, 0));
        let (start, count) = &mut *entry;
        if now.duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *count = 0;
        }
        *count += 1;
        (*count > cap).then_some("velocity")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blacklist_refuses() {
        let r = RiskControl::new(RiskConfig {
            blacklist: ["bad".to_string()].into(),
            ..Default::default()
        });
        assert_eq!(r.check("bad"), Some("blacklisted"));
        assert_eq!(r.check("good"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn velocity_caps_attempts_per_second() {
        let r = RiskControl::new(RiskConfig {
            max_attempts_per_user_per_sec: 2,
            ..Default::default()
        });
        assert_eq!(r.check("u"), None);
        assert_eq!(r.check("u"), None);
        assert_eq!(r.check("u"), Some("velocity"));
        assert_eq!(r.check("v"), None, "users are counted apart");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(r.check("u"), None, "a new second opens a new window");
    }
}
