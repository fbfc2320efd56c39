//! [`ModelRouter`], its builder, and the [`ModelChoice`] extension.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use tower::Service;

use super::ModelError;
use super::admit::Admit;
use super::body::ModelBody;
use super::catalog::{Catalog, Compiled};
use super::future::ResponseFuture;
use arc_swap::ArcSwap;

use super::handle::{ModelHandle, Shared, Upstream};
use super::openai::{OpenAiError, unknown_model};
use super::provider::{Keys, Provider};
use super::providers::Unsupported;
use super::usage::{ClientApi, UsageRecord};
use crate::auth::Identity;
use crate::body::RequestBody;
use crate::key::{HashSeed, KeyBy};
use crate::rng::RngSource;
use crate::split::weights::View;

// === ModelChoice ===

/// The model version the router chose for a request, recorded in the
/// request's extensions (for the upstream) and the response's (for the
/// layers outside).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ModelChoice {
    /// What the client asked for (an alias or a version).
    pub requested: Arc<str>,
    /// The alias, when the client asked for one.
    pub alias: Option<Arc<str>>,
    /// The version chosen.
    pub model: Arc<str>,
    /// The upstream that serves it.
    pub upstream: Arc<str>,
    /// Why this version.
    pub reason: ChoiceReason,
}

/// Why a [`ModelChoice`] went the way it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChoiceReason {
    /// The client asked for a version by name.
    Direct,
    /// The client asked for a version of the alias with the version header.
    Header,
    /// A pin holds the caller (or its tenant) on the version.
    Pinned,
    /// Sticky: the caller's key hashed to it.
    Sticky,
    /// Random by weight.
    Weighted,
    /// The version first chosen failed; this is the alias's fallback.
    Fallback,
    /// The [admission hook](ModelRouterBuilder::admit) sent the request
    /// to this version instead of the one chosen (a caller over budget).
    Downgraded,
}

/// Where the router reads the requested model from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ModelSource {
    /// The `model` field of a JSON body (OpenAI's `/v1/chat/completions`,
    /// `/v1/completions`, `/v1/embeddings`). The body is buffered up to the
    /// router's limit and the field rewritten.
    #[default]
    Body,
    /// A header, rewritten to the upstream's model name.
    Header(HeaderName),
    /// A path segment, counted from 0 after the leading `/`
    /// (`/models/{model}/generate` is segment 1), rewritten in place.
    PathSegment(usize),
}

/// When a failed request is retried once on its alias's fallback version.
///
/// In a gateway's configuration, `fallback_on` in a route's `model`
/// section: `fallback_on = { too_many_requests = false }` (a field left out
/// keeps its default, true).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FallbackOn {
    /// The upstream call failed (connection refused, timeout...).
    pub errors: bool,
    /// The upstream answered 5xx.
    pub server_errors: bool,
    /// The upstream answered 429.
    pub too_many_requests: bool,
}

impl Default for FallbackOn {
    /// All three.
    fn default() -> Self {
        Self {
            errors: true,
            server_errors: true,
            too_many_requests: true,
        }
    }
}

impl FallbackOn {
    /// Never fall back.
    pub fn never() -> Self {
        Self {
            errors: false,
            server_errors: false,
            too_many_requests: false,
        }
    }

    pub(crate) fn status(&self, status: StatusCode) -> bool {
        (self.server_errors && status.is_server_error())
            || (self.too_many_requests && status == StatusCode::TOO_MANY_REQUESTS)
    }
}

// === ModelRouter ===

/// Routes AI requests to model versions: reads the requested model (an
/// alias or a version), picks a version (version header, pin, sticky key,
/// weights), rewrites the model name to what the version's upstream
/// expects, and calls that upstream; retries once on the alias's fallback
/// when the first upstream fails before answering; counts requests,
/// outcomes, latency and tokens per version. See the
/// [module docs](super).
///
/// Like [`Split`](crate::split::Split) it is always ready and calls a
/// clone of the chosen upstream when it is ready (`S: Clone`).
pub struct ModelRouter<S> {
    pub(crate) upstreams: Arc<[S]>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) config: Arc<Config>,
}

pub(crate) struct Config {
    pub(crate) source: ModelSource,
    pub(crate) body_limit: usize,
    pub(crate) sticky: Option<KeyBy>,
    pub(crate) sticky_seed: HashSeed,
    pub(crate) version_header: HeaderName,
    pub(crate) response_header: Option<HeaderName>,
    pub(crate) fallback_on: FallbackOn,
    pub(crate) models_path: Option<String>,
    pub(crate) rng: RngSource,
    pub(crate) unsupported: Unsupported,
    pub(crate) usage_hook: Option<UsageHook>,
    pub(crate) admit: Option<Arc<dyn Admit>>,
}

pub(crate) type UsageHook = Arc<dyn Fn(&UsageRecord) + Send + Sync>;

impl<S> Clone for ModelRouter<S> {
    fn clone(&self) -> Self {
        Self {
            upstreams: Arc::clone(&self.upstreams),
            shared: Arc::clone(&self.shared),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S> fmt::Debug for ModelRouter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelRouter")
            .field("upstreams", &self.shared.upstreams)
            .field("source", &self.config.source)
            .finish_non_exhaustive()
    }
}

/// A version picked for a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Picked {
    pub(crate) model: usize,
    pub(crate) alias: Option<usize>,
    pub(crate) reason: ChoiceReason,
}

impl<S> ModelRouter<S> {
    /// A builder.
    pub fn builder() -> ModelRouterBuilder<S> {
        ModelRouterBuilder {
            upstreams: Vec::new(),
            providers: Vec::new(),
            unsupported: Unsupported::Drop,
            usage_hook: None,
            admit: None,
            catalog: Catalog::default(),
            source: ModelSource::Body,
            body_limit: 4 * 1024 * 1024,
            sticky: None,
            sticky_seed: 0,
            version_header: HeaderName::from_static("x-model-version"),
            response_header: Some(HeaderName::from_static("x-switchyard-model")),
            fallback_on: FallbackOn::default(),
            models_path: Some("/v1/models".to_owned()),
            rng: RngSource::Thread,
        }
    }

    /// The live handle.
    pub fn handle(&self) -> ModelHandle {
        ModelHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Picks a version for `requested`.
    pub(crate) fn select(
        &self,
        catalog: &Compiled,
        head: &Parts,
        requested: &str,
    ) -> Result<Picked, OpenAiError> {
        let Some(&g) = catalog.alias_by_name.get(requested) else {
            return match catalog.by_name.get(requested) {
                Some(&model) => {
                    check_direct(catalog, head, model)?;
                    Ok(Picked {
                        model,
                        alias: None,
                        reason: ChoiceReason::Direct,
                    })
                }
                None => Err(unknown_model(catalog, requested)),
            };
        };
        let group = &catalog.aliases[g];
        let picked = |model, reason| {
            Ok(Picked {
                model,
                alias: Some(g),
                reason,
            })
        };

        if let Some(value) = head.headers.get(&self.config.version_header) {
            if !catalog.allow_version_header {
                return Err(OpenAiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "Asking for an exact version with `{}` is not allowed here.",
                        self.config.version_header
                    ),
                    "invalid_request_error",
                    Some("model"),
                    Some("version_header_not_allowed"),
                ));
            }
            let name = String::from_utf8_lossy(value.as_bytes());
            return match catalog.by_name.get(name.as_ref()) {
                Some(&m) if group.members.contains(&m) => {
                    check_direct(catalog, head, m)?;
                    picked(m, ChoiceReason::Header)
                }
                _ => Err(OpenAiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("`{name}` is not a version of `{requested}`."),
                    "invalid_request_error",
                    Some("model"),
                    Some("invalid_model_version"),
                )),
            };
        }

        if !(catalog.identity_pins.is_empty() && catalog.tenant_pins.is_empty())
            && let Some(identity) = head.extensions.get::<Identity>()
        {
            let by_identity = catalog.identity_pins.get(identity.id());
            let by_tenant = identity.tenant().and_then(|t| catalog.tenant_pins.get(t));
            for pins in [by_identity, by_tenant].into_iter().flatten() {
                if let Some(&(_, m)) = pins.iter().find(|(pg, _)| *pg == g) {
                    return picked(m, ChoiceReason::Pinned);
                }
            }
        }

        if let Some(key) = self
            .config
            .sticky
            .as_ref()
            .and_then(|k| k.extract_head(head))
        {
            let hash = key.stable_hash_seeded(self.config.sticky_seed);
            let i = group.weights.pick_sticky(hash, &group.seeds);
            return picked(group.members[i], ChoiceReason::Sticky);
        }
        let i = group.weights.pick(self.config.rng.next_u64());
        picked(group.members[i], ChoiceReason::Weighted)
    }

    pub(crate) fn choice(
        &self,
        catalog: &Compiled,
        requested: &str,
        picked: Picked,
    ) -> ModelChoice {
        let entry = &catalog.models[picked.model];
        ModelChoice {
            requested: requested.into(),
            alias: picked.alias.map(|g| Arc::clone(&catalog.aliases[g].name)),
            model: Arc::clone(&entry.name),
            upstream: self.shared.upstreams[entry.upstream].as_str().into(),
            reason: picked.reason,
        }
    }
}

/// Refuses a request for a version by name when the version is not
/// `direct` and the caller lacks the catalog's `direct_scope`.
fn check_direct(catalog: &Compiled, head: &Parts, model: usize) -> Result<(), OpenAiError> {
    let entry = &catalog.models[model];
    if entry.direct {
        return Ok(());
    }
    let allowed = catalog.direct_scope.as_deref().is_some_and(|scope| {
        head.extensions
            .get::<Identity>()
            .is_some_and(|i| i.has_scope(scope))
    });
    if allowed {
        return Ok(());
    }
    Err(OpenAiError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "`{}` cannot be asked for by name here; ask for its alias.",
            entry.name
        ),
        "invalid_request_error",
        Some("model"),
        Some("model_not_direct"),
    ))
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ModelRouter<S>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone,
    ReqB: Body<Data = Bytes>,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<ModelBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB, ResB>;

    /// Always ready; the chosen upstream's readiness is awaited per call.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (mut head, body) = req.into_parts();
        let api = ClientApi::from_path(head.uri.path());
        if let Some(path) = &self.config.models_path
            && head.method == Method::GET
            && head.uri.path() == path
        {
            let catalog = self.shared.catalog.load();
            return ResponseFuture::answer(StatusCode::OK, super::openai::model_list(&catalog));
        }
        match &self.config.source {
            ModelSource::Body => {
                let limit = self.config.body_limit;
                if crate::body::over_limit(&head.headers, &body, limit) {
                    return ResponseFuture::refuse(too_large(limit).into(), api);
                }
                if body.is_end_stream() {
                    return ResponseFuture::refuse(
                        OpenAiError::invalid(
                            "You must provide a model parameter.",
                            "missing_model",
                        )
                        .into(),
                        api,
                    );
                }
                ResponseFuture::reading(self.clone(), head, body, limit, api)
            }
            ModelSource::Header(name) => {
                let Some(requested) = head.headers.get(name).and_then(|v| v.to_str().ok()) else {
                    return ResponseFuture::error(OpenAiError::invalid(
                        format!("You must name a model in the `{name}` header."),
                        "missing_model",
                    ));
                };
                let requested = requested.to_owned();
                let catalog = self.shared.catalog.load_full();
                let picked = match self.select(&catalog, &head, &requested) {
                    Ok(p) => p,
                    Err(e) => return ResponseFuture::error(e),
                };
                let entry = &catalog.models[picked.model];
                let value = HeaderValue::from_str(&entry.upstream_name)
                    .unwrap_or_else(|_| entry.header_value.clone());
                head.headers.insert(name.clone(), value);
                let choice = self.choice(&catalog, &requested, picked);
                ResponseFuture::dispatch(
                    self,
                    catalog,
                    head,
                    RequestBody::new(body),
                    picked,
                    choice,
                )
            }
            ModelSource::PathSegment(n) => {
                let path = head.uri.path().to_owned();
                let Some(requested) = path.split('/').nth(n + 1).filter(|s| !s.is_empty()) else {
                    return ResponseFuture::error(OpenAiError::invalid(
                        format!("You must name a model in path segment {n}."),
                        "missing_model",
                    ));
                };
                let requested = percent_encoding::percent_decode_str(requested)
                    .decode_utf8_lossy()
                    .into_owned();
                let catalog = self.shared.catalog.load_full();
                let picked = match self.select(&catalog, &head, &requested) {
                    Ok(p) => p,
                    Err(e) => return ResponseFuture::error(e),
                };
                let entry = &catalog.models[picked.model];
                if let Err(e) = rewrite_segment(&mut head, *n, &entry.upstream_name) {
                    return ResponseFuture::error(e);
                }
                let choice = self.choice(&catalog, &requested, picked);
                ResponseFuture::dispatch(
                    self,
                    catalog,
                    head,
                    RequestBody::new(body),
                    picked,
                    choice,
                )
            }
        }
    }
}

pub(crate) fn too_large(limit: usize) -> OpenAiError {
    OpenAiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("The request body is larger than the limit of {limit} bytes."),
        "invalid_request_error",
        None,
        Some("request_too_large"),
    )
}

/// Replaces path segment `n` with `name`, percent-encoded.
fn rewrite_segment(head: &mut Parts, n: usize, name: &str) -> Result<(), OpenAiError> {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
        .add(b' ')
        .add(b'"')
        .add(b'#')
        .add(b'%')
        .add(b'/')
        .add(b'?')
        .add(b'<')
        .add(b'>')
        .add(b'`')
        .add(b'{')
        .add(b'}');
    let uri = &head.uri;
    let mut segments: Vec<String> = uri.path().split('/').map(str::to_owned).collect();
    if let Some(s) = segments.get_mut(n + 1) {
        *s = percent_encoding::utf8_percent_encode(name, SEGMENT).to_string();
    }
    let mut text = segments.join("/");
    if let Some(q) = uri.query() {
        text.push('?');
        text.push_str(q);
    }
    let invalid = || OpenAiError::invalid("The rewritten path is not valid.", "invalid_path");
    let pq = PathAndQuery::try_from(text).map_err(|_| invalid())?;
    let mut parts = std::mem::take(&mut head.uri).into_parts();
    parts.path_and_query = Some(pq);
    head.uri = Uri::from_parts(parts).map_err(|_| invalid())?;
    Ok(())
}

/// The body with the model value at `span` replaced by `json_name`.
pub(crate) fn splice(body: &Bytes, span: (usize, usize), json_name: &Bytes) -> Bytes {
    if body[span.0..span.1] == json_name[..] {
        return body.clone();
    }
    let mut out = BytesMut::with_capacity(body.len() - (span.1 - span.0) + json_name.len());
    out.extend_from_slice(&body[..span.0]);
    out.extend_from_slice(json_name);
    out.extend_from_slice(&body[span.1..]);
    out.freeze()
}

// === ModelRouterBuilder ===

/// Builds a [`ModelRouter`]; see [`ModelRouter::builder`].
pub struct ModelRouterBuilder<S> {
    upstreams: Vec<(String, S)>,
    providers: Vec<(String, Provider)>,
    unsupported: Unsupported,
    usage_hook: Option<UsageHook>,
    admit: Option<Arc<dyn Admit>>,
    catalog: Catalog,
    source: ModelSource,
    body_limit: usize,
    sticky: Option<KeyBy>,
    sticky_seed: u64,
    version_header: HeaderName,
    response_header: Option<HeaderName>,
    fallback_on: FallbackOn,
    models_path: Option<String>,
    rng: RngSource,
}

impl<S> ModelRouterBuilder<S> {
    /// Adds an upstream service that model versions can name.
    pub fn upstream(mut self, name: impl Into<String>, service: S) -> Self {
        self.upstreams.push((name.into(), service));
        self
    }

    /// How the router speaks to upstream `name`: its protocol and
    /// credentials. An upstream without one speaks OpenAI and gets no
    /// credential (the caller's is still removed).
    pub fn provider(mut self, name: impl Into<String>, provider: Provider) -> Self {
        self.providers.push((name.into(), provider));
        self
    }

    /// What to do with a request parameter an upstream's protocol cannot
    /// honour when translating: drop it (the default) or answer 400
    /// naming it.
    pub fn unsupported(mut self, unsupported: Unsupported) -> Self {
        self.unsupported = unsupported;
        self
    }

    /// Calls `hook` once for every answer a version gave, when its body
    /// ends (or is dropped): who asked, which version of which alias, the
    /// provider, the normalized [`Usage`](super::providers::Usage), the
    /// status and the time to the first byte. Cost tracking and budgets
    /// build on it. Keep it quick: it runs on the response's path.
    pub fn on_usage(mut self, hook: impl Fn(&UsageRecord) + Send + Sync + 'static) -> Self {
        self.usage_hook = Some(Arc::new(hook));
        self
    }

    /// Asks `hook` before each request goes upstream, once the version is
    /// chosen: it admits the request with a [`Ticket`](super::Ticket)
    /// settled with the answer's usage, sends it to a cheaper version of
    /// the alias, or refuses it (see [`Admit`]). Token limits and budgets
    /// ([`crate::spend::Meter`]) are such a hook.
    pub fn admit(mut self, hook: impl Admit) -> Self {
        self.admit = Some(Arc::new(hook));
        self
    }

    /// Sets the catalog.
    pub fn catalog(mut self, catalog: Catalog) -> Self {
        self.catalog = catalog;
        self
    }

    /// Where the requested model is read from; the JSON body's `model`
    /// field by default.
    pub fn source(mut self, source: ModelSource) -> Self {
        self.source = source;
        self
    }

    /// The most body bytes read to find the model (413 beyond); 4 MiB by
    /// default.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Sticky selection within an alias by this key (the caller's
    /// identity, a conversation header, ...): ramp-monotonic, like the
    /// split's. Without it, versions are picked at random by weight.
    pub fn sticky(mut self, key: KeyBy) -> Self {
        self.sticky = Some(key);
        self
    }

    /// Salts the sticky hash (see
    /// [`SplitBuilder::sticky_salt`](crate::split::SplitBuilder::sticky_salt)).
    pub fn sticky_salt(mut self, salt: &str) -> Self {
        self.sticky_seed = crate::key::Key::from(salt).stable_hash(0);
        self
    }

    /// The header a client names an exact version in, when the catalog
    /// allows it; `x-model-version` by default.
    pub fn version_header(mut self, name: HeaderName) -> Self {
        self.version_header = name;
        self
    }

    /// The response header naming the version that answered
    /// (`x-switchyard-model` by default); `None` turns it off.
    pub fn response_header(mut self, name: Option<HeaderName>) -> Self {
        self.response_header = name;
        self
    }

    /// When to retry on the fallback version.
    pub fn fallback_on(mut self, on: FallbackOn) -> Self {
        self.fallback_on = on;
        self
    }

    /// The path answered with the model list (`GET`), `/v1/models` by
    /// default; `None` passes such requests on like any other.
    pub fn models_path(mut self, path: Option<String>) -> Self {
        self.models_path = path;
        self
    }

    /// Random picks from a seeded generator, for repeatable tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = RngSource::seeded(seed);
        self
    }

    /// Checks everything and builds the router.
    pub fn build(self) -> Result<ModelRouter<S>, ModelError> {
        let mut names = Vec::with_capacity(self.upstreams.len());
        let mut services = Vec::with_capacity(self.upstreams.len());
        for (name, svc) in self.upstreams {
            if names.contains(&name) {
                return Err(ModelError::Duplicate {
                    at: "upstreams".into(),
                    name,
                });
            }
            names.push(name);
            services.push(svc);
        }
        if names.is_empty() {
            return Err(ModelError::NoUpstreams);
        }
        let mut providers: Vec<Option<Provider>> = vec![None; names.len()];
        for (name, provider) in self.providers {
            let Some(i) = names.iter().position(|n| *n == name) else {
                return Err(ModelError::UnknownProvider { upstream: name });
            };
            providers[i] = Some(provider);
        }
        let providers = names
            .iter()
            .zip(providers)
            .map(|(name, p)| {
                let provider = p.unwrap_or_default();
                let keys = Keys::new(&provider, &format!("providers.{name}"))?;
                Ok(ArcSwap::from_pointee(Upstream { provider, keys }))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let shared = Shared::new(self.catalog, names.into(), providers.into())?;
        Ok(ModelRouter {
            upstreams: services.into(),
            shared: Arc::new(shared),
            config: Arc::new(Config {
                source: self.source,
                body_limit: self.body_limit,
                sticky: self.sticky,
                sticky_seed: HashSeed::new(self.sticky_seed),
                version_header: self.version_header,
                response_header: self.response_header,
                fallback_on: self.fallback_on,
                models_path: self.models_path,
                rng: self.rng,
                unsupported: self.unsupported,
                usage_hook: self.usage_hook,
                admit: self.admit,
            }),
        })
    }
}

impl<S> fmt::Debug for ModelRouterBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelRouterBuilder")
            .field("catalog", &self.catalog)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}
