#![cfg(feature = "json")]
//! Integration tests of `switchyard::model`: whole `ModelRouter`s driven with
//! `ServiceExt::oneshot` over in-process upstreams (`service_fn`s boxed into
//! one `BoxCloneSyncService` type, so one router can mix echoing, failing and
//! streaming upstreams).
//!
//! Random picks are always seeded; the one timing test runs on tokio's
//! paused clock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame};
use proptest::prelude::*;
use serde_json::{Value, json};
use switchyard::auth::Identity;
use switchyard::body::RequestBody;
use switchyard::key::KeyBy;
use switchyard::model::{
    Alias, Catalog, ChoiceReason, FallbackOn, Model, ModelBody, ModelChoice, ModelError,
    ModelHandle, ModelRouter, ModelSource, Pin as ModelPin, PinKey, VersionStats,
};
use switchyard::split::Weights;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tower::util::BoxCloneSyncService;
use tower::{ServiceExt, service_fn};

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
/// The one body type of these tests, on both sides of the router.
type Bx = BoxBody<Bytes, Boom>;
type UpReq = Request<RequestBody<Bx>>;
type Upstream = BoxCloneSyncService<UpReq, Response<Bx>, BoxError>;
type Router = ModelRouter<Upstream>;
type Res = Response<ModelBody<Bx>>;

const X_MODEL: HeaderName = HeaderName::from_static("x-switchyard-model");
const X_UPSTREAM: HeaderName = HeaderName::from_static("x-upstream");
const X_VERSION: HeaderName = HeaderName::from_static("x-model-version");
const X_USER: HeaderName = HeaderName::from_static("x-user");

// === bodies ===

/// The error of the test bodies. (A concrete type: with a boxed `dyn Error`
/// here, rustc cannot prove the spawned request futures `Send`.)
#[derive(Debug)]
struct Boom(&'static str);

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for Boom {}

fn full(data: impl Into<Bytes>) -> Bx {
    Full::new(data.into()).map_err(|e| match e {}).boxed()
}

/// A body of ready frames with no size hint and no end-of-stream hint,
/// like a chunked upload: the router learns its length only by reading.
struct Frames(VecDeque<Result<Bytes, Boom>>);

impl Frames {
    fn split(data: &[u8], size: usize) -> Bx {
        let frames = data
            .chunks(size.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        BoxBody::new(Frames(frames))
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Boom;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Boom>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|r| r.map(Frame::data)))
    }
}

/// A body fed frame by frame from a channel; ends when the sender drops.
struct ChannelBody(mpsc::Receiver<Result<Bytes, Boom>>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Boom;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Boom>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|f| f.map(|r| r.map(Frame::data)))
    }
}

// === upstreams ===

/// What an upstream received.
#[derive(Debug, Clone)]
struct Seen {
    upstream: &'static str,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    choice: Option<ModelChoice>,
    streamed: bool,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn log() -> Log {
    Arc::default()
}

fn seen(log: &Log) -> Vec<Seen> {
    log.lock().unwrap().clone()
}

fn upstream<F, Fut>(f: F) -> Upstream
where
    F: Fn(UpReq) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Bx>, BoxError>> + Send + 'static,
{
    BoxCloneSyncService::new(service_fn(f))
}

/// Reads the whole request and records it.
async fn record(name: &'static str, log: &Log, req: UpReq) -> Seen {
    let (parts, body) = req.into_parts();
    let streamed = body.is_streamed();
    let body = body.collect().await.expect("request body").to_bytes();
    let seen = Seen {
        upstream: name,
        uri: parts.uri,
        headers: parts.headers,
        body,
        choice: parts.extensions.get::<ModelChoice>().cloned(),
        streamed,
    };
    log.lock().unwrap().push(seen.clone());
    seen
}

fn reply(name: &'static str, status: StatusCode, body: impl Into<Bytes>) -> Response<Bx> {
    Response::builder()
        .status(status)
        .header(X_UPSTREAM, name)
        .body(full(body))
        .unwrap()
}

/// Answers 200 with the body it received.
fn echo(name: &'static str, log: &Log) -> Upstream {
    let log = log.clone();
    upstream(move |req| {
        let log = log.clone();
        async move {
            let seen = record(name, &log, req).await;
            Ok(reply(name, StatusCode::OK, seen.body))
        }
    })
}

/// Answers `status` after reading the request.
fn answering(name: &'static str, log: &Log, status: StatusCode) -> Upstream {
    let log = log.clone();
    upstream(move |req| {
        let log = log.clone();
        async move {
            record(name, &log, req).await;
            Ok(reply(name, status, format!("{name} says {status}")))
        }
    })
}

/// Fails the call (a refused connection, say) after reading the request.
fn erroring(name: &'static str, log: &Log) -> Upstream {
    let log = log.clone();
    upstream(move |req| {
        let log = log.clone();
        async move {
            record(name, &log, req).await;
            Err::<Response<Bx>, BoxError>(format!("{name}: connection refused").into())
        }
    })
}

/// Answers 200 with `content-type` and `body`.
fn serving(name: &'static str, content_type: &'static str, body: &'static str) -> Upstream {
    upstream(move |req: UpReq| async move {
        drop(req);
        Ok(Response::builder()
            .header(CONTENT_TYPE, content_type)
            .header(X_UPSTREAM, name)
            .body(full(body))
            .unwrap())
    })
}

type Tap = mpsc::UnboundedSender<mpsc::Sender<Result<Bytes, Boom>>>;

/// Answers 200 at once with `content_type` and a body the test feeds: each
/// call hands the sending end of its body to the test through `tap`.
fn streaming(name: &'static str, content_type: &'static str, tap: Tap) -> Upstream {
    upstream(move |req: UpReq| {
        let tap = tap.clone();
        async move {
            drop(req);
            let (tx, rx) = mpsc::channel(1);
            tap.send(tx).expect("test dropped the tap");
            Ok(Response::builder()
                .header(CONTENT_TYPE, content_type)
                .header(X_UPSTREAM, name)
                .body(BoxBody::new(ChannelBody(rx)))
                .unwrap())
        }
    })
}

/// Never answers.
fn hanging() -> Upstream {
    upstream(|req: UpReq| async move {
        drop(req);
        std::future::pending::<Result<Response<Bx>, BoxError>>().await
    })
}

// === requests and responses ===

fn post(body: impl Into<Bytes>) -> Request<Bx> {
    let body: Bytes = body.into();
    Request::post("/v1/chat/completions")
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .body(full(body))
        .unwrap()
}

fn chat(model: &str) -> Request<Bx> {
    post(format!(
        r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#
    ))
}

fn with_header(mut req: Request<Bx>, name: HeaderName, value: &str) -> Request<Bx> {
    req.headers_mut()
        .insert(name, HeaderValue::from_str(value).unwrap());
    req
}

fn as_who(mut req: Request<Bx>, who: Identity) -> Request<Bx> {
    req.extensions_mut().insert(who);
    req
}

async fn call(router: &Router, req: Request<Bx>) -> Res {
    router
        .clone()
        .oneshot(req)
        .await
        .expect("router call failed")
}

fn served(res: &Res) -> &str {
    res.headers()
        .get(&X_MODEL)
        .expect("no x-switchyard-model header")
        .to_str()
        .unwrap()
}

fn choice(res: &Res) -> ModelChoice {
    res.extensions()
        .get::<ModelChoice>()
        .cloned()
        .expect("no ModelChoice in the response")
}

async fn body_of(res: Res) -> Bytes {
    res.into_body()
        .collect()
        .await
        .expect("response body")
        .to_bytes()
}

/// Checks OpenAI's error document and returns it.
async fn openai_error(res: Res, status: StatusCode, code: &str) -> Value {
    assert_eq!(res.status(), status, "status of a `{code}` error");
    assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
    let declared = res.headers()[CONTENT_LENGTH].clone();
    let body = body_of(res).await;
    assert_eq!(declared, body.len().to_string().as_str());
    let v: Value = serde_json::from_slice(&body).expect("error body is JSON");
    check_error_shape(&v);
    assert_eq!(v["error"]["code"], code, "{v}");
    v
}

/// `{"error":{"message","type","param","code"}}` and nothing else.
fn check_error_shape(v: &Value) {
    let top = v.as_object().expect("error document is an object");
    assert_eq!(top.keys().collect::<Vec<_>>(), ["error"], "{v}");
    let e = top["error"].as_object().expect("`error` is an object");
    let mut keys: Vec<&str> = e.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e["param"].is_null() || e["param"].is_string(), "{v}");
    assert!(e["code"].is_string(), "{v}");
}

fn stats(handle: &ModelHandle, model: &str) -> VersionStats {
    handle
        .model_stats(model)
        .unwrap_or_else(|| panic!("no stats for {model}"))
}

/// The JSON `model` value an upstream received.
fn model_in(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).expect("upstream body is JSON");
    v["model"].as_str().expect("model is a string").to_owned()
}

// === catalogs ===

/// v1 (blue), v2 (green, renamed `org/v2`), v3 (green); `chat` over them
/// with weights `w`; v4 (blue) outside the alias.
fn catalog(w: [u32; 3]) -> Catalog {
    Catalog::new()
        .model(Model::new("v1", "blue"))
        .model(Model::new("v2", "green").upstream_model("org/v2"))
        .model(Model::new("v3", "green"))
        .model(Model::new("v4", "blue"))
        .alias(Alias::new(
            "chat",
            [("v1", w[0]), ("v2", w[1]), ("v3", w[2])],
        ))
}

fn upstream_name(model: &str) -> &str {
    match model {
        "v2" => "org/v2",
        other => other,
    }
}

/// A router over two echoing upstreams.
fn echo_router(catalog: Catalog, log: &Log) -> Router {
    ModelRouter::builder()
        .upstream("blue", echo("blue", log))
        .upstream("green", echo("green", log))
        .catalog(catalog)
        .seed(0x5eed)
        .build()
        .unwrap()
}

// === 1. alias → weighted versions ===

#[tokio::test]
async fn alias_splits_90_10_by_weight_and_never_picks_weight_zero() {
    const N: usize = 10_000;
    let log = log();
    let router = echo_router(catalog([90, 10, 0]), &log);
    let handle = router.handle();

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..N {
        let res = call(&router, chat("chat")).await;
        assert_eq!(res.status(), StatusCode::OK);
        let c = choice(&res);
        assert_eq!(c.reason, ChoiceReason::Weighted);
        assert_eq!(c.requested.as_ref(), "chat");
        assert_eq!(c.alias.as_deref(), Some("chat"));
        assert_eq!(served(&res), c.model.as_ref());
        let model = c.model.to_string();
        let body = body_of(res).await;
        assert_eq!(model_in(&body), upstream_name(&model));
        *counts.entry(model).or_default() += 1;
    }
    let v1 = counts.get("v1").copied().unwrap_or(0);
    let v2 = counts.get("v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, N, "only v1 and v2 have weight: {counts:?}");
    // Binomial(10 000, 0.1): sd 30; ±250 is over 8 sd.
    assert!((750..=1250).contains(&v2), "v2 got {v2} of {N}");
    assert!(!counts.contains_key("v3"), "weight 0 chosen: {counts:?}");

    // The upstreams saw the choice they served, and the counters agree.
    let seen = seen(&log);
    assert_eq!(seen.len(), N);
    for s in &seen {
        let c = s.choice.as_ref().expect("no ModelChoice on the request");
        let expected = if c.model.as_ref() == "v1" {
            "blue"
        } else {
            "green"
        };
        assert_eq!((s.upstream, c.upstream.as_ref()), (expected, expected));
    }
    assert_eq!(stats(&handle, "v1").requests, v1 as u64);
    assert_eq!(stats(&handle, "v2").requests, v2 as u64);
    assert_eq!(stats(&handle, "v3").requests, 0);
    assert_eq!(stats(&handle, "v1").responses.success, v1 as u64);
    assert_eq!(stats(&handle, "v1").latency.count, v1 as u64);
    let alias: Vec<(String, Option<u32>)> = handle
        .alias_stats("chat")
        .unwrap()
        .into_iter()
        .map(|s| (s.model, s.weight))
        .collect();
    assert_eq!(
        alias,
        [
            ("v1".to_owned(), Some(90)),
            ("v2".to_owned(), Some(10)),
            ("v3".to_owned(), Some(0))
        ]
    );
}

#[tokio::test]
async fn same_seed_same_sequence_of_picks() {
    async fn picks(seed: u64) -> Vec<String> {
        let log = log();
        let router = ModelRouter::builder()
            .upstream("blue", echo("blue", &log))
            .upstream("green", echo("green", &log))
            .catalog(catalog([50, 30, 20]))
            .seed(seed)
            .build()
            .unwrap();
        let mut out = Vec::new();
        for _ in 0..300 {
            out.push(served(&call(&router, chat("chat")).await).to_owned());
        }
        out
    }
    let a = picks(7).await;
    assert_eq!(a, picks(7).await, "same seed, different picks");
    assert_ne!(a, picks(8).await, "the seed changes nothing");
    let distinct: HashSet<&String> = a.iter().collect();
    assert_eq!(distinct.len(), 3);
}

#[tokio::test]
async fn naming_a_version_goes_to_that_version() {
    let log = log();
    let router = echo_router(catalog([100, 0, 0]), &log);
    for (asked, upstream, name) in [
        ("v3", "green", "v3"),     // weight 0 in the alias
        ("v2", "green", "org/v2"), // renamed for its upstream
        ("v4", "blue", "v4"),      // in no alias
        ("v1", "blue", "v1"),
    ] {
        let res = call(&router, chat(asked)).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(served(&res), asked);
        assert_eq!(res.headers()[&X_UPSTREAM], upstream);
        let c = choice(&res);
        assert_eq!(c.reason, ChoiceReason::Direct);
        assert_eq!(c.alias, None);
        assert_eq!(c.requested.as_ref(), asked);
        assert_eq!(c.model.as_ref(), asked);
        assert_eq!(c.upstream.as_ref(), upstream);
        assert_eq!(model_in(&body_of(res).await), name);
    }
}

// === 2. pins ===

#[tokio::test]
async fn identity_pin_wins_over_tenant_pin() {
    let log = log();
    let router = echo_router(
        catalog([100, 0, 0])
            .pin(ModelPin::tenant("acme", "chat", "v2"))
            .pin(ModelPin::identity("alice", "chat", "v3")),
        &log,
    );
    let ask = |who: Option<Identity>| {
        let router = router.clone();
        async move {
            let req = match who {
                Some(who) => as_who(chat("chat"), who),
                None => chat("chat"),
            };
            let res = call(&router, req).await;
            (served(&res).to_owned(), choice(&res).reason)
        }
    };
    let pinned = ChoiceReason::Pinned;
    let weighted = ChoiceReason::Weighted;
    assert_eq!(ask(None).await, ("v1".into(), weighted));
    let bob = Identity::new("bob").with_tenant("acme");
    assert_eq!(ask(Some(bob.clone())).await, ("v2".into(), pinned));
    let alice = Identity::new("alice").with_tenant("acme");
    assert_eq!(ask(Some(alice)).await, ("v3".into(), pinned));
    assert_eq!(
        ask(Some(Identity::new("alice"))).await,
        ("v3".into(), pinned)
    );
    let carol = Identity::new("carol").with_tenant("other");
    assert_eq!(ask(Some(carol.clone())).await, ("v1".into(), weighted));

    // The pinned request reached v2 under its upstream name.
    let bob_seen = &seen(&log)[1];
    assert_eq!(model_in(&bob_seen.body), "org/v2");
    assert_eq!(bob_seen.choice.as_ref().unwrap().reason, pinned);

    // A pinned caller naming a version still gets that version.
    let res = call(&router, as_who(chat("v4"), bob.clone())).await;
    assert_eq!(
        (served(&res), choice(&res).reason),
        ("v4", ChoiceReason::Direct)
    );
}

#[tokio::test]
async fn pins_change_live_through_the_handle() {
    let log = log();
    let router = echo_router(catalog([100, 0, 0]), &log);
    let handle = router.handle();
    let carol = || as_who(chat("chat"), Identity::new("carol").with_tenant("other"));

    assert_eq!(served(&call(&router, carol()).await), "v1");
    handle.pin(ModelPin::tenant("other", "chat", "v2")).unwrap();
    assert_eq!(served(&call(&router, carol()).await), "v2");
    // A second pin of the same key on the alias replaces the first.
    handle.pin(ModelPin::tenant("other", "chat", "v3")).unwrap();
    assert_eq!(served(&call(&router, carol()).await), "v3");
    assert_eq!(handle.catalog().pins.len(), 1);
    // The identity's own pin wins.
    handle
        .pin(ModelPin::identity("carol", "chat", "v1"))
        .unwrap();
    assert_eq!(served(&call(&router, carol()).await), "v1");
    assert_eq!(
        handle.unpin(&PinKey::Identity("carol".into()), "chat"),
        Ok(true)
    );
    assert_eq!(served(&call(&router, carol()).await), "v3");

    assert_eq!(
        handle.unpin(&PinKey::Tenant("other".into()), "chat"),
        Ok(true)
    );
    assert_eq!(
        handle.unpin(&PinKey::Tenant("other".into()), "chat"),
        Ok(false)
    );
    let res = call(&router, carol()).await;
    assert_eq!(
        (served(&res), choice(&res).reason),
        ("v1", ChoiceReason::Weighted)
    );

    // Pins to a version outside the alias, or to an unknown alias, are
    // refused and change nothing.
    let before = handle.catalog();
    assert!(matches!(
        handle.pin(ModelPin::tenant("other", "chat", "v4")),
        Err(ModelError::NotAVersion { .. })
    ));
    assert!(matches!(
        handle.pin(ModelPin::tenant("other", "nope", "v1")),
        Err(ModelError::UnknownAlias { .. })
    ));
    assert_eq!(handle.catalog(), before);
}

// === 3. stickiness ===

fn sticky_router(log: &Log, salt: Option<&str>) -> Router {
    let mut builder = ModelRouter::builder()
        .upstream("blue", echo("blue", log))
        .upstream("green", echo("green", log))
        .catalog(catalog([50, 50, 0]))
        .sticky(KeyBy::header(X_USER))
        .seed(1);
    if let Some(salt) = salt {
        builder = builder.sticky_salt(salt);
    }
    builder.build().unwrap()
}

async fn assignment(router: &Router, keys: &[String]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for key in keys {
        let res = call(router, with_header(chat("chat"), X_USER, key)).await;
        assert_eq!(choice(&res).reason, ChoiceReason::Sticky);
        out.insert(key.clone(), served(&res).to_owned());
    }
    out
}

#[tokio::test]
async fn sticky_keys_stay_put_and_a_ramp_only_moves_keys_onto_the_new_version() {
    let log = log();
    let router = sticky_router(&log, None);
    let handle = router.handle();
    let keys: Vec<String> = (0..1_000).map(|i| format!("user-{i}")).collect();

    let start = assignment(&router, &keys).await;
    assert_eq!(assignment(&router, &keys).await, start, "keys moved");
    assert!(start.values().all(|m| m != "v3"), "weight 0 picked");
    let on_v1 = start.values().filter(|m| *m == "v1").count();
    assert!((400..=600).contains(&on_v1), "v1 has {on_v1} of 1000");

    // A change that leaves the weights alone moves nobody.
    handle
        .pin(ModelPin::tenant("someone", "chat", "v3"))
        .unwrap();
    assert_eq!(assignment(&router, &keys).await, start);

    let mut previous = start.clone();
    let mut on_v3_before = 0;
    for w in [10, 50, 100] {
        handle
            .set_weights("chat", [("v1", 50), ("v2", 50), ("v3", w)])
            .unwrap();
        let now = assignment(&router, &keys).await;
        for key in &keys {
            let (was, is) = (&previous[key], &now[key]);
            assert!(
                was == is || is == "v3",
                "v3 to {w}: {key} moved from {was} to {is}"
            );
        }
        let on_v3 = now.values().filter(|m| *m == "v3").count();
        assert!(on_v3 > on_v3_before, "v3 to {w}: no key moved onto it");
        on_v3_before = on_v3;
        previous = now;
    }
    // 100 of 200: about half.
    assert!((400..=600).contains(&on_v3_before), "v3 has {on_v3_before}");

    // Rolling the ramp back restores the original assignment exactly.
    for _ in 0..3 {
        handle.rollback("chat").unwrap();
    }
    assert_eq!(handle.weights("chat").unwrap().get("v3"), Some(0));
    assert_eq!(assignment(&router, &keys).await, start);

    // Without the key: random by weight.
    let res = call(&router, chat("chat")).await;
    assert_eq!(choice(&res).reason, ChoiceReason::Weighted);
    // A pin comes before the key.
    let pinned = as_who(
        with_header(chat("chat"), X_USER, "user-1"),
        Identity::new("x").with_tenant("someone"),
    );
    let res = call(&router, pinned).await;
    assert_eq!(
        (served(&res), choice(&res).reason),
        ("v3", ChoiceReason::Pinned)
    );

    // Another router with the same config agrees; a salted one does not.
    let again = sticky_router(&self::log(), None);
    assert_eq!(assignment(&again, &keys).await, start);
    let salted = sticky_router(&self::log(), Some("other salt"));
    assert_ne!(assignment(&salted, &keys).await, start);
}

// === 4. version header ===

#[tokio::test]
async fn version_header_picks_a_member_when_allowed() {
    let log = log();
    let router = echo_router(
        catalog([100, 0, 0])
            .allow_version_header(true)
            .pin(ModelPin::identity("alice", "chat", "v3")),
        &log,
    );
    let res = call(&router, with_header(chat("chat"), X_VERSION, "v2")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(served(&res), "v2");
    assert_eq!(choice(&res).reason, ChoiceReason::Header);
    assert_eq!(model_in(&body_of(res).await), "org/v2");

    // The header comes before a pin.
    let req = as_who(
        with_header(chat("chat"), X_VERSION, "v2"),
        Identity::new("alice"),
    );
    let res = call(&router, req).await;
    assert_eq!(
        (served(&res), choice(&res).reason),
        ("v2", ChoiceReason::Header)
    );

    // A version outside the alias, or no version at all: 400.
    for bad in ["v4", "nope"] {
        let res = call(&router, with_header(chat("chat"), X_VERSION, bad)).await;
        let err = openai_error(res, StatusCode::BAD_REQUEST, "invalid_model_version").await;
        assert!(err["error"]["message"].as_str().unwrap().contains(bad));
    }
    assert_eq!(seen(&log).len(), 2, "a refused request reached an upstream");
}

#[tokio::test]
async fn version_header_refused_when_not_allowed() {
    let log = log();
    let router = echo_router(catalog([100, 0, 0]), &log);
    let res = call(&router, with_header(chat("chat"), X_VERSION, "v2")).await;
    openai_error(res, StatusCode::BAD_REQUEST, "version_header_not_allowed").await;
    assert!(seen(&log).is_empty());

    // Another header name, when configured.
    let router = ModelRouter::builder()
        .upstream("blue", echo("blue", &log))
        .upstream("green", echo("green", &log))
        .catalog(catalog([100, 0, 0]).allow_version_header(true))
        .version_header(HeaderName::from_static("x-pick"))
        .build()
        .unwrap();
    let res = call(&router, with_header(chat("chat"), X_VERSION, "v2")).await;
    assert_eq!(served(&res), "v1", "the default header still counted");
    let res = call(
        &router,
        with_header(chat("chat"), HeaderName::from_static("x-pick"), "v3"),
    )
    .await;
    assert_eq!(served(&res), "v3");
}

#[tokio::test]
async fn versions_that_are_not_direct_need_the_scope() {
    let log = log();
    let catalog = Catalog::new()
        .model(Model::new("v1", "blue"))
        .model(Model::new("v2", "green").direct(false))
        .alias(Alias::new("chat", [("v1", 100), ("v2", 0)]))
        .allow_version_header(true)
        .direct_scope("tester");
    let router = echo_router(catalog, &log);

    // By name, or with the version header: refused without the scope.
    for req in [
        chat("v2"),
        with_header(chat("chat"), X_VERSION, "v2"),
        as_who(chat("v2"), Identity::new("mallory").with_scopes(["api"])),
    ] {
        let res = call(&router, req).await;
        openai_error(res, StatusCode::BAD_REQUEST, "model_not_direct").await;
    }
    assert!(
        seen(&log).is_empty(),
        "a refused request reached an upstream"
    );
    // A direct version, or the alias, needs nothing.
    assert_eq!(served(&call(&router, chat("v1")).await), "v1");
    assert_eq!(served(&call(&router, chat("chat")).await), "v1");
    // With the scope, both ways reach it.
    let tester = || Identity::new("qa").with_scopes(["tester"]);
    assert_eq!(
        served(&call(&router, as_who(chat("v2"), tester())).await),
        "v2"
    );
    let req = as_who(with_header(chat("chat"), X_VERSION, "v2"), tester());
    assert_eq!(served(&call(&router, req).await), "v2");
}

// === 5. live changes ===

#[tokio::test]
async fn promote_rollback_and_set_weights_take_effect_on_the_next_request() {
    let log = log();
    let router = echo_router(catalog([90, 10, 0]), &log);
    let handle = router.handle();
    let all = |router: Router| async move {
        let mut out = HashSet::new();
        for _ in 0..200 {
            out.insert(served(&call(&router, chat("chat")).await).to_owned());
        }
        out
    };

    handle.promote("chat", "v3").unwrap();
    let w = handle.weights("chat").unwrap();
    assert_eq!(
        w.iter().collect::<Vec<_>>(),
        [("v1", 0), ("v2", 0), ("v3", 100)]
    );
    assert_eq!(all(router.clone()).await, HashSet::from(["v3".to_owned()]));

    handle.rollback("chat").unwrap();
    assert_eq!(handle.weights("chat").unwrap().get("v1"), Some(90));
    assert_eq!(
        all(router.clone()).await,
        HashSet::from(["v1".to_owned(), "v2".to_owned()])
    );
    assert_eq!(
        handle.rollback("chat"),
        Err(ModelError::NothingToRollBack {
            alias: "chat".into()
        })
    );

    // Refused changes leave everything as it was.
    let before = handle.catalog();
    assert!(matches!(
        handle.promote("chat", "v4"),
        Err(ModelError::NotAVersion { .. })
    ));
    assert!(matches!(
        handle.promote("nope", "v1"),
        Err(ModelError::UnknownAlias { .. })
    ));
    assert!(matches!(
        handle.set_weights("chat", [("v1", 0), ("v2", 0)]),
        Err(ModelError::Weights { .. })
    ));
    assert!(matches!(
        handle.set_weights("chat", [("v1", 1), ("ghost", 1)]),
        Err(ModelError::UnknownModel { .. })
    ));
    assert_eq!(handle.catalog(), before);
    // (What a refused change does to the rollback history: see
    // `a_refused_change_leaves_the_rollback_history_alone`.)

    // A new version: added, reachable by name, then joins the alias.
    handle
        .add_model(Model::new("v5", "green").upstream_model("org/v5"))
        .unwrap();
    let res = call(&router, chat("v5")).await;
    assert_eq!(served(&res), "v5");
    assert_eq!(model_in(&body_of(res).await), "org/v5");
    assert!(matches!(
        handle.add_model(Model::new("v5", "blue")),
        Err(ModelError::Duplicate { .. })
    ));
    assert!(matches!(
        handle.add_model(Model::new("v6", "purple")),
        Err(ModelError::UnknownUpstream { .. })
    ));
    handle.set_weights("chat", [("v1", 0), ("v5", 1)]).unwrap();
    assert_eq!(all(router.clone()).await, HashSet::from(["v5".to_owned()]));
    let res = call(&router, chat("chat")).await;
    assert_eq!(choice(&res).alias.as_deref(), Some("chat"));
    assert_eq!(model_in(&body_of(res).await), "org/v5");
    let members: Vec<String> = handle
        .alias_stats("chat")
        .unwrap()
        .into_iter()
        .map(|s| s.model)
        .collect();
    assert_eq!(members, ["v1", "v5"]);
    handle.rollback("chat").unwrap();
    assert_eq!(handle.weights("chat").unwrap(), before.aliases[0].versions);
}

#[tokio::test]
async fn a_refused_change_leaves_the_rollback_history_alone() {
    let log = log();
    let router = echo_router(catalog([90, 10, 0]), &log);
    let handle = router.handle();
    let original = handle.weights("chat").unwrap();

    handle
        .set_weights("chat", [("v1", 10), ("v2", 90), ("v3", 0)])
        .unwrap();
    let applied = handle.weights("chat").unwrap();
    assert!(matches!(
        handle.set_weights("chat", [("v1", 0), ("v2", 0)]),
        Err(ModelError::Weights { .. })
    ));
    assert_eq!(
        handle.weights("chat").unwrap(),
        applied,
        "refused, yet changed"
    );

    // Undo the last change that took effect: back to 90/10.
    handle.rollback("chat").unwrap();
    // Fails: the weights are still 10/90 (the refused change was "undone").
    assert_eq!(handle.weights("chat").unwrap(), original);
    assert!(matches!(
        handle.rollback("chat"),
        Err(ModelError::NothingToRollBack { .. })
    ));
}

#[tokio::test]
async fn retire_model_is_refused_while_in_use() {
    let log = log();
    let router = echo_router(
        Catalog::new()
            .model(Model::new("v1", "blue"))
            .model(Model::new("v2", "green"))
            .model(Model::new("v3", "green"))
            .alias(Alias::new("chat", [("v1", 90), ("v2", 10), ("v3", 0)]).fallback("v3"))
            .pin(ModelPin::tenant("acme", "chat", "v2")),
        &log,
    );
    let handle = router.handle();
    assert_eq!(served(&call(&router, chat("v1")).await), "v1");

    let in_use = |r: Result<(), ModelError>| match r {
        Err(ModelError::InUse { reason, alias, .. }) => {
            assert_eq!(alias, "chat");
            reason
        }
        other => panic!("expected InUse, got {other:?}"),
    };
    assert_eq!(in_use(handle.retire_model("v1")), "it has weight");
    assert_eq!(in_use(handle.retire_model("v3")), "it is the fallback");
    handle
        .set_weights("chat", [("v1", 100), ("v2", 0), ("v3", 0)])
        .unwrap();
    assert_eq!(
        in_use(handle.retire_model("v2")),
        "a pin holds someone on it"
    );
    assert!(matches!(
        handle.retire_model("ghost"),
        Err(ModelError::UnknownModel { .. })
    ));
    assert_eq!(handle.catalog().models.len(), 3);

    handle
        .unpin(&PinKey::Tenant("acme".into()), "chat")
        .unwrap();
    handle.retire_model("v2").unwrap();
    let catalog = handle.catalog();
    assert!(catalog.models.iter().all(|m| m.name != "v2"));
    assert_eq!(catalog.aliases[0].versions.get("v2"), None);
    assert!(handle.model_stats("v2").is_none());
    let res = call(&router, chat("v2")).await;
    openai_error(res, StatusCode::NOT_FOUND, "model_not_found").await;
    // Counters of the versions that stay are kept across the changes.
    assert_eq!(stats(&handle, "v1").requests, 1);
    // Rolling back to weights that name the retired version is refused.
    assert!(matches!(
        handle.rollback("chat"),
        Err(ModelError::UnknownModel { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn promote_and_rollback_under_load_fail_no_request() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 200;
    let log = log();
    // Upstreams that yield before answering, so that weights change
    // between a request's pick and its answer.
    let yielding = |name: &'static str| {
        let log = log.clone();
        upstream(move |req| {
            let log = log.clone();
            async move {
                tokio::task::yield_now().await;
                let seen = record(name, &log, req).await;
                Ok(reply(name, StatusCode::OK, seen.body))
            }
        })
    };
    let router = ModelRouter::builder()
        .upstream("blue", yielding("blue"))
        .upstream("green", yielding("green"))
        .catalog(catalog([50, 50, 0]))
        .build()
        .unwrap();
    let handle = router.handle();
    let original = handle.weights("chat").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicU64::new(0));
    // The flipper is a thread of its own, so it flips while requests are
    // between their pick and their answer whatever the tasks do.
    let flipper = {
        let (handle, stop, flips) = (handle.clone(), stop.clone(), flips.clone());
        std::thread::spawn(move || {
            // At least one round, however late the thread starts.
            loop {
                for model in ["v2", "v1", "v3"] {
                    handle.promote("chat", model).unwrap();
                    std::thread::yield_now();
                    handle.rollback("chat").unwrap();
                    std::thread::yield_now();
                }
                handle
                    .set_weights("chat", [("v1", 10), ("v2", 90), ("v3", 0)])
                    .unwrap();
                std::thread::yield_now();
                handle.rollback("chat").unwrap();
                flips.fetch_add(8, Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        })
    };

    let mut tasks = JoinSet::new();
    for t in 0..TASKS {
        let router = router.clone();
        tasks.spawn(async move {
            let mut served_by = HashMap::<String, u64>::new();
            for i in 0..PER_TASK {
                let body = format!(r#"{{"model":"chat","task":{t},"i":{i}}}"#);
                let res = router.clone().oneshot(post(body.clone())).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                let model = served(&res).to_owned();
                let upstream = res.headers()[&X_UPSTREAM].to_str().unwrap().to_owned();
                let expected_upstream = if model == "v1" { "blue" } else { "green" };
                assert_eq!(upstream, expected_upstream, "{model} served by {upstream}");
                let got = body_of(res).await;
                let expected =
                    body.replace(r#""chat""#, &format!(r#""{}""#, upstream_name(&model)));
                assert_eq!(got, expected.as_bytes());
                *served_by.entry(model).or_default() += 1;
                // The upstreams answer at once: let the other tasks in.
                tokio::task::yield_now().await;
            }
            served_by
        });
    }
    let mut total = HashMap::<String, u64>::new();
    while let Some(done) = tasks.join_next().await {
        for (model, n) in done.expect("a request task failed") {
            *total.entry(model).or_default() += n;
        }
    }
    stop.store(true, Ordering::Relaxed);
    flipper.join().expect("the flipper failed");

    assert!(flips.load(Ordering::Relaxed) > 0, "weights never moved");
    assert_eq!(total.values().sum::<u64>(), (TASKS * PER_TASK) as u64);
    assert!(total.len() >= 2, "one version served everything: {total:?}");
    assert_eq!(handle.weights("chat").unwrap(), original);
    let all = handle.stats();
    assert_eq!(
        all.iter().map(|s| s.requests).sum::<u64>(),
        (TASKS * PER_TASK) as u64
    );
    for s in &all {
        assert_eq!(s.requests, total.get(&s.model).copied().unwrap_or(0));
        assert_eq!(s.responses.success, s.requests);
        assert_eq!((s.in_flight, s.errors), (0, 0), "{}", s.model);
    }
}

// === 6. byte preservation ===

const ODD_BODY: &str = concat!(
    r#"{ "temperature" : 1.0e10,"model":  "chat" ,"#,
    "\n  ",
    r#""messages":[{"role":"user","content":"caf\u00e9 \"model\": \"v1\" 😀 \ud83d\ude00"}],"#,
    "\n\t",
    r#""top_p": 0.1000, "zz_unknown": {"model": "chat", "a":[1,2,{"b":null}]}, "n":-0,"#,
    r#" "big": 123456789012345678901234567890, "e": 1E-7 }"#,
    "\r\n"
);

#[tokio::test]
async fn only_the_model_value_changes_in_the_upstream_body() {
    let log = log();
    let router = echo_router(catalog([0, 100, 0]), &log);
    let expected = ODD_BODY.replacen(r#""model":  "chat""#, r#""model":  "org/v2""#, 1);

    // With Content-Length, in one frame.
    let res = call(&router, post(ODD_BODY)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body_of(res).await, expected.as_bytes());
    // Chunked, in 3-byte frames, without Content-Length.
    let req = Request::post("/v1/chat/completions")
        .header(CONTENT_TYPE, "application/json")
        .header(TRANSFER_ENCODING, "chunked")
        .body(Frames::split(ODD_BODY.as_bytes(), 3))
        .unwrap();
    let res = call(&router, req).await;
    assert_eq!(res.status(), StatusCode::OK);

    for s in seen(&log) {
        assert_eq!(s.body, expected.as_bytes());
        assert_eq!(
            s.headers[CONTENT_LENGTH],
            expected.len().to_string().as_str()
        );
        assert!(!s.headers.contains_key(TRANSFER_ENCODING));
        assert!(!s.streamed, "the rewritten body is a new, complete body");
        assert_eq!(s.headers[CONTENT_TYPE], "application/json");
    }
    assert_eq!(seen(&log).len(), 2);

    // A model name written with escapes is read and replaced whole.
    let body = r#"{"model":"ch\u0061t","x":"\u00e9"}"#;
    let res = call(&router, post(body)).await;
    assert_eq!(choice(&res).requested.as_ref(), "chat");
    assert_eq!(body_of(res).await, r#"{"model":"org/v2","x":"\u00e9"}"#);
    // A body already naming the upstream's name goes through unchanged.
    let body = r#"{ "n" : 1 , "model" : "v1" }"#;
    let res = call(&router, post(body)).await;
    assert_eq!(body_of(res).await, body);
    // A key written with escapes is still the `model` key.
    let res = call(&router, post(r#"{"mod\u0065l" : "chat"}"#)).await;
    assert_eq!(served(&res), "v2");
    assert_eq!(body_of(res).await, r#"{"mod\u0065l" : "org/v2"}"#);

    // Without the response header.
    let router = ModelRouter::builder()
        .upstream("blue", echo("blue", &log))
        .upstream("green", echo("green", &log))
        .catalog(catalog([0, 100, 0]))
        .response_header(None)
        .build()
        .unwrap();
    let res = call(&router, post(ODD_BODY)).await;
    assert!(!res.headers().contains_key(&X_MODEL));
    assert_eq!(choice(&res).model.as_ref(), "v2");
    assert_eq!(body_of(res).await, expected.as_bytes());
}

/// Whitespace JSON allows between tokens.
fn ws() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", " ", "  ", "\n", "\n    ", "\t", "\r\n"])
}

fn json_number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        "-?(0|[1-9][0-9]{0,8})(\\.[0-9]{1,6})?([eE][+-]?[0-9]{1,2})?",
        prop::sample::select(vec![
            "1.0e10",
            "0.1000",
            "1E+2",
            "-0",
            "0.0",
            "1e-7",
            "123456789012345678901234567890",
            "3.14159265358979323846264338327950288",
        ])
        .prop_map(String::from),
    ]
}

fn json_string() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "a",
        "Z",
        " ",
        "model",
        "chat",
        "\\u00e9",
        "\\u00E9",
        "\\\"",
        "\\\\",
        "\\/",
        "\\n",
        "\\t",
        "é",
        "日本",
        "\\ud83d\\ude00",
        "😀",
        ":",
        ",",
        "{",
        "}",
        "[",
    ]);
    prop::collection::vec(piece, 0..6).prop_map(|p| format!("\"{}\"", p.concat()))
}

fn json_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        json_number(),
        json_string(),
        prop::sample::select(vec!["true", "false", "null"]).prop_map(String::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec((ws(), inner.clone(), ws()), 0..4).prop_map(|items| {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|(a, v, b)| format!("{a}{v}{b}"))
                    .collect();
                format!("[{}]", items.join(","))
            }),
            // Nested objects may have a `model` key of their own: it must
            // stay as it is.
            prop::collection::vec(
                (
                    prop_oneof![Just("model".to_owned()), "[a-z]{1,6}"],
                    ws(),
                    inner
                ),
                0..4
            )
            .prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(k, w, v)| format!("\"{k}\"{w}:{w}{v}"))
                    .collect();
                format!("{{{}}}", members.join(", "))
            }),
        ]
    })
}

/// A model value as written in a body, and the name it means.
fn model_literal() -> impl Strategy<Value = (&'static str, &'static str)> {
    prop::sample::select(vec![
        (r#""chat""#, "chat"),
        (r#""ch\u0061t""#, "chat"),
        (r#""v1""#, "v1"),
        (r#""v2""#, "v2"),
        (r#""\u0076\u0032""#, "v2"),
    ])
}

/// A request body: the text before the model value, the literal, the text
/// after it.
#[derive(Debug, Clone)]
struct Doc {
    before: String,
    literal: &'static str,
    after: String,
    means: &'static str,
}

fn doc() -> impl Strategy<Value = Doc> {
    let member = ("[a-z_]{1,8}", ws(), ws(), json_value());
    (
        prop::collection::vec(member, 0..8),
        any::<prop::sample::Index>(),
        model_literal(),
        (ws(), ws(), ws(), ws()),
        prop::sample::select(vec![",", ", ", " ,\n  ", ",\t"]),
    )
        .prop_map(
            |(members, at, (literal, means), (lead, open, close, trail), sep)| {
                let mut keys = HashSet::new();
                let members: Vec<String> = members
                    .into_iter()
                    .filter(|(k, ..)| k != "model" && keys.insert(k.clone()))
                    .map(|(k, w1, w2, v)| format!("\"{k}\"{w1}:{w2}{v}"))
                    .collect();
                // The model member goes between the others, at `at`.
                let at = at.index(members.len() + 1);
                let mut before = format!("{lead}{{{open}");
                for m in &members[..at] {
                    before.push_str(m);
                    before.push_str(sep);
                }
                before.push_str("\"model\" : ");
                let mut after = String::new();
                for m in &members[at..] {
                    after.push_str(sep);
                    after.push_str(m);
                }
                after.push_str(&format!("{close}}}{trail}"));
                Doc {
                    before,
                    literal,
                    after,
                    means,
                }
            },
        )
}

/// The router of the byte-preservation properties: upstream names that
/// need escaping and are not ASCII.
fn odd_names_router(log: &Log) -> Router {
    ModelRouter::builder()
        .upstream("blue", echo("blue", log))
        .upstream("green", echo("green", log))
        .catalog(
            Catalog::new()
                .model(Model::new("v1", "blue").upstream_model("org/v1-ünï"))
                .model(Model::new("v2", "green").upstream_model("we\"ird\\v2"))
                .alias(Alias::new("chat", [("v1", 1), ("v2", 1)])),
        )
        .seed(3)
        .build()
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the rest of the body holds, the upstream gets it byte for
    /// byte with only the model value replaced, and a right Content-Length.
    #[test]
    fn upstream_body_is_the_original_with_the_model_replaced(
        doc in doc(),
        frame in prop::option::of(1usize..64),
    ) {
        let original = format!("{}{}{}", doc.before, doc.literal, doc.after);
        let parsed: Value = serde_json::from_str(&original)
            .map_err(|e| TestCaseError::fail(format!("generator wrote bad JSON: {e}: {original}")))?;
        prop_assert_eq!(parsed["model"].as_str(), Some(doc.means));

        let log = log();
        let router = odd_names_router(&log);
        let req = match frame {
            None => post(original.clone()),
            Some(n) => Request::post("/v1/chat/completions")
                .header(TRANSFER_ENCODING, "chunked")
                .body(Frames::split(original.as_bytes(), n))
                .unwrap(),
        };
        let res = runtime().block_on(call(&router, req));
        prop_assert_eq!(res.status(), StatusCode::OK);
        let version = served(&res).to_owned();
        if doc.means != "chat" {
            prop_assert_eq!(&version, doc.means);
        }
        let name = if version == "v1" { "org/v1-ünï" } else { "we\"ird\\v2" };
        let expected = format!(
            "{}{}{}",
            doc.before,
            serde_json::to_string(name).unwrap(),
            doc.after
        );
        let seen = seen(&log);
        prop_assert_eq!(seen.len(), 1);
        prop_assert_eq!(
            std::str::from_utf8(&seen[0].body).unwrap(),
            expected.as_str()
        );
        prop_assert_eq!(
            seen[0].headers[CONTENT_LENGTH].to_str().unwrap(),
            expected.len().to_string()
        );
        prop_assert!(!seen[0].headers.contains_key(TRANSFER_ENCODING));
    }

    /// Whatever the bytes, the router answers 200 (they happened to name a
    /// model) or 4xx with OpenAI's error document: never a 5xx, never a
    /// panic.
    #[test]
    fn arbitrary_bodies_get_a_4xx_never_a_5xx(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..300),
            json_value().prop_map(String::into_bytes),
            doc().prop_map(|d| {
                let mut b = format!("{}{}{}", d.before, d.literal, d.after).into_bytes();
                b.truncate(b.len() / 2);
                b
            }),
            "\\{\"model\": ?(\"[a-z]{0,6}\"|[0-9]+|null|true|\\[\\]|\\{\\}) ?\\}"
                .prop_map(String::into_bytes),
        ],
        chunked in any::<bool>(),
    ) {
        let log = log();
        let router = odd_names_router(&log);
        let req = if chunked {
            Request::post("/v1/chat/completions").body(Frames::split(&body, 7)).unwrap()
        } else {
            post(body.clone())
        };
        let (status, value) = runtime().block_on(async {
            let res = call(&router, req).await;
            let status = res.status();
            (status, body_of(res).await)
        });
        prop_assert!(
            status == StatusCode::OK || status.is_client_error(),
            "{} for {:?}", status, String::from_utf8_lossy(&body)
        );
        if status != StatusCode::OK {
            let v: Value = serde_json::from_slice(&value).unwrap();
            check_error_shape(&v);
            prop_assert!(seen(&log).is_empty());
        }
    }
}

// === 7. fallback ===

/// v1 on blue (echo); v2 on green (`green`), renamed `org/v2`; `chat` sends
/// everything to v2 and falls back on v1.
fn fallback_router(green: Upstream, blue_log: &Log, on: Option<FallbackOn>) -> Router {
    let mut builder = ModelRouter::builder()
        .upstream("blue", echo("blue", blue_log))
        .upstream("green", green)
        .catalog(
            Catalog::new()
                .model(Model::new("v1", "blue"))
                .model(Model::new("v2", "green").upstream_model("org/v2"))
                .alias(Alias::new("chat", [("v1", 0), ("v2", 100)]).fallback("v1")),
        );
    if let Some(on) = on {
        builder = builder.fallback_on(on);
    }
    builder.build().unwrap()
}

fn odd_body_for(name: &str) -> String {
    ODD_BODY.replacen(r#""model":  "chat""#, &format!(r#""model":  "{name}""#), 1)
}

async fn check_fell_back(router: &Router, green_log: &Log, blue_log: &Log) -> VersionStats {
    let handle = router.handle();
    let res = call(router, post(ODD_BODY)).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(served(&res), "v1");
    assert_eq!(res.headers()[&X_UPSTREAM], "blue");
    let c = choice(&res);
    assert_eq!(c.reason, ChoiceReason::Fallback);
    assert_eq!(
        (c.requested.as_ref(), c.alias.as_deref()),
        ("chat", Some("chat"))
    );
    assert_eq!((c.model.as_ref(), c.upstream.as_ref()), ("v1", "blue"));
    // The client gets the fallback's answer: the body it received.
    assert_eq!(body_of(res).await, odd_body_for("v1").as_bytes());

    let green = seen(green_log);
    assert_eq!(green.len(), 1);
    assert_eq!(green[0].body, odd_body_for("org/v2").as_bytes());
    let blue = seen(blue_log);
    assert_eq!(blue.len(), 1, "retried more than once");
    assert_eq!(blue[0].body, odd_body_for("v1").as_bytes());
    assert_eq!(
        blue[0].headers[CONTENT_LENGTH],
        odd_body_for("v1").len().to_string().as_str()
    );
    assert_eq!(
        blue[0].choice.as_ref().unwrap().reason,
        ChoiceReason::Fallback
    );

    let v1 = stats(&handle, "v1");
    assert_eq!(
        (
            v1.requests,
            v1.responses.success,
            v1.fallbacks,
            v1.in_flight
        ),
        (1, 1, 0, 0)
    );
    let v2 = stats(&handle, "v2");
    assert_eq!((v2.requests, v2.fallbacks, v2.in_flight), (1, 1, 0));
    v2
}

#[tokio::test]
async fn a_500_falls_back_once_with_the_same_body() {
    let (green_log, blue_log) = (log(), log());
    let green = answering("green", &green_log, StatusCode::INTERNAL_SERVER_ERROR);
    let router = fallback_router(green, &blue_log, None);
    let v2 = check_fell_back(&router, &green_log, &blue_log).await;
    assert_eq!((v2.responses.server_error, v2.errors), (1, 0));
}

#[tokio::test]
async fn a_429_falls_back_once_with_the_same_body() {
    let (green_log, blue_log) = (log(), log());
    let green = answering("green", &green_log, StatusCode::TOO_MANY_REQUESTS);
    let router = fallback_router(green, &blue_log, None);
    let v2 = check_fell_back(&router, &green_log, &blue_log).await;
    assert_eq!((v2.responses.client_error, v2.errors), (1, 0));
}

#[tokio::test]
async fn a_failed_call_falls_back_once_with_the_same_body() {
    let (green_log, blue_log) = (log(), log());
    let router = fallback_router(erroring("green", &green_log), &blue_log, None);
    let v2 = check_fell_back(&router, &green_log, &blue_log).await;
    assert_eq!(v2.errors, 1);
    assert_eq!(v2.responses.server_error + v2.responses.client_error, 0);
}

#[tokio::test]
async fn fallback_never_passes_the_failure_on() {
    let (green_log, blue_log) = (log(), log());
    let green = answering("green", &green_log, StatusCode::INTERNAL_SERVER_ERROR);
    let router = fallback_router(green, &blue_log, Some(FallbackOn::never()));
    let res = call(&router, post(ODD_BODY)).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(served(&res), "v2");
    assert_eq!(body_of(res).await, "green says 500 Internal Server Error");

    let router = fallback_router(
        erroring("green", &green_log),
        &blue_log,
        Some(FallbackOn::never()),
    );
    let err = router.clone().oneshot(post(ODD_BODY)).await.unwrap_err();
    assert!(err.to_string().contains("connection refused"), "{err}");
    assert!(seen(&blue_log).is_empty(), "fell back anyway");
    let v2 = stats(&router.handle(), "v2");
    assert_eq!((v2.fallbacks, v2.errors, v2.in_flight), (0, 1, 0));
}

#[tokio::test]
async fn fallback_on_chooses_which_failures_retry() {
    let mut on = FallbackOn::never();
    on.too_many_requests = true;
    for (status, retried) in [
        (StatusCode::TOO_MANY_REQUESTS, true),
        (StatusCode::INTERNAL_SERVER_ERROR, false),
        (StatusCode::BAD_GATEWAY, false),
    ] {
        let (green_log, blue_log) = (log(), log());
        let router = fallback_router(answering("green", &green_log, status), &blue_log, Some(on));
        let res = call(&router, post(ODD_BODY)).await;
        let expected = if retried { "v1" } else { "v2" };
        assert_eq!(served(&res), expected, "{status}");
        assert_eq!(seen(&blue_log).len(), usize::from(retried));
    }
    // A 4xx other than 429 is the client's problem: never retried.
    let (green_log, blue_log) = (log(), log());
    let router = fallback_router(
        answering("green", &green_log, StatusCode::BAD_REQUEST),
        &blue_log,
        None,
    );
    let res = call(&router, post(ODD_BODY)).await;
    assert_eq!(
        (res.status(), served(&res)),
        (StatusCode::BAD_REQUEST, "v2")
    );
    assert!(seen(&blue_log).is_empty());
}

#[tokio::test]
async fn fallback_is_tried_once_and_only_for_an_alias() {
    // The fallback fails too: its failure is the answer; one retry only.
    let (green_log, blue_log) = (log(), log());
    let router = ModelRouter::builder()
        .upstream(
            "blue",
            answering("blue", &blue_log, StatusCode::SERVICE_UNAVAILABLE),
        )
        .upstream(
            "green",
            answering("green", &green_log, StatusCode::INTERNAL_SERVER_ERROR),
        )
        .catalog(
            Catalog::new()
                .model(Model::new("v1", "blue"))
                .model(Model::new("v2", "green"))
                .alias(Alias::new("chat", [("v1", 0), ("v2", 1)]).fallback("v1")),
        )
        .build()
        .unwrap();
    let res = call(&router, chat("chat")).await;
    assert_eq!(
        (res.status(), served(&res)),
        (StatusCode::SERVICE_UNAVAILABLE, "v1")
    );
    assert_eq!((seen(&green_log).len(), seen(&blue_log).len()), (1, 1));

    // The chosen version is the fallback: no second try on itself.
    router.handle().promote("chat", "v1").unwrap();
    let res = call(&router, chat("chat")).await;
    assert_eq!(
        (res.status(), served(&res)),
        (StatusCode::SERVICE_UNAVAILABLE, "v1")
    );
    assert_eq!(seen(&blue_log).len(), 2);

    // A request naming the version directly has no alias, no fallback.
    let res = call(&router, chat("v2")).await;
    assert_eq!(
        (res.status(), served(&res)),
        (StatusCode::INTERNAL_SERVER_ERROR, "v2")
    );
    assert_eq!((seen(&green_log).len(), seen(&blue_log).len()), (2, 2));
}

#[tokio::test]
async fn a_response_whose_body_fails_later_is_not_retried() {
    let (green_log, blue_log) = (log(), log());
    let green = {
        let green_log = green_log.clone();
        upstream(move |req| {
            let log = green_log.clone();
            async move {
                record("green", &log, req).await;
                let frames = VecDeque::from([
                    Ok(Bytes::from_static(b"data: {\"partial\":true}\n\n")),
                    Err(Boom("upstream reset the stream")),
                ]);
                Ok(Response::builder()
                    .header(CONTENT_TYPE, "text/event-stream")
                    .body(BoxBody::new(Frames(frames)))
                    .unwrap())
            }
        })
    };
    let router = fallback_router(green, &blue_log, None);
    let mut res = call(&router, post(ODD_BODY)).await;
    assert_eq!((res.status(), served(&res)), (StatusCode::OK, "v2"));
    let first = res.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: {\"partial\":true}\n\n");
    let err = res.body_mut().frame().await.unwrap().unwrap_err();
    assert!(err.to_string().contains("reset"));
    drop(res);

    assert!(seen(&blue_log).is_empty(), "a started response was retried");
    let handle = router.handle();
    let v2 = stats(&handle, "v2");
    assert_eq!(
        (v2.requests, v2.fallbacks, v2.body_errors, v2.in_flight),
        (1, 0, 1, 0)
    );
    assert_eq!(stats(&handle, "v1").requests, 0);
}

// === 8. token counts ===

const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"org/v2","choices":[{"index":0,"message":{"role":"assistant","content":"The \"usage\": {\"prompt_tokens\": 999} trick"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#;

fn token_router(upstream: Upstream) -> Router {
    ModelRouter::builder()
        .upstream("only", upstream)
        .catalog(
            Catalog::new()
                .model(Model::new("v1", "only"))
                .alias(Alias::new("chat", [("v1", 1)])),
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn json_usage_is_counted_once_the_body_is_read() {
    let router = token_router(serving(
        "only",
        "application/json; charset=utf-8",
        COMPLETION,
    ));
    let handle = router.handle();
    let res = call(&router, chat("chat")).await;
    let v1 = stats(&handle, "v1");
    assert_eq!(
        (v1.prompt_tokens, v1.completion_tokens, v1.in_flight),
        (0, 0, 1)
    );
    assert_eq!(body_of(res).await, COMPLETION);
    let v1 = stats(&handle, "v1");
    assert_eq!(
        (v1.prompt_tokens, v1.completion_tokens, v1.in_flight),
        (12, 34, 0)
    );

    let res = call(&router, chat("chat")).await;
    body_of(res).await;
    let v1 = stats(&handle, "v1");
    assert_eq!((v1.prompt_tokens, v1.completion_tokens), (24, 68));
}

#[tokio::test]
async fn json_usage_is_counted_when_the_body_is_read_the_way_hyper_reads_it() {
    let router = token_router(serving("only", "application/json", COMPLETION));
    let handle = router.handle();
    let res = call(&router, chat("chat")).await;
    // What hyper's HTTP/1 server does: write frames until the body says it
    // has ended, then drop it without asking for more.
    let mut body = res.into_body();
    let mut got = Vec::new();
    while !body.is_end_stream() {
        let frame = body.frame().await.expect("ended early").unwrap();
        got.extend_from_slice(&frame.into_data().unwrap());
    }
    drop(body);
    assert_eq!(
        got,
        COMPLETION.as_bytes(),
        "the client got the whole response"
    );
    let v1 = stats(&handle, "v1");
    assert_eq!(v1.in_flight, 0);
    // Fails: (0, 0).
    assert_eq!((v1.prompt_tokens, v1.completion_tokens), (12, 34));
}

#[tokio::test]
async fn usage_is_not_read_from_other_or_encoded_bodies() {
    let router = token_router(serving("only", "text/plain", COMPLETION));
    body_of(call(&router, chat("chat")).await).await;
    assert_eq!(stats(&router.handle(), "v1").prompt_tokens, 0);

    let encoded = upstream(|req: UpReq| async move {
        drop(req);
        Ok(Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_ENCODING, "identity-ish")
            .body(full(COMPLETION))
            .unwrap())
    });
    let router = token_router(encoded);
    body_of(call(&router, chat("chat")).await).await;
    let v1 = stats(&router.handle(), "v1");
    assert_eq!((v1.prompt_tokens, v1.in_flight, v1.requests), (0, 0, 1));
}

/// An OpenAI stream with `stream_options.include_usage`: every chunk has
/// `"usage":null` but the last, which has the counts and no choices.
fn sse_stream() -> String {
    let mut s = String::new();
    for (i, word) in ["Hel", "lo", " wor", "ld"].iter().enumerate() {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{word}\"}},\"finish_reason\":null}}],\"usage\":null,\"n\":{i}}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3,\"total_tokens\":10}}\n\n");
    s.push_str("data: [DONE]\n\n");
    s
}

/// Sends `stream` to the router's client in `size`-byte frames, one at a
/// time, checking each frame reaches the client unchanged before the next
/// is sent; returns the version's stats before the body ended.
async fn stream_through(stream: &str, size: usize) -> (VersionStats, VersionStats) {
    let (tap, mut taps) = mpsc::unbounded_channel();
    let router = token_router(streaming("only", "text/event-stream", tap));
    let handle = router.handle();
    let mut res = call(&router, chat("chat")).await;
    assert_eq!(res.status(), StatusCode::OK);
    let tx = taps.recv().await.unwrap();

    let pieces: Vec<&[u8]> = stream.as_bytes().chunks(size).collect();
    assert!(pieces.len() > 8);
    let mut before_end = None;
    for (i, piece) in pieces.iter().enumerate() {
        tx.send(Ok(Bytes::copy_from_slice(piece))).await.unwrap();
        let frame = tokio::time::timeout(Duration::from_secs(5), res.body_mut().frame())
            .await
            .expect("a frame was held back")
            .unwrap()
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), *piece, "frame {i} changed");
        if i == pieces.len() - 1 {
            before_end = Some(stats(&handle, "v1"));
        }
    }
    drop(tx);
    assert!(res.body_mut().frame().await.is_none());
    drop(res);
    (before_end.unwrap(), stats(&handle, "v1"))
}

#[tokio::test]
async fn sse_usage_in_the_last_event_is_counted_and_frames_pass_unchanged() {
    let stream = sse_stream();
    for size in [5, 13, 64] {
        let (before, after) = stream_through(&stream, size).await;
        assert_eq!(
            (
                before.prompt_tokens,
                before.completion_tokens,
                before.in_flight
            ),
            (0, 0, 1),
            "frames of {size}"
        );
        assert_eq!(
            (
                after.prompt_tokens,
                after.completion_tokens,
                after.in_flight
            ),
            (7, 3, 0),
            "frames of {size}"
        );
        assert_eq!(after.responses.success, 1);
    }
}

#[tokio::test]
async fn a_long_stream_still_counts_its_final_usage() {
    // 200 KiB of chunks before the usage event.
    let mut stream = String::new();
    for _ in 0..2_000 {
        stream.push_str("data: {\"choices\":[{\"delta\":{\"content\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}}],\"usage\":null}\n\n");
    }
    stream.push_str(&sse_stream());
    let (_, after) = stream_through(&stream, 97).await;
    assert_eq!((after.prompt_tokens, after.completion_tokens), (7, 3));
}

#[tokio::test]
async fn usage_within_the_last_4k_is_counted_however_the_body_is_framed() {
    // The usage object sits 1 KiB before the end (a JSON response whose
    // last fields are long): within the 4 KiB the docs promise to read.
    let tail = "x".repeat(1_000);
    let json = format!(
        r#"{{"id":"1","choices":[],"usage":{{"prompt_tokens":5,"completion_tokens":6}},"system_fingerprint":"{tail}"}}"#
    );
    let (tap, mut taps) = mpsc::unbounded_channel();
    let router = token_router(streaming("only", "application/json", tap));
    let res = call(&router, chat("chat")).await;
    let tx = taps.recv().await.unwrap();
    let sender = tokio::spawn(async move {
        for b in json.as_bytes() {
            tx.send(Ok(Bytes::copy_from_slice(&[*b]))).await.unwrap();
        }
    });
    body_of(res).await;
    sender.await.unwrap();
    let v1 = stats(&router.handle(), "v1");
    // Fails: (0, 0).
    assert_eq!((v1.prompt_tokens, v1.completion_tokens), (5, 6));
}

// === 9. model list ===

#[tokio::test]
async fn get_models_lists_the_catalog_in_openai_format() {
    let log = log();
    let router = echo_router(catalog([90, 10, 0]), &log);
    let get = || Request::get("/v1/models").body(full("")).unwrap();
    let res = call(&router, get()).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
    let list: Value = serde_json::from_slice(&body_of(res).await).unwrap();
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["chat", "v1", "v2", "v3", "v4"]);
    for m in data {
        assert_eq!(m["object"], "model", "{m}");
        assert!(m["created"].is_u64() && m["owned_by"].is_string(), "{m}");
    }
    assert_eq!(data[0]["versions"], json!(["v1", "v2", "v3"]));

    // The list follows the catalog.
    router.handle().add_model(Model::new("v9", "blue")).unwrap();
    let list: Value = serde_json::from_slice(&body_of(call(&router, get()).await).await).unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 6);
    assert_eq!(list["data"][5]["id"], "v9");
    assert!(seen(&log).is_empty(), "the list reached an upstream");

    // Turned off, or not a GET: not the list.
    let router = ModelRouter::builder()
        .upstream("blue", echo("blue", &log))
        .catalog(Catalog::new().model(Model::new("v1", "blue")))
        .models_path(None)
        .build()
        .unwrap();
    let res = call(&router, get()).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let req = Request::post("/v1/models")
        .body(full(r#"{"model":"v1"}"#))
        .unwrap();
    let res = call(&router, req).await;
    assert_eq!(served(&res), "v1");
}

// === 10. bad input ===

#[tokio::test]
async fn bad_requests_get_openai_errors_and_never_reach_an_upstream() {
    let log = log();
    let router = ModelRouter::builder()
        .upstream("blue", echo("blue", &log))
        .upstream("green", echo("green", &log))
        .catalog(catalog([90, 10, 0]))
        .body_limit(1024)
        .build()
        .unwrap();
    let big = format!(r#"{{"model":"chat","pad":"{}"}}"#, "x".repeat(2_000));
    let streamed = |data: &[u8], frame| {
        Request::post("/v1/chat/completions")
            .body(Frames::split(data, frame))
            .unwrap()
    };
    let cases: Vec<(&str, Request<Bx>, StatusCode, &str)> = vec![
        (
            "unknown model",
            chat("gpt-9"),
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            "missing model",
            post(r#"{"messages":[]}"#),
            StatusCode::BAD_REQUEST,
            "missing_model",
        ),
        (
            "number model",
            post(r#"{"model":3}"#),
            StatusCode::BAD_REQUEST,
            "invalid_model",
        ),
        (
            "array model",
            post(r#"{"model":["chat"]}"#),
            StatusCode::BAD_REQUEST,
            "invalid_model",
        ),
        (
            "object model",
            post(r#"{"model":{"name":"chat"}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_model",
        ),
        (
            "truncated",
            post(r#"{"model":"chat""#),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "trailing garbage",
            post(r#"{"model":"chat"} x"#),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "bad token",
            post(r#"{"model":"chat","n":01}"#),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "model twice",
            post(r#"{"model":"chat","model":"v1"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "array body",
            post("[1,2]"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "string body",
            post(r#""chat""#),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "number body",
            post("42"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "not utf-8",
            post(&b"{\"model\":\"ch\xffat\"}"[..]),
            StatusCode::BAD_REQUEST,
            "invalid_encoding",
        ),
        (
            "latin-1",
            post(&b"{\"model\":\"chat\",\"c\":\"caf\xe9\"}"[..]),
            StatusCode::BAD_REQUEST,
            "invalid_encoding",
        ),
        (
            "too large, declared",
            post(big.clone()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
        ),
        (
            "too large, streamed",
            streamed(big.as_bytes(), 100),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
        ),
        (
            "too large, one frame",
            streamed(big.as_bytes(), 1 << 20),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
        ),
        ("empty", post(""), StatusCode::BAD_REQUEST, "missing_model"),
        (
            "empty, streamed",
            streamed(b"", 1),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "whitespace",
            post(" \n "),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
    ];
    for (what, req, status, code) in cases {
        let res = call(&router, req).await;
        assert_eq!(res.status(), status, "{what}");
        assert!(!res.headers().contains_key(&X_MODEL), "{what}");
        let err = openai_error(res, status, code).await;
        if code == "model_not_found" {
            let message = err["error"]["message"].as_str().unwrap();
            for name in ["gpt-9", "chat", "v1", "v2", "v3", "v4"] {
                assert!(message.contains(name), "{message}");
            }
            assert_eq!(err["error"]["param"], "model");
            assert_eq!(err["error"]["type"], "invalid_request_error");
        }
    }
    // A declared length over the limit is refused before the body is read.
    let req = Request::post("/v1/chat/completions")
        .header(CONTENT_LENGTH, "5000")
        .body(BoxBody::new(ChannelBody(mpsc::channel(1).1)))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), call(&router, req))
        .await
        .expect("waited for a body it should refuse unread");
    openai_error(res, StatusCode::PAYLOAD_TOO_LARGE, "request_too_large").await;
    // A body failing while it is read: 400, not 500.
    let frames = VecDeque::from([
        Ok(Bytes::from_static(b"{\"model\":")),
        Err(Boom("client went away")),
    ]);
    let req = Request::post("/v1/chat/completions")
        .body(BoxBody::new(Frames(frames)))
        .unwrap();
    let res = call(&router, req).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    check_error_shape(&serde_json::from_slice(&body_of(res).await).unwrap());

    assert!(seen(&log).is_empty(), "a bad request reached an upstream");

    // A body of exactly the limit is fine.
    let exact = format!(r#"{{"model":"v1","pad":"{}"}}"#, "x".repeat(1024 - 23));
    assert_eq!(exact.len(), 1024);
    let res = call(&router, post(exact.clone())).await;
    assert_eq!(res.status(), StatusCode::OK);
    let res = call(&router, streamed(exact.as_bytes(), 10)).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[test]
fn bad_catalogs_are_refused_at_build() {
    let build = |catalog: Catalog| {
        ModelRouter::builder()
            .upstream("blue", echo("blue", &log()))
            .catalog(catalog)
            .build()
            .map(|_| ())
    };
    let v1 = || Model::new("v1", "blue");
    assert!(build(Catalog::new().model(v1())).is_ok());
    let no_upstreams = ModelRouter::<Upstream>::builder()
        .catalog(Catalog::new())
        .build();
    assert!(matches!(no_upstreams, Err(ModelError::NoUpstreams)));
    let dup_upstream = ModelRouter::builder()
        .upstream("blue", echo("blue", &log()))
        .upstream("blue", echo("blue", &log()))
        .build();
    assert!(matches!(dup_upstream, Err(ModelError::Duplicate { .. })));

    let two = || Catalog::new().model(v1()).model(Model::new("v2", "blue"));
    let cases: Vec<(Catalog, &str)> = vec![
        (
            Catalog::new().model(Model::new("v1", "red")),
            "UnknownUpstream",
        ),
        (Catalog::new().model(v1()).model(v1()), "Duplicate"),
        (
            Catalog::new().model(Model::new("has space", "blue")),
            "InvalidName",
        ),
        (Catalog::new().model(Model::new("", "blue")), "InvalidName"),
        (Catalog::new().model(Model::new("é", "blue")), "InvalidName"),
        (
            Catalog::new().model(Model::new("x".repeat(257), "blue")),
            "InvalidName",
        ),
        (Catalog::new().model(v1().upstream_model("")), "InvalidName"),
        (two().alias(Alias::new("v1", [("v1", 1)])), "Duplicate"),
        (
            two()
                .alias(Alias::new("c", [("v1", 1)]))
                .alias(Alias::new("c", [("v2", 1)])),
            "Duplicate",
        ),
        (
            two().alias(Alias::new("c", [("v1", 1), ("v1", 2)])),
            "Duplicate",
        ),
        (
            two().alias(Alias::new("c", [("v1", 0), ("v2", 0)])),
            "Weights",
        ),
        (two().alias(Alias::new("c", Weights::default())), "Weights"),
        (two().alias(Alias::new("c", [("v3", 1)])), "UnknownModel"),
        (
            two().alias(Alias::new("c", [("v1", 1)]).fallback("v3")),
            "UnknownModel",
        ),
        (
            two()
                .alias(Alias::new("c", [("v1", 1)]))
                .pin(ModelPin::tenant("t", "c", "v2")),
            "NotAVersion",
        ),
        (
            two()
                .alias(Alias::new("c", [("v1", 1)]))
                .pin(ModelPin::tenant("t", "c", "v1"))
                .pin(ModelPin::tenant("t", "c", "v1")),
            "Duplicate",
        ),
        (two().pin(ModelPin::tenant("t", "c", "v1")), "UnknownAlias"),
        (
            two()
                .alias(Alias::new("c", [("v1", 1)]))
                .pin(ModelPin::identity("i", "c", "v9")),
            "UnknownModel",
        ),
    ];
    for (i, (catalog, expected)) in cases.into_iter().enumerate() {
        let err = build(catalog).expect_err(&format!("case {i} was accepted"));
        assert_eq!(kind(&err), expected, "case {i}: {err}");
        assert!(!err.to_string().is_empty());
    }
}

fn kind(e: &ModelError) -> &'static str {
    match e {
        ModelError::NoUpstreams => "NoUpstreams",
        ModelError::UnknownUpstream { .. } => "UnknownUpstream",
        ModelError::Duplicate { .. } => "Duplicate",
        ModelError::InvalidName { .. } => "InvalidName",
        ModelError::UnknownModel { .. } => "UnknownModel",
        ModelError::UnknownAlias { .. } => "UnknownAlias",
        ModelError::Weights { .. } => "Weights",
        ModelError::NotAVersion { .. } => "NotAVersion",
        ModelError::NothingToRollBack { .. } => "NothingToRollBack",
        ModelError::InUse { .. } => "InUse",
        _ => "other",
    }
}

#[tokio::test]
async fn a_catalog_reads_from_json() {
    let text = r#"{
        "models": [
            {"name": "v1", "upstream": "blue"},
            {"name": "v2", "upstream": "green", "upstream_model": "org/v2"}
        ],
        "aliases": [{"name": "chat", "versions": {"v1": 0, "v2": 10}, "fallback": "v1"}],
        "pins": [{"who": {"tenant": "acme"}, "alias": "chat", "model": "v1"}],
        "allow_version_header": true
    }"#;
    let catalog: Catalog = serde_json::from_str(text).unwrap();
    assert_eq!(
        catalog,
        Catalog::new()
            .model(Model::new("v1", "blue"))
            .model(Model::new("v2", "green").upstream_model("org/v2"))
            .alias(Alias::new("chat", [("v1", 0), ("v2", 10)]).fallback("v1"))
            .pin(ModelPin::tenant("acme", "chat", "v1"))
            .allow_version_header(true)
    );
    let back: Catalog = serde_json::from_value(serde_json::to_value(&catalog).unwrap()).unwrap();
    assert_eq!(back, catalog);
    assert!(serde_json::from_str::<Catalog>(r#"{"modles": []}"#).is_err());

    let log = log();
    let router = echo_router(catalog.clone(), &log);
    assert_eq!(router.handle().catalog(), catalog);
    let res = call(&router, chat("chat")).await;
    assert_eq!(served(&res), "v2");
    let res = call(
        &router,
        as_who(chat("chat"), Identity::new("x").with_tenant("acme")),
    )
    .await;
    assert_eq!(served(&res), "v1");
}

// === 11. model from a header or a path segment ===

#[tokio::test]
async fn model_from_a_header_is_rewritten_to_the_upstream_name() {
    const X_MODEL_IN: HeaderName = HeaderName::from_static("x-model");
    let log = log();
    let router = ModelRouter::builder()
        .upstream("blue", echo("blue", &log))
        .upstream("green", echo("green", &log))
        .catalog(catalog([0, 100, 0]))
        .source(ModelSource::Header(X_MODEL_IN))
        .build()
        .unwrap();
    // The body is not JSON and is not read: it streams through.
    let body: &[u8] = b"\x00\xffnot json at all";
    let req = |model: Option<&str>| {
        let mut req = Request::post("/v1/audio/speech").body(full(body)).unwrap();
        if let Some(m) = model {
            req.headers_mut()
                .insert(X_MODEL_IN, HeaderValue::from_str(m).unwrap());
        }
        req
    };
    let res = call(&router, req(Some("chat"))).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        (served(&res), choice(&res).reason),
        ("v2", ChoiceReason::Weighted)
    );
    assert_eq!(body_of(res).await, body);
    let res = call(&router, req(Some("v1"))).await;
    assert_eq!(choice(&res).reason, ChoiceReason::Direct);

    let seen = seen(&log);
    assert_eq!(seen[0].headers[&X_MODEL_IN], "org/v2");
    assert_eq!(seen[0].upstream, "green");
    assert!(seen[0].streamed, "the body was buffered");
    assert_eq!(seen[1].headers[&X_MODEL_IN], "v1");

    openai_error(
        call(&router, req(None)).await,
        StatusCode::BAD_REQUEST,
        "missing_model",
    )
    .await;
    openai_error(
        call(&router, req(Some("nope"))).await,
        StatusCode::NOT_FOUND,
        "model_not_found",
    )
    .await;
}

#[tokio::test]
async fn model_from_a_path_segment_is_rewritten_in_place() {
    let log = log();
    let router = ModelRouter::builder()
        .upstream("blue", echo("blue", &log))
        .upstream("green", echo("green", &log))
        .catalog(catalog([0, 100, 0]))
        .source(ModelSource::PathSegment(1))
        .build()
        .unwrap();
    let req = |path: &str| Request::post(path).body(full("{}")).unwrap();

    let res = call(&router, req("/models/chat/generate?stream=true")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(served(&res), "v2");
    let res = call(&router, req("/models/v1/generate")).await;
    assert_eq!(served(&res), "v1");
    let res = call(&router, req("/models/ch%61t/generate")).await;
    assert_eq!(
        (served(&res), choice(&res).requested.as_ref()),
        ("v2", "chat")
    );

    let seen = seen(&log);
    // `org/v2` is one segment: its slash is encoded.
    assert_eq!(seen[0].uri.path(), "/models/org%2Fv2/generate");
    assert_eq!(seen[0].uri.query(), Some("stream=true"));
    assert_eq!(seen[0].body, "{}");
    assert_eq!(seen[1].uri.path(), "/models/v1/generate");
    assert_eq!(seen[2].uri.path(), "/models/org%2Fv2/generate");

    for path in ["/models", "/models/", "/models//generate"] {
        openai_error(
            call(&router, req(path)).await,
            StatusCode::BAD_REQUEST,
            "missing_model",
        )
        .await;
    }
    openai_error(
        call(&router, req("/models/gpt-9/x")).await,
        StatusCode::NOT_FOUND,
        "model_not_found",
    )
    .await;
    assert_eq!(seen.len(), 3);
}

// === 12. in flight ===

#[tokio::test]
async fn in_flight_ends_when_the_body_is_read_or_dropped() {
    let (tap, mut taps) = mpsc::unbounded_channel();
    let router = token_router(streaming("only", "text/event-stream", tap));
    let handle = router.handle();
    let in_flight = || stats(&handle, "v1").in_flight;

    // Read to the end.
    let res = call(&router, chat("chat")).await;
    let tx = taps.recv().await.unwrap();
    assert_eq!(in_flight(), 1);
    tx.send(Ok(Bytes::from_static(b"data: x\n\n")))
        .await
        .unwrap();
    drop(tx);
    body_of(res).await;
    assert_eq!(in_flight(), 0);

    // Two at once, one dropped unread mid-stream, one read.
    let first = call(&router, chat("chat")).await;
    let second = call(&router, chat("chat")).await;
    let (tx1, tx2) = (taps.recv().await.unwrap(), taps.recv().await.unwrap());
    assert_eq!(in_flight(), 2);
    tx1.send(Ok(Bytes::from_static(
        sse_stream().as_bytes().split_at(40).0.to_vec().leak(),
    )))
    .await
    .unwrap();
    drop(first);
    assert_eq!(in_flight(), 1);
    drop(tx2);
    body_of(second).await;
    let v1 = stats(&handle, "v1");
    assert_eq!((v1.in_flight, v1.requests, v1.prompt_tokens), (0, 3, 0));

    // The router's own answers count nothing.
    openai_error(
        call(&router, chat("nope")).await,
        StatusCode::NOT_FOUND,
        "model_not_found",
    )
    .await;
    assert_eq!(stats(&handle, "v1").requests, 3);
}

#[tokio::test]
async fn in_flight_ends_when_the_call_fails_without_fallback() {
    let log = log();
    let router = ModelRouter::builder()
        .upstream("blue", erroring("blue", &log))
        .catalog(Catalog::new().model(Model::new("v1", "blue")))
        .build()
        .unwrap();
    assert!(router.clone().oneshot(chat("v1")).await.is_err());
    let v1 = stats(&router.handle(), "v1");
    assert_eq!((v1.requests, v1.errors, v1.in_flight), (1, 1, 0));
}

#[tokio::test(start_paused = true)]
async fn in_flight_ends_when_the_request_is_cancelled() {
    let router = ModelRouter::builder()
        .upstream("slow", hanging())
        .catalog(Catalog::new().model(Model::new("v1", "slow")))
        .build()
        .unwrap();
    let handle = router.handle();
    let call = router.clone().oneshot(chat("v1"));
    assert!(
        tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .is_err(),
        "the hanging upstream answered"
    );
    let v1 = stats(&handle, "v1");
    assert_eq!(v1.requests, 1);
    // Fails: in_flight stays 1.
    assert_eq!(v1.in_flight, 0, "a cancelled request is still in flight");
}

/// A GET with an empty body to a chat path is a missing model (400), not a
/// hang and not a pass-through.
#[tokio::test]
async fn a_get_without_body_is_a_missing_model() {
    let log = log();
    let router = echo_router(catalog([1, 0, 0]), &log);
    let req = Request::builder()
        .method(Method::GET)
        .uri("/v1/chat/completions")
        .body(Empty::new().map_err(|e| match e {}).boxed())
        .unwrap();
    openai_error(
        call(&router, req).await,
        StatusCode::BAD_REQUEST,
        "missing_model",
    )
    .await;
}
