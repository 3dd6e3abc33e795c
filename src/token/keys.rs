//! An issuer's JSON Web Key Set, parsed once into ready-to-use verifiers.
//!
//! Building a josekit verifier costs far more than using one (STACK-NOTES §4: 127 µs against
//! 20 µs for RS256), so a key set is compiled when it is loaded: every usable key gets one
//! verifier per algorithm it may verify, and the request path only picks and calls them.
//!
//! The rules for which keys are usable (SPEC §3 "Keys"):
//! - `use`, when present, must be `sig`; `key_ops`, when present, must contain `verify`;
//! - only RSA (2048 to 8192 bits, odd `e` ≥ 3), EC P-256/P-384 and OKP Ed25519 keys;
//! - a key holding private members (`d`, `p`, `k`, …) is refused outright;
//! - a JWK `alg`, when present, restricts the key to exactly that algorithm, and it must be one
//!   of the issuer's allowed algorithms;
//! - symmetric (`oct`) keys never come from a JWKS: HS* tokens are checked only against the
//!   configured `hmac_secret` (see `jwt.rs`).
//!
//! Unusable keys are skipped with a reason (for the log), never fatal: one odd key must not take
//! down an issuer. Fetching and refreshing the document is `jwks.rs`'s job.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use josekit::jwk::Jwk;
use josekit::jws::JwsVerifier;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::model::Algorithm;

/// Keys beyond this many are skipped: a token without `kid` is tried against every fitting key,
/// so the set size bounds the work one request can cause.
pub const MAX_KEYS: usize = 100;
/// RSA moduli outside this range (bits) are skipped: too weak below, needlessly slow above.
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;
/// JWK members that only a private (or symmetric) key has.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
/// Algorithms an RSA key can verify.
const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// One usable public key and its verifiers.
struct Key {
    kid: Option<String>,
    /// RFC 7638 thumbprint, for the fingerprint and for `Debug`.
    thumbprint: String,
    /// One prebuilt verifier per algorithm this key may verify (never empty).
    verifiers: Vec<(Algorithm, Box<dyn JwsVerifier>)>,
}

/// What may be said about one key of a set: its `kid` and RFC 7638 thumbprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFacts<'a> {
    pub kid: Option<&'a str>,
    pub thumbprint: &'a str,
}

/// A parsed JWKS: usable keys with their verifiers, and why the others were skipped.
pub struct KeySet {
    keys: Vec<Key>,
    skipped: Vec<String>,
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for KeySet {
    /// Key ids, thumbprints and algorithms only: no key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct K<'a>(&'a Key);
        impl std::fmt::Debug for K<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let algs: Vec<&str> = self.0.verifiers.iter().map(|(a, _)| a.name()).collect();
                f.debug_struct("Key")
                    .field("kid", &self.0.kid)
                    .field("thumbprint", &self.0.thumbprint)
                    .field("algs", &algs)
                    .finish()
            }
        }
        f.debug_struct("KeySet")
            .field("keys", &self.keys.iter().map(K).collect::<Vec<_>>())
            .field("skipped", &self.skipped.len())
            .finish()
    }
}

impl KeySet {
    /// Parses a JWKS document. Skips (with a reason in `skipped`) keys it cannot use: `use`
    /// present and not `sig`, unsupported kty/crv, RSA < 2048 bits, malformed members, private
    /// members present, a JWK `alg` not in `allowed`. Builds one josekit verifier per (key,
    /// compatible allowed algorithm): RSA → RS256/384/512, PS256/384/512; EC P-256 → ES256;
    /// EC P-384 → ES384; OKP Ed25519 → EdDSA. A JWK `alg`, when present, restricts the key to
    /// exactly that alg. `Err` only when the document is not a JSON object with a `keys` array.
    pub fn from_jwks(json: &[u8], allowed: &[Algorithm]) -> Result<KeySet, String> {
        let doc: Value =
            serde_json::from_slice(json).map_err(|e| format!("the JWKS is not valid JSON: {e}"))?;
        let Some(entries) = doc.get("keys").and_then(Value::as_array) else {
            return Err("the JWKS is not a JSON object with a \"keys\" array".to_owned());
        };
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let label = key_label(i, entry);
            if keys.len() == MAX_KEYS {
                skipped.push(format!("{label}: more than {MAX_KEYS} usable keys"));
                continue;
            }
            match compile_key(entry, allowed) {
                Ok(key) => keys.push(key),
                Err(reason) => skipped.push(format!("{label}: {reason}")),
            }
        }
        let fingerprint = fingerprint_of(&keys);
        Ok(KeySet {
            keys,
            skipped,
            fingerprint,
        })
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Why keys of the document were not used, one line each (for the log).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Verifiers to try for a token with this alg and kid: with a kid, only keys with that exact
    /// kid (and a verifier for alg); without a kid, every key with a verifier for alg. Empty when
    /// none.
    pub fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a dyn JwsVerifier> + 'a {
        self.indexed_candidates(alg, kid).map(|(_, v)| v)
    }

    /// [`KeySet::candidates`], each with the index of its key (for [`KeySet::describe`]).
    pub fn indexed_candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = (usize, &'a dyn JwsVerifier)> + 'a {
        self.keys
            .iter()
            .enumerate()
            .filter(move |(_, k)| kid.is_none() || k.kid.as_deref() == kid)
            .flat_map(move |(i, k)| {
                k.verifiers
                    .iter()
                    .filter(move |(a, _)| *a == alg)
                    .map(move |(_, v)| (i, v.as_ref()))
            })
    }

    /// The public facts of the key at `index` (no key material): its `kid` and RFC 7638
    /// thumbprint, for `tokengate explain`.
    pub fn describe(&self, index: usize) -> Option<KeyFacts<'_>> {
        self.keys.get(index).map(|k| KeyFacts {
            kid: k.kid.as_deref(),
            thumbprint: &k.thumbprint,
        })
    }

    /// Whether some usable key has this kid (whatever its algorithms).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// A stable fingerprint of the usable keys: SHA-256 over the sorted (thumbprint, kid,
    /// algorithms) of each key, so a refresh that changes a key, a kid or what a key may verify
    /// changes it, while reordering the document does not.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }
}

fn fingerprint_of(keys: &[Key]) -> [u8; 32] {
    let mut entries: Vec<String> = keys
        .iter()
        .map(|k| {
            let algs: Vec<&str> = k.verifiers.iter().map(|(a, _)| a.name()).collect();
            // Length-prefixed kid: no separator games between fields.
            let kid = k
                .kid
                .as_deref()
                .map_or("-".to_owned(), |s| format!("{}:{s}", s.len()));
            format!("{} {kid} {}", k.thumbprint, algs.join(","))
        })
        .collect();
    entries.sort();
    let mut h = Sha256::new();
    for e in &entries {
        h.update((e.len() as u64).to_be_bytes());
        h.update(e.as_bytes());
    }
    h.finalize().into()
}

/// `key[3] (kid "abc")`, with the kid made safe to log.
fn key_label(index: usize, entry: &Value) -> String {
    match entry.get("kid").and_then(Value::as_str) {
        Some(kid) => {
            let safe: String = kid
                .chars()
                .take(64)
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect();
            format!("key[{index}] (kid {safe:?})")
        }
        None => format!("key[{index}]"),
    }
}

/// Checks one JWK and builds its verifiers, or says why it cannot be used.
fn compile_key(entry: &Value, allowed: &[Algorithm]) -> Result<Key, String> {
    let jwk = entry.as_object().ok_or("not a JSON object")?;
    let kid = match jwk.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("`kid` is not a string".into()),
    };
    match jwk.get("use") {
        None => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(Value::String(_)) => return Err("`use` is not \"sig\"".into()),
        Some(_) => return Err("`use` is not a string".into()),
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops.as_array().ok_or("`key_ops` is not an array")?;
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return Err("`key_ops` does not contain \"verify\"".into());
        }
    }
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(format!("holds private key material (`{m}`); never used"));
    }
    let jwk_alg = match jwk.get("alg") {
        None => None,
        Some(Value::String(a)) => match Algorithm::from_name(a) {
            Some(alg) if allowed.contains(&alg) && !alg.is_hmac() => Some(alg),
            _ => return Err("its `alg` is not one of the issuer's allowed algorithms".into()),
        },
        Some(_) => return Err("`alg` is not a string".into()),
    };
    let (fits, minimal) = key_type(jwk)?;
    let algs: Vec<Algorithm> = fits
        .iter()
        .copied()
        .filter(|a| allowed.contains(a) && jwk_alg.is_none_or(|j| j == *a))
        .collect();
    if algs.is_empty() {
        return Err("no allowed algorithm fits this key".into());
    }
    let thumbprint = thumbprint(jwk).ok_or("cannot compute its thumbprint")?;
    let minimal = Jwk::from_map(minimal).map_err(|_| "rejected by the JOSE library")?;
    let mut verifiers = Vec::with_capacity(algs.len());
    for alg in algs {
        let v = build_verifier(alg, &minimal)
            .ok_or_else(|| format!("not a valid public key for {}", alg.name()))?;
        verifiers.push((alg, v));
    }
    Ok(Key {
        kid,
        thumbprint,
        verifiers,
    })
}

/// The algorithms this key's type can verify, and a JWK holding only the members josekit needs
/// (so nothing else in the document can make josekit refuse or misread it).
fn key_type(
    jwk: &Map<String, Value>,
) -> Result<(&'static [Algorithm], Map<String, Value>), String> {
    let kty = jwk
        .get("kty")
        .and_then(Value::as_str)
        .ok_or("no string `kty`")?;
    let crv = || jwk.get("crv").and_then(Value::as_str).unwrap_or("");
    let mut m = Map::new();
    m.insert("kty".into(), Value::String(kty.to_owned()));
    let fits: &'static [Algorithm] = match kty {
        "RSA" => {
            let n = strip_zeros(b64_member(jwk, "n")?.1);
            let e = strip_zeros(b64_member(jwk, "e")?.1);
            let bits = n
                .first()
                .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
            if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                return Err(format!(
                    "RSA modulus of {bits} bits (accepted: {RSA_MIN_BITS} to {RSA_MAX_BITS})"
                ));
            }
            let e_odd = e.last().is_some_and(|b| b & 1 == 1);
            if !e_odd || e == [1] || e.len() > 8 {
                return Err("RSA exponent `e` is not an odd number from 3 to 2^64".into());
            }
            m.insert("n".into(), Value::String(URL_SAFE_NO_PAD.encode(n)));
            m.insert("e".into(), Value::String(URL_SAFE_NO_PAD.encode(e)));
            &RSA_ALGS
        }
        "EC" => {
            let (len, fits): (usize, &'static [Algorithm]) = match crv() {
                "P-256" => (32, &[Algorithm::ES256]),
                "P-384" => (48, &[Algorithm::ES384]),
                _ => return Err("unsupported EC curve (P-256 and P-384 are)".into()),
            };
            for c in ["x", "y"] {
                let (text, bytes) = b64_member(jwk, c)?;
                if bytes.len() != len {
                    return Err(format!("EC coordinate `{c}` is not {len} bytes"));
                }
                m.insert(c.into(), Value::String(text.to_owned()));
            }
            m.insert("crv".into(), Value::String(crv().to_owned()));
            fits
        }
        "OKP" => {
            if crv() != "Ed25519" {
                return Err("unsupported OKP curve (Ed25519 is)".into());
            }
            let (x, bytes) = b64_member(jwk, "x")?;
            if bytes.len() != 32 {
                return Err("Ed25519 key `x` is not 32 bytes".into());
            }
            m.insert("crv".into(), Value::String(crv().to_owned()));
            m.insert("x".into(), Value::String(x.to_owned()));
            &[Algorithm::EdDSA]
        }
        "oct" => return Err("symmetric keys are never taken from a JWKS".into()),
        _ => return Err("unsupported `kty` (RSA, EC and OKP are)".into()),
    };
    Ok((fits, m))
}

/// A required base64url (no padding, canonical) member, as text and decoded.
fn b64_member<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<(&'a str, Vec<u8>), String> {
    let s = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no string `{name}`"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| format!("`{name}` is not base64url without padding"))?;
    Ok((s, bytes))
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|&&b| b == 0).count();
    v.drain(..zeros);
    v
}

fn build_verifier(alg: Algorithm, jwk: &Jwk) -> Option<Box<dyn JwsVerifier>> {
    use josekit::jws::{EdDSA, ES256, ES384, PS256, PS384, PS512, RS256, RS384, RS512};
    let v: Box<dyn JwsVerifier> = match alg {
        Algorithm::RS256 => Box::new(RS256.verifier_from_jwk(jwk).ok()?),
        Algorithm::RS384 => Box::new(RS384.verifier_from_jwk(jwk).ok()?),
        Algorithm::RS512 => Box::new(RS512.verifier_from_jwk(jwk).ok()?),
        Algorithm::PS256 => Box::new(PS256.verifier_from_jwk(jwk).ok()?),
        Algorithm::PS384 => Box::new(PS384.verifier_from_jwk(jwk).ok()?),
        Algorithm::PS512 => Box::new(PS512.verifier_from_jwk(jwk).ok()?),
        Algorithm::ES256 => Box::new(ES256.verifier_from_jwk(jwk).ok()?),
        Algorithm::ES384 => Box::new(ES384.verifier_from_jwk(jwk).ok()?),
        Algorithm::EdDSA => Box::new(EdDSA.verifier_from_jwk(jwk).ok()?),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => return None,
    };
    Some(v)
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url without padding) of a public JWK given as a JSON
/// object: required members only, lexicographic order, no whitespace; EC {crv,kty,x,y}, OKP
/// {crv,kty,x}, RSA {e,kty,n}. `None` for an unsupported or incomplete key.
pub fn thumbprint(jwk: &Map<String, Value>) -> Option<String> {
    let member = |name: &str| jwk.get(name).and_then(Value::as_str);
    let kty = member("kty")?;
    let names: &[&str] = match kty {
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "RSA" => &["e", "kty", "n"],
        _ => return None,
    };
    let mut canonical = Map::new();
    for name in names {
        canonical.insert((*name).to_owned(), Value::String(member(name)?.to_owned()));
    }
    // serde_json writes compact JSON with RFC 8259 string escaping, and the map keeps the
    // (already lexicographic) insertion order.
    let json = serde_json::to_string(&Value::Object(canonical)).ok()?;
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(json.as_bytes())))
}

#[cfg(test)]
mod tests;
