//! Per-version counters: requests, outcomes, latency, tokens and cost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use serde::Serialize;

use super::providers::Usage;
use crate::metrics::{HistogramSnapshot, LatencyHistogram};
use crate::split::StatusClasses;

/// The counters of one model version. They live outside the catalog, so
/// they survive every catalog change.
#[derive(Debug, Default)]
pub(crate) struct VersionCounters {
    started: AtomicU64,
    finished: AtomicU64,
    classes: [AtomicU64; 5],
    errors: AtomicU64,
    body_errors: AtomicU64,
    fallbacks: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    cache_write_tokens: AtomicU64,
    reasoning_tokens: AtomicU64,
    truncated: AtomicU64,
    cost_micros: AtomicU64,
    priced: AtomicU64,
    latency: LatencyHistogram,
    first_byte: LatencyHistogram,
}

impl VersionCounters {
    fn start(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    fn finish(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// A response arrived after `latency`.
    pub(crate) fn response(&self, status: StatusCode, latency: Duration) {
        let class = crate::metrics::class_index(status);
        self.classes[class].fetch_add(1, Ordering::Relaxed);
        self.latency.record(latency);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn body_error(&self) {
        self.body_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn usage(&self, usage: &Usage) {
        let add = |a: &AtomicU64, n: u64| {
            if n > 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.prompt_tokens, usage.input);
        add(&self.completion_tokens, usage.output);
        add(&self.cached_tokens, usage.cached_read);
        add(&self.cache_write_tokens, usage.cache_write);
        add(&self.reasoning_tokens, usage.reasoning);
        add(&self.truncated, u64::from(usage.truncated));
    }

    /// An answer was priced at `micros` (micro-units of money, zero
    /// included): called once per answer that has a price, when it
    /// settles; an answer without a price is not reported. Two relaxed
    /// adds.
    // Called by the router's settlement hook (issue 18's admission work).
    pub(crate) fn cost(&self, micros: u64) {
        self.priced.fetch_add(1, Ordering::Relaxed);
        if micros > 0 {
            self.cost_micros.fetch_add(micros, Ordering::Relaxed);
        }
    }

    /// The answer's first body byte came `after` the call.
    pub(crate) fn first_byte(&self, after: Duration) {
        self.first_byte.record(after);
    }

    pub(crate) fn read(&self, model: &str, weight: Option<u32>) -> VersionStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let finished = load(&self.finished);
        let started = load(&self.started);
        VersionStats {
            model: model.to_owned(),
            requests: started,
            in_flight: started.saturating_sub(finished),
            responses: StatusClasses {
                informational: load(&self.classes[0]),
                success: load(&self.classes[1]),
                redirection: load(&self.classes[2]),
                client_error: load(&self.classes[3]),
                server_error: load(&self.classes[4]),
            },
            errors: load(&self.errors),
            body_errors: load(&self.body_errors),
            fallbacks: load(&self.fallbacks),
            prompt_tokens: load(&self.prompt_tokens),
            completion_tokens: load(&self.completion_tokens),
            cached_tokens: load(&self.cached_tokens),
            cache_write_tokens: load(&self.cache_write_tokens),
            reasoning_tokens: load(&self.reasoning_tokens),
            truncated: load(&self.truncated),
            cost_micros: load(&self.cost_micros),
            priced: load(&self.priced),
            latency: self.latency.snapshot(),
            time_to_first_token: self.first_byte.snapshot(),
            weight,
        }
    }
}

/// One request in flight on a version: counted when made, ended exactly
/// once, when it ends or when it is dropped (a cancelled request, a
/// dropped body).
#[derive(Debug)]
pub(crate) struct Flight {
    counters: Arc<VersionCounters>,
}

impl Flight {
    pub(crate) fn start(counters: Arc<VersionCounters>) -> Self {
        counters.start();
        Self { counters }
    }

    pub(crate) fn counters(&self) -> &VersionCounters {
        &self.counters
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.counters.finish();
    }
}

/// A reading of one model version's counters. Counters only grow (but
/// `in_flight`); subtract two readings for a window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct VersionStats {
    /// The version.
    pub model: String,
    /// Its weight in the alias asked about, for
    /// [`ModelHandle::alias_stats`](super::ModelHandle::alias_stats).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Requests sent to it (a request retried on the fallback counts on
    /// both versions).
    pub requests: u64,
    /// Requests whose response has not finished.
    pub in_flight: u64,
    /// Responses by status class.
    pub responses: StatusClasses,
    /// Calls that failed with an error instead of a response.
    pub errors: u64,
    /// Response bodies that failed after the response started.
    pub body_errors: u64,
    /// Requests this version failed that were retried on the fallback.
    pub fallbacks: u64,
    /// Input tokens summed over its answers (OpenAI's `prompt_tokens`;
    /// cached ones included, whatever the provider: see
    /// [`Usage`](super::providers::Usage)).
    pub prompt_tokens: u64,
    /// Output tokens summed over its answers (reasoning included).
    pub completion_tokens: u64,
    /// Of the input tokens, read from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Of the input tokens, written to the provider's prompt cache.
    pub cache_write_tokens: u64,
    /// Of the output tokens, reasoning.
    pub reasoning_tokens: u64,
    /// Answers cut short (the client went away, the stream broke): their
    /// tokens are what was counted before.
    pub truncated: u64,
    /// Cost summed over its priced answers, in micro-units of money
    /// (1 000 000 to the unit of the price catalog's currency).
    pub cost_micros: u64,
    /// Answers that were given a cost (zero included); answers of a
    /// version without a price are not counted. `cost_micros / priced` is
    /// the mean cost of a priced answer.
    pub priced: u64,
    /// Time to response headers.
    pub latency: HistogramSnapshot,
    /// Time to the answer's first body byte (for a stream, its first
    /// token).
    pub time_to_first_token: HistogramSnapshot,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn cost_counts_priced_answers_and_sums_micros() {
        let c = VersionCounters::default();
        let zero = c.read("m", None);
        assert_eq!((zero.cost_micros, zero.priced), (0, 0));
        c.cost(1_500);
        c.cost(0);
        c.cost(2_500);
        let s = c.read("m", None);
        assert_eq!((s.cost_micros, s.priced), (4_000, 3));
        // Cost is its own counter: tokens and requests are untouched.
        assert_eq!(
            (s.requests, s.prompt_tokens, s.completion_tokens),
            (0, 0, 0)
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["cost_micros"], 4_000);
        assert_eq!(json["priced"], 3);
    }

    proptest! {
        /// From any threads, the counters end at the exact sum and count.
        #[test]
        fn cost_sums_are_exact_across_threads(
            costs in proptest::collection::vec(0u64..10_000_000, 0..64),
        ) {
            let c = Arc::new(VersionCounters::default());
            let (left, right) = costs.split_at(costs.len() / 2);
            std::thread::scope(|s| {
                for part in [left, right] {
                    let c = &c;
                    s.spawn(move || part.iter().for_each(|&m| c.cost(m)));
                }
            });
            let read = c.read("m", None);
            prop_assert_eq!(read.cost_micros, costs.iter().sum::<u64>());
            prop_assert_eq!(read.priced, costs.len() as u64);
        }
    }
}
