//! The rate limiter's memory stays bounded under a flood of distinct keys,
//! while a well-behaved key keeps its own limit.
//!
//! A counting global allocator measures live heap bytes; this file holds a
//! single test so that nothing else allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
fn a_million_keys_stay_within_the_bound() {
    const MAX_KEYS: usize = 10_000;
    const FLOOD: u64 = 1_000_000;
    // Memory the table may use for MAX_KEYS keys, generously: a tracked
    // key costs well under 200 bytes with its share of the table. A million
    // tracked keys would need two orders of magnitude more.
    const BOUND: usize = 8 << 20;

    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(10).named("per-key"))
        .max_keys(MAX_KEYS)
        .clock(clock.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    let good = Key::from("well-behaved");
    assert!(handle.check(&good, 1).is_allowed());

    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);

    // 10,000 new keys a second for 100 simulated seconds; the good key
    // makes one request every 200 ms (half its rate), and every 10 s a
    // burst of 11 of which exactly its burst of 10 must pass.
    let mut name = String::new();
    let mut max_tracked = 0;
    for i in 0..FLOOD {
        if i % 10 == 0 {
            clock.advance(Duration::from_millis(1));
        }
        name.clear();
        use std::fmt::Write;
        write!(name, "flood-{i}").unwrap();
        handle.check(&Key::from(name.as_str()), 1);

        if i % 2_000 == 0 {
            assert!(
                handle.check(&good, 1).is_allowed(),
                "good key refused at {i}"
            );
        }
        if i % 100_000 == 50_000 {
            // Let it recover fully first (it used 1 unit 100 ms ago at most).
            clock.advance(Duration::from_millis(100));
            let passed = (0..11)
                .filter(|_| handle.check(&good, 1).is_allowed())
                .count();
            assert_eq!(passed, 10, "burst of the good key at {i}");
            clock.advance(Duration::from_secs(1));
        }
        if i % 1_000 == 0 {
            max_tracked = max_tracked.max(handle.stats().tracked_keys);
        }
    }

    let stats = handle.stats();
    let grown = LIVE.load(Ordering::Relaxed).saturating_sub(baseline);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(baseline);
    println!("{stats:?}; live +{grown} B, peak +{peak} B, max tracked {max_tracked}");
    assert!(max_tracked <= MAX_KEYS as u64, "tracked {max_tracked} keys");
    assert!(stats.evicted > FLOOD - MAX_KEYS as u64 * 2, "{stats:?}");
    assert!(
        peak < BOUND,
        "peak heap growth {peak} B over the {BOUND} B bound"
    );
    assert!(
        grown < BOUND,
        "heap growth {grown} B over the {BOUND} B bound"
    );
}
