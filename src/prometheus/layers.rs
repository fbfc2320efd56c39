//! Collectors of the request path's layers: split, rate limit,
//! authentication and scopes, mirror, upstreams, weight sync.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;

use super::{CLASSES, LabelSet, counter, gauge, histogram, row, signed};
use crate::auth::{ApiKeyHandle, ApiKeyLayer, AuthStats, RequireScopes, ScopeCounters};
use crate::ratelimit::RateLimitHandle;
use crate::split::{SplitHandle, StatusClasses};

/// A [`StatusClasses`] reading by class label.
pub(super) fn classes(c: &StatusClasses) -> [(&'static str, u64); 5] {
    let n = [
        c.informational,
        c.success,
        c.redirection,
        c.client_error,
        c.server_error,
    ];
    [0, 1, 2, 3, 4].map(|i| (CLASSES[i], n[i]))
}

// === SplitCollector ===

/// The targets of [`Split`](crate::split::Split)s: weight, requests,
/// responses by status class, errors, in flight and latency, by `target`.
///
/// See the [module docs](super) for an example.
#[derive(Clone, Debug, Default)]
pub struct SplitCollector {
    splits: Vec<(LabelSet, SplitHandle)>,
}

impl SplitCollector {
    /// The targets of the split behind `handle`, labelled `labels`.
    pub fn new(handle: SplitHandle, labels: impl Into<LabelSet>) -> Self {
        Self::default().with(handle, labels)
    }

    /// Adds another split to the same families.
    pub fn with(mut self, handle: SplitHandle, labels: impl Into<LabelSet>) -> Self {
        self.splits.push((labels.into(), handle));
        self
    }
}

impl crate::prometheus::EncodeInto for SplitCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let read: Vec<_> = self.splits.iter().map(|(l, h)| (l, h.stats())).collect();
        let targets = || {
            read.iter().flat_map(|(l, stats)| {
                stats
                    .iter()
                    .map(move |t| (row(l, [("target", t.name.as_str().into())]), t))
            })
        };
        gauge(
            enc,
            "switchyard_target_weight",
            "A split target's weight.",
            targets().map(|(r, t)| (r, i64::from(t.weight))),
        )?;
        counter(
            enc,
            "switchyard_target_requests_total",
            "Requests sent to a split target.",
            targets().map(|(r, t)| (r, t.requests)),
        )?;
        counter(
            enc,
            "switchyard_target_responses_total",
            "Responses of a split target by status class.",
            read.iter().flat_map(|(l, stats)| {
                stats.iter().flat_map(move |t| {
                    classes(&t.responses).map(|(class, n)| {
                        let labels = [("target", t.name.as_str().into()), ("class", class.into())];
                        (row(l, labels), n)
                    })
                })
            }),
        )?;
        counter(
            enc,
            "switchyard_target_errors_total",
            "Calls to a split target that failed without a response.",
            targets().map(|(r, t)| (r, t.errors + t.body_errors)),
        )?;
        gauge(
            enc,
            "switchyard_target_in_flight",
            "Requests in flight on a split target.",
            targets().map(|(r, t)| (r, signed(t.in_flight))),
        )?;
        histogram(
            enc,
            "switchyard_target_latency_seconds",
            "Time to response headers from a split target's upstream.",
            targets().map(|(r, t)| (r, &t.latency)),
        )
    }
}

crate::prometheus::collector!(SplitCollector);

// === RateLimitCollector ===

/// A rate limit whose counters a [`RateLimitCollector`] reads: the
/// in-memory limiter's handle, or (feature `redis`) a Redis limiter's.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum RateLimitSource {
    /// An in-memory [`RateLimitLayer`](crate::ratelimit::RateLimitLayer)'s
    /// handle.
    Local(RateLimitHandle),
    /// A Redis limiter's handle (feature `redis`).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    Redis(crate::ratelimit::redis::RedisRateLimitHandle),
}

impl From<RateLimitHandle> for RateLimitSource {
    fn from(handle: RateLimitHandle) -> Self {
        Self::Local(handle)
    }
}

#[cfg(feature = "redis")]
impl From<crate::ratelimit::redis::RedisRateLimitHandle> for RateLimitSource {
    fn from(handle: crate::ratelimit::redis::RedisRateLimitHandle) -> Self {
        Self::Redis(handle)
    }
}

/// Rate limits: requests allowed and refused (429), and for limits kept
/// in Redis, the checks Redis failed or that were skipped after it failed.
///
/// Families are named `switchyard_ratelimit_…` unless
/// [`prefix`](Self::prefix) says otherwise.
///
/// ```
/// use prometheus_client::registry::Registry;
/// use switchyard::prometheus::RateLimitCollector;
/// use switchyard::ratelimit::{Quota, RateLimitLayer};
///
/// let limit = RateLimitLayer::builder()
///     .quota(Quota::per_second(10))
///     .build()?;
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(RateLimitCollector::new(
///     limit.handle(),
///     [("route", "api")],
/// )));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct RateLimitCollector {
    prefix: String,
    limits: Vec<(LabelSet, RateLimitSource)>,
}

impl Default for RateLimitCollector {
    fn default() -> Self {
        Self {
            prefix: "switchyard_ratelimit".to_owned(),
            limits: Vec::new(),
        }
    }
}

impl RateLimitCollector {
    /// The counters of the limit behind `handle`, labelled `labels`.
    pub fn new(handle: impl Into<RateLimitSource>, labels: impl Into<LabelSet>) -> Self {
        Self::default().with(handle, labels)
    }

    /// Adds another limit to the same families.
    pub fn with(mut self, handle: impl Into<RateLimitSource>, labels: impl Into<LabelSet>) -> Self {
        self.limits.push((labels.into(), handle.into()));
        self
    }

    /// Names the families `{prefix}_allowed_total` and so on
    /// (`switchyard_ratelimit` by default).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

impl crate::prometheus::EncodeInto for RateLimitCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        /// Labels, allowed, rejected, and Redis errors and skipped checks.
        type Reading<'a> = (&'a LabelSet, u64, u64, Option<(u64, u64)>);
        let read: Vec<Reading<'_>> = self
            .limits
            .iter()
            .map(|(l, source)| match source {
                RateLimitSource::Local(h) => {
                    let s = h.stats();
                    (l, s.allowed, s.rejected, None)
                }
                #[cfg(feature = "redis")]
                RateLimitSource::Redis(h) => {
                    let s = h.stats();
                    (l, s.allowed, s.rejected, Some((s.errors, s.skipped)))
                }
            })
            .collect();
        let p = &self.prefix;
        counter(
            enc,
            &format!("{p}_rejected_total"),
            "Requests refused with 429.",
            read.iter()
                .map(|(l, _, rejected, _)| (row(l, []), *rejected)),
        )?;
        counter(
            enc,
            &format!("{p}_allowed_total"),
            "Requests the rate limit let through.",
            read.iter().map(|(l, allowed, _, _)| (row(l, []), *allowed)),
        )?;
        counter(
            enc,
            &format!("{p}_redis_errors_total"),
            "Checks Redis failed or did not answer in time (handled as on_failure says).",
            read.iter()
                .filter_map(|(l, _, _, redis)| Some((row(l, []), redis.as_ref()?.0))),
        )?;
        counter(
            enc,
            &format!("{p}_redis_skipped_total"),
            "Checks not sent to Redis after it failed the ones before (handled as on_failure says).",
            read.iter()
                .filter_map(|(l, _, _, redis)| Some((row(l, []), redis.as_ref()?.1))),
        )
    }
}

crate::prometheus::collector!(RateLimitCollector);

// === AuthCollector ===

/// An authentication layer whose counters an [`AuthCollector`] reads.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AuthSource {
    /// An [`ApiKeyLayer`]'s handle.
    ApiKeys(ApiKeyHandle),
    /// A `JwtLayer`'s handle (feature `jwt`).
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    Jwt(crate::auth::JwtHandle),
}

impl From<ApiKeyHandle> for AuthSource {
    fn from(handle: ApiKeyHandle) -> Self {
        Self::ApiKeys(handle)
    }
}

impl From<&ApiKeyLayer> for AuthSource {
    fn from(layer: &ApiKeyLayer) -> Self {
        Self::ApiKeys(layer.handle())
    }
}

#[cfg(feature = "jwt")]
impl From<crate::auth::JwtHandle> for AuthSource {
    fn from(handle: crate::auth::JwtHandle) -> Self {
        Self::Jwt(handle)
    }
}

#[cfg(feature = "jwt")]
impl From<&crate::auth::JwtLayer> for AuthSource {
    fn from(layer: &crate::auth::JwtLayer) -> Self {
        Self::Jwt(layer.handle())
    }
}

impl AuthSource {
    /// The counters, and the refusal reasons this kind of layer has.
    fn read(&self) -> (AuthStats, Vec<(&'static str, u64)>) {
        match self {
            Self::ApiKeys(h) => {
                let s = h.stats();
                let reasons = vec![
                    ("missing", s.missing),
                    ("malformed", s.malformed),
                    ("unknown_key", s.unknown_key),
                    ("disabled_key", s.disabled_key),
                    ("expired_key", s.expired_key),
                ];
                (s, reasons)
            }
            #[cfg(feature = "jwt")]
            Self::Jwt(h) => {
                let s = h.stats();
                let reasons = vec![
                    ("missing", s.missing),
                    ("malformed", s.malformed),
                    ("malformed_token", s.malformed_token),
                    ("no_matching_key", s.no_matching_key),
                    ("bad_signature", s.bad_signature),
                    ("expired_token", s.expired_token),
                    ("invalid_claims", s.invalid_claims),
                ];
                (s, reasons)
            }
        }
    }
}

/// Authentication layers ([`ApiKeyLayer`], `JwtLayer`): requests refused
/// by `reason`, and admitted by `identity` (`authenticated` or
/// `anonymous`).
///
/// Reasons: `missing` (no credentials, 401), `malformed` (unreadable
/// credentials, 400); for API keys `unknown_key`, `disabled_key`,
/// `expired_key`; for JWTs `malformed_token`, `no_matching_key`,
/// `bad_signature`, `expired_token`, `invalid_claims` (all 401, told apart
/// here only: callers are never told why).
///
/// ```
/// use prometheus_client::encoding::prometheus_text;
/// use prometheus_client::registry::Registry;
/// use switchyard::auth::{ApiKey, ApiKeyLayer, Identity};
/// use switchyard::prometheus::AuthCollector;
///
/// let keys = ApiKeyLayer::builder()
///     .key(ApiKey::new("k", Identity::new("alice")))
///     .build()?;
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(AuthCollector::new(&keys, [("auth", "api")])));
/// let mut text = String::new();
/// prometheus_text::encode(&mut text, &registry)?;
/// assert!(text.contains("switchyard_auth_refused_total{auth=\"api\",reason=\"unknown_key\"} 0"));
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct AuthCollector {
    layers: Vec<(LabelSet, AuthSource)>,
}

impl AuthCollector {
    /// The counters of the layer behind `source`, labelled `labels`.
    pub fn new(source: impl Into<AuthSource>, labels: impl Into<LabelSet>) -> Self {
        Self::default().with(source, labels)
    }

    /// Adds another layer to the same families.
    pub fn with(mut self, source: impl Into<AuthSource>, labels: impl Into<LabelSet>) -> Self {
        self.layers.push((labels.into(), source.into()));
        self
    }
}

impl crate::prometheus::EncodeInto for AuthCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let read: Vec<_> = self.layers.iter().map(|(l, s)| (l, s.read())).collect();
        counter(
            enc,
            "switchyard_auth_refused_total",
            "Requests an authentication layer refused, by reason.",
            read.iter().flat_map(|(l, (_, reasons))| {
                reasons
                    .iter()
                    .map(move |&(reason, n)| (row(l, [("reason", reason.into())]), n))
            }),
        )?;
        counter(
            enc,
            "switchyard_auth_admitted_total",
            "Requests an authentication layer let through, by identity (authenticated or anonymous).",
            read.iter().flat_map(|(l, (s, _))| {
                [
                    ("authenticated", s.authenticated),
                    ("anonymous", s.anonymous),
                ]
                .map(|(identity, n)| (row(l, [("identity", identity.into())]), n))
            }),
        )
    }
}

crate::prometheus::collector!(AuthCollector);

// === ScopeCollector ===

/// Scope checks ([`RequireScopes`]): refusals by `reason`,
/// `insufficient_scope` (403) or `unauthenticated` (401: no identity, or
/// an anonymous one).
#[derive(Clone, Debug, Default)]
pub struct ScopeCollector {
    checks: Vec<(LabelSet, std::sync::Arc<ScopeCounters>)>,
}

impl ScopeCollector {
    /// The refusals of `scopes` (and of its clones), labelled `labels`.
    pub fn new(scopes: &RequireScopes, labels: impl Into<LabelSet>) -> Self {
        Self::default().with(scopes, labels)
    }

    /// Adds another check to the same family.
    pub fn with(self, scopes: &RequireScopes, labels: impl Into<LabelSet>) -> Self {
        self.with_counters(std::sync::Arc::clone(scopes.counters()), labels)
    }

    pub(crate) fn with_counters(
        mut self,
        counters: std::sync::Arc<ScopeCounters>,
        labels: impl Into<LabelSet>,
    ) -> Self {
        self.checks.push((labels.into(), counters));
        self
    }
}

impl crate::prometheus::EncodeInto for ScopeCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        counter(
            enc,
            "switchyard_scope_refused_total",
            "Requests a scope check refused: insufficient_scope (403) or unauthenticated (401).",
            self.checks.iter().flat_map(|(l, c)| {
                let s = c.read();
                [
                    ("insufficient_scope", s.insufficient_scope),
                    ("unauthenticated", s.unauthenticated),
                ]
                .map(|(reason, n)| (row(l, [("reason", reason.into())]), n))
            }),
        )
    }
}

crate::prometheus::collector!(ScopeCollector);

// === MirrorCollector ===

/// Shadow traffic ([`MirrorLayer`](crate::mirror::MirrorLayer)): what was
/// mirrored or left out, the shadow's failures, comparisons of the two
/// answers, and both sides' latency.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use prometheus_client::registry::Registry;
/// use switchyard::mirror::MirrorLayer;
/// use switchyard::prometheus::MirrorCollector;
/// use tower::service_fn;
///
/// let shadow = service_fn(|_: Request<String>| async {
///     Ok::<_, Infallible>(Response::new(String::new()))
/// });
/// let mirror = MirrorLayer::builder(shadow).percent(10.0).build();
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(MirrorCollector::new(
///     mirror.handle(),
///     [("route", "api")],
/// )));
/// ```
#[cfg(feature = "mirror")]
#[derive(Clone, Debug, Default)]
pub struct MirrorCollector {
    mirrors: Vec<(LabelSet, crate::mirror::MirrorHandle)>,
}

#[cfg(feature = "mirror")]
impl MirrorCollector {
    /// The counters of the mirror behind `handle`, labelled `labels`.
    pub fn new(handle: crate::mirror::MirrorHandle, labels: impl Into<LabelSet>) -> Self {
        Self::default().with(handle, labels)
    }

    /// Adds another mirror to the same families.
    pub fn with(
        mut self,
        handle: crate::mirror::MirrorHandle,
        labels: impl Into<LabelSet>,
    ) -> Self {
        self.mirrors.push((labels.into(), handle));
        self
    }
}

#[cfg(feature = "mirror")]
impl crate::prometheus::EncodeInto for MirrorCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        use crate::mirror::MirrorStats;

        let read: Vec<_> = self.mirrors.iter().map(|(l, h)| (l, h.stats())).collect();
        type Read = fn(&MirrorStats) -> u64;
        let by = |name: &'static str, pairs: &'static [(&'static str, Read)]| {
            read.iter().flat_map(move |(l, s)| {
                pairs
                    .iter()
                    .map(move |(value, get)| (row(l, [(name, (*value).into())]), get(s)))
            })
        };
        counter(
            enc,
            "switchyard_mirror_requests_total",
            "Requests a mirror saw, by outcome: mirrored, or why not (not_sampled, skipped_method, too_large, body_error, dropped).",
            by(
                "outcome",
                &[
                    ("mirrored", |s| s.mirrored),
                    ("not_sampled", |s| s.not_sampled),
                    ("skipped_method", |s| s.skipped_method),
                    ("too_large", |s| s.too_large),
                    ("body_error", |s| s.body_errors),
                    ("dropped", |s| s.dropped),
                ],
            ),
        )?;
        let single: [(&str, &str, Read); 4] = [
            (
                "switchyard_mirror_shadow_errors_total",
                "Shadow calls that failed without a response.",
                |s| s.shadow_errors,
            ),
            (
                "switchyard_mirror_shadow_timeouts_total",
                "Shadow calls that took longer than the shadow timeout.",
                |s| s.shadow_timeouts,
            ),
            (
                "switchyard_mirror_primary_errors_total",
                "Mirrored requests whose primary failed without a response.",
                |s| s.primary_errors,
            ),
            (
                "switchyard_mirror_compared_total",
                "Pairs of answers (primary and shadow) compared.",
                |s| s.compared,
            ),
        ];
        for (name, help, get) in single {
            counter(
                enc,
                name,
                help,
                read.iter().map(|(l, s)| (row(l, []), get(s))),
            )?;
        }
        counter(
            enc,
            "switchyard_mirror_status_total",
            "Compared pairs whose status classes matched or not.",
            by(
                "result",
                &[
                    ("match", |s| s.status_matches),
                    ("mismatch", |s| s.status_mismatches),
                ],
            ),
        )?;
        counter(
            enc,
            "switchyard_mirror_body_total",
            "Compared pairs whose JSON bodies were equal or not (with compare_json).",
            by(
                "result",
                &[
                    ("match", |s| s.body_matches),
                    ("mismatch", |s| s.body_mismatches),
                ],
            ),
        )?;
        histogram(
            enc,
            "switchyard_mirror_latency_seconds",
            "Time to response headers of mirrored requests, primary and shadow.",
            read.iter().flat_map(|(l, s)| {
                [
                    (row(l, [("side", "primary".into())]), &s.primary_latency),
                    (row(l, [("side", "shadow".into())]), &s.shadow_latency),
                ]
            }),
        )?;
        gauge(
            enc,
            "switchyard_mirror_latency_diff_seconds",
            "Sum over compared pairs of the shadow's minus the primary's time to response headers: positive when the shadow is slower.",
            read.iter()
                .map(|(l, s)| (row(l, []), s.latency_diff_micros as f64 / 1e6)),
        )
    }
}

#[cfg(feature = "mirror")]
crate::prometheus::collector!(MirrorCollector);

// === UpstreamCollector ===

/// The endpoints of [`Upstream`](crate::proxy::Upstream)s: requests,
/// failures, ejections, whether in service, in flight, by `endpoint` (its
/// URL).
#[cfg(feature = "proxy")]
#[derive(Clone, Debug, Default)]
pub struct UpstreamCollector {
    upstreams: Vec<(LabelSet, crate::proxy::Upstream)>,
}

#[cfg(feature = "proxy")]
impl UpstreamCollector {
    /// The endpoints of `upstream` (a clone shares its state), labelled
    /// `labels` (say, `upstream="name"`).
    pub fn new(upstream: crate::proxy::Upstream, labels: impl Into<LabelSet>) -> Self {
        Self::default().with(upstream, labels)
    }

    /// Adds another upstream to the same families.
    pub fn with(mut self, upstream: crate::proxy::Upstream, labels: impl Into<LabelSet>) -> Self {
        self.upstreams.push((labels.into(), upstream));
        self
    }
}

#[cfg(feature = "proxy")]
impl crate::prometheus::EncodeInto for UpstreamCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        use crate::proxy::EndpointStats;

        let read: Vec<_> = self
            .upstreams
            .iter()
            // Those draining are left out: one may share its URL with
            // the endpoint that replaced it (a series twice is an invalid
            // scrape), and it no longer takes requests.
            .map(|(l, u)| {
                let mut list = u.endpoints();
                list.retain(|e| !e.draining);
                (l, list)
            })
            .collect();
        let endpoints = || {
            read.iter().flat_map(|(l, list)| {
                list.iter()
                    .map(move |e| (row(l, [("endpoint", e.url.as_str().into())]), e))
            })
        };
        type Read = fn(&EndpointStats) -> u64;
        let counters: [(&str, &str, Read); 3] = [
            (
                "switchyard_upstream_endpoint_requests_total",
                "Requests sent to an upstream's endpoint.",
                |e| e.requests,
            ),
            (
                "switchyard_upstream_endpoint_failures_total",
                "Requests an endpoint failed (unreachable, broken exchange, or no answer in time).",
                |e| e.failures,
            ),
            (
                "switchyard_upstream_endpoint_ejections_total",
                "Times an endpoint was taken out of service.",
                |e| e.ejections,
            ),
        ];
        for (name, help, get) in counters {
            counter(enc, name, help, endpoints().map(|(r, e)| (r, get(e))))?;
        }
        gauge(
            enc,
            "switchyard_upstream_endpoint_in_service",
            "1 while an endpoint takes requests, 0 while it is out of service.",
            endpoints().map(|(r, e)| (r, i64::from(e.in_service))),
        )?;
        gauge(
            enc,
            "switchyard_upstream_endpoint_in_flight",
            "Requests sent to an endpoint whose response has not ended.",
            endpoints().map(|(r, e)| (r, signed(e.in_flight))),
        )
    }
}

#[cfg(feature = "proxy")]
crate::prometheus::collector!(UpstreamCollector);

// === WeightSyncCollector ===

/// The rounds of a [`WeightSync`](crate::sync::WeightSync): run,
/// published, applied, refused, failed, run on notice.
#[cfg(feature = "redis")]
#[derive(Clone, Debug, Default)]
pub struct WeightSyncCollector {
    syncs: Vec<(LabelSet, crate::sync::WeightSync)>,
}

#[cfg(feature = "redis")]
impl WeightSyncCollector {
    /// The counters of `sync` (a clone shares them), labelled `labels`.
    pub fn new(sync: crate::sync::WeightSync, labels: impl Into<LabelSet>) -> Self {
        Self::default().with(sync, labels)
    }

    /// Adds another weight sync to the same families.
    pub fn with(mut self, sync: crate::sync::WeightSync, labels: impl Into<LabelSet>) -> Self {
        self.syncs.push((labels.into(), sync));
        self
    }
}

#[cfg(feature = "redis")]
impl crate::prometheus::EncodeInto for WeightSyncCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        use crate::sync::WeightSyncStats;

        let read: Vec<_> = self.syncs.iter().map(|(l, s)| (l, s.stats())).collect();
        type Read = fn(&WeightSyncStats) -> u64;
        let families: [(&str, &str, Read); 6] = [
            (
                "switchyard_weight_sync_rounds_total",
                "Rounds of weight sync run.",
                |s| s.rounds,
            ),
            (
                "switchyard_weight_sync_published_total",
                "Weight changes made here and published to Redis.",
                |s| s.published,
            ),
            (
                "switchyard_weight_sync_applied_total",
                "Weight changes from other replicas applied here.",
                |s| s.applied,
            ),
            (
                "switchyard_weight_sync_refused_total",
                "Published weights that did not fit this replica.",
                |s| s.refused,
            ),
            (
                "switchyard_weight_sync_errors_total",
                "Weight sync calls to Redis that failed or timed out.",
                |s| s.errors,
            ),
            (
                "switchyard_weight_sync_notified_total",
                "Weight sync rounds run at once on another replica's announcement.",
                |s| s.notified,
            ),
        ];
        for (name, help, get) in families {
            counter(
                enc,
                name,
                help,
                read.iter().map(|(l, s)| (row(l, []), get(s))),
            )?;
        }
        Ok(())
    }
}

#[cfg(feature = "redis")]
crate::prometheus::collector!(WeightSyncCollector);
