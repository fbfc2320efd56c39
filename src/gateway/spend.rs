//! A model route's `[routes.model.spend]`: prices, token limits and
//! budgets, built into a [`Meter`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::build::{Problems, key_by, period};
use super::config::KeyConfig;
use crate::ratelimit::Quota;
use crate::spend::{
    Budget, BudgetAlert, BudgetScope, Meter, Period, Price, PriceCatalog, TokenCount, TokenLimit,
    Unpriced,
};

/// Token limits, budgets and cost tracking of a model route.
///
/// ```toml
/// [routes.model.spend]
/// prices_file = "model_prices_and_context_window.json"   # LiteLLM's format
/// unpriced = "free"                 # or "deny", or { fixed = 1000 }
///
/// [routes.model.spend.prices."llama-local"]
/// input_per_million = 100000        # micro-units per million tokens: $0.10
/// output_per_million = 300000
///
/// [[routes.model.spend.token_limits]]
/// key = "identity"
/// limit = 100000
/// period = "1m"
/// count = "total"                   # "input", "output", { weighted = { input = 1, output = 4 } }
///
/// [[routes.model.spend.budgets]]
/// scope = "tenant"                  # "identity", "alias", "global", { key = { header = "x-team" } }
/// limit_micros = 50000000           # $50
/// period = "month"                  # "day", "lifetime"
/// utc_offset_minutes = 60
/// alerts = [80, 95]                 # logged, counted, and POSTed to alert_webhook
/// downgrade_to = "gpt-4o-mini"      # else a 429
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SpendConfig {
    /// A price file in LiteLLM's `model_prices_and_context_window.json`
    /// format, read again at every reload.
    pub prices_file: Option<String>,
    /// Prices by model name, over the file's.
    pub prices: BTreeMap<String, PriceConfig>,
    /// A model with no price: `"free"` (the default), `"deny"`, or
    /// `{ fixed = <micro-units> }`.
    pub unpriced: UnpricedConfig,
    /// Input tokens are estimated as body bytes / this (4).
    pub bytes_per_token: Option<u64>,
    /// Output tokens estimated when a request sets no `max_tokens` (4096).
    pub default_max_tokens: Option<u64>,
    /// Token limits.
    pub token_limits: Vec<TokenLimitConfig>,
    /// Budgets.
    pub budgets: Vec<BudgetConfig>,
    /// At most this many requests in flight per key.
    pub max_concurrent: Option<ConcurrencyConfig>,
    /// Count in the gateway's `[redis]`, shared by every replica.
    pub redis: bool,
    /// Show each answer's cost and tokens (headers, or comment lines at
    /// the end of a stream); on by default.
    pub cost_fields: Option<bool>,
    /// Budget alerts are also POSTed here as JSON (`{"route", "budget",
    /// "key", "percent", "spent_micros", "limit_micros"}`), once each, with
    /// a 5 s timeout; a failure is logged, never retried. (`http://`, or
    /// `https://` with the `tls` feature.)
    pub alert_webhook: Option<String>,
}

/// A price, in micro-units per million tokens (which is pico-units per
/// token).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PriceConfig {
    /// Input.
    pub input_per_million: u64,
    /// Output.
    pub output_per_million: u64,
    /// Input read from the prompt cache (the input price when absent).
    pub cache_read_per_million: Option<u64>,
    /// Input written to the prompt cache (the input price when absent).
    pub cache_write_per_million: Option<u64>,
    /// Reasoning output (the output price when absent).
    pub reasoning_per_million: Option<u64>,
    /// The most output tokens the model gives (caps the estimate).
    pub max_output_tokens: Option<u64>,
}

/// What to do with a model with no price.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UnpricedConfig {
    /// Admitted, counted at no cost.
    #[default]
    Free,
    /// Refused with a 403.
    Deny,
    /// Reserved and charged this many micro-units per request.
    Fixed(u64),
}

/// A token limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TokenLimitConfig {
    /// Whose tokens.
    pub key: KeyConfig,
    /// Tokens per period.
    pub limit: u32,
    /// `"1m"`, `"1h"`, `"1d"`...
    pub period: String,
    /// The burst (the limit by default).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Which tokens (`"total"` by default).
    #[serde(default)]
    pub count: TokenCount,
    /// A name for headers.
    #[serde(default)]
    pub name: Option<String>,
}

/// What a budget is kept per.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ScopeConfig {
    /// Each caller.
    Identity,
    /// Each tenant.
    Tenant,
    /// Each alias.
    Alias,
    /// Everyone.
    Global,
    /// Each key.
    Key(KeyConfig),
}

/// A budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BudgetConfig {
    /// A name (`<scope>-<period>` by default).
    #[serde(default)]
    pub name: Option<String>,
    /// Kept per.
    pub scope: ScopeConfig,
    /// The limit in micro-units.
    pub limit_micros: u64,
    /// Also at most this many tokens.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// `"day"`, `"month"` or `"lifetime"`.
    pub period: Period,
    /// Periods start at midnight this many minutes east of UTC.
    #[serde(default)]
    pub utc_offset_minutes: i32,
    /// Alert thresholds, in percent.
    #[serde(default)]
    pub alerts: Vec<u8>,
    /// Over budget, this version of the alias instead of a 429.
    #[serde(default)]
    pub downgrade_to: Option<String>,
}

/// A concurrent-request cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ConcurrencyConfig {
    /// Per key.
    pub key: KeyConfig,
    /// Requests in flight.
    pub max: u32,
}

/// The price catalog `sc` names: the file's, with the inline prices over
/// it.
pub(crate) fn catalog(sc: &SpendConfig, here: &str, problems: &mut Problems) -> PriceCatalog {
    let mut catalog = match &sc.prices_file {
        Some(path) => match PriceCatalog::from_file(path) {
            Ok(c) => c,
            Err(e) => {
                problems.push(format!("{here}.prices_file"), e);
                PriceCatalog::new()
            }
        },
        None => PriceCatalog::new(),
    };
    for (name, p) in &sc.prices {
        let mut price = Price::per_million(p.input_per_million, p.output_per_million);
        if let Some(v) = p.cache_read_per_million {
            price = price.cache_read_per_million(v);
        }
        if let Some(v) = p.cache_write_per_million {
            price = price.cache_write_per_million(v);
        }
        if let Some(v) = p.reasoning_per_million {
            price = price.reasoning_per_million(v);
        }
        if let Some(v) = p.max_output_tokens {
            price = price.max_output_tokens(v);
        }
        catalog = catalog.with_price(name.clone(), price);
    }
    catalog
}

/// Builds the meter `sc` describes (its prices from [`catalog`]).
pub(crate) fn meter(
    sc: &SpendConfig,
    route: &str,
    here: &str,
    redis: Option<&super::build::SharedRedis>,
    problems: &mut Problems,
) -> Option<Meter> {
    let before = problems.len();
    let mut b = Meter::builder()
        .prices(catalog(sc, here, problems))
        .unpriced(match sc.unpriced {
            UnpricedConfig::Free => Unpriced::Free,
            UnpricedConfig::Deny => Unpriced::Deny,
            UnpricedConfig::Fixed(m) => Unpriced::Fixed(m),
        })
        .cost_fields(sc.cost_fields.unwrap_or(true));
    let route = route.to_owned();
    match &sc.alert_webhook {
        None => b = b.on_alert(log_alert),
        Some(url) => match Webhook::new(url) {
            Ok(hook) => {
                b = b.on_alert(move |alert| {
                    log_alert(alert);
                    hook.post(&route, alert);
                });
            }
            Err(e) => problems.push(format!("{here}.alert_webhook"), e),
        },
    }
    if let Some(k) = sc.bytes_per_token {
        b = b.bytes_per_token(k);
    }
    if let Some(t) = sc.default_max_tokens {
        b = b.default_max_tokens(t);
    }
    for (i, tl) in sc.token_limits.iter().enumerate() {
        let at = format!("{here}.token_limits[{i}]");
        let key = key_by(&tl.key, &format!("{at}.key"), problems);
        let Some(p) = period(&tl.period) else {
            problems.push(
                format!("{at}.period"),
                "a period such as `1m`, `1h` or `1d`",
            );
            continue;
        };
        let mut q = Quota::new(tl.limit, p);
        if let Some(burst) = tl.burst {
            q = q.burst(burst);
        }
        if let Some(name) = &tl.name {
            q = q.named(name.clone());
        }
        if let Some(key) = key {
            b = b.token_limit(TokenLimit::new(key, q).counting(tl.count));
        }
    }
    for (i, bc) in sc.budgets.iter().enumerate() {
        let at = format!("{here}.budgets[{i}]");
        let scope = match &bc.scope {
            ScopeConfig::Identity => BudgetScope::Identity,
            ScopeConfig::Tenant => BudgetScope::Tenant,
            ScopeConfig::Alias => BudgetScope::Alias,
            ScopeConfig::Global => BudgetScope::Global,
            ScopeConfig::Key(k) => match key_by(k, &format!("{at}.scope"), problems) {
                Some(k) => BudgetScope::Key(k),
                None => continue,
            },
        };
        let mut budget = Budget::new(scope, bc.limit_micros, bc.period)
            .utc_offset_minutes(bc.utc_offset_minutes);
        if let Some(name) = &bc.name {
            budget = budget.named(name.clone());
        }
        if let Some(t) = bc.max_tokens {
            budget = budget.max_tokens(t);
        }
        for &a in &bc.alerts {
            budget = budget.alert_at(a);
        }
        if let Some(v) = &bc.downgrade_to {
            budget = budget.downgrade_to(v.clone());
        }
        b = b.budget(budget);
    }
    if let Some(c) = &sc.max_concurrent
        && let Some(key) = key_by(&c.key, &format!("{here}.max_concurrent.key"), problems)
    {
        b = b.max_concurrent(key, c.max);
    }
    #[cfg(feature = "redis")]
    if sc.redis {
        match redis {
            Some(r) => {
                let rc = &r.config;
                let mut rb = crate::spend::redis::RedisSpendBuilder::new(r.connection())
                    .timeout(std::time::Duration::from_millis(
                        rc.timeout_ms.unwrap_or(100),
                    ))
                    .on_redis_failure(super::build::redis_failure(rc))
                    .breaker(
                        rc.breaker_failures.unwrap_or(3),
                        std::time::Duration::from_millis(rc.breaker_cooldown_ms.unwrap_or(1000)),
                    );
                if let Some(prefix) = &rc.prefix {
                    rb = rb.prefix(format!("{prefix}spend:"));
                }
                b = b.redis(rb);
            }
            None => problems.push(format!("{here}.redis"), "no `[redis]` is configured"),
        }
    }
    #[cfg(not(feature = "redis"))]
    if sc.redis {
        let _ = redis;
        problems.push(
            format!("{here}.redis"),
            "needs switchyard's `redis` feature",
        );
    }
    if problems.len() > before {
        return None;
    }
    match b.build() {
        Ok(m) => Some(m),
        Err(e) => {
            problems.push(here.to_owned(), e);
            None
        }
    }
}

/// Budget alerts go to the log (and the meter's `alerts` counter).
fn log_alert(alert: &BudgetAlert) {
    tracing::warn!(
        budget = %alert.budget,
        key = %alert.key,
        percent = alert.percent,
        spent_micros = alert.spent_micros,
        limit_micros = alert.limit_micros,
        "budget alert"
    );
}

/// Where budget alerts are POSTed.
struct Webhook {
    upstream: crate::proxy::Upstream,
    path: http::uri::PathAndQuery,
}

impl Webhook {
    fn new(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("`{url}`: {e}"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(format!("`{url}`: an absolute `http://` or `https://` URL"));
        };
        let upstream = crate::proxy::Upstream::builder(&format!("{scheme}://{authority}"))
            .response_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        Ok(Self { upstream, path })
    }

    /// POSTs `alert` in a task of its own (none when there is no runtime).
    fn post(&self, route: &str, alert: &BudgetAlert) {
        use tower::ServiceExt;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut doc = serde_json::to_value(alert).unwrap_or_default();
        doc["route"] = serde_json::Value::from(route);
        let req = http::Request::post(http::Uri::from(self.path.clone()))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                doc.to_string(),
            )));
        let Ok(req) = req else { return };
        let upstream = self.upstream.clone();
        let budget = alert.budget.clone();
        runtime.spawn(async move {
            let status = match upstream.oneshot(req).await {
                Ok(res) => res.status(),
                Err(never) => match never {},
            };
            if !status.is_success() {
                tracing::warn!(%budget, %status, "budget alert webhook failed");
            }
        });
    }
}

/// A meter kept across reloads while its configuration is unchanged.
pub(crate) type BuiltMeter = (SpendConfig, Meter);

/// The meter of a reloaded route: the old one (its state kept) with its
/// prices read again when the configuration is the same, else a new one.
pub(crate) fn rebuild(
    sc: &SpendConfig,
    route: &str,
    here: &str,
    old: Option<&BuiltMeter>,
    redis: Option<&super::build::SharedRedis>,
    problems: &mut Problems,
) -> Option<(BuiltMeter, Option<PriceCatalog>)> {
    if let Some((old_sc, meter)) = old.filter(|(c, _)| c == sc) {
        let prices = catalog(sc, here, problems);
        return Some(((old_sc.clone(), meter.clone()), Some(prices)));
    }
    meter(sc, route, here, redis, problems).map(|m| ((sc.clone(), m), None))
}
