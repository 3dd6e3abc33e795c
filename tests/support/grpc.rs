//! gRPC on both sides of the proxy, for the end-to-end tests: tonic 0.14 with tonic-prost and no
//! protoc (STACK-NOTES B6). The one message type [`Msg`] is a `prost` derive; the service
//! `test.Echo` is a hand-written `Service` (what generated code would be) served by a real tonic
//! server on `127.0.0.1:0` ([`EchoServer`]); calls go out through `tonic::client::Grpc` with
//! `ProstCodec` over a tonic `Channel` ([`client`], [`call`]).
//!
//! The service's methods (every one records the request head it received, see
//! [`EchoServer::calls`]):
//! - `Unary`, `Admin`: the message back, with response metadata `x-served-by: test.Echo`;
//! - `Fail`: always [`FAIL_CODE`] with [`FAIL_MESSAGE`], [`FAIL_DETAILS`] and the metadata of
//!   [`fail_metadata`] (a text and a binary entry), as a trailers-only answer;
//! - `Count` (server streaming): `n` messages numbered 0..n, then the end: `text = "aborted"`
//!   ends with `Aborted` and [`fail_metadata`] in the trailers after the messages, anything else
//!   ends OK;
//! - `Chat` (bidirectional): every message back as soon as it arrives, numbered;
//! - `Upload` (client streaming): counts messages and payload bytes (`n` = bytes, `size` =
//!   messages), keeping none;
//! - `Download` (server streaming): `n` payload bytes in messages of `size` bytes, generated as
//!   the client reads (one shared buffer);
//! - `Slow`: counts its arrival ([`EchoServer::slow_arrived`]), then answers after `n` ms.
//!
//! Leaves to others: the proxy, its configuration and the assertions (`tests/grpc.rs`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::HeaderMap;
use http_body::Body as HttpBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::body::Body;
use tonic::client::{Grpc, GrpcService};
use tonic::codegen::tokio_stream::{self, wrappers::ReceiverStream};
use tonic::codegen::{BoxFuture, BoxStream, Service};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::{
    ClientStreamingService, NamedService, ServerStreamingService, StreamingService, UnaryService,
};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service name: every method's path is `/test.Echo/<Method>`.
pub const SERVICE: &str = "test.Echo";

/// What `Fail` answers.
pub const FAIL_CODE: Code = Code::FailedPrecondition;
/// Non-ASCII and `%` on purpose: `grpc-message` is percent-encoded on the wire.
pub const FAIL_MESSAGE: &str = "précondition à 50% échouée";
pub const FAIL_DETAILS: &[u8] = b"\x08\x03\x12\x07details\xff";

/// The one message type, both ways. What `n` and `size` mean depends on the method (module docs).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub payload: Bytes,
    #[prost(uint64, tag = "3")]
    pub n: u64,
    #[prost(uint64, tag = "4")]
    pub size: u64,
}

impl Msg {
    pub fn text(text: &str) -> Msg {
        Msg {
            text: text.to_owned(),
            ..Msg::default()
        }
    }
}

/// The metadata `Fail` (and `Count` with `aborted`) attaches to its status.
pub fn fail_metadata() -> MetadataMap {
    let mut metadata = MetadataMap::new();
    metadata.insert("x-reason", MetadataValue::from_static("quota-exceeded"));
    metadata.insert_bin(
        "x-trace-bin",
        MetadataValue::from_bytes(&[0x00, 0x9f, 0xff, 0x10]),
    );
    metadata
}

/// One request head the service received.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub headers: HeaderMap,
}

impl Call {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    }
}

#[derive(Default)]
struct Shared {
    calls: Mutex<Vec<Call>>,
    slow_arrived: AtomicUsize,
}

/// A tonic server serving `test.Echo`; dropping it stops it.
pub struct EchoServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoServer {
    /// Serves on a fresh loopback port; `max_streams` is the HTTP/2
    /// SETTINGS_MAX_CONCURRENT_STREAMS it advertises (tonic's default when `None`).
    pub async fn start(max_streams: Option<u32>) -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the gRPC upstream");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let service = Echo {
            shared: Arc::clone(&shared),
        };
        let task = tokio::spawn(async move {
            let served = Server::builder()
                .max_concurrent_streams(max_streams)
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
            if let Err(error) = served {
                eprintln!("the gRPC upstream stopped: {error}");
            }
        });
        EchoServer { addr, shared, task }
    }

    /// Every request head received so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// How many `Slow` calls have arrived.
    pub fn slow_arrived(&self) -> usize {
        self.shared.slow_arrived.load(Ordering::SeqCst)
    }
}

#[derive(Clone)]
struct Echo {
    shared: Arc<Shared>,
}

impl NamedService for Echo {
    const NAME: &'static str = SERVICE;
}

fn codec() -> ProstCodec<Msg, Msg> {
    ProstCodec::default()
}

impl Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        self.shared.calls.lock().unwrap().push(Call {
            path: req.uri().path().to_owned(),
            headers: req.headers().clone(),
        });
        let shared = Arc::clone(&self.shared);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(codec());
            let method = req.uri().path().rsplit('/').next().unwrap_or_default();
            Ok(match method {
                "Unary" | "Admin" => grpc.unary(Unary, req).await,
                "Fail" => grpc.unary(Fail, req).await,
                "Slow" => grpc.unary(Slow(shared), req).await,
                "Count" => grpc.server_streaming(Count, req).await,
                "Download" => grpc.server_streaming(Download, req).await,
                "Upload" => grpc.client_streaming(Upload, req).await,
                "Chat" => grpc.streaming(Chat, req).await,
                _ => Status::unimplemented("test.Echo has no such method").into_http(),
            })
        })
    }
}

struct Unary;

impl UnaryService<Msg> for Unary {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;

    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let mut response = Response::new(request.into_inner());
            response
                .metadata_mut()
                .insert("x-served-by", MetadataValue::from_static(SERVICE));
            Ok(response)
        })
    }
}

struct Fail;

impl UnaryService<Msg> for Fail {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;

    fn call(&mut self, _: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            Err(Status::with_details_and_metadata(
                FAIL_CODE,
                FAIL_MESSAGE,
                Bytes::from_static(FAIL_DETAILS),
                fail_metadata(),
            ))
        })
    }
}

struct Slow(Arc<Shared>);

impl UnaryService<Msg> for Slow {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;

    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        self.0.slow_arrived.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let msg = request.into_inner();
            tokio::time::sleep(Duration::from_millis(msg.n)).await;
            Ok(Response::new(msg))
        })
    }
}

struct Count;

impl ServerStreamingService<Msg> for Count {
    type Response = Msg;
    type ResponseStream = BoxStream<Msg>;
    type Future = BoxFuture<Response<BoxStream<Msg>>, Status>;

    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let msg = request.into_inner();
            let mut items: Vec<Result<Msg, Status>> = (0..msg.n)
                .map(|i| {
                    Ok(Msg {
                        text: format!("message {i}"),
                        n: i,
                        ..Msg::default()
                    })
                })
                .collect();
            if msg.text == "aborted" {
                items.push(Err(Status::with_metadata(
                    Code::Aborted,
                    "aborted after the messages",
                    fail_metadata(),
                )));
            }
            Ok(Response::new(
                Box::pin(tokio_stream::iter(items)) as BoxStream<Msg>
            ))
        })
    }
}

struct Download;

impl ServerStreamingService<Msg> for Download {
    type Response = Msg;
    type ResponseStream = BoxStream<Msg>;
    type Future = BoxFuture<Response<BoxStream<Msg>>, Status>;

    fn call(&mut self, request: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let Msg { n: total, size, .. } = request.into_inner();
            let size = size.max(1);
            let chunk = Bytes::from(vec![b'd'; size as usize]);
            // Lazy: a message is made only when hyper asks for more (flow control), so the
            // server never runs ahead of the client by more than the windows.
            let messages = (0..total.div_ceil(size)).map(move |i| {
                let len = size.min(total - i * size) as usize;
                Ok(Msg {
                    payload: chunk.slice(..len),
                    n: i,
                    ..Msg::default()
                })
            });
            Ok(Response::new(
                Box::pin(tokio_stream::iter(messages)) as BoxStream<Msg>
            ))
        })
    }
}

struct Upload;

impl ClientStreamingService<Msg> for Upload {
    type Response = Msg;
    type Future = BoxFuture<Response<Msg>, Status>;

    fn call(&mut self, request: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut inbound = request.into_inner();
            let (mut bytes, mut messages) = (0u64, 0u64);
            while let Some(msg) = inbound.message().await? {
                bytes += msg.payload.len() as u64;
                messages += 1;
            }
            Ok(Response::new(Msg {
                text: "uploaded".into(),
                n: bytes,
                size: messages,
                ..Msg::default()
            }))
        })
    }
}

struct Chat;

impl StreamingService<Msg> for Chat {
    type Response = Msg;
    type ResponseStream = BoxStream<Msg>;
    type Future = BoxFuture<Response<BoxStream<Msg>>, Status>;

    fn call(&mut self, request: Request<Streaming<Msg>>) -> Self::Future {
        Box::pin(async move {
            let mut inbound = request.into_inner();
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let mut index = 0;
                loop {
                    let reply = match inbound.message().await {
                        Ok(Some(msg)) => Ok(Msg {
                            text: format!("echo: {}", msg.text),
                            n: index,
                            ..Msg::default()
                        }),
                        Ok(None) => return,
                        Err(status) => Err(status),
                    };
                    index += 1;
                    if tx.send(reply).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(
                Box::pin(ReceiverStream::new(rx)) as BoxStream<Msg>
            ))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------------------------

/// A tonic client over a new HTTP/2 (h2c) channel to `addr` (the proxy).
pub async fn client(addr: SocketAddr) -> Grpc<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect the gRPC client");
    Grpc::new(channel)
}

/// The HTTP/2 client under [`bare_client`].
pub type Bare = Client<HttpConnector, Body>;

/// A tonic client over a plain hyper HTTP/2 (h2c) client instead of a tonic `Channel`. A
/// `Channel` runs its own timer for `grpc-timeout` (set by `Request::set_timeout` or as
/// metadata) and gives up by itself (`Cancelled`, "Timeout expired"); this one sends the header
/// and waits for whatever the other end answers.
pub fn bare_client(addr: SocketAddr) -> Grpc<Bare> {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let origin = format!("http://{addr}").parse().expect("origin");
    Grpc::with_origin(client, origin)
}

/// `msg` as a request, with `authorization: Bearer <token>` when a token is given.
pub fn request<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(msg);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("metadata value");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn path(method: &str) -> PathAndQuery {
    PathAndQuery::try_from(method).expect("a gRPC path")
}

/// Waits until the client can take a call.
async fn ready<T: GrpcService<Body>>(client: &mut Grpc<T>) -> Result<(), Status> {
    client.ready().await.map_err(|e| {
        let e: BoxError = e.into();
        Status::unavailable(format!("client not ready: {e}"))
    })
}

/// A unary call to `method` (a full path: `/test.Echo/Unary`).
pub async fn call<T>(
    client: &mut Grpc<T>,
    method: &str,
    request: Request<Msg>,
) -> Result<Response<Msg>, Status>
where
    T: GrpcService<Body>,
    T::ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    <T::ResponseBody as HttpBody>::Error: Into<BoxError>,
{
    ready(client).await?;
    client.unary(request, path(method), codec()).await
}

/// A server-streaming call.
pub async fn server_streaming(
    client: &mut Grpc<Channel>,
    method: &str,
    request: Request<Msg>,
) -> Result<Response<Streaming<Msg>>, Status> {
    ready(client).await?;
    client
        .server_streaming(request, path(method), codec())
        .await
}

/// A client-streaming call.
pub async fn client_streaming<S>(
    client: &mut Grpc<Channel>,
    method: &str,
    request: Request<S>,
) -> Result<Response<Msg>, Status>
where
    S: tokio_stream::Stream<Item = Msg> + Send + 'static,
{
    ready(client).await?;
    client
        .client_streaming(request, path(method), codec())
        .await
}

/// A bidirectional call.
pub async fn streaming<S>(
    client: &mut Grpc<Channel>,
    method: &str,
    request: Request<S>,
) -> Result<Response<Streaming<Msg>>, Status>
where
    S: tokio_stream::Stream<Item = Msg> + Send + 'static,
{
    ready(client).await?;
    client.streaming(request, path(method), codec()).await
}
