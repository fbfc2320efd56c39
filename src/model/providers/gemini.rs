//! OpenAI Chat Completions clients over Google Gemini `generateContent`
//! upstreams.
//!
//! [`request_from_chat`] turns a Chat Completions body into a
//! `GenerateContentRequest` (the model goes in the [`path`], not the
//! body), [`response_to_chat`] turns the answer back into a
//! `chat.completion`, [`error_to_chat`] turns Gemini's errors into
//! OpenAI's with the same status, and [`ChatStream`] maps
//! `streamGenerateContent?alt=sse` events to `chat.completion.chunk`s one
//! event at a time.
//!
//! ```
//! use switchyard::model::providers::gemini::{self, ChatStream};
//! use switchyard::model::providers::{RequestOptions, StreamMapper, StreamOptions, sse};
//!
//! let chat = br#"{"model":"fast","messages":[
//!     {"role":"system","content":"Be brief."},
//!     {"role":"user","content":"Hi"}],"max_tokens":50,"stream":true}"#;
//! let t = gemini::request_from_chat(chat, &RequestOptions::new("gemini-2.5-flash")).unwrap();
//! assert!(t.stream);
//! let body: serde_json::Value = serde_json::from_slice(&t.body).unwrap();
//! assert_eq!(body["systemInstruction"]["parts"][0]["text"], "Be brief.");
//! assert_eq!(body["contents"][0]["role"], "user");
//! assert_eq!(body["generationConfig"]["maxOutputTokens"], 50);
//! assert_eq!(
//!     gemini::path("gemini-2.5-flash", true),
//!     "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
//! );
//!
//! // The answer, streamed.
//! let upstream = concat!(
//!     "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Hel\"}]}}],",
//!     "\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":1}}\r\n\r\n",
//!     "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"lo\"}]},",
//!     "\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":5,\"candidatesTokenCount\":2}}\r\n\r\n",
//! );
//! let mut parser = sse::Parser::new(1 << 20);
//! let mut stream = ChatStream::new(StreamOptions::new("fast").include_usage(true));
//! let mut out = Vec::new();
//! parser.feed(upstream.as_bytes(), |e| stream.event(e, &mut out)).unwrap();
//! stream.finish(&mut out);
//! let out = String::from_utf8(out).unwrap();
//! assert!(out.contains("\"content\":\"Hel\""));
//! assert!(out.contains("\"finish_reason\":\"stop\""));
//! assert!(out.ends_with("data: [DONE]\n\n"));
//! // Gemini's usage is cumulative: the last one counts.
//! assert_eq!((stream.usage().input, stream.usage().output), (5, 2));
//! ```
//!
//! # Requests
//!
//! | OpenAI Chat | Gemini |
//! | --- | --- |
//! | `system` / `developer` messages | `systemInstruction.parts[].text` |
//! | `user` / `assistant` | `contents[]` with `role` `user` / `model`; consecutive same-role contents merged |
//! | text parts | `{"text"}` |
//! | `image_url` `data:` URI, `file.file_data`, `input_audio` | `inlineData {mimeType, data}` |
//! | `image_url` http(s) URL | `fileData {mimeType, fileUri}` (MIME type from the extension, else `image/jpeg`) |
//! | assistant `tool_calls` | `functionCall {id?, name, args}` parts, `thoughtSignature` restored from the id |
//! | `tool` messages | `functionResponse {id?, name, response}` in one `user` content; `name` recovered by `tool_call_id` |
//! | `tools` | `tools[0].functionDeclarations[] {name, description, parametersJsonSchema}` |
//! | `tool_choice` auto / none / required / named | `toolConfig.functionCallingConfig.mode` `AUTO` / `NONE` / `ANY` / `ANY` + `allowedFunctionNames` |
//! | `max_completion_tokens` (else `max_tokens`) | `generationConfig.maxOutputTokens` |
//! | `temperature`, `top_p`, `seed`, `presence_penalty`, `frequency_penalty`, `n` | `temperature`, `topP`, `seed`, `presencePenalty`, `frequencyPenalty`, `candidateCount` |
//! | `stop` (string or array) | `stopSequences` |
//! | `response_format` `json_object` / `json_schema` | `responseMimeType: "application/json"` (+ `responseJsonSchema`) |
//! | `reasoning_effort` | `thinkingConfig` (table below) |
//! | `stream`, `stream_options.include_usage` | [`Translated`]'s flags (the [`path`] differs, the body does not) |
//! | `user`, `store`, `metadata`, `service_tier`, ... | not sent |
//! | `logprobs`, `top_logprobs`, `logit_bias`, `audio`, `modalities`, `prediction`, `web_search_options`, `functions`, `function_call`, `parallel_tool_calls: false`, non-function tools | dropped, or a 400 naming them with [`Unsupported::Reject`] |
//!
//! Schemas are sent as JSON Schema (`parametersJsonSchema`,
//! `responseJsonSchema`, both on `v1beta`), not as the OpenAPI subset of
//! `parameters` / `responseSchema`: the client's schema passes unchanged
//! (no keyword stripping that silently loosens it, no tree walk on the
//! hot path), and Gemini documents `additionalProperties`, `$ref`/`$defs`
//! and the rest as supported there.
//!
//! `reasoning_effort` becomes a `thinkingBudget` (which Gemini 3 still
//! accepts besides `thinkingLevel`): `none` 0 (thinking off where the
//! model allows it), `minimal` 512 (2.5 Pro refuses 0), `low` 1024,
//! `medium` 8192, `high` and `xhigh` 24576, each but `none` with
//! `includeThoughts: true` so the thoughts come back as
//! `reasoning_content`. Another value is a 400.
//!
//! # Tool-call ids and thought signatures
//!
//! Gemini's function calls carry no id the client could echo on 2.x
//! models, and thinking models attach an opaque `thoughtSignature` to a
//! call's part that must come back with it on the next turn (else
//! Gemini answers 400). Both ride in the id this module synthesizes:
//! `call_{key}` or `call_{key}__sig__{signature}`, where `key` is 24
//! random hex digits, or `g` + Gemini's own `FunctionCall.id` when it
//! sent one made of `[A-Za-z0-9-]` (at most 128 bytes). The signature is
//! base64; it is written URL-safe (`+` as `-`, `/` as `_`, padding
//! dropped) so the id stays in `[A-Za-z0-9_-]`, which every client keeps
//! intact, and restored to standard base64 (the same bytes) on the way
//! back. A signature outside the base64 alphabets is not embedded. On
//! the way back a `g` key is sent as the `id` of the `functionCall` and of
//! its `functionResponse`. Signatures on text parts are not kept.
//!
//! # Answers
//!
//! | Gemini | OpenAI `chat.completion` |
//! | --- | --- |
//! | `responseId` | `id` (else a synthesized `chatcmpl-…`) |
//! | `candidates[i]` | `choices[i]` |
//! | `text` parts | `message.content`, concatenated |
//! | `text` parts with `thought: true` | `message.reasoning_content` |
//! | `functionCall` parts | `message.tool_calls[]` (`arguments` = `args` serialized compactly) |
//! | `finishReason` `STOP` | `stop`, or `tool_calls` when the candidate called a function |
//! | `MAX_TOKENS` | `length` |
//! | `SAFETY`, `RECITATION`, `BLOCKLIST`, `PROHIBITED_CONTENT`, `SPII`, `IMAGE_SAFETY`, `IMAGE_PROHIBITED_CONTENT`, `IMAGE_RECITATION` | `content_filter` |
//! | `MALFORMED_FUNCTION_CALL`, `OTHER`, anything else | `stop` |
//! | no candidates, `promptFeedback.blockReason` | one choice, content `""`, `content_filter` |
//! | `usageMetadata` | `usage` (below) |
//!
//! Usage: `prompt_tokens = promptTokenCount + toolUsePromptTokenCount`,
//! `completion_tokens = candidatesTokenCount + thoughtsTokenCount`
//! (thinking is output), `reasoning_tokens = thoughtsTokenCount`,
//! `cached_tokens = cachedContentTokenCount`.
//!
//! # Streams
//!
//! Each Gemini event becomes, per candidate, one chunk with its delta
//! (`role` on the first, `content`, `reasoning_content`, and every
//! `functionCall` as one whole `tool_calls` entry with its own `index`,
//! counted 0, 1, 2... across the stream), then one chunk with the
//! `finish_reason` when the event has one. `usageMetadata` is cumulative
//! in Gemini streams: the last one counts. Gemini sends no end event:
//! [`StreamMapper::finish`] writes the usage chunk (when asked) and
//! `data: [DONE]`; a stream that ended without a `finishReason` gets an
//! error chunk instead of the usage chunk, and its usage is flagged
//! truncated. An `{"error":...}` event, an unreadable event, more than
//! [`MAX_TOOL_CALLS`] calls or a candidate index past [`MAX_CANDIDATES`]
//! end the stream with an error chunk and `data: [DONE]`.

use std::borrow::Cow;
use std::collections::HashMap;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{RequestOptions, StreamMapper, StreamOptions, Translated, Unsupported, Usage, sse};
use crate::model::OpenAiError;

/// The most tool calls one stream may carry; past it the stream ends
/// with an error.
pub const MAX_TOOL_CALLS: usize = 1024;

/// The most candidates (`n`) one stream may carry; a candidate index
/// past it ends the stream with an error.
pub const MAX_CANDIDATES: usize = 8;

/// The longest upstream error message passed on, in bytes.
const MAX_MESSAGE: usize = 1024;

/// How much of an unreadable upstream body an error may quote.
const MAX_QUOTE: usize = 200;

// === Requests ===

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow)]
    messages: Option<Vec<Message<'a>>>,
    #[serde(borrow)]
    tools: Option<Vec<ToolIn<'a>>>,
    #[serde(borrow)]
    tool_choice: Option<&'a RawValue>,
    parallel_tool_calls: Option<bool>,
    max_completion_tokens: Option<u64>,
    max_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    #[serde(borrow)]
    stop: Option<&'a RawValue>,
    n: Option<u64>,
    seed: Option<i64>,
    presence_penalty: Option<f64>,
    frequency_penalty: Option<f64>,
    #[serde(borrow)]
    response_format: Option<ResponseFormat<'a>>,
    #[serde(borrow)]
    reasoning_effort: Option<Cow<'a, str>>,
    stream: Option<bool>,
    stream_options: Option<StreamOpts>,
    logprobs: Option<bool>,
    #[serde(borrow)]
    top_logprobs: Option<&'a RawValue>,
    #[serde(borrow)]
    logit_bias: Option<&'a RawValue>,
    #[serde(borrow)]
    audio: Option<&'a RawValue>,
    #[serde(borrow)]
    modalities: Option<Vec<Cow<'a, str>>>,
    #[serde(borrow)]
    prediction: Option<&'a RawValue>,
    #[serde(borrow)]
    web_search_options: Option<&'a RawValue>,
    #[serde(borrow)]
    functions: Option<&'a RawValue>,
    #[serde(borrow)]
    function_call: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StreamOpts {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    role: Cow<'a, str>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallIn<'a>>>,
    #[serde(borrow, default)]
    tool_call_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ToolCallIn<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow)]
    function: FunctionIn<'a>,
}

#[derive(Deserialize)]
struct FunctionIn<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow, default)]
    arguments: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ContentPartIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow)]
    image_url: Option<UrlIn<'a>>,
    #[serde(borrow)]
    input_audio: Option<AudioIn<'a>>,
    #[serde(borrow)]
    file: Option<FileIn<'a>>,
}

#[derive(Deserialize)]
struct UrlIn<'a> {
    #[serde(borrow)]
    url: Cow<'a, str>,
}

#[derive(Deserialize)]
struct AudioIn<'a> {
    #[serde(borrow)]
    data: Cow<'a, str>,
    #[serde(borrow)]
    format: Cow<'a, str>,
}

#[derive(Deserialize)]
struct FileIn<'a> {
    #[serde(borrow)]
    file_data: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ToolIn<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    function: Option<FunctionDecl<'a>>,
}

#[derive(Deserialize)]
struct FunctionDecl<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    description: Option<Cow<'a, str>>,
    #[serde(borrow)]
    parameters: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct NamedChoice<'a> {
    #[serde(borrow)]
    function: NamedFunction<'a>,
}

#[derive(Deserialize)]
struct NamedFunction<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ResponseFormat<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    json_schema: Option<JsonSchemaFormat<'a>>,
}

#[derive(Deserialize)]
struct JsonSchemaFormat<'a> {
    #[serde(borrow)]
    schema: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerateRequest<'a> {
    contents: Vec<ContentOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<[ToolsOut<'a>; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<ToolConfig<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_config: Option<GenerationConfig<'a>>,
}

#[derive(Serialize)]
struct SystemOut<'a> {
    parts: Vec<PartOut<'a>>,
}

#[derive(Serialize)]
struct ContentOut<'a> {
    role: &'static str,
    parts: Vec<PartOut<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum PartOut<'a> {
    Text {
        text: Cow<'a, str>,
    },
    Inline {
        #[serde(rename = "inlineData")]
        inline_data: Blob<'a>,
    },
    File {
        #[serde(rename = "fileData")]
        file_data: FileData<'a>,
    },
    Call {
        #[serde(rename = "functionCall")]
        function_call: CallOut<'a>,
        #[serde(rename = "thoughtSignature", skip_serializing_if = "Option::is_none")]
        thought_signature: Option<String>,
    },
    Response {
        #[serde(rename = "functionResponse")]
        function_response: ResponseOut<'a>,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Blob<'a> {
    mime_type: Cow<'a, str>,
    data: Cow<'a, str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FileData<'a> {
    mime_type: &'static str,
    file_uri: Cow<'a, str>,
}

#[derive(Serialize)]
struct CallOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    name: &'a str,
    args: &'a RawValue,
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    name: &'a str,
    response: ToolResult<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolResult<'a> {
    Object(&'a RawValue),
    Owned(Box<RawValue>),
    Text { content: Cow<'a, str> },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolsOut<'a> {
    function_declarations: Vec<DeclarationOut<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeclarationOut<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters_json_schema: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig<'a> {
    function_calling_config: CallingConfig<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CallingConfig<'a> {
    mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_function_names: Option<[Cow<'a, str>; 1]>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_sequences: Option<Vec<Cow<'a, str>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidate_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking_config: Option<ThinkingConfig>,
}

impl GenerationConfig<'_> {
    fn is_empty(&self) -> bool {
        self.stop_sequences.is_none()
            && self.response_mime_type.is_none()
            && self.candidate_count.is_none()
            && self.max_output_tokens.is_none()
            && self.temperature.is_none()
            && self.top_p.is_none()
            && self.seed.is_none()
            && self.presence_penalty.is_none()
            && self.frequency_penalty.is_none()
            && self.thinking_config.is_none()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ThinkingConfig {
    thinking_budget: u32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    include_thoughts: bool,
}

fn bad_request(message: impl Into<String>, param: impl Into<String>) -> OpenAiError {
    OpenAiError::new(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        None,
        None,
    )
    .with_param(param)
}

fn unsupported(param: &str) -> OpenAiError {
    OpenAiError::new(
        StatusCode::BAD_REQUEST,
        format!("`{param}` is not supported by this model's provider (Gemini)"),
        "invalid_request_error",
        None,
        Some("unsupported_parameter"),
    )
    .with_param(param.to_owned())
}

/// The static `{}` for a call without arguments.
fn empty_object() -> &'static RawValue {
    // A valid JSON literal: cannot fail.
    serde_json::from_str("{}").unwrap_or_else(|_| unreachable!())
}

/// The first byte of a JSON value, skipping whitespace.
fn first_byte(json: &str) -> u8 {
    json.bytes()
        .find(|b| !b.is_ascii_whitespace())
        .unwrap_or(b' ')
}

/// OpenAI Chat Completions request body -> Gemini `GenerateContentRequest`
/// body (the model goes in the [`path`], not the body).
///
/// Fails with a 400 naming the offending parameter in `param` when the
/// body is not a chat request, a message cannot be mapped (a malformed
/// `data:` URI, tool-call arguments that are not a JSON object, a
/// `tool_call_id` answering no earlier call), or, with
/// [`Unsupported::Reject`], a parameter Gemini cannot honour is set.
pub fn request_from_chat(body: &[u8], opts: &RequestOptions) -> Result<Translated, OpenAiError> {
    let req: ChatRequest<'_> = serde_json::from_slice(body).map_err(|e| {
        OpenAiError::new(
            StatusCode::BAD_REQUEST,
            format!("The request body is not a chat completion request: {e}"),
            "invalid_request_error",
            None,
            Some("invalid_json"),
        )
    })?;
    let Some(messages) = req.messages.as_deref() else {
        return Err(bad_request(
            "A chat completion request needs a `messages` array.",
            "messages",
        ));
    };
    let reject = opts.unsupported == Unsupported::Reject;
    if reject {
        check_unsupported(&req)?;
    }

    let mut system: Vec<PartOut<'_>> = Vec::new();
    let mut contents: Vec<ContentOut<'_>> = Vec::new();
    // tool_call_id -> function name, from the assistant messages so far.
    let mut names: HashMap<&str, &str, foldhash::fast::RandomState> = HashMap::default();

    for (i, m) in messages.iter().enumerate() {
        match &*m.role {
            "system" | "developer" => {
                text_parts(m.content, i, &mut system)?;
            }
            "user" => {
                let mut parts = Vec::new();
                user_parts(m.content, i, &mut parts)?;
                push_content(&mut contents, "user", parts);
            }
            "assistant" => {
                let mut parts = Vec::new();
                text_parts(m.content, i, &mut parts)?;
                for (j, call) in m.tool_calls.iter().flatten().enumerate() {
                    let args = call_args(&call.function.arguments).ok_or_else(|| {
                        bad_request(
                            "Tool-call arguments must be a JSON object.",
                            format!("messages[{i}].tool_calls[{j}].function.arguments"),
                        )
                    })?;
                    let (key, signature) = split_call_id(&call.id);
                    names.insert(&call.id, &call.function.name);
                    parts.push(PartOut::Call {
                        function_call: CallOut {
                            id: gemini_id(key),
                            name: &call.function.name,
                            args,
                        },
                        thought_signature: signature.map(signature_from_id),
                    });
                }
                push_content(&mut contents, "model", parts);
            }
            "tool" => {
                let id = m.tool_call_id.as_deref().unwrap_or("");
                let Some(name) = names.get(id).copied() else {
                    return Err(bad_request(
                        "`tool_call_id` answers no tool call of an earlier assistant message.",
                        format!("messages[{i}].tool_call_id"),
                    ));
                };
                let (key, _) = split_call_id(id);
                let response = tool_result(m.content, i)?;
                push_content(
                    &mut contents,
                    "user",
                    vec![PartOut::Response {
                        function_response: ResponseOut {
                            id: gemini_id(key),
                            name,
                            response,
                        },
                    }],
                );
            }
            _ => {
                return Err(bad_request(
                    format!("Unsupported message role `{}`.", m.role),
                    format!("messages[{i}].role"),
                ));
            }
        }
    }

    let mut declarations = Vec::new();
    for (i, tool) in req.tools.iter().flatten().enumerate() {
        match (&*tool.kind, &tool.function) {
            ("function", Some(f)) => declarations.push(DeclarationOut {
                name: &f.name,
                description: f.description.as_deref(),
                parameters_json_schema: f.parameters,
            }),
            _ if reject => return Err(unsupported(&format!("tools[{i}]"))),
            _ => {}
        }
    }
    let tools = (!declarations.is_empty()).then_some([ToolsOut {
        function_declarations: declarations,
    }]);

    let tool_config = match req.tool_choice {
        None => None,
        Some(raw) => Some(tool_config(raw)?),
    };

    let mut config = GenerationConfig {
        max_output_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        candidate_count: req.n,
        seed: req.seed,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        ..GenerationConfig::default()
    };
    if let Some(stop) = req.stop {
        config.stop_sequences = stop_sequences(stop)?;
    }
    if let Some(format) = &req.response_format {
        match &*format.kind {
            "text" => {}
            "json_object" => config.response_mime_type = Some("application/json"),
            "json_schema" => {
                config.response_mime_type = Some("application/json");
                config.response_json_schema = format.json_schema.as_ref().and_then(|s| s.schema);
            }
            other => {
                return Err(bad_request(
                    format!("Unknown response_format type `{other}`."),
                    "response_format.type",
                ));
            }
        }
    }
    if let Some(effort) = &req.reasoning_effort {
        let (budget, include) = match &**effort {
            "none" => (0, false),
            "minimal" => (512, true),
            "low" => (1024, true),
            "medium" => (8192, true),
            "high" | "xhigh" => (24576, true),
            other => {
                return Err(bad_request(
                    format!("Unknown reasoning_effort `{other}`."),
                    "reasoning_effort",
                ));
            }
        };
        config.thinking_config = Some(ThinkingConfig {
            thinking_budget: budget,
            include_thoughts: include,
        });
    }

    let out = GenerateRequest {
        contents,
        system_instruction: (!system.is_empty()).then_some(SystemOut { parts: system }),
        tools,
        tool_config,
        generation_config: (!config.is_empty()).then_some(config),
    };
    let mut body = Vec::with_capacity(body.len() + 64);
    serde_json::to_writer(&mut body, &out).map_err(|e| {
        // Only a non-finite float could fail, and JSON input has none.
        bad_request(
            format!("The request could not be translated: {e}"),
            "messages",
        )
    })?;
    Ok(Translated {
        body,
        stream: req.stream.unwrap_or(false),
        include_usage: req.stream_options.is_some_and(|o| o.include_usage),
    })
}

fn check_unsupported(req: &ChatRequest<'_>) -> Result<(), OpenAiError> {
    let set = [
        ("logprobs", req.logprobs == Some(true)),
        ("top_logprobs", req.top_logprobs.is_some()),
        ("logit_bias", req.logit_bias.is_some()),
        ("audio", req.audio.is_some()),
        (
            "modalities",
            req.modalities
                .as_ref()
                .is_some_and(|m| m.iter().any(|m| m != "text")),
        ),
        ("prediction", req.prediction.is_some()),
        ("web_search_options", req.web_search_options.is_some()),
        ("functions", req.functions.is_some()),
        ("function_call", req.function_call.is_some()),
        (
            "parallel_tool_calls",
            req.parallel_tool_calls == Some(false),
        ),
    ];
    match set.iter().find(|(_, on)| *on) {
        Some((name, _)) => Err(unsupported(name)),
        None => Ok(()),
    }
}

/// Appends a content, merged into the last one when it has the same role.
fn push_content<'a>(
    contents: &mut Vec<ContentOut<'a>>,
    role: &'static str,
    parts: Vec<PartOut<'a>>,
) {
    if parts.is_empty() {
        return;
    }
    match contents.last_mut() {
        Some(last) if last.role == role => last.parts.extend(parts),
        _ => contents.push(ContentOut { role, parts }),
    }
}

enum ContentIn<'a> {
    None,
    Text(Cow<'a, str>),
    Parts(Vec<ContentPartIn<'a>>),
}

fn read_content<'a>(raw: Option<&'a RawValue>, i: usize) -> Result<ContentIn<'a>, OpenAiError> {
    let Some(raw) = raw else {
        return Ok(ContentIn::None);
    };
    let bad = |e: serde_json::Error| {
        bad_request(
            format!("Message content must be a string or an array of parts: {e}"),
            format!("messages[{i}].content"),
        )
    };
    match first_byte(raw.get()) {
        b'"' => serde_json::from_str(raw.get())
            .map(ContentIn::Text)
            .map_err(bad),
        b'[' => serde_json::from_str(raw.get())
            .map(ContentIn::Parts)
            .map_err(bad),
        b'n' => Ok(ContentIn::None),
        _ => Err(bad_request(
            "Message content must be a string or an array of parts.",
            format!("messages[{i}].content"),
        )),
    }
}

/// Text-only content (system and assistant messages).
fn text_parts<'a>(
    raw: Option<&'a RawValue>,
    i: usize,
    out: &mut Vec<PartOut<'a>>,
) -> Result<(), OpenAiError> {
    match read_content(raw, i)? {
        ContentIn::None => {}
        ContentIn::Text(t) => push_text(out, t),
        ContentIn::Parts(parts) => {
            for (j, p) in parts.into_iter().enumerate() {
                match (&*p.kind, p.text, p.refusal) {
                    ("text", Some(t), _) => push_text(out, t),
                    ("refusal", _, Some(t)) => push_text(out, t),
                    _ => {
                        return Err(bad_request(
                            "Only text parts are accepted in this message.",
                            format!("messages[{i}].content[{j}]"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn push_text<'a>(out: &mut Vec<PartOut<'a>>, text: Cow<'a, str>) {
    if text.is_empty() {
        return;
    }
    out.push(PartOut::Text { text });
}

fn user_parts<'a>(
    raw: Option<&'a RawValue>,
    i: usize,
    out: &mut Vec<PartOut<'a>>,
) -> Result<(), OpenAiError> {
    match read_content(raw, i)? {
        ContentIn::None => {}
        ContentIn::Text(t) => push_text(out, t),
        ContentIn::Parts(parts) => {
            for (j, p) in parts.into_iter().enumerate() {
                let at = || format!("messages[{i}].content[{j}]");
                match &*p.kind {
                    "text" => push_text(out, p.text.unwrap_or_default()),
                    "image_url" => {
                        let Some(url) = p.image_url else {
                            return Err(bad_request(
                                "An image_url part needs `image_url.url`.",
                                at(),
                            ));
                        };
                        out.push(media_part(url.url).ok_or_else(|| {
                            bad_request(
                                "The image URL must be an http(s) URL or a base64 `data:` URI.",
                                format!("{}.image_url.url", at()),
                            )
                        })?);
                    }
                    "input_audio" => {
                        let Some(audio) = p.input_audio else {
                            return Err(bad_request(
                                "An input_audio part needs `input_audio`.",
                                at(),
                            ));
                        };
                        let mime = match &*audio.format {
                            "wav" => "audio/wav",
                            "mp3" => "audio/mp3",
                            "flac" => "audio/flac",
                            "ogg" => "audio/ogg",
                            "aac" => "audio/aac",
                            _ => {
                                return Err(bad_request(
                                    "Unsupported audio format.",
                                    format!("{}.input_audio.format", at()),
                                ));
                            }
                        };
                        out.push(PartOut::Inline {
                            inline_data: Blob {
                                mime_type: Cow::Borrowed(mime),
                                data: audio.data,
                            },
                        });
                    }
                    "file" => {
                        let data = p.file.and_then(|f| f.file_data);
                        match data
                            .and_then(|d| data_uri(&d).map(|(m, d2)| (sub(&d, m), sub(&d, d2))))
                        {
                            Some((mime, data)) => out.push(PartOut::Inline {
                                inline_data: Blob {
                                    mime_type: mime,
                                    data,
                                },
                            }),
                            None => {
                                return Err(bad_request(
                                    "A file part needs `file.file_data` as a base64 `data:` URI (file ids cannot be resolved).",
                                    format!("{}.file.file_data", at()),
                                ));
                            }
                        }
                    }
                    _ => {
                        return Err(bad_request(
                            "Unsupported content part type.",
                            format!("{}.type", at()),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}
/// A piece of `whole` (a subslice of it) as a `Cow` of the same origin.
fn sub<'a>(whole: &Cow<'a, str>, range: std::ops::Range<usize>) -> Cow<'a, str> {
    match whole {
        Cow::Borrowed(s) => Cow::Borrowed(s.get(range).unwrap_or("")),
        Cow::Owned(s) => Cow::Owned(s.get(range).unwrap_or("").to_owned()),
    }
}

/// A `data:` URI or an http(s) URL as a part.
fn media_part(url: Cow<'_, str>) -> Option<PartOut<'_>> {
    if url.starts_with("data:") {
        let (mime, data) = data_uri(&url)?;
        return Some(PartOut::Inline {
            inline_data: Blob {
                mime_type: sub(&url, mime),
                data: sub(&url, data),
            },
        });
    }
    let scheme = url.get(..8).unwrap_or(&url).to_ascii_lowercase();
    if !(scheme.starts_with("http://") || scheme.starts_with("https://")) {
        return None;
    }
    Some(PartOut::File {
        file_data: FileData {
            mime_type: mime_from_extension(&url),
            file_uri: url,
        },
    })
}

/// `data:<mime>;base64,<data>`: the ranges of the MIME type and the data.
fn data_uri(url: &str) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
    let rest = url.strip_prefix("data:")?;
    let (head, data) = rest.split_once(',')?;
    let mime = head.strip_suffix(";base64")?;
    if mime.is_empty() || data.is_empty() || !mime.contains('/') {
        return None;
    }
    let m0 = "data:".len();
    let d0 = m0 + head.len() + 1;
    Some((m0..m0 + mime.len(), d0..url.len()))
}

fn mime_from_extension(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    if ext.len() > 5 {
        return "image/jpeg";
    }
    match ext.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        "pdf" => "application/pdf",
        _ => "image/jpeg",
    }
}

/// A tool message's content: a JSON object as is, anything else as
/// `{"content": text}`.
fn tool_result<'a>(raw: Option<&'a RawValue>, i: usize) -> Result<ToolResult<'a>, OpenAiError> {
    let text: Cow<'a, str> = match read_content(raw, i)? {
        ContentIn::None => Cow::Borrowed(""),
        ContentIn::Text(t) => t,
        ContentIn::Parts(parts) => {
            let mut s = String::new();
            for p in parts {
                if let Some(t) = p.text {
                    s.push_str(&t);
                }
            }
            Cow::Owned(s)
        }
    };
    if first_byte(&text) == b'{' {
        match text {
            Cow::Borrowed(t) => {
                if let Ok(raw) = serde_json::from_str::<&RawValue>(t) {
                    return Ok(ToolResult::Object(raw));
                }
                return Ok(ToolResult::Text {
                    content: Cow::Borrowed(t),
                });
            }
            Cow::Owned(t) => {
                if let Ok(raw) = RawValue::from_string(t.clone()) {
                    return Ok(ToolResult::Owned(raw));
                }
                return Ok(ToolResult::Text {
                    content: Cow::Owned(t),
                });
            }
        }
    }
    Ok(ToolResult::Text { content: text })
}

/// A tool call's arguments as a JSON object (`""` as `{}`).
fn call_args(arguments: &str) -> Option<&RawValue> {
    if arguments.trim().is_empty() {
        return Some(empty_object());
    }
    if first_byte(arguments) != b'{' {
        return None;
    }
    serde_json::from_str::<&RawValue>(arguments).ok()
}

fn tool_config<'a>(raw: &'a RawValue) -> Result<ToolConfig<'a>, OpenAiError> {
    let bad = || bad_request("Unknown tool_choice.", "tool_choice");
    let (mode, allowed) = match first_byte(raw.get()) {
        b'"' => {
            let s: Cow<'_, str> = serde_json::from_str(raw.get()).map_err(|_| bad())?;
            let mode = match &*s {
                "auto" => "AUTO",
                "none" => "NONE",
                "required" => "ANY",
                _ => return Err(bad()),
            };
            (mode, None)
        }
        b'{' => {
            let named: NamedChoice<'a> = serde_json::from_str(raw.get()).map_err(|_| bad())?;
            ("ANY", Some([named.function.name]))
        }
        _ => return Err(bad()),
    };
    Ok(ToolConfig {
        function_calling_config: CallingConfig {
            mode,
            allowed_function_names: allowed,
        },
    })
}

fn stop_sequences(raw: &RawValue) -> Result<Option<Vec<Cow<'_, str>>>, OpenAiError> {
    let bad = || bad_request("`stop` must be a string or an array of strings.", "stop");
    match first_byte(raw.get()) {
        b'"' => {
            let s: Cow<'_, str> = serde_json::from_str(raw.get()).map_err(|_| bad())?;
            Ok(Some(vec![s]))
        }
        b'[' => {
            let v: Vec<Cow<'_, str>> = serde_json::from_str(raw.get()).map_err(|_| bad())?;
            Ok((!v.is_empty()).then_some(v))
        }
        _ => Err(bad()),
    }
}

/// The upstream path for a model: `/v1beta/models/{model}:generateContent`
/// or, streaming, `/v1beta/models/{model}:streamGenerateContent?alt=sse`.
///
/// The model is percent-encoded as one path segment (`/`, `:`, `?`, `#`,
/// `%` and the like escaped); a model already named `models/...` is not
/// prefixed twice.
pub fn path(model: &str, stream: bool) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    let model = model.strip_prefix("models/").unwrap_or(model);
    let method = if stream {
        ":streamGenerateContent?alt=sse"
    } else {
        ":generateContent"
    };
    let mut p = String::with_capacity(16 + model.len() + method.len());
    p.push_str("/v1beta/models/");
    p.extend(percent_encoding::utf8_percent_encode(model, SEGMENT));
    p.push_str(method);
    p
}

// === Tool-call ids ===

const SIG: &str = "__sig__";

/// `call_{key}` or `call_{key}__sig__{signature}` -> (`key`, signature).
/// Ids of other shapes (a conversation begun elsewhere) are a key of
/// their own with no signature.
fn split_call_id(id: &str) -> (&str, Option<&str>) {
    let Some(rest) = id.strip_prefix("call_") else {
        return (id, None);
    };
    match rest.split_once(SIG) {
        Some((key, sig)) if !sig.is_empty() => (key, Some(sig)),
        _ => (rest, None),
    }
}

/// Gemini's own function-call id, when the key carries one (`g...`).
fn gemini_id(key: &str) -> Option<&str> {
    key.strip_prefix('g')
        .filter(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// The URL-safe, unpadded signature of an id back to standard base64.
fn signature_from_id(sig: &str) -> String {
    let mut s: String = sig
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    match s.len() % 4 {
        2 => s.push_str("=="),
        3 => s.push('='),
        _ => {}
    }
    s
}

/// A fresh tool-call id for a Gemini function call.
fn new_call_id(gemini: Option<&str>, signature: Option<&str>) -> String {
    let mut id = String::with_capacity(32 + signature.map_or(0, str::len));
    id.push_str("call_");
    match gemini.filter(|g| {
        !g.is_empty() && g.len() <= 128 && g.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    }) {
        Some(g) => {
            id.push('g');
            id.push_str(g);
        }
        None => id.push_str(&random_hex()),
    }
    if let Some(sig) = signature {
        let sig = sig.trim_end_matches('=');
        if !sig.is_empty()
            && sig
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
        {
            id.push_str(SIG);
            id.extend(sig.chars().map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            }));
        }
    }
    id
}

/// 24 random hex digits.
fn random_hex() -> String {
    format!(
        "{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}

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
struct FunctionCallIn<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    args: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback<'a> {
    #[serde(borrow)]
    block_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct UsageMetadata {
    prompt_token_count: u64,
    candidates_token_count: u64,
    thoughts_token_count: u64,
    cached_content_token_count: u64,
    tool_use_prompt_token_count: u64,
}

impl UsageMetadata {
    fn usage(&self) -> Usage {
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
struct GeminiError<'a> {
    code: Option<u16>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
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
struct ToolCallOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<u32>,
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionOut,
}

#[derive(Serialize)]
struct FunctionOut {
    name: String,
    arguments: String,
}

#[derive(Serialize)]
struct UsageOut {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedOut,
    completion_tokens_details: ReasoningOut,
}

#[derive(Serialize)]
struct CachedOut {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningOut {
    reasoning_tokens: u64,
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
fn finish_reason(reason: &str, called: bool) -> &'static str {
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

fn call_arguments(args: Option<&RawValue>) -> String {
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

fn gemini_error(status: StatusCode, message: Option<&str>) -> OpenAiError {
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

// === Streams ===

/// Gemini server-sent events (`streamGenerateContent?alt=sse`: each
/// `data:` is a `GenerateContentResponse`) -> OpenAI
/// `chat.completion.chunk` events ending with `data: [DONE]`.
///
/// Its state is bounded: a few counters per candidate (at most
/// [`MAX_CANDIDATES`]), the stream's id and the last usage.
#[derive(Debug)]
pub struct ChatStream {
    opts: StreamOptions,
    /// The chunks' id, set by the first event.
    id: String,
    choices: Vec<ChoiceState>,
    /// Tool calls seen, all candidates together.
    calls: usize,
    usage: Usage,
    /// A `finishReason` was seen.
    finished: bool,
    /// `data: [DONE]` was written.
    done: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct ChoiceState {
    role_sent: bool,
    /// The next tool call's index.
    next_call: u32,
}

#[derive(Serialize)]
struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: &'a [ChunkChoice<'a>],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<UsageOut>,
}

#[derive(Serialize)]
struct ChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCallOut>,
}

#[derive(Serialize)]
struct ErrorChunk<'a> {
    error: ErrorChunkBody<'a>,
}

#[derive(Serialize)]
struct ErrorChunkBody<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<()>,
    code: Option<()>,
}

fn append<'a>(acc: &mut Option<Cow<'a, str>>, text: Cow<'a, str>) {
    match acc {
        None => *acc = Some(text),
        Some(a) => a.to_mut().push_str(&text),
    }
}

impl ChatStream {
    /// A stream answering as `opts.model`, ending with a usage chunk when
    /// `opts.include_usage`.
    pub fn new(opts: StreamOptions) -> Self {
        Self {
            opts,
            id: String::new(),
            choices: Vec::new(),
            calls: 0,
            usage: Usage::default(),
            finished: false,
            done: false,
        }
    }

    fn ensure_id(&mut self, response_id: Option<&str>) {
        if self.id.is_empty() {
            self.id = match response_id {
                Some(id) if !id.is_empty() => id.to_owned(),
                _ => format!("chatcmpl-{}", random_hex()),
            };
        }
    }

    fn write_chunk(&self, choices: &[ChunkChoice<'_>], usage: Option<UsageOut>, out: &mut Vec<u8>) {
        let chunk = Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.opts.created,
            model: &self.opts.model,
            choices,
            usage,
        };
        out.extend_from_slice(b"data: ");
        // Writing strings and integers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &chunk);
        out.extend_from_slice(b"\n\n");
    }

    /// Writes an error chunk and `data: [DONE]`; nothing follows.
    fn error(&mut self, kind: &'static str, message: &str, out: &mut Vec<u8>) {
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
        out.extend_from_slice(b"\n\n");
        self.usage.truncated = true;
        self.done_event(out);
    }

    fn done_event(&mut self, out: &mut Vec<u8>) {
        sse::write_data(out, b"[DONE]");
        self.done = true;
    }

    fn response(&mut self, resp: GenerateResponse<'_>, out: &mut Vec<u8>) {
        if let Some(err) = resp.error {
            let status = err
                .code
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            let e = gemini_error(status, err.message.as_deref());
            self.error(e.kind(), e.message(), out);
            return;
        }
        self.ensure_id(resp.response_id.as_deref());
        if let Some(u) = &resp.usage_metadata {
            // Cumulative: the last one counts.
            self.usage = u.usage();
        }
        if resp.candidates.is_empty() {
            if resp
                .prompt_feedback
                .as_ref()
                .is_some_and(|f| f.block_reason.is_some())
            {
                let delta = Delta {
                    role: Some("assistant"),
                    content: Some(Cow::Borrowed("")),
                    ..Delta::default()
                };
                let choice = ChunkChoice {
                    index: 0,
                    delta,
                    logprobs: None,
                    finish_reason: Some("content_filter"),
                };
                self.write_chunk(&[choice], None, out);
                self.finished = true;
            }
            return;
        }
        for (pos, cand) in resp.candidates.into_iter().enumerate() {
            let index = cand.index.map_or(pos, |i| i as usize);
            if index >= MAX_CANDIDATES {
                self.error(
                    "api_error",
                    "The upstream's stream has more candidates than the gateway accepts.",
                    out,
                );
                return;
            }
            if self.choices.len() <= index {
                self.choices.resize(index + 1, ChoiceState::default());
            }
            let mut state = self.choices[index];
            let mut delta = Delta::default();
            for part in cand.content.into_iter().flat_map(|c| c.parts) {
                if let Some(call) = part.function_call {
                    if self.calls >= MAX_TOOL_CALLS {
                        self.error(
                            "api_error",
                            "The upstream's stream has more tool calls than the gateway accepts.",
                            out,
                        );
                        return;
                    }
                    self.calls += 1;
                    delta.tool_calls.push(ToolCallOut {
                        index: Some(state.next_call),
                        id: new_call_id(call.id.as_deref(), part.thought_signature.as_deref()),
                        kind: "function",
                        function: FunctionOut {
                            name: call.name.into_owned(),
                            arguments: call_arguments(call.args),
                        },
                    });
                    state.next_call += 1;
                } else if let Some(t) = part.text {
                    if t.is_empty() {
                        continue;
                    }
                    append(
                        if part.thought {
                            &mut delta.reasoning_content
                        } else {
                            &mut delta.content
                        },
                        t,
                    );
                }
            }
            let index32 = u32::try_from(index).unwrap_or(u32::MAX);
            let has_output = delta.content.is_some()
                || delta.reasoning_content.is_some()
                || !delta.tool_calls.is_empty();
            if has_output {
                if !state.role_sent {
                    delta.role = Some("assistant");
                    state.role_sent = true;
                }
                let choice = ChunkChoice {
                    index: index32,
                    delta,
                    logprobs: None,
                    finish_reason: None,
                };
                self.write_chunk(&[choice], None, out);
            }
            if let Some(reason) = cand.finish_reason.as_deref() {
                let mut delta = Delta::default();
                if !state.role_sent {
                    delta.role = Some("assistant");
                    delta.content = Some(Cow::Borrowed(""));
                    state.role_sent = true;
                }
                let choice = ChunkChoice {
                    index: index32,
                    delta,
                    logprobs: None,
                    finish_reason: Some(finish_reason(reason, state.next_call > 0)),
                };
                self.write_chunk(&[choice], None, out);
                self.finished = true;
            }
            if let Some(slot) = self.choices.get_mut(index) {
                *slot = state;
            }
        }
    }
}

impl StreamMapper for ChatStream {
    fn event(&mut self, event: &sse::Event<'_>, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let data = event.data.trim();
        if data.is_empty() || data == "[DONE]" {
            return;
        }
        match serde_json::from_str::<GenerateResponse<'_>>(data) {
            Ok(resp) => self.response(resp, out),
            Err(_) => self.error("api_error", "The upstream sent an unreadable event.", out),
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if !self.finished {
            self.error(
                "api_error",
                "The upstream's stream ended before its last event.",
                out,
            );
            return;
        }
        if self.opts.include_usage {
            self.ensure_id(None);
            self.write_chunk(&[], Some(self.usage.into()), out);
        }
        self.done_event(out);
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        self.usage.truncated = true;
        self.error("api_error", message, out);
    }

    fn usage(&self) -> Usage {
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const CREATED: u64 = 1_700_000_000;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../../tests/fixtures/providers/gemini/", $name))
        };
    }

    /// Replaces the random part of synthesized tool-call ids with `RANDOM`.
    fn normalize(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if k == "id" {
                        let random =
                            v.as_str()
                                .and_then(|s| s.strip_prefix("call_"))
                                .filter(|rest| {
                                    rest.get(..24)
                                        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                                });
                        if let Some(rest) = random {
                            *v = Value::String(format!("call_RANDOM{}", &rest[24..]));
                        }
                    } else {
                        normalize(v);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(normalize),
            _ => {}
        }
    }

    fn chat(body: &str) -> (Value, Usage) {
        let (json, usage) = response_to_chat(body.as_bytes(), "fast", CREATED).unwrap();
        let mut v: Value = serde_json::from_slice(&json).unwrap();
        normalize(&mut v);
        (v, usage)
    }

    fn stream_bytes(pieces: &[&[u8]], include_usage: bool) -> (Vec<u8>, Usage) {
        let mut parser = sse::Parser::new(1 << 20);
        let mut s = ChatStream::new(
            StreamOptions::new("fast")
                .include_usage(include_usage)
                .created(CREATED),
        );
        let mut out = Vec::new();
        for p in pieces {
            parser.feed(p, |e| s.event(e, &mut out)).unwrap();
        }
        parser.finish(|e| s.event(e, &mut out));
        s.finish(&mut out);
        (out, s.usage())
    }

    fn events(out: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(out).unwrap();
        let mut v = Vec::new();
        for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
            let data = ev.strip_prefix("data: ").expect("a data event");
            let mut value = if data == "[DONE]" {
                Value::String("[DONE]".into())
            } else {
                serde_json::from_str(data).unwrap()
            };
            normalize(&mut value);
            v.push(value);
        }
        v
    }

    fn stream(sse: &str, include_usage: bool) -> (Vec<Value>, Usage) {
        let (out, usage) = stream_bytes(&[sse.as_bytes()], include_usage);
        (events(&out), usage)
    }

    fn request(body: Value) -> Value {
        let t = request_from_chat(
            body.to_string().as_bytes(),
            &RequestOptions::new("gemini-2.5-flash"),
        )
        .unwrap();
        serde_json::from_slice(&t.body).unwrap()
    }

    fn request_err(body: Value, opts: &RequestOptions) -> OpenAiError {
        request_from_chat(body.to_string().as_bytes(), opts).unwrap_err()
    }

    // --- golden fixtures ---

    #[test]
    fn golden_responses() {
        let cases = [
            (
                fixture!("response_text.json"),
                fixture!("response_text.expected.json"),
            ),
            (
                fixture!("response_function_call.json"),
                fixture!("response_function_call.expected.json"),
            ),
            (
                fixture!("response_parallel_same_tool.json"),
                fixture!("response_parallel_same_tool.expected.json"),
            ),
            (
                fixture!("response_thinking.json"),
                fixture!("response_thinking.expected.json"),
            ),
            (
                fixture!("response_cached.json"),
                fixture!("response_cached.expected.json"),
            ),
            (
                fixture!("response_safety_block.json"),
                fixture!("response_safety_block.expected.json"),
            ),
            (
                fixture!("response_safety_candidate.json"),
                fixture!("response_safety_candidate.expected.json"),
            ),
            (
                fixture!("response_max_tokens.json"),
                fixture!("response_max_tokens.expected.json"),
            ),
        ];
        for (input, expected) in cases {
            let expected: Value = serde_json::from_str(expected).unwrap();
            assert_eq!(chat(input).0, expected, "{input}");
        }
    }

    #[test]
    fn golden_errors() {
        let cases = [
            (
                400,
                fixture!("error_400.json"),
                fixture!("error_400.expected.json"),
            ),
            (
                429,
                fixture!("error_429.json"),
                fixture!("error_429.expected.json"),
            ),
            (
                500,
                fixture!("error_500.json"),
                fixture!("error_500.expected.json"),
            ),
        ];
        for (status, input, expected) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            let e = error_to_chat(status, input.as_bytes());
            assert_eq!(e.status(), status);
            let got: Value = serde_json::to_value(&e).unwrap();
            assert_eq!(got, serde_json::from_str::<Value>(expected).unwrap());
        }
    }

    #[test]
    fn golden_streams() {
        let cases = [
            (
                fixture!("stream_text.sse"),
                fixture!("stream_text.expected.json"),
            ),
            (
                fixture!("stream_call_then_stop.sse"),
                fixture!("stream_call_then_stop.expected.json"),
            ),
            (
                fixture!("stream_parallel_same_tool.sse"),
                fixture!("stream_parallel_same_tool.expected.json"),
            ),
            (
                fixture!("stream_error.sse"),
                fixture!("stream_error.expected.json"),
            ),
        ];
        for (input, expected) in cases {
            let expected: Vec<Value> = serde_json::from_str(expected).unwrap();
            assert_eq!(stream(input, true).0, expected, "{input}");
        }
    }

    #[test]
    fn golden_request() {
        let t = request_from_chat(
            fixture!("request_full.json").as_bytes(),
            &RequestOptions::new("gemini-2.5-flash"),
        )
        .unwrap();
        assert!(t.stream && t.include_usage);
        let got: Value = serde_json::from_slice(&t.body).unwrap();
        let expected: Value = serde_json::from_str(fixture!("request_full.expected.json")).unwrap();
        assert_eq!(got, expected);
        // The same request refused for what Gemini cannot honour.
        let e = request_from_chat(
            fixture!("request_full.json").as_bytes(),
            &RequestOptions::new("m").unsupported(Unsupported::Reject),
        )
        .unwrap_err();
        assert_eq!(e.param(), Some("logit_bias"));
    }

    // --- the peers' bugs ---

    #[test]
    fn parallel_calls_to_one_tool_get_their_own_indexes() {
        let (events, _) = stream(fixture!("stream_parallel_same_tool.sse"), false);
        let indexes: Vec<u64> = events
            .iter()
            .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].as_array())
            .flatten()
            .map(|c| c["index"].as_u64().unwrap())
            .collect();
        assert_eq!(indexes, [0, 1, 2]);
        let ids: std::collections::HashSet<String> = {
            let (out, _) = stream_bytes(
                &[fixture!("stream_parallel_same_tool.sse").as_bytes()],
                false,
            );
            let text = String::from_utf8(out).unwrap();
            text.split("\"id\":\"call_")
                .skip(1)
                .map(|s| s[..24].to_owned())
                .collect()
        };
        assert_eq!(ids.len(), 3, "every call has its own id");
    }

    #[test]
    fn cumulative_usage_is_not_summed() {
        let (events, usage) = stream(fixture!("stream_text.sse"), true);
        assert_eq!((usage.input, usage.output), (10, 4));
        assert!(!usage.truncated);
        let last = &events[events.len() - 2];
        assert_eq!(last["usage"]["prompt_tokens"], 10);
        assert_eq!(last["usage"]["completion_tokens"], 4);
        // Without include_usage, the router still gets it.
        let (events, usage) = stream(fixture!("stream_text.sse"), false);
        assert_eq!((usage.input, usage.output), (10, 4));
        assert!(events.iter().all(|e| e.get("usage").is_none()));
    }

    #[test]
    fn stop_after_a_function_call_is_tool_calls() {
        // Separate chunks.
        let (events, _) = stream(fixture!("stream_call_then_stop.sse"), false);
        assert_eq!(events[2]["choices"][0]["finish_reason"], "tool_calls");
        // Same chunk.
        let same = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":{}}}]},\"finishReason\":\"STOP\"}]}\n\n";
        let (events, _) = stream(same, false);
        assert_eq!(events[1]["choices"][0]["finish_reason"], "tool_calls");
        // JSON.
        let (v, _) = chat(fixture!("response_function_call.json"));
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        // Without a call, STOP is stop.
        let (events, _) = stream(fixture!("stream_text.sse"), false);
        assert_eq!(events[3]["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn thought_signature_round_trips() {
        let (json, _) = response_to_chat(
            fixture!("response_thinking.json").as_bytes(),
            "fast",
            CREATED,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&json).unwrap();
        let call = v["choices"][0]["message"]["tool_calls"][0].clone();
        let id = call["id"].as_str().unwrap().to_owned();
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "{id}"
        );
        let next = request(json!({
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": id, "content": "18C"},
            ]
        }));
        let part = &next["contents"][1]["parts"][0];
        assert_eq!(part["thoughtSignature"], "CiQB0e2Kb+/x9z==");
        assert_eq!(part["functionCall"]["name"], "get_weather");
        assert_eq!(part["functionCall"]["args"], json!({"city": "Paris"}));
        assert_eq!(
            next["contents"][2]["parts"][0]["functionResponse"]["name"],
            "get_weather"
        );
        // Streamed too, and Gemini's own ids come back as `id`.
        let (events, _) = stream(fixture!("stream_call_then_stop.sse"), false);
        let (raw, _) = stream_bytes(&[fixture!("stream_call_then_stop.sse").as_bytes()], false);
        let raw = events_raw_id(&raw);
        assert!(events.len() > 1);
        let next = request(json!({"messages": [
            {"role": "assistant", "tool_calls": [{"id": raw, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": raw, "content": "x"}
        ]}));
        assert_eq!(
            next["contents"][0]["parts"][0]["thoughtSignature"],
            "Q2lRQjBlMktiKy94OXo="
        );
        let (v, _) = chat(fixture!("response_parallel_same_tool.json"));
        let id = v["choices"][0]["message"]["tool_calls"][1]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let next = request(json!({"messages": [
            {"role": "assistant", "tool_calls": [{"id": id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": id, "content": "x"}
        ]}));
        assert_eq!(
            next["contents"][0]["parts"][0]["functionCall"]["id"],
            "fc-2"
        );
        assert_eq!(
            next["contents"][1]["parts"][0]["functionResponse"]["id"],
            "fc-2"
        );
    }

    fn events_raw_id(out: &[u8]) -> String {
        let text = std::str::from_utf8(out).unwrap();
        let start = text.find("\"id\":\"call_").unwrap() + 6;
        let len = text[start..].find('"').unwrap();
        text[start..start + len].to_owned()
    }

    #[test]
    fn thinking_tokens_are_output() {
        let (v, usage) = chat(fixture!("response_thinking.json"));
        assert_eq!(usage.output, 15 + 120);
        assert_eq!(usage.reasoning, 120);
        assert_eq!(v["usage"]["completion_tokens"], 135);
        assert_eq!(
            v["usage"]["completion_tokens_details"]["reasoning_tokens"],
            120
        );
        assert_eq!(v["usage"]["total_tokens"], 195);
        let u = usage_from_object(br#"{"promptTokenCount":3,"candidatesTokenCount":4,"thoughtsTokenCount":5,"cachedContentTokenCount":1}"#).unwrap();
        assert_eq!(
            (u.input, u.output, u.reasoning, u.cached_read),
            (3, 9, 5, 1)
        );
        assert_eq!(usage_from_object(b"[1]"), None);
    }

    #[test]
    fn tool_result_names_are_recovered() {
        let v = request(json!({"messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "alpha", "arguments": "{}"}},
                {"id": "call_b", "type": "function", "function": {"name": "beta", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "{\"ok\":true}"}]},
            {"role": "tool", "tool_call_id": "call_a", "content": "[1,2]"}
        ]}));
        let parts = v["contents"][2]["parts"].as_array().unwrap();
        assert_eq!(
            v["contents"].as_array().unwrap().len(),
            3,
            "consecutive tool messages are one content"
        );
        assert_eq!(parts[0]["functionResponse"]["name"], "beta");
        assert_eq!(
            parts[0]["functionResponse"]["response"],
            json!({"ok": true})
        );
        assert_eq!(parts[1]["functionResponse"]["name"], "alpha");
        assert_eq!(
            parts[1]["functionResponse"]["response"],
            json!({"content": "[1,2]"})
        );
        assert_eq!(
            v["contents"][1]["parts"][1]["functionCall"]["args"],
            json!({})
        );
        let e = request_err(
            json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
            &RequestOptions::new("m"),
        );
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.param(), Some("messages[0].tool_call_id"));
    }

    // --- requests ---

    #[test]
    fn tool_choice_variants() {
        let mode = |choice: Value| {
            request(json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": choice}))
                ["toolConfig"]["functionCallingConfig"]
                .clone()
        };
        assert_eq!(mode(json!("auto")), json!({"mode": "AUTO"}));
        assert_eq!(mode(json!("none")), json!({"mode": "NONE"}));
        assert_eq!(mode(json!("required")), json!({"mode": "ANY"}));
        assert_eq!(
            mode(json!({"type": "function", "function": {"name": "f"}})),
            json!({"mode": "ANY", "allowedFunctionNames": ["f"]})
        );
        let e = request_err(
            json!({"messages": [], "tool_choice": "sometimes"}),
            &RequestOptions::new("m"),
        );
        assert_eq!(e.param(), Some("tool_choice"));
    }

    #[test]
    fn generation_config_variants() {
        let cfg = |extra: Value| {
            let mut body = json!({"messages": [{"role": "user", "content": "x"}]});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            request(body)["generationConfig"].clone()
        };
        assert_eq!(
            cfg(json!({"stop": "END"})),
            json!({"stopSequences": ["END"]})
        );
        assert_eq!(cfg(json!({"max_tokens": 5})), json!({"maxOutputTokens": 5}));
        assert_eq!(
            cfg(json!({"response_format": {"type": "json_object"}})),
            json!({"responseMimeType": "application/json"})
        );
        assert_eq!(
            cfg(json!({"response_format": {"type": "text"}})),
            Value::Null
        );
        assert_eq!(
            cfg(json!({"reasoning_effort": "low"})),
            json!({"thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": true}})
        );
        assert_eq!(
            cfg(json!({"reasoning_effort": "high"})),
            json!({"thinkingConfig": {"thinkingBudget": 24576, "includeThoughts": true}})
        );
        assert_eq!(
            cfg(json!({"reasoning_effort": "minimal"})),
            json!({"thinkingConfig": {"thinkingBudget": 512, "includeThoughts": true}})
        );
        assert_eq!(
            cfg(json!({"reasoning_effort": "none"})),
            json!({"thinkingConfig": {"thinkingBudget": 0}})
        );
        assert_eq!(
            cfg(json!({"n": 3, "seed": -1})),
            json!({"candidateCount": 3, "seed": -1})
        );
        let e = request_err(
            json!({"messages": [], "reasoning_effort": "max"}),
            &RequestOptions::new("m"),
        );
        assert_eq!(e.param(), Some("reasoning_effort"));
    }

    #[test]
    fn bad_requests_name_their_param() {
        let opts = RequestOptions::new("m");
        let e = request_err(json!({"prompt": "x"}), &opts);
        assert_eq!(
            (e.status(), e.param()),
            (StatusCode::BAD_REQUEST, Some("messages"))
        );
        let e = request_err(
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]}),
            &opts,
        );
        assert_eq!(e.param(), Some("messages[0].content[0].image_url.url"));
        let e = request_err(
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}),
            &opts,
        );
        assert_eq!(e.param(), Some("messages[0].content[0].image_url.url"));
        let e = request_err(
            json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}),
            &opts,
        );
        assert_eq!(
            e.param(),
            Some("messages[1].tool_calls[0].function.arguments")
        );
        let e = request_err(
            json!({"messages": [{"role": "wizard", "content": "a"}]}),
            &opts,
        );
        assert_eq!(e.param(), Some("messages[0].role"));
        assert!(request_from_chat(b"not json", &opts).is_err());
        let reject = RequestOptions::new("m").unsupported(Unsupported::Reject);
        for (k, v) in [
            ("logprobs", json!(true)),
            ("audio", json!({})),
            ("parallel_tool_calls", json!(false)),
            ("prediction", json!({})),
        ] {
            let mut body = json!({"messages": [{"role": "user", "content": "x"}]});
            body[k] = v.clone();
            assert_eq!(request_err(body.clone(), &reject).param(), Some(k));
            assert!(
                request_from_chat(body.to_string().as_bytes(), &opts).is_ok(),
                "dropped by default: {k}"
            );
        }
    }

    #[test]
    fn paths() {
        assert_eq!(
            path("gemini-2.5-pro", false),
            "/v1beta/models/gemini-2.5-pro:generateContent"
        );
        assert_eq!(
            path("models/gemini-2.5-pro", true),
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        );
        assert_eq!(
            path("a/b?c#d:e", false),
            "/v1beta/models/a%2Fb%3Fc%23d%3Ae:generateContent"
        );
    }

    #[test]
    fn errors_keep_their_status() {
        let e = error_to_chat(StatusCode::BAD_GATEWAY, b"<html>oops</html>");
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e.kind(), "api_error");
        let long = vec![b'x'; 10_000];
        let e = error_to_chat(StatusCode::FORBIDDEN, &long);
        assert_eq!(e.kind(), "permission_error");
        assert!(e.message().len() < 300);
        assert_eq!(
            error_to_chat(StatusCode::UNAUTHORIZED, b"{}").kind(),
            "authentication_error"
        );
        assert_eq!(
            error_to_chat(StatusCode::NOT_FOUND, b"").kind(),
            "not_found_error"
        );
        let e = response_to_chat(b"{not json", "m", 0).unwrap_err();
        assert_eq!(
            (e.status(), e.kind(), e.code()),
            (
                StatusCode::BAD_GATEWAY,
                "api_error",
                Some("bad_upstream_response")
            )
        );
    }

    // --- streams: ends ---

    #[test]
    fn a_stream_without_its_finish_is_truncated() {
        let sse = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}],\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":1}}\n\n";
        let (events, usage) = stream(sse, true);
        assert!(usage.truncated);
        assert_eq!(usage.output, 1);
        assert_eq!(events.len(), 3);
        assert_eq!(events[1]["error"]["type"], "api_error");
        assert_eq!(events[2], "[DONE]");
        // fail() likewise, and never a second [DONE].
        let mut s = ChatStream::new(StreamOptions::new("m"));
        let mut out = Vec::new();
        s.fail("connection reset", &mut out);
        s.finish(&mut out);
        s.fail("again", &mut out);
        let ev = events_of(&out);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0]["error"]["message"], "connection reset");
        assert!(s.usage().truncated);
        // An unreadable event.
        let (events, _) = stream("data: {nope\n\n", false);
        assert_eq!(events.len(), 2);
        assert!(events[0].get("error").is_some());
    }

    fn events_of(out: &[u8]) -> Vec<Value> {
        events(out)
    }

    #[test]
    fn tool_calls_per_stream_are_capped() {
        let mut s = ChatStream::new(StreamOptions::new("m"));
        let mut out = Vec::new();
        let ev =
            "{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\"}}]}}]}";
        for _ in 0..MAX_TOOL_CALLS + 5 {
            s.event(
                &sse::Event {
                    event: "",
                    data: ev,
                },
                &mut out,
            );
        }
        s.finish(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.matches("[DONE]").count(), 1);
        assert_eq!(text.matches("\"tool_calls\"").count(), MAX_TOOL_CALLS);
        assert!(text.contains("more tool calls"));
        let big =
            "{\"candidates\":[{\"index\":4000000000,\"content\":{\"parts\":[{\"text\":\"x\"}]}}]}";
        let mut s = ChatStream::new(StreamOptions::new("m"));
        let mut out = Vec::new();
        s.event(
            &sse::Event {
                event: "",
                data: big,
            },
            &mut out,
        );
        assert!(String::from_utf8(out).unwrap().contains("more candidates"));
    }

    // --- properties ---

    fn all_streams() -> [&'static str; 4] {
        [
            fixture!("stream_text.sse"),
            fixture!("stream_call_then_stop.sse"),
            fixture!("stream_parallel_same_tool.sse"),
            fixture!("stream_error.sse"),
        ]
    }

    /// Streams compared byte for byte need the same random ids: the
    /// fixtures' random parts are replaced.
    fn stable(out: Vec<u8>) -> Vec<Value> {
        events(&out)
    }

    #[test]
    fn every_single_byte_cut_and_crlf_gives_the_same_stream() {
        for sse in all_streams() {
            let whole = stable(stream_bytes(&[sse.as_bytes()], true).0);
            let bytes: Vec<&[u8]> = sse.as_bytes().chunks(1).collect();
            assert_eq!(stable(stream_bytes(&bytes, true).0), whole);
            let crlf = sse.replace("\r\n", "\n").replace('\n', "\r\n");
            let bytes: Vec<&[u8]> = crlf.as_bytes().chunks(1).collect();
            assert_eq!(stable(stream_bytes(&bytes, true).0), whole);
        }
    }

    /// Reassembles a translated stream into (content, reasoning,
    /// [(name, arguments)], finish_reason).
    fn reassemble(events: &[Value]) -> (String, String, Vec<(String, String)>, String) {
        let (mut content, mut reasoning, mut calls, mut finish) = (
            String::new(),
            String::new(),
            Vec::<(String, String)>::new(),
            String::new(),
        );
        for e in events {
            let Some(choice) = e["choices"].get(0) else {
                continue;
            };
            let d = &choice["delta"];
            content.push_str(d["content"].as_str().unwrap_or(""));
            reasoning.push_str(d["reasoning_content"].as_str().unwrap_or(""));
            for c in d["tool_calls"].as_array().into_iter().flatten() {
                let i = c["index"].as_u64().unwrap() as usize;
                if calls.len() <= i {
                    calls.resize(i + 1, Default::default());
                }
                calls[i]
                    .0
                    .push_str(c["function"]["name"].as_str().unwrap_or(""));
                calls[i]
                    .1
                    .push_str(c["function"]["arguments"].as_str().unwrap_or(""));
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = f.to_owned();
            }
        }
        (content, reasoning, calls, finish)
    }

    fn gemini_parts() -> impl proptest::strategy::Strategy<Value = Vec<(u8, String)>> {
        proptest::collection::vec((0u8..3, "[a-zA-Z0-9 \\n\"\\\\é]{0,12}"), 0..8)
    }

    fn stream_and_json(
        parts: &[(u8, String)],
        finish: &str,
        prompt: u64,
        per_chunk: u64,
    ) -> (String, String) {
        // One Gemini event per part, cumulative usage, finish on the last.
        let mut sse = String::new();
        let mut all = Vec::new();
        let n = parts.len().max(1);
        for i in 0..n {
            let part = match parts.get(i) {
                Some((0, t)) => json!({"text": t}),
                Some((1, t)) => json!({"text": t, "thought": true}),
                Some((_, t)) => json!({"functionCall": {"name": "f", "args": {"q": t}}}),
                None => json!({"text": ""}),
            };
            all.push(part.clone());
            let mut ev = json!({"candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0}],
                "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": per_chunk * (i as u64 + 1)}, "responseId": "r"});
            if i + 1 == n {
                ev["candidates"][0]["finishReason"] = json!(finish);
            }
            sse.push_str(&format!("data: {ev}\n\n"));
        }
        let whole = json!({"candidates": [{"content": {"role": "model", "parts": all}, "finishReason": finish, "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": per_chunk * n as u64}, "responseId": "r"});
        (sse, whole.to_string())
    }

    proptest::proptest! {
        #[test]
        fn chunk_boundaries_do_not_matter(which in 0usize..4, cuts in proptest::collection::vec(0usize..4096, 0..12)) {
            let sse = all_streams()[which].as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (sse.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut last = 0;
            for c in cuts {
                pieces.push(&sse[last..c]);
                last = c;
            }
            pieces.push(&sse[last..]);
            proptest::prop_assert_eq!(stable(stream_bytes(&pieces, true).0), stable(stream_bytes(&[sse], true).0));
        }

        #[test]
        fn a_stream_reassembled_is_the_json_answer(parts in gemini_parts(), finish in proptest::sample::select(vec!["STOP", "MAX_TOKENS", "SAFETY", "OTHER"]), prompt in 0u64..1000, per in 0u64..50) {
            let (sse, whole) = stream_and_json(&parts, finish, prompt, per);
            let (events, usage) = stream(&sse, true);
            let (v, json_usage) = chat(&whole);
            let (content, reasoning, calls, fin) = reassemble(&events);
            let msg = &v["choices"][0]["message"];
            proptest::prop_assert_eq!(content, msg["content"].as_str().unwrap_or("").to_owned());
            proptest::prop_assert_eq!(reasoning, msg["reasoning_content"].as_str().unwrap_or("").to_owned());
            let json_calls: Vec<(String, String)> = msg["tool_calls"].as_array().into_iter().flatten()
                .map(|c| (c["function"]["name"].as_str().unwrap().to_owned(), c["function"]["arguments"].as_str().unwrap().to_owned()))
                .collect();
            proptest::prop_assert_eq!(calls, json_calls);
            proptest::prop_assert_eq!(fin, v["choices"][0]["finish_reason"].as_str().unwrap().to_owned());
            proptest::prop_assert_eq!(usage, json_usage);
            let usage_chunk = &events[events.len() - 2];
            proptest::prop_assert_eq!(&usage_chunk["usage"], &v["usage"]);
        }
    }
}
