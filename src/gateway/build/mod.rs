//! Checking a [`GatewayConfig`] and assembling its pipelines, reusing the
//! state of the gateway it replaces: the built state and the whole build
//! here, a route's pipeline in `route`, its type erasure in `pipeline`,
//! rate limiters and the shared Redis connection in `limiters`, and what
//! upstreams read besides their section (discovery sources, TLS files) in
//! `upstreams`.

mod limiters;
mod pipeline;
mod route;
mod upstreams;

#[cfg(feature = "redis")]
pub(crate) use limiters::redis_failure;
use limiters::{pre_auth_limiter, shared_redis};
pub(crate) use pipeline::{Pipeline, PipelineFuture, boxed};
use route::{Common, build_route};
pub(super) use upstreams::client_files;
use upstreams::{discovery_source, tls_files_digest};

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, Request};

use super::config::{
    ApiKeyConfig, GatewayConfig, KeyConfig, QuotaConfig, RedisConfig, RouteConfig, UpstreamConfig,
};
use super::{ConfigError, ConfigProblem};
use crate::auth::{ApiKey, ApiKeyLayer, Identity};
use crate::key::{KeyBy, TrustedProxies};
use crate::model::{ModelHandle, ModelRouter};
use crate::proxy::Upstream;
use crate::ratelimit::{Quota, RateLimitHandle, RateLimitLayer};
use crate::split::{Split, SplitHandle};
use crate::transform::{TransformHandle, TransformLayer};

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
