//! Tokens and money: an AI gateway that prices every answer, limits tokens
//! per caller, and keeps each tenant within a budget.
//!
//! ```text
//! cargo run --example ai_spend                # listens on 127.0.0.1:8080
//! cargo run --example ai_spend -- --port 0    # any free port
//! ```
//!
//! One stand-in model server on loopback serves two versions of the alias
//! `chat`: `gpt-4o` (all the traffic) and `gpt-4o-mini` (none, until a
//! budget sends requests there). It bills as a real one would for what you
//! ask: `prompt_tokens` is the body's bytes / 4, `completion_tokens` is
//! your `max_tokens` (50 without one). Two API keys, two tenants:
//! `acme-key` (tenant `acme`) and `globex-key` (tenant `globex`).
//!
//! A [`Meter`] is the router's admission hook:
//!
//! * **prices**: gpt-4o $2.50 / $10 per million input / output tokens,
//!   gpt-4o-mini $0.15 / $0.60; every answer says what it cost in
//!   `x-switchyard-cost-micros` (millionths of a dollar), and a stream says
//!   it in a comment line after `data: [DONE]`, which SSE clients ignore;
//! * **a token limit**: 20,000 tokens a minute per caller. A request holds
//!   its estimate (body bytes / 4 + `max_tokens`) until its answer says
//!   what it used; `x-ratelimit-remaining-tokens` shows what is left, and
//!   a request that does not fit gets a 429 of type `tokens` with
//!   `x-ratelimit-reset-tokens`;
//! * **a daily budget per tenant**: $0.05, with an alert printed at 80 %;
//!   a request whose worst case does not fit goes to `gpt-4o-mini` instead
//!   (`x-switchyard-model: gpt-4o-mini`, `x-switchyard-reason: downgraded`);
//! * **a trial budget for globex**: $0.02 ever; past it, a 429
//!   `insufficient_quota`.
//!
//! Admin routes: `/admin/usage?by=tenant` (also `identity`, `alias`,
//! `model`; `&since=` and `&until=` in Unix seconds) shows tokens and cost
//! from the meter's ledger, `/admin/spend` the meter's counters and each
//! budget's state. Try (the example prints these with its address):
//!
//! ```text
//! A=http://127.0.0.1:8080
//! J='content-type: application/json'
//! curl -si $A/v1/chat/completions -H 'authorization: Bearer acme-key' -H "$J" \
//!      -d '{"model": "chat", "messages": [{"role": "user", "content": "hello"}]}'
//! curl -sN $A/v1/chat/completions -H 'authorization: Bearer acme-key' -H "$J" \
//!      -d '{"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hello"}]}'
//! # Each costs about $0.01: the 5th finds the day's budget spent and is
//! # answered by gpt-4o-mini.
//! curl -si $A/v1/chat/completions -H 'authorization: Bearer acme-key' -H "$J" \
//!      -d '{"model": "chat", "max_tokens": 1000, "messages": [{"role": "user", "content": "hello"}]}'
//! # 15,000 tokens twice: the second is over the token limit.
//! curl -si $A/v1/chat/completions -H 'authorization: Bearer globex-key' -H "$J" \
//!      -d '{"model": "chat", "max_tokens": 15000, "messages": [{"role": "user", "content": "hello"}]}'
//! curl -s $A/admin/usage?by=tenant
//! curl -s $A/admin/spend
//! ```
//!
//! Counts live in this process's memory; for several replicas give the
//! meter a Redis store (`MeterBuilder::redis`) and they share one count.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, Response, StatusCode, Uri, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use switchyard::auth::{ApiKey, ApiKeyLayer, Identity};
use switchyard::key::{KeyBy, RequestView};
use switchyard::model::{
    Alias, Catalog, ChoiceReason, Model, ModelChoice, ModelRouter, OpenAiErrorsLayer,
};
use switchyard::proxy::Upstream;
use switchyard::ratelimit::Quota;
use switchyard::server::Server;
use switchyard::spend::{
    Budget, BudgetScope, GroupBy, Meter, Period, Price, PriceCatalog, TokenLimit, Unpriced,
};
use tokio_stream::wrappers::ReceiverStream;
use tower::ServiceBuilder;

/// Tokens a minute per caller.
const TOKENS_PER_MINUTE: u32 = 20_000;
/// Each tenant's budget per day, in micro-dollars: $0.05.
const DAILY_BUDGET: u64 = 50_000;
/// globex's budget, ever: $0.02.
const TRIAL_BUDGET: u64 = 20_000;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = port_from_args()?;
    let models = FakeModelServer::start().await?;

    // Prices in micro-units (millionths of a dollar) per million tokens.
    // For every model at once, load LiteLLM's price file instead:
    // `PriceCatalog::from_file("model_prices_and_context_window.json")?`,
    // and override a few with `.with_price(..)`.
    let prices = PriceCatalog::new()
        .with_price(
            "gpt-4o",
            Price::per_million(2_500_000, 10_000_000).cache_read_per_million(1_250_000),
        )
        .with_price(
            "gpt-4o-mini",
            Price::per_million(150_000, 600_000).cache_read_per_million(75_000),
        );

    let meter = Meter::builder()
        .prices(prices)
        // A version with no price is refused rather than served for free.
        .unpriced(Unpriced::Deny)
        // Per caller: `KeyBy` reads the identity the auth layer recorded
        // (a header, the client IP or the tenant work too).
        .token_limit(TokenLimit::new(
            KeyBy::identity(),
            Quota::per_minute(TOKENS_PER_MINUTE),
        ))
        // Budgets reserve a request's worst case at admission (every
        // input token, `max_tokens` output tokens) and keep its actual
        // cost when it is answered.
        .budget(
            Budget::new(BudgetScope::Tenant, DAILY_BUDGET, Period::Day)
                .named("tenant-daily")
                .alert_at(80)
                .downgrade_to("gpt-4o-mini"),
        )
        .budget(
            Budget::new(
                BudgetScope::Key(tenant_named("globex")),
                TRIAL_BUDGET,
                Period::Lifetime,
            )
            .named("globex-trial"),
        )
        // Alerts are printed here; send them to your chat or pager.
        .on_alert(|alert| {
            println!(
                "budget alert: `{}` of {} is past {} % ({} of {} micro-dollars spent)",
                alert.budget, alert.key, alert.percent, alert.spent_micros, alert.limit_micros
            );
        })
        .build()?;

    let router = ModelRouter::builder()
        .upstream(
            "models",
            Upstream::builder(&format!("http://{}", models.addr))
                .response_timeout(Duration::from_secs(60))
                .build()?,
        )
        .catalog(
            Catalog::new()
                .model(Model::new("gpt-4o", "models"))
                .model(Model::new("gpt-4o-mini", "models"))
                // gpt-4o-mini gets no traffic by weight: it is where the
                // budget sends a tenant that spent its day.
                .alias(Alias::new("chat", [("gpt-4o", 100), ("gpt-4o-mini", 0)])),
        )
        .admit(meter.clone())
        .build()?;

    let auth = ApiKeyLayer::builder()
        .key(ApiKey::new(
            "acme-key",
            Identity::new("acme-bot").with_tenant("acme"),
        ))
        .key(ApiKey::new(
            "globex-key",
            Identity::new("globex-bot").with_tenant("globex"),
        ))
        .build()?;

    // Outside in: OpenAI's error shape for every refusal (auth's 401 too),
    // why the version was chosen, who is calling, then the router (which
    // asks the meter once it knows the version).
    let api = ServiceBuilder::new()
        .layer(OpenAiErrorsLayer::new())
        .map_response(choice_reason_header)
        .layer(auth)
        .service(router);

    let admin = Router::new()
        .route("/usage", get(usage))
        .route("/spend", get(spend))
        .with_state(meter);
    let app = Router::new().nest("/admin", admin).fallback_service(api);

    let server = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    print_help(server.local_addr(), models.addr);
    server.serve(app).await?;
    Ok(())
}

/// A budget key for the callers of one tenant only: other requests have no
/// key, so the budget does not apply to them.
fn tenant_named(tenant: &'static str) -> KeyBy {
    KeyBy::custom(move |req: &RequestView<'_>| {
        req.extensions
            .get::<Identity>()
            .and_then(Identity::tenant)
            .filter(|t| *t == tenant)
            .map(str::to_owned)
    })
}

/// `x-switchyard-reason: weighted | downgraded | ...` from the router's
/// [`ModelChoice`] (the version is in `x-switchyard-model`).
fn choice_reason_header<B>(mut res: Response<B>) -> Response<B> {
    let reason = res
        .extensions()
        .get::<ModelChoice>()
        .map(|choice| match choice.reason {
            ChoiceReason::Weighted => "weighted",
            ChoiceReason::Downgraded => "downgraded",
            ChoiceReason::Direct => "direct",
            _ => "other",
        });
    if let Some(reason) = reason {
        res.headers_mut()
            .insert("x-switchyard-reason", HeaderValue::from_static(reason));
    }
    res
}

// === admin routes ===

/// `GET /admin/usage?by=tenant&since=UNIX&until=UNIX`: tokens and cost per
/// tenant (or `identity`, `alias`, `model`) from the meter's ledger, most
/// expensive first. The ledger counts by the hour: `since` and `until`
/// select whole hours.
async fn usage(State(meter): State<Meter>, uri: Uri) -> Response<Body> {
    let (mut by, mut since, mut until) = (GroupBy::Tenant, 0, None);
    for (name, value) in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
    {
        let parsed = match name {
            "by" => value
                .parse()
                .map(|v| by = v)
                .map_err(|_| "identity, tenant, alias or model"),
            "since" => value.parse().map(|v| since = v).map_err(|_| "Unix seconds"),
            "until" => value
                .parse()
                .map(|v| until = Some(v))
                .map_err(|_| "Unix seconds"),
            _ => Ok(()),
        };
        if let Err(want) = parsed {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("`{name}={value}`: want {want}"),
            );
        }
    }
    let Some(ledger) = meter.ledger() else {
        return problem(StatusCode::NOT_FOUND, "this meter keeps no ledger".into());
    };
    Json(json!({
        "by": by,
        "since": since,
        "until": until,
        "rows": ledger.query(by, since, until),
    }))
    .into_response()
}

/// `GET /admin/spend`: the meter's counters (admitted, refused, downgraded,
/// cost...) and what each tenant spent and holds of its budgets.
async fn spend(State(meter): State<Meter>) -> Json<Value> {
    let budgets: Vec<Value> = [
        ("tenant-daily", "acme"),
        ("tenant-daily", "globex"),
        ("globex-trial", "globex"),
    ]
    .into_iter()
    .filter_map(|(budget, key)| {
        let state = meter.budget_usage(budget, key)?;
        Some(json!({"budget": budget, "key": key, "state": state}))
    })
    .collect();
    Json(json!({"stats": meter.stats(), "budgets": budgets}))
}

/// An `application/problem+json` answer (RFC 9457), the shape switchyard's
/// layers refuse with.
fn problem(status: StatusCode, detail: String) -> Response<Body> {
    let body = json!({
        "type": "about:blank",
        "title": status.canonical_reason(),
        "status": status.as_u16(),
        "detail": detail,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

// === the stand-in model server ===

/// A stand-in for an OpenAI-compatible model server on `127.0.0.1:0`,
/// serving whatever model it is asked for. It bills in proportion to the
/// request: `prompt_tokens` = the body's bytes / 4, `completion_tokens` =
/// `max_tokens` (or `max_completion_tokens`; 50 without either), however
/// short its answer. A stream ends with a usage chunk only when asked with
/// `"stream_options": {"include_usage": true}`, as OpenAI's does (the
/// router asks on the client's behalf, and hides the chunk from a client
/// that did not).
struct FakeModelServer {
    addr: SocketAddr,
}

impl FakeModelServer {
    async fn start() -> std::io::Result<Self> {
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(Arc::new(AtomicU64::new(0)));
        let server = Server::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = server.local_addr();
        tokio::spawn(server.serve(app));
        Ok(Self { addr })
    }
}

async fn chat_completions(State(ids): State<Arc<AtomicU64>>, body: Bytes) -> Response<Body> {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        let error = json!({"error": {
            "message": "the body is not JSON", "type": "invalid_request_error",
            "param": null, "code": null,
        }});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    };
    // The version the router chose, never the alias.
    let model = request["model"].as_str().unwrap_or("?").to_owned();
    let prompt_tokens = body.len() / 4;
    let completion_tokens = request["max_tokens"]
        .as_u64()
        .or_else(|| request["max_completion_tokens"].as_u64())
        .unwrap_or(50);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens as u64 + completion_tokens,
    });
    let answer = format!("{model} here: this answer is billed as {completion_tokens} tokens.");
    let id = format!("chatcmpl-{}", ids.fetch_add(1, Ordering::Relaxed));
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    if request["stream"] != json!(true) {
        return Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }],
            "usage": usage,
        }))
        .into_response();
    }

    let include_usage = request["stream_options"]["include_usage"] == json!(true);
    let (events, rx) = tokio::sync::mpsc::channel::<Result<String, Infallible>>(4);
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value| {
            let chunk = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            });
            format!("data: {chunk}\n\n")
        };
        let mut out: Vec<String> = answer
            .split_inclusive(' ')
            .enumerate()
            .map(|(i, word)| match i {
                0 => chunk(json!({"role": "assistant", "content": word}), Value::Null),
                _ => chunk(json!({"content": word}), Value::Null),
            })
            .collect();
        out.push(chunk(json!({}), json!("stop")));
        if include_usage {
            let usage = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [], "usage": usage,
            });
            out.push(format!("data: {usage}\n\n"));
        }
        out.push("data: [DONE]\n\n".to_owned());
        for event in out {
            if events.send(Ok(event)).await.is_err() {
                return; // the client went away: stop generating
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}

// === command line ===

fn port_from_args() -> Result<u16, String> {
    let mut args = std::env::args().skip(1);
    let mut port = 8080;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let value = args.next().ok_or("--port needs a value")?;
                port = value
                    .parse()
                    .map_err(|_| format!("--port: `{value}` is not a port number"))?;
            }
            "-h" | "--help" => {
                println!("usage: ai_spend [--port PORT]   (default 8080; 0 picks a free port)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`; try --help")),
        }
    }
    Ok(port)
}

fn print_help(addr: SocketAddr, models: SocketAddr) {
    let a = format!("http://{addr}");
    let ask = |key: &str, body: &str| {
        format!(
            "curl -si {a}/v1/chat/completions -H 'authorization: Bearer {key}' \\\n       -H 'content-type: application/json' -d '{body}'"
        )
    };
    let hello = ask(
        "acme-key",
        r#"{"model": "chat", "messages": [{"role": "user", "content": "hello"}]}"#,
    );
    let stream = ask(
        "acme-key",
        r#"{"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hello"}]}"#,
    )
    .replacen("-si", "-sN", 1);
    let dear = ask(
        "acme-key",
        r#"{"model": "chat", "max_tokens": 1000, "messages": [{"role": "user", "content": "hello"}]}"#,
    );
    let big = ask(
        "globex-key",
        r#"{"model": "chat", "max_tokens": 15000, "messages": [{"role": "user", "content": "hello"}]}"#,
    );
    println!(
        r#"switchyard AI spend example listening on {a}
model server (gpt-4o, gpt-4o-mini) on http://{models}

  {hello}
      # x-switchyard-cost-micros, x-ratelimit-remaining-tokens
  {stream}
      # the cost in a comment line after data: [DONE]
  {dear}
      # about $0.01 each: the 5th is answered by gpt-4o-mini (tenant-daily is $0.05)
  {big}
      # twice: the second is over 20,000 tokens a minute (429, type tokens)
  curl -s '{a}/admin/usage?by=tenant'     # tokens and cost per tenant (by=identity|alias|model, since=UNIX)
  curl -s {a}/admin/spend                 # the meter's counters and the budgets' state
"#
    );
}
