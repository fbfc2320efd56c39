//! [`PromptHandle`]: the versions' weights and counters, live.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde_json::Value;

use super::service::ApiShared;
use crate::split::{SplitError, SplitHandle, TargetStats};

/// Counters of one version beyond the split's.
#[derive(Debug, Default)]
pub(crate) struct VersionCounters {
    pub(crate) prompt_tokens: AtomicU64,
    pub(crate) completion_tokens: AtomicU64,
    pub(crate) invalid_answers: AtomicU64,
    pub(crate) cost_micros: AtomicU64,
    pub(crate) priced: AtomicU64,
}

/// A live handle on a [`PromptApi`](super::PromptApi): its versions'
/// weights (a [`SplitHandle`]: set, promote, roll back, drain), their
/// counters, and the API's refusals. Cheap to clone.
///
/// A prompt change is a release: add the new template as a version of
/// weight zero, give it a share, [`promote`](Self::promote) it or
/// [`roll back`](Self::rollback). A `switchyard::rollout` plan drives it
/// as it drives any split, through `SplitTraffic` over
/// [`split`](Self::split), or through `PromptTraffic` (feature `rollout`),
/// which adds each version's tokens to the samples.
#[derive(Clone)]
pub struct PromptHandle {
    split: SplitHandle,
    shared: Arc<ApiShared>,
}

impl PromptHandle {
    pub(crate) fn new(split: SplitHandle, shared: Arc<ApiShared>) -> Self {
        Self { split, shared }
    }

    pub(crate) fn shared(&self) -> &ApiShared {
        &self.shared
    }

    /// The split over the versions: every weight operation, counters,
    /// `drained`.
    pub fn split(&self) -> &SplitHandle {
        &self.split
    }

    /// The API's name.
    pub fn name(&self) -> &str {
        &self.shared.config.name
    }

    /// Replaces the versions' weights at once (see
    /// [`SplitHandle::set_weights`]).
    pub fn set_weights<I, K>(&self, weights: I) -> Result<(), SplitError>
    where
        I: IntoIterator<Item = (K, u32)>,
        K: AsRef<str>,
    {
        self.split.set_weights(weights)
    }

    /// Sends all traffic to `version` (see [`SplitHandle::promote`]).
    pub fn promote(&self, version: &str) -> Result<(), SplitError> {
        self.split.promote(version)
    }

    /// Returns to the weights before the last change (see
    /// [`SplitHandle::rollback`]).
    pub fn rollback(&self) -> Result<(), SplitError> {
        self.split.rollback()
    }

    /// Counters of the API and of each version, in order.
    pub fn stats(&self) -> PromptStats {
        let versions = self
            .split
            .stats()
            .into_iter()
            .zip(self.shared.versions.iter())
            .map(|(split, (_, counters))| PromptVersionStats::read(split, counters))
            .collect();
        PromptStats {
            name: self.shared.config.name.clone(),
            refused: self.shared.refused.load(Ordering::Relaxed),
            versions,
        }
    }

    /// Counters of one version.
    pub fn version_stats(&self, version: &str) -> Option<PromptVersionStats> {
        let split = self.split.target_stats(version)?;
        let (_, counters) = self.shared.versions.iter().find(|(n, _)| n == version)?;
        Some(PromptVersionStats::read(split, counters))
    }

    /// The API's OpenAPI 3.1 document.
    pub fn openapi(&self) -> Value {
        super::openapi::document(&self.shared.config)
    }
}

impl fmt::Debug for PromptHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptHandle")
            .field("name", &self.shared.config.name)
            .field("split", &self.split)
            .finish()
    }
}

/// A reading of a prompt API's counters. They only grow; subtract two
/// readings for a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PromptStats {
    /// The API's name.
    pub name: String,
    /// Requests the API refused before any version saw them: bad or
    /// missing variables, unknown parameters, `stream`, bodies too large
    /// or not JSON, methods other than POST.
    pub refused: u64,
    /// Each version's counters, in order.
    pub versions: Vec<PromptVersionStats>,
}

/// A reading of one version's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PromptVersionStats {
    /// The split's counters for the version: weight, requests, responses
    /// by status class (a 502 for an answer the mode refused counts as
    /// 5xx), errors, latency.
    #[serde(flatten)]
    pub split: TargetStats,
    /// Prompt tokens of its answers, as their `usage` says.
    pub prompt_tokens: u64,
    /// Completion tokens of its answers.
    pub completion_tokens: u64,
    /// Answers refused with a 502 because they were not what the mode
    /// promises (no text; not JSON, or not matching the schema), or could
    /// not be read.
    pub invalid_answers: u64,
    /// What its answers cost, in micro-units, as the model route's meter
    /// said (`x-switchyard-cost-micros`; see [`crate::spend`]).
    pub cost_micros: u64,
    /// Its answers that came with a cost.
    pub priced: u64,
}

impl PromptVersionStats {
    fn read(split: TargetStats, counters: &VersionCounters) -> Self {
        Self {
            split,
            prompt_tokens: counters.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: counters.completion_tokens.load(Ordering::Relaxed),
            invalid_answers: counters.invalid_answers.load(Ordering::Relaxed),
            cost_micros: counters.cost_micros.load(Ordering::Relaxed),
            priced: counters.priced.load(Ordering::Relaxed),
        }
    }
}

// === rollout ===

#[cfg(feature = "rollout")]
pub use traffic::PromptTraffic;

#[cfg(feature = "rollout")]
mod traffic {
    use super::PromptHandle;
    use crate::rollout::{RolloutError, Sample, SplitTraffic, Traffic};

    /// A rollout from one version of a prompt API to another: a
    /// [`SplitTraffic`] over its split whose samples also carry each
    /// version's tokens (prompt and completion) and, behind a metered model
    /// route, its cost, so that `Analysis::max_tokens_ratio` and
    /// `max_cost_ratio` can judge a new template's verbosity and price.
    /// Error rates include the 502s of answers the mode refused.
    #[cfg_attr(docsrs, doc(cfg(feature = "rollout")))]
    #[derive(Debug, Clone)]
    pub struct PromptTraffic {
        split: SplitTraffic,
        handle: PromptHandle,
        stable: String,
        canary: String,
    }

    impl PromptTraffic {
        /// Moves the API's traffic from version `stable` to `canary`.
        pub fn new(
            handle: &PromptHandle,
            stable: &str,
            canary: &str,
        ) -> Result<Self, RolloutError> {
            Ok(Self {
                split: SplitTraffic::new(handle.split().clone(), stable, canary)?,
                handle: handle.clone(),
                stable: stable.to_owned(),
                canary: canary.to_owned(),
            })
        }

        /// A version's tokens, and its cost with the answers priced.
        fn usage(&self, version: &str) -> (u64, u64, u64) {
            self.handle.version_stats(version).map_or((0, 0, 0), |s| {
                (
                    s.prompt_tokens.saturating_add(s.completion_tokens),
                    s.cost_micros,
                    s.priced,
                )
            })
        }
    }

    impl Traffic for PromptTraffic {
        fn set_canary(&self, percent: u32) -> Result<(), String> {
            self.split.set_canary(percent)
        }

        fn promote(&self) -> Result<(), String> {
            self.split.promote()
        }

        fn sample(&self) -> Sample {
            let mut sample = self.split.sample();
            let (tokens, micros, priced) = self.usage(&self.stable);
            sample.stable = std::mem::take(&mut sample.stable)
                .tokens(tokens)
                .cost(micros, priced);
            let (tokens, micros, priced) = self.usage(&self.canary);
            sample.canary = std::mem::take(&mut sample.canary)
                .tokens(tokens)
                .cost(micros, priced);
            sample
        }
    }
}
