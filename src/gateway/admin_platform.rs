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
        .route("/keys", get(get_keys).post(post_key))
        .route("/keys/{digest}", axum::routing::delete(delete_key))
}

// === API keys ===

async fn get_keys(State(gw): State<Gateway>) -> Response {
    let state = gw.inner.state.load();
    let Some(auth) = &state.auth else {
        return Json(json!({ "keys": [] })).into_response();
    };
    let mut keys: Vec<Value> = auth
        .handle()
        .keys()
        .iter()
        .map(|k| {
            let id = k.identity();
            json!({
                "digest": k.digest(),
                "id": id.id(),
                "tenant": id.tenant(),
                "scopes": id.scopes(),
                "tier": id.tier(),
                "disabled": k.is_disabled(),
                "uses": k.uses(),
                "source": if state.platform.keys.is_managed(&k.digest()) { "admin" } else { "config" },
            })
        })
        .collect();
    keys.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    Json(json!({ "keys": keys })).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    id: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    tier: Option<String>,
    /// The digest of a secret the caller keeps; without it a secret is
    /// made and answered once.
    #[serde(default)]
    digest: Option<String>,
}

fn key_change_problem(e: super::keys::KeyChange) -> Response {
    use super::keys::KeyChange;
    match e {
        KeyChange::Exists => problem(StatusCode::CONFLICT, "a key with this digest is in force"),
        KeyChange::Unknown => problem(StatusCode::NOT_FOUND, "no key in force has this digest"),
        KeyChange::Full => problem(
            StatusCode::INSUFFICIENT_STORAGE,
            "10000 keys are managed through the admin API; revoke some first",
        ),
        KeyChange::State(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        KeyChange::Busy => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "the keys kept changing elsewhere; try again",
        ),
    }
}

async fn post_key(
    State(gw): State<Gateway>,
    identity: Option<Extension<Identity>>,
    body: axum::body::Bytes,
) -> Response {
    let new: NewKey = match serde_json::from_slice(&body) {
        Ok(k) => k,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected {{\"id\": …, \"tenant\": …, \"scopes\": […], \"tier\": …, \"digest\": \"sha256:…\"}} (all but id optional): {e}"
                ),
            );
        }
    };
    if new.id.is_empty() {
        return problem(StatusCode::BAD_REQUEST, "a key needs an identity `id`");
    }
    let state = gw.inner.state.load_full();
    let Some(auth) = state.auth.clone() else {
        return problem(
            StatusCode::CONFLICT,
            "no route has `auth`: the gateway takes no API keys",
        );
    };
    // A secret of 32 bytes from the thread RNG (a CSPRNG, seeded by the
    // OS), shown once; only its digest is kept.
    let secret = new.digest.is_none().then(|| {
        let mut bytes = [0u8; 32];
        rand::Rng::fill_bytes(&mut rand::rng(), &mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("sy_{hex}")
    });
    let digest = match (&secret, &new.digest) {
        (Some(secret), _) => crate::auth::digest(secret),
        (None, Some(d)) => d.clone(),
        (None, None) => unreachable!("a secret is made without a digest"),
    };
    let managed = super::keys::Managed {
        digest: digest.clone(),
        id: new.id,
        tenant: new.tenant,
        scopes: new.scopes,
        tier: new.tier,
        by: who(&identity),
        at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let Some(key) = managed.key() else {
        return problem(
            StatusCode::BAD_REQUEST,
            format!("`{digest}` is not a digest (`sha256:` and 64 hex digits)"),
        );
    };
    let in_force: Vec<String> = auth.handle().keys().iter().map(|k| k.digest()).collect();
    let keys = std::sync::Arc::clone(&state.platform.keys);
    let added = {
        let managed = managed.clone();
        tokio::task::spawn_blocking(move || keys.add(managed, &in_force)).await
    };
    match added {
        Ok(Ok(())) => {
            auth.handle().insert(key);
            tracing::info!(admin = %who(&identity), id = managed.id, digest, "API key added");
            let mut out = json!({ "digest": digest, "id": managed.id });
            if let Some(secret) = secret {
                out["key"] = json!(secret);
            }
            (StatusCode::CREATED, Json(out)).into_response()
        }
        Ok(Err(e)) => key_change_problem(e),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn delete_key(
    State(gw): State<Gateway>,
    Path(digest): Path<String>,
    identity: Option<Extension<Identity>>,
) -> Response {
    let state = gw.inner.state.load_full();
    let Some(auth) = state.auth.clone() else {
        return problem(StatusCode::NOT_FOUND, "no key in force has this digest");
    };
    let in_force: Vec<String> = auth.handle().keys().iter().map(|k| k.digest()).collect();
    let keys = std::sync::Arc::clone(&state.platform.keys);
    let revoked = {
        let digest = digest.clone();
        tokio::task::spawn_blocking(move || keys.revoke(&digest, &in_force)).await
    };
    match revoked {
        Ok(Ok(())) => {
            // Effective on the very next request.
            let _ = auth.handle().revoke_digest(&digest);
            tracing::info!(admin = %who(&identity), digest, "API key revoked");
            Json(json!({ "revoked": digest })).into_response()
        }
        Ok(Err(e)) => key_change_problem(e),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
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
        (Some("splits" | "models" | "apis" | "rollouts" | "mirrors"), Some(route)) => {
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
