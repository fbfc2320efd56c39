#![cfg(feature = "admin")]
//! The admin API's OpenAPI 3.1 document, checked against the admin API
//! itself: valid (by `openapi-spec-validator`), served without a key,
//! every documented operation answered by a handler over real HTTP (never
//! the router's "no such admin route" nor a 405), and every route the
//! router's source declares documented.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use switchyard::gateway::admin::{self, OPENAPI_DOCUMENT};
use switchyard::gateway::{Gateway, GatewayConfig};

use crate::support::net::{FullClient, exchange, serve};

/// The routes the admin router's source declares: `.route("/path",
/// get(…).post(…))`, as (method, path).
fn declared() -> BTreeSet<(String, String)> {
    let sources = [
        include_str!("../src/gateway/admin.rs"),
        include_str!("../src/gateway/admin_platform.rs"),
        include_str!("../src/gateway/admin_rollouts.rs"),
        include_str!("../src/gateway/admin_upstreams.rs"),
        include_str!("../src/gateway/ui.rs"),
    ];
    let mut out = BTreeSet::new();
    for source in sources {
        let mut rest = source;
        while let Some(at) = rest.find(".route(") {
            rest = &rest[at + ".route(".len()..];
            // The call's text, to its closing parenthesis.
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| i)
                .unwrap();
            let call = &rest[..end];
            let path = call.split('"').nth(1).unwrap().to_owned();
            for method in ["get", "post", "put", "delete", "patch"] {
                let called = call
                    .match_indices(&format!("{method}("))
                    .any(|(i, _)| i == 0 || !call.as_bytes()[i - 1].is_ascii_alphanumeric());
                if called {
                    out.insert((method.to_owned(), path.clone()));
                }
            }
        }
    }
    out
}

fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "parameters")
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect()
}

const CONFIG: &str = r#"
[upstreams.blue]
url = "http://127.0.0.1:1"
[admin]
keys = [{ key = "root-key", id = "root" }]
[[routes]]
name = "api"
split.targets = [{ name = "blue", upstream = "blue", weight = 100 }]
"#;

#[tokio::test]
async fn the_document_is_valid_served_and_matches_the_routes() {
    let doc: Value = serde_json::from_str(OPENAPI_DOCUMENT).unwrap();
    crate::support::openapi::assert_valid_31(&doc);

    // Every route documented, every documented operation a route.
    let declared = declared();
    let documented = documented(&doc);
    assert!(declared.len() > 30, "{declared:?}");
    let missing: Vec<_> = declared.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes not in the document: {missing:?}"
    );
    let extra: Vec<_> = documented.difference(&declared).collect();
    assert!(extra.is_empty(), "documented, not routed: {extra:?}");

    let gateway = Gateway::from_config(GatewayConfig::from_toml(CONFIG).unwrap()).unwrap();
    let admin: SocketAddr = serve(admin::router(&gateway).unwrap()).await;
    let client: FullClient = Client::builder(TokioExecutor::new()).build_http();
    let send = async |method: Method, path: &str, key: Option<&str>| {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{admin}{path}"));
        if let Some(key) = key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        exchange(&client, req.body(Full::new(Bytes::new())).unwrap()).await
    };

    // Served without a key, as the document says.
    let res = send(Method::GET, "/openapi.json", None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(serde_json::from_slice::<Value>(res.body()).unwrap(), doc);

    // Each operation reaches a handler (with made-up names: the handler's
    // own 404 names what is missing; the router's says "no such admin
    // route"). Public ones need no key; the others refuse a request
    // without one.
    for (method, path) in &documented {
        let op = &doc["paths"][path][method];
        let public = op["security"].as_array().is_some_and(Vec::is_empty);
        let concrete = path
            .replace("{action}", "pause")
            .replace("{decision}", "approve")
            .replace("{digest}", "sha256:00")
            .replace(['{', '}'], "");
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        if !public {
            let res = send(method.clone(), &concrete, None).await;
            assert_eq!(
                res.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {concrete}"
            );
        }
        let res = send(method.clone(), &concrete, Some("root-key")).await;
        let body = String::from_utf8_lossy(res.body());
        assert_ne!(
            res.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {concrete}"
        );
        assert!(
            !body.contains("no such admin route"),
            "{method} {concrete}: {body}"
        );
        // Every answer the operation gives is one the document lists.
        let code = res.status().as_u16().to_string();
        assert!(
            op["responses"].get(&code).is_some(),
            "{method} {concrete} answered {code}, not in the document: {body}"
        );
    }
}
