//! A whole gateway from one configuration (feature `config`): routes, each
//! a pipeline of authentication, rate limiting, transformation and a split
//! (or a model router) over upstream servers, reloadable while it serves.
//!
//! ```no_run
//! use switchyard::gateway::{Gateway, GatewayConfig};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = GatewayConfig::from_toml(r#"
//!     [upstreams.blue]
//!     url = "http://127.0.0.1:3001"
//!     [upstreams.green]
//!     url = "http://127.0.0.1:3002"
//!
//!     [[api_keys]]
//!     digest = "sha256:8d969eef6ecad3c29a3a629280e686cf0c3f5d5a86aff3ca12020c923adc6c92"
//!     id = "alice"
//!
//!     [[routes]]
//!     name = "api"
//!     auth = {}
//!     rate_limit = { key = "identity", quotas = [{ limit = 50, period = "1s", burst = 100 }] }
//!     split.targets = [
//!         { name = "blue", upstream = "blue", weight = 100 },
//!         { name = "green", upstream = "green", weight = 0 },
//!     ]
//!     split.sticky = { header = "x-user" }
//! "#)?;
//! let gateway = Gateway::from_config(config)?;
//!
//! // A tower Service: serve it with axum or hyper.
//! let app = axum::Router::new().fallback_service(gateway.clone());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! [`Gateway::from_config`] checks everything first and reports every
//! problem with its place in the configuration
//! (`routes[2].split.targets[1].upstream: unknown upstream "x"`).
//! [`Gateway::reload`] swaps in a new configuration while serving: requests
//! under way finish on the old pipeline; rate-limiter state, counters and
//! in-flight counts carry over for routes and targets that still exist (a
//! split keeps its weight history too when its targets are unchanged); an
//! invalid configuration is refused and the old one keeps serving. A reload
//! is one transaction: live keys, weights, rules, quotas and catalogs change
//! only once the whole configuration has been built, so a refused one
//! leaves no trace; admin keys change with it. A route whose upstream
//! changed (its settings, or the contents of its TLS files) is rebuilt
//! over the new upstream.
//!
//! `pre_auth_limit` puts one rate limit, keyed by the caller's address, in
//! front of every route, authentication included: credential stuffing and
//! floods of 401s meet it before any key is checked.
//!
//! Routes match the request's path in normal form ([`crate::path`]: `..`
//! resolved, `//` merged, unreserved escapes decoded, escaped `/` and a
//! literal `\` refused with a 400), and the upstream is asked for that
//! same path, so `/public/../admin` meets the `/admin` route's
//! authentication. A path with `;` parameters is matched without them
//! (`/admin;x/users` is the `/admin` route's) and refused with a 400
//! unless the route sets `allow_path_params`. Set `raw_paths = true` to
//! route on paths as they came. Every request goes upstream with a W3C
//! trace context ([`crate::trace`]: the caller's valid `traceparent`, else
//! a new trace); `trace_context = false` passes what the caller sent as it
//! came. On AI routes (a
//! `model` router), every refusal is answered in OpenAI's error shape
//! ([`OpenAiErrorsLayer`](crate::model::OpenAiErrorsLayer)).
//!
//! A route's rate limit counts in this process, or, with `redis = true`
//! and a `[redis]` section (feature `redis`), in Redis, shared by every
//! replica built from the same configuration. When Redis does not answer,
//! `[redis] on_failure` says what requests get: `"allow"` (the default),
//! `"reject"` (503) or `"local"` (limited in memory with this replica's
//! share of each quota, one of `replicas`); after `breaker_failures` failed
//! checks in a row the limiters stop asking for `breaker_cooldown_ms`.
//! A limit's options beyond its key and quotas (quotas per API-key `tier`,
//! request `cost`, `dry_run`, an `allow` list, `max_keys`, what requests
//! without a key get, the headers) are [`RateLimitConfig`]'s, and a model
//! route's fallback rules are its alias's `fallback` and
//! [`ModelConfig::fallback_on`].
//!
//! Every request is logged as one `tracing` event at `INFO` under the
//! target `switchyard::access` (route, method, path without its query,
//! status, `latency_us` to the response head, client IP, `x-request-id`,
//! and the `version` that answered when the response names it: the
//! split's `echo_header`, or the model router's `x-switchyard-model`),
//! when a subscriber listens there; otherwise nothing is recorded.
//!
//! `examples/gateway.rs` runs a complete gateway with its admin API.

mod access;
#[cfg(feature = "admin")]
mod admin_platform;
#[cfg(feature = "admin")]
mod admin_rollouts;
#[cfg(feature = "admin")]
mod admin_upstreams;
mod build;
mod config;
#[cfg(feature = "jwt")]
mod jwt;
mod keys;
mod limits;
mod metrics;
#[cfg(feature = "mirror")]
mod mirror;
mod platform;
mod redact;
mod redis_target;
mod rollouts;
mod spend;
#[cfg(feature = "admin")]
mod ui;

#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use tower::Service;

pub use config::{
    AdminConfig, ApiConfig, ApiKeyConfig, AuthConfig, BalanceConfig, CostConfig,
    ForwardedForConfig, GatewayConfig, HealthCheckConfig, JwtConfig, JwtKeyConfig, KeyConfig,
    MirrorConfig, MissingKeyConfig, ModelConfig, PlatformConfig, PromptRouteConfig, QuotaConfig,
    RateLimitConfig, RedisConfig, RedisFailureConfig, RolloutsConfig, RouteConfig,
    RouteRolloutConfig, SplitConfig, TargetConfig, TesterHeaderConfig, UpstreamConfig,
    WebhookConfig, WeightSyncConfig, WhenFullConfig,
};

pub use metrics::GatewayCollector;
pub use redact::REDACTED;
pub use rollouts::RolloutStartError;
pub use spend::{
    BudgetConfig, ConcurrencyConfig, PriceConfig, ScopeConfig, SpendConfig, TokenLimitConfig,
    UnpricedConfig,
};

use crate::model::ModelHandle;
use crate::problem::Problem;
use crate::proxy::BoxError;
use crate::ratelimit::RateLimitHandle;
use crate::split::SplitHandle;
use build::{BuiltRoute, PipelineFuture, RouteCounters, State};

/// The body type inside the gateway, both ways.
pub type GatewayBody = UnsyncBoxBody<Bytes, BoxError>;

/// One problem in a configuration, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigProblem {
    /// The place, as a path into [`GatewayConfig`] (`routes[0].split.targets[1].upstream`).
    pub at: String,
    /// What is wrong.
    pub message: String,
}

/// A configuration that was refused, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid gateway configuration:{}", .problems.iter().map(|p| format!("\n  {}: {}", p.at, p.message)).collect::<String>())]
#[non_exhaustive]
pub struct ConfigError {
    /// The problems.
    pub problems: Vec<ConfigProblem>,
}

/// The gateway: a tower `Service` that matches each request to a route and
/// runs it through that route's pipeline. Cheap to clone; clones share the
/// configuration and every reload.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    state: ArcSwap<State>,
    /// Serialises reloads.
    reload: Mutex<()>,
    /// The routes' rollouts, across reloads.
    rollouts: rollouts::Rollouts,
    /// Wakes the `[jwt] jwks_uri` refresher, while it runs.
    #[cfg(feature = "jwt")]
    jwks: Mutex<Option<Arc<tokio::sync::Notify>>>,
    /// The rounds of `[weight_sync]`, with the settings they run with.
    #[cfg(feature = "redis")]
    sync: Mutex<Option<RunningSync>>,
    /// The servers whose counters `/metrics` shows, by name (see
    /// [`Gateway::report_server`]).
    servers: Mutex<Vec<(String, crate::server::ServerHandle)>>,
}

#[cfg(feature = "redis")]
struct RunningSync {
    /// The settings, and the `[redis]` it runs over.
    settings: (WeightSyncConfig, RedisConfig),
    sync: crate::sync::WeightSync,
    _task: crate::sync::SyncTask,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.inner.state.load();
        f.debug_struct("Gateway")
            .field(
                "routes",
                &state.routes.iter().map(|r| &r.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Checks `config` and builds the gateway.
    pub fn from_config(config: GatewayConfig) -> Result<Self, ConfigError> {
        // Nothing is live yet: there are no changes to hold back.
        let (state, _) = build::build(config, None)?;
        let gateway = Self {
            inner: Arc::new(Inner {
                state: ArcSwap::from_pointee(state),
                reload: Mutex::new(()),
                rollouts: rollouts::Rollouts::default(),
                #[cfg(feature = "jwt")]
                jwks: Mutex::new(None),
                #[cfg(feature = "redis")]
                sync: Mutex::new(None),
                servers: Mutex::new(Vec::new()),
            }),
        };
        // Records of rollouts a stopped gateway left running are aborted.
        rollouts::sweep(&gateway.inner);
        let state = gateway.inner.state.load();
        if state.platform.store.is_some() && state.config.routes.iter().any(|r| r.rollout.is_some())
        {
            gateway.run_rollout_tasks();
        }
        drop(state);
        #[cfg(feature = "jwt")]
        gateway.run_jwks();
        #[cfg(feature = "redis")]
        gateway.run_sync();
        #[cfg(feature = "redis")]
        if gateway.inner.state.load().redis.is_some() {
            gateway.run_fleet_samples();
        }
        #[cfg(feature = "redis")]
        gateway.run_platform_refresh();
        Ok(gateway)
    }

    /// With the platform's state in Redis, reads it again when another
    /// replica announces a change (subscriptions, lifecycle moves, API
    /// keys), and every `[platform] refresh_ms` (1 s by default) for what
    /// was not heard, for as long as the gateway lives. The store cannot change on a reload, so one task is
    /// enough.
    #[cfg(feature = "redis")]
    fn run_platform_refresh(&self) {
        let redis_store = matches!(
            self.inner.state.load().platform.store,
            Some((platform::StoreAt::Redis(..), _))
        );
        // Building with `[redis]` already needed a runtime.
        let (true, Ok(runtime)) = (redis_store, tokio::runtime::Handle::try_current()) else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            // Another replica's change is announced when it is made: read
            // again at once (the refresh every `refresh_ms` stays, for
            // announcements missed while not subscribed).
            let mut announced: Option<crate::redis_conn::Messages> = None;
            loop {
                let (every, listen) = {
                    let Some(inner) = weak.upgrade() else { return };
                    let state = inner.state.load();
                    let ms = state.config.platform.refresh_ms;
                    let listen = match (&state.platform.store, &state.redis) {
                        (Some((platform::StoreAt::Redis(_, prefix), _)), Some(redis)) => {
                            Some((redis.target(), crate::state::redis::channel(prefix)))
                        }
                        _ => None,
                    };
                    (std::time::Duration::from_millis(ms.unwrap_or(1000).max(1)), listen)
                };
                if announced.is_none()
                    && let Some((target, channel)) = listen
                {
                    match target.subscribe(&channel).await {
                        Ok(stream) => announced = Some(stream),
                        _ => tracing::warn!("platform: not subscribed to the state's announcements; refreshing every refresh_ms"),
                    }
                }
                let sleep = tokio::time::sleep(every);
                match announced.as_mut() {
                    Some(stream) => {
                        tokio::select! {
                            () = sleep => {}
                            msg = std::future::poll_fn(|cx| stream.as_mut().poll_next(cx)) => {
                                match msg {
                                    // Lost: subscribe again next time round.
                                    None => announced = None,
                                    // A rollout's record changed: commands
                                    // for the rollouts led here may wait,
                                    // and the others' records are read.
                                    Some(m) if m.get_payload_bytes() == b"rollouts" => {
                                        if let Some(inner) = weak.upgrade() {
                                            inner.rollouts.look_for_commands();
                                            let _ = tokio::task::spawn_blocking(move || {
                                                rollouts::sweep(&inner);
                                            })
                                            .await;
                                        }
                                    }
                                    Some(_) => {}
                                }
                            }
                        }
                    }
                    None => sleep.await,
                }
                let Some(inner) = weak.upgrade() else { return };
                let state = inner.state.load_full();
                drop(inner);
                // Blocking Redis commands, off the async workers.
                let _ = tokio::task::spawn_blocking(move || {
                    let platform = &state.platform;
                    if let Err(e) = platform.subscriptions.refresh() {
                        tracing::warn!(error = %e, "platform: subscriptions not refreshed");
                    }
                    match platform.keys.refresh() {
                        Ok(true) => {
                            if let Some(auth) = &state.auth {
                                let keys =
                                    platform.keys.merged(build::configured_keys(&state.config));
                                if let Err(e) = auth.handle().set_keys(keys) {
                                    tracing::warn!(error = %e, "platform: API keys not refreshed");
                                }
                            }
                        }
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "platform: API keys not refreshed"),
                    }
                    for (route, api) in &platform.apis {
                        if let Err(e) = api.handle().refresh() {
                            tracing::warn!(route, error = %e, "platform: lifecycle not refreshed");
                        }
                    }
                })
                .await;
            }
        });
    }

    /// Starts, restarts or stops the `[weight_sync]` rounds to match the
    /// configuration in force. The rounds read the routes of whatever
    /// configuration is in force when they run, so a reload that keeps the
    /// same settings keeps them going.
    #[cfg(feature = "redis")]
    fn run_sync(&self) {
        let state = self.inner.state.load();
        let want = state
            .redis
            .as_ref()
            .zip(state.config.weight_sync.clone())
            .map(|(redis, sync)| (sync, redis.config.clone()));
        let mut slot = self.inner.sync.lock().unwrap_or_else(|e| e.into_inner());
        let Some(settings) = want else {
            *slot = None;
            return;
        };
        if slot.as_ref().is_some_and(|s| s.settings == settings) {
            return;
        }
        // Building with `[redis]` already needed a runtime.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            *slot = None;
            return;
        };
        let _entered = runtime.enter();
        let weak = Arc::downgrade(&self.inner);
        let ws = &settings.0;
        let notify = ws.notify.unwrap_or(true);
        let endpoints = ws.endpoints.unwrap_or(true);
        let ms = |v: Option<u64>, default| std::time::Duration::from_millis(v.unwrap_or(default));
        let sync = crate::sync::WeightSync::dynamic(
            move || {
                let inner = weak.upgrade()?;
                let state = inner.state.load();
                state.config.weight_sync.as_ref()?;
                let shared = state.redis.as_ref()?;
                let mut sources = Vec::new();
                for r in &state.routes {
                    if let Some(split) = &r.split {
                        sources.push((
                            r.name.clone(),
                            crate::sync::Source::Split(split.handle.clone()),
                        ));
                    }
                    if let Some(prompt) = &r.prompt {
                        // A prompt's versions are a split.
                        sources.push((
                            r.name.clone(),
                            crate::sync::Source::Split(prompt.split().clone()),
                        ));
                    }
                    if let Some((_, model)) = &r.model {
                        sources.push((r.name.clone(), crate::sync::Source::Model(model.clone())));
                    }
                    if let Some((_, limiter)) = &r.shared_limiter {
                        sources
                            .push((r.name.clone(), crate::sync::Source::Limit(limiter.handle())));
                    }
                    #[cfg(feature = "mirror")]
                    if let Some(m) = &r.mirror {
                        sources.push((
                            r.name.clone(),
                            crate::sync::Source::Mirror(m.layer.handle()),
                        ));
                    }
                }
                if endpoints {
                    let mut names: Vec<&String> = state
                        .upstreams
                        .keys()
                        .filter(|n| !state.discoveries.contains_key(*n))
                        .collect();
                    names.sort();
                    for name in names {
                        let upstream = state.upstreams[name].1.clone();
                        sources.push((name.clone(), crate::sync::Source::Upstream(upstream)));
                    }
                }
                Some(crate::sync::Round {
                    redis: shared.connection(),
                    notify: notify.then(|| shared.target()),
                    sources,
                })
            },
            ws.prefix
                .clone()
                .unwrap_or_else(|| "switchyard:weights:".to_owned()),
            ms(ws.interval_ms, 1000),
            ms(ws.check_interval_ms, 100),
            ms(ws.timeout_ms, 1000),
        );
        let task = sync.spawn();
        *slot = Some(RunningSync {
            settings,
            sync,
            _task: task,
        });
    }

    /// The `[weight_sync]` of this gateway, while it runs (feature
    /// `redis`): its counters, or a round run now with
    /// [`sync_once`](crate::sync::WeightSync::sync_once).
    #[cfg(feature = "redis")]
    pub fn weight_sync(&self) -> Option<crate::sync::WeightSync> {
        let slot = self.inner.sync.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().map(|s| s.sync.clone())
    }

    /// Replaces the configuration while serving; see the
    /// [module docs](self).
    ///
    /// A reload is one transaction: the whole configuration is checked on
    /// fresh objects, then built reusing the live ones, and only then are
    /// the live keys (API and admin), weights, rules, quotas and catalogs
    /// changed and the new routes put in force. On error nothing changes:
    /// a refused configuration leaves no trace.
    ///
    /// Building reads files (TLS certificates) and may set up Redis
    /// connections: from async code, call it off the runtime's workers
    /// (`tokio::task::spawn_blocking`), as the admin API does.
    pub fn reload(&self, config: GatewayConfig) -> Result<(), ConfigError> {
        let _guard = self.inner.reload.lock().unwrap_or_else(|e| e.into_inner());
        // Check on fresh objects first, so that whatever the live objects
        // are given below is known to be accepted.
        let _checked = build::build(config.clone(), None)?;
        let old = self.inner.state.load_full();
        let (state, changes) = build::build(config, Some(&old))?;
        changes.apply()?;
        // A running rollout's weights, not the configuration's.
        self.inner.rollouts.reassert(&state);
        self.inner.state.store(Arc::new(state));
        #[cfg(feature = "jwt")]
        self.run_jwks();
        #[cfg(feature = "redis")]
        self.run_sync();
        Ok(())
    }

    /// The configuration in force (weights as the splits have them now).
    pub fn config(&self) -> GatewayConfig {
        let state = self.inner.state.load();
        let mut config = state.config.clone();
        for (route, built) in config.routes.iter_mut().zip(&state.routes) {
            if let (Some(split), Some(b)) = (route.split.as_mut(), built.split.as_ref()) {
                let weights = b.handle.weights();
                for t in &mut split.targets {
                    if let Some(w) = weights.get(&t.name) {
                        t.weight = w;
                    }
                }
            }
            #[cfg(feature = "mirror")]
            if let (Some(mirror), Some(m)) = (route.mirror.as_mut(), built.mirror.as_ref()) {
                mirror.percent = m.layer.handle().percent();
            }
            if let (Some(model), Some((_, handle))) = (route.model.as_mut(), built.model.as_ref()) {
                model.catalog = handle.catalog();
            }
            if let (Some(prompt), Some(handle)) = (route.prompt.as_mut(), built.prompt.as_ref()) {
                let weights = handle.split().weights();
                for v in &mut prompt.api.versions {
                    if let Some(w) = weights.get(&v.name) {
                        v.weight = w;
                    }
                }
            }
            if let (Some(api), Some(built)) =
                (route.api.as_mut(), state.platform.apis.get(&built.name))
            {
                // As configured when it has not moved, so that the
                // configuration given is the configuration shown.
                let live = built.handle().stage();
                if api.stage.unwrap_or_default() != live {
                    api.stage = Some(live);
                }
            }
        }
        config
    }

    /// The lifecycle of `route`'s API (a route with `api`).
    pub fn api(&self, route: &str) -> Option<crate::platform::lifecycle::LifecycleHandle> {
        self.inner
            .state
            .load()
            .platform
            .apis
            .get(route)
            .map(platform::BuiltApi::handle)
    }

    /// Every API's subscriptions (routes whose `api` has a
    /// `subscription` policy): approve, reject, revoke, list.
    pub fn subscriptions(&self) -> crate::platform::subscription::Subscriptions {
        self.inner.state.load().platform.subscriptions.clone()
    }

    /// The names of the routes, in order.
    pub fn routes(&self) -> Vec<String> {
        self.inner
            .state
            .load()
            .routes
            .iter()
            .map(|r| r.name.clone())
            .collect()
    }

    /// The split handle of a route.
    pub fn split(&self, route: &str) -> Option<SplitHandle> {
        let state = self.inner.state.load();
        let r = state.routes.iter().find(|r| r.name == route)?;
        r.split
            .as_ref()
            .map(|s| s.handle.clone())
            .or_else(|| r.prompt.as_ref().map(|p| p.split().clone()))
    }

    /// The upstream named `name` in the configuration in force: its
    /// servers' counters and state through
    /// [`Upstream::endpoints`](crate::proxy::Upstream::endpoints).
    pub fn upstream(&self, name: &str) -> Option<crate::proxy::Upstream> {
        let state = self.inner.state.load();
        state.upstreams.get(name).map(|(_, u)| u.clone())
    }

    /// The names of the upstreams in force, sorted.
    pub fn upstreams(&self) -> Vec<String> {
        let state = self.inner.state.load();
        let mut names: Vec<String> = state.upstreams.keys().cloned().collect();
        names.sort();
        names
    }

    /// The model handle of a route.
    pub fn model(&self, route: &str) -> Option<ModelHandle> {
        let state = self.inner.state.load();
        let r = state.routes.iter().find(|r| r.name == route)?;
        r.model.as_ref().map(|(_, h)| h.clone())
    }

    /// The meter of a model route with a `[routes.model.spend]`: its
    /// prices, token limits, budgets, counters and ledger.
    pub fn meter(&self, route: &str) -> Option<crate::spend::Meter> {
        let state = self.inner.state.load();
        let r = state.routes.iter().find(|r| r.name == route)?;
        r.spend.as_ref().map(|(_, m)| m.clone())
    }

    /// The names of the routes with a meter.
    pub fn metered_routes(&self) -> Vec<String> {
        let state = self.inner.state.load();
        state
            .routes
            .iter()
            .filter(|r| r.spend.is_some())
            .map(|r| r.name.clone())
            .collect()
    }

    /// The rate-limit handle of a route whose limit counts in this process
    /// (`None` for one counted in Redis: see
    /// [`redis_rate_limit`](Self::redis_rate_limit)).
    pub fn rate_limit(&self, route: &str) -> Option<RateLimitHandle> {
        let state = self.inner.state.load();
        let r = state.routes.iter().find(|r| r.name == route)?;
        r.limiter.as_ref().map(|(_, h)| h.clone())
    }

    /// The handle of `route`'s mirror (`[routes.mirror]`, feature
    /// `mirror`): its share, counters and kept samples.
    #[cfg(feature = "mirror")]
    #[cfg_attr(docsrs, doc(cfg(feature = "mirror")))]
    pub fn mirror(&self, route: &str) -> Option<crate::mirror::MirrorHandle> {
        let state = self.inner.state.load();
        let r = state.routes.iter().find(|r| r.name == route)?;
        r.mirror.as_ref().map(|m| m.layer.handle())
    }

    /// The handle of a route's rate limit counted in Redis (`rate_limit.redis
    /// = true`; feature `redis`): this replica's quotas, dry-run and allow
    /// list, and checks and charges against the shared state. A reload
    /// that leaves the route's `rate_limit` and `[redis]` alone keeps this
    /// limiter, and what the handle changed; one that changes them builds
    /// a new limiter from the configuration.
    #[cfg(feature = "redis")]
    pub fn redis_rate_limit(
        &self,
        route: &str,
    ) -> Option<crate::ratelimit::redis::RedisRateLimitHandle> {
        let state = self.inner.state.load();
        let r = state.routes.iter().find(|r| r.name == route)?;
        r.shared_limiter.as_ref().map(|(_, layer)| layer.handle())
    }

    /// Every counter, in the Prometheus text exposition format.
    ///
    /// Encoded by `prometheus-client` from the collectors of
    /// [`switchyard::prometheus`](crate::prometheus) over the state in
    /// force, read when called.
    pub fn metrics(&self) -> String {
        metrics::render(self)
    }

    /// Shows the counters of the [`Server`](crate::server::Server) behind
    /// `handle` on this gateway's `/metrics` (and in its
    /// [`collector`](Self::collector)), labelled `server="name"`: its
    /// connections accepted, open and refused, its timeouts, the requests
    /// it handed on and those the service panicked on (the families of
    /// [`ServerCollector`](crate::prometheus::ServerCollector)). Report the
    /// server that serves this gateway, and the admin API's if it has its
    /// own. A second report under the same name replaces the first (a
    /// server started again).
    ///
    /// ```
    /// # use switchyard::gateway::{Gateway, GatewayConfig};
    /// use switchyard::server::Server;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let gateway = Gateway::from_config(GatewayConfig::from_toml(r#"
    /// #     [upstreams.app]
    /// #     url = "http://127.0.0.1:3001"
    /// #     [[routes]]
    /// #     name = "api"
    /// #     split.targets = [{ name = "app", upstream = "app", weight = 100 }]
    /// # "#)?)?;
    /// let server = Server::builder().bind("127.0.0.1:0").await?;
    /// gateway.report_server("gateway", server.handle());
    /// assert!(gateway
    ///     .metrics()
    ///     .contains("switchyard_server_connections_active{server=\"gateway\"} 0\n"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn report_server(&self, name: &str, handle: crate::server::ServerHandle) {
        let mut servers = self
            .inner
            .servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match servers.iter_mut().find(|(n, _)| n == name) {
            Some((_, h)) => *h = handle,
            None => servers.push((name.to_owned(), handle)),
        }
    }

    /// The servers reported with [`report_server`](Self::report_server),
    /// in the order they were first reported: each one's name, address,
    /// whether it is shutting down, and its counters now (what the admin
    /// API's `GET /servers` and the dashboard show).
    ///
    /// ```
    /// # use switchyard::gateway::{Gateway, GatewayConfig};
    /// use switchyard::server::Server;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let gateway = Gateway::from_config(GatewayConfig::from_toml(r#"
    /// #     [upstreams.app]
    /// #     url = "http://127.0.0.1:3001"
    /// #     [[routes]]
    /// #     name = "api"
    /// #     split.targets = [{ name = "app", upstream = "app", weight = 100 }]
    /// # "#)?)?;
    /// let server = Server::builder().bind("127.0.0.1:0").await?;
    /// gateway.report_server("gateway", server.handle());
    /// let servers = gateway.servers();
    /// assert_eq!(servers[0].name, "gateway");
    /// assert_eq!(servers[0].address, server.local_addr());
    /// assert_eq!(servers[0].stats.requests, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn servers(&self) -> Vec<ReportedServer> {
        self.inner
            .servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, handle)| ReportedServer {
                name: name.clone(),
                address: handle.local_addr(),
                shutting_down: handle.is_shutting_down(),
                stats: handle.stats(),
            })
            .collect()
    }

    fn route<'s>(state: &'s State, req: &Request<GatewayBody>) -> Option<&'s BuiltRoute> {
        state.routes.iter().find(|r| r.matcher.matches(req))
    }
}

/// A server reported to a gateway ([`Gateway::report_server`]) as it is
/// now: from [`Gateway::servers`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReportedServer {
    /// The name it was reported under.
    pub name: String,
    /// The address it listens on.
    pub address: std::net::SocketAddr,
    /// Whether its graceful shutdown has started.
    pub shutting_down: bool,
    /// Its counters.
    pub stats: crate::server::ServerStats,
}

impl<B> Service<Request<B>> for Gateway
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    /// Always ready; each route's pipeline is awaited per call.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        // A request without a body (most of them) goes on with an empty
        // one: nothing to box for a body that has nothing more to give.
        let mut req = req.map(|body| {
            if body.is_end_stream() {
                GatewayBody::default()
            } else {
                crate::proxy::box_body(body)
            }
        });
        let mut access = access::Access::begin(&req);
        let state = self.inner.state.load();
        // First of all: hop-by-hop headers out, `Host` checked.
        if let Err(e) = state.ingress.apply(&mut req) {
            return ResponseFuture {
                kind: Kind::Refused {
                    rejection: Some(e.rejection().for_request(req.headers())),
                },
                access,
            };
        }
        // The trace context: the caller's if it is valid, else a new one;
        // or, turned off, whatever the caller sent, untouched.
        if state.config.trace_context != Some(false) {
            let trace = crate::trace::propagate(&mut req);
            if let Some(a) = &mut access {
                a.trace(trace);
            }
        } else if let Some(a) = &mut access
            && let Some(trace) = crate::trace::TraceParent::from_headers(req.headers())
        {
            a.trace(trace);
        }
        // Path parameters, refused below unless the route takes them.
        let params = req.uri().path().contains(';');
        // Route on the path the upstream will read: its normal form.
        if !state.config.raw_paths {
            match crate::path::normalize_uri(req.uri(), true) {
                Ok(None) => {}
                Ok(Some(uri)) => *req.uri_mut() = uri,
                Err(e) => {
                    return ResponseFuture {
                        kind: Kind::Refused {
                            rejection: Some(crate::path::rejection(e).for_request(req.headers())),
                        },
                        access,
                    };
                }
            }
        }
        match Self::route(&state, &req) {
            Some(route) if params && !route.config.allow_path_params => {
                let e = crate::path::PathError::PathParameter;
                ResponseFuture {
                    kind: Kind::Refused {
                        rejection: Some(crate::path::rejection(e).for_request(req.headers())),
                    },
                    access,
                }
            }
            Some(route) => {
                if let Some(a) = &mut access {
                    let echo = route.config.split.as_ref();
                    a.route(&route.name, echo.and_then(|s| s.echo_header.as_deref()));
                }
                ResponseFuture {
                    kind: Kind::Route {
                        future: route.service.call_ref(req),
                        counters: Arc::clone(&route.counters),
                        polled: false,
                    },
                    access,
                }
            }
            None => ResponseFuture {
                kind: Kind::NotFound {
                    grpc: crate::grpc::is_grpc(req.headers()),
                },
                access,
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// Response future of [`Gateway`].
    pub struct ResponseFuture {
        #[pin]
        kind: Kind,
        // What the access log keeps until the response, if it is on.
        access: Option<Box<access::Access>>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind {
        // The route's pipeline, and its counters: the request is counted
        // when first polled (when the pipeline is called), the response by
        // status class.
        Route { #[pin] future: PipelineFuture, counters: Arc<RouteCounters>, polled: bool },
        NotFound { grpc: bool },
        Refused { rejection: Option<crate::future::Rejection> },
    }
}

impl std::future::Future for ResponseFuture {
    type Output = Result<Response<GatewayBody>, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(Self::poll_kind(this.kind, cx));
        if let (Some(access), Ok(res)) = (this.access.take(), &res) {
            access.end(res);
        }
        Poll::Ready(res)
    }
}

impl ResponseFuture {
    fn poll_kind(
        kind: std::pin::Pin<&mut Kind>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<GatewayBody>, Infallible>> {
        match kind.project() {
            KindProj::Route {
                future,
                counters,
                polled,
            } => {
                if !std::mem::replace(polled, true) {
                    counters.counts.add(RouteCounters::REQUESTS, 1);
                }
                let res = std::task::ready!(future.poll(cx))?;
                let status = crate::grpc::effective_status(res.status(), res.headers());
                let class = crate::metrics::class_index(status);
                counters.counts.add(RouteCounters::class(class), 1);
                Poll::Ready(Ok(res))
            }
            KindProj::NotFound { grpc } => Poll::Ready(Ok(crate::future::Rejection::new(
                Problem::new(StatusCode::NOT_FOUND).detail("no route matches this request"),
            )
            .grpc(*grpc)
            .into_response::<GatewayBody>()
            .map(|b| b.boxed_unsync()))),
            KindProj::Refused { rejection } => {
                let rejection = rejection.take().unwrap_or_else(|| {
                    // Polled again after completing: answer, never panic.
                    crate::future::Rejection::new(Problem::new(StatusCode::INTERNAL_SERVER_ERROR))
                });
                Poll::Ready(Ok(rejection
                    .into_response::<GatewayBody>()
                    .map(|b| b.boxed_unsync())))
            }
        }
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
