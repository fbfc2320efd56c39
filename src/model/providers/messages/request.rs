//! Anthropic Messages requests -> OpenAI Chat requests ([`request_to_chat`]).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{MessagesError, Str, ThinkingBlock, clip, opt_str};
use crate::model::providers::{RequestOptions, Translated, Unsupported};

// === Anthropic requests, as read ===

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
