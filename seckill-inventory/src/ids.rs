//! Unique ids and the wall clock, in the forms the store keeps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A process-unique id, unique across processes with high probability: at
/// least 16 hex digits.
///
/// A random 32-bit process prefix plus a counter: unique within a process by
/// construction, and across processes unless two of them draw the same
/// prefix.
pub fn unique_id() -> String {
    static PREFIX: OnceLock<u32> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut b = [0u8; 4];
        if getrandom::fill(&mut b).is_err() {
            // No entropy source: fall back to the clock and pid, still
            // distinct between processes started apart.
            let t = now_ms() as u32 ^ std::process::id().rotate_left(16);
            b = t.to_le_bytes();
        }
        u32::from_le_bytes(b)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix:08x}{n:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_fixed_width() {
        let a = unique_id();
        let b = unique_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
