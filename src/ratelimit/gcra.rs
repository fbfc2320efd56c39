//! The generic cell rate algorithm over one `AtomicU64` per key and quota.
//!
//! A quota of `count` per `period` with a burst of `burst` has an emission
//! interval `T = period / count` (rounded up to whole nanoseconds, so the
//! limiter errs on the strict side) and a tolerance `tau = burst * T`. Each
//! key keeps a theoretical arrival time `tat`; a request of cost `c` at time
//! `now` is allowed when `max(tat, now) + c*T - now <= tau`, and then moves
//! `tat` there with one compare-exchange. A `tat` at or before `now` is the
//! state of a fresh key: the whole burst is available.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Quota;
use super::store::TOMBSTONE;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Largest tolerance accepted, so that `now + tau` cannot overflow for
/// about 146 years of uptime.
pub(crate) const MAX_TAU: u64 = 1 << 62;

/// A quota in the units the algorithm works in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Emission interval `T`, in nanoseconds; at least 1.
    pub(crate) interval: u64,
    /// Tolerance `tau = burst * T`, in nanoseconds.
    pub(crate) tau: u64,
    pub(crate) burst: u32,
}

/// What one quota says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Allowed; `tat` is the key's new theoretical arrival time.
    Allowed { tat: u64 },
    /// Refused; allowed again after `wait` nanoseconds (`u64::MAX` when the
    /// cost exceeds the burst and can never be allowed).
    Refused { wait: u64 },
    /// The key's state was removed by a sweep meanwhile; look it up again.
    Gone,
}

impl Gcra {
    /// `None` when the quota is out of range (see `QuotaError`).
    pub(crate) fn new(quota: &Quota) -> Option<Self> {
        if quota.count == 0 || quota.burst == 0 || quota.period.is_zero() {
            return None;
        }
        let period = u64::try_from(quota.period.as_nanos()).ok()?;
        let interval = period.div_ceil(u64::from(quota.count)).max(1);
        let tau = interval.checked_mul(u64::from(quota.burst))?;
        (tau <= MAX_TAU).then_some(Gcra {
            interval,
            tau,
            burst: quota.burst,
        })
    }

    /// Tries to take `cost` units at `now`, updating `cell` on success.
    #[inline]
    pub(crate) fn acquire(&self, cell: &AtomicU64, now: u64, cost: u32) -> Verdict {
        let increment = match self.increment(cost) {
            Some(i) => i,
            None => return Verdict::Refused { wait: u64::MAX },
        };
        let mut current = cell.load(Ordering::Acquire);
        loop {
            if current == TOMBSTONE {
                return Verdict::Gone;
            }
            let tat = current.max(now) + increment;
            let ahead = tat - now;
            if ahead > self.tau {
                return Verdict::Refused {
                    wait: ahead - self.tau,
                };
            }
            match cell.compare_exchange_weak(current, tat, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Verdict::Allowed { tat },
                Err(actual) => current = actual,
            }
        }
    }

    /// What `acquire` would say, without changing `cell`.
    #[inline]
    pub(crate) fn peek(&self, cell: &AtomicU64, now: u64, cost: u32) -> Verdict {
        let Some(increment) = self.increment(cost) else {
            return Verdict::Refused { wait: u64::MAX };
        };
        let current = cell.load(Ordering::Acquire);
        if current == TOMBSTONE {
            return Verdict::Gone;
        }
        let tat = current.max(now) + increment;
        match tat - now {
            ahead if ahead > self.tau => Verdict::Refused {
                wait: ahead - self.tau,
            },
            _ => Verdict::Allowed { tat },
        }
    }

    /// Gives back `cost` units taken by `acquire` (all-or-nothing across
    /// quotas). Never moves `tat` below where a fresh key would be.
    pub(crate) fn refund(&self, cell: &AtomicU64, cost: u32) {
        if let Some(increment) = self.increment(cost) {
            let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
                (tat != TOMBSTONE).then(|| tat.saturating_sub(increment))
            });
        }
    }

    /// Gives back `cost` units of an estimate that turned out too high,
    /// moving `tat` back but never before `now` (units not used are
    /// returned; time already passed is not). `false` when the state was
    /// removed meanwhile.
    #[cfg_attr(not(feature = "json"), allow(dead_code))]
    pub(crate) fn refund_at(&self, cell: &AtomicU64, now: u64, cost: u64) -> bool {
        let decrement = cost.saturating_mul(self.interval);
        cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
            if tat == TOMBSTONE {
                None
            } else if tat > now {
                Some(tat.saturating_sub(decrement).max(now))
            } else {
                Some(tat)
            }
        })
        .is_ok()
    }

    /// Charges `cost` units unconditionally (usage known after the fact);
    /// `tat` may go past the tolerance, so the key waits that much longer.
    /// `false` when the state was removed meanwhile.
    pub(crate) fn charge(&self, cell: &AtomicU64, now: u64, cost: u64) -> bool {
        let increment = cost.saturating_mul(self.interval);
        cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |tat| {
            (tat != TOMBSTONE).then(|| {
                tat.max(now)
                    .saturating_add(increment)
                    .min(now.saturating_add(MAX_TAU))
            })
        })
        .is_ok()
    }

    #[inline]
    fn increment(&self, cost: u32) -> Option<u64> {
        (cost <= self.burst).then(|| u64::from(cost) * self.interval)
    }

    /// Units a request could take right now with a key at `tat`.
    pub(crate) fn remaining(&self, tat: u64, now: u64) -> u32 {
        let used = tat.saturating_sub(now);
        // `used <= tau + overcharge`; whole units left under the tolerance.
        (self.tau.saturating_sub(used) / self.interval) as u32
    }

    /// Nanoseconds until a key at `tat` has its whole burst back.
    pub(crate) fn reset_after(&self, tat: u64, now: u64) -> u64 {
        tat.saturating_sub(now)
    }
}

/// Nanoseconds to whole seconds, rounded up.
pub(crate) fn ceil_secs(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS_PER_SEC)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn gcra(count: u32, period: Duration, burst: u32) -> Gcra {
        Gcra::new(&Quota::new(count, period).burst(burst)).unwrap()
    }

    #[test]
    fn burst_then_one_per_interval() {
        let g = gcra(10, Duration::from_secs(1), 3);
        let cell = AtomicU64::new(0);
        let now = 5 * NANOS_PER_SEC;
        for _ in 0..3 {
            assert!(matches!(g.acquire(&cell, now, 1), Verdict::Allowed { .. }));
        }
        // The burst+1-th in the same instant is refused for exactly T.
        assert_eq!(
            g.acquire(&cell, now, 1),
            Verdict::Refused { wait: g.interval }
        );
        assert_eq!(
            g.acquire(&cell, now + g.interval - 1, 1),
            Verdict::Refused { wait: 1 }
        );
        assert!(matches!(
            g.acquire(&cell, now + g.interval, 1),
            Verdict::Allowed { .. }
        ));
    }

    #[test]
    fn interval_rounds_up() {
        // 1 s / 3 is not whole nanoseconds: round towards the strict side.
        assert_eq!(gcra(3, Duration::from_secs(1), 1).interval, 333_333_334);
    }

    #[test]
    fn cost_above_burst_is_never_allowed() {
        let g = gcra(10, Duration::from_secs(1), 5);
        let cell = AtomicU64::new(0);
        assert_eq!(g.acquire(&cell, 0, 6), Verdict::Refused { wait: u64::MAX });
        assert!(matches!(g.acquire(&cell, 0, 5), Verdict::Allowed { .. }));
    }

    #[test]
    fn refund_restores_capacity() {
        let g = gcra(1, Duration::from_secs(1), 2);
        let cell = AtomicU64::new(0);
        let now = 100 * NANOS_PER_SEC;
        assert!(matches!(g.acquire(&cell, now, 2), Verdict::Allowed { .. }));
        assert!(matches!(g.acquire(&cell, now, 1), Verdict::Refused { .. }));
        g.refund(&cell, 2);
        assert_eq!(g.remaining(cell.load(Ordering::Relaxed), now), 2);
    }

    #[test]
    fn out_of_range_quotas() {
        assert!(Gcra::new(&Quota::per_second(0)).is_none());
        assert!(Gcra::new(&Quota::per_second(1).burst(0)).is_none());
        assert!(Gcra::new(&Quota::new(1, Duration::ZERO)).is_none());
        assert!(Gcra::new(&Quota::new(1, Duration::from_secs(86_400 * 365 * 200))).is_none());
    }
}
