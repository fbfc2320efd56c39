//! State each thread keeps its own copy of, for hot paths that would
//! otherwise touch a shared atomic on every request: counters that a thread
//! adds to with a plain load and store, and a swappable value that a thread
//! reads through its own cached reference.
//!
//! Every request of a metered route used to add to the meter's shared
//! counters, load its price catalog through an `ArcSwap` and take a
//! reference count on its budget cell: writes to cache lines every core
//! shares. Here each thread writes only its own.
//!
//! Per-object thread-local storage comes from the `thread_local` crate
//! (the standard `thread_local!` is per static, not per object): a slot
//! belongs to one live thread at a time, and a thread that exits hands its
//! slot, through a lock, to a later thread, so the plain stores below never
//! race and no count is lost.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use thread_local::ThreadLocal;

/// `N` counters, each the sum of one slot per thread.
///
/// Adding is a load and a store to the calling thread's slot (no
/// read-modify-write on a shared line); reading sums every slot, so it
/// costs a visit of each thread that ever added. Counts wrap at `u64::MAX`
/// as a `fetch_add` would.
pub(crate) struct Counters<const N: usize> {
    slots: ThreadLocal<[AtomicU64; N]>,
}

impl<const N: usize> Counters<N>
where
    [AtomicU64; N]: Default,
{
    /// All zero.
    pub(crate) fn new() -> Self {
        Self {
            slots: ThreadLocal::new(),
        }
    }

    /// Adds `n` to counter `i`.
    #[inline]
    pub(crate) fn add(&self, i: usize, n: u64) {
        let slot = &self.slots.get_or_default()[i];
        // The calling thread is this slot's only writer.
        slot.store(
            slot.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Adds each `(i, n)`: `n` to counter `i` (one lookup of the
    /// thread's slot for all).
    #[inline]
    pub(crate) fn add_each<const K: usize>(&self, adds: [(usize, u64); K]) {
        let slots = self.slots.get_or_default();
        for (i, n) in adds {
            let slot = &slots[i];
            slot.store(
                slot.load(Ordering::Relaxed).wrapping_add(n),
                Ordering::Relaxed,
            );
        }
    }

    /// Counter `i`: what every thread added, as far as each thread's
    /// last store is visible.
    pub(crate) fn get(&self, i: usize) -> u64 {
        self.slots.iter().fold(0u64, |sum, s| {
            sum.wrapping_add(s[i].load(Ordering::Relaxed))
        })
    }
}

impl<const N: usize> Default for Counters<N>
where
    [AtomicU64; N]: Default,
{
    fn default() -> Self {
        Self::new()
    }
}

/// A value that can be replaced at any time, read through a reference
/// each thread keeps until the value is replaced.
///
/// A read is a version check against the thread's cached `Arc` (no
/// reference count touched, no `ArcSwap` debt taken); the first read on a
/// thread after a [`store`](Self::store) loads the new value. A thread
/// keeps the value it last read alive until it reads again, so a replaced
/// value is freed only once every thread that read it has read the new
/// one (or the `Swappable` is dropped).
pub(crate) struct Swappable<T: Send + Sync> {
    current: ArcSwap<T>,
    /// Bumped after each store.
    version: AtomicU64,
    /// Serialises stores, so versions follow values.
    writer: Mutex<()>,
    seen: ThreadLocal<RefCell<Seen<T>>>,
}

/// A thread's last read: the version and the value.
type Seen<T> = Option<(u64, Arc<T>)>;

impl<T: Send + Sync> Swappable<T> {
    /// Holding `value`.
    pub(crate) fn new(value: Arc<T>) -> Self {
        Self {
            current: ArcSwap::new(value),
            version: AtomicU64::new(0),
            writer: Mutex::new(()),
            seen: ThreadLocal::new(),
        }
    }

    /// Replaces the value: reads that start after this returns see the
    /// new one.
    pub(crate) fn store(&self, value: Arc<T>) {
        let _one = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.current.store(value);
        self.version.fetch_add(1, Ordering::Release);
    }

    /// The current value, as a new reference.
    pub(crate) fn load_full(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Runs `f` on the current value.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        // A value loaded after seeing version `v` is at least as new as
        // the store `v` counts (the bump follows the store).
        let version = self.version.load(Ordering::Acquire);
        let cell = self.seen.get_or_default();
        let Ok(mut seen) = cell.try_borrow_mut() else {
            // Only if `f` itself reads this value again.
            return f(&self.current.load());
        };
        let fresh = match &*seen {
            Some((v, value)) if *v == version => value,
            _ => &seen.insert((version, self.current.load_full())).1,
        };
        f(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_every_thread() {
        let c = Arc::new(Counters::<2>::new());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        c.add(0, 1);
                        c.add(1, t);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Threads that exited handed their slots on: nothing was lost,
        // and later threads add to what is there.
        std::thread::spawn({
            let c = Arc::clone(&c);
            move || c.add(0, 5)
        })
        .join()
        .unwrap();
        assert_eq!(c.get(0), 8005);
        assert_eq!(c.get(1), 1000 * (0..8).sum::<u64>());
    }

    #[test]
    fn swappable_reads_follow_stores() {
        let s = Arc::new(Swappable::new(Arc::new(1u32)));
        assert_eq!(s.with(|v| *v), 1);
        s.store(Arc::new(2));
        assert_eq!(s.with(|v| *v), 2);
        // Another thread's first read, and a read inside a read.
        let t = Arc::clone(&s);
        let seen = std::thread::spawn(move || t.with(|v| (*v, t.with(|w| *w))))
            .join()
            .unwrap();
        assert_eq!(seen, (2, 2));
        s.store(Arc::new(3));
        assert_eq!(s.with(|v| *v), 3);
        assert_eq!(*s.load_full(), 3);
        // The value a thread last read is kept alive by it until replaced
        // there; the old ones are freed.
        let first = Arc::new(10u32);
        s.store(Arc::clone(&first));
        assert_eq!(s.with(|v| *v), 10);
        s.store(Arc::new(11));
        assert_eq!(Arc::strong_count(&first), 2);
        assert_eq!(s.with(|v| *v), 11);
        assert_eq!(Arc::strong_count(&first), 1);
    }
}
