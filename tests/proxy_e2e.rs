#![cfg(feature = "proxy")]
//! End-to-end tests of `switchyard::proxy::Upstream` over real loopback
//! HTTP: upstream servers bound on `127.0.0.1:0` (axum, plain hyper, and a
//! raw TCP server that shows the exact header lines it received), the
//! `Upstream` served by axum (with the peer address from
//! `into_make_service_with_connect_info`) or by hyper's HTTP/2 server, and
//! real HTTP clients.
//!
//! Timeouts here only guard against a hang; no assertion is about speed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request as AxumRequest, State};
use axum::response::IntoResponse;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::Value;
use switchyard::proxy::{BoxError, ProxyError, Upstream};
use switchyard::split::Split;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tower::{Service, ServiceExt};

use crate::support::net;

/// Guards awaits that must complete, so a bug fails the test instead of
/// hanging it.
const HANG_GUARD: Duration = Duration::from_secs(10);
const X_TARGET: HeaderName = HeaderName::from_static("x-switchyard-target");
const X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
const PROBLEM_JSON: &str = "application/problem+json";

// === bodies ===

type ClientBody = UnsyncBoxBody<Bytes, BoxError>;
type HttpClient = Client<HttpConnector, ClientBody>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn empty() -> ClientBody {
    Empty::new()
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

fn full(data: impl Into<Bytes>) -> ClientBody {
    Full::new(data.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

/// A body fed frame by frame (data or trailers) from a channel; it ends
/// when the sender is dropped. Its size is unknown, so HTTP/1.1 sends it
/// chunked.
struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut().0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn channel_body(capacity: usize) -> (mpsc::Sender<Frame<Bytes>>, ChannelBody) {
    let (tx, rx) = mpsc::channel(capacity);
    (tx, ChannelBody(rx))
}

/// A body of these frames, in order.
fn frames(list: Vec<Frame<Bytes>>) -> ChannelBody {
    let (tx, body) = channel_body(list.len().max(1));
    for frame in list {
        tx.try_send(frame).unwrap();
    }
    body
}

// === servers ===

/// Serves an axum app on a fresh loopback port.
async fn serve_axum(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Serves a proxy service (an `Upstream`, or a `Split` of them) as the
/// fallback of an axum app, with the peer address in each request.
async fn serve_proxy<S>(svc: S) -> SocketAddr
where
    S: Service<AxumRequest, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: IntoResponse + 'static,
    S::Future: Send + 'static,
{
    net::serve(Router::new().fallback_service(svc)).await
}

/// An upstream that echoes what it received as JSON: method, URI (as the
/// upstream sees it), version, every header line, and the body.
async fn echo(req: AxumRequest) -> axum::Json<Value> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    axum::Json(serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    }))
}

async fn echo_upstream() -> SocketAddr {
    serve_axum(Router::new().fallback(echo)).await
}

/// Every value of header `name` in an echo document.
fn echoed(doc: &Value, name: &str) -> Vec<String> {
    doc["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap().to_owned())
        .collect()
}

/// A server that can be killed: its listener and every open connection
/// closed, so that new connections are refused and pooled ones are dead.
struct Killable {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

async fn serve_killable(app: Router) -> Killable {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let svc = TowerToHyperService::new(app.clone());
                    connections.spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            }
        }
        drop(listener);
        // Aborts every connection and waits until each socket is closed.
        connections.shutdown().await;
    });
    Killable { addr, stop, task }
}

impl Killable {
    async fn kill(self) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(HANG_GUARD, self.task)
            .await
            .expect("server did not stop")
            .unwrap();
    }
}

/// A raw HTTP/1.1 upstream: hands each request (head as text, body
/// de-chunked) to the test and answers every request with `response`,
/// byte for byte, keeping the connection open.
async fn raw_upstream(
    response: &'static [u8],
) -> (SocketAddr, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                while let Some(request) = read_request(&mut reader).await {
                    if tx.send(request).is_err() {
                        return;
                    }
                    if reader.get_mut().write_all(response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Reads one request: the head up to the empty line, and the body
/// (`Content-Length` or chunked; trailer lines are appended to the head
/// as `trailer-line: <line>`).
async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut head = read_head(reader).await?;
    let lines = header_lines(&head);
    let mut body = Vec::new();
    if lines
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await.ok()?;
            let size = size.trim().split(';').next()?;
            let n = usize::from_str_radix(size, 16).ok()?;
            if n == 0 {
                loop {
                    let mut trailer = String::new();
                    if reader.read_line(&mut trailer).await.ok()? == 0 || trailer == "\r\n" {
                        break;
                    }
                    head.push_str("trailer-line: ");
                    head.push_str(&trailer);
                }
                break;
            }
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).await.ok()?;
            body.extend_from_slice(&chunk[..n]);
        }
    } else if let Some((_, len)) = lines.iter().find(|(n, _)| n == "content-length") {
        let mut buf = vec![0; len.parse().ok()?];
        reader.read_exact(&mut buf).await.ok()?;
        body = buf;
    }
    Some((head, body))
}

/// The header lines of a raw head (the request line skipped), names in
/// lower case, in order, repeated names kept.
fn header_lines(head: &str) -> Vec<(String, String)> {
    head.lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

/// Serves raw TCP on a fresh loopback port: each connection accepted is
/// counted and handed to `conn`, buffered, on a task of its own.
async fn raw_server<F, Fut>(conn: F) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(BufReader<TcpStream>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(conn(BufReader::new(stream)));
        }
    });
    (addr, accepted)
}

/// Reads a request's head up to its empty line; `None` at the end of the
/// connection.
async fn read_head(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            return Some(head);
        }
        head.push_str(&line);
    }
}

// === client helpers ===

async fn send(client: &HttpClient, req: Request<ClientBody>) -> Response<Incoming> {
    tokio::time::timeout(HANG_GUARD, client.request(req))
        .await
        .expect("request hung")
        .expect("request failed")
}

async fn read(res: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = res.into_parts();
    let body = tokio::time::timeout(HANG_GUARD, body.collect())
        .await
        .expect("body hung")
        .unwrap()
        .to_bytes();
    (parts.status, parts.headers, body)
}

async fn get(
    client: &HttpClient,
    uri: String,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::get(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    read(send(client, req.body(empty()).unwrap()).await).await
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Asserts a problem+json response of `status` and returns its document.
fn assert_problem(status: StatusCode, headers: &HeaderMap, body: &[u8], want: StatusCode) -> Value {
    assert_eq!(status, want, "{}", String::from_utf8_lossy(body));
    assert_eq!(headers[CONTENT_TYPE], PROBLEM_JSON);
    let doc = json(body);
    assert_eq!(doc["status"], want.as_u16());
    assert_eq!(doc["title"], want.canonical_reason().unwrap());
    doc
}

/// Reads frames until `want` bytes arrived (a chunk may come in pieces).
async fn read_exactly(body: &mut Incoming, want: &str) {
    let mut got = Vec::new();
    while got.len() < want.len() {
        let frame = tokio::time::timeout(HANG_GUARD, body.frame())
            .await
            .expect("chunk never arrived")
            .expect("body ended early")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            got.extend_from_slice(&data);
        }
    }
    assert_eq!(String::from_utf8(got).unwrap(), want);
}

// === forwarding ===

#[tokio::test]
async fn forwards_method_path_query_and_body_to_the_upstream() {
    let up = echo_upstream().await;
    let upstream = Upstream::new(&format!("http://{up}")).unwrap();
    assert_eq!(upstream.url(), format!("http://{up}"));
    let proxy = serve_proxy(upstream).await;
    let client = client();

    for (method, body) in [
        (Method::POST, "hello upstream"),
        (Method::PUT, "{\"a\":1}"),
        (Method::DELETE, ""),
        (Method::PATCH, "x"),
        (Method::GET, ""),
    ] {
        let req = Request::builder()
            .method(method.clone())
            .uri(format!("http://{proxy}/items/42?x=1&y=a%20b&x=2"))
            .body(full(body))
            .unwrap();
        let (status, _, res) = read(send(&client, req).await).await;
        assert_eq!(status, StatusCode::OK);
        let doc = json(&res);
        assert_eq!(doc["method"], method.as_str());
        // Origin-form on the upstream: the path and query untouched.
        assert_eq!(doc["uri"], "/items/42?x=1&y=a%20b&x=2");
        assert_eq!(doc["body"], body);
        // Authority rewritten: the upstream's own.
        assert_eq!(echoed(&doc, "host"), [up.to_string()]);
    }

    // The upstream's status, headers and body come back as they are.
    let app = Router::new().fallback(|| async {
        (
            StatusCode::CREATED,
            [("x-upstream", "yes"), ("location", "/items/43")],
            "made",
        )
    });
    let up = serve_axum(app).await;
    let proxy = serve_proxy(Upstream::new(&format!("http://{up}")).unwrap()).await;
    let (status, headers, body) = get(&client, format!("http://{proxy}/items"), &[]).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["x-upstream"], "yes");
    assert_eq!(headers["location"], "/items/43");
    assert_eq!(body, "made");
}

#[tokio::test]
async fn upstream_url_path_prefix_is_prepended() {
    let up = echo_upstream().await;
    let client = client();
    for url in [format!("http://{up}/base"), format!("http://{up}/base/")] {
        let proxy = serve_proxy(Upstream::new(&url).unwrap()).await;
        let (status, _, body) = get(&client, format!("http://{proxy}/v1/items?q=1&r"), &[]).await;
        assert_eq!(status, StatusCode::OK);
        let doc = json(&body);
        assert_eq!(doc["uri"], "/base/v1/items?q=1&r", "prefix from {url}");
        assert_eq!(echoed(&doc, "host"), [up.to_string()]);
    }
}

#[tokio::test]
async fn upstream_urls_are_checked() {
    // (`https://` is accepted with the `tls` feature: see `tests/tls.rs`.)
    for bad in [
        "ftp://127.0.0.1:1",
        "127.0.0.1:8080/x",
        "http://127.0.0.1:1/?q=1",
        "http://user:pw@127.0.0.1:1",
        "not a url",
    ] {
        match Upstream::new(bad) {
            Err(ProxyError::InvalidUrl { url, .. }) => assert_eq!(url, bad),
            Ok(u) => panic!("{bad} accepted as {u:?}"),
            Err(e) => panic!("{bad}: unexpected error {e}"),
        }
    }
}

// === headers ===

/// What the raw upstream answers: every hop-by-hop header there is, a
/// chunked body with a trailer, and one end-to-end header.
const HOP_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Connection: x-hop-res\r\n\
Connection: x-hop-res-2\r\n\
X-Hop-Res: secret\r\n\
X-Hop-Res-2: secret\r\n\
Keep-Alive: timeout=5, max=100\r\n\
Proxy-Authenticate: Basic realm=\"upstream\"\r\n\
Proxy-Connection: keep-alive\r\n\
Trailer: x-checksum\r\n\
Upgrade: h2c\r\n\
Transfer-Encoding: chunked\r\n\
X-End-To-End: kept\r\n\
Content-Type: text/plain\r\n\
\r\n\
5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n";

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let (up, mut seen) = raw_upstream(HOP_RESPONSE).await;
    let proxy = serve_proxy(Upstream::new(&format!("http://{up}")).unwrap()).await;
    let client = client();

    // A streamed (chunked) upload carrying every hop-by-hop header.
    let (tx, body) = channel_body(4);
    tx.send(Frame::data(Bytes::from_static(b"part one, ")))
        .await
        .unwrap();
    tx.send(Frame::data(Bytes::from_static(b"part two")))
        .await
        .unwrap();
    drop(tx);
    let req = Request::post(format!("http://{proxy}/upload"))
        .header("connection", "x-hop-req, keep-alive")
        .header("connection", "X-Hop-Req-2")
        .header("x-hop-req", "secret")
        .header("x-hop-req-2", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic cHJveHk6c2VjcmV0")
        .header("proxy-connection", "keep-alive")
        .header("te", "trailers, deflate")
        .header("trailer", "x-req-checksum")
        .header("upgrade", "websocket")
        .header("x-end-to-end", "kept")
        .body(ClientBody::new(body))
        .unwrap();
    let (status, headers, body) = read(send(&client, req).await).await;

    let (head, received) = seen.recv().await.unwrap();
    let lines = header_lines(&head);
    let names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
    for hop in [
        "connection",
        "x-hop-req",
        "x-hop-req-2",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "trailer",
        "upgrade",
    ] {
        assert!(!names.contains(&hop), "upstream got `{hop}`:\n{head}");
    }
    // `TE: trailers` is end to end (gRPC needs it); the rest of TE is not.
    let te: Vec<&str> = lines
        .iter()
        .filter(|(n, _)| n == "te")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(te, ["trailers"], "{head}");
    // The body was re-framed by the proxy's own client: one chunked coding.
    let te_lines: Vec<&str> = lines
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(te_lines, ["chunked"], "{head}");
    assert!(names.contains(&"x-end-to-end"), "{head}");
    assert_eq!(received, b"part one, part two");

    // And on the way back.
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello world");
    for hop in [
        "connection",
        "x-hop-res",
        "x-hop-res-2",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !headers.contains_key(hop),
            "client got `{hop}`: {headers:?}"
        );
    }
    assert_eq!(headers["x-end-to-end"], "kept");
    assert_eq!(headers["content-type"], "text/plain");
    let codings: Vec<_> = headers.get_all(TRANSFER_ENCODING).iter().collect();
    assert!(codings.len() <= 1, "{headers:?}");

    // Without `trailers`, TE does not reach the upstream at all.
    let req = Request::get(format!("http://{proxy}/plain"))
        .header("te", "gzip")
        .body(empty())
        .unwrap();
    let (status, _, _) = read(send(&client, req).await).await;
    assert_eq!(status, StatusCode::OK);
    let (head, _) = seen.recv().await.unwrap();
    assert!(
        !header_lines(&head).iter().any(|(n, _)| n == "te"),
        "{head}"
    );
}

/// Sends `GET path` to `server` from the loopback address `from`, over a
/// fresh connection, so that the proxy sees that peer.
async fn get_from(
    from: [u8; 4],
    server: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, Bytes) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let stream = socket.connect(server).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = tokio::time::timeout(
        HANG_GUARD,
        sender.send_request(req.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .expect("request hung")
    .unwrap();
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn forwarding_headers_and_host() {
    let up = echo_upstream().await;
    let plain = serve_proxy(Upstream::new(&format!("http://{up}")).unwrap()).await;
    let keeping = serve_proxy(
        Upstream::builder(&format!("http://{up}"))
            .preserve_host(true)
            .forwarded_header(true)
            .build()
            .unwrap(),
    )
    .await;
    let peer = [127, 0, 0, 9];

    // An existing X-Forwarded-For gets the peer appended.
    let (status, body) = get_from(
        peer,
        plain,
        "/who",
        &[
            ("host", "public.example:8443"),
            ("x-forwarded-for", "203.0.113.7, 198.51.100.2"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let doc = json(&body);
    assert_eq!(
        echoed(&doc, "x-forwarded-for"),
        ["203.0.113.7, 198.51.100.2, 127.0.0.9"]
    );
    assert_eq!(echoed(&doc, "x-forwarded-proto"), ["http"]);
    assert_eq!(echoed(&doc, "x-forwarded-host"), ["public.example:8443"]);
    assert_eq!(echoed(&doc, "host"), [up.to_string()]);
    assert!(echoed(&doc, "forwarded").is_empty(), "{doc}");

    // None before: the peer alone.
    let (_, body) = get_from(peer, plain, "/who", &[("host", "public.example")]).await;
    let doc = json(&body);
    assert_eq!(echoed(&doc, "x-forwarded-for"), ["127.0.0.9"]);
    assert_eq!(echoed(&doc, "x-forwarded-host"), ["public.example"]);

    // preserve_host: the client's Host goes on; forwarded_header: RFC 7239.
    let (status, body) = get_from(
        peer,
        keeping,
        "/who",
        &[
            ("host", "public.example"),
            ("x-forwarded-for", "203.0.113.7"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let doc = json(&body);
    assert_eq!(echoed(&doc, "host"), ["public.example"]);
    assert_eq!(echoed(&doc, "x-forwarded-for"), ["203.0.113.7, 127.0.0.9"]);
    assert_eq!(echoed(&doc, "x-forwarded-proto"), ["http"]);
    assert_eq!(echoed(&doc, "x-forwarded-host"), ["public.example"]);
    assert_eq!(
        echoed(&doc, "forwarded"),
        ["for=127.0.0.9;host=\"public.example\";proto=http"]
    );

    // The peer from a `SocketAddr` extension, for a proxy served by plain
    // hyper (here: called directly, as such a server would).
    let upstream = Upstream::new(&format!("http://{up}")).unwrap();
    let mut req = Request::get("/direct")
        .header(HOST, "direct.example")
        .header("x-forwarded-for", "192.0.2.1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert("10.1.2.3:4567".parse::<SocketAddr>().unwrap());
    let res = tokio::time::timeout(HANG_GUARD, upstream.oneshot(req))
        .await
        .unwrap()
        .unwrap();
    let doc = json(&res.into_body().collect().await.unwrap().to_bytes());
    assert_eq!(doc["uri"], "/direct");
    assert_eq!(echoed(&doc, "x-forwarded-for"), ["192.0.2.1, 10.1.2.3"]);
    assert_eq!(echoed(&doc, "x-forwarded-host"), ["direct.example"]);
    assert_eq!(echoed(&doc, "host"), [up.to_string()]);
}

/// `X-Forwarded-For` as the upstream sees it (its lines joined) for a
/// request from 127.0.0.9 carrying `lines`.
async fn x_forwarded_for_through_the_proxy(lines: &[&str]) -> String {
    let up = echo_upstream().await;
    let proxy = serve_proxy(Upstream::new(&format!("http://{up}")).unwrap()).await;
    let mut headers = vec![("host", "public.example")];
    headers.extend(lines.iter().map(|line| ("x-forwarded-for", *line)));
    let (status, body) = get_from([127, 0, 0, 9], proxy, "/who", &headers).await;
    assert_eq!(status, StatusCode::OK);
    echoed(&json(&body), "x-forwarded-for").join(", ")
}

/// RFC 9110 section 5.3: several `X-Forwarded-For` field lines are one
/// comma-separated list; the peer is appended to all of it (as
/// `KeyBy::client_ip` reads it: every line, from the right).
#[tokio::test]
async fn x_forwarded_for_split_over_several_lines_is_kept_whole() {
    assert_eq!(
        x_forwarded_for_through_the_proxy(&["203.0.113.7", "198.51.100.2"]).await,
        "203.0.113.7, 198.51.100.2, 127.0.0.9"
    );
}

/// A line of the list that is not visible ASCII (obs-text) names no
/// address: it goes, the rest of the list is kept and the peer added. (The
/// `forwarded` fuzz target found a build that passed such bytes on.)
#[tokio::test]
async fn x_forwarded_for_lines_that_are_not_ascii_are_dropped() {
    assert_eq!(
        x_forwarded_for_through_the_proxy(&["203.0.113.7\u{e9}", "198.51.100.2"]).await,
        "198.51.100.2, 127.0.0.9"
    );
}

// === streaming ===

/// Byte `i` of the test upload.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 12)) as u8
}

/// FNV-1a, to compare what was sent with what arrived.
fn fnv(hash: u64, data: &[u8]) -> u64 {
    data.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// The upload sink: counts and hashes what arrives, and says when the
/// first bytes are in.
#[derive(Clone)]
struct Sink {
    first_bytes: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

async fn sink(State(sink): State<Sink>, req: AxumRequest) -> axum::Json<Value> {
    let content_length = req
        .headers()
        .get(CONTENT_LENGTH)
        .map(|v| v.to_str().unwrap().to_owned());
    let mut body = req.into_body();
    let (mut len, mut hash) = (0usize, FNV_START);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            if len == 0
                && !data.is_empty()
                && let Some(tx) = sink.first_bytes.lock().unwrap().take()
            {
                let _ = tx.send(());
            }
            len += data.len();
            hash = fnv(hash, &data);
        }
    }
    axum::Json(serde_json::json!({ "len": len, "hash": hash, "content_length": content_length }))
}

#[tokio::test]
async fn large_upload_streams_to_the_upstream() {
    const TOTAL: usize = 8 << 20;
    const CHUNK: usize = 64 << 10;
    let (first_tx, first_rx) = oneshot::channel();
    let state = Sink {
        first_bytes: Arc::new(Mutex::new(Some(first_tx))),
    };
    let up = serve_axum(Router::new().fallback(sink).with_state(state.clone())).await;
    let proxy = serve_proxy(Upstream::new(&format!("http://{up}")).unwrap()).await;
    let client = client();

    let data: Bytes = (0..TOTAL).map(pattern).collect::<Vec<u8>>().into();
    let want_hash = fnv(FNV_START, &data);

    // Streamed: the upstream has the first chunk before the client sends
    // the second, so nothing buffers the whole upload.
    let (tx, body) = channel_body(8);
    let req = Request::post(format!("http://{proxy}/upload"))
        .body(ClientBody::new(body))
        .unwrap();
    let pending = tokio::spawn({
        let client = client.clone();
        async move { read(send(&client, req).await).await }
    });
    tx.send(Frame::data(data.slice(..CHUNK))).await.unwrap();
    tokio::time::timeout(HANG_GUARD, first_rx)
        .await
        .expect("the first chunk never reached the upstream")
        .unwrap();
    for start in (CHUNK..TOTAL).step_by(CHUNK) {
        tx.send(Frame::data(data.slice(start..start + CHUNK)))
            .await
            .unwrap();
    }
    drop(tx);
    let (status, _, body) = pending.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let doc = json(&body);
    assert_eq!(doc["len"], TOTAL);
    assert_eq!(doc["hash"], want_hash);
    assert_eq!(doc["content_length"], Value::Null);

    // With a length: it arrives whole too, and the length goes on.
    *state.first_bytes.lock().unwrap() = None;
    let req = Request::put(format!("http://{proxy}/upload"))
        .body(full(data))
        .unwrap();
    let (status, _, body) = read(send(&client, req).await).await;
    assert_eq!(status, StatusCode::OK);
    let doc = json(&body);
    assert_eq!(doc["len"], TOTAL);
    assert_eq!(doc["hash"], want_hash);
    assert_eq!(doc["content_length"], TOTAL.to_string());
}

type Tap = mpsc::UnboundedSender<mpsc::Sender<Frame<Bytes>>>;

/// An SSE upstream: each request gets a stream whose sender goes to the
/// test.
async fn sse_upstream() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<mpsc::Sender<Frame<Bytes>>>,
) {
    let (tap, taps) = mpsc::unbounded_channel();
    let app = Router::new()
        .fallback(|State(tap): State<Tap>| async move {
            let (tx, body) = channel_body(4);
            tap.send(tx).unwrap();
            Response::builder()
                .header(CONTENT_TYPE, "text/event-stream")
                .header("cache-control", "no-cache")
                .body(axum::body::Body::new(body))
                .unwrap()
        })
        .with_state(tap);
    (serve_axum(app).await, taps)
}

#[tokio::test]
async fn sse_response_arrives_chunk_by_chunk() {
    let (up, mut taps) = sse_upstream().await;
    let proxy = serve_proxy(Upstream::new(&format!("http://{up}")).unwrap()).await;
    let client = client();

    let res = send(
        &client,
        Request::get(format!("http://{proxy}/events"))
            .header("accept", "text/event-stream")
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[CONTENT_TYPE], "text/event-stream");
    assert_eq!(res.headers()["cache-control"], "no-cache");
    let events = taps.recv().await.unwrap();
    let mut body = res.into_body();

    // Each event reaches the client while the upstream still holds the
    // next one: nothing waits for the end of the stream.
    for i in 1..=3 {
        let event = format!("data: {i}\n\n");
        events
            .send(Frame::data(Bytes::from(event.clone())))
            .await
            .unwrap();
        read_exactly(&mut body, &event).await;
    }
    events
        .send(Frame::data(Bytes::from_static(b"data: last\n\n")))
        .await
        .unwrap();
    drop(events);
    let rest = tokio::time::timeout(HANG_GUARD, body.collect())
        .await
        .expect("stream never ended")
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "data: last\n\n");
}

// === failures ===

#[tokio::test]
async fn connection_refused_is_a_502_problem() {
    let refusing = net::Refusing::new();
    let dead = refusing.addr;
    let proxy = serve_proxy(Upstream::new(&format!("http://{dead}")).unwrap()).await;
    let client = client();
    for _ in 0..2 {
        let (status, headers, body) = get(&client, format!("http://{proxy}/x"), &[]).await;
        let doc = assert_problem(status, &headers, &body, StatusCode::BAD_GATEWAY);
        let detail = doc["detail"].as_str().unwrap();
        // Issue 16: the upstream's address goes to the log, not to clients.
        assert_eq!(detail, "could not connect to upstream");
        assert!(!detail.contains(&dead.to_string()), "{detail}");
    }
}

/// A listener whose accept queue is full (backlog 0, one connection
/// waiting, never accepted): the kernel drops further SYNs, so a connect
/// to it hangs. Keep the returned values alive.
fn unreachable_upstream() -> (SocketAddr, TcpListener, std::net::TcpStream) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    (addr, listener, filler)
}

#[tokio::test]
async fn connect_timeout_is_a_502_problem() {
    let (addr, _listener, _filler) = unreachable_upstream();
    let upstream = Upstream::builder(&format!("http://{addr}"))
        .connect_timeout(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let proxy = serve_proxy(upstream).await;
    let (status, headers, body) = get(&client(), format!("http://{proxy}/x"), &[]).await;
    let doc = assert_problem(status, &headers, &body, StatusCode::BAD_GATEWAY);
    assert!(
        doc["detail"]
            .as_str()
            .unwrap()
            .contains("could not connect"),
        "{doc}"
    );
}

/// The builder docs: connecting counts towards `response_timeout` when a
/// new connection is needed, so with a response timeout above the connect
/// timeout an unreachable upstream gets its 502, not a 504.
#[tokio::test]
async fn response_timeout_does_not_turn_an_unreachable_upstream_into_a_504() {
    let (addr, _listener, _filler) = unreachable_upstream();
    let upstream = Upstream::builder(&format!("http://{addr}"))
        .connect_timeout(Some(Duration::from_millis(100)))
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let proxy = serve_proxy(upstream).await;
    let (status, headers, body) = get(&client(), format!("http://{proxy}/x"), &[]).await;
    assert_problem(status, &headers, &body, StatusCode::BAD_GATEWAY);
}

/// An upstream on one keep-alive connection at a time that answers the
/// `n`th request of a connection after `delays[n]`, or never for `None`;
/// counts the connections it accepted.
async fn scheduled_upstream(
    delays: Vec<Option<Duration>>,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    raw_server(move |mut reader| {
        let delays = delays.clone();
        async move {
            for delay in delays {
                // A request head without a body.
                if read_head(&mut reader).await.is_none() {
                    return;
                }
                let Some(delay) = delay else {
                    // Never answers; holds the connection.
                    std::future::pending::<()>().await;
                    return;
                };
                tokio::time::sleep(delay).await;
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if reader.get_mut().write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    })
    .await
}

/// A pooled connection keeps its response timer from exchange to
/// exchange, armed for its last deadline: an exchange must time out at
/// its own deadline, neither at the earlier one the connection's timer
/// was armed for (passed while idle, or while it waits) nor later.
#[tokio::test(start_paused = true)]
async fn response_timeout_on_a_reused_connection_is_the_exchange_own() {
    use tokio::time::Instant;
    const LIMIT: Duration = Duration::from_secs(1);
    let (up, accepted) = scheduled_upstream(vec![
        Some(Duration::ZERO),
        Some(Duration::from_millis(500)),
        Some(Duration::from_millis(700)),
        None,
    ])
    .await;
    let upstream = Upstream::builder(&format!("http://{up}"))
        .response_timeout(LIMIT)
        .build()
        .unwrap();
    let proxy = serve_proxy(upstream).await;
    let client = client();
    let url = format!("http://{proxy}/x");
    assert_eq!(get(&client, url.clone(), &[]).await.0, StatusCode::OK);
    // The connection's timer runs out while it is idle.
    tokio::time::sleep(LIMIT + LIMIT / 2).await;
    let start = Instant::now();
    let (status, _, body) = get(&client, url.clone(), &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert_eq!(start.elapsed(), Duration::from_millis(500));
    // Armed for the last exchange's deadline, half a second from now: it
    // runs out while this one waits, 700 ms for an answer.
    let start = Instant::now();
    let (status, _, body) = get(&client, url.clone(), &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    assert_eq!(start.elapsed(), Duration::from_millis(700));
    // An upstream that never answers: a 504 at this exchange's deadline.
    let start = Instant::now();
    let (status, headers, body) = get(&client, url, &[]).await;
    assert_problem(status, &headers, &body, StatusCode::GATEWAY_TIMEOUT);
    let took = start.elapsed();
    assert!(
        took >= LIMIT && took < LIMIT + Duration::from_millis(50),
        "{took:?}"
    );
    // All on one connection: the timer was the connection's each time.
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn response_timeout_is_a_504_problem_but_streams_may_last() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            held.push(stream);
        }
    });
    let upstream = Upstream::builder(&format!("http://{silent}"))
        .response_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let proxy = serve_proxy(upstream).await;
    let client = client();
    let (status, headers, body) = get(&client, format!("http://{proxy}/slow"), &[]).await;
    let doc = assert_problem(status, &headers, &body, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        doc["detail"].as_str().unwrap().contains("did not answer"),
        "{doc}"
    );

    // The limit is on the response head only: a stream that outlives it
    // is not cut.
    let (up, mut taps) = sse_upstream().await;
    let upstream = Upstream::builder(&format!("http://{up}"))
        .response_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let proxy = serve_proxy(upstream).await;
    let res = send(
        &client,
        Request::get(format!("http://{proxy}/events"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let events = taps.recv().await.unwrap();
    let mut body = res.into_body();
    events
        .send(Frame::data(Bytes::from_static(b"data: 1\n\n")))
        .await
        .unwrap();
    read_exactly(&mut body, "data: 1\n\n").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    events
        .send(Frame::data(Bytes::from_static(b"data: 2\n\n")))
        .await
        .unwrap();
    drop(events);
    let rest = tokio::time::timeout(HANG_GUARD, body.collect())
        .await
        .unwrap()
        .expect("stream cut by the response timeout")
        .to_bytes();
    assert_eq!(rest, "data: 2\n\n");
}

fn named(name: &'static str) -> Router {
    Router::new().fallback(move || async move { name })
}

#[tokio::test]
async fn split_counts_a_dead_upstream_against_its_target() {
    let blue = serve_killable(named("blue")).await;
    let green = serve_killable(named("green")).await;
    let split = Split::builder()
        .target(
            "blue",
            Upstream::new(&format!("http://{}", blue.addr)).unwrap(),
            50,
        )
        .target(
            "green",
            Upstream::new(&format!("http://{}", green.addr)).unwrap(),
            50,
        )
        .override_header(X_TARGET)
        .echo_header(X_SERVED_BY)
        .build()
        .unwrap();
    let handle = split.handle();
    let proxy = serve_proxy(split).await;
    let client = client();
    let uri = format!("http://{proxy}/");

    for target in ["blue", "green"] {
        for _ in 0..10 {
            let (status, headers, body) =
                get(&client, uri.clone(), &[(X_TARGET.as_str(), target)]).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body, target);
            assert_eq!(headers[&X_SERVED_BY], target);
        }
    }

    green.kill().await;
    for _ in 0..10 {
        let (status, headers, body) =
            get(&client, uri.clone(), &[(X_TARGET.as_str(), "green")]).await;
        assert_problem(status, &headers, &body, StatusCode::BAD_GATEWAY);
        assert_eq!(headers[&X_SERVED_BY], "green");
        let (status, headers, body) =
            get(&client, uri.clone(), &[(X_TARGET.as_str(), "blue")]).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"blue"[..]));
        assert_eq!(headers[&X_SERVED_BY], "blue");
    }
    // Unforced: whichever green gets fails, blue's all succeed.
    let (mut to_blue, mut to_green) = (0, 0);
    for _ in 0..40 {
        let (status, headers, body) = get(&client, uri.clone(), &[]).await;
        match headers[&X_SERVED_BY].to_str().unwrap() {
            "blue" => {
                assert_eq!((status, &body[..]), (StatusCode::OK, &b"blue"[..]));
                to_blue += 1;
            }
            "green" => {
                assert_problem(status, &headers, &body, StatusCode::BAD_GATEWAY);
                to_green += 1;
            }
            other => panic!("served by {other}"),
        }
    }

    let b = handle.target_stats("blue").unwrap();
    let g = handle.target_stats("green").unwrap();
    assert_eq!(g.requests, 10 + 10 + to_green);
    assert_eq!(g.responses.success, 10);
    assert_eq!(g.responses.server_error, 10 + to_green);
    assert_eq!(b.requests, 10 + 10 + to_blue);
    assert_eq!(b.responses.success, 10 + 10 + to_blue);
    assert_eq!(b.responses.server_error, 0);
    assert_eq!((b.in_flight, g.in_flight), (0, 0));
    assert_eq!((b.errors, g.errors), (0, 0));
    blue.kill().await;
}

// === h2c ===

/// A gRPC-like upstream over h2c: reads the whole request (and its
/// trailers), answers with data and trailers.
async fn h2c_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let version = format!("{:?}", req.version());
                    let te = req.headers().get("te").cloned();
                    let path = req.uri().path().to_owned();
                    let collected = req.into_body().collect().await.unwrap();
                    let trailer = collected
                        .trailers()
                        .and_then(|t| t.get("x-req-checksum"))
                        .cloned()
                        .unwrap_or(HeaderValue::from_static("none"));
                    let mut data = b"pong:".to_vec();
                    data.extend_from_slice(&collected.to_bytes());
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    trailers.insert("grpc-message", HeaderValue::from_static("fine"));
                    let mut res = Response::builder()
                        .header(CONTENT_TYPE, "application/grpc")
                        .header("x-upstream-version", version)
                        .header("x-upstream-path", path)
                        .header("x-request-trailer", trailer);
                    if let Some(te) = te {
                        res = res.header("x-upstream-te", te);
                    }
                    Ok::<_, Infallible>(
                        res.body(frames(vec![
                            Frame::data(Bytes::from(data)),
                            Frame::trailers(trailers),
                        ]))
                        .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Serves a proxy service (an `Upstream`, or a `Split` of them) over h2c,
/// with the peer address in each request.
async fn serve_proxy_h2c<S, B>(svc: S) -> SocketAddr
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let svc = svc.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(peer);
                    svc.clone().oneshot(req)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A unary gRPC-like call: `POST /pkg.Echo/Ping` with a body.
fn grpc_call(proxy: SocketAddr, headers: &[(&str, &str)]) -> Request<ClientBody> {
    let mut req = Request::post(format!("http://{proxy}/pkg.Echo/Ping"))
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(full("ping")).unwrap()
}

/// `grpc-status` of a response: from its headers (trailers-only) or its
/// trailers.
fn grpc_status(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<String> {
    headers
        .get("grpc-status")
        .or_else(|| trailers?.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned())
}

#[tokio::test]
async fn h2c_upstream_passes_trailers_both_ways() {
    let up = h2c_upstream().await;
    let upstream = Upstream::builder(&format!("http://{up}"))
        .http2(true)
        .build()
        .unwrap();
    let proxy = serve_proxy_h2c(upstream).await;
    let client = h2c_client();

    for i in 0..3 {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-req-checksum", HeaderValue::from(40 + i));
        let req = Request::post(format!("http://{proxy}/pkg.Echo/Ping"))
            .header(CONTENT_TYPE, "application/grpc")
            .header("te", "trailers")
            .body(ClientBody::new(frames(vec![
                Frame::data(Bytes::from(format!("ping {i}"))),
                Frame::trailers(trailers),
            ])))
            .unwrap();
        let res = send(&client, req).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.version(), Version::HTTP_2);
        let headers = res.headers().clone();
        assert_eq!(headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(headers["x-upstream-version"], "HTTP/2.0");
        assert_eq!(headers["x-upstream-path"], "/pkg.Echo/Ping");
        assert_eq!(headers["x-upstream-te"], "trailers");
        // The request's trailers reached the upstream.
        assert_eq!(headers["x-request-trailer"], (40 + i).to_string());
        let collected = tokio::time::timeout(HANG_GUARD, res.into_body().collect())
            .await
            .unwrap()
            .unwrap();
        // And the response's trailers reached the client.
        let trailers = collected.trailers().cloned().expect("no response trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "fine");
        assert_eq!(collected.to_bytes(), format!("pong:ping {i}"));
    }
}

/// `switchyard::grpc`: the proxy's 502 and 504 reach a gRPC client as
/// trailers-only answers, `UNAVAILABLE` (14) and `DEADLINE_EXCEEDED` (4).
#[tokio::test]
async fn grpc_calls_get_grpc_shaped_failures() {
    let refusing = net::Refusing::new();
    let dead = refusing.addr;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(listener.accept().await.unwrap().0);
        }
    });
    let client = h2c_client();
    for (addr, code, words) in [
        (dead, "14", "could not connect"),
        (silent, "4", "did not answer"),
    ] {
        let upstream = Upstream::builder(&format!("http://{addr}"))
            .http2(true)
            .response_timeout(Duration::from_millis(200))
            .build()
            .unwrap();
        let proxy = serve_proxy_h2c(upstream).await;
        let res = send(&client, grpc_call(proxy, &[])).await;
        let (status, headers, body) = read(res).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(grpc_status(&headers, None).as_deref(), Some(code));
        let message = headers["grpc-message"].to_str().unwrap();
        assert!(message.contains(words), "{message}");
        assert!(body.is_empty());
    }
}

/// The module docs of `switchyard::proxy`: failures are answered "so that
/// a Split counts them against the target". A gRPC call to a dead upstream
/// is answered HTTP 200 with `grpc-status: 14` (trailers-only), and the
/// split must still count it as the target's failure.
#[tokio::test]
async fn split_counts_grpc_failures_against_the_target() {
    let blue = h2c_upstream().await;
    let refusing = net::Refusing::new();
    let green = refusing.addr;
    let h2 = |addr: SocketAddr| {
        Upstream::builder(&format!("http://{addr}"))
            .http2(true)
            .build()
            .unwrap()
    };
    let split = Split::builder()
        .target("blue", h2(blue), 50)
        .target("green", h2(green), 50)
        .override_header(X_TARGET)
        .echo_header(X_SERVED_BY)
        .build()
        .unwrap();
    let handle = split.handle();
    let proxy = serve_proxy_h2c(split).await;
    let client = h2c_client();

    for target in ["blue", "green"] {
        for _ in 0..5 {
            let res = send(&client, grpc_call(proxy, &[(X_TARGET.as_str(), target)])).await;
            assert_eq!(res.headers()[&X_SERVED_BY], target);
            let (parts, body) = res.into_parts();
            let collected = body.collect().await.unwrap();
            let code = grpc_status(&parts.headers, collected.trailers());
            let want = if target == "blue" { "0" } else { "14" };
            assert_eq!(code.as_deref(), Some(want), "{target}");
        }
    }
    let b = handle.target_stats("blue").unwrap();
    assert_eq!((b.requests, b.responses.success), (5, 5));
    let g = handle.target_stats("green").unwrap();
    assert_eq!(g.requests, 5);
    assert_eq!(
        (g.responses.success, g.responses.server_error),
        (0, 5),
        "green's failures counted as successes"
    );
}

/// A raw HTTP/1.1 upstream that answers `closes_after` requests on a
/// connection (`ok`, keep-alive, no `Connection: close`), then closes it
/// the way an upstream's idle timeout does; counts its connections.
async fn closing_upstream(
    closes_after: usize,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    raw_server(move |mut reader| async move {
        for _ in 0..closes_after {
            if read_request(&mut reader).await.is_none() {
                return;
            }
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if reader.get_mut().write_all(answer).await.is_err() {
                return;
            }
        }
        // Closed while idle, with no word of it in the answers.
    })
    .await
}

#[tokio::test]
async fn pooled_connections_are_reused_and_one_the_upstream_closed_is_never_used() {
    // Keep-alive: 20 requests in a row over one upstream connection.
    let (addr, accepted) = closing_upstream(usize::MAX).await;
    let proxy = serve_proxy(Upstream::new(&format!("http://{addr}")).unwrap()).await;
    let client = client();
    for _ in 0..20 {
        let (status, _, body) = get(&client, format!("http://{proxy}/"), &[]).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);

    // An upstream that closes each connection after one answer: the next
    // request never goes to the closed one (no 502), it opens another.
    let (addr, accepted) = closing_upstream(1).await;
    let proxy = serve_proxy(Upstream::new(&format!("http://{addr}")).unwrap()).await;
    for i in 0..10 {
        let (status, _, body) = get(&client, format!("http://{proxy}/"), &[]).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"ok"[..]),
            "request {i}"
        );
        // Let the close arrive, as an idle timeout's would.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 10);
}

/// An upstream that answers `early` as soon as it has a request's head,
/// then reads the request's (chunked) body and hands it to the test, and
/// serves the next request on the same connection: what an upstream that
/// acknowledges an upload before reading it does. Counts its connections.
async fn early_answering_upstream() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<Vec<u8>>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (addr, accepted) = raw_server(move |mut reader| {
        let tx = tx.clone();
        async move {
            while let Some(head) = read_head(&mut reader).await {
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly";
                if reader.get_mut().write_all(answer).await.is_err() {
                    return;
                }
                let mut body = Vec::new();
                let mut chunked = header_lines(&head)
                    .iter()
                    .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
                while chunked {
                    let mut size = String::new();
                    if reader.read_line(&mut size).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
                        return;
                    };
                    let mut chunk = vec![0; n + 2];
                    if reader.read_exact(&mut chunk).await.is_err() {
                        return;
                    }
                    body.extend_from_slice(&chunk[..n]);
                    chunked = n > 0;
                }
                let _ = tx.send(body);
            }
        }
    })
    .await;
    (addr, rx, accepted)
}

/// The response arrives, and is read to its end, while the request's body
/// is still being sent: the pooled connection goes on sending the body to
/// its end, rather than being put back busy or closed half way.
#[tokio::test]
async fn an_upload_answered_before_it_ends_still_reaches_the_upstream_whole() {
    let (addr, mut bodies, accepted) = early_answering_upstream().await;
    let proxy = serve_proxy(Upstream::new(&format!("http://{addr}")).unwrap()).await;
    let client = client();

    let (tx, body) = channel_body(4);
    tx.send(Frame::data(Bytes::from_static(b"first-")))
        .await
        .unwrap();
    let req = Request::post(format!("http://{proxy}/upload"))
        .body(ClientBody::new(body))
        .unwrap();
    // The whole answer, with the body still open on the client's side.
    let (status, _, answer) = read(send(&client, req).await).await;
    assert_eq!((status, &answer[..]), (StatusCode::OK, &b"early"[..]));
    // The rest of the body, after the answer has ended.
    tokio::time::sleep(Duration::from_millis(20)).await;
    tx.send(Frame::data(Bytes::from_static(b"rest")))
        .await
        .unwrap();
    drop(tx);
    let got = tokio::time::timeout(HANG_GUARD, bodies.recv())
        .await
        .expect("the rest of the body never reached the upstream")
        .unwrap();
    assert_eq!(got, b"first-rest");

    // And the proxy goes on serving.
    for _ in 0..3 {
        let (status, _, answer) = get(&client, format!("http://{proxy}/"), &[]).await;
        assert_eq!((status, &answer[..]), (StatusCode::OK, &b"early"[..]));
    }
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) <= 2);
}
