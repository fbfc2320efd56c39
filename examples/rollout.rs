//! An automated canary release on real time: a [`Rollout`] moves traffic
//! from blue (stable) to green (the canary) step by step, judges green
//! against blue from the split's live counters, and promotes green, or
//! rolls back by itself the moment green misbehaves.
//!
//! ```text
//! cargo run --example rollout                  # green starts failing 5 s in: the rollout aborts
//! cargo run --example rollout -- --fail-at 3   # ... 3 s in
//! cargo run --example rollout -- --healthy     # green stays healthy: the rollout promotes it
//! cargo run --example rollout -- --port 0      # serve /status on any free port
//! ```
//!
//! The example sends its own steady load (80 requests a second) through the
//! split, prints every rollout event as it happens, then the final state,
//! and exits. While it runs, `GET /status` on its address answers the
//! rollout's status as JSON.
//!
//! Copy this file to start your own: replace the two `version` routers with
//! your real v1 and v2 (or `switchyard::proxy::Upstream`s), drop the
//! synthetic load (your users are the load), and give the plan production
//! figures: minutes-long windows, and enough requests a window for a
//! verdict to mean something.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderName, Request, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use switchyard::ratelimit::MonotonicClock;
use switchyard::rollout::{
    Analysis, EventKind, Outcome, Plan, Rollout, RolloutEvent, RolloutHandle, RolloutState,
    RolloutStatus, SplitTraffic, Step, Verdict, WindowStats,
};
use switchyard::server::Server;
use switchyard::split::{Split, SplitHandle};
use tower::ServiceExt;

/// The synthetic load. At 10 % green gets about 16 requests in a 2 s
/// window, enough for the `min_requests` of 10 below most of the time (a
/// window with fewer is inconclusive, and another one is tried).
const REQUESTS_PER_SECOND: u64 = 80;

/// The response header naming the version that answered.
const SERVED_BY: HeaderName = HeaderName::from_static("x-switchyard-target");

/// One version of the service. Green answers 500 from `fail_at` on.
fn version(name: &'static str, fail_at: Option<Instant>) -> Router {
    Router::new().route(
        "/",
        get(move || async move {
            if fail_at.is_some_and(|at| Instant::now() >= at) {
                (StatusCode::INTERNAL_SERVER_ERROR, format!("{name}: oops\n"))
            } else {
                (StatusCode::OK, format!("{name}\n"))
            }
        }),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;

    // The address first: scripts wait for it.
    let server = Server::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port))).await?;
    let addr = server.local_addr();
    println!("rollout demo: http://{addr}");
    println!("  curl -s http://{addr}/status            # the rollout's status, as JSON");
    println!("  curl -si http://{addr}/                 # one request through the split");
    println!("  curl -s -X POST http://{addr}/pause     # also /resume, /abort");
    println!();

    let start = Instant::now();
    let fail_at = args.fail_at.map(|after| start + after);
    let split = Split::builder()
        .target("blue", version("blue", None), 100)
        .target("green", version("green", fail_at), 0)
        // Record each target's time to response headers: the analysis
        // compares latency only when the split records it.
        .latency(MonotonicClock::new())
        // Say which version answered (try `curl -i /`).
        .echo_header(SERVED_BY)
        .build()?;

    // Analysis on a demo's time scale. Windows are 2 s, checked every
    // 200 ms: a failing canary is caught at the first check whose window
    // holds `min_requests` of its answers, without waiting for the window
    // to end; a window passes only once complete.
    let mut analysis = Analysis::default();
    analysis.interval = Duration::from_secs(2);
    analysis.check_every = Duration::from_millis(200);
    analysis.min_requests = 10;
    // The default error thresholds stay: at most 5 % errors, and at most
    // 1 point above blue's. For latency, the default compares the p99s
    // (green at most 1.5 × blue's); with 16 requests a window the p99 is
    // the slowest request, and one scheduler hiccup would fail a healthy
    // canary. So this demo sets a ceiling instead; with windows of hundreds
    // of requests, keep the ratio.
    analysis.max_p99_ratio = None;
    analysis.max_p99 = Some(Duration::from_millis(500));

    let plan = Plan::new([
        Step::SetWeight(10),
        Step::analyze(2), // two passing windows in a row
        Step::SetWeight(50),
        Step::analyze(1),
        Step::SetWeight(100),
        // After the last step the canary is promoted.
    ])
    .analysis(analysis);

    match fail_at {
        Some(at) => {
            let secs = (at - start).as_secs_f64();
            println!(
                "green will answer 500 from {secs:.1} s on (--fail-at); watch the rollout catch it"
            );
            tokio::spawn(async move {
                tokio::time::sleep_until(at.into()).await;
                println!("[{secs:5.2}s] green   starts answering 500");
            });
        }
        None => println!("green stays healthy (--healthy); watch the rollout promote it"),
    }

    // The hook runs on the rollout's task, in order: print and return. Send
    // slow work (a chat message, a webhook) to a task of your own.
    let rollout = Rollout::new(plan, SplitTraffic::new(split.handle(), "blue", "green")?)?
        .on_event(|event| println!("{}", describe(event)))
        .start();

    // Steady load, each request a task of its own so that a slow answer
    // does not slow the pace. Responses are dropped at once: dropping the
    // body ends the request's in-flight count.
    let load = tokio::spawn({
        let split = split.clone();
        async move {
            let mut tick =
                tokio::time::interval(Duration::from_micros(1_000_000 / REQUESTS_PER_SECOND));
            loop {
                tick.tick().await;
                let split = split.clone();
                tokio::spawn(async move {
                    let _ = split.oneshot(Request::new(Body::empty())).await;
                });
            }
        }
    });

    let app = Router::new()
        .route("/status", get(status))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/abort", post(abort))
        .with_state(rollout.clone())
        .fallback_service(split.clone());
    tokio::spawn(server.serve(app));

    let end = rollout.finished().await;
    load.abort();
    report(&end, &split.handle()).await;

    // Traffic is where the final state says: check it with a few requests.
    let winner = if end == RolloutState::Promoted {
        "green"
    } else {
        "blue"
    };
    for _ in 0..20 {
        let res = split.clone().oneshot(Request::new(Body::empty())).await?;
        let served = res.headers().get(&SERVED_BY);
        if served.is_none_or(|name| name != winner) {
            return Err(format!("expected {winner} to serve, got {served:?}").into());
        }
    }
    println!("20 requests after the end: all served by {winner}");
    Ok(())
}

/// The end: how it ended, the weights, each version's totals; and, once
/// the version out of service has no request left, that it may be stopped.
async fn report(end: &RolloutState, split: &SplitHandle) {
    println!();
    match end {
        RolloutState::Promoted => println!("final state: promoted: green has all the traffic"),
        RolloutState::Aborted { reason } => {
            println!("final state: aborted, traffic is back on blue");
            println!("  because: {reason}");
        }
        other => println!("final state: {other:?}"),
    }
    let weights: Vec<String> = split
        .weights()
        .iter()
        .map(|(target, w)| format!("{target} {w}"))
        .collect();
    println!("weights now: {}", weights.join(", "));
    for t in split.stats() {
        let p99 = t.latency.quantile_interpolated(0.99).map(ms);
        println!(
            "  {:<6} {:>5} requests, {:>5} 2xx, {:>4} 5xx, p99 {}",
            t.name,
            t.requests,
            t.responses.success,
            t.responses.server_error,
            p99.as_deref().unwrap_or("-"),
        );
    }
    let retired = if *end == RolloutState::Promoted {
        "blue"
    } else {
        "green"
    };
    if let Ok(drained) = split.drained(retired)
        && tokio::time::timeout(Duration::from_secs(5), drained)
            .await
            .is_ok()
    {
        println!("{retired} is drained (weight 0, nothing in flight): it may be stopped");
    }
}

// === printing events ===

fn describe(event: &RolloutEvent) -> String {
    let at = format!("[{:5.2}s]", event.elapsed.as_secs_f64());
    match &event.kind {
        EventKind::State(state) => format!("{at} state   {}", describe_state(state)),
        EventKind::Step(step) => format!("{at} step {}  {}", event.step, describe_step(step)),
        EventKind::Verdict(v) => format!("{at} verdict {}", describe_verdict(v)),
        other => format!("{at} {other:?}"),
    }
}

fn describe_state(state: &RolloutState) -> String {
    match state {
        RolloutState::Running => "running".into(),
        RolloutState::Paused { reason } => format!("paused ({reason:?})"),
        RolloutState::Promoted => "promoted".into(),
        RolloutState::Aborted { reason } => format!("aborted: {reason}"),
        other => format!("{other:?}"),
    }
}

fn describe_step(step: &Step) -> String {
    match step {
        Step::SetWeight(w) => format!("green gets {w} %"),
        Step::Analyze(a) if a.windows == 1 => "analyze until a window passes".into(),
        Step::Analyze(a) => format!("analyze until {} windows in a row pass", a.windows),
        Step::Pause(d) => format!("pause {d:?}"),
        other => format!("{other:?}"),
    }
}

fn describe_verdict(v: &Verdict) -> String {
    let outcome = match v.outcome {
        Outcome::Pass => "pass",
        Outcome::Fail => "FAIL",
        Outcome::Inconclusive => "inconclusive",
    };
    let mut line = format!(
        "{outcome} after {:.1}s: green {} | blue {}",
        v.window.as_secs_f64(),
        figures(&v.canary),
        figures(&v.stable),
    );
    for reason in &v.reasons {
        line.push_str("\n          - ");
        line.push_str(reason);
    }
    line
}

/// One version's figures over a window. The p99 is estimated from
/// histogram buckets (the first ends at 1 ms), so handlers as fast as these
/// read about 1 ms.
fn figures(w: &WindowStats) -> String {
    format!(
        "{} answered, {} failed ({:.0} %), p99 {}",
        w.answered,
        w.failed,
        w.error_rate * 100.0,
        w.p99.map(ms).as_deref().unwrap_or("-"),
    )
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

// === /status and friends ===

async fn status(State(rollout): State<RolloutHandle>) -> Json<RolloutStatus> {
    Json(rollout.status())
}

async fn pause(State(rollout): State<RolloutHandle>) -> &'static str {
    rollout.pause();
    "pausing\n"
}

async fn resume(State(rollout): State<RolloutHandle>) -> &'static str {
    rollout.resume();
    "resuming\n"
}

async fn abort(State(rollout): State<RolloutHandle>) -> &'static str {
    rollout.abort("by hand, through POST /abort");
    "aborting\n"
}

// === command line ===

struct Args {
    port: u16,
    /// When green starts failing, from the start; `None` with `--healthy`.
    fail_at: Option<Duration>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        port: 8080,
        fail_at: Some(Duration::from_secs(5)),
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
            "--fail-at" => {
                let v = value()?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| format!("--fail-at: `{v}` is not a number of seconds"))?;
                args.fail_at = Some(Duration::from_secs_f64(secs));
            }
            "--healthy" => args.fail_at = None,
            "-h" | "--help" => {
                println!(
                    "usage: rollout [--fail-at SECONDS | --healthy] [--port PORT]\n  \
                     --fail-at: green answers 500 from then on (default 5)\n  \
                     --healthy: green never fails\n  \
                     --port:    where /status is served (default 8080; 0 picks a free port)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(args)
}
