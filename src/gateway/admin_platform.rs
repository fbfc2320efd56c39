//! The admin API's platform routes (APIs' lifecycles, subscriptions), and
//! the check that keeps team-scoped and read-only admin keys to what they
//! may change. Served by [`admin::router`](super::admin::router).

use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Gateway;
use super::build::{ADMIN_READ_ONLY, ADMIN_TEAM};
use crate::auth::Identity;
use crate::platform::lifecycle::Stage;
use crate::platform::subscription::{Consumer, SubscriptionError};

use super::admin::{problem, who};

/// The platform's admin routes.
pub(super) fn routes() -> Router<Gateway> {
    Router::new()
        .route("/apis", get(get_apis))
        .route("/apis/{route}", get(get_api))
        .route("/apis/{route}/stage", post(post_stage))
        .route("/subscriptions/{api}", get(get_subscriptions))
        .route("/subscriptions/{api}/{decision}", post(post_decision))
}

// === Who may change what ===

/// The team that owns what a change at `path` changes: the owner of the
/// route it names (`/splits/{route}/…`, `/models/{route}/…`,
/// `/apis/{route}/…`) or of the API (`/subscriptions/{api}/…`). `None`
/// for changes that are not one team's (`PUT /config`), and for routes
/// without an owner.
fn owner_of(gw: &Gateway, path: &str) -> Option<String> {
    let state = gw.inner.state.load();
    let apis = &state.platform.apis;
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next()) {
        (Some("splits" | "models" | "apis"), Some(route)) => {
            apis.get(route).and_then(|a| a.config.owner.clone())
        }
        (Some("subscriptions"), Some(api)) => apis
            .values()
            .find(|a| a.config.name == api)
            .and_then(|a| a.config.owner.clone()),
        _ => None,
    }
}

/// Lets reads through; refuses changes by read-only keys, and changes by
/// team-scoped keys to what their team does not own (403).
pub(super) async fn guard(State(gw): State<Gateway>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let Some(identity) = req.extensions().get::<Identity>() else {
        // The key check in front puts one in every request it passes.
        return problem(StatusCode::UNAUTHORIZED, "no admin identity");
    };
    if identity.label(ADMIN_READ_ONLY).is_some() {
        return problem(
            StatusCode::FORBIDDEN,
            format!("admin key `{}` is read-only", identity.id()),
        );
    }
    if let Some(team) = identity.label(ADMIN_TEAM) {
        match owner_of(&gw, req.uri().path()) {
            Some(owner) if owner == team => {}
            owner => {
                let what = match owner {
                    Some(owner) => format!("it belongs to team `{owner}`"),
                    None => "it is not one team's".to_owned(),
                };
                tracing::info!(
                    admin = identity.id(),
                    team,
                    path = req.uri().path(),
                    "admin change refused: out of team"
                );
                return problem(
                    StatusCode::FORBIDDEN,
                    format!(
                        "admin key `{}` acts for team `{team}` and cannot change this: {what}",
                        identity.id()
                    ),
                );
            }
        }
    }
    next.run(req).await
}

// === APIs ===

fn api_json(gw: &Gateway, route: &str, whole: bool) -> Option<Value> {
    let state = gw.inner.state.load();
    let api = state.platform.apis.get(route)?;
    let handle = api.handle();
    let mut out = json!({
        "route": route,
        "name": api.config.name,
        "version": api.config.version,
        "owner": api.config.owner,
        "description": api.config.description,
        "stage": handle.stage(),
        "deprecated_at": handle.deprecated_at(),
        "sunset": api.config.sunset,
        "successor": api.config.successor,
        "subscription": api.config.subscription,
    });
    if whole {
        out["history"] = json!(handle.history());
        out["callers"] = json!(handle.callers());
    }
    Some(out)
}

async fn get_apis(State(gw): State<Gateway>) -> Json<Value> {
    let routes: Vec<String> = gw
        .inner
        .state
        .load()
        .platform
        .apis
        .keys()
        .cloned()
        .collect();
    let apis: Vec<Value> = routes
        .iter()
        .filter_map(|r| api_json(&gw, r, false))
        .collect();
    Json(json!({ "apis": apis }))
}

async fn get_api(State(gw): State<Gateway>, Path(route): Path<String>) -> Response {
    match api_json(&gw, &route, true) {
        Some(v) => Json(v).into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            format!("route `{route}` is not an API"),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StageBody {
    stage: Stage,
}

async fn post_stage(
    State(gw): State<Gateway>,
    Path(route): Path<String>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Response {
    let Some(handle) = gw.api(&route) else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("route `{route}` is not an API"),
        );
    };
    let to = match serde_json::from_slice::<StageBody>(&body) {
        Ok(b) => b.stage,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"stage\": \"draft|published|deprecated|retired\"}}: {e}"),
            );
        }
    };
    let by = who(&identity);
    // Off the runtime's workers: the move is written to the state file.
    let moved = tokio::task::spawn_blocking(move || handle.transition(to, &by)).await;
    match moved {
        Ok(Ok(t)) => {
            tracing::info!(admin = %who(&identity), route, from = %t.from, to = %t.to, "API moved");
            Json(json!({ "route": route, "transition": t })).into_response()
        }
        Ok(Err(e @ crate::platform::lifecycle::LifecycleError::Move { .. })) => {
            problem(StatusCode::CONFLICT, e.to_string())
        }
        Ok(Err(e)) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

// === Subscriptions ===

async fn get_subscriptions(State(gw): State<Gateway>, Path(api): Path<String>) -> Response {
    let subs = gw.subscriptions();
    let listed = subs
        .policy(&api)
        .and_then(|p| Ok((p, subs.list(&api)?, subs.decisions(&api)?)));
    match listed {
        Ok((policy, list, decisions)) => Json(json!({
            "api": api,
            "policy": policy,
            "subscriptions": list,
            "decisions": decisions,
            "refused": subs.refused(&api).unwrap_or(0),
        }))
        .into_response(),
        Err(e) => problem(e.status(), e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    consumer: Consumer,
}

async fn post_decision(
    State(gw): State<Gateway>,
    Path((api, decision)): Path<(String, String)>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Response {
    let consumer = match serde_json::from_slice::<DecisionBody>(&body) {
        Ok(b) => b.consumer,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"consumer\": {{\"kind\": \"tenant\", \"tenant\": …}}}} or {{\"consumer\": {{\"kind\": \"identity\", \"id\": …, \"tenant\": …}}}}: {e}"
                ),
            );
        }
    };
    let subs = gw.subscriptions();
    let by = who(&identity);
    let decided = tokio::task::spawn_blocking({
        let (api, decision) = (api.clone(), decision.clone());
        move || -> Result<_, Option<SubscriptionError>> {
            match decision.as_str() {
                "approve" => subs.approve(&api, &consumer, &by).map_err(Some),
                "reject" => subs.reject(&api, &consumer, &by).map_err(Some),
                "revoke" => subs.revoke(&api, &consumer, &by).map_err(Some),
                _ => Err(None),
            }
        }
    })
    .await;
    match decided {
        Ok(Ok(sub)) => {
            tracing::info!(admin = %who(&identity), api, decision, consumer = %sub.consumer, "subscription decided");
            Json(json!({ "api": api, "subscription": sub })).into_response()
        }
        Ok(Err(Some(e))) => problem(e.status(), e.to_string()),
        Ok(Err(None)) => problem(
            StatusCode::NOT_FOUND,
            format!("no decision `{decision}`: approve, reject or revoke"),
        ),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
