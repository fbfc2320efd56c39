//! Gemini server-sent events -> OpenAI `chat.completion.chunk`s.

use std::borrow::Cow;

use http::StatusCode;
use serde::Serialize;

use super::response::{
    FunctionOut, GenerateResponse, ToolCallOut, UsageOut, call_arguments, finish_reason,
    gemini_error,
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
