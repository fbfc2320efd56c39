#![cfg(feature = "admin")]
//! A gateway model route with `[routes.model.spend]`, over real loopback
//! HTTP: prices from LiteLLM's file and inline, the cost of each answer in
//! its headers, a tenant budget refusing in OpenAI's shape, `GET /usage`,
//! `GET /spend/{route}` and `/metrics`, and reloads that keep the meter's
//! state while reading the price file again.
//!
//! Timeouts here only guard against a hang; no assertion is about speed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::support::net;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use net::serve;
use serde_json::{Value, json};
use switchyard::gateway::{Gateway, GatewayConfig, admin};

const HANG_GUARD: Duration = Duration::from_secs(10);

/// A model server: 1,000 input tokens, `max_tokens` (or 100) output.
async fn model_server() -> SocketAddr {
    let app = Router::new().fallback(|body: Bytes| async move {
        let req: Value = serde_json::from_slice(&body).unwrap_or_default();
        let out = req["max_tokens"].as_u64().unwrap_or(100);
        axum::Json(json!({
            "id": "x", "object": "chat.completion", "model": req["model"],
            "choices": [{ "index": 0, "finish_reason": "stop",
                "message": { "role": "assistant", "content": "hi" } }],
            "usage": { "prompt_tokens": 1000, "completion_tokens": out, "total_tokens": 1000 + out }
        }))
    });
    serve(app).await
}

/// A webhook receiver: the JSON documents POSTed to `/hooks/budget`.
async fn webhook() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().route(
        "/hooks/budget",
        axum::routing::post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(serde_json::from_slice::<Value>(&body).unwrap_or_default());
                "ok"
            }
        }),
    );
    (serve(app).await, rx)
}

fn config(llm: SocketAddr, prices: &Path, budget_micros: u64) -> String {
    config_with_hook(llm, prices, budget_micros, None)
}

fn config_with_hook(
    llm: SocketAddr,
    prices: &Path,
    budget_micros: u64,
    hook: Option<SocketAddr>,
) -> String {
    let hook = hook
        .map(|h| format!("alert_webhook = \"http://{h}/hooks/budget\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[upstreams.llm]
url = "http://{llm}"

[[api_keys]]
key = "acme-key"
id = "alice"
tenant = "acme"
[[api_keys]]
key = "globex-key"
id = "bob"
tenant = "globex"

[admin]
keys = [{{ key = "admin-one", id = "ops" }}]

[[routes]]
name = "ai"
path_prefix = "/v1"
auth = {{}}
[routes.model.catalog]
models = [
  {{ name = "gpt-4o", upstream = "llm" }},
  {{ name = "house", upstream = "llm" }},
]
aliases = [{{ name = "chat", versions = {{ "gpt-4o" = 100 }} }}]

[routes.model.spend]
prices_file = "{prices}"
unpriced = "deny"
{hook}[routes.model.spend.prices.house]
input_per_million = 100000
output_per_million = 300000
[[routes.model.spend.token_limits]]
key = "identity"
limit = 1000000
period = "1h"
[[routes.model.spend.budgets]]
name = "tenant-day"
scope = "tenant"
limit_micros = {budget_micros}
period = "day"
alerts = [10]
"#,
        prices = prices.display()
    )
}

struct Harness {
    gateway: Gateway,
    addr: SocketAddr,
    admin: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Harness {
    async fn start(config: &str) -> Self {
        let gateway = Gateway::from_config(GatewayConfig::from_toml(config).unwrap()).unwrap();
        let addr = serve(Router::new().fallback_service(gateway.clone())).await;
        let admin = serve(admin::router(&gateway).unwrap()).await;
        Self {
            gateway,
            addr,
            admin,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn call(&self, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
        let res = tokio::time::timeout(HANG_GUARD, self.client.request(req))
            .await
            .expect("request hung")
            .expect("request failed");
        let (parts, body) = res.into_parts();
        let body = tokio::time::timeout(HANG_GUARD, body.collect())
            .await
            .expect("body hung")
            .expect("body failed")
            .to_bytes();
        (parts.status, parts.headers, body)
    }

    async fn chat(
        &self,
        key: &str,
        model: &str,
        max_tokens: u64,
    ) -> (StatusCode, HeaderMap, Value) {
        let req = Request::post(format!("http://{}/v1/chat/completions", self.addr))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                json!({ "model": model, "max_tokens": max_tokens, "messages": [] }).to_string(),
            )))
            .unwrap();
        let (status, headers, body) = self.call(req).await;
        (
            status,
            headers,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    async fn admin(&self, path: &str) -> (StatusCode, String) {
        let req = Request::get(format!("http://{}{path}", self.admin))
            .header("authorization", "Bearer admin-one")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, _, body) = self.call(req).await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}

fn prices_file(dir: &Path, gpt4o_input: f64) -> std::path::PathBuf {
    let path = dir.join("prices.json");
    let doc = json!({
        "sample_spec": { "input_cost_per_token": "the price" },
        "gpt-4o": {
            "input_cost_per_token": gpt4o_input,
            "output_cost_per_token": 1e-05,
            "max_output_tokens": 16384,
            "litellm_provider": "openai",
            "mode": "chat"
        }
    });
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_metered_route_prices_limits_and_reports() {
    let dir = tempfile_dir("spend-route");
    let prices = prices_file(&dir, 2.5e-06);
    let llm = model_server().await;
    let (hook, mut alerts) = webhook().await;
    // $0.10 a day per tenant.
    let h = Harness::start(&config_with_hook(llm, &prices, 100_000, Some(hook))).await;

    // 1,000 in × $2.50/M + 200 out × $10/M = 2,500 + 2,000 micro-units.
    let (status, headers, body) = h.chat("acme-key", "chat", 200).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(header(&headers, "x-switchyard-cost-micros"), "4500");
    assert_eq!(header(&headers, "x-switchyard-input-tokens"), "1000");
    assert_eq!(header(&headers, "x-switchyard-output-tokens"), "200");
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), "1000000");
    assert!(!header(&headers, "x-ratelimit-remaining-tokens").is_empty());
    // The inline price: 1,000 × $0.10/M + 50 × $0.30/M = 100 + 15.
    let (status, headers, _) = h.chat("globex-key", "house", 50).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-switchyard-cost-micros"), "115");

    // A worst case above what is left of acme's budget: 429 in OpenAI's
    // shape (16,384 output tokens at most: $0.16 > $0.0955 left).
    let (status, _, body) = h.chat("acme-key", "chat", 100_000).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    // globex has its own budget.
    let (status, _, _) = h.chat("globex-key", "chat", 1000).await;
    assert_eq!(status, StatusCode::OK);

    // The admin API: usage by tenant, most expensive first.
    let (status, text) = h.admin("/usage?by=tenant&since=2020-01-01").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    let rows = doc["routes"]["ai"].as_array().unwrap();
    assert_eq!(rows[0]["key"], "globex", "{text}");
    assert_eq!(rows[0]["cost_micros"], 115 + 12_500, "{text}");
    assert_eq!(rows[1]["key"], "acme");
    assert_eq!(rows[1]["cost_micros"], 4500);
    assert_eq!(rows[1]["input_tokens"], 1000);
    // Nothing after the window.
    let (_, text) = h.admin("/usage?by=model&since=2999-01-01").await;
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["routes"]["ai"], json!([]), "{text}");
    let (status, _) = h.admin("/usage?by=color").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h.admin("/usage?since=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, text) = h.admin("/spend/ai?budget=tenant-day&key=acme").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["stats"]["admitted"], 3, "{text}");
    assert_eq!(doc["stats"]["refused_budget"], 1, "{text}");
    assert_eq!(doc["usage"]["spent_micros"], 4500, "{text}");
    assert_eq!(doc["usage"]["reserved_micros"], 0, "{text}");

    let (_, metrics) = h.admin("/metrics").await;
    assert!(
        metrics.contains("switchyard_model_cost_micros_total{route=\"ai\",model=\"gpt-4o\"} 17000"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "switchyard_spend_admissions_total{route=\"ai\",outcome=\"refused_budget\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "switchyard_spend_tenant_cost_micros_total{route=\"ai\",tenant=\"acme\"} 4500"
        ),
        "{metrics}"
    );
    // globex crossed 10 % of its $0.10: counted, and POSTed to the
    // webhook once.
    assert!(
        metrics.contains("switchyard_spend_budget_alerts_total{route=\"ai\"} 1"),
        "{metrics}"
    );
    let alert = tokio::time::timeout(HANG_GUARD, alerts.recv())
        .await
        .expect("no alert came")
        .unwrap();
    assert_eq!(
        alert,
        json!({ "route": "ai", "budget": "tenant-day", "key": "globex", "percent": 10,
                "spent_micros": 115 + 12_500, "limit_micros": 100_000 })
    );
    assert!(alerts.try_recv().is_err(), "one alert only");

    // A reload with the same spend settings keeps the meter (acme's
    // spending stays) and reads the price file again: gpt-4o's input now
    // costs twice as much.
    prices_file(&dir, 5e-06);
    h.gateway
        .reload(
            GatewayConfig::from_toml(&config_with_hook(llm, &prices, 100_000, Some(hook))).unwrap(),
        )
        .unwrap();
    let (status, headers, _) = h.chat("acme-key", "chat", 200).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-switchyard-cost-micros"), "7000");
    let (_, text) = h.admin("/spend/ai?budget=tenant-day&key=acme").await;
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["usage"]["spent_micros"], 4500 + 7000, "{text}");

    // A broken price file is refused with the reload; the prices in force
    // stay.
    std::fs::write(&prices, "{ not json").unwrap();
    let err = h
        .gateway
        .reload(
            GatewayConfig::from_toml(&config_with_hook(llm, &prices, 100_000, Some(hook))).unwrap(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("spend.prices_file"), "{err}");
    let (_, headers, _) = h.chat("acme-key", "chat", 200).await;
    assert_eq!(header(&headers, "x-switchyard-cost-micros"), "7000");

    // A model with no price is refused (`unpriced = "deny"`) once it is not
    // in the file.
    std::fs::write(&prices, json!({ "other": {} }).to_string()).unwrap();
    h.gateway
        .reload(
            GatewayConfig::from_toml(&config_with_hook(llm, &prices, 100_000, Some(hook))).unwrap(),
        )
        .unwrap();
    let (status, _, body) = h.chat("acme-key", "chat", 10).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "model_not_priced");
}

#[tokio::test]
async fn spend_settings_are_checked_when_the_configuration_is_loaded() {
    let dir = tempfile_dir("spend-bad");
    let prices = prices_file(&dir, 2.5e-06);
    let llm = model_server().await;
    let good = config(llm, &prices, 100);
    let bad = good.replace("period = \"1h\"", "period = \"soon\"");
    let err = Gateway::from_config(GatewayConfig::from_toml(&bad).unwrap()).unwrap_err();
    assert!(
        err.to_string()
            .contains("routes[0].model.spend.token_limits[0].period"),
        "{err}"
    );
    let hooked = config_with_hook(llm, &prices, 100, None).replace(
        "unpriced = \"deny\"",
        "unpriced = \"deny\"\nalert_webhook = \"/relative\"",
    );
    let err = Gateway::from_config(GatewayConfig::from_toml(&hooked).unwrap()).unwrap_err();
    assert!(err.to_string().contains("spend.alert_webhook"), "{err}");
    let missing = good.replace("prices.json", "missing.json");
    let err = Gateway::from_config(GatewayConfig::from_toml(&missing).unwrap()).unwrap_err();
    assert!(err.to_string().contains("spend.prices_file"), "{err}");
}

/// A fresh directory under the target's tmp dir.
fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
