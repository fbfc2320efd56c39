//! End-to-end tests of `switchyard::split` over real loopback HTTP: servers
//! bound on `127.0.0.1:0` (axum and plain hyper), real HTTP clients.
//!
//! Timeouts here only guard against a hang; no assertion is about speed.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use switchyard::split::{Split, SplitHandle};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::service_fn;
use tower::util::ServiceFn;

const X_TARGET: HeaderName = HeaderName::from_static("x-switchyard-target");
const X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
/// Guards awaits that must complete, so a bug fails the test instead of
/// hanging it.
const HANG_GUARD: Duration = Duration::from_secs(10);

// === helpers ===

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn fetch(
    client: &HttpClient,
    method: Method,
    uri: String,
    headers: &[(HeaderName, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        req = req.header(name, *value);
    }
    let res = tokio::time::timeout(HANG_GUARD, client.request(req.body(Empty::new()).unwrap()))
        .await
        .expect("request hung")
        .expect("request failed");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn served_by(headers: &HeaderMap) -> &str {
    headers
        .get(&X_SERVED_BY)
        .expect("no echo header")
        .to_str()
        .unwrap()
}

/// Serves an axum app on a fresh loopback port.
async fn serve_axum(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// One version of the service as an axum app.
fn version_app(name: &'static str) -> Router {
    Router::new()
        .route("/", get(move || async move { name }))
        .route("/api/who", get(move || async move { name }))
}

fn blue_green_apps() -> Split<Router> {
    Split::builder()
        .target("blue", version_app("blue"), 100)
        .target("green", version_app("green"), 0)
        .override_header(X_TARGET)
        .echo_header(X_SERVED_BY)
        .seed(42)
        .build()
        .unwrap()
}

/// Admin route: promote a target, answer the new weights as JSON.
async fn promote(
    State(handle): State<SplitHandle>,
    Path(target): Path<String>,
) -> Result<String, (StatusCode, String)> {
    handle
        .promote(&target)
        .map_err(|e| (StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(serde_json::to_string(&handle.weights()).unwrap())
}

// === axum ===

#[tokio::test]
async fn axum_route_service_promote_through_admin_route() {
    let split = blue_green_apps();
    let handle = split.handle();
    let app = Router::new()
        .route_service("/", split)
        .route("/admin/promote/{target}", post(promote))
        .with_state(handle.clone());
    let addr = serve_axum(app).await;
    let client = client();
    let root = format!("http://{addr}/");

    for _ in 0..20 {
        let (status, headers, body) = fetch(&client, Method::GET, root.clone(), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "blue");
        assert_eq!(headers[&X_SERVED_BY], "blue");
    }
    // A tester reaches green before any weight moves.
    let (_, headers, body) =
        fetch(&client, Method::GET, root.clone(), &[(X_TARGET, "green")]).await;
    assert_eq!((body.as_str(), served_by(&headers)), ("green", "green"));

    // Promote green through the app's own admin route.
    let (status, _, body) = fetch(
        &client,
        Method::POST,
        format!("http://{addr}/admin/promote/green"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"blue": 0, "green": 100})
    );
    for _ in 0..20 {
        let (_, headers, body) = fetch(&client, Method::GET, root.clone(), &[]).await;
        assert_eq!(body, "green");
        assert_eq!(headers[&X_SERVED_BY], "green");
    }
    let (status, _, body) = fetch(
        &client,
        Method::POST,
        format!("http://{addr}/admin/promote/purple"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("purple"), "{body}");

    let blue = handle.target_stats("blue").unwrap();
    let green = handle.target_stats("green").unwrap();
    assert_eq!((blue.requests, blue.responses.success), (20, 20));
    assert_eq!((green.requests, green.responses.success), (21, 21));
    // Every body was read to its end by the client.
    assert_eq!((blue.in_flight, green.in_flight), (0, 0));
    tokio::time::timeout(HANG_GUARD, handle.drained("blue").unwrap())
        .await
        .expect("blue not drained after promote");
}

#[tokio::test]
async fn axum_fallback_service_promote_and_rollback() {
    let split = blue_green_apps();
    let handle = split.handle();
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .fallback_service(split);
    let addr = serve_axum(app).await;
    let client = client();
    let who = format!("http://{addr}/api/who");

    let (_, headers, body) = fetch(&client, Method::GET, who.clone(), &[]).await;
    assert_eq!((body.as_str(), served_by(&headers)), ("blue", "blue"));
    // The app's own routes do not go through the split.
    let (_, headers, body) =
        fetch(&client, Method::GET, format!("http://{addr}/health"), &[]).await;
    assert_eq!(body, "ok");
    assert!(headers.get(&X_SERVED_BY).is_none());
    // A path the version does not know: its 404, counted on it.
    let (status, headers, _) =
        fetch(&client, Method::GET, format!("http://{addr}/nope"), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(headers[&X_SERVED_BY], "blue");

    handle.promote("green").unwrap();
    for _ in 0..10 {
        let (_, headers, body) = fetch(&client, Method::GET, who.clone(), &[]).await;
        assert_eq!((body.as_str(), served_by(&headers)), ("green", "green"));
    }
    handle.rollback().unwrap();
    let (_, headers, body) = fetch(&client, Method::GET, who.clone(), &[]).await;
    assert_eq!((body.as_str(), served_by(&headers)), ("blue", "blue"));

    let blue = handle.target_stats("blue").unwrap();
    assert_eq!(blue.requests, 3);
    assert_eq!(blue.responses.success, 2);
    assert_eq!(blue.responses.client_error, 1);
    assert_eq!(handle.target_stats("green").unwrap().requests, 10);
}

// === plain hyper, streaming ===

/// A response body fed chunk by chunk from a channel; it ends when the
/// sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

type Tap = mpsc::UnboundedSender<mpsc::Sender<Bytes>>;
type VersionBody = Either<Full<Bytes>, ChannelBody>;
type VersionFuture = Ready<Result<Response<VersionBody>, Infallible>>;

/// A version served by plain hyper: answers its name at once, or, with a
/// `tap`, streams an SSE-like body whose sender it hands to the test.
fn version(
    name: &'static str,
    tap: Option<Tap>,
) -> ServiceFn<impl FnMut(Request<Incoming>) -> VersionFuture + Clone + Send + Sync + 'static> {
    service_fn(move |_req: Request<Incoming>| {
        let body = match &tap {
            None => Either::Left(Full::new(Bytes::from_static(name.as_bytes()))),
            Some(tap) => {
                let (tx, rx) = mpsc::channel(4);
                tap.send(tx).expect("test dropped the tap");
                Either::Right(ChannelBody(rx))
            }
        };
        let res = Response::builder()
            .header(
                CONTENT_TYPE,
                if tap.is_some() {
                    "text/event-stream"
                } else {
                    "text/plain"
                },
            )
            .body(body)
            .unwrap();
        ready(Ok(res))
    })
}

fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn connect(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn send(sender: &mut Sender, path: &str) -> Response<Incoming> {
    sender.ready().await.unwrap();
    let req = Request::get(path)
        .header(HOST, "127.0.0.1")
        .body(Empty::new())
        .unwrap();
    tokio::time::timeout(HANG_GUARD, sender.send_request(req))
        .await
        .expect("request hung")
        .unwrap()
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
        got.extend_from_slice(&frame.into_data().unwrap());
    }
    assert_eq!(String::from_utf8(got).unwrap(), want);
}

#[tokio::test]
async fn hyper_streaming_response_holds_drain_until_read_to_end() {
    let (tap, mut taps) = mpsc::unbounded_channel();
    let split = Split::builder()
        .target("blue", version("blue", None), 100)
        .target("green", version("green", Some(tap)), 0)
        .echo_header(X_SERVED_BY)
        .seed(7)
        .build()
        .unwrap();
    let handle = split.handle();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(split.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let mut conn = connect(addr).await;
    let res = send(&mut conn, "/").await;
    assert_eq!(res.headers()[&X_SERVED_BY], "blue");
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "blue");

    // Green streams; the response head arrives before any chunk.
    handle.promote("green").unwrap();
    let res = send(&mut conn, "/events").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[&X_SERVED_BY], "green");
    assert_eq!(res.headers()[CONTENT_TYPE], "text/event-stream");
    let chunks = tokio::time::timeout(HANG_GUARD, taps.recv())
        .await
        .unwrap()
        .unwrap();
    let mut body = res.into_body();

    // First chunk reaches the client while the server has more to send.
    chunks
        .send(Bytes::from_static(b"data: 1\n\n"))
        .await
        .unwrap();
    read_exactly(&mut body, "data: 1\n\n").await;
    assert_eq!(handle.target_stats("green").unwrap().in_flight, 1);

    // Back to blue while green's stream is open: green is not drained.
    handle.promote("blue").unwrap();
    let mut drained = handle.drained("green").unwrap();
    assert!(poll_once(&mut drained).is_pending());
    // A new client meanwhile goes to blue, on another connection.
    let mut other = connect(addr).await;
    let res = send(&mut other, "/").await;
    assert_eq!(res.headers()[&X_SERVED_BY], "blue");
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "blue");

    chunks
        .send(Bytes::from_static(b"data: 2\n\n"))
        .await
        .unwrap();
    read_exactly(&mut body, "data: 2\n\n").await;
    assert_eq!(handle.target_stats("green").unwrap().in_flight, 1);
    assert!(poll_once(&mut drained).is_pending());

    // The last chunk, then the end of the stream.
    chunks
        .send(Bytes::from_static(b"data: 3\n\n"))
        .await
        .unwrap();
    drop(chunks);
    let rest = tokio::time::timeout(HANG_GUARD, body.collect())
        .await
        .expect("stream never ended")
        .unwrap()
        .to_bytes();
    assert_eq!(rest, "data: 3\n\n");
    // The server saw the end of the body before it wrote the end of the
    // chunked stream that the client has now read.
    let green = handle.target_stats("green").unwrap();
    assert_eq!(green.in_flight, 0);
    assert_eq!((green.requests, green.responses.success), (1, 1));
    tokio::time::timeout(HANG_GUARD, drained)
        .await
        .expect("green not drained after its stream ended");

    let blue = handle.target_stats("blue").unwrap();
    assert_eq!((blue.requests, blue.in_flight), (2, 0));
}
