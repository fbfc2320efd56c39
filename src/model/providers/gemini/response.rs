//! Gemini's whole answers, errors and usage -> OpenAI's.

use std::borrow::Cow;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{MAX_MESSAGE, MAX_QUOTE, new_call_id, random_hex};
use crate::model::OpenAiError;
use crate::model::providers::Usage;

// === Answers ===

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateResponse<'a> {
    #[serde(borrow, default)]
    candidates: Vec<CandidateIn<'a>>,
    #[serde(borrow)]
    prompt_feedback: Option<PromptFeedback<'a>>,
    usage_metadata: Option<UsageMetadata>,
    #[serde(borrow)]
    response_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    error: Option<GeminiError<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CandidateIn<'a> {
    #[serde(borrow)]
    content: Option<CandidateContent<'a>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
    index: Option<u32>,
}

#[derive(Deserialize)]
struct CandidateContent<'a> {
    #[serde(borrow, default)]
    parts: Vec<PartIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PartIn<'a> {
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(default)]
    thought: bool,
    #[serde(borrow)]
    thought_signature: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function_call: Option<FunctionCallIn<'a>>,
}

#[derive(Deserialize)]
pub(super) struct FunctionCallIn<'a> {
    #[serde(borrow)]
    pub(super) id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) name: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PromptFeedback<'a> {
    #[serde(borrow)]
    pub(super) block_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct UsageMetadata {
    pub(super) prompt_token_count: u64,
    pub(super) candidates_token_count: u64,
    pub(super) thoughts_token_count: u64,
    pub(super) cached_content_token_count: u64,
    pub(super) tool_use_prompt_token_count: u64,
}

impl UsageMetadata {
    pub(super) fn usage(&self) -> Usage {
        Usage {
            input: self
                .prompt_token_count
                .saturating_add(self.tool_use_prompt_token_count),
            cached_read: self.cached_content_token_count,
            output: self
                .candidates_token_count
                .saturating_add(self.thoughts_token_count),
            reasoning: self.thoughts_token_count,
            ..Usage::default()
        }
    }
}

#[derive(Deserialize)]
pub(super) struct GeminiError<'a> {
    pub(super) code: Option<u16>,
    #[serde(borrow)]
    pub(super) message: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorDocument<'a> {
    #[serde(borrow)]
    error: GeminiError<'a>,
}

#[derive(Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<ChoiceOut>,
    usage: UsageOut,
}

#[derive(Serialize)]
struct ChoiceOut {
    index: u32,
    message: MessageOut,
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct MessageOut {
    role: &'static str,
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut>,
}

#[derive(Serialize)]
pub(super) struct ToolCallOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) index: Option<u32>,
    pub(super) id: String,
    #[serde(rename = "type")]
    pub(super) kind: &'static str,
    pub(super) function: FunctionOut,
}

#[derive(Serialize)]
pub(super) struct FunctionOut {
    pub(super) name: String,
    pub(super) arguments: String,
}

#[derive(Serialize)]
pub(super) struct UsageOut {
    pub(super) prompt_tokens: u64,
    pub(super) completion_tokens: u64,
    pub(super) total_tokens: u64,
    pub(super) prompt_tokens_details: CachedOut,
    pub(super) completion_tokens_details: ReasoningOut,
}

#[derive(Serialize)]
pub(super) struct CachedOut {
    pub(super) cached_tokens: u64,
}

#[derive(Serialize)]
pub(super) struct ReasoningOut {
    pub(super) reasoning_tokens: u64,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.input,
            completion_tokens: u.output,
            total_tokens: u.total(),
            prompt_tokens_details: CachedOut {
                cached_tokens: u.cached_read,
            },
            completion_tokens_details: ReasoningOut {
                reasoning_tokens: u.reasoning,
            },
        }
    }
}

/// Gemini's `finishReason` as OpenAI's `finish_reason`.
pub(super) fn finish_reason(reason: &str, called: bool) -> &'static str {
    match reason {
        "STOP" if called => "tool_calls",
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => "content_filter",
        _ => "stop",
    }
}

/// A JSON value without the whitespace between its tokens (Gemini's
/// non-streamed answers are pretty-printed; the streamed ones are not).
fn compact_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_ascii_whitespace() {
            out.push(c);
        }
    }
    out
}

pub(super) fn call_arguments(args: Option<&RawValue>) -> String {
    args.map_or_else(|| "{}".to_owned(), |a| compact_json(a.get()))
}

fn bad_upstream(what: &str) -> OpenAiError {
    OpenAiError::new(
        StatusCode::BAD_GATEWAY,
        format!("The upstream's answer could not be read: {what}"),
        "api_error",
        None,
        Some("bad_upstream_response"),
    )
}

/// Gemini `GenerateContentResponse` JSON -> OpenAI `chat.completion` JSON
/// (`model` as the client sees it, `created` in Unix seconds), with its
/// usage.
///
/// An unreadable body is a 502 of type `api_error`, code
/// `bad_upstream_response`.
pub fn response_to_chat(
    body: &[u8],
    model: &str,
    created: u64,
) -> Result<(Vec<u8>, Usage), OpenAiError> {
    let resp: GenerateResponse<'_> =
        serde_json::from_slice(body).map_err(|e| bad_upstream(&e.to_string()))?;
    if let Some(err) = resp.error {
        let status = err
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        return Err(gemini_error(status, err.message.as_deref()));
    }
    let usage = resp
        .usage_metadata
        .as_ref()
        .map(UsageMetadata::usage)
        .unwrap_or_default();
    let mut choices = Vec::with_capacity(resp.candidates.len().max(1));
    for (pos, cand) in resp.candidates.into_iter().enumerate() {
        let mut text: Option<String> = None;
        let mut reasoning: Option<String> = None;
        let mut calls = Vec::new();
        for part in cand.content.into_iter().flat_map(|c| c.parts) {
            if let Some(call) = part.function_call {
                calls.push(ToolCallOut {
                    index: None,
                    id: new_call_id(call.id.as_deref(), part.thought_signature.as_deref()),
                    kind: "function",
                    function: FunctionOut {
                        name: call.name.into_owned(),
                        arguments: call_arguments(call.args),
                    },
                });
            } else if let Some(t) = part.text {
                let acc = if part.thought {
                    &mut reasoning
                } else {
                    &mut text
                };
                acc.get_or_insert_with(String::new).push_str(&t);
            }
        }
        let called = !calls.is_empty();
        let finish = finish_reason(cand.finish_reason.as_deref().unwrap_or("STOP"), called);
        let content = match text {
            Some(t) => Some(t),
            None if called => None,
            None => Some(String::new()),
        };
        choices.push(ChoiceOut {
            index: cand
                .index
                .unwrap_or_else(|| u32::try_from(pos).unwrap_or(u32::MAX)),
            message: MessageOut {
                role: "assistant",
                content,
                reasoning_content: reasoning,
                tool_calls: calls,
            },
            logprobs: None,
            finish_reason: finish,
        });
    }
    if choices.is_empty() {
        let blocked = resp
            .prompt_feedback
            .as_ref()
            .is_some_and(|f| f.block_reason.is_some());
        choices.push(ChoiceOut {
            index: 0,
            message: MessageOut {
                role: "assistant",
                content: Some(String::new()),
                reasoning_content: None,
                tool_calls: Vec::new(),
            },
            logprobs: None,
            finish_reason: if blocked { "content_filter" } else { "stop" },
        });
    }
    let synthesized;
    let id = match &resp.response_id {
        Some(id) => &**id,
        None => {
            synthesized = format!("chatcmpl-{}", random_hex());
            &synthesized
        }
    };
    let out = Completion {
        id,
        object: "chat.completion",
        created,
        model,
        choices,
        usage: usage.into(),
    };
    let json = serde_json::to_vec(&out).map_err(|e| bad_upstream(&e.to_string()))?;
    Ok((json, usage))
}

/// The OpenAI error `type` and `code` for an upstream status.
fn error_kind(status: StatusCode) -> (&'static str, Option<&'static str>) {
    match status.as_u16() {
        401 => ("authentication_error", Some("invalid_api_key")),
        403 => ("permission_error", None),
        404 => ("not_found_error", None),
        429 => ("rate_limit_error", Some("rate_limit_exceeded")),
        500..=599 => ("api_error", Some("server_error")),
        _ => ("invalid_request_error", None),
    }
}

pub(super) fn gemini_error(status: StatusCode, message: Option<&str>) -> OpenAiError {
    let (kind, code) = error_kind(status);
    let message = match message {
        Some(m) if !m.is_empty() => truncate(m, MAX_MESSAGE).to_owned(),
        _ => format!("The upstream answered {status}."),
    };
    OpenAiError::new(status, message, kind, None, code)
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

/// Gemini error (any status and body, normally
/// `{"error":{"code","message","status"}}`) -> [`OpenAiError`] with the
/// same status.
///
/// The type follows the status: 400 and other 4xx
/// `invalid_request_error`, 401 `authentication_error`, 403
/// `permission_error`, 404 `not_found_error`, 429 `rate_limit_error`
/// (code `rate_limit_exceeded`), 5xx `api_error` (code `server_error`).
/// A body that is not Gemini's error document gives a generic message
/// quoting at most 200 bytes of it.
pub fn error_to_chat(status: StatusCode, body: &[u8]) -> OpenAiError {
    if let Ok(doc) = serde_json::from_slice::<ErrorDocument<'_>>(body) {
        return gemini_error(status, doc.error.message.as_deref());
    }
    let (kind, code) = error_kind(status);
    let text = String::from_utf8_lossy(body);
    let text = truncate(text.trim(), MAX_QUOTE);
    let message = if text.is_empty() {
        format!("The upstream answered {status}.")
    } else {
        format!("The upstream answered {status}: {text}")
    };
    OpenAiError::new(status, message, kind, None, code)
}

/// Gemini `usageMetadata` object JSON -> normalized [`Usage`]; `None`
/// when it is not one.
pub fn usage_from_object(usage_json: &[u8]) -> Option<Usage> {
    let first = usage_json.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<UsageMetadata>(usage_json)
        .ok()
        .map(|u| u.usage())
}
