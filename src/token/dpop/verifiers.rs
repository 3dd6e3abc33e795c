//! Signature verifiers for proof keys, built once per key and reused.
//!
//! Building a josekit verifier from a JWK costs roughly twice a verification (STACK-NOTES B1:
//! ES256 ~170 µs built per proof against ~60 µs cached), and a client signs every proof with
//! the same key, so verifiers are cached by (RFC 7638 thumbprint, alg). The verifier is built
//! from the canonical thumbprint JSON alone, so a cache hit is, by construction, a verifier for
//! exactly the key the thumbprint names; members a client may vary between proofs (`alg`,
//! `use`, `kid`) play no part.
//!
//! Key validation (curve, coordinate lengths, RSA size and exponent) is reused from
//! `token::keys::KeySet`, which applies the issuer-key rules; this file only caches. The cache is
//! bounded: at the bound an arbitrary entry makes room, which keeps memory fixed whatever the
//! number of keys clients invent, at the price of rebuilding for a client whose entry was taken.

use std::sync::Arc;

use dashmap::DashMap;

use crate::config::model::Algorithm;
use crate::token::keys::KeySet;

/// Default bound. An entry costs ~5.7 KiB, nearly all of it OpenSSL's key object (measured:
/// `verifier_cache_memory` in `tests.rs`, 2000 ES256 keys), so the full cache is ~11.5 MiB.
/// Anyone able to send proofs can fill it with keys of their own, so this is also its size
/// under attack; 2048 distinct keys within a few minutes covers most deployments' clients.
pub const DEFAULT_MAX_KEYS: usize = 2048;

/// Why a key gave no verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnusableKey;

pub struct VerifierCache {
    max: usize,
    map: DashMap<([u8; 32], Algorithm), Arc<KeySet>>,
}

impl std::fmt::Debug for VerifierCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifierCache")
            .field("max", &self.max)
            .field("len", &self.map.len())
            .finish()
    }
}

impl VerifierCache {
    pub fn new(max: usize) -> VerifierCache {
        VerifierCache {
            max: max.max(1),
            map: DashMap::new(),
        }
    }

    /// A key set holding the one verifier for `alg` of the key whose thumbprint digest is
    /// `digest` and canonical JSON `canonical` (both from `thumbprint.rs`). Builds and caches it
    /// on a miss.
    pub fn get(
        &self,
        digest: &[u8; 32],
        canonical: &str,
        alg: Algorithm,
    ) -> Result<Arc<KeySet>, UnusableKey> {
        let key = (*digest, alg);
        if let Some(hit) = self.map.get(&key) {
            return Ok(Arc::clone(hit.value()));
        }
        let built = Arc::new(build(canonical, alg)?);
        if self.map.len() >= self.max {
            // Take the key first: removing while an iterator holds its shard would deadlock.
            let victim = self.map.iter().next().map(|e| *e.key());
            if let Some(victim) = victim {
                self.map.remove(&victim);
            }
        }
        self.map.insert(key, Arc::clone(&built));
        Ok(built)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A one-key JWKS around the canonical JWK, compiled for `alg` only.
fn build(canonical: &str, alg: Algorithm) -> Result<KeySet, UnusableKey> {
    let doc = format!("{{\"keys\":[{canonical}]}}");
    let set = KeySet::from_jwks(doc.as_bytes(), &[alg]).map_err(|_| UnusableKey)?;
    if set.candidates(alg, None).next().is_none() {
        return Err(UnusableKey);
    }
    Ok(set)
}
