//! Stand-in AI providers on `127.0.0.1:0`, one per wire format, for the
//! end-to-end tests of the model router's translation:
//!
//! * [`OpenAiServer`]: `POST /v1/chat/completions`, `Authorization: Bearer`;
//!   a `chat.completion`, or `chat.completion.chunk` events ending with
//!   `data: [DONE]` (and the usage chunk when
//!   `stream_options.include_usage` is set).
//! * [`AnthropicServer`]: `POST /v1/messages`, `x-api-key` and
//!   `anthropic-version`; a `message`, or the named events `message_start`,
//!   `content_block_start` / `_delta` / `_stop`, `ping`, `message_delta`,
//!   `message_stop`.
//! * [`GeminiServer`]: `POST /v1beta/models/{model}:generateContent` and
//!   `:streamGenerateContent?alt=sse`, `x-goog-api-key`; a
//!   `GenerateContentResponse`, or one per `data:` event (CRLF-separated, as
//!   Google writes them), each with the cumulative `usageMetadata`.
//!
//! Each checks its credential header against the key it was started with
//! (a 401 in the provider's error shape otherwise) and records every
//! request ([`Recorded`]) for the tests to inspect.
//!
//! What a stand-in answers is scripted by the text of the conversation's
//! last user message:
//!
//! | text contains | answer |
//! | --- | --- |
//! | `weather` | a call of `get_weather` with `{"city":"Paris"}` (Anthropic: after a short text block; Gemini: two parallel calls, Paris then Tokyo, a `thoughtSignature` on the first) |
//! | `think` | reasoning (Anthropic: a signed `thinking` block; Gemini: a `thought: true` part and `thoughtsTokenCount`; OpenAI: `reasoning_tokens` only), then text |
//! | `rate-limit` | 429 in the provider's error shape |
//! | `overloaded` | Anthropic: 529 `overloaded_error`; others: 503 |
//! | anything else | [`reply_text`] (`"hello from anthropic"`), over several events when streaming |
//!
//! `rate-limit:NAME` and `overloaded:NAME` fail only on the stand-in NAME
//! (`openai`, `anthropic`, `gemini`); the others answer as usual, so a
//! fallback to them can be seen. A conversation whose last message carries
//! a tool result (OpenAI `role: tool`, Anthropic `tool_result`, Gemini
//! `functionResponse`) gets [`weather_text`].
//!
//! Token counts are fixed per provider (see [`OPENAI_USAGE`],
//! [`ANTHROPIC_USAGE`], [`GEMINI_USAGE`]) so that the usage hook's
//! normalized numbers can be checked exactly.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;

// === what the tests see ===

/// One request a stand-in received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The method.
    pub method: Method,
    /// The path and query (`/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse`).
    pub path: String,
    /// Every header, as received.
    pub headers: HeaderMap,
    /// The body, parsed (`Value::Null` if it was not JSON).
    pub body: Value,
    /// The body as received.
    pub raw: Bytes,
}

/// A running stand-in.
#[derive(Debug, Clone)]
pub struct StandIn {
    /// `openai`, `anthropic` or `gemini`.
    pub name: &'static str,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The only key it accepts.
    pub key: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl StandIn {
    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// The last request received.
    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .unwrap_or_else(|| panic!("{} received no request", self.name))
    }

    /// Forgets the requests received so far.
    pub fn clear(&self) {
        self.requests.lock().unwrap().clear();
    }
}

/// A stand-in for OpenAI's Chat Completions API.
pub struct OpenAiServer;

/// A stand-in for Anthropic's Messages API.
pub struct AnthropicServer;

/// A stand-in for Google's Gemini API (`generativelanguage.googleapis.com`).
pub struct GeminiServer;

impl OpenAiServer {
    /// Starts one on a free loopback port, accepting `Authorization: Bearer KEY`.
    pub async fn start(key: &str) -> StandIn {
        start("openai", key).await
    }
}

impl AnthropicServer {
    /// Starts one on a free loopback port, accepting `x-api-key: KEY`.
    pub async fn start(key: &str) -> StandIn {
        start("anthropic", key).await
    }
}

impl GeminiServer {
    /// Starts one on a free loopback port, accepting `x-goog-api-key: KEY`.
    pub async fn start(key: &str) -> StandIn {
        start("gemini", key).await
    }
}

/// The text a stand-in answers with: `hello from NAME`.
pub fn reply_text(name: &str) -> String {
    format!("hello from {name}")
}

/// The pieces [`reply_text`] is streamed in.
fn reply_pieces(name: &str) -> Vec<String> {
    vec!["hello".into(), " from".into(), format!(" {name}")]
}

/// The answer after a tool result: `it is sunny in Paris (NAME)`.
pub fn weather_text(name: &str) -> String {
    format!("it is sunny in Paris ({name})")
}

/// The text after the reasoning of a `think` answer.
pub const THOUGHT_ANSWER: &str = "42, after some thought";
/// The reasoning of a `think` answer.
pub const THOUGHT: &str = "The user wants me to think. Let me consider.";
/// Anthropic's signature of [`THOUGHT`].
pub const THINKING_SIGNATURE: &str = "EqQBCkYIBxgCKkBthinkingsignature==";
/// Gemini's `thoughtSignature` on the first function call.
pub const THOUGHT_SIGNATURE: &str = "CiQBVKhc7gemini-thought-signature==";

/// Token counts in each provider's own terms, and what they normalize to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    /// Every input token, cached included.
    pub input: u64,
    /// Of input, read from the cache.
    pub cached_read: u64,
    /// Of input, written to the cache.
    pub cache_write: u64,
    /// Every output token, reasoning included.
    pub output: u64,
    /// Of output, reasoning.
    pub reasoning: u64,
}

/// OpenAI: `prompt_tokens` 12 (4 cached), `completion_tokens` 5; a `think`
/// answer has 8 of which 3 `reasoning_tokens`.
pub const OPENAI_USAGE: Tokens = Tokens {
    input: 12,
    cached_read: 4,
    cache_write: 0,
    output: 5,
    reasoning: 0,
};
/// Anthropic: `input_tokens` 10 + `cache_read_input_tokens` 6 +
/// `cache_creation_input_tokens` 2 = 18 input; `output_tokens` 7 (a
/// `think` answer: 7 too, Anthropic does not count thinking apart).
pub const ANTHROPIC_USAGE: Tokens = Tokens {
    input: 18,
    cached_read: 6,
    cache_write: 2,
    output: 7,
    reasoning: 0,
};
/// Gemini: `promptTokenCount` 9 (3 `cachedContentTokenCount`),
/// `candidatesTokenCount` 4; a `think` answer adds `thoughtsTokenCount` 5
/// (output 9, reasoning 5).
pub const GEMINI_USAGE: Tokens = Tokens {
    input: 9,
    cached_read: 3,
    cache_write: 0,
    output: 4,
    reasoning: 0,
};

/// The normalized counts of a `think` answer from `provider`.
pub fn think_usage(provider: &str) -> Tokens {
    match provider {
        "openai" => Tokens {
            output: 8,
            reasoning: 3,
            ..OPENAI_USAGE
        },
        "gemini" => Tokens {
            output: 9,
            reasoning: 5,
            ..GEMINI_USAGE
        },
        _ => ANTHROPIC_USAGE,
    }
}

// === the server ===

#[derive(Clone)]
struct Shared {
    name: &'static str,
    key: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

async fn start(name: &'static str, key: &str) -> StandIn {
    let shared = Shared {
        name,
        key: key.to_owned(),
        requests: Arc::default(),
    };
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(shared.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    StandIn {
        name,
        addr,
        key: key.to_owned(),
        requests: shared.requests,
    }
}

/// Records the request, checks the credential, then answers as the
/// provider would.
async fn handle(
    State(server): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    server.requests.lock().unwrap().push(Recorded {
        method: method.clone(),
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_owned(),
        headers: headers.clone(),
        body: body.clone(),
        raw,
    });
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match server.name {
        "openai" => {
            if header("authorization") != Some(&format!("Bearer {}", server.key)) {
                return openai_error(
                    StatusCode::UNAUTHORIZED,
                    "Incorrect API key provided.",
                    "invalid_request_error",
                    "invalid_api_key",
                );
            }
            if method != Method::POST || uri.path() != "/v1/chat/completions" {
                return openai_error(
                    StatusCode::NOT_FOUND,
                    &format!("Invalid URL ({method} {})", uri.path()),
                    "invalid_request_error",
                    "unknown_url",
                );
            }
            openai(&body)
        }
        "anthropic" => {
            if header("x-api-key") != Some(&server.key) {
                return anthropic_error(
                    StatusCode::UNAUTHORIZED,
                    "authentication_error",
                    "invalid x-api-key",
                );
            }
            if header("anthropic-version").is_none() {
                return anthropic_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "anthropic-version: header is required",
                );
            }
            if method != Method::POST || uri.path() != "/v1/messages" {
                return anthropic_error(
                    StatusCode::NOT_FOUND,
                    "not_found_error",
                    &format!("Not found: {method} {}", uri.path()),
                );
            }
            if !body["max_tokens"].is_u64() {
                return anthropic_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    "max_tokens: Field required",
                );
            }
            anthropic(&body)
        }
        _ => {
            if header("x-goog-api-key") != Some(&server.key) {
                // Google answers 400 API_KEY_INVALID (403 without a key);
                // a 401 keeps "wrong credential" one status for all three.
                return gemini_error(
                    StatusCode::UNAUTHORIZED,
                    "API key not valid. Please pass a valid API key.",
                    "UNAUTHENTICATED",
                );
            }
            // `/v1beta/models/{model}:{method}`
            let call = uri.path().strip_prefix("/v1beta/models/").unwrap_or("");
            let (model, action) = call.split_once(':').unwrap_or(("", ""));
            let sse = uri
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "alt=sse"));
            match (method == Method::POST, action) {
                (true, "generateContent") => gemini(&body, model, false),
                (true, "streamGenerateContent") if sse => gemini(&body, model, true),
                (true, "streamGenerateContent") => gemini_error(
                    StatusCode::BAD_REQUEST,
                    "this stand-in streams only with ?alt=sse",
                    "INVALID_ARGUMENT",
                ),
                _ => gemini_error(
                    StatusCode::NOT_FOUND,
                    &format!("Not found: {method} {}", uri.path()),
                    "NOT_FOUND",
                ),
            }
        }
    }
}

/// What the script says to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    Text,
    Weather,
    Think,
    RateLimit,
    Overloaded,
    /// The last message is a tool result.
    AfterTool,
}

fn script(name: &str, text: &str, after_tool: bool) -> Script {
    // `rate-limit` fails everywhere; `rate-limit:NAME` only on NAME.
    let fails = |word: &str| {
        text.split_whitespace().any(|w| {
            w == word
                || w.strip_prefix(word)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .is_some_and(|who| who == name)
        })
    };
    if fails("rate-limit") {
        Script::RateLimit
    } else if fails("overloaded") {
        Script::Overloaded
    } else if after_tool {
        Script::AfterTool
    } else if text.contains("weather") {
        Script::Weather
    } else if text.contains("think") {
        Script::Think
    } else {
        Script::Text
    }
}

/// `text` of a content that is a string or a list of `{"type":"text"}`
/// blocks (OpenAI's and Anthropic's shapes).
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b["type"] == "text")
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn sse_response(frames: Vec<String>) -> Response {
    // Each event is written on its own, the first one cut in two, so a
    // reader that assumes one event per read is caught.
    let mut chunks: Vec<Result<Bytes, Infallible>> = Vec::new();
    for (i, frame) in frames.into_iter().enumerate() {
        if i == 0 && frame.len() > 8 {
            let cut = frame.len() / 2;
            let cut = (cut..frame.len())
                .find(|&c| frame.is_char_boundary(c))
                .unwrap();
            chunks.push(Ok(Bytes::from(frame[..cut].to_owned())));
            chunks.push(Ok(Bytes::from(frame[cut..].to_owned())));
        } else {
            chunks.push(Ok(Bytes::from(frame)));
        }
    }
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(tokio_stream::iter(chunks)),
    )
        .into_response()
}

fn json_response(status: StatusCode, value: Value) -> Response {
    (status, axum::Json(value)).into_response()
}

// === OpenAI ===

fn openai_error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
    json_response(
        status,
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

fn openai(request: &Value) -> Response {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default();
    let after_tool = messages.last().is_some_and(|m| m["role"] == "tool");
    let model = request["model"].as_str().unwrap_or("?").to_owned();
    let stream = request["stream"] == true;
    let include_usage = request["stream_options"]["include_usage"] == true;

    let usage = |think: bool| {
        let t = if think {
            think_usage("openai")
        } else {
            OPENAI_USAGE
        };
        json!({
            "prompt_tokens": t.input,
            "completion_tokens": t.output,
            "total_tokens": t.input + t.output,
            "prompt_tokens_details": {"cached_tokens": t.cached_read, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": t.reasoning, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        })
    };
    let id = "chatcmpl-standin";
    let created = 1_700_000_000;

    let (pieces, call, think): (Vec<String>, bool, bool) =
        match script("openai", &last_user, after_tool) {
            Script::RateLimit => {
                return openai_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Rate limit reached for requests (stand-in).",
                    "requests",
                    "rate_limit_exceeded",
                );
            }
            Script::Overloaded => {
                return openai_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The server is overloaded (stand-in).",
                    "server_error",
                    "overloaded",
                );
            }
            Script::Weather => (Vec::new(), true, false),
            Script::Think => (vec![THOUGHT_ANSWER.into()], false, true),
            Script::AfterTool => (vec![weather_text("openai")], false, false),
            Script::Text => (reply_pieces("openai"), false, false),
        };
    let finish = if call { "tool_calls" } else { "stop" };

    if !stream {
        let message = if call {
            json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [{
                "id": "call_standin_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            }]})
        } else {
            json!({"role": "assistant", "content": pieces.concat(), "refusal": null})
        };
        return json_response(
            StatusCode::OK,
            json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
                "usage": usage(think),
                "system_fingerprint": "fp_standin",
            }),
        );
    }

    // Streamed: role first, then the content (or the tool call's name, then
    // its arguments in pieces), then the finish reason; with include_usage
    // every chunk says `"usage": null` and a last chunk with no choices
    // carries the usage.
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_standin",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let mut frames = vec![chunk(
        json!({"role": "assistant", "content": if call { Value::Null } else { json!("") }, "refusal": null}),
        Value::Null,
    )];
    if call {
        frames.push(chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_standin_1", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ));
        for part in ["{\"ci", "ty\":\"Par", "is\"}"] {
            frames.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                Value::Null,
            ));
        }
    } else {
        for piece in &pieces {
            frames.push(chunk(json!({"content": piece}), Value::Null));
        }
    }
    frames.push(chunk(json!({}), json!(finish)));
    if include_usage {
        let last = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_standin", "choices": [], "usage": usage(think),
        });
        frames.push(format!("data: {last}\n\n"));
    }
    frames.push("data: [DONE]\n\n".into());
    sse_response(frames)
}

// === Anthropic ===

fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response {
    json_response(
        status,
        json!({"type": "error", "error": {"type": kind, "message": message},
               "request_id": "req_standin"}),
    )
}

fn anthropic(request: &Value) -> Response {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    // A user message is a string, or blocks of text / tool_result / image.
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default();
    let after_tool = messages.last().is_some_and(|m| {
        m["role"] == "user"
            && m["content"]
                .as_array()
                .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"))
    });
    let model = request["model"].as_str().unwrap_or("?").to_owned();
    let stream = request["stream"] == true;

    let usage = json!({
        "input_tokens": 10,
        "cache_creation_input_tokens": 2,
        "cache_read_input_tokens": 6,
        "output_tokens": ANTHROPIC_USAGE.output,
    });

    // The blocks of the answer, in order, as (block, deltas when streamed).
    let text_block = |pieces: Vec<String>| {
        let whole = pieces.concat();
        (
            json!({"type": "text", "text": whole}),
            json!({"type": "text", "text": ""}),
            pieces
                .into_iter()
                .map(|p| json!({"type": "text_delta", "text": p}))
                .collect::<Vec<_>>(),
        )
    };
    let (blocks, stop_reason) = match script("anthropic", &last_user, after_tool) {
        Script::RateLimit => {
            return anthropic_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit (stand-in).",
            );
        }
        Script::Overloaded => {
            return anthropic_error(
                StatusCode::from_u16(529).unwrap(),
                "overloaded_error",
                "Overloaded",
            );
        }
        Script::Weather => (
            vec![
                text_block(vec!["Let me check".into(), " the weather.".into()]),
                (
                    json!({"type": "tool_use", "id": "toolu_standin_1", "name": "get_weather",
                           "input": {"city": "Paris"}}),
                    json!({"type": "tool_use", "id": "toolu_standin_1", "name": "get_weather",
                           "input": {}}),
                    vec![
                        json!({"type": "input_json_delta", "partial_json": ""}),
                        json!({"type": "input_json_delta", "partial_json": "{\"city\": \"Pa"}),
                        json!({"type": "input_json_delta", "partial_json": "ris\"}"}),
                    ],
                ),
            ],
            "tool_use",
        ),
        Script::Think => (
            vec![
                (
                    json!({"type": "thinking", "thinking": THOUGHT, "signature": THINKING_SIGNATURE}),
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    vec![
                        json!({"type": "thinking_delta", "thinking": &THOUGHT[..20]}),
                        json!({"type": "thinking_delta", "thinking": &THOUGHT[20..]}),
                        json!({"type": "signature_delta", "signature": THINKING_SIGNATURE}),
                    ],
                ),
                text_block(vec![THOUGHT_ANSWER.into()]),
            ],
            "end_turn",
        ),
        Script::AfterTool => (
            vec![text_block(vec![weather_text("anthropic")])],
            "end_turn",
        ),
        Script::Text => (vec![text_block(reply_pieces("anthropic"))], "end_turn"),
    };

    if !stream {
        return json_response(
            StatusCode::OK,
            json!({
                "id": "msg_standin", "type": "message", "role": "assistant", "model": model,
                "content": blocks.iter().map(|b| b.0.clone()).collect::<Vec<_>>(),
                "stop_reason": stop_reason, "stop_sequence": null, "usage": usage,
            }),
        );
    }

    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut start_usage = usage.clone();
    start_usage["output_tokens"] = json!(1);
    let mut frames = vec![event(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": "msg_standin", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": start_usage,
        }}),
    )];
    for (index, (_, start, deltas)) in blocks.into_iter().enumerate() {
        frames.push(event(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": start}),
        ));
        if index == 0 {
            frames.push(event("ping", json!({"type": "ping"})));
        }
        for delta in deltas {
            frames.push(event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": delta}),
            ));
        }
        frames.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    frames.push(event(
        "message_delta",
        json!({"type": "message_delta",
               "delta": {"stop_reason": stop_reason, "stop_sequence": null},
               "usage": {"output_tokens": ANTHROPIC_USAGE.output}}),
    ));
    frames.push(event("message_stop", json!({"type": "message_stop"})));
    sse_response(frames)
}

// === Gemini ===

fn gemini_error(status: StatusCode, message: &str, kind: &str) -> Response {
    json_response(
        status,
        json!({"error": {"code": status.as_u16(), "message": message, "status": kind}}),
    )
}

fn gemini(request: &Value, model: &str, stream: bool) -> Response {
    let contents = request["contents"].as_array().cloned().unwrap_or_default();
    let parts_text = |c: &Value| {
        c["parts"]
            .as_array()
            .map(|parts| {
                parts
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    // A content without a role is the user's.
    let last_user = contents
        .iter()
        .rev()
        .find(|c| c["role"] == "user" || c.get("role").is_none())
        .map(parts_text)
        .unwrap_or_default();
    let after_tool = contents.last().is_some_and(|c| {
        c["parts"]
            .as_array()
            .is_some_and(|parts| parts.iter().any(|p| p.get("functionResponse").is_some()))
    });

    // Each chunk: its parts, and whether it is the last.
    let (chunks, think): (Vec<Vec<Value>>, bool) = match script("gemini", &last_user, after_tool) {
        Script::RateLimit => {
            return gemini_error(
                StatusCode::TOO_MANY_REQUESTS,
                "Resource has been exhausted (e.g. check quota).",
                "RESOURCE_EXHAUSTED",
            );
        }
        Script::Overloaded => {
            return gemini_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The model is overloaded. Please try again later.",
                "UNAVAILABLE",
            );
        }
        Script::Weather => (
            vec![
                vec![
                    json!({"functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                                "thoughtSignature": THOUGHT_SIGNATURE}),
                ],
                vec![json!({"functionCall": {"name": "get_weather", "args": {"city": "Tokyo"}}})],
            ],
            false,
        ),
        Script::Think => (
            vec![
                vec![json!({"text": THOUGHT, "thought": true})],
                vec![json!({"text": THOUGHT_ANSWER})],
            ],
            true,
        ),
        Script::AfterTool => (vec![vec![json!({"text": weather_text("gemini")})]], false),
        Script::Text => (
            reply_pieces("gemini")
                .into_iter()
                .map(|p| vec![json!({"text": p})])
                .collect(),
            false,
        ),
    };

    let totals = if think {
        think_usage("gemini")
    } else {
        GEMINI_USAGE
    };
    let candidates_total = totals.output - totals.reasoning;
    let usage = |candidates: u64, thoughts: u64| {
        let mut u = json!({
            "promptTokenCount": totals.input,
            "cachedContentTokenCount": totals.cached_read,
            "candidatesTokenCount": candidates,
            "totalTokenCount": totals.input + candidates + thoughts,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": totals.input}],
        });
        if thoughts > 0 {
            u["thoughtsTokenCount"] = json!(thoughts);
        }
        u
    };
    let response = |parts: Vec<Value>, finish: Option<&str>, usage: Value| {
        let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
        if let Some(f) = finish {
            candidate["finishReason"] = json!(f);
        }
        json!({
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": "standin-response",
        })
    };

    if !stream {
        let parts: Vec<Value> = chunks.into_iter().flatten().collect();
        return json_response(
            StatusCode::OK,
            response(
                parts,
                Some("STOP"),
                usage(candidates_total, totals.reasoning),
            ),
        );
    }

    // Every chunk carries the usage so far (Gemini's counts are
    // cumulative); the last one has the finish reason and the totals.
    let n = chunks.len() as u64;
    let frames = chunks
        .into_iter()
        .enumerate()
        .map(|(i, parts)| {
            let i = i as u64;
            let last = i + 1 == n;
            let (candidates, thoughts) = if last {
                (candidates_total, totals.reasoning)
            } else {
                ((candidates_total * (i + 1)) / n, totals.reasoning)
            };
            let chunk = response(parts, last.then_some("STOP"), usage(candidates, thoughts));
            format!("data: {chunk}\r\n\r\n")
        })
        .collect();
    sse_response(frames)
}

/// A stand-in Chat Completions server on loopback answering every chat
/// completion with "hello", 12 prompt and 30 completion tokens.
#[allow(dead_code, reason = "not every test binary uses it")]
pub async fn fixed_chat_server() -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(
            |axum::Json(body): axum::Json<serde_json::Value>| async move {
                axum::Json(serde_json::json!({
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 1,
                    "model": body["model"],
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello"},
                        "finish_reason": "stop",
                    }],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
                }))
            },
        ),
    );
    super::net::serve(app).await
}
