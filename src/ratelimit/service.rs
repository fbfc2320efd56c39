//! The layer, service, handle and builder of the rate limiter.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use super::clock::{Clock, ClockSource, MonotonicClock};
use super::gcra::{Gcra, Verdict};
use super::headers;
use super::store::{Entry, KeyState, SLOTS, Store};
use super::{Quota, RateLimitError};
use crate::auth::Identity;
use crate::body::ResponseBody;
use crate::future::{Rejection, ResponseFuture};
use crate::key::{Key, KeyBy, RequestView};
use crate::problem::Problem;
use crate::seqlock::SeqCount;

/// How a request's cost is worked out (shared with the Redis limiter).
pub(super) type CostFn = dyn Fn(&RequestView<'_>) -> u32 + Send + Sync;

/// The cost of `req`: the builder's closure, or 1.
#[inline]
pub(super) fn request_cost<B>(cost: Option<&CostFn>, req: &Request<B>) -> u32 {
    match cost {
        Some(f) => f(&RequestView::of(req)),
        None => 1,
    }
}

// === impl LiveConfig ===

/// A limiter's configuration as its handle changes it, shared by the
/// in-process and the Redis limiter: swapped whole, one writer at a time.
pub(super) struct LiveConfig {
    config: ArcSwap<Config>,
    write: Mutex<()>,
}

impl LiveConfig {
    pub(super) fn new(config: Config) -> Self {
        Self {
            config: ArcSwap::from_pointee(config),
            write: Mutex::new(()),
        }
    }

    #[inline]
    pub(super) fn load(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    #[cfg(feature = "redis")]
    pub(super) fn load_full(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Replaces the configuration with what `f` makes of the current one;
    /// `publish` sees the new one just before it is stored.
    pub(super) fn update(
        &self,
        f: impl FnOnce(&Config) -> Result<Config, RateLimitError>,
        publish: impl FnOnce(&Config),
    ) -> Result<(), RateLimitError> {
        let _write = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let next = f(&self.config.load())?;
        publish(&next);
        self.config.store(Arc::new(next));
        Ok(())
    }

    /// The current quotas.
    pub(super) fn quotas(&self) -> Vec<Quota> {
        self.load().quotas.iter().map(|(q, _)| q.clone()).collect()
    }
}

// === impl Limiter ===

/// Everything every service of one layer shares.
struct Limiter {
    config: LiveConfig,
    /// The quotas' parameters again, for the handle's checks: read without
    /// touching `config` (see [`HotQuotas`]).
    hot: HotQuotas,
    store: Store,
    clock: ClockSource,
    key_by: KeyBy,
    cost: Option<Box<CostFn>>,
    on_missing: MissingKey,
    headers_on_allowed: bool,
    legacy_headers: bool,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    allowed: AtomicU64,
    rejected: AtomicU64,
    dry_run_rejected: AtomicU64,
    missing_key: AtomicU64,
    bypassed: AtomicU64,
}

/// The live part: swapped whole by the handle. (The Redis limiter checks
/// its quotas the same way.)
#[derive(Clone)]
pub(super) struct Config {
    pub(super) quotas: Vec<(Quota, Gcra)>,
    /// The quotas' parameters alone, in order.
    pub(super) gcras: Vec<Gcra>,
    pub(super) names: Vec<String>,
    pub(super) policy: HeaderValue,
    pub(super) dry_run: bool,
    pub(super) allow: HashSet<Key<'static>>,
    /// Per-tier quotas, by [`Identity::tier`]: each a `Config` of which
    /// only the quotas (`quotas`, `gcras`, `names`, `policy`) are read;
    /// dry-run and the allow list are this one's. Empty for the Redis
    /// limiter, which has no tiers.
    pub(super) tiers: Arc<HashMap<String, Config>>,
}

impl Config {
    /// The quotas for `req`: those of its identity's tier when this
    /// configuration has quotas for that tier, else its own. A lookup by
    /// `&str` in the tiers' map: nothing is allocated, and a limiter
    /// without tiers only tests that the map is empty.
    #[inline]
    pub(super) fn quotas_for<B>(&self, req: &Request<B>) -> &Config {
        if self.tiers.is_empty() {
            return self;
        }
        self.tier_of(req.extensions().get::<Identity>())
    }

    /// The quotas for `identity`'s tier, or the default ones.
    fn tier_of(&self, identity: Option<&Identity>) -> &Config {
        identity
            .and_then(Identity::tier)
            .and_then(|tier| self.tiers.get(tier))
            .unwrap_or(self)
    }

    /// The same, with these tiers (checked: each tier's quotas as
    /// [`Config::new`] checks quotas).
    pub(super) fn with_tiers(
        &self,
        tiers: impl IntoIterator<Item = (String, Vec<Quota>)>,
    ) -> Result<Self, RateLimitError> {
        let mut map = HashMap::new();
        for (tier, quotas) in tiers {
            let checked = Config::new(quotas, false, HashSet::new()).map_err(|error| {
                RateLimitError::Tier {
                    tier: tier.clone(),
                    error: Box::new(error),
                }
            })?;
            map.insert(tier, checked);
        }
        Ok(Self {
            tiers: Arc::new(map),
            ..self.clone()
        })
    }

    /// The tiers' quotas, by tier name.
    pub(super) fn tier_quotas(&self) -> BTreeMap<String, Vec<Quota>> {
        self.tiers
            .iter()
            .map(|(tier, c)| {
                (
                    tier.clone(),
                    c.quotas.iter().map(|(q, _)| q.clone()).collect(),
                )
            })
            .collect()
    }

    /// The same, with dry-run on or off.
    pub(super) fn with_dry_run(&self, dry_run: bool) -> Self {
        Self {
            dry_run,
            ..self.clone()
        }
    }

    /// The same, with this allow list.
    pub(super) fn with_allow(&self, allow: HashSet<Key<'static>>) -> Self {
        Self {
            allow,
            ..self.clone()
        }
    }

    pub(super) fn new(
        quotas: Vec<Quota>,
        dry_run: bool,
        allow: HashSet<Key<'static>>,
    ) -> Result<Self, RateLimitError> {
        if quotas.is_empty() {
            return Err(RateLimitError::NoQuota);
        }
        if quotas.len() > SLOTS {
            return Err(RateLimitError::TooManyQuotas {
                max: SLOTS,
                got: quotas.len(),
            });
        }
        let mut names: Vec<String> = Vec::with_capacity(quotas.len());
        let mut checked = Vec::with_capacity(quotas.len());
        for quota in quotas {
            let name = quota.name();
            let valid = (1..=64).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
            if !valid {
                return Err(RateLimitError::InvalidName(name));
            }
            if names.contains(&name) {
                return Err(RateLimitError::DuplicateName(name));
            }
            let gcra =
                Gcra::new(&quota).ok_or_else(|| RateLimitError::InvalidQuota(name.clone()))?;
            names.push(name);
            checked.push((quota, gcra));
        }
        let policy = headers::policy(
            &checked
                .iter()
                .zip(&names)
                .map(|((q, _), n)| {
                    let period = u64::try_from(q.period().as_nanos()).unwrap_or(u64::MAX);
                    (n.clone(), q.count(), period)
                })
                .collect::<Vec<_>>(),
        );
        Ok(Self {
            gcras: checked.iter().map(|(_, g)| *g).collect(),
            quotas: checked,
            names,
            policy,
            dry_run,
            allow,
            tiers: Arc::default(),
        })
    }
}

/// The quotas' parameters behind a sequence lock of atomics.
///
/// [`RateLimitHandle::check`] is a hot path of its own (limits checked
/// outside HTTP, and the governor comparison bench), and loading the
/// `ArcSwap` config there cost a fifth of a check. Readers copy the few
/// parameters and retry in the rare case a change overlapped; the writer
/// runs under the handle's lock. Requests through the layer keep reading
/// the whole config, whose quotas are the same.
struct HotQuotas {
    seq: SeqCount,
    len: AtomicU64,
    interval: [AtomicU64; SLOTS],
    tau: [AtomicU64; SLOTS],
    burst: [AtomicU64; SLOTS],
}

impl HotQuotas {
    fn new(quotas: &[Gcra]) -> Self {
        let hot = HotQuotas {
            seq: SeqCount::default(),
            len: AtomicU64::new(0),
            interval: Default::default(),
            tau: Default::default(),
            burst: Default::default(),
        };
        hot.write(quotas);
        hot
    }

    #[inline]
    fn read(&self) -> ([Gcra; SLOTS], usize) {
        self.seq
            .read(|| {
                let len = (self.len.load(Ordering::Relaxed) as usize).min(SLOTS);
                let mut out = [Gcra::default(); SLOTS];
                for (i, g) in out.iter_mut().enumerate().take(len) {
                    *g = Gcra {
                        interval: self.interval[i].load(Ordering::Relaxed),
                        tau: self.tau[i].load(Ordering::Relaxed),
                        burst: self.burst[i].load(Ordering::Relaxed) as u32,
                    };
                }
                (out, len)
            })
            .0
    }

    /// Called with the handle's write lock held (or before sharing).
    fn write(&self, quotas: &[Gcra]) {
        self.seq.write(|| {
            self.len.store(quotas.len() as u64, Ordering::Relaxed);
            for (i, g) in quotas.iter().enumerate().take(SLOTS) {
                self.interval[i].store(g.interval, Ordering::Relaxed);
                self.tau[i].store(g.tau, Ordering::Relaxed);
                self.burst[i].store(u64::from(g.burst), Ordering::Relaxed);
            }
        });
    }
}

impl Limiter {
    #[inline]
    fn now(&self) -> u64 {
        self.clock.now_nanos()
    }

    fn reject(&self, config: &Config, decision: &Decision, cost: u32) -> Rejection {
        rejection(config, decision, cost, self.legacy_headers)
    }

    /// The headers of an allowed (or dry-run) response.
    fn headers(&self, config: &Config, decision: &Decision) -> Vec<(HeaderName, HeaderValue)> {
        allowed_headers(
            config,
            decision,
            self.headers_on_allowed,
            self.legacy_headers,
        )
    }
}

/// Asks every quota about `cost` units for `key` at `now` against the
/// state in `store`; with `consume`, takes them if all agree (and none
/// otherwise). (The Redis limiter's local fallback decides with it too.)
#[inline]
pub(super) fn decide_in(
    store: &Store,
    quotas: &[Gcra],
    key: &Key<'_>,
    cost: u32,
    now: u64,
    consume: bool,
) -> Decision {
    // Filled in place: a `Decision` is large enough that moving it
    // through closures and options costs more than the check itself.
    let mut decision = Decision::new(quotas, now);
    let fresh = KeyState::default();
    store.with(key, now, consume, |entry| {
        let state = match entry {
            Entry::Tracked(s) | Entry::Overflow(s) => s,
            Entry::Untracked if consume => return Some(()),
            Entry::Untracked => &fresh,
        };
        decide_on(quotas, state, cost, now, consume, &mut decision)
    });
    decision
}

/// The refusal of a request without a key.
pub(super) fn missing_key(key_by: &KeyBy, status: StatusCode) -> Rejection {
    Rejection::new(Problem::new(status).detail(format!(
        "the request carries no rate-limit key (expected {key_by:?})"
    )))
}

/// The 429 for a refused request: which quota, when to retry, the headers.
pub(super) fn rejection(
    config: &Config,
    decision: &Decision,
    cost: u32,
    legacy: bool,
) -> Rejection {
    let index = decision.refused_by.unwrap_or(0);
    let name = &config.names[index];
    let mut headers = Vec::with_capacity(4);
    let problem = Problem::new(StatusCode::TOO_MANY_REQUESTS).with("policy", name.as_str());
    let problem = match decision.retry_after {
        Some(wait) => {
            let wait = u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX);
            headers::retry_after(&mut headers, wait);
            let secs = headers::retry_secs(wait);
            problem
                .detail(format!("rate limit `{name}` exceeded; retry in {secs} s"))
                .with("retry_after", secs)
        }
        None => problem.detail(format!(
            "the request costs {cost} units, more than the burst of {} that rate limit `{name}` allows",
            config.quotas[index].1.burst
        )),
    };
    write_headers(&mut headers, config, decision, legacy);
    headers
        .into_iter()
        .fold(Rejection::new(problem), |r, (name, value)| {
            r.header(name, value)
        })
}

/// The headers of an allowed (or dry-run) response.
pub(super) fn allowed_headers(
    config: &Config,
    decision: &Decision,
    on_allowed: bool,
    legacy: bool,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::new();
    if on_allowed || !decision.allowed {
        write_headers(&mut headers, config, decision, legacy);
    }
    headers
}

fn write_headers(
    headers: &mut Vec<(HeaderName, HeaderValue)>,
    config: &Config,
    decision: &Decision,
    legacy: bool,
) {
    headers::write(
        headers,
        &config.names,
        config.quotas.iter().map(|(q, _)| q.count()),
        decision.quotas(),
        &config.policy,
        legacy,
    );
}

/// The all-or-nothing check of every quota against one key's state, into
/// `decision`. `None` when the state was removed meanwhile (the caller
/// looks again).
#[inline]
fn decide_on(
    quotas: &[Gcra],
    state: &KeyState,
    cost: u32,
    now: u64,
    consume: bool,
    decision: &mut Decision,
) -> Option<()> {
    for (i, gcra) in quotas.iter().enumerate() {
        let cell = &state.tats[i];
        let verdict = if consume {
            gcra.acquire(cell, now, cost)
        } else {
            gcra.peek(cell, now, cost)
        };
        match verdict {
            // After taking the units; a peek reports the state as it is.
            Verdict::Allowed { tat } if consume => decision.tats[i] = tat,
            Verdict::Allowed { .. } => decision.tats[i] = cell.load(Ordering::Acquire),
            Verdict::Gone => {
                refund(quotas, state, i, cost, consume);
                return None;
            }
            Verdict::Refused { wait } => {
                refund(quotas, state, i, cost, consume);
                let mut longest = wait;
                for (j, gcra) in quotas.iter().enumerate() {
                    decision.tats[j] = state.tats[j].load(Ordering::Acquire);
                    if j > i
                        && let Verdict::Refused { wait } = gcra.peek(&state.tats[j], now, cost)
                    {
                        longest = longest.max(wait);
                    }
                }
                decision.allowed = false;
                decision.refused_by = Some(i);
                decision.retry_after = (longest != u64::MAX).then(|| Duration::from_nanos(longest));
                return Some(());
            }
        }
    }
    Some(())
}

fn refund(quotas: &[Gcra], state: &KeyState, upto: usize, cost: u32, consumed: bool) {
    if consumed {
        for (j, gcra) in quotas.iter().enumerate().take(upto) {
            gcra.refund(&state.tats[j], cost);
        }
    }
}

// === impl Decision ===

/// What the limiter decided about one request: allowed or not, when to
/// retry, and each quota's state after the decision.
///
/// It keeps each quota's raw state and works out the
/// [`QuotaState`]s only when asked, so a bare check pays for
/// no division.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    allowed: bool,
    refused_by: Option<usize>,
    retry_after: Option<Duration>,
    now: u64,
    /// The key's arrival time for each quota, and each quota's emission
    /// interval and burst: kept in compact arrays, since every check
    /// writes the whole `Decision` and its size shows in the cost.
    tats: [u64; SLOTS],
    intervals: [u64; SLOTS],
    bursts: [u32; SLOTS],
    len: usize,
}

impl Decision {
    /// Allowed, every quota as for a fresh key (which is also the answer
    /// for a key the full table could not hold); the check then fills in
    /// the arrival times it finds.
    #[inline]
    fn new(quotas: &[Gcra], now: u64) -> Self {
        let mut decision = Decision {
            allowed: true,
            refused_by: None,
            retry_after: None,
            now,
            tats: [now; SLOTS],
            intervals: [1; SLOTS],
            bursts: [0; SLOTS],
            len: quotas.len(),
        };
        for (i, gcra) in quotas.iter().enumerate() {
            decision.intervals[i] = gcra.interval;
            decision.bursts[i] = gcra.burst;
        }
        decision
    }

    /// A decision made elsewhere (in Redis): each quota's arrival time as
    /// nanoseconds ahead of now (0 for a key with its whole burst).
    #[cfg(feature = "redis")]
    pub(super) fn from_ahead(
        quotas: &[Gcra],
        ahead: impl IntoIterator<Item = u64>,
        refused_by: Option<usize>,
        retry_after: Option<Duration>,
    ) -> Self {
        let mut decision = Decision::new(quotas, 0);
        for (tat, ahead) in decision.tats.iter_mut().zip(ahead) {
            *tat = ahead;
        }
        decision.allowed = refused_by.is_none();
        decision.refused_by = refused_by;
        decision.retry_after = retry_after;
        decision
    }

    /// Whether the request may go on.
    pub fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// For a refused request, how long until the same request would be
    /// allowed; `None` when allowed, or when its cost exceeds a quota's
    /// burst so that it never will be.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// For a refused request, the position of the first quota that
    /// refused it.
    pub fn refused_by(&self) -> Option<usize> {
        self.refused_by
    }

    /// The state of the quota at position `index`: after the units were
    /// taken for an allowed [`check`](RateLimitHandle::check) or request,
    /// as it is for a refused one or a [`peek`](RateLimitHandle::peek).
    pub fn quota(&self, index: usize) -> Option<QuotaState> {
        (index < self.len).then(|| self.state(index))
    }

    /// Every quota's state, in quota order (see [`quota`](Self::quota)).
    pub fn quotas(&self) -> impl ExactSizeIterator<Item = QuotaState> + Clone + '_ {
        (0..self.len).map(|i| self.state(i))
    }
}

/// One quota's state for one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaState {
    /// The burst size: the most units available at once.
    pub limit: u32,
    /// Units a request could take now.
    pub remaining: u32,
    /// Time until all `limit` units are available again.
    pub reset: Duration,
}

impl Decision {
    fn state(&self, i: usize) -> QuotaState {
        let gcra = Gcra {
            interval: self.intervals[i],
            tau: self.intervals[i] * u64::from(self.bursts[i]),
            burst: self.bursts[i],
        };
        let tat = self.tats[i];
        QuotaState {
            limit: gcra.burst,
            remaining: gcra.remaining(tat, self.now),
            reset: Duration::from_nanos(gcra.reset_after(tat, self.now)),
        }
    }
}

// === impl RateLimitLayer ===

/// A [`Layer`] that rate-limits requests; every service it wraps shares
/// one limiter. See the [module docs](super).
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Arc<Limiter>,
}

impl RateLimitLayer {
    /// A builder; add at least one [`Quota`].
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder::default()
    }

    /// The live handle on this limiter.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            limiter: self.limiter.clone(),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("key_by", &self.limiter.key_by)
            .field(
                "quotas",
                &self
                    .limiter
                    .config
                    .load()
                    .quotas
                    .iter()
                    .map(|(q, _)| q)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

// === impl RateLimit ===

/// A rate-limited service; built by [`RateLimitLayer`].
///
/// `poll_ready` is the inner service's. A refused request is answered by
/// the limiter without calling the inner service.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

impl<S> RateLimit<S> {
    /// The live handle on this service's limiter.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            limiter: self.limiter.clone(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("key_by", &self.limiter.key_by)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let limiter = &*self.limiter;
        let Some(key) = limiter.key_by.extract(&req) else {
            limiter.counters.missing_key.fetch_add(1, Ordering::Relaxed);
            return match limiter.on_missing {
                MissingKey::Reject(status) => ResponseFuture::rejected(
                    missing_key(&limiter.key_by, status).for_request(req.headers()),
                ),
                MissingKey::Allow => ResponseFuture::inner(self.inner.call(req)),
            };
        };
        let config = limiter.config.load();
        if !config.allow.is_empty() && allow_listed(&config.allow, &key) {
            limiter.counters.bypassed.fetch_add(1, Ordering::Relaxed);
            return ResponseFuture::inner(self.inner.call(req));
        }
        let quotas = config.quotas_for(&req);
        let cost = request_cost(limiter.cost.as_deref(), &req);
        let now = limiter.now();
        let decision = decide_in(&limiter.store, &quotas.gcras, &key, cost, now, true);
        if decision.allowed {
            limiter.counters.allowed.fetch_add(1, Ordering::Relaxed);
        } else if config.dry_run {
            limiter
                .counters
                .dry_run_rejected
                .fetch_add(1, Ordering::Relaxed);
        } else {
            limiter.counters.rejected.fetch_add(1, Ordering::Relaxed);
            return ResponseFuture::rejected(
                limiter
                    .reject(quotas, &decision, cost)
                    .for_request(req.headers()),
            );
        }
        let headers = limiter.headers(quotas, &decision);
        ResponseFuture::inner_with_headers(self.inner.call(req), headers)
    }
}

/// `set.contains(key)` for a borrowed key: a `HashSet` is covariant in its
/// element type, so a set of `Key<'static>` is a set of `Key<'r>`.
pub(super) fn allow_listed<'r>(set: &HashSet<Key<'r>>, key: &Key<'r>) -> bool {
    set.contains(key)
}

// === impl RateLimitHandle ===

/// A live handle on a rate limiter: change quotas, per-tier quotas,
/// dry-run and the allow list; inspect, check or charge a key (against the
/// default quotas); read counters. Cheap to clone.
#[derive(Clone)]
pub struct RateLimitHandle {
    limiter: Arc<Limiter>,
}

impl RateLimitHandle {
    /// Checks and, if allowed, takes `cost` units for `key` now, exactly as
    /// a request would (without the allow list and dry-run, which are the
    /// layer's business).
    #[inline]
    pub fn check(&self, key: &Key<'_>, cost: u32) -> Decision {
        self.decide(key, cost, true)
    }

    /// What [`check`](Self::check) would decide for `cost` units, without
    /// taking anything. The quota states are the key's as they are now (its
    /// remaining capacity), not as they would be after the request.
    pub fn peek(&self, key: &Key<'_>, cost: u32) -> Decision {
        self.decide(key, cost, false)
    }

    /// [`check`](Self::check) (`consume`) or [`peek`](Self::peek).
    #[inline]
    fn decide(&self, key: &Key<'_>, cost: u32, consume: bool) -> Decision {
        let limiter = &*self.limiter;
        let (quotas, len) = limiter.hot.read();
        let now = limiter.now();
        decide_in(&limiter.store, &quotas[..len], key, cost, now, consume)
    }

    /// Charges `cost` more units to `key` on every quota, unconditionally:
    /// for usage known only after the response (tokens an AI model used).
    /// The key may go into debt; its next requests wait until it is paid.
    pub fn charge(&self, key: &Key<'_>, cost: u64) {
        let limiter = &*self.limiter;
        let (quotas, len) = limiter.hot.read();
        let now = limiter.now();
        limiter.store.with(key, now, true, |entry| {
            let state = match entry {
                Entry::Tracked(s) | Entry::Overflow(s) => s,
                Entry::Untracked => return Some(()),
            };
            for (i, gcra) in quotas[..len].iter().enumerate() {
                if !gcra.charge(&state.tats[i], now, cost) {
                    return None;
                }
            }
            Some(())
        })
    }

    /// The key this limiter reads from `req`, if the request has one: to
    /// [`charge`](Self::charge) it later.
    pub fn key_of<'r, B>(&self, req: &'r Request<B>) -> Option<Key<'r>> {
        self.limiter.key_by.extract(req)
    }

    /// Replaces the quotas. Each key's state is kept per position: the
    /// quota at position `i` continues from the state of the quota that
    /// was at position `i` (so changing a quota's rate or burst keeps what
    /// each key has used). A position that never held a quota starts fresh
    /// for every key; one that held a since-removed quota continues from
    /// its state, which can only make the new quota stricter, for at most
    /// as long as the old one would have taken to recover.
    pub fn set_quotas(
        &self,
        quotas: impl IntoIterator<Item = Quota>,
    ) -> Result<(), RateLimitError> {
        self.update(|c| {
            let next = Config::new(quotas.into_iter().collect(), c.dry_run, c.allow.clone())?;
            Ok(Config {
                tiers: Arc::clone(&c.tiers),
                ..next
            })
        })
    }

    /// The current quotas (the default ones, for callers without a tier
    /// of their own).
    pub fn quotas(&self) -> Vec<Quota> {
        self.limiter.config.quotas()
    }

    /// Replaces the per-tier quotas (see [`RateLimitBuilder::tier`]): the
    /// next request of a caller of one of these tiers is checked against
    /// its tier's quotas, every other against the default ones. Each key's
    /// state is kept per position, as [`set_quotas`](Self::set_quotas)
    /// keeps it. On an error nothing changes.
    pub fn set_tier_quotas<T: Into<String>>(
        &self,
        tiers: impl IntoIterator<Item = (T, Vec<Quota>)>,
    ) -> Result<(), RateLimitError> {
        let tiers: Vec<(String, Vec<Quota>)> =
            tiers.into_iter().map(|(t, q)| (t.into(), q)).collect();
        self.update(|c| c.with_tiers(tiers))
    }

    /// The per-tier quotas, by tier.
    pub fn tier_quotas(&self) -> BTreeMap<String, Vec<Quota>> {
        self.limiter.config.load().tier_quotas()
    }

    /// Whether the layer is in dry-run.
    pub fn dry_run(&self) -> bool {
        self.limiter.config.load().dry_run
    }

    /// Turns dry-run on or off: in dry-run, requests over the limit are
    /// counted and get the headers, but are let through.
    pub fn set_dry_run(&self, dry_run: bool) {
        let _ = self.update(|c| Ok(c.with_dry_run(dry_run)));
    }

    /// The allow list: keys that bypass the limit entirely.
    pub fn allow_list(&self) -> Vec<Key<'static>> {
        self.limiter.config.load().allow.iter().cloned().collect()
    }

    /// Replaces the allow list: keys that bypass the limit entirely.
    pub fn set_allow_list<K: Into<Key<'static>>>(&self, keys: impl IntoIterator<Item = K>) {
        let allow = keys.into_iter().map(Into::into).collect();
        let _ = self.update(|c| Ok(c.with_allow(allow)));
    }

    /// Everything the handle can change, as it is now.
    #[cfg(feature = "config")]
    pub(crate) fn settings(&self) -> Settings {
        let config = self.limiter.config.load();
        Settings {
            quotas: config.quotas.iter().map(|(q, _)| q.clone()).collect(),
            tiers: config.tier_quotas(),
            dry_run: config.dry_run,
            allow: config.allow.clone(),
        }
    }

    /// Changes the quotas, the tiers' quotas, dry-run and the allow list
    /// at once: the next request sees all of them or, on an error, none.
    #[cfg(feature = "config")]
    pub(crate) fn set_settings(&self, settings: Settings) -> Result<(), RateLimitError> {
        let Settings {
            quotas,
            tiers,
            dry_run,
            allow,
        } = settings;
        self.update(|_| Config::new(quotas, dry_run, allow)?.with_tiers(tiers))
    }

    fn update(
        &self,
        f: impl FnOnce(&Config) -> Result<Config, RateLimitError>,
    ) -> Result<(), RateLimitError> {
        let limiter = &*self.limiter;
        limiter
            .config
            .update(f, |next| limiter.hot.write(&next.gcras))
    }

    /// The limiter's counters.
    pub fn stats(&self) -> RateLimitStats {
        let c = &self.limiter.counters;
        let store = &self.limiter.store;
        RateLimitStats {
            allowed: c.allowed.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            dry_run_rejected: c.dry_run_rejected.load(Ordering::Relaxed),
            missing_key: c.missing_key.load(Ordering::Relaxed),
            bypassed: c.bypassed.load(Ordering::Relaxed),
            tracked_keys: store.len() as u64,
            overflowed: store.overflowed.load(Ordering::Relaxed),
            evicted: store.evicted.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for RateLimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// What a [`RateLimitHandle`] changes while the limiter runs, all at
/// once (the gateway's reloads).
#[cfg(feature = "config")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    /// The default quotas.
    pub(crate) quotas: Vec<Quota>,
    /// Quotas by tier.
    pub(crate) tiers: BTreeMap<String, Vec<Quota>>,
    /// Whether over-limit requests are let through.
    pub(crate) dry_run: bool,
    /// Keys never limited.
    pub(crate) allow: HashSet<Key<'static>>,
}

/// Counters of a rate limiter since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RateLimitStats {
    /// Requests allowed.
    pub allowed: u64,
    /// Requests refused with 429.
    pub rejected: u64,
    /// Requests over the limit let through by dry-run.
    pub dry_run_rejected: u64,
    /// Requests without a key.
    pub missing_key: u64,
    /// Requests whose key is on the allow list.
    pub bypassed: u64,
    /// Keys in the table now.
    pub tracked_keys: u64,
    /// New keys not stored because the table was full of live keys.
    pub overflowed: u64,
    /// Keys removed by sweeps because their state was back to fresh.
    pub evicted: u64,
}

// === impl RateLimitBuilder ===

/// What the layer does with a request that has no key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingKey {
    /// Refuse it with this status (400 by default; 429 also makes sense)
    /// and a problem+json body.
    Reject(StatusCode),
    /// Let it through unlimited. To limit it by another key instead, chain
    /// keys: `KeyBy::header(..).or(KeyBy::peer_ip())`.
    Allow,
}

/// Builds a [`RateLimitLayer`]; see [`RateLimitLayer::builder`].
pub struct RateLimitBuilder {
    key_by: KeyBy,
    quotas: Vec<Quota>,
    cost: Option<Box<CostFn>>,
    dry_run: bool,
    allow: HashSet<Key<'static>>,
    tiers: BTreeMap<String, Vec<Quota>>,
    max_keys: usize,
    share_when_full: bool,
    clock: ClockSource,
    on_missing: MissingKey,
    headers_on_allowed: bool,
    legacy_headers: bool,
}

impl Default for RateLimitBuilder {
    fn default() -> Self {
        Self {
            key_by: KeyBy::peer_ip(),
            quotas: Vec::new(),
            cost: None,
            dry_run: false,
            allow: HashSet::new(),
            tiers: BTreeMap::new(),
            max_keys: 100_000,
            share_when_full: true,
            clock: ClockSource::Monotonic(MonotonicClock::new()),
            on_missing: MissingKey::Reject(StatusCode::BAD_REQUEST),
            headers_on_allowed: true,
            legacy_headers: false,
        }
    }
}

impl RateLimitBuilder {
    /// Where each request's key comes from; [`KeyBy::peer_ip`] by default.
    pub fn key_by(mut self, key_by: KeyBy) -> Self {
        self.key_by = key_by;
        self
    }

    /// Adds a quota (up to four). A request passes only if every quota
    /// allows it.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quotas.push(quota);
        self
    }

    /// The cost of a request in quota units (1 by default), e.g. estimated
    /// prompt tokens. A cost above a quota's burst is always refused.
    pub fn cost<F>(mut self, cost: F) -> Self
    where
        F: Fn(&RequestView<'_>) -> u32 + Send + Sync + 'static,
    {
        self.cost = Some(Box::new(cost));
        self
    }

    /// Count and add headers, but never refuse (to try a limit on real
    /// traffic first). Can be changed later through the handle.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Lets requests with this key bypass the limit.
    pub fn allow(mut self, key: impl Into<Key<'static>>) -> Self {
        self.allow.insert(key.into());
        self
    }

    /// Quotas for the callers of one tier: a request whose
    /// [`Identity`] (recorded by authentication) has this
    /// [`tier`](Identity::tier) is checked against these quotas (up to
    /// four) instead of the default ones; requests without an identity, or
    /// of a tier not given here, meet the default ones. Calling it again
    /// for the same tier replaces that tier's quotas.
    ///
    /// Tiers share one table of keys: a key's state is kept per quota
    /// position, so a key met under two tiers (callers of different tiers
    /// behind one address, say) is counted once, each request against its
    /// own tier's quotas. Key by [`KeyBy::identity`] so that every caller
    /// has its own state. The handle's [`check`](RateLimitHandle::check),
    /// [`peek`](RateLimitHandle::peek) and [`charge`](RateLimitHandle::charge),
    /// which see no request, use the default quotas.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use http::{Request, Response};
    /// use switchyard::auth::Identity;
    /// use switchyard::key::KeyBy;
    /// use switchyard::ratelimit::{Quota, RateLimitLayer};
    /// use tower::{service_fn, Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let limit = RateLimitLayer::builder()
    ///     .key_by(KeyBy::identity())
    ///     .quota(Quota::per_minute(1).named("free"))
    ///     .tier("gold", [Quota::per_minute(3).named("gold")])
    ///     .build()?;
    /// let svc = limit.layer(service_fn(|_: Request<()>| async {
    ///     Ok::<_, Infallible>(Response::new(String::new()))
    /// }));
    /// let as_caller = |identity: Identity| {
    ///     let mut req = Request::new(());
    ///     req.extensions_mut().insert(identity);
    ///     req
    /// };
    /// for _ in 0..3 {
    ///     let gold = as_caller(Identity::new("ann").with_tier("gold"));
    ///     assert_eq!(svc.clone().oneshot(gold).await?.status(), 200);
    /// }
    /// assert_eq!(svc.clone().oneshot(as_caller(Identity::new("bob"))).await?.status(), 200);
    /// assert_eq!(svc.clone().oneshot(as_caller(Identity::new("bob"))).await?.status(), 429);
    /// # Ok(())
    /// # }
    /// ```
    pub fn tier(
        mut self,
        tier: impl Into<String>,
        quotas: impl IntoIterator<Item = Quota>,
    ) -> Self {
        self.tiers.insert(tier.into(), quotas.into_iter().collect());
        self
    }

    /// The most keys tracked at once (100,000 by default); see the module
    /// docs on memory.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// When the table is full of live keys, let new keys through
    /// unlimited (fail open) instead of having them share one state.
    pub fn unlimited_when_full(mut self) -> Self {
        self.share_when_full = false;
        self
    }

    /// The clock ([`MonotonicClock`] by default).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = ClockSource::Custom(Box::new(clock));
        self
    }

    /// What to do with a request that has no key (refuse with 400 by
    /// default). Never a 500.
    pub fn on_missing_key(mut self, on_missing: MissingKey) -> Self {
        self.on_missing = on_missing;
        self
    }

    /// Whether allowed responses carry `RateLimit` and `RateLimit-Policy`
    /// too (yes by default).
    pub fn headers_on_allowed(mut self, on: bool) -> Self {
        self.headers_on_allowed = on;
        self
    }

    /// Also send `X-RateLimit-Limit`, `-Remaining` and `-Reset` (seconds),
    /// for clients that expect them (off by default).
    pub fn legacy_headers(mut self, on: bool) -> Self {
        self.legacy_headers = on;
        self
    }

    /// Checks the quotas and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer, RateLimitError> {
        if self.max_keys == 0 {
            return Err(RateLimitError::NoKeys);
        }
        let config = Config::new(self.quotas, self.dry_run, self.allow)?.with_tiers(self.tiers)?;
        Ok(RateLimitLayer {
            limiter: Arc::new(Limiter {
                hot: HotQuotas::new(&config.gcras),
                config: LiveConfig::new(config),
                store: Store::new(self.max_keys, self.share_when_full),
                clock: self.clock,
                key_by: self.key_by,
                cost: self.cost,
                on_missing: self.on_missing,
                headers_on_allowed: self.headers_on_allowed,
                legacy_headers: self.legacy_headers,
                counters: Counters::default(),
            }),
        })
    }
}

impl fmt::Debug for RateLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("key_by", &self.key_by)
            .field("quotas", &self.quotas)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::ManualClock;
    use std::convert::Infallible;
    use tower::{ServiceExt, service_fn};

    /// A service limited per identity: 1 per minute by default, 3 per
    /// minute for `gold`, on a clock that stands still.
    fn tiered() -> (
        impl Service<Request<()>, Response = Response<ResponseBody<String>>, Error = Infallible> + Clone,
        RateLimitHandle,
    ) {
        let layer = RateLimitLayer::builder()
            .key_by(KeyBy::identity())
            .clock(ManualClock::new())
            .quota(Quota::per_minute(1).named("default"))
            .tier("gold", [Quota::per_minute(3).named("gold")])
            .build()
            .unwrap();
        let handle = layer.handle();
        let svc = layer.layer(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
        (svc, handle)
    }

    fn as_caller(identity: Identity) -> Request<()> {
        let mut req = Request::new(());
        req.extensions_mut().insert(identity);
        req
    }

    /// The statuses of `n` requests of `identity`.
    async fn statuses<S>(svc: &S, identity: &Identity, n: usize) -> Vec<u16>
    where
        S: Service<Request<()>, Response = Response<ResponseBody<String>>, Error = Infallible>
            + Clone,
    {
        let mut out = Vec::new();
        for _ in 0..n {
            let res = svc
                .clone()
                .oneshot(as_caller(identity.clone()))
                .await
                .unwrap();
            out.push(res.status().as_u16());
        }
        out
    }

    #[tokio::test]
    async fn each_tier_meets_its_own_quotas() {
        let (svc, _) = tiered();
        let gold = Identity::new("ann").with_tier("gold");
        assert_eq!(statuses(&svc, &gold, 4).await, [200, 200, 200, 429]);
        // No tier, and a tier without quotas of its own: the default.
        let plain = Identity::new("bob");
        assert_eq!(statuses(&svc, &plain, 2).await, [200, 429]);
        let silver = Identity::new("cid").with_tier("silver");
        assert_eq!(statuses(&svc, &silver, 2).await, [200, 429]);
        // The refusal names the tier's quota.
        let res = svc.clone().oneshot(as_caller(gold)).await.unwrap();
        assert_eq!(res.headers()["ratelimit-policy"], r#""gold";q=3;w=60"#);
    }

    #[tokio::test]
    async fn tiers_change_live_and_keep_each_keys_state() {
        let (svc, handle) = tiered();
        let gold = Identity::new("ann").with_tier("gold");
        assert_eq!(statuses(&svc, &gold, 2).await, [200, 200]);
        handle
            .set_tier_quotas([("gold", vec![Quota::per_minute(5).named("gold")])])
            .unwrap();
        // The key's state is kept as time: 40 s ahead of now (two 20 s
        // units of 3 per minute), so under 5 per minute (12 s a unit, 60 s
        // of tolerance) one more fits, not three.
        assert_eq!(statuses(&svc, &gold, 2).await, [200, 429]);
        assert_eq!(
            handle.tier_quotas()["gold"],
            [Quota::per_minute(5).named("gold")]
        );
        // Tiers removed: the default quota, from the same state.
        handle
            .set_tier_quotas(Vec::<(String, Vec<Quota>)>::new())
            .unwrap();
        assert!(handle.tier_quotas().is_empty());
        assert_eq!(statuses(&svc, &gold, 1).await, [429]);
        // Default quotas changed: the tiers stay.
        handle
            .set_tier_quotas([("gold", vec![Quota::per_minute(9)])])
            .unwrap();
        handle.set_quotas([Quota::per_minute(2)]).unwrap();
        assert_eq!(handle.tier_quotas().len(), 1);
    }

    #[test]
    fn a_tiers_invalid_quota_is_refused_with_its_tier() {
        let refused = RateLimitLayer::builder()
            .quota(Quota::per_second(1))
            .tier("gold", [Quota::per_second(0).named("zero")])
            .build()
            .unwrap_err();
        assert_eq!(
            refused,
            RateLimitError::Tier {
                tier: "gold".into(),
                error: Box::new(RateLimitError::InvalidQuota("zero".into())),
            }
        );
        assert_eq!(
            refused.to_string(),
            "tier `gold`: quota `zero`: count, period and burst must be above zero, and burst × period / count below 146 years"
        );
        let none = RateLimitLayer::builder()
            .quota(Quota::per_second(1))
            .tier("gold", [])
            .build()
            .unwrap_err();
        assert!(matches!(none, RateLimitError::Tier { .. }));
        // Through the handle: refused, nothing changed.
        let layer = RateLimitLayer::builder()
            .quota(Quota::per_second(1))
            .tier("gold", [Quota::per_second(5)])
            .build()
            .unwrap();
        let handle = layer.handle();
        assert!(handle.set_tier_quotas([("gold", vec![])]).is_err());
        assert_eq!(handle.tier_quotas()["gold"], [Quota::per_second(5)]);
    }

    #[cfg(feature = "config")]
    #[test]
    fn settings_change_together_or_not_at_all() {
        let layer = RateLimitLayer::builder()
            .quota(Quota::per_second(1))
            .build()
            .unwrap();
        let handle = layer.handle();
        let before = handle.settings();
        let mut next = before.clone();
        next.quotas = vec![Quota::per_second(7)];
        next.tiers
            .insert("gold".into(), vec![Quota::per_second(70)]);
        next.dry_run = true;
        next.allow.insert(Key::from("bot"));
        handle.set_settings(next.clone()).unwrap();
        assert_eq!(handle.settings(), next);
        assert!(handle.dry_run());
        assert_eq!(handle.allow_list(), [Key::from("bot")]);
        let mut broken = before.clone();
        broken.dry_run = true;
        broken
            .tiers
            .insert("bad".into(), vec![Quota::per_second(0)]);
        assert!(handle.set_settings(broken).is_err());
        assert_eq!(handle.settings(), next);
    }
}
