//! [`UsageRecord`]: what the router reports for every answer, and
//! [`ClientApi`], the API a client spoke.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use super::providers::{Protocol, Usage};
use crate::auth::Identity;

/// The API a client spoke, from the request path's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientApi {
    /// OpenAI Chat Completions (`…/chat/completions`).
    ChatCompletions,
    /// Anthropic Messages (`…/messages`).
    Messages,
    /// OpenAI Responses (`…/responses`): passed to OpenAI upstreams only.
    Responses,
    /// Anything else (`/v1/embeddings`, `/v1/completions`...): passed to
    /// OpenAI upstreams only.
    Other,
}

impl ClientApi {
    /// The API of a request path.
    pub fn from_path(path: &str) -> Self {
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Self::ChatCompletions
        } else if path.ends_with("/messages") {
            Self::Messages
        } else if path.ends_with("/responses") {
            Self::Responses
        } else {
            Self::Other
        }
    }

    /// Its name in metrics: `chat`, `messages`, `responses`, `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat",
            Self::Messages => "messages",
            Self::Responses => "responses",
            Self::Other => "other",
        }
    }
}

/// One answer of one model version, reported to
/// [`ModelRouterBuilder::on_usage`](super::ModelRouterBuilder::on_usage)
/// when its body ends or is dropped.
///
/// A request retried on its alias's fallback reports both answers (the
/// first with no tokens, and a 502 if its upstream could not be reached). A stream the client abandons reports what was
/// counted so far, with [`Usage::truncated`] set.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UsageRecord {
    /// The caller, when authenticated.
    pub identity: Option<Identity>,
    /// The alias asked for, if any.
    pub alias: Option<Arc<str>>,
    /// The version that answered.
    pub model: Arc<str>,
    /// Its upstream.
    pub upstream: Arc<str>,
    /// The upstream's protocol.
    pub provider: Protocol,
    /// The API the client spoke.
    pub client: ClientApi,
    /// The tokens.
    pub usage: Usage,
    /// Whether the answer said what it used: a usage object was read, or
    /// tokens were counted from its events. `false` for an OpenAI stream
    /// left before its last event (which carries the usage), a compressed
    /// answer (not read), or an upstream that reports no usage.
    pub reported: bool,
    /// The upstream's status.
    pub status: StatusCode,
    /// From the call to the first byte of the answer's body.
    pub time_to_first_token: Option<Duration>,
    /// From the call to the end of the answer.
    pub duration: Duration,
}

impl UsageRecord {
    /// The caller's tenant, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.identity.as_ref().and_then(Identity::tenant)
    }
}
