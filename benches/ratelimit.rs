//! The keyed rate-limit check next to governor's keyed limiter doing the
//! same work.
//!
//! Both limiters get a quota that always allows (a limit of `u32::MAX` per
//! second with a burst as large: every check moves the key's arrival time
//! by one nanosecond, and the tolerance is over four seconds), so what is
//! measured is the allowed path: find the key's state, read the clock, one
//! compare-exchange. Both use their default clock and hasher, and the keys
//! (the same strings for both, as `Key<'static>` for us and `String` for
//! governor) are built, and inserted into the table, before measuring.
//!
//! * `single_key`: one key, over and over.
//! * `keys_10k`: 10,000 distinct keys, round-robin.
//! * `two_threads`: two threads checking one key at the same time.
//!
//! Each has a `governor_` twin.
//!
//! ```text
//! cargo bench --bench ratelimit -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Budget (see DESIGN.md): each of ours at least as fast as its governor
//! twin.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Bencher, Criterion, criterion_group, criterion_main};
use governor::{DefaultKeyedRateLimiter, RateLimiter};
use switchyard::key::Key;
use switchyard::ratelimit::{Quota, RateLimitHandle, RateLimitLayer};

/// Distinct keys of `keys_10k`.
const KEYS: usize = 10_000;

/// Room in our table for every key, so none is refused or swept.
const MAX_KEYS: usize = 2 * KEYS;

/// The `i`-th key's text, the same for both limiters.
fn name(i: usize) -> String {
    format!("user-{i:05}")
}

/// Our limiter with a quota that always allows.
fn ours() -> RateLimitHandle {
    RateLimitLayer::builder()
        .quota(Quota::per_second(u32::MAX).burst(u32::MAX))
        .max_keys(MAX_KEYS)
        .build()
        .expect("a valid quota")
        .handle()
}

/// governor's keyed limiter (DashMap, `RandomState`, quanta clock) with a
/// quota that always allows.
fn governor() -> DefaultKeyedRateLimiter<String> {
    RateLimiter::keyed(governor::Quota::per_second(NonZeroU32::MAX))
}

/// A limiter under test: one allowed check of one key.
trait Check: Sync {
    type Key: Sync;

    fn key(name: String) -> Self::Key;

    /// Checks one unit for `key`; `true` when allowed.
    fn check_one(&self, key: &Self::Key) -> bool;
}

impl Check for RateLimitHandle {
    type Key = Key<'static>;

    fn key(name: String) -> Key<'static> {
        Key::from(name)
    }

    #[inline]
    fn check_one(&self, key: &Key<'static>) -> bool {
        let decision = self.check(key, 1);
        // The whole `Decision` is observed, so building it is part of what
        // is measured (by reference: no extra copy of it is timed).
        black_box(&decision);
        decision.is_allowed()
    }
}

impl Check for DefaultKeyedRateLimiter<String> {
    type Key = String;

    fn key(name: String) -> String {
        name
    }

    #[inline]
    fn check_one(&self, key: &String) -> bool {
        let outcome = self.check_key(key);
        black_box(&outcome);
        outcome.is_ok()
    }
}

fn single_key<L: Check>(b: &mut Bencher<'_>, limiter: &L) {
    let key = L::key(name(0));
    assert!(limiter.check_one(&key), "the quota allows every check");
    b.iter(|| limiter.check_one(black_box(&key)));
    assert!(limiter.check_one(&key), "still allowed after measuring");
}

fn keys_10k<L: Check>(b: &mut Bencher<'_>, limiter: &L) {
    let keys: Vec<L::Key> = (0..KEYS).map(|i| L::key(name(i))).collect();
    // Insert every key before measuring: what follows are lookups only.
    for key in &keys {
        assert!(limiter.check_one(key), "the quota allows every check");
    }
    let mut i = 0;
    b.iter(|| {
        let allowed = limiter.check_one(black_box(&keys[i]));
        i += 1;
        if i == KEYS {
            i = 0;
        }
        allowed
    });
    assert!(keys.iter().all(|k| limiter.check_one(k)), "still allowed");
}

/// Two threads each check one shared key `iters` times, starting together.
///
/// The number reported is the wall time of the slower thread divided by
/// `iters`: the time **per check per thread** while both run at once (the
/// latency of one check under contention). The two threads together do
/// two checks in that time, so the aggregate throughput is twice its
/// inverse. Thread start-up is not timed: each thread starts its clock
/// after a barrier that both have reached.
fn two_threads<L: Check>(b: &mut Bencher<'_>, limiter: &L) {
    let key = L::key(name(0));
    assert!(limiter.check_one(&key), "the quota allows every check");
    b.iter_custom(|iters| {
        let barrier = Barrier::new(2);
        let run = || {
            barrier.wait();
            let start = Instant::now();
            let mut allowed = 0u64;
            for _ in 0..iters {
                allowed += u64::from(limiter.check_one(black_box(&key)));
            }
            let elapsed = start.elapsed();
            assert_eq!(allowed, iters, "the quota allows every check");
            elapsed
        };
        thread::scope(|s| {
            let other = s.spawn(run);
            let mine = run();
            let theirs = other.join().expect("the checking thread panicked");
            mine.max(theirs)
        })
    });
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit");

    let ours_single = ours();
    let gov_single = governor();
    group.bench_function("single_key", |b| single_key(b, &ours_single));
    group.bench_function("governor_single_key", |b| single_key(b, &gov_single));

    let ours_keys = ours();
    let gov_keys = governor();
    group.bench_function("keys_10k", |b| keys_10k(b, &ours_keys));
    group.bench_function("governor_keys_10k", |b| keys_10k(b, &gov_keys));

    let ours_two = ours();
    let gov_two = governor();
    group.bench_function("two_threads", |b| two_threads(b, &ours_two));
    group.bench_function("governor_two_threads", |b| two_threads(b, &gov_two));

    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
