#![cfg(feature = "admin")]
//! The dashboard at the admin API's `/ui`, in a real browser: Debian's
//! `chromium`, headless, driven through `chromedriver` (WebDriver) with
//! `fantoccini`, against the demo configuration (`examples/gateway.toml`)
//! served by a real `Gateway` in front of real blue and green upstream
//! servers on loopback.
//!
//! `.ci/run` installs `chromium` and `chromium-driver` and sets
//! `SWITCHYARD_REQUIRE_BROWSER=1`, so that the browser test fails there
//! when they are missing; elsewhere, without them on the `PATH`, it says
//! so on stderr and passes. With `SWITCHYARD_SCREENSHOTS=1` it writes
//! the README's screenshots to `docs/screenshots/`.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use fantoccini::elements::Element;
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use http::StatusCode;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use switchyard::gateway::{Gateway, GatewayConfig, admin};
use switchyard::rollout::{Analysis, Plan, Step};
use switchyard::server::Server;

use crate::support::net;

const ADMIN_KEY: &str = "demo-admin-key";
const CLIENT_KEY: &str = "demo-key";
/// How long the page may take to show a change (it polls every 2 s).
const PAGE_WAIT: Duration = Duration::from_secs(15);

// === the demo gateway ===

/// An upstream version's servers' count of the requests they answered
/// (health checks not counted).
#[derive(Clone, Default)]
struct Hits(Arc<AtomicU64>);

impl Hits {
    fn get(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

async fn upstream(version: &'static str, hits: Hits) -> SocketAddr {
    let app = Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .fallback(move || {
            let hits = hits.clone();
            async move {
                hits.0.fetch_add(1, Ordering::SeqCst);
                version
            }
        });
    net::serve(app).await
}

struct Demo {
    gateway: SocketAddr,
    admin: SocketAddr,
    blue: Hits,
    green: Hits,
    client: net::HttpClient,
}

/// `examples/gateway.toml` as `cargo run --example gateway` serves it
/// (blue on one server, green on two), without its rate limit: the test
/// sends bursts of requests.
async fn demo() -> Demo {
    let (blue, green) = (Hits::default(), Hits::default());
    let mut config = GatewayConfig::from_toml(include_str!("../examples/gateway.toml")).unwrap();
    for (name, hits) in [("blue", &blue), ("green", &green)] {
        let up = config.upstreams.get_mut(name).unwrap();
        up.url = format!("http://{}", upstream(name, hits.clone()).await);
        for endpoint in &mut up.endpoints {
            *endpoint = format!("http://{}", upstream(name, hits.clone()).await);
        }
    }
    for route in &mut config.routes {
        route.rate_limit = None;
        // The demo's plan, on a test's clock: 20 %, 40 % and a pause.
        if let Some(rollout) = &mut route.rollout {
            rollout.plan = Plan::new([
                Step::SetWeight(20),
                Step::pause(Duration::from_millis(300)),
                Step::SetWeight(40),
                Step::PauseUntilResumed,
            ])
            .analysis(
                Analysis::default()
                    .interval(Duration::from_millis(300))
                    .check_every(Duration::from_millis(50))
                    .max_p99_ratio(None),
            );
        }
    }
    let gateway = Gateway::from_config(config).unwrap();
    let admin = net::serve(admin::router(&gateway).unwrap()).await;
    // Served as the `gateway` example serves it: by switchyard's server,
    // reported to the gateway (the dashboard's Servers view).
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    gateway.report_server("gateway", server.handle());
    let addr = server.local_addr();
    tokio::spawn(server.serve(gateway));
    let gateway = addr;
    Demo {
        gateway,
        admin,
        blue,
        green,
        client: HyperClient::builder(TokioExecutor::new()).build_http(),
    }
}

impl Demo {
    /// Sends `n` requests through the gateway, each as another user (the
    /// demo's split is sticky by `x-user`): how many blue and green
    /// answered.
    async fn traffic(&self, n: u64) -> (u64, u64) {
        let (blue, green) = (self.blue.get(), self.green.get());
        for i in 0..n {
            let user = format!("user-{i}");
            let res = net::get(
                &self.client,
                self.gateway,
                "/",
                &[("x-api-key", CLIENT_KEY), ("x-user", &user)],
            )
            .await;
            assert_eq!(res.status(), StatusCode::OK, "{:?}", res.body());
        }
        let counts = (self.blue.get() - blue, self.green.get() - green);
        assert_eq!(counts.0 + counts.1, n);
        counts
    }

    /// `GET /splits/{route}`'s weights, asked with the admin key.
    async fn weights(&self, route: &str) -> Value {
        let auth = format!("Bearer {ADMIN_KEY}");
        let res = net::get(
            &self.client,
            self.admin,
            &format!("/splits/{route}"),
            &[("authorization", &auth)],
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        serde_json::from_slice::<Value>(res.body()).unwrap()["weights"].clone()
    }
}

// === the files ===

#[tokio::test]
async fn ui_is_served_without_a_key_with_strict_headers() {
    let demo = demo().await;
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ] {
        let res = net::get(&demo.client, demo.admin, path, &[]).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let h = res.headers();
        assert!(
            h[CONTENT_TYPE].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h[CONTENT_SECURITY_POLICY].to_str().unwrap();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "form-action 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[REFERRER_POLICY], "no-referrer");
        assert_eq!(h[CACHE_CONTROL], "no-store");
    }
    // The page is open; the data behind it is not.
    let res = net::get(&demo.client, demo.admin, "/splits", &[]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = net::get(&demo.client, demo.admin, "/ui/other", &[]).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

// === the browser ===

/// A `chromedriver` of the test's own on a free loopback port, killed on
/// drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// A browser session, or `None` (with a note) when chromium or
/// chromedriver is missing and not required.
async fn browser() -> Option<(Driver, Client)> {
    let found = on_path(&["chromedriver"]).zip(on_path(&["chromium", "chromium-browser"]));
    let Some((driver, chromium)) = found else {
        if std::env::var_os("SWITCHYARD_REQUIRE_BROWSER").is_some() {
            panic!("chromium and chromedriver are required (SWITCHYARD_REQUIRE_BROWSER)");
        }
        eprintln!("chromium or chromedriver not on the PATH: the dashboard's browser test skipped");
        return None;
    };
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver did not start");
    let driver = Driver { child, port };
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--hide-scrollbars",
            ],
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = loop {
        let attempt = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await;
        match attempt {
            Ok(client) => break client,
            Err(e) if Instant::now() > deadline => panic!("no WebDriver session: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    Some((driver, client))
}

/// Waits until the element `#id` shows `text`, exactly.
async fn wait_text(page: &Client, id: &str, text: &str) {
    wait_for(page, id, |shown| shown.trim() == text, text).await;
}

/// Waits until the element `#id` shows `text` among its text.
async fn wait_contains(page: &Client, id: &str, text: &str) {
    wait_for(page, id, |shown| shown.contains(text), text).await;
}

async fn wait_for(page: &Client, id: &str, ok: impl Fn(&str) -> bool, text: &str) {
    let deadline = Instant::now() + PAGE_WAIT;
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(e) = page.find(Locator::Id(id)).await {
            last = e.text().await.unwrap_or_default();
            if ok(&last) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("#{id} shows {last:?}, not {text:?}");
}

async fn by_id(page: &Client, id: &str) -> Element {
    page.wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("no #{id}: {e}"))
}

/// Clicks `#id`, found again when the page redrew it between the finding
/// and the click (the dashboard redraws its cards as it polls): a stale
/// element is not clicked, so the retry clicks once.
async fn click_id(page: &Client, id: &str) {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        match by_id(page, id).await.click().await {
            Ok(_) => return,
            Err(e) if e.is_stale_element_reference() && Instant::now() < deadline => {}
            Err(e) => panic!("clicking #{id}: {e}"),
        }
    }
}

/// Types `text` into the input `#id` over what it held.
async fn type_into(page: &Client, id: &str, text: &str) {
    let input = by_id(page, id).await;
    input.click().await.unwrap();
    input.send_keys(&(Key::Control + "a")).await.unwrap();
    input.send_keys(&(Key::Null + text)).await.unwrap();
}

/// Sets the demo's weights with the page's inputs and button, and waits
/// until the page shows them in force.
async fn set_weights(page: &Client, blue: u32, green: u32) {
    type_into(page, "weight-api-blue", &blue.to_string()).await;
    type_into(page, "weight-api-green", &green.to_string()).await;
    click_id(page, "set-weights-api").await;
    wait_text(page, "live-api-blue", &blue.to_string()).await;
    wait_text(page, "live-api-green", &green.to_string()).await;
}

/// Writes `docs/screenshots/{name}.png` when `SWITCHYARD_SCREENSHOTS` is
/// set (the README shows them).
async fn screenshot(page: &Client, name: &str) {
    if std::env::var_os("SWITCHYARD_SCREENSHOTS").is_none() {
        return;
    }
    let png = page.screenshot().await.unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_moves_traffic_in_a_browser() {
    let Some((_driver, page)) = browser().await else {
        return;
    };
    let demo = demo().await;
    // Run apart so that the session ends (and chromium with it) whatever
    // happens, then fail as the steps failed.
    let steps = tokio::spawn({
        let page = page.clone();
        async move { drive(&page, &demo).await }
    })
    .await;
    let _ = page.close().await;
    if let Err(e) = steps {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn drive(page: &Client, demo: &Demo) {
    page.goto(&format!("http://{}/ui", demo.admin))
        .await
        .unwrap();

    // A wrong key is refused, and the page says so.
    type_into(page, "login-key", "not-the-key").await;
    click_id(page, "login-submit").await;
    wait_contains(page, "login-error", "Key refused").await;
    wait_contains(page, "login-error", "401").await;
    assert!(!by_id(page, "views").await.is_displayed().await.unwrap());
    screenshot(page, "login-refused").await;

    // The right key opens the demo's weights: all blue.
    type_into(page, "login-key", ADMIN_KEY).await;
    click_id(page, "login-submit").await;
    wait_text(page, "live-api-blue", "100").await;
    wait_text(page, "live-api-green", "0").await;
    assert!(!by_id(page, "login").await.is_displayed().await.unwrap());
    assert_eq!(demo.traffic(200).await, (200, 0));

    // Weights moved with the page's inputs: the split and the traffic
    // follow.
    set_weights(page, 70, 30).await;
    assert_eq!(demo.weights("api").await, json!({"blue": 70, "green": 30}));
    let (blue, green) = demo.traffic(200).await;
    assert!(
        (30..=90).contains(&green),
        "70/30 gave {blue} blue, {green} green"
    );

    // Polls with traffic between them, for the charts (for the README's
    // screenshot, half a minute of it, the canary raised on the way).
    let rounds = if std::env::var_os("SWITCHYARD_SCREENSHOTS").is_some() {
        20
    } else {
        3
    };
    for round in 0..rounds {
        if round == rounds / 2 && rounds > 3 {
            set_weights(page, 50, 50).await;
        }
        demo.traffic(40 + 3 * round).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    wait_contains(page, "notice", "Updated").await;
    screenshot(page, "splits").await;
    set_weights(page, 70, 30).await;

    // Promote green: all traffic to green.
    click_id(page, "promote-api-green").await;
    wait_text(page, "live-api-green", "100").await;
    wait_text(page, "live-api-blue", "0").await;
    assert_eq!(demo.weights("api").await, json!({"blue": 0, "green": 100}));
    // The split's card compares the versions' servers: green's two carry
    // all of it, and blue's one could not take it back at that load.
    wait_contains(page, "compare-api", "2 of 2").await;
    wait_contains(
        page,
        "compare-api",
        "`blue` has 1 healthy endpoint(s); to take all of the traffic",
    )
    .await;
    assert_eq!(demo.traffic(200).await, (0, 200));

    // Roll back: the weights before the promotion, and traffic with them.
    click_id(page, "rollback-api").await;
    wait_text(page, "live-api-green", "30").await;
    wait_text(page, "live-api-blue", "70").await;
    assert_eq!(demo.weights("api").await, json!({"blue": 70, "green": 30}));
    let (blue, green) = demo.traffic(200).await;
    assert!(
        (30..=90).contains(&green),
        "70/30 gave {blue} blue, {green} green"
    );

    // The other views of the demo.
    for view in ["upstreams", "servers", "keys"] {
        page.find(Locator::Css(&format!("#tabs button[data-view='{view}']")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let section = by_id(page, &format!("view-{view}")).await;
        assert!(section.is_displayed().await.unwrap(), "{view}");
        screenshot(page, view).await;
    }
    // The demo's upstreams and keys are listed (hidden ones too: their
    // text, not what is rendered).
    let text = async |id: &str| {
        by_id(page, id)
            .await
            .prop("textContent")
            .await
            .unwrap()
            .unwrap_or_default()
    };
    let upstreams = text("upstreams").await;
    assert!(
        upstreams.contains("green") && upstreams.contains("healthy"),
        "{upstreams}"
    );
    let keys = text("keys").await;
    assert!(keys.contains("demo") && keys.contains("guest"), "{keys}");
    // The server the gateway is served by: its address, serving, every
    // request sent so far handed on (929 by now; the view shows them by
    // the next poll), none panicked, and a rate.
    // Read in one script: each poll builds the table anew, so an element
    // found in one call may be gone by the next.
    let cells = async || -> Vec<String> {
        let cells = page
            .execute(
                "return Array.from(document.querySelectorAll(\
                 \"#servers tr[data-server='gateway'] > *\"), (c) => c.textContent);",
                vec![],
            )
            .await
            .unwrap();
        serde_json::from_value(cells).unwrap()
    };
    let requests_shown = async |at_least: u64| {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let row = cells().await;
            let shown = row.get(5).and_then(|n| n.parse::<u64>().ok());
            if shown.is_some_and(|n| n >= at_least) && row[6] != "–" {
                return row;
            }
            assert!(
                Instant::now() < deadline,
                "the servers' view stays at {row:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let row = requests_shown(929).await;
    assert_eq!(row[0], "gateway", "{row:?}");
    assert_eq!(row[1], demo.gateway.to_string(), "{row:?}");
    assert_eq!(row[2], "serving", "{row:?}");
    assert_eq!(row[10], "0", "{row:?}");
    let shown: u64 = row[5].parse().unwrap();
    demo.traffic(50).await;
    requests_shown(shown + 50).await;

    // A rollout started from the page advances through its steps (to its
    // pause at 40 %), and the traffic follows; its abort sends all of it
    // back to blue.
    click_id(page, "tab-rollouts").await;
    wait_text(page, "rollout-state-api", "idle").await;
    click_id(page, "rollout-start-api").await;
    wait_text(page, "rollout-state-api", "paused").await;
    assert_eq!(demo.weights("api").await, json!({"blue": 60, "green": 40}));
    let (blue, green) = demo.traffic(200).await;
    assert!(
        (40..=120).contains(&green),
        "60/40 gave {blue} blue, {green} green"
    );
    if std::env::var_os("SWITCHYARD_SCREENSHOTS").is_some() {
        // Traffic through a poll, for verdicts with figures in the shot.
        let until = Instant::now() + Duration::from_millis(2500);
        while Instant::now() < until {
            demo.traffic(20).await;
        }
    }
    screenshot(page, "rollouts").await;
    // Abort asks to be pressed twice.
    click_id(page, "rollout-abort-api").await;
    click_id(page, "rollout-abort-api").await;
    wait_text(page, "rollout-state-api", "aborted").await;
    assert_eq!(demo.weights("api").await, json!({"blue": 100, "green": 0}));
    assert_eq!(demo.traffic(200).await, (200, 0));
}

// === a model route ===

/// A model route over a stand-in Chat Completions server: alias `chat`
/// over two priced versions, 80/20.
const MODEL_CONFIG: &str = r#"
[upstreams.llm]
url = "LLM_URL"

[admin]
keys = [{ key = "demo-admin-key", id = "admin" }]

[[routes]]
name = "ai"
path_prefix = "/v1"
[routes.model.catalog]
models = [{ name = "small-1", upstream = "llm" }, { name = "small-2", upstream = "llm" }]
aliases = [{ name = "chat", versions = { "small-1" = 80, "small-2" = 20 } }]
[routes.model.spend.prices.small-1]
input_per_million = 150000
output_per_million = 600000
[routes.model.spend.prices.small-2]
input_per_million = 300000
output_per_million = 1200000
"#;

/// Answers every chat completion with 12 prompt and 30 completion tokens.
async fn llm() -> SocketAddr {
    crate::support::providers::fixed_chat_server().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_a_model_route() {
    let Some((_driver, page)) = browser().await else {
        return;
    };
    let llm = llm().await;
    let config = MODEL_CONFIG.replace("LLM_URL", &format!("http://{llm}"));
    let gateway = Gateway::from_config(GatewayConfig::from_toml(&config).unwrap()).unwrap();
    let admin = net::serve(admin::router(&gateway).unwrap()).await;
    let addr = net::serve(Router::new().fallback_service(gateway)).await;
    let client: net::FullClient = HyperClient::builder(TokioExecutor::new()).build_http();
    for _ in 0..20 {
        let req = http::Request::post(format!("http://{addr}/v1/chat/completions"))
            .header(CONTENT_TYPE, "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
                    .to_string(),
            )))
            .unwrap();
        let res = net::exchange(&client, req).await;
        assert_eq!(res.status(), StatusCode::OK, "{:?}", res.body());
    }

    let steps = tokio::spawn({
        let page = page.clone();
        async move {
            let page = &page;
            page.goto(&format!("http://{admin}/ui#models"))
                .await
                .unwrap();
            type_into(page, "login-key", ADMIN_KEY).await;
            click_id(page, "login-submit").await;
            let card = page
                .wait()
                .at_most(PAGE_WAIT)
                .for_element(Locator::Css("[data-model-route='ai']"))
                .await
                .unwrap();
            let text = card.text().await.unwrap();
            for shown in ["chat", "small-1 80, small-2 20"] {
                assert!(text.contains(shown), "{shown:?} not in {text}");
            }
            // 20 answers of 12 + 30 tokens between the two versions.
            let mut prompt_tokens = 0;
            for model in ["small-1", "small-2"] {
                let cell = format!("tr[data-model='{model}'] td:nth-of-type(4)");
                let cell = card.find(Locator::Css(&cell)).await.unwrap();
                prompt_tokens += cell.text().await.unwrap().parse::<u64>().unwrap();
            }
            assert_eq!(prompt_tokens, 20 * 12, "{text}");
            screenshot(page, "models").await;
        }
    })
    .await;
    let _ = page.close().await;
    if let Err(e) = steps {
        std::panic::resume_unwind(e.into_panic());
    }
}
