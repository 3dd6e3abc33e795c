//! `tokengate explain` (SPEC §2): the built binary explains a request, and its verdict is the one
//! a live `tokengate serve` of the same configuration gives the same request — for every route of
//! `config/orders-api.toml` (its issuer pointed at the mock issuer, its upstream at the echo, a
//! signing key added; routes and policies unchanged) and every rejection of SPEC §6 explain can
//! reach. Plus: offline `--jwks` with the issuer down, `--no-userinfo`, exit codes 0/3/1/2, the
//! messages for bad input, and that the token never appears in the output.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed step panics with its message
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::Full;
use serde_json::{json, Map, Value};

use support::echo::{Echo, Seen};
use support::gate::Gate;
use support::issuer::{now, MockIssuer};
use support::process::{self, Output};

/// Bound for one `explain` run (it may wait for the issuer's keys).
const RUN: Duration = Duration::from_secs(60);

/// The example configuration with its issuer at `issuer`, its upstream at `upstream`, listening
/// on ephemeral loopback ports, with an admin listener (for readiness) and `signing_key`.
fn orders_api(issuer: &str, upstream: &str, signing_key: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/orders-api.toml");
    let original = std::fs::read_to_string(path).unwrap();
    let replace = |text: String, from: &str, to: &str| {
        assert!(
            text.contains(from),
            "orders-api.toml no longer has {from:?}"
        );
        text.replace(from, to)
    };
    let text = replace(
        original,
        "listen = \"0.0.0.0:8080\"",
        "listen = \"127.0.0.1:0\"",
    );
    let text = replace(
        text,
        "url = \"http://127.0.0.1:3000\"",
        &format!("url = \"http://{upstream}\"\n\n[admin]\nlisten = \"127.0.0.1:0\""),
    );
    let text = replace(
        text,
        "issuer = \"https://login.example.com/realms/corp\"",
        &format!("issuer = \"{issuer}\"\nfetch_timeout = \"2s\"\njwks_min_refresh = \"1s\""),
    );
    replace(
        text,
        "[identity.headers]",
        &format!(
            "[identity]\nsigning_key = {:?}\n\n[identity.headers]",
            signing_key.to_str().unwrap()
        ),
    )
}

/// The mock issuer, the echo upstream, a live proxy and the same configuration on disk.
struct World {
    mock: MockIssuer,
    echo: Echo,
    gate: Gate,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl World {
    async fn start() -> World {
        let mock = MockIssuer::start().await;
        let echo = Echo::start().await;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("identity.pem");
        let keygen = process::run(
            &["keygen", "--alg", "ES256", "--out", key.to_str().unwrap()],
            dir.path(),
            &[],
            RUN,
        );
        assert_eq!(keygen.code(), Some(0), "{}", keygen.stderr);
        let toml = orders_api(&mock.issuer(), &echo.addr.to_string(), &key);
        let config = dir.path().join("tokengate.toml");
        std::fs::write(&config, &toml).unwrap();
        let gate = Gate::start_ready(&toml).await;
        World {
            mock,
            echo,
            gate,
            dir,
            config,
        }
    }

    /// A token the orders-api issuer accepts, with these claims added.
    fn token(&self, claims: Value) -> String {
        let mut all = json!({"aud": "orders-api"});
        all.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        self.mock.token("ES256", all)
    }

    async fn explain(&self, args: &[&str]) -> Output {
        explain(&self.config, self.dir.path(), args).await
    }
}

/// Runs `tokengate explain --config CONFIG ARGS` without blocking the test's runtime (the mock
/// issuer and the echo upstream run on it).
async fn explain(config: &Path, cwd: &Path, args: &[&str]) -> Output {
    let mut full: Vec<String> = vec![
        "explain".into(),
        "--config".into(),
        config.to_str().unwrap().into(),
    ];
    full.extend(args.iter().map(|a| (*a).to_owned()));
    let cwd = cwd.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = full.iter().map(String::as_str).collect();
        process::run(&args, &cwd, &[], RUN)
    })
    .await
    .unwrap()
}

fn parse_report(output: &Output) -> Value {
    serde_json::from_str(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "explain --json printed no JSON ({e})\nstdout:\n{}\nstderr:\n{}",
            output.stdout, output.stderr
        )
    })
}

/// One request, described both ways.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    token: Option<String>,
    headers: Vec<(&'static str, String)>,
}

impl Case {
    fn new(name: &'static str, method: &'static str, path: &'static str) -> Case {
        Case {
            name,
            method,
            path,
            token: None,
            headers: Vec::new(),
        }
    }

    fn token(mut self, token: String) -> Case {
        self.token = Some(token);
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Case {
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// The assertion's claims without the ones that differ per minting.
fn stable_claims(mut claims: Value) -> Value {
    for name in ["iat", "exp", "jti"] {
        claims.as_object_mut().unwrap().remove(name);
    }
    claims
}

fn decode_payload(jws: &str) -> Value {
    let payload = jws.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Asserts that nothing of `token` (no 16-character slice of it) is in `text`.
fn assert_token_absent(token: &str, text: &str, what: &str) {
    if token.len() < 16 {
        assert!(!text.contains(token), "{what} contains the token");
        return;
    }
    for start in 0..=token.len() - 16 {
        let slice = &token[start..start + 16];
        assert!(
            !text.contains(slice),
            "{what} contains a 16-character slice of the token ({slice:?}):\n{text}"
        );
    }
}

/// Sends `case` to the live proxy and through `explain --json`, and asserts the same verdict,
/// status, error, challenge and identity headers. Returns the report.
async fn compare(world: &World, case: &Case) -> Value {
    // The live proxy.
    let seen_before = world.echo.seen().len();
    let mut req = Request::builder()
        .method(Method::from_bytes(case.method.as_bytes()).unwrap())
        .uri(world.gate.url(case.path));
    if let Some(token) = &case.token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in &case.headers {
        req = req.header(*name, value);
    }
    let live = support::send(req.body(Full::new(Bytes::new())).unwrap()).await;
    let seen: Vec<Seen> = world.echo.seen();
    let forwarded = seen.len() > seen_before;

    // explain.
    let mut args: Vec<String> = vec!["--json".into(), "--method".into(), case.method.into()];
    if let Some(token) = &case.token {
        args.extend(["--token".into(), token.clone()]);
    }
    for (name, value) in &case.headers {
        args.extend(["--header".into(), format!("{name}: {value}")]);
    }
    args.push(case.path.into());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = world.explain(&arg_refs).await;
    assert_eq!(
        world.echo.seen().len(),
        seen.len(),
        "{}: explain must never reach the upstream",
        case.name
    );
    let report = parse_report(&output);
    if let Some(token) = &case.token {
        assert_token_absent(token, &output.stdout, case.name);
        assert_token_absent(token, &output.stderr, case.name);
    }
    let outcome = &report["outcome"];
    let name = case.name;
    let context = format!(
        "{name}\nlive: {} {}\nreport: {report:#}",
        live.status,
        String::from_utf8_lossy(&live.body)
    );

    if forwarded {
        assert_eq!(outcome["verdict"], "forwarded", "{context}");
        assert_eq!(output.code(), Some(0), "{context}");
        let upstream = seen.last().unwrap();
        // Identity headers: exactly the ones the upstream received.
        let mut live_headers = Map::new();
        for header in ["x-auth-subject", "x-auth-client"] {
            if let Some(value) = upstream.header(header) {
                live_headers.insert(header.to_owned(), Value::String(value.to_owned()));
            }
        }
        assert_eq!(
            outcome["identity_headers"],
            Value::Object(live_headers),
            "{context}"
        );
        match upstream.header("x-identity-assertion") {
            Some(jws) => assert_eq!(
                stable_claims(outcome["assertion"]["claims"].clone()),
                stable_claims(decode_payload(jws)),
                "{context}"
            ),
            None => assert!(outcome["assertion"].is_null(), "{context}"),
        }
        assert_eq!(
            outcome["upstream"],
            format!("http://{}{}", world.echo.addr, upstream.target),
            "{context}"
        );
    } else {
        assert_eq!(outcome["verdict"], "rejected", "{context}");
        assert_eq!(output.code(), Some(3), "{context}");
        assert_eq!(outcome["status"], live.status, "{context}");
        let body = live.json();
        assert_eq!(outcome["error"], body["error"], "{context}");
        assert_eq!(
            outcome["error_description"], body["error_description"],
            "{context}"
        );
        assert_eq!(
            outcome["www_authenticate"].as_str(),
            live.header("www-authenticate"),
            "{context}"
        );
    }
    report
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_agrees_with_serve_on_every_route_and_rejection_of_the_orders_api_example() {
    let world = World::start().await;
    let now = now();
    let reader =
        world.token(json!({"sub": "alice", "client_id": "web", "scope": "openid orders:read"}));
    let writer = world.token(json!({"scope": "orders:write", "email_verified": true}));
    let admin_group = world.token(json!({"groups": ["staff", "admin"]}));
    let admin_role = world.token(json!({"realm_access": {"roles": ["ops"]}}));
    let billing = world.token(json!({"sub": null, "client_id": "svc-billing", "scope": "billing"}));
    let valid = reader.clone();
    let other_signature = world.token(json!({"sub": "mallory"}));
    let bad_signature = format!(
        "{}.{}",
        valid.rsplit_once('.').unwrap().0,
        other_signature.rsplit('.').next().unwrap()
    );

    let cases = vec![
        // Every route, forwarded.
        Case::new("health is public", "GET", "/healthz"),
        Case::new("orders-read", "GET", "/orders/42").token(reader.clone()),
        Case::new("orders-read answers HEAD like GET", "HEAD", "/orders").token(reader.clone()),
        Case::new("orders-write", "POST", "/orders").token(writer.clone()),
        Case::new("admin by group", "GET", "/admin/users").token(admin_group),
        Case::new("admin by realm role", "DELETE", "/admin/cache").token(admin_role),
        Case::new("admin as the billing account", "GET", "/admin/invoices").token(billing),
        // Every rejection explain can reach.
        Case::new("no token", "GET", "/orders/42"),
        Case::new("malformed token", "GET", "/orders/42").token("abc.def.ghi".into()),
        Case::new("malformed Authorization", "GET", "/orders/42")
            .header("authorization", "Bearer a b"),
        Case::new("bad signature", "GET", "/orders/42").token(bad_signature),
        Case::new("expired", "GET", "/orders/42").token(world.token(
            json!({"scope": "orders:read", "iat": now - 7200, "exp": now - 3600}),
        )),
        Case::new("not yet valid", "GET", "/orders/42")
            .token(world.token(json!({"scope": "orders:read", "nbf": now + 3600}))),
        Case::new("wrong issuer", "GET", "/orders/42")
            .token(world.token(json!({"iss": "https://elsewhere.example"}))),
        Case::new("wrong audience", "GET", "/orders/42")
            .token(world.mock.token("ES256", json!({"aud": "billing-api"}))),
        Case::new("unknown kid", "GET", "/orders/42").token(world.mock.token_with_header(
            "ES256",
            json!({"kid": "retired-key"}),
            json!({"aud": "orders-api", "scope": "orders:read"}),
        )),
        Case::new("insufficient scope", "POST", "/orders/7").token(reader.clone()),
        Case::new("access denied: e-mail not verified", "PUT", "/orders/7").token(
            world.token(json!({"scope": "orders:write", "email_verified": "true"})),
        ),
        Case::new("access denied: no any_of block holds", "GET", "/admin").token(valid.clone()),
        Case::new("no route", "GET", "/ordersX").token(valid.clone()),
        Case::new("bad path: encoded slash", "GET", "/orders/a%2Fb").token(valid.clone()),
        Case::new("bad path: above the root", "GET", "/orders/../../etc").token(valid.clone()),
        Case::new("lower-case method", "get", "/orders/42").token(valid.clone()),
        Case::new("request head too large", "GET", "/orders/42")
            .token(valid.clone())
            .header("x-padding", &"p".repeat(20_000)),
        Case::new("DPoP-bound token sent as Bearer", "GET", "/orders/42").token(world.token(
            json!({"scope": "orders:read", "cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}),
        )),
        Case::new("mTLS-bound token without the certificate", "GET", "/orders/42").token(
            world.token(json!({"scope": "orders:read", "cnf": {"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}})),
        ),
    ];
    for case in &cases {
        compare(&world, case).await;
    }

    // The report names the key that verified the token and every policy check.
    let report = compare(&world, &cases[3]).await;
    let key = &report["verification"]["key"];
    assert_eq!(key["kid"], world.mock.kid("ES256"));
    assert!(
        key["thumbprint"].as_str().is_some_and(|t| t.len() == 43),
        "{key}"
    );
    let checks = report["policy"]["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{report:#}");
    assert_eq!(checks[0]["check"], "orders:write");
    assert_eq!(checks[1]["check"], "email_verified equals true");
    assert_eq!(checks[1]["value"], true);

    // A bound token: the binding is named, and what explain cannot present is said.
    let report = compare(&world, &cases[cases.len() - 1]).await;
    let sender = &report["sender_constraint"];
    assert_eq!(sender["binding"], "mtls", "{report:#}");
    assert_eq!(sender["verdict"], "refused");
    assert!(
        sender["note"].as_str().unwrap().contains("cannot present"),
        "{sender}"
    );
    assert_eq!(report["verification"]["verified"], true);

    // Routes passed over say why.
    let report = compare(&world, &cases[16]).await;
    let routes = report["routes"].as_array().unwrap();
    assert_eq!(routes[0]["mismatch"], "path");
    assert_eq!(routes[1]["mismatch"], "method");
    assert_eq!(routes[2]["matched"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_any_of_block_is_reported_with_the_claim_values_it_saw() {
    let world = World::start().await;
    let token = world.token(json!({"groups": ["staff"], "client_id": "svc-billing"}));
    let report = compare(
        &world,
        &Case::new("admin denied", "GET", "/admin").token(token),
    )
    .await;
    let checks: Vec<(String, Value, bool)> = report["policy"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_owned(),
                c["value"].clone(),
                c["holds"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        checks,
        vec![
            ("groups contains \"admin\"".into(), json!(["staff"]), false),
            ("any_of[0]".into(), Value::Null, false),
            (
                "/realm_access/roles contains_any [\"admin\",\"ops\"]".into(),
                Value::Null,
                false
            ),
            ("any_of[1]".into(), Value::Null, false),
            ("billing".into(), Value::Null, false),
            (
                "client_id equals \"svc-billing\"".into(),
                json!("svc-billing"),
                true
            ),
            ("any_of[2]".into(), Value::Null, false),
        ]
    );
    assert_eq!(report["policy"]["decision"], "access_denied");
}

#[tokio::test(flavor = "multi_thread")]
async fn text_output_walks_the_phases_without_the_token() {
    let world = World::start().await;
    let token = world.token(json!({"scope": "orders:read"}));
    let output = world
        .explain(&["--token", &token, "--method", "POST", "/orders/1"])
        .await;
    assert_eq!(output.code(), Some(3), "{}", output.stderr);
    let text = &output.stdout;
    for expected in [
        "orders-read",
        "no: method does not match",
        "orders-write",
        "MATCHED",
        &format!("kid {}", world.mock.kid("ES256")),
        "scope orders:write: FAILS; saw scope = \"orders:read\"",
        "REJECTED 403 insufficient_scope",
        "WWW-Authenticate: Bearer realm=\"tokengate\", error=\"insufficient_scope\", scope=\"orders:write\"",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    assert_token_absent(&token, text, "text output");
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_file_verifies_offline_with_the_issuer_down() {
    let world = World::start().await;
    let token = world.token(json!({"scope": "orders:read"}));
    let jwks = world.dir.path().join("saved-jwks.json");
    std::fs::write(&jwks, world.mock.jwks().to_string()).unwrap();
    world.mock.set_down(true);
    let (discovery, keys) = (
        world.mock.hits("/.well-known/openid-configuration"),
        world.mock.hits("/jwks"),
    );

    let output = world
        .explain(&[
            "--json",
            "--jwks",
            jwks.to_str().unwrap(),
            "--token",
            &token,
            "/orders/1",
        ])
        .await;
    assert_eq!(
        output.code(),
        Some(0),
        "{}\n{}",
        output.stdout,
        output.stderr
    );
    let report = parse_report(&output);
    assert_eq!(report["outcome"]["verdict"], "forwarded");
    assert_eq!(report["issuers"][0]["source"], "file");
    assert_eq!(
        report["verification"]["key"]["kid"],
        world.mock.kid("ES256")
    );
    assert_eq!(
        world.mock.hits("/.well-known/openid-configuration"),
        discovery
    );
    assert_eq!(
        world.mock.hits("/jwks"),
        keys,
        "nothing is fetched with --jwks"
    );

    // Without it, the same request is a lookup failure: exit 1, the issuer's error reported.
    let output = world
        .explain(&["--json", "--token", &token, "/orders/1"])
        .await;
    assert_eq!(
        output.code(),
        Some(1),
        "{}\n{}",
        output.stdout,
        output.stderr
    );
    let report = parse_report(&output);
    assert_eq!(report["outcome"]["status"], 503);
    assert_eq!(report["outcome"]["error"], "temporarily_unavailable");
    assert_eq!(report["issuers"][0]["ready"], false);
    // The issuer's own answer, or (on a machine too busy to fetch within explain's bounded
    // wait) that no key set came: either way the operator is told why.
    let error = report["issuers"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("503") || error.contains("no key set loaded"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn userinfo_is_called_as_serve_would_or_skipped_with_no_userinfo() {
    let mock = MockIssuer::start().await;
    let echo = Echo::start().await;
    mock.configure(|s| {
        s.userinfo_default =
            Some(json!({"sub": "alice", "email_verified": true, "name": "Alice A."}))
    });
    let toml = support::config(
        echo.addr,
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n{}\n\
             [identity.headers]\nX-Auth-Name = \"name\"\n\n\
             [[route]]\nid = \"profile\"\npath = \"/profile\"\nuserinfo = true\n\
             userinfo_max_age = \"30s\"\n\
             [[route.claims]]\nclaim = \"email_verified\"\nequals = true\n",
            mock.config_toml("corp", &["api"])
        ),
    );
    let (dir, config) = process::write_config(&toml);
    let gate = Gate::start_ready(&toml).await;
    let token = mock.token("ES256", json!({"sub": "alice"}));

    let live = support::get(
        &gate.url("/profile"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(live.status, 200);
    let calls = mock.hits("/userinfo");
    let output = explain(
        &config,
        dir.path(),
        &["--json", "--token", &token, "/profile"],
    )
    .await;
    assert_eq!(
        output.code(),
        Some(0),
        "{}\n{}",
        output.stdout,
        output.stderr
    );
    let report = parse_report(&output);
    assert_eq!(
        mock.hits("/userinfo"),
        calls + 1,
        "explain calls userinfo as serve does"
    );
    let userinfo = &report["userinfo"];
    assert_eq!(userinfo["status"], "enriched");
    assert_eq!(
        userinfo["added_claims"],
        json!({"email_verified": true, "name": "Alice A."})
    );
    assert!(
        userinfo["cache"]
            .as_str()
            .unwrap()
            .contains("userinfo_max_age 30s"),
        "{userinfo}"
    );
    let seen = echo.seen();
    assert_eq!(
        report["outcome"]["identity_headers"]["x-auth-name"],
        seen.last().unwrap().header("x-auth-name").unwrap()
    );

    // --no-userinfo: not called, said so, and the policy sees the token's claims only.
    let output = explain(
        &config,
        dir.path(),
        &["--json", "--no-userinfo", "--token", &token, "/profile"],
    )
    .await;
    assert_eq!(
        mock.hits("/userinfo"),
        calls + 1,
        "--no-userinfo calls nothing"
    );
    assert_eq!(
        output.code(),
        Some(3),
        "{}\n{}",
        output.stdout,
        output.stderr
    );
    let report = parse_report(&output);
    assert_eq!(report["userinfo"]["status"], "disabled");
    assert!(report["userinfo"]["detail"]
        .as_str()
        .unwrap()
        .contains("--no-userinfo"));
    assert_eq!(report["policy"]["checks"][0]["holds"], false);
    assert_eq!(report["outcome"]["error"], "access_denied");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_a_usage_error_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let (_cfg_dir, config) = process::write_config(&support::config(
        "127.0.0.1:9".parse().unwrap(),
        "[[route]]\nid = \"all\"\npath_prefix = \"/\"\nauth = \"public\"\n",
    ));
    let missing = dir.path().join("no-such-token");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--token", "a.b.c", "--token-file", "t", "/x"],
            "cannot be used with",
        ),
        (
            vec!["--token-file", missing.to_str().unwrap(), "/x"],
            "--token-file",
        ),
        (
            vec!["--header", "X-Broken", "/x"],
            "expected --header 'Name: value'",
        ),
        (vec!["--header", "Bad Name: 1", "/x"], "HTTP token"),
        (vec!["orders/42"], "must start with '/'"),
        (vec!["--method", "GE T", "/x"], "not an HTTP method token"),
        (vec![], "PATH"),
    ];
    for (args, message) in cases {
        let output = explain(&config, dir.path(), &args).await;
        assert_eq!(output.code(), Some(2), "{args:?}: {}", output.stderr);
        assert!(
            output.stderr.contains(message),
            "{args:?}: {}",
            output.stderr
        );
        assert!(output.stdout.is_empty(), "{args:?}: {}", output.stdout);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_are_0_forwarded_3_rejected_1_bad_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let (_cfg_dir, config) = process::write_config(&support::config(
        "127.0.0.1:9".parse().unwrap(),
        "[[route]]\nid = \"open\"\npath = \"/open\"\nauth = \"public\"\n",
    ));
    assert_eq!(
        explain(&config, dir.path(), &["/open"]).await.code(),
        Some(0)
    );
    assert_eq!(
        explain(&config, dir.path(), &["/closed"]).await.code(),
        Some(3)
    );
    let (_bad_dir, bad) = process::write_config("[server]\nlisten = \"nowhere\"\n");
    let output = explain(&bad, dir.path(), &["/open"]).await;
    assert_eq!(output.code(), Some(1), "{}", output.stderr);
    assert!(
        output.stderr.contains("problem(s) found"),
        "{}",
        output.stderr
    );
}
