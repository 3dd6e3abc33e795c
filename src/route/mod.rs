//! Which route a request belongs to: its canonical host (`host`), its normalized path
//! (`normalize`), and the first-match rule of SPEC §3 (file order; `path`/`path_prefix`,
//! `methods` and `host` must all match), which turns an `Inbound` into a [`Routed`] request.
//! [`explain_match`] is that rule with the reason a route was passed over, for `tokengate explain`.

pub mod host;
pub mod normalize;

use http::Method;

use crate::config::{HostMatch, PathMatch, Route};
use crate::inbound::Inbound;
use host::Host;

/// A request and the route it matched: phase 2's result (`Gateway::route`).
pub struct Routed<'g> {
    pub inbound: Box<Inbound>,
    pub route: &'g Route,
}

/// The first route that matches, in file order.
pub fn find<'a>(
    routes: &'a [Route],
    path: &str,
    method: &Method,
    host: Option<&Host>,
) -> Option<&'a Route> {
    find_index(routes, path, method, host).and_then(|i| routes.get(i))
}

/// The index of the first route that matches, in file order.
pub fn find_index(
    routes: &[Route],
    path: &str,
    method: &Method,
    host: Option<&Host>,
) -> Option<usize> {
    routes.iter().position(|r| matches(r, path, method, host))
}

/// Whether `route` matches a request (paths are case-sensitive, hosts canonical).
#[inline]
pub fn matches(route: &Route, path: &str, method: &Method, host: Option<&Host>) -> bool {
    explain_match(route, path, method, host).is_ok()
}

/// Which condition of a route a request fails, checked in this order (`tokengate explain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// The normalized path is not the route's `path` / under its `path_prefix`.
    Path,
    /// The method is not in the route's `methods`.
    Method,
    /// The route names a `host` and the request's canonical host is another (or absent).
    Host,
}

/// [`matches`] with the reason when it does not: the one definition of a match, so `find` and
/// `tokengate explain` can never disagree.
#[inline]
pub fn explain_match(
    route: &Route,
    path: &str,
    method: &Method,
    host: Option<&Host>,
) -> Result<(), Mismatch> {
    if !path_matches(&route.path, path) {
        return Err(Mismatch::Path);
    }
    let method_ok = route.methods.as_ref().is_none_or(|m| {
        // A HEAD is a GET without the body (RFC 9110 §9.3.2): it must never fall through
        // to a later route.
        m.contains(method) || (method == Method::HEAD && m.contains(&Method::GET))
    });
    if !method_ok {
        return Err(Mismatch::Method);
    }
    let host_ok = route
        .host
        .as_ref()
        .is_none_or(|h| host.is_some_and(|v| host_matches(h, v)));
    if !host_ok {
        return Err(Mismatch::Host);
    }
    Ok(())
}

/// `path` equals an exact rule; a prefix rule matches segment-aware (`/orders` matches `/orders`
/// and `/orders/7`, never `/ordersX`).
pub fn path_matches(rule: &PathMatch, path: &str) -> bool {
    match rule {
        PathMatch::Exact(p) => p == path,
        PathMatch::Prefix(p) => {
            path.starts_with(p.as_str())
                && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
        }
    }
}

/// The request's port only counts when the rule names one.
pub fn host_matches(rule: &HostMatch, host: &Host) -> bool {
    host.name() == rule.name && (rule.port.is_none() || rule.port == host.port())
}
