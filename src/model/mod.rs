//! Blue/green for AI models: an OpenAI-compatible model-version router.
//!
//! (`examples/ai_gateway.rs`, `cargo run --example ai_gateway`: two fake model servers, an alias, a pin, fallback and token counts.)
//!
//! Clients keep asking for `"model": "chat"` (an alias) or a concrete
//! version; a [`ModelRouter`] decides which version serves the request and
//! which upstream serves that version, rewrites the `model` field to the
//! name that upstream expects (every other byte of the body stays as it
//! was), and counts requests, outcomes, latency and tokens per version.
//! Its [`ModelHandle`] shifts weights, promotes, rolls back, pins tenants
//! and adds or retires versions while it serves.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use bytes::Bytes;
//! use switchyard::body::RequestBody;
//! use switchyard::model::{Alias, Catalog, Model, ModelChoice, ModelRouter};
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Stand-ins for two model servers: they echo the body they received.
//! let server = |name: &'static str| service_fn(move |req: Request<RequestBody<Full<Bytes>>>| async move {
//!     let body = req.into_body().collect().await?.to_bytes();
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("{name} got {}", String::from_utf8_lossy(&body))))))
//! });
//! let router = ModelRouter::builder()
//!     .upstream("blue", server("blue"))
//!     .upstream("green", server("green"))
//!     .catalog(
//!         Catalog::new()
//!             .model(Model::new("llama-3.1-8b", "blue"))
//!             .model(Model::new("llama-3.3-70b", "green").upstream_model("meta/llama-3.3-70b"))
//!             .alias(Alias::new("chat", [("llama-3.1-8b", 100), ("llama-3.3-70b", 0)])),
//!     )
//!     .build()?;
//! let handle = router.handle();
//!
//! let ask = || Request::post("/v1/chat/completions")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from_static(br#"{"model": "chat", "messages": []}"#)))
//!     .unwrap();
//! let res = router.clone().oneshot(ask()).await?;
//! assert_eq!(res.headers()["x-switchyard-model"], "llama-3.1-8b");
//! let body = res.into_body().collect().await?.to_bytes();
//! assert_eq!(body, r#"blue got {"model": "llama-3.1-8b", "messages": []}"#);
//!
//! // Promote the new version: the next request goes there, renamed.
//! handle.promote("chat", "llama-3.3-70b")?;
//! let res = router.clone().oneshot(ask()).await?;
//! assert_eq!(res.extensions().get::<ModelChoice>().unwrap().upstream.as_ref(), "green");
//! let body = res.into_body().collect().await?.to_bytes();
//! assert_eq!(body, r#"green got {"model": "meta/llama-3.3-70b", "messages": []}"#);
//! # Ok(())
//! # }
//! ```
//!
//! # Choosing a version
//!
//! For a request naming an alias, in this order:
//!
//! 1. the **version header** (`x-model-version`), if the catalog
//!    [allows it](Catalog::allow_version_header) — a 400 otherwise, or when
//!    it names no version of the alias, or one whose
//!    [`direct`](Model::direct) is `false` for a caller without the
//!    catalog's [`direct_scope`](Catalog::direct_scope);
//! 2. a **pin** of the caller's [`Identity`](crate::auth::Identity), then of
//!    its tenant;
//! 3. the **sticky key** ([`ModelRouterBuilder::sticky`]): weighted
//!    rendezvous hashing, the split's, so raising a version's weight only
//!    moves callers onto it;
//! 4. **random by weight**.
//!
//! A request naming a version goes to that version (unless its
//! [`direct`](Model::direct) is `false` and the caller lacks the
//! [`direct_scope`](Catalog::direct_scope): a 400). The choice is recorded
//! as a [`ModelChoice`] in the request's and the response's extensions, and
//! in the `x-switchyard-model` response header.
//!
//! # Fallback
//!
//! When the alias has a [fallback](Alias::fallback) and the chosen
//! version's upstream fails before answering (an error, a 5xx, a 429; see
//! [`FallbackOn`]), the request is sent once more, to the fallback, with
//! the same body. A response that has started is never retried: the
//! decision is made on the status, before the body is read. Both attempts
//! count in the versions' counters. Fallback needs the body, so it works
//! with [`ModelSource::Body`] (the default).
//!
//! # One API over every provider
//!
//! Each upstream has a [`Provider`]: its [`Protocol`](providers::Protocol)
//! (`openai`, `anthropic`, `gemini`, `openai_compatible`, Azure OpenAI
//! included) and its API keys, read from environment variables or files
//! and sent the provider's way; the caller's own credential never reaches
//! it. So one alias can span providers — `chat` = 90 % `gpt-4o` on OpenAI,
//! 10 % `claude-sonnet` on Anthropic, falling back to `gemini-2.5-flash` —
//! while clients speak one API:
//!
//! * **OpenAI Chat Completions** (`…/chat/completions`) to any upstream.
//!   To an OpenAI-wire upstream the body passes byte for byte (only
//!   `model` spliced); to Anthropic or Gemini it is translated
//!   ([`providers::anthropic`], [`providers::gemini`]) and the answer
//!   translated back: JSON whole, streams event by event, never buffered.
//! * **Anthropic Messages** (`…/messages`) to any upstream: passed to
//!   Anthropic, translated through Chat Completions to the others
//!   ([`providers::messages`]), answers and errors in Anthropic's shapes.
//! * **OpenAI Responses** (`…/responses`) and the rest of OpenAI's API
//!   (`/v1/embeddings`...) pass to OpenAI-wire upstreams; to others they
//!   get a 400 (`unsupported_api`).
//!
//! A parameter a provider cannot honour is dropped, or refused with a 400
//! naming it ([`ModelRouterBuilder::unsupported`]). Provider errors reach
//! OpenAI clients in OpenAI's error shape with the provider's status; a
//! stream that fails midway ends with an error event and a clean end.
//! The fallback may be on another provider: an Anthropic 429 or 529 can
//! fall back to a Gemini version, the request translated for it.
//!
//! # Counting tokens
//!
//! Responses pass through chunk by chunk, never delayed, and every
//! provider's counts become one [`Usage`](providers::Usage) (input with
//! cached tokens included, cache reads and writes, output with reasoning
//! included, reasoning). For a passed-through answer the router keeps a
//! copy of its last 4 KiB and reads the last usage object when it ends
//! (OpenAI and Gemini put it last); Anthropic's events are read as they
//! pass (its input tokens come first). A translated answer is counted by
//! its translation. A streaming OpenAI request that did not ask for usage
//! is sent with `stream_options.include_usage` (when the provider accepts
//! it, see [`Provider::stream_options`]) and the extra chunk is hidden from
//! the client. An answer the client abandons is counted as far as it got,
//! flagged truncated. A content-encoded answer passed through is not
//! counted.
//!
//! Every answer is reported to [`ModelRouterBuilder::on_usage`] with who
//! asked, the alias and version, the provider, the usage, the status and
//! the time to the first byte.
//!
//! # Admission
//!
//! [`ModelRouterBuilder::admit`] puts a hook ([`Admit`]) between the choice
//! of a version and the call: it admits the request with a [`Ticket`]
//! settled with the answer's usage, sends it to a cheaper version of the
//! alias, or refuses it in the client's error shape. Token limits and
//! budgets ([`crate::spend::Meter`]) are such a hook.
//!
//! # Errors
//!
//! Bad requests get OpenAI's error document
//! (`{"error":{"message","type","param","code"}}`): unknown model (404,
//! `model_not_found`, listing what exists), missing or non-string `model`
//! (400), malformed JSON or a body that is not an object (400,
//! `invalid_json`), non-UTF-8 (400), too large (413). `GET /v1/models`
//! is answered from the catalog.
//!
//! The layers in front of the router (authentication, rate limiting,
//! transform, the proxy) answer problem+json; put [`OpenAiErrorsLayer`]
//! outermost on AI routes and OpenAI clients get their error shape from
//! those too, with the same status and headers.

mod admit;
mod body;
mod catalog;
mod errors;
pub mod future;
pub(crate) mod handle;
mod openai;
mod provider;
pub mod providers;
mod service;
mod stats;
mod translate;
mod usage;

pub use admit::{Admission, Admit, AdmitFuture, AdmitRequest, Refused, Settled, Ticket};
pub use body::ModelBody;
pub use catalog::{Alias, Catalog, Model, Pin, PinKey};
pub use errors::{OpenAiErrors, OpenAiErrorsFuture, OpenAiErrorsLayer};
pub use handle::ModelHandle;
pub use openai::OpenAiError;
pub use provider::{KeySource, KeyState, Provider};
pub use service::{
    ChoiceReason, FallbackOn, ModelChoice, ModelRouter, ModelRouterBuilder, ModelSource,
};
pub use stats::VersionStats;
pub use usage::{ClientApi, UsageRecord};

/// Why a catalog or a change to it was refused. `at` says where, as a path
/// into [`Catalog`] (`aliases[0].versions.gpt-5`). A refused change leaves
/// everything as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The router has no upstreams.
    #[error("a model router needs at least one upstream")]
    NoUpstreams,
    /// A model names an upstream the router does not have.
    #[error("{at}: unknown upstream `{upstream}`")]
    UnknownUpstream {
        /// Where.
        at: String,
        /// The upstream.
        upstream: String,
    },
    /// A name is used twice.
    #[error("{at}: `{name}` is named twice")]
    Duplicate {
        /// Where.
        at: String,
        /// The name.
        name: String,
    },
    /// A name is empty, too long, or not visible ASCII.
    #[error("{at}: invalid name `{name}` (use 1 to 256 visible ASCII characters)")]
    InvalidName {
        /// Where.
        at: String,
        /// The name.
        name: String,
    },
    /// A model that is not in the catalog.
    #[error("{at}: unknown model `{model}`")]
    UnknownModel {
        /// Where.
        at: String,
        /// The model.
        model: String,
    },
    /// An alias that is not in the catalog.
    #[error("{at}: unknown alias `{alias}`")]
    UnknownAlias {
        /// Where.
        at: String,
        /// The alias.
        alias: String,
    },
    /// An alias without versions, or with every weight zero.
    #[error("{at}: an alias needs at least one version with a weight above zero")]
    Weights {
        /// Where.
        at: String,
    },
    /// A model that is not one of the alias's versions.
    #[error("{at}: `{model}` is not a version of `{alias}`")]
    NotAVersion {
        /// Where.
        at: String,
        /// The alias.
        alias: String,
        /// The model.
        model: String,
    },
    /// A provider's API key could not be read (the reason never holds
    /// the key).
    #[error("{at}: {reason}")]
    Credential {
        /// Where (`providers.openai.keys[0]`).
        at: String,
        /// Why.
        reason: String,
    },
    /// A provider is given for an upstream the router does not have.
    #[error("providers: no upstream `{upstream}`")]
    UnknownProvider {
        /// The upstream.
        upstream: String,
    },
    /// `rollback` with no earlier weights.
    #[error("alias `{alias}` has no earlier weights to roll back to")]
    NothingToRollBack {
        /// The alias.
        alias: String,
    },
    /// `retire_model` on a version still in use.
    #[error("model `{model}` cannot be retired: {reason} in alias `{alias}`")]
    InUse {
        /// The model.
        model: String,
        /// The alias that uses it.
        alias: String,
        /// How.
        reason: &'static str,
    },
}
