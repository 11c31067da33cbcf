//! Webhook signatures: `Seckill-Signature: t=<unix seconds>,v1=<hex>`, the
//! hex HMAC-SHA256 of `"<t>.<body>"` under the shared secret (the Stripe
//! and GitHub convention). The timestamp inside the signed text lets a
//! receiver refuse replays of an old delivery; [`verify`] is the check a
//! receiver runs, shipped so every subscriber can use the same one.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header the relay signs every webhook delivery with.
pub const HEADER: &str = "Seckill-Signature";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], t: u64, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `t` (Unix seconds).
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    let tag = mac(secret, t, body).finalize().into_bytes();
    let mut hex = String::with_capacity(tag.len() * 2);
    for b in tag.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("t={t},v1={hex}")
}

/// Why a delivery's signature is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("the signature header is malformed")]
    Malformed,
    #[error("the signature's timestamp is outside the tolerance")]
    Stale,
    #[error("no signature matches the body")]
    Mismatch,
}

/// Checks a `Seckill-Signature` header against the body received: the
/// timestamp within `tolerance_secs` of `now` (Unix seconds) and one `v1`
/// tag (several are allowed, as during a secret rotation) equal to the
/// HMAC of `"<t>.<body>"`, compared in constant time.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> Result<(), Invalid> {
    let mut t = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| Invalid::Malformed)?),
            Some(("v1", v)) => tags.push(decode_hex(v).ok_or(Invalid::Malformed)?),
            // Other schemes (a future v2) are ignored, not refused.
            Some(_) => {}
            None => return Err(Invalid::Malformed),
        }
    }
    let t = t.ok_or(Invalid::Malformed)?;
    if tags.is_empty() {
        return Err(Invalid::Malformed);
    }
    if t.abs_diff(now) > tolerance_secs {
        return Err(Invalid::Stale);
    }
    let expected = mac(secret, t, body);
    if tags
        .iter()
        .any(|tag| expected.clone().verify_slice(tag).is_ok())
    {
        Ok(())
    } else {
        Err(Invalid::Mismatch)
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec-test";

    #[test]
    fn a_signed_body_verifies() {
        let body = br#"{"events":[]}"#;
        let header = sign(SECRET, 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
        assert_eq!(verify(SECRET, &header, body, 1_700_000_010, 300), Ok(()));
    }

    #[test]
    fn a_known_vector() {
        // HMAC-SHA256(key "key", "1.x"), computed independently.
        assert_eq!(
            sign(b"key", 1, b"x"),
            "t=1,v1=fc4913c41a7bf793267e2a384f3261c9436ec2cd097bd745e7b0d99113f510ec"
        );
    }

    #[test]
    fn tampering_fails() {
        let body = br#"{"events":[{"order_id":"o-s.1","quantity":1}]}"#;
        let header = sign(SECRET, 100, body);
        let tampered = br#"{"events":[{"order_id":"o-s.1","quantity":9}]}"#;
        assert_eq!(
            verify(SECRET, &header, tampered, 100, 300),
            Err(Invalid::Mismatch)
        );
        assert_eq!(
            verify(b"other", &header, body, 100, 300),
            Err(Invalid::Mismatch),
            "another secret"
        );
        // A timestamp changed to pass the tolerance breaks the tag.
        let moved = header.replacen("t=100", "t=900", 1);
        assert_eq!(
            verify(SECRET, &moved, body, 900, 300),
            Err(Invalid::Mismatch)
        );
        assert_eq!(
            verify(SECRET, &header, body, 1000, 300),
            Err(Invalid::Stale)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let body = b"x";
        let good = sign(SECRET, 5, body);
        let tag = good.split("v1=").nth(1).unwrap();
        for bad in [
            "".to_string(),
            "t=5".to_string(),
            format!("v1={tag}"),
            format!("t=x,v1={tag}"),
            format!("t=5,v1={}", &tag[1..]),
            format!("t=5,v1=zz{}", &tag[2..]),
            format!("t=5,v1={}", "ab".repeat(100)),
            "garbage".to_string(),
        ] {
            assert!(verify(SECRET, &bad, body, 5, 300).is_err(), "{bad}");
        }
        // A second tag (rotation) and an unknown scheme are fine.
        let rotated = format!("t=5,v1={},v1={tag},v0=zz", "00".repeat(32));
        assert_eq!(verify(SECRET, &rotated, body, 5, 300), Ok(()));
    }
}
