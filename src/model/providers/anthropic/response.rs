//! Whole answers, errors and usage: an Anthropic Messages response or
//! error as OpenAI's ([`response_to_chat`], [`error_to_chat`],
//! [`usage_from_object`]).

use std::borrow::Cow;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{JSON_TOOL, Str, clip};
use crate::model::openai::OpenAiError;
use crate::model::providers::Usage;

/// The most bytes of an upstream error body echoed in a message.
const ECHO_LIMIT: usize = 200;

#[derive(Debug, Default, Deserialize)]
pub(super) struct UsageIn {
    #[serde(default)]
    pub(super) input_tokens: Option<u64>,
    #[serde(default)]
    pub(super) output_tokens: Option<u64>,
    #[serde(default)]
    pub(super) cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    pub(super) cache_read_input_tokens: Option<u64>,
}

impl UsageIn {
    /// Sets what this object says in `usage` (counts it omits are kept).
    pub(super) fn apply(&self, usage: &mut Usage) {
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
pub(super) struct MessageIn<'a> {
    #[serde(rename = "type", borrow, default)]
    pub(super) kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(super) id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(super) content: Option<Vec<BlockIn<'a>>>,
    #[serde(borrow, default)]
    pub(super) stop_reason: Option<Str<'a>>,
    #[serde(default)]
    pub(super) usage: Option<UsageIn>,
}

#[derive(Debug, Deserialize)]
pub(super) struct BlockIn<'a> {
    #[serde(rename = "type", borrow)]
    pub(super) kind: Str<'a>,
    #[serde(borrow, default)]
    pub(super) text: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(super) id: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(super) name: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(super) input: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(super) thinking: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(super) signature: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(super) data: Option<Str<'a>>,
}

#[derive(Debug, Serialize)]
pub(super) struct UsageOut {
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
pub(super) enum ThinkingOut<'b> {
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
pub(super) fn finish_reason(
    stop_reason: &str,
    tool_calls: bool,
    json_answer: bool,
) -> &'static str {
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
/// `chat.completion` (see the [module](super) docs for the mapping), with
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
pub(super) struct ErrorIn<'a> {
    #[serde(rename = "type", borrow, default)]
    pub(super) kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    pub(super) message: Option<Str<'a>>,
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
pub(super) fn error_kind(kind: &str, status: StatusCode) -> (&'static str, Option<&'static str>) {
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
