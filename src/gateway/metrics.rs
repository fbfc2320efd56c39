//! The gateway's counters in the Prometheus text exposition format
//! (version 0.0.4), written by hand: a handful of counter families do not
//! need a metrics crate.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use super::build::State;
use crate::metrics::HistogramSnapshot;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The counters of `[weight_sync]`, while it runs.
#[cfg(feature = "redis")]
pub(crate) fn render_sync(out: &mut String, s: crate::sync::WeightSyncStats) {
    for (name, help, value) in [
        ("rounds", "Rounds of weight sync run.", s.rounds),
        (
            "published",
            "Weight changes made here and published to Redis.",
            s.published,
        ),
        (
            "applied",
            "Weight changes from other replicas applied here.",
            s.applied,
        ),
        (
            "refused",
            "Published weights that did not fit this replica.",
            s.refused,
        ),
        (
            "errors",
            "Weight sync calls to Redis that failed or timed out.",
            s.errors,
        ),
        (
            "notified",
            "Weight sync rounds run at once on another replica's announcement.",
            s.notified,
        ),
    ] {
        let name = format!("switchyard_weight_sync_{name}_total");
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
}

/// A metric family's `HELP` and `TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub(crate) fn render(state: &State) -> String {
    let mut out = String::new();

    family(
        &mut out,
        "switchyard_route_requests_total",
        "counter",
        "Requests matched to a route.",
    );
    for r in &state.routes {
        let _ = writeln!(
            out,
            "switchyard_route_requests_total{{route=\"{}\"}} {}",
            esc(&r.name),
            r.counters.requests.load(Relaxed)
        );
    }
    family(
        &mut out,
        "switchyard_route_responses_total",
        "counter",
        "Responses of a route by status class.",
    );
    for r in &state.routes {
        for (i, class) in CLASSES.iter().enumerate() {
            let _ = writeln!(
                out,
                "switchyard_route_responses_total{{route=\"{}\",class=\"{class}\"}} {}",
                esc(&r.name),
                r.counters.classes[i].load(Relaxed)
            );
        }
    }

    family(
        &mut out,
        "switchyard_target_weight",
        "gauge",
        "A split target's weight.",
    );
    let splits: Vec<_> = state
        .routes
        .iter()
        .filter_map(|r| {
            // A prompt route's template versions are a split's targets.
            let handle = r
                .split
                .as_ref()
                .map(|s| &s.handle)
                .or_else(|| r.prompt.as_ref().map(|p| p.split()))?;
            Some((r, (), handle.stats()))
        })
        .collect();
    for (r, _, stats) in &splits {
        for t in stats {
            let _ = writeln!(
                out,
                "switchyard_target_weight{{route=\"{}\",target=\"{}\"}} {}",
                esc(&r.name),
                esc(&t.name),
                t.weight
            );
        }
    }
    family(
        &mut out,
        "switchyard_target_requests_total",
        "counter",
        "Requests sent to a split target.",
    );
    for (r, _, stats) in &splits {
        for t in stats {
            let _ = writeln!(
                out,
                "switchyard_target_requests_total{{route=\"{}\",target=\"{}\"}} {}",
                esc(&r.name),
                esc(&t.name),
                t.requests
            );
        }
    }
    family(
        &mut out,
        "switchyard_target_responses_total",
        "counter",
        "Responses of a split target by status class.",
    );
    for (r, _, stats) in &splits {
        for t in stats {
            let c = &t.responses;
            for (class, n) in CLASSES.iter().zip([
                c.informational,
                c.success,
                c.redirection,
                c.client_error,
                c.server_error,
            ]) {
                let _ = writeln!(
                    out,
                    "switchyard_target_responses_total{{route=\"{}\",target=\"{}\",class=\"{class}\"}} {n}",
                    esc(&r.name),
                    esc(&t.name)
                );
            }
        }
    }
    family(
        &mut out,
        "switchyard_target_errors_total",
        "counter",
        "Calls to a split target that failed without a response.",
    );
    for (r, _, stats) in &splits {
        for t in stats {
            let _ = writeln!(
                out,
                "switchyard_target_errors_total{{route=\"{}\",target=\"{}\"}} {}",
                esc(&r.name),
                esc(&t.name),
                t.errors + t.body_errors
            );
        }
    }
    family(
        &mut out,
        "switchyard_target_in_flight",
        "gauge",
        "Requests in flight on a split target.",
    );
    for (r, _, stats) in &splits {
        for t in stats {
            let _ = writeln!(
                out,
                "switchyard_target_in_flight{{route=\"{}\",target=\"{}\"}} {}",
                esc(&r.name),
                esc(&t.name),
                t.in_flight
            );
        }
    }
    family(
        &mut out,
        "switchyard_target_latency_seconds",
        "histogram",
        "Time to response headers from a split target's upstream.",
    );
    for (r, _, stats) in &splits {
        for t in stats {
            let labels = format!("route=\"{}\",target=\"{}\"", esc(&r.name), esc(&t.name));
            histogram(
                &mut out,
                "switchyard_target_latency_seconds",
                &labels,
                &t.latency,
            );
        }
    }

    if let Some((_, h)) = &state.pre_auth {
        let s = h.stats();
        for (name, help, value) in [
            (
                "switchyard_pre_auth_rejected_total",
                "Requests refused with 429 by the limit before authentication.",
                s.rejected,
            ),
            (
                "switchyard_pre_auth_allowed_total",
                "Requests the limit before authentication let through.",
                s.allowed,
            ),
        ] {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
    }

    // (route, allowed, rejected, Redis errors and skipped checks) of every
    // limited route, counted in this process or in Redis.
    type Redis = Option<(u64, u64)>;
    let limits: Vec<(&str, u64, u64, Redis)> = state
        .routes
        .iter()
        .filter_map(|r| {
            if let Some((_, h)) = &r.limiter {
                let s = h.stats();
                return Some((r.name.as_str(), s.allowed, s.rejected, None));
            }
            #[cfg(feature = "redis")]
            if let Some((_, layer)) = &r.shared_limiter {
                let s = layer.stats();
                let redis = Some((s.errors, s.skipped));
                return Some((r.name.as_str(), s.allowed, s.rejected, redis));
            }
            None
        })
        .collect();
    family(
        &mut out,
        "switchyard_ratelimit_rejected_total",
        "counter",
        "Requests refused with 429.",
    );
    for (route, _, rejected, _) in &limits {
        let _ = writeln!(
            out,
            "switchyard_ratelimit_rejected_total{{route=\"{}\"}} {rejected}",
            esc(route),
        );
    }
    family(
        &mut out,
        "switchyard_ratelimit_allowed_total",
        "counter",
        "Requests the rate limit let through.",
    );
    for (route, allowed, _, _) in &limits {
        let _ = writeln!(
            out,
            "switchyard_ratelimit_allowed_total{{route=\"{}\"}} {allowed}",
            esc(route),
        );
    }
    if limits.iter().any(|l| l.3.is_some()) {
        type Read = fn(&(u64, u64)) -> u64;
        let families: [(&str, &str, Read); 2] = [
            (
                "switchyard_ratelimit_redis_errors_total",
                "Checks Redis failed or did not answer in time (handled as on_failure says).",
                |r| r.0,
            ),
            (
                "switchyard_ratelimit_redis_skipped_total",
                "Checks not sent to Redis after it failed the ones before (handled as on_failure says).",
                |r| r.1,
            ),
        ];
        for (name, help, read) in families {
            family(&mut out, name, "counter", help);
            for (route, _, _, redis) in &limits {
                if let Some(redis) = redis {
                    let _ = writeln!(out, "{name}{{route=\"{}\"}} {}", esc(route), read(redis));
                }
            }
        }
    }

    let models: Vec<_> = state
        .routes
        .iter()
        .filter_map(|r| r.model.as_ref().map(|(_, h)| (r, h.stats())))
        .collect();
    family(
        &mut out,
        "switchyard_model_requests_total",
        "counter",
        "Requests sent to a model version.",
    );
    for (r, stats) in &models {
        for v in stats {
            let _ = writeln!(
                out,
                "switchyard_model_requests_total{{route=\"{}\",model=\"{}\"}} {}",
                esc(&r.name),
                esc(&v.model),
                v.requests
            );
        }
    }
    family(
        &mut out,
        "switchyard_model_tokens_total",
        "counter",
        "Tokens counted from a model version's responses.",
    );
    for (r, stats) in &models {
        for v in stats {
            let labels = format!("route=\"{}\",model=\"{}\"", esc(&r.name), esc(&v.model));
            let _ = writeln!(
                out,
                "switchyard_model_tokens_total{{{labels},kind=\"prompt\"}} {}",
                v.prompt_tokens
            );
            let _ = writeln!(
                out,
                "switchyard_model_tokens_total{{{labels},kind=\"completion\"}} {}",
                v.completion_tokens
            );
            for (kind, n) in [
                ("cached", v.cached_tokens),
                ("cache_write", v.cache_write_tokens),
                ("reasoning", v.reasoning_tokens),
            ] {
                let _ = writeln!(
                    out,
                    "switchyard_model_tokens_total{{{labels},kind=\"{kind}\"}} {n}"
                );
            }
        }
    }
    family(
        &mut out,
        "switchyard_model_truncated_total",
        "counter",
        "Answers of a model version cut short (client gone, stream broken); their tokens are those counted before.",
    );
    for (r, stats) in &models {
        for v in stats {
            let _ = writeln!(
                out,
                "switchyard_model_truncated_total{{route=\"{}\",model=\"{}\"}} {}",
                esc(&r.name),
                esc(&v.model),
                v.truncated
            );
        }
    }
    family(
        &mut out,
        "switchyard_model_time_to_first_token_seconds",
        "histogram",
        "Time from the call to a model version to the first byte of its answer's body.",
    );
    for (r, stats) in &models {
        for v in stats {
            let labels = format!("route=\"{}\",model=\"{}\"", esc(&r.name), esc(&v.model));
            histogram(
                &mut out,
                "switchyard_model_time_to_first_token_seconds",
                &labels,
                &v.time_to_first_token,
            );
        }
    }
    family(
        &mut out,
        "switchyard_model_key_rate_limited_total",
        "counter",
        "429 answers a provider gave to one of its API keys (the key named by where it came from).",
    );
    for r in &state.routes {
        let Some((_, h)) = &r.model else { continue };
        for k in h.keys() {
            let _ = writeln!(
                out,
                "switchyard_model_key_rate_limited_total{{route=\"{}\",upstream=\"{}\",key=\"{}\"}} {}",
                esc(&r.name),
                esc(&k.upstream),
                esc(&k.source),
                k.rate_limited
            );
        }
    }
    family(
        &mut out,
        "switchyard_model_fallbacks_total",
        "counter",
        "Requests a model version failed that were retried on the fallback.",
    );
    for (r, stats) in &models {
        for v in stats {
            let _ = writeln!(
                out,
                "switchyard_model_fallbacks_total{{route=\"{}\",model=\"{}\"}} {}",
                esc(&r.name),
                esc(&v.model),
                v.fallbacks
            );
        }
    }

    family(
        &mut out,
        "switchyard_model_cost_micros_total",
        "counter",
        "Cost of a model version's priced answers, in micro-units of the price catalog's currency.",
    );
    for (r, stats) in &models {
        for v in stats {
            let _ = writeln!(
                out,
                "switchyard_model_cost_micros_total{{route=\"{}\",model=\"{}\"}} {}",
                esc(&r.name),
                esc(&v.model),
                v.cost_micros
            );
        }
    }
    render_spend(&mut out, state);

    // Every endpoint of every upstream, by upstream name.
    let mut upstreams: Vec<_> = state.upstreams.iter().collect();
    upstreams.sort_by(|a, b| a.0.cmp(b.0));
    let endpoints: Vec<_> = upstreams
        .iter()
        .flat_map(|(name, (_, u))| u.endpoints().into_iter().map(move |e| (name, e)))
        .collect();
    type Read = fn(&crate::proxy::EndpointStats) -> u64;
    let families: [(&str, &str, &str, Read); 5] = [
        (
            "switchyard_upstream_endpoint_requests_total",
            "counter",
            "Requests sent to an upstream's endpoint.",
            |e| e.requests,
        ),
        (
            "switchyard_upstream_endpoint_failures_total",
            "counter",
            "Requests an endpoint failed (unreachable, broken exchange, or no answer in time).",
            |e| e.failures,
        ),
        (
            "switchyard_upstream_endpoint_ejections_total",
            "counter",
            "Times an endpoint was taken out of service.",
            |e| e.ejections,
        ),
        (
            "switchyard_upstream_endpoint_in_service",
            "gauge",
            "1 while an endpoint takes requests, 0 while it is out of service.",
            |e| u64::from(e.in_service),
        ),
        (
            "switchyard_upstream_endpoint_in_flight",
            "gauge",
            "Requests sent to an endpoint whose response has not ended.",
            |e| e.in_flight,
        ),
    ];
    for (metric, kind, help, read) in families {
        family(&mut out, metric, kind, help);
        for (upstream, e) in &endpoints {
            let _ = writeln!(
                out,
                "{metric}{{upstream=\"{}\",endpoint=\"{}\"}} {}",
                esc(upstream),
                esc(&e.url),
                read(e),
            );
        }
    }
    render_platform(&mut out, state);
    out
}

/// The routes' APIs (stage), refusals for want of a subscription, and
/// prompt APIs' own counters.
fn render_platform(out: &mut String, state: &State) {
    let platform = &state.platform;
    family(
        out,
        "switchyard_api_stage",
        "gauge",
        "1 for the lifecycle stage a route's API is in.",
    );
    for (route, api) in &platform.apis {
        let _ = writeln!(
            out,
            "switchyard_api_stage{{route=\"{}\",api=\"{}\",version=\"{}\",stage=\"{}\"}} 1",
            esc(route),
            esc(&api.config.name),
            esc(&api.config.version),
            api.handle().stage()
        );
    }
    family(
        out,
        "switchyard_subscription_refused_total",
        "counter",
        "Calls refused with 403 subscription_required.",
    );
    for name in platform.subscriptions.apis() {
        let refused = platform.subscriptions.refused(&name).unwrap_or(0);
        let _ = writeln!(
            out,
            "switchyard_subscription_refused_total{{api=\"{}\"}} {refused}",
            esc(&name)
        );
    }
    let prompts: Vec<_> = state
        .routes
        .iter()
        .filter_map(|r| r.prompt.as_ref().map(|p| (r, p.stats())))
        .collect();
    family(
        out,
        "switchyard_prompt_refused_total",
        "counter",
        "Prompt API calls refused before any version (bad variables, body, method).",
    );
    for (r, stats) in &prompts {
        let _ = writeln!(
            out,
            "switchyard_prompt_refused_total{{route=\"{}\"}} {}",
            esc(&r.name),
            stats.refused
        );
    }
    family(
        out,
        "switchyard_prompt_tokens_total",
        "counter",
        "Tokens of a prompt version's answers, by kind.",
    );
    for (r, stats) in &prompts {
        for v in &stats.versions {
            for (kind, n) in [
                ("prompt", v.prompt_tokens),
                ("completion", v.completion_tokens),
            ] {
                let _ = writeln!(
                    out,
                    "switchyard_prompt_tokens_total{{route=\"{}\",version=\"{}\",kind=\"{kind}\"}} {n}",
                    esc(&r.name),
                    esc(&v.split.name)
                );
            }
        }
    }
    family(
        out,
        "switchyard_prompt_cost_micros_total",
        "counter",
        "What a prompt version's answers cost, in micro-units, as the model route's meter priced them.",
    );
    for (r, stats) in &prompts {
        for v in &stats.versions {
            let _ = writeln!(
                out,
                "switchyard_prompt_cost_micros_total{{route=\"{}\",version=\"{}\"}} {}",
                esc(&r.name),
                esc(&v.split.name),
                v.cost_micros
            );
        }
    }
    family(
        out,
        "switchyard_prompt_invalid_answers_total",
        "counter",
        "A prompt version's answers refused with 502 (not the text or JSON asked for).",
    );
    for (r, stats) in &prompts {
        for v in &stats.versions {
            let _ = writeln!(
                out,
                "switchyard_prompt_invalid_answers_total{{route=\"{}\",version=\"{}\"}} {}",
                esc(&r.name),
                esc(&v.split.name),
                v.invalid_answers
            );
        }
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    for (bound, count) in h.cumulative() {
        let le = bound.map_or_else(|| "+Inf".to_owned(), |b| format!("{b}"));
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum_micros as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

/// Escapes a label value.
fn esc(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The meters of model routes: admissions by outcome, and tokens and cost
/// per tenant and alias from their ledgers.
fn render_spend(out: &mut String, state: &State) {
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    let meters: Vec<_> = state
        .routes
        .iter()
        .filter_map(|r| r.spend.as_ref().map(|(_, m)| (r, m)))
        .collect();
    if meters.is_empty() {
        return;
    }
    family(
        out,
        "switchyard_spend_admissions_total",
        "counter",
        "Requests a model route's meter admitted, refused (by token limit, budget, concurrency cap, unpriced model) or downgraded.",
    );
    for (r, m) in &meters {
        let s = m.stats();
        for (outcome, n) in [
            ("admitted", s.admitted),
            ("refused_tokens", s.refused_tokens),
            ("refused_budget", s.refused_budget),
            ("refused_concurrency", s.refused_concurrency),
            ("refused_unpriced", s.refused_unpriced),
            ("downgraded", s.downgraded),
        ] {
            let _ = writeln!(
                out,
                "switchyard_spend_admissions_total{{route=\"{}\",outcome=\"{outcome}\"}} {n}",
                esc(&r.name)
            );
        }
    }
    for (name, help, get) in [
        (
            "switchyard_spend_budget_alerts_total",
            "Budget thresholds crossed.",
            (|s: &crate::spend::MeterStats| s.alerts) as fn(&crate::spend::MeterStats) -> u64,
        ),
        (
            "switchyard_spend_backend_errors_total",
            "Admissions and settlements the shared store (Redis) failed.",
            |s| s.backend_errors,
        ),
    ] {
        family(out, name, "counter", help);
        for (r, m) in &meters {
            let _ = writeln!(
                out,
                "{name}{{route=\"{}\"}} {}",
                esc(&r.name),
                get(&m.stats())
            );
        }
    }
    for (by, label) in [
        (crate::spend::GroupBy::Tenant, "tenant"),
        (crate::spend::GroupBy::Alias, "alias"),
    ] {
        let cost = format!("switchyard_spend_{label}_cost_micros_total");
        family(
            out,
            &cost,
            "counter",
            "Cost of answers by this dimension, in micro-units, from the route's ledger.",
        );
        let mut rows = Vec::new();
        for (r, m) in &meters {
            if let Some(ledger) = m.ledger() {
                rows.push((r, ledger.totals(by)));
            }
        }
        for (r, list) in &rows {
            for row in list {
                let _ = writeln!(
                    out,
                    "{cost}{{route=\"{}\",{label}=\"{}\"}} {}",
                    esc(&r.name),
                    esc(&row.key),
                    row.cost_micros
                );
            }
        }
        let tokens = format!("switchyard_spend_{label}_tokens_total");
        family(
            out,
            &tokens,
            "counter",
            "Tokens of answers by this dimension, from the route's ledger.",
        );
        for (r, list) in &rows {
            for row in list {
                for (kind, n) in [("input", row.input_tokens), ("output", row.output_tokens)] {
                    let _ = writeln!(
                        out,
                        "{tokens}{{route=\"{}\",{label}=\"{}\",kind=\"{kind}\"}} {n}",
                        esc(&r.name),
                        esc(&row.key)
                    );
                }
            }
        }
    }
}
