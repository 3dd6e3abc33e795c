//! A bounded map whose entries each have a hard expiry and are never served past it (not even
//! while the upstream they came from is down). Lifetimes are decided by the caller; this file
//! only stores, serves until `expires`, evicts and purges.
//!
//! **Hot path**: [`TtlCache::get`] / [`TtlCache::get_with`] are one DashMap read (a shard read
//! lock) and a clone of what is served: no allocation, no other lock. Only an entry found
//! expired costs a removal.
//!
//! **Bound**: `count` is a slot counter reserved (compare-and-swap, never past `max`) *before* an
//! insert and released only *after* a removal, so at every instant `map.len() <= count <= max`,
//! even with concurrent inserts. When no slot is free the oldest inserted entry is evicted
//! (`order`, a FIFO of (key, serial); a serial that no longer matches the map's entry is a stale
//! record, skipped). Callers give the entries of one cache a few shared lifetimes (a `cache_ttl`,
//! a token's `exp`, a negative TTL), so the oldest inserted is also about the nearest to expiry;
//! entries already expired go earlier through [`TtlCache::purge`]. `order` is compacted when
//! stale records outnumber live ones, so memory stays flat under a flood of distinct keys (each
//! flood entry only displaces the oldest).
//!
//! Locking: DashMap guards are never held across an `.await` (nothing here is async) and never
//! while taking `order`'s mutex; `order`'s mutex may be held while reading the map (compaction),
//! never the other way round.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::digest_hash::DigestHash;

/// No entry is kept longer than this, whatever the settings say (keeps `Instant` arithmetic safe).
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);

struct Entry<V> {
    expires: Instant,
    /// Distinguishes this entry from an older one under the same key in `order`.
    serial: u64,
    value: V,
}

/// Values `V` under keys `K`, at most `max` of them, each until its expiry (module docs).
pub(crate) struct TtlCache<K, V, S = DigestHash> {
    map: DashMap<K, Entry<V>, S>,
    /// Reserved slots: always `>= map.len()` and `<= max`.
    count: AtomicUsize,
    max: usize,
    /// Insertion order, for eviction; may hold stale records (see the module docs).
    order: Mutex<VecDeque<(K, u64)>>,
    serial: AtomicU64,
}

impl<K, V, S> TtlCache<K, V, S>
where
    K: Eq + Hash + Copy,
    S: BuildHasher + Clone + Default,
{
    /// An empty cache of at most `max` entries (0 stores nothing).
    pub(crate) fn new(max: usize) -> TtlCache<K, V, S> {
        TtlCache {
            map: DashMap::default(),
            count: AtomicUsize::new(0),
            max,
            order: Mutex::new(VecDeque::new()),
            serial: AtomicU64::new(0),
        }
    }

    /// Entries stored. Summed shard by shard, so while entries are being replaced concurrently
    /// it may count one twice; exact at rest (the bound itself is the exact slot counter).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The value while `now < expires`; an expired entry is removed on the way.
    pub(crate) fn get(&self, key: &K, now: Instant) -> Option<V>
    where
        V: Clone,
    {
        self.get_with(key, now, |value| Some(value.clone()))
    }

    /// What `serve` makes of the value while `now < expires` (`None`: not served, the entry
    /// stays, e.g. too old for one route but not for others); an expired entry is removed on the
    /// way. `serve` runs under the map's read guard: it must be quick and must not touch this
    /// cache.
    pub(crate) fn get_with<R>(
        &self,
        key: &K,
        now: Instant,
        serve: impl FnOnce(&V) -> Option<R>,
    ) -> Option<R> {
        // The guard lives only inside this match: it is gone before `remove_if` below.
        match self.map.get(key) {
            Some(entry) if now < entry.expires => return serve(&entry.value),
            Some(_) => {}
            None => return None,
        }
        self.remove_if(key, |e| now >= e.expires);
        None
    }

    /// Stores `value` for `lifetime` from `from`. A zero lifetime (or `max` = 0) stores nothing
    /// (and leaves an older entry under the same key alone: it expires by itself). When the
    /// cache is full, the oldest entry makes room.
    pub(crate) fn insert(&self, key: K, value: V, from: Instant, lifetime: Duration) {
        let lifetime = lifetime.min(MAX_LIFETIME);
        if lifetime.is_zero() || self.max == 0 {
            return;
        }
        let Some(expires) = from.checked_add(lifetime) else {
            return;
        };
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            expires,
            serial,
            value,
        };
        // Replacing in place needs no slot. The guard is dropped at the end of this statement.
        let fresh = match self.map.get_mut(&key) {
            Some(mut slot) => {
                *slot = entry;
                None
            }
            None => Some(entry),
        };
        if let Some(entry) = fresh {
            if !self.reserve() {
                return;
            }
            if self.map.insert(key, entry).is_some() {
                // Someone inserted the same key meanwhile: one entry, one slot.
                self.count.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let mut order = lock(&self.order);
        order.push_back((key, serial));
        let live = self.count.load(Ordering::Acquire);
        if order.len() > live.saturating_mul(2).saturating_add(1024) {
            self.compact(&mut order);
        }
    }

    /// Forgets `key` (e.g. an answer of another kind replaced it elsewhere).
    pub(crate) fn remove(&self, key: &K) {
        self.remove_if(key, |_| true);
    }

    /// Removes every entry past its expiry; returns how many.
    pub(crate) fn purge(&self, now: Instant) -> usize {
        let mut removed = 0;
        self.map.retain(|_, entry| {
            let keep = now < entry.expires;
            if !keep {
                removed += 1;
            }
            keep
        });
        self.count.fetch_sub(removed, Ordering::AcqRel);
        self.compact(&mut lock(&self.order));
        removed
    }

    /// Takes a free slot, evicting the oldest entries until one is free. `false` when nothing
    /// can be evicted right now (every slot is reserved by an insert still in progress): the
    /// caller then does not cache.
    fn reserve(&self) -> bool {
        loop {
            let taken = self.count.load(Ordering::Acquire);
            if taken < self.max {
                if self
                    .count
                    .compare_exchange_weak(taken, taken + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return true;
                }
                continue;
            }
            if !self.evict_oldest() {
                return false;
            }
        }
    }

    fn evict_oldest(&self) -> bool {
        loop {
            // The mutex guard is a temporary: released before the map is touched.
            let next = lock(&self.order).pop_front();
            let Some((key, serial)) = next else {
                return false;
            };
            if self.remove_if(&key, |e| e.serial == serial) {
                return true;
            }
        }
    }

    fn remove_if(&self, key: &K, condition: impl FnOnce(&Entry<V>) -> bool) -> bool {
        let removed = self.map.remove_if(key, |_, e| condition(e)).is_some();
        if removed {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }

    /// Drops the records of entries that are gone or were replaced.
    fn compact(&self, order: &mut VecDeque<(K, u64)>) {
        order.retain(|(key, serial)| self.map.get(key).is_some_and(|e| e.serial == *serial));
    }

    #[cfg(test)]
    pub(crate) fn reserved(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    #[cfg(test)]
    pub(crate) fn order_len(&self) -> usize {
        lock(&self.order).len()
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain data; keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
