#![cfg(feature = "admin")]
//! End-to-end tests of `switchyard::gateway` and its admin API over real
//! loopback HTTP: two upstream servers (axum, each counting what it
//! serves), a `Gateway` built from TOML served by axum with the peer
//! address, the admin router on its own port, and real HTTP clients.
//!
//! Timeouts here only guard against a hang; no assertion is about speed.
//! The few sleeps only let traffic run for a while under load.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use switchyard::gateway::admin::{self, AdminError};
use switchyard::gateway::{ConfigError, Gateway, GatewayConfig};
use switchyard::server::Server;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

/// Guards awaits that must complete, so a bug fails the test instead of
/// hanging it.
const HANG_GUARD: Duration = Duration::from_secs(10);
const PROBLEM_JSON: &str = "application/problem+json";
const CLIENT_KEY: &str = "client-key";
const ADMIN_KEY: &str = "admin-key";

/// The gateway under test, like `examples/gateway.toml`: blue/green behind
/// API keys with a request id, and a rate-limited route. `BLUE_URL` and
/// `GREEN_URL` are replaced by the upstream servers' addresses.
const CONFIG: &str = r#"
[upstreams.blue]
url = "BLUE_URL"
response_timeout_ms = 5000

[upstreams.green]
url = "GREEN_URL"
response_timeout_ms = 5000

[[api_keys]]
key = "client-key"
id = "client"
tenant = "acme"
scopes = ["api"]

[[api_keys]]
key = "no-scope-key"
id = "intruder"

[admin]
keys = [{ key = "admin-key", id = "ops" }]

[[routes]]
name = "api"
path_prefix = "/api"
auth = { scopes = ["api"] }

[[routes.transform.sets]]
name = "request id"
request.headers.add = [{ name = "x-request-id", value = "{uuid}" }]
request.headers.append = [{ name = "x-caller", value = "{identity.id}" }]
response.headers.add = [{ name = "x-request-id", value = "{header.x-request-id}" }]

[routes.split]
override_header = "x-switchyard-target"
echo_header = "x-served-by"
targets = [
  { name = "blue", upstream = "blue", weight = 100 },
  { name = "green", upstream = "green", weight = 0 },
]

[[routes]]
name = "limited"
path_prefix = "/limited"
methods = ["GET", "HEAD"]
rate_limit = { key = { header = "x-user" }, quotas = [{ limit = 1, period = "1h", burst = 3, name = "per-user" }] }
split.targets = [{ name = "blue", upstream = "blue", weight = 100 }]
"#;

// === upstreams ===

#[derive(Clone)]
struct BackendState {
    name: &'static str,
    hits: Arc<AtomicU64>,
    slow_entered: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
}

/// An upstream server: answers its name (or, on `/api/slow`, its name once
/// the test releases it) and counts every request it serves.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    slow_entered: mpsc::UnboundedReceiver<()>,
    release: Arc<Notify>,
}

impl Backend {
    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn backend(name: &'static str) -> Backend {
    let (tx, rx) = mpsc::unbounded_channel();
    let state = BackendState {
        name,
        hits: Arc::default(),
        slow_entered: tx,
        release: Arc::new(Notify::new()),
    };
    let app = Router::new()
        .route(
            "/api/slow",
            get(|State(s): State<BackendState>| async move {
                s.hits.fetch_add(1, Ordering::SeqCst);
                s.slow_entered.send(()).unwrap();
                s.release.notified().await;
                format!("{} slow", s.name)
            }),
        )
        .fallback(
            |State(s): State<BackendState>, req: axum::extract::Request| async move {
                s.hits.fetch_add(1, Ordering::SeqCst);
                let caller = req
                    .headers()
                    .get("x-caller")
                    .map(|v| v.to_str().unwrap().to_owned());
                let mut res = axum::response::IntoResponse::into_response(s.name);
                if let Some(caller) = caller {
                    res.headers_mut()
                        .insert("x-upstream-saw-caller", caller.parse().unwrap());
                }
                res
            },
        )
        .with_state(state.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Backend {
        addr,
        hits: state.hits,
        slow_entered: rx,
        release: state.release,
    }
}

// === the gateway ===

struct Harness {
    gateway: Gateway,
    /// The configuration it started from.
    config: GatewayConfig,
    addr: SocketAddr,
    admin: SocketAddr,
    blue: Backend,
    green: Backend,
    client: HttpClient,
}

fn config_for(blue: &Backend, green: &Backend) -> GatewayConfig {
    let text = CONFIG
        .replace("BLUE_URL", &format!("http://{}", blue.addr))
        .replace("GREEN_URL", &format!("http://{}", green.addr));
    GatewayConfig::from_toml(&text).unwrap()
}

async fn start() -> Harness {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let config = config_for(&blue, &green);
    let gateway = Gateway::from_config(config.clone()).unwrap();
    let admin_app = admin::router(&gateway).unwrap();

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback_service(gateway.clone());
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, admin_app).await.unwrap() });

    Harness {
        gateway,
        config,
        addr,
        admin,
        blue,
        green,
        client: client(),
    }
}

// === clients ===

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

type Answer = (StatusCode, HeaderMap, Bytes);

async fn try_call(
    client: &HttpClient,
    method: Method,
    uri: String,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Result<Answer, String> {
    let mut req = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if body.is_some() {
        req = req.header(CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let res = tokio::time::timeout(HANG_GUARD, client.request(req))
        .await
        .map_err(|_| "request hung".to_owned())?
        .map_err(|e| format!("request failed: {e}"))?;
    let (parts, body) = res.into_parts();
    let body = tokio::time::timeout(HANG_GUARD, body.collect())
        .await
        .map_err(|_| "body hung".to_owned())?
        .map_err(|e| format!("body failed: {e}"))?
        .to_bytes();
    Ok((parts.status, parts.headers, body))
}

async fn call(
    client: &HttpClient,
    method: Method,
    uri: String,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Answer {
    try_call(client, method, uri, headers, body).await.unwrap()
}

impl Harness {
    /// A request to the gateway.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Answer {
        call(
            &self.client,
            Method::GET,
            format!("http://{}{path}", self.addr),
            headers,
            None,
        )
        .await
    }

    /// `GET /api/...` with the client's key.
    async fn api(&self, path: &str) -> Answer {
        self.get(path, &[("x-api-key", CLIENT_KEY)]).await
    }

    /// An admin call with the admin key as a bearer token.
    async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let bearer = format!("Bearer {ADMIN_KEY}");
        self.admin_as(method, path, &[(AUTHORIZATION.as_str(), &bearer)], body)
            .await
    }

    async fn admin_as(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let (status, headers, body) = call(
            &self.client,
            method,
            format!("http://{}{path}", self.admin),
            headers,
            body.map(|b| b.to_string()),
        )
        .await;
        let doc = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        (status, headers, doc)
    }

    fn api_requests(&self) -> u64 {
        self.gateway
            .split("api")
            .unwrap()
            .stats()
            .iter()
            .map(|t| t.requests)
            .sum()
    }
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Asserts a problem+json answer of `want` and returns its document.
fn assert_problem(answer: &Answer, want: StatusCode) -> Value {
    let (status, headers, body) = answer;
    assert_eq!(*status, want, "{}", String::from_utf8_lossy(body));
    assert_eq!(headers[CONTENT_TYPE], PROBLEM_JSON);
    let doc = json(body);
    assert_eq!(doc["status"], want.as_u16());
    doc
}

/// Clients sending `GET /api/x` in a loop until stopped, each answer
/// checked; what they saw.
#[derive(Debug, Default)]
struct LoadReport {
    ok: u64,
    blue: u64,
    green: u64,
    /// Requests sent after `promoted` was set that blue answered.
    blue_after_promote: u64,
    failures: Vec<String>,
}

struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<LoadReport>>,
}

fn start_load(h: &Harness, clients: usize, promoted: Arc<AtomicBool>) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = (0..clients)
        .map(|i| {
            let client = h.client.clone();
            let uri = format!("http://{}/api/load/{i}", h.addr);
            let stop = stop.clone();
            let promoted = promoted.clone();
            tokio::spawn(async move {
                let mut report = LoadReport::default();
                while !stop.load(Ordering::SeqCst) {
                    let after_promote = promoted.load(Ordering::SeqCst);
                    match try_call(
                        &client,
                        Method::GET,
                        uri.clone(),
                        &[("x-api-key", CLIENT_KEY)],
                        None,
                    )
                    .await
                    {
                        Ok((StatusCode::OK, headers, body)) => {
                            report.ok += 1;
                            let by = headers.get("x-served-by").map(|v| v.as_bytes());
                            match (&body[..], by) {
                                (b"blue", Some(b"blue")) => {
                                    report.blue += 1;
                                    if after_promote {
                                        report.blue_after_promote += 1;
                                    }
                                }
                                (b"green", Some(b"green")) => report.green += 1,
                                _ => report
                                    .failures
                                    .push(format!("odd answer {body:?} from {by:?}")),
                            }
                        }
                        Ok((status, _, body)) => report
                            .failures
                            .push(format!("{status}: {}", String::from_utf8_lossy(&body))),
                        Err(e) => report.failures.push(e),
                    }
                }
                report
            })
        })
        .collect();
    Load { stop, tasks }
}

impl Load {
    async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = LoadReport::default();
        for task in self.tasks {
            let r = tokio::time::timeout(HANG_GUARD, task)
                .await
                .expect("a load client hung")
                .unwrap();
            total.ok += r.ok;
            total.blue += r.blue;
            total.green += r.green;
            total.blue_after_promote += r.blue_after_promote;
            total.failures.extend(r.failures);
        }
        total
    }
}

// === serving ===

#[tokio::test]
async fn gateway_from_toml_serves_both_upstreams() {
    let h = start().await;
    assert_eq!(h.gateway.routes(), ["api", "limited"]);
    assert_eq!(h.gateway.config(), h.config);

    for i in 0..5 {
        let (status, headers, body) = h.api(&format!("/api/items/{i}?q=1")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "blue");
        assert_eq!(headers["x-served-by"], "blue");
        // The transform ran: an id on the response, the caller upstream.
        assert!(!headers["x-request-id"].is_empty());
        assert_eq!(headers["x-upstream-saw-caller"], "client");
    }
    // A tester reaches green before any weight moves.
    let (status, headers, body) = h
        .get(
            "/api/x",
            &[("x-api-key", CLIENT_KEY), ("x-switchyard-target", "green")],
        )
        .await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"green"[..]));
    assert_eq!(headers["x-served-by"], "green");
    assert_eq!((h.blue.hits(), h.green.hits()), (5, 1));

    let stats = h.gateway.split("api").unwrap();
    assert_eq!(stats.target_stats("blue").unwrap().requests, 5);
    assert_eq!(stats.target_stats("green").unwrap().responses.success, 1);

    // The admin API shows the same configuration, its secrets redacted.
    let (status, _, doc) = h.admin(Method::GET, "/config", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        doc,
        serde_json::to_value(h.gateway.config().redacted()).unwrap()
    );
    let (status, _, doc) = h.admin(Method::GET, "/splits/api", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["weights"], json!({"blue": 100, "green": 0}));
    assert_eq!(doc["targets"][0]["requests"], 5);
}

#[tokio::test]
async fn unmatched_unauthenticated_and_rate_limited_requests_are_problems() {
    let h = start().await;

    // No route.
    for path in ["/nowhere", "/apix", "/"] {
        let answer = h.get(path, &[("x-api-key", CLIENT_KEY)]).await;
        let doc = assert_problem(&answer, StatusCode::NOT_FOUND);
        assert!(
            doc["detail"].as_str().unwrap().contains("no route"),
            "{doc}"
        );
    }
    // `limited` only takes GET and HEAD.
    let answer = call(
        &h.client,
        Method::POST,
        format!("http://{}/limited", h.addr),
        &[("x-user", "u")],
        Some("{}".into()),
    )
    .await;
    assert_problem(&answer, StatusCode::NOT_FOUND);

    // No key, a wrong key: 401 with a challenge; a key without the scope: 403.
    for headers in [
        vec![],
        vec![("x-api-key", "wrong")],
        vec![("authorization", "Bearer wrong")],
    ] {
        let answer = h.get("/api/x", &headers).await;
        assert_problem(&answer, StatusCode::UNAUTHORIZED);
        assert!(answer.1.contains_key(WWW_AUTHENTICATE), "{:?}", answer.1);
    }
    let answer = h.get("/api/x", &[("x-api-key", "no-scope-key")]).await;
    assert_problem(&answer, StatusCode::FORBIDDEN);
    let answer = h
        .get("/api/x", &[("authorization", "Bearer client-key")])
        .await;
    assert_eq!(answer.0, StatusCode::OK);
    // None of the refusals reached an upstream.
    assert_eq!((h.blue.hits(), h.green.hits()), (1, 0));

    // The burst of 3, then 429 with the RateLimit headers.
    for _ in 0..3 {
        let (status, headers, body) = h.get("/limited/x", &[("x-user", "alice")]).await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"blue"[..]));
        assert!(headers.contains_key("ratelimit"), "{headers:?}");
    }
    let answer = h.get("/limited/x", &[("x-user", "alice")]).await;
    let doc = assert_problem(&answer, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(doc["policy"], "per-user");
    let headers = &answer.1;
    let ratelimit = headers["ratelimit"].to_str().unwrap();
    assert!(ratelimit.starts_with("\"per-user\";r=0;t="), "{ratelimit}");
    let policy = headers["ratelimit-policy"].to_str().unwrap();
    assert!(policy.starts_with("\"per-user\";q="), "{policy}");
    assert!(policy.ends_with(";w=3600"), "{policy}");
    let retry: u64 = headers[RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    // Another user is not limited.
    let (status, _, _) = h.get("/limited/x", &[("x-user", "bob")]).await;
    assert_eq!(status, StatusCode::OK);
    let stats = h.gateway.rate_limit("limited").unwrap().stats();
    assert_eq!((stats.allowed, stats.rejected), (4, 1));

    // The same refusals to a gRPC client: trailers-only, a gRPC status,
    // the layer's headers kept (`switchyard::grpc`).
    let grpc = ("content-type", "application/grpc");
    for (path, headers, code) in [
        ("/nowhere", vec![grpc], "5"),
        ("/api/x", vec![grpc], "16"),
        ("/api/x", vec![grpc, ("x-api-key", "no-scope-key")], "7"),
        ("/limited/x", vec![grpc, ("x-user", "alice")], "8"),
    ] {
        let (status, headers, body) = h.get(path, &headers).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(headers["grpc-status"], code, "{path}");
        assert!(headers.contains_key("grpc-message"));
        assert!(body.is_empty());
        if code == "8" {
            assert!(headers.contains_key("ratelimit"));
            assert!(headers.contains_key(RETRY_AFTER));
        }
        if code == "16" {
            assert!(headers.contains_key(WWW_AUTHENTICATE));
        }
    }
}

// === the admin API ===

#[tokio::test]
async fn admin_api_needs_an_admin_key() {
    let h = start().await;

    let (status, _, body) = h.admin_as(Method::GET, "/healthz", &[], None).await;
    assert_eq!((status, body), (StatusCode::OK, json!("ok")));

    let bad: [&[(&str, &str)]; 5] = [
        &[],
        &[("authorization", "Bearer wrong")],
        &[("x-api-key", "wrong")],
        // A valid gateway key is no admin key.
        &[("authorization", "Bearer client-key")],
        &[("x-api-key", "client-key")],
    ];
    for headers in bad {
        for (method, path) in [
            (Method::GET, "/config"),
            (Method::GET, "/splits"),
            (Method::GET, "/metrics"),
            (Method::POST, "/splits/api/promote/green"),
        ] {
            let (status, res_headers, doc) = h.admin_as(method, path, headers, None).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} with {headers:?}");
            assert_eq!(res_headers[CONTENT_TYPE], PROBLEM_JSON);
            assert!(res_headers.contains_key(WWW_AUTHENTICATE));
            assert_eq!(doc["status"], 401);
        }
        let (status, _, _) = h
            .admin_as(
                Method::PUT,
                "/splits/api/weights",
                headers,
                Some(json!({"blue": 0, "green": 100})),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Nothing changed.
    assert_eq!(
        h.gateway.split("api").unwrap().weights().get("green"),
        Some(0)
    );

    let bearer = format!("Bearer {ADMIN_KEY}");
    for headers in [
        [("authorization", bearer.as_str())],
        [("x-api-key", ADMIN_KEY)],
    ] {
        let (status, _, doc) = h.admin_as(Method::GET, "/splits", &headers, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(doc[0]["route"], "api");
        assert_eq!(doc[0]["weights"], json!({"blue": 100, "green": 0}));
    }
    let (status, _, doc) = h
        .admin_as(
            Method::PUT,
            "/splits/api/weights",
            &[("x-api-key", ADMIN_KEY)],
            Some(json!({"blue": 90, "green": 10})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["weights"], json!({"blue": 90, "green": 10}));

    // Errors are problems too.
    for (method, path, body, want) in [
        (Method::GET, "/nope", None, StatusCode::NOT_FOUND),
        (Method::GET, "/splits/nope", None, StatusCode::NOT_FOUND),
        (
            Method::POST,
            "/splits/api/promote/purple",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PUT,
            "/splits/api/weights",
            Some(json!({"blue": 0, "green": 0})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PUT,
            "/splits/api/weights",
            Some(json!({"blue": "lots"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/splits/limited/rollback",
            None,
            StatusCode::CONFLICT,
        ),
    ] {
        let (status, headers, doc) = h.admin(method, path, body).await;
        assert_eq!(status, want, "{path}: {doc}");
        assert_eq!(headers[CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(doc["status"], want.as_u16());
    }
    assert_eq!(
        h.gateway.split("api").unwrap().weights().get("green"),
        Some(10)
    );

    // The admin API is never served without keys.
    let mut config = h.config.clone();
    config.admin.keys.clear();
    let keyless = Gateway::from_config(config).unwrap();
    assert!(matches!(admin::router(&keyless), Err(AdminError::NoKeys)));
}

#[tokio::test]
async fn weights_flipped_under_load_fail_no_request() {
    let h = start().await;
    let promoted = Arc::new(AtomicBool::new(false));
    let load = start_load(&h, 8, promoted.clone());

    // Flip the weights every way the admin API allows, for a while.
    let bearer = format!("Bearer {ADMIN_KEY}");
    let steps: [(Method, &str, Option<Value>, Value); 6] = [
        (
            Method::PUT,
            "/splits/api/weights",
            Some(json!({"blue": 30, "green": 70})),
            json!({"blue": 30, "green": 70}),
        ),
        (
            Method::POST,
            "/splits/api/promote/green",
            None,
            json!({"blue": 0, "green": 100}),
        ),
        (
            Method::POST,
            "/splits/api/rollback",
            None,
            json!({"blue": 30, "green": 70}),
        ),
        (
            Method::PUT,
            "/splits/api/weights",
            Some(json!({"weights": {"blue": 100, "green": 0}})),
            json!({"blue": 100, "green": 0}),
        ),
        (
            Method::POST,
            "/splits/api/promote/green",
            None,
            json!({"blue": 0, "green": 100}),
        ),
        (
            Method::POST,
            "/splits/api/promote/blue",
            None,
            json!({"blue": 100, "green": 0}),
        ),
    ];
    let started = tokio::time::Instant::now();
    let mut changes = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        for (method, path, body, want) in &steps {
            let auth: (&str, &str) = if changes % 2 == 0 {
                ("authorization", &bearer)
            } else {
                ("x-api-key", ADMIN_KEY)
            };
            let (status, _, doc) = h
                .admin_as(method.clone(), path, &[auth], body.clone())
                .await;
            assert_eq!(status, StatusCode::OK, "{path}: {doc}");
            assert_eq!(&doc["weights"], want, "{path}");
            changes += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    // Both get traffic, then green is promoted: from the moment the admin
    // API answers, no new request reaches blue.
    let (status, _, _) = h
        .admin(
            Method::PUT,
            "/splits/api/weights",
            Some(json!({"blue": 50, "green": 50})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _, doc) = h
        .admin(Method::POST, "/splits/api/promote/green", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["weights"], json!({"blue": 0, "green": 100}));
    promoted.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.finish().await;

    assert!(
        report.failures.is_empty(),
        "{} failed: {:?}",
        report.failures.len(),
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(changes >= 12, "only {changes} changes");
    assert!(report.ok > 100, "{report:?}");
    assert!(report.blue > 0 && report.green > 0, "{report:?}");
    assert_eq!(report.blue_after_promote, 0, "{report:?}");

    // Once everything in flight is done, blue's own counter stays put.
    let blue_before = h.blue.hits();
    for _ in 0..50 {
        let (status, _, body) = h.api("/api/after").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"green"[..]));
    }
    assert_eq!(h.blue.hits(), blue_before);

    // Every request the split counted reached its upstream, and nothing is
    // left in flight.
    let stats = h.gateway.split("api").unwrap().stats();
    assert_eq!(
        stats.iter().map(|t| t.requests).sum::<u64>(),
        report.ok + 50
    );
    assert_eq!(h.blue.hits() + h.green.hits(), report.ok + 50);
    let by_name: HashMap<_, _> = stats.iter().map(|t| (t.name.as_str(), t)).collect();
    assert_eq!(by_name["blue"].requests, h.blue.hits());
    assert_eq!(by_name["green"].requests, h.green.hits());
    assert!(
        stats
            .iter()
            .all(|t| t.in_flight == 0 && t.responses.server_error == 0)
    );
}

/// `config` with `api`'s weights set, and an `extra` route to green.
fn reshaped(config: &GatewayConfig, blue: u32, green: u32) -> Value {
    let mut doc = serde_json::to_value(config).unwrap();
    let targets = &mut doc["routes"][0]["split"]["targets"];
    targets[0]["weight"] = json!(blue);
    targets[1]["weight"] = json!(green);
    doc["routes"].as_array_mut().unwrap().push(json!({
        "name": "extra",
        "path_prefix": "/extra",
        "split": { "targets": [{ "name": "only", "upstream": "green", "weight": 1 }] }
    }));
    doc
}

#[tokio::test]
async fn reload_under_load_carries_state_over() {
    let mut h = start().await;

    // Rate-limiter state: alice uses her burst.
    for _ in 0..3 {
        let (status, _, _) = h.get("/limited/x", &[("x-user", "alice")]).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, _) = h.get("/limited/x", &[("x-user", "alice")]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // Split counters.
    for _ in 0..10 {
        assert_eq!(h.api("/api/before").await.0, StatusCode::OK);
    }
    assert_eq!(h.api_requests(), 10);

    // A request in flight across both reloads.
    let slow = tokio::spawn({
        let client = h.client.clone();
        let uri = format!("http://{}/api/slow", h.addr);
        async move {
            call(
                &client,
                Method::GET,
                uri,
                &[("x-api-key", CLIENT_KEY)],
                None,
            )
            .await
        }
    });
    tokio::time::timeout(HANG_GUARD, h.blue.slow_entered.recv())
        .await
        .expect("the slow request never reached blue")
        .unwrap();

    let load = start_load(&h, 4, Arc::new(AtomicBool::new(false)));
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Reload in code: new weights, a new route.
    let config: GatewayConfig = serde_json::from_value(reshaped(&h.config, 50, 50)).unwrap();
    h.gateway.reload(config).unwrap();
    assert_eq!(h.gateway.routes(), ["api", "limited", "extra"]);
    let (status, _, body) = h.get("/extra/x", &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"green"[..]));
    tokio::time::sleep(Duration::from_millis(150)).await;

    // Reload through the admin API: weights back, the route kept.
    let (status, _, doc) = h
        .admin(Method::PUT, "/config", Some(reshaped(&h.config, 100, 0)))
        .await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(doc["status"], "reloaded");
    assert_eq!(doc["routes"], json!(["api", "limited", "extra"]));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let report = load.finish().await;
    assert!(
        report.failures.is_empty(),
        "{:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(report.ok > 20, "{report:?}");

    // The request in flight finishes on its old pipeline.
    h.blue.release.notify_one();
    let (status, _, body) = tokio::time::timeout(HANG_GUARD, slow)
        .await
        .expect("the in-flight request never finished")
        .unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"blue slow"[..]));

    // Alice is still limited; Bob is not.
    let answer = h.get("/limited/x", &[("x-user", "alice")]).await;
    assert_problem(&answer, StatusCode::TOO_MANY_REQUESTS);
    let (status, _, _) = h.get("/limited/x", &[("x-user", "bob")]).await;
    assert_eq!(status, StatusCode::OK);
    let rl = h.gateway.rate_limit("limited").unwrap().stats();
    assert_eq!((rl.allowed, rl.rejected), (4, 2));

    // The split counted on from before the reloads: every /api request.
    let total = 10 + report.ok + 1;
    assert_eq!(h.api_requests(), total);
    let metrics = h.gateway.metrics();
    assert!(
        metrics.contains(&format!(
            "switchyard_route_requests_total{{route=\"api\"}} {total}\n"
        )),
        "{metrics}"
    );
    // The configuration in force is the last one.
    let (_, _, doc) = h.admin(Method::GET, "/splits/api", None).await;
    assert_eq!(doc["weights"], json!({"blue": 100, "green": 0}));
    assert_eq!(h.gateway.config().routes.len(), 3);
}

#[tokio::test]
async fn invalid_configs_are_refused_with_every_problem_located() {
    let h = start().await;
    let at = |e: &ConfigError| -> Vec<String> { e.problems.iter().map(|p| p.at.clone()).collect() };

    // An unknown upstream in a split target.
    let mut doc = serde_json::to_value(&h.config).unwrap();
    doc["routes"][0]["split"]["targets"][1]["upstream"] = json!("nope");
    let config: GatewayConfig = serde_json::from_value(doc.clone()).unwrap();
    let e = Gateway::from_config(config.clone()).unwrap_err();
    assert_eq!(at(&e), ["routes[0].split.targets[1].upstream"]);
    assert!(e.problems[0].message.contains("nope"), "{e}");
    assert!(
        e.to_string()
            .contains("routes[0].split.targets[1].upstream: unknown upstream"),
        "{e}"
    );
    assert_eq!(h.gateway.reload(config).unwrap_err(), e);

    // A bad upstream URL.
    let mut bad_url = serde_json::to_value(&h.config).unwrap();
    bad_url["upstreams"]["x"] = json!({ "url": "ftp://127.0.0.1:21" });
    let e = Gateway::from_config(serde_json::from_value(bad_url).unwrap()).unwrap_err();
    assert_eq!(at(&e), ["upstreams.x.url"]);

    // Several at once, all reported.
    doc["upstreams"]["x"] = json!({ "url": "not a url" });
    doc["routes"][1]["rate_limit"]["quotas"][0]["period"] = json!("soon");
    doc["routes"][1]["methods"] = json!(["GET", "BAD METHOD"]);
    doc["routes"].as_array_mut().unwrap().push(json!({
        "name": "api",
        "split": { "targets": [{ "name": "a", "upstream": "blue", "weight": 1 }] }
    }));
    let config: GatewayConfig = serde_json::from_value(doc.clone()).unwrap();
    let e = Gateway::from_config(config.clone()).unwrap_err();
    let want: HashSet<&str> = [
        "upstreams.x.url",
        "routes[0].split.targets[1].upstream",
        "routes[1].methods[1]",
        "routes[1].rate_limit.quotas[0].period",
        "routes[2].name",
    ]
    .into();
    let got: HashSet<String> = at(&e).into_iter().collect();
    for place in &want {
        assert!(got.contains(*place), "{place} not reported: {e}");
    }

    // Refused in code: nothing changes.
    assert!(h.gateway.reload(config).is_err());
    assert_eq!(h.gateway.config(), h.config);
    // Not even the valid part of a refused configuration (green promoted
    // in route 0, a bad period in route 1).
    let mut half = serde_json::to_value(&h.config).unwrap();
    half["routes"][0]["split"]["targets"][0]["weight"] = json!(0);
    half["routes"][0]["split"]["targets"][1]["weight"] = json!(100);
    half["routes"][1]["rate_limit"]["quotas"][0]["period"] = json!("soon");
    let e = h
        .gateway
        .reload(serde_json::from_value(half.clone()).unwrap())
        .unwrap_err();
    assert!(
        at(&e).contains(&"routes[1].rate_limit.quotas[0].period".to_owned()),
        "{e}"
    );
    let (status, _, _) = h.admin(Method::PUT, "/config", Some(half)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let weights = h.gateway.split("api").unwrap().weights();
    assert_eq!(
        (weights.get("blue"), weights.get("green")),
        (Some(100), Some(0))
    );
    assert_eq!(h.gateway.config(), h.config);

    // Refused over the admin API: 422 listing them, the old one serves.
    let (status, headers, res) = h.admin(Method::PUT, "/config", Some(doc)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{res}");
    assert_eq!(headers[CONTENT_TYPE], PROBLEM_JSON);
    assert_eq!(res["status"], 422);
    let listed: HashSet<String> = res["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(!p["message"].as_str().unwrap().is_empty(), "{p}");
            p["at"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(listed, got);
    // Not a configuration at all: 400.
    let (status, _, res) = h
        .admin(
            Method::PUT,
            "/config",
            Some(json!({"routes": 5, "extra": true})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{res}");

    assert_eq!(h.gateway.config(), h.config);
    let (_, _, config) = h.admin(Method::GET, "/config", None).await;
    assert_eq!(config, serde_json::to_value(h.config.redacted()).unwrap());
    let (status, _, body) = h.api("/api/still").await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"blue"[..]));
}

// === metrics ===

/// A series' labels but `le`, sorted: one histogram.
type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) value: f64,
}

fn valid_name(name: &str, colons: bool) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        t => t.parse().ok(),
    }
}

/// Parses one sample line: `name{label="value",...} value [timestamp]`.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value: {line}"))?;
    let name = &line[..name_end];
    if !valid_name(name, true) {
        return Err(format!("bad metric name `{name}`"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest
                .find('=')
                .ok_or_else(|| format!("bad labels: {line}"))?;
            let label = &rest[..eq];
            if !valid_name(label, false) {
                return Err(format!("bad label name `{label}` in {line}"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or_else(|| format!("unquoted label value: {line}"))?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => return Err(format!("bad escape: {line}")),
                    },
                    Some((i, '"')) => break i,
                    Some((_, '\n')) | None => return Err(format!("unterminated value: {line}")),
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label `{label}` twice: {line}"));
            }
            rest = &rest[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("no space before the value: {line}"))?;
    let mut parts = rest.split(' ');
    let value = parts.next().unwrap();
    let value = parse_value(value).ok_or_else(|| format!("bad value `{value}`: {line}"))?;
    if let Some(ts) = parts.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp: {line}"))?;
    }
    if parts.next().is_some() {
        return Err(format!("trailing text: {line}"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Checks Prometheus text exposition (0.0.4) and returns its samples:
/// every sample line parses, belongs to a family announced by a preceding
/// `# TYPE`, families are not interleaved, no series repeats, and every
/// histogram's buckets are cumulative, end with `le="+Inf"` and agree with
/// `_count`.
pub(crate) fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let mut family_order: Vec<String> = Vec::new();
    let mut series = HashSet::new();
    if !text.ends_with('\n') {
        return Err("no final newline".into());
    }
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.trim_start().splitn(3, ' ').collect();
            match words.as_slice() {
                ["TYPE", name, kind] => {
                    if !valid_name(name, true) {
                        return Err(format!("bad name in {line}"));
                    }
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(kind) {
                        return Err(format!("bad type in {line}"));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(format!("second TYPE for {name}"));
                    }
                }
                ["TYPE", ..] => return Err(format!("bad TYPE line: {line}")),
                ["HELP", name, ..] if !valid_name(name, true) => {
                    return Err(format!("bad HELP line: {line}"));
                }
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(line)?;
        let family = if types.contains_key(&sample.name) {
            sample.name.clone()
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = sample.name.strip_suffix(suffix)?;
                    let kind = types.get(base)?;
                    (kind == "histogram" || (kind == "summary" && *suffix != "_bucket"))
                        .then(|| base.to_owned())
                })
                .ok_or_else(|| format!("no preceding # TYPE for {}", sample.name))?
        };
        if types[&family] == "counter" && (sample.value < 0.0 || sample.value.is_nan()) {
            return Err(format!("negative or NaN counter: {line}"));
        }
        if family_order.last() != Some(&family) {
            if family_order.contains(&family) {
                return Err(format!("family {family} interleaved with another"));
            }
            family_order.push(family.clone());
        }
        if !series.insert((sample.name.clone(), sample.labels.clone())) {
            return Err(format!("series repeated: {line}"));
        }
        samples.push(sample);
    }

    // Histograms.
    for (family, _) in types.iter().filter(|(_, k)| *k == "histogram") {
        let mut buckets: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        let mut counts = HashMap::new();
        let mut sums = HashSet::new();
        for s in &samples {
            let mut key: Labels = s
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            key.sort();
            if s.name == format!("{family}_bucket") {
                let le = s
                    .labels
                    .get("le")
                    .ok_or_else(|| format!("bucket without le in {family}"))?;
                let le = parse_value(le).ok_or_else(|| format!("bad le {le}"))?;
                buckets.entry(key).or_default().push((le, s.value));
            } else if s.name == format!("{family}_count") {
                counts.insert(key, s.value);
            } else if s.name == format!("{family}_sum") {
                sums.insert(key);
            }
        }
        if buckets.len() != counts.len() || buckets.len() != sums.len() {
            return Err(format!(
                "{family}: buckets, _sum and _count do not match up"
            ));
        }
        for (key, list) in &buckets {
            for pair in list.windows(2) {
                if pair[0].0 >= pair[1].0 {
                    return Err(format!("{family}{key:?}: le not increasing"));
                }
                if pair[0].1 > pair[1].1 {
                    return Err(format!("{family}{key:?}: buckets not cumulative"));
                }
            }
            let (le, last) = *list.last().unwrap();
            if le != f64::INFINITY {
                return Err(format!("{family}{key:?}: last bucket is not +Inf"));
            }
            let count = counts
                .get(key)
                .ok_or_else(|| format!("{family}{key:?}: no _count"))?;
            if last != *count {
                return Err(format!("{family}{key:?}: +Inf {last} != _count {count}"));
            }
        }
    }
    Ok(samples)
}

fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .unwrap_or_else(|| panic!("no {name}{labels:?}"))
        .value
}

#[test]
fn the_prometheus_checker_refuses_what_it_should() {
    let ok = "# TYPE a counter\na{x=\"1\"} 2\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n";
    parse_prometheus(ok).unwrap();
    for bad in [
        "a 1\n",
        "# TYPE a counter\na{x=\"1} 2\n",
        "# TYPE a counter\na{x=\"1\"} two\n",
        "# TYPE a counter\na 1\na 2\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 3\nh_bucket{le=\"+Inf\"} 2\nh_sum 0\nh_count 2\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"2\"} 2\nh_sum 0\nh_count 2\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0\nh_count 3\n",
        "# TYPE a counter\n# TYPE b counter\na 1\nb 1\na{x=\"2\"} 1\n",
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted:\n{bad}");
    }
}

#[tokio::test]
async fn metrics_are_valid_prometheus_text() {
    let h = start().await;
    // A route whose name needs escaping in a label value.
    let odd = "odd \"quoted\" \\ name\nline two";
    let mut doc = serde_json::to_value(&h.config).unwrap();
    doc["routes"].as_array_mut().unwrap().push(json!({
        "name": odd,
        "path_prefix": "/odd",
        "split": { "targets": [{ "name": "b\"lue", "upstream": "blue", "weight": 1 }] }
    }));
    h.gateway
        .reload(serde_json::from_value(doc).unwrap())
        .unwrap();
    assert_eq!(h.get("/odd/x", &[]).await.0, StatusCode::OK);
    for _ in 0..5 {
        assert_eq!(h.api("/api/m").await.0, StatusCode::OK);
    }
    let answer = h
        .get(
            "/api/m",
            &[("x-api-key", CLIENT_KEY), ("x-switchyard-target", "green")],
        )
        .await;
    assert_eq!(answer.0, StatusCode::OK);
    assert_eq!(h.get("/api/m", &[]).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(h.get("/nowhere", &[]).await.0, StatusCode::NOT_FOUND);
    for _ in 0..5 {
        h.get("/limited/m", &[("x-user", "carol")]).await;
    }

    let (status, headers, body) = call(
        &h.client,
        Method::GET,
        format!("http://{}/metrics", h.admin),
        &[("x-api-key", ADMIN_KEY)],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers[CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(text, h.gateway.metrics());
    let samples = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));

    let v = |name: &str, labels: &[(&str, &str)]| value_of(&samples, name, labels);
    let api = ("route", "api");
    let limited = ("route", "limited");
    assert_eq!(v("switchyard_route_requests_total", &[api]), 7.0);
    assert_eq!(
        v("switchyard_route_responses_total", &[api, ("class", "2xx")]),
        6.0
    );
    assert_eq!(
        v("switchyard_route_responses_total", &[api, ("class", "4xx")]),
        1.0
    );
    assert_eq!(v("switchyard_route_requests_total", &[limited]), 5.0);
    assert_eq!(
        v(
            "switchyard_route_responses_total",
            &[limited, ("class", "4xx")]
        ),
        2.0
    );
    assert_eq!(v("switchyard_ratelimit_allowed_total", &[limited]), 3.0);
    assert_eq!(v("switchyard_ratelimit_rejected_total", &[limited]), 2.0);
    let blue = ("target", "blue");
    let green = ("target", "green");
    assert_eq!(v("switchyard_target_weight", &[api, blue]), 100.0);
    assert_eq!(v("switchyard_target_weight", &[api, green]), 0.0);
    assert_eq!(v("switchyard_target_requests_total", &[api, blue]), 5.0);
    assert_eq!(v("switchyard_target_requests_total", &[api, green]), 1.0);
    assert_eq!(
        v(
            "switchyard_target_responses_total",
            &[api, blue, ("class", "2xx")]
        ),
        5.0
    );
    assert_eq!(v("switchyard_target_in_flight", &[api, blue]), 0.0);
    assert_eq!(v("switchyard_target_errors_total", &[api, green]), 0.0);
    // Blue's latency: one observation per response.
    assert_eq!(
        v("switchyard_target_latency_seconds_count", &[api, blue]),
        5.0
    );
    assert_eq!(
        v(
            "switchyard_target_latency_seconds_bucket",
            &[api, blue, ("le", "+Inf")]
        ),
        5.0
    );
    assert!(v("switchyard_target_latency_seconds_sum", &[api, blue]) > 0.0);
    assert_eq!(
        v("switchyard_target_latency_seconds_count", &[limited, blue]),
        3.0
    );
    assert_eq!(v("switchyard_route_requests_total", &[("route", odd)]), 1.0);
    assert_eq!(
        v(
            "switchyard_target_requests_total",
            &[("route", odd), ("target", "b\"lue")]
        ),
        1.0
    );
}

/// A model server: 1,000 input tokens and `max_tokens` (or 100) output
/// per answer; the version `broken` answers 200, sends a first chunk, then
/// breaks its body off.
async fn model_server() -> SocketAddr {
    let app = Router::new().fallback(|body: Bytes| async move {
        let req: Value = serde_json::from_slice(&body).unwrap_or_default();
        if req["model"] == "broken" {
            let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(2);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Bytes::from_static(b"{\"id\":"))).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx.send(Err(std::io::Error::other("broken off"))).await;
            });
            let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
            return axum::response::Response::builder()
                .header(CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from_stream(stream))
                .unwrap();
        }
        let out = req["max_tokens"].as_u64().unwrap_or(100);
        axum::response::IntoResponse::into_response(axum::Json(json!({
            "id": "x", "object": "chat.completion", "model": req["model"],
            "choices": [{ "index": 0, "finish_reason": "stop",
                "message": { "role": "assistant", "content": "hi" } }],
            "usage": { "prompt_tokens": 1000, "completion_tokens": out, "total_tokens": 1000 + out }
        })))
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The servers a gateway is served by, reported with `report_server` as
/// the `gateway` example does, show on its `/metrics`: the requests each
/// handed on, its connections, and none panicked.
#[tokio::test]
async fn metrics_show_the_servers_reported() {
    let blue = backend("blue").await;
    let green = backend("green").await;
    let gateway = Gateway::from_config(config_for(&blue, &green)).unwrap();
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    let admin_server = Server::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin_addr) = (server.local_addr(), admin_server.local_addr());
    gateway.report_server("gateway", server.handle());
    gateway.report_server("admin", admin_server.handle());
    let (handle, admin_handle) = (server.handle(), admin_server.handle());
    let serving = tokio::spawn(server.serve(gateway.clone()));
    let serving_admin = tokio::spawn(admin_server.serve(admin::router(&gateway).unwrap()));

    let client = client();
    let get = |at: SocketAddr, path: &str, key: &'static str| {
        let uri = format!("http://{at}{path}");
        let client = &client;
        async move {
            let (status, _, body) =
                call(client, Method::GET, uri, &[("x-api-key", key)], None).await;
            assert_eq!(status, StatusCode::OK);
            body
        }
    };
    for _ in 0..3 {
        get(addr, "/api/m", CLIENT_KEY).await;
    }
    let body = get(admin_addr, "/metrics", ADMIN_KEY).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    let samples = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let v = |name: &str, server: &str| value_of(&samples, name, &[("server", server)]);
    assert_eq!(v("switchyard_server_requests_total", "gateway"), 3.0);
    // The scrape itself is the admin server's one request so far.
    assert_eq!(v("switchyard_server_requests_total", "admin"), 1.0);
    // The client kept one connection to each, open still.
    for server in ["gateway", "admin"] {
        assert_eq!(
            v("switchyard_server_connections_accepted_total", server),
            1.0
        );
        assert_eq!(v("switchyard_server_connections_active", server), 1.0);
        assert_eq!(v("switchyard_server_panics_total", server), 0.0);
        assert_eq!(v("switchyard_server_header_timeouts_total", server), 0.0);
    }
    // The same families in the gateway's collector, read now.
    assert!(
        gateway
            .metrics()
            .contains("switchyard_server_requests_total{server=\"admin\"} 1\n")
    );
    // And as JSON, for the dashboard: the admin server's second request.
    let body = get(admin_addr, "/servers", ADMIN_KEY).await;
    let servers: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(servers.as_array().map(Vec::len), Some(2), "{servers}");
    let (data, control) = (&servers[0], &servers[1]);
    assert_eq!(data["name"], "gateway");
    assert_eq!(data["address"], addr.to_string());
    assert_eq!(data["requests"], 3);
    assert_eq!(control["name"], "admin");
    assert_eq!(control["address"], admin_addr.to_string());
    assert_eq!(control["requests"], 2);
    for server in [data, control] {
        assert_eq!(server["shutting_down"], false);
        assert_eq!(server["accepted"], 1);
        assert_eq!(server["active"], 1);
        assert_eq!(server["panics"], 0);
        assert_eq!(server["refused_over_cap"], 0);
    }
    // Shutting down shows before the server has stopped.
    admin_handle.shutdown(HANG_GUARD);
    assert!(
        gateway
            .servers()
            .iter()
            .any(|s| s.name == "admin" && s.shutting_down)
    );

    drop(client);
    handle.shutdown(HANG_GUARD);
    admin_handle.shutdown(HANG_GUARD);
    for task in [serving, serving_admin] {
        tokio::time::timeout(HANG_GUARD, task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}

/// `/metrics`, read by the strict parser after real traffic: a model
/// route's versions (requests, responses, errors, latency, tokens, the
/// aliases' weights), and the refusals of the API keys (by reason), of the
/// admin API's keys and of a route's scope check.
#[tokio::test]
async fn metrics_count_model_versions_and_auth_refusals() {
    let h = start().await;
    let llm = model_server().await;
    let model_route = format!(
        r#"
[upstreams.llm]
url = "http://{llm}"
response_timeout_ms = 5000

[[routes]]
name = "ai"
path_prefix = "/v1"
[routes.model.catalog]
models = [
  {{ name = "gpt-4o", upstream = "llm" }},
  {{ name = "house", upstream = "llm" }},
  {{ name = "broken", upstream = "llm" }},
]
aliases = [
  {{ name = "chat", versions = {{ "gpt-4o" = 100, "house" = 0 }} }},
  {{ name = "flaky", versions = {{ "broken" = 100 }} }},
]
"#
    );
    let text = CONFIG
        .replace("BLUE_URL", &format!("http://{}", h.blue.addr))
        .replace("GREEN_URL", &format!("http://{}", h.green.addr))
        + &model_route;
    h.gateway
        .reload(GatewayConfig::from_toml(&text).unwrap())
        .unwrap();

    let chat = |model: &str| {
        let body = json!({ "model": model, "max_tokens": 7,
            "messages": [{ "role": "user", "content": "hello" }] });
        try_call(
            &h.client,
            Method::POST,
            format!("http://{}/v1/chat/completions", h.addr),
            &[],
            Some(body.to_string()),
        )
    };
    for _ in 0..3 {
        let (status, _, body) = chat("chat").await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body:?}");
    }
    // Broken off after its headers: the client's answer fails or ends
    // early, whichever; the version counts an error.
    let _ = chat("flaky").await;

    // Refusals: no key, an unknown one (twice), two keys at once, a key
    // without the route's scope; and a wrong admin key.
    assert_eq!(h.get("/api/m", &[]).await.0, StatusCode::UNAUTHORIZED);
    for _ in 0..2 {
        let answer = h.get("/api/m", &[("x-api-key", "wrong")]).await;
        assert_eq!(answer.0, StatusCode::UNAUTHORIZED);
    }
    let two = [("x-api-key", CLIENT_KEY), ("x-api-key", CLIENT_KEY)];
    assert_eq!(h.get("/api/m", &two).await.0, StatusCode::BAD_REQUEST);
    let answer = h.get("/api/m", &[("x-api-key", "no-scope-key")]).await;
    assert_eq!(answer.0, StatusCode::FORBIDDEN);
    for _ in 0..2 {
        assert_eq!(h.api("/api/m").await.0, StatusCode::OK);
    }
    let (status, _, _) = call(
        &h.client,
        Method::GET,
        format!("http://{}/metrics", h.admin),
        &[("x-api-key", "not-the-admin-key")],
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The broken version's error is counted when its body fails.
    let mut text = h.gateway.metrics();
    for _ in 0..200 {
        if text.contains("switchyard_model_errors_total{route=\"ai\",model=\"broken\"} 1\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        text = h.gateway.metrics();
    }
    let samples = parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let v = |name: &str, labels: &[(&str, &str)]| value_of(&samples, name, labels);

    let ai = ("route", "ai");
    let gpt = ("model", "gpt-4o");
    let house = ("model", "house");
    let broken = ("model", "broken");
    assert_eq!(v("switchyard_model_requests_total", &[ai, gpt]), 3.0);
    assert_eq!(v("switchyard_model_requests_total", &[ai, house]), 0.0);
    assert_eq!(v("switchyard_model_requests_total", &[ai, broken]), 1.0);
    assert_eq!(
        v(
            "switchyard_model_responses_total",
            &[ai, gpt, ("class", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        v(
            "switchyard_model_responses_total",
            &[ai, broken, ("class", "2xx")]
        ),
        1.0
    );
    assert_eq!(v("switchyard_model_errors_total", &[ai, gpt]), 0.0);
    assert_eq!(v("switchyard_model_errors_total", &[ai, broken]), 1.0);
    assert_eq!(v("switchyard_model_in_flight", &[ai, gpt]), 0.0);
    assert_eq!(v("switchyard_model_latency_seconds_count", &[ai, gpt]), 3.0);
    assert_eq!(
        v(
            "switchyard_model_latency_seconds_bucket",
            &[ai, gpt, ("le", "+Inf")]
        ),
        3.0
    );
    assert!(v("switchyard_model_latency_seconds_sum", &[ai, gpt]) > 0.0);
    assert_eq!(
        v("switchyard_model_latency_seconds_count", &[ai, house]),
        0.0
    );
    assert_eq!(
        v(
            "switchyard_model_tokens_total",
            &[ai, gpt, ("kind", "prompt")]
        ),
        3000.0
    );
    assert_eq!(
        v(
            "switchyard_model_tokens_total",
            &[ai, gpt, ("kind", "completion")]
        ),
        21.0
    );
    assert_eq!(
        v(
            "switchyard_model_tokens_total",
            &[ai, house, ("kind", "prompt")]
        ),
        0.0
    );
    assert_eq!(
        v(
            "switchyard_model_time_to_first_token_seconds_count",
            &[ai, gpt]
        ),
        3.0
    );
    assert_eq!(
        v("switchyard_model_weight", &[ai, ("alias", "chat"), gpt]),
        100.0
    );
    assert_eq!(
        v("switchyard_model_weight", &[ai, ("alias", "chat"), house]),
        0.0
    );
    assert_eq!(
        v("switchyard_model_weight", &[ai, ("alias", "flaky"), broken]),
        100.0
    );

    let keys = ("auth", "api_keys");
    let refused = |auth: (&str, &str), reason: &str| {
        v("switchyard_auth_refused_total", &[auth, ("reason", reason)])
    };
    assert_eq!(refused(keys, "missing"), 1.0);
    assert_eq!(refused(keys, "unknown_key"), 2.0);
    assert_eq!(refused(keys, "malformed"), 1.0);
    assert_eq!(refused(keys, "disabled_key"), 0.0);
    assert_eq!(refused(keys, "expired_key"), 0.0);
    assert_eq!(
        v(
            "switchyard_auth_admitted_total",
            &[keys, ("identity", "authenticated")]
        ),
        3.0
    );
    let admin = ("auth", "admin");
    assert_eq!(refused(admin, "unknown_key"), 1.0);
    assert_eq!(refused(admin, "missing"), 0.0);
    let api = ("route", "api");
    assert_eq!(
        v(
            "switchyard_scope_refused_total",
            &[api, ("reason", "insufficient_scope")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "switchyard_scope_refused_total",
            &[api, ("reason", "unauthenticated")]
        ),
        0.0
    );
    // Only the route with scopes has a scope check.
    assert!(
        !samples
            .iter()
            .any(|s| s.name == "switchyard_scope_refused_total" && s.labels["route"] != "api"),
        "{text}"
    );
}

/// A reload that adds a target to a split keeps the counters of the
/// targets that stay.
#[tokio::test]
async fn reload_adding_a_target_keeps_the_counters_of_the_others() {
    let h = start().await;
    for _ in 0..5 {
        assert_eq!(h.api("/api/before").await.0, StatusCode::OK);
    }
    let blue_before = h
        .gateway
        .split("api")
        .unwrap()
        .target_stats("blue")
        .unwrap();
    assert_eq!(blue_before.requests, 5);

    let mut doc = serde_json::to_value(&h.config).unwrap();
    doc["routes"][0]["split"]["targets"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "canary", "upstream": "green", "weight": 0 }));
    let config: GatewayConfig = serde_json::from_value(doc).unwrap();
    h.gateway.reload(config).unwrap();

    let split = h.gateway.split("api").unwrap();
    assert_eq!(split.targets().count(), 3);
    assert_eq!(split.target_stats("blue").unwrap().requests, 5);
    assert_eq!(split.target_stats("canary").unwrap().requests, 0);
    assert_eq!(h.api("/api/after").await.0, StatusCode::OK);
    assert_eq!(split.target_stats("blue").unwrap().requests, 6);
}

// === access log ===

/// A `tracing` subscriber keeping the fields of every access-log event.
#[derive(Clone, Default)]
struct AccessLog(Arc<std::sync::Mutex<Vec<BTreeMap<String, String>>>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl tracing::Subscriber for AccessLog {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() == "switchyard::access"
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(fields);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// With a subscriber listening to `switchyard::access`, every request is
/// logged once with its route, method, path (never the query), status,
/// latency, client, request id and the version that answered; unmatched
/// and refused ones too.
#[tokio::test]
async fn the_access_log_has_one_line_per_request() {
    // The process's subscriber (a thread's own would not see requests
    // served on other threads, and callsites this binary's other tests
    // reached first): it records every test's requests, so this test's
    // paths are its own.
    let log = AccessLog::default();
    tracing::subscriber::set_global_default(log.clone()).unwrap();
    let h = start().await;
    let (status, headers, _) = h.api("/api/access-log?api_key=secret").await;
    assert_eq!(status, StatusCode::OK);
    let id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(h.get("/access-log", &[]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        h.get("/api/access-log", &[]).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        h.get("/api/access-log/%2F", &[]).await.0,
        StatusCode::BAD_REQUEST
    );

    let lines: Vec<_> = log
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.get("path").is_some_and(|p| p.contains("access-log")))
        .cloned()
        .collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    let field = |i: usize, name: &str| lines[i].get(name).cloned().unwrap_or_default();
    assert_eq!(field(0, "route"), "api");
    assert_eq!(field(0, "method"), "GET");
    assert_eq!(field(0, "path"), "/api/access-log");
    assert_eq!(field(0, "status"), "200");
    assert_eq!(field(0, "client"), "127.0.0.1");
    assert_eq!(field(0, "request_id"), id);
    // The split's echo header (`x-served-by` here) names the version.
    assert_eq!(
        field(0, "version"),
        headers["x-served-by"].to_str().unwrap()
    );
    assert_eq!(field(1, "version"), "-");
    assert!(
        field(0, "latency_us").parse::<u64>().is_ok(),
        "{:?}",
        lines[0]
    );
    assert_eq!(field(0, "message"), "request");
    for (i, route, status) in [(1, "-", "404"), (2, "api", "401"), (3, "-", "400")] {
        assert_eq!(
            (field(i, "route"), field(i, "status")),
            (route.into(), status.into())
        );
    }
    assert!(!format!("{lines:?}").contains("secret"));
}

/// `GET /upstreams`: each upstream's servers with their state and counts.
#[tokio::test]
async fn admin_lists_the_upstreams_servers() {
    let h = start().await;
    assert_eq!(h.api("/api/orders").await.0, StatusCode::OK);
    let (status, _, doc) = h.admin(Method::GET, "/upstreams", None).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = doc
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["blue", "green"]);
    let blue = &doc[0]["endpoints"][0];
    assert_eq!(blue["url"], h.gateway.upstream("blue").unwrap().url());
    assert_eq!(blue["in_service"], true);
    assert_eq!(blue["healthy"], true);
    assert_eq!(blue["in_flight"], 0);
    assert_eq!(blue["requests"], 1);
    assert_eq!(doc[1]["endpoints"][0]["requests"], 0);
    assert!(h.gateway.upstream("purple").is_none());
    let (status, _, _) = h.admin_as(Method::GET, "/upstreams", &[], None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
