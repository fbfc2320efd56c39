//! OpenAI answers and errors -> Anthropic Messages answers and errors
//! ([`response_from_chat`], [`error_from_chat`], [`MessagesError`]), and
//! the usage mapping shared with the stream.

use std::borrow::Cow;
use std::fmt;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Empty, ThinkingBlock, clip, opt_str};
use crate::model::OpenAiError;
use crate::model::providers::Usage;

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

    pub(super) fn invalid(message: impl Into<String>) -> Self {
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
pub(super) struct ErrorEvent<'a> {
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
    pub(super) fn new(kind: &'a str, message: &'a str) -> Self {
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
pub(super) fn kind_for_openai_type(kind: &str) -> &'static str {
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
pub(super) struct AnswerFunction<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    pub(super) arguments: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
pub(super) struct ChatUsage {
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
    pub(super) fn normalized(&self) -> Usage {
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
pub(super) struct AnthropicUsage {
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
}

impl AnthropicUsage {
    pub(super) fn new(u: &Usage) -> Self {
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

pub(super) fn message_id(id: Option<&str>) -> String {
    match id {
        Some(id) if id.starts_with("msg_") => id.to_owned(),
        Some(id) if !id.is_empty() => format!("msg_{id}"),
        _ => "msg_unknown".to_owned(),
    }
}

/// Anthropic's stop reason for an OpenAI finish reason.
pub(super) fn stop_reason(finish: &str, saw_tool: bool) -> &'static str {
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
