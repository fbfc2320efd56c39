#![cfg(feature = "json")]
//! One AI API over every provider, end to end over loopback HTTP: three
//! stand-in providers speaking their real wire formats
//! (`support/providers.rs`: OpenAI Chat Completions, Anthropic Messages,
//! Gemini `generateContent`), a [`ModelRouter`] in front of them with
//! [`Upstream`] proxies, each provider with its own key, served by
//! `switchyard::server`; and clients speaking OpenAI Chat Completions or
//! Anthropic Messages: a plain hyper client here, and the official Python
//! SDKs (`tests/sdk/*.py`, run with `target/sdk-venv`, which
//! `.ci/sdk-venv` creates).
//!
//! The catalog: `gpt-4o-mini` on OpenAI, `claude-sonnet` on Anthropic
//! (`claude-sonnet-4-5` there), `gemini-flash` on Gemini
//! (`gemini-2.5-flash` there), and the alias `chat`, all on
//! `claude-sonnet`, falling back to `gemini-flash`. Tests name a version
//! to be deterministic, or the alias to see the fallback.
//!
//! Timeouts only guard against a hang; no assertion is about speed.

use crate::support::providers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use providers::{
    ANTHROPIC_USAGE, AnthropicServer, GEMINI_USAGE, GeminiServer, OPENAI_USAGE, OpenAiServer,
    StandIn, THOUGHT, THOUGHT_ANSWER, Tokens, reply_text, think_usage,
};
use serde_json::{Value, json};
use switchyard::model::providers::Protocol;
use switchyard::model::{
    Alias, Catalog, ClientApi, KeySource, Model, ModelHandle, ModelRouter, Provider, UsageRecord,
};
use switchyard::proxy::Upstream;
use switchyard::server::Server;

const OPENAI_KEY: &str = "sk-openai-standin-key";
const ANTHROPIC_KEY: &str = "sk-ant-standin-key";
const GEMINI_KEY: &str = "AIza-gemini-standin-key";
/// What callers send the gateway; it must never reach a provider.
const CALLER_KEY: &str = "sk-gateway-caller-key";

const HANG_GUARD: Duration = Duration::from_secs(15);

// === the gateway ===

struct Gateway {
    addr: SocketAddr,
    openai: StandIn,
    anthropic: StandIn,
    gemini: StandIn,
    handle: ModelHandle,
    usage: Arc<Mutex<Vec<UsageRecord>>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// The three stand-ins, and a router over them on a free loopback port.
async fn gateway() -> Gateway {
    let openai = OpenAiServer::start(OPENAI_KEY).await;
    let anthropic = AnthropicServer::start(ANTHROPIC_KEY).await;
    let gemini = GeminiServer::start(GEMINI_KEY).await;
    let upstream = |s: &StandIn| {
        Upstream::builder(&s.url())
            .response_timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let usage: Arc<Mutex<Vec<UsageRecord>>> = Arc::default();
    let hook = usage.clone();
    let router = ModelRouter::builder()
        .upstream("openai", upstream(&openai))
        .upstream("anthropic", upstream(&anthropic))
        .upstream("gemini", upstream(&gemini))
        .provider(
            "openai",
            Provider::new(Protocol::OpenAi).key(KeySource::Value(OPENAI_KEY.into())),
        )
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
                .model(Model::new("gpt-4o-mini", "openai"))
                .model(Model::new("claude-sonnet", "anthropic").upstream_model("claude-sonnet-4-5"))
                .model(Model::new("gemini-flash", "gemini").upstream_model("gemini-2.5-flash"))
                .alias(
                    Alias::new(
                        "chat",
                        [
                            ("claude-sonnet", 100),
                            ("gpt-4o-mini", 0),
                            ("gemini-flash", 0),
                        ],
                    )
                    .fallback("gemini-flash"),
                )
                .allow_version_header(true),
        )
        .on_usage(move |r: &UsageRecord| hook.lock().unwrap().push(r.clone()))
        .build()
        .unwrap();
    let handle = router.handle();
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(router));
    Gateway {
        addr,
        openai,
        anthropic,
        gemini,
        handle,
        usage,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

/// A response, read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn is_event_stream(&self) -> bool {
        self.headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"))
    }

    /// The `x-switchyard-model` header.
    fn version(&self) -> &str {
        self.headers
            .get("x-switchyard-model")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl Gateway {
    async fn post(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Answer {
        let mut req = Request::post(format!("http://{}{path}", self.addr))
            .header(CONTENT_TYPE, "application/json");
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req
            .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())))
            .unwrap();
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
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// An OpenAI Chat Completions request, with the weather tool offered.
    async fn chat(&self, model: &str, text: &str, stream: bool) -> Answer {
        self.chat_with(model, text, stream, &[]).await
    }

    async fn chat_with(
        &self,
        model: &str,
        text: &str,
        stream: bool,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut body = json!({
            "model": model,
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": text},
            ],
            "max_tokens": 256,
            "tools": [{"type": "function", "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]},
            }}],
        });
        if stream {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
        }
        let auth = format!("Bearer {CALLER_KEY}");
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        self.post("/v1/chat/completions", &all, &body).await
    }

    /// An Anthropic Messages request, with the weather tool offered.
    async fn messages(&self, model: &str, text: &str, stream: bool) -> Answer {
        let mut body = json!({
            "model": model,
            "max_tokens": 256,
            "system": "You are terse.",
            "messages": [{"role": "user", "content": text}],
            "tools": [{
                "name": "get_weather",
                "description": "The weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                 "required": ["city"]},
            }],
        });
        if stream {
            body["stream"] = json!(true);
        }
        let headers = [
            ("x-api-key", CALLER_KEY),
            ("anthropic-version", "2023-06-01"),
        ];
        self.post("/v1/messages", &headers, &body).await
    }

    /// Waits for `n` usage records (a record is made when the body ends,
    /// a moment after the client has read it).
    async fn usage_records(&self, n: usize) -> Vec<UsageRecord> {
        let wait = async {
            loop {
                let records = self.usage.lock().unwrap().clone();
                if records.len() >= n {
                    return records;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        match tokio::time::timeout(Duration::from_secs(3), wait).await {
            Ok(records) => records,
            Err(_) => {
                let records = self.usage.lock().unwrap().clone();
                panic!(
                    "waited for {n} usage records, got {}: {records:#?}",
                    records.len()
                )
            }
        }
    }

    fn stand_in(&self, provider: &str) -> &StandIn {
        match provider {
            "openai" => &self.openai,
            "anthropic" => &self.anthropic,
            _ => &self.gemini,
        }
    }
}

// === reading answers ===

/// A tool call as the client sees it.
#[derive(Debug, Clone, PartialEq)]
struct ToolCall {
    id: String,
    name: String,
    arguments: Value,
}

/// An OpenAI chat answer, JSON or streamed, put together.
#[derive(Debug)]
struct Chat {
    content: String,
    tool_calls: Vec<ToolCall>,
    finish_reason: String,
    usage: Value,
}

fn parse_arguments(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("tool arguments {text:?}: {e}"))
}

/// Reads a `chat.completion`, or a stream of `chat.completion.chunk`s,
/// checking the stream's shape on the way: `data:` events only, tool-call
/// indexes 0, 1, ... in order of first appearance with the id and name on
/// the first delta of each, `[DONE]` last.
fn read_chat(answer: &Answer) -> Chat {
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "chat answer: {}",
        answer.text()
    );
    if !answer.is_event_stream() {
        let doc = answer.json();
        assert_eq!(doc["object"], "chat.completion", "{doc}");
        let choice = &doc["choices"][0];
        let message = &choice["message"];
        assert_eq!(message["role"], "assistant", "{doc}");
        let tool_calls = message["tool_calls"]
            .as_array()
            .map(|calls| {
                calls
                    .iter()
                    .map(|c| {
                        assert_eq!(c["type"], "function", "{c}");
                        ToolCall {
                            id: c["id"].as_str().expect("tool call id").to_owned(),
                            name: c["function"]["name"].as_str().unwrap().to_owned(),
                            arguments: parse_arguments(
                                c["function"]["arguments"]
                                    .as_str()
                                    .expect("arguments are a JSON string"),
                            ),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        return Chat {
            content: message["content"].as_str().unwrap_or("").to_owned(),
            tool_calls,
            finish_reason: choice["finish_reason"].as_str().unwrap_or("").to_owned(),
            usage: doc["usage"].clone(),
        };
    }

    let text = answer.text().replace("\r\n", "\n");
    let mut content = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish_reason = String::new();
    let mut usage = Value::Null;
    let mut done = false;
    for event in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
        assert!(!done, "an event after [DONE]: {event:?}\n{text}");
        let data: String = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            event
                .lines()
                .all(|l| l.starts_with("data:") || l.starts_with(':')),
            "an OpenAI stream has data lines only: {event:?}"
        );
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("chunk is not JSON ({e}): {data}"));
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        if !chunk["usage"].is_null() {
            usage = chunk["usage"].clone();
        }
        for choice in chunk["choices"].as_array().into_iter().flatten() {
            let delta = &choice["delta"];
            if let Some(piece) = delta["content"].as_str() {
                content.push_str(piece);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let index = call["index"]
                    .as_u64()
                    .expect("tool call delta has an index") as usize;
                assert!(
                    index <= calls.len(),
                    "tool call index {index} skips one (seen {}): {chunk}",
                    calls.len()
                );
                if index == calls.len() {
                    assert!(
                        index == 0 || calls.len() == index,
                        "tool call indexes are not contiguous: {chunk}"
                    );
                    calls.push((
                        call["id"]
                            .as_str()
                            .unwrap_or_else(|| panic!("first delta of a call has its id: {chunk}"))
                            .to_owned(),
                        call["function"]["name"]
                            .as_str()
                            .unwrap_or_else(|| {
                                panic!("first delta of a call has its name: {chunk}")
                            })
                            .to_owned(),
                        String::new(),
                    ));
                }
                if let Some(args) = call["function"]["arguments"].as_str() {
                    calls[index].2.push_str(args);
                }
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finish_reason = f.to_owned();
            }
        }
    }
    assert!(done, "the stream ends with data: [DONE]\n{text}");
    Chat {
        content,
        tool_calls: calls
            .into_iter()
            .map(|(id, name, args)| ToolCall {
                id,
                name,
                arguments: parse_arguments(&args),
            })
            .collect(),
        finish_reason,
        usage,
    }
}

/// An Anthropic message, JSON or streamed, put together.
#[derive(Debug)]
struct Message {
    /// `(type, text or tool input)` per content block.
    blocks: Vec<Value>,
    stop_reason: String,
    usage: Value,
}

impl Message {
    fn text(&self) -> String {
        self.blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect()
    }

    fn tool_uses(&self) -> Vec<ToolCall> {
        self.blocks
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .map(|b| ToolCall {
                id: b["id"].as_str().unwrap_or("").to_owned(),
                name: b["name"].as_str().unwrap_or("").to_owned(),
                arguments: b["input"].clone(),
            })
            .collect()
    }
}

/// Reads a `message`, or its stream of named events, checking the
/// stream's grammar: `message_start` first, each block opened, filled and
/// closed with contiguous indexes, `message_delta` with the stop reason,
/// `message_stop` last; `event:` names equal the data's `type`.
fn read_message(answer: &Answer) -> Message {
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "messages answer: {}",
        answer.text()
    );
    if !answer.is_event_stream() {
        let doc = answer.json();
        assert_eq!(doc["type"], "message", "{doc}");
        assert_eq!(doc["role"], "assistant", "{doc}");
        return Message {
            blocks: doc["content"].as_array().cloned().unwrap_or_default(),
            stop_reason: doc["stop_reason"].as_str().unwrap_or("").to_owned(),
            usage: doc["usage"].clone(),
        };
    }
    let text = answer.text().replace("\r\n", "\n");
    let mut blocks: Vec<Value> = Vec::new();
    let mut partial_json: Vec<String> = Vec::new();
    let mut open: Option<usize> = None;
    let mut stop_reason = String::new();
    let mut usage = Value::Null;
    let mut stage = "start";
    for event in text.split("\n\n").filter(|e| !e.trim().is_empty()) {
        let name = event
            .lines()
            .find_map(|l| l.strip_prefix("event:"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("an Anthropic event has an event: line: {event:?}"));
        let data: String = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .collect();
        let data: Value = serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("event data is not JSON ({e}): {event:?}"));
        assert_eq!(data["type"], name, "event name and type differ: {event:?}");
        match name {
            "message_start" => {
                assert_eq!(stage, "start", "message_start comes first:\n{text}");
                stage = "blocks";
                usage = data["message"]["usage"].clone();
            }
            "ping" => {}
            "content_block_start" => {
                assert_eq!(stage, "blocks", "{event:?}");
                assert!(
                    open.is_none(),
                    "a block opens before the last closed:\n{text}"
                );
                let index = data["index"].as_u64().unwrap() as usize;
                assert_eq!(index, blocks.len(), "block indexes are contiguous:\n{text}");
                blocks.push(data["content_block"].clone());
                partial_json.push(String::new());
                open = Some(index);
            }
            "content_block_delta" => {
                let index = data["index"].as_u64().unwrap() as usize;
                assert_eq!(
                    Some(index),
                    open,
                    "a delta for a block that is not open:\n{text}"
                );
                let delta = &data["delta"];
                let block = &mut blocks[index];
                match delta["type"].as_str().unwrap_or("") {
                    "text_delta" => {
                        let mut t = block["text"].as_str().unwrap_or("").to_owned();
                        t.push_str(delta["text"].as_str().unwrap());
                        block["text"] = json!(t);
                    }
                    "input_json_delta" => {
                        partial_json[index].push_str(delta["partial_json"].as_str().unwrap());
                    }
                    "thinking_delta" => {
                        let mut t = block["thinking"].as_str().unwrap_or("").to_owned();
                        t.push_str(delta["thinking"].as_str().unwrap());
                        block["thinking"] = json!(t);
                    }
                    "signature_delta" => block["signature"] = delta["signature"].clone(),
                    other => panic!("unknown delta type {other}: {event:?}"),
                }
            }
            "content_block_stop" => {
                let index = data["index"].as_u64().unwrap() as usize;
                assert_eq!(
                    Some(index),
                    open,
                    "closing a block that is not open:\n{text}"
                );
                if blocks[index]["type"] == "tool_use" && !partial_json[index].is_empty() {
                    blocks[index]["input"] = parse_arguments(&partial_json[index]);
                }
                open = None;
            }
            "message_delta" => {
                assert!(open.is_none(), "message_delta with a block open:\n{text}");
                stage = "delta";
                stop_reason = data["delta"]["stop_reason"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                for (k, v) in data["usage"].as_object().into_iter().flatten() {
                    if !v.is_null() {
                        usage[k] = v.clone();
                    }
                }
            }
            "message_stop" => {
                assert_eq!(stage, "delta", "message_stop after message_delta:\n{text}");
                stage = "stop";
            }
            "error" => panic!("an error event: {event:?}"),
            other => panic!("unknown event {other}: {event:?}"),
        }
    }
    assert_eq!(stage, "stop", "the stream ends with message_stop:\n{text}");
    Message {
        blocks,
        stop_reason,
        usage,
    }
}

fn tokens(usage: &switchyard::model::providers::Usage) -> Tokens {
    Tokens {
        input: usage.input,
        cached_read: usage.cached_read,
        cache_write: usage.cache_write,
        output: usage.output,
        reasoning: usage.reasoning,
    }
}

fn usage_of(provider: &str) -> Tokens {
    match provider {
        "openai" => OPENAI_USAGE,
        "anthropic" => ANTHROPIC_USAGE,
        _ => GEMINI_USAGE,
    }
}

/// The tool calls each stand-in makes for "weather".
fn expected_calls(provider: &str) -> Vec<(&'static str, Value)> {
    let paris = ("get_weather", json!({"city": "Paris"}));
    match provider {
        "gemini" => vec![paris, ("get_weather", json!({"city": "Tokyo"}))],
        _ => vec![paris],
    }
}

/// An OpenAI usage object holds the provider's counts: prompt tokens
/// with the cached ones, completion tokens with reasoning.
fn assert_openai_usage(usage: &Value, want: Tokens) {
    assert_eq!(usage["prompt_tokens"], want.input, "usage: {usage}");
    assert_eq!(usage["completion_tokens"], want.output, "usage: {usage}");
    assert_eq!(
        usage["total_tokens"],
        want.input + want.output,
        "usage: {usage}"
    );
    if want.cached_read > 0 {
        assert_eq!(
            usage["prompt_tokens_details"]["cached_tokens"], want.cached_read,
            "usage: {usage}"
        );
    }
    if want.reasoning > 0 {
        assert_eq!(
            usage["completion_tokens_details"]["reasoning_tokens"], want.reasoning,
            "usage: {usage}"
        );
    }
}

/// An Anthropic usage object: `input_tokens` are the uncached ones.
fn assert_anthropic_usage(usage: &Value, want: Tokens) {
    let n = |k: &str| usage[k].as_u64().unwrap_or(0);
    assert_eq!(n("output_tokens"), want.output, "usage: {usage}");
    assert_eq!(
        n("input_tokens") + n("cache_read_input_tokens") + n("cache_creation_input_tokens"),
        want.input,
        "usage: {usage}"
    );
    assert_eq!(
        n("cache_read_input_tokens"),
        want.cached_read,
        "usage: {usage}"
    );
}

// === an OpenAI Chat client, over each provider ===

async fn chat_text(provider: &str, model: &str, stream: bool) {
    let gw = gateway().await;
    let answer = gw.chat(model, "hello there", stream).await;
    assert_eq!(answer.version(), model);
    assert_eq!(answer.is_event_stream(), stream, "{}", answer.text());
    let chat = read_chat(&answer);
    assert_eq!(chat.content, reply_text(provider));
    assert!(chat.tool_calls.is_empty(), "{chat:?}");
    assert_eq!(chat.finish_reason, "stop");
    assert_openai_usage(&chat.usage, usage_of(provider));
    assert_eq!(gw.stand_in(provider).requests().len(), 1);
}

async fn chat_tool_call(provider: &str, model: &str, stream: bool) {
    let gw = gateway().await;
    let chat = read_chat(
        &gw.chat(model, "what is the weather in Paris?", stream)
            .await,
    );
    let calls: Vec<(&str, Value)> = chat
        .tool_calls
        .iter()
        .map(|c| (c.name.as_str(), c.arguments.clone()))
        .collect();
    assert_eq!(calls, expected_calls(provider), "{chat:?}");
    let mut ids: Vec<&str> = chat.tool_calls.iter().map(|c| c.id.as_str()).collect();
    assert!(ids.iter().all(|id| !id.is_empty()), "{chat:?}");
    ids.dedup();
    assert_eq!(
        ids.len(),
        chat.tool_calls.len(),
        "tool call ids are distinct: {chat:?}"
    );
    assert_eq!(chat.finish_reason, "tool_calls", "{chat:?}");
    assert_openai_usage(&chat.usage, usage_of(provider));
}

async fn chat_think(provider: &str, model: &str, stream: bool) {
    let gw = gateway().await;
    let chat = read_chat(&gw.chat(model, "think about it", stream).await);
    // The reasoning is never mixed into the answer's content.
    assert_eq!(chat.content, THOUGHT_ANSWER, "{chat:?}");
    assert!(!chat.content.contains(THOUGHT), "{chat:?}");
    assert_eq!(chat.finish_reason, "stop");
    assert_openai_usage(&chat.usage, think_usage(provider));
}

async fn chat_rate_limited(model: &str, stream: bool) {
    let gw = gateway().await;
    let answer = gw.chat(model, "rate-limit", stream).await;
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.text()
    );
    let doc = answer.json();
    let error = &doc["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{doc}"
    );
    assert!(error["type"].is_string(), "OpenAI's error shape: {doc}");
    assert!(
        doc.get("type").is_none(),
        "not Anthropic's error shape: {doc}"
    );
}

macro_rules! chat_client_tests {
    ($($provider:ident => $model:literal),* $(,)?) => {$(
        mod $provider {
            use super::*;
            const P: &str = stringify!($provider);
            #[tokio::test]
            async fn json_text() { chat_text(P, $model, false).await }
            #[tokio::test]
            async fn stream_text() { chat_text(P, $model, true).await }
            #[tokio::test]
            async fn json_tool_call() { chat_tool_call(P, $model, false).await }
            #[tokio::test]
            async fn stream_tool_call() { chat_tool_call(P, $model, true).await }
            #[tokio::test]
            async fn json_think() { chat_think(P, $model, false).await }
            #[tokio::test]
            async fn stream_think() { chat_think(P, $model, true).await }
            #[tokio::test]
            async fn json_rate_limited_is_openai_error() { chat_rate_limited($model, false).await }
            #[tokio::test]
            async fn stream_rate_limited_is_openai_error() { chat_rate_limited($model, true).await }
        }
    )*};
}

/// `chat_client::PROVIDER::*`: an OpenAI Chat Completions client.
mod chat_client {
    use super::*;
    chat_client_tests!(openai => "gpt-4o-mini", anthropic => "claude-sonnet", gemini => "gemini-flash");
}

// === an Anthropic Messages client, over each provider ===

async fn messages_text(provider: &str, model: &str, stream: bool) {
    let gw = gateway().await;
    let answer = gw.messages(model, "hello there", stream).await;
    assert_eq!(answer.version(), model);
    assert_eq!(answer.is_event_stream(), stream, "{}", answer.text());
    let message = read_message(&answer);
    assert_eq!(message.text(), reply_text(provider), "{message:?}");
    assert_eq!(message.stop_reason, "end_turn", "{message:?}");
    assert_anthropic_usage(&message.usage, usage_of(provider));
}

async fn messages_tool_use(provider: &str, model: &str, stream: bool) {
    let gw = gateway().await;
    let message = read_message(
        &gw.messages(model, "what is the weather in Paris?", stream)
            .await,
    );
    let calls: Vec<(String, Value)> = message
        .tool_uses()
        .into_iter()
        .map(|c| {
            assert!(!c.id.is_empty(), "tool_use has an id: {message:?}");
            (c.name, c.arguments)
        })
        .collect();
    let want: Vec<(String, Value)> = expected_calls(provider)
        .into_iter()
        .map(|(n, a)| (n.to_owned(), a))
        .collect();
    assert_eq!(calls, want, "{message:?}");
    assert_eq!(message.stop_reason, "tool_use", "{message:?}");
}

async fn messages_rate_limited(model: &str, stream: bool) {
    let gw = gateway().await;
    let answer = gw.messages(model, "rate-limit", stream).await;
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        answer.text()
    );
    let doc = answer.json();
    assert_eq!(doc["type"], "error", "Anthropic's error shape: {doc}");
    assert_eq!(doc["error"]["type"], "rate_limit_error", "{doc}");
    assert!(doc["error"]["message"].is_string(), "{doc}");
}

macro_rules! messages_client_tests {
    ($($provider:ident => $model:literal),* $(,)?) => {$(
        mod $provider {
            use super::*;
            const P: &str = stringify!($provider);
            #[tokio::test]
            async fn json_text() { messages_text(P, $model, false).await }
            #[tokio::test]
            async fn stream_text() { messages_text(P, $model, true).await }
            #[tokio::test]
            async fn json_tool_use() { messages_tool_use(P, $model, false).await }
            #[tokio::test]
            async fn stream_tool_use() { messages_tool_use(P, $model, true).await }
            #[tokio::test]
            async fn rate_limited_is_anthropic_error() { messages_rate_limited($model, false).await }
        }
    )*};
}

/// `messages_client::PROVIDER::*`: an Anthropic Messages client
/// (`anthropic` is the same-protocol pass-through).
mod messages_client {
    use super::*;
    messages_client_tests!(openai => "gpt-4o-mini", gemini => "gemini-flash", anthropic => "claude-sonnet");
}

// === what the providers received ===

/// Every header value a stand-in received, as text.
fn header_values(r: &providers::Recorded) -> Vec<String> {
    r.headers
        .iter()
        .map(|(n, v)| format!("{n}: {}", String::from_utf8_lossy(v.as_bytes())))
        .collect()
}

/// Each provider got its own key in its own header, and the caller's key
/// (sent as `Authorization` and `x-api-key`) reached none of them.
#[tokio::test]
async fn credentials_each_provider_gets_its_own_key_never_the_callers() {
    let gw = gateway().await;
    let also = [("x-api-key", CALLER_KEY), ("x-goog-api-key", CALLER_KEY)];
    for model in ["gpt-4o-mini", "claude-sonnet", "gemini-flash"] {
        for stream in [false, true] {
            let answer = gw.chat_with(model, "hello there", stream, &also).await;
            assert_eq!(answer.status, StatusCode::OK, "{model}: {}", answer.text());
        }
        let answer = gw.messages(model, "hello there", false).await;
        assert_eq!(answer.status, StatusCode::OK, "{model}: {}", answer.text());
    }
    for (s, header, value) in [
        (&gw.openai, "authorization", format!("Bearer {OPENAI_KEY}")),
        (&gw.anthropic, "x-api-key", ANTHROPIC_KEY.to_owned()),
        (&gw.gemini, "x-goog-api-key", GEMINI_KEY.to_owned()),
    ] {
        let requests = s.requests();
        assert_eq!(requests.len(), 3, "{}", s.name);
        for r in &requests {
            let all = header_values(r);
            assert_eq!(r.headers[header], value.as_str(), "{}: {all:?}", s.name);
            assert!(
                all.iter().all(|h| !h.contains(CALLER_KEY)),
                "{} saw the caller's key: {all:?}",
                s.name
            );
            for other in ["authorization", "x-api-key", "x-goog-api-key", "api-key"] {
                if other != header {
                    assert!(
                        !r.headers.contains_key(other),
                        "{} got a {other} header: {all:?}",
                        s.name
                    );
                }
            }
        }
    }
    for r in gw.anthropic.requests() {
        assert_eq!(r.headers["anthropic-version"], "2023-06-01");
    }
    assert!(
        gw.handle.keys().iter().all(|k| k.requests > 0),
        "every key was used: {:?}",
        gw.handle.keys()
    );
}

/// What an OpenAI Chat request becomes on the wire of each provider.
#[tokio::test]
async fn upstream_requests_are_in_each_providers_shape() {
    let gw = gateway().await;
    for stream in [false, true] {
        for model in ["gpt-4o-mini", "claude-sonnet", "gemini-flash"] {
            let answer = gw.chat(model, "hello there", stream).await;
            assert_eq!(answer.status, StatusCode::OK, "{model}: {}", answer.text());
        }
        let openai = gw.openai.last();
        assert_eq!(openai.path, "/v1/chat/completions");
        assert_eq!(openai.body["model"], "gpt-4o-mini");
        assert_eq!(openai.body["messages"][1]["content"], "hello there");

        let anthropic = gw.anthropic.last();
        assert_eq!(anthropic.path, "/v1/messages");
        let body = &anthropic.body;
        assert_eq!(body["model"], "claude-sonnet-4-5", "{body}");
        assert_eq!(body["max_tokens"], 256, "{body}");
        assert_eq!(body["stream"].as_bool().unwrap_or(false), stream, "{body}");
        let system = match &body["system"] {
            Value::String(s) => s.clone(),
            blocks => blocks[0]["text"].as_str().unwrap_or("").to_owned(),
        };
        assert_eq!(
            system, "You are terse.",
            "the system message moves to `system`: {body}"
        );
        let messages = body["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 1, "{body}");
        assert_eq!(messages[0]["role"], "user", "{body}");
        assert_eq!(body["tools"][0]["name"], "get_weather", "{body}");
        assert_eq!(body["tools"][0]["input_schema"]["type"], "object", "{body}");

        let gemini = gw.gemini.last();
        let want = if stream {
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
        } else {
            "/v1beta/models/gemini-2.5-flash:generateContent"
        };
        assert_eq!(gemini.path, want);
        let body = &gemini.body;
        assert_eq!(body["contents"][0]["role"], "user", "{body}");
        assert_eq!(
            body["contents"][0]["parts"][0]["text"], "hello there",
            "{body}"
        );
        assert_eq!(
            body["systemInstruction"]["parts"][0]["text"], "You are terse.",
            "{body}"
        );
        assert_eq!(
            body["tools"][0]["functionDeclarations"][0]["name"], "get_weather",
            "{body}"
        );
        assert_eq!(body["generationConfig"]["maxOutputTokens"], 256, "{body}");
    }
}

// === fallback ===

async fn falls_back_to_gemini(text: &str, stream: bool) {
    let gw = gateway().await;
    let answer = gw.chat("chat", text, stream).await;
    assert_eq!(answer.version(), "gemini-flash", "{}", answer.text());
    let chat = read_chat(&answer);
    assert_eq!(chat.content, reply_text("gemini"));
    assert_eq!(gw.anthropic.requests().len(), 1);
    assert_eq!(gw.gemini.requests().len(), 1);
    assert_eq!(gw.gemini.last().headers["x-goog-api-key"], GEMINI_KEY);
    // Both attempts are reported; the failed one without tokens.
    let records = gw.usage_records(2).await;
    let failed = records
        .iter()
        .find(|r| &*r.model == "claude-sonnet")
        .unwrap();
    assert!(failed.status.as_u16() == 429 || failed.status.as_u16() == 529);
    assert!(failed.usage.is_empty(), "{failed:?}");
    let served = records
        .iter()
        .find(|r| &*r.model == "gemini-flash")
        .unwrap();
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(tokens(&served.usage), GEMINI_USAGE, "{served:?}");
}

#[tokio::test]
async fn fallback_from_anthropic_429_to_gemini_json() {
    falls_back_to_gemini("rate-limit:anthropic", false).await;
}

#[tokio::test]
async fn fallback_from_anthropic_429_to_gemini_stream() {
    falls_back_to_gemini("rate-limit:anthropic", true).await;
}

#[tokio::test]
async fn fallback_from_anthropic_529_to_gemini_json() {
    falls_back_to_gemini("overloaded:anthropic", false).await;
}

#[tokio::test]
async fn fallback_from_anthropic_529_to_gemini_stream() {
    falls_back_to_gemini("overloaded:anthropic", true).await;
}

// === the usage hook ===

/// One record per answer, normalized: JSON, a stream whose client did
/// not ask for usage, and a reasoning answer.
async fn usage_records_for(provider: &str, model: &str) {
    let gw = gateway().await;
    let json = read_chat(&gw.chat(model, "hello there", false).await);
    assert_eq!(json.finish_reason, "stop");
    // A stream without `stream_options`: the tokens are still counted.
    let mut body = json!({"model": model, "stream": true,
        "messages": [{"role": "user", "content": "hello there"}]});
    body["max_tokens"] = json!(64);
    let auth = format!("Bearer {CALLER_KEY}");
    let answer = gw
        .post("/v1/chat/completions", &[("authorization", &auth)], &body)
        .await;
    let streamed = read_chat(&answer);
    assert_eq!(streamed.content, reply_text(provider));
    assert!(
        streamed.usage.is_null(),
        "no usage chunk for a client that did not ask: {}",
        answer.text()
    );
    read_chat(&gw.chat(model, "think about it", false).await);
    let records = gw.usage_records(3).await;
    assert_eq!(records.len(), 3, "{records:#?}");
    let want = [
        usage_of(provider),
        usage_of(provider),
        think_usage(provider),
    ];
    for (r, want) in records.iter().zip(want) {
        assert_eq!(&*r.model, model, "{r:?}");
        assert_eq!(&*r.upstream, provider, "{r:?}");
        assert_eq!(r.provider.as_str(), provider, "{r:?}");
        assert_eq!(r.client, ClientApi::ChatCompletions, "{r:?}");
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert!(!r.usage.truncated, "{r:?}");
        assert_eq!(tokens(&r.usage), want, "{r:?}");
    }
}

mod usage_hook {
    use super::*;

    #[tokio::test]
    async fn openai() {
        usage_records_for("openai", "gpt-4o-mini").await;
    }

    #[tokio::test]
    async fn anthropic() {
        usage_records_for("anthropic", "claude-sonnet").await;
    }

    #[tokio::test]
    async fn gemini() {
        usage_records_for("gemini", "gemini-flash").await;
    }

    /// A Messages client over Gemini: the record says so.
    #[tokio::test]
    async fn messages_client_over_gemini() {
        let gw = gateway().await;
        read_message(&gw.messages("gemini-flash", "hello there", true).await);
        let records = gw.usage_records(1).await;
        assert_eq!(records[0].client, ClientApi::Messages);
        assert_eq!(records[0].provider, Protocol::Gemini);
        assert_eq!(tokens(&records[0].usage), GEMINI_USAGE);
    }
}

// === the stand-ins themselves (they hold the tests above to the real formats) ===

mod stand_ins {
    use super::*;

    async fn post(url: String, headers: &[(&str, &str)], body: Value) -> Answer {
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let mut req = Request::post(url).header(CONTENT_TYPE, "application/json");
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let res = client
            .request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
            .await
            .unwrap();
        let (parts, body) = res.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    #[tokio::test]
    async fn a_wrong_key_is_a_401_in_each_providers_shape() {
        let openai = OpenAiServer::start(OPENAI_KEY).await;
        let anthropic = AnthropicServer::start(ANTHROPIC_KEY).await;
        let gemini = GeminiServer::start(GEMINI_KEY).await;
        let bad = format!("Bearer {CALLER_KEY}");
        let a = post(
            format!("{}/v1/chat/completions", openai.url()),
            &[("authorization", &bad)],
            json!({}),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.json()["error"]["code"], "invalid_api_key");
        let a = post(
            format!("{}/v1/messages", anthropic.url()),
            &[
                ("x-api-key", CALLER_KEY),
                ("anthropic-version", "2023-06-01"),
            ],
            json!({}),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.json()["error"]["type"], "authentication_error");
        let a = post(
            format!("{}/v1beta/models/g:generateContent", gemini.url()),
            &[("x-goog-api-key", CALLER_KEY)],
            json!({}),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.json()["error"]["status"], "UNAUTHENTICATED");
    }

    #[tokio::test]
    async fn each_answers_in_its_own_format() {
        let openai = OpenAiServer::start(OPENAI_KEY).await;
        let bearer = format!("Bearer {OPENAI_KEY}");
        for stream in [false, true] {
            let a = post(
                format!("{}/v1/chat/completions", openai.url()),
                &[("authorization", &bearer)],
                json!({"model": "m", "stream": stream, "stream_options": {"include_usage": true},
                       "messages": [{"role": "user", "content": "weather?"}]}),
            )
            .await;
            let chat = read_chat(&a);
            assert_eq!(chat.tool_calls[0].arguments, json!({"city": "Paris"}));
            assert_openai_usage(&chat.usage, OPENAI_USAGE);
        }

        let anthropic = AnthropicServer::start(ANTHROPIC_KEY).await;
        for (text, stream) in [
            ("hi", false),
            ("hi", true),
            ("think", true),
            ("weather", true),
        ] {
            let a = post(
                format!("{}/v1/messages", anthropic.url()),
                &[
                    ("x-api-key", ANTHROPIC_KEY),
                    ("anthropic-version", "2023-06-01"),
                ],
                json!({"model": "m", "max_tokens": 10, "stream": stream,
                       "messages": [{"role": "user", "content": text}]}),
            )
            .await;
            let m = read_message(&a);
            assert_anthropic_usage(&m.usage, ANTHROPIC_USAGE);
            match text {
                "think" => {
                    assert_eq!(m.blocks[0]["thinking"], THOUGHT);
                    assert_eq!(m.text(), THOUGHT_ANSWER);
                }
                "weather" => {
                    assert_eq!(m.tool_uses()[0].arguments, json!({"city": "Paris"}));
                }
                _ => assert_eq!(m.text(), reply_text("anthropic")),
            }
        }

        let gemini = GeminiServer::start(GEMINI_KEY).await;
        let a = post(
            format!(
                "{}/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                gemini.url()
            ),
            &[("x-goog-api-key", GEMINI_KEY)],
            json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK);
        let text = a.text();
        let chunks: Vec<Value> = text
            .split("\r\n\r\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(chunks.len(), 3, "{text}");
        let said: String = chunks
            .iter()
            .filter_map(|c| c["candidates"][0]["content"]["parts"][0]["text"].as_str())
            .collect();
        assert_eq!(said, reply_text("gemini"));
        assert_eq!(chunks[2]["candidates"][0]["finishReason"], "STOP");
        assert_eq!(
            chunks[2]["usageMetadata"]["candidatesTokenCount"],
            GEMINI_USAGE.output
        );
        assert!(
            chunks
                .iter()
                .all(|c| c["usageMetadata"]["promptTokenCount"] == 9)
        );
    }
}

// === the official SDKs ===

/// The Python that has the SDKs (`target/sdk-venv`, made by
/// `.ci/sdk-venv`).
fn sdk_python() -> Option<PathBuf> {
    crate::support::openapi::python()
}

/// Runs `tests/sdk/SCRIPT BASE_URL MODEL=PROVIDER...` against a fresh gateway.
async fn run_sdk_script(script: &str, models: &[&str]) {
    let Some(python) = sdk_python() else {
        return;
    };
    let gw = gateway().await;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let run = tokio::process::Command::new(&python)
        .arg(&path)
        .arg(format!("http://{}", gw.addr))
        .args(models)
        .env("OPENAI_API_KEY", CALLER_KEY)
        .env("ANTHROPIC_API_KEY", CALLER_KEY)
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the SDK script hung")
        .expect("the SDK script did not start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_sdk_over_every_provider() {
    run_sdk_script(
        "openai_client.py",
        &[
            "gpt-4o-mini=openai",
            "claude-sonnet=anthropic",
            "gemini-flash=gemini",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_python_sdk_over_openai_and_gemini() {
    run_sdk_script(
        "anthropic_client.py",
        &[
            "gpt-4o-mini=openai",
            "gemini-flash=gemini",
            "claude-sonnet=anthropic",
        ],
    )
    .await;
}
