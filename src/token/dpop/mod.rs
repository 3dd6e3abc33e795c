//! DPoP proof checking (RFC 9449 §4.3, SPEC §4.8): whether one `DPoP` header is a valid proof
//! for one request, and which key it proves.
//!
//! [`DpopChecker::check`] runs the checks of RFC 9449 §4.3 in this order, cheapest first so a
//! forged proof costs no signature verification:
//! exactly one `DPoP` header → a compact JWS with JSON header and payload (`jwt::parse`, which
//! refuses duplicate members) → `typ` = `dpop+jwt` → `alg` in `[dpop].algorithms` (asymmetric
//! only) → no `crit` → a public `jwk` without private members whose type fits `alg` → `jti`,
//! `htm`, `htu`, `iat`, `ath` → optionally the token's `cnf.jkt` → the signature with that
//! `jwk` → with `require_nonce`, a current server nonce → the replay record, last, so only a
//! proof that passed everything occupies a slot. On success it returns the RFC 7638 thumbprint
//! of the proof key ([`Proven::jkt`]).
//!
//! State, owned by the checker behind small types so a shared (Redis) implementation can replace
//! each later (SPEC §8 Scale-out): [`replay::ReplayStore`] (seen `jti`s), [`nonce::NonceSource`]
//! (server nonces) and [`verifiers::VerifierCache`] (josekit verifiers by thumbprint, never
//! shared). [`DpopChecker::reconfigured`] carries all three into a new configuration
//! generation: a reload must not forget which proofs were used.
//!
//! Left to the callers: extracting `Authorization: DPoP <token>`, verifying the token and reading
//! its `cnf.jkt`, working out the URI the client addressed ([`ExpectedHtu`]) and mapping every
//! [`ProofError`] to a `Rejection` (see [`ProofErrorKind`]) are `authn`'s (`binding.rs`);
//! rendering it is `rejection`'s; putting the next nonce on answers is the gateway's. Counting
//! `tokengate_dpop_proofs_total` waits for `/metrics`, which is not served yet.

mod error;
mod htu;
pub mod nonce;
pub mod replay;
mod thumbprint;
pub mod verifiers;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::model::{Algorithm, Dpop};
use crate::token::claims::{self, Round};
use crate::token::jwt;

pub use error::{ProofError, ProofErrorKind};
pub use htu::ExpectedHtu;
pub use thumbprint::{thumbprint, ThumbprintError};

use nonce::{NonceCheck, NonceSource};
use replay::{ReplayError, ReplayStore};
use verifiers::VerifierCache;

/// The request header carrying the proof.
pub static DPOP: HeaderName = HeaderName::from_static("dpop");
/// The response header carrying a server nonce.
pub static DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

/// A proof longer than this is refused unparsed. The largest legitimate one (an RSA-8192 `jwk`
/// and signature) stays under 4 KiB.
pub const MAX_PROOF_BYTES: usize = 8192;
/// Longest accepted `jti`, in bytes (RFC 9449 asks for ≥ 96 bits of randomness; UUIDs are 36).
pub const MAX_JTI_BYTES: usize = 256;
/// JWK members only a private or symmetric key has (RFC 7518 §6).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
const PROOF_TYP: &str = "dpop+jwt";

/// Checks DPoP proofs for one configuration generation (see the module documentation).
#[derive(Debug)]
pub struct DpopChecker {
    /// `[dpop].algorithms`, HS* removed whatever the configuration says.
    algorithms: Vec<Algorithm>,
    max_age_secs: i64,
    /// The largest issuer `clock_skew`: a replay record is kept for `max_age` plus this, so
    /// every record outlives the window of any issuer's tokens (see [`Self::reconfigured`]).
    max_skew_secs: i64,
    require_nonce: bool,
    replay: Arc<ReplayStore>,
    nonces: Arc<NonceSource>,
    verifiers: Arc<VerifierCache>,
}

/// One request, as far as its proof is concerned.
#[derive(Clone, Copy)]
pub struct ProofRequest<'a> {
    /// The request headers; the checker reads the `DPoP` header(s) itself.
    pub headers: &'a HeaderMap,
    pub method: &'a Method,
    /// The URI the client addressed.
    pub htu: ExpectedHtu<'a>,
    /// The access token from `Authorization: DPoP <token>` (for `ath`).
    pub access_token: &'a str,
    /// Allowed clock difference, seconds (the issuer's `clock_skew`); negative counts as 0.
    pub clock_skew_secs: i64,
    /// The token's `cnf.jkt`, when the caller already knows it. Compared before the signature
    /// is verified and the `jti` recorded ([`ProofError::KeyMismatch`]), so a proof for some
    /// other key costs no verifier and never occupies a replay slot: pass it whenever the token
    /// is verified first. With `None` the caller must compare [`Proven::jkt`] itself.
    pub bound_jkt: Option<&'a str>,
}

impl std::fmt::Debug for ProofRequest<'_> {
    /// Without the headers and the access token: both carry credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProofRequest")
            .field("method", self.method)
            .field("htu", &self.htu)
            .field("clock_skew_secs", &self.clock_skew_secs)
            .field("bound_jkt", &self.bound_jkt)
            .finish_non_exhaustive()
    }
}

/// A valid, first-seen proof.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Proven {
    /// RFC 7638 thumbprint of the proof key, base64url: what the token's `cnf.jkt` must equal.
    pub jkt: String,
}

impl DpopChecker {
    /// A checker with empty state (a fresh nonce secret); `max_skew` is the largest issuer
    /// `clock_skew`. `Err` only when the OS has no randomness for the nonce secret.
    pub fn new(settings: &Dpop, max_skew: Duration) -> Result<DpopChecker, getrandom::Error> {
        let mut checker = DpopChecker::assemble(
            settings,
            Arc::new(ReplayStore::new(settings.replay_cache_entries)),
            Arc::new(NonceSource::new(settings.max_age)?),
            Arc::new(VerifierCache::new(verifiers::DEFAULT_MAX_KEYS)),
        );
        checker.max_skew_secs = secs(max_skew);
        Ok(checker)
    }

    /// The checker of a new configuration generation that keeps this one's state: the replay
    /// records (resized to the new `replay_cache_entries`, shared with this checker so in-flight
    /// requests of the old generation record into the same place), the nonce secret (nonces
    /// already handed out stay valid unless `max_age` changes their period) and the verifiers.
    ///
    /// A longer window (`max_age` plus the largest `clock_skew`) must not revive used proofs:
    /// live records are kept longer by the difference, and a proof old enough that its record
    /// may already have been dropped under the old window is refused as stale from now on
    /// ([`ReplayStore::widen`]).
    pub fn reconfigured(&self, settings: &Dpop, max_skew: Duration, now_unix: i64) -> DpopChecker {
        self.replay.set_capacity(settings.replay_cache_entries);
        let mut checker = DpopChecker::assemble(
            settings,
            Arc::clone(&self.replay),
            Arc::new(self.nonces.reconfigured(settings.max_age)),
            Arc::clone(&self.verifiers),
        );
        checker.max_skew_secs = secs(max_skew);
        let (old, new) = (self.retention_secs(), checker.retention_secs());
        if new > old {
            self.replay.widen(new - old, now_unix.saturating_sub(old));
        }
        checker
    }

    /// How long after its `iat` a proof's replay record is kept.
    fn retention_secs(&self) -> i64 {
        self.max_age_secs.saturating_add(self.max_skew_secs)
    }

    /// A checker over the given state (tests, and later a shared replay store or nonce source).
    pub fn assemble(
        settings: &Dpop,
        replay: Arc<ReplayStore>,
        nonces: Arc<NonceSource>,
        verifiers: Arc<VerifierCache>,
    ) -> DpopChecker {
        DpopChecker {
            algorithms: settings
                .algorithms
                .iter()
                .copied()
                .filter(|a| !a.is_hmac())
                .collect(),
            max_age_secs: secs(settings.max_age),
            max_skew_secs: 0,
            require_nonce: settings.require_nonce,
            replay,
            nonces,
            verifiers,
        }
    }

    /// The proof algorithms accepted, in configured order (for `algs="..."`).
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    /// The replay records (for tests and a memory gauge).
    pub fn replay_store(&self) -> &ReplayStore {
        &self.replay
    }

    /// With `require_nonce`: the nonce to send in `DPoP-Nonce` (on 401 `use_dpop_nonce` and on
    /// successful responses). `None` without `require_nonce`.
    pub fn current_nonce(&self, now_unix: i64) -> Option<HeaderValue> {
        self.require_nonce.then(|| self.nonces.current(now_unix))
    }

    /// RFC 9449 §4.3 checks 1-11 for this request (and check 12 when `req.bound_jkt` is given),
    /// then records the proof as used. On success, the proof key's thumbprint.
    pub fn check(&self, req: &ProofRequest<'_>, now_unix: i64) -> Result<Proven, ProofError> {
        let proof = single_proof(req.headers)?;
        let parsed = jwt::parse(proof).map_err(|e| match e {
            jwt::JwtError::Algorithm(_) => ProofError::Algorithm,
            _ => ProofError::Malformed(
                "DPoP proof is not a compact JWS with a JSON object header and payload",
            ),
        })?;
        let key = self.proof_key(&parsed)?;
        let claims = parsed.unverified_claims();
        let fresh = self.check_claims(claims, req, now_unix)?;
        let jkt = URL_SAFE_NO_PAD.encode(key.digest);
        // Before the signature: with the token verified first, nobody without a valid bound
        // token can make the checker build (and cache) a verifier for a key of their choice.
        if req.bound_jkt.is_some_and(|bound| bound != jkt) {
            return Err(ProofError::KeyMismatch);
        }
        self.check_signature(&parsed, &key)?;

        // Server state, last: only a proof that passed everything else gets a nonce verdict or
        // occupies a replay slot.
        if self.require_nonce {
            let nonce = claims.get("nonce").map(|v| v.as_str().unwrap_or(""));
            match self.nonces.check(nonce, now_unix) {
                NonceCheck::Current => {}
                NonceCheck::Missing => return Err(ProofError::NonceMissing),
                NonceCheck::Stale => return Err(ProofError::NonceStale),
            }
        }
        self.replay
            .record(
                replay::replay_key(&key.digest, fresh.jti),
                fresh.forget_at,
                now_unix,
            )
            .map_err(|e| match e {
                ReplayError::Replayed => ProofError::Replayed,
                ReplayError::Full => ProofError::StoreFull,
            })?;
        Ok(Proven { jkt })
    }

    /// The header rules (`typ`, `alg`, `crit`, `jwk`) and the proof key they name.
    fn proof_key(&self, parsed: &jwt::Parsed<'_>) -> Result<ProofKey, ProofError> {
        let header = parsed.header();
        if header.get("typ").and_then(Value::as_str) != Some(PROOF_TYP) {
            return Err(ProofError::Typ);
        }
        let alg = parsed.alg();
        if alg.is_hmac() || !self.algorithms.contains(&alg) {
            return Err(ProofError::Algorithm);
        }
        if header.contains_key("crit") {
            return Err(ProofError::Crit);
        }
        let jwk = header
            .get("jwk")
            .and_then(Value::as_object)
            .ok_or(ProofError::Jwk("DPoP proof header has no jwk object"))?;
        // Before any cache lookup: the thumbprint of a private JWK equals its public one's.
        if PRIVATE_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
            return Err(ProofError::PrivateKey);
        }
        if !key_fits(jwk, alg) {
            return Err(ProofError::Jwk(
                "DPoP proof jwk key type does not fit its alg",
            ));
        }
        let canonical =
            thumbprint::canonical_json(jwk).map_err(|e| ProofError::Jwk(e.description()))?;
        let digest = Sha256::digest(canonical.as_bytes()).into();
        Ok(ProofKey {
            alg,
            canonical,
            digest,
        })
    }

    /// `jti`, `htm`, `htu`, `iat`, `ath`.
    fn check_claims<'c>(
        &self,
        claims: &'c Map<String, Value>,
        req: &ProofRequest<'_>,
        now: i64,
    ) -> Result<Fresh<'c>, ProofError> {
        let jti = match claims.get("jti") {
            Some(Value::String(jti)) if !jti.is_empty() && jti.len() <= MAX_JTI_BYTES => jti,
            _ => {
                return Err(ProofError::Malformed(
                    "DPoP proof jti must be a non-empty string of at most 256 bytes",
                ))
            }
        };
        let htm = string_claim(claims, "htm", "DPoP proof has no string htm claim")?;
        if htm != req.method.as_str() {
            return Err(ProofError::Htm);
        }
        let htu = string_claim(claims, "htu", "DPoP proof has no string htu claim")?;
        if !htu::matches(&req.htu, htu) {
            return Err(ProofError::Htu);
        }
        let forget_at = self.check_iat(claims, req.clock_skew_secs.max(0), now)?;
        let ath = string_claim(claims, "ath", "DPoP proof has no string ath claim")?;
        if !ath_matches(ath, req.access_token) {
            return Err(ProofError::Ath);
        }
        Ok(Fresh { jti, forget_at })
    }

    /// The signature, with the (cached) verifier of the proof key.
    fn check_signature(&self, parsed: &jwt::Parsed<'_>, key: &ProofKey) -> Result<(), ProofError> {
        let keys = self
            .verifiers
            .get(&key.digest, &key.canonical, key.alg)
            .map_err(|_| ProofError::Jwk("DPoP proof jwk is not a valid public key for its alg"))?;
        let input = parsed.signing_input().as_bytes();
        let signature = parsed.signature();
        if keys
            .candidates(key.alg, None)
            .any(|v| v.verify(input, signature).is_ok())
        {
            Ok(())
        } else {
            Err(ProofError::BadSignature)
        }
    }

    /// `iat` must lie in `[now - max_age - skew, now + skew]` (a fraction rounded against the
    /// proof in each direction), and not before the replay store's horizon. Returns when the
    /// proof's replay record may be forgotten: the first second at which this `iat` is stale
    /// for every issuer (the largest skew).
    fn check_iat(
        &self,
        claims: &Map<String, Value>,
        skew: i64,
        now: i64,
    ) -> Result<i64, ProofError> {
        const BAD_IAT: ProofError = ProofError::Malformed("DPoP proof iat must be a NumericDate");
        let iat = claims.get("iat").ok_or(BAD_IAT)?;
        let earliest = claims::numeric_date(iat, Round::Down).ok_or(BAD_IAT)?;
        let latest = claims::numeric_date(iat, Round::Up).ok_or(BAD_IAT)?;
        let valid_until = earliest
            .saturating_add(self.max_age_secs)
            .saturating_add(skew);
        if valid_until < now {
            return Err(ProofError::Stale);
        }
        if latest > now.saturating_add(skew) {
            return Err(ProofError::Future);
        }
        if earliest < self.replay.horizon() {
            return Err(ProofError::Stale);
        }
        Ok(earliest
            .saturating_add(self.max_age_secs)
            .saturating_add(skew.max(self.max_skew_secs))
            .saturating_add(1))
    }
}

/// The key a proof's header names.
struct ProofKey {
    alg: Algorithm,
    /// RFC 7638 canonical JSON: the thumbprint input, and the JWK the verifier is built from.
    canonical: String,
    /// SHA-256 of `canonical`: the thumbprint, undecorated.
    digest: [u8; 32],
}

/// What the replay record needs from claims that passed.
struct Fresh<'c> {
    jti: &'c str,
    /// Unix second from which the proof's `iat` is stale, so its record may go.
    forget_at: i64,
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The value of the one `DPoP` header, as text.
fn single_proof(headers: &HeaderMap) -> Result<&str, ProofError> {
    let mut values = headers.get_all(&DPOP).iter();
    let first = values.next().ok_or(ProofError::Missing)?;
    if values.next().is_some() {
        return Err(ProofError::Multiple);
    }
    if first.len() > MAX_PROOF_BYTES {
        return Err(ProofError::Malformed("DPoP proof is too large"));
    }
    first
        .to_str()
        .map_err(|_| ProofError::Malformed("DPoP proof header is not visible ASCII"))
}

fn string_claim<'c>(
    claims: &'c Map<String, Value>,
    name: &str,
    missing: &'static str,
) -> Result<&'c str, ProofError> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .ok_or(ProofError::Malformed(missing))
}

/// Whether the JWK's type (and curve) is the one `alg` signs with.
fn key_fits(jwk: &Map<String, Value>, alg: Algorithm) -> bool {
    let member = |name: &str| jwk.get(name).and_then(Value::as_str);
    match alg {
        Algorithm::ES256 => member("kty") == Some("EC") && member("crv") == Some("P-256"),
        Algorithm::ES384 => member("kty") == Some("EC") && member("crv") == Some("P-384"),
        Algorithm::EdDSA => member("kty") == Some("OKP") && member("crv") == Some("Ed25519"),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => member("kty") == Some("RSA"),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => false,
    }
}

/// `ath` is exactly base64url(SHA-256(token)), no padding (RFC 9449 §4.2).
fn ath_matches(ath: &str, access_token: &str) -> bool {
    let mut expected = [0u8; 43];
    let digest = Sha256::digest(access_token.as_bytes());
    match URL_SAFE_NO_PAD.encode_slice(digest, &mut expected) {
        Ok(43) => ath.as_bytes() == expected,
        _ => false,
    }
}
