//! OpenAI Chat Completions clients over Anthropic Messages upstreams.
//!
//! [`request_from_chat`] turns a Chat Completions request into a Messages
//! request; [`response_to_chat`], [`error_to_chat`] and [`ChatStream`] turn
//! the answer (JSON, error or server-sent events) back into what an OpenAI
//! client reads. [`StreamUsage`] reads the token counts of an Anthropic
//! stream passed through untouched (an Anthropic client on an Anthropic
//! upstream), and [`usage_from_object`] those of a `usage` object.
//!
//! ```
//! use switchyard::model::providers::anthropic::{request_from_chat, ChatStream};
//! use switchyard::model::providers::{sse, RequestOptions, StreamMapper, StreamOptions};
//!
//! let chat = br#"{"model":"claude","messages":[
//!     {"role":"system","content":"Be brief."},
//!     {"role":"user","content":"Hi"}],"stream":true}"#;
//! let t = request_from_chat(chat, &RequestOptions::new("claude-sonnet-4-5")).unwrap();
//! let body: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
//! assert_eq!(body["system"][0]["text"], "Be brief.");
//! assert_eq!(body["max_tokens"], 4096);
//! assert!(t.stream);
//!
//! // The answer, an event at a time.
//! let upstream = concat!(
//!     "event: message_start\n",
//!     "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
//!     "event: content_block_delta\n",
//!     "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
//!     "event: message_delta\n",
//!     "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
//!     "event: message_stop\n",
//!     "data: {\"type\":\"message_stop\"}\n\n",
//! );
//! let mut mapper = ChatStream::new(StreamOptions::new("claude").created(1));
//! let mut parser = sse::Parser::new(1 << 20);
//! let mut out = Vec::new();
//! parser.feed(upstream.as_bytes(), |e| mapper.event(e, &mut out)).unwrap();
//! mapper.finish(&mut out);
//! let text = String::from_utf8(out).unwrap();
//! assert!(text.contains(r#""delta":{"content":"Hello"}"#));
//! assert!(text.ends_with("data: [DONE]\n\n"));
//! assert_eq!((mapper.usage().input, mapper.usage().output), (9, 2));
//! ```
//!
//! # Requests
//!
//! | OpenAI Chat | Anthropic Messages |
//! | --- | --- |
//! | `model` | the upstream's [`RequestOptions::model`] |
//! | `system` and `developer` messages, wherever they are | top-level `system` text blocks, in order |
//! | user `text` parts, `image_url` (`data:` URI or http(s) URL) | `text` blocks, `image` blocks with a `base64` or `url` source |
//! | assistant `thinking_blocks`, text, `tool_calls` | `thinking`/`redacted_thinking` blocks first, then `text`, then `tool_use` (`input` parsed from `arguments`, `""` meaning `{}`) |
//! | `tool` messages | `tool_result` blocks in a `user` message |
//! | consecutive messages of one role | merged into one message (Anthropic wants turns alternating) |
//! | `tools` (functions) | `tools` with `input_schema` (`parameters`, or an empty object schema) |
//! | `tool_choice` `auto`, `none`, `required`, named function | `auto`, `none`, `any`, `tool` (sent only with tools) |
//! | `parallel_tool_calls: false` | `disable_parallel_tool_use: true` on the tool choice |
//! | `max_completion_tokens`, else `max_tokens`, else [`RequestOptions::default_max_tokens`] | `max_tokens` |
//! | `temperature` (0 to 2) | `temperature` (0 to 1): above 1 clamped, or refused with [`Unsupported::Reject`] |
//! | `top_p`, `stop`, `user`, `stream` | `top_p`, `stop_sequences`, `metadata.user_id`, `stream` |
//! | `reasoning_effort` `minimal`, `low`, `medium`, `high` | `thinking` with a budget of 1024, 1024, 4096, 16384 tokens |
//! | `response_format` `json_schema` | a forced tool named [`JSON_TOOL`] whose input is the answer |
//!
//! With `reasoning_effort`, `max_tokens` is raised to the budget plus the
//! asked maximum when it is not above the budget, and `temperature` and
//! `top_p` are not sent (Anthropic refuses them with thinking on; a value
//! of 1 is its default and passes even with [`Unsupported::Reject`]).
//! Anthropic refuses thinking with a forced tool too: with `tool_choice`
//! `required`, a named function or a `json_schema` response format,
//! thinking is left out (refused with [`Unsupported::Reject`]).
//!
//! A `json_object` response format, parameters Anthropic has no
//! counterpart for (`n` above 1, `logprobs`, `top_logprobs`,
//! `presence_penalty`, `frequency_penalty`, `logit_bias`, `seed`, `audio`,
//! `modalities` other than text, `prediction`), content parts other than
//! text and images, and tools other than functions are left out, or
//! refused with a 400 naming them in `param` with [`Unsupported::Reject`].
//! Fields nobody knows are ignored. A leading assistant message is passed
//! as it is: Anthropic's reference no longer asks for a user turn first.
//!
//! # Answers
//!
//! All `text` blocks become `content` (null when there is none and the
//! answer calls tools), `tool_use` blocks `tool_calls` (the provider's ids,
//! `arguments` the input's JSON text), `thinking` blocks `reasoning_content`
//! and, with their signatures, `thinking_blocks`
//! (`[{"type":"thinking","thinking","signature"}]`, and
//! `{"type":"redacted_thinking","data"}`): send them back on the assistant
//! message and the next request carries them first, as Anthropic wants.
//! The [`JSON_TOOL`]'s input becomes `content`, with the finish reason
//! `stop`. Stop reasons: `end_turn`, `stop_sequence`, `pause_turn` are
//! `stop`, `max_tokens` is `length`, `tool_use` is `tool_calls`, `refusal`
//! is `content_filter` (with the message's `refusal` set).
//!
//! `usage.prompt_tokens` counts every input token: `input_tokens +
//! cache_read_input_tokens + cache_creation_input_tokens`;
//! `prompt_tokens_details.cached_tokens` is the cache read, and
//! Anthropic's two cache fields are kept beside.
//!
//! # Streams
//!
//! | Anthropic event | OpenAI chunk |
//! | --- | --- |
//! | `message_start` | `delta: {"role":"assistant","content":""}` |
//! | `text_delta` | `delta.content` |
//! | `thinking_delta` | `delta.reasoning_content` |
//! | `signature_delta` | `delta.thinking_blocks: [{"type":"thinking","thinking":<the block's whole text>,"signature"}]` |
//! | `redacted_thinking` block | `delta.thinking_blocks: [{"type":"redacted_thinking","data"}]` |
//! | `tool_use` block start | `delta.tool_calls: [{"index","id","type":"function","function":{"name","arguments":""}}]` |
//! | `input_json_delta` | `delta.tool_calls: [{"index","function":{"arguments"}}]` |
//! | `message_delta` | `finish_reason`, empty delta |
//! | `message_stop` | the usage chunk (`choices: []`) if asked for, `data: [DONE]` |
//! | `error` | `data: {"error":{...}}`, `data: [DONE]` |
//! | `ping`, `content_block_stop`, unknown events | nothing |
//!
//! A tool call's `index` counts the stream's tool calls from 0, whatever
//! Anthropic's block index, and its `arguments` are only the streamed
//! `partial_json` (the `input: {}` of the block's start is never sent).
//! A client accumulating `thinking_blocks` entries across chunks holds
//! exactly the list to send back. The [`JSON_TOOL`]'s streamed input is
//! `delta.content`.
//!
//! The usage is recorded whether the client asked for its chunk or not.
//! A stream is bounded: [`MAX_BLOCKS`] content blocks, a thinking block's
//! text kept for its signature chunk up to [`MAX_THINKING_BYTES`]; beyond,
//! and on an unreadable event, the client gets an error chunk and the end.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

#[cfg(doc)]
use super::{RequestOptions, Unsupported};

mod request;
mod response;
mod stream;
#[cfg(test)]
mod tests;

pub use request::request_from_chat;
pub use response::{error_to_chat, response_to_chat, usage_from_object};
pub use stream::{ChatStream, StreamUsage};

/// The name of the tool a `json_schema` response format becomes. Its
/// answer comes back as the message's content, not as a tool call.
pub const JSON_TOOL: &str = "switchyard_json_response";

/// The most content blocks one streamed answer may have.
pub const MAX_BLOCKS: usize = 1024;

/// The most bytes of one thinking block's text a stream keeps (to repeat
/// it with its signature).
pub const MAX_THINKING_BYTES: usize = 1 << 20;

// === Borrowed strings ===

/// A JSON string, borrowed from the input unless it held escapes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Str<'a>(Cow<'a, str>);

impl std::ops::Deref for Str<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Serialize for Str<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Str(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A string, or an array of `T`.
#[derive(Debug)]
enum OneOrMany<'a, T> {
    One(Str<'a>),
    Many(Vec<T>),
}

impl<'de: 'a, 'a, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<'a, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<'de, T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(Str(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(Str(Cow::Owned(v.to_owned()))))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(OneOrMany::One(Str(Cow::Owned(v))))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// At most `limit` bytes of `text`, cut at a character boundary.
fn clip(text: &str, limit: usize) -> &str {
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
