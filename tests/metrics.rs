//! SPEC §7 metrics end to end, black-box against the real binary: drive known traffic through
//! `tokengate serve`, scrape the admin `GET /metrics` before and after, and assert EXACT counter
//! deltas (parsed with `prometheus-parse`, never grepped): requests and both histograms per
//! route, every authentication failure reason a client can cause, the userinfo cache and calls,
//! a failed JWKS refresh, SIGHUP reloads (counted, and not resetting anything), open
//! connections, and that 10 000 unknown paths add no series. Every scrape is checked for the
//! Prometheus text content type, and the output never holds a path, a `sub` or a token;
//! `promtool check metrics` judges a real scrape when it is installed.
//!
//! Formats and names of the families alone are `tests/metrics_format.rs`'s; which names the
//! dashboard and alert rules may use is `tests/dashboard.rs`'s.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use prometheus_parse::Value;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use support::echo::Echo;
use support::gate::Gate;
use support::issuer::{now, JwksMode, MockIssuer, INTROSPECTION_CLIENT};
use support::{get, Answer};

/// What `GET /metrics` must answer with (SPEC §7: Prometheus text format).
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long an eventual effect (a reload, a closed socket) may take on a slow, shared machine.
const SLACK: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Scrapes
// ---------------------------------------------------------------------------------------------

/// One series: the name as written in the exposition (`…_bucket`, `…_sum`, `…_count` for a
/// histogram) and its labels (`le` included for a bucket).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
}

/// A parsed scrape: every series with its value, and the raw text.
struct Scrape {
    text: String,
    series: BTreeMap<Series, f64>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("prometheus-parse reads the scrape");
        let mut series = BTreeMap::new();
        for sample in parsed.samples {
            let labels: BTreeMap<String, String> = sample
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            match sample.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => {
                    let key = Series {
                        name: sample.metric,
                        labels,
                    };
                    assert!(series.insert(key.clone(), v).is_none(), "{key:?} twice");
                }
                Value::Histogram(buckets) => {
                    for bucket in buckets {
                        let mut labels = labels.clone();
                        let le = if bucket.less_than.is_infinite() {
                            "+Inf".to_owned()
                        } else {
                            bucket.less_than.to_string()
                        };
                        labels.insert("le".to_owned(), le);
                        let key = Series {
                            name: format!("{}_bucket", sample.metric),
                            labels,
                        };
                        assert!(
                            series.insert(key.clone(), bucket.count).is_none(),
                            "{key:?} twice"
                        );
                    }
                }
                Value::Summary(_) => panic!("tokengate exports no summary: {}", sample.metric),
            }
        }
        Scrape { text, series }
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let key = Series {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        self.series.get(&key).copied()
    }

    /// The value of a series that must exist.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in\n{}", self.text))
    }

    /// Every series key (name and labels), values left out.
    fn keys(&self) -> BTreeSet<Series> {
        self.series.keys().cloned().collect()
    }
}

/// `after - before` for one series; a series that does not exist counts as 0 (a
/// `tokengate_requests_total{route,status}` series appears with its first request).
fn delta(before: &Scrape, after: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    after.get(name, labels).unwrap_or(0.0) - before.get(name, labels).unwrap_or(0.0)
}

/// Every series of `name` whose value changed, keyed by its labels written `k=v,k=v` (sorted),
/// with the change: the whole effect of some traffic on one family, to compare with exactly
/// what was expected.
fn changes(before: &Scrape, after: &Scrape, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (series, value) in &after.series {
        if series.name != name {
            continue;
        }
        let change = value - before.series.get(series).copied().unwrap_or(0.0);
        if change != 0.0 {
            let key: Vec<String> = series
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.insert(key.join(","), change);
        }
    }
    out
}

fn expect(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// `GET /metrics` on the admin listener: 200, the Prometheus text content type, parsed.
async fn scrape(admin: SocketAddr) -> Scrape {
    let answer = get(&format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(answer.status, 200, "GET /metrics");
    assert_eq!(
        answer.header("content-type"),
        Some(PROMETHEUS_TEXT),
        "content type of /metrics"
    );
    Scrape::parse(String::from_utf8(answer.body.to_vec()).expect("UTF-8 scrape"))
}

/// Scrapes until `done` holds (bounded by [`SLACK`]), for effects that land a moment after the
/// action that causes them (a signal, a socket closed by the client).
async fn scrape_until(gate: &Gate, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let admin = gate.admin.expect("an admin listener");
    let deadline = Instant::now() + SLACK;
    loop {
        let s = scrape(admin).await;
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {SLACK:?}\n--- last scrape ---\n{}\n--- log ---\n{}",
            s.text,
            gate.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// None of `secrets` (paths, subjects, tokens, token parts) appears anywhere in the scrape.
fn assert_reveals_nothing(s: &Scrape, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !s.text.contains(secret),
            "/metrics contains {secret:?}:\n{}",
            s.text
        );
    }
}

/// `promtool check metrics` on a real scrape: accepted, and its linter has nothing to say.
/// Skipped with a note when `promtool` (Debian package `prometheus`) is not installed.
fn promtool_accepts(s: &Scrape) {
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
                "NOTE: promtool not runnable ({e}); skipping `promtool check metrics` \
                 (apt-get install prometheus provides it)"
            );
            return;
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(s.text.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {:?}\n{said}\n--- scrape ---\n{}",
        out.status,
        s.text
    );
}

// ---------------------------------------------------------------------------------------------
// Configurations and clients
// ---------------------------------------------------------------------------------------------

/// Main and admin listeners on ephemeral ports, the echo upstream, then `rest` (issuers,
/// `[userinfo]`, routes).
fn config(echo: &Echo, rest: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstream]\nurl = \"http://{}\"\ntimeout = \"10s\"\n\n{rest}",
        echo.addr
    )
}

const PUBLIC_ROUTE: &str =
    "[[route]]\nid = \"public\"\npath_prefix = \"/public\"\nauth = \"public\"\n";
const API_ROUTE: &str = "[[route]]\nid = \"api\"\npath_prefix = \"/api\"\n";
const ORDERS_ROUTE: &str =
    "[[route]]\nid = \"orders\"\npath_prefix = \"/orders\"\nscopes = [\"orders:write\"]\n";
const ADMIN_ROUTE: &str = "[[route]]\nid = \"admin\"\npath_prefix = \"/admin\"\n\n\
                           [[route.claims]]\nclaim = \"groups\"\ncontains = \"admin\"\n";
const ME_ROUTE: &str = "[[route]]\nid = \"me\"\npath_prefix = \"/me\"\nuserinfo = true\n";

async fn bearer(gate: &Gate, path: &str, token: &str) -> Answer {
    get(
        &gate.url(path),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// Asserts one answer's status, with the proxy's log for a failure.
fn status(answer: &Answer, want: u16, what: &str, gate: &Gate) {
    assert_eq!(
        answer.status,
        want,
        "{what}: {}\n--- log ---\n{}",
        String::from_utf8_lossy(&answer.body),
        gate.log()
    );
}

// ---------------------------------------------------------------------------------------------
// Requests and durations
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn answers_on_two_routes_count_in_requests_and_both_histograms() {
    let (echo, issuer) = (Echo::start().await, MockIssuer::start().await);
    let rest = format!(
        "{}\n{PUBLIC_ROUTE}\n{API_ROUTE}",
        issuer.config_toml("corp", &["api"])
    );
    let gate = Gate::start_ready(&config(&echo, &rest)).await;
    let admin = gate.admin.unwrap();
    let token = issuer.token("ES256", json!({}));

    let before = scrape(admin).await;
    for i in 0..3 {
        status(
            &get(&gate.url(&format!("/public/{i}")), &[]).await,
            200,
            "public",
            &gate,
        );
    }
    for i in 0..2 {
        status(
            &bearer(&gate, &format!("/api/{i}"), &token).await,
            200,
            "api",
            &gate,
        );
    }
    let after = scrape(admin).await;

    assert_eq!(
        changes(&before, &after, "tokengate_requests_total"),
        expect(&[
            ("route=api,status=200", 2.0),
            ("route=public,status=200", 3.0)
        ])
    );
    for histogram in [
        "tokengate_request_duration_seconds",
        "tokengate_upstream_duration_seconds",
    ] {
        assert_eq!(
            changes(&before, &after, &format!("{histogram}_count")),
            expect(&[("route=api", 2.0), ("route=public", 3.0)]),
            "{histogram}_count"
        );
        // Every observation lands in the +Inf bucket, and took some time.
        for (route, n) in [("api", 2.0), ("public", 3.0)] {
            let inf = [("le", "+Inf"), ("route", route)];
            assert_eq!(
                delta(&before, &after, &format!("{histogram}_bucket"), &inf),
                n
            );
            let sum = delta(
                &before,
                &after,
                &format!("{histogram}_sum"),
                &[("route", route)],
            );
            assert!(sum > 0.0, "{histogram}_sum of {route} did not grow");
        }
    }
    // Nothing else was refused or counted.
    assert!(changes(&before, &after, "tokengate_auth_failures_total").is_empty());
    assert_reveals_nothing(&after, &[&token, "/public/", "/api/", "alice"]);
}

// ---------------------------------------------------------------------------------------------
// Authentication failures
// ---------------------------------------------------------------------------------------------

/// A JWT whose payload is not JSON: three parts, so it is parsed as a JWT, and refused.
const MALFORMED: &str = "eyJhbGciOiJFUzI1NiJ9.bm90LWpzb24.c2lnbmF0dXJl";

/// An opaque token introspection calls inactive (the mock answers `active: false` for tokens
/// it was not told about).
const OPAQUE: &str = "opaque-metrics-token-f00dfeed";

#[tokio::test(flavor = "multi_thread")]
async fn every_rejection_reason_counts_once_under_its_own_label() {
    let echo = Echo::start().await;
    let (corp, down) = (MockIssuer::start().await, MockIssuer::start().await);
    // Never reachable: its keys never load, so its tokens get 503 `unavailable`.
    down.set_down(true);
    let (id, secret) = INTROSPECTION_CLIENT;
    let rest = format!(
        "{}[issuer.introspection]\nclient_id = {id:?}\nclient_secret = {secret:?}\n\n{}\n\
         {API_ROUTE}\n{ORDERS_ROUTE}\n{ADMIN_ROUTE}",
        corp.config_toml("corp", &["api"]),
        down.config_toml("down", &["api"]),
    );
    let gate = Gate::start(&config(&echo, &rest), &[]);
    let admin = gate.admin.unwrap();
    // Ready except for the issuer that is down.
    let readyz = format!("http://{admin}/readyz");
    let deadline = Instant::now() + SLACK;
    while get(&readyz, &[]).await.json()["missing"] != json!(["down"]) {
        assert!(
            Instant::now() < deadline,
            "corp never loaded\n{}",
            gate.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let sub = "metrics-sub-7f3a9c";
    let now = now();
    let good = corp.token("ES256", json!({"sub": sub}));
    let other = corp.token("ES256", json!({"sub": "someone-else"}));
    let mut parts: Vec<&str> = good.split('.').collect();
    let foreign_signature = other.rsplit('.').next().unwrap();
    parts[2] = foreign_signature;
    let bad_signature = parts.join(".");
    let expired = corp.token(
        "ES256",
        json!({"sub": sub, "iat": now - 7200, "exp": now - 3600}),
    );
    let not_yet = corp.token("ES256", json!({"sub": sub, "nbf": now + 3600}));
    let unknown_kid = corp.token_with_header("ES256", json!({"kid": "no-such-kid"}), json!({}));
    let wrong_issuer = corp.token("ES256", json!({"iss": "https://elsewhere.example"}));
    let wrong_audience = corp.token("ES256", json!({"aud": "someone-else"}));
    let dpop_bound = corp.token(
        "ES256",
        json!({"cnf": {"jkt": "bm90LWEtcmVhbC10aHVtYnByaW50"}}),
    );
    let read_only = corp.token("ES256", json!({"scope": "orders:read"}));
    let no_admin = corp.token("ES256", json!({"groups": ["users"]}));
    let from_down = down.token("ES256", json!({}));

    let before = scrape(admin).await;
    let path = "/api/private-path-91c2";
    status(&get(&gate.url(path), &[]).await, 401, "no token", &gate);
    for (token, what) in [
        (MALFORMED, "malformed"),
        (bad_signature.as_str(), "bad signature"),
        (expired.as_str(), "expired"),
        (not_yet.as_str(), "not yet valid"),
        (unknown_kid.as_str(), "unknown kid"),
        (wrong_issuer.as_str(), "wrong issuer"),
        (wrong_audience.as_str(), "wrong audience"),
        (OPAQUE, "inactive"),
    ] {
        status(&bearer(&gate, path, token).await, 401, what, &gate);
    }
    // A DPoP-bound token under the DPoP scheme without a proof.
    let answer = get(
        &gate.url(path),
        &[("authorization", &format!("DPoP {dpop_bound}"))],
    )
    .await;
    status(&answer, 401, "DPoP without a proof", &gate);
    status(
        &bearer(&gate, "/orders/1", &read_only).await,
        403,
        "scope",
        &gate,
    );
    status(
        &bearer(&gate, "/admin/1", &no_admin).await,
        403,
        "claim",
        &gate,
    );
    status(
        &bearer(&gate, path, &from_down).await,
        503,
        "issuer down",
        &gate,
    );
    status(&bearer(&gate, path, &good).await, 200, "good", &gate);
    let after = scrape(admin).await;

    assert_eq!(
        changes(&before, &after, "tokengate_auth_failures_total"),
        expect(&[
            ("reason=access_denied", 1.0),
            ("reason=bad_signature", 1.0),
            ("reason=expired", 1.0),
            ("reason=inactive", 1.0),
            ("reason=insufficient_scope", 1.0),
            ("reason=invalid_dpop_proof", 1.0),
            ("reason=malformed", 1.0),
            ("reason=missing_token", 1.0),
            ("reason=not_yet_valid", 1.0),
            ("reason=unavailable", 1.0),
            ("reason=unknown_kid", 1.0),
            ("reason=wrong_audience", 1.0),
            ("reason=wrong_issuer", 1.0),
        ])
    );
    assert_eq!(
        changes(&before, &after, "tokengate_requests_total"),
        expect(&[
            ("route=admin,status=403", 1.0),
            ("route=api,status=200", 1.0),
            ("route=api,status=401", 10.0),
            ("route=api,status=503", 1.0),
            ("route=orders,status=403", 1.0),
        ])
    );
    // The opaque token: one introspection call, answered inactive; the proof: one refusal.
    assert_eq!(
        changes(&before, &after, "tokengate_introspection_requests_total"),
        expect(&[("outcome=inactive", 1.0)])
    );
    assert_eq!(
        changes(&before, &after, "tokengate_introspection_cache_total"),
        expect(&[("result=miss", 1.0)])
    );
    assert_eq!(
        changes(&before, &after, "tokengate_dpop_proofs_total"),
        expect(&[("outcome=invalid", 1.0)])
    );

    let signature = good.rsplit('.').next().unwrap();
    assert_reveals_nothing(
        &after,
        &[
            sub,
            "someone-else",
            &good,
            signature,
            &bad_signature,
            MALFORMED,
            OPAQUE,
            &dpop_bound,
            "private-path",
            "elsewhere.example",
        ],
    );
    promtool_accepts(&after);
}

// ---------------------------------------------------------------------------------------------
// Userinfo
// ---------------------------------------------------------------------------------------------

/// A userinfo endpoint the test holds in its hand: every call waits while the gate is closed,
/// so concurrent requests are certain to find the first call still in flight. It answers by
/// the token's `sub`: `revoked-…` → 401, `broken-…` → 500, anything else → 200 `{"sub": …}`.
struct Userinfo {
    addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    open: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Drop for Userinfo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Userinfo {
    async fn start() -> Userinfo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let (open, gate) = watch::channel(true);
        let counted = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (calls, gate) = (counted.clone(), gate.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| answer_userinfo(req, calls.clone(), gate.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Userinfo {
            addr,
            calls,
            open,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/userinfo", self.addr)
    }

    fn hold(&self, held: bool) {
        self.open.send_replace(!held);
    }
}

async fn answer_userinfo(
    req: Request<Incoming>,
    calls: Arc<AtomicUsize>,
    mut open: watch::Receiver<bool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    calls.fetch_add(1, Ordering::SeqCst);
    let _ = open.wait_for(|open| *open).await;
    let sub = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| token.split('.').nth(1))
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .and_then(|claims| claims["sub"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let (status, body) = if sub.starts_with("revoked-") {
        (401, json!({"error": "invalid_token"}))
    } else if sub.starts_with("broken-") {
        (500, json!({"error": "server_error"}))
    } else {
        (200, json!({"sub": sub, "email": "user@example.com"}))
    };
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(response)
}

#[tokio::test(flavor = "multi_thread")]
async fn userinfo_counts_hits_misses_coalesced_waits_and_call_outcomes() {
    let (echo, issuer, userinfo) = (
        Echo::start().await,
        MockIssuer::start().await,
        Userinfo::start().await,
    );
    let rest = format!(
        "{}userinfo_endpoint = {:?}\n\n[userinfo]\non_error = \"deny\"\n\n{ME_ROUTE}",
        issuer.config_toml("corp", &["api"]),
        userinfo.url()
    );
    let gate = Gate::start_ready(&config(&echo, &rest)).await;
    let admin = gate.admin.unwrap();
    let alice = issuer.token("ES256", json!({"sub": "ui-alice-5d1e"}));
    let bob = issuer.token("ES256", json!({"sub": "ui-bob-08aa"}));
    let carol = issuer.token("ES256", json!({"sub": "revoked-carol-77b0"}));
    let dave = issuer.token("ES256", json!({"sub": "broken-dave-c3c3"}));

    let before = scrape(admin).await;
    // A miss that calls (ok), then a hit.
    status(
        &bearer(&gate, "/me", &alice).await,
        200,
        "alice, first",
        &gate,
    );
    status(
        &bearer(&gate, "/me", &alice).await,
        200,
        "alice, cached",
        &gate,
    );

    // Four at once while the call is held: one miss makes the call, three wait for it.
    userinfo.hold(true);
    let gate = Arc::new(gate);
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let (gate, bob) = (gate.clone(), bob.clone());
            tokio::spawn(async move { bearer(&gate, "/me", &bob).await.status })
        })
        .collect();
    let cache = |s: &Scrape, result: &str| {
        delta(
            &before,
            s,
            "tokengate_userinfo_cache_total",
            &[("result", result)],
        )
    };
    // Bob's one call has reached the endpoint (and waits there); the other three wait for it.
    scrape_until(&gate, "three requests wait for bob's one call", |s| {
        cache(s, "coalesced") == 3.0
            && cache(s, "miss") == 2.0
            && userinfo.calls.load(Ordering::SeqCst) == 2
    })
    .await;
    userinfo.hold(false);
    for request in waiting {
        assert_eq!(request.await.unwrap(), 200, "bob\n{}", gate.log());
    }

    // A 401 from the endpoint (remembered: the second is a hit), then a 500 (deny → 503).
    status(
        &bearer(&gate, "/me", &carol).await,
        401,
        "carol, first",
        &gate,
    );
    status(
        &bearer(&gate, "/me", &carol).await,
        401,
        "carol, remembered",
        &gate,
    );
    status(&bearer(&gate, "/me", &dave).await, 503, "dave", &gate);
    let after = scrape(admin).await;

    assert_eq!(
        changes(&before, &after, "tokengate_userinfo_cache_total"),
        expect(&[
            ("result=coalesced", 3.0),
            ("result=hit", 2.0),
            ("result=miss", 4.0)
        ])
    );
    assert_eq!(
        changes(&before, &after, "tokengate_userinfo_requests_total"),
        expect(&[
            ("outcome=error", 1.0),
            ("outcome=ok", 2.0),
            ("outcome=unauthorized", 1.0)
        ])
    );
    assert_eq!(
        userinfo.calls.load(Ordering::SeqCst),
        4,
        "calls the endpoint saw"
    );
    assert_eq!(
        changes(&before, &after, "tokengate_auth_failures_total"),
        expect(&[
            ("reason=unavailable", 1.0),
            ("reason=userinfo_rejected", 2.0)
        ])
    );
    assert_eq!(
        changes(&before, &after, "tokengate_requests_total"),
        expect(&[
            ("route=me,status=200", 6.0),
            ("route=me,status=401", 2.0),
            ("route=me,status=503", 1.0),
        ])
    );
    assert_reveals_nothing(
        &after,
        &[
            "ui-alice",
            "ui-bob",
            "revoked-carol",
            "broken-dave",
            &alice,
            &bob,
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Issuer keys
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_jwks_refresh_counts_as_an_error_of_its_issuer() {
    let (echo, issuer) = (Echo::start().await, MockIssuer::start().await);
    let rest = format!("{}\n{API_ROUTE}", issuer.config_toml("corp", &["api"]));
    let gate = Gate::start_ready(&config(&echo, &rest)).await;
    let admin = gate.admin.unwrap();
    let refresh = |outcome| [("issuer", "corp"), ("outcome", outcome)];

    let before = scrape(admin).await;
    // The first load, and nothing else yet (the periodic refresh is minutes away).
    assert_eq!(
        before.value("tokengate_jwks_refresh_total", &refresh("ok")),
        1.0
    );
    assert_eq!(
        before.value("tokengate_jwks_refresh_total", &refresh("error")),
        0.0
    );

    // An unknown kid asks for a refresh (the first load does not count against
    // jwks_min_refresh), and the JWKS endpoint now fails.
    issuer.set_jwks_mode(JwksMode::Status(500));
    let fetches = issuer.hits("/jwks");
    let token = issuer.token_with_header("ES256", json!({"kid": "rotated-away"}), json!({}));
    status(
        &bearer(&gate, "/api", &token).await,
        401,
        "unknown kid",
        &gate,
    );
    let after = scrape(admin).await;

    assert_eq!(
        issuer.hits("/jwks"),
        fetches + 1,
        "one refresh was attempted"
    );
    assert_eq!(
        changes(&before, &after, "tokengate_jwks_refresh_total"),
        expect(&[("issuer=corp,outcome=error", 1.0)])
    );
    assert_eq!(
        changes(&before, &after, "tokengate_auth_failures_total"),
        expect(&[("reason=unknown_kid", 1.0)])
    );
}

// ---------------------------------------------------------------------------------------------
// Reloads
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn reloads_are_counted_by_outcome_and_reset_no_counter() {
    let (echo, issuer) = (Echo::start().await, MockIssuer::start().await);
    let rest = format!(
        "{}\n{PUBLIC_ROUTE}\n{API_ROUTE}",
        issuer.config_toml("corp", &["api"])
    );
    let first = config(&echo, &rest);
    let gate = Gate::start_ready(&first).await;
    let admin = gate.admin.unwrap();
    let reloads =
        |s: &Scrape, outcome| s.value("tokengate_config_reloads_total", &[("outcome", outcome)]);
    for i in 0..3 {
        status(
            &get(&gate.url(&format!("/public/{i}")), &[]).await,
            200,
            "public",
            &gate,
        );
    }
    status(&get(&gate.url("/api"), &[]).await, 401, "no token", &gate);
    let start = scrape(admin).await;
    assert_eq!(
        (reloads(&start, "ok"), reloads(&start, "error")),
        (0.0, 0.0)
    );

    // A valid file (one more route): counted ok, and nothing restarts from zero.
    let file = gate.process.dir().unwrap().join("tokengate.toml");
    let second = format!(
        "{first}\n[[route]]\nid = \"extra\"\npath_prefix = \"/extra\"\nauth = \"public\"\n"
    );
    std::fs::write(&file, second).unwrap();
    gate.process.signal("HUP");
    let reloaded = scrape_until(&gate, "a counted reload", |s| reloads(s, "ok") == 1.0).await;
    assert_eq!(reloads(&reloaded, "error"), 0.0);
    status(
        &get(&gate.url("/extra"), &[]).await,
        200,
        "the new route",
        &gate,
    );
    for i in 0..2 {
        status(
            &get(&gate.url(&format!("/public/{i}")), &[]).await,
            200,
            "public",
            &gate,
        );
    }

    // An invalid file: counted error; the old configuration keeps serving and counting.
    std::fs::write(&file, "[server]\nlisten = 42\n").unwrap();
    gate.process.signal("HUP");
    scrape_until(&gate, "a refused reload", |s| reloads(s, "error") == 1.0).await;
    status(
        &get(&gate.url("/public/x"), &[]).await,
        200,
        "public",
        &gate,
    );
    let end = scrape(admin).await;

    assert_eq!((reloads(&end, "ok"), reloads(&end, "error")), (1.0, 1.0));
    assert_eq!(
        changes(&start, &end, "tokengate_config_reloads_total"),
        expect(&[("outcome=error", 1.0), ("outcome=ok", 1.0)])
    );
    let public = [("route", "public"), ("status", "200")];
    assert_eq!(end.value("tokengate_requests_total", &public), 6.0);
    assert_eq!(
        end.value(
            "tokengate_request_duration_seconds_count",
            &[("route", "public")]
        ),
        6.0
    );
    assert_eq!(
        end.value(
            "tokengate_requests_total",
            &[("route", "api"), ("status", "401")]
        ),
        1.0
    );
    assert_eq!(
        end.value(
            "tokengate_auth_failures_total",
            &[("reason", "missing_token")]
        ),
        1.0
    );
    assert_eq!(
        end.value(
            "tokengate_requests_total",
            &[("route", "extra"), ("status", "200")]
        ),
        1.0
    );
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// Opens a keep-alive HTTP/1.1 connection and completes one request on it, so the proxy has
/// certainly accepted (and counted) it; the socket stays open.
async fn held_connection(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /public/held HTTP/1.1\r\nHost: metrics.test\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while support::wire::head_end(&head).is_none() {
        let n = tokio::time::timeout(SLACK, tcp.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

#[tokio::test(flavor = "multi_thread")]
async fn open_connections_follow_held_keep_alive_connections() {
    let echo = Echo::start().await;
    let gate = Gate::start(&config(&echo, PUBLIC_ROUTE), &[]);
    let admin = gate.admin.unwrap();
    let open = |s: &Scrape| s.value("tokengate_open_connections", &[]);

    // Scrapes go to the admin listener, whose connections are not counted.
    assert_eq!(open(&scrape(admin).await), 0.0);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(held_connection(gate.addr).await);
    }
    assert_eq!(open(&scrape(admin).await), 5.0);
    held.truncate(2);
    scrape_until(&gate, "three closed connections leave the gauge", |s| {
        open(s) == 2.0
    })
    .await;
    drop(held);
    scrape_until(&gate, "every connection closed", |s| open(s) == 0.0).await;
}

// ---------------------------------------------------------------------------------------------
// Cardinality
// ---------------------------------------------------------------------------------------------

/// `count` requests to distinct unknown paths on one keep-alive connection, each answered 404.
async fn unknown_paths(addr: SocketAddr, from: usize, count: usize) {
    let io = support::connect(addr).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    for i in from..from + count {
        sender.ready().await.unwrap();
        let req = Request::get(format!("/no-such-path-{i:05}/x"))
            .header("host", "metrics.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let answer = sender.send_request(req).await.unwrap();
        assert_eq!(answer.status(), 404);
        answer.into_body().collect().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_unknown_paths_add_no_series_and_no_path() {
    let echo = Echo::start().await;
    let gate = Gate::start(&config(&echo, PUBLIC_ROUTE), &[]);
    let admin = gate.admin.unwrap();
    // The first unknown path makes the one `route="-",status="404"` series.
    status(
        &get(&gate.url("/no-such-path-first"), &[]).await,
        404,
        "unknown",
        &gate,
    );
    let before = scrape(admin).await;

    const CONNECTIONS: usize = 8;
    const EACH: usize = 1250;
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|c| tokio::spawn(unknown_paths(gate.addr, c * EACH, EACH)))
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let after = scrape(admin).await;

    assert_eq!(
        after.keys(),
        before.keys(),
        "the set of series changed\n--- before ---\n{}\n--- after ---\n{}",
        before.text,
        after.text
    );
    assert_eq!(
        changes(&before, &after, "tokengate_requests_total"),
        expect(&[("route=-,status=404", 10_000.0)])
    );
    assert_eq!(
        changes(&before, &after, "tokengate_request_duration_seconds_count"),
        expect(&[("route=-", 10_000.0)])
    );
    assert_reveals_nothing(&after, &["no-such-path", "metrics.test"]);
}
