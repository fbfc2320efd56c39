//! Every switchyard layer on one existing axum app: API keys, a rate limit
//! per caller, a request transform, scope checks per route, a blue/green
//! `Split` with sticky users and a `MirrorLayer` copying GET traffic to the
//! next version, in the order they belong in and why.
//!
//! ```text
//! cargo run --example compose_axum              # listens on 127.0.0.1:8080
//! cargo run --example compose_axum -- --port 0  # any free port
//! ```
//!
//! Keys: `alice-key` (scope `orders:read`) and `ops-key` (scopes `admin`
//! and `orders:read`). Each layer appends its name to the request header
//! `x-layer-trace` once it has let the request through, and the handlers
//! print that header, so one curl shows the real order. The trace is there
//! to teach; leave it out of your app (see `traced` at the bottom).
//!
//! Copy this file to start your own: keep the order of the `.layer` and
//! `.route_layer` calls in `main`, and replace the keys, the quota and the
//! three orders handlers with yours (or with `proxy::Upstream`s).

// === the layer order ===
//
// axum matches the path first, then runs that route's stack, outermost
// first:
//
//   Router::layer, every path (404, 405 too):  auth -> ratelimit -> transform
//   route_layer, GET /api/orders only:         scopes -> mirror
//   the route's service:                       split -> blue v1 | green v2
//
// * `Router::layer` wraps the routes already in the router, and each call
//   goes AROUND the ones before it: the LAST `.layer` call is the
//   outermost and sees the request first. So `main` writes them innermost
//   first: transform, then ratelimit, then auth. Routes added after a
//   `.layer` call are not wrapped by it: add routes first, layers last.
// * auth runs first: it turns the key into an `Identity` in the request's
//   extensions, the only way the layers behind it learn who calls. It
//   also removes the key from the request, so neither the handlers nor
//   the shadow ever see it.
// * ratelimit after auth: it is keyed by that `Identity`. In front of
//   auth there is no identity yet, so every caller would fall back to the
//   per-IP key (or, without a fallback, get 400). Key guessing is
//   therefore not limited here: add a second, per-IP limiter as the very
//   last `.layer` if you need that.
// * transform after auth, so that `{identity.id}` in its templates
//   resolves (before auth the rule is skipped and nothing is added); and
//   before the split, so that the `x-user` header it adds is the sticky
//   key. Router-level layers run after routing: a path rewrite here does
//   not change which route serves the request (wrap the whole `Router` in
//   the transform instead for that).
// * scopes per route, with `route_layer` on the route's `MethodRouter`:
//   only a request that matches the route and its method is checked, so an
//   unknown path still gets 404 and `POST /api/orders` 405, not 401/403.
//   (`Router::layer` would also wrap the 404 fallback, `MethodRouter::layer`
//   the 405 one, and `Router::route_layer` every route added so far, `/`
//   included.) Route layers always run inside the Router layers, so a
//   request refused for its scopes has already counted against the rate
//   limit.
// * mirror inside scopes, so only requests the route accepts are copied;
//   outside the split, so the shadow sees the route's traffic whichever
//   version answers the client.
// * split innermost, as the route's service: it picks blue or green per
//   request and records a `Target` that the version's handler can read.
//
// Who answers what (the layers behind the one that refuses never see the
// request; switchyard's refusals are application/problem+json, axum's 404
// and 405 have empty bodies):
//
//   400  auth: unreadable credentials (`Authorization: Bearer` with no
//        token, a key header sent twice)
//   401  auth: a wrong, revoked or expired key (`error="invalid_token"`);
//        scopes: no key at all on a scoped route (the caller is anonymous)
//   403  scopes: a valid key without the route's scope (`missing_scopes`)
//   429  ratelimit: over the quota, with `Retry-After` and `RateLimit`
//   404  axum: unknown path (no scope check runs: it is a route layer)
//   405  axum: a method the route does not serve

use std::net::{Ipv4Addr, SocketAddr};
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::{Extension, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::routing::{get, get_service};
use switchyard::auth::{ApiKey, ApiKeyLayer, Identity, RequireScopes};
use switchyard::key::KeyBy;
use switchyard::mirror::{MirrorHandle, MirrorLayer};
use switchyard::ratelimit::{Quota, RateLimitLayer};
use switchyard::server::Server;
use switchyard::split::{Split, Target};
use switchyard::transform::{RuleSet, Rules, TransformLayer};
use tower::layer::util::Stack;
use tower::{Layer, Service};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = port_from_args()?;

    // Who is calling. A request with no key at all goes on as the anonymous
    // identity, so `/` stays public and the scope checks answer 401 where a
    // key is needed; a wrong key is refused here (401) even so.
    let auth = ApiKeyLayer::builder()
        .key(ApiKey::new(
            "alice-key",
            Identity::new("alice").with_scopes(["orders:read"]),
        ))
        .key(ApiKey::new(
            "ops-key",
            Identity::new("ops").with_scopes(["admin", "orders:read"]),
        ))
        .anonymous(Identity::anonymous())
        .build()?;

    // 20 requests at once, then 5 a second, per caller. `KeyBy::identity()`
    // gives no key for the anonymous identity (all anonymous callers would
    // share one budget), so they are limited per IP address instead, which
    // needs the peer address the server puts in each request.
    let limit = RateLimitLayer::builder()
        .key_by(KeyBy::identity().or(KeyBy::peer_ip()))
        .quota(Quota::per_second(5).burst(20).named("per-caller"))
        .build()?;

    // Pass the caller on as headers: an upstream server, or the shadow
    // (whose copy of the request carries no extensions), cannot read the
    // `Identity`. A client-sent `x-caller` is removed first so it cannot
    // be forged; `x-user` is only added when the client did not send one
    // (a caller acting for an end user names that user).
    let transform = TransformLayer::new(Rules::new().set(
        RuleSet::named("caller headers").request(|r| {
            r.headers
                .remove("x-caller")
                .add("x-caller", "{identity.id}")
                .add("x-user", "{identity.id}");
        }),
    ))?;

    // Version 1 (blue) serves 90 % of users, version 2 (green) 10 %. Sticky
    // by `x-user`, so a user keeps a version while the weights stay put;
    // testers reach a version by name with `x-switchyard-target` (any
    // caller past auth can: leave `override_header` out if that matters),
    // and the split names the version that answered in the same response
    // header. Keep `split.handle()` to shift, promote and roll back (see
    // examples/blue_green.rs).
    let split = Split::builder()
        .target("blue", get(orders_v1), 90)
        .target("green", get(orders_v2), 10)
        .sticky(KeyBy::header(HeaderName::from_static("x-user")))
        .override_header(HeaderName::from_static("x-switchyard-target"))
        .echo_header(HeaderName::from_static("x-switchyard-target"))
        .build()?;

    // A copy of every GET to the next version (v3), which serves nobody
    // yet: its answer is compared with the client's and thrown away, on a
    // task of its own, so it never slows the client down.
    let mirror = MirrorLayer::builder(get(orders_next))
        .methods([Method::GET])
        .percent(100.0)
        .build();
    let mirror_stats = mirror.handle();

    let app = Router::new()
        .route("/", get(public))
        .route(
            "/debug/order",
            get(move |headers: HeaderMap| debug_order(headers, mirror_stats.clone())),
        )
        // The split is the route's service (for GET; `route_service` would
        // take every method, `fallback_service` every unmatched path). Route
        // layers are innermost first too: scopes, the last one, runs first.
        .route(
            "/api/orders",
            get_service(split)
                .route_layer(traced("mirror", mirror))
                .route_layer(traced("scopes", RequireScopes::all(["orders:read"]))),
        )
        .route(
            "/api/admin",
            get(admin).route_layer(traced("scopes", RequireScopes::all(["admin"]))),
        )
        // Every path, 404s included. Written innermost first: the last
        // `.layer` (auth) sees the request first.
        .layer(traced("transform", transform))
        .layer(traced("ratelimit", limit))
        .layer(traced("auth", auth));

    // The server puts the peer's address in each request: the per-IP
    // rate-limit key.
    let server = Server::bind((Ipv4Addr::LOCALHOST, port)).await?;
    print_help(server.local_addr());
    server.serve(app).await?;
    Ok(())
}

// === handlers ===

async fn public(headers: HeaderMap) -> String {
    format!("public: no key needed\ntrace: {}\n", trace(&headers))
}

/// Blue: the version in production. Handlers read the caller from the
/// `Identity` auth recorded, and the version from the `Target` the split
/// recorded.
async fn orders_v1(
    Extension(who): Extension<Identity>,
    Extension(target): Extension<Target>,
    headers: HeaderMap,
) -> String {
    orders("v1", &who, target, &headers)
}

/// Green: the release being rolled out.
async fn orders_v2(
    Extension(who): Extension<Identity>,
    Extension(target): Extension<Target>,
    headers: HeaderMap,
) -> String {
    orders("v2", &who, target, &headers)
}

fn orders(version: &str, who: &Identity, target: Target, headers: &HeaderMap) -> String {
    format!(
        "{target} {version}: orders of {} (x-user {})\ntrace: {} -> split:{target}\n",
        who.id(),
        header(headers, "x-user"),
        trace(headers),
    )
}

/// The next version, reached only by mirrored copies. A copy has the
/// headers (no key: auth removed it) but no extensions, so the caller comes
/// from the `x-caller` header the transform wrote.
async fn orders_next(headers: HeaderMap) -> String {
    println!(
        "[mirror] next v3 got a copy: x-caller {}, x-switchyard-mirror {}, trace: {}",
        header(&headers, "x-caller"),
        header(&headers, "x-switchyard-mirror"),
        trace(&headers),
    );
    "next v3\n".to_owned()
}

async fn admin(Extension(who): Extension<Identity>, headers: HeaderMap) -> String {
    format!("admin: welcome {}\ntrace: {}\n", who.id(), trace(&headers))
}

async fn debug_order(headers: HeaderMap, mirror: MirrorHandle) -> String {
    let m = mirror.stats();
    format!(
        "this request went through: {}
caller, as the transform wrote it from auth's Identity: x-caller {}

outermost first, after axum matched the path:
  every path (Router::layer):          auth -> ratelimit -> transform
  GET /api/orders (route_layer):       scopes -> mirror -> split -> blue v1 | green v2
  GET /api/admin (route_layer):        scopes -> admin

copies sent to next v3: {} mirrored, {} compared, {} with the same status class
",
        trace(&headers),
        header(&headers, "x-caller"),
        m.mirrored,
        m.compared,
        m.status_matches,
    )
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> &'h str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

/// The `x-layer-trace` values, in the order the layers appended them.
fn trace(headers: &HeaderMap) -> String {
    let marks: Vec<&str> = headers
        .get_all(TRACE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    marks.join(" -> ")
}

// === the trace (a teaching aid: leave it out of your app) ===

const TRACE: HeaderName = HeaderName::from_static("x-layer-trace");

// A client can send `x-layer-trace` values of its own, which then come
// first: one more reason not to ship this.

/// `layer`, with a mark behind it that appends `name` to `x-layer-trace`
/// once `layer` has let the request through. In your app, pass `layer`
/// itself to `.layer` / `.route_layer`.
fn traced<L>(name: &'static str, layer: L) -> Stack<Mark, L> {
    // `Stack::new(inner, outer)`: `layer` wraps the mark.
    Stack::new(Mark(name), layer)
}

/// A layer that appends its name to `x-layer-trace`. It works with any
/// request body, as the layers behind a transform or a mirror receive
/// `RequestBody<Body>` rather than axum's `Body`.
#[derive(Clone, Copy)]
struct Mark(&'static str);

impl<S> Layer<S> for Mark {
    type Service = Marked<S>;

    fn layer(&self, inner: S) -> Marked<S> {
        Marked(self.0, inner)
    }
}

#[derive(Clone)]
struct Marked<S>(&'static str, S);

impl<S, B> Service<Request<B>> for Marked<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.1.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        req.headers_mut()
            .append(TRACE, HeaderValue::from_static(self.0));
        self.1.call(req)
    }
}

// === command line ===

fn port_from_args() -> Result<u16, String> {
    let mut args = std::env::args().skip(1);
    let mut port = 8080;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let value = args.next().ok_or("--port needs a value")?;
                port = value
                    .parse()
                    .map_err(|_| format!("--port: `{value}` is not a port number"))?;
            }
            "-h" | "--help" => {
                println!("usage: compose_axum [--port PORT]   (default 8080; 0 picks a free port)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`; try --help")),
        }
    }
    Ok(port)
}

fn print_help(addr: SocketAddr) {
    let a = format!("http://{addr}");
    println!(
        r#"switchyard compose_axum demo listening on {a}
keys: alice-key (orders:read), ops-key (admin, orders:read)

  curl -s {a}/                                                  # public: no key needed
  curl -s {a}/debug/order -H 'x-api-key: alice-key'             # the layer order, as this request saw it
  curl -i {a}/api/orders -H 'x-api-key: alice-key'              # 200: blue or green, sticky for alice
  curl -s {a}/api/orders -H 'x-api-key: alice-key' -H 'x-switchyard-target: green'   # a tester reaches green
  for u in 1 2 3 4 5 6 7 8 9 10; do curl -s {a}/api/orders -H 'x-api-key: ops-key' -H "x-user: user$u" | head -1; done
  curl -s {a}/api/admin -H 'x-api-key: ops-key'                 # 200: ops has scope admin

Each refusal but the 404 and 405 (axum's own, empty bodies) is application/problem+json:
  curl -i {a}/api/orders                                        # 401: no key (scopes: anonymous caller)
  curl -i {a}/api/orders -H 'x-api-key: wrong'                  # 401: invalid_token (auth)
  curl -i {a}/api/orders -H 'authorization: Bearer'             # 400: unreadable credentials (auth)
  curl -i {a}/api/admin -H 'x-api-key: alice-key'               # 403: missing scope admin (scopes)
  curl -i {a}/nope -H 'x-api-key: alice-key'                    # 404: unknown path, no scope check
  curl -i -X POST {a}/api/orders -H 'x-api-key: alice-key'      # 405: GET only, no scope check
  for i in $(seq 30); do curl -s -o /dev/null -w '%{{http_code}} ' {a}/api/orders -H 'x-api-key: alice-key'; done; echo   # 429 after 20 (ratelimit)
  curl -i {a}/api/orders -H 'x-api-key: alice-key'              # the 429 itself, with Retry-After
"#
    );
}
