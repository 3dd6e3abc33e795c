//! Hashing for maps keyed by SHA-256 digests (the verified-token, assertion and userinfo caches).
//!
//! A digest is already uniformly distributed, so eight of its bytes make as good a table hash as
//! SipHash over all 32, at a fraction of the cost on every request. Flooding a table needs
//! entries whose digests collide, and entries are only ever inserted for tokens that verified:
//! a client cannot choose their digests. The per-process random seed keeps bucket positions
//! unpredictable all the same. Only for digest keys: any other key would hash poorly.

use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

/// `BuildHasher` for digest-keyed `DashMap`s.
#[derive(Debug, Clone, Copy)]
pub struct DigestHash {
    seed: u64,
}

impl Default for DigestHash {
    fn default() -> Self {
        static SEED: OnceLock<u64> = OnceLock::new();
        let seed =
            *SEED.get_or_init(|| std::collections::hash_map::RandomState::new().hash_one(0u64));
        DigestHash { seed }
    }
}

impl BuildHasher for DigestHash {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(self.seed)
    }
}

pub struct DigestHasher(u64);

impl DigestHasher {
    fn mix(&mut self, word: u64) {
        // Multiply-rotate: spreads small integers (an issuer index) over all bits.
        self.0 = (self.0 ^ word)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
}

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.mix(u64::from_le_bytes(word));
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn keys_differing_only_in_their_issuer_or_digest_hash_apart() {
        let hash = DigestHash::default();
        let a: [u8; 32] = Sha256::digest(b"a").into();
        let b: [u8; 32] = Sha256::digest(b"b").into();
        assert_ne!(hash.hash_one((0usize, a)), hash.hash_one((1usize, a)));
        assert_ne!(hash.hash_one((0usize, a)), hash.hash_one((0usize, b)));
        assert_eq!(hash.hash_one((0usize, a)), hash.hash_one((0usize, a)));
    }

    #[test]
    fn digests_spread_over_buckets_like_a_good_hash() {
        // 4096 digests into 256 buckets by the low bits (hashbrown's index): every bucket gets
        // some, none more than 3x its share.
        let hash = DigestHash::default();
        let mut buckets = [0u32; 256];
        for i in 0u32..4096 {
            let key: [u8; 32] = Sha256::digest(i.to_le_bytes()).into();
            buckets[(hash.hash_one(key) & 255) as usize] += 1;
        }
        assert!(buckets.iter().all(|&n| n > 0 && n < 48), "{buckets:?}");
    }
}
