#![cfg(feature = "admin")]
//! The control plane attacked over real loopback HTTP: reloads are
//! transactions, admin keys rotate with the configuration, `GET /config`
//! gives away no secret, a model route follows its upstream's new address,
//! and a limit before authentication stops a 401 flood.
//!
//! Timeouts here only guard against a hang; no assertion is about speed.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::net;
use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use net::serve;
use serde_json::{Value, json};
use switchyard::gateway::{Gateway, GatewayConfig, admin};

const HANG_GUARD: Duration = Duration::from_secs(10);

/// An upstream answering `name` on every path, and echoing the request's
/// `authorization` header on `/auth`.
async fn upstream(name: &'static str) -> SocketAddr {
    let app = Router::new()
        .route(
            "/auth",
            get(|headers: http::HeaderMap| async move {
                headers
                    .get("authorization")
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .unwrap_or_default()
            }),
        )
        .fallback(move || async move { name });
    serve(app).await
}

struct Harness {
    gateway: Gateway,
    addr: SocketAddr,
    admin: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
}

async fn start(config: &str) -> Harness {
    let config = GatewayConfig::from_toml(config).unwrap();
    let gateway = Gateway::from_config(config).unwrap();
    let addr = serve(Router::new().fallback_service(gateway.clone())).await;
    let admin = serve(admin::router(&gateway).unwrap()).await;
    Harness {
        gateway,
        addr,
        admin,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl Harness {
    async fn call(
        &self,
        method: Method,
        uri: String,
        headers: &[(&str, &str)],
        body: Option<String>,
    ) -> (StatusCode, Bytes) {
        let mut req = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap();
        let res = tokio::time::timeout(HANG_GUARD, self.client.request(req))
            .await
            .expect("request hung")
            .expect("request failed");
        let status = res.status();
        let body = tokio::time::timeout(HANG_GUARD, res.into_body().collect())
            .await
            .expect("body hung")
            .expect("body failed")
            .to_bytes();
        (status, body)
    }

    async fn get(&self, path: &str, key: &str) -> (StatusCode, String) {
        let (status, body) = self
            .call(
                Method::GET,
                format!("http://{}{path}", self.addr),
                &[("x-api-key", key)],
                None,
            )
            .await;
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn admin(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let bearer = format!("Bearer {key}");
        let (status, body) = self
            .call(
                method,
                format!("http://{}{path}", self.admin),
                &[("authorization", &bearer)],
                body.map(|b| b.to_string()),
            )
            .await;
        let doc = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        (status, doc)
    }
}

fn config(blue: SocketAddr, green: SocketAddr) -> String {
    format!(
        r#"
[upstreams.blue]
url = "http://{blue}"
[upstreams.green]
url = "http://{green}"

[[api_keys]]
key = "old-key"
id = "old"

[admin]
keys = [{{ key = "admin-one", id = "ops" }}]

[[routes]]
name = "api"
path_prefix = "/"
auth = {{}}
rate_limit = {{ key = "identity", quotas = [{{ limit = 100, period = "1s" }}] }}
[[routes.transform.sets]]
request.headers.remove = ["authorization"]
request.headers.add = [{{ name = "authorization", value = "Bearer upstream-secret" }}]
response.headers.add = [{{ name = "x-rules", value = "v1" }}]
[routes.split]
targets = [
  {{ name = "blue", upstream = "blue", weight = 100 }},
  {{ name = "green", upstream = "green", weight = 0 }},
]
"#
    )
}

/// A configuration that changes keys, weights, rules and quotas, and is
/// refused only by its last route: nothing of it may show.
#[tokio::test]
async fn a_reload_refused_halfway_leaves_every_handle_as_it_was() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let h = start(&config(blue, green)).await;
    let weights = h.gateway.split("api").unwrap().weights();
    let quotas = h.gateway.rate_limit("api").unwrap().quotas();

    let (status, shown) = h.admin(Method::GET, "/config", "admin-one", None).await;
    assert_eq!(status, StatusCode::OK);
    let mut doc = shown.clone();
    doc["api_keys"] = json!([{ "key": "new-key", "id": "new" }]);
    doc["admin"]["keys"] = json!([{ "key": "admin-two", "id": "ops" }]);
    let route = &mut doc["routes"][0];
    route["split"]["targets"][0]["weight"] = json!(0);
    route["split"]["targets"][1]["weight"] = json!(100);
    route["rate_limit"]["quotas"][0]["limit"] = json!(1);
    route["transform"]["sets"][0]["response"]["headers"]["add"][0]["value"] = json!("v2");
    let mut bad = doc["routes"][0].clone();
    bad["name"] = json!("broken");
    bad["split"]["targets"][0]["upstream"] = json!("nowhere");
    doc["routes"].as_array_mut().unwrap().push(bad);

    let (status, problem) = h
        .admin(Method::PUT, "/config", "admin-one", Some(doc))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert!(problem.to_string().contains("nowhere"), "{problem}");

    // Every handle as it was, and the traffic says so too.
    assert_eq!(h.gateway.split("api").unwrap().weights(), weights);
    assert_eq!(h.gateway.rate_limit("api").unwrap().quotas(), quotas);
    assert_eq!(h.get("/", "old-key").await, (StatusCode::OK, "blue".into()));
    assert_eq!(h.get("/", "new-key").await.0, StatusCode::UNAUTHORIZED);
    let (status, _) = h.admin(Method::GET, "/splits", "admin-one", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h.admin(Method::GET, "/splits", "admin-two", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, now) = h.admin(Method::GET, "/config", "admin-one", None).await;
    assert_eq!(now, shown, "the configuration in force changed");
    let res = h
        .call(
            Method::GET,
            format!("http://{}/", h.addr),
            &[("x-api-key", "old-key")],
            None,
        )
        .await;
    assert_eq!(res.0, StatusCode::OK);
    assert_eq!(
        h.gateway.config().routes[0].transform,
        GatewayConfig::from_toml(&config(blue, green))
            .unwrap()
            .routes[0]
            .transform
    );
}

/// An admin key taken out by `PUT /config` stops working on the very next
/// request; the new one works at once.
#[tokio::test]
async fn an_admin_key_rotated_out_stops_working_on_the_next_request() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let h = start(&config(blue, green)).await;
    let (_, mut doc) = h.admin(Method::GET, "/config", "admin-one", None).await;
    doc["admin"]["keys"] = json!([{ "key": "admin-two", "id": "ops" }]);
    let (status, body) = h
        .admin(Method::PUT, "/config", "admin-one", Some(doc.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, _) = h.admin(Method::GET, "/splits", "admin-one", None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the old admin key still works"
    );
    let (status, _) = h.admin(Method::GET, "/splits", "admin-two", None).await;
    assert_eq!(status, StatusCode::OK);

    // And a configuration that would lock the admin API out is refused.
    doc["admin"]["keys"] = json!([]);
    let (status, body) = h
        .admin(Method::PUT, "/config", "admin-two", Some(doc))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("admin.keys"), "{body}");
    let (status, _) = h.admin(Method::GET, "/splits", "admin-two", None).await;
    assert_eq!(status, StatusCode::OK);
}

/// `GET /config` shows no key, password or credential header; sent back
/// as shown, it reloads with every secret still in force.
#[tokio::test]
async fn get_config_gives_no_secret_away_and_round_trips() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let h = start(&config(blue, green)).await;
    let (status, shown) = h.admin(Method::GET, "/config", "admin-one", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = shown.to_string();
    for secret in ["old-key", "admin-one", "upstream-secret"] {
        assert!(!text.contains(secret), "`{secret}` in GET /config: {text}");
    }
    assert!(
        text.contains(&switchyard::auth::digest("old-key")),
        "{text}"
    );

    let (status, body) = h
        .admin(Method::PUT, "/config", "admin-one", Some(shown))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The caller's key, the admin key and the credential the transform
    // sends upstream all still work.
    assert_eq!(
        h.get("/auth", "old-key").await,
        (StatusCode::OK, "Bearer upstream-secret".into())
    );
    let (status, _) = h.admin(Method::GET, "/splits", "admin-one", None).await;
    assert_eq!(status, StatusCode::OK);
}

/// A model route keeps the upstreams it was built with: a reload that
/// moves an upstream to another server must move the model route too.
#[tokio::test]
async fn a_model_route_follows_its_upstream_to_a_new_address() {
    let chat = |name: &'static str| {
        Router::new().fallback(move |body: Bytes| async move {
            let req: Value = serde_json::from_slice(&body).unwrap_or_default();
            axum::Json(json!({
                "id": "x", "object": "chat.completion", "model": req["model"],
                "choices": [{ "index": 0, "finish_reason": "stop",
                    "message": { "role": "assistant", "content": name } }],
                "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 }
            }))
        })
    };
    let old = serve(chat("old server")).await;
    let new = serve(chat("new server")).await;
    let text = |addr: SocketAddr| {
        format!(
            r#"
[upstreams.llm]
url = "http://{addr}"
[admin]
keys = [{{ key = "admin-one", id = "ops" }}]
[[routes]]
name = "ai"
path_prefix = "/v1"
[routes.model.catalog]
models = [{{ name = "m1", upstream = "llm" }}]
aliases = [{{ name = "chat", versions = {{ m1 = 100 }} }}]
"#
        )
    };
    let h = start(&text(old)).await;
    let ask = || async {
        let (status, body) = h
            .call(
                Method::POST,
                format!("http://{}/v1/chat/completions", h.addr),
                &[],
                Some(json!({ "model": "chat", "messages": [] }).to_string()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        let doc: Value = serde_json::from_slice(&body).unwrap();
        doc["choices"][0]["message"]["content"].clone()
    };
    assert_eq!(ask().await, "old server");
    h.gateway
        .reload(GatewayConfig::from_toml(&text(new)).unwrap())
        .unwrap();
    assert_eq!(ask().await, "new server");
}

/// Without a key, a caller gets 401s for ever; with `pre_auth_limit`,
/// the flood from one address is cut to its quota with 429s, before any
/// key is checked, on every route.
#[tokio::test]
async fn a_401_flood_meets_the_limit_before_authentication() {
    let (blue, green) = (upstream("blue").await, upstream("green").await);
    let text = format!(
        "pre_auth_limit = {{ key = \"peer_ip\", quotas = [{{ limit = 1, period = \"1h\", burst = 5 }}] }}\n{}",
        config(blue, green)
    );
    let h = start(&text).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        statuses.push(h.get("/", &format!("guess-{i}")).await.0);
    }
    let unauthorized = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((unauthorized, limited), (5, 7), "{statuses:?}");
    // The right key from the same address is limited too: the limit is
    // the address's, not the key's.
    assert_eq!(h.get("/", "old-key").await.0, StatusCode::TOO_MANY_REQUESTS);
    let metrics = h.gateway.metrics();
    assert!(
        metrics.contains("switchyard_pre_auth_rejected_total 8"),
        "{metrics}"
    );

    // An identity key before authentication is refused at build.
    let bad = format!(
        "pre_auth_limit = {{ key = \"identity\", quotas = [{{ limit = 1, period = \"1s\" }}] }}\n{}",
        config(blue, green)
    );
    let err = Gateway::from_config(GatewayConfig::from_toml(&bad).unwrap()).unwrap_err();
    assert_eq!(err.problems[0].at, "pre_auth_limit.key", "{err}");
}
