//! Step 5 of the loader: each section of the raw schema checked and compiled into the model.
//!
//! One function per table (`server`, `admin`, `upstream`, `dpop`, `userinfo`, `identity`,
//! `telemetry`), each reading every key, reporting every bad value at its key path and only then
//! deciding whether the section could be built. Issuers and routes have their own files
//! (`issuers.rs`, `routes.rs`); the pure value checks they share are in `check.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;

use super::check::*;
use super::ctx::{all, non_empty, Checked, Ctx, Zero};
use super::files::FileKind;
use super::issuers::{algorithm_list, issuers};
use super::locate::KeyPath;
use super::model::*;
use super::raw::{self, RawConfig};
use super::routes::routes;
use crate::identity::assertion::SET_BY_PROXY;
use crate::policy::claim_path;

pub(super) fn compile(ctx: &mut Ctx<'_>, raw: RawConfig) -> Checked<Config> {
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
    let telemetry = raw
        .telemetry
        .map(|t| telemetry(ctx, t, &root.key("telemetry")))
        .transpose();
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
        telemetry: telemetry?,
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
    let idle_timeout = ctx.duration(
        raw.idle_timeout,
        &at("idle_timeout"),
        Duration::from_secs(60),
        Zero::Rejected,
    );
    let max_concurrent_streams = ctx.count(
        raw.max_concurrent_streams,
        &at("max_concurrent_streams"),
        100,
        1,
        i64::from(u32::MAX),
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
        idle_timeout: idle_timeout?,
        max_concurrent_streams: u32::try_from(max_concurrent_streams?).unwrap_or(u32::MAX),
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
        .and_then(|v| ctx.file_path(v, &p.key("cert"), FileKind::Certificates));
    let key = ctx
        .required(raw.key, &p.key("key"))
        .and_then(|v| ctx.file_path(v, &p.key("key"), FileKind::TlsKey));
    let client_ca = ctx.opt_file(raw.client_ca, &p.key("client_ca"), FileKind::Certificates);
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
    let max_connections = ctx.count(
        raw.max_connections,
        &p.key("max_connections"),
        1024,
        1,
        i64::MAX,
    );
    let ca_file = ctx.opt_file(raw.ca_file, &p.key("ca_file"), FileKind::Certificates);
    let protocol = raw
        .protocol
        .map(|v| ctx.check(&p.key("protocol"), UpstreamProtocol::parse(&v)))
        .transpose();
    Ok(Upstream {
        target: Arc::new(url?),
        connect_timeout: connect_timeout?,
        timeout: timeout?,
        max_connections: max_connections?,
        ca_file: ca_file?,
        protocol: protocol?.unwrap_or(UpstreamProtocol::Http1),
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
    let signing_key = ctx.opt_file(raw.signing_key, &at("signing_key"), FileKind::SigningKey);
    let key_id = ctx.opt_text(raw.key_id, &at("key_id"));
    let previous = raw.previous_keys.unwrap_or_default();
    let previous_keys = all(previous
        .into_iter()
        .enumerate()
        .map(|(i, f)| ctx.file_path(f, &at("previous_keys").index(i), FileKind::PublicKey))
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
    ctx.unique_list(p, list, |claim| {
        if claim.is_empty() {
            Err("must not be empty".to_owned())
        } else if claim.starts_with('/') {
            Err("identity.claims holds top-level claim names; JSON Pointers are for [identity.headers] and route claims".to_owned())
        } else if SET_BY_PROXY.contains(&claim.as_str()) {
            Err(format!(
                "{claim:?} is set by tokengate itself and cannot be copied from the token"
            ))
        } else {
            Ok(claim)
        }
    })
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
        let claim = ctx.check(&path, claim_path(&claim).map(|_| claim));
        match (header, claim, &mut out) {
            (Ok(h), Ok(c), Ok(v)) => v.push((h, c)),
            (Err(r), _, _) | (_, Err(r), _) => out = Err(r),
            _ => {}
        }
    }
    out
}

fn telemetry(ctx: &mut Ctx<'_>, raw: raw::RawTelemetry, p: &KeyPath) -> Checked<Telemetry> {
    let at = |k: &str| p.key(k);
    let otlp_endpoint = match raw.otlp_endpoint {
        None => Ok(None),
        Some(text) => {
            let base = ctx.check(&at("otlp_endpoint"), otlp_base(&text));
            if let Ok(base) = &base {
                if base.ends_with("/v1/traces") {
                    ctx.warn(
                        &at("otlp_endpoint"),
                        format!(
                            "spans are POSTed to {base}/v1/traces; give the collector's base URL \
                             (without /v1/traces) unless that is really where it listens"
                        ),
                    );
                }
            }
            base.map(Some)
        }
    };
    let service_name = raw.service_name.unwrap_or_else(|| "tokengate".to_owned());
    let service_name = ctx.check(
        &at("service_name"),
        non_empty(service_name).and_then(no_controls),
    );
    let sample_ratio = match raw.sample_ratio {
        None => Ok(1.0),
        Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
        Some(r) => Err(ctx.error(
            &at("sample_ratio"),
            format!("must be between 0.0 and 1.0, found {r}"),
        )),
    };
    Ok(Telemetry {
        otlp_endpoint: otlp_endpoint?,
        service_name: service_name?,
        sample_ratio: sample_ratio?,
    })
}

/// The collector's base URL: absolute http(s), no query (the exporter appends `/v1/traces`),
/// stored without trailing `/`. A path is kept (a collector behind a path prefix).
fn otlp_base(text: &str) -> Result<String, String> {
    let uri = parse_http_url(text)?;
    if uri.query().is_some() {
        return Err(format!(
            "{text:?} has a query; give the collector's base URL such as \"http://127.0.0.1:4318\" \
             (spans are POSTed to <otlp_endpoint>/v1/traces)"
        ));
    }
    Ok(text.trim_end_matches('/').to_owned())
}
