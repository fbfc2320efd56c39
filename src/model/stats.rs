//! Per-version counters: requests, outcomes, latency and tokens.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::StatusCode;
use serde::Serialize;

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
    latency: LatencyHistogram,
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
        let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
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

    pub(crate) fn tokens(&self, prompt: u64, completion: u64) {
        self.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion, Ordering::Relaxed);
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
            latency: self.latency.snapshot(),
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
    /// `usage.prompt_tokens` summed over its responses.
    pub prompt_tokens: u64,
    /// `usage.completion_tokens` summed over its responses.
    pub completion_tokens: u64,
    /// Time to response headers.
    pub latency: HistogramSnapshot,
}
