//! Per attempt: the request for the chosen version's upstream in its
//! protocol, and the plan for reading its answer back in the client's.

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_TYPE};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, StatusCode, Uri};

use super::OpenAiError;
use super::catalog::Entry;
use super::handle::Upstream;
use super::openai::BodyInfo;
use super::providers::messages::MessagesError;
use super::providers::{
    Protocol, RequestOptions, StreamMapper, StreamOptions, Unsupported, Usage, anthropic, gemini,
    messages, openai, sse,
};
use super::service::splice;
use super::usage::ClientApi;

/// A request ready for an upstream.
pub(crate) struct Prepared {
    pub(crate) head: Parts,
    pub(crate) body: Bytes,
    pub(crate) reply: Reply,
    /// The pool key it carries.
    pub(crate) key: Option<usize>,
}

/// How an upstream's answer goes back to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Untouched; its usage read in this protocol's shape.
    Pass(Protocol),
    /// An OpenAI stream the router asked usage for: the usage chunk is
    /// counted and hidden.
    HideUsage,
    /// An Anthropic or Gemini answer to an OpenAI Chat client.
    Chat { from: Protocol, include_usage: bool },
    /// An OpenAI or Gemini answer to an Anthropic Messages client.
    Messages { via: Protocol },
}

/// A refusal, in the client's error shape.
#[derive(Debug)]
pub(crate) enum Refusal {
    OpenAi(OpenAiError),
    Messages(MessagesError),
}

impl From<OpenAiError> for Refusal {
    fn from(e: OpenAiError) -> Self {
        Self::OpenAi(e)
    }
}

impl From<MessagesError> for Refusal {
    fn from(e: MessagesError) -> Self {
        Self::Messages(e)
    }
}

impl Refusal {
    /// Status and JSON, in `api`'s shape.
    pub(crate) fn into_parts(self, api: ClientApi) -> (StatusCode, Vec<u8>) {
        match (self, api) {
            (Self::Messages(e), _) => (e.status(), e.to_json()),
            (Self::OpenAi(e), ClientApi::Messages) => {
                let m = MessagesError::from_openai(&e);
                (m.status(), m.to_json())
            }
            (Self::OpenAi(e), _) => (e.status(), serde_json::to_vec(&e).unwrap_or_default()),
        }
    }
}

/// The request for `entry` on `upstream`, from the client's body (`span`
/// is where its `model` value is).
pub(crate) fn prepare(
    api: ClientApi,
    unsupported: Unsupported,
    mut head: Parts,
    body: &Bytes,
    info: BodyInfo,
    entry: &Entry,
    upstream: &Upstream,
) -> Result<Prepared, Refusal> {
    let span = info.span;
    let provider = &upstream.provider;
    let protocol = provider.protocol;
    let model = &*entry.upstream_name;
    let opts = || {
        RequestOptions::new(model)
            .unsupported(unsupported)
            .default_max_tokens(provider.default_max_tokens.unwrap_or(4096))
    };
    let (body, reply, path): (Bytes, Reply, Option<String>) = match (api, protocol) {
        (ClientApi::Messages, Protocol::Anthropic) => (
            splice(body, span, &entry.json_name),
            Reply::Pass(Protocol::Anthropic),
            None,
        ),
        (ClientApi::Messages, Protocol::Gemini) => {
            let pivot = messages::request_to_chat(body, &opts())?;
            let t = gemini::request_from_chat(&pivot.body, &opts())?;
            let path = gemini::path(model, t.stream);
            (
                t.body.into(),
                Reply::Messages {
                    via: Protocol::Gemini,
                },
                Some(path),
            )
        }
        (ClientApi::Messages, _) => {
            let t = messages::request_to_chat(body, &opts())?;
            let path = chat_path(upstream, model, "/v1/chat/completions");
            (t.body.into(), Reply::Messages { via: protocol }, Some(path))
        }
        (ClientApi::ChatCompletions, Protocol::Anthropic) => {
            let t = anthropic::request_from_chat(body, &opts())?;
            let reply = Reply::Chat {
                from: protocol,
                include_usage: t.include_usage,
            };
            (t.body.into(), reply, Some("/v1/messages".to_owned()))
        }
        (ClientApi::ChatCompletions, Protocol::Gemini) => {
            let t = gemini::request_from_chat(body, &opts())?;
            let reply = Reply::Chat {
                from: protocol,
                include_usage: t.include_usage,
            };
            let path = gemini::path(model, t.stream);
            (t.body.into(), reply, Some(path))
        }
        (ClientApi::ChatCompletions, _) => {
            let spliced = splice(body, span, &entry.json_name);
            let path = azure(upstream).then(|| chat_path(upstream, model, head.uri.path()));
            // Read in the same pass as the model: only a stream that did
            // not ask for its usage is looked at again.
            let ask = info.stream && info.include_usage != Some(true);
            match (ask && provider.accepts_stream_options())
                .then(|| openai::inject_include_usage(&spliced))
                .flatten()
            {
                Some(injected) => (injected.into(), Reply::HideUsage, path),
                None => (spliced, Reply::Pass(Protocol::OpenAi), path),
            }
        }
        (
            ClientApi::Responses | ClientApi::Other,
            Protocol::OpenAi | Protocol::OpenAiCompatible,
        ) => {
            let path = azure(upstream).then(|| chat_path(upstream, model, head.uri.path()));
            (
                splice(body, span, &entry.json_name),
                Reply::Pass(Protocol::OpenAi),
                path,
            )
        }
        (_, _) => {
            return Err(OpenAiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "`{}` is served by a {} upstream, which this API ({}) cannot be translated to; use /v1/chat/completions.",
                    entry.name,
                    protocol.as_str(),
                    head.uri.path()
                ),
                "invalid_request_error",
                Some("model"),
                Some("unsupported_api"),
            )
            .into());
        }
    };
    if let Some(path) = path {
        set_path(&mut head, &path)?;
    }
    if !matches!(reply, Reply::Pass(_)) {
        // Answers are read to be translated: they must not be compressed.
        head.headers.remove(ACCEPT_ENCODING);
        head.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    let keep_anthropic = api == ClientApi::Messages && protocol == Protocol::Anthropic;
    let key = upstream.keys.apply(&mut head.headers, keep_anthropic);
    crate::body::set_length(&mut head.headers, body.len());
    Ok(Prepared {
        head,
        body,
        reply,
        key,
    })
}

fn azure(upstream: &Upstream) -> bool {
    upstream.provider.azure_api_version.is_some() && upstream.provider.protocol.is_openai()
}

/// OpenAI's path for `client_path`, or Azure's deployment path.
fn chat_path(upstream: &Upstream, model: &str, client_path: &str) -> String {
    let Some(version) = upstream
        .provider
        .azure_api_version
        .as_deref()
        .filter(|_| azure(upstream))
    else {
        return client_path.to_owned();
    };
    let rest = client_path.strip_prefix("/v1").unwrap_or(client_path);
    let rest = if rest.ends_with("/messages") {
        "/chat/completions"
    } else {
        rest
    };
    let deployment =
        percent_encoding::utf8_percent_encode(model, percent_encoding::NON_ALPHANUMERIC);
    let version =
        percent_encoding::utf8_percent_encode(version, percent_encoding::NON_ALPHANUMERIC);
    format!("/openai/deployments/{deployment}{rest}?api-version={version}")
}

fn set_path(head: &mut Parts, path: &str) -> Result<(), OpenAiError> {
    let invalid = || {
        OpenAiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The upstream path could not be built.",
            "api_error",
            None,
            Some("invalid_path"),
        )
    };
    let pq = PathAndQuery::try_from(path).map_err(|_| invalid())?;
    let mut parts = std::mem::take(&mut head.uri).into_parts();
    parts.path_and_query = Some(pq);
    head.uri = Uri::from_parts(parts).map_err(|_| invalid())?;
    Ok(())
}

// === answers ===

/// Whether a response is a server-sent event stream.
pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let essence = ct.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("text/event-stream")
        })
}

/// The stream mapper for a translated streaming answer.
pub(crate) fn mapper(reply: Reply, model: &str) -> Option<Box<dyn StreamMapper>> {
    Some(match reply {
        Reply::Pass(_) => return None,
        Reply::HideUsage => Box::new(openai::HideUsage::new()),
        Reply::Chat {
            from: Protocol::Anthropic,
            include_usage,
        } => Box::new(anthropic::ChatStream::new(
            StreamOptions::new(model).include_usage(include_usage),
        )),
        Reply::Chat { include_usage, .. } => Box::new(gemini::ChatStream::new(
            StreamOptions::new(model).include_usage(include_usage),
        )),
        Reply::Messages {
            via: Protocol::Gemini,
        } => Box::new(Chain::new(
            gemini::ChatStream::new(StreamOptions::new(model).include_usage(true)),
            messages::MessagesStream::new(model),
        )),
        Reply::Messages { .. } => Box::new(messages::MessagesStream::new(model)),
    })
}

/// A whole (non-streamed) answer translated: status, JSON, usage.
pub(crate) fn convert(
    reply: Reply,
    status: StatusCode,
    body: &[u8],
    model: &str,
) -> (StatusCode, Vec<u8>, Option<Usage>) {
    let created = super::providers::now();
    let ok = status.is_success();
    let openai = |r: Result<(Vec<u8>, Usage), OpenAiError>| match r {
        Ok((json, usage)) => (status, json, Some(usage)),
        Err(e) => (e.status(), serde_json::to_vec(&e).unwrap_or_default(), None),
    };
    let anthropic_shape = |r: Result<(Vec<u8>, Usage), MessagesError>| match r {
        Ok((json, usage)) => (status, json, Some(usage)),
        Err(e) => (e.status(), e.to_json(), None),
    };
    let error = |e: OpenAiError| (e.status(), serde_json::to_vec(&e).unwrap_or_default(), None);
    let messages_error = |e: MessagesError| (e.status(), e.to_json(), None);
    match reply {
        Reply::Pass(_) | Reply::HideUsage => (status, body.to_vec(), None),
        Reply::Chat { from, .. } => match (from, ok) {
            (Protocol::Anthropic, true) => {
                openai(anthropic::response_to_chat(body, model, created))
            }
            (Protocol::Anthropic, false) => error(anthropic::error_to_chat(status, body)),
            (_, true) => openai(gemini::response_to_chat(body, model, created)),
            (_, false) => error(gemini::error_to_chat(status, body)),
        },
        Reply::Messages { via } => match (via, ok) {
            (Protocol::Gemini, true) => match gemini::response_to_chat(body, model, created) {
                Ok((json, usage)) => {
                    let (status, json, _) =
                        anthropic_shape(messages::response_from_chat(&json, model));
                    (status, json, Some(usage))
                }
                Err(e) => messages_error(MessagesError::from_openai(&e)),
            },
            (Protocol::Gemini, false) => messages_error(MessagesError::from_openai(
                &gemini::error_to_chat(status, body),
            )),
            (_, true) => anthropic_shape(messages::response_from_chat(body, model)),
            (_, false) => messages_error(messages::error_from_chat(status, body)),
        },
    }
}

/// Usage of a passed-through JSON answer's `usage` object, read in
/// `protocol`'s shape.
pub(crate) fn usage_of(protocol: Protocol, object: &[u8]) -> Option<Usage> {
    match protocol {
        Protocol::Anthropic => anthropic::usage_from_object(object),
        Protocol::Gemini => gemini::usage_from_object(object),
        _ => openai::usage_from_object(object),
    }
}

/// The key a protocol's usage object is under.
pub(crate) fn usage_key(protocol: Protocol) -> &'static [u8] {
    match protocol {
        Protocol::Gemini => b"\"usageMetadata\"",
        _ => b"\"usage\"",
    }
}

// === Chain ===

/// Two stream mappers in a row (Gemini to OpenAI Chat to Anthropic
/// Messages): the first one's events are read again by the second.
struct Chain<A, B> {
    first: A,
    parser: sse::Parser,
    second: B,
    between: Vec<u8>,
}

impl<A: StreamMapper, B: StreamMapper> Chain<A, B> {
    fn new(first: A, second: B) -> Self {
        Self {
            first,
            parser: sse::Parser::new(usize::MAX),
            second,
            between: Vec::new(),
        }
    }

    fn pass(&mut self, out: &mut Vec<u8>) {
        let second = &mut self.second;
        // The first mapper writes whole events: nothing is held back.
        let _ = self.parser.feed(&self.between, |e| second.event(e, out));
        self.between.clear();
    }
}

impl<A: StreamMapper, B: StreamMapper> StreamMapper for Chain<A, B> {
    fn event(&mut self, event: &sse::Event<'_>, out: &mut Vec<u8>) {
        self.first.event(event, &mut self.between);
        self.pass(out);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.first.finish(&mut self.between);
        self.pass(out);
        let second = &mut self.second;
        self.parser.finish(|e| second.event(e, out));
        self.second.finish(out);
    }

    fn fail(&mut self, message: &str, out: &mut Vec<u8>) {
        self.first.fail(message, &mut self.between);
        self.pass(out);
        self.second.fail(message, out);
    }

    fn usage(&self) -> Usage {
        // The first mapper reads the provider's own counts (reasoning
        // included); the second only sees what the first wrote.
        let mut usage = self.first.usage();
        usage.truncated |= self.second.usage().truncated;
        usage
    }
}
