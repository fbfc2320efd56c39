//! Gemini server-sent events -> OpenAI `chat.completion.chunk`s.

use std::borrow::Cow;
use std::marker::PhantomData;

use http::StatusCode;
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::response::{
    FunctionCallIn, FunctionOut, GeminiError, PromptFeedback, ToolCallOut, UsageMetadata, UsageOut,
    call_arguments, finish_reason, gemini_error,
};
use super::{MAX_CANDIDATES, MAX_TOOL_CALLS, new_call_id, random_hex};
use crate::model::providers::{StreamMapper, StreamOptions, Usage, sse};

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
    /// `data: {"id":…,"object":…,"created":…,"model":…,"choices":`, set
    /// by the first event (its `responseId`, else a synthesized id).
    head: Vec<u8>,
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

/// A JSON array read without allocating when it holds at most one
/// element (Gemini's `candidates` and `parts` nearly always do).
struct Few<T> {
    first: Option<T>,
    rest: Vec<T>,
}

impl<T> Default for Few<T> {
    fn default() -> Self {
        Self {
            first: None,
            rest: Vec::new(),
        }
    }
}

impl<T> Few<T> {
    fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

impl<T> IntoIterator for Few<T> {
    type Item = T;
    type IntoIter = std::iter::Chain<std::option::IntoIter<T>, std::vec::IntoIter<T>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Few<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Visit<T> {
            type Value = Few<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Few<T>, A::Error> {
                let mut few = Few {
                    first: seq.next_element()?,
                    rest: Vec::new(),
                };
                if few.first.is_some() {
                    while let Some(x) = seq.next_element()? {
                        few.rest.push(x);
                    }
                }
                Ok(few)
            }
        }
        d.deserialize_seq(Visit(PhantomData))
    }
}

/// One streamed `GenerateContentResponse`: what the stream reads of it
/// (the same fields and types as [`GenerateResponse`], arrays read
/// without allocating).
///
/// [`GenerateResponse`]: super::response::GenerateResponse
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventIn<'a> {
    #[serde(borrow, default)]
    candidates: Few<CandidateIn<'a>>,
    #[serde(borrow)]
    prompt_feedback: Option<Box<PromptFeedback<'a>>>,
    usage_metadata: Option<UsageMetadata>,
    #[serde(borrow)]
    response_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    error: Option<Box<GeminiError<'a>>>,
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
    parts: Few<PartIn<'a>>,
}

/// A part as [`response::PartIn`](super::response::PartIn), its rare
/// function call boxed to keep the common text part small.
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
    function_call: Option<Box<FunctionCallIn<'a>>>,
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

/// A chunk's delta, written by hand in the order (and with the
/// omissions) a serde struct of these fields would have.
#[derive(Default)]
struct Delta<'a> {
    role: bool,
    content: Option<Cow<'a, str>>,
    reasoning_content: Option<Cow<'a, str>>,
    tool_calls: Vec<ToolCallOut>,
}

fn append<'a>(acc: &mut Option<Cow<'a, str>>, text: Cow<'a, str>) {
    match acc {
        None => *acc = Some(text),
        Some(a) => a.to_mut().push_str(&text),
    }
}

/// Appends `s` as a JSON string.
fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends `"name":` and `s` as a JSON string, after a `,` unless first.
fn write_field(out: &mut Vec<u8>, first: &mut bool, name: &[u8], s: &str) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    out.extend_from_slice(name);
    write_str(out, s);
}

impl ChatStream {
    /// A stream answering as `opts.model`, ending with a usage chunk when
    /// `opts.include_usage`.
    pub fn new(opts: StreamOptions) -> Self {
        Self {
            opts,
            head: Vec::new(),
            choices: Vec::new(),
            calls: 0,
            usage: Usage::default(),
            finished: false,
            done: false,
        }
    }

    /// Sets the chunks' id (and so their head) once.
    fn ensure_id(&mut self, response_id: Option<&str>) {
        if self.head.is_empty() {
            let synthesized;
            let id = match response_id {
                Some(id) if !id.is_empty() => id,
                _ => {
                    synthesized = format!("chatcmpl-{}", random_hex());
                    &synthesized
                }
            };
            let mut head = Vec::with_capacity(64 + id.len() + self.opts.model.len());
            head.extend_from_slice(b"data: {\"id\":");
            write_str(&mut head, id);
            head.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
            let _ = serde_json::to_writer(&mut head, &self.opts.created);
            head.extend_from_slice(b",\"model\":");
            write_str(&mut head, &self.opts.model);
            head.extend_from_slice(b",\"choices\":");
            self.head = head;
        }
    }

    /// Appends a chunk with one choice.
    fn write_choice(
        &self,
        index: u32,
        delta: &Delta<'_>,
        finish_reason: Option<&'static str>,
        out: &mut Vec<u8>,
    ) {
        let text = delta.content.as_deref().map_or(0, str::len)
            + delta.reasoning_content.as_deref().map_or(0, str::len);
        out.reserve(self.head.len() + text + 128);
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"[{\"index\":");
        let _ = serde_json::to_writer(&mut *out, &index);
        out.extend_from_slice(b",\"delta\":{");
        let mut first = true;
        if delta.role {
            first = false;
            out.extend_from_slice(b"\"role\":\"assistant\"");
        }
        if let Some(c) = &delta.content {
            write_field(out, &mut first, b"\"content\":", c);
        }
        if let Some(r) = &delta.reasoning_content {
            write_field(out, &mut first, b"\"reasoning_content\":", r);
        }
        if !delta.tool_calls.is_empty() {
            if !first {
                out.push(b',');
            }
            out.extend_from_slice(b"\"tool_calls\":");
            let _ = serde_json::to_writer(&mut *out, &delta.tool_calls);
        }
        out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":");
        match finish_reason {
            None => out.extend_from_slice(b"null"),
            Some(reason) => {
                out.push(b'"');
                out.extend_from_slice(reason.as_bytes());
                out.push(b'"');
            }
        }
        out.extend_from_slice(b"}]}\n\n");
    }

    /// Appends the usage chunk.
    fn write_usage(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(b"[],\"usage\":");
        let _ = serde_json::to_writer(&mut *out, &UsageOut::from(self.usage));
        out.extend_from_slice(b"}\n\n");
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

    fn response(&mut self, resp: EventIn<'_>, out: &mut Vec<u8>) {
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
                    role: true,
                    content: Some(Cow::Borrowed("")),
                    ..Delta::default()
                };
                self.write_choice(0, &delta, Some("content_filter"), out);
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
            let mut state = self.choices.get(index).copied().unwrap_or_default();
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
                    delta.role = true;
                    state.role_sent = true;
                }
                self.write_choice(index32, &delta, None, out);
            }
            if let Some(reason) = cand.finish_reason.as_deref() {
                let mut delta = Delta::default();
                if !state.role_sent {
                    delta.role = true;
                    delta.content = Some(Cow::Borrowed(""));
                    state.role_sent = true;
                }
                let finish = finish_reason(reason, state.next_call > 0);
                self.write_choice(index32, &delta, Some(finish), out);
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
        match serde_json::from_str::<EventIn<'_>>(data) {
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
            self.write_usage(out);
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
