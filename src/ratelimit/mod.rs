//! Keyed rate limiting with the generic cell rate algorithm (GCRA).
//!
//! (`examples/rate_limit.rs`, `cargo run --example rate_limit`: per client IP behind a trusted proxy, per API key with two quotas, and cost-weighted requests.)
//!
//! A [`RateLimitLayer`] admits each request if its key (read through a
//! [`KeyBy`](crate::key::KeyBy): peer IP, client IP behind trusted proxies,
//! header, custom, global) is within every configured [`Quota`], and
//! answers `429 Too Many Requests` otherwise, with `Retry-After`, the IETF
//! `RateLimit-Policy` / `RateLimit` headers and a problem+json body. The
//! inner service is not called for a refused request. It counts in this
//! process's memory; [`redis::RedisRateLimitLayer`] (feature `redis`)
//! counts the same quotas in Redis, shared by every replica.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use switchyard::key::KeyBy;
//! use switchyard::ratelimit::{Quota, RateLimitLayer};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limit = RateLimitLayer::builder()
//!     .key_by(KeyBy::header(http::HeaderName::from_static("x-api-key")))
//!     // 10 per second with bursts of 2, and 1000 per hour: both must pass.
//!     .quota(Quota::per_second(10).burst(2).named("burst"))
//!     .quota(Quota::per_hour(1000).named("hourly"))
//!     .build()?;
//! let svc = limit.layer(service_fn(|_: Request<String>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("hello")))
//! }));
//!
//! let req = || Request::builder().header("x-api-key", "k1").body(String::new()).unwrap();
//! assert_eq!(svc.clone().oneshot(req()).await?.status(), 200);
//! assert_eq!(svc.clone().oneshot(req()).await?.status(), 200);
//! let refused = svc.clone().oneshot(req()).await?;
//! assert_eq!(refused.status(), 429);
//! assert_eq!(refused.headers()["retry-after"], "1");
//! assert_eq!(refused.headers()["ratelimit"], r#""burst";r=0;t=1, "hourly";r=998;t=8"#);
//! # Ok(())
//! # }
//! ```
//!
//! # The algorithm
//!
//! Each key keeps, per quota, one `AtomicU64` "theoretical arrival time"
//! updated by compare-exchange, as in governor: no lock is held for a key
//! the table already has. A quota of `n` per period with burst `b` lets a
//! fresh key make `b` requests at once, then one more every `period / n`.
//! Requests may cost more than one unit ([`RateLimitBuilder::cost`]); usage
//! known only after the response (AI tokens) is charged with
//! [`RateLimitHandle::charge`]. With several quotas a request passes only
//! if all pass, and a refused request consumes none of them.
//!
//! # Tiers
//!
//! Callers on different plans get different quotas with
//! [`RateLimitBuilder::tier`]: a request whose
//! [`Identity`](crate::auth::Identity) (recorded by authentication) has a
//! [`tier`](crate::auth::Identity::tier) with quotas of its own is checked
//! against those, every other request against the default ones. The tier
//! is looked up by name per request without allocating; a limiter without
//! tiers does not look. [`RateLimitHandle::set_tier_quotas`] changes them
//! live.
//!
//! # Memory
//!
//! The table holds at most [`max_keys`](RateLimitBuilder::max_keys) keys
//! (100,000 by default) with no task to run. When it is full, a new key
//! first triggers a sweep that removes every key whose state equals a
//! fresh key's (its limit fully recovered), amortised so that sweeping
//! costs a bounded number of key visits per insertion. If the table is
//! still full of live keys, the new key is not stored: by default every
//! such key shares one overflow state with the same quotas (so a flood of
//! new keys is limited as if it were one client, while known keys keep
//! their own limits); [`RateLimitBuilder::unlimited_when_full`] lets them
//! through unlimited instead. Concurrent insertions may overshoot the bound
//! by the number of threads inserting at that instant.
//!
//! # Headers
//!
//! `RateLimit-Policy` lists each quota as `"name";q=<count>;w=<period in
//! seconds>`; `RateLimit` gives, per quota, `r` (units available now, but
//! never more than `q`: with a burst above the count, the extra units are
//! usable without being advertised) and
//! `t` (seconds until the key's full burst is back), following
//! draft-ietf-httpapi-ratelimit-headers. Both are sent on allowed responses
//! too unless turned off; `X-RateLimit-Limit/Remaining/Reset` can be added
//! for older clients.

#[cfg(feature = "redis")]
mod breaker;
mod clock;
mod gcra;
mod headers;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod service;
mod store;

use std::fmt;
use std::time::Duration;

/// The algorithm and the keyed table, for the token limits of
/// [`crate::spend`].
#[cfg_attr(not(feature = "json"), allow(unused_imports))]
pub(crate) mod gcra_api {
    #[cfg(all(feature = "redis", feature = "json"))]
    pub(crate) use super::breaker::{Breaker, Gate};
    pub(crate) use super::gcra::{Gcra, Verdict};
    pub(crate) use super::headers::policy;
    pub(crate) use super::store::{Entry, KeyState, Store};
}

pub use crate::future::ResponseFuture;
#[cfg(feature = "json")]
pub(crate) use clock::ClockSource;
pub use clock::{Clock, ManualClock, MonotonicClock};
#[cfg(feature = "config")]
pub(crate) use service::Settings;
pub use service::{
    Decision, MissingKey, QuotaState, RateLimit, RateLimitBuilder, RateLimitHandle, RateLimitLayer,
    RateLimitStats,
};

/// A rate: `count` units per `period`, with bursts of up to `burst` units
/// (by default `count`).
///
/// The constructors read as they sound: `Quota::per_second(100)` is a
/// hundred per second, not one every hundred seconds.
///
/// ```
/// use std::time::Duration;
/// use switchyard::ratelimit::Quota;
///
/// let q = Quota::per_second(100).burst(20);
/// assert_eq!(q.count(), 100);
/// assert_eq!(q.period(), Duration::from_secs(1));
/// assert_eq!(q.burst_size(), 20);
/// assert_eq!(q.name(), "100-per-1s");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Quota {
    count: u32,
    period: Duration,
    burst: u32,
    name: Option<String>,
}

impl Quota {
    /// `count` units per `period`.
    pub fn new(count: u32, period: Duration) -> Self {
        Self {
            count,
            period,
            burst: count,
            name: None,
        }
    }

    /// `count` per second.
    pub fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` per minute.
    pub fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` per hour.
    pub fn per_hour(count: u32) -> Self {
        Self::new(count, Duration::from_secs(3600))
    }

    /// `count` per day.
    pub fn per_day(count: u32) -> Self {
        Self::new(count, Duration::from_secs(86_400))
    }

    /// Bursts of up to `burst` units at once (a fresh key can spend this
    /// many immediately).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// Names the quota in headers and problem documents (1 to 64 visible
    /// ASCII characters, no `"` or `\`). The default is derived from the
    /// rate, e.g. `100-per-1s`.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Units per period.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// The burst size.
    pub fn burst_size(&self) -> u32 {
        self.burst
    }

    /// The quota's name.
    pub fn name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None if self.period.subsec_nanos() == 0 => {
                format!("{}-per-{}s", self.count, self.period.as_secs())
            }
            None => format!("{}-per-{}ms", self.count, self.period.as_millis()),
        }
    }
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quota")
            .field("name", &self.name())
            .field("count", &self.count)
            .field("period", &self.period)
            .field("burst", &self.burst)
            .finish()
    }
}

/// Why a rate limiter could not be built, or a change to it was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// No quota was given.
    #[error("a rate limiter needs at least one quota")]
    NoQuota,
    /// More quotas than a layer holds.
    #[error("a rate limiter holds at most {max} quotas, {got} were given")]
    TooManyQuotas {
        /// The most a layer holds.
        max: usize,
        /// How many were given.
        got: usize,
    },
    /// A quota with a zero count, period or burst, or whose burst lasts
    /// longer than the limiter can count (about 146 years).
    #[error(
        "quota `{0}`: count, period and burst must be above zero, and burst × period / count below 146 years"
    )]
    InvalidQuota(String),
    /// A quota name unusable in a header.
    #[error("quota name `{0}`: use 1 to 64 visible ASCII characters without `\"` or `\\`")]
    InvalidName(String),
    /// Two quotas share a name.
    #[error("quota `{0}` is named twice")]
    DuplicateName(String),
    /// `max_keys` of zero.
    #[error("max_keys must be at least 1")]
    NoKeys,
    /// A tier's quotas were refused.
    #[error("tier `{tier}`: {error}")]
    Tier {
        /// The tier.
        tier: String,
        /// Why its quotas were refused.
        error: Box<RateLimitError>,
    },
    /// A Redis limiter's local fallback shared among zero replicas.
    #[error("the local fallback's replicas must be at least 1")]
    NoReplicas,
}
