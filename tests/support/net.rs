//! Serving on loopback for the end-to-end tests: an axum app on
//! `127.0.0.1:0`, with the peer address in the request extensions (as
//! `KeyBy::peer_ip` and the proxy's `X-Forwarded-For` read it).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::net::TcpListener;

/// An address on loopback where a connection is refused, for as long as
/// this value lives: a socket bound there and never listening. (A port
/// bound and then released could be taken by another test's listener
/// in between, or by a connection's own source port, and a connection
/// to it would hang rather than be refused.)
#[allow(dead_code, reason = "not every test needs a refused address")]
pub struct Refusing {
    socket: tokio::net::TcpSocket,
    /// The address.
    pub addr: SocketAddr,
}

#[allow(dead_code, reason = "not every test needs a refused address")]
impl Refusing {
    /// A port of `127.0.0.1` held, nobody listening.
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bound to a port of loopback");
        let addr = socket.local_addr().expect("its address");
        Self { socket, addr }
    }

    /// Starts listening there: from now on connections are accepted.
    pub fn listen(self) -> TcpListener {
        self.socket.listen(1024).expect("listening")
    }
}

/// A plain HTTP client for the tests' requests.
#[allow(dead_code, reason = "not every test that serves also asks")]
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// One `GET http://{addr}{path}` with `headers`, its body read whole; a
/// request that hangs for 10 s, or fails, fails the test.
#[allow(dead_code, reason = "not every test that serves also asks")]
pub async fn get(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Response<Bytes> {
    send(client, http::Method::GET, addr, path, headers).await
}

/// One `METHOD http://{addr}{path}` with `headers` and no body, its answer
/// read whole; a request that hangs for 10 s, or fails, fails the test.
#[allow(dead_code, reason = "not every test that serves also asks")]
pub async fn send(
    client: &HttpClient,
    method: http::Method,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Response<Bytes> {
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Empty::new()).unwrap()),
    )
    .await
    .expect("request hung")
    .expect("request failed");
    let (parts, body) = res.into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

/// A client for requests with bodies.
#[allow(dead_code, reason = "not every test that serves also asks")]
pub type FullClient = Client<HttpConnector, Full<Bytes>>;

/// Sends `req` and reads its answer whole; a request or a body that hangs
/// for 10 s, or fails, fails the test.
#[allow(dead_code, reason = "not every test that serves also asks")]
pub async fn exchange(
    client: &FullClient,
    req: http::Request<Full<Bytes>>,
) -> http::Response<Bytes> {
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("request hung")
        .expect("request failed");
    let (parts, body) = res.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("body hung")
        .expect("body failed")
        .to_bytes();
    http::Response::from_parts(parts, body)
}

/// Serves `app` on a free loopback port until the test ends; its address.
#[allow(dead_code, reason = "not every test that asks serves this way")]
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    addr
}
