//! Tests of route policies: one table per operator (each row a rule, the claims, and whether the
//! rule holds), then scopes, `any_of`, the decision order, and what `compile` rejects.
//!
//! Policies are written as TOML, exactly as in a route, so the tests also cover the conversion
//! of TOML values into the JSON a claim is compared with.

use serde::Deserialize;
use serde_json::{json, Value};

use super::*;

/// A route's policy keys, as written in `[[route]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutePolicy {
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    claims: Vec<raw::ClaimRule>,
    #[serde(default)]
    any_of: Vec<raw::AnyOf>,
}

fn parse(text: &str) -> RoutePolicy {
    match toml::from_str(text) {
        Ok(p) => p,
        Err(e) => panic!("test policy does not parse: {e}\n{text}"),
    }
}

fn compile(text: &str) -> Result<Policy, Vec<(String, String)>> {
    let p = parse(text);
    Policy::compile(&p.scopes, &p.claims, &p.any_of)
}

fn policy(text: &str) -> Policy {
    match compile(text) {
        Ok(p) => p,
        Err(problems) => panic!("test policy does not compile: {problems:?}\n{text}"),
    }
}

fn claims(value: Value) -> Claims {
    match value {
        Value::Object(map) => map,
        other => panic!("test claims must be an object, got {other}"),
    }
}

/// Each row: a rule's keys (inside `{ }`), the claims, whether the rule holds. Every failing row
/// is reported, not only the first.
fn check_rules(rows: &[(&str, Value, bool)]) {
    let mut failures = Vec::new();
    for (rule, value, expected) in rows {
        let p = policy(&format!("claims = [{{ {rule} }}]"));
        let holds = match p.evaluate(&claims(value.clone())) {
            Decision::Allow => true,
            Decision::AccessDenied => false,
            Decision::InsufficientScope => panic!("a rule-only policy asked for scopes"),
        };
        if holds != *expected {
            failures.push(format!("{{ {rule} }} on {value}: expected {expected}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// --- operators ---------------------------------------------------------------------------------

#[test]
fn equals_compares_as_json_with_types_that_must_agree() {
    check_rules(&[
        (r#"claim = "v", equals = true"#, json!({"v": true}), true),
        (r#"claim = "v", equals = true"#, json!({"v": false}), false),
        (r#"claim = "v", equals = true"#, json!({"v": "true"}), false),
        (r#"claim = "v", equals = "true""#, json!({"v": true}), false),
        (
            r#"claim = "v", equals = "Admin""#,
            json!({"v": "Admin"}),
            true,
        ),
        (
            r#"claim = "v", equals = "Admin""#,
            json!({"v": "admin"}),
            false,
        ),
        (r#"claim = "v", equals = "x""#, json!({"v": ["x"]}), false),
        (r#"claim = "v", equals = 0"#, json!({"v": false}), false),
        (r#"claim = "v", equals = """#, json!({"v": ""}), true),
        (r#"claim = "v", equals = """#, json!({"v": null}), false),
        (r#"claim = "v", equals = "x""#, json!({}), false),
        (r#"claim = "v", equals = "x""#, json!({"v": null}), false),
    ]);
}

#[test]
fn equals_compares_numbers_by_value_and_never_with_strings() {
    check_rules(&[
        (r#"claim = "n", equals = 1"#, json!({"n": 1}), true),
        (r#"claim = "n", equals = 1"#, json!({"n": 1.0}), true),
        (r#"claim = "n", equals = 1.0"#, json!({"n": 1}), true),
        (r#"claim = "n", equals = 1.0"#, json!({"n": 1.0}), true),
        (r#"claim = "n", equals = 1"#, json!({"n": "1"}), false),
        (r#"claim = "n", equals = "1""#, json!({"n": 1}), false),
        (r#"claim = "n", equals = 1"#, json!({"n": 1.5}), false),
        (r#"claim = "n", equals = 1"#, json!({"n": true}), false),
        (r#"claim = "n", equals = 1.5"#, json!({"n": 1.5}), true),
        (r#"claim = "n", equals = 0"#, json!({"n": -0.0}), true),
        (r#"claim = "n", equals = -3"#, json!({"n": -3.0}), true),
        // Large integers compare exactly, never through f64 rounding.
        (
            r#"claim = "n", equals = 9007199254740993"#,
            json!({"n": 9_007_199_254_740_993_i64}),
            true,
        ),
        (
            r#"claim = "n", equals = 9007199254740993"#,
            json!({"n": 9_007_199_254_740_992.0}),
            false,
        ),
        (
            r#"claim = "n", equals = 9223372036854775807"#,
            json!({"n": i64::MAX}),
            true,
        ),
        (r#"claim = "n", equals = -1"#, json!({"n": u64::MAX}), false),
    ]);
}

#[test]
fn equals_compares_arrays_and_tables_structurally() {
    check_rules(&[
        (
            r#"claim = "a", equals = [1, "x"]"#,
            json!({"a": [1, "x"]}),
            true,
        ),
        (
            r#"claim = "a", equals = [1, "x"]"#,
            json!({"a": [1.0, "x"]}),
            true,
        ),
        (
            r#"claim = "a", equals = [1, "x"]"#,
            json!({"a": ["x", 1]}),
            false,
        ),
        (
            r#"claim = "a", equals = [1, "x"]"#,
            json!({"a": [1, "x", 2]}),
            false,
        ),
        (
            r#"claim = "a", equals = [1, "x"]"#,
            json!({"a": [1]}),
            false,
        ),
        (
            r#"claim = "a", equals = [[1, 2], [3]]"#,
            json!({"a": [[1, 2], [3]]}),
            true,
        ),
        (
            r#"claim = "a", equals = [[1, 2], [3]]"#,
            json!({"a": [[1, 2, 3]]}),
            false,
        ),
        (r#"claim = "a", equals = []"#, json!({"a": []}), true),
        (r#"claim = "a", equals = []"#, json!({"a": {}}), false),
        (
            r#"claim = "t", equals = { id = 1, tags = [true] }"#,
            json!({"t": {"tags": [true], "id": 1.0}}),
            true,
        ),
        (
            r#"claim = "t", equals = { id = 1, tags = [true] }"#,
            json!({"t": {"tags": [true], "id": 1, "more": 0}}),
            false,
        ),
        (
            r#"claim = "t", equals = { id = 1, tags = [true] }"#,
            json!({"t": {"tags": ["true"], "id": 1}}),
            false,
        ),
        (
            r#"claim = "t", equals = { id = 1 }"#,
            json!({"t": {"id": null}}),
            false,
        ),
    ]);
}

#[test]
fn one_of_holds_when_the_claim_equals_any_element() {
    check_rules(&[
        (
            r#"claim = "r", one_of = ["a", "b"]"#,
            json!({"r": "b"}),
            true,
        ),
        (
            r#"claim = "r", one_of = ["a", "b"]"#,
            json!({"r": "c"}),
            false,
        ),
        (
            r#"claim = "r", one_of = ["a", "b"]"#,
            json!({"r": ["a"]}),
            false,
        ),
        (
            r#"claim = "r", one_of = ["a", "b"]"#,
            json!({"r": "a b"}),
            false,
        ),
        (r#"claim = "r", one_of = ["a", "b"]"#, json!({}), false),
        (
            r#"claim = "r", one_of = ["a", "b"]"#,
            json!({"r": null}),
            false,
        ),
        (r#"claim = "r", one_of = [1, "2"]"#, json!({"r": 1.0}), true),
        (r#"claim = "r", one_of = [1, "2"]"#, json!({"r": "2"}), true),
        (r#"claim = "r", one_of = [1, "2"]"#, json!({"r": 2}), false),
        (
            r#"claim = "r", one_of = [1, "2"]"#,
            json!({"r": "1"}),
            false,
        ),
        (
            r#"claim = "r", one_of = [1, "2"]"#,
            json!({"r": true}),
            false,
        ),
        (
            r#"claim = "r", one_of = [[1, 2], false]"#,
            json!({"r": [1, 2]}),
            true,
        ),
        (
            r#"claim = "r", one_of = [[1, 2], false]"#,
            json!({"r": false}),
            true,
        ),
        (
            r#"claim = "r", one_of = [[1, 2], false]"#,
            json!({"r": [2, 1]}),
            false,
        ),
    ]);
}

#[test]
fn contains_reads_arrays_and_whitespace_separated_strings() {
    check_rules(&[
        (
            r#"claim = "g", contains = "admin""#,
            json!({"g": ["user", "admin"]}),
            true,
        ),
        (
            r#"claim = "g", contains = "admin""#,
            json!({"g": ["administrator"]}),
            false,
        ),
        (
            r#"claim = "g", contains = "admin""#,
            json!({"g": []}),
            false,
        ),
        (
            r#"claim = "g", contains = "admin""#,
            json!({"g": "user admin"}),
            true,
        ),
        (
            r#"claim = "g", contains = "admin""#,
            json!({"g": " \tadmin\n"}),
            true,
        ),
        (
            r#"claim = "g", contains = "admin""#,
            json!({"g": "admin"}),
            true,
        ),
        (
            r#"claim = "g", contains = "admin""#,
            json!({"g": "administrator"}),
            false,
        ),
        (
            r#"claim = "g", contains = "admin""#,
            json!({"g": "user,admin"}),
            false,
        ),
        (
            r#"claim = "g", contains = "admin""#,
            json!({"g": ""}),
            false,
        ),
        (
            r#"claim = "g", contains = "admin""#,
            json!({"g": {"admin": true}}),
            false,
        ),
        (r#"claim = "g", contains = "admin""#, json!({"g": 5}), false),
        (r#"claim = "g", contains = "admin""#, json!({}), false),
        (
            r#"claim = "g", contains = "admin""#,
            json!({"g": null}),
            false,
        ),
        (
            r#"claim = "g", contains = "admin""#,
            json!({"g": [null, "admin"]}),
            true,
        ),
        // Elements compare as in `equals`.
        (r#"claim = "g", contains = 1"#, json!({"g": [1.0, 2]}), true),
        (r#"claim = "g", contains = 1"#, json!({"g": ["1"]}), false),
        (r#"claim = "g", contains = 1"#, json!({"g": "1 2"}), false),
        (
            r#"claim = "g", contains = true"#,
            json!({"g": [true]}),
            true,
        ),
        (
            r#"claim = "g", contains = true"#,
            json!({"g": ["true"]}),
            false,
        ),
        (
            r#"claim = "g", contains = true"#,
            json!({"g": "true"}),
            false,
        ),
        // Nested arrays: an element that is itself an array.
        (
            r#"claim = "g", contains = [1, 2]"#,
            json!({"g": [[1, 2], [3]]}),
            true,
        ),
        (
            r#"claim = "g", contains = [1, 2]"#,
            json!({"g": [1, 2]}),
            false,
        ),
        (
            r#"claim = "g", contains = "x""#,
            json!({"g": [["x"]]}),
            false,
        ),
        (
            r#"claim = "g", contains = { id = 7 }"#,
            json!({"g": [{"id": 7}]}),
            true,
        ),
    ]);
}

#[test]
fn contains_any_needs_one_element_and_contains_all_needs_every_one() {
    check_rules(&[
        (
            r#"claim = "r", contains_any = ["admin", "ops"]"#,
            json!({"r": ["ops"]}),
            true,
        ),
        (
            r#"claim = "r", contains_any = ["admin", "ops"]"#,
            json!({"r": ["dev", "admin"]}),
            true,
        ),
        (
            r#"claim = "r", contains_any = ["admin", "ops"]"#,
            json!({"r": "dev ops"}),
            true,
        ),
        (
            r#"claim = "r", contains_any = ["admin", "ops"]"#,
            json!({"r": ["dev"]}),
            false,
        ),
        (
            r#"claim = "r", contains_any = ["admin", "ops"]"#,
            json!({"r": []}),
            false,
        ),
        (
            r#"claim = "r", contains_any = ["admin", "ops"]"#,
            json!({"r": ""}),
            false,
        ),
        (
            r#"claim = "r", contains_any = ["admin", "ops"]"#,
            json!({"r": "admin-ops"}),
            false,
        ),
        (
            r#"claim = "r", contains_any = ["admin", "ops"]"#,
            json!({"r": "ops"}),
            true,
        ),
        (
            r#"claim = "r", contains_any = ["admin", "ops"]"#,
            json!({}),
            false,
        ),
        (
            r#"claim = "r", contains_any = ["admin", "ops"]"#,
            json!({"r": null}),
            false,
        ),
        (
            r#"claim = "r", contains_any = [1, "1"]"#,
            json!({"r": [1.0]}),
            true,
        ),
        (
            r#"claim = "r", contains_any = [1, "1"]"#,
            json!({"r": "1"}),
            true,
        ),
        (
            r#"claim = "r", contains_any = [2]"#,
            json!({"r": ["2"]}),
            false,
        ),
        (
            r#"claim = "r", contains_all = ["a", "b"]"#,
            json!({"r": ["b", "c", "a"]}),
            true,
        ),
        (
            r#"claim = "r", contains_all = ["a", "b"]"#,
            json!({"r": ["a"]}),
            false,
        ),
        (
            r#"claim = "r", contains_all = ["a", "b"]"#,
            json!({"r": "a\nb"}),
            true,
        ),
        (
            r#"claim = "r", contains_all = ["a", "b"]"#,
            json!({"r": "ab"}),
            false,
        ),
        (
            r#"claim = "r", contains_all = ["a", "b"]"#,
            json!({"r": "a a"}),
            false,
        ),
        (
            r#"claim = "r", contains_all = ["a", "b"]"#,
            json!({"r": [["a", "b"]]}),
            false,
        ),
        (
            r#"claim = "r", contains_all = ["a", "b"]"#,
            json!({}),
            false,
        ),
        (
            r#"claim = "r", contains_all = ["a", "b"]"#,
            json!({"r": null}),
            false,
        ),
        (
            r#"claim = "r", contains_all = [1, true]"#,
            json!({"r": [true, 1.0]}),
            true,
        ),
        (
            r#"claim = "r", contains_all = [1, true]"#,
            json!({"r": [true, "1"]}),
            false,
        ),
    ]);
}

#[test]
fn matches_is_anchored_to_the_whole_string() {
    check_rules(&[
        (r#"claim = "s", matches = "adm""#, json!({"s": "adm"}), true),
        (
            r#"claim = "s", matches = "adm""#,
            json!({"s": "admin"}),
            false,
        ),
        (
            r#"claim = "s", matches = "adm""#,
            json!({"s": "badm"}),
            false,
        ),
        (
            r#"claim = "s", matches = "adm.*""#,
            json!({"s": "admin"}),
            true,
        ),
        (
            r#"claim = "s", matches = "adm.*""#,
            json!({"s": "xadmin"}),
            false,
        ),
        // The anchors hold for every alternative, not only the first and last.
        (r#"claim = "s", matches = "a|b""#, json!({"s": "a"}), true),
        (r#"claim = "s", matches = "a|b""#, json!({"s": "b"}), true),
        (r#"claim = "s", matches = "a|b""#, json!({"s": "ab"}), false),
        (r#"claim = "s", matches = "a|b""#, json!({"s": "xb"}), false),
        (r#"claim = "s", matches = "a|b""#, json!({"s": "ax"}), false),
        // A trailing newline is not the end; in-pattern flags stay inside the pattern.
        (r#"claim = "s", matches = "a""#, json!({"s": "a\n"}), false),
        (
            r#"claim = "s", matches = "(?m)a""#,
            json!({"s": "a\nb"}),
            false,
        ),
        (
            r#"claim = "s", matches = "(?i)ADMIN""#,
            json!({"s": "admin"}),
            true,
        ),
        (
            r#"claim = "s", matches = "^svc-[a-z]+$""#,
            json!({"s": "svc-billing"}),
            true,
        ),
        (
            r#"claim = "e", matches = '[^@]+@example\.com'"#,
            json!({"e": "a@example.com"}),
            true,
        ),
        (
            r#"claim = "e", matches = '[^@]+@example\.com'"#,
            json!({"e": "a@example.com.evil"}),
            false,
        ),
        (r#"claim = "s", matches = "5""#, json!({"s": 5}), false),
        (
            r#"claim = "s", matches = "admin""#,
            json!({"s": ["admin"]}),
            false,
        ),
        (
            r#"claim = "s", matches = "true""#,
            json!({"s": true}),
            false,
        ),
        (r#"claim = "s", matches = ".*""#, json!({"s": ""}), true),
        (r#"claim = "s", matches = ".*""#, json!({}), false),
        (r#"claim = "s", matches = ".*""#, json!({"s": null}), false),
    ]);
}

#[test]
fn exists_treats_null_as_absent() {
    check_rules(&[
        (r#"claim = "x", exists = true"#, json!({"x": "v"}), true),
        (r#"claim = "x", exists = true"#, json!({"x": ""}), true),
        (r#"claim = "x", exists = true"#, json!({"x": false}), true),
        (r#"claim = "x", exists = true"#, json!({"x": 0}), true),
        (r#"claim = "x", exists = true"#, json!({"x": []}), true),
        (r#"claim = "x", exists = true"#, json!({"x": null}), false),
        (r#"claim = "x", exists = true"#, json!({}), false),
        (r#"claim = "x", exists = false"#, json!({}), true),
        (r#"claim = "x", exists = false"#, json!({"x": null}), true),
        (r#"claim = "x", exists = false"#, json!({"x": false}), false),
        (r#"claim = "x", exists = false"#, json!({"x": ""}), false),
    ]);
}

#[test]
fn json_pointer_claims_reach_into_nested_claims() {
    let nested = json!({
        "realm_access": {"roles": ["user", "ops"]},
        "https://example.com/tenant": "acme",
        "a~b": 1,
        "": "empty",
        "arr": ["x", "y"],
        "realm_access/roles": ["flat"],
    });
    check_rules(&[
        (
            r#"claim = "/realm_access/roles", contains = "ops""#,
            nested.clone(),
            true,
        ),
        (
            r#"claim = "/realm_access/roles", contains = "admin""#,
            nested.clone(),
            false,
        ),
        (
            r#"claim = "/realm_access/roles/1", equals = "ops""#,
            nested.clone(),
            true,
        ),
        (
            r#"claim = "/https:~1~1example.com~1tenant", equals = "acme""#,
            nested.clone(),
            true,
        ),
        (r#"claim = "/a~0b", equals = 1"#, nested.clone(), true),
        (r#"claim = "/", equals = "empty""#, nested.clone(), true),
        (r#"claim = "/arr/0", equals = "x""#, nested.clone(), true),
        (r#"claim = "/arr/01", exists = true"#, nested.clone(), false),
        (r#"claim = "/arr/5", exists = false"#, nested.clone(), true),
        (r#"claim = "/arr/-", exists = true"#, nested.clone(), false),
        (
            r#"claim = "/realm_access/missing", exists = false"#,
            nested.clone(),
            true,
        ),
        (
            r#"claim = "/realm_access/roles/0/x", exists = false"#,
            nested.clone(),
            true,
        ),
        (
            r#"claim = "/nothing/roles", contains = "ops""#,
            nested.clone(),
            false,
        ),
        // Without the leading "/", the name is a top-level claim, slashes and all.
        (
            r#"claim = "realm_access/roles", contains = "flat""#,
            nested.clone(),
            true,
        ),
        (
            r#"claim = "realm_access/roles", contains = "ops""#,
            nested.clone(),
            false,
        ),
        (
            r#"claim = "/realm_access/roles", contains = "ops""#,
            json!({"realm_access": "ops"}),
            false,
        ),
        (
            r#"claim = "/realm_access/roles", contains = "ops""#,
            json!({"realm_access": {"roles": null}}),
            false,
        ),
        (
            r#"claim = "/realm_access/roles", exists = false"#,
            json!({"realm_access": {"roles": null}}),
            true,
        ),
    ]);
}

// --- scopes ------------------------------------------------------------------------------------

#[test]
fn scopes_come_from_scope_when_present_else_from_scp() {
    let p = policy(r#"scopes = ["orders:read", "orders:write"]"#);
    let rows = [
        (json!({"scope": "orders:read orders:write"}), true),
        (json!({"scope": "orders:write  x\torders:read\n"}), true),
        (json!({"scope": "orders:read"}), false),
        (json!({"scope": "orders:readorders:write"}), false),
        (json!({"scope": "ORDERS:READ ORDERS:WRITE"}), false),
        (json!({"scope": ""}), false),
        (json!({"scp": ["orders:write", "orders:read"]}), true),
        (json!({"scp": ["orders:read"]}), false),
        (json!({"scp": ["orders:read orders:write"]}), false),
        (json!({"scp": "orders:read orders:write"}), true),
        (
            json!({"scp": ["orders:read", 7, null, "orders:write"]}),
            true,
        ),
        (
            json!({"scp": {"orders:read": true, "orders:write": true}}),
            false,
        ),
        // `scope` wins when both are present, in either direction.
        (
            json!({"scope": "orders:read", "scp": ["orders:read", "orders:write"]}),
            false,
        ),
        (
            json!({"scope": "orders:read orders:write", "scp": []}),
            true,
        ),
        // A null `scope` counts as absent; a `scope` of another type grants nothing.
        (
            json!({"scope": null, "scp": ["orders:read", "orders:write"]}),
            true,
        ),
        (json!({"scope": ["orders:read", "orders:write"]}), false),
        (
            json!({"scope": ["orders:read"], "scp": ["orders:read", "orders:write"]}),
            false,
        ),
        (
            json!({"scope": 1, "scp": "orders:read orders:write"}),
            false,
        ),
        (json!({"scopes": "orders:read orders:write"}), false),
        (json!({}), false),
    ];
    let mut failures = Vec::new();
    for (value, allowed) in rows {
        let expected = if allowed {
            Decision::Allow
        } else {
            Decision::InsufficientScope
        };
        let got = p.evaluate(&claims(value.clone()));
        if got != expected {
            failures.push(format!("{value}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn scope_challenge_lists_the_routes_own_scopes_in_order() {
    let p = policy("scopes = [\"b\", \"a\"]\n[[any_of]]\nscopes = [\"c\"]\n");
    assert_eq!(p.scope_challenge(), "b a");
    assert_eq!(p.scopes(), ["b", "a"]);
    assert_eq!(
        policy("claims = [{ claim = \"x\", exists = true }]").scope_challenge(),
        ""
    );
}

#[test]
fn an_empty_policy_allows_every_verified_caller() {
    let p = policy("");
    assert!(p.is_empty());
    assert_eq!(p.evaluate(&claims(json!({}))), Decision::Allow);
    assert!(Policy::default().is_empty());
    assert!(!policy("scopes = [\"a\"]").is_empty());
    assert!(!policy("claims = [{ claim = \"x\", exists = false }]").is_empty());
    assert!(!policy("[[any_of]]\nscopes = [\"a\"]\n").is_empty());
}

// --- decisions ---------------------------------------------------------------------------------

#[test]
fn a_missing_own_scope_is_insufficient_scope_before_anything_else() {
    let p = policy(
        r#"
scopes = ["orders:write"]
claims = [{ claim = "email_verified", equals = true }]
[[any_of]]
claims = [{ claim = "groups", contains = "admin" }]
"#,
    );
    let cases = [
        (json!({}), Decision::InsufficientScope),
        (
            json!({"email_verified": true, "groups": ["admin"]}),
            Decision::InsufficientScope,
        ),
        (json!({"scope": "orders:write"}), Decision::AccessDenied),
        (
            json!({"scope": "orders:write", "email_verified": true}),
            Decision::AccessDenied,
        ),
        (
            json!({"scope": "orders:write", "groups": ["admin"]}),
            Decision::AccessDenied,
        ),
        (
            json!({"scope": "orders:write", "email_verified": true, "groups": ["admin"]}),
            Decision::Allow,
        ),
    ];
    for (value, expected) in cases {
        assert_eq!(p.evaluate(&claims(value.clone())), expected, "{value}");
    }
}

#[test]
fn any_of_needs_one_block_to_hold_entirely() {
    let p = policy(
        r#"
[[any_of]]
claims = [{ claim = "groups", contains = "admin" }]
[[any_of]]
claims = [{ claim = "/realm_access/roles", contains_any = ["admin", "ops"] }]
[[any_of]]
scopes = ["billing"]
claims = [{ claim = "client_id", equals = "svc-billing" }]
"#,
    );
    let cases = [
        (json!({"groups": ["admin"]}), Decision::Allow),
        (json!({"realm_access": {"roles": ["ops"]}}), Decision::Allow),
        (
            json!({"client_id": "svc-billing", "scope": "billing"}),
            Decision::Allow,
        ),
        (
            json!({"client_id": "svc-billing", "scp": ["billing"]}),
            Decision::Allow,
        ),
        // A block's scopes are part of the block: missing them is access_denied, never
        // insufficient_scope (the route itself asks for no scope).
        (json!({"client_id": "svc-billing"}), Decision::AccessDenied),
        (json!({"scope": "billing"}), Decision::AccessDenied),
        (
            json!({"client_id": "svc-other", "scope": "billing"}),
            Decision::AccessDenied,
        ),
        (
            json!({"groups": ["staff"], "realm_access": {"roles": []}}),
            Decision::AccessDenied,
        ),
        (json!({}), Decision::AccessDenied),
    ];
    for (value, expected) in cases {
        assert_eq!(p.evaluate(&claims(value.clone())), expected, "{value}");
    }
}

#[test]
fn own_rules_and_any_of_must_both_hold() {
    let p = policy(
        r#"
claims = [{ claim = "tenant", equals = "acme" }, { claim = "email_verified", equals = true }]
[[any_of]]
scopes = ["a"]
[[any_of]]
scopes = ["b"]
claims = [{ claim = "level", one_of = [2, 3] }]
"#,
    );
    let base = |extra: Value| {
        let mut c = claims(json!({"tenant": "acme", "email_verified": true}));
        c.extend(claims(extra));
        c
    };
    assert_eq!(p.evaluate(&base(json!({"scope": "a"}))), Decision::Allow);
    assert_eq!(
        p.evaluate(&base(json!({"scope": "b", "level": 3}))),
        Decision::Allow
    );
    assert_eq!(
        p.evaluate(&base(json!({"scope": "b", "level": 1}))),
        Decision::AccessDenied
    );
    assert_eq!(
        p.evaluate(&base(json!({"level": 2}))),
        Decision::AccessDenied
    );
    let other_tenant = claims(json!({"tenant": "other", "email_verified": true, "scope": "a"}));
    assert_eq!(p.evaluate(&other_tenant), Decision::AccessDenied);
    let unverified = claims(json!({"tenant": "acme", "scope": "a"}));
    assert_eq!(p.evaluate(&unverified), Decision::AccessDenied);
}

// --- compiling ---------------------------------------------------------------------------------

fn problems(text: &str) -> Vec<(String, String)> {
    match compile(text) {
        Ok(_) => panic!("expected problems, the policy compiled:\n{text}"),
        Err(problems) => problems,
    }
}

fn problem(path: &str, message: &str) -> (String, String) {
    (path.to_owned(), message.to_owned())
}

const ONE_OPERATOR: &str = "needs exactly one operator (equals, one_of, contains, contains_any, contains_all, matches or exists)";

#[test]
fn compile_reports_every_problem_at_its_key_path() {
    let text = r#"
scopes = ["ok", "has space", ""]
claims = [
  { claim = "a" },
  { claim = "b", equals = 1, one_of = [1] },
  { claim = "c", one_of = [] },
  { claim = "c", contains_any = [] },
  { claim = "c", contains_all = [] },
  { claim = "d", matches = "(unclosed" },
  { claim = "/x~2y", exists = true },
  { equals = 1 },
  { claim = "e", equals = 1979-05-27 },
  { claim = "e", one_of = ["a", 1979-05-27T07:32:00Z] },
  { claim = "e", contains = [nan] },
  { claim = "e", contains_all = [1, inf] },
]
[[any_of]]
[[any_of]]
scopes = ["x\"y"]
claims = [{ claim = "f", matches = "a{2,1}", exists = true }]
"#;
    let datetime = "a TOML date-time has no JSON equivalent and would never equal a claim; quote it as a string";
    let non_finite =
        "nan and inf have no JSON equivalent and would never equal a claim; use a finite number";
    assert_eq!(
        problems(text),
        vec![
            problem(
                "scopes[1]",
                "\"has space\" is not a scope token (printable ASCII without spaces, '\"' or '\\')"
            ),
            problem(
                "scopes[2]",
                "\"\" is not a scope token (printable ASCII without spaces, '\"' or '\\')"
            ),
            problem(
                "claims[0]",
                &format!("the claim rule for \"a\" {ONE_OPERATOR}; found none")
            ),
            problem(
                "claims[1]",
                &format!("the claim rule for \"b\" {ONE_OPERATOR}; found equals and one_of")
            ),
            problem("claims[2].one_of", "must not be empty"),
            problem("claims[3].contains_any", "must not be empty"),
            problem("claims[4].contains_all", "must not be empty"),
            problem(
                "claims[5].matches",
                "invalid regular expression \"(unclosed\": unclosed group"
            ),
            problem(
                "claims[6].claim",
                "\"/x~2y\" is not a valid JSON Pointer: \"~\" must be followed by 0 or 1 (write ~0 for \"~\", ~1 for \"/\")"
            ),
            problem("claims[7].claim", "a claim rule needs a non-empty claim"),
            problem("claims[8].equals", datetime),
            problem("claims[9].one_of[1]", datetime),
            problem("claims[10].contains", non_finite),
            problem("claims[11].contains_all[1]", non_finite),
            problem(
                "any_of[0]",
                "an any_of block needs scopes or claims (an empty block always holds)"
            ),
            problem(
                "any_of[1].scopes[0]",
                "\"x\\\"y\" is not a scope token (printable ASCII without spaces, '\"' or '\\')"
            ),
            problem(
                "any_of[1].claims[0]",
                &format!("the claim rule for \"f\" {ONE_OPERATOR}; found matches and exists")
            ),
            problem(
                "any_of[1].claims[0].matches",
                "invalid regular expression \"a{2,1}\": invalid repetition count range, the start must be <= the end"
            ),
        ]
    );
}

#[test]
fn compile_accepts_every_operator_and_any_value_type() {
    let p = policy(
        r#"
scopes = ["a:b", "x!#$%&'()*+,-./:;<=>?@[]^_`{|}~"]
claims = [
  { claim = "s", equals = "x" },
  { claim = "i", equals = -1 },
  { claim = "f", equals = 2.5 },
  { claim = "b", equals = false },
  { claim = "a", equals = [1, [2], { k = "v" }] },
  { claim = "t", equals = { k = { n = 1 } } },
  { claim = "o", one_of = ["x", 1, true] },
  { claim = "c", contains = "x" },
  { claim = "y", contains_any = ["x"] },
  { claim = "z", contains_all = ["x"] },
  { claim = "m", matches = "" },
  { claim = "/p/~0/~1", exists = false },
]
"#,
    );
    assert_eq!(p.rules.len(), 12);
    assert_eq!(p.scopes.len(), 2);
}

#[test]
fn claim_path_parses_names_and_pointers() {
    assert_eq!(claim_path("sub"), Ok(ClaimPath::Name("sub".to_owned())));
    assert_eq!(
        claim_path("/realm_access/roles"),
        Ok(ClaimPath::Pointer(vec![
            "realm_access".to_owned(),
            "roles".to_owned()
        ]))
    );
    assert_eq!(
        claim_path("/https:~1~1example.com~1tenant"),
        Ok(ClaimPath::Pointer(vec![
            "https://example.com/tenant".to_owned()
        ]))
    );
    assert_eq!(
        claim_path("/~01"),
        Ok(ClaimPath::Pointer(vec!["~1".to_owned()]))
    );
    assert_eq!(
        claim_path("name~with~tildes"),
        Ok(ClaimPath::Name("name~with~tildes".to_owned()))
    );
    for bad in ["/a~", "/a~2", "/~a"] {
        assert!(
            claim_path(bad).is_err_and(|e| e.contains("is not a valid JSON Pointer")),
            "{bad}"
        );
    }
    assert_eq!(
        claim_path(""),
        Err("the claim name must not be empty".to_owned())
    );
}

// ---------------------------------------------------------------------------------------------
// Tracing (`evaluate_traced`, for `tokengate explain`)
// ---------------------------------------------------------------------------------------------

/// Records every check; `EVERY` chooses between explain's exhaustive walk and the request path's.
struct Recorder<const EVERY: bool>(Vec<String>);

impl<const E: bool> Observer for Recorder<E> {
    const EVERY: bool = E;
    fn check(&mut self, check: Check<'_, '_>) {
        self.0.push(match check {
            Check::Scope {
                block,
                scope,
                holds,
            } => format!("{block:?} scope {scope} {holds}"),
            Check::Rule {
                block,
                rule,
                value,
                holds,
            } => format!("{block:?} {rule} saw {value:?} {holds}"),
            Check::Block { index, holds } => format!("block {index} {holds}"),
        });
    }
}

const TRACED_POLICY: &str = r#"
scopes = ["a", "b"]
claims = [{ claim = "x", equals = 1 }]
[[any_of]]
claims = [{ claim = "g", contains = "admin" }]
[[any_of]]
scopes = ["c"]
claims = [{ claim = "/n/r", matches = "o.s" }]
"#;

#[test]
fn evaluating_every_check_decides_exactly_as_the_request_path() {
    let p = policy(TRACED_POLICY);
    let cases = [
        json!({}),
        json!({"scope": "a b", "x": 1}),
        json!({"scope": "a b", "x": 1, "g": ["admin"]}),
        json!({"scope": "a b c", "x": 1.0, "n": {"r": "ops"}}),
        json!({"scope": "a", "x": 1, "g": "admin"}),
        json!({"scope": "a b", "x": 2, "g": "admin"}),
        json!({"scp": ["a", "b", "c"], "x": 1, "n": {"r": "oxs"}}),
        json!({"scope": ["a", "b"], "scp": "a b", "x": 1, "g": ["admin"]}),
    ];
    for case in cases {
        let claims = claims(case.clone());
        let mut every = Recorder::<true>(Vec::new());
        let traced = p.evaluate_traced(&claims, &mut every);
        assert_eq!(traced, p.evaluate(&claims), "{case}");
        // 2 scopes, 1 rule, block 0 (1 rule + verdict), block 1 (1 scope, 1 rule, verdict).
        assert_eq!(every.0.len(), 8, "{case}: {:?}", every.0);
    }
}

#[test]
fn the_request_path_stops_at_the_first_failing_check() {
    let p = policy(TRACED_POLICY);
    let mut first = Recorder::<false>(Vec::new());
    let decision = p.evaluate_traced(&claims(json!({"scope": "b"})), &mut first);
    assert_eq!(decision, Decision::InsufficientScope);
    assert_eq!(first.0, vec!["None scope a false"]);

    let mut every = Recorder::<true>(Vec::new());
    let claims = claims(json!({"scope": "b c", "x": 1, "n": {"r": "ops"}}));
    assert_eq!(
        p.evaluate_traced(&claims, &mut every),
        Decision::InsufficientScope
    );
    assert_eq!(
        every.0,
        vec![
            "None scope a false",
            "None scope b true",
            "None x equals 1 saw Some(Number(1)) true",
            "Some(0) g contains \"admin\" saw None false",
            "block 0 false",
            "Some(1) scope c true",
            "Some(1) /n/r matches \"o.s\" saw Some(String(\"ops\")) true",
            "block 1 true",
        ]
    );
}

#[test]
fn rules_display_as_configured() {
    let p = policy(
        r#"claims = [
            { claim = "/a~1b/c~0d", one_of = ["x", 2] },
            { claim = "email", matches = "[^@]+@example[.]com" },
            { claim = "groups", contains_all = ["a", "b"] },
            { claim = "gone", exists = false },
        ]"#,
    );
    let mut every = Recorder::<true>(Vec::new());
    p.evaluate_traced(&Claims::new(), &mut every);
    let shown: Vec<&str> = every
        .0
        .iter()
        .map(|line| {
            line.trim_start_matches("None ")
                .split(" saw ")
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            "/a~1b/c~0d one_of [\"x\",2]",
            "email matches \"[^@]+@example[.]com\"",
            "groups contains_all [\"a\",\"b\"]",
            "gone exists false",
        ]
    );
}

#[test]
fn scopes_are_read_from_scope_else_scp() {
    let c = claims(json!({"scope": "a", "scp": ["b"]}));
    assert_eq!(scope_claim(&c), Some(("scope", &json!("a"))));
    let c = claims(json!({"scope": null, "scp": ["b"]}));
    assert_eq!(scope_claim(&c), Some(("scp", &json!(["b"]))));
    assert_eq!(scope_claim(&Claims::new()), None);
}
