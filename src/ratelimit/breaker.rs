//! When to stop asking Redis for a while: a circuit breaker over the
//! limiter's checks.
//!
//! A Redis that has gone away usually fails a check at once (the
//! connection is refused), but one that hangs (paused, swapping, a
//! network that drops packets, a TLS handshake that never finishes) makes
//! every check wait out the timeout: every request then pays that wait,
//! and the checks pile up. After `failures` checks in a row have failed,
//! the breaker opens: for `cooldown`, requests are handled by the failure
//! policy at once, without asking. Then one request probes Redis (the
//! others keep skipping until it is answered): an answer closes the
//! breaker, a failure opens it for another `cooldown`.
//!
//! Written here rather than taken from a crate: it is three atomics on the
//! limiter's hot path, and must read tokio's clock (the paused clock in
//! tests), which the general-purpose breaker crates do not.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// What a check should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Ask Redis (the breaker is closed).
    Ask,
    /// Ask Redis as the one probe of a breaker whose cooldown is over.
    Probe,
    /// Do not ask: Redis failed recently.
    Skip,
}

/// The breaker's state, shared by every check of one limiter.
#[derive(Debug)]
pub(crate) struct Breaker {
    /// Failures in a row that open it; 0: never opens.
    failures: u32,
    cooldown: Duration,
    /// Failures since the last answer.
    failed: AtomicU32,
    /// Nanoseconds after `origin` until which checks are skipped; 0 while
    /// closed.
    open_until: AtomicU64,
    /// A probe is out.
    probing: AtomicBool,
    origin: Instant,
}

impl Breaker {
    pub(crate) fn new(failures: u32, cooldown: Duration) -> Self {
        Self {
            failures,
            cooldown,
            failed: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            origin: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the next check asks Redis. A [`Gate::Probe`] must be
    /// followed by [`record`](Self::record) with `probe` set, or by
    /// [`abandon`](Self::abandon) if the check is dropped unanswered.
    #[inline]
    pub(crate) fn gate(&self) -> Gate {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Gate::Ask;
        }
        if self.now() < until {
            return Gate::Skip;
        }
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Gate::Probe,
            Err(_) => Gate::Skip,
        }
    }

    /// The outcome of a check that asked Redis.
    pub(crate) fn record(&self, answered: bool, probe: bool) {
        if answered {
            self.failed.store(0, Ordering::Relaxed);
            if self.open_until.load(Ordering::Relaxed) != 0 {
                self.open_until.store(0, Ordering::Release);
            }
        } else {
            let failed = self
                .failed
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if probe || (self.failures > 0 && failed >= self.failures) {
                let until = self
                    .now()
                    .saturating_add(u64::try_from(self.cooldown.as_nanos()).unwrap_or(u64::MAX))
                    .max(1);
                self.open_until.store(until, Ordering::Release);
            }
        }
        if probe {
            self.probing.store(false, Ordering::Release);
        }
    }

    /// A probe that was dropped before Redis answered: the next check
    /// after the cooldown may probe again.
    pub(crate) fn abandon(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// Whether checks are being skipped now.
    pub(crate) fn is_open(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        until != 0 && self.now() < until
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_and_probes_after_the_cooldown() {
        let b = Breaker::new(3, Duration::from_secs(1));
        assert_eq!(b.gate(), Gate::Ask);
        b.record(false, false);
        b.record(false, false);
        // An answer in between starts the count again.
        b.record(true, false);
        b.record(false, false);
        b.record(false, false);
        assert_eq!(b.gate(), Gate::Ask);
        b.record(false, false);
        assert_eq!(b.gate(), Gate::Skip);
        assert!(b.is_open());

        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(b.gate(), Gate::Skip);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!b.is_open());
        // One probe; the others keep skipping while it is out.
        assert_eq!(b.gate(), Gate::Probe);
        assert_eq!(b.gate(), Gate::Skip);
        // It fails: another full cooldown.
        b.record(false, true);
        assert_eq!(b.gate(), Gate::Skip);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(b.gate(), Gate::Skip);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(b.gate(), Gate::Probe);
        // It is answered: closed, every check asks again.
        b.record(true, true);
        assert_eq!(b.gate(), Gate::Ask);
        assert_eq!(b.gate(), Gate::Ask);
        // And it takes three failures in a row to open again.
        b.record(false, false);
        assert_eq!(b.gate(), Gate::Ask);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_the_next_check_probe() {
        let b = Breaker::new(1, Duration::from_millis(100));
        b.record(false, false);
        assert_eq!(b.gate(), Gate::Skip);
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(b.gate(), Gate::Probe);
        b.abandon();
        assert_eq!(b.gate(), Gate::Probe);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_failures_never_opens() {
        let b = Breaker::new(0, Duration::from_secs(1));
        for _ in 0..100 {
            b.record(false, false);
        }
        assert_eq!(b.gate(), Gate::Ask);
        assert!(!b.is_open());
    }
}
