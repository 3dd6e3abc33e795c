//! Writes the `tokengate_*` families of SPEC §7, in the SPEC's order, through prometheus-client's
//! descriptor encoder (so the Prometheus 0.0.4 text, escaping and float formatting are the
//! library's). A custom collector because the library's own `Family`/`Histogram` lock on the
//! request path; here a scrape only reads atomics.
//!
//! Counter names are given without `_total`: the encoder appends it to every counter.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelValue, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;

use super::histogram::Histogram;
use super::labels::{Counts, FixedLabel};
use super::route::StatusLabel;
use super::{Core, IssuerMetrics, RouteMetrics};

/// The registry's collector for every `tokengate_*` family.
#[derive(Debug)]
pub(super) struct CoreCollector(pub(super) Arc<Core>);

impl Collector for CoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let core = &self.0;
        // Copies of the handle lists: the locks are not held while writing.
        let routes = core.routes_snapshot();
        let issuers = core.issuers_snapshot();
        let e = &mut encoder;

        requests(e, &routes)?;
        fixed(
            e,
            "tokengate_auth_failures",
            "Requests refused by authentication or authorization, by reason.",
            &core.auth_failures,
        )?;
        histograms(
            e,
            "tokengate_request_duration_seconds",
            "Time from the request head to the response head, by route.",
            &routes,
            RouteMetrics::request_duration,
        )?;
        histograms(
            e,
            "tokengate_upstream_duration_seconds",
            "Time spent on the upstream exchange, by route.",
            &routes,
            RouteMetrics::upstream_duration,
        )?;
        fixed(
            e,
            "tokengate_userinfo_cache",
            "Userinfo cache lookups, by result.",
            &core.userinfo_cache,
        )?;
        fixed(
            e,
            "tokengate_userinfo_requests",
            "Calls to userinfo endpoints, by outcome.",
            &core.userinfo_requests,
        )?;
        jwks_refreshes(e, &issuers)?;
        fixed(
            e,
            "tokengate_config_reloads",
            "Configuration reloads, by outcome.",
            &core.config_reloads,
        )?;
        let open = core.open_connections.load(Ordering::Relaxed);
        e.encode_descriptor(
            "tokengate_open_connections",
            "Client connections currently open.",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&open)?;
        fixed(
            e,
            "tokengate_introspection_cache",
            "Introspection cache lookups, by result.",
            &core.introspection_cache,
        )?;
        fixed(
            e,
            "tokengate_introspection_requests",
            "Calls to introspection endpoints, by outcome.",
            &core.introspection_requests,
        )?;
        fixed(
            e,
            "tokengate_dpop_proofs",
            "DPoP proofs checked, by outcome.",
            &core.dpop_proofs,
        )?;
        if core.options.shared_store {
            fixed(
                e,
                "tokengate_shared_store_errors",
                "Failed calls to the shared store, by operation.",
                &core.shared_store_errors,
            )?;
        }
        if core.options.spans_dropped {
            let dropped = core.spans_dropped.load(Ordering::Relaxed);
            e.encode_descriptor(
                "tokengate_spans_dropped",
                "Trace spans dropped instead of exported.",
                None,
                MetricType::Counter,
            )?
            .encode_counter::<NoLabelSet, _, u64>(&dropped, None)?;
        }
        Ok(())
    }
}

/// A counter family over a fixed label set: every value, 0 included.
fn fixed<L: FixedLabel>(
    e: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    counts: &Counts<L>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for &value in L::ALL {
        let labels = [(L::KEY, value.label())];
        counter(&mut m.encode_family(&labels)?, counts.get(value))?;
    }
    Ok(())
}

/// `tokengate_requests_total{route,status}`: only the statuses a route has seen.
fn requests(e: &mut DescriptorEncoder, routes: &[Arc<RouteMetrics>]) -> fmt::Result {
    let mut m = e.encode_descriptor(
        "tokengate_requests",
        "Requests answered, by route and HTTP status.",
        None,
        MetricType::Counter,
    )?;
    for route in routes {
        for (status, n) in route.statuses() {
            let labels = ([("route", route.id())], [("status", status)]);
            counter(&mut m.encode_family(&labels)?, n)?;
        }
    }
    Ok(())
}

fn histograms(
    e: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    routes: &[Arc<RouteMetrics>],
    which: fn(&RouteMetrics) -> &Histogram,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for route in routes {
        let snap = which(route).snapshot();
        let labels = [("route", route.id())];
        m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            snap.sum_seconds,
            snap.count,
            &snap.buckets,
            None,
        )?;
    }
    Ok(())
}

fn jwks_refreshes(e: &mut DescriptorEncoder, issuers: &[Arc<IssuerMetrics>]) -> fmt::Result {
    let mut m = e.encode_descriptor(
        "tokengate_jwks_refresh",
        "Key set fetches, by issuer and outcome.",
        None,
        MetricType::Counter,
    )?;
    for issuer in issuers {
        for &outcome in super::Outcome::ALL {
            let labels = (
                [("issuer", issuer.id())],
                [(super::Outcome::KEY, outcome.label())],
            );
            counter(
                &mut m.encode_family(&labels)?,
                issuer.refreshes.get(outcome),
            )?;
        }
    }
    Ok(())
}

fn counter(m: &mut MetricEncoder, value: u64) -> fmt::Result {
    m.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

impl EncodeLabelValue for StatusLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        match self {
            StatusLabel::Code(code) => code.encode(encoder),
            StatusLabel::Other => "other".encode(encoder),
        }
    }
}
