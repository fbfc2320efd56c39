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
//!
//! [`RequestOptions::model`]: super::RequestOptions::model
//! [`RequestOptions::unsupported`]: super::RequestOptions::unsupported
//! [`StreamMapper::fail`]: super::StreamMapper::fail

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

mod request;
mod response;
mod stream;
#[cfg(test)]
mod tests;

pub use request::request_to_chat;
pub use response::{MessagesError, error_from_chat, response_from_chat};
pub use stream::{MAX_HELD_ARGUMENTS, MAX_TOOL_CALLS, MessagesStream};

// === Shared by the request, answer and stream mappings ===

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

/// An empty JSON object, `{}`.
#[derive(Serialize)]
struct Empty {}
