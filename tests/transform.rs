#![cfg(all(feature = "transform", feature = "json"))]
//! Behaviour of `switchyard::transform`: header, path, query, method, host
//! and JSON body rules, their fixed order, templates, conditions, the
//! errors of `TransformLayer::new`, rules from TOML and JSON, live rule
//! changes, and property tests on arbitrary headers and URIs. Every stack
//! is driven in process with `ServiceExt::oneshot`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde_json::{Value, json};
use switchyard::auth::Identity;
use switchyard::body::RequestBody;
use switchyard::split::{Split, Target};
use switchyard::transform::{
    FromTo, HeaderMatch, HeaderRules, NameValue, NonJson, OnMissing, PathRegex, QueryRules,
    RuleSet, Rules, Transform, TransformError, TransformHandle, TransformLayer, When,
};
use tokio::sync::mpsc;
use tower::util::BoxCloneService;
use tower::{Layer, ServiceExt, service_fn};

const PROBLEM_JSON: &str = "application/problem+json";
/// Guards awaits that must complete, so a bug fails the test instead of
/// hanging it.
const HANG_GUARD: Duration = Duration::from_secs(5);

// === helpers ===

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;
type InnerSvc = BoxCloneService<Request<RequestBody<Body>>, Response<Body>, Infallible>;
type Svc = Transform<InnerSvc>;

fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// A complete body with an exact size hint.
fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// A body of frames (data, trailers, errors) with no size hint, as a
/// chunked body without `Content-Length` is.
struct Frames(VecDeque<Result<Frame<Bytes>, BoxError>>);

impl HttpBody for Frames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.pop_front())
    }
}

fn chunks(parts: &[&str]) -> Body {
    Frames(
        parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p.as_bytes()))))
            .collect(),
    )
    .boxed_unsync()
}

fn with_trailers(data: &str, trailers: HeaderMap) -> Body {
    Frames(VecDeque::from([
        Ok(Frame::data(Bytes::copy_from_slice(data.as_bytes()))),
        Ok(Frame::trailers(trailers)),
    ]))
    .boxed_unsync()
}

/// A body that never yields: reading it hangs.
struct Never;

impl HttpBody for Never {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Pending
    }
}

/// A body fed chunk by chunk by the test.
struct Channel(mpsc::UnboundedReceiver<Bytes>);

impl HttpBody for Channel {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// What the inner service saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
    /// `RequestBody::is_streamed()`: the client's body, untouched.
    streamed: bool,
    target: Option<&'static str>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    fn all(&self, name: &str) -> Vec<String> {
        values(&self.headers, name)
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the inner service got JSON")
    }

    fn path_and_query(&self) -> &str {
        self.uri.path_and_query().map_or("", |pq| pq.as_str())
    }
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

type Respond = Arc<dyn Fn(&Seen) -> Response<Body> + Send + Sync>;

/// An inner service that records every request it is called with and
/// answers with `respond`.
#[derive(Clone)]
struct Inner {
    seen: Arc<Mutex<Vec<Seen>>>,
    respond: Respond,
}

fn default_response(_: &Seen) -> Response<Body> {
    Response::builder()
        .header("x-inner", "1")
        .header(CONTENT_TYPE, "text/plain")
        .body(full("inner"))
        .unwrap()
}

impl Inner {
    fn new(respond: impl Fn(&Seen) -> Response<Body> + Send + Sync + 'static) -> Self {
        Self {
            seen: Arc::default(),
            respond: Arc::new(respond),
        }
    }

    fn service(&self) -> InnerSvc {
        let seen = self.seen.clone();
        let respond = self.respond.clone();
        BoxCloneService::new(service_fn(move |req: Request<RequestBody<Body>>| {
            let seen = seen.clone();
            let respond = respond.clone();
            async move {
                let streamed = req.body().is_streamed();
                let (parts, body) = req.into_parts();
                let collected = body.collect().await.expect("request body");
                let record = Seen {
                    method: parts.method,
                    uri: parts.uri,
                    headers: parts.headers,
                    trailers: collected.trailers().cloned(),
                    body: collected.to_bytes(),
                    streamed,
                    target: parts.extensions.get::<Target>().map(Target::name),
                };
                let res = respond(&record);
                seen.lock().unwrap().push(record);
                Ok::<_, Infallible>(res)
            }
        }))
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the inner service was never called")
    }
}

/// A complete response.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Asserts a problem+json refusal with this status; returns the
    /// document.
    fn assert_problem(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type").as_deref(), Some(PROBLEM_JSON));
        assert_eq!(
            self.header("content-length"),
            Some(self.body.len().to_string())
        );
        let problem = self.json();
        assert_eq!(problem["status"], status.as_u16());
        problem
    }
}

async fn collect<B>(res: Response<B>) -> Reply
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = res.into_parts();
    let collected = tokio::time::timeout(HANG_GUARD, body.collect())
        .await
        .expect("response body hung")
        .expect("response body failed");
    Reply {
        status: parts.status,
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    }
}

/// A transform layer over a recording inner service.
struct Stack {
    inner: Inner,
    svc: Svc,
    handle: TransformHandle,
}

impl Stack {
    async fn send(&self, req: Request<Body>) -> Reply {
        let res = tokio::time::timeout(HANG_GUARD, self.svc.clone().oneshot(req))
            .await
            .expect("the transform hung")
            .unwrap();
        collect(res).await
    }

    /// Sends `req`, expects the inner service's 200, returns what it saw.
    async fn pass(&self, req: Request<Body>) -> Seen {
        let before = self.inner.calls();
        let reply = self.send(req).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(self.inner.calls(), before + 1);
        self.inner.last()
    }
}

fn stack(rules: Rules) -> Stack {
    stack_with(rules, default_response)
}

fn stack_with(
    rules: Rules,
    respond: impl Fn(&Seen) -> Response<Body> + Send + Sync + 'static,
) -> Stack {
    let layer = TransformLayer::new(rules).expect("valid rules");
    let inner = Inner::new(respond);
    Stack {
        svc: layer.layer(inner.service()),
        handle: layer.handle(),
        inner,
    }
}

fn one(set: RuleSet) -> Rules {
    Rules::new().set(set)
}

fn req(method: Method, uri: &str, headers: &[(&str, &str)], body: Body) -> Request<Body> {
    let mut r = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        r = r.header(*name, *value);
    }
    r.body(body).unwrap()
}

fn get(uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    req(Method::GET, uri, headers, empty())
}

/// A `POST` with a JSON body, `Content-Type` and `Content-Length`.
fn post_json(uri: &str, json: &str) -> Request<Body> {
    let len = json.len().to_string();
    req(
        Method::POST,
        uri,
        &[
            ("content-type", "application/json"),
            ("content-length", &len),
        ],
        full(json.to_owned()),
    )
}

/// A response with this content type and body, and its `Content-Length`.
fn respond_with(
    content_type: &'static str,
    body: &'static str,
) -> impl Fn(&Seen) -> Response<Body> + Send + Sync + 'static {
    move |_| {
        Response::builder()
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, body.len())
            .header("x-inner", "1")
            .body(full(body))
            .unwrap()
    }
}

fn is_v4_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    let dashes = [8, 13, 18, 23];
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| {
            if dashes.contains(&i) {
                *c == b'-'
            } else {
                c.is_ascii_digit() || (b'a'..=b'f').contains(c)
            }
        })
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

// === 1. header rules ===

#[tokio::test]
async fn header_remove_drops_every_value_case_insensitively() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.headers.remove("x-debug").remove("X-Trace");
    })));
    let seen = s
        .pass(get(
            "/",
            &[
                ("x-debug", "1"),
                ("x-debug", "2"),
                ("x-trace", "t"),
                ("x-keep", "k"),
            ],
        ))
        .await;
    assert!(!seen.headers.contains_key("x-debug"));
    assert!(!seen.headers.contains_key("x-trace"));
    assert_eq!(seen.all("x-keep"), ["k"]);
}

#[tokio::test]
async fn header_rename_moves_every_value_and_replaces_the_target() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.headers
            .rename("x-user", "x-forwarded-user")
            .rename("x-single", "x-target")
            .rename("x-missing", "x-keep");
    })));
    let seen = s
        .pass(get(
            "/",
            &[
                ("x-user", "a"),
                ("x-user", "b"),
                ("x-forwarded-user", "old"),
                ("x-single", "s"),
                ("x-target", "t1"),
                ("x-target", "t2"),
                ("x-keep", "k"),
            ],
        ))
        .await;
    // Multi-valued: every value moves, in order; what `to` had is gone.
    assert_eq!(seen.all("x-forwarded-user"), ["a", "b"]);
    assert!(!seen.headers.contains_key("x-user"));
    // Single-valued: replaces both of `to`'s values.
    assert_eq!(seen.all("x-target"), ["s"]);
    assert!(!seen.headers.contains_key("x-single"));
    // Renaming an absent header leaves `to` alone.
    assert_eq!(seen.all("x-keep"), ["k"]);
}

#[tokio::test]
async fn header_replace_only_if_present() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.headers.replace("x-a", "new").replace("x-b", "new");
    })));
    let seen = s.pass(get("/", &[("x-a", "old"), ("x-a", "old2")])).await;
    assert_eq!(seen.all("x-a"), ["new"], "every value replaced by one");
    assert!(!seen.headers.contains_key("x-b"), "absent: not added");
}

#[tokio::test]
async fn header_add_only_if_absent() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.headers.add("x-a", "new").add("x-b", "new");
    })));
    let seen = s.pass(get("/", &[("x-a", "old")])).await;
    assert_eq!(seen.all("x-a"), ["old"]);
    assert_eq!(seen.all("x-b"), ["new"]);
}

#[tokio::test]
async fn header_append_whether_or_not_present() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.headers.append("x-a", "2").append("x-b", "1");
    })));
    let seen = s.pass(get("/", &[("x-a", "1")])).await;
    assert_eq!(seen.all("x-a"), ["1", "2"]);
    assert_eq!(seen.all("x-b"), ["1"]);
}

fn fixed_order_set() -> RuleSet {
    RuleSet::named("order").request(|r| {
        r.headers
            // Written in reverse of the order they apply in.
            .append("x-e", "appended")
            .add("x-c", "added")
            .add("x-b", "added")
            .add("x-x", "new")
            .replace("x-c", "replaced")
            .replace("x-b", "replaced")
            .rename("x-a", "x-b")
            .remove("x-e")
            .remove("x-x");
    })
}

/// remove → rename → replace → add → append, whatever order the rules were
/// written in.
async fn assert_fixed_order(s: &Stack) {
    // All present.
    let seen = s
        .pass(get(
            "/",
            &[
                ("x-x", "old"),
                ("x-a", "from-a"),
                ("x-c", "c"),
                ("x-e", "old-e"),
            ],
        ))
        .await;
    // remove X then add X: X ends up with the new value.
    assert_eq!(seen.all("x-x"), ["new"]);
    // rename a → b, then replace b: b is replaced, add b does not fire.
    assert_eq!(seen.all("x-b"), ["replaced"]);
    assert!(!seen.headers.contains_key("x-a"));
    // replace (present) fires before add (which then does not).
    assert_eq!(seen.all("x-c"), ["replaced"]);
    // remove then append: only the appended value.
    assert_eq!(seen.all("x-e"), ["appended"]);

    // All absent.
    let seen = s.pass(get("/", &[])).await;
    assert_eq!(seen.all("x-x"), ["new"]);
    // replace does not fire (absent), add then does.
    assert_eq!(seen.all("x-b"), ["added"]);
    assert_eq!(seen.all("x-c"), ["added"]);
    assert_eq!(seen.all("x-e"), ["appended"]);
}

#[tokio::test]
async fn header_rules_apply_in_fixed_order() {
    assert_fixed_order(&stack(one(fixed_order_set()))).await;
}

#[tokio::test]
async fn header_rename_then_add_does_not_fire_when_rename_produced_the_header() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.headers.add("x-b", "added").rename("x-a", "x-b");
    })));
    let seen = s.pass(get("/", &[("x-a", "renamed")])).await;
    assert_eq!(seen.all("x-b"), ["renamed"]);
    let seen = s.pass(get("/", &[])).await;
    assert_eq!(seen.all("x-b"), ["added"]);
}

#[tokio::test]
async fn header_fixed_order_from_toml_written_backwards() {
    let rules: Rules = toml::from_str(
        r#"
        [[sets]]
        name = "order"
        request.headers.append = [{ name = "x-e", value = "appended" }]
        request.headers.add = [
            { name = "x-c", value = "added" },
            { name = "x-b", value = "added" },
            { name = "x-x", value = "new" },
        ]
        request.headers.replace = [
            { name = "x-c", value = "replaced" },
            { name = "x-b", value = "replaced" },
        ]
        request.headers.rename = [{ from = "x-a", to = "x-b" }]
        request.headers.remove = ["x-e", "x-x"]
        "#,
    )
    .unwrap();
    assert_eq!(rules, one(fixed_order_set()));
    assert_fixed_order(&stack(rules)).await;
}

#[tokio::test]
async fn header_templates_read_the_request_as_the_set_found_it() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.headers
            .rename("x-a", "x-b")
            .replace("x-b", "{header.x-b}-replaced")
            .add("x-copy", "{header.x-a}");
    })));
    let seen = s.pass(get("/", &[("x-a", "1"), ("x-b", "old")])).await;
    // The templates saw x-a and x-b before the rename.
    assert_eq!(seen.all("x-b"), ["old-replaced"]);
    assert_eq!(seen.all("x-copy"), ["1"]);
}

#[tokio::test]
async fn response_header_rules_apply_in_fixed_order() {
    let s = stack_with(
        one(RuleSet::new().response(|r| {
            r.headers
                .append("via", "switchyard")
                .add("x-frame-options", "DENY")
                .add("x-cache", "gateway")
                .replace("server", "switchyard")
                .replace("x-absent", "no")
                .rename("x-old", "x-new")
                .remove("x-internal")
                .remove("x-gone")
                .add("x-gone", "re-added");
        })),
        |_| {
            Response::builder()
                .header("server", "inner/1.0")
                .header("x-internal", "secret")
                .header("x-old", "1")
                .header("x-old", "2")
                .header("x-cache", "hit")
                .header("x-gone", "old")
                .header("via", "1.1 inner")
                .body(full("inner"))
                .unwrap()
        },
    );
    let reply = s.send(get("/", &[])).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "inner");
    let h = &reply.headers;
    assert!(!h.contains_key("x-internal"));
    assert_eq!(values(h, "x-new"), ["1", "2"]);
    assert!(!h.contains_key("x-old"));
    assert_eq!(values(h, "server"), ["switchyard"]);
    assert!(!h.contains_key("x-absent"));
    assert_eq!(values(h, "x-frame-options"), ["DENY"]);
    assert_eq!(values(h, "x-cache"), ["hit"]);
    assert_eq!(values(h, "x-gone"), ["re-added"]);
    assert_eq!(values(h, "via"), ["1.1 inner", "switchyard"]);
}

#[tokio::test]
async fn response_header_templates_read_the_request_as_it_was_sent_on() {
    let s = stack(one(RuleSet::new()
        .request(|r| {
            r.headers.add("x-request-id", "{uuid}");
            r.method("POST");
        })
        .response(|r| {
            r.headers
                .add("x-request-id", "{header.x-request-id}")
                .add("x-sent-method", "{method}");
        })));
    let reply = s.send(get("/", &[])).await;
    let seen = s.inner.last();
    let id = seen.header("x-request-id").unwrap();
    assert!(is_v4_uuid(&id), "{id}");
    assert_eq!(reply.header("x-request-id"), Some(id));
    assert_eq!(reply.header("x-sent-method").as_deref(), Some("POST"));

    // A header the request rules removed is missing for the response's.
    let s = stack(one(RuleSet::new()
        .request(|r| {
            r.headers.remove("x-user");
        })
        .response(|r| {
            r.headers
                .add("x-user-echo", "{header.x-user}")
                .add("x-kept-echo", "{header.x-kept}");
        })));
    let reply = s.send(get("/", &[("x-user", "u"), ("x-kept", "k")])).await;
    assert!(!reply.headers.contains_key("x-user-echo"));
    assert_eq!(reply.header("x-kept-echo").as_deref(), Some("k"));
}

// === 2. path and query ===

#[tokio::test]
async fn strip_prefix_is_segment_wise() {
    for prefix in ["/api", "/api/"] {
        let s = stack(one(RuleSet::new().request(|r| {
            r.path.strip_prefix(prefix);
        })));
        for (from, to) in [
            ("/api", "/"),
            ("/api/", "/"),
            ("/api/users", "/users"),
            ("/api/users/42/", "/users/42/"),
            ("/api?x=1", "/?x=1"),
            ("/apix", "/apix"),
            ("/apix/users", "/apix/users"),
            ("/v1/api", "/v1/api"),
            ("/", "/"),
        ] {
            let seen = s.pass(get(from, &[])).await;
            assert_eq!(seen.path_and_query(), to, "{prefix}: {from}");
        }
    }
}

#[tokio::test]
async fn path_regex_with_numbered_and_named_groups() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.path.regex(
            "^/users/(\\d+)/posts/(?<post>\\d+)$",
            "/v2/u/$1/p/${post}/$$",
        );
    })));
    let seen = s.pass(get("/users/42/posts/7?x=1", &[])).await;
    assert_eq!(seen.path_and_query(), "/v2/u/42/p/7/$?x=1");
    // No match: the path is left alone.
    let seen = s.pass(get("/users/x/posts/7", &[])).await;
    assert_eq!(seen.path_and_query(), "/users/x/posts/7");

    // Only the first match is replaced; the rest of the path stays.
    let s = stack(one(RuleSet::new().request(|r| {
        r.path.regex("a", "o");
    })));
    assert_eq!(
        s.pass(get("/banana", &[])).await.path_and_query(),
        "/bonana"
    );

    // A replacement without a leading slash still makes an absolute path.
    let s = stack(one(RuleSet::new().request(|r| {
        r.path.regex("^/(.*)$", "$1");
    })));
    assert_eq!(s.pass(get("/abc", &[])).await.path_and_query(), "/abc");
}

#[tokio::test]
async fn path_rules_apply_strip_then_regex_then_add_prefix() {
    let s = stack(one(RuleSet::new().request(|r| {
        // Written backwards; the regex matches the stripped path only.
        r.path
            .add_prefix("/v2")
            .regex("^/users/(\\d+)$", "/u/$1")
            .strip_prefix("/api");
    })));
    let seen = s.pass(get("/api/users/42?x=1", &[])).await;
    assert_eq!(seen.path_and_query(), "/v2/u/42?x=1");
    // Without the prefix the regex still applies, then the prefix is added.
    let seen = s.pass(get("/users/42", &[])).await;
    assert_eq!(seen.path_and_query(), "/v2/u/42");
    let seen = s.pass(get("/api", &[])).await;
    assert_eq!(seen.path_and_query(), "/v2/");

    // A trailing slash on add_prefix does not double the slash.
    let s = stack(one(RuleSet::new().request(|r| {
        r.path.add_prefix("/v2/");
    })));
    assert_eq!(
        s.pass(get("/users", &[])).await.path_and_query(),
        "/v2/users"
    );
}

#[tokio::test]
async fn path_percent_encoding_is_preserved() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.path.strip_prefix("/api");
    })));
    let seen = s.pass(get("/api/a%20b/c%2Fd?q=%2F", &[])).await;
    assert_eq!(seen.path_and_query(), "/a%20b/c%2Fd?q=%2F");

    // Regex captures are the raw, encoded text.
    let s = stack(one(RuleSet::new().request(|r| {
        r.path.regex("^/files/(.+)$", "/f/$1");
    })));
    let seen = s.pass(get("/files/a%20b/%C3%A9", &[])).await;
    assert_eq!(seen.path_and_query(), "/f/a%20b/%C3%A9");
}

#[tokio::test]
async fn add_prefix_templates_are_percent_encoded_except_path_captures() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.path
            .regex("^/files/(.+)$", "/$1")
            .add_prefix("/t/{header.x-tenant}/{path.1}");
    })));
    let seen = s
        .pass(get("/files/a%20b", &[("x-tenant", "acme corp?#")]))
        .await;
    assert_eq!(seen.path_and_query(), "/t/acme%20corp%3F%23/a%20b/a%20b");
    // A value with a `/` would be one segment here and two to an upstream
    // that decodes `%2F`: refused, as the gateway refuses `%2F` from
    // clients (issue 16; it was encoded as `%2F` and sent on).
    let reply = s
        .send(get("/files/a%20b", &[("x-tenant", "acme corp/eu")]))
        .await;
    reply.assert_problem(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn rewritten_paths_cannot_walk() {
    // A template value of `.` or `..` in a prefix is refused, not stepped.
    let s = stack(one(RuleSet::new().request(|r| {
        r.path.add_prefix("/t/{header.x-tenant}");
    })));
    for tenant in ["..", ".", "%2e%2e"] {
        let reply = s.send(get("/users", &[("x-tenant", tenant)])).await;
        if tenant.starts_with('%') {
            // `%` is data in a value: encoded, `%252e%252e` is a name.
            assert_eq!(reply.status, StatusCode::OK, "{tenant}");
            continue;
        }
        reply.assert_problem(StatusCode::BAD_REQUEST);
    }
    // `;` in a value is encoded: `..;` is no `..` to a Tomcat upstream.
    let seen = s.pass(get("/users", &[("x-tenant", "..;")])).await;
    assert_eq!(seen.path_and_query(), "/t/..%3B/users");
    let seen = s.pass(get("/users", &[("x-tenant", "acme")])).await;
    assert_eq!(seen.path_and_query(), "/t/acme/users");
    // A path that climbs out of the added prefix is refused.
    let reply = s.send(get("/../../admin", &[("x-tenant", "acme")])).await;
    reply.assert_problem(StatusCode::BAD_REQUEST);

    // What a regex makes is resolved again before it goes on.
    let s = stack(one(RuleSet::new().request(|r| {
        r.path.regex("^/files/(.+)$", "/store/$1/../index");
    })));
    let seen = s.pass(get("/files/a", &[])).await;
    assert_eq!(seen.path_and_query(), "/store/index");
}

#[tokio::test]
async fn query_rules_remove_rename_replace_add() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.query
            .add("lang", "en")
            .add("search", "never")
            .replace("page", "1")
            .replace("absent", "x")
            .rename("q", "search")
            .remove("debug");
    })));
    // Untouched parameters keep their exact bytes; `page` folds into one at
    // the first one's place; `search` exists after the rename, so its add
    // does not fire; `lang` is added at the end.
    let seen = s
        .pass(get(
            "/p?keep=a%2Fb+c&debug=1&q=blue%20sky&page=3&raw=%7e&page=4&debug",
            &[],
        ))
        .await;
    assert_eq!(
        seen.path_and_query(),
        "/p?keep=a%2Fb+c&search=blue%20sky&page=1&raw=%7e&lang=en"
    );
    // Names are compared percent-decoded.
    let seen = s.pass(get("/p?%71=1&%64ebug=2", &[])).await;
    assert_eq!(seen.path_and_query(), "/p?search=1&lang=en");
    // Without `q`, nothing was renamed to `search`: both adds fire.
    let seen = s.pass(get("/p", &[])).await;
    assert_eq!(seen.path_and_query(), "/p?lang=en&search=never");

    // Removing every parameter drops the `?`.
    let s = stack(one(RuleSet::new().request(|r| {
        r.query.remove("debug");
    })));
    assert_eq!(
        s.pass(get("/p?debug=1&debug", &[])).await.path_and_query(),
        "/p"
    );
}

#[tokio::test]
async fn query_template_values_are_percent_encoded() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.query
            .add("who", "{header.x-who}")
            .replace("q", "{query.q}-{header.x-who}");
    })));
    let seen = s.pass(get("/s?q=x%2By", &[("x-who", "a b&c=d/é")])).await;
    assert_eq!(
        seen.path_and_query(),
        "/s?q=x%2By-a%20b%26c%3Dd/%C3%A9&who=a%20b%26c%3Dd/%C3%A9"
    );
    // The encoded values decode back to the header.
    let who = seen.uri.query().unwrap().split('&').nth(1).unwrap();
    assert_eq!(decode_component(&who["who=".len()..]), "a b&c=d/é");
}

/// The literal text of a query value is text, percent-encoded like
/// template values (a space must not turn every request into a 400).
#[tokio::test]
async fn query_value_literals_are_checked_or_encoded() {
    for (value, expected) in [("en us", "en us"), ("{method} <x>", "GET <x>")] {
        let rules = one(RuleSet::new().request(|r| {
            r.query.add("lang", value);
        }));
        match TransformLayer::new(rules.clone()) {
            Err(err) => assert_eq!(err.at(), "sets[0].request.query.add[0]", "{err}"),
            Ok(_) => {
                let s = stack(rules);
                let reply = s.send(get("/p", &[])).await;
                assert_eq!(reply.status, StatusCode::OK, "{value:?}: {reply:?}");
                let seen = s.inner.last();
                let raw = seen.uri.query().unwrap().strip_prefix("lang=").unwrap();
                assert_eq!(decode_component(raw), expected);
            }
        }
    }
}

#[tokio::test]
async fn path_rules_keep_the_query_and_query_rules_keep_the_path() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.path.strip_prefix("/api");
    })));
    assert_eq!(
        s.pass(get("/api/x?b=2&a=1&&c", &[])).await.path_and_query(),
        "/x?b=2&a=1&&c"
    );
    let s = stack(one(RuleSet::new().request(|r| {
        r.query.add("a", "1");
    })));
    assert_eq!(
        s.pass(get("/a%20b/c?z=%7E", &[])).await.path_and_query(),
        "/a%20b/c?z=%7E&a=1"
    );
}

// === 3. method and host ===

#[tokio::test]
async fn method_override() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.method("PATCH");
    })));
    let seen = s.pass(get("/x", &[])).await;
    assert_eq!(seen.method, Method::PATCH);
    assert_eq!(seen.path_and_query(), "/x");
}

#[tokio::test]
async fn host_rewrite_sets_the_host_header_and_absolute_form_authority() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.host("backend.internal:8443");
    })));
    // Origin-form: the Host header, the URI stays as it is.
    let seen = s.pass(get("/x?y=1", &[("host", "public.example")])).await;
    assert_eq!(seen.all("host"), ["backend.internal:8443"]);
    assert_eq!(seen.uri, "/x?y=1");
    assert!(seen.uri.authority().is_none());

    // Absolute-form: the authority too, scheme, path and query kept.
    let seen = s
        .pass(get(
            "http://public.example/x?y=1",
            &[("host", "public.example")],
        ))
        .await;
    assert_eq!(seen.uri, "http://backend.internal:8443/x?y=1");
    assert_eq!(seen.all("host"), ["backend.internal:8443"]);

    // Combined with a path rewrite.
    let s = stack(one(RuleSet::new().request(|r| {
        r.host("backend");
        r.path.strip_prefix("/api");
    })));
    let seen = s
        .pass(get("https://public.example:443/api/v?z=1", &[]))
        .await;
    assert_eq!(seen.uri, "https://backend/v?z=1");
    assert_eq!(seen.all(HOST.as_str()), ["backend"]);
}

// === 4. JSON request bodies ===

#[tokio::test]
async fn json_body_rules_rewrite_keep_key_order_and_fix_content_length() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.body
            .set("/meta/source", "gateway")
            .set("/user/name", "{header.x-user}")
            .rename("/legacy_id", "/id")
            .remove("/user/password");
    })));
    let body = r#"{"z":1,"user":{"name":"a","password":"p"},"a":2,"legacy_id":7}"#;
    let seen = s
        .pass(
            Request::post("/")
                .header("content-type", "application/json")
                .header("content-length", body.len())
                .header("x-user", "alice")
                .body(full(body))
                .unwrap(),
        )
        .await;
    let expected = r#"{"z":1,"user":{"name":"alice"},"a":2,"id":7,"meta":{"source":"gateway"}}"#;
    assert_eq!(seen.body, expected);
    assert!(!seen.streamed);
    assert_eq!(seen.all("content-length"), [expected.len().to_string()]);
    assert!(!seen.headers.contains_key(TRANSFER_ENCODING));
    assert_eq!(s.handle.stats().request_bodies_rewritten, 1);
}

#[tokio::test]
async fn json_body_rules_apply_remove_then_rename_then_set() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.body
            // set after remove: the field is there.
            .set("/x", "set")
            .remove("/x")
            // rename after remove: `b` gets `a`'s value.
            .rename("/a", "/b")
            .remove("/b")
            // set after rename: `c` is new, `d` holds the old `c`.
            .set("/c", "new")
            .rename("/c", "/d");
    })));
    let seen = s
        .pass(post_json("/", r#"{"x":0,"a":"A","b":"B","c":"C"}"#))
        .await;
    // Removed and renamed fields leave their place; moved and set ones
    // that were not there go at the end.
    assert_eq!(seen.body, r#"{"b":"A","d":"C","x":"set","c":"new"}"#);
}

#[tokio::test]
async fn json_body_set_templates_nested_and_creates_parents() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.body.set(
            "/a/b/c",
            json!({
                "user": "{identity.id}",
                "tags": ["{method}", "fixed", 3, {"q": "{query.q}"}],
                "braces": "{{not a template}}",
                "n": null,
            }),
        );
        r.body.set("/list/-", "{header.x-item}");
        r.body.set("/list/0", "first");
    })));
    let mut request = post_json("/?q=a%20b", r#"{"list":["zero"],"a":{"keep":true}}"#);
    request
        .headers_mut()
        .insert("x-item", "item".parse().unwrap());
    request.extensions_mut().insert(Identity::new("u-1"));
    let seen = s.pass(request).await;
    assert_eq!(
        seen.json(),
        json!({
            "list": ["first", "item"],
            "a": {"keep": true, "b": {"c": {
                "user": "u-1",
                "tags": ["POST", "fixed", 3, {"q": "a b"}],
                "braces": "{not a template}",
                "n": null,
            }}},
        })
    );
    // Key order of the rendered object is the rule's.
    let text = String::from_utf8(seen.body.to_vec()).unwrap();
    let order: Vec<_> = ["\"user\"", "\"tags\"", "\"braces\"", "\"n\""]
        .iter()
        .map(|k| text.find(k).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
}

#[tokio::test]
async fn json_body_key_order_is_preserved() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.body.set("/b", "x").remove("/y");
    })));
    let seen = s
        .pass(post_json(
            "/",
            r#"{"zz":1,"b":2,"y":0,"aa":{"z":1,"a":2},"c":3}"#,
        ))
        .await;
    assert_eq!(seen.body, r#"{"zz":1,"b":"x","aa":{"z":1,"a":2},"c":3}"#);

    // Renaming or removing a missing field changes nothing else.
    let s = stack(one(RuleSet::new().request(|r| {
        r.body.rename("/missing", "/b").remove("/nope/deeper");
    })));
    let seen = s.pass(post_json("/", r#"{"b":1,"a":[1,2]}"#)).await;
    assert_eq!(seen.body, r#"{"b":1,"a":[1,2]}"#);
}

#[tokio::test]
async fn json_body_of_a_chunked_request_gets_content_length_not_transfer_encoding() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.body.set("/added", true);
    })));
    let seen = s
        .pass(req(
            Method::POST,
            "/",
            &[
                ("content-type", "application/json; charset=utf-8"),
                ("transfer-encoding", "chunked"),
            ],
            chunks(&["{\"a\":", " 1", "}"]),
        ))
        .await;
    assert_eq!(seen.body, r#"{"a":1,"added":true}"#);
    assert!(!seen.headers.contains_key(TRANSFER_ENCODING));
    assert_eq!(seen.all("content-length"), [seen.body.len().to_string()]);
}

#[tokio::test]
async fn json_body_keeps_request_trailers() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.body.set("/b", 2);
    })));
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    let seen = s
        .pass(req(
            Method::POST,
            "/",
            &[("content-type", "application/json")],
            with_trailers(r#"{"a":1}"#, trailers.clone()),
        ))
        .await;
    assert_eq!(seen.body, r#"{"a":1,"b":2}"#);
    assert_eq!(seen.trailers, Some(trailers));
}

#[tokio::test]
async fn json_body_other_json_media_types_are_rewritten() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.body.set("/b", 2);
    })));
    for ct in [
        "application/merge-patch+json",
        "Application/JSON; charset=utf-8",
    ] {
        let seen = s
            .pass(req(
                Method::PATCH,
                "/",
                &[("content-type", ct), ("content-encoding", "identity")],
                full(r#"{"a":1}"#),
            ))
            .await;
        assert_eq!(seen.body, r#"{"a":1,"b":2}"#, "{ct}");
    }
}

#[tokio::test]
async fn invalid_json_request_is_a_400_problem() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.body.set("/a", 1);
    })));
    let reply = s.send(post_json("/", "{nope")).await;
    let problem = reply.assert_problem(StatusCode::BAD_REQUEST);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .starts_with("the request body is not valid JSON"),
        "{problem}"
    );
    assert_eq!(s.inner.calls(), 0);
    assert_eq!(s.handle.stats().rejected_invalid_json, 1);
}

#[tokio::test]
async fn oversize_json_request_is_a_413() {
    let rules = || {
        one(RuleSet::new().request(|r| {
            r.body.set("/a", 1);
        }))
        .body_limit(16)
    };
    let s = stack(rules());
    // By Content-Length: refused without reading the body (which never
    // ends).
    let reply = s
        .send(req(
            Method::POST,
            "/",
            &[
                ("content-type", "application/json"),
                ("content-length", "17"),
            ],
            Never.boxed_unsync(),
        ))
        .await;
    let problem = reply.assert_problem(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(problem["limit"], 16);

    // By the body's exact size hint, without Content-Length.
    let reply = s
        .send(req(
            Method::POST,
            "/",
            &[("content-type", "application/json")],
            full(r#"{"a":"123456789"}"#),
        ))
        .await;
    reply.assert_problem(StatusCode::PAYLOAD_TOO_LARGE);

    // Streamed, without Content-Length or size hint: read up to the limit.
    let reply = s
        .send(req(
            Method::POST,
            "/",
            &[("content-type", "application/json")],
            chunks(&["{\"a\":", "\"0123456789", "0123456789\"}"]),
        ))
        .await;
    reply.assert_problem(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(s.inner.calls(), 0);
    assert_eq!(s.handle.stats().rejected_too_large, 3);

    // Exactly at the limit: rewritten.
    let body = r#"{"a":"12345678"}"#;
    assert_eq!(body.len(), 16);
    let seen = s.pass(post_json("/", body)).await;
    assert_eq!(seen.body, r#"{"a":1}"#);
    let seen = s
        .pass(req(
            Method::POST,
            "/",
            &[("content-type", "application/json")],
            chunks(&["{\"a\":", "\"12345678\"}"]),
        ))
        .await;
    assert_eq!(seen.body, r#"{"a":1}"#);
}

#[tokio::test]
async fn non_json_request_is_skipped_with_skip() {
    // Refused by default (`non_json_request_is_a_415_by_default`); the
    // opt-out streams it through.
    let s = stack(
        one(RuleSet::new().request(|r| {
            r.body.set("/a", 1);
            r.headers.add("x-rewritten", "yes");
        }))
        .non_json(NonJson::Skip),
    );
    for headers in [
        vec![("content-type", "text/plain")],
        vec![],
        vec![
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
    ] {
        let seen = s
            .pass(req(
                Method::POST,
                "/",
                &headers,
                full("{\"a\": 0 } not json"),
            ))
            .await;
        assert_eq!(seen.body, "{\"a\": 0 } not json", "{headers:?}");
        assert!(seen.streamed, "{headers:?}");
        // The other rules still apply.
        assert_eq!(seen.all("x-rewritten"), ["yes"]);
    }
    assert_eq!(s.handle.stats().request_bodies_rewritten, 0);
}

#[tokio::test]
async fn non_json_request_is_a_415_by_default() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.body.set("/a", 1);
    })));
    let reply = s
        .send(req(
            Method::POST,
            "/",
            &[("content-type", "text/plain")],
            full("hello"),
        ))
        .await;
    let problem = reply.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(problem["accept"], "application/json");
    assert!(
        problem["detail"].as_str().unwrap().contains("text/plain"),
        "{problem}"
    );
    let reply = s.send(req(Method::POST, "/", &[], full("hello"))).await;
    let problem = reply.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no Content-Type"),
        "{problem}"
    );
    // JSON that is content-encoded is not JSON text.
    let reply = s
        .send(req(
            Method::POST,
            "/",
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
            full("\x1f\u{8b}..."),
        ))
        .await;
    reply.assert_problem(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(s.inner.calls(), 0);
    assert_eq!(s.handle.stats().rejected_media_type, 3);

    // A request without a body streams through.
    let seen = s.pass(get("/", &[])).await;
    assert!(seen.streamed);
    let seen = s
        .pass(req(Method::POST, "/", &[("content-length", "0")], empty()))
        .await;
    assert!(seen.body.is_empty());
    // JSON is still rewritten.
    let seen = s.pass(post_json("/", "{}")).await;
    assert_eq!(seen.body, r#"{"a":1}"#);
}

#[tokio::test]
async fn body_is_streamed_untouched_when_no_body_rule_applies() {
    let s = stack(
        Rules::new()
            .set(
                RuleSet::named("other route")
                    .when(When::path_prefix("/other"))
                    .request(|r| {
                        r.body.set("/a", 1);
                    }),
            )
            .set(RuleSet::named("missing value").request(|r| {
                // Skipped: the header is missing.
                r.body.set("/b", "{header.x-missing}");
                r.headers.add("x-set", "1");
            })),
    );
    let body = "{ \"x\" : 1 }";
    let seen = s.pass(post_json("/api", body)).await;
    assert!(seen.streamed);
    assert_eq!(seen.body, body);
    assert_eq!(seen.all("content-length"), [body.len().to_string()]);
    assert_eq!(seen.all("x-set"), ["1"]);

    // Even an invalid or a huge body is none of the layer's business.
    let seen = s
        .pass(req(
            Method::POST,
            "/api",
            &[("content-type", "application/json")],
            chunks(&["{nope", &"x".repeat(2 * 1024 * 1024)]),
        ))
        .await;
    assert!(seen.streamed);
    assert_eq!(seen.body.len(), 5 + 2 * 1024 * 1024);

    // The first set's route is rewritten.
    let seen = s.pass(post_json("/other", body)).await;
    assert!(!seen.streamed);
    assert_eq!(seen.body, r#"{"x":1,"a":1}"#);
}

#[tokio::test]
async fn request_body_error_is_a_400() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.body.set("/a", 1);
    })));
    let body = Frames(VecDeque::from([
        Ok(Frame::data(Bytes::from_static(b"{\"a\":"))),
        Err::<Frame<Bytes>, BoxError>("connection reset".into()),
    ]))
    .boxed_unsync();
    let reply = s
        .send(req(
            Method::POST,
            "/",
            &[("content-type", "application/json")],
            body,
        ))
        .await;
    reply.assert_problem(StatusCode::BAD_REQUEST);
    assert_eq!(s.inner.calls(), 0);
    assert_eq!(s.handle.stats().rejected_body_error, 1);
}

// === 5. JSON response bodies ===

fn response_body_rules() -> Rules {
    one(RuleSet::new().response(|r| {
        r.body
            .set("/gateway", "switchyard")
            .rename("/name", "/display_name")
            .remove("/internal");
    }))
}

#[tokio::test]
async fn response_json_body_is_rewritten_with_content_length() {
    let s = stack_with(response_body_rules(), |_| {
        Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, "36")
            .header(TRANSFER_ENCODING, "chunked")
            .body(full(r#"{"id":1,"internal":"x","name":"n"}"#))
            .unwrap()
    });
    let reply = s.send(get("/", &[])).await;
    assert_eq!(reply.status, 200);
    let expected = r#"{"id":1,"display_name":"n","gateway":"switchyard"}"#;
    assert_eq!(reply.body, expected);
    assert_eq!(
        values(&reply.headers, "content-length"),
        [expected.len().to_string()]
    );
    assert!(!reply.headers.contains_key(TRANSFER_ENCODING));
    assert_eq!(s.handle.stats().response_bodies_rewritten, 1);
}

#[tokio::test]
async fn response_json_body_streamed_in_chunks_is_rewritten() {
    let s = stack_with(response_body_rules(), |_| {
        Response::builder()
            .header(CONTENT_TYPE, "application/problem+json")
            .body(chunks(&["{\"id\":", "1,\"name\"", ":\"n\"}"]))
            .unwrap()
    });
    let reply = s.send(get("/", &[])).await;
    let expected = r#"{"id":1,"display_name":"n","gateway":"switchyard"}"#;
    assert_eq!(reply.body, expected);
    assert_eq!(
        reply.header("content-length"),
        Some(expected.len().to_string())
    );
}

#[tokio::test]
async fn response_over_the_limit_passes_through_byte_for_byte() {
    let big = r#"{ "name" : "0123456789", "internal": true }"#;
    // By Content-Length.
    let s = stack_with(
        response_body_rules().body_limit(16),
        respond_with("application/json", big),
    );
    let reply = s.send(get("/", &[])).await;
    assert_eq!(reply.body, big);
    assert_eq!(reply.header("content-length"), Some(big.len().to_string()));

    // Streamed, without Content-Length: what was read, then the rest.
    let s = stack_with(response_body_rules().body_limit(16), |_| {
        Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(chunks(&[
                "{ \"name\" : ",
                "\"0123456789\", ",
                "\"internal\": true",
                " }",
            ]))
            .unwrap()
    });
    let reply = s.send(get("/", &[])).await;
    assert_eq!(reply.body, big);
    assert!(!reply.headers.contains_key(CONTENT_LENGTH));
    assert_eq!(s.handle.stats().response_bodies_passed, 1);
    assert_eq!(s.handle.stats().response_bodies_rewritten, 0);
}

#[tokio::test]
async fn invalid_or_non_json_response_passes_through_byte_for_byte() {
    for (ct, body) in [
        ("application/json", "{ \"name\": oops"),
        ("text/plain", r#"{"name":"n","internal":1}"#),
        ("application/jsonx", r#"{"name":"n"}"#),
    ] {
        let s = stack_with(response_body_rules(), respond_with(ct, body));
        let reply = s.send(get("/", &[])).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, body, "{ct}");
        assert_eq!(reply.header("content-length"), Some(body.len().to_string()));
        assert_eq!(reply.header("content-type").as_deref(), Some(ct));
        assert_eq!(s.handle.stats().response_bodies_rewritten, 0);
    }
    // Content-encoded JSON is not JSON text.
    let s = stack_with(response_body_rules(), |_| {
        Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .header("content-encoding", "br")
            .body(full(r#"{"name":"n"}"#))
            .unwrap()
    });
    assert_eq!(s.send(get("/", &[])).await.body, r#"{"name":"n"}"#);
}

#[tokio::test]
async fn response_with_trailers_passes_through() {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let sent = trailers.clone();
    let s = stack_with(response_body_rules(), move |_| {
        Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(with_trailers(r#"{"name":"n"}"#, sent.clone()))
            .unwrap()
    });
    let reply = s.send(get("/", &[])).await;
    assert_eq!(reply.body, r#"{"name":"n"}"#);
    assert_eq!(reply.trailers, Some(trailers));
    assert_eq!(s.handle.stats().response_bodies_passed, 1);
}

#[tokio::test]
async fn response_to_head_and_204_is_not_rewritten() {
    let s = stack_with(
        response_body_rules(),
        respond_with("application/json", r#"{"name":"n"}"#),
    );
    let reply = s.send(req(Method::HEAD, "/", &[], empty())).await;
    assert_eq!(reply.body, r#"{"name":"n"}"#);
    assert_eq!(reply.header("content-length").as_deref(), Some("12"));

    let s = stack_with(response_body_rules(), |_| {
        Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(CONTENT_TYPE, "application/json")
            .body(empty())
            .unwrap()
    });
    let reply = s.send(get("/", &[])).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(reply.body.is_empty());
}

/// Reads the next data frame of `body`, failing on a hang.
async fn next_chunk<B>(body: &mut B) -> Option<Bytes>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    loop {
        let frame = tokio::time::timeout(HANG_GUARD, body.frame())
            .await
            .expect("the next chunk did not arrive")?
            .expect("body error");
        if let Ok(data) = frame.into_data() {
            return Some(data);
        }
    }
}

#[tokio::test]
async fn streaming_response_without_body_rules_passes_chunk_by_chunk() {
    let header_rules = || {
        one(RuleSet::new().response(|r| {
            r.headers.add("x-gateway", "switchyard");
        }))
    };
    for (rules, content_type) in [
        // Response header rules, no body rules.
        (header_rules(), "text/event-stream"),
        // Even a JSON stream is not buffered without body rules.
        (header_rules(), "application/json"),
        // Body rules, but the stream is not JSON.
        (response_body_rules(), "text/event-stream"),
    ] {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Mutex::new(Some(rx));
        let s = stack_with(rules, move |_| {
            Response::builder()
                .header(CONTENT_TYPE, content_type)
                .body(Channel(rx.lock().unwrap().take().unwrap()).boxed_unsync())
                .unwrap()
        });
        let res = tokio::time::timeout(HANG_GUARD, s.svc.clone().oneshot(get("/events", &[])))
            .await
            .expect("the response head did not arrive before the body ended")
            .unwrap();
        assert_eq!(res.status(), 200);
        let mut body = res.into_body();
        for i in 0..3 {
            // Each chunk reaches the client before the next is written.
            let chunk = format!("data: {i}\n\n");
            tx.send(Bytes::from(chunk.clone())).unwrap();
            assert_eq!(next_chunk(&mut body).await.unwrap(), chunk);
        }
        drop(tx);
        assert_eq!(next_chunk(&mut body).await, None);
    }
}

// === 6. templates ===

#[tokio::test]
async fn template_header_joins_several_values() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.headers.add("x-all", "[{header.x-forwarded-for}]");
    })));
    let seen = s
        .pass(get(
            "/",
            &[
                ("x-forwarded-for", "10.0.0.1"),
                ("x-forwarded-for", "10.0.0.2"),
            ],
        ))
        .await;
    assert_eq!(seen.all("x-all"), ["[10.0.0.1, 10.0.0.2]"]);
}

#[tokio::test]
async fn template_query_value_is_decoded() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.headers
            .add("x-q", "{query.q}")
            .add("x-named", "{query.a b}");
    })));
    let seen = s
        .pass(get("/?x=1&q=blue%20sky+x&q=2&a+b=%C3%A9", &[]))
        .await;
    assert_eq!(seen.all("x-q"), ["blue sky x"], "the first value, decoded");
    assert_eq!(seen.all("x-named"), ["é"]);
    let seen = s.pass(get("/?x=1", &[])).await;
    assert!(!seen.headers.contains_key("x-q"));
}

#[tokio::test]
async fn template_path_captures_by_number_and_name() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.path.regex("^/users/(?<id>[^/]+)/(\\w+)$", "/u/$1");
        r.headers
            .add("x-id", "{path.1}")
            .add("x-named", "{path.id}")
            .add("x-kind", "{path.2}")
            .add("x-whole", "{path.0}");
        r.query.add("id", "{path.id}");
    })));
    let seen = s.pass(get("/users/a%20b/posts", &[])).await;
    assert_eq!(seen.path_and_query(), "/u/a%20b?id=a%2520b");
    assert_eq!(seen.all("x-id"), ["a%20b"], "raw, as in the path");
    assert_eq!(seen.all("x-named"), ["a%20b"]);
    assert_eq!(seen.all("x-kind"), ["posts"]);
    assert_eq!(seen.all("x-whole"), ["/users/a%20b/posts"]);
    // No match: the capture values are missing, the rules skipped.
    let seen = s.pass(get("/other", &[])).await;
    assert!(!seen.headers.contains_key("x-id"));
    assert_eq!(seen.path_and_query(), "/other");
}

#[tokio::test]
async fn template_path_captures_read_the_stripped_path() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.path.strip_prefix("/api").regex("^/(\\w+)", "/x");
        r.headers.add("x-first", "{path.1}");
    })));
    let seen = s.pass(get("/api/users/1", &[])).await;
    assert_eq!(seen.all("x-first"), ["users"]);
    assert_eq!(seen.path_and_query(), "/x/1");
}

#[tokio::test]
async fn template_identity() {
    let rules = |on_missing| {
        one(RuleSet::new().on_missing(on_missing).request(|r| {
            r.headers
                .add("x-user", "{identity.id}")
                .add("x-tenant", "{identity.tenant}")
                .add("x-tier", "{identity.tier}");
        }))
    };
    let s = stack(rules(OnMissing::Skip));
    let mut request = get("/", &[]);
    request
        .extensions_mut()
        .insert(Identity::new("u").with_tenant("t"));
    let seen = s.pass(request).await;
    assert_eq!(seen.all("x-user"), ["u"]);
    assert_eq!(seen.all("x-tenant"), ["t"]);
    assert!(!seen.headers.contains_key("x-tier"), "no tier: skipped");

    let mut request = get("/", &[]);
    request
        .extensions_mut()
        .insert(Identity::new("u").with_tenant("t").with_tier("gold"));
    assert_eq!(s.pass(request).await.all("x-tier"), ["gold"]);

    // No identity at all.
    let seen = s.pass(get("/", &[])).await;
    assert!(!seen.headers.contains_key("x-user"));
    let s = stack(rules(OnMissing::Empty));
    let seen = s.pass(get("/", &[])).await;
    assert_eq!(seen.all("x-user"), [""]);
    assert_eq!(seen.all("x-tenant"), [""]);
}

fn target_rules() -> Rules {
    one(RuleSet::new()
        .request(|r| {
            r.headers.add("x-target", "{target}");
            r.body.set("/target", "{target}");
        })
        .response(|r| {
            r.headers.add("x-served-by", "{target}");
        }))
}

#[tokio::test]
async fn template_target_when_the_transform_runs_inside_a_split_target() {
    let layer = TransformLayer::new(target_rules()).unwrap();
    let blue = Inner::new(default_response);
    let green = Inner::new(default_response);
    let split = Split::builder()
        .target("blue", layer.layer(blue.service()), 0)
        .target("green", layer.layer(green.service()), 100)
        .build()
        .unwrap();
    let res = split.oneshot(post_json("/", r#"{"a":1}"#)).await.unwrap();
    let reply = collect(res).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-served-by").as_deref(), Some("green"));
    assert_eq!(blue.calls(), 0);
    let seen = green.last();
    assert_eq!(seen.target, Some("green"));
    assert_eq!(seen.all("x-target"), ["green"]);
    assert_eq!(seen.body, r#"{"a":1,"target":"green"}"#);
}

#[tokio::test]
async fn template_target_is_missing_when_the_split_is_inside_the_transform() {
    let inner = Inner::new(default_response);
    let split = Split::builder()
        .target("blue", inner.service(), 100)
        .build()
        .unwrap();
    let svc = TransformLayer::new(target_rules()).unwrap().layer(split);
    let reply = collect(svc.oneshot(post_json("/", r#"{"a":1}"#)).await.unwrap()).await;
    assert_eq!(reply.status, 200);
    assert!(!reply.headers.contains_key("x-served-by"));
    let seen = inner.last();
    assert_eq!(seen.target, Some("blue"), "the split did record it, later");
    assert!(!seen.headers.contains_key("x-target"));
    assert!(seen.streamed, "the only body rule was skipped");
    assert_eq!(seen.body, r#"{"a":1}"#);
}

#[tokio::test]
async fn template_method_reads_the_request_before_the_override() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.method("POST");
        r.headers.add("x-original-method", "{method}");
        r.query.add("m", "{method}");
    })));
    let seen = s.pass(get("/", &[])).await;
    assert_eq!(seen.method, Method::POST);
    assert_eq!(seen.all("x-original-method"), ["GET"]);
    assert_eq!(seen.path_and_query(), "/?m=GET");
}

#[tokio::test]
async fn template_uuid_is_one_v4_uuid_per_request() {
    let s = stack(one(RuleSet::new()
        .request(|r| {
            r.headers
                .add("x-request-id", "{uuid}")
                .append("x-ids", "{uuid}/{uuid}");
            r.query.add("rid", "{uuid}");
            r.body.set("/rid", "{uuid}");
        })
        .response(|r| {
            r.headers.add("x-request-id", "{uuid}");
        })));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let reply = s.send(post_json("/", "{}")).await;
        let seen = s.inner.last();
        let id = seen.header("x-request-id").unwrap();
        assert!(is_v4_uuid(&id), "{id}");
        assert_eq!(seen.all("x-ids"), [format!("{id}/{id}")]);
        assert_eq!(seen.path_and_query(), format!("/?rid={id}"));
        assert_eq!(seen.json()["rid"], id);
        assert_eq!(reply.header("x-request-id"), Some(id.clone()));
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "a new uuid for every request");

    // One request, several sets: still one uuid.
    let s = stack(
        Rules::new()
            .set(RuleSet::new().request(|r| {
                r.headers.add("x-first", "{uuid}");
            }))
            .set(RuleSet::new().request(|r| {
                r.headers.add("x-second", "{uuid}");
            })),
    );
    let seen = s.pass(get("/", &[])).await;
    assert!(is_v4_uuid(&seen.header("x-first").unwrap()));
    assert_eq!(seen.header("x-first"), seen.header("x-second"));
}

#[tokio::test]
async fn on_missing_skip_or_empty() {
    let rules = |on_missing| {
        one(RuleSet::new().on_missing(on_missing).request(|r| {
            r.headers
                .add("x-h", "pre-{header.x-missing}-post")
                .replace("x-r", "{query.missing}");
            r.query.add("q", "x{header.x-missing}");
            r.path.add_prefix("/p{header.x-missing}");
            r.body.set("/b", json!(["{identity.id}", 1]));
        }))
    };
    let s = stack(rules(OnMissing::Skip));
    let seen = s
        .pass(req(
            Method::POST,
            "/x",
            &[("content-type", "application/json"), ("x-r", "kept")],
            full("{}"),
        ))
        .await;
    assert!(!seen.headers.contains_key("x-h"));
    assert_eq!(seen.all("x-r"), ["kept"]);
    assert_eq!(seen.path_and_query(), "/x");
    assert!(seen.streamed, "the only body rule was skipped");
    assert_eq!(seen.body, "{}");

    let s = stack(rules(OnMissing::Empty));
    let seen = s
        .pass(req(
            Method::POST,
            "/x",
            &[("content-type", "application/json"), ("x-r", "kept")],
            full("{}"),
        ))
        .await;
    assert_eq!(seen.all("x-h"), ["pre--post"]);
    assert_eq!(seen.all("x-r"), [""]);
    assert_eq!(seen.path_and_query(), "/p/x?q=x");
    assert_eq!(seen.body, r#"{"b":["",1]}"#);
}

#[tokio::test]
async fn template_values_that_cannot_be_header_values_count_as_missing() {
    let rules = |on_missing| {
        one(RuleSet::new().on_missing(on_missing).request(|r| {
            r.headers.add("x-q", "{query.q}");
        }))
    };
    let s = stack(rules(OnMissing::Skip));
    let seen = s.pass(get("/?q=a%0D%0Ab", &[])).await;
    assert!(!seen.headers.contains_key("x-q"));
    let s = stack(rules(OnMissing::Empty));
    let seen = s.pass(get("/?q=a%0D%0Ab", &[])).await;
    assert_eq!(seen.all("x-q"), [""]);
}

#[tokio::test]
async fn literal_braces() {
    let s = stack(one(RuleSet::new().request(|r| {
        r.headers
            .add("x-b", "{{literal}}")
            .add("x-m", "{{{method}}}");
    })));
    let seen = s.pass(get("/", &[])).await;
    assert_eq!(seen.all("x-b"), ["{literal}"]);
    assert_eq!(seen.all("x-m"), ["{GET}"]);
}

// === 7. conditions ===

fn marker(when: When) -> RuleSet {
    RuleSet::new().when(when).request(|r| {
        r.headers.add("x-matched", "1");
    })
}

async fn matched(s: &Stack, request: Request<Body>) -> bool {
    s.pass(request).await.headers.contains_key("x-matched")
}

#[tokio::test]
async fn when_methods() {
    let s = stack(one(marker(When::methods(["POST", "PUT"]))));
    assert!(matched(&s, req(Method::POST, "/", &[], empty())).await);
    assert!(matched(&s, req(Method::PUT, "/", &[], empty())).await);
    assert!(!matched(&s, get("/", &[])).await);
}

#[tokio::test]
async fn when_path_prefix_is_segment_wise() {
    let s = stack(one(marker(When::path_prefix("/api"))));
    for (path, hit) in [
        ("/api", true),
        ("/api/", true),
        ("/api/users?x=1", true),
        ("/apix", false),
        ("/apis/users", false),
        ("/v1/api", false),
        ("/", false),
    ] {
        assert_eq!(matched(&s, get(path, &[])).await, hit, "{path}");
    }
}

#[tokio::test]
async fn when_header_present_equals_absent() {
    let s = stack(one(marker(
        When::default().and_header(HeaderMatch::present("x-a")),
    )));
    assert!(matched(&s, get("/", &[("x-a", "")])).await);
    assert!(!matched(&s, get("/", &[])).await);

    let s = stack(one(marker(
        When::default().and_header(HeaderMatch::equals("X-Client", "legacy")),
    )));
    assert!(matched(&s, get("/", &[("x-client", "legacy")])).await);
    assert!(
        matched(
            &s,
            get("/", &[("x-client", "modern"), ("x-client", "legacy")])
        )
        .await,
        "some value equals"
    );
    assert!(!matched(&s, get("/", &[("x-client", "Legacy")])).await);
    assert!(!matched(&s, get("/", &[])).await);

    let s = stack(one(marker(
        When::default().and_header(HeaderMatch::absent("x-a")),
    )));
    assert!(!matched(&s, get("/", &[("x-a", "1")])).await);
    assert!(matched(&s, get("/", &[])).await);
}

#[tokio::test]
async fn when_every_part_must_hold() {
    let s = stack(one(marker(
        When::path_prefix("/api")
            .and_methods(["POST"])
            .and_header(HeaderMatch::equals("x-client", "legacy"))
            .and_header(HeaderMatch::absent("x-skip")),
    )));
    let ok = || req(Method::POST, "/api/x", &[("x-client", "legacy")], empty());
    assert!(matched(&s, ok()).await);
    assert!(
        !matched(
            &s,
            req(Method::GET, "/api/x", &[("x-client", "legacy")], empty())
        )
        .await
    );
    assert!(
        !matched(
            &s,
            req(Method::POST, "/x", &[("x-client", "legacy")], empty())
        )
        .await
    );
    assert!(!matched(&s, req(Method::POST, "/api/x", &[], empty())).await);
    let mut skip = ok();
    skip.headers_mut().insert("x-skip", "1".parse().unwrap());
    assert!(!matched(&s, skip).await);
}

#[tokio::test]
async fn several_sets_apply_in_order_with_conditions_on_the_original_request() {
    let s = stack(
        Rules::new()
            .set(
                RuleSet::named("strip")
                    .when(When::path_prefix("/api"))
                    .request(|r| {
                        r.path.strip_prefix("/api");
                        r.headers.add("x-set0", "yes").append("x-order", "0");
                        r.method("PUT");
                    }),
            )
            .set(
                // Matches the original path, and reads set 0's changes.
                RuleSet::named("after")
                    .when(When::path_prefix("/api").and_methods(["GET"]))
                    .request(|r| {
                        r.headers
                            .add("x-set1", "{header.x-set0} {method}")
                            .append("x-order", "1");
                        r.path.add_prefix("/v2");
                    }),
            )
            .set(
                // Would match the rewritten path only.
                RuleSet::named("rewritten path")
                    .when(When::path_prefix("/users"))
                    .request(|r| {
                        r.headers.append("x-order", "2");
                    }),
            )
            .set(
                // Would match the header set 0 added only.
                RuleSet::named("added header")
                    .when(When::default().and_header(HeaderMatch::present("x-set0")))
                    .request(|r| {
                        r.headers.append("x-order", "3");
                    }),
            )
            .set(
                // Would match the overridden method only.
                RuleSet::named("overridden method")
                    .when(When::methods(["PUT"]))
                    .request(|r| {
                        r.headers.append("x-order", "4");
                    }),
            )
            .set(RuleSet::named("every request").request(|r| {
                r.headers.append("x-order", "5");
            })),
    );
    let seen = s.pass(get("/api/users", &[])).await;
    assert_eq!(seen.all("x-order"), ["0", "1", "5"]);
    assert_eq!(seen.all("x-set1"), ["yes PUT"]);
    assert_eq!(seen.path_and_query(), "/v2/users");
    assert_eq!(seen.method, Method::PUT);

    let seen = s.pass(get("/users", &[])).await;
    assert_eq!(seen.all("x-order"), ["2", "5"]);
    assert_eq!(seen.path_and_query(), "/users");
}

// === 8. build-time errors ===

fn build_error(rules: Rules) -> TransformError {
    TransformLayer::new(rules).expect_err("the rules should be refused")
}

#[test]
fn build_errors_name_the_rule() {
    let noop = || RuleSet::named("noop");
    let api = |edit: fn(&mut switchyard::transform::RequestRules)| {
        Rules::new()
            .set(noop())
            .set(RuleSet::named("api").request(edit))
    };
    #[allow(clippy::type_complexity)]
    let cases: Vec<(Rules, &str, fn(&TransformError) -> bool, &str)> = vec![
        (
            api(|r| {
                r.headers.add("bad name", "v");
            }),
            r#"sets[1]("api").request.headers.add[0]"#,
            |e| matches!(e, TransformError::HeaderName { name, .. } if name == "bad name"),
            "invalid header name `bad name`",
        ),
        (
            api(|r| {
                r.headers.remove("x-ok").remove("x:bad");
            }),
            r#"sets[1]("api").request.headers.remove[1]"#,
            |e| matches!(e, TransformError::HeaderName { .. }),
            "invalid header name",
        ),
        (
            api(|r| {
                r.headers.rename("x-a", "");
            }),
            r#"sets[1]("api").request.headers.rename[0]"#,
            |e| matches!(e, TransformError::HeaderName { .. }),
            "invalid header name",
        ),
        (
            api(|r| {
                r.headers.append("x-a", "ok").append("x-b", "a\nb");
            }),
            r#"sets[1]("api").request.headers.append[1]"#,
            |e| matches!(e, TransformError::HeaderValue { value, .. } if value == "a\nb"),
            "invalid header value",
        ),
        (
            // The literal parts of a template are checked too.
            api(|r| {
                r.headers.replace("x-a", "{method}\r\n");
            }),
            r#"sets[1]("api").request.headers.replace[0]"#,
            |e| matches!(e, TransformError::HeaderValue { .. }),
            "invalid header value",
        ),
        (
            api(|r| {
                r.method("GE T");
            }),
            r#"sets[1]("api").request.method"#,
            |e| matches!(e, TransformError::Method { method, .. } if method == "GE T"),
            "invalid method `GE T`",
        ),
        (
            api(|r| {
                r.host("user@backend");
            }),
            r#"sets[1]("api").request.host"#,
            |e| matches!(e, TransformError::Authority { .. }),
            "invalid host `user@backend`",
        ),
        (
            api(|r| {
                r.host("bad host:80");
            }),
            r#"sets[1]("api").request.host"#,
            |e| matches!(e, TransformError::Authority { .. }),
            "invalid host",
        ),
        (
            api(|r| {
                r.host("backend/path");
            }),
            r#"sets[1]("api").request.host"#,
            |e| matches!(e, TransformError::Authority { .. }),
            "invalid host",
        ),
        (
            api(|r| {
                r.path.regex("^/users/(\\d+", "/u");
            }),
            r#"sets[1]("api").request.path.regex"#,
            |e| matches!(e, TransformError::Regex { .. }),
            "invalid regular expression",
        ),
        (
            api(|r| {
                r.path.regex("^/users/(\\d+)$", "/u/$2");
            }),
            r#"sets[1]("api").request.path.regex"#,
            |e| matches!(e, TransformError::Template { .. }),
            "no group `2`",
        ),
        (
            api(|r| {
                r.path.regex("^/users/(?<id>\\d+)$", "/u/${user}");
            }),
            r#"sets[1]("api").request.path.regex"#,
            |e| matches!(e, TransformError::Template { .. }),
            "no group `user`",
        ),
        (
            api(|r| {
                r.path.regex("^/users/(\\d+)$", "/u/$1x");
            }),
            r#"sets[1]("api").request.path.regex"#,
            |e| matches!(e, TransformError::Template { .. }),
            "no group `1x`",
        ),
        (
            api(|r| {
                r.path.regex("^/users/(\\d+)$", "/u/$");
            }),
            r#"sets[1]("api").request.path.regex"#,
            |e| matches!(e, TransformError::Template { .. }),
            "lone `$`",
        ),
        (
            api(|r| {
                r.path.regex("^/users/(\\d+)$", "/u v/$1");
            }),
            r#"sets[1]("api").request.path.regex"#,
            |e| matches!(e, TransformError::Path { .. }),
            "invalid path",
        ),
        (
            api(|r| {
                r.path.regex("^/(\\w+)/(\\w+)$", "/$1");
                r.headers.add("x-a", "{path.3}");
            }),
            r#"sets[1]("api").request.headers.add[0]"#,
            |e| matches!(e, TransformError::Template { template, .. } if template == "{path.3}"),
            "no group 3",
        ),
        (
            api(|r| {
                r.query.add("id", "{path.1}");
            }),
            r#"sets[1]("api").request.query.add[0]"#,
            |e| matches!(e, TransformError::Template { .. }),
            "path.regex",
        ),
        (
            api(|r| {
                r.path.regex("^/(?<id>\\w+)$", "/$1");
                r.path.add_prefix("/{path.name}");
            }),
            r#"sets[1]("api").request.path.add_prefix"#,
            |e| matches!(e, TransformError::Template { .. }),
            "no group named `name`",
        ),
        (
            api(|r| {
                r.headers.add("x-a", "ok").add("x-b", "{nope}");
            }),
            r#"sets[1]("api").request.headers.add[1]"#,
            |e| matches!(e, TransformError::Template { template, .. } if template == "{nope}"),
            "template `{nope}`",
        ),
        (
            api(|r| {
                r.query.replace("q", "{method");
            }),
            r#"sets[1]("api").request.query.replace[0]"#,
            |e| matches!(e, TransformError::Template { .. }),
            "not closed",
        ),
        (
            api(|r| {
                r.body.set("/ok", 1).set("user/name", 2);
            }),
            r#"sets[1]("api").request.body.set[1]"#,
            |e| matches!(e, TransformError::Pointer { pointer, .. } if pointer == "user/name"),
            "invalid JSON pointer `user/name`",
        ),
        (
            api(|r| {
                r.body.remove("/a~2b");
            }),
            r#"sets[1]("api").request.body.remove[0]"#,
            |e| matches!(e, TransformError::Pointer { .. }),
            "`~` must be followed",
        ),
        (
            api(|r| {
                r.body.rename("", "/b");
            }),
            r#"sets[1]("api").request.body.rename[0]"#,
            |e| matches!(e, TransformError::Pointer { .. }),
            "invalid JSON pointer",
        ),
        (
            api(|r| {
                r.body.set("/a", json!({"deep": ["{nope}"]}));
            }),
            r#"sets[1]("api").request.body.set[0]"#,
            |e| matches!(e, TransformError::Template { .. }),
            "{nope}",
        ),
        (
            api(|r| {
                r.path.strip_prefix("api");
            }),
            r#"sets[1]("api").request.path.strip_prefix"#,
            |e| matches!(e, TransformError::Path { value, .. } if value == "api"),
            "must start with `/`",
        ),
        (
            api(|r| {
                r.path.add_prefix("v2");
            }),
            r#"sets[1]("api").request.path.add_prefix"#,
            |e| matches!(e, TransformError::Path { .. }),
            "must start with `/`",
        ),
        (
            api(|r| {
                r.path.add_prefix("/v2?x=1");
            }),
            r#"sets[1]("api").request.path.add_prefix"#,
            |e| matches!(e, TransformError::Path { .. }),
            "invalid path",
        ),
        (
            api(|r| {
                r.query.remove("");
            }),
            r#"sets[1]("api").request.query.remove[0]"#,
            |e| matches!(e, TransformError::Query { .. }),
            "cannot be empty",
        ),
        (
            Rules::new()
                .set(noop())
                .set(RuleSet::named("api").when(When::path_prefix("api"))),
            r#"sets[1]("api").when.path_prefix"#,
            |e| matches!(e, TransformError::Path { .. }),
            "must start with `/`",
        ),
        (
            Rules::new()
                .set(noop())
                .set(RuleSet::named("api").when(When::methods(["GET", "GE T"]))),
            r#"sets[1]("api").when.methods[1]"#,
            |e| matches!(e, TransformError::Method { .. }),
            "invalid method",
        ),
        (
            Rules::new()
                .set(noop())
                .set(RuleSet::named("api").when(When::default().and_header({
                    let mut m = HeaderMatch::equals("x-a", "1");
                    m.absent = true;
                    m
                }))),
            r#"sets[1]("api").when.headers[0]"#,
            |e| matches!(e, TransformError::Condition { .. }),
            "contradict",
        ),
        (
            Rules::new().set(noop()).set(
                RuleSet::named("api").when(When::default().and_header(HeaderMatch::present("a b"))),
            ),
            r#"sets[1]("api").when.headers[0]"#,
            |e| matches!(e, TransformError::HeaderName { .. }),
            "invalid header name",
        ),
        (
            Rules::new()
                .set(noop())
                .set(RuleSet::named("api").response(|r| {
                    r.headers.append("via", "{nope}");
                })),
            r#"sets[1]("api").response.headers.append[0]"#,
            |e| matches!(e, TransformError::Template { .. }),
            "{nope}",
        ),
        (
            Rules::new()
                .set(noop())
                .set(RuleSet::named("api").response(|r| {
                    r.body.remove("x");
                })),
            r#"sets[1]("api").response.body.remove[0]"#,
            |e| matches!(e, TransformError::Pointer { .. }),
            "must start with `/`",
        ),
        (
            // An unnamed set is named by its index only.
            Rules::new().set(RuleSet::new().request(|r| {
                r.headers.add("x-a", "{header.a b}");
            })),
            "sets[0].request.headers.add[0]",
            |e| matches!(e, TransformError::Template { .. }),
            "not a header name",
        ),
    ];
    for (rules, at, kind, message) in cases {
        let err = build_error(rules);
        assert_eq!(err.at(), at, "{err}");
        assert!(kind(&err), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with(&format!("{at}: ")), "{text}");
        assert!(text.contains(message), "{text:?} lacks {message:?}");
    }
}

#[test]
fn too_many_sets() {
    let mut rules = Rules::new();
    for _ in 0..64 {
        rules = rules.set(RuleSet::new());
    }
    assert!(TransformLayer::new(rules.clone()).is_ok());
    let err = build_error(rules.set(RuleSet::new()));
    assert!(matches!(err, TransformError::TooManySets { count: 65 }));
    assert_eq!(err.at(), "");
    assert!(err.to_string().contains("65"), "{err}");
}

// === 9. rules from TOML and JSON ===

#[tokio::test]
async fn rules_from_toml() {
    let rules: Rules = toml::from_str(
        r#"
        body_limit = 65536
        non_json = "reject"

        [[sets]]
        name = "legacy clients"
        on_missing = "empty"
        when = { path_prefix = "/v1", methods = ["POST"], headers = [{ name = "x-client", equals = "legacy" }] }
        request.headers.rename = [{ from = "x-user", to = "x-forwarded-user" }]
        request.headers.add = [{ name = "x-tenant", value = "{identity.tenant}" }]
        request.path = { strip_prefix = "/v1", regex = { pattern = '^/users/(\d+)$', replace = "/users/$1" }, add_prefix = "/api/v2" }
        request.query.add = [{ name = "tenant", value = "{identity.tenant}" }]
        request.body.rename = [{ from = "/uid", to = "/user_id" }]
        request.body.set = [{ pointer = "/source", value = { via = "gateway", user = "{path.1}" } }]
        response.headers.append = [{ name = "via", value = "switchyard" }]
        response.body.remove = ["/internal"]
        "#,
    )
    .unwrap();
    assert_eq!(rules.body_limit, 65536);
    assert_eq!(rules.non_json, NonJson::Reject);
    assert_eq!(rules.sets[0].on_missing, OnMissing::Empty);
    let s = stack_with(
        rules,
        respond_with("application/json", r#"{"ok":true,"internal":1}"#),
    );
    let mut request = post_json("/v1/users/7?x=1", r#"{"uid":7}"#);
    request
        .headers_mut()
        .insert("x-client", "legacy".parse().unwrap());
    request
        .headers_mut()
        .insert("x-user", "alice".parse().unwrap());
    request
        .extensions_mut()
        .insert(Identity::new("alice").with_tenant("acme"));
    let reply = s.send(request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, r#"{"ok":true}"#);
    assert_eq!(values(&reply.headers, "via"), ["switchyard"]);
    let seen = s.inner.last();
    assert_eq!(seen.path_and_query(), "/api/v2/users/7?x=1&tenant=acme");
    assert_eq!(seen.all("x-forwarded-user"), ["alice"]);
    assert_eq!(seen.all("x-tenant"), ["acme"]);
    // (The toml crate hands over the inline table's keys sorted.)
    assert_eq!(
        seen.json(),
        json!({"user_id": 7, "source": {"via": "gateway", "user": "7"}})
    );

    // The condition does not hold: nothing changes, not even the 415.
    let seen = s
        .pass(req(Method::POST, "/v1/users/7", &[], full("text")))
        .await;
    assert_eq!(seen.path_and_query(), "/v1/users/7");
}

#[tokio::test]
async fn rules_from_json() {
    let rules: Rules = serde_json::from_str(
        r#"{
            "sets": [{
                "name": "api",
                "when": { "path_prefix": "/api", "headers": [{ "name": "x-skip", "absent": true }] },
                "request": {
                    "headers": { "remove": ["x-debug"], "add": [{ "name": "x-id", "value": "{path.id}" }] },
                    "path": { "strip_prefix": "/api", "regex": { "pattern": "^/items/(?<id>\\w+)$", "replace": "/v2/items/${id}" } },
                    "query": { "rename": [{ "from": "q", "to": "search" }], "replace": [{ "name": "page", "value": "1" }] },
                    "method": "PUT",
                    "host": "items.internal",
                    "body": { "set": [{ "pointer": "/tags/-", "value": "{method}" }], "remove": ["/debug"] }
                },
                "response": { "headers": { "rename": [{ "from": "x-internal-id", "to": "x-id" }] } }
            }]
        }"#,
    )
    .unwrap();
    assert_eq!(rules.body_limit, 1024 * 1024, "the default");
    assert_eq!(rules.non_json, NonJson::Reject);
    let s = stack_with(rules, |_| {
        Response::builder()
            .header("x-internal-id", "7")
            .body(full("ok"))
            .unwrap()
    });
    let mut request = post_json(
        "/api/items/abc?q=x&page=3&page=4",
        r#"{"tags":["a"],"debug":1}"#,
    );
    request
        .headers_mut()
        .insert("x-debug", "1".parse().unwrap());
    let reply = s.send(request).await;
    assert_eq!(values(&reply.headers, "x-id"), ["7"]);
    let seen = s.inner.last();
    assert_eq!(seen.method, Method::PUT);
    assert_eq!(seen.path_and_query(), "/v2/items/abc?search=x&page=1");
    assert_eq!(seen.all("host"), ["items.internal"]);
    assert_eq!(seen.all("x-id"), ["abc"]);
    assert!(!seen.headers.contains_key("x-debug"));
    assert_eq!(seen.body, r#"{"tags":["a","POST"]}"#);

    // The condition does not hold.
    let mut request = get("/api/items/abc", &[("x-skip", "1")]);
    request
        .headers_mut()
        .insert("x-debug", "1".parse().unwrap());
    let seen = s.pass(request).await;
    assert_eq!(seen.path_and_query(), "/api/items/abc");
    assert!(seen.headers.contains_key("x-debug"));
}

#[test]
fn rules_serialize_and_deserialize_to_the_same() {
    let rules = Rules::new()
        .body_limit(10)
        .non_json(NonJson::Reject)
        .set(fixed_order_set())
        .set(
            RuleSet::named("all")
                .when(
                    When::path_prefix("/a")
                        .and_methods(["GET"])
                        .and_header(HeaderMatch::absent("x")),
                )
                .on_missing(OnMissing::Empty)
                .request(|r| {
                    r.path
                        .strip_prefix("/a")
                        .regex("^/(.*)$", "/$1")
                        .add_prefix("/b");
                    r.query
                        .remove("a")
                        .rename("b", "c")
                        .replace("d", "e")
                        .add("f", "g");
                    r.method("PUT").host("h");
                    r.body
                        .remove("/a")
                        .rename("/b", "/c")
                        .set("/d", json!({"e": [1]}));
                })
                .response(|r| {
                    r.headers.add("x", "y");
                    r.body.set("/z", 1);
                }),
        );
    let json_text = serde_json::to_string(&rules).unwrap();
    assert_eq!(serde_json::from_str::<Rules>(&json_text).unwrap(), rules);
    let toml_text = toml::to_string(&rules).unwrap();
    assert_eq!(toml::from_str::<Rules>(&toml_text).unwrap(), rules);
}

#[test]
fn unknown_fields_are_refused() {
    for text in [
        "bodylimit = 1",
        "[[sets]]\nnmae = \"x\"",
        "[[sets]]\nwhen = { path = \"/a\" }",
        "[[sets]]\nwhen = { headers = [{ name = \"a\", value = \"b\" }] }",
        "[[sets]]\nrequest.header.add = []",
        "[[sets]]\nrequest.headers.ad = []",
        "[[sets]]\nrequest.headers.add = [{ name = \"a\", value = \"b\", extra = 1 }]",
        "[[sets]]\nrequest.headers.rename = [{ from = \"a\", too = \"b\" }]",
        "[[sets]]\nrequest.path = { strip = \"/a\" }",
        "[[sets]]\nrequest.path.regex = { pattern = \"a\", replacement = \"b\" }",
        "[[sets]]\nrequest.query.append = []",
        "[[sets]]\nrequest.body.sett = []",
        "[[sets]]\nrequest.body.set = [{ pointer = \"/a\", value = 1, other = 2 }]",
        "[[sets]]\nresponse.path = {}",
    ] {
        let err = toml::from_str::<Rules>(text).expect_err(text);
        assert!(err.to_string().contains("unknown field"), "{text}: {err}");
    }
    for text in [
        r#"{"sets": [], "extra": 1}"#,
        r#"{"sets": [{"request": {"headers": {"remove": [], "delete": []}}}]}"#,
        r#"{"sets": [{"response": {"body": {"set": [], "patch": []}}}]}"#,
    ] {
        let err = serde_json::from_str::<Rules>(text).expect_err(text);
        assert!(err.to_string().contains("unknown field"), "{text}: {err}");
    }
    // Unknown enum values too.
    assert!(toml::from_str::<Rules>("non_json = \"ignore\"").is_err());
    assert!(toml::from_str::<Rules>("[[sets]]\non_missing = \"null\"").is_err());
}

// === 10. live rule changes and counters ===

fn version(v: &str) -> Rules {
    one(RuleSet::named(v).request(|r| {
        r.headers.add("x-version", v);
    }))
}

#[tokio::test]
async fn set_rules_swaps_rules_live() {
    let s = stack(version("1"));
    assert_eq!(s.pass(get("/", &[])).await.all("x-version"), ["1"]);
    s.handle.set_rules(version("2")).unwrap();
    assert_eq!(s.pass(get("/", &[])).await.all("x-version"), ["2"]);
    assert_eq!(s.handle.rules(), version("2"));
    // Every service of the layer, and every handle, shares the rules.
    assert_eq!(s.svc.handle().rules(), version("2"));
    s.svc.handle().set_rules(Rules::new()).unwrap();
    assert!(
        !s.pass(get("/", &[]))
            .await
            .headers
            .contains_key("x-version")
    );
}

#[tokio::test]
async fn set_rules_refuses_invalid_rules_and_keeps_the_old_ones() {
    let s = stack(version("1"));
    let bad = one(RuleSet::named("bad").request(|r| {
        r.headers.add("x-a", "{nope}");
    }));
    let err = s.handle.set_rules(bad).unwrap_err();
    assert_eq!(err.at(), r#"sets[0]("bad").request.headers.add[0]"#);
    assert_eq!(s.handle.rules(), version("1"));
    assert_eq!(s.pass(get("/", &[])).await.all("x-version"), ["1"]);
}

#[tokio::test]
async fn a_request_under_way_finishes_with_the_rules_it_started_with() {
    let s = stack_with(
        one(RuleSet::new().response(|r| {
            r.headers.add("x-version", "1");
            r.body.set("/v", 1);
        })),
        respond_with("application/json", "{}"),
    );
    let future = s.svc.clone().oneshot(get("/", &[]));
    s.handle
        .set_rules(one(RuleSet::new().response(|r| {
            r.headers.add("x-version", "2");
        })))
        .unwrap();
    // `oneshot` only calls the service when first polled, so this request
    // starts with the new rules.
    let reply = collect(future.await.unwrap()).await;
    assert_eq!(reply.header("x-version").as_deref(), Some("2"));
    assert_eq!(reply.body, "{}");

    // A request whose call happened before the change keeps the old rules.
    let mut svc = s.svc.clone();
    let future = {
        use tower::Service;
        std::future::poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
        svc.call(get("/", &[]))
    };
    s.handle.set_rules(Rules::new()).unwrap();
    let reply = collect(future.await.unwrap()).await;
    assert_eq!(reply.header("x-version").as_deref(), Some("2"));
}

#[tokio::test]
async fn stats_count_bodies_and_rejections() {
    let s = stack_with(
        one(RuleSet::new()
            .when(When::path_prefix("/rw"))
            .request(|r| {
                r.body.set("/a", 1);
                r.path.add_prefix("/{header.x-long}");
            })
            .response(|r| {
                r.body.set("/b", 2);
            }))
        .body_limit(64),
        |seen| {
            let body = if seen.uri.path().ends_with("/invalid") {
                "{oops"
            } else {
                "{}"
            };
            Response::builder()
                .header(CONTENT_TYPE, "application/json")
                .body(full(body))
                .unwrap()
        },
    );
    let stats = || s.handle.stats();
    assert_eq!(stats(), Default::default());

    // Head-only rewrites are not counted.
    s.send(get("/", &[])).await;
    s.send(get("/rw", &[])).await;
    assert_eq!(stats().request_bodies_rewritten, 0);
    assert_eq!(stats().response_bodies_rewritten, 1);

    s.send(post_json("/rw", "{}")).await;
    assert_eq!(stats().request_bodies_rewritten, 1);
    assert_eq!(stats().response_bodies_rewritten, 2);

    s.send(post_json("/rw/invalid", "{}")).await;
    assert_eq!(stats().request_bodies_rewritten, 2);
    assert_eq!(stats().response_bodies_passed, 1);

    s.send(post_json("/rw", "{")).await;
    assert_eq!(stats().rejected_invalid_json, 1);

    s.send(post_json("/rw", &format!("[\"{}\"]", "x".repeat(64))))
        .await;
    assert_eq!(stats().rejected_too_large, 1);

    let reply = s.send(get("/rw", &[("x-long", &"a".repeat(70_000))])).await;
    let problem = reply.assert_problem(StatusCode::BAD_REQUEST);
    assert!(
        problem["detail"].as_str().unwrap().contains("URI"),
        "{problem}"
    );
    assert_eq!(stats().rejected_invalid_uri, 1);

    let body = Frames(VecDeque::from([Err::<Frame<Bytes>, BoxError>(
        "reset".into(),
    )]))
    .boxed_unsync();
    s.send(req(
        Method::POST,
        "/rw",
        &[("content-type", "application/json")],
        body,
    ))
    .await;
    assert_eq!(stats().rejected_body_error, 1);

    // Counters survive a rule change.
    s.handle
        .set_rules(
            one(RuleSet::new().request(|r| {
                r.body.set("/a", 1);
            }))
            .non_json(NonJson::Reject),
        )
        .unwrap();
    s.send(req(Method::POST, "/", &[], full("x"))).await;
    let last = stats();
    assert_eq!(last.rejected_media_type, 1);
    assert_eq!(last.request_bodies_rewritten, 2);
    assert_eq!(last.response_bodies_rewritten, 2);
    assert_eq!(last.response_bodies_passed, 1);
    assert_eq!(last.rejected_invalid_json, 1);
    assert_eq!(last.rejected_too_large, 1);
    assert_eq!(last.rejected_invalid_uri, 1);
    assert_eq!(last.rejected_body_error, 1);
}

// === 11. proptest: arbitrary headers and URIs ===

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x7a11_5f0a),
        ..ProptestConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

/// Percent-decodes a query component, `+` as a space, as the layer
/// compares names.
fn decode_component(raw: &str) -> String {
    let b = raw.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

const NAMES: &[&str] = &[
    "x-a",
    "x-b",
    "x-c",
    "x-user",
    "content-type",
    "host",
    "accept",
];

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(NAMES.to_vec()).prop_map(str::to_owned),
        1 => "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}",
    ]
}

/// Bytes a `HeaderValue` accepts: visible ASCII, space, tab, obs-text.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(
            prop_oneof![8 => 0x20u8..=0x7e, 1 => 0x80u8..=0xff, 1 => Just(b'\t')],
            0..24,
        ),
        1 => prop::sample::select(vec![
            b"{header.x-a}".to_vec(),
            b"a, b".to_vec(),
            "é".as_bytes().to_vec(),
            Vec::new(),
        ]),
    ]
}

/// Header values (templates) rules use.
const VALUES: &[&str] = &[
    "v",
    "",
    "{header.x-a}",
    "{header.x-b}-{query.q}",
    "{query.q}",
    "{method}",
    "{uuid}",
    "{{literal}}",
    "{identity.id}",
    "{target}",
    "pre {header.x-user} post",
];

fn header_rules(names: &'static [&'static str]) -> impl Strategy<Value = HeaderRules> {
    let name = move || prop::sample::select(names.to_vec()).prop_map(str::to_owned);
    let nv = move || {
        (name(), prop::sample::select(VALUES.to_vec())).prop_map(|(name, value)| NameValue {
            name,
            value: value.to_owned(),
        })
    };
    let list = move || prop::collection::vec(nv(), 0..3);
    (
        prop::collection::vec(name(), 0..3),
        prop::collection::vec(
            (name(), name()).prop_map(|(from, to)| FromTo { from, to }),
            0..3,
        ),
        list(),
        list(),
        list(),
    )
        .prop_map(|(remove, rename, replace, add, append)| {
            let mut h = HeaderRules::default();
            h.remove = remove;
            h.rename = rename;
            h.replace = replace;
            h.add = add;
            h.append = append;
            h
        })
}

/// A path `http::Uri` accepts, with the segments rules look for
/// over-represented.
fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        3 => prop::sample::select(vec![
            "api", "users", "42", "v1", "files", "", "a%20b", "%2F", "%", "%zz", "é", "~x",
            "a;b=c", "@", "{}", "\"", "|", "^", "[x]", "\\", "..", ".",
        ])
        .prop_map(str::to_owned),
        2 => "[A-Za-z0-9._~!$&'()*+,;=:@%-]{0,8}",
    ];
    prop::collection::vec(segment, 0..6).prop_map(|segs| format!("/{}", segs.join("/")))
}

fn query_pairs() -> impl Strategy<Value = Vec<(String, Option<String>)>> {
    let name = prop_oneof![
        3 => prop::sample::select(vec!["q", "debug", "page", "lang", "%71", "x+y", "a%26b", ""])
            .prop_map(str::to_owned),
        1 => "[a-z_]{1,6}",
    ];
    let value = prop_oneof![
        3 => "[A-Za-z0-9._~+%/?-]{0,8}",
        1 => prop::sample::select(vec![
            "%0a", "%ff", "%c3%a9", "é", "a=b", "", "blue%20sky", "%", "{x}", "|^",
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec((name, prop::option::weighted(0.85, value)), 0..6)
}

fn join(pairs: &[(String, Option<String>)]) -> String {
    pairs
        .iter()
        .map(|(n, v)| match v {
            Some(v) => format!("{n}={v}"),
            None => n.clone(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A URI `http::Uri` accepts: origin-form or absolute-form.
fn uri() -> impl Strategy<Value = Uri> {
    (
        prop::option::weighted(0.2, Just("http://example.com:8080")),
        path(),
        prop::option::weighted(0.8, query_pairs()),
    )
        .prop_filter_map("not a valid URI", |(authority, path, query)| {
            let mut text = format!("{}{path}", authority.unwrap_or(""));
            if let Some(q) = query {
                text.push('?');
                text.push_str(&join(&q));
            }
            Uri::try_from(text).ok()
        })
}

fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::POST,
        Method::HEAD,
        Method::DELETE,
        Method::from_bytes(b"PURGE").unwrap(),
    ])
}

fn request_of(method: &Method, uri: &Uri, headers: &[(String, Vec<u8>)]) -> Request<Body> {
    let mut r = Request::builder().method(method.clone()).uri(uri.clone());
    for (name, value) in headers {
        r = r.header(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_bytes(value).unwrap(),
        );
    }
    r.body(empty()).unwrap()
}

/// Names a header rule set may put a header under.
fn targets(h: &HeaderRules) -> Vec<HeaderName> {
    h.rename
        .iter()
        .map(|r| &r.to)
        .chain(h.replace.iter().map(|nv| &nv.name))
        .chain(h.add.iter().map(|nv| &nv.name))
        .chain(h.append.iter().map(|nv| &nv.name))
        .map(|n| HeaderName::from_bytes(n.as_bytes()).unwrap())
        .collect()
}

/// Checks what must hold of `headers` after `h` applied.
fn check_headers(h: &HeaderRules, headers: &HeaderMap) -> Result<(), TestCaseError> {
    let targets = targets(h);
    for name in &h.remove {
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        if !targets.contains(&name) {
            prop_assert!(!headers.contains_key(&name), "{} kept", name);
        }
    }
    // A literal add leaves the header present; a literal append is among
    // its values (nothing runs after append).
    for nv in &h.add {
        if !nv.value.contains('{') {
            prop_assert!(
                headers.contains_key(nv.name.as_str()),
                "{} not added",
                nv.name
            );
        }
    }
    for nv in &h.append {
        if !nv.value.contains('{') {
            prop_assert!(
                headers
                    .get_all(nv.name.as_str())
                    .iter()
                    .any(|v| v == nv.value.as_str()),
                "{} lacks {:?}",
                nv.name,
                nv.value
            );
        }
    }
    Ok(())
}

const RESPONSE_NAMES: &[&str] = &["x-a", "x-b", "server", "x-cache", "via"];

fn query_rules() -> impl Strategy<Value = QueryRules> {
    let name = || {
        prop::sample::select(vec!["q", "debug", "page", "lang", "x y", "a&b", "é"])
            .prop_map(str::to_owned)
    };
    let value = || {
        prop::sample::select(vec![
            "1",
            "",
            "{query.q}",
            "{header.x-a}",
            "{method}",
            "{uuid}",
            "a b&c",
        ])
        .prop_map(str::to_owned)
    };
    let nvs = move || {
        prop::collection::vec(
            (name(), value()).prop_map(|(name, value)| NameValue { name, value }),
            0..3,
        )
    };
    (
        prop::collection::vec(name(), 0..3),
        prop::collection::vec(
            (name(), name()).prop_map(|(from, to)| FromTo { from, to }),
            0..3,
        ),
        nvs(),
        nvs(),
    )
        .prop_map(|(remove, rename, replace, add)| {
            let mut q = QueryRules::default();
            q.remove = remove;
            q.rename = rename;
            q.replace = replace;
            q.add = add;
            q
        })
}

fn path_rules() -> impl Strategy<Value = (Option<String>, Option<PathRegex>, Option<String>)> {
    let strip = prop::option::of(
        prop::sample::select(vec!["/api", "/", "/v1/", "/a%20b", "/api/users"])
            .prop_map(str::to_owned),
    );
    let regex = prop::option::of(
        prop::sample::select(vec![
            ("^/users/([^/]+)$", "/u/$1"),
            ("^/(?<first>[^/]*)(.*)$", "/${first}-x$2"),
            ("(é)", "e$1"),
            ("(%)", "pct$$"),
            ("^(.*)$", "$1/"),
        ])
        .prop_map(|(pattern, replace)| PathRegex {
            pattern: pattern.to_owned(),
            replace: replace.to_owned(),
        }),
    );
    let prefix = prop::option::of(
        prop::sample::select(vec![
            "/v2",
            "/v2/",
            "/t/{header.x-a}",
            "/{query.q}/",
            "/{method}/{uuid}",
            "/c/{path.1}",
        ])
        .prop_map(str::to_owned),
    );
    (strip, regex, prefix).prop_map(|(strip, regex, prefix)| {
        // `{path.1}` needs a regex.
        let prefix = prefix.filter(|p| regex.is_some() || !p.contains("{path."));
        (strip, regex, prefix)
    })
}

/// The raw `name=value` pairs of a query whose decoded names are not in
/// `names`.
fn untouched<'q>(query: Option<&'q str>, names: &[String]) -> Vec<&'q str> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !names.contains(&decode_component(name))
        })
        .collect()
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the headers, URI and method, header rules (request and
    /// response, templates included) never fail the request: the answer
    /// is the inner service's, and the rules' guarantees hold.
    #[test]
    fn header_rules_never_panic(
        request_rules in header_rules(NAMES),
        response_rules in header_rules(RESPONSE_NAMES),
        empty_when_missing in any::<bool>(),
        headers in prop::collection::vec((header_name(), header_bytes()), 0..8),
        uri in uri(),
        method in method(),
        identity in any::<bool>(),
    ) {
        let on_missing = if empty_when_missing { OnMissing::Empty } else { OnMissing::Skip };
        let mut set = RuleSet::new().on_missing(on_missing);
        set.request.headers = request_rules.clone();
        set.response.headers = response_rules.clone();
        let s = stack_with(one(set), |_| {
            Response::builder()
                .header("x-inner", "1")
                .header("server", "inner")
                .header("x-cache", "hit")
                .body(full("inner"))
                .unwrap()
        });
        let mut request = request_of(&method, &uri, &headers);
        if identity {
            request.extensions_mut().insert(Identity::new("u"));
        }
        let reply = runtime().block_on(s.send(request));
        prop_assert_eq!(reply.status, StatusCode::OK);
        prop_assert_eq!(reply.header("x-inner"), Some("1".to_owned()));
        prop_assert_eq!(&reply.body[..], b"inner");
        prop_assert_eq!(s.inner.calls(), 1);
        let seen = s.inner.last();
        prop_assert_eq!(&seen.uri, &uri);
        prop_assert_eq!(&seen.method, &method);
        prop_assert!(seen.streamed);
        check_headers(&request_rules, &seen.headers)?;
        check_headers(&response_rules, &reply.headers)?;
    }

    /// Whatever the URI and headers, path and query rules answer with the
    /// inner service's response or a 400; untouched query parameters keep
    /// their bytes and order, removed ones are gone.
    #[test]
    fn path_and_query_rules_never_panic(
        (strip, regex, prefix) in path_rules(),
        query in query_rules(),
        headers in prop::collection::vec((header_name(), header_bytes()), 0..4),
        uri in uri(),
        method in method(),
        empty_when_missing in any::<bool>(),
    ) {
        let on_missing = if empty_when_missing { OnMissing::Empty } else { OnMissing::Skip };
        let mut set = RuleSet::new().on_missing(on_missing);
        set.request.path.strip_prefix = strip;
        set.request.path.regex = regex;
        set.request.path.add_prefix = prefix.clone();
        set.request.query = query.clone();
        let s = stack(one(set));
        let reply = runtime().block_on(s.send(request_of(&method, &uri, &headers)));
        match reply.status {
            StatusCode::OK => {
                prop_assert_eq!(reply.header("x-inner"), Some("1".to_owned()));
                prop_assert_eq!(s.inner.calls(), 1);
                let seen = s.inner.last();
                prop_assert!(seen.uri.path().starts_with('/'), "{}", seen.uri);
                prop_assert_eq!(seen.uri.authority(), uri.authority());
                if let Some(p) = prefix.as_deref().filter(|p| !p.contains('{')) {
                    prop_assert!(
                        seen.uri.path().starts_with(p.trim_end_matches('/')),
                        "{} lacks {}", seen.uri, p
                    );
                }
                if query.remove.is_empty()
                    && query.rename.is_empty()
                    && query.replace.is_empty()
                    && query.add.is_empty()
                {
                    prop_assert_eq!(seen.uri.query(), uri.query());
                } else {
                    let named: Vec<String> = query.remove.iter()
                        .chain(query.rename.iter().flat_map(|r| [&r.from, &r.to]))
                        .chain(query.replace.iter().chain(&query.add).map(|nv| &nv.name))
                        .cloned()
                        .collect();
                    prop_assert_eq!(
                        untouched(seen.uri.query(), &named),
                        untouched(uri.query(), &named),
                        "{} -> {}", uri, seen.uri
                    );
                    let put: Vec<&String> = query.rename.iter().map(|r| &r.to)
                        .chain(query.add.iter().map(|nv| &nv.name))
                        .collect();
                    for name in &query.remove {
                        if put.contains(&name) {
                            continue;
                        }
                        let found = seen.uri.query().unwrap_or("").split('&').any(|pair| {
                            decode_component(pair.split_once('=').map_or(pair, |(n, _)| n)) == *name
                        });
                        prop_assert!(!found, "{} kept in {}", name, seen.uri);
                    }
                }
            }
            StatusCode::BAD_REQUEST => {
                reply.assert_problem(StatusCode::BAD_REQUEST);
                prop_assert_eq!(s.inner.calls(), 0);
            }
            other => prop_assert!(false, "status {}", other),
        }
    }
}
