#![cfg(all(feature = "transform", feature = "json"))]
//! End-to-end tests of `switchyard::transform` over real loopback HTTP:
//! axum apps served by `axum::serve` on `127.0.0.1:0` with the layer
//! applied through `Router::layer`, a gateway that forwards the rewritten
//! request with a hyper client, real HTTP clients, and raw TCP where the
//! bytes on the wire are the point.
//!
//! Timeouts here only guard against a hang; no assertion is about speed.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use switchyard::transform::{NonJson, RuleSet, Rules, TransformLayer, When};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::service_fn;

/// Guards awaits that must complete, so a bug fails the test instead of
/// hanging it.
const HANG_GUARD: Duration = Duration::from_secs(10);

// === helpers ===

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ClientBody = BoxBody<Bytes, BoxError>;
type HttpClient = Client<HttpConnector, ClientBody>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn full(data: impl Into<Bytes>) -> ClientBody {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// A body the client sends chunked: no length known in advance.
fn chunked<S: AsRef<str>>(parts: &[S]) -> ClientBody {
    Chunks(
        parts
            .iter()
            .map(|p| Bytes::copy_from_slice(p.as_ref().as_bytes()))
            .collect(),
    )
    .boxed()
}

/// Data frames, one per chunk, with no size hint.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// A response body fed chunk by chunk from a channel; it ends when the
/// sender is dropped.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

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

/// A complete response.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

async fn send(client: &HttpClient, req: Request<ClientBody>) -> Reply {
    let res = tokio::time::timeout(HANG_GUARD, client.request(req))
        .await
        .expect("request hung")
        .expect("request failed");
    let (parts, body) = res.into_parts();
    let body = tokio::time::timeout(HANG_GUARD, body.collect())
        .await
        .expect("response body hung")
        .unwrap()
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Serves an axum app on a fresh loopback port.
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Answers what the handler saw: method, URI, headers, body.
async fn echo(req: axum::extract::Request) -> axum::Json<Value> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| Value::from(v.to_str().unwrap()))
            .collect();
        headers.insert(name.as_str().to_owned(), Value::Array(values));
    }
    axum::Json(json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body": String::from_utf8(body.to_vec()).unwrap(),
    }))
}

/// One raw HTTP/1.1 exchange: writes `request` (which should ask to close
/// the connection) and returns the response head and body bytes as sent.
async fn raw_exchange(addr: SocketAddr, request: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(HANG_GUARD, stream.read_to_end(&mut bytes))
        .await
        .expect("the server did not close the connection")
        .unwrap();
    split_head(&bytes)
}

fn split_head(bytes: &[u8]) -> (String, Vec<u8>) {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    (
        String::from_utf8(bytes[..end].to_vec())
            .unwrap()
            .to_ascii_lowercase(),
        bytes[end + 4..].to_vec(),
    )
}

/// The value of a header in a raw, lower-cased head.
fn raw_header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        (n.trim() == name).then(|| v.trim())
    })
}

// === Router::layer: header, path and JSON body rewrites ===

fn api_rules() -> Rules {
    Rules::new().set(
        RuleSet::named("api v2")
            .when(When::path_prefix("/api"))
            .request(|r| {
                r.headers
                    .remove("x-debug")
                    .rename("x-user", "x-forwarded-user")
                    .add("x-user-id", "{path.id}")
                    .add("x-request-id", "{uuid}");
                r.path
                    .strip_prefix("/api")
                    .regex("^/users/(?<id>\\d+)$", "/v2/users/${id}");
                r.query.rename("q", "search");
                r.body
                    .remove("/password")
                    .rename("/name", "/display_name")
                    .set("/user_id", "{path.id}")
                    .set("/meta/via", "switchyard");
            })
            .response(|r| {
                r.headers.add("x-request-id", "{header.x-request-id}");
            }),
    )
}

#[tokio::test]
async fn router_layer_rewrites_headers_path_and_json_body() {
    let app = Router::new()
        .route("/api/users/{id}", post(echo))
        .layer(TransformLayer::new(api_rules()).unwrap());
    let addr = serve(app).await;
    let client = client();

    let body = r#"{"name":"Ada","password":"hunter2","age":36}"#;
    // A renamed field moves to the end, as a newly set one does.
    let expected = r#"{"age":36,"display_name":"Ada","user_id":"42","meta":{"via":"switchyard"}}"#;
    for (framing, request_body) in [
        ("content-length", full(body)),
        (
            "chunked",
            chunked(&[
                r#"{"name":"Ada","#,
                r#""password":"hunter2","#,
                r#""age":36}"#,
            ]),
        ),
    ] {
        let req = Request::post(format!("http://{addr}/api/users/42?q=blue&page=2"))
            .header(CONTENT_TYPE, "application/json")
            .header("x-debug", "1")
            .header("x-user", "ada")
            .body(request_body)
            .unwrap();
        let reply = send(&client, req).await;
        assert_eq!(reply.status, StatusCode::OK, "{framing}: {reply:?}");
        let seen = reply.json();
        assert_eq!(seen["method"], "POST");
        assert_eq!(seen["uri"], "/v2/users/42?search=blue&page=2", "{framing}");
        let headers = &seen["headers"];
        assert!(headers.get("x-debug").is_none(), "{framing}");
        assert!(headers.get("x-user").is_none());
        assert_eq!(headers["x-forwarded-user"], json!(["ada"]));
        assert_eq!(headers["x-user-id"], json!(["42"]));
        assert_eq!(seen["body"], expected, "{framing}");
        // The handler read exactly Content-Length bytes, and no chunking
        // is announced any more.
        assert_eq!(
            headers["content-length"],
            json!([expected.len().to_string()]),
            "{framing}"
        );
        assert!(headers.get("transfer-encoding").is_none(), "{framing}");
        // The response carries the request id the handler saw.
        assert_eq!(
            Some(headers["x-request-id"][0].as_str().unwrap()),
            reply.header("x-request-id")
        );
    }
}

#[tokio::test]
async fn transform_in_front_of_a_router_rewrites_the_path_before_routing() {
    let app = Router::new().route(
        "/v2/users/{id}",
        get(|Path(id): Path<u32>| async move { format!("user {id}") }),
    );
    let gateway = Router::new().fallback_service(tower::Layer::layer(
        &TransformLayer::new(api_rules()).unwrap(),
        app,
    ));
    let addr = serve(gateway).await;
    let client = client();
    let reply = send(
        &client,
        Request::get(format!("http://{addr}/api/users/7"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "user 7");
    // Outside the set's prefix nothing is rewritten: 404 from the app.
    let reply = send(
        &client,
        Request::get(format!("http://{addr}/users/7"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn refusals_reach_the_client_as_problem_documents() {
    let rules = |non_json| {
        Rules::new()
            .body_limit(64)
            .non_json(non_json)
            .set(RuleSet::new().request(|r| {
                r.body.set("/a", 1);
            }))
    };
    let client = client();
    let addr = serve(
        Router::new()
            .route("/", post(echo))
            .layer(TransformLayer::new(rules(NonJson::Reject)).unwrap()),
    )
    .await;
    let post = |ct: &'static str, body: ClientBody| {
        Request::post(format!("http://{addr}/"))
            .header(CONTENT_TYPE, ct)
            .body(body)
            .unwrap()
    };
    for (req, status) in [
        (
            post("application/json", full("{nope")),
            StatusCode::BAD_REQUEST,
        ),
        (
            post("application/json", full("x".repeat(65))),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            post(
                "application/json",
                chunked(&["[\"".to_owned(), "0123456789".repeat(8), "\"]".to_owned()]),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            post("text/plain", full("hello")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ] {
        let reply = send(&client, req).await;
        assert_eq!(reply.status, status, "{reply:?}");
        assert_eq!(
            reply.header("content-type"),
            Some("application/problem+json")
        );
        assert_eq!(reply.json()["status"], status.as_u16());
    }
    let reply = send(&client, post("application/json", full("{}"))).await;
    assert_eq!(reply.json()["body"], r#"{"a":1}"#);
}

// === a gateway: the rewritten request on the wire ===

/// A raw HTTP/1.1 upstream: hands the test each request's head and body,
/// exactly as they arrived (a body is read by its Content-Length; without
/// one, up to the end of a chunked body), and answers `ok`.
async fn raw_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = stream.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    bytes.extend_from_slice(&buf[..n]);
                    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let (head, body) = split_head(&bytes);
                    let done = match raw_header(&head, "content-length") {
                        Some(len) => body.len() >= len.parse::<usize>().unwrap(),
                        None if raw_header(&head, "transfer-encoding").is_some() => {
                            body.ends_with(b"0\r\n\r\n")
                        }
                        None => true,
                    };
                    if done {
                        let _ = end;
                        tx.send((head, body)).unwrap();
                        break;
                    }
                }
                stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await
                    .unwrap();
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn gateway_forwards_the_rewritten_body_with_its_content_length_on_the_wire() {
    let (upstream, mut arrived) = raw_upstream().await;
    // Behind `Router::layer` the proxy gets the transform's `RequestBody`
    // wrapped in axum's body.
    let forward: Client<HttpConnector, axum::body::Body> =
        Client::builder(TokioExecutor::new()).build_http();
    let proxy = service_fn(move |mut req: Request<axum::body::Body>| {
        let forward = forward.clone();
        async move {
            let pq = req.uri().path_and_query().unwrap().as_str().to_owned();
            *req.uri_mut() = format!("http://{upstream}{pq}").parse().unwrap();
            let res = match forward.request(req).await {
                Ok(res) => res.map(axum::body::Body::new),
                Err(e) => Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(axum::body::Body::from(e.to_string()))
                    .unwrap(),
            };
            Ok::<_, Infallible>(res)
        }
    });
    let rules = Rules::new().set(RuleSet::new().request(|r| {
        r.host("upstream.internal");
        r.path.add_prefix("/internal");
        r.body.set("/via", "gateway").remove("/secret");
    }));
    let gateway = Router::new()
        .fallback_service(proxy)
        .layer(TransformLayer::new(rules).unwrap());
    let addr = serve(gateway).await;
    let client = client();

    let req = Request::post(format!("http://{addr}/orders?x=1"))
        .header(CONTENT_TYPE, "application/json")
        .body(chunked(&[
            r#"{"item":"tea","#,
            r#""secret":"s3","#,
            r#""qty":2}"#,
        ]))
        .unwrap();
    let reply = send(&client, req).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body, "ok");

    let (head, body) = tokio::time::timeout(HANG_GUARD, arrived.recv())
        .await
        .unwrap()
        .unwrap();
    let expected = r#"{"item":"tea","qty":2,"via":"gateway"}"#;
    assert!(
        head.starts_with("post /internal/orders?x=1 http/1.1"),
        "{head}"
    );
    assert_eq!(raw_header(&head, "host"), Some("upstream.internal"));
    assert_eq!(
        raw_header(&head, "content-length"),
        Some(expected.len().to_string().as_str()),
        "{head}"
    );
    assert_eq!(raw_header(&head, "transfer-encoding"), None, "{head}");
    assert_eq!(body, expected.as_bytes());
}

// === responses on the wire ===

#[tokio::test]
async fn response_json_body_is_rewritten_with_its_content_length_on_the_wire() {
    let rules = Rules::new().set(RuleSet::new().response(|r| {
        r.body.set("/served_by", "switchyard").remove("/internal");
        r.headers.append("via", "switchyard");
    }));
    let app = Router::new()
        .route(
            "/fixed",
            get(|| async { axum::Json(json!({"id": 1, "internal": "x"})) }),
        )
        .route(
            "/chunked",
            get(|| async {
                // A JSON body of unknown length: hyper would send it chunked.
                let (tx, rx) = mpsc::unbounded_channel();
                for part in [r#"{"id":"#, "2,", r#""internal":"y"}"#] {
                    tx.send(Bytes::from_static(part.as_bytes())).unwrap();
                }
                Response::builder()
                    .header(CONTENT_TYPE, "application/json")
                    .body(axum::body::Body::new(ChannelBody(rx)))
                    .unwrap()
            }),
        )
        .layer(TransformLayer::new(rules).unwrap());
    let addr = serve(app).await;

    for (path, expected) in [
        ("/fixed", r#"{"id":1,"served_by":"switchyard"}"#),
        ("/chunked", r#"{"id":2,"served_by":"switchyard"}"#),
    ] {
        let (head, body) = raw_exchange(
            addr,
            &format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(
            raw_header(&head, "content-length"),
            Some(expected.len().to_string().as_str()),
            "{path}: {head}"
        );
        assert_eq!(raw_header(&head, "transfer-encoding"), None, "{path}");
        assert_eq!(raw_header(&head, "via"), Some("switchyard"));
        assert_eq!(String::from_utf8(body).unwrap(), expected, "{path}");
    }
}

/// The test's end of an SSE-like stream: the handler takes the receiver.
type Feed = Arc<Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>>;

async fn events(State(feed): State<Feed>) -> Response<axum::body::Body> {
    let rx = feed.lock().unwrap().take().expect("one stream per test");
    Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .header("cache-control", "no-cache")
        .body(axum::body::Body::new(ChannelBody(rx)))
        .unwrap()
}

#[tokio::test]
async fn streaming_response_passes_chunk_by_chunk() {
    for rules in [
        // Response header rules only.
        Rules::new().set(RuleSet::new().response(|r| {
            r.headers.add("x-gateway", "switchyard");
        })),
        // Body rules too: the stream is not JSON, so they do not apply.
        Rules::new().set(RuleSet::new().response(|r| {
            r.headers.add("x-gateway", "switchyard");
            r.body.set("/never", true);
        })),
    ] {
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let feed: Feed = Arc::new(Mutex::new(Some(rx)));
        let app = Router::new()
            .route("/events", get(events))
            .with_state(feed)
            .layer(TransformLayer::new(rules).unwrap());
        let addr = serve(app).await;
        let client = client();

        let res = tokio::time::timeout(
            HANG_GUARD,
            client.request(
                Request::builder()
                    .method(Method::GET)
                    .uri(format!("http://{addr}/events"))
                    .body(full(""))
                    .unwrap(),
            ),
        )
        .await
        .expect("the response head did not arrive before the stream ended")
        .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["x-gateway"], "switchyard");
        assert_eq!(res.headers()[CONTENT_TYPE], "text/event-stream");
        assert!(!res.headers().contains_key(CONTENT_LENGTH));
        assert_eq!(res.headers()[TRANSFER_ENCODING], "chunked");
        let mut body = res.into_body();
        for i in 0..3 {
            // Each event reaches the client before the next is written.
            let event = format!("data: {i}\n\n");
            tx.send(Bytes::from(event.clone())).unwrap();
            let mut got = Vec::new();
            while got.len() < event.len() {
                let frame = tokio::time::timeout(HANG_GUARD, body.frame())
                    .await
                    .expect("the event did not arrive")
                    .expect("the stream ended early")
                    .unwrap();
                if let Ok(data) = frame.into_data() {
                    got.extend_from_slice(&data);
                }
            }
            assert_eq!(String::from_utf8(got).unwrap(), event);
        }
        drop(tx);
        let end = tokio::time::timeout(HANG_GUARD, body.frame())
            .await
            .expect("the stream did not end");
        assert!(end.is_none(), "{end:?}");
    }
}
