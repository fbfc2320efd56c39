//! Prompt APIs: a path that runs a versioned prompt template on a model
//! alias, for callers who send variables, not prompts.
//!
//! ```
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use serde_json::{Value, json};
//! use switchyard::body::RequestBody;
//! use switchyard::platform::prompt::{
//!     PromptApi, PromptApiConfig, ResponseMode, Variable, VersionConfig,
//! };
//! use tower::{ServiceExt, service_fn};
//!
//! type BoxError = Box<dyn std::error::Error + Send + Sync>;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // Stands in for a `ModelRouter`: answers with the last message it got.
//! let models = service_fn(|req: Request<RequestBody<Full<Bytes>>>| async move {
//!     let sent: Value = serde_json::from_slice(&req.into_body().collect().await?.to_bytes())?;
//!     let last = &sent["messages"][sent["messages"].as_array().map_or(0, |m| m.len() - 1)];
//!     let text = format!("{}: {}", last["role"].as_str().unwrap_or(""), last["content"].as_str().unwrap_or(""));
//!     let answer = json!({"choices": [{"message": {"role": "assistant", "content": text}}]});
//!     Ok::<_, BoxError>(Response::new(Full::new(Bytes::from(answer.to_string()))))
//! });
//!
//! let config = PromptApiConfig::new("weather", "/v1/prompts/weather", "chat")
//!     .variable("city", Variable::string().max_length(60))
//!     .version(
//!         VersionConfig::new("v1", 100)
//!             .system("Answer in one sentence.")
//!             .user("What is the weather in {{city}}?"),
//!     )
//!     .mode(ResponseMode::Text);
//! let api = PromptApi::builder(config, models).build()?;
//!
//! let ask = |body: &'static str| {
//!     Request::post("/v1/prompts/weather")
//!         .header("content-type", "application/json")
//!         .body(Full::new(Bytes::from_static(body.as_bytes())))
//! };
//! let res = api.clone().oneshot(ask(r#"{"variables": {"city": "Oslo"}}"#)?).await?;
//! let body: Value = serde_json::from_slice(&res.into_body().collect().await?.to_bytes())?;
//! assert_eq!(body, json!({"result": "user: What is the weather in Oslo?"}));
//!
//! // A variable the API does not take is a 400 naming it.
//! let res = api.clone().oneshot(ask(r#"{"variables": {"town": "Oslo"}}"#)?).await?;
//! assert_eq!(res.status(), 400);
//! let body: Value = serde_json::from_slice(&res.into_body().collect().await?.to_bytes())?;
//! assert_eq!(body["error"]["param"], "variables.town");
//! assert_eq!(api.handle().stats().refused, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # The contract
//!
//! A [`PromptApiConfig`] names a path, a model alias, the variables a
//! caller sends (each with a type, and optionally `required`,
//! `max_length`, `enum`, a `default`), one or more template versions
//! (chat messages with `{{variable}}` slots), fixed generation parameters
//! and a [`ResponseMode`]. The caller posts
//! `{"variables": {…}}` as `application/json`, and nothing else: not
//! `model`, not `messages` (unless the API
//! [allows extra messages](PromptApiConfig::allow_extra_messages), which
//! come after the template's, as `user` or `assistant`), not
//! `"stream": true` — prompt APIs do not stream, and say so with a 400.
//!
//! The chosen version sends the inner service an OpenAI chat-completions
//! request, `{"model": <alias>, "messages": [...], <params>}`, to
//! [`DEFAULT_UPSTREAM_PATH`]; the inner service is whatever serves chat
//! completions, in practice a [`ModelRouter`](crate::model::ModelRouter),
//! so the alias behind the API splits, pins and falls back like any
//! alias. The caller's headers and extensions go along (its
//! [`Identity`](crate::auth::Identity) for pins and budgets), but not its
//! body headers nor `Accept-Encoding`.
//!
//! | mode | 200 answer |
//! | --- | --- |
//! | [`Full`](ResponseMode::Full) | the model's chat completion, byte for byte |
//! | [`Text`](ResponseMode::Text) | `{"result": "<the assistant's text>"}` |
//! | [`Json`](ResponseMode::Json) | the assistant's text parsed as a JSON object and checked against a small [schema](ObjectSchema); the request asks for `response_format: {"type": "json_object"}` |
//!
//! # Injection and escaping
//!
//! Caller values go into **user** messages. A slot in a `system` or
//! `assistant` message is refused when the API is built, unless that
//! message says [`allow_variables`](TemplateMessage::allow_variables):
//! a value there would speak with the authority of the instructions.
//! Templates are parsed once; filling them is one pass that never looks
//! at what it inserts, so a value holding `{{other}}` stays that text. The
//! request body is written by `serde_json`, so a value cannot leave its
//! JSON string whatever quotes or braces it holds. A slot naming no
//! variable, or a malformed `{{`, is a build error.
//!
//! # Versions are a split
//!
//! The versions are the targets of a [`Split`](crate::split::Split): a
//! template change is a release, canaried, sticky by a key of your
//! choosing ([`PromptApiBuilder::sticky`]), promoted or rolled back with
//! the [`PromptHandle`] (its [`split`](PromptHandle::split) is a plain
//! [`SplitHandle`](crate::split::SplitHandle)), and driven by a
//! `switchyard::rollout` plan like any split (`PromptTraffic`, feature
//! `rollout`, adds tokens to the samples). The caller's body is checked
//! once, against the API's variables, before the split picks a version:
//! the variables are the API's contract, shared by every version, while
//! each version has its own template. The checked values travel to the
//! version as the request's body, so a version cannot be reached with
//! unchecked input.
//!
//! Counters per version: the split's (requests, answers by status class,
//! errors, latency) plus tokens and answers refused by the mode; per API:
//! requests refused before any version saw them. See [`PromptStats`].
//!
//! # Errors
//!
//! The API's own errors come in OpenAI's shape by default
//! (`{"error":{"message","type","param","code"}}`, `param` naming the
//! variable, as `variables.city`), or as problem+json
//! ([`ErrorFormat`]):
//!
//! | status | when | `code` |
//! | --- | --- | --- |
//! | 400 | a variable missing, unknown, too long, of the wrong type, not in its `enum` | `missing_variable`, `unknown_variable`, `variable_too_long`, `invalid_variable_type`, `invalid_variable_value` |
//! | 400 | the body not JSON or not an object; another member than `variables`; `stream: true`; bad extra messages | `invalid_json`, `unknown_parameter`, `stream_unsupported`, `invalid_messages` |
//! | 405 | not a POST (with `Allow: POST`) | `method_not_allowed` |
//! | 413 | a body over [`body_limit`](PromptApiConfig::body_limit) (64 KiB by default) | `request_too_large` |
//! | 415 | not `application/json`, or content-encoded | `unsupported_media_type` |
//! | 502 | the model's answer unreadable, too large, without text, not JSON or not matching the schema | `invalid_answer` |
//!
//! Errors of the inner service (the router's 404 for an unknown alias,
//! the provider's 429, the proxy's 502) pass through with their status
//! and body.
//!
//! # OpenAPI
//!
//! Each API describes itself as an OpenAPI 3.1 document:
//! [`PromptApi::openapi`], [`PromptHandle::openapi`] or [`openapi()`], and
//! serves it to a `GET` of any path ending in `/openapi.json` (mounted at
//! `/v1/prompts/weather`, at `/v1/prompts/weather/openapi.json`).

#![cfg(feature = "json")]
#![cfg_attr(docsrs, doc(cfg(feature = "json")))]

mod config;
mod future;
mod openapi;
mod reply;
mod schema;
mod service;
mod stats;
mod template;

pub use config::{
    DEFAULT_ANSWER_LIMIT, DEFAULT_BODY_LIMIT, DEFAULT_UPSTREAM_PATH, ErrorFormat, JsonType,
    ObjectSchema, ObjectType, PromptApiConfig, PropertySchema, ResponseMode, Role, TemplateMessage,
    Variable, VariableType, VersionConfig,
};
pub use future::ResponseFuture;
pub use openapi::openapi;
pub use service::{PromptApi, PromptApiBuilder};
#[cfg(feature = "rollout")]
pub use stats::PromptTraffic;
pub use stats::{PromptHandle, PromptStats, PromptVersionStats};

use crate::split::SplitError;

/// Why a prompt API could not be built. `version` and `message` say
/// where: the version's name and the message's index, from 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// The API's name is empty, too long, or not visible ASCII.
    #[error("invalid prompt API name `{0}`: use 1 to 64 visible ASCII characters")]
    InvalidName(String),
    /// The path does not start with `/`, or holds a query or fragment.
    #[error("invalid path `{0}`: a path starts with `/` and has no query")]
    InvalidPath(String),
    /// The alias is empty, too long, or not visible ASCII.
    #[error("invalid alias `{0}`: use 1 to 256 visible ASCII characters")]
    InvalidAlias(String),
    /// The upstream path is not a path.
    #[error("invalid upstream path `{0}`")]
    InvalidUpstreamPath(String),
    /// A limit is zero.
    #[error("`{0}` must be above zero")]
    ZeroLimit(&'static str),
    /// A variable's name is not a name (a letter or `_`, then letters,
    /// digits or `_`, up to 64).
    #[error("invalid variable name `{0}`: a letter or `_`, then letters, digits or `_`")]
    InvalidVariableName(String),
    /// A variable's settings contradict each other.
    #[error("variable `{name}`: {reason}")]
    InvalidVariable {
        /// The variable.
        name: String,
        /// Why.
        reason: String,
    },
    /// A version has no messages.
    #[error("version `{version}` has no messages")]
    EmptyTemplate {
        /// The version.
        version: String,
    },
    /// A `{{` that does not open a well-formed slot.
    #[error(
        "version `{version}`, message {message}: malformed slot at byte {at} (write `{{{{name}}}}`)"
    )]
    MalformedSlot {
        /// The version.
        version: String,
        /// The message.
        message: usize,
        /// The byte offset of the `{{`.
        at: usize,
    },
    /// A slot names a variable the API does not declare.
    #[error("version `{version}`, message {message}: slot `{slot}` names no variable")]
    UnknownSlot {
        /// The version.
        version: String,
        /// The message.
        message: usize,
        /// The slot's name.
        slot: String,
    },
    /// A slot in a system or assistant message not marked
    /// `allow_variables`.
    #[error(
        "version `{version}`, message {message}: slot `{slot}` in a {role} message; caller values go in user messages (set `allow_variables` on the message to allow it)"
    )]
    SlotNotAllowed {
        /// The version.
        version: String,
        /// The message.
        message: usize,
        /// Its role.
        role: Role,
        /// The slot's name.
        slot: String,
    },
    /// A parameter the template owns (`model`, `messages`, `stream`,
    /// `stream_options`) set in `params`.
    #[error("`params` may not set `{param}`{}", in_version(.version))]
    ReservedParam {
        /// The version whose params set it; `None` for the API's.
        version: Option<String>,
        /// The parameter.
        param: String,
    },
    /// The JSON mode's schema cannot be satisfied as written.
    #[error("invalid response schema: {0}")]
    InvalidSchema(String),
    /// The versions cannot make a split: none, a name twice or invalid,
    /// every weight zero.
    #[error("versions: {0}")]
    Split(#[from] SplitError),
}

fn in_version(version: &Option<String>) -> String {
    version
        .as_ref()
        .map(|v| format!(" (version `{v}`)"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
