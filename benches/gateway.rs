//! One request through the whole gateway (`Gateway::from_config`: API key,
//! rate limit, header transform, blue/green split, proxied over a pooled
//! hyper client) next to the same request sent straight to the upstream.
//!
//! The upstream is a real `switchyard::server` (HTTP/1.1 here, with its
//! default limits) on `127.0.0.1:0` that answers `GET /` with a 20-byte
//! body. Both functions build the same
//! request (`GET /`, an `x-api-key`, an `x-user` cycling through a few
//! users, and the peer address in the extensions as a server would put
//! it), drive `ready()` + `call`, check the status and read the whole
//! response body, so each iteration is one complete loopback round trip.
//!
//! * `direct`: a `switchyard::proxy::Upstream` called as a tower Service.
//!   That is the pooled hyper client (keep-alive, `TCP_NODELAY`) plus the
//!   proxy's header handling (hop-by-hop removal, `X-Forwarded-*`, `Host`)
//!   and its response timeout, exactly what the gateway forwards through:
//!   the baseline is the cheapest honest way to reach the upstream with
//!   the same manners, so the difference is the gateway's own work.
//! * `proxied`: a `Gateway` embedded in-process (called as a tower
//!   Service, no client-side network hop) with one route: API key with a
//!   scope, a per-identity rate limit too large to ever refuse (1e9/s,
//!   burst 1e9), three header rules (two on the request, one on the
//!   response) and a sticky 90/10 split whose two targets are two
//!   upstreams (two connection pools) on the same server, configured as
//!   the `direct` one.
//! * `three_endpoints`: `direct`'s upstream given two more servers (on the
//!   same runtime, answering alike), requests taking turns: against
//!   `direct`, the cost of choosing an endpoint and of keeping a bodiless
//!   request's head to send again elsewhere if its connection fails.
//!
//! Runtime: one current-thread tokio runtime runs the upstream server, the
//! hyper client's connection tasks and the benchmarked future (criterion's
//! `async_tokio` feature is not enabled, so each iteration is
//! `rt.block_on(..)`). On the 2-core machines this runs on, a multi-thread
//! runtime puts the client, the connection task and the server on
//! different threads, so every round trip pays several cross-thread
//! wake-ups (futex, often a sleeping core) whose cost depends on what else
//! the machine is doing and swamps the few microseconds of gateway work
//! (tried on a loaded 2-core VM: about 60 µs `direct` and 51 µs `proxied`,
//! the order inverted by scheduling alone).
//! On one thread, an iteration is the CPU work of client, gateway, server
//! and the loopback TCP stack, run back to back: the difference between
//! the two functions is what the gateway costs per request in CPU, which
//! is also what bounds its throughput.
//!
//! ```text
//! cargo bench --bench gateway --features config -- --warm-up-time 2 --measurement-time 5
//! ```
//!
//! Budget: `proxied` ≤ 2 × `direct`.

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{HOST, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::proxy::{BoxError, Upstream};
use switchyard::server::{IncomingBody, Server, ServerHandle};
use tokio::runtime::Runtime;
use tower::{Service, ServiceExt, service_fn};

/// What the upstream answers to `GET /`.
const BODY: &[u8] = b"hello from upstream\n";

/// The response timeout of every upstream, as in `examples/gateway.toml`.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A small set of users, so sticky hashing does not see one key only.
const USERS: usize = 16;

/// The upstream servers, to count the connections they accepted and check
/// that the pools keep their connections (a round trip that opened one
/// would measure a connect).
#[derive(Clone, Default)]
struct Accepted(Arc<Mutex<Vec<ServerHandle>>>);

impl Accepted {
    fn get(&self) -> u64 {
        let servers = self.0.lock().unwrap();
        servers.iter().map(|s| s.stats().accepted).sum()
    }
}

async fn answer(req: Request<IncomingBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut res = Response::new(Full::new(Bytes::from_static(BODY)));
    if req.method() != Method::GET || req.uri().path() != "/" {
        *res.status_mut() = StatusCode::NOT_FOUND;
    }
    Ok(res)
}

/// Starts the upstream on the current runtime.
async fn upstream(accepted: Accepted) -> SocketAddr {
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    accepted.0.lock().unwrap().push(server.handle());
    tokio::spawn(server.serve(service_fn(answer)));
    addr
}

fn gateway(addr: SocketAddr) -> Gateway {
    let toml = format!(
        r#"
[upstreams.blue]
url = "http://{addr}"
response_timeout_ms = {timeout}

[upstreams.green]
url = "http://{addr}"
response_timeout_ms = {timeout}

[[api_keys]]
key = "bench-key"
id = "bench"
tenant = "bench"
scopes = ["api"]

[[routes]]
name = "api"
path_prefix = "/"
auth = {{ scopes = ["api"] }}
rate_limit = {{ key = "identity", quotas = [{{ limit = 1000000000, period = "1s", burst = 1000000000 }}] }}

[[routes.transform.sets]]
name = "headers"
request.headers.add = [{{ name = "x-gateway", value = "switchyard" }}]
request.headers.append = [{{ name = "x-caller", value = "{{identity.id}}" }}]
response.headers.add = [{{ name = "x-served-by", value = "switchyard" }}]

[routes.split]
sticky = {{ header = "x-user" }}
override_header = "x-switchyard-target"
echo_header = "x-switchyard-target"
targets = [
  {{ name = "blue", upstream = "blue", weight = 90 }},
  {{ name = "green", upstream = "green", weight = 10 }},
]
"#,
        timeout = RESPONSE_TIMEOUT.as_millis(),
    );
    Gateway::from_config(GatewayConfig::from_toml(&toml).unwrap()).unwrap()
}

struct Requests {
    users: Vec<HeaderValue>,
    next: usize,
    peer: SocketAddr,
}

impl Requests {
    fn new() -> Self {
        Self {
            users: (0..USERS)
                .map(|i| HeaderValue::try_from(format!("user-{i:04}")).unwrap())
                .collect(),
            next: 0,
            peer: "203.0.113.7:40000".parse().unwrap(),
        }
    }

    /// The request both functions send, identically.
    #[inline]
    fn build(&mut self) -> Request<Empty<Bytes>> {
        self.next = (self.next + 1) % USERS;
        let mut req = Request::builder()
            .uri("/")
            .header(HOST, HeaderValue::from_static("gateway.test"))
            .header(
                HeaderName::from_static("x-api-key"),
                HeaderValue::from_static("bench-key"),
            )
            .header(
                HeaderName::from_static("x-user"),
                self.users[self.next].clone(),
            )
            .body(Empty::new())
            .unwrap();
        req.extensions_mut().insert(self.peer);
        req
    }
}

/// One round trip: ready, call, the response, its whole body.
async fn round_trip<S, B>(svc: &mut S, req: Request<Empty<Bytes>>) -> Bytes
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    match res.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => panic!("response body: {}", e.into()),
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let accepted = Accepted::default();
    let addr = rt.block_on(upstream(accepted.clone()));

    let mut group = c.benchmark_group("gateway");

    // The services are built once, outside the closures (which criterion
    // calls for the warm-up and again for every sample), so that their
    // pools and connections live through the whole measurement.
    let mut reqs = Requests::new();
    let mut direct = Upstream::builder(&format!("http://{addr}"))
        .response_timeout(RESPONSE_TIMEOUT)
        .build()
        .unwrap();
    check(&rt, &mut direct, &mut reqs);
    group.bench_function("direct", |b| {
        b.iter(|| black_box(rt.block_on(round_trip(&mut direct, reqs.build()))));
    });
    report(&accepted, "direct");

    let mut proxied = gateway(addr);
    check(&rt, &mut proxied, &mut reqs);
    group.bench_function("proxied", |b| {
        b.iter(|| black_box(rt.block_on(round_trip(&mut proxied, reqs.build()))));
    });
    report(&accepted, "direct and proxied");

    // The same upstream spread over three servers (two more on this
    // runtime), taking turns: what choosing an endpoint costs.
    let more = [
        rt.block_on(upstream(accepted.clone())),
        rt.block_on(upstream(accepted.clone())),
    ];
    let mut three = Upstream::builder(&format!("http://{addr}"))
        .endpoint(&format!("http://{}", more[0]))
        .endpoint(&format!("http://{}", more[1]))
        .response_timeout(RESPONSE_TIMEOUT)
        .build()
        .unwrap();
    check(&rt, &mut three, &mut reqs);
    group.bench_function("three_endpoints", |b| {
        b.iter(|| black_box(rt.block_on(round_trip(&mut three, reqs.build()))));
    });
    report(&accepted, "three_endpoints");

    group.finish();
}

/// First round trips outside the measurement, one per user (so every
/// target a sticky user goes to): the right body comes back.
fn check<S, B>(rt: &Runtime, svc: &mut S, reqs: &mut Requests)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    for _ in 0..USERS {
        assert_eq!(rt.block_on(round_trip(svc, reqs.build())), BODY);
    }
}

/// How many connections the upstream accepted: one per pool, opened by
/// `check`, none during the measurement.
fn report(accepted: &Accepted, after: &str) {
    eprintln!(
        "upstream connections accepted after {after}: {}",
        accepted.get()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
