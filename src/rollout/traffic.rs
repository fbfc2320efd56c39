//! What a rollout drives: a split's two targets, or two versions of a
//! model alias.

use serde::{Deserialize, Serialize};

use super::RolloutError;
use crate::metrics::HistogramSnapshot;
use crate::split::{SplitHandle, TargetStats};

/// The traffic a rollout moves and the evidence it reads. Implemented for
/// a split ([`SplitTraffic`]) and a model alias ([`ModelTraffic`], feature
/// `json`); implement it to drive anything else.
pub trait Traffic: Send + Sync + 'static {
    /// Gives the canary `percent` (0 to 100) of the traffic and the stable
    /// version the rest, in one atomic change.
    fn set_canary(&self, percent: u32) -> Result<(), String>;
    /// Sends all traffic to the canary.
    fn promote(&self) -> Result<(), String>;
    /// The counters now; they only grow.
    fn sample(&self) -> Sample;
}

/// Counters of both versions at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Sample {
    /// The stable version.
    pub stable: TargetSample,
    /// The canary.
    pub canary: TargetSample,
}

impl Sample {
    /// Adds `other`'s counters to these, version by version: the readings
    /// of several replicas as one fleet's.
    pub fn add(&mut self, other: &Sample) {
        self.stable.add(&other.stable);
        self.canary.add(&other.canary);
    }
}

/// One version's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct TargetSample {
    /// Requests answered (a response or an error).
    pub answered: u64,
    /// Of those, 5xx responses and errors.
    pub failed: u64,
    /// Time to response headers (empty if not recorded).
    pub latency: HistogramSnapshot,
    /// Tokens of its answers, input and output (0 when the traffic has
    /// none, as a split's).
    pub tokens: u64,
    /// Cost of its priced answers, in micro-units of money.
    pub cost_micros: u64,
    /// Answers that were given a cost (0: no cost data).
    pub priced: u64,
}

impl TargetSample {
    /// A sample from counters, without tokens or cost.
    pub fn new(answered: u64, failed: u64, latency: HistogramSnapshot) -> Self {
        Self {
            answered,
            failed,
            latency,
            tokens: 0,
            cost_micros: 0,
            priced: 0,
        }
    }

    /// Sets the tokens (input and output) of the answers.
    pub fn tokens(mut self, tokens: u64) -> Self {
        self.tokens = tokens;
        self
    }

    /// Sets the cost, in micro-units, of the `priced` answers that had one.
    pub fn cost(mut self, micros: u64, priced: u64) -> Self {
        self.cost_micros = micros;
        self.priced = priced;
        self
    }

    /// Adds `other`'s counters to these (two replicas' readings of one
    /// version, say).
    pub fn add(&mut self, other: &TargetSample) {
        self.answered = self.answered.saturating_add(other.answered);
        self.failed = self.failed.saturating_add(other.failed);
        self.latency.merge(&other.latency);
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.cost_micros = self.cost_micros.saturating_add(other.cost_micros);
        self.priced = self.priced.saturating_add(other.priced);
    }

    pub(crate) fn since(&self, earlier: &TargetSample) -> TargetSample {
        TargetSample {
            answered: self.answered.saturating_sub(earlier.answered),
            failed: self.failed.saturating_sub(earlier.failed),
            latency: self.latency.since(&earlier.latency),
            tokens: self.tokens.saturating_sub(earlier.tokens),
            cost_micros: self.cost_micros.saturating_sub(earlier.cost_micros),
            priced: self.priced.saturating_sub(earlier.priced),
        }
    }

    fn from_split(stats: &TargetStats) -> Self {
        let r = &stats.responses;
        let answered = r.informational
            + r.success
            + r.redirection
            + r.client_error
            + r.server_error
            + stats.errors;
        Self::new(
            answered,
            r.server_error + stats.errors,
            stats.latency.clone(),
        )
    }
}

/// A rollout over two targets of a [`Split`](crate::split::Split). Other
/// targets of the split get weight 0 when the rollout sets weights.
///
/// Latency checks need the split to record latency
/// ([`SplitBuilder::latency`](crate::split::SplitBuilder::latency)).
#[derive(Debug, Clone)]
pub struct SplitTraffic {
    handle: SplitHandle,
    stable: String,
    canary: String,
}

impl SplitTraffic {
    /// Moves traffic from `stable` to `canary`, two targets of the split.
    pub fn new(handle: SplitHandle, stable: &str, canary: &str) -> Result<Self, RolloutError> {
        for name in [stable, canary] {
            if handle.target_stats(name).is_none() {
                return Err(RolloutError::UnknownTarget(name.to_owned()));
            }
        }
        if stable == canary {
            return Err(RolloutError::SameTarget(stable.to_owned()));
        }
        Ok(Self {
            handle,
            stable: stable.to_owned(),
            canary: canary.to_owned(),
        })
    }
}

impl Traffic for SplitTraffic {
    fn set_canary(&self, percent: u32) -> Result<(), String> {
        let percent = percent.min(100);
        let weights: Vec<(String, u32)> = self
            .handle
            .targets()
            .map(|t| {
                let w = if t.name() == self.canary {
                    percent
                } else if t.name() == self.stable {
                    100 - percent
                } else {
                    0
                };
                (t.name().to_owned(), w)
            })
            .collect();
        self.handle.set_weights(weights).map_err(|e| e.to_string())
    }

    fn promote(&self) -> Result<(), String> {
        self.handle.promote(&self.canary).map_err(|e| e.to_string())
    }

    fn sample(&self) -> Sample {
        let read = |name: &str| {
            self.handle
                .target_stats(name)
                .map(|s| TargetSample::from_split(&s))
                .unwrap_or_default()
        };
        Sample {
            stable: read(&self.stable),
            canary: read(&self.canary),
        }
    }
}

/// A rollout over two versions of a model alias.
///
/// Its samples carry each version's tokens (input and output) and cost, so
/// that [`Analysis::max_tokens_ratio`](super::Analysis::max_tokens_ratio)
/// and [`Analysis::max_cost_ratio`](super::Analysis::max_cost_ratio) can
/// judge the canary's tokens and cost per answer against the stable
/// version's. Tokens are counted when an answer's body ends (read to its
/// end, or dropped), cost when the answer is settled.
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
#[derive(Debug, Clone)]
pub struct ModelTraffic {
    handle: crate::model::ModelHandle,
    alias: String,
    stable: String,
    canary: String,
}

#[cfg(feature = "json")]
impl ModelTraffic {
    /// Moves `alias`'s traffic from version `stable` to version `canary`.
    pub fn new(
        handle: crate::model::ModelHandle,
        alias: &str,
        stable: &str,
        canary: &str,
    ) -> Result<Self, RolloutError> {
        let weights = handle
            .weights(alias)
            .ok_or_else(|| RolloutError::UnknownTarget(alias.to_owned()))?;
        for name in [stable, canary] {
            if weights.get(name).is_none() {
                return Err(RolloutError::UnknownTarget(name.to_owned()));
            }
        }
        if stable == canary {
            return Err(RolloutError::SameTarget(stable.to_owned()));
        }
        Ok(Self {
            handle,
            alias: alias.to_owned(),
            stable: stable.to_owned(),
            canary: canary.to_owned(),
        })
    }
}

#[cfg(feature = "json")]
impl Traffic for ModelTraffic {
    fn set_canary(&self, percent: u32) -> Result<(), String> {
        let percent = percent.min(100);
        let weights = self
            .handle
            .weights(&self.alias)
            .ok_or_else(|| format!("alias `{}` is gone", self.alias))?;
        let new: Vec<(String, u32)> = weights
            .iter()
            .map(|(m, _)| {
                let w = if m == self.canary {
                    percent
                } else if m == self.stable {
                    100 - percent
                } else {
                    0
                };
                (m.to_owned(), w)
            })
            .collect();
        self.handle
            .set_weights(&self.alias, new)
            .map_err(|e| e.to_string())
    }

    fn promote(&self) -> Result<(), String> {
        self.handle
            .promote(&self.alias, &self.canary)
            .map_err(|e| e.to_string())
    }

    fn sample(&self) -> Sample {
        let read = |name: &str| {
            self.handle
                .model_stats(name)
                .map(|s| {
                    let r = &s.responses;
                    let answered = r.informational
                        + r.success
                        + r.redirection
                        + r.client_error
                        + r.server_error
                        + s.errors;
                    TargetSample::new(answered, r.server_error + s.errors, s.latency)
                        .tokens(s.prompt_tokens.saturating_add(s.completion_tokens))
                        .cost(s.cost_micros, s.priced)
                })
                .unwrap_or_default()
        };
        Sample {
            stable: read(&self.stable),
            canary: read(&self.canary),
        }
    }
}
