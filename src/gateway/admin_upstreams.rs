//! The admin API's upstream routes: every upstream's endpoints (and where
//! they come from), endpoints added and removed by hand, and a split's
//! targets compared side by side (are green's servers ready to take
//! blue's traffic?). Served by [`admin::router`](super::admin::router).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Gateway;
use super::admin::{problem, who};
use crate::auth::Identity;
use crate::proxy::{EndpointSpec, EndpointStats, Upstream};

/// The upstream routes.
pub(super) fn routes() -> Router<Gateway> {
    Router::new()
        .route("/upstreams", get(list))
        .route("/upstreams/{name}", get(one))
        .route(
            "/upstreams/{name}/endpoints",
            axum::routing::post(add_endpoint),
        )
        .route("/upstreams/{name}/endpoints/{key}", delete(remove_endpoint))
        .route("/splits/{route}/compare", get(compare))
}

/// Where an upstream's endpoint came from: its discovery source, the
/// configuration (`url`, `endpoints`), or the admin API.
fn origin(
    e: &EndpointStats,
    config: &super::config::UpstreamConfig,
    discovery: Option<&str>,
) -> String {
    if let Some(source) = discovery {
        return source.to_owned();
    }
    if e.key == config.url || config.endpoints.contains(&e.key) {
        "config".to_owned()
    } else {
        "admin".to_owned()
    }
}

fn upstream_json(gw: &Gateway, name: &str) -> Option<Value> {
    let state = gw.inner.state.load();
    let (config, upstream) = state.upstreams.get(name)?;
    let discovery = state.discoveries.get(name).map(|d| d.status());
    let source = discovery.as_ref().map(|d| d.source.as_str());
    let endpoints: Vec<Value> = upstream
        .endpoints()
        .into_iter()
        .map(|e| {
            json!({
                "key": e.key,
                "url": e.url,
                "weight": e.weight,
                "source": origin(&e, config, source),
                "in_service": e.in_service,
                "healthy": e.healthy,
                "draining": e.draining,
                "in_flight": e.in_flight,
                "requests": e.requests,
                "failures": e.failures,
                "ejections": e.ejections,
            })
        })
        .collect();
    Some(json!({
        "name": name,
        "url": upstream.url(),
        "endpoints": endpoints,
        "discovery": discovery,
        "stats": upstream.stats(),
    }))
}

/// Every upstream, with each of its servers' counters and state.
async fn list(State(gw): State<Gateway>) -> Json<Value> {
    let all: Vec<Value> = gw
        .upstreams()
        .iter()
        .filter_map(|name| upstream_json(&gw, name))
        .collect();
    Json(Value::Array(all))
}

async fn one(State(gw): State<Gateway>, Path(name): Path<String>) -> Response {
    match upstream_json(&gw, &name) {
        Some(v) => Json(v).into_response(),
        None => problem(StatusCode::NOT_FOUND, format!("no upstream `{name}`")),
    }
}

/// `POST /upstreams/{name}/endpoints`: `{"address": "10.0.0.9:8080",
/// "weight": 2, "host": "green.internal", "key": "…"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEndpoint {
    address: String,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    key: Option<String>,
}

/// The upstream `name` for a change by hand: 404 when there is none, 409
/// when its endpoints follow a discovery source (whose next answer would
/// undo the change).
fn changeable(gw: &Gateway, name: &str) -> Result<Upstream, Box<Response>> {
    let state = gw.inner.state.load();
    let Some((_, upstream)) = state.upstreams.get(name) else {
        return Err(Box::new(problem(
            StatusCode::NOT_FOUND,
            format!("no upstream `{name}`"),
        )));
    };
    if let Some(d) = state.discoveries.get(name) {
        return Err(Box::new(problem(
            StatusCode::CONFLICT,
            format!(
                "upstream `{name}` follows `{}`: change its endpoints there",
                d.status().source
            ),
        )));
    }
    Ok(upstream.clone())
}

async fn add_endpoint(
    State(gw): State<Gateway>,
    Path(name): Path<String>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Response {
    let new: NewEndpoint = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"address\": \"host:port\", \"weight\": n}}: {e}"),
            );
        }
    };
    let upstream = match changeable(&gw, &name) {
        Ok(u) => u,
        Err(res) => return *res,
    };
    if new.weight == Some(0) {
        return problem(StatusCode::BAD_REQUEST, "a weight must be above 0");
    }
    let mut spec = EndpointSpec::new(new.address.clone()).weight(new.weight.unwrap_or(1));
    if let Some(host) = new.host {
        spec = spec.host(host);
    }
    let key = new.key.unwrap_or(new.address);
    match upstream.insert_endpoint(key.clone(), spec) {
        Ok(replaced) => {
            tracing::info!(
                admin = %who(&identity),
                upstream = %name,
                endpoint = %key,
                replaced = replaced.is_some(),
                "admin: endpoint added"
            );
            let body = upstream_json(&gw, &name).unwrap_or(Value::Null);
            (StatusCode::CREATED, Json(body)).into_response()
        }
        Err(e) => problem(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// `DELETE /upstreams/{name}/endpoints/{key}` (the key percent-encoded
/// when it holds `/`): the endpoint takes no new request and drains.
async fn remove_endpoint(
    State(gw): State<Gateway>,
    Path((name, key)): Path<(String, String)>,
    identity: Option<Extension<Identity>>,
) -> Response {
    let upstream = match changeable(&gw, &name) {
        Ok(u) => u,
        Err(res) => return *res,
    };
    match upstream.remove_endpoint(&key) {
        Some(draining) => {
            tracing::info!(
                admin = %who(&identity),
                upstream = %name,
                endpoint = %key,
                in_flight = draining.in_flight(),
                "admin: endpoint removed, draining"
            );
            (
                StatusCode::ACCEPTED,
                Json(json!({
                    "key": draining.key(),
                    "url": draining.url(),
                    "draining": !draining.is_drained(),
                    "in_flight": draining.in_flight(),
                })),
            )
                .into_response()
        }
        None => problem(
            StatusCode::NOT_FOUND,
            format!("upstream `{name}` has no endpoint `{key}`"),
        ),
    }
}

/// One version compared: its name, weight, upstream, and live figures.
struct Row {
    name: String,
    weight: u32,
    healthy: usize,
    value: Value,
}

/// A version's row: its upstream's endpoints (in service, healthy,
/// draining), where they come from, its settings, and `live`.
fn row(
    state: &super::build::State,
    name: &str,
    upstream: &str,
    weight: u32,
    total: u64,
    live: Option<Value>,
) -> Row {
    let (endpoints, settings) = match state.upstreams.get(upstream) {
        Some((config, u)) => (
            u.endpoints(),
            serde_json::to_value(config).unwrap_or(Value::Null),
        ),
        None => (Vec::new(), Value::Null),
    };
    let current: Vec<&EndpointStats> = endpoints.iter().filter(|e| !e.draining).collect();
    let healthy = current.iter().filter(|e| e.healthy).count();
    Row {
        name: name.to_owned(),
        weight,
        healthy,
        value: json!({
            "target": name,
            "upstream": upstream,
            "weight": weight,
            "share": if total == 0 { 0.0 } else { f64::from(weight) / total as f64 },
            "endpoints": {
                "total": current.len(),
                "in_service": current.iter().filter(|e| e.in_service).count(),
                "healthy": healthy,
                "draining": endpoints.len() - current.len(),
            },
            "discovery": state.discoveries.get(upstream).map(|d| d.status()),
            "settings": settings,
            "live": live,
        }),
    }
}

/// A version's counters when `compare` last read them, for the figures
/// over the window since.
struct Sample {
    at: std::time::Instant,
    requests: u64,
    failed: u64,
    latency: crate::metrics::HistogramSnapshot,
}

/// The last sample of each version compared, by gateway (its address) and
/// `route/alias/version`; those older than [`WINDOW`] are let go.
static SAMPLES: std::sync::Mutex<Option<std::collections::HashMap<(usize, String), Sample>>> =
    std::sync::Mutex::new(None);

/// The longest window: an older sample is not compared against.
const WINDOW: std::time::Duration = std::time::Duration::from_secs(300);

/// A version's counters, as [`live`] reads them.
struct Counts<'a> {
    requests: u64,
    in_flight: u64,
    responses: &'a crate::split::StatusClasses,
    errors: u64,
    body_errors: u64,
    latency: &'a crate::metrics::HistogramSnapshot,
}

/// The figures every version has: requests, in flight, responses by
/// class, errors, their share, p50 and p99 to the response head (all
/// since the start), and `window`: the rate, error rate and p99 since the
/// previous `compare` of the same version (at most five minutes ago;
/// `null` on the first), which the dashboard, polling every 2 s, shows
/// live.
fn live(gw: &Gateway, key: String, c: Counts<'_>) -> Value {
    let failed = c.responses.server_error + c.errors;
    let ms = |h: &crate::metrics::HistogramSnapshot, q| {
        h.quantile_interpolated(q).map(|d| d.as_secs_f64() * 1000.0)
    };
    let now = std::time::Instant::now();
    let window = {
        let mut samples = SAMPLES.lock().unwrap_or_else(|e| e.into_inner());
        let samples = samples.get_or_insert_with(Default::default);
        samples.retain(|_, s| now.duration_since(s.at) <= WINDOW);
        let slot = (Arc::as_ptr(&gw.inner) as usize, key);
        let previous = samples.insert(
            slot,
            Sample {
                at: now,
                requests: c.requests,
                failed,
                latency: c.latency.clone(),
            },
        );
        previous
            .filter(|p| now > p.at && c.requests >= p.requests)
            .map(|p| {
                let seconds = now.duration_since(p.at).as_secs_f64();
                let requests = c.requests - p.requests;
                let failed = failed.saturating_sub(p.failed);
                json!({
                    "seconds": seconds,
                    "requests": requests,
                    "rate_per_s": requests as f64 / seconds,
                    "error_rate": if requests == 0 { 0.0 } else { failed as f64 / requests as f64 },
                    "p99_ms": ms(&c.latency.since(&p.latency), 0.99),
                })
            })
    };
    json!({
        "requests": c.requests,
        "in_flight": c.in_flight,
        "responses": c.responses,
        "errors": c.errors,
        "body_errors": c.body_errors,
        "error_rate": if c.requests == 0 { 0.0 } else { failed as f64 / c.requests as f64 },
        "p50_ms": ms(c.latency, 0.5),
        "p99_ms": ms(c.latency, 0.99),
        "window": window,
    })
}

/// Capacity warnings over `rows`: the first of the heaviest (blue, listed
/// first, at equal weights) sets the load one endpoint carries (weight
/// per healthy endpoint); each other version gets the endpoints it needs
/// at that load for its weight now and to take all of the traffic, and a
/// warning when it has fewer healthy ones. `of` names the group in the
/// warnings (an alias), if any.
fn capacity(rows: &mut [Row], total: u64, of: Option<&str>) -> Vec<String> {
    let mut warnings = Vec::new();
    let heaviest = rows
        .iter()
        .filter(|r| r.healthy > 0)
        .fold(None::<&Row>, |best, r| match best {
            Some(b) if b.weight >= r.weight => Some(b),
            _ => Some(r),
        });
    let Some((ref_name, ref_weight, ref_healthy)) =
        heaviest.map(|r| (r.name.clone(), r.weight, r.healthy))
    else {
        return warnings;
    };
    let prefix = of.map_or_else(String::new, |alias| format!("{alias}: "));
    for row in rows.iter_mut() {
        if row.name == ref_name || ref_weight == 0 {
            continue;
        }
        let need =
            |weight: u64| (weight * ref_healthy as u64).div_ceil(u64::from(ref_weight)) as usize;
        let now = need(u64::from(row.weight));
        let full = need(total);
        row.value["capacity"] = json!({
            "needed_now": now,
            "needed_for_all_traffic": full,
            "reference": ref_name,
        });
        if row.healthy < now {
            warnings.push(format!(
                "{prefix}`{}` has {} healthy endpoint(s) for weight {}; at `{ref_name}`'s load per endpoint it needs {now}",
                row.name, row.healthy, row.weight
            ));
        } else if row.healthy < full {
            warnings.push(format!(
                "{prefix}`{}` has {} healthy endpoint(s); to take all of the traffic at `{ref_name}`'s load per endpoint it needs {full}",
                row.name, row.healthy
            ));
        }
    }
    warnings
}

/// `GET /splits/{route}/compare`: each target of the route's split beside
/// the others — its upstream's endpoints, where they come from, its
/// settings, its live figures — and capacity warnings (see
/// [`capacity`]). For a model route, each alias's versions the same way,
/// with their tokens and cost.
async fn compare(State(gw): State<Gateway>, Path(route): Path<String>) -> Response {
    let state = gw.inner.state.load();
    let Some(config) = state.config.routes.iter().find(|r| r.name == route) else {
        return problem(StatusCode::NOT_FOUND, format!("no split route `{route}`"));
    };
    if config.model.is_some()
        && let Some(handle) = gw.model(&route)
    {
        return compare_models(&gw, &state, &route, &handle);
    }
    let (Some(split), Some(handle)) = (config.split.as_ref(), gw.split(&route)) else {
        return problem(StatusCode::NOT_FOUND, format!("no split route `{route}`"));
    };
    let stats = handle.stats();
    let weights = handle.weights();
    let total: u64 = weights.iter().map(|(_, w)| u64::from(w)).sum();
    let mut rows: Vec<Row> = split
        .targets
        .iter()
        .map(|target| {
            let figures = stats.iter().find(|s| s.name == target.name).map(|s| {
                live(
                    &gw,
                    format!("{route}/{}", target.name),
                    Counts {
                        requests: s.requests,
                        in_flight: s.in_flight,
                        responses: &s.responses,
                        errors: s.errors,
                        body_errors: s.body_errors,
                        latency: &s.latency,
                    },
                )
            });
            let weight = weights.get(&target.name).unwrap_or(0);
            row(
                &state,
                &target.name,
                &target.upstream,
                weight,
                total,
                figures,
            )
        })
        .collect();
    let warnings = capacity(&mut rows, total, None);
    Json(json!({
        "route": route,
        "targets": rows.into_iter().map(|r| r.value).collect::<Vec<_>>(),
        "warnings": warnings,
    }))
    .into_response()
}

/// `compare` of a model route: each alias's versions.
fn compare_models(
    gw: &Gateway,
    state: &super::build::State,
    route: &str,
    handle: &crate::model::ModelHandle,
) -> Response {
    let catalog = handle.catalog();
    let mut warnings = Vec::new();
    let aliases: Vec<Value> = catalog
        .aliases
        .iter()
        .map(|alias| {
            let stats = handle.alias_stats(&alias.name).unwrap_or_default();
            let total: u64 = stats.iter().map(|s| u64::from(s.weight.unwrap_or(0))).sum();
            let mut rows: Vec<Row> = stats
                .iter()
                .map(|s| {
                    let upstream = catalog
                        .models
                        .iter()
                        .find(|m| m.name == s.model)
                        .map_or("", |m| m.upstream.as_str());
                    let mut figures = live(
                        gw,
                        format!("{route}/{}/{}", alias.name, s.model),
                        Counts {
                            requests: s.requests,
                            in_flight: s.in_flight,
                            responses: &s.responses,
                            errors: s.errors,
                            body_errors: s.body_errors,
                            latency: &s.latency,
                        },
                    );
                    figures["prompt_tokens"] = json!(s.prompt_tokens);
                    figures["completion_tokens"] = json!(s.completion_tokens);
                    figures["cost_micros"] = json!(s.cost_micros);
                    figures["mean_cost_micros"] =
                        json!((s.priced > 0).then(|| s.cost_micros / s.priced));
                    row(
                        state,
                        &s.model,
                        upstream,
                        s.weight.unwrap_or(0),
                        total,
                        Some(figures),
                    )
                })
                .collect();
            warnings.extend(capacity(&mut rows, total, Some(&alias.name)));
            json!({
                "alias": alias.name,
                "versions": rows.into_iter().map(|r| r.value).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "route": route, "aliases": aliases, "warnings": warnings })).into_response()
}
