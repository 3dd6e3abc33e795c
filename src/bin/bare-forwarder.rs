//! `bare-forwarder LISTEN UPSTREAM`: the "bare hyper forwarder" row of `bench/run.sh`.
//!
//! The cost of one reverse-proxy hop done well and nothing more: a hyper-util auto server
//! (HTTP/1.1 and h2c prior knowledge) on LISTEN, one pooled hyper-util legacy client to UPSTREAM
//! (`http://host:port` or `host:port`), bodies streamed both ways, no authentication. Header work
//! is limited to what HTTP requires of a proxy: hop-by-hop headers (RFC 9110 §7.6.1) are not
//! forwarded, `Host` is kept (set from `:authority` for HTTP/2 clients), and the upstream request
//! is HTTP/1.1. Not part of tokengate; a yardstick for the benchmark.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, HOST};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type Body = Either<Incoming, Full<Bytes>>;
type HttpClient = Client<HttpConnector, Incoming>;

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded; nor are the ones `Connection` names.
const HOP_BY_HOP: [&str; 7] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(named) = headers.remove(CONNECTION) {
        for name in named.to_str().unwrap_or("").split(',') {
            headers.remove(name.trim());
        }
        while headers.remove(CONNECTION).is_some() {}
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

async fn forward(
    client: HttpClient,
    upstream: Authority,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    let authority = parts.authority.replace(upstream);
    parts.scheme = Some(Scheme::HTTP);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path are set");
    if !req.headers().contains_key(HOST) {
        // HTTP/2 carries the host in `:authority`; HTTP/1.1 upstreams need `Host`.
        if let Some(v) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            req.headers_mut().insert(HOST, v);
        }
    }
    *req.version_mut() = Version::HTTP_11;
    strip_hop_by_hop(req.headers_mut());
    Ok(match client.request(req).await {
        Ok(response) => response.map(Either::Left),
        Err(_) => {
            let mut r = Response::new(Either::Right(Full::from("bad gateway\n")));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!(
            "usage: bare-forwarder LISTEN UPSTREAM (e.g. 127.0.0.1:8081 http://127.0.0.1:3000)"
        );
        std::process::exit(2);
    }
    let upstream = args[2].trim_start_matches("http://").trim_end_matches('/');
    let upstream: Authority = upstream.parse().unwrap_or_else(|e| {
        eprintln!("bad UPSTREAM {upstream:?}: {e}");
        std::process::exit(2)
    });
    let listener = TcpListener::bind(&args[1]).await.unwrap_or_else(|e| {
        eprintln!("cannot listen on {}: {e}", args[1]);
        std::process::exit(1)
    });
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(connector);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(client.clone(), upstream.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

// The same allocator as tokengate, so the yardstick differs from it only in what it does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
