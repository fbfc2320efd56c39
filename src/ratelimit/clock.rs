//! Time, as the rate limiter sees it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonic clock: the time elapsed since a fixed origin of the clock's
/// choosing. The rate limiter reads it once per request.
///
/// Implement it to drive time yourself, e.g. from tokio's clock so that
/// `tokio::time::pause` and `advance` control the limiter in tests:
///
/// ```
/// use std::time::Duration;
/// use switchyard::ratelimit::Clock;
///
/// #[derive(Debug)]
/// struct TokioClock(tokio::time::Instant);
///
/// impl Clock for TokioClock {
///     fn now(&self) -> Duration {
///         self.0.elapsed()
///     }
/// }
/// ```
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Time since this clock's origin. Must never go backwards.
    fn now(&self) -> Duration;

    /// [`now`](Self::now) in whole nanoseconds, saturating.
    #[inline]
    fn now_nanos(&self) -> u64 {
        u64::try_from(self.now().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Duration {
        (**self).now()
    }
}

/// The default clock: a monotonic clock read from the CPU's time-stamp
/// counter where it is reliable (through the `quanta` crate, as governor
/// does), which costs a third of `std::time::Instant::now`; elsewhere
/// quanta falls back to the operating system's monotonic clock.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    clock: quanta::Clock,
    origin: u64,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Self { clock, origin }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now(&self) -> Duration {
        Duration::from_nanos(self.now_nanos())
    }

    #[inline]
    fn now_nanos(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}

/// A clock that moves only when told to: for tests and simulations.
///
/// Clones share one time.
///
/// ```
/// use std::time::Duration;
/// use switchyard::ratelimit::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// clock.advance(Duration::from_millis(1500));
/// assert_eq!(clock.now(), Duration::from_millis(1500));
/// ```
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at its origin.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(by))
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// The default clock is called directly (inlined) on the hot path; a
/// clock of the user's through a trait object.
pub(crate) enum ClockSource {
    Monotonic(MonotonicClock),
    Custom(Box<dyn Clock>),
}

impl ClockSource {
    /// Nanoseconds since the clock's origin.
    #[inline]
    pub(crate) fn now_nanos(&self) -> u64 {
        match self {
            ClockSource::Monotonic(c) => c.now_nanos(),
            ClockSource::Custom(c) => c.now_nanos(),
        }
    }

    /// The clock `elapsed` after it read `start`: worked out on the
    /// default clock rather than read (a read of the time-stamp counter is
    /// a fair share of a metered request's cost on some machines), read on
    /// a custom one (a test's clock moves only when told to).
    #[cfg(feature = "json")]
    #[inline]
    pub(crate) fn after(&self, start: u64, elapsed: std::time::Duration) -> u64 {
        match self {
            ClockSource::Monotonic(_) => {
                start.saturating_add(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
            }
            ClockSource::Custom(c) => c.now_nanos(),
        }
    }
}
