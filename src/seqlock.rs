//! A sequence counter for data kept in atomics: readers copy the data and
//! retry if a writer overlapped; nobody takes a lock or touches a reference
//! count. Used where an `ArcSwap` load showed in the cost of a hot path
//! (split weights, rate-limit quotas).

use std::sync::atomic::{AtomicU64, Ordering, fence};

/// The sequence number guarding some atomics: even when they are stable,
/// odd while a writer changes them.
#[derive(Debug, Default)]
pub(crate) struct SeqCount(AtomicU64);

impl SeqCount {
    /// Runs `read` (which loads the guarded atomics, `Relaxed` is enough)
    /// until it ran with no write overlapping; returns its result and the
    /// sequence number it ran at.
    #[inline]
    pub(crate) fn read<R>(&self, read: impl Fn() -> R) -> (R, u64) {
        loop {
            let before = self.0.load(Ordering::SeqCst);
            if before & 1 == 0 {
                let out = read();
                fence(Ordering::Acquire);
                if self.0.load(Ordering::Relaxed) == before {
                    return (out, before);
                }
            }
            std::hint::spin_loop();
        }
    }

    /// The current sequence number.
    #[inline]
    pub(crate) fn current(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    /// Runs `write` (which stores the guarded atomics) between two bumps
    /// of the sequence number. Writers must be serialised by the caller.
    /// The first bump is `SeqCst`, so a reader that counted itself in
    /// somewhere and then sees an unchanged number is ordered before it.
    pub(crate) fn write(&self, write: impl FnOnce()) {
        let seq = self.0.load(Ordering::Relaxed);
        self.0.store(seq.wrapping_add(1), Ordering::SeqCst);
        fence(Ordering::Release);
        write();
        self.0.store(seq.wrapping_add(2), Ordering::SeqCst);
    }
}
