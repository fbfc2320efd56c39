//! Progressive delivery (feature `rollout`): a [`Plan`] moves traffic from
//! the stable version to a canary in steps, judges the canary against the
//! stable version from live counters, promotes it when the steps are done,
//! and rolls back by itself when the canary misbehaves.
//!
//! (`examples/rollout.rs`, `cargo run --example rollout`: an automated canary aborted by itself when it starts failing.)
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use switchyard::rollout::{Plan, Rollout, RolloutState, SplitTraffic, Step};
//! use switchyard::split::Split;
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Green fails every request.
//! let blue = tower::service_fn(|_: http::Request<()>| async {
//!     Ok::<_, Infallible>(http::Response::new(()))
//! });
//! let green = tower::service_fn(|_: http::Request<()>| async {
//!     let mut res = http::Response::new(());
//!     *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
//!     Ok::<_, Infallible>(res)
//! });
//! let split = Split::builder()
//!     .target("blue", tower::util::Either::Left(blue), 100)
//!     .target("green", tower::util::Either::Right(green), 0)
//!     .seed(7)
//!     .build()?;
//!
//! let plan = Plan::new([Step::SetWeight(20), Step::analyze(3), Step::SetWeight(100)]);
//! let rollout = Rollout::new(plan, SplitTraffic::new(split.handle(), "blue", "green")?)?.start();
//!
//! // Steady traffic while the rollout runs.
//! let load = tokio::spawn({
//!     let split = split.clone();
//!     async move {
//!         loop {
//!             let _ = split.clone().oneshot(http::Request::new(())).await;
//!             tokio::time::sleep(Duration::from_millis(10)).await;
//!         }
//!     }
//! });
//! let end = rollout.finished().await;
//! load.abort();
//! assert!(matches!(end, RolloutState::Aborted { .. }));
//! assert_eq!(split.handle().weights().get("green"), Some(0));
//! # Ok(())
//! # }
//! ```
//!
//! # Steps
//!
//! [`Step::SetWeight`] gives the canary a percentage of the traffic;
//! [`Step::Pause`] waits; [`Step::PauseUntilResumed`] waits for
//! [`RolloutHandle::resume`]; [`Step::Analyze`] waits for a number of
//! consecutive passing analysis windows. After the last step the canary is
//! promoted (all traffic). [`RolloutHandle`] pauses, resumes, aborts and
//! reads the status (state, step, verdicts, history); a hook set with
//! [`Rollout::on_event`] sees every event in order.
//!
//! # Analysis
//!
//! Analysis runs from the moment the canary has traffic to the end, in
//! every step (also while paused), over windows of
//! [`Analysis::interval`] checked every [`Analysis::check_every`]. From the
//! counters of the window:
//!
//! * fewer than [`Analysis::min_requests`] answered by the canary when the
//!   window ends: **inconclusive**, never a pass or a fail (during an
//!   analysis step it retries or pauses, as configured);
//! * the canary's error rate (5xx and errors over answered) above
//!   [`Analysis::max_error_rate`], or more than
//!   [`Analysis::max_error_rate_increase`] above the stable version's, or
//!   its p99 latency above [`Analysis::max_p99`] or
//!   [`Analysis::max_p99_ratio`] × the stable version's, or (for a model
//!   rollout) its tokens or cost per request above
//!   [`Analysis::max_tokens_ratio`] or [`Analysis::max_cost_ratio`] × the
//!   stable version's: **fail**, at the first check that sees it, without
//!   waiting for the window to end;
//! * otherwise, when the window ends: **pass**.
//!
//! [`Analysis::failure_limit`] consecutive failing windows abort the
//! rollout: traffic returns to the stable version in one atomic change (or
//! in steps, with [`Rollback::Stepped`]) and the state records why.
//!
//! **Rollback bound.** With the default settings (10 s windows checked
//! every second, 20 requests, 5 %, one failing window), a canary that
//! starts failing every request under steady load is rolled back at the
//! first check after its failures pass 5 % of a window that holds 20 of
//! its requests: at most one window plus one check period after the
//! failures begin, once the canary answers 20 requests a window. (A window
//! that was healthy before the failures began may still pass if they began
//! in its last 5 %; the next window then fails as soon as it holds 20
//! requests.)
//!
//! # Latency
//!
//! Latency checks need the split to record latency
//! ([`SplitBuilder::latency`](crate::split::SplitBuilder::latency)); p99 is
//! read from a bucketed histogram, interpolated within the bucket, so
//! treat ratios as estimates (see [`crate::metrics`]).
//!
//! # Tokens and cost
//!
//! A model rollout ([`ModelTraffic`]) also reads each version's tokens
//! (input and output) and cost (micro-units of money, from the price of
//! each answer), and [`WindowStats`] reports them per answered request.
//! With [`Analysis::max_tokens_ratio`] or [`Analysis::max_cost_ratio`] set,
//! a canary that needs more than that multiple of the stable version's
//! tokens or money per request fails: `max_cost_ratio = 1.2` rolls back a
//! new model version that costs 40 % more per answer. Both are off by
//! default, and are checked only when both versions have data in the
//! window (tokens reported, answers priced) and the stable version has
//! answered [`Analysis::min_requests`]. A request counts when its response
//! starts and its tokens and cost when its body ends, so a window's edge
//! can hold a few answers whose tokens fall in the next one. A split
//! rollout has no tokens: these checks never fire there.
//!
//! ```
//! use switchyard::rollout::{Analysis, Plan, Step};
//!
//! let plan: Plan = toml::from_str(r#"
//!     steps = [{ set_weight = 10 }, { analyze = { windows = 3 } }]
//!     [analysis]
//!     max_cost_ratio = 1.2
//!     max_tokens_ratio = 1.3
//! "#)?;
//! assert_eq!(plan.analysis, Analysis::default().max_cost_ratio(1.2).max_tokens_ratio(1.3));
//! # Ok::<_, toml::de::Error>(())
//! ```

mod analysis;
mod plan;
mod run;
mod traffic;

pub use analysis::{Outcome, Verdict, WindowStats};
pub use plan::{Analysis, AnalyzeStep, Inconclusive, Plan, Rollback, Step};
#[cfg(feature = "config")]
pub(crate) use run::check as check_plan;
pub use run::{
    EventKind, PauseReason, Rollout, RolloutEvent, RolloutHandle, RolloutState, RolloutStatus,
};
#[cfg(feature = "json")]
pub use traffic::ModelTraffic;
pub use traffic::{Sample, SplitTraffic, TargetSample, Traffic};

/// Why a rollout could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutError {
    /// A target (or model version, or alias) that does not exist.
    #[error("unknown target `{0}`")]
    UnknownTarget(String),
    /// The stable version and the canary are the same.
    #[error("the stable version and the canary are both `{0}`")]
    SameTarget(String),
    /// A plan that cannot run.
    #[error("invalid plan: {0}")]
    InvalidPlan(String),
    /// [`RolloutHandle::skip_to`] a step beyond the plan's end.
    #[error("no step {step}: the plan has {steps} (skipping to {steps} promotes)")]
    NoSuchStep {
        /// The step asked for.
        step: usize,
        /// The plan's number of steps.
        steps: usize,
    },
}
