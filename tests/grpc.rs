//! gRPC end to end: real tonic 0.14 servers and clients on loopback
//! (`127.0.0.1:0`), the hand-written greeter of `tests/support/greeter.rs`
//! in two versions behind a `Split`, switchyard's layers on
//! `Server::builder().layer(..)`, and `proxy::Upstream` speaking h2c to
//! tonic upstreams.
//!
//! What is proven: unary, server-streaming and bidirectional calls split by
//! weight and by a metadata key; a stream stays on the version it started
//! on and keeps that version in flight (so `drained` is exact) until it
//! ends or is cancelled; every refusal reaches a gRPC client as the right
//! `tonic::Code` with a useful message (on the wire: a trailers-only HTTP
//! 200 with a percent-encoded `grpc-message`, the layer's headers kept),
//! while plain HTTP/1 requests to the same stack keep their HTTP statuses;
//! the proxy forwards gRPC with its trailers, and its own 502/504 become
//! UNAVAILABLE/DEADLINE_EXCEEDED.
//!
//! Timeouts here only guard against a hang; no assertion is about speed.

use crate::support::greeter;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::Bytes;
use greeter::{GreeterClient, GreeterServer, HelloReply, HelloRequest, SERVICE_NAME, Version};
use http::{HeaderName, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use switchyard::auth::{ApiKey, ApiKeyLayer, Identity, RequireScopes};
use switchyard::key::KeyBy;
use switchyard::proxy::Upstream;
use switchyard::ratelimit::{Quota, RateLimitLayer};
use switchyard::split::{Split, SplitHandle};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::MetadataMap;
use tonic::service::Routes;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status, Streaming};

const HANG_GUARD: Duration = Duration::from_secs(10);
const X_TARGET: HeaderName = HeaderName::from_static("x-switchyard-target");
const X_USER: HeaderName = HeaderName::from_static("x-user");

type GrpcClient = GreeterClient<Channel>;

// === helpers ===

/// Binds `127.0.0.1:0`, spawns the server `serve` builds on it, and
/// returns its address.
async fn spawn_server<F>(serve: impl FnOnce(TcpListenerStream) -> F) -> SocketAddr
where
    F: Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = serve(TcpListenerStream::new(listener));
    tokio::spawn(async move { server.await.expect("server failed") });
    addr
}

async fn connect(addr: SocketAddr) -> GrpcClient {
    tokio::time::timeout(HANG_GUARD, GreeterClient::connect(format!("http://{addr}")))
        .await
        .expect("connect hung")
        .expect("connect failed")
}

/// Guards an await that must complete.
async fn guard<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(HANG_GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

/// The greeter in two versions, each as tonic `Routes` (what
/// `Server::builder().add_service(..)` serves).
fn routes(v1: Version, v2: Version) -> (Routes, Routes) {
    (
        Routes::new(GreeterServer::new(v1)),
        Routes::new(GreeterServer::new(v2)),
    )
}

fn split_of<S>(v1: S, w1: u32, v2: S, w2: u32) -> switchyard::split::SplitBuilder<S> {
    Split::builder()
        .target("v1", v1, w1)
        .target("v2", v2, w2)
        .echo_header(X_TARGET)
}

/// A request with metadata.
fn hello(
    name: &str,
    count: u32,
    metadata: &[(&'static str, &str)],
) -> tonic::Request<HelloRequest> {
    let mut req = tonic::Request::new(HelloRequest {
        name: name.to_owned(),
        count,
    });
    for (k, v) in metadata {
        req.metadata_mut().insert(*k, v.parse().unwrap());
    }
    req
}

/// The target the split echoed in the response metadata.
fn echoed(metadata: &MetadataMap) -> String {
    metadata
        .get(X_TARGET.as_str())
        .expect("no echo header")
        .to_str()
        .unwrap()
        .to_owned()
}

/// Every reply of a stream, then its end (`Ok(None)` after `grpc-status: 0`
/// in the trailers), or the status it ended with.
async fn drain(mut stream: Streaming<HelloReply>) -> (Vec<HelloReply>, Result<(), Status>) {
    let mut replies = Vec::new();
    loop {
        match guard("stream", stream.message()).await {
            Ok(Some(reply)) => replies.push(reply),
            Ok(None) => return (replies, Ok(())),
            Err(status) => return (replies, Err(status)),
        }
    }
}

/// Polls `drained` once; `true` if it is still pending.
fn is_pending<F: Future + Unpin>(f: &mut F) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(f).poll(&mut cx).is_pending()
}

/// Asserts the target is not drained: pending when polled, and still
/// pending after a short while of real time.
async fn assert_not_drained(handle: &SplitHandle, target: &str) {
    let mut drained = handle.drained(target).unwrap();
    assert!(is_pending(&mut drained), "{target} drained too early");
    assert!(
        tokio::time::timeout(Duration::from_millis(50), &mut drained)
            .await
            .is_err(),
        "{target} drained while a stream was open"
    );
}

fn in_flight(handle: &SplitHandle, target: &str) -> u64 {
    handle.target_stats(target).unwrap().in_flight
}

// === split by weight ===

#[tokio::test]
async fn unary_calls_split_by_weight() {
    let (v1, v2) = routes(Version::new("v1"), Version::new("v2"));
    let split = split_of(v1, 70, v2, 30).seed(7).build().unwrap();
    let handle = split.handle();
    let addr =
        spawn_server(|incoming| Server::builder().serve_with_incoming(split, incoming)).await;
    let mut client = connect(addr).await;

    let mut seen = BTreeMap::<String, u64>::new();
    for i in 0..200 {
        let res = guard("unary", client.say_hello(hello(&format!("u{i}"), 0, &[])))
            .await
            .expect("call failed");
        let target = echoed(res.metadata());
        let reply = res.into_inner();
        assert_eq!(reply.version, target, "the echoed target wrote the reply");
        assert_eq!(reply.message, format!("hello u{i} from {target}"));
        *seen.entry(target).or_default() += 1;
    }
    let (n1, n2) = (seen["v1"], seen["v2"]);
    assert_eq!(n1 + n2, 200);
    // 70/30 of 200: far from both ends.
    assert!((110..=170).contains(&n1), "{seen:?}");

    for (target, n) in [("v1", n1), ("v2", n2)] {
        let stats = handle.target_stats(target).unwrap();
        assert_eq!(stats.requests, n, "{target}");
        assert_eq!(stats.responses.success, n, "{target}");
        assert_eq!(stats.in_flight, 0, "{target}");
    }
}

#[tokio::test]
async fn streaming_calls_split_by_weight_each_on_one_version() {
    let (v1, v2) = routes(Version::new("v1"), Version::new("v2"));
    let split = split_of(v1, 50, v2, 50).seed(11).build().unwrap();
    let handle = split.handle();
    let addr =
        spawn_server(|incoming| Server::builder().serve_with_incoming(split, incoming)).await;
    let mut client = connect(addr).await;

    let mut seen = BTreeMap::<String, u64>::new();
    // Server streaming: every reply of one stream from one version.
    for i in 0..30 {
        let res = guard(
            "server stream",
            client.say_hellos(hello(&format!("s{i}"), 5, &[])),
        )
        .await
        .expect("call failed");
        let target = echoed(res.metadata());
        let (replies, end) = drain(res.into_inner()).await;
        end.expect("stream failed");
        assert_eq!(replies.len(), 5);
        for (n, reply) in replies.iter().enumerate() {
            assert_eq!(reply.version, target);
            assert_eq!(
                reply.message,
                format!("hello s{i} #{} from {target}", n + 1)
            );
        }
        *seen.entry(target).or_default() += 1;
    }
    // Bidirectional: every reply of one chat from one version.
    for i in 0..30 {
        let names: Vec<HelloRequest> = (0..4)
            .map(|j| HelloRequest {
                name: format!("c{i}.{j}"),
                count: 0,
            })
            .collect();
        let res = guard("chat", client.chat(tokio_stream::iter(names)))
            .await
            .expect("call failed");
        let target = echoed(res.metadata());
        let (replies, end) = drain(res.into_inner()).await;
        end.expect("chat failed");
        assert_eq!(replies.len(), 4);
        for (j, reply) in replies.iter().enumerate() {
            assert_eq!(reply.message, format!("hello c{i}.{j} from {target}"));
        }
        *seen.entry(target).or_default() += 1;
    }
    assert_eq!(seen.values().sum::<u64>(), 60);
    assert!(seen["v1"] >= 10 && seen["v2"] >= 10, "{seen:?}");
    for target in ["v1", "v2"] {
        let stats = handle.target_stats(target).unwrap();
        assert_eq!(stats.requests, seen[target], "{target}");
        // Counted as successes when their trailers said grpc-status 0.
        assert_eq!(stats.responses.success, seen[target], "{target}");
        assert_eq!(stats.body_errors, 0, "{target}");
        // Every stream was read to its end, so nothing is left in flight.
        assert_eq!(stats.in_flight, 0, "{target}");
    }
}

// === sticky by metadata ===

/// The split mounted with tonic's own `add_service` (with the `tonic`
/// feature a split of greeters is a `NamedService` named like them),
/// sticky by the `x-user` metadata key: `KeyBy::header` reads gRPC
/// metadata.
#[tokio::test]
async fn sticky_by_grpc_metadata_key() {
    let split = split_of(
        GreeterServer::new(Version::new("v1")),
        50,
        GreeterServer::new(Version::new("v2")),
        50,
    )
    .sticky(KeyBy::header(X_USER))
    .build()
    .unwrap();
    let chooser = split.clone();
    assert_eq!(
        <Split<GreeterServer<Version>> as tonic::server::NamedService>::NAME,
        SERVICE_NAME
    );
    let addr = spawn_server(|incoming| {
        Server::builder()
            .add_service(split)
            .serve_with_incoming(incoming)
    })
    .await;
    let mut client = connect(addr).await;

    let mut by_target = BTreeMap::<String, u32>::new();
    for u in 0..24 {
        let user = format!("user-{u}");
        // What the split picks for a plain HTTP request with this header.
        let probe = Request::builder()
            .header(&X_USER, user.as_str())
            .body(())
            .unwrap();
        let expected = chooser.choose(&probe).name().to_owned();
        let md = [("x-user", user.as_str())];
        for _ in 0..3 {
            let res = guard("unary", client.say_hello(hello(&user, 0, &md)))
                .await
                .unwrap();
            assert_eq!(echoed(res.metadata()), expected, "{user}");
            assert_eq!(res.into_inner().version, expected, "{user}");
        }
        let res = guard("server stream", client.say_hellos(hello(&user, 3, &md)))
            .await
            .unwrap();
        assert_eq!(echoed(res.metadata()), expected, "{user}");
        let (replies, end) = drain(res.into_inner()).await;
        end.unwrap();
        assert!(replies.iter().all(|r| r.version == expected), "{user}");

        let mut chat = tonic::Request::new(tokio_stream::iter(vec![HelloRequest {
            name: user.clone(),
            count: 0,
        }]));
        chat.metadata_mut().insert("x-user", user.parse().unwrap());
        let res = guard("chat", client.chat(chat)).await.unwrap();
        assert_eq!(echoed(res.metadata()), expected, "{user}");
        let (replies, end) = drain(res.into_inner()).await;
        end.unwrap();
        assert_eq!(replies[0].version, expected, "{user}");
        *by_target.entry(expected).or_default() += 1;
    }
    // Users spread over both versions.
    assert!(
        by_target.get("v1").copied().unwrap_or(0) >= 4
            && by_target.get("v2").copied().unwrap_or(0) >= 4,
        "{by_target:?}"
    );
}

// === promote while a stream is open ===

#[tokio::test]
async fn promote_while_a_bidi_stream_is_open() {
    let (v1, v2) = routes(Version::new("v1"), Version::new("v2"));
    let split = split_of(v1, 100, v2, 0).build().unwrap();
    let handle = split.handle();
    let addr =
        spawn_server(|incoming| Server::builder().serve_with_incoming(split, incoming)).await;
    let mut client = connect(addr).await;

    // Open a chat on v1 and keep its request side open.
    let (tx, rx) = mpsc::channel::<HelloRequest>(4);
    let say = |name: &str| HelloRequest {
        name: name.to_owned(),
        count: 0,
    };
    tx.send(say("a")).await.unwrap();
    let res = guard("chat", client.chat(ReceiverStream::new(rx)))
        .await
        .unwrap();
    assert_eq!(echoed(res.metadata()), "v1");
    let mut stream = res.into_inner();
    let first = guard("reply", stream.message()).await.unwrap().unwrap();
    assert_eq!(first.message, "hello a from v1");
    assert_eq!(in_flight(&handle, "v1"), 1);

    handle.promote("v2").unwrap();
    assert_eq!(handle.weights().get("v1"), Some(0));

    // The open stream stays on v1...
    tx.send(say("b")).await.unwrap();
    let reply = guard("reply", stream.message()).await.unwrap().unwrap();
    assert_eq!(reply.message, "hello b from v1");
    // ...while new calls, unary and streaming, go to v2.
    for _ in 0..5 {
        let res = guard("unary", client.say_hello(hello("new", 0, &[])))
            .await
            .unwrap();
        assert_eq!(res.into_inner().version, "v2");
    }
    let res = guard("new chat", client.chat(tokio_stream::iter(vec![say("n")])))
        .await
        .unwrap();
    assert_eq!(echoed(res.metadata()), "v2");
    let (replies, end) = drain(res.into_inner()).await;
    end.unwrap();
    assert_eq!(replies[0].message, "hello n from v2");

    // v1 has weight 0 but one stream in flight: not drained.
    assert_eq!(in_flight(&handle, "v1"), 1);
    assert_not_drained(&handle, "v1").await;
    let mut drained = handle.drained("v1").unwrap();
    assert!(is_pending(&mut drained));

    tx.send(say("c")).await.unwrap();
    let reply = guard("reply", stream.message()).await.unwrap().unwrap();
    assert_eq!(reply.message, "hello c from v1");
    assert!(is_pending(&mut drained), "drained while the stream is open");

    // The client ends the stream: the server finishes it, v1 drains.
    drop(tx);
    let (rest, end) = drain(stream).await;
    end.expect("the stream ended with an error");
    assert!(rest.is_empty());
    guard("drained(v1)", drained).await;
    assert_eq!(in_flight(&handle, "v1"), 0);
    let v1 = handle.target_stats("v1").unwrap();
    assert_eq!((v1.requests, v1.responses.success), (1, 1));
    let v2 = handle.target_stats("v2").unwrap();
    assert_eq!((v2.requests, v2.in_flight), (6, 0));
}

#[tokio::test]
async fn promote_while_a_server_stream_is_open() {
    let gate = Arc::new(Semaphore::new(0));
    let (v1, v2) = routes(
        Version::new("v1").gate(gate.clone()),
        Version::new("v2").gate(gate.clone()),
    );
    let split = split_of(v1, 100, v2, 0).build().unwrap();
    let handle = split.handle();
    let addr =
        spawn_server(|incoming| Server::builder().serve_with_incoming(split, incoming)).await;
    let mut client = connect(addr).await;

    let res = guard("server stream", client.say_hellos(hello("s", 3, &[])))
        .await
        .unwrap();
    assert_eq!(echoed(res.metadata()), "v1");
    let mut stream = res.into_inner();
    let first = guard("reply", stream.message()).await.unwrap().unwrap();
    assert_eq!(first.message, "hello s #1 from v1");

    handle.promote("v2").unwrap();
    let res = guard("unary", client.say_hello(hello("new", 0, &[])))
        .await
        .unwrap();
    assert_eq!(res.into_inner().version, "v2");
    assert_eq!(in_flight(&handle, "v1"), 1);
    assert_not_drained(&handle, "v1").await;
    let mut drained = handle.drained("v1").unwrap();
    assert!(is_pending(&mut drained));

    // Let the stream go on: the rest of it still comes from v1.
    gate.add_permits(2);
    let (rest, end) = drain(stream).await;
    end.expect("the stream ended with an error");
    let messages: Vec<&str> = rest.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages, ["hello s #2 from v1", "hello s #3 from v1"]);
    guard("drained(v1)", drained).await;
    assert_eq!(in_flight(&handle, "v1"), 0);
}

/// A client that gives up on a stream (drops it) ends the stream's
/// in-flight time too: a cancelled call does not hold a drain open.
#[tokio::test]
async fn a_cancelled_stream_ends_its_in_flight_time() {
    let gate = Arc::new(Semaphore::new(0));
    let (v1, v2) = routes(Version::new("v1").gate(gate.clone()), Version::new("v2"));
    let split = split_of(v1, 100, v2, 0).build().unwrap();
    let handle = split.handle();
    let addr =
        spawn_server(|incoming| Server::builder().serve_with_incoming(split, incoming)).await;
    let mut client = connect(addr).await;

    let res = guard("server stream", client.say_hellos(hello("s", 5, &[])))
        .await
        .unwrap();
    let mut stream = res.into_inner();
    let first = guard("reply", stream.message()).await.unwrap().unwrap();
    assert_eq!(first.version, "v1");
    handle.promote("v2").unwrap();
    assert_not_drained(&handle, "v1").await;

    // The server's stream is stuck at the gate; the client walks away.
    drop(stream);
    guard("drained(v1)", handle.drained("v1").unwrap()).await;
    let v1 = handle.target_stats("v1").unwrap();
    assert_eq!(v1.in_flight, 0);
    // Cut off before any grpc-status: not a success.
    assert_eq!(v1.responses.success, 0, "{v1:?}");
    assert_eq!(v1.body_errors, 1, "{v1:?}");
}

// === rejections ===

/// Keys: `good` (scope `greet`), `no-scope` (no scopes), `limited` (scope
/// `greet`, its own identity). The limit is per identity: 2 calls a
/// minute.
fn gateway_layers() -> (ApiKeyLayer, RateLimitLayer) {
    let auth = ApiKeyLayer::builder()
        .key(ApiKey::new(
            "good",
            Identity::new("alice").with_scopes(["greet"]),
        ))
        .key(ApiKey::new("no-scope", Identity::new("bob")))
        .key(ApiKey::new(
            "limited",
            Identity::new("carol").with_scopes(["greet"]),
        ))
        .build()
        .unwrap();
    let limit = RateLimitLayer::builder()
        .key_by(KeyBy::identity())
        .quota(Quota::per_minute(2).named("per-caller"))
        .build()
        .unwrap();
    (auth, limit)
}

/// The whole stack on one tonic server: API keys, rate limit, scope check,
/// then the split. HTTP/1 is accepted too, for plain HTTP clients.
async fn serve_gateway() -> (SocketAddr, SplitHandle) {
    let (auth, limit) = gateway_layers();
    let (v1, v2) = routes(Version::new("v1"), Version::new("v2"));
    let split = split_of(v1, 100, v2, 0).build().unwrap();
    let handle = split.handle();
    let addr = spawn_server(|incoming| {
        Server::builder()
            .accept_http1(true)
            .layer(auth)
            .layer(limit)
            .layer(RequireScopes::all(["greet"]))
            .serve_with_incoming(split, incoming)
    })
    .await;
    (addr, handle)
}

fn assert_status(result: Result<impl std::fmt::Debug, Status>, code: Code, needle: &str) -> Status {
    let status = result.expect_err("the call should have been refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "message {:?} should mention {needle:?}",
        status.message()
    );
    status
}

#[tokio::test]
async fn missing_and_invalid_keys_are_unauthenticated() {
    let (addr, handle) = serve_gateway().await;
    let mut client = connect(addr).await;

    let status = assert_status(
        client.say_hello(hello("x", 0, &[])).await,
        Code::Unauthenticated,
        "requires credentials",
    );
    assert_eq!(
        status.metadata().get("www-authenticate").unwrap(),
        r#"Bearer realm="switchyard""#
    );
    let status = assert_status(
        client
            .say_hello(hello("x", 0, &[("x-api-key", "wrong")]))
            .await,
        Code::Unauthenticated,
        "not valid",
    );
    assert_eq!(
        status.metadata().get("www-authenticate").unwrap(),
        r#"Bearer realm="switchyard", error="invalid_token""#
    );
    assert_status(
        client
            .say_hello(hello("x", 0, &[("authorization", "Bearer wrong")]))
            .await,
        Code::Unauthenticated,
        "not valid",
    );
    // Streaming calls are refused the same way, before any message.
    assert_status(
        client.say_hellos(hello("x", 3, &[])).await.map(|_| ()),
        Code::Unauthenticated,
        "requires credentials",
    );
    let mut chat = tonic::Request::new(tokio_stream::iter(Vec::<HelloRequest>::new()));
    chat.metadata_mut()
        .insert("x-api-key", "wrong".parse().unwrap());
    assert_status(
        client.chat(chat).await.map(|_| ()),
        Code::Unauthenticated,
        "not valid",
    );

    // A good key passes, by header or bearer token.
    for md in [("x-api-key", "good"), ("authorization", "Bearer good")] {
        let res = client.say_hello(hello("x", 0, &[md])).await.unwrap();
        assert_eq!(res.into_inner().version, "v1");
    }
    // Nothing refused reached the split.
    assert_eq!(handle.target_stats("v1").unwrap().requests, 2);
}

#[tokio::test]
async fn malformed_credentials_are_invalid_argument() {
    let (addr, handle) = serve_gateway().await;
    let mut client = connect(addr).await;

    for (name, value, needle) in [
        ("authorization", "Bearer", "not followed by a token"),
        ("authorization", "Bearer a b", "not a valid b64token"),
        ("x-api-key", "", "empty"),
    ] {
        let status = assert_status(
            client.say_hello(hello("x", 0, &[(name, value)])).await,
            Code::InvalidArgument,
            needle,
        );
        assert!(status.metadata().get("www-authenticate").is_some());
    }
    assert_eq!(handle.target_stats("v1").unwrap().requests, 0);
}

#[tokio::test]
async fn missing_scope_is_permission_denied() {
    let (addr, handle) = serve_gateway().await;
    let mut client = connect(addr).await;

    let status = assert_status(
        client
            .say_hello(hello("x", 0, &[("x-api-key", "no-scope")]))
            .await,
        Code::PermissionDenied,
        "missing scope: greet",
    );
    assert_eq!(
        status.metadata().get("www-authenticate").unwrap(),
        r#"Bearer realm="switchyard", error="insufficient_scope", scope="greet""#
    );
    assert_status(
        client
            .say_hellos(hello("x", 2, &[("x-api-key", "no-scope")]))
            .await
            .map(|_| ()),
        Code::PermissionDenied,
        "missing scope: greet",
    );
    assert_eq!(handle.target_stats("v1").unwrap().requests, 0);
}

#[tokio::test]
async fn rate_limit_is_resource_exhausted_with_retry_and_headers() {
    let (addr, handle) = serve_gateway().await;
    let mut client = connect(addr).await;
    let key = [("x-api-key", "limited")];

    // Within the limit: replies carry the RateLimit headers as metadata.
    let res = client.say_hello(hello("x", 0, &key)).await.unwrap();
    assert_eq!(
        res.metadata().get("ratelimit").unwrap(),
        r#""per-caller";r=1;t=30"#
    );
    assert_eq!(
        res.metadata().get("ratelimit-policy").unwrap(),
        r#""per-caller";q=2;w=60"#
    );
    let res = client.say_hellos(hello("x", 2, &key)).await.unwrap();
    let (replies, end) = drain(res.into_inner()).await;
    end.unwrap();
    assert_eq!(replies.len(), 2);

    // Over it: RESOURCE_EXHAUSTED, the retry delay in the message, the
    // RateLimit headers and Retry-After kept as metadata.
    let status = assert_status(
        client.say_hello(hello("x", 0, &key)).await,
        Code::ResourceExhausted,
        "retry in",
    );
    assert!(status.message().contains("per-caller"), "{status:?}");
    let ratelimit = status.metadata().get("ratelimit").expect("no ratelimit");
    assert!(
        ratelimit
            .to_str()
            .unwrap()
            .starts_with(r#""per-caller";r=0;t="#),
        "{ratelimit:?}"
    );
    assert!(status.metadata().get("ratelimit-policy").is_some());
    let retry: u64 = status
        .metadata()
        .get("retry-after")
        .expect("no retry-after")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert!(
        status.message().contains(&format!("retry in {retry} s")),
        "{status:?}"
    );
    // Streams are refused alike.
    let chat = {
        let mut r = tonic::Request::new(tokio_stream::iter(Vec::<HelloRequest>::new()));
        r.metadata_mut()
            .insert("x-api-key", "limited".parse().unwrap());
        r
    };
    assert_status(
        client.chat(chat).await.map(|_| ()),
        Code::ResourceExhausted,
        "retry",
    );
    // Another caller has a limit of its own.
    let res = client
        .say_hello(hello("x", 0, &[("x-api-key", "good")]))
        .await
        .unwrap();
    assert_eq!(res.into_inner().version, "v1");
    assert_eq!(handle.target_stats("v1").unwrap().requests, 3);
}

#[tokio::test]
async fn plain_http1_requests_keep_their_http_statuses() {
    let (addr, handle) = serve_gateway().await;
    let http1: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let get = |key: Option<&str>| {
        let mut req = Request::builder().uri(format!("http://{addr}/"));
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        let req = req.body(Empty::new()).unwrap();
        let sent = http1.request(req);
        async move {
            let res = guard("http/1 request", sent).await.unwrap();
            assert_eq!(res.version(), http::Version::HTTP_11);
            let (parts, body) = res.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (parts, body)
        }
    };
    let problem = |body: &Bytes| -> serde_json::Value { serde_json::from_slice(body).unwrap() };

    let (parts, body) = get(None).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_eq!(parts.headers["content-type"], "application/problem+json");
    assert!(parts.headers.get("grpc-status").is_none());
    assert_eq!(problem(&body)["status"], 401);

    let (parts, body) = get(Some("wrong")).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem(&body)["status"], 401);

    let (parts, body) = get(Some("no-scope")).await;
    assert_eq!(parts.status, StatusCode::FORBIDDEN);
    assert_eq!(
        problem(&body)["missing_scopes"],
        serde_json::json!(["greet"])
    );

    // Two requests pass the limit (and reach the split)...
    for _ in 0..2 {
        let (parts, _) = get(Some("limited")).await;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(parts.headers.contains_key("ratelimit"));
    }
    // ...the third is a 429 problem document.
    let (parts, body) = get(Some("limited")).await;
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(parts.headers["content-type"], "application/problem+json");
    assert!(parts.headers.contains_key("retry-after"));
    assert!(parts.headers.contains_key("ratelimit"));
    assert!(parts.headers.get("grpc-status").is_none());
    let doc = problem(&body);
    assert_eq!(doc["status"], 429);
    assert!(
        doc["detail"].as_str().unwrap().contains("retry in"),
        "{doc}"
    );
    assert_eq!(handle.target_stats("v1").unwrap().requests, 2);

    // The same server still speaks gRPC to gRPC clients.
    let mut client = connect(addr).await;
    assert_status(
        client
            .say_hello(hello("x", 0, &[("x-api-key", "limited")]))
            .await,
        Code::ResourceExhausted,
        "retry",
    );
}

/// A raw HTTP/2 request over a tonic channel (no gRPC client in the way):
/// the response head, its body bytes and its trailers.
async fn raw_h2(
    addr: SocketAddr,
    content_type: &str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, Bytes, Option<http::HeaderMap>) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut req = Request::post(format!("http://{addr}/{SERVICE_NAME}/SayHello"))
        .header("content-type", content_type)
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(tonic::body::Body::empty()).unwrap();
    let res = guard("raw request", tower::ServiceExt::oneshot(channel, req))
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let collected = guard("raw body", body.collect()).await.unwrap();
    let trailers = collected.trailers().cloned();
    (parts, collected.to_bytes(), trailers)
}

#[tokio::test]
async fn grpc_refusals_are_trailers_only_responses() {
    let (addr, _) = serve_gateway().await;

    // gRPC: HTTP 200, `application/grpc`, the status in the headers, no body.
    let (parts, body, trailers) = raw_h2(addr, "application/grpc", &[]).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.version, http::Version::HTTP_2);
    assert_eq!(parts.headers["content-type"], "application/grpc");
    assert_eq!(parts.headers["grpc-status"], "16");
    assert_eq!(
        parts.headers["grpc-message"],
        "this resource requires credentials"
    );
    assert!(parts.headers.contains_key("www-authenticate"));
    assert!(body.is_empty(), "{body:?}");
    assert!(trailers.is_none(), "{trailers:?}");

    // `application/grpc+proto` is gRPC too; the 429 keeps its headers.
    let key = [("x-api-key", "limited")];
    for _ in 0..2 {
        // Admitted: the greeter answers (13: the empty body holds no
        // request message), with the RateLimit headers.
        let (parts, _, _) = raw_h2(addr, "application/grpc+proto", &key).await;
        assert_eq!(parts.headers["grpc-status"], "13");
        assert!(parts.headers.contains_key("ratelimit"));
    }
    let (parts, body, _) = raw_h2(addr, "application/grpc+proto", &key).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers["grpc-status"], "8");
    let message = parts.headers["grpc-message"].to_str().unwrap();
    assert!(message.contains("retry in"), "{message}");
    assert!(parts.headers.contains_key("ratelimit"));
    assert!(parts.headers.contains_key("ratelimit-policy"));
    assert!(parts.headers.contains_key("retry-after"));
    assert!(body.is_empty());

    // Not gRPC, over HTTP/2 all the same: the HTTP status and problem+json.
    let (parts, body, _) = raw_h2(addr, "application/json", &[]).await;
    assert_eq!(parts.status, StatusCode::UNAUTHORIZED);
    assert_eq!(parts.headers["content-type"], "application/problem+json");
    assert!(parts.headers.get("grpc-status").is_none());
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["status"], 401);
}

#[tokio::test]
async fn grpc_messages_are_percent_encoded() {
    let auth = ApiKeyLayer::builder()
        .key(ApiKey::new("k", Identity::new("dora")))
        .build()
        .unwrap();
    let addr = spawn_server(|incoming| {
        Server::builder()
            .layer(auth)
            .layer(RequireScopes::all(["grüßen", "100%"]))
            .serve_with_incoming(GreeterServer::new(Version::new("v1")), incoming)
    })
    .await;
    let (parts, _, _) = raw_h2(addr, "application/grpc", &[("x-api-key", "k")]).await;
    assert_eq!(parts.headers["grpc-status"], "7");
    assert_eq!(
        parts.headers["grpc-message"],
        "missing scope: gr%C3%BC%C3%9Fen, 100%25"
    );
    // A tonic client decodes it back.
    let mut client = connect(addr).await;
    let status = assert_status(
        client.say_hello(hello("x", 0, &[("x-api-key", "k")])).await,
        Code::PermissionDenied,
        "missing scope: grüßen, 100%",
    );
    assert_eq!(status.message(), "missing scope: grüßen, 100%");
}

// === proxy to h2c upstreams ===

async fn tonic_upstream(version: Version) -> SocketAddr {
    spawn_server(|incoming| {
        Server::builder()
            .add_service(GreeterServer::new(version))
            .serve_with_incoming(incoming)
    })
    .await
}

fn h2c(addr: SocketAddr) -> Upstream {
    Upstream::builder(&format!("http://{addr}"))
        .http2(true)
        .build()
        .unwrap()
}

#[tokio::test]
async fn proxy_forwards_grpc_to_h2c_upstreams_with_trailers() {
    let up1 = tonic_upstream(Version::new("v1")).await;
    let up2 = tonic_upstream(Version::new("v2")).await;
    let split = split_of(h2c(up1), 100, h2c(up2), 0).build().unwrap();
    let handle = split.handle();
    let addr =
        spawn_server(|incoming| Server::builder().serve_with_incoming(split, incoming)).await;
    let mut client = connect(addr).await;

    // Unary: the reply, and `grpc-status: 0` from the upstream's trailers.
    let res = guard("unary", client.say_hello(hello("p", 0, &[])))
        .await
        .expect("unary through the proxy");
    assert_eq!(echoed(res.metadata()), "v1");
    assert_eq!(res.into_inner().message, "hello p from v1");

    // Server streaming: all replies, then the trailers end it cleanly.
    let res = guard("server stream", client.say_hellos(hello("p", 3, &[])))
        .await
        .unwrap();
    let (replies, end) = drain(res.into_inner()).await;
    end.expect("the stream should end with grpc-status 0 in its trailers");
    assert_eq!(replies.len(), 3);

    // A NOT_FOUND returned by the service (trailers-only from the
    // upstream) reaches the client as NOT_FOUND with its message.
    let status = assert_status(
        guard("unary", client.say_hello(hello("nobody", 0, &[]))).await,
        Code::NotFound,
        "no greeting for `nobody`",
    );
    assert_eq!(status.metadata().get("x-greeter-version").unwrap(), "v1");

    // A NOT_FOUND after two replies travels in real trailers, after the
    // data: status, message and metadata intact.
    let res = guard("server stream", client.say_hellos(hello("nobody", 2, &[])))
        .await
        .unwrap();
    let (replies, end) = drain(res.into_inner()).await;
    assert_eq!(replies.len(), 2);
    let status = end.expect_err("the stream should end with NOT_FOUND");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "no greeting for `nobody`");
    assert_eq!(status.metadata().get("x-greeter-version").unwrap(), "v1");

    // Bidirectional through the proxy, then promote: new calls to v2.
    let (tx, rx) = mpsc::channel::<HelloRequest>(4);
    tx.send(HelloRequest {
        name: "a".into(),
        count: 0,
    })
    .await
    .unwrap();
    let res = guard("chat", client.chat(ReceiverStream::new(rx)))
        .await
        .unwrap();
    let mut stream = res.into_inner();
    let reply = guard("reply", stream.message()).await.unwrap().unwrap();
    assert_eq!(reply.message, "hello a from v1");
    handle.promote("v2").unwrap();
    let res = guard("unary", client.say_hello(hello("p", 0, &[])))
        .await
        .unwrap();
    assert_eq!(res.into_inner().message, "hello p from v2");
    assert_not_drained(&handle, "v1").await;
    tx.send(HelloRequest {
        name: "b".into(),
        count: 0,
    })
    .await
    .unwrap();
    let reply = guard("reply", stream.message()).await.unwrap().unwrap();
    assert_eq!(reply.message, "hello b from v1");
    drop(tx);
    let (rest, end) = drain(stream).await;
    end.unwrap();
    assert!(rest.is_empty());
    guard("drained(v1)", handle.drained("v1").unwrap()).await;

    // The split counts each call by its grpc-status, whether it came in
    // the headers (trailers-only) or in the trailers forwarded by the
    // proxy: OK as 2xx, NOT_FOUND as 4xx (see `switchyard::grpc`).
    let v1 = handle.target_stats("v1").unwrap();
    assert_eq!(v1.requests, 5);
    assert_eq!(v1.responses.success, 3, "{v1:?}");
    assert_eq!(v1.responses.client_error, 2, "{v1:?}");
    assert_eq!((v1.errors, v1.body_errors, v1.in_flight), (0, 0, 0));
    let v2 = handle.target_stats("v2").unwrap();
    assert_eq!((v2.requests, v2.responses.success, v2.in_flight), (1, 1, 0));
}

#[tokio::test]
async fn proxy_upstream_that_never_answers_is_deadline_exceeded() {
    // Accepts connections and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let upstream = Upstream::builder(&format!("http://{silent_addr}"))
        .http2(true)
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let addr =
        spawn_server(|incoming| Server::builder().serve_with_incoming(upstream, incoming)).await;
    let mut client = connect(addr).await;
    assert_status(
        guard("unary", client.say_hello(hello("x", 0, &[]))).await,
        Code::DeadlineExceeded,
        "did not answer within",
    );
}

#[tokio::test]
async fn proxy_to_an_unreachable_upstream_is_unavailable() {
    // A port held with nothing listening there.
    let refusing = crate::support::net::Refusing::new();
    let closed = refusing.addr;
    let upstream = h2c(closed);
    let addr =
        spawn_server(|incoming| Server::builder().serve_with_incoming(upstream, incoming)).await;
    let mut client = connect(addr).await;
    assert_status(
        guard("unary", client.say_hello(hello("x", 0, &[]))).await,
        Code::Unavailable,
        "could not connect to upstream",
    );
}
