//! A sticky canary ramp: green (v2) goes from 1 % to 10 %, 50 % and 100 %
//! of users, and no user who reached green is ever sent back to blue.
//!
//! ```text
//! cargo run --example canary_sticky                       # 127.0.0.1:8080, ramp by hand
//! cargo run --example canary_sticky -- --auto             # ramp 1 → 10 → 50 → 100 %, a step every 3 s
//! cargo run --example canary_sticky -- --port 0 --auto --every 0.5
//! ```
//!
//! Users are told apart by the `x-user` header. After every change of
//! weights the example replays a fixed cohort of 1000 simulated users
//! through the split and records which version served each of them;
//! `GET /admin/report` compares each step with the one before: how many
//! users are on green, how many moved onto green, and how many moved back
//! to blue (always 0 while the ramp only goes up).
//!
//! Copy this file to start your own ramp: replace the two `version`
//! routers with your real v1 and v2 (or with upstream proxies), use your
//! own user key (a cookie, an authenticated identity...), and protect
//! `/admin` before you expose it anywhere.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderName, Request, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use switchyard::key::KeyBy;
use switchyard::problem::Problem;
use switchyard::server::Server;
use switchyard::split::{Split, SplitHandle};
use tokio::sync::Mutex;
use tower::ServiceExt;

/// The canary's share of users at each step of the ramp, in percent.
const STEPS: [u32; 4] = [1, 10, 50, 100];
/// How many simulated users are replayed after every change.
const USERS: usize = 1000;

/// One version of the service. In a real app this is your v1 or v2 router.
fn version(name: &'static str) -> Router {
    Router::new().route("/", get(move || async move { format!("{name}\n") }))
}

/// Everything the admin routes and the ramp timer share.
#[derive(Clone)]
struct App {
    /// A clone of the split that serves HTTP: clones share weights and
    /// counters, so replaying users through it is replaying them through
    /// the live split.
    split: Split<Router>,
    handle: SplitHandle,
    /// One entry per change of weights, the first at 0 % (before the ramp).
    /// A mutex so that a change and the replay that follows it are one
    /// step: two ramps at once (a curl and the timer) never interleave.
    steps: Arc<Mutex<Vec<Step>>>,
}

/// What the simulated users saw after one change of weights.
struct Step {
    percent: u32,
    /// `on_green[u]`: whether simulated user `u` was served by green.
    on_green: Vec<bool>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;

    let split = Split::builder()
        .target("blue", version("blue v1"), 100)
        .target("green", version("green v2"), 0)
        // Sticky by user: weighted rendezvous hashing on `x-user`. The same
        // user keeps their version while the weights stay put, and raising
        // green's share only ever moves users *onto* green. Without a sticky
        // key each request would be a fresh draw, and at 10 % a user would
        // flip between v1 and v2 from one click to the next.
        .sticky(KeyBy::header(HeaderName::from_static("x-user")))
        // Every response says which version served it (handy with curl -i).
        .echo_header(HeaderName::from_static("x-switchyard-target"))
        .build()?;

    let app = App {
        handle: split.handle(),
        split: split.clone(),
        steps: Arc::new(Mutex::new(Vec::new())),
    };
    let admin = Router::new()
        .route("/ramp/{percent}", post(ramp_route))
        .route("/report", get(report_route))
        .with_state(app.clone());
    let router = Router::new().nest("/admin", admin).fallback_service(split);

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, args.port));
    let server = Server::bind(addr).await?;
    print_help(server.local_addr(), &args);

    // Record the starting point (0 %: everyone on blue), so that the first
    // step of the ramp has something to be compared with.
    // (`Problem` is a response, not a `std::error::Error`: hence `to_string`.)
    ramp(&app, 0).await.map_err(|p| p.to_string())?;

    if args.auto {
        // The automatic ramp is the same call as `POST /admin/ramp/next`,
        // on a timer. A real rollout would check error rates and latency
        // between steps (see `switchyard::rollout`) rather than wait blindly.
        let (app, every) = (app.clone(), args.every);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match next_step(&app).await {
                    Some(percent) => {
                        if let Err(e) = ramp(&app, percent).await {
                            eprintln!("[ramp] stopped: {e}");
                            return;
                        }
                    }
                    None => return, // at 100 %: the ramp is over
                }
            }
        });
    }

    server.serve(router).await?;
    Ok(())
}

// === the ramp ===

/// Sets green to `percent` of users, replays the simulated users and
/// records which version served each. Returns that step's summary.
async fn ramp(app: &App, percent: u32) -> Result<Value, Problem> {
    if percent > 100 {
        return Err(Problem::new(StatusCode::UNPROCESSABLE_ENTITY)
            .detail(format!("green's share must be 0 to 100 %, not {percent}")));
    }
    let mut steps = app.steps.lock().await;
    // Weights are relative; summing to 100 makes them read as percents.
    // At 100 % blue's weight is 0: it gets no new users, and
    // `handle.drained("blue")` would tell when it may be stopped.
    app.handle
        .set_weights([("blue", 100 - percent), ("green", percent)])
        .map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY).detail(e.to_string()))?;
    let on_green = replay_users(&app.split).await?;
    steps.push(Step { percent, on_green });

    let summary = summarize(&steps, steps.len() - 1);
    println!(
        "[ramp] green {percent:>3} %: {on}/{USERS} users on green, {to} moved to green, {back} moved back to blue",
        on = summary["on_green"],
        to = summary["moved_to_green"],
        back = summary["moved_back_to_blue"],
    );
    Ok(summary)
}

/// The step after the current one, or `None` at (or past) the last one.
async fn next_step(app: &App) -> Option<u32> {
    let current = app.steps.lock().await.last().map_or(0, |s| s.percent);
    STEPS.into_iter().find(|&p| p > current)
}

/// Sends one request per simulated user through the split, the way a real
/// request goes (same sticky key, same code path), and reads from each
/// response body which version actually answered.
///
/// These requests are counted in the split's per-target counters like any
/// other; a rollout that judges green by those counters would want to
/// leave them out (`Split::choose` names the target without calling it).
async fn replay_users(split: &Split<Router>) -> Result<Vec<bool>, Problem> {
    let mut on_green = Vec::with_capacity(USERS);
    for user in 0..USERS {
        let req = Request::builder()
            .uri("/")
            .header("x-user", format!("user-{user}"))
            .body(Body::empty())
            .map_err(internal)?;
        let res = split.clone().oneshot(req).await.map_err(internal)?;
        let body = axum::body::to_bytes(Body::new(res.into_body()), 1024)
            .await
            .map_err(internal)?;
        on_green.push(body.starts_with(b"green"));
    }
    Ok(on_green)
}

/// Step `i` compared with the step before it.
fn summarize(steps: &[Step], i: usize) -> Value {
    let now = &steps[i].on_green;
    let was = |u: usize| i > 0 && steps[i - 1].on_green[u];
    let users = 0..now.len();
    json!({
        "step": i,
        "green_percent": steps[i].percent,
        "on_green": now.iter().filter(|&&green| green).count(),
        "moved_to_green": users.clone().filter(|&u| !was(u) && now[u]).count(),
        "moved_back_to_blue": users.filter(|&u| was(u) && !now[u]).count(),
    })
}

// === admin routes ===

/// `POST /admin/ramp/{percent}`: `0` to `100`, or `next` for the next step
/// of the ramp.
async fn ramp_route(
    State(app): State<App>,
    Path(percent): Path<String>,
) -> Result<Json<Value>, Problem> {
    let percent = match percent.as_str() {
        "next" => next_step(&app).await.ok_or_else(|| {
            Problem::new(StatusCode::CONFLICT).detail("green already has 100 % of users")
        })?,
        p => p.parse().map_err(|_| {
            Problem::new(StatusCode::BAD_REQUEST)
                .detail(format!("`{p}` is neither a percentage nor `next`"))
        })?,
    };
    Ok(Json(ramp(&app, percent).await?))
}

/// `GET /admin/report`: every step so far, and the one number that must
/// stay 0: users sent back from green to blue by a step that raised
/// green's share. (Lowering the share by hand, a partial rollback, does
/// move users back; that is what it is for.)
async fn report_route(State(app): State<App>) -> Json<Value> {
    let steps = app.steps.lock().await;
    let summaries: Vec<Value> = (0..steps.len()).map(|i| summarize(&steps, i)).collect();
    let moved_back_while_ramping_up: u64 = summaries
        .iter()
        .zip(&*steps)
        .enumerate()
        .filter(|&(i, (_, step))| i > 0 && step.percent >= steps[i - 1].percent)
        .map(|(_, (summary, _))| summary["moved_back_to_blue"].as_u64().unwrap_or(0))
        .sum();
    Json(json!({
        "weights": app.handle.weights(),
        "users": USERS,
        "steps": summaries,
        "moved_back_while_ramping_up": moved_back_while_ramping_up,
    }))
}

fn internal(e: impl std::fmt::Display) -> Problem {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR).detail(e.to_string())
}

// === command line ===

struct Args {
    port: u16,
    auto: bool,
    every: Duration,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        port: 8080,
        auto: false,
        every: Duration::from_secs(3),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => {
                let v = value()?;
                args.port = v
                    .parse()
                    .map_err(|_| format!("--port: `{v}` is not a port number"))?;
            }
            "--auto" => args.auto = true,
            "--every" => {
                let v = value()?;
                args.every = v
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| format!("--every: `{v}` is not a number of seconds"))?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: canary_sticky [--port PORT] [--auto [--every SECONDS]]\n  \
                     --port   default 8080; 0 picks a free port\n  \
                     --auto   ramp green 1 → 10 → 50 → 100 % on a timer\n  \
                     --every  seconds between automatic steps (default 3)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`; try --help")),
        }
    }
    Ok(args)
}

fn print_help(addr: SocketAddr, args: &Args) {
    println!("switchyard sticky canary demo listening on http://{addr}");
    if args.auto {
        println!(
            "ramping green automatically: 1 → 10 → 50 → 100 %, a step every {:?}",
            args.every
        );
    }
    println!(
        r#"
  curl -i -H 'x-user: alice' http://{addr}/          # blue v1: green starts at 0 %
  curl -s -X POST http://{addr}/admin/ramp/1         # 1 % of users on green
  curl -s -X POST http://{addr}/admin/ramp/10        # 10 %
  curl -s -X POST http://{addr}/admin/ramp/next      # the next step: 50 %, then 100 %
  for u in alice bob carol dave erin frank; do curl -s -H "x-user: $u" http://{addr}/; done
  curl -s http://{addr}/admin/report                 # per step: users on green, moved back (0)
  curl -s -X POST http://{addr}/admin/ramp/0         # roll back: everyone on blue again
"#
    );
}
