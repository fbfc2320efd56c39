//! One AI API over every provider: OpenAI, Anthropic and Gemini behind one
//! alias, spoken to as OpenAI Chat Completions or as Anthropic Messages.
//!
//! ```text
//! cargo run --example ai_providers                # listens on 127.0.0.1:8080
//! cargo run --example ai_providers -- --port 0    # any free port
//! ```
//!
//! The example starts three stand-in providers on loopback, each speaking
//! its provider's wire format and accepting only its own key (OpenAI's
//! `/v1/chat/completions` with `Authorization: Bearer`, Anthropic's
//! `/v1/messages` with `x-api-key` and `anthropic-version`, Gemini's
//! `/v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse` with `x-goog-api-key`), and puts a
//! [`ModelRouter`] in front of them:
//!
//! * the alias `chat` spreads over `gpt-4o-mini` (OpenAI), `claude-sonnet`
//!   (Anthropic) and `gemini-flash` (Gemini), falling back to
//!   `gemini-flash` when the chosen provider fails (429, 5xx);
//! * `x-model-version: claude-sonnet` picks a version of the alias;
//! * whatever the provider, an OpenAI client gets OpenAI answers and an
//!   Anthropic client Anthropic answers, JSON or streamed;
//! * each provider gets its own key in its own header; the caller's key
//!   never leaves the gateway;
//! * every answer's tokens, normalized, are printed by the usage hook.
//!
//! To use the real providers, see `real_providers` at the end: the same
//! router, with `https://` upstreams and keys from the environment.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use switchyard::model::providers::Protocol;
use switchyard::model::{
    Alias, Catalog, KeySource, Model, ModelRouter, OpenAiErrorsLayer, Provider, UsageRecord,
};
use switchyard::proxy::Upstream;
use switchyard::server::Server;
use tower::ServiceBuilder;

/// The stand-ins' keys. Real keys come from the environment (see
/// `real_providers`), never from code.
const OPENAI_KEY: &str = "sk-demo-openai";
const ANTHROPIC_KEY: &str = "sk-ant-demo";
const GEMINI_KEY: &str = "AIza-demo-gemini";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = port_from_args()?;

    let openai = stand_in(Kind::OpenAi, OPENAI_KEY).await?;
    let anthropic = stand_in(Kind::Anthropic, ANTHROPIC_KEY).await?;
    let gemini = stand_in(Kind::Gemini, GEMINI_KEY).await?;

    // Each upstream is a pooled HTTP client; its provider says which wire
    // protocol it speaks and where its key comes from.
    let upstream = |addr: SocketAddr| {
        Upstream::builder(&format!("http://{addr}"))
            .response_timeout(Duration::from_secs(60))
            .build()
    };
    let router = ModelRouter::builder()
        .upstream("openai", upstream(openai)?)
        .upstream("anthropic", upstream(anthropic)?)
        .upstream("gemini", upstream(gemini)?)
        .provider(
            "openai",
            Provider::new(Protocol::OpenAi).key(KeySource::Value(OPENAI_KEY.into())),
        )
        .provider(
            "anthropic",
            Provider::new(Protocol::Anthropic).key(KeySource::Value(ANTHROPIC_KEY.into())),
        )
        .provider(
            "gemini",
            Provider::new(Protocol::Gemini).key(KeySource::Value(GEMINI_KEY.into())),
        )
        .catalog(catalog())
        // Cost tracking and budgets start here: one record per answer.
        .on_usage(|r: &UsageRecord| {
            println!(
                "usage: {} via {} ({}): {} in ({} cached), {} out ({} reasoning), status {}",
                r.model,
                r.upstream,
                r.provider.as_str(),
                r.usage.input,
                r.usage.cached_read,
                r.usage.output,
                r.usage.reasoning,
                r.status.as_u16(),
            );
        })
        .build()?;

    // Refusals from the layers in front (none here but the router's own)
    // in OpenAI's error shape.
    let app = ServiceBuilder::new()
        .layer(OpenAiErrorsLayer::new())
        .service(router);
    let server = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    print_help(server.local_addr(), [openai, anthropic, gemini]);
    server.serve(app).await?;
    Ok(())
}

/// One alias over three providers. The names clients use (`claude-sonnet`)
/// differ from the providers' (`claude-sonnet-4-5`): the router rewrites
/// them (for Gemini, in the path).
fn catalog() -> Catalog {
    Catalog::new()
        .model(Model::new("gpt-4o-mini", "openai"))
        .model(Model::new("claude-sonnet", "anthropic").upstream_model("claude-sonnet-4-5"))
        .model(Model::new("gemini-flash", "gemini").upstream_model("gemini-2.5-flash"))
        .alias(
            Alias::new(
                "chat",
                [
                    ("gpt-4o-mini", 34),
                    ("claude-sonnet", 33),
                    ("gemini-flash", 33),
                ],
            )
            .fallback("gemini-flash"),
        )
        .allow_version_header(true)
}

// === the stand-in providers ===

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    OpenAi,
    Anthropic,
    Gemini,
}

#[derive(Clone)]
struct StandIn {
    kind: Kind,
    key: &'static str,
}

/// Starts a stand-in provider on a free loopback port.
async fn stand_in(kind: Kind, key: &'static str) -> std::io::Result<SocketAddr> {
    let app = axum::Router::new()
        .fallback(answer)
        .with_state(StandIn { kind, key });
    let server = Server::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = server.local_addr();
    tokio::spawn(server.serve(app));
    Ok(addr)
}

/// Answers "hello from PROVIDER" in the provider's own format, after
/// checking its key (a 401 in its error shape otherwise).
async fn answer(State(s): State<StandIn>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let got = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let authorized = match s.kind {
        Kind::OpenAi => got("authorization") == Some(&format!("Bearer {}", s.key)),
        Kind::Anthropic => got("x-api-key") == Some(s.key),
        Kind::Gemini => got("x-goog-api-key") == Some(s.key),
    };
    if !authorized {
        let error = match s.kind {
            Kind::OpenAi => json!({"error": {"message": "Incorrect API key provided.",
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            Kind::Anthropic => json!({"type": "error",
                "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
            Kind::Gemini => json!({"error": {"code": 401, "status": "UNAUTHENTICATED",
                "message": "API key not valid. Please pass a valid API key."}}),
        };
        return (StatusCode::UNAUTHORIZED, axum::Json(error)).into_response();
    }
    let pieces = [
        "hello",
        " from",
        match s.kind {
            Kind::OpenAi => " openai",
            Kind::Anthropic => " anthropic",
            Kind::Gemini => " gemini",
        },
    ];
    let text = pieces.concat();
    let model = request["model"].as_str().unwrap_or("?");
    let stream = request["stream"] == true || uri.path().ends_with(":streamGenerateContent");

    let events: Vec<String> = match (s.kind, stream) {
        (Kind::OpenAi, false) => {
            return axum::Json(json!({
                "id": "chatcmpl-demo", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
            }))
            .into_response();
        }
        (Kind::OpenAi, true) => {
            let chunk = |delta: Value, finish: Value| {
                json!({"id": "chatcmpl-demo", "object": "chat.completion.chunk", "created": 0,
                       "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            let mut events = vec![chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            )];
            events.extend(
                pieces
                    .iter()
                    .map(|p| chunk(json!({"content": p}), Value::Null)),
            );
            events.push(chunk(json!({}), json!("stop")));
            if request["stream_options"]["include_usage"] == true {
                events.push(
                    json!({"id": "chatcmpl-demo", "object": "chat.completion.chunk",
                    "created": 0, "model": model, "choices": [],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}),
                );
            }
            let mut events: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
            events.push("data: [DONE]\n\n".into());
            events
        }
        (Kind::Anthropic, false) => {
            return axum::Json(json!({
                "id": "msg_demo", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 4, "cache_read_input_tokens": 8, "output_tokens": 3},
            }))
            .into_response();
        }
        (Kind::Anthropic, true) => {
            let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
            let mut events = vec![
                event(
                    "message_start",
                    json!({"type": "message_start", "message": {
                    "id": "msg_demo", "type": "message", "role": "assistant", "model": model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 4, "cache_read_input_tokens": 8, "output_tokens": 1}}}),
                ),
                event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                ),
            ];
            events.extend(pieces.iter().map(|p| {
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": p}}),
                )
            }));
            events.push(event(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": 0}),
            ));
            events.push(event(
                "message_delta",
                json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"output_tokens": 3}}),
            ));
            events.push(event("message_stop", json!({"type": "message_stop"})));
            events
        }
        (Kind::Gemini, stream) => {
            // Gemini's counts are cumulative: every chunk has the usage so far.
            let chunk = |text: &str, done: bool, out: usize| {
                let mut candidate = json!({"index": 0,
                    "content": {"role": "model", "parts": [{"text": text}]}});
                if done {
                    candidate["finishReason"] = json!("STOP");
                }
                json!({"candidates": [candidate], "modelVersion": "gemini-2.5-flash",
                       "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": out,
                                         "totalTokenCount": 12 + out}})
            };
            if !stream {
                return axum::Json(chunk(&text, true, 3)).into_response();
            }
            pieces
                .iter()
                .enumerate()
                .map(|(i, p)| format!("data: {}\r\n\r\n", chunk(p, i == 2, i + 1)))
                .collect()
        }
    };
    let events = events.into_iter().map(Ok::<_, Infallible>);
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(tokio_stream::iter(events)),
    )
        .into_response()
}

// === the real providers ===

/// The same router over the real providers: HTTPS upstreams (the `tls`
/// feature) and keys read from the environment when the router is built
/// (`KeySource::File` reads a mounted secret instead). The gateway's
/// TOML says the same with
/// `[routes.model.providers.anthropic] protocol = "anthropic"  keys = [{ env = "ANTHROPIC_API_KEY" }]`.
#[allow(dead_code)]
fn real_providers() -> Result<ModelRouter<Upstream>, Box<dyn std::error::Error>> {
    let upstream = |url: &str| {
        Upstream::builder(url)
            .response_timeout(Duration::from_secs(120))
            .build()
    };
    let env = |name: &str| KeySource::Env(name.into());
    Ok(ModelRouter::builder()
        .upstream("openai", upstream("https://api.openai.com")?)
        .upstream("anthropic", upstream("https://api.anthropic.com")?)
        .upstream(
            "gemini",
            upstream("https://generativelanguage.googleapis.com")?,
        )
        .provider(
            "openai",
            Provider::new(Protocol::OpenAi).key(env("OPENAI_API_KEY")),
        )
        .provider(
            "anthropic",
            // Two keys make a pool: one rests after a 429 while the other serves.
            Provider::new(Protocol::Anthropic)
                .key(env("ANTHROPIC_API_KEY"))
                .key(env("ANTHROPIC_API_KEY_2")),
        )
        .provider(
            "gemini",
            Provider::new(Protocol::Gemini).key(env("GEMINI_API_KEY")),
        )
        .catalog(catalog())
        .build()?)
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
                println!("usage: ai_providers [--port PORT]   (default 8080; 0 picks a free port)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`; try --help")),
        }
    }
    Ok(port)
}

fn print_help(addr: SocketAddr, providers: [SocketAddr; 3]) {
    let a = format!("http://{addr}");
    let chat = r#"-H 'content-type: application/json' -d '{"model": "chat", "messages": [{"role": "user", "content": "hello"}]}'"#;
    let stream = r#"-H 'content-type: application/json' -d '{"model": "chat", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "hello"}]}'"#;
    let messages = r#"-H 'content-type: application/json' -H 'anthropic-version: 2023-06-01' -d '{"model": "chat", "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]}'"#;
    let [openai, anthropic, gemini] = providers;
    println!(
        r#"switchyard AI gateway over three providers, listening on {a}
stand-ins: openai on {openai}, anthropic on {anthropic}, gemini on {gemini}

  curl -si {a}/v1/chat/completions -H 'authorization: Bearer my-gateway-key' \
       {chat}   # any provider: see x-switchyard-model
  curl -s {a}/v1/chat/completions -H 'x-model-version: claude-sonnet' \
       {chat}   # Anthropic, answered as OpenAI
  curl -s {a}/v1/chat/completions -H 'x-model-version: gemini-flash' \
       {chat}   # Gemini, answered as OpenAI
  curl -sN {a}/v1/chat/completions -H 'x-model-version: gemini-flash' \
       {stream}   # streamed
  curl -s {a}/v1/messages -H 'x-api-key: my-gateway-key' -H 'x-model-version: gpt-4o-mini' \
       {messages}   # an Anthropic client over OpenAI
  curl -sN {a}/v1/messages -H 'x-model-version: gemini-flash' \
       {messages_stream}   # ... streamed, as Anthropic events
  curl -s {a}/v1/models                                   # the catalog
"#,
        messages_stream = messages.replace(
            r#""max_tokens": 100,"#,
            r#""max_tokens": 100, "stream": true,"#
        ),
    );
}
