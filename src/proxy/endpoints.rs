//! The servers behind one [`Upstream`](super::Upstream): round-robin
//! (weighted) among those in service, passive health (an endpoint that
//! fails requests in a row is taken out of service for a while), the
//! verdicts of active health checks, and a set that changes while
//! requests flow: endpoints join and leave (service discovery, the admin
//! API), those leaving drain.
//!
//! Written here rather than with `tower::balance`: that balances over
//! services discovered as a stream and measures load with its own
//! wrappers, while here the endpoints share one connection pool and only
//! the request's URI changes; the pick is one atomic add on a snapshot of
//! the set (an `arc-swap` load), and a change publishes a new snapshot
//! without stopping a request.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;
use http::{HeaderValue, Uri};
use thread_local::ThreadLocal;
use tokio::time::Instant;

use super::pool::Idle;

/// One server of an upstream.
pub(super) struct Endpoint {
    /// What names it in its set: the URL given to the builder, or the key
    /// its source gave it.
    pub(super) key: String,
    pub(super) url: String,
    pub(super) authority: Authority,
    /// The `Host` header for it.
    pub(super) host: HeaderValue,
    /// Its share of the requests, relative to the others' (at least 1).
    pub(super) weight: u32,
    /// `http://authority/`, to connect to (the lean pool).
    pub(super) base: Uri,
    /// The lean pool's idle connections to it, per thread, the most
    /// recently used last; dropped with it when it has left its set and
    /// drained.
    pub(super) idle: ThreadLocal<RefCell<Vec<Idle>>>,
    /// Failures since its last success.
    failed: AtomicU32,
    /// Nanoseconds after the set's origin until which it is out of
    /// service; 0 while in.
    out_until: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    ejections: AtomicU64,
    /// What the health checks say (true without them).
    healthy: AtomicBool,
    /// Health checks in a row with the other verdict than `healthy`.
    streak: AtomicU32,
    /// Requests sent to it whose response has not ended.
    pub(super) in_flight: Arc<AtomicU64>,
    /// Whether it has left its set: its connections are not kept.
    pub(super) left: AtomicBool,
}

impl Endpoint {
    pub(super) fn new(
        key: String,
        url: String,
        authority: Authority,
        host: HeaderValue,
        weight: u32,
    ) -> Self {
        let base = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        Self {
            key,
            url,
            authority,
            host,
            weight: weight.max(1),
            base,
            idle: ThreadLocal::new(),
            failed: AtomicU32::new(0),
            out_until: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            in_flight: Arc::new(AtomicU64::new(0)),
            left: AtomicBool::new(false),
        }
    }

    fn in_service(&self, now: u64) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.out_until.load(Ordering::Relaxed) <= now
    }

    /// Requests sent to it whose response has not ended.
    pub(super) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A health check's verdict; the endpoint changes sides after `to_fail`
    /// failed checks in a row (when healthy) or `to_pass` passed ones
    /// (when not). Only one task checks an endpoint.
    pub(super) fn checked(&self, passed: bool, to_fail: u32, to_pass: u32) {
        let healthy = self.healthy.load(Ordering::Relaxed);
        if passed == healthy {
            self.streak.store(0, Ordering::Relaxed);
            return;
        }
        let streak = self.streak.load(Ordering::Relaxed) + 1;
        if streak >= if healthy { to_fail } else { to_pass } {
            self.healthy.store(passed, Ordering::Relaxed);
            self.streak.store(0, Ordering::Relaxed);
        } else {
            self.streak.store(streak, Ordering::Relaxed);
        }
    }

    fn stats(&self, now: u64, draining: bool) -> EndpointStats {
        EndpointStats {
            key: self.key.clone(),
            url: self.url.clone(),
            weight: self.weight,
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            healthy: self.healthy.load(Ordering::Relaxed),
            in_service: !draining && self.in_service(now),
            in_flight: self.in_flight(),
            draining,
        }
    }
}

/// When an endpoint is taken out of service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Ejection {
    /// Failed requests in a row.
    pub(super) failures: u32,
    /// For how long.
    pub(super) duration: Duration,
    /// Whether 5xx answers count as failures.
    pub(super) server_errors: bool,
}

impl Ejection {
    /// Whether an answer with `status` counts as a failure.
    pub(super) fn fails(&self, status: http::StatusCode) -> bool {
        self.server_errors && status.is_server_error()
    }
}

/// How an [`Upstream`](super::Upstream) of several endpoints chooses one
/// for each request ([`UpstreamBuilder::balance`](super::UpstreamBuilder::balance)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Balance {
    /// Each endpoint in service in turn, as often as its weight says,
    /// interleaved (the default).
    #[default]
    RoundRobin,
    /// The endpoint in service with the fewest requests in flight for its
    /// weight (sent, and whose response has not ended: a long stream
    /// counts until its last byte), ties taken in turn. For servers whose
    /// requests take very different times, as model servers' generations
    /// do.
    LeastRequests,
}

/// The longest turn order: past it, weights are scaled down (each keeps
/// at least one turn).
const MAX_TURNS: u64 = 4096;

/// A snapshot of an upstream's endpoints: in the order they joined, and
/// the turn order of round-robin (indices into `list`, each endpoint as
/// often as its weight says, interleaved).
struct Set {
    list: Box<[Arc<Endpoint>]>,
    turns: Box<[u32]>,
}

impl Set {
    fn new(list: Vec<Arc<Endpoint>>) -> Self {
        let weights: Vec<u32> = list.iter().map(|e| e.weight).collect();
        Self {
            turns: turns(&weights).into_boxed_slice(),
            list: list.into_boxed_slice(),
        }
    }
}

/// The turn order for `weights`: smooth weighted round-robin (nginx's),
/// so that a heavy endpoint's turns are spread out, not bunched; equal
/// weights take one turn each, in order.
fn turns(weights: &[u32]) -> Vec<u32> {
    let n = weights.len();
    if weights.iter().all(|&w| w == weights[0]) {
        return (0..n as u32).collect();
    }
    let gcd = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x) / gcd.max(1)).collect();
    let total: u64 = w.iter().sum();
    if total > MAX_TURNS {
        for x in &mut w {
            *x = (*x * MAX_TURNS / total).max(1);
        }
    }
    let total: u64 = w.iter().sum();
    let total_i = i64::try_from(total).unwrap_or(i64::MAX);
    let mut current = vec![0i64; n];
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        let mut best = 0;
        for i in 0..n {
            current[i] += i64::try_from(w[i]).unwrap_or(i64::MAX);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total_i;
        order.push(best as u32);
    }
    order
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The endpoints of one upstream, as they change.
pub(super) struct Endpoints {
    set: ArcSwap<Set>,
    /// How many endpoints `set` holds, read without loading it.
    len: AtomicUsize,
    /// Endpoints that left the set while requests to them were in flight.
    draining: Mutex<Vec<Arc<Endpoint>>>,
    /// Whether `draining` may hold any (read without the lock).
    any_draining: AtomicBool,
    /// Changes, one at a time (each reads the set and publishes the next).
    write: Mutex<()>,
    next: AtomicUsize,
    ejection: Ejection,
    balance: Balance,
    origin: Instant,
    /// Told of each change of the set (weight sync).
    pub(super) listeners: crate::signal::Listeners,
}

/// What a change to an upstream's set did.
#[derive(Default)]
pub(super) struct Changed {
    /// Keys that joined (or whose address or weight changed).
    pub(super) added: Vec<String>,
    /// Endpoints that left, to drain.
    pub(super) removed: Vec<Arc<Endpoint>>,
}

impl Endpoints {
    pub(super) fn new(list: Vec<Endpoint>, ejection: Ejection, balance: Balance) -> Self {
        let list: Vec<Arc<Endpoint>> = list.into_iter().map(Arc::new).collect();
        Self {
            len: AtomicUsize::new(list.len()),
            set: ArcSwap::from_pointee(Set::new(list)),
            draining: Mutex::new(Vec::new()),
            any_draining: AtomicBool::new(false),
            write: Mutex::new(()),
            next: AtomicUsize::new(0),
            ejection,
            balance,
            origin: Instant::now(),
            listeners: crate::signal::Listeners::default(),
        }
    }

    /// How many endpoints are in the set.
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// The endpoints in the set now.
    pub(super) fn list(&self) -> Vec<Arc<Endpoint>> {
        self.set.load().list.to_vec()
    }

    pub(super) fn ejection(&self) -> &Ejection {
        &self.ejection
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The endpoint for the next request: the next in turn among those in
    /// service; when none is, the one that returns first; `None` when the
    /// set is empty.
    #[inline]
    pub(super) fn pick(&self) -> Option<Arc<Endpoint>> {
        let set = self.set.load();
        match set.list.len() {
            0 => return None,
            1 => return Some(Arc::clone(&set.list[0])),
            _ => {}
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % set.turns.len();
        let i = match self.balance {
            Balance::RoundRobin => self.first_in_service(&set, start, None),
            Balance::LeastRequests => self.least_requests(&set, start),
        };
        Some(Arc::clone(&set.list[i]))
    }

    /// The index of the endpoint in service with the fewest requests in
    /// flight for its weight, the first from turn `start` on among
    /// equals; with none in service, as
    /// [`first_in_service`](Self::first_in_service) says.
    fn least_requests(&self, set: &Set, start: usize) -> usize {
        let n = set.list.len();
        let now = self.now();
        let first = set.turns[start] as usize;
        let mut best: Option<(u64, u64, usize)> = None;
        for i in (first..n).chain(0..first) {
            let e = &set.list[i];
            if !e.in_service(now) {
                continue;
            }
            let (load, weight) = (e.in_flight(), u64::from(e.weight));
            // load / weight < best_load / best_weight, without division.
            if best.is_none_or(|(l, w, _)| load * w < l * weight) {
                best = Some((load, weight, i));
            }
        }
        best.map_or_else(|| self.first_in_service(set, start, None), |(_, _, i)| i)
    }

    /// Another endpoint than `tried`, in service, for a request that could
    /// not reach it; `None` when there is none.
    pub(super) fn other_than(&self, tried: &Endpoint) -> Option<Arc<Endpoint>> {
        let set = self.set.load();
        if set.list.len() < 2 {
            return None;
        }
        // From the turn after the tried endpoint's (its first), so that a
        // retry takes no one's turn.
        let start = set
            .list
            .iter()
            .position(|e| std::ptr::eq(&**e, tried))
            .and_then(|i| set.turns.iter().position(|&t| t as usize == i))
            .map_or(0, |t| (t + 1) % set.turns.len());
        let i = self.first_in_service(&set, start, Some(tried));
        let other = &set.list[i];
        (!std::ptr::eq(&**other, tried) && other.in_service(self.now())).then(|| Arc::clone(other))
    }

    /// The index of the first endpoint in service from turn `start` on;
    /// with none, the healthy one that returns first; with none healthy,
    /// the one whose turn it is (every server failing its health checks:
    /// trying is all that is left).
    fn first_in_service(&self, set: &Set, start: usize, skip: Option<&Endpoint>) -> usize {
        let turns = set.turns.len();
        let now = self.now();
        let mut soonest: Option<(u64, usize)> = None;
        for t in (start..turns).chain(0..start) {
            let i = set.turns[t] as usize;
            let e = &set.list[i];
            if skip.is_some_and(|s| std::ptr::eq(&**e, s)) {
                continue;
            }
            if e.in_service(now) {
                return i;
            }
            let until = e.out_until.load(Ordering::Relaxed);
            if e.healthy.load(Ordering::Relaxed) && soonest.is_none_or(|(u, _)| until < u) {
                soonest = Some((until, i));
            }
        }
        soonest.map_or(set.turns[start] as usize, |(_, i)| i)
    }

    /// A request was sent to `e`.
    #[inline]
    pub(super) fn sent(&self, e: &Endpoint) {
        e.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// How the request sent to `e` went: `false` when the endpoint could
    /// not be reached, failed the exchange or did not answer in time.
    pub(super) fn record(&self, e: &Endpoint, ok: bool) {
        if ok {
            if e.failed.load(Ordering::Relaxed) != 0 {
                e.failed.store(0, Ordering::Relaxed);
            }
            return;
        }
        e.failures.fetch_add(1, Ordering::Relaxed);
        let failed = e.failed.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        // One endpoint alone is never taken out: there is nowhere else.
        if self.len() > 1 && failed >= self.ejection.failures.max(1) {
            let now = self.now();
            if e.in_service(now) {
                let duration = u64::try_from(self.ejection.duration.as_nanos()).unwrap_or(u64::MAX);
                e.out_until
                    .store(now.saturating_add(duration).max(1), Ordering::Relaxed);
                e.ejections.fetch_add(1, Ordering::Relaxed);
            }
            // Back in service, its first failure takes it out again.
            e.failed
                .store(self.ejection.failures.saturating_sub(1), Ordering::Relaxed);
        }
    }

    /// Each endpoint's counters and state: the set's in order, then those
    /// draining.
    pub(super) fn stats(&self) -> Vec<EndpointStats> {
        let now = self.now();
        let mut stats: Vec<EndpointStats> = self
            .set
            .load()
            .list
            .iter()
            .map(|e| e.stats(now, false))
            .collect();
        stats.extend(self.draining().iter().map(|e| e.stats(now, true)));
        stats
    }

    /// Requests in flight on every endpoint, those draining included.
    pub(super) fn in_flight(&self) -> u64 {
        let mut sum: u64 = self.set.load().list.iter().map(|e| e.in_flight()).sum();
        if self.any_draining.load(Ordering::Relaxed) {
            sum += self.draining().iter().map(|e| e.in_flight()).sum::<u64>();
        }
        sum
    }

    /// The endpoints still draining, after letting go of those drained.
    pub(super) fn draining(&self) -> Vec<Arc<Endpoint>> {
        let mut draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
        draining.retain(|e| e.in_flight() > 0);
        self.any_draining
            .store(!draining.is_empty(), Ordering::Relaxed);
        draining.clone()
    }

    /// Changes the set with `change` (given the current list, returns the
    /// next), publishes it, and sends those that left to drain.
    fn change(&self, change: impl FnOnce(&[Arc<Endpoint>]) -> Vec<Arc<Endpoint>>) -> Changed {
        let one = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.set.load_full();
        let next = change(&current.list);
        let mut changed = Changed::default();
        for e in next.iter() {
            if !current.list.iter().any(|c| Arc::ptr_eq(c, e)) {
                changed.added.push(e.key.clone());
            }
        }
        for e in current.list.iter() {
            if !next.iter().any(|n| Arc::ptr_eq(n, e)) {
                e.left.store(true, Ordering::Relaxed);
                changed.removed.push(Arc::clone(e));
            }
        }
        if changed.added.is_empty() && changed.removed.is_empty() {
            return changed;
        }
        self.len.store(next.len(), Ordering::Relaxed);
        self.set.store(Arc::new(Set::new(next)));
        let mut draining = self.draining.lock().unwrap_or_else(|e| e.into_inner());
        draining.extend(changed.removed.iter().cloned());
        draining.retain(|e| e.in_flight() > 0);
        self.any_draining
            .store(!draining.is_empty(), Ordering::Relaxed);
        drop((draining, one));
        self.listeners.fire();
        changed
    }

    /// The set as `(key, spec)` pairs, in order: what
    /// [`set_endpoints`](super::Upstream::set_endpoints) would make it
    /// again.
    pub(super) fn specs(&self) -> Vec<(String, super::EndpointSpec)> {
        self.set
            .load()
            .list
            .iter()
            .map(|e| {
                let authority = e.authority.as_str();
                let host = e.host.to_str().ok().filter(|h| *h != authority);
                let mut spec = super::EndpointSpec::new(authority).weight(e.weight);
                if let Some(host) = host {
                    spec = spec.host(host);
                }
                (e.key.clone(), spec)
            })
            .collect()
    }

    /// Adds `endpoint`, or replaces the one of the same key unless it is
    /// the same (same address, `Host` and weight: then the one in the set
    /// stays, with its counters, health and connections).
    pub(super) fn insert(&self, endpoint: Endpoint) -> Changed {
        self.change(|list| {
            let mut next = list.to_vec();
            match next.iter().position(|e| e.key == endpoint.key) {
                Some(i) if same(&next[i], &endpoint) => {}
                Some(i) => next[i] = Arc::new(endpoint),
                None => next.push(Arc::new(endpoint)),
            }
            next
        })
    }

    /// Takes the endpoint of `key` out of the set: it takes no new
    /// requests, and drains.
    pub(super) fn remove(&self, key: &str) -> Changed {
        self.change(|list| list.iter().filter(|e| e.key != key).cloned().collect())
    }

    /// Makes the set `endpoints` (in that order): those already in it
    /// (same key, address, `Host` and weight) stay as they are, the others
    /// join, and those not in `endpoints` leave and drain.
    pub(super) fn replace(&self, endpoints: Vec<Endpoint>) -> Changed {
        self.change(|list| {
            endpoints
                .into_iter()
                .map(|new| {
                    list.iter()
                        .find(|e| e.key == new.key && same(e, &new))
                        .cloned()
                        .unwrap_or_else(|| Arc::new(new))
                })
                .collect()
        })
    }
}

/// Whether `a` and `b` are the same server, as requests see it.
fn same(a: &Endpoint, b: &Endpoint) -> bool {
    a.authority == b.authority && a.host == b.host && a.weight == b.weight && a.url == b.url
}

/// The counters and state of one endpoint of an
/// [`Upstream`](super::Upstream).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// What names it in its upstream: the URL given to the builder, or
    /// the key it was [inserted](super::Upstream::insert_endpoint) with.
    pub key: String,
    /// Its URL.
    pub url: String,
    /// Its share of the requests, relative to the others' weights.
    pub weight: u32,
    /// Requests sent to it (a retry on another endpoint counts there too).
    pub requests: u64,
    /// Requests it failed: not reached, the exchange broken, or no answer
    /// within the response timeout; and 5xx answers, with
    /// [`eject_on_5xx`](super::UpstreamBuilder::eject_on_5xx).
    pub failures: u64,
    /// Times it was taken out of service.
    pub ejections: u64,
    /// Whether it passes its health checks (always, without them).
    pub healthy: bool,
    /// Whether it takes requests now: in the set, healthy, and not taken
    /// out for failing requests.
    pub in_service: bool,
    /// Requests sent to it whose response has not ended yet.
    pub in_flight: u64,
    /// Whether it has left the set and its requests in flight are
    /// finishing (it takes no new ones; it is no longer listed once they
    /// have).
    pub draining: bool,
}

/// An endpoint that has left its upstream's set
/// ([`Upstream::remove_endpoint`](super::Upstream::remove_endpoint), or
/// its discovery source no longer listing it): it takes no new requests,
/// and those in flight finish. [`drained`](Self::drained) says when the
/// last has.
#[derive(Clone)]
pub struct Draining {
    key: String,
    url: String,
    in_flight: Arc<AtomicU64>,
}

impl Draining {
    pub(super) fn new(e: &Endpoint) -> Self {
        Self {
            key: e.key.clone(),
            url: e.url.clone(),
            in_flight: Arc::clone(&e.in_flight),
        }
    }

    /// The key it had in the set.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its requests still in flight (until their response bodies end).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether its last request in flight has finished.
    pub fn is_drained(&self) -> bool {
        self.in_flight() == 0
    }

    /// Waits until its last request in flight has finished (looking every
    /// 10 ms, on Tokio's clock). A long stream is waited for to its end:
    /// put a timeout around this to bound the wait.
    pub async fn drained(&self) {
        while !self.is_drained() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl std::fmt::Debug for Draining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Draining")
            .field("key", &self.key)
            .field("url", &self.url)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Endpoints {
        fn at(&self, i: usize) -> Arc<Endpoint> {
            Arc::clone(&self.list()[i])
        }
        fn index(&self, e: &Endpoint) -> usize {
            self.list()
                .iter()
                .position(|x| std::ptr::eq(&**x, e))
                .expect("in the set")
        }
        fn pick_i(&self) -> usize {
            let e = self.pick().expect("an endpoint");
            self.index(&e)
        }
        fn record_i(&self, i: usize, ok: bool) {
            self.record(&self.at(i), ok);
        }
        fn other_i(&self, i: usize) -> Option<usize> {
            self.other_than(&self.at(i)).map(|e| self.index(&e))
        }
    }

    fn set(n: usize, failures: u32, secs: u64) -> Endpoints {
        let list = (0..n).map(like_set).collect();
        Endpoints::new(
            list,
            Ejection {
                failures,
                duration: Duration::from_secs(secs),
                server_errors: false,
            },
            Balance::RoundRobin,
        )
    }

    fn endpoint(key: &str, weight: u32) -> Endpoint {
        let authority: Authority = format!("{key}:80").parse().unwrap();
        let host = HeaderValue::from_str(authority.as_str()).unwrap();
        Endpoint::new(
            key.to_owned(),
            format!("http://{authority}"),
            authority,
            host,
            weight,
        )
    }

    /// Endpoint `i` as [`set`] makes it.
    fn like_set(i: usize) -> Endpoint {
        let authority: Authority = format!("10.0.0.{i}:80").parse().unwrap();
        let host = HeaderValue::from_str(authority.as_str()).unwrap();
        let url = format!("http://{authority}");
        Endpoint::new(url.clone(), url, authority, host, 1)
    }

    #[test]
    fn turns_follow_the_weights_interleaved() {
        assert_eq!(turns(&[1, 1, 1]), [0, 1, 2]);
        assert_eq!(turns(&[2, 2]), [0, 1]);
        // 5:1:1 as nginx spreads it: the heavy one never five in a row.
        assert_eq!(turns(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(turns(&[6, 3]), [0, 1, 0]);
        // Past the longest order, scaled down; each keeps a turn.
        let t = turns(&[1_000_000, 1]);
        assert!(t.len() as u64 <= MAX_TURNS + 1);
        assert_eq!(t.iter().filter(|&&i| i == 1).count(), 1);
    }

    proptest::proptest! {
        /// Each endpoint takes turns in proportion to its weight (exactly,
        /// when the order is short enough), and never twice in a row while
        /// another has at least as much weight.
        #[test]
        fn turns_are_proportional(weights in proptest::collection::vec(1..50u32, 1..8)) {
            let t = turns(&weights);
            let g = weights.iter().fold(0u64, |g, &w| gcd(g, u64::from(w)));
            let equal = weights.iter().all(|&w| w == weights[0]);
            for (i, &w) in weights.iter().enumerate() {
                let count = t.iter().filter(|&&x| x as usize == i).count() as u64;
                let want = if equal { 1 } else { u64::from(w) / g };
                proptest::prop_assert_eq!(count, want);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_round_robin_picks_by_weight() {
        let e = Endpoints::new(
            vec![endpoint("a", 3), endpoint("b", 1)],
            Ejection {
                failures: 1,
                duration: Duration::from_secs(10),
                server_errors: false,
            },
            Balance::RoundRobin,
        );
        let picks: Vec<usize> = (0..8).map(|_| e.pick_i()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        // `a` out: every pick is `b`.
        e.record_i(0, false);
        assert!((0..5).all(|_| e.pick_i() == 1));
    }

    #[tokio::test(start_paused = true)]
    async fn changes_keep_what_stays_and_drain_what_leaves() {
        let e = set(2, 1, 10);
        let first = e.at(0);
        e.sent(&first);
        e.record(&e.at(1), false); // 1 is out of service
        // The same endpoint again: nothing changes.
        let again = e.insert(like_set(0));
        assert!(again.added.is_empty() && again.removed.is_empty());
        assert_eq!(e.len(), 2);
        let c = e.insert(endpoint("x", 1));
        assert_eq!((c.added, c.removed.len()), (vec!["x".to_owned()], 0));
        assert_eq!(e.len(), 3);
        // Replace: the kept one is the same, counters and all.
        let list = vec![endpoint("x", 1), like_set(0)];
        let x = e.at(2);
        let guard = crate::body::InFlightGuard::new(&e.at(1).in_flight);
        let c = e.replace(list);
        assert!(c.added.is_empty());
        assert_eq!(c.removed.len(), 1);
        assert!(Arc::ptr_eq(&e.at(0), &x));
        assert!(Arc::ptr_eq(&e.at(1), &first));
        assert_eq!(e.stats()[1].requests, 1);
        // The one that left: draining while its request is in flight, never
        // picked, its connections not kept; gone once it has finished.
        let stats = e.stats();
        assert_eq!(stats.len(), 3);
        assert!(stats[2].draining && !stats[2].in_service && stats[2].in_flight == 1);
        assert!(c.removed[0].left.load(Ordering::Relaxed));
        assert_eq!(e.in_flight(), 1);
        for _ in 0..6 {
            let p = e.pick().unwrap();
            assert!(!Arc::ptr_eq(&p, &c.removed[0]));
        }
        let draining = Draining::new(&c.removed[0]);
        assert!(!draining.is_drained());
        drop(guard);
        tokio::time::timeout(Duration::from_secs(1), draining.drained())
            .await
            .expect("drained");
        assert_eq!(e.stats().len(), 2);
        assert_eq!(e.in_flight(), 0);
        // A weight change replaces the endpoint.
        let c = e.insert(endpoint("x", 5));
        assert_eq!((c.added.len(), c.removed.len()), (1, 1));
        // Everything removed: no pick.
        let c = e.replace(Vec::new());
        assert_eq!(c.removed.len(), 2);
        assert_eq!(e.len(), 0);
        assert!(e.pick().is_none());
        assert!(e.other_than(&x).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_skips_endpoints_out_of_service_until_they_return() {
        let e = set(3, 2, 10);
        let picks: Vec<usize> = (0..6).map(|_| e.pick_i()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);

        // Two failures in a row take 1 out; a success in between would not.
        e.record_i(1, false);
        e.record_i(1, true);
        e.record_i(1, false);
        assert!(e.stats()[1].in_service);
        e.record_i(1, false);
        assert!(!e.stats()[1].in_service);
        let picks: Vec<usize> = (0..4).map(|_| e.pick_i()).collect();
        assert_eq!(picks, [0, 2, 2, 0]);
        assert_eq!(e.other_i(0), Some(2));
        assert_eq!(e.other_i(2), Some(0));

        // Back after 10 s; its first failure then takes it out again.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(e.stats()[1].in_service);
        assert_eq!(e.other_i(0), Some(1));
        e.record_i(1, false);
        assert!(!e.stats()[1].in_service);
        let s = &e.stats()[1];
        assert_eq!((s.failures, s.ejections), (4, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_endpoint_out_the_first_to_return_is_used() {
        let e = set(2, 1, 10);
        e.record_i(1, false);
        tokio::time::advance(Duration::from_secs(3)).await;
        e.record_i(0, false);
        // 1 returns at 10 s, 0 at 13 s.
        assert_eq!(e.pick_i(), 1);
        assert_eq!(e.pick_i(), 1);
        assert_eq!(e.other_i(1), None);
    }

    #[tokio::test(start_paused = true)]
    async fn health_verdicts_need_streaks_and_an_all_unhealthy_set_keeps_serving() {
        let e = set(2, 3, 10);
        let first = e.at(0);
        // Two failed checks in a row take it out (a pass in between resets).
        first.checked(false, 2, 3);
        first.checked(true, 2, 3);
        first.checked(false, 2, 3);
        assert!(e.stats()[0].healthy);
        first.checked(false, 2, 3);
        assert!(!e.stats()[0].healthy && !e.stats()[0].in_service);
        assert_eq!((e.pick_i(), e.pick_i()), (1, 1));
        // Unhealthy everywhere: requests still go round.
        e.at(1).checked(false, 1, 1);
        assert_eq!((e.pick_i(), e.pick_i()), (0, 1));
        // Three passes in a row bring it back.
        for _ in 0..2 {
            first.checked(true, 2, 3);
        }
        assert!(!e.stats()[0].healthy);
        first.checked(true, 2, 3);
        assert!(e.stats()[0].healthy);
        assert_eq!((e.pick_i(), e.pick_i()), (0, 0));
    }

    /// What happens to a set of endpoints, in a proptest.
    #[derive(Clone, Debug)]
    enum Op {
        Request(usize, bool),
        Check(usize, bool),
        Advance(u64),
        Insert(usize, u32),
        Remove(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..4usize, any::<bool>()).prop_map(|(i, ok)| Op::Request(i, ok)),
            (0..4usize, any::<bool>()).prop_map(|(i, ok)| Op::Check(i, ok)),
            (0..3_000u64).prop_map(Op::Advance),
            (0..6usize, 1..4u32).prop_map(|(k, w)| Op::Insert(k, w)),
            (0..6usize).prop_map(Op::Remove),
        ]
    }

    proptest::proptest! {
        /// Whatever failed, was checked or waited: a pick is in service
        /// whenever one endpoint is, and a retry goes elsewhere, to one in
        /// service.
        #[test]
        fn picks_are_in_service_when_any_is(
            n in 1..=4usize,
            failures in 1..4u32,
            ops in proptest::collection::vec(op(), 0..60),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async {
                let e = set(n, failures, 1);
                let mut changed = false;
                for op in ops {
                    let n = e.len();
                    match op {
                        Op::Request(i, ok) if n > 0 => e.record_i(i % n, ok),
                        Op::Check(i, ok) if n > 0 => e.at(i % n).checked(ok, 2, 2),
                        Op::Request(..) | Op::Check(..) => {}
                        Op::Advance(ms) => {
                            tokio::time::advance(Duration::from_millis(ms)).await;
                        }
                        Op::Insert(k, w) => {
                            changed = true;
                            e.insert(endpoint(&format!("k{k}"), w));
                        }
                        Op::Remove(k) => {
                            changed = true;
                            e.remove(&format!("k{k}"));
                        }
                    }
                    let n = e.len();
                    let stats = e.stats();
                    // Nothing in flight: nothing drains.
                    assert_eq!(stats.len(), n);
                    if n == 0 {
                        assert!(e.pick().is_none());
                        continue;
                    }
                    let any = stats.iter().any(|s| s.in_service);
                    let pick = e.pick_i();
                    assert!(pick < n);
                    if any {
                        assert!(stats[pick].in_service, "{pick} in {stats:?}");
                    }
                    if let Some(other) = e.other_i(pick) {
                        assert_ne!(other, pick);
                        assert!(stats[other].in_service, "{other} in {stats:?}");
                    }
                    // One endpoint alone is never ejected.
                    if n == 1 && !changed {
                        assert_eq!(stats[0].ejections, 0);
                    }
                }
            });
        }
    }

    #[tokio::test(start_paused = true)]
    async fn least_requests_takes_the_least_loaded_in_service_and_equals_in_turn() {
        let mut e = set(3, 1, 10);
        e.balance = Balance::LeastRequests;
        let load = |i: usize, n: u64| e.at(i).in_flight.store(n, Ordering::Relaxed);
        // All equal: in turn.
        assert_eq!((e.pick_i(), e.pick_i(), e.pick_i()), (0, 1, 2));
        load(0, 2);
        load(1, 1);
        load(2, 5);
        assert_eq!((e.pick_i(), e.pick_i()), (1, 1));
        load(1, 3);
        assert_eq!(e.pick_i(), 0);
        // The least loaded is out of service: the next least.
        load(2, 0);
        e.record_i(2, false);
        assert_eq!(e.pick_i(), 0);
        // None in service: as round-robin would.
        e.record_i(0, false);
        e.record_i(1, false);
        assert!(e.stats().iter().all(|s| !s.in_service));
        assert!(e.pick_i() < 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_endpoint_is_never_taken_out() {
        let e = set(1, 1, 10);
        for _ in 0..5 {
            e.record_i(0, false);
        }
        assert_eq!(e.pick_i(), 0);
        assert_eq!(e.other_i(0), None);
        assert!(e.stats()[0].in_service);
        assert_eq!(e.stats()[0].failures, 5);
    }
}
