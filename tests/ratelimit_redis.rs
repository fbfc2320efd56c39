#![cfg(feature = "redis")]
//! `RedisRateLimitLayer` against a real `redis-server` on loopback, which
//! each test starts on a free port (and stops): two "replicas" sharing
//! quotas, several quotas all-or-nothing, time passing (moved in Redis,
//! not slept), Redis going away, the gateway-facing answers, and the parity
//! with the in-process limiter: per-request cost, dry-run, allow list and
//! the live handle (quotas changed live, check, peek and charge). With the
//! `tls` feature (module `tls`), over `rediss://`: a limiter trusting a
//! private CA, gateway replicas with `ca_file` and a client certificate,
//! and a server from the wrong CA refused.
//!
//! `.ci/run` installs `redis-server` (Debian's package) and sets
//! `SWITCHYARD_REQUIRE_REDIS=1`, so that these tests fail there when it is
//! missing; elsewhere, without `redis-server` on the `PATH`, each test
//! says so on stderr and returns.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use redis::AsyncCommands;
use serde_json::Value;
use switchyard::key::{Key, KeyBy};
use switchyard::ratelimit::redis::{RedisCheckError, RedisFailure, RedisRateLimitLayer};
use switchyard::ratelimit::{MissingKey, Quota, RateLimitError};
use tower::{Layer, Service, ServiceExt, service_fn};

use crate::support::net;
use crate::support::redis as redis_support;
use redis_support::RedisServer;

fn ok_service() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

fn req(user: &str) -> Request<Full<Bytes>> {
    Request::get("/")
        .header("x-user", user)
        .body(Full::default())
        .unwrap()
}

fn by_user() -> KeyBy {
    KeyBy::header(http::HeaderName::from_static("x-user"))
}

fn header<B>(res: &Response<B>, name: &str) -> String {
    res.headers()
        .get(name)
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
}

async fn json<B>(res: Response<B>) -> Value
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

/// A gateway from `config`, served on loopback: the gateway and its
/// address.
async fn serve_gateway(
    config: switchyard::gateway::GatewayConfig,
) -> (switchyard::gateway::Gateway, std::net::SocketAddr) {
    let gateway = switchyard::gateway::Gateway::from_config(config).unwrap();
    let addr = net::serve(axum::Router::new().fallback_service(gateway.clone())).await;
    (gateway, addr)
}

#[tokio::test]
async fn replicas_share_one_quota() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    // Two gateway replicas, each with its own connection and layer.
    let replica = |conn| {
        RedisRateLimitLayer::builder(conn)
            .key_by(by_user())
            .quota(Quota::per_minute(3).named("api"))
            .build()
            .unwrap()
    };
    let a = replica(redis.manager().await);
    let b = replica(redis.manager().await);
    let (sa, sb) = (a.layer(ok_service()), b.layer(ok_service()));

    let mut statuses = Vec::new();
    for i in 0..5 {
        let svc = if i % 2 == 0 { sa.clone() } else { sb.clone() };
        let res = svc.oneshot(req("alice")).await.unwrap();
        statuses.push(res.status().as_u16());
        if i == 0 {
            assert_eq!(header(&res, "ratelimit-policy"), r#""api";q=3;w=60"#);
            assert!(header(&res, "ratelimit").starts_with(r#""api";r=2;t="#));
        }
        if i == 4 {
            assert_eq!(
                header(&res, CONTENT_TYPE.as_str()),
                "application/problem+json"
            );
            // 3 per minute: the next unit in 20 s.
            let retry: u64 = header(&res, RETRY_AFTER.as_str()).parse().unwrap();
            assert!((19..=20).contains(&retry), "{retry}");
            assert!(header(&res, "ratelimit").starts_with(r#""api";r=0;t="#));
            let body = json(res).await;
            assert_eq!(body["status"], 429);
            assert_eq!(body["policy"], "api");
            assert!(body["detail"].as_str().unwrap().contains("retry in"));
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // Another key has its own quota.
    let res = sb.clone().oneshot(req("bob")).await.unwrap();
    assert_eq!(res.status(), 200);
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.allowed + sb.allowed, 4);
    assert_eq!(sa.rejected + sb.rejected, 2);
    assert_eq!(sa.errors + sb.errors, 0);
}

#[tokio::test]
async fn quotas_are_all_or_nothing_and_time_moves_them() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let layer = RedisRateLimitLayer::builder(redis.manager().await)
        .key_by(by_user())
        .quota(Quota::per_second(10).burst(2).named("burst"))
        .quota(Quota::per_hour(3).named("hourly"))
        .build()
        .unwrap();
    let svc = layer.layer(ok_service());
    let mut conn = redis.manager().await;
    let keys = layer.redis_keys(&Key::from("carol"));
    assert_eq!(
        keys,
        [
            "switchyard:rl:{b:carol}:burst",
            "switchyard:rl:{b:carol}:hourly"
        ]
    );

    assert_eq!(
        svc.clone().oneshot(req("carol")).await.unwrap().status(),
        200
    );
    assert_eq!(
        svc.clone().oneshot(req("carol")).await.unwrap().status(),
        200
    );
    // The burst quota refuses the third; the hourly one is not charged.
    let res = svc.clone().oneshot(req("carol")).await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(
        header(&res, "ratelimit").contains(r#""hourly";r=1;"#),
        "{}",
        header(&res, "ratelimit")
    );
    assert_eq!(json(res).await["policy"], "burst");

    // A second later, as Redis sees it: move the burst quota's arrival time
    // into the past instead of sleeping.
    let _: () = conn.del(&keys[0]).await.unwrap();
    assert_eq!(
        svc.clone().oneshot(req("carol")).await.unwrap().status(),
        200
    );
    // Now the hourly quota is spent: refused by it, with its wait.
    let _: () = conn.del(&keys[0]).await.unwrap();
    let res = svc.clone().oneshot(req("carol")).await.unwrap();
    assert_eq!(res.status(), 429);
    let retry: u64 = header(&res, RETRY_AFTER.as_str()).parse().unwrap();
    assert!((1199..=1200).contains(&retry), "{retry}");
    assert_eq!(json(res).await["policy"], "hourly");

    // Every key expires once its state is that of a fresh key.
    let ttl: i64 = conn.pttl(&keys[1]).await.unwrap();
    assert!((3_500_000..=3_600_001).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn remaining_counts_whole_units_of_uneven_intervals() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    // 3 per second: an interval of 1/3 s is not whole microseconds.
    let svc = RedisRateLimitLayer::builder(redis.manager().await)
        .key_by(by_user())
        .quota(Quota::per_second(3).named("thirds"))
        .build()
        .unwrap()
        .layer(ok_service());
    let mut seen = Vec::new();
    for _ in 0..4 {
        let res = svc.clone().oneshot(req("erin")).await.unwrap();
        let r = header(&res, "ratelimit");
        seen.push((
            res.status().as_u16(),
            r.split(';').nth(1).unwrap().to_owned(),
        ));
    }
    assert_eq!(
        seen,
        [(200, "r=2"), (200, "r=1"), (200, "r=0"), (429, "r=0")].map(|(s, r)| (s, r.to_owned()))
    );
}

#[tokio::test]
async fn odd_keys_missing_keys_and_grpc() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let layer = RedisRateLimitLayer::builder(redis.manager().await)
        .key_by(by_user())
        .quota(Quota::per_minute(1).named("one"))
        .build()
        .unwrap();
    let svc = layer.layer(ok_service());
    // Braces and percent signs in keys stay apart from each other.
    for user in ["{x}", "%7Bx%7D", "%7Bx}", "x"] {
        assert_eq!(
            svc.clone().oneshot(req(user)).await.unwrap().status(),
            200,
            "{user}"
        );
    }
    assert_eq!(svc.clone().oneshot(req("{x}")).await.unwrap().status(), 429);

    // No key: 400 by default, or let through.
    let bare = Request::get("/").body(Full::default()).unwrap();
    assert_eq!(svc.clone().oneshot(bare).await.unwrap().status(), 400);
    let allow = RedisRateLimitLayer::builder(redis.manager().await)
        .key_by(by_user())
        .quota(Quota::per_minute(1))
        .on_missing_key(MissingKey::Allow)
        .build()
        .unwrap()
        .layer(ok_service());
    let bare = Request::get("/").body(Full::default()).unwrap();
    assert_eq!(allow.oneshot(bare).await.unwrap().status(), 200);

    // A gRPC client gets RESOURCE_EXHAUSTED.
    let mut grpc = req("x");
    grpc.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    let res = svc.clone().oneshot(grpc).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "grpc-status"), "8");
}

#[tokio::test]
async fn when_redis_goes_away() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let conn = redis.manager().await;
    let open = RedisRateLimitLayer::builder(conn.clone())
        .key_by(by_user())
        .quota(Quota::per_minute(1))
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let closed = RedisRateLimitLayer::builder(conn)
        .key_by(by_user())
        .quota(Quota::per_minute(1))
        .on_redis_failure(RedisFailure::Reject)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    assert_eq!(
        open.layer(ok_service())
            .oneshot(req("dave"))
            .await
            .unwrap()
            .status(),
        200
    );
    drop(redis);

    // Let through (and counted), or refused with 503, never a hang.
    for _ in 0..2 {
        let res = tokio::time::timeout(
            Duration::from_secs(10),
            open.layer(ok_service()).oneshot(req("dave")),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(open.stats().errors, 2);
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        closed.layer(ok_service()).oneshot(req("dave")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The client learns that, not Redis's error (its address, its state):
    // that goes to the log.
    assert_eq!(
        json(res).await["detail"].as_str().unwrap(),
        "the rate limiter is unavailable"
    );
}

/// Two gateway replicas from one configuration, one Redis: the route's
/// limit holds across both, over real HTTP.
#[tokio::test]
async fn gateway_replicas_share_a_route_limit() {
    use switchyard::gateway::{Gateway, GatewayConfig};

    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let upstream = net::serve(axum::Router::new().fallback(|| async { "hello" })).await;
    // The configuration, with this `[redis]` section.
    let config = |redis_section: &str| {
        format!(
            r#"
{redis_section}

[upstreams.app]
url = "http://{upstream}"

[[routes]]
name = "api"
rate_limit = {{ key = {{ header = "x-user" }}, quotas = [{{ name = "shared", limit = 2, period = "1m" }}], redis = true }}
split.targets = [{{ name = "app", upstream = "app", weight = 1 }}]
"#
        )
    };
    let text = config(&format!(
        "[redis]\nurl = \"redis://127.0.0.1:{}/\"\nprefix = \"test:\"",
        redis.port
    ));
    let (a, addr_a) = serve_gateway(GatewayConfig::from_toml(&text).unwrap()).await;
    let (b, addr_b) = serve_gateway(GatewayConfig::from_toml(&text).unwrap()).await;
    let (replicas, addrs) = ([a, b], [addr_a, addr_b]);

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut statuses = Vec::new();
    for i in 0..4 {
        let req = Request::get(format!("http://{}/", addrs[i % 2]))
            .header("x-user", "frank")
            .body(Full::default())
            .unwrap();
        let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .unwrap()
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429]);
    // In Redis, under the configured prefix.
    let mut conn = redis.manager().await;
    let keys: Vec<String> = conn.keys("test:*").await.unwrap();
    assert_eq!(keys, ["test:{b:frank}:shared"]);
    // Each replica reports its own share of the counts.
    let metrics: String = replicas.iter().map(Gateway::metrics).collect();
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{route=\"api\"}}")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(count("switchyard_ratelimit_allowed_total"), 2);
    assert_eq!(count("switchyard_ratelimit_rejected_total"), 2);
    assert_eq!(count("switchyard_ratelimit_redis_errors_total"), 0);

    // A reload with the same configuration keeps the limiter and its counts.
    replicas[0]
        .reload(GatewayConfig::from_toml(&text).unwrap())
        .unwrap();
    assert!(
        replicas[0]
            .metrics()
            .contains("switchyard_ratelimit_allowed_total{route=\"api\"} 1")
    );

    // The route's handle: an allow-listed key passes on that replica (and
    // only there), and the reload above kept what it was told.
    let handle = replicas[0].redis_rate_limit("api").unwrap();
    assert!(replicas[0].rate_limit("api").is_none());
    handle.set_allow_list(["frank"]);
    replicas[0]
        .reload(GatewayConfig::from_toml(&text).unwrap())
        .unwrap();
    for (addr, want) in [(addrs[0], 200), (addrs[1], 429)] {
        let req = Request::get(format!("http://{addr}/"))
            .header("x-user", "frank")
            .body(Full::default())
            .unwrap();
        let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), want);
    }
    assert_eq!(handle.stats().bypassed, 1);

    // Mistakes are located.
    let no_redis = config("");
    let err = Gateway::from_config(GatewayConfig::from_toml(&no_redis).unwrap()).unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.at == "routes[0].rate_limit.redis"),
        "{err:?}"
    );
    let bad_url = config("[redis]\nurl = \"nonsense://127.0.0.1/\"");
    let err = Gateway::from_config(GatewayConfig::from_toml(&bad_url).unwrap()).unwrap_err();
    assert!(err.problems.iter().any(|p| p.at == "redis.url"), "{err:?}");
}

/// A request of `user` costing `cost` units (read by `cost_by_header`).
fn costly(user: &str, cost: u32) -> Request<Full<Bytes>> {
    let mut r = req(user);
    r.headers_mut().insert("x-cost", HeaderValue::from(cost));
    r
}

fn cost_by_header(req: &switchyard::key::RequestView<'_>) -> u32 {
    req.headers
        .get("x-cost")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(1)
}

#[tokio::test]
async fn a_request_takes_its_cost() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let layer = RedisRateLimitLayer::builder(redis.manager().await)
        .key_by(by_user())
        .quota(Quota::per_minute(5).named("units"))
        .cost(cost_by_header)
        .build()
        .unwrap();
    let svc = layer.layer(ok_service());
    let mut conn = redis.manager().await;

    // 3 of the 5 units at once.
    let res = svc.clone().oneshot(costly("gina", 3)).await.unwrap();
    assert_eq!(res.status(), 200);
    let rl = header(&res, "ratelimit");
    assert!(rl.starts_with(r#""units";r=2;t="#), "{rl}");
    // In Redis: three intervals of 12 s ahead of now.
    let key = &layer.redis_keys(&Key::from("gina"))[0];
    let ttl: i64 = conn.pttl(key).await.unwrap();
    assert!((35_000..=36_001).contains(&ttl), "{ttl}");

    // 3 more do not fit in the 2 left: refused until one more unit is
    // back (12 s), and nothing is taken.
    let res = svc.clone().oneshot(costly("gina", 3)).await.unwrap();
    assert_eq!(res.status(), 429);
    let retry: u64 = header(&res, RETRY_AFTER.as_str()).parse().unwrap();
    assert!((11..=12).contains(&retry), "{retry}");
    assert!(
        json(res).await["detail"]
            .as_str()
            .unwrap()
            .contains("retry in")
    );
    let res = svc.clone().oneshot(costly("gina", 2)).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(header(&res, "ratelimit").starts_with(r#""units";r=0;t="#));

    // More than the burst: refused for good, so no Retry-After; the key's
    // state is not touched.
    let res = svc.clone().oneshot(costly("hank", 6)).await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().get(RETRY_AFTER).is_none());
    let body = json(res).await;
    assert_eq!(body["policy"], "units");
    assert!(body.get("retry_after").is_none(), "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("costs 6 units, more than the burst of 5"),
        "{body}"
    );
    let hank = &layer.redis_keys(&Key::from("hank"))[0];
    assert!(!conn.exists::<_, bool>(hank).await.unwrap());
    // Without the header, the closure says 1.
    let res = svc.clone().oneshot(req("hank")).await.unwrap();
    assert!(header(&res, "ratelimit").starts_with(r#""units";r=4;t="#));

    let stats = layer.stats();
    assert_eq!((stats.allowed, stats.rejected), (3, 2));
}

#[tokio::test]
async fn dry_run_lets_over_limit_requests_through_until_turned_off() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let layer = RedisRateLimitLayer::builder(redis.manager().await)
        .key_by(by_user())
        .quota(Quota::per_minute(2).named("trial"))
        .dry_run(true)
        // So that only the requests dry-run let through carry the headers.
        .headers_on_allowed(false)
        .build()
        .unwrap();
    let svc = layer.layer(ok_service());
    let handle = layer.handle();

    for _ in 0..2 {
        let res = svc.clone().oneshot(req("iris")).await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("ratelimit").is_none());
    }
    let res = svc.clone().oneshot(req("iris")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "ratelimit-policy"), r#""trial";q=2;w=60"#);
    assert!(header(&res, "ratelimit").starts_with(r#""trial";r=0;t="#));
    assert!(res.headers().get(RETRY_AFTER).is_none());
    let stats = handle.stats();
    assert_eq!(
        (stats.allowed, stats.dry_run_rejected, stats.rejected),
        (2, 1, 0)
    );
    // The request let through took no units: two intervals of 30 s.
    let mut conn = redis.manager().await;
    let ttl: i64 = conn
        .pttl(&handle.redis_keys(&Key::from("iris"))[0])
        .await
        .unwrap();
    assert!((59_000..=60_001).contains(&ttl), "{ttl}");

    // Live: off refuses the next request, on lets it through again.
    handle.set_dry_run(false);
    let res = svc.clone().oneshot(req("iris")).await.unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().get(RETRY_AFTER).is_some());
    handle.set_dry_run(true);
    assert_eq!(
        svc.clone().oneshot(req("iris")).await.unwrap().status(),
        200
    );
    let stats = layer.stats();
    assert_eq!(
        (stats.allowed, stats.dry_run_rejected, stats.rejected),
        (2, 2, 1)
    );
}

#[tokio::test]
async fn allow_listed_keys_bypass_the_limit() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let layer = RedisRateLimitLayer::builder(redis.manager().await)
        .key_by(by_user())
        .quota(Quota::per_minute(1).named("one"))
        .allow("vip")
        .build()
        .unwrap();
    let svc = layer.layer(ok_service());
    let handle = svc.handle();
    let mut conn = redis.manager().await;

    for _ in 0..3 {
        let res = svc.clone().oneshot(req("vip")).await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("ratelimit").is_none());
    }
    // Redis was not asked.
    let vip = &layer.redis_keys(&Key::from("vip"))[0];
    assert!(!conn.exists::<_, bool>(vip).await.unwrap());
    assert_eq!(
        svc.clone().oneshot(req("ivan")).await.unwrap().status(),
        200
    );
    assert_eq!(
        svc.clone().oneshot(req("ivan")).await.unwrap().status(),
        429
    );
    let stats = handle.stats();
    assert_eq!((stats.bypassed, stats.allowed, stats.rejected), (3, 1, 1));

    // Live: ivan in, vip out.
    handle.set_allow_list(["ivan"]);
    assert_eq!(
        svc.clone().oneshot(req("ivan")).await.unwrap().status(),
        200
    );
    assert_eq!(svc.clone().oneshot(req("vip")).await.unwrap().status(), 200);
    assert_eq!(svc.clone().oneshot(req("vip")).await.unwrap().status(), 429);
    handle.set_allow_list(Vec::<String>::new());
    assert_eq!(
        svc.clone().oneshot(req("ivan")).await.unwrap().status(),
        429
    );
    let stats = handle.stats();
    assert_eq!((stats.bypassed, stats.allowed, stats.rejected), (4, 2, 3));
}

#[tokio::test]
async fn quotas_change_live_and_state_follows_the_name() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    // Two replicas sharing the state under one prefix.
    let replica = |conn| {
        RedisRateLimitLayer::builder(conn)
            .key_by(by_user())
            .quota(Quota::per_minute(10).named("api"))
            .build()
            .unwrap()
    };
    let (a, b) = (
        replica(redis.manager().await),
        replica(redis.manager().await),
    );
    let (sa, sb) = (a.layer(ok_service()), b.layer(ok_service()));
    let (ha, hb) = (a.handle(), sb.handle());
    for i in 0..4 {
        let svc = if i % 2 == 0 { &sa } else { &sb };
        assert_eq!(
            svc.clone().oneshot(req("jack")).await.unwrap().status(),
            200
        );
    }

    // A stricter rate under the same name: the next request through A is
    // checked against it, and the 4 units both replicas counted (24 s of
    // a 10-per-minute quota) still count: 1 per minute waits 24 s.
    ha.set_quotas([Quota::per_minute(1).named("api")]).unwrap();
    assert_eq!(ha.quotas(), [Quota::per_minute(1).named("api")]);
    let res = sa.clone().oneshot(req("jack")).await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "ratelimit-policy"), r#""api";q=1;w=60"#);
    let retry: u64 = header(&res, RETRY_AFTER.as_str()).parse().unwrap();
    assert!((23..=24).contains(&retry), "{retry}");
    // B keeps its own quotas until told.
    assert_eq!(hb.quotas(), [Quota::per_minute(10).named("api")]);
    assert_eq!(sb.clone().oneshot(req("jack")).await.unwrap().status(), 200);
    hb.set_quotas([Quota::per_minute(1).named("api")]).unwrap();
    let res = sb.clone().oneshot(req("jack")).await.unwrap();
    assert_eq!(res.status(), 429);
    let retry: u64 = header(&res, RETRY_AFTER.as_str()).parse().unwrap();
    assert!((29..=30).contains(&retry), "{retry}");

    // A new name starts fresh for every key; the old state stays in Redis
    // until it expires.
    ha.set_quotas([Quota::per_minute(1).named("api-v2")])
        .unwrap();
    let keys = ha.redis_keys(&Key::from("jack"));
    assert_eq!(keys, ["switchyard:rl:{b:jack}:api-v2"]);
    assert_eq!(a.redis_keys(&Key::from("jack")), keys);
    assert_eq!(sa.clone().oneshot(req("jack")).await.unwrap().status(), 200);
    assert_eq!(sa.clone().oneshot(req("jack")).await.unwrap().status(), 429);
    let mut conn = redis.manager().await;
    let old: i64 = conn.pttl("switchyard:rl:{b:jack}:api").await.unwrap();
    assert!((29_000..=30_001).contains(&old), "{old}");

    // A refused change changes nothing.
    let none: [Quota; 0] = [];
    assert_eq!(ha.set_quotas(none), Err(RateLimitError::NoQuota));
    assert_eq!(
        ha.set_quotas([Quota::per_minute(0).named("zero")]),
        Err(RateLimitError::InvalidQuota("zero".to_owned()))
    );
    assert_eq!(ha.quotas(), [Quota::per_minute(1).named("api-v2")]);
    assert_eq!(sa.clone().oneshot(req("jack")).await.unwrap().status(), 429);
}

#[tokio::test]
async fn the_handle_checks_peeks_and_charges() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let layer = RedisRateLimitLayer::builder(redis.manager().await)
        .key_by(by_user())
        .quota(Quota::per_minute(10).named("tokens"))
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let h = layer.handle();
    let key = Key::from("judy");
    let stored = h.redis_keys(&key).remove(0);
    let mut conn = redis.manager().await;

    // A peek answers without writing.
    let d = h.peek(&key, 4).await.unwrap();
    assert!(d.is_allowed());
    assert_eq!(d.quota(0).unwrap().remaining, 10);
    assert!(!conn.exists::<_, bool>(&stored).await.unwrap());
    // A check takes.
    let d = h.check(&key, 4).await.unwrap();
    assert!(d.is_allowed());
    assert_eq!(d.quota(0).unwrap().remaining, 6);
    // Over what is left: refused with the wait, and nothing taken.
    let d = h.peek(&key, 7).await.unwrap();
    assert!(!d.is_allowed());
    assert_eq!(d.refused_by(), Some(0));
    let wait = d.retry_after().unwrap();
    assert!(
        wait > Duration::from_secs(5) && wait <= Duration::from_secs(6),
        "{wait:?}"
    );
    assert_eq!(d.quota(0).unwrap().remaining, 6);
    let d = h.check(&key, 7).await.unwrap();
    assert!(!d.is_allowed());
    // Above the burst: never, so no wait.
    let d = h.check(&key, 11).await.unwrap();
    assert!(!d.is_allowed());
    assert_eq!(d.retry_after(), None);
    assert_eq!(
        h.peek(&key, 1).await.unwrap().quota(0).unwrap().remaining,
        6
    );

    // A charge is unconditional and may go into debt: 4 + 20 units of 6 s
    // is 144 s ahead, 84 s past the tolerance; one more unit waits 90 s.
    h.charge(&key, 20).await.unwrap();
    let d = h.peek(&key, 1).await.unwrap();
    assert!(!d.is_allowed());
    assert_eq!(d.quota(0).unwrap().remaining, 0);
    let ttl: i64 = conn.pttl(&stored).await.unwrap();
    assert!((143_000..=144_001).contains(&ttl), "{ttl}");
    // A request through the layer sees the debt.
    let request = req("judy");
    assert_eq!(h.key_of(&request), Some(key.clone()));
    let res = layer.layer(ok_service()).oneshot(request).await.unwrap();
    assert_eq!(res.status(), 429);
    let retry: u64 = header(&res, RETRY_AFTER.as_str()).parse().unwrap();
    assert!((89..=90).contains(&retry), "{retry}");
    // The handle's own calls are not requests.
    let stats = h.stats();
    assert_eq!((stats.allowed, stats.rejected), (0, 1));

    // A charge beyond what can be counted is capped, not an error.
    let kim = Key::from("kim");
    h.charge(&kim, u64::MAX).await.unwrap();
    let wait = h.peek(&kim, 1).await.unwrap().retry_after().unwrap();
    assert!(wait > Duration::from_secs(100 * 365 * 86_400), "{wait:?}");

    // The futures own what they need: spawned, with the key gone.
    let spawned = tokio::spawn(h.charge(&Key::from(String::from("leo")), 3));
    spawned.await.unwrap().unwrap();
    let d = h.peek(&Key::from("leo"), 1).await.unwrap();
    assert_eq!(d.quota(0).unwrap().remaining, 7);

    // Without Redis: an error, within the timeout.
    drop(redis);
    for _ in 0..2 {
        let err = tokio::time::timeout(Duration::from_secs(10), h.check(&key, 1))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err, RedisCheckError::Redis(_) | RedisCheckError::Timeout(_)),
            "{err}"
        );
    }
    let charged = tokio::time::timeout(Duration::from_secs(10), h.charge(&key, 1)).await;
    assert!(charged.unwrap().is_err());
    assert_eq!(h.stats().errors, 0);
}

/// `rediss://` (features `redis` and `tls`): a `redis-server` listening
/// over TLS only, with the server certificate of `tests/fixtures/tls`
/// (signed by `ca.pem`, for `localhost` and `127.0.0.1`; see
/// `tests/tls.rs`), asking clients for a certificate signed by
/// `client-ca.pem` when mutual.
/// Sends `req(user)` through `layer` (with a deadline: never a hang).
async fn status_through(
    layer: &RedisRateLimitLayer,
    user: &str,
) -> Response<switchyard::body::ResponseBody<Full<Bytes>>> {
    tokio::time::timeout(
        Duration::from_secs(10),
        layer.layer(ok_service()).oneshot(req(user)),
    )
    .await
    .expect("answered")
    .unwrap()
}

/// A Redis that hangs (`CLIENT PAUSE`): three checks wait out their
/// timeout, then the breaker opens and requests skip Redis (the failure
/// policy at once, the handle's calls fail at once); after the pause and
/// the cooldown, one probe closes it again.
#[tokio::test]
async fn a_hanging_redis_is_skipped_until_it_answers() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let conn = redis.manager().await;
    let open = RedisRateLimitLayer::builder(conn.clone())
        .key_by(by_user())
        .quota(Quota::per_minute(100))
        .timeout(Duration::from_millis(100))
        .breaker(3, Duration::from_secs(1))
        .build()
        .unwrap();
    let closed = RedisRateLimitLayer::builder(conn)
        .key_by(by_user())
        .quota(Quota::per_minute(100))
        .on_redis_failure(RedisFailure::Reject)
        .timeout(Duration::from_millis(100))
        .breaker(1, Duration::from_secs(60))
        .build()
        .unwrap();
    assert_eq!(status_through(&open, "ivy").await.status(), 200);
    assert!(!open.stats().skipping);

    // Every other client's commands wait for 3 s.
    let mut admin = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let paused = std::time::Instant::now();
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .exec_async(&mut admin)
        .await
        .unwrap();

    for _ in 0..6 {
        assert_eq!(status_through(&open, "ivy").await.status(), 200);
    }
    let stats = open.stats();
    assert_eq!((stats.allowed, stats.errors, stats.skipped), (1, 3, 3));
    assert!(stats.skipping);
    let handle = open.handle();
    assert!(matches!(
        handle.check(&Key::from("ivy"), 1).await,
        Err(RedisCheckError::Skipped)
    ));

    // Fail-closed: the first refusal waited, the second did not ask (the
    // counters below tell them apart; clients are told neither: issue 16).
    for _ in 0..2 {
        let res = status_through(&closed, "ivy").await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = json(res).await;
        assert_eq!(body["detail"], "the rate limiter is unavailable", "{body}");
    }
    let stats = closed.stats();
    assert_eq!((stats.errors, stats.skipped), (1, 1));

    // After the pause (and so the 1 s cooldown), the next request probes,
    // is answered, and closes the breaker.
    tokio::time::sleep(Duration::from_millis(3100).saturating_sub(paused.elapsed())).await;
    let res = status_through(&open, "ivy").await;
    assert_eq!(res.status(), 200);
    assert!(!header(&res, "ratelimit").is_empty());
    // (The handle's skipped check above is not a request: not counted.)
    let stats = open.stats();
    assert_eq!((stats.allowed, stats.errors, stats.skipped), (2, 3, 3));
    assert!(!stats.skipping);
    assert!(handle.check(&Key::from("ivy"), 1).await.is_ok());
}

/// `RedisFailure::Local`: with Redis gone, each key is limited in memory
/// with this replica's share of the quota (half, for two replicas), and
/// the answers carry that share's headers; once Redis is back, the shared
/// quota again.
#[tokio::test]
async fn the_local_fallback_limits_with_this_replicas_share() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let build = |replicas| {
        let conn = redis.manager();
        async move {
            RedisRateLimitLayer::builder(conn.await)
                .key_by(by_user())
                .quota(Quota::per_minute(4).named("api"))
                .on_redis_failure(RedisFailure::Local { replicas })
                .timeout(Duration::from_millis(500))
                .breaker(3, Duration::from_millis(200))
                .build()
        }
    };
    assert_eq!(build(0).await.unwrap_err(), RateLimitError::NoReplicas);
    let layer = build(2).await.unwrap();
    let res = status_through(&layer, "jude").await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "ratelimit-policy"), "\"api\";q=4;w=60");
    // A quota whose share the fallback cannot count is refused.
    let handle = layer.handle();
    let forever = Quota::new(1, Duration::from_secs(u64::MAX / 2)).named("api");
    assert!(handle.set_quotas([forever]).is_err());
    assert_eq!(handle.quotas()[0].count(), 4);

    redis.stop();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let res = status_through(&layer, "jude").await;
        statuses.push(res.status().as_u16());
        assert_eq!(header(&res, "ratelimit-policy"), "\"api\";q=4;w=120");
    }
    // Another key has a share of its own.
    statuses.push(status_through(&layer, "kim").await.status().as_u16());
    assert_eq!(statuses, [200, 200, 429, 200]);
    let stats = layer.stats();
    assert_eq!((stats.allowed, stats.rejected), (4, 1));
    // Three failures open the breaker; the fourth request (if it came
    // within the cooldown, as it does unless the machine stalled) skipped.
    assert_eq!(stats.errors + stats.skipped, 4, "{stats:?}");
    assert!(stats.errors >= 3, "{stats:?}");

    // Redis back (empty): within a few cooldowns a probe is answered and
    // the shared quota is in force again.
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let res = status_through(&layer, "jude").await;
        if header(&res, "ratelimit-policy") == "\"api\";q=4;w=60" {
            assert_eq!(res.status(), 200);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis never answered again"
        );
    }
    assert!(!layer.stats().skipping);
}

/// The gateway's `[redis]`: `on_failure = "local"` with `replicas` and the
/// breaker's settings, counted in `/metrics`; its mistakes located.
#[tokio::test]
async fn gateway_falls_back_to_local_limits() {
    use switchyard::gateway::{Gateway, GatewayConfig};

    let upstream = net::serve(axum::Router::new().fallback(|| async { "hello" })).await;
    // Nothing listens there: every connection is refused at once.
    let refusing = net::Refusing::new();
    let nowhere = refusing.addr;
    let config = |redis_section: &str| {
        format!(
            r#"
[redis]
url = "redis://{nowhere}/"
{redis_section}

[upstreams.app]
url = "http://{upstream}"

[[routes]]
name = "api"
rate_limit = {{ key = {{ header = "x-user" }}, quotas = [{{ name = "shared", limit = 4, period = "1m" }}], redis = true }}
split.targets = [{{ name = "app", upstream = "app", weight = 1 }}]
"#
        )
    };
    let text = config(
        "on_failure = \"local\"\nreplicas = 2\nbreaker_failures = 1\nbreaker_cooldown_ms = 60000",
    );
    let (gateway, addr) = serve_gateway(GatewayConfig::from_toml(&text).unwrap()).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let req = Request::get(format!("http://{addr}/"))
            .header("x-user", "lou")
            .body(Full::default())
            .unwrap();
        let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .unwrap()
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429]);
    let metrics = gateway.metrics();
    for line in [
        "switchyard_ratelimit_allowed_total{route=\"api\"} 2",
        "switchyard_ratelimit_rejected_total{route=\"api\"} 1",
        "switchyard_ratelimit_redis_errors_total{route=\"api\"} 1",
        "switchyard_ratelimit_redis_skipped_total{route=\"api\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }

    for (section, at) in [
        (
            "on_failure = \"allow\"\nfail_closed = true",
            "redis.fail_closed",
        ),
        ("replicas = 2", "redis.replicas"),
        ("on_failure = \"local\"\nreplicas = 0", "redis.replicas"),
    ] {
        let err =
            Gateway::from_config(GatewayConfig::from_toml(&config(section)).unwrap()).unwrap_err();
        assert!(
            err.problems.iter().any(|p| p.at == at),
            "{section}: {err:?}"
        );
    }
    assert!(GatewayConfig::from_toml(&config("on_failure = \"sometimes\"")).is_err());
}

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use switchyard::gateway::{Gateway, GatewayConfig};

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

    fn fixture(name: &str) -> String {
        format!("{FIXTURES}/{name}")
    }

    /// A client of `rediss://localhost:<port>/` trusting `ca`, presenting
    /// `client.pem` when `mutual`.
    fn tls_client(port: u16, ca: &str, mutual: bool) -> redis::Client {
        let read = |name: &str| std::fs::read(fixture(name)).unwrap();
        redis::Client::build_with_tls(
            format!("rediss://localhost:{port}/"),
            redis::TlsCertificates {
                client_tls: mutual.then(|| redis::ClientTlsConfig {
                    client_cert: read("client.pem"),
                    client_key: read("client.key"),
                }),
                root_cert: Some(read(ca)),
            },
        )
        .unwrap()
    }

    async fn start_tls(mutual: bool) -> Option<RedisServer> {
        RedisServer::spawn(
            |port| {
                let client_ca = if mutual { "client-ca.pem" } else { "ca.pem" };
                [
                    ("--port", "0".to_owned()),
                    ("--tls-port", port.to_string()),
                    ("--tls-cert-file", fixture("server.pem")),
                    ("--tls-key-file", fixture("server.key")),
                    ("--tls-ca-cert-file", fixture(client_ca)),
                    (
                        "--tls-auth-clients",
                        (if mutual { "yes" } else { "no" }).into(),
                    ),
                ]
                .into_iter()
                .flat_map(|(k, v)| [k.to_owned(), v])
                .collect()
            },
            |port| tls_client(port, "ca.pem", mutual),
        )
        .await
    }

    /// A gateway's configuration: one route to `upstream`, limited to 2
    /// a minute per `x-user`, counted in the `[redis]` section given.
    fn gateway_config(upstream: std::net::SocketAddr, redis_section: &str) -> GatewayConfig {
        GatewayConfig::from_toml(&format!(
            r#"
{redis_section}

[upstreams.app]
url = "http://{upstream}"

[[routes]]
name = "api"
rate_limit = {{ key = {{ header = "x-user" }}, quotas = [{{ name = "shared", limit = 2, period = "1m" }}], redis = true }}
split.targets = [{{ name = "app", upstream = "app", weight = 1 }}]
"#
        ))
        .unwrap()
    }

    /// The statuses of `n` requests of `user`, sent in turn to `addrs`.
    async fn statuses(addrs: &[std::net::SocketAddr], user: &str, n: usize) -> Vec<u16> {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        let mut out = Vec::new();
        for i in 0..n {
            let req = Request::get(format!("http://{}/", addrs[i % addrs.len()]))
                .header("x-user", user)
                .body(Full::default())
                .unwrap();
            let res = tokio::time::timeout(Duration::from_secs(30), client.request(req))
                .await
                .unwrap()
                .unwrap();
            out.push(res.status().as_u16());
        }
        out
    }

    /// The sum of a route metric of `api` over `gateways`.
    fn metric(gateways: &[&Gateway], name: &str) -> u64 {
        gateways
            .iter()
            .flat_map(|g| {
                g.metrics()
                    .lines()
                    .filter(|l| l.starts_with(&format!("{name}{{route=\"api\"}}")))
                    .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                    .collect::<Vec<_>>()
            })
            .sum()
    }

    /// The ids of the clients connected to `redis`, but the one asking.
    async fn other_clients(redis: &RedisServer) -> Vec<String> {
        let mut conn = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let me: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await
            .unwrap();
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut ids: Vec<String> = list
            .lines()
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .filter(|id| *id != me.to_string())
            .map(str::to_owned)
            .collect();
        ids.sort();
        ids
    }

    #[tokio::test]
    async fn a_limiter_over_tls_counts_and_refuses() {
        let Some(redis) = start_tls(false).await else {
            return;
        };
        let layer = RedisRateLimitLayer::builder(redis.manager().await)
            .key_by(by_user())
            .quota(Quota::per_minute(2).named("api"))
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let svc = layer.layer(ok_service());
        let mut got = Vec::new();
        for _ in 0..3 {
            let res = svc.clone().oneshot(req("alice")).await.unwrap();
            got.push(res.status().as_u16());
            if res.status() == StatusCode::TOO_MANY_REQUESTS {
                assert!(!header(&res, RETRY_AFTER.as_str()).is_empty());
                assert_eq!(json(res).await["status"], 429);
            }
        }
        assert_eq!(got, [200, 200, 429]);
        let stats = layer.stats();
        assert_eq!((stats.allowed, stats.rejected, stats.errors), (2, 1, 0));
        // The state is in this Redis, over TLS.
        let mut conn = redis.manager().await;
        let keys: Vec<String> = conn.keys("switchyard:rl:*").await.unwrap();
        assert_eq!(keys, ["switchyard:rl:{b:alice}:api"]);
    }

    #[tokio::test]
    async fn a_server_from_another_ca_is_refused() {
        let Some(redis) = start_tls(false).await else {
            return;
        };
        let wrong = tls_client(redis.port, "other-ca.pem", false);
        let err = tokio::time::timeout(
            Duration::from_secs(30),
            wrong.get_multiplexed_async_connection(),
        )
        .await
        .unwrap()
        .expect_err("a certificate from another CA is refused");
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );
    }

    /// Two gateway replicas with `url = "rediss://..."` and `ca_file` share
    /// a limit; a reload with the same `[redis]` keeps the connection; a
    /// replica trusting another CA counts errors and lets requests through.
    #[tokio::test]
    async fn gateway_replicas_share_a_limit_over_tls() {
        let Some(redis) = start_tls(false).await else {
            return;
        };
        let upstream = net::serve(axum::Router::new().fallback(|| async { "hello" })).await;
        // Generous timeouts where Redis answers; where it cannot, each
        // request waits for its check's timeout (the connection manager
        // retries until then).
        let section = |ca: &str, timeout_ms: u64| {
            format!(
                "[redis]\nurl = \"rediss://localhost:{}/\"\nca_file = \"{}\"\ntimeout_ms = {timeout_ms}",
                redis.port,
                fixture(ca)
            )
        };
        let config = gateway_config(upstream, &section("ca.pem", 5000));
        let (a, addr_a) = serve_gateway(config.clone()).await;
        let (b, addr_b) = serve_gateway(config.clone()).await;
        let (replicas, addrs) = ([a, b], [addr_a, addr_b]);
        assert_eq!(statuses(&addrs, "frank", 4).await, [200, 200, 429, 429]);
        let both = [&replicas[0], &replicas[1]];
        assert_eq!(metric(&both, "switchyard_ratelimit_allowed_total"), 2);
        assert_eq!(metric(&both, "switchyard_ratelimit_rejected_total"), 2);
        assert_eq!(metric(&both, "switchyard_ratelimit_redis_errors_total"), 0);

        // A reload with the same `[redis]` keeps the connection.
        let before = other_clients(&redis).await;
        assert_eq!(before.len(), 2, "{before:?}");
        replicas[0].reload(config.clone()).unwrap();
        assert_eq!(statuses(&addrs[..1], "frank", 1).await, [429]);
        assert_eq!(other_clients(&redis).await, before);

        // Trusting another CA: Redis is out of reach, requests are let
        // through (the default) and counted as errors.
        let (wrong, addr) =
            serve_gateway(gateway_config(upstream, &section("other-ca.pem", 1000))).await;
        assert_eq!(statuses(&[addr], "frank", 2).await, [200, 200]);
        assert_eq!(
            metric(&[&wrong], "switchyard_ratelimit_redis_errors_total"),
            2
        );
    }

    /// A Redis asking for client certificates: the gateway presenting
    /// `client_cert_file` shares the limit; without it, Redis is out of
    /// reach (fail-open, errors counted).
    #[tokio::test]
    async fn gateway_presents_a_client_certificate() {
        let Some(redis) = start_tls(true).await else {
            return;
        };
        let upstream = net::serve(axum::Router::new().fallback(|| async { "hello" })).await;
        let section = |timeout_ms: u64| {
            format!(
                "[redis]\nurl = \"rediss://localhost:{}/\"\nca_file = \"{}\"\ntimeout_ms = {timeout_ms}",
                redis.port,
                fixture("ca.pem")
            )
        };
        // Generous where Redis answers; without a certificate, each request
        // waits for its check's timeout (the connection manager retries
        // until then).
        let mutual = format!(
            "{}\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
            section(5000),
            fixture("client.pem"),
            fixture("client.key")
        );
        let (with, addr) = serve_gateway(gateway_config(upstream, &mutual)).await;
        assert_eq!(statuses(&[addr], "grace", 3).await, [200, 200, 429]);
        assert_eq!(
            metric(&[&with], "switchyard_ratelimit_redis_errors_total"),
            0
        );

        // Redis refuses a client without a certificate.
        let anonymous = tls_client(redis.port, "ca.pem", false);
        let refused = tokio::time::timeout(Duration::from_secs(30), async {
            let mut conn = anonymous.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
        .unwrap();
        assert!(refused.is_err(), "{refused:?}");

        let (without, addr) = serve_gateway(gateway_config(upstream, &section(1000))).await;
        // grace is out of units in Redis, but this replica cannot ask.
        assert_eq!(statuses(&[addr], "grace", 2).await, [200, 200]);
        assert_eq!(
            metric(&[&without], "switchyard_ratelimit_redis_errors_total"),
            2
        );
    }

    /// Mistakes in a TLS `[redis]` are problems of the configuration,
    /// located, before anything connects.
    #[tokio::test]
    async fn tls_mistakes_are_located() {
        let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
        let problems = |redis_section: String| {
            let err = Gateway::from_config(gateway_config(upstream, &redis_section)).unwrap_err();
            err.problems
                .iter()
                .map(|p| format!("{}: {}", p.at, p.message))
                .collect::<Vec<_>>()
        };
        let url = "url = \"rediss://localhost:6379/\"";
        let cases = [
            (
                format!("[redis]\n{url}\nca_file = \"/nonexistent/ca.pem\""),
                "redis.ca_file: cannot read `/nonexistent/ca.pem`",
            ),
            (
                format!("[redis]\n{url}\nca_file = \"{}\"", fixture("client.key")),
                "redis.ca_file: the PEM holds no certificate",
            ),
            (
                format!(
                    "[redis]\nurl = \"redis://localhost:6379/\"\nca_file = \"{}\"",
                    fixture("ca.pem")
                ),
                "redis.ca_file: only `rediss://` URLs",
            ),
            (
                format!(
                    "[redis]\n{url}\nclient_cert_file = \"{}\"",
                    fixture("client.pem")
                ),
                "redis.client_key_file: `client_cert_file` needs `client_key_file`",
            ),
            (
                format!(
                    "[redis]\n{url}\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"",
                    fixture("client.pem"),
                    fixture("server.key")
                ),
                "redis.client_cert_file: unusable client certificate",
            ),
            (
                "[redis]\nurl = \"rediss://localhost:6379/#insecure\"".to_owned(),
                "redis.url: `#insecure`",
            ),
        ];
        for (section, want) in cases {
            let got = problems(section);
            assert!(got.iter().any(|p| p.starts_with(want)), "{want}: {got:?}");
        }
    }
}
