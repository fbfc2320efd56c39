//! OpenAI `chat.completion.chunk` streams -> Anthropic Messages events
//! ([`MessagesStream`]).

use std::borrow::Cow;

use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::response::{
    AnswerFunction, AnthropicUsage, ChatUsage, ErrorEvent, kind_for_openai_type, message_id,
    stop_reason,
};
use super::{Empty, ThinkingBlock, opt_str};
use crate::model::providers::{StreamMapper, Usage, sse};

/// The most tool calls one stream may open; past it the stream ends with
/// an `error` event.
pub const MAX_TOOL_CALLS: usize = 1024;

/// The most bytes of tool-call arguments a stream holds back (for calls
/// waiting for the open one to complete); past it the stream ends with an
/// `error` event.
pub const MAX_HELD_ARGUMENTS: usize = 1 << 20;

// === impl MessagesStream ===

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    choices: Option<FirstChoice<'a>>,
    usage: Option<ChatUsage>,
    #[serde(borrow)]
    error: Option<ChunkError<'a>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ChunkError<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Object {
        #[serde(borrow, default, deserialize_with = "opt_str")]
        message: Option<Cow<'a, str>>,
        #[serde(rename = "type", borrow, default, deserialize_with = "opt_str")]
        kind: Option<Cow<'a, str>>,
    },
}

/// Of a chunk's `choices`, the first with `index` 0 (or none): every
/// element is read (a malformed one fails the chunk, as any bad field
/// does), none is kept in a `Vec`.
struct FirstChoice<'a>(Option<ChunkChoice<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstChoice<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FirstChoice<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut first = None;
                while let Some(c) = seq.next_element::<ChunkChoice<'de>>()? {
                    if first.is_none() && c.index.unwrap_or(0) == 0 {
                        first = Some(c);
                    }
                }
                Ok(FirstChoice(first))
            }
        }
        d.deserialize_seq(V)
    }
}

#[derive(Deserialize)]
struct ChunkChoice<'a> {
    index: Option<u32>,
    #[serde(borrow)]
    delta: Option<Delta<'a>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Delta<'a> {
    #[serde(borrow, default, deserialize_with = "opt_str")]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    reasoning: Option<Cow<'a, str>>,
    #[serde(borrow)]
    thinking_blocks: Option<Vec<ThinkingBlock<'a>>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<DeltaToolCall<'a>>>,
}

#[derive(Deserialize)]
struct DeltaToolCall<'a> {
    index: Option<u32>,
    #[serde(borrow, default, deserialize_with = "opt_str")]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<AnswerFunction<'a>>,
}

/// Whether a JSON text, fed in pieces, has closed its outermost object.
#[derive(Debug, Default, Clone, Copy)]
struct JsonEnd {
    depth: u32,
    in_string: bool,
    escaped: bool,
    complete: bool,
}

impl JsonEnd {
    fn feed(&mut self, s: &str) {
        for b in s.bytes() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        self.complete = true;
                    }
                }
                _ => {}
            }
        }
    }
}

#[derive(Debug)]
enum CallState {
    /// Not opened yet: its arguments are held in `held`.
    Held,
    /// Its block is open.
    Open,
    /// Its block was closed; later arguments are dropped.
    Closed,
}

#[derive(Debug)]
struct Call {
    index: u32,
    id: String,
    name: String,
    held: String,
    json: JsonEnd,
    state: CallState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Thinking,
    Text,
    /// The position of the call in `calls`.
    Tool(usize),
}

/// Translates an OpenAI `chat.completion.chunk` stream into Anthropic
/// Messages events (see the module docs), with bounded state.
#[derive(Debug)]
pub struct MessagesStream {
    model: String,
    started: bool,
    done: bool,
    /// The open block: its kind and index.
    open: Option<(Open, u32)>,
    next_block: u32,
    calls: Vec<Call>,
    held_bytes: usize,
    finish: Option<&'static str>,
    usage: Option<ChatUsage>,
    truncated: bool,
    scratch: Vec<u8>,
}

// The events written, as serialized.

#[derive(Serialize)]
struct MessageStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: StartMessage<'a>,
}

#[derive(Serialize)]
struct StartMessage<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: [(); 0],
    stop_reason: Option<()>,
    stop_sequence: Option<()>,
    usage: ZeroUsage,
}

#[derive(Serialize)]
struct ZeroUsage {
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Serialize)]
struct BlockStart<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
    content_block: StartBlock<'a>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock<'a> {
    Thinking {
        thinking: &'static str,
        signature: &'static str,
    },
    RedactedThinking {
        data: &'a str,
    },
    Text {
        text: &'static str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Empty,
    },
}

/// A `content_block_delta`'s `delta`.
enum DeltaOut<'a> {
    /// `{"type":"thinking_delta","thinking"}`.
    Thinking { thinking: &'a str },
    /// `{"type":"signature_delta","signature"}`.
    Signature { signature: &'a str },
    /// `{"type":"text_delta","text"}`.
    Text { text: &'a str },
    /// `{"type":"input_json_delta","partial_json"}`.
    InputJson { partial_json: &'a str },
}

#[derive(Serialize)]
struct BlockStop {
    #[serde(rename = "type")]
    kind: &'static str,
    index: u32,
}

#[derive(Serialize)]
struct MessageDelta {
    #[serde(rename = "type")]
    kind: &'static str,
    delta: StopDelta,
    usage: DeltaUsage,
}

#[derive(Serialize)]
struct StopDelta {
    stop_reason: &'static str,
    stop_sequence: Option<()>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum DeltaUsage {
    Counted(AnthropicUsage),
    Unknown { output_tokens: u64 },
}

fn emit<T: Serialize>(scratch: &mut Vec<u8>, out: &mut Vec<u8>, name: &str, value: &T) {
    scratch.clear();
    // Serializing these structs into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *scratch, value);
    sse::write_event(out, name, scratch);
}

/// Appends a `content_block_delta` event (one per upstream delta: the
/// hot path), written by hand into one reservation:
/// `{"type":"content_block_delta","index":N,"delta":{"type":KIND,KEY:"…"}}`,
/// the string escaped by serde_json as a serialized struct would be.
fn delta_event(out: &mut Vec<u8>, index: u32, delta: DeltaOut<'_>) {
    const HEAD: &[u8] =
        b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":";
    let (kind, value): (&[u8], &str) = match delta {
        DeltaOut::Thinking { thinking } => (b"thinking_delta\",\"thinking\":", thinking),
        DeltaOut::Signature { signature } => (b"signature_delta\",\"signature\":", signature),
        DeltaOut::Text { text } => (b"text_delta\",\"text\":", text),
        DeltaOut::InputJson { partial_json } => {
            (b"input_json_delta\",\"partial_json\":", partial_json)
        }
    };
    // The index (at most 10 digits), `,"delta":{"type":"`, the quotes, a
    // little room for escapes, `}}\n\n`.
    out.reserve(HEAD.len() + 10 + 18 + kind.len() + value.len() + value.len() / 8 + 8);
    out.extend_from_slice(HEAD);
    // Writing numbers and strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &index);
    out.extend_from_slice(b",\"delta\":{\"type\":\"");
    out.extend_from_slice(kind);
    let _ = serde_json::to_writer(&mut *out, value);
    out.extend_from_slice(b"}}\n\n");
}

impl MessagesStream {
    /// A stream answering as `model` (the name the client asked for).
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            started: false,
            done: false,
            open: None,
            next_block: 0,
            calls: Vec::new(),
            held_bytes: 0,
            finish: None,
            usage: None,
            truncated: false,
            scratch: Vec::with_capacity(256),
        }
    }

    fn start(&mut self, id: Option<&str>, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let id = message_id(id);
        emit(
            &mut self.scratch,
            out,
            "message_start",
            &MessageStart {
                kind: "message_start",
                message: StartMessage {
                    id: &id,
                    kind: "message",
                    role: "assistant",
                    model: &self.model,
                    content: [],
                    stop_reason: None,
                    stop_sequence: None,
                    usage: ZeroUsage {
                        input_tokens: 0,
                        output_tokens: 0,
                    },
                },
            },
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((kind, index)) = self.open.take() {
            if let Open::Tool(c) = kind
                && let Some(call) = self.calls.get_mut(c)
            {
                call.state = CallState::Closed;
            }
            emit(
                &mut self.scratch,
                out,
                "content_block_stop",
                &BlockStop {
                    kind: "content_block_stop",
                    index,
                },
            );
        }
    }

    /// Opens a block of `kind` (closing another), returning its index.
    fn open(&mut self, kind: Open, block: StartBlock<'_>, out: &mut Vec<u8>) -> u32 {
        self.close(out);
        let index = self.next_block;
        self.next_block = self.next_block.saturating_add(1);
        self.open = Some((kind, index));
        emit(
            &mut self.scratch,
            out,
            "content_block_start",
            &BlockStart {
                kind: "content_block_start",
                index,
                content_block: block,
            },
        );
        index
    }

    /// The open block's index if it is of `kind`, else a new one's.
    fn ensure(&mut self, kind: Open, out: &mut Vec<u8>) -> u32 {
        match self.open {
            Some((k, index)) if k == kind => index,
            _ => {
                let block = match kind {
                    Open::Thinking => StartBlock::Thinking {
                        thinking: "",
                        signature: "",
                    },
                    _ => StartBlock::Text { text: "" },
                };
                self.open(kind, block, out)
            }
        }
    }

    /// Opens the held call at `c` with its held arguments.
    fn open_call(&mut self, c: usize, out: &mut Vec<u8>) {
        let Some(call) = self.calls.get_mut(c) else {
            return;
        };
        call.state = CallState::Open;
        let held = std::mem::take(&mut call.held);
        self.held_bytes = self.held_bytes.saturating_sub(held.len());
        // Taken for the event, put back after (ids name later chunks).
        let (id, name) = (std::mem::take(&mut call.id), std::mem::take(&mut call.name));
        let index = self.open(
            Open::Tool(c),
            StartBlock::ToolUse {
                id: &id,
                name: &name,
                input: Empty {},
            },
            out,
        );
        if !held.is_empty() {
            delta_event(
                out,
                index,
                DeltaOut::InputJson {
                    partial_json: &held,
                },
            );
        }
        if let Some(call) = self.calls.get_mut(c) {
            call.id = id;
            call.name = name;
        }
    }

    /// While the open block is not a tool call still receiving its
    /// arguments, opens held calls in the order they began.
    fn open_held(&mut self, out: &mut Vec<u8>) {
        loop {
            if let Some((Open::Tool(c), _)) = self.open
                && self.calls.get(c).is_some_and(|call| !call.json.complete)
            {
                return;
            }
            let Some(next) = self
                .calls
                .iter()
                .position(|c| matches!(c.state, CallState::Held) && !c.name.is_empty())
            else {
                return;
            };
            self.open_call(next, out);
        }
    }

    fn tool_delta(&mut self, tc: DeltaToolCall<'_>, out: &mut Vec<u8>) -> Result<(), &'static str> {
        let (name, args) = match tc.function {
            Some(f) => (f.name, f.arguments),
            None => (None, None),
        };
        // Servers that leave out `index` send one call at a time: an `id`
        // not seen before begins the next call, anything else continues
        // the last one.
        let index = match tc.index {
            Some(i) => i,
            None => match tc.id.as_deref().filter(|id| !id.is_empty()) {
                Some(id) => match self.calls.iter().find(|c| c.id == id) {
                    Some(c) => c.index,
                    None => self
                        .calls
                        .iter()
                        .map(|c| c.index.saturating_add(1))
                        .max()
                        .unwrap_or(0),
                },
                None => self.calls.last().map_or(0, |c| c.index),
            },
        };
        let c = match self.calls.iter().rposition(|c| c.index == index) {
            Some(c) => c,
            None => {
                if self.calls.len() >= MAX_TOOL_CALLS {
                    return Err(
                        "The upstream's answer has more tool calls than the gateway passes on.",
                    );
                }
                self.calls.push(Call {
                    index,
                    id: String::new(),
                    name: String::new(),
                    held: String::new(),
                    json: JsonEnd::default(),
                    state: CallState::Held,
                });
                self.calls.len() - 1
            }
        };
        let Some(call) = self.calls.get_mut(c) else {
            return Ok(());
        };
        match call.state {
            CallState::Closed => return Ok(()),
            CallState::Open => {
                if let Some(args) = args.as_deref().filter(|a| !a.is_empty()) {
                    call.json.feed(args);
                    let index = self.open.map_or(0, |(_, i)| i);
                    delta_event(out, index, DeltaOut::InputJson { partial_json: args });
                }
            }
            CallState::Held => {
                if call.id.is_empty()
                    && let Some(id) = tc.id
                {
                    call.id = id.into_owned();
                }
                if let Some(name) = name {
                    call.name.push_str(&name);
                }
                if let Some(args) = args.as_deref().filter(|a| !a.is_empty()) {
                    self.held_bytes = self.held_bytes.saturating_add(args.len());
                    if self.held_bytes > MAX_HELD_ARGUMENTS {
                        return Err(
                            "The upstream's tool call arguments exceed what the gateway holds back.",
                        );
                    }
                    call.json.feed(args);
                    call.held.push_str(args);
                }
                // A text or thinking block gives way to the call.
                if matches!(self.open, Some((Open::Text | Open::Thinking, _)))
                    && !call.name.is_empty()
                {
                    self.close(out);
                }
            }
        }
        self.open_held(out);
        Ok(())
    }

    fn chunk(&mut self, chunk: Chunk<'_>, out: &mut Vec<u8>) -> Result<(), &'static str> {
        self.start(chunk.id.as_deref(), out);
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        // Choice 0 only (a client asking for `n` > 1 gets the first).
        let Some(choice) = chunk.choices.and_then(|c| c.0) else {
            return Ok(());
        };
        if let Some(delta) = choice.delta {
            let reasoning = delta.reasoning_content.or(delta.reasoning);
            if let Some(r) = reasoning.as_deref().filter(|r| !r.is_empty()) {
                let index = self.ensure(Open::Thinking, out);
                delta_event(out, index, DeltaOut::Thinking { thinking: r });
            }
            for b in delta.thinking_blocks.into_iter().flatten() {
                // The text of a thinking block repeats `reasoning_content`
                // when both come (LiteLLM's shape): taken only alone.
                if reasoning.is_none()
                    && let ThinkingBlock::Thinking { thinking, .. } = &b
                    && !thinking.is_empty()
                {
                    let index = self.ensure(Open::Thinking, out);
                    delta_event(out, index, DeltaOut::Thinking { thinking });
                }
                match b {
                    ThinkingBlock::Thinking { signature, .. } if !signature.is_empty() => {
                        let index = self.ensure(Open::Thinking, out);
                        delta_event(
                            out,
                            index,
                            DeltaOut::Signature {
                                signature: &signature,
                            },
                        );
                    }
                    ThinkingBlock::Thinking { .. } => {}
                    ThinkingBlock::RedactedThinking { data } => {
                        // One whole block, closed at once.
                        self.open(
                            Open::Thinking,
                            StartBlock::RedactedThinking { data: &data },
                            out,
                        );
                        self.close(out);
                    }
                }
            }
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                let index = self.ensure(Open::Text, out);
                delta_event(out, index, DeltaOut::Text { text: &text });
            }
            for tc in delta.tool_calls.into_iter().flatten() {
                self.tool_delta(tc, out)?;
            }
        }
        if let Some(finish) = choice.finish_reason {
            self.end_blocks(out);
            let saw_tool = !self.calls.is_empty();
            self.finish = Some(stop_reason(&finish, saw_tool));
        }
        Ok(())
    }

    /// Closes the open block and opens (and closes) every held call.
    fn end_blocks(&mut self, out: &mut Vec<u8>) {
        self.close(out);
        while let Some(next) = self
            .calls
            .iter()
            .position(|c| matches!(c.state, CallState::Held))
        {
            self.open_call(next, out);
            self.close(out);
        }
    }

    fn error(&mut self, kind: &str, message: &str, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.done = true;
        self.truncated = true;
        emit(
            &mut self.scratch,
            out,
            "error",
            &ErrorEvent::new(kind, message),
        );
    }

    fn stop(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        self.start(None, out);
        self.end_blocks(out);
        let saw_tool = !self.calls.is_empty();
        let stop = self
            .finish
            .unwrap_or(if saw_tool { "tool_use" } else { "end_turn" });
        let usage = match &self.usage {
            Some(u) => DeltaUsage::Counted(AnthropicUsage::new(&u.normalized())),
            None => DeltaUsage::Unknown { output_tokens: 0 },
        };
        emit(
            &mut self.scratch,
            out,
            "message_delta",
            &MessageDelta {
                kind: "message_delta",
                delta: StopDelta {
                    stop_reason: stop,
                    stop_sequence: None,
                },
                usage,
            },
        );
        emit(
            &mut self.scratch,
            out,
            "message_stop",
            &BlockStopless {
                kind: "message_stop",
            },
        );
        self.done = true;
    }
}

#[derive(Serialize)]
struct BlockStopless {
    #[serde(rename = "type")]
    kind: &'static str,
}

impl StreamMapper for MessagesStream {
    fn event(&mut self, event: &sse::Event<'_>, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let data = event.data.trim();
        if data.is_empty() {
            return;
        }
        if data == "[DONE]" {
            self.stop(out);
            return;
        }
        let chunk: Chunk<'_> = match serde_json::from_str(data) {
            Ok(c) => c,
            Err(_) => {
                self.error(
                    "api_error",
                    "The upstream sent an event that could not be read.",
                    out,
                );
                return;
            }
        };
        match &chunk.error {
            Some(ChunkError::Text(m)) => {
                let m = m.clone();
                self.error("api_error", &m, out);
                return;
            }
            Some(ChunkError::Object { message, kind }) => {
                let kind = kind_for_openai_type(kind.as_deref().unwrap_or(""));
                let message = message
                    .as_deref()
                    .unwrap_or("The upstream failed.")
                    .to_owned();
                self.error(kind, &message, out);
                return;
            }
            None => {}
        }
        if let Err(message) = self.chunk(chunk, out) {
            self.error("api_error", message, out);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if self.finish.is_some() {
            self.stop(out);
        } else {
            self.error(
                "api_error",
                "The upstream's stream ended before its answer was complete.",
                out,
            );
        }
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        self.error("api_error", message, out);
    }

    fn usage(&self) -> Usage {
        let mut u = self.usage.map(|u| u.normalized()).unwrap_or_default();
        u.truncated = self.truncated;
        u
    }
}
