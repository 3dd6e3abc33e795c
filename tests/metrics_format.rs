//! `/metrics` is Prometheus text 0.0.4 that real parsers accept, with SPEC §7's families under
//! their exact names, types and label names, and only bounded label values: checked with the
//! `prometheus-parse` crate line by line and with `promtool check metrics` (Debian package
//! `prometheus`) when it is installed. Values after recordings are the unit tests'
//! (`src/telemetry/metrics/tests.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use prometheus_parse::{LineInfo, SampleType, Scrape};
use tokengate::telemetry::metrics::{
    CacheResult, DpopOutcome, IntrospectionOutcome, Metrics, MetricsOptions, SharedStoreOp,
    UserinfoOutcome, CONTENT_TYPE,
};

/// SPEC §7's table: name as written, type, label names.
const SPEC: &[(&str, SampleType, &[&str])] = &[
    (
        "tokengate_requests_total",
        SampleType::Counter,
        &["route", "status"],
    ),
    (
        "tokengate_auth_failures_total",
        SampleType::Counter,
        &["reason"],
    ),
    (
        "tokengate_request_duration_seconds",
        SampleType::Histogram,
        &["route"],
    ),
    (
        "tokengate_upstream_duration_seconds",
        SampleType::Histogram,
        &["route"],
    ),
    (
        "tokengate_userinfo_cache_total",
        SampleType::Counter,
        &["result"],
    ),
    (
        "tokengate_userinfo_requests_total",
        SampleType::Counter,
        &["outcome"],
    ),
    (
        "tokengate_jwks_refresh_total",
        SampleType::Counter,
        &["issuer", "outcome"],
    ),
    (
        "tokengate_config_reloads_total",
        SampleType::Counter,
        &["outcome"],
    ),
    ("tokengate_open_connections", SampleType::Gauge, &[]),
    (
        "tokengate_introspection_cache_total",
        SampleType::Counter,
        &["result"],
    ),
    (
        "tokengate_introspection_requests_total",
        SampleType::Counter,
        &["outcome"],
    ),
    (
        "tokengate_dpop_proofs_total",
        SampleType::Counter,
        &["outcome"],
    ),
    (
        "tokengate_shared_store_errors_total",
        SampleType::Counter,
        &["op"],
    ),
    ("tokengate_spans_dropped_total", SampleType::Counter, &[]),
];

/// The families only written when their option is on.
const OPTIONAL: [&str; 2] = [
    "tokengate_shared_store_errors_total",
    "tokengate_spans_dropped_total",
];

/// client_golang's default process collector (Linux).
const PROCESS: &[(&str, SampleType)] = &[
    ("process_cpu_seconds_total", SampleType::Counter),
    ("process_open_fds", SampleType::Gauge),
    ("process_max_fds", SampleType::Gauge),
    ("process_virtual_memory_bytes", SampleType::Gauge),
    ("process_resident_memory_bytes", SampleType::Gauge),
    ("process_start_time_seconds", SampleType::Gauge),
];

/// A registry after a little of everything, as a gateway with routes `orders` and `health`
/// and issuer `corp` would have it.
fn busy(options: MetricsOptions) -> Arc<Metrics> {
    let m = Metrics::new(options);
    let orders = m.route("orders");
    let health = m.route("health");
    m.issuer("corp").jwks_refresh(true);
    orders.request(200, Duration::from_millis(12));
    orders.upstream(Duration::from_millis(9));
    orders.request(503, Duration::from_secs(2));
    health.request(200, Duration::from_micros(80));
    m.no_route().request(404, Duration::from_micros(50));
    m.auth_failure(tokengate::reason::Reason::Expired);
    m.userinfo_cache(CacheResult::Miss);
    m.userinfo_request(UserinfoOutcome::Ok);
    m.introspection_cache(CacheResult::Hit);
    m.introspection_request(IntrospectionOutcome::Active);
    m.dpop_proof(DpopOutcome::NonceRequired);
    m.config_reload(true);
    m.shared_store_error(SharedStoreOp::CacheGet);
    m.span_dropped(2);
    m
}

/// What a scrape holds, family by family, read with prometheus-parse.
struct Parsed {
    /// Family name (as in `# TYPE`) → type.
    types: BTreeMap<String, SampleType>,
    /// Family name → `# HELP` text.
    help: BTreeMap<String, String>,
    /// Family name → the label-name sets of its samples (`le` left out).
    label_names: BTreeMap<String, BTreeSet<BTreeSet<String>>>,
    /// Label name → every value it takes anywhere.
    label_values: BTreeMap<String, BTreeSet<String>>,
}

fn parse(text: &str) -> Parsed {
    let mut types = BTreeMap::new();
    let mut help = BTreeMap::new();
    // The family whose `# TYPE` came last: every sample line must belong to it, since a
    // family's lines have to be contiguous.
    let mut current: Option<(String, SampleType)> = None;
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Doc { metric_name, doc } => {
                help.insert(metric_name.to_owned(), doc.to_owned());
            }
            LineInfo::Type {
                metric_name,
                metric_alias,
                sample_type,
            } => {
                let family = metric_alias.unwrap_or(metric_name);
                assert!(help.contains_key(&family), "no # HELP before {family}");
                assert!(
                    types.insert(family.clone(), sample_type).is_none(),
                    "{family} declared twice"
                );
                current = Some((family, sample_type));
            }
            LineInfo::Sample { metric_name, .. } => {
                let (family, kind) = current.as_ref().expect("a sample before any # TYPE");
                let fits = match kind {
                    SampleType::Histogram => ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| metric_name == format!("{family}{suffix}")),
                    _ => metric_name == family,
                };
                assert!(fits, "{metric_name} outside its family ({family})");
            }
            LineInfo::Empty => {}
            LineInfo::Ignored => panic!("a line no parser understands: {line:?}"),
        }
    }

    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let mut label_names: BTreeMap<String, BTreeSet<BTreeSet<String>>> = BTreeMap::new();
    let mut label_values: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for sample in &scrape.samples {
        let family = if types.contains_key(&sample.metric) {
            sample.metric.clone()
        } else {
            // `_sum` and `_count` of a histogram.
            let base = sample
                .metric
                .strip_suffix("_sum")
                .or_else(|| sample.metric.strip_suffix("_count"))
                .unwrap_or_else(|| panic!("{} has no # TYPE", sample.metric));
            assert_eq!(types.get(base), Some(&SampleType::Histogram));
            base.to_owned()
        };
        label_names
            .entry(family)
            .or_default()
            .insert(sample.labels.keys().cloned().collect());
        for (k, v) in sample.labels.iter() {
            label_values.entry(k.clone()).or_default().insert(v.clone());
        }
    }
    Parsed {
        types,
        help,
        label_names,
        label_values,
    }
}

fn set(values: &[&str]) -> BTreeSet<String> {
    values.iter().map(|v| v.to_string()).collect()
}

#[test]
fn content_type_is_prometheus_text_0_0_4() {
    assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
}

#[test]
fn every_spec_metric_has_its_exact_name_type_and_label_names() {
    let parsed = parse(
        &busy(MetricsOptions {
            spans_dropped: true,
            shared_store: true,
        })
        .encode(),
    );
    let ours: BTreeSet<&String> = parsed
        .types
        .keys()
        .filter(|name| name.starts_with("tokengate_"))
        .collect();
    let spec: BTreeSet<String> = SPEC.iter().map(|(n, _, _)| n.to_string()).collect();
    assert_eq!(ours, spec.iter().collect::<BTreeSet<_>>());
    for (name, kind, labels) in SPEC {
        assert_eq!(parsed.types.get(*name), Some(kind), "type of {name}");
        assert!(!parsed.help[*name].is_empty(), "help of {name}");
        let seen = parsed
            .label_names
            .get(*name)
            .unwrap_or_else(|| panic!("{name} has no sample"));
        assert_eq!(
            seen,
            &BTreeSet::from([set(labels)]),
            "label names of {name}"
        );
    }
}

#[test]
fn optional_families_stay_out_unless_enabled() {
    let parsed = parse(&busy(MetricsOptions::default()).encode());
    for (name, _, _) in SPEC {
        assert_eq!(
            parsed.types.contains_key(*name),
            !OPTIONAL.contains(name),
            "{name}"
        );
    }
}

#[test]
fn label_values_are_configured_ids_and_fixed_sets_only() {
    let parsed = parse(
        &busy(MetricsOptions {
            spans_dropped: true,
            shared_store: true,
        })
        .encode(),
    );
    let values = |label: &str| parsed.label_values[label].clone();
    assert_eq!(values("route"), set(&["-", "health", "orders"]));
    assert_eq!(values("issuer"), set(&["corp"]));
    assert_eq!(values("status"), set(&["200", "404", "503"]));
    assert_eq!(values("result"), set(&["hit", "miss", "coalesced"]));
    assert_eq!(
        values("outcome"),
        set(&[
            // userinfo, jwks and reloads, introspection, DPoP
            "ok",
            "unauthorized",
            "error",
            "active",
            "inactive",
            "invalid",
            "replayed",
            "nonce_required",
        ])
    );
    assert_eq!(
        values("op"),
        set(&["connect", "replay", "nonce", "cache_get", "cache_put"])
    );
    let reasons = values("reason");
    let spec_minimum = set(&[
        "missing_token",
        "malformed",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "unknown_kid",
        "wrong_issuer",
        "wrong_audience",
        "inactive",
        "invalid_dpop_proof",
        "insufficient_scope",
        "access_denied",
        "unavailable",
    ]);
    assert!(reasons.is_superset(&spec_minimum), "{reasons:?}");
    assert_eq!(reasons.len(), 20, "{reasons:?}");
    let known: BTreeSet<&str> = [
        "route", "issuer", "status", "result", "outcome", "op", "reason",
    ]
    .into();
    for label in parsed.label_values.keys() {
        assert!(known.contains(label.as_str()), "unexpected label {label}");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn process_metrics_follow_the_client_library_convention() {
    let parsed = parse(&Metrics::new(MetricsOptions::default()).encode());
    for (name, kind) in PROCESS {
        assert_eq!(parsed.types.get(*name), Some(kind), "{name}");
        assert_eq!(
            parsed.label_names.get(*name),
            Some(&BTreeSet::from([BTreeSet::new()])),
            "{name} has labels"
        );
    }
}

#[test]
fn promtool_check_metrics_accepts_a_scrape() {
    let m = busy(MetricsOptions {
        spans_dropped: true,
        shared_store: true,
    });
    // Route ids are free text in the configuration: quotes and backslashes must be escaped.
    m.route("odd \"id\" \\ here")
        .request(418, Duration::from_millis(1));
    let text = m.encode();
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!(
                "NOTE: promtool not runnable ({e}); skipping this check \
                 (apt-get install prometheus provides it)"
            );
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool refused the scrape:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool's linter prints problems and still exits 0 for some of them.
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool lint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
