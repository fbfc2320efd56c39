#![cfg(feature = "json")]
//! Prompt APIs over real sockets: a stand-in model server (axum on
//! `127.0.0.1:0`, answering OpenAI chat completions), a `ModelRouter`
//! reaching it through `proxy::Upstream`, and prompt APIs in front of the
//! router, served on another loopback port and called with a real hyper
//! client.
//!
//! The model echoes what it was sent (`{"model", "system", "user"}` as
//! its text), so a test can tell which template version served a request
//! and what the caller's values became. `[plain]` in the user message
//! makes it answer prose, `[partial]` a JSON object missing a property.
//!
//! * every kind of bad variable is a 400 naming it; 413, 415, `stream`;
//! * text mode, JSON mode, and JSON mode's 502 when the model answers
//!   something else;
//! * a prompt canary: a sticky share on v2, counted per version, promoted,
//!   rolled back, the answers following.
//!
//! Timeouts only guard against a hang; no assertion is about speed.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use switchyard::key::KeyBy;
use switchyard::model::{Alias, Catalog, Model, ModelRouter};
use switchyard::platform::prompt::{
    JsonType, ObjectSchema, PromptApi, PromptApiConfig, PromptHandle, PropertySchema, ResponseMode,
    Variable, VersionConfig,
};
use switchyard::proxy::Upstream;

use crate::support::net;
use crate::support::openapi;

const VERSION_HEADER: HeaderName = HeaderName::from_static("x-prompt-version");

// === the model server ===

/// Answers a chat completion whose text echoes the request, with a usage
/// of 5 + 2 tokens.
async fn complete(body: Bytes) -> axum::Json<Value> {
    let request: Value = serde_json::from_slice(&body).expect("the prompt API sent bad JSON");
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let content_of = |role: &str| {
        messages
            .iter()
            .filter(|m| m["role"] == role)
            .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (system, user) = (content_of("system"), content_of("user"));
    let text = if user.contains("[plain]") {
        "It will be sunny.".to_owned()
    } else if user.contains("[partial]") {
        json!({ "system": system }).to_string()
    } else {
        json!({
            "model": request["model"],
            "system": system,
            "user": user,
            "messages": messages.len(),
            "response_format": request["response_format"],
            "temperature": request["temperature"],
        })
        .to_string()
    };
    axum::Json(json!({
        "id": "chatcmpl-e2e",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": request["model"],
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text },
            "finish_reason": "stop"
        }],
        "usage": { "prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7 }
    }))
}

async fn model_server() -> SocketAddr {
    net::serve(Router::new().route("/v1/chat/completions", post(complete))).await
}

/// A router with the alias `chat` on the model server's `echo-1`.
fn router(model: SocketAddr) -> ModelRouter<Upstream> {
    ModelRouter::builder()
        .upstream("model", Upstream::new(&format!("http://{model}")).unwrap())
        .catalog(
            Catalog::new()
                .model(Model::new("echo-1", "model"))
                .alias(Alias::new("chat", [("echo-1", 100)])),
        )
        .build()
        .unwrap()
}

// === the prompt APIs ===

fn forecast_version(name: &str, weight: u32) -> VersionConfig {
    VersionConfig::new(name, weight)
        .system(format!("You are forecaster {name}. Answer in JSON."))
        .user("Forecast for {{city}} over {{days}} days, in {{unit}}.")
}

fn forecast(name: &str, path: &str, mode: ResponseMode) -> PromptApiConfig {
    PromptApiConfig::new(name, path, "chat")
        .variable("city", Variable::string().max_length(40))
        .variable("days", Variable::integer())
        .variable(
            "unit",
            Variable::string()
                .one_of(["celsius", "fahrenheit"])
                .default_value("celsius"),
        )
        .param("temperature", 0.1)
        .mode(mode)
        .body_limit(1024)
}

struct Apis {
    addr: SocketAddr,
    text: PromptHandle,
    json: PromptHandle,
    canary: PromptHandle,
}

/// Three prompt APIs over one router: `/text` (text mode), `/json` (JSON
/// mode) and `/canary` (text mode, versions v1 at 100 and v2 at 0, sticky
/// by `x-user`, the serving version echoed in `x-prompt-version`).
async fn serve() -> Apis {
    let models = router(model_server().await);
    let text = PromptApi::builder(
        forecast("text", "/text", ResponseMode::Text).version(forecast_version("v1", 100)),
        models.clone(),
    )
    .build()
    .unwrap();
    let schema = ObjectSchema::new()
        .required("system", PropertySchema::new(JsonType::String))
        .required("user", PropertySchema::new(JsonType::String))
        .optional("messages", PropertySchema::new(JsonType::Integer));
    let json = PromptApi::builder(
        forecast("json", "/json", ResponseMode::Json { schema })
            .version(forecast_version("v1", 100)),
        models.clone(),
    )
    .build()
    .unwrap();
    let canary = PromptApi::builder(
        forecast("canary", "/canary", ResponseMode::Text)
            .version(forecast_version("v1", 100))
            .version(forecast_version("v2", 0)),
        models,
    )
    .sticky(KeyBy::header(HeaderName::from_static("x-user")))
    .echo_header(VERSION_HEADER)
    .seed(7)
    .build()
    .unwrap();
    let handles = (text.handle(), json.handle(), canary.handle());
    let app = Router::new()
        .route_service("/text", text)
        .route_service("/json", json)
        .route_service("/canary", canary);
    Apis {
        addr: net::serve(app).await,
        text: handles.0,
        json: handles.1,
        canary: handles.2,
    }
}

// === the client ===

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// The `error` of an OpenAI-shaped error answer.
    fn error(&self) -> Value {
        assert_eq!(self.headers["content-type"], "application/json");
        self.json()["error"].clone()
    }

    /// What the echoing model saw, from a text-mode answer.
    fn echoed(&self) -> Value {
        assert_eq!(self.status, StatusCode::OK, "{:?}", self.body);
        let result = self.json()["result"]
            .as_str()
            .expect("a text result")
            .to_owned();
        serde_json::from_str(&result).unwrap()
    }
}

async fn send(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", content_type);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    let (parts, body) = crate::support::net::exchange(client, req)
        .await
        .into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn ask(client: &HttpClient, addr: SocketAddr, path: &str, body: Value) -> Reply {
    send(
        client,
        addr,
        path,
        "application/json",
        &[],
        &body.to_string(),
    )
    .await
}

async fn ask_as(client: &HttpClient, addr: SocketAddr, user: &str, city: &str) -> Reply {
    let body = json!({ "variables": { "city": city, "days": 2 } }).to_string();
    send(
        client,
        addr,
        "/canary",
        "application/json",
        &[("x-user", user)],
        &body,
    )
    .await
}

// === tests ===

#[tokio::test]
async fn each_bad_variable_is_a_400_naming_it() {
    let apis = serve().await;
    let client = client();
    let cases = [
        (
            json!({ "variables": { "days": 2 } }),
            "missing_variable",
            "variables.city",
        ),
        (
            json!({ "variables": { "city": "Oslo", "days": 2, "town": "Bergen" } }),
            "unknown_variable",
            "variables.town",
        ),
        (
            json!({ "variables": { "city": "x".repeat(41), "days": 2 } }),
            "variable_too_long",
            "variables.city",
        ),
        (
            json!({ "variables": { "city": "Oslo", "days": "two" } }),
            "invalid_variable_type",
            "variables.days",
        ),
        (
            json!({ "variables": { "city": 7, "days": 2 } }),
            "invalid_variable_type",
            "variables.city",
        ),
        (
            json!({ "variables": { "city": "Oslo", "days": 2, "unit": "kelvin" } }),
            "invalid_variable_value",
            "variables.unit",
        ),
        (
            json!({ "variables": { "city": "Oslo", "days": 2 }, "stream": true }),
            "stream_unsupported",
            "stream",
        ),
        (
            json!({ "variables": { "city": "Oslo", "days": 2 }, "model": "gpt-4o" }),
            "unknown_parameter",
            "model",
        ),
        (
            json!({ "variables": { "city": "Oslo", "days": 2 }, "messages": [] }),
            "unknown_parameter",
            "messages",
        ),
    ];
    for (body, code, param) in &cases {
        let r = ask(&client, apis.addr, "/text", body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let error = r.error();
        assert_eq!(error["code"], *code, "{body}");
        assert_eq!(error["param"], *param, "{body}");
        assert_eq!(error["type"], "invalid_request_error");
        let name = param.trim_start_matches("variables.");
        assert!(error["message"].as_str().unwrap().contains(name), "{error}");
    }

    let r = send(
        &client,
        apis.addr,
        "/text",
        "application/json",
        &[],
        "{\"variables\": ",
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error()["code"], "invalid_json");

    let r = send(&client, apis.addr, "/text", "text/plain", &[], "{}").await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.error()["code"], "unsupported_media_type");

    let big = json!({ "variables": { "city": "x".repeat(2000), "days": 2 } });
    let r = ask(&client, apis.addr, "/text", big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.error()["code"], "request_too_large");

    let stats = apis.text.stats();
    assert_eq!(stats.refused, cases.len() as u64 + 3);
    assert_eq!(stats.versions[0].split.requests, 0, "no version saw them");
}

#[tokio::test]
async fn text_mode_answers_the_models_text() {
    let apis = serve().await;
    let client = client();
    let r = ask(
        &client,
        apis.addr,
        "/text",
        json!({ "variables": { "city": "Oslo \"{{days}}\"", "days": 3 } }),
    )
    .await;
    let seen = r.echoed();
    // The router put its version's name in place of the alias.
    assert_eq!(seen["model"], "echo-1");
    assert_eq!(seen["system"], "You are forecaster v1. Answer in JSON.");
    assert_eq!(
        seen["user"],
        "Forecast for Oslo \"{{days}}\" over 3 days, in celsius."
    );
    assert_eq!(seen["messages"], 2);
    assert_eq!(seen["temperature"], 0.1);
    assert_eq!(seen["response_format"], Value::Null);

    let v1 = apis.text.version_stats("v1").unwrap();
    assert_eq!((v1.split.requests, v1.split.responses.success), (1, 1));
    assert_eq!((v1.prompt_tokens, v1.completion_tokens), (5, 2));
}

#[tokio::test]
async fn json_mode_answers_the_object_or_a_502() {
    let apis = serve().await;
    let client = client();
    let r = ask(
        &client,
        apis.addr,
        "/json",
        json!({ "variables": { "city": "Oslo", "days": 1, "unit": "fahrenheit" } }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let answer = r.json();
    assert_eq!(answer["system"], "You are forecaster v1. Answer in JSON.");
    assert_eq!(
        answer["user"],
        "Forecast for Oslo over 1 days, in fahrenheit."
    );
    assert_eq!(answer["response_format"], json!({ "type": "json_object" }));

    for (city, reason) in [
        ("[plain]", "not valid JSON"),
        ("[partial]", "property `user` is missing"),
    ] {
        let r = ask(
            &client,
            apis.addr,
            "/json",
            json!({ "variables": { "city": city, "days": 1 } }),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        let error = r.error();
        assert_eq!(error["code"], "invalid_answer");
        assert_eq!(error["type"], "server_error");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(reason), "{message}");
    }
    let v1 = apis.json.version_stats("v1").unwrap();
    assert_eq!(v1.split.requests, 3);
    assert_eq!(v1.split.responses.success, 1);
    assert_eq!(v1.split.responses.server_error, 2);
    assert_eq!(v1.invalid_answers, 2);
}

#[tokio::test]
async fn a_prompt_canary_is_promoted_and_rolled_back() {
    let apis = serve().await;
    let client = client();
    let handle = &apis.canary;
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();

    // Which version serves each user: the echo header and the system
    // prompt the model got must agree.
    let round = || async {
        let mut served = Vec::new();
        for user in &users {
            let r = ask_as(&client, apis.addr, user, "Oslo").await;
            let version = r.headers[&VERSION_HEADER].to_str().unwrap().to_owned();
            let system = r.echoed()["system"].as_str().unwrap().to_owned();
            assert_eq!(
                system,
                format!("You are forecaster {version}. Answer in JSON.")
            );
            served.push(version);
        }
        served
    };

    // Everyone on v1.
    assert!(round().await.iter().all(|v| v == "v1"));

    // Canary: a sticky share of users on v2.
    handle.set_weights([("v1", 70), ("v2", 30)]).unwrap();
    let canary = round().await;
    let on_v2 = canary.iter().filter(|v| *v == "v2").count();
    assert!(
        on_v2 > 0 && on_v2 < users.len(),
        "{on_v2} of {} on v2",
        users.len()
    );
    // Sticky: the same users again, the same versions.
    assert_eq!(round().await, canary);

    let stats = handle.stats();
    let (v1, v2) = (&stats.versions[0], &stats.versions[1]);
    assert_eq!(v2.split.name, "v2");
    assert_eq!(v2.split.requests, 2 * on_v2 as u64);
    assert_eq!(v1.split.requests, (3 * users.len() - 2 * on_v2) as u64);
    assert_eq!(v2.prompt_tokens, 5 * 2 * on_v2 as u64);
    assert_eq!(v2.split.responses.success, v2.split.requests);
    assert_eq!(stats.refused, 0);

    // Promote: everyone on v2.
    handle.promote("v2").unwrap();
    assert!(round().await.iter().all(|v| v == "v2"));

    // Roll back: the canary's users, exactly, are on v2 again...
    handle.rollback().unwrap();
    assert_eq!(round().await, canary);
    // ... and once more: everyone back on v1.
    handle.rollback().unwrap();
    assert_eq!(handle.split().weights().get("v2"), Some(0));
    assert!(round().await.iter().all(|v| v == "v1"));
}

#[tokio::test]
async fn the_openapi_document_describes_the_api() {
    let apis = serve().await;
    let doc = apis.json.openapi();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "json");
    let op = &doc["paths"]["/json"]["post"];
    let variables =
        &op["requestBody"]["content"]["application/json"]["schema"]["properties"]["variables"];
    assert_eq!(variables["required"], json!(["city", "days"]));
    assert_eq!(variables["properties"]["city"]["maxLength"], 40);
    assert_eq!(
        op["responses"]["200"]["content"]["application/json"]["schema"]["required"],
        json!(["system", "user"])
    );
    let text = apis.text.openapi();
    let ok = &text["paths"]["/text"]["post"]["responses"]["200"];
    assert_eq!(
        ok["content"]["application/json"]["schema"]["required"],
        json!(["result"])
    );
    // And a validator that is not ours agrees (skipped without its venv).
    for doc in [&doc, &text, &apis.canary.openapi()] {
        openapi::assert_valid_31(doc);
    }
}
