//! What a request must look like before any route is consulted (SPEC §4.0, §4.1): framing rules
//! hyper's HTTP/1 parser lets through, the exact head-size limit, the one host the client
//! addressed, the normalized path, and whether it asks for a protocol upgrade.

use http::header;
use http::request::Parts;
use http::{Method, Version};

use super::ConnInfo;
use crate::rejection::Rejection;
use crate::route::host::Host;
use crate::route::{self, normalize::NormalizedPath};

/// Phase 0 (SPEC §4.0): what hyper's HTTP/1 parser lets through but a proxy must not.
pub(super) fn check_framing(parts: &Parts, conn: &ConnInfo, index: u64) -> Result<(), Rejection> {
    if parts.method == Method::CONNECT {
        return Err(Rejection::bad_framing("CONNECT is not supported"));
    }
    if parts.version <= Version::HTTP_11 {
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            return Err(Rejection::bad_framing(
                "only origin-form request targets are accepted",
            ));
        }
        if conn
            .head_flags
            .as_ref()
            .is_some_and(|f| f.had_cl_and_te(index))
        {
            return Err(Rejection::bad_framing(
                "both Content-Length and Transfer-Encoding are present",
            ));
        }
        let mut codings = parts.headers.get_all(header::TRANSFER_ENCODING).iter();
        if let Some(first) = codings.next() {
            // hyper accepts `gzip, chunked` or two TE lines and drops the outer coding's meaning;
            // forwarding such a body re-framed would change it, so only plain `chunked` passes.
            if codings.next().is_some() || !first.as_bytes().eq_ignore_ascii_case(b"chunked") {
                return Err(Rejection::bad_framing(
                    "Transfer-Encoding other than chunked is not accepted",
                ));
            }
        }
    }
    Ok(())
}

/// The request head's size as it was on the wire (HTTP/1 request line and header lines), against
/// `max_header_bytes`. hyper's own limit is set looser and only catches what never parses.
pub(super) fn check_head_size(parts: &Parts, max: usize) -> Result<(), Rejection> {
    let line = parts.method.as_str().len()
        + parts.uri.path_and_query().map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n".len()
        + 1;
    let mut size = line + 2;
    for (name, value) in &parts.headers {
        size += name.as_str().len() + value.len() + 4;
    }
    if size > max {
        Err(Rejection::HeaderTooLarge)
    } else {
        Ok(())
    }
}

/// The host the client addressed, canonical (SPEC §3): `:authority` for HTTP/2, the single
/// `Host` header for HTTP/1.1 (missing or repeated → 400, RFC 9112 §3.2). Over HTTP/2 a `host`
/// header that names another host than `:authority` → 400 (RFC 9113 §8.3.1): routing and the
/// upstream must never see two different hosts.
pub(super) fn request_host(parts: &Parts) -> Result<Option<Host>, Rejection> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err(Rejection::bad_request("several Host headers"));
    }
    let header_host = first
        .map(|value| {
            Host::from_header(value).map_err(|_| Rejection::bad_request("invalid Host header"))
        })
        .transpose()?;
    if parts.version >= Version::HTTP_2 {
        if let Some(authority) = parts.uri.authority() {
            let authority = Host::parse(authority.as_str())
                .map_err(|_| Rejection::bad_request("invalid :authority"))?;
            if header_host.as_ref().is_some_and(|h| *h != authority) {
                return Err(Rejection::bad_request(
                    "the host header differs from :authority",
                ));
            }
            return Ok(Some(authority));
        }
    }
    match header_host {
        Some(host) => Ok(Some(host)),
        None if parts.version >= Version::HTTP_11 => {
            Err(Rejection::bad_request("a Host header is required"))
        }
        None => Ok(None),
    }
}

/// RFC 9110 §9.1: methods are case-sensitive, and every standard one is upper case. A method
/// with a lower-case letter (`delete`, `Get`) is refused rather than routed: a route for `DELETE`
/// must never be skipped for a request that an upstream framework upper-cases before dispatching.
pub(super) fn check_method(method: &Method) -> Result<(), Rejection> {
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Rejection::bad_request(
            "methods are case-sensitive and must be upper case",
        ));
    }
    Ok(())
}

pub(super) fn normalize(
    parts: &Parts,
    allow_path_parameters: bool,
) -> Result<NormalizedPath, Rejection> {
    route::normalize::normalize(parts.uri.path(), allow_path_parameters)
        .map_err(|e| Rejection::bad_request(e.description()))
}

/// A WebSocket upgrade request (RFC 6455 §4.1): HTTP/1.1 `GET` with `Upgrade: websocket` as the
/// one protocol and `Connection: upgrade`. It is the only protocol switch ever tunnelled: `h2c`,
/// TLS or any other token would hand the client a raw connection to the upstream, past every
/// later policy check, so such a request is forwarded as a plain one (its `Upgrade` is removed).
pub(super) fn is_websocket_upgrade(parts: &Parts) -> bool {
    let mut upgrades = parts.headers.get_all(header::UPGRADE).iter();
    let only_websocket = match (upgrades.next(), upgrades.next()) {
        (Some(value), None) => value
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"websocket"),
        _ => false,
    };
    parts.version == Version::HTTP_11
        && parts.method == Method::GET
        && only_websocket
        && parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}
