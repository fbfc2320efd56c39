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

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// `Option<Cow<str>>` borrowing when it can (serde's own impl for `Cow`
/// always copies, and `#[serde(borrow)]` does not reach through `Option`).
fn opt_str<'de: 'a, 'a, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    Ok(Option::<Str<'de>>::deserialize(d)?.map(|s| s.0))
}

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
    #[serde(borrow, default, deserialize_with = "opt_str")]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// Every block type's fields, flat (an internally tagged enum would
/// buffer each block).
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "opt_str")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source: Option<Source<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    tool_use_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    is_error: Option<bool>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    signature: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    data: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Source<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "opt_str")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    media_type: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    data: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    url: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Tool<'a> {
    #[serde(rename = "type", borrow, default, deserialize_with = "opt_str")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    description: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input_schema: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolChoice<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    name: Option<Cow<'a, str>>,
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Deserialize)]
struct Thinking<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    budget_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
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
    field_at(raw, || field.to_owned())
}

/// [`field`], its name made only when needed.
fn field_at<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    field: impl FnOnce() -> String,
) -> Result<T, MessagesError> {
    serde_json::from_str(raw.get())
        .map_err(|e| MessagesError::invalid(format!("{}: {}", field(), describe(&e))))
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
        let text = field_at::<Str<'_>>(content, || format!("messages.{i}.content"))?.0;
        out.push(ChatMessage::new("user", Some(ChatContent::Text(text))));
        return Ok(());
    }
    let blocks: Vec<Block<'a>> = field_at(content, || format!("messages.{i}.content"))?;
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
            field_at::<Str<'a>>(raw, || format!("messages.{i}.content.{j}.content"))?.0
        }
        Some(raw) => {
            let blocks: Vec<Block<'a>> =
                field_at(raw, || format!("messages.{i}.content.{j}.content"))?;
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
        let text = field_at::<Str<'_>>(content, || format!("messages.{i}.content"))?.0;
        return Ok(ChatMessage::new("assistant", Some(ChatContent::Text(text))));
    }
    let blocks: Vec<Block<'a>> = field_at(content, || format!("messages.{i}.content"))?;
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
    #[serde(borrow, default, deserialize_with = "opt_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    choices: Option<Vec<Choice<'a>>>,
    usage: Option<ChatUsage>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    message: Option<AnswerMessage<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct AnswerMessage<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thinking_blocks: Option<Vec<ThinkingBlock<'a>>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<AnswerToolCall<'a>>>,
}

#[derive(Deserialize)]
struct AnswerToolCall<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<AnswerFunction<'a>>,
}

#[derive(Deserialize)]
struct AnswerFunction<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
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
        #[serde(borrow, default, deserialize_with = "opt_str")]
        message: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ErrField<'a> {
        Text(#[serde(borrow)] Cow<'a, str>),
        Object {
            #[serde(borrow, default, deserialize_with = "opt_str")]
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
    #[serde(borrow, default, deserialize_with = "opt_str")]
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
        #[serde(borrow, default, deserialize_with = "opt_str")]
        message: Option<Cow<'a, str>>,
        #[serde(rename = "type", borrow, default, deserialize_with = "opt_str")]
        kind: Option<Cow<'a, str>>,
    },
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    index: Option<u32>,
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thinking_blocks: Option<Vec<ThinkingBlock<'a>>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<DeltaToolCall<'a>>>,
}

#[derive(Deserialize)]
struct DeltaToolCall<'a> {
    index: Option<u32>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
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
#[serde(tag = "type")]
enum DeltaOut<'a> {
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: &'a str },
    #[serde(rename = "signature_delta")]
    Signature { signature: &'a str },
    #[serde(rename = "text_delta")]
    Text { text: &'a str },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: &'a str },
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
                DeltaOut::InputJson {
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
                        DeltaOut::InputJson { partial_json: args },
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
        // Choice 0 only (a client asking for `n` > 1 gets the first).
        let Some(choice) = chunk
            .choices
            .and_then(|c| c.into_iter().find(|c| c.index.unwrap_or(0) == 0))
        else {
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
                    DeltaOut::Thinking { thinking: r },
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
                        DeltaOut::Thinking { thinking },
                    );
                }
                match b {
                    ThinkingBlock::Thinking { signature, .. } if !signature.is_empty() => {
                        let index = self.ensure(Open::Thinking, out);
                        delta_event(
                            &mut self.scratch,
                            out,
                            index,
                            DeltaOut::Signature {
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
                    DeltaOut::Text { text: &text },
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const MODEL: &str = "claude-sonnet-4-5";

    fn opts() -> RequestOptions {
        RequestOptions::new("gpt-4o")
    }

    fn translate(body: &Value, opts: &RequestOptions) -> Result<Value, MessagesError> {
        let t = request_to_chat(&serde_json::to_vec(body).unwrap(), opts)?;
        Ok(serde_json::from_slice(&t.body).unwrap())
    }

    fn fixture(name: &str) -> &'static str {
        match name {
            "request_system_string" => include_str!(
                "../../../tests/fixtures/providers/messages/request_system_string.json"
            ),
            "request_system_blocks_images" => {
                include_str!(
                    "../../../tests/fixtures/providers/messages/request_system_blocks_images.json"
                )
            }
            "request_tool_round" => {
                include_str!("../../../tests/fixtures/providers/messages/request_tool_round.json")
            }
            "request_thinking" => {
                include_str!("../../../tests/fixtures/providers/messages/request_thinking.json")
            }
            "request_stream" => {
                include_str!("../../../tests/fixtures/providers/messages/request_stream.json")
            }
            "response_text" => {
                include_str!("../../../tests/fixtures/providers/messages/response_text.json")
            }
            "response_tool_calls" => {
                include_str!("../../../tests/fixtures/providers/messages/response_tool_calls.json")
            }
            "response_cached" => {
                include_str!("../../../tests/fixtures/providers/messages/response_cached.json")
            }
            "response_length" => {
                include_str!("../../../tests/fixtures/providers/messages/response_length.json")
            }
            "stream_text.sse" => {
                include_str!("../../../tests/fixtures/providers/messages/stream_text.sse")
            }
            "stream_text" => {
                include_str!("../../../tests/fixtures/providers/messages/stream_text.events.json")
            }
            "stream_tools.sse" => {
                include_str!("../../../tests/fixtures/providers/messages/stream_tools.sse")
            }
            "stream_tools" => {
                include_str!("../../../tests/fixtures/providers/messages/stream_tools.events.json")
            }
            "stream_reasoning.sse" => {
                include_str!("../../../tests/fixtures/providers/messages/stream_reasoning.sse")
            }
            "stream_reasoning" => {
                include_str!(
                    "../../../tests/fixtures/providers/messages/stream_reasoning.events.json"
                )
            }
            "stream_error.sse" => {
                include_str!("../../../tests/fixtures/providers/messages/stream_error.sse")
            }
            "stream_error" => {
                include_str!("../../../tests/fixtures/providers/messages/stream_error.events.json")
            }
            other => panic!("no fixture {other}"),
        }
    }

    const STREAMS: [&str; 4] = [
        "stream_text",
        "stream_tools",
        "stream_reasoning",
        "stream_error",
    ];

    /// Feeds `bytes` cut at `cuts` through a parser and a mapper, then
    /// ends the stream.
    fn run_cut(bytes: &[u8], cuts: &[usize]) -> (Vec<u8>, Usage) {
        let mut parser = sse::Parser::new(1 << 20);
        let mut m = MessagesStream::new(MODEL);
        let mut out = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain([bytes.len()].iter()) {
            let cut = cut.clamp(at, bytes.len());
            parser
                .feed(&bytes[at..cut], |e| m.event(e, &mut out))
                .unwrap();
            at = cut;
        }
        parser.finish(|e| m.event(e, &mut out));
        m.finish(&mut out);
        (out, m.usage())
    }

    fn run(bytes: &[u8]) -> (Vec<u8>, Usage) {
        run_cut(bytes, &[])
    }

    /// The events written, each `(name, data parsed)`.
    fn events(out: &[u8]) -> Vec<(String, Value)> {
        let mut p = sse::Parser::new(1 << 20);
        let mut seen = Vec::new();
        p.feed(out, |e| {
            seen.push((e.event.to_owned(), serde_json::from_str(e.data).unwrap()));
        })
        .unwrap();
        assert!(
            out.is_empty() || out.ends_with(b"\n\n"),
            "every event is complete"
        );
        seen
    }

    /// Rebuilds the Message a client's accumulator would, checking that
    /// blocks open from 0 in order, one at a time, and that nothing
    /// follows `message_stop` or `error`.
    fn reassemble(events: &[(String, Value)]) -> Value {
        let mut msg = Value::Null;
        let mut partial: Vec<String> = Vec::new();
        let mut open: Option<usize> = None;
        let mut ended = false;
        for (name, data) in events {
            assert!(!ended, "nothing after message_stop or error: {name}");
            assert_eq!(data["type"], name.as_str());
            match name.as_str() {
                "message_start" => msg = data["message"].clone(),
                "content_block_start" => {
                    assert_eq!(open, None, "a block opens only when none is open");
                    let content = msg["content"].as_array_mut().unwrap();
                    assert_eq!(data["index"], content.len(), "block indexes are contiguous");
                    content.push(data["content_block"].clone());
                    partial.push(String::new());
                    open = Some(content.len() - 1);
                }
                "content_block_delta" => {
                    let i = data["index"].as_u64().unwrap() as usize;
                    assert_eq!(open, Some(i), "deltas go to the open block");
                    let block = &mut msg["content"][i];
                    let d = &data["delta"];
                    let append = |block: &mut Value, key: &str, piece: &Value| {
                        let s = block[key].as_str().unwrap().to_owned() + piece.as_str().unwrap();
                        block[key] = Value::String(s);
                    };
                    match d["type"].as_str().unwrap() {
                        "text_delta" => append(block, "text", &d["text"]),
                        "thinking_delta" => append(block, "thinking", &d["thinking"]),
                        "signature_delta" => block["signature"] = d["signature"].clone(),
                        "input_json_delta" => {
                            partial[i].push_str(d["partial_json"].as_str().unwrap())
                        }
                        other => panic!("unexpected delta {other}"),
                    }
                }
                "content_block_stop" => {
                    let i = data["index"].as_u64().unwrap() as usize;
                    assert_eq!(open, Some(i), "the open block closes");
                    open = None;
                    if msg["content"][i]["type"] == "tool_use" {
                        msg["content"][i]["input"] = if partial[i].is_empty() {
                            json!({})
                        } else {
                            serde_json::from_str(&partial[i]).unwrap()
                        };
                    }
                }
                "message_delta" => {
                    assert_eq!(open, None, "message_delta after every block closed");
                    msg["stop_reason"] = data["delta"]["stop_reason"].clone();
                    msg["stop_sequence"] = data["delta"]["stop_sequence"].clone();
                    for (k, v) in data["usage"].as_object().unwrap() {
                        msg["usage"][k] = v.clone();
                    }
                }
                "message_stop" | "error" => ended = true,
                other => panic!("unexpected event {other}"),
            }
        }
        msg
    }

    fn chunk(delta: Value, finish: Option<&str>) -> String {
        let c = json!({"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {c}\n\n")
    }

    fn tool_chunk(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> String {
        let mut f = json!({"arguments": args});
        let mut tc = json!({"index": index});
        if let Some(name) = name {
            f["name"] = json!(name);
        }
        if let Some(id) = id {
            tc["id"] = json!(id);
            tc["type"] = json!("function");
        }
        tc["function"] = f;
        chunk(json!({"tool_calls": [tc]}), None)
    }

    fn usage_chunk(prompt: u64, cached: u64, completion: u64) -> String {
        let c = json!({"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
            "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": cached}}});
        format!("data: {c}\n\n")
    }

    // === requests ===

    #[test]
    fn golden_requests() {
        for name in [
            "request_system_string",
            "request_system_blocks_images",
            "request_tool_round",
            "request_thinking",
            "request_stream",
        ] {
            let f: Value = serde_json::from_str(fixture(name)).unwrap();
            let got = translate(&f["in"], &opts()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got, f["out"], "{name}");
        }
    }

    #[test]
    fn a_stream_always_asks_for_usage() {
        let body = br#"{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"x"}]}"#;
        let t = request_to_chat(body, &opts()).unwrap();
        assert!(t.stream && t.include_usage);
        let t = request_to_chat(br#"{"model":"m","max_tokens":5,"messages":[]}"#, &opts()).unwrap();
        assert!(!t.stream && !t.include_usage);
    }

    #[test]
    fn tool_results_come_before_user_text() {
        // Text, result, text, result: both tool messages first, then one
        // user message with the texts in their order (ogx-ai/ogx#6367,
        // BerriAI/litellm#28995: a user message between the assistant's
        // tool_calls and the tool messages is refused by OpenAI).
        let body = json!({"model": "m", "max_tokens": 10, "messages": [
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "a", "name": "f", "input": {}},
                {"type": "tool_use", "id": "b", "name": "f", "input": {}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "first"},
                {"type": "tool_result", "tool_use_id": "a", "content": "1"},
                {"type": "text", "text": "second"},
                {"type": "tool_result", "tool_use_id": "b"}]}]});
        let got = translate(&body, &opts()).unwrap();
        let roles: Vec<&str> = got["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["assistant", "tool", "tool", "user"]);
        assert_eq!(got["messages"][1]["tool_call_id"], "a");
        assert_eq!(
            got["messages"][2],
            json!({"role": "tool", "content": "", "tool_call_id": "b"})
        );
        assert_eq!(
            got["messages"][3]["content"],
            json!([{"type": "text", "text": "first"}, {"type": "text", "text": "second"}])
        );
        assert_eq!(got["messages"][0]["content"], Value::Null);
    }

    #[test]
    fn missing_and_mistyped_fields_are_named() {
        let cases = [
            (
                json!({"model": "m", "messages": []}),
                "max_tokens: Field required",
            ),
            (
                json!({"max_tokens": 1, "messages": []}),
                "model: Field required",
            ),
            (
                json!({"model": "m", "max_tokens": 1}),
                "messages: Field required",
            ),
            (
                json!({"model": 3, "max_tokens": 1, "messages": []}),
                "model: ",
            ),
            (
                json!({"model": "m", "max_tokens": "1", "messages": []}),
                "max_tokens: ",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": {}}),
                "messages: ",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "temperature": "hot", "messages": []}),
                "temperature: ",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "stream": "yes", "messages": []}),
                "stream: ",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}),
                "messages.0.role",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user"}]}),
                "messages.0.content: Field required",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "image"}]}]}),
                "messages.0.content.0.source: Field required",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}),
                "messages.0.content.0.tool_use_id: Field required",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "tools": [{"name": "f"}], "messages": []}),
                "tools.0.input_schema: Field required",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "tools": [{"name": "f", "input_schema": {}}],
                    "tool_choice": {"type": "tool"}, "messages": []}),
                "tool_choice.tool.name: Field required",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "system": [{"type": "image"}], "messages": []}),
                "system.0.type",
            ),
        ];
        for (body, want) in cases {
            let e = translate(&body, &opts()).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(e.kind(), "invalid_request_error");
            assert!(e.message().starts_with(want), "{body}: {}", e.message());
            let json: Value = serde_json::from_slice(&e.to_json()).unwrap();
            assert_eq!(json["type"], "error");
            assert_eq!(json["error"]["type"], "invalid_request_error");
        }
        assert!(request_to_chat(b"not json", &opts()).is_err());
        assert!(request_to_chat(b"[]", &opts()).is_err());
        assert!(
            request_to_chat(
                b"{\"model\":\"m\",\"model\":\"n\",\"max_tokens\":1,\"messages\":[]}",
                &opts()
            )
            .is_err()
        );
    }

    #[test]
    fn unsupported_parts_are_dropped_or_refused() {
        let reject = opts().unsupported(Unsupported::Reject);
        let cases = [
            (
                json!({"model": "m", "max_tokens": 1, "top_k": 5, "messages": []}),
                "top_k",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
                    {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]}),
                "messages.0.content.0",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "tools": [{"type": "bash_20250124", "name": "bash"}], "messages": []}),
                "tools.0",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
                    {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
                "messages.0.content.0.source",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]}]}]}),
                "messages.0.content.0.content.0",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": [{"role": "assistant", "content": [
                    {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]}),
                "messages.0.content.0",
            ),
        ];
        for (body, param) in cases {
            let e = translate(&body, &reject).unwrap_err();
            assert!(e.message().starts_with(param), "{body}: {}", e.message());
            let dropped = translate(&body, &opts()).unwrap();
            assert!(
                dropped.get("top_k").is_none() && dropped.get("tools").is_none(),
                "{dropped}"
            );
        }
        // Only server tools: no tools left, so no tool_choice either.
        let body = json!({"model": "m", "max_tokens": 1, "tools": [{"type": "web_search_20250305", "name": "w"}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true}, "messages": []});
        let got = translate(&body, &opts()).unwrap();
        assert_eq!(
            got,
            json!({"model": "gpt-4o", "messages": [], "max_tokens": 1})
        );
    }

    #[test]
    fn tool_choice_and_thinking_variants() {
        let tools = json!([{"name": "f", "input_schema": {"type": "object"}}]);
        for (choice, want, parallel) in [
            (json!({"type": "auto"}), json!("auto"), None),
            (json!({"type": "any"}), json!("required"), None),
            (json!({"type": "none"}), json!("none"), None),
            (
                json!({"type": "auto", "disable_parallel_tool_use": true}),
                json!("auto"),
                Some(false),
            ),
            (
                json!({"type": "any", "disable_parallel_tool_use": false}),
                json!("required"),
                None,
            ),
            (
                json!({"type": "tool", "name": "f"}),
                json!({"type": "function", "function": {"name": "f"}}),
                None,
            ),
        ] {
            let body = json!({"model": "m", "max_tokens": 1, "tools": tools, "tool_choice": choice, "messages": []});
            let got = translate(&body, &opts()).unwrap();
            assert_eq!(got["tool_choice"], want);
            assert_eq!(
                got.get("parallel_tool_calls").and_then(Value::as_bool),
                parallel
            );
        }
        for (budget, effort) in [
            (1024, "low"),
            (2048, "low"),
            (2049, "medium"),
            (8192, "medium"),
            (8193, "high"),
        ] {
            let body = json!({"model": "m", "max_tokens": 1, "thinking": {"type": "enabled", "budget_tokens": budget}, "messages": []});
            assert_eq!(
                translate(&body, &opts()).unwrap()["reasoning_effort"],
                effort
            );
        }
    }

    // === answers ===

    #[test]
    fn golden_responses() {
        for name in [
            "response_text",
            "response_tool_calls",
            "response_cached",
            "response_length",
        ] {
            let f: Value = serde_json::from_str(fixture(name)).unwrap();
            let (body, usage) =
                response_from_chat(&serde_json::to_vec(&f["in"]).unwrap(), MODEL).unwrap();
            let got: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(got, f["out"], "{name}");
            let want: Usage = serde_json::from_value(f["usage"].clone()).unwrap();
            assert_eq!(usage, want, "{name}");
        }
    }

    #[test]
    fn stop_with_tool_calls_is_tool_use() {
        // Ollama says `stop` with a tool call (BerriAI/litellm#34692); the
        // client must still see `tool_use`, and no empty text block.
        let body = json!({"id": "x", "choices": [{"message": {"role": "assistant", "content": "",
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            "finish_reason": "stop"}]});
        let (out, _) = response_from_chat(&serde_json::to_vec(&body).unwrap(), MODEL).unwrap();
        let got: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got["stop_reason"], "tool_use");
        assert_eq!(
            got["content"],
            json!([{"type": "tool_use", "id": "c", "name": "f", "input": {}}])
        );

        let mut s = chunk(json!({"role": "assistant", "content": ""}), None);
        s += &tool_chunk(0, Some("c"), Some("f"), "{}");
        s += &chunk(json!({}), Some("stop"));
        s += "data: [DONE]\n\n";
        let ev = events(&run(s.as_bytes()).0);
        assert_eq!(
            ev[1].1["content_block"]["type"], "tool_use",
            "no empty leading text block"
        );
        assert_eq!(reassemble(&ev)["stop_reason"], "tool_use");
    }

    #[test]
    fn unreadable_answers_are_502() {
        for body in [
            &b"<html>"[..],
            b"{}",
            b"{\"choices\":[]}",
            b"{\"choices\":3}",
        ] {
            let e = response_from_chat(body, MODEL).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
            assert_eq!(e.kind(), "api_error");
        }
    }

    #[test]
    fn errors_keep_their_status() {
        let body = br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "api_error"),
            (504, "api_error"),
            (529, "overloaded_error"),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            let e = error_from_chat(status, body);
            assert_eq!((e.status(), e.kind()), (status, kind));
            let json: Value = serde_json::from_slice(&e.to_json()).unwrap();
            assert_eq!(
                json,
                json!({"type": "error", "error": {"type": kind, "message": "Incorrect API key provided"}})
            );
        }
        assert_eq!(
            error_from_chat(StatusCode::BAD_REQUEST, br#"{"error":"bad"}"#).message(),
            "bad"
        );
        assert_eq!(
            error_from_chat(
                StatusCode::BAD_REQUEST,
                br#"{"object":"error","message":"vllm says no"}"#
            )
            .message(),
            "vllm says no"
        );
        let html = "<html>".to_owned() + &"é".repeat(400);
        let e = error_from_chat(StatusCode::BAD_GATEWAY, html.as_bytes());
        assert!(e.message().len() <= 200 && e.message().starts_with("<html>"));
        assert_eq!(
            error_from_chat(StatusCode::SERVICE_UNAVAILABLE, b"").message(),
            "Service Unavailable"
        );

        let own = OpenAiError::new(
            StatusCode::NOT_FOUND,
            "The model `x` does not exist.",
            "invalid_request_error",
            Some("model"),
            Some("model_not_found"),
        );
        let e = MessagesError::from_openai(&own);
        assert_eq!(
            (e.status(), e.kind(), e.message()),
            (
                StatusCode::NOT_FOUND,
                "not_found_error",
                "The model `x` does not exist."
            )
        );
    }

    // === streams ===

    #[test]
    fn golden_streams() {
        for name in STREAMS {
            let want: Vec<(String, Value)> = serde_json::from_str(fixture(name)).unwrap();
            let (out, usage) = run(fixture(&format!("{name}.sse")).as_bytes());
            let got = events(&out);
            assert_eq!(got, want, "{name}");
            reassemble(&got);
            assert_eq!(usage.truncated, name == "stream_error", "{name}");
        }
    }

    #[test]
    fn usage_lands_in_message_delta() {
        let (out, usage) = run(fixture("stream_tools.sse").as_bytes());
        let ev = events(&out);
        assert_eq!(
            ev[0].1["message"]["usage"],
            json!({"input_tokens": 0, "output_tokens": 0})
        );
        let delta = &ev.iter().find(|(n, _)| n == "message_delta").unwrap().1;
        assert_eq!(
            delta["usage"],
            json!({"input_tokens": 20, "output_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100})
        );
        assert_eq!(
            usage,
            Usage {
                input: 120,
                cached_read: 100,
                output: 30,
                ..Usage::default()
            }
        );
        // Usage in the finish chunk itself counts too; none at all gives
        // output_tokens 0 and no input count.
        let s = chunk(json!({"content": "x"}), None)
            + &chunk(json!({}), Some("stop"))
            + "data: [DONE]\n\n";
        let ev = events(&run(s.as_bytes()).0);
        assert_eq!(ev[ev.len() - 2].1["usage"], json!({"output_tokens": 0}));
    }

    #[test]
    fn block_indexes_are_contiguous() {
        let mut s = chunk(json!({"reasoning_content": "hm"}), None);
        s += &chunk(json!({"content": "a"}), None);
        s += &chunk(json!({"reasoning": "again"}), None);
        s += &chunk(json!({"content": "b", "tool_calls": []}), None);
        s += &tool_chunk(0, Some("c0"), Some("f"), "{}");
        s += &tool_chunk(1, Some("c1"), Some("g"), "{\"x\":1}");
        s += &chunk(
            json!({"thinking_blocks": [{"type": "redacted_thinking", "data": "zz"}]}),
            None,
        );
        s += &chunk(json!({}), Some("tool_calls"));
        s += "data: [DONE]\n\n";
        let ev = events(&run(s.as_bytes()).0);
        let starts: Vec<(u64, &str)> = ev
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| {
                (
                    d["index"].as_u64().unwrap(),
                    d["content_block"]["type"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            starts,
            [
                (0, "thinking"),
                (1, "text"),
                (2, "thinking"),
                (3, "text"),
                (4, "tool_use"),
                (5, "tool_use"),
                (6, "redacted_thinking")
            ]
        );
        let msg = reassemble(&ev);
        assert_eq!(
            msg["content"][3]["text"], "b",
            "empty tool_calls with content stay text (BerriAI/litellm#29286)"
        );
        assert_eq!(msg["content"][5]["input"], json!({"x": 1}));
    }

    #[test]
    fn interleaved_tool_arguments_stay_with_their_call() {
        // Index 1 begins while index 0's arguments are still coming; index
        // 0's rest arrives after (BerriAI/litellm#25321, #13638: arguments
        // lost or sent to the wrong block).
        let mut s = chunk(json!({"role": "assistant"}), None);
        s += &tool_chunk(0, Some("c0"), Some("first"), "{\"a\":");
        s += &tool_chunk(1, Some("c1"), Some("second"), "{\"b\":");
        s += &tool_chunk(1, None, None, "[1,2]}");
        s += &tool_chunk(0, None, None, "\"}{\"}");
        s += &tool_chunk(2, Some("c2"), Some("third"), "");
        s += &tool_chunk(2, None, None, "{\"c\":true}");
        s += &chunk(json!({}), Some("tool_calls"));
        s += "data: [DONE]\n\n";
        let ev = events(&run(s.as_bytes()).0);
        let msg = reassemble(&ev);
        assert_eq!(
            msg["content"],
            json!([
                {"type": "tool_use", "id": "c0", "name": "first", "input": {"a": "}{"}},
                {"type": "tool_use", "id": "c1", "name": "second", "input": {"b": [1, 2]}},
                {"type": "tool_use", "id": "c2", "name": "third", "input": {"c": true}},
            ])
        );
        // The held call went out in one delta, right after the first closed.
        let held: Vec<&Value> = ev
            .iter()
            .filter(|(_, d)| d["index"] == 1 && d["type"] == "content_block_delta")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(held.len(), 1);
        assert_eq!(held[0]["delta"]["partial_json"], "{\"b\":[1,2]}");

        // Calls without `index` (one at a time): a new id begins the next.
        let mut s = chunk(json!({"role": "assistant"}), None);
        for (id, name, args) in [
            (Some("x"), Some("f"), "{\"q\":"),
            (None, None, "1}"),
            (Some("y"), Some("g"), "{}"),
        ] {
            let mut tc = json!({"function": {"arguments": args}});
            if let Some(id) = id {
                tc["id"] = json!(id);
                tc["function"]["name"] = json!(name);
            }
            s += &chunk(json!({"tool_calls": [tc]}), None);
        }
        s += &chunk(json!({}), Some("tool_calls"));
        let msg = reassemble(&events(&run(s.as_bytes()).0));
        assert_eq!(msg["content"][0]["input"], json!({"q": 1}));
        assert_eq!(msg["content"][1]["id"], "y");
    }

    #[test]
    fn only_choice_zero_is_read() {
        let other = |t: &str| {
            let c = json!({"id": "x", "choices": [{"index": 1, "delta": {"content": t}, "finish_reason": null}]});
            format!("data: {c}\n\n")
        };
        let s = other("no")
            + &chunk(json!({"content": "yes"}), None)
            + &other("no")
            + &chunk(json!({}), Some("stop"));
        let msg = reassemble(&events(&run(s.as_bytes()).0));
        assert_eq!(msg["content"], json!([{"type": "text", "text": "yes"}]));
    }

    #[test]
    fn one_message_stop_only() {
        let count = |out: &[u8]| {
            events(out)
                .iter()
                .filter(|(n, _)| n == "message_stop")
                .count()
        };
        // [DONE] twice, then finish().
        let s = chunk(json!({"content": "a"}), Some("stop")) + "data: [DONE]\n\ndata: [DONE]\n\n";
        let mut m = MessagesStream::new(MODEL);
        let mut out = Vec::new();
        sse::Parser::new(1 << 16)
            .feed(s.as_bytes(), |e| m.event(e, &mut out))
            .unwrap();
        m.finish(&mut out);
        m.finish(&mut out);
        m.fail("late", &mut out);
        assert_eq!(count(&out), 1);
        assert!(!m.usage().truncated);
        // No [DONE] after the finish reason: closed normally at finish().
        let s = chunk(json!({"content": "a"}), Some("stop")) + &usage_chunk(5, 0, 1);
        let (out, usage) = run(s.as_bytes());
        assert_eq!(count(&out), 1);
        assert_eq!((usage.input, usage.output, usage.truncated), (5, 1, false));
        // An empty stream that says [DONE] still gets a whole message.
        let ev = events(&run(b"data: [DONE]\n\n").0);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
    }

    #[test]
    fn error_chunk_becomes_error_event() {
        let (out, usage) = run(fixture("stream_error.sse").as_bytes());
        let ev = events(&out);
        assert_eq!(ev.last().unwrap().0, "error");
        assert!(usage.truncated);
        // fail(), a chunk that is not JSON, and an end before any finish
        // reason: an error event, nothing after.
        let mut m = MessagesStream::new(MODEL);
        let mut out = Vec::new();
        sse::Parser::new(1 << 16)
            .feed(chunk(json!({"content": "a"}), None).as_bytes(), |e| {
                m.event(e, &mut out)
            })
            .unwrap();
        m.fail("upstream connection reset", &mut out);
        m.finish(&mut out);
        let ev = events(&out);
        assert_eq!(
            ev.last().unwrap().1,
            json!({"type": "error", "error": {"type": "api_error", "message": "upstream connection reset"}})
        );
        assert!(m.usage().truncated);
        for s in [
            "data: {not json\n\n".to_owned(),
            chunk(json!({"content": "a"}), None),
            "data: {\"error\":\"boom\"}\n\n".to_owned(),
        ] {
            let (out, usage) = run(s.as_bytes());
            let ev = events(&out);
            assert_eq!(ev.last().unwrap().0, "error", "{s}");
            assert_eq!(ev.iter().filter(|(n, _)| n == "error").count(), 1);
            assert!(usage.truncated);
        }
    }

    #[test]
    fn tool_calls_and_held_arguments_are_bounded() {
        let mut s = chunk(json!({"role": "assistant"}), None);
        for i in 0..=MAX_TOOL_CALLS as u32 {
            s += &tool_chunk(i, Some(&format!("c{i}")), Some("f"), "{}");
        }
        s += &chunk(json!({}), Some("tool_calls"));
        let (out, usage) = run(s.as_bytes());
        let ev = events(&out);
        assert_eq!(ev.last().unwrap().0, "error");
        assert_eq!(
            ev.iter()
                .filter(|(n, _)| n == "content_block_start")
                .count(),
            MAX_TOOL_CALLS
        );
        assert!(usage.truncated);

        // The open call never completes: the next one is held, up to the cap.
        let mut s = tool_chunk(0, Some("c0"), Some("f"), "{\"a\":");
        s += &tool_chunk(1, Some("c1"), Some("g"), "");
        let piece = "x".repeat(64 * 1024);
        for _ in 0..(MAX_HELD_ARGUMENTS / piece.len() + 1) {
            s += &tool_chunk(1, None, None, &piece);
        }
        let ev = events(&run(s.as_bytes()).0);
        assert_eq!(ev.last().unwrap().0, "error");
    }

    // === properties ===

    proptest::proptest! {
        #[test]
        fn no_input_panics(
            junk in proptest::collection::vec(proptest::sample::select(vec![
                "{", "}", "[", "]", ",", ":", "\"type\"", "\"text\"", "\"tool_use\"", "\"tool_result\"", "\"image\"",
                "\"messages\"", "\"content\"", "\"role\"", "\"user\"", "\"assistant\"", "\"choices\"", "\"delta\"",
                "\"tool_calls\"", "\"index\"", "\"arguments\"", "\"function\"", "\"finish_reason\"", "\"error\"",
                "\"max_tokens\"", "\"model\"", "1", "null", "\"é\\u0000\"", "\"\\\"\"",
            ]), 0..40),
        ) {
            let junk: String = junk.concat();
            let _ = request_to_chat(junk.as_bytes(), &opts());
            let _ = response_from_chat(junk.as_bytes(), MODEL);
            let _ = error_from_chat(StatusCode::BAD_GATEWAY, junk.as_bytes());
            let mut m = MessagesStream::new(MODEL);
            let mut out = Vec::new();
            m.event(&sse::Event { event: "", data: &junk }, &mut out);
            m.event(&sse::Event { event: "", data: &format!("{{\"choices\":[{{\"delta\":{junk}}}]}}") }, &mut out);
            m.finish(&mut out);
            let ev = events(&out);
            reassemble(&ev);
        }

        #[test]
        fn chunk_boundaries_do_not_matter(which in 0..STREAMS.len(), cuts in proptest::collection::vec(0usize..4096, 0..12)) {
            let bytes = fixture(&format!("{}.sse", STREAMS[which])).as_bytes();
            let whole = run(bytes);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            proptest::prop_assert_eq!(&run_cut(bytes, &cuts), &whole);
            let crlf = String::from_utf8(bytes.to_vec()).unwrap().replace('\n', "\r\n");
            proptest::prop_assert_eq!(&run_cut(crlf.as_bytes(), &cuts), &whole);
        }

        #[test]
        fn a_stream_reassembled_is_the_json_answer(
            reasoning in proptest::collection::vec("[a-z \"\\\\é]{0,6}", 0..3),
            text in proptest::collection::vec("[a-z \"\\\\é\n]{0,6}", 0..4),
            calls in proptest::collection::vec(
                (proptest::collection::btree_map("[a-z]{1,4}", "[a-z \"{}]{0,5}", 0..3), proptest::collection::vec(0usize..64, 0..4)),
                0..4,
            ),
            schedule in proptest::collection::vec(0usize..8, 0..40),
            finish in proptest::sample::select(vec!["stop", "length", "tool_calls", "content_filter"]),
            (prompt, cached, completion) in (0u64..5000, 0u64..5000, 0u64..5000),
        ) {
            let cached = cached.min(prompt);
            let mut s = chunk(json!({"role": "assistant", "content": ""}), None);
            for r in &reasoning {
                s += &chunk(json!({"reasoning_content": r}), None);
            }
            for t in &text {
                s += &chunk(json!({"content": t}), None);
            }
            // Each call's arguments cut in pieces; the pieces of different
            // calls interleave by `schedule`, each call's first chunk (id
            // and name) coming after the previous call's first.
            let args: Vec<String> = calls.iter().map(|(m, _)| serde_json::to_string(m).unwrap()).collect();
            let mut pieces: Vec<std::collections::VecDeque<String>> = calls
                .iter()
                .zip(&args)
                .map(|((_, cuts), a)| {
                    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (a.len() + 1)).filter(|&c| a.is_char_boundary(c)).collect();
                    cuts.sort_unstable();
                    cuts.dedup();
                    let mut at = 0;
                    let mut v: std::collections::VecDeque<String> = cuts.iter().map(|&c| { let p = a[at..c].to_owned(); at = c; p }).collect();
                    v.push_back(a[at..].to_owned());
                    v
                })
                .collect();
            let mut started = 0;
            let mut turns = schedule.into_iter();
            loop {
                let live: Vec<usize> = (0..started).filter(|&i| !pieces[i].is_empty()).collect();
                if live.is_empty() && started == calls.len() {
                    break;
                }
                let pick = turns.next().unwrap_or(0);
                if started < calls.len() && (live.is_empty() || pick % 3 == 0) {
                    let i = started;
                    started += 1;
                    let first = pieces[i].pop_front().unwrap_or_default();
                    s += &tool_chunk(i as u32, Some(&format!("call_{i}")), Some(&format!("f{i}")), &first);
                } else {
                    let i = live[pick % live.len()];
                    let p = pieces[i].pop_front().unwrap_or_default();
                    s += &tool_chunk(i as u32, None, None, &p);
                }
            }
            s += &chunk(json!({}), Some(finish));
            s += &usage_chunk(prompt, cached, completion);
            s += "data: [DONE]\n\n";

            let reasoning: String = reasoning.concat();
            let text: String = text.concat();
            let mut message = json!({"role": "assistant", "content": text});
            if !reasoning.is_empty() {
                message["reasoning_content"] = json!(reasoning);
            }
            if !calls.is_empty() {
                message["tool_calls"] = args
                    .iter()
                    .enumerate()
                    .map(|(i, a)| json!({"id": format!("call_{i}"), "type": "function", "function": {"name": format!("f{i}"), "arguments": a}}))
                    .collect();
            }
            let answer = json!({"id": "chatcmpl-t", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                    "prompt_tokens_details": {"cached_tokens": cached}}});
            let (json_body, json_usage) = response_from_chat(&serde_json::to_vec(&answer).unwrap(), MODEL).unwrap();
            let want: Value = serde_json::from_slice(&json_body).unwrap();

            let (out, usage) = run(s.as_bytes());
            let got = reassemble(&events(&out));
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert_eq!(usage, json_usage);
            // Byte by byte, the same.
            let every: Vec<usize> = (1..s.len()).collect();
            proptest::prop_assert_eq!(run_cut(s.as_bytes(), &every).0, out);
        }
    }
}
