//! Shadow traffic (feature `mirror`): copy a share of real requests to the
//! new version and compare its answers with the stable version's, before
//! it serves anyone.
//!
//! (`examples/compose_axum.rs`, `cargo run --example compose_axum`: every layer, a mirror among them, on one axum app.)
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use switchyard::body::RequestBody;
//! use switchyard::mirror::MirrorLayer;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let blue = service_fn(|_: Request<RequestBody<Full<Bytes>>>| async {
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("blue"))))
//! });
//! let green = service_fn(|req: Request<Full<Bytes>>| async move {
//!     assert_eq!(req.headers()["x-switchyard-mirror"], "1");
//!     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("green"))))
//! });
//! let layer = MirrorLayer::builder(green).percent(100.0).build();
//! let stats = layer.handle();
//! let res = layer.layer(blue).oneshot(Request::new(Full::new(Bytes::new()))).await?;
//! // The client's answer is always the primary's.
//! let body = http_body_util::BodyExt::collect(res.into_body()).await?.to_bytes();
//! assert_eq!(body, "blue");
//! # tokio::task::yield_now().await;
//! assert_eq!(stats.stats().mirrored, 1);
//! # Ok(())
//! # }
//! ```
//!
//! * A share of requests ([`MirrorBuilder::percent`], from a seedable
//!   generator) whose method is safe (`GET`, `HEAD`, `OPTIONS` by default,
//!   [`MirrorBuilder::methods`]) is copied to the shadow service with a
//!   marker header (`x-switchyard-mirror: 1`). A marker the client sent is
//!   removed from every request first: only this layer's copies carry it.
//!   The copy has the method, URI, version, headers and body, not the
//!   request's extensions: an `Identity` or `Target` the shadow needs must
//!   travel as a header (a `transform` rule writing `{identity.id}` does).
//! * A body is buffered up to [`MirrorBuilder::body_limit`] to be copied; a
//!   larger one is not mirrored (counted) and the primary still gets every
//!   byte. A body that fails while it is read is answered 400 (as
//!   `transform` does): neither service sees a cut-off body.
//! * Shadow calls run on their own tokio tasks, at most
//!   [`MirrorBuilder::max_concurrent`] at once: beyond that, copies are
//!   dropped (counted), so a slow shadow never holds up the primary. Each
//!   shadow call is limited to [`MirrorBuilder::shadow_timeout`].
//! * When both have answered, the answers are compared: status class, time
//!   to response headers (two histograms and the difference), and with
//!   [`MirrorBuilder::compare_json`], the JSON bodies (equal as JSON
//!   values: key order and spacing do not matter). The primary's body is
//!   copied as it streams to the client, never delayed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tower::{Layer, Service, ServiceExt};

use crate::body::{CollectError, Collector, RequestBody, ResponseBody, is_json};
use crate::future::Rejection;
use crate::metrics::{HistogramSnapshot, LatencyHistogram};
use crate::problem::Problem;
use crate::rng::RngSource;

/// The marker header on mirrored requests.
pub const MIRROR_HEADER: HeaderName = HeaderName::from_static("x-switchyard-mirror");

// === MirrorLayer ===

/// Copies a share of requests to a shadow service. See the
/// [module docs](self).
#[derive(Clone)]
pub struct MirrorLayer<M> {
    shadow: M,
    shared: Arc<Shared>,
}

struct Shared {
    /// The share mirrored, 0 to 100, as `f64` bits: changed live through
    /// [`MirrorHandle::set_percent`].
    percent: AtomicU64,
    /// Differing answers kept, at most `keep` (newest last).
    samples: std::sync::Mutex<std::collections::VecDeque<MismatchSample>>,
    keep: usize,
    methods: Option<Vec<Method>>,
    body_limit: usize,
    shadow_timeout: Duration,
    compare_json: bool,
    permits: Arc<Semaphore>,
    rng: RngSource,
    stats: Counters,
    /// Told of each change of the share (weight sync).
    listeners: crate::signal::Listeners,
}

impl<M> std::fmt::Debug for MirrorLayer<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorLayer")
            .field(
                "percent",
                &f64::from_bits(self.shared.percent.load(Relaxed)),
            )
            .field("methods", &self.shared.methods)
            .finish_non_exhaustive()
    }
}

impl<M> MirrorLayer<M> {
    /// A builder that mirrors to `shadow`.
    pub fn builder(shadow: M) -> MirrorBuilder<M> {
        MirrorBuilder {
            shadow,
            percent: 100.0,
            methods: Some(vec![Method::GET, Method::HEAD, Method::OPTIONS]),
            body_limit: 64 * 1024,
            max_concurrent: 64,
            shadow_timeout: Duration::from_secs(30),
            compare_json: false,
            rng: RngSource::Thread,
            keep: 0,
        }
    }

    /// A handle on the counters.
    pub fn handle(&self) -> MirrorHandle {
        MirrorHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, M: Clone> Layer<S> for MirrorLayer<M> {
    type Service = Mirror<S, M>;

    fn layer(&self, inner: S) -> Mirror<S, M> {
        Mirror {
            inner,
            shadow: self.shadow.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Builds a [`MirrorLayer`].
pub struct MirrorBuilder<M> {
    shadow: M,
    percent: f64,
    methods: Option<Vec<Method>>,
    body_limit: usize,
    max_concurrent: usize,
    shadow_timeout: Duration,
    compare_json: bool,
    rng: RngSource,
    keep: usize,
}

impl<M> std::fmt::Debug for MirrorBuilder<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorBuilder")
            .field("percent", &self.percent)
            .finish_non_exhaustive()
    }
}

impl<M> MirrorBuilder<M> {
    /// The share of eligible requests mirrored, 0 to 100 (100 by default).
    pub fn percent(mut self, percent: f64) -> Self {
        self.percent = clamp_percent(percent);
        self
    }

    /// Keeps the latest `n` pairs of differing answers (status classes
    /// apart, or JSON bodies unequal with [`compare_json`](Self::compare_json)),
    /// each body cut to 1 KiB, for [`MirrorHandle::samples`]; none by
    /// default. They are kept in memory as they came: bodies may hold
    /// what your users sent and got.
    pub fn keep_samples(mut self, n: usize) -> Self {
        self.keep = n;
        self
    }

    /// The methods mirrored (the safe ones by default: `GET`, `HEAD`,
    /// `OPTIONS`). `PUT` and `DELETE` are idempotent but not safe: a shadow
    /// that shares a database with the primary would apply them twice.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = Some(methods.into_iter().collect());
        self
    }

    /// Mirrors every method, `POST` included: only for shadows whose side
    /// effects are harmless.
    pub fn all_methods(mut self) -> Self {
        self.methods = None;
        self
    }

    /// The most body bytes buffered to copy a request, and to compare JSON
    /// bodies (64 KiB by default).
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Shadow calls running at once (64 by default); more are dropped.
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self
    }

    /// The longest a shadow call may take (30 s by default).
    pub fn shadow_timeout(mut self, timeout: Duration) -> Self {
        self.shadow_timeout = timeout;
        self
    }

    /// Also compares JSON response bodies.
    pub fn compare_json(mut self, yes: bool) -> Self {
        self.compare_json = yes;
        self
    }

    /// Picks the mirrored share from a seeded generator.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = RngSource::seeded(seed);
        self
    }

    /// Builds the layer.
    pub fn build(self) -> MirrorLayer<M> {
        MirrorLayer {
            shadow: self.shadow,
            shared: Arc::new(Shared {
                percent: AtomicU64::new(self.percent.to_bits()),
                samples: std::sync::Mutex::new(std::collections::VecDeque::new()),
                keep: self.keep,
                methods: self.methods,
                body_limit: self.body_limit,
                shadow_timeout: self.shadow_timeout,
                compare_json: self.compare_json,
                permits: Arc::new(Semaphore::new(self.max_concurrent)),
                rng: self.rng,
                stats: Counters::default(),
                listeners: crate::signal::Listeners::default(),
            }),
        }
    }
}

/// A percentage as mirrored: 0 to 100, and 0 for one that is not a
/// number.
fn clamp_percent(percent: f64) -> f64 {
    if percent.is_finite() {
        percent.clamp(0.0, 100.0)
    } else {
        0.0
    }
}

/// The most bytes of a body a [`MismatchSample`] keeps.
const SAMPLE_BODY: usize = 1024;

/// A pair of differing answers kept by a mirror
/// ([`MirrorBuilder::keep_samples`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MismatchSample {
    /// When (Unix seconds).
    pub at: u64,
    /// The request's method.
    pub method: String,
    /// The request's path (without its query).
    pub path: String,
    /// `status` (status classes apart) or `body` (JSON bodies unequal).
    pub differs: &'static str,
    /// The primary's status.
    pub primary_status: u16,
    /// The shadow's status.
    pub shadow_status: u16,
    /// The primary's JSON body, cut to 1 KiB (with `compare_json`).
    pub primary_body: Option<String>,
    /// The shadow's.
    pub shadow_body: Option<String>,
}

fn cut(body: &Option<Bytes>) -> Option<String> {
    body.as_ref().map(|b| {
        let mut end = b.len().min(SAMPLE_BODY);
        // Back to a character's start (a UTF-8 character is 4 bytes at most).
        for _ in 0..3 {
            if end < b.len() && end > 0 && (b[end] & 0xC0) == 0x80 {
                end -= 1;
            }
        }
        String::from_utf8_lossy(&b[..end]).into_owned()
    })
}

// === stats ===

#[derive(Default)]
struct Counters {
    mirrored: AtomicU64,
    not_sampled: AtomicU64,
    skipped_method: AtomicU64,
    too_large: AtomicU64,
    body_errors: AtomicU64,
    dropped: AtomicU64,
    shadow_errors: AtomicU64,
    shadow_timeouts: AtomicU64,
    compared: AtomicU64,
    status_matches: AtomicU64,
    status_mismatches: AtomicU64,
    body_matches: AtomicU64,
    body_mismatches: AtomicU64,
    primary_errors: AtomicU64,
    latency_diff_micros: AtomicI64,
    primary_latency: LatencyHistogram,
    shadow_latency: LatencyHistogram,
}

/// Reads a [`MirrorLayer`]'s counters. Cheap to clone.
#[derive(Clone)]
pub struct MirrorHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MirrorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorHandle")
            .field("stats", &self.stats())
            .finish()
    }
}

impl MirrorHandle {
    /// The share of eligible requests mirrored now, 0 to 100.
    pub fn percent(&self) -> f64 {
        f64::from_bits(self.shared.percent.load(Relaxed))
    }

    /// Changes the share mirrored from the next request on (clamped to 0
    /// to 100; not a number is 0); the share in force.
    pub fn set_percent(&self, percent: f64) -> f64 {
        let percent = clamp_percent(percent);
        let before = self.shared.percent.swap(percent.to_bits(), Relaxed);
        if before != percent.to_bits() {
            self.shared.listeners.fire();
        }
        percent
    }

    /// Tells `listener` of each change of the share from now on.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn listen(&self, listener: &Arc<dyn crate::signal::Listener>) {
        self.shared.listeners.add(listener);
    }

    /// The pairs of differing answers kept, oldest first
    /// ([`MirrorBuilder::keep_samples`]).
    pub fn samples(&self) -> Vec<MismatchSample> {
        let samples = self
            .shared
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        samples.iter().cloned().collect()
    }

    /// The counters.
    pub fn stats(&self) -> MirrorStats {
        let c = &self.shared.stats;
        MirrorStats {
            mirrored: c.mirrored.load(Relaxed),
            not_sampled: c.not_sampled.load(Relaxed),
            skipped_method: c.skipped_method.load(Relaxed),
            too_large: c.too_large.load(Relaxed),
            body_errors: c.body_errors.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            shadow_errors: c.shadow_errors.load(Relaxed),
            shadow_timeouts: c.shadow_timeouts.load(Relaxed),
            compared: c.compared.load(Relaxed),
            status_matches: c.status_matches.load(Relaxed),
            status_mismatches: c.status_mismatches.load(Relaxed),
            body_matches: c.body_matches.load(Relaxed),
            body_mismatches: c.body_mismatches.load(Relaxed),
            primary_errors: c.primary_errors.load(Relaxed),
            latency_diff_micros: c.latency_diff_micros.load(Relaxed),
            primary_latency: c.primary_latency.snapshot(),
            shadow_latency: c.shadow_latency.snapshot(),
        }
    }
}

/// A [`MirrorLayer`]'s counters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MirrorStats {
    /// Requests copied to the shadow.
    pub mirrored: u64,
    /// Eligible requests left out by the sampling percentage.
    pub not_sampled: u64,
    /// Requests whose method is not mirrored.
    pub skipped_method: u64,
    /// Requests not mirrored because their body is over the limit.
    pub too_large: u64,
    /// Requests whose body failed while it was read for mirroring: they
    /// are answered 400 and reach neither service.
    pub body_errors: u64,
    /// Copies dropped because `max_concurrent` shadow calls were running.
    pub dropped: u64,
    /// Shadow calls that failed without a response.
    pub shadow_errors: u64,
    /// Shadow calls that took longer than the shadow timeout.
    pub shadow_timeouts: u64,
    /// Pairs of answers compared.
    pub compared: u64,
    /// Compared pairs with the same status class.
    pub status_matches: u64,
    /// Compared pairs with different status classes.
    pub status_mismatches: u64,
    /// JSON bodies equal (with `compare_json`).
    pub body_matches: u64,
    /// JSON bodies different, or only one of them JSON.
    pub body_mismatches: u64,
    /// Mirrored requests whose primary failed without a response.
    pub primary_errors: u64,
    /// Sum over compared pairs of (shadow − primary) time to response
    /// headers, in microseconds: positive when the shadow is slower.
    pub latency_diff_micros: i64,
    /// The primary's time to response headers, mirrored requests.
    pub primary_latency: HistogramSnapshot,
    /// The shadow's.
    pub shadow_latency: HistogramSnapshot,
}

// === Mirror ===

/// The service [`MirrorLayer`] makes.
#[derive(Clone)]
pub struct Mirror<S, M> {
    inner: S,
    shadow: M,
    shared: Arc<Shared>,
}

impl<S, M> std::fmt::Debug for Mirror<S, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").finish_non_exhaustive()
    }
}

/// What the primary reports to the shadow's task.
struct PrimaryOutcome {
    status: Option<StatusCode>,
    latency: Duration,
    json: Option<Bytes>,
}

impl<S, M, B, ResB, MB> Service<Request<B>> for Mirror<S, M>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>> + Clone,
    M: Service<Request<Full<Bytes>>, Response = Response<MB>> + Clone + Send + 'static,
    M::Future: Send + 'static,
    M::Error: Send,
    MB: Body<Data = Bytes> + Send + 'static,
    B: Body<Data = Bytes>,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<MirrorBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // A client cannot pass its request off as a shadow copy (to the
        // primary, or to a shadow that treats marked requests as harmless).
        req.headers_mut().remove(MIRROR_HEADER);
        let shared = &self.shared;
        let stats = &shared.stats;
        let eligible = shared
            .methods
            .as_ref()
            .is_none_or(|m| m.contains(req.method()));
        if !eligible {
            stats.skipped_method.fetch_add(1, Relaxed);
            return ResponseFuture::plain(self.inner.call(req.map(RequestBody::new)));
        }
        let percent = f64::from_bits(shared.percent.load(Relaxed));
        let sampled = percent >= 100.0
            || (percent > 0.0
                && (shared.rng.next_u64() as f64) < percent / 100.0 * u64::MAX as f64);
        if !sampled {
            stats.not_sampled.fetch_add(1, Relaxed);
            return ResponseFuture::plain(self.inner.call(req.map(RequestBody::new)));
        }
        let (head, body) = req.into_parts();
        if crate::body::over_limit(&head.headers, &body, shared.body_limit) {
            stats.too_large.fetch_add(1, Relaxed);
            return ResponseFuture::plain(
                self.inner
                    .call(Request::from_parts(head, RequestBody::new(body))),
            );
        }
        if body.is_end_stream() {
            let req = Request::from_parts(head, RequestBody::full(Bytes::new(), None));
            let report = self.start_shadow(&req, Bytes::new());
            return ResponseFuture::calling(self.inner.call(req), report);
        }
        // The instance polled ready is the one called, after the body is
        // read; a clone takes its place.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let starter = self.clone_for_shadow();
        ResponseFuture {
            state: State::Buffering {
                body: Some(Box::pin(body)),
                collector: Collector::new(shared.body_limit),
                pending: Some(Box::new(Pending {
                    head,
                    inner,
                    start: Box::new(move |req: &Request<RequestBody<B>>, bytes: Bytes| {
                        starter.start_shadow(req, bytes)
                    }),
                    stats: Arc::clone(shared),
                })),
            },
        }
    }
}

impl<S, M> Mirror<S, M> {
    fn clone_for_shadow(&self) -> ShadowStarter<M>
    where
        M: Clone,
    {
        ShadowStarter {
            shadow: self.shadow.clone(),
            shared: Arc::clone(&self.shared),
        }
    }

    fn start_shadow<B, MB>(&self, req: &Request<B>, bytes: Bytes) -> Option<Report>
    where
        M: Service<Request<Full<Bytes>>, Response = Response<MB>> + Clone + Send + 'static,
        M::Future: Send + 'static,
        M::Error: Send,
        MB: Body<Data = Bytes> + Send + 'static,
    {
        self.clone_for_shadow().start_shadow(req, bytes)
    }
}

/// What starts a shadow call once the body is read.
struct ShadowStarter<M> {
    shadow: M,
    shared: Arc<Shared>,
}

impl<M> ShadowStarter<M> {
    fn start_shadow<B, MB>(&self, req: &Request<B>, bytes: Bytes) -> Option<Report>
    where
        M: Service<Request<Full<Bytes>>, Response = Response<MB>> + Clone + Send + 'static,
        M::Future: Send + 'static,
        M::Error: Send,
        MB: Body<Data = Bytes> + Send + 'static,
    {
        let shared = &self.shared;
        let Ok(permit) = Arc::clone(&shared.permits).try_acquire_owned() else {
            shared.stats.dropped.fetch_add(1, Relaxed);
            return None;
        };
        shared.stats.mirrored.fetch_add(1, Relaxed);
        let mut copy = Request::new(Full::new(bytes));
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        copy.headers_mut()
            .insert(MIRROR_HEADER, HeaderValue::from_static("1"));
        let (tx, rx) = oneshot::channel();
        let shadow = self.shadow.clone();
        let shared = Arc::clone(shared);
        let what =
            (shared.keep > 0).then(|| (req.method().to_string(), req.uri().path().to_owned()));
        tokio::spawn(shadow_call(shadow, copy, rx, shared, permit, what));
        Some(Report {
            tx: Some(tx),
            started: Instant::now(),
            compare_json: self.shared.compare_json,
            limit: self.shared.body_limit,
        })
    }
}

async fn shadow_call<M, MB>(
    shadow: M,
    req: Request<Full<Bytes>>,
    primary: oneshot::Receiver<PrimaryOutcome>,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
    what: Option<(String, String)>,
) where
    M: Service<Request<Full<Bytes>>, Response = Response<MB>> + Send,
    M::Future: Send,
    MB: Body<Data = Bytes> + Send,
{
    let stats = &shared.stats;
    let started = Instant::now();
    let call = async {
        let res = shadow.oneshot(req).await.ok()?;
        let latency = started.elapsed();
        let status = res.status();
        let json = if shared.compare_json && is_json(res.headers()) {
            let mut body = std::pin::pin!(res.into_body());
            let mut collector = Collector::new(shared.body_limit);
            let read = std::future::poll_fn(|cx| collector.poll_collect(body.as_mut(), cx)).await;
            read.ok().map(|()| collector.take().data)
        } else {
            None
        };
        Some((status, latency, json))
    };
    let shadow = match tokio::time::timeout(shared.shadow_timeout, call).await {
        Ok(Some(answer)) => answer,
        Ok(None) => {
            stats.shadow_errors.fetch_add(1, Relaxed);
            return;
        }
        Err(_) => {
            stats.shadow_timeouts.fetch_add(1, Relaxed);
            return;
        }
    };
    let Ok(primary) = primary.await else {
        // The client went away before the primary answered.
        return;
    };
    let Some(primary_status) = primary.status else {
        stats.primary_errors.fetch_add(1, Relaxed);
        return;
    };
    let (status, latency, json) = shadow;
    stats.compared.fetch_add(1, Relaxed);
    let mut differs = None;
    if status.as_u16() / 100 == primary_status.as_u16() / 100 {
        stats.status_matches.fetch_add(1, Relaxed);
    } else {
        stats.status_mismatches.fetch_add(1, Relaxed);
        differs = Some("status");
    }
    stats.primary_latency.record(primary.latency);
    stats.shadow_latency.record(latency);
    let diff = latency.as_micros() as i128 - primary.latency.as_micros() as i128;
    stats.latency_diff_micros.fetch_add(
        diff.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
        Relaxed,
    );
    if shared.compare_json && (json.is_some() || primary.json.is_some()) {
        let parse = |b: &Option<Bytes>| {
            b.as_ref()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        };
        match (parse(&json), parse(&primary.json)) {
            (Some(a), Some(b)) if a == b => stats.body_matches.fetch_add(1, Relaxed),
            _ => {
                differs = differs.or(Some("body"));
                stats.body_mismatches.fetch_add(1, Relaxed)
            }
        };
    }
    if let (Some(differs), Some((method, path))) = (differs, what) {
        let sample = MismatchSample {
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            method,
            path,
            differs,
            primary_status: primary_status.as_u16(),
            shadow_status: status.as_u16(),
            primary_body: cut(&primary.json),
            shadow_body: cut(&json),
        };
        let mut samples = shared.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() >= shared.keep {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}

/// Sends the primary's outcome to the shadow's task.
struct Report {
    tx: Option<oneshot::Sender<PrimaryOutcome>>,
    started: Instant,
    compare_json: bool,
    limit: usize,
}

impl Report {
    fn send(&mut self, status: Option<StatusCode>, json: Option<Bytes>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(PrimaryOutcome {
                status,
                latency: self.started.elapsed(),
                json,
            });
        }
    }
}

type Starter<B> = Box<dyn FnOnce(&Request<RequestBody<B>>, Bytes) -> Option<Report> + Send>;

struct Pending<S, B> {
    head: Parts,
    inner: S,
    start: Starter<B>,
    stats: Arc<Shared>,
}

// === ResponseFuture ===

pin_project! {
    /// Response future of [`Mirror`].
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<RequestBody<B>>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<RequestBody<B>>>,
    {
        // Reading the request body to copy it. Boxed: if it is too large
        // it goes on to the primary after the bytes already read.
        Buffering {
            body: Option<Pin<Box<B>>>,
            collector: Collector,
            pending: Option<Box<Pending<S, B>>>,
        },
        Calling {
            #[pin]
            future: S::Future,
            report: Option<Report>,
        },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<RequestBody<B>>>,
{
    fn plain(future: S::Future) -> Self {
        Self::calling(future, None)
    }

    fn calling(future: S::Future, report: Option<Report>) -> Self {
        Self {
            state: State::Calling { future, report },
        }
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<RequestBody<B>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, ResB> Future for ResponseFuture<S, B>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResB>>,
    B: Body<Data = Bytes>,
    ResB: Body<Data = Bytes>,
{
    type Output = Result<Response<MirrorBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().project().state;
            let next = match state.as_mut().project() {
                StateProj::Buffering {
                    body,
                    collector,
                    pending,
                } => {
                    let read = match body.as_mut() {
                        Some(b) => ready!(collector.poll_collect(b.as_mut(), cx)),
                        None => Ok(()),
                    };
                    let (Some(pending), Some(rest)) = (pending.take(), body.take()) else {
                        // Polled after completion; nothing left to do.
                        return Poll::Pending;
                    };
                    let Pending {
                        head,
                        mut inner,
                        start,
                        stats,
                    } = *pending;
                    let collected = collector.take();
                    match read {
                        Ok(()) => {
                            let bytes = collected.data.clone();
                            let req = Request::from_parts(
                                head,
                                RequestBody::full(collected.data, collected.trailers),
                            );
                            let report = start(&req, bytes);
                            State::Calling {
                                future: inner.call(req),
                                report,
                            }
                        }
                        Err(CollectError::TooLarge) => {
                            // Not mirrored; the primary gets every byte read,
                            // then the rest.
                            stats.stats.too_large.fetch_add(1, Relaxed);
                            let req =
                                Request::from_parts(head, RequestBody::replay(collected, rest));
                            State::Calling {
                                future: inner.call(req),
                                report: None,
                            }
                        }
                        Err(CollectError::Body(_)) => {
                            // The client's body failed: the primary must not
                            // see a cut-off body that looks whole.
                            stats.stats.body_errors.fetch_add(1, Relaxed);
                            let rejection = Rejection::new(
                                Problem::new(StatusCode::BAD_REQUEST)
                                    .detail("the request body failed while it was being read"),
                            )
                            .for_request(&head.headers);
                            return Poll::Ready(Ok(rejection
                                .into_response()
                                .map(|inner| MirrorBody { inner, tee: None })));
                        }
                    }
                }
                StateProj::Calling { future, report } => {
                    let out = ready!(future.poll(cx));
                    let mut report = report.take();
                    return Poll::Ready(match out {
                        Ok(res) => {
                            let status = res.status();
                            let tee = match report.take() {
                                Some(r) if r.compare_json && is_json(res.headers()) => Some(Tee {
                                    buf: BytesMut::new(),
                                    limit: r.limit,
                                    over: false,
                                    status,
                                    report: r,
                                }),
                                Some(mut r) => {
                                    r.send(Some(status), None);
                                    None
                                }
                                None => None,
                            };
                            Ok(res.map(|b| MirrorBody {
                                inner: ResponseBody::new(b),
                                tee,
                            }))
                        }
                        Err(e) => {
                            if let Some(r) = report.as_mut() {
                                r.send(None, None);
                            }
                            Err(e)
                        }
                    });
                }
            };
            state.set(next);
        }
    }
}

// === MirrorBody ===

pin_project! {
    /// Response body of [`Mirror`]: the primary's body, passed through
    /// untouched (or the layer's own 400 when the request's body failed
    /// while it was read). When JSON bodies are compared, a copy (up to the
    /// limit) is taken as the chunks pass and handed to the comparison at
    /// the end.
    pub struct MirrorBody<B> {
        #[pin]
        inner: ResponseBody<B>,
        tee: Option<Tee>,
    }
}

struct Tee {
    buf: BytesMut,
    limit: usize,
    over: bool,
    status: StatusCode,
    report: Report,
}

impl Tee {
    fn push(&mut self, data: &Bytes) {
        if self.over || self.buf.len() + data.len() > self.limit {
            self.over = true;
            self.buf = BytesMut::new();
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    fn finish(mut self) {
        let json = (!self.over).then(|| std::mem::take(&mut self.buf).freeze());
        self.report.send(Some(self.status), json);
    }
}

impl<B> MirrorBody<B> {
    /// The body without the comparison copy.
    pub fn into_inner(self) -> ResponseBody<B> {
        self.inner
    }
}

impl<B: Body<Data = Bytes>> Body for MirrorBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if this.tee.is_some() {
            match &frame {
                Some(Ok(f)) => {
                    if let (Some(tee), Some(data)) = (this.tee.as_mut(), f.data_ref()) {
                        tee.push(data);
                    }
                    if this.inner.is_end_stream()
                        && let Some(tee) = this.tee.take()
                    {
                        tee.finish();
                    }
                }
                Some(Err(_)) => *this.tee = None,
                None => {
                    if let Some(tee) = this.tee.take() {
                        tee.finish();
                    }
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> std::fmt::Debug for MirrorBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorBody").finish_non_exhaustive()
    }
}
