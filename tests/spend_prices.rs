#![cfg(feature = "json")]
//! Cost end to end with the whole price model (`spend::price`) and the
//! ledger (`spend::ledger`): real-shaped provider answers priced through
//! a [`Meter`] on a [`ModelRouter`].
//!
//! * Anthropic cache-write tokens priced once, at the cache-write price
//!   (LiteLLM #9812 charged them as input too); cache reads at theirs;
//! * Gemini thinking tokens priced as output, or at a reasoning price;
//! * prices loaded from LiteLLM's JSON format, found by the version's
//!   upstream name without its provider prefix, with the `above_200k` tier
//!   switching at 200,001 input tokens, and replaced live;
//! * the worst case a budget reserves: the dearer of the input and
//!   cache-write prices, output capped by the model's `max_output_tokens`
//!   (so that a request asking for more than the model writes cannot hold
//!   a budget it would fit, LiteLLM #27509);
//! * the ledger's rows per tenant, identity, alias and version, abandoned
//!   streams and unpriced answers included.
//!
//! The Anthropic and Gemini stand-ins (`support/providers.rs`) are served
//! over loopback HTTP and reached through `proxy::Upstream`s, so that the
//! usage is read from their real wire formats.

use crate::support::providers;
use crate::support::spend as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use providers::{ANTHROPIC_USAGE, AnthropicServer, GeminiServer, StandIn};
use serde_json::json;
use support::{Ask, Up, Upstream, bytes, header, micros, number, read_sse};
use switchyard::auth::Identity;
use switchyard::model::providers::Protocol;
use switchyard::model::{Alias, Catalog, KeySource, Model, ModelRouter, Provider};
use switchyard::proxy::Upstream as Proxy;
use switchyard::spend::{
    Budget, BudgetScope, GroupBy, Meter, Period, Price, PriceCatalog, UsageRow,
};
use tower::ServiceExt;

const ANTHROPIC_KEY: &str = "sk-ant-standin-key";
const GEMINI_KEY: &str = "AIza-gemini-standin-key";

// === real provider formats ===

/// A router over the Anthropic and Gemini stand-ins: `claude-sonnet`
/// (`claude-sonnet-4-5` upstream) and `gemini-flash`
/// (`gemini-2.5-flash` upstream).
async fn providers_router(meter: &Meter) -> (ModelRouter<Proxy>, StandIn, StandIn) {
    let anthropic = AnthropicServer::start(ANTHROPIC_KEY).await;
    let gemini = GeminiServer::start(GEMINI_KEY).await;
    let proxy = |s: &StandIn| {
        Proxy::builder(&s.url())
            .response_timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let router = ModelRouter::builder()
        .upstream("anthropic", proxy(&anthropic))
        .upstream("gemini", proxy(&gemini))
        .provider(
            "anthropic",
            Provider::new(Protocol::Anthropic).key(KeySource::Value(ANTHROPIC_KEY.into())),
        )
        .provider(
            "gemini",
            Provider::new(Protocol::Gemini).key(KeySource::Value(GEMINI_KEY.into())),
        )
        .catalog(
            Catalog::new()
                .model(Model::new("claude-sonnet", "anthropic").upstream_model("claude-sonnet-4-5"))
                .model(Model::new("gemini-flash", "gemini").upstream_model("gemini-2.5-flash")),
        )
        .admit(meter.clone())
        .build()
        .unwrap();
    (router, anthropic, gemini)
}

fn ask(path: &str, model: &str, text: &str, stream: bool) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({"model": model, "max_tokens": 100, "stream": stream,
                   "messages": [{"role": "user", "content": text}]})
            .to_string(),
        )))
        .unwrap()
}

/// $3 in, $15 out, cache reads $0.30 and writes $3.75 per million.
fn sonnet() -> Price {
    Price::per_million(3_000_000, 15_000_000)
        .cache_read_per_million(300_000)
        .cache_write_per_million(3_750_000)
}

#[tokio::test]
async fn anthropic_cache_writes_are_priced_once_at_their_price() {
    let meter = Meter::builder()
        .prices(PriceCatalog::new().with_price("claude-sonnet", sonnet()))
        .build()
        .unwrap();
    let (router, _anthropic, _gemini) = providers_router(&meter).await;
    // 18 input tokens: 10 uncached, 6 read from the cache, 2 written to
    // it; 7 output. In pico-units: 10 × 3e6 + 6 × 3e5 + 2 × 3.75e6 +
    // 7 × 15e6 = 144.3e6, so 145 micro-units. (Cache writes charged as
    // input too would make it 151; as plain input, 143.)
    assert_eq!(
        (
            ANTHROPIC_USAGE.input,
            ANTHROPIC_USAGE.cached_read,
            ANTHROPIC_USAGE.cache_write,
            ANTHROPIC_USAGE.output
        ),
        (18, 6, 2, 7)
    );
    let cost = 145;

    // Passed through to an Anthropic client, and translated for an OpenAI
    // one: the same cost.
    for path in ["/v1/messages", "/v1/chat/completions"] {
        let res = router
            .clone()
            .oneshot(ask(path, "claude-sonnet", "hello", false))
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(number(&res, "x-switchyard-cost-micros"), cost, "{path}");
        assert_eq!(number(&res, "x-switchyard-input-tokens"), 18);
        bytes(res).await;
    }
    // Streamed: in the comment lines after the last event.
    let res = router
        .clone()
        .oneshot(ask("/v1/messages", "claude-sonnet", "hello", true))
        .await
        .unwrap();
    let text = String::from_utf8(bytes(res).await.to_vec()).unwrap();
    let (events, notes) = read_sse(&text);
    assert_eq!(events.last().unwrap().name, "message_stop");
    assert_eq!(notes[0], format!("x-switchyard-cost-micros: {cost}"));
    assert_eq!(meter.stats().cost_micros, 3 * cost);
    let versions = router.handle().stats();
    let sonnet = versions
        .iter()
        .find(|v| v.model == "claude-sonnet")
        .unwrap();
    assert_eq!((sonnet.cost_micros, sonnet.priced), (3 * cost, 3));
    assert_eq!(sonnet.cache_write_tokens, 6);
}

/// LiteLLM's format: the price of `gemini/gemini-2.5-flash` found for the
/// version whose upstream name is `gemini-2.5-flash`.
const GEMINI_PRICES: &str = r#"{
    "sample_spec": {"input_cost_per_token": 0, "output_cost_per_token": 0, "mode": "chat"},
    "gemini/gemini-2.5-flash": {
        "input_cost_per_token": 3e-07,
        "output_cost_per_token": 2.5e-06,
        "cache_read_input_token_cost": 7.5e-08,
        "max_output_tokens": 65535,
        "litellm_provider": "gemini",
        "mode": "chat"
    },
    "dall-e-3": {"output_cost_per_image": 0.04, "mode": "image_generation"}
}"#;

#[tokio::test]
async fn gemini_thinking_is_priced_as_output() {
    let prices = PriceCatalog::from_litellm_json(GEMINI_PRICES.as_bytes()).unwrap();
    assert!(prices.get("gemini-2.5-flash").is_some());
    let meter = Meter::builder().prices(prices.clone()).build().unwrap();
    let (router, _anthropic, _gemini) = providers_router(&meter).await;
    // A `think` answer: 9 input (3 cached), 9 output of which 5 thinking.
    // 6 × 3e5 + 3 × 7.5e4 + 4 × 2.5e6 + 5 × 2.5e6 = 24.525e6 pico: 25
    // micro-units. (Thinking left out would be 13.)
    let res = router
        .clone()
        .oneshot(ask(
            "/v1/chat/completions",
            "gemini-flash",
            "please think",
            false,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-switchyard-output-tokens"), "9");
    assert_eq!(number(&res, "x-switchyard-cost-micros"), 25);
    let body: serde_json::Value = serde_json::from_slice(&bytes(res).await).unwrap();
    assert_eq!(
        body["usage"]["completion_tokens_details"]["reasoning_tokens"],
        5
    );

    // With a reasoning price of its own ($3.50 per million): 4 × 2.5e6 +
    // 5 × 3.5e6 for the output, 29.525e6 in all: 30.
    meter.set_prices(
        prices.with_price(
            "gemini-2.5-flash",
            Price::per_million(300_000, 2_500_000)
                .cache_read_per_million(75_000)
                .reasoning_per_million(3_500_000),
        ),
    );
    let res = router
        .clone()
        .oneshot(ask(
            "/v1/chat/completions",
            "gemini-flash",
            "please think",
            true,
        ))
        .await
        .unwrap();
    let text = String::from_utf8(bytes(res).await.to_vec()).unwrap();
    let (_, notes) = read_sse(&text);
    assert_eq!(notes[0], "x-switchyard-cost-micros: 30", "{text}");
    assert_eq!(meter.stats().cost_micros, 25 + 30);
}

// === the catalog on the router, with the scripted stand-in ===

type Router = ModelRouter<Up<Full<Bytes>>>;

fn router(meter: &Meter, up: &Upstream) -> Router {
    ModelRouter::builder()
        .upstream("openai", up.service())
        .upstream("anthropic", up.service())
        .provider(
            "anthropic",
            Provider::new(Protocol::Anthropic).key(KeySource::Value("k".into())),
        )
        .catalog(
            Catalog::new()
                .model(Model::new("gemini-pro", "openai").upstream_model("gemini-2.5-pro"))
                .model(Model::new("gpt-4o", "openai"))
                .model(Model::new("gpt-4o-mini", "openai"))
                .model(Model::new("mystery", "openai"))
                .model(Model::new("claude", "anthropic"))
                .alias(Alias::new("chat", [("gpt-4o", 1), ("gpt-4o-mini", 0)])),
        )
        .admit(meter.clone())
        .build()
        .unwrap()
}

async fn send(
    router: &Router,
    ask: &Ask,
) -> http::Response<switchyard::model::ModelBody<support::UpBody>> {
    tokio::time::timeout(
        Duration::from_secs(10),
        router.clone().oneshot(ask.request()),
    )
    .await
    .unwrap()
    .unwrap()
}

const TIERED: &str = r#"{
    "vertex_ai/gemini-2.5-pro": {
        "input_cost_per_token": 1.25e-06,
        "output_cost_per_token": 1e-05,
        "input_cost_per_token_above_200k_tokens": 2.5e-06,
        "output_cost_per_token_above_200k_tokens": 1.5e-05,
        "max_output_tokens": 65535,
        "mode": "chat"
    },
    "gpt-4o": {"input_cost_per_token": "2.5e-06", "output_cost_per_token": 1e-05, "max_tokens": 16384}
}"#;

#[tokio::test]
async fn the_long_context_tier_prices_the_whole_request_above_200k_input() {
    let meter = Meter::builder()
        .prices(PriceCatalog::from_litellm_json(TIERED.as_bytes()).unwrap())
        .build()
        .unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);
    for (input, output, rates) in [
        (200_000, 1_000, (1_250_000, 10_000_000)),
        (200_001, 1_000, (2_500_000, 15_000_000)),
    ] {
        let res = send(&router, &Ask::chat("gemini-pro", 10).usage(input, output)).await;
        assert_eq!(
            number(&res, "x-switchyard-cost-micros"),
            micros(input, output, rates),
            "{input} input tokens"
        );
        bytes(res).await;
    }
    // A price given as a string is read too.
    let res = send(&router, &Ask::chat("chat", 10).usage(1000, 100)).await;
    assert_eq!(number(&res, "x-switchyard-cost-micros"), 2500 + 1000);
    bytes(res).await;
}

/// A budget reserves a request's worst case: every input token of the
/// estimate at the dearer of the input and cache-write prices, and
/// `max_tokens` of output, but never more output than the model writes.
#[tokio::test]
async fn the_worst_case_reserved_is_the_dearest_the_answer_can_cost() {
    let up = Upstream::new();
    // Cache writes dearer than input.
    let price = sonnet();
    let ask = Ask::messages("claude", 1000, false)
        .identity(Identity::new("alice").with_tenant("acme"))
        .usage(10, 10);
    let worst = micros(ask.input_estimate(), 1000, (3_750_000, 15_000_000));
    // (At the input price it would be less.)
    assert!(micros(ask.input_estimate(), 1000, (3_000_000, 15_000_000)) < worst);
    for (limit, admitted) in [(worst, true), (worst - 1, false)] {
        let meter = Meter::builder()
            .prices(PriceCatalog::new().with_price("claude", price))
            .budget(Budget::new(BudgetScope::Tenant, limit, Period::Day))
            .build()
            .unwrap();
        let res = send(&router(&meter, &up), &ask).await;
        assert_eq!(
            res.status().is_success(),
            admitted,
            "limit {limit}, worst {worst}"
        );
        bytes(res).await;
    }

    // A model that writes at most 100 tokens: asking for 100,000 reserves
    // 100 tokens' worth, so a budget of a little more admits it.
    let capped = Price::per_million(2_500_000, 10_000_000).max_output_tokens(100);
    let greedy = Ask::chat("gpt-4o", 100_000)
        .identity(Identity::new("alice").with_tenant("acme"))
        .usage(10, 10);
    let worst = micros(greedy.input_estimate(), 100, (2_500_000, 10_000_000));
    let meter = Meter::builder()
        .prices(PriceCatalog::new().with_price("gpt-4o", capped))
        .budget(Budget::new(BudgetScope::Tenant, worst, Period::Day))
        .build()
        .unwrap();
    let router = router(&meter, &up);
    let res = send(&router, &greedy).await;
    assert_eq!(res.status(), 200);
    bytes(res).await;
    // A request with no max_tokens: the default (4096), capped too.
    let res = send(
        &router,
        &Ask::with_body(
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "messages": []}),
            0,
        )
        .identity(Identity::new("alice").with_tenant("globex")),
    )
    .await;
    assert_eq!(res.status(), 200);
    bytes(res).await;
    assert_eq!(meter.stats().refused_budget, 0);
}

// === the ledger ===

fn row<'a>(rows: &'a [UsageRow], key: &str) -> &'a UsageRow {
    rows.iter()
        .find(|r| r.key == key)
        .unwrap_or_else(|| panic!("no row {key} in {rows:?}"))
}

#[tokio::test]
async fn the_ledger_counts_every_answer_by_tenant_identity_alias_and_version() {
    let hour = 3600;
    let start = 1_700_006_400; // on the hour
    let wall = Arc::new(AtomicU64::new(start + 10));
    let now = Arc::clone(&wall);
    let meter = Meter::builder()
        .prices(
            PriceCatalog::new()
                .with_price("gpt-4o", Price::per_million(2_500_000, 10_000_000))
                .with_price("gpt-4o-mini", Price::per_million(150_000, 600_000))
                .with_price("claude", sonnet()),
        )
        .wall_clock(move || now.load(Ordering::SeqCst))
        .build()
        .unwrap();
    let up = Upstream::new();
    let router = router(&meter, &up);
    let alice = Identity::new("alice").with_tenant("acme");
    let bob = Identity::new("bob").with_tenant("acme");

    // Hour 0: alice asks `chat` twice; bob asks gpt-4o-mini by name.
    for _ in 0..2 {
        bytes(
            send(
                &router,
                &Ask::chat("chat", 10)
                    .identity(alice.clone())
                    .usage(1000, 100),
            )
            .await,
        )
        .await;
    }
    bytes(
        send(
            &router,
            &Ask::chat("gpt-4o-mini", 10)
                .identity(bob.clone())
                .usage(2000, 200),
        )
        .await,
    )
    .await;
    // Hour 1: bob's stream is abandoned after Anthropic's message_start
    // (900 input, 1 output); an unpriced answer; an anonymous caller.
    wall.store(start + hour + 5, Ordering::SeqCst);
    let res = send(
        &router,
        &Ask::messages("claude", 500, true)
            .identity(bob.clone())
            .usage(900, 400)
            .mode("hang"),
    )
    .await;
    let mut body = res.into_body();
    let mut seen = String::new();
    while !seen.contains("content_block_delta") {
        let frame = body.frame().await.expect("the stream goes on").unwrap();
        seen.push_str(std::str::from_utf8(&frame.into_data().unwrap()).unwrap());
    }
    drop(body);
    bytes(
        send(
            &router,
            &Ask::chat("mystery", 10).identity(bob.clone()).usage(50, 5),
        )
        .await,
    )
    .await;
    bytes(send(&router, &Ask::chat("chat", 10).usage(10, 1)).await).await;

    let ledger = meter.ledger().expect("a ledger by default");
    let four_o = micros(1000, 100, (2_500_000, 10_000_000));
    let mini = micros(2000, 200, (150_000, 600_000));
    let claude = micros(900, 1, (3_000_000, 15_000_000));
    let anon = micros(10, 1, (2_500_000, 10_000_000));

    let tenants = ledger.totals(GroupBy::Tenant);
    let acme = row(&tenants, "acme");
    assert_eq!(acme.requests, 5);
    assert_eq!(acme.input_tokens, 2 * 1000 + 2000 + 900 + 50);
    assert_eq!(acme.output_tokens, 2 * 100 + 200 + 1 + 5);
    assert_eq!(acme.cost_micros, 2 * four_o + mini + claude);
    assert_eq!(acme.unpriced_requests, 1);
    assert_eq!(tenants.len(), 1, "the anonymous caller has no tenant");

    let people = ledger.totals(GroupBy::Identity);
    assert_eq!(row(&people, "alice").cost_micros, 2 * four_o);
    assert_eq!(row(&people, "bob").requests, 3);
    assert_eq!(row(&people, "bob").cost_micros, mini + claude);

    let aliases = ledger.totals(GroupBy::Alias);
    assert_eq!(row(&aliases, "chat").requests, 3);
    assert_eq!(row(&aliases, "chat").cost_micros, 2 * four_o + anon);
    assert_eq!(aliases.len(), 1, "versions asked by name have no alias");

    let versions = ledger.totals(GroupBy::Model);
    assert_eq!(row(&versions, "gpt-4o").requests, 3);
    assert_eq!(row(&versions, "claude").input_tokens, 900);
    assert_eq!(row(&versions, "mystery").unpriced_requests, 1);
    // Sorted by cost, dearest first.
    assert!(
        versions
            .windows(2)
            .all(|w| w[0].cost_micros >= w[1].cost_micros)
    );

    // Since hour 1: only its answers.
    let later = ledger.query(GroupBy::Tenant, start + hour, None);
    let acme = row(&later, "acme");
    assert_eq!((acme.requests, acme.cost_micros), (2, claude));
    let earlier = ledger.query(GroupBy::Identity, start, Some(start + hour));
    assert_eq!(row(&earlier, "bob").cost_micros, mini);
    assert_eq!(meter.stats().cost_micros, 2 * four_o + mini + claude + anon);
    assert_eq!(up.seen().len(), 6);
}
