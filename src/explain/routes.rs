//! Phase 2 described: every route tried in file order with the reason it was passed over
//! (`route::explain_match`, the rule `route::find` itself uses), up to the one that matched.

use http::Method;

use super::report::RouteTried;
use crate::config::{AuthMode, PathMatch, Route};
use crate::inbound::Inbound;
use crate::route::{self, Mismatch};

/// Every route tried in file order, up to and including the match.
pub(super) fn routes_tried(
    routes: &[Route],
    inbound: &Inbound,
    found: Option<&Route>,
) -> Vec<RouteTried> {
    let mut tried = Vec::new();
    for route in routes {
        let result = route::explain_match(
            route,
            &inbound.path.match_path,
            &inbound.parts.method,
            inbound.host.as_ref(),
        );
        let matched = result.is_ok() && found.is_some_and(|f| std::ptr::eq(f, route));
        tried.push(RouteTried {
            id: route.id.to_string(),
            rule: route_rule(route),
            matched,
            mismatch: result.err().map(|m| match m {
                Mismatch::Path => "path",
                Mismatch::Method => "method",
                Mismatch::Host => "host",
            }),
            auth: match route.auth {
                AuthMode::Public => "public",
                AuthMode::Optional => "optional",
                AuthMode::Required => "required",
            },
        });
        if matched {
            break;
        }
    }
    tried
}

fn route_rule(route: &Route) -> String {
    let mut rule = match &route.path {
        PathMatch::Exact(p) => format!("path {p}"),
        PathMatch::Prefix(p) if p.is_empty() => "path_prefix /".to_owned(),
        PathMatch::Prefix(p) => format!("path_prefix {p}"),
    };
    if let Some(methods) = &route.methods {
        let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
        rule.push_str(&format!(", methods {}", names.join(" ")));
    }
    if let Some(host) = &route.host {
        match host.port {
            Some(port) => rule.push_str(&format!(", host {}:{port}", host.name)),
            None => rule.push_str(&format!(", host {}", host.name)),
        }
    }
    rule
}
