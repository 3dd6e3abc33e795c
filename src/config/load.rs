//! Loading a configuration: text in, a compiled `model::Config` (or every problem) out.
//!
//! The pipeline, each step collecting problems instead of stopping at the first:
//!
//! 1. parse with `toml_edit` (a syntax error is the one problem that ends loading at once);
//! 2. report every key the schema does not know (`raw::unknown_keys`), then remove it;
//! 3. expand `${ENV}` in every string (`env.rs`); an unexpandable value is reported, removed;
//! 4. deserialize into the raw schema; on a type error, report it at its path, remove the
//!    offending value and try again (bounded), so one bad value does not hide the next;
//! 5. validate and compile every section into the model, reporting each bad value at its key
//!    path; a key removed in 2-4 is not reported again as "missing";
//! 6. with `load_file`, check that every file the configuration references can be read.
//!
//! Lines come from `locate.rs`, which maps a key path to the original text, so a problem found
//! at any step has the same `FILE:LINE: KEY.PATH: message` form (SPEC §2). A syntax error has
//! no key path and is reported as `(syntax)`.
//!
//! Deliberately not here: key contents (PEM parsing, thumbprints), compiling claim rules into
//! policies, and route matching; the model keeps the validated raw rules for those.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::{Method, Uri};
use ipnet::IpNet;
use toml_edit::{DocumentMut, ImDocument};

use super::duration::parse_duration;
use super::env::{expand_document, Env};
use super::locate::{line_at, line_of, remove, KeyPath, Seg};
use super::model::*;
use super::raw::{self, AnyOf, ClaimRule, RawConfig};

/// One configuration problem (error or warning), printed as `FILE:LINE: KEY.PATH: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The configuration file, as given (not made absolute).
    pub file: PathBuf,
    /// 1-based line of the key, or of its table header when the key is missing.
    pub line: usize,
    /// `route[1].claims[0].equals`; `.` for the whole file; `(syntax)` for a syntax error.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line,
            self.path,
            self.message
        )
    }
}

/// A valid configuration, and what `check` should warn about (shadowed routes, `allow_http`).
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<Problem>,
}

/// Reads and loads `file`: `${ENV}` from the process environment, relative paths resolved
/// against the file's directory, and every referenced file (TLS, CA, signing keys) checked to be
/// readable. On failure, every problem found, in line order.
pub fn load_file(file: &Path) -> Result<Loaded, Vec<Problem>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        vec![Problem {
            file: file.to_path_buf(),
            line: 1,
            path: ".".to_owned(),
            message: format!("cannot read the configuration file: {e}"),
        }]
    })?;
    let env = |name: &str| std::env::var(name).ok();
    load(file, &text, &env, true)
}

/// Loads configuration text without touching the filesystem or the process environment:
/// `file` is only used for messages and to resolve relative paths, `env` looks variables up.
pub fn load_str(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, Vec<Problem>> {
    load(file, text, env, false)
}

/// How many type errors are reported (and removed) before giving up on deserialization.
const MAX_TYPE_ERRORS: usize = 100;

fn load(file: &Path, text: &str, env: Env<'_>, check_files: bool) -> Result<Loaded, Vec<Problem>> {
    let located = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => return Err(vec![syntax_problem(file, text, &e)]),
    };
    let mut doc = located.clone().into_mut();
    let mut ctx = Ctx {
        file,
        doc: &located,
        base: file.parent().map(Path::to_path_buf).unwrap_or_default(),
        check_files,
        errors: Vec::new(),
        warnings: Vec::new(),
        pruned: HashSet::new(),
    };
    for (path, message) in raw::unknown_keys(doc.as_item()) {
        ctx.error(&path, message);
        ctx.prune(&mut doc, &path);
    }
    for (path, message) in expand_document(&mut doc, env) {
        ctx.error(&path, message);
        ctx.prune(&mut doc, &path);
    }
    let config = deserialize(&mut ctx, &mut doc).and_then(|raw| compile(&mut ctx, raw).ok());
    ctx.finish(config)
}

fn syntax_problem(file: &Path, text: &str, e: &toml_edit::TomlError) -> Problem {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Problem {
        file: file.to_path_buf(),
        line: e.span().map_or(1, |s| line_at(text, s.start)),
        path: "(syntax)".to_owned(),
        message: format!("invalid TOML: {message}"),
    }
}

/// Step 4: typed deserialization, removing each value serde rejects until it succeeds.
fn deserialize(ctx: &mut Ctx<'_>, doc: &mut DocumentMut) -> Option<RawConfig> {
    for _ in 0..MAX_TYPE_ERRORS {
        let de = toml_edit::de::Deserializer::from(doc.clone());
        match serde_path_to_error::deserialize::<_, RawConfig>(de) {
            Ok(raw) => return Some(raw),
            Err(e) => {
                let path = KeyPath::from_serde(e.path());
                let mut message = humanize(e.inner().message());
                if is_duration_key(&path) && message.starts_with("invalid type: integer") {
                    message.push_str(" (durations are strings such as \"30s\")");
                }
                ctx.error(&path, message);
                if !ctx.prune(doc, &path) {
                    return None;
                }
            }
        }
    }
    ctx.error(
        &KeyPath::root(),
        format!("stopped after {MAX_TYPE_ERRORS} type errors; fix these and run again"),
    );
    None
}

/// Keys whose value is a duration string, for a hint when a bare number is given.
fn is_duration_key(path: &KeyPath) -> bool {
    const KEYS: [&str; 13] = [
        "header_read_timeout",
        "shutdown_grace",
        "connect_timeout",
        "timeout",
        "clock_skew",
        "fetch_timeout",
        "jwks_refresh",
        "jwks_min_refresh",
        "cache_ttl",
        "negative_cache_ttl",
        "max_age",
        "ttl",
        "userinfo_max_age",
    ];
    matches!(path.segs().last(), Some(Seg::Key(k)) if KEYS.contains(&k.as_str()))
}

/// serde's type names in TOML's words.
fn humanize(message: &str) -> String {
    let mut m = message.to_owned();
    for (from, to) in [
        ("invalid type: sequence", "invalid type: array"),
        ("invalid type: map", "invalid type: table"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("expected i64", "expected an integer"),
    ] {
        m = m.replace(from, to);
    }
    m
}

/// A problem has been recorded for this value; whatever needed it cannot be built.
#[derive(Debug, Clone, Copy)]
struct Reported;

type Checked<T> = Result<T, Reported>;

/// Collects every item's outcome (no short-circuit, so every problem is reported).
fn all<T>(items: Vec<Checked<T>>) -> Checked<Vec<T>> {
    items.into_iter().collect()
}

/// The loader's state: where problems go and how to find their lines.
struct Ctx<'a> {
    file: &'a Path,
    doc: &'a ImDocument<&'a str>,
    /// Directory relative paths in the configuration are resolved against.
    base: PathBuf,
    check_files: bool,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
    /// Keys removed after a problem was reported for them: not "missing", just already reported.
    pruned: HashSet<KeyPath>,
}

impl Ctx<'_> {
    fn problem(&self, path: &KeyPath, message: String) -> Problem {
        Problem {
            file: self.file.to_path_buf(),
            line: line_of(self.doc, path),
            path: path.to_string(),
            message,
        }
    }

    fn error(&mut self, path: &KeyPath, message: impl Into<String>) -> Reported {
        let p = self.problem(path, message.into());
        self.errors.push(p);
        Reported
    }

    fn warn(&mut self, path: &KeyPath, message: impl Into<String>) {
        let p = self.problem(path, message.into());
        self.warnings.push(p);
    }

    fn line(&self, path: &KeyPath) -> usize {
        line_of(self.doc, path)
    }

    /// Removes the value at `path` from `doc`; false when there was nothing to remove.
    fn prune(&mut self, doc: &mut DocumentMut, path: &KeyPath) -> bool {
        match remove(doc, path) {
            Some(removed) => {
                self.pruned.insert(removed);
                true
            }
            None => false,
        }
    }

    /// Whether a problem was already reported for this key (it was removed for it).
    fn was_pruned(&self, path: &KeyPath) -> bool {
        self.pruned.iter().any(|p| path.starts_with(p))
    }

    fn check<T>(&mut self, path: &KeyPath, result: Result<T, String>) -> Checked<T> {
        result.map_err(|message| self.error(path, message))
    }

    fn required<T>(&mut self, value: Option<T>, path: &KeyPath) -> Checked<T> {
        match value {
            Some(v) => Ok(v),
            None if self.was_pruned(path) => Err(Reported),
            None => Err(self.error(path, "required key is missing")),
        }
    }

    fn required_table<T>(&mut self, value: Option<T>, path: &KeyPath) -> Checked<T> {
        match value {
            Some(v) => Ok(v),
            None if self.was_pruned(path) => Err(Reported),
            None => Err(self.error(path, format!("required table [{path}] is missing"))),
        }
    }

    /// A required, non-empty string.
    fn text(&mut self, value: Option<String>, path: &KeyPath) -> Checked<String> {
        let v = self.required(value, path)?;
        self.check(path, non_empty(v))
    }

    /// An optional string that must not be empty when present.
    fn opt_text(&mut self, value: Option<String>, path: &KeyPath) -> Checked<Option<String>> {
        value.map(|v| self.check(path, non_empty(v))).transpose()
    }

    fn duration(
        &mut self,
        value: Option<String>,
        path: &KeyPath,
        default: Duration,
        zero: Zero,
    ) -> Checked<Duration> {
        Ok(self.opt_duration(value, path, zero)?.unwrap_or(default))
    }

    fn opt_duration(
        &mut self,
        value: Option<String>,
        path: &KeyPath,
        zero: Zero,
    ) -> Checked<Option<Duration>> {
        let Some(text) = value else { return Ok(None) };
        let d = self.check(path, parse_duration(&text))?;
        if d.is_zero() && zero == Zero::Rejected {
            return Err(self.error(
                path,
                format!("{text:?} is not allowed here: must be greater than 0"),
            ));
        }
        Ok(Some(d))
    }

    fn count(
        &mut self,
        value: Option<i64>,
        path: &KeyPath,
        default: usize,
        min: i64,
        max: i64,
    ) -> Checked<usize> {
        let Some(n) = value else { return Ok(default) };
        if n < min || n > max {
            let range = if max == i64::MAX {
                format!("at least {min}")
            } else {
                format!("between {min} and {max}")
            };
            return Err(self.error(path, format!("must be {range}, found {n}")));
        }
        self.check(
            path,
            usize::try_from(n).map_err(|_| format!("{n} is too large")),
        )
    }

    fn flag(value: Option<bool>) -> bool {
        value.unwrap_or(false)
    }

    /// A file path, resolved against the configuration's directory; with `load_file`, it must
    /// name a readable file.
    fn file_path(&mut self, value: String, path: &KeyPath) -> Checked<PathBuf> {
        if value.is_empty() {
            return Err(self.error(path, "must not be empty"));
        }
        let resolved = self.base.join(&value);
        if self.check_files {
            let readable = std::fs::File::open(&resolved).and_then(|f| f.metadata());
            match readable {
                Ok(meta) if meta.is_file() => {}
                Ok(_) => {
                    return Err(self.error(
                        path,
                        format!("{:?} is not a file", resolved.display().to_string()),
                    ))
                }
                Err(e) => {
                    return Err(self.error(
                        path,
                        format!("cannot read {:?}: {e}", resolved.display().to_string()),
                    ))
                }
            }
        }
        Ok(resolved)
    }

    fn opt_file(&mut self, value: Option<String>, path: &KeyPath) -> Checked<Option<PathBuf>> {
        value.map(|v| self.file_path(v, path)).transpose()
    }

    fn finish(self, config: Option<Config>) -> Result<Loaded, Vec<Problem>> {
        let mut errors = self.errors;
        let mut warnings = self.warnings;
        errors.sort_by_key(|p| p.line);
        warnings.sort_by_key(|p| p.line);
        match config {
            Some(config) if errors.is_empty() => Ok(Loaded { config, warnings }),
            _ if errors.is_empty() => Err(vec![Problem {
                file: self.file.to_path_buf(),
                line: 1,
                path: ".".to_owned(),
                message: "the configuration could not be loaded".to_owned(),
            }]),
            _ => Err(errors),
        }
    }
}

/// Whether a zero duration makes sense for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zero {
    Allowed,
    Rejected,
}

fn non_empty(v: String) -> Result<String, String> {
    if v.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(v)
    }
}

// ---------------------------------------------------------------------------------------------
// Step 5: sections
// ---------------------------------------------------------------------------------------------

fn compile(ctx: &mut Ctx<'_>, raw: RawConfig) -> Checked<Config> {
    let root = KeyPath::root();
    let server = server(ctx, raw.server, &root.key("server"));
    let listen = server.as_ref().ok().map(|s| s.listen);
    let admin = raw
        .admin
        .map(|a| admin(ctx, a, &root.key("admin"), listen))
        .transpose();
    let upstream = upstream(ctx, raw.upstream, &root.key("upstream"));
    let raw_issuers = raw.issuer.unwrap_or_default();
    let issuer_ids: Vec<Option<String>> = raw_issuers.iter().map(|i| i.id.clone()).collect();
    let issuers = issuers(ctx, raw_issuers, &root.key("issuer"));
    let dpop = dpop(ctx, raw.dpop.unwrap_or_default(), &root.key("dpop"));
    let userinfo = userinfo(ctx, raw.userinfo.unwrap_or_default(), &root.key("userinfo"));
    let identity = identity(ctx, raw.identity.unwrap_or_default(), &root.key("identity"));
    let routes = routes(
        ctx,
        raw.route.unwrap_or_default(),
        &root.key("route"),
        &issuer_ids,
    );
    Ok(Config {
        source: ctx.file.to_path_buf(),
        server: server?,
        admin: admin?,
        upstream: upstream?,
        issuers: issuers?,
        dpop: dpop?,
        userinfo: userinfo?,
        identity: identity?,
        routes: routes?,
    })
}

fn server(ctx: &mut Ctx<'_>, raw: Option<raw::RawServer>, p: &KeyPath) -> Checked<Server> {
    let raw = ctx.required_table(raw, p)?;
    let at = |k: &str| p.key(k);
    let listen = ctx
        .required(raw.listen, &at("listen"))
        .and_then(|v| ctx.check(&at("listen"), listen_addr(&v)));
    let realm = raw.realm.unwrap_or_else(|| "tokengate".to_owned());
    let realm = ctx.check(&at("realm"), check_realm(&realm).map(|()| realm));
    let max_header_bytes = ctx.count(
        raw.max_header_bytes,
        &at("max_header_bytes"),
        16384,
        1024,
        1 << 20,
    );
    let max_token_bytes = ctx.count(
        raw.max_token_bytes,
        &at("max_token_bytes"),
        8192,
        1,
        i64::MAX,
    );
    let header_read_timeout = ctx.duration(
        raw.header_read_timeout,
        &at("header_read_timeout"),
        Duration::from_secs(10),
        Zero::Rejected,
    );
    let prefixes = raw.strip_header_prefixes.unwrap_or_default();
    let strip = all(prefixes
        .iter()
        .enumerate()
        .map(|(i, v)| ctx.check(&at("strip_header_prefixes").index(i), header_prefix(v)))
        .collect());
    let proxies = raw.trusted_proxies.unwrap_or_default();
    let trusted = all(proxies
        .iter()
        .enumerate()
        .map(|(i, v)| ctx.check(&at("trusted_proxies").index(i), trusted_proxy(v)))
        .collect());
    let public_base_url = raw
        .public_base_url
        .map(|v| ctx.check(&at("public_base_url"), origin(&v).map(|t| t.origin)))
        .transpose();
    let max_connections = ctx.count(
        raw.max_connections,
        &at("max_connections"),
        10000,
        1,
        i64::MAX,
    );
    let shutdown_grace = ctx.duration(
        raw.shutdown_grace,
        &at("shutdown_grace"),
        Duration::from_secs(30),
        Zero::Allowed,
    );
    let tls = raw.tls.map(|t| tls(ctx, t, &at("tls"))).transpose();
    Ok(Server {
        listen: listen?,
        realm: realm?,
        max_header_bytes: max_header_bytes?,
        max_token_bytes: max_token_bytes?,
        header_read_timeout: header_read_timeout?,
        strip_header_prefixes: strip?,
        trusted_proxies: trusted?,
        public_base_url: public_base_url?,
        allow_path_parameters: Ctx::flag(raw.allow_path_parameters),
        max_connections: max_connections?,
        shutdown_grace: shutdown_grace?,
        tls: tls?,
    })
}

fn tls(ctx: &mut Ctx<'_>, raw: raw::RawTls, p: &KeyPath) -> Checked<TlsFiles> {
    let cert = ctx
        .required(raw.cert, &p.key("cert"))
        .and_then(|v| ctx.file_path(v, &p.key("cert")));
    let key = ctx
        .required(raw.key, &p.key("key"))
        .and_then(|v| ctx.file_path(v, &p.key("key")));
    let client_ca = ctx.opt_file(raw.client_ca, &p.key("client_ca"));
    Ok(TlsFiles {
        cert: cert?,
        key: key?,
        client_ca: client_ca?,
    })
}

fn admin(
    ctx: &mut Ctx<'_>,
    raw: raw::RawAdmin,
    p: &KeyPath,
    main: Option<SocketAddr>,
) -> Checked<Admin> {
    let at = p.key("listen");
    let listen = ctx.required(raw.listen, &at)?;
    let listen = ctx.check(&at, listen_addr(&listen))?;
    if let Some(main) = main.filter(|m| listens_on_same_socket(*m, listen)) {
        return Err(ctx.error(
            &at,
            format!(
                "{listen} overlaps server.listen ({main}); the admin listener needs its own port"
            ),
        ));
    }
    Ok(Admin { listen })
}

/// Two listen addresses that cannot both be bound: same port, and the same IP or a wildcard.
fn listens_on_same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn upstream(ctx: &mut Ctx<'_>, raw: Option<raw::RawUpstream>, p: &KeyPath) -> Checked<Upstream> {
    let raw = ctx.required_table(raw, p)?;
    let url = ctx
        .required(raw.url, &p.key("url"))
        .and_then(|v| ctx.check(&p.key("url"), origin(&v)));
    let connect_timeout = ctx.duration(
        raw.connect_timeout,
        &p.key("connect_timeout"),
        Duration::from_secs(2),
        Zero::Rejected,
    );
    let timeout = ctx.duration(
        raw.timeout,
        &p.key("timeout"),
        Duration::from_secs(60),
        Zero::Rejected,
    );
    let ca_file = ctx.opt_file(raw.ca_file, &p.key("ca_file"));
    Ok(Upstream {
        target: Arc::new(url?),
        connect_timeout: connect_timeout?,
        timeout: timeout?,
        ca_file: ca_file?,
    })
}

fn issuers(ctx: &mut Ctx<'_>, raws: Vec<raw::RawIssuer>, p: &KeyPath) -> Checked<Vec<Issuer>> {
    let ids: Vec<(KeyPath, Option<String>)> = raws
        .iter()
        .enumerate()
        .map(|(i, r)| (p.index(i).key("id"), r.id.clone()))
        .collect();
    let unique_ids = unique(ctx, &ids, "issuer id");
    let urls: Vec<(KeyPath, Option<String>)> = raws
        .iter()
        .enumerate()
        .map(|(i, r)| (p.index(i).key("issuer"), r.issuer.clone()))
        .collect();
    let unique_urls = unique(ctx, &urls, "issuer");
    let compiled = all(raws
        .into_iter()
        .enumerate()
        .map(|(i, r)| issuer(ctx, r, &p.index(i)))
        .collect());
    unique_ids?;
    unique_urls?;
    compiled
}

/// Reports every repeated value (each naming the line of its first use).
fn unique(ctx: &mut Ctx<'_>, values: &[(KeyPath, Option<String>)], what: &str) -> Checked<()> {
    let mut result = Ok(());
    for (j, (path, value)) in values.iter().enumerate() {
        // An empty value is reported as empty, not also as a duplicate.
        let Some(value) = value.as_ref().filter(|v| !v.is_empty()) else {
            continue;
        };
        let first = values[..j]
            .iter()
            .find(|(_, v)| v.as_deref() == Some(value.as_str()));
        if let Some((first, _)) = first {
            let line = ctx.line(first);
            result = Err(ctx.error(
                path,
                format!("duplicate {what} {value:?} (first used on line {line})"),
            ));
        }
    }
    result
}

fn issuer(ctx: &mut Ctx<'_>, raw: raw::RawIssuer, p: &KeyPath) -> Checked<Issuer> {
    let at = |k: &str| p.key(k);
    let allow_http = Ctx::flag(raw.allow_http);
    let id = ctx.text(raw.id, &at("id"));
    let id = id.and_then(|v| ctx.check(&at("id"), no_controls(v)));
    if allow_http {
        let name = id
            .as_ref()
            .map_or_else(|_| p.to_string(), |v| format!("{v:?}"));
        ctx.warn(
            &at("allow_http"),
            format!("http allowed for issuer {name}: its tokens, keys and userinfo answers can be read or altered on the network"),
        );
    }
    let issuer_url = ctx
        .text(raw.issuer, &at("issuer"))
        .and_then(|v| ctx.check(&at("issuer"), issuer_url(&v, allow_http, false).map(|()| v)));
    let jwks_uri = opt_issuer_url(ctx, raw.jwks_uri, &at("jwks_uri"), allow_http);
    let userinfo_endpoint = opt_issuer_url(
        ctx,
        raw.userinfo_endpoint,
        &at("userinfo_endpoint"),
        allow_http,
    );
    let allow_any_audience = Ctx::flag(raw.allow_any_audience);
    let audiences = issuer_audiences(ctx, raw.audiences, &at("audiences"), allow_any_audience);
    let algorithms = algorithm_list(
        ctx,
        raw.algorithms,
        &at("algorithms"),
        &Algorithm::DEFAULT,
        false,
    );
    let hmac_secret = hmac_secret(ctx, raw.hmac_secret, p, algorithms.as_deref().ok());
    let clock_skew = ctx.duration(
        raw.clock_skew,
        &at("clock_skew"),
        Duration::from_secs(60),
        Zero::Allowed,
    );
    let fetch_timeout = ctx.duration(
        raw.fetch_timeout,
        &at("fetch_timeout"),
        Duration::from_secs(5),
        Zero::Rejected,
    );
    let refresh_text = raw.jwks_refresh.clone().unwrap_or_else(|| "10m".to_owned());
    let min_text = raw
        .jwks_min_refresh
        .clone()
        .unwrap_or_else(|| "30s".to_owned());
    let jwks_refresh = ctx.duration(
        raw.jwks_refresh,
        &at("jwks_refresh"),
        Duration::from_secs(600),
        Zero::Rejected,
    );
    let jwks_min_refresh = ctx
        .duration(
            raw.jwks_min_refresh,
            &at("jwks_min_refresh"),
            Duration::from_secs(30),
            Zero::Rejected,
        )
        .and_then(|min| match jwks_refresh {
            Ok(refresh) if min > refresh => Err(ctx.error(
                &at("jwks_min_refresh"),
                format!(
                    "{min_text:?} is longer than jwks_refresh ({refresh_text:?}); it must not be"
                ),
            )),
            _ => Ok(min),
        });
    let ca_file = ctx.opt_file(raw.ca_file, &at("ca_file"));
    let require_typ = ctx
        .opt_text(raw.require_typ, &at("require_typ"))
        .and_then(|t| {
            t.map(|t| ctx.check(&at("require_typ"), typ(&t)))
                .transpose()
        });
    let introspection = raw
        .introspection
        .map(|i| introspection(ctx, i, &at("introspection"), allow_http))
        .transpose();
    Ok(Issuer {
        id: id?,
        issuer: issuer_url?,
        jwks_uri: jwks_uri?,
        userinfo_endpoint: userinfo_endpoint?,
        audiences: audiences?,
        algorithms: algorithms?,
        clock_skew: clock_skew?,
        fetch_timeout: fetch_timeout?,
        ca_file: ca_file?,
        allow_any_audience,
        jwks_refresh: jwks_refresh?,
        jwks_min_refresh: jwks_min_refresh?,
        require_typ: require_typ?,
        allow_http,
        hmac_secret: hmac_secret?,
        introspection: introspection?,
    })
}

fn opt_issuer_url(
    ctx: &mut Ctx<'_>,
    value: Option<String>,
    path: &KeyPath,
    allow_http: bool,
) -> Checked<Option<String>> {
    value
        .map(|v| ctx.check(path, issuer_url(&v, allow_http, true).map(|()| v)))
        .transpose()
}

fn issuer_audiences(
    ctx: &mut Ctx<'_>,
    raw: Option<Vec<String>>,
    path: &KeyPath,
    any: bool,
) -> Checked<Vec<String>> {
    let list = raw.unwrap_or_default();
    if list.is_empty() && !any && !ctx.was_pruned(path) {
        return Err(ctx.error(
            path,
            "at least one audience is required (or set allow_any_audience = true)",
        ));
    }
    let checked = list
        .into_iter()
        .enumerate()
        .map(|(i, a)| ctx.check(&path.index(i), non_empty(a)))
        .collect();
    all(checked)
}

/// `algorithms` of an issuer or of `[dpop]`: known JOSE names, deduplicated, in order.
fn algorithm_list(
    ctx: &mut Ctx<'_>,
    raw: Option<Vec<String>>,
    path: &KeyPath,
    default: &[Algorithm],
    asymmetric_only: bool,
) -> Checked<Vec<Algorithm>> {
    let Some(names) = raw else {
        return Ok(default.to_vec());
    };
    if names.is_empty() {
        return Err(ctx.error(path, "at least one algorithm is required"));
    }
    let mut out = Ok(Vec::new());
    for (i, name) in names.iter().enumerate() {
        let parsed = algorithm(name).and_then(|a| {
            if asymmetric_only && a.is_hmac() {
                Err(format!(
                    "{name} is symmetric; DPoP proofs are signed with asymmetric keys only"
                ))
            } else {
                Ok(a)
            }
        });
        match (ctx.check(&path.index(i), parsed), &mut out) {
            (Ok(a), Ok(list)) if !list.contains(&a) => list.push(a),
            (Err(r), _) => out = Err(r),
            _ => {}
        }
    }
    out
}

fn algorithm(name: &str) -> Result<Algorithm, String> {
    if let Some(a) = Algorithm::from_name(name) {
        return Ok(a);
    }
    if name.eq_ignore_ascii_case("none") {
        return Err("\"none\" (unsigned tokens) is never accepted".to_owned());
    }
    let known = Algorithm::ALL.map(Algorithm::name);
    match raw::closest(name, known.into_iter()) {
        Some(best) => Err(format!(
            "unknown algorithm {name:?} (did you mean {best:?}?)"
        )),
        None => Err(format!(
            "unknown algorithm {name:?} (known: {})",
            known.join(", ")
        )),
    }
}

fn hmac_secret(
    ctx: &mut Ctx<'_>,
    raw: Option<String>,
    p: &KeyPath,
    algs: Option<&[Algorithm]>,
) -> Checked<Option<Secret>> {
    let hmac = algs.and_then(|a| a.iter().find(|a| a.is_hmac()).copied());
    let secret_path = p.key("hmac_secret");
    match (raw, hmac) {
        (None, Some(a)) if !ctx.was_pruned(&secret_path) => Err(ctx.error(
            &p.key("algorithms"),
            format!("{} is listed but hmac_secret is not set", a.name()),
        )),
        (None, _) => Ok(None),
        (Some(_), None) if algs.is_some() => Err(ctx.error(
            &secret_path,
            "hmac_secret is set but algorithms lists no HS256, HS384 or HS512",
        )),
        (Some(s), _) if s.len() < 32 => Err(ctx.error(
            &secret_path,
            format!(
                "must be at least 32 bytes long (RFC 7518 §3.2), found {}",
                s.len()
            ),
        )),
        (Some(s), _) => Ok(Some(Secret(s))),
    }
}

fn introspection(
    ctx: &mut Ctx<'_>,
    raw: raw::RawIntrospection,
    p: &KeyPath,
    allow_http: bool,
) -> Checked<Introspection> {
    let at = |k: &str| p.key(k);
    let endpoint = opt_issuer_url(ctx, raw.endpoint, &at("endpoint"), allow_http);
    let client_id = ctx.text(raw.client_id, &at("client_id"));
    let client_secret = ctx
        .text(raw.client_secret, &at("client_secret"))
        .map(Secret);
    let auth_method = match raw.auth_method.as_deref() {
        None | Some("client_secret_basic") => Ok(ClientAuthMethod::ClientSecretBasic),
        Some("client_secret_post") => Ok(ClientAuthMethod::ClientSecretPost),
        Some(other) => Err(ctx.error(
            &at("auth_method"),
            format!("expected \"client_secret_basic\" or \"client_secret_post\", found {other:?}"),
        )),
    };
    let cache_ttl = ctx.duration(
        raw.cache_ttl,
        &at("cache_ttl"),
        Duration::from_secs(120),
        Zero::Allowed,
    );
    let negative = ctx.duration(
        raw.negative_cache_ttl,
        &at("negative_cache_ttl"),
        Duration::from_secs(10),
        Zero::Allowed,
    );
    Ok(Introspection {
        endpoint: endpoint?,
        client_id: client_id?,
        client_secret: client_secret?,
        auth_method: auth_method?,
        cache_ttl: cache_ttl?,
        negative_cache_ttl: negative?,
    })
}

fn dpop(ctx: &mut Ctx<'_>, raw: raw::RawDpop, p: &KeyPath) -> Checked<Dpop> {
    use Algorithm::{EdDSA, ES256, ES384, PS256, RS256};
    let algorithms = algorithm_list(
        ctx,
        raw.algorithms,
        &p.key("algorithms"),
        &[ES256, ES384, EdDSA, RS256, PS256],
        true,
    );
    let max_age = ctx.duration(
        raw.max_age,
        &p.key("max_age"),
        Duration::from_secs(60),
        Zero::Rejected,
    );
    let entries = ctx.count(
        raw.replay_cache_entries,
        &p.key("replay_cache_entries"),
        100_000,
        1,
        i64::MAX,
    );
    Ok(Dpop {
        algorithms: algorithms?,
        max_age: max_age?,
        replay_cache_entries: entries?,
        require_nonce: Ctx::flag(raw.require_nonce),
    })
}

fn userinfo(ctx: &mut Ctx<'_>, raw: raw::RawUserinfo, p: &KeyPath) -> Checked<Userinfo> {
    let cache_ttl = ctx.duration(
        raw.cache_ttl,
        &p.key("cache_ttl"),
        Duration::from_secs(300),
        Zero::Allowed,
    );
    let max_entries = ctx.count(raw.max_entries, &p.key("max_entries"), 100_000, 1, i64::MAX);
    let timeout = ctx.duration(
        raw.timeout,
        &p.key("timeout"),
        Duration::from_secs(3),
        Zero::Rejected,
    );
    let on_error = match raw.on_error.as_deref() {
        None | Some("deny") => Ok(OnError::Deny),
        Some("proceed") => Ok(OnError::Proceed),
        Some(other) => Err(ctx.error(
            &p.key("on_error"),
            format!("expected \"deny\" or \"proceed\", found {other:?}"),
        )),
    };
    Ok(Userinfo {
        cache_ttl: cache_ttl?,
        max_entries: max_entries?,
        timeout: timeout?,
        on_error: on_error?,
    })
}

/// Claims of the assertion that tokengate sets itself (SPEC §5), so they cannot be copied.
const ASSERTION_CLAIMS: [&str; 10] = [
    "iss",
    "aud",
    "iat",
    "exp",
    "jti",
    "route",
    "token_iss",
    "auth",
    "htm",
    "htp",
];

const DEFAULT_IDENTITY_CLAIMS: [&str; 6] = ["sub", "email", "name", "groups", "scope", "client_id"];

fn identity(ctx: &mut Ctx<'_>, raw: raw::RawIdentity, p: &KeyPath) -> Checked<Identity> {
    let at = |k: &str| p.key(k);
    let header = raw
        .header
        .unwrap_or_else(|| "X-Identity-Assertion".to_owned());
    let header = ctx.check(&at("header"), identity_header(&header));
    let issuer = ctx.check(
        &at("issuer"),
        non_empty(raw.issuer.unwrap_or_else(|| "tokengate".to_owned())),
    );
    let signing_key = ctx.opt_file(raw.signing_key, &at("signing_key"));
    let key_id = ctx.opt_text(raw.key_id, &at("key_id"));
    let previous = raw.previous_keys.unwrap_or_default();
    let previous_keys = all(previous
        .into_iter()
        .enumerate()
        .map(|(i, f)| ctx.file_path(f, &at("previous_keys").index(i)))
        .collect());
    let ttl = ctx.duration(raw.ttl, &at("ttl"), Duration::from_secs(60), Zero::Rejected);
    let claims = match raw.claims {
        None => Ok(DEFAULT_IDENTITY_CLAIMS.map(str::to_owned).to_vec()),
        Some(list) => identity_claims(ctx, list, &at("claims")),
    };
    let headers = identity_headers(
        ctx,
        raw.headers.unwrap_or_default().0,
        &at("headers"),
        header.as_ref().ok(),
    );
    Ok(Identity {
        header: header?,
        issuer: issuer?,
        signing_key: signing_key?,
        key_id: key_id?,
        previous_keys: previous_keys?,
        ttl: ttl?,
        claims: claims?,
        forward_token: Ctx::flag(raw.forward_token),
        bind_request: Ctx::flag(raw.bind_request),
        headers: headers?,
    })
}

fn identity_claims(ctx: &mut Ctx<'_>, list: Vec<String>, p: &KeyPath) -> Checked<Vec<String>> {
    let mut out = Ok(Vec::new());
    for (i, claim) in list.into_iter().enumerate() {
        let checked = if claim.is_empty() {
            Err("must not be empty".to_owned())
        } else if claim.starts_with('/') {
            Err("identity.claims holds top-level claim names; JSON Pointers are for [identity.headers] and route claims".to_owned())
        } else if ASSERTION_CLAIMS.contains(&claim.as_str()) {
            Err(format!(
                "{claim:?} is set by tokengate itself and cannot be copied from the token"
            ))
        } else {
            Ok(claim)
        };
        match (ctx.check(&p.index(i), checked), &mut out) {
            (Ok(c), Ok(v)) if !v.contains(&c) => v.push(c),
            (Err(r), _) => out = Err(r),
            _ => {}
        }
    }
    out
}

fn identity_headers(
    ctx: &mut Ctx<'_>,
    pairs: Vec<(String, String)>,
    p: &KeyPath,
    assertion: Option<&HeaderName>,
) -> Checked<Vec<(HeaderName, String)>> {
    let mut out: Checked<Vec<(HeaderName, String)>> = Ok(Vec::new());
    let mut seen: Vec<(HeaderName, KeyPath)> = Vec::new();
    for (name, claim) in pairs {
        let path = p.key(&name);
        let header = ctx.check(&path, identity_header(&name)).and_then(|h| {
            if assertion == Some(&h) {
                return Err(ctx.error(&path, "is already identity.header, the signed assertion"));
            }
            if let Some((_, first)) = seen.iter().find(|(s, _)| *s == h) {
                let line = ctx.line(first);
                return Err(ctx.error(
                    &path,
                    format!(
                        "duplicate header name (first on line {line}; names are case-insensitive)"
                    ),
                ));
            }
            seen.push((h.clone(), path.clone()));
            Ok(h)
        });
        let claim = ctx.check(&path, claim_name(claim));
        match (header, claim, &mut out) {
            (Ok(h), Ok(c), Ok(v)) => v.push((h, c)),
            (Err(r), _, _) | (_, Err(r), _) => out = Err(r),
            _ => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------------

fn routes(
    ctx: &mut Ctx<'_>,
    raws: Vec<raw::RawRoute>,
    p: &KeyPath,
    issuer_ids: &[Option<String>],
) -> Checked<Vec<Route>> {
    let ids: Vec<(KeyPath, Option<String>)> = raws
        .iter()
        .enumerate()
        .map(|(i, r)| (p.index(i).key("id"), r.id.clone()))
        .collect();
    let unique_ids = unique(ctx, &ids, "route id");
    let compiled = all(raws
        .into_iter()
        .enumerate()
        .map(|(i, r)| route(ctx, r, &p.index(i), issuer_ids))
        .collect());
    unique_ids?;
    let routes = compiled?;
    shadowing(ctx, &routes, p);
    Ok(routes)
}

fn route(
    ctx: &mut Ctx<'_>,
    raw: raw::RawRoute,
    p: &KeyPath,
    issuer_ids: &[Option<String>],
) -> Checked<Route> {
    let at = |k: &str| p.key(k);
    let id = ctx
        .text(raw.id, &at("id"))
        .and_then(|v| ctx.check(&at("id"), no_controls(v)));
    let path = route_path(ctx, raw.path, raw.path_prefix, p);
    let methods = raw
        .methods
        .map(|m| route_methods(ctx, m, &at("methods")))
        .transpose();
    let host = raw
        .host
        .map(|h| ctx.check(&at("host"), host_match(&h)))
        .transpose();
    let auth_written = raw.auth.is_some();
    let auth = match raw.auth.as_deref() {
        None | Some("required") => Ok(AuthMode::Required),
        Some("optional") => Ok(AuthMode::Optional),
        Some("public") => Ok(AuthMode::Public),
        Some(other) => Err(ctx.error(
            &at("auth"),
            format!("expected \"public\", \"optional\" or \"required\", found {other:?}"),
        )),
    };
    if auth.is_ok_and(|a| a != AuthMode::Public) && issuer_ids.is_empty() {
        let where_ = if auth_written { at("auth") } else { p.clone() };
        ctx.error(
            &where_,
            "this route needs a token (auth is \"required\" or \"optional\") but no [[issuer]] is configured",
        );
    }
    let issuers = raw
        .issuers
        .map(|list| route_issuers(ctx, list, &at("issuers"), issuer_ids))
        .transpose();
    let scopes = scope_list(ctx, raw.scopes.unwrap_or_default(), &at("scopes"));
    let userinfo_max_age =
        ctx.opt_duration(raw.userinfo_max_age, &at("userinfo_max_age"), Zero::Allowed);
    let upstream = raw
        .upstream
        .map(|u| ctx.check(&at("upstream"), origin(&u).map(Arc::new)))
        .transpose();
    let audience = ctx.opt_text(raw.audience, &at("audience"));
    let claims = raw.claims.unwrap_or_default();
    let claims_ok = claim_rules(ctx, &claims, &at("claims"));
    let any_of = raw.any_of.unwrap_or_default();
    let any_of_ok = any_of_blocks(ctx, &any_of, &at("any_of"));
    if let (Ok(AuthMode::Public), Ok(scopes)) = (&auth, &scopes) {
        for (key, used) in [
            ("scopes", !scopes.is_empty()),
            ("claims", !claims.is_empty()),
            ("any_of", !any_of.is_empty()),
        ] {
            if used {
                ctx.error(&at(key), format!("a public route never examines a token, so its {key} would never be checked"));
            }
        }
    }
    Ok(Route {
        id: Arc::from(id?),
        path: path?,
        methods: methods?,
        host: host?,
        auth: auth?,
        issuers: issuers?,
        scopes: scopes?,
        userinfo: Ctx::flag(raw.userinfo),
        userinfo_max_age: userinfo_max_age?,
        upstream: upstream?,
        audience: audience?,
        require_sender_constrained: Ctx::flag(raw.require_sender_constrained),
        claims: claims_ok.map(|()| claims)?,
        any_of: any_of_ok.map(|()| any_of)?,
        line: ctx.line(p),
    })
}

fn route_path(
    ctx: &mut Ctx<'_>,
    path: Option<String>,
    prefix: Option<String>,
    p: &KeyPath,
) -> Checked<PathMatch> {
    match (path, prefix) {
        (Some(_), Some(_)) => Err(ctx.error(p, "a route has both path and path_prefix; use one")),
        (Some(path), None) => {
            let checked = normalized_path(&path).map(|()| PathMatch::Exact(path));
            ctx.check(&p.key("path"), checked)
        }
        (None, Some(prefix)) => {
            let checked = normalized_path(&prefix).map(|()| {
                PathMatch::Prefix(prefix.strip_suffix('/').unwrap_or(&prefix).to_owned())
            });
            ctx.check(&p.key("path_prefix"), checked)
        }
        (None, None) if ctx.was_pruned(&p.key("path")) || ctx.was_pruned(&p.key("path_prefix")) => {
            Err(Reported)
        }
        (None, None) => Err(ctx.error(p, "a route needs path or path_prefix")),
    }
}

fn route_methods(ctx: &mut Ctx<'_>, list: Vec<String>, p: &KeyPath) -> Checked<Vec<Method>> {
    if list.is_empty() {
        return Err(ctx.error(
            p,
            "an empty list matches no request; leave methods out to allow any method",
        ));
    }
    let mut out = Ok(Vec::new());
    for (i, m) in list.iter().enumerate() {
        match (ctx.check(&p.index(i), method(m)), &mut out) {
            (Ok(m), Ok(v)) if !v.contains(&m) => v.push(m),
            (Err(r), _) => out = Err(r),
            _ => {}
        }
    }
    out
}

fn route_issuers(
    ctx: &mut Ctx<'_>,
    list: Vec<String>,
    p: &KeyPath,
    ids: &[Option<String>],
) -> Checked<Vec<usize>> {
    if list.is_empty() {
        return Err(ctx.error(
            p,
            "an empty list accepts no token; leave issuers out to accept every issuer",
        ));
    }
    let known: Vec<&str> = ids.iter().flatten().map(String::as_str).collect();
    let mut out = Ok(Vec::new());
    for (i, name) in list.iter().enumerate() {
        let found = ids
            .iter()
            .position(|id| id.as_deref() == Some(name.as_str()));
        let checked = found.ok_or_else(|| match raw::closest(name, known.iter().copied()) {
            Some(best) => format!("unknown issuer id {name:?} (did you mean {best:?}?)"),
            None if known.is_empty() => {
                format!("unknown issuer id {name:?}: no [[issuer]] is configured")
            }
            None => format!(
                "unknown issuer id {name:?} (configured: {})",
                known.join(", ")
            ),
        });
        match (ctx.check(&p.index(i), checked), &mut out) {
            (Ok(n), Ok(v)) if !v.contains(&n) => v.push(n),
            (Err(r), _) => out = Err(r),
            _ => {}
        }
    }
    out
}

fn scope_list(ctx: &mut Ctx<'_>, list: Vec<String>, p: &KeyPath) -> Checked<Vec<String>> {
    let checked = list
        .into_iter()
        .enumerate()
        .map(|(i, s)| ctx.check(&p.index(i), scope_token(s)))
        .collect();
    all(checked)
}

fn claim_rules(ctx: &mut Ctx<'_>, rules: &[ClaimRule], p: &KeyPath) -> Checked<()> {
    let checked = rules
        .iter()
        .enumerate()
        .map(|(i, r)| claim_rule(ctx, r, &p.index(i)))
        .collect();
    all(checked).map(|_| ())
}

fn any_of_blocks(ctx: &mut Ctx<'_>, blocks: &[AnyOf], p: &KeyPath) -> Checked<()> {
    let mut result = Ok(());
    for (i, block) in blocks.iter().enumerate() {
        let here = p.index(i);
        let pruned = ctx.was_pruned(&here.key("scopes")) || ctx.was_pruned(&here.key("claims"));
        if block.scopes.is_empty() && block.claims.is_empty() && !pruned {
            result = Err(ctx.error(
                &here,
                "an any_of block needs scopes or claims (an empty block always holds)",
            ));
        }
        let scopes = scope_list(ctx, block.scopes.clone(), &here.key("scopes"));
        let claims = claim_rules(ctx, &block.claims, &here.key("claims"));
        if scopes.is_err() || claims.is_err() {
            result = Err(Reported);
        }
    }
    result
}

fn claim_rule(ctx: &mut Ctx<'_>, rule: &ClaimRule, p: &KeyPath) -> Checked<()> {
    let mut ok = Ok(());
    let claim_path = p.key("claim");
    if rule.claim.is_empty() {
        if !ctx.was_pruned(&claim_path) {
            ok = Err(ctx.error(&claim_path, "a claim rule needs a non-empty claim"));
        }
    } else if let Err(e) = claim_name(rule.claim.clone()) {
        ok = Err(ctx.error(&claim_path, e));
    }
    let named = if rule.claim.is_empty() {
        String::new()
    } else {
        format!(" for {:?}", rule.claim)
    };
    let set: Vec<&str> = rule
        .operators()
        .into_iter()
        .filter(|(name, set)| *set || ctx.was_pruned(&p.key(name)))
        .map(|(name, _)| name)
        .collect();
    if set.len() != 1 {
        let found = if set.is_empty() {
            "none".to_owned()
        } else {
            set.join(" and ")
        };
        ok = Err(ctx.error(
            p,
            format!("the claim rule{named} needs exactly one operator (equals, one_of, contains, contains_any, contains_all, matches or exists); found {found}"),
        ));
    }
    let lists = [
        ("one_of", &rule.one_of),
        ("contains_any", &rule.contains_any),
        ("contains_all", &rule.contains_all),
    ];
    for (name, list) in lists {
        if list.as_ref().is_some_and(Vec::is_empty) {
            ok = Err(ctx.error(&p.key(name), "must not be empty"));
        }
    }
    let values = [
        ("equals", rule.equals.as_ref()),
        ("contains", rule.contains.as_ref()),
    ];
    for (name, value) in values {
        if value.is_some_and(has_datetime) {
            ok = Err(ctx.error(&p.key(name), DATETIME));
        }
    }
    for (name, list) in lists {
        for (i, v) in list.iter().flatten().enumerate() {
            if has_datetime(v) {
                ok = Err(ctx.error(&p.key(name).index(i), DATETIME));
            }
        }
    }
    if let Some(pattern) = &rule.matches {
        if let Err(e) = check_regex(pattern) {
            ok = Err(ctx.error(&p.key("matches"), e));
        }
    }
    ok
}

const DATETIME: &str =
    "a TOML date-time has no JSON equivalent and would never equal a claim; quote it as a string";

fn has_datetime(v: &toml::Value) -> bool {
    match v {
        toml::Value::Datetime(_) => true,
        toml::Value::Array(a) => a.iter().any(has_datetime),
        toml::Value::Table(t) => t.values().any(has_datetime),
        _ => false,
    }
}

/// Warns about every route that an earlier one shadows: the earlier route matches every request
/// the later one would (path or enclosing prefix, a superset of methods, no or the same host).
fn shadowing(ctx: &mut Ctx<'_>, routes: &[Route], p: &KeyPath) {
    for (j, later) in routes.iter().enumerate() {
        if let Some(earlier) = routes[..j].iter().find(|e| covers(e, later)) {
            ctx.warn(
                &p.index(j),
                format!(
                    "route {:?} can never match: route {:?} (line {}) comes first and matches every request it would",
                    later.id, earlier.id, earlier.line
                ),
            );
        }
    }
}

fn covers(earlier: &Route, later: &Route) -> bool {
    let path = match (&earlier.path, &later.path) {
        (PathMatch::Exact(a), PathMatch::Exact(b)) => a == b,
        (PathMatch::Prefix(_), PathMatch::Exact(b) | PathMatch::Prefix(b)) => {
            earlier.path.matches(b)
        }
        (PathMatch::Exact(_), PathMatch::Prefix(_)) => false,
    };
    let methods = match (&earlier.methods, &later.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
    };
    let host = match (&earlier.host, &later.host) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a.name == b.name && (a.port.is_none() || a.port == b.port),
    };
    path && methods && host
}

// ---------------------------------------------------------------------------------------------
// Value checks: pure functions, the error being the message for the key
// ---------------------------------------------------------------------------------------------

fn no_controls(v: String) -> Result<String, String> {
    if v.chars().any(char::is_control) {
        Err("must not contain control characters".to_owned())
    } else {
        Ok(v)
    }
}

/// `ip:port`; `localhost:port` is accepted as `127.0.0.1:port`.
fn listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = text
        .strip_prefix("localhost:")
        .and_then(|p| p.parse::<u16>().ok())
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    let hint = if text.starts_with(':') {
        format!(" (to listen on every interface, write \"0.0.0.0{text}\")")
    } else {
        String::new()
    };
    Err(format!(
        "invalid listen address {text:?}: expected ip:port such as \"0.0.0.0:8080\" or \"[::1]:8080\"{hint}"
    ))
}

/// `scheme://host[:port]` with an optional `/`: the upstream and `public_base_url` forms.
fn origin(text: &str) -> Result<UpstreamTarget, String> {
    let uri = parse_http_url(text)?;
    if !matches!(uri.path(), "" | "/") {
        return Err(format!(
            "{text:?} has a path; give an origin such as \"http://127.0.0.1:3000\" (the request path is forwarded as is)"
        ));
    }
    if uri.query().is_some() {
        return Err(format!(
            "{text:?} has a query; give an origin such as \"http://127.0.0.1:3000\""
        ));
    }
    let scheme = if uri.scheme() == Some(&Scheme::HTTPS) {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .ok_or_else(|| format!("{text:?} has no host"))?;
    let authority =
        Authority::from_str(&authority).map_err(|e| format!("invalid URL {text:?}: {e}"))?;
    Ok(UpstreamTarget {
        origin: format!("{scheme}://{authority}"),
        scheme,
        authority,
    })
}

/// An absolute http(s) URL with a host, no user info and no fragment.
fn parse_http_url(text: &str) -> Result<Uri, String> {
    if text.contains('#') {
        return Err(format!("{text:?} has a fragment"));
    }
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("invalid URL {text:?}: {e}"))?;
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "{text:?} has scheme {other:?}; expected http or https"
            ))
        }
        None if text.starts_with('/') => {
            return Err(format!(
                "{text:?} is not an absolute URL; expected http:// or https://"
            ))
        }
        None => {
            return Err(format!(
                "{text:?} is not an absolute URL (did you mean \"http://{text}\"?)"
            ))
        }
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("{text:?} has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!(
            "{text:?} has user info; credentials do not belong in the URL"
        ));
    }
    if authority.host().is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    Ok(uri)
}

/// An issuer's URLs: https, unless the host is loopback or `allow_http` is set.
fn issuer_url(text: &str, allow_http: bool, allow_query: bool) -> Result<(), String> {
    let uri = parse_http_url(text)?;
    if !allow_query && uri.query().is_some() {
        return Err(format!(
            "{text:?} has a query; an issuer identifier has none (OpenID Connect Discovery §3)"
        ));
    }
    let host = uri.host().unwrap_or_default();
    if uri.scheme() != Some(&Scheme::HTTPS) && !allow_http && !is_loopback(host) {
        return Err(format!(
            "{text:?} must use https (http is accepted only for loopback hosts, or with allow_http = true)"
        ));
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A printable-ASCII realm that needs no escaping inside `realm="..."`.
fn check_realm(realm: &str) -> Result<(), String> {
    if realm.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if realm
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        Ok(())
    } else {
        Err(format!(
            "{realm:?} must be printable ASCII without '\"' or '\\'"
        ))
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A header-name prefix, stored lower-cased with `_` as `-` (how request names are compared).
fn header_prefix(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("must not be empty (it would strip every header)".to_owned());
    }
    if !text.bytes().all(is_tchar) {
        return Err(format!("{text:?} is not a valid header-name prefix"));
    }
    Ok(text.to_ascii_lowercase().replace('_', "-"))
}

/// A CIDR (`10.0.0.0/8`, host bits ignored) or a bare IP address (one host).
fn trusted_proxy(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not a CIDR (\"10.0.0.0/8\") or an IP address"))
}

/// Headers tokengate manages itself, or that cannot carry identity (SPEC §4.2).
const RESERVED_HEADERS: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "host",
    "authorization",
    "x-request-id",
    "content-length",
    "dpop",
];

fn identity_header(text: &str) -> Result<HeaderName, String> {
    let name = HeaderName::from_bytes(text.as_bytes())
        .map_err(|_| format!("{text:?} is not a valid HTTP header name"))?;
    let lower = name.as_str();
    if RESERVED_HEADERS.contains(&lower)
        || lower.starts_with("x-forwarded-")
        || lower == "forwarded"
    {
        return Err(format!(
            "{text:?} cannot carry identity: tokengate manages this header itself"
        ));
    }
    Ok(name)
}

/// A claim name, or a JSON Pointer (RFC 6901) when it starts with `/`.
fn claim_name(claim: String) -> Result<String, String> {
    if claim.is_empty() {
        return Err("the claim name must not be empty".to_owned());
    }
    if claim.starts_with('/') {
        let mut chars = claim.chars();
        while let Some(c) = chars.next() {
            if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                return Err(format!(
                    "{claim:?} is not a valid JSON Pointer: \"~\" must be followed by 0 or 1 (write ~0 for \"~\", ~1 for \"/\")"
                ));
            }
        }
    }
    Ok(claim)
}

/// A scope token (RFC 6749 §3.3): printable ASCII except space, `"` and `\`.
fn scope_token(scope: String) -> Result<String, String> {
    let valid = !scope.is_empty()
        && scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
    if valid {
        Ok(scope)
    } else {
        Err(format!(
            "{scope:?} is not a scope token (printable ASCII without spaces, '\"' or '\\')"
        ))
    }
}

fn check_regex(pattern: &str) -> Result<(), String> {
    regex::Regex::new(pattern).map(|_| ()).map_err(|e| {
        let text = e.to_string();
        let detail = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("error: "))
            .map_or_else(
                || text.split_whitespace().collect::<Vec<_>>().join(" "),
                str::to_owned,
            );
        format!("invalid regular expression {pattern:?}: {detail}")
    })
}

/// `require_typ`: lower-cased, without an `application/` prefix (RFC 7515 §4.1.9).
fn typ(text: &str) -> Result<String, String> {
    let lower = text.to_ascii_lowercase();
    let bare = lower.strip_prefix("application/").unwrap_or(&lower);
    if bare.is_empty() {
        return Err(format!("{text:?} names no media type"));
    }
    Ok(bare.to_owned())
}

/// An HTTP method as a case-sensitive token; lower case is refused since `get` is not `GET`.
fn method(text: &str) -> Result<Method, String> {
    if text.is_empty() || !text.bytes().all(is_tchar) {
        return Err(format!("{text:?} is not an HTTP method"));
    }
    if text.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "methods are case-sensitive: write {:?}",
            text.to_ascii_uppercase()
        ));
    }
    Method::from_bytes(text.as_bytes()).map_err(|_| format!("{text:?} is not an HTTP method"))
}

/// A route `host`: a host name or IP (IPv6 in brackets), optionally with `:port`.
fn host_match(text: &str) -> Result<HostMatch, String> {
    let bad = || {
        format!("{text:?} is not a host: expected a name with an optional port, such as \"api.example.com\" or \"api.example.com:8443\"")
    };
    if text.contains('*') {
        return Err(format!(
            "{text:?}: wildcards are not supported; give one host per route"
        ));
    }
    let (name, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or_else(bad)?;
        inner.parse::<Ipv6Addr>().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
        };
        (&text[..inner.len() + 2], port)
    } else {
        match text.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (text, None),
        }
    };
    let port = port
        .map(|p| p.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad))
        .transpose()?;
    if !name.starts_with('[') && !is_hostname(name) {
        return Err(bad());
    }
    Ok(HostMatch {
        name: name.to_ascii_lowercase(),
        port,
    })
}

fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A route `path`/`path_prefix` must be written the way request paths look after normalization
/// (SPEC §4.1), or it could never match: absolute, no `//`, no `.`/`..` segments, unreserved
/// characters not percent-encoded, other escapes in upper case, nothing a request cannot carry.
fn normalized_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with \"/\""));
    }
    if path.contains("//") {
        return Err(format!(
            "{path:?} contains \"//\"; requests are matched after repeated slashes are collapsed"
        ));
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err(format!("{path:?} contains a \".\" or \"..\" segment; requests are matched after dot-segments are resolved"));
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = path
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()));
            let Some(hex) = hex else {
                return Err(format!("{path:?} has a bad percent-escape at byte {i}"));
            };
            let value = u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
            if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
                return Err(format!(
                    "{path:?}: write %{hex} as {:?}; requests are matched after unreserved characters are decoded",
                    char::from(value)
                ));
            }
            if matches!(value, b'/' | b'\\') || value.is_ascii_control() {
                return Err(format!(
                    "{path:?} can never match: requests with %{hex} in the path are rejected"
                ));
            }
            if hex.bytes().any(|c| c.is_ascii_lowercase()) {
                return Err(format!(
                    "{path:?}: write %{hex} in upper case, %{}",
                    hex.to_ascii_uppercase()
                ));
            }
            i += 3;
            continue;
        }
        let pchar = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,=:@/".contains(&b);
        if !pchar {
            let c = path
                .get(i..)
                .and_then(|rest| rest.chars().next())
                .unwrap_or('?');
            return Err(match c {
                ';' => format!("{path:?} can never match: \";\" path parameters are never part of route matching"),
                '?' | '#' => format!("{path:?} has a query or fragment; routes match the path only"),
                '\\' => format!("{path:?} can never match: requests with \"\\\" in the path are rejected"),
                _ => {
                    let mut buf = [0u8; 4];
                    let encoded: String = c.encode_utf8(&mut buf).bytes().map(|b| format!("%{b:02X}")).collect();
                    format!("{path:?}: write {c:?} percent-encoded, as {encoded}")
                }
            });
        }
        i += 1;
    }
    Ok(())
}
