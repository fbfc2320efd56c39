//! The servers behind one [`Upstream`](super::Upstream): round-robin
//! among those in service, passive health (an endpoint that fails
//! requests in a row is taken out of service for a while) and the verdicts
//! of active health checks.
//!
//! Written here rather than with `tower::balance`: that balances over
//! services discovered as a stream and measures load with its own
//! wrappers, while here the endpoints share one connection pool (the pool
//! keys connections by authority) and only the request's URI changes; the
//! pick is one atomic add.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderValue;
use http::uri::Authority;
use tokio::time::Instant;

/// One server of an upstream.
pub(super) struct Endpoint {
    pub(super) url: String,
    pub(super) authority: Authority,
    /// The `Host` header for it.
    pub(super) host: HeaderValue,
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
}

impl Endpoint {
    pub(super) fn new(url: String, authority: Authority, host: HeaderValue) -> Self {
        Self {
            url,
            authority,
            host,
            failed: AtomicU32::new(0),
            out_until: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            in_flight: Arc::new(AtomicU64::new(0)),
        }
    }

    fn in_service(&self, now: u64) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.out_until.load(Ordering::Relaxed) <= now
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
    /// Each endpoint in service in turn (the default).
    #[default]
    RoundRobin,
    /// The endpoint in service with the fewest requests in flight (sent,
    /// and whose response has not ended: a long stream counts until its
    /// last byte), ties taken in turn. For servers whose requests take
    /// very different times, as model servers' generations do.
    LeastRequests,
}

/// The endpoints of one upstream, in the order given.
pub(super) struct Endpoints {
    list: Box<[Endpoint]>,
    next: AtomicUsize,
    ejection: Ejection,
    balance: Balance,
    origin: Instant,
}

impl Endpoints {
    pub(super) fn new(list: Vec<Endpoint>, ejection: Ejection, balance: Balance) -> Self {
        Self {
            list: list.into_boxed_slice(),
            next: AtomicUsize::new(0),
            ejection,
            balance,
            origin: Instant::now(),
        }
    }

    pub(super) fn get(&self, index: usize) -> &Endpoint {
        &self.list[index.min(self.list.len() - 1)]
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn ejection(&self) -> &Ejection {
        &self.ejection
    }

    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The endpoint for the next request: the next in turn among those in
    /// service; when none is, the one that returns first.
    #[inline]
    pub(super) fn pick(&self) -> usize {
        let n = self.list.len();
        if n == 1 {
            return 0;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        match self.balance {
            Balance::RoundRobin => self.first_in_service(start, None),
            Balance::LeastRequests => self.least_requests(start),
        }
    }

    /// The endpoint in service with the fewest requests in flight, the
    /// first from `start` on among equals; with none in service, as
    /// [`first_in_service`](Self::first_in_service) says.
    fn least_requests(&self, start: usize) -> usize {
        let n = self.list.len();
        let now = self.now();
        let mut best: Option<(u64, usize)> = None;
        for i in (start..n).chain(0..start) {
            let e = &self.list[i];
            if !e.in_service(now) {
                continue;
            }
            let load = e.in_flight.load(Ordering::Relaxed);
            if best.is_none_or(|(b, _)| load < b) {
                best = Some((load, i));
            }
        }
        best.map_or_else(|| self.first_in_service(start, None), |(_, i)| i)
    }

    /// Another endpoint than `tried`, in service, for a request that could
    /// not reach it; `None` when there is none.
    pub(super) fn other_than(&self, tried: usize) -> Option<usize> {
        let n = self.list.len();
        if n == 1 {
            return None;
        }
        let other = self.first_in_service((tried + 1) % n, Some(tried));
        (other != tried && self.list[other].in_service(self.now())).then_some(other)
    }

    /// The first endpoint in service from `start` on; with none, the
    /// healthy one that returns first; with none healthy, `start` (every
    /// server failing its health checks: trying is all that is left).
    fn first_in_service(&self, start: usize, skip: Option<usize>) -> usize {
        let n = self.list.len();
        let now = self.now();
        let mut soonest: Option<(u64, usize)> = None;
        for i in (start..n).chain(0..start) {
            if Some(i) == skip {
                continue;
            }
            let e = &self.list[i];
            if e.in_service(now) {
                return i;
            }
            let until = e.out_until.load(Ordering::Relaxed);
            if e.healthy.load(Ordering::Relaxed) && soonest.is_none_or(|(u, _)| until < u) {
                soonest = Some((until, i));
            }
        }
        soonest.map_or(start, |(_, i)| i)
    }

    /// A request was sent to `index`.
    #[inline]
    pub(super) fn sent(&self, index: usize) {
        self.get(index).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// How the request sent to `index` went: `false` when the endpoint
    /// could not be reached, failed the exchange or did not answer in time.
    pub(super) fn record(&self, index: usize, ok: bool) {
        let e = self.get(index);
        if ok {
            if e.failed.load(Ordering::Relaxed) != 0 {
                e.failed.store(0, Ordering::Relaxed);
            }
            return;
        }
        e.failures.fetch_add(1, Ordering::Relaxed);
        let failed = e.failed.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        // One endpoint alone is never taken out: there is nowhere else.
        if self.list.len() > 1 && failed >= self.ejection.failures.max(1) {
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

    /// Each endpoint's counters and state.
    pub(super) fn stats(&self) -> Vec<EndpointStats> {
        let now = self.now();
        self.list
            .iter()
            .map(|e| EndpointStats {
                url: e.url.clone(),
                requests: e.requests.load(Ordering::Relaxed),
                failures: e.failures.load(Ordering::Relaxed),
                ejections: e.ejections.load(Ordering::Relaxed),
                healthy: e.healthy.load(Ordering::Relaxed),
                in_service: e.in_service(now),
                in_flight: e.in_flight.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// The counters and state of one endpoint of an
/// [`Upstream`](super::Upstream).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Its URL.
    pub url: String,
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
    /// Whether it takes requests now: healthy, and not taken out for
    /// failing requests.
    pub in_service: bool,
    /// Requests sent to it whose response has not ended yet.
    pub in_flight: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: usize, failures: u32, secs: u64) -> Endpoints {
        let list = (0..n)
            .map(|i| {
                let authority: Authority = format!("10.0.0.{i}:80").parse().unwrap();
                let host = HeaderValue::from_str(authority.as_str()).unwrap();
                Endpoint::new(format!("http://{authority}"), authority, host)
            })
            .collect();
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

    #[tokio::test(start_paused = true)]
    async fn round_robin_skips_endpoints_out_of_service_until_they_return() {
        let e = set(3, 2, 10);
        let picks: Vec<usize> = (0..6).map(|_| e.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);

        // Two failures in a row take 1 out; a success in between would not.
        e.record(1, false);
        e.record(1, true);
        e.record(1, false);
        assert!(e.stats()[1].in_service);
        e.record(1, false);
        assert!(!e.stats()[1].in_service);
        let picks: Vec<usize> = (0..4).map(|_| e.pick()).collect();
        assert_eq!(picks, [0, 2, 2, 0]);
        assert_eq!(e.other_than(0), Some(2));
        assert_eq!(e.other_than(2), Some(0));

        // Back after 10 s; its first failure then takes it out again.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(e.stats()[1].in_service);
        assert_eq!(e.other_than(0), Some(1));
        e.record(1, false);
        assert!(!e.stats()[1].in_service);
        let s = &e.stats()[1];
        assert_eq!((s.failures, s.ejections), (4, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn with_every_endpoint_out_the_first_to_return_is_used() {
        let e = set(2, 1, 10);
        e.record(1, false);
        tokio::time::advance(Duration::from_secs(3)).await;
        e.record(0, false);
        // 1 returns at 10 s, 0 at 13 s.
        assert_eq!(e.pick(), 1);
        assert_eq!(e.pick(), 1);
        assert_eq!(e.other_than(1), None);
    }

    #[tokio::test(start_paused = true)]
    async fn health_verdicts_need_streaks_and_an_all_unhealthy_set_keeps_serving() {
        let e = set(2, 3, 10);
        let first = e.get(0);
        // Two failed checks in a row take it out (a pass in between resets).
        first.checked(false, 2, 3);
        first.checked(true, 2, 3);
        first.checked(false, 2, 3);
        assert!(e.stats()[0].healthy);
        first.checked(false, 2, 3);
        assert!(!e.stats()[0].healthy && !e.stats()[0].in_service);
        assert_eq!((e.pick(), e.pick()), (1, 1));
        // Unhealthy everywhere: requests still go round.
        e.get(1).checked(false, 1, 1);
        assert_eq!((e.pick(), e.pick()), (0, 1));
        // Three passes in a row bring it back.
        for _ in 0..2 {
            first.checked(true, 2, 3);
        }
        assert!(!e.stats()[0].healthy);
        first.checked(true, 2, 3);
        assert!(e.stats()[0].healthy);
        assert_eq!((e.pick(), e.pick()), (0, 0));
    }

    /// What happens to a set of endpoints, in a proptest.
    #[derive(Clone, Debug)]
    enum Op {
        Request(usize, bool),
        Check(usize, bool),
        Advance(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0..4usize, any::<bool>()).prop_map(|(i, ok)| Op::Request(i, ok)),
            (0..4usize, any::<bool>()).prop_map(|(i, ok)| Op::Check(i, ok)),
            (0..3_000u64).prop_map(Op::Advance),
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
                for op in ops {
                    match op {
                        Op::Request(i, ok) => e.record(i % n, ok),
                        Op::Check(i, ok) => e.get(i % n).checked(ok, 2, 2),
                        Op::Advance(ms) => {
                            tokio::time::advance(Duration::from_millis(ms)).await;
                        }
                    }
                    let stats = e.stats();
                    let any = stats.iter().any(|s| s.in_service);
                    let pick = e.pick();
                    assert!(pick < n);
                    if any {
                        assert!(stats[pick].in_service, "{pick} in {stats:?}");
                    }
                    if let Some(other) = e.other_than(pick) {
                        assert_ne!(other, pick);
                        assert!(stats[other].in_service, "{other} in {stats:?}");
                    }
                    // One endpoint alone is never ejected.
                    if n == 1 {
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
        let load = |i: usize, n: u64| e.get(i).in_flight.store(n, Ordering::Relaxed);
        // All equal: in turn.
        assert_eq!((e.pick(), e.pick(), e.pick()), (0, 1, 2));
        load(0, 2);
        load(1, 1);
        load(2, 5);
        assert_eq!((e.pick(), e.pick()), (1, 1));
        load(1, 3);
        assert_eq!(e.pick(), 0);
        // The least loaded is out of service: the next least.
        load(2, 0);
        e.record(2, false);
        assert_eq!(e.pick(), 0);
        // None in service: as round-robin would.
        e.record(0, false);
        e.record(1, false);
        assert!(e.stats().iter().all(|s| !s.in_service));
        assert!(e.pick() < 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_endpoint_is_never_taken_out() {
        let e = set(1, 1, 10);
        for _ in 0..5 {
            e.record(0, false);
        }
        assert_eq!(e.pick(), 0);
        assert_eq!(e.other_than(0), None);
        assert!(e.stats()[0].in_service);
        assert_eq!(e.stats()[0].failures, 5);
    }
}
