//! Rate limits shared by every replica of a gateway, kept in Redis
//! (feature `redis`).
//!
//! [`RateLimitLayer`](super::RateLimitLayer) counts in the memory of one
//! process: three replicas behind a load balancer let a client through
//! three times as often. [`RedisRateLimitLayer`] keeps each key's state in
//! Redis instead, so every replica counts against the same quotas. It runs
//! the same algorithm (GCRA: one arrival time per key and quota), answers
//! the same way (429 problem+json, `Retry-After`, `RateLimit` and
//! `RateLimit-Policy`, a gRPC status to gRPC clients), takes the same
//! [`Quota`]s and [`KeyBy`], and has the same per-request
//! [cost](RedisRateLimitBuilder::cost), [dry-run](RedisRateLimitBuilder::dry_run),
//! [allow list](RedisRateLimitBuilder::allow) and live
//! [handle](RedisRateLimitHandle).
//!
//! ```no_run
//! use switchyard::key::{Key, KeyBy};
//! use switchyard::ratelimit::Quota;
//! use switchyard::ratelimit::redis::RedisRateLimitLayer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = redis::Client::open("redis://127.0.0.1/")?
//!     .get_connection_manager()
//!     .await?;
//! let limit = RedisRateLimitLayer::builder(redis)
//!     .key_by(KeyBy::identity())
//!     .quota(Quota::per_minute(600).burst(20).named("api"))
//!     // Uploads cost ten units, everything else one.
//!     .cost(|req| if req.method == http::Method::POST { 10 } else { 1 })
//!     .build()?;
//!
//! // Later, on this replica: a stricter rate under the same name, so
//! // that every key keeps what it has used; the next request sees it.
//! let handle = limit.handle();
//! handle.set_quotas([Quota::per_minute(300).burst(20).named("api")])?;
//! // Usage known only after a response (tokens a model used).
//! handle.charge(&Key::from("alice"), 40).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # How it counts
//!
//! Each request runs one Lua script in Redis, which reads Redis's clock
//! (`TIME`, so the replicas' clocks do not matter) and, for every quota,
//! the key's arrival time; takes the request's units (1, or what
//! [`cost`](RedisRateLimitBuilder::cost) says) from all quotas or from
//! none; and sets each arrival time with an expiry at the moment the key
//! would be fresh again, so idle keys cost Redis nothing. A cost above a
//! quota's burst is refused without `Retry-After`, since waiting will not
//! help. Times are counted in microseconds there (an emission interval is
//! rounded up to a whole microsecond, on the strict side). The keys are
//! `<prefix>{<request key>}:<quota name>`: one hash tag per request key, so
//! that a Redis Cluster keeps a key's quotas on one node.
//!
//! Keys on the [allow list](RedisRateLimitBuilder::allow) bypass the limit
//! without asking Redis. In [dry-run](RedisRateLimitBuilder::dry_run),
//! requests over the limit are let through with the headers of a refusal
//! and counted in [`RedisRateLimitStats::dry_run_rejected`] (they take no
//! units, as a refusal would not).
//!
//! # Live changes
//!
//! [`RedisRateLimitHandle`] (from [`RedisRateLimitLayer::handle`]) swaps
//! the quotas, dry-run and allow list as one snapshot that the next
//! request sees; checks, peeks at and charges keys outside a request (an
//! AI gateway charges the tokens a model used once its response is done);
//! and reads the counters. The state is in Redis, but quotas, dry-run and
//! the allow list are each layer's own configuration: every replica must
//! be told of a change (a [`WeightSync`](crate::sync::WeightSync) with
//! [`rate_limit`](crate::sync::WeightSyncBuilder::rate_limit) carries
//! quotas and dry-run to the others; the gateway's `[weight_sync]` does so
//! for its routes), and while two replicas differ, each checks the shared
//! state against its own quotas. State is kept per quota *name* (see
//! [`set_quotas`](RedisRateLimitHandle::set_quotas)).
//!
//! # When Redis fails
//!
//! A request whose check does not come back in time (100 ms by default),
//! or fails, is let through by default ([`RedisFailure::Allow`]: a
//! limiter outage should not become an API outage) and counted in
//! [`RedisRateLimitStats::errors`]; [`RedisFailure::Reject`] refuses it
//! instead, and [`RedisFailure::Local`] limits it in this process's memory
//! with each replica's share of the quotas, so that a Redis outage neither
//! opens the door nor closes it. The handle's checks and charges return a
//! [`RedisCheckError`] instead, within the same timeout.
//!
//! A Redis that hangs rather than refuses makes every check wait out the
//! timeout. So after 3 failed checks in a row (see
//! [`breaker`](RedisRateLimitBuilder::breaker)) the limiter stops asking
//! for a second: requests go straight to the failure policy (counted in
//! [`RedisRateLimitStats::skipped`]), and the handle's calls fail at once
//! with [`RedisCheckError::Skipped`]. Then one request asks again; an
//! answer closes the breaker, a failure opens it for another second.
//!
//! # TLS
//!
//! With switchyard's `tls` feature as well, `rediss://` URLs connect over
//! TLS (rustls with ring), checking the server against the system's root
//! certificates. For a private CA, or a client certificate for mutual TLS,
//! make the client with `redis::Client::build_with_tls(url,
//! redis::TlsCertificates { root_cert: Some(ca_pem), client_tls: None })`
//! (`client_tls: Some(redis::ClientTlsConfig { client_cert, client_key })`,
//! all PEM). The `redis` crate builds its rustls settings from the process's
//! default provider, or else the one rustls's features name: ring, unless
//! your build enables aws-lc-rs as well, and then install one with
//! `rustls::crypto::CryptoProvider::install_default` before connecting. The
//! gateway's `[redis]` takes `ca_file`, `client_cert_file` and
//! `client_key_file`, and installs ring as that default when none is.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use crate::redis_conn::RedisConnection;
use arc_swap::ArcSwapOption;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::breaker::{Breaker, Gate};
use super::clock::{Clock, MonotonicClock};
use super::gcra::{Gcra, MAX_TAU};
use super::service::{
    Config, CostFn, Decision, LiveConfig, MissingKey, allow_listed, allowed_headers, decide_in,
    missing_key, rejection, request_cost,
};
use super::store::Store;
use super::{Quota, RateLimitError};
use crate::body::ResponseBody;
use crate::future::Rejection;
use crate::key::{Key, KeyBy, RequestView};
use crate::problem::Problem;

/// The check, all quotas at once. `KEYS`: one per quota. `ARGV`: the cost;
/// the mode (`check`: take the units if every quota allows them; `peek`:
/// the same answer without writing; `charge`: add the units whatever the
/// quotas say); the furthest ahead of now a charge may move an arrival
/// time, in microseconds; then each quota's emission interval and
/// tolerance in microseconds. Returns the refusing quota's position
/// (1-based, 0 when allowed; always 0 for a charge), the wait until the
/// request would pass in microseconds (-1: never), then each quota's
/// arrival time ahead of now in microseconds (after the units were taken
/// if they were).
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local mode = ARGV[2]
local most = tonumber(ARGV[3])
local tats = {}
local refused, wait = 0, 0
for i = 1, #KEYS do
  local interval, tau = tonumber(ARGV[2 * i + 2]), tonumber(ARGV[2 * i + 3])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  local ahead = tat + cost * interval - now
  if mode == 'charge' then
  elseif cost * interval > tau then
    if refused == 0 then refused = i end
    wait = -1
  elseif ahead > tau then
    if refused == 0 then refused = i end
    if wait >= 0 and ahead - tau > wait then wait = ahead - tau end
  end
end
local write = refused == 0 and mode ~= 'peek'
local out = {refused, wait}
for i = 1, #KEYS do
  local tat = tats[i]
  if write then
    tat = tat + cost * tonumber(ARGV[2 * i + 2])
    if tat > now + most then tat = now + most end
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  out[#out + 1] = tat - now
end
return out
";

/// Keys [`RedisFailure::Local`] tracks at once.
const LOCAL_KEYS: usize = 100_000;

/// What the script is asked to do.
#[derive(Clone, Copy)]
enum Mode {
    Check,
    Peek,
    Charge,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Check => "check",
            Mode::Peek => "peek",
            Mode::Charge => "charge",
        }
    }
}

/// What to do with a request whose check Redis did not answer (or that
/// was not asked, the [breaker](RedisRateLimitBuilder::breaker) being
/// open).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisFailure {
    /// Let it through (the default).
    Allow,
    /// Refuse it with 503 and a problem+json body.
    Reject,
    /// Limit it in this process's memory instead, as
    /// [`RateLimitLayer`](super::RateLimitLayer) would, against each
    /// quota's share for one of `replicas` replicas: its period multiplied
    /// by `replicas` (so its rate divided) and its burst divided (rounded
    /// down, at least 1), under the same name. With every replica doing so,
    /// the fleet lets through about what the shared limit would, if the
    /// load balancer spreads each key's requests evenly; keys that stick to
    /// one replica get less. Allowed and refused requests carry the
    /// headers of that share, and count in `allowed` and `rejected` as
    /// well as in `errors` or `skipped`.
    ///
    /// The local state is kept while Redis answers, unused but for the
    /// keys Redis refuses (their local share is spent too, so that a key
    /// the fleet refuses stays refused through an outage), and starts
    /// from it at the next outage; it holds up to 100 000 keys, and the
    /// keys it cannot hold share one state. `replicas` of 0 is refused when
    /// the layer is built.
    Local {
        /// How many replicas share the limit.
        replicas: u32,
    },
}

/// Why a check, peek or charge through a [`RedisRateLimitHandle`] has no
/// answer. (Requests through the layer are let through or refused instead,
/// as [`RedisFailure`] says.)
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisCheckError {
    /// Redis answered with an error, or the connection failed.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// No answer within the layer's [timeout](RedisRateLimitBuilder::timeout).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The script answered something else than it should (another program
    /// writing the same keys, say).
    #[error("unexpected answer from the rate-limit script")]
    UnexpectedAnswer,
    /// Not asked: Redis failed the last checks, and the
    /// [breaker](RedisRateLimitBuilder::breaker) is open.
    #[error("not asked: Redis failed the last checks; asking again after the cooldown")]
    Skipped,
}

/// The counters of a [`RedisRateLimitLayer`] (this replica's share).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisRateLimitStats {
    /// Requests Redis allowed.
    pub allowed: u64,
    /// Requests refused with 429.
    pub rejected: u64,
    /// Requests over the limit let through by dry-run.
    pub dry_run_rejected: u64,
    /// Requests without a key.
    pub missing_key: u64,
    /// Requests whose key is on the allow list.
    pub bypassed: u64,
    /// Checks of requests that failed or timed out (handled as
    /// [`RedisFailure`] says). The handle's own checks and charges return
    /// their errors instead of counting them.
    pub errors: u64,
    /// Requests not checked in Redis because it failed the checks before
    /// (the [breaker](RedisRateLimitBuilder::breaker) was open), handled as
    /// [`RedisFailure`] says.
    pub skipped: u64,
    /// Whether checks skip Redis now.
    pub skipping: bool,
}

#[derive(Default)]
struct Counters {
    allowed: AtomicU64,
    rejected: AtomicU64,
    dry_run_rejected: AtomicU64,
    missing_key: AtomicU64,
    bypassed: AtomicU64,
    errors: AtomicU64,
    skipped: AtomicU64,
}

/// The live configuration as the script counts it: [`Config`], with its
/// quotas' parameters in whole microseconds, rounded up (the strict
/// side). They are the script's arguments and the arithmetic its answers
/// are read with.
fn config(
    quotas: Vec<Quota>,
    dry_run: bool,
    allow: HashSet<Key<'static>>,
) -> Result<Config, RateLimitError> {
    let mut config = Config::new(quotas, dry_run, allow)?;
    for g in &mut config.gcras {
        let interval = g.interval.div_ceil(1_000) * 1_000;
        *g = Gcra {
            interval,
            tau: interval * u64::from(g.burst),
            burst: g.burst,
        };
    }
    Ok(config)
}

struct Limiter {
    redis: RedisConnection,
    script: redis::Script,
    /// The live part, swapped whole by the handle.
    config: LiveConfig,
    prefix: String,
    key_by: KeyBy,
    cost: Option<Box<CostFn>>,
    on_missing: MissingKey,
    on_failure: RedisFailure,
    /// Where [`RedisFailure::Local`] keeps its state.
    local: Option<Local>,
    breaker: Breaker,
    timeout: Duration,
    headers_on_allowed: bool,
    legacy_headers: bool,
    counters: Counters,
    /// Told after each change of the quotas, dry-run or allow list (the
    /// weight sync publishes it at once).
    listeners: crate::signal::Listeners,
}

/// The in-memory limiter of [`RedisFailure::Local`].
struct Local {
    replicas: u32,
    store: Store,
    clock: MonotonicClock,
    /// The share of the configuration last asked for, with that
    /// configuration: worked out again when the handle has changed it.
    share: ArcSwapOption<(Arc<Config>, Config)>,
}

impl Local {
    /// The share of `config` this replica limits with.
    fn share(&self, config: &Arc<Config>) -> Result<Arc<(Arc<Config>, Config)>, RateLimitError> {
        if let Some(share) = self.share.load_full()
            && Arc::ptr_eq(&share.0, config)
        {
            return Ok(share);
        }
        let share = Arc::new((Arc::clone(config), share_of(config, self.replicas)?));
        self.share.store(Some(Arc::clone(&share)));
        Ok(share)
    }
}

/// One of `replicas` shares of `config`'s quotas: each period multiplied,
/// each burst divided (at least 1), the names kept.
fn share_of(config: &Config, replicas: u32) -> Result<Config, RateLimitError> {
    if replicas == 0 {
        return Err(RateLimitError::NoReplicas);
    }
    let quotas = config
        .quotas
        .iter()
        .map(|(q, _)| {
            let period = q
                .period()
                .checked_mul(replicas)
                .ok_or_else(|| RateLimitError::InvalidQuota(q.name()))?;
            Ok(Quota::new(q.count(), period)
                .burst((q.burst_size() / replicas).max(1))
                .named(q.name()))
        })
        .collect::<Result<Vec<_>, RateLimitError>>()?;
    Config::new(quotas, config.dry_run, config.allow.clone())
}

// === impl RedisRateLimitLayer ===

/// A [`Layer`] limiting requests per key against quotas kept in Redis; see
/// the [module docs](self). Cheap to clone: clones share the connection,
/// the configuration and the counters.
#[derive(Clone)]
pub struct RedisRateLimitLayer {
    limiter: Arc<Limiter>,
}

impl RedisRateLimitLayer {
    /// A builder over this connection (a `redis::aio::ConnectionManager`,
    /// which reconnects by itself, or a [`RedisConnection`] to a cluster or
    /// through Sentinel); add at least one quota.
    pub fn builder(redis: impl Into<RedisConnection>) -> RedisRateLimitBuilder {
        RedisRateLimitBuilder {
            redis: redis.into(),
            key_by: KeyBy::peer_ip(),
            quotas: Vec::new(),
            cost: None,
            dry_run: false,
            allow: HashSet::new(),
            prefix: "switchyard:rl:".to_owned(),
            on_missing: MissingKey::Reject(StatusCode::BAD_REQUEST),
            on_failure: RedisFailure::Allow,
            breaker: (3, Duration::from_secs(1)),
            timeout: Duration::from_millis(100),
            headers_on_allowed: true,
            legacy_headers: false,
        }
    }

    /// The live handle on this layer's limiter.
    pub fn handle(&self) -> RedisRateLimitHandle {
        RedisRateLimitHandle {
            limiter: Arc::clone(&self.limiter),
        }
    }

    /// The counters, shared by every service the layer wrapped.
    pub fn stats(&self) -> RedisRateLimitStats {
        self.limiter.stats()
    }

    /// The Redis keys that hold `key`'s state under the current quotas, one
    /// per quota, in order.
    pub fn redis_keys(&self, key: &Key<'_>) -> Vec<String> {
        self.limiter
            .redis_keys(&self.limiter.config.load().names, key)
    }
}

impl fmt::Debug for RedisRateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitLayer")
            .field("quotas", &self.limiter.config.load().names)
            .field("key_by", &self.limiter.key_by)
            .field("prefix", &self.limiter.prefix)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RedisRateLimitLayer {
    type Service = RedisRateLimit<S>;

    fn layer(&self, inner: S) -> RedisRateLimit<S> {
        RedisRateLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
        }
    }
}

// === impl RedisRateLimitHandle ===

/// A live handle on a [`RedisRateLimitLayer`]: change its quotas, dry-run
/// and allow list; check, peek at or charge a key; read counters. Cheap to
/// clone.
///
/// Changes are this layer's (this replica's): the state in Redis is
/// shared, the configuration is not. See the [module docs](self).
#[derive(Clone)]
pub struct RedisRateLimitHandle {
    limiter: Arc<Limiter>,
}

impl RedisRateLimitHandle {
    /// Checks and, if allowed, takes `cost` units for `key` now, exactly as
    /// a request would (without the allow list and dry-run, which are the
    /// layer's business, and without counting in [`stats`](Self::stats)).
    ///
    /// The future owns what it needs (it can be spawned), and fails after
    /// the layer's [timeout](RedisRateLimitBuilder::timeout).
    pub fn check(
        &self,
        key: &Key<'_>,
        cost: u32,
    ) -> impl Future<Output = Result<Decision, RedisCheckError>> + Send + 'static {
        let config = self.limiter.config.load_full();
        self.limiter.run(config, key, u64::from(cost), Mode::Check)
    }

    /// What [`check`](Self::check) would decide for `cost` units, without
    /// taking anything (nothing is written to Redis). The quota states are
    /// the key's as they are now (its remaining capacity), not as they
    /// would be after the request.
    pub fn peek(
        &self,
        key: &Key<'_>,
        cost: u32,
    ) -> impl Future<Output = Result<Decision, RedisCheckError>> + Send + 'static {
        let config = self.limiter.config.load_full();
        self.limiter.run(config, key, u64::from(cost), Mode::Peek)
    }

    /// Charges `cost` more units to `key` on every quota, unconditionally:
    /// for usage known only after the response (tokens an AI model used).
    /// The key may go into debt (up to as far ahead as the longest quota
    /// the limiter accepts, about 146 years); its next requests wait until
    /// it is paid. One atomic script, like a check.
    pub fn charge(
        &self,
        key: &Key<'_>,
        cost: u64,
    ) -> impl Future<Output = Result<(), RedisCheckError>> + Send + 'static {
        let config = self.limiter.config.load_full();
        let run = self.limiter.run(config, key, cost, Mode::Charge);
        async move { run.await.map(|_| ()) }
    }

    /// The key this limiter reads from `req`, if the request has one: to
    /// [`charge`](Self::charge) it later.
    pub fn key_of<'r, B>(&self, req: &'r Request<B>) -> Option<Key<'r>> {
        self.limiter.key_by.extract(req)
    }

    /// The Redis keys that hold `key`'s state under the current quotas, one
    /// per quota, in order.
    pub fn redis_keys(&self, key: &Key<'_>) -> Vec<String> {
        self.limiter
            .redis_keys(&self.limiter.config.load().names, key)
    }

    /// Replaces this layer's quotas; the next request is checked against
    /// them. On an error nothing changes.
    ///
    /// Each key's state is kept in Redis per quota *name* (the Redis key
    /// ends in it), whatever the quota's position:
    ///
    /// * a quota that keeps its name continues from every key's state, so
    ///   changing its rate or burst keeps what each key has used (a key
    ///   whose arrival time is further ahead than a stricter quota's
    ///   tolerance waits until it is within it);
    /// * a quota under a name no quota had before (a renamed one included)
    ///   starts fresh for every key: renaming a quota resets it;
    /// * the state of a quota no longer named stays in Redis, unused, until
    ///   it expires (at the latest when every key would be fresh again
    ///   under that quota).
    ///
    /// Other layers over the same prefix (other replicas) keep their
    /// quotas until they are changed too; meanwhile each checks the shared
    /// state against its own.
    pub fn set_quotas(
        &self,
        quotas: impl IntoIterator<Item = Quota>,
    ) -> Result<(), RateLimitError> {
        self.update(|c| config(quotas.into_iter().collect(), c.dry_run, c.allow.clone()))
    }

    /// The current quotas.
    pub fn quotas(&self) -> Vec<Quota> {
        self.limiter.config.quotas()
    }

    /// Whether the layer is in dry-run.
    pub fn dry_run(&self) -> bool {
        self.limiter.config.load().dry_run
    }

    /// Turns dry-run on or off: in dry-run, requests over the limit are
    /// counted and get the headers, but are let through.
    pub fn set_dry_run(&self, dry_run: bool) {
        let _ = self.update(|c| Ok(c.with_dry_run(dry_run)));
    }

    /// Replaces the allow list: keys that bypass the limit entirely.
    pub fn set_allow_list<K: Into<Key<'static>>>(&self, keys: impl IntoIterator<Item = K>) {
        let allow = keys.into_iter().map(Into::into).collect();
        let _ = self.update(|c| Ok(c.with_allow(allow)));
    }

    fn update(
        &self,
        f: impl FnOnce(&Config) -> Result<Config, RateLimitError>,
    ) -> Result<(), RateLimitError> {
        let local = self.limiter.local.as_ref();
        self.limiter.config.update(
            |c| {
                let next = f(c)?;
                // The local fallback must be able to take its share.
                if let Some(local) = local {
                    share_of(&next, local.replicas)?;
                }
                Ok(next)
            },
            |_| {},
        )?;
        self.limiter.listeners.fire();
        Ok(())
    }

    /// Tells `listener` of each change from now on.
    pub(crate) fn listen(&self, listener: &Arc<dyn crate::signal::Listener>) {
        self.limiter.listeners.add(listener);
    }

    /// The layer's counters (this replica's share).
    pub fn stats(&self) -> RedisRateLimitStats {
        self.limiter.stats()
    }
}

impl fmt::Debug for RedisRateLimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

// === impl RedisRateLimitBuilder ===

/// Builds a [`RedisRateLimitLayer`]; see [`RedisRateLimitLayer::builder`].
pub struct RedisRateLimitBuilder {
    redis: RedisConnection,
    key_by: KeyBy,
    quotas: Vec<Quota>,
    cost: Option<Box<CostFn>>,
    dry_run: bool,
    allow: HashSet<Key<'static>>,
    prefix: String,
    on_missing: MissingKey,
    on_failure: RedisFailure,
    breaker: (u32, Duration),
    timeout: Duration,
    headers_on_allowed: bool,
    legacy_headers: bool,
}

impl fmt::Debug for RedisRateLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitBuilder")
            .field("key_by", &self.key_by)
            .field("quotas", &self.quotas)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimitBuilder {
    /// Where each request's key comes from; [`KeyBy::peer_ip`] by default.
    pub fn key_by(mut self, key_by: KeyBy) -> Self {
        self.key_by = key_by;
        self
    }

    /// Adds a quota (up to four); a request must pass all of them.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quotas.push(quota);
        self
    }

    /// The cost of a request in quota units (1 by default), e.g. estimated
    /// prompt tokens. A cost above a quota's burst is always refused, with
    /// no `Retry-After`.
    pub fn cost<F>(mut self, cost: F) -> Self
    where
        F: Fn(&RequestView<'_>) -> u32 + Send + Sync + 'static,
    {
        self.cost = Some(Box::new(cost));
        self
    }

    /// Count and add headers, but never refuse (to try a limit on real
    /// traffic first). Can be changed later through the handle.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Lets requests with this key bypass the limit (Redis is not asked).
    pub fn allow(mut self, key: impl Into<Key<'static>>) -> Self {
        self.allow.insert(key.into());
        self
    }

    /// The prefix of every Redis key (`switchyard:rl:` by default): give
    /// limiters that must not share state different prefixes.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// What to do with a request that has no key (400 by default).
    pub fn on_missing_key(mut self, on_missing: MissingKey) -> Self {
        self.on_missing = on_missing;
        self
    }

    /// What to do when Redis does not answer (let through by default).
    pub fn on_redis_failure(mut self, on_failure: RedisFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    /// After `failures` failed checks in a row, stop asking Redis for
    /// `cooldown`: requests go straight to the [failure
    /// policy](Self::on_redis_failure) instead of each waiting out the
    /// [timeout](Self::timeout) of a Redis that hangs. Then one request
    /// asks (the others keep skipping until it is answered): an answer
    /// closes the breaker, a failure opens it for another `cooldown`.
    /// 3 failures and 1 s by default; `failures` of 0 always asks.
    pub fn breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker = (failures, cooldown);
        self
    }

    /// How long a check may take before it counts as failed (100 ms by
    /// default); the handle's checks and charges too.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether allowed responses carry `RateLimit` and `RateLimit-Policy`
    /// (they do by default; refusals and dry-run refusals always do).
    pub fn headers_on_allowed(mut self, on: bool) -> Self {
        self.headers_on_allowed = on;
        self
    }

    /// Also sends `X-RateLimit-Limit`, `-Remaining` and `-Reset`.
    pub fn legacy_headers(mut self, on: bool) -> Self {
        self.legacy_headers = on;
        self
    }

    /// Checks the quotas and builds the layer.
    pub fn build(self) -> Result<RedisRateLimitLayer, RateLimitError> {
        let config = config(self.quotas, self.dry_run, self.allow)?;
        let local = match self.on_failure {
            RedisFailure::Local { replicas } => {
                share_of(&config, replicas)?;
                Some(Local {
                    replicas,
                    store: Store::new(LOCAL_KEYS, true),
                    clock: MonotonicClock::new(),
                    share: ArcSwapOption::empty(),
                })
            }
            RedisFailure::Allow | RedisFailure::Reject => None,
        };
        Ok(RedisRateLimitLayer {
            limiter: Arc::new(Limiter {
                redis: self.redis,
                script: redis::Script::new(SCRIPT),
                config: LiveConfig::new(config),
                prefix: self.prefix,
                key_by: self.key_by,
                cost: self.cost,
                on_missing: self.on_missing,
                on_failure: self.on_failure,
                local,
                breaker: Breaker::new(self.breaker.0, self.breaker.1),
                timeout: self.timeout,
                headers_on_allowed: self.headers_on_allowed,
                legacy_headers: self.legacy_headers,
                counters: Counters::default(),
                listeners: crate::signal::Listeners::default(),
            }),
        })
    }
}

// === impl Limiter ===

impl Limiter {
    fn stats(&self) -> RedisRateLimitStats {
        let c = &self.counters;
        RedisRateLimitStats {
            allowed: c.allowed.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            dry_run_rejected: c.dry_run_rejected.load(Ordering::Relaxed),
            missing_key: c.missing_key.load(Ordering::Relaxed),
            bypassed: c.bypassed.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            skipping: self.breaker.is_open(),
        }
    }

    fn redis_keys(&self, names: &[String], key: &Key<'_>) -> Vec<String> {
        let tag = key_tag(key);
        names
            .iter()
            .map(|name| format!("{}{{{tag}}}:{name}", self.prefix))
            .collect()
    }

    /// Runs the script in Redis for `key` under `config` (the snapshot the
    /// answer is read with): the decision, or why there is none. At once
    /// [`RedisCheckError::Skipped`] while the breaker is open.
    fn run(self: &Arc<Self>, config: Arc<Config>, key: &Key<'_>, cost: u64, mode: Mode) -> Check {
        let probe = match self.breaker.gate() {
            Gate::Skip => return Box::pin(std::future::ready(Err(RedisCheckError::Skipped))),
            Gate::Ask => false,
            Gate::Probe => true,
        };
        let keys = self.redis_keys(&config.names, key);
        let limiter = Arc::clone(self);
        Box::pin(async move {
            // A probe dropped before its answer gives its turn back.
            let mut turn = ProbeTurn(probe.then(|| Arc::clone(&limiter)));
            let mut invocation = limiter.script.prepare_invoke();
            for k in keys {
                invocation.key(k);
            }
            invocation.arg(cost).arg(mode.as_str()).arg(MAX_TAU / 1_000);
            for g in &config.gcras {
                invocation.arg(g.interval / 1_000).arg(g.tau / 1_000);
            }
            let mut redis = limiter.redis.clone();
            let timeout = limiter.timeout;
            let run = invocation.invoke_async::<Vec<i64>>(&mut redis);
            let out = tokio::time::timeout(timeout, run).await;
            turn.0 = None;
            limiter.breaker.record(matches!(out, Ok(Ok(_))), probe);
            match out {
                Ok(Ok(out)) => decision(&config, &out),
                Ok(Err(e)) => Err(RedisCheckError::Redis(e)),
                Err(_) => Err(RedisCheckError::Timeout(timeout)),
            }
        })
    }

    /// Counts `decision` about a request and turns it into the headers to
    /// add to the response, or the refusal.
    fn verdict(
        &self,
        config: &Config,
        decision: &Decision,
        cost: u32,
        grpc: bool,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Rejection> {
        let counters = &self.counters;
        if decision.is_allowed() || config.dry_run {
            let counter = if decision.is_allowed() {
                &counters.allowed
            } else {
                &counters.dry_run_rejected
            };
            counter.fetch_add(1, Ordering::Relaxed);
            Ok(allowed_headers(
                config,
                decision,
                self.headers_on_allowed,
                self.legacy_headers,
            ))
        } else {
            counters.rejected.fetch_add(1, Ordering::Relaxed);
            Err(rejection(config, decision, cost, self.legacy_headers).grpc(grpc))
        }
    }

    /// Redis refused `req`'s key: with the local fallback, the key's local
    /// share is spent too, so that a key the fleet refuses is not let
    /// through by a fresh local count at the next outage (it refills as
    /// any count does). Only on refusals: once spent, the first try is
    /// refused, so a flood of refused requests costs one local check each.
    fn remember_refusal<B>(&self, config: &Arc<Config>, req: &Request<B>) {
        let (Some(local), Some(key)) = (&self.local, self.key_by.extract(req)) else {
            return;
        };
        let Ok(share) = local.share(config) else {
            return;
        };
        let share = &share.1;
        let now = local.clock.now_nanos();
        let most = share
            .quotas
            .iter()
            .map(|(q, _)| q.burst_size())
            .min()
            .unwrap_or(1)
            .min(10_000);
        for _ in 0..=most {
            if !decide_in(&local.store, &share.gcras, &key, 1, now, true).is_allowed() {
                break;
            }
        }
    }

    /// What a request whose check failed (`why`) gets, as `on_failure`
    /// says: let through with these headers, or refused.
    fn fallback<B>(
        &self,
        config: &Arc<Config>,
        req: &Request<B>,
        cost: u32,
        grpc: bool,
        why: &RedisCheckError,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, Rejection> {
        let counter = match why {
            RedisCheckError::Skipped => &self.counters.skipped,
            _ => &self.counters.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        match self.on_failure {
            RedisFailure::Allow => Ok(Vec::new()),
            RedisFailure::Reject => {
                // The error names Redis's address and state: for the log,
                // not for the client.
                tracing::warn!(error = %why, "rate limiter unavailable; request refused");
                Err(Rejection::new(
                    Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                        .detail("the rate limiter is unavailable"),
                )
                .grpc(grpc))
            }
            RedisFailure::Local { .. } => {
                // The share was checked when the quotas were set, and the
                // request had its key: neither fails here.
                let (Some(local), Some(key)) = (&self.local, self.key_by.extract(req)) else {
                    return Ok(Vec::new());
                };
                let Ok(share) = local.share(config) else {
                    return Ok(Vec::new());
                };
                let share = &share.1;
                let now = local.clock.now_nanos();
                let decision = decide_in(&local.store, &share.gcras, &key, cost, now, true);
                self.verdict(share, &decision, cost, grpc)
            }
        }
    }
}

/// A request key as Redis key text, safe inside a hash tag: its kind
/// (`ip:`, `h:` for a digest, `b:` for bytes, `global`) so that keys of
/// different kinds never meet, and braces and `%` escaped. (Shared with
/// the token limits of [`crate::spend`].)
pub(crate) fn key_tag(key: &Key<'_>) -> String {
    let mut tag = String::new();
    // A long key is named by its digest: a Redis key name stays small
    // however long the key a client sent (see `Key::digest_if_long`).
    let digest = key.digest_if_long();
    let key = digest.as_ref().unwrap_or(key);
    if let Some(ip) = key.as_ip() {
        escape_tag(format!("ip:{ip}").as_bytes(), &mut tag);
    } else if let Some(d) = key.as_digest() {
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        escape_tag(format!("h:{hex}").as_bytes(), &mut tag);
    } else if let Some(bytes) = key.as_bytes() {
        escape_tag(b"b:", &mut tag);
        // Not UTF-8 in general: every byte as its char (Latin-1), which is
        // still one-to-one.
        escape_tag(bytes, &mut tag);
    } else {
        escape_tag(b"global", &mut tag);
    }
    tag
}

/// Appends `bytes` to `out` with braces and `%` escaped (`%7B`), so that
/// they cannot end a hash tag and different inputs never meet.
pub(crate) fn escape_tag(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        match b {
            b'{' | b'}' | b'%' => out.push_str(&format!("%{b:02X}")),
            b => out.push(char::from(b)),
        }
    }
}

/// The turn of a probe that has not been answered yet.
struct ProbeTurn(Option<Arc<Limiter>>);

impl Drop for ProbeTurn {
    fn drop(&mut self) {
        if let Some(limiter) = self.0.take() {
            limiter.breaker.abandon();
        }
    }
}

/// Reads the script's answer.
fn decision(config: &Config, out: &[i64]) -> Result<Decision, RedisCheckError> {
    let [refused, wait, ahead @ ..] = out else {
        return Err(RedisCheckError::UnexpectedAnswer);
    };
    if ahead.len() != config.gcras.len() {
        return Err(RedisCheckError::UnexpectedAnswer);
    }
    let micros = |v: i64| u64::try_from(v).unwrap_or(0).saturating_mul(1_000);
    let refused_by = usize::try_from(*refused)
        .ok()
        .and_then(|i| i.checked_sub(1));
    // An answer naming a quota this limiter does not have is not ours
    // (another version of the script, or a corrupted reply): found by the
    // `redis_replies` fuzz target, it used to panic the request.
    if refused_by.is_some_and(|i| i >= config.gcras.len()) {
        return Err(RedisCheckError::UnexpectedAnswer);
    }
    let retry_after = refused_by
        .and_then(|_| u64::try_from(*wait).ok())
        .map(|w| Duration::from_micros(w.max(1)));
    Ok(Decision::from_ahead(
        &config.gcras,
        ahead.iter().map(|&a| micros(a)),
        refused_by,
        retry_after,
    ))
}

type Check = Pin<Box<dyn Future<Output = Result<Decision, RedisCheckError>> + Send>>;

// === impl RedisRateLimit ===

/// A service limited against Redis; built by [`RedisRateLimitLayer`].
#[derive(Clone)]
pub struct RedisRateLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

impl<S> RedisRateLimit<S> {
    /// The live handle on this service's limiter.
    pub fn handle(&self) -> RedisRateLimitHandle {
        RedisRateLimitHandle {
            limiter: Arc::clone(&self.limiter),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> fmt::Debug for RedisRateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimit").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RedisRateLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = RedisFuture<S, Request<ReqB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let limiter = &self.limiter;
        let grpc = crate::grpc::is_grpc(req.headers());
        let Some(key) = limiter.key_by.extract(&req) else {
            limiter.counters.missing_key.fetch_add(1, Ordering::Relaxed);
            let state = match limiter.on_missing {
                MissingKey::Reject(status) => State::Refused {
                    rejection: Some(missing_key(&limiter.key_by, status).grpc(grpc)),
                },
                MissingKey::Allow => State::Calling {
                    future: self.inner.call(req),
                    headers: Vec::new(),
                },
            };
            return RedisFuture { state };
        };
        let config = limiter.config.load_full();
        if !config.allow.is_empty() && allow_listed(&config.allow, &key) {
            limiter.counters.bypassed.fetch_add(1, Ordering::Relaxed);
            return RedisFuture {
                state: State::Calling {
                    future: self.inner.call(req),
                    headers: Vec::new(),
                },
            };
        }
        let cost = request_cost(limiter.cost.as_deref(), &req);
        let check = limiter.run(Arc::clone(&config), &key, u64::from(cost), Mode::Check);
        // The service that was made ready goes with the request; this one
        // gets a fresh clone (tower's advice for services that call their
        // inner one later).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        RedisFuture {
            state: State::Checking {
                check,
                inner: Some(inner),
                req: Some(req),
                limiter: Arc::clone(limiter),
                config,
                cost,
                grpc,
            },
        }
    }
}

pin_project! {
    /// Response future of [`RedisRateLimit`]: the check in Redis, then the
    /// inner service's response with the rate-limit headers, or the 429.
    pub struct RedisFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Checking {
            check: Check,
            inner: Option<S>,
            req: Option<Req>,
            limiter: Arc<Limiter>,
            config: Arc<Config>,
            cost: u32,
            grpc: bool,
        },
        Calling {
            #[pin]
            future: S::Future,
            headers: Vec<(HeaderName, HeaderValue)>,
        },
        Refused {
            rejection: Option<Rejection>,
        },
    }
}

impl<S, Req> fmt::Debug for RedisFuture<S, Req>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisFuture").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Future for RedisFuture<S, Request<ReqB>>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Checking {
                    check,
                    inner,
                    req,
                    limiter,
                    config,
                    cost,
                    grpc,
                } => {
                    let outcome = ready!(check.as_mut().poll(cx));
                    let (Some(mut svc), Some(req)) = (inner.take(), req.take()) else {
                        // Polled again after it finished: never a panic.
                        return Poll::Pending;
                    };
                    let verdict = match &outcome {
                        Ok(decision) => {
                            if !decision.is_allowed() && !config.dry_run {
                                limiter.remember_refusal(config, &req);
                            }
                            limiter.verdict(config, decision, *cost, *grpc)
                        }
                        Err(why) => limiter.fallback(config, &req, *cost, *grpc, why),
                    };
                    let headers = match verdict {
                        Ok(headers) => headers,
                        Err(r) => {
                            state.set(State::Refused { rejection: Some(r) });
                            continue;
                        }
                    };
                    // The inner service was ready when this one was; a
                    // service that is not ready any more says so here.
                    let future = svc.call(req);
                    state.set(State::Calling { future, headers });
                }
                StateProj::Calling { future, headers } => {
                    let mut res = ready!(future.poll(cx))?;
                    let map = res.headers_mut();
                    for (name, value) in headers.drain(..) {
                        map.insert(name, value);
                    }
                    return Poll::Ready(Ok(res.map(ResponseBody::new)));
                }
                StateProj::Refused { rejection } => {
                    let rejection = rejection.take().unwrap_or_else(|| {
                        Rejection::new(Problem::new(StatusCode::INTERNAL_SERVER_ERROR))
                    });
                    return Poll::Ready(Ok(rejection.into_response()));
                }
            }
        }
    }
}
