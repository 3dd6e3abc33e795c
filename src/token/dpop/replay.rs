//! The `jti` replay records of DPoP proofs (RFC 9449 §11.1), in process memory.
//!
//! A proof may be used once. What identifies "the same proof" is the pair (key thumbprint,
//! `jti`), hashed into a [`ReplayKey`]: never the proof text or its signature, because an ECDSA
//! signature can be re-spelled (s → n − s) without the key, and the same `jti` re-signed with
//! the same key is still the same proof. A record lives exactly as long as its proof could still
//! pass the `iat` check (the caller computes that instant), then it is forgotten.
//!
//! A reload may lengthen the window (`max_age`, `clock_skew`). Then live records are kept longer
//! by the difference, and the store's *horizon* moves up to the oldest `iat` whose records are
//! certainly still here: a proof older than that may have been used and forgotten under the old
//! window, so it is refused (as stale) rather than accepted a second time ([`ReplayStore::widen`]).
//!
//! Bounded: at most `capacity` live records. When every slot holds a live record, a new proof
//! cannot be checked, and a replay check that cannot run never passes: [`ReplayError::Full`]
//! (the caller answers 503). Expired records are purged from a min-heap ordered by expiry, a
//! few per call, never by scanning the set; recording is one short critical section, so two
//! concurrent copies of one proof cannot both pass.
//!
//! This is the in-process store. SPEC §8 (Scale-out) puts the records in Redis when `[shared]`
//! is set (`SET key 1 NX PXAT expires_at`, the same key and expiry as here); that store would
//! replace this type behind the checker, and it is not built yet.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use sha2::{Digest, Sha256};

/// Expired records removed per call when the store is not full: enough to outpace insertions
/// (one per call), small enough that one request never pays for a long idle period's backlog.
const PURGE_BATCH: usize = 32;

/// Records reserved at the first use: the whole bound up to this many (~46 MiB), so the set never
/// rehashes under the lock while requests wait; a larger bound grows on demand beyond it.
const PREALLOCATE_MAX: usize = 1 << 20;

/// What identifies one proof: the first 128 bits of SHA-256 over a domain tag, the key's
/// thumbprint digest and the `jti`. 128 bits keep a collision (two different proofs refused as
/// one) out of reach even for a client choosing its own keys and `jti`s, at half the memory of
/// the full digest.
pub type ReplayKey = [u8; 16];

/// The record key of the proof with this key thumbprint (SHA-256 digest) and `jti`.
pub fn replay_key(jkt_digest: &[u8; 32], jti: &str) -> ReplayKey {
    let digest = Sha256::new()
        .chain_update(b"tokengate dpop jti\0")
        .chain_update(jkt_digest)
        .chain_update(jti.as_bytes())
        .finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// Why a proof could not be recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// A live record of this proof exists: it was used before.
    Replayed,
    /// Every slot holds a live record; the proof's uniqueness cannot be established.
    Full,
}

/// The in-process replay records (see the module documentation).
pub struct ReplayStore {
    /// The bound, changeable on reload ([`ReplayStore::set_capacity`]).
    capacity: AtomicUsize,
    /// Proofs whose `iat` is before this unix second are refused: their records may be gone.
    horizon: AtomicI64,
    inner: Mutex<Inner>,
}

struct Inner {
    seen: HashSet<ReplayKey>,
    /// (expires_at, key) of every record in `seen`, soonest first. Same length as `seen`.
    by_expiry: BinaryHeap<Reverse<(i64, ReplayKey)>>,
}

impl std::fmt::Debug for ReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayStore")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

impl ReplayStore {
    /// An empty store holding at most `capacity` live records (at least one). Nothing is
    /// allocated until the first record (a configuration that never sees DPoP pays nothing);
    /// then room for the whole bound is reserved at once (up to `PREALLOCATE_MAX`), because
    /// growing later would rehash every record inside the critical section.
    pub fn new(capacity: usize) -> ReplayStore {
        ReplayStore {
            capacity: AtomicUsize::new(capacity.max(1)),
            horizon: AtomicI64::new(i64::MIN),
            inner: Mutex::new(Inner {
                seen: HashSet::new(),
                by_expiry: BinaryHeap::new(),
            }),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }

    /// A reload changed `replay_cache_entries`. The records are kept: shrinking below the live
    /// count refuses new proofs (fail closed) until enough records expire, rather than
    /// forgetting proofs that could be replayed.
    pub fn set_capacity(&self, capacity: usize) {
        self.capacity.store(capacity.max(1), Ordering::Relaxed);
    }

    /// The earliest `iat` a proof may have (see the module documentation).
    pub fn horizon(&self) -> i64 {
        self.horizon.load(Ordering::Relaxed)
    }

    /// The window grew by `extra_secs`: every live record is kept that much longer, and proofs
    /// issued before `horizon` (whose records the old window may already have dropped) are
    /// refused from now on. Rebuilds the expiry heap once, under the lock.
    pub fn widen(&self, extra_secs: i64, horizon: i64) {
        let mut inner = self.lock();
        self.horizon.fetch_max(horizon, Ordering::Relaxed);
        let heap = std::mem::take(&mut inner.by_expiry);
        inner.by_expiry = heap
            .into_iter()
            .map(|Reverse((expires_at, key))| Reverse((expires_at.saturating_add(extra_secs), key)))
            .collect();
    }

    /// Records the proof `key` until `expires_at` (unix seconds; the record is gone once `now`
    /// reaches it), unless a live record of it exists or the store is full of live records.
    /// Atomic: of two concurrent calls with one key, exactly one returns `Ok`.
    pub fn record(&self, key: ReplayKey, expires_at: i64, now: i64) -> Result<(), ReplayError> {
        let mut inner = self.lock();
        inner.purge(now, PURGE_BATCH);
        if inner.seen.contains(&key) {
            return Err(ReplayError::Replayed);
        }
        if expires_at <= now {
            // Already outside its window: nothing to remember (the iat check refuses it).
            return Ok(());
        }
        let capacity = self.capacity();
        if inner.seen.len() >= capacity {
            inner.purge(now, usize::MAX);
            if inner.seen.len() >= capacity {
                return Err(ReplayError::Full);
            }
        }
        if inner.seen.capacity() == 0 {
            let room = capacity.min(PREALLOCATE_MAX);
            inner.seen.reserve(room);
            inner.by_expiry.reserve(room);
        }
        inner.seen.insert(key);
        inner.by_expiry.push(Reverse((expires_at, key)));
        Ok(())
    }

    /// Records held, live or expired-but-not-yet-purged.
    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap memory the records occupy now, in bytes: the hash set's buckets (a 16-byte key and
    /// one control byte each, hashbrown keeping at most 7/8 of them full) plus the expiry heap's
    /// 24-byte slots. Allocator overhead not included.
    pub fn approx_heap_bytes(&self) -> usize {
        let inner = self.lock();
        let set_items = inner.seen.capacity();
        let buckets = if set_items == 0 {
            0
        } else if set_items < 8 {
            (set_items + 1).next_power_of_two()
        } else {
            (set_items * 8 / 7).next_power_of_two()
        };
        buckets * (std::mem::size_of::<ReplayKey>() + 1)
            + inner.by_expiry.capacity() * std::mem::size_of::<Reverse<(i64, ReplayKey)>>()
    }

    /// The critical sections leave `Inner` consistent at every step, so a panic elsewhere while
    /// the lock was held (there is no such path) would not make its content unusable.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Drops up to `limit` records whose expiry has come.
    fn purge(&mut self, now: i64, limit: usize) {
        for _ in 0..limit {
            match self.by_expiry.peek() {
                Some(Reverse((expires_at, _))) if *expires_at <= now => {}
                _ => return,
            }
            if let Some(Reverse((_, key))) = self.by_expiry.pop() {
                self.seen.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> ReplayKey {
        replay_key(&[7; 32], &n.to_string())
    }

    #[test]
    fn second_record_of_one_key_is_a_replay() {
        let store = ReplayStore::new(10);
        assert_eq!(store.record(key(1), 100, 0), Ok(()));
        assert_eq!(store.record(key(1), 100, 50), Err(ReplayError::Replayed));
        assert_eq!(store.record(key(2), 100, 50), Ok(()));
    }

    #[test]
    fn keys_differ_by_thumbprint_and_by_jti() {
        assert_ne!(replay_key(&[1; 32], "a"), replay_key(&[2; 32], "a"));
        assert_ne!(replay_key(&[1; 32], "a"), replay_key(&[1; 32], "b"));
        assert_eq!(replay_key(&[1; 32], "a"), replay_key(&[1; 32], "a"));
    }

    #[test]
    fn record_is_forgotten_when_its_expiry_comes() {
        let store = ReplayStore::new(10);
        assert_eq!(store.record(key(1), 100, 0), Ok(()));
        assert_eq!(store.record(key(1), 200, 99), Err(ReplayError::Replayed));
        assert_eq!(store.record(key(1), 200, 100), Ok(()));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn full_store_of_live_records_fails_closed() {
        let store = ReplayStore::new(3);
        for n in 0..3 {
            assert_eq!(store.record(key(n), 100, 0), Ok(()));
        }
        assert_eq!(store.record(key(9), 100, 10), Err(ReplayError::Full));
        // A replay is still reported as one when the store is full.
        assert_eq!(store.record(key(0), 100, 10), Err(ReplayError::Replayed));
    }

    #[test]
    fn full_store_makes_room_by_purging_expired_records() {
        let store = ReplayStore::new(3);
        assert_eq!(store.record(key(0), 50, 0), Ok(()));
        assert_eq!(store.record(key(1), 100, 0), Ok(()));
        assert_eq!(store.record(key(2), 100, 0), Ok(()));
        assert_eq!(store.record(key(3), 100, 49), Err(ReplayError::Full));
        assert_eq!(store.record(key(3), 100, 50), Ok(()));
    }

    #[test]
    fn purge_order_follows_expiry_not_insertion() {
        let store = ReplayStore::new(10);
        assert_eq!(store.record(key(0), 500, 0), Ok(()));
        assert_eq!(store.record(key(1), 100, 0), Ok(()));
        assert_eq!(store.record(key(2), 7, 200), Ok(()));
        // key(1) expired at 100 and is purged even though a later-expiring record came first.
        assert_eq!(store.len(), 1);
        assert_eq!(store.record(key(0), 600, 200), Err(ReplayError::Replayed));
    }

    #[test]
    fn purge_per_call_is_bounded_until_the_store_is_full() {
        let store = ReplayStore::new(1000);
        for n in 0..200 {
            assert_eq!(store.record(key(n), 10, 0), Ok(()));
        }
        assert_eq!(store.record(key(1000), 100, 20), Ok(()));
        assert_eq!(store.len(), 201 - PURGE_BATCH);
    }

    #[test]
    fn shrinking_capacity_keeps_records_and_refuses_until_they_expire() {
        let store = ReplayStore::new(10);
        for n in 0..5 {
            assert_eq!(store.record(key(n), 100, 0), Ok(()));
        }
        store.set_capacity(2);
        assert_eq!(store.record(key(0), 100, 1), Err(ReplayError::Replayed));
        assert_eq!(store.record(key(7), 100, 1), Err(ReplayError::Full));
        assert_eq!(store.record(key(7), 200, 100), Ok(()));
    }

    #[test]
    fn widening_keeps_live_records_longer_and_raises_the_horizon() {
        let store = ReplayStore::new(10);
        assert_eq!(store.record(key(1), 100, 0), Ok(()));
        store.widen(300, 40);
        assert_eq!(store.horizon(), 40);
        // Without the widening the record would be gone at 100.
        assert_eq!(store.record(key(1), 700, 150), Err(ReplayError::Replayed));
        assert_eq!(store.record(key(1), 700, 400), Ok(()));
        // The horizon never moves back.
        store.widen(1, 10);
        assert_eq!(store.horizon(), 40);
    }

    #[test]
    fn already_expired_proof_is_not_remembered() {
        let store = ReplayStore::new(10);
        assert_eq!(store.record(key(1), 5, 5), Ok(()));
        assert!(store.is_empty());
    }
}
