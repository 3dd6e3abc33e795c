//! `grpc-echo`: the gRPC helpers of `bench/run.sh`'s gRPC unary row. NOT FOR PRODUCTION.
//!
//! ```text
//! grpc-echo serve LISTEN
//!     a tonic server (h2c) with one unary method, /bench.Echo/Unary: the message back; the
//!     message "whoami" is answered with what the caller's identity looked like to it
//!     ("sub=<x-auth-subject> assertion=<yes|no>")
//! grpc-echo request-file OUT
//!     writes the body h2load sends: one gRPC frame (a 0 byte, the length as u32 big-endian,
//!     the protobuf of the request message "ping")
//! grpc-echo probe URL [TOKEN]
//!     one real gRPC call (tonic client, `authorization: Bearer TOKEN` when given) of
//!     /bench.Echo/Unary with "whoami"; prints "grpc-status 0 <reply>" and exits 0, or prints the
//!     status and exits 1. h2load checks only HTTP statuses, and a gRPC error is an HTTP 200.
//! ```
//!
//! No protoc: the message is a `prost` derive and the service a hand-written `Service`, as in
//! `tests/support/grpc.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark tool: bad input panics with its message

use std::convert::Infallible;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use prost::Message as _;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service};
use tonic::metadata::MetadataValue;
use tonic::server::{NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const METHOD: &str = "/bench.Echo/Unary";

/// `message EchoMessage { string message = 1; }`, both ways.
#[derive(Clone, PartialEq, prost::Message)]
struct EchoMessage {
    #[prost(string, tag = "1")]
    message: String,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match (args.first().map(String::as_str), args.len()) {
        (Some("serve"), 2) => runtime().block_on(serve(&args[1])),
        (Some("request-file"), 2) => request_file(&args[1]),
        (Some("probe"), 2 | 3) => runtime().block_on(probe(&args[1], args.get(2))),
        _ => {
            eprintln!("usage: grpc-echo serve LISTEN | request-file OUT | probe URL [TOKEN]");
            std::process::exit(2);
        }
    };
    if let Err(error) = result {
        println!("{error}");
        std::process::exit(1);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn serve(listen: &str) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    Server::builder()
        .add_service(Echo)
        .serve_with_incoming(TcpIncoming::from(listener))
        .await
        .map_err(|e| format!("the gRPC server stopped: {e}"))
}

fn request_file(out: &str) -> Result<(), String> {
    let message = EchoMessage {
        message: "ping".into(),
    }
    .encode_to_vec();
    let len = u32::try_from(message.len()).map_err(|e| e.to_string())?;
    let mut frame = vec![0u8];
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&message);
    std::fs::write(out, frame).map_err(|e| format!("cannot write {out}: {e}"))
}

async fn probe(url: &str, token: Option<&String>) -> Result<(), String> {
    let channel = Endpoint::from_shared(url.to_owned())
        .map_err(|e| format!("bad URL {url}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let mut client = tonic::client::Grpc::new(channel);
    let mut request = Request::new(EchoMessage {
        message: "whoami".into(),
    });
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|e| format!("token: {e}"))?;
        request.metadata_mut().insert("authorization", value);
    }
    client
        .ready()
        .await
        .map_err(|e| format!("channel not ready: {e}"))?;
    let codec = ProstCodec::<EchoMessage, EchoMessage>::default();
    match client
        .unary(request, PathAndQuery::from_static(METHOD), codec)
        .await
    {
        Ok(reply) => {
            println!("grpc-status 0 {}", reply.into_inner().message);
            Ok(())
        }
        Err(status) => Err(format!(
            "grpc-status {} {}",
            i32::from(status.code()),
            status.message()
        )),
    }
}

#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "bench.Echo";
}

impl Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<http::Response<Body>, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            if req.uri().path() != METHOD {
                return Ok(Status::unimplemented("bench.Echo has one method: Unary").into_http());
            }
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<EchoMessage, EchoMessage>::default());
            Ok(grpc.unary(Unary, req).await)
        })
    }
}

struct Unary;

impl UnaryService<EchoMessage> for Unary {
    type Response = EchoMessage;
    type Future = BoxFuture<Response<EchoMessage>, Status>;

    fn call(&mut self, request: Request<EchoMessage>) -> Self::Future {
        Box::pin(async move {
            let metadata = request.metadata();
            let message = if request.get_ref().message == "whoami" {
                let sub = metadata
                    .get("x-auth-subject")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                let assertion = metadata.contains_key("x-identity-assertion");
                format!(
                    "sub={sub} assertion={}",
                    if assertion { "yes" } else { "no" }
                )
            } else {
                request.into_inner().message
            };
            let mut response = Response::new(EchoMessage { message });
            response
                .metadata_mut()
                .insert("x-served-by", MetadataValue::from_static("bench.Echo"));
            Ok(response)
        })
    }
}
