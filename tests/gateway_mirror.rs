#![cfg(feature = "admin")]
//! A route's `mirror` through a gateway over real loopback HTTP: copies
//! reach the shadow upstream (marked), answers are compared (status class
//! and JSON body), differing pairs are kept and shown by the admin API,
//! the share copied changes live and survives a reload that leaves it
//! alone; `/metrics` has the mirror's families; bad settings are refused
//! with located problems.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use switchyard::gateway::{Gateway, GatewayConfig, admin};

use crate::support::net::{FullClient, exchange, serve};

const HANG_GUARD: Duration = Duration::from_secs(10);

/// Blue answers `{"v": 1}`; green the same, but `{"v": 2}` on `/diff`
/// and a 500 on `/fail`, counting the copies it gets (all marked).
async fn versions(copies: Arc<AtomicUsize>) -> (SocketAddr, SocketAddr) {
    let json = |v: Value| ([("content-type", "application/json")], v.to_string());
    let blue = serve(Router::new().fallback(move || async move { json(json!({ "v": 1 })) })).await;
    let green = serve(Router::new().fallback(move |req: axum::extract::Request| {
        let copies = copies.clone();
        async move {
            assert_eq!(req.headers()["x-switchyard-mirror"], "1");
            copies.fetch_add(1, SeqCst);
            match req.uri().path() {
                "/diff" => (StatusCode::OK, json(json!({ "v": 2 }))),
                "/fail" => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json(json!({ "error": "boom" })),
                ),
                _ => (StatusCode::OK, json(json!({ "v": 1 }))),
            }
        }
    }))
    .await;
    (blue, green)
}

fn config(blue: SocketAddr, green: SocketAddr, mirror: &str) -> String {
    format!(
        r#"
[upstreams.blue]
url = "http://{blue}"
[upstreams.green]
url = "http://{green}"
[admin]
keys = [{{ key = "root-key", id = "root" }}]
[[routes]]
name = "api"
split.targets = [{{ name = "blue", upstream = "blue", weight = 100 }}]
mirror = {mirror}
"#
    )
}

async fn call(
    client: &FullClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", "Bearer root-key");
    let body = if body.is_null() {
        Bytes::new()
    } else {
        req = req.header("content-type", "application/json");
        Bytes::from(body.to_string())
    };
    let res = exchange(client, req.body(Full::new(body)).unwrap()).await;
    (
        res.status(),
        serde_json::from_slice(res.body()).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_are_compared_kept_and_steered_live() {
    let copies = Arc::new(AtomicUsize::new(0));
    let (blue, green) = versions(copies.clone()).await;
    let text = config(
        blue,
        green,
        r#"{ upstream = "green", methods = ["GET", "POST"], compare_json = true, samples = 4 }"#,
    );
    let gateway = Gateway::from_config(GatewayConfig::from_toml(&text).unwrap()).unwrap();
    let addr = serve(Router::new().fallback_service(gateway.clone())).await;
    let admin = serve(admin::router(&gateway).unwrap()).await;
    let client: FullClient = Client::builder(TokioExecutor::new()).build_http();

    for (method, path, n) in [
        (Method::GET, "/same", 5),
        (Method::GET, "/diff", 3),
        (Method::GET, "/fail", 2),
        (Method::POST, "/same", 1),
        (Method::DELETE, "/same", 1),
    ] {
        for _ in 0..n {
            let (status, body) = call(&client, addr, method.clone(), path, json!({ "x": 1 })).await;
            // The caller always gets the primary's answer.
            assert_eq!((status, body), (StatusCode::OK, json!({ "v": 1 })));
        }
    }
    // Copies are answered on their own time.
    let stats = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let (_, m) = call(&client, admin, Method::GET, "/mirrors/api", Value::Null).await;
            if m["stats"]["compared"] == 11 {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the copies were never all compared");
    assert_eq!(copies.load(SeqCst), 11);
    let s = &stats["stats"];
    assert_eq!(s["mirrored"], 11);
    assert_eq!(s["skipped_method"], 1, "DELETE is not copied");
    assert_eq!(s["status_mismatches"], 2);
    assert_eq!(s["body_mismatches"], 5);
    assert_eq!(stats["percent"], 100.0);
    // The latest four differing pairs: two of the three /diff and both
    // /fail. The copies finish in any order (each is a task of its own),
    // so only what they are is checked, not their order.
    let samples = stats["samples"].as_array().unwrap();
    assert_eq!(samples.len(), 4, "{stats}");
    let of = |path: &str| {
        samples
            .iter()
            .filter(|s| s["path"] == path)
            .collect::<Vec<_>>()
    };
    let (diffs, fails) = (of("/diff"), of("/fail"));
    assert_eq!((diffs.len(), fails.len()), (2, 2), "{stats}");
    for diff in diffs {
        assert_eq!(diff["differs"], "body");
        assert_eq!(diff["primary_body"], "{\"v\":1}");
        assert_eq!(diff["shadow_body"], "{\"v\":2}");
    }
    for fail in fails {
        assert_eq!(fail["differs"], "status");
        assert_eq!(
            (
                fail["primary_status"].as_u64(),
                fail["shadow_status"].as_u64()
            ),
            (Some(200), Some(500))
        );
    }

    // The share copied, live: none.
    let (status, m) = call(
        &client,
        admin,
        Method::PUT,
        "/mirrors/api/percent",
        json!({ "percent": 0 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(m["percent"], 0.0);
    let (status, _) = call(
        &client,
        admin,
        Method::PUT,
        "/mirrors/api/percent",
        json!({ "percent": 101 }),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = call(
        &client,
        admin,
        Method::PUT,
        "/mirrors/nope/percent",
        json!({ "percent": 1 }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for _ in 0..5 {
        call(&client, addr, Method::GET, "/same", Value::Null).await;
    }
    // A reload that leaves `percent` alone keeps the live share and the
    // counters; `GET /config` shows the live share.
    gateway
        .reload(GatewayConfig::from_toml(&text).unwrap())
        .unwrap();
    assert_eq!(
        gateway.config().routes[0].mirror.as_ref().unwrap().percent,
        0.0
    );
    let (_, m) = call(&client, admin, Method::GET, "/mirrors/api", Value::Null).await;
    assert_eq!(m["stats"]["mirrored"], 11);
    assert_eq!(m["stats"]["not_sampled"], 5);
    assert_eq!(m["percent"], 0.0);
    // One that changes it sets it.
    let half = text.replace(
        "upstream = \"green\",",
        "upstream = \"green\", percent = 50.0,",
    );
    gateway
        .reload(GatewayConfig::from_toml(&half).unwrap())
        .unwrap();
    let (_, m) = call(&client, admin, Method::GET, "/mirrors", Value::Null).await;
    assert_eq!(m["mirrors"][0]["percent"], 50.0);
    assert_eq!(m["mirrors"][0]["stats"]["mirrored"], 11);

    // `/metrics`, read by the strict parser.
    let text = gateway.metrics();
    let samples =
        crate::gateway_e2e::parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let find = |name: &str, label: (&str, &str)| {
        samples
            .iter()
            .find(|s| s.name == name && s.labels.get(label.0).map(String::as_str) == Some(label.1))
            .unwrap_or_else(|| panic!("no {name}\n{text}"))
            .value
    };
    assert_eq!(
        find("switchyard_mirror_requests_total", ("outcome", "mirrored")),
        11.0
    );
    assert_eq!(
        find("switchyard_mirror_status_total", ("result", "mismatch")),
        2.0
    );
    assert_eq!(
        find("switchyard_mirror_body_total", ("result", "mismatch")),
        5.0
    );
}

#[test]
fn mirror_settings_are_read_and_checked() {
    let (blue, green): (SocketAddr, SocketAddr) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    let ok = GatewayConfig::from_toml(&config(blue, green, r#"{ upstream = "green" }"#)).unwrap();
    let m = ok.routes[0].mirror.as_ref().unwrap();
    assert_eq!(
        (m.percent, m.compare_json, m.methods.as_ref()),
        (100.0, false, None)
    );
    Gateway::from_config(ok).unwrap();
    let problems = |mirror: &str| -> Vec<(String, String)> {
        Gateway::from_config(GatewayConfig::from_toml(&config(blue, green, mirror)).unwrap())
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| (p.at, p.message))
            .collect()
    };
    let p = problems(r#"{ upstream = "red" }"#);
    assert_eq!(p[0].0, "routes[0].mirror.upstream", "{p:?}");
    let p = problems(r#"{ upstream = "green", percent = 150.0 }"#);
    assert_eq!(p[0].0, "routes[0].mirror.percent", "{p:?}");
    let p = problems(r#"{ upstream = "green", methods = ["GET", "G E T"] }"#);
    assert_eq!(p[0].0, "routes[0].mirror.methods[1]", "{p:?}");
    let p = problems(r#"{ upstream = "green", max_concurrent = 0 }"#);
    assert_eq!(p[0].0, "routes[0].mirror.max_concurrent", "{p:?}");
    let err = GatewayConfig::from_toml(&config(
        blue,
        green,
        r#"{ upstream = "green", precent = 5.0 }"#,
    ))
    .unwrap_err();
    assert!(err.to_string().contains("precent"), "{err}");
}
