//! An AI gateway: blue/green for models behind one OpenAI-compatible API.
//!
//! ```text
//! cargo run --example ai_gateway                # listens on 127.0.0.1:8080
//! cargo run --example ai_gateway -- --port 0    # any free port
//! ```
//!
//! The example starts two stand-in model servers on loopback (`blue` serves
//! version `chat-v1`, `green` serves `chat-v2`; both answer
//! `/v1/chat/completions` as OpenAI does, as one JSON document or, with
//! `"stream": true`, as server-sent events) and puts a [`ModelRouter`] in
//! front of them:
//!
//! * clients ask for the alias `chat`: 90 % get `chat-v1`, 10 % `chat-v2`;
//! * every caller of tenant `acme` is pinned to `chat-v2` (an early adopter);
//! * when the chosen version fails (5xx, 429, unreachable) before answering,
//!   the request is sent once more to the fallback, `chat-v1`;
//! * the router counts requests, outcomes, latency and tokens per version.
//!
//! Admin routes read the counters, promote, roll back, and break a model
//! server so that the fallback can be seen. Copy this file to start your
//! own: replace the stand-ins with your model servers' URLs, and put
//! authentication in front of `/admin` before you expose it anywhere.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Response, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use switchyard::auth::{ApiKey, ApiKeyLayer, Identity};
use switchyard::model::{
    Alias, Catalog, ChoiceReason, Model, ModelChoice, ModelError, ModelHandle, ModelRouter,
    OpenAiErrorsLayer, Pin,
};
use switchyard::proxy::Upstream;
use switchyard::server::Server;
use tokio_stream::wrappers::ReceiverStream;
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = port_from_args()?;

    // Two model servers. In real life these are your inference servers
    // (vLLM, TGI, Ollama, a provider's API through an egress proxy...).
    let blue = FakeModelServer::start("blue").await?;
    let green = FakeModelServer::start("green").await?;

    // The router's upstreams are plain `Upstream` proxies: a pooled HTTP
    // client each. The response timeout bounds the time to the response
    // *headers* only, so a long stream of tokens is never cut off.
    let upstream = |server: &FakeModelServer| {
        Upstream::builder(&format!("http://{}", server.addr))
            .response_timeout(Duration::from_secs(60))
            .build()
    };
    let router = ModelRouter::builder()
        .upstream("blue", upstream(&blue)?)
        .upstream("green", upstream(&green)?)
        .catalog(
            Catalog::new()
                // Concrete versions, and the upstream serving each. A server
                // that knows the model by another name gets
                // `.upstream_model("its-name")`: the router rewrites the
                // `model` field of the body, and nothing else.
                .model(Model::new("chat-v1", "blue"))
                .model(Model::new("chat-v2", "green"))
                // What clients ask for. The weights are live: the admin
                // routes below move them without a restart.
                .alias(
                    Alias::new("chat", [("chat-v1", 90), ("chat-v2", 10)])
                        // Retried once here when the chosen version fails
                        // before it answers (a stream that has started is
                        // never retried).
                        .fallback("chat-v1"),
                )
                // A pin beats the weights: acme tries the new version whatever
                // its share, and nobody else is affected.
                .pin(Pin::tenant("acme", "chat", "chat-v2")),
        )
        // Without a sticky key each request is picked at random by weight.
        // For chat, `.sticky(KeyBy::identity())` (or a conversation header)
        // keeps a caller on one version while the weights stay put.
        .build()?;
    let models = router.handle();

    // Who is calling. The router reads the tenant of this identity for pins.
    // OpenAI clients send `Authorization: Bearer <key>`, which is read by
    // default (so is `x-api-key`); the key is removed before the request goes
    // upstream. In a real config, store `sha256:` digests, not keys.
    let auth = ApiKeyLayer::builder()
        .key(ApiKey::new(
            "demo-key",
            Identity::new("demo").with_tenant("globex"),
        ))
        .key(ApiKey::new(
            "acme-key",
            Identity::new("acme-bot").with_tenant("acme"),
        ))
        .build()?;

    // Layers run outside in: answer refusals in OpenAI's error shape (the
    // auth layer's 401 is problem+json, which OpenAI SDKs do not read), say
    // why a version was chosen, authenticate, route. The router answers
    // `GET /v1/models` itself from the catalog and forwards every other
    // request, whatever its path, to the version it picks from the body's
    // `model` field.
    let api = ServiceBuilder::new()
        .layer(OpenAiErrorsLayer::new())
        .map_response(choice_reason_header)
        .layer(auth)
        .service(router);

    let admin = Router::new()
        .route("/models", get(show_models))
        .route("/models/{alias}/promote/{model}", post(promote))
        .route("/models/{alias}/rollback", post(rollback))
        .route("/break/{server}", post(break_server))
        .route("/fix/{server}", post(fix_server))
        .with_state(Admin {
            models,
            servers: Arc::new(BTreeMap::from([
                ("blue", blue.broken.clone()),
                ("green", green.broken.clone()),
            ])),
        });
    let app = Router::new().nest("/admin", admin).fallback_service(api);

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let server = Server::bind(addr).await?;
    print_help(server.local_addr(), &blue, &green);
    server.serve(app).await?;
    Ok(())
}

/// Adds `x-switchyard-reason: weighted | pinned | fallback | ...` from the
/// [`ModelChoice`] the router leaves in the response's extensions (it also
/// names the version in `x-switchyard-model`). Your logging or metrics
/// layer reads the same extension.
fn choice_reason_header<B>(mut res: Response<B>) -> Response<B> {
    let reason = res
        .extensions()
        .get::<ModelChoice>()
        .map(|choice| match choice.reason {
            ChoiceReason::Direct => "direct",
            ChoiceReason::Header => "version-header",
            ChoiceReason::Pinned => "pinned",
            ChoiceReason::Sticky => "sticky",
            ChoiceReason::Weighted => "weighted",
            ChoiceReason::Fallback => "fallback",
            _ => "other",
        });
    if let Some(reason) = reason {
        res.headers_mut()
            .insert("x-switchyard-reason", HeaderValue::from_static(reason));
    }
    res
}

// === admin routes ===

#[derive(Clone)]
struct Admin {
    models: ModelHandle,
    /// Each stand-in server's "answer 500" switch.
    servers: Arc<BTreeMap<&'static str, Arc<AtomicBool>>>,
}

/// The catalog in force and each version's counters. Counters only grow:
/// subtract two readings for a rate.
async fn show_models(State(admin): State<Admin>) -> Json<Value> {
    let catalog = admin.models.catalog();
    let versions: Vec<Value> = admin
        .models
        .stats()
        .into_iter()
        .map(|v| {
            let p99 = v.latency.quantile_interpolated(0.99);
            json!({
                "model": v.model,
                "requests": v.requests,
                "in_flight": v.in_flight,
                "responses": v.responses,
                "errors": v.errors,
                "fallbacks": v.fallbacks,
                "prompt_tokens": v.prompt_tokens,
                "completion_tokens": v.completion_tokens,
                // Time to response headers (the first token of a stream),
                // estimated from histogram buckets.
                "p99_ms": p99.map(|d| (d.as_secs_f64() * 10_000.0).round() / 10.0),
            })
        })
        .collect();
    Json(json!({
        "aliases": catalog.aliases,
        "pins": catalog.pins,
        "versions": versions,
    }))
}

async fn promote(
    State(admin): State<Admin>,
    Path((alias, model)): Path<(String, String)>,
) -> Result<Json<Value>, Problem> {
    admin.models.promote(&alias, &model)?;
    Ok(show_models(State(admin)).await)
}

async fn rollback(
    State(admin): State<Admin>,
    Path(alias): Path<String>,
) -> Result<Json<Value>, Problem> {
    admin.models.rollback(&alias)?;
    Ok(show_models(State(admin)).await)
}

async fn break_server(State(admin): State<Admin>, Path(server): Path<String>) -> Response<Body> {
    set_broken(&admin, &server, true)
}

async fn fix_server(State(admin): State<Admin>, Path(server): Path<String>) -> Response<Body> {
    set_broken(&admin, &server, false)
}

fn set_broken(admin: &Admin, server: &str, broken: bool) -> Response<Body> {
    match admin.servers.get(server) {
        Some(switch) => {
            switch.store(broken, Ordering::Relaxed);
            let now = if broken { "answers 500" } else { "answers" };
            format!("{server} {now}\n").into_response()
        }
        None => Problem::new(
            StatusCode::NOT_FOUND,
            format!("no server `{server}` (try blue or green)"),
        )
        .into_response(),
    }
}

/// A refused change, answered as `application/problem+json` (RFC 9457),
/// the shape every switchyard layer refuses with.
struct Problem(StatusCode, String);

impl Problem {
    fn new(status: StatusCode, detail: String) -> Self {
        Problem(status, detail)
    }
}

impl From<ModelError> for Problem {
    fn from(e: ModelError) -> Self {
        let status = match e {
            ModelError::UnknownAlias { .. }
            | ModelError::UnknownModel { .. }
            | ModelError::NotAVersion { .. } => StatusCode::NOT_FOUND,
            ModelError::NothingToRollBack { .. } => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        Problem(status, e.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response<Body> {
        let Problem(status, detail) = self;
        let body = json!({
            "type": "about:blank",
            "title": status.canonical_reason(),
            "status": status.as_u16(),
            "detail": detail,
        });
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

// === the stand-in model servers ===

/// A stand-in for an OpenAI-compatible model server on `127.0.0.1:0`.
/// `POST /v1/chat/completions` answers with one `chat.completion` document
/// ending with its `usage`, or, with `"stream": true`, a stream of
/// `chat.completion.chunk` events, a last event with the `usage`, then
/// `[DONE]`: where the router reads the token counts.
struct FakeModelServer {
    addr: SocketAddr,
    /// When set, every request gets a 500 (see `/admin/break/{server}`).
    broken: Arc<AtomicBool>,
}

#[derive(Clone)]
struct ServerState {
    name: &'static str,
    broken: Arc<AtomicBool>,
    ids: Arc<AtomicU64>,
}

impl FakeModelServer {
    async fn start(name: &'static str) -> std::io::Result<Self> {
        let broken = Arc::new(AtomicBool::new(false));
        let state = ServerState {
            name,
            broken: broken.clone(),
            ids: Arc::default(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(chat_completions))
            .with_state(state);
        let server = Server::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = server.local_addr();
        tokio::spawn(server.serve(app));
        Ok(Self { addr, broken })
    }
}

async fn chat_completions(State(server): State<ServerState>, body: Bytes) -> Response<Body> {
    if server.broken.load(Ordering::Relaxed) {
        let error = json!({"error": {
            "message": format!("{} is broken (POST /admin/fix/{} to repair it)", server.name, server.name),
            "type": "server_error", "param": null, "code": null,
        }});
        return (StatusCode::INTERNAL_SERVER_ERROR, Json(error)).into_response();
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        let error = json!({"error": {
            "message": "the body is not JSON", "type": "invalid_request_error",
            "param": null, "code": null,
        }});
        return (StatusCode::BAD_REQUEST, Json(error)).into_response();
    };

    // The model as the router rewrote it: the version, never the alias.
    let model = request["model"].as_str().unwrap_or("?").to_owned();
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let said = messages
        .last()
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let answer = format!(
        "{} here, answering as {model}: you said \"{said}\".",
        server.name
    );
    // Real servers count tokenizer tokens; words will do for a demo.
    let prompt_tokens: usize = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .map(|text| text.split_whitespace().count())
        .sum();
    let completion_tokens = answer.split_whitespace().count();
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let id = format!(
        "chatcmpl-{}-{}",
        server.name,
        server.ids.fetch_add(1, Ordering::Relaxed)
    );
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    if request["stream"] != json!(true) {
        // `usage` last, as OpenAI writes it: the router reads token counts
        // from the end of a response (its last 4 KiB).
        return Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }],
            "usage": usage,
        }))
        .into_response();
    }

    // Streaming: one event per word, as tokens come out of a model. OpenAI
    // sends the `usage` event only when asked with
    // `"stream_options": {"include_usage": true}`; this stand-in always does.
    let (events, rx) = tokio::sync::mpsc::channel::<Result<String, Infallible>>(4);
    tokio::spawn(async move {
        let chunk = |delta: Value, finish: Value| {
            let chunk = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            });
            Ok(format!("data: {chunk}\n\n"))
        };
        for (i, word) in answer.split_inclusive(' ').enumerate() {
            let delta = if i == 0 {
                json!({"role": "assistant", "content": word})
            } else {
                json!({"content": word})
            };
            if events.send(chunk(delta, Value::Null)).await.is_err() {
                return; // the client went away: stop generating
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let usage = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage,
        });
        for event in [
            chunk(json!({}), json!("stop")),
            Ok(format!("data: {usage}\n\n")),
            Ok("data: [DONE]\n\n".to_owned()),
        ] {
            if events.send(event).await.is_err() {
                return;
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}

// === command line ===

fn port_from_args() -> Result<u16, String> {
    let mut args = std::env::args().skip(1);
    let mut port = 8080;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let value = args.next().ok_or("--port needs a value")?;
                port = value
                    .parse()
                    .map_err(|_| format!("--port: `{value}` is not a port number"))?;
            }
            "-h" | "--help" => {
                println!("usage: ai_gateway [--port PORT]   (default 8080; 0 picks a free port)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`; try --help")),
        }
    }
    Ok(port)
}

fn print_help(addr: SocketAddr, blue: &FakeModelServer, green: &FakeModelServer) {
    let a = format!("http://{addr}");
    let chat = r#"-H 'content-type: application/json' -d '{"model": "chat", "messages": [{"role": "user", "content": "hello there"}]}'"#;
    let stream = r#"-H 'content-type: application/json' -d '{"model": "chat", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "tell me a story"}]}'"#;
    let unknown = r#"-H 'content-type: application/json' -d '{"model": "gpt-9", "messages": []}'"#;
    println!(
        r#"switchyard AI gateway listening on {a}
model servers: blue (chat-v1) on {blue}, green (chat-v2) on {green}

  curl -si {a}/v1/chat/completions -H 'authorization: Bearer demo-key' \
       {chat}      # chat-v1 (90 %) or chat-v2 (10 %): see x-switchyard-model
  curl -sN {a}/v1/chat/completions -H 'authorization: Bearer demo-key' \
       {stream}   # streamed, word by word
  curl -si {a}/v1/chat/completions -H 'authorization: Bearer acme-key' \
       {chat}      # tenant acme is pinned to chat-v2
  curl -s {a}/v1/models -H 'authorization: Bearer demo-key'   # the catalog, OpenAI style
  curl -s {a}/v1/chat/completions -H 'authorization: Bearer demo-key' \
       {unknown}   # 404 model_not_found, in OpenAI's error shape
  curl -s {a}/admin/models                                    # weights, pins, per-version requests and tokens

  curl -s -X POST {a}/admin/break/green       # green answers 500 from now on...
  curl -si {a}/v1/chat/completions -H 'authorization: Bearer acme-key' \
       {chat}      # ...so acme's request falls back to chat-v1
  curl -s -X POST {a}/admin/fix/green
  curl -s -X POST {a}/admin/models/chat/promote/chat-v2       # everyone on chat-v2
  curl -s -X POST {a}/admin/models/chat/rollback              # back to 90/10
"#,
        blue = blue.addr,
        green = green.addr,
    );
}
