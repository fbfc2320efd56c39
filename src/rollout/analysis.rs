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
    /// Tokens (input and output) over requests answered; `None` without
    /// answers or without tokens (always for a split).
    pub tokens_per_request: Option<f64>,
    /// Cost in micro-units over requests answered; `None` without answers
    /// or without a priced answer (always for a split).
    pub cost_per_request: Option<f64>,
}

impl WindowStats {
    fn of(s: &TargetSample) -> Self {
        let per_request =
            |n: u64, data: bool| (s.answered > 0 && data).then(|| n as f64 / s.answered as f64);
        Self {
            answered: s.answered,
            failed: s.failed,
            error_rate: if s.answered == 0 {
                0.0
            } else {
                s.failed as f64 / s.answered as f64
            },
            p99: s.latency.quantile_interpolated(0.99),
            tokens_per_request: per_request(s.tokens, s.tokens > 0),
            cost_per_request: per_request(s.cost_micros, s.priced > 0),
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
    if let (Some(ratio), Some(c), Some(s), true) = (
        config.max_tokens_ratio,
        canary.tokens_per_request,
        stable.tokens_per_request,
        baseline,
    ) && c > ratio * s
    {
        reasons.push(format!(
            "canary tokens per request {c:.1} is more than {ratio} × stable's {s:.1}"
        ));
    }
    if let (Some(ratio), Some(c), Some(s), true) = (
        config.max_cost_ratio,
        canary.cost_per_request,
        stable.cost_per_request,
        baseline,
    ) && c > ratio * s
    {
        reasons.push(format!(
            "canary cost per request {c:.1} micro-units is more than {ratio} × stable's {s:.1}"
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

    /// `answered` fast successes with `tokens` tokens and `micros` of cost
    /// over `priced` answers.
    fn usage(answered: u64, tokens: u64, micros: u64, priced: u64) -> TargetSample {
        sample(answered, 0, 5).tokens(tokens).cost(micros, priced)
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

    #[test]
    fn per_request_figures_divide_by_answered_and_need_data() {
        let w = WindowStats::of(&usage(100, 14_000, 50_000, 50));
        assert_eq!(w.tokens_per_request, Some(140.0));
        // 50 of 100 answers priced: the cost is spread over all 100.
        assert_eq!(w.cost_per_request, Some(500.0));
        // Priced answers that cost nothing are data.
        assert_eq!(
            WindowStats::of(&usage(10, 0, 0, 10)).cost_per_request,
            Some(0.0)
        );
        // No tokens, nothing priced, no answers, or a split: no figure.
        for s in [usage(100, 0, 0, 0), usage(0, 0, 0, 0), sample(100, 1, 5)] {
            let w = WindowStats::of(&s);
            assert_eq!(
                (w.tokens_per_request, w.cost_per_request),
                (None, None),
                "{s:?}"
            );
        }
    }

    #[test]
    fn canary_using_40_percent_more_tokens_fails_a_1_2_ratio() {
        let c = Analysis::default().max_tokens_ratio(1.2);
        let r = judge(
            &c,
            &window(usage(100, 10_000, 0, 0), usage(100, 14_000, 0, 0)),
            false,
        )
        .unwrap();
        assert_eq!(r.0, Outcome::Fail, "{:?}", r.3);
        assert_eq!(
            (r.1.tokens_per_request, r.2.tokens_per_request),
            (Some(140.0), Some(100.0))
        );
        assert_eq!(
            r.3,
            ["canary tokens per request 140.0 is more than 1.2 × stable's 100.0"]
        );
        // The same canary under a looser ratio, or with the check off.
        for c in [
            Analysis::default().max_tokens_ratio(1.5),
            Analysis::default(),
        ] {
            let w = window(usage(100, 10_000, 0, 0), usage(100, 14_000, 0, 0));
            assert_eq!(judge(&c, &w, true).unwrap().0, Outcome::Pass);
        }
    }

    #[test]
    fn ratio_is_a_limit_the_canary_may_reach() {
        let c = Analysis::default()
            .max_tokens_ratio(1.25)
            .max_cost_ratio(1.25);
        let stable = usage(80, 8_000, 80_000_000, 80);
        // Exactly 1.25 × stable's figures (100 tokens, 1 000 000 micros).
        let at = usage(40, 5_000, 50_000_000, 40);
        assert_eq!(
            judge(&c, &window(stable.clone(), at), true).unwrap().0,
            Outcome::Pass
        );
        let tokens_over = usage(40, 5_001, 50_000_000, 40);
        let r = judge(&c, &window(stable.clone(), tokens_over), true).unwrap();
        assert_eq!((r.0, r.3.len()), (Outcome::Fail, 1), "{:?}", r.3);
        assert!(r.3[0].contains("tokens"));
        let cost_over = usage(40, 5_000, 50_000_001, 40);
        let r = judge(&c, &window(stable, cost_over), true).unwrap();
        assert_eq!((r.0, r.3.len()), (Outcome::Fail, 1), "{:?}", r.3);
        assert!(r.3[0].contains("cost"));
    }

    #[test]
    fn canary_costing_40_percent_more_per_answer_fails_a_1_2_ratio() {
        let c = Analysis::default().max_cost_ratio(1.2);
        // Stable: 1 000 000 micros (one unit) an answer; canary 1 400 000.
        let w = window(
            usage(100, 0, 100_000_000, 100),
            usage(50, 0, 70_000_000, 50),
        );
        let r = judge(&c, &w, false).unwrap();
        assert_eq!(r.0, Outcome::Fail, "{:?}", r.3);
        assert_eq!(
            r.3,
            ["canary cost per request 1400000.0 micro-units is more than 1.2 × stable's 1000000.0"]
        );
        // Under 1.5 it passes when the window ends.
        let c = Analysis::default().max_cost_ratio(1.5);
        assert_eq!(judge(&c, &w, false), None);
        assert_eq!(judge(&c, &w, true).unwrap().0, Outcome::Pass);
        // A canary that costs where stable is free is over any ratio.
        let c = Analysis::default().max_cost_ratio(100.0);
        let w = window(usage(100, 0, 0, 100), usage(50, 0, 50, 50));
        assert_eq!(judge(&c, &w, true).unwrap().0, Outcome::Fail);
    }

    #[test]
    fn cost_and_tokens_are_judged_only_with_data_on_both_sides_and_a_baseline() {
        let c = Analysis::default()
            .max_tokens_ratio(1.1)
            .max_cost_ratio(1.1);
        let greedy = usage(100, 100_000, 100_000_000, 100);
        for stable in [
            // Stable below min_requests (20).
            usage(19, 100, 19, 19),
            // Stable without tokens or prices.
            usage(100, 0, 0, 0),
        ] {
            let r = judge(&c, &window(stable.clone(), greedy.clone()), true).unwrap();
            assert_eq!(r.0, Outcome::Pass, "{stable:?}: {:?}", r.3);
        }
        // Canary without tokens or prices, however pricey stable.
        let r = judge(&c, &window(greedy.clone(), usage(100, 0, 0, 0)), true).unwrap();
        assert_eq!(r.0, Outcome::Pass, "{:?}", r.3);
        // Too few canary answers stays inconclusive, never a cost failure.
        let r = judge(
            &c,
            &window(usage(100, 100, 100, 100), usage(19, 100_000, 9, 19)),
            true,
        );
        assert_eq!(r.unwrap().0, Outcome::Inconclusive);
        // Both broken: both reasons.
        let r = judge(&c, &window(usage(100, 100, 100, 100), greedy), true).unwrap();
        assert_eq!((r.0, r.3.len()), (Outcome::Fail, 2), "{:?}", r.3);
    }

    fn tokens_failed(config: &Analysis, stable: &TargetSample, canary: &TargetSample) -> bool {
        judge(config, &window(stable.clone(), canary.clone()), true)
            .is_some_and(|r| r.3.iter().any(|why| why.contains("tokens per request")))
    }

    proptest::proptest! {
        /// More canary tokens never turns a failing window into a passing
        /// one; a canary using no more per request than stable never fails
        /// a ratio of 1 or more.
        #[test]
        fn tokens_check_is_monotonic_and_spares_a_leaner_canary(
            stable_answered in 0u64..500,
            stable_tokens in 0u64..1_000_000,
            canary_answered in 0u64..500,
            canary_tokens in 0u64..1_000_000,
            more in 0u64..1_000_000,
            ratio in 1.0f64..3.0,
        ) {
            let c = Analysis::default().max_tokens_ratio(ratio);
            let stable = usage(stable_answered, stable_tokens, 0, 0);
            let canary = usage(canary_answered, canary_tokens, 0, 0);
            let fails = tokens_failed(&c, &stable, &canary);
            let more_fails = tokens_failed(&c, &stable, &canary.clone().tokens(canary_tokens + more));
            proptest::prop_assert!(!fails || more_fails);
            // Leaner: canary_tokens / canary_answered <= stable's, in integers.
            if u128::from(canary_tokens) * u128::from(stable_answered)
                <= u128::from(stable_tokens) * u128::from(canary_answered)
            {
                proptest::prop_assert!(!fails);
            }
            // No baseline, no tokens check.
            if stable_answered < c.min_requests {
                proptest::prop_assert!(!fails);
            }
        }
    }
}
