//! Verifying one compact JWS access token, synchronously and without network (SPEC §4.4).
//!
//! Two steps, so the caller can pick the issuer in between: [`parse`] splits and decodes the
//! token without trusting anything (it yields the unverified `iss` and `kid`), then [`verify`]
//! checks it against one configured issuer and the key set it is given ([`verify_with`] and
//! [`Profile::SignedAnswer`] apply the same rules to an issuer's signed userinfo answer, whose
//! `exp` and `iss` are optional and whose `aud` is not ours). Fetching and refreshing
//! keys (including the refresh an unknown `kid` may justify) is `jwks.rs`'s job; turning a
//! [`JwtError`] into a 401 or 503 is `rejection.rs`'s.
//!
//! Hardening, each on purpose:
//! - base64url is strict (no padding, no `+`/`/`, no whitespace, canonical trailing bits), and
//!   a member name appearing twice in the header or payload makes the token malformed, so no two
//!   parsers can read the same token differently;
//! - `alg` is matched case-sensitively against the issuer's allow-list; `none` never passes;
//! - HS* tokens are verified only with the issuer's configured `hmac_secret`, never with a JWKS
//!   key, which defeats the "RSA public key used as HMAC secret" attack; the MAC comparison is
//!   constant-time;
//! - any `crit` member is refused (we implement no extension); `jku`, `x5u`, `jwk` and `x5c`
//!   are never read;
//! - ECDSA signatures must be the raw `r‖s` form (josekit refuses DER by length).
//!
//! [`check_signed`] is [`check`] that also says which key verified the signature ([`SignedBy`]),
//! for `tokengate explain`; the request path calls `check` and pays nothing for it.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value};
use sha2::digest::core_api::BlockSizeUser;
use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::config::model::{Algorithm, Issuer};
use crate::reason::Reason;
use crate::token::claims::{self, Claims, Round};
use crate::token::keys::KeySet;

/// A compact JWS split and decoded but NOT yet trusted.
pub struct Parsed<'t> {
    header: Map<String, Value>,
    claims: Claims,
    /// The payload as decoded from base64url: the JSON `claims` was parsed from.
    payload_json: Vec<u8>,
    /// `BASE64URL(header) '.' BASE64URL(payload)`, exactly as received.
    signing_input: &'t str,
    signature: Vec<u8>,
    alg: Algorithm,
    kid: Option<String>,
}

impl fmt::Debug for Parsed<'_> {
    /// Only `alg` and `kid`: claims are personal data and stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parsed")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Parsed<'_> {
    /// The `iss` claim as the token states it (use it to pick the issuer, nothing else).
    pub fn unverified_issuer(&self) -> Option<&str> {
        claims::str_claim(&self.claims, "iss")
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The JOSE header, unverified.
    pub fn header(&self) -> &Map<String, Value> {
        &self.header
    }

    /// The payload, unverified.
    pub fn unverified_claims(&self) -> &Claims {
        &self.claims
    }

    /// The bytes the signature covers.
    pub fn signing_input(&self) -> &str {
        self.signing_input
    }

    /// The decoded signature.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// The claims and the payload JSON they were parsed from (after [`check`], verified ones),
    /// without copying either.
    pub fn into_claims(self) -> (Claims, Vec<u8>) {
        (self.claims, self.payload_json)
    }
}

/// Why a token was refused. Descriptions and labels never carry token bytes or claim values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not a well-formed JWS/JWT; the text says which rule broke (our words, never token bytes).
    Malformed(&'static str),
    /// `alg` unknown, not allowed for this issuer, or not fitting the key named by `kid`. Holds
    /// the alg name only when it is short, plain ASCII (see [`JwtError::algorithm`]).
    Algorithm(String),
    /// No key has the token's `kid`, or no key fits a kid-less token: a key refresh may help.
    UnknownKid,
    /// The issuer has no key set loaded right now (the caller answers 503).
    NoKeys,
    BadSignature,
    /// A `crit` header member, in any form.
    Crit,
    /// `typ` missing or not the required one.
    Typ,
    MissingExp,
    Expired,
    NotYetValid,
    IssuedInFuture,
    WrongIssuer,
    WrongAudience,
}

impl JwtError {
    /// An [`JwtError::Algorithm`] that repeats `name` only when it is a plausible JOSE name.
    pub fn algorithm(name: &str) -> JwtError {
        JwtError::Algorithm(safe_alg_name(name).to_owned())
    }

    /// Metrics/log label (SPEC §7 `tokengate_auth_failures_total{reason}`).
    pub fn reason(&self) -> Reason {
        match self {
            JwtError::Malformed(_) | JwtError::MissingExp => Reason::Malformed,
            JwtError::Algorithm(_) => Reason::WrongAlgorithm,
            JwtError::UnknownKid => Reason::UnknownKid,
            JwtError::NoKeys => Reason::Unavailable,
            JwtError::BadSignature => Reason::BadSignature,
            JwtError::Crit => Reason::UnsupportedCrit,
            JwtError::Typ => Reason::WrongTyp,
            JwtError::Expired => Reason::Expired,
            JwtError::NotYetValid | JwtError::IssuedInFuture => Reason::NotYetValid,
            JwtError::WrongIssuer => Reason::WrongIssuer,
            JwtError::WrongAudience => Reason::WrongAudience,
        }
    }

    /// Short public text for `error_description`: which check failed, nothing from the token
    /// except a sanitized alg name.
    pub fn description(&self) -> String {
        match self {
            JwtError::Malformed(what) => format!("malformed token: {what}"),
            JwtError::Algorithm(name) => {
                format!("token alg {} is not accepted here", safe_alg_name(name))
            }
            JwtError::UnknownKid => "no key of the issuer matches the token".into(),
            JwtError::NoKeys => "the issuer's keys are not available".into(),
            JwtError::BadSignature => "token signature is invalid".into(),
            JwtError::Crit => "token has critical header parameters (crit)".into(),
            JwtError::Typ => "token typ is not accepted".into(),
            JwtError::MissingExp => "token has no exp claim".into(),
            JwtError::Expired => "token has expired".into(),
            JwtError::NotYetValid => "token is not valid yet (nbf)".into(),
            JwtError::IssuedInFuture => "token is issued in the future (iat)".into(),
            JwtError::WrongIssuer => "token issuer is not accepted".into(),
            JwtError::WrongAudience => "token audience is not accepted".into(),
        }
    }
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description())
    }
}

impl std::error::Error for JwtError {}

/// `name` when it is 1-16 characters of `[A-Za-z0-9+._-]`, else a placeholder: safe inside a
/// quoted `WWW-Authenticate` parameter and a log line.
fn safe_alg_name(name: &str) -> &str {
    let plain = |c: char| c.is_ascii_alphanumeric() || "+._-".contains(c);
    if (1..=16).contains(&name.len()) && name.chars().all(plain) {
        name
    } else {
        "(unrecognized)"
    }
}

/// Splits and decodes a compact JWS. Checks only its shape: three non-empty strict base64url
/// parts, a header and payload that are JSON objects without duplicate members, a string `alg`
/// naming a known algorithm, a string `kid` when present.
pub fn parse(token: &str) -> Result<Parsed<'_>, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("not three dot-separated parts"));
    };
    if h.is_empty() || p.is_empty() || s.is_empty() {
        return Err(JwtError::Malformed("empty part"));
    }
    let (header, _) = decode_object(h, "header")?;
    let (claims, payload_json) = decode_object(p, "payload")?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwtError::Malformed("signature is not base64url without padding"))?;
    let alg = match header.get("alg") {
        Some(Value::String(name)) => {
            Algorithm::from_name(name).ok_or_else(|| JwtError::algorithm(name))?
        }
        Some(_) => return Err(JwtError::Malformed("alg is not a string")),
        None => return Err(JwtError::Malformed("header has no alg")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(JwtError::Malformed("kid is not a string")),
    };
    Ok(Parsed {
        header,
        claims,
        payload_json,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
        alg,
        kid,
    })
}

/// The decoded JSON object and the bytes it was parsed from.
fn decode_object(
    part: &str,
    which: &'static str,
) -> Result<(Map<String, Value>, Vec<u8>), JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| {
        JwtError::Malformed(match which {
            "header" => "header is not base64url without padding",
            _ => "payload is not base64url without padding",
        })
    })?;
    serde_json::from_slice::<StrictObject>(&bytes)
        .map(|o| (o.0, bytes))
        .map_err(|_| {
            JwtError::Malformed(match which {
                "header" => "header is not a JSON object with unique member names",
                _ => "payload is not a JSON object with unique member names",
            })
        })
}

/// A JSON object whose top level refuses duplicate member names (RFC 7515 §5.2 allows either
/// refusing or taking the last; refusing leaves no room for parser disagreements).
struct StrictObject(Map<String, Value>);

impl<'de> Deserialize<'de> for StrictObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = StrictObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StrictObject, A::Error> {
                let mut map = Map::new();
                while let Some(name) = access.next_key::<String>()? {
                    if map.contains_key(&name) {
                        return Err(A::Error::custom("duplicate member name"));
                    }
                    let value: Value = access.next_value()?;
                    map.insert(name, value);
                }
                Ok(StrictObject(map))
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

/// Checks header rules for this issuer (alg in `issuer.algorithms`, HS* only with
/// `hmac_secret`, `crit`, `typ`), the signature against `keys` (or the HMAC secret), then the
/// claims (`exp` required, `exp + clock_skew > now`, `nbf`/`iat` ≤ `now + clock_skew`,
/// `iss == issuer.issuer` byte-exact, `aud` contains one of `issuer.audiences` unless
/// `allow_any_audience`). Returns the claims.
pub fn verify(
    parsed: &Parsed<'_>,
    keys: Option<&KeySet>,
    issuer: &Issuer,
    now_unix: i64,
) -> Result<Claims, JwtError> {
    verify_with(parsed, keys, issuer, now_unix, Profile::AccessToken)
}

/// Which rules [`verify_with`] applies beyond the header and signature, which are always checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// An access token: every rule of [`verify`].
    AccessToken,
    /// A signed answer of the issuer about a token (e.g. `application/jwt` userinfo, SPEC §4.5):
    /// same header and signature rules, `nbf`/`iat` as for a token, but `exp` and `iss` are
    /// checked only when present, `aud` (the issuer's client, not ours) and `require_typ` (an
    /// access-token rule) not at all.
    SignedAnswer,
}

/// [`verify`] with a choice of [`Profile`].
pub fn verify_with(
    parsed: &Parsed<'_>,
    keys: Option<&KeySet>,
    issuer: &Issuer,
    now_unix: i64,
    profile: Profile,
) -> Result<Claims, JwtError> {
    check(parsed, keys, issuer, now_unix, profile)?;
    Ok(parsed.claims.clone())
}

/// Every rule of [`verify_with`], without copying the claims out: on success take them with
/// [`Parsed::into_claims`].
#[inline]
pub fn check(
    parsed: &Parsed<'_>,
    keys: Option<&KeySet>,
    issuer: &Issuer,
    now_unix: i64,
    profile: Profile,
) -> Result<(), JwtError> {
    check_signed(parsed, keys, issuer, now_unix, profile).map(drop)
}

/// What verified a token's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedBy {
    /// The issuer's `hmac_secret` (an HS* token).
    Secret,
    /// The key at this index of the key set given to [`check_signed`] (`KeySet::describe`).
    Key(usize),
}

/// [`check`], saying which key verified the signature (`tokengate explain`).
pub fn check_signed(
    parsed: &Parsed<'_>,
    keys: Option<&KeySet>,
    issuer: &Issuer,
    now_unix: i64,
    profile: Profile,
) -> Result<SignedBy, JwtError> {
    check_header(parsed, issuer, profile)?;
    let signed_by = check_signature(parsed, keys, issuer)?;
    check_claims(&parsed.claims, issuer, now_unix, profile)?;
    Ok(signed_by)
}

fn check_header(parsed: &Parsed<'_>, issuer: &Issuer, profile: Profile) -> Result<(), JwtError> {
    let alg = parsed.alg;
    if !issuer.algorithms.contains(&alg) || (alg.is_hmac() && issuer.hmac_secret.is_none()) {
        return Err(JwtError::algorithm(alg.name()));
    }
    if parsed.header.contains_key("crit") {
        return Err(JwtError::Crit);
    }
    let typ_rule = issuer
        .require_typ
        .as_ref()
        .filter(|_| profile == Profile::AccessToken);
    if let Some(required) = typ_rule {
        let typ = parsed.header.get("typ").and_then(Value::as_str);
        if !typ.is_some_and(|t| media_type(t).eq_ignore_ascii_case(media_type(required))) {
            return Err(JwtError::Typ);
        }
    }
    Ok(())
}

/// A `typ` value without its optional `application/` prefix (RFC 7515 §4.1.9).
fn media_type(typ: &str) -> &str {
    const PREFIX: &str = "application/";
    match typ.get(..PREFIX.len()) {
        Some(p) if p.eq_ignore_ascii_case(PREFIX) => &typ[PREFIX.len()..],
        _ => typ,
    }
}

fn check_signature(
    parsed: &Parsed<'_>,
    keys: Option<&KeySet>,
    issuer: &Issuer,
) -> Result<SignedBy, JwtError> {
    let input = parsed.signing_input.as_bytes();
    if parsed.alg.is_hmac() {
        // Only the configured secret: a JWKS key must never serve as an HMAC secret.
        let secret = issuer
            .hmac_secret
            .as_ref()
            .ok_or_else(|| JwtError::algorithm(parsed.alg.name()))?;
        return hmac_verify(parsed.alg, secret.0.as_bytes(), input, &parsed.signature)
            .map(|()| SignedBy::Secret);
    }
    let keys = keys.ok_or(JwtError::NoKeys)?;
    let mut tried = false;
    for (index, verifier) in keys.indexed_candidates(parsed.alg, parsed.kid.as_deref()) {
        tried = true;
        if verifier.verify(input, &parsed.signature).is_ok() {
            return Ok(SignedBy::Key(index));
        }
    }
    match &parsed.kid {
        _ if tried => Err(JwtError::BadSignature),
        // The key exists but cannot verify this alg (e.g. ES256 with an RSA key's kid).
        Some(kid) if keys.has_kid(kid) => Err(JwtError::algorithm(parsed.alg.name())),
        _ => Err(JwtError::UnknownKid),
    }
}

/// HMAC-SHA-2 (RFC 2104) with a constant-time comparison. A secret shorter than the hash output
/// is not used (RFC 7518 §3.2 "MUST"): HS384 needs 48 bytes, HS512 64, so with a shorter
/// secret that alg is refused like one not on the allow-list.
fn hmac_verify(alg: Algorithm, secret: &[u8], input: &[u8], sig: &[u8]) -> Result<(), JwtError> {
    let mac = match alg {
        Algorithm::HS256 => hmac::<Sha256>(secret, input),
        Algorithm::HS384 => hmac::<Sha384>(secret, input),
        Algorithm::HS512 => hmac::<Sha512>(secret, input),
        _ => return Err(JwtError::algorithm(alg.name())),
    };
    if secret.len() < mac.len() {
        return Err(JwtError::algorithm(alg.name()));
    }
    if constant_time_eq(&mac, sig) {
        Ok(())
    } else {
        Err(JwtError::BadSignature)
    }
}

fn hmac<D: Digest + BlockSizeUser>(key: &[u8], message: &[u8]) -> Vec<u8> {
    let block = D::block_size();
    let mut k = if key.len() > block {
        D::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(block, 0);
    let pad = |byte: u8| k.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = D::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    D::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// Equal-length comparison whose time does not depend on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_claims(c: &Claims, issuer: &Issuer, now: i64, profile: Profile) -> Result<(), JwtError> {
    let token = profile == Profile::AccessToken;
    let malformed = |what| move |_| JwtError::Malformed(what);
    let exp =
        claims::date_claim(c, "exp", Round::Down).map_err(malformed("exp is not a NumericDate"))?;
    let nbf =
        claims::date_claim(c, "nbf", Round::Up).map_err(malformed("nbf is not a NumericDate"))?;
    let iat =
        claims::date_claim(c, "iat", Round::Up).map_err(malformed("iat is not a NumericDate"))?;
    let aud =
        claims::audiences(c).map_err(malformed("aud is not a string or an array of strings"))?;
    let iss = match c.get("iss") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(JwtError::Malformed("iss is not a string")),
    };
    claims::check_sub(c).map_err(malformed("sub is not a non-empty string"))?;

    let skew = i64::try_from(issuer.clock_skew.as_secs()).unwrap_or(i64::MAX);
    match exp {
        None if token => return Err(JwtError::MissingExp),
        Some(exp) if exp.saturating_add(skew) <= now => return Err(JwtError::Expired),
        _ => {}
    }
    let latest = now.saturating_add(skew);
    if nbf.is_some_and(|nbf| nbf > latest) {
        return Err(JwtError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > latest) {
        return Err(JwtError::IssuedInFuture);
    }
    if (token || iss.is_some()) && iss != Some(issuer.issuer.as_str()) {
        return Err(JwtError::WrongIssuer);
    }
    if token && !issuer.allow_any_audience {
        let accepted = aud.is_some_and(|list| {
            list.iter()
                .any(|a| issuer.audiences.iter().any(|want| want == a))
        });
        if !accepted {
            return Err(JwtError::WrongAudience);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
