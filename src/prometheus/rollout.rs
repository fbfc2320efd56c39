//! The collector of rollouts (feature `rollout`).

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;

use super::{LabelSet, gauge, row};
use crate::rollout::{Outcome, RolloutHandle, RolloutState};

/// The states a rollout is reported in, one sample each.
const STATES: [&str; 5] = ["idle", "running", "paused", "promoted", "aborted"];
const OUTCOMES: [&str; 3] = ["pass", "fail", "inconclusive"];

/// What is reported of one rollout.
#[derive(Clone, Debug)]
pub(crate) struct RolloutView {
    /// One of [`STATES`].
    pub(crate) state: String,
    pub(crate) step: usize,
    pub(crate) canary_weight: u32,
    /// The last verdict's outcome, one of [`OUTCOMES`].
    pub(crate) last_verdict: Option<String>,
}

#[derive(Clone, Debug)]
enum Source {
    Handle(RolloutHandle),
    View(RolloutView),
}

/// Rollouts' families: `switchyard_rollout_state` (`state`: 1 for the
/// one it is in: `idle`, `running`, `paused`, `promoted`, `aborted`),
/// `switchyard_rollout_step` (the current step, the number of steps when
/// done), `switchyard_rollout_canary_weight` (percent) and
/// `switchyard_rollout_last_verdict` (`outcome`: 1 for the last analysis
/// verdict's `pass`, `fail` or `inconclusive`; all 0 before the first).
///
/// ```
/// use prometheus_client::registry::Registry;
/// use switchyard::prometheus::RolloutCollector;
/// # use switchyard::rollout::{Plan, Rollout, SplitTraffic, Step};
/// # use switchyard::split::Split;
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let svc = tower::service_fn(|_: http::Request<()>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// # });
/// # let split = Split::builder().target("blue", svc.clone(), 100).target("green", svc, 0).build()?;
/// let plan = Plan::new([Step::SetWeight(20), Step::PauseUntilResumed]);
/// let rollout = Rollout::new(plan, SplitTraffic::new(split.handle(), "blue", "green")?)?.start();
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(RolloutCollector::new(rollout.clone(), [("route", "api")])));
/// # tokio::time::sleep(std::time::Duration::from_millis(1)).await;
/// let mut text = String::new();
/// prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
/// assert!(text.contains(r#"switchyard_rollout_canary_weight{route="api"} 20"#), "{text}");
/// assert!(text.contains(r#"switchyard_rollout_state{route="api",state="paused"} 1"#), "{text}");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct RolloutCollector {
    rollouts: Vec<(LabelSet, Source)>,
}

impl RolloutCollector {
    /// The rollout behind `handle`, labelled `labels`.
    pub fn new(handle: RolloutHandle, labels: impl Into<LabelSet>) -> Self {
        Self::default().with(handle, labels)
    }

    /// Adds another rollout to the same families.
    pub fn with(mut self, handle: RolloutHandle, labels: impl Into<LabelSet>) -> Self {
        self.rollouts.push((labels.into(), Source::Handle(handle)));
        self
    }

    /// Adds a rollout as a record shows it (one that is not running here).
    #[cfg_attr(not(feature = "config"), allow(dead_code))]
    pub(crate) fn with_view(mut self, view: RolloutView, labels: impl Into<LabelSet>) -> Self {
        self.rollouts.push((labels.into(), Source::View(view)));
        self
    }
}

fn view(handle: &RolloutHandle) -> RolloutView {
    let status = handle.status();
    let state = match status.state {
        RolloutState::Running => "running",
        RolloutState::Paused { .. } => "paused",
        RolloutState::Promoted => "promoted",
        RolloutState::Aborted { .. } => "aborted",
    };
    let last_verdict = status.verdicts.back().map(|v| {
        match v.outcome {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Inconclusive => "inconclusive",
        }
        .to_owned()
    });
    RolloutView {
        state: state.to_owned(),
        step: status.step,
        canary_weight: status.canary_weight,
        last_verdict,
    }
}

impl crate::prometheus::EncodeInto for RolloutCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        let read: Vec<(&LabelSet, RolloutView)> = self
            .rollouts
            .iter()
            .map(|(l, s)| {
                let v = match s {
                    Source::Handle(h) => view(h),
                    Source::View(v) => v.clone(),
                };
                (l, v)
            })
            .collect();
        gauge(
            enc,
            "switchyard_rollout_state",
            "A rollout's state: 1 for the one it is in.",
            read.iter().flat_map(|(l, v)| {
                STATES
                    .iter()
                    .map(move |s| (row(l, [("state", (*s).into())]), i64::from(v.state == *s)))
            }),
        )?;
        gauge(
            enc,
            "switchyard_rollout_step",
            "A rollout's current step (the number of steps when done).",
            read.iter()
                .map(|(l, v)| (row(l, []), i64::try_from(v.step).unwrap_or(i64::MAX))),
        )?;
        gauge(
            enc,
            "switchyard_rollout_canary_weight",
            "The canary's share of the traffic a rollout last set, in percent.",
            read.iter()
                .map(|(l, v)| (row(l, []), i64::from(v.canary_weight))),
        )?;
        gauge(
            enc,
            "switchyard_rollout_last_verdict",
            "A rollout's last analysis verdict: 1 for its outcome.",
            read.iter().flat_map(|(l, v)| {
                OUTCOMES.iter().map(move |o| {
                    (
                        row(l, [("outcome", (*o).into())]),
                        i64::from(v.last_verdict.as_deref() == Some(*o)),
                    )
                })
            }),
        )
    }
}

crate::prometheus::collector!(RolloutCollector);
