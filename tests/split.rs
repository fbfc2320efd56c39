//! Integration tests of `switchyard::split`, driving whole `Split`s with
//! `ServiceExt::oneshot` / `call` over in-process `service_fn` targets.
//!
//! Random selection is always seeded; time-based waits run on tokio's paused
//! clock (a `timeout` there only says "still pending once the runtime is
//! idle", never "fast enough").

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{COOKIE, HeaderName};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use proptest::prelude::*;
use switchyard::key::KeyBy;
use switchyard::split::{Split, SplitError, Target, TargetStats};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tower::util::ServiceFn;
use tower::{Service, ServiceExt, service_fn};

const X_USER: HeaderName = HeaderName::from_static("x-user");
const X_TARGET: HeaderName = HeaderName::from_static("x-switchyard-target");
const X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");

// === helpers ===

/// What an in-process target's call returns.
type Answer<B> = Ready<Result<Response<B>, Infallible>>;

/// One version of a service: answers its own name, and hands the `Target`
/// extension it was called with back in the response's extensions so tests
/// can check what the inner service saw.
fn version(
    name: &'static str,
) -> ServiceFn<impl FnMut(Request<()>) -> Answer<String> + Clone + Send + Sync + 'static> {
    service_fn(move |req: Request<()>| {
        let seen = req.extensions().get::<Target>().cloned();
        let mut res = Response::new(name.to_owned());
        if let Some(t) = seen {
            res.extensions_mut().insert(t);
        }
        ready(Ok(res))
    })
}

/// Sends one request and returns the body (the serving version's name) and
/// the `Target` the inner service saw, checking that they agree.
async fn send<S>(split: &Split<S>, req: Request<()>) -> (String, Target)
where
    S: Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone,
{
    let res = split.clone().oneshot(req).await.unwrap();
    let seen = res
        .extensions()
        .get::<Target>()
        .cloned()
        .expect("the inner service saw no `Target` extension");
    let body = res.into_body().into_inner();
    assert_eq!(
        body,
        seen.name(),
        "served by one version, Target names another"
    );
    (body, seen)
}

fn with_header(name: HeaderName, value: &str) -> Request<()> {
    Request::builder().header(name, value).body(()).unwrap()
}

fn stats_of(stats: &[TargetStats], name: &str) -> TargetStats {
    stats
        .iter()
        .find(|s| s.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no stats for {name}"))
}

/// Polls a future once with a no-op waker.
fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
}

/// A response body fed chunk by chunk from a channel; it ends when the
/// sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

type Tap = mpsc::UnboundedSender<(&'static str, mpsc::Sender<Bytes>)>;

/// A version whose responses stream: each call hands the sending end of its
/// body to the test through `tap`.
fn streaming(
    name: &'static str,
    tap: Tap,
) -> ServiceFn<impl FnMut(Request<()>) -> Answer<ChannelBody> + Clone + 'static> {
    service_fn(move |_req: Request<()>| {
        let (tx, rx) = mpsc::channel(4);
        tap.send((name, tx)).expect("test dropped the tap");
        ready(Ok(Response::new(ChannelBody(rx))))
    })
}

// === 1. weighted distribution ===

#[tokio::test]
async fn weighted_distribution_follows_weights() {
    const N: u64 = 20_000;
    let weights = [("a", 70u32), ("b", 20), ("c", 10)];
    let split = Split::builder()
        .target("a", version("a"), 70)
        .target("b", version("b"), 20)
        .target("c", version("c"), 10)
        .seed(0x5eed)
        .build()
        .unwrap();
    let handle = split.handle();

    let mut counts: HashMap<String, u64> = HashMap::new();
    for _ in 0..N {
        let (body, _) = send(&split, Request::new(())).await;
        *counts.entry(body).or_default() += 1;
    }

    let stats = handle.stats();
    for (name, weight) in weights {
        let p = f64::from(weight) / 100.0;
        let mean = N as f64 * p;
        let sigma = (N as f64 * p * (1.0 - p)).sqrt();
        let got = counts.get(name).copied().unwrap_or(0);
        assert!(
            (got as f64 - mean).abs() <= 5.0 * sigma,
            "{name}: {got} of {N}, expected {mean} ± {:.0} (5 sigma)",
            5.0 * sigma
        );
        let s = stats_of(&stats, name);
        assert_eq!(s.weight, weight);
        assert_eq!(s.requests, got, "{name}: requests counter");
        assert_eq!(s.responses.success, got, "{name}: 2xx counter");
        assert_eq!(s.in_flight, 0);
        assert_eq!(s.errors, 0);
    }
    assert_eq!(stats.iter().map(|s| s.requests).sum::<u64>(), N);
}

#[test]
fn same_seed_gives_the_same_sequence_of_picks() {
    let build = |seed| {
        Split::builder()
            .target("a", version("a"), 1)
            .target("b", version("b"), 1)
            .target("c", version("c"), 1)
            .seed(seed)
            .build()
            .unwrap()
    };
    let picks = |split: &Split<_>| -> Vec<usize> {
        (0..200)
            .map(|_| split.choose(&Request::new(())).index())
            .collect()
    };
    let (x, y, z) = (build(9), build(9), build(10));
    let (px, py, pz) = (picks(&x), picks(&y), picks(&z));
    assert_eq!(px, py, "same seed, same sequence");
    assert_ne!(px, pz, "another seed, another sequence");
    assert_eq!(px.iter().collect::<HashSet<_>>().len(), 3);
}

// === 2. 100/0 ===

#[tokio::test]
async fn zero_weight_target_gets_nothing() {
    let split = Split::builder()
        .target("blue", version("blue"), 100)
        .target("green", version("green"), 0)
        .sticky(KeyBy::header(X_USER))
        .seed(1)
        .build()
        .unwrap();
    let handle = split.handle();

    // Random (no key).
    for _ in 0..3_000 {
        assert_eq!(send(&split, Request::new(())).await.0, "blue");
    }
    // Sticky, many keys.
    for i in 0..3_000 {
        let req = with_header(X_USER, &format!("user-{i}"));
        assert_eq!(split.choose(&req).name(), "blue");
        assert_eq!(send(&split, req).await.0, "blue");
    }

    let green = handle.target_stats("green").unwrap();
    assert_eq!(green.requests, 0);
    assert_eq!(green.weight, 0);
    assert_eq!(green.responses.success, 0);
    assert_eq!(handle.target_stats("blue").unwrap().requests, 6_000);

    // Same the other way round, and with the zero target first.
    let split = Split::builder()
        .target("blue", version("blue"), 0)
        .target("green", version("green"), 3)
        .target("red", version("red"), 0)
        .seed(2)
        .build()
        .unwrap();
    for _ in 0..2_000 {
        assert_eq!(send(&split, Request::new(())).await.0, "green");
    }
    let stats = split.handle().stats();
    assert_eq!(stats_of(&stats, "blue").requests, 0);
    assert_eq!(stats_of(&stats, "red").requests, 0);
    assert_eq!(stats_of(&stats, "green").requests, 2_000);
}

// === 3. sticky ===

async fn check_sticky<S>(split: &Split<S>, keyed: impl Fn(&str) -> Request<()>)
where
    S: Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone,
{
    let mut per_target: HashMap<String, u32> = HashMap::new();
    for i in 0..300 {
        let key = format!("user-{i}");
        let (first, _) = send(split, keyed(&key)).await;
        assert_eq!(split.choose(&keyed(&key)).name(), first);
        for _ in 0..4 {
            assert_eq!(send(split, keyed(&key)).await.0, first, "key {key} moved");
        }
        *per_target.entry(first).or_default() += 1;
    }
    // 300 keys at 50/50: both targets hold some.
    assert!(
        per_target.get("blue").copied().unwrap_or(0) > 0,
        "{per_target:?}"
    );
    assert!(
        per_target.get("green").copied().unwrap_or(0) > 0,
        "{per_target:?}"
    );

    // Requests without the key fall back to random.
    let mut unkeyed: HashMap<String, u32> = HashMap::new();
    for _ in 0..300 {
        *unkeyed
            .entry(send(split, Request::new(())).await.0)
            .or_default() += 1;
    }
    assert!(unkeyed.get("blue").copied().unwrap_or(0) > 0, "{unkeyed:?}");
    assert!(
        unkeyed.get("green").copied().unwrap_or(0) > 0,
        "{unkeyed:?}"
    );
}

#[tokio::test]
async fn sticky_by_header() {
    let split = Split::builder()
        .target("blue", version("blue"), 50)
        .target("green", version("green"), 50)
        .sticky(KeyBy::header(X_USER))
        .seed(3)
        .build()
        .unwrap();
    check_sticky(&split, |key| with_header(X_USER, key)).await;
}

#[tokio::test]
async fn sticky_by_cookie() {
    let split = Split::builder()
        .target("blue", version("blue"), 50)
        .target("green", version("green"), 50)
        .sticky(KeyBy::cookie("session"))
        .seed(4)
        .build()
        .unwrap();
    check_sticky(&split, |key| {
        with_header(COOKIE, &format!("theme=dark; session={key}; lang=en"))
    })
    .await;
    // The key is the cookie's value wherever it sits, quoted or not, and
    // across several `Cookie` headers.
    for i in 0..50 {
        let key = format!("user-{i}");
        let want = split
            .choose(&with_header(COOKIE, &format!("session={key}")))
            .index();
        let quoted = with_header(COOKIE, &format!("a=1;session=\"{key}\""));
        assert_eq!(split.choose(&quoted).index(), want);
        let split_headers = Request::builder()
            .header(COOKIE, "a=1")
            .header(COOKIE, format!("session={key}"))
            .body(())
            .unwrap();
        assert_eq!(split.choose(&split_headers).index(), want);
    }
}

#[tokio::test]
async fn sticky_assignment_survives_unrelated_changes_and_salts_apart() {
    let build = |salt: Option<&str>| {
        let b = Split::builder()
            .target("blue", version("blue"), 50)
            .target("green", version("green"), 50)
            .sticky(KeyBy::header(X_USER));
        match salt {
            Some(s) => b.sticky_salt(s).build().unwrap(),
            None => b.build().unwrap(),
        }
    };
    let keys: Vec<String> = (0..400).map(|i| format!("k{i}")).collect();
    let assign = |split: &Split<_>| -> Vec<usize> {
        keys.iter()
            .map(|k| split.choose(&with_header(X_USER, k)).index())
            .collect()
    };
    let a = build(None);
    let before = assign(&a);
    // Independent splits with the same (no) salt agree; a change and its
    // rollback give every key its old target back.
    assert_eq!(assign(&build(None)), before);
    a.handle()
        .set_weights([("blue", 10), ("green", 90)])
        .unwrap();
    a.handle().rollback().unwrap();
    assert_eq!(assign(&a), before);
    // Same salt agrees, another salt decorrelates.
    assert_eq!(assign(&build(Some("s1"))), assign(&build(Some("s1"))));
    assert_ne!(assign(&build(Some("s1"))), before);
}

// === 4. ramp-monotonic stickiness (proptest) ===

fn choose_all<S>(split: &Split<S>, keys: &[String]) -> Vec<usize> {
    keys.iter()
        .map(|k| split.choose(&with_header(X_USER, k)).index())
        .collect()
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i}")).collect()
}

fn sticky_split(weights: &[u32]) -> Split<impl Clone> {
    let mut b = Split::builder().sticky(KeyBy::header(X_USER)).seed(0);
    for (name, &w) in names(weights.len()).into_iter().zip(weights) {
        b = b.target(name, version("v"), w);
    }
    b.build().unwrap()
}

/// Raises target `raised` by `delta` and checks that every key stayed or
/// moved onto `raised`. Returns an error naming the first offending key.
fn check_ramp(weights: &[u32], raised: usize, delta: u32, keys: &[String]) -> Result<(), String> {
    let split = sticky_split(weights);
    let handle = split.handle();
    let before = choose_all(&split, keys);
    let mut new = weights.to_vec();
    new[raised] += delta;
    handle
        .set_weights(names(weights.len()).iter().zip(new.iter().copied()))
        .unwrap();
    let after = choose_all(&split, keys);
    for ((key, &b), &a) in keys.iter().zip(&before).zip(&after) {
        if a != b && a != raised {
            return Err(format!(
                "weights {weights:?} -> {new:?} (raised t{raised}): key {key:?} moved t{b} -> t{a}"
            ));
        }
        if b == raised && a != raised {
            return Err(format!(
                "weights {weights:?} -> {new:?}: key {key:?} moved OFF the raised t{raised}"
            ));
        }
    }
    Ok(())
}

fn weight() -> impl Strategy<Value = u32> {
    prop_oneof![Just(0u32), 1u32..100, 1u32..=u32::MAX / 8]
}

fn weights_vec(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(weight(), len)
        .prop_filter("one weight above zero", |w| w.iter().any(|&x| x > 0))
}

fn keys() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[!-~]{1,32}", 1..64)
}

/// 256 cases; no regression files (the counterexamples worth keeping are
/// written out as tests below).
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// The canary case: two targets. Passes.
    #[test]
    fn ramp_monotonic_two_targets(
        weights in weights_vec(2..=2),
        raised in 0usize..2,
        delta in prop_oneof![1u32..100, 1u32..=u32::MAX / 8],
        keys in keys(),
    ) {
        check_ramp(&weights, raised, delta, &keys).map_err(TestCaseError::fail)?;
    }

    /// Raising a target whose other targets sit on both sides of it (three
    /// targets, raise the middle one) is also monotonic. Passes.
    #[test]
    fn ramp_monotonic_middle_of_three(
        weights in weights_vec(3..=3),
        delta in prop_oneof![1u32..100, 1u32..=u32::MAX / 8],
        keys in keys(),
    ) {
        check_ramp(&weights, 1, delta, &keys).map_err(TestCaseError::fail)?;
    }

    /// The same key gets the same target on every `choose`, on clones of the
    /// split, on an independently built split with the same weights, and in
    /// `call` (the `Target` the inner service sees).
    #[test]
    fn same_key_same_target(weights in weights_vec(2..=5), keys in keys()) {
        let split = sticky_split(&weights);
        let first = choose_all(&split, &keys);
        prop_assert_eq!(&choose_all(&split, &keys), &first);
        prop_assert_eq!(&choose_all(&split.clone(), &keys), &first);
        prop_assert_eq!(&choose_all(&sticky_split(&weights), &keys), &first);
        for &i in &first {
            prop_assert!(weights[i] > 0, "key sent to zero-weight t{}", i);
        }
    }
}

proptest! {
    #![proptest_config(config())]

    /// The brief's invariant over 2..5 targets: raising any one target's
    /// weight moves keys only onto it.
    #[test]
    fn ramp_monotonic_any_targets(
        weights in weights_vec(2..=5),
        raised in any::<prop::sample::Index>(),
        delta in prop_oneof![1u32..100, 1u32..=u32::MAX / 8],
        keys in keys(),
    ) {
        let raised = raised.index(weights.len());
        check_ramp(&weights, raised, delta, &keys).map_err(TestCaseError::fail)?;
    }
}

/// The cases that defeated an earlier layout of targets as consecutive
/// ranges of the bucket space in target order: from 1/1/1 to 1/1/4 the
/// ranges shift, and keys moved from t0 to t1 although only t2 was raised.
/// The everyday case: blue 90 / green 10 / canary 0, then canary to 5 must
/// move users from blue or green only onto the canary.
#[test]
fn ramp_never_moves_keys_between_other_targets() {
    let keys: Vec<String> = (0..1_000).map(|i| format!("user-{i}")).collect();
    let mut failures = Vec::new();
    for (weights, raised, delta) in [
        (&[1, 1, 1][..], 2, 3),
        (&[1, 1, 1][..], 0, 3),
        (&[90, 10, 0][..], 2, 5),
    ] {
        failures.extend(check_ramp(weights, raised, delta, &keys).err());
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// === 5. concurrent load with live changes ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_load_while_weights_flip() {
    let inner = |name: &'static str| {
        service_fn(move |req: Request<()>| async move {
            let seen = req.extensions().get::<Target>().cloned();
            // Give the flipper a chance to run while this request is in flight.
            tokio::task::yield_now().await;
            let mut res = Response::new(name.to_owned());
            if let Some(t) = seen {
                res.extensions_mut().insert(t);
            }
            Ok::<_, Infallible>(res)
        })
    };
    let split = Split::builder()
        .target("blue", inner("blue"), 90)
        .target("green", inner("green"), 10)
        .seed(5)
        .build()
        .unwrap();
    let handle = split.handle();

    // One request, checked end to end; returns the target index.
    async fn one<S>(split: Split<S>) -> usize
    where
        S: Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone,
    {
        let res = split
            .oneshot(Request::new(()))
            .await
            .expect("request failed");
        let seen = res
            .extensions()
            .get::<Target>()
            .cloned()
            .expect("no Target");
        let body = res.into_body().into_inner();
        assert!(body == "blue" || body == "green", "bad body {body:?}");
        assert_eq!(body, seen.name());
        assert_eq!(seen.index(), usize::from(body == "green"));
        seen.index()
    }

    // The flipper: set_weights / promote / rollback in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicU64::new(0));
    let flipper = {
        let (handle, stop, flips) = (handle.clone(), stop.clone(), flips.clone());
        tokio::spawn(async move {
            let mut i: u32 = 0;
            while !stop.load(Ordering::SeqCst) || i < 50 {
                match i % 5 {
                    0 => handle
                        .set_weights([("blue", i % 7), ("green", 1 + i % 5)])
                        .unwrap(),
                    1 => handle.promote("green").unwrap(),
                    2 => handle.promote("blue").unwrap(),
                    3 => match handle.rollback() {
                        Ok(()) | Err(SplitError::NothingToRollBack) => {}
                        Err(e) => panic!("rollback: {e}"),
                    },
                    _ => handle.set_weights([("blue", 50), ("green", 50)]).unwrap(),
                }
                i += 1;
                flips.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };

    // Phase 1: 16 tasks x 250 requests under the flipper.
    const TASKS: usize = 16;
    const PER_TASK: usize = 250;
    let mut load = JoinSet::new();
    for _ in 0..TASKS {
        let split = split.clone();
        load.spawn(async move {
            let mut per_target = [0u64; 2];
            for _ in 0..PER_TASK {
                per_target[one(split.clone()).await] += 1;
            }
            per_target
        });
    }
    let mut served = [0u64; 2];
    while let Some(r) = load.join_next().await {
        let r = r.expect("load task panicked");
        served[0] += r[0];
        served[1] += r[1];
    }

    let sent = (TASKS * PER_TASK) as u64;
    assert_eq!(served[0] + served[1], sent);
    let stats = handle.stats();
    assert_eq!(stats.iter().map(|s| s.requests).sum::<u64>(), sent);
    assert_eq!(stats.iter().map(|s| s.responses.success).sum::<u64>(), sent);
    for (i, s) in stats.iter().enumerate() {
        assert_eq!(s.requests, served[i], "{}: requests counter", s.name);
        assert_eq!(s.in_flight, 0, "{}: in flight after the load", s.name);
        assert_eq!(s.errors, 0);
    }

    // Phase 2: background load keeps going; stop the flipper, promote green
    // and check that no request started after `promote` returned reaches
    // blue.
    let stop_bg = Arc::new(AtomicBool::new(false));
    let mut background = JoinSet::new();
    for _ in 0..4 {
        let (split, stop_bg) = (split.clone(), stop_bg.clone());
        background.spawn(async move {
            let mut n = 0u64;
            while !stop_bg.load(Ordering::SeqCst) || n < 20 {
                one(split.clone()).await;
                n += 1;
            }
            n
        });
    }
    stop.store(true, Ordering::SeqCst);
    flipper.await.expect("flipper panicked");
    assert!(flips.load(Ordering::Relaxed) >= 50);

    handle.promote("green").unwrap();
    let mut after = JoinSet::new();
    for _ in 0..8 {
        let split = split.clone();
        after.spawn(async move {
            for _ in 0..50 {
                assert_eq!(
                    one(split.clone()).await,
                    1,
                    "a request after promote reached blue"
                );
            }
            50u64
        });
    }
    let mut after_sent = 0;
    while let Some(r) = after.join_next().await {
        after_sent += r.expect("post-promote task panicked");
    }
    stop_bg.store(true, Ordering::SeqCst);
    let mut bg_sent = 0;
    while let Some(r) = background.join_next().await {
        bg_sent += r.expect("background task panicked");
    }

    let total = sent + after_sent + bg_sent;
    let stats = handle.stats();
    assert_eq!(stats.iter().map(|s| s.requests).sum::<u64>(), total);
    assert_eq!(
        stats.iter().map(|s| s.responses.success).sum::<u64>(),
        total
    );
    assert!(stats.iter().all(|s| s.in_flight == 0), "{stats:?}");
    assert_eq!(handle.weights().get("blue"), Some(0));
    // Blue has no weight and nothing in flight: drained at once.
    assert_eq!(
        poll_once(&mut handle.drained("blue").unwrap()),
        Poll::Ready(())
    );
}

// === 6. drained ===

#[tokio::test(start_paused = true)]
async fn drained_waits_for_streaming_body_to_end() {
    let (tap, mut taps) = mpsc::unbounded_channel();
    let split = Split::builder()
        .target("blue", streaming("blue", tap.clone()), 100)
        .target("green", streaming("green", tap), 0)
        .seed(6)
        .build()
        .unwrap();
    let handle = split.handle();

    // A streaming response from blue, first chunk read.
    let res = split.clone().oneshot(Request::new(())).await.unwrap();
    let (served_by, tx) = taps.recv().await.unwrap();
    assert_eq!(served_by, "blue");
    let mut body = res.into_body();
    tx.send(Bytes::from_static(b"data: 1\n\n")).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: 1\n\n");

    handle.promote("green").unwrap();
    let mut drained = handle.drained("blue").unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(60), &mut drained)
            .await
            .is_err(),
        "drained while blue's body is still streaming"
    );
    assert_eq!(handle.target_stats("blue").unwrap().in_flight, 1);

    // New traffic goes to green meanwhile (its body dropped unread).
    for _ in 0..10 {
        let res = split.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(taps.recv().await.unwrap().0, "green");
        drop(res);
    }
    assert_eq!(handle.target_stats("green").unwrap().in_flight, 0);

    // Last chunk sent and the stream closed, but not yet read: still in flight.
    tx.send(Bytes::from_static(b"data: 2\n\n")).await.unwrap();
    drop(tx);
    assert!(
        tokio::time::timeout(Duration::from_secs(60), &mut drained)
            .await
            .is_err(),
        "drained before the body was read to its end"
    );
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "data: 2\n\n");
    assert!(poll_once(&mut drained).is_pending());

    // The end of the body: drained.
    assert!(body.frame().await.is_none());
    tokio::time::timeout(Duration::from_secs(60), drained)
        .await
        .expect("not drained after the body ended");
    assert_eq!(handle.target_stats("blue").unwrap().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn drained_at_once_or_pending_while_weighted() {
    let split = Split::builder()
        .target("blue", version("blue"), 100)
        .target("green", version("green"), 0)
        .build()
        .unwrap();
    let handle = split.handle();

    // Green has no weight and never had traffic: at once.
    assert_eq!(
        poll_once(&mut handle.drained("green").unwrap()),
        Poll::Ready(())
    );
    tokio::time::timeout(Duration::from_secs(1), handle.drained("green").unwrap())
        .await
        .expect("green is drained");

    // Blue has weight and nothing in flight: pending, not failing.
    let mut blue = handle.drained("blue").unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(60), &mut blue)
            .await
            .is_err()
    );
    // A waiter parked in a task is woken by the change that drains it...
    let waiter = tokio::spawn(blue);
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    handle.set_weights([("blue", 0), ("green", 1)]).unwrap();
    tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("waiter not woken by the weight change")
        .unwrap();

    // ...and one whose target gets weight back simply waits longer.
    let waiter = tokio::spawn(handle.drained("green").unwrap());
    tokio::task::yield_now().await;
    handle.set_weights([("blue", 1), ("green", 1)]).unwrap();
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    handle.set_weights([("blue", 1), ("green", 0)]).unwrap();
    tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("waiter not woken")
        .unwrap();

    assert_eq!(
        handle.drained("purple").unwrap_err(),
        SplitError::UnknownTarget("purple".into())
    );
}

// === 7. dropped futures and bodies ===

#[tokio::test(start_paused = true)]
async fn dropped_response_future_leaves_flight() {
    let never =
        service_fn(|_: Request<()>| std::future::pending::<Result<Response<String>, Infallible>>());
    let mut split = Split::builder()
        .target("blue", never, 1)
        .target("green", never, 0)
        .build()
        .unwrap();
    let handle = split.handle();

    let mut fut = split.ready().await.unwrap().call(Request::new(()));
    assert_eq!(handle.target_stats("blue").unwrap().in_flight, 1);
    assert!(
        tokio::time::timeout(Duration::from_secs(60), &mut fut)
            .await
            .is_err()
    );
    handle.promote("green").unwrap();
    let drained = tokio::spawn(handle.drained("blue").unwrap());
    tokio::task::yield_now().await;
    assert!(!drained.is_finished(), "drained with a call still pending");

    drop(fut);
    let blue = handle.target_stats("blue").unwrap();
    assert_eq!(blue.in_flight, 0);
    assert_eq!(blue.requests, 1);
    assert_eq!(blue.responses.success + blue.errors, 0);
    tokio::time::timeout(Duration::from_secs(60), drained)
        .await
        .expect("drop of the future did not wake drained")
        .unwrap();

    // Never polled at all: also released on drop.
    let fut = split.ready().await.unwrap().call(Request::new(()));
    assert_eq!(handle.target_stats("green").unwrap().in_flight, 1);
    drop(fut);
    assert_eq!(handle.target_stats("green").unwrap().in_flight, 0);
}

#[tokio::test]
async fn dropped_or_consumed_body_leaves_flight() {
    let split = Split::builder()
        .target("blue", version("blue"), 1)
        .build()
        .unwrap();
    let handle = split.handle();
    let in_flight = || handle.target_stats("blue").unwrap().in_flight;

    // Unconsumed body: in flight until dropped.
    let res = split.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(in_flight(), 1);
    let res2 = split.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(in_flight(), 2);
    drop(res);
    assert_eq!(in_flight(), 1);
    let (_parts, body) = res2.into_parts();
    assert_eq!(in_flight(), 1);
    drop(body);
    assert_eq!(in_flight(), 0);

    // Read to the end.
    let res = split.clone().oneshot(Request::new(())).await.unwrap();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, "blue");
    assert_eq!(in_flight(), 0);

    // A body that reports its end with its last frame is done then, without
    // being polled again (hyper stops polling at `is_end_stream`).
    let res = split.clone().oneshot(Request::new(())).await.unwrap();
    let mut body = res.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "blue");
    assert!(body.is_end_stream());
    assert_eq!(in_flight(), 0);
    drop(body);

    // `into_inner` ends the in-flight time too.
    let res = split.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(in_flight(), 1);
    let inner: String = res.into_body().into_inner();
    assert_eq!(in_flight(), 0);
    assert_eq!(inner, "blue");
    assert_eq!(handle.target_stats("blue").unwrap().requests, 5);
}

// === 8. override and echo headers ===

#[tokio::test]
async fn override_scope_limits_the_header_to_callers_with_the_scope() {
    use switchyard::auth::Identity;
    let split = Split::builder()
        .target("blue", version("blue"), 100)
        .target("green", version("green"), 0)
        .override_header(X_TARGET)
        .override_scope("tester")
        .build()
        .unwrap();
    let who = |identity: Option<Identity>| {
        let mut req = with_header(X_TARGET, "green");
        if let Some(identity) = identity {
            req.extensions_mut().insert(identity);
        }
        req
    };
    // No identity, or one without the scope: the header is ignored.
    for req in [
        who(None),
        who(Some(Identity::new("mallory"))),
        who(Some(
            Identity::new("mallory").with_scopes(["api", "testers"]),
        )),
    ] {
        assert_eq!(split.choose(&req).name(), "blue");
        let res = split.clone().oneshot(req).await.unwrap();
        assert_eq!(res.into_body().into_inner(), "blue");
    }
    let req = who(Some(Identity::new("qa").with_scopes(["api", "tester"])));
    assert_eq!(split.choose(&req).name(), "green");
    let res = split.clone().oneshot(req).await.unwrap();
    assert_eq!(res.into_body().into_inner(), "green");
}

#[tokio::test]
async fn override_header_forces_a_target() {
    let split = Split::builder()
        .target("blue", version("blue"), 100)
        .target("green", version("green"), 0)
        .override_header(X_TARGET)
        .echo_header(X_SERVED_BY)
        .seed(8)
        .build()
        .unwrap();
    let handle = split.handle();

    for _ in 0..20 {
        let req = with_header(X_TARGET, "green");
        assert_eq!(split.choose(&req).name(), "green");
        let res = split.clone().oneshot(req).await.unwrap();
        assert_eq!(res.headers()[&X_SERVED_BY], "green");
        assert_eq!(res.into_body().into_inner(), "green");
    }
    // Unknown names (and near misses) are ignored: normal routing.
    for name in ["purple", "GREEN", "green ", ""] {
        let res = split
            .clone()
            .oneshot(with_header(X_TARGET, name))
            .await
            .unwrap();
        assert_eq!(res.headers()[&X_SERVED_BY], "blue", "override {name:?}");
        assert_eq!(res.into_body().into_inner(), "blue");
    }
    let res = split.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(res.headers()[&X_SERVED_BY], "blue");
    // The header can force the weighted target too.
    let (body, _) = send(&split, with_header(X_TARGET, "blue")).await;
    assert_eq!(body, "blue");

    let green = handle.target_stats("green").unwrap();
    assert_eq!((green.requests, green.responses.success), (20, 20));
    assert_eq!(green.weight, 0);
    assert_eq!(handle.target_stats("blue").unwrap().requests, 6);
}

#[tokio::test]
async fn override_and_echo_are_off_unless_configured() {
    let split = Split::builder()
        .target("blue", version("blue"), 100)
        .target("green", version("green"), 0)
        .seed(9)
        .build()
        .unwrap();
    for header in [X_TARGET, HeaderName::from_static("x-target")] {
        let req = with_header(header, "green");
        assert_eq!(split.choose(&req).name(), "blue");
        let res = split.clone().oneshot(req).await.unwrap();
        assert!(res.headers().is_empty(), "{:?}", res.headers());
        assert_eq!(res.into_body().into_inner(), "blue");
    }
    assert_eq!(split.handle().target_stats("green").unwrap().requests, 0);

    // Echo only, under a name of our choosing.
    let split = Split::builder()
        .target("blue", version("blue"), 0)
        .target("green", version("green"), 1)
        .echo_header(X_TARGET)
        .build()
        .unwrap();
    let res = split
        .clone()
        .oneshot(with_header(X_TARGET, "blue"))
        .await
        .unwrap();
    assert_eq!(res.headers()[&X_TARGET], "green");
    assert_eq!(res.headers().get_all(&X_TARGET).iter().count(), 1);
}

// === 9. the Target extension ===

#[tokio::test]
async fn inner_service_sees_target_with_name_and_index() {
    let split = Split::builder()
        .target("blue", version("blue"), 1)
        .target("green", version("green"), 1)
        .target("canary-v3.1_rc", version("canary-v3.1_rc"), 1)
        .override_header(X_TARGET)
        .seed(10)
        .build()
        .unwrap();
    let handle = split.handle();
    let order: Vec<(String, usize)> = handle
        .targets()
        .map(|t| (t.name().to_owned(), t.index()))
        .collect();
    assert_eq!(
        order,
        [
            ("blue".to_owned(), 0),
            ("green".to_owned(), 1),
            ("canary-v3.1_rc".to_owned(), 2)
        ]
    );
    for (name, index) in &order {
        let (body, seen) = send(&split, with_header(X_TARGET, name)).await;
        assert_eq!(&body, name);
        assert_eq!(seen.name(), name);
        assert_eq!(seen.index(), *index);
        assert_eq!(seen.to_string(), *name);
        assert_eq!(&seen, handle.targets().nth(*index).unwrap());
    }
    // Random picks record the right target as well (`send` checks that the
    // extension names the version that answered).
    let mut seen = HashSet::new();
    for _ in 0..100 {
        seen.insert(send(&split, Request::new(())).await.1.index());
    }
    assert_eq!(seen.len(), 3);
}

// === 10. builder and handle errors ===

#[test]
fn builder_errors() {
    assert_eq!(
        Split::<()>::builder().build().unwrap_err(),
        SplitError::NoTargets
    );
    assert_eq!(
        Split::builder()
            .target("blue", version("a"), 1)
            .target("green", version("b"), 1)
            .target("blue", version("c"), 1)
            .build()
            .unwrap_err(),
        SplitError::DuplicateTarget("blue".into())
    );
    assert_eq!(
        Split::builder()
            .target("blue", version("a"), 0)
            .target("green", version("b"), 0)
            .build()
            .unwrap_err(),
        SplitError::AllWeightsZero
    );
    let long = "x".repeat(65);
    for bad in ["", "has space", long.as_str(), "blü", "tab\there", "nl\n"] {
        assert_eq!(
            Split::builder()
                .target("blue", version("a"), 1)
                .target(bad, version("b"), 1)
                .build()
                .unwrap_err(),
            SplitError::InvalidTargetName(bad.into()),
            "{bad:?}"
        );
    }
    // The limits themselves are fine.
    let max = "y".repeat(64);
    for good in [max.as_str(), "a", "v1.2-rc_3/x:~!"] {
        let split = Split::builder()
            .target(good, version("a"), 1)
            .build()
            .unwrap();
        assert_eq!(split.handle().targets().next().unwrap().name(), good);
    }
}

fn blue_green() -> Split<impl Clone> {
    Split::builder()
        .target("blue", version("blue"), 100)
        .target("green", version("green"), 0)
        .build()
        .unwrap()
}

#[test]
fn set_weights_errors_change_nothing() {
    let split = blue_green();
    let h = split.handle();
    h.set_weights([("blue", 90), ("green", 10)]).unwrap();
    let before = h.weights();
    assert_eq!(before.get("blue"), Some(90));

    let cases: [(Vec<(&str, u32)>, SplitError); 5] = [
        (
            vec![("blue", 1), ("purple", 1)],
            SplitError::UnknownTarget("purple".into()),
        ),
        (vec![("blue", 1)], SplitError::MissingTarget("green".into())),
        (vec![], SplitError::MissingTarget("blue".into())),
        (
            vec![("blue", 1), ("green", 1), ("blue", 2)],
            SplitError::DuplicateTarget("blue".into()),
        ),
        (vec![("blue", 0), ("green", 0)], SplitError::AllWeightsZero),
    ];
    for (weights, want) in cases {
        assert_eq!(
            h.set_weights(weights.clone()).unwrap_err(),
            want,
            "{weights:?}"
        );
        assert_eq!(h.weights(), before, "a refused change changed the weights");
    }
    assert_eq!(
        h.promote("purple").unwrap_err(),
        SplitError::UnknownTarget("purple".into())
    );
    assert_eq!(h.weights(), before);
    assert!(h.target_stats("purple").is_none());

    // Refused changes are not in the history either.
    h.rollback().unwrap();
    assert_eq!(h.weights(), [("blue", 100), ("green", 0)].into());
    assert_eq!(h.rollback().unwrap_err(), SplitError::NothingToRollBack);
}

#[test]
fn rollback_is_an_undo() {
    let split = blue_green();
    let h = split.handle();
    assert_eq!(h.rollback().unwrap_err(), SplitError::NothingToRollBack);
    assert_eq!(h.weights(), [("blue", 100), ("green", 0)].into());

    h.set_weights([("blue", 90), ("green", 10)]).unwrap();
    h.set_weights([("blue", 50), ("green", 50)]).unwrap();
    h.promote("green").unwrap();
    assert_eq!(h.weights(), [("blue", 0), ("green", 100)].into());

    h.rollback().unwrap();
    assert_eq!(h.weights(), [("blue", 50), ("green", 50)].into());
    h.rollback().unwrap();
    assert_eq!(h.weights(), [("blue", 90), ("green", 10)].into());
    // A change after a rollback is undone first; the rollback itself is not
    // recorded.
    h.set_weights([("blue", 70), ("green", 30)]).unwrap();
    h.rollback().unwrap();
    assert_eq!(h.weights(), [("blue", 90), ("green", 10)].into());
    h.rollback().unwrap();
    assert_eq!(h.weights(), [("blue", 100), ("green", 0)].into());
    assert_eq!(h.rollback().unwrap_err(), SplitError::NothingToRollBack);
    assert_eq!(h.weights(), [("blue", 100), ("green", 0)].into());
}

#[test]
fn rollback_remembers_the_last_32_changes() {
    let split = blue_green();
    let h = split.handle();
    for i in 1..=40u32 {
        h.set_weights([("blue", i), ("green", 1)]).unwrap();
    }
    for i in (8..40u32).rev() {
        h.rollback().unwrap();
        assert_eq!(h.weights().get("blue"), Some(i));
    }
    assert_eq!(h.rollback().unwrap_err(), SplitError::NothingToRollBack);
    assert_eq!(h.weights().get("blue"), Some(8));
}

#[test]
fn promote_gives_the_sum_of_weights() {
    let split = Split::builder()
        .target("blue", version("blue"), 50)
        .target("green", version("green"), 30)
        .target("canary", version("canary"), 20)
        .build()
        .unwrap();
    let h = split.handle();
    h.promote("canary").unwrap();
    assert_eq!(
        h.weights(),
        [("blue", 0), ("green", 0), ("canary", 100)].into()
    );
    h.set_weights([("blue", 7), ("green", 3), ("canary", 0)])
        .unwrap();
    h.promote("green").unwrap();
    assert_eq!(
        h.weights(),
        [("blue", 0), ("green", 10), ("canary", 0)].into()
    );
    // Promoting the only weighted target changes nothing but the history.
    h.promote("green").unwrap();
    assert_eq!(
        h.weights(),
        [("blue", 0), ("green", 10), ("canary", 0)].into()
    );
    // Saturates instead of overflowing.
    h.set_weights([("blue", u32::MAX), ("green", u32::MAX), ("canary", 1)])
        .unwrap();
    h.promote("blue").unwrap();
    assert_eq!(
        h.weights(),
        [("blue", u32::MAX), ("green", 0), ("canary", 0)].into()
    );
    // Stats report the weights too.
    let stats = h.stats();
    assert_eq!(
        stats.iter().map(|s| s.weight).collect::<Vec<_>>(),
        [u32::MAX, 0, 0]
    );
}

// === 11. errors and status classes ===

#[tokio::test]
async fn errors_and_status_classes_are_counted() {
    let svc = service_fn(|req: Request<()>| {
        ready(match req.uri().path() {
            "/fail" => Err("boom".to_owned()),
            path => {
                let status: u16 = path[1..].parse().unwrap();
                Ok(Response::builder()
                    .status(status)
                    .body(String::new())
                    .unwrap())
            }
        })
    });
    let split = Split::builder()
        .target("blue", svc, 1)
        .target("green", svc, 0)
        .seed(11)
        .build()
        .unwrap();
    let h = split.handle();
    let call = |path: &str| split.clone().oneshot(Request::get(path).body(()).unwrap());

    for (path, times) in [
        ("/fail", 3),
        ("/101", 1),
        ("/200", 4),
        ("/204", 1),
        ("/302", 2),
        ("/404", 2),
        ("/429", 1),
        ("/503", 3),
    ] {
        for _ in 0..times {
            match call(path).await {
                Ok(res) => assert_eq!(res.status().as_str(), &path[1..]),
                Err(e) => assert_eq!((path, e.as_str()), ("/fail", "boom")),
            }
        }
    }
    let blue = h.target_stats("blue").unwrap();
    assert_eq!(blue.requests, 17);
    assert_eq!(blue.errors, 3);
    assert_eq!(blue.responses.informational, 1);
    assert_eq!(blue.responses.success, 5);
    assert_eq!(blue.responses.redirection, 2);
    assert_eq!(blue.responses.client_error, 3);
    assert_eq!(blue.responses.server_error, 3);
    assert_eq!(blue.body_errors, 0);
    assert_eq!(blue.in_flight, 0);
    assert_eq!(h.target_stats("green").unwrap().requests, 0);

    // The stats serialize with the status classes by name.
    let json = serde_json::to_value(&blue).unwrap();
    assert_eq!(json["responses"]["4xx"], 3);
    assert_eq!(json["responses"]["5xx"], 3);
    assert_eq!(json["errors"], 3);
    assert_eq!(json["name"], "blue");
}

/// A body that sends one chunk and then fails.
struct FailingBody(bool);

impl Body for FailingBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if std::mem::replace(&mut this.0, true) {
            Poll::Ready(Some(Err(std::io::Error::other("upstream reset"))))
        } else {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"partial")))))
        }
    }
}

#[tokio::test]
async fn body_errors_are_counted_and_end_the_flight() {
    let svc = service_fn(|_: Request<()>| {
        ready(Ok::<_, Infallible>(
            Response::builder()
                .status(StatusCode::OK)
                .body(FailingBody(false))
                .unwrap(),
        ))
    });
    let split = Split::builder().target("blue", svc, 1).build().unwrap();
    let h = split.handle();
    let res = split.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(h.target_stats("blue").unwrap().in_flight, 1);
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "partial");
    assert!(body.frame().await.unwrap().is_err());
    let blue = h.target_stats("blue").unwrap();
    assert_eq!(blue.body_errors, 1);
    assert_eq!(blue.in_flight, 0);
    assert_eq!(blue.responses.success, 1);
    assert_eq!(blue.errors, 0);
    drop(body);
    assert_eq!(h.target_stats("blue").unwrap().body_errors, 1);
}

// === carry over ===

/// A split that replaces another (a third version added) continues the
/// counters of the targets both have, a request still streaming on the old
/// split counts in flight on the new one, and `drained` on the new split
/// wakes when that request ends.
#[tokio::test(start_paused = true)]
async fn carry_over_continues_counters_in_flight_and_drains() {
    let (tap, mut taps) = mpsc::unbounded_channel();
    let old = Split::builder()
        .target("blue", streaming("blue", tap.clone()), 100)
        .target("green", streaming("green", tap.clone()), 0)
        .seed(7)
        .build()
        .unwrap();
    for _ in 0..3 {
        drop(old.clone().oneshot(Request::new(())).await.unwrap());
        assert_eq!(taps.recv().await.unwrap().0, "blue");
    }
    // One request still streaming on the old split's blue.
    let res = old.clone().oneshot(Request::new(())).await.unwrap();
    let (_, tx) = taps.recv().await.unwrap();
    let mut body = res.into_body();

    let new = Split::builder()
        .target("blue", streaming("blue", tap.clone()), 0)
        .target("green", streaming("green", tap.clone()), 50)
        .target("canary", streaming("canary", tap), 50)
        .carry_over(&old.handle())
        .seed(7)
        .build()
        .unwrap();
    let handle = new.handle();
    let blue = handle.target_stats("blue").unwrap();
    assert_eq!(
        (blue.requests, blue.in_flight, blue.responses.success),
        (4, 1, 4)
    );
    assert_eq!(handle.target_stats("canary").unwrap().requests, 0);

    let mut drained = handle.drained("blue").unwrap();
    assert!(
        poll_once(&mut drained).is_pending(),
        "drained while the old request streams"
    );
    drop(tx);
    assert!(body.frame().await.is_none());
    tokio::time::timeout(Duration::from_secs(60), drained)
        .await
        .expect("not drained after the old split's request ended");
    assert_eq!(handle.target_stats("blue").unwrap().in_flight, 0);
    assert_eq!(old.handle().target_stats("blue").unwrap().in_flight, 0);
}
