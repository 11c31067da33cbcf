//! RS256 and ES256 signature checks of buyer tokens on `ring`, the crypto
//! library the build already carries for TLS, in place of the pure-Rust
//! backend `jsonwebtoken` is built with. Measured on the refusal path
//! with a new token per request (scripts/bench), the pure-Rust checks
//! cost about 135 µs (RS256) and 210 µs (ES256) of CPU each; a gateway
//! verifying a crowd of new buyers is bounded by them.
//!
//! Everything else (HS256, signing, JWK helpers) stays with the backend
//! `jsonwebtoken` is built with. The provider is installed once per
//! process, before the first token is checked; if something in the process
//! used `jsonwebtoken` first, its default stays, which is slower, not
//! weaker.

use std::sync::OnceLock;

use jsonwebtoken::crypto::{rust_crypto, CryptoProvider, JwtVerifier};
use jsonwebtoken::errors::{Error, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::signature::{
    RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256,
};

/// The smallest RSA modulus `ring` verifies (and the gateway accepts).
pub(crate) const MIN_RSA_BITS: usize = 2048;

/// Makes `ring` check RS256 and ES256 signatures in this process.
pub(crate) fn install() {
    static PROVIDER: OnceLock<CryptoProvider> = OnceLock::new();
    let provider = PROVIDER.get_or_init(|| CryptoProvider {
        verifier_factory: verifier,
        ..rust_crypto::DEFAULT_PROVIDER.clone()
    });
    // Err: a provider is in place already (ours, or a default latched by
    // an earlier use of the crate): it stays.
    let _ = provider.install_default();
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>, Error> {
    match algorithm {
        Algorithm::RS256 | Algorithm::ES256 => Ok(Box::new(RingVerifier {
            algorithm: *algorithm,
            key: key.clone(),
        })),
        _ => (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(algorithm, key),
    }
}

/// One RS256 or ES256 check.
struct RingVerifier {
    algorithm: Algorithm,
    key: DecodingKey,
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> Result<(), signature::Error> {
        let checked = match (self.algorithm, self.key.kind()) {
            (Algorithm::RS256, DecodingKeyKind::SecretOrDer(der)) => {
                UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, der).verify(msg, sig)
            }
            (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => {
                RsaPublicKeyComponents { n, e }.verify(&RSA_PKCS1_2048_8192_SHA256, msg, sig)
            }
            // The uncompressed point of a P-256 key.
            (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => {
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(msg, sig)
            }
            _ => {
                return Err(signature::Error::from_source(Error::from(
                    ErrorKind::InvalidKeyFormat,
                )))
            }
        };
        checked.map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;

    const RSA_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/rsa-private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/rsa-public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("../tests/fixtures/ec-private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("../tests/fixtures/ec-public.pem");

    /// Signs `msg` with the pure-Rust backend; returns the raw signature.
    fn signed(alg: Algorithm, key: &EncodingKey, msg: &[u8]) -> Vec<u8> {
        let signer = (rust_crypto::DEFAULT_PROVIDER.signer_factory)(&alg, key).unwrap();
        signature::Signer::try_sign(&*signer, msg).unwrap()
    }

    fn check(alg: Algorithm, public: &DecodingKey, sig: &[u8], msg: &[u8]) -> bool {
        let v = verifier(&alg, public).unwrap();
        v.verify(msg, &sig.to_vec()).is_ok()
    }

    #[test]
    fn ring_checks_what_the_backend_signs_and_nothing_else() {
        let cases = [
            (
                Algorithm::RS256,
                EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap(),
                DecodingKey::from_rsa_pem(RSA_PUBLIC).unwrap(),
            ),
            (
                Algorithm::ES256,
                EncodingKey::from_ec_pem(EC_PRIVATE).unwrap(),
                DecodingKey::from_ec_pem(EC_PUBLIC).unwrap(),
            ),
        ];
        for (alg, private, public) in cases {
            let msg = b"eyJhbGciOiJ4In0.eyJzdWIiOiJhbGljZSJ9";
            let sig = signed(alg, &private, msg);
            assert!(check(alg, &public, &sig, msg), "{alg:?}: a good signature");
            assert!(
                !check(alg, &public, &sig, b"eyJzdWIiOiJtYWxsb3J5In0"),
                "{alg:?}: another message"
            );
            let mut bad = sig.clone();
            bad[10] ^= 1;
            assert!(!check(alg, &public, &bad, msg), "{alg:?}: a flipped bit");
            assert!(!check(alg, &public, &[], msg), "{alg:?}: no signature");
        }
        // An RS256 check with the EC key (and the reverse) fails, never panics.
        let rsa = DecodingKey::from_rsa_pem(RSA_PUBLIC).unwrap();
        let ec = DecodingKey::from_ec_pem(EC_PUBLIC).unwrap();
        assert!(!check(Algorithm::ES256, &rsa, &[0; 64], b"m"));
        assert!(!check(Algorithm::RS256, &ec, &[0; 256], b"m"));
    }

    #[test]
    fn a_jwks_rsa_key_is_checked_from_its_components() {
        let private = EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap();
        let public = DecodingKey::from_rsa_pem(RSA_PUBLIC).unwrap();
        let (n, e) = match public.kind() {
            DecodingKeyKind::SecretOrDer(der) => {
                let (n, e) = (rust_crypto::DEFAULT_PROVIDER
                    .key_utils
                    .rsa_pub_components_from_public_key)(der)
                .unwrap();
                (n, e)
            }
            DecodingKeyKind::RsaModulusExponent { n, e } => (n.clone(), e.clone()),
        };
        let components = DecodingKey::from_rsa_raw_components(&n, &e);
        let msg = b"header.payload";
        let sig = signed(Algorithm::RS256, &private, msg);
        assert!(check(Algorithm::RS256, &components, &sig, msg));
        assert!(!check(Algorithm::RS256, &components, &sig, b"header.other"));
    }
}
