//! `[[route]]` tables: id, path or prefix, methods, host, auth mode, issuers, upstream, and the
//! route's policy (scopes, `[[route.claims]]`, `[[route.any_of]]`); then the shadowing warnings.
//!
//! Route matching itself is `crate::route`'s job; this file only builds and checks the table.

use std::sync::Arc;

use http::Method;

use super::check::*;
use super::ctx::{all, unique, Checked, Ctx, Reported, Zero};
use super::locate::KeyPath;
use super::model::*;
use super::raw::{self, AnyOf, ClaimRule};
use crate::policy::Policy;

pub(super) fn routes(
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
    let userinfo_max_age =
        ctx.opt_duration(raw.userinfo_max_age, &at("userinfo_max_age"), Zero::Allowed);
    let upstream = raw
        .upstream
        .map(|u| ctx.check(&at("upstream"), origin(&u).map(Arc::new)))
        .transpose();
    let upstream_protocol = raw
        .upstream_protocol
        .map(|v| ctx.check(&at("upstream_protocol"), UpstreamProtocol::parse(&v)))
        .transpose();
    let audience = ctx.opt_text(raw.audience, &at("audience"));
    let scopes = raw.scopes.unwrap_or_default();
    let claims = raw.claims.unwrap_or_default();
    let any_of = raw.any_of.unwrap_or_default();
    let policy = policy(ctx, &scopes, &claims, &any_of, p);
    if let Ok(AuthMode::Public) = auth {
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
        userinfo: Ctx::flag(raw.userinfo),
        userinfo_max_age: userinfo_max_age?,
        upstream: upstream?,
        upstream_protocol: upstream_protocol?,
        audience: audience?,
        require_sender_constrained: Ctx::flag(raw.require_sender_constrained),
        policy: policy?,
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
    ctx.unique_list(p, list.iter(), |m| method(m))
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
    ctx.unique_list(p, list.iter(), |name| {
        let found = ids
            .iter()
            .position(|id| id.as_deref() == Some(name.as_str()));
        found.ok_or_else(|| match raw::closest(name, known.iter().copied()) {
            Some(best) => format!("unknown issuer id {name:?} (did you mean {best:?}?)"),
            None if known.is_empty() => {
                format!("unknown issuer id {name:?}: no [[issuer]] is configured")
            }
            None => format!(
                "unknown issuer id {name:?} (configured: {})",
                known.join(", ")
            ),
        })
    })
}

/// The route's policy, compiled by `Policy::compile` (the one place that knows the rules); each
/// of its problems is reported at its key path below the route. A problem under a key that was
/// already reported and removed (a type error in a rule, say) is not reported again: that rule
/// or block is incomplete, not wrong.
fn policy(
    ctx: &mut Ctx<'_>,
    scopes: &[String],
    claims: &[ClaimRule],
    any_of: &[AnyOf],
    p: &KeyPath,
) -> Checked<Policy> {
    Policy::compile(scopes, claims, any_of).map_err(|problems| {
        for (suffix, message) in problems {
            let path = below(p, &suffix);
            if !ctx.reported_within(&path) {
                ctx.error(&path, message);
            }
        }
        Reported
    })
}

/// `p` extended by a relative key path such as `claims[0].matches` or `any_of[1].scopes[0]`
/// (schema keys only, so no quoting to undo).
fn below(p: &KeyPath, suffix: &str) -> KeyPath {
    let mut path = p.clone();
    for part in suffix.split('.') {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
            path = path.key(key);
        }
        for index in pieces {
            match index.trim_end_matches(']').parse() {
                Ok(i) => path = path.index(i),
                Err(_) => path = path.key(index),
            }
        }
    }
    path
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
            crate::route::path_matches(&earlier.path, b)
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
