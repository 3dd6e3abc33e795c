//! The request head as HTTP/2 carries it: an absolute URI (`:scheme` of the upstream,
//! `:authority` from `Host`) and none of HTTP/1's connection-specific headers, which RFC 9113
//! §8.2.2 makes a malformed request (a server resets the stream).
//!
//! hyper strips most of them too, but it keeps `Host` as a plain header and misses the headers
//! that `Connection` names; doing it here makes the rule ours and testable.
//!
//! Leaves to others: the proxy's own header hygiene (SPEC §4.2, `scrub`), done before this.

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, TE};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{Method, Request, Version};

/// Connection-specific headers (RFC 9113 §8.2.2), `te` aside.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// What is needed to send a request again after the server refused it unprocessed.
#[derive(Clone)]
pub(super) struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Head {
    /// Takes `req` apart: its head made fit for HTTP/2, and its body. The URI's path and query
    /// are kept; `:authority` is the `Host` header, else the URI's own authority, else the
    /// upstream's.
    pub(super) fn from_request<B>(
        req: Request<B>,
        scheme: &Scheme,
        upstream: &Authority,
    ) -> (Head, B) {
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        let host = headers
            .get(HOST)
            .and_then(|value| Authority::try_from(value.as_bytes()).ok());
        strip_connection_headers(&mut headers);
        let authority = host
            .or_else(|| parts.uri.authority().cloned())
            .unwrap_or_else(|| upstream.clone());
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(scheme.clone());
        uri.authority = Some(authority);
        uri.path_and_query = Some(path);
        // Scheme, authority and path are all set, which is all `from_parts` checks.
        let uri = Uri::from_parts(uri).unwrap_or_default();
        let head = Head {
            method: parts.method,
            uri,
            headers,
        };
        (head, body)
    }

    /// The request to send.
    pub(super) fn into_request<B>(self, body: B) -> Request<B> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = Version::HTTP_2;
        *req.headers_mut() = self.headers;
        req
    }

    /// The head of a request hyper handed back unsent (already prepared).
    pub(super) fn from_returned<B>(req: Request<B>) -> Head {
        let (parts, _) = req.into_parts();
        Head {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
        }
    }
}

/// Removes `Host` (it becomes `:authority`), the headers `Connection` names, the
/// connection-specific headers, and `TE` unless it asks for trailers (then it is exactly
/// `te: trailers`, the only value HTTP/2 allows).
pub(super) fn strip_connection_headers(headers: &mut HeaderMap) {
    headers.remove(HOST);
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            // `te: trailers` is the one hop-by-hop field HTTP/2 carries (gRPC relies on it).
            .filter(|name| name != TE)
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if headers.contains_key(TE) {
        let trailers = headers
            .get_all(TE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|coding| {
                let coding = coding.split(';').next().unwrap_or_default().trim();
                coding.eq_ignore_ascii_case("trailers")
            });
        headers.remove(TE);
        if trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(req: Request<()>) -> Head {
        Head::from_request(
            req,
            &Scheme::HTTP,
            &Authority::from_static("upstream.internal:3000"),
        )
        .0
    }

    #[test]
    fn connection_specific_headers_and_those_connection_names_are_removed() {
        let req = Request::get("/a?b=1")
            .header("host", "api.example.com")
            .header("connection", "keep-alive, X-Hop, te")
            .header("connection", "close")
            .header("keep-alive", "timeout=5")
            .header("proxy-connection", "keep-alive")
            .header("transfer-encoding", "chunked")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAMAAABkAAQAAP__")
            .header("x-hop", "1")
            .header("te", "trailers")
            .header("x-kept", "yes")
            .body(())
            .unwrap();
        let head = head(req);
        let mut names: Vec<&str> = head.headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-kept"]);
        assert_eq!(head.headers["te"], "trailers");
    }

    #[test]
    fn te_is_kept_only_as_trailers() {
        let only = |values: &[&str]| {
            let mut req = Request::get("/");
            for v in values {
                req = req.header("te", *v);
            }
            head(req.body(()).unwrap())
                .headers
                .get_all("te")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(only(&["gzip"]), Vec::<String>::new());
        assert_eq!(only(&["gzip;q=0.5, Trailers"]), ["trailers"]);
        assert_eq!(only(&["deflate", "trailers"]), ["trailers"]);
    }

    #[test]
    fn host_becomes_the_authority_and_the_upstream_scheme_is_used() {
        let req = Request::get("/p?q")
            .header("host", "api.example.com:8443")
            .body(())
            .unwrap();
        let head = head(req);
        assert_eq!(head.uri, "http://api.example.com:8443/p?q");
        assert!(!head.headers.contains_key("host"));
    }

    #[test]
    fn without_host_the_uri_authority_or_else_the_upstream_is_used() {
        let absolute = Request::get("https://client.example/x").body(()).unwrap();
        assert_eq!(head(absolute).uri, "http://client.example/x");
        let origin_form = Request::get("/x").body(()).unwrap();
        assert_eq!(head(origin_form).uri, "http://upstream.internal:3000/x");
    }
}
