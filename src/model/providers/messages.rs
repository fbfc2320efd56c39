//! Anthropic Messages clients (`POST /v1/messages`) over any upstream,
//! through an OpenAI Chat Completions pivot.
//!
//! A request in Anthropic's shape becomes an OpenAI Chat request
//! ([`request_to_chat`]), which the OpenAI, Gemini or any other provider
//! file then carries upstream; the answer comes back as an OpenAI
//! `chat.completion` ([`response_from_chat`]), an OpenAI error
//! ([`error_from_chat`]) or a `chat.completion.chunk` stream
//! ([`MessagesStream`]) and leaves in Anthropic's shape.
//!
//! ```
//! use switchyard::model::providers::messages::{request_to_chat, response_from_chat, MessagesStream};
//! use switchyard::model::providers::{sse, RequestOptions, StreamMapper};
//!
//! let body = br#"{"model":"claude-x","max_tokens":64,"system":"Be brief.",
//!                 "messages":[{"role":"user","content":"Hi"}]}"#;
//! let chat = request_to_chat(body, &RequestOptions::new("gpt-4o")).unwrap();
//! let chat: serde_json::Value = serde_json::from_slice(&chat.body).unwrap();
//! assert_eq!(chat["messages"][0]["role"], "system");
//! assert_eq!(chat["max_tokens"], 64);
//!
//! let answer = br#"{"id":"abc","choices":[{"message":{"role":"assistant","content":"Hello"},
//!                  "finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":2}}"#;
//! let (message, usage) = response_from_chat(answer, "claude-x").unwrap();
//! let message: serde_json::Value = serde_json::from_slice(&message).unwrap();
//! assert_eq!(message["content"][0]["text"], "Hello");
//! assert_eq!(message["stop_reason"], "end_turn");
//! assert_eq!(usage.total(), 11);
//!
//! let mut stream = MessagesStream::new("claude-x");
//! let mut out = Vec::new();
//! let mut parser = sse::Parser::new(1 << 20);
//! let upstream = b"data: {\"id\":\"abc\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
//!                  data: {\"id\":\"abc\",\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
//!                  data: [DONE]\n\n";
//! parser.feed(upstream, |e| stream.event(e, &mut out)).unwrap();
//! stream.finish(&mut out);
//! let text = String::from_utf8(out).unwrap();
//! assert!(text.starts_with("event: message_start\n"));
//! assert!(text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"));
//! ```
//!
//! # Requests (Anthropic Messages -> OpenAI Chat)
//!
//! | Anthropic | OpenAI Chat |
//! | --- | --- |
//! | `model` (required string) | `model` := [`RequestOptions::model`] |
//! | `system` string, or text blocks joined by `"\n"` | one leading `system` message |
//! | user `content` string | `content` string |
//! | user `text` block | `{"type":"text"}` part |
//! | user `image`, base64 source | `image_url.url` = `data:{media_type};base64,{data}` |
//! | user `image`, url source | `image_url.url` |
//! | user `tool_result` | a `tool` message (`tool_call_id` = `tool_use_id`; content the string, or its text blocks joined by `"\n"`; `is_error: true` prefixes the content with `"Error: "`), all of a turn's tool messages before its other blocks |
//! | assistant `text` blocks | `content`, concatenated |
//! | assistant `tool_use` | `tool_calls[]` (`arguments` = `input` as sent) |
//! | assistant `thinking` / `redacted_thinking` | `reasoning_content` (thinking texts concatenated) and `thinking_blocks` (each block as sent, signature and data kept) |
//! | `document`, server-tool blocks, other block types; images in a tool result; non-base64/url image sources | dropped, or 400 per [`RequestOptions::unsupported`] |
//! | `cache_control`, `citations` on blocks | dropped (hints without an OpenAI equivalent) |
//! | `tools[]` custom (no `type`, or `"custom"`) | `{"type":"function","function":{name,description,parameters: input_schema}}` |
//! | `tools[]` server tools (`web_search_…`, `bash_…`, …) | dropped, or 400 |
//! | `tool_choice` `auto` / `any` / `tool` / `none` | `"auto"` / `"required"` / `{"type":"function","function":{"name"}}` / `"none"` (left out when no tool remains) |
//! | `tool_choice.disable_parallel_tool_use: true` | `parallel_tool_calls: false` |
//! | `max_tokens` (required) | `max_tokens` (not `max_completion_tokens`: many OpenAI-compatible servers only know `max_tokens`, and OpenAI still accepts it for non-reasoning models) |
//! | `temperature`, `top_p` | the same |
//! | `top_k`, `container`, `mcp_servers` | dropped, or 400 |
//! | `stop_sequences` | `stop` |
//! | `metadata.user_id` | `user` |
//! | `stream: true` | `stream: true`, `stream_options: {"include_usage": true}` always |
//! | `thinking: {type: enabled, budget_tokens}` | `reasoning_effort`: `low` up to 2048, `medium` up to 8192, `high` above |
//! | `thinking: {type: disabled}` | nothing |
//! | any other field (`service_tier`, …) | ignored |
//!
//! A missing `model`, `messages` or `max_tokens`, or a field of the wrong
//! type, is a 400 `invalid_request_error` whose message starts with the
//! field's path (`messages.1.content.0.source: …`), as Anthropic's own.
//!
//! # Responses (OpenAI `chat.completion` -> Anthropic Message)
//!
//! | OpenAI | Anthropic |
//! | --- | --- |
//! | `id` | `"msg_" + id` (as is when it starts with `msg_`; `msg_unknown` when absent) |
//! | `choices[0].message.thinking_blocks` | `thinking` / `redacted_thinking` blocks, first |
//! | else `reasoning_content` (or `reasoning`) | one `thinking` block with an empty `signature` (OpenAI gives none; an empty one tells a client there is nothing to verify) |
//! | `content` (non-empty) | a `text` block |
//! | `tool_calls[]` | `tool_use` blocks; `input` = `arguments` parsed; arguments that are empty, not JSON, or JSON but not an object become `{}` (Anthropic's `input` is always an object) |
//! | `finish_reason` `stop` / `length` / `tool_calls`, `function_call` / `content_filter` | `end_turn` (`tool_use` when the answer holds a tool call: Ollama and others say `stop` there) / `max_tokens` / `tool_use` / `refusal` |
//! | (stop sequences) | `stop_sequence` is always `null`: OpenAI does not say which one matched |
//! | `usage` | `input_tokens` = `prompt_tokens - cached_tokens - cache_creation_input_tokens`, `cache_read_input_tokens` = `prompt_tokens_details.cached_tokens`, `cache_creation_input_tokens` (when the upstream gives one, else 0), `output_tokens` = `completion_tokens` |
//!
//! # Streams (OpenAI chunks -> Anthropic events)
//!
//! The first chunk opens `message_start` (its `usage` zero: OpenAI counts
//! only at the end). `reasoning_content` (or `reasoning`) deltas become a
//! `thinking` block, a `thinking_blocks` signature a `signature_delta`,
//! `content` deltas a `text` block, each tool call (by its OpenAI `index`)
//! a `tool_use` block with `input_json_delta`s. A block of another kind
//! closes the open one; blocks are numbered from 0 in the order opened.
//! `finish_reason` closes the open block; the final counts go in
//! `message_delta`'s `usage` at `[DONE]`, as `input_tokens`,
//! `output_tokens`, `cache_read_input_tokens` and
//! `cache_creation_input_tokens`: the Anthropic SDKs' accumulators
//! (`accumulate_event` in anthropic-sdk-python's
//! `lib/streaming/_messages.py`) take `output_tokens` from
//! `message_delta` always and each of the other three when present.
//!
//! Tool calls whose chunks interleave (arguments for index 0 after index
//! 1 began) stay with their call: the arguments of the call whose block
//! is open stream through as they come; any other call is held (its
//! arguments buffered) until the open call's arguments form a complete
//! JSON value, then opened with its buffered arguments in one delta; at
//! `finish_reason` every held call is opened in turn. Arguments arriving
//! for a call whose block was already closed (by text in between, or
//! after its JSON was complete) are dropped: Anthropic blocks cannot
//! reopen. At most [`MAX_TOOL_CALLS`] calls per stream and
//! [`MAX_HELD_ARGUMENTS`] bytes of held arguments: past either, the
//! stream ends with an `error` event.
//!
//! An OpenAI error chunk (`{"error":{…}}`), a chunk that is not JSON,
//! [`StreamMapper::fail`], or an upstream that ends before any
//! `finish_reason` end the stream with an `error` event and nothing after
//! it; the usage is then flagged truncated. An upstream that ends after
//! its `finish_reason` without `[DONE]` is closed normally.

use std::borrow::Cow;
use std::fmt;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{RequestOptions, StreamMapper, Translated, Unsupported, Usage, sse};
use crate::model::OpenAiError;

/// The most tool calls one stream may open; past it the stream ends with
/// an `error` event.
pub const MAX_TOOL_CALLS: usize = 1024;

/// The most bytes of tool-call arguments a stream holds back (for calls
/// waiting for the open one to complete); past it the stream ends with an
/// `error` event.
pub const MAX_HELD_ARGUMENTS: usize = 1 << 20;

/// The most bytes of a non-JSON upstream error body shown to the client.
const MAX_ECHO: usize = 200;

// === impl MessagesError ===

/// An error in Anthropic's shape, `{"type":"error","error":{"type",
/// "message"}}`, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagesError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl MessagesError {
    /// An error with this status, Anthropic error `type`
    /// (`invalid_request_error`, `api_error`, ...) and message.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The Anthropic error `type`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The body: `{"type":"error","error":{"type","message"}}`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.message.len());
        // Serializing strings into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &ErrorEvent::new(self.kind, &self.message));
        out
    }

    /// One of the router's own errors (an unknown model, a bad body)
    /// shown to an Anthropic client: the status and message kept, the
    /// type named after the status.
    pub fn from_openai(e: &OpenAiError) -> Self {
        Self::new(e.status(), kind_for_status(e.status()), e.message())
    }
}

impl fmt::Display for MessagesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.kind, self.status, self.message)
    }
}

impl std::error::Error for MessagesError {}

#[derive(Serialize)]
struct ErrorEvent<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

impl<'a> ErrorEvent<'a> {
    fn new(kind: &'a str, message: &'a str) -> Self {
        Self {
            kind: "error",
            error: ErrorDetail { kind, message },
        }
    }
}

/// Anthropic's error type for an HTTP status.
fn kind_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        402 | 405..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// Anthropic's error type for an OpenAI error `type` (in a stream, where
/// there is no status).
fn kind_for_openai_type(kind: &str) -> &'static str {
    match kind {
        "invalid_request_error" | "invalid_request" | "BadRequestError" => "invalid_request_error",
        "authentication_error" | "invalid_api_key" => "authentication_error",
        "permission_error" | "permission_denied" => "permission_error",
        "not_found_error" | "model_not_found" => "not_found_error",
        "rate_limit_error" | "rate_limit_exceeded" | "insufficient_quota" | "tokens" => {
            "rate_limit_error"
        }
        "overloaded_error" | "server_overloaded" => "overloaded_error",
        _ => "api_error",
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// === Anthropic requests, as read ===

/// A string that borrows from the body when it holds no escapes.
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    system: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    temperature: Option<&'a RawValue>,
    #[serde(borrow)]
    top_p: Option<&'a RawValue>,
    #[serde(borrow)]
    top_k: Option<&'a RawValue>,
    #[serde(borrow)]
    stop_sequences: Option<&'a RawValue>,
    #[serde(borrow)]
    metadata: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    tools: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_choice: Option<&'a RawValue>,
    #[serde(borrow)]
    thinking: Option<&'a RawValue>,
    #[serde(borrow)]
    container: Option<&'a RawValue>,
    #[serde(borrow)]
    mcp_servers: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// Every block type's fields, flat (an internally tagged enum would
/// buffer each block).
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Source<'a>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_use_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    is_error: Option<bool>,
    #[serde(borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow)]
    signature: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Source<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    media_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
    #[serde(borrow)]
    url: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolChoice<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
struct Thinking<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    budget_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow)]
    user_id: Option<Cow<'a, str>>,
}

// === OpenAI Chat requests, as written ===

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<Vec<Cow<'a, str>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ChatTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ChatToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'static str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<IncludeUsage>,
}

#[derive(Serialize)]
struct IncludeUsage {
    include_usage: bool,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: Option<ChatContent<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ChatToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    thinking_blocks: Vec<ThinkingBlock<'a>>,
}

impl<'a> ChatMessage<'a> {
    fn new(role: &'static str, content: Option<ChatContent<'a>>) -> Self {
        Self {
            role,
            content,
            tool_calls: Vec::new(),
            tool_call_id: None,
            reasoning_content: None,
            thinking_blocks: Vec::new(),
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum ChatContent<'a> {
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part<'a> {
    Text { text: Cow<'a, str> },
    ImageUrl { image_url: ImageUrl<'a> },
}

#[derive(Serialize)]
struct ImageUrl<'a> {
    url: Cow<'a, str>,
}

#[derive(Serialize)]
struct ChatToolCall<'a> {
    id: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: &'static str,
    function: ChatFunction<'a>,
}

#[derive(Serialize)]
struct ChatFunction<'a> {
    name: Cow<'a, str>,
    arguments: &'a str,
}

/// A thinking block kept on an assistant message (LiteLLM's
/// `thinking_blocks`), and read back from an answer.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ThinkingBlock<'a> {
    Thinking {
        #[serde(borrow, default)]
        thinking: Cow<'a, str>,
        #[serde(borrow, default)]
        signature: Cow<'a, str>,
    },
    RedactedThinking {
        #[serde(borrow, default)]
        data: Cow<'a, str>,
    },
}

#[derive(Serialize)]
struct ChatTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: ChatToolDef<'a>,
}

#[derive(Serialize)]
struct ChatToolDef<'a> {
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Cow<'a, str>>,
    parameters: &'a RawValue,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ChatToolChoice<'a> {
    Mode(&'static str),
    Named {
        #[serde(rename = "type")]
        kind: &'static str,
        function: NamedFunction<'a>,
    },
}

#[derive(Serialize)]
struct NamedFunction<'a> {
    name: Cow<'a, str>,
}

// === request_to_chat ===

/// Reads `raw` as a `T`, or a 400 naming `field`.
fn field<'a, T: Deserialize<'a>>(raw: &'a RawValue, field: &str) -> Result<T, MessagesError> {
    serde_json::from_str(raw.get())
        .map_err(|e| MessagesError::invalid(format!("{field}: {}", describe(&e))))
}

/// A serde error without its position (which is in the field, not the
/// client's body).
fn describe(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_owned(),
        None => s,
    }
}

fn is_string(raw: &RawValue) -> bool {
    raw.get().starts_with('"')
}

/// Leaves out what the upstream cannot honour, or refuses it.
fn unsupported(opts: &RequestOptions, what: impl FnOnce() -> String) -> Result<(), MessagesError> {
    match opts.unsupported {
        Unsupported::Drop => Ok(()),
        Unsupported::Reject => Err(MessagesError::invalid(what())),
    }
}

/// Translates an Anthropic Messages request body into an OpenAI Chat
/// Completions request body for `opts.model` (see the module docs for the
/// mapping). Anthropic clients always get usage with a stream, so a
/// streamed request asks for it (`include_usage` is then true).
pub fn request_to_chat(body: &[u8], opts: &RequestOptions) -> Result<Translated, MessagesError> {
    let req: Request<'_> = serde_json::from_slice(body)
        .map_err(|e| MessagesError::invalid(format!("The request body is not valid JSON: {e}")))?;

    match req.model {
        None => return Err(MessagesError::invalid("model: Field required")),
        Some(raw) => {
            field::<Str<'_>>(raw, "model")?;
        }
    }
    let max_tokens: u64 = match req.max_tokens {
        None => return Err(MessagesError::invalid("max_tokens: Field required")),
        Some(raw) => field(raw, "max_tokens")?,
    };
    let Some(messages) = req.messages else {
        return Err(MessagesError::invalid("messages: Field required"));
    };
    let messages: Vec<Message<'_>> = field(messages, "messages")?;

    let mut out = Vec::with_capacity(messages.len() + 1);
    if let Some(system) = req.system {
        out.push(ChatMessage::new(
            "system",
            Some(ChatContent::Text(system_text(system)?)),
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        let Some(content) = m.content else {
            return Err(MessagesError::invalid(format!(
                "messages.{i}.content: Field required"
            )));
        };
        match m.role.as_deref() {
            Some("user") => user_message(i, content, opts, &mut out)?,
            Some("assistant") => out.push(assistant_message(i, content, opts)?),
            Some(other) => {
                return Err(MessagesError::invalid(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant', not '{}'",
                    clip(other, 64)
                )));
            }
            None => {
                return Err(MessagesError::invalid(format!(
                    "messages.{i}.role: Field required"
                )));
            }
        }
    }

    for (name, raw) in [
        ("top_k", req.top_k),
        ("container", req.container),
        ("mcp_servers", req.mcp_servers),
    ] {
        if raw.is_some() {
            unsupported(opts, || {
                format!("{name}: not supported by this model's upstream")
            })?;
        }
    }
    if let Some(raw) = req.temperature {
        field::<f64>(raw, "temperature")?;
    }
    if let Some(raw) = req.top_p {
        field::<f64>(raw, "top_p")?;
    }
    let stop = req
        .stop_sequences
        .map(|raw| field::<Vec<Str<'_>>>(raw, "stop_sequences"))
        .transpose()?;
    let user = match req.metadata {
        Some(raw) => field::<Metadata<'_>>(raw, "metadata")?.user_id,
        None => None,
    };
    let stream = match req.stream {
        Some(raw) => field::<bool>(raw, "stream")?,
        None => false,
    };
    let reasoning_effort = match req.thinking {
        Some(raw) => {
            let t: Thinking<'_> = field(raw, "thinking")?;
            match (&*t.kind, t.budget_tokens) {
                ("enabled", Some(b)) if b <= 2048 => Some("low"),
                ("enabled", Some(b)) if b <= 8192 => Some("medium"),
                ("enabled", Some(_)) => Some("high"),
                ("enabled", None) => {
                    return Err(MessagesError::invalid(
                        "thinking.enabled.budget_tokens: Field required",
                    ));
                }
                ("disabled", _) => None,
                (other, _) => {
                    let other = clip(other, 64).to_owned();
                    unsupported(opts, || {
                        format!(
                            "thinking.type: '{other}' is not supported by this model's upstream"
                        )
                    })?;
                    None
                }
            }
        }
        None => None,
    };

    let tools = match req.tools {
        Some(raw) => chat_tools(field(raw, "tools")?, opts)?,
        None => Vec::new(),
    };
    let (tool_choice, parallel_tool_calls) = match req.tool_choice {
        Some(raw) if !tools.is_empty() => {
            let c: ToolChoice<'_> = field(raw, "tool_choice")?;
            let choice = match &*c.kind {
                "auto" => ChatToolChoice::Mode("auto"),
                "any" => ChatToolChoice::Mode("required"),
                "none" => ChatToolChoice::Mode("none"),
                "tool" => {
                    let Some(name) = c.name else {
                        return Err(MessagesError::invalid(
                            "tool_choice.tool.name: Field required",
                        ));
                    };
                    ChatToolChoice::Named {
                        kind: "function",
                        function: NamedFunction { name },
                    }
                }
                other => {
                    return Err(MessagesError::invalid(format!(
                        "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none', not '{}'",
                        clip(other, 64)
                    )));
                }
            };
            let parallel = c.disable_parallel_tool_use.and_then(|d| d.then_some(false));
            (Some(choice), parallel)
        }
        _ => (None, None),
    };

    let chat = ChatRequest {
        model: &opts.model,
        messages: out,
        max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        stop: stop.map(|s| s.into_iter().map(|s| s.0).collect()),
        user,
        tools,
        tool_choice,
        parallel_tool_calls,
        reasoning_effort,
        stream,
        stream_options: stream.then_some(IncludeUsage {
            include_usage: true,
        }),
    };
    let mut body = Vec::with_capacity(body.len() + 64);
    serde_json::to_writer(&mut body, &chat)
        .map_err(|e| MessagesError::invalid(format!("The request could not be translated: {e}")))?;
    Ok(Translated {
        body,
        stream,
        include_usage: stream,
    })
}

/// `system`: a string, or text blocks joined by `"\n"`.
fn system_text(raw: &RawValue) -> Result<Cow<'_, str>, MessagesError> {
    if is_string(raw) {
        return Ok(field::<Str<'_>>(raw, "system")?.0);
    }
    let blocks: Vec<Block<'_>> = field(raw, "system")?;
    let mut text = String::new();
    for (j, b) in blocks.into_iter().enumerate() {
        match (b.kind.as_deref(), b.text) {
            (Some("text"), Some(t)) => {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&t);
            }
            (Some("text"), None) => {
                return Err(MessagesError::invalid(format!(
                    "system.{j}.text: Field required"
                )));
            }
            _ => {
                return Err(MessagesError::invalid(format!(
                    "system.{j}.type: Input should be 'text'"
                )));
            }
        }
    }
    Ok(Cow::Owned(text))
}

fn user_message<'a>(
    i: usize,
    content: &'a RawValue,
    opts: &RequestOptions,
    out: &mut Vec<ChatMessage<'a>>,
) -> Result<(), MessagesError> {
    if is_string(content) {
        let text = field::<Str<'_>>(content, &format!("messages.{i}.content"))?.0;
        out.push(ChatMessage::new("user", Some(ChatContent::Text(text))));
        return Ok(());
    }
    let blocks: Vec<Block<'a>> = field(content, &format!("messages.{i}.content"))?;
    let mut parts = Vec::new();
    // Tool messages first: OpenAI wants them right after the assistant's
    // `tool_calls`, whatever order the client put its blocks in.
    for (j, b) in blocks.into_iter().enumerate() {
        match b.kind.as_deref() {
            Some("text") => {
                let Some(text) = b.text else {
                    return Err(MessagesError::invalid(format!(
                        "messages.{i}.content.{j}.text: Field required"
                    )));
                };
                parts.push(Part::Text { text });
            }
            Some("image") => {
                if let Some(url) = image_url(i, j, b.source, opts)? {
                    parts.push(Part::ImageUrl {
                        image_url: ImageUrl { url },
                    });
                }
            }
            Some("tool_result") => {
                let Some(id) = b.tool_use_id else {
                    return Err(MessagesError::invalid(format!(
                        "messages.{i}.content.{j}.tool_use_id: Field required"
                    )));
                };
                let text = tool_result_text(i, j, b.content, b.is_error == Some(true), opts)?;
                let mut m = ChatMessage::new("tool", Some(ChatContent::Text(text)));
                m.tool_call_id = Some(id);
                out.push(m);
            }
            other => {
                let other = other.unwrap_or("");
                unsupported(opts, || {
                    format!(
                        "messages.{i}.content.{j}: `{}` blocks are not supported by this model's upstream",
                        clip(other, 64)
                    )
                })?;
            }
        }
    }
    if !parts.is_empty() {
        out.push(ChatMessage::new("user", Some(ChatContent::Parts(parts))));
    }
    Ok(())
}

fn image_url<'a>(
    i: usize,
    j: usize,
    source: Option<Source<'a>>,
    opts: &RequestOptions,
) -> Result<Option<Cow<'a, str>>, MessagesError> {
    let Some(s) = source else {
        return Err(MessagesError::invalid(format!(
            "messages.{i}.content.{j}.source: Field required"
        )));
    };
    match (s.kind.as_deref(), s.media_type, s.data, s.url) {
        (Some("base64"), Some(media), Some(data), _) => {
            let mut url = String::with_capacity(13 + media.len() + 8 + data.len());
            url.push_str("data:");
            url.push_str(&media);
            url.push_str(";base64,");
            url.push_str(&data);
            Ok(Some(Cow::Owned(url)))
        }
        (Some("base64"), ..) => Err(MessagesError::invalid(format!(
            "messages.{i}.content.{j}.source: a base64 source needs `media_type` and `data`"
        ))),
        (Some("url"), _, _, Some(url)) => Ok(Some(url)),
        (Some("url"), ..) => Err(MessagesError::invalid(format!(
            "messages.{i}.content.{j}.source.url: Field required"
        ))),
        _ => {
            unsupported(opts, || {
                format!(
                    "messages.{i}.content.{j}.source: only base64 and url image sources are supported by this model's upstream"
                )
            })?;
            Ok(None)
        }
    }
}

/// A tool result's content as one string: the string, or its text blocks
/// joined by `"\n"`; `"Error: "` first when `is_error`.
fn tool_result_text<'a>(
    i: usize,
    j: usize,
    content: Option<&'a RawValue>,
    is_error: bool,
    opts: &RequestOptions,
) -> Result<Cow<'a, str>, MessagesError> {
    let text: Cow<'a, str> = match content {
        None => Cow::Borrowed(""),
        Some(raw) if is_string(raw) => {
            field::<Str<'a>>(raw, &format!("messages.{i}.content.{j}.content"))?.0
        }
        Some(raw) => {
            let blocks: Vec<Block<'a>> = field(raw, &format!("messages.{i}.content.{j}.content"))?;
            let mut text = String::new();
            for (k, b) in blocks.into_iter().enumerate() {
                match (b.kind.as_deref(), b.text) {
                    (Some("text"), Some(t)) => {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(&t);
                    }
                    (kind, _) => {
                        let kind = kind.unwrap_or("");
                        unsupported(opts, || {
                            format!(
                                "messages.{i}.content.{j}.content.{k}: `{}` blocks in a tool result are not supported by this model's upstream",
                                clip(kind, 64)
                            )
                        })?;
                    }
                }
            }
            Cow::Owned(text)
        }
    };
    Ok(if is_error {
        Cow::Owned(format!("Error: {text}"))
    } else {
        text
    })
}

fn assistant_message<'a>(
    i: usize,
    content: &'a RawValue,
    opts: &RequestOptions,
) -> Result<ChatMessage<'a>, MessagesError> {
    if is_string(content) {
        let text = field::<Str<'_>>(content, &format!("messages.{i}.content"))?.0;
        return Ok(ChatMessage::new("assistant", Some(ChatContent::Text(text))));
    }
    let blocks: Vec<Block<'a>> = field(content, &format!("messages.{i}.content"))?;
    let mut text: Option<Cow<'a, str>> = None;
    let mut m = ChatMessage::new("assistant", None);
    let mut reasoning: Option<String> = None;
    for (j, b) in blocks.into_iter().enumerate() {
        match b.kind.as_deref() {
            Some("text") => {
                let Some(t) = b.text else {
                    return Err(MessagesError::invalid(format!(
                        "messages.{i}.content.{j}.text: Field required"
                    )));
                };
                text = Some(match text {
                    None => t,
                    Some(prev) => Cow::Owned(prev.into_owned() + &t),
                });
            }
            Some("tool_use") => {
                let (Some(id), Some(name)) = (b.id, b.name) else {
                    return Err(MessagesError::invalid(format!(
                        "messages.{i}.content.{j}: a `tool_use` block needs `id` and `name`"
                    )));
                };
                m.tool_calls.push(ChatToolCall {
                    id,
                    kind: "function",
                    function: ChatFunction {
                        name,
                        arguments: b.input.map_or("{}", RawValue::get),
                    },
                });
            }
            Some("thinking") => {
                let thinking = b.thinking.unwrap_or_default();
                reasoning
                    .get_or_insert_with(String::new)
                    .push_str(&thinking);
                m.thinking_blocks.push(ThinkingBlock::Thinking {
                    thinking,
                    signature: b.signature.unwrap_or_default(),
                });
            }
            Some("redacted_thinking") => {
                m.thinking_blocks.push(ThinkingBlock::RedactedThinking {
                    data: b.data.unwrap_or_default(),
                });
            }
            other => {
                let other = other.unwrap_or("");
                unsupported(opts, || {
                    format!(
                        "messages.{i}.content.{j}: `{}` blocks are not supported by this model's upstream",
                        clip(other, 64)
                    )
                })?;
            }
        }
    }
    m.content = text.map(ChatContent::Text);
    m.reasoning_content = reasoning;
    Ok(m)
}

fn chat_tools<'a>(
    tools: Vec<Tool<'a>>,
    opts: &RequestOptions,
) -> Result<Vec<ChatTool<'a>>, MessagesError> {
    let mut out = Vec::with_capacity(tools.len());
    for (i, t) in tools.into_iter().enumerate() {
        match t.kind.as_deref() {
            None | Some("custom") => {
                let Some(name) = t.name else {
                    return Err(MessagesError::invalid(format!(
                        "tools.{i}.name: Field required"
                    )));
                };
                let Some(parameters) = t.input_schema else {
                    return Err(MessagesError::invalid(format!(
                        "tools.{i}.input_schema: Field required"
                    )));
                };
                out.push(ChatTool {
                    kind: "function",
                    function: ChatToolDef {
                        name,
                        description: t.description,
                        parameters,
                    },
                });
            }
            Some(kind) => {
                unsupported(opts, || {
                    format!(
                        "tools.{i}: server tools (`{}`) are not supported by this model's upstream",
                        clip(kind, 64)
                    )
                })?;
            }
        }
    }
    Ok(out)
}

// === OpenAI answers, as read ===

#[derive(Deserialize)]
struct Completion<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    choices: Option<Vec<Choice<'a>>>,
    usage: Option<ChatUsage>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    message: Option<AnswerMessage<'a>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AnswerMessage<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thinking_blocks: Option<Vec<ThinkingBlock<'a>>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<AnswerToolCall<'a>>>,
}

#[derive(Deserialize)]
struct AnswerToolCall<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<AnswerFunction<'a>>,
}

#[derive(Deserialize)]
struct AnswerFunction<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
struct ChatUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
struct CompletionDetails {
    reasoning_tokens: Option<u64>,
}

impl ChatUsage {
    fn normalized(&self) -> Usage {
        Usage {
            input: self.prompt_tokens.unwrap_or(0),
            cached_read: self
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write: self.cache_creation_input_tokens.unwrap_or(0),
            output: self.completion_tokens.unwrap_or(0),
            reasoning: self
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            truncated: false,
        }
    }
}

// === Anthropic answers, as written ===

#[derive(Serialize)]
struct AnthropicUsage {
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
}

impl AnthropicUsage {
    fn new(u: &Usage) -> Self {
        Self {
            input_tokens: u
                .input
                .saturating_sub(u.cached_read)
                .saturating_sub(u.cache_write),
            output_tokens: u.output,
            cache_creation_input_tokens: u.cache_write,
            cache_read_input_tokens: u.cached_read,
        }
    }
}

#[derive(Serialize)]
struct AnthropicMessage<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<OutBlock<'a>>,
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'static str>,
    usage: AnthropicUsage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum OutBlock<'a> {
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        data: &'a str,
    },
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Input<'a>,
    },
}

fn message_id(id: Option<&str>) -> String {
    match id {
        Some(id) if id.starts_with("msg_") => id.to_owned(),
        Some(id) if !id.is_empty() => format!("msg_{id}"),
        _ => "msg_unknown".to_owned(),
    }
}

/// Anthropic's stop reason for an OpenAI finish reason.
fn stop_reason(finish: &str, saw_tool: bool) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ if saw_tool => "tool_use",
        _ => "end_turn",
    }
}

/// A tool call's `input`: the arguments when they are a JSON object, else
/// `{}`.
fn tool_input(arguments: &str) -> Input<'_> {
    match serde_json::from_str::<&RawValue>(arguments) {
        Ok(raw) if raw.get().starts_with('{') => Input::Raw(raw),
        _ => Input::Empty(Empty {}),
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum Input<'a> {
    Raw(&'a RawValue),
    Empty(Empty),
}

/// Translates an OpenAI `chat.completion` body into an Anthropic Message
/// (`model` as the client named it), with its usage. A body that is not a
/// completion is a 502 `api_error`.
pub fn response_from_chat(body: &[u8], model: &str) -> Result<(Vec<u8>, Usage), MessagesError> {
    let bad = || {
        MessagesError::new(
            StatusCode::BAD_GATEWAY,
            "api_error",
            "The upstream's answer could not be read.",
        )
    };
    let c: Completion<'_> = serde_json::from_slice(body).map_err(|_| bad())?;
    let choice = c
        .choices
        .and_then(|v| v.into_iter().next())
        .ok_or_else(bad)?;
    let usage = c.usage.unwrap_or_default().normalized();
    let id = message_id(c.id.as_deref());

    let (msg, tool_calls) = match choice.message {
        Some(mut m) => {
            let calls = m.tool_calls.take();
            (Some(m), calls)
        }
        None => (None, None),
    };
    let mut content = Vec::new();
    if let Some(m) = &msg {
        match (
            &m.thinking_blocks,
            m.reasoning_content.as_deref().or(m.reasoning.as_deref()),
        ) {
            (Some(blocks), _) if !blocks.is_empty() => {
                for b in blocks {
                    content.push(match b {
                        ThinkingBlock::Thinking {
                            thinking,
                            signature,
                        } => OutBlock::Thinking {
                            thinking,
                            signature,
                        },
                        ThinkingBlock::RedactedThinking { data } => {
                            OutBlock::RedactedThinking { data }
                        }
                    });
                }
            }
            (_, Some(r)) if !r.is_empty() => content.push(OutBlock::Thinking {
                thinking: r,
                signature: "",
            }),
            _ => {}
        }
        if let Some(text) = m.content.as_deref().filter(|t| !t.is_empty()) {
            content.push(OutBlock::Text { text });
        }
    }
    let arguments: Vec<(Cow<'_, str>, Cow<'_, str>, Cow<'_, str>)> = tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            let f = t.function.unwrap_or(AnswerFunction {
                name: None,
                arguments: None,
            });
            (
                t.id.unwrap_or_default(),
                f.name.unwrap_or_default(),
                f.arguments.unwrap_or_default(),
            )
        })
        .collect();
    let saw_tool = !arguments.is_empty();
    for (id, name, args) in &arguments {
        content.push(OutBlock::ToolUse {
            id,
            name,
            input: tool_input(args),
        });
    }
    let stop = stop_reason(choice.finish_reason.as_deref().unwrap_or("stop"), saw_tool);
    let message = AnthropicMessage {
        id: &id,
        kind: "message",
        role: "assistant",
        model,
        content,
        stop_reason: Some(stop),
        stop_sequence: None,
        usage: AnthropicUsage::new(&usage),
    };
    let mut out = Vec::with_capacity(body.len() + 64);
    serde_json::to_writer(&mut out, &message).map_err(|_| bad())?;
    Ok((out, usage))
}

/// Translates an upstream's OpenAI-shaped error response (any status,
/// any body) into an Anthropic error with the same status: the message
/// from `error.message` (or a string `error`, or a top-level `message`),
/// else at most 200 bytes of the body, else the status's reason.
pub fn error_from_chat(status: StatusCode, body: &[u8]) -> MessagesError {
    #[derive(Deserialize)]
    struct Doc<'a> {
        #[serde(borrow)]
        error: Option<ErrField<'a>>,
        #[serde(borrow)]
        message: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ErrField<'a> {
        Text(#[serde(borrow)] Cow<'a, str>),
        Object {
            #[serde(borrow)]
            message: Option<Cow<'a, str>>,
        },
    }
    let kind = kind_for_status(status);
    let message = match serde_json::from_slice::<Doc<'_>>(body) {
        Ok(Doc {
            error: Some(ErrField::Text(m)) | Some(ErrField::Object { message: Some(m) }),
            ..
        })
        | Ok(Doc {
            message: Some(m), ..
        }) => m.into_owned(),
        _ => {
            let text = String::from_utf8_lossy(body);
            let text = clip(text.trim(), MAX_ECHO);
            if text.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("Upstream error")
                    .to_owned()
            } else {
                text.to_owned()
            }
        }
    };
    MessagesError::new(status, kind, message)
}

// === impl MessagesStream ===

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    choices: Option<Vec<ChunkChoice<'a>>>,
    usage: Option<ChatUsage>,
    #[serde(borrow)]
    error: Option<ChunkError<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChunkError<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Object {
        #[serde(borrow)]
        message: Option<Cow<'a, str>>,
        #[serde(rename = "type", borrow)]
        kind: Option<Cow<'a, str>>,
    },
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thinking_blocks: Option<Vec<ThinkingBlock<'a>>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<DeltaToolCall<'a>>>,
}

#[derive(Deserialize)]
struct DeltaToolCall<'a> {
    index: Option<u32>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<AnswerFunction<'a>>,
}

/// Whether a JSON text, fed in pieces, has closed its outermost object.
#[derive(Debug, Default, Clone, Copy)]
struct JsonEnd {
    depth: u32,
    in_string: bool,
    escaped: bool,
    complete: bool,
}

impl JsonEnd {
    fn feed(&mut self, s: &str) {
        for b in s.bytes() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        self.complete = true;
                    }
                }
                _ => {}
            }
        }
    }
}

#[derive(Debug)]
enum CallState {
    /// Not opened yet: its arguments are held in `held`.
    Held,
    /// Its block is open.
    Open,
    /// Its block was closed; later arguments are dropped.
    Closed,
}

#[derive(Debug)]
struct Call {
    index: u32,
    id: String,
    name: String,
    held: String,
    json: JsonEnd,
    state: CallState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Thinking,
    Text,
    /// The position of the call in `calls`.
    Tool(usize),
}

/// Translates an OpenAI `chat.completion.chunk` stream into Anthropic
/// Messages events (see the module docs), with bounded state.
#[derive(Debug)]
pub struct MessagesStream {
    model: String,
    started: bool,
    done: bool,
    /// The open block: its kind and index.
    open: Option<(Open, u32)>,
    next_block: u32,
    calls: Vec<Call>,
    held_bytes: usize,
    finish: Option<&'static str>,
    usage: Option<ChatUsage>,
    truncated: bool,
    scratch: Vec<u8>,
}

// The events written, as serialized.

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: StartMessage<'a>,
}

#[derive(Serialize)]
struct StartMessage<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: [(); 0],
    stop_reason: Option<()>,
    stop_sequence: Option<()>,
    usage: ZeroUsage,
}

#[derive(Serialize)]
struct ZeroUsage {
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize)]
struct BlockStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    content_block: StartBlock<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock<'a> {
    Thinking {
        thinking: &'static str,
        signature: &'static str,
    },
    RedactedThinking {
        data: &'a str,
    },
    Text {
        text: &'static str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Empty,
    },
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct BlockDelta<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    delta: DeltaOut<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DeltaOut<'a> {
    ThinkingDelta { thinking: &'a str },
    SignatureDelta { signature: &'a str },
    TextDelta { text: &'a str },
    InputJsonDelta { partial_json: &'a str },
}

#[derive(Serialize)]
struct BlockStop {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
}

#[derive(Serialize)]
struct MessageDelta {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta,
    usage: DeltaUsage,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum DeltaUsage {
    Counted(AnthropicUsage),
    Unknown { output_tokens: u64 },
}

fn emit<T: Serialize>(scratch: &mut Vec<u8>, out: &mut Vec<u8>, name: &str, value: &T) {
    scratch.clear();
    // Serializing these structs into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *scratch, value);
    sse::write_event(out, name, scratch);
}

fn delta_event(scratch: &mut Vec<u8>, out: &mut Vec<u8>, index: u32, delta: DeltaOut<'_>) {
    emit(
        scratch,
        out,
        "content_block_delta",
        &BlockDelta {
            kind: "content_block_delta",
            index,
            delta,
        },
    );
}

impl MessagesStream {
    /// A stream answering as `model` (the name the client asked for).
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            started: false,
            done: false,
            open: None,
            next_block: 0,
            calls: Vec::new(),
            held_bytes: 0,
            finish: None,
            usage: None,
            truncated: false,
            scratch: Vec::with_capacity(256),
        }
    }

    fn start(&mut self, id: Option<&str>, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let id = message_id(id);
        emit(
            &mut self.scratch,
            out,
            "message_start",
            &MessageStart {
                kind: "message_start",
                message: StartMessage {
                    id: &id,
                    kind: "message",
                    role: "assistant",
                    model: &self.model,
                    content: [],
                    stop_reason: None,
                    stop_sequence: None,
                    usage: ZeroUsage {
                        input_tokens: 0,
                        output_tokens: 0,
                    },
                },
            },
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((kind, index)) = self.open.take() {
            if let Open::Tool(c) = kind
                && let Some(call) = self.calls.get_mut(c)
            {
                call.state = CallState::Closed;
            }
            emit(
                &mut self.scratch,
                out,
                "content_block_stop",
                &BlockStop {
                    kind: "content_block_stop",
                    index,
                },
            );
        }
    }

    /// Opens a block of `kind` (closing another), returning its index.
    fn open(&mut self, kind: Open, block: StartBlock<'_>, out: &mut Vec<u8>) -> u32 {
        self.close(out);
        let index = self.next_block;
        self.next_block = self.next_block.saturating_add(1);
        self.open = Some((kind, index));
        emit(
            &mut self.scratch,
            out,
            "content_block_start",
            &BlockStart {
                kind: "content_block_start",
                index,
                content_block: block,
            },
        );
        index
    }

    /// The open block's index if it is of `kind`, else a new one's.
    fn ensure(&mut self, kind: Open, out: &mut Vec<u8>) -> u32 {
        match self.open {
            Some((k, index)) if k == kind => index,
            _ => {
                let block = match kind {
                    Open::Thinking => StartBlock::Thinking {
                        thinking: "",
                        signature: "",
                    },
                    _ => StartBlock::Text { text: "" },
                };
                self.open(kind, block, out)
            }
        }
    }

    /// Opens the held call at `c` with its held arguments.
    fn open_call(&mut self, c: usize, out: &mut Vec<u8>) {
        let Some(call) = self.calls.get_mut(c) else {
            return;
        };
        call.state = CallState::Open;
        let held = std::mem::take(&mut call.held);
        self.held_bytes = self.held_bytes.saturating_sub(held.len());
        // Taken for the event, put back after (ids name later chunks).
        let (id, name) = (std::mem::take(&mut call.id), std::mem::take(&mut call.name));
        let index = self.open(
            Open::Tool(c),
            StartBlock::ToolUse {
                id: &id,
                name: &name,
                input: Empty {},
            },
            out,
        );
        if !held.is_empty() {
            delta_event(
                &mut self.scratch,
                out,
                index,
                DeltaOut::InputJsonDelta {
                    partial_json: &held,
                },
            );
        }
        if let Some(call) = self.calls.get_mut(c) {
            call.id = id;
            call.name = name;
        }
    }

    /// While the open block is not a tool call still receiving its
    /// arguments, opens held calls in the order they began.
    fn open_held(&mut self, out: &mut Vec<u8>) {
        loop {
            if let Some((Open::Tool(c), _)) = self.open
                && self.calls.get(c).is_some_and(|call| !call.json.complete)
            {
                return;
            }
            let Some(next) = self
                .calls
                .iter()
                .position(|c| matches!(c.state, CallState::Held) && !c.name.is_empty())
            else {
                return;
            };
            self.open_call(next, out);
        }
    }

    fn tool_delta(&mut self, tc: DeltaToolCall<'_>, out: &mut Vec<u8>) -> Result<(), &'static str> {
        let (name, args) = match tc.function {
            Some(f) => (f.name, f.arguments),
            None => (None, None),
        };
        // Servers that leave out `index` send one call at a time: an `id`
        // not seen before begins the next call, anything else continues
        // the last one.
        let index = match tc.index {
            Some(i) => i,
            None => match tc.id.as_deref().filter(|id| !id.is_empty()) {
                Some(id) => match self.calls.iter().find(|c| c.id == id) {
                    Some(c) => c.index,
                    None => self
                        .calls
                        .iter()
                        .map(|c| c.index.saturating_add(1))
                        .max()
                        .unwrap_or(0),
                },
                None => self.calls.last().map_or(0, |c| c.index),
            },
        };
        let c = match self.calls.iter().rposition(|c| c.index == index) {
            Some(c) => c,
            None => {
                if self.calls.len() >= MAX_TOOL_CALLS {
                    return Err(
                        "The upstream's answer has more tool calls than the gateway passes on.",
                    );
                }
                self.calls.push(Call {
                    index,
                    id: String::new(),
                    name: String::new(),
                    held: String::new(),
                    json: JsonEnd::default(),
                    state: CallState::Held,
                });
                self.calls.len() - 1
            }
        };
        let Some(call) = self.calls.get_mut(c) else {
            return Ok(());
        };
        match call.state {
            CallState::Closed => return Ok(()),
            CallState::Open => {
                if let Some(args) = args.as_deref().filter(|a| !a.is_empty()) {
                    call.json.feed(args);
                    let index = self.open.map_or(0, |(_, i)| i);
                    delta_event(
                        &mut self.scratch,
                        out,
                        index,
                        DeltaOut::InputJsonDelta { partial_json: args },
                    );
                }
            }
            CallState::Held => {
                if call.id.is_empty()
                    && let Some(id) = tc.id
                {
                    call.id = id.into_owned();
                }
                if let Some(name) = name {
                    call.name.push_str(&name);
                }
                if let Some(args) = args.as_deref().filter(|a| !a.is_empty()) {
                    self.held_bytes = self.held_bytes.saturating_add(args.len());
                    if self.held_bytes > MAX_HELD_ARGUMENTS {
                        return Err(
                            "The upstream's tool call arguments exceed what the gateway holds back.",
                        );
                    }
                    call.json.feed(args);
                    call.held.push_str(args);
                }
                // A text or thinking block gives way to the call.
                if matches!(self.open, Some((Open::Text | Open::Thinking, _)))
                    && !call.name.is_empty()
                {
                    self.close(out);
                }
            }
        }
        self.open_held(out);
        Ok(())
    }

    fn chunk(&mut self, chunk: Chunk<'_>, out: &mut Vec<u8>) -> Result<(), &'static str> {
        self.start(chunk.id.as_deref(), out);
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        let Some(choice) = chunk.choices.and_then(|c| c.into_iter().next()) else {
            return Ok(());
        };
        if let Some(delta) = choice.delta {
            let reasoning = delta.reasoning_content.or(delta.reasoning);
            if let Some(r) = reasoning.as_deref().filter(|r| !r.is_empty()) {
                let index = self.ensure(Open::Thinking, out);
                delta_event(
                    &mut self.scratch,
                    out,
                    index,
                    DeltaOut::ThinkingDelta { thinking: r },
                );
            }
            for b in delta.thinking_blocks.into_iter().flatten() {
                // The text of a thinking block repeats `reasoning_content`
                // when both come (LiteLLM's shape): taken only alone.
                if reasoning.is_none()
                    && let ThinkingBlock::Thinking { thinking, .. } = &b
                    && !thinking.is_empty()
                {
                    let index = self.ensure(Open::Thinking, out);
                    delta_event(
                        &mut self.scratch,
                        out,
                        index,
                        DeltaOut::ThinkingDelta { thinking },
                    );
                }
                match b {
                    ThinkingBlock::Thinking { signature, .. } if !signature.is_empty() => {
                        let index = self.ensure(Open::Thinking, out);
                        delta_event(
                            &mut self.scratch,
                            out,
                            index,
                            DeltaOut::SignatureDelta {
                                signature: &signature,
                            },
                        );
                    }
                    ThinkingBlock::Thinking { .. } => {}
                    ThinkingBlock::RedactedThinking { data } => {
                        // One whole block, closed at once.
                        self.open(
                            Open::Thinking,
                            StartBlock::RedactedThinking { data: &data },
                            out,
                        );
                        self.close(out);
                    }
                }
            }
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                let index = self.ensure(Open::Text, out);
                delta_event(
                    &mut self.scratch,
                    out,
                    index,
                    DeltaOut::TextDelta { text: &text },
                );
            }
            for tc in delta.tool_calls.into_iter().flatten() {
                self.tool_delta(tc, out)?;
            }
        }
        if let Some(finish) = choice.finish_reason {
            self.end_blocks(out);
            let saw_tool = !self.calls.is_empty();
            self.finish = Some(stop_reason(&finish, saw_tool));
        }
        Ok(())
    }

    /// Closes the open block and opens (and closes) every held call.
    fn end_blocks(&mut self, out: &mut Vec<u8>) {
        self.close(out);
        while let Some(next) = self
            .calls
            .iter()
            .position(|c| matches!(c.state, CallState::Held))
        {
            self.open_call(next, out);
            self.close(out);
        }
    }

    fn error(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        self.truncated = true;
        emit(
            &mut self.scratch,
            out,
            "error",
            &ErrorEvent::new(kind, message),
        );
    }

    fn stop(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.start(None, out);
        self.end_blocks(out);
        let saw_tool = !self.calls.is_empty();
        let stop = self
            .finish
            .unwrap_or(if saw_tool { "tool_use" } else { "end_turn" });
        let usage = match &self.usage {
            Some(u) => DeltaUsage::Counted(AnthropicUsage::new(&u.normalized())),
            None => DeltaUsage::Unknown { output_tokens: 0 },
        };
        emit(
            &mut self.scratch,
            out,
            "message_delta",
            &MessageDelta {
                kind: "message_delta",
                delta: StopDelta {
                    stop_reason: stop,
                    stop_sequence: None,
                },
                usage,
            },
        );
        emit(
            &mut self.scratch,
            out,
            "message_stop",
            &BlockStopless {
                kind: "message_stop",
            },
        );
        self.done = true;
    }
}

#[derive(Serialize)]
struct BlockStopless {
    #[serde(rename = "type")]
    kind: &'static str,
}

impl StreamMapper for MessagesStream {
    fn event(&mut self, event: &sse::Event<'_>, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let data = event.data.trim();
        if data.is_empty() {
            return;
        }
        if data == "[DONE]" {
            self.stop(out);
            return;
        }
        let chunk: Chunk<'_> = match serde_json::from_str(data) {
            Ok(c) => c,
            Err(_) => {
                self.error(
                    "api_error",
                    "The upstream sent an event that could not be read.",
                    out,
                );
                return;
            }
        };
        match &chunk.error {
            Some(ChunkError::Text(m)) => {
                let m = m.clone();
                self.error("api_error", &m, out);
                return;
            }
            Some(ChunkError::Object { message, kind }) => {
                let kind = kind_for_openai_type(kind.as_deref().unwrap_or(""));
                let message = message
                    .as_deref()
                    .unwrap_or("The upstream failed.")
                    .to_owned();
                self.error(kind, &message, out);
                return;
            }
            None => {}
        }
        if let Err(message) = self.chunk(chunk, out) {
            self.error("api_error", message, out);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if self.finish.is_some() {
            self.stop(out);
        } else {
            self.error(
                "api_error",
                "The upstream's stream ended before its answer was complete.",
                out,
            );
        }
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        self.error("api_error", message, out);
    }

    fn usage(&self) -> Usage {
        let mut u = self.usage.map(|u| u.normalized()).unwrap_or_default();
        u.truncated = self.truncated;
        u
    }
}
