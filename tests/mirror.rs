#![cfg(feature = "mirror")]
//! Integration tests of `switchyard::mirror`: a `MirrorLayer` over an
//! in-process primary, copying to an in-process shadow (`service_fn`s that
//! record what they receive).
//!
//! Tests run on tokio's paused clock: shadow calls are spawned tasks, and a
//! short virtual sleep lets every one of them run as far as it can. No
//! assertion is about real speed; "does not slow the primary" is checked as
//! "the primary's future is ready at its first poll, with no time passing".

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use switchyard::body::RequestBody;
use switchyard::mirror::{MIRROR_HEADER, MirrorLayer, MirrorStats};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The client's body (and the test responses' body).
type Bx = BoxBody<Bytes, Infallible>;
type PrimaryReq = Request<RequestBody<Bx>>;
type ShadowReq = Request<Full<Bytes>>;

const X_VERSION: HeaderName = HeaderName::from_static("x-version");
const X_CASE: HeaderName = HeaderName::from_static("x-case");

// === bodies ===

fn full(data: impl Into<Bytes>) -> Bx {
    Full::new(data.into()).boxed()
}

/// Ready frames with no size hint: a chunked upload.
struct Frames(VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

fn chunked(data: &[u8], size: usize) -> Bx {
    Frames(data.chunks(size).map(Bytes::copy_from_slice).collect()).boxed()
}

/// Frames that arrive over time, from a channel; ends when the sender
/// drops.
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
            .map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// A body of `chunks` chunks of `size` bytes, one every 10 ms.
fn trickle(chunks: usize, size: usize) -> (Bx, Vec<u8>) {
    let data: Vec<u8> = (0..chunks * size).map(|i| (i % 251) as u8).collect();
    let (tx, rx) = mpsc::channel(1);
    let parts: Vec<Bytes> = data.chunks(size).map(Bytes::copy_from_slice).collect();
    tokio::spawn(async move {
        for part in parts {
            tokio::time::sleep(Duration::from_millis(10)).await;
            tx.send(part).await.unwrap();
        }
    });
    (ChannelBody(rx).boxed(), data)
}

// === services ===

/// What a service received.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn seen(log: &Log) -> Vec<Seen> {
    log.lock().unwrap().clone()
}

async fn record<B>(log: &Log, req: Request<B>) -> Seen
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = req.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let seen = Seen {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    };
    log.lock().unwrap().push(seen.clone());
    seen
}

/// The primary: records the request, answers 200 with the body it got.
fn primary(
    log: &Log,
) -> impl Service<PrimaryReq, Response = Response<Bx>, Error = Infallible, Future: Send> + Clone {
    let log = log.clone();
    service_fn(move |req: PrimaryReq| {
        let log = log.clone();
        async move {
            let seen = record(&log, req).await;
            let res = Response::builder()
                .header(X_VERSION, "primary")
                .body(full(seen.body))
                .unwrap();
            Ok::<_, Infallible>(res)
        }
    })
}

/// The shadow: records the request, answers `status` with its own body.
fn shadow(
    log: &Log,
    status: StatusCode,
) -> impl Service<ShadowReq, Response = Response<Bx>, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    let log = log.clone();
    service_fn(move |req: ShadowReq| {
        let log = log.clone();
        async move {
            record(&log, req).await;
            let res = Response::builder()
                .status(status)
                .header(X_VERSION, "shadow")
                .body(full("from the shadow"))
                .unwrap();
            Ok::<_, Infallible>(res)
        }
    })
}

fn request(method: Method, uri: &str, body: Bx) -> Request<Bx> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .unwrap()
}

fn get(uri: &str) -> Request<Bx> {
    request(Method::GET, uri, full(Bytes::new()))
}

/// Sends one request; the status, headers and whole body the client got.
async fn send<S, B>(svc: &S, req: Request<Bx>) -> (StatusCode, HeaderMap, Bytes)
where
    S: Service<Request<Bx>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let res = svc.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// Lets every spawned shadow call run as far as it can.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// Polls once with a no-op waker.
fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>) -> Poll<F::Output> {
    fut.poll(&mut Context::from_waker(Waker::noop()))
}

fn methods(log: &Log) -> Vec<Method> {
    seen(log).into_iter().map(|s| s.method).collect()
}

// === 1. the client sees the primary only ===

#[tokio::test(start_paused = true)]
async fn client_sees_only_the_primary_and_the_shadow_gets_a_marked_copy() {
    let (plog, slog) = (Log::default(), Log::default());
    // `PUT` is mirrored when asked for (issue 16: safe methods only by
    // default).
    let layer = MirrorLayer::builder(shadow(&slog, StatusCode::INTERNAL_SERVER_ERROR))
        .methods([Method::GET, Method::PUT])
        .build();
    let stats = layer.handle();
    let svc = layer.layer(primary(&plog));

    let req = Request::builder()
        .method(Method::PUT)
        .uri("/items/7?color=blue")
        .header("x-request-id", "abc-123")
        .header(CONTENT_TYPE, "text/plain")
        .header(CONTENT_LENGTH, "12")
        .body(full("hello shadow"))
        .unwrap();
    let (status, headers, body) = send(&svc, req).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the shadow's 500 never reaches the client"
    );
    assert_eq!(headers[X_VERSION], "primary");
    assert_eq!(body, "hello shadow");
    settle().await;

    let p = seen(&plog);
    assert_eq!(p.len(), 1);
    assert!(
        p[0].headers.get(MIRROR_HEADER).is_none(),
        "{:?}",
        p[0].headers
    );
    assert_eq!(p[0].body, "hello shadow");
    let s = seen(&slog);
    assert_eq!(s.len(), 1);
    assert_eq!(MIRROR_HEADER.as_str(), "x-switchyard-mirror");
    assert_eq!(s[0].headers[MIRROR_HEADER], "1");
    assert_eq!(s[0].method, Method::PUT);
    assert_eq!(s[0].uri, p[0].uri);
    assert_eq!(s[0].uri, "/items/7?color=blue");
    assert_eq!(s[0].headers["x-request-id"], "abc-123");
    assert_eq!(s[0].headers[CONTENT_TYPE], "text/plain");
    assert_eq!(s[0].body, "hello shadow");

    // A request without a body.
    let (status, _, body) = send(&svc, get("/health")).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, &b""[..]));
    settle().await;
    let s = seen(&slog);
    assert_eq!(s.len(), 2);
    assert_eq!(
        (s[1].method.clone(), s[1].uri.path()),
        (Method::GET, "/health")
    );
    assert!(s[1].body.is_empty());
    assert_eq!(s[1].headers[MIRROR_HEADER], "1");

    let st = stats.stats();
    assert_eq!(st.mirrored, 2);
    assert_eq!(st.compared, 2);
    assert_eq!(st.status_mismatches, 2);
    assert_eq!(st.status_matches, 0);
    assert_eq!(
        (st.body_matches, st.body_mismatches),
        (0, 0),
        "compare_json is off"
    );
    assert_eq!(
        st.dropped + st.not_sampled + st.skipped_method + st.too_large,
        0
    );
}

#[tokio::test(start_paused = true)]
async fn failing_shadow_or_primary_is_counted() {
    let plog = Log::default();
    let broken = service_fn(|_req: ShadowReq| async {
        Err::<Response<Bx>, BoxError>("the shadow is down".into())
    });
    let layer = MirrorLayer::builder(broken).build();
    let stats = layer.handle();
    let svc = layer.layer(primary(&plog));
    let (status, _, body) = send(&svc, get("/a")).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, &b""[..]));
    settle().await;
    let st = stats.stats();
    assert_eq!((st.mirrored, st.shadow_errors, st.compared), (1, 1, 0));

    // A primary that fails: the client gets its error; the pair is not
    // compared.
    let slog = Log::default();
    let layer = MirrorLayer::builder(shadow(&slog, StatusCode::OK)).build();
    let stats = layer.handle();
    let failing = service_fn(|_req: PrimaryReq| async {
        Err::<Response<Bx>, BoxError>("primary down".into())
    });
    let err = layer.layer(failing).oneshot(get("/b")).await.unwrap_err();
    assert_eq!(err.to_string(), "primary down");
    settle().await;
    let st = stats.stats();
    assert_eq!((st.mirrored, st.primary_errors, st.compared), (1, 1, 0));
    assert_eq!(seen(&slog).len(), 1);
}

// === 2. a shadow that hangs ===

#[tokio::test(start_paused = true)]
async fn hanging_shadow_never_slows_the_primary() {
    let plog = Log::default();
    let hanging =
        service_fn(|_req: ShadowReq| std::future::pending::<Result<Response<Bx>, Infallible>>());
    let layer = MirrorLayer::builder(hanging)
        .methods([Method::GET, Method::PUT])
        .max_concurrent(2)
        .shadow_timeout(Duration::from_secs(5))
        .build();
    let stats = layer.handle();
    let mut svc = layer.layer(primary(&plog));

    let before = Instant::now();
    for i in 0..20 {
        let req = if i % 2 == 0 {
            get(&format!("/r/{i}"))
        } else {
            request(Method::PUT, &format!("/r/{i}"), full(format!("body {i}")))
        };
        let ready = svc.ready().await.unwrap();
        let mut fut = Box::pin(ready.call(req));
        let Poll::Ready(res) = poll_once(fut.as_mut()) else {
            panic!("request {i}: the primary waited");
        };
        let res = res.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let want = if i % 2 == 0 {
            String::new()
        } else {
            format!("body {i}")
        };
        assert_eq!(body, want);
    }
    assert_eq!(Instant::now(), before, "no time passed");
    assert_eq!(seen(&plog).len(), 20);
    let st = stats.stats();
    assert_eq!((st.mirrored, st.dropped), (2, 18), "{st:?}");

    // Still hanging: more copies are dropped.
    settle().await;
    send(&svc, get("/more")).await;
    let st = stats.stats();
    assert_eq!((st.mirrored, st.dropped, st.shadow_timeouts), (2, 19, 0));

    // The timeout frees the permits.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let st = stats.stats();
    assert_eq!(st.shadow_timeouts, 2, "{st:?}");
    send(&svc, get("/again/1")).await;
    send(&svc, get("/again/2")).await;
    send(&svc, get("/again/3")).await;
    let st = stats.stats();
    assert_eq!((st.mirrored, st.dropped), (4, 20), "{st:?}");
    assert_eq!(st.compared, 0);
}

// === 3. methods ===

const ALL_METHODS: [Method; 8] = [
    Method::GET,
    Method::HEAD,
    Method::OPTIONS,
    Method::TRACE,
    Method::PUT,
    Method::DELETE,
    Method::POST,
    Method::PATCH,
];

/// Sends one request of every method through `layer`; the stats, and the
/// methods and requests the shadow got.
async fn every_method<M>(layer: MirrorLayer<M>, slog: &Log) -> (MirrorStats, Vec<Method>, Vec<Seen>)
where
    M: Service<ShadowReq, Response = Response<Bx>, Error = Infallible> + Clone + Send + 'static,
    M::Future: Send + 'static,
{
    let plog = Log::default();
    let stats = layer.handle();
    let svc = layer.layer(primary(&plog));
    for m in ALL_METHODS {
        let (status, _, body) = send(&svc, request(m.clone(), "/x", full("payload"))).await;
        assert_eq!(
            (status, body.as_ref()),
            (StatusCode::OK, &b"payload"[..]),
            "{m}"
        );
    }
    settle().await;
    assert_eq!(
        methods(&plog),
        ALL_METHODS.to_vec(),
        "the primary gets everything"
    );
    (stats.stats(), methods(slog), seen(slog))
}

#[tokio::test(start_paused = true)]
async fn only_safe_methods_are_mirrored_by_default() {
    let all = ALL_METHODS;
    let slog = Log::default();
    let layer = MirrorLayer::builder(shadow(&slog, StatusCode::OK)).build();
    let (st, got, _) = every_method(layer, &slog).await;
    // Issue 16: `GET`, `HEAD`, `OPTIONS`; not `TRACE`, nor `PUT` and
    // `DELETE` (idempotent, but a shadow sharing a database applies them).
    assert_eq!(got, all[..3].to_vec());
    assert_eq!((st.mirrored, st.skipped_method), (3, 5));

    let slog = Log::default();
    let layer = MirrorLayer::builder(shadow(&slog, StatusCode::OK))
        .all_methods()
        .build();
    let (st, got, copies) = every_method(layer, &slog).await;
    assert_eq!(got, all.to_vec());
    assert_eq!((st.mirrored, st.skipped_method), (8, 0));
    assert!(copies.iter().all(|s| s.body == "payload"));

    let slog = Log::default();
    let layer = MirrorLayer::builder(shadow(&slog, StatusCode::OK))
        .methods([Method::POST])
        .build();
    let (st, got, _) = every_method(layer, &slog).await;
    assert_eq!(got, vec![Method::POST]);
    assert_eq!((st.mirrored, st.skipped_method), (1, 7));
}

// === 4. sampling ===

async fn sample(percent: f64, seed: u64, n: u64) -> MirrorStats {
    let (plog, slog) = (Log::default(), Log::default());
    let layer = MirrorLayer::builder(shadow(&slog, StatusCode::OK))
        .percent(percent)
        .seed(seed)
        .max_concurrent(100_000)
        .build();
    let stats = layer.handle();
    let svc = layer.layer(primary(&plog));
    for i in 0..n {
        send(&svc, get(&format!("/{i}"))).await;
    }
    settle().await;
    assert_eq!(seen(&plog).len() as u64, n);
    let st = stats.stats();
    assert_eq!(seen(&slog).len() as u64, st.mirrored);
    assert_eq!(st.mirrored + st.not_sampled, n, "{st:?}");
    assert_eq!(st.dropped, 0);
    st
}

#[tokio::test(start_paused = true)]
async fn percent_sampling_mirrors_about_its_share() {
    const N: u64 = 4000;
    for percent in [25.0, 2.5, 90.0] {
        let st = sample(percent, 99, N).await;
        let p = percent / 100.0;
        let mean = N as f64 * p;
        let sigma = (N as f64 * p * (1.0 - p)).sqrt();
        assert!(
            (st.mirrored as f64 - mean).abs() <= 5.0 * sigma,
            "{percent}%: {} of {N} mirrored, expected {mean} ± {:.0}",
            st.mirrored,
            5.0 * sigma
        );
        // Seeded: the same share again.
        assert_eq!(sample(percent, 99, N).await.mirrored, st.mirrored);
    }
    assert_ne!(
        sample(25.0, 1, N).await.mirrored,
        sample(25.0, 2, N).await.mirrored,
        "another seed, another draw"
    );

    let none = sample(0.0, 5, 500).await;
    assert_eq!((none.mirrored, none.not_sampled), (0, 500));
    let all = sample(100.0, 5, 500).await;
    assert_eq!((all.mirrored, all.not_sampled), (500, 0));
    // Out of range is clamped; NaN mirrors nothing.
    assert_eq!(sample(250.0, 5, 50).await.mirrored, 50);
    assert_eq!(sample(-3.0, 5, 50).await.mirrored, 0);
    assert_eq!(sample(f64::NAN, 5, 50).await.mirrored, 0);
}

// === 5. body limit ===

#[tokio::test(start_paused = true)]
async fn bodies_over_the_limit_are_not_mirrored_and_reach_the_primary_whole() {
    let (plog, slog) = (Log::default(), Log::default());
    let layer = MirrorLayer::builder(shadow(&slog, StatusCode::OK))
        .methods([Method::PUT])
        .body_limit(16)
        .build();
    let stats = layer.handle();
    let svc = layer.layer(primary(&plog));
    let big: Vec<u8> = (0..100u8).collect();

    // Declared too large.
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/declared")
        .header(CONTENT_LENGTH, "100")
        .body(full(big.clone()))
        .unwrap();
    let (_, _, body) = send(&svc, req).await;
    assert_eq!(body, big);
    // Known too large from the body's size hint.
    let (_, _, body) = send(&svc, request(Method::PUT, "/hinted", full(big.clone()))).await;
    assert_eq!(body, big);
    // Streamed in chunks, no length: found out while reading.
    let (_, _, body) = send(&svc, request(Method::PUT, "/chunked", chunked(&big, 10))).await;
    assert_eq!(body, big);
    // Streamed over time.
    let (trickled, data) = trickle(12, 8);
    let (_, _, body) = send(&svc, request(Method::PUT, "/trickled", trickled)).await;
    assert_eq!(body, data);
    settle().await;

    let st = stats.stats();
    assert_eq!((st.too_large, st.mirrored), (4, 0), "{st:?}");
    assert!(seen(&slog).is_empty());
    let p = seen(&plog);
    assert_eq!(p.len(), 4);
    assert_eq!(p[2].body, big, "every byte, in order");
    assert_eq!(p[3].body, data);

    // Within the limit (up to it exactly), streamed or not: mirrored whole.
    let small: Vec<u8> = (0..16u8).collect();
    let (_, _, body) = send(&svc, request(Method::PUT, "/c", chunked(&small, 5))).await;
    assert_eq!(body, small);
    let (trickled, data) = trickle(2, 8);
    let (_, _, body) = send(&svc, request(Method::PUT, "/t", trickled)).await;
    assert_eq!(body, data);
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/f")
        .header(CONTENT_LENGTH, "16")
        .body(full(small.clone()))
        .unwrap();
    send(&svc, req).await;
    settle().await;
    let st = stats.stats();
    assert_eq!((st.too_large, st.mirrored), (4, 3), "{st:?}");
    let s = seen(&slog);
    assert_eq!(s[0].body, small);
    assert_eq!(s[1].body, data);
    assert_eq!(s[2].body, small);
}

// === 6. comparison ===

const PRIMARY_JSON: [&str; 3] = [r#"{"a":1,"#, r#""b":[true,null],"#, r#""c":{"d":"x"}}"#];

/// The primary for comparisons: the same JSON for everyone, in 3 frames.
fn json_primary()
-> impl Service<PrimaryReq, Response = Response<Bx>, Error = Infallible, Future: Send> + Clone {
    service_fn(|_req: PrimaryReq| async {
        let frames = PRIMARY_JSON
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()));
        let res = Response::builder()
            .header(CONTENT_TYPE, "application/json; charset=utf-8")
            .body(Frames(frames.collect()).boxed())
            .unwrap();
        Ok::<_, Infallible>(res)
    })
}

/// The shadow for comparisons: answers as the `x-case` header says.
fn json_shadow()
-> impl Service<ShadowReq, Response = Response<Bx>, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    service_fn(|req: ShadowReq| async move {
        let case = req.headers()[X_CASE].to_str().unwrap().to_owned();
        let (status, ct, body) = match case.as_str() {
            // Same JSON, other key order and spacing.
            "same" => (
                200,
                "application/json",
                r#"{ "c": {"d": "x"},  "b": [ true, null ], "a": 1 }"#,
            ),
            "created" => (
                201,
                "application/vnd.api+json",
                r#"{"b":[true,null],"a":1,"c":{"d":"x"}}"#,
            ),
            "different" => (
                200,
                "application/json",
                r#"{"a":2,"b":[true,null],"c":{"d":"x"}}"#,
            ),
            "down" => (503, "text/plain", "unavailable"),
            other => panic!("unknown case {other}"),
        };
        let res = Response::builder()
            .status(status)
            .header(CONTENT_TYPE, ct)
            .body(full(body))
            .unwrap();
        Ok::<_, Infallible>(res)
    })
}

async fn compare(compare_json: bool) -> MirrorStats {
    let layer = MirrorLayer::builder(json_shadow())
        .compare_json(compare_json)
        .build();
    let stats = layer.handle();
    let svc = layer.layer(json_primary());
    for case in ["same", "created", "different", "down"] {
        let req = Request::builder()
            .uri("/compare")
            .header(X_CASE, case)
            .body(full(Bytes::new()))
            .unwrap();
        let (status, headers, body) = send(&svc, req).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/json; charset=utf-8");
        assert_eq!(body, PRIMARY_JSON.concat(), "the primary's body, untouched");
    }
    settle().await;
    stats.stats()
}

#[tokio::test(start_paused = true)]
async fn answers_are_compared_by_status_class_and_json_value() {
    let st = compare(true).await;
    assert_eq!(st.mirrored, 4);
    assert_eq!(st.compared, 4, "{st:?}");
    assert_eq!((st.status_matches, st.status_mismatches), (3, 1));
    // same + created match; different, and down (not JSON), do not.
    assert_eq!((st.body_matches, st.body_mismatches), (2, 2), "{st:?}");
    assert_eq!(st.primary_latency.count, 4);
    assert_eq!(st.shadow_latency.count, 4);
    assert_eq!(st.primary_errors + st.shadow_errors + st.shadow_timeouts, 0);

    // Without compare_json, bodies are not looked at.
    let st = compare(false).await;
    assert_eq!(st.compared, 4);
    assert_eq!((st.status_matches, st.status_mismatches), (3, 1));
    assert_eq!((st.body_matches, st.body_mismatches), (0, 0));
    assert_eq!(st.primary_latency.count, 4);
    assert_eq!(st.shadow_latency.count, 4);
}

#[tokio::test(start_paused = true)]
async fn abandoned_primary_body_frees_the_shadow_permit() {
    let layer = MirrorLayer::builder(json_shadow())
        .compare_json(true)
        .max_concurrent(1)
        .build();
    let stats = layer.handle();
    let svc = layer.layer(json_primary());
    let ask = || {
        Request::builder()
            .uri("/compare")
            .header(X_CASE, "same")
            .body(full(Bytes::new()))
            .unwrap()
    };
    // The client drops the response without reading its body.
    let res = svc.clone().oneshot(ask()).await.unwrap();
    settle().await;
    drop(res);
    settle().await;
    let st = stats.stats();
    assert_eq!((st.mirrored, st.compared, st.dropped), (1, 0, 0), "{st:?}");
    // The permit is back: the next copy is mirrored and compared.
    let (_, _, body) = send(&svc, ask()).await;
    assert_eq!(body, PRIMARY_JSON.concat());
    settle().await;
    let st = stats.stats();
    assert_eq!((st.mirrored, st.compared, st.dropped), (2, 1, 0), "{st:?}");
    assert_eq!(st.body_matches, 1);
}

// === 7. a failing request body ===

#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection reset")
    }
}

impl std::error::Error for Reset {}

/// "abc", then an error, then (as a body may after failing) nothing more.
struct FailsAfterAbc(u8);

impl Body for FailsAfterAbc {
    type Data = Bytes;
    type Error = Reset;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Reset>>> {
        let this = self.get_mut();
        this.0 += 1;
        Poll::Ready(match this.0 {
            1 => Some(Ok(Frame::data(Bytes::from_static(b"abc")))),
            2 => Some(Err(Reset)),
            _ => None,
        })
    }
}

/// A request body that fails while the mirror reads it is answered 400:
/// the primary must not see "abc" as a whole body, and the copy would be
/// incomplete.
#[tokio::test(start_paused = true)]
async fn request_body_error_while_buffering_is_a_400_for_both() {
    let slog = Log::default();
    let layer = MirrorLayer::builder(shadow(&slog, StatusCode::OK))
        .methods([Method::PUT])
        .build();
    let stats = layer.handle();
    let called = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let primary = service_fn({
        let called = Arc::clone(&called);
        move |req: Request<RequestBody<FailsAfterAbc>>| {
            called.store(true, std::sync::atomic::Ordering::SeqCst);
            async move {
                let answer = match req.into_body().collect().await {
                    Ok(body) => format!("complete body {:?}", body.to_bytes()),
                    Err(e) => format!("body failed: {e}"),
                };
                Ok::<_, Infallible>(Response::new(full(answer)))
            }
        }
    });
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/upload")
        .body(FailsAfterAbc(0))
        .unwrap();
    let res = layer.layer(primary).oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("failed while it was being read"));
    settle().await;
    assert!(
        !called.load(std::sync::atomic::Ordering::SeqCst),
        "the primary was called"
    );
    assert_eq!(stats.stats().mirrored, 0);
    assert_eq!(stats.stats().body_errors, 1);
    assert!(seen(&slog).is_empty());
}

/// Issue 16: a client cannot pass a request off as a shadow copy; the
/// marker it sends is removed before the primary (or the shadow) sees it.
#[tokio::test(start_paused = true)]
async fn a_client_sent_mirror_marker_is_removed() {
    let (plog, slog) = (Log::default(), Log::default());
    let layer = MirrorLayer::builder(shadow(&slog, StatusCode::OK)).build();
    let svc = layer.layer(primary(&plog));
    for method in [Method::GET, Method::POST] {
        let req = Request::builder()
            .method(method)
            .uri("/m")
            .header(MIRROR_HEADER, "1")
            .body(full("x"))
            .unwrap();
        let (status, _, _) = send(&svc, req).await;
        assert_eq!(status, StatusCode::OK);
    }
    settle().await;
    let p = seen(&plog);
    assert_eq!(p.len(), 2);
    assert!(
        p.iter().all(|s| s.headers.get(MIRROR_HEADER).is_none()),
        "{p:?}"
    );
    // The GET was copied, marked once by the layer.
    let s = seen(&slog);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].headers.get_all(MIRROR_HEADER).iter().count(), 1);
}
