//! The configuration file as written: the serde schema of SPEC §3, and the table of known keys.
//!
//! Every struct mirrors one TOML table with `deny_unknown_fields`, and every field is optional
//! (or defaults to empty): requiredness, defaults and value checks are `load.rs`'s job, so that
//! a missing key and a bad value are reported the same way, with a key path, and never stop the
//! loader at the first one. Values stay as written (durations and URLs are strings) until then.
//!
//! serde stops at the first unknown field, so `KNOWN` repeats the key names as a static table
//! and `unknown_keys` reports all of them at once before deserialization. A test keeps the two
//! in step.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use toml_edit::{Item, TableLike, Value};

use super::locate::KeyPath;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawConfig {
    pub server: Option<RawServer>,
    pub admin: Option<RawAdmin>,
    pub upstream: Option<RawUpstream>,
    pub issuer: Option<Vec<RawIssuer>>,
    pub dpop: Option<RawDpop>,
    pub userinfo: Option<RawUserinfo>,
    pub identity: Option<RawIdentity>,
    pub telemetry: Option<RawTelemetry>,
    pub route: Option<Vec<RawRoute>>,
}

/// Integers are read as `i64` so that a negative or zero value gets the loader's range message
/// rather than serde's "expected u32".
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawServer {
    pub listen: Option<String>,
    pub realm: Option<String>,
    pub max_header_bytes: Option<i64>,
    pub max_token_bytes: Option<i64>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_concurrent_streams: Option<i64>,
    pub strip_header_prefixes: Option<Vec<String>>,
    pub trusted_proxies: Option<Vec<String>>,
    pub public_base_url: Option<String>,
    pub allow_path_parameters: Option<bool>,
    pub max_connections: Option<i64>,
    pub shutdown_grace: Option<String>,
    pub tls: Option<RawTls>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawAdmin {
    pub listen: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawUpstream {
    pub url: Option<String>,
    pub connect_timeout: Option<String>,
    pub timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub ca_file: Option<String>,
    pub protocol: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawIssuer {
    pub id: Option<String>,
    pub issuer: Option<String>,
    pub jwks_uri: Option<String>,
    pub userinfo_endpoint: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub algorithms: Option<Vec<String>>,
    pub clock_skew: Option<String>,
    pub fetch_timeout: Option<String>,
    pub ca_file: Option<String>,
    pub allow_any_audience: Option<bool>,
    pub jwks_refresh: Option<String>,
    pub jwks_min_refresh: Option<String>,
    pub require_typ: Option<String>,
    pub allow_http: Option<bool>,
    pub hmac_secret: Option<String>,
    pub introspection: Option<RawIntrospection>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawIntrospection {
    pub endpoint: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub auth_method: Option<String>,
    pub cache_ttl: Option<String>,
    pub negative_cache_ttl: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawDpop {
    pub algorithms: Option<Vec<String>>,
    pub max_age: Option<String>,
    pub replay_cache_entries: Option<i64>,
    pub require_nonce: Option<bool>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawUserinfo {
    pub cache_ttl: Option<String>,
    pub max_entries: Option<i64>,
    pub timeout: Option<String>,
    pub on_error: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawIdentity {
    pub header: Option<String>,
    pub issuer: Option<String>,
    pub signing_key: Option<String>,
    pub key_id: Option<String>,
    pub previous_keys: Option<Vec<String>>,
    pub ttl: Option<String>,
    pub claims: Option<Vec<String>>,
    pub forward_token: Option<bool>,
    pub bind_request: Option<bool>,
    pub headers: Option<HeaderPairs>,
}

/// `[telemetry]`: traces (SPEC §8). `sample_ratio` also reads a TOML integer (`0`, `1`).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<f64>,
}

/// `[identity.headers]` in file order: header name -> claim. toml_edit hands a table's entries
/// to serde in document order, so a plain map visitor keeps it (no `preserve_order` needed).
#[derive(Debug, Clone, Default)]
pub struct HeaderPairs(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for HeaderPairs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = HeaderPairs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of header name = claim")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<HeaderPairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                Ok(HeaderPairs(pairs))
            }
        }
        deserializer.deserialize_map(PairsVisitor)
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct RawRoute {
    pub id: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub host: Option<String>,
    pub auth: Option<String>,
    pub issuers: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub userinfo: Option<bool>,
    pub userinfo_max_age: Option<String>,
    pub upstream: Option<String>,
    pub upstream_protocol: Option<String>,
    pub audience: Option<String>,
    pub require_sender_constrained: Option<bool>,
    pub claims: Option<Vec<ClaimRule>>,
    pub any_of: Option<Vec<AnyOf>>,
}

/// One `[[route.claims]]` rule, as written. `policy::Policy::compile` checks it (exactly one
/// operator, the regex, the JSON Pointer) and compiles it when the configuration loads. An
/// empty `claim` means the key was missing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct ClaimRule {
    #[serde(default)]
    pub claim: String,
    pub equals: Option<toml::Value>,
    pub one_of: Option<Vec<toml::Value>>,
    pub contains: Option<toml::Value>,
    pub contains_any: Option<Vec<toml::Value>>,
    pub contains_all: Option<Vec<toml::Value>>,
    pub matches: Option<String>,
    pub exists: Option<bool>,
}

impl ClaimRule {
    /// Operator names in schema order, with whether each is set.
    pub fn operators(&self) -> [(&'static str, bool); 7] {
        [
            ("equals", self.equals.is_some()),
            ("one_of", self.one_of.is_some()),
            ("contains", self.contains.is_some()),
            ("contains_any", self.contains_any.is_some()),
            ("contains_all", self.contains_all.is_some()),
            ("matches", self.matches.is_some()),
            ("exists", self.exists.is_some()),
        ]
    }
}

/// One `[[route.any_of]]` block: it holds when all its scopes and claim rules hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub struct AnyOf {
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub claims: Vec<ClaimRule>,
}

/// What a key holds, for the unknown-key walk.
pub(crate) enum Shape {
    /// A plain value (or anything serde alone checks, such as an array of strings).
    Leaf,
    /// A table whose keys are fixed.
    Table(&'static [(&'static str, Shape)]),
    /// An array of tables (`[[x]]` or `x = [{...}]`) whose keys are fixed.
    Tables(&'static [(&'static str, Shape)]),
    /// A table whose keys are free (`[identity.headers]`).
    Map,
}

use Shape::{Leaf, Map, Table, Tables};

const TLS: &[(&str, Shape)] = &[("cert", Leaf), ("key", Leaf), ("client_ca", Leaf)];

const SERVER: &[(&str, Shape)] = &[
    ("listen", Leaf),
    ("realm", Leaf),
    ("max_header_bytes", Leaf),
    ("max_token_bytes", Leaf),
    ("header_read_timeout", Leaf),
    ("idle_timeout", Leaf),
    ("max_concurrent_streams", Leaf),
    ("strip_header_prefixes", Leaf),
    ("trusted_proxies", Leaf),
    ("public_base_url", Leaf),
    ("allow_path_parameters", Leaf),
    ("max_connections", Leaf),
    ("shutdown_grace", Leaf),
    ("tls", Table(TLS)),
];

const ADMIN: &[(&str, Shape)] = &[("listen", Leaf)];

const UPSTREAM: &[(&str, Shape)] = &[
    ("url", Leaf),
    ("connect_timeout", Leaf),
    ("timeout", Leaf),
    ("max_connections", Leaf),
    ("ca_file", Leaf),
    ("protocol", Leaf),
];

const INTROSPECTION: &[(&str, Shape)] = &[
    ("endpoint", Leaf),
    ("client_id", Leaf),
    ("client_secret", Leaf),
    ("auth_method", Leaf),
    ("cache_ttl", Leaf),
    ("negative_cache_ttl", Leaf),
];

const ISSUER: &[(&str, Shape)] = &[
    ("id", Leaf),
    ("issuer", Leaf),
    ("jwks_uri", Leaf),
    ("userinfo_endpoint", Leaf),
    ("audiences", Leaf),
    ("algorithms", Leaf),
    ("clock_skew", Leaf),
    ("fetch_timeout", Leaf),
    ("ca_file", Leaf),
    ("allow_any_audience", Leaf),
    ("jwks_refresh", Leaf),
    ("jwks_min_refresh", Leaf),
    ("require_typ", Leaf),
    ("allow_http", Leaf),
    ("hmac_secret", Leaf),
    ("introspection", Table(INTROSPECTION)),
];

const DPOP: &[(&str, Shape)] = &[
    ("algorithms", Leaf),
    ("max_age", Leaf),
    ("replay_cache_entries", Leaf),
    ("require_nonce", Leaf),
];

const USERINFO: &[(&str, Shape)] = &[
    ("cache_ttl", Leaf),
    ("max_entries", Leaf),
    ("timeout", Leaf),
    ("on_error", Leaf),
];

const IDENTITY: &[(&str, Shape)] = &[
    ("header", Leaf),
    ("issuer", Leaf),
    ("signing_key", Leaf),
    ("key_id", Leaf),
    ("previous_keys", Leaf),
    ("ttl", Leaf),
    ("claims", Leaf),
    ("forward_token", Leaf),
    ("bind_request", Leaf),
    ("headers", Map),
];

const TELEMETRY: &[(&str, Shape)] = &[
    ("otlp_endpoint", Leaf),
    ("service_name", Leaf),
    ("sample_ratio", Leaf),
];

const CLAIM_RULE: &[(&str, Shape)] = &[
    ("claim", Leaf),
    ("equals", Leaf),
    ("one_of", Leaf),
    ("contains", Leaf),
    ("contains_any", Leaf),
    ("contains_all", Leaf),
    ("matches", Leaf),
    ("exists", Leaf),
];

const ANY_OF: &[(&str, Shape)] = &[("scopes", Leaf), ("claims", Tables(CLAIM_RULE))];

const ROUTE: &[(&str, Shape)] = &[
    ("id", Leaf),
    ("path", Leaf),
    ("path_prefix", Leaf),
    ("methods", Leaf),
    ("host", Leaf),
    ("auth", Leaf),
    ("issuers", Leaf),
    ("scopes", Leaf),
    ("userinfo", Leaf),
    ("userinfo_max_age", Leaf),
    ("upstream", Leaf),
    ("upstream_protocol", Leaf),
    ("audience", Leaf),
    ("require_sender_constrained", Leaf),
    ("claims", Tables(CLAIM_RULE)),
    ("any_of", Tables(ANY_OF)),
];

/// The known keys of the whole file.
pub(crate) const KNOWN: &[(&str, Shape)] = &[
    ("server", Table(SERVER)),
    ("admin", Table(ADMIN)),
    ("upstream", Table(UPSTREAM)),
    ("issuer", Tables(ISSUER)),
    ("dpop", Table(DPOP)),
    ("userinfo", Table(USERINFO)),
    ("identity", Table(IDENTITY)),
    ("telemetry", Table(TELEMETRY)),
    ("route", Tables(ROUTE)),
];

/// Every key of the document that the schema does not know, with its message
/// (`unknown key (did you mean "path"?)`). A table of the wrong shape (a value where a table
/// belongs) is skipped here and left to serde's type error.
pub(crate) fn unknown_keys(root: &Item) -> Vec<(KeyPath, String)> {
    let mut out = Vec::new();
    if let Some(table) = root.as_table_like() {
        walk_table(table, KNOWN, &KeyPath::root(), &mut out);
    }
    out
}

fn walk_table(
    table: &dyn TableLike,
    fields: &[(&str, Shape)],
    path: &KeyPath,
    out: &mut Vec<(KeyPath, String)>,
) {
    for (key, item) in table.iter() {
        let here = path.key(key);
        match fields.iter().find(|(name, _)| *name == key) {
            Some((_, shape)) => walk_item(item, shape, &here, out),
            None if *path != KeyPath::root() && KNOWN.iter().any(|(name, _)| *name == key) => {
                let message = format!(
                    "unknown key ({key:?} is a top-level key, but written here it belongs to \
                     [{path}]; move it above the first table header)"
                );
                out.push((here, message));
            }
            None => out.push((here, unknown_key_message(key, fields))),
        }
    }
}

fn walk_item(item: &Item, shape: &Shape, path: &KeyPath, out: &mut Vec<(KeyPath, String)>) {
    match shape {
        Leaf | Map => {}
        Table(fields) => {
            if let Some(table) = item.as_table_like() {
                walk_table(table, fields, path, out);
            }
        }
        Tables(fields) => match item {
            Item::ArrayOfTables(tables) => {
                for (i, table) in tables.iter().enumerate() {
                    walk_table(table, fields, &path.index(i), out);
                }
            }
            Item::Value(Value::Array(values)) => {
                for (i, value) in values.iter().enumerate() {
                    if let Some(table) = value.as_inline_table() {
                        walk_table(table, fields, &path.index(i), out);
                    }
                }
            }
            _ => {}
        },
    }
}

fn unknown_key_message(key: &str, fields: &[(&str, Shape)]) -> String {
    let names = fields.iter().map(|(name, _)| *name);
    match closest(key, names.clone()) {
        Some(best) => format!("unknown key (did you mean {best:?}?)"),
        None => format!(
            "unknown key (expected one of: {})",
            names.collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The candidate within edit distance 2 of `word` (case-insensitively), nearest first.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let word = word.to_ascii_lowercase();
    candidates
        .map(|c| (edit_distance(&word, &c.to_ascii_lowercase()), c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur.push(substitute.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
