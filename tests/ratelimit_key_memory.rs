//! A flood of huge keys (300 KB header values, say) costs the rate
//! limiter what short keys cost: keys longer than 64 bytes are stored as a
//! fixed-size digest, so `max_keys` of them stay small.
//!
//! A counting global allocator measures live heap bytes; this file holds a
//! single test so that nothing else allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use switchyard::key::Key;
use switchyard::ratelimit::{ManualClock, Quota, RateLimitLayer};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator and only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn huge_keys_are_stored_in_fixed_size() {
    const MAX_KEYS: usize = 1_000;
    // 64 KiB: big enough to show the point, small enough to hash quickly
    // in a debug build (a 300 KB header value is stored the same way).
    const KEY_BYTES: usize = 64 * 1024;
    // Stored as they came, these keys would take MAX_KEYS * KEY_BYTES =
    // 64 MiB; as digests, well under 200 bytes each with their share of
    // the table.
    const BOUND: usize = 2 << 20;

    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(1).named("per-key"))
        .max_keys(MAX_KEYS)
        .clock(clock.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    // One buffer, rewritten for each key: the flood's own bytes are not
    // counted as the limiter's.
    let mut key = vec![b'k'; KEY_BYTES];

    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    for i in 0..MAX_KEYS {
        key[KEY_BYTES - 8..].copy_from_slice(&(i as u64).to_be_bytes());
        assert!(handle.check(&Key::from_bytes(&key), 1).is_allowed(), "{i}");
    }
    let stats = handle.stats();
    let grown = LIVE.load(Ordering::Relaxed).saturating_sub(baseline);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(baseline);
    println!("{stats:?}; live +{grown} B, peak +{peak} B");
    assert_eq!(stats.tracked_keys, MAX_KEYS as u64);
    assert!(peak < BOUND, "peak heap growth {peak} B over {BOUND} B");
    assert!(grown < BOUND, "heap growth {grown} B over {BOUND} B");

    // Each key is still limited as itself: a repeat is refused, a key
    // that differs in its last byte only is not the same key.
    for i in 0..MAX_KEYS {
        key[KEY_BYTES - 8..].copy_from_slice(&(i as u64).to_be_bytes());
        assert!(!handle.check(&Key::from_bytes(&key), 1).is_allowed(), "{i}");
    }
}
