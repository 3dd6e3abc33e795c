//! Header hygiene, both directions (SPEC §4.2).
//!
//! Request side, before anything of ours is added: hop-by-hop headers and the ones the client
//! names in `Connection` go; so does anything that could pass for identity we assert (the
//! assertion header, every `[identity.headers]` name, `strip_header_prefixes`), compared
//! case-insensitively and with `_` read as `-`, because some servers (CGI, nginx with
//! `underscores_in_headers`) map `X_Auth_Subject` onto `X-Auth-Subject`. `X-Forwarded-*` is
//! rebuilt from what the proxy saw unless the peer is a trusted proxy. Response side: hop-by-hop
//! headers of the upstream's connection are not passed on.
//!
//! The rules are compiled once per configuration into `ScrubRules`; the per-request work is one
//! pass over the header names.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use rand::RngCore;

use crate::config::Config;
use crate::telemetry::trace::{hex_into, TRACEPARENT, TRACESTATE};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = header::FORWARDED;
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static DPOP: HeaderName = HeaderName::from_static("dpop");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Hop-by-hop headers of RFC 9110 §7.6.1 plus the legacy ones proxies still see.
/// `HTTP2-Settings` belongs to the `h2c` upgrade (RFC 7540 §3.2.1), which is never forwarded.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == HTTP2_SETTINGS
        || name == header::PROXY_AUTHORIZATION
}

/// Headers other authenticating proxies use to pass the user (oauth2-proxy, nginx
/// `auth_request`, Apache, Traefik forward-auth): a backend moved from behind one of them may
/// still trust them, so a client must never be able to send them. `name` is lower case with `_`
/// read as `-`.
fn is_other_proxy_user_header(name: &str) -> bool {
    matches!(
        name,
        "x-forwarded-user"
            | "x-forwarded-email"
            | "x-forwarded-groups"
            | "x-forwarded-preferred-username"
            | "x-forwarded-access-token"
            | "remote-user"
            | "x-remote-user"
            | "x-real-ip"
            | "x-original-url"
            | "x-rewrite-url"
    ) || name.starts_with("x-auth-request-")
}

/// Underscore spellings of headers the proxy itself sets or reads (`X_Forwarded_For`,
/// `X_Request_Id`, `Proxy_Authorization`...): servers that map `_` to `-` would read them as the
/// real thing, next to ours. `name` is lower case with `_` read as `-`.
fn is_managed(name: &str) -> bool {
    matches!(
        name,
        "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "forwarded"
            | "x-request-id"
            | "authorization"
            | "proxy-authorization"
            | "dpop"
            | "host"
            | "connection"
            | "upgrade"
            | "http2-settings"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "keep-alive"
            | "proxy-connection"
    )
}

/// What to strip from requests, compiled from one configuration.
#[derive(Debug)]
pub struct ScrubRules {
    /// Lower-case, `_` replaced by `-`: the assertion header and every `[identity.headers]` name.
    identity_names: Vec<String>,
    /// Same normalization as `identity_names`.
    prefixes: Vec<String>,
    forward_token: bool,
    trusted_proxies: Vec<IpNet>,
}

impl ScrubRules {
    pub fn new(config: &Config) -> Self {
        let identity = &config.identity;
        Self::with(
            std::iter::once(&identity.header).chain(identity.headers.iter().map(|(name, _)| name)),
            config.server.strip_header_prefixes.clone(),
            identity.forward_token,
            config.server.trusted_proxies.clone(),
        )
    }

    /// `prefixes` must already be lower-case with `_` as `-` (the config loader does that).
    pub fn with<'a>(
        identity_headers: impl IntoIterator<Item = &'a HeaderName>,
        prefixes: Vec<String>,
        forward_token: bool,
        trusted_proxies: Vec<IpNet>,
    ) -> Self {
        ScrubRules {
            identity_names: identity_headers
                .into_iter()
                .map(|name| canonical(name.as_str()))
                .collect(),
            prefixes,
            forward_token,
            trusted_proxies,
        }
    }

    pub fn is_trusted_proxy(&self, peer: IpAddr) -> bool {
        is_trusted(&self.trusted_proxies, peer)
    }

    /// Whether a request header name is one a client must never be able to send upstream: our
    /// identity headers, the configured prefixes, other proxies' user headers, and any
    /// underscore spelling of a header the proxy manages.
    fn is_spoofable(&self, name: &HeaderName) -> bool {
        let name = name.as_str();
        // Fast path: names without `_` are already canonical (HeaderName is lower-case).
        let underscore = name.contains('_');
        let canon;
        let name = if underscore {
            canon = canonical(name);
            canon.as_str()
        } else {
            name
        };
        self.identity_names.iter().any(|n| n == name)
            || self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
            || is_other_proxy_user_header(name)
            || (underscore && is_managed(name))
    }
}

/// Whether `peer` is in one of the `trusted_proxies` networks (IPv4-mapped IPv6 read as IPv4).
pub fn is_trusted(proxies: &[IpNet], peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    proxies.iter().any(|net| net.contains(&peer))
}

fn canonical(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

/// How the proxy itself saw the request, for `X-Forwarded-*`.
pub struct Forwarding<'a> {
    pub peer: IpAddr,
    /// `peer` as a header value ([`address_value`]).
    pub peer_value: &'a HeaderValue,
    /// `http` or `https`: the listener's scheme.
    pub scheme: &'static str,
    /// The request's `Host` (HTTP/1) or `:authority` (HTTP/2).
    pub host: Option<&'a HeaderValue>,
    /// Keep `Upgrade` and `Connection: upgrade` (an authorized WebSocket request).
    pub upgrade: bool,
}

/// Scrubs a request's headers in place (SPEC §4.2). `X-Request-Id` is handled by `request_id`.
pub fn request_headers(headers: &mut HeaderMap, rules: &ScrubRules, view: &Forwarding<'_>) {
    let trusted = rules.is_trusted_proxy(view.peer);
    let upgrade_value = if view.upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // `TE: trailers` is the one `TE` value passed on: it tells the upstream (gRPC above all)
    // that the client takes trailers. Every other transfer coding is this hop's business.
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("trailers")
        });
    let mut doomed: Vec<HeaderName> = connection_named(headers);
    for name in headers.keys() {
        let forwarded = name == X_FORWARDED_FOR
            || name == X_FORWARDED_PROTO
            || name == X_FORWARDED_HOST
            || name == FORWARDED;
        let token = name == header::AUTHORIZATION || name == DPOP;
        if is_hop_by_hop(name)
            || rules.is_spoofable(name)
            || (token && !rules.forward_token)
            || (forwarded && !trusted)
            || is_trace_context(name)
        {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }

    // X-Forwarded-For: the chain from a trusted proxy plus its address, else just the peer.
    let peer = view.peer_value.clone();
    let chain = if trusted {
        joined(headers, &X_FORWARDED_FOR)
            .map(|prior| format!("{prior}, {}", view.peer.to_canonical()))
    } else {
        None
    };
    match chain.and_then(|c| HeaderValue::try_from(c).ok()) {
        Some(value) => headers.insert(X_FORWARDED_FOR.clone(), value),
        None => headers.insert(X_FORWARDED_FOR.clone(), peer),
    };
    if !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(view.scheme),
        );
    }
    if !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        if let Some(host) = view.host {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
    }
    if let Some(upgrade) = upgrade_value {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Scrubs the trailer fields of a request body (HTTP/1.1 chunked or HTTP/2 trailers) before they
/// go upstream: whatever the head may not carry from a client, a trailer may not either (an
/// HTTP/2 upstream would see `x-auth-subject` as a trailer just as well), and neither may the
/// fields RFC 9110 §6.5.1 keeps out of trailers (framing, routing, authentication), nor the
/// trace context tokengate writes into the head (`traceparent`, `tracestate`: the upstream must
/// see tokengate's span as the parent, not a value the client chose).
pub fn request_trailers(trailers: &mut HeaderMap, rules: &ScrubRules) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in trailers.keys() {
        let canon = canonical(name.as_str());
        if is_hop_by_hop(name)
            || rules.is_spoofable(name)
            || is_managed(&canon)
            || name == header::CONTENT_LENGTH
            || name == header::CONTENT_TYPE
            || name == header::CONTENT_ENCODING
            || name == header::COOKIE
            || name == FORWARDED
            || is_trace_context(name)
        {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        trailers.remove(name);
    }
}

/// The client's W3C trace context: the upstream gets tokengate's (`telemetry::trace`), with the
/// client's `tracestate` only when it continues the client's trace.
fn is_trace_context(name: &HeaderName) -> bool {
    name == TRACEPARENT || name == TRACESTATE
}

/// An address as `X-Forwarded-For` writes it (IPv4-mapped IPv6 as IPv4).
pub fn address_value(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_canonical().to_string())
        .unwrap_or(HeaderValue::from_static("unknown"))
}

/// Scrubs an upstream response's headers in place: its hop-by-hop headers are not ours to pass on
/// (a `101 Switching Protocols` keeps `Upgrade` and `Connection`). `Trailer` stays: it announces
/// this response's own trailer fields (end to end, RFC 9110 §6.6.2), and hyper's HTTP/1.1 server
/// sends a client that asked for trailers (`TE: trailers`) only the fields `Trailer` names.
pub fn response_headers(headers: &mut HeaderMap, switching_protocols: bool) {
    let mut doomed = connection_named(headers);
    for name in headers.keys() {
        if is_hop_by_hop(name)
            && name != header::TRAILER
            && !(switching_protocols && (name == header::UPGRADE || name == header::CONNECTION))
        {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
}

/// Headers named in any `Connection` header (RFC 9110 §7.6.1), except `upgrade`/`close`/
/// `keep-alive` tokens, which name options rather than headers.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    let mut names = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                if name != header::UPGRADE && name != KEEP_ALIVE && token != "close" {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// All values of a header joined with `, ` (several `X-Forwarded-For` lines are one list).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for value in headers.get_all(name) {
        let value = value.to_str().ok()?.trim();
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(value);
            }
            None => out = Some(value.to_owned()),
        }
    }
    out
}

/// The request's id: the client's `X-Request-Id` when there is exactly one and it is 1-128
/// visible ASCII characters, else a fresh one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(&X_REQUEST_ID).iter();
    if let (Some(value), None) = (values.next(), values.next()) {
        let bytes = value.as_bytes();
        if (1..=128).contains(&bytes.len()) && bytes.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return value.clone();
        }
    }
    generate_request_id()
}

/// 32 hex digits of 128 random bits from the thread's CSPRNG (ChaCha, seeded from the OS), as
/// a UUIDv4 is: unique for every practical purpose, and unpredictable, which matters because a
/// client's valid id is kept: with a counter, a client that saw one id could send the id the next
/// client's request was about to get, and the upstream's logs would mix the two requests.
fn generate_request_id() -> HeaderValue {
    let mut random = [0u8; 16];
    rand::rng().fill_bytes(&mut random);
    let mut text = [0u8; 32];
    hex_into(&random, &mut text);
    // Owned by the `Bytes` itself: one allocation, and the copies for the upstream request
    // and the response are reference counts (a copied slice would allocate again when shared).
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(text))
        .unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests;
