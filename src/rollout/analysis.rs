//! Judging one window of traffic.

use std::time::Duration;

use serde::Serialize;

use super::plan::Analysis;
use super::traffic::{Sample, TargetSample};

/// The outcome of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The canary met every threshold over a complete window.
    Pass,
    /// The canary broke a threshold.
    Fail,
    /// Too little traffic to say.
    Inconclusive,
}

/// One version's figures over a window.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct WindowStats {
    /// Requests answered.
    pub answered: u64,
    /// 5xx and errors.
    pub failed: u64,
    /// `failed / answered` (0 without traffic).
    pub error_rate: f64,
    /// p99 time to response headers, interpolated within its histogram
    /// bucket; `None` without latency records.
    pub p99: Option<Duration>,
}

impl WindowStats {
    fn of(s: &TargetSample) -> Self {
        Self {
            answered: s.answered,
            failed: s.failed,
            error_rate: if s.answered == 0 {
                0.0
            } else {
                s.failed as f64 / s.answered as f64
            },
            p99: s.latency.quantile_interpolated(0.99),
        }
    }
}

/// An analysis verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Verdict {
    /// Pass, fail or inconclusive.
    pub outcome: Outcome,
    /// Time since the rollout started.
    pub elapsed: Duration,
    /// How long the window ran.
    pub window: Duration,
    /// The canary's figures.
    pub canary: WindowStats,
    /// The stable version's figures.
    pub stable: WindowStats,
    /// The thresholds broken (for a fail) or why it is inconclusive.
    pub reasons: Vec<String>,
}

/// Judges a window: `Some` verdict, or `None` while an incomplete window
/// has not failed yet.
pub(crate) fn judge(
    config: &Analysis,
    window: &Sample,
    complete: bool,
) -> Option<(Outcome, WindowStats, WindowStats, Vec<String>)> {
    let canary = WindowStats::of(&window.canary);
    let stable = WindowStats::of(&window.stable);
    if canary.answered < config.min_requests {
        return complete.then(|| {
            let reason = format!(
                "the canary answered {} requests, fewer than the {} a verdict needs",
                canary.answered, config.min_requests
            );
            (Outcome::Inconclusive, canary, stable, vec![reason])
        });
    }
    let mut reasons = Vec::new();
    if canary.error_rate > config.max_error_rate {
        reasons.push(format!(
            "canary error rate {:.2}% is above the limit of {:.2}%",
            canary.error_rate * 100.0,
            config.max_error_rate * 100.0
        ));
    }
    let baseline = stable.answered >= config.min_requests;
    if baseline && canary.error_rate - stable.error_rate > config.max_error_rate_increase {
        reasons.push(format!(
            "canary error rate {:.2}% is more than {:.2} points above stable's {:.2}%",
            canary.error_rate * 100.0,
            config.max_error_rate_increase * 100.0,
            stable.error_rate * 100.0
        ));
    }
    if let (Some(limit), Some(p99)) = (config.max_p99, canary.p99)
        && p99 > limit
    {
        reasons.push(format!(
            "canary p99 {p99:?} is above the limit of {limit:?}"
        ));
    }
    if let (Some(ratio), Some(c), Some(s), true) =
        (config.max_p99_ratio, canary.p99, stable.p99, baseline)
        && c.as_secs_f64() > ratio * s.as_secs_f64()
    {
        reasons.push(format!(
            "canary p99 {c:?} is more than {ratio} × stable's {s:?}"
        ));
    }
    if !reasons.is_empty() {
        return Some((Outcome::Fail, canary, stable, reasons));
    }
    complete.then_some((Outcome::Pass, canary, stable, Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::LatencyHistogram;

    fn sample(answered: u64, failed: u64, latency_ms: u64) -> TargetSample {
        let h = LatencyHistogram::default();
        for _ in 0..answered {
            h.record(Duration::from_millis(latency_ms));
        }
        TargetSample::new(answered, failed, h.snapshot())
    }

    fn window(stable: TargetSample, canary: TargetSample) -> Sample {
        Sample { stable, canary }
    }

    #[test]
    fn low_traffic_is_inconclusive_only_when_complete() {
        let c = Analysis::default();
        let w = window(sample(100, 0, 5), sample(5, 5, 5));
        assert_eq!(judge(&c, &w, false), None);
        assert_eq!(judge(&c, &w, true).unwrap().0, Outcome::Inconclusive);
    }

    #[test]
    fn failures_are_found_before_the_window_ends() {
        let c = Analysis::default();
        let (outcome, canary, _, reasons) =
            judge(&c, &window(sample(100, 0, 5), sample(20, 20, 5)), false).unwrap();
        assert_eq!(outcome, Outcome::Fail);
        assert_eq!(canary.error_rate, 1.0);
        assert_eq!(reasons.len(), 2, "{reasons:?}");
    }

    #[test]
    fn relative_and_latency_thresholds() {
        let c = Analysis::default();
        // 3% errors: under the absolute 5%, but 3 points above stable's 0%.
        let r = judge(&c, &window(sample(100, 0, 5), sample(100, 3, 5)), true).unwrap();
        assert_eq!(r.0, Outcome::Fail, "{:?}", r.3);
        // Same errors, slower canary.
        let r = judge(&c, &window(sample(100, 0, 5), sample(100, 0, 40)), true).unwrap();
        assert_eq!(r.0, Outcome::Fail, "{:?}", r.3);
        assert!(r.3[0].contains("p99"));
        let r = judge(&c, &window(sample(100, 1, 5), sample(100, 1, 5)), true).unwrap();
        assert_eq!(r.0, Outcome::Pass, "{:?}", r.3);
        assert_eq!(
            judge(&c, &window(sample(100, 1, 5), sample(100, 1, 5)), false),
            None
        );
    }
}
