//! The signed identity assertion forwarded upstream (SPEC §5): a compact JWS with the header
//! `{"alg","kid","typ":"JWT"}` and the payload
//!
//! | claim | value |
//! | --- | --- |
//! | `iss` | `[identity].issuer` |
//! | `sub` | the caller's `sub` (a non-empty string); else its `client_id`; else omitted |
//! | `aud` | the route's `audience`, else the upstream origin (a string, chosen by the caller) |
//! | `route`, `token_iss`, `auth` | the matched route id, the access token's issuer, how it was verified |
//! | every name in `[identity].claims` | copied from the merged claims; absent or `null` → omitted |
//! | `htm`, `htp` | only with `bind_request`: the method and the normalized path (no query) |
//! | `iat`, `exp` | now, `min(now + ttl, access token exp)` |
//! | `jti` | 128 random bits, base64url |
//!
//! Names the minter sets itself (`sub` and the rows above) are never overwritten by a copied
//! claim. `ttl` is counted in whole seconds, rounded up. When the access token is already past
//! its `exp` (accepted within clock skew), the assertion gets that same `exp`: it never claims
//! more lifetime than the token had.
//!
//! # Reuse cache
//!
//! Signing costs ~20 µs (ES256) to several hundred µs (RS256) per request, so a minted assertion
//! is reused for later requests that would get an assertion with *identical* content. The
//! payload (minus `iat`, `exp`, `jti`) is a function of `iss`, the copied claims, `aud`, `route`,
//! `token_iss`, `auth` and, with `bind_request`, `htm`/`htp`; the claims in turn are a function of
//! the access token and of the userinfo answer merged into them. So the cache key is SHA-256
//! over the caller's token hash ([`AssertionInput::cache_key`]), the token's `exp`,
//! [`AssertionInput::claims_source`] (which userinfo answer, if any, the claims hold), the route,
//! audience, token issuer and `auth` — one hash block, no serialization, on every reuse. With
//! `bind_request` the key is instead SHA-256 over the token hash, `exp` and the serialized
//! payload itself (method and path included). Either way an assertion is never reused for another
//! token, another route or audience, another method/path (with `bind_request`), or after the
//! merged claims changed (a userinfo refresh that changes `email` yields a new assertion).
//!
//! An entry is reused while `iat <= now < exp - margin`, with margin = `min(10 s, max(1 s,
//! ttl / 4))`, so the upstream always gets at least that much validity left; a clock that stepped
//! back before `iat` also forces a fresh one. The caller disables reuse for a request by passing
//! `cache_key: None`.
//!
//! A reused assertion keeps its `jti`: `jti` is unique per *minted assertion*, not per request
//! (as with Pomerium's or IAP's identity headers). An upstream that needs per-request uniqueness
//! should key on its own request id, or run with `bind_request` and dedupe on (`jti`, `htm`,
//! `htp`) — or the deployment can turn reuse off.
//!
//! The cache holds at most [`CACHE_CAPACITY`] entries (plus, briefly, one per thread racing to
//! insert). When full, stale entries are swept; if that frees less than a quarter, the cache is
//! cleared. Either way every insert stays amortized O(1) and memory stays bounded. Entries hold
//! only the assertion (which goes upstream anyway), never the access token.

use std::cell::RefCell;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use dashmap::DashMap;
use http::HeaderValue;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::signing::SigningKey;
use crate::config::model::Identity;
use crate::digest_hash::DigestHash;
use crate::token::claims::Claims;

/// Most assertions kept for reuse. An assertion is 0.7 KiB (ES256, EdDSA) to 1 KiB (RS256-2048;
/// 1.1 KiB at 3072 bits) with the default claims, so the cache stays around 5 MiB at worst.
pub const CACHE_CAPACITY: usize = 4096;
/// The largest safety margin before `exp` at which a cached assertion stops being reused.
const MAX_REFRESH_MARGIN: i64 = 10;
/// Claims the minter always sets itself (SPEC §5); the config loader refuses them in
/// `[identity].claims`. `sub` is set by the minter too, but may be listed (it is by default).
pub const SET_BY_PROXY: [&str; 10] = [
    "iss",
    "aud",
    "iat",
    "exp",
    "jti",
    "route",
    "token_iss",
    "auth",
    "htm",
    "htp",
];
/// Domain separation for the two kinds of cache key (by inputs, by serialized payload).
const SOURCE_KEY_DOMAIN: &[u8] = b"tokengate identity assertion cache by source v1\0";
const PAYLOAD_KEY_DOMAIN: &[u8] = b"tokengate identity assertion cache by payload v1\0";

/// What one request contributes to its assertion.
#[derive(Debug, Clone, Copy)]
pub struct AssertionInput<'a> {
    /// The merged claims (token, plus userinfo when the route asks for it).
    pub claims: &'a Claims,
    /// The access token's `exp` (Unix seconds).
    pub token_exp: i64,
    /// The access token's issuer.
    pub token_iss: &'a str,
    /// `"jwt"`, `"introspection"` or `"dpop"`.
    pub auth: &'static str,
    pub route_id: &'a str,
    /// The route's `audience`, else the upstream origin.
    pub audience: &'a str,
    /// The request method (used only with `bind_request`).
    pub method: &'a str,
    /// The normalized request path, without query (used only with `bind_request`).
    pub path: &'a str,
    /// SHA-256 of the access token when reuse is allowed for this request; `None` always mints.
    pub cache_key: Option<[u8; 32]>,
    /// What `claims` are, for that token: 0 for the token's own claims, else the id of the
    /// userinfo answer merged into them. Equal values must mean equal claims.
    pub claims_source: u64,
}

struct Cached {
    value: HeaderValue,
    iat: i64,
    refresh_at: i64,
}

/// Mints (and reuses) identity assertions with one signing key.
pub struct Minter {
    key: SigningKey,
    issuer: String,
    ttl_secs: i64,
    margin: i64,
    claims: Vec<String>,
    bind_request: bool,
    cache: DashMap<[u8; 32], Cached, DigestHash>,
    capacity: usize,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("key", &self.key)
            .field("issuer", &self.issuer)
            .field("ttl_secs", &self.ttl_secs)
            .field("claims", &self.claims)
            .field("bind_request", &self.bind_request)
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Minter {
    /// A minter for `[identity]` (issuer, ttl, claims, bind_request) signing with `key`, with a
    /// reuse cache of [`CACHE_CAPACITY`] entries.
    pub fn new(identity: &Identity, key: SigningKey) -> Self {
        let ttl_secs = ttl_seconds(identity.ttl);
        Minter {
            key,
            issuer: identity.issuer.clone(),
            ttl_secs,
            margin: (ttl_secs / 4).clamp(1, MAX_REFRESH_MARGIN),
            claims: identity
                .claims
                .iter()
                .filter(|c| c.as_str() != "sub" && !SET_BY_PROXY.contains(&c.as_str()))
                .cloned()
                .collect(),
            bind_request: identity.bind_request,
            cache: DashMap::default(),
            capacity: CACHE_CAPACITY,
        }
    }

    /// Sets the most cached entries; 0 turns reuse off.
    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The signing key (for the JWKS and the log).
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Entries currently cached.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// The assertion for this request, as a header value (marked sensitive: never HPACK-indexed,
    /// hidden from `Debug`). Reuses a cached one when allowed (see the module docs).
    pub fn mint(&self, input: &AssertionInput<'_>, now_unix: i64) -> Result<HeaderValue, String> {
        let mut body = None;
        let cache_key = match input.cache_key.filter(|_| self.capacity > 0) {
            None => None,
            Some(token) if !self.bind_request => Some(remembered_source_key(&token, input)),
            Some(token) => {
                let stable = self.stable_claims(input)?;
                let key = payload_key(&token, input.token_exp, &stable);
                body = Some(stable);
                Some(key)
            }
        };
        if let Some(k) = &cache_key {
            if let Some(hit) = self.lookup(k, now_unix) {
                return Ok(hit);
            }
        }
        let body = match body {
            Some(body) => body,
            None => self.stable_claims(input)?,
        };
        let exp = now_unix.saturating_add(self.ttl_secs).min(input.token_exp);
        let payload = finish_payload(body, now_unix, exp, &new_jti()?)?;
        let jws = self.key.sign_compact(&payload)?;
        let mut value = HeaderValue::from_maybe_shared(Bytes::from(jws))
            .map_err(|_| "the signed assertion is not a valid header value".to_owned())?;
        value.set_sensitive(true);
        let refresh_at = exp.saturating_sub(self.margin);
        if let Some(k) = cache_key {
            if refresh_at > now_unix {
                self.store(
                    k,
                    Cached {
                        value: value.clone(),
                        iat: now_unix,
                        refresh_at,
                    },
                    now_unix,
                );
            }
        }
        Ok(value)
    }

    /// The payload without `iat`, `exp`, `jti`, serialized as an unfinished JSON object
    /// (`{"iss":…,…` with no closing brace).
    fn stable_claims(&self, input: &AssertionInput<'_>) -> Result<Vec<u8>, String> {
        let mut w = ObjectWriter::new();
        w.field("iss", &self.issuer)?;
        if let Some(sub) = subject(input.claims) {
            w.field("sub", sub)?;
        }
        w.field("aud", input.audience)?;
        w.field("route", input.route_id)?;
        w.field("token_iss", input.token_iss)?;
        w.field("auth", input.auth)?;
        for name in &self.claims {
            match input.claims.get(name) {
                None | Some(Value::Null) => {}
                Some(v) => w.field(name, v)?,
            }
        }
        if self.bind_request {
            w.field("htm", input.method)?;
            w.field("htp", input.path)?;
        }
        Ok(w.buf)
    }

    fn lookup(&self, key: &[u8; 32], now: i64) -> Option<HeaderValue> {
        let entry = self.cache.get(key)?;
        (entry.iat <= now && now < entry.refresh_at).then(|| entry.value.clone())
    }

    fn store(&self, key: [u8; 32], entry: Cached, now: i64) {
        if self.cache.len() >= self.capacity && !self.cache.contains_key(&key) {
            self.cache.retain(|_, e| e.iat <= now && now < e.refresh_at);
            if self.cache.len() > self.capacity / 4 * 3 {
                self.cache.clear();
            }
        }
        self.cache.insert(key, entry);
    }
}

/// `sub` when it is a non-empty string, else a non-empty string `client_id`.
fn subject(claims: &Claims) -> Option<&str> {
    ["sub", "client_id"].into_iter().find_map(|name| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    })
}

/// Whole seconds, rounded up, at least 1, and small enough that `now + ttl` never overflows.
fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl
        .as_secs()
        .saturating_add(u64::from(ttl.subsec_nanos() > 0));
    i64::try_from(secs.max(1)).map_or(i64::from(u32::MAX), |s| s.min(i64::from(u32::MAX)))
}

/// The key when the payload is a function of the inputs (no `bind_request`). Strings are
/// length-prefixed so that no two input combinations hash the same bytes.
fn source_key(token: &[u8; 32], input: &AssertionInput<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SOURCE_KEY_DOMAIN);
    h.update(token);
    h.update(input.token_exp.to_be_bytes());
    h.update(input.claims_source.to_be_bytes());
    for text in [input.route_id, input.audience, input.token_iss, input.auth] {
        h.update((text.len() as u64).to_be_bytes());
        h.update(text);
    }
    h.finalize().into()
}

/// [`source_key`], remembered per thread for the last inputs it was computed from: a client that
/// reuses its token on one route costs a comparison instead of a hash. A pure function of the
/// inputs, compared in full, so it cannot answer for other inputs.
fn remembered_source_key(token: &[u8; 32], input: &AssertionInput<'_>) -> [u8; 32] {
    struct Last {
        token: [u8; 32],
        exp: i64,
        source: u64,
        texts: [String; 4],
        key: [u8; 32],
    }
    thread_local! {
        static LAST: RefCell<Option<Last>> = const { RefCell::new(None) };
    }
    let texts = [input.route_id, input.audience, input.token_iss, input.auth];
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some(l) = last.as_ref() {
            if l.token == *token
                && l.exp == input.token_exp
                && l.source == input.claims_source
                && l.texts.iter().zip(texts).all(|(a, b)| a == b)
            {
                return l.key;
            }
        }
        let key = source_key(token, input);
        let l = last.get_or_insert_with(|| Last {
            token: [0; 32],
            exp: 0,
            source: 0,
            texts: Default::default(),
            key: [0; 32],
        });
        l.token = *token;
        l.exp = input.token_exp;
        l.source = input.claims_source;
        for (slot, text) in l.texts.iter_mut().zip(texts) {
            slot.clear();
            slot.push_str(text);
        }
        l.key = key;
        key
    })
}

/// The key by serialized payload (with `bind_request`, whose method and path it holds).
fn payload_key(token: &[u8; 32], token_exp: i64, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(PAYLOAD_KEY_DOMAIN);
    h.update(token);
    h.update(token_exp.to_be_bytes());
    h.update(body);
    h.finalize().into()
}

/// 128 random bits, base64url without padding (22 characters).
fn new_jti() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| format!("no randomness for the jti: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Closes the unfinished object from `stable_claims` with `iat`, `exp` and `jti`.
fn finish_payload(body: Vec<u8>, iat: i64, exp: i64, jti: &str) -> Result<Vec<u8>, String> {
    let mut w = ObjectWriter { buf: body };
    w.field("iat", &iat)?;
    w.field("exp", &exp)?;
    w.field("jti", jti)?;
    w.buf.push(b'}');
    Ok(w.buf)
}

/// Writes `{"name":value,…` straight into a buffer, without cloning claim values into a map.
struct ObjectWriter {
    buf: Vec<u8>,
}

impl ObjectWriter {
    fn new() -> Self {
        ObjectWriter {
            buf: Vec::with_capacity(512),
        }
    }

    fn field<T: Serialize + ?Sized>(&mut self, name: &str, value: &T) -> Result<(), String> {
        self.buf.push(if self.buf.is_empty() { b'{' } else { b',' });
        serde_json::to_writer(&mut self.buf, name)
            .and_then(|()| {
                self.buf.push(b':');
                serde_json::to_writer(&mut self.buf, value)
            })
            .map_err(|e| format!("cannot serialize the assertion claim {name:?}: {e}"))
    }
}

#[cfg(test)]
mod tests;
