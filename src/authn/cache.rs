//! The verified-token cache: a token whose signature and claims were checked once is not
//! checked again while nothing that decided it can have changed.
//!
//! Keyed by SHA-256 of the whole token (never a prefix, never the raw token). An entry remembers
//! the issuer that verified it, the fingerprint of that issuer's key set at the time, and the
//! token's `exp`. A hit is served only when the issuer's current key set has the same
//! fingerprint (a rotation drops every entry of that issuer at once) and `now < exp +
//! clock_skew`; everything per route (the route's `issuers` list, policy, userinfo) is still
//! evaluated on every request by the caller. `nbf` and `iat` need no re-check: they only become
//! more valid with time. The cache belongs to one configuration generation, so a reload starts
//! empty.
//!
//! # Memory
//!
//! A parsed claims map costs 3-5 KiB for a token with a dozen claims (names, values, hash
//! buckets, nested objects, each its own allocation), its JSON a tenth of that. So an entry
//! keeps the claims as the JSON they were parsed from (the token's decoded payload, no copy made
//! by serializing), and a second, small map keeps the *parsed* claims of
//! the tokens used most recently ([`PARSED_ENTRIES`], emptied when full): a token in steady use
//! costs no parsing, and 100 000 entries stay around 60 MiB. The parsed map is only a parse
//! cache: it is consulted after the entry was found valid, and a token's claims never change.

use std::sync::Arc;

use dashmap::DashMap;

use crate::digest_hash::DigestHash;
use crate::token::claims::Claims;

/// Parsed claims kept for the most recently used tokens.
pub const PARSED_ENTRIES: usize = 512;

/// A token that passed every check of SPEC §4.4.
#[derive(Debug, Clone)]
pub struct Entry {
    pub issuer: usize,
    /// `KeySet::fingerprint` of the issuer's keys that verified it (`None`: HMAC-verified).
    pub keys: Option<[u8; 32]>,
    pub exp: i64,
    /// `exp + clock_skew`: the first second it is no longer accepted.
    pub expires_at: i64,
    pub claims: Arc<Claims>,
}

/// What the cache holds for one token: [`Entry`] with the claims as JSON.
#[derive(Debug)]
struct Stored {
    issuer: usize,
    keys: Option<[u8; 32]>,
    exp: i64,
    expires_at: i64,
    claims_json: Box<[u8]>,
}

pub struct VerifiedCache {
    entries: DashMap<[u8; 32], Arc<Stored>, DigestHash>,
    capacity: usize,
    parsed: DashMap<[u8; 32], Arc<Claims>, DigestHash>,
    parsed_capacity: usize,
}

impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("len", &self.entries.len())
            .field("capacity", &self.capacity)
            .field("parsed", &self.parsed.len())
            .finish()
    }
}

impl VerifiedCache {
    pub fn new(capacity: usize) -> Self {
        VerifiedCache {
            entries: DashMap::default(),
            capacity,
            parsed: DashMap::default(),
            parsed_capacity: PARSED_ENTRIES.min(capacity),
        }
    }

    /// The entry for this token hash, if it is still valid at `now` for the key set it was
    /// verified with. `current_keys` is the issuer's key-set fingerprint now.
    pub fn get(
        &self,
        token: &[u8; 32],
        now: i64,
        current_keys: impl FnOnce(usize) -> Option<[u8; 32]>,
    ) -> Option<Entry> {
        let stored = self.entries.get(token).map(|e| e.value().clone())?;
        if now >= stored.expires_at
            || (stored.keys.is_some() && current_keys(stored.issuer) != stored.keys)
        {
            self.entries.remove(token);
            return None;
        }
        let claims = match self.parsed.get(token).map(|c| c.value().clone()) {
            Some(claims) => claims,
            None => {
                // It was serialized by `insert`; failing to read it back only costs a
                // verification.
                let claims = Arc::new(serde_json::from_slice(&stored.claims_json).ok()?);
                self.remember_parsed(*token, &claims);
                claims
            }
        };
        Some(Entry {
            issuer: stored.issuer,
            keys: stored.keys,
            exp: stored.exp,
            expires_at: stored.expires_at,
            claims,
        })
    }

    /// Remembers a verified token; `claims_json` is the JSON its claims were parsed from (the
    /// token's decoded payload). At capacity, expired entries go first; if that frees too
    /// little, an arbitrary eighth is dropped (the bound always holds; a miss only costs one
    /// verification).
    pub fn insert(&self, token: [u8; 32], entry: Entry, claims_json: Vec<u8>, now: i64) -> Entry {
        if self.capacity == 0 {
            return entry;
        }
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, e| now < e.expires_at);
            let excess = self
                .entries
                .len()
                .saturating_sub(self.capacity - self.capacity / 8);
            if excess > 0 {
                let doomed: Vec<[u8; 32]> =
                    self.entries.iter().take(excess).map(|e| *e.key()).collect();
                for key in doomed {
                    self.entries.remove(&key);
                }
            }
        }
        let stored = Stored {
            issuer: entry.issuer,
            keys: entry.keys,
            exp: entry.exp,
            expires_at: entry.expires_at,
            claims_json: claims_json.into_boxed_slice(),
        };
        self.entries.insert(token, Arc::new(stored));
        self.remember_parsed(token, &entry.claims);
        entry
    }

    /// Keeps parsed claims for reuse; when the map is full it starts over (amortized O(1)).
    fn remember_parsed(&self, token: [u8; 32], claims: &Arc<Claims>) {
        if self.parsed_capacity == 0 {
            return;
        }
        if self.parsed.len() >= self.parsed_capacity {
            self.parsed.clear();
        }
        self.parsed.insert(token, claims.clone());
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inserts with the claims' JSON, as `verify` does with the token's payload.
    fn put(cache: &VerifiedCache, token: [u8; 32], e: Entry, now: i64) -> Entry {
        let json = serde_json::to_vec(&*e.claims).unwrap();
        cache.insert(token, e, json, now)
    }

    fn entry(issuer: usize, keys: Option<[u8; 32]>, expires_at: i64) -> Entry {
        Entry {
            issuer,
            keys,
            exp: expires_at,
            expires_at,
            claims: Arc::new(Claims::new()),
        }
    }

    #[test]
    fn a_hit_needs_the_same_key_set_and_an_unexpired_token() {
        let cache = VerifiedCache::new(10);
        put(&cache, [1; 32], entry(0, Some([7; 32]), 100), 0);
        assert!(cache.get(&[1; 32], 50, |_| Some([7; 32])).is_some());
        // A rotated key set drops the entry.
        assert!(cache.get(&[1; 32], 50, |_| Some([8; 32])).is_none());
        assert!(cache.get(&[1; 32], 50, |_| Some([7; 32])).is_none());
        // Past exp + skew: gone.
        put(&cache, [2; 32], entry(0, Some([7; 32]), 100), 0);
        assert!(cache.get(&[2; 32], 100, |_| Some([7; 32])).is_none());
        // An issuer whose keys are gone entirely: gone.
        put(&cache, [3; 32], entry(0, Some([7; 32]), 100), 0);
        assert!(cache.get(&[3; 32], 1, |_| None).is_none());
        // Another token never hits.
        put(&cache, [4; 32], entry(0, Some([7; 32]), 100), 0);
        assert!(cache.get(&[5; 32], 1, |_| Some([7; 32])).is_none());
    }

    #[test]
    fn the_bound_always_holds() {
        let cache = VerifiedCache::new(64);
        for i in 0..10_000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            put(&cache, key, entry(0, None, 1_000), 0);
            assert!(cache.len() <= 64);
        }
    }

    #[test]
    fn expired_entries_are_evicted_first() {
        let cache = VerifiedCache::new(4);
        for i in 0..3u8 {
            put(&cache, [i; 32], entry(0, None, 10), 0);
        }
        put(&cache, [9; 32], entry(0, None, 1_000), 0);
        put(&cache, [10; 32], entry(0, None, 1_000), 20);
        assert!(cache.get(&[9; 32], 20, |_| None).is_some());
        assert!(cache.get(&[10; 32], 20, |_| None).is_some());
    }

    #[test]
    fn claims_read_back_from_compact_json_are_the_verified_ones() {
        let cache = VerifiedCache::new(PARSED_ENTRIES * 4);
        let claims = |i: usize| -> Claims {
            match serde_json::json!({"sub": format!("user-{i}"), "n": i, "f": 0.1,
                                     "org": {"roles": ["a", "b"]}, "ok": true})
            {
                serde_json::Value::Object(m) => m,
                _ => unreachable!(),
            }
        };
        let total = PARSED_ENTRIES * 3;
        for i in 0..total {
            let mut e = entry(0, None, 1_000);
            e.claims = Arc::new(claims(i));
            put(&cache, hash(i), e, 0);
        }
        // Most of them are no longer in the parsed map: they are read back from JSON.
        assert!(cache.parsed.len() <= PARSED_ENTRIES);
        for i in 0..total {
            let hit = cache.get(&hash(i), 1, |_| None).expect("cached");
            assert_eq!(*hit.claims, claims(i), "token {i}");
        }
    }

    fn hash(i: usize) -> [u8; 32] {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&i.to_le_bytes());
        key
    }
}
