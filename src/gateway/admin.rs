//! The admin API (feature `admin`): read and change a running [`Gateway`]
//! over HTTP, with JSON in and out.
//!
//! ```no_run
//! # use switchyard::gateway::{Gateway, GatewayConfig};
//! # async fn run(gateway: Gateway) -> Result<(), Box<dyn std::error::Error>> {
//! let admin = switchyard::gateway::admin::router(&gateway)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9901").await?;
//! axum::serve(listener, admin).await?;
//! # Ok(())
//! # }
//! ```
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /healthz` | `ok` (without a key, for load balancers) |
//! | `GET /openapi.json` | the OpenAPI 3.1 document of this API (without a key; [`OPENAPI_DOCUMENT`]) |
//! | `GET /ui` (or `/ui/`), `/ui/app.js`, `/ui/app.css` | the dashboard, without a key: static files that hold no data; the page asks for an admin key and uses the routes below with it (routes and splits with live request, error and p99 charts, rollouts, models, upstreams, the gateway's own servers, API keys). Strict `Content-Security-Policy`, `nosniff`, `no-referrer`, `no-store` |
//! | `GET /config` | the configuration in force, weights as they are now, secrets redacted (keys as digests, URL passwords and credential header values as `<redacted>`) |
//! | `PUT /config` | checks a new configuration (JSON) and reloads, as one transaction; 422 with every problem otherwise, and nothing changed. `<redacted>` values sent back as `GET /config` showed them keep their secrets; a configuration without admin keys is refused |
//! | `GET /splits`, `GET /splits/{route}` | weights and per-target counters |
//! | `PUT /splits/{route}/weights` | `{"blue": 90, "green": 10}` (or `{"weights": {...}}`) |
//! | `POST /splits/{route}/promote/{target}` | all traffic to `target` |
//! | `POST /splits/{route}/rollback` | back to the weights before the last change |
//! | `GET /models/{route}` | the catalog, per-version counters (tokens: prompt, completion, cached, cache write, reasoning; time to first token), each upstream's protocol and the state of its API keys (never the keys) |
//! | `PUT /models/{route}/{alias}/weights` | an alias's version weights |
//! | `POST /models/{route}/{alias}/promote/{model}` | all of an alias's traffic to `model` |
//! | `POST /models/{route}/{alias}/rollback` | an alias back to its previous weights |
//! | `GET /usage?by=tenant&since=…&until=…&route=…` | tokens and cost of the metered model routes' answers, grouped `by` `identity`, `tenant`, `alias` or `model` (`tenant` by default), between `since` and `until` (Unix seconds, `2026-12-01` or `2026-12-01T08:00:00Z`; hourly buckets, the last 35 days), per route, most expensive first |
//! | `GET /spend/{route}` | a metered route's counters (admitted, refused by limit, budget, concurrency cap or price, downgraded, cost), its token limits and budgets, and with `?budget=NAME&key=KEY` that key's spending this period (in this process; a Redis meter's is in Redis) |
//! | `GET /upstreams`, `GET /upstreams/{name}` | every upstream's servers: key, URL, weight, where each came from (`config`, `admin`, or the discovery source), in service, healthy, draining, in flight, requests, failures, ejections; the discovery source's status (endpoints, updates, failures, last good answer, last error, `stale`, `expired`) |
//! | `POST /upstreams/{name}/endpoints` | `{"address": "10.0.0.9:8080", "weight": 2, "host": "…", "key": "…"}`: adds a server (or replaces the one of that key; the key is the address unless given), taking requests from the next one on (201; 409 for an upstream whose endpoints follow a discovery source). Kept until the upstream's configuration changes or the gateway restarts |
//! | `DELETE /upstreams/{name}/endpoints/{key}` | takes a server out (the key percent-encoded): no new request goes to it, those in flight finish (202, with its `in_flight`; it shows `draining` in `GET /upstreams` until they have) |
//! | `GET /splits/{route}/compare` | the split's targets side by side: weight and share, their upstream's endpoints (total, in service, healthy, draining) and discovery status, its settings, live figures (requests, in flight, responses by class, errors, error rate, p50 and p99 to the response head, since the start and, as `window`, since the previous compare of the route: rate per second, error rate, p99) and capacity: `warnings` when a target has fewer healthy endpoints than its weight needs at the load the heaviest target's endpoints carry; for a model route, each alias's versions the same way, with their tokens and cost |
//! | `GET /metrics` | Prometheus text exposition |
//! | `GET /servers` | the servers reported with [`Gateway::report_server`] (the `gateway` example reports its data and admin servers): name, address, `shutting_down`, connections open now, accepted, refused over the cap, closed by the header read and idle timeouts, request bodies cut by the body idle timeout, failed TLS handshakes, requests, and requests the service panicked on |
//! | `GET /apis`, `GET /apis/{route}` | the routes that are APIs: name, version, owner, stage, subscription policy; one API with its moves (who, when) and, while deprecated, its callers by identity |
//! | `POST /apis/{route}/stage` | `{"stage": "deprecated"}`: moves the API (409 for a move the lifecycle forbids); kept in `[platform] state_file` |
//! | `GET /subscriptions/{api}` | an API's policy, subscriptions, decisions (who, when) and refused calls |
//! | `GET /keys` | the API keys in force: digest (never the secret), identity, where from (`config` or `admin`), requests admitted |
//! | `POST /keys` | `{"id": "carol", "tenant": "shop", "scopes": [...], "tier": ...}`: adds a key, effective on the next request, and answers its secret once (`sy_` and 64 hex digits; only its digest is kept); with `"digest": "sha256:..."`, a key whose secret you hold |
//! | `DELETE /keys/{digest}` | revokes a key, configured or added, from the next request on |
//! | `GET /rollouts`, `GET /rollouts/{route}` | every route's rollout plan and its last rollout: `state` (`idle`, `running`, `paused`, `promoted`, `aborted`) and `reason`, `step` of `steps`, `canary_weight`, analysis `verdicts` (figures of both versions, outcome, reasons), `history` (every event with its time), who started it |
//! | `POST /rollouts/{route}` | starts the route's `[routes.rollout]` plan (201; 409 while one runs, here or on a replica sharing the state store) |
//! | `POST /rollouts/{route}/pause`, `/resume`, `/abort` (`{"reason": "…"}`), `/skip` (`{"step": 2}`) | controls the running rollout (409 when none runs here); `skip` to the number of steps promotes |
//! | `GET /mirrors`, `GET /mirrors/{route}` | routes with a `mirror`: the shadow upstream, the share copied, counters (mirrored, dropped, compared, status and body mismatches, latencies) and the latest pairs of differing answers |
//! | `PUT /mirrors/{route}/percent` | `{"percent": 10}`: the share copied, from the next request on (a reload that changes the route's `mirror.percent` sets it again) |
//! | `POST /subscriptions/{api}/approve` (`reject`, `revoke`) | `{"consumer": {"kind": "tenant", "tenant": "shop"}}` or `{"consumer": {"kind": "identity", "id": "alice", "tenant": "shop"}}`; kept in `[platform] state_file` |
//!
//! Every route but `/healthz`, `/openapi.json` and the dashboard's files needs one of the configuration's admin keys
//! (`admin.keys`, as the last reload left them), as a bearer token or in `x-api-key`. Every change is
//! logged with the `tracing` crate at `INFO`, with the admin's identity
//! and the state before and after. Errors are problem+json.
//!
//! Keys added and revoked here, like lifecycle moves and subscriptions,
//! are kept in `[platform] state_file` (or Redis): a reload or a restart
//! keeps them, on top of the configuration's `api_keys`.
//!
//! An admin key with `read_only = true` reads and never changes (403). One
//! with `team = "…"` changes only what its team owns: the splits, models
//! and lifecycle of routes whose `api.owner` is the team, and the
//! subscriptions of those APIs; any other change (`PUT /config`, another
//! team's route, a route without an owner) is refused with 403.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ConfigError, Gateway, GatewayConfig};
use crate::auth::Identity;
use crate::problem::Problem;
use crate::split::Weights;

/// The admin API's OpenAPI 3.1 document (served at `GET /openapi.json`):
/// every operation, its parameters, bodies and answers. A test checks it
/// against the routes the router has, and with `openapi-spec-validator`.
pub const OPENAPI_DOCUMENT: &str = include_str!("admin_openapi.json");

/// Why the admin API could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The configuration has no admin keys: the admin API is never served
    /// unprotected.
    #[error("the configuration has no admin keys (admin.keys); the admin API needs at least one")]
    NoKeys,
    /// An admin key is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The admin API for `gateway`, protected by the keys in its
/// configuration's `admin.keys` (as they are when this is called).
pub fn router(gateway: &Gateway) -> Result<Router, AdminError> {
    // The gateway's own admin key check: a reload that changes
    // `admin.keys` changes the keys this router accepts.
    let auth = gateway
        .inner
        .state
        .load()
        .admin_auth
        .clone()
        .filter(|layer| !layer.handle().keys().is_empty())
        .ok_or(AdminError::NoKeys)?;

    let protected = Router::new()
        .route("/config", get(get_config).put(put_config))
        .route("/splits", get(get_splits))
        .route("/splits/{route}", get(get_split))
        .route("/splits/{route}/weights", put(put_split_weights))
        .route("/splits/{route}/promote/{target}", post(promote_split))
        .route("/splits/{route}/rollback", post(rollback_split))
        .route("/models/{route}", get(get_models))
        .route("/models/{route}/{alias}/weights", put(put_model_weights))
        .route(
            "/models/{route}/{alias}/promote/{model}",
            post(promote_model),
        )
        .route("/models/{route}/{alias}/rollback", post(rollback_model))
        .route("/usage", get(get_usage))
        .route("/spend/{route}", get(get_spend))
        .route("/metrics", get(get_metrics))
        .route("/servers", get(get_servers))
        .merge(super::admin_platform::routes())
        .merge(super::admin_rollouts::routes())
        .merge(super::admin_upstreams::routes())
        .layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            super::admin_platform::guard,
        ))
        .layer(auth);
    Ok(Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    OPENAPI_DOCUMENT,
                )
            }),
        )
        .merge(super::ui::routes())
        .merge(protected)
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such admin route") })
        .with_state(gateway.clone()))
}

pub(super) fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    IntoResponse::into_response(Problem::new(status).detail(detail))
}

pub(super) fn who(identity: &Option<Extension<Identity>>) -> String {
    identity
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), |Extension(i)| i.id().to_owned())
}

/// The configuration in force, secrets taken out (see
/// [`GatewayConfig::redacted`]).
async fn get_config(State(gw): State<Gateway>) -> Json<GatewayConfig> {
    Json(gw.config().redacted())
}

async fn put_config(
    State(gw): State<Gateway>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Response {
    let mut config: GatewayConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("not a gateway configuration: {e}"),
            );
        }
    };
    // What `GET /config` showed redacted, sent back as it was, keeps the
    // secret in force.
    config.restore_redacted(&gw.config());
    if config.admin.keys.is_empty() {
        return IntoResponse::into_response(
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
                .detail("the configuration was refused; the old one keeps serving")
                .with(
                    "problems",
                    vec![json!({
                        "at": "admin.keys",
                        "message": "no admin keys: the admin API would lock itself out",
                    })],
                ),
        );
    }
    let before = gw.routes();
    // Building reads files and may connect: off the async workers.
    let reloading = gw.clone();
    let result = match tokio::task::spawn_blocking(move || reloading.reload(config)).await {
        Ok(result) => result,
        Err(e) => {
            tracing::error!(admin = %who(&identity), error = %e, "gateway reload failed");
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the reload failed; the old configuration keeps serving",
            );
        }
    };
    match result {
        Ok(()) => {
            tracing::info!(admin = %who(&identity), ?before, after = ?gw.routes(), "gateway configuration reloaded");
            Json(json!({ "status": "reloaded", "routes": gw.routes() })).into_response()
        }
        Err(e) => {
            tracing::warn!(admin = %who(&identity), error = %e, "gateway configuration refused");
            let problems: Vec<Value> = e
                .problems
                .iter()
                .map(|p| json!({ "at": p.at, "message": p.message }))
                .collect();
            IntoResponse::into_response(
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
                    .detail("the configuration was refused; the old one keeps serving")
                    .with("problems", problems),
            )
        }
    }
}

fn split_json(gw: &Gateway, route: &str) -> Option<Value> {
    let handle = gw.split(route)?;
    Some(json!({ "route": route, "weights": handle.weights(), "targets": handle.stats() }))
}

async fn get_splits(State(gw): State<Gateway>) -> Json<Value> {
    let all: Vec<Value> = gw
        .routes()
        .iter()
        .filter_map(|r| split_json(&gw, r))
        .collect();
    Json(Value::Array(all))
}

async fn get_split(State(gw): State<Gateway>, Path(route): Path<String>) -> Response {
    match split_json(&gw, &route) {
        Some(v) => Json(v).into_response(),
        None => problem(StatusCode::NOT_FOUND, format!("no split route `{route}`")),
    }
}

/// `{"blue": 90}` or `{"weights": {"blue": 90}}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum WeightsBody {
    Wrapped { weights: BTreeMap<String, u32> },
    Bare(BTreeMap<String, u32>),
}

impl WeightsBody {
    fn into_weights(self) -> BTreeMap<String, u32> {
        match self {
            WeightsBody::Wrapped { weights } | WeightsBody::Bare(weights) => weights,
        }
    }
}

fn parse_weights(body: &[u8]) -> Result<BTreeMap<String, u32>, Box<Response>> {
    serde_json::from_slice::<WeightsBody>(body)
        .map(WeightsBody::into_weights)
        .map_err(|_| {
            Box::new(problem(
                StatusCode::BAD_REQUEST,
                "expected {\"target\": weight, ...} or {\"weights\": {...}} with non-negative integer weights",
            ))
        })
}

/// Applies a split change and answers with the new state, logging it.
fn split_change(
    gw: &Gateway,
    route: &str,
    identity: &Option<Extension<Identity>>,
    what: &str,
    change: impl FnOnce(&crate::split::SplitHandle) -> Result<(), crate::split::SplitError>,
) -> Response {
    let Some(handle) = gw.split(route) else {
        return problem(StatusCode::NOT_FOUND, format!("no split route `{route}`"));
    };
    let before = handle.weights();
    match change(&handle) {
        Ok(()) => {
            let after = handle.weights();
            tracing::info!(admin = %who(identity), route, action = what, ?before, ?after, "split changed");
            Json(json!({ "route": route, "weights": after })).into_response()
        }
        Err(e) => {
            let status = match e {
                crate::split::SplitError::UnknownTarget(_) => StatusCode::NOT_FOUND,
                crate::split::SplitError::NothingToRollBack => StatusCode::CONFLICT,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            problem(status, e.to_string())
        }
    }
}

async fn put_split_weights(
    State(gw): State<Gateway>,
    Path(route): Path<String>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Response {
    let weights = match parse_weights(&body) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    split_change(&gw, &route, &identity, "set_weights", |h| {
        h.set_weights(weights)
    })
}

async fn promote_split(
    State(gw): State<Gateway>,
    Path((route, target)): Path<(String, String)>,
    identity: Option<Extension<Identity>>,
) -> Response {
    split_change(&gw, &route, &identity, "promote", |h| h.promote(&target))
}

async fn rollback_split(
    State(gw): State<Gateway>,
    Path(route): Path<String>,
    identity: Option<Extension<Identity>>,
) -> Response {
    split_change(&gw, &route, &identity, "rollback", |h| h.rollback())
}

async fn get_models(State(gw): State<Gateway>, Path(route): Path<String>) -> Response {
    match gw.model(&route) {
        Some(h) => {
            let providers: serde_json::Map<String, serde_json::Value> = h
                .protocols()
                .into_iter()
                .map(|(name, p)| (name, json!(p)))
                .collect();
            Json(json!({
                "route": route,
                "catalog": h.catalog(),
                "versions": h.stats(),
                "providers": providers,
                "keys": h.keys(),
            }))
            .into_response()
        }
        None => problem(StatusCode::NOT_FOUND, format!("no model route `{route}`")),
    }
}

fn model_change(
    gw: &Gateway,
    route: &str,
    alias: &str,
    identity: &Option<Extension<Identity>>,
    what: &str,
    change: impl FnOnce(&crate::model::ModelHandle) -> Result<(), crate::model::ModelError>,
) -> Response {
    let Some(handle) = gw.model(route) else {
        return problem(StatusCode::NOT_FOUND, format!("no model route `{route}`"));
    };
    let Some(before) = handle.weights(alias) else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("no alias `{alias}` on route `{route}`"),
        );
    };
    match change(&handle) {
        Ok(()) => {
            let after = handle
                .weights(alias)
                .unwrap_or_else(|| Weights::from_iter(Vec::<(String, u32)>::new()));
            tracing::info!(admin = %who(identity), route, alias, action = what, ?before, ?after, "model alias changed");
            Json(json!({ "route": route, "alias": alias, "weights": after })).into_response()
        }
        Err(e) => {
            let status = match e {
                crate::model::ModelError::NothingToRollBack { .. } => StatusCode::CONFLICT,
                crate::model::ModelError::UnknownModel { .. } => StatusCode::NOT_FOUND,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            problem(status, e.to_string())
        }
    }
}

async fn put_model_weights(
    State(gw): State<Gateway>,
    Path((route, alias)): Path<(String, String)>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Response {
    let weights = match parse_weights(&body) {
        Ok(w) => w,
        Err(r) => return *r,
    };
    model_change(&gw, &route, &alias, &identity, "set_weights", |h| {
        h.set_weights(&alias, weights)
    })
}

async fn promote_model(
    State(gw): State<Gateway>,
    Path((route, alias, model)): Path<(String, String, String)>,
    identity: Option<Extension<Identity>>,
) -> Response {
    model_change(&gw, &route, &alias, &identity, "promote", |h| {
        h.promote(&alias, &model)
    })
}

async fn rollback_model(
    State(gw): State<Gateway>,
    Path((route, alias)): Path<(String, String)>,
    identity: Option<Extension<Identity>>,
) -> Response {
    model_change(&gw, &route, &alias, &identity, "rollback", |h| {
        h.rollback(&alias)
    })
}

/// The query string's parameters, percent-decoded (`+` as a space).
fn query_params(raw: Option<&str>) -> BTreeMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

#[derive(Debug)]
struct UsageQuery {
    by: Option<String>,
    since: Option<String>,
    until: Option<String>,
    route: Option<String>,
}

/// The servers reported to the gateway, with their counters.
async fn get_servers(State(gw): State<Gateway>) -> Json<Value> {
    let servers: Vec<Value> = gw
        .servers()
        .into_iter()
        .map(|s| {
            let c = s.stats;
            json!({
                "name": s.name,
                "address": s.address.to_string(),
                "shutting_down": s.shutting_down,
                "active": c.active,
                "accepted": c.accepted,
                "refused_over_cap": c.refused_over_cap,
                "header_timeouts": c.header_timeouts,
                "idle_closed": c.idle_closed,
                "body_timeouts": c.body_timeouts,
                "tls_handshake_failures": c.tls_handshake_failures,
                "requests": c.requests,
                "panics": c.panics,
            })
        })
        .collect();
    Json(Value::Array(servers))
}

async fn get_usage(
    State(gw): State<Gateway>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Response {
    let mut params = query_params(raw.as_deref());
    let q = UsageQuery {
        by: params.remove("by"),
        since: params.remove("since"),
        until: params.remove("until"),
        route: params.remove("route"),
    };
    let by: crate::spend::GroupBy = match q.by.as_deref().unwrap_or("tenant").parse() {
        Ok(by) => by,
        Err(_) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "`by` is one of identity, tenant, alias, model",
            );
        }
    };
    let time = |name: &str, value: &Option<String>| -> Result<Option<u64>, Box<Response>> {
        match value.as_deref() {
            None => Ok(None),
            Some(v) => unix_time(v).map(Some).ok_or_else(|| {
                Box::new(problem(
                    StatusCode::BAD_REQUEST,
                    format!("`{name}`: Unix seconds, `2026-12-01` or `2026-12-01T08:00:00Z`"),
                ))
            }),
        }
    };
    let since = match time("since", &q.since) {
        Ok(t) => t.unwrap_or(0),
        Err(r) => return *r,
    };
    let until = match time("until", &q.until) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let routes = match &q.route {
        Some(r) if gw.meter(r).is_none() => {
            return problem(
                StatusCode::NOT_FOUND,
                format!("no metered model route `{r}`"),
            );
        }
        Some(r) => vec![r.clone()],
        None => gw.metered_routes(),
    };
    let mut out = serde_json::Map::new();
    for route in routes {
        let rows = gw
            .meter(&route)
            .and_then(|m| m.ledger().map(|l| l.query(by, since, until)))
            .unwrap_or_default();
        out.insert(route, json!(rows));
    }
    Json(json!({
        "by": q.by.as_deref().unwrap_or("tenant"),
        "since": since,
        "until": until,
        "routes": out,
    }))
    .into_response()
}

/// Unix seconds, `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SSZ`.
fn unix_time(text: &str) -> Option<u64> {
    if let Ok(n) = text.parse::<u64>() {
        return Some(n);
    }
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (text, None),
    };
    let mut d = date.splitn(3, '-').map(str::parse::<u32>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || y < 1970 {
        return None;
    }
    let mut secs = crate::spend::budget::unix_of_date(i64::from(y), m, day)?;
    if let Some(t) = time {
        let mut hms = t.splitn(3, ':').map(str::parse::<u64>);
        let (h, mi, s) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
        if h > 23 || mi > 59 || s > 60 {
            return None;
        }
        secs += h * 3600 + mi * 60 + s;
    }
    Some(secs)
}

async fn get_spend(
    State(gw): State<Gateway>,
    Path(route): Path<String>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Response {
    let params = query_params(raw.as_deref());
    let (budget, key) = (params.get("budget"), params.get("key"));
    let Some(meter) = gw.meter(&route) else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("no metered model route `{route}`"),
        );
    };
    let limits: Vec<Value> = meter
        .token_limits()
        .map(|l| {
            json!({
                "name": l.name(),
                "tokens": l.quota().count(),
                "period_seconds": l.quota().period().as_secs_f64(),
                "burst": l.quota().burst_size(),
                "count": l.count(),
            })
        })
        .collect();
    let budgets: Vec<Value> = meter
        .budgets()
        .map(|b| {
            json!({
                "name": b.name(),
                "scope": b.scope().as_str(),
                "limit_micros": b.limit_micros(),
                "period": b.period(),
            })
        })
        .collect();
    let mut body = json!({
        "route": route,
        "stats": meter.stats(),
        "prices": meter.prices().len(),
        "token_limits": limits,
        "budgets": budgets,
    });
    if let (Some(budget), Some(key)) = (budget, key) {
        match meter.budget_usage(budget, key) {
            Some(usage) => body["usage"] = json!(usage),
            None => {
                return problem(
                    StatusCode::NOT_FOUND,
                    format!("no budget `{budget}` on `{route}`"),
                );
            }
        }
    }
    Json(body).into_response()
}

async fn get_metrics(State(gw): State<Gateway>) -> Response {
    let mut res = gw.metrics().into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    res
}
