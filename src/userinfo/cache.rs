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
//! **Bound** and expiry: [`TtlCache`] (`crate::cache`), shared with introspection: at most
//! `max_entries`, the oldest inserted evicted first, nothing served past its hard expiry. This
//! file adds only what is userinfo's: the kinds of value and the route's freshness bound.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::client::Answer;
use crate::cache::{TtlCache, MAX_LIFETIME};

/// (issuer index in `Config::issuers`, SHA-256 of the whole token). Never the raw token.
pub(crate) type Key = (usize, [u8; 32]);

/// How long a 401 from the userinfo endpoint is remembered (SPEC §4.5).
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);

/// What is remembered about a token.
#[derive(Debug, Clone)]
pub(crate) enum Cached {
    /// The userinfo answer (a JSON object, or a verified signed JWT's claims), unmerged.
    Answer(Arc<Answer>),
    /// The endpoint answered 401.
    Rejected,
}

/// What the shared cache stores for a token: the value and when its call started.
struct Stored {
    /// For the route's `userinfo_max_age`, applied on reading (module docs).
    fetched: Instant,
    value: Cached,
}

impl Stored {
    /// Whether a route with this `max_age` may be served the value at `now` (the hard expiry is
    /// the shared cache's). A remembered 401 ignores the route's bound.
    fn fresh_for(&self, now: Instant, max_age: Option<Duration>) -> bool {
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

/// The userinfo cache: answers and remembered 401s, each kept with its fetch time.
pub(crate) struct Cache(TtlCache<Key, Stored>);

impl Cache {
    pub(crate) fn new(max_entries: usize) -> Cache {
        Cache(TtlCache::new(max_entries))
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The remembered value when the entry may be served to a route with this `max_age` at
    /// `now`; an entry past its hard expiry is removed on the way. An entry too old for this
    /// route stays for the others.
    pub(crate) fn get(&self, key: &Key, now: Instant, max_age: Option<Duration>) -> Option<Cached> {
        self.0.get_with(key, now, |stored| {
            stored.fresh_for(now, max_age).then(|| stored.value.clone())
        })
    }

    /// Stores `value` for `lifetime` from `fetched`. A zero lifetime (or `max_entries` = 0)
    /// stores nothing. When the cache is full, the oldest entry makes room.
    pub(crate) fn insert(&self, key: Key, value: Cached, fetched: Instant, lifetime: Duration) {
        self.0
            .insert(key, Stored { fetched, value }, fetched, lifetime);
    }

    /// Removes every entry past its expiry; returns how many.
    pub(crate) fn purge(&self, now: Instant) -> usize {
        self.0.purge(now)
    }
}
