//! Value checks: pure functions of one configuration value, the error being the message for its
//! key (the caller knows the key path and line).
//!
//! Nothing here reads the loader's state or the filesystem, so each check can be tested alone and
//! reused by any section: listen addresses, origins and issuer URLs, header names and prefixes,
//! CIDRs, methods, hosts, route paths, `typ`. Claim names, scope tokens and regexes belong to
//! policies and are checked by `crate::policy`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use http::header::HeaderName;
use http::uri::{Authority, Scheme};
use http::{Method, Uri};
use ipnet::IpNet;

use super::model::{HostMatch, UpstreamTarget};
use crate::route::host::Host;

pub(super) fn no_controls(v: String) -> Result<String, String> {
    if v.chars().any(char::is_control) {
        Err("must not contain control characters".to_owned())
    } else {
        Ok(v)
    }
}

/// `ip:port`; `localhost:port` is accepted as `127.0.0.1:port`.
pub(super) fn listen_addr(text: &str) -> Result<SocketAddr, String> {
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
pub(super) fn origin(text: &str) -> Result<UpstreamTarget, String> {
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
pub(super) fn parse_http_url(text: &str) -> Result<Uri, String> {
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
pub(super) fn issuer_url(text: &str, allow_http: bool, allow_query: bool) -> Result<(), String> {
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

pub(super) fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A printable-ASCII realm that needs no escaping inside `realm="..."`.
pub(super) fn check_realm(realm: &str) -> Result<(), String> {
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

pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A header-name prefix, stored lower-cased with `_` as `-` (how request names are compared).
pub(super) fn header_prefix(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("must not be empty (it would strip every header)".to_owned());
    }
    if !text.bytes().all(is_tchar) {
        return Err(format!("{text:?} is not a valid header-name prefix"));
    }
    Ok(text.to_ascii_lowercase().replace('_', "-"))
}

/// A CIDR (`10.0.0.0/8`, host bits ignored) or a bare IP address (one host).
pub(super) fn trusted_proxy(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not a CIDR (\"10.0.0.0/8\") or an IP address"))
}

/// Headers tokengate manages itself, or that cannot carry identity (SPEC §4.2).
pub(super) const RESERVED_HEADERS: [&str; 14] = [
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

pub(super) fn identity_header(text: &str) -> Result<HeaderName, String> {
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

/// `require_typ`: lower-cased, without an `application/` prefix (RFC 7515 §4.1.9).
pub(super) fn typ(text: &str) -> Result<String, String> {
    let lower = text.to_ascii_lowercase();
    let bare = lower.strip_prefix("application/").unwrap_or(&lower);
    if bare.is_empty() {
        return Err(format!("{text:?} names no media type"));
    }
    Ok(bare.to_owned())
}

/// An HTTP method as a case-sensitive token; lower case is refused since `get` is not `GET`.
pub(super) fn method(text: &str) -> Result<Method, String> {
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

/// A route `host`: a host name or IP (IPv6 in brackets), optionally with `:port`, canonicalized
/// the way request hosts are (SPEC §3), so `Admin.Example.COM.` matches what requests send.
pub(super) fn host_match(text: &str) -> Result<HostMatch, String> {
    if text.contains('*') {
        return Err(format!(
            "{text:?}: wildcards are not supported; give one host per route"
        ));
    }
    let host = Host::parse(text).map_err(|_| {
        format!("{text:?} is not a host: expected a name with an optional port, such as \"api.example.com\" or \"api.example.com:8443\"")
    })?;
    Ok(HostMatch {
        name: host.name().to_owned(),
        port: host.port(),
    })
}

/// A route `path`/`path_prefix` must be written the way request paths look after normalization
/// (SPEC §4.1), or it could never match: absolute, no `//`, no `.`/`..` segments, unreserved
/// characters not percent-encoded, other escapes in upper case, nothing a request cannot carry.
pub(super) fn normalized_path(path: &str) -> Result<(), String> {
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
