//! The enrichment phase (SPEC §4 item 5): claims from the issuer's userinfo endpoint, merged
//! over the access token's, behind a bounded cache with single-flight.
//!
//! Phase 5 is [`Userinfo::enrich_caller`] (`phase.rs`): on routes with `userinfo = true` it asks
//! [`Userinfo::cached`] (synchronous, the warm path) and on a miss [`Userinfo::enrich`]:
//!
//! 1. A DPoP-bound token is never sent (its proof is bound to this request, not to the userinfo
//!    endpoint): [`Outcome::Skipped`]`(Reason::DpopBoundToken)`, token claims only.
//! 2. The cache (`cache.rs`) is asked under (issuer index, SHA-256 of the whole token). An entry
//!    is served while younger than `min(cache_ttl, route userinfo_max_age, token exp - now)`,
//!    never later, whether or not the issuer is reachable. `userinfo_max_age = "0s"` never
//!    serves from the cache.
//! 3. On a miss, one call per (issuer, token) is in flight at a time (**single-flight**,
//!    `crate::cache::Flights`): the first request (the leader) registers in `flights` and spawns
//!    the call as a task of its own; later requests for the same key wait for its result without
//!    holding any lock or map guard. The task stores the result in the cache, leaves `flights`,
//!    then publishes it to the waiters: a request arriving meanwhile either
//!    joins the flight or finds the cache entry, and none joins a call already answered. (A
//!    leader that finds an entry stored just before it registered serves that.) Because the call
//!    is its own task, a leader whose client hangs up does not fail the waiters. This holds for
//!    `"0s"` routes too: concurrent identical requests share the one call in progress (its answer
//!    is as fresh as any of them could get), and each later request makes a new call.
//! 4. The answer is judged per request: its `sub` must be a string equal to the token's `sub`
//!    (a token without `sub` never matches), else 401 `invalid_token`; then it is merged
//!    ([`merge`]).
//!
//! Failures (SPEC §4.5, §6): a 401 from the endpoint → 401 `invalid_token` "userinfo endpoint
//! rejected the token", remembered for [`NEGATIVE_TTL`] (10 s) so a revoked token does not hammer
//! the issuer. Anything else (timeout, connection error, 5xx, another 4xx, a body that is neither
//! a JSON object nor a valid signed JWT, an issuer without a userinfo endpoint) is never cached
//! and goes to `[userinfo].on_error`: `deny` → 503 `temporarily_unavailable` with `Retry-After`,
//! `proceed` → [`Outcome::Skipped`] (forward with token claims only). A wrong `sub` is cached
//! like any answer, so it is refused again without a call until the entry expires.
//!
//! Metrics (SPEC §7): [`Userinfo::counters`] — cache `hit` / `miss` / `coalesced` (a request that
//! joined a call in flight), calls `ok` / `unauthorized` / `error` (one per call, not per waiting
//! request; an issuer without an endpoint counts one `miss` and one `error` per request).
//!
//! Privacy: the raw token is never a key, never logged; it lives only in the request and in the
//! task making the call. Logs name the issuer id and the redacted endpoint URL.

mod cache;
mod client;
mod phase;

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use dashmap::{DashMap, DashSet};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cache::{Flights, Joined};
use crate::config::{self, OnError};
use crate::digest_hash::DigestHash;
use crate::reason::Reason;
use crate::rejection::Rejection;
use crate::telemetry::metrics::{CacheResult, Counts, Metrics, UserinfoOutcome};
use crate::telemetry::trace;
use crate::token::claims::{self, Claims};
use crate::token::jwks::IssuerKeys;

pub use cache::NEGATIVE_TTL;
pub use client::MAX_USERINFO_BYTES;

use cache::{Cache, Cached, Key};
use client::{Answer, Failure, Fetched};

#[cfg(test)]
mod tests;

/// Claims that always come from the access token, whatever userinfo says (SPEC §4.5).
pub const TOKEN_ONLY_CLAIMS: [&str; 11] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "scope",
    "scp",
    "cnf",
    "client_id",
];

/// `error_description` of the 401 for a token the userinfo endpoint refused (SPEC §4.5).
pub const REJECTED_DESCRIPTION: &str = "userinfo endpoint rejected the token";

/// `Retry-After` of the 503 when userinfo is unavailable and `on_error = "deny"`.
const RETRY_AFTER_SECS: u32 = 5;

/// Merged claims kept for reuse (see `Userinfo::merged`).
const MERGED_ENTRIES: usize = 512;

/// The background purge runs every `min(cache_ttl, 30 s)`, at least every second.
const MAX_PURGE_PERIOD: Duration = Duration::from_secs(30);
const MIN_PURGE_PERIOD: Duration = Duration::from_secs(1);

/// What enrichment did, when the request may go on.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The token's claims with the userinfo answer merged over them.
    Enriched {
        claims: Arc<Claims>,
        /// Identifies the answer (unique in the process): for one token, the merged claims
        /// are the same exactly when this is.
        answer: u64,
    },
    /// Forward with the token's claims only; the reason is for the access log:
    /// `DpopBoundToken`, `UserinfoUnavailable` (a failure under `on_error = "proceed"`),
    /// `NoUserinfoEndpoint` (likewise, the issuer has none).
    Skipped(Reason),
}

/// The verified access token of a request, as enrichment needs it.
#[derive(Debug, Clone, Copy)]
pub struct TokenRef<'a> {
    pub raw: &'a str,
    /// SHA-256 of `raw`, computed once by authentication (the cache key).
    pub sha256: &'a [u8; 32],
    /// Index of its issuer in `Config::issuers`.
    pub issuer: usize,
    pub claims: &'a Claims,
    /// Its `exp` (unix seconds).
    pub exp: i64,
}

/// Counter values for `/metrics` (SPEC §7).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserinfoCounters {
    /// `tokengate_userinfo_cache_total{result="hit"}`: served from the cache (a remembered 401
    /// included).
    pub hits: u64,
    /// `{result="miss"}`: the request started a call.
    pub misses: u64,
    /// `{result="coalesced"}`: the request waited for a call another request started.
    pub coalesced: u64,
    /// `tokengate_userinfo_requests_total{outcome="ok"}`: a usable answer.
    pub ok: u64,
    /// `{outcome="unauthorized"}`: the endpoint answered 401.
    pub unauthorized: u64,
    /// `{outcome="error"}`: any other failure.
    pub error: u64,
}

/// This generation's counts (`counters`), also recorded in the process's metrics registry,
/// whose counters outlive reloads.
#[derive(Default)]
struct Stats {
    cache: Counts<CacheResult>,
    calls: Counts<UserinfoOutcome>,
    metrics: Option<Arc<Metrics>>,
}

impl Stats {
    fn cache(&self, result: CacheResult) {
        self.cache.inc(result);
        if let Some(m) = &self.metrics {
            m.userinfo_cache(result);
        }
    }

    fn call(&self, outcome: UserinfoOutcome) {
        self.calls.inc(outcome);
        if let Some(m) = &self.metrics {
            m.userinfo_request(outcome);
        }
    }
}

/// The enrichment phase's state for one configuration generation. Build with [`Userinfo::new`];
/// run [`Userinfo::run_purger`] beside it.
pub struct Userinfo {
    /// Lets `enrich(&self)` hand the call to a task of its own.
    me: Weak<Userinfo>,
    cache_ttl: Duration,
    timeout: Duration,
    on_error: OnError,
    cache: Cache,
    /// The merged claims of recently used answers, with the answer's serial: an answer is only
    /// reached through its token's hash, so every request that uses it carries the same token
    /// claims and gets the same merge. Bounded by [`MERGED_ENTRIES`] (emptied when full): a
    /// merged map is several KiB, too much to keep next to every cached answer.
    merged: DashMap<Key, (u64, Arc<Claims>), DigestHash>,
    /// Calls in progress (module docs, step 3).
    flights: Flights<Key, Fetched>,
    stats: Stats,
    /// Issuers already reported (at error level) as having no userinfo endpoint.
    warned_no_endpoint: DashSet<usize>,
}

impl fmt::Debug for Userinfo {
    /// Settings and sizes only: no token hashes, no claims.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Userinfo")
            .field("cache_ttl", &self.cache_ttl)
            .field("timeout", &self.timeout)
            .field("on_error", &self.on_error)
            .field("entries", &self.cache.len())
            .field("in_flight", &self.flights.len())
            .finish_non_exhaustive()
    }
}

impl Userinfo {
    pub fn new(settings: &config::Userinfo) -> Arc<Userinfo> {
        Self::build(settings, None)
    }

    /// As [`Userinfo::new`], also counting in the process's metrics registry (SPEC §7).
    pub fn with_metrics(settings: &config::Userinfo, metrics: Arc<Metrics>) -> Arc<Userinfo> {
        Self::build(settings, Some(metrics))
    }

    fn build(settings: &config::Userinfo, metrics: Option<Arc<Metrics>>) -> Arc<Userinfo> {
        Arc::new_cyclic(|me| Userinfo {
            me: me.clone(),
            cache_ttl: settings.cache_ttl,
            timeout: settings.timeout,
            on_error: settings.on_error,
            cache: Cache::new(settings.max_entries),
            merged: DashMap::default(),
            flights: Flights::new(),
            stats: Stats {
                metrics,
                ..Stats::default()
            },
            warned_no_endpoint: DashSet::new(),
        })
    }

    /// Enriches a verified token's claims (module docs). `issuer` is the token issuer's key
    /// state (endpoint, client, keys for signed answers), `route_max_age` the route's
    /// `userinfo_max_age`, `dpop_bound` whether the token is bound to a DPoP key.
    pub async fn enrich(
        &self,
        token: TokenRef<'_>,
        issuer: &Arc<IssuerKeys>,
        route_max_age: Option<Duration>,
        dpop_bound: bool,
        now_unix: i64,
    ) -> Result<Outcome, Rejection> {
        if let Some(outcome) = self.cached(
            token.issuer,
            token.sha256,
            token.claims,
            route_max_age,
            dpop_bound,
        ) {
            return outcome;
        }
        let key: Key = (token.issuer, *token.sha256);
        let Some(endpoint) = issuer.userinfo_endpoint() else {
            self.stats.cache(CacheResult::Miss);
            self.stats.call(UserinfoOutcome::Error);
            self.report_no_endpoint(token.issuer, issuer);
            return self.on_error(Reason::NoUserinfoEndpoint);
        };
        let call = Call {
            key,
            issuer: issuer.clone(),
            endpoint,
            token: token.raw.to_owned(),
            token_exp: token.exp,
            now_unix,
        };
        let fetched = self.flight(call, route_max_age).await;
        self.judge(&key, fetched, token.claims)
    }

    /// The outcome [`Userinfo::enrich`] would have without asking the issuer, or `None` when it
    /// must ask. Synchronous, so the common warm path needs neither the raw token nor a future.
    pub fn cached(
        &self,
        issuer: usize,
        sha256: &[u8; 32],
        claims: &Claims,
        route_max_age: Option<Duration>,
        dpop_bound: bool,
    ) -> Option<Result<Outcome, Rejection>> {
        if dpop_bound {
            return Some(Ok(Outcome::Skipped(Reason::DpopBoundToken)));
        }
        let key: Key = (issuer, *sha256);
        let cached = self.cache.get(&key, Instant::now(), route_max_age)?;
        self.stats.cache(CacheResult::Hit);
        Some(self.judge(&key, Fetched::from(cached), claims))
    }

    /// Current counter values.
    pub fn counters(&self) -> UserinfoCounters {
        let s = &self.stats;
        UserinfoCounters {
            hits: s.cache.get(CacheResult::Hit),
            misses: s.cache.get(CacheResult::Miss),
            coalesced: s.cache.get(CacheResult::Coalesced),
            ok: s.calls.get(UserinfoOutcome::Ok),
            unauthorized: s.calls.get(UserinfoOutcome::Unauthorized),
            error: s.calls.get(UserinfoOutcome::Error),
        }
    }

    /// Removes expired entries every `min(cache_ttl, 30 s)` (at least every second) until `stop`
    /// becomes `true` or its sender is dropped. Holds only a weak reference between rounds, so
    /// a dropped `Userinfo` also ends it.
    pub async fn run_purger(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let period = purge_period(self.cache_ttl);
        let me = Arc::downgrade(&self);
        drop(self);
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            let Some(me) = me.upgrade() else {
                return;
            };
            let removed = me.cache.purge(Instant::now());
            if removed > 0 {
                tracing::debug!(removed, left = me.cache.len(), "userinfo cache purged");
            }
        }
    }

    /// Entries in the cache (answers and remembered 401s). Summed shard by shard, so while
    /// entries are being replaced concurrently it may count one twice; it is exact at rest, and
    /// the bound itself is enforced by an exact slot counter (`crate::cache::TtlCache`).
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Joins the call in flight for `call.key`, or starts one (module docs, step 3).
    async fn flight(&self, call: Call, route_max_age: Option<Duration>) -> Fetched {
        let waiter = match (self.flights.join(call.key), self.me.upgrade()) {
            (Joined::Waiter(waiter), _) => {
                self.stats.cache(CacheResult::Coalesced);
                waiter
            }
            (Joined::Leader(leader, waiter), Some(me)) => {
                // A call that ended between our cache miss and our registration stored its
                // answer before leaving `flights`: look again before calling.
                if let Some(cached) = self.cache.get(&call.key, Instant::now(), route_max_age) {
                    self.stats.cache(CacheResult::Hit);
                    let fetched = Fetched::from(cached);
                    leader.publish(fetched.clone());
                    return fetched;
                }
                self.stats.cache(CacheResult::Miss);
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
                return Fetched::Failed(Failure::Internal("userinfo state is shutting down"));
            }
        };
        waiter
            .result()
            .await
            .unwrap_or(Fetched::Failed(Failure::Internal(
                "the userinfo call ended without an answer",
            )))
    }

    /// Makes the call, counts, logs and caches its result (runs in the flight's task).
    async fn call(&self, call: Call) -> Fetched {
        let started = Instant::now();
        let fetched = client::call(
            &call.issuer,
            &call.endpoint,
            &call.token,
            self.timeout,
            call.now_unix,
        )
        .await;
        let issuer_id = call.issuer.issuer().id.as_str();
        match &fetched {
            Fetched::Answer(answer) => {
                self.stats.call(UserinfoOutcome::Ok);
                let lifetime = cache::lifetime(self.cache_ttl, call.token_exp, call.now_unix);
                let value = Cached::Answer(answer.clone());
                self.cache.insert(call.key, value, started, lifetime);
            }
            Fetched::Rejected => {
                self.stats.call(UserinfoOutcome::Unauthorized);
                tracing::info!(
                    issuer = issuer_id,
                    "userinfo endpoint rejected a token (401)"
                );
                self.cache
                    .insert(call.key, Cached::Rejected, started, NEGATIVE_TTL);
            }
            Fetched::Failed(failure) => {
                self.stats.call(UserinfoOutcome::Error);
                tracing::warn!(
                    issuer = issuer_id,
                    endpoint = %crate::token::fetch::redact(&call.endpoint),
                    "userinfo call failed: {failure}"
                );
            }
        }
        fetched
    }

    /// Turns a result into this request's outcome (module docs, step 4, and failures).
    fn judge(
        &self,
        key: &Key,
        fetched: Fetched,
        token_claims: &Claims,
    ) -> Result<Outcome, Rejection> {
        match fetched {
            Fetched::Answer(answer) => {
                let token_sub = claims::str_claim(token_claims, "sub");
                if token_sub.is_none() || answer.sub() != token_sub {
                    return Err(Rejection::InvalidToken {
                        reason: Reason::UserinfoWrongSubject,
                        description: "userinfo subject does not match the token".into(),
                    });
                }
                Ok(Outcome::Enriched {
                    claims: self.merged(key, &answer, token_claims),
                    answer: answer.serial,
                })
            }
            Fetched::Rejected => Err(Rejection::InvalidToken {
                reason: Reason::UserinfoRejected,
                description: REJECTED_DESCRIPTION.into(),
            }),
            Fetched::Failed(_) => self.on_error(Reason::UserinfoUnavailable),
        }
    }

    /// The token's claims with `answer` merged over them, merged once per answer while it is
    /// in use.
    fn merged(&self, key: &Key, answer: &Answer, token_claims: &Claims) -> Arc<Claims> {
        let reused = self
            .merged
            .get(key)
            .filter(|m| m.0 == answer.serial)
            .map(|m| m.1.clone());
        if let Some(claims) = reused {
            return claims;
        }
        let claims = Arc::new(merge(token_claims, &answer.claims()));
        if self.merged.len() >= MERGED_ENTRIES {
            self.merged.clear();
        }
        self.merged.insert(*key, (answer.serial, claims.clone()));
        claims
    }

    fn on_error(&self, skipped: Reason) -> Result<Outcome, Rejection> {
        match self.on_error {
            OnError::Proceed => Ok(Outcome::Skipped(skipped)),
            OnError::Deny => Err(Rejection::Unavailable {
                reason: Reason::Unavailable,
                description: "the issuer's userinfo endpoint is unavailable".into(),
                retry_after_secs: RETRY_AFTER_SECS,
            }),
        }
    }

    fn report_no_endpoint(&self, issuer_index: usize, issuer: &IssuerKeys) {
        let id = issuer.issuer().id.as_str();
        if self.warned_no_endpoint.insert(issuer_index) {
            tracing::error!(
                issuer = id,
                "a route asks for userinfo but the issuer has no userinfo endpoint (set \
                 userinfo_endpoint, or use an issuer whose discovery document names one); \
                 handled as a userinfo failure (on_error)"
            );
        } else {
            tracing::debug!(issuer = id, "issuer has no userinfo endpoint");
        }
    }
}

/// Everything the flight's task needs, owned.
struct Call {
    key: Key,
    issuer: Arc<IssuerKeys>,
    endpoint: String,
    /// The raw token, for the `Authorization` header only.
    token: String,
    token_exp: i64,
    now_unix: i64,
}

impl From<Cached> for Fetched {
    fn from(cached: Cached) -> Fetched {
        match cached {
            Cached::Answer(answer) => Fetched::Answer(answer),
            Cached::Rejected => Fetched::Rejected,
        }
    }
}

/// The token's claims with the userinfo answer's merged over them, except the
/// [`TOKEN_ONLY_CLAIMS`], which keep the token's value (or stay absent). Order: the token's
/// claims first (a replaced value keeps its place), then the answer's new ones.
pub fn merge(token: &Claims, userinfo: &Claims) -> Claims {
    let mut merged = token.clone();
    for (name, value) in userinfo {
        if !TOKEN_ONLY_CLAIMS.contains(&name.as_str()) {
            merged.insert(name.clone(), value.clone());
        }
    }
    merged
}

fn purge_period(cache_ttl: Duration) -> Duration {
    cache_ttl.clamp(MIN_PURGE_PERIOD, MAX_PURGE_PERIOD)
}
