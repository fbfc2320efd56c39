//! Streams: Anthropic server-sent events as OpenAI chunks ([`ChatStream`]),
//! and the usage of a stream passed through ([`StreamUsage`]).

use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::response::{
    BlockIn, ErrorIn, MessageIn, ThinkingOut, UsageIn, UsageOut, error_kind, finish_reason,
};
use super::{JSON_TOOL, MAX_BLOCKS, MAX_THINKING_BYTES, Str, clip};
use crate::model::providers::{StreamMapper, StreamOptions, Usage, sse};

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
/// [module](super) docs for the mapping).
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
