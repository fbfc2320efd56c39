//! The platform's part of a gateway: each route with `api` served in its
//! lifecycle stage and, with a `subscription` policy, to subscribers
//! only; catalog routes listing those APIs; and the state file that keeps
//! their runtime changes (see [`crate::platform`] and [`crate::state`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};

use super::build::{Change, Changes, Problems};
use super::config::{ApiConfig, GatewayConfig};
use crate::platform::catalog::{ApiCatalog, Listing, Visibility};
use crate::platform::lifecycle::{Api, LifecycleHandle, LifecycleLayer};
use crate::platform::subscription::{SubscriptionLayer, Subscriptions};
use crate::state::{StateFile, StateStore};

/// Where the platform's runtime state is kept, as configured.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StoreAt {
    /// `[platform] state_file`.
    File(String),
    /// `[redis]`, with the prefix.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Redis(Box<super::config::RedisConfig>, String),
}

/// What one configuration's platform is, kept by the gateway's state.
pub(crate) struct Platform {
    /// The state store, opened, with where it is.
    pub(crate) store: Option<(StoreAt, Arc<dyn StateStore>)>,
    /// Every API's subscriptions: one registry for the gateway's life,
    /// handed from each state to the next.
    pub(crate) subscriptions: Subscriptions,
    /// By route name.
    pub(crate) apis: BTreeMap<String, BuiltApi>,
    /// API keys added and revoked through the admin API: one set for the
    /// gateway's life, handed from each state to the next.
    pub(crate) keys: Arc<super::keys::ManagedKeys>,
}

/// A route's API.
pub(crate) struct BuiltApi {
    pub(crate) config: ApiConfig,
    pub(crate) lifecycle: LifecycleLayer,
    pub(crate) subscription: Option<SubscriptionLayer>,
    /// Its own OpenAPI document (`openapi_file`), read when it was built.
    pub(crate) document: Option<serde_json::Value>,
}

impl BuiltApi {
    pub(crate) fn handle(&self) -> LifecycleHandle {
        self.lifecycle.handle()
    }
}

/// The platform of `config`, reusing `old`'s registry, state file and
/// (when a route's `api` is unchanged but for `stage`) lifecycles;
/// stage and policy changes go into `changes`.
pub(crate) fn build(
    config: &GatewayConfig,
    old: Option<&Platform>,
    redis: Option<&super::build::SharedRedis>,
    problems: &mut Problems,
    changes: &mut Changes,
) -> Platform {
    let pc = &config.platform;
    let at = match (&pc.state_file, pc.redis, &config.redis) {
        (Some(_), true, _) => {
            problems.push("platform", "give one of `state_file` and `redis = true`");
            None
        }
        (Some(path), false, _) => Some(StoreAt::File(path.clone())),
        (None, true, None) => {
            problems.push("platform.redis", "no `[redis]` is configured");
            None
        }
        (None, true, Some(rc)) if rc.client_cert_file.is_some() => {
            problems.push(
                "platform.redis",
                "the platform's state is not kept over mutual TLS yet (`redis.client_cert_file`)",
            );
            None
        }
        (None, true, Some(rc)) => Some(StoreAt::Redis(
            Box::new(rc.clone()),
            pc.redis_prefix
                .clone()
                .unwrap_or_else(|| "switchyard:state:".to_owned()),
        )),
        (None, false, _) => None,
    };
    if config.platform.refresh_ms == Some(0) {
        problems.push("platform.refresh_ms", "must be above 0");
    }
    let store: Option<(StoreAt, Arc<dyn StateStore>)> = match old {
        Some(o) => {
            let old_at = o.store.as_ref().map(|(at, _)| at);
            if at.as_ref() != old_at {
                let files = matches!(
                    (&at, old_at),
                    (Some(StoreAt::File(_)), Some(StoreAt::File(_)))
                );
                problems.push(
                    if files { "platform.state_file" } else { "platform" },
                    "where the state is kept (`state_file`, or `redis = true`) cannot change on a reload",
                );
            }
            o.store.clone()
        }
        None => match at {
            Some(StoreAt::File(path)) => match StateFile::open(&path) {
                Ok(file) => Some((StoreAt::File(path), Arc::new(file))),
                Err(e) => {
                    problems.push("platform.state_file", e);
                    None
                }
            },
            #[cfg(feature = "redis")]
            Some(StoreAt::Redis(rc, prefix)) => redis.map(|shared| {
                let store =
                    crate::state::redis::RedisState::new(shared.target()).prefix(prefix.clone());
                (
                    StoreAt::Redis(rc, prefix),
                    Arc::new(store) as Arc<dyn StateStore>,
                )
            }),
            // `[redis]` itself is refused without the feature.
            #[cfg(not(feature = "redis"))]
            Some(StoreAt::Redis(..)) => {
                let _ = redis;
                None
            }
            None => None,
        },
    };
    let keys = match old {
        Some(o) => Arc::clone(&o.keys),
        None => match super::keys::ManagedKeys::open(store.as_ref().map(|(_, s)| Arc::clone(s))) {
            Ok(keys) => Arc::new(keys),
            Err(e) => {
                problems.push("platform", e);
                Arc::new(super::keys::ManagedKeys::none())
            }
        },
    };
    let subscriptions = match (old, &store) {
        (Some(o), _) => o.subscriptions.clone(),
        (None, Some((_, store))) => Subscriptions::with_state(Arc::clone(store)),
        (None, None) => Subscriptions::new(),
    };

    let mut apis = BTreeMap::new();
    let mut versions: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for (i, rc) in config.routes.iter().enumerate() {
        let Some(ac) = &rc.api else { continue };
        let at = format!("routes[{i}].api");
        if ac.name.is_empty() || ac.version.is_empty() {
            problems.push(&at, "an API needs a `name` and a `version`");
            continue;
        }
        if let Some(other) = versions.insert((&ac.name, &ac.version), &rc.name) {
            problems.push(
                format!("{at}.version"),
                format!(
                    "API `{}` version `{}` is route `{other}`'s too",
                    ac.name, ac.version
                ),
            );
            continue;
        }
        if ac.subscription.is_some() && rc.auth.is_none() {
            problems.push(
                format!("{at}.subscription"),
                "subscribers are identities: the route needs `auth`",
            );
        }
        let document = match ac.openapi_file.as_deref().map(read_document) {
            Some(Ok(doc)) => Some(doc),
            Some(Err(e)) => {
                problems.push(format!("{at}.openapi_file"), e);
                None
            }
            None => None,
        };
        let old_api = old.and_then(|o| o.apis.get(&rc.name));
        let Some(lifecycle) = lifecycle(ac, &at, old_api, store.as_ref(), problems, changes) else {
            continue;
        };
        let subscription = ac
            .subscription
            .and_then(|policy| match subscriptions.layer(&ac.name) {
                Ok(layer) => {
                    if subscriptions.policy(&ac.name).ok() != Some(policy) {
                        changes.push(Change::Policy(
                            subscriptions.clone(),
                            ac.name.clone(),
                            policy,
                        ));
                    }
                    Some(layer)
                }
                Err(_) => match subscriptions.register(&ac.name, policy) {
                    Ok(layer) => Some(layer),
                    Err(e) => {
                        problems.push(format!("{at}.subscription"), e);
                        None
                    }
                },
            });
        apis.insert(
            rc.name.clone(),
            BuiltApi {
                config: ac.clone(),
                lifecycle,
                subscription,
                document,
            },
        );
    }
    // Versions of one API share their visibility and their policy.
    let mut first: BTreeMap<&str, &ApiConfig> = BTreeMap::new();
    for (i, rc) in config.routes.iter().enumerate() {
        let Some(ac) = &rc.api else { continue };
        match first.get(ac.name.as_str()) {
            None => {
                first.insert(&ac.name, ac);
            }
            Some(f) => {
                if f.visible_to != ac.visible_to {
                    problems.push(
                        format!("routes[{i}].api.visible_to"),
                        format!("the versions of API `{}` differ in `visible_to`", ac.name),
                    );
                }
                if f.subscription != ac.subscription {
                    problems.push(
                        format!("routes[{i}].api.subscription"),
                        format!("the versions of API `{}` differ in `subscription`", ac.name),
                    );
                }
            }
        }
    }
    Platform {
        store,
        subscriptions,
        apis,
        keys,
    }
}

/// A route's lifecycle: the old one when its API is unchanged but for
/// `stage` (a changed stage is a move, made when the reload is applied),
/// else a new one (its stage read from the state file, if it has one).
fn lifecycle(
    ac: &ApiConfig,
    at: &str,
    old: Option<&BuiltApi>,
    state: Option<&(StoreAt, Arc<dyn StateStore>)>,
    problems: &mut Problems,
    changes: &mut Changes,
) -> Option<LifecycleLayer> {
    let same_but_stage = |o: &ApiConfig| {
        let mut o = o.clone();
        o.stage = ac.stage;
        o == *ac
    };
    if let Some(old) = old.filter(|o| same_but_stage(&o.config)) {
        let handle = old.handle();
        if ac.stage != old.config.stage {
            let to = ac.stage.unwrap_or_default();
            let now = handle.stage();
            if to != now {
                if !now.can_move_to(to) {
                    problems.push(
                        format!("{at}.stage"),
                        format!(
                            "API `{} {}` cannot move from {now} to {to}",
                            ac.name, ac.version
                        ),
                    );
                    return None;
                }
                changes.push(Change::Stage(handle, to));
            }
        }
        return Some(old.lifecycle.clone());
    }
    let mut api = Api::new(&ac.name, &ac.version).stage(ac.stage.unwrap_or_default());
    if let Some(owner) = &ac.owner {
        api = api.owner(owner);
    }
    if let Some(text) = &ac.description {
        api = api.description(text);
    }
    if let Some(at) = ac.deprecated_at {
        api = api.deprecated_at(at);
    }
    if let Some(at) = ac.sunset {
        api = api.sunset(at);
    }
    if let Some(link) = &ac.successor {
        api = api.successor(link);
    }
    if let Some(scope) = &ac.tester_scope {
        api = api.tester_scope(scope);
    }
    if let Some(th) = &ac.tester_header {
        match (
            HeaderName::from_bytes(th.name.as_bytes()),
            HeaderValue::from_str(&th.value),
        ) {
            (Ok(name), Ok(value)) if !th.value.is_empty() => api = api.tester_header(name, value),
            _ => {
                problems.push(
                    format!("{at}.tester_header"),
                    "needs a valid header name and a non-empty value",
                );
                return None;
            }
        }
    }
    let built = match state {
        Some((_, file)) => LifecycleLayer::with_state(api, Arc::clone(file)),
        None => LifecycleLayer::new(api),
    };
    match built {
        Ok(layer) => Some(layer),
        Err(e) => {
            problems.push(at, e);
            None
        }
    }
}

/// An API's own OpenAPI document, from its file.
fn read_document(path: &str) -> Result<serde_json::Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("`{path}` is not JSON: {e}"))
}

/// The catalog a `catalog = true` route serves at `mount`: every route's
/// API of `config`.
pub(crate) fn catalog(
    config: &GatewayConfig,
    platform: &Platform,
    mount: &str,
    at: &str,
    problems: &mut Problems,
) -> Option<ApiCatalog> {
    let mut catalog = ApiCatalog::new(platform.subscriptions.clone()).mounted_at(mount);
    for rc in &config.routes {
        let (Some(ac), Some(built)) = (&rc.api, platform.apis.get(&rc.name)) else {
            continue;
        };
        let mut listing =
            Listing::new(built.handle()).path(rc.path_prefix.as_deref().unwrap_or("/"));
        let methods: Vec<Method> = rc
            .methods
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect();
        listing = listing.methods(methods);
        if rc.auth.is_some() {
            listing = listing.auth("api_key");
        }
        if let Some(teams) = &ac.visible_to {
            listing = listing.visibility(Visibility::Teams(teams.clone()));
        }
        if let Some(limits) = ac.limits.clone().or_else(|| limits_of(rc)) {
            listing = listing.limits(limits);
        }
        if let Some(doc) = &built.document {
            listing = listing.openapi(doc.clone());
        } else if let Some(prompt) = &rc.prompt {
            // A prompt API describes itself: its variables and answers.
            listing = listing
                .methods([Method::POST])
                .openapi(crate::platform::prompt::openapi(&prompt.api));
        }
        match catalog.list(listing) {
            Ok(c) => catalog = c,
            Err(e) => {
                problems.push(at, e);
                return None;
            }
        }
    }
    Some(catalog)
}

/// A route's rate limit as consumers read it, when its `api` says nothing
/// of its limits: "60 requests per 1m per caller; 1000 requests per 1d
/// per caller".
fn limits_of(rc: &super::config::RouteConfig) -> Option<String> {
    use super::config::KeyConfig;
    let rl = rc.rate_limit.as_ref().filter(|rl| !rl.quotas.is_empty())?;
    let per = match &rl.key {
        KeyConfig::Global => "for everyone together",
        KeyConfig::PeerIp | KeyConfig::ClientIp(_) => "per client address",
        KeyConfig::Header(_) | KeyConfig::Cookie(_) => "per client key",
        KeyConfig::Identity => "per caller",
    };
    let quotas: Vec<String> = rl
        .quotas
        .iter()
        .map(|q| {
            let burst = q
                .burst
                .map(|b| format!(" (bursts of {b})"))
                .unwrap_or_default();
            format!("{} requests per {} {per}{burst}", q.limit, q.period)
        })
        .collect();
    Some(quotas.join("; "))
}
