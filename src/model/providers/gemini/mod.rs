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
//! | `stream`, `stream_options.include_usage` | [`Translated`](super::Translated)'s flags (the [`path`] differs, the body does not) |
//! | `user`, `store`, `metadata`, `service_tier`, ... | not sent |
//! | `logprobs`, `top_logprobs`, `logit_bias`, `audio`, `modalities`, `prediction`, `web_search_options`, `functions`, `function_call`, `parallel_tool_calls: false`, non-function tools | dropped, or a 400 naming them with [`Unsupported::Reject`](super::Unsupported::Reject) |
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
//! [`StreamMapper::finish`](super::StreamMapper::finish) writes the usage chunk (when asked) and
//! `data: [DONE]`; a stream that ended without a `finishReason` gets an
//! error chunk instead of the usage chunk, and its usage is flagged
//! truncated. An `{"error":...}` event, an unreadable event, more than
//! [`MAX_TOOL_CALLS`] calls or a candidate index past [`MAX_CANDIDATES`]
//! end the stream with an error chunk and `data: [DONE]`.

mod request;
mod response;
mod stream;
#[cfg(test)]
mod tests;

pub use request::{path, request_from_chat};
pub use response::{error_to_chat, response_to_chat, usage_from_object};
pub use stream::ChatStream;

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
