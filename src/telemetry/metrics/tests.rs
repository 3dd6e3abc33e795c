//! Unit tests of the registry: exact values after known recordings, bounded series, reload
//! survival, concurrency, histogram layout, the fixed label sets and the `/proc` readers. The
//! output is read back with the `prometheus-parse` crate, never grepped. The format as a whole
//! (SPEC §7 table, promtool) is `tests/metrics_format.rs`.

use std::collections::{BTreeMap, BTreeSet};

use std::time::Duration;

use prometheus_parse::{Scrape, Value};

use super::histogram::bucket_nanos;
use super::process::{
    parse_boot_time, parse_max_open_files, parse_stat, status_bytes, ProcessCollector, Stat,
};
use super::route::slot_of;
use super::*;

fn scrape(metrics: &Metrics) -> Scrape {
    let text = metrics.encode();
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("a parseable scrape")
}

fn labels_of(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn sample_labels(sample: &prometheus_parse::Sample) -> BTreeMap<String, String> {
    sample
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The value of the counter, gauge or untyped sample `name{labels}` (labels matched exactly).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want = labels_of(labels);
    let matching: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && sample_labels(x) == want)
        .filter_map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
        .collect();
    assert!(matching.len() <= 1, "{name}{want:?} written twice");
    matching.first().copied()
}

/// `(le, cumulative count)` of histogram `name{route}`, in output order.
fn buckets(s: &Scrape, name: &str, route: &str) -> Vec<(f64, f64)> {
    let want = labels_of(&[("route", route)]);
    let found = s
        .samples
        .iter()
        .find(|x| x.metric == name && sample_labels(x) == want)
        .unwrap_or_else(|| panic!("no {name}{{route={route:?}}}"));
    match &found.value {
        Value::Histogram(h) => h.iter().map(|b| (b.less_than, b.count)).collect(),
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

/// Every series (name and labels, `le` left out) in a scrape.
fn series(s: &Scrape) -> BTreeSet<String> {
    s.samples
        .iter()
        .map(|x| format!("{}{{{}}}", x.metric, x.labels))
        .collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A small deterministic generator, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn recorded_values_appear_exactly() {
    let m = Metrics::new(MetricsOptions {
        spans_dropped: true,
        shared_store: true,
    });
    let orders = m.route("orders");
    orders.request(200, ms(3));
    orders.request(200, ms(4));
    orders.request(404, ms(1));
    orders.upstream(ms(2));
    m.no_route().request(404, Duration::from_micros(200));
    m.auth_failure(Reason::Expired);
    m.auth_failure(Reason::Expired);
    m.auth_failure(Reason::UseDpopNonce);
    m.userinfo_cache(CacheResult::Hit);
    m.userinfo_cache(CacheResult::Coalesced);
    m.userinfo_request(UserinfoOutcome::Unauthorized);
    m.issuer("corp").jwks_refresh(true);
    m.issuer("corp").jwks_refresh(false);
    m.issuer("corp").jwks_refresh(true);
    m.config_reload(false);
    let _conn = m.connection_opened();
    m.introspection_cache(CacheResult::Miss);
    m.introspection_request(IntrospectionOutcome::Inactive);
    m.dpop_proof(DpopOutcome::Replayed);
    m.shared_store_error(SharedStoreOp::Nonce);
    m.span_dropped(7);

    let s = scrape(&m);
    let requests = "tokengate_requests_total";
    assert_eq!(
        value(&s, requests, &[("route", "orders"), ("status", "200")]),
        Some(2.0)
    );
    assert_eq!(
        value(&s, requests, &[("route", "orders"), ("status", "404")]),
        Some(1.0)
    );
    assert_eq!(
        value(&s, requests, &[("route", "-"), ("status", "404")]),
        Some(1.0)
    );
    let fails = "tokengate_auth_failures_total";
    assert_eq!(value(&s, fails, &[("reason", "expired")]), Some(2.0));
    assert_eq!(value(&s, fails, &[("reason", "use_dpop_nonce")]), Some(1.0));
    assert_eq!(value(&s, fails, &[("reason", "malformed")]), Some(0.0));
    assert_eq!(
        value(
            &s,
            "tokengate_request_duration_seconds_count",
            &[("route", "orders")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &s,
            "tokengate_request_duration_seconds_sum",
            &[("route", "orders")]
        ),
        Some(0.008)
    );
    assert_eq!(
        value(
            &s,
            "tokengate_upstream_duration_seconds_count",
            &[("route", "orders")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "tokengate_upstream_duration_seconds_sum",
            &[("route", "orders")]
        ),
        Some(0.002)
    );
    let cache = "tokengate_userinfo_cache_total";
    assert_eq!(value(&s, cache, &[("result", "hit")]), Some(1.0));
    assert_eq!(value(&s, cache, &[("result", "miss")]), Some(0.0));
    assert_eq!(value(&s, cache, &[("result", "coalesced")]), Some(1.0));
    let calls = "tokengate_userinfo_requests_total";
    assert_eq!(value(&s, calls, &[("outcome", "unauthorized")]), Some(1.0));
    assert_eq!(value(&s, calls, &[("outcome", "ok")]), Some(0.0));
    let jwks = "tokengate_jwks_refresh_total";
    assert_eq!(
        value(&s, jwks, &[("issuer", "corp"), ("outcome", "ok")]),
        Some(2.0)
    );
    assert_eq!(
        value(&s, jwks, &[("issuer", "corp"), ("outcome", "error")]),
        Some(1.0)
    );
    let reloads = "tokengate_config_reloads_total";
    assert_eq!(value(&s, reloads, &[("outcome", "error")]), Some(1.0));
    assert_eq!(value(&s, reloads, &[("outcome", "ok")]), Some(0.0));
    assert_eq!(value(&s, "tokengate_open_connections", &[]), Some(1.0));
    assert_eq!(
        value(
            &s,
            "tokengate_introspection_cache_total",
            &[("result", "miss")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "tokengate_introspection_requests_total",
            &[("outcome", "inactive")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &s,
            "tokengate_dpop_proofs_total",
            &[("outcome", "replayed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&s, "tokengate_dpop_proofs_total", &[("outcome", "ok")]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &s,
            "tokengate_shared_store_errors_total",
            &[("op", "nonce")]
        ),
        Some(1.0)
    );
    assert_eq!(value(&s, "tokengate_spans_dropped_total", &[]), Some(7.0));
}

#[test]
fn fixed_label_sets_are_written_with_zero_before_any_event() {
    let m = Metrics::new(MetricsOptions::default());
    m.issuer("corp");
    let s = scrape(&m);
    fn all_zero<L: FixedLabel>(s: &Scrape, name: &str) {
        for &v in L::ALL {
            assert_eq!(
                value(s, name, &[(L::KEY, v.label())]),
                Some(0.0),
                "{name}{{{}={:?}}}",
                L::KEY,
                v.label()
            );
        }
    }
    all_zero::<Reason>(&s, "tokengate_auth_failures_total");
    all_zero::<CacheResult>(&s, "tokengate_userinfo_cache_total");
    all_zero::<UserinfoOutcome>(&s, "tokengate_userinfo_requests_total");
    all_zero::<Outcome>(&s, "tokengate_config_reloads_total");
    all_zero::<CacheResult>(&s, "tokengate_introspection_cache_total");
    all_zero::<IntrospectionOutcome>(&s, "tokengate_introspection_requests_total");
    all_zero::<DpopOutcome>(&s, "tokengate_dpop_proofs_total");
    for outcome in ["ok", "error"] {
        assert_eq!(
            value(
                &s,
                "tokengate_jwks_refresh_total",
                &[("issuer", "corp"), ("outcome", outcome)]
            ),
            Some(0.0)
        );
    }
    assert_eq!(value(&s, "tokengate_open_connections", &[]), Some(0.0));
}

#[test]
fn a_route_handle_fetched_again_after_a_reload_keeps_its_counts() {
    let m = Metrics::new(MetricsOptions::default());
    let first = m.route("orders");
    first.request(201, ms(5));
    first.upstream(ms(4));
    // A reload compiles a new route table and asks for the handles again.
    let second = m.route("orders");
    assert!(Arc::ptr_eq(&first, &second));
    second.request(201, ms(5));
    drop(first);
    let third = m.route("orders");
    third.request(201, ms(5));
    m.issuer("corp").jwks_refresh(true);
    m.issuer("corp").jwks_refresh(true);

    let s = scrape(&m);
    assert_eq!(
        value(
            &s,
            "tokengate_requests_total",
            &[("route", "orders"), ("status", "201")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &s,
            "tokengate_request_duration_seconds_count",
            &[("route", "orders")]
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &s,
            "tokengate_jwks_refresh_total",
            &[("issuer", "corp"), ("outcome", "ok")]
        ),
        Some(2.0)
    );
    assert_eq!(m.no_route().id(), NO_ROUTE);
    assert!(Arc::ptr_eq(&m.no_route(), &m.route(NO_ROUTE)));
}

#[test]
fn arbitrary_statuses_add_no_series_beyond_the_status_values() {
    let m = Metrics::new(MetricsOptions::default());
    let routed = m.route("orders");
    let unrouted = m.no_route();
    let before = series(&scrape(&m));

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut seen: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for i in 0..10_000 {
        let raw = rng.next();
        // Half in the valid range, half anywhere in u16 (0, 600..=65535 included).
        let status = if raw & 1 == 0 {
            100 + (raw >> 1) as u16 % 500
        } else {
            (raw >> 1) as u16
        };
        let handle = if i % 2 == 0 { &routed } else { &unrouted };
        handle.request(status, Duration::from_nanos(raw >> 24));
        let label = if (100..=599).contains(&status) {
            status.to_string()
        } else {
            "other".to_owned()
        };
        seen.entry(if i % 2 == 0 { "orders" } else { "-" })
            .or_default()
            .insert(label);
    }

    let s = scrape(&m);
    let after = series(&s);
    let added: BTreeSet<&String> = after.difference(&before).collect();
    let expected: BTreeSet<String> = seen
        .iter()
        .flat_map(|(route, statuses)| {
            statuses.iter().map(move |status| {
                format!("tokengate_requests_total{{route=\"{route}\",status=\"{status}\"}}")
            })
        })
        .collect();
    assert_eq!(added, expected.iter().collect::<BTreeSet<_>>());
    assert!(before.is_subset(&after), "a series went away");
    let total: f64 = s
        .samples
        .iter()
        .filter(|x| x.metric == "tokengate_requests_total")
        .map(|x| match x.value {
            Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(total, 10_000.0);
}

#[test]
fn concurrent_recording_sums_exactly() {
    const THREADS: u64 = 8;
    const EACH: u64 = 5_000;
    let m = Metrics::new(MetricsOptions::default());
    let route = m.route("orders");
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let route = &route;
            let m = &m;
            scope.spawn(move || {
                let _conn = m.connection_opened();
                for i in 0..EACH {
                    route.request(if i % 2 == 0 { 200 } else { 503 }, ms(t + 1));
                    route.upstream(Duration::from_micros(10));
                    m.auth_failure(Reason::BadSignature);
                    m.dpop_proof(DpopOutcome::Ok);
                }
            });
        }
    });
    let s = scrape(&m);
    let n = (THREADS * EACH) as f64;
    for status in ["200", "503"] {
        assert_eq!(
            value(
                &s,
                "tokengate_requests_total",
                &[("route", "orders"), ("status", status)]
            ),
            Some(n / 2.0)
        );
    }
    assert_eq!(
        value(
            &s,
            "tokengate_request_duration_seconds_count",
            &[("route", "orders")]
        ),
        Some(n)
    );
    // Each thread t observed EACH requests of (t + 1) ms.
    let sum_ms: u64 = (0..THREADS).map(|t| (t + 1) * EACH).sum();
    assert_eq!(
        value(
            &s,
            "tokengate_request_duration_seconds_sum",
            &[("route", "orders")]
        ),
        Some(sum_ms as f64 / 1e3)
    );
    assert_eq!(
        value(
            &s,
            "tokengate_upstream_duration_seconds_sum",
            &[("route", "orders")]
        ),
        Some(n * 10.0 / 1e6)
    );
    assert_eq!(
        value(
            &s,
            "tokengate_auth_failures_total",
            &[("reason", "bad_signature")]
        ),
        Some(n)
    );
    assert_eq!(
        value(&s, "tokengate_dpop_proofs_total", &[("outcome", "ok")]),
        Some(n)
    );
    assert_eq!(value(&s, "tokengate_open_connections", &[]), Some(0.0));
}

#[test]
fn histogram_buckets_are_cumulative_with_count_and_sum() {
    let m = Metrics::new(MetricsOptions::default());
    let route = m.route("orders");
    // 0.3 ms, 0.7 ms, 20 ms, 20 ms, 3 s, 45 s.
    for d in [
        Duration::from_micros(300),
        Duration::from_micros(700),
        ms(20),
        ms(20),
        ms(3_000),
        ms(45_000),
    ] {
        route.request(200, d);
    }
    let s = scrape(&m);
    let got = buckets(&s, "tokengate_request_duration_seconds", "orders");
    let bounds: Vec<f64> = BUCKETS_SECONDS
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .collect();
    let expected_cumulative = [
        1.0, 2.0, 2.0, 2.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 5.0, 5.0, 5.0, 6.0,
    ];
    let expected: Vec<(f64, f64)> = bounds.into_iter().zip(expected_cumulative).collect();
    assert_eq!(got, expected);
    assert_eq!(
        value(
            &s,
            "tokengate_request_duration_seconds_count",
            &[("route", "orders")]
        ),
        Some(6.0)
    );
    assert_eq!(
        value(
            &s,
            "tokengate_request_duration_seconds_sum",
            &[("route", "orders")]
        ),
        Some(48.041)
    );
    // Nothing observed upstream: every bucket 0, still written.
    let upstream = buckets(&s, "tokengate_upstream_duration_seconds", "orders");
    assert_eq!(upstream.len(), 16);
    assert!(upstream.iter().all(|&(_, n)| n == 0.0));
}

#[test]
fn bucket_bounds_are_inclusive() {
    let m = Metrics::new(MetricsOptions::default());
    let route = m.route("r");
    route.request(200, Duration::from_micros(500));
    route.request(200, Duration::from_nanos(500_001));
    route.request(200, Duration::from_secs(30));
    route.request(200, Duration::from_nanos(30_000_000_001));
    route.request(200, Duration::MAX);
    let s = scrape(&m);
    let got = buckets(&s, "tokengate_request_duration_seconds", "r");
    let at = |le: f64| got.iter().find(|&&(b, _)| b == le).map(|&(_, n)| n);
    assert_eq!(at(0.0005), Some(1.0));
    assert_eq!(at(0.001), Some(2.0));
    assert_eq!(at(10.0), Some(2.0));
    assert_eq!(at(30.0), Some(3.0));
    assert_eq!(at(f64::INFINITY), Some(5.0));
}

#[test]
fn bucket_bounds_in_nanoseconds_match_the_published_seconds() {
    let nanos = bucket_nanos();
    assert_eq!(nanos.len(), BUCKETS_SECONDS.len());
    for (n, s) in nanos.iter().zip(BUCKETS_SECONDS) {
        assert_eq!(*n as f64 / 1e9, s);
    }
    assert!(nanos.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn every_status_has_its_slot_and_the_rest_share_one() {
    assert_eq!(slot_of(100), 0);
    assert_eq!(slot_of(200), 100);
    assert_eq!(slot_of(599), 499);
    for outside in [0, 1, 99, 600, 999, u16::MAX] {
        assert_eq!(slot_of(outside), 500, "{outside}");
    }
}

#[test]
fn reasons_that_are_not_auth_failures_add_nothing() {
    let m = Metrics::new(MetricsOptions::default());
    let before = scrape(&m);
    for reason in [Reason::NoRoute, Reason::BadGateway, Reason::DpopBoundToken] {
        m.auth_failure(reason);
    }
    let after = scrape(&m);
    assert_eq!(series(&after), series(&before));
    for reason in Reason::AUTH_FAILURES {
        assert_eq!(
            value(
                &after,
                "tokengate_auth_failures_total",
                &[("reason", reason.as_str())]
            ),
            Some(0.0),
            "{reason}"
        );
    }
}

#[test]
fn fixed_labels_round_trip_and_index_their_own_slot() {
    fn check<L: FixedLabel + PartialEq + std::fmt::Debug>() {
        let mut labels = BTreeSet::new();
        for (i, &v) in L::ALL.iter().enumerate() {
            assert_eq!(v.index(), i);
            assert_eq!(L::from_label(v.label()), Some(v));
            assert!(labels.insert(v.label()), "{} twice", v.label());
        }
        assert_eq!(L::from_label("Hit"), None);
        assert_eq!(L::from_label(""), None);
    }
    check::<Reason>();
    check::<CacheResult>();
    check::<UserinfoOutcome>();
    check::<IntrospectionOutcome>();
    check::<DpopOutcome>();
    check::<Outcome>();
    check::<SharedStoreOp>();
    assert_eq!(Reason::ALL.len(), 20);
}

#[test]
fn optional_families_are_written_only_when_enabled() {
    let names = |m: &Metrics| -> BTreeSet<String> {
        scrape(m).docs.keys().cloned().collect::<BTreeSet<_>>()
    };
    let off = Metrics::new(MetricsOptions::default());
    off.span_dropped(3);
    off.shared_store_error(SharedStoreOp::Replay);
    let off = names(&off);
    assert!(!off.contains("tokengate_spans_dropped_total"));
    assert!(!off.contains("tokengate_shared_store_errors_total"));

    let spans = names(&Metrics::new(MetricsOptions {
        spans_dropped: true,
        shared_store: false,
    }));
    assert!(spans.contains("tokengate_spans_dropped_total"));
    assert!(!spans.contains("tokengate_shared_store_errors_total"));

    let shared = names(&Metrics::new(MetricsOptions {
        spans_dropped: false,
        shared_store: true,
    }));
    assert!(shared.contains("tokengate_shared_store_errors_total"));
    assert!(!shared.contains("tokengate_spans_dropped_total"));
}

#[test]
fn open_connections_follow_the_guards() {
    let m = Metrics::new(MetricsOptions::default());
    let gauge = || value(&scrape(&m), "tokengate_open_connections", &[]);
    let a = m.connection_opened();
    let b = m.connection_opened();
    assert_eq!(gauge(), Some(2.0));
    drop(a);
    assert_eq!(gauge(), Some(1.0));
    drop(b);
    assert_eq!(gauge(), Some(0.0));
}

#[cfg(target_os = "linux")]
#[test]
fn process_metrics_are_present_and_plausible() {
    let s = scrape(&Metrics::new(MetricsOptions::default()));
    let get = |name: &str| value(&s, name, &[]).unwrap_or_else(|| panic!("no {name}"));
    let rss = get("process_resident_memory_bytes");
    let vsz = get("process_virtual_memory_bytes");
    let fds = get("process_open_fds");
    let max_fds = get("process_max_fds");
    let cpu = get("process_cpu_seconds_total");
    let start = get("process_start_time_seconds");
    assert!(rss > 0.0, "rss {rss}");
    assert!(vsz >= rss, "vsz {vsz} < rss {rss}");
    // stdin/stdout/stderr and the /proc/self/fd handle at least.
    assert!(fds >= 3.0, "fds {fds}");
    assert!(max_fds >= fds, "max {max_fds} < open {fds}");
    assert!(cpu >= 0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // This test binary started moments ago; `btime` is whole seconds and the clock may have
    // been stepped since boot, hence the slack.
    assert!(
        start <= now + 2.0 && start > now - 86_400.0,
        "start {start}, now {now}"
    );
    let doc = |name: &str| s.docs.contains_key(name);
    assert!(doc("process_cpu_seconds_total") && doc("process_start_time_seconds"));

    let stats = ProcessCollector::default().read();
    assert!(stats.cpu_seconds.is_some() && stats.start_time_seconds.is_some());
}

#[test]
fn stat_fields_are_counted_after_the_last_parenthesis() {
    // A command name with spaces and a ')' of its own (proc(5) allows both).
    let line = "4242 (tok gate) x) S 1 4242 4242 0 -1 4194560 1500 0 0 0 \
                731 152 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615 1 1 0 0 0 0 0";
    assert_eq!(
        parse_stat(line),
        Some(Stat {
            user_ticks: 731,
            system_ticks: 152,
            start_ticks: 123456,
        })
    );
    assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
    assert_eq!(parse_stat("no parenthesis"), None);
}

#[test]
fn status_limits_and_boot_time_are_read_from_their_lines() {
    let status = "Name:\ttokengate\nVmPeak:\t  999 kB\nVmSize:\t  204800 kB\nVmRSS:\t    1536 kB\n";
    assert_eq!(status_bytes(status, "VmRSS:"), Some(1536 * 1024));
    assert_eq!(status_bytes(status, "VmSize:"), Some(204_800 * 1024));
    assert_eq!(status_bytes(status, "VmSwap:"), None);
    assert_eq!(status_bytes("VmRSS:\t12 pages\n", "VmRSS:"), None);

    let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                  Max open files            1024                 1048576              files     \n";
    assert_eq!(parse_max_open_files(limits), Some(1024));
    let unlimited = "Max open files            unlimited            unlimited            files\n";
    assert_eq!(parse_max_open_files(unlimited), None);

    assert_eq!(
        parse_boot_time("cpu  1 2 3\nbtime 1767225600\nprocesses 9\n"),
        Some(1_767_225_600)
    );
    assert_eq!(parse_boot_time("cpu  1 2 3\n"), None);
}
