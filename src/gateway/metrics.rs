//! The gateway's `/metrics`: the layers' collectors
//! ([`crate::prometheus`]) over the state in force, and the routes' own
//! counters, in one `prometheus-client` registry built per scrape (a
//! scrape is rare; the counters are read then, never copied on the
//! request path), written in the Prometheus text format 0.0.4.
//!
//! The 0.0.4 text format rather than OpenMetrics: it is what `/metrics`
//! always served (same content type, no `# EOF`), and it keeps every
//! family's name as it was (a counter's `# TYPE` line names it with its
//! `_total`).
//!
//! A new family is a collector registered here: in [`register_state`] when
//! it reads the handles of a state (a route's mirror, say), rebuilt with
//! every reload by construction; in [`register_running`] when it reads
//! what runs beside the state (weight sync, the rollout engine).

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, prometheus_text};
use prometheus_client::registry::Registry;

use super::Gateway;
use super::build::{RouteCounters, State};
use crate::prometheus::EncodeInto;
use crate::prometheus::{
    AuthCollector, LabelSet, LifecycleCollector, ModelCollector, PromptCollector,
    RateLimitCollector, ScopeCollector, SpendCollector, SplitCollector, SubscriptionCollector,
    UpstreamCollector,
};

/// Every counter of `gw`, in the Prometheus text exposition format.
pub(crate) fn render(gw: &Gateway) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(GatewayCollector(gw.clone())));
    let mut out = String::new();
    // Writing to a `String` does not fail, nor do the collectors.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

/// The collectors of what runs beside the state, for as long as it runs:
/// rollouts, the servers reported, weight sync. Add the collector of
/// anything else the gateway runs here.
pub(crate) fn register_running(registry: &mut Families, gw: &Gateway) {
    // Every route's rollout, as its record shows it (idle, running here,
    // or finished).
    let state = gw.inner.state.load();
    let mut rollouts = crate::prometheus::RolloutCollector::default();
    for r in gw.inner.rollouts.records(&state) {
        let view = crate::prometheus::RolloutView {
            last_verdict: r
                .verdicts
                .back()
                .and_then(|v| v["outcome"].as_str().map(str::to_owned)),
            state: r.state,
            step: r.step,
            canary_weight: r.canary_weight,
        };
        rollouts = rollouts.with_view(view, route(&r.route));
    }
    registry.push(Box::new(rollouts));
    // The servers reported to serve it.
    let servers = gw
        .inner
        .servers
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .fold(
            crate::prometheus::ServerCollector::default(),
            |c, (name, h)| c.with(h.clone(), [("server", name.as_str())]),
        );
    registry.push(Box::new(servers));
    #[cfg(feature = "redis")]
    if let Some(sync) = gw.weight_sync() {
        registry.push(Box::new(crate::prometheus::WeightSyncCollector::new(
            sync,
            LabelSet::new(),
        )));
    }
}

/// The collectors of one scrape, in the order their families are written.
type Families = Vec<Box<dyn EncodeInto>>;

/// Every family of a [`Gateway`] (what its `/metrics` shows), as one
/// `prometheus-client` collector to register in your own
/// [`Registry`](prometheus_client::registry::Registry) beside your
/// metrics: the routes, splits, limits, models, meters, upstreams,
/// mirrors, platform, authentication, rollouts and weight sync of the
/// configuration in force at each scrape, and the counters of the servers
/// reported with [`Gateway::report_server`]. From [`Gateway::collector`].
///
/// ```
/// # use switchyard::gateway::{Gateway, GatewayConfig};
/// use prometheus_client::registry::Registry;
///
/// # let gateway = Gateway::from_config(GatewayConfig::from_toml(r#"
/// #     [upstreams.app]
/// #     url = "http://127.0.0.1:3001"
/// #     [[routes]]
/// #     name = "api"
/// #     split.targets = [{ name = "app", upstream = "app", weight = 100 }]
/// # "#)?)?;
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(gateway.collector()));
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry)?;
/// assert!(text.contains(r#"switchyard_target_weight{route="api",target="app"} 100"#), "{text}");
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct GatewayCollector(Gateway);

impl EncodeInto for GatewayCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let mut families = Families::new();
        register_state(&mut families, &self.0.inner.state.load());
        register_running(&mut families, &self.0);
        for f in &families {
            f.encode_into(enc)?;
        }
        Ok(())
    }
}

crate::prometheus::collector!(GatewayCollector);

impl Gateway {
    /// Every family of this gateway's `/metrics`, as a collector for a
    /// `prometheus-client` registry of your own (see [`GatewayCollector`]).
    pub fn collector(&self) -> GatewayCollector {
        GatewayCollector(self.clone())
    }
}

fn route(name: &str) -> LabelSet {
    LabelSet::from([("route", name)])
}

/// The collectors of the routes, upstreams, platform and authentication
/// of `state`, in the order their families are written.
fn register_state(registry: &mut Families, state: &State) {
    registry.push(Box::new(RouteCollector(
        state
            .routes
            .iter()
            .map(|r| (route(&r.name), Arc::clone(&r.counters)))
            .collect(),
    )));

    // A prompt route's template versions are a split's targets.
    let mut splits = SplitCollector::default();
    for r in &state.routes {
        let split = r.split.as_ref().map(|s| &s.handle);
        if let Some(handle) = split.or_else(|| r.prompt.as_ref().map(|p| p.split())) {
            splits = splits.with(handle.clone(), route(&r.name));
        }
    }
    registry.push(Box::new(splits));

    if let Some((_, h)) = &state.pre_auth {
        let limit = RateLimitCollector::new(h.clone(), LabelSet::new());
        registry.push(Box::new(limit.prefix("switchyard_pre_auth")));
    }
    let mut limits = RateLimitCollector::default();
    for r in &state.routes {
        if let Some((_, h)) = &r.limiter {
            limits = limits.with(h.clone(), route(&r.name));
        }
        #[cfg(feature = "redis")]
        if let Some((_, layer)) = &r.shared_limiter {
            limits = limits.with(layer.handle(), route(&r.name));
        }
    }
    registry.push(Box::new(limits));

    let mut models = ModelCollector::default();
    let mut meters = SpendCollector::default();
    for r in &state.routes {
        if let Some((_, h)) = &r.model {
            models = models.with(h.clone(), route(&r.name));
        }
        if let Some((_, meter)) = &r.spend {
            meters = meters.with(meter.clone(), route(&r.name));
        }
    }
    registry.push(Box::new(models));
    registry.push(Box::new(meters));

    let mut mirrors = crate::prometheus::MirrorCollector::default();
    for r in &state.routes {
        if let Some(m) = &r.mirror {
            mirrors = mirrors.with(m.layer.handle(), route(&r.name));
        }
    }
    registry.push(Box::new(mirrors));

    let mut upstreams: Vec<_> = state.upstreams.iter().collect();
    upstreams.sort_by(|a, b| a.0.cmp(b.0));
    let mut endpoints = UpstreamCollector::default();
    for (name, (_, upstream)) in upstreams {
        endpoints = endpoints.with(upstream.clone(), [("upstream", name.as_str())]);
    }
    registry.push(Box::new(endpoints));
    let mut discoveries: Vec<_> = state.discoveries.iter().collect();
    discoveries.sort_by(|a, b| a.0.cmp(b.0));
    registry.push(Box::new(DiscoveryCollector(
        discoveries
            .into_iter()
            .map(|(name, d)| {
                let status = d.status();
                (
                    LabelSet::from([
                        ("upstream", name.as_str()),
                        ("source", status.source.as_str()),
                    ]),
                    status,
                )
            })
            .collect(),
    )));

    let mut stages = LifecycleCollector::default();
    for (name, api) in &state.platform.apis {
        stages = stages.with(api.handle(), route(name));
    }
    registry.push(Box::new(stages));
    registry.push(Box::new(SubscriptionCollector::new(
        state.platform.subscriptions.clone(),
        LabelSet::new(),
    )));
    let mut prompts = PromptCollector::default();
    for r in &state.routes {
        if let Some(p) = &r.prompt {
            prompts = prompts.with(p.clone(), route(&r.name));
        }
    }
    registry.push(Box::new(prompts));

    // The API keys of the routes with `auth`, and the admin API's.
    let mut auth = AuthCollector::default();
    if let Some(layer) = &state.auth {
        auth = auth.with(layer, [("auth", "api_keys")]);
    }
    #[cfg(feature = "jwt")]
    if let Some(jwt) = &state.jwt {
        auth = auth.with(&jwt.layer, [("auth", "jwt")]);
    }
    if let Some(layer) = &state.admin_auth {
        auth = auth.with(layer, [("auth", "admin")]);
    }
    registry.push(Box::new(auth));
    let mut scopes = ScopeCollector::default();
    for r in &state.routes {
        if r.config.auth.as_ref().is_some_and(|a| !a.scopes.is_empty()) {
            scopes = scopes.with_counters(Arc::clone(&r.counters.scopes), route(&r.name));
        }
    }
    registry.push(Box::new(scopes));
}

// === RouteCollector ===

/// The routes' own counters: requests matched, responses by status class.
#[derive(Debug)]
struct RouteCollector(Vec<(LabelSet, Arc<RouteCounters>)>);

impl crate::prometheus::EncodeInto for RouteCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        use crate::prometheus::{CLASSES, counter, row};

        counter(
            enc,
            "switchyard_route_requests_total",
            "Requests matched to a route.",
            self.0
                .iter()
                .map(|(l, c)| (row(l, []), c.counts.get(RouteCounters::REQUESTS))),
        )?;
        counter(
            enc,
            "switchyard_route_responses_total",
            "Responses of a route by status class.",
            self.0.iter().flat_map(|(l, c)| {
                CLASSES.iter().enumerate().map(move |(i, class)| {
                    let n = c.counts.get(RouteCounters::class(i));
                    (row(l, [("class", (*class).into())]), n)
                })
            }),
        )
    }
}

crate::prometheus::collector!(RouteCollector);

// === DiscoveryCollector ===

/// The upstreams' discovery sources: endpoints from each, answers that
/// changed the set, failed answers, and whether the endpoints are stale
/// or expired.
#[derive(Debug)]
struct DiscoveryCollector(Vec<(LabelSet, crate::discovery::DiscoveryStatus)>);

impl crate::prometheus::EncodeInto for DiscoveryCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        use crate::prometheus::{counter, gauge, row};

        let rows = || self.0.iter().map(|(l, s)| (row(l, []), s));
        gauge(
            enc,
            "switchyard_discovery_endpoints",
            "Endpoints an upstream has from its discovery source.",
            rows().map(|(r, s)| (r, i64::try_from(s.endpoints).unwrap_or(i64::MAX))),
        )?;
        counter(
            enc,
            "switchyard_discovery_updates_total",
            "Answers of a discovery source that changed its upstream's endpoints.",
            rows().map(|(r, s)| (r, s.updates)),
        )?;
        counter(
            enc,
            "switchyard_discovery_failures_total",
            "Answers of a discovery source that failed or listed no endpoint (the last endpoints were kept).",
            rows().map(|(r, s)| (r, s.failures)),
        )?;
        gauge(
            enc,
            "switchyard_discovery_stale",
            "1 while an upstream keeps its last endpoints because its discovery source fails; 2 once they expired (dropped).",
            rows().map(|(r, s)| (r, i64::from(s.stale) + i64::from(s.expired))),
        )
    }
}

crate::prometheus::collector!(DiscoveryCollector);
