//! OpenAI Chat Completions requests -> Gemini `GenerateContentRequest`s.

use std::borrow::Cow;
use std::collections::HashMap;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{gemini_id, signature_from_id, split_call_id};
use crate::model::OpenAiError;
use crate::model::providers::{RequestOptions, Translated, Unsupported};

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
