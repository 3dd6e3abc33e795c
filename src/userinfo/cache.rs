//! The bounded userinfo cache: answers (and remembered 401s) under (issuer index, SHA-256 of the
//! whole token), each with a hard expiry, never served past it.
//!
//! **Lifetime** (SPEC §4.5): `min(cache_ttl, route userinfo_max_age, token exp - now)`. The
//! route's part is applied when reading, not when storing: an entry keeps `fetched` (when its
//! call started) and `expires` (`fetched + min(cache_ttl, exp - now)`), and a route serves it only
//! while `now < expires` and `now < fetched + userinfo_max_age`. Each route therefore sees exactly
//! the SPEC lifetime, and one answer serves routes with different freshness bounds. A remembered
//! 401 lives [`NEGATIVE_TTL`] whatever the route's bound.
//!
//! **Bound**: `count` is a slot counter reserved (compare-and-swap, never past `max_entries`)
//! *before* an insert and released only *after* a removal, so at every instant
//! `map.len() <= count <= max_entries`, even with concurrent inserts. When no slot is free the
//! oldest inserted entry is evicted (`order`, a FIFO of (key, serial); a serial that no longer
//! matches the map's entry is a stale record and skipped). Entries all share one `cache_ttl`, so
//! the oldest inserted is also about the nearest to expiry; entries already expired go earlier
//! through [`Cache::purge`]. `order` is compacted when stale records outnumber live ones, so
//! memory stays flat under a flood of distinct tokens (each flood entry only displaces the oldest).
//!
//! Locking: DashMap guards are never held across an `.await` (nothing here is async) and never
//! while taking `order`'s mutex; `order`'s mutex may be held while reading the map (compaction),
//! never the other way round.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use super::client::Answer;
use crate::digest_hash::DigestHash;

/// (issuer index in `Config::issuers`, SHA-256 of the whole token). Never the raw token.
pub(crate) type Key = (usize, [u8; 32]);

/// How long a 401 from the userinfo endpoint is remembered (SPEC §4.5).
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// No entry is kept longer than this, whatever `cache_ttl` says (keeps `Instant` arithmetic safe).
const MAX_LIFETIME: Duration = Duration::from_secs(366 * 24 * 3600);

/// What is remembered about a token.
#[derive(Debug, Clone)]
pub(crate) enum Cached {
    /// The userinfo answer (a JSON object, or a verified signed JWT's claims), unmerged.
    Answer(Arc<Answer>),
    /// The endpoint answered 401.
    Rejected,
}

#[derive(Debug)]
struct Entry {
    fetched: Instant,
    expires: Instant,
    /// Distinguishes this entry from an older one under the same key in `order`.
    serial: u64,
    value: Cached,
}

impl Entry {
    fn servable(&self, now: Instant, max_age: Option<Duration>) -> bool {
        if now >= self.expires {
            return false;
        }
        match (&self.value, max_age) {
            (Cached::Rejected, _) | (_, None) => true,
            (Cached::Answer(_), Some(max_age)) => self
                .fetched
                .checked_add(max_age)
                .is_none_or(|limit| now < limit),
        }
    }
}

/// How long a fresh answer may be kept: `min(cache_ttl, exp - now)`, zero once the token's
/// `exp` is reached. The route's `userinfo_max_age` is applied on reading (module docs).
pub(crate) fn lifetime(cache_ttl: Duration, token_exp: i64, now_unix: i64) -> Duration {
    let left = u64::try_from(token_exp.saturating_sub(now_unix)).unwrap_or(0);
    cache_ttl.min(Duration::from_secs(left)).min(MAX_LIFETIME)
}

pub(crate) struct Cache {
    map: DashMap<Key, Entry, DigestHash>,
    /// Reserved slots: always `>= map.len()` and `<= max`.
    count: AtomicUsize,
    max: usize,
    /// Insertion order, for eviction; may hold stale records (see the module docs).
    order: Mutex<VecDeque<(Key, u64)>>,
    serial: AtomicU64,
}

impl Cache {
    pub(crate) fn new(max: usize) -> Cache {
        Cache {
            map: DashMap::default(),
            count: AtomicUsize::new(0),
            max,
            order: Mutex::new(VecDeque::new()),
            serial: AtomicU64::new(0),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// The remembered value when the entry may be served to a route with this `max_age` at
    /// `now`; an entry past its hard expiry is removed on the way.
    pub(crate) fn get(&self, key: &Key, now: Instant, max_age: Option<Duration>) -> Option<Cached> {
        // The guard lives only inside the closure: it is gone before `remove_if` below.
        let found = self.map.get(key).map(|entry| {
            let value = entry.servable(now, max_age).then(|| entry.value.clone());
            (value, now >= entry.expires)
        });
        match found {
            Some((value, false)) => value,
            Some((_, true)) => {
                self.remove_if(key, |e| now >= e.expires);
                None
            }
            None => None,
        }
    }

    /// Stores `value` for `lifetime` from `fetched`. A zero lifetime (or `max_entries` = 0)
    /// stores nothing. When the cache is full, the oldest entry makes room.
    pub(crate) fn insert(&self, key: Key, value: Cached, fetched: Instant, lifetime: Duration) {
        let lifetime = lifetime.min(MAX_LIFETIME);
        if lifetime.is_zero() || self.max == 0 {
            return;
        }
        let Some(expires) = fetched.checked_add(lifetime) else {
            return;
        };
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            fetched,
            expires,
            serial,
            value,
        };
        // Replacing in place needs no slot. The guard is dropped at the end of this statement.
        let replaced = match self.map.get_mut(&key) {
            Some(mut slot) => {
                *slot = entry;
                None
            }
            None => Some(entry),
        };
        if let Some(entry) = replaced {
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

    fn remove_if(&self, key: &Key, condition: impl FnOnce(&Entry) -> bool) -> bool {
        let removed = self.map.remove_if(key, |_, e| condition(e)).is_some();
        if removed {
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }

    /// Drops the records of entries that are gone or were replaced.
    fn compact(&self, order: &mut VecDeque<(Key, u64)>) {
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
