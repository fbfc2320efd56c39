//! `OpenAiErrors`: the refusals of the layers in front of a model router
//! (auth, scopes, rate limit, the proxy) answered in OpenAI's error shape,
//! with their status and headers; everything else untouched. The last test
//! runs a gateway with an AI route over real loopback HTTP.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::Value;
use switchyard::auth::{ApiKey, ApiKeyLayer, Identity, RequireScopes};
use switchyard::key::KeyBy;
use switchyard::model::{Alias, Catalog, Model, ModelRouter, OpenAiErrorsLayer};
use switchyard::problem::Problem;
use switchyard::ratelimit::{Quota, RateLimitLayer};
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

use crate::support::net;
use net::serve;

const HANG_GUARD: Duration = Duration::from_secs(10);

/// A model server: an OpenAI-style JSON answer.
fn models() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(|_req: Request<Full<Bytes>>| async {
        let mut res = Response::new(Full::new(Bytes::from_static(
            br#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
        )));
        res.headers_mut()
            .insert(CONTENT_TYPE, "application/json".parse().unwrap());
        Ok::<_, Infallible>(res)
    })
}

fn keys() -> ApiKeyLayer {
    ApiKeyLayer::builder()
        .key(ApiKey::new(
            "sk-alice",
            Identity::new("alice").with_scopes(["chat"]),
        ))
        .key(ApiKey::new("sk-bob", Identity::new("bob")))
        .build()
        .unwrap()
}

fn ask(key: Option<&str>) -> Request<Full<Bytes>> {
    let mut req = Request::post("/v1/chat/completions")
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(br#"{"model":"chat"}"#)))
        .unwrap();
    if let Some(key) = key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    req
}

/// The body as JSON, checking `Content-Type` and `Content-Length`.
async fn openai_error<B>(res: Response<B>) -> Value
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
    let length: usize = res.headers()[CONTENT_LENGTH]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), length);
    let json: Value = serde_json::from_slice(&body).unwrap();
    let error = json["error"].as_object().expect("an `error` object");
    let keys: Vec<&str> = error.keys().map(String::as_str).collect();
    assert_eq!(keys, ["message", "type", "param", "code"]);
    assert!(json.as_object().unwrap().len() == 1, "only `error`: {json}");
    json
}

#[tokio::test]
async fn auth_refusals_in_openai_shape_keep_status_and_headers() {
    let svc = ServiceBuilder::new()
        .layer(OpenAiErrorsLayer::new())
        .layer(keys())
        .layer(RequireScopes::all(["chat"]))
        .service(models());

    // No key: 401, WWW-Authenticate kept.
    let res = svc.clone().oneshot(ask(None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().contains_key(WWW_AUTHENTICATE));
    let json = openai_error(res).await;
    assert_eq!(json["error"]["type"], "invalid_request_error");
    assert_eq!(json["error"]["code"], "invalid_api_key");
    assert!(!json["error"]["message"].as_str().unwrap().is_empty());

    // A wrong key: 401 too.
    let res = svc.clone().oneshot(ask(Some("sk-mallory"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(openai_error(res).await["error"]["code"], "invalid_api_key");

    // A key without the scope: 403, the message names the scope.
    let res = svc.clone().oneshot(ask(Some("sk-bob"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let json = openai_error(res).await;
    assert_eq!(json["error"]["code"], "permission_denied");
    assert!(
        json["error"]["message"].as_str().unwrap().contains("chat"),
        "{json}"
    );

    // Allowed: the model's answer, byte for byte.
    let res = svc.clone().oneshot(ask(Some("sk-alice"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        body,
        &br#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#[..]
    );
}

#[tokio::test]
async fn rate_limit_refusal_in_openai_shape_keeps_retry_headers() {
    let limit = RateLimitLayer::builder()
        .key_by(KeyBy::identity())
        .quota(Quota::per_minute(1).named("chat"))
        .build()
        .unwrap();
    let svc = ServiceBuilder::new()
        .layer(OpenAiErrorsLayer::new())
        .layer(keys())
        .layer(limit)
        .service(models());
    let res = svc.clone().oneshot(ask(Some("sk-alice"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = svc.clone().oneshot(ask(Some("sk-alice"))).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key(RETRY_AFTER));
    assert!(res.headers().contains_key("ratelimit"));
    let json = openai_error(res).await;
    assert_eq!(json["error"]["type"], "requests");
    assert_eq!(json["error"]["code"], "rate_limit_exceeded");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retry in"),
        "{json}"
    );
}

#[tokio::test]
async fn the_routers_own_errors_and_streams_pass_untouched() {
    // A streaming model server: three SSE chunks, the last with usage.
    let chunks = [
        "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\n\n",
        "data: [DONE]\n\n",
    ];
    let streamer = service_fn(move |_req: Request<_>| async move {
        let frames = chunks.map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(c))));
        let mut res = Response::new(StreamBody::new(tokio_stream::iter(frames)));
        res.headers_mut()
            .insert(CONTENT_TYPE, "text/event-stream".parse().unwrap());
        Ok::<_, Infallible>(res)
    });
    let router = ModelRouter::builder()
        .upstream("blue", streamer)
        .catalog(
            Catalog::new()
                .model(Model::new("v1", "blue"))
                .alias(Alias::new("chat", [("v1", 1)])),
        )
        .build()
        .unwrap();
    let handle = router.handle();
    let svc = OpenAiErrorsLayer::new().layer(router);

    // The stream: every chunk as it was, one frame each.
    let res = svc.clone().oneshot(ask(None)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut seen = Vec::new();
    while let Some(frame) = body.frame().await {
        seen.push(frame.unwrap().into_data().unwrap());
    }
    assert_eq!(seen, chunks.map(Bytes::from));
    assert_eq!(handle.model_stats("v1").unwrap().completion_tokens, 1);

    // The router's own 404 is already OpenAI's: unchanged.
    let mut req = ask(None);
    *req.body_mut() = Full::new(Bytes::from_static(br#"{"model":"nope"}"#));
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let json = openai_error(res).await;
    assert_eq!(json["error"]["code"], "model_not_found");
    assert_eq!(json["error"]["param"], "model");
}

#[tokio::test]
async fn only_switchyard_problems_are_reshaped() {
    // A handler's own problem+json (no `Problem` in the extensions), and a
    // JSON response that happens to carry a `Problem`: both untouched.
    let handler = service_fn(|req: Request<Full<Bytes>>| async move {
        let mut res = Response::new(Full::new(Bytes::from_static(br#"{"title":"mine"}"#)));
        *res.status_mut() = StatusCode::CONFLICT;
        let ct = if req.uri().path() == "/own" {
            "application/problem+json"
        } else {
            res.extensions_mut()
                .insert(Problem::new(StatusCode::CONFLICT));
            "application/json"
        };
        res.headers_mut().insert(CONTENT_TYPE, ct.parse().unwrap());
        Ok::<_, Infallible>(res)
    });
    let svc = OpenAiErrorsLayer::new().layer(handler);
    for path in ["/own", "/json"] {
        let req = Request::get(path).body(Full::default()).unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::CONFLICT);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, &br#"{"title":"mine"}"#[..], "{path}");
    }

    // A switchyard problem from anywhere (here, a handler using
    // `Problem::into_response`): reshaped, other statuses by class.
    for (status, kind, code) in [
        (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Value::Null,
        ),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large".into(),
        ),
        (
            StatusCode::BAD_GATEWAY,
            "server_error",
            "bad_gateway".into(),
        ),
        (
            StatusCode::GATEWAY_TIMEOUT,
            "server_error",
            "gateway_timeout".into(),
        ),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            Value::Null,
        ),
    ] {
        let handler = service_fn(move |_req: Request<Full<Bytes>>| async move {
            Ok::<_, Infallible>(
                Problem::new(status)
                    .detail("it broke")
                    .into_response::<Full<Bytes>>(),
            )
        });
        let res = OpenAiErrorsLayer::new()
            .layer(handler)
            .oneshot(Request::get("/").body(Full::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), status);
        let json = openai_error(res).await;
        assert_eq!(json["error"]["type"], kind, "{status}");
        assert_eq!(json["error"]["code"], code, "{status}");
        assert_eq!(json["error"]["message"], "it broke");
        assert_eq!(json["error"]["param"], Value::Null);
    }
}

#[tokio::test]
async fn grpc_refusals_stay_grpc() {
    let svc = ServiceBuilder::new()
        .layer(OpenAiErrorsLayer::new())
        .layer(keys())
        .service(models());
    let req = Request::post("/pkg.Svc/Call")
        .header(CONTENT_TYPE, "application/grpc")
        .body(Full::default())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "16");
    assert_eq!(res.headers()[CONTENT_TYPE], "application/grpc");
}

#[tokio::test]
async fn a_gateway_ai_route_answers_openai_errors_over_http() {
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use switchyard::gateway::{Gateway, GatewayConfig};

    // A model server on loopback.
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|| async {
            (
                [(CONTENT_TYPE, "application/json")],
                r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
            )
        }),
    );
    let upstream_addr = serve(app).await;

    let config = format!(
        r#"
[upstreams.blue]
url = "http://{upstream_addr}"

[[api_keys]]
key = "sk-alice"
id = "alice"

[[routes]]
name = "ai"
path_prefix = "/v1"
auth = {{}}
rate_limit = {{ key = "identity", quotas = [{{ name = "chat", limit = 1, period = "1m" }}] }}

[routes.model.catalog]
models = [{{ name = "v1", upstream = "blue" }}]
aliases = [{{ name = "chat", versions = {{ v1 = 1 }} }}]
"#
    );
    let config: GatewayConfig = toml::from_str(&config).unwrap();
    let gateway = Gateway::from_config(config).unwrap();
    let addr = serve(axum::Router::new().fallback_service(gateway)).await;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = |key: Option<&str>| {
        let mut req = ask(key);
        *req.uri_mut() = format!("http://{addr}/v1/chat/completions")
            .parse()
            .unwrap();
        tokio::time::timeout(HANG_GUARD, client.request(req))
    };

    let res = send(None).await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().contains_key(WWW_AUTHENTICATE));
    assert_eq!(openai_error(res).await["error"]["code"], "invalid_api_key");

    let res = send(Some("sk-alice")).await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["x-switchyard-model"], "v1");

    let res = send(Some("sk-alice")).await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key(RETRY_AFTER));
    assert_eq!(
        openai_error(res).await["error"]["code"],
        "rate_limit_exceeded"
    );
}
