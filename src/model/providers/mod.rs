//! The providers' wire protocols, and translation between them.
//!
//! Clients speak OpenAI Chat Completions (or Anthropic Messages, through
//! [`messages`]); upstreams speak one of the [`Protocol`]s. A request
//! whose client protocol is the upstream's passes byte for byte (only
//! `model` spliced); any other is parsed, mapped and re-serialized here,
//! and its answer mapped back: JSON whole, server-sent events one event at
//! a time through a [`StreamMapper`], never buffered.
//!
//! One file per wire protocol, none importing another: [`openai`] (Chat
//! Completions and Responses usage, the `include_usage` injection),
//! [`anthropic`] (OpenAI Chat to and from Anthropic Messages upstreams),
//! [`gemini`] (OpenAI Chat to and from Gemini `generateContent`),
//! [`messages`] (Anthropic Messages clients over an OpenAI Chat pivot),
//! and [`sse`] (the event-stream reader and writer they share). Every
//! format's token counts become one [`Usage`].
//!
//! ```
//! use switchyard::model::providers::{Protocol, Usage};
//!
//! let p: Protocol = serde_json::from_str("\"openai_compatible\"").unwrap();
//! assert_eq!(p, Protocol::OpenAiCompatible);
//! let mut u = Usage::default();
//! (u.input, u.cached_read, u.output, u.reasoning) = (120, 100, 30, 10);
//! assert_eq!(u.total(), 150);
//! ```

use serde::{Deserialize, Serialize};

pub mod anthropic;
pub mod gemini;
pub mod messages;
pub mod openai;
pub mod sse;

/// The wire protocol an upstream speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Protocol {
    /// OpenAI: `/v1/chat/completions` (and `/v1/responses`, passed
    /// through with its usage read). `Authorization: Bearer`.
    #[default]
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic Messages: `/v1/messages`, `x-api-key` and
    /// `anthropic-version`.
    #[serde(rename = "anthropic")]
    Anthropic,
    /// Google Gemini: `/v1beta/models/{model}:generateContent` and
    /// `:streamGenerateContent?alt=sse`, `x-goog-api-key`.
    #[serde(rename = "gemini")]
    Gemini,
    /// A server speaking OpenAI's Chat Completions (Mistral, vLLM, Ollama,
    /// Groq, Together, Azure OpenAI with its deployment path and
    /// `api-version`). `stream_options` is not injected unless asked for.
    #[serde(rename = "openai_compatible")]
    OpenAiCompatible,
}

impl Protocol {
    /// Whether it speaks OpenAI's Chat Completions.
    pub fn is_openai(self) -> bool {
        matches!(self, Self::OpenAi | Self::OpenAiCompatible)
    }

    /// Its name in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::OpenAiCompatible => "openai_compatible",
        }
    }
}

/// The token counts of one answer, the same whatever the provider.
///
/// `input` counts every input token, cached or not (OpenAI's
/// `prompt_tokens`; Anthropic's `input_tokens + cache_read_input_tokens +
/// cache_creation_input_tokens`; Gemini's `promptTokenCount`), and
/// `cached_read` and `cache_write` say how many of them were read from or
/// written to the provider's prompt cache. `output` counts every
/// generated token, reasoning included (OpenAI's `completion_tokens`,
/// Gemini's `candidatesTokenCount + thoughtsTokenCount`), and `reasoning`
/// how many of them were reasoning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Usage {
    /// Input tokens, cached ones included.
    pub input: u64,
    /// Of `input`, read from the prompt cache.
    pub cached_read: u64,
    /// Of `input`, written to the prompt cache.
    pub cache_write: u64,
    /// Output tokens, reasoning included.
    pub output: u64,
    /// Of `output`, reasoning.
    pub reasoning: u64,
    /// The answer was cut short (a stream that ended or failed before
    /// its last event): the counts are what was seen.
    pub truncated: bool,
}

impl Usage {
    /// `input + output`.
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }

    /// Whether any token was counted.
    pub fn is_empty(&self) -> bool {
        self.input == 0 && self.output == 0
    }
}

/// What to do with a request parameter the upstream's protocol cannot
/// honour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Unsupported {
    /// Leave it out (as LiteLLM's `drop_params`).
    #[default]
    Drop,
    /// Refuse the request: a 400 naming it in `param`.
    Reject,
}

/// How a request is translated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RequestOptions {
    /// The model name the upstream expects (written into the body where
    /// the protocol has one; Gemini's is in the path).
    pub model: String,
    /// Parameters the upstream cannot honour.
    pub unsupported: Unsupported,
    /// `max_tokens` to send when the client gave none and the protocol
    /// needs one (Anthropic does).
    pub default_max_tokens: u32,
}

impl RequestOptions {
    /// Options for `model`: drop what cannot be honoured, 4096 output
    /// tokens when the client sets no limit and one is needed.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            unsupported: Unsupported::Drop,
            default_max_tokens: 4096,
        }
    }

    /// Sets [`unsupported`](Self::unsupported).
    pub fn unsupported(mut self, unsupported: Unsupported) -> Self {
        self.unsupported = unsupported;
        self
    }

    /// Sets [`default_max_tokens`](Self::default_max_tokens).
    pub fn default_max_tokens(mut self, tokens: u32) -> Self {
        self.default_max_tokens = tokens;
        self
    }
}

/// A translated request body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Translated {
    /// The body for the upstream.
    pub body: Vec<u8>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Whether the client asked for the usage chunk at the end of a
    /// stream (`stream_options.include_usage`).
    pub include_usage: bool,
}

/// How a translated stream is written back.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StreamOptions {
    /// The `model` the client sees in each chunk.
    pub model: String,
    /// Whether to end with a usage chunk (the client asked for it).
    pub include_usage: bool,
    /// The `created` timestamp (Unix seconds) of each chunk.
    pub created: u64,
}

impl StreamOptions {
    /// Options for a stream answering as `model`, created now.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            include_usage: false,
            created: now(),
        }
    }

    /// Sets [`include_usage`](Self::include_usage).
    pub fn include_usage(mut self, yes: bool) -> Self {
        self.include_usage = yes;
        self
    }

    /// Sets [`created`](Self::created).
    pub fn created(mut self, unix_seconds: u64) -> Self {
        self.created = unix_seconds;
        self
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Translates one server-sent-event stream into another, an event at a
/// time, with bounded state.
///
/// Each call appends complete events (nothing, one or several) to `out`.
/// Whatever the cut of the upstream's bytes, the [`sse::Parser`] in front
/// hands the same events, so the output is the same.
pub trait StreamMapper: Send {
    /// One event from the upstream.
    fn event(&mut self, event: &sse::Event<'_>, out: &mut Vec<u8>);
    /// The upstream's stream ended. Appends what closes the client's
    /// stream (a final chunk, the usage chunk, `data: [DONE]`) if the
    /// upstream's last event has not already; a stream that ended before
    /// its last event also gets an error event, and its usage is
    /// flagged truncated.
    fn finish(&mut self, out: &mut Vec<u8>);
    /// The upstream's stream failed (its connection broke, its events
    /// could not be read): appends an error event in the client's format
    /// and what closes the stream. The usage is flagged truncated.
    fn fail(&mut self, message: &str, out: &mut Vec<u8>);
    /// The tokens counted so far.
    fn usage(&self) -> Usage;
}

impl<M: StreamMapper + ?Sized> StreamMapper for Box<M> {
    fn event(&mut self, event: &sse::Event<'_>, out: &mut Vec<u8>) {
        (**self).event(event, out);
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        (**self).finish(out);
    }
    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        (**self).fail(message, out);
    }
    fn usage(&self) -> Usage {
        (**self).usage()
    }
}
