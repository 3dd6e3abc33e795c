//! Opaque (non-JWT) access tokens: RFC 7662 token introspection behind a bounded cache with
//! single-flight (SPEC §3 `[issuer.introspection]`, §4 item 4, §7).
//!
//! [`Introspector::introspect`] is called by authentication for a token that is not a JWT, with
//! the issuers that have `[issuer.introspection]` in configuration order (the *candidates*):
//!
//! 1. **A cached active answer** of any candidate is served at once (its checks are re-run, see
//!    below). It was obtained by the in-order walk of step 2, and serving it without asking the
//!    earlier issuers again keeps a token of the second issuer from costing the first one a call
//!    every `negative_cache_ttl`. An entry lives `min(cache_ttl, exp - now)` from the start of
//!    its call and is never served past that, but keeps serving until then even while the
//!    endpoint is down.
//! 2. **Otherwise each candidate is asked in order** (a cached `active: false` counts as its
//!    answer) until one says `active: true`:
//!    - the first issuer that says active *decides*: its answer is checked (`answer.rs`: `iss`,
//!      `aud`, `exp`, `nbf`) and the result is final, accepted or [`IntrospectionError::Invalid`];
//!      later issuers are not asked;
//!    - an issuer that cannot be asked (endpoint down, timeout, bad answer, credentials refused,
//!      no endpoint known) is passed over, and an active answer from a later issuer is accepted
//!      (that issuer vouches for the token on its own; the failed one could at most have claimed
//!      it too);
//!    - when none says active: [`IntrospectionError::Inactive`] only if *every* candidate said
//!      `active: false`; if any could not be asked, [`IntrospectionError::Unavailable`] (its
//!      answer might have been "active", so "inactive" cannot be concluded; and a token is never
//!      let through without an answer).
//! 3. **Single-flight** per (issuer, token) (`crate::cache::Flights`): concurrent misses make
//!    one call, made in a task of its own so a leader whose client hangs up does not fail the
//!    waiters. The task caches the result before publishing it.
//!
//! 4. **Bounded calls**: at most [`MAX_CALLS_IN_FLIGHT`] calls are open at once. Any random
//!    string is a new token, so without a bound one unauthenticated client could make the proxy
//!    open a socket (and spend its client credentials' rate limit) per request. A call waits for
//!    a free slot up to the issuer's `fetch_timeout`, then fails like an unreachable endpoint
//!    (503; never an accept). Cached answers are served all the same.
//!
//! Caching (`crate::cache::TtlCache`), keyed by (issuer index, SHA-256 of the whole token),
//! never the raw token: active answers for `min(cache_ttl, exp - now)` (the answer's `exp`, or
//! the implied one, see `answer.rs`), `active: false` for `negative_cache_ttl`, failures never.
//! Active answers are checked again on every use (`exp`/`nbf` against the injected
//! `now_unix`), so a cached answer whose `nbf` has come is accepted and one past `exp` is
//! refused. Two caches with separate bounds ([`ACTIVE_ENTRIES`], [`INACTIVE_ENTRIES`]):
//! `active: false` answers cost a client nothing to produce (any random string), and in a
//! shared cache a flood of them would evict every real caller's answer, turning each of their
//! requests into an issuer call; apart, the flood only churns its own cache. Active entries can only come from tokens the issuer vouches
//! for. Each active entry keeps its claims as compact JSON (an answer of a dozen members is well
//! under 1 KiB, a parsed map several times that); the parsed claims of the most recently used
//! answers are kept beside them ([`PARSED_ENTRIES`], emptied when full), so a token in steady
//! use costs no parsing.
//!
//! Logs: a failed call is logged at `error` (SPEC §4 item 4), naming the issuer id and the
//! endpoint without credentials or query; never the token, the client secret or the answer.
//!
//! Metrics (SPEC §7): [`Introspector::counters`]. Cache results are counted per issuer
//! consulted: `hit` (a cached answer was used), `miss` (a call was started), `coalesced` (a call
//! in flight was joined). Calls are counted once each: `active`, `inactive`, `error`.

mod answer;
mod client;
mod outcome;

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::{DashMap, DashSet};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::cache::{Flights, Joined, TtlCache};
use crate::digest_hash::DigestHash;
use crate::reason::Reason;
use crate::telemetry::metrics::{CacheResult, Counts, IntrospectionOutcome, Metrics};
use crate::telemetry::trace;
use crate::token::claims::Claims;
use crate::token::fetch;
use crate::token::jwks::IssuerKeys;

pub use answer::IMPLIED_EXP_MIN;
pub use client::MAX_INTROSPECTION_BYTES;
pub use outcome::{Introspected, IntrospectionCounters, IntrospectionError};

use answer::{Active, Answer};
use client::Failure;

/// (issuer index in `Config::issuers`, SHA-256 of the whole token). Never the raw token.
type Key = (usize, [u8; 32]);

#[cfg(test)]
mod tests;

/// Bound of the active-answer cache. An entry is about 0.5-1 KiB (the RFC 7662 §2.2 example
/// answer plus `cnf` is 361 bytes of compact JSON; then the key, the kept dates and the map's
/// bookkeeping), so 50-100 MiB at the bound, reached only with that many distinct tokens the
/// issuers vouched for within `cache_ttl`. The same bound as `[userinfo].max_entries`' default
/// and the verified-JWT cache. A full cache evicts its oldest entry (one extra call later, no
/// error).
pub const ACTIVE_ENTRIES: usize = 100_000;

/// Bound of the `active: false` cache: an entry is a key and an expiry (~100 B), so ~10 MiB.
pub const INACTIVE_ENTRIES: usize = 100_000;

/// Introspection calls open at once, all issuers together (module docs, step 4): well above what
/// real traffic needs (a call takes milliseconds and answers are cached), well below a file
/// descriptor limit or an issuer's patience.
pub const MAX_CALLS_IN_FLIGHT: usize = 64;

/// How often "no free call slot" is logged at error level, at most.
const SLOTS_FULL_LOG_PERIOD_SECS: i64 = 10;

/// Parsed claims kept for the most recently used active answers.
pub const PARSED_ENTRIES: usize = 512;

/// Expired entries are removed this often (they are never served anyway; this frees memory).
const PURGE_PERIOD: Duration = Duration::from_secs(30);

/// This generation's counts (`counters`), also recorded in the process's metrics registry,
/// whose counters outlive reloads.
#[derive(Default)]
struct Stats {
    cache: Counts<CacheResult>,
    calls: Counts<IntrospectionOutcome>,
    metrics: Option<Arc<Metrics>>,
}

impl Stats {
    fn cache(&self, result: CacheResult) {
        self.cache.inc(result);
        if let Some(m) = &self.metrics {
            m.introspection_cache(result);
        }
    }

    fn call(&self, outcome: IntrospectionOutcome) {
        self.calls.inc(outcome);
        if let Some(m) = &self.metrics {
            m.introspection_request(outcome);
        }
    }
}

/// What one issuer said about one token, shared by every request that waited for it.
#[derive(Debug, Clone)]
enum Fetched {
    Active(Arc<Active>),
    Inactive,
    /// The call failed (already counted and logged by whoever saw the failure).
    Failed,
}

/// Introspection state for one configuration generation. Build with [`Introspector::new`]; run
/// [`Introspector::run_purger`] beside it.
pub struct Introspector {
    /// Lets `introspect(&self)` hand a call to a task of its own.
    me: Weak<Introspector>,
    active: TtlCache<Key, Arc<Active>>,
    inactive: TtlCache<Key, ()>,
    /// (answer serial, its parsed claims) for recently used answers; emptied when full.
    parsed: DashMap<Key, (u64, Arc<Claims>), DigestHash>,
    flights: Flights<Key, Fetched>,
    /// Slots for calls in flight ([`MAX_CALLS_IN_FLIGHT`]).
    calls: Semaphore,
    /// When "no free call slot" was last logged at error level (unix seconds): a flood would
    /// otherwise write one line per request.
    slots_full_logged: AtomicI64,
    stats: Stats,
    /// Issuers already reported (at error level) as having no introspection endpoint.
    warned_no_endpoint: DashSet<usize>,
}

impl fmt::Debug for Introspector {
    /// Sizes only: no token hashes, no claims.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspector")
            .field("active_entries", &self.active.len())
            .field("inactive_entries", &self.inactive.len())
            .field("in_flight", &self.flights.len())
            .finish_non_exhaustive()
    }
}

/// Everything a flight's task needs, owned. No `Debug`: it holds the raw token.
struct Call {
    key: Key,
    issuer: Arc<IssuerKeys>,
    /// The raw token, for the request body only.
    token: String,
    now_unix: i64,
    /// The monotonic instant the call started: its answer is kept from then.
    started: Instant,
}

impl Introspector {
    /// With the default bounds ([`ACTIVE_ENTRIES`], [`INACTIVE_ENTRIES`]).
    pub fn new() -> Arc<Introspector> {
        Introspector::with_bounds(ACTIVE_ENTRIES, INACTIVE_ENTRIES)
    }

    /// With other cache bounds (tests; 0 disables that cache).
    pub fn with_bounds(active: usize, inactive: usize) -> Arc<Introspector> {
        Self::build(active, inactive, None)
    }

    /// As [`Introspector::new`], also counting in the process's metrics registry (SPEC §7).
    pub fn with_metrics(metrics: Arc<Metrics>) -> Arc<Introspector> {
        Self::build(ACTIVE_ENTRIES, INACTIVE_ENTRIES, Some(metrics))
    }

    fn build(active: usize, inactive: usize, metrics: Option<Arc<Metrics>>) -> Arc<Introspector> {
        Arc::new_cyclic(|me| Introspector {
            me: me.clone(),
            active: TtlCache::new(active),
            inactive: TtlCache::new(inactive),
            parsed: DashMap::default(),
            flights: Flights::new(),
            calls: Semaphore::new(MAX_CALLS_IN_FLIGHT),
            slots_full_logged: AtomicI64::new(i64::MIN),
            stats: Stats {
                metrics,
                ..Stats::default()
            },
            warned_no_endpoint: DashSet::new(),
        })
    }

    /// Asks the `candidates` (issuer index, key state; config order) about `token` as the module
    /// docs describe. `sha256` is the SHA-256 of the whole token (the cache key). Candidates
    /// without `[issuer.introspection]` are ignored; with none left the token is refused
    /// (`Invalid`, reason `malformed`: a token that is not a JWT cannot be verified here).
    pub async fn introspect(
        &self,
        token: &str,
        sha256: &[u8; 32],
        candidates: &[(usize, Arc<IssuerKeys>)],
        now_unix: i64,
    ) -> Result<Introspected, IntrospectionError> {
        self.introspect_at(token, sha256, candidates, now_unix, Instant::now())
            .await
    }

    /// [`Introspector::introspect`] at the monotonic instant `now`: cache entries are looked up
    /// at `now` and a call's answer is kept from `now` (when its call started). The wall clock
    /// (`now_unix`, for `exp`/`nbf`) and this one are both injected, so tests can age entries
    /// without waiting; callers pass `Instant::now()`.
    pub async fn introspect_at(
        &self,
        token: &str,
        sha256: &[u8; 32],
        candidates: &[(usize, Arc<IssuerKeys>)],
        now_unix: i64,
        now: Instant,
    ) -> Result<Introspected, IntrospectionError> {
        let introspects = |c: &&(usize, Arc<IssuerKeys>)| c.1.issuer().introspection.is_some();
        if !candidates.iter().any(|c| introspects(&c)) {
            return Err(IntrospectionError::Invalid {
                reason: Reason::Malformed,
                description: "token is not a JWT and no issuer introspects tokens".into(),
            });
        }
        let asked = || candidates.iter().filter(introspects);
        if let Some(served) = self.cached_active(sha256, asked(), now_unix, now) {
            return served;
        }
        let mut unavailable = false;
        for (index, issuer) in asked() {
            let key: Key = (*index, *sha256);
            let fetched = match self.lookup(&key, now) {
                Some(cached) => {
                    self.stats.cache(CacheResult::Hit);
                    cached
                }
                None => self.flight(key, issuer, token, now_unix, now).await,
            };
            match fetched {
                Fetched::Active(active) => return self.judge(&key, issuer, &active, now_unix),
                Fetched::Inactive => {}
                Fetched::Failed => unavailable = true,
            }
        }
        if unavailable {
            Err(IntrospectionError::Unavailable)
        } else {
            Err(IntrospectionError::Inactive)
        }
    }

    /// Current counter values.
    pub fn counters(&self) -> IntrospectionCounters {
        let s = &self.stats;
        IntrospectionCounters {
            hits: s.cache.get(CacheResult::Hit),
            misses: s.cache.get(CacheResult::Miss),
            coalesced: s.cache.get(CacheResult::Coalesced),
            active: s.calls.get(IntrospectionOutcome::Active),
            inactive: s.calls.get(IntrospectionOutcome::Inactive),
            error: s.calls.get(IntrospectionOutcome::Error),
        }
    }

    /// Cached answers: (active, inactive). Summed shard by shard, exact at rest.
    pub fn len(&self) -> (usize, usize) {
        (self.active.len(), self.inactive.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    /// Removes expired entries every 30 s until `stop` becomes `true` or its sender is dropped.
    /// Holds only a weak reference between rounds, so a dropped `Introspector` also ends it.
    pub async fn run_purger(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let me = Arc::downgrade(&self);
        drop(self);
        let mut ticks = tokio::time::interval_at(Instant::now() + PURGE_PERIOD, PURGE_PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            let Some(me) = me.upgrade() else {
                return;
            };
            let now = Instant::now();
            let removed = me.active.purge(now) + me.inactive.purge(now);
            if removed > 0 {
                tracing::debug!(removed, "introspection cache purged");
            }
        }
    }

    /// Step 1 of the module docs: the first candidate with a cached active answer decides.
    fn cached_active<'a>(
        &self,
        sha256: &[u8; 32],
        mut candidates: impl Iterator<Item = &'a (usize, Arc<IssuerKeys>)>,
        now_unix: i64,
        now: Instant,
    ) -> Option<Result<Introspected, IntrospectionError>> {
        candidates.find_map(|(index, issuer)| {
            let key: Key = (*index, *sha256);
            let active = self.active.get(&key, now)?;
            self.stats.cache(CacheResult::Hit);
            Some(self.judge(&key, issuer, &active, now_unix))
        })
    }

    /// A cached answer of either kind.
    fn lookup(&self, key: &Key, now: Instant) -> Option<Fetched> {
        if let Some(active) = self.active.get(key, now) {
            return Some(Fetched::Active(active));
        }
        self.inactive.get(key, now).map(|()| Fetched::Inactive)
    }

    /// Joins the call in flight for `key`, or starts one (module docs, step 3).
    async fn flight(
        &self,
        key: Key,
        issuer: &Arc<IssuerKeys>,
        token: &str,
        now_unix: i64,
        now: Instant,
    ) -> Fetched {
        let waiter = match (self.flights.join(key), self.me.upgrade()) {
            (Joined::Waiter(waiter), _) => {
                self.stats.cache(CacheResult::Coalesced);
                waiter
            }
            (Joined::Leader(leader, waiter), Some(me)) => {
                // A call that ended between our cache miss and our registration stored its
                // answer before leaving the registry: look again before calling.
                if let Some(cached) = self.lookup(&key, now) {
                    self.stats.cache(CacheResult::Hit);
                    leader.publish(cached.clone());
                    return cached;
                }
                self.stats.cache(CacheResult::Miss);
                let call = Call {
                    key,
                    issuer: issuer.clone(),
                    token: token.to_owned(),
                    now_unix,
                    started: now,
                };
                // Its own task: the leader's client hanging up must not fail the waiters. It
                // logs in the leader's request span.
                tokio::spawn(trace::in_current_scope(async move {
                    let fetched = me.call(call).await;
                    leader.publish(fetched);
                }));
                waiter
            }
            (Joined::Leader(..), None) => {
                // Unreachable while `self` is alive (it only exists inside an `Arc`); the
                // dropped leader leaves the registry.
                return Fetched::Failed;
            }
        };
        match waiter.result().await {
            Some(fetched) => fetched,
            None => {
                // The call's task ended without publishing (it panicked, so nothing counted it).
                tracing::error!(
                    issuer = issuer.issuer().id.as_str(),
                    "introspection call failed: the call ended without an answer"
                );
                Fetched::Failed
            }
        }
    }

    /// Makes the call, counts, logs and caches its result (runs in the flight's task).
    async fn call(&self, call: Call) -> Fetched {
        let started = call.started;
        let config = call.issuer.issuer();
        let issuer_id = config.id.as_str();
        let Some(settings) = config.introspection.as_ref() else {
            // `introspect` only asks issuers that have the settings.
            self.stats.call(IntrospectionOutcome::Error);
            return Fetched::Failed;
        };
        let Some(endpoint) = call.issuer.introspection_endpoint() else {
            self.stats.call(IntrospectionOutcome::Error);
            self.report_no_endpoint(call.key.0, issuer_id);
            return Fetched::Failed;
        };
        let Ok(Ok(_slot)) = tokio::time::timeout(config.fetch_timeout, self.calls.acquire()).await
        else {
            self.stats.call(IntrospectionOutcome::Error);
            let last = self.slots_full_logged.load(Ordering::Relaxed);
            let due = call.now_unix.saturating_sub(last) >= SLOTS_FULL_LOG_PERIOD_SECS;
            let ours = due
                && self
                    .slots_full_logged
                    .compare_exchange(last, call.now_unix, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
            if ours {
                tracing::error!(
                    issuer = issuer_id,
                    "introspection call not made: {MAX_CALLS_IN_FLIGHT} calls were in flight for the whole fetch_timeout (logged at most every {SLOTS_FULL_LOG_PERIOD_SECS} s; tokengate_introspection_requests_total{{outcome=\"error\"}} counts each)"
                );
            } else {
                tracing::debug!(
                    issuer = issuer_id,
                    "introspection call not made: no free call slot"
                );
            }
            return Fetched::Failed;
        };
        let answer = client::call(&call.issuer, &endpoint, settings, &call.token).await;
        match answer {
            Ok(Answer::Active(claims)) => {
                self.stats.call(IntrospectionOutcome::Active);
                let active = Arc::new(Active::new(
                    &claims,
                    config,
                    settings.cache_ttl,
                    call.now_unix,
                ));
                let lifetime = active.lifetime(settings.cache_ttl, call.now_unix);
                self.inactive.remove(&call.key);
                self.active
                    .insert(call.key, active.clone(), started, lifetime);
                // The first use needs the parsed claims, and they are at hand.
                self.remember_parsed(call.key, active.serial, Arc::new(claims));
                Fetched::Active(active)
            }
            Ok(Answer::Inactive) => {
                self.stats.call(IntrospectionOutcome::Inactive);
                self.active.remove(&call.key);
                self.inactive
                    .insert(call.key, (), started, settings.negative_cache_ttl);
                Fetched::Inactive
            }
            Err(failure) => {
                self.stats.call(IntrospectionOutcome::Error);
                tracing::error!(
                    issuer = issuer_id,
                    endpoint = %fetch::redact(&endpoint),
                    "introspection call failed: {failure}"
                );
                Fetched::Failed
            }
        }
    }

    /// The per-use checks of an active answer, then the result.
    fn judge(
        &self,
        key: &Key,
        issuer: &IssuerKeys,
        active: &Arc<Active>,
        now_unix: i64,
    ) -> Result<Introspected, IntrospectionError> {
        active
            .check(now_unix, issuer.issuer().clock_skew)
            .map_err(|e| IntrospectionError::Invalid {
                reason: e.reason(),
                description: e.description().into(),
            })?;
        Ok(Introspected {
            issuer: key.0,
            claims: self.parsed_claims(key, active),
            exp: active.exp(),
        })
    }

    /// The answer's claims, parsed once per answer while it is in use.
    fn parsed_claims(&self, key: &Key, active: &Active) -> Arc<Claims> {
        let reused = self
            .parsed
            .get(key)
            .filter(|p| p.0 == active.serial)
            .map(|p| p.1.clone());
        if let Some(claims) = reused {
            return claims;
        }
        let claims = Arc::new(active.claims());
        self.remember_parsed(*key, active.serial, claims.clone());
        claims
    }

    fn remember_parsed(&self, key: Key, serial: u64, claims: Arc<Claims>) {
        if self.parsed.len() >= PARSED_ENTRIES {
            self.parsed.clear();
        }
        self.parsed.insert(key, (serial, claims));
    }

    fn report_no_endpoint(&self, issuer_index: usize, issuer_id: &str) {
        if self.warned_no_endpoint.insert(issuer_index) {
            tracing::error!(
                issuer = issuer_id,
                "introspection call failed: {}",
                Failure::NoEndpoint
            );
        } else {
            tracing::debug!(
                issuer = issuer_id,
                "issuer has no introspection endpoint (yet)"
            );
        }
    }
}
