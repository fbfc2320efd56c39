//! [`Split`], its builder, and the [`Target`] extension.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use tower::Service;

use super::SplitError;
use super::future::{InFlight, ResponseFuture, SplitBody};
use super::handle::{Shared, SplitHandle, TargetMeta};
use super::weights::View;
use crate::future::Dispatch;
use crate::key::{HashSeed, Key, KeyBy};
use crate::ratelimit::Clock;
use crate::rng::RngSource;

// === impl Target ===

/// The target a [`Split`] chose for a request, recorded in the request's
/// extensions before the target's service is called.
///
/// ```
/// use switchyard::split::Target;
///
/// fn served_by<B>(req: &http::Request<B>) -> Option<&str> {
///     req.extensions().get::<Target>().map(Target::name)
/// }
/// ```
///
/// It is `Copy`: target names are interned once per process (a few bytes
/// for each distinct name ever used), so recording the target on every
/// request touches no reference count.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    name: &'static str,
    index: usize,
}

impl Target {
    /// The target's name, as given to [`SplitBuilder::target`].
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The target's position in the split, from 0, in the order the
    /// targets were added.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({:?})", self.name)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

/// The process-wide copy of a target name.
///
/// Names are leaked on purpose, once each: they are few and short, splits
/// are built rarely, and in exchange a [`Target`] is a plain `Copy` value.
fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    match names.get(name) {
        Some(interned) => interned,
        None => {
            let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
            names.insert(leaked);
            leaked
        }
    }
}

// === impl Split ===

/// Sends each request to one of several versions of a service ("targets")
/// by weight, with a live [`SplitHandle`] to shift, promote and roll back
/// traffic.
///
/// # Choosing a target
///
/// In this order:
///
/// 1. **Override header** (off by default, see
///    [`SplitBuilder::override_header`]): a request naming a target in it
///    goes there, whatever the weights, so testers can reach green at
///    weight 0. A name that is not a target is ignored, and so is the
///    header of a caller without the scope [`SplitBuilder::override_scope`]
///    asks for.
/// 2. **Sticky key** (see [`SplitBuilder::sticky`]): weighted rendezvous
///    hashing over the key's stable hash and each target's name, so each
///    target gets its weight's share of keys, the same key keeps its
///    target while the weights stay put, and raising a target's weight only
///    moves keys *onto* it — never off it, never between other targets,
///    with any number of targets — so a canary ramp never bounces a user
///    back and forth. The hash is stable across processes, platforms and
///    releases, so gateway replicas agree.
/// 3. **Random by weight**, for requests without the key or when no key is
///    configured. Seed it with [`SplitBuilder::seed`] for repeatable tests.
///
/// The choice is recorded as a [`Target`] in the request's extensions and,
/// optionally, echoed in a response header.
///
/// # Readiness
///
/// `Split` is always ready: `poll_ready` returns `Ready(Ok(()))` at once, and
/// `call` drives a clone of the chosen target as
/// [`oneshot`](tower::ServiceExt::oneshot) does (see [`Dispatch`]), waiting
/// for that target alone to be ready. A slow or overloaded target therefore never blocks
/// requests bound for the others, but a `Split` also passes no
/// backpressure upstream: put a concurrency limit or load shedding in front
/// of it when that matters. Targets must be `Clone`, and cheap to clone (an
/// axum `Router`, a tonic service or a hyper client are).
///
/// # Counters and draining
///
/// Each target counts its requests, responses by status class, errors and
/// requests in flight. A request is in flight from `call` until its response
/// body ends or is dropped, or its response future is dropped, so a
/// streaming response (SSE, gRPC streams) stays in flight until its last
/// frame. [`SplitHandle::drained`] resolves when a target has weight zero
/// and nothing in flight.
///
/// # Example
///
/// ```
/// use std::convert::Infallible;
/// use http::{header::HeaderName, Request, Response};
/// use switchyard::{key::KeyBy, split::Split};
/// use tower::{service_fn, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let version = |v: &'static str| service_fn(move |_: Request<()>| async move {
///     Ok::<_, Infallible>(Response::new(v))
/// });
///
/// let split = Split::builder()
///     .target("blue", version("v1"), 90)
///     .target("green", version("v2"), 10)
///     // The same user always lands on the same version.
///     .sticky(KeyBy::header(HeaderName::from_static("x-user")))
///     // Testers can ask for a version by name.
///     .override_header(HeaderName::from_static("x-switchyard-target"))
///     // Tell clients which version answered.
///     .echo_header(HeaderName::from_static("x-switchyard-target"))
///     .build()?;
///
/// let req = Request::builder().header("x-switchyard-target", "green").body(())?;
/// let res = split.clone().oneshot(req).await?;
/// assert_eq!(res.headers()["x-switchyard-target"], "green");
/// # Ok(())
/// # }
/// ```
pub struct Split<S> {
    services: Vec<S>,
    shared: Arc<Shared>,
    config: Arc<Config>,
}

struct Config {
    sticky: Option<KeyBy>,
    sticky_seed: HashSeed,
    /// Per-target seeds of the sticky pick: stable hashes of the names, so
    /// that reordering targets does not move keys.
    target_seeds: Box<[u64]>,
    override_header: Option<HeaderName>,
    override_scope: Option<String>,
    rng: RngSource,
}

impl<S> Split<S> {
    /// A builder; add targets with [`SplitBuilder::target`].
    pub fn builder() -> SplitBuilder<S> {
        SplitBuilder::new()
    }

    /// A handle on this split's weights and counters, shared with every
    /// clone of the split.
    pub fn handle(&self) -> SplitHandle {
        SplitHandle {
            shared: self.shared.clone(),
        }
    }

    /// The target this request would be sent to now, without sending it or
    /// counting anything. For random selection this draws a random number,
    /// so two calls may disagree; for a sticky key or the override header
    /// it is the target `call` would choose.
    ///
    /// This is the whole selection path of `call`; it does not allocate.
    pub fn choose<B>(&self, req: &Request<B>) -> &Target {
        let index = match self.forced(req) {
            Some(index) => index,
            None => self.shared.live.read(|live| self.pick(live, req)).0,
        };
        &self.shared.targets[index].target
    }

    /// The target named by the override header, if any.
    #[inline]
    fn forced<B>(&self, req: &Request<B>) -> Option<usize> {
        let name = self.config.override_header.as_ref()?;
        let value = req.headers().get(name)?;
        if let Some(scope) = &self.config.override_scope {
            let identity = req.extensions().get::<crate::auth::Identity>();
            if !identity.is_some_and(|i| i.has_scope(scope)) {
                return None;
            }
        }
        self.shared.index_of(value.as_bytes())
    }

    /// A weighted pick: by the sticky key when there is one, else random.
    #[inline]
    fn pick<B>(&self, snapshot: &impl View, req: &Request<B>) -> usize {
        match self.config.sticky.as_ref().and_then(|k| k.extract(req)) {
            Some(key) => snapshot.pick_sticky(
                key.stable_hash_seeded(self.config.sticky_seed),
                &self.config.target_seeds,
            ),
            None => snapshot.pick(self.config.rng.next_u64()),
        }
    }
}

/// With the `tonic` feature, a split of tonic services is one too: its name
/// is theirs, so `Server::builder().add_service(split)` mounts it where
/// each version would be mounted alone.
#[cfg(feature = "tonic")]
impl<S: tonic::server::NamedService> tonic::server::NamedService for Split<S> {
    const NAME: &'static str = S::NAME;
}

impl<S: Clone> Clone for Split<S> {
    fn clone(&self) -> Self {
        Self {
            services: self.services.clone(),
            shared: self.shared.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S> fmt::Debug for Split<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Split")
            .field("weights", &self.handle().weights())
            .field("sticky", &self.config.sticky)
            .field("override_header", &self.config.override_header)
            .field("override_scope", &self.config.override_scope)
            .field("echo_header", &self.shared.echo_header)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Split<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
{
    type Response = Response<SplitBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<Dispatch<S, Request<ReqB>>>;

    /// Always ready; see the type's docs on readiness.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        self.call_shared(req)
    }
}

impl<S> Split<S> {
    /// [`Service::call`] without `&mut`: a split needs none, so an owner
    /// that shares one (the gateway's route) calls it in place rather than
    /// cloning it (its targets' list) for each request.
    pub(crate) fn call_shared<ReqB, ResB>(
        &self,
        req: Request<ReqB>,
    ) -> ResponseFuture<Dispatch<S, Request<ReqB>>>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    {
        self.call_with(req, |svc, req| Dispatch::new(svc.clone(), req))
    }

    /// The target picked and counted, then `call` given its service and
    /// the request: for a service that is always ready and needs no `&mut`
    /// to be called ([`Upstream`](crate::proxy::Upstream)), neither a
    /// clone of it nor [`Dispatch`]'s readiness state around its future.
    pub(crate) fn call_with<ReqB, F>(
        &self,
        mut req: Request<ReqB>,
        call: impl FnOnce(&S, Request<ReqB>) -> F,
    ) -> ResponseFuture<F> {
        let shared = &self.shared;
        let index = match self.forced(&req) {
            Some(index) => {
                shared.enter_index(index);
                index
            }
            None => shared.enter(|snapshot| self.pick(snapshot, &req)),
        };
        let in_flight = InFlight::adopt(shared.clone(), index);
        let meta = &shared.targets[index];
        req.extensions_mut().insert(meta.target);
        ResponseFuture::new(call(&self.services[index], req), in_flight)
    }
}

// === impl SplitBuilder ===

/// Builds a [`Split`]; see [`Split::builder`].
pub struct SplitBuilder<S> {
    targets: Vec<(String, S, u32)>,
    sticky: Option<KeyBy>,
    sticky_seed: u64,
    override_header: Option<HeaderName>,
    override_scope: Option<String>,
    echo_header: Option<HeaderName>,
    rng: RngSource,
    clock: Option<Arc<dyn Clock>>,
    carry_over: Option<Arc<Shared>>,
}

impl<S> SplitBuilder<S> {
    fn new() -> Self {
        Self {
            targets: Vec::new(),
            sticky: None,
            sticky_seed: 0,
            override_header: None,
            override_scope: None,
            echo_header: None,
            rng: RngSource::Thread,
            clock: None,
            carry_over: None,
        }
    }

    /// Adds a target: a name (1 to 64 visible ASCII characters, unique in
    /// the split), the service that serves it, and its relative weight
    /// (zero allowed: 100/0 is plain blue/green). Targets keep the order
    /// they are added in.
    pub fn target(mut self, name: impl Into<String>, service: S, weight: u32) -> Self {
        self.targets.push((name.into(), service, weight));
        self
    }

    /// Sticky selection by `key`: the same key keeps its target while the
    /// weights stay put, and raising a target's weight only moves keys onto
    /// it. Requests without the key are picked at random by weight.
    pub fn sticky(mut self, key: KeyBy) -> Self {
        self.sticky = Some(key);
        self
    }

    /// Salts the sticky hash. Splits with the same salt (the default is
    /// none) and the same target names agree on keys: a user on green in
    /// one is on green in the others whose green weight is at least as
    /// large, which keeps a user on one version across services. Give a
    /// split its own salt to decorrelate it from the others.
    pub fn sticky_salt(mut self, salt: &str) -> Self {
        self.sticky_seed = Key::from(salt).stable_hash(0);
        self
    }

    /// Lets a request force a target by naming it in this header (for
    /// testers checking green before any weight moves). Off by default. A
    /// name that is not a target is ignored and the request is routed as
    /// usual. Forcing works even on a target of weight zero.
    pub fn override_header(mut self, name: HeaderName) -> Self {
        self.override_header = Some(name);
        self
    }

    /// Honors the [override header](Self::override_header) only for
    /// callers whose [`Identity`](crate::auth::Identity) (recorded by an
    /// auth layer in front) has `scope`; anyone else's header is ignored
    /// and the request is routed as usual. Without it, whoever can reach
    /// the split can steer onto any target, weight zero included.
    pub fn override_scope(mut self, scope: impl Into<String>) -> Self {
        self.override_scope = Some(scope.into());
        self
    }

    /// Adds a response header naming the target that served the request.
    /// Off by default.
    pub fn echo_header(mut self, name: HeaderName) -> Self {
        self.echo_header = Some(name);
        self
    }

    /// Records each target's time to response headers, read from `clock`,
    /// in [`TargetStats::latency`](super::TargetStats::latency) (what a
    /// rollout's analysis compares). Off by default: it costs two clock
    /// reads per request. Use
    /// [`MonotonicClock`](crate::ratelimit::MonotonicClock) for real time,
    /// or a clock over tokio's for tests on a paused clock.
    pub fn latency(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Continues the counters of `from`'s targets: a target of the new
    /// split with the name of one of `from`'s shares its counters, latency
    /// histogram and in-flight count (requests still running on `from`
    /// count on it, and end on it), and `drained` futures of either split
    /// are woken by both. What replacing a split whose set of targets
    /// changes (a third version) needs to keep its history; weights and
    /// their rollback history start afresh.
    pub fn carry_over(mut self, from: &SplitHandle) -> Self {
        self.carry_over = Some(Arc::clone(&from.shared));
        self
    }

    /// Random selection from a seeded generator (xoshiro256++), for
    /// repeatable tests and simulations. The generator is shared by all
    /// clones of the split, so the sequence of picks is fixed for a fixed
    /// order of calls. The default is a fast generator per thread, seeded
    /// from the system.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = RngSource::seeded(seed);
        self
    }

    /// Random selection from a source of uniformly distributed `u64`s of
    /// your choosing, shared by all clones of the split behind a mutex (see
    /// [`SplitBuilder::seed`]). A closure keeps your generator's crate and
    /// version out of this API:
    ///
    /// ```
    /// # use switchyard::split::Split;
    /// # let svc = tower::service_fn(|_: http::Request<()>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(()))
    /// # });
    /// let mut state = 42u64; // any generator will do; this is SplitMix64
    /// let split = Split::builder()
    ///     .target("blue", svc.clone(), 50)
    ///     .target("green", svc, 50)
    ///     .rng(move || {
    ///         state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    ///         let mut z = state;
    ///         z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    ///         z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ///         z ^ (z >> 31)
    ///     })
    ///     .build()?;
    /// # Ok::<_, switchyard::split::SplitError>(())
    /// ```
    pub fn rng(mut self, next_u64: impl FnMut() -> u64 + Send + 'static) -> Self {
        self.rng = RngSource::from_fn(next_u64);
        self
    }

    /// Checks the targets and builds the split.
    ///
    /// Fails with [`SplitError::NoTargets`], [`SplitError::DuplicateTarget`],
    /// [`SplitError::InvalidTargetName`] or [`SplitError::AllWeightsZero`].
    pub fn build(self) -> Result<Split<S>, SplitError> {
        let mut metas = Vec::with_capacity(self.targets.len());
        let mut services = Vec::with_capacity(self.targets.len());
        let mut weights = Vec::with_capacity(self.targets.len());
        for (index, (name, service, weight)) in self.targets.into_iter().enumerate() {
            let header_value = valid_name(&name)?;
            if metas.iter().any(|m: &TargetMeta| m.target.name() == name) {
                return Err(SplitError::DuplicateTarget(name));
            }
            let carried = self.carry_over.as_ref().and_then(|from| {
                let meta = from.targets.iter().find(|m| m.target.name() == name)?;
                Some((Arc::clone(&meta.counters), Arc::clone(&meta.latency)))
            });
            metas.push(TargetMeta {
                target: Target {
                    name: intern(&name),
                    index,
                },
                header_value,
                counters: carried
                    .as_ref()
                    .map_or_else(Default::default, |(c, _)| Arc::clone(c)),
                latency: carried.map_or_else(Default::default, |(_, l)| l),
            });
            services.push(service);
            weights.push(weight);
        }
        let target_seeds = metas
            .iter()
            .map(|m| Key::from(m.target.name()).stable_hash(TARGET_SEED))
            .collect();
        let waiters = self
            .carry_over
            .as_ref()
            .map(|from| Arc::clone(&from.waiters));
        let shared = Shared::new(
            metas.into(),
            weights.into(),
            self.echo_header,
            self.clock,
            waiters,
        )?;
        Ok(Split {
            services,
            shared: Arc::new(shared),
            config: Arc::new(Config {
                sticky: self.sticky,
                sticky_seed: HashSeed::new(self.sticky_seed),
                target_seeds,
                override_header: self.override_header,
                override_scope: self.override_scope,
                rng: self.rng,
            }),
        })
    }
}

impl<S> fmt::Debug for SplitBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SplitBuilder")
            .field(
                "targets",
                &self
                    .targets
                    .iter()
                    .map(|(n, _, w)| (n, w))
                    .collect::<Vec<_>>(),
            )
            .field("sticky", &self.sticky)
            .field("override_header", &self.override_header)
            .field("override_scope", &self.override_scope)
            .field("echo_header", &self.echo_header)
            .finish_non_exhaustive()
    }
}

/// Separates the hash of a target name from the hash of a key.
const TARGET_SEED: u64 = 0x7461_7267_6574; // "target"

fn valid_name(name: &str) -> Result<HeaderValue, SplitError> {
    let ok = (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| HeaderValue::from_str(name).ok())
        .flatten()
        .ok_or_else(|| SplitError::InvalidTargetName(name.to_owned()))
}
