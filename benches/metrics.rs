//! The request-path cost of `telemetry::metrics`: recording one finished request
//! (`tokengate_requests_total` + `tokengate_request_duration_seconds` +
//! `tokengate_upstream_duration_seconds`) through a route handle made ahead of time, from one
//! thread and from two threads on the same route (the worst case for contention: both hit the
//! same cache lines). Target: well under 100 ns per request single-threaded.
//!
//! For scale: an auth failure (the `&'static str` → slot match), a scrape of 50 routes, and the
//! same request recorded through prometheus-client's own `Family` + `Histogram` (read lock,
//! label hash, histogram mutex), which the registry avoids.
//!
//! `cargo bench --bench metrics` (add `-- --quick` for a shorter run).
#![allow(clippy::unwrap_used, clippy::expect_used)] // benches: a failed step panics with its message

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use tokengate::telemetry::metrics::{Metrics, MetricsOptions, RouteMetrics, BUCKETS_SECONDS};

const TOTAL: Duration = Duration::from_micros(1_830);
const UPSTREAM: Duration = Duration::from_micros(1_410);

fn record(route: &RouteMetrics) {
    route.request(black_box(200), black_box(TOTAL));
    route.upstream(black_box(UPSTREAM));
}

fn request(c: &mut Criterion) {
    let metrics = Metrics::new(MetricsOptions::default());
    let route = metrics.route("orders-write");
    let mut group = c.benchmark_group("request");

    group.bench_function("one_thread", |b| b.iter(|| record(&route)));

    group.bench_function("two_threads_same_route", |b| {
        b.iter_custom(|iters| {
            // Both threads record `iters` requests at once; the time is the wall time of the
            // pair, i.e. the per-request cost each thread sees under contention.
            let start = Arc::new(Barrier::new(2));
            let other = {
                let route = Arc::clone(&route);
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    for _ in 0..iters {
                        record(&route);
                    }
                })
            };
            start.wait();
            let t0 = Instant::now();
            for _ in 0..iters {
                record(&route);
            }
            other.join().unwrap();
            t0.elapsed()
        })
    });

    group.bench_function("auth_failure", |b| {
        b.iter(|| metrics.auth_failure(black_box(tokengate::reason::Reason::InsufficientScope)))
    });

    // Reference: the same three updates through prometheus-client's Family and Histogram.
    let requests = Family::<[(&'static str, &'static str); 2], Counter>::default();
    let durations =
        Family::<[(&'static str, &'static str); 1], Histogram>::new_with_constructor(|| {
            Histogram::new(BUCKETS_SECONDS)
        });
    let upstream =
        Family::<[(&'static str, &'static str); 1], Histogram>::new_with_constructor(|| {
            Histogram::new(BUCKETS_SECONDS)
        });
    group.bench_function("prometheus_client_family_reference", |b| {
        b.iter(|| {
            let route = black_box("orders-write");
            requests
                .get_or_create(&[("route", route), ("status", "200")])
                .inc();
            durations
                .get_or_create(&[("route", route)])
                .observe(TOTAL.as_secs_f64());
            upstream
                .get_or_create(&[("route", route)])
                .observe(UPSTREAM.as_secs_f64());
        })
    });
    group.finish();
}

fn scrape(c: &mut Criterion) {
    let metrics = Metrics::new(MetricsOptions::default());
    for i in 0..50 {
        let route = metrics.route(&format!("route-{i}"));
        for status in [200, 204, 401, 403, 404, 502] {
            route.request(status, TOTAL);
        }
        route.upstream(UPSTREAM);
    }
    metrics.issuer("corp");
    c.bench_function("scrape/50_routes", |b| {
        b.iter(|| black_box(metrics.encode()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = request, scrape
}
criterion_main!(benches);
