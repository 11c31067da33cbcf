//! Unguessable ids and the wall clock, in the forms the store keeps.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngExt;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An id nobody can guess from any other: 128 bits from a CSPRNG, as 32
/// lowercase hex digits (a valid Redis key part, no `.` or `:`).
///
/// Request ids and order ids are made from it, and `GET
/// /api/v1/requests/{id}` answers whoever holds an id, so ids must not be
/// enumerable: no process prefix, no counter. Unique by probability alone,
/// which at 128 bits is safe far beyond any sale's volume.
///
/// The bits come from `rand`'s thread-local generator (ChaCha, seeded from
/// the OS and reseeded by `rand`): about 0.1 µs per id against 0.35 µs for
/// one `getrandom` system call, and two ids are made per purchase. Without
/// an OS entropy source it panics rather than fall back to guessable ids.
pub fn unique_id() -> String {
    prefixed_id(&[])
}

/// `parts` followed by a [`unique_id`], in one allocation and without the
/// formatting machinery: every request, refused ones included, gets one.
pub(crate) fn prefixed_id(parts: &[&str]) -> String {
    let mut id = String::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + 32);
    for part in parts {
        id.push_str(part);
    }
    push_hex(&mut id, rand::rng().random());
    id
}

/// `bits` as 32 lowercase hex digits, as `{bits:032x}` writes them.
fn push_hex(out: &mut String, bits: u128) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 32];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    out.push_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digits_are_those_of_the_formatter() {
        for bits in [
            0,
            1,
            0xf,
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            let mut out = String::from("x.");
            push_hex(&mut out, bits);
            assert_eq!(out, format!("x.{bits:032x}"));
        }
    }

    #[test]
    fn ids_are_distinct_and_fixed_width() {
        let a = unique_id();
        let b = unique_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    /// What the issue asks: ids from one process cannot be told from one
    /// another's neighbours, so none can be guessed from another.
    #[test]
    fn request_ids_share_no_random_part_and_differ_from_their_neighbours() {
        use std::collections::HashSet;
        let ids: Vec<String> = (0..10_000).map(|_| crate::request_id("s")).collect();
        let random: Vec<&str> = ids.iter().map(|id| &id["s.".len()..]).collect();
        let distinct: HashSet<&&str> = random.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "a random part repeats");
        for r in &random {
            // 128 bits, and still a valid Redis key part.
            assert_eq!(r.len(), 32, "{r}");
            assert!(r.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        }
        for pair in random.windows(2) {
            let same = pair[0]
                .bytes()
                .zip(pair[1].bytes())
                .filter(|(a, b)| a == b)
                .count();
            // 2 of 32 agree on average; a counter would agree in 30.
            assert!(
                same < 16,
                "{} then {}: {same} of 32 alike",
                pair[0],
                pair[1]
            );
        }
    }
}
