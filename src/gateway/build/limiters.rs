//! The rate limiters a configuration asks for (the gateway-wide one in
//! front of authentication, each route's, in this process or counted in
//! Redis) and the Redis connection they share.

#[cfg(feature = "redis")]
use std::time::Duration;

#[cfg(feature = "redis")]
use super::BuiltRoute;
use super::{Change, Changes, Problems, SharedRedis, State, key_by, quotas};
#[cfg(feature = "redis")]
use crate::gateway::config::RedisFailureConfig;
use crate::gateway::config::{KeyConfig, RateLimitConfig, RedisConfig};
use crate::key::KeyBy;
use crate::ratelimit::{Quota, RateLimitHandle, RateLimitLayer};

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
pub(super) fn shared_redis(
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
        let target = crate::gateway::redis_target::target(rc, problems)?;
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
        crate::gateway::redis_target::refuse(rc, problems);
        None
    }
}

/// `pre_auth_limit`: one limiter for every route, kept across reloads
/// (with its cells) while its key and build options are unchanged (see
/// [`RateLimitConfig`]).
pub(super) fn pre_auth_limiter(
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
                .is_some_and(|o| crate::gateway::limits::same_build(o, rl))
        })
        .and_then(|o| o.pre_auth.as_ref());
    let place = crate::gateway::limits::Place::PreAuth;
    local_limiter(rl, here, place, reused, problems, changes)
}

/// What a limiter is built from, read from its `rate_limit` section at
/// `here`: the key, the quotas and the options, every problem noted;
/// `None` when any of them is wrong.
fn section(
    rl: &RateLimitConfig,
    here: &str,
    place: crate::gateway::limits::Place,
    problems: &mut Problems,
) -> Option<(KeyBy, Vec<Quota>, crate::gateway::limits::Options)> {
    let key = key_by(&rl.key, &format!("{here}.key"), problems);
    let qs = quotas(&rl.quotas, &format!("{here}.quotas"), problems);
    if rl.quotas.is_empty() {
        problems.push(format!("{here}.quotas"), "at least one quota");
    }
    let options = crate::gateway::limits::options(rl, here, place, problems);
    let (key, options) = (key?, options?);
    (qs.len() == rl.quotas.len()).then_some((key, qs, options))
}

/// A rate limit counted in this process, at `here` in the configuration:
/// `reused` (its cells kept; its quotas, tiers, dry-run and allow list
/// changed when the reload is applied) or a new one.
pub(super) fn local_limiter(
    rl: &RateLimitConfig,
    here: &str,
    place: crate::gateway::limits::Place,
    reused: Option<&(RateLimitLayer, RateLimitHandle)>,
    problems: &mut Problems,
    changes: &mut Changes,
) -> Option<(RateLimitLayer, RateLimitHandle)> {
    let (key, qs, options) = section(rl, here, place, problems)?;
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
pub(super) fn shared_limiter(
    rl: &RateLimitConfig,
    here: &str,
    place: crate::gateway::limits::Place,
    redis: Option<&SharedRedis>,
    old: Option<&BuiltRoute>,
    problems: &mut Problems,
) -> Option<(RedisConfig, crate::ratelimit::redis::RedisRateLimitLayer)> {
    use crate::ratelimit::redis::RedisRateLimitLayer;
    let (key, qs, options) = section(rl, here, place, problems)?;
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
