//! The admin API's rollout routes (start a route's plan, pause, resume,
//! skip to a step, abort, and read status and history) and mirror routes
//! (counters, kept samples of differing answers, the share copied).
//! Served by [`admin::router`](super::admin::router).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::admin::{problem, who};
use super::{Gateway, RolloutStartError};
use crate::auth::Identity;

/// The rollout routes.
pub(super) fn routes() -> Router<Gateway> {
    Router::new()
        .route("/rollouts", get(list))
        .route("/rollouts/{route}", get(one).post(start))
        .route("/rollouts/{route}/{action}", post(act))
        .route("/mirrors", get(mirrors))
        .route("/mirrors/{route}", get(mirror))
        .route("/mirrors/{route}/percent", axum::routing::put(put_percent))
}

fn mirror_json(gw: &Gateway, route: &str) -> Option<serde_json::Value> {
    let state = gw.inner.state.load();
    let r = state.routes.iter().find(|r| r.name == route)?;
    let m = r.mirror.as_ref()?;
    let h = m.layer.handle();
    Some(json!({
        "route": route,
        "upstream": m.config.upstream,
        "percent": h.percent(),
        "stats": h.stats(),
        "samples": h.samples(),
    }))
}

async fn mirrors(State(gw): State<Gateway>) -> Json<serde_json::Value> {
    let all: Vec<serde_json::Value> = gw
        .routes()
        .iter()
        .filter_map(|r| mirror_json(&gw, r))
        .collect();
    Json(json!({ "mirrors": all }))
}

async fn mirror(State(gw): State<Gateway>, Path(route): Path<String>) -> Response {
    match mirror_json(&gw, &route) {
        Some(m) => Json(m).into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            format!("route `{route}` has no mirror"),
        ),
    }
}

/// `{"percent": 12.5}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PercentBody {
    percent: f64,
}

async fn put_percent(
    State(gw): State<Gateway>,
    Path(route): Path<String>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(PercentBody { percent }) = serde_json::from_slice(&body) else {
        return problem(StatusCode::BAD_REQUEST, "expected {\"percent\": 0 to 100}");
    };
    if !(0.0..=100.0).contains(&percent) {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("a percentage is 0 to 100, not {percent}"),
        );
    }
    let handle = {
        let state = gw.inner.state.load();
        state
            .routes
            .iter()
            .find(|r| r.name == route)
            .and_then(|r| r.mirror.as_ref())
            .map(|m| m.layer.handle())
    };
    let Some(handle) = handle else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("route `{route}` has no mirror"),
        );
    };
    let before = handle.percent();
    let after = handle.set_percent(percent);
    tracing::info!(admin = %who(&identity), route, before, after, "mirror share changed");
    Json(mirror_json(&gw, &route).unwrap_or_default()).into_response()
}

fn status(gw: &Gateway, route: &str) -> Option<serde_json::Value> {
    let state = gw.inner.state.load();
    gw.inner.rollouts.record(&state, route).map(|r| r.json())
}

async fn list(State(gw): State<Gateway>) -> Json<serde_json::Value> {
    let state = gw.inner.state.load();
    let all: Vec<serde_json::Value> = gw
        .inner
        .rollouts
        .records(&state)
        .iter()
        .map(super::rollouts::Record::json)
        .collect();
    Json(json!({ "rollouts": all }))
}

async fn one(State(gw): State<Gateway>, Path(route): Path<String>) -> Response {
    match status(&gw, &route) {
        Some(s) => Json(s).into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            format!("route `{route}` has no rollout plan"),
        ),
    }
}

/// `{}`, or `{"canary": "green"}` to make sure the plan rolls out that one.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartBody {
    canary: Option<String>,
}

async fn start(
    State(gw): State<Gateway>,
    Path(route): Path<String>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Response {
    let body: StartBody = if body.iter().all(u8::is_ascii_whitespace) {
        StartBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("expected {{}} or {{\"canary\": \"…\"}}: {e}"),
                );
            }
        }
    };
    if let (Some(asked), Some(record)) = (&body.canary, status(&gw, &route))
        && record["canary"].as_str() != Some(asked.as_str())
    {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "route `{route}`'s plan rolls out `{}`, not `{asked}`: change `[routes.rollout]` first",
                record["canary"].as_str().unwrap_or_default()
            ),
        );
    }
    match gw.start_rollout(&route, &who(&identity)) {
        Ok(_) => {
            let s = status(&gw, &route).unwrap_or_default();
            (StatusCode::CREATED, Json(s)).into_response()
        }
        Err(e @ RolloutStartError::NoPlan(_)) => problem(StatusCode::NOT_FOUND, e.to_string()),
        Err(e @ RolloutStartError::Running(_)) => problem(StatusCode::CONFLICT, e.to_string()),
        Err(e) => problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

/// `{"reason": "…"}` for `abort`, `{"step": 2}` for `skip`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActBody {
    reason: Option<String>,
    step: Option<usize>,
}

async fn act(
    State(gw): State<Gateway>,
    Path((route, action)): Path<(String, String)>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Response {
    let body: ActBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => return problem(StatusCode::BAD_REQUEST, format!("invalid body: {e}")),
        }
    };
    if !matches!(action.as_str(), "pause" | "resume" | "abort" | "skip") {
        return problem(
            StatusCode::NOT_FOUND,
            format!("no rollout action `{action}` (pause, resume, abort, skip)"),
        );
    }
    let admin = who(&identity);
    let Some(handle) = gw.rollout(&route) else {
        let shared = gw.inner.state.load().platform.store.is_some();
        return match status(&gw, &route) {
            // Perhaps led by another gateway over the same store (read
            // there, not in this gateway's view): the command is left in
            // the record for it.
            Some(_) if shared => forward(&gw, &route, &action, body, &admin).await,
            Some(_) => problem(
                StatusCode::CONFLICT,
                format!("no rollout of route `{route}` is running"),
            ),
            None => problem(
                StatusCode::NOT_FOUND,
                format!("route `{route}` has no rollout plan"),
            ),
        };
    };
    let before = status(&gw, &route).map_or(0, |s| s["seq"].as_u64().unwrap_or(0));
    match action.as_str() {
        "pause" => handle.pause(),
        "resume" => handle.resume(),
        "abort" => {
            let reason = body.reason.unwrap_or_else(|| "by the admin API".to_owned());
            handle.abort(format!("{reason} ({admin})"));
        }
        _ => {
            let Some(step) = body.step else {
                return problem(StatusCode::BAD_REQUEST, "skip needs {\"step\": N}");
            };
            if let Err(e) = handle.skip_to(step) {
                return problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
            }
        }
    }
    tracing::info!(admin = %admin, route, action, "rollout changed");
    // The rollout's task takes the command at its next wake: answer with
    // the state it leads to (or, after 200 ms, as it is).
    let kinds: &[&str] = match action.as_str() {
        "pause" => &["paused"],
        "resume" => &["resumed"],
        "abort" => &["aborted", "promoted"],
        _ => &["skipped"],
    };
    let done = |s: &serde_json::Value| {
        // The state it leads to, or an end.
        s["history"].as_array().is_some_and(|h| {
            h.iter().rev().any(|e| {
                e["seq"].as_u64() > Some(before)
                    && kinds
                        .iter()
                        .chain(&["aborted", "promoted"])
                        .any(|k| e["kind"] == *k)
            })
        })
    };
    let mut now = status(&gw, &route).unwrap_or_default();
    for _ in 0..100 {
        if done(&now) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        now = status(&gw, &route).unwrap_or_default();
    }
    Json(now).into_response()
}

/// A command for the rollout another gateway leads: left in its record
/// (202 with the record), which the leader reads when the store announces
/// the change, or at its next heartbeat.
async fn forward(gw: &Gateway, route: &str, action: &str, body: ActBody, admin: &str) -> Response {
    if action == "skip" && body.step.is_none() {
        return problem(StatusCode::BAD_REQUEST, "skip needs {\"step\": N}");
    }
    let state = gw.inner.state.load_full();
    let command = json!({
        "op": action,
        "reason": body.reason,
        "step": body.step,
        "by": admin,
    });
    let route_owned = route.to_owned();
    let done = tokio::task::spawn_blocking(move || {
        super::rollouts::forward(&state, &route_owned, command)
    })
    .await;
    match done {
        Ok(Ok(mut record)) => {
            tracing::info!(
                admin,
                route,
                action,
                "rollout command left for the gateway leading it"
            );
            record["forwarded"] = json!(true);
            (StatusCode::ACCEPTED, Json(record)).into_response()
        }
        Ok(Err(why)) => problem(StatusCode::CONFLICT, why),
        Err(_) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the command was not left",
        ),
    }
}
