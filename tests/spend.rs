#![cfg(feature = "json")]
//! Token limits, budgets and cost (issue 18) end to end through real
//! [`ModelRouter`]s with a [`Meter`] as their admission hook, counting in
//! memory: a scripted stand-in model server (`support/spend.rs`) answers
//! with the usage each test asks for, as JSON, as an event stream, late,
//! never, with a 500 or not at all.
//!
//! * token limits: the estimate held at admission, corrected at
//!   settlement; the 429 in OpenAI's shape (and Anthropic's for
//!   `/v1/messages` clients) with OpenAI's and the IETF headers; time moved
//!   with a `ManualClock`;
//! * failures before any token refund the estimate; a fallback settles
//!   once;
//! * an abandoned stream is settled from what was seen;
//! * cost on answers: headers, or SSE comment lines an SSE reader skips;
//! * budgets: 8 racing requests on a budget that fits one, room back after
//!   settlement, downgrade to a cheaper version, calendar roll-over, alerts;
//! * unpriced models under each policy; the concurrent-request cap;
//! * a proptest of a token limit against a reference model, and the bound
//!   on what any window admits.

use crate::support::spend as support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use serde_json::json;
use support::{Ask, Up, UpBody, Upstream, bytes, header, json_body, micros, number, read_sse};
use switchyard::auth::Identity;
use switchyard::key::KeyBy;
use switchyard::model::providers::Protocol;
use switchyard::model::{
    Alias, Catalog, KeySource, Model, ModelBody, ModelRouter, Provider, UsageRecord,
};
use switchyard::ratelimit::{ManualClock, Quota};
use switchyard::spend::{
    Budget, BudgetAlert, BudgetScope, Meter, MeterBuilder, Period, Price, PriceCatalog, TokenLimit,
    Unpriced,
};
use tower::ServiceExt;

// === the gateway under test ===

/// Micro-units per million tokens, (input, output).
const GPT4O: (u64, u64) = (2_500_000, 10_000_000);
const MINI: (u64, u64) = (150_000, 600_000);
const CLAUDE: (u64, u64) = (3_000_000, 15_000_000);
const BROKEN: (u64, u64) = (1_000_000, 1_000_000);
const GOOD: (u64, u64) = (10_000_000, 40_000_000);
/// One micro-unit a token: costs are token counts.
const UNIT: (u64, u64) = (1_000_000, 1_000_000);

fn prices() -> PriceCatalog {
    let p = |(i, o): (u64, u64)| Price::per_million(i, o);
    PriceCatalog::new()
        .with_price("gpt-4o", p(GPT4O))
        .with_price("gpt-4o-mini", p(MINI))
        .with_price("claude", p(CLAUDE))
        .with_price("broken", p(BROKEN))
        .with_price("good", p(GOOD))
        .with_price("unit", p(UNIT))
}

/// `gpt-4o`, `gpt-4o-mini`, `broken`, `good`, `unit` and `mystery` (no
/// price) on the OpenAI-wire upstream `openai`; `claude` on the
/// Anthropic-wire upstream `anthropic` (the same stand-in, which answers
/// Anthropic's shape on `/v1/messages`). Aliases: `chat` (all on
/// `gpt-4o`, `gpt-4o-mini` at weight 0) and `flaky` (`broken`, falling
/// back to `good`).
fn catalog() -> Catalog {
    let mut c = Catalog::new();
    for m in ["gpt-4o", "gpt-4o-mini", "broken", "good", "unit", "mystery"] {
        c = c.model(Model::new(m, "openai"));
    }
    c.model(Model::new("claude", "anthropic"))
        .alias(Alias::new("chat", [("gpt-4o", 1), ("gpt-4o-mini", 0)]))
        .alias(Alias::new("flaky", [("broken", 1)]).fallback("good"))
}

type Router = ModelRouter<Up<Full<Bytes>>>;
type Answer = Response<ModelBody<UpBody>>;

fn router(meter: &Meter, up: &Upstream) -> Router {
    router_with(meter, up, |_| {})
}

/// The router, reporting every answer to `on_usage` too.
fn router_with(
    meter: &Meter,
    up: &Upstream,
    on_usage: impl Fn(&UsageRecord) + Send + Sync + 'static,
) -> Router {
    ModelRouter::builder()
        .upstream("openai", up.service())
        .upstream("anthropic", up.service())
        .provider(
            "anthropic",
            Provider::new(Protocol::Anthropic).key(KeySource::Value("sk-ant-standin".into())),
        )
        .catalog(catalog())
        .on_usage(on_usage)
        .admit(meter.clone())
        .build()
        .unwrap()
}

fn by_team() -> KeyBy {
    KeyBy::header(HeaderName::from_static("x-team"))
}

/// A meter with the prices and a clock at 1 s.
fn metered() -> (MeterBuilder, ManualClock) {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(1));
    (
        Meter::builder().prices(prices()).clock(clock.clone()),
        clock,
    )
}

/// 6,000 tokens a minute per `x-team`: one token each 10 ms, a burst of
/// 6,000.
fn tpm() -> TokenLimit {
    TokenLimit::new(by_team(), Quota::per_minute(6000).named("tpm"))
}
const TOKEN: Duration = Duration::from_millis(10);

async fn send(router: &Router, ask: &Ask) -> Answer {
    tokio::time::timeout(
        Duration::from_secs(10),
        router.clone().oneshot(ask.request()),
    )
    .await
    .expect("answered in time")
    .expect("the upstream was reached")
}

/// A duration as OpenAI writes `x-ratelimit-reset-tokens`: `20ms`, `1s`,
/// `6m0s`, `1h2m3s` (whole seconds rounded up).
fn openai_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis().max(u128::from(!d.is_zero())));
    }
    let secs = d.as_nanos().div_ceil(1_000_000_000) as u64;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

fn token_time(units: u64) -> Duration {
    TOKEN * u32::try_from(units).unwrap()
}

/// Asks with a probe whose usage is nothing (so that it gives back all it
/// takes) and returns the tokens it saw left after its own estimate, plus
/// that estimate: the tokens left before it.
async fn tokens_left(router: &Router, team: &str) -> u64 {
    let probe = Ask::chat("chat", 10).header("x-team", team).usage(0, 0);
    let res = send(router, &probe).await;
    assert_eq!(res.status(), 200);
    let left = number(&res, "x-ratelimit-remaining-tokens") + probe.estimate();
    bytes(res).await;
    left
}

// === token limits ===

#[tokio::test]
async fn a_token_limit_holds_the_estimate_then_the_actual() {
    let (builder, clock) = metered();
    let meter = builder.token_limit(tpm()).build().unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);

    // The first request holds its estimate: the body's bytes / 4 and its
    // max_tokens.
    let ask = Ask::chat("chat", 1000)
        .header("x-team", "t1")
        .usage(300, 200);
    let e = ask.estimate();
    assert_eq!(e, ask.body_len().div_ceil(4) + 1000);
    let res = send(&router, &ask).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-switchyard-model"), "gpt-4o");
    assert_eq!(header(&res, "x-ratelimit-limit-tokens"), "6000");
    assert_eq!(number(&res, "x-ratelimit-remaining-tokens"), 6000 - e);
    assert_eq!(
        header(&res, "x-ratelimit-reset-tokens"),
        openai_duration(token_time(e))
    );
    assert_eq!(header(&res, "ratelimit-policy"), r#""tpm";q=6000;w=60"#);
    assert_eq!(
        header(&res, "ratelimit"),
        format!(
            r#""tpm";r={};t={}"#,
            6000 - e,
            token_time(e).as_millis().div_ceil(1000)
        )
    );
    // Its answer (read whole before its head) says what it cost.
    assert_eq!(
        number(&res, "x-switchyard-cost-micros"),
        micros(300, 200, GPT4O)
    );
    assert_eq!(number(&res, "x-switchyard-input-tokens"), 300);
    assert_eq!(number(&res, "x-switchyard-output-tokens"), 200);
    let length = number(&res, "content-length");
    let body = bytes(res).await;
    assert_eq!(body.len() as u64, length);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 200);

    // Settled: the second request sees the limit less the first's actual
    // 500 tokens, less its own estimate.
    let res = send(&router, &ask).await;
    assert_eq!(number(&res, "x-ratelimit-remaining-tokens"), 6000 - 500 - e);
    bytes(res).await;

    // 1,000 tokens used; a request estimated above the 5,000 left is
    // refused, in OpenAI's shape, told when it would fit.
    let big = Ask::chat("chat", 5500).header("x-team", "t1");
    let wait = token_time(1000 + big.estimate() - 6000);
    let seen = up.seen().len();
    let res = send(&router, &big).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "content-type"), "application/json");
    assert_eq!(header(&res, "x-ratelimit-limit-tokens"), "6000");
    assert_eq!(header(&res, "x-ratelimit-remaining-tokens"), "0");
    assert_eq!(
        header(&res, "x-ratelimit-reset-tokens"),
        openai_duration(wait)
    );
    assert_eq!(
        number(&res, "retry-after"),
        wait.as_millis().div_ceil(1000) as u64
    );
    assert_eq!(
        header(&res, "ratelimit"),
        format!(r#""tpm";r=0;t={}"#, wait.as_millis().div_ceil(1000))
    );
    assert_eq!(header(&res, "ratelimit-policy"), r#""tpm";q=6000;w=60"#);
    let error = json_body(res).await;
    assert_eq!(error["error"]["type"], "tokens", "{error}");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Rate limit reached for gpt-4o"),
        "{message}"
    );
    assert!(message.contains("try again in"), "{message}");
    assert_eq!(up.seen().len(), seen, "a refused request is not sent");
    assert_eq!(meter.stats().refused_tokens, 1);

    // One token short of the wait: still refused, for one more token's time.
    clock.advance(wait - TOKEN);
    let res = send(&router, &big).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "1");
    assert_eq!(header(&res, "x-ratelimit-reset-tokens"), "10ms");
    // After the whole wait it fits, with nothing left.
    clock.advance(TOKEN);
    let res = send(&router, &big).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-ratelimit-remaining-tokens"), "0");
    bytes(res).await;

    // An estimate above the whole burst never fits: no retry-after.
    let huge = Ask::chat("chat", 7000).header("x-team", "t2");
    let res = send(&router, &huge).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().get("retry-after").is_none());
    assert_eq!(header(&res, "x-ratelimit-remaining-tokens"), "0");
    assert_eq!(header(&res, "x-ratelimit-reset-tokens"), "1m0s");
    let error = json_body(res).await;
    assert_eq!(error["error"]["type"], "tokens");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Request too large"),
        "{error}"
    );
    // Team t2 was never charged.
    assert_eq!(tokens_left(&router, "t2").await, 6000);
    // A request with no key is not limited.
    let res = send(&router, &Ask::chat("chat", 7000)).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("x-ratelimit-limit-tokens").is_none());
    bytes(res).await;
}

/// A key's state that the table removed while this thread still kept it
/// (each thread keeps the states of the keys it met last) is not used
/// again: the key's next request is counted in its new state.
#[tokio::test]
async fn a_key_removed_from_the_table_is_counted_afresh() {
    let (builder, clock) = metered();
    let meter = builder.token_limit(tpm()).max_keys(1).build().unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);
    let ask = |team: &str| {
        Ask::chat("chat", 100)
            .header("x-team", team)
            .usage(300, 200)
    };

    // t1 uses 500 tokens, then its state becomes fresh again.
    bytes(send(&router, &ask("t1")).await).await;
    assert_eq!(tokens_left(&router, "t1").await, 6000 - 500);
    clock.advance(Duration::from_secs(61));
    // t2 takes the table's one place: t1's state is removed.
    bytes(send(&router, &ask("t2")).await).await;
    clock.advance(Duration::from_secs(61));
    // t1 again, on the thread that kept t1's old state: its 500 tokens
    // count in its new one (t2's, fresh by now, made room), and a probe
    // sees them.
    let res = send(&router, &ask("t1")).await;
    assert_eq!(res.status(), 200);
    bytes(res).await;
    assert_eq!(tokens_left(&router, "t1").await, 6000 - 500);
    // And its state is the table's: one more request is counted there
    // too.
    bytes(send(&router, &ask("t1")).await).await;
    assert_eq!(tokens_left(&router, "t1").await, 6000 - 1000);
}

/// Anthropic Messages clients get the refusal in Anthropic's error shape,
/// with the same headers.
#[tokio::test]
async fn anthropic_clients_are_refused_in_their_shape() {
    let (builder, _clock) = metered();
    let meter = builder.token_limit(tpm()).build().unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);

    let first = Ask::messages("claude", 3000, false)
        .header("x-team", "t3")
        .usage(3000, 2000);
    let e = first.estimate();
    let res = send(&router, &first).await;
    assert_eq!(res.status(), 200);
    assert_eq!(number(&res, "x-ratelimit-remaining-tokens"), 6000 - e);
    assert_eq!(
        number(&res, "x-switchyard-cost-micros"),
        micros(3000, 2000, CLAUDE)
    );
    let body = json_body(res).await;
    assert_eq!(body["type"], "message");
    assert_eq!(body["usage"]["input_tokens"], 3000);

    // 5,000 used: 1,000 left, not enough for this one.
    let next = Ask::messages("claude", 1500, false).header("x-team", "t3");
    let res = send(&router, &next).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "x-ratelimit-limit-tokens"), "6000");
    assert_eq!(header(&res, "x-ratelimit-remaining-tokens"), "0");
    let wait = token_time(5000 + next.estimate() - 6000);
    assert_eq!(
        number(&res, "retry-after"),
        wait.as_millis().div_ceil(1000) as u64
    );
    assert_eq!(header(&res, "ratelimit-policy"), r#""tpm";q=6000;w=60"#);
    let error = json_body(res).await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Rate limit reached for claude"),
        "{error}"
    );
    assert!(error.get("code").is_none());

    // Too large for the limit at all.
    let res = send(
        &router,
        &Ask::messages("claude", 9000, true).header("x-team", "t4"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let error = json_body(res).await;
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert_eq!(meter.stats().refused_tokens, 2);
}

// === failures ===

#[tokio::test]
async fn a_failure_before_any_token_refunds_the_estimate() {
    let (builder, _clock) = metered();
    let meter = builder.token_limit(tpm()).build().unwrap();
    let up = Upstream::new();
    let records: Arc<Mutex<Vec<UsageRecord>>> = Arc::default();
    let hook = Arc::clone(&records);
    let router = router_with(&meter, &up, move |r| hook.lock().unwrap().push(r.clone()));

    // A 500 with no fallback: the estimate was held while it was asked...
    let ask = Ask::chat("chat", 2000).header("x-team", "t1").mode("500");
    let res = send(&router, &ask).await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        number(&res, "x-ratelimit-remaining-tokens"),
        6000 - ask.estimate()
    );
    let error = json_body(res).await;
    assert_eq!(error["error"]["message"], "boom");
    // ...and all of it comes back.
    assert_eq!(tokens_left(&router, "t1").await, 6000);

    // An upstream that cannot be reached: the router fails, the ticket is
    // dropped unsettled, everything comes back.
    let ask = Ask::chat("chat", 2000).header("x-team", "t1").mode("error");
    let err = router.clone().oneshot(ask.request()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(tokens_left(&router, "t1").await, 6000);
    let stats = meter.stats();
    // The 500 and two probes settled; the failed call did not.
    assert_eq!((stats.admitted, stats.settled), (4, 3));
    assert_eq!(stats.cost_micros, 0);

    // A fallback that answers: one admission, settled once, with the
    // answer's tokens.
    records.lock().unwrap().clear();
    let ask = Ask::chat("flaky", 1000)
        .header("x-team", "t2")
        .usage(300, 200);
    let res = send(&router, &ask).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-switchyard-model"), "good");
    assert_eq!(number(&res, "x-switchyard-input-tokens"), 300);
    bytes(res).await;
    let stats = meter.stats();
    assert_eq!((stats.admitted, stats.settled), (5, 4));
    // Both answers are reported to the usage hook; only one was settled.
    let records = records.lock().unwrap().clone();
    let seen: Vec<_> = records
        .iter()
        .map(|r| (r.model.to_string(), r.status.as_u16(), r.usage.total()))
        .collect();
    assert_eq!(
        seen,
        [("broken".to_owned(), 500, 0), ("good".to_owned(), 200, 500)]
    );
    assert_eq!(tokens_left(&router, "t2").await, 6000 - 500);
}

/// The cost of an answer is that of the version that gave it: a fallback
/// on a dearer model is charged at the fallback's price.
#[tokio::test]
async fn a_fallback_answer_is_priced_as_the_version_that_gave_it() {
    let (builder, _clock) = metered();
    let meter = builder.build().unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);
    let res = send(&router, &Ask::chat("flaky", 1000).usage(300, 200)).await;
    assert_eq!(header(&res, "x-switchyard-model"), "good");
    assert_eq!(
        number(&res, "x-switchyard-cost-micros"),
        micros(300, 200, GOOD),
        "priced as `good` ({}), not as `broken` ({})",
        micros(300, 200, GOOD),
        micros(300, 200, BROKEN)
    );
    bytes(res).await;
    assert_eq!(meter.stats().cost_micros, micros(300, 200, GOOD));
}

// === streams ===

/// Reads frames of `res` until its text holds `needle`; returns the body,
/// still open.
async fn read_until(res: Answer, needle: &str) -> ModelBody<UpBody> {
    let mut body = res.into_body();
    let mut text = String::new();
    while !text.contains(needle) {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a frame in time")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    body
}

#[tokio::test]
async fn an_abandoned_stream_is_settled_from_the_usage_seen() {
    let (builder, _clock) = metered();
    let meter = builder.token_limit(tpm()).build().unwrap();
    let up = Upstream::new();
    let records: Arc<Mutex<Vec<UsageRecord>>> = Arc::default();
    let hook = Arc::clone(&records);
    let router = router_with(&meter, &up, move |r| hook.lock().unwrap().push(r.clone()));

    // An Anthropic stream passed through: its input tokens come first, in
    // `message_start` (900, and one output token); the client reads some
    // text and goes away.
    let ask = Ask::messages("claude", 2000, true)
        .header("x-team", "t1")
        .usage(900, 400)
        .mode("hang");
    let res = send(&router, &ask).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        number(&res, "x-ratelimit-remaining-tokens"),
        6000 - ask.estimate()
    );
    let body = read_until(res, "content_block_delta").await;
    assert_eq!(meter.stats().settled, 0, "still open");
    drop(body);
    let stats = meter.stats();
    assert_eq!(stats.settled, 1);
    assert_eq!(stats.cost_micros, micros(900, 1, CLAUDE));
    {
        let records = records.lock().unwrap();
        let usage = records.last().unwrap().usage;
        assert_eq!((usage.input, usage.output), (900, 1));
        assert!(usage.truncated);
    }
    // The limit holds what was seen, not the estimate.
    assert_eq!(tokens_left(&router, "t1").await, 6000 - 901);

    // The same stream translated for a Chat Completions client.
    let ask = Ask::chat_stream("claude", 2000)
        .header("x-team", "t2")
        .usage(900, 400)
        .mode("hang");
    let res = send(&router, &ask).await;
    assert_eq!(res.status(), 200);
    drop(read_until(res, "Hel").await);
    let stats = meter.stats();
    assert_eq!(stats.settled, 3);
    assert_eq!(stats.cost_micros, 2 * micros(900, 1, CLAUDE));
    assert_eq!(tokens_left(&router, "t2").await, 6000 - 901);
}

/// An OpenAI stream puts its usage last: one abandoned after its text
/// began has used tokens nobody counted. Its estimate stays charged (the
/// usage is unknown, not zero); refunding it would let a client that always
/// hangs up before the last event through any token limit and budget.
#[tokio::test]
async fn an_abandoned_stream_with_no_usage_seen_keeps_its_estimate() {
    let (builder, _clock) = metered();
    let meter = builder.token_limit(tpm()).build().unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);
    let ask = Ask::chat_stream("chat", 2000)
        .header("x-team", "t1")
        .usage(900, 400)
        .mode("hang");
    let res = send(&router, &ask).await;
    assert_eq!(res.status(), 200);
    drop(read_until(res, "Hel").await);
    assert_eq!(meter.stats().settled, 1);
    assert_eq!(tokens_left(&router, "t1").await, 6000 - ask.estimate());
}

/// An answer with no `Content-Type` (some OpenAI-compatible servers send
/// none) is still read for its usage as it passes: settled at what it
/// used, not held at its estimate. One that names another type is not
/// read and keeps its estimate.
#[tokio::test]
async fn an_answer_with_no_content_type_is_settled_from_its_usage() {
    let (builder, _clock) = metered();
    let meter = builder.token_limit(tpm()).build().unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);
    let ask = Ask::chat("chat", 2000)
        .header("x-team", "t1")
        .usage(300, 200)
        .mode("untyped");
    let res = send(&router, &ask).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("content-type").is_none());
    let body: serde_json::Value = serde_json::from_slice(&bytes(res).await).unwrap();
    assert_eq!(body["usage"]["prompt_tokens"], 300);
    let stats = meter.stats();
    assert_eq!(stats.settled, 1);
    assert_eq!(stats.cost_micros, micros(300, 200, GPT4O));
    assert_eq!(tokens_left(&router, "t1").await, 6000 - 500);

    let ask = Ask::chat("chat", 2000)
        .header("x-team", "t2")
        .usage(300, 200)
        .mode("text");
    let res = send(&router, &ask).await;
    assert_eq!(header(&res, "content-type"), "text/plain");
    bytes(res).await;
    assert_eq!(tokens_left(&router, "t2").await, 6000 - ask.estimate());
}

#[tokio::test]
async fn streams_end_with_cost_comments_that_sse_readers_skip() {
    let (builder, _clock) = metered();
    let meter = builder.token_limit(tpm()).build().unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);

    // An OpenAI stream passed through.
    let ask = Ask::chat_stream("chat", 500)
        .header("x-team", "t1")
        .usage(120, 30)
        .mode("stream");
    let res = send(&router, &ask).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("content-length").is_none());
    assert!(res.headers().get("x-switchyard-cost-micros").is_none());
    assert!(res.headers().get("x-ratelimit-remaining-tokens").is_some());
    let text = String::from_utf8(bytes(res).await.to_vec()).unwrap();
    let cost = micros(120, 30, GPT4O);
    let comments = format!(
        ": x-switchyard-cost-micros: {cost}\n: x-switchyard-input-tokens: 120\n: x-switchyard-output-tokens: 30\n\n"
    );
    // The events as the upstream sent them, then the comment lines.
    let sent = support::openai_events("gpt-4o", (120, 30)).concat();
    assert_eq!(text, format!("{sent}{comments}"));
    let (events, notes) = read_sse(&text);
    let (want, _) = read_sse(&sent);
    assert_eq!(events, want, "comment lines are not events");
    assert_eq!(events.last().unwrap().data, "[DONE]");
    assert_eq!(
        notes,
        [
            format!("x-switchyard-cost-micros: {cost}"),
            "x-switchyard-input-tokens: 120".to_owned(),
            "x-switchyard-output-tokens: 30".to_owned()
        ]
    );
    // Every event parses as the SDK expects, the usage chunk included.
    for e in &events[..events.len() - 1] {
        let chunk: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(chunk["object"], "chat.completion.chunk");
    }

    // An Anthropic stream passed through: after `message_stop`.
    let ask = Ask::messages("claude", 500, true)
        .usage(120, 30)
        .mode("stream");
    let text = String::from_utf8(bytes(send(&router, &ask).await).await.to_vec()).unwrap();
    let (events, notes) = read_sse(&text);
    assert_eq!(events.last().unwrap().name, "message_stop");
    assert_eq!(events.len(), 7);
    assert_eq!(
        notes,
        [
            format!("x-switchyard-cost-micros: {}", micros(120, 30, CLAUDE)),
            "x-switchyard-input-tokens: 120".to_owned(),
            "x-switchyard-output-tokens: 30".to_owned()
        ]
    );
    assert!(text.ends_with("\n\n"));

    // Turned off: neither headers nor comment lines.
    let quiet = Meter::builder()
        .prices(prices())
        .cost_fields(false)
        .build()
        .unwrap();
    let router = self::router(&quiet, &up);
    let res = send(&router, &Ask::chat("chat", 10)).await;
    assert!(res.headers().get("x-switchyard-cost-micros").is_none());
    bytes(res).await;
    let stream = Ask::chat_stream("chat", 10).usage(120, 30).mode("stream");
    let text = String::from_utf8(bytes(send(&router, &stream).await).await.to_vec()).unwrap();
    assert_eq!(text, support::openai_events("gpt-4o", (120, 30)).concat());
    assert_eq!(quiet.stats().cost_micros, micros(100, 50, GPT4O) + cost);
}

/// Streams the router rewrites event by event (a stream whose usage chunk
/// it asked for and hides, a stream translated from Anthropic's events)
/// end with the cost comment lines too, whether or not the upstream's
/// last frame says it is the last.
#[tokio::test]
async fn rewritten_streams_end_with_cost_comments_too() {
    let meter = Meter::builder().prices(prices()).build().unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);

    // The router asks for the usage chunk and hides it.
    let hidden = Ask::with_body(
        "/v1/chat/completions",
        json!({"model": "chat", "max_tokens": 500, "stream": true,
               "messages": [{"role": "user", "content": "hello there"}]}),
        500,
    )
    .usage(120, 30)
    .mode("stream");
    let text = String::from_utf8(bytes(send(&router, &hidden).await).await.to_vec()).unwrap();
    assert_eq!(up.seen().len(), 1);
    let (events, notes) = read_sse(&text);
    assert!(
        events.iter().all(|e| !e.data.contains("\"usage\"")),
        "{text}"
    );
    assert_eq!(events.last().unwrap().data, "[DONE]");
    // Settled...
    let cost = micros(120, 30, GPT4O);
    assert_eq!(meter.stats().cost_micros, cost);
    // ...and shown.
    assert_eq!(
        notes,
        [
            format!("x-switchyard-cost-micros: {cost}"),
            "x-switchyard-input-tokens: 120".to_owned(),
            "x-switchyard-output-tokens: 30".to_owned()
        ],
        "{text:?}"
    );

    // Anthropic's events translated into chunks.
    let translated = Ask::chat_stream("claude", 500)
        .usage(120, 30)
        .mode("stream");
    let text = String::from_utf8(bytes(send(&router, &translated).await).await.to_vec()).unwrap();
    let (events, notes) = read_sse(&text);
    assert_eq!(events.last().unwrap().data, "[DONE]");
    let cost = micros(120, 30, CLAUDE);
    assert_eq!(meter.stats().cost_micros, micros(120, 30, GPT4O) + cost);
    assert_eq!(
        notes.first().map(String::as_str),
        Some(format!("x-switchyard-cost-micros: {cost}").as_str()),
        "{text:?}"
    );
}

// === budgets ===

fn acme() -> Identity {
    Identity::new("alice").with_tenant("acme")
}

/// The worst case a meter reserves for `ask` on a model at `price`: every
/// input token of the estimate and all of max_tokens.
fn worst(ask: &Ask, max_tokens: u64, price: (u64, u64)) -> u64 {
    micros(ask.input_estimate(), max_tokens, price)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_that_fits_one_admits_exactly_one_of_eight() {
    let ask = Ask::chat("chat", 1000)
        .identity(acme())
        .usage(25, 100)
        .mode("wait");
    let limit = worst(&ask, 1000, GPT4O);
    let meter = Meter::builder()
        .prices(prices())
        .budget(Budget::new(BudgetScope::Tenant, limit, Period::Day))
        .build()
        .unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (router, ask) = (router.clone(), ask.clone());
        tasks.spawn(async move {
            let res = router.oneshot(ask.request()).await.unwrap();
            (res.status(), json_body(res).await)
        });
    }
    // The one admitted waits upstream: the seven others are refused
    // meanwhile, while it holds its worst case.
    for _ in 0..7 {
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), tasks.join_next())
            .await
            .expect("seven refusals without waiting for the upstream")
            .unwrap()
            .unwrap();
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(body["error"]["code"], "insufficient_quota");
        assert_eq!(body["error"]["type"], "insufficient_quota");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("budget `tenant-day` for `acme`"),
            "{body}"
        );
    }
    let usage = meter.budget_usage("tenant-day", "acme").unwrap();
    assert_eq!(
        (
            usage.spent_micros,
            usage.reserved_micros,
            usage.limit_micros
        ),
        (0, limit, limit)
    );
    up.release(1);
    let (status, _) = tasks.join_next().await.unwrap().unwrap();
    assert_eq!(status, 200);
    assert_eq!(up.seen().len(), 1);
    let stats = meter.stats();
    assert_eq!((stats.admitted, stats.refused_budget), (1, 7));

    // Settled for less than its worst case: the rest comes back.
    let spent = micros(25, 100, GPT4O);
    let usage = meter.budget_usage("tenant-day", "acme").unwrap();
    assert_eq!((usage.spent_micros, usage.reserved_micros), (spent, 0));
    assert_eq!(usage.tokens, 125);
    // A request whose worst case fits what is left goes through; one as
    // large as the whole budget does not.
    let smaller = Ask::chat("chat", 800).identity(acme()).usage(25, 100);
    assert!(worst(&smaller, 800, GPT4O) <= limit - spent);
    let res = send(&router, &smaller).await;
    assert_eq!(res.status(), 200);
    bytes(res).await;
    let again = Ask::chat("chat", 1000).identity(acme());
    let res = send(&router, &again).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    bytes(res).await;
    // Another tenant, and a caller with none, are not held by acme's.
    let other = Ask::chat("chat", 1000).identity(Identity::new("bob").with_tenant("globex"));
    assert_eq!(send(&router, &other).await.status(), 200);
    let solo = Ask::chat("chat", 1000).identity(Identity::new("carol"));
    assert_eq!(send(&router, &solo).await.status(), 200);
}

#[tokio::test]
async fn over_budget_requests_go_to_the_cheaper_version_then_are_refused() {
    let meter = Meter::builder()
        .prices(prices())
        .budget(
            Budget::new(BudgetScope::Tenant, 20_000, Period::Day)
                .named("monthly")
                .downgrade_to("gpt-4o-mini"),
        )
        .build()
        .unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);

    // Fits: on gpt-4o; spends 12,500.
    let first = Ask::chat("chat", 1000).identity(acme()).usage(1000, 1000);
    assert!(worst(&first, 1000, GPT4O) <= 20_000);
    let res = send(&router, &first).await;
    assert_eq!(header(&res, "x-switchyard-model"), "gpt-4o");
    bytes(res).await;
    let spent = micros(1000, 1000, GPT4O);
    assert_eq!(
        meter.budget_usage("monthly", "acme").unwrap().spent_micros,
        spent
    );

    // gpt-4o's worst case no longer fits; gpt-4o-mini's does.
    let second = Ask::chat("chat", 1000).identity(acme()).usage(1000, 1000);
    assert!(worst(&second, 1000, GPT4O) > 20_000 - spent);
    assert!(worst(&second, 1000, MINI) <= 20_000 - spent);
    let res = send(&router, &second).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-switchyard-model"), "gpt-4o-mini");
    assert_eq!(
        number(&res, "x-switchyard-cost-micros"),
        micros(1000, 1000, MINI)
    );
    bytes(res).await;
    assert_eq!(up.seen().last().unwrap().model, "gpt-4o-mini");
    let spent = spent + micros(1000, 1000, MINI);

    // Not even the cheaper version fits: refused.
    let third = Ask::chat("chat", 20_000).identity(acme());
    assert!(worst(&third, 20_000, MINI) > 20_000 - spent);
    let res = send(&router, &third).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let error = json_body(res).await;
    assert_eq!(error["error"]["code"], "insufficient_quota");
    let stats = meter.stats();
    assert_eq!((stats.downgraded, stats.refused_budget), (2, 1));
    assert_eq!(up.seen().len(), 2);
    let usage = meter.budget_usage("monthly", "acme").unwrap();
    assert_eq!((usage.spent_micros, usage.reserved_micros), (spent, 0));

    // A version asked for by name has no cheaper version to go to.
    let named = Ask::chat("gpt-4o", 1000).identity(acme());
    let res = send(&router, &named).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json_body(res).await["error"]["code"], "insufficient_quota");
}

#[tokio::test]
async fn a_day_budget_starts_again_at_local_midnight() {
    // Noon UTC on day 20,000 (2024-10-04); the budget's zone is UTC+1.
    let day = 20_000 * 86_400;
    let wall = Arc::new(AtomicU64::new(day + 12 * 3600));
    let now = Arc::clone(&wall);
    let ask = Ask::chat("chat", 1000).identity(acme()).usage(25, 100);
    let limit = worst(&ask, 1000, GPT4O);
    let meter = Meter::builder()
        .prices(prices())
        .budget(Budget::new(BudgetScope::Tenant, limit, Period::Day).utc_offset_minutes(60))
        .wall_clock(move || now.load(Ordering::SeqCst))
        .build()
        .unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);

    assert_eq!(send(&router, &ask).await.status(), 200);
    assert_eq!(
        send(&router, &ask).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // 23:59:59 local: still today.
    wall.store(day + 23 * 3600 - 1, Ordering::SeqCst);
    assert_eq!(
        send(&router, &ask).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        meter
            .budget_usage("tenant-day", "acme")
            .unwrap()
            .spent_micros,
        micros(25, 100, GPT4O)
    );
    // Midnight local (23:00 UTC): a new day, nothing spent.
    wall.store(day + 23 * 3600, Ordering::SeqCst);
    assert_eq!(
        meter
            .budget_usage("tenant-day", "acme")
            .unwrap()
            .spent_micros,
        0
    );
    assert_eq!(send(&router, &ask).await.status(), 200);
    assert_eq!(
        send(&router, &ask).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn budget_alerts_fire_once_per_threshold_and_period() {
    let day = 20_000 * 86_400;
    let wall = Arc::new(AtomicU64::new(day + 3600));
    let now = Arc::clone(&wall);
    let alerts: Arc<Mutex<Vec<BudgetAlert>>> = Arc::default();
    let hook = Arc::clone(&alerts);
    let meter = Meter::builder()
        .prices(prices())
        .budget(
            Budget::new(BudgetScope::Tenant, 100_000, Period::Day)
                .alert_at(80)
                .alert_at(50),
        )
        .wall_clock(move || now.load(Ordering::SeqCst))
        .on_alert(move |a| hook.lock().unwrap().push(a.clone()))
        .build()
        .unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);
    // `unit` costs one micro-unit a token.
    let spend = |tokens: u64| Ask::chat("unit", 1).identity(acme()).usage(tokens, 0);
    let seen = || {
        alerts
            .lock()
            .unwrap()
            .iter()
            .map(|a| {
                assert_eq!(
                    (a.budget.as_str(), a.key.as_str(), a.limit_micros),
                    ("tenant-day", "acme", 100_000)
                );
                (a.percent, a.spent_micros)
            })
            .collect::<Vec<_>>()
    };

    for (tokens, after) in [
        (30_000, vec![]),
        (30_000, vec![(50, 60_000)]),
        (25_000, vec![(50, 60_000), (80, 85_000)]),
        (5_000, vec![(50, 60_000), (80, 85_000)]),
    ] {
        let res = send(&router, &spend(tokens)).await;
        assert_eq!(res.status(), 200);
        bytes(res).await;
        assert_eq!(seen(), after, "after spending {tokens} more");
    }
    assert_eq!(meter.stats().alerts, 2);
    // The next day, both again, from one answer.
    wall.fetch_add(86_400, Ordering::SeqCst);
    bytes(send(&router, &spend(85_000)).await).await;
    assert_eq!(seen()[2..], [(50, 85_000), (80, 85_000)], "{:?}", seen());
    assert_eq!(meter.stats().alerts, 4);
}

// === unpriced models ===

#[tokio::test]
async fn unpriced_models_follow_the_policy() {
    let up = Upstream::new();
    let ask = Ask::chat("mystery", 100).usage(1000, 1000);

    let deny = Meter::builder()
        .prices(prices())
        .unpriced(Unpriced::Deny)
        .build()
        .unwrap();
    let router = self::router(&deny, &up);
    let res = send(&router, &ask).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let error = json_body(res).await;
    assert_eq!(error["error"]["code"], "model_not_priced", "{error}");
    assert!(up.seen().is_empty());
    // A priced model is not denied.
    assert_eq!(send(&router, &Ask::chat("chat", 10)).await.status(), 200);
    assert_eq!(deny.stats().refused_unpriced, 1);

    let free = Meter::builder()
        .prices(prices())
        .unpriced(Unpriced::Free)
        .token_limit(tpm())
        .build()
        .unwrap();
    let router = self::router(&free, &up);
    let res = send(&router, &ask.clone().header("x-team", "t1")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-switchyard-cost-micros"), "0");
    assert_eq!(header(&res, "x-switchyard-input-tokens"), "1000");
    bytes(res).await;
    let stats = free.stats();
    assert_eq!((stats.unpriced, stats.cost_micros), (1, 0));
    // Its tokens still count against token limits.
    assert_eq!(tokens_left(&router, "t1").await, 6000 - 2000);
    // Not counted as the version's cost.
    let versions = router.handle().stats();
    let mystery = versions.iter().find(|v| v.model == "mystery").unwrap();
    assert_eq!((mystery.cost_micros, mystery.priced), (0, 0));
    assert_eq!(mystery.prompt_tokens, 1000);

    let fixed = Meter::builder()
        .prices(prices())
        .unpriced(Unpriced::Fixed(5000))
        .budget(Budget::new(BudgetScope::Global, 10_000, Period::Lifetime))
        .build()
        .unwrap();
    let router = self::router(&fixed, &up);
    for _ in 0..2 {
        let res = send(&router, &ask).await;
        assert_eq!(res.status(), 200);
        assert_eq!(header(&res, "x-switchyard-cost-micros"), "5000");
        bytes(res).await;
    }
    // Each reserved and was charged 5,000: the third does not fit.
    let res = send(&router, &ask).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json_body(res).await["error"]["code"], "insufficient_quota");
    let stats = fixed.stats();
    assert_eq!((stats.unpriced, stats.cost_micros), (2, 10_000));
    let usage = fixed.budget_usage("global-lifetime", "*").unwrap();
    assert_eq!((usage.spent_micros, usage.reserved_micros), (10_000, 0));
}

// === concurrency ===

#[tokio::test]
async fn the_concurrency_cap_counts_open_requests() {
    let meter = Meter::builder()
        .max_concurrent(by_team(), 2)
        .build()
        .unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);
    let open_for = |team: &str| {
        Ask::chat_stream("chat", 10)
            .header("x-team", team)
            .mode("hang")
    };
    let open = || open_for("t1");

    let a = read_until(send(&router, &open()).await, "Hel").await;
    let b = read_until(send(&router, &open()).await, "Hel").await;
    // Two open: the third is refused.
    let res = send(&router, &open()).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let error = json_body(res).await;
    assert_eq!(error["error"]["type"], "requests", "{error}");
    assert_eq!(error["error"]["code"], "rate_limit_exceeded");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2"),
        "{error}"
    );
    // Another key has its own count.
    let other = send(&router, &open_for("t2")).await;
    assert_eq!(other.status(), 200);

    // One closes: the next goes through.
    drop(a);
    let c = read_until(send(&router, &open()).await, "Hel").await;
    assert_eq!(
        send(&router, &open()).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // A request whose upstream cannot be reached gives its place back.
    drop(c);
    let failing = Ask::chat("chat", 10).header("x-team", "t1").mode("error");
    assert!(router.clone().oneshot(failing.request()).await.is_err());
    let d = send(&router, &open()).await;
    assert_eq!(d.status(), 200);
    assert_eq!(meter.stats().refused_concurrency, 2);
    drop((b, d, other));
}

// === a proptest of one token limit ===

#[derive(Debug, Clone)]
enum Op {
    /// A request: `pad` bytes of text, `max_tokens`, and its actual usage
    /// `deviation` percent off its estimate.
    Ask {
        pad: usize,
        max_tokens: u64,
        deviation: i64,
    },
    /// The answer of the `n`-th open request (modulo) ends.
    Finish(usize),
    /// Time passes (milliseconds).
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..2000, 1u64..800, -30i64..=30).prop_map(|(pad, max_tokens, deviation)| Op::Ask {
            pad,
            max_tokens,
            deviation
        }),
        3 => any::<usize>().prop_map(Op::Finish),
        2 => (0u64..3000).prop_map(Op::Wait),
    ]
}

/// What happened to a request the limit admitted, in the order of events.
#[derive(Debug, Clone, Copy)]
struct Held {
    estimate: u64,
    actual: u64,
    /// Event indices.
    admitted: usize,
    settled: usize,
}

/// A reference GCRA in nanoseconds: one unit each `interval`, `tau` of
/// tolerance; admission takes the estimate, settlement charges or refunds
/// the difference, never moving the arrival time before now.
struct Reference {
    tat: u64,
    interval: u64,
    tau: u64,
}

impl Reference {
    fn admit(&mut self, now: u64, units: u64) -> Option<u64> {
        let tat = self.tat.max(now) + units * self.interval;
        if tat - now > self.tau {
            return None;
        }
        self.tat = tat;
        Some((self.tau - (tat - now)) / self.interval)
    }

    fn settle(&mut self, now: u64, estimate: u64, actual: u64) {
        if actual > estimate {
            self.tat = self.tat.max(now) + (actual - estimate) * self.interval;
        } else if self.tat > now {
            self.tat = self
                .tat
                .saturating_sub((estimate - actual) * self.interval)
                .max(now);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Requests whose actual usage is within ±30 % of their estimate, their
    /// answers ending in any order while time passes, against one token
    /// limit (6,000 a minute, burst 2,000: a unit each 10 ms):
    ///
    /// 1. every admission and refusal, and the tokens left it shows, are
    ///    those of the reference GCRA above;
    /// 2. the bound. For any window of events from i to j, j an admission,
    ///    the actual units of the requests admitted in it are at most
    ///
    ///    burst + ⌊elapsed / interval⌋
    ///          + Σ (actual − estimate)⁺ of those still in flight after j
    ///          + Σ (estimate − actual)⁺ of those admitted before i and
    ///            settled in the window.
    ///
    ///    Proof: let D = max(tat − now, 0). Time lowers D by at most the
    ///    time passed; an admission raises it by estimate × interval, a
    ///    settlement by (actual − estimate) × interval, or lowers it by at
    ///    most (estimate − actual) × interval; right after an admission
    ///    D ≤ τ = burst × interval. So over the window, Σ estimate of the
    ///    admitted + Σ (actual − estimate) of the settled ≤ burst +
    ///    elapsed / interval. The admitted's actual is their estimate plus
    ///    their (actual − estimate); what differs from the settled's are
    ///    the terms above. With nothing in flight it is the plain GCRA
    ///    bound: the estimate error of requests in flight is the only
    ///    overshoot.
    #[test]
    fn a_token_limit_admits_what_the_bound_allows(ops in prop::collection::vec(op(), 1..60)) {
        const INTERVAL: u64 = 10_000_000;
        const BURST: u64 = 2000;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let clock = ManualClock::new();
            clock.advance(Duration::from_secs(1));
            let mut now = 1_000_000_000u64;
            let meter = Meter::builder()
                .token_limit(TokenLimit::new(by_team(), Quota::per_minute(6000).burst(2000).named("tpm")))
                .clock(clock.clone())
                .build()
                .unwrap();
            let up = Upstream::new();
            let router = router(&meter, &up);
            let mut reference = Reference { tat: 0, interval: INTERVAL, tau: BURST * INTERVAL };
            let mut held: Vec<Held> = Vec::new();
            // (event time, request index in `held`, admission?)
            let mut events: Vec<(u64, usize, bool)> = Vec::new();
            let mut open: Vec<(usize, tokio::sync::oneshot::Sender<()>, ModelBody<UpBody>)> = Vec::new();
            let finish = |open: &mut Vec<(usize, tokio::sync::oneshot::Sender<()>, ModelBody<UpBody>)>, n: usize| open.remove(n % open.len());
            for (n, op) in ops.iter().chain(std::iter::repeat_n(&Op::Finish(0), 60)).enumerate() {
                match *op {
                    Op::Ask { pad, max_tokens, deviation } => {
                        let body = json!({"model": "chat", "max_tokens": max_tokens, "stream": true,
                            "stream_options": {"include_usage": true},
                            "messages": [{"role": "user", "content": "x".repeat(pad)}]});
                        let probe = Ask::with_body("/v1/chat/completions", body.clone(), max_tokens);
                        let estimate = probe.estimate();
                        let actual = estimate * u64::try_from(100 + deviation).unwrap() / 100;
                        let input = actual.min(probe.input_estimate());
                        let gate = format!("g{n}");
                        let tx = up.gate(&gate);
                        let ask = probe.header("x-team", "t").usage(input, actual - input).mode("gate").header("x-gate", &gate);
                        let res = send(&router, &ask).await;
                        match reference.admit(now, estimate) {
                            Some(left) => {
                                assert_eq!(res.status(), 200, "admitted as the reference is");
                                assert_eq!(number(&res, "x-ratelimit-remaining-tokens"), left);
                                held.push(Held { estimate, actual, admitted: events.len(), settled: usize::MAX });
                                events.push((now, held.len() - 1, true));
                                let body = read_until(res, "Hel").await;
                                open.push((held.len() - 1, tx, body));
                            }
                            None => {
                                assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS, "refused as the reference is");
                                assert_eq!(json_body(res).await["error"]["type"], "tokens");
                            }
                        }
                    }
                    Op::Finish(k) => {
                        if open.is_empty() {
                            continue;
                        }
                        let (i, tx, body) = finish(&mut open, k);
                        tx.send(()).unwrap();
                        let rest = body.collect().await.unwrap().to_bytes();
                        assert!(rest.ends_with(b"\n\n"));
                        reference.settle(now, held[i].estimate, held[i].actual);
                        held[i].settled = events.len();
                        events.push((now, i, false));
                    }
                    Op::Wait(ms) => {
                        clock.advance(Duration::from_millis(ms));
                        now += ms * 1_000_000;
                    }
                }
            }
            assert!(open.is_empty());
            assert_eq!(meter.stats().settled as usize, held.len());

            for j in 0..events.len() {
                let (t_j, _, admission) = events[j];
                if !admission {
                    continue;
                }
                for (i, &(t_i, _, _)) in events.iter().enumerate().take(j + 1) {
                    let mut admitted = 0;
                    let mut bound = BURST + (t_j - t_i) / INTERVAL;
                    for h in &held {
                        if (i..=j).contains(&h.admitted) {
                            admitted += h.actual;
                            if h.settled > j {
                                bound += h.actual.saturating_sub(h.estimate);
                            }
                        } else if h.admitted < i && (i..=j).contains(&h.settled) {
                            bound += h.estimate.saturating_sub(h.actual);
                        }
                    }
                    assert!(admitted <= bound, "events {i}..={j}: {admitted} admitted > bound {bound}");
                }
            }
        });
    }
}
