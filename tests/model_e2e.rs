#![cfg(feature = "json")]
//! End-to-end tests of `switchyard::model` over real loopback HTTP: two
//! stand-in model servers on `127.0.0.1:0` (axum answering JSON chat
//! completions, plain hyper streaming server-sent events), a `ModelRouter`
//! in front of them served by hyper, and a real HTTP client.
//!
//! The router's upstreams are small tower services that forward a request
//! to a model server with hyper-util's legacy client (written here; the
//! crate has no proxy yet).
//!
//! Timeouts only guard against a hang; no assertion is about speed.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use switchyard::body::RequestBody;
use switchyard::model::{Alias, Catalog, Model, ModelHandle, ModelRouter, VersionStats};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tower::Service;

const X_MODEL: HeaderName = HeaderName::from_static("x-switchyard-model");
/// Guards awaits that must complete, so a bug fails the test instead of
/// hanging it.
const HANG_GUARD: Duration = Duration::from_secs(10);
/// The pause between two events of the stream.
const EVENT_GAP: Duration = Duration::from_millis(40);

// === the model servers ===

/// What the JSON model server received: headers and raw body.
type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// An OpenAI-style chat completion server: answers with the model it was
/// asked for and a `usage` of 11 + 22 tokens.
async fn json_model_server(received: Received) -> SocketAddr {
    async fn complete(
        State(received): State<Received>,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::Json<Value> {
        let request: Value = serde_json::from_slice(&body).expect("the router sent bad JSON");
        received.lock().unwrap().push((headers, body));
        axum::Json(json!({
            "id": "chatcmpl-e2e",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": request["model"],
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there."},
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}
        }))
    }
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(complete))
        .with_state(received);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A response body fed from a channel; ends when the sender drops.
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
            .map(|c| c.map(|c| Ok(Frame::data(c))))
    }
}

/// The events the streaming server sends, in order: content chunks with
/// `"usage":null`, the usage event, `[DONE]`.
fn sse_events(model: &str) -> Vec<String> {
    let mut events: Vec<String> = ["Once", " upon", " a", " time"]
        .iter()
        .map(|word| {
            format!(
                "data: {}\n\n",
                json!({
                    "id": "chatcmpl-sse",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": null}],
                    "usage": null
                })
            )
        })
        .collect();
    events.push(format!(
        "data: {}\n\n",
        json!({
            "id": "chatcmpl-sse",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
        })
    ));
    events.push("data: [DONE]\n\n".to_owned());
    events
}

/// How the streaming server and the test meet: the server sends its last
/// two events only once `gate` is notified, and says when it did.
#[derive(Default)]
struct Stream {
    gate: Notify,
    last_sent: AtomicBool,
    asked_for: Mutex<Vec<String>>,
}

/// A server streaming `sse_events` with `EVENT_GAP` between events; the
/// usage event waits for `stream.gate`.
async fn sse_model_server(stream: Arc<Stream>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let stream = stream.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let stream = stream.clone();
                async move {
                    let body = req.into_body().collect().await?.to_bytes();
                    let request: Value = serde_json::from_slice(&body).expect("bad JSON");
                    let model = request["model"].as_str().unwrap_or_default().to_owned();
                    stream.asked_for.lock().unwrap().push(model.clone());
                    let (tx, rx) = mpsc::channel(1);
                    tokio::spawn(async move {
                        let events = sse_events(&model);
                        let usage_at = events.len() - 2;
                        for (i, event) in events.into_iter().enumerate() {
                            if i == usage_at {
                                // Not before the client has the first chunk.
                                let _ =
                                    tokio::time::timeout(HANG_GUARD, stream.gate.notified()).await;
                                stream.last_sent.store(true, Ordering::SeqCst);
                            } else if i > 0 {
                                tokio::time::sleep(EVENT_GAP).await;
                            }
                            if tx.send(Bytes::from(event)).await.is_err() {
                                return;
                            }
                        }
                    });
                    Ok::<_, hyper::Error>(
                        Response::builder()
                            .header(CONTENT_TYPE, "text/event-stream")
                            .header("cache-control", "no-cache")
                            .body(ChannelBody(rx))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

// === the router's upstream: forward over HTTP ===

/// Sends the router's request on to a model server.
#[derive(Clone)]
struct Forward {
    client: Client<HttpConnector, RequestBody<Incoming>>,
    authority: HeaderValue,
}

impl Forward {
    fn to(addr: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            authority: HeaderValue::from_str(&addr.to_string()).unwrap(),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Request<RequestBody<Incoming>>> for Forward {
    type Response = Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<RequestBody<Incoming>>) -> Self::Future {
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let authority = self.authority.to_str().unwrap().to_owned();
        *req.uri_mut() = format!("http://{authority}{path}").parse().unwrap();
        req.headers_mut().insert(HOST, self.authority.clone());
        let client = self.client.clone();
        Box::pin(async move { Ok(client.request(req).await?) })
    }
}

/// Serves the router on a fresh loopback port with hyper.
async fn serve_router(router: ModelRouter<Forward>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let svc = TowerToHyperService::new(router.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// Both model servers and the router in front of them: `small` (JSON
/// server, called `small-2024-07` there) and `streamer` (event stream
/// server), `chat` over them, all traffic on `small`.
struct Gateway {
    router: SocketAddr,
    handle: ModelHandle,
    received: Received,
    stream: Arc<Stream>,
}

async fn gateway(body_limit: usize) -> Gateway {
    let received = Received::default();
    let stream = Arc::new(Stream::default());
    let json_addr = json_model_server(received.clone()).await;
    let sse_addr = sse_model_server(stream.clone()).await;
    let router = ModelRouter::builder()
        .upstream("json-server", Forward::to(json_addr))
        .upstream("sse-server", Forward::to(sse_addr))
        .catalog(
            Catalog::new()
                .model(Model::new("small", "json-server").upstream_model("small-2024-07"))
                .model(Model::new("streamer", "sse-server"))
                .alias(Alias::new("chat", [("small", 100), ("streamer", 0)])),
        )
        .body_limit(body_limit)
        .seed(11)
        .build()
        .unwrap();
    let handle = router.handle();
    Gateway {
        router: serve_router(router).await,
        handle,
        received,
        stream,
    }
}

// === the client ===

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn request(addr: SocketAddr, method: Method, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap()
}

async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Response<Incoming> {
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
        .expect("body failed")
        .to_bytes();
    (parts.status, parts.headers, body)
}

/// Waits until `done` holds for a version's stats (the router's side of a
/// response ends a moment after the client has read it).
async fn stats_when(
    handle: &ModelHandle,
    model: &str,
    done: impl Fn(&VersionStats) -> bool,
) -> VersionStats {
    let wait = async {
        loop {
            let stats = handle.model_stats(model).unwrap();
            if done(&stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    match tokio::time::timeout(Duration::from_secs(2), wait).await {
        Ok(stats) => stats,
        Err(_) => handle.model_stats(model).unwrap(),
    }
}

// === tests ===

const ASK: &str = r#"{"model": "chat", "messages": [{"role": "user", "content": "caf\u00e9?"}], "temperature": 0.70, "stream": false}"#;

#[tokio::test]
async fn json_completion_through_the_gateway() {
    let gw = gateway(64 * 1024).await;
    let client = client();
    for round in 1..=3u64 {
        let res = send(
            &client,
            request(gw.router, Method::POST, "/v1/chat/completions", ASK),
        )
        .await;
        let (status, headers, body) = read(res).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[&X_MODEL], "small");
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        let completion: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(completion["model"], "small-2024-07");
        assert_eq!(completion["usage"]["total_tokens"], 33);

        let small = stats_when(&gw.handle, "small", |s| s.in_flight == 0).await;
        assert_eq!((small.requests, small.responses.success), (round, round));
        assert_eq!(small.in_flight, 0);
    }
    // The model server got the client's bytes with only the model renamed,
    // and a Content-Length that fits them.
    let expected = ASK.replacen(r#""chat""#, r#""small-2024-07""#, 1);
    let received = gw.received.lock().unwrap().clone();
    assert_eq!(received.len(), 3);
    for (headers, body) in received {
        assert_eq!(body, expected.as_bytes());
        assert_eq!(headers[CONTENT_LENGTH], expected.len().to_string().as_str());
    }
    let streamer = gw.handle.model_stats("streamer").unwrap();
    assert_eq!((streamer.requests, streamer.prompt_tokens), (0, 0));
}

#[tokio::test]
async fn json_completion_tokens_are_counted_through_the_gateway() {
    let gw = gateway(64 * 1024).await;
    let client = client();
    for round in 1..=3u64 {
        let res = send(
            &client,
            request(gw.router, Method::POST, "/v1/chat/completions", ASK),
        )
        .await;
        let (status, _, body) = read(res).await;
        assert_eq!(status, StatusCode::OK);
        let completion: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(completion["usage"]["prompt_tokens"], 11);

        let small = stats_when(&gw.handle, "small", |s| {
            s.in_flight == 0 && s.prompt_tokens == 11 * round
        })
        .await;
        assert_eq!(small.in_flight, 0);
        // Fails: (0, 0) — the client got every byte, usage included.
        assert_eq!(
            (small.prompt_tokens, small.completion_tokens),
            (11 * round, 22 * round),
            "tokens after {round} JSON responses"
        );
    }
}

#[tokio::test]
async fn sse_stream_through_the_gateway_arrives_chunk_by_chunk() {
    let gw = gateway(64 * 1024).await;
    gw.handle.promote("chat", "streamer").unwrap();
    let client = client();
    let ask = ASK.replace(
        r#""stream": false"#,
        r#""stream": true, "stream_options": {"include_usage": true}"#,
    );
    let res = send(
        &client,
        request(gw.router, Method::POST, "/v1/chat/completions", &ask),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[&X_MODEL], "streamer");
    assert_eq!(res.headers()[CONTENT_TYPE], "text/event-stream");

    let mut body = res.into_body();
    let mut frames: Vec<Bytes> = Vec::new();
    loop {
        let frame = tokio::time::timeout(HANG_GUARD, body.frame())
            .await
            .expect("the stream stalled: held back by the router?");
        let Some(frame) = frame else { break };
        let Ok(data) = frame.expect("stream failed").into_data() else {
            continue;
        };
        if frames.is_empty() {
            // The first chunk is here, and the server has not sent its
            // last ones: nothing waits for the end of the stream.
            assert!(
                !gw.stream.last_sent.load(Ordering::SeqCst),
                "the first chunk arrived after the last was sent"
            );
            gw.stream.gate.notify_one();
        }
        frames.push(data);
    }
    assert!(gw.stream.last_sent.load(Ordering::SeqCst));
    assert!(frames.len() >= 2, "the stream came in one piece");
    let got: Vec<u8> = frames.concat();
    assert_eq!(
        String::from_utf8(got).unwrap(),
        sse_events("streamer").concat(),
        "the stream changed on the way"
    );
    assert_eq!(*gw.stream.asked_for.lock().unwrap(), ["streamer"]);

    let streamer = stats_when(&gw.handle, "streamer", |s| s.in_flight == 0).await;
    assert_eq!(streamer.requests, 1);
    assert_eq!(streamer.responses.success, 1);
    assert_eq!((streamer.prompt_tokens, streamer.completion_tokens), (5, 9));
    let small = gw.handle.model_stats("small").unwrap();
    assert_eq!((small.requests, small.prompt_tokens), (0, 0));
}

#[tokio::test]
async fn mixed_traffic_splits_tokens_per_version() {
    let gw = gateway(64 * 1024).await;
    gw.handle
        .set_weights("chat", [("small", 1), ("streamer", 1)])
        .unwrap();
    // The stream's gate would hold the usage event: open it for good.
    let opener = {
        let stream = gw.stream.clone();
        tokio::spawn(async move {
            loop {
                stream.gate.notify_one();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let client = client();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let client = client.clone();
        let addr = gw.router;
        calls.spawn(async move {
            let res = send(
                &client,
                request(addr, Method::POST, "/v1/chat/completions", ASK),
            )
            .await;
            let (status, headers, _) = read(res).await;
            assert_eq!(status, StatusCode::OK);
            headers[&X_MODEL].to_str().unwrap().to_owned()
        });
    }
    let mut small = 0;
    let mut streamer = 0;
    while let Some(model) = calls.join_next().await {
        match model.unwrap().as_str() {
            "small" => small += 1,
            "streamer" => streamer += 1,
            other => panic!("served by {other}"),
        }
    }
    opener.abort();
    assert!(
        small > 0 && streamer > 0,
        "{small} on small, {streamer} on streamer"
    );
    // (The JSON version's tokens: see
    // `json_completion_tokens_are_counted_through_the_gateway`.)
    let s = stats_when(&gw.handle, "small", |s| s.in_flight == 0).await;
    assert_eq!(
        (s.requests, s.in_flight, s.responses.success),
        (small, 0, small)
    );
    let s = stats_when(&gw.handle, "streamer", |s| s.in_flight == 0).await;
    assert_eq!(
        (s.requests, s.prompt_tokens, s.completion_tokens),
        (streamer, 5 * streamer, 9 * streamer)
    );
}

#[tokio::test]
async fn models_list_and_errors_over_http() {
    let gw = gateway(1024).await;
    let client = client();

    let res = send(&client, request(gw.router, Method::GET, "/v1/models", "")).await;
    let (status, _, body) = read(res).await;
    assert_eq!(status, StatusCode::OK);
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat", "small", "streamer"]);
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["object"] == "model")
    );

    let big = format!(r#"{{"model":"chat","pad":"{}"}}"#, "x".repeat(4096));
    for (body, status, code) in [
        (
            r#"{"model":"gpt-9"}"#,
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            r#"{"messages":[]}"#,
            StatusCode::BAD_REQUEST,
            "missing_model",
        ),
        (
            r#"{"model":"chat""#,
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            big.as_str(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
        ),
    ] {
        // A fresh client: the router may close a connection whose body it
        // did not read.
        let res = send(
            &self::client(),
            request(gw.router, Method::POST, "/v1/chat/completions", body),
        )
        .await;
        let (got, headers, body) = read(res).await;
        assert_eq!(got, status, "{code}");
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        let err: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(err["error"]["code"], code);
        assert!(err["error"]["message"].is_string());
        assert!(err["error"].get("param").is_some() && err["error"].get("type").is_some());
    }
    assert!(gw.received.lock().unwrap().is_empty());
    assert!(gw.stream.asked_for.lock().unwrap().is_empty());
}
