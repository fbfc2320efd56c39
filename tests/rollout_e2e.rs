#![cfg(all(feature = "rollout", feature = "proxy"))]
//! End-to-end test of `switchyard::rollout` over real loopback HTTP: two
//! upstream servers (axum, on `127.0.0.1:0`) behind a gateway whose `Split`
//! of `switchyard::proxy::Upstream`s the rollout drives, under steady load
//! from real HTTP clients.
//!
//! Real time, kept short: 1 s analysis windows checked every 100 ms. The
//! only timing assertion is the documented rollback bound (one window plus
//! one check period), with slack for scheduling; timeouts only guard
//! against hangs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{HeaderName, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use switchyard::proxy::Upstream;
use switchyard::rollout::{
    Analysis, EventKind, Outcome, Plan, Rollout, RolloutState, SplitTraffic, Step,
};
use switchyard::split::{Split, SplitHandle};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

const X_VERSION: HeaderName = HeaderName::from_static("x-version");
/// Guards awaits that must complete, so a bug fails the test instead of
/// hanging it.
const HANG_GUARD: Duration = Duration::from_secs(5);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// One version of the service: answers its name, 500 while `failing`.
async fn serve_version(name: &'static str, failing: Arc<AtomicBool>) -> SocketAddr {
    let app = Router::new().fallback(move || {
        let failing = failing.clone();
        async move {
            let status = if failing.load(SeqCst) {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            };
            (status, [(X_VERSION, name)], name)
        }
    });
    serve(app).await
}

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// What the clients saw: answers by (status, version).
type Seen = Arc<Mutex<HashMap<(u16, String), u64>>>;

async fn fetch(client: &HttpClient, gateway: SocketAddr) -> (u16, String) {
    let req = Request::get(format!("http://{gateway}/checkout"))
        .body(Empty::new())
        .unwrap();
    let res = tokio::time::timeout(HANG_GUARD, client.request(req))
        .await
        .expect("request hung")
        .expect("request failed");
    let status = res.status().as_u16();
    let version = res
        .headers()
        .get(X_VERSION)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    res.into_body().collect().await.unwrap();
    (status, version)
}

/// Clients sending requests one after the other until `stop`.
fn load(gateway: SocketAddr, clients: usize, stop: Arc<AtomicBool>, seen: Seen) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let (stop, seen) = (stop.clone(), seen.clone());
        set.spawn(async move {
            let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
            while !stop.load(SeqCst) {
                let answer = fetch(&client, gateway).await;
                *seen.lock().unwrap().entry(answer).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    set
}

fn weights(handle: &SplitHandle) -> (u32, u32) {
    let w = handle.weights();
    (w.get("blue").unwrap(), w.get("green").unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_turning_bad_over_http_is_rolled_back_by_itself() {
    let test_start = std::time::Instant::now();
    let green_failing = Arc::new(AtomicBool::new(false));
    let blue = serve_version("blue", Arc::default()).await;
    let green = serve_version("green", green_failing.clone()).await;
    let split = Split::builder()
        .target(
            "blue",
            Upstream::new(&format!("http://{blue}")).unwrap(),
            100,
        )
        .target(
            "green",
            Upstream::new(&format!("http://{green}")).unwrap(),
            0,
        )
        .seed(2024)
        .build()
        .unwrap();
    let handle = split.handle();
    let gateway = serve(Router::new().fallback_service(split)).await;

    let mut analysis = Analysis::default();
    analysis.interval = Duration::from_secs(1);
    analysis.check_every = Duration::from_millis(100);
    analysis.min_requests = 10;
    // Loopback latencies are noise: judge error rates only.
    analysis.max_p99_ratio = None;
    let (interval, check_every) = (analysis.interval, analysis.check_every);
    let plan = Plan::new([
        Step::SetWeight(50),
        Step::pause(Duration::from_secs(60)),
        Step::SetWeight(100),
    ])
    .analysis(analysis);

    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let mut clients = load(gateway, 4, stop.clone(), seen.clone());
    let start = Instant::now();
    let rollout = Rollout::new(
        plan,
        SplitTraffic::new(handle.clone(), "blue", "green").unwrap(),
    )
    .unwrap()
    .start();

    // Healthy for a while: windows pass, traffic stays split.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = rollout.status();
    assert_eq!(status.state, RolloutState::Running, "{:?}", status.verdicts);
    assert_eq!(weights(&handle), (50, 50));
    assert!(!status.verdicts.is_empty());
    assert!(
        status.verdicts.iter().all(|v| v.outcome == Outcome::Pass),
        "{:?}",
        status.verdicts
    );

    // Green breaks: the rollout aborts by itself.
    green_failing.store(true, SeqCst);
    let flipped = start.elapsed();
    let end = tokio::time::timeout(HANG_GUARD, rollout.finished())
        .await
        .expect("the rollout did not abort");
    let RolloutState::Aborted { reason } = &end else {
        panic!("not aborted: {end:?}");
    };
    assert!(reason.contains("error rate"), "{reason}");
    assert_eq!(weights(&handle), (100, 0));
    let status = rollout.status();
    let aborted = status.history.back().unwrap();
    assert!(matches!(
        aborted.kind,
        EventKind::State(RolloutState::Aborted { .. })
    ));
    let after = aborted.elapsed.saturating_sub(flipped);
    let slack = Duration::from_millis(500);
    assert!(
        after <= interval + check_every + slack,
        "rolled back {after:?} after green broke"
    );

    // Every client saw an answer; the only failures came from green.
    stop.store(true, SeqCst);
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let answers = seen.lock().unwrap().clone();
    let failures: HashMap<&str, u64> = answers
        .iter()
        .filter(|((status, _), _)| *status >= 500)
        .map(|((_, v), n)| (v.as_str(), *n))
        .collect();
    assert_eq!(
        failures.keys().copied().collect::<Vec<_>>(),
        vec!["green"],
        "{answers:?}"
    );
    let green_stats = handle.target_stats("green").unwrap();
    let blue_stats = handle.target_stats("blue").unwrap();
    assert_eq!(failures["green"], green_stats.responses.server_error);
    assert_eq!(blue_stats.responses.server_error + blue_stats.errors, 0);
    assert_eq!(green_stats.in_flight, 0);

    // Everyone is on blue now.
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    for _ in 0..50 {
        assert_eq!(fetch(&client, gateway).await, (200, "blue".to_owned()));
    }
    assert_eq!(
        handle.target_stats("green").unwrap().requests,
        green_stats.requests
    );
    assert!(
        test_start.elapsed() < Duration::from_secs(10),
        "{:?}",
        test_start.elapsed()
    );
}
