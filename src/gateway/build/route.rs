//! One route's pipeline from its section: the terminal service (a split,
//! a model router, the catalog or a prompt API) under the route's layers.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use http::{HeaderName, Method, Request};
use tower::{Layer, ServiceExt};

use super::limiters::local_limiter;
#[cfg(feature = "redis")]
use super::limiters::shared_limiter;
use super::{
    BuiltRoute, BuiltSplit, Change, Changes, Matcher, Pipeline, Problems, SharedRedis, boxed,
    key_by,
};
use crate::auth::{ApiKeyLayer, RequireScopes};
use crate::gateway::GatewayBody;
use crate::gateway::config::{GatewayConfig, RouteConfig, UpstreamConfig};
use crate::model::{ModelRouter, OpenAiErrorsLayer};
use crate::proxy::Upstream;
use crate::ratelimit::{MonotonicClock, RateLimitLayer};
use crate::split::Split;
use crate::transform::TransformLayer;

/// What every route is built from besides its own configuration.
pub(super) struct Common<'a> {
    pub(super) upstreams: &'a HashMap<String, (UpstreamConfig, Upstream)>,
    /// The upstreams built anew rather than kept from the old state.
    pub(super) rebuilt: &'a [String],
    pub(super) old_upstreams: Option<&'a HashMap<String, (UpstreamConfig, Upstream)>>,
    pub(super) auth: Option<&'a ApiKeyLayer>,
    #[cfg(feature = "jwt")]
    pub(super) jwt: Option<&'a crate::auth::JwtLayer>,
    pub(super) pre_auth: Option<&'a RateLimitLayer>,
    pub(super) redis: Option<&'a SharedRedis>,
    pub(super) platform: &'a crate::gateway::platform::Platform,
    pub(super) config: &'a GatewayConfig,
    /// The routes built before this one (a prompt route's model route).
    pub(super) built: &'a [BuiltRoute],
}

pub(super) fn build_route(
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
            crate::gateway::platform::catalog(config, platform, &prefix, at, problems).map(boxed)
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
            split.as_ref().map(|s| Pipeline::split(s.split.clone()))
        }
        (None, Some(mc)) => {
            let here = format!("{at}.model");
            spend = mc.spend.as_ref().and_then(|sc| {
                let (built, prices) = crate::gateway::spend::rebuild(
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
        crate::gateway::mirror::build(
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
        let place = crate::gateway::limits::Place::Route {
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
                        .is_some_and(|o| crate::gateway::limits::same_build(o, rl))
                })
                .and_then(|o| o.limiter.as_ref());
            let place = crate::gateway::limits::Place::Route {
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
/// ([`Gateway::config`](crate::gateway::Gateway::config) shows the live ones).
fn prompt_api(
    pc: &crate::gateway::config::PromptRouteConfig,
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
