//! The Prometheus metrics of SPEC §7: one [`Metrics`] per process, shared by `Arc`, surviving
//! every reload; served by the admin listener's `GET /metrics` as [`CONTENT_TYPE`] (Prometheus
//! text 0.0.4, written by prometheus-client's encoder).
//!
//! Recording takes no lock and allocates nothing: the request path holds handles made ahead of
//! time ([`RouteMetrics`] per route id, [`IssuerMetrics`] per issuer id) and every counter is a
//! relaxed atomic add; histograms are lock-free too (`histogram.rs` documents the buckets).
//! Handles are made when a configuration is loaded: [`Metrics::route`] and [`Metrics::issuer`]
//! take a lock and may allocate, and give back the same handle for the same id on every
//! reload, so counters never reset. An id that leaves the configuration keeps its series until
//! the process exits (series do not vanish and come back, and their number stays bounded by the
//! ids ever configured).
//!
//! Label values are bounded: `route` is a configured route id or [`NO_ROUTE`], `issuer` a
//! configured issuer id, `status` one of 100..=599 or `other`, and every other label a variant
//! of a fixed enum (`labels.rs`). No recording method takes a string a request could supply:
//! [`Metrics::auth_failure`] takes a `&'static str` and maps it onto the fixed `reason` set.
//!
//! Left to others: *when* to record (the gateway, the accept loop, the key fetcher, userinfo,
//! introspection, DPoP, reload) and serving the text (the admin listener). Process metrics are
//! `process.rs`; writing the families is `encode.rs`.

mod encode;
mod histogram;
mod labels;
mod process;
mod route;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;

use crate::reason::Reason;

pub use histogram::BUCKETS_SECONDS;
pub(crate) use labels::Counts;
pub use labels::{
    CacheResult, DpopOutcome, FixedLabel, IntrospectionOutcome, Outcome, SharedStoreOp,
    UserinfoOutcome,
};
pub use route::RouteMetrics;

/// `Content-Type` of [`Metrics::encode`]'s output: `text/plain; version=0.0.4; charset=utf-8`.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The `route` label of requests that matched no route (404 `no_route`, and requests refused
/// before routing, e.g. a malformed head). The access line writes the same `-`. A configured
/// route with this id would share its series; the configuration should refuse that id.
pub const NO_ROUTE: &str = "-";

/// What is exported besides the always-present families.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsOptions {
    /// `tokengate_spans_dropped_total`: on when `[telemetry]` exports spans.
    pub spans_dropped: bool,
    /// `tokengate_shared_store_errors_total{op}`: on when `[shared]` is configured.
    pub shared_store: bool,
}

/// The process's metrics. Make one at startup with [`Metrics::new`] and share the `Arc`.
pub struct Metrics {
    core: Arc<Core>,
    /// Holds the collectors over `core` and the process; read by [`Metrics::encode`].
    registry: Registry,
}

/// Everything the collectors read, shared between [`Metrics`] and its registry.
struct Core {
    options: MetricsOptions,
    /// By id, so output is sorted and an id is never written twice. Locked only when a
    /// configuration is loaded and, briefly, to copy the list at a scrape.
    routes: Mutex<BTreeMap<Box<str>, Arc<RouteMetrics>>>,
    issuers: Mutex<BTreeMap<Box<str>, Arc<IssuerMetrics>>>,
    auth_failures: labels::Counts<Reason>,
    userinfo_cache: labels::Counts<CacheResult>,
    userinfo_requests: labels::Counts<UserinfoOutcome>,
    config_reloads: labels::Counts<Outcome>,
    /// Its own `Arc` so a [`ConnectionGauge`] can outlive any borrow of `Metrics`.
    open_connections: Arc<AtomicI64>,
    introspection_cache: labels::Counts<CacheResult>,
    introspection_requests: labels::Counts<IntrospectionOutcome>,
    dpop_proofs: labels::Counts<DpopOutcome>,
    shared_store_errors: labels::Counts<SharedStoreOp>,
    spans_dropped: AtomicU64,
}

impl Core {
    fn routes_snapshot(&self) -> Vec<Arc<RouteMetrics>> {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes.values().cloned().collect()
    }

    fn issuers_snapshot(&self) -> Vec<Arc<IssuerMetrics>> {
        let issuers = self.issuers.lock().unwrap_or_else(PoisonError::into_inner);
        issuers.values().cloned().collect()
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("options", &self.core.options)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new(options: MetricsOptions) -> Arc<Metrics> {
        let core = Arc::new(Core {
            options,
            routes: Mutex::new(BTreeMap::new()),
            issuers: Mutex::new(BTreeMap::new()),
            auth_failures: labels::Counts::new(),
            userinfo_cache: labels::Counts::new(),
            userinfo_requests: labels::Counts::new(),
            config_reloads: labels::Counts::new(),
            open_connections: Arc::new(AtomicI64::new(0)),
            introspection_cache: labels::Counts::new(),
            introspection_requests: labels::Counts::new(),
            dpop_proofs: labels::Counts::new(),
            shared_store_errors: labels::Counts::new(),
            spans_dropped: AtomicU64::new(0),
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(encode::CoreCollector(Arc::clone(&core))));
        registry.register_collector(Box::new(process::ProcessCollector::default()));
        Arc::new(Metrics { core, registry })
    }

    /// The handle of route `id`, made on first use. Call at configuration load, not per request.
    pub fn route(&self, id: &str) -> Arc<RouteMetrics> {
        let mut routes = self
            .core
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(route) = routes.get(id) {
            return Arc::clone(route);
        }
        let route = Arc::new(RouteMetrics::new(id));
        routes.insert(id.into(), Arc::clone(&route));
        route
    }

    /// The handle for requests that matched no route ([`NO_ROUTE`]).
    pub fn no_route(&self) -> Arc<RouteMetrics> {
        self.route(NO_ROUTE)
    }

    /// The handle of issuer `id` (`tokengate_jwks_refresh_total{issuer}`), made on first use;
    /// its `ok` and `error` series appear at once. Call at configuration load.
    pub fn issuer(&self, id: &str) -> Arc<IssuerMetrics> {
        let mut issuers = self
            .core
            .issuers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(issuer) = issuers.get(id) {
            return Arc::clone(issuer);
        }
        let issuer = Arc::new(IssuerMetrics {
            id: id.into(),
            refreshes: labels::Counts::new(),
        });
        issuers.insert(id.into(), Arc::clone(&issuer));
        issuer
    }

    /// `tokengate_auth_failures_total{reason}`, for a reason that is an authentication failure
    /// (`Reason::is_auth_failure`); any other reason (`no_route`, `bad_gateway`, a note) is not
    /// counted here.
    pub fn auth_failure(&self, reason: Reason) {
        if reason.is_auth_failure() {
            self.core.auth_failures.inc(reason);
        }
    }

    /// `tokengate_userinfo_cache_total{result}`.
    pub fn userinfo_cache(&self, result: CacheResult) {
        self.core.userinfo_cache.inc(result);
    }

    /// `tokengate_userinfo_requests_total{outcome}`: one per call, not per waiting request.
    pub fn userinfo_request(&self, outcome: UserinfoOutcome) {
        self.core.userinfo_requests.inc(outcome);
    }

    /// `tokengate_introspection_cache_total{result}`.
    pub fn introspection_cache(&self, result: CacheResult) {
        self.core.introspection_cache.inc(result);
    }

    /// `tokengate_introspection_requests_total{outcome}`: one per call.
    pub fn introspection_request(&self, outcome: IntrospectionOutcome) {
        self.core.introspection_requests.inc(outcome);
    }

    /// `tokengate_dpop_proofs_total{outcome}`.
    pub fn dpop_proof(&self, outcome: DpopOutcome) {
        self.core.dpop_proofs.inc(outcome);
    }

    /// `tokengate_config_reloads_total{outcome}`.
    pub fn config_reload(&self, ok: bool) {
        self.core.config_reloads.inc(Outcome::of(ok));
    }

    /// `tokengate_open_connections` goes up now and down when the returned guard is dropped:
    /// keep it in the connection's task.
    pub fn connection_opened(&self) -> ConnectionGauge {
        self.core.open_connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGauge {
            open: Arc::clone(&self.core.open_connections),
        }
    }

    /// `tokengate_spans_dropped_total` (written only with [`MetricsOptions::spans_dropped`]).
    pub fn span_dropped(&self, n: u64) {
        self.core.spans_dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// `tokengate_shared_store_errors_total{op}` (written only with
    /// [`MetricsOptions::shared_store`]).
    pub fn shared_store_error(&self, op: SharedStoreOp) {
        self.core.shared_store_errors.inc(op);
    }

    /// The whole exposition, Prometheus text 0.0.4 ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_text::encode(&mut out, &self.registry).is_err() {
            // Writing into a `String` cannot fail, and the collectors only pass on the
            // encoder's errors; should it happen, an empty answer beats half a family.
            tracing::error!("encoding /metrics failed");
            out.clear();
        }
        out
    }
}

/// Metrics of one issuer id: `tokengate_jwks_refresh_total{issuer,outcome}`.
pub struct IssuerMetrics {
    id: Box<str>,
    refreshes: labels::Counts<Outcome>,
}

impl IssuerMetrics {
    /// The issuer id (the `issuer` label value).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// One key set fetch, successful or not.
    pub fn jwks_refresh(&self, ok: bool) {
        self.refreshes.inc(Outcome::of(ok));
    }
}

impl std::fmt::Debug for IssuerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerMetrics")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// One open client connection; dropping it lowers `tokengate_open_connections`.
#[must_use = "the gauge goes back down when this guard is dropped"]
#[derive(Debug)]
pub struct ConnectionGauge {
    open: Arc<AtomicI64>,
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}
