//! The key that signs identity assertions (`[identity].signing_key`, SPEC §3/§5), and the public
//! keys of `[identity].previous_keys`.
//!
//! The algorithm follows from the key, never from configuration:
//!
//! | key (PKCS#8 PEM, `-----BEGIN PRIVATE KEY-----`) | alg |
//! | --- | --- |
//! | EC P-256 | `ES256` |
//! | Ed25519 | `EdDSA` |
//! | RSA, 2048 to 8192 bits | `RS256` |
//!
//! Anything else (P-384/P-521, Ed448, RSA-PSS, X25519, RSA under 2048 bits, an encrypted key, a
//! traditional SEC1/PKCS#1 PEM) is refused with a message naming the file and saying what would
//! work. The `kid` defaults to the RFC 7638 thumbprint of the public key
//! ([`crate::token::keys::thumbprint`]), so an operator gets a stable id without choosing one.
//!
//! `previous_keys` entries may hold a public key (SPKI, `-----BEGIN PUBLIC KEY-----`) or a private
//! key (PKCS#8; only its public part is kept). They are published under their thumbprint as
//! `kid`, whatever `key_id` the key once had.
//!
//! Key material never leaves this module except as the public JWK: `Debug` shows the algorithm,
//! kid and thumbprint only, and no error message quotes key bytes.
//!
//! Signing is done here by hand rather than through `josekit::jwt::encode_with_signer`: the
//! protected header is constant per key, so it is serialized and base64url-encoded once at load
//! time, and a signature costs one `JwsSigner::sign` over `header.payload`.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::alg::ed::{EdCurve, EdKeyPair};
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::{Jwk, KeyAlg, KeyInfo, KeyPair};
use josekit::jws::{EdDSA, JwsSigner, ES256, RS256};
use serde_json::{Map, Value};

use crate::token::keys::thumbprint;

/// RSA moduli outside this range (bits) are refused: too weak below, needlessly slow above.
pub const RSA_MIN_BITS: usize = 2048;
pub const RSA_MAX_BITS: usize = 8192;

/// What kinds of key can sign an assertion, for error messages.
const SUPPORTED: &str =
    "identity assertions are signed with EC P-256 (ES256), Ed25519 (EdDSA) or RSA >= 2048 bits (RS256)";

/// The signature algorithms an identity key can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Es256,
    EdDsa,
    Rs256,
}

impl Kind {
    fn alg(self) -> &'static str {
        match self {
            Kind::Es256 => "ES256",
            Kind::EdDsa => "EdDSA",
            Kind::Rs256 => "RS256",
        }
    }
}

/// The active signing key: a ready josekit signer, its public JWK and the encoded JOSE header.
pub struct SigningKey {
    alg: &'static str,
    kid: String,
    thumbprint: String,
    signer: Box<dyn JwsSigner>,
    /// `kty`, `crv`/`x`/`y` or `n`/`e`, then `kid`, `alg`, `use: "sig"`.
    public_jwk: Map<String, Value>,
    /// base64url(`{"alg":…,"kid":…,"typ":"JWT"}`), computed once.
    encoded_header: String,
}

impl fmt::Debug for SigningKey {
    /// Algorithm, kid and thumbprint only: no key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a PKCS#8 PEM private key and prepares it for signing. `key_id` overrides the default
    /// `kid` (the RFC 7638 thumbprint). Every error starts with the file's path.
    pub fn load(pem_path: &Path, key_id: Option<&str>) -> Result<SigningKey, String> {
        let pem = read(pem_path)?;
        SigningKey::from_pem(&pem, key_id).map_err(|e| format!("{}: {e}", pem_path.display()))
    }

    /// [`SigningKey::load`] on PEM text already in memory (errors without a path).
    pub fn from_pem(pem: &[u8], key_id: Option<&str>) -> Result<SigningKey, String> {
        let blocks = pem_blocks(pem)?;
        let der = pick_private(&blocks)?;
        let (kind, public) = private_public_part(der)?;
        let signer: Box<dyn JwsSigner> = match kind {
            Kind::Es256 => Box::new(ES256.signer_from_der(der).map_err(bad_key)?),
            Kind::EdDsa => Box::new(EdDSA.signer_from_der(der).map_err(bad_key)?),
            Kind::Rs256 => Box::new(RS256.signer_from_der(der).map_err(bad_key)?),
        };
        let thumbprint = thumbprint(&public)
            .ok_or_else(|| "cannot compute the key's RFC 7638 thumbprint".to_owned())?;
        let kid = match key_id {
            Some("") => return Err("key_id must not be empty".to_owned()),
            Some(id) => id.to_owned(),
            None => thumbprint.clone(),
        };
        let public_jwk = publishable(public, &kid, kind);
        let mut header = Map::new();
        header.insert("alg".to_owned(), Value::from(kind.alg()));
        header.insert("kid".to_owned(), Value::from(kid.as_str()));
        header.insert("typ".to_owned(), Value::from("JWT"));
        let header_json = serde_json::to_vec(&Value::Object(header))
            .map_err(|e| format!("cannot serialize the JOSE header: {e}"))?;
        Ok(SigningKey {
            alg: kind.alg(),
            kid,
            thumbprint,
            signer,
            public_jwk,
            encoded_header: URL_SAFE_NO_PAD.encode(header_json),
        })
    }

    /// `ES256`, `EdDSA` or `RS256`.
    pub fn alg(&self) -> &'static str {
        self.alg
    }

    /// The `kid` put in every assertion header and in the published JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// RFC 7638 thumbprint of the public key (equal to [`SigningKey::kid`] unless `key_id` is set).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The public JWK as published: `kty`, `crv`/`x`/`y` or `n`/`e`, `kid`, `alg`, `use`.
    pub fn public_jwk(&self) -> &Map<String, Value> {
        &self.public_jwk
    }

    /// A compact JWS over `payload_json` (the caller's serialized JSON object), with the header
    /// `{"alg","kid","typ":"JWT"}`.
    pub fn sign_compact(&self, payload_json: &[u8]) -> Result<String, String> {
        let mut out = String::with_capacity(
            self.encoded_header.len()
                + 2
                + (payload_json.len() + self.signer.signature_len()) * 4 / 3
                + 4,
        );
        out.push_str(&self.encoded_header);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(payload_json, &mut out);
        let signature = self
            .signer
            .sign(out.as_bytes())
            .map_err(|e| format!("signing the identity assertion failed: {e}"))?;
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut out);
        Ok(out)
    }
}

/// The public JWK of a `previous_keys` entry: an SPKI public key PEM or a PKCS#8 private key PEM
/// (only its public part is used). It carries `kid` = its RFC 7638 thumbprint, `alg` (from the
/// key type, as for the signing key) and `use: "sig"`. Errors start with the file's path.
pub fn public_jwk_from_pem(path: &Path) -> Result<Map<String, Value>, String> {
    let pem = read(path)?;
    public_jwk_from_pem_bytes(&pem).map_err(|e| format!("{}: {e}", path.display()))
}

/// [`public_jwk_from_pem`] on PEM text already in memory (errors without a path).
pub fn public_jwk_from_pem_bytes(pem: &[u8]) -> Result<Map<String, Value>, String> {
    let blocks = pem_blocks(pem)?;
    let (kind, public) = if let Some((_, der)) = blocks.iter().find(|(l, _)| l == "PUBLIC KEY") {
        spki_public_part(der)?
    } else {
        private_public_part(pick_private(&blocks).map_err(|_| {
            format!(
                "expected a public key (-----BEGIN PUBLIC KEY-----) or a PKCS#8 private key \
                 (-----BEGIN PRIVATE KEY-----); found {}",
                labels(&blocks)
            )
        })?)?
    };
    let kid = thumbprint(&public)
        .ok_or_else(|| "cannot compute the key's RFC 7638 thumbprint".to_owned())?;
    Ok(publishable(public, &kid, kind))
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: cannot read the key file: {e}", path.display()))
}

fn bad_key(e: josekit::JoseError) -> String {
    format!("the key is not usable: {e}")
}

/// Appends `kid`, `alg` and `use` to the bare public members.
fn publishable(mut public: Map<String, Value>, kid: &str, kind: Kind) -> Map<String, Value> {
    public.insert("kid".to_owned(), Value::from(kid));
    public.insert("alg".to_owned(), Value::from(kind.alg()));
    public.insert("use".to_owned(), Value::from("sig"));
    public
}

/// The PEM blocks of a file, in order: (label, DER). Refuses encrypted traditional PEM (headers
/// such as `Proc-Type:`) and malformed base64.
fn pem_blocks(pem: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let text = std::str::from_utf8(pem).map_err(|_| "not a PEM file (not text)".to_owned())?;
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut b64 = String::new();
        let mut closed = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            if line.contains(':') {
                return Err(format!(
                    "the {label} block has PEM headers (an encrypted key?); tokengate needs an \
                     unencrypted PKCS#8 key"
                ));
            }
            b64.push_str(line);
        }
        if !closed {
            return Err(format!("the {label} block has no END line"));
        }
        let der = STANDARD
            .decode(b64.as_bytes())
            .map_err(|_| format!("the {label} block is not valid base64"))?;
        blocks.push((label.to_owned(), der));
    }
    if blocks.is_empty() {
        return Err("not a PEM file (no -----BEGIN ...----- line)".to_owned());
    }
    Ok(blocks)
}

fn labels(blocks: &[(String, Vec<u8>)]) -> String {
    blocks
        .iter()
        .map(|(l, _)| format!("\"{l}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The DER of the first PKCS#8 `PRIVATE KEY` block, or a message saying what to do instead.
fn pick_private(blocks: &[(String, Vec<u8>)]) -> Result<&[u8], String> {
    if let Some((_, der)) = blocks.iter().find(|(l, _)| l == "PRIVATE KEY") {
        return Ok(der);
    }
    let has = |label: &str| blocks.iter().any(|(l, _)| l == label);
    Err(if has("ENCRYPTED PRIVATE KEY") {
        "the private key is encrypted; tokengate needs an unencrypted PKCS#8 key \
         (openssl pkcs8 -topk8 -nocrypt -in KEY -out NEW)"
            .to_owned()
    } else if has("EC PRIVATE KEY") || has("RSA PRIVATE KEY") {
        "the private key is in a traditional (SEC1/PKCS#1) PEM format; convert it to PKCS#8 \
         (openssl pkcs8 -topk8 -nocrypt -in KEY -out NEW) or create one with `tokengate keygen`"
            .to_owned()
    } else {
        format!(
            "expected a PKCS#8 private key (-----BEGIN PRIVATE KEY-----); found {}",
            labels(blocks)
        )
    })
}

/// Detects the type of a PKCS#8 private key and returns its bare public JWK members.
fn private_public_part(der: &[u8]) -> Result<(Kind, Map<String, Value>), String> {
    let info = KeyInfo::detect(&der)
        .filter(|i| !i.is_public_key())
        .ok_or_else(|| "the PRIVATE KEY block is not a PKCS#8 key tokengate can read".to_owned())?;
    let kind = kind_of(info.alg())?;
    let jwk = match kind {
        Kind::Es256 => EcKeyPair::from_der(der, Some(EcCurve::P256))
            .map_err(bad_key)?
            .to_jwk_public_key(),
        Kind::EdDsa => EdKeyPair::from_der(der)
            .map_err(bad_key)?
            .to_jwk_public_key(),
        Kind::Rs256 => {
            let kp = RsaKeyPair::from_der(der).map_err(bad_key)?;
            check_rsa_bits(kp.key_len() as usize * 8)?;
            kp.to_jwk_public_key()
        }
    };
    Ok((kind, bare_public(kind, &jwk)?))
}

/// Detects the type of an SPKI public key and returns its bare public JWK members, checked by
/// building a josekit verifier from them (so OpenSSL accepts the point or modulus).
fn spki_public_part(der: &[u8]) -> Result<(Kind, Map<String, Value>), String> {
    let info = KeyInfo::detect(&der)
        .filter(KeyInfo::is_public_key)
        .ok_or_else(|| "the PUBLIC KEY block is not an SPKI key tokengate can read".to_owned())?;
    let kind = kind_of(info.alg())?;
    let malformed = || "the PUBLIC KEY block is malformed".to_owned();
    let key = spki_key_bits(der).ok_or_else(malformed)?;
    let b64 = |bytes: &[u8]| Value::from(URL_SAFE_NO_PAD.encode(bytes));
    let mut m = Map::new();
    match kind {
        Kind::Es256 => {
            // An uncompressed point: 0x04 || x || y.
            if key.len() != 65 || key[0] != 0x04 {
                return Err("the P-256 public key is not an uncompressed point".to_owned());
            }
            m.insert("kty".to_owned(), Value::from("EC"));
            m.insert("crv".to_owned(), Value::from("P-256"));
            m.insert("x".to_owned(), b64(&key[1..33]));
            m.insert("y".to_owned(), b64(&key[33..65]));
        }
        Kind::EdDsa => {
            if key.len() != 32 {
                return Err(malformed());
            }
            m.insert("kty".to_owned(), Value::from("OKP"));
            m.insert("crv".to_owned(), Value::from("Ed25519"));
            m.insert("x".to_owned(), b64(key));
        }
        Kind::Rs256 => {
            // RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
            let (tag, body, rest) = tlv(key).ok_or_else(malformed)?;
            let (ntag, n, body) = tlv(body).ok_or_else(malformed)?;
            let (etag, e, tail) = tlv(body).ok_or_else(malformed)?;
            if tag != 0x30 || ntag != 0x02 || etag != 0x02 || !rest.is_empty() || !tail.is_empty() {
                return Err(malformed());
            }
            let (n, e) = (unsigned(n), unsigned(e));
            let bits = n
                .first()
                .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
            check_rsa_bits(bits)?;
            m.insert("kty".to_owned(), Value::from("RSA"));
            m.insert("n".to_owned(), b64(n));
            m.insert("e".to_owned(), b64(e));
        }
    }
    let jwk = Jwk::from_map(m.clone()).map_err(bad_key)?;
    match kind {
        Kind::Es256 => ES256.verifier_from_jwk(&jwk).map(drop),
        Kind::EdDsa => EdDSA.verifier_from_jwk(&jwk).map(drop),
        Kind::Rs256 => RS256.verifier_from_jwk(&jwk).map(drop),
    }
    .map_err(bad_key)?;
    Ok((kind, m))
}

fn kind_of(alg: Option<KeyAlg>) -> Result<Kind, String> {
    match alg {
        Some(KeyAlg::Ec {
            curve: Some(EcCurve::P256),
        }) => Ok(Kind::Es256),
        Some(KeyAlg::Ec { curve }) => Err(format!(
            "an EC key on curve {} cannot sign identity assertions; {SUPPORTED}",
            curve.map_or_else(|| "(unknown)".to_owned(), |c| c.name().to_owned())
        )),
        Some(KeyAlg::Ed {
            curve: Some(EdCurve::Ed25519),
        }) => Ok(Kind::EdDsa),
        Some(KeyAlg::Ed { .. }) => Err(format!(
            "an Ed448 key cannot sign identity assertions; {SUPPORTED}"
        )),
        Some(KeyAlg::Rsa) => Ok(Kind::Rs256),
        Some(KeyAlg::RsaPss { .. }) => Err(format!(
            "an RSA-PSS key cannot sign identity assertions (use a plain rsaEncryption key for \
             RS256); {SUPPORTED}"
        )),
        Some(KeyAlg::Ecx { .. }) => Err(format!(
            "an X25519/X448 key is for key agreement, not signatures; {SUPPORTED}"
        )),
        None => Err(format!("unsupported key type; {SUPPORTED}")),
    }
}

fn check_rsa_bits(bits: usize) -> Result<(), String> {
    if bits < RSA_MIN_BITS {
        Err(format!(
            "the RSA key has {bits} bits; at least {RSA_MIN_BITS} are required"
        ))
    } else if bits > RSA_MAX_BITS {
        Err(format!(
            "the RSA key has {bits} bits; at most {RSA_MAX_BITS} are supported"
        ))
    } else {
        Ok(())
    }
}

/// The required public members of `jwk` in a fixed order (`kty` first), nothing else.
fn bare_public(kind: Kind, jwk: &Jwk) -> Result<Map<String, Value>, String> {
    let names: &[&str] = match kind {
        Kind::Es256 => &["kty", "crv", "x", "y"],
        Kind::EdDsa => &["kty", "crv", "x"],
        Kind::Rs256 => &["kty", "n", "e"],
    };
    let all: &Map<String, Value> = jwk.as_ref();
    let mut m = Map::new();
    for name in names {
        let v = all
            .get(*name)
            .filter(|v| v.is_string())
            .ok_or_else(|| format!("the public key has no {name:?} member"))?;
        m.insert((*name).to_owned(), v.clone());
    }
    Ok(m)
}

/// The subjectPublicKey bytes of an SPKI:
/// `SEQUENCE { SEQUENCE { algorithm, parameters }, BIT STRING }`.
fn spki_key_bits(der: &[u8]) -> Option<&[u8]> {
    let (tag, spki, rest) = tlv(der)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let (alg_tag, _, spki) = tlv(spki)?;
    let (bits_tag, bits, rest) = tlv(spki)?;
    if alg_tag != 0x30 || bits_tag != 0x03 || !rest.is_empty() {
        return None;
    }
    // The first content byte of a BIT STRING counts unused bits; a key uses whole bytes.
    match bits.split_first() {
        Some((0, key)) => Some(key),
        _ => None,
    }
}

/// One DER element with a single-byte tag: (tag, contents, the bytes after it).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// A DER INTEGER's contents without the leading zero bytes of its sign padding.
fn unsigned(int: &[u8]) -> &[u8] {
    let zeros = int.iter().take_while(|&&b| b == 0).count();
    &int[zeros.min(int.len().saturating_sub(1))..]
}

#[cfg(test)]
mod tests;
