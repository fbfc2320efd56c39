//! Rate limits shared by every replica of a gateway, kept in Redis
//! (feature `redis`).
//!
//! [`RateLimitLayer`](super::RateLimitLayer) counts in the memory of one
//! process: three replicas behind a load balancer let a client through
//! three times as often. [`RedisRateLimitLayer`] keeps each key's state in
//! Redis instead, so every replica counts against the same quotas. It runs
//! the same algorithm (GCRA: one arrival time per key and quota), answers
//! the same way (429 problem+json, `Retry-After`, `RateLimit` and
//! `RateLimit-Policy`, a gRPC status to gRPC clients), and takes the same
//! [`Quota`]s and [`KeyBy`].
//!
//! ```no_run
//! use switchyard::key::KeyBy;
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
//!     .build()?;
//! # let _ = limit;
//! # Ok(())
//! # }
//! ```
//!
//! # How it counts
//!
//! Each request runs one Lua script in Redis, which reads Redis's clock
//! (`TIME`, so the replicas' clocks do not matter) and, for every quota,
//! the key's arrival time; takes the units from all quotas or from none;
//! and sets each arrival time with an expiry at the moment the key would
//! be fresh again, so idle keys cost Redis nothing. Times are counted in
//! microseconds there (an emission interval is rounded up to a whole
//! microsecond, on the strict side). The keys are
//! `<prefix>{<request key>}:<quota name>`: one hash tag per request key, so
//! that a Redis Cluster keeps a key's quotas on one node.
//!
//! # When Redis fails
//!
//! A request whose check does not come back in time (100 ms by default),
//! or fails, is let through by default ([`RedisFailure::Allow`]: a
//! limiter outage should not become an API outage) and counted in
//! [`RedisRateLimitStats::errors`]; [`RedisFailure::Reject`] refuses it
//! instead. Unlike the in-process limiter, this one has no live handle for
//! its quotas (build a new layer to change them), no dry-run, allow list
//! or per-request cost.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use redis::aio::ConnectionManager;
use tower::{Layer, Service};

use super::gcra::Gcra;
use super::service::{Config, Decision, MissingKey, allowed_headers, missing_key, rejection};
use super::{Quota, RateLimitError};
use crate::body::ResponseBody;
use crate::future::Rejection;
use crate::key::{Key, KeyBy};
use crate::problem::Problem;

/// The check, all quotas at once. `KEYS`: one per quota. `ARGV`: the cost,
/// then each quota's emission interval and tolerance in microseconds.
/// Returns the refusing quota's position (1-based, 0 when allowed), the
/// wait until the request would pass in microseconds (-1: never), then
/// each quota's arrival time ahead of now in microseconds.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local tats = {}
local refused, wait = 0, 0
for i = 1, #KEYS do
  local interval, tau = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  local ahead = tat + cost * interval - now
  if cost * interval > tau then
    if refused == 0 then refused = i end
    wait = -1
  elseif ahead > tau then
    if refused == 0 then refused = i end
    if wait >= 0 and ahead - tau > wait then wait = ahead - tau end
  end
end
local out = {refused, wait}
for i = 1, #KEYS do
  local tat = tats[i]
  if refused == 0 then
    tat = tat + cost * tonumber(ARGV[2 * i])
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  out[#out + 1] = tat - now
end
return out
";

/// What to do with a request whose check Redis did not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisFailure {
    /// Let it through (the default).
    Allow,
    /// Refuse it with 503 and a problem+json body.
    Reject,
}

/// The counters of a [`RedisRateLimitLayer`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisRateLimitStats {
    /// Requests Redis allowed.
    pub allowed: u64,
    /// Requests refused with 429.
    pub rejected: u64,
    /// Requests without a key.
    pub missing_key: u64,
    /// Checks that failed or timed out (let through or refused as
    /// configured).
    pub errors: u64,
}

#[derive(Default)]
struct Counters {
    allowed: AtomicU64,
    rejected: AtomicU64,
    missing_key: AtomicU64,
    errors: AtomicU64,
}

struct Limiter {
    redis: ConnectionManager,
    script: redis::Script,
    config: Config,
    /// The quotas as the script counts them (intervals in whole
    /// microseconds): its arguments, and the arithmetic its answers are
    /// read with.
    gcras: Vec<Gcra>,
    prefix: String,
    key_by: KeyBy,
    on_missing: MissingKey,
    on_failure: RedisFailure,
    timeout: Duration,
    headers_on_allowed: bool,
    legacy_headers: bool,
    counters: Counters,
}

/// A [`Layer`] limiting requests per key against quotas kept in Redis; see
/// the [module docs](self). Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisRateLimitLayer {
    limiter: Arc<Limiter>,
}

impl RedisRateLimitLayer {
    /// A builder over this connection (a `ConnectionManager` reconnects by
    /// itself); add at least one quota.
    pub fn builder(redis: ConnectionManager) -> RedisRateLimitBuilder {
        RedisRateLimitBuilder {
            redis,
            key_by: KeyBy::peer_ip(),
            quotas: Vec::new(),
            prefix: "switchyard:rl:".to_owned(),
            on_missing: MissingKey::Reject(StatusCode::BAD_REQUEST),
            on_failure: RedisFailure::Allow,
            timeout: Duration::from_millis(100),
            headers_on_allowed: true,
            legacy_headers: false,
        }
    }

    /// The counters, shared by every service the layer wrapped.
    pub fn stats(&self) -> RedisRateLimitStats {
        let c = &self.limiter.counters;
        RedisRateLimitStats {
            allowed: c.allowed.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            missing_key: c.missing_key.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
        }
    }

    /// The Redis keys that hold `key`'s state, one per quota, in order.
    pub fn redis_keys(&self, key: &Key<'_>) -> Vec<String> {
        self.limiter.redis_keys(key)
    }
}

impl fmt::Debug for RedisRateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitLayer")
            .field("quotas", &self.limiter.config.names)
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

/// Builds a [`RedisRateLimitLayer`]; see [`RedisRateLimitLayer::builder`].
pub struct RedisRateLimitBuilder {
    redis: ConnectionManager,
    key_by: KeyBy,
    quotas: Vec<Quota>,
    prefix: String,
    on_missing: MissingKey,
    on_failure: RedisFailure,
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

    /// Adds a quota; a request must pass all of them.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quotas.push(quota);
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

    /// How long a check may take before it counts as failed (100 ms by
    /// default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether allowed responses carry `RateLimit` and `RateLimit-Policy`
    /// (they do by default; refusals always do).
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
        let config = Config::new(self.quotas, false, Default::default())?;
        // Whole microseconds, rounded up (the strict side): what the script
        // counts in.
        let gcras = config
            .gcras
            .iter()
            .map(|g| {
                let interval = g.interval.div_ceil(1_000) * 1_000;
                Gcra {
                    interval,
                    tau: interval * u64::from(g.burst),
                    burst: g.burst,
                }
            })
            .collect();
        Ok(RedisRateLimitLayer {
            limiter: Arc::new(Limiter {
                redis: self.redis,
                script: redis::Script::new(SCRIPT),
                config,
                gcras,
                prefix: self.prefix,
                key_by: self.key_by,
                on_missing: self.on_missing,
                on_failure: self.on_failure,
                timeout: self.timeout,
                headers_on_allowed: self.headers_on_allowed,
                legacy_headers: self.legacy_headers,
                counters: Counters::default(),
            }),
        })
    }
}

impl Limiter {
    fn redis_keys(&self, key: &Key<'_>) -> Vec<String> {
        // The request key, made safe for a hash tag: braces and `%`
        // escaped, so different keys never share a Redis key.
        let mut tag = String::new();
        let mut push = |bytes: &[u8]| {
            for &b in bytes {
                match b {
                    b'{' | b'}' | b'%' => tag.push_str(&format!("%{b:02X}")),
                    b => tag.push(char::from(b)),
                }
            }
        };
        if let Some(ip) = key.as_ip() {
            push(format!("ip:{ip}").as_bytes());
        } else if let Some(bytes) = key.as_bytes() {
            push(b"b:");
            // Not UTF-8 in general: every byte as its char (Latin-1),
            // which is still one-to-one.
            push(bytes);
        } else {
            push(b"global");
        }
        self.config
            .names
            .iter()
            .map(|name| format!("{}{{{tag}}}:{name}", self.prefix))
            .collect()
    }

    /// Runs the check in Redis: the decision, or why there is none.
    fn check(self: &Arc<Self>, key: &Key<'_>) -> Check {
        let keys = self.redis_keys(key);
        let limiter = Arc::clone(self);
        Box::pin(async move {
            let mut invocation = limiter.script.prepare_invoke();
            for k in keys {
                invocation.key(k);
            }
            invocation.arg(1u32);
            for g in &limiter.gcras {
                invocation.arg(g.interval / 1_000).arg(g.tau / 1_000);
            }
            let mut redis = limiter.redis.clone();
            let timeout = limiter.timeout;
            let run = invocation.invoke_async::<Vec<i64>>(&mut redis);
            let out = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(out)) => out,
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("no answer within {timeout:?}")),
            };
            limiter.decision(&out)
        })
    }

    fn decision(&self, out: &[i64]) -> Result<Decision, String> {
        let n = self.config.gcras.len();
        let [refused, wait, ahead @ ..] = out else {
            return Err("unexpected answer from the script".to_owned());
        };
        if ahead.len() != n {
            return Err("unexpected answer from the script".to_owned());
        }
        let micros = |v: i64| u64::try_from(v).unwrap_or(0).saturating_mul(1_000);
        let refused_by = usize::try_from(*refused)
            .ok()
            .and_then(|i| i.checked_sub(1));
        let retry_after = refused_by
            .and_then(|_| u64::try_from(*wait).ok())
            .map(|w| Duration::from_micros(w.max(1)));
        Ok(Decision::from_ahead(
            &self.gcras,
            ahead.iter().map(|&a| micros(a)),
            refused_by,
            retry_after,
        ))
    }
}

type Check = Pin<Box<dyn Future<Output = Result<Decision, String>> + Send>>;

/// A service limited against Redis; built by [`RedisRateLimitLayer`].
#[derive(Clone)]
pub struct RedisRateLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
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
        let check = limiter.check(&key);
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
                    grpc,
                } => {
                    let outcome = ready!(check.as_mut().poll(cx));
                    let (Some(mut svc), Some(req)) = (inner.take(), req.take()) else {
                        // Polled again after it finished: never a panic.
                        return Poll::Pending;
                    };
                    let counters = &limiter.counters;
                    let headers = match outcome {
                        Ok(decision) if decision.is_allowed() => {
                            counters.allowed.fetch_add(1, Ordering::Relaxed);
                            allowed_headers(
                                &limiter.config,
                                &decision,
                                limiter.headers_on_allowed,
                                limiter.legacy_headers,
                            )
                        }
                        Ok(decision) => {
                            counters.rejected.fetch_add(1, Ordering::Relaxed);
                            let r =
                                rejection(&limiter.config, &decision, 1, limiter.legacy_headers)
                                    .grpc(*grpc);
                            state.set(State::Refused { rejection: Some(r) });
                            continue;
                        }
                        Err(why) => {
                            counters.errors.fetch_add(1, Ordering::Relaxed);
                            if limiter.on_failure == RedisFailure::Reject {
                                let r = Rejection::new(
                                    Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                                        .detail(format!("the rate limiter is unavailable: {why}")),
                                )
                                .grpc(*grpc);
                                state.set(State::Refused { rejection: Some(r) });
                                continue;
                            }
                            Vec::new()
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
