//! `[[issuer]]` tables: identifiers, URLs (https unless loopback or `allow_http`), audiences,
//! algorithm allow-lists, the HMAC secret rule and `[issuer.introspection]`.
//!
//! `algorithm_list` is shared with `[dpop]`. Fetching keys, discovery and token checks are the
//! `token` module's job; this file only decides whether the configured values make sense.

use std::time::Duration;

use super::check::*;
use super::ctx::{all, non_empty, unique, Checked, Ctx, Zero};
use super::files::FileKind;
use super::locate::KeyPath;
use super::model::*;
use super::raw;

pub(super) fn issuers(
    ctx: &mut Ctx<'_>,
    raws: Vec<raw::RawIssuer>,
    p: &KeyPath,
) -> Checked<Vec<Issuer>> {
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
    let ca_file = ctx.opt_file(raw.ca_file, &at("ca_file"), FileKind::Certificates);
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
pub(super) fn algorithm_list(
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
    ctx.unique_list(path, names.iter(), |name| {
        algorithm(name).and_then(|a| {
            if asymmetric_only && a.is_hmac() {
                Err(format!(
                    "{name} is symmetric; DPoP proofs are signed with asymmetric keys only"
                ))
            } else {
                Ok(a)
            }
        })
    })
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
