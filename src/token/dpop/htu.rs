//! Comparing a proof's `htu` claim with the URI the client addressed (RFC 9449 §4.3 check 9,
//! SPEC §4.8).
//!
//! The client signs the URI it used: scheme, authority and path, without query and fragment.
//! Clients and intermediaries spell the same URI differently, so the comparison is on a
//! normalized form: scheme and host case-insensitively, a default port (`:80` for http, `:443`
//! for https) equal to no port, an empty path equal to `/`, and the path normalized by the very
//! rules the request path went through (SPEC §4.1, `route::normalize`), then compared
//! case-sensitively with the request's normalized path. Anything that is not an absolute
//! `http`/`https` URI, carries userinfo, or has a path the proxy would refuse never matches.
//!
//! Working out what the request's own scheme and authority are (`public_base_url`, the listener,
//! a trusted proxy's `X-Forwarded-*`) is the caller's job; it hands them in as [`ExpectedHtu`].
//! No URL crate is involved: the grammar needed here is small and a hand parser leaves no doubt
//! about which spelling is accepted.

use crate::route::normalize;

/// The URI the request was addressed to, as the proxy sees it.
#[derive(Debug, Clone, Copy)]
pub struct ExpectedHtu<'a> {
    /// `http` or `https` (any case).
    pub scheme: &'a str,
    /// `host[:port]` as the client addressed it (canonical host preferred; compared
    /// case-insensitively, a default port ignored).
    pub authority: &'a str,
    /// The request's normalized path: `NormalizedPath::forward_path` (it equals `match_path`
    /// unless path parameters are allowed and present).
    pub path: &'a str,
    /// `[server].allow_path_parameters`: the htu path is normalized with the same setting.
    pub allow_path_parameters: bool,
}

/// `htu` names the same scheme, authority and (normalized) path as `expected`.
pub(crate) fn matches(expected: &ExpectedHtu<'_>, htu: &str) -> bool {
    let Some((scheme, rest)) = htu.split_once("://") else {
        return false;
    };
    let Some(default_port) = default_port(scheme) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(expected.scheme) {
        return false;
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    let path = match after.find(['?', '#']) {
        Some(end) => &after[..end],
        None => after,
    };
    let path = if path.is_empty() { "/" } else { path };

    let (Some(mine), Some(theirs)) = (
        Authority::parse(authority, default_port),
        Authority::parse(expected.authority, default_port),
    ) else {
        return false;
    };
    if !mine.host.eq_ignore_ascii_case(theirs.host) || mine.port != theirs.port {
        return false;
    }
    // The common case: the client signed the path already in normal form. Normalizing is
    // idempotent on normalized paths, so equal text means equal paths; skip the allocation.
    if path == expected.path {
        return true;
    }
    normalize::normalize(path, expected.allow_path_parameters)
        .is_ok_and(|p| p.forward_path == expected.path)
}

/// The port a scheme implies, for `http` and `https` only.
fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else {
        None
    }
}

/// `host[:port]` split, with the default port and one trailing dot of a DNS name removed (the
/// proxy canonicalizes the request's host the same way, SPEC §3).
struct Authority<'a> {
    host: &'a str,
    /// `None` for no port, an empty port or the scheme's default port.
    port: Option<u16>,
}

impl<'a> Authority<'a> {
    fn parse(authority: &'a str, default_port: u16) -> Option<Authority<'a>> {
        if authority.is_empty() || authority.contains('@') {
            // No host, or userinfo: a proof never needs credentials in its URI.
            return None;
        }
        let (host, port) = if authority.starts_with('[') {
            let close = authority.find(']')?;
            let (host, rest) = authority.split_at(close + 1);
            match rest {
                "" => (host, ""),
                _ => (host, rest.strip_prefix(':')?),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, port),
                None => (authority, ""),
            }
        };
        if host.is_empty() || (!host.starts_with('[') && host.contains([':', '[', ']'])) {
            return None;
        }
        let port = match port {
            "" => None,
            p if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse::<u16>().ok()?)
            }
            _ => return None,
        };
        let host = match host.strip_suffix('.') {
            Some(h) if !h.is_empty() && !h.ends_with('.') => h,
            Some(_) => return None,
            None => host,
        };
        Some(Authority {
            host,
            port: port.filter(|&p| p != default_port),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected<'a>(scheme: &'a str, authority: &'a str, path: &'a str) -> ExpectedHtu<'a> {
        ExpectedHtu {
            scheme,
            authority,
            path,
            allow_path_parameters: false,
        }
    }

    const API: ExpectedHtu<'static> = ExpectedHtu {
        scheme: "https",
        authority: "api.example.com",
        path: "/orders/1",
        allow_path_parameters: false,
    };

    #[test]
    fn same_uri_matches() {
        assert!(matches(&API, "https://api.example.com/orders/1"));
    }

    #[test]
    fn scheme_and_host_compare_case_insensitively() {
        assert!(matches(&API, "HTTPS://API.Example.COM/orders/1"));
    }

    #[test]
    fn path_compares_case_sensitively() {
        assert!(!matches(&API, "https://api.example.com/Orders/1"));
    }

    #[test]
    fn default_port_spelled_out_matches_on_either_side() {
        assert!(matches(&API, "https://api.example.com:443/orders/1"));
        let with_port = expected("https", "api.example.com:443", "/orders/1");
        assert!(matches(&with_port, "https://api.example.com/orders/1"));
        let http = expected("http", "api.example.com", "/orders/1");
        assert!(matches(&http, "http://api.example.com:80/orders/1"));
    }

    #[test]
    fn other_port_does_not_match() {
        assert!(!matches(&API, "https://api.example.com:8443/orders/1"));
        // :80 is only the default for http.
        assert!(!matches(&API, "https://api.example.com:80/orders/1"));
        let on_8443 = expected("https", "api.example.com:8443", "/orders/1");
        assert!(matches(&on_8443, "https://api.example.com:8443/orders/1"));
        assert!(!matches(&on_8443, "https://api.example.com/orders/1"));
    }

    #[test]
    fn query_and_fragment_are_ignored() {
        assert!(matches(&API, "https://api.example.com/orders/1?x=1#top"));
        assert!(matches(&API, "https://api.example.com/orders/1#top"));
        let root = expected("https", "api.example.com", "/");
        assert!(matches(&root, "https://api.example.com"));
        assert!(matches(&root, "https://api.example.com?x=1"));
    }

    #[test]
    fn path_is_normalized_before_comparing() {
        assert!(matches(&API, "https://api.example.com/orders/./x/../1"));
        assert!(matches(&API, "https://api.example.com//orders/%31"));
        assert!(!matches(&API, "https://api.example.com/orders/1/.."));
    }

    #[test]
    fn path_the_proxy_would_refuse_never_matches() {
        for htu in [
            "https://api.example.com/../orders/1",
            "https://api.example.com/orders%2F1",
            "https://api.example.com/orders/1;x",
            "https://api.example.com/orders/\u{e9}",
        ] {
            assert!(!matches(&API, htu), "{htu}");
        }
    }

    #[test]
    fn path_parameters_follow_the_proxy_setting() {
        let params = ExpectedHtu {
            scheme: "https",
            authority: "api.example.com",
            path: "/admin;x",
            allow_path_parameters: true,
        };
        assert!(matches(
            &params,
            "https://api.example.com/public/..;/admin;x"
        ));
    }

    #[test]
    fn other_scheme_or_host_does_not_match() {
        assert!(!matches(&API, "http://api.example.com/orders/1"));
        assert!(!matches(&API, "https://evil.example.com/orders/1"));
        assert!(!matches(&API, "https://api.example.com.evil/orders/1"));
        assert!(!matches(&API, "ftp://api.example.com/orders/1"));
    }

    #[test]
    fn not_an_absolute_http_uri_never_matches() {
        for htu in [
            "/orders/1",
            "api.example.com/orders/1",
            "https:/api.example.com/orders/1",
            "https:///orders/1",
            "https://user@api.example.com/orders/1",
            "https://api.example.com::443/orders/1",
            "https://api.example.com:99999/orders/1",
            "https://api.example.com:4a3/orders/1",
            "https://api.example.com../orders/1",
            "",
        ] {
            assert!(!matches(&API, htu), "{htu}");
        }
    }

    #[test]
    fn one_trailing_dot_and_empty_port_are_the_canonical_host() {
        assert!(matches(&API, "https://api.example.com./orders/1"));
        assert!(matches(&API, "https://api.example.com:/orders/1"));
    }

    #[test]
    fn ipv6_hosts_compare_with_their_ports() {
        let v6 = expected("http", "[::1]:8080", "/orders/1");
        assert!(matches(&v6, "http://[::1]:8080/orders/1"));
        assert!(!matches(&v6, "http://[::1]/orders/1"));
        assert!(!matches(&v6, "http://[::2]:8080/orders/1"));
        assert!(!matches(&v6, "http://::1:8080/orders/1"));
    }
}
