#![cfg(feature = "admin")]
//! Rollouts of a gateway's routes (`[routes.rollout]`) driven only through
//! the admin API over real loopback HTTP, with real blue/green upstreams
//! under steady load and a webhook receiver recording the events:
//!
//! * a plan walked from start to promotion (a `pause_until_resumed` step
//!   resumed over HTTP), the webhook hearing every event in order, its
//!   first delivery refused once and retried;
//! * a failing canary rolled back by the analysis on its own;
//! * pause, skip and abort by hand, and what is refused (409, 404, 422);
//! * a reload while a rollout runs keeps the rollout's weights, also on a
//!   split the reload rebuilt;
//! * a record left running by a stopped gateway is aborted by the next
//!   one over the same state file (traffic back on stable, webhook told);
//! * the configuration: read from TOML, and refused with located problems.
//!
//! Real time, kept short (300 ms analysis windows); timeouts only guard
//! against hangs, no assertion is about speed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use switchyard::gateway::{Gateway, GatewayConfig, admin};
use switchyard::rollout::RolloutState;

use crate::support::net::{FullClient, exchange, serve};
use crate::support::temp::TempDir;

const HANG_GUARD: Duration = Duration::from_secs(20);

/// A version that answers its name, 500 while `failing`.
async fn version(name: &'static str, failing: Arc<AtomicBool>) -> SocketAddr {
    serve(Router::new().fallback(move || {
        let failing = failing.clone();
        async move {
            let status = if failing.load(SeqCst) {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            };
            (status, name)
        }
    }))
    .await
}

/// Records the JSON bodies posted to it; refuses the first `refuse` with
/// a 500.
#[derive(Clone, Default)]
struct Receiver {
    events: Arc<Mutex<Vec<Value>>>,
    refuse: Arc<AtomicUsize>,
    attempts: Arc<AtomicUsize>,
}

impl Receiver {
    async fn serve(&self) -> SocketAddr {
        let me = self.clone();
        serve(
            Router::new().fallback(move |headers: http::HeaderMap, body: Bytes| {
                let me = me.clone();
                async move {
                    me.attempts.fetch_add(1, SeqCst);
                    assert_eq!(headers["authorization"], "Bearer hook-secret");
                    if me
                        .refuse
                        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        return StatusCode::INTERNAL_SERVER_ERROR;
                    }
                    me.events
                        .lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    StatusCode::NO_CONTENT
                }
            }),
        )
        .await
    }

    fn kinds(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect()
    }
}

fn config(
    blue: SocketAddr,
    green: SocketAddr,
    hook: SocketAddr,
    extra: &str,
    steps: &str,
) -> String {
    format!(
        r#"
[upstreams.blue]
url = "http://{blue}"
[upstreams.green]
url = "http://{green}"

[admin]
keys = [{{ key = "root-key", id = "root" }}, {{ key = "read-key", id = "viewer", read_only = true }}]

[[rollouts.webhooks]]
url = "http://{hook}/hooks/rollout?team=web"
headers = {{ authorization = "Bearer hook-secret" }}
retries = 3

{extra}

[[routes]]
name = "api"
split.targets = [
    {{ name = "blue", upstream = "blue", weight = 100 }},
    {{ name = "green", upstream = "green", weight = 0 }},
]
[routes.rollout]
stable = "blue"
canary = "green"
plan.steps = {steps}
# Latency on loopback under a test's load is noise: the error rate judges.
plan.analysis = {{ interval = "300ms", check_every = "50ms", min_requests = 5, max_error_rate = 0.05, max_p99_ratio = 1000.0 }}
"#
    )
}

struct Harness {
    gateway: Gateway,
    admin: SocketAddr,
    client: FullClient,
    /// Which version answered each request of the load.
    answers: Arc<Mutex<Vec<String>>>,
    load: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.load.abort();
    }
}

impl Harness {
    async fn start(config: &str) -> Self {
        let gateway = Gateway::from_config(GatewayConfig::from_toml(config).unwrap()).unwrap();
        let addr = serve(Router::new().fallback_service(gateway.clone())).await;
        let admin = serve(admin::router(&gateway).unwrap()).await;
        let client: FullClient = Client::builder(TokioExecutor::new()).build_http();
        let answers = Arc::new(Mutex::new(Vec::new()));
        // Steady load through the gateway: about 500 requests a second.
        let load = tokio::spawn({
            let (client, answers) = (client.clone(), answers.clone());
            async move {
                loop {
                    let req = Request::get(format!("http://{addr}/"))
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    if let Ok(Ok(res)) = tokio::time::timeout(HANG_GUARD, client.request(req)).await
                    {
                        use http_body_util::BodyExt;
                        let body = res.into_body().collect().await.unwrap().to_bytes();
                        answers
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&body).into_owned());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
        Self {
            gateway,
            admin,
            client,
            answers,
            load,
        }
    }

    async fn admin(
        &self,
        method: Method,
        path: &str,
        key: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", self.admin))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(if body.is_null() {
                Bytes::new()
            } else {
                Bytes::from(body.to_string())
            }))
            .unwrap();
        let res = exchange(&self.client, req).await;
        let json = serde_json::from_slice(res.body()).unwrap_or(Value::Null);
        (res.status(), json)
    }

    async fn status(&self) -> Value {
        let (code, s) = self
            .admin(Method::GET, "/rollouts/api", "root-key", Value::Null)
            .await;
        assert_eq!(code, StatusCode::OK, "{s}");
        s
    }

    /// Resumes the rollout paused here (a `pause_until_resumed` before its
    /// last step) and waits for its promotion: all traffic on green.
    async fn resume_to_promotion(&self) {
        let (code, body) = self
            .admin(
                Method::POST,
                "/rollouts/api/resume",
                "root-key",
                Value::Null,
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
        self.until("promoted").await;
        assert_eq!((self.weight("blue"), self.weight("green")), (0, 100));
    }

    /// Waits until the rollout's state is `state`.
    async fn until(&self, state: &str) -> Value {
        let last = Mutex::new(Value::Null);
        tokio::time::timeout(HANG_GUARD, async {
            loop {
                let s = self.status().await;
                if s["state"] == state {
                    return s;
                }
                *last.lock().unwrap() = s;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never {state}: {}", last.lock().unwrap()))
    }

    /// The share of `name` among the next `n` answers of the load.
    async fn share(&self, name: &str, n: usize) -> f64 {
        let from = self.answers.lock().unwrap().len();
        tokio::time::timeout(HANG_GUARD, async {
            while self.answers.lock().unwrap().len() < from + n {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the load stopped");
        let answers = self.answers.lock().unwrap();
        let hits = answers[from..from + n]
            .iter()
            .filter(|a| *a == name)
            .count();
        hits as f64 / n as f64
    }

    fn weight(&self, target: &str) -> u32 {
        self.gateway
            .split("api")
            .unwrap()
            .weights()
            .get(target)
            .unwrap()
    }
}

async fn hear(receiver: &Receiver, last: &str) -> Vec<Value> {
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let events = receiver.events.lock().unwrap().clone();
            if let Some(at) = events.iter().position(|e| e["event"] == last) {
                return events[..=at].to_vec();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the webhook never heard `{last}`: {:?}", receiver.kinds()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_driven_over_http_is_promoted_and_its_webhook_hears_every_event_in_order() {
    let ok = Arc::new(AtomicBool::new(false));
    let (blue, green) = (
        version("blue", ok.clone()).await,
        version("green", ok).await,
    );
    let receiver = Receiver::default();
    receiver.refuse.store(1, SeqCst);
    let hook = receiver.serve().await;
    let steps = r#"[{ set_weight = 25 }, { analyze = { windows = 1 } }, "pause_until_resumed", { set_weight = 60 }, { analyze = { windows = 1 } }]"#;
    let h = Harness::start(&config(blue, green, hook, "", steps)).await;

    let (code, idle) = h
        .admin(Method::GET, "/rollouts", "root-key", Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(idle["rollouts"][0]["state"], "idle");
    assert_eq!(idle["rollouts"][0]["steps"].as_array().unwrap().len(), 5);
    // A read-only key reads, and cannot start one.
    let (code, _) = h
        .admin(Method::POST, "/rollouts/api", "read-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);

    let (code, started) = h
        .admin(Method::POST, "/rollouts/api", "root-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{started}");
    assert_eq!(started["started_by"], "root");
    // One at a time.
    let (code, _) = h
        .admin(Method::POST, "/rollouts/api", "root-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::CONFLICT);

    // Paused by its third step, a passing verdict behind it.
    let paused = h.until("paused").await;
    assert_eq!(paused["step"], 2);
    assert_eq!(paused["canary_weight"], 25);
    assert_eq!(paused["reason"], "step");
    assert_eq!(paused["verdicts"][0]["outcome"], "pass", "{paused}");
    assert_eq!((h.weight("blue"), h.weight("green")), (75, 25));
    let green_share = h.share("green", 400).await;
    assert!(
        (0.15..0.35).contains(&green_share),
        "green had {green_share}"
    );

    let (code, resumed) = h
        .admin(
            Method::POST,
            "/rollouts/api/resume",
            "root-key",
            Value::Null,
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_ne!(resumed["state"], "paused");
    let done = h.until("promoted").await;
    assert_eq!(done["canary_weight"], 100);
    assert_eq!((h.weight("blue"), h.weight("green")), (0, 100));
    assert_eq!(h.share("green", 100).await, 1.0);
    // Nothing left to control.
    let (code, _) = h
        .admin(Method::POST, "/rollouts/api/pause", "root-key", Value::Null)
        .await;
    assert_eq!(code, StatusCode::CONFLICT);

    // The webhook: every event, in order, the refused first one retried.
    let events = hear(&receiver, "promoted").await;
    let kinds: Vec<String> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds[0], "started", "{kinds:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "{kinds:?}"
    );
    let order: Vec<&str> = kinds
        .iter()
        .map(String::as_str)
        .filter(|k| *k != "verdict")
        .collect();
    assert_eq!(
        order,
        [
            "started", "step", "step", "step", "paused", "resumed", "step", "step", "promoted"
        ],
        "{kinds:?}"
    );
    assert!(kinds.contains(&"verdict".to_owned()));
    assert_eq!(receiver.attempts.load(SeqCst), events.len() + 1);
    assert!(
        events
            .iter()
            .all(|e| e["route"] == "api" && e["canary"] == "green")
    );
    // The history holds the same events.
    let history = done["history"].as_array().unwrap();
    assert_eq!(history.len(), events.len());
    assert_eq!(history.last().unwrap()["kind"], "promoted");

    // And `/metrics` the rollout's families.
    let text = h.gateway.metrics();
    let samples =
        crate::gateway_e2e::parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let value = |name: &str, extra: Option<(&str, &str)>| {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.get("route").map(String::as_str) == Some("api")
                    && extra.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v))
            })
            .unwrap_or_else(|| panic!("no {name} {extra:?}\n{text}"))
            .value
    };
    assert_eq!(
        value("switchyard_rollout_state", Some(("state", "promoted"))),
        1.0
    );
    assert_eq!(
        value("switchyard_rollout_state", Some(("state", "running"))),
        0.0
    );
    assert_eq!(value("switchyard_rollout_step", None), 5.0);
    assert_eq!(value("switchyard_rollout_canary_weight", None), 100.0);
    assert_eq!(
        value("switchyard_rollout_last_verdict", Some(("outcome", "pass"))),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_on_its_own() {
    let ok = Arc::new(AtomicBool::new(false));
    let failing = Arc::new(AtomicBool::new(true));
    let (blue, green) = (version("blue", ok).await, version("green", failing).await);
    let receiver = Receiver::default();
    let hook = receiver.serve().await;
    let steps = r#"[{ set_weight = 30 }, { analyze = { windows = 3 } }, { set_weight = 100 }]"#;
    let h = Harness::start(&config(blue, green, hook, "", steps)).await;

    let (code, _) = h
        .admin(
            Method::POST,
            "/rollouts/api",
            "root-key",
            json!({ "canary": "green" }),
        )
        .await;
    assert_eq!(code, StatusCode::CREATED);
    let end = h.until("aborted").await;
    let reason = end["reason"].as_str().unwrap();
    assert!(reason.contains("analysis failed"), "{reason}");
    assert_eq!(
        end["verdicts"].as_array().unwrap().last().unwrap()["outcome"],
        "fail"
    );
    assert_eq!((h.weight("blue"), h.weight("green")), (100, 0));
    assert_eq!(h.share("blue", 100).await, 1.0);
    let events = hear(&receiver, "aborted").await;
    assert_eq!(events.last().unwrap()["canary_weight"], 0);
    assert!(
        events.last().unwrap()["reason"]
            .as_str()
            .unwrap()
            .contains("analysis failed")
    );

    // A canary other than the plan's is refused; the plan can run again.
    let (code, _) = h
        .admin(
            Method::POST,
            "/rollouts/api",
            "root-key",
            json!({ "canary": "blue" }),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let (code, again) = h
        .admin(Method::POST, "/rollouts/api", "root-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::CREATED, "{again}");
    // A new record: the last one's history is not carried into it.
    assert!(
        again["history"].as_array().map_or(0, Vec::len) <= 3,
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_skip_and_abort_by_hand() {
    let ok = Arc::new(AtomicBool::new(false));
    let (blue, green) = (
        version("blue", ok.clone()).await,
        version("green", ok).await,
    );
    let receiver = Receiver::default();
    let hook = receiver.serve().await;
    let steps = r#"[{ set_weight = 10 }, { pause = "1h" }, { set_weight = 40 }, { pause = "1h" }, { set_weight = 80 }]"#;
    let h = Harness::start(&config(blue, green, hook, "", steps)).await;

    let (code, _) = h
        .admin(Method::POST, "/rollouts/nope", "root-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    let (code, _) = h
        .admin(Method::POST, "/rollouts/api/pause", "root-key", Value::Null)
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "nothing runs yet");
    let (code, _) = h
        .admin(Method::POST, "/rollouts/api", "root-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::CREATED);

    let (code, s) = h
        .admin(Method::POST, "/rollouts/api/pause", "root-key", Value::Null)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(s["state"], "paused");
    assert_eq!(s["reason"], "manual");
    let (_, s) = h
        .admin(
            Method::POST,
            "/rollouts/api/resume",
            "root-key",
            Value::Null,
        )
        .await;
    assert_eq!(s["state"], "running");

    // Skip past the first hour: to the second pause, at 40 %.
    let (code, s) = h
        .admin(
            Method::POST,
            "/rollouts/api/skip",
            "root-key",
            json!({ "step": 3 }),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{s}");
    assert_eq!(s["step"], 3, "{s}");
    assert_eq!(s["canary_weight"], 40);
    assert_eq!((h.weight("blue"), h.weight("green")), (60, 40));
    let (code, _) = h
        .admin(
            Method::POST,
            "/rollouts/api/skip",
            "root-key",
            json!({ "step": 9 }),
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY);
    let (code, _) = h
        .admin(Method::POST, "/rollouts/api/skip", "root-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    let (code, _) = h
        .admin(Method::POST, "/rollouts/api/jump", "root-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    let (code, s) = h
        .admin(
            Method::POST,
            "/rollouts/api/abort",
            "root-key",
            json!({ "reason": "bad latency" }),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(s["state"], "aborted");
    assert!(
        s["reason"].as_str().unwrap().contains("bad latency (root)"),
        "{s}"
    );
    assert_eq!((h.weight("blue"), h.weight("green")), (100, 0));
    assert_eq!(h.share("blue", 100).await, 1.0);
    // Verdicts come and go with the analysis windows: the rest, in order.
    let kinds: Vec<String> = hear(&receiver, "aborted")
        .await
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .filter(|k| k != "verdict")
        .collect();
    assert_eq!(
        kinds,
        [
            "started", "step", "step", "paused", "resumed", "skipped", "step", "aborted"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_a_running_rollouts_weights() {
    let ok = Arc::new(AtomicBool::new(false));
    let (blue, green) = (
        version("blue", ok.clone()).await,
        version("green", ok.clone()).await,
    );
    let green2 = version("green", ok).await;
    let receiver = Receiver::default();
    let hook = receiver.serve().await;
    let steps = r#"[{ set_weight = 30 }, "pause_until_resumed", { set_weight = 70 }, "pause_until_resumed"]"#;
    let text = config(blue, green, hook, "", steps);
    let h = Harness::start(&text).await;
    let (code, _) = h
        .admin(Method::POST, "/rollouts/api", "root-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::CREATED);
    h.until("paused").await;
    assert_eq!(h.weight("green"), 30);

    // The same configuration again (it says green 0): the rollout's 30 stays.
    h.gateway
        .reload(GatewayConfig::from_toml(&text).unwrap())
        .unwrap();
    assert_eq!((h.weight("blue"), h.weight("green")), (70, 30));
    // Green moved to another server: the split is built again, and the
    // rollout drives the new one.
    let moved = config(blue, green2, hook, "", steps);
    h.gateway
        .reload(GatewayConfig::from_toml(&moved).unwrap())
        .unwrap();
    assert_eq!((h.weight("blue"), h.weight("green")), (70, 30));
    let (_, s) = h
        .admin(
            Method::POST,
            "/rollouts/api/resume",
            "root-key",
            Value::Null,
        )
        .await;
    let resumed = s["history"].as_array().unwrap();
    assert!(resumed.iter().any(|e| e["kind"] == "resumed"), "{s}");
    let s = h.until("paused").await;
    assert_eq!(s["canary_weight"], 70);
    assert_eq!((h.weight("blue"), h.weight("green")), (30, 70));
    let share = h.share("green", 400).await;
    assert!((0.6..0.8).contains(&share), "green had {share}");
}

/// A record left running by a gateway that stopped: the next gateway
/// over the same store carries it on from its step when it has the same
/// plan (`lead`), and aborts it (traffic back on stable) when its plan is
/// not the record's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_left_running_by_a_stopped_gateway_is_carried_on_or_aborted_by_the_next() {
    let ok = Arc::new(AtomicBool::new(false));
    let (blue, green) = (
        version("blue", ok.clone()).await,
        version("green", ok).await,
    );
    let receiver = Receiver::default();
    let hook = receiver.serve().await;
    let dir = TempDir::new("gw-rollout-restart");
    let state = dir.join("state.json");
    let extra = format!("[platform]\nstate_file = \"{}\"", state.display());
    let steps = r#"[{ set_weight = 50 }, "pause_until_resumed"]"#;
    let text = config(blue, green, hook, &extra, steps);
    {
        let h = Harness::start(&text).await;
        let (code, _) = h
            .admin(Method::POST, "/rollouts/api", "root-key", json!({}))
            .await;
        assert_eq!(code, StatusCode::CREATED);
        h.until("paused").await;
    }
    // The record as it is kept (written by a task of its own): paused at
    // step 1, 50 %.
    let kept: Value = tokio::time::timeout(HANG_GUARD, async {
        loop {
            if let Ok(text) = std::fs::read_to_string(&state) {
                let kept: Value = serde_json::from_str(&text).unwrap();
                if kept["rollouts"]["api"]["state"] == "paused" {
                    return kept;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the record was never written");
    let record = &kept["rollouts"]["api"];
    assert_eq!(record["state"], "paused", "{kept}");
    assert_eq!(record["canary_weight"], 50);

    // As a gateway that crashed leaves it: the heartbeat long gone. (A
    // copy: the first gateway still runs in this process, and keeps its
    // file.)
    let mut stale = kept.clone();
    stale["rollouts"]["api"]["beat"] = json!(1);
    stale["rollouts"]["api"]["beat_ms"] = json!(1000);
    let stale = stale.to_string();

    // The same plan: carried on, paused where it was, at 50 %.
    let copy = dir.join("copy.json");
    std::fs::write(&copy, &stale).unwrap();
    let receiver = Receiver::default();
    let hook2 = receiver.serve().await;
    let extra = format!("[platform]\nstate_file = \"{}\"", copy.display());
    let h = Harness::start(&config(blue, green, hook2, &extra, steps)).await;
    let s = h.until("paused").await;
    assert_eq!((h.weight("blue"), h.weight("green")), (50, 50));
    assert_eq!(s["step"], 1, "{s}");
    let lead = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "lead")
        .unwrap_or_else(|| panic!("no lead in {s}"))
        .clone();
    assert!(
        lead["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("carries it on"),
        "{lead}"
    );
    assert_eq!(
        hear(&receiver, "lead").await.last().unwrap()["route"],
        "api"
    );
    h.resume_to_promotion().await;
    drop(h);

    // Another plan: it cannot carry it on, and aborts it.
    let copy = dir.join("copy2.json");
    std::fs::write(&copy, &stale).unwrap();
    let receiver = Receiver::default();
    let hook3 = receiver.serve().await;
    let extra = format!("[platform]\nstate_file = \"{}\"", copy.display());
    let other = r#"[{ set_weight = 20 }, "pause_until_resumed"]"#;
    let half = config(blue, green, hook3, &extra, other)
        .replace("weight = 100", "weight = 50")
        .replace(
            "{ name = \"green\", upstream = \"green\", weight = 0 }",
            "{ name = \"green\", upstream = \"green\", weight = 50 }",
        );
    let h = Harness::start(&half).await;
    assert_eq!((h.weight("blue"), h.weight("green")), (100, 0));
    let s = h.status().await;
    assert_eq!(s["state"], "aborted");
    assert!(
        s["reason"].as_str().unwrap().contains("cannot carry on"),
        "{s}"
    );
    assert_eq!(
        hear(&receiver, "aborted").await.last().unwrap()["route"],
        "api"
    );
    let kept: Value = serde_json::from_str(&std::fs::read_to_string(&copy).unwrap()).unwrap();
    assert_eq!(kept["rollouts"]["api"]["state"], "aborted");
    // And it can start again.
    let (code, _) = h
        .admin(Method::POST, "/rollouts/api", "root-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::CREATED);
}

#[test]
fn rollout_settings_are_read_and_checked() {
    let blue: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let steps = r#"[{ set_weight = 10 }, { analyze = { windows = 2 } }]"#;
    let text = config(blue, blue, blue, "", steps);
    let config_ok = GatewayConfig::from_toml(&text).unwrap();
    let rollout = config_ok.routes[0].rollout.as_ref().unwrap();
    assert_eq!(
        (rollout.stable.as_str(), rollout.canary.as_str()),
        ("blue", "green")
    );
    assert_eq!(rollout.plan.steps.len(), 2);
    assert_eq!(config_ok.rollouts.webhooks[0].retries, Some(3));
    // Webhook headers are secrets in `GET /config`, and come back.
    let shown = config_ok.redacted();
    assert_eq!(
        shown.rollouts.webhooks[0].headers["authorization"],
        "<redacted>"
    );
    let mut back = shown.clone();
    back.restore_redacted(&config_ok);
    assert_eq!(back.rollouts, config_ok.rollouts);

    let problems = |text: &str| -> Vec<(String, String)> {
        Gateway::from_config(GatewayConfig::from_toml(text).unwrap())
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| (p.at, p.message))
            .collect()
    };
    let p = problems(&text.replace("canary = \"green\"", "canary = \"red\""));
    assert_eq!(p[0].0, "routes[0].rollout", "{p:?}");
    assert!(p[0].1.contains("red"), "{p:?}");
    let p = problems(&text.replace("canary = \"green\"", "canary = \"blue\""));
    assert_eq!(p[0].0, "routes[0].rollout", "{p:?}");
    let p = problems(&text.replace("set_weight = 10", "set_weight = 110"));
    assert_eq!(p[0].0, "routes[0].rollout.plan", "{p:?}");
    let p = problems(&text.replace("canary = \"green\"", "canary = \"green\"\nalias = \"gpt\""));
    assert_eq!(p[0].0, "routes[0].rollout", "{p:?}");
    assert!(p[0].1.contains("model"), "{p:?}");
    let p = problems(&text.replace(
        "url = \"http://127.0.0.1:1/hooks",
        "url = \"ftp://127.0.0.1:1/hooks",
    ));
    assert_eq!(p[0].0, "rollouts.webhooks[0].url", "{p:?}");
    let p = problems(&text.replace(
        "retries = 3",
        "retries = 3\nevents = [\"promoted\", \"exploded\"]",
    ));
    assert_eq!(p[0].0, "rollouts.webhooks[0].events", "{p:?}");
    let p = problems(&text.replace("authorization =", "\"bad header\" ="));
    assert_eq!(p[0].0, "rollouts.webhooks[0].headers", "{p:?}");
    let p = problems(&text.replace("retries = 3", "retries = 3\n[rollouts]\nlease_ms = 5000"));
    assert_eq!(p[0].0, "rollouts.lease_ms", "{p:?}");
    // Unknown fields are refused by the reader, with their line.
    let err = GatewayConfig::from_toml(
        &text.replace("stable = \"blue\"", "stable = \"blue\"\ncanry = \"x\""),
    )
    .unwrap_err();
    assert!(err.to_string().contains("canry"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_redis_run_one_rollout_of_a_route_at_a_time() {
    use crate::support::redis::RedisServer;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let ok = Arc::new(AtomicBool::new(false));
    let (blue, green) = (
        version("blue", ok.clone()).await,
        version("green", ok).await,
    );
    let receiver = Receiver::default();
    let hook = receiver.serve().await;
    let extra = format!(
        "[redis]\nurl = \"redis://127.0.0.1:{}/\"\n[platform]\nredis = true",
        redis.port
    );
    let steps = r#"[{ set_weight = 30 }, "pause_until_resumed"]"#;
    let text = config(blue, green, hook, &extra, steps);
    let (a, b) = (Harness::start(&text).await, Harness::start(&text).await);

    let (code, _) = a
        .admin(Method::POST, "/rollouts/api", "root-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::CREATED);
    a.until("paused").await;
    // Its record, in Redis with a fresh heartbeat, keeps the other
    // replica from starting a second rollout of the route.
    let (code, body) = b
        .admin(Method::POST, "/rollouts/api", "root-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    // A command given to B is left in the record for A, which carries it
    // out when the store announces the change.
    let (code, body) = b
        .admin(
            Method::POST,
            "/rollouts/api/abort",
            "root-key",
            json!({ "reason": "asked on B" }),
        )
        .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["forwarded"], true);
    let s = a.until("aborted").await;
    assert!(
        s["reason"].as_str().unwrap().contains("asked on B (root)"),
        "{s}"
    );
    // Once it has ended there, B may start one.
    tokio::time::timeout(HANG_GUARD, async {
        loop {
            let (code, _) = b
                .admin(Method::POST, "/rollouts/api", "root-key", json!({}))
                .await;
            if code == StatusCode::CREATED {
                return;
            }
            assert_eq!(code, StatusCode::CONFLICT);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the aborted record never freed the route");
    b.until("paused").await;
    let (code, _) = a
        .admin(Method::POST, "/rollouts/api", "root-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "B's rollout runs now");
}

/// Two replicas over Redis: the one that started the rollout leads it;
/// when it stops, the other takes the lead once the lease has run out and
/// carries the rollout on from its step, to promotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lead_moves_when_its_replica_stops() {
    use crate::support::redis::RedisServer;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let ok = Arc::new(AtomicBool::new(false));
    let (blue, green) = (
        version("blue", ok.clone()).await,
        version("green", ok).await,
    );
    let receiver = Receiver::default();
    let hook = receiver.serve().await;
    let extra = format!(
        "[redis]\nurl = \"redis://127.0.0.1:{}/\"\n[platform]\nredis = true\n\
         [rollouts]\nheartbeat_ms = 100\nlease_ms = 500",
        redis.port
    );
    let steps = r#"[{ set_weight = 30 }, "pause_until_resumed"]"#;
    let text = config(blue, green, hook, &extra, steps);
    // The leader, a gateway of its own (not served: dropping it stops it).
    let a = Gateway::from_config(GatewayConfig::from_toml(&text).unwrap()).unwrap();
    let handle = a.start_rollout("api", "root").unwrap();
    let b = Harness::start(&text).await;
    // B shows A's rollout, and does not run it.
    let s = b.until("paused").await;
    assert_eq!(s["canary_weight"], 30);
    assert!(b.gateway.rollout("api").is_none());
    let (code, _) = b
        .admin(Method::POST, "/rollouts/api", "root-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::CONFLICT);

    let stopped = std::time::Instant::now();
    drop(handle);
    drop(a);
    let lead = tokio::time::timeout(HANG_GUARD, async {
        loop {
            let s = b.status().await;
            // Its `lead`, then the step it carries on from again.
            if s["history"]
                .as_array()
                .is_some_and(|h| h.iter().any(|e| e["kind"] == "lead"))
                && s["state"] == "paused"
            {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("B never took the lead");
    let took = stopped.elapsed();
    eprintln!("the lead moved {took:?} after its replica stopped (lease 500 ms, heartbeat 100 ms)");
    assert!(b.gateway.rollout("api").is_some());
    assert_eq!(lead["state"], "paused", "{lead}");
    assert_eq!((b.weight("blue"), b.weight("green")), (70, 30));
    assert_eq!(
        hear(&receiver, "lead").await.last().unwrap()["route"],
        "api"
    );
    b.resume_to_promotion().await;
}

/// The gateway leading a rollout judges the fleet's traffic: here it
/// serves none itself, and the canary fails only on the other replica's
/// requests; with the replicas' counters shared (`samples_ms`), the
/// leader rolls it back. With them kept apart it sees nothing to judge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_judges_the_whole_fleets_traffic() {
    use crate::support::redis::RedisServer;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (ok, failing) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(true)),
    );
    let (blue, green) = (version("blue", ok).await, version("green", failing).await);
    let receiver = Receiver::default();
    let hook = receiver.serve().await;
    let steps = r#"[{ set_weight = 50 }, { analyze = { windows = 3 } }, { set_weight = 100 }]"#;
    let config = |samples_ms: u64, prefix: &str| {
        let extra = format!(
            "[redis]\nurl = \"redis://127.0.0.1:{}/\"\n[platform]\nredis = true\nredis_prefix = \"{prefix}\"\n\
             [weight_sync]\ncheck_interval_ms = 10\nprefix = \"{prefix}w:\"\n\
             [rollouts]\nsamples_ms = {samples_ms}",
            redis.port
        );
        config(blue, green, hook, &extra, steps)
    };

    // Kept apart: the leader sees no traffic, and judges nothing.
    let text = config(0, "apart:");
    let a = Gateway::from_config(GatewayConfig::from_toml(&text).unwrap()).unwrap();
    let b = Harness::start(&text).await;
    let handle = a.start_rollout("api", "root").unwrap();
    tokio::time::timeout(HANG_GUARD, async {
        while b.weight("green") != 50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("b never followed the canary's weight");
    // B's canary answers 500 to half its load all the while.
    let _ = b.share("green", 200).await;
    assert!(!handle.state().is_final(), "{:?}", handle.state());
    assert_eq!(
        handle
            .status()
            .verdicts
            .iter()
            .filter(|v| v.canary.answered > 0)
            .count(),
        0
    );
    handle.abort("the next part");
    drop((a, b));

    // Shared: the leader rolls the canary back on B's failures.
    let text = config(100, "shared:");
    let a = Gateway::from_config(GatewayConfig::from_toml(&text).unwrap()).unwrap();
    let b = Harness::start(&text).await;
    let handle = a.start_rollout("api", "root").unwrap();
    let end = tokio::time::timeout(HANG_GUARD, handle.finished())
        .await
        .expect("the leader never judged the canary");
    let RolloutState::Aborted { reason } = end else {
        panic!("{end:?}");
    };
    assert!(reason.contains("error rate"), "{reason}");
    let failing = handle
        .status()
        .verdicts
        .iter()
        .find(|v| v.canary.failed > 0)
        .cloned()
        .expect("a verdict saw the canary fail");
    assert!(failing.canary.answered >= 5, "{failing:?}");
    // And the weights went back on B too.
    tokio::time::timeout(HANG_GUARD, async {
        while b.weight("green") != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("b never went back to blue");
}

/// A leader cut off for longer than its lease finds, at its next
/// heartbeat, the record led by another gateway: it hands over, stopping
/// without touching the weights and without telling the webhooks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_finds_its_lead_taken_hands_over() {
    use crate::support::redis::RedisServer;
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let ok = Arc::new(AtomicBool::new(false));
    let (blue, green) = (
        version("blue", ok.clone()).await,
        version("green", ok).await,
    );
    let receiver = Receiver::default();
    let hook = receiver.serve().await;
    let extra = format!(
        "[redis]\nurl = \"redis://127.0.0.1:{}/\"\n[platform]\nredis = true\n\
         [rollouts]\nheartbeat_ms = 100\nlease_ms = 500",
        redis.port
    );
    let steps = r#"[{ set_weight = 30 }, "pause_until_resumed"]"#;
    let text = config(blue, green, hook, &extra, steps);
    let a = Harness::start(&text).await;
    let (code, _) = a
        .admin(Method::POST, "/rollouts/api", "root-key", json!({}))
        .await;
    assert_eq!(code, StatusCode::CREATED);
    a.until("paused").await;
    let handle = a.gateway.rollout("api").unwrap();
    hear(&receiver, "paused").await;

    // Another gateway's claim, as a takeover writes it.
    let mut conn = redis.manager().await;
    let key = "switchyard:state:rollouts";
    let text: String = redis::cmd("HGET")
        .arg(key)
        .arg("api")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut record: Value = serde_json::from_str(&text).unwrap();
    record["owner"] = json!(12345);
    // Its lease renewed ahead, so that A does not take the lead back
    // while the test looks.
    let ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        + 60_000;
    record["beat_ms"] = json!(u64::try_from(ahead).unwrap());
    let () = redis::cmd("HSET")
        .arg(key)
        .arg("api")
        .arg(record.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();

    let end = tokio::time::timeout(HANG_GUARD, handle.finished())
        .await
        .expect("the leader never handed over");
    let RolloutState::Aborted { reason } = end else {
        panic!("{end:?}");
    };
    assert!(reason.contains("handed over"), "{reason}");
    // The weights stay where the rollout left them, for the new leader.
    assert_eq!((a.weight("blue"), a.weight("green")), (70, 30));
    assert!(a.gateway.rollout("api").is_none());
    // Nobody is told of an abort: the rollout goes on elsewhere.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !receiver
            .events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "aborted"),
        "an abort was told"
    );
    // The record stays the new leader's.
    let text: String = redis::cmd("HGET")
        .arg(key)
        .arg("api")
        .query_async(&mut conn)
        .await
        .unwrap();
    let kept: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(kept["owner"], 12345);
    assert_eq!(kept["state"], "paused");
}
