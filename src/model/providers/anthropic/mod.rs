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

use http::StatusCode;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

use super::{RequestOptions, StreamMapper, StreamOptions, Translated, Unsupported, Usage, sse};
use crate::model::openai::OpenAiError;

/// The name of the tool a `json_schema` response format becomes. Its
/// answer comes back as the message's content, not as a tool call.
pub const JSON_TOOL: &str = "switchyard_json_response";

/// The most content blocks one streamed answer may have.
pub const MAX_BLOCKS: usize = 1024;

/// The most bytes of one thinking block's text a stream keeps (to repeat
/// it with its signature).
pub const MAX_THINKING_BYTES: usize = 1 << 20;

/// The most bytes of an upstream error body echoed in a message.
const ECHO_LIMIT: usize = 200;

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

// === Requests ===

#[derive(Debug, Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(borrow, default)]
    stop: Option<OneOrMany<'a, Str<'a>>>,
    #[serde(borrow, default)]
    user: Option<Str<'a>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptionsIn>,
    #[serde(borrow, default)]
    tools: Option<Vec<ToolIn<'a>>>,
    #[serde(borrow, default)]
    tool_choice: Option<&'a RawValue>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(borrow, default)]
    reasoning_effort: Option<Str<'a>>,
    #[serde(borrow, default)]
    response_format: Option<ResponseFormat<'a>>,
    // What Anthropic cannot honour.
    #[serde(borrow, default)]
    n: Option<&'a RawValue>,
    #[serde(borrow, default)]
    logprobs: Option<&'a RawValue>,
    #[serde(borrow, default)]
    top_logprobs: Option<&'a RawValue>,
    #[serde(borrow, default)]
    presence_penalty: Option<&'a RawValue>,
    #[serde(borrow, default)]
    frequency_penalty: Option<&'a RawValue>,
    #[serde(borrow, default)]
    logit_bias: Option<&'a RawValue>,
    #[serde(borrow, default)]
    seed: Option<&'a RawValue>,
    #[serde(borrow, default)]
    audio: Option<&'a RawValue>,
    #[serde(borrow, default)]
    modalities: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prediction: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct StreamOptionsIn {
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Str<'a>,
    #[serde(borrow, default)]
    content: Option<OneOrMany<'a, Part<'a>>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallIn<'a>>>,
    #[serde(borrow, default)]
    tool_call_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    thinking_blocks: Option<Vec<ThinkingIn<'a>>>,
}

#[derive(Debug, Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    image_url: Option<ImageUrl<'a>>,
}

#[derive(Debug, Deserialize)]
struct ImageUrl<'a> {
    #[serde(borrow)]
    url: Str<'a>,
}

#[derive(Debug, Deserialize)]
struct ToolCallIn<'a> {
    #[serde(borrow)]
    id: Str<'a>,
    #[serde(borrow)]
    function: FunctionCallIn<'a>,
}

#[derive(Debug, Deserialize)]
struct FunctionCallIn<'a> {
    #[serde(borrow)]
    name: Str<'a>,
    #[serde(borrow, default)]
    arguments: Option<Str<'a>>,
}

#[derive(Debug, Deserialize)]
struct ThinkingIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
    #[serde(borrow, default)]
    signature: Option<Str<'a>>,
    #[serde(borrow, default)]
    data: Option<Str<'a>>,
}

#[derive(Debug, Deserialize)]
struct ToolIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    function: Option<FunctionIn<'a>>,
}

#[derive(Debug, Deserialize)]
struct FunctionIn<'a> {
    #[serde(borrow)]
    name: Str<'a>,
    #[serde(borrow, default)]
    description: Option<Str<'a>>,
    #[serde(borrow, default)]
    parameters: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct ResponseFormat<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(borrow, default)]
    json_schema: Option<JsonSchemaIn<'a>>,
}

#[derive(Debug, Deserialize)]
struct JsonSchemaIn<'a> {
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    description: Option<Str<'a>>,
    #[serde(borrow, default)]
    schema: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
struct NamedChoiceIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(borrow, default)]
    function: Option<NamedFunctionIn<'a>>,
}

#[derive(Debug, Deserialize)]
struct NamedFunctionIn<'a> {
    #[serde(borrow)]
    name: Str<'a>,
}

#[derive(Debug, Serialize)]
struct Out<'b> {
    model: &'b str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<TextBlock<'b>>,
    messages: Vec<OutMessage<'b>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'b str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<Metadata<'b>>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<OutTool<'b>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<OutChoice<'b>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<ThinkingConfig>,
}

#[derive(Debug, Serialize)]
struct TextBlock<'b> {
    #[serde(rename = "type")]
    kind: &'static str,
    text: &'b str,
}

#[derive(Debug, Serialize)]
struct OutMessage<'b> {
    role: &'static str,
    content: Vec<Block<'b>>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'b> {
    Thinking {
        thinking: &'b str,
        #[serde(skip_serializing_if = "Option::is_none")]
        signature: Option<&'b str>,
    },
    RedactedThinking {
        data: &'b str,
    },
    Text {
        text: &'b str,
    },
    Image {
        source: ImageSource<'b>,
    },
    ToolUse {
        id: &'b str,
        name: &'b str,
        input: &'b RawValue,
    },
    ToolResult {
        tool_use_id: &'b str,
        #[serde(skip_serializing_if = "Option::is_none")]
        content: Option<ToolResultContent<'b>>,
    },
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ImageSource<'b> {
    Base64 { media_type: &'b str, data: &'b str },
    Url { url: &'b str },
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum ToolResultContent<'b> {
    Text(&'b str),
    Blocks(Vec<Block<'b>>),
}

#[derive(Debug, Serialize)]
struct Metadata<'b> {
    user_id: &'b str,
}

#[derive(Debug, Serialize)]
struct OutTool<'b> {
    name: &'b str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Cow<'b, str>>,
    input_schema: Schema<'b>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Schema<'b> {
    Given(&'b RawValue),
    Empty(EmptySchema),
}

/// `{"type":"object","properties":{}}`.
#[derive(Debug, Serialize)]
struct EmptySchema {
    #[serde(rename = "type")]
    kind: &'static str,
    properties: Empty,
}

#[derive(Debug, Serialize)]
struct Empty {}

impl EmptySchema {
    const fn new() -> Self {
        Self {
            kind: "object",
            properties: Empty {},
        }
    }
}

#[derive(Debug, Serialize)]
struct OutChoice<'b> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'b str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Serialize)]
struct ThinkingConfig {
    #[serde(rename = "type")]
    kind: &'static str,
    budget_tokens: u64,
}

/// A tool choice as read from the client.
#[derive(Debug)]
enum Choice<'a> {
    Auto,
    None,
    Any,
    Tool(Str<'a>),
}

fn bad_request(
    message: impl Into<String>,
    param: impl Into<String>,
    code: &'static str,
) -> OpenAiError {
    OpenAiError::new(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        None,
        Some(code),
    )
    .with_param(param)
}

fn unsupported(param: &str) -> OpenAiError {
    bad_request(
        format!("`{param}` is not supported by this model's provider (Anthropic)."),
        param,
        "unsupported_parameter",
    )
}

/// Drops (`Ok`) or refuses what Anthropic cannot honour.
fn cannot_honour(unsupported_mode: Unsupported, param: &str) -> Result<(), OpenAiError> {
    match unsupported_mode {
        Unsupported::Reject => Err(unsupported(param)),
        _ => Ok(()),
    }
}

/// Whether a parameter Anthropic has no counterpart for asks for
/// something (null and the neutral values do not).
fn asks_for_something(name: &str, raw: &RawValue) -> bool {
    let text = raw.get();
    let number = || text.parse::<f64>().ok();
    match name {
        "n" => number() != Some(1.0),
        "logprobs" => text != "false",
        "presence_penalty" | "frequency_penalty" => number() != Some(0.0),
        "logit_bias" => !text.trim_start_matches('{').trim_start().starts_with('}'),
        "modalities" => match serde_json::from_str::<Vec<Str<'_>>>(text) {
            Ok(m) => m.iter().any(|m| &**m != "text"),
            Err(_) => true,
        },
        _ => text != "null",
    }
}

/// The body could not be read as a chat request: says where.
#[cold]
fn locate_error(body: &[u8], err: &serde_json::Error) -> OpenAiError {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        messages: Option<&'a RawValue>,
    }
    let generic = || {
        OpenAiError::new(
            StatusCode::BAD_REQUEST,
            format!("The request body is not a valid chat completion request: {err}."),
            "invalid_request_error",
            None,
            Some("invalid_request"),
        )
    };
    let Ok(probe) = serde_json::from_slice::<Probe<'_>>(body) else {
        return generic();
    };
    let Some(messages) = probe.messages else {
        return generic();
    };
    let Ok(list) = serde_json::from_str::<Vec<&RawValue>>(messages.get()) else {
        return bad_request(
            "`messages` must be an array of messages.",
            "messages",
            "invalid_type",
        );
    };
    for (i, m) in list.iter().enumerate() {
        if let Err(e) = serde_json::from_str::<Message<'_>>(m.get()) {
            let text = e.to_string();
            if text.contains("missing field `role`") {
                return bad_request(
                    format!("`messages[{i}]` has no `role`."),
                    format!("messages[{i}].role"),
                    "missing_required_parameter",
                );
            }
            return bad_request(
                format!("`messages[{i}]` is not a valid message: {text}."),
                format!("messages[{i}]"),
                "invalid_type",
            );
        }
    }
    generic()
}

/// Where new blocks of `role` go: the last message if it has that role
/// (consecutive messages of one role are merged), else a new one.
fn turn<'v, 'b>(
    messages: &'v mut Vec<OutMessage<'b>>,
    role: &'static str,
) -> &'v mut Vec<Block<'b>> {
    if messages.last().is_none_or(|m| m.role != role) {
        messages.push(OutMessage {
            role,
            content: Vec::new(),
        });
    }
    // Not empty: a message was there or was just pushed.
    let last = messages.len() - 1;
    &mut messages[last].content
}

/// A `data:` URI's media type and base64 data, or an http(s) URL.
fn image_source(url: &str) -> Option<ImageSource<'_>> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) = rest.split_once(";base64,")?;
        if media_type.is_empty() || data.is_empty() || media_type.contains(',') {
            return None;
        }
        return Some(ImageSource::Base64 { media_type, data });
    }
    let lower = url
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Some(ImageSource::Url { url });
    }
    None
}

/// Translates an OpenAI Chat Completions request body into an Anthropic
/// Messages request body for `opts.model` (see the [module](self) docs
/// for the mapping).
///
/// A body that is not a chat request (no `messages` array, a message
/// without a role), a malformed image or tool-call arguments that are not
/// a JSON object are refused with a 400 naming the offending parameter;
/// so is anything Anthropic cannot honour when `opts.unsupported` is
/// [`Unsupported::Reject`].
pub fn request_from_chat(body: &[u8], opts: &RequestOptions) -> Result<Translated, OpenAiError> {
    // Checked once here, strings are not checked again one by one.
    let text = std::str::from_utf8(body).map_err(|e| {
        OpenAiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "The request body is not valid UTF-8 (at byte {}).",
                e.valid_up_to()
            ),
            "invalid_request_error",
            None,
            Some("invalid_encoding"),
        )
    })?;
    let req: ChatRequest<'_> = serde_json::from_str(text).map_err(|e| locate_error(body, &e))?;
    let mode = opts.unsupported;
    let Some(messages) = req.messages.as_deref() else {
        return Err(bad_request(
            "`messages` is required.",
            "messages",
            "missing_required_parameter",
        ));
    };

    for (name, value) in [
        ("n", req.n),
        ("logprobs", req.logprobs),
        ("top_logprobs", req.top_logprobs),
        ("presence_penalty", req.presence_penalty),
        ("frequency_penalty", req.frequency_penalty),
        ("logit_bias", req.logit_bias),
        ("seed", req.seed),
        ("audio", req.audio),
        ("modalities", req.modalities),
        ("prediction", req.prediction),
    ] {
        if let Some(raw) = value
            && asks_for_something(name, raw)
        {
            cannot_honour(mode, name)?;
        }
    }

    let mut system = Vec::new();
    let mut out: Vec<OutMessage<'_>> = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        match &*m.role {
            "system" | "developer" => match &m.content {
                Some(OneOrMany::One(text)) if !text.is_empty() => {
                    system.push(TextBlock { kind: "text", text });
                }
                Some(OneOrMany::Many(parts)) => {
                    for (j, p) in parts.iter().enumerate() {
                        match (&*p.kind, &p.text) {
                            ("text", Some(text)) if !text.is_empty() => {
                                system.push(TextBlock { kind: "text", text });
                            }
                            ("text", _) => {}
                            _ => cannot_honour(mode, &format!("messages[{i}].content[{j}]"))?,
                        }
                    }
                }
                _ => {}
            },
            "user" => {
                let blocks = turn(&mut out, "user");
                match &m.content {
                    Some(OneOrMany::One(text)) => blocks.push(Block::Text { text }),
                    Some(OneOrMany::Many(parts)) => {
                        for (j, p) in parts.iter().enumerate() {
                            match &*p.kind {
                                "text" => {
                                    if let Some(text) = &p.text
                                        && !text.is_empty()
                                    {
                                        blocks.push(Block::Text { text });
                                    }
                                }
                                "image_url" => {
                                    let source =
                                        p.image_url.as_ref().and_then(|u| image_source(&u.url));
                                    let Some(source) = source else {
                                        return Err(bad_request(
                                            "The image must be a base64 `data:` URI or an http(s) URL.",
                                            format!("messages[{i}].content[{j}].image_url"),
                                            "invalid_value",
                                        ));
                                    };
                                    blocks.push(Block::Image { source });
                                }
                                _ => cannot_honour(mode, &format!("messages[{i}].content[{j}]"))?,
                            }
                        }
                    }
                    None => {}
                }
            }
            "assistant" => {
                let blocks = turn(&mut out, "assistant");
                for (k, t) in m.thinking_blocks.iter().flatten().enumerate() {
                    match &*t.kind {
                        "thinking" => blocks.push(Block::Thinking {
                            thinking: t.thinking.as_deref().unwrap_or(""),
                            signature: t.signature.as_deref(),
                        }),
                        "redacted_thinking" => blocks.push(Block::RedactedThinking {
                            data: t.data.as_deref().unwrap_or(""),
                        }),
                        _ => {
                            return Err(bad_request(
                                "A thinking block must be of type `thinking` or `redacted_thinking`.",
                                format!("messages[{i}].thinking_blocks[{k}].type"),
                                "invalid_value",
                            ));
                        }
                    }
                }
                match &m.content {
                    Some(OneOrMany::One(text)) if !text.is_empty() => {
                        blocks.push(Block::Text { text })
                    }
                    Some(OneOrMany::Many(parts)) => {
                        for p in parts {
                            if &*p.kind == "text"
                                && let Some(text) = &p.text
                                && !text.is_empty()
                            {
                                blocks.push(Block::Text { text });
                            }
                        }
                    }
                    _ => {}
                }
                for (j, call) in m.tool_calls.iter().flatten().enumerate() {
                    let args = call.function.arguments.as_deref().unwrap_or("").trim();
                    let args = if args.is_empty() { "{}" } else { args };
                    let input = match serde_json::from_str::<&RawValue>(args) {
                        Ok(raw) if raw.get().starts_with('{') => raw,
                        _ => {
                            return Err(bad_request(
                                "Tool call arguments must be a JSON object.",
                                format!("messages[{i}].tool_calls[{j}].function.arguments"),
                                "invalid_value",
                            ));
                        }
                    };
                    blocks.push(Block::ToolUse {
                        id: &call.id,
                        name: &call.function.name,
                        input,
                    });
                }
            }
            "tool" => {
                let Some(id) = &m.tool_call_id else {
                    return Err(bad_request(
                        "A tool message needs its `tool_call_id`.",
                        format!("messages[{i}].tool_call_id"),
                        "missing_required_parameter",
                    ));
                };
                let content = match &m.content {
                    Some(OneOrMany::One(text)) if !text.is_empty() => {
                        Some(ToolResultContent::Text(text))
                    }
                    Some(OneOrMany::Many(parts)) => Some(ToolResultContent::Blocks(
                        parts
                            .iter()
                            .filter(|p| &*p.kind == "text")
                            .filter_map(|p| p.text.as_deref())
                            .filter(|t| !t.is_empty())
                            .map(|text| Block::Text { text })
                            .collect(),
                    )),
                    _ => None,
                };
                turn(&mut out, "user").push(Block::ToolResult {
                    tool_use_id: id,
                    content,
                });
            }
            _ => {
                return Err(bad_request(
                    format!("`{}` is not a message role.", &*m.role),
                    format!("messages[{i}].role"),
                    "invalid_value",
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(bad_request(
            "`messages` needs at least one user or assistant message.",
            "messages",
            "invalid_value",
        ));
    }

    // Tools.
    let mut tools = Vec::new();
    for (i, t) in req.tools.iter().flatten().enumerate() {
        match (t.kind.as_deref().unwrap_or("function"), &t.function) {
            ("function", Some(f)) => tools.push(OutTool {
                name: &f.name,
                description: f.description.as_deref().map(Cow::Borrowed),
                input_schema: f
                    .parameters
                    .map_or(Schema::Empty(EmptySchema::new()), Schema::Given),
            }),
            _ => cannot_honour(mode, &format!("tools[{i}]"))?,
        }
    }
    let mut choice = match req.tool_choice {
        None => None,
        Some(raw) => Some(read_choice(raw)?),
    };
    if let Some(format) = &req.response_format {
        match &*format.kind {
            "text" => {}
            "json_schema" => {
                let schema = format.json_schema.as_ref();
                let about = schema
                    .and_then(|s| s.description.as_deref().or(s.name.as_deref()))
                    .unwrap_or("the answer");
                tools.push(OutTool {
                    name: JSON_TOOL,
                    description: Some(Cow::Owned(format!(
                        "Answer with this tool: its input is the response ({about})."
                    ))),
                    input_schema: schema
                        .and_then(|s| s.schema)
                        .map_or(Schema::Empty(EmptySchema::new()), Schema::Given),
                });
                choice = Some(Choice::Tool(Str(Cow::Borrowed(JSON_TOOL))));
            }
            _ => cannot_honour(mode, "response_format")?,
        }
    }
    let tool_choice = if tools.is_empty() {
        None
    } else {
        let disable = (req.parallel_tool_calls == Some(false)).then_some(true);
        match choice.as_ref() {
            None if disable.is_some() => Some(OutChoice {
                kind: "auto",
                name: None,
                disable_parallel_tool_use: disable,
            }),
            None => None,
            Some(Choice::None) => Some(OutChoice {
                kind: "none",
                name: None,
                disable_parallel_tool_use: None,
            }),
            Some(c) => Some(OutChoice {
                kind: match c {
                    Choice::Any => "any",
                    Choice::Tool(_) => "tool",
                    _ => "auto",
                },
                name: match c {
                    Choice::Tool(name) => Some(&**name),
                    _ => None,
                },
                disable_parallel_tool_use: disable,
            }),
        }
    };

    // Thinking.
    let mut budget = match req.reasoning_effort.as_deref() {
        None | Some("none") => None,
        Some("minimal" | "low") => Some(1024),
        Some("medium") => Some(4096),
        Some("high") => Some(16384),
        Some(other) => {
            return Err(bad_request(
                format!("`{other}` is not a reasoning effort (minimal, low, medium, high)."),
                "reasoning_effort",
                "invalid_value",
            ));
        }
    };
    let forced = tool_choice
        .as_ref()
        .is_some_and(|c| matches!(c.kind, "any" | "tool"));
    if budget.is_some() && forced {
        cannot_honour(mode, "reasoning_effort")?;
        budget = None;
    }

    let mut max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(u64::from(opts.default_max_tokens));
    let (mut temperature, mut top_p) = (req.temperature, req.top_p);
    if let Some(budget) = budget {
        if max_tokens <= budget {
            max_tokens = max_tokens.saturating_add(budget);
        }
        for (name, value) in [("temperature", &mut temperature), ("top_p", &mut top_p)] {
            if let Some(v) = value.take()
                && v != 1.0
            {
                cannot_honour(mode, name)?;
            }
        }
    }
    if let Some(t) = temperature
        && t > 1.0
    {
        cannot_honour(mode, "temperature")?;
        temperature = Some(1.0);
    }

    let stop_sequences = match &req.stop {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![&**s],
        Some(OneOrMany::Many(list)) => list.iter().map(|s| &**s).collect(),
    };
    let translated = Out {
        model: &opts.model,
        max_tokens,
        system,
        messages: out,
        temperature,
        top_p,
        stop_sequences,
        metadata: req.user.as_deref().map(|user_id| Metadata { user_id }),
        stream: req.stream == Some(true),
        tools,
        tool_choice,
        thinking: budget.map(|budget_tokens| ThinkingConfig {
            kind: "enabled",
            budget_tokens,
        }),
    };
    let mut body = Vec::with_capacity(body.len() + 64);
    serde_json::to_writer(&mut body, &translated).map_err(|e| {
        OpenAiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("The request could not be written: {e}."),
            "api_error",
            None,
            None,
        )
    })?;
    Ok(Translated {
        body,
        stream: req.stream == Some(true),
        include_usage: req
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
    })
}

fn read_choice(raw: &RawValue) -> Result<Choice<'_>, OpenAiError> {
    let invalid = || {
        bad_request(
            "`tool_choice` must be `auto`, `none`, `required` or {\"type\":\"function\",\"function\":{\"name\"}}.",
            "tool_choice",
            "invalid_value",
        )
    };
    let text = raw.get();
    if text.starts_with('"') {
        let mode: Str<'_> = serde_json::from_str(text).map_err(|_| invalid())?;
        return match &*mode {
            "auto" => Ok(Choice::Auto),
            "none" => Ok(Choice::None),
            "required" => Ok(Choice::Any),
            _ => Err(invalid()),
        };
    }
    let named: NamedChoiceIn<'_> = serde_json::from_str(text).map_err(|_| invalid())?;
    match (&*named.kind, named.function) {
        ("function", Some(f)) => Ok(Choice::Tool(f.name)),
        _ => Err(invalid()),
    }
}

// === Answers ===

#[derive(Debug, Default, Deserialize)]
struct UsageIn {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

impl UsageIn {
    /// Sets what this object says in `usage` (counts it omits are kept).
    fn apply(&self, usage: &mut Usage) {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let write = self.cache_creation_input_tokens.unwrap_or(0);
        if self.input_tokens.is_some()
            || self.cache_read_input_tokens.is_some()
            || self.cache_creation_input_tokens.is_some()
        {
            usage.input = self
                .input_tokens
                .unwrap_or(0)
                .saturating_add(read)
                .saturating_add(write);
            usage.cached_read = read;
            usage.cache_write = write;
        }
        if let Some(output) = self.output_tokens {
            usage.output = output;
        }
    }
}

#[derive(Debug, Deserialize)]
struct MessageIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    content: Option<Vec<BlockIn<'a>>>,
    #[serde(borrow, default)]
    stop_reason: Option<Str<'a>>,
    #[serde(default)]
    usage: Option<UsageIn>,
}

#[derive(Debug, Deserialize)]
struct BlockIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    name: Option<Str<'a>>,
    #[serde(borrow, default)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
    #[serde(borrow, default)]
    signature: Option<Str<'a>>,
    #[serde(borrow, default)]
    data: Option<Str<'a>>,
}

#[derive(Debug, Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedOut,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
}

#[derive(Debug, Serialize)]
struct CachedOut {
    cached_tokens: u64,
}

impl From<&Usage> for UsageOut {
    fn from(u: &Usage) -> Self {
        Self {
            prompt_tokens: u.input,
            completion_tokens: u.output,
            total_tokens: u.total(),
            prompt_tokens_details: CachedOut {
                cached_tokens: u.cached_read,
            },
            cache_creation_input_tokens: u.cache_write,
            cache_read_input_tokens: u.cached_read,
        }
    }
}

#[derive(Debug, Serialize)]
struct Completion<'b> {
    id: &'b str,
    object: &'static str,
    created: u64,
    model: &'b str,
    choices: [CompletionChoice<'b>; 1],
    usage: UsageOut,
}

#[derive(Debug, Serialize)]
struct CompletionChoice<'b> {
    index: u32,
    message: AssistantOut<'b>,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
struct AssistantOut<'b> {
    role: &'static str,
    content: Option<Cow<'b, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<Cow<'b, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut<'b>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<Cow<'b, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    thinking_blocks: Vec<ThinkingOut<'b>>,
}

#[derive(Debug, Serialize)]
struct ToolCallOut<'b> {
    id: &'b str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut<'b>,
}

#[derive(Debug, Serialize)]
struct FunctionOut<'b> {
    name: &'b str,
    arguments: &'b str,
}

#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ThinkingOut<'b> {
    Thinking {
        thinking: &'b str,
        signature: &'b str,
    },
    RedactedThinking {
        data: &'b str,
    },
}

/// Appends `piece` to `acc`, borrowing while there is only one piece.
fn concat<'b>(acc: &mut Option<Cow<'b, str>>, piece: &'b str) {
    match acc {
        None => *acc = Some(Cow::Borrowed(piece)),
        Some(text) => text.to_mut().push_str(piece),
    }
}

/// The OpenAI finish reason of an Anthropic stop reason.
fn finish_reason(stop_reason: &str, tool_calls: bool, json_answer: bool) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" if tool_calls || !json_answer => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

fn bad_upstream(what: &str) -> OpenAiError {
    OpenAiError::new(
        StatusCode::BAD_GATEWAY,
        format!("The upstream's answer could not be read: {what}."),
        "api_error",
        None,
        Some("bad_upstream_response"),
    )
}

/// Translates an Anthropic Messages JSON response into an OpenAI
/// `chat.completion` (see the [module](self) docs for the mapping), with
/// its usage. `model` is the model the client sees, `created` the Unix
/// time of the answer.
///
/// An upstream body that cannot be read is a 502 (`api_error`,
/// `bad_upstream_response`); an Anthropic error document is translated
/// as [`error_to_chat`] does, with a 502.
pub fn response_to_chat(
    body: &[u8],
    model: &str,
    created: u64,
) -> Result<(Vec<u8>, Usage), OpenAiError> {
    let text = std::str::from_utf8(body).map_err(|_| bad_upstream("it is not UTF-8"))?;
    let msg: MessageIn<'_> =
        serde_json::from_str(text).map_err(|e| bad_upstream(&e.to_string()))?;
    if msg.kind.as_deref() == Some("error") {
        return Err(error_to_chat(StatusCode::BAD_GATEWAY, body));
    }
    let Some(blocks) = &msg.content else {
        return Err(bad_upstream("it has no `content`"));
    };
    let mut usage = Usage::default();
    if let Some(u) = &msg.usage {
        u.apply(&mut usage);
    }
    let mut content = None;
    let mut reasoning = None;
    let mut tool_calls = Vec::new();
    let mut thinking_blocks = Vec::new();
    let mut json_answer = false;
    for b in blocks {
        match &*b.kind {
            "text" => concat(&mut content, b.text.as_deref().unwrap_or("")),
            "thinking" => {
                let thinking = b.thinking.as_deref().unwrap_or("");
                concat(&mut reasoning, thinking);
                thinking_blocks.push(ThinkingOut::Thinking {
                    thinking,
                    signature: b.signature.as_deref().unwrap_or(""),
                });
            }
            "redacted_thinking" => thinking_blocks.push(ThinkingOut::RedactedThinking {
                data: b.data.as_deref().unwrap_or(""),
            }),
            "tool_use" => {
                let name = b.name.as_deref().unwrap_or("");
                let arguments = b.input.map_or("{}", RawValue::get);
                if name == JSON_TOOL {
                    json_answer = true;
                    concat(&mut content, arguments);
                } else {
                    tool_calls.push(ToolCallOut {
                        id: b.id.as_deref().unwrap_or(""),
                        kind: "function",
                        function: FunctionOut { name, arguments },
                    });
                }
            }
            _ => {}
        }
    }
    let stop = msg.stop_reason.as_deref().unwrap_or("end_turn");
    let finish = finish_reason(stop, !tool_calls.is_empty(), json_answer);
    let refusal = (stop == "refusal").then(|| {
        content
            .clone()
            .filter(|c| !c.is_empty())
            .unwrap_or(Cow::Borrowed("The model declined to answer."))
    });
    if content.is_none() && tool_calls.is_empty() && refusal.is_none() {
        content = Some(Cow::Borrowed(""));
    }
    let completion = Completion {
        id: msg.id.as_deref().unwrap_or(""),
        object: "chat.completion",
        created,
        model,
        choices: [CompletionChoice {
            index: 0,
            message: AssistantOut {
                role: "assistant",
                content,
                refusal,
                tool_calls,
                reasoning_content: reasoning,
                thinking_blocks,
            },
            logprobs: None,
            finish_reason: finish,
        }],
        usage: UsageOut::from(&usage),
    };
    let mut out = Vec::with_capacity(body.len() + 128);
    serde_json::to_writer(&mut out, &completion).map_err(|e| bad_upstream(&e.to_string()))?;
    Ok((out, usage))
}

/// Reads an Anthropic `usage` object (as found in a response or a
/// `message_start` event): `input` counts the cache reads and writes too.
/// `None` when it is not an object of counts.
pub fn usage_from_object(usage_json: &[u8]) -> Option<Usage> {
    // serde reads a struct from an array too: only objects are usage.
    if usage_json.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let u: UsageIn = serde_json::from_slice(usage_json).ok()?;
    let mut usage = Usage::default();
    u.apply(&mut usage);
    Some(usage)
}

// === Errors ===

#[derive(Debug, Deserialize)]
struct ErrorDoc<'a> {
    #[serde(borrow)]
    error: ErrorIn<'a>,
}

#[derive(Debug, Deserialize)]
struct ErrorIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    message: Option<Str<'a>>,
}

/// The OpenAI error type and code of an Anthropic error type.
///
/// | Anthropic | OpenAI `type` | `code` |
/// | --- | --- | --- |
/// | `invalid_request_error` | `invalid_request_error` | null |
/// | `authentication_error` | `authentication_error` | null |
/// | `permission_error` | `permission_error` | null |
/// | `not_found_error` | `invalid_request_error` | `not_found` |
/// | `request_too_large` | `invalid_request_error` | `request_too_large` |
/// | `rate_limit_error` | `rate_limit_error` | `rate_limit_exceeded` |
/// | `api_error` | `api_error` | `server_error` |
/// | `overloaded_error` | `server_error` | `server_is_overloaded` |
/// | anything else | by status: `invalid_request_error` (4xx) or `api_error` | null |
fn error_kind(kind: &str, status: StatusCode) -> (&'static str, Option<&'static str>) {
    match kind {
        "invalid_request_error" => ("invalid_request_error", None),
        "authentication_error" => ("authentication_error", None),
        "permission_error" => ("permission_error", None),
        "not_found_error" => ("invalid_request_error", Some("not_found")),
        "request_too_large" => ("invalid_request_error", Some("request_too_large")),
        "rate_limit_error" => ("rate_limit_error", Some("rate_limit_exceeded")),
        "api_error" => ("api_error", Some("server_error")),
        "overloaded_error" => ("server_error", Some("server_is_overloaded")),
        _ if status.is_client_error() => ("invalid_request_error", None),
        _ => ("api_error", None),
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

/// Translates an Anthropic error answer (any status, any body) into an
/// OpenAI error with the same status (Anthropic's 529 stays 529). The
/// error types map as Anthropic's `overloaded_error` becoming
/// `server_error` with the code `server_is_overloaded`, `rate_limit_error`
/// `rate_limit_error` with `rate_limit_exceeded`, `api_error` `api_error`
/// with `server_error`, `not_found_error` and `request_too_large`
/// `invalid_request_error` (with codes `not_found`, `request_too_large`),
/// the others their OpenAI namesakes. A body that is not an Anthropic
/// error gives a generic message quoting at most its first 200 bytes.
pub fn error_to_chat(status: http::StatusCode, body: &[u8]) -> OpenAiError {
    if let Ok(doc) = serde_json::from_slice::<ErrorDoc<'_>>(body) {
        let (kind, code) = error_kind(doc.error.kind.as_deref().unwrap_or(""), status);
        let message = doc
            .error
            .message
            .as_deref()
            .unwrap_or("The upstream failed.");
        return OpenAiError::new(status, clip(message, 4096), kind, None, code);
    }
    let (kind, code) = error_kind("", status);
    let text = String::from_utf8_lossy(body.get(..ECHO_LIMIT + 4).unwrap_or(body));
    let text = clip(text.trim(), ECHO_LIMIT);
    let message = if text.is_empty() {
        format!("The upstream answered {status}.")
    } else {
        format!("The upstream answered {status}: {text}")
    };
    OpenAiError::new(status, message, kind, None, code)
}

// === Streams ===

#[derive(Debug, Deserialize)]
struct EventIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Str<'a>,
    #[serde(default)]
    index: Option<u64>,
    #[serde(borrow, default)]
    message: Option<MessageIn<'a>>,
    #[serde(borrow, default)]
    content_block: Option<BlockIn<'a>>,
    #[serde(borrow, default)]
    delta: Option<DeltaIn<'a>>,
    #[serde(default)]
    usage: Option<UsageIn>,
    #[serde(borrow, default)]
    error: Option<ErrorIn<'a>>,
}

#[derive(Debug, Deserialize)]
struct DeltaIn<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    text: Option<Str<'a>>,
    #[serde(borrow, default)]
    thinking: Option<Str<'a>>,
    #[serde(borrow, default)]
    signature: Option<Str<'a>>,
    #[serde(borrow, default)]
    partial_json: Option<Str<'a>>,
    #[serde(borrow, default)]
    stop_reason: Option<Str<'a>>,
}

/// What starts every chunk: `{"id","object","created","model"`.
#[derive(Debug, Serialize)]
struct ChunkHead<'b> {
    id: &'b str,
    object: &'static str,
    created: u64,
    model: &'b str,
}

#[derive(Debug, Default, Serialize)]
struct Delta<'b> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'b str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'b str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_blocks: Option<[ThinkingOut<'b>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<[ToolCallDelta<'b>; 1]>,
}

#[derive(Debug, Serialize)]
struct ToolCallDelta<'b> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'b str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
    function: FunctionDelta<'b>,
}

#[derive(Debug, Serialize)]
struct FunctionDelta<'b> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'b str>,
    arguments: &'b str,
}

#[derive(Debug, Serialize)]
struct ErrorChunk<'b> {
    error: ErrorChunkBody<'b>,
}

#[derive(Debug, Serialize)]
struct ErrorChunkBody<'b> {
    message: &'b str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<()>,
    code: Option<()>,
}

/// What a content block of the stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    /// Not started, or of a type with nothing to say.
    Other,
    Text,
    Thinking,
    /// A tool call, with its index among the stream's tool calls.
    Tool(u32),
    /// The [`JSON_TOOL`]: its input is content.
    Json,
}

/// Translates an Anthropic Messages event stream into OpenAI
/// `chat.completion.chunk` events, an event at a time (see the
/// [module](self) docs for the mapping).
///
/// Its state is bounded: the message id, one kind per content block (at
/// most [`MAX_BLOCKS`]) and the current thinking block's text (at most
/// [`MAX_THINKING_BYTES`]).
#[derive(Debug)]
pub struct ChatStream {
    opts: StreamOptions,
    id: String,
    started: bool,
    done: bool,
    blocks: Vec<BlockKind>,
    tools: u32,
    json_answer: bool,
    thinking: String,
    usage: Usage,
    /// `{"id":…,"object":…,"created":…,"model":…,` once the id is known.
    head: Vec<u8>,
}

impl ChatStream {
    /// A stream answering as `opts.model`, ending with a usage chunk if
    /// `opts.include_usage`.
    pub fn new(opts: StreamOptions) -> Self {
        Self {
            opts,
            id: String::new(),
            started: false,
            done: false,
            blocks: Vec::new(),
            tools: 0,
            json_answer: false,
            thinking: String::new(),
            usage: Usage::default(),
            head: Vec::new(),
        }
    }

    /// `{"id":…,"object":…,"created":…,"model":…,`.
    fn write_head(&self, out: &mut Vec<u8>) {
        let head = ChunkHead {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.opts.created,
            model: &self.opts.model,
        };
        // Writing plain structs into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &head);
        out.pop();
        out.push(b',');
    }

    /// Appends `data: ` and the chunk's head.
    fn open(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: ");
        if self.head.is_empty() {
            self.write_head(out);
        } else {
            out.extend_from_slice(&self.head);
        }
    }

    /// Appends a chunk with one choice.
    fn delta(&self, out: &mut Vec<u8>, delta: Delta<'_>, finish_reason: Option<&'static str>) {
        self.open(out);
        out.extend_from_slice(br#""choices":[{"index":0,"delta":"#);
        let _ = serde_json::to_writer(&mut *out, &delta);
        match finish_reason {
            None => out.extend_from_slice(br#","finish_reason":null}]}"#),
            Some(reason) => {
                out.extend_from_slice(br#","finish_reason":""#);
                out.extend_from_slice(reason.as_bytes());
                out.extend_from_slice(br#""}]}"#);
            }
        }
        out.extend_from_slice(b"\n\n");
    }

    /// Appends the usage chunk.
    fn usage_chunk(&self, out: &mut Vec<u8>) {
        self.open(out);
        out.extend_from_slice(br#""choices":[],"usage":"#);
        let _ = serde_json::to_writer(&mut *out, &UsageOut::from(&self.usage));
        out.extend_from_slice(b"}\n\n");
    }

    /// The first chunk, once.
    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.started = true;
            let mut head = Vec::with_capacity(128);
            self.write_head(&mut head);
            self.head = head;
            self.delta(
                out,
                Delta {
                    role: Some("assistant"),
                    content: Some(""),
                    ..Delta::default()
                },
                None,
            );
        }
    }

    /// Ends the client's stream with an error chunk.
    fn abort(&mut self, out: &mut Vec<u8>, kind: &'static str, message: &str) {
        if self.done {
            return;
        }
        let chunk = ErrorChunk {
            error: ErrorChunkBody {
                message,
                kind,
                param: None,
                code: None,
            },
        };
        out.extend_from_slice(b"data: ");
        let _ = serde_json::to_writer(&mut *out, &chunk);
        out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
        self.done = true;
        self.usage.truncated = true;
    }

    /// The kind of block `index`, making room for it. `None` past the cap.
    fn slot(&mut self, index: Option<u64>) -> Option<&mut BlockKind> {
        let i = usize::try_from(index.unwrap_or(0))
            .ok()
            .filter(|&i| i < MAX_BLOCKS)?;
        if i >= self.blocks.len() {
            self.blocks.resize(i + 1, BlockKind::Other);
        }
        self.blocks.get_mut(i)
    }

    fn block_start(&mut self, ev: &EventIn<'_>, out: &mut Vec<u8>) {
        let Some(block) = &ev.content_block else {
            return;
        };
        let tools = self.tools;
        let Some(slot) = self.slot(ev.index) else {
            return self.abort(
                out,
                "api_error",
                "The upstream's answer has too many content blocks.",
            );
        };
        let kind = match &*block.kind {
            "text" => BlockKind::Text,
            "thinking" => BlockKind::Thinking,
            "tool_use" if block.name.as_deref() == Some(JSON_TOOL) => BlockKind::Json,
            "tool_use" => BlockKind::Tool(tools),
            _ => BlockKind::Other,
        };
        *slot = kind;
        match kind {
            BlockKind::Text => {
                if let Some(text) = block.text.as_deref().filter(|t| !t.is_empty()) {
                    self.delta(
                        out,
                        Delta {
                            content: Some(text),
                            ..Delta::default()
                        },
                        None,
                    );
                }
            }
            BlockKind::Thinking => {
                self.thinking.clear();
                if let Some(text) = block.thinking.as_deref().filter(|t| !t.is_empty()) {
                    self.thinking_text(text, out);
                }
            }
            BlockKind::Tool(n) => {
                self.tools = n.saturating_add(1);
                // The block's `input` (`{}`) is not the arguments' start:
                // they come whole in the `input_json_delta`s.
                self.delta(
                    out,
                    Delta {
                        tool_calls: Some([ToolCallDelta {
                            index: n,
                            id: Some(block.id.as_deref().unwrap_or("")),
                            kind: Some("function"),
                            function: FunctionDelta {
                                name: Some(block.name.as_deref().unwrap_or("")),
                                arguments: "",
                            },
                        }]),
                        ..Delta::default()
                    },
                    None,
                );
            }
            BlockKind::Json => self.json_answer = true,
            BlockKind::Other => {
                if &*block.kind == "redacted_thinking" {
                    self.delta(
                        out,
                        Delta {
                            thinking_blocks: Some([ThinkingOut::RedactedThinking {
                                data: block.data.as_deref().unwrap_or(""),
                            }]),
                            ..Delta::default()
                        },
                        None,
                    );
                }
            }
        }
    }

    fn thinking_text(&mut self, text: &str, out: &mut Vec<u8>) {
        if self.thinking.len() + text.len() > MAX_THINKING_BYTES {
            return self.abort(
                out,
                "api_error",
                "The upstream's thinking block is too long.",
            );
        }
        self.thinking.push_str(text);
        self.delta(
            out,
            Delta {
                reasoning_content: Some(text),
                ..Delta::default()
            },
            None,
        );
    }

    fn block_delta(&mut self, ev: &EventIn<'_>, out: &mut Vec<u8>) {
        let Some(delta) = &ev.delta else {
            return;
        };
        let Some(&mut kind) = self.slot(ev.index) else {
            return self.abort(
                out,
                "api_error",
                "The upstream's answer has too many content blocks.",
            );
        };
        match delta.kind.as_deref().unwrap_or("") {
            "text_delta" => {
                if let Some(text) = delta.text.as_deref().filter(|t| !t.is_empty()) {
                    self.delta(
                        out,
                        Delta {
                            content: Some(text),
                            ..Delta::default()
                        },
                        None,
                    );
                }
            }
            "thinking_delta" => {
                if let Some(text) = delta.thinking.as_deref().filter(|t| !t.is_empty()) {
                    self.thinking_text(text, out);
                }
            }
            "signature_delta" => {
                let signature = delta.signature.as_deref().unwrap_or("");
                self.delta(
                    out,
                    Delta {
                        thinking_blocks: Some([ThinkingOut::Thinking {
                            thinking: &self.thinking,
                            signature,
                        }]),
                        ..Delta::default()
                    },
                    None,
                );
                self.thinking.clear();
            }
            "input_json_delta" => {
                let Some(part) = delta.partial_json.as_deref().filter(|p| !p.is_empty()) else {
                    return;
                };
                match kind {
                    BlockKind::Tool(n) => self.delta(
                        out,
                        Delta {
                            tool_calls: Some([ToolCallDelta {
                                index: n,
                                id: None,
                                kind: None,
                                function: FunctionDelta {
                                    name: None,
                                    arguments: part,
                                },
                            }]),
                            ..Delta::default()
                        },
                        None,
                    ),
                    BlockKind::Json => self.delta(
                        out,
                        Delta {
                            content: Some(part),
                            ..Delta::default()
                        },
                        None,
                    ),
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

impl StreamMapper for ChatStream {
    fn event(&mut self, event: &sse::Event<'_>, out: &mut Vec<u8>) {
        if self.done || event.event == "ping" {
            return;
        }
        let ev: EventIn<'_> = match serde_json::from_str(event.data) {
            Ok(ev) => ev,
            Err(_) => {
                return self.abort(
                    out,
                    "api_error",
                    "The upstream sent an event that could not be read.",
                );
            }
        };
        match &*ev.kind {
            "message_start" => {
                if let Some(m) = &ev.message {
                    if !self.started
                        && let Some(id) = &m.id
                    {
                        self.id = clip(id, 256).to_owned();
                    }
                    if let Some(u) = &m.usage {
                        u.apply(&mut self.usage);
                    }
                }
                self.start(out);
            }
            "content_block_start" => {
                self.start(out);
                self.block_start(&ev, out);
            }
            "content_block_delta" => {
                self.start(out);
                self.block_delta(&ev, out);
            }
            "message_delta" => {
                self.start(out);
                if let Some(u) = &ev.usage {
                    u.apply(&mut self.usage);
                }
                if let Some(stop) = ev.delta.as_ref().and_then(|d| d.stop_reason.as_deref()) {
                    let finish = finish_reason(stop, self.tools > 0, self.json_answer);
                    self.delta(out, Delta::default(), Some(finish));
                }
            }
            "message_stop" => {
                self.start(out);
                if self.opts.include_usage {
                    self.usage_chunk(out);
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
                self.done = true;
            }
            "error" => {
                let (kind, message) = match &ev.error {
                    Some(e) => (
                        error_kind(
                            e.kind.as_deref().unwrap_or(""),
                            StatusCode::INTERNAL_SERVER_ERROR,
                        )
                        .0,
                        e.message.as_deref().unwrap_or("The upstream failed."),
                    ),
                    None => ("api_error", "The upstream failed."),
                };
                self.abort(out, kind, clip(message, 4096));
            }
            _ => {}
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.abort(
            out,
            "api_error",
            "The upstream's stream ended before its last event.",
        );
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        self.abort(out, "api_error", message);
    }

    fn usage(&self) -> Usage {
        self.usage
    }
}

/// Reads the token counts of an Anthropic Messages event stream passed
/// through untouched: the input counts of `message_start` (cache reads
/// and writes included), the output count of the last `message_delta`.
///
/// ```
/// use switchyard::model::providers::anthropic::StreamUsage;
/// use switchyard::model::providers::sse::Event;
///
/// let mut u = StreamUsage::new();
/// u.event(&Event { event: "message_start", data: r#"{"type":"message_start","message":{"usage":{"input_tokens":5,"cache_read_input_tokens":100,"output_tokens":1}}}"# });
/// u.event(&Event { event: "message_delta", data: r#"{"type":"message_delta","delta":{},"usage":{"output_tokens":7}}"# });
/// u.finish();
/// assert_eq!((u.usage().input, u.usage().cached_read, u.usage().output), (105, 100, 7));
/// assert!(u.usage().truncated); // no message_stop
/// ```
#[derive(Debug, Default)]
pub struct StreamUsage {
    usage: Usage,
    stopped: bool,
}

impl StreamUsage {
    /// Nothing counted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one event of the stream.
    pub fn event(&mut self, e: &sse::Event<'_>) {
        #[derive(Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "type", borrow)]
            kind: Str<'a>,
        }
        #[derive(Deserialize)]
        struct Start {
            message: Option<Usages>,
        }
        #[derive(Deserialize)]
        struct Usages {
            #[serde(default)]
            usage: Option<UsageIn>,
        }
        let kind;
        let name = if e.event.is_empty() {
            kind = serde_json::from_str::<Kind<'_>>(e.data).ok();
            kind.as_ref().map_or("", |k| &*k.kind)
        } else {
            e.event
        };
        match name {
            "message_start" => {
                if let Ok(Start { message: Some(m) }) = serde_json::from_str(e.data)
                    && let Some(u) = m.usage
                {
                    u.apply(&mut self.usage);
                }
            }
            "message_delta" => {
                if let Ok(Usages { usage: Some(u) }) = serde_json::from_str(e.data) {
                    u.apply(&mut self.usage);
                }
            }
            "message_stop" => self.stopped = true,
            _ => {}
        }
    }

    /// The stream ended: without a `message_stop`, the usage is flagged
    /// truncated.
    pub fn finish(&mut self) {
        if !self.stopped {
            self.usage.truncated = true;
        }
    }

    /// The tokens counted so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!(
                "../../../../tests/fixtures/providers/anthropic/",
                $name
            ))
        };
    }

    fn opts() -> StreamOptions {
        StreamOptions::new("gpt-claude")
            .created(1_700_000_000)
            .include_usage(true)
    }

    /// Feeds `pieces` through a parser and a mapper.
    fn run(pieces: &[&[u8]], opts: StreamOptions) -> (Vec<u8>, Usage) {
        let mut parser = sse::Parser::new(1 << 20);
        let mut mapper = ChatStream::new(opts);
        let mut out = Vec::new();
        for piece in pieces {
            parser.feed(piece, |e| mapper.event(e, &mut out)).unwrap();
        }
        parser.finish(|e| mapper.event(e, &mut out));
        mapper.finish(&mut out);
        (out, mapper.usage())
    }

    /// The `data:` of each event, parsed (`[DONE]` as a string).
    fn events(out: &[u8]) -> Vec<Value> {
        let mut parser = sse::Parser::new(1 << 20);
        let mut seen = Vec::new();
        parser
            .feed(out, |e| {
                seen.push(if e.data == "[DONE]" {
                    Value::String("[DONE]".into())
                } else {
                    serde_json::from_str(e.data).unwrap()
                })
            })
            .unwrap();
        seen
    }

    fn translate(body: &str) -> Value {
        let t =
            request_from_chat(body.as_bytes(), &RequestOptions::new("claude-sonnet-4-5")).unwrap();
        serde_json::from_slice(&t.body).unwrap()
    }

    fn answer(body: &str) -> (Value, Usage) {
        let (json, usage) = response_to_chat(body.as_bytes(), "gpt-claude", 1_700_000_000).unwrap();
        (serde_json::from_slice(&json).unwrap(), usage)
    }

    /// A reassembled stream: content, reasoning, tool calls by index
    /// (id, name, arguments), finish reason, usage chunk.
    #[derive(Debug, Default, PartialEq)]
    struct Reassembled {
        content: String,
        reasoning: String,
        tools: Vec<(String, String, String)>,
        thinking_blocks: Vec<Value>,
        finish: Option<String>,
        usage: Option<Value>,
        errors: usize,
        done: usize,
    }

    fn reassemble(out: &[u8]) -> Reassembled {
        let mut r = Reassembled::default();
        for e in events(out) {
            if e == "[DONE]" {
                r.done += 1;
                continue;
            }
            if e.get("error").is_some() {
                r.errors += 1;
                continue;
            }
            if let Some(u) = e.get("usage") {
                r.usage = Some(u.clone());
            }
            let Some(choice) = e["choices"].get(0) else {
                continue;
            };
            let d = &choice["delta"];
            if let Some(c) = d["content"].as_str() {
                r.content.push_str(c);
            }
            if let Some(c) = d["reasoning_content"].as_str() {
                r.reasoning.push_str(c);
            }
            if let Some(b) = d["thinking_blocks"].as_array() {
                r.thinking_blocks.extend(b.iter().cloned());
            }
            for call in d["tool_calls"].as_array().into_iter().flatten() {
                let i = call["index"].as_u64().unwrap() as usize;
                assert!(i <= r.tools.len(), "tool index {i} skips one");
                if i == r.tools.len() {
                    r.tools.push(Default::default());
                }
                let t = &mut r.tools[i];
                if let Some(id) = call["id"].as_str() {
                    t.0 = id.into();
                }
                if let Some(n) = call["function"]["name"].as_str() {
                    t.1 = n.into();
                }
                t.2.push_str(call["function"]["arguments"].as_str().unwrap());
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                r.finish = Some(f.into());
            }
        }
        r
    }

    /// The same fields of a translated JSON answer.
    fn reassembled_answer(v: &Value) -> Reassembled {
        let m = &v["choices"][0]["message"];
        Reassembled {
            content: m["content"].as_str().unwrap_or("").into(),
            reasoning: m["reasoning_content"].as_str().unwrap_or("").into(),
            tools: m["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c["id"].as_str().unwrap().into(),
                        c["function"]["name"].as_str().unwrap().into(),
                        c["function"]["arguments"].as_str().unwrap().into(),
                    )
                })
                .collect(),
            thinking_blocks: m["thinking_blocks"].as_array().cloned().unwrap_or_default(),
            finish: v["choices"][0]["finish_reason"].as_str().map(Into::into),
            usage: Some(v["usage"].clone()),
            errors: 0,
            done: 1,
        }
    }

    // === Golden fixtures ===

    #[test]
    fn responses_match_their_fixtures() {
        for (input, expected) in [
            (
                fixture!("resp_text.json"),
                fixture!("resp_text.expected.json"),
            ),
            (
                fixture!("resp_tool.json"),
                fixture!("resp_tool.expected.json"),
            ),
            (
                fixture!("resp_two_tools.json"),
                fixture!("resp_two_tools.expected.json"),
            ),
            (
                fixture!("resp_thinking.json"),
                fixture!("resp_thinking.expected.json"),
            ),
            (
                fixture!("resp_cached.json"),
                fixture!("resp_cached.expected.json"),
            ),
            (
                fixture!("resp_refusal.json"),
                fixture!("resp_refusal.expected.json"),
            ),
            (
                fixture!("resp_max_tokens.json"),
                fixture!("resp_max_tokens.expected.json"),
            ),
        ] {
            let expected: Value = serde_json::from_str(expected).unwrap();
            assert_eq!(answer(input).0, expected);
        }
    }

    #[test]
    fn requests_match_their_fixtures() {
        for (input, expected) in [
            (
                fixture!("req_full.json"),
                fixture!("req_full.expected.json"),
            ),
            (
                fixture!("req_reasoning.json"),
                fixture!("req_reasoning.expected.json"),
            ),
            (
                fixture!("req_json_schema.json"),
                fixture!("req_json_schema.expected.json"),
            ),
        ] {
            let expected: Value = serde_json::from_str(expected).unwrap();
            assert_eq!(translate(input), expected);
        }
        let t = request_from_chat(
            fixture!("req_full.json").as_bytes(),
            &RequestOptions::new("m"),
        )
        .unwrap();
        assert!(t.stream && t.include_usage);
        let t = request_from_chat(
            fixture!("req_reasoning.json").as_bytes(),
            &RequestOptions::new("m"),
        )
        .unwrap();
        assert!(!t.stream && !t.include_usage);
    }

    const STREAMS: [(&str, &str); 5] = [
        (
            fixture!("stream_text.sse"),
            fixture!("stream_text.expected.sse"),
        ),
        (
            fixture!("stream_text_tool.sse"),
            fixture!("stream_text_tool.expected.sse"),
        ),
        (
            fixture!("stream_two_tools.sse"),
            fixture!("stream_two_tools.expected.sse"),
        ),
        (
            fixture!("stream_thinking.sse"),
            fixture!("stream_thinking.expected.sse"),
        ),
        (
            fixture!("stream_overloaded.sse"),
            fixture!("stream_overloaded.expected.sse"),
        ),
    ];

    #[test]
    fn streams_match_their_fixtures() {
        for (input, expected) in STREAMS {
            let (out, _) = run(&[input.as_bytes()], opts());
            assert_eq!(events(&out), events(expected.as_bytes()));
        }
    }

    // === Peers' bugs ===

    #[test]
    fn tool_index_is_contiguous_not_the_block_index() {
        // A text block (Anthropic index 0) before the tool (index 1).
        let r = reassemble(&run(&[fixture!("stream_text_tool.sse").as_bytes()], opts()).0);
        assert_eq!(r.tools.len(), 1);
        assert_eq!(r.tools[0].1, "get_weather");
        // text, tool, text, tool: indexes 0 and 1 (not 1 and 3).
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":1}}}\n\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}\n\n",
            "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"f\",\"input\":{}}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
            "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"text_delta\",\"text\":\"b\"}}\n\n",
            "data: {\"type\":\"content_block_start\",\"index\":3,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t2\",\"name\":\"g\",\"input\":{}}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"x\\\":1}\"}}\n\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":3}}\n\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let (out, _) = run(&[stream.as_bytes()], opts());
        let indexes: Vec<u64> = events(&out)
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["tool_calls"][0]["index"].as_u64())
            .collect();
        assert_eq!(indexes, [0, 0, 1, 1]);
        let r = reassemble(&out);
        assert_eq!(r.content, "ab");
        assert_eq!(
            r.tools,
            [
                ("t1".into(), "f".into(), "{}".into()),
                ("t2".into(), "g".into(), "{\"x\":1}".into())
            ]
        );
        assert_eq!(r.finish.as_deref(), Some("tool_calls"));
    }

    #[test]
    fn streamed_arguments_have_no_empty_object_prefix() {
        let r = reassemble(&run(&[fixture!("stream_text_tool.sse").as_bytes()], opts()).0);
        assert_eq!(r.tools[0].2, "{\"location\": \"San Francisco, CA\"}");
        let r = reassemble(&run(&[fixture!("stream_two_tools.sse").as_bytes()], opts()).0);
        for (_, _, args) in &r.tools {
            assert!(!args.starts_with("{}"), "{args}");
            serde_json::from_str::<Value>(args).unwrap();
        }
        assert_eq!(r.tools[1].2, "{\"timezone\": \"Europe/Paris\"}");
    }

    #[test]
    fn cached_tokens_count_in_prompt_tokens() {
        let (v, usage) = answer(fixture!("resp_cached.json"));
        assert_eq!(usage.input, 21 + 188_086 + 1500);
        assert_eq!(
            (usage.cached_read, usage.cache_write, usage.output),
            (1500, 188_086, 393)
        );
        assert_eq!(v["usage"]["prompt_tokens"], 21 + 188_086 + 1500);
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 1500);
        assert_eq!(v["usage"]["total_tokens"], 21 + 188_086 + 1500 + 393);
        let u = usage_from_object(br#"{"input_tokens":3,"cache_read_input_tokens":5,"cache_creation_input_tokens":7,"output_tokens":2}"#).unwrap();
        assert_eq!(
            (u.input, u.cached_read, u.cache_write, u.output, u.reasoning),
            (15, 5, 7, 2, 0)
        );
        assert_eq!(usage_from_object(b"[1]"), None);
        // Streamed: the cache read of message_start counts too.
        let (out, usage) = run(&[fixture!("stream_two_tools.sse").as_bytes()], opts());
        assert_eq!(
            (usage.input, usage.cached_read, usage.output),
            (700, 200, 120)
        );
        assert_eq!(reassemble(&out).usage.unwrap()["prompt_tokens"], 700);
    }

    #[test]
    fn thinking_signature_round_trips() {
        let (v, _) = answer(fixture!("resp_thinking.json"));
        let mut assistant = v["choices"][0]["message"].clone();
        // Clients send back what they got, `reasoning_content` included.
        assistant["content"] = json!("The answer is 42.");
        let request = json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "What is the answer?"},
                assistant,
                {"role": "user", "content": "Why?"},
            ],
            "reasoning_effort": "low",
        });
        let body = translate(&request.to_string());
        let content = &body["messages"][1]["content"];
        assert_eq!(
            content[0],
            json!({"type": "thinking", "thinking": "Let me analyze this step by step...",
                   "signature": "WaUjzkypQ2mUEVM36O2TxuC06KN8xyfbJwyem2dw3URve/op91XWHOEBLLqIOMfFG/UvLEczmEsUjavL"})
        );
        assert_eq!(content[1]["type"], "redacted_thinking");
        assert_eq!(
            content[2],
            json!({"type": "text", "text": "The answer is 42."})
        );
        // Streamed: the accumulated thinking_blocks are what goes back.
        let r = reassemble(&run(&[fixture!("stream_thinking.sse").as_bytes()], opts()).0);
        let request = json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "27 * 453?"},
                {"role": "assistant", "content": r.content, "thinking_blocks": r.thinking_blocks},
            ],
        });
        let body = translate(&request.to_string());
        let first = &body["messages"][1]["content"][0];
        assert_eq!(first["type"], "thinking");
        assert_eq!(first["thinking"], r.reasoning);
        assert_eq!(
            first["signature"],
            "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"
        );
    }

    #[test]
    fn usage_is_recorded_without_include_usage() {
        let (out, usage) = run(
            &[fixture!("stream_text.sse").as_bytes()],
            StreamOptions::new("m").created(1),
        );
        let r = reassemble(&out);
        assert_eq!(r.usage, None);
        assert_eq!(r.done, 1);
        assert_eq!(
            (usage.input, usage.output, usage.truncated),
            (25, 15, false)
        );
    }

    #[test]
    fn a_stream_cut_after_message_start_keeps_its_input_tokens_truncated() {
        let text = fixture!("stream_text.sse");
        let cut = text.find("event: content_block_start").unwrap();
        let (out, usage) = run(&[&text.as_bytes()[..cut]], opts());
        assert_eq!((usage.input, usage.output, usage.truncated), (25, 1, true));
        let r = reassemble(&out);
        assert_eq!((r.errors, r.done), (1, 1));
        // The same with `fail`.
        let mut parser = sse::Parser::new(1 << 20);
        let mut mapper = ChatStream::new(opts());
        let mut out = Vec::new();
        parser
            .feed(&text.as_bytes()[..cut], |e| mapper.event(e, &mut out))
            .unwrap();
        mapper.fail("connection reset", &mut out);
        mapper.fail("again", &mut out);
        mapper.finish(&mut out);
        let r = reassemble(&out);
        assert_eq!((r.errors, r.done), (1, 1));
        assert!(mapper.usage().truncated);
        assert_eq!(mapper.usage().input, 25);
        assert!(String::from_utf8(out).unwrap().contains("connection reset"));
    }

    #[test]
    fn a_mid_stream_error_gives_an_error_chunk_and_one_done() {
        let (out, usage) = run(&[fixture!("stream_overloaded.sse").as_bytes()], opts());
        let e = events(&out);
        assert_eq!(e.len(), 4);
        assert_eq!(
            e[2],
            json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": null}})
        );
        assert_eq!(e[3], "[DONE]");
        assert!(usage.truncated);
        assert_eq!(usage.input, 40);
        // A complete stream never gets a second [DONE] from finish or fail.
        let mut parser = sse::Parser::new(1 << 20);
        let mut mapper = ChatStream::new(opts());
        let mut out = Vec::new();
        parser
            .feed(fixture!("stream_text.sse").as_bytes(), |e| {
                mapper.event(e, &mut out)
            })
            .unwrap();
        mapper.finish(&mut out);
        mapper.fail("late", &mut out);
        let r = reassemble(&out);
        assert_eq!((r.errors, r.done), (0, 1));
        assert!(!mapper.usage().truncated);
    }

    // === Requests ===

    fn translate_with(body: Value, unsupported: Unsupported) -> Result<Value, OpenAiError> {
        let opts = RequestOptions::new("m").unsupported(unsupported);
        request_from_chat(body.to_string().as_bytes(), &opts)
            .map(|t| serde_json::from_slice(&t.body).unwrap())
    }

    fn with(extra: Value) -> Value {
        let mut body = json!({"model": "x", "messages": [{"role": "user", "content": "hi"}],
                              "tools": [{"type": "function", "function": {"name": "f"}}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    }

    #[test]
    fn tool_choices() {
        let choice = |extra: Value| {
            translate_with(with(extra), Unsupported::Drop).unwrap()["tool_choice"].clone()
        };
        assert_eq!(
            choice(json!({"tool_choice": "auto"})),
            json!({"type": "auto"})
        );
        assert_eq!(
            choice(json!({"tool_choice": "none"})),
            json!({"type": "none"})
        );
        assert_eq!(
            choice(json!({"tool_choice": "required"})),
            json!({"type": "any"})
        );
        assert_eq!(
            choice(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}})),
            json!({"type": "tool", "name": "f"})
        );
        assert_eq!(
            choice(json!({"parallel_tool_calls": false})),
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            choice(json!({"tool_choice": "required", "parallel_tool_calls": false})),
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(choice(json!({"parallel_tool_calls": true})), Value::Null);
        assert_eq!(choice(json!({})), Value::Null);
        // No tools: no tool choice.
        let body =
            json!({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"});
        assert_eq!(
            translate_with(body, Unsupported::Drop)
                .unwrap()
                .get("tool_choice"),
            None
        );
        let e = translate_with(with(json!({"tool_choice": "sometimes"})), Unsupported::Drop)
            .unwrap_err();
        assert_eq!(e.param(), Some("tool_choice"));
    }

    #[test]
    fn what_anthropic_cannot_honour_is_dropped_or_refused() {
        for (field, value) in [
            ("n", json!(2)),
            ("logprobs", json!(true)),
            ("top_logprobs", json!(3)),
            ("presence_penalty", json!(0.5)),
            ("frequency_penalty", json!(-1)),
            ("logit_bias", json!({"50256": -100})),
            ("seed", json!(7)),
            ("audio", json!({"voice": "alloy"})),
            ("modalities", json!(["text", "audio"])),
            ("prediction", json!({"type": "content", "content": "x"})),
        ] {
            let body = with(json!({ field: value }));
            let dropped = translate_with(body.clone(), Unsupported::Drop).unwrap();
            assert_eq!(dropped.get(field), None);
            let e = translate_with(body, Unsupported::Reject).unwrap_err();
            assert_eq!(
                (e.status(), e.param()),
                (StatusCode::BAD_REQUEST, Some(field))
            );
        }
        // Neutral values pass even when refusing.
        let neutral = with(
            json!({"n": 1, "logprobs": false, "presence_penalty": 0, "frequency_penalty": 0.0,
                                  "logit_bias": {}, "modalities": ["text"], "seed": null}),
        );
        translate_with(neutral, Unsupported::Reject).unwrap();
        // temperature: clamped or refused.
        let hot = with(json!({"temperature": 1.7}));
        assert_eq!(
            translate_with(hot.clone(), Unsupported::Drop).unwrap()["temperature"],
            1.0
        );
        let e = translate_with(hot, Unsupported::Reject).unwrap_err();
        assert_eq!(e.param(), Some("temperature"));
        // json_object: dropped or refused; text: nothing.
        let obj = with(json!({"response_format": {"type": "json_object"}}));
        assert_eq!(
            translate_with(obj.clone(), Unsupported::Drop).unwrap()["tools"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            translate_with(obj, Unsupported::Reject)
                .unwrap_err()
                .param(),
            Some("response_format")
        );
        translate_with(
            with(json!({"response_format": {"type": "text"}})),
            Unsupported::Reject,
        )
        .unwrap();
        // Thinking with a forced tool: thinking goes, or the request is refused.
        let forced = with(json!({"reasoning_effort": "high", "tool_choice": "required"}));
        assert_eq!(
            translate_with(forced.clone(), Unsupported::Drop)
                .unwrap()
                .get("thinking"),
            None
        );
        assert_eq!(
            translate_with(forced, Unsupported::Reject)
                .unwrap_err()
                .param(),
            Some("reasoning_effort")
        );
        // Thinking with temperature or top_p: not sent (1 passes).
        let t = with(
            json!({"reasoning_effort": "low", "temperature": 0.2, "top_p": 0.5, "max_tokens": 8000}),
        );
        let v = translate_with(t.clone(), Unsupported::Drop).unwrap();
        assert_eq!((v.get("temperature"), v.get("top_p")), (None, None));
        assert_eq!(v["max_tokens"], 8000);
        assert_eq!(
            v["thinking"],
            json!({"type": "enabled", "budget_tokens": 1024})
        );
        assert_eq!(
            translate_with(t, Unsupported::Reject).unwrap_err().param(),
            Some("temperature")
        );
        translate_with(
            with(json!({"reasoning_effort": "minimal", "temperature": 1})),
            Unsupported::Reject,
        )
        .unwrap();
    }

    #[test]
    fn max_tokens_come_from_the_client_or_the_default() {
        let v = |extra: Value| {
            translate_with(with(extra), Unsupported::Drop).unwrap()["max_tokens"].clone()
        };
        assert_eq!(v(json!({})), 4096);
        assert_eq!(v(json!({"max_tokens": 100})), 100);
        assert_eq!(
            v(json!({"max_tokens": 100, "max_completion_tokens": 200})),
            200
        );
        assert_eq!(
            v(json!({"max_tokens": 100, "reasoning_effort": "high"})),
            16484
        );
        let opts = RequestOptions::new("m").default_max_tokens(1000);
        let t =
            request_from_chat(br#"{"messages":[{"role":"user","content":"x"}]}"#, &opts).unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&t.body).unwrap()["max_tokens"],
            1000
        );
    }

    #[test]
    fn malformed_requests_name_the_parameter() {
        let param =
            |body: &str| request_from_chat(body.as_bytes(), &RequestOptions::new("m")).unwrap_err();
        let e = param(r#"{"model":"x"}"#);
        assert_eq!(
            (e.status(), e.param()),
            (StatusCode::BAD_REQUEST, Some("messages"))
        );
        assert_eq!(param(r#"{"messages":{}}"#).param(), Some("messages"));
        assert_eq!(param(r#"{"messages":[]}"#).param(), Some("messages"));
        assert_eq!(
            param(r#"{"messages":[{"role":"user","content":"a"},{"content":"b"}]}"#).param(),
            Some("messages[1].role")
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"user","content":7}]}"#).param(),
            Some("messages[0]")
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"robot","content":"a"}]}"#).param(),
            Some("messages[0].role")
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png,abc"}}]}]}"#).param(),
            Some("messages[0].content[0].image_url")
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"ftp://x"}}]}]}"#).param(),
            Some("messages[0].content[1].image_url")
        );
        for args in [r#""[1]""#, r#""{\"a\":""#, r#""7""#, r#""{} x""#] {
            let body = format!(
                r#"{{"messages":[{{"role":"user","content":"a"}},{{"role":"assistant","tool_calls":[{{"id":"1","type":"function","function":{{"name":"f","arguments":"{{}}"}}}},{{"id":"2","type":"function","function":{{"name":"f","arguments":{args}}}}}]}}]}}"#
            );
            assert_eq!(
                param(&body).param(),
                Some("messages[1].tool_calls[1].function.arguments"),
                "{body}"
            );
        }
        assert_eq!(
            param(r#"{"messages":[{"role":"tool","content":"a"}]}"#).param(),
            Some("messages[0].tool_call_id")
        );
        assert_eq!(param(r#"[1,2]"#).status(), StatusCode::BAD_REQUEST);
        let e =
            request_from_chat(b"{\"messages\":\"\xff\"}", &RequestOptions::new("m")).unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::BAD_REQUEST, Some("invalid_encoding"))
        );
        assert_eq!(
            param(r#"{"messages":[{"role":"user","content":"a"}],"reasoning_effort":"max"}"#)
                .param(),
            Some("reasoning_effort")
        );
    }

    #[test]
    fn a_leading_assistant_message_and_merged_turns_pass() {
        let v = translate(
            r#"{"messages":[{"role":"assistant","content":"Hello"},{"role":"user","content":"a"},{"role":"user","content":[{"type":"text","text":"b"}]},{"role":"system","content":"late system"}]}"#,
        );
        assert_eq!(
            v["messages"],
            json!([
                {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ])
        );
        assert_eq!(
            v["system"],
            json!([{"type": "text", "text": "late system"}])
        );
    }

    // === Answers ===

    #[test]
    fn the_json_tool_answers_as_content() {
        let body = br#"{"id":"msg_j","type":"message","role":"assistant","content":[{"type":"tool_use","id":"toolu_9","name":"switchyard_json_response","input":{"name":"Ada","born":1815}}],"stop_reason":"tool_use","usage":{"input_tokens":5,"output_tokens":9}}"#;
        let (v, _) = answer(std::str::from_utf8(body).unwrap());
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], r#"{"name":"Ada","born":1815}"#);
        assert_eq!(m.get("tool_calls"), None);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let stream = concat!(
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_j\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
            "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_9\",\"name\":\"switchyard_json_response\",\"input\":{}}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"name\\\":\\\"Ada\\\",\"}}\n\n",
            "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"born\\\":1815}\"}}\n\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":9}}\n\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let r = reassemble(&run(&[stream.as_bytes()], opts()).0);
        assert_eq!(r.content, r#"{"name":"Ada","born":1815}"#);
        assert!(r.tools.is_empty());
        assert_eq!(r.finish.as_deref(), Some("stop"));
    }

    #[test]
    fn unreadable_answers_are_bad_gateway() {
        for body in [
            &b"<html>oops</html>"[..],
            b"{\"id\":\"x\"}",
            b"{\"content\":7}",
        ] {
            let e = response_to_chat(body, "m", 0).unwrap_err();
            assert_eq!(
                (e.status(), e.kind(), e.code()),
                (
                    StatusCode::BAD_GATEWAY,
                    "api_error",
                    Some("bad_upstream_response")
                )
            );
        }
    }

    #[test]
    fn errors_keep_their_status() {
        let err = |status: u16, kind: &str| {
            let body = format!(
                r#"{{"type":"error","error":{{"type":"{kind}","message":"m {kind}"}},"request_id":"req_1"}}"#
            );
            error_to_chat(StatusCode::from_u16(status).unwrap(), body.as_bytes())
        };
        for (status, kind, to, code) in [
            (400, "invalid_request_error", "invalid_request_error", None),
            (401, "authentication_error", "authentication_error", None),
            (403, "permission_error", "permission_error", None),
            (
                404,
                "not_found_error",
                "invalid_request_error",
                Some("not_found"),
            ),
            (
                413,
                "request_too_large",
                "invalid_request_error",
                Some("request_too_large"),
            ),
            (
                429,
                "rate_limit_error",
                "rate_limit_error",
                Some("rate_limit_exceeded"),
            ),
            (500, "api_error", "api_error", Some("server_error")),
            (
                529,
                "overloaded_error",
                "server_error",
                Some("server_is_overloaded"),
            ),
            (418, "teapot_error", "invalid_request_error", None),
            (503, "mystery", "api_error", None),
        ] {
            let e = err(status, kind);
            assert_eq!(e.status().as_u16(), status);
            assert_eq!(
                (e.kind(), e.code(), e.message()),
                (to, code, &*format!("m {kind}"))
            );
        }
        let long = format!("<html>{}</html>", "x".repeat(10_000));
        let e = error_to_chat(StatusCode::BAD_GATEWAY, long.as_bytes());
        assert_eq!(
            (e.status(), e.kind()),
            (StatusCode::BAD_GATEWAY, "api_error")
        );
        assert!(e.message().len() < 300, "{}", e.message());
        let e = error_to_chat(
            StatusCode::from_u16(529).unwrap(),
            "é".repeat(150).as_bytes(),
        );
        assert_eq!(e.status().as_u16(), 529);
        assert!(e.message().len() < 300);
        assert_eq!(
            error_to_chat(StatusCode::BAD_REQUEST, b"").message(),
            "The upstream answered 400 Bad Request."
        );
    }

    // === Streams: limits and odd input ===

    #[test]
    fn streams_are_bounded() {
        let start = "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":1}}}\n\n";
        let far = format!(
            "{start}data: {{\"type\":\"content_block_start\",\"index\":{MAX_BLOCKS},\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n"
        );
        let (out, usage) = run(&[far.as_bytes()], opts());
        let r = reassemble(&out);
        assert_eq!((r.errors, r.done, usage.truncated), (1, 1, true));
        let huge = format!(
            "{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"thinking_delta\",\"thinking\":\"{}\"}}}}",
            "t".repeat(MAX_THINKING_BYTES / 2 + 1)
        );
        let mut mapper = ChatStream::new(opts());
        let mut out = Vec::new();
        for data in [
            r#"{"type":"message_start","message":{"id":"m"}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
            &huge,
            &huge,
            &huge,
        ] {
            mapper.event(&sse::Event { event: "", data }, &mut out);
        }
        let r = reassemble(&out);
        assert_eq!((r.errors, r.done), (1, 1));
        assert_eq!(r.reasoning.len(), MAX_THINKING_BYTES / 2 + 1);
        // Unreadable events end the stream; unknown ones are skipped.
        let mut mapper = ChatStream::new(opts());
        let mut out = Vec::new();
        mapper.event(
            &sse::Event {
                event: "",
                data: r#"{"type":"something_new","x":1}"#,
            },
            &mut out,
        );
        mapper.event(
            &sse::Event {
                event: "ping",
                data: "",
            },
            &mut out,
        );
        assert!(out.is_empty());
        mapper.event(
            &sse::Event {
                event: "",
                data: "not json",
            },
            &mut out,
        );
        let r = reassemble(&out);
        assert_eq!((r.errors, r.done), (1, 1));
    }

    #[test]
    fn stream_usage_reads_a_passed_through_stream() {
        let mut parser = sse::Parser::new(1 << 20);
        let mut u = StreamUsage::new();
        parser
            .feed(fixture!("stream_two_tools.sse").as_bytes(), |e| u.event(e))
            .unwrap();
        u.finish();
        let usage = u.usage();
        assert_eq!(
            (
                usage.input,
                usage.cached_read,
                usage.output,
                usage.truncated
            ),
            (700, 200, 120, false)
        );
        // Without event names, and cut short.
        let mut u = StreamUsage::new();
        u.event(&sse::Event {
            event: "",
            data: r#"{"type":"message_start","message":{"usage":{"input_tokens":4,"cache_creation_input_tokens":6}}}"#,
        });
        u.event(&sse::Event {
            event: "",
            data: r#"{"type":"message_delta","usage":{"output_tokens":3}}"#,
        });
        u.event(&sse::Event {
            event: "",
            data: "garbage",
        });
        u.finish();
        let usage = u.usage();
        assert_eq!(
            (
                usage.input,
                usage.cache_write,
                usage.output,
                usage.truncated
            ),
            (10, 6, 3, true)
        );
    }

    // === Properties ===

    /// An answer, as blocks: thinking, then texts and tool calls in any
    /// order.
    #[derive(Debug, Clone)]
    enum Piece {
        Text(Vec<String>),
        Tool(String, Vec<(String, u32)>),
    }

    fn answer_strategy()
    -> impl proptest::strategy::Strategy<Value = (Option<Vec<String>>, Vec<Piece>, u8, [u64; 4])>
    {
        use proptest::prelude::*;
        let text = prop::collection::vec("[a-zé \"\\\\\n{}]{1,6}", 1..4);
        let args = prop::collection::vec(("[a-z]{1,4}", 0u32..1000), 0..4);
        let piece = prop_oneof![
            text.clone().prop_map(Piece::Text),
            ("[a-z_]{1,8}", args).prop_map(|(n, a)| Piece::Tool(n, a))
        ];
        (
            prop::option::of(text),
            prop::collection::vec(piece, 0..5),
            0u8..4,
            [0u64..5000, 0u64..5000, 0u64..5000, 1u64..5000],
        )
    }

    /// The Anthropic JSON answer and the equivalent event stream.
    fn answer_and_stream(
        thinking: &Option<Vec<String>>,
        pieces: &[Piece],
        stop: u8,
        counts: [u64; 4],
        json_chunk: usize,
    ) -> (String, String) {
        let mut blocks = Vec::new();
        let mut events = vec![
            json!({"type": "message_start", "message": {"id": "msg_p", "type": "message", "role": "assistant", "content": [],
            "usage": {"input_tokens": counts[0], "cache_read_input_tokens": counts[1], "cache_creation_input_tokens": counts[2], "output_tokens": 1}}}),
        ];
        let push_block = |events: &mut Vec<Value>, start: Value, deltas: Vec<Value>| {
            let index = events
                .iter()
                .filter(|e| e["type"] == "content_block_start")
                .count();
            events.push(
                json!({"type": "content_block_start", "index": index, "content_block": start}),
            );
            for d in deltas {
                events.push(json!({"type": "content_block_delta", "index": index, "delta": d}));
            }
            events.push(json!({"type": "content_block_stop", "index": index}));
        };
        if let Some(parts) = thinking {
            blocks
                .push(json!({"type": "thinking", "thinking": parts.concat(), "signature": "sig"}));
            let mut deltas: Vec<Value> = parts
                .iter()
                .map(|p| json!({"type": "thinking_delta", "thinking": p}))
                .collect();
            deltas.push(json!({"type": "signature_delta", "signature": "sig"}));
            push_block(
                &mut events,
                json!({"type": "thinking", "thinking": ""}),
                deltas,
            );
        }
        let mut tools = 0;
        for (i, p) in pieces.iter().enumerate() {
            match p {
                Piece::Text(parts) => {
                    blocks.push(json!({"type": "text", "text": parts.concat()}));
                    let deltas = parts
                        .iter()
                        .map(|p| json!({"type": "text_delta", "text": p}))
                        .collect();
                    push_block(&mut events, json!({"type": "text", "text": ""}), deltas);
                }
                Piece::Tool(name, args) => {
                    tools += 1;
                    let input: serde_json::Map<String, Value> =
                        args.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                    let input = Value::Object(input);
                    let text = input.to_string();
                    blocks.push(json!({"type": "tool_use", "id": format!("toolu_{i}"), "name": name, "input": input}));
                    let chars: Vec<char> = text.chars().collect();
                    let deltas = chars
                        .chunks(json_chunk.max(1))
                        .map(|c| json!({"type": "input_json_delta", "partial_json": c.iter().collect::<String>()}))
                        .collect();
                    push_block(
                        &mut events,
                        json!({"type": "tool_use", "id": format!("toolu_{i}"), "name": name, "input": {}}),
                        deltas,
                    );
                }
            }
        }
        let stop_reason = match stop {
            0 => "end_turn",
            1 => "max_tokens",
            2 => "stop_sequence",
            _ if tools > 0 => "tool_use",
            _ => "end_turn",
        };
        events.push(json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": counts[3]}}));
        events.push(json!({"type": "message_stop"}));
        let response = json!({"id": "msg_p", "type": "message", "role": "assistant", "content": blocks, "stop_reason": stop_reason,
            "usage": {"input_tokens": counts[0], "cache_read_input_tokens": counts[1], "cache_creation_input_tokens": counts[2], "output_tokens": counts[3]}});
        let mut sse = String::new();
        for e in events {
            sse.push_str(&format!(
                "event: {}\ndata: {}\n\n",
                e["type"].as_str().unwrap(),
                e
            ));
        }
        (response.to_string(), sse)
    }

    proptest::proptest! {
        #[test]
        fn any_cut_gives_the_same_output(which in 0usize..5, cuts in proptest::collection::vec(0usize..4000, 0..8), crlf: bool) {
            let mut input = STREAMS[which].0.to_owned();
            if crlf {
                input = input.replace('\n', "\r\n");
            }
            let bytes = input.as_bytes();
            let (whole, whole_usage) = run(&[bytes], opts());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                pieces.push(&bytes[at..c]);
                at = c;
            }
            pieces.push(&bytes[at..]);
            let (cut, cut_usage) = run(&pieces, opts());
            proptest::prop_assert_eq!(&cut, &whole);
            proptest::prop_assert_eq!(cut_usage, whole_usage);
        }

        #[test]
        fn a_reassembled_stream_is_the_json_answer(
            (thinking, pieces, stop, counts) in answer_strategy(),
            json_chunk in 1usize..6,
        ) {
            let (response, stream) = answer_and_stream(&thinking, &pieces, stop, counts, json_chunk);
            let (json, json_usage) = response_to_chat(response.as_bytes(), "gpt-claude", 1_700_000_000).unwrap();
            let expected = reassembled_answer(&serde_json::from_slice(&json).unwrap());
            let (out, usage) = run(&[stream.as_bytes()], opts());
            let got = reassemble(&out);
            proptest::prop_assert_eq!(got, expected);
            proptest::prop_assert_eq!(usage, json_usage);
            proptest::prop_assert_eq!(usage.input, counts[0] + counts[1] + counts[2]);
        }
    }

    #[test]
    fn every_single_byte_cut_gives_the_same_output() {
        for (input, _) in STREAMS {
            for crlf in [false, true] {
                let input = if crlf {
                    input.replace('\n', "\r\n")
                } else {
                    input.to_owned()
                };
                let bytes = input.as_bytes();
                let (whole, _) = run(&[bytes], opts());
                let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
                assert_eq!(run(&pieces, opts()).0, whole);
            }
        }
    }
}
