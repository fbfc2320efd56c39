//! Requests: an OpenAI Chat Completions request as an Anthropic Messages
//! request ([`request_from_chat`]).

use std::borrow::Cow;

use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{JSON_TOOL, OneOrMany, Str};
use crate::model::openai::OpenAiError;
use crate::model::providers::{RequestOptions, Translated, Unsupported};

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
/// Messages request body for `opts.model` (see the [module](super) docs
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
