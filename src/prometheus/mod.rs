//! The layers' counters as [`prometheus-client`](prometheus_client)
//! collectors (feature `prometheus`).
//!
//! Every layer already counts what it does in relaxed atomics behind its
//! handle. A collector here holds such handles and reads them **when
//! scraped**: nothing is added to the request path, and nothing is copied
//! between scrapes. Register collectors in your own
//! [`Registry`](prometheus_client::registry::Registry) beside your own
//! metrics, and serve it with any of `prometheus-client`'s encoders.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use prometheus_client::encoding::prometheus_text;
//! use prometheus_client::registry::Registry;
//! use switchyard::prometheus::SplitCollector;
//! use switchyard::split::Split;
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let version = |name: &'static str| {
//!     service_fn(move |_req: Request<String>| async move {
//!         Ok::<_, Infallible>(Response::new(name.to_string()))
//!     })
//! };
//! let split = Split::builder()
//!     .target("blue", version("blue v1"), 90)
//!     .target("green", version("green v2"), 10)
//!     .build()?;
//!
//! // One collector for the split's families, every sample labelled
//! // `route="api"` (more splits can join the same families with `with`).
//! let mut registry = Registry::default();
//! registry.register_collector(Box::new(SplitCollector::new(
//!     split.handle(),
//!     [("route", "api")],
//! )));
//!
//! split.clone().oneshot(Request::new(String::new())).await?;
//!
//! let mut text = String::new();
//! prometheus_text::encode(&mut text, &registry)?;
//! assert!(text.contains("switchyard_target_weight{route=\"api\",target=\"green\"} 10\n"));
//! assert!(text.contains("# TYPE switchyard_target_requests_total counter\n"));
//! # Ok(())
//! # }
//! ```
//!
//! ## Collectors and their families
//!
//! Each collector takes a handle and a [`LabelSet`] put first on every
//! sample it writes; [`with`](SplitCollector::with) adds another handle to
//! the same families (a family must be written once, so put every split in
//! one `SplitCollector`, not one collector each). Families without a
//! sample are left out.
//!
//! | collector | families (`switchyard_…`) |
//! | --- | --- |
//! | [`SplitCollector`] | `target_weight`, `target_requests_total`, `target_responses_total` (`class`), `target_errors_total`, `target_in_flight`, `target_latency_seconds` (by `target`) |
//! | [`RateLimitCollector`] | `ratelimit_allowed_total`, `ratelimit_rejected_total`; with Redis, `ratelimit_redis_errors_total`, `ratelimit_redis_skipped_total` (the prefix can change) |
//! | [`AuthCollector`] | `auth_refused_total` (`reason`), `auth_admitted_total` (`identity`) |
//! | [`ScopeCollector`] | `scope_refused_total` (`reason`) |
//! | `ModelCollector` (feature `json`) | `model_requests_total`, `model_responses_total`, `model_errors_total`, `model_in_flight`, `model_latency_seconds`, `model_time_to_first_token_seconds`, `model_tokens_total` (`kind`), `model_truncated_total`, `model_fallbacks_total`, `model_cost_micros_total` (by `model`), `model_weight` (`alias`, `model`), `model_key_rate_limited_total` (`upstream`, `key`) |
//! | `SpendCollector` (feature `json`) | `spend_admissions_total` (`outcome`), `spend_budget_alerts_total`, `spend_backend_errors_total`, `spend_{tenant,alias}_cost_micros_total`, `spend_{tenant,alias}_tokens_total` |
//! | `PromptCollector` (feature `json`) | `prompt_refused_total`, `prompt_tokens_total`, `prompt_cost_micros_total`, `prompt_invalid_answers_total` (by `version`) |
//! | `MirrorCollector` (feature `mirror`) | `mirror_requests_total` (`outcome`), `mirror_shadow_errors_total`, `mirror_shadow_timeouts_total`, `mirror_primary_errors_total`, `mirror_compared_total`, `mirror_status_total` and `mirror_body_total` (`result`), `mirror_latency_seconds` (`side`), `mirror_latency_diff_seconds` |
//! | `UpstreamCollector` (feature `proxy`) | `upstream_endpoint_requests_total`, `…_failures_total`, `…_ejections_total`, `…_in_service`, `…_in_flight` (by `endpoint`) |
//! | `WeightSyncCollector` (feature `redis`) | `weight_sync_{rounds,published,applied,refused,errors,notified}_total` |
//! | [`LifecycleCollector`] | `api_stage` (`api`, `version`, `stage`) |
//! | [`SubscriptionCollector`] | `subscription_refused_total` (`api`) |
//! | [`RolloutCollector`] | `rollout_state` (`state`), `rollout_step`, `rollout_canary_weight`, `rollout_last_verdict` (`outcome`) |
//! | `ServerCollector` (feature `server`) | `server_connections_active`, `server_connections_accepted_total`, `server_connections_refused_total`, `server_header_timeouts_total`, `server_idle_closed_total`, `server_body_timeouts_total`, `server_tls_handshake_failures_total`, `server_requests_total`, `server_panics_total` |
//!
//! Counters are written with the type `counter` and names ending in
//! `_total`, as `prometheus-client` writes them; latencies are histograms
//! in seconds over [`metrics::BUCKETS_MICROS`](crate::metrics::BUCKETS_MICROS).

use std::borrow::Cow;
use std::fmt;

use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, LabelSetEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::metrics::{BUCKETS_MICROS, HistogramSnapshot};

#[cfg(feature = "json")]
mod ai;
mod layers;
mod platform;
#[cfg(feature = "rollout")]
mod rollout;
#[cfg(feature = "server")]
mod server;

#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
pub use ai::{ModelCollector, PromptCollector, SpendCollector};
#[cfg(feature = "mirror")]
#[cfg_attr(docsrs, doc(cfg(feature = "mirror")))]
pub use layers::MirrorCollector;
#[cfg(feature = "proxy")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy")))]
pub use layers::UpstreamCollector;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use layers::WeightSyncCollector;
pub use layers::{
    AuthCollector, AuthSource, RateLimitCollector, RateLimitSource, ScopeCollector, SplitCollector,
};
pub use platform::{LifecycleCollector, SubscriptionCollector};
#[cfg(feature = "rollout")]
#[cfg_attr(docsrs, doc(cfg(feature = "rollout")))]
pub use rollout::RolloutCollector;
#[cfg(feature = "rollout")]
pub(crate) use rollout::RolloutView;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub use server::ServerCollector;

// === LabelSet ===

/// Labels a collector writes first on every sample of one handle, before
/// its own (`target`, `model`, `reason`, …; don't reuse those names).
///
/// Made from an array or a `Vec` of `(name, value)` pairs; an empty set
/// is [`LabelSet::new`]. Names must be valid Prometheus label names;
/// values are escaped when written.
///
/// ```
/// use switchyard::prometheus::LabelSet;
///
/// let labels = LabelSet::from([("route", "api"), ("region", "eu")]);
/// assert_eq!(labels, LabelSet::new().with("route", "api").with("region", "eu"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSet(Vec<(String, String)>);

impl LabelSet {
    /// No labels.
    pub fn new() -> Self {
        Self::default()
    }

    /// These labels and `name="value"`.
    pub fn with(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.0.push((name.into(), value.into()));
        self
    }
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for LabelSet {
    fn from(labels: [(K, V); N]) -> Self {
        labels.into_iter().collect()
    }
}

impl<K: Into<String>, V: Into<String>> From<Vec<(K, V)>> for LabelSet {
    fn from(labels: Vec<(K, V)>) -> Self {
        labels.into_iter().collect()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for LabelSet {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

// === encoding helpers ===

/// A collector's families written into an encoder it does not own, so
/// that one collector (a gateway's) can write those of many.
pub(crate) trait EncodeInto {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result;
}

/// `Collector` for a type with [`EncodeInto`].
macro_rules! collector {
    ($t:ty) => {
        impl prometheus_client::collector::Collector for $t {
            fn encode(
                &self,
                mut enc: prometheus_client::encoding::DescriptorEncoder<'_>,
            ) -> std::fmt::Result {
                crate::prometheus::EncodeInto::encode_into(self, &mut enc)
            }
        }
    };
}
pub(crate) use collector;

/// One sample's labels: a collector's set, then its own.
pub(crate) struct Row<'a> {
    base: &'a [(String, String)],
    extra: Vec<(&'static str, Cow<'a, str>)>,
}

pub(crate) fn row<'a, const N: usize>(
    base: &'a LabelSet,
    extra: [(&'static str, Cow<'a, str>); N],
) -> Row<'a> {
    Row {
        base: &base.0,
        extra: extra.into(),
    }
}

impl EncodeLabelSet for Row<'_> {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        EncodeLabelSet::encode(&self.base, encoder)?;
        EncodeLabelSet::encode(&self.extra.as_slice(), encoder)
    }
}

/// A status class's label, by index (`1xx` to `5xx`).
pub(crate) const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Writes a counter family, unless it has no sample. `name` ends in
/// `_total`, as written.
pub(crate) fn counter<'r>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Row<'r>, u64)>,
) -> fmt::Result {
    let rows: Vec<_> = rows.into_iter().collect();
    if rows.is_empty() {
        return Ok(());
    }
    // The encoder appends `_total` to a counter's name.
    let base = name.strip_suffix("_total").unwrap_or(name);
    let mut family = enc.encode_descriptor(base, help, None, MetricType::Counter)?;
    for (labels, n) in &rows {
        ConstCounter::new(*n).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Writes a gauge family (`i64` or `f64` values), unless it has no
/// sample.
pub(crate) fn gauge<'r, V>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Row<'r>, V)>,
) -> fmt::Result
where
    V: prometheus_client::encoding::EncodeGaugeValue + Copy + fmt::Debug,
{
    let rows: Vec<_> = rows.into_iter().collect();
    if rows.is_empty() {
        return Ok(());
    }
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, n) in &rows {
        ConstGauge::new(*n).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// Writes a latency histogram family (seconds), unless it has no sample.
fn histogram<'r>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Row<'r>, &'r HistogramSnapshot)>,
) -> fmt::Result {
    let rows: Vec<_> = rows.into_iter().collect();
    if rows.is_empty() {
        return Ok(());
    }
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in &rows {
        // Per-bucket counts, as the encoder sums them up; the last bucket
        // is the unbounded one.
        let buckets: Vec<(f64, u64)> = h
            .buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let bound = BUCKETS_MICROS
                    .get(i)
                    .map_or(f64::INFINITY, |&us| us as f64 / 1e6);
                (bound, n)
            })
            .collect();
        family
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(h.sum_micros as f64 / 1e6, h.count, &buckets, None)?;
    }
    Ok(())
}

/// A `u64` reading as a gauge's value.
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
