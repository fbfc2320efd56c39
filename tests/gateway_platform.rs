#![cfg(feature = "admin")]
//! The platform through a gateway's configuration and admin API, over real
//! loopback HTTP:
//!
//! * routes with `api`: a deprecated v1 (its headers) beside a v2 that
//!   needs an approved subscription, and a catalog route;
//! * a subscription's whole path through the catalog and the admin API
//!   (403, asked, 403 while pending, approved, 200, revoked, 403);
//! * team-scoped admin keys change only their team's APIs, read-only keys
//!   nothing, and `PUT /config` is for unscoped keys;
//! * lifecycle moves through the admin API and through a reload that
//!   changes `stage`;
//! * the state file: moves and subscriptions survive a restart, a corrupt
//!   file is refused with its line and column.
//!
//! Timeouts here only guard against a hang; no assertion is about speed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use switchyard::gateway::{Gateway, GatewayConfig, admin};
use switchyard::platform::lifecycle::Stage;

use crate::support::net::serve;
use crate::support::temp::TempDir;

const HANG_GUARD: Duration = Duration::from_secs(10);

/// An upstream that answers with the path it was asked for.
async fn upstream() -> SocketAddr {
    serve(Router::new().fallback(|uri: http::Uri| async move { format!("served {}", uri.path()) }))
        .await
}

fn config(up: SocketAddr, state: &Path, ledger_stage: &str) -> String {
    format!(
        r#"
[upstreams.app]
url = "http://{up}"

[platform]
state_file = "{state}"

[[api_keys]]
key = "alice-key"
id = "alice"
tenant = "shop"
[[api_keys]]
key = "bob-key"
id = "bob"
tenant = "bank"

[admin]
keys = [
  {{ key = "root-key", id = "root" }},
  {{ key = "orders-key", id = "olga", team = "team-orders" }},
  {{ key = "viewer-key", id = "vic", read_only = true }},
]

[[routes]]
name = "orders-v1"
path_prefix = "/v1/orders"
auth = {{}}
split = {{ targets = [{{ name = "app", upstream = "app", weight = 100 }}] }}
rate_limit = {{ key = "identity", quotas = [{{ limit = 30, period = "1m", burst = 5 }}] }}
[routes.api]
name = "orders"
version = "v1"
owner = "team-orders"
stage = "deprecated"
deprecated_at = 1767225600
sunset = 1798761600
successor = "/v2/orders"
subscription = "approval"

[[routes]]
name = "orders-v2"
path_prefix = "/v2/orders"
auth = {{}}
split = {{ targets = [{{ name = "app", upstream = "app", weight = 100 }}] }}
[routes.api]
name = "orders"
version = "v2"
owner = "team-orders"
description = "Orders of the shop."
stage = "published"
subscription = "approval"
limits = "100 requests per minute"

[[routes]]
name = "ledger"
path_prefix = "/v1/ledger"
auth = {{}}
split = {{ targets = [{{ name = "app", upstream = "app", weight = 100 }}] }}
[routes.api]
name = "ledger"
version = "v1"
owner = "finance"
stage = "{ledger_stage}"
visible_to = ["finance"]

[[routes]]
name = "catalog"
path_prefix = "/catalog"
auth = {{}}
catalog = true
"#,
        state = state.display()
    )
}

struct Harness {
    gateway: Gateway,
    addr: SocketAddr,
    admin: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
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

    async fn send(
        &self,
        method: Method,
        addr: SocketAddr,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("x-api-key", key);
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let (parts, body) =
            crate::support::net::exchange(&self.client, req.body(Full::new(body)).unwrap())
                .await
                .into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn get(&self, path: &str, key: &str) -> Reply {
        self.send(Method::GET, self.addr, path, key, None).await
    }

    async fn post(&self, path: &str, key: &str) -> Reply {
        self.send(Method::POST, self.addr, path, key, None).await
    }

    async fn admin_get(&self, path: &str, key: &str) -> Reply {
        self.send(Method::GET, self.admin, path, key, None).await
    }

    async fn admin_post(&self, path: &str, key: &str, body: Value) -> Reply {
        self.send(Method::POST, self.admin, path, key, Some(body))
            .await
    }
}

#[tokio::test]
async fn apis_subscriptions_and_team_keys_through_the_gateway() {
    let up = upstream().await;
    let dir = TempDir::new("gw-platform");
    let state = dir.join("state.json");
    let h = Harness::start(&config(up, &state, "draft")).await;
    let shop = json!({ "consumer": { "kind": "identity", "id": "alice", "tenant": "shop" } });

    // v2 needs a subscription: refused, with where to ask.
    let r = h.get("/v2/orders/17", "alice-key").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["code"], "subscription_required");
    assert_eq!(r.json()["request_access"], "/catalog/orders/subscription");

    // Asked for through the catalog; pending until an owner decides.
    let r = h.post("/catalog/orders/subscription", "alice-key").await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["status"], "pending");
    assert_eq!(h.get("/v2/orders/17", "alice-key").await.status, 403);

    // A read-only key cannot decide; another team's key neither... (the
    // orders team's key can).
    let r = h
        .admin_post("/subscriptions/orders/approve", "viewer-key", shop.clone())
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(r.json()["detail"].as_str().unwrap().contains("read-only"));
    let r = h
        .admin_post("/subscriptions/orders/approve", "orders-key", shop.clone())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["subscription"]["status"], "approved");
    assert_eq!(r.json()["subscription"]["decided_by"], "olga");
    let r = h.get("/v2/orders/17", "alice-key").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"served /v2/orders/17");
    // Alice's, not Bob's.
    assert_eq!(h.get("/v2/orders/17", "bob-key").await.status, 403);

    // v1 is deprecated: served to subscribers, with the lifecycle headers.
    let r = h.get("/v1/orders", "alice-key").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("deprecation"), Some("@1767225600"));
    assert_eq!(r.header("sunset"), Some("Fri, 01 Jan 2027 00:00:00 GMT"));
    assert_eq!(
        r.header("link"),
        Some(r#"</v2/orders>; rel="successor-version""#)
    );

    // The catalog: orders (v1 deprecated, v2 published), not the draft
    // ledger.
    let r = h.get("/catalog", "alice-key").await;
    assert_eq!(r.status, StatusCode::OK);
    let apis = r.json()["apis"].clone();
    assert_eq!(apis.as_array().unwrap().len(), 1);
    assert_eq!(apis[0]["name"], "orders");
    let states: Vec<&str> = apis[0]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["deprecated", "published"]);
    // Limits as configured on the API, else read off the route's limit.
    assert_eq!(
        apis[0]["versions"][0]["limits"],
        "30 requests per 1m per caller (bursts of 5)"
    );
    assert_eq!(apis[0]["versions"][1]["limits"], "100 requests per minute");
    assert_eq!(apis[0]["subscription"]["subscribed"], true);
    let doc = h
        .get("/catalog/orders/v2/openapi.json", "alice-key")
        .await
        .json();
    crate::support::openapi::assert_valid_31(&doc);
    assert!(doc["paths"]["/v2/orders"].is_object());

    // Team keys: their own APIs only; nothing global.
    let r = h
        .admin_post(
            "/apis/ledger/stage",
            "orders-key",
            json!({ "stage": "published" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("team `finance`")
    );
    let r = h
        .send(
            Method::PUT,
            h.admin,
            "/config",
            "orders-key",
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = h
        .admin_post("/splits/ledger/rollback", "orders-key", json!({}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Reads are for every admin key.
    let r = h.admin_get("/apis", "viewer-key").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["apis"].as_array().unwrap().len(), 3);

    // The orders team retires v1: 410 with the successor's link.
    let r = h
        .admin_post(
            "/apis/orders-v1/stage",
            "orders-key",
            json!({ "stage": "retired" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json()["transition"]["by"], "olga");
    let r = h.get("/v1/orders", "alice-key").await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(r.json()["successor"], "/v2/orders");
    // A move the lifecycle forbids is a conflict.
    let r = h
        .admin_post(
            "/apis/orders-v1/stage",
            "root-key",
            json!({ "stage": "published" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = h.admin_get("/apis/orders-v1", "viewer-key").await;
    assert_eq!(r.json()["stage"], "retired");
    assert_eq!(r.json()["history"][0]["by"], "olga");
    // Deprecated v1's callers were counted by identity.
    assert_eq!(r.json()["callers"]["by_identity"]["alice"], 1);

    // A reload that changes the ledger's stage moves it; the rest keeps
    // its live state (v1 stays retired though the config says deprecated).
    h.gateway
        .reload(GatewayConfig::from_toml(&config(up, &state, "published")).unwrap())
        .unwrap();
    assert_eq!(h.gateway.api("ledger").unwrap().stage(), Stage::Published);
    assert_eq!(h.gateway.api("orders-v1").unwrap().stage(), Stage::Retired);
    // GET /config shows the live stages, and sending it back changes nothing.
    let shown = h.gateway.config();
    assert_eq!(
        shown.routes[0].api.as_ref().unwrap().stage,
        Some(Stage::Retired)
    );
    h.gateway.reload(shown).unwrap();
    assert_eq!(h.gateway.api("orders-v1").unwrap().stage(), Stage::Retired);
    assert_eq!(h.get("/v2/orders/1", "alice-key").await.status, 200);

    // Subscription decisions are logged.
    let r = h.admin_get("/subscriptions/orders", "viewer-key").await;
    assert_eq!(r.json()["decisions"].as_array().unwrap().len(), 2);
    assert_eq!(r.json()["policy"], "approval");

    // Revoked: refused again.
    let r = h
        .admin_post("/subscriptions/orders/revoke", "root-key", shop.clone())
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.get("/v2/orders/1", "alice-key").await.status, 403);
    let r = h
        .admin_post("/subscriptions/orders/approve", "root-key", shop.clone())
        .await;
    assert_eq!(
        r.status,
        StatusCode::CONFLICT,
        "a revoked subscription is asked for again"
    );
    let samples = crate::gateway_e2e::parse_prometheus(&h.gateway.metrics()).unwrap();
    let refused = samples
        .iter()
        .find(|s| s.name == "switchyard_subscription_refused_total" && s.labels["api"] == "orders")
        .unwrap();
    assert_eq!(refused.value, 4.0);
}

#[tokio::test]
async fn moves_and_subscriptions_survive_a_restart() {
    let up = upstream().await;
    let dir = TempDir::new("gw-platform-restart");
    let state = dir.join("state.json");
    let text = config(up, &state, "draft");
    {
        let h = Harness::start(&text).await;
        let r = h.post("/catalog/orders/subscription", "alice-key").await;
        assert_eq!(r.status, StatusCode::CREATED);
        let shop = json!({ "consumer": { "kind": "identity", "id": "alice", "tenant": "shop" } });
        let r = h
            .admin_post("/subscriptions/orders/approve", "root-key", shop)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let r = h
            .admin_post(
                "/apis/orders-v1/stage",
                "root-key",
                json!({ "stage": "retired" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }

    // A new gateway over the same file: v1 retired, alice subscribed,
    // though the configuration says deprecated and nobody subscribed.
    let h = Harness::start(&text).await;
    assert_eq!(h.get("/v1/orders", "alice-key").await.status, 410);
    assert_eq!(h.get("/v2/orders", "alice-key").await.status, 200);
    assert_eq!(h.get("/v2/orders", "bob-key").await.status, 403);
    let r = h.admin_get("/apis/orders-v1", "root-key").await;
    assert_eq!(r.json()["history"].as_array().unwrap().len(), 1);
    // The state file cannot change on a reload.
    let moved = config(up, &dir.join("other.json"), "draft");
    let err = h
        .gateway
        .reload(GatewayConfig::from_toml(&moved).unwrap())
        .unwrap_err();
    assert_eq!(err.problems[0].at, "platform.state_file");

    // A corrupt file is refused with where it breaks, never reset.
    std::fs::write(&state, "{\n  \"lifecycle\": {\n    \"orders v1\": \n").unwrap();
    let err = Gateway::from_config(GatewayConfig::from_toml(&text).unwrap()).unwrap_err();
    assert_eq!(err.problems[0].at, "platform.state_file");
    assert!(
        err.problems[0].message.contains("line 4"),
        "{}",
        err.problems[0].message
    );
}

#[test]
fn platform_settings_are_checked() {
    let problems = |text: &str| -> Vec<(String, String)> {
        Gateway::from_config(GatewayConfig::from_toml(text).unwrap())
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| (p.at, p.message))
            .collect()
    };
    let base = r#"
[upstreams.app]
url = "http://127.0.0.1:9"
[[api_keys]]
key = "k"
id = "a"
team = "x"
"#;
    let found = problems(&format!(
        r#"{base}
[[routes]]
name = "a"
path_prefix = "/a"
split = {{ targets = [{{ name = "app", upstream = "app", weight = 100 }}] }}
api = {{ name = "orders", version = "v1", subscription = "open" }}
[[routes]]
name = "b"
path_prefix = "/b"
split = {{ targets = [{{ name = "app", upstream = "app", weight = 100 }}] }}
api = {{ name = "orders", version = "v1", successor = "bad link>" }}
[[routes]]
name = "c"
path_prefix = "/c"
catalog = true
split = {{ targets = [{{ name = "app", upstream = "app", weight = 100 }}] }}
"#
    ));
    let at: Vec<&str> = found.iter().map(|(at, _)| at.as_str()).collect();
    // The platform's state in Redis needs a `[redis]`, and is one choice.
    let found_redis = problems(&format!("{base}\n[platform]\nredis = true\n"));
    assert!(
        found_redis
            .iter()
            .any(|(at, m)| at == "platform.redis" && m.contains("no `[redis]`")),
        "{found_redis:?}"
    );
    let found_both = problems(&format!(
        "{base}\n[platform]\nredis = true\nstate_file = \"/tmp/x.json\"\n"
    ));
    assert!(
        found_both
            .iter()
            .any(|(at, m)| at == "platform" && m.contains("one of")),
        "{found_both:?}"
    );
    assert!(at.contains(&"api_keys[0]"), "{found:?}");
    assert!(at.contains(&"routes[0].api.subscription"), "{found:?}");
    assert!(at.contains(&"routes[1].api.version"), "{found:?}");
    assert!(at.contains(&"routes[2]"), "{found:?}");
}

/// A model server: its answer names the system prompt it was sent.
async fn model_server() -> SocketAddr {
    serve(Router::new().fallback(|body: Bytes| async move {
        let req: Value = serde_json::from_slice(&body).unwrap_or_default();
        let system = req["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        axum::Json(json!({
            "id": "x", "object": "chat.completion", "model": req["model"],
            "choices": [{ "index": 0, "finish_reason": "stop",
                "message": { "role": "assistant", "content": format!("[{system}]") } }],
            "usage": { "prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12 }
        }))
    }))
    .await
}

#[tokio::test]
async fn a_prompt_route_is_canaried_and_versions_are_chosen_by_header() {
    let up = upstream().await;
    let llm = model_server().await;
    let text = format!(
        r#"
[upstreams.app]
url = "http://{up}"
[upstreams.llm]
url = "http://{llm}"

[[api_keys]]
key = "alice-key"
id = "alice"
tenant = "shop"

[admin]
keys = [{{ key = "root-key", id = "root" }}]

[[routes]]
name = "orders-v2"
path_prefix = "/orders"
auth = {{}}
split = {{ targets = [{{ name = "app", upstream = "app", weight = 100 }}] }}
transform = {{ sets = [{{ name = "v", response = {{ headers = {{ add = [{{ name = "x-v", value = "2" }}] }} }} }}] }}
api = {{ name = "orders", version = "v2", stage = "published", version_header = "api-version" }}

[[routes]]
name = "orders-v1"
path_prefix = "/orders"
auth = {{}}
split = {{ targets = [{{ name = "app", upstream = "app", weight = 100 }}] }}
api = {{ name = "orders", version = "v1", stage = "published" }}

[[routes]]
name = "ai"
path_prefix = "/v1/chat"
auth = {{}}
[routes.model.catalog]
models = [{{ name = "small", upstream = "llm" }}]
aliases = [{{ name = "chat", versions = {{ "small" = 100 }} }}]
[routes.model.spend.prices.small]
input_per_million = 1000000
output_per_million = 2000000

[[routes]]
name = "summarize"
path_prefix = "/v1/prompts/summarize"
auth = {{}}
[routes.api]
name = "summarize"
version = "v1"
stage = "published"
[routes.prompt]
model_route = "ai"
sticky = "identity"
[routes.prompt.api]
name = "summarize"
path = "/v1/prompts/summarize"
alias = "chat"
mode = {{ type = "text" }}
variables = {{ text = {{ type = "string", max_length = 2000 }} }}
[[routes.prompt.api.versions]]
name = "v1"
weight = 100
messages = [
  {{ role = "system", content = "one" }},
  {{ role = "user", content = "Summarize: {{{{text}}}}" }},
]
[[routes.prompt.api.versions]]
name = "v2"
weight = 0
messages = [
  {{ role = "system", content = "two" }},
  {{ role = "user", content = "Summarize briefly: {{{{text}}}}" }},
]

[[routes]]
name = "catalog"
path_prefix = "/catalog"
auth = {{}}
catalog = true
"#
    );
    let h = Harness::start(&text).await;

    // The version header chooses v2; without it, v1 serves the same path.
    let with = h
        .send(Method::GET, h.addr, "/orders/1", "alice-key", None)
        .await;
    assert_eq!(with.header("x-v"), None);
    let mut req = Request::get(format!("http://{}/orders/1", h.addr))
        .header("x-api-key", "alice-key")
        .header("api-version", "v2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = h.client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-v"], "2");
    req = Request::get(format!("http://{}/orders/1", h.addr))
        .header("x-api-key", "alice-key")
        .header("api-version", "v9")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = h.client.request(req).await.unwrap();
    assert!(!res.headers().contains_key("x-v"));

    // The prompt API: variables in, the text of the answer out, from v1.
    let ask = |text: &str| {
        let body = json!({ "variables": { "text": text } });
        h.send(
            Method::POST,
            h.addr,
            "/v1/prompts/summarize",
            "alice-key",
            Some(body),
        )
    };
    let r = ask("a long story").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.json(), json!({ "result": "[one]" }));
    // A bad variable is a 400 naming it, in OpenAI's shape.
    let r = h
        .send(
            Method::POST,
            h.addr,
            "/v1/prompts/summarize",
            "alice-key",
            Some(json!({ "variables": { "txt": "x" } })),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["param"], "variables.txt");

    // Canary through the split admin API: promote v2, then roll back.
    let r = h
        .send(
            Method::POST,
            h.admin,
            "/splits/summarize/promote/v2",
            "root-key",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(ask("x").await.json(), json!({ "result": "[two]" }));
    let r = h
        .send(
            Method::POST,
            h.admin,
            "/splits/summarize/rollback",
            "root-key",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(ask("x").await.json(), json!({ "result": "[one]" }));
    let stats = h.gateway.split("summarize").unwrap().stats();
    let served: Vec<(String, u64)> = stats.iter().map(|s| (s.name.clone(), s.requests)).collect();
    assert_eq!(served, [("v1".to_owned(), 2), ("v2".to_owned(), 1)]);

    // As a split's: the configuration in force shows the live weights, a
    // reload with it keeps them, one with the file's applies those.
    h.gateway
        .split("summarize")
        .unwrap()
        .set_weights([("v1", 50), ("v2", 50)])
        .unwrap();
    let shown = h.gateway.config();
    let versions = &shown.routes[3].prompt.as_ref().unwrap().api.versions;
    assert_eq!((versions[0].weight, versions[1].weight), (50, 50));
    h.gateway.reload(shown).unwrap();
    let w = h.gateway.split("summarize").unwrap().weights();
    assert_eq!((w.get("v1"), w.get("v2")), (Some(50), Some(50)));
    // Counters carried over the rebuilt API.
    assert_eq!(h.gateway.split("summarize").unwrap().stats()[0].requests, 2);
    h.gateway
        .reload(GatewayConfig::from_toml(&text).unwrap())
        .unwrap();
    let w = h.gateway.split("summarize").unwrap().weights();
    assert_eq!((w.get("v1"), w.get("v2")), (Some(100), Some(0)));

    // /metrics, read by a strict parser: each version's counters and
    // tokens, the API's stage, the refusals.
    let samples = crate::gateway_e2e::parse_prometheus(&h.gateway.metrics()).unwrap();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
            .value
    };
    let v2 = [("route", "summarize"), ("target", "v2")];
    assert_eq!(value("switchyard_target_requests_total", &v2), 1.0);
    assert_eq!(
        value(
            "switchyard_prompt_tokens_total",
            &[
                ("route", "summarize"),
                ("version", "v1"),
                ("kind", "completion")
            ]
        ),
        4.0
    );
    assert_eq!(
        value("switchyard_prompt_refused_total", &[("route", "summarize")]),
        1.0
    );
    // Priced by the model route's meter: 10 prompt tokens at $1 and 2
    // completion tokens at $2 per million, 14 micro-units an answer.
    assert_eq!(
        value(
            "switchyard_prompt_cost_micros_total",
            &[("route", "summarize"), ("version", "v1")]
        ),
        28.0
    );
    assert_eq!(
        value(
            "switchyard_api_stage",
            &[("route", "summarize"), ("stage", "published")]
        ),
        1.0
    );

    // The API publishes its own document at `<path>/openapi.json`...
    let r = h
        .get("/v1/prompts/summarize/openapi.json", "alice-key")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    crate::support::openapi::assert_valid_31(&r.json());
    // ... and the catalog serves it too.
    let doc = h
        .get("/catalog/summarize/v1/openapi.json", "alice-key")
        .await
        .json();
    crate::support::openapi::assert_valid_31(&doc);
    assert!(doc["paths"]["/v1/prompts/summarize"]["post"].is_object());
}

/// The file-backed configuration of [`config`], with the platform's
/// state in the `redis-server` on `port` instead of the file, read again
/// every `refresh_ms`.
#[cfg(feature = "redis")]
fn redis_state_config(up: SocketAddr, dir: &Path, port: u16, refresh_ms: u64) -> String {
    let section = format!("[redis]\nurl = \"redis://127.0.0.1:{port}/\"");
    redis_section_state_config(up, dir, &section, refresh_ms)
}

/// [`redis_state_config`] with the `[redis]` section given whole.
#[cfg(feature = "redis")]
fn redis_section_state_config(
    up: SocketAddr,
    dir: &Path,
    section: &str,
    refresh_ms: u64,
) -> String {
    config(up, &dir.join("unused.json"), "draft")
        .replace(
            &format!("state_file = \"{}\"", dir.join("unused.json").display()),
            &format!("redis = true\nrefresh_ms = {refresh_ms}"),
        )
        .replacen("[[api_keys]]", &format!("{section}\n\n[[api_keys]]"), 1)
}

/// Polls `check` until it holds (10 s at most: a hang guard, not a speed
/// claim).
#[cfg(feature = "redis")]
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two gateways over one `redis-server`, the platform's state kept there
/// (`[platform] redis = true`): what one replica's owners decide, the
/// other serves by, within its refresh; concurrent decisions on both are
/// all kept; a third gateway started later starts where they are.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_moves_and_subscriptions_through_redis() {
    use crate::support::redis::RedisServer;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let up = upstream().await;
    let dir = TempDir::new("gw-platform-redis");
    // The file-backed configuration, with `[redis]` instead of the file.
    let text = redis_state_config(up, &dir, redis.port, 50);
    let (a, b) = (Harness::start(&text).await, Harness::start(&text).await);
    let consumer = |id: &str, tenant: &str| json!({ "consumer": { "kind": "identity", "id": id, "tenant": tenant } });

    // Asked for on A, approved on B: served by both.
    assert_eq!(
        a.post("/catalog/orders/subscription", "alice-key")
            .await
            .status,
        201
    );
    eventually("B sees alice's request", || async {
        b.admin_post(
            "/subscriptions/orders/approve",
            "root-key",
            consumer("alice", "shop"),
        )
        .await
        .status
            == StatusCode::OK
    })
    .await;
    eventually("A serves alice", || async {
        a.get("/v2/orders/1", "alice-key").await.status == StatusCode::OK
    })
    .await;
    assert_eq!(b.get("/v2/orders/1", "alice-key").await.status, 200);

    // Decisions on both at once: every one kept (each replica retries on
    // the other's change).
    let asks = ["bob", "carl", "dana", "eve"];
    for (i, id) in asks.iter().enumerate() {
        let r = if i % 2 == 0 { &a } else { &b };
        let body = json!({ "consumer": { "kind": "identity", "id": id, "tenant": "bank" } });
        // An owner asks on the consumer's behalf: a pending request made
        // by approving is refused, so ask through the registry.
        let subs = r.gateway.subscriptions();
        let consumer: switchyard::platform::subscription::Consumer =
            serde_json::from_value(body["consumer"].clone()).unwrap();
        tokio::task::spawn_blocking(move || subs.request("orders", &consumer, "ops"))
            .await
            .unwrap()
            .unwrap();
    }
    let path = "/subscriptions/orders/approve";
    let (r1, r2, r3, r4) = tokio::join!(
        a.admin_post(path, "root-key", consumer(asks[0], "bank")),
        b.admin_post(path, "root-key", consumer(asks[1], "bank")),
        a.admin_post(path, "root-key", consumer(asks[2], "bank")),
        b.admin_post(path, "root-key", consumer(asks[3], "bank")),
    );
    for r in [r1, r2, r3, r4] {
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    // Lost updates would stay lost; A's view lags by a refresh at most.
    eventually("A lists the five approved", || async {
        let listed = a
            .admin_get("/subscriptions/orders", "root-key")
            .await
            .json();
        let approved = listed["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"] == "approved")
            .count();
        approved == 5
    })
    .await;

    // A lifecycle move on B reaches A.
    let r = b
        .admin_post(
            "/apis/orders-v1/stage",
            "root-key",
            json!({ "stage": "retired" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // At once on A, whether or not A has refreshed: a move is checked
    // against what Redis holds, and retired cannot be retired again.
    let r = a
        .admin_post(
            "/apis/orders-v1/stage",
            "root-key",
            json!({ "stage": "retired" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    eventually("A serves v1 retired", || async {
        a.get("/v1/orders", "alice-key").await.status == StatusCode::GONE
    })
    .await;

    // A key added on A is taken by B within its refresh.
    let r = a
        .admin_post(
            "/keys",
            "root-key",
            json!({ "id": "dora", "tenant": "shop" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let dora = r.json()["key"].as_str().unwrap().to_owned();
    eventually("B takes dora's key", || async {
        b.get("/v2/orders/1", &dora).await.status != StatusCode::UNAUTHORIZED
    })
    .await;

    // A replica started now starts where the fleet is.
    let c = Harness::start(&text).await;
    assert_eq!(c.get("/v1/orders", "alice-key").await.status, 410);
    assert_eq!(c.get("/v2/orders/1", "alice-key").await.status, 200);
    assert_eq!(
        c.admin_get("/apis/orders-v1", "root-key").await.json()["history"][0]["to"],
        "retired"
    );
}

#[tokio::test]
async fn keys_added_and_revoked_through_the_admin_api_survive_a_restart() {
    let up = upstream().await;
    let dir = TempDir::new("gw-platform-keys");
    let state = dir.join("state.json");
    let text = config(up, &state, "published");
    let (added, bob_digest) = {
        let h = Harness::start(&text).await;
        // Only unscoped, writing admin keys manage keys.
        let new = json!({ "id": "carol", "tenant": "shop", "scopes": ["orders"] });
        let r = h.admin_post("/keys", "viewer-key", new.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let r = h.admin_post("/keys", "orders-key", new.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let r = h.admin_post("/keys", "root-key", new).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let secret = r.json()["key"].as_str().unwrap().to_owned();
        assert!(secret.starts_with("sy_") && secret.len() == 67, "{secret}");
        assert_eq!(r.json()["digest"], switchyard::auth::digest(&secret));
        // The next request knows it.
        let r = h.get("/v1/ledger", &secret).await;
        assert_eq!(r.status, StatusCode::OK);
        // Listed by digest, with its uses; never a secret.
        let r = h.admin_get("/keys", "viewer-key").await;
        let keys = r.json()["keys"].as_array().unwrap().clone();
        assert!(!String::from_utf8_lossy(&r.body).contains(&secret));
        let carol = keys.iter().find(|k| k["id"] == "carol").unwrap();
        assert_eq!(
            (carol["source"].as_str(), carol["uses"].as_u64()),
            (Some("admin"), Some(1))
        );
        let bob = keys.iter().find(|k| k["id"] == "bob").unwrap();
        assert_eq!(bob["source"], "config");
        let bob_digest = bob["digest"].as_str().unwrap().to_owned();
        // A configured key revoked: refused from the next request on.
        assert_eq!(h.get("/v1/ledger", "bob-key").await.status, 200);
        let r = h
            .send(
                Method::DELETE,
                h.admin,
                &format!("/keys/{bob_digest}"),
                "root-key",
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(h.get("/v1/ledger", "bob-key").await.status, 401);
        let r = h
            .send(
                Method::DELETE,
                h.admin,
                &format!("/keys/{bob_digest}"),
                "root-key",
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        // A reload keeps both changes.
        h.gateway
            .reload(GatewayConfig::from_toml(&text).unwrap())
            .unwrap();
        assert_eq!(h.get("/v1/ledger", &secret).await.status, 200);
        assert_eq!(h.get("/v1/ledger", "bob-key").await.status, 401);
        (secret, bob_digest)
    };

    // Restarted over the same state file: the same keys in force.
    let h = Harness::start(&text).await;
    assert_eq!(h.get("/v1/ledger", &added).await.status, 200);
    assert_eq!(h.get("/v1/ledger", "bob-key").await.status, 401);
    assert_eq!(h.get("/v1/ledger", "alice-key").await.status, 200);
    // An added key revoked is gone; a digest the caller holds the secret
    // of can be added back.
    let r = h
        .send(
            Method::DELETE,
            h.admin,
            &format!("/keys/{}", switchyard::auth::digest(&added)),
            "root-key",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.get("/v1/ledger", &added).await.status, 401);
    let r = h
        .admin_post(
            "/keys",
            "root-key",
            json!({ "id": "bob", "tenant": "bank", "digest": bob_digest }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert!(r.json().get("key").is_none(), "no secret made or shown");
    assert_eq!(h.get("/v1/ledger", "bob-key").await.status, 200);
    let r = h
        .admin_post(
            "/keys",
            "root-key",
            json!({ "id": "x", "digest": "sha256:nope" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

/// The access log, captured on this test's thread while the guard lives.
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn start() -> (Self, tracing::subscriber::DefaultGuard) {
        let log = Self::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (log, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// A gateway (`top` its top-level settings) in front of an upstream that
/// answers with the `traceparent` and `tracestate` lines it got,
/// `traceparent|tracestate`, several lines joined by commas.
struct TraceFront {
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl TraceFront {
    async fn start(top: &str) -> Self {
        let up = serve(Router::new().fallback(|headers: HeaderMap| async move {
            let all = |name: &str| {
                headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            format!("{}|{}", all("traceparent"), all("tracestate"))
        }))
        .await;
        let text = format!(
            r#"
{top}
[upstreams.app]
url = "http://{up}"
[[routes]]
name = "app"
split = {{ targets = [{{ name = "app", upstream = "app", weight = 100 }}] }}
"#
        );
        let gateway = Gateway::from_config(GatewayConfig::from_toml(&text).unwrap()).unwrap();
        Self {
            addr: serve(Router::new().fallback_service(gateway)).await,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn ask(&self, headers: &[(&str, &str)]) -> String {
        let mut req = Request::get(format!("http://{}/x", self.addr));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        let res = crate::support::net::exchange(&self.client, req).await;
        String::from_utf8(res.into_body().to_vec()).unwrap()
    }
}

/// The trace context at the edge: a caller's valid `traceparent` reaches
/// the upstream unchanged (with its `tracestate`); none, or a broken one,
/// becomes a new trace (and its `tracestate` goes); the access log names
/// the trace either way.
#[tokio::test(flavor = "current_thread")]
async fn the_trace_context_is_passed_on_or_started_and_logged() {
    use switchyard::trace::TraceParent;

    let (log, _guard) = CapturedLog::start();
    let front = TraceFront::start("").await;
    let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let got = front
        .ask(&[("traceparent", valid), ("tracestate", "acme=7")])
        .await;
    assert_eq!(got, format!("{valid}|acme=7"));

    let got = front.ask(&[]).await;
    let (sent, state) = got.split_once('|').unwrap();
    let started = TraceParent::parse(sent.as_bytes()).expect("a valid traceparent");
    assert!(!started.sampled());
    assert_eq!(state, "");

    let got = front
        .ask(&[("traceparent", "00-nonsense"), ("tracestate", "acme=7")])
        .await;
    let (sent, state) = got.split_once('|').unwrap();
    let restarted = TraceParent::parse(sent.as_bytes()).expect("a valid traceparent");
    assert_ne!(restarted, started);
    assert_eq!(state, "", "the broken context's state is dropped");

    let log = log.text();
    for id in [
        "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
        started.trace_id(),
        restarted.trace_id(),
    ] {
        assert!(
            log.contains(&format!("trace_id={id}")),
            "{id} not in\n{log}"
        );
    }
}

/// With `trace_context = false` the gateway leaves the trace context as
/// the caller sent it: none stays none, a broken one and its `tracestate`
/// go on untouched; the access log still names the trace of a valid one.
#[tokio::test(flavor = "current_thread")]
async fn the_trace_context_turned_off_is_passed_on_as_it_came() {
    let (log, _guard) = CapturedLog::start();
    let front = TraceFront::start("trace_context = false").await;
    assert_eq!(front.ask(&[]).await, "|", "none started");
    let got = front
        .ask(&[("traceparent", "00-nonsense"), ("tracestate", "acme=7")])
        .await;
    assert_eq!(got, "00-nonsense|acme=7");
    let valid = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let got = front
        .ask(&[("traceparent", valid), ("tracestate", "acme=7")])
        .await;
    assert_eq!(got, format!("{valid}|acme=7"));

    let log = log.text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("trace_id=")).collect();
    assert_eq!(lines.len(), 3, "{log}");
    assert!(lines[0].contains("trace_id=-"), "{log}");
    assert!(lines[1].contains("trace_id=-"), "{log}");
    assert!(
        lines[2].contains("trace_id=5bf92f3577b34da6a3ce929d0e0e4736"),
        "{log}"
    );
}

/// A change made on one replica is announced: the other reads the state
/// again at once, not at its next refresh (an hour away here).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hear_state_changes_when_they_are_made() {
    use crate::support::redis::RedisServer;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let section = format!("[redis]\nurl = \"redis://127.0.0.1:{}/\"", redis.port);
    hear_state_changes(&section, vec![redis.client()], "gw-platform-announced").await;
}

/// The same over a 3-primary Redis Cluster: the state's hashes on
/// whichever node owns them, the announcements heard from any node.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hear_state_changes_over_a_cluster() {
    use crate::support::redis_ha::RedisCluster;
    let Some(cluster) = RedisCluster::start().await else {
        return;
    };
    let urls = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let section = format!("[redis]\ncluster = [{urls}]");
    let nodes = (0..3).map(|i| cluster.client(i)).collect();
    hear_state_changes(&section, nodes, "gw-platform-announced-cluster").await;
}

/// The same through Redis Sentinel: the state read and written on the
/// primary the sentinels name (blocking connections), the announcements
/// heard from it.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_hear_state_changes_through_sentinel() {
    use crate::support::redis_ha::RedisSentinel;
    let Some(ha) = RedisSentinel::start().await else {
        return;
    };
    let urls = ha
        .sentinel_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let section = format!(
        "[redis]\nsentinel = {{ master = \"{}\", urls = [{urls}] }}",
        ha.master_name()
    );
    let primary = redis::Client::open(format!("redis://127.0.0.1:{}/", ha.primary_port())).unwrap();
    hear_state_changes(&section, vec![primary], "gw-platform-announced-sentinel").await;
}

/// Two replicas over `[redis]` as `section` (whose servers are `nodes`),
/// refreshing once an hour: a subscription asked for on A is approved on
/// B and served on A, carried by the announcements alone.
#[cfg(feature = "redis")]
async fn hear_state_changes(section: &str, nodes: Vec<redis::Client>, name: &str) {
    let up = upstream().await;
    let dir = TempDir::new(name);
    let text = redis_section_state_config(up, &dir, section, 3_600_000);
    let (a, b) = (Harness::start(&text).await, Harness::start(&text).await);
    // Both replicas listen to the announcements before anything changes
    // (an hour's refresh would not make up for one that did not); on a
    // cluster each node counts its own listeners.
    let mut conns = Vec::new();
    for node in &nodes {
        conns.push(node.get_multiplexed_async_connection().await.unwrap());
    }
    eventually("both replicas subscribed", || {
        let conns = conns.clone();
        async move {
            let mut n = 0;
            for mut conn in conns {
                let (_, here): (String, i64) = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg("switchyard:state:changes")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                n += here;
            }
            n == 2
        }
    })
    .await;
    assert_eq!(
        a.post("/catalog/orders/subscription", "alice-key")
            .await
            .status,
        201
    );
    let alice = json!({ "consumer": { "kind": "identity", "id": "alice", "tenant": "shop" } });
    eventually("B heard of alice's request", || async {
        b.admin_post("/subscriptions/orders/approve", "root-key", alice.clone())
            .await
            .status
            == StatusCode::OK
    })
    .await;
    eventually("A heard of the approval", || async {
        a.get("/v2/orders/1", "alice-key").await.status == StatusCode::OK
    })
    .await;
}
