//! A tonic greeter written by hand: what `tonic-build` would generate for
//! the service below, so that a fresh checkout builds without `protoc` or
//! a build script. Shared by `examples/grpc.rs` and `tests/grpc.rs`.
//!
//! ```proto
//! syntax = "proto3";
//! package greeter.v1;
//!
//! service Greeter {
//!   rpc SayHello (HelloRequest) returns (HelloReply);          // unary
//!   rpc SayHellos (HelloRequest) returns (stream HelloReply);  // server streaming
//!   rpc Chat (stream HelloRequest) returns (stream HelloReply); // bidirectional
//! }
//!
//! message HelloRequest { string name = 1; uint32 count = 2; }
//! message HelloReply { string message = 1; string version = 2; }
//! ```
//!
//! [`Version`] is one deployable version of the service: it greets in its
//! own name (`v1`, `v2`), so a client can tell which version answered.

// The example and the tests each use a part of this module.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

// === messages ===

/// `greeter.v1.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    /// Who to greet.
    #[prost(string, tag = "1")]
    pub name: String,
    /// How many greetings `SayHellos` streams back.
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

/// `greeter.v1.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// The greeting.
    #[prost(string, tag = "1")]
    pub message: String,
    /// The version of the service that wrote it.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// A boxed future, as generated code uses.
pub type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;
/// A boxed stream of replies.
pub type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;
type StdError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The service's full name, as routed on (`/greeter.v1.Greeter/<Method>`).
pub const SERVICE_NAME: &str = "greeter.v1.Greeter";
const SAY_HELLO: &str = "/greeter.v1.Greeter/SayHello";
const SAY_HELLOS: &str = "/greeter.v1.Greeter/SayHellos";
const CHAT: &str = "/greeter.v1.Greeter/Chat";

// === server ===

/// The service trait (`greeter_server::Greeter` in generated code).
pub trait Greeter: Send + Sync + 'static {
    /// `SayHello`: one request, one reply.
    fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> impl Future<Output = Result<Response<HelloReply>, Status>> + Send;

    /// `SayHellos`: one request, `count` replies.
    fn say_hellos(
        &self,
        request: Request<HelloRequest>,
    ) -> impl Future<Output = Result<Response<BoxStream<HelloReply>>, Status>> + Send;

    /// `Chat`: a reply to each request, until the client stops sending.
    fn chat(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> impl Future<Output = Result<Response<BoxStream<HelloReply>>, Status>> + Send;
}

/// The tower service serving a [`Greeter`] (`greeter_server::GreeterServer`
/// in generated code): dispatches on the request path to tonic's unary,
/// server-streaming and streaming handlers with the prost codec.
#[derive(Debug)]
pub struct GreeterServer<T> {
    inner: Arc<T>,
}

impl<T> GreeterServer<T> {
    /// Serves `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }
}

impl<T> Clone for GreeterServer<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> tonic::server::NamedService for GreeterServer<T> {
    const NAME: &'static str = SERVICE_NAME;
}

impl<T, B> tower::Service<http::Request<B>> for GreeterServer<T>
where
    T: Greeter,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        match req.uri().path() {
            SAY_HELLO => {
                struct SayHelloSvc<T>(Arc<T>);
                impl<T: Greeter> tonic::server::UnaryService<HelloRequest> for SayHelloSvc<T> {
                    type Response = HelloReply;
                    type Future = BoxFuture<Response<HelloReply>, Status>;
                    fn call(&mut self, request: Request<HelloRequest>) -> Self::Future {
                        let inner = Arc::clone(&self.0);
                        Box::pin(async move { inner.say_hello(request).await })
                    }
                }
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                    Ok(grpc.unary(SayHelloSvc(inner), req).await)
                })
            }
            SAY_HELLOS => {
                struct SayHellosSvc<T>(Arc<T>);
                impl<T: Greeter> tonic::server::ServerStreamingService<HelloRequest> for SayHellosSvc<T> {
                    type Response = HelloReply;
                    type ResponseStream = BoxStream<HelloReply>;
                    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;
                    fn call(&mut self, request: Request<HelloRequest>) -> Self::Future {
                        let inner = Arc::clone(&self.0);
                        Box::pin(async move { inner.say_hellos(request).await })
                    }
                }
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                    Ok(grpc.server_streaming(SayHellosSvc(inner), req).await)
                })
            }
            CHAT => {
                struct ChatSvc<T>(Arc<T>);
                impl<T: Greeter> tonic::server::StreamingService<HelloRequest> for ChatSvc<T> {
                    type Response = HelloReply;
                    type ResponseStream = BoxStream<HelloReply>;
                    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;
                    fn call(&mut self, request: Request<Streaming<HelloRequest>>) -> Self::Future {
                        let inner = Arc::clone(&self.0);
                        Box::pin(async move { inner.chat(request).await })
                    }
                }
                Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                    Ok(grpc.streaming(ChatSvc(inner), req).await)
                })
            }
            path => {
                let status = Status::unimplemented(format!("no method {path}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

// === client ===

/// A client of the greeter over any gRPC transport
/// (`greeter_client::GreeterClient` in generated code).
#[derive(Debug, Clone)]
pub struct GreeterClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl GreeterClient<tonic::transport::Channel> {
    /// Connects to `url` (`http://host:port`) over HTTP/2.
    pub async fn connect(url: String) -> Result<Self, tonic::transport::Error> {
        let channel = tonic::transport::Endpoint::from_shared(url)?
            .connect()
            .await?;
        Ok(Self::new(channel))
    }
}

impl<T> GreeterClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    /// A client over `inner`.
    pub fn new(inner: T) -> Self {
        Self {
            inner: tonic::client::Grpc::new(inner),
        }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.inner.ready().await.map_err(|e| {
            let e: StdError = e.into();
            Status::unknown(format!("Service was not ready: {e}"))
        })
    }

    /// Tags `request` with its method, and the path it is sent to.
    fn request<M>(
        mut request: Request<M>,
        method: &'static str,
    ) -> (Request<M>, http::uri::PathAndQuery) {
        request
            .extensions_mut()
            .insert(tonic::GrpcMethod::new(SERVICE_NAME, method));
        let path = format!("/{SERVICE_NAME}/{method}");
        (
            request,
            http::uri::PathAndQuery::from_maybe_shared(path).unwrap(),
        )
    }

    /// `SayHello`.
    pub async fn say_hello(
        &mut self,
        request: impl tonic::IntoRequest<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.ready().await?;
        let (request, path) = Self::request(request.into_request(), "SayHello");
        let codec = tonic_prost::ProstCodec::default();
        self.inner.unary(request, path, codec).await
    }

    /// `SayHellos`.
    pub async fn say_hellos(
        &mut self,
        request: impl tonic::IntoRequest<HelloRequest>,
    ) -> Result<Response<Streaming<HelloReply>>, Status> {
        self.ready().await?;
        let (request, path) = Self::request(request.into_request(), "SayHellos");
        let codec = tonic_prost::ProstCodec::default();
        self.inner.server_streaming(request, path, codec).await
    }

    /// `Chat`.
    pub async fn chat(
        &mut self,
        request: impl tonic::IntoStreamingRequest<Message = HelloRequest>,
    ) -> Result<Response<Streaming<HelloReply>>, Status> {
        self.ready().await?;
        let (request, path) = Self::request(request.into_streaming_request(), "Chat");
        let codec = tonic_prost::ProstCodec::default();
        self.inner.streaming(request, path, codec).await
    }
}

// === one version of the service ===

/// One version of the greeter: it signs every reply with its name.
///
/// * `SayHello` to `nobody` fails with `NOT_FOUND`;
/// * `SayHellos` streams `count` replies, and for `nobody` ends the stream
///   with `NOT_FOUND` (in the trailers, after the replies) carrying the
///   metadata `x-greeter-version`;
/// * with a [`gate`](Version::gate), `SayHellos` sends its first reply at
///   once and each later one only when it can take a permit, so a test
///   decides when a stream goes on.
#[derive(Debug, Clone)]
pub struct Version {
    name: &'static str,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl Version {
    /// A version named `name`.
    pub fn new(name: &'static str) -> Self {
        Self { name, gate: None }
    }

    /// Holds `SayHellos` replies after the first until `gate` has permits.
    pub fn gate(mut self, gate: Arc<tokio::sync::Semaphore>) -> Self {
        self.gate = Some(gate);
        self
    }

    fn reply(&self, name: &str, n: Option<u32>) -> HelloReply {
        let message = match n {
            Some(n) => format!("hello {name} #{n} from {}", self.name),
            None => format!("hello {name} from {}", self.name),
        };
        HelloReply {
            message,
            version: self.name.to_owned(),
        }
    }

    fn not_found(&self, name: &str) -> Status {
        let mut status = Status::not_found(format!("no greeting for `{name}`"));
        if let Ok(v) = self.name.parse() {
            status.metadata_mut().insert("x-greeter-version", v);
        }
        status
    }
}

impl Greeter for Version {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let name = request.into_inner().name;
        if name == "nobody" {
            return Err(self.not_found(&name));
        }
        Ok(Response::new(self.reply(&name, None)))
    }

    async fn say_hellos(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<BoxStream<HelloReply>>, Status> {
        let HelloRequest { name, count } = request.into_inner();
        let this = self.clone();
        let stream = async_stream(move |tx| async move {
            for n in 1..=count {
                if n > 1
                    && let Some(gate) = &this.gate
                {
                    match gate.acquire().await {
                        Ok(permit) => permit.forget(),
                        Err(_) => return,
                    }
                }
                if tx.send(Ok(this.reply(&name, Some(n)))).await.is_err() {
                    return;
                }
            }
            if name == "nobody" {
                let _ = tx.send(Err(this.not_found(&name))).await;
            }
        });
        Ok(Response::new(stream))
    }

    async fn chat(
        &self,
        request: Request<Streaming<HelloRequest>>,
    ) -> Result<Response<BoxStream<HelloReply>>, Status> {
        let this = self.clone();
        let replies = request
            .into_inner()
            .map(move |req| req.map(|req| this.reply(&req.name, None)));
        Ok(Response::new(Box::pin(replies)))
    }
}

/// A stream fed by a task: `body` sends items into the channel it is given.
fn async_stream<F, Fut>(body: F) -> BoxStream<HelloReply>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<HelloReply, Status>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
