#![cfg(all(feature = "json", feature = "redis"))]
//! Token limits and budgets shared by gateway replicas through a real
//! `redis-server` on loopback, which each test starts on a free port (and
//! stops): three replicas (each its own `Meter` and `ModelRouter`, served
//! over HTTP) under 50 concurrent clients against one token limit; eight
//! racing requests over three replicas against a budget that fits one; a
//! reservation whose settlement never reaches Redis lapsing; and Redis
//! going away under each `RedisFailure` mode.
//!
//! `.ci/run` installs `redis-server` (Debian's package) and sets
//! `SWITCHYARD_REQUIRE_REDIS=1`, so that these tests fail there when it is
//! missing; elsewhere, without `redis-server` on the `PATH`, each test
//! says so on stderr and returns.

use crate::support::net;
use crate::support::redis as redis_support;
use crate::support::spend as support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, Response, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::{RngExt, SeedableRng};
use redis::AsyncCommands;
use redis_support::RedisServer;
use support::{Ask, Up, UpBody, Upstream, bytes, header, json_body, micros, number};
use switchyard::auth::Identity;
use switchyard::key::KeyBy;
use switchyard::model::{Alias, Catalog, Model, ModelBody, ModelRouter};
use switchyard::ratelimit::Quota;
use switchyard::ratelimit::redis::RedisFailure;
use switchyard::spend::redis::RedisSpendBuilder;
use switchyard::spend::{
    Budget, BudgetScope, Meter, MeterBuilder, Period, Price, PriceCatalog, TokenLimit,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tower::ServiceExt;

/// Micro-units per million tokens, (input, output).
const GPT4O: (u64, u64) = (2_500_000, 10_000_000);

fn prices() -> PriceCatalog {
    PriceCatalog::new().with_price("gpt-4o", Price::per_million(GPT4O.0, GPT4O.1))
}

fn catalog() -> Catalog {
    Catalog::new()
        .model(Model::new("gpt-4o", "openai"))
        .alias(Alias::new("chat", [("gpt-4o", 1)]))
}

fn by_team() -> KeyBy {
    KeyBy::header(HeaderName::from_static("x-team"))
}

type Router = ModelRouter<Up<Full<Bytes>>>;
type Answer = Response<ModelBody<UpBody>>;

fn router(meter: &Meter, up: &Upstream) -> Router {
    ModelRouter::builder()
        .upstream("openai", up.service())
        .catalog(catalog())
        .admit(meter.clone())
        .build()
        .unwrap()
}

/// A meter counting in `redis` under `prefix`.
async fn meter(
    redis: &RedisServer,
    prefix: &str,
    build: impl FnOnce(MeterBuilder) -> MeterBuilder,
    store: impl FnOnce(RedisSpendBuilder) -> RedisSpendBuilder,
) -> Meter {
    let spend = store(RedisSpendBuilder::new(redis.manager().await).prefix(prefix));
    build(Meter::builder().prices(prices()))
        .redis(spend)
        .build()
        .unwrap()
}

async fn send(router: &Router, ask: &Ask) -> Answer {
    tokio::time::timeout(
        Duration::from_secs(10),
        router.clone().oneshot(ask.request()),
    )
    .await
    .expect("answered in time")
    .expect("the upstream was reached")
}

/// The Redis key of a token limit's state, as `spend::redis` names it,
/// for a request key read from a header (`b:` is its kind, as the rate
/// limiter writes it).
fn limit_key(prefix: &str, limit: &str, key: &str) -> String {
    format!("{prefix}{{{prefix}}}:tokens:{limit}:b:{key}")
}

/// Redis's clock, in microseconds.
async fn redis_now(conn: &mut redis::aio::ConnectionManager) -> u64 {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await.unwrap();
    secs * 1_000_000 + micros
}

/// Waits until `key`'s value stays the same for 300 ms (the replicas'
/// settlements run in tasks of their own, after the answers end).
async fn settled_value(conn: &mut redis::aio::ConnectionManager, key: &str) -> Option<u64> {
    let mut last: Option<u64> = conn.get(key).await.unwrap();
    let mut same = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while same < 3 {
        assert!(Instant::now() < deadline, "{key} never settled");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now: Option<u64> = conn.get(key).await.unwrap();
        if now == last {
            same += 1;
        } else {
            (last, same) = (now, 0);
        }
    }
    last
}

// === three replicas, fifty clients, one token limit ===

/// The answer of a replica served over HTTP, its upstream's failures made
/// 502s (so that the router's error type is axum's `Infallible`).
fn served(meter: &Meter, up: &Upstream) -> axum::Router {
    let inner = up.service::<axum::body::Body>();
    let service = tower::service_fn(move |req| {
        let inner = inner.clone();
        async move {
            Ok::<_, Infallible>(inner.oneshot(req).await.unwrap_or_else(|_| {
                let mut res = Response::new(UpBody::default());
                *res.status_mut() = StatusCode::BAD_GATEWAY;
                res
            }))
        }
    });
    let router = ModelRouter::builder()
        .upstream("openai", tower::util::BoxCloneSyncService::new(service))
        .catalog(catalog())
        .admit(meter.clone())
        .build()
        .unwrap();
    axum::Router::new().fallback_service(router)
}

/// What one client's request got.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    status: u16,
    estimate: u64,
    actual: u64,
    input: u64,
}

/// 3 replicas on one Redis, 50 clients spread round robin, 6 requests each,
/// all of one team, against 20,000 tokens an hour (one token each 180 ms:
/// in the few seconds of the test almost nothing comes back). Each request
/// asks for 100 to 400 tokens and its answer uses its estimate ±30 %
/// (seeded per client).
///
/// The bound (as for one process, see `tests/spend.rs`): the actual tokens
/// of the admitted requests are at most
///
///   limit + the tokens that come back in the test's time
///         + Σ (actual − estimate)⁺ of the requests whose settlement had not
///           reached Redis when the last request was admitted,
///
/// and since which those were is not observable from outside, the last
/// term is bounded by Σ (actual − estimate)⁺ over every admitted request
/// (about 7.5 % of what they used, for usage uniform in ±30 %). A limit
/// read from each replica's memory would let through up to 3 × the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_one_token_limit() {
    const LIMIT: u64 = 20_000;
    const CLIENTS: usize = 50;
    const REQUESTS: usize = 6;
    const INTERVAL_US: u64 = 180_000;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let prefix = "fleet:";
    let up = Upstream::new();
    let mut meters = Vec::new();
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for _ in 0..3 {
        let m = meter(
            &redis,
            prefix,
            |b| {
                b.token_limit(TokenLimit::new(
                    by_team(),
                    Quota::per_hour(LIMIT as u32).named("tph"),
                ))
            },
            // A Redis that does not answer refuses: nothing is let through
            // uncounted.
            |s| {
                s.on_redis_failure(RedisFailure::Reject)
                    .timeout(Duration::from_secs(5))
            },
        )
        .await;
        addrs.push(net::serve(served(&m, &up)).await);
        meters.push(m);
    }
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();

    let results: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, results) = (client.clone(), Arc::clone(&results));
        let addr = addrs[c % addrs.len()];
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(c as u64);
            for _ in 0..REQUESTS {
                let max_tokens = rng.random_range(100..=400u64);
                let probe = Ask::chat("chat", max_tokens);
                let estimate = probe.estimate();
                let actual = estimate * rng.random_range(70..=130u64) / 100;
                let input = actual.min(probe.input_estimate());
                let ask = probe.header("x-team", "fleet").usage(input, actual - input);
                let mut req = ask.build(|b| Full::new(Bytes::from(b)));
                *req.uri_mut() = format!("http://{addr}/v1/chat/completions")
                    .parse()
                    .unwrap();
                let res = client.request(req).await.unwrap();
                let status = res.status().as_u16();
                match status {
                    200 => {
                        assert_eq!(number(&res, "x-switchyard-input-tokens"), input);
                        bytes(res).await;
                    }
                    429 => {
                        let error = json_body(res).await;
                        assert_eq!(error["error"]["type"], "tokens", "{error}");
                    }
                    other => panic!("unexpected {other}"),
                }
                results.lock().unwrap().push(Outcome {
                    status,
                    estimate,
                    actual,
                    input,
                });
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let results = results.lock().unwrap().clone();
    let admitted: Vec<_> = results.iter().filter(|r| r.status == 200).collect();
    let refused = results.len() - admitted.len();
    let used: u64 = admitted.iter().map(|r| r.actual).sum();
    let errors: u64 = admitted
        .iter()
        .map(|r| r.actual.saturating_sub(r.estimate))
        .sum();
    let refill = (elapsed.as_micros() as u64).div_ceil(INTERVAL_US);
    let bound = LIMIT + refill + errors;
    eprintln!(
        "admitted {} of {} requests in {elapsed:?}: {used} tokens against a limit of {LIMIT} \
         (overshoot {}), bound {bound} (refill {refill}, estimate errors {errors})",
        admitted.len(),
        results.len(),
        used as i64 - LIMIT as i64,
    );
    assert!(used <= bound, "{used} admitted > bound {bound}");
    // Far from three replicas each allowing the limit.
    assert!(used < LIMIT * 3 / 2, "{used}");
    assert!(refused > 0 && admitted.len() > 20);

    // Every replica took part; the counters add up.
    let stats: Vec<_> = meters.iter().map(Meter::stats).collect();
    for s in &stats {
        assert!(s.admitted > 0, "{stats:?}");
        assert_eq!(s.backend_errors, 0, "{stats:?}");
    }
    let sum = |f: fn(&switchyard::spend::MeterStats) -> u64| stats.iter().map(f).sum::<u64>();
    assert_eq!(sum(|s| s.admitted), admitted.len() as u64);
    assert_eq!(sum(|s| s.settled), admitted.len() as u64);
    assert_eq!(sum(|s| s.refused_tokens), refused as u64);
    assert_eq!(
        sum(|s| s.cost_micros),
        admitted
            .iter()
            .map(|r| micros(r.input, r.actual - r.input, GPT4O))
            .sum::<u64>()
    );
    assert_eq!(up.seen().len(), admitted.len());

    // Redis holds exactly what was used: the arrival time is the first
    // admission's time plus one interval per token used (estimates were
    // replaced by the actual), so ahead of now by that less the time since.
    let mut conn = redis.manager().await;
    let tat = settled_value(&mut conn, &limit_key(prefix, "tph", "fleet"))
        .await
        .expect("the limit's state is in Redis");
    let now = redis_now(&mut conn).await;
    let held = (tat - now) / INTERVAL_US;
    let since = (started.elapsed().as_micros() as u64).div_ceil(INTERVAL_US) + 1;
    assert!(
        held <= used && held + since >= used,
        "Redis holds {held} tokens, {used} were used (less up to {since} come back)"
    );
}

// === budgets ===

fn acme() -> Identity {
    Identity::new("alice").with_tenant("acme")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn budgets_across_replicas_admit_exactly_one_of_eight() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let ask = Ask::chat("chat", 1000)
        .identity(acme())
        .usage(25, 100)
        .mode("wait");
    let limit = micros(ask.input_estimate(), 1000, GPT4O);
    let up = Upstream::new();
    let mut routers = Vec::new();
    for _ in 0..3 {
        let m = meter(
            &redis,
            "budget:",
            |b| b.budget(Budget::new(BudgetScope::Tenant, limit, Period::Month)),
            |s| {
                s.on_redis_failure(RedisFailure::Reject)
                    .timeout(Duration::from_secs(5))
            },
        )
        .await;
        routers.push((router(&m, &up), m));
    }

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let (router, ask) = (routers[i % 3].0.clone(), ask.clone());
        tasks.spawn(async move {
            let res = router.oneshot(ask.request()).await.unwrap();
            (res.status(), json_body(res).await)
        });
    }
    for _ in 0..7 {
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), tasks.join_next())
            .await
            .expect("seven refusals without waiting for the upstream")
            .unwrap()
            .unwrap();
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"]["code"], "insufficient_quota");
    }
    let mut conn = redis.manager().await;
    let hash = "budget:{budget:}:budget:tenant-month:acme";
    let reserved: u64 = conn.hget(hash, "reserved").await.unwrap();
    assert_eq!(reserved, limit);
    up.release(1);
    let (status, _) = tasks.join_next().await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(up.seen().len(), 1);
    let admitted: u64 = routers.iter().map(|(_, m)| m.stats().admitted).sum();
    let refused: u64 = routers.iter().map(|(_, m)| m.stats().refused_budget).sum();
    assert_eq!((admitted, refused), (1, 7));

    // Settled (in a task of the replica's): spent replaces the
    // reservation, and the room comes back on every replica.
    let spent = micros(25, 100, GPT4O);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, r): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(hash)
            .arg("spent")
            .arg("reserved")
            .query_async(&mut conn)
            .await
            .unwrap();
        if (s, r) == (Some(spent), Some(0)) {
            break;
        }
        assert!(Instant::now() < deadline, "spent {s:?}, reserved {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let smaller = Ask::chat("chat", 800).identity(acme());
    assert!(micros(smaller.input_estimate(), 800, GPT4O) <= limit - spent);
    for (router, _) in &routers {
        let res = send(router, &Ask::chat("chat", 1000).identity(acme())).await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        bytes(res).await;
    }
    let res = send(&routers[2].0, &smaller).await;
    assert_eq!(res.status(), 200);
    bytes(res).await;
}

// === a reservation whose settlement never arrives ===

/// A TCP relay to Redis that can be cut: connections through it die, and
/// new ones are refused.
struct Relay {
    addr: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start(to: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let held = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Self { addr, tasks }
    }

    fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_never_settled_lapses() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let relay = Relay::start(redis.port).await;
    let ask = Ask::chat("chat", 1000).identity(acme()).usage(25, 100);
    let limit = micros(ask.input_estimate(), 1000, GPT4O);
    let budget = || Budget::new(BudgetScope::Tenant, limit, Period::Lifetime);
    let ttl = Duration::from_secs(2);
    // Replica A reaches Redis through the relay; B directly.
    let via_relay = redis::Client::open(format!("redis://{}/", relay.addr))
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let a = Meter::builder()
        .prices(prices())
        .budget(budget())
        .redis(
            RedisSpendBuilder::new(via_relay)
                .prefix("lapse:")
                .reservation_ttl(ttl)
                .timeout(Duration::from_millis(300)),
        )
        .build()
        .unwrap();
    let b = meter(
        &redis,
        "lapse:",
        |m| m.budget(budget()),
        |s| s.reservation_ttl(ttl),
    )
    .await;
    let up = Upstream::new();
    let (ra, rb) = (router(&a, &up), router(&b, &up));

    // A admits (its worst case reserved in Redis) and waits upstream.
    let admitted_at = Instant::now();
    let held = tokio::spawn({
        let (ra, ask) = (ra.clone(), ask.clone().mode("wait"));
        async move { send(&ra, &ask).await.status() }
    });
    let mut conn = redis.manager().await;
    let hash = "lapse:{lapse:}:budget:tenant-lifetime:acme";
    let deadline = Instant::now() + Duration::from_secs(5);
    while conn
        .hget::<_, _, Option<u64>>(hash, "reserved")
        .await
        .unwrap()
        != Some(limit)
    {
        assert!(Instant::now() < deadline, "A never reserved");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // B is refused while A's reservation holds the budget.
    let res = send(&rb, &ask).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(admitted_at.elapsed() < ttl, "the machine stalled");

    // A loses Redis, then its answer ends: the settlement cannot arrive.
    relay.cut();
    up.release(1);
    assert_eq!(held.await.unwrap(), 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.stats().backend_errors == 0 {
        assert!(Instant::now() < deadline, "A's settlement never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reserved: u64 = conn.hget(hash, "reserved").await.unwrap();
    assert_eq!(reserved, limit, "still held");

    // Once the reservation lapses, the next admission drops it.
    tokio::time::sleep(ttl.saturating_sub(admitted_at.elapsed()) + Duration::from_millis(200))
        .await;
    let res = send(&rb, &ask).await;
    assert_eq!(res.status(), 200);
    bytes(res).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (spent, reserved): (Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(hash)
            .arg("spent")
            .arg("reserved")
            .query_async(&mut conn)
            .await
            .unwrap();
        // Only B's answer was counted; nothing is held.
        if (spent, reserved) == (Some(micros(25, 100, GPT4O)), Some(0)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spent {spent:?}, reserved {reserved:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === Redis down ===

/// 1,000 tokens an hour per team.
fn tph() -> TokenLimit {
    TokenLimit::new(by_team(), Quota::per_hour(1000).named("tph"))
}

#[tokio::test]
async fn when_redis_is_down_allow_lets_through_and_reject_refuses() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let fast = |s: RedisSpendBuilder| s.timeout(Duration::from_millis(300));
    let allow = meter(
        &redis,
        "down:",
        |b| b.token_limit(tph()),
        |s| fast(s.on_redis_failure(RedisFailure::Allow)),
    )
    .await;
    let reject = meter(
        &redis,
        "down:",
        |b| b.token_limit(tph()),
        |s| fast(s.on_redis_failure(RedisFailure::Reject)),
    )
    .await;
    let up = Upstream::new();
    let (ra, rr) = (router(&allow, &up), router(&reject, &up));
    let ask = Ask::chat("chat", 300).header("x-team", "t1");
    let res = send(&ra, &ask).await;
    assert_eq!(
        number(&res, "x-ratelimit-remaining-tokens"),
        1000 - ask.estimate()
    );
    bytes(res).await;

    redis.stop();
    // Allow: through, holding nothing (no limit headers), even a request
    // larger than the limit; counted as backend errors.
    for ask in [ask.clone(), Ask::chat("chat", 2000).header("x-team", "t1")] {
        let res = send(&ra, &ask).await;
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("x-ratelimit-remaining-tokens").is_none());
        bytes(res).await;
    }
    assert!(allow.stats().backend_errors >= 2, "{:?}", allow.stats());
    // Reject: a 503 in OpenAI's shape, never sent upstream.
    let seen = up.seen().len();
    let res = send(&rr, &ask).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&res, "content-type"), "application/json");
    let error = json_body(res).await;
    assert_eq!(error["error"]["code"], "limiter_unavailable", "{error}");
    assert_eq!(error["error"]["type"], "api_error");
    assert!(error["error"]["message"].is_string());
    assert_eq!(up.seen().len(), seen);

    // Redis back (empty): within a few breaker cooldowns the limit is
    // counted there again.
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let res = send(&ra, &ask).await;
        let has = res.headers().get("x-ratelimit-remaining-tokens").is_some();
        bytes(res).await;
        if has {
            break;
        }
        assert!(Instant::now() < deadline, "Redis never answered again");
    }
}

/// `Local { replicas: 2 }`: with Redis gone, each replica limits in memory
/// at its share (500 tokens an hour, a burst of 500).
#[tokio::test]
async fn when_redis_is_down_local_limits_at_the_replicas_share() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let local = meter(
        &redis,
        "local:",
        |b| b.token_limit(tph()),
        |s| {
            s.on_redis_failure(RedisFailure::Local { replicas: 2 })
                .timeout(Duration::from_millis(300))
        },
    )
    .await;
    let up = Upstream::new();
    let router = router(&local, &up);
    redis.stop();

    // Used exactly as estimated (nothing to settle).
    let ask = Ask::chat("chat", 300).header("x-team", "t1");
    let e = ask.estimate();
    let exact = ask.clone().usage(ask.input_estimate(), 300);
    let res = send(&router, &exact).await;
    assert_eq!(res.status(), 200);
    assert_eq!(number(&res, "x-ratelimit-remaining-tokens"), 500 - e);
    bytes(res).await;
    // The share has 500 − e left: not enough for another.
    let res = send(&router, &exact).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().get("retry-after").is_some());
    let error = json_body(res).await;
    assert_eq!(error["error"]["type"], "tokens", "{error}");
    // Another team has a share of its own.
    let res = send(&router, &Ask::chat("chat", 300).header("x-team", "t2")).await;
    assert_eq!(res.status(), 200);
    bytes(res).await;
    assert!(local.stats().backend_errors >= 1);
}

/// The same, settled for less than estimated: a request that used nothing
/// gives back its whole estimate in the share it was held in, as it does
/// in memory (the refund is counted at the share's interval, not the
/// whole limit's).
#[tokio::test]
async fn when_redis_is_down_local_refunds_in_the_share() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let local = meter(
        &redis,
        "refund:",
        |b| b.token_limit(tph()),
        |s| {
            s.on_redis_failure(RedisFailure::Local { replicas: 2 })
                .timeout(Duration::from_millis(300))
        },
    )
    .await;
    let up = Upstream::new();
    let router = router(&local, &up);
    redis.stop();

    let nothing = Ask::chat("chat", 300).header("x-team", "t1").usage(0, 0);
    let e = nothing.estimate();
    for _ in 0..2 {
        let res = send(&router, &nothing).await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            number(&res, "x-ratelimit-remaining-tokens"),
            500 - e,
            "the previous request's estimate came back whole"
        );
        bytes(res).await;
    }
}
