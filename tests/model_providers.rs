#![cfg(feature = "json")]
//! `ModelRouter` with providers, over in-process upstreams driven with
//! `oneshot`: credentials (the caller's removed, the provider's put in, a
//! key pool rotating on 429), the usage hook, `include_usage` asked for
//! and its chunk hidden, cached and reasoning tokens, a stream dropped
//! midway counted as truncated, and APIs an upstream cannot take.
//! (Cross-provider translation end to end over real sockets and the real
//! SDKs is in `tests/ai_providers_e2e.rs`.)

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use switchyard::auth::Identity;
use switchyard::body::RequestBody;
use switchyard::model::providers::Protocol;
use switchyard::model::{
    Alias, Catalog, ClientApi, KeySource, Model, ModelRouter, Provider, UsageRecord,
};
use tower::util::BoxCloneSyncService;
use tower::{ServiceExt, service_fn};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type UpReq = Request<RequestBody<Full<Bytes>>>;
type Upstream = BoxCloneSyncService<UpReq, Response<Full<Bytes>>, BoxError>;

/// What an upstream saw: headers and body, per request.
type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// An upstream answering `status` with `body` as `content_type`,
/// recording what it got.
fn upstream(seen: &Seen, status: u16, content_type: &'static str, body: &'static str) -> Upstream {
    let seen = Arc::clone(seen);
    BoxCloneSyncService::new(service_fn(move |req: UpReq| {
        let seen = Arc::clone(&seen);
        async move {
            let (head, got) = req.into_parts();
            let got = got.collect().await?.to_bytes();
            let v: Value = serde_json::from_slice(&got).unwrap_or(Value::Null);
            seen.lock().unwrap().push((head.headers, v));
            let res = Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(Full::new(Bytes::from_static(body.as_bytes())))?;
            Ok::<_, BoxError>(res)
        }
    }))
}

fn ask(path: &str, body: Value) -> Request<Full<Bytes>> {
    let mut req = Request::post(path)
        .header("content-type", "application/json")
        .header("authorization", "Bearer gateway-key-of-the-caller")
        .header("x-api-key", "another-caller-secret")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    req.extensions_mut()
        .insert(Identity::new("alice").with_tenant("acme"));
    req
}

type Records = Arc<Mutex<Vec<UsageRecord>>>;

fn hook(records: &Records) -> impl Fn(&UsageRecord) + Send + Sync + 'static {
    let records = Arc::clone(records);
    move |r: &UsageRecord| records.lock().unwrap().push(r.clone())
}

const CHAT_JSON: &str = r#"{"id":"c1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":120,"completion_tokens":30,"total_tokens":150,"prompt_tokens_details":{"cached_tokens":100},"completion_tokens_details":{"reasoning_tokens":10}}}"#;

#[tokio::test]
async fn the_callers_credential_never_reaches_the_provider_and_usage_is_reported() {
    let seen = Seen::default();
    let records = Records::default();
    let router = ModelRouter::builder()
        .upstream(
            "openai",
            upstream(&seen, 200, "application/json", CHAT_JSON),
        )
        .provider(
            "openai",
            Provider::new(Protocol::OpenAi).key(KeySource::Value("sk-provider".into())),
        )
        .catalog(
            Catalog::new()
                .model(Model::new("gpt-4o", "openai"))
                .alias(Alias::new("chat", [("gpt-4o", 1)])),
        )
        .on_usage(hook(&records))
        .build()
        .unwrap();
    let res = router
        .clone()
        .oneshot(ask(
            "/v1/chat/completions",
            json!({"model": "chat", "messages": []}),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        CHAT_JSON.as_bytes(),
        "a same-protocol answer passes untouched"
    );

    let seen = seen.lock().unwrap();
    let (headers, sent) = &seen[0];
    assert_eq!(headers["authorization"], "Bearer sk-provider");
    assert!(!headers.contains_key("x-api-key"));
    assert_eq!(sent["model"], "gpt-4o");

    let records = records.lock().unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.identity.as_ref().unwrap().id(), "alice");
    assert_eq!(r.tenant(), Some("acme"));
    assert_eq!(r.alias.as_deref(), Some("chat"));
    assert_eq!(&*r.model, "gpt-4o");
    assert_eq!(r.provider, Protocol::OpenAi);
    assert_eq!(r.client, ClientApi::ChatCompletions);
    assert_eq!(r.status, StatusCode::OK);
    let u = r.usage;
    assert_eq!(
        (u.input, u.cached_read, u.output, u.reasoning, u.truncated),
        (120, 100, 30, 10, false)
    );
    assert!(r.time_to_first_token.is_some());
    let stats = router.handle().model_stats("gpt-4o").unwrap();
    assert_eq!(
        (
            stats.prompt_tokens,
            stats.cached_tokens,
            stats.completion_tokens,
            stats.reasoning_tokens
        ),
        (120, 100, 30, 10)
    );
    assert_eq!(stats.time_to_first_token.count, 1);
}

#[tokio::test]
async fn a_key_answered_429_rests_and_the_next_key_takes_over() {
    let seen = Seen::default();
    let router = ModelRouter::builder()
        .upstream(
            "openai",
            upstream(
                &seen,
                429,
                "application/json",
                r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
            ),
        )
        .provider(
            "openai",
            Provider::new(Protocol::OpenAi)
                .key(KeySource::Value("k1".into()))
                .key(KeySource::Value("k2".into())),
        )
        .catalog(Catalog::new().model(Model::new("gpt-4o", "openai")))
        .build()
        .unwrap();
    for _ in 0..3 {
        let res = router
            .clone()
            .oneshot(ask(
                "/v1/chat/completions",
                json!({"model": "gpt-4o", "messages": []}),
            ))
            .await
            .unwrap();
        assert_eq!(res.status(), 429);
    }
    let used: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(h, _)| h["authorization"].to_str().unwrap().to_owned())
        .collect();
    // k1 got a 429 and rests; k2 too; then the one whose rest ends first.
    assert_eq!(used, ["Bearer k1", "Bearer k2", "Bearer k1"]);
    let keys = router.handle().keys();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].source, "value#0");
    assert_eq!((keys[0].requests, keys[0].rate_limited), (2, 2));
    assert!(keys[0].resting_ms > 0);
    let shown = serde_json::to_string(&keys).unwrap();
    assert!(
        !shown.contains("k1\"") && !shown.contains("Bearer"),
        "{shown}"
    );
}

const STREAM: &str = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":2,\"total_tokens\":9}}\n\n\
data: [DONE]\n\n";

#[tokio::test]
async fn usage_is_asked_for_and_its_chunk_hidden_from_a_client_that_did_not_ask() {
    let seen = Seen::default();
    let records = Records::default();
    let router = ModelRouter::builder()
        .upstream("openai", upstream(&seen, 200, "text/event-stream", STREAM))
        .catalog(Catalog::new().model(Model::new("gpt-4o", "openai")))
        .on_usage(hook(&records))
        .build()
        .unwrap();
    let call = |include: Option<bool>| {
        let mut body = json!({"model": "gpt-4o", "stream": true, "messages": []});
        if let Some(i) = include {
            body["stream_options"] = json!({"include_usage": i});
        }
        router.clone().oneshot(ask("/v1/chat/completions", body))
    };

    // Did not ask: asked for upstream, hidden from the client, counted.
    let res = call(None).await.unwrap();
    let text =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(!text.contains("prompt_tokens"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    assert_eq!(text.matches("data: ").count(), 3);
    assert_eq!(
        seen.lock().unwrap()[0].1["stream_options"],
        json!({"include_usage": true})
    );
    // Asked: the stream passes untouched.
    let res = call(Some(true)).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, STREAM.as_bytes());

    let records = records.lock().unwrap();
    let counted: Vec<_> = records
        .iter()
        .map(|r| (r.usage.input, r.usage.output, r.usage.truncated))
        .collect();
    assert_eq!(counted, [(7, 2, false), (7, 2, false)]);
}

#[tokio::test]
async fn an_openai_compatible_server_is_not_sent_stream_options() {
    let seen = Seen::default();
    let router = ModelRouter::builder()
        .upstream("vllm", upstream(&seen, 200, "text/event-stream", STREAM))
        .provider("vllm", Provider::new(Protocol::OpenAiCompatible))
        .catalog(Catalog::new().model(Model::new("llama", "vllm")))
        .build()
        .unwrap();
    let body = json!({"model": "llama", "stream": true, "messages": []});
    let res = router
        .oneshot(ask("/v1/chat/completions", body))
        .await
        .unwrap();
    let _ = res.into_body().collect().await.unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen[0].1.get("stream_options").is_none());
    // No key configured: none sent, and the caller's removed all the same.
    assert!(!seen[0].0.contains_key("authorization"));
}

#[tokio::test]
async fn a_stream_dropped_midway_is_reported_truncated() {
    let seen = Seen::default();
    let records = Records::default();
    // An Anthropic client on an Anthropic upstream: the events pass
    // untouched and the input tokens, in the first event, are counted.
    let events = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"usage\":{\"input_tokens\":11,\"cache_read_input_tokens\":5,\"cache_creation_input_tokens\":2,\"output_tokens\":1}}}\n\n";
    let router = ModelRouter::builder()
        .upstream(
            "anthropic",
            upstream(&seen, 200, "text/event-stream", events),
        )
        .provider(
            "anthropic",
            Provider::new(Protocol::Anthropic).key(KeySource::Value("sk-ant".into())),
        )
        .catalog(Catalog::new().model(Model::new("claude", "anthropic")))
        .on_usage(hook(&records))
        .build()
        .unwrap();
    let mut req = ask(
        "/v1/messages",
        json!({"model": "claude", "max_tokens": 10, "stream": true, "messages": []}),
    );
    req.headers_mut()
        .insert("anthropic-beta", "x".parse().unwrap());
    let res = router.clone().oneshot(req).await.unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(
        first
            .data_ref()
            .unwrap()
            .starts_with(b"event: message_start")
    );
    drop(body);
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].0["x-api-key"], "sk-ant");
    assert_eq!(
        seen[0].0["anthropic-beta"], "x",
        "an Anthropic client's own headers pass to Anthropic"
    );
    let records = records.lock().unwrap();
    let u = records[0].usage;
    assert_eq!(
        (u.input, u.cached_read, u.cache_write, u.truncated),
        (18, 5, 2, true)
    );
    assert_eq!(router.handle().model_stats("claude").unwrap().truncated, 1);
}

#[tokio::test]
async fn apis_a_provider_cannot_take_get_a_400() {
    let seen = Seen::default();
    let router = ModelRouter::builder()
        .upstream("gemini", upstream(&seen, 200, "application/json", "{}"))
        .provider("gemini", Provider::new(Protocol::Gemini))
        .catalog(Catalog::new().model(Model::new("gemini-2.5-flash", "gemini")))
        .build()
        .unwrap();
    for path in ["/v1/embeddings", "/v1/responses"] {
        let res = router
            .clone()
            .oneshot(ask(
                path,
                json!({"model": "gemini-2.5-flash", "input": "x"}),
            ))
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{path}");
        let v: Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(v["error"]["code"], "unsupported_api");
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_provider_for_an_unknown_upstream_or_an_unreadable_key_is_a_build_error() {
    let seen = Seen::default();
    let err = ModelRouter::builder()
        .upstream("a", upstream(&seen, 200, "application/json", "{}"))
        .provider("b", Provider::new(Protocol::Anthropic))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("`b`"), "{err}");
    let err = ModelRouter::builder()
        .upstream("a", upstream(&seen, 200, "application/json", "{}"))
        .provider(
            "a",
            Provider::new(Protocol::Anthropic)
                .key(KeySource::File("/nonexistent/switchyard-key".into())),
        )
        .build()
        .unwrap_err();
    assert!(
        err.to_string().starts_with("providers.a.keys[0]: file"),
        "{err}"
    );
}

/// The README's provider configuration parses, and builds once its keys
/// are there (each read from a file here).
#[cfg(feature = "config")]
#[test]
fn the_readme_provider_config_parses_and_builds() {
    use switchyard::gateway::GatewayConfig;
    let readme = include_str!("../README.md");
    let section = &readme[readme.find("## One AI API over every provider").unwrap()..];
    let start = section.find("```toml\n").unwrap() + "```toml\n".len();
    let text = &section[start..start + section[start..].find("```").unwrap()];
    let config: GatewayConfig = toml::from_str(text).unwrap();
    let model = config.routes[0].model.as_ref().unwrap();
    assert_eq!(model.providers.len(), 3);
    assert_eq!(model.providers["anthropic"].keys.len(), 2);
    assert_eq!(
        model.catalog.aliases[0].fallback.as_deref(),
        Some("gemini-flash")
    );

    // Keys from files instead of the environment, to build it here.
    let dir = crate::support::temp::TempDir::new("readme");
    let mut config = config;
    let model = config.routes[0].model.as_mut().unwrap();
    for (name, provider) in model.providers.iter_mut() {
        let path = dir.join(name);
        std::fs::write(&path, format!("sk-{name}\n")).unwrap();
        provider.keys = vec![KeySource::File(path)];
    }
    switchyard::gateway::Gateway::from_config(config).unwrap();
}

/// A translated stream is written as the upstream's events arrive: each
/// chunk reaches the client before the upstream sends the next (peers have
/// buffered whole streams), and half an event waits for its other half.
#[tokio::test(start_paused = true)]
async fn a_translated_stream_is_never_held_back() {
    use std::convert::Infallible;
    use std::time::Duration;

    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use tokio_stream::wrappers::ReceiverStream;

    type Chunk = Result<Frame<Bytes>, Infallible>;
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(8);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let upstream = service_fn(move |_req: UpReq| {
        let rx = rx.lock().unwrap().take().expect("one request");
        async move {
            let body = StreamBody::new(ReceiverStream::new(rx));
            Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body)
                    .unwrap(),
            )
        }
    });
    let router = ModelRouter::builder()
        .upstream("anthropic", upstream)
        .provider("anthropic", Provider::new(Protocol::Anthropic))
        .catalog(Catalog::new().model(Model::new("claude", "anthropic")))
        .build()
        .unwrap();
    let req = ask(
        "/v1/chat/completions",
        json!({"model": "claude", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let res = router.oneshot(req).await.unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.into_body();
    let send = |text: &str| {
        let tx = tx.clone();
        let frame = Frame::data(Bytes::from(text.to_owned()));
        async move { tx.send(Ok(frame)).await.unwrap() }
    };

    send("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n").await;
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first chunk, at once")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(first.data_ref().unwrap()).contains("\"role\":\"assistant\""));

    send("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\nevent: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel").await;
    // Half an event: nothing to write yet, and nothing written early.
    assert!(
        tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .is_err(),
        "half an event is not written"
    );
    send("lo\"}}\n\n").await;
    let hello = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the delta, once whole")
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(hello.data_ref().unwrap()).contains("\"content\":\"Hello\""));

    send("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n").await;
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("\"finish_reason\":\"stop\""), "{rest}");
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
}
