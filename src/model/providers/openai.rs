//! OpenAI's wire format: Chat Completions and Responses usage, and the
//! `stream_options.include_usage` a gateway asks for on a client's
//! behalf.
//!
//! A streaming Chat Completions request only gets token counts when it
//! sets `stream_options.include_usage`. When a client did not, the router
//! sets it ([`inject_include_usage`]) and [`HideUsage`] removes the extra
//! usage-only chunk from what that client sees, having counted it.
//!
//! ```
//! use switchyard::model::providers::openai::{inject_include_usage, usage_from_object};
//!
//! let body = br#"{"model":"gpt-4o","stream":true,"messages":[]}"#;
//! let injected = inject_include_usage(body).unwrap();
//! let v: serde_json::Value = serde_json::from_slice(&injected).unwrap();
//! assert_eq!(v["stream_options"]["include_usage"], true);
//!
//! let usage = usage_from_object(br#"{"prompt_tokens":120,"completion_tokens":30,
//!     "prompt_tokens_details":{"cached_tokens":100},
//!     "completion_tokens_details":{"reasoning_tokens":10}}"#).unwrap();
//! assert_eq!((usage.input, usage.cached_read, usage.output, usage.reasoning), (120, 100, 30, 10));
//! ```

use serde::Deserialize;
use serde_json::value::RawValue;

use super::sse::{self, Event};
use super::{StreamMapper, Usage};

/// Reads an OpenAI `usage` object: Chat Completions' (`prompt_tokens`,
/// `completion_tokens`, `prompt_tokens_details.cached_tokens`,
/// `completion_tokens_details.reasoning_tokens`) or the Responses API's
/// (`input_tokens`, `output_tokens`, `input_tokens_details`,
/// `output_tokens_details`). `None` when it holds no token count.
pub fn usage_from_object(json: &[u8]) -> Option<Usage> {
    #[derive(Deserialize, Default)]
    struct Details {
        #[serde(default)]
        cached_tokens: Option<u64>,
        #[serde(default)]
        reasoning_tokens: Option<u64>,
    }
    #[derive(Deserialize)]
    struct Raw {
        #[serde(default)]
        prompt_tokens: Option<u64>,
        #[serde(default)]
        completion_tokens: Option<u64>,
        #[serde(default)]
        input_tokens: Option<u64>,
        #[serde(default)]
        output_tokens: Option<u64>,
        #[serde(default)]
        total_tokens: Option<u64>,
        #[serde(default)]
        prompt_tokens_details: Option<Details>,
        #[serde(default)]
        completion_tokens_details: Option<Details>,
        #[serde(default)]
        input_tokens_details: Option<Details>,
        #[serde(default)]
        output_tokens_details: Option<Details>,
        /// Written by gateways translating from Anthropic.
        #[serde(default)]
        cache_creation_input_tokens: Option<u64>,
    }
    let raw: Raw = serde_json::from_slice(json).ok()?;
    let input = raw.prompt_tokens.or(raw.input_tokens);
    let output = raw.completion_tokens.or(raw.output_tokens);
    if input.is_none() && output.is_none() && raw.total_tokens.is_none() {
        return None;
    }
    let prompt = raw
        .prompt_tokens_details
        .or(raw.input_tokens_details)
        .unwrap_or_default();
    let completion = raw
        .completion_tokens_details
        .or(raw.output_tokens_details)
        .unwrap_or_default();
    Some(Usage {
        input: input.unwrap_or(0),
        cached_read: prompt.cached_tokens.unwrap_or(0),
        cache_write: raw.cache_creation_input_tokens.unwrap_or(0),
        output: output.unwrap_or(0),
        reasoning: completion.reasoning_tokens.unwrap_or(0),
        truncated: false,
    })
}

/// Asks a streaming Chat Completions request for its usage: returns the
/// body with `stream_options.include_usage` set to `true`, or `None` when
/// there is nothing to do (not a stream, or the client asked already).
/// The body must be a JSON object (the router has checked it).
pub fn inject_include_usage(body: &[u8]) -> Option<Vec<u8>> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(default)]
        stream: Option<bool>,
        #[serde(default, borrow)]
        stream_options: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Options {
        #[serde(default)]
        include_usage: Option<bool>,
    }
    let probe: Probe<'_> = serde_json::from_slice(body).ok()?;
    if probe.stream != Some(true) {
        return None;
    }
    // `null` reads as absent: one that is written at all (or the name
    // inside some string) takes the slow path.
    let written = memchr::memmem::find(body, b"\"stream_options\"").is_some();
    match probe.stream_options {
        None if !written => {
            // Splice the field in after the opening brace: every other
            // byte stays as the client sent it.
            let at = body.iter().position(|&b| b == b'{')? + 1;
            let field: &[u8] = br#""stream_options":{"include_usage":true},"#;
            let mut out = Vec::with_capacity(body.len() + field.len());
            out.extend_from_slice(&body[..at]);
            out.extend_from_slice(field);
            out.extend_from_slice(&body[at..]);
            Some(out)
        }
        None => {
            let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
            v["stream_options"] = serde_json::json!({"include_usage": true});
            serde_json::to_vec(&v).ok()
        }
        Some(raw) => {
            let options: Options = serde_json::from_str(raw.get()).ok()?;
            if options.include_usage == Some(true) {
                return None;
            }
            let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
            v["stream_options"]["include_usage"] = serde_json::Value::Bool(true);
            serde_json::to_vec(&v).ok()
        }
    }
}

/// An OpenAI Chat Completions stream passed to a client that did not ask
/// for usage: every event as it came, but the usage-only chunk
/// (`"choices": []` with a `usage`), which is counted and left out.
/// Usage carried on a chunk with choices (as some servers send) is
/// counted and left in.
#[derive(Debug, Default)]
pub struct HideUsage {
    usage: Usage,
    done: bool,
}

impl HideUsage {
    /// A new stream.
    pub fn new() -> Self {
        Self::default()
    }
}

impl StreamMapper for HideUsage {
    fn event(&mut self, event: &Event<'_>, out: &mut Vec<u8>) {
        #[derive(Deserialize)]
        struct Chunk<'a> {
            #[serde(default, borrow)]
            choices: Option<Vec<&'a RawValue>>,
            #[serde(default, borrow)]
            usage: Option<&'a RawValue>,
        }
        if self.done {
            return;
        }
        if event.data == "[DONE]" {
            self.done = true;
        } else if memchr::memmem::find(event.data.as_bytes(), b"\"usage\"").is_some()
            && let Ok(chunk) = serde_json::from_str::<Chunk<'_>>(event.data)
            && let Some(usage) = chunk
                .usage
                .and_then(|u| usage_from_object(u.get().as_bytes()))
        {
            self.usage = usage;
            if chunk.choices.is_none_or(|c| c.is_empty()) {
                return;
            }
        }
        if !event.event.is_empty() {
            sse::write_event(out, event.event, event.data.as_bytes());
        } else {
            sse::write_data(out, event.data.as_bytes());
        }
    }

    fn finish(&mut self, _out: &mut Vec<u8>) {
        // The stream is the upstream's: nothing is added to it.
        if !self.done {
            self.usage.truncated = true;
        }
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        self.usage.truncated = true;
        if !self.done {
            self.done = true;
            write_error_chunk(out, message, "api_error");
            sse::write_data(out, b"[DONE]");
        }
    }

    fn usage(&self) -> Usage {
        self.usage
    }
}

/// Appends an OpenAI error chunk: `data: {"error":{...}}`.
pub fn write_error_chunk(out: &mut Vec<u8>, message: &str, kind: &str) {
    let chunk = serde_json::json!({
        "error": {"message": message, "type": kind, "param": null, "code": null}
    });
    sse::write_data(out, chunk.to_string().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_usage() {
        let u = usage_from_object(br#"{"input_tokens":50,"input_tokens_details":{"cached_tokens":20},"output_tokens":9,"output_tokens_details":{"reasoning_tokens":4},"total_tokens":59}"#).unwrap();
        assert_eq!(
            (u.input, u.cached_read, u.output, u.reasoning),
            (50, 20, 9, 4)
        );
        assert_eq!(usage_from_object(b"{}"), None);
        assert_eq!(usage_from_object(b"null"), None);
    }

    #[test]
    fn injection() {
        assert_eq!(inject_include_usage(br#"{"stream":false}"#), None);
        assert_eq!(
            inject_include_usage(br#"{"stream":true,"stream_options":{"include_usage":true}}"#),
            None
        );
        let v: serde_json::Value = serde_json::from_slice(
            &inject_include_usage(
                br#"{"stream":true,"stream_options":{"include_usage":false,"x":1}}"#,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"include_usage": true, "x": 1})
        );
        let v: serde_json::Value = serde_json::from_slice(
            &inject_include_usage(br#" {"stream":true,"stream_options":null}"#).unwrap(),
        )
        .unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
    }

    #[test]
    fn the_usage_chunk_is_counted_and_hidden() {
        let stream = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n\
                      data: [DONE]\n\n";
        let mut parser = sse::Parser::new(1 << 20);
        let mut m = HideUsage::new();
        let mut out = Vec::new();
        parser
            .feed(stream.as_bytes(), |e| m.event(e, &mut out))
            .unwrap();
        m.finish(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: [DONE]\n\n"
        );
        assert_eq!(
            (m.usage().input, m.usage().output, m.usage().truncated),
            (3, 1, false)
        );
    }
}
