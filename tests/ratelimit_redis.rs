#![cfg(feature = "redis")]
//! `RedisRateLimitLayer` against a real `redis-server` on loopback, which
//! each test starts on a free port (and stops): two "replicas" sharing
//! quotas, several quotas all-or-nothing, time passing (moved in Redis,
//! not slept), Redis going away, and the gateway-facing answers.
//!
//! `.ci/run` installs `redis-server` (Debian's package) and sets
//! `SWITCHYARD_REQUIRE_REDIS=1`, so that these tests fail there when it is
//! missing; elsewhere, without `redis-server` on the `PATH`, each test
//! says so on stderr and returns.

use std::convert::Infallible;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use redis::AsyncCommands;
use serde_json::Value;
use switchyard::key::{Key, KeyBy};
use switchyard::ratelimit::redis::{RedisFailure, RedisRateLimitLayer};
use switchyard::ratelimit::{MissingKey, Quota};
use tower::{Layer, Service, ServiceExt, service_fn};

#[path = "support/net.rs"]
mod net;

/// A `redis-server` of our own, killed on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// `None` (with a note) when `redis-server` is not installed and not
    /// required.
    async fn start() -> Option<Self> {
        let port = {
            let probe = TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if std::env::var_os("SWITCHYARD_REQUIRE_REDIS").is_none() => {
                eprintln!("redis-server not started ({e}): Redis tests skipped");
                return None;
            }
            Err(e) => panic!("redis-server is required (SWITCHYARD_REQUIRE_REDIS): {e}"),
        };
        let server = RedisServer { child, port };
        // Wait until it answers PING.
        for _ in 0..200 {
            if let Ok(mut c) = server.client().get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return Some(server);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on port {port}");
    }

    fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).unwrap()
    }

    async fn manager(&self) -> redis::aio::ConnectionManager {
        self.client().get_connection_manager().await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    assert!(
        json(res).await["detail"]
            .as_str()
            .unwrap()
            .contains("rate limiter is unavailable")
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
    let replicas = [
        Gateway::from_config(GatewayConfig::from_toml(&text).unwrap()).unwrap(),
        Gateway::from_config(GatewayConfig::from_toml(&text).unwrap()).unwrap(),
    ];
    let mut addrs = Vec::new();
    for g in &replicas {
        addrs.push(net::serve(axum::Router::new().fallback_service(g.clone())).await);
    }

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
