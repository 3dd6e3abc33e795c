//! Per-issuer key state: OIDC discovery, the JWKS cache, its background refresh and the
//! refresh an unknown `kid` may trigger (SPEC §3 "Keys:" and "Issuers:", §4 item 4, §7).
//!
//! One [`IssuerKeys`] per `[[issuer]]`. [`IssuerKeys::run`] is its background task: the first
//! load (discovery, then the JWKS) is retried with backoff (1 s, doubling, capped at
//! `jwks_min_refresh`) until it succeeds, then the set is refreshed every `jwks_refresh` (each
//! periodic refresh repeats discovery, so a moved `jwks_uri` is followed). A failed refresh keeps
//! the last good set and retries with the same backoff.
//!
//! Requests only read: [`IssuerKeys::keys`] is one atomic load (arc-swap). A request whose token
//! names an unknown `kid` calls [`IssuerKeys::refresh_for_unknown_kid`], which fetches the JWKS
//! (not discovery) only when no refresh is in flight and none started within `jwks_min_refresh`;
//! every other caller gets `None` at once, so a flood of random kids costs at most one fetch per
//! interval and no request ever waits on another's refresh. The refresh runs in its own task, so
//! a client that hangs up does not cancel it half-way.
//!
//! Readiness: an issuer whose algorithms include an asymmetric one is ready once a non-empty key
//! set was loaded. An HMAC-only issuer has no JWKS: it is ready at once, unless it needs discovery
//! for its introspection endpoint (no `jwks_uri`, introspection without `endpoint`); then it is
//! ready once discovery succeeded. Once ready, an issuer stays ready: later failures (a discovery
//! mismatch included) only keep the last good set in use. With `jwks_uri` configured there is no
//! discovery at all (SPEC §3): `userinfo_endpoint` and the introspection `endpoint` then come
//! from the configuration only.
//!
//! [`IssuerKeys::with_keys`] makes a state with a fixed key set and no I/O at all (`tokengate
//! explain --jwks`, offline).
//!
//! Parsing and selecting keys is `keys.rs`'s job; HTTP rules (timeouts, size caps, redirects) are
//! `fetch.rs`'s. Logs name the issuer id, URLs without credentials, key counts and a fingerprint
//! prefix, never key material.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::config::Issuer;
use crate::telemetry::metrics::IssuerMetrics;
use crate::telemetry::trace::{self, CallKind};
use crate::token::fetch::{self, FetchError, MAX_DOCUMENT_BYTES};
use crate::token::keys::KeySet;

#[cfg(test)]
mod tests;

/// OIDC Discovery §4, appended to the issuer URL without its trailing `/`.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// The first retry delay after a failed load or refresh.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The key state of one issuer. Build with [`IssuerKeys::new`], drive with [`IssuerKeys::run`].
pub struct IssuerKeys {
    issuer: Issuer,
    client: reqwest::Client,
    /// Lets `refresh_for_unknown_kid(&self)` move the refresh into a task of its own.
    me: Weak<IssuerKeys>,
    /// At least one asymmetric algorithm is allowed, so a JWKS is needed.
    wants_jwks: bool,
    /// No `jwks_uri` configured and something (the JWKS, an introspection endpoint) must be found.
    wants_discovery: bool,
    /// Built with [`IssuerKeys::with_keys`]: the key set never changes and nothing is fetched.
    fixed: bool,
    keys: ArcSwapOption<KeySet>,
    /// Configured values, completed by discovery.
    endpoints: ArcSwap<Endpoints>,
    discovered: AtomicBool,
    /// Refresh bookkeeping; a std mutex, only ever held for a few instructions, never across
    /// an `.await`.
    gate: Mutex<Gate>,
    /// Notified whenever a refresh ends, for the background task waiting its turn.
    idle: Notify,
    last_error: Mutex<Option<String>>,
    refresh_ok: AtomicU64,
    refresh_error: AtomicU64,
    /// `tokengate_jwks_refresh_total{issuer}`, attached by the generation that starts it.
    metrics: OnceLock<Arc<IssuerMetrics>>,
}

/// Where the issuer's documents are: configured values win over discovered ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Endpoints {
    jwks_uri: Option<String>,
    userinfo: Option<String>,
    introspection: Option<String>,
}

impl IssuerKeys {
    /// Builds the HTTP client and checks the configured URLs; no network I/O.
    pub fn new(issuer: Issuer) -> Result<Arc<IssuerKeys>, String> {
        IssuerKeys::build(issuer, None)
    }

    /// A key state whose keys are `keys`, as saved in a file (`tokengate explain --jwks`): it
    /// never fetches discovery or a JWKS, an unknown `kid` refreshes nothing, and endpoints come
    /// from the configuration only. Ready at once, like an issuer whose keys have loaded.
    pub fn with_keys(issuer: Issuer, keys: KeySet) -> Result<Arc<IssuerKeys>, String> {
        IssuerKeys::build(issuer, Some(keys))
    }

    fn build(issuer: Issuer, fixed: Option<KeySet>) -> Result<Arc<IssuerKeys>, String> {
        let fail = |e: String| format!("issuer {:?}: {e}", issuer.id);
        let client = fetch::issuer_client(&issuer).map_err(fail)?;
        let configured = Endpoints {
            jwks_uri: issuer.jwks_uri.clone(),
            userinfo: issuer.userinfo_endpoint.clone(),
            introspection: issuer
                .introspection
                .as_ref()
                .and_then(|i| i.endpoint.clone()),
        };
        for url in [
            &configured.jwks_uri,
            &configured.userinfo,
            &configured.introspection,
        ]
        .into_iter()
        .flatten()
        {
            fetch::check_url(url, issuer.allow_http).map_err(fail)?;
        }
        let wants_jwks = issuer.algorithms.iter().any(|a| !a.is_hmac());
        let needs_introspection_endpoint = issuer
            .introspection
            .as_ref()
            .is_some_and(|i| i.endpoint.is_none());
        let wants_discovery = fixed.is_none()
            && issuer.jwks_uri.is_none()
            && (wants_jwks || needs_introspection_endpoint);
        if wants_discovery {
            fetch::check_url(&discovery_url(&issuer.issuer), issuer.allow_http).map_err(fail)?;
        }
        Ok(Arc::new_cyclic(|me| IssuerKeys {
            issuer,
            client,
            me: me.clone(),
            wants_jwks,
            wants_discovery,
            fixed: fixed.is_some(),
            keys: ArcSwapOption::new(fixed.map(Arc::new)),
            endpoints: ArcSwap::from_pointee(configured),
            discovered: AtomicBool::new(false),
            gate: Mutex::new(Gate::default()),
            idle: Notify::new(),
            last_error: Mutex::new(None),
            refresh_ok: AtomicU64::new(0),
            refresh_error: AtomicU64::new(0),
            metrics: OnceLock::new(),
        }))
    }

    /// Counts refreshes in the process's metrics registry from now on (the first handle
    /// attached stays: the id of an issuer whose state is carried over does not change).
    pub fn attach_metrics(&self, metrics: Arc<IssuerMetrics>) {
        let _ = self.metrics.set(metrics);
    }

    fn count_refresh(&self, ok: bool) {
        if let Some(metrics) = self.metrics.get() {
            metrics.jwks_refresh(ok);
        }
    }

    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// The client for every call to this issuer (`fetch_timeout`, `ca_file`, no redirects), for
    /// userinfo and introspection too.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Current key set, if any was ever loaded (stale sets are kept when a refresh fails).
    pub fn keys(&self) -> Option<Arc<KeySet>> {
        self.keys.load_full()
    }

    /// See the module documentation for what "ready" means.
    pub fn is_ready(&self) -> bool {
        if self.wants_jwks {
            self.keys.load().is_some()
        } else {
            !self.wants_discovery || self.discovered.load(Ordering::Acquire)
        }
    }

    /// The configured userinfo endpoint, else discovery's once known.
    pub fn userinfo_endpoint(&self) -> Option<String> {
        self.endpoints.load().userinfo.clone()
    }

    /// The configured introspection endpoint, else discovery's once known.
    pub fn introspection_endpoint(&self) -> Option<String> {
        self.endpoints.load().introspection.clone()
    }

    /// Why the last load or refresh failed; `None` after a success.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    /// Loads and refreshes so far: (succeeded, failed). Every attempt counts, the first load's
    /// retries and unknown-`kid` refreshes included.
    pub fn refresh_counts(&self) -> (u64, u64) {
        (
            self.refresh_ok.load(Ordering::Relaxed),
            self.refresh_error.load(Ordering::Relaxed),
        )
    }

    /// Called by a request whose token names a kid that is not in the current set. If no
    /// refresh ran within `jwks_min_refresh` (the very first successful load does not count) and
    /// none is in flight, this call refreshes the JWKS and returns the set now current (the same
    /// one if nothing changed); otherwise, or when the refresh fails, it returns `None` at once.
    /// Before the first successful load it always returns `None`: the background task owns that.
    pub async fn refresh_for_unknown_kid(&self) -> Option<Arc<KeySet>> {
        if self.fixed || !self.wants_jwks || self.keys.load().is_none() {
            return None;
        }
        let me = self.me.upgrade()?;
        let min = self.issuer.jwks_min_refresh;
        if !lock(&self.gate).try_on_demand(Instant::now(), min) {
            return None;
        }
        let claim = Claim(me.clone());
        // Its own task: dropping this request's future must not cancel the refresh. It logs in
        // the request's span (its request id).
        let task = tokio::spawn(trace::in_current_scope(async move {
            let _claim = claim;
            me.refresh(false).await
        }));
        task.await.ok()?.ok().flatten()
    }

    /// Background task: the first load (retried with backoff until it succeeds), then a refresh
    /// every `jwks_refresh`; on failure the last good set stays and the backoff applies. Returns
    /// when `stop` becomes `true` or its sender is dropped.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        if self.fixed || (!self.wants_jwks && !self.wants_discovery) {
            let _ = stop.wait_for(|stopped| *stopped).await;
            return;
        }
        let mut backoff = Backoff::new(self.issuer.jwks_min_refresh);
        // A state carried over by a configuration reload already has its keys: keep the
        // periodic schedule instead of fetching again at once.
        let mut loaded = self.keys.load().is_some();
        if loaded {
            tokio::select! {
                () = tokio::time::sleep(self.issuer.jwks_refresh) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
        loop {
            let attempt = async {
                // The first load does not count against jwks_min_refresh (SPEC §3 "Keys:").
                let _claim = self.claim_background(loaded).await;
                self.refresh(true).await
            };
            let delay = tokio::select! {
                outcome = attempt => match outcome {
                    Ok(_) => {
                        loaded = true;
                        backoff.reset();
                        self.issuer.jwks_refresh
                    }
                    Err(_) => backoff.next_delay(),
                },
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    /// Waits until no refresh is in flight, then marks one. `counts`: it sets the time the
    /// unknown-`kid` interval is measured from.
    async fn claim_background(self: &Arc<Self>, counts: bool) -> Claim {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the check, so a refresh ending in between still wakes us.
            idle.as_mut().enable();
            let claimed = lock(&self.gate).try_background(Instant::now(), counts);
            if claimed {
                return Claim(self.clone());
            }
            idle.await;
        }
    }

    /// One attempt (the caller holds the claim): discovery if asked for (or never done), then
    /// the JWKS. Counts, logs and remembers the outcome.
    async fn refresh(&self, with_discovery: bool) -> Result<Option<Arc<KeySet>>, LoadError> {
        let outcome = self.load(with_discovery).await;
        let id = self.issuer.id.as_str();
        match &outcome {
            Ok(_) => {
                self.refresh_ok.fetch_add(1, Ordering::Relaxed);
                self.count_refresh(true);
                *lock(&self.last_error) = None;
            }
            Err(e) => {
                self.refresh_error.fetch_add(1, Ordering::Relaxed);
                self.count_refresh(false);
                let stale = self.keys.load().is_some();
                tracing::warn!(issuer = id, keeping_stale_keys = stale, "issuer keys: {e}");
                *lock(&self.last_error) = Some(e.to_string());
            }
        }
        outcome
    }

    async fn load(&self, with_discovery: bool) -> Result<Option<Arc<KeySet>>, LoadError> {
        if self.wants_discovery && (with_discovery || !self.discovered.load(Ordering::Acquire)) {
            let url = discovery_url(&self.issuer.issuer);
            let doc = fetch::get_json(&self.client, &url, MAX_DOCUMENT_BYTES, CallKind::Discovery)
                .await
                .map_err(|e| LoadError::Fetch("discovery", e))?;
            let found = endpoints_from_discovery(&self.issuer, &doc, self.wants_jwks)?;
            self.endpoints.store(Arc::new(found));
            self.discovered.store(true, Ordering::Release);
        }
        if !self.wants_jwks {
            return Ok(None);
        }
        let endpoints = self.endpoints.load_full();
        let Some(uri) = endpoints.jwks_uri.as_deref() else {
            return Err(LoadError::Discovery("no jwks_uri known".to_owned()));
        };
        let body = fetch::get_bytes(&self.client, uri, MAX_DOCUMENT_BYTES, CallKind::Jwks)
            .await
            .map_err(|e| LoadError::Fetch("JWKS", e))?;
        let fresh = KeySet::from_jwks(&body, &self.issuer.algorithms).map_err(LoadError::Keys)?;
        if fresh.is_empty() {
            let skipped = fresh.skipped();
            let why = match skipped.len() {
                0 => "it has no keys".to_owned(),
                n if n <= 3 => skipped.join("; "),
                n => format!("{}; and {} more", skipped[..3].join("; "), n - 3),
            };
            return Err(LoadError::Keys(format!("no key usable here: {why}")));
        }
        let fingerprint = fresh.fingerprint();
        let current = self.keys.load_full();
        if let Some(old) = current
            .as_ref()
            .filter(|old| old.fingerprint() == fingerprint)
        {
            tracing::debug!(issuer = %self.issuer.id, "issuer keys unchanged");
            return Ok(Some(old.clone()));
        }
        for reason in fresh.skipped() {
            tracing::warn!(issuer = %self.issuer.id, "JWKS key not used: {reason}");
        }
        let fresh = Arc::new(fresh);
        self.keys.store(Some(fresh.clone()));
        tracing::info!(
            issuer = %self.issuer.id,
            keys = fresh.len(),
            fingerprint = %short_hex(&fingerprint),
            replaced = current.is_some(),
            "issuer keys loaded"
        );
        Ok(Some(fresh))
    }
}

/// Marks a refresh in flight; dropping it (success, failure or cancellation) ends the mark and
/// wakes the background task if it waits.
struct Claim(Arc<IssuerKeys>);

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&self.0.gate).in_flight = false;
        self.0.idle.notify_waiters();
    }
}

/// Refresh bookkeeping, kept free of I/O so the timing rules can be unit-tested.
#[derive(Debug, Default)]
struct Gate {
    in_flight: bool,
    /// Start of the last refresh that counts against `jwks_min_refresh`.
    last: Option<Instant>,
}

impl Gate {
    /// An unknown-`kid` refresh: only when idle and the interval has passed since `last`.
    fn try_on_demand(&mut self, now: Instant, min: Duration) -> bool {
        let too_soon = self.last.is_some_and(|last| now.duration_since(last) < min);
        if self.in_flight || too_soon {
            return false;
        }
        self.in_flight = true;
        self.last = Some(now);
        true
    }

    /// A background load or refresh: whenever idle.
    fn try_background(&mut self, now: Instant, counts: bool) -> bool {
        if self.in_flight {
            return false;
        }
        self.in_flight = true;
        if counts {
            self.last = Some(now);
        }
        true
    }
}

/// Retry delays: 1 s, doubling, capped at `jwks_min_refresh` (which also caps the first one).
#[derive(Debug)]
struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    fn new(cap: Duration) -> Backoff {
        let cap = cap.max(Duration::from_millis(10));
        Backoff {
            next: FIRST_BACKOFF.min(cap),
            cap,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        delay
    }

    fn reset(&mut self) {
        *self = Backoff::new(self.cap);
    }
}

/// Why a load or refresh failed (operator-facing; never key material or secrets).
#[derive(Debug)]
enum LoadError {
    /// `what` names the document: "discovery" or "JWKS".
    Fetch(&'static str, FetchError),
    Discovery(String),
    Mismatch {
        configured: String,
        says: String,
    },
    Keys(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Fetch(what, e) => write!(f, "{what} fetch failed: {e}"),
            LoadError::Discovery(why) => write!(f, "discovery document refused: {why}"),
            LoadError::Mismatch { configured, says } => write!(
                f,
                "issuer mismatch: configured {configured:?}, discovery says {says:?}"
            ),
            LoadError::Keys(why) => write!(f, "JWKS refused: {why}"),
        }
    }
}

fn discovery_url(issuer: &str) -> String {
    format!("{}{DISCOVERY_PATH}", issuer.trim_end_matches('/'))
}

/// Checks a discovery document against the configuration (exact `issuer`, URLs that pass
/// `check_url`) and merges its endpoints under the configured ones.
fn endpoints_from_discovery(
    issuer: &Issuer,
    doc: &Value,
    wants_jwks: bool,
) -> Result<Endpoints, LoadError> {
    let Some(doc) = doc.as_object() else {
        return Err(LoadError::Discovery("not a JSON object".to_owned()));
    };
    let says = match doc.get("issuer") {
        Some(Value::String(s)) => s,
        _ => return Err(LoadError::Discovery("no \"issuer\" string".to_owned())),
    };
    if *says != issuer.issuer {
        return Err(LoadError::Mismatch {
            configured: issuer.issuer.clone(),
            says: says.chars().take(200).collect(),
        });
    }
    // A member is read (and checked) only when the configuration does not already say.
    let member = |configured: Option<&String>, name: &str| -> Result<Option<String>, LoadError> {
        if let Some(value) = configured {
            return Ok(Some(value.clone()));
        }
        match doc.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(url)) => fetch::check_url(url, issuer.allow_http)
                .map(|()| Some(url.clone()))
                .map_err(|e| LoadError::Discovery(format!("{name}: {e}"))),
            Some(_) => Err(LoadError::Discovery(format!("{name} is not a string"))),
        }
    };
    let configured_introspection = issuer
        .introspection
        .as_ref()
        .and_then(|i| i.endpoint.as_ref());
    let found = Endpoints {
        jwks_uri: member(issuer.jwks_uri.as_ref(), "jwks_uri")?,
        userinfo: member(issuer.userinfo_endpoint.as_ref(), "userinfo_endpoint")?,
        introspection: member(configured_introspection, "introspection_endpoint")?,
    };
    if wants_jwks && found.jwks_uri.is_none() {
        return Err(LoadError::Discovery("no jwks_uri".to_owned()));
    }
    Ok(found)
}

fn short_hex(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// A poisoned lock only means another thread panicked mid-update of plain data; keep going.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
