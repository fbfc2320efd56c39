//! Checking a [`GatewayConfig`] and assembling its pipelines, reusing the
//! state of the gateway it replaces.

use std::collections::HashMap;
use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Method, Request, Response};
use http_body::Body;
use tower::{Layer, Service, ServiceExt};

use super::config::RateLimitConfig;
#[cfg(feature = "redis")]
use super::config::RedisFailureConfig;
use super::config::{
    ApiKeyConfig, GatewayConfig, KeyConfig, QuotaConfig, RedisConfig, RouteConfig, UpstreamConfig,
};
use super::{ConfigError, ConfigProblem, GatewayBody};
use crate::auth::{ApiKey, ApiKeyLayer, Identity, RequireScopes};
use crate::key::{KeyBy, TrustedProxies};
use crate::model::{ModelHandle, ModelRouter, OpenAiErrorsLayer};
use crate::proxy::{BoxError, Upstream};
use crate::ratelimit::{MonotonicClock, Quota, RateLimitHandle, RateLimitLayer};
use crate::split::{Split, SplitHandle};
use crate::transform::{TransformHandle, TransformLayer};

/// A route's whole pipeline, or the part of it under a layer, type-erased:
/// a clone shares it (a reference count, where a boxed clonable service
/// would clone every layer into a new box per request), and each call
/// clones the service inside and boxes one future.
///
/// Always ready: the service's own readiness is awaited in the future
/// ([`Oneshot`](tower::util::Oneshot)), as the gateway awaited it for each
/// request anyway.
#[derive(Clone)]
pub(crate) struct Pipeline(Arc<dyn ErasedService>);

/// The future of a [`Pipeline`].
pub(crate) type PipelineFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<GatewayBody>, Infallible>> + Send>,
>;

trait ErasedService: Send + Sync {
    fn call(&self, req: Request<GatewayBody>) -> PipelineFuture;
}

/// A service behind a [`Pipeline`].
struct Erased<S>(S);

/// A split of upstreams behind a [`Pipeline`]: called in place
/// ([`Split::call_shared`]), not cloned per request.
struct ErasedSplit(Split<Upstream>);

impl ErasedService for ErasedSplit {
    fn call(&self, req: Request<GatewayBody>) -> PipelineFuture {
        Box::pin(Boxed {
            inner: self.0.call_with(req, Upstream::call_ref),
        })
    }
}

impl<S, B> ErasedService for Erased<S>
where
    S: Service<Request<GatewayBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn call(&self, req: Request<GatewayBody>) -> PipelineFuture {
        // `Dispatch` calls a service that is ready at once (every layer of
        // a route is, but for a limiter at its cap), so the request is not
        // moved into a waiting state and out again as `oneshot` would.
        Box::pin(Boxed {
            inner: crate::split::Dispatch::new(self.0.clone(), req),
        })
    }
}

pin_project_lite::pin_project! {
    /// A pipeline's response with its body boxed (see
    /// [`box_body`](crate::proxy::box_body)).
    struct Boxed<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B> std::future::Future for Boxed<F>
where
    F: std::future::Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<GatewayBody>, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map_ok(|res| res.map(crate::proxy::box_body))
    }
}

impl Pipeline {
    /// [`Service::call`] without `&mut` and without a clone: the gateway
    /// calls a route's pipeline in place (no reference count taken and
    /// given back on a line every serving thread shares).
    pub(crate) fn call_ref(&self, req: Request<GatewayBody>) -> PipelineFuture {
        self.0.call(req)
    }
}

impl Service<Request<GatewayBody>> for Pipeline {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = PipelineFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<GatewayBody>) -> PipelineFuture {
        self.call_ref(req)
    }
}

/// Everything built from one config.
pub(crate) struct State {
    pub(crate) config: GatewayConfig,
    pub(crate) routes: Vec<BuiltRoute>,
    pub(crate) upstreams: HashMap<String, (UpstreamConfig, Upstream)>,
    /// A digest of the TLS files each upstream read (`ca_file`, client
    /// certificate and key), to rebuild it on reload when they changed.
    pub(crate) tls_files: HashMap<String, [u8; 32]>,
    /// The upstreams' discovery sources being followed, kept with their
    /// upstream across reloads.
    pub(crate) discoveries: HashMap<String, Arc<crate::discovery::Discovery>>,
    pub(crate) auth: Option<ApiKeyLayer>,
    /// `[jwt]`, for routes with `auth.jwt`.
    #[cfg(feature = "jwt")]
    pub(crate) jwt: Option<super::jwt::BuiltJwt>,
    /// The admin API's key check (`admin.keys`), when it has keys.
    pub(crate) admin_auth: Option<ApiKeyLayer>,
    /// `pre_auth_limit`: in front of every route.
    pub(crate) pre_auth: Option<(RateLimitLayer, RateLimitHandle)>,
    /// The connection shared rate limits use, with the settings it was
    /// made from.
    pub(crate) redis: Option<SharedRedis>,
    /// The first step of every request: the upgrades every upstream
    /// allows between them.
    pub(crate) ingress: crate::ingress::Sanitize,
    /// The routes' APIs, and where their runtime changes are kept.
    pub(crate) platform: super::platform::Platform,
}

/// The Redis connection of `[redis]` (feature `redis`; without it, a
/// `[redis]` section is refused and this is never made).
#[derive(Clone)]
pub(crate) struct SharedRedis {
    pub(crate) config: RedisConfig,
    #[cfg(feature = "redis")]
    conn: crate::redis_conn::RedisConnection,
    /// For connections of their own (subscriptions, the platform's
    /// blocking ones).
    #[cfg(feature = "redis")]
    target: crate::redis_conn::RedisTarget,
}

impl SharedRedis {
    /// The connection (a clone shares it).
    #[cfg(feature = "redis")]
    pub(crate) fn connection(&self) -> crate::redis_conn::RedisConnection {
        self.conn.clone()
    }

    /// Where the Redis is, to open connections of one's own.
    #[cfg(feature = "redis")]
    pub(crate) fn target(&self) -> crate::redis_conn::RedisTarget {
        self.target.clone()
    }
}

/// One route, with the handles the admin API needs.
pub(crate) struct BuiltRoute {
    pub(crate) name: String,
    pub(crate) config: RouteConfig,
    pub(crate) matcher: Matcher,
    pub(crate) service: Pipeline,
    pub(crate) split: Option<BuiltSplit>,
    pub(crate) model: Option<(ModelRouter<Upstream>, ModelHandle)>,
    /// The model router's meter (`[routes.model.spend]`).
    pub(crate) spend: Option<super::spend::BuiltMeter>,
    pub(crate) limiter: Option<(RateLimitLayer, RateLimitHandle)>,
    /// A rate limit counted in Redis instead, with the `[redis]` it was
    /// built for.
    #[cfg(feature = "redis")]
    pub(crate) shared_limiter: Option<(RedisConfig, crate::ratelimit::redis::RedisRateLimitLayer)>,
    pub(crate) transform: Option<(TransformLayer, TransformHandle)>,
    /// A prompt route's API: its versions are a split.
    pub(crate) prompt: Option<crate::platform::prompt::PromptHandle>,
    /// `mirror`: shadow traffic.
    #[cfg(feature = "mirror")]
    pub(crate) mirror: Option<super::mirror::BuiltMirror>,
    pub(crate) counters: Arc<RouteCounters>,
}

pub(crate) struct BuiltSplit {
    pub(crate) split: Split<Upstream>,
    pub(crate) handle: SplitHandle,
}

/// Which requests a route takes.
pub(crate) struct Matcher {
    prefix: String,
    host: Option<String>,
    methods: Vec<Method>,
    /// An API version chosen by header (`api.version_header`): the
    /// header's name, and this route's version.
    version: Option<(HeaderName, String)>,
}

impl Matcher {
    pub(crate) fn matches<B>(&self, req: &Request<B>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(req.method()) {
            return false;
        }
        if let Some((name, version)) = &self.version
            && req.headers().get(name).map(|v| v.as_bytes()) != Some(version.as_bytes())
        {
            return false;
        }
        if let Some(host) = &self.host {
            let given = req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().host());
            // `[::1]:8080` is `::1`; `example.com.` is `example.com`.
            let given = given.map(crate::ingress::host_name);
            if !given.is_some_and(|g| g.eq_ignore_ascii_case(crate::ingress::host_name(host))) {
                return false;
            }
        }
        // Without `;` parameters: what a server that drops them serves.
        let path = crate::path::without_params(req.uri().path());
        match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/') || self.prefix.is_empty(),
            None => false,
        }
    }
}

/// Requests and responses of a route, by status class.
#[derive(Debug, Default)]
pub(crate) struct RouteCounters {
    /// Requests matched ([`RouteCounters::REQUESTS`]), then responses by
    /// status class, 1xx to 5xx: each thread's own (every request adds to
    /// them).
    pub(crate) counts: crate::per_thread::Counters<6>,
    /// The refusals of the route's scope check (`auth.scopes`).
    pub(crate) scopes: Arc<crate::auth::ScopeCounters>,
}

impl RouteCounters {
    /// Where `counts` keeps the requests matched.
    pub(crate) const REQUESTS: usize = 0;

    /// Where `counts` keeps the responses of `class` (0 for 1xx to 4 for
    /// 5xx).
    pub(crate) const fn class(class: usize) -> usize {
        1 + class
    }
}

// === building ===

#[derive(Default)]
pub(crate) struct Problems(Vec<ConfigProblem>);

impl Problems {
    pub(crate) fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: self.0 })
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn push(&mut self, at: impl Into<String>, message: impl std::fmt::Display) {
        self.0.push(ConfigProblem {
            at: at.into(),
            message: message.to_string(),
        });
    }
}

/// What a reload changes in live objects it keeps (keys, weights, rules,
/// quotas, catalogs), held back until the whole configuration has been
/// built: nothing live is touched by a configuration that is refused.
#[derive(Default)]
#[must_use = "a reload's changes take effect only when applied"]
pub(crate) struct Changes(Vec<Change>);

pub(crate) enum Change {
    Keys(crate::auth::ApiKeyHandle, Vec<ApiKey>),
    /// An API moved by a reload that changed its `stage`.
    Stage(
        crate::platform::lifecycle::LifecycleHandle,
        crate::platform::lifecycle::Stage,
    ),
    /// An API's subscription policy changed by a reload.
    Policy(
        crate::platform::subscription::Subscriptions,
        String,
        crate::platform::subscription::Policy,
    ),
    Weights(SplitHandle, Vec<(String, u32)>),
    Catalog(ModelHandle, crate::model::Catalog),
    /// API keys read again (a reused router's providers are unchanged,
    /// but a key in a file or variable may have been rotated).
    ProviderKeys(
        ModelHandle,
        Vec<std::sync::Arc<crate::model::handle::Upstream>>,
    ),
    Rules(TransformHandle, crate::transform::Rules),
    /// A kept limiter's quotas, tiers, dry-run and allow list.
    Quotas(RateLimitHandle, crate::ratelimit::Settings),
    /// A reused mirror's share, changed by a reload.
    #[cfg(feature = "mirror")]
    MirrorPercent(crate::mirror::MirrorHandle, f64),
    /// A reused meter's prices, read again.
    Prices(
        crate::spend::Meter,
        std::sync::Arc<crate::spend::PriceCatalog>,
    ),
}

impl Changes {
    pub(crate) fn push(&mut self, change: Change) {
        self.0.push(change);
    }

    /// Applies every change, in order. If one fails (the configuration
    /// was checked on fresh objects first, so none should), those already
    /// applied are put back as they were and the error is returned.
    pub(crate) fn apply(self) -> Result<(), ConfigError> {
        let mut undo: Vec<Change> = Vec::with_capacity(self.0.len());
        for change in self.0 {
            let before = change.current();
            match change.apply() {
                Ok(()) => undo.push(before),
                Err(problem) => {
                    for change in undo.into_iter().rev() {
                        // The values were in force a moment ago.
                        let _ = change.apply();
                    }
                    return Err(ConfigError {
                        problems: vec![problem],
                    });
                }
            }
        }
        Ok(())
    }
}

impl Change {
    /// The same kind of change, back to what the live object holds now.
    fn current(&self) -> Change {
        match self {
            Change::Keys(h, _) => Change::Keys(h.clone(), h.keys()),
            Change::Stage(h, _) => Change::Stage(h.clone(), h.stage()),
            Change::Policy(s, api, p) => {
                Change::Policy(s.clone(), api.clone(), s.policy(api).unwrap_or(*p))
            }
            Change::Weights(h, _) => Change::Weights(
                h.clone(),
                h.weights()
                    .iter()
                    .map(|(name, w)| (name.to_owned(), w))
                    .collect(),
            ),
            Change::Catalog(h, _) => Change::Catalog(h.clone(), h.catalog()),
            Change::ProviderKeys(h, _) => Change::ProviderKeys(h.clone(), h.current_keys()),
            Change::Rules(h, _) => Change::Rules(h.clone(), h.rules()),
            Change::Quotas(h, _) => Change::Quotas(h.clone(), h.settings()),
            Change::Prices(m, _) => Change::Prices(m.clone(), m.prices()),
            #[cfg(feature = "mirror")]
            Change::MirrorPercent(h, _) => Change::MirrorPercent(h.clone(), h.percent()),
        }
    }

    fn apply(self) -> Result<(), ConfigProblem> {
        let problem = |at: &str, e: &dyn std::fmt::Display| ConfigProblem {
            at: at.to_owned(),
            message: e.to_string(),
        };
        match self {
            Change::Keys(h, keys) => h.set_keys(keys).map_err(|e| problem("api_keys", &e)),
            // Undone only where the lifecycle allows the way back.
            Change::Stage(h, to) if h.stage() == to => Ok(()),
            Change::Stage(h, to) => h
                .transition(to, "config")
                .map(drop)
                .map_err(|e| problem("routes.api.stage", &e)),
            Change::Policy(s, api, policy) => s
                .set_policy(&api, policy)
                .map_err(|e| problem("routes.api.subscription", &e)),
            Change::Weights(h, weights) => h.set_weights(weights).map_err(|e| problem("split", &e)),
            Change::Catalog(h, catalog) => h.set_catalog(catalog).map_err(|e| problem("model", &e)),
            Change::ProviderKeys(h, keys) => {
                h.store_keys(keys);
                Ok(())
            }
            Change::Rules(h, rules) => h.set_rules(rules).map_err(|e| problem("transform", &e)),
            Change::Quotas(h, settings) => h
                .set_settings(settings)
                .map_err(|e| problem("rate_limit", &e)),
            Change::Prices(m, prices) => {
                m.set_prices(prices);
                Ok(())
            }
            #[cfg(feature = "mirror")]
            Change::MirrorPercent(h, percent) => {
                h.set_percent(percent);
                Ok(())
            }
        }
    }
}

/// Builds the state for `config`, reusing what `old` has for routes,
/// targets and upstreams that still exist, and the changes to make to the
/// live objects it reuses (see [`Changes`]). Every problem is reported.
pub(crate) fn build(
    config: GatewayConfig,
    old: Option<&State>,
) -> Result<(State, Changes), ConfigError> {
    let mut problems = Problems(Vec::new());
    let mut changes = Changes::default();

    // Upstreams: kept when their configuration and the TLS files it names
    // are unchanged.
    let mut upstreams = HashMap::new();
    let mut rebuilt = Vec::new();
    let mut tls_files = HashMap::new();
    let mut discoveries = HashMap::new();
    for (name, uc) in &config.upstreams {
        let files = tls_files_digest(uc);
        let reused = old
            .and_then(|o| o.upstreams.get(name).zip(Some(&o.tls_files)))
            .filter(|((c, _), digests)| c == uc && digests.get(name) == files.as_ref())
            .map(|((_, u), _)| u.clone());
        if let Some(files) = files {
            tls_files.insert(name.clone(), files);
        }
        let upstream = match reused {
            Some(u) => {
                if let Some(d) = old.and_then(|o| o.discoveries.get(name)) {
                    discoveries.insert(name.clone(), Arc::clone(d));
                }
                Some(u)
            }
            None => {
                rebuilt.push(name.clone());
                let mut b = Upstream::builder(&uc.url)
                    .http2(uc.http2)
                    .preserve_host(uc.preserve_host);
                if let Some(ms) = uc.connect_timeout_ms {
                    b = b.connect_timeout(Some(Duration::from_millis(ms)));
                }
                match uc.response_timeout_ms {
                    Some(0) => b = b.no_response_timeout(),
                    Some(ms) => b = b.response_timeout(Duration::from_millis(ms)),
                    None => {}
                }
                if let Some(max) = uc.max_in_flight {
                    b = b.max_in_flight(max);
                }
                if let Some(max) = uc.max_pending {
                    b = b.max_pending(max);
                }
                if let Some(protocols) = &uc.upgrade_protocols {
                    b = b.upgrade_protocols(protocols.iter().cloned());
                }
                if uc.forwarded_for == Some(super::config::ForwardedForConfig::Replace) {
                    b = b.forwarded_for(crate::proxy::ForwardedFor::Replace);
                }
                if uc.real_ip_header == Some(false) {
                    b = b.real_ip_header(false);
                }
                if !uc.trusted_proxies.is_empty() {
                    match TrustedProxies::new(&uc.trusted_proxies) {
                        Ok(t) => b = b.trusted_proxies(t),
                        Err(e) => problems.push(format!("upstreams.{name}.trusted_proxies"), e),
                    }
                }
                if let Some(path) = &uc.ca_file {
                    let at = format!("upstreams.{name}.ca_file");
                    #[cfg(feature = "tls")]
                    match std::fs::read(path) {
                        Ok(pem) => b = b.root_certificates_pem(pem),
                        Err(e) => problems.push(at, format!("cannot read `{path}`: {e}")),
                    }
                    #[cfg(not(feature = "tls"))]
                    problems.push(at, format!("`{path}`: needs switchyard's `tls` feature"));
                }
                let at = format!("upstreams.{name}");
                match client_files(
                    &uc.client_cert_file,
                    &uc.client_key_file,
                    &at,
                    &mut problems,
                ) {
                    None => {}
                    Some((cert, key)) => {
                        #[cfg(feature = "tls")]
                        {
                            let mut read = |field: &str, path: &str| {
                                std::fs::read(path)
                                    .map_err(|e| {
                                        problems.push(
                                            format!("upstreams.{name}.{field}"),
                                            format!("cannot read `{path}`: {e}"),
                                        );
                                    })
                                    .ok()
                            };
                            let cert = read("client_cert_file", cert);
                            let key = read("client_key_file", key);
                            if let (Some(cert), Some(key)) = (cert, key) {
                                b = b.client_certificate_pem(cert, key);
                            }
                        }
                        #[cfg(not(feature = "tls"))]
                        {
                            let _ = key;
                            problems.push(
                                format!("upstreams.{name}.client_cert_file"),
                                format!("`{cert}`: needs switchyard's `tls` feature"),
                            );
                        }
                    }
                }
                if let Some(ms) = uc.upgrade_idle_timeout_ms {
                    b = b.upgrade_idle_timeout((ms > 0).then(|| Duration::from_millis(ms)));
                }
                for url in &uc.endpoints {
                    b = b.endpoint(url);
                }
                if uc.eject_failures == Some(0) {
                    problems.push(
                        format!("upstreams.{name}.eject_failures"),
                        "must be above 0",
                    );
                }
                b = b
                    .eject_after(
                        uc.eject_failures.unwrap_or(3),
                        Duration::from_millis(uc.eject_ms.unwrap_or(10_000)),
                    )
                    .eject_on_5xx(uc.eject_on_5xx);
                if let Some(balance) = uc.balance {
                    b = b.balance(match balance {
                        super::config::BalanceConfig::RoundRobin => {
                            crate::proxy::Balance::RoundRobin
                        }
                        super::config::BalanceConfig::LeastRequests => {
                            crate::proxy::Balance::LeastRequests
                        }
                    });
                }
                if let Some(hc) = &uc.health_check {
                    let ms = |v: Option<u64>, default| Duration::from_millis(v.unwrap_or(default));
                    b = b.health_check(
                        crate::proxy::HealthCheck::get(hc.path.clone())
                            .interval(ms(hc.interval_ms, 5000))
                            .timeout(ms(hc.timeout_ms, 1000))
                            .unhealthy_after(hc.unhealthy_after.unwrap_or(2))
                            .healthy_after(hc.healthy_after.unwrap_or(2)),
                    );
                }
                let source = uc
                    .discovery
                    .as_ref()
                    .and_then(|dc| discovery_source(name, uc, dc, &mut problems));
                match b.build() {
                    Ok(u) => {
                        if let Some((source, refresh)) = source {
                            discoveries.insert(
                                name.clone(),
                                Arc::new(crate::discovery::follow(&u, source, refresh)),
                            );
                        }
                        Some(u)
                    }
                    Err(e) => {
                        let field = match &e {
                            crate::proxy::ProxyError::InvalidUrl { url, .. } if *url != uc.url => {
                                "endpoints"
                            }
                            crate::proxy::ProxyError::HealthCheck { .. } => "health_check",
                            _ => "url",
                        };
                        problems.push(format!("upstreams.{name}.{field}"), e);
                        None
                    }
                }
            }
        };
        if let Some(u) = upstream {
            upstreams.insert(name.clone(), (uc.clone(), u));
        }
    }

    // Redis, for shared rate limits.
    let redis = config
        .redis
        .as_ref()
        .and_then(|rc| shared_redis(rc, old, &mut problems));

    if let Some(ws) = &config.weight_sync {
        if !cfg!(feature = "redis") {
            problems.push("weight_sync", "needs switchyard's `redis` feature");
        } else if config.redis.is_none() {
            problems.push("weight_sync", "no `[redis]` is configured");
        }
        if ws.interval_ms == Some(0) {
            problems.push("weight_sync.interval_ms", "must be above 0");
        }
        if ws.timeout_ms == Some(0) {
            problems.push("weight_sync.timeout_ms", "must be above 0");
        }
        if ws.check_interval_ms == Some(0) {
            problems.push("weight_sync.check_interval_ms", "must be above 0");
        }
    }

    // The routes' APIs: lifecycles, subscriptions, the state file.
    let platform = super::platform::build(
        &config,
        old.map(|o| &o.platform),
        redis.as_ref(),
        &mut problems,
        &mut changes,
    );

    // API keys: one layer for every route, changed in place on reload.
    let keys = api_keys(&config.api_keys, "api_keys", &mut problems);
    // Less those revoked, plus those added, through the admin API.
    let keys = platform.keys.merged(keys);
    let needs_auth = config
        .routes
        .iter()
        .any(|r| r.auth.as_ref().is_some_and(|a| !a.jwt));
    #[cfg(feature = "jwt")]
    let jwt = super::jwt::build(&config, old.and_then(|o| o.jwt.as_ref()), &mut problems);
    #[cfg(not(feature = "jwt"))]
    if config.jwt.is_some() {
        problems.push("jwt", "this build has no JWT support (feature `jwt`)");
    }
    let auth = match old.and_then(|o| o.auth.clone()) {
        Some(layer) => {
            // The whole set swapped at once when the reload is applied: a
            // key in both configs is accepted throughout.
            changes.push(Change::Keys(layer.handle(), keys));
            Some(layer)
        }
        None if needs_auth => match ApiKeyLayer::builder().keys(keys).build() {
            Ok(layer) => Some(layer),
            Err(e) => {
                problems.push("api_keys", e);
                None
            }
        },
        None => None,
    };

    // The admin API's keys: one layer, kept across reloads, so that a key
    // taken out of `admin.keys` stops working with the reload.
    let admin_keys = api_keys(&config.admin.keys, "admin.keys", &mut problems);
    let admin_auth = match old.and_then(|o| o.admin_auth.clone()) {
        Some(layer) => {
            changes.push(Change::Keys(layer.handle(), admin_keys));
            Some(layer)
        }
        None if !admin_keys.is_empty() => match ApiKeyLayer::builder()
            .keys(admin_keys)
            .realm("switchyard admin")
            .build()
        {
            Ok(layer) => Some(layer),
            Err(e) => {
                problems.push("admin.keys", e);
                None
            }
        },
        None => None,
    };

    // The limit before authentication, shared by every route.
    let pre_auth = config
        .pre_auth_limit
        .as_ref()
        .and_then(|rl| pre_auth_limiter(rl, old, &mut problems, &mut changes));

    // Routes.
    let mut routes = Vec::with_capacity(config.routes.len());
    let mut names = Vec::new();
    for (i, rc) in config.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if rc.name.is_empty() {
            problems.push(format!("{at}.name"), "a route needs a name");
        } else if names.contains(&rc.name) {
            problems.push(
                format!("{at}.name"),
                format!("route `{}` is named twice", rc.name),
            );
        }
        names.push(rc.name.clone());
        let old_route = old.and_then(|o| o.routes.iter().find(|r| r.name == rc.name));
        let old_upstreams = old.map(|o| &o.upstreams);
        let common = Common {
            upstreams: &upstreams,
            rebuilt: &rebuilt,
            old_upstreams,
            auth: auth.as_ref(),
            #[cfg(feature = "jwt")]
            jwt: jwt.as_ref().map(|j| &j.layer),
            pre_auth: pre_auth.as_ref().map(|(layer, _)| layer),
            redis: redis.as_ref(),
            platform: &platform,
            config: &config,
            built: &routes,
        };
        if let Some(route) = build_route(rc, &at, &common, old_route, &mut problems, &mut changes) {
            routes.push(route);
        }
    }

    super::rollouts::check(&config, &routes, &mut problems);
    problems.into_result()?;
    let mut protocols: Vec<String> = config
        .upstreams
        .values()
        .flat_map(|u| {
            u.upgrade_protocols
                .clone()
                .unwrap_or_else(|| vec!["websocket".to_owned()])
        })
        .collect();
    protocols.sort_unstable();
    protocols.dedup();
    let ingress = crate::ingress::Sanitize::new().upgrade_protocols(protocols);
    Ok((
        State {
            config,
            routes,
            upstreams,
            tls_files,
            discoveries,
            auth,
            #[cfg(feature = "jwt")]
            jwt,
            admin_auth,
            pre_auth,
            redis,
            ingress,
            platform,
        },
        changes,
    ))
}

/// The connection for `[redis]`: the old one when the settings did not
/// change. The connection is made lazily (and remade when lost) by the
/// first check.
///
/// For `rediss://` (feature `tls`), `ca_file` and the client certificate
/// are read and checked here, so that a bad file is a problem of this
/// config rather than a connection that never comes up; and rustls's ring
/// provider is installed as the process default unless one is installed
/// already, because the `redis` crate builds its TLS settings from that
/// default (see [`crate::ratelimit::redis`]).
fn shared_redis(
    rc: &RedisConfig,
    old: Option<&State>,
    problems: &mut Problems,
) -> Option<SharedRedis> {
    if let Some(same) = old
        .and_then(|o| o.redis.as_ref())
        .filter(|r| r.config == *rc)
    {
        return Some(same.clone());
    }
    #[cfg(feature = "redis")]
    {
        let before = problems.0.len();
        if rc.fail_closed
            && rc
                .on_failure
                .is_some_and(|f| f != RedisFailureConfig::Reject)
        {
            problems.push(
                "redis.fail_closed",
                "contradicts `on_failure`: keep one of the two",
            );
        }
        if rc.replicas == Some(0) {
            problems.push("redis.replicas", "must be at least 1");
        } else if rc.replicas.is_some() && rc.on_failure != Some(RedisFailureConfig::Local) {
            problems.push(
                "redis.replicas",
                "only counts with `on_failure = \"local\"`",
            );
        }
        let target = super::redis_target::target(rc, problems)?;
        if problems.len() > before {
            return None;
        }
        // The connection runs tasks: it needs the runtime the gateway
        // will serve on.
        if tokio::runtime::Handle::try_current().is_err() {
            problems.push(
                "redis",
                "build the gateway inside a Tokio runtime to use Redis",
            );
            return None;
        }
        Some(SharedRedis {
            config: rc.clone(),
            conn: target.connection(),
            target,
        })
    }
    #[cfg(not(feature = "redis"))]
    {
        super::redis_target::refuse(rc, problems);
        None
    }
}

/// The identity an API key stands for.
pub(crate) fn key_identity(
    id: &str,
    tenant: Option<&str>,
    scopes: &[String],
    tier: Option<&str>,
) -> Identity {
    let mut identity = Identity::new(id).with_scopes(scopes.iter().cloned());
    if let Some(t) = tenant {
        identity = identity.with_tenant(t);
    }
    if let Some(t) = tier {
        identity = identity.with_tier(t);
    }
    identity
}

/// The configuration's `api_keys` as keys (those it refuses left out: a
/// configuration in force has none).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn configured_keys(config: &GatewayConfig) -> Vec<ApiKey> {
    api_keys(&config.api_keys, "api_keys", &mut Problems(Vec::new()))
}

/// The label an admin key's identity carries its `team` in.
pub(crate) const ADMIN_TEAM: &str = "switchyard.admin.team";
/// The label that marks a read-only admin key's identity.
pub(crate) const ADMIN_READ_ONLY: &str = "switchyard.admin.read_only";

pub(crate) fn api_keys(list: &[ApiKeyConfig], at: &str, problems: &mut Problems) -> Vec<ApiKey> {
    let mut keys = Vec::new();
    for (i, k) in list.iter().enumerate() {
        let here = format!("{at}[{i}]");
        if k.id.is_empty() {
            problems.push(format!("{here}.id"), "a key needs an identity id");
            continue;
        }
        let mut identity = key_identity(&k.id, k.tenant.as_deref(), &k.scopes, k.tier.as_deref());
        if at == "admin.keys" {
            if let Some(team) = &k.team {
                identity = identity.with_label(ADMIN_TEAM, team.clone());
            }
            if k.read_only {
                identity = identity.with_label(ADMIN_READ_ONLY, "true");
            }
        } else if k.team.is_some() || k.read_only {
            problems.push(
                here.clone(),
                "`team` and `read_only` are for admin keys (`admin.keys`)",
            );
        }
        match (&k.key, &k.digest) {
            (Some(key), None) => keys.push(ApiKey::new(key, identity)),
            (None, Some(digest)) => match ApiKey::from_digest(digest, identity) {
                Ok(key) => keys.push(key),
                Err(e) => problems.push(format!("{here}.digest"), e),
            },
            _ => problems.push(here, "give exactly one of `key` and `digest`"),
        }
    }
    keys
}

pub(crate) fn key_by(key: &KeyConfig, at: &str, problems: &mut Problems) -> Option<KeyBy> {
    Some(match key {
        KeyConfig::Global => KeyBy::global(),
        KeyConfig::PeerIp => KeyBy::peer_ip(),
        KeyConfig::Identity => KeyBy::identity(),
        KeyConfig::ClientIp(ranges) => match TrustedProxies::new(ranges.iter().map(String::as_str))
        {
            Ok(t) => KeyBy::client_ip(t),
            Err(e) => {
                problems.push(at, e);
                return None;
            }
        },
        KeyConfig::Header(name) => match HeaderName::from_str(name) {
            Ok(h) => KeyBy::header(h),
            Err(_) => {
                problems.push(at, format!("invalid header name `{name}`"));
                return None;
            }
        },
        KeyConfig::Cookie(name) => KeyBy::cookie(name.clone()),
    })
}

/// `"1s"`, `"500ms"`, `"2m"`, `"1h"`, `"1d"`.
pub(crate) fn period(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok().filter(|&n| n > 0)?;
    Some(match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        "d" => Duration::from_secs(n.checked_mul(86_400)?),
        _ => return None,
    })
}

pub(crate) fn quotas(list: &[QuotaConfig], at: &str, problems: &mut Problems) -> Vec<Quota> {
    let mut out = Vec::new();
    for (i, q) in list.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let Some(p) = period(&q.period) else {
            problems.push(
                format!("{here}.period"),
                format!("invalid period `{}` (use 500ms, 1s, 1m, 1h, 1d)", q.period),
            );
            continue;
        };
        if q.limit == 0 {
            problems.push(
                format!("{here}.limit"),
                "a quota allows at least one request",
            );
            continue;
        }
        let mut quota = Quota::new(q.limit, p);
        if let Some(b) = q.burst {
            quota = quota.burst(b);
        }
        if let Some(n) = &q.name {
            quota = quota.named(n.clone());
        }
        out.push(quota);
    }
    out
}

/// What every route is built from besides its own configuration.
struct Common<'a> {
    upstreams: &'a HashMap<String, (UpstreamConfig, Upstream)>,
    /// The upstreams built anew rather than kept from the old state.
    rebuilt: &'a [String],
    old_upstreams: Option<&'a HashMap<String, (UpstreamConfig, Upstream)>>,
    auth: Option<&'a ApiKeyLayer>,
    #[cfg(feature = "jwt")]
    jwt: Option<&'a crate::auth::JwtLayer>,
    pre_auth: Option<&'a RateLimitLayer>,
    redis: Option<&'a SharedRedis>,
    platform: &'a super::platform::Platform,
    config: &'a GatewayConfig,
    /// The routes built before this one (a prompt route's model route).
    built: &'a [BuiltRoute],
}

fn build_route(
    rc: &RouteConfig,
    at: &str,
    common: &Common<'_>,
    old: Option<&BuiltRoute>,
    problems: &mut Problems,
    changes: &mut Changes,
) -> Option<BuiltRoute> {
    let Common {
        upstreams,
        rebuilt,
        old_upstreams,
        auth,
        #[cfg(feature = "jwt")]
        jwt,
        pre_auth,
        redis,
        platform,
        config,
        built,
    } = *common;
    let before = problems.0.len();
    let prefix = rc.path_prefix.clone().unwrap_or_else(|| "/".to_owned());
    if !prefix.starts_with('/') {
        problems.push(format!("{at}.path_prefix"), "must start with `/`");
    }
    let mut methods = Vec::new();
    for (j, m) in rc.methods.iter().enumerate() {
        match Method::from_bytes(m.as_bytes()) {
            Ok(m) => methods.push(m),
            Err(_) => problems.push(
                format!("{at}.methods[{j}]"),
                format!("invalid method `{m}`"),
            ),
        }
    }
    let version = rc.api.as_ref().and_then(|api| {
        let name = api.version_header.as_ref()?;
        match HeaderName::from_str(name) {
            Ok(name) => Some((name, api.version.clone())),
            Err(_) => {
                problems.push(
                    format!("{at}.api.version_header"),
                    format!("invalid header name `{name}`"),
                );
                None
            }
        }
    });
    let matcher = Matcher {
        prefix: prefix.trim_end_matches('/').to_owned(),
        host: rc.host.clone(),
        methods,
        version,
    };

    // The terminal service: a split or a model router.
    let mut split = None;
    let mut model = None;
    let mut spend = None;
    let mut prompt = None;
    let kinds = usize::from(rc.split.is_some())
        + usize::from(rc.model.is_some())
        + usize::from(rc.catalog)
        + usize::from(rc.prompt.is_some());
    let terminal: Option<Pipeline> = match (&rc.split, &rc.model) {
        _ if kinds != 1 => {
            problems.push(
                at,
                "a route needs exactly one of `split`, `model`, `catalog` and `prompt`",
            );
            None
        }
        (None, None) if rc.prompt.is_some() => {
            let pc = rc.prompt.as_ref().expect("checked");
            prompt_api(pc, at, built, old, problems).map(|(service, handle)| {
                prompt = Some(handle);
                service
            })
        }
        (None, None) if rc.catalog => {
            if rc.api.is_some() {
                problems.push(format!("{at}.api"), "a catalog route is not an API");
            }
            super::platform::catalog(config, platform, &prefix, at, problems).map(boxed)
        }
        (Some(_), Some(_)) | (None, None) => unreachable!("one kind, checked above"),
        (Some(sc), None) => {
            let here = format!("{at}.split");
            let mut targets = Vec::new();
            for (j, t) in sc.targets.iter().enumerate() {
                match upstreams.get(&t.upstream) {
                    Some((_, u)) => targets.push((t, u.clone())),
                    None => problems.push(
                        format!("{here}.targets[{j}].upstream"),
                        format!("unknown upstream `{}`", t.upstream),
                    ),
                }
            }
            let sticky = sc
                .sticky
                .as_ref()
                .and_then(|k| key_by(k, &format!("{here}.sticky"), problems));
            let header = |h: &Option<String>, field: &str, problems: &mut Problems| {
                h.as_ref().and_then(|h| match HeaderName::from_str(h) {
                    Ok(h) => Some(h),
                    Err(_) => {
                        problems.push(
                            format!("{here}.{field}"),
                            format!("invalid header name `{h}`"),
                        );
                        None
                    }
                })
            };
            let override_header = header(&sc.override_header, "override_header", problems);
            let echo_header = header(&sc.echo_header, "echo_header", problems);

            // Reuse the old split (its counters, in-flight counts and
            // history) when its shape is unchanged; only weights moved.
            let reusable = old.and_then(|o| {
                let old_sc = o.config.split.as_ref()?;
                let same_shape = old_sc.sticky == sc.sticky
                    && old_sc.override_header == sc.override_header
                    && old_sc.override_scope == sc.override_scope
                    && old_sc.echo_header == sc.echo_header
                    && old_sc.targets.len() == sc.targets.len()
                    && old_sc.targets.iter().zip(&sc.targets).all(|(a, b)| {
                        a.name == b.name
                            && a.upstream == b.upstream
                            && !rebuilt.contains(&b.upstream)
                            && upstreams.get(&b.upstream).map(|(c, _)| c)
                                == old_upstreams
                                    .and_then(|m| m.get(&a.upstream))
                                    .map(|(c, _)| c)
                    });
                same_shape.then_some(o.split.as_ref()?)
            });
            if let Some(old_split) = reusable {
                let weights: Vec<(String, u32)> = sc
                    .targets
                    .iter()
                    .map(|t| (t.name.clone(), t.weight))
                    .collect();
                let now = old_split.handle.weights();
                let changed = now
                    .iter()
                    .map(|(n, w)| (n.to_owned(), w))
                    .collect::<Vec<_>>()
                    != weights;
                if changed {
                    changes.push(Change::Weights(old_split.handle.clone(), weights));
                }
                split = Some(BuiltSplit {
                    split: old_split.split.clone(),
                    handle: old_split.handle.clone(),
                });
            } else if targets.len() == sc.targets.len() {
                let mut builder = Split::builder().latency(MonotonicClock::new());
                // Targets that still exist keep their counters and
                // in-flight counts.
                if let Some(old_split) = old.and_then(|o| o.split.as_ref()) {
                    builder = builder.carry_over(&old_split.handle);
                }
                for (t, u) in targets {
                    builder = builder.target(t.name.clone(), u, t.weight);
                }
                if let Some(k) = sticky {
                    builder = builder.sticky(k);
                }
                if let Some(h) = override_header {
                    builder = builder.override_header(h);
                }
                if let Some(scope) = &sc.override_scope {
                    builder = builder.override_scope(scope.clone());
                }
                if let Some(h) = echo_header {
                    builder = builder.echo_header(h);
                }
                match builder.build() {
                    Ok(s) => {
                        let handle = s.handle();
                        split = Some(BuiltSplit { split: s, handle });
                    }
                    Err(e) => problems.push(format!("{here}.targets"), e),
                }
            }
            split
                .as_ref()
                .map(|s| Pipeline(Arc::new(ErasedSplit(s.split.clone()))))
        }
        (None, Some(mc)) => {
            let here = format!("{at}.model");
            spend = mc.spend.as_ref().and_then(|sc| {
                let (built, prices) = super::spend::rebuild(
                    sc,
                    &rc.name,
                    &format!("{here}.spend"),
                    old.and_then(|o| o.spend.as_ref()),
                    redis,
                    problems,
                )?;
                if let Some(prices) = prices {
                    changes.push(Change::Prices(built.1.clone(), prices.into()));
                }
                Some(built)
            });
            let sticky = mc
                .sticky
                .as_ref()
                .and_then(|k| key_by(k, &format!("{here}.sticky"), problems));
            // The router holds the upstreams it was built with: reuse it
            // only when every one of them is unchanged (a changed URL or
            // TLS file builds a new upstream, and so a new router).
            let same_upstreams = old_upstreams.is_some_and(|o| {
                o.len() == upstreams.len() && upstreams.keys().all(|name| o.contains_key(name))
            }) && rebuilt.is_empty();
            let reusable = old.filter(|_| same_upstreams).and_then(|o| {
                let old_mc = o.config.model.as_ref()?;
                (old_mc.sticky == mc.sticky
                    && old_mc.body_limit == mc.body_limit
                    && old_mc.providers == mc.providers
                    && old_mc.unsupported == mc.unsupported
                    && old_mc.spend == mc.spend
                    && old_mc.fallback_on == mc.fallback_on)
                    .then_some(o.model.as_ref()?)
            });
            let built = match reusable {
                Some((router, handle)) => {
                    changes.push(Change::Catalog(handle.clone(), mc.catalog.clone()));
                    match handle.read_keys() {
                        Ok(keys) => changes.push(Change::ProviderKeys(handle.clone(), keys)),
                        Err(e) => problems.push(format!("{here}.providers"), e),
                    }
                    Some((router.clone(), handle.clone()))
                }
                None => {
                    let mut b = ModelRouter::builder().catalog(mc.catalog.clone());
                    for (name, (_, u)) in upstreams {
                        b = b.upstream(name.clone(), u.clone());
                    }
                    if let Some(k) = sticky {
                        b = b.sticky(k);
                    }
                    if let Some(limit) = mc.body_limit {
                        b = b.body_limit(limit);
                    }
                    for (name, provider) in &mc.providers {
                        b = b.provider(name.clone(), provider.clone());
                    }
                    b = b.unsupported(mc.unsupported).fallback_on(mc.fallback_on);
                    if let Some((_, meter)) = &spend {
                        b = b.admit(meter.clone());
                    }
                    match b.build() {
                        Ok(r) => {
                            let h = r.handle();
                            Some((r, h))
                        }
                        Err(e) => {
                            problems.push(format!("{here}.catalog"), e);
                            None
                        }
                    }
                }
            };
            model = built;
            model.as_ref().map(|(r, _)| boxed(r.clone()))
        }
    };

    // Shadow traffic: a copy of what the split (or model router) gets.
    #[cfg(feature = "mirror")]
    let mirror = rc.mirror.as_ref().and_then(|mc| {
        super::mirror::build(
            mc,
            &format!("{at}.mirror"),
            old.and_then(|o| o.mirror.as_ref()),
            upstreams,
            rebuilt,
            problems,
            changes,
        )
    });
    #[cfg(feature = "mirror")]
    let terminal = match (&mirror, terminal) {
        (Some(m), Some(t)) => {
            let inner = t.map_request(|req: Request<crate::body::RequestBody<GatewayBody>>| {
                req.map(crate::proxy::box_body)
            });
            Some(boxed(m.layer.layer(inner)))
        }
        (_, t) => t,
    };
    #[cfg(not(feature = "mirror"))]
    if rc.mirror.is_some() {
        problems.push(
            format!("{at}.mirror"),
            "this build has no shadow traffic (feature `mirror`)",
        );
    }

    // Transform.
    let transform = rc.transform.as_ref().and_then(|rules| {
        let reused = old.and_then(|o| o.transform.as_ref());
        match reused {
            Some((layer, handle)) => {
                changes.push(Change::Rules(handle.clone(), rules.clone()));
                Some((layer.clone(), handle.clone()))
            }
            None => match TransformLayer::new(rules.clone()) {
                Ok(layer) => {
                    let h = layer.handle();
                    Some((layer, h))
                }
                Err(e) => {
                    problems.push(format!("{at}.transform"), e);
                    None
                }
            },
        }
    });

    // Rate limit, counted in Redis.
    #[cfg(feature = "redis")]
    let shared_limiter = rc.rate_limit.as_ref().filter(|rl| rl.redis).and_then(|rl| {
        let place = super::limits::Place::Route {
            authenticated: rc.auth.is_some(),
        };
        shared_limiter(rl, &format!("{at}.rate_limit"), place, redis, old, problems)
    });
    #[cfg(not(feature = "redis"))]
    if rc.rate_limit.as_ref().is_some_and(|rl| rl.redis) {
        // `[redis]` itself was refused already.
        let _ = redis;
        problems.push(
            format!("{at}.rate_limit.redis"),
            "needs switchyard's `redis` feature",
        );
    }

    // Rate limit, in this process.
    let limiter = rc
        .rate_limit
        .as_ref()
        .filter(|rl| !rl.redis)
        .and_then(|rl| {
            let reused = old
                .filter(|o| {
                    o.config
                        .rate_limit
                        .as_ref()
                        .is_some_and(|o| super::limits::same_build(o, rl))
                })
                .and_then(|o| o.limiter.as_ref());
            let place = super::limits::Place::Route {
                authenticated: rc.auth.is_some(),
            };
            local_limiter(
                rl,
                &format!("{at}.rate_limit"),
                place,
                reused,
                problems,
                changes,
            )
        });

    if problems.0.len() > before {
        return None;
    }
    let mut service = terminal?;
    if let Some((layer, _)) = &transform {
        let inner = service.map_request(|req: Request<crate::body::RequestBody<GatewayBody>>| {
            req.map(crate::proxy::box_body)
        });
        service = boxed(layer.layer(inner));
    }
    if let Some((layer, _)) = &limiter {
        service = boxed(layer.layer(service));
    }
    #[cfg(feature = "redis")]
    if let Some((_, layer)) = &shared_limiter {
        service = boxed(layer.layer(service));
    }
    // Inside authentication, which gives the identity that testers,
    // callers and subscribers are known by; a draft or retired version
    // answers before its subscription is looked at.
    if let Some(api) = platform.apis.get(&rc.name) {
        if let Some(layer) = &api.subscription {
            service = boxed(layer.layer(service));
        }
        service = boxed(api.lifecycle.layer(service));
    }
    // Counted by the gateway's response future.
    let counters = old.map_or_else(Default::default, |o| Arc::clone(&o.counters));
    if let Some(a) = &rc.auth {
        if !a.scopes.is_empty() {
            let check = RequireScopes::all(a.scopes.iter().cloned());
            let check = check.counting(Arc::clone(&counters.scopes));
            service = boxed(check.layer(service));
        }
        if a.jwt {
            #[cfg(feature = "jwt")]
            match jwt {
                Some(layer) => service = boxed(layer.layer(service)),
                None => {
                    if config.jwt.is_none() {
                        problems.push(format!("{at}.auth.jwt"), "no `[jwt]` is configured");
                    }
                    return None;
                }
            }
            #[cfg(not(feature = "jwt"))]
            {
                problems.push(
                    format!("{at}.auth.jwt"),
                    "this build has no JWT support (feature `jwt`)",
                );
                return None;
            }
        } else {
            match auth {
                Some(layer) => service = boxed(layer.layer(service)),
                None => return None,
            }
        }
    }
    if let Some(layer) = pre_auth {
        service = boxed(layer.layer(service));
    }
    if rc.model.is_some() {
        // OpenAI clients read every refusal on an AI route in their shape.
        service = boxed(OpenAiErrorsLayer.layer(service));
    }
    Some(BuiltRoute {
        name: rc.name.clone(),
        config: rc.clone(),
        matcher,
        service,
        split,
        model,
        spend,
        limiter,
        #[cfg(feature = "redis")]
        shared_limiter,
        transform,
        prompt,
        #[cfg(feature = "mirror")]
        mirror,
        counters,
    })
}

/// A prompt route's service: its API over the model router of the route
/// it names, counters carried over from the API it replaces. Its weights
/// are the configuration's, as a split's are on a reload
/// ([`Gateway::config`](super::Gateway::config) shows the live ones).
fn prompt_api(
    pc: &super::config::PromptRouteConfig,
    at: &str,
    built: &[BuiltRoute],
    old: Option<&BuiltRoute>,
    problems: &mut Problems,
) -> Option<(Pipeline, crate::platform::prompt::PromptHandle)> {
    let Some(route) = built.iter().find(|r| r.name == pc.model_route) else {
        problems.push(
            format!("{at}.prompt.model_route"),
            format!("no route `{}` before this one", pc.model_route),
        );
        return None;
    };
    let Some((router, _)) = &route.model else {
        problems.push(
            format!("{at}.prompt.model_route"),
            format!("route `{}` has no `model`", pc.model_route),
        );
        return None;
    };
    let mut builder = crate::platform::prompt::PromptApi::builder(pc.api.clone(), router.clone());
    if let Some(key) = &pc.sticky {
        builder = builder.sticky(key_by(key, &format!("{at}.prompt.sticky"), problems)?);
    }
    let old_prompt = old.and_then(|o| o.prompt.as_ref());
    if let Some(old) = old_prompt {
        builder = builder.carry_over(old);
    }
    let api = match builder.build() {
        Ok(api) => api,
        Err(e) => {
            problems.push(format!("{at}.prompt.api"), e);
            return None;
        }
    };
    let handle = api.handle();
    Some((boxed(api), handle))
}

/// `pre_auth_limit`: one limiter for every route, kept across reloads
/// (with its cells) while its key and build options are unchanged (see
/// [`RateLimitConfig`]).
fn pre_auth_limiter(
    rl: &RateLimitConfig,
    old: Option<&State>,
    problems: &mut Problems,
    changes: &mut Changes,
) -> Option<(RateLimitLayer, RateLimitHandle)> {
    let here = "pre_auth_limit";
    if rl.redis {
        problems.push(
            format!("{here}.redis"),
            "the limit before authentication counts in this process",
        );
    }
    if rl.key == KeyConfig::Identity {
        problems.push(
            format!("{here}.key"),
            "no identity is known before authentication: key by `peer_ip` or `client_ip`",
        );
        return None;
    }
    let reused = old
        .filter(|o| {
            o.config
                .pre_auth_limit
                .as_ref()
                .is_some_and(|o| super::limits::same_build(o, rl))
        })
        .and_then(|o| o.pre_auth.as_ref());
    let place = super::limits::Place::PreAuth;
    local_limiter(rl, here, place, reused, problems, changes)
}

/// A rate limit counted in this process, at `here` in the configuration:
/// `reused` (its cells kept; its quotas, tiers, dry-run and allow list
/// changed when the reload is applied) or a new one.
fn local_limiter(
    rl: &RateLimitConfig,
    here: &str,
    place: super::limits::Place,
    reused: Option<&(RateLimitLayer, RateLimitHandle)>,
    problems: &mut Problems,
    changes: &mut Changes,
) -> Option<(RateLimitLayer, RateLimitHandle)> {
    let key = key_by(&rl.key, &format!("{here}.key"), problems);
    let qs = quotas(&rl.quotas, &format!("{here}.quotas"), problems);
    if rl.quotas.is_empty() {
        problems.push(format!("{here}.quotas"), "at least one quota");
    }
    let options = super::limits::options(rl, here, place, problems);
    let (key, options) = (key?, options?);
    if qs.len() != rl.quotas.len() {
        return None;
    }
    let settings = reused.map(|_| options.settings(qs.clone()));
    let mut b = RateLimitLayer::builder().key_by(key);
    for q in qs {
        b = b.quota(q);
    }
    // Built even when the old one is kept: its checks locate a problem
    // here, rather than when the reload's changes are applied.
    let built = match options.local(b).build() {
        Ok(layer) => layer,
        Err(crate::ratelimit::RateLimitError::Tier { tier, error }) => {
            problems.push(format!("{here}.tiers.{tier}"), error);
            return None;
        }
        Err(e) => {
            problems.push(format!("{here}.quotas"), e);
            return None;
        }
    };
    if let (Some((layer, handle)), Some(settings)) = (reused, settings) {
        changes.push(Change::Quotas(handle.clone(), settings));
        return Some((layer.clone(), handle.clone()));
    }
    let h = built.handle();
    Some((built, h))
}

/// A route's rate limit counted in Redis: the old layer (and its counters)
/// when neither the limit nor `[redis]` changed.
/// What `[redis]` says a request gets when Redis does not answer (checked
/// with the section).
#[cfg(feature = "redis")]
pub(crate) fn redis_failure(rc: &RedisConfig) -> crate::ratelimit::redis::RedisFailure {
    use crate::ratelimit::redis::RedisFailure;
    match rc.on_failure {
        Some(RedisFailureConfig::Local) => RedisFailure::Local {
            replicas: rc.replicas.unwrap_or(1),
        },
        Some(RedisFailureConfig::Reject) => RedisFailure::Reject,
        Some(RedisFailureConfig::Allow) => RedisFailure::Allow,
        None if rc.fail_closed => RedisFailure::Reject,
        None => RedisFailure::Allow,
    }
}

#[cfg(feature = "redis")]
fn shared_limiter(
    rl: &RateLimitConfig,
    here: &str,
    place: super::limits::Place,
    redis: Option<&SharedRedis>,
    old: Option<&BuiltRoute>,
    problems: &mut Problems,
) -> Option<(RedisConfig, crate::ratelimit::redis::RedisRateLimitLayer)> {
    use crate::ratelimit::redis::RedisRateLimitLayer;
    let key = key_by(&rl.key, &format!("{here}.key"), problems);
    let qs = quotas(&rl.quotas, &format!("{here}.quotas"), problems);
    if rl.quotas.is_empty() {
        problems.push(format!("{here}.quotas"), "at least one quota");
    }
    let options = super::limits::options(rl, here, place, problems);
    let (key, options) = (key?, options?);
    if qs.len() != rl.quotas.len() {
        return None;
    }
    let Some(redis) = redis else {
        problems.push(format!("{here}.redis"), "no `[redis]` is configured");
        return None;
    };
    if let Some(reused) = old
        .filter(|o| o.config.rate_limit.as_ref() == Some(rl))
        .and_then(|o| o.shared_limiter.as_ref())
        .filter(|(built_for, _)| *built_for == redis.config)
    {
        return Some(reused.clone());
    }
    let rc = &redis.config;
    let mut b = RedisRateLimitLayer::builder(redis.conn.clone())
        .key_by(key)
        .timeout(Duration::from_millis(rc.timeout_ms.unwrap_or(100)))
        .on_redis_failure(redis_failure(rc))
        .breaker(
            rc.breaker_failures.unwrap_or(3),
            Duration::from_millis(rc.breaker_cooldown_ms.unwrap_or(1000)),
        );
    if let Some(prefix) = &rc.prefix {
        b = b.prefix(prefix.clone());
    }
    for q in qs {
        b = b.quota(q);
    }
    match options.redis(b).build() {
        Ok(layer) => Some((rc.clone(), layer)),
        Err(e) => {
            problems.push(format!("{here}.quotas"), e);
            None
        }
    }
}

/// A SHA-256 over the contents of the TLS files `uc` names (`None` when it
/// names none), so that a reload notices a renewed certificate behind an
/// unchanged path. An unreadable file counts as empty here; building the
/// upstream reports it.
/// The discovery source `[upstreams.NAME] discovery` names, and how
/// often to ask it; `None` (with the problems noted) when it cannot be
/// followed.
fn discovery_source(
    name: &str,
    uc: &UpstreamConfig,
    dc: &super::config::DiscoveryConfig,
    problems: &mut Problems,
) -> Option<(Box<dyn crate::discovery::Source>, crate::discovery::Refresh)> {
    use crate::discovery::{FileSource, Refresh, Source};
    let at = format!("upstreams.{name}.discovery");
    let before = problems.len();
    if !uc.endpoints.is_empty() {
        problems.push(&at, "cannot be given with `endpoints`");
    }
    let given = [dc.dns.is_some(), dc.srv.is_some(), dc.file.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given != 1 {
        problems.push(&at, "give exactly one of `dns`, `srv` and `file`");
    }
    if tokio::runtime::Handle::try_current().is_err() {
        problems.push(&at, "build the gateway inside a Tokio runtime");
    }
    let min = Duration::from_millis(dc.refresh_min_ms.unwrap_or(1000));
    let max = Duration::from_millis(dc.refresh_max_ms.unwrap_or(30_000));
    if min.is_zero() {
        problems.push(format!("{at}.refresh_min_ms"), "must be above 0");
    }
    if max < min {
        problems.push(
            format!("{at}.refresh_max_ms"),
            "must be at least refresh_min_ms",
        );
    }
    if dc.remove_after == Some(0) {
        problems.push(format!("{at}.remove_after"), "must be above 0");
    }
    let mut refresh = Refresh::default()
        .min(min)
        .max(max)
        .max_stale(match dc.max_stale_ms {
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
            None => Some(Duration::from_secs(3600)),
        });
    if let Some(n) = dc.remove_after {
        refresh = refresh.remove_after(n);
    }
    let source: Option<Box<dyn Source>> = if let Some(path) = &dc.file {
        Some(Box::new(FileSource::new(path)))
    } else if dc.dns.is_some() || dc.srv.is_some() {
        dns_source(&at, uc, dc, problems)
    } else {
        None
    };
    (problems.len() == before).then_some(())?;
    source.map(|s| (s, refresh))
}

/// `discovery.dns` or `discovery.srv` (feature `dns`).
#[cfg(feature = "dns")]
fn dns_source(
    at: &str,
    uc: &UpstreamConfig,
    dc: &super::config::DiscoveryConfig,
    problems: &mut Problems,
) -> Option<Box<dyn crate::discovery::Source>> {
    use crate::discovery::{DnsSource, ResolverConfig};
    let resolver = match &dc.nameserver {
        None => ResolverConfig::system(),
        Some(ns) => match ns.parse::<std::net::SocketAddr>() {
            Ok(addr) => ResolverConfig::nameserver(addr),
            Err(_) => {
                problems.push(
                    format!("{at}.nameserver"),
                    format!("`{ns}` is not an ip:port"),
                );
                return None;
            }
        },
    };
    let source = if let Some(name) = &dc.dns {
        let port = uc.url.parse::<http::Uri>().ok().and_then(|u| {
            u.port_u16().or_else(|| {
                u.scheme().map(|s| {
                    if *s == http::uri::Scheme::HTTPS {
                        443
                    } else {
                        80
                    }
                })
            })
        });
        // An unparsable url is reported as the url's problem.
        let port = port?;
        DnsSource::a(name.clone(), port)
    } else {
        DnsSource::srv(dc.srv.clone().unwrap_or_default())
    };
    Some(Box::new(source.with_resolver(resolver)))
}

#[cfg(not(feature = "dns"))]
fn dns_source(
    at: &str,
    _uc: &UpstreamConfig,
    _dc: &super::config::DiscoveryConfig,
    problems: &mut Problems,
) -> Option<Box<dyn crate::discovery::Source>> {
    problems.push(at, "`dns` and `srv` need switchyard's `dns` feature");
    None
}

fn tls_files_digest(uc: &UpstreamConfig) -> Option<[u8; 32]> {
    use sha2::Digest;
    let files = [&uc.ca_file, &uc.client_cert_file, &uc.client_key_file];
    if files.iter().all(|f| f.is_none()) {
        return None;
    }
    let mut hash = sha2::Sha256::new();
    for file in files {
        let bytes = file
            .as_deref()
            .and_then(|path| std::fs::read(path).ok())
            .unwrap_or_default();
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    Some(hash.finalize().into())
}

/// `client_cert_file` and `client_key_file` of the section at `at`: both,
/// or neither; one without the other is a problem.
pub(super) fn client_files<'a>(
    cert: &'a Option<String>,
    key: &'a Option<String>,
    at: &str,
    problems: &mut Problems,
) -> Option<(&'a String, &'a String)> {
    match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => {
            problems.push(
                format!("{at}.client_key_file"),
                "`client_cert_file` needs `client_key_file`",
            );
            None
        }
        (None, Some(_)) => {
            problems.push(
                format!("{at}.client_cert_file"),
                "`client_key_file` needs `client_cert_file`",
            );
            None
        }
    }
}

/// Erases a service whose responses have any body into a [`Pipeline`].
pub(crate) fn boxed<S, B>(svc: S) -> Pipeline
where
    S: Service<Request<GatewayBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Pipeline(Arc::new(Erased(svc)))
}
