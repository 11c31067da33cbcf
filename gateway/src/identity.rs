//! Who the buyer is: the body's `user_id` (`--buyer-auth none`, demos
//! only), the `sub` of a verified JWT (`jwt`), or a header set by an
//! authenticating proxy in `--trusted-proxies` (`header`).
//!
//! Everything that can be done once is done at start: files read, keys
//! parsed into [`DecodingKey`]s, the [`Validation`] of each key built. A
//! request costs one header lookup and, with `jwt`, one signature check
//! the first time its token is seen: a verified token is remembered until
//! its `exp` (see [`Verified`]), so a buyer's retries in a crowd cost a
//! hash and a lookup, not an RSA or ECDSA verification each.
//! The algorithm of a token is the one its key was configured for, never
//! the one its header names, so `alg: none` and an HS256 token "signed"
//! with an RSA public key are refused like any other forgery.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use hyper::Request;
use ipnet::IpNet;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, Validation};
use seckill_ops::http::{peer_addr, HttpResponse};
use seckill_ops::process::ConfigError;
use serde::Deserialize;

use crate::answer::{Answer, Status};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// The shortest HS256 secret accepted: the hash's own size (RFC 7518 3.2).
const MIN_HS256_SECRET: usize = 32;

/// A token longer than this is refused unread.
const MAX_TOKEN: usize = 8 * 1024;

/// How the gateway learns the buyer of a request.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BuyerAuth {
    /// The body's `user_id`, unchecked: for demos and the quick start.
    #[default]
    None,
    /// The `sub` of a verified `Authorization: Bearer` JWT.
    Jwt,
    /// A header set by an authenticating proxy in --trusted-proxies.
    Header,
}

/// The buyer-authentication options (flattened into the gateway's).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct IdentityArgs {
    /// How the buyer is known: `none` trusts the body's user_id (demos
    /// only), `jwt` a verified bearer token, `header` an authenticating proxy.
    #[arg(long, env = "SECKILL_BUYER_AUTH", value_enum, default_value_t = BuyerAuth::None)]
    pub buyer_auth: BuyerAuth,
    /// File holding the HS256 secret of buyer tokens (at least 32 bytes).
    #[arg(long, env = "SECKILL_JWT_HS256_SECRET_FILE")]
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM public key of buyer tokens: RSA (RS256) or P-256 EC (ES256).
    #[arg(long, env = "SECKILL_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWKS file of buyer-token keys (RS256, ES256), chosen by the token's `kid`.
    #[arg(long, env = "SECKILL_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// The `iss` buyer tokens must carry [default: not checked].
    #[arg(long, env = "SECKILL_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// The `aud` buyer tokens must carry [default: not checked].
    #[arg(long, env = "SECKILL_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Header naming the buyer, set by the authenticating proxy (`header`).
    #[arg(long, env = "SECKILL_USER_HEADER")]
    pub user_header: Option<String>,
}

impl IdentityArgs {
    /// Validates the options and loads the keys; `trusted_proxies` are the
    /// gateway's `--trusted-proxies` (the only peers `header` believes).
    pub fn identity(&self, trusted_proxies: &[IpNet]) -> Result<Identity, ConfigError> {
        let jwt_only = [
            (
                "--jwt-hs256-secret-file",
                self.jwt_hs256_secret_file.is_some(),
            ),
            ("--jwt-public-key-file", self.jwt_public_key_file.is_some()),
            ("--jwks-file", self.jwks_file.is_some()),
            ("--jwt-issuer", self.jwt_issuer.is_some()),
            ("--jwt-audience", self.jwt_audience.is_some()),
        ];
        if self.buyer_auth != BuyerAuth::Jwt {
            if let Some((flag, _)) = jwt_only.iter().find(|(_, set)| *set) {
                return Err(ConfigError(format!("{flag} needs --buyer-auth jwt")));
            }
        }
        if self.buyer_auth != BuyerAuth::Header && self.user_header.is_some() {
            return Err(ConfigError(
                "--user-header needs --buyer-auth header".into(),
            ));
        }
        match self.buyer_auth {
            BuyerAuth::None => Ok(Identity::Body),
            BuyerAuth::Jwt => {
                crate::signatures::install();
                Ok(Identity::Jwt(Arc::new(self.jwt()?)))
            }
            BuyerAuth::Header => Ok(Identity::Header(Arc::new(self.header(trusted_proxies)?))),
        }
    }

    fn jwt(&self) -> Result<JwtVerifier, ConfigError> {
        let keys = match (
            &self.jwt_hs256_secret_file,
            &self.jwt_public_key_file,
            &self.jwks_file,
        ) {
            (Some(path), None, None) => vec![(None, hs256_key(path)?)],
            (None, Some(path), None) => vec![(None, pem_key(path)?)],
            (None, None, Some(path)) => jwks_keys(path)?,
            (None, None, None) => {
                return Err(ConfigError(
                    "--buyer-auth jwt needs a key: --jwt-hs256-secret-file, \
                     --jwt-public-key-file or --jwks-file"
                        .into(),
                ))
            }
            _ => {
                return Err(ConfigError(
                    "give only one of --jwt-hs256-secret-file, --jwt-public-key-file and \
                     --jwks-file"
                        .into(),
                ))
            }
        };
        if let Some(bits) = keys
            .iter()
            .filter(|(_, (alg, _))| *alg == Algorithm::RS256)
            .map(|(_, (_, key))| rsa_bits(key))
            .find(|bits| *bits < crate::signatures::MIN_RSA_BITS)
        {
            return Err(ConfigError(format!(
                "an RSA key of {bits} bits: buyer tokens need at least {} bits",
                crate::signatures::MIN_RSA_BITS
            )));
        }
        let keys = keys
            .into_iter()
            .map(|(kid, (algorithm, key))| VerifyingKey {
                kid,
                key,
                validation: self.validation(algorithm),
            })
            .collect();
        Ok(JwtVerifier {
            keys,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            verified: Verified::default(),
        })
    }

    /// The checks of a token for a key of `algorithm`: that algorithm
    /// alone, `exp` required, `nbf` checked, `iss`/`aud` when configured.
    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut v = Validation::new(algorithm);
        v.leeway = LEEWAY_SECS;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &self.jwt_issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        match &self.jwt_audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            // Nothing to compare an `aud` with: not checked.
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }

    fn header(&self, proxies: &[IpNet]) -> Result<TrustedHeader, ConfigError> {
        let Some(name) = &self.user_header else {
            return Err(ConfigError(
                "--buyer-auth header needs --user-header (e.g. x-user-id)".into(),
            ));
        };
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ConfigError(format!("--user-header {name:?} is not a header name")))?;
        if proxies.is_empty() {
            return Err(ConfigError(
                "--buyer-auth header needs --trusted-proxies (the proxies that set the header)"
                    .into(),
            ));
        }
        Ok(TrustedHeader {
            name,
            proxies: proxies.to_vec(),
        })
    }
}

/// Reads an HS256 secret: the file's bytes, less one trailing line end.
fn hs256_key(path: &Path) -> Result<(Algorithm, DecodingKey), ConfigError> {
    let flag = "--jwt-hs256-secret-file";
    let bytes = read(flag, path)?;
    let secret = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let secret = secret.strip_suffix(b"\r").unwrap_or(secret);
    if secret.len() < MIN_HS256_SECRET {
        return Err(ConfigError(format!(
            "{flag}: the secret in {} must be at least {MIN_HS256_SECRET} bytes",
            path.display()
        )));
    }
    let key = DecodingKey::from_secret(secret).map_err(|e| bad_key(flag, path, e))?;
    Ok((Algorithm::HS256, key))
}

/// Reads a PEM public key: RSA means RS256, P-256 EC means ES256.
fn pem_key(path: &Path) -> Result<(Algorithm, DecodingKey), ConfigError> {
    let flag = "--jwt-public-key-file";
    let pem = read(flag, path)?;
    if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
        return Err(ConfigError(format!(
            "{flag}: {} holds a private key; give the public key",
            path.display()
        )));
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((Algorithm::RS256, key));
    }
    match DecodingKey::from_ec_pem(&pem) {
        Ok(key) if is_p256(&key) => Ok((Algorithm::ES256, key)),
        Ok(_) => Err(ConfigError(format!(
            "{flag}: the EC key in {} is not on P-256 (ES256)",
            path.display()
        ))),
        Err(_) => Err(ConfigError(format!(
            "{flag}: {} is not an RSA or P-256 EC public key in PEM",
            path.display()
        ))),
    }
}

/// The modulus size of an RSA key (0 when it cannot be read).
fn rsa_bits(key: &DecodingKey) -> usize {
    let modulus = match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, .. } => n.clone(),
        DecodingKeyKind::SecretOrDer(der) => {
            let components = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER
                .key_utils
                .rsa_pub_components_from_public_key;
            components(der).map_or_else(|_| Vec::new(), |(n, _)| n)
        }
    };
    let n = modulus.iter().skip_while(|b| **b == 0).count();
    n * 8
}

/// An uncompressed P-256 point: 0x04, then 32 bytes each of x and y.
fn is_p256(key: &DecodingKey) -> bool {
    matches!(key.kind(), DecodingKeyKind::SecretOrDer(point) if point.len() == 65)
}

/// A key with its JWKS `kid` (`None` from a secret or PEM file).
type Kid<T> = (Option<String>, T);

/// Reads a JWKS: every RS256 or ES256 signing key, with its `kid`.
fn jwks_keys(path: &Path) -> Result<Vec<Kid<(Algorithm, DecodingKey)>>, ConfigError> {
    let flag = "--jwks-file";
    let set: JwkSet = serde_json::from_slice(&read(flag, path)?)
        .map_err(|e| ConfigError(format!("{flag}: {} is not a JWKS: {e}", path.display())))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let Some(algorithm) = jwk_algorithm(jwk) else {
            continue; // an encryption key, or an algorithm buyers' tokens do not use
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad_key(flag, path, e))?;
        keys.push((jwk.common.key_id.clone(), (algorithm, key)));
    }
    if keys.is_empty() {
        return Err(ConfigError(format!(
            "{flag}: {} has no RS256 or ES256 signing key",
            path.display()
        )));
    }
    Ok(keys)
}

/// The algorithm a JWKS key verifies: its `alg`, or the one its type implies.
fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Some(Algorithm::RS256),
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
            if p.curve == EllipticCurve::P256 =>
        {
            Some(Algorithm::ES256)
        }
        _ => None,
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError(format!("{flag}: cannot read {}: {e}", path.display())))
}

fn bad_key(flag: &str, path: &Path, e: jsonwebtoken::errors::Error) -> ConfigError {
    ConfigError(format!("{flag}: bad key in {}: {e}", path.display()))
}

// === impl Identity ===

/// How the gateway knows the buyer of a request, ready to check requests.
#[derive(Clone, Default)]
pub enum Identity {
    /// `--buyer-auth none`: the buyer is whoever the body names.
    #[default]
    Body,
    Jwt(Arc<JwtVerifier>),
    Header(Arc<TrustedHeader>),
}

impl Identity {
    /// Whether a request must prove who its buyer is.
    pub fn is_on(&self) -> bool {
        !matches!(self, Identity::Body)
    }

    /// Says at start whom the gateway takes for the buyer.
    pub(crate) fn announce(&self) {
        match self {
            Identity::Body => tracing::warn!(
                "--buyer-auth none: the buyer is whoever the request body names; \
                 use jwt or header on a public network"
            ),
            Identity::Jwt(v) => tracing::info!(keys = v.keys.len(), "buyers are JWT subjects"),
            Identity::Header(h) => {
                tracing::info!(header = %h.name, "buyers are named by the trusted proxies")
            }
        }
    }

    /// The authenticated buyer of `req`; `None` when identity is off.
    pub(crate) fn buyer<B>(&self, req: &Request<B>) -> Result<Option<String>, Refusal> {
        match self {
            Identity::Body => Ok(None),
            Identity::Jwt(v) => v.buyer(req).map(Some),
            Identity::Header(h) => h.buyer(req).map(Some),
        }
    }
}

impl fmt::Debug for Identity {
    // Names the mode and what it checks; never a key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Body => f.write_str("Body"),
            Identity::Jwt(v) => f
                .debug_struct("Jwt")
                .field("keys", &v.keys.len())
                .field("issuer", &v.issuer)
                .field("audience", &v.audience)
                .finish(),
            Identity::Header(h) => f
                .debug_struct("Header")
                .field("name", &h.name)
                .field("proxies", &h.proxies)
                .finish(),
        }
    }
}

/// Why a request's buyer is not known: each is `401 unauthorized`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No bearer token.
    Missing,
    /// A token that is malformed, expired, not yet valid, for another
    /// issuer or audience, or badly signed.
    Invalid,
    /// A buyer header from a peer outside --trusted-proxies (or none).
    Untrusted,
    /// A trusted proxy sent no usable buyer header.
    NoBuyer,
}

impl Refusal {
    /// The 401 answer, with its `WWW-Authenticate` challenge (RFC 6750).
    pub(crate) fn answer(self) -> (Status, HttpResponse) {
        let s = Status::Unauthorized;
        let (message, challenge) = match self {
            Refusal::Missing => ("a bearer token is required", "Bearer"),
            Refusal::Invalid => (
                "the bearer token is invalid or expired",
                r#"Bearer error="invalid_token""#,
            ),
            Refusal::Untrusted => ("the buyer must be named by a trusted proxy", "Bearer"),
            Refusal::NoBuyer => ("the proxy named no valid buyer", "Bearer"),
        };
        let mut resp = Answer::of(s).error(message).into_response(s);
        resp.headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        (s, resp)
    }
}

/// A buyer id as the purchase API accepts it in a body.
fn valid_buyer(id: &str) -> bool {
    (1..=64).contains(&id.len()) && !id.chars().any(char::is_control)
}

// === impl JwtVerifier ===

/// Verifies buyer tokens against keys parsed at start.
pub struct JwtVerifier {
    keys: Vec<VerifyingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    verified: Verified,
}

struct VerifyingKey {
    /// The JWKS `kid`; `None` for a key from a secret or PEM file.
    kid: Option<String>,
    key: DecodingKey,
    /// Fixes the algorithm, whatever the token's header says.
    validation: Validation,
}

/// The claims the gateway reads; the others are checked by `Validation`.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// A NumericDate, which may have a fraction.
    exp: f64,
}

impl JwtVerifier {
    fn buyer<B>(&self, req: &Request<B>) -> Result<String, Refusal> {
        let token = bearer(req)?;
        let now = unix_now();
        if let Some(sub) = self.verified.get(token, now) {
            return Ok(sub.to_string());
        }
        let key = self.key_for(token)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|_| Refusal::Invalid)?
            .claims;
        if !valid_buyer(&claims.sub) {
            return Err(Refusal::Invalid);
        }
        self.verified.insert(token, &claims.sub, claims.exp as u64);
        Ok(claims.sub)
    }

    /// The key a token is checked with: the only one, or (JWKS) the one
    /// its `kid` names; a token without `kid` only when there is one key.
    fn key_for(&self, token: &str) -> Result<&VerifyingKey, Refusal> {
        if let [only] = self.keys.as_slice() {
            if only.kid.is_none() {
                return Ok(only); // a secret or PEM file: no header to read
            }
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Invalid)?;
        match (header.kid, self.keys.as_slice()) {
            (Some(kid), keys) => keys.iter().find(|k| k.kid.as_deref() == Some(kid.as_str())),
            (None, [only]) => Some(only),
            (None, _) => None,
        }
        .ok_or(Refusal::Invalid)
    }
}

/// Seconds since the epoch, as `exp` counts them.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// === impl Verified ===

/// Tokens seen in each generation of [`Verified`] before it is retired.
const VERIFIED_GENERATION: usize = 50_000;

/// Tokens that passed verification, with their subject and `exp`: a token
/// seen again is the same buyer until it expires (the keys, issuer and
/// audience are fixed at start, and `nbf` once passed stays passed).
///
/// Keyed by a 128-bit hash under two random keys, so nobody can make two
/// tokens collide, and bounded to two generations: when the current one is
/// full it becomes the previous one and the oldest is dropped (an entry
/// found in the previous generation moves to the current). At most
/// 2 × [`VERIFIED_GENERATION`] entries of about 150 bytes each.
struct Verified {
    keys: (RandomState, RandomState),
    generations: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<u128, VerifiedToken>,
    previous: HashMap<u128, VerifiedToken>,
}

#[derive(Clone)]
struct VerifiedToken {
    sub: Arc<str>,
    exp: u64,
}

impl Default for Verified {
    fn default() -> Self {
        Verified {
            keys: (RandomState::new(), RandomState::new()),
            generations: Mutex::default(),
        }
    }
}

impl Verified {
    fn key(&self, token: &str) -> u128 {
        let (a, b) = &self.keys;
        (u128::from(a.hash_one(token)) << 64) | u128::from(b.hash_one(token))
    }

    /// The subject of `token` if it was verified and has not expired (by
    /// the same leeway verification allows).
    fn get(&self, token: &str, now: u64) -> Option<Arc<str>> {
        let key = self.key(token);
        let mut g = self.generations.lock().unwrap();
        let found = match g.current.get(&key) {
            Some(t) => t.clone(),
            None => {
                let t = g.previous.remove(&key)?;
                g.promote(key, t.clone());
                t
            }
        };
        if found.exp.saturating_add(LEEWAY_SECS) < now {
            g.current.remove(&key);
            return None;
        }
        Some(found.sub)
    }

    fn insert(&self, token: &str, sub: &str, exp: u64) {
        let key = self.key(token);
        let t = VerifiedToken {
            sub: sub.into(),
            exp,
        };
        self.generations.lock().unwrap().promote(key, t);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let g = self.generations.lock().unwrap();
        g.current.len() + g.previous.len()
    }
}

impl Generations {
    fn promote(&mut self, key: u128, t: VerifiedToken) {
        if self.current.len() >= VERIFIED_GENERATION {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, t);
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer<B>(req: &Request<B>) -> Result<&str, Refusal> {
    let Some(value) = req.headers().get(AUTHORIZATION) else {
        return Err(Refusal::Missing);
    };
    let value = value.to_str().map_err(|_| Refusal::Invalid)?;
    let Some((scheme, token)) = value.split_once(' ') else {
        return Err(Refusal::Missing);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::Missing);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN {
        return Err(Refusal::Invalid);
    }
    Ok(token)
}

// === impl TrustedHeader ===

/// Takes the buyer from a header, from trusted proxies only.
pub struct TrustedHeader {
    name: HeaderName,
    proxies: Vec<IpNet>,
}

impl TrustedHeader {
    fn buyer<B>(&self, req: &Request<B>) -> Result<String, Refusal> {
        // The TCP peer itself: forwarding headers name clients, not proxies.
        // (An IPv4 peer on an IPv6 socket counts as its IPv4 address.)
        let peer = peer_addr(req).map(|p| p.ip().to_canonical());
        if !peer.is_some_and(|ip| self.proxies.iter().any(|net| net.contains(&ip))) {
            return Err(Refusal::Untrusted);
        }
        // Exactly one: a proxy that appends instead of replacing would
        // otherwise let a client's own header through.
        let mut values = req.headers().get_all(&self.name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(Refusal::NoBuyer);
        };
        match value.to_str() {
            Ok(id) if valid_buyer(id) => Ok(id.to_string()),
            _ => Err(Refusal::NoBuyer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>) -> Request<()> {
        let mut b = Request::builder();
        if let Some(a) = auth {
            b = b.header(AUTHORIZATION, a);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_bearer_token_is_read_from_its_header() {
        assert_eq!(bearer(&req(None)), Err(Refusal::Missing));
        assert_eq!(bearer(&req(Some("Basic dXNlcg=="))), Err(Refusal::Missing));
        assert_eq!(bearer(&req(Some("Bearer "))), Err(Refusal::Invalid));
        assert_eq!(bearer(&req(Some("bearer a.b.c"))), Ok("a.b.c"));
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN + 1));
        assert_eq!(bearer(&req(Some(&long))), Err(Refusal::Invalid));
    }

    #[test]
    fn a_verified_token_is_remembered_until_it_expires_and_no_longer() {
        let v = Verified::default();
        let now = 1_000_000;
        assert!(v.get("a.b.c", now).is_none(), "never verified");
        v.insert("a.b.c", "alice", now + 60);
        assert_eq!(v.get("a.b.c", now).as_deref(), Some("alice"));
        assert!(v.get("a.b.d", now).is_none(), "another token");
        assert_eq!(
            v.get("a.b.c", now + 60 + LEEWAY_SECS).as_deref(),
            Some("alice"),
            "within the leeway, as verification allows"
        );
        assert!(v.get("a.b.c", now + 61 + LEEWAY_SECS).is_none(), "expired");
        assert!(v.get("a.b.c", now).is_none(), "an expired entry is dropped");
    }

    #[test]
    fn the_verified_tokens_are_bounded_and_recent_ones_survive() {
        let v = Verified::default();
        let exp = u64::MAX / 2;
        v.insert("kept", "k", exp);
        for i in 0..(3 * VERIFIED_GENERATION) {
            v.insert(&format!("t{i}"), "x", exp);
            if i % 1000 == 0 {
                assert!(v.get("kept", 0).is_some(), "a token in use stays");
            }
        }
        assert!(v.len() <= 2 * VERIFIED_GENERATION, "{}", v.len());
        assert!(v.get("t0", 0).is_none(), "the oldest generation is gone");
    }

    #[test]
    fn buyer_ids_are_what_a_body_may_say() {
        assert!(valid_buyer("u-42"));
        assert!(!valid_buyer(""));
        assert!(!valid_buyer(&"x".repeat(65)));
        assert!(!valid_buyer("a\nb"));
    }
}
