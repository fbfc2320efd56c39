//! State each thread keeps its own copy of, for hot paths that would
//! otherwise touch a shared atomic on every request: counters that a thread
//! adds to with a plain load and store, and a swappable value that a thread
//! reads through its own cached reference.
//!
//! Every request of a metered route used to add to the meter's shared
//! counters, load its price catalog through an `ArcSwap` and take a
//! reference count on its budget cell: writes to cache lines every core
//! shares. Here each thread writes only its own. The same holds for the
//! statistics every proxied request adds to (a route's and a split
//! target's counts by status class, latency histograms, the server's
//! request count): with two serving threads, a shared counter's cache line
//! moves between the cores at nearly every request, and each move stalls
//! the writer (about 50 ns on this project's test machine, against a few
//! for a plain store to a line the core owns).
//!
//! Per-object thread-local storage comes from the `thread_local` crate
//! (the standard `thread_local!` is per static, not per object): a slot
//! belongs to one live thread at a time, and a thread that exits hands its
//! slot, through a lock, to a later thread, so the plain stores below never
//! race and no count is lost. A build without that crate (none of the
//! `proxy` and `json` features) has [`Counters`] as shared atomics.

#[cfg(feature = "json")]
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "json")]
use std::sync::{Arc, Mutex};

#[cfg(feature = "json")]
use arc_swap::ArcSwap;
#[cfg(any(feature = "json", feature = "proxy"))]
use thread_local::ThreadLocal;

#[cfg(any(feature = "json", feature = "proxy"))]
/// `N` counters, each the sum of one slot per thread.
///
/// Adding is a load and a store to the calling thread's slot (no
/// read-modify-write on a shared line); reading sums every slot, so it
/// costs a visit of each thread that ever added. Counts wrap at `u64::MAX`
/// as a `fetch_add` would.
pub(crate) struct Counters<const N: usize> {
    slots: ThreadLocal<[AtomicU64; N]>,
}

#[cfg(any(feature = "json", feature = "proxy"))]
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

/// `N` shared atomic counters: what [`Counters`] is in a build without
/// the `thread_local` crate (neither the `proxy` nor the `json` feature).
#[cfg(not(any(feature = "json", feature = "proxy")))]
pub(crate) struct Counters<const N: usize> {
    slots: [AtomicU64; N],
}

#[cfg(not(any(feature = "json", feature = "proxy")))]
impl<const N: usize> Counters<N>
where
    [AtomicU64; N]: Default,
{
    /// All zero.
    pub(crate) fn new() -> Self {
        Self {
            slots: Default::default(),
        }
    }

    /// Adds `n` to counter `i`.
    #[inline]
    pub(crate) fn add(&self, i: usize, n: u64) {
        self.slots[i].fetch_add(n, Ordering::Relaxed);
    }

    /// Adds each `(i, n)`: `n` to counter `i`.
    #[inline]
    pub(crate) fn add_each<const K: usize>(&self, adds: [(usize, u64); K]) {
        for (i, n) in adds {
            self.add(i, n);
        }
    }

    /// Counter `i`.
    pub(crate) fn get(&self, i: usize) -> u64 {
        self.slots[i].load(Ordering::Relaxed)
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

impl<const N: usize> std::fmt::Debug for Counters<N>
where
    [AtomicU64; N]: Default,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries((0..N).map(|i| self.get(i))).finish()
    }
}

#[cfg(feature = "json")]
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

#[cfg(feature = "json")]
/// A thread's last read: the version and the value.
type Seen<T> = Option<(u64, Arc<T>)>;

#[cfg(feature = "json")]
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

#[cfg(feature = "json")]
/// Entries of a [`Near`] table.
const NEAR: usize = 16;
#[cfg(feature = "json")]
/// The longest key a [`Near`] table keeps.
pub(crate) const NEAR_KEY: usize = 32;

#[cfg(feature = "json")]
/// A thread's direct-mapped table of the values of the keys it met last
/// (16 entries by a hash of the key), in front of a shared map that costs
/// a guard and a lookup: a budget's cells, a token limit's key states.
/// Keys longer than [`NEAR_KEY`] bytes are not kept. What a value may
/// become stale by is the caller's to check.
pub(crate) struct Near<V> {
    slots: [NearSlot<V>; NEAR],
}

#[cfg(feature = "json")]
#[derive(Default)]
struct NearSlot<V> {
    key: Packed,
    value: V,
}

#[cfg(feature = "json")]
impl<V: Default> Default for Near<V> {
    fn default() -> Self {
        Self {
            slots: Default::default(),
        }
    }
}

#[cfg(feature = "json")]
impl<V> Near<V> {
    /// `key`'s value, if kept.
    #[inline]
    pub(crate) fn get(&self, key: &Packed) -> Option<&V> {
        let s = &self.slots[key.slot()];
        (s.key == *key).then_some(&s.value)
    }

    /// Keeps `value` as `key`'s (evicting whatever was in its slot).
    #[inline]
    pub(crate) fn put(&mut self, key: Packed, value: V) {
        self.slots[key.slot()] = NearSlot { key, value };
    }
}

#[cfg(feature = "json")]
/// A key of at most [`NEAR_KEY`] bytes as its kind, its length and two
/// words: its first and its last 16 bytes (or 8, or 4, overlapping in a
/// shorter key; a key of 1 to 3 bytes is its bytes), which with the
/// length determine it. Comparing two is three compares and hashing one a
/// multiply: no `memcmp` call and no byte loop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Packed {
    /// The kind (the caller's: keys of different kinds never match) and
    /// the length plus one; 0 in an empty slot only.
    tag: u32,
    head: u128,
    tail: u128,
}

#[cfg(feature = "json")]
impl Packed {
    /// `key`, of kind `kind`, packed: `None` if it is too long.
    #[inline]
    pub(crate) fn of(kind: u8, key: &[u8]) -> Option<Packed> {
        fn word<const N: usize>(bytes: Option<&[u8; N]>) -> [u8; N] {
            bytes.copied().unwrap_or([0; N])
        }
        let n = key.len();
        let (head, tail) = match n {
            0 => (0, 0),
            1..=3 => {
                // Bytes 0, n/2 and n-1 are every byte of such a key.
                let b = |i: usize| u128::from(key.get(i).copied().unwrap_or(0));
                (b(0) | b(n / 2) << 8 | b(n - 1) << 16, 0)
            }
            4..=7 => (
                u128::from(u32::from_le_bytes(word(key.first_chunk()))),
                u128::from(u32::from_le_bytes(word(key.last_chunk()))),
            ),
            8..=15 => (
                u128::from(u64::from_le_bytes(word(key.first_chunk()))),
                u128::from(u64::from_le_bytes(word(key.last_chunk()))),
            ),
            16..=NEAR_KEY => (
                u128::from_le_bytes(word(key.first_chunk())),
                u128::from_le_bytes(word(key.last_chunk())),
            ),
            _ => return None,
        };
        Some(Packed {
            tag: u32::from(kind) << 8 | (n as u32 + 1),
            head,
            tail,
        })
    }

    /// Which slot it goes in.
    #[inline]
    fn slot(&self) -> usize {
        // Fixed, not keyed: a collision only evicts an entry, so keys
        // chosen to collide cost a shared lookup each, as without the
        // table.
        let x = self.head ^ self.tail.rotate_left(29) ^ u128::from(self.tag);
        let h = (x as u64 ^ (x >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (h >> (64 - NEAR.trailing_zeros())) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[cfg(feature = "json")]
    #[test]
    fn near_keeps_short_keys() {
        let p = |k: &[u8]| Packed::of(0, k);
        let mut near = Near::<u32>::default();
        assert_eq!(near.get(&p(b"acme").unwrap()), None);
        near.put(p(b"acme").unwrap(), 7);
        assert_eq!(near.get(&p(b"acme").unwrap()), Some(&7));
        assert_eq!(near.get(&p(b"acm").unwrap()), None);
        assert_eq!(near.get(&p(b"").unwrap()), None);
        near.put(p(b"").unwrap(), 3);
        assert_eq!(near.get(&p(b"").unwrap()), Some(&3));
        // The same bytes of another kind are another key.
        assert_eq!(near.get(&Packed::of(1, b"acme").unwrap()), None);
        assert_eq!(p(&[b'x'; NEAR_KEY + 1]), None);
        // Every length up to the longest kept: each key found as itself,
        // and never as a key one byte different or one byte shorter.
        for n in 1..=NEAR_KEY {
            let key: Vec<u8> = (0..n as u8).map(|i| b'a' + i).collect();
            let mut near = Near::<u32>::default();
            near.put(p(&key).unwrap(), n as u32);
            assert_eq!(near.get(&p(&key).unwrap()), Some(&(n as u32)), "{n}");
            assert_eq!(near.get(&p(&key[..n - 1]).unwrap()), None, "{n}");
            for i in 0..n {
                let mut other = key.clone();
                other[i] ^= 0x20;
                assert_eq!(near.get(&p(&other).unwrap()), None, "{n} {i}");
            }
        }
        // Many keys: each found is its own, never another's.
        let keys: Vec<String> = (0..200).map(|i| format!("tenant-{i}")).collect();
        for (i, k) in keys.iter().enumerate() {
            near.put(p(k.as_bytes()).unwrap(), i as u32);
        }
        let mut found = 0;
        for (i, k) in keys.iter().enumerate() {
            if let Some(&c) = near.get(&p(k.as_bytes()).unwrap()) {
                assert_eq!(c, i as u32);
                found += 1;
            }
        }
        assert!((1..=NEAR).contains(&found), "{found}");
    }

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

    #[cfg(feature = "json")]
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
