//! Heap allocations on the request path of `Split`, counted by a global
//! allocator.
//!
//! * `Split::choose` (the whole selection path) allocates nothing, whatever
//!   the selection mode.
//! * A whole `Split::call` (call, response future to completion, response
//!   dropped) allocates exactly what calling the target directly does plus
//!   recording one `Target` extension on the request: the split adds no
//!   allocation of its own.
//!
//! Counts are per thread (the test harness runs tests on several threads),
//! and every measured path is warmed up first so one-time per-thread
//! initialisation (the random generator, arc-swap's debt list) is excluded.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use http::header::HeaderName;
use http::{Request, Response};
use switchyard::key::KeyBy;
use switchyard::split::{Split, SplitBuilder, Target};
use tower::{Service, ServiceExt};

// === counting allocator ===

struct Counting;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Count {
    /// Calls to `alloc`, `alloc_zeroed` and `realloc`.
    allocs: u64,
    /// Bytes requested by those calls.
    bytes: u64,
    /// Calls to `dealloc`.
    frees: u64,
}

thread_local! {
    // `const` and without a destructor: reading it never allocates or
    // registers anything, so the allocator can use it.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
    static FREES: Cell<u64> = const { Cell::new(0) };
}

fn bump(counter: &'static std::thread::LocalKey<Cell<u64>>, by: u64) {
    // `try_with`: the allocator also runs while a thread is torn down.
    let _ = counter.try_with(|c| c.set(c.get() + by));
}

fn record_alloc(size: usize) {
    bump(&ALLOCS, 1);
    bump(&BYTES, size as u64);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counters are plain thread-local cells.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record_alloc(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record_alloc(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record_alloc(new_size);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        bump(&FREES, 1);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn snapshot() -> Count {
    Count {
        allocs: ALLOCS.with(Cell::get),
        bytes: BYTES.with(Cell::get),
        frees: FREES.with(Cell::get),
    }
}

/// Runs `f` and returns what it allocated on this thread.
fn counting<R>(f: impl FnOnce() -> R) -> (R, Count) {
    let before = snapshot();
    let out = std::hint::black_box(f());
    let after = snapshot();
    let count = Count {
        allocs: after.allocs - before.allocs,
        bytes: after.bytes - before.bytes,
        frees: after.frees - before.frees,
    };
    (out, count)
}

// === helpers ===

/// A target that allocates nothing: always ready, answers at once.
#[derive(Clone, Copy, Debug)]
struct Noop;

impl Service<Request<()>> for Noop {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: Request<()>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

/// Polls a future that must be ready at once (no executor, so nothing
/// else allocates during a measurement).
fn now<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(fut).poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the futures in this test are immediately ready"),
    }
}

/// ready + call + response future to completion + response dropped.
fn round_trip<S, B>(svc: &mut S, req: Request<()>)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    let svc = now(svc.ready()).unwrap();
    let res = now(svc.call(req)).unwrap();
    drop(std::hint::black_box(res));
}

const USER: &str = "x-user";
const OVERRIDE: &str = "x-switchyard-target";

fn split(configure: impl FnOnce(SplitBuilder<Noop>) -> SplitBuilder<Noop>) -> Split<Noop> {
    configure(
        Split::builder()
            .target("blue", Noop, 90)
            .target("green", Noop, 10),
    )
    .build()
    .unwrap()
}

fn request(headers: &[(&'static str, &'static str)]) -> Request<()> {
    let mut req = Request::new(());
    for &(name, value) in headers {
        req.headers_mut().append(
            HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    req
}

/// One selection mode under test: a split and requests that exercise it.
struct Case {
    mode: &'static str,
    split: Split<Noop>,
    requests: Vec<Request<()>>,
}

type Headers = Vec<(&'static str, &'static str)>;

fn cases() -> Vec<Case> {
    let users = [
        vec![(USER, "alice")],
        vec![(USER, "bob")],
        vec![(USER, "carol")],
        vec![(USER, "dave")],
    ];
    let cookies = [
        vec![("cookie", "session=alice")],
        vec![("cookie", "theme=dark; session=\"bob\"")],
        vec![("cookie", "a=1"), ("cookie", "b=2;session=carol")],
    ];
    let case = |mode, split, sets: &[Headers]| Case {
        mode,
        split,
        requests: sets.iter().map(|h| request(h)).collect(),
    };
    let header = || KeyBy::header(HeaderName::from_static(USER));
    let random_requests: &[Headers] = &[vec![], vec![(USER, "alice")]];
    vec![
        case("random", split(|b| b), random_requests),
        case("random, seeded", split(|b| b.seed(7)), random_requests),
        case("sticky header", split(|b| b.sticky(header())), &users),
        case(
            "sticky header, key missing (random fallback)",
            split(|b| b.sticky(header())),
            &[vec![], vec![(USER, "")]],
        ),
        case(
            "sticky cookie",
            split(|b| b.sticky(KeyBy::cookie("session"))),
            &cookies,
        ),
        case(
            "sticky header or cookie",
            split(|b| b.sticky(header().or(KeyBy::cookie("session")))),
            &cookies,
        ),
        case(
            "override header",
            split(|b| {
                b.sticky(header())
                    .override_header(HeaderName::from_static(OVERRIDE))
            }),
            &[
                vec![(OVERRIDE, "green"), (USER, "alice")],
                vec![(OVERRIDE, "blue")],
                // Not a target: ignored, routed by the sticky key.
                vec![(OVERRIDE, "purple"), (USER, "bob")],
            ],
        ),
    ]
}

// === tests ===

#[test]
fn the_counter_counts() {
    let (_, count) = counting(|| drop(std::hint::black_box(Box::new(1u64))));
    assert_eq!(count.allocs, 1);
    assert_eq!(count.bytes, 8);
    assert_eq!(count.frees, 1);
}

#[test]
fn choose_does_not_allocate() {
    for Case {
        mode,
        split,
        requests,
    } in cases()
    {
        // Warm-up: per-thread generator and arc-swap state.
        for req in &requests {
            let _ = split.choose(req);
        }
        for req in &requests {
            for _ in 0..64 {
                let (target, count) = counting(|| split.choose(req).index());
                assert_eq!(
                    count,
                    Count::default(),
                    "{mode}: choose allocated (target {target})"
                );
            }
        }
    }
}

/// The control: a key source that does allocate (a custom closure
/// returning an owned `String`) is seen through `choose`, so the zero
/// counts above are not an artefact of the counter.
#[test]
fn choose_allocations_are_visible() {
    let split = split(|b| b.sticky(KeyBy::custom(|_: &_| Some(String::from("alice")))));
    let req = request(&[]);
    let _ = split.choose(&req);
    let (_, count) = counting(|| split.choose(&req).index());
    assert_eq!(count.allocs, 1);
    assert_eq!(count.frees, 1);
}

#[test]
fn choose_does_not_allocate_across_weight_changes() {
    let split = split(|b| b.sticky(KeyBy::header(HeaderName::from_static(USER))));
    let handle = split.handle();
    let req = request(&[(USER, "alice")]);
    let _ = split.choose(&req);
    for green in [0, 10, 50, 100] {
        handle
            .set_weights([("blue", 100 - green), ("green", green)])
            .unwrap();
        let _ = split.choose(&req);
        let (_, count) = counting(|| split.choose(&req).index());
        assert_eq!(count, Count::default(), "green at {green}");
    }
}

#[test]
fn call_allocates_only_the_target_extension() {
    for Case {
        mode,
        mut split,
        requests,
    } in cases()
    {
        let mut direct = Noop;
        // Warm-up of both paths, long enough that a random pick has sent
        // some to each target (missing the 10 % one in 400 picks: about
        // 1e-18): a thread's first count on a target's counters makes its
        // own slot of them, once and not per request.
        for _ in 0..200 {
            for req in &requests {
                round_trip(&mut split, req.clone());
                let mut req = req.clone();
                let target = *split.choose(&req);
                req.extensions_mut().insert(target);
                round_trip(&mut direct, req);
            }
        }

        for template in &requests {
            // The value `Split` records, so the baseline inserts an
            // extension of exactly the same type and size.
            let target: Target = *split.choose(template);

            for _ in 0..16 {
                let req = template.clone();
                let (_, baseline) = counting(|| {
                    let mut req = req;
                    req.extensions_mut().insert(target);
                    round_trip(&mut direct, req);
                });

                let req = template.clone();
                let (_, via_split) = counting(|| round_trip(&mut split, req));

                assert!(
                    baseline.allocs > 0,
                    "{mode}: the baseline should allocate the extension map"
                );
                assert_eq!(
                    via_split, baseline,
                    "{mode}: Split::call allocated more than the direct call plus one extension"
                );
                // Everything allocated was freed by the time the response
                // was dropped: what was freed is what the call allocated
                // plus what the request itself owned.
                let req = template.clone();
                let (_, request_drop) = counting(|| drop(req));
                assert_eq!(
                    via_split.frees,
                    via_split.allocs + request_drop.frees,
                    "{mode}: leaked"
                );
            }
        }

        // Every request ran to completion: nothing left in flight.
        for stats in split.handle().stats() {
            assert_eq!(stats.in_flight, 0, "{mode}: {} in flight", stats.name);
        }
    }
}
