//! `bare-forwarder [--tokengate-pool] LISTEN UPSTREAM`: the "bare hyper forwarder" row of
//! `bench/run.sh`.
//!
//! The cost of one reverse-proxy hop done well and nothing more: a hyper-util auto server
//! (HTTP/1.1 and h2c prior knowledge) on LISTEN, one pooled hyper-util legacy client to UPSTREAM
//! (`http://host:port` or `host:port`), bodies streamed both ways, no authentication. Header work
//! is limited to what HTTP requires of a proxy: hop-by-hop headers (RFC 9110 §7.6.1) are not
//! forwarded, `Host` is kept (set from `:authority` for HTTP/2 clients), and the upstream request
//! is HTTP/1.1. Not part of tokengate; a yardstick for the benchmark.
//!
//! With `--tokengate-pool` the hop goes through tokengate's own upstream pool
//! (`tokengate::forward::BarePool`) instead of hyper-util's legacy client: the benchmark's
//! reference row that shows tokengate's cost over the very same hop.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: bad input panics with its message

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
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
use tokengate::config::{Upstream, UpstreamTarget};
use tokengate::forward::{BarePool, UpstreamBody};
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

/// What any forwarder does to the request: `Host` kept (or taken from an HTTP/2 client's
/// `:authority`), HTTP/1.1, no hop-by-hop headers. Takes the URI and returns its path and query.
fn prepare(req: &mut Request<Incoming>) -> PathAndQuery {
    let parts = std::mem::take(req.uri_mut()).into_parts();
    if !req.headers().contains_key(HOST) {
        // HTTP/2 carries the host in `:authority`; HTTP/1.1 upstreams need `Host`.
        if let Some(v) = parts
            .authority
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            req.headers_mut().insert(HOST, v);
        }
    }
    *req.version_mut() = Version::HTTP_11;
    strip_hop_by_hop(req.headers_mut());
    parts
        .path_and_query
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

fn bad_gateway<B>() -> Response<Either<B, Full<Bytes>>> {
    let mut r = Response::new(Either::Right(Full::from("bad gateway\n")));
    *r.status_mut() = StatusCode::BAD_GATEWAY;
    r
}

async fn forward(
    client: HttpClient,
    upstream: Authority,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path_and_query = prepare(&mut req);
    // hyper-util's client takes absolute-form targets.
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(upstream);
    uri.path_and_query = Some(path_and_query);
    *req.uri_mut() = Uri::from_parts(uri).expect("scheme, authority and path are set");
    Ok(match client.request(req).await {
        Ok(response) => response.map(Either::Left),
        Err(_) => bad_gateway(),
    })
}

async fn forward_pooled(
    pool: Arc<BarePool>,
    mut req: Request<Incoming>,
) -> Result<Response<Either<UpstreamBody, Full<Bytes>>>, Infallible> {
    // tokengate's pool sends origin-form targets.
    *req.uri_mut() = Uri::from(prepare(&mut req));
    Ok(match pool.send(req).await {
        Some(response) => response.map(Either::Left),
        None => bad_gateway(),
    })
}

/// Accepts connections forever, serving each with `answer`.
async fn serve<F, Fut, B>(listener: TcpListener, answer: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let answer = answer.clone();
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), service_fn(answer))
                .await;
        });
    }
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let tokengate_pool = args.first().is_some_and(|a| a == "--tokengate-pool");
    if tokengate_pool {
        args.remove(0);
    }
    if args.len() != 2 {
        eprintln!(
            "usage: bare-forwarder [--tokengate-pool] LISTEN UPSTREAM (e.g. 127.0.0.1:8081 http://127.0.0.1:3000)"
        );
        std::process::exit(2);
    }
    let upstream = args[1].trim_start_matches("http://").trim_end_matches('/');
    let upstream: Authority = upstream.parse().unwrap_or_else(|e| {
        eprintln!("bad UPSTREAM {upstream:?}: {e}");
        std::process::exit(2)
    });
    let listener = TcpListener::bind(&args[0]).await.unwrap_or_else(|e| {
        eprintln!("cannot listen on {}: {e}", args[0]);
        std::process::exit(1)
    });
    if tokengate_pool {
        let target = Arc::new(UpstreamTarget {
            scheme: Scheme::HTTP,
            origin: format!("http://{upstream}"),
            authority: upstream,
        });
        let settings = Upstream {
            target,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            max_connections: 1024,
            ca_file: None,
            protocol: tokengate::config::UpstreamProtocol::Http1,
        };
        let pool = Arc::new(BarePool::new(&settings).unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(1)
        }));
        serve(listener, move |req| forward_pooled(pool.clone(), req)).await;
    } else {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector);
        serve(listener, move |req| {
            forward(client.clone(), upstream.clone(), req)
        })
        .await;
    }
}

// The same allocator as tokengate, so the yardstick differs from it only in what it does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
