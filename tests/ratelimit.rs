//! Behaviour of `switchyard::ratelimit`: the algorithm at its boundaries,
//! quotas, keys, headers, live changes and memory bounds.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use switchyard::key::{Key, KeyBy, TrustedProxies};
use switchyard::ratelimit::{
    Clock, ManualClock, MissingKey, Quota, RateLimitError, RateLimitLayer,
};
use tower::{Layer, Service, ServiceExt, service_fn};

/// Tokio's clock, so that `start_paused` tests drive the limiter.
#[derive(Debug)]
struct TokioClock(tokio::time::Instant);

impl TokioClock {
    fn new() -> Self {
        TokioClock(tokio::time::Instant::now())
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

fn api_key() -> KeyBy {
    KeyBy::header(HeaderName::from_static("x-api-key"))
}

fn req(key: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .header("x-api-key", key)
        .body(Full::default())
        .unwrap()
}

/// An inner service that counts its calls.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl Service<Request<Full<Bytes>>> for Counting {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok")))))
    }
}

fn counting() -> (Arc<AtomicUsize>, Counting) {
    let svc = Counting::default();
    (svc.0.clone(), svc)
}

fn header<'a, B>(res: &'a Response<B>, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn burst_boundary_and_one_emission_interval() {
    let layer = RateLimitLayer::builder()
        .key_by(api_key())
        .quota(Quota::per_second(10).burst(3).named("api"))
        .clock(TokioClock::new())
        .build()
        .unwrap();
    let (calls, inner) = counting();
    let svc = layer.layer(inner);

    for _ in 0..3 {
        let res = svc.clone().oneshot(req("k")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    // The burst+1-th request in the same instant is refused...
    let res = svc.clone().oneshot(req("k")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "1");
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "inner not called when refused"
    );
    let body: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["status"], 429);
    assert_eq!(body["policy"], "api");
    assert_eq!(body["retry_after"], 1);

    // ...still just before one emission interval (100 ms)...
    tokio::time::advance(Duration::from_millis(100) - Duration::from_nanos(1)).await;
    let res = svc.clone().oneshot(req("k")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);

    // ...and allowed after exactly one.
    tokio::time::advance(Duration::from_nanos(1)).await;
    let res = svc.clone().oneshot(req("k")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "ratelimit"), r#""api";r=0;t=1"#);

    // Other keys are not affected.
    let res = svc.clone().oneshot(req("other")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(header(&res, "ratelimit"), r#""api";r=2;t=1"#);

    let stats = layer.handle().stats();
    assert_eq!((stats.allowed, stats.rejected), (5, 2));
}

#[test]
fn headers_follow_the_draft() {
    // draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy: "default";q=100;w=60`
    // and `RateLimit: "default";r=50;t=30`.
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .key_by(api_key())
        .quota(Quota::per_minute(100).named("default"))
        .legacy_headers(true)
        .clock(clock.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    let key = Key::from("k");
    for _ in 0..49 {
        assert!(handle.check(&key, 1).is_allowed());
    }
    let svc = layer.layer(service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
    }));
    let res = futures_lite_block_on(svc.oneshot(req("k"))).unwrap();
    assert_eq!(header(&res, "ratelimit-policy"), r#""default";q=100;w=60"#);
    // 50 of 100 used, each worth 0.6 s of recovery: back to full in 30 s.
    assert_eq!(header(&res, "ratelimit"), r#""default";r=50;t=30"#);
    assert_eq!(header(&res, "x-ratelimit-limit"), "100");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "50");
    assert_eq!(header(&res, "x-ratelimit-reset"), "30");
}

#[test]
fn remaining_never_exceeds_the_policy_quota() {
    // 2 per minute with bursts of 5: up to 5 are free at once, but the
    // policy grants 2 per window, so `r` says at most 2 until fewer are
    // left; the burst itself still passes.
    let layer = RateLimitLayer::builder()
        .key_by(api_key())
        .quota(Quota::per_minute(2).burst(5).named("bursty"))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
    }));
    let mut seen = Vec::new();
    for _ in 0..6 {
        let res = futures_lite_block_on(svc.clone().oneshot(req("k"))).unwrap();
        assert_eq!(header(&res, "ratelimit-policy"), r#""bursty";q=2;w=60"#);
        seen.push((res.status().as_u16(), header(&res, "ratelimit").to_owned()));
    }
    let r = |n: u32| format!(r#""bursty";r={n};"#);
    let expected = [(200, 2), (200, 2), (200, 2), (200, 1), (200, 0), (429, 0)];
    for ((status, header), (want_status, want_r)) in seen.iter().zip(expected) {
        assert_eq!(*status, want_status, "{seen:?}");
        assert!(header.starts_with(&r(want_r)), "{seen:?}");
    }
}

/// Polls an immediately-ready future (the services here never wait).
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("future was not ready"),
    }
}

#[test]
fn several_quotas_are_all_or_nothing() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .key_by(api_key())
        .quota(Quota::per_second(10).named("fast"))
        .quota(Quota::per_hour(3).named("slow"))
        .clock(clock.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    let key = Key::from("k");
    for _ in 0..3 {
        assert!(handle.check(&key, 1).is_allowed());
    }
    for _ in 0..5 {
        let d = handle.check(&key, 1);
        assert!(!d.is_allowed());
        assert_eq!(d.refused_by(), Some(1));
        // Retry once one hourly unit is back: 20 minutes.
        assert_eq!(d.retry_after(), Some(Duration::from_secs(1200)));
    }
    // The refused requests took nothing from the fast quota.
    let peek = handle.peek(&key, 1);
    assert_eq!(peek.quota(0).unwrap().remaining, 7);
    assert_eq!(peek.quota(1).unwrap().remaining, 0);
}

#[test]
fn cost_and_charge() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .key_by(api_key())
        .quota(Quota::per_second(100).named("tokens"))
        .cost(|req| {
            req.headers
                .get("x-cost")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1)
        })
        .clock(clock.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
    }));
    let costly = |cost: &str| {
        Request::builder()
            .header("x-api-key", "k")
            .header("x-cost", cost)
            .body(Full::default())
            .unwrap()
    };
    let res = futures_lite_block_on(svc.clone().oneshot(costly("60"))).unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "ratelimit"), r#""tokens";r=40;t=1"#);
    let res = futures_lite_block_on(svc.clone().oneshot(costly("41"))).unwrap();
    assert_eq!(res.status(), 429);
    // A cost above the burst can never pass: no Retry-After to wait for.
    let res = futures_lite_block_on(svc.clone().oneshot(costly("101"))).unwrap();
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_none());

    // Usage known after the fact: 30 more units; the key may go into debt.
    let key = handle.key_of(&costly("1")).unwrap().into_owned();
    handle.charge(&key, 30);
    assert_eq!(handle.peek(&key, 1).quota(0).unwrap().remaining, 10);
    handle.charge(&key, 50);
    let d = handle.peek(&key, 1);
    assert!(!d.is_allowed());
    // 140 units used of 100: 41 units of 10 ms must recover first.
    assert_eq!(d.retry_after(), Some(Duration::from_millis(410)));
    clock.advance(Duration::from_millis(410));
    assert!(handle.check(&key, 1).is_allowed());
}

#[test]
fn builder_errors() {
    let err = |b: switchyard::ratelimit::RateLimitBuilder| b.build().unwrap_err();
    assert_eq!(err(RateLimitLayer::builder()), RateLimitError::NoQuota);
    assert_eq!(
        err(RateLimitLayer::builder().quota(Quota::per_second(0))),
        RateLimitError::InvalidQuota("0-per-1s".into())
    );
    assert!(matches!(
        err(RateLimitLayer::builder().quota(Quota::per_second(1).burst(0))),
        RateLimitError::InvalidQuota(_)
    ));
    assert!(matches!(
        err(RateLimitLayer::builder().quota(Quota::per_second(1).named("a \"b\""))),
        RateLimitError::InvalidName(_)
    ));
    assert_eq!(
        err(RateLimitLayer::builder()
            .quota(Quota::per_second(1).named("x"))
            .quota(Quota::per_minute(1).named("x"))),
        RateLimitError::DuplicateName("x".into())
    );
    let five = (1..=5).fold(RateLimitLayer::builder(), |b, i| {
        b.quota(Quota::per_second(i))
    });
    assert_eq!(err(five), RateLimitError::TooManyQuotas { max: 4, got: 5 });
    assert_eq!(
        err(RateLimitLayer::builder()
            .quota(Quota::per_second(1))
            .max_keys(0)),
        RateLimitError::NoKeys
    );
}

#[test]
fn live_quota_change_keeps_key_state() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(10).named("api"))
        .clock(clock.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    let key = Key::from("k");
    for _ in 0..6 {
        assert!(handle.check(&key, 1).is_allowed());
    }
    assert_eq!(handle.peek(&key, 1).quota(0).unwrap().remaining, 4);
    // Double the rate and the burst: the 6 units used stay used.
    handle
        .set_quotas([Quota::per_second(20).burst(20).named("api")])
        .unwrap();
    // 6 units of 100 ms = 600 ms of debt = 12 units of 50 ms.
    assert_eq!(handle.peek(&key, 1).quota(0).unwrap().remaining, 8);
    // An invalid change is refused and nothing changes.
    assert!(handle.set_quotas([]).is_err());
    assert_eq!(handle.quotas()[0].count(), 20);
}

#[test]
fn dry_run_and_allow_list() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .key_by(api_key())
        .quota(Quota::per_second(1).named("one"))
        .dry_run(true)
        .allow("vip")
        .clock(clock.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    let (calls, inner) = counting();
    let svc = layer.layer(inner);
    for _ in 0..3 {
        let res = futures_lite_block_on(svc.clone().oneshot(req("k"))).unwrap();
        assert_eq!(res.status(), 200);
    }
    let res = futures_lite_block_on(svc.clone().oneshot(req("k"))).unwrap();
    assert_eq!(header(&res, "ratelimit"), r#""one";r=0;t=1"#);
    assert_eq!(handle.stats().dry_run_rejected, 3);

    handle.set_dry_run(false);
    let res = futures_lite_block_on(svc.clone().oneshot(req("k"))).unwrap();
    assert_eq!(res.status(), 429);
    for _ in 0..5 {
        let res = futures_lite_block_on(svc.clone().oneshot(req("vip"))).unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.headers().get("ratelimit").is_none());
    }
    assert_eq!(handle.stats().bypassed, 5);
    handle.set_allow_list(Vec::<Key<'static>>::new());
    futures_lite_block_on(svc.clone().oneshot(req("vip"))).unwrap();
    let res = futures_lite_block_on(svc.clone().oneshot(req("vip"))).unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(calls.load(Ordering::SeqCst), 4 + 5 + 1);
}

#[test]
fn missing_key_outcomes() {
    let build = |on_missing| {
        RateLimitLayer::builder()
            .key_by(api_key())
            .quota(Quota::per_second(1))
            .on_missing_key(on_missing)
            .build()
            .unwrap()
            .layer(service_fn(|_: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
            }))
    };
    let keyless = || Request::new(Full::<Bytes>::default());
    let res = futures_lite_block_on(
        build(MissingKey::Reject(StatusCode::BAD_REQUEST)).oneshot(keyless()),
    )
    .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(header(&res, "content-type"), "application/problem+json");
    let res = futures_lite_block_on(
        build(MissingKey::Reject(StatusCode::TOO_MANY_REQUESTS)).oneshot(keyless()),
    )
    .unwrap();
    assert_eq!(res.status(), 429);
    let svc = build(MissingKey::Allow);
    for _ in 0..3 {
        let res = futures_lite_block_on(svc.clone().oneshot(keyless())).unwrap();
        assert_eq!(res.status(), 200);
    }

    // Falling back to another key instead: the header, else one shared key.
    let svc = RateLimitLayer::builder()
        .key_by(api_key().or(KeyBy::global()))
        .quota(Quota::per_second(1))
        .build()
        .unwrap()
        .layer(service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        }));
    assert_eq!(
        futures_lite_block_on(svc.clone().oneshot(keyless()))
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        futures_lite_block_on(svc.clone().oneshot(keyless()))
            .unwrap()
            .status(),
        429
    );
    assert_eq!(
        futures_lite_block_on(svc.clone().oneshot(req("k")))
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn spoofed_forwarded_for_from_untrusted_peer_is_ignored() {
    let trusted = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
    let layer = RateLimitLayer::builder()
        .key_by(KeyBy::client_ip(trusted))
        .quota(Quota::per_minute(2))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
    }));
    let from = |peer: &str, xff: &str| {
        let mut r = Request::builder()
            .header("x-forwarded-for", xff)
            .body(Full::<Bytes>::default())
            .unwrap();
        r.extensions_mut()
            .insert(peer.parse::<SocketAddr>().unwrap());
        r
    };
    // An untrusted client rotating fake addresses is still one key.
    let statuses: Vec<u16> = (0..4)
        .map(|i| {
            let res = futures_lite_block_on(
                svc.clone()
                    .oneshot(from("203.0.113.5:4000", &format!("1.2.3.{i}"))),
            )
            .unwrap();
            res.status().as_u16()
        })
        .collect();
    assert_eq!(statuses, [200, 200, 429, 429]);
    // Through a trusted proxy, the forwarded address is the key.
    for i in 0..4 {
        let res = futures_lite_block_on(
            svc.clone()
                .oneshot(from("10.0.0.1:4000", &format!("1.2.3.{i}"))),
        )
        .unwrap();
        assert_eq!(res.status(), 200);
    }
}

#[test]
fn poll_ready_is_forwarded() {
    #[derive(Clone)]
    struct NotReady;
    impl Service<Request<Full<Bytes>>> for NotReady {
        type Response = Response<Full<Bytes>>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Pending
        }
        fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
            unreachable!("never ready")
        }
    }
    let mut svc = RateLimitLayer::builder()
        .quota(Quota::per_second(1))
        .build()
        .unwrap()
        .layer(NotReady);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_pending());
}

#[test]
fn full_table_sweeps_fresh_keys_then_shares_overflow() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(1).burst(2))
        .max_keys(100)
        .clock(clock.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    for i in 0..100 {
        assert!(handle.check(&Key::from(format!("k{i}")), 1).is_allowed());
    }
    assert_eq!(handle.stats().tracked_keys, 100);
    // The table is full of live keys: newcomers share one overflow state
    // (burst 2), while known keys keep their own.
    assert!(handle.check(&Key::from("new1"), 1).is_allowed());
    assert!(handle.check(&Key::from("new2"), 1).is_allowed());
    assert!(!handle.check(&Key::from("new3"), 1).is_allowed());
    assert!(handle.check(&Key::from("k5"), 1).is_allowed());
    assert_eq!(handle.stats().tracked_keys, 100);
    assert_eq!(handle.stats().overflowed, 3);

    // Once every key has recovered, the next newcomer sweeps them away.
    clock.advance(Duration::from_secs(2));
    assert!(handle.check(&Key::from("fresh"), 1).is_allowed());
    let stats = handle.stats();
    assert_eq!(stats.evicted, 100);
    assert_eq!(stats.tracked_keys, 1);
}

#[test]
fn two_threads_on_one_key_never_exceed_the_burst() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(1000).burst(500))
        .clock(clock.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    let allowed = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                let key = Key::from("shared");
                for _ in 0..2000 {
                    if handle.check(&key, 1).is_allowed() {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(allowed.load(Ordering::Relaxed), 500);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Over any arrival sequence, the units allowed never exceed
    /// burst + rate × elapsed, for each of two quotas at once.
    #[test]
    fn allowed_never_exceeds_burst_plus_rate(
        count in 1u32..50,
        period_ms in 1u64..5_000,
        burst in 1u32..20,
        arrivals in prop::collection::vec((0u64..200_000_000, 1u32..5), 1..300),
    ) {
        let clock = ManualClock::new();
        let period = Duration::from_millis(period_ms);
        let layer = RateLimitLayer::builder()
            .quota(Quota::new(count, period).burst(burst).named("a"))
            .quota(Quota::per_second(40).burst(30).named("b"))
            .clock(clock.clone())
            .build()
            .unwrap();
        let handle = layer.handle();
        let key = Key::from("k");
        let mut allowed = 0u64;
        let mut elapsed = Duration::ZERO;
        for (gap_ns, cost) in arrivals {
            clock.advance(Duration::from_nanos(gap_ns));
            elapsed += Duration::from_nanos(gap_ns);
            if handle.check(&key, cost).is_allowed() {
                allowed += u64::from(cost);
            }
            let bound = |burst: u32, count: u32, period: Duration| {
                f64::from(burst) + f64::from(count) * elapsed.as_secs_f64() / period.as_secs_f64()
            };
            prop_assert!(allowed as f64 <= bound(burst, count, period) + 1e-9);
            prop_assert!(allowed as f64 <= bound(30, 40, Duration::from_secs(1)) + 1e-9);
        }
    }
}
