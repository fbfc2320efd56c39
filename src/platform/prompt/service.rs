//! [`PromptApi`], its builder, and the service each template version is.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, EXPECT, TRANSFER_ENCODING,
};
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use serde_json::{Map, Value};
use tower::Service;

use super::PromptError;
use super::config::{ErrorFormat, PromptApiConfig, ResponseMode};
use super::future::{ResponseFuture, VersionFuture};
use super::reply::Refusal;
use super::schema::{Checked, Variables};
use super::stats::{PromptHandle, VersionCounters};
use super::template::Template;
use crate::body::{RequestBody, ResponseBody};
use crate::key::KeyBy;
use crate::ratelimit::Clock;
use crate::split::{Split, SplitBody, SplitBuilder};

/// Parameters a template owns, which configuration may not set.
const RESERVED: [&str; 4] = ["model", "messages", "stream", "stream_options"];

// === ApiShared ===

/// What every clone of a prompt API and its handles share.
pub(crate) struct ApiShared {
    pub(crate) config: PromptApiConfig,
    pub(crate) variables: Variables,
    /// Requests the API refused itself (400, 405, 413, 415).
    pub(crate) refused: Arc<AtomicU64>,
    /// Each version's counters, in target order.
    pub(crate) versions: Box<[(String, Arc<VersionCounters>)]>,
}

// === PromptApi ===

/// A prompt API: a caller posts `{"variables": {…}}`, one of the API's
/// template versions (picked by its [`Split`]) fills its messages and asks
/// the inner service, and the caller gets the answer in the API's
/// [`ResponseMode`]. See the [module docs](super).
///
/// # Readiness
///
/// Always ready: the caller's body is read first, then the split calls a
/// clone of the chosen version, which waits for the inner service to be
/// ready (the split's contract). Put a concurrency limit in front when
/// backpressure matters.
pub struct PromptApi<S> {
    pub(crate) split: Split<PromptVersion<S>>,
    pub(crate) shared: Arc<ApiShared>,
}

impl<S> PromptApi<S> {
    /// A builder for the API `config`, whose versions ask `models`: any
    /// service that answers OpenAI chat-completions requests, typically a
    /// [`ModelRouter`](crate::model::ModelRouter) (so that the API's
    /// alias splits, pins and falls back as any alias does).
    pub fn builder(config: PromptApiConfig, models: S) -> PromptApiBuilder<S> {
        PromptApiBuilder {
            config,
            models,
            split: Split::builder(),
            carry_over: None,
        }
    }

    /// A live handle: the versions' weights (promote, roll back, canary),
    /// their counters, the API's refusals.
    pub fn handle(&self) -> PromptHandle {
        PromptHandle::new(self.split.handle(), Arc::clone(&self.shared))
    }

    /// The configuration the API was built from.
    pub fn config(&self) -> &PromptApiConfig {
        &self.shared.config
    }

    /// The API's OpenAPI 3.1 document; see [`openapi`](super::openapi()).
    pub fn openapi(&self) -> Value {
        super::openapi::document(&self.shared.config)
    }
}

impl<S: Clone> Clone for PromptApi<S> {
    fn clone(&self) -> Self {
        Self {
            split: self.split.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for PromptApi<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptApi")
            .field("name", &self.shared.config.name)
            .field("path", &self.shared.config.path)
            .field("alias", &self.shared.config.alias)
            .field("split", &self.split)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for PromptApi<S>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone,
    ReqB: Body<Data = Bytes>,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<SplitBody<ResponseBody<ResB>>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB, ResB>;

    /// Always ready; see the type's docs.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (head, body) = req.into_parts();
        if matches!(head.method, Method::GET | Method::HEAD)
            && head.uri.path().ends_with("/openapi.json")
        {
            // The API describes itself, at `<path>/openapi.json`.
            let doc = self.openapi().to_string();
            let mut res = Response::new(ResponseBody::full(doc));
            res.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return ResponseFuture::refused(res);
        }
        if let Some(refusal) = self.refusal(&head, &body) {
            return ResponseFuture::refused(self.refuse(refusal));
        }
        ResponseFuture::reading(self.clone(), head, body)
    }
}

impl<S> PromptApi<S> {
    /// What is wrong with a request before its body is read.
    fn refusal<B: Body>(&self, head: &http::request::Parts, body: &B) -> Option<Refusal> {
        let limit = self.shared.config.body_limit;
        if head.method != Method::POST {
            return Some(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "A prompt API takes POST requests.",
            ));
        }
        if !crate::body::is_json(&head.headers) {
            return Some(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send the variables as `Content-Type: application/json`.",
            ));
        }
        if crate::body::is_encoded(&head.headers) {
            return Some(Refusal::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send the body without a `Content-Encoding`.",
            ));
        }
        if crate::body::over_limit(&head.headers, body, limit) {
            return Some(too_large(limit));
        }
        None
    }

    /// Counts a refusal and answers it.
    pub(crate) fn refuse<B>(&self, refusal: Refusal) -> Response<ResponseBody<B>> {
        self.shared.refused.fetch_add(1, Ordering::Relaxed);
        refusal.into_response(self.shared.config.errors)
    }
}

pub(crate) fn too_large(limit: usize) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        format!("The request body is larger than {limit} bytes."),
    )
}

// === PromptApiBuilder ===

/// Builds a [`PromptApi`]; see [`PromptApi::builder`]. Its methods set up
/// the split over the versions, as their namesakes on
/// [`SplitBuilder`](crate::split::SplitBuilder) do.
pub struct PromptApiBuilder<S> {
    config: PromptApiConfig,
    models: S,
    split: SplitBuilder<PromptVersion<S>>,
    carry_over: Option<PromptHandle>,
}

impl<S> PromptApiBuilder<S> {
    /// Sticky versions by `key` (a user keeps their version while the
    /// weights stay put; raising a canary's weight only moves users onto
    /// it). Without it, or for requests without the key, random by weight.
    pub fn sticky(mut self, key: KeyBy) -> Self {
        self.split = self.split.sticky(key);
        self
    }

    /// Salts the sticky hash (see
    /// [`SplitBuilder::sticky_salt`](crate::split::SplitBuilder::sticky_salt)).
    pub fn sticky_salt(mut self, salt: &str) -> Self {
        self.split = self.split.sticky_salt(salt);
        self
    }

    /// Random picks from a seeded generator, for repeatable tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.split = self.split.seed(seed);
        self
    }

    /// Lets a request force a version by naming it in this header (for
    /// testers trying a new template at weight zero).
    pub fn override_header(mut self, name: HeaderName) -> Self {
        self.split = self.split.override_header(name);
        self
    }

    /// Honors the override header only for callers with this scope.
    pub fn override_scope(mut self, scope: impl Into<String>) -> Self {
        self.split = self.split.override_scope(scope);
        self
    }

    /// Names the version that answered in this response header.
    pub fn echo_header(mut self, name: HeaderName) -> Self {
        self.split = self.split.echo_header(name);
        self
    }

    /// Records each version's time to response headers on `clock` (what
    /// a rollout's latency checks read).
    pub fn latency(mut self, clock: impl Clock) -> Self {
        self.split = self.split.latency(clock);
        self
    }

    /// Continues the counters of `from` (the API this one replaces): a
    /// version with the name of one of `from`'s keeps its counters, and
    /// the refusals carry on.
    pub fn carry_over(mut self, from: &PromptHandle) -> Self {
        self.split = self.split.carry_over(from.split());
        self.carry_over = Some(from.clone());
        self
    }

    /// Checks the configuration and builds the API.
    ///
    /// Fails with a [`PromptError`] naming what is wrong: the name, path,
    /// alias or limits; a variable; a template (a malformed slot, a slot
    /// naming no variable, a slot in a system or assistant message not
    /// marked [`allow_variables`](super::TemplateMessage::allow_variables));
    /// a reserved parameter; the JSON mode's schema; or the versions as a
    /// split (none, a name twice, every weight zero).
    pub fn build(self) -> Result<PromptApi<S>, PromptError>
    where
        S: Clone,
    {
        let config = self.config;
        check_config(&config)?;
        let variables = Variables::compile(&config.variables)?;
        let names = variables.names();
        let upstream_path: PathAndQuery = config
            .upstream_path
            .parse()
            .ok()
            .filter(|_| config.upstream_path.starts_with('/'))
            .ok_or_else(|| PromptError::InvalidUpstreamPath(config.upstream_path.clone()))?;
        let answering = Arc::new(Answering {
            mode: config.mode.clone(),
            limit: config.answer_limit,
            format: config.errors,
        });
        let alias = Value::from(config.alias.as_str());
        let carried = |name: &str| {
            self.carry_over.as_ref().and_then(|h| {
                h.shared()
                    .versions
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, c)| Arc::clone(c))
            })
        };
        let mut split = self.split;
        let mut counters = Vec::with_capacity(config.versions.len());
        for version in &config.versions {
            let template = Template::compile(version, &names)?;
            let mut params = config.params.clone();
            for (name, value) in &version.params {
                params.insert(name.clone(), value.clone());
            }
            if let Some(param) = RESERVED.iter().find(|p| version.params.contains_key(**p)) {
                return Err(PromptError::ReservedParam {
                    version: Some(version.name.clone()),
                    param: (*param).to_owned(),
                });
            }
            if matches!(config.mode, ResponseMode::Json { .. })
                && !params.contains_key("response_format")
            {
                let mut format = Map::new();
                format.insert("type".to_owned(), Value::from("json_object"));
                params.insert("response_format".to_owned(), Value::Object(format));
            }
            let version_counters = carried(&version.name).unwrap_or_default();
            counters.push((version.name.clone(), Arc::clone(&version_counters)));
            let state = VersionState {
                template,
                params,
                alias: alias.clone(),
                upstream_path: upstream_path.clone(),
                answering: Arc::clone(&answering),
                counters: version_counters,
            };
            let service = PromptVersion {
                inner: self.models.clone(),
                state: Arc::new(state),
            };
            split = split.target(version.name.clone(), service, version.weight);
        }
        let split = split.build()?;
        let refused = self
            .carry_over
            .as_ref()
            .map_or_else(Default::default, |h| Arc::clone(&h.shared().refused));
        Ok(PromptApi {
            split,
            shared: Arc::new(ApiShared {
                config,
                variables,
                refused,
                versions: counters.into(),
            }),
        })
    }
}

impl<S> fmt::Debug for PromptApiBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptApiBuilder")
            .field("config", &self.config)
            .field("split", &self.split)
            .finish_non_exhaustive()
    }
}

/// The checks of the API's own settings.
fn check_config(config: &PromptApiConfig) -> Result<(), PromptError> {
    let visible = |s: &str, max: usize| {
        (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
    };
    if !visible(&config.name, 64) {
        return Err(PromptError::InvalidName(config.name.clone()));
    }
    let path_ok = config.path.starts_with('/')
        && !config.path.contains(['?', '#'])
        && config.path.parse::<PathAndQuery>().is_ok();
    if !path_ok {
        return Err(PromptError::InvalidPath(config.path.clone()));
    }
    if !visible(&config.alias, 256) {
        return Err(PromptError::InvalidAlias(config.alias.clone()));
    }
    if config.body_limit == 0 {
        return Err(PromptError::ZeroLimit("body_limit"));
    }
    if config.answer_limit == 0 {
        return Err(PromptError::ZeroLimit("answer_limit"));
    }
    if let Some(param) = RESERVED.iter().find(|p| config.params.contains_key(**p)) {
        return Err(PromptError::ReservedParam {
            version: None,
            param: (*param).to_owned(),
        });
    }
    if let ResponseMode::Json { schema } = &config.mode {
        schema.check().map_err(PromptError::InvalidSchema)?;
    }
    Ok(())
}

// === PromptVersion ===

/// How a version hands back the model's answer; shared by the versions.
#[derive(Debug)]
pub(crate) struct Answering {
    pub(crate) mode: ResponseMode,
    pub(crate) limit: usize,
    pub(crate) format: ErrorFormat,
}

/// One version, compiled.
#[derive(Debug)]
pub(crate) struct VersionState {
    template: Template,
    /// The body's members after `model` and `messages`.
    params: Map<String, Value>,
    alias: Value,
    upstream_path: PathAndQuery,
    pub(crate) answering: Arc<Answering>,
    pub(crate) counters: Arc<VersionCounters>,
}

impl VersionState {
    /// The chat-completions body: `model`, `messages`, then the fixed
    /// parameters, written by `serde_json` (every value escaped).
    pub(crate) fn render(&self, input: &Checked) -> Vec<u8> {
        let mut body = Map::new();
        body.insert("model".to_owned(), self.alias.clone());
        let messages = self.template.render(&input.values, &input.extra);
        body.insert("messages".to_owned(), Value::Array(messages));
        for (name, value) in &self.params {
            body.insert(name.clone(), value.clone());
        }
        // A map of JSON values always serializes.
        serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
    }
}

/// The caller's checked input, as the split hands it to a version. `B`
/// is the caller's body type: the version sends the inner service a
/// `RequestBody<B>`, as the other layers do.
pub(crate) struct PromptInput<B> {
    pub(crate) checked: Checked,
    _body: PhantomData<fn() -> B>,
}

impl<B> PromptInput<B> {
    pub(crate) fn new(checked: Checked) -> Self {
        Self {
            checked,
            _body: PhantomData,
        }
    }
}

impl<B> fmt::Debug for PromptInput<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptInput")
            .field("variables", &self.checked.values.len())
            .field("extra_messages", &self.checked.extra.len())
            .finish()
    }
}

/// One template version: renders its messages into a chat-completions
/// request, asks the inner service, and hands back the answer in the
/// API's mode. A target of the API's split.
pub(crate) struct PromptVersion<S> {
    inner: S,
    state: Arc<VersionState>,
}

impl<S: Clone> Clone for PromptVersion<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            state: Arc::clone(&self.state),
        }
    }
}

impl<S> fmt::Debug for PromptVersion<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptVersion")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResB> Service<Request<PromptInput<B>>> for PromptVersion<S>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = VersionFuture<S::Future, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<PromptInput<B>>) -> Self::Future {
        let (mut head, input) = req.into_parts();
        let body = self.state.render(&input.checked);
        head.method = Method::POST;
        head.uri = Uri::from(self.state.upstream_path.clone());
        let headers = &mut head.headers;
        for name in [
            CONTENT_LENGTH,
            TRANSFER_ENCODING,
            CONTENT_ENCODING,
            EXPECT,
            // The answer is read, so it must come as plain text.
            ACCEPT_ENCODING,
        ] {
            headers.remove(name);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        let req = Request::from_parts(head, RequestBody::full(Bytes::from(body), None));
        VersionFuture::new(self.inner.call(req), Arc::clone(&self.state))
    }
}
