//! Routing overhead of `Split` over calling the target directly, next to
//! `tower::steer::Steer` doing an equivalent weighted pick.
//!
//! Every function builds the same request (with an `x-user` header cycling
//! through a small set of users), drives `ready()` + `call` + the response
//! future, and drops the response inside the iteration, so the differences
//! between them are the routing (and in-flight accounting) alone. The
//! targets answer with an immediately ready future, so futures are polled
//! once with a no-op waker instead of running an executor.
//!
//! ```text
//! cargo bench --bench split -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Budget (see DESIGN.md): `random` − `direct` ≤ 50 ns, `sticky` − `direct`
//! ≤ 100 ns. `direct_ext` is `direct` plus recording a `Target` in the
//! request's extensions, as `Split` must: the part of the overhead that is
//! `http::Extensions` allocating its map on a fresh request. `*_axum` run
//! the same on requests that already carry an extension, as every request
//! routed by axum does (`OriginalUri`), where recording the `Target` only
//! adds an entry.

use std::cell::RefCell;
use std::convert::Infallible;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use rand::rngs::SmallRng;
use switchyard::key::KeyBy;
use switchyard::split::Split;
use tower::steer::Steer;
use tower::{Service, ServiceExt};

mod support;
use support::{Noop, now};

/// A small set of users so sticky hashing does not see one key over and over.
const USERS: usize = 16;

struct Requests {
    name: HeaderName,
    users: Vec<HeaderValue>,
    next: usize,
    /// Whether requests arrive with an extension already recorded, as they
    /// do behind axum's `Router` (which inserts `OriginalUri` before any
    /// route or fallback service sees the request).
    like_axum: bool,
}

/// Stands for axum's `OriginalUri`: an extension already on the request.
#[derive(Clone)]
struct OriginalUri(#[expect(dead_code, reason = "only its presence matters")] http::Uri);

impl Requests {
    fn new() -> Self {
        Self {
            name: HeaderName::from_static("x-user"),
            users: (0..USERS)
                .map(|i| HeaderValue::try_from(format!("user-{i:04}")).unwrap())
                .collect(),
            next: 0,
            like_axum: false,
        }
    }

    fn like_axum() -> Self {
        Self {
            like_axum: true,
            ..Self::new()
        }
    }

    /// The request every function of a variant builds, identically.
    #[inline]
    fn build(&mut self) -> Request<()> {
        self.next = (self.next + 1) % USERS;
        let mut req = Request::builder()
            .header(self.name.clone(), self.users[self.next].clone())
            .body(())
            .unwrap();
        if self.like_axum {
            let uri = req.uri().clone();
            req.extensions_mut().insert(OriginalUri(uri));
        }
        req
    }
}

/// One full round trip: ready, call, poll to completion, drop the response.
#[inline]
fn round_trip<S, B>(svc: &mut S, req: Request<()>)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible>,
{
    let svc = now(svc.ready()).unwrap();
    let res = now(svc.call(req)).unwrap();
    drop(black_box(res));
}

thread_local! {
    /// The same kind of generator `Split` uses for random picks.
    static RNG: RefCell<SmallRng> = RefCell::new(rand::make_rng());
}

/// Steer's picker: 90/10 by weight from a per-thread fast generator, the
/// same arithmetic as `Split`'s random pick.
fn pick_90_10(_req: &Request<()>, _services: &[Noop]) -> usize {
    let point = RNG.with(|rng| rand::Rng::next_u64(&mut *rng.borrow_mut()));
    let scaled = ((u128::from(point) * 100) >> 64) as u64;
    usize::from(scaled >= 90)
}

fn random_split() -> Split<Noop> {
    Split::builder()
        .target("blue", Noop, 90)
        .target("green", Noop, 10)
        .build()
        .unwrap()
}

fn sticky_split() -> Split<Noop> {
    Split::builder()
        .target("blue", Noop, 90)
        .target("green", Noop, 10)
        .sticky(KeyBy::header(HeaderName::from_static("x-user")))
        .build()
        .unwrap()
}

fn split(c: &mut Criterion) {
    let mut group = c.benchmark_group("split");

    // The same three on requests as axum hands them on: their extension
    // map exists already, so recording the `Target` adds one entry rather
    // than allocating the map.
    group.bench_function("direct_axum", |b| {
        let mut reqs = Requests::like_axum();
        let mut svc = Noop;
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });
    group.bench_function("random_axum", |b| {
        let mut reqs = Requests::like_axum();
        let mut svc = random_split();
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });
    group.bench_function("sticky_axum", |b| {
        let mut reqs = Requests::like_axum();
        let mut svc = sticky_split();
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });

    group.bench_function("direct", |b| {
        let mut reqs = Requests::new();
        let mut svc = Noop;
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });

    // `Split` records the chosen `Target` in the request's extensions, and
    // on a request with no extensions yet `http::Extensions` allocates its
    // map for that (three allocations). This is the direct call plus that
    // same insertion: the baseline for what `Split` itself adds.
    group.bench_function("direct_ext", |b| {
        let mut reqs = Requests::new();
        let one = Split::builder().target("blue", Noop, 1).build().unwrap();
        let target = *one.choose(&Request::new(()));
        let mut svc = Noop;
        b.iter(|| {
            let mut req = reqs.build();
            req.extensions_mut().insert(target);
            round_trip(&mut svc, req)
        });
    });

    group.bench_function("random", |b| {
        let mut reqs = Requests::new();
        let mut svc = random_split();
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });

    group.bench_function("sticky", |b| {
        let mut reqs = Requests::new();
        let mut svc = sticky_split();
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });

    group.bench_function("steer", |b| {
        let mut reqs = Requests::new();
        let picker: fn(&Request<()>, &[Noop]) -> usize = pick_90_10;
        let mut svc = Steer::new([Noop, Noop], picker);
        b.iter(|| round_trip(&mut svc, reqs.build()));
    });

    group.finish();
}

criterion_group!(benches, split);
criterion_main!(benches);
