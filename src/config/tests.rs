//! Tests of the configuration loader: every message is checked as the exact
//! `FILE:LINE: KEY.PATH: message` line `tokengate check` prints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::duration::parse_duration;
use super::env::expand;
use super::*;
use crate::policy::Decision;
use crate::token::claims::Claims;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Loaded, Vec<Problem>> {
    load_str(Path::new("t.toml"), text, &no_env)
}

fn loaded(text: &str) -> Loaded {
    match load(text) {
        Ok(l) => l,
        Err(problems) => panic!(
            "expected a valid configuration, got:\n{}",
            lines(&problems).join("\n")
        ),
    }
}

fn config(text: &str) -> Config {
    loaded(text).config
}

fn claims(value: serde_json::Value) -> Claims {
    match value {
        serde_json::Value::Object(map) => map,
        other => panic!("test claims must be an object, got {other}"),
    }
}

fn lines(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(ToString::to_string).collect()
}

/// Every problem of an invalid configuration, as printed.
fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("expected problems, the configuration loaded"),
        Err(problems) => lines(&problems),
    }
}

/// The single problem of an invalid configuration, as printed.
fn error(text: &str) -> String {
    let all = errors(text);
    assert_eq!(
        all.len(),
        1,
        "expected one problem, got:\n{}",
        all.join("\n")
    );
    all[0].clone()
}

/// A minimal valid head (4 lines) for tests that only care about later tables.
const HEAD: &str =
    "[server]\nlisten = \"127.0.0.1:8080\"\n[upstream]\nurl = \"http://127.0.0.1:3000\"\n";

/// HEAD plus one issuer (lines 5-8), so non-public routes are allowed.
const HEAD_ISSUER: &str = "[server]\nlisten = \"127.0.0.1:8080\"\n[upstream]\nurl = \"http://127.0.0.1:3000\"\n[[issuer]]\nid = \"corp\"\nissuer = \"https://idp.example.com/\"\naudiences = [\"api\"]\n";

fn with_head(rest: &str) -> String {
    format!("{HEAD}{rest}")
}

fn with_issuer(rest: &str) -> String {
    format!("{HEAD_ISSUER}{rest}")
}

// --- whole files -----------------------------------------------------------------------------

const SPEC_EXAMPLE: &str = r#"[server]
listen = "0.0.0.0:8080"            # required
realm = "tokengate"                # WWW-Authenticate realm
max_header_bytes = 16384
max_token_bytes = 8192
header_read_timeout = "10s"
strip_header_prefixes = ["X-Auth-"]
trusted_proxies = []
allow_path_parameters = false
max_connections = 10000
shutdown_grace = "30s"

[admin]
listen = "127.0.0.1:9901"

[upstream]
url = "http://127.0.0.1:3000"
connect_timeout = "2s"
timeout = "60s"

[[issuer]]
id = "corp"
issuer = "https://idp.example.com/"
audiences = ["orders-api"]
algorithms = ["RS256", "ES256"]
clock_skew = "60s"
fetch_timeout = "5s"
jwks_refresh = "10m"
jwks_min_refresh = "30s"

[dpop]
algorithms = ["ES256", "ES384", "EdDSA", "RS256", "PS256"]
max_age = "60s"
replay_cache_entries = 100000
require_nonce = false

[userinfo]
cache_ttl = "5m"
max_entries = 100000
timeout = "3s"
on_error = "deny"

[identity]
header = "X-Identity-Assertion"
issuer = "tokengate"
signing_key = "keys/identity.pem"
ttl = "60s"
claims = ["sub", "email", "name", "groups", "scope", "client_id"]
forward_token = false
bind_request = false
[identity.headers]
X-Auth-Subject = "sub"
X-Auth-Email = "email"

[[route]]
id = "health"
path = "/healthz"
auth = "public"

[[route]]
id = "orders-write"
path_prefix = "/orders"
methods = ["POST", "PUT", "PATCH", "DELETE"]
issuers = ["corp"]
scopes = ["orders:write"]
userinfo = true
userinfo_max_age = "30s"

[[route.claims]]
claim = "email_verified"
equals = true

[[route.claims]]
claim = "/realm_access/roles"
contains_any = ["admin", "ops"]

[[route.any_of]]
claims = [{ claim = "groups", contains = "admin" }]
[[route.any_of]]
scopes = ["billing"]
claims = [{ claim = "client_id", equals = "svc-billing" }]
"#;

#[test]
fn spec_example_loads_into_the_model() {
    let l = loaded(SPEC_EXAMPLE);
    assert!(l.warnings.is_empty(), "{:?}", lines(&l.warnings));
    let c = l.config;
    assert_eq!(c.source, PathBuf::from("t.toml"));
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.server.strip_header_prefixes, vec!["x-auth-".to_owned()]);
    assert_eq!(
        c.admin.as_ref().map(|a| a.listen.to_string()).as_deref(),
        Some("127.0.0.1:9901")
    );
    assert_eq!(c.upstream.target.origin, "http://127.0.0.1:3000");
    assert_eq!(c.issuers.len(), 1);
    assert_eq!(
        c.issuers[0].algorithms,
        vec![Algorithm::RS256, Algorithm::ES256]
    );
    assert_eq!(
        c.identity.signing_key,
        Some(PathBuf::from("keys/identity.pem"))
    );
    let headers: Vec<(String, String)> = c
        .identity
        .headers
        .iter()
        .map(|(h, c)| (h.as_str().to_owned(), c.clone()))
        .collect();
    assert_eq!(
        headers,
        vec![
            ("x-auth-subject".to_owned(), "sub".to_owned()),
            ("x-auth-email".to_owned(), "email".to_owned())
        ]
    );
    assert_eq!(c.routes.len(), 2);
    let w = &c.routes[1];
    assert_eq!(&*w.id, "orders-write");
    assert_eq!(w.path, PathMatch::Prefix("/orders".to_owned()));
    assert_eq!(w.methods.as_ref().map(Vec::len), Some(4));
    assert_eq!(w.issuers, Some(vec![0]));
    assert_eq!(w.auth, AuthMode::Required);
    assert_eq!(w.userinfo_max_age, Some(Duration::from_secs(30)));
    assert_eq!(w.policy.scope_challenge(), "orders:write");
    let admin = json!({
        "scope": "orders:write",
        "email_verified": true,
        "realm_access": {"roles": ["ops"]},
        "groups": ["admin"],
    });
    assert_eq!(w.policy.evaluate(&claims(admin)), Decision::Allow);
    let billing = json!({
        "scope": "orders:write billing",
        "email_verified": true,
        "realm_access": {"roles": ["admin"]},
        "client_id": "svc-billing",
    });
    assert_eq!(w.policy.evaluate(&claims(billing)), Decision::Allow);
    let neither = json!({
        "scope": "orders:write",
        "email_verified": true,
        "realm_access": {"roles": ["admin"]},
        "client_id": "svc-billing",
    });
    assert_eq!(w.policy.evaluate(&claims(neither)), Decision::AccessDenied);
    assert!(c.routes[0].policy.is_empty());
    assert_eq!(w.line, 60);
    assert_eq!(c.routes[0].line, 55);
}

#[test]
fn omitted_keys_take_the_spec_defaults() {
    let c = config(&with_issuer("[[route]]\nid = \"r\"\npath = \"/\"\n"));
    let s = &c.server;
    assert_eq!(s.realm, "tokengate");
    assert_eq!(s.max_header_bytes, 16384);
    assert_eq!(s.max_token_bytes, 8192);
    assert_eq!(s.header_read_timeout, Duration::from_secs(10));
    assert!(s.strip_header_prefixes.is_empty());
    assert!(s.trusted_proxies.is_empty());
    assert_eq!(s.public_base_url, None);
    assert!(!s.allow_path_parameters);
    assert_eq!(s.max_connections, 10000);
    assert_eq!(s.shutdown_grace, Duration::from_secs(30));
    assert!(s.tls.is_none());
    assert!(c.admin.is_none());
    assert_eq!(c.upstream.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.upstream.timeout, Duration::from_secs(60));
    let i = &c.issuers[0];
    assert_eq!(i.algorithms, Algorithm::DEFAULT.to_vec());
    assert_eq!(i.clock_skew, Duration::from_secs(60));
    assert_eq!(i.fetch_timeout, Duration::from_secs(5));
    assert_eq!(i.jwks_refresh, Duration::from_secs(600));
    assert_eq!(i.jwks_min_refresh, Duration::from_secs(30));
    assert!(!i.allow_http && !i.allow_any_audience && i.hmac_secret.is_none());
    let d = &c.dpop;
    let names: Vec<&str> = d.algorithms.iter().map(|a| a.name()).collect();
    assert_eq!(names, ["ES256", "ES384", "EdDSA", "RS256", "PS256"]);
    assert_eq!(d.max_age, Duration::from_secs(60));
    assert_eq!(d.replay_cache_entries, 100_000);
    assert!(!d.require_nonce);
    let u = &c.userinfo;
    assert_eq!(u.cache_ttl, Duration::from_secs(300));
    assert_eq!(u.max_entries, 100_000);
    assert_eq!(u.timeout, Duration::from_secs(3));
    assert_eq!(u.on_error, OnError::Deny);
    let id = &c.identity;
    assert_eq!(id.header.as_str(), "x-identity-assertion");
    assert_eq!(id.issuer, "tokengate");
    assert_eq!(id.ttl, Duration::from_secs(60));
    assert_eq!(
        id.claims,
        ["sub", "email", "name", "groups", "scope", "client_id"]
    );
    assert!(!id.forward_token && !id.bind_request && id.signing_key.is_none());
    assert!(id.headers.is_empty());
    let r = &c.routes[0];
    assert_eq!(r.auth, AuthMode::Required);
    assert_eq!(r.path, PathMatch::Exact("/".to_owned()));
    assert!(r.methods.is_none() && r.host.is_none() && r.issuers.is_none());
}

#[test]
fn introspection_defaults_and_secret_is_hidden() {
    let c = config(&with_issuer(
        "[issuer.introspection]\nclient_id = \"tg\"\nclient_secret = \"s3cret\"\n",
    ));
    let i = c.issuers[0].introspection.as_ref().expect("introspection");
    assert_eq!(i.auth_method, ClientAuthMethod::ClientSecretBasic);
    assert_eq!(i.cache_ttl, Duration::from_secs(120));
    assert_eq!(i.negative_cache_ttl, Duration::from_secs(10));
    assert_eq!(i.endpoint, None);
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn every_spec_key_is_accepted() {
    let text = r#"[server]
listen = "127.0.0.1:8080"
public_base_url = "https://api.example.com/"
[server.tls]
cert = "c.pem"
key = "k.pem"
client_ca = "ca.pem"
[upstream]
url = "https://backend.internal:8443"
ca_file = "up.pem"
[[issuer]]
id = "corp"
issuer = "https://idp.example.com/"
jwks_uri = "https://idp.example.com/jwks?x=1"
userinfo_endpoint = "https://idp.example.com/userinfo"
allow_any_audience = true
ca_file = "idp.pem"
require_typ = "application/AT+JWT"
allow_http = false
algorithms = ["HS256", "RS256"]
hmac_secret = "0123456789abcdef0123456789abcdef"
[issuer.introspection]
endpoint = "https://idp.example.com/introspect"
client_id = "tokengate"
client_secret = "x"
auth_method = "client_secret_post"
cache_ttl = "1m"
negative_cache_ttl = "0s"
[identity]
signing_key = "keys/id.pem"
key_id = "2026-11"
previous_keys = ["keys/old.pub.pem"]
[[route]]
id = "r"
path = "/x"
host = "API.example.com:8443"
upstream = "http://127.0.0.1:3001"
audience = "orders-backend"
require_sender_constrained = true
[[route.claims]]
claim = "sub"
matches = "svc-.*"
[[route.claims]]
claim = "x"
exists = false
[[route.claims]]
claim = "y"
one_of = [1, "a"]
[[route.claims]]
claim = "z"
contains_all = ["a", "b"]
"#;
    let c = config(text);
    assert_eq!(
        c.server.public_base_url.as_deref(),
        Some("https://api.example.com")
    );
    let tls = c.server.tls.as_ref().expect("tls");
    assert_eq!(tls.client_ca, Some(PathBuf::from("ca.pem")));
    assert_eq!(c.upstream.target.scheme, http::uri::Scheme::HTTPS);
    let i = &c.issuers[0];
    assert_eq!(i.require_typ.as_deref(), Some("at+jwt"));
    assert!(i.audiences.is_empty() && i.allow_any_audience);
    assert!(i.hmac_secret.is_some());
    let intro = i.introspection.as_ref().expect("introspection");
    assert_eq!(intro.auth_method, ClientAuthMethod::ClientSecretPost);
    assert_eq!(intro.negative_cache_ttl, Duration::ZERO);
    let r = &c.routes[0];
    assert_eq!(
        r.host,
        Some(HostMatch {
            name: "api.example.com".to_owned(),
            port: Some(8443)
        })
    );
    assert_eq!(
        r.upstream.as_ref().map(|u| u.origin.as_str()),
        Some("http://127.0.0.1:3001")
    );
    assert!(r.require_sender_constrained);
    let ok = json!({"sub": "svc-1", "y": 1, "z": "b a"});
    assert_eq!(r.policy.evaluate(&claims(ok)), Decision::Allow);
    let x_present = json!({"sub": "svc-1", "y": 1, "z": "b a", "x": 0});
    assert_eq!(
        r.policy.evaluate(&claims(x_present)),
        Decision::AccessDenied
    );
}

// --- problem reporting -----------------------------------------------------------------------

#[test]
fn unknown_key_in_second_route_names_line_path_and_suggestion() {
    let text = with_issuer(
        "[[route]]\nid = \"a\"\npath = \"/a\"\n\n[[route]]\nid = \"b\"\npathh = \"/b\"\n",
    );
    let all = errors(&text);
    assert_eq!(
        all,
        vec![
            "t.toml:13: route[1]: a route needs path or path_prefix".to_owned(),
            "t.toml:15: route[1].pathh: unknown key (did you mean \"path\"?)".to_owned(),
        ]
    );
}

#[test]
fn unknown_key_without_close_match_lists_the_known_keys() {
    let e = error(&with_head(
        "[admin]\nlisten = \"127.0.0.1:9901\"\nbanana = 1\n",
    ));
    assert_eq!(
        e,
        "t.toml:7: admin.banana: unknown key (expected one of: listen)"
    );
}

#[test]
fn unknown_tables_and_keys_inside_inline_tables_are_reported() {
    let text = with_issuer(
        "[servr]\nx = 1\n[[route]]\nid = \"r\"\npath = \"/\"\nclaims = [{ claim = \"sub\", equalz = \"a\" }]\n",
    );
    let all = errors(&text);
    assert_eq!(
        all[0],
        "t.toml:9: servr: unknown key (did you mean \"server\"?)"
    );
    assert_eq!(
        all[1],
        "t.toml:14: route[0].claims[0].equalz: unknown key (did you mean \"equals\"?)"
    );
}

#[test]
fn several_problems_in_one_file_are_all_reported_in_line_order() {
    let text = r#"[server]
listen = "nowhere"
max_connections = "many"
header_read_timeout = "10x"
colour = "blue"
[upstream]
url = "http://127.0.0.1:3000/api"
[[route]]
id = "r"
auth = "public"
"#;
    assert_eq!(
        errors(text),
        vec![
            "t.toml:2: server.listen: invalid listen address \"nowhere\": expected ip:port such as \"0.0.0.0:8080\" or \"[::1]:8080\"",
            "t.toml:3: server.max_connections: invalid type: string \"many\", expected an integer",
            "t.toml:4: server.header_read_timeout: invalid duration \"10x\": expected a number followed by ms, s, m or h",
            "t.toml:5: server.colour: unknown key (expected one of: listen, realm, max_header_bytes, max_token_bytes, header_read_timeout, idle_timeout, max_concurrent_streams, strip_header_prefixes, trusted_proxies, public_base_url, allow_path_parameters, max_connections, shutdown_grace, tls)",
            "t.toml:7: upstream.url: \"http://127.0.0.1:3000/api\" has a path; give an origin such as \"http://127.0.0.1:3000\" (the request path is forwarded as is)",
            "t.toml:8: route[0]: a route needs path or path_prefix",
        ]
    );
}

#[test]
fn several_type_errors_are_all_reported_without_missing_key_noise() {
    let text = "[server]\nlisten = 8080\nrealm = 5\n[upstream]\nurl = [\"http://a\"]\n";
    assert_eq!(
        errors(text),
        vec![
            "t.toml:2: server.listen: invalid type: integer `8080`, expected a string",
            "t.toml:3: server.realm: invalid type: integer `5`, expected a string",
            "t.toml:5: upstream.url: invalid type: array, expected a string",
        ]
    );
}

#[test]
fn type_error_deep_in_a_claim_rule_points_at_its_line() {
    let text = with_issuer(
        "[[route]]\nid = \"a\"\npath = \"/a\"\n[[route]]\nid = \"b\"\npath = \"/b\"\n[[route.claims]]\nclaim = \"sub\"\none_of = \"x\"\n",
    );
    assert_eq!(
        errors(&text),
        vec!["t.toml:17: route[1].claims[0].one_of: invalid type: string \"x\", expected an array"]
    );
}

#[test]
fn a_table_where_an_array_of_tables_belongs_is_a_type_error() {
    let e = error(&with_head("[route]\nid = \"r\"\n"));
    assert_eq!(e, "t.toml:5: route: invalid type: table, expected an array");
}

#[test]
fn values_where_tables_belong_are_one_problem_each() {
    let text = "server = 5\nroute = [1, 2]\n[upstream]\nurl = \"http://a\"\n";
    assert_eq!(
        errors(text),
        vec![
            "t.toml:1: server: invalid type: integer `5`, expected a table",
            "t.toml:2: route[0]: invalid type: integer `1`, expected a table",
        ]
    );
}

#[test]
fn top_level_key_written_inside_a_table_says_where_it_went() {
    let e = error(&with_head("timeout = \"5s\"\nroute = []\n"));
    assert_eq!(
        e,
        "t.toml:6: upstream.route: unknown key (\"route\" is a top-level key, but written here it belongs to [upstream]; move it above the first table header)"
    );
}

#[test]
fn bare_number_for_a_duration_hints_at_the_string_form() {
    let e = error(&with_head("timeout = 30\n"));
    assert_eq!(
        e,
        "t.toml:5: upstream.timeout: invalid type: integer `30`, expected a string (durations are strings such as \"30s\")"
    );
}

#[test]
fn syntax_error_reports_its_line_as_syntax() {
    let e = error("[server]\nlisten = \"127.0.0.1:8080\n[upstream]\n");
    assert!(e.starts_with("t.toml:2: (syntax): invalid TOML: "), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn duplicate_key_is_a_syntax_error_on_its_line() {
    let e = error("[server]\nlisten = \"127.0.0.1:8080\"\nlisten = \"127.0.0.1:8081\"\n");
    assert!(
        e.starts_with("t.toml:3: (syntax): invalid TOML: duplicate key"),
        "{e}"
    );
}

#[test]
fn missing_required_tables_are_reported_at_line_1() {
    assert_eq!(
        errors("# empty\n"),
        vec![
            "t.toml:1: server: required table [server] is missing",
            "t.toml:1: upstream: required table [upstream] is missing",
        ]
    );
}

#[test]
fn missing_required_key_points_at_its_table_header() {
    let e =
        error("# comment\n[server]\nrealm = \"x\"\n[upstream]\nurl = \"http://127.0.0.1:3000\"\n");
    assert_eq!(e, "t.toml:2: server.listen: required key is missing");
}

#[test]
fn file_name_is_printed_as_given() {
    let problems = load_str(Path::new("conf/dev.toml"), "", &no_env).expect_err("invalid");
    assert_eq!(
        problems[0].to_string(),
        "conf/dev.toml:1: server: required table [server] is missing"
    );
}

// --- ${ENV} ----------------------------------------------------------------------------------

fn fake_env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name: &str| map.get(name).cloned()
}

#[test]
fn unset_env_var_is_reported_at_its_key() {
    let text = "[server]\nlisten = \"127.0.0.1:8080\"\n[upstream]\nurl = \"${UPSTREAM_URL}\"\n";
    assert_eq!(
        errors(text),
        vec!["t.toml:4: upstream.url: environment variable UPSTREAM_URL is not set"]
    );
}

#[test]
fn env_vars_expand_in_plain_values_arrays_and_inline_tables() {
    let text = r#"[server]
listen = "${HOST}:${PORT}"
trusted_proxies = ["10.0.0.0/8", "${PROXY}"]
[upstream]
url = "http://${HOST}:3000"
[[issuer]]
id = "corp"
issuer = "https://idp.example.com/"
audiences = ["${AUD}"]
[[route]]
id = "r"
path = "/"
claims = [{ claim = "client_id", equals = "${CLIENT}" }]
"#;
    let env = fake_env(&[
        ("HOST", "127.0.0.1"),
        ("PORT", "8088"),
        ("PROXY", "192.168.1.1"),
        ("AUD", "api"),
        ("CLIENT", "svc"),
    ]);
    let c = load_str(Path::new("t.toml"), text, &env)
        .expect("valid")
        .config;
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8088");
    assert_eq!(c.server.trusted_proxies[1].to_string(), "192.168.1.1/32");
    assert_eq!(c.upstream.target.origin, "http://127.0.0.1:3000");
    assert_eq!(c.issuers[0].audiences, ["api"]);
    let policy = &c.routes[0].policy;
    let svc = json!({"client_id": "svc"});
    assert_eq!(policy.evaluate(&claims(svc)), Decision::Allow);
    let literal = json!({"client_id": "${CLIENT}"});
    assert_eq!(policy.evaluate(&claims(literal)), Decision::AccessDenied);
}

#[test]
fn unset_env_var_inside_an_array_names_the_element() {
    let text = with_head("[identity]\nprevious_keys = [\"a.pem\", \"${OLD_KEY}\"]\n");
    assert_eq!(
        errors(&text),
        vec!["t.toml:6: identity.previous_keys[1]: environment variable OLD_KEY is not set"]
    );
}

#[test]
fn env_expansion_rules() {
    let env = fake_env(&[("A", "x"), ("EMPTY", "")]);
    assert_eq!(expand("${A}-${A}", &env).as_deref(), Ok("x-x"));
    assert_eq!(expand("$${A}", &env).as_deref(), Ok("${A}"));
    // Leftmost first: a "$" then the "$${" escape.
    assert_eq!(expand("$$${A}", &env).as_deref(), Ok("$${A}"));
    assert_eq!(expand("a$b $5 $", &env).as_deref(), Ok("a$b $5 $"));
    assert_eq!(expand("<${EMPTY}>", &env).as_deref(), Ok("<>"));
    assert_eq!(
        expand("${B} ${C} ${B}", &env),
        Err("environment variables B, C are not set".to_owned())
    );
    assert_eq!(
        expand("${A", &env),
        Err("unterminated \"${\" (write \"$${\" for a literal \"${\")".to_owned())
    );
    assert_eq!(
        expand("${}", &env),
        Err("empty variable name in \"${}\"".to_owned())
    );
    assert_eq!(
        expand("${A:-d}", &env),
        Err("invalid environment variable name \"A:-d\" in \"${A:-d}\": expected letters, digits and _".to_owned())
    );
}

#[test]
fn malformed_env_reference_is_reported_at_its_key() {
    let e = error(&with_head("[identity]\nissuer = \"${ISS\"\n"));
    assert_eq!(
        e,
        "t.toml:6: identity.issuer: unterminated \"${\" (write \"$${\" for a literal \"${\")"
    );
}

// --- durations -------------------------------------------------------------------------------

#[test]
fn durations_parse_each_unit_and_zero() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
}

#[test]
fn bad_durations_are_rejected() {
    for bad in [
        "", "10", "s", "-5s", "+5s", "1.5s", "1m30s", "10x", " 5s", "5 s", "5S",
    ] {
        assert_eq!(
            parse_duration(bad),
            Err(format!(
                "invalid duration {bad:?}: expected a number followed by ms, s, m or h"
            )),
            "{bad:?}"
        );
    }
    assert_eq!(
        parse_duration("99999999999999999999s"),
        Err("invalid duration \"99999999999999999999s\": too large".to_owned())
    );
    assert_eq!(
        parse_duration("18446744073709551615h"),
        Err("invalid duration \"18446744073709551615h\": too large".to_owned())
    );
}

#[test]
fn zero_timeout_is_rejected_where_it_makes_no_sense() {
    let e = error(&with_head("[userinfo]\ntimeout = \"0s\"\n"));
    assert_eq!(
        e,
        "t.toml:6: userinfo.timeout: \"0s\" is not allowed here: must be greater than 0"
    );
}

// --- [server], [admin], [upstream] -----------------------------------------------------------

#[test]
fn listen_accepts_ipv6_and_localhost() {
    let c = config("[server]\nlisten = \"localhost:8080\"\n[admin]\nlisten = \"[::1]:9901\"\n[upstream]\nurl = \"http://127.0.0.1:3000\"\n");
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(
        c.admin.map(|a| a.listen.to_string()).as_deref(),
        Some("[::1]:9901")
    );
}

#[test]
fn listen_without_host_suggests_every_interface() {
    let e = error("[server]\nlisten = \":8080\"\n[upstream]\nurl = \"http://127.0.0.1:3000\"\n");
    assert_eq!(
        e,
        "t.toml:2: server.listen: invalid listen address \":8080\": expected ip:port such as \"0.0.0.0:8080\" or \"[::1]:8080\" (to listen on every interface, write \"0.0.0.0:8080\")"
    );
}

#[test]
fn admin_listen_must_differ_from_server_listen() {
    let e = error(&with_head("[admin]\nlisten = \"127.0.0.1:8080\"\n"));
    assert_eq!(
        e,
        "t.toml:6: admin.listen: 127.0.0.1:8080 overlaps server.listen (127.0.0.1:8080); the admin listener needs its own port"
    );
    let wildcard = "[server]\nlisten = \"0.0.0.0:8080\"\n[admin]\nlisten = \"127.0.0.1:8080\"\n[upstream]\nurl = \"http://a\"\n";
    assert_eq!(
        error(wildcard),
        "t.toml:4: admin.listen: 127.0.0.1:8080 overlaps server.listen (0.0.0.0:8080); the admin listener needs its own port"
    );
}

#[test]
fn upstream_must_be_an_http_origin() {
    let cases = [
        (
            "ftp://a",
            "\"ftp://a\" has scheme \"ftp\"; expected http or https",
        ),
        (
            "http://a/?q=1",
            "\"http://a/?q=1\" has a query; give an origin such as \"http://127.0.0.1:3000\"",
        ),
        (
            "http://u:p@a",
            "\"http://u:p@a\" has user info; credentials do not belong in the URL",
        ),
        (
            "127.0.0.1:3000",
            "\"127.0.0.1:3000\" is not an absolute URL (did you mean \"http://127.0.0.1:3000\"?)",
        ),
        (
            "/x",
            "\"/x\" is not an absolute URL; expected http:// or https://",
        ),
        ("http://a/#f", "\"http://a/#f\" has a fragment"),
    ];
    for (url, message) in cases {
        let text = format!("[server]\nlisten = \"127.0.0.1:1\"\n[upstream]\nurl = \"{url}\"\n");
        assert_eq!(
            error(&text),
            format!("t.toml:4: upstream.url: {message}"),
            "{url}"
        );
    }
    let c =
        config("[server]\nlisten = \"127.0.0.1:1\"\n[upstream]\nurl = \"HTTP://Backend:8080/\"\n");
    assert_eq!(c.upstream.target.origin, "http://backend:8080");
}

#[test]
fn server_value_checks() {
    let text = r#"[server]
listen = "127.0.0.1:8080"
realm = "my \"realm\""
max_header_bytes = 100
max_token_bytes = 0
max_connections = -1
strip_header_prefixes = ["X_Auth_", "", "X Bad"]
trusted_proxies = ["10.0.0.1/8", "::1", "10.0.0.0/33", "proxy.local"]
public_base_url = "https://api.example.com/v1"
[upstream]
url = "http://127.0.0.1:3000"
"#;
    assert_eq!(
        errors(text),
        vec![
            "t.toml:3: server.realm: \"my \\\"realm\\\"\" must be printable ASCII without '\"' or '\\'",
            "t.toml:4: server.max_header_bytes: must be between 1024 and 1048576, found 100",
            "t.toml:5: server.max_token_bytes: must be at least 1, found 0",
            "t.toml:6: server.max_connections: must be at least 1, found -1",
            "t.toml:7: server.strip_header_prefixes[1]: must not be empty (it would strip every header)",
            "t.toml:7: server.strip_header_prefixes[2]: \"X Bad\" is not a valid header-name prefix",
            "t.toml:8: server.trusted_proxies[2]: \"10.0.0.0/33\" is not a CIDR (\"10.0.0.0/8\") or an IP address",
            "t.toml:8: server.trusted_proxies[3]: \"proxy.local\" is not a CIDR (\"10.0.0.0/8\") or an IP address",
            "t.toml:9: server.public_base_url: \"https://api.example.com/v1\" has a path; give an origin such as \"http://127.0.0.1:3000\" (the request path is forwarded as is)",
        ]
    );
}

#[test]
fn strip_prefixes_are_lowercased_with_dashes_and_proxies_truncated() {
    let c = config(
        "[server]\nlisten = \"127.0.0.1:1\"\nstrip_header_prefixes = [\"X_Auth_\"]\ntrusted_proxies = [\"10.1.2.3/8\", \"::1\"]\n[upstream]\nurl = \"http://a\"\n",
    );
    assert_eq!(c.server.strip_header_prefixes, ["x-auth-"]);
    let nets: Vec<String> = c
        .server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "::1/128"]);
}

#[test]
fn tls_table_needs_cert_and_key() {
    let e = errors("[server]\nlisten = \"127.0.0.1:1\"\n[server.tls]\nclient_ca = \"ca.pem\"\n[upstream]\nurl = \"http://a\"\n");
    assert_eq!(
        e,
        vec![
            "t.toml:3: server.tls.cert: required key is missing",
            "t.toml:3: server.tls.key: required key is missing",
        ]
    );
}

// --- [[issuer]] ------------------------------------------------------------------------------

#[test]
fn issuer_urls_must_be_https_except_loopback() {
    let text = with_head(
        "[[issuer]]\nid = \"a\"\nissuer = \"http://idp.example.com/\"\naudiences = [\"x\"]\njwks_uri = \"http://127.0.0.1:9000/jwks\"\nuserinfo_endpoint = \"http://idp.example.com/ui\"\n[[issuer]]\nid = \"b\"\nissuer = \"http://localhost:8081/realms/b\"\naudiences = [\"x\"]\n",
    );
    assert_eq!(
        errors(&text),
        vec![
            "t.toml:7: issuer[0].issuer: \"http://idp.example.com/\" must use https (http is accepted only for loopback hosts, or with allow_http = true)",
            "t.toml:10: issuer[0].userinfo_endpoint: \"http://idp.example.com/ui\" must use https (http is accepted only for loopback hosts, or with allow_http = true)",
        ]
    );
}

#[test]
fn allow_http_loads_with_a_warning() {
    let l = loaded(&with_head(
        "[[issuer]]\nid = \"compose\"\nissuer = \"http://keycloak:8080/realms/x\"\naudiences = [\"x\"]\nallow_http = true\n",
    ));
    assert_eq!(
        lines(&l.warnings),
        vec!["t.toml:9: issuer[0].allow_http: http allowed for issuer \"compose\": its tokens, keys and userinfo answers can be read or altered on the network"]
    );
}

#[test]
fn issuer_checks() {
    let text = with_head(
        r#"[[issuer]]
id = "corp"
issuer = "https://idp.example.com/"
algorithms = ["none", "rs256", "HS256"]
jwks_refresh = "1m"
jwks_min_refresh = "5m"
[[issuer]]
id = "corp"
issuer = "https://idp.example.com/"
audiences = ["a"]
hmac_secret = "short"
[[issuer]]
issuer = "https://other.example.com/?tenant=1"
audiences = ["a"]
"#,
    );
    assert_eq!(
        errors(&text),
        vec![
            "t.toml:5: issuer[0].audiences: at least one audience is required (or set allow_any_audience = true)".to_owned(),
            "t.toml:8: issuer[0].algorithms[0]: \"none\" (unsigned tokens) is never accepted".to_owned(),
            "t.toml:8: issuer[0].algorithms[1]: unknown algorithm \"rs256\" (did you mean \"RS256\"?)".to_owned(),
            "t.toml:10: issuer[0].jwks_min_refresh: \"5m\" is longer than jwks_refresh (\"1m\"); it must not be".to_owned(),
            "t.toml:12: issuer[1].id: duplicate issuer id \"corp\" (first used on line 6)".to_owned(),
            "t.toml:13: issuer[1].issuer: duplicate issuer \"https://idp.example.com/\" (first used on line 7)".to_owned(),
            "t.toml:15: issuer[1].hmac_secret: hmac_secret is set but algorithms lists no HS256, HS384 or HS512".to_owned(),
            "t.toml:16: issuer[2].id: required key is missing".to_owned(),
            "t.toml:17: issuer[2].issuer: \"https://other.example.com/?tenant=1\" has a query; an issuer identifier has none (OpenID Connect Discovery §3)".to_owned(),
        ]
    );
}

#[test]
fn hmac_algorithm_without_secret_is_an_error() {
    let e = error(&with_head(
        "[[issuer]]\nid = \"a\"\nissuer = \"https://i/\"\naudiences = [\"x\"]\nalgorithms = [\"RS256\", \"HS384\"]\n",
    ));
    assert_eq!(
        e,
        "t.toml:9: issuer[0].algorithms: HS384 is listed but hmac_secret is not set"
    );
}

#[test]
fn short_hmac_secret_is_an_error() {
    let e = error(&with_head(
        "[[issuer]]\nid = \"a\"\nissuer = \"https://i/\"\naudiences = [\"x\"]\nalgorithms = [\"HS256\"]\nhmac_secret = \"short\"\n",
    ));
    assert_eq!(
        e,
        "t.toml:10: issuer[0].hmac_secret: must be at least 32 bytes long (RFC 7518 §3.2), found 5"
    );
}

#[test]
fn introspection_needs_client_credentials() {
    let e = errors(&with_issuer(
        "[issuer.introspection]\nauth_method = \"basic\"\n",
    ));
    assert_eq!(
        e,
        vec![
            "t.toml:9: issuer[0].introspection.client_id: required key is missing",
            "t.toml:9: issuer[0].introspection.client_secret: required key is missing",
            "t.toml:10: issuer[0].introspection.auth_method: expected \"client_secret_basic\" or \"client_secret_post\", found \"basic\"",
        ]
    );
}

// --- [dpop], [userinfo], [identity] ----------------------------------------------------------

#[test]
fn dpop_algorithms_must_be_asymmetric() {
    let e = error(&with_head("[dpop]\nalgorithms = [\"ES256\", \"HS256\"]\n"));
    assert_eq!(
        e,
        "t.toml:6: dpop.algorithms[1]: HS256 is symmetric; DPoP proofs are signed with asymmetric keys only"
    );
}

#[test]
fn userinfo_on_error_must_be_deny_or_proceed() {
    let e = error(&with_head("[userinfo]\non_error = \"ignore\"\n"));
    assert_eq!(
        e,
        "t.toml:6: userinfo.on_error: expected \"deny\" or \"proceed\", found \"ignore\""
    );
    let c = config(&with_head("[userinfo]\non_error = \"proceed\"\n"));
    assert_eq!(c.userinfo.on_error, OnError::Proceed);
}

#[test]
fn identity_header_checks() {
    let text = with_head(
        r#"[identity]
header = "X-Forwarded-User"
claims = ["sub", "iss", "/a/b"]
[identity.headers]
Authorization = "sub"
"X Bad" = "sub"
X-User = "/bad~2pointer"
X-Sub = "sub"
x-sub = "email"
"#,
    );
    assert_eq!(
        errors(&text),
        vec![
            "t.toml:6: identity.header: \"X-Forwarded-User\" cannot carry identity: tokengate manages this header itself",
            "t.toml:7: identity.claims[1]: \"iss\" is set by tokengate itself and cannot be copied from the token",
            "t.toml:7: identity.claims[2]: identity.claims holds top-level claim names; JSON Pointers are for [identity.headers] and route claims",
            "t.toml:9: identity.headers.Authorization: \"Authorization\" cannot carry identity: tokengate manages this header itself",
            "t.toml:10: identity.headers.\"X Bad\": \"X Bad\" is not a valid HTTP header name",
            "t.toml:11: identity.headers.X-User: \"/bad~2pointer\" is not a valid JSON Pointer: \"~\" must be followed by 0 or 1 (write ~0 for \"~\", ~1 for \"/\")",
            "t.toml:13: identity.headers.x-sub: duplicate header name (first on line 12; names are case-insensitive)",
        ]
    );
}

#[test]
fn identity_headers_keep_file_order() {
    let c = config(&with_head(
        "[identity.headers]\nX-Z = \"z\"\nX-A = \"a\"\nX-M = \"/m/0\"\n",
    ));
    let names: Vec<&str> = c.identity.headers.iter().map(|(h, _)| h.as_str()).collect();
    assert_eq!(names, ["x-z", "x-a", "x-m"]);
}

// --- [[route]] -------------------------------------------------------------------------------

#[test]
fn route_without_path_or_prefix_is_reported_at_its_header() {
    let text = with_issuer(
        "[[route]]\nid = \"a\"\npath = \"/a\"\n[[route]]\nid = \"b\"\npath = \"/b\"\n[[route]]\nid = \"c\"\n",
    );
    assert_eq!(
        errors(&text),
        vec!["t.toml:15: route[2]: a route needs path or path_prefix"]
    );
}

#[test]
fn route_with_both_path_and_prefix_is_an_error() {
    let e = error(&with_issuer(
        "[[route]]\nid = \"a\"\npath = \"/a\"\npath_prefix = \"/a\"\n",
    ));
    assert_eq!(
        e,
        "t.toml:9: route[0]: a route has both path and path_prefix; use one"
    );
}

#[test]
fn route_paths_must_be_in_normalized_form() {
    let cases = [
        ("orders", "\"orders\" must start with \"/\""),
        ("/a//b", "\"/a//b\" contains \"//\"; requests are matched after repeated slashes are collapsed"),
        ("/a/../b", "\"/a/../b\" contains a \".\" or \"..\" segment; requests are matched after dot-segments are resolved"),
        ("/a/./b", "\"/a/./b\" contains a \".\" or \"..\" segment; requests are matched after dot-segments are resolved"),
        ("/%61dmin", "\"/%61dmin\": write %61 as 'a'; requests are matched after unreserved characters are decoded"),
        ("/a%2Fb", "\"/a%2Fb\" can never match: requests with %2F in the path are rejected"),
        ("/a%0a", "\"/a%0a\" can never match: requests with %0a in the path are rejected"),
        ("/caf%c3%a9", "\"/caf%c3%a9\": write %c3 in upper case, %C3"),
        ("/a%zz", "\"/a%zz\" has a bad percent-escape at byte 2"),
        ("/a;v=1", "\"/a;v=1\" can never match: \";\" path parameters are never part of route matching"),
        ("/a?x", "\"/a?x\" has a query or fragment; routes match the path only"),
        ("/caf\u{e9}", "\"/caf\u{e9}\": write '\u{e9}' percent-encoded, as %C3%A9"),
        ("/a b", "\"/a b\": write ' ' percent-encoded, as %20"),
    ];
    for (path, message) in cases {
        let text = with_issuer(&format!("[[route]]\nid = \"a\"\npath = \"{path}\"\n"));
        assert_eq!(
            error(&text),
            format!("t.toml:11: route[0].path: {message}"),
            "{path}"
        );
    }
    let ok = config(&with_issuer(
        "[[route]]\nid = \"a\"\npath = \"/caf%C3%A9/x:y@z/\"\n",
    ));
    assert_eq!(
        ok.routes[0].path,
        PathMatch::Exact("/caf%C3%A9/x:y@z/".to_owned())
    );
}

#[test]
fn path_prefix_trailing_slash_is_trimmed_except_root() {
    let c = config(&with_issuer(
        "[[route]]\nid = \"a\"\npath_prefix = \"/orders/\"\n[[route]]\nid = \"b\"\npath_prefix = \"/\"\nhost = \"other\"\n",
    ));
    assert_eq!(c.routes[0].path, PathMatch::Prefix("/orders".to_owned()));
    assert_eq!(c.routes[1].path, PathMatch::Prefix(String::new()));
    assert!(crate::route::path_matches(&c.routes[1].path, "/anything"));
}

#[test]
fn route_value_checks() {
    let text = with_issuer(
        r#"[[route]]
id = "a"
path = "/a"
methods = ["get", "POST", "BAD METHOD"]
host = "*.example.com"
auth = "private"
issuers = ["corpp", "corp"]
scopes = ["ok", "has space"]
[[route]]
id = ""
path = "/b"
methods = []
host = "api.example.com:http"
upstream = "http://127.0.0.1:3001/v1"
"#,
    );
    assert_eq!(
        errors(&text),
        vec![
            "t.toml:12: route[0].methods[0]: methods are case-sensitive: write \"GET\"",
            "t.toml:12: route[0].methods[2]: \"BAD METHOD\" is not an HTTP method",
            "t.toml:13: route[0].host: \"*.example.com\": wildcards are not supported; give one host per route",
            "t.toml:14: route[0].auth: expected \"public\", \"optional\" or \"required\", found \"private\"",
            "t.toml:15: route[0].issuers[0]: unknown issuer id \"corpp\" (did you mean \"corp\"?)",
            "t.toml:16: route[0].scopes[1]: \"has space\" is not a scope token (printable ASCII without spaces, '\"' or '\\')",
            "t.toml:18: route[1].id: must not be empty",
            "t.toml:20: route[1].methods: an empty list matches no request; leave methods out to allow any method",
            "t.toml:21: route[1].host: \"api.example.com:http\" is not a host: expected a name with an optional port, such as \"api.example.com\" or \"api.example.com:8443\"",
            "t.toml:22: route[1].upstream: \"http://127.0.0.1:3001/v1\" has a path; give an origin such as \"http://127.0.0.1:3000\" (the request path is forwarded as is)",
        ]
    );
}

#[test]
fn duplicate_route_id_names_the_first_line() {
    let e = error(&with_issuer(
        "[[route]]\nid = \"a\"\npath = \"/a\"\n[[route]]\nid = \"a\"\npath = \"/b\"\n",
    ));
    assert_eq!(
        e,
        "t.toml:13: route[1].id: duplicate route id \"a\" (first used on line 10)"
    );
}

#[test]
fn token_route_without_any_issuer_is_an_error() {
    let text = with_head("[[route]]\nid = \"a\"\npath = \"/a\"\n[[route]]\nid = \"b\"\npath = \"/b\"\nauth = \"optional\"\n[[route]]\nid = \"c\"\npath = \"/c\"\nauth = \"public\"\n");
    assert_eq!(
        errors(&text),
        vec![
            "t.toml:5: route[0]: this route needs a token (auth is \"required\" or \"optional\") but no [[issuer]] is configured",
            "t.toml:11: route[1].auth: this route needs a token (auth is \"required\" or \"optional\") but no [[issuer]] is configured",
        ]
    );
}

#[test]
fn public_route_with_policy_is_an_error() {
    let e = error(&with_issuer(
        "[[route]]\nid = \"a\"\npath = \"/a\"\nauth = \"public\"\nscopes = [\"x\"]\n",
    ));
    assert_eq!(
        e,
        "t.toml:13: route[0].scopes: a public route never examines a token, so its scopes would never be checked"
    );
}

#[test]
fn claim_rule_checks() {
    let text = with_issuer(
        r#"[[route]]
id = "r"
path = "/r"
[[route.claims]]
claim = "a"
[[route.claims]]
claim = "b"
equals = 1
one_of = [1]
[[route.claims]]
claim = "c"
contains_any = []
[[route.claims]]
claim = "d"
matches = "(unclosed"
[[route.claims]]
claim = "/x~2y"
exists = true
[[route.claims]]
equals = 1
[[route.claims]]
claim = "e"
equals = 1979-05-27
"#,
    );
    assert_eq!(
        errors(&text),
        vec![
            "t.toml:12: route[0].claims[0]: the claim rule for \"a\" needs exactly one operator (equals, one_of, contains, contains_any, contains_all, matches or exists); found none",
            "t.toml:14: route[0].claims[1]: the claim rule for \"b\" needs exactly one operator (equals, one_of, contains, contains_any, contains_all, matches or exists); found equals and one_of",
            "t.toml:20: route[0].claims[2].contains_any: must not be empty",
            "t.toml:23: route[0].claims[3].matches: invalid regular expression \"(unclosed\": unclosed group",
            "t.toml:25: route[0].claims[4].claim: \"/x~2y\" is not a valid JSON Pointer: \"~\" must be followed by 0 or 1 (write ~0 for \"~\", ~1 for \"/\")",
            "t.toml:27: route[0].claims[5].claim: a claim rule needs a non-empty claim",
            "t.toml:31: route[0].claims[6].equals: a TOML date-time has no JSON equivalent and would never equal a claim; quote it as a string",
        ]
    );
}

#[test]
fn empty_any_of_block_is_an_error() {
    let text = with_issuer("[[route]]\nid = \"r\"\npath = \"/r\"\n[[route.any_of]]\n[[route.any_of]]\nscopes = [\"x\"]\n");
    assert_eq!(
        errors(&text),
        vec!["t.toml:12: route[0].any_of[0]: an any_of block needs scopes or claims (an empty block always holds)"]
    );
}

#[test]
fn policy_problems_are_reported_at_their_key_paths_inside_any_of_blocks() {
    let text = with_issuer(
        r#"[[route]]
id = "a"
path = "/a"
[[route]]
id = "b"
path = "/b"
scopes = ["ok", "has space"]
[[route.claims]]
claim = "role"
matches = "adm("
[[route.any_of]]
scopes = ["billing"]
claims = [
  { claim = "/bad~pointer", exists = true },
  { claim = "sub", equals = "x", matches = "x" },
  { claim = "sub" },
  { claim = "groups", one_of = [] },
  { claim = "groups", contains_any = [] },
  { claim = "groups", contains_all = [] },
  { claim = "n", one_of = [1, nan] },
  { claim = "n", equals = { at = 1979-05-27 } },
]
[[route.any_of]]
"#,
    );
    assert_eq!(
        errors(&text),
        vec![
            "t.toml:15: route[1].scopes[1]: \"has space\" is not a scope token (printable ASCII without spaces, '\"' or '\\')",
            "t.toml:18: route[1].claims[0].matches: invalid regular expression \"adm(\": unclosed group",
            "t.toml:22: route[1].any_of[0].claims[0].claim: \"/bad~pointer\" is not a valid JSON Pointer: \"~\" must be followed by 0 or 1 (write ~0 for \"~\", ~1 for \"/\")",
            "t.toml:23: route[1].any_of[0].claims[1]: the claim rule for \"sub\" needs exactly one operator (equals, one_of, contains, contains_any, contains_all, matches or exists); found equals and matches",
            "t.toml:24: route[1].any_of[0].claims[2]: the claim rule for \"sub\" needs exactly one operator (equals, one_of, contains, contains_any, contains_all, matches or exists); found none",
            "t.toml:25: route[1].any_of[0].claims[3].one_of: must not be empty",
            "t.toml:26: route[1].any_of[0].claims[4].contains_any: must not be empty",
            "t.toml:27: route[1].any_of[0].claims[5].contains_all: must not be empty",
            "t.toml:28: route[1].any_of[0].claims[6].one_of[1]: nan and inf have no JSON equivalent and would never equal a claim; use a finite number",
            "t.toml:29: route[1].any_of[0].claims[7].equals: a TOML date-time has no JSON equivalent and would never equal a claim; quote it as a string",
            "t.toml:31: route[1].any_of[1]: an any_of block needs scopes or claims (an empty block always holds)",
        ]
    );
}

#[test]
fn a_type_error_inside_an_any_of_rule_is_reported_once() {
    let text = with_issuer(
        r#"[[route]]
id = "r"
path = "/r"
[[route.any_of]]
claims = [{ claim = "groups", contains_any = "admin" }, { claim = 5, equals = 1, exists = true }]
[[route.any_of]]
scopes = [7]
"#,
    );
    assert_eq!(
        errors(&text),
        vec![
            "t.toml:13: route[0].any_of[0].claims[0].contains_any: invalid type: string \"admin\", expected an array",
            "t.toml:13: route[0].any_of[0].claims[1].claim: invalid type: integer `5`, expected a string",
            "t.toml:15: route[0].any_of[1].scopes[0]: invalid type: integer `7`, expected a string",
        ]
    );
}

#[test]
fn policies_are_compiled_into_the_route() {
    let c = config(&with_issuer(
        r#"[[route]]
id = "r"
path = "/r"
scopes = ["a", "b"]
[[route.claims]]
claim = "/realm_access/roles"
contains = "ops"
"#,
    ));
    let policy = &c.routes[0].policy;
    assert_eq!(policy.scopes(), ["a", "b"]);
    assert_eq!(policy.scope_challenge(), "a b");
    let ops = json!({"scope": "b a", "realm_access": {"roles": ["ops"]}});
    assert_eq!(policy.evaluate(&claims(ops)), Decision::Allow);
    let one_scope = json!({"scope": "a", "realm_access": {"roles": ["ops"]}});
    assert_eq!(
        policy.evaluate(&claims(one_scope)),
        Decision::InsufficientScope
    );
    let no_role = json!({"scope": "a b", "realm_access": {"roles": []}});
    assert_eq!(policy.evaluate(&claims(no_role)), Decision::AccessDenied);
}

#[test]
fn a_pruned_operator_is_not_reported_again_as_missing() {
    let text = with_issuer(
        "[[route]]\nid = \"r\"\npath = \"/r\"\n[[route.claims]]\nclaim = \"a\"\nexists = \"yes\"\n",
    );
    assert_eq!(
        errors(&text),
        vec!["t.toml:14: route[0].claims[0].exists: invalid type: string \"yes\", expected a boolean"]
    );
}

// --- shadowing warnings ----------------------------------------------------------------------

#[test]
fn shadowed_routes_are_warnings_naming_the_earlier_route_and_line() {
    let text = with_issuer(
        r#"[[route]]
id = "api"
path_prefix = "/api"
[[route]]
id = "api-users"
path = "/api/users"
[[route]]
id = "api-get"
path_prefix = "/api/v2/"
methods = ["GET"]
[[route]]
id = "health"
path = "/healthz"
methods = ["GET", "HEAD"]
auth = "public"
[[route]]
id = "health-get"
path = "/healthz"
methods = ["GET"]
auth = "public"
"#,
    );
    let l = loaded(&text);
    assert_eq!(
        lines(&l.warnings),
        vec![
            "t.toml:12: route[1]: route \"api-users\" can never match: route \"api\" (line 9) comes first and matches every request it would",
            "t.toml:15: route[2]: route \"api-get\" can never match: route \"api\" (line 9) comes first and matches every request it would",
            "t.toml:24: route[4]: route \"health-get\" can never match: route \"health\" (line 19) comes first and matches every request it would",
        ]
    );
}

#[test]
fn narrower_earlier_routes_do_not_shadow() {
    let text = with_issuer(
        r#"[[route]]
id = "write"
path_prefix = "/orders"
methods = ["POST"]
[[route]]
id = "all"
path_prefix = "/orders"
[[route]]
id = "on-host"
path_prefix = "/"
host = "a.example.com"
[[route]]
id = "other-host"
path_prefix = "/x"
host = "b.example.com"
[[route]]
id = "any-host"
path = "/y"
[[route]]
id = "ordersx"
path = "/ordersX"
[[route]]
id = "exact"
path = "/z"
[[route]]
id = "prefix-after-exact"
path_prefix = "/z"
"#,
    );
    assert!(loaded(&text).warnings.is_empty());
}

#[test]
fn host_without_port_shadows_the_same_host_with_port() {
    let text = with_issuer(
        "[[route]]\nid = \"a\"\npath_prefix = \"/\"\nhost = \"API.example.com\"\n[[route]]\nid = \"b\"\npath = \"/x\"\nhost = \"api.example.com:8443\"\n",
    );
    let l = loaded(&text);
    assert_eq!(l.warnings.len(), 1);
    assert!(l.warnings[0]
        .to_string()
        .starts_with("t.toml:13: route[1]: route \"b\" can never match: route \"a\" (line 9)"));
}

// --- files -----------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("tokengate-config-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("keys")).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn relative_file_paths_resolve_against_the_config_directory() {
    let tmp = TempDir::new("relative");
    let key = |alg| crate::keygen::generate(alg).expect("generate key").0;
    std::fs::write(
        tmp.0.join("keys/id.pem"),
        key(crate::keygen::KeygenAlg::Es256),
    )
    .expect("write key");
    std::fs::write(
        tmp.0.join("keys/old.pem"),
        key(crate::keygen::KeygenAlg::EdDsa),
    )
    .expect("write key");
    let file = tmp.0.join("tokengate.toml");
    std::fs::write(
        &file,
        format!(
            "{HEAD}[identity]\nsigning_key = \"keys/id.pem\"\nprevious_keys = [\"keys/old.pem\"]\n"
        ),
    )
    .expect("write config");
    let c = load_file(&file).expect("valid").config;
    assert_eq!(c.identity.signing_key, Some(tmp.0.join("keys/id.pem")));
    assert_eq!(c.identity.previous_keys, vec![tmp.0.join("keys/old.pem")]);
    // load_str resolves the same way, without touching the filesystem.
    let c = load_str(
        &file,
        &format!("{HEAD}[identity]\nsigning_key = \"nope.pem\"\n"),
        &no_env,
    )
    .expect("valid")
    .config;
    assert_eq!(c.identity.signing_key, Some(tmp.0.join("nope.pem")));
}

#[test]
fn missing_referenced_files_are_reported_at_their_keys() {
    let tmp = TempDir::new("missing");
    std::fs::write(tmp.0.join("cert.pem"), "pem").expect("write cert");
    let file = tmp.0.join("tokengate.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:1\"\n[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n[upstream]\nurl = \"https://a\"\nca_file = \"keys\"\n",
    )
    .expect("write config");
    let problems = load_file(&file).expect_err("invalid");
    let key = tmp.0.join("key.pem").display().to_string();
    let dir = tmp.0.join("keys").display().to_string();
    let cert = tmp.0.join("cert.pem").display().to_string();
    assert_eq!(problems.len(), 3, "{:?}", lines(&problems));
    // A file that exists but holds no certificate is reported too (SPEC §2: "missing or invalid").
    assert_eq!(problems[0].line, 4);
    assert_eq!(problems[0].path, "server.tls.cert");
    assert_eq!(
        problems[0].message,
        format!("{cert:?}: holds no PEM certificate (BEGIN CERTIFICATE)")
    );
    assert_eq!(problems[1].line, 5);
    assert_eq!(problems[1].path, "server.tls.key");
    assert!(
        problems[1]
            .message
            .starts_with(&format!("cannot read {key:?}: ")),
        "{}",
        problems[1]
    );
    assert_eq!(
        problems[2].to_string(),
        format!(
            "{}:8: upstream.ca_file: {dir:?} is not a file",
            file.display()
        )
    );
}

#[test]
fn unreadable_config_file_is_one_problem() {
    let problems = load_file(Path::new("/nonexistent/tokengate.toml")).expect_err("invalid");
    assert_eq!(problems.len(), 1);
    assert!(problems[0]
        .to_string()
        .starts_with("/nonexistent/tokengate.toml:1: .: cannot read the configuration file: "));
}

#[test]
fn example_configurations_load() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for name in ["tokengate.toml", "minimal.toml", "orders-api.toml"] {
        match load_file(&dir.join(name)) {
            Ok(l) => assert!(l.warnings.is_empty(), "{name}: {:?}", lines(&l.warnings)),
            Err(p) => panic!("{name}:\n{}", lines(&p).join("\n")),
        }
    }
}

#[test]
fn orders_api_example_enforces_its_documented_policies() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/orders-api.toml");
    let l = match load_file(&file) {
        Ok(l) => l,
        Err(p) => panic!("orders-api.toml:\n{}", lines(&p).join("\n")),
    };
    assert!(l.warnings.is_empty(), "{:?}", lines(&l.warnings));
    let c = l.config;
    let ids: Vec<&str> = c.routes.iter().map(|r| &*r.id).collect();
    assert_eq!(ids, ["health", "orders-read", "orders-write", "admin"]);
    assert!(c.issuers[0].issuer.starts_with("https://"));
    assert_eq!(c.issuers[0].audiences, ["orders-api"]);
    let host = crate::route::host::Host::parse("api.example.com").unwrap();
    let route = |path: &str, method: http::Method| {
        c.routes
            .iter()
            .find(|r| crate::route::matches(r, path, &method, Some(&host)))
            .map(|r| (&*r.id, &r.policy))
    };
    let decide = |path: &str, method: http::Method, value: serde_json::Value| {
        let (_, policy) = route(path, method).expect("a route matches");
        policy.evaluate(&claims(value))
    };
    use http::Method as M;
    use Decision::{AccessDenied, Allow, InsufficientScope};

    let health = c
        .routes
        .iter()
        .find(|r| &*r.id == "health")
        .expect("health");
    assert_eq!(health.auth, AuthMode::Public);
    assert!(health.policy.is_empty());
    assert_eq!(route("/healthz", M::GET).map(|r| r.0), Some("health"));

    assert_eq!(route("/orders/7", M::GET).map(|r| r.0), Some("orders-read"));
    assert_eq!(
        decide("/orders", M::GET, json!({"scope": "orders:read"})),
        Allow
    );
    assert_eq!(
        decide("/orders/7", M::GET, json!({"scp": ["orders:read"]})),
        Allow
    );
    assert_eq!(
        decide("/orders", M::GET, json!({"scope": "orders:write"})),
        InsufficientScope
    );

    for method in [M::POST, M::PUT, M::PATCH, M::DELETE] {
        assert_eq!(
            route("/orders/7", method.clone()).map(|r| r.0),
            Some("orders-write")
        );
        let verified = json!({"scope": "orders:write", "email_verified": true});
        assert_eq!(decide("/orders/7", method.clone(), verified), Allow);
        let as_string = json!({"scope": "orders:write", "email_verified": "true"});
        assert_eq!(decide("/orders/7", method.clone(), as_string), AccessDenied);
        let reader = json!({"scope": "orders:read", "email_verified": true});
        assert_eq!(decide("/orders/7", method, reader), InsufficientScope);
    }
    let (_, write) = route("/orders", M::POST).expect("orders-write");
    assert_eq!(write.scope_challenge(), "orders:write");
    assert!(route("/orders", M::OPTIONS).is_none());

    for who in [
        json!({"groups": ["staff", "admin"]}),
        json!({"realm_access": {"roles": ["ops"]}}),
        json!({"realm_access": {"roles": ["admin"]}}),
        json!({"client_id": "svc-billing", "scope": "billing"}),
    ] {
        assert_eq!(
            decide("/admin/users", M::DELETE, who.clone()),
            Allow,
            "{who}"
        );
    }
    for who in [
        json!({"groups": ["staff"], "realm_access": {"roles": ["user"]}}),
        json!({"client_id": "svc-billing"}),
        json!({"client_id": "svc-other", "scope": "billing"}),
        json!({"groups": "admin-team"}),
        json!({}),
    ] {
        assert_eq!(decide("/admin", M::GET, who.clone()), AccessDenied, "{who}");
    }
}

#[test]
fn summary_lists_listeners_issuers_and_routes() {
    let s = summary(&config(SPEC_EXAMPLE));
    assert_eq!(
        s,
        "listen   0.0.0.0:8080 (TLS off)\n\
         admin    127.0.0.1:9901\n\
         upstream http://127.0.0.1:3000\n\
         issuer   corp: https://idp.example.com/\n\
         routes   2\n  \
         health: path /healthz, any method, auth public\n  \
         orders-write: prefix /orders, POST,PUT,PATCH,DELETE, auth required\n"
    );
}

// --- the static key table stays in step with the serde schema --------------------------------

mod schema {
    use serde::de::{self, Deserialize, Visitor};
    use serde::forward_to_deserialize_any;

    use super::super::raw::{self, Shape, KNOWN};

    #[derive(Debug)]
    struct Fields(&'static [&'static str]);

    impl std::fmt::Display for Fields {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }
    impl std::error::Error for Fields {}
    impl de::Error for Fields {
        fn custom<T: std::fmt::Display>(_: T) -> Self {
            Fields(&[])
        }
    }

    /// A deserializer that only records the field names a struct asks for.
    struct Capture;

    impl<'de> de::Deserializer<'de> for Capture {
        type Error = Fields;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
            Err(Fields(&[]))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Fields> {
            Err(Fields(fields))
        }
        forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    fn serde_fields<'de, T: Deserialize<'de>>() -> Vec<&'static str> {
        match T::deserialize(Capture) {
            Ok(_) => Vec::new(),
            Err(Fields(f)) => f.to_vec(),
        }
    }

    fn known(path: &[&str]) -> Vec<&'static str> {
        let mut fields: &[(&str, Shape)] = KNOWN;
        for step in path {
            fields = match fields.iter().find(|(n, _)| n == step) {
                Some((_, Shape::Table(f) | Shape::Tables(f))) => f,
                _ => panic!("no table {step} in KNOWN"),
            };
        }
        fields.iter().map(|(n, _)| *n).collect()
    }

    #[test]
    fn known_keys_match_the_serde_structs() {
        assert_eq!(known(&[]), serde_fields::<raw::RawConfig>());
        assert_eq!(known(&["server"]), serde_fields::<raw::RawServer>());
        assert_eq!(known(&["server", "tls"]), serde_fields::<raw::RawTls>());
        assert_eq!(known(&["admin"]), serde_fields::<raw::RawAdmin>());
        assert_eq!(known(&["upstream"]), serde_fields::<raw::RawUpstream>());
        assert_eq!(known(&["issuer"]), serde_fields::<raw::RawIssuer>());
        assert_eq!(
            known(&["issuer", "introspection"]),
            serde_fields::<raw::RawIntrospection>()
        );
        assert_eq!(known(&["dpop"]), serde_fields::<raw::RawDpop>());
        assert_eq!(known(&["userinfo"]), serde_fields::<raw::RawUserinfo>());
        assert_eq!(known(&["identity"]), serde_fields::<raw::RawIdentity>());
        assert_eq!(known(&["telemetry"]), serde_fields::<raw::RawTelemetry>());
        assert_eq!(known(&["route"]), serde_fields::<raw::RawRoute>());
        assert_eq!(
            known(&["route", "claims"]),
            serde_fields::<raw::ClaimRule>()
        );
        assert_eq!(known(&["route", "any_of"]), serde_fields::<raw::AnyOf>());
        assert_eq!(
            known(&["route", "any_of", "claims"]),
            serde_fields::<raw::ClaimRule>()
        );
    }
}

#[test]
fn public_base_url_and_introspection_load_without_warnings() {
    // Both are in effect (DPoP `htu`, opaque tokens): `check` has nothing to warn about.
    let text =
        "[server]\nlisten = \"127.0.0.1:8080\"\npublic_base_url = \"https://api.example.com\"\n\
                [upstream]\nurl = \"http://127.0.0.1:3000\"\n[[issuer]]\nid = \"corp\"\n\
                issuer = \"https://idp.example.com/\"\naudiences = [\"api\"]\n\
                [issuer.introspection]\nclient_id = \"tg\"\nclient_secret = \"s\"\n";
    let loaded = load_str(Path::new("t.toml"), text, &no_env).expect("valid");
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        loaded.config.server.public_base_url.as_deref(),
        Some("https://api.example.com")
    );
    assert!(loaded.config.issuers[0].introspection.is_some());
}

// --- [telemetry] -----------------------------------------------------------------------------

#[test]
fn telemetry_is_absent_unless_configured() {
    assert_eq!(config(HEAD).telemetry, None);
}

#[test]
fn telemetry_defaults_and_endpoint_normalization() {
    let c = config(&with_head(
        "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318/\"\n",
    ));
    let t = c.telemetry.expect("telemetry");
    assert_eq!(t.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318"));
    assert_eq!(
        t.traces_url().as_deref(),
        Some("http://127.0.0.1:4318/v1/traces")
    );
    assert_eq!(t.service_name, "tokengate");
    assert_eq!(t.sample_ratio, 1.0);
}

#[test]
fn telemetry_keys_are_read() {
    let c = config(&with_head(
        "[telemetry]\notlp_endpoint = \"https://otel.example.com/otlp\"\nservice_name = \"edge-gw\"\nsample_ratio = 0.25\n",
    ));
    let t = c.telemetry.expect("telemetry");
    assert_eq!(
        t.traces_url().as_deref(),
        Some("https://otel.example.com/otlp/v1/traces"),
        "a path prefix is kept"
    );
    assert_eq!(t.service_name, "edge-gw");
    assert_eq!(t.sample_ratio, 0.25);
}

#[test]
fn telemetry_without_endpoint_only_samples() {
    let c = config(&with_head("[telemetry]\nsample_ratio = 0\n"));
    let t = c.telemetry.expect("telemetry");
    assert_eq!(t.otlp_endpoint, None);
    assert_eq!(t.traces_url(), None);
    assert_eq!(t.sample_ratio, 0.0, "an integer is accepted");
}

#[test]
fn telemetry_endpoint_must_be_an_http_base_url() {
    let cases = [
        (
            "grpc://collector:4317",
            "\"grpc://collector:4317\" has scheme \"grpc\"; expected http or https",
        ),
        (
            "collector:4318",
            "\"collector:4318\" is not an absolute URL (did you mean \"http://collector:4318\"?)",
        ),
        (
            "http://collector:4318/?x=1",
            "\"http://collector:4318/?x=1\" has a query; give the collector's base URL such as \"http://127.0.0.1:4318\" (spans are POSTed to <otlp_endpoint>/v1/traces)",
        ),
        (
            "http://user:pw@collector:4318",
            "\"http://user:pw@collector:4318\" has user info; credentials do not belong in the URL",
        ),
        ("http://collector:4318#f", "\"http://collector:4318#f\" has a fragment"),
        ("", "invalid URL \"\": empty string"),
    ];
    for (url, message) in cases {
        let text = with_head(&format!("[telemetry]\notlp_endpoint = \"{url}\"\n"));
        assert_eq!(
            error(&text),
            format!("t.toml:6: telemetry.otlp_endpoint: {message}"),
            "{url}"
        );
    }
}

#[test]
fn sample_ratio_out_of_range_is_an_error() {
    for (value, shown) in [("1.5", "1.5"), ("-0.1", "-0.1"), ("nan", "NaN"), ("2", "2")] {
        let text = with_head(&format!("[telemetry]\nsample_ratio = {value}\n"));
        assert_eq!(
            error(&text),
            format!("t.toml:6: telemetry.sample_ratio: must be between 0.0 and 1.0, found {shown}"),
        );
    }
}

#[test]
fn telemetry_problems_are_all_reported_with_their_lines() {
    let text = with_head(
        "[telemetry]\notlp_endpoint = \"ftp://x\"\nservice_name = \"\"\nsample_ratio = 3.0\nsample_rate = 0.5\n",
    );
    assert_eq!(
        errors(&text),
        vec![
            "t.toml:6: telemetry.otlp_endpoint: \"ftp://x\" has scheme \"ftp\"; expected http or https",
            "t.toml:7: telemetry.service_name: must not be empty",
            "t.toml:8: telemetry.sample_ratio: must be between 0.0 and 1.0, found 3",
            "t.toml:9: telemetry.sample_rate: unknown key (did you mean \"sample_ratio\"?)",
        ]
    );
}

#[test]
fn telemetry_type_errors_point_at_the_key() {
    let text = with_head("[telemetry]\nsample_ratio = \"0.5\"\n");
    let e = error(&text);
    assert!(
        e.starts_with("t.toml:6: telemetry.sample_ratio: invalid type: string \"0.5\""),
        "{e}"
    );
    assert_eq!(
        error(&format!("telemetry = 1\n{HEAD}")),
        "t.toml:1: telemetry: invalid type: integer `1`, expected a table"
    );
    // Written after another table, the key is known to belong at the top.
    assert!(error(&with_head("telemetry = 1\n")).contains("\"telemetry\" is a top-level key"));
}

#[test]
fn an_endpoint_that_already_names_v1_traces_is_warned_about() {
    let l = loaded(&with_head(
        "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\n",
    ));
    let warnings = lines(&l.warnings);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(
            "t.toml:6: telemetry.otlp_endpoint: spans are POSTed to http://127.0.0.1:4318/v1/traces/v1/traces"
        ),
        "{warnings:?}"
    );
}

#[test]
fn the_annotated_telemetry_block_loads_when_uncommented() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokengate.toml");
    let text = std::fs::read_to_string(&file).expect("config/tokengate.toml");
    let keys = [
        "[telemetry]",
        "otlp_endpoint",
        "service_name",
        "sample_ratio",
    ];
    let uncommented: String = text
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if keys.iter().any(|k| rest.starts_with(k)) => format!("{rest}\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    let t = config(&uncommented)
        .telemetry
        .expect("the [telemetry] block");
    assert_eq!(
        t.traces_url().as_deref(),
        Some("http://127.0.0.1:4318/v1/traces")
    );
    assert_eq!(t.service_name, "tokengate");
    assert_eq!(t.sample_ratio, 1.0);
}
