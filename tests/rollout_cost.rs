#![cfg(feature = "rollout")]
//! Integration tests of tokens and cost in `switchyard::rollout`: a model
//! rollout judges the canary's tokens (and cost) per answer against the
//! stable version's, on a real `ModelRouter` whose `service_fn` upstreams
//! answer OpenAI chat completions with a `usage` object.
//!
//! Everything runs on tokio's paused clock; selection is seeded.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use switchyard::body::RequestBody;
use switchyard::model::{Alias, Catalog, Model, ModelHandle, ModelRouter};
use switchyard::rollout::{
    Analysis, ModelTraffic, Outcome, Plan, Rollout, RolloutError, RolloutState, Step,
};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Service, ServiceExt, service_fn};

/// Guards `finished()` awaits: virtual time, so it only turns a hang into a
/// failure.
const HANG_GUARD: Duration = Duration::from_secs(24 * 3600);
/// Input tokens of every answer.
const PROMPT: u64 = 20;

type ModelReq = Request<RequestBody<Full<Bytes>>>;

/// A model server answering every chat completion with `PROMPT` input
/// tokens and `completion` output tokens (read per request, so a test can
/// change it live).
fn model_server(
    completion: Arc<AtomicU64>,
) -> impl Service<ModelReq, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    service_fn(move |_req: ModelReq| {
        let out = completion.load(SeqCst);
        async move {
            let body = format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{PROMPT},"completion_tokens":{out},"total_tokens":{}}}}}"#,
                PROMPT + out
            );
            let res = Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            Ok::<_, Infallible>(res)
        }
    })
}

/// Alias `chat` over `chat-v1` (stable, 100 tokens an answer) and `chat-v2`
/// (the canary, `PROMPT` + the returned knob's output tokens), under 100
/// chat requests a second whose answers are read to the end.
fn chat_router(seed: u64, canary_completion: u64) -> (ModelHandle, JoinHandle<()>, Arc<AtomicU64>) {
    chat_router_metered(seed, canary_completion, None)
}

/// The same, with a meter pricing the answers when one is given.
fn chat_router_metered(
    seed: u64,
    canary_completion: u64,
    meter: Option<switchyard::spend::Meter>,
) -> (ModelHandle, JoinHandle<()>, Arc<AtomicU64>) {
    let green = Arc::new(AtomicU64::new(canary_completion));
    let mut builder = ModelRouter::builder();
    if let Some(meter) = meter {
        builder = builder.admit(meter);
    }
    let router = builder
        .upstream("blue", model_server(Arc::new(AtomicU64::new(100 - PROMPT))))
        .upstream("green", model_server(green.clone()))
        .catalog(
            Catalog::new()
                .model(Model::new("chat-v1", "blue"))
                .model(Model::new("chat-v2", "green"))
                .alias(Alias::new("chat", [("chat-v1", 100), ("chat-v2", 0)])),
        )
        .seed(seed)
        .build()
        .unwrap();
    let handle = router.handle();
    let load = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let req = Request::builder()
                .method(Method::POST)
                .uri("/v1/chat/completions")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"model": "chat", "messages": [{"role": "user", "content": "hi"}]}"#,
                )))
                .unwrap();
            let router = router.clone();
            tokio::spawn(async move {
                let res = router.oneshot(req).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                // Tokens are counted when the answer ends.
                res.into_body().collect().await.unwrap();
            });
        }
    });
    (handle, load, green)
}

/// 20 % canary, three passing windows, then all traffic; tokens judged
/// with `max_tokens_ratio` (latency is timed on the real clock: off).
fn plan(analysis: Analysis) -> Plan {
    Plan::new([Step::SetWeight(20), Step::analyze(3), Step::SetWeight(100)])
        .analysis(analysis.max_p99_ratio(None))
}

fn alias_weights(handle: &ModelHandle) -> (u32, u32) {
    let w = handle.weights("chat").unwrap();
    (w.get("chat-v1").unwrap(), w.get("chat-v2").unwrap())
}

async fn finish(rollout: &switchyard::rollout::RolloutHandle) -> RolloutState {
    tokio::time::timeout(HANG_GUARD, rollout.finished())
        .await
        .expect("the rollout never ended")
}

#[tokio::test(start_paused = true)]
async fn canary_answering_with_40_percent_more_tokens_is_rolled_back() {
    let (handle, load, green) = chat_router(21, 100 - PROMPT);
    let traffic = ModelTraffic::new(handle.clone(), "chat", "chat-v1", "chat-v2").unwrap();
    let start = Instant::now();
    let rollout = Rollout::new(plan(Analysis::default().max_tokens_ratio(1.2)), traffic)
        .unwrap()
        .start();
    tokio::time::sleep_until(start + Duration::from_secs(12)).await;
    // The first window: as many tokens per answer on both sides.
    let status = rollout.status();
    assert_eq!(alias_weights(&handle), (80, 20));
    assert_eq!(status.verdicts.len(), 1);
    let first = &status.verdicts[0];
    assert_eq!(first.outcome, Outcome::Pass, "{first:?}");
    assert!(first.canary.answered >= 20, "{first:?}");
    assert_eq!(first.canary.tokens_per_request, Some(100.0));
    assert_eq!(first.stable.tokens_per_request, Some(100.0));
    // Nothing prices these answers: no cost figure.
    assert_eq!(first.canary.cost_per_request, None);

    // The canary now answers with 140 tokens: 40 % more.
    green.store(140 - PROMPT, SeqCst);
    let end = finish(&rollout).await;
    load.abort();
    let why = match &end {
        RolloutState::Aborted { reason } => reason.clone(),
        other => panic!("not aborted: {other:?}"),
    };
    assert!(why.contains("tokens per request"), "{why}");
    assert!(!why.contains("error rate"), "{why}");
    assert_eq!(alias_weights(&handle), (100, 0));
    let status = rollout.status();
    let failed = status
        .verdicts
        .iter()
        .find(|v| v.outcome == Outcome::Fail)
        .expect("a failing verdict");
    let (c, s) = (
        failed.canary.tokens_per_request.unwrap(),
        failed.stable.tokens_per_request.unwrap(),
    );
    assert_eq!(s, 100.0);
    assert!(c > 120.0 && c <= 140.0, "{failed:?}");
    assert_eq!(failed.canary.failed, 0);
    // Within one window and one check of the change.
    assert!(failed.elapsed <= Duration::from_secs(12 + 11), "{failed:?}");
    // The router's own counters agree: 140 tokens per canary answer since.
    let v2 = handle.model_stats("chat-v2").unwrap();
    assert!(v2.prompt_tokens + v2.completion_tokens > 100 * v2.responses.success);
}

#[tokio::test(start_paused = true)]
async fn canary_within_its_tokens_ratio_is_promoted() {
    // 110 tokens an answer: 10 % more, under a 1.2 ratio.
    let (handle, load, _green) = chat_router(22, 110 - PROMPT);
    let traffic = ModelTraffic::new(handle.clone(), "chat", "chat-v1", "chat-v2").unwrap();
    let rollout = Rollout::new(plan(Analysis::default().max_tokens_ratio(1.2)), traffic)
        .unwrap()
        .start();
    assert_eq!(finish(&rollout).await, RolloutState::Promoted);
    load.abort();
    assert_eq!(alias_weights(&handle), (0, 100));
    let status = rollout.status();
    assert!(status.verdicts.len() >= 3);
    for v in &status.verdicts {
        assert_eq!(v.outcome, Outcome::Pass, "{v:?}");
        assert_eq!(v.canary.tokens_per_request, Some(110.0));
        assert_eq!(v.stable.tokens_per_request, Some(100.0));
    }
}

#[tokio::test(start_paused = true)]
async fn tokens_are_not_judged_unless_asked() {
    // Twice the tokens, but the plan sets no tokens ratio.
    let (handle, load, _green) = chat_router(23, 200 - PROMPT);
    let traffic = ModelTraffic::new(handle.clone(), "chat", "chat-v1", "chat-v2").unwrap();
    let rollout = Rollout::new(plan(Analysis::default()), traffic)
        .unwrap()
        .start();
    assert_eq!(finish(&rollout).await, RolloutState::Promoted);
    load.abort();
    let status = rollout.status();
    assert_eq!(status.verdicts[0].canary.tokens_per_request, Some(200.0));
}

#[tokio::test]
async fn ratios_must_be_positive_numbers() {
    let (handle, load, _green) = chat_router(24, 100 - PROMPT);
    load.abort();
    let traffic = || ModelTraffic::new(handle.clone(), "chat", "chat-v1", "chat-v2").unwrap();
    for (analysis, name) in [
        (
            Analysis::default().max_tokens_ratio(0.0),
            "max_tokens_ratio",
        ),
        (
            Analysis::default().max_tokens_ratio(f64::NAN),
            "max_tokens_ratio",
        ),
        (Analysis::default().max_cost_ratio(-1.0), "max_cost_ratio"),
        (
            Analysis::default().max_cost_ratio(f64::INFINITY),
            "max_cost_ratio",
        ),
    ] {
        match Rollout::new(plan(analysis), traffic()) {
            Err(RolloutError::InvalidPlan(why)) => assert!(why.contains(name), "{why}"),
            other => panic!("accepted: {other:?}"),
        }
    }
    assert!(Rollout::new(plan(Analysis::default().max_cost_ratio(1.2)), traffic()).is_ok());
}

#[tokio::test(start_paused = true)]
async fn canary_costing_40_percent_more_per_answer_is_rolled_back() {
    use switchyard::spend::{Meter, Price, PriceCatalog};
    // Same tokens on both sides; the canary's price is 40 % higher, so
    // each of its answers costs 40 % more.
    let meter = Meter::builder()
        .prices(
            PriceCatalog::new()
                .with_price("chat-v1", Price::per_million(1_000_000, 4_000_000))
                .with_price("chat-v2", Price::per_million(1_400_000, 5_600_000)),
        )
        .build()
        .unwrap();
    let (handle, load, _green) = chat_router_metered(25, 100 - PROMPT, Some(meter.clone()));
    let traffic = ModelTraffic::new(handle.clone(), "chat", "chat-v1", "chat-v2").unwrap();
    let rollout = Rollout::new(plan(Analysis::default().max_cost_ratio(1.2)), traffic)
        .unwrap()
        .start();
    let end = finish(&rollout).await;
    load.abort();
    let why = match &end {
        RolloutState::Aborted { reason } => reason.clone(),
        other => panic!("not aborted: {other:?}"),
    };
    assert!(why.contains("cost per request"), "{why}");
    assert_eq!(alias_weights(&handle), (100, 0));
    let failed = rollout
        .status()
        .verdicts
        .into_iter()
        .find(|v| v.outcome == Outcome::Fail)
        .expect("a failing verdict");
    // 20 in × 1 + 80 out × 4 = 340 micro-units a stable answer; 476 a
    // canary's.
    assert_eq!(failed.stable.cost_per_request, Some(340.0));
    assert_eq!(failed.canary.cost_per_request, Some(476.0));
    assert_eq!(failed.canary.tokens_per_request, Some(100.0));
    let v2 = handle.model_stats("chat-v2").unwrap();
    assert_eq!(v2.cost_micros, 476 * v2.priced);
    assert!(meter.stats().cost_micros > 0);
}
