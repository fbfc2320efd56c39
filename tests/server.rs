#![cfg(feature = "server")]
//! `switchyard::server` over real loopback sockets: what each request
//! carries, HTTP/1.1 and h2c, the limits (431, 408, idle close), graceful
//! shutdown (in-flight requests, upgraded tunnels, the deadline) and TLS
//! (ALPN, certificate reload).
//!
//! Timeouts here are short real-clock ones (a few hundred ms): the server
//! runs on real sockets, where tokio's paused clock would fire every
//! timeout at once. Every wait is bounded by `HANG_GUARD`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard::conn::ConnectionInfo;
use switchyard::server::{IncomingBody, Server, ServerBuilder, ServerHandle, ServerStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tower::service_fn;

const HANG_GUARD: Duration = Duration::from_secs(10);

/// Answers `/slow` after 500 ms, `/forever` never, `/echo` with the body it
/// read (or `body error: ...`), anything else with what the request
/// carried: `peer=<SocketAddr ext> info=<peer>,<local>,<tls> version=<v>`.
async fn app(req: Request<IncomingBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = match req.uri().path() {
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            "slow done".to_owned()
        }
        "/forever" => std::future::pending().await,
        "/echo" => match req.into_body().collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            Err(e) => format!("body error: {e}"),
        },
        _ => {
            let peer = req.extensions().get::<SocketAddr>().copied();
            let info = req.extensions().get::<ConnectionInfo>().copied().unwrap();
            let axum_peer = req
                .extensions()
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0);
            assert_eq!(axum_peer, peer);
            format!(
                "peer={} info={},{},{} version={:?}",
                peer.unwrap(),
                info.peer,
                info.local,
                info.tls,
                req.version()
            )
        }
    };
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// Serves [`app`] with `builder`'s limits on loopback.
async fn start(builder: ServerBuilder) -> (SocketAddr, ServerHandle, JoinHandle<()>) {
    serving(builder.bind("127.0.0.1:0").await.unwrap(), service_fn(app))
}

/// `server` serving `service` on a task: its address, its handle, the task.
fn serving<S, B>(server: Server, service: S) -> (SocketAddr, ServerHandle, JoinHandle<()>)
where
    S: tower::Service<Request<IncomingBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let addr = server.local_addr();
    let handle = server.handle();
    let task = tokio::spawn(async move { server.serve(service).await.unwrap() });
    (addr, handle, task)
}

/// Sends `raw` on a fresh connection and reads until the server closes it
/// (or `HANG_GUARD`).
async fn raw(addr: SocketAddr, raw: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(HANG_GUARD, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One HTTP/1.1 `GET path` over hyper's client on a fresh connection.
async fn get(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), hyper::Error> {
    let (_, status, body) = get_keeping(addr, path).await?;
    Ok((status, body))
}

/// [`get`], with the connection, still open.
async fn get_keeping(
    addr: SocketAddr,
    path: &str,
) -> Result<(SendRequest<Empty<Bytes>>, StatusCode, String), hyper::Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send.send_request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((send, status, String::from_utf8_lossy(&body).into_owned()))
}

/// An HTTP/2 connection to `addr` (prior knowledge) and its task.
async fn h2_connect(addr: SocketAddr) -> (http2::SendRequest<Empty<Bytes>>, JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, conn)
}

/// `GET path` on a stream of `send`'s connection: the status, and the
/// body or how it ended.
async fn h2_get(
    send: &http2::SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    path: &str,
) -> Result<(StatusCode, Result<Bytes, hyper::Error>), hyper::Error> {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = send.clone().send_request(req).await?;
    let status = res.status();
    Ok((
        status,
        res.into_body().collect().await.map(|b| b.to_bytes()),
    ))
}

/// Waits until the server has handed `n` requests to the service.
async fn requests_seen(handle: &ServerHandle, n: u64) {
    while handle.stats().requests < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits (up to `HANG_GUARD`) until the server counts no connection open;
/// `what` names the ones awaited.
async fn all_closed(handle: &ServerHandle, what: &str) {
    let wait = async {
        while handle.stats().active != 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    if tokio::time::timeout(HANG_GUARD, wait).await.is_err() {
        panic!("{what}: not counted closed");
    }
}

async fn finished(task: JoinHandle<()>) {
    tokio::time::timeout(HANG_GUARD, task)
        .await
        .expect("serve returns")
        .unwrap();
}

#[tokio::test]
async fn http1_requests_carry_the_peer_and_the_connection() {
    let (addr, handle, _task) = start(Server::builder()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let me = tcp.local_addr().unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = Request::get("/").body(Empty::<Bytes>::new()).unwrap();
        let res = send.send_request(req).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            format!("peer={me} info={me},{addr},false version=HTTP/1.1").as_bytes()
        );
    }
    let stats = handle.stats();
    assert_eq!((stats.accepted, stats.active, stats.requests), (1, 1, 2));
}

/// A body of `/len/N`'s N bytes, each its index mod 251.
async fn sized(req: Request<IncomingBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let n: usize = req
        .uri()
        .path()
        .strip_prefix("/len/")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let body: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// Responses whose head and body together are just under, at and just
/// over the size the connection gathers into one write, and a large one
/// written as it is: every byte arrives, in order, on one keep-alive
/// connection.
#[tokio::test]
async fn responses_around_the_gathered_write_size_arrive_whole() {
    let server = Server::builder().bind("127.0.0.1:0").await.unwrap();
    let (addr, handle, task) = serving(server, service_fn(sized));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let sizes = (0..=64).chain(1800..=2200).chain([65_536, 1 << 20]);
    for n in sizes {
        let req = Request::get(format!("/len/{n}"))
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = tokio::time::timeout(HANG_GUARD, send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{n}");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), n);
        assert!(
            body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
            "{n}: bytes out of place"
        );
    }
    handle.shutdown(Duration::from_secs(5));
    finished(task).await;
}

/// A wait in line for [`OneAtATime`]'s permit.
type Acquiring = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<tokio::sync::OwnedSemaphorePermit, tokio::sync::AcquireError>,
            > + Send
            + Sync,
    >,
>;

/// A service that serves one request at a time: its readiness waits in
/// line for the one permit (tokio's semaphore hands a freed permit to the
/// first in line), and a clone starts out of line.
struct OneAtATime {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    acquiring: Option<Acquiring>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Clone for OneAtATime {
    fn clone(&self) -> Self {
        Self {
            permits: std::sync::Arc::clone(&self.permits),
            acquiring: None,
            permit: None,
        }
    }
}

impl tower::Service<Request<IncomingBody>> for OneAtATime {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        if self.permit.is_none() {
            let permits = &self.permits;
            let acquiring = self
                .acquiring
                .get_or_insert_with(|| Box::pin(std::sync::Arc::clone(permits).acquire_owned()));
            let permit = std::task::ready!(acquiring.as_mut().poll(cx)).expect("never closed");
            self.acquiring = None;
            self.permit = Some(permit);
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<IncomingBody>) -> Self::Future {
        let permit = self.permit.take();
        Box::pin(async move {
            let res = app(req).await;
            drop(permit);
            res
        })
    }
}

/// The server calls a ready service in place; one that is not ready waits
/// in the request's future. Whatever its readiness reserved goes with it:
/// here its place in line for the permit, which would otherwise be handed
/// to an instance nothing polls, and the second request would hang.
#[tokio::test]
async fn a_service_not_ready_is_awaited_where_it_waits_in_line() {
    let server = Server::builder().bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    let service = OneAtATime {
        permits: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        acquiring: None,
        permit: None,
    };
    let task = tokio::spawn(async move { server.serve(service).await.unwrap() });
    // The first request holds the permit for 500 ms.
    let slow = tokio::spawn(get(addr, "/slow"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The second, on a connection of its own, finds the service not ready.
    let (status, body) = tokio::time::timeout(HANG_GUARD, get(addr, "/"))
        .await
        .expect("the waiting request is answered once the permit is free")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("peer="), "{body}");
    let (status, body) = slow.await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow done"));
    // And a third, after both, on a new connection.
    let (status, _) = tokio::time::timeout(HANG_GUARD, get(addr, "/"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    handle.shutdown(Duration::from_secs(5));
    finished(task).await;
}

#[tokio::test]
async fn h2c_with_prior_knowledge() {
    let (addr, _handle, _task) = start(Server::builder()).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut answers = Vec::new();
    for _ in 0..3 {
        let req = Request::get(format!("http://{addr}/"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = send.send_request(req).await.unwrap();
        answers.push(res.into_body().collect().await.unwrap().to_bytes());
    }
    for body in answers {
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.ends_with("version=HTTP/2.0"), "{body}");
    }
}

#[tokio::test]
async fn a_head_over_the_limit_is_431() {
    let (addr, _handle, _task) = start(Server::builder().max_head_bytes(8192)).await;
    let big = "a".repeat(16 * 1024);
    let answer = raw(
        addr,
        format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // Under the limit is fine.
    let small = "a".repeat(4 * 1024);
    let answer = raw(
        addr,
        format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {small}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn too_many_header_fields_is_431() {
    let (addr, _handle, _task) = start(Server::builder().max_headers(10)).await;
    let headers: String = (0..20).map(|i| format!("x-h{i}: v\r\n")).collect();
    let answer = raw(
        addr,
        format!("GET / HTTP/1.1\r\nhost: x\r\n{headers}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_408_and_counted() {
    let (addr, handle, _task) =
        start(Server::builder().body_idle_timeout(Duration::from_millis(300))).await;
    // 100 bytes announced, 10 sent, then silence (the connection stays
    // open).
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(HANG_GUARD, tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert_eq!(handle.stats().body_timeouts, 1);

    // A body that keeps coming, slower than the timeout in total but never
    // silent for as long, is read whole.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 8\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    for chunk in [b"ab", b"cd", b"ef", b"gh"] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        tcp.write_all(chunk).await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(HANG_GUARD, tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&out);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("abcdefgh"), "{answer}");
    assert_eq!(handle.stats().body_timeouts, 1);
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let (addr, handle, _task) =
        start(Server::builder().idle_timeout(Duration::from_millis(300))).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    // The response, then the close once idle.
    tokio::time::timeout(HANG_GUARD, tcp.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    let stats = handle.stats();
    assert_eq!((stats.idle_closed, stats.header_timeouts), (1, 0));
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish_and_refuses_new_connections() {
    let (addr, handle, task) = start(Server::builder()).await;
    let slow = tokio::spawn(get(addr, "/slow"));
    // Wait until the request is in.
    while handle.stats().requests == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.shutdown(HANG_GUARD);
    assert!(handle.is_shutting_down());
    // The listener closes: new connections are refused.
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "the listener still accepts");
    let (status, body) = slow.await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "slow done"));
    finished(task).await;
    assert_eq!(handle.stats().active, 0);
}

#[tokio::test]
async fn shutdown_gives_up_at_the_deadline() {
    let (addr, handle, task) = start(Server::builder()).await;
    let stuck = tokio::spawn(get(addr, "/forever"));
    while handle.stats().requests == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.shutdown(Duration::from_millis(300));
    finished(task).await;
    // The stuck request's connection was cut.
    let result = tokio::time::timeout(HANG_GUARD, stuck)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_err(), "{result:?}");
    assert_eq!(handle.stats().active, 0);
}

/// A service that is `Send` but not `Sync` (tower's `BoxCloneService`) is
/// served from a spawned task, on the caller's runtime and on threads of
/// the server's own ([`serving`] asks no `Sync` of its service either).
#[tokio::test]
async fn a_service_that_is_send_but_not_sync_is_served_from_a_spawned_task() {
    for builder in [Server::builder(), Server::builder().threads(2)] {
        let server = builder.bind("127.0.0.1:0").await.unwrap();
        let service = tower::util::BoxCloneService::new(service_fn(app));
        let (addr, handle, task) = serving(server, service);
        let (status, body) = get(addr, "/").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with("peer=127.0.0.1:"), "{body}");
        handle.shutdown(HANG_GUARD);
        finished(task).await;
    }
}

/// Panics on `/panic`, answers `/slow` after 300 ms, anything else at once.
async fn panicking(req: Request<IncomingBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    match req.uri().path() {
        "/panic" => panic!("a bug in the service"),
        "/slow" => tokio::time::sleep(Duration::from_millis(300)).await,
        _ => {}
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// A panic in one request's service is answered with a 500 problem and
/// its connection closed, and nothing else is touched: a request in
/// flight on another connection finishes, new connections are served,
/// the connection count comes back to zero (the release profile keeps
/// `panic = "unwind"` for this; see Cargo.toml).
async fn a_panic_is_a_500_for_its_request_alone(builder: ServerBuilder) {
    let server = builder.bind("127.0.0.1:0").await.unwrap();
    let (addr, handle, task) = serving(server, service_fn(panicking));
    let slow = tokio::spawn(get(addr, "/slow"));
    while handle.stats().requests == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (mut send, status, body) = get_keeping(addr, "/panic").await.unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains(r#""status":500"#), "{body}");
    // The answer said `Connection: close`, and the server closed it.
    let closed = tokio::time::timeout(HANG_GUARD, send.ready()).await;
    assert!(closed.expect("the connection is closed").is_err());
    let (status, body) = slow.await.unwrap().unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    for _ in 0..8 {
        let (status, body) = get(addr, "/").await.unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
    all_closed(&handle, "every connection, the one that panicked too").await;
    let stats = handle.stats();
    assert_eq!((stats.requests, stats.panics), (10, 1));
    handle.shutdown(HANG_GUARD);
    finished(task).await;
}

#[tokio::test]
async fn a_panic_in_the_service_is_a_500_not_a_lost_server() {
    a_panic_is_a_500_for_its_request_alone(Server::builder()).await;
}

#[tokio::test]
async fn a_panic_on_a_serving_thread_is_a_500_not_a_lost_thread() {
    // With one thread every connection is served on the runtime where the
    // service panicked; with two, on either.
    a_panic_is_a_500_for_its_request_alone(Server::builder().threads(1)).await;
    a_panic_is_a_500_for_its_request_alone(Server::builder().threads(2)).await;
}

/// A service whose `call` itself panics on `/panic` (before any future
/// exists), else answers at once.
#[derive(Clone)]
struct PanicsInCall;

impl tower::Service<Request<IncomingBody>> for PanicsInCall {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<IncomingBody>) -> Self::Future {
        assert_ne!(req.uri().path(), "/panic", "a bug in the service's call");
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
    }
}

#[tokio::test]
async fn a_panic_in_the_services_call_is_a_500_too() {
    let server = Server::builder().bind("127.0.0.1:0").await.unwrap();
    let (addr, handle, task) = serving(server, PanicsInCall);
    let (status, body) = get(addr, "/panic").await.unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.contains(r#""status":500"#), "{body}");
    let (status, body) = get(addr, "/").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(handle.stats().panics, 1);
    handle.shutdown(HANG_GUARD);
    finished(task).await;
}

/// Under `OpenAiErrors` (outermost on a gateway's AI routes) a panic is
/// answered in OpenAI's error shape, where the server alone answers a
/// problem+json that OpenAI SDKs do not read, in the service's future or
/// in its `call`: a 500 `server_error`, its connection closed as the
/// server's own answer closes it, and the panic counted by the server.
#[tokio::test]
async fn a_panic_under_openai_errors_is_answered_in_their_shape_and_counted() {
    use switchyard::model::OpenAiErrorsLayer;
    use tower::Layer;

    let server = Server::builder().bind("127.0.0.1:0").await.unwrap();
    let in_future = OpenAiErrorsLayer::new().layer(service_fn(panicking));
    let (addr, handle, task) = serving(server, in_future);
    let (mut send, status, body) = get_keeping(addr, "/panic").await.unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let doc: serde_json::Value = serde_json::from_str(&body).expect(&body);
    assert_eq!(doc["error"]["type"], "server_error", "{body}");
    assert_eq!(
        doc["error"]["message"], "the server failed while handling the request",
        "{body}"
    );
    let closed = tokio::time::timeout(HANG_GUARD, send.ready()).await;
    assert!(closed.expect("the connection is closed").is_err());
    let (status, body) = get(addr, "/").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    let stats = handle.stats();
    assert_eq!((stats.requests, stats.panics), (2, 1));
    handle.shutdown(HANG_GUARD);
    finished(task).await;

    let server = Server::builder().bind("127.0.0.1:0").await.unwrap();
    let in_call = OpenAiErrorsLayer::new().layer(PanicsInCall);
    let (addr, handle, task) = serving(server, in_call);
    let (status, body) = get(addr, "/panic").await.unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let doc: serde_json::Value = serde_json::from_str(&body).expect(&body);
    assert_eq!(doc["error"]["type"], "server_error", "{body}");
    let (status, body) = get(addr, "/").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(handle.stats().panics, 1);
    handle.shutdown(HANG_GUARD);
    finished(task).await;
}

/// A response body that panics when it is read past its head: `/panic`
/// gets one, anything else an empty body.
struct PanicsWhenRead(bool);

impl http_body::Body for PanicsWhenRead {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        assert!(!self.0, "a bug in the response body");
        std::task::Poll::Ready(None)
    }
}

#[tokio::test]
async fn a_panic_in_the_response_body_ends_its_connection_alone() {
    let server = Server::builder().bind("127.0.0.1:0").await.unwrap();
    let panics = |req: Request<IncomingBody>| async move {
        let body = PanicsWhenRead(req.uri().path() == "/panic");
        Ok::<_, Infallible>(Response::new(body))
    };
    let (addr, handle, task) = serving(server, service_fn(panics));
    // The head may be out already: the connection is cut, not answered.
    let cut = tokio::time::timeout(HANG_GUARD, get(addr, "/panic")).await;
    assert!(cut.expect("the connection is cut").is_err());
    let (status, _) = get(addr, "/").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    all_closed(&handle, "the cut connection").await;
    // Counted with the service's panics, though not answered.
    let stats = handle.stats();
    assert_eq!((stats.requests, stats.panics), (2, 1));
    handle.shutdown(HANG_GUARD);
    finished(task).await;
}

/// Over HTTP/2 a panic in one stream's response body resets that stream
/// (and is counted), and the connection's other streams, before and
/// after, are answered in full.
#[tokio::test]
async fn a_panic_in_an_http2_response_body_resets_that_stream_alone() {
    let server = Server::builder().bind("127.0.0.1:0").await.unwrap();
    let panics = |req: Request<IncomingBody>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let body = PanicsWhenRead(req.uri().path() == "/panic");
        Ok::<_, Infallible>(Response::new(body))
    };
    let (addr, handle, task) = serving(server, service_fn(panics));
    let (send, conn) = h2_connect(addr).await;
    let slow = tokio::spawn({
        let send = send.clone();
        async move { h2_get(&send, addr, "/slow").await }
    });
    requests_seen(&handle, 1).await;
    // Reset: with the head, if it reached the client before the reset,
    // the body ends in an error rather than in full.
    match h2_get(&send, addr, "/panic").await {
        Ok((status, body)) => {
            assert_eq!(status, StatusCode::OK);
            assert!(body.is_err(), "the body ends in an error, not in full");
        }
        Err(e) => assert!(format!("{e:?}").contains("Reset"), "{e:?}"),
    }
    let (status, body) = slow.await.unwrap().unwrap();
    assert_eq!((status, body.unwrap().len()), (StatusCode::OK, 0));
    let (status, body) = h2_get(&send, addr, "/").await.unwrap();
    assert_eq!((status, body.unwrap().len()), (StatusCode::OK, 0));
    let stats = handle.stats();
    assert_eq!((stats.active, stats.requests, stats.panics), (1, 3, 1));
    assert!(!conn.is_finished(), "the connection goes on");
    handle.shutdown(HANG_GUARD);
    finished(task).await;
}

#[tokio::test]
async fn a_panic_on_an_http2_stream_is_a_500_on_that_stream_alone() {
    let server = Server::builder().bind("127.0.0.1:0").await.unwrap();
    let (addr, handle, task) = serving(server, service_fn(panicking));
    let (send, _conn) = h2_connect(addr).await;
    let request = |path: &'static str| {
        let send = send.clone();
        async move {
            let (status, body) = h2_get(&send, addr, path).await?;
            Ok::<_, hyper::Error>((status, body?))
        }
    };
    let slow = tokio::spawn(request("/slow"));
    requests_seen(&handle, 1).await;
    let (status, body) = request("/panic").await.unwrap();
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(String::from_utf8_lossy(&body).contains(r#""status":500"#));
    // The other stream, and the connection, go on.
    let (status, body) = slow.await.unwrap().unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    let (status, body) = request("/").await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    let stats = handle.stats();
    assert_eq!((stats.active, stats.panics), (1, 1));
    handle.shutdown(HANG_GUARD);
    finished(task).await;
}

/// A service that switches protocols on `/tunnel` and then echoes what
/// it reads until the client closes.
async fn upgrading(mut req: Request<IncomingBody>) -> Result<Response<Empty<Bytes>>, Infallible> {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let mut buf = [0u8; 64];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let res = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "echo")
        .body(Empty::new())
        .unwrap();
    Ok(res)
}

/// Opens a tunnel through [`upgrading`]; the connection, past the 101.
async fn open_tunnel(addr: SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        b"GET /tunnel HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    tcp
}

async fn echo(tcp: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
    tcp.write_all(text).await?;
    let mut back = vec![0; text.len()];
    tcp.read_exact(&mut back).await?;
    Ok(back)
}

#[tokio::test]
async fn an_open_tunnel_delays_shutdown_until_it_closes() {
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    let task = tokio::spawn(async move { server.serve(service_fn(upgrading)).await.unwrap() });
    let mut tunnel = open_tunnel(addr).await;
    assert_eq!(echo(&mut tunnel, b"ping").await.unwrap(), b"ping");
    handle.shutdown(HANG_GUARD);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "shutdown did not wait for the tunnel");
    assert_eq!(handle.stats().active, 1);
    // The tunnel still works while the server drains.
    assert_eq!(echo(&mut tunnel, b"pong").await.unwrap(), b"pong");
    drop(tunnel);
    finished(task).await;
}

#[tokio::test]
async fn an_open_tunnel_is_cut_at_the_deadline() {
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    let task = tokio::spawn(async move { server.serve(service_fn(upgrading)).await.unwrap() });
    let mut tunnel = open_tunnel(addr).await;
    assert_eq!(echo(&mut tunnel, b"ping").await.unwrap(), b"ping");
    handle.shutdown(Duration::from_millis(300));
    finished(task).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(HANG_GUARD, tunnel.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(read.is_err() || rest.is_empty(), "{read:?}");
    assert_eq!(handle.stats().active, 0);
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_and_counted() {
    // On the caller's runtime, and on threads of the server's own, where a
    // connection may be handed to another thread before it is served.
    for builder in [
        Server::builder().max_connections(2),
        Server::builder().max_connections(2).threads(2),
    ] {
        let (addr, handle, _task) = start(builder).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 12];
            tcp.read_exact(&mut buf).await.unwrap();
            held.push(tcp);
        }
        // The third is accepted and closed at once.
        let answer = raw(addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert_eq!(answer, "");
        let ServerStats {
            accepted,
            active,
            refused_over_cap,
            ..
        } = handle.stats();
        assert_eq!((accepted, active, refused_over_cap), (2, 2, 1));
        // One closes: there is room again.
        drop(held.pop());
        let mut served = false;
        for _ in 0..100 {
            if let Ok((StatusCode::OK, _)) = get(addr, "/").await {
                served = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(served);
    }
}

/// Answers with the name of the thread that served the request, after
/// `/slow`'s 300 ms for that path.
async fn thread_name(req: Request<IncomingBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let name = std::thread::current().name().unwrap_or("?").to_owned();
    Ok(Response::new(Full::new(Bytes::from(name))))
}

/// `server` serving [`thread_name`] on a task: its address, its handle,
/// the task.
fn serve_thread_names(server: Server) -> (SocketAddr, ServerHandle, JoinHandle<()>) {
    serving(server, service_fn(thread_name))
}

#[tokio::test]
async fn threads_of_its_own_serve_every_connection_and_shut_down_together() {
    let server = Server::builder()
        .threads(2)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let (addr, handle, task) = serve_thread_names(server);
    // Many connections: the kernel spreads them over both listeners, and
    // each is served on one of the server's threads, never the caller's.
    let mut names = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..64 {
        let (status, name) = get(addr, "/").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        *names.entry(name).or_default() += 1;
    }
    assert!(
        names.keys().all(|n| n.starts_with("switchyard-server-")),
        "{names:?}"
    );
    assert_eq!(names.len(), 2, "both threads accept: {names:?}");
    assert_eq!(handle.stats().requests, 64);
    // A shutdown reaches every thread: a request in flight finishes, new
    // connections are refused, `serve` returns once all are closed.
    let slow = tokio::spawn(get(addr, "/slow"));
    while handle.stats().requests == 64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.shutdown(HANG_GUARD);
    let (status, name) = slow.await.unwrap().unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(name.starts_with("switchyard-server-"), "{name}");
    finished(task).await;
    assert!(TcpStream::connect(addr).await.is_err());
    assert_eq!(handle.stats().active, 0);
}

#[tokio::test]
async fn threads_serve_a_listener_of_ones_own_and_stop_when_serve_is_dropped() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::builder().threads(3).listener(listener).unwrap();
    let (addr, handle, task) = serve_thread_names(server);
    for _ in 0..8 {
        let (status, name) = get(addr, "/").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(name.starts_with("switchyard-server-"), "{name}");
    }
    // Giving up on `serve` stops the threads: nothing serves unseen.
    task.abort();
    let _ = task.await;
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(handle.is_shutting_down());
}

/// A keep-alive connection to `addr`, and the name of the thread that
/// serves it.
async fn open_on(addr: SocketAddr) -> (SendRequest<Empty<Bytes>>, String) {
    let (send, status, name) = get_keeping(addr, "/").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    (send, name)
}

#[tokio::test]
async fn a_new_connection_goes_to_the_thread_with_the_fewest_open() {
    // Both ways of listening on several threads: a listener each
    // (`SO_REUSEPORT`, the kernel picks one by a hash of the addresses) and
    // one socket shared (whichever thread wakes first takes it).
    let reuseport = Server::builder()
        .threads(2)
        .bind("127.0.0.1:0")
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shared = Server::builder().threads(2).listener(listener).unwrap();
    for server in [reuseport, shared] {
        let (addr, handle, task) = serve_thread_names(server);
        // Opened one after another, each served before the next: they
        // alternate, whichever thread accepted them.
        let mut open = Vec::new();
        for _ in 0..16 {
            open.push(open_on(addr).await);
        }
        let on = |open: &[(_, String)], name: &str| open.iter().filter(|(_, n)| n == name).count();
        let first = open[0].1.clone();
        assert_eq!(
            on(&open, &first),
            8,
            "{:?}",
            open.iter().map(|(_, n)| n).collect::<Vec<_>>()
        );
        // The first thread's connections close: the next ones all go there.
        open.retain(|(_, n)| *n != first);
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        while handle.stats().active > 8 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "connections still open"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for _ in 0..8 {
            let (send, name) = open_on(addr).await;
            assert_eq!(name, first);
            open.push((send, name));
        }
        drop(open);
        handle.shutdown(HANG_GUARD);
        finished(task).await;
    }
}

#[tokio::test]
async fn invalid_limits_are_build_errors() {
    let err = Server::builder()
        .max_head_bytes(1000)
        .bind("127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_head_bytes"), "{err}");
    let err = Server::builder()
        .max_connections(0)
        .bind("127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_connections"), "{err}");
    let err = Server::builder()
        .threads(100_000)
        .bind("127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("threads"), "{err}");
}

#[test]
fn config_from_toml_with_defaults() {
    use switchyard::server::ServerConfig;
    let config: ServerConfig = toml::from_str(
        r#"
        idle_timeout_ms = 5000
        [tls]
        cert_file = "cert.pem"
        key_file = "key.pem"
        "#,
    )
    .unwrap();
    assert_eq!(config.idle_timeout_ms, 5000);
    assert_eq!(config.header_read_timeout_ms, 30_000);
    assert_eq!(config.max_head_bytes, 65_536);
    assert_eq!(config.tls.as_ref().unwrap().key_file, "key.pem");
    assert!(toml::from_str::<ServerConfig>("header_timeout_ms = 1").is_err());
    let back: ServerConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
    assert_eq!(back, config);
}

/// TLS termination. `reload.pem` / `reload.key` in `tests/fixtures/tls`
/// are test-only: a server certificate for `localhost` and `127.0.0.1`
/// signed by `reload-ca.pem` (valid until 2126), made with `openssl req
/// -x509 -newkey ec` and `openssl x509 -req`, the CA's key thrown away; a
/// second certificate to reload to, beside `server.pem`.
#[cfg(feature = "tls")]
mod tls {
    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
    }

    fn first_cert(name: &str) -> CertificateDer<'static> {
        CertificateDer::pem_slice_iter(&fixture(name))
            .next()
            .unwrap()
            .unwrap()
    }

    /// A client trusting both test CAs, offering `alpn`.
    async fn connect(addr: SocketAddr, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let mut roots = RootCertStore::empty();
        for ca in ["ca.pem", "reload-ca.pem"] {
            roots.add(first_cert(ca)).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(addr).await.unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    fn leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
        stream.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    /// A temporary directory holding `cert.pem` and `key.pem`, copies of
    /// the fixtures `cert` and `key`.
    fn files(dir: &std::path::Path, cert: &str, key: &str) {
        std::fs::write(dir.join("cert.pem"), fixture(cert)).unwrap();
        std::fs::write(dir.join("key.pem"), fixture(key)).unwrap();
    }

    #[tokio::test]
    async fn alpn_h2_and_http11_over_tls() {
        let (addr, _handle, _task) = start(Server::builder().tls(
            format!("{FIXTURES}/server.pem"),
            format!("{FIXTURES}/server.key"),
        ))
        .await;

        let stream = connect(addr, &[b"h2", b"http/1.1"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://localhost:{}/", addr.port()))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let body = send.send_request(req).await.unwrap().into_body();
        let body = body.collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.ends_with(",true version=HTTP/2.0"), "{body}");

        let stream = connect(addr, &[b"http/1.1"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let body = send.send_request(req).await.unwrap().into_body();
        let body = body.collect().await.unwrap().to_bytes();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(body.ends_with(",true version=HTTP/1.1"), "{body}");
    }

    #[tokio::test]
    async fn reload_serves_the_new_certificate_and_keeps_open_connections() {
        let dir = crate::support::temp::TempDir::new("server-reload");
        files(&dir, "server.pem", "server.key");
        let cert = dir.join("cert.pem").display().to_string();
        let key = dir.join("key.pem").display().to_string();
        let (addr, handle, _task) = start(Server::builder().tls(cert, key)).await;

        let old = connect(addr, &[b"http/1.1"]).await;
        assert_eq!(leaf(&old), first_cert("server.pem"));
        let (mut old_send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(old))
            .await
            .unwrap();
        tokio::spawn(conn);

        // A broken file: the reload fails and the certificate stays.
        std::fs::write(dir.join("cert.pem"), b"not a certificate").unwrap();
        assert!(handle.reload_tls().is_err());
        let stream = connect(addr, &[b"http/1.1"]).await;
        assert_eq!(leaf(&stream), first_cert("server.pem"));

        files(&dir, "reload.pem", "reload.key");
        handle.reload_tls().unwrap();
        let new = connect(addr, &[b"http/1.1"]).await;
        assert_eq!(leaf(&new), first_cert("reload.pem"));

        // The connection opened before the reload still serves.
        let req = Request::get("/")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = old_send.send_request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_missing_or_mismatched_key_is_a_build_error() {
        let err = Server::builder()
            .tls(
                format!("{FIXTURES}/server.pem"),
                format!("{FIXTURES}/nope.key"),
            )
            .bind("127.0.0.1:0")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nope.key"), "{err}");
        let err = Server::builder()
            .tls(
                format!("{FIXTURES}/server.pem"),
                format!("{FIXTURES}/reload.key"),
            )
            .bind("127.0.0.1:0")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[tokio::test]
    async fn a_stalled_tls_handshake_is_a_header_timeout() {
        let (addr, handle, _task) = start(
            Server::builder()
                .tls(
                    format!("{FIXTURES}/server.pem"),
                    format!("{FIXTURES}/server.key"),
                )
                .header_read_timeout(Duration::from_millis(300)),
        )
        .await;
        // Two bytes of a ClientHello, then nothing.
        let answer = raw(addr, &[0x16, 0x03]).await;
        assert_eq!(answer, "");
        assert_eq!(handle.stats().header_timeouts, 1);
    }
}
