//! Cost of rewriting a request with `TransformLayer`.
//!
//! Every function builds the same request (`POST`, the same URI cycling
//! through a few user ids, the same six headers) and differs only in the
//! layer's rules, and for `json_body_1k` in the body: a ~1 KiB JSON
//! document instead of an empty one. The body is a `Full<Bytes>`, so making
//! it clones a reference count. Each iteration drives `ready()` + `call` +
//! the response future and drops the response. The inner service answers an
//! empty 200 with an immediately ready future, without reading the body,
//! and a `Full` body is ready at once too, so futures are polled once with
//! a no-op waker (which panics if they are not done) instead of running an
//! executor.
//!
//! * `passthrough`: a layer whose only rule set (the five header rules of
//!   `headers_only`) is conditioned on `When::path_prefix("/other")`, which
//!   the request never matches: the condition check and the hand-off to
//!   the inner service. (A never-matching set rather than empty rules, as a
//!   layer shared by several routes would meet.)
//! * `headers_only`: five literal header rules (remove, rename, replace,
//!   add, append), matching every request.
//! * `direct` and `headers_by_hand`: baselines without the layer: the inner
//!   service alone, and the same five header edits written by hand on the
//!   `HeaderMap` before it (the floor any header rewriting pays: `http`'s
//!   map operations, and the map growing past its first six slots).
//! * `path_regex`: `strip_prefix("/api")`, a regex rewrite with a capture
//!   group (`^/users/(\d+)/orders$` → `/v2/users/$1/orders`) and a query
//!   parameter rename.
//! * `json_body_1k`: three body rules (remove, rename, set a literal) on a
//!   ~1 KiB `application/json` body: buffered, parsed, rewritten and
//!   serialized again.
//!
//! ```text
//! cargo bench --bench transform --features transform,json -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Budget: `headers_only` − `passthrough` ≤ 200 ns; `json_body_1k` ≤ 5 µs
//! per request.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{
    ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderName, HeaderValue, USER_AGENT,
};
use http::{Method, Request, Response, Uri, request};
use http_body_util::{BodyExt, Empty, Full};
use serde_json::{Value, json};
use switchyard::body::RequestBody;
use switchyard::transform::{RuleSet, Rules, TransformLayer, When};
use tower::{Layer, Service, ServiceExt};

// Only `now` is used here: `Noop` serves `Request<()>`, and `Transform`
// hands its inner service a `Request<RequestBody<_>>`.
#[allow(dead_code, reason = "the shared `Noop` target is not used here")]
mod support;
use support::now;

/// The request body every function uses.
type ReqBody = Full<Bytes>;

/// The inner service: always ready, answers an empty 200 at once, drops the
/// request (and its body) unread.
#[derive(Clone, Copy, Debug)]
struct Target;

impl<B> Service<Request<B>> for Target {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Empty<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<B>) -> Self::Future {
        ready(Ok(Response::new(Empty::new())))
    }
}

/// The five edits of `headers_only`, by hand, then [`Target`].
#[derive(Clone, Copy, Debug)]
struct ByHand;

impl Service<Request<ReqBody>> for ByHand {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Empty<Bytes>>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        const FORWARDED_USER: HeaderName = HeaderName::from_static("x-forwarded-user");
        const GATEWAY: HeaderName = HeaderName::from_static("x-gateway");
        let h = req.headers_mut();
        h.remove(X_DEBUG);
        if let Some(v) = h.remove(X_USER) {
            h.insert(FORWARDED_USER, v);
        }
        if let http::header::Entry::Occupied(mut e) = h.entry(USER_AGENT) {
            e.insert(HeaderValue::from_static("switchyard-gateway"));
        }
        if let http::header::Entry::Vacant(e) = h.entry(GATEWAY) {
            e.insert(HeaderValue::from_static("switchyard"));
        }
        h.append(
            http::header::VIA,
            HeaderValue::from_static("1.1 switchyard"),
        );
        Target.call(req)
    }
}

/// How many distinct users (URIs and `x-user` values) requests cycle
/// through.
const CYCLE: usize = 8;

const X_USER: HeaderName = HeaderName::from_static("x-user");
const X_DEBUG: HeaderName = HeaderName::from_static("x-debug");

/// Builds the requests, identically for every function but the body.
struct Requests {
    uris: Vec<Uri>,
    users: Vec<HeaderValue>,
    body: Bytes,
    next: usize,
}

impl Requests {
    fn new(body: Bytes) -> Self {
        let ids = (0..CYCLE).map(|i| 1000 + 37 * i);
        Self {
            uris: ids
                .clone()
                .map(|id| Uri::try_from(format!("/api/users/{id}/orders?q=blue&page=2")).unwrap())
                .collect(),
            users: ids
                .map(|id| HeaderValue::try_from(format!("user-{id}")).unwrap())
                .collect(),
            body,
            next: 0,
        }
    }

    /// Requests with no body.
    fn empty() -> Self {
        Self::new(Bytes::new())
    }

    /// A `POST` with six headers: `host`, `user-agent`, `accept`,
    /// `content-type`, `x-user`, `x-debug`.
    #[inline]
    fn build(&mut self) -> Request<ReqBody> {
        self.next = (self.next + 1) % CYCLE;
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.uris[self.next].clone();
        let headers = req.headers_mut();
        headers.insert(HOST, HeaderValue::from_static("api.example.com"));
        headers.insert(USER_AGENT, HeaderValue::from_static("bench-client/1.0"));
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(X_USER, self.users[self.next].clone());
        headers.insert(X_DEBUG, HeaderValue::from_static("1"));
        req
    }
}

/// Ready, call and poll to completion (in one poll): the response.
#[inline]
fn call_once<S, B>(svc: &mut S, req: Request<ReqBody>) -> Response<B>
where
    S: Service<Request<ReqBody>, Response = Response<B>, Error = Infallible>,
{
    let svc = now(svc.ready()).unwrap();
    now(svc.call(req)).unwrap()
}

/// One full round trip: ready, call, poll to completion, drop the response.
#[inline]
fn round_trip<S, B>(svc: &mut S, req: Request<ReqBody>)
where
    S: Service<Request<ReqBody>, Response = Response<B>, Error = Infallible>,
{
    drop(black_box(call_once(svc, req)));
}

/// What the inner service received: the head and the body, read.
fn seen(layer: &TransformLayer, req: Request<ReqBody>) -> (request::Parts, Bytes) {
    let slot = Rc::new(RefCell::new(None));
    let capture = {
        let slot = Rc::clone(&slot);
        tower::service_fn(move |req: Request<RequestBody<ReqBody>>| {
            let (parts, body) = req.into_parts();
            let body = now(body.collect()).unwrap().to_bytes();
            *slot.borrow_mut() = Some((parts, body));
            ready(Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())))
        })
    };
    let res = call_once(&mut layer.layer(capture), req);
    assert_eq!(res.status(), 200);
    slot.take().expect("the inner service was called")
}

/// The five header rules, all literal values.
fn header_rules(set: RuleSet) -> RuleSet {
    set.request(|r| {
        r.headers
            .remove("x-debug")
            .rename("x-user", "x-forwarded-user")
            .replace("user-agent", "switchyard-gateway")
            .add("x-gateway", "switchyard")
            .append("via", "1.1 switchyard");
    })
}

/// `passthrough`: the rules of `headers_only` behind a condition no request
/// meets (chosen over empty rules: the condition is checked, nothing
/// applies).
fn passthrough_layer() -> TransformLayer {
    let set = header_rules(RuleSet::named("elsewhere").when(When::path_prefix("/other")));
    TransformLayer::new(Rules::new().set(set)).unwrap()
}

fn headers_layer() -> TransformLayer {
    TransformLayer::new(Rules::new().set(header_rules(RuleSet::named("headers")))).unwrap()
}

fn path_layer() -> TransformLayer {
    let set = RuleSet::named("path").request(|r| {
        r.path
            .strip_prefix("/api")
            .regex(r"^/users/(\d+)/orders$", "/v2/users/$1/orders");
        r.query.rename("q", "search");
    });
    TransformLayer::new(Rules::new().set(set)).unwrap()
}

fn json_layer() -> TransformLayer {
    let set = RuleSet::named("body").request(|r| {
        r.body
            .remove("/debug")
            .rename("/user/name", "/user/display_name")
            .set("/gateway", "switchyard");
    });
    TransformLayer::new(Rules::new().set(set)).unwrap()
}

/// An order as a client would post it: nested objects, an array of
/// items, strings and numbers; about 1 KiB serialized.
fn order() -> Value {
    let items: Vec<Value> = (0..5)
        .map(|i| {
            json!({
                "sku": format!("SKU-{:06}", 314_159 + i * 2_653),
                "name": format!("Stainless steel widget, size {}", i + 3),
                "quantity": i + 1,
                "unit_price": 12.5 + f64::from(i) * 3.25,
                "tags": ["hardware", "steel"],
            })
        })
        .collect();
    json!({
        "order_id": "7f3c2a90-5b1e-4d8a-9c61-2e4f8b0d1a77",
        "user": {
            "id": 1037,
            "name": "Ada Lovelace",
            "email": "ada@example.com",
            "tier": "gold",
        },
        "debug": { "trace": true, "sample_rate": 0.25 },
        "items": items,
        "shipping": {
            "method": "express",
            "address": {
                "line1": "12 Analytical Engine Row",
                "city": "London",
                "postcode": "NW1 6XE",
                "country": "GB",
            },
        },
        "currency": "EUR",
        "coupon": null,
        "gift": false,
    })
}

fn transform(c: &mut Criterion) {
    let mut group = c.benchmark_group("transform");

    // Before measuring, check that each layer does (or skips) what its name
    // says, on the very requests the functions send.
    let layer = passthrough_layer();
    let (parts, _) = seen(&layer, Requests::empty().build());
    assert_eq!(parts.uri, "/api/users/1037/orders?q=blue&page=2");
    assert_eq!(parts.headers.len(), 6);
    assert!(parts.headers.contains_key("x-debug"));
    let mut reqs = Requests::empty();
    let mut svc = layer.layer(Target);
    group.bench_function("passthrough", |b| {
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });

    let mut reqs = Requests::empty();
    let mut svc = Target;
    group.bench_function("direct", |b| {
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });

    let mut reqs = Requests::empty();
    let mut svc = ByHand;
    group.bench_function("headers_by_hand", |b| {
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });

    let layer = headers_layer();
    let (parts, _) = seen(&layer, Requests::empty().build());
    assert!(!parts.headers.contains_key("x-debug"));
    assert!(!parts.headers.contains_key("x-user"));
    assert_eq!(parts.headers["x-forwarded-user"], "user-1037");
    assert_eq!(parts.headers[USER_AGENT], "switchyard-gateway");
    assert_eq!(parts.headers["x-gateway"], "switchyard");
    assert_eq!(parts.headers["via"], "1.1 switchyard");
    let mut reqs = Requests::empty();
    let mut svc = layer.layer(Target);
    group.bench_function("headers_only", |b| {
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });

    let layer = path_layer();
    let (parts, _) = seen(&layer, Requests::empty().build());
    assert_eq!(parts.uri, "/v2/users/1037/orders?search=blue&page=2");
    let mut reqs = Requests::empty();
    let mut svc = layer.layer(Target);
    group.bench_function("path_regex", |b| {
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });

    let body = Bytes::from(serde_json::to_vec(&order()).unwrap());
    assert!(
        (900..=1200).contains(&body.len()),
        "the body is {} bytes, not about 1 KiB",
        body.len()
    );
    let layer = json_layer();
    let (parts, rewritten) = seen(&layer, Requests::new(body.clone()).build());
    let mut expected = order();
    let object = expected.as_object_mut().unwrap();
    object.shift_remove("debug");
    let user = object["user"].as_object_mut().unwrap();
    let name = user.shift_remove("name").unwrap();
    user.insert("display_name".into(), name);
    object.insert("gateway".into(), "switchyard".into());
    assert_eq!(rewritten, serde_json::to_vec(&expected).unwrap());
    assert_eq!(parts.headers[CONTENT_LENGTH], rewritten.len().to_string());
    let mut reqs = Requests::new(body);
    let mut svc = layer.layer(Target);
    let stats = layer.handle();
    group.bench_function("json_body_1k", |b| {
        let before = stats.stats().request_bodies_rewritten;
        b.iter(|| round_trip(&mut svc, reqs.build()));
        // Every measured request had its body rewritten.
        assert!(stats.stats().request_bodies_rewritten > before);
    });

    group.finish();
}

criterion_group!(benches, transform);
criterion_main!(benches);
