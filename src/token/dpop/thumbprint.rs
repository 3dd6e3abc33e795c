//! RFC 7638 JWK thumbprints (SHA-256) of the public keys in DPoP proofs.
//!
//! The thumbprint is what a DPoP-bound token names in `cnf.jkt` (RFC 9449 §6.1), and it is the
//! identity this module keys its caches by (the verifier cache and the replay records). It is
//! computed over the key's required members only, so members a client adds (`alg`, `use`, `kid`)
//! never change it. Checking that the members form a valid key is left to the verifier
//! (`keys::KeySet`); this file only hashes.
//!
//! `keys::thumbprint` computes the same value for issuer keys through a `serde_json::Map`; this
//! one writes the canonical JSON straight into one buffer, because it runs on every proof.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Why no thumbprint could be computed. The text is public and names a member, never a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThumbprintError {
    /// `kty` is missing, not a string, or not `EC`, `OKP` or `RSA`.
    UnsupportedKeyType,
    /// A required member is missing or not a string; the member name.
    MissingMember(&'static str),
}

impl ThumbprintError {
    pub fn description(self) -> &'static str {
        match self {
            ThumbprintError::UnsupportedKeyType => "jwk kty is not EC, OKP or RSA",
            ThumbprintError::MissingMember("crv") => "jwk has no string crv",
            ThumbprintError::MissingMember("x") => "jwk has no string x",
            ThumbprintError::MissingMember("y") => "jwk has no string y",
            ThumbprintError::MissingMember("n") => "jwk has no string n",
            ThumbprintError::MissingMember("e") => "jwk has no string e",
            ThumbprintError::MissingMember(_) => "jwk lacks a required member",
        }
    }
}

impl std::fmt::Display for ThumbprintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.description())
    }
}

impl std::error::Error for ThumbprintError {}

/// The RFC 7638 thumbprint of a public JWK (EC, OKP or RSA), base64url without padding: the
/// value a token's `cnf.jkt` must equal.
pub fn thumbprint(jwk: &Map<String, Value>) -> Result<String, ThumbprintError> {
    digest(jwk).map(|d| URL_SAFE_NO_PAD.encode(d))
}

/// The SHA-256 digest behind [`thumbprint`] (what the caches are keyed by).
pub(crate) fn digest(jwk: &Map<String, Value>) -> Result<[u8; 32], ThumbprintError> {
    let canonical = canonical_json(jwk)?;
    Ok(Sha256::digest(canonical.as_bytes()).into())
}

/// The required members in lexicographic order, compact, as RFC 7638 §3.2 prescribes. This is
/// also a complete public JWK: the verifier cache builds its verifier from exactly this text, so
/// a cached verifier always matches the key its thumbprint names.
pub(crate) fn canonical_json(jwk: &Map<String, Value>) -> Result<String, ThumbprintError> {
    let names: &[&'static str] = match jwk.get("kty").and_then(Value::as_str) {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        Some("RSA") => &["e", "kty", "n"],
        _ => return Err(ThumbprintError::UnsupportedKeyType),
    };
    let mut out = String::with_capacity(160);
    out.push('{');
    for (i, &name) in names.iter().enumerate() {
        let value = jwk
            .get(name)
            .and_then(Value::as_str)
            .ok_or(ThumbprintError::MissingMember(name))?;
        if i > 0 {
            out.push(',');
        }
        push_json_string(&mut out, name);
        out.push(':');
        push_json_string(&mut out, value);
    }
    out.push('}');
    Ok(out)
}

/// A JSON string literal with only the escaping JSON requires (RFC 7638 §3.3: `"`, `\` and
/// control characters), which is what serde_json writes too.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}
