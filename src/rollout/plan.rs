//! Rollout plans: plain serde data.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A rollout plan: the steps that move traffic from the stable version to
/// the canary, the analysis that judges the canary on the way, and how to
/// roll back.
///
/// ```
/// use std::time::Duration;
/// use switchyard::rollout::{Plan, Step};
///
/// let plan: Plan = toml::from_str(r#"
///     steps = [
///         { set_weight = 10 },
///         { analyze = { windows = 2 } },
///         { set_weight = 50 },
///         { pause = "5m" },
///         "pause_until_resumed",
///         { set_weight = 100 },
///     ]
///     [analysis]
///     interval = "30s"
///     min_requests = 50
/// "#)?;
/// assert_eq!(plan.steps[0], Step::SetWeight(10));
/// assert_eq!(plan.analysis.interval, Duration::from_secs(30));
/// # Ok::<_, toml::de::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Plan {
    /// The steps, in order; the canary is promoted after the last.
    pub steps: Vec<Step>,
    /// How the canary is judged.
    #[serde(default)]
    pub analysis: Analysis,
    /// How traffic returns to the stable version on abort.
    #[serde(default)]
    pub rollback: Rollback,
}

impl Plan {
    /// A plan with these steps, the default analysis and an instant
    /// rollback.
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            steps: steps.into_iter().collect(),
            analysis: Analysis::default(),
            rollback: Rollback::Instant,
        }
    }

    /// Sets the analysis.
    pub fn analysis(mut self, analysis: Analysis) -> Self {
        self.analysis = analysis;
        self
    }

    /// Sets the rollback.
    pub fn rollback(mut self, rollback: Rollback) -> Self {
        self.rollback = rollback;
        self
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Step {
    /// Gives the canary this percentage of traffic (0 to 100); the stable
    /// version gets the rest.
    SetWeight(u32),
    /// Waits this long (`"30s"`, `"5m"`), analysis running.
    Pause(#[serde(with = "duration")] Duration),
    /// Waits for [`RolloutHandle::resume`](super::RolloutHandle::resume).
    PauseUntilResumed,
    /// Waits for this many consecutive passing analysis windows.
    Analyze(AnalyzeStep),
}

/// An analysis step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct AnalyzeStep {
    /// Consecutive passing windows needed.
    pub windows: u32,
}

impl Step {
    /// [`Step::Pause`].
    pub fn pause(duration: Duration) -> Self {
        Step::Pause(duration)
    }

    /// [`Step::Analyze`] for `windows` passing windows.
    pub fn analyze(windows: u32) -> Self {
        Step::Analyze(AnalyzeStep { windows })
    }
}

/// What an inconclusive window (too little traffic) does during an
/// analysis step. It never counts as a pass or a fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Inconclusive {
    /// Try another window.
    #[default]
    Retry,
    /// Pause the rollout until it is resumed by hand.
    Pause,
}

/// How the canary is judged: over windows of `interval`, checked every
/// `check_every`. See the [module docs](super#analysis) for the rules and
/// the rollback bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Analysis {
    /// The length of a window (10 s by default).
    #[serde(with = "duration")]
    pub interval: Duration,
    /// How often the current window is checked for failure (1 s by
    /// default); a window fails as soon as a check finds it failing, and
    /// passes only when it is complete.
    #[serde(with = "duration")]
    pub check_every: Duration,
    /// Requests the canary must have answered in a window for a verdict
    /// (20 by default); fewer is inconclusive.
    pub min_requests: u64,
    /// The most the canary's error rate (5xx and errors over answered
    /// requests) may be, 0 to 1 (0.05 by default).
    pub max_error_rate: f64,
    /// The most the canary's error rate may exceed the stable version's,
    /// in absolute terms (0.01, one percentage point, by default). Checked
    /// when the stable version has `min_requests` in the window.
    pub max_error_rate_increase: f64,
    /// The most the canary's p99 latency may be, as a multiple of the
    /// stable version's (1.5 by default; `None` turns it off). Needs the
    /// split to record latency.
    pub max_p99_ratio: Option<f64>,
    /// The most the canary's p99 latency may be (off by default).
    #[serde(with = "opt_duration")]
    pub max_p99: Option<Duration>,
    /// The most the canary's tokens (input and output) per answered
    /// request may be, as a multiple of the stable version's (off by
    /// default; 1.2 lets the canary use 20 % more). Checked when both
    /// versions have tokens in the window and the stable version has
    /// `min_requests`; needs a model rollout
    /// ([`ModelTraffic`](super::ModelTraffic)).
    pub max_tokens_ratio: Option<f64>,
    /// The most the canary's cost per answered request may be, as a
    /// multiple of the stable version's (off by default; 1.2 lets the
    /// canary cost 20 % more per answer). Checked when both versions have
    /// priced answers in the window and the stable version has
    /// `min_requests`; needs a model rollout with prices.
    pub max_cost_ratio: Option<f64>,
    /// Consecutive failing windows that abort the rollout (1 by default).
    pub failure_limit: u32,
    /// What an inconclusive window does during an analysis step.
    pub inconclusive: Inconclusive,
}

impl Default for Analysis {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            check_every: Duration::from_secs(1),
            min_requests: 20,
            max_error_rate: 0.05,
            max_error_rate_increase: 0.01,
            max_p99_ratio: Some(1.5),
            max_p99: None,
            max_tokens_ratio: None,
            max_cost_ratio: None,
            failure_limit: 1,
            inconclusive: Inconclusive::Retry,
        }
    }
}

impl Analysis {
    /// Sets [`interval`](Self::interval).
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Sets [`check_every`](Self::check_every).
    pub fn check_every(mut self, check_every: Duration) -> Self {
        self.check_every = check_every;
        self
    }

    /// Sets [`min_requests`](Self::min_requests).
    pub fn min_requests(mut self, min_requests: u64) -> Self {
        self.min_requests = min_requests;
        self
    }

    /// Sets [`max_error_rate`](Self::max_error_rate).
    pub fn max_error_rate(mut self, rate: f64) -> Self {
        self.max_error_rate = rate;
        self
    }

    /// Sets [`max_error_rate_increase`](Self::max_error_rate_increase).
    pub fn max_error_rate_increase(mut self, increase: f64) -> Self {
        self.max_error_rate_increase = increase;
        self
    }

    /// Sets [`max_p99_ratio`](Self::max_p99_ratio) (`None` turns it off).
    pub fn max_p99_ratio(mut self, ratio: impl Into<Option<f64>>) -> Self {
        self.max_p99_ratio = ratio.into();
        self
    }

    /// Sets [`max_p99`](Self::max_p99).
    pub fn max_p99(mut self, limit: impl Into<Option<Duration>>) -> Self {
        self.max_p99 = limit.into();
        self
    }

    /// Sets [`max_tokens_ratio`](Self::max_tokens_ratio).
    pub fn max_tokens_ratio(mut self, ratio: impl Into<Option<f64>>) -> Self {
        self.max_tokens_ratio = ratio.into();
        self
    }

    /// Sets [`max_cost_ratio`](Self::max_cost_ratio).
    pub fn max_cost_ratio(mut self, ratio: impl Into<Option<f64>>) -> Self {
        self.max_cost_ratio = ratio.into();
        self
    }

    /// Sets [`failure_limit`](Self::failure_limit).
    pub fn failure_limit(mut self, limit: u32) -> Self {
        self.failure_limit = limit;
        self
    }

    /// Sets [`inconclusive`](Self::inconclusive).
    pub fn inconclusive(mut self, inconclusive: Inconclusive) -> Self {
        self.inconclusive = inconclusive;
        self
    }
}

/// How traffic goes back to the stable version on abort.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rollback {
    /// All at once.
    #[default]
    Instant,
    /// Through these canary percentages (e.g. `[50, 20, 0]`), one per
    /// `every`, for stable versions that should warm up gradually. The
    /// last is made 0 if it is not.
    Stepped {
        /// Canary percentages, decreasing.
        weights: Vec<u32>,
        /// Time between them.
        #[serde(with = "duration")]
        every: Duration,
    },
}

/// `"250ms"`, `"30s"`, `"5m"`, `"1h"` (or a number of seconds).
pub(crate) mod duration {
    use super::*;

    pub(crate) fn parse(text: &str) -> Option<Duration> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(text.len());
        let (n, unit) = text.split_at(split);
        let n: f64 = n
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
        let secs = match unit.trim() {
            "ms" => n / 1000.0,
            "" | "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            "d" => n * 86_400.0,
            _ => return None,
        };
        Duration::try_from_secs_f64(secs).ok()
    }

    pub(crate) fn format(d: &Duration) -> String {
        let ms = d.as_millis();
        if !ms.is_multiple_of(1000) || ms == 0 {
            format!("{ms}ms")
        } else {
            format!("{}s", ms / 1000)
        }
    }

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(f64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(t) => parse(&t).ok_or_else(|| {
                serde::de::Error::custom(format!("invalid duration `{t}` (use 250ms, 30s, 5m, 1h)"))
            }),
            Raw::Secs(n) => Duration::try_from_secs_f64(n).map_err(serde::de::Error::custom),
        }
    }
}

mod opt_duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&duration::format(d)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "duration")] Duration);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}
