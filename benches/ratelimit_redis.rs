//! What a check in Redis costs a request, next to the in-process limiter.
//!
//! Each function sends a request (an `x-user` header cycling through 1,000
//! users) through `ready` + `call` to a service that answers at once, on a
//! current-thread Tokio runtime, and drops the response:
//!
//! * `none`: no limiter.
//! * `in_process`: `RateLimitLayer`, one quota that always allows.
//! * `redis`: `RedisRateLimitLayer` with the same quota, against a
//!   `redis-server` this bench starts on a free loopback port: one round
//!   trip running the check script per request.
//! * `redis_ping`: a bare `PING` over the same kind of connection (a
//!   `ConnectionManager`), no request: the round trip alone, so that
//!   `redis` − `redis_ping` − `none` is the script and the layer.
//!
//! Without `redis-server` on the `PATH`, the `redis*` functions are left
//! out (with a note on stderr).
//!
//! ```text
//! cargo bench --bench ratelimit_redis --features redis -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! No budget: the figure says what sharing limits between replicas costs
//! (a loopback round trip; add your network's).

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderName, HeaderValue, Request, Response};
use switchyard::key::KeyBy;
use switchyard::ratelimit::redis::RedisRateLimitLayer;
use switchyard::ratelimit::{Quota, RateLimitLayer};
use tower::{Layer, Service, ServiceExt, service_fn};

const USERS: usize = 1_000;
const X_USER: HeaderName = HeaderName::from_static("x-user");

#[path = "support/redis_server.rs"]
mod redis_server;
use redis_server::RedisServer;

fn requests() -> Vec<HeaderValue> {
    (0..USERS)
        .map(|i| HeaderValue::try_from(format!("user-{i:04}")).unwrap())
        .collect()
}

/// Sends request `i` through `svc` and drops the response.
async fn send<S, B>(svc: &mut S, users: &[HeaderValue], i: usize)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    let mut req = Request::new(());
    req.headers_mut().insert(X_USER, users[i % USERS].clone());
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 200);
    drop(black_box(res));
}

fn always_allows() -> Quota {
    Quota::per_second(1_000_000).burst(1_000_000)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let users = requests();
    let ok = service_fn(|_req: Request<()>| async { Ok::<_, Infallible>(Response::new(())) });
    let mut group = c.benchmark_group("ratelimit_redis");

    let mut svc = ok;
    let mut i = 0;
    group.bench_function("none", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(send(&mut svc, &users, i));
        });
    });

    let mut svc = RateLimitLayer::builder()
        .key_by(KeyBy::header(X_USER))
        .quota(always_allows())
        .build()
        .unwrap()
        .layer(ok);
    group.bench_function("in_process", |b| {
        b.iter(|| {
            i += 1;
            rt.block_on(send(&mut svc, &users, i));
        });
    });

    if let Some(server) = RedisServer::start() {
        let conn = rt.block_on(async {
            redis::Client::open(format!("redis://127.0.0.1:{}/", server.port))
                .unwrap()
                .get_connection_manager()
                .await
                .unwrap()
        });
        let layer = RedisRateLimitLayer::builder(conn)
            .key_by(KeyBy::header(X_USER))
            .quota(always_allows())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut ping_conn = rt.block_on(async {
            redis::Client::open(format!("redis://127.0.0.1:{}/", server.port))
                .unwrap()
                .get_connection_manager()
                .await
                .unwrap()
        });
        group.bench_function("redis_ping", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let pong: String = redis::cmd("PING")
                        .query_async(&mut ping_conn)
                        .await
                        .unwrap();
                    black_box(pong);
                });
            });
        });
        let mut svc = layer.layer(ok);
        group.bench_function("redis", |b| {
            b.iter(|| {
                i += 1;
                rt.block_on(send(&mut svc, &users, i));
            });
        });
        let stats = layer.stats();
        assert_eq!(
            (stats.rejected, stats.errors),
            (0, 0),
            "every check answered"
        );
        drop(server);
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
