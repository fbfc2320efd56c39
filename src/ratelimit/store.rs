//! The keyed table of limiter state, bounded in size with nothing for the
//! user to run.

use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::key::Key;

/// Quotas a layer can hold at once; each key keeps one arrival time per
/// quota position.
pub(crate) const SLOTS: usize = 4;

/// Written by a sweep into the arrival times of a key it is removing, so
/// that a request still holding the key's state sees that it is gone.
pub(crate) const TOMBSTONE: u64 = u64::MAX;

/// One key's state: a theoretical arrival time per quota position. All
/// times at or before now is the state of a fresh key.
#[derive(Debug, Default)]
pub(crate) struct KeyState {
    pub(crate) tats: [AtomicU64; SLOTS],
}

impl KeyState {
    fn max_tat(&self) -> u64 {
        self.tats
            .iter()
            .map(|t| t.load(Ordering::Acquire))
            .max()
            .unwrap_or(0)
    }

    /// Marks a fresh key as removed: every slot goes from a value at or
    /// before `now` to `TOMBSTONE`. Fails, and leaves the state as it was,
    /// if any slot is live or changes meanwhile.
    fn tombstone(&self, now: u64) -> bool {
        for (i, slot) in self.tats.iter().enumerate() {
            let current = slot.load(Ordering::Acquire);
            let ok = current <= now
                && slot
                    .compare_exchange(current, TOMBSTONE, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
            if !ok {
                // Those already marked were fresh; fresh again is the same.
                for earlier in &self.tats[..i] {
                    earlier.store(0, Ordering::Release);
                }
                return false;
            }
        }
        true
    }
}

/// What a [`Store`] keeps per key: the state itself (the rate limiter),
/// or a shared handle to it (the spend meter, which holds a request's
/// state from admission to settlement without looking the key up again).
pub(crate) trait Slot: Default + Send + Sync + 'static {
    fn state(&self) -> &KeyState;
}

impl Slot for KeyState {
    #[inline]
    fn state(&self) -> &KeyState {
        self
    }
}

impl Slot for std::sync::Arc<KeyState> {
    #[inline]
    fn state(&self) -> &KeyState {
        self
    }
}

/// The table's key type: an owned [`Key`] that can be looked up by a
/// borrowed one, so that finding an existing key does not allocate.
#[derive(PartialEq, Eq)]
struct StoredKey(Key<'static>);

impl Hash for StoredKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl<'r> Borrow<Key<'r>> for StoredKey {
    fn borrow(&self) -> &Key<'r> {
        &self.0
    }
}

/// Where a request's state lives.
pub(crate) enum Entry<'g, V = KeyState> {
    /// The key's own state.
    Tracked(&'g V),
    /// The table is full of live keys: the state shared by every key that
    /// could not be tracked.
    Overflow(&'g V),
    /// The table is full of live keys and the layer lets untracked keys
    /// through unlimited.
    Untracked,
}

/// A lock-free map (papaya) of keys to state, with at most `max_keys`
/// entries.
///
/// papaya is used because reads take no lock (a request for a known key
/// does one hash, one probe and the compare-exchange of the algorithm),
/// and removal is safe while readers hold references. Two settings matter
/// for speed, both measured with `benches/ratelimit.rs`:
///
/// * blocking resizes: papaya's default incremental resize completes only
///   as later writes help it, and a limiter that stops inserting keys
///   would look every key up through two tables forever (4× slower);
/// * foldhash with a random seed per table instead of SipHash (a third of
///   the lookup): keys come from clients, so the seed is what keeps them
///   from choosing colliding keys; foldhash's resistance is weaker than
///   SipHash's, the price of staying at governor's speed.
pub(crate) struct Store<V = KeyState> {
    map: papaya::HashMap<StoredKey, V, foldhash::fast::RandomState>,
    max_keys: usize,
    share_when_full: bool,
    overflow: V,
    /// Earliest time at which a sweep could remove anything: the smallest
    /// arrival time among the keys the last sweep kept, lowered by every
    /// insertion since.
    next_sweep: AtomicU64,
    /// Keys the last sweep removed.
    last_freed: AtomicU64,
    /// Insertions refused for a full table since the last sweep.
    pending: AtomicU64,
    /// When the last sweep ran.
    last_sweep: AtomicU64,
    sweeping: AtomicBool,
    pub(crate) overflowed: AtomicU64,
    pub(crate) evicted: AtomicU64,
}

impl<V: Slot> Store<V> {
    pub(crate) fn new(max_keys: usize, share_when_full: bool) -> Self {
        Self {
            map: papaya::HashMap::builder()
                .hasher(foldhash::fast::RandomState::default())
                .resize_mode(papaya::ResizeMode::Blocking)
                .build(),
            max_keys,
            share_when_full,
            overflow: V::default(),
            next_sweep: AtomicU64::new(0),
            last_freed: AtomicU64::new(u64::MAX),
            pending: AtomicU64::new(0),
            last_sweep: AtomicU64::new(0),
            sweeping: AtomicBool::new(false),
            overflowed: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Runs `f` on the state of `key`, creating it if needed. `f` returns
    /// `None` when it met a removed state; the lookup is then retried. A
    /// long key is looked up, and stored, as its digest (see
    /// `Key::digest_if_long`): a table of `max_keys` keys stays small
    /// however long the keys clients send.
    #[inline]
    pub(crate) fn with<R>(
        &self,
        key: &Key<'_>,
        now: u64,
        create: bool,
        mut f: impl FnMut(Entry<'_, V>) -> Option<R>,
    ) -> R {
        let digest = key.digest_if_long();
        let key = digest.as_ref().unwrap_or(key);
        let guard = self.map.guard();
        loop {
            let entry = match self.map.get(key, &guard) {
                Some(state) => Entry::Tracked(state),
                None if !create => Entry::Untracked,
                None => self.insert(key, now, &guard),
            };
            if let Some(r) = f(entry) {
                return r;
            }
        }
    }

    fn insert<'g>(
        &'g self,
        key: &Key<'_>,
        now: u64,
        guard: &'g impl papaya::Guard,
    ) -> Entry<'g, V> {
        if self.map.len() >= self.max_keys {
            self.sweep(now);
            if self.map.len() >= self.max_keys {
                self.overflowed.fetch_add(1, Ordering::Relaxed);
                self.pending.fetch_add(1, Ordering::Relaxed);
                return if self.share_when_full {
                    Entry::Overflow(&self.overflow)
                } else {
                    Entry::Untracked
                };
            }
        }
        // The new key may become fresh before any key the last sweep kept.
        self.next_sweep.fetch_min(now, Ordering::AcqRel);
        let stored = StoredKey(key.clone().into_owned());
        Entry::Tracked(self.map.get_or_insert_with(stored, V::default, guard))
    }

    /// Removes every key whose state equals a fresh key's.
    ///
    /// Runs only when the table is full, by one thread at a time, and
    /// never before some kept key can have become fresh. When the previous
    /// sweep freed less than a sixteenth of the table, the next one waits
    /// until a sixteenth of the table's size in insertions were refused or
    /// a second has passed. A sweep visits every key, so while the table is
    /// full of live keys this bounds sweeping to one visit of the table per
    /// second or per `max_keys / 16` refused newcomers, whichever is first.
    fn sweep(&self, now: u64) {
        const SECOND: u64 = 1_000_000_000;
        let budget = (self.max_keys as u64 / 16).max(1);
        let starved = self.last_freed.load(Ordering::Relaxed) < budget
            && self.pending.load(Ordering::Relaxed) < budget
            && now
                < self
                    .last_sweep
                    .load(Ordering::Relaxed)
                    .saturating_add(SECOND);
        if now < self.next_sweep.load(Ordering::Acquire)
            || starved
            || self.sweeping.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let mut earliest = u64::MAX;
        let mut removed = 0;
        self.map.pin().retain(|_, state| {
            let state = state.state();
            if state.max_tat() <= now && state.tombstone(now) {
                removed += 1;
                false
            } else {
                earliest = earliest.min(state.max_tat());
                true
            }
        });
        self.evicted.fetch_add(removed, Ordering::Relaxed);
        self.last_freed.store(removed, Ordering::Relaxed);
        self.pending.store(0, Ordering::Relaxed);
        self.last_sweep.store(now, Ordering::Relaxed);
        self.next_sweep.store(earliest, Ordering::Release);
        self.sweeping.store(false, Ordering::Release);
    }
}
