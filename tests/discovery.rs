#![cfg(all(feature = "proxy", feature = "config", feature = "admin"))]
//! Service discovery over real loopback HTTP: a gateway upstream following
//! a file (servers joining, a bad file keeping the last set), endpoints
//! added and drained through the admin API, a split whose green upstream
//! grows and shrinks under load without one failed request, and a split's
//! targets compared.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use switchyard::gateway::{Gateway, GatewayConfig, admin};
use switchyard::proxy::{EndpointSpec, Upstream};
use tower::discover::Change;

use crate::support::net::{self, FullClient, exchange};

/// A server answering every request with `name` (after `delay` for
/// `/slow`).
async fn named(name: &'static str) -> SocketAddr {
    net::serve(
        axum::Router::new()
            .route(
                "/slow",
                axum::routing::get(move || async move {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    name
                }),
            )
            .fallback(move || async move { name }),
    )
    .await
}

fn client() -> FullClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn call(
    client: &FullClient,
    method: Method,
    url: String,
    body: Option<Value>,
) -> (StatusCode, String) {
    let mut req = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", "Bearer root-key");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let res = exchange(client, req.body(Full::new(body)).unwrap()).await;
    (
        res.status(),
        String::from_utf8_lossy(res.body()).into_owned(),
    )
}

async fn get_body(client: &FullClient, url: String) -> String {
    let (status, body) = call(client, Method::GET, url, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Waits (up to 10 s) until `ok` holds, checking every 20 ms.
async fn eventually(what: &str, mut ok: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ok().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gateway on loopback and its admin API.
async fn serve(config: &str) -> (Gateway, SocketAddr, SocketAddr) {
    let gateway = Gateway::from_config(GatewayConfig::from_toml(config).unwrap()).unwrap();
    let addr = net::serve(axum::Router::new().fallback_service(gateway.clone())).await;
    let admin = net::serve(admin::router(&gateway).unwrap()).await;
    (gateway, addr, admin)
}

const ADMIN: &str = r#"
[admin]
keys = [{ key = "root-key", id = "root" }]
"#;

#[tokio::test]
async fn a_file_source_is_followed_and_a_bad_file_keeps_the_last_set() {
    let (a, b) = (named("a").await, named("b").await);
    let dir = crate::support::temp::TempDir::new("discovery");
    let file = dir.join("green.json");
    std::fs::write(&file, json!({ "endpoints": [a.to_string()] }).to_string()).unwrap();
    let config = format!(
        r#"{ADMIN}
[upstreams.green]
url = "http://green.invalid:1"
discovery = {{ file = "{}", refresh_min_ms = 20, refresh_max_ms = 50 }}
[[routes]]
name = "api"
split.targets = [{{ name = "green", upstream = "green", weight = 100 }}]
"#,
        file.display()
    );
    let (gateway, addr, admin) = serve(&config).await;
    let client = client();
    let green = gateway.upstream("green").unwrap();
    let keys = |u: &Upstream| {
        let mut k: Vec<String> = u
            .endpoints()
            .into_iter()
            .filter(|e| !e.draining)
            .map(|e| e.key)
            .collect();
        k.sort();
        k
    };
    eventually("the file's server", async || {
        keys(&green) == [a.to_string()]
    })
    .await;
    assert_eq!(get_body(&client, format!("http://{addr}/")).await, "a");

    // A second server listed: requests reach both.
    std::fs::write(
        &file,
        json!({ "endpoints": [a.to_string(), { "address": b.to_string(), "weight": 2 }] })
            .to_string(),
    )
    .unwrap();
    eventually("both servers", async || keys(&green).len() == 2).await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(get_body(&client, format!("http://{addr}/")).await);
    }
    assert_eq!(seen.iter().filter(|s| *s == "b").count(), 4, "{seen:?}");

    // A broken file: the two stay, and the admin API and metrics say why.
    std::fs::write(&file, "{ not json").unwrap();
    let upstreams = format!("http://{admin}/upstreams/green");
    eventually("the error reported", async || {
        let v: Value = serde_json::from_str(&get_body(&client, upstreams.clone()).await).unwrap();
        v["discovery"]["stale"] == json!(true)
    })
    .await;
    let v: Value = serde_json::from_str(&get_body(&client, upstreams.clone()).await).unwrap();
    assert!(
        v["discovery"]["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid JSON"),
        "{v}"
    );
    assert_eq!(
        v["discovery"]["source"],
        json!(format!("file:{}", file.display()))
    );
    let endpoints = v["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 2, "{v}");
    assert!(
        endpoints
            .iter()
            .all(|e| e["source"] == v["discovery"]["source"])
    );
    assert_eq!(keys(&green).len(), 2);
    for _ in 0..3 {
        get_body(&client, format!("http://{addr}/")).await;
    }
    let metrics = get_body(&client, format!("http://{admin}/metrics")).await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("switchyard_discovery_stale{"))
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        line.contains(r#"upstream="green""#) && line.ends_with(" 1"),
        "{line}"
    );
    assert!(
        metrics.contains("switchyard_discovery_endpoints{"),
        "{metrics}"
    );

    // An empty list is refused the same way; a good file again is taken.
    std::fs::write(&file, json!({ "endpoints": [] }).to_string()).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(keys(&green).len(), 2);
    std::fs::write(&file, json!({ "endpoints": [b.to_string()] }).to_string()).unwrap();
    eventually("only b", async || keys(&green) == [b.to_string()]).await;
    assert_eq!(get_body(&client, format!("http://{addr}/")).await, "b");
    // By hand: refused, the source decides.
    let (status, body) = call(
        &client,
        Method::POST,
        format!("http://{admin}/upstreams/green/endpoints"),
        Some(json!({ "address": a.to_string() })),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn endpoints_are_added_and_drained_through_the_admin_api() {
    let (a, b) = (named("a").await, named("b").await);
    let config = format!(
        r#"{ADMIN}
[upstreams.blue]
url = "http://{a}"
[[routes]]
name = "api"
split.targets = [{{ name = "blue", upstream = "blue", weight = 100 }}]
"#
    );
    let (gateway, addr, admin) = serve(&config).await;
    let client = client();
    let endpoints = format!("http://{admin}/upstreams/blue/endpoints");

    // Mistakes first.
    for (body, want) in [
        (json!({ "addr": "x" }), StatusCode::BAD_REQUEST),
        (json!({ "address": "bad host:1" }), StatusCode::BAD_REQUEST),
        (
            json!({ "address": b.to_string(), "weight": 0 }),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, text) = call(&client, Method::POST, endpoints.clone(), Some(body)).await;
        assert_eq!(status, want, "{text}");
        assert!(text.contains("\"status\""), "{text}");
    }
    let (status, _) = call(
        &client,
        Method::POST,
        format!("http://{admin}/upstreams/nope/endpoints"),
        Some(json!({ "address": b.to_string() })),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, body) = call(
        &client,
        Method::POST,
        endpoints.clone(),
        Some(json!({ "address": b.to_string(), "key": "b" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let sources: Vec<&str> = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["config", "admin"]);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(get_body(&client, format!("http://{addr}/")).await);
    }
    seen.sort();
    assert_eq!(seen, ["a", "a", "b", "b"]);

    // `b` taken out while a slow request is on it: 202, draining; the
    // request finishes; new ones all go to `a`.
    let slow = {
        let client = client.clone();
        tokio::spawn(async move {
            // Round-robin: the next turn is `a`'s, then `b`'s.
            let first = get_body(&client, format!("http://{addr}/slow")).await;
            (
                first,
                get_body(&client, format!("http://{addr}/slow")).await,
            )
        })
    };
    let blue = gateway.upstream("blue").unwrap();
    eventually("b busy", async || {
        blue.endpoints()
            .iter()
            .any(|e| e.key == "b" && e.in_flight == 1)
    })
    .await;
    let (status, body) = call(&client, Method::DELETE, format!("{endpoints}/b"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["draining"].clone(), v["in_flight"].clone()),
        (json!(true), json!(1))
    );
    let listed: Value =
        serde_json::from_str(&get_body(&client, format!("http://{admin}/upstreams/blue")).await)
            .unwrap();
    let b_row = listed["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == "b")
        .cloned()
        .unwrap();
    assert_eq!(b_row["draining"], json!(true));
    for _ in 0..3 {
        assert_eq!(get_body(&client, format!("http://{addr}/")).await, "a");
    }
    assert_eq!(slow.await.unwrap(), ("a".to_owned(), "b".to_owned()));
    eventually("b gone", async || blue.endpoints().len() == 1).await;
    let (status, _) = call(&client, Method::DELETE, format!("{endpoints}/b"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A configured endpoint's key is its URL, percent-encoded in the path.
    let (status, body) = call(
        &client,
        Method::DELETE,
        format!(
            "{endpoints}/http%3A%2F%2F{}",
            a.to_string().replace(':', "%3A")
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // None left: 503 with a problem, until one is added.
    let (status, body) = call(&client, Method::GET, format!("http://{addr}/"), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("no endpoints"), "{body}");
}

#[tokio::test]
async fn a_green_upstream_grows_and_shrinks_under_load_without_a_failed_request() {
    let blue = named("blue").await;
    let greens = [
        named("g0").await,
        named("g1").await,
        named("g2").await,
        named("g3").await,
    ];
    let config = format!(
        r#"{ADMIN}
[upstreams.blue]
url = "http://{blue}"
[upstreams.green]
url = "http://{}"
[[routes]]
name = "api"
split.targets = [{{ name = "blue", upstream = "blue", weight = 50 }}, {{ name = "green", upstream = "green", weight = 50 }}]
"#,
        greens[0]
    );
    let (gateway, addr, admin) = serve(&config).await;
    let green = gateway.upstream("green").unwrap();
    // Green's changes come as a `tower::discover` stream.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<
        Result<Change<String, EndpointSpec>, std::convert::Infallible>,
    >();
    let following = green.follow(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));

    // Four clients, each sending requests one after another, until told.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let answers = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        u64,
    >::new()));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, failed, answers) = (stop.clone(), failed.clone(), answers.clone());
        let client = client();
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = Request::get(format!("http://{addr}/"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let res = exchange(&client, req).await;
                if res.status() == StatusCode::OK {
                    let who = String::from_utf8_lossy(res.body()).into_owned();
                    *answers.lock().unwrap().entry(who).or_default() += 1;
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let served = |name: &str| answers.lock().unwrap().get(name).copied().unwrap_or(0);
    eventually("load on g0", async || served("g0") > 20).await;

    // Scale up: g1, g2, g3 join one by one.
    for (i, g) in greens.iter().enumerate().skip(1) {
        tx.send(Ok(Change::Insert(
            format!("g{i}"),
            EndpointSpec::new(g.to_string()),
        )))
        .unwrap();
        let name = format!("g{i}");
        eventually("the new server serving", async || served(&name) > 20).await;
    }
    // Scale down: the first and the third leave (they drain).
    tx.send(Ok(Change::Remove(format!("http://{}", greens[0]))))
        .unwrap();
    tx.send(Ok(Change::Remove("g2".to_owned()))).unwrap();
    // Two left, those leaving drained.
    eventually("two left", async || green.endpoints().len() == 2).await;
    let g1 = served("g1");
    eventually("the rest serving", async || served("g1") > g1 + 20).await;
    let (g0, g2) = (served("g0"), served("g2"));
    let g1 = served("g1");
    eventually("the rest still serving", async || served("g1") > g1 + 20).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{:?}",
        answers.lock().unwrap()
    );
    // Nothing reached those that left once their last request had ended.
    assert_eq!((served("g0"), served("g2")), (g0, g2));
    assert!(served("blue") > 50);
    drop(tx);
    following.await.unwrap();

    // Compared: green has two healthy endpoints for weight 50 where blue
    // has one: no warning now; blue's one endpoint per 50 says green
    // needs 2 to take it all.
    let client = client();
    let v: Value = serde_json::from_str(
        &get_body(&client, format!("http://{admin}/splits/api/compare")).await,
    )
    .unwrap();
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets[1]["target"], "green");
    assert_eq!(targets[1]["endpoints"]["healthy"], 2);
    assert!(targets[1]["live"]["requests"].as_u64().unwrap() > 0);
    assert_eq!(targets[1]["live"]["error_rate"], json!(0.0));
    assert!(targets[1]["live"]["p99_ms"].is_number(), "{v}");
    assert_eq!(
        targets[1]["settings"]["url"],
        json!(format!("http://{}", greens[0]))
    );
    assert_eq!(v["warnings"], json!([]), "{v}");
    // The first compare has no window; the next one counts what came
    // between the two.
    assert_eq!(targets[1]["live"]["window"], Value::Null, "{v}");
    for _ in 0..10 {
        get_body(&client, format!("http://{addr}/")).await;
    }
    let v: Value = serde_json::from_str(
        &get_body(&client, format!("http://{admin}/splits/api/compare")).await,
    )
    .unwrap();
    let window = |i: usize| v["targets"][i]["live"]["window"].clone();
    let between = window(0)["requests"].as_u64().unwrap() + window(1)["requests"].as_u64().unwrap();
    assert_eq!(between, 10, "{v}");
    assert!(
        window(0)["rate_per_s"].as_f64().unwrap() + window(1)["rate_per_s"].as_f64().unwrap() > 0.0
    );
    assert_eq!(window(1)["error_rate"], json!(0.0), "{v}");
}

#[tokio::test]
async fn compare_warns_when_green_has_too_few_servers() {
    let (b1, b2, b3, g) = (
        named("b1").await,
        named("b2").await,
        named("b3").await,
        named("g").await,
    );
    let config = format!(
        r#"{ADMIN}
[upstreams.blue]
url = "http://{b1}"
endpoints = ["http://{b2}", "http://{b3}"]
[upstreams.green]
url = "http://{g}"
[[routes]]
name = "api"
split.targets = [{{ name = "blue", upstream = "blue", weight = 60 }}, {{ name = "green", upstream = "green", weight = 40 }}]
"#
    );
    let (_gateway, _addr, admin) = serve(&config).await;
    let client = client();
    let url = format!("http://{admin}/splits/api/compare");
    let v: Value = serde_json::from_str(&get_body(&client, url.clone()).await).unwrap();
    // Blue carries 20 per endpoint: green's 40 needs 2, all 100 needs 5.
    assert_eq!(v["targets"][1]["capacity"]["needed_now"], 2, "{v}");
    assert_eq!(
        v["targets"][1]["capacity"]["needed_for_all_traffic"], 5,
        "{v}"
    );
    let warnings = v["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{v}");
    assert!(warnings[0].as_str().unwrap().contains("needs 2"), "{v}");
    assert_eq!(v["targets"][0]["endpoints"]["total"], 3);
    let (status, _) = call(
        &client,
        Method::GET,
        format!("http://{admin}/splits/nope/compare"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Answers every chat completion with 12 prompt and 30 completion tokens.
async fn llm() -> SocketAddr {
    crate::support::providers::fixed_chat_server().await
}

#[tokio::test]
async fn compare_puts_a_model_aliass_versions_side_by_side_with_tokens_and_cost() {
    let (a, b, c) = (llm().await, llm().await, llm().await);
    let config = format!(
        r#"{ADMIN}
[upstreams.old]
url = "http://{a}"
endpoints = ["http://{b}"]
[upstreams.new]
url = "http://{c}"
[[routes]]
name = "ai"
path_prefix = "/v1"
[routes.model.catalog]
models = [{{ name = "small-1", upstream = "old" }}, {{ name = "small-2", upstream = "new" }}]
aliases = [{{ name = "chat", versions = {{ "small-1" = 50, "small-2" = 50 }} }}]
[routes.model.spend.prices.small-2]
input_per_million = 1000000
output_per_million = 2000000
"#
    );
    let (_gateway, addr, admin) = serve(&config).await;
    let client = client();
    for _ in 0..6 {
        let req = Request::post(format!("http://{addr}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
                    .to_string(),
            )))
            .unwrap();
        let res = exchange(&client, req).await;
        assert_eq!(res.status(), StatusCode::OK);
    }
    let v: Value =
        serde_json::from_str(&get_body(&client, format!("http://{admin}/splits/ai/compare")).await)
            .unwrap();
    let versions = v["aliases"][0]["versions"].as_array().unwrap();
    assert_eq!(v["aliases"][0]["alias"], "chat", "{v}");
    assert_eq!(versions.len(), 2, "{v}");
    let (old, new) = (&versions[0], &versions[1]);
    assert_eq!(
        (old["upstream"].clone(), new["upstream"].clone()),
        (json!("old"), json!("new"))
    );
    assert_eq!(old["endpoints"]["healthy"], 2);
    let requests =
        old["live"]["requests"].as_u64().unwrap() + new["live"]["requests"].as_u64().unwrap();
    assert_eq!(requests, 6, "{v}");
    let new_requests = new["live"]["requests"].as_u64().unwrap();
    assert_eq!(
        new["live"]["completion_tokens"],
        json!(30 * new_requests),
        "{v}"
    );
    // 12 in at 1 per token-million-micro and 30 out at 2: 72 micro-units each.
    assert_eq!(new["live"]["cost_micros"], json!(72 * new_requests), "{v}");
    // Old carries 25 per endpoint: new's 50 needs 2 and has 1.
    assert_eq!(new["capacity"]["needed_now"], 2, "{v}");
    let warnings = v["warnings"].as_array().unwrap();
    assert!(
        warnings[0]
            .as_str()
            .unwrap()
            .starts_with("chat: `small-2` has 1"),
        "{v}"
    );
}

#[tokio::test]
async fn a_server_that_joins_is_health_checked_from_the_next_round() {
    use switchyard::proxy::HealthCheck;

    let good = named("good").await;
    // Answers requests, fails its health checks.
    let sick = net::serve(
        axum::Router::new()
            .route(
                "/healthz",
                axum::routing::get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
            )
            .fallback(|| async { "sick" }),
    )
    .await;
    let upstream = Upstream::builder(&format!("http://{good}"))
        .health_check(
            HealthCheck::get("/healthz")
                .interval(Duration::from_millis(30))
                .unhealthy_after(1),
        )
        .build()
        .unwrap();
    upstream
        .insert_endpoint("sick", EndpointSpec::new(sick.to_string()))
        .unwrap();
    eventually("the new server checked and out", async || {
        upstream
            .endpoints()
            .iter()
            .any(|e| e.key == "sick" && !e.healthy && !e.in_service)
    })
    .await;
    use tower::ServiceExt;
    for _ in 0..4 {
        let req = Request::get("http://client.example/")
            .body(Full::<Bytes>::default())
            .unwrap();
        let res = upstream.clone().oneshot(req).await.unwrap();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "good");
    }
}
