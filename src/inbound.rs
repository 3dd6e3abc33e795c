//! The request as the server layer hands it to the gateway, and the checks every request passes
//! before any route is consulted (SPEC §4.0 framing, §4.1 path, §3 host and method).
//!
//! The server layer (`server`) knows connections: the peer, TLS, what the byte-level framing
//! observer saw. The gateway knows routes and tokens. This module is what they share, so neither
//! imports the other's internals: the server describes the connection ([`ConnInfo`]) and the
//! framing verdict ([`Framing`]); [`Inbound::admit`] turns a request into the first value of the
//! phase line, or a `Rejection` (400, 431).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Version};
use hyper::body::Incoming;

use crate::config::Server;
use crate::rejection::Rejection;
use crate::route::host::{Host, InvalidHost};
use crate::route::normalize::{self, NormalizedPath};

/// The listener's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// Facts about the client connection a request arrived on, fixed for its lifetime (and the
/// host its requests name, remembered).
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as an `X-Forwarded-For` value, built once per connection.
    pub peer_value: HeaderValue,
    pub scheme: Scheme,
    /// base64url SHA-256 of the TLS client certificate, when one was presented (RFC 8705).
    pub client_cert: Option<String>,
    /// The connection's span (its peer): the parent of each request's span. Named as the
    /// parent rather than entered around every poll of the connection, which costs a span
    /// lookup on each of them.
    pub span: tracing::Span,
    /// The first canonical host a request on the connection named: the requests of a
    /// connection nearly always name the same one, and checking a host is a pure function of
    /// its text, so a byte-equal host is not checked again.
    host: OnceLock<Host>,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        scheme: Scheme,
        client_cert: Option<String>,
        span: tracing::Span,
    ) -> Self {
        ConnInfo {
            peer,
            peer_value: crate::scrub::address_value(peer.ip()),
            scheme,
            client_cert,
            span,
            host: OnceLock::new(),
        }
    }

    /// [`Host::parse`] of a `Host` or `:authority` value, remembered for the connection (see
    /// `host`). Bytes that are not text are no host either.
    pub fn host(&self, raw: &[u8]) -> Result<Host, InvalidHost> {
        let seen = self.host.get();
        if let Some(seen) = seen.filter(|h| h.header_value().as_bytes() == raw) {
            return Ok(seen.clone());
        }
        let text = std::str::from_utf8(raw).map_err(|_| InvalidHost)?;
        let host = Host::parse(text)?;
        if seen.is_none() && host.as_str() == text {
            let _ = self.host.set(host.clone());
        }
        Ok(host)
    }
}

/// What the server's byte-level observer saw of an HTTP/1 request head that hyper hides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Nothing hyper's parser would hide (always the case for HTTP/2).
    Clean,
    /// Both `Content-Length` and `Transfer-Encoding` were sent (hyper drops the former).
    ContentLengthAndTransferEncoding,
}

/// A request that passed the checks before routing: its head, body and connection, the canonical
/// host it addressed and its normalized path.
pub struct Inbound {
    pub parts: Parts,
    pub body: Incoming,
    pub conn: Arc<ConnInfo>,
    /// `None` only for HTTP/1.0 without `Host`.
    pub host: Option<Host>,
    pub path: NormalizedPath,
}

impl Inbound {
    /// Phase 0 and 1: framing, method, head size, host, path (SPEC §4.0, §4.1, §3).
    ///
    /// Boxed: the request head is the largest value of the phase line, and each phase takes its
    /// input by value, so a box moves 8 bytes where the head would be copied phase to phase.
    pub fn admit(
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
        framing: Framing,
        server: &Server,
    ) -> Result<Box<Inbound>, Rejection> {
        let (parts, body) = req.into_parts();
        check_framing(&parts, framing)?;
        check_method(&parts.method)?;
        check_head_size(&parts, server.max_header_bytes)?;
        let host = request_host(&parts, &conn)?;
        let path = normalize::normalize(parts.uri.path(), server.allow_path_parameters)
            .map_err(|e| Rejection::bad_request(e.description()))?;
        Ok(Box::new(Inbound {
            parts,
            body,
            conn,
            host,
            path,
        }))
    }

    /// A WebSocket upgrade request (RFC 6455 §4.1): HTTP/1.1 `GET` with `Upgrade: websocket` as
    /// the one protocol and `Connection: upgrade`. It is the only protocol switch ever
    /// tunnelled: `h2c`, TLS or any other token would hand the client a raw connection to the
    /// upstream, past every later policy check, so such a request is forwarded as a plain one
    /// (its `Upgrade` is removed).
    pub fn is_websocket_upgrade(&self) -> bool {
        let parts = &self.parts;
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
}

/// SPEC §4.0: what hyper's HTTP/1 parser lets through but a proxy must not.
fn check_framing(parts: &Parts, framing: Framing) -> Result<(), Rejection> {
    if parts.method == Method::CONNECT {
        return Err(Rejection::bad_framing("CONNECT is not supported"));
    }
    if parts.version <= Version::HTTP_11 {
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            return Err(Rejection::bad_framing(
                "only origin-form request targets are accepted",
            ));
        }
        if framing == Framing::ContentLengthAndTransferEncoding {
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

/// RFC 9110 §9.1: methods are case-sensitive, and every standard one is upper case. A method
/// with a lower-case letter (`delete`, `Get`) is refused rather than routed: a route for `DELETE`
/// must never be skipped for a request that an upstream framework upper-cases before dispatching.
fn check_method(method: &Method) -> Result<(), Rejection> {
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(Rejection::bad_request(
            "methods are case-sensitive and must be upper case",
        ));
    }
    Ok(())
}

/// The request head's size as it was on the wire (HTTP/1 request line and header lines), against
/// `max_header_bytes`. hyper's own limit is set looser and only catches what never parses.
fn check_head_size(parts: &Parts, max: usize) -> Result<(), Rejection> {
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
fn request_host(parts: &Parts, conn: &ConnInfo) -> Result<Option<Host>, Rejection> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    if second.is_some() {
        return Err(Rejection::bad_request("several Host headers"));
    }
    let header_host = first
        .map(|value| {
            conn.host(value.as_bytes())
                .map_err(|_| Rejection::bad_request("invalid Host header"))
        })
        .transpose()?;
    if parts.version >= Version::HTTP_2 {
        if let Some(authority) = parts.uri.authority() {
            let authority = conn
                .host(authority.as_str().as_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnInfo {
        let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
        ConnInfo::new(peer, Scheme::Http, None, tracing::Span::none())
    }

    #[test]
    fn a_connection_remembers_its_first_canonical_host_and_checks_every_other_text() {
        let conn = conn();
        // Not canonical: canonicalized, not remembered.
        assert_eq!(
            conn.host("API.Example.com.".as_bytes()).unwrap().as_str(),
            "api.example.com"
        );
        assert!(conn.host.get().is_none());
        assert_eq!(
            conn.host("api.example.com:8443".as_bytes())
                .unwrap()
                .as_str(),
            "api.example.com:8443"
        );
        assert_eq!(
            conn.host.get().map(Host::as_str),
            Some("api.example.com:8443")
        );
        // Byte-equal: the remembered host; anything else is checked as if first seen.
        assert_eq!(
            conn.host("api.example.com:8443".as_bytes()).unwrap().port(),
            Some(8443)
        );
        assert_eq!(
            conn.host("ADMIN.example.com".as_bytes()).unwrap().as_str(),
            "admin.example.com"
        );
        assert_eq!(
            conn.host("api.example.com:08443".as_bytes())
                .unwrap()
                .as_str(),
            "api.example.com:8443"
        );
        for bad in [
            "api.example.com:8443:1",
            "api.example.com:8443 ",
            "",
            "127.1",
            "a b",
            "h\u{e9}.example",
        ] {
            assert_eq!(conn.host(bad.as_bytes()), Err(InvalidHost), "{bad:?}");
        }
        assert_eq!(conn.host(b"api.example.com\xff"), Err(InvalidHost));
        assert_eq!(
            conn.host.get().map(Host::as_str),
            Some("api.example.com:8443")
        );
    }
}
