//! Buyer tokens for a gateway that verifies its buyers (`--buyer-auth
//! jwt`): the harness signs one token per buyer, `sub` = the buyer's user
//! id, with the key the gateway's verifying key belongs to.
//!
//! Tokens are signed before the schedule starts, on every core, so the
//! cost of signing (about a millisecond per RSA token) never delays an
//! arrival.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// How long the tokens the harness signs stay valid.
const VALID_FOR_SECS: u64 = 3600;

/// A signing key: an RSA (RS256) or P-256 EC (ES256) private key in PEM,
/// or else the file's bytes as an HS256 secret (less one line end).
pub struct SigningKey {
    algorithm: Algorithm,
    key: EncodingKey,
    issuer: Option<String>,
    audience: Option<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

impl SigningKey {
    /// Reads the key in `path`; `issuer` and `audience` go into every token.
    pub fn from_file(
        path: &Path,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> anyhow::Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let (algorithm, key) = if bytes.starts_with(b"-----BEGIN") {
            if let Ok(k) = EncodingKey::from_rsa_pem(&bytes) {
                (Algorithm::RS256, k)
            } else if let Ok(k) = EncodingKey::from_ec_pem(&bytes) {
                (Algorithm::ES256, k)
            } else {
                anyhow::bail!(
                    "{} is PEM but not an RSA or P-256 EC private key",
                    path.display()
                );
            }
        } else {
            let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
            let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
            anyhow::ensure!(!secret.is_empty(), "{} is empty", path.display());
            (Algorithm::HS256, EncodingKey::from_secret(secret)?)
        };
        Ok(SigningKey {
            algorithm,
            key,
            issuer,
            audience,
        })
    }

    /// A token for buyer `sub`, valid for an hour.
    pub fn sign(&self, sub: &str) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = Claims {
            sub,
            exp: now + VALID_FOR_SECS,
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(self.algorithm),
            &claims,
            &self.key,
        )?)
    }

    /// `Bearer` header values for buyers `prefix` + 0..count, signed on
    /// every core.
    pub fn sign_all(&self, prefix: &str, count: u64) -> anyhow::Result<Vec<String>> {
        let count = usize::try_from(count).context("too many buyers")?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = count.div_ceil(threads).max(1);
        let mut values = vec![String::new(); count];
        std::thread::scope(|s| {
            let workers: Vec<_> = values
                .chunks_mut(chunk)
                .enumerate()
                .map(|(i, out)| {
                    s.spawn(move || -> anyhow::Result<()> {
                        for (j, v) in out.iter_mut().enumerate() {
                            let token = self.sign(&format!("{prefix}{}", i * chunk + j))?;
                            *v = format!("Bearer {token}");
                        }
                        Ok(())
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().expect("signing does not panic"))
        })?;
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    #[test]
    fn tokens_name_each_buyer_and_verify_with_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, b"0123456789abcdef0123456789abcdef\n").unwrap();
        let key = SigningKey::from_file(&path, Some("shop".into()), None).unwrap();
        let all = key.sign_all("u-", 5).unwrap();
        assert_eq!(all.len(), 5);
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&["shop"]);
        v.validate_aud = false;
        let secret = DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
        for (i, header) in all.iter().enumerate() {
            let token = header.strip_prefix("Bearer ").unwrap();
            let claims = jsonwebtoken::decode::<serde_json::Value>(token, &secret, &v)
                .unwrap()
                .claims;
            assert_eq!(claims["sub"], format!("u-{i}"));
        }
        std::fs::write(&path, b"-----BEGIN PUBLIC KEY-----\nxx\n").unwrap();
        assert!(SigningKey::from_file(&path, None, None).is_err());
    }
}
