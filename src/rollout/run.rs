//! Running a plan: [`Rollout`] and its [`RolloutHandle`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};

use super::RolloutError;
use super::analysis::{Outcome, Verdict, judge};
use super::plan::{Inconclusive, Plan, Rollback, Step};
use super::traffic::{Sample, Traffic};

/// How many verdicts and events a status keeps.
const KEEP: usize = 256;

type Hook = Arc<dyn Fn(&RolloutEvent) + Send + Sync>;

/// A plan bound to the traffic it drives, ready to start.
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use switchyard::rollout::{Plan, Rollout, RolloutState, SplitTraffic, Step};
/// use switchyard::split::Split;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let svc = tower::service_fn(|_: http::Request<()>| async {
///     Ok::<_, Infallible>(http::Response::new(()))
/// });
/// let split = Split::builder().target("blue", svc.clone(), 100).target("green", svc, 0).build()?;
/// let plan = Plan::new([Step::SetWeight(20), Step::pause(Duration::from_secs(60)), Step::SetWeight(50)]);
/// let handle = Rollout::new(plan, SplitTraffic::new(split.handle(), "blue", "green")?)?
///     .on_event(|event| println!("{event:?}"))
///     .start();
/// assert_eq!(handle.finished().await, RolloutState::Promoted);
/// assert_eq!(split.handle().weights().get("green"), Some(100));
/// # Ok(())
/// # }
/// ```
pub struct Rollout {
    plan: Plan,
    traffic: Arc<dyn Traffic>,
    hook: Option<Hook>,
    /// Where it starts: the step, and the canary's weight then.
    from: (usize, u32),
}

impl std::fmt::Debug for Rollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollout")
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl Rollout {
    /// Checks the plan.
    pub fn new(plan: Plan, traffic: impl Traffic) -> Result<Self, RolloutError> {
        check(&plan)?;
        Ok(Self {
            plan,
            traffic: Arc::new(traffic),
            hook: None,
            from: (0, 0),
        })
    }

    /// Starts at `step` with the canary at `canary_weight`, rather than at
    /// the first step: to carry on a rollout that ran elsewhere (another
    /// replica that stopped) from where its record says it was. The
    /// canary is given that weight at once; a pause or analysis at `step`
    /// starts over (its time and windows count from now, on what this
    /// replica sees). `step` equal to the number of steps promotes at once.
    ///
    /// # Errors
    ///
    /// A step past the plan's end, or a weight above 100.
    pub fn from_step(mut self, step: usize, canary_weight: u32) -> Result<Self, RolloutError> {
        if step > self.plan.steps.len() {
            return Err(RolloutError::NoSuchStep {
                step,
                steps: self.plan.steps.len(),
            });
        }
        if canary_weight > 100 {
            return Err(RolloutError::InvalidPlan(format!(
                "a canary weight is a percentage, 0 to 100 (got {canary_weight})"
            )));
        }
        self.from = (step, canary_weight);
        Ok(self)
    }

    /// Calls `hook` on every event (state changes, steps, verdicts), in
    /// order, from the rollout's task: keep it quick, hand slow work (a
    /// webhook) to a task of your own.
    pub fn on_event(mut self, hook: impl Fn(&RolloutEvent) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Starts the rollout on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, as `tokio::spawn` does.
    pub fn start(self) -> RolloutHandle {
        let (commands, rx) = mpsc::unbounded_channel();
        let (done_tx, done) = watch::channel(None);
        let shared = Arc::new(Shared {
            steps: self.plan.steps.len(),
            status: Mutex::new(RolloutStatus {
                state: RolloutState::Running,
                step: self.from.0,
                canary_weight: self.from.1,
                verdicts: VecDeque::new(),
                history: VecDeque::new(),
            }),
            commands,
            done,
        });
        let runner = Runner {
            plan: self.plan,
            traffic: self.traffic,
            hook: self.hook,
            shared: Arc::clone(&shared),
            commands: rx,
            started: Instant::now(),
            done: done_tx,
            from: self.from,
            handed_over: false,
        };
        tokio::spawn(runner.run());
        RolloutHandle { shared }
    }
}

pub(crate) fn check(plan: &Plan) -> Result<(), RolloutError> {
    let bad = |what: String| Err(RolloutError::InvalidPlan(what));
    for (i, step) in plan.steps.iter().enumerate() {
        if let Step::SetWeight(w) = step
            && *w > 100
        {
            return bad(format!(
                "steps[{i}]: a canary weight is a percentage, 0 to 100 (got {w})"
            ));
        }
    }
    let a = &plan.analysis;
    if a.interval.is_zero() || a.check_every.is_zero() {
        return bad("analysis.interval and analysis.check_every must be above zero".into());
    }
    if a.check_every > a.interval {
        return bad("analysis.check_every cannot be longer than analysis.interval".into());
    }
    for (name, v) in [
        ("max_error_rate", a.max_error_rate),
        ("max_error_rate_increase", a.max_error_rate_increase),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return bad(format!("analysis.{name} is a rate from 0 to 1 (got {v})"));
        }
    }
    for (name, ratio) in [
        ("max_p99_ratio", a.max_p99_ratio),
        ("max_tokens_ratio", a.max_tokens_ratio),
        ("max_cost_ratio", a.max_cost_ratio),
    ] {
        if ratio.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
            return bad(format!("analysis.{name} must be a positive number"));
        }
    }
    if a.failure_limit == 0 {
        return bad("analysis.failure_limit must be at least 1".into());
    }
    if let Rollback::Stepped { weights, every } = &plan.rollback
        && (every.is_zero() || weights.iter().any(|&w| w > 100))
    {
        return bad("rollback.stepped needs percentages 0 to 100 and a non-zero `every`".into());
    }
    Ok(())
}

// === status ===

/// Where a rollout is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
#[non_exhaustive]
pub enum RolloutState {
    /// Walking its steps.
    Running,
    /// Paused; analysis keeps running (a failing canary is still rolled
    /// back).
    Paused {
        /// Why.
        reason: PauseReason,
    },
    /// Done: the canary has all traffic.
    Promoted,
    /// Stopped: traffic is back on the stable version.
    Aborted {
        /// Why.
        reason: String,
    },
}

impl RolloutState {
    /// Whether the rollout has ended (promoted or aborted).
    pub fn is_final(&self) -> bool {
        matches!(self, RolloutState::Promoted | RolloutState::Aborted { .. })
    }
}

/// Why a rollout is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseReason {
    /// [`RolloutHandle::pause`].
    Manual,
    /// A [`Step::PauseUntilResumed`].
    Step,
    /// An inconclusive window with [`Inconclusive::Pause`].
    Inconclusive,
}

/// Something that happened to a rollout.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RolloutEvent {
    /// Time since the rollout started (on tokio's clock).
    pub elapsed: Duration,
    /// Wall-clock time.
    pub at: SystemTime,
    /// The step it happened in (`steps.len()` after the last).
    pub step: usize,
    /// What happened.
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A step began.
    Step(Step),
    /// The state changed.
    State(RolloutState),
    /// An analysis window ended.
    Verdict(Verdict),
    /// [`RolloutHandle::skip_to`] jumped from one step to another.
    Skip {
        /// The step it was in.
        from: usize,
        /// The step it jumped to.
        to: usize,
        /// The canary's weight from then on, in percent.
        weight: u32,
    },
}

/// A rollout's status, from [`RolloutHandle::status`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RolloutStatus {
    /// The state.
    pub state: RolloutState,
    /// The current step (`steps.len()` when done).
    pub step: usize,
    /// The canary's share the rollout last set, in percent.
    pub canary_weight: u32,
    /// The latest verdicts, oldest first.
    pub verdicts: VecDeque<Verdict>,
    /// Every event, oldest first (the latest 256).
    pub history: VecDeque<RolloutEvent>,
}

struct Shared {
    /// The plan's number of steps.
    steps: usize,
    status: Mutex<RolloutStatus>,
    commands: mpsc::UnboundedSender<Command>,
    done: watch::Receiver<Option<RolloutState>>,
}

impl Shared {
    fn status(&self) -> MutexGuard<'_, RolloutStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
enum Command {
    Pause,
    Resume,
    Abort(String),
    Skip(usize),
    HandOver(String),
}

/// Controls and inspects a running rollout. Cheap to clone.
#[derive(Clone)]
pub struct RolloutHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RolloutHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RolloutHandle")
            .field("state", &self.shared.status().state)
            .finish()
    }
}

impl RolloutHandle {
    /// A copy of the status.
    pub fn status(&self) -> RolloutStatus {
        self.shared.status().clone()
    }

    /// The state.
    pub fn state(&self) -> RolloutState {
        self.shared.status().state.clone()
    }

    /// Pauses: steps stop (a timed pause stops counting), analysis goes on.
    pub fn pause(&self) {
        let _ = self.shared.commands.send(Command::Pause);
    }

    /// Resumes after any pause, and ends a [`Step::PauseUntilResumed`].
    pub fn resume(&self) {
        let _ = self.shared.commands.send(Command::Resume);
    }

    /// Aborts: traffic goes back to the stable version.
    pub fn abort(&self, reason: impl Into<String>) {
        let _ = self.shared.commands.send(Command::Abort(reason.into()));
    }

    /// Stops here without touching the traffic, because another runner
    /// carries the rollout on (a replica that took the lead, with
    /// [`Rollout::from_step`]): the state becomes aborted with `reason`,
    /// and the weights stay as they are. Takes effect at the rollout's
    /// next wait (a pause, an analysis window).
    pub fn hand_over(&self, reason: impl Into<String>) {
        let _ = self.shared.commands.send(Command::HandOver(reason.into()));
    }

    /// Jumps to step `step` (an index into the plan's steps; the number of
    /// steps skips to the end, which promotes). The canary's weight becomes
    /// the one the last [`Step::SetWeight`] before `step` sets (0 if none),
    /// a pause ends, and analysis goes on; a step may be skipped backwards
    /// too. Refused for a step beyond the plan's end.
    pub fn skip_to(&self, step: usize) -> Result<(), RolloutError> {
        if step > self.shared.steps {
            return Err(RolloutError::NoSuchStep {
                step,
                steps: self.shared.steps,
            });
        }
        let _ = self.shared.commands.send(Command::Skip(step));
        Ok(())
    }

    /// The plan's number of steps.
    pub fn steps(&self) -> usize {
        self.shared.steps
    }

    /// Waits for the end, and says how it ended.
    pub async fn finished(&self) -> RolloutState {
        let mut done = self.shared.done.clone();
        loop {
            if let Some(state) = done.borrow_and_update().clone() {
                return state;
            }
            if done.changed().await.is_err() {
                // The task is gone without a final state (its runtime shut
                // down): report what the status says.
                return self.state();
            }
        }
    }
}

// === the runner ===

struct Runner {
    plan: Plan,
    traffic: Arc<dyn Traffic>,
    hook: Option<Hook>,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedReceiver<Command>,
    started: Instant,
    done: watch::Sender<Option<RolloutState>>,
    from: (usize, u32),
    /// Stopped for another runner: the traffic is left as it is.
    handed_over: bool,
}

/// The analysis window under way.
struct Window {
    start: Sample,
    since: Instant,
    fails: u32,
    passes: u32,
}

enum Wake {
    /// A check, at its scheduled instant.
    Tick(Instant),
    Command(Option<Command>),
    StepDone,
}

impl Runner {
    fn emit(&self, step: usize, kind: EventKind) {
        let event = RolloutEvent {
            elapsed: self.started.elapsed(),
            at: SystemTime::now(),
            step,
            kind,
        };
        {
            let mut status = self.shared.status();
            status.step = step;
            match &event.kind {
                EventKind::State(state) => status.state = state.clone(),
                EventKind::Verdict(v) => {
                    if status.verdicts.len() == KEEP {
                        status.verdicts.pop_front();
                    }
                    status.verdicts.push_back(v.clone());
                }
                EventKind::Step(Step::SetWeight(w)) => status.canary_weight = *w,
                EventKind::Skip { weight, .. } => status.canary_weight = *weight,
                EventKind::Step(_) => {}
            }
            if status.history.len() == KEEP {
                status.history.pop_front();
            }
            status.history.push_back(event.clone());
        }
        if let Some(hook) = &self.hook {
            hook(&event);
        }
    }

    async fn run(mut self) {
        let end = self.walk().await;
        let step = self.shared.status().step;
        let state = match end {
            Ok(()) => match self.traffic.promote() {
                Ok(()) => {
                    self.shared.status().canary_weight = 100;
                    RolloutState::Promoted
                }
                Err(e) => {
                    self.roll_back().await;
                    RolloutState::Aborted {
                        reason: format!("promotion failed: {e}"),
                    }
                }
            },
            Err(reason) => {
                if !self.handed_over {
                    self.roll_back().await;
                }
                RolloutState::Aborted { reason }
            }
        };
        self.emit(step, EventKind::State(state.clone()));
        let _ = self.done.send(Some(state));
    }

    async fn roll_back(&mut self) {
        match self.plan.rollback.clone() {
            Rollback::Instant => {
                let _ = self.traffic.set_canary(0);
            }
            Rollback::Stepped { weights, every } => {
                for w in weights.iter().copied().filter(|&w| w > 0) {
                    let _ = self.traffic.set_canary(w);
                    tokio::time::sleep(every).await;
                }
                let _ = self.traffic.set_canary(0);
            }
        }
        self.shared.status().canary_weight = 0;
    }

    /// Walks the steps; `Err` with the reason to abort.
    async fn walk(&mut self) -> Result<(), String> {
        let (first, weight) = self.from;
        self.emit(first, EventKind::State(RolloutState::Running));
        if first > 0 || weight > 0 {
            self.traffic
                .set_canary(weight)
                .map_err(|e| format!("setting weights failed: {e}"))?;
        }
        let analysis = self.plan.analysis.clone();
        let origin = Instant::now();
        let mut ticker =
            tokio::time::interval_at(origin + analysis.check_every, analysis.check_every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut window = Window {
            start: self.traffic.sample(),
            since: origin,
            fails: 0,
            passes: 0,
        };
        let mut canary = weight;
        let mut paused: Option<PauseReason> = None;

        let steps = self.plan.steps.clone();
        let mut i = first;
        'steps: while i < steps.len() {
            let step = &steps[i];
            self.emit(i, EventKind::Step(step.clone()));
            // What this step waits for.
            let mut remaining = match step {
                Step::SetWeight(w) => {
                    self.traffic
                        .set_canary(*w)
                        .map_err(|e| format!("setting weights failed: {e}"))?;
                    canary = *w;
                    i += 1;
                    continue;
                }
                Step::Pause(d) => Some(*d),
                Step::PauseUntilResumed => {
                    paused = Some(PauseReason::Step);
                    self.emit(
                        i,
                        EventKind::State(RolloutState::Paused {
                            reason: PauseReason::Step,
                        }),
                    );
                    None
                }
                Step::Analyze(_) => None,
            };
            window.passes = 0;
            loop {
                let step_done = match step {
                    Step::Analyze(a) => paused.is_none() && window.passes >= a.windows,
                    Step::PauseUntilResumed => paused.is_none(),
                    Step::Pause(_) => remaining.is_some_and(|r| r.is_zero()),
                    Step::SetWeight(_) => true,
                };
                if step_done {
                    break;
                }
                let sleeping_since = Instant::now();
                let deadline = match (remaining, paused) {
                    (Some(r), None) => Some(sleeping_since + r),
                    _ => None,
                };
                let wake = tokio::select! {
                    at = ticker.tick() => Wake::Tick(at),
                    c = self.commands.recv() => Wake::Command(c),
                    _ = sleep_until(deadline) => Wake::StepDone,
                };
                if let (Some(r), None) = (remaining, paused) {
                    remaining = Some(r.saturating_sub(sleeping_since.elapsed()));
                }
                match wake {
                    Wake::StepDone => remaining = Some(Duration::ZERO),
                    Wake::Command(None) => {} // every handle dropped: carry on
                    Wake::Command(Some(Command::Abort(reason))) => {
                        return Err(format!("aborted: {reason}"));
                    }
                    Wake::Command(Some(Command::HandOver(reason))) => {
                        self.handed_over = true;
                        return Err(format!("handed over: {reason}"));
                    }
                    Wake::Command(Some(Command::Pause)) => {
                        if paused.is_none() {
                            paused = Some(PauseReason::Manual);
                            self.emit(
                                i,
                                EventKind::State(RolloutState::Paused {
                                    reason: PauseReason::Manual,
                                }),
                            );
                        }
                    }
                    Wake::Command(Some(Command::Resume)) => {
                        if paused.take().is_some() {
                            self.emit(i, EventKind::State(RolloutState::Running));
                        }
                    }
                    Wake::Command(Some(Command::Skip(to))) => {
                        let weight = steps[..to]
                            .iter()
                            .rev()
                            .find_map(|s| match s {
                                Step::SetWeight(w) => Some(*w),
                                _ => None,
                            })
                            .unwrap_or(0);
                        if weight != canary {
                            self.traffic
                                .set_canary(weight)
                                .map_err(|e| format!("setting weights failed: {e}"))?;
                            canary = weight;
                            self.shared.status().canary_weight = weight;
                        }
                        self.emit(
                            i,
                            EventKind::Skip {
                                from: i,
                                to,
                                weight,
                            },
                        );
                        if paused.take().is_some() {
                            self.emit(i, EventKind::State(RolloutState::Running));
                        }
                        i = to;
                        continue 'steps;
                    }
                    Wake::Tick(at) => {
                        // Windows are measured between scheduled checks,
                        // so a late timer cannot stretch one by a period.
                        if canary == 0 {
                            // Nothing to judge: the window starts when the
                            // canary gets traffic.
                            window.start = self.traffic.sample();
                            window.since = at;
                            continue;
                        }
                        let now = self.traffic.sample();
                        let sample = Sample {
                            stable: now.stable.since(&window.start.stable),
                            canary: now.canary.since(&window.start.canary),
                        };
                        let took = at.saturating_duration_since(window.since);
                        let Some((outcome, c, s, reasons)) =
                            judge(&analysis, &sample, took >= analysis.interval)
                        else {
                            continue;
                        };
                        let verdict = Verdict {
                            outcome,
                            elapsed: self.started.elapsed(),
                            window: took,
                            canary: c,
                            stable: s,
                            reasons,
                        };
                        let summary = verdict.reasons.join("; ");
                        self.emit(i, EventKind::Verdict(verdict));
                        window.start = now;
                        window.since = at;
                        match outcome {
                            Outcome::Fail => {
                                window.fails += 1;
                                window.passes = 0;
                                if window.fails >= analysis.failure_limit {
                                    return Err(format!("analysis failed: {summary}"));
                                }
                            }
                            Outcome::Pass => {
                                window.fails = 0;
                                window.passes += 1;
                            }
                            Outcome::Inconclusive => {
                                if matches!(step, Step::Analyze(_))
                                    && analysis.inconclusive == Inconclusive::Pause
                                    && paused.is_none()
                                {
                                    paused = Some(PauseReason::Inconclusive);
                                    self.emit(
                                        i,
                                        EventKind::State(RolloutState::Paused {
                                            reason: PauseReason::Inconclusive,
                                        }),
                                    );
                                }
                            }
                        }
                    }
                }
            }
            // A resumed `PauseUntilResumed` emitted `Running` with the
            // command.
            i += 1;
        }
        self.shared.status().step = steps.len();
        Ok(())
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
