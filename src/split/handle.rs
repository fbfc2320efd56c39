//! The shared state of a split and the [`SplitHandle`] that changes it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use serde::Serialize;

use super::weights::{Live, Snapshot, Weights};
use super::{SplitError, Target};
use crate::metrics::{HistogramSnapshot, LatencyHistogram};
use crate::ratelimit::Clock;

/// How many earlier weight sets `rollback` can walk back through.
const HISTORY: usize = 32;

// === impl Shared ===

/// State shared by every clone of a split and its handles.
///
/// The weights live in an `ArcSwap` snapshot replaced whole on each change;
/// what must survive a change (counters, in-flight counts, waiters) lives
/// beside it.
pub(crate) struct Shared {
    pub(crate) targets: Box<[TargetMeta]>,
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// The same weights for the request path; see [`Live`].
    pub(crate) live: Live,
    /// Serialises writers and keeps the history for `rollback`.
    history: Mutex<Vec<Box<[u32]>>>,
    pub(crate) echo_header: Option<HeaderName>,
    /// The clock latency is measured with, when it is.
    pub(crate) clock: Option<Arc<dyn Clock>>,
    /// Shared with the split this one carried over from, if any.
    pub(crate) waiters: Arc<Waiters>,
    /// Told after each change of the weights (the weight sync publishes
    /// it at once).
    pub(crate) listeners: crate::signal::Listeners,
}

pub(crate) struct TargetMeta {
    pub(crate) target: Target,
    pub(crate) header_value: HeaderValue,
    /// Shared with the split this one carried over from, if the target was
    /// there (see `SplitBuilder::carry_over`).
    pub(crate) counters: Arc<Counters>,
    /// Time to response headers (recorded when the split has a clock).
    pub(crate) latency: Arc<LatencyHistogram>,
}

/// Per-target counters, padded to their own cache lines so that targets
/// updated from different cores do not slow each other down.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    /// Requests started (including picks that were redone, see `retried`).
    started: AtomicU64,
    /// Requests whose in-flight time has ended. In flight is
    /// `started - finished`: one counter moves when a request starts and
    /// one when it ends, so a request costs two atomic updates, not three.
    finished: AtomicU64,
    /// Picks undone and redone because the weights changed meanwhile; they
    /// count as started and finished but are not requests.
    retried: AtomicU64,
    /// Responses by status class, 1xx to 5xx ([`Counters::CLASSES`]),
    /// then errors and body errors: each thread's own (every request adds
    /// to them), off the line `started` and `finished` share.
    outcomes: crate::per_thread::Counters<7>,
}

impl Shared {
    pub(crate) fn new(
        targets: Box<[TargetMeta]>,
        weights: Box<[u32]>,
        echo_header: Option<HeaderName>,
        clock: Option<Arc<dyn Clock>>,
        waiters: Option<Arc<Waiters>>,
    ) -> Result<Self, SplitError> {
        let snapshot = Snapshot::new(weights)?;
        Ok(Self {
            targets,
            live: Live::new(&snapshot),
            snapshot: ArcSwap::from_pointee(snapshot),
            history: Mutex::new(Vec::new()),
            echo_header,
            clock,
            waiters: waiters.unwrap_or_default(),
            listeners: crate::signal::Listeners::default(),
        })
    }

    pub(crate) fn index_of(&self, name: &[u8]) -> Option<usize> {
        self.targets
            .iter()
            .position(|t| t.target.name().as_bytes() == name)
    }

    /// Picks a target with `pick` under the current weights and counts it
    /// in flight, such that a writer that changed the weights and then sees
    /// a target's in-flight count at zero cannot have missed this request.
    ///
    /// The request is counted *after* the pick, so a weight change can land
    /// in between. To close that gap the weights' sequence number is read
    /// again after counting: if it moved, the pick is undone and redone
    /// under the new weights. A writer bumps the sequence number (`SeqCst`)
    /// before it changes anything, so either this re-read sees the bump, or
    /// the writer's later reading of the counters sees this request.
    #[inline]
    pub(crate) fn enter(&self, pick: impl Fn(&Live) -> usize) -> usize {
        loop {
            let (index, seq) = self.live.read(&pick);
            self.enter_index(index);
            if self.live.seq() == seq {
                return index;
            }
            self.targets[index]
                .counters
                .retried
                .fetch_add(1, Ordering::Relaxed);
            self.exit(index);
        }
    }

    #[inline]
    pub(crate) fn enter_index(&self, index: usize) {
        self.targets[index]
            .counters
            .started
            .fetch_add(1, Ordering::SeqCst);
    }

    #[inline]
    pub(crate) fn exit(&self, index: usize) {
        let counters = &self.targets[index].counters;
        let finished = counters.finished.fetch_add(1, Ordering::SeqCst) + 1;
        if self.waiters.count.load(Ordering::SeqCst) > 0
            && counters.started.load(Ordering::SeqCst) == finished
        {
            self.waiters.wake_all();
        }
    }

    #[inline]
    pub(crate) fn counters(&self, index: usize) -> &Counters {
        &self.targets[index].counters
    }

    fn is_drained(&self, index: usize) -> bool {
        self.snapshot.load().weights[index] == 0 && self.targets[index].counters.in_flight() == 0
    }

    fn lock_history(&self) -> MutexGuard<'_, Vec<Box<[u32]>>> {
        // A panic while holding this lock cannot leave the history
        // inconsistent (each change is one push or pop), so poisoning is
        // ignored rather than turned into a panic here.
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores new weights; the caller holds the history lock.
    fn store(&self, weights: Box<[u32]>) -> Result<(), SplitError> {
        let snapshot = Snapshot::new(weights)?;
        self.live.publish(&snapshot);
        self.snapshot.store(Arc::new(snapshot));
        self.waiters.wake_all();
        self.listeners.fire();
        Ok(())
    }

    /// Applies `f` to the current weights and stores the result, all under
    /// the writers' lock, so concurrent changes cannot interleave.
    fn change(
        &self,
        f: impl FnOnce(&[u32]) -> Result<Box<[u32]>, SplitError>,
    ) -> Result<(), SplitError> {
        let mut history = self.lock_history();
        let previous = self.snapshot.load().weights.clone();
        self.store(f(&previous)?)?;
        if history.len() == HISTORY {
            history.remove(0);
        }
        history.push(previous);
        Ok(())
    }
}

impl Counters {
    /// Requests in flight now. `finished` is read first: both counters
    /// only grow and `started >= finished` at every instant, so equal
    /// readings mean nothing was in flight when `finished` was read.
    fn in_flight(&self) -> u64 {
        let finished = self.finished.load(Ordering::SeqCst);
        let started = self.started.load(Ordering::SeqCst);
        started.saturating_sub(finished)
    }

    /// Where `outcomes` keeps the responses of class 1xx (then 2xx to
    /// 5xx), the errors and the body errors.
    const CLASSES: usize = 0;
    const ERRORS: usize = 5;
    const BODY_ERRORS: usize = 6;

    #[inline]
    pub(crate) fn response(&self, status: http::StatusCode) {
        let class = crate::metrics::class_index(status);
        self.outcomes.add(Self::CLASSES + class, 1);
    }

    #[inline]
    pub(crate) fn error(&self) {
        self.outcomes.add(Self::ERRORS, 1);
    }

    #[inline]
    pub(crate) fn body_error(&self) {
        self.outcomes.add(Self::BODY_ERRORS, 1);
    }
}

// === impl SplitHandle ===

/// A live handle on a [`Split`](super::Split): read and change its weights,
/// promote or roll back, read per-target counters, await a drain.
///
/// Cheap to clone; every clone and every clone of the split share one
/// state. A change is one atomic swap, seen by the very next request; a
/// request already under way finishes on the target it was sent to.
#[derive(Clone)]
pub struct SplitHandle {
    pub(crate) shared: Arc<Shared>,
}

impl SplitHandle {
    /// The split's targets, in order.
    pub fn targets(&self) -> impl ExactSizeIterator<Item = &Target> {
        self.shared.targets.iter().map(|t| &t.target)
    }

    /// The current weights.
    pub fn weights(&self) -> Weights {
        let snapshot = self.shared.snapshot.load();
        self.targets()
            .zip(snapshot.weights.iter())
            .map(|(t, &w)| (t.name(), w))
            .collect()
    }

    /// Tells `listener` of each change of the weights from now on.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn listen(&self, listener: &Arc<dyn crate::signal::Listener>) {
        self.shared.listeners.add(listener);
    }

    /// Replaces the whole set of weights at once.
    ///
    /// The set must name every target exactly once, with at least one
    /// weight above zero; otherwise nothing changes and the error says why.
    ///
    /// ```
    /// # use switchyard::split::Split;
    /// # let svc = tower::service_fn(|_: http::Request<()>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(()))
    /// # });
    /// # let split = Split::builder().target("blue", svc.clone(), 100).target("green", svc, 0).build()?;
    /// let handle = split.handle();
    /// handle.set_weights([("blue", 90), ("green", 10)])?;
    /// assert!(handle.set_weights([("blue", 100)]).is_err()); // green missing
    /// assert_eq!(handle.weights().get("green"), Some(10));
    /// # Ok::<_, switchyard::split::SplitError>(())
    /// ```
    pub fn set_weights<I, K>(&self, weights: I) -> Result<(), SplitError>
    where
        I: IntoIterator<Item = (K, u32)>,
        K: AsRef<str>,
    {
        let mut new: Box<[Option<u32>]> = vec![None; self.shared.targets.len()].into();
        for (name, weight) in weights {
            let name = name.as_ref();
            let index = self
                .shared
                .index_of(name.as_bytes())
                .ok_or_else(|| SplitError::UnknownTarget(name.to_owned()))?;
            if new[index].replace(weight).is_some() {
                return Err(SplitError::DuplicateTarget(name.to_owned()));
            }
        }
        let new = new
            .iter()
            .zip(self.targets())
            .map(|(w, t)| w.ok_or_else(|| SplitError::MissingTarget(t.name().to_owned())))
            .collect::<Result<Box<[u32]>, _>>()?;
        self.shared.change(|_| Ok(new))
    }

    /// Sends all traffic to `target`: it gets the sum of the current
    /// weights (so 90/10 becomes 0/100) and every other target gets zero.
    pub fn promote(&self, target: &str) -> Result<(), SplitError> {
        let index = self
            .shared
            .index_of(target.as_bytes())
            .ok_or_else(|| SplitError::UnknownTarget(target.to_owned()))?;
        self.shared.change(|current| {
            let total: u64 = current.iter().map(|&w| u64::from(w)).sum();
            let mut new = vec![0; current.len()].into_boxed_slice();
            new[index] = u32::try_from(total).unwrap_or(u32::MAX).max(1);
            Ok(new)
        })
    }

    /// Returns to the weights in force before the last change.
    ///
    /// The handle remembers the last 32 sets, so rolling back again walks
    /// further back (an undo, not a toggle); a rollback itself is not
    /// recorded. With nothing to return to, it fails with
    /// [`SplitError::NothingToRollBack`] and changes nothing.
    pub fn rollback(&self) -> Result<(), SplitError> {
        let mut history = self.shared.lock_history();
        let previous = history.pop().ok_or(SplitError::NothingToRollBack)?;
        if let Err(e) = self.shared.store(previous.clone()) {
            history.push(previous);
            return Err(e);
        }
        Ok(())
    }

    /// Counters of every target, in order.
    pub fn stats(&self) -> Vec<TargetStats> {
        let snapshot = self.shared.snapshot.load();
        self.shared
            .targets
            .iter()
            .zip(snapshot.weights.iter())
            .map(|(t, &weight)| TargetStats::read(t, weight))
            .collect()
    }

    /// Counters of one target.
    pub fn target_stats(&self, target: &str) -> Option<TargetStats> {
        let index = self.shared.index_of(target.as_bytes())?;
        let weight = self.shared.snapshot.load().weights[index];
        Some(TargetStats::read(&self.shared.targets[index], weight))
    }

    /// A future that resolves once `target` has weight zero and no request
    /// in flight: what a deploy script awaits before it stops that version.
    ///
    /// A request counts as in flight from the moment the split chose it
    /// until its response body has ended or been dropped, so a streaming
    /// response holds the drain open until its last chunk; an upgraded
    /// connection (a WebSocket through `proxy::Upstream`, see
    /// [`UpgradeHold`](crate::upgrade::UpgradeHold)) holds it until the
    /// connection closes. The future
    /// resolves at once if the target is already drained, and stays pending
    /// (it does not fail) while the target still has weight: raise the
    /// weight again and it simply waits longer.
    ///
    /// Requests forced onto a zero-weight target by the split's override
    /// header still reach it after the drain; turn the override off, or
    /// stop sending it, before you stop the target.
    pub fn drained(&self, target: &str) -> Result<Drained, SplitError> {
        let index = self
            .shared
            .index_of(target.as_bytes())
            .ok_or_else(|| SplitError::UnknownTarget(target.to_owned()))?;
        Ok(Drained {
            shared: self.shared.clone(),
            index,
            id: self.shared.waiters.next_id.fetch_add(1, Ordering::Relaxed),
            registered: false,
        })
    }
}

impl std::fmt::Debug for SplitHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitHandle")
            .field("weights", &self.weights())
            .finish()
    }
}

// === impl TargetStats ===

/// A reading of one target's counters.
///
/// Counters only grow (but `in_flight`), from the moment the split was
/// built; subtract two readings to get a window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TargetStats {
    /// The target's name.
    pub name: String,
    /// Its weight now.
    pub weight: u32,
    /// Requests sent to it.
    pub requests: u64,
    /// Requests sent to it whose response has not finished yet.
    pub in_flight: u64,
    /// Responses by status class.
    pub responses: StatusClasses,
    /// Calls that failed with an error instead of a response.
    pub errors: u64,
    /// Response bodies that failed after the response had started
    /// (including gRPC streams cut off before their `grpc-status`).
    ///
    /// gRPC responses are counted by their `grpc-status` (see
    /// [`grpc::http_status_for`](crate::grpc::http_status_for)): from the
    /// headers of a trailers-only answer, or from the trailers when they
    /// arrive.
    pub body_errors: u64,
    /// Time to response headers; empty unless the split records latency
    /// ([`SplitBuilder::latency`](super::SplitBuilder::latency)).
    pub latency: HistogramSnapshot,
}

/// Response counts by status class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StatusClasses {
    /// 1xx responses.
    #[serde(rename = "1xx")]
    pub informational: u64,
    /// 2xx responses.
    #[serde(rename = "2xx")]
    pub success: u64,
    /// 3xx responses.
    #[serde(rename = "3xx")]
    pub redirection: u64,
    /// 4xx responses.
    #[serde(rename = "4xx")]
    pub client_error: u64,
    /// 5xx responses.
    #[serde(rename = "5xx")]
    pub server_error: u64,
}

impl TargetStats {
    fn read(meta: &TargetMeta, weight: u32) -> Self {
        let c = &meta.counters;
        let class = |i: usize| c.outcomes.get(Counters::CLASSES + i);
        TargetStats {
            name: meta.target.name().to_owned(),
            weight,
            in_flight: c.in_flight(),
            requests: c
                .started
                .load(Ordering::Relaxed)
                .saturating_sub(c.retried.load(Ordering::Relaxed)),
            responses: StatusClasses {
                informational: class(0),
                success: class(1),
                redirection: class(2),
                client_error: class(3),
                server_error: class(4),
            },
            errors: c.outcomes.get(Counters::ERRORS),
            body_errors: c.outcomes.get(Counters::BODY_ERRORS),
            latency: meta.latency.snapshot(),
        }
    }
}

// === impl Drained ===

/// Future returned by [`SplitHandle::drained`].
#[must_use = "futures do nothing unless polled"]
pub struct Drained {
    shared: Arc<Shared>,
    index: usize,
    id: u64,
    registered: bool,
}

impl Future for Drained {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.is_drained(self.index) {
            return Poll::Ready(());
        }
        // Register, then look again: a change between the first look and
        // the registration would otherwise be missed (see `Shared::exit`).
        self.shared.waiters.register(self.id, cx.waker());
        self.registered = true;
        if self.shared.is_drained(self.index) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        if self.registered {
            self.shared.waiters.remove(self.id);
        }
    }
}

impl std::fmt::Debug for Drained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drained")
            .field("target", &self.shared.targets[self.index].target.name())
            .finish()
    }
}

/// Wakers of pending [`Drained`] futures.
///
/// `count` lets the request path skip the lock entirely while nobody waits,
/// which is nearly always.
#[derive(Default)]
pub(crate) struct Waiters {
    count: AtomicUsize,
    next_id: AtomicU64,
    list: Mutex<Vec<(u64, Waker)>>,
}

impl Waiters {
    fn lock(&self) -> MutexGuard<'_, Vec<(u64, Waker)>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, id: u64, waker: &Waker) {
        let mut list = self.lock();
        match list.iter_mut().find(|(i, _)| *i == id) {
            Some((_, w)) => w.clone_from(waker),
            None => list.push((id, waker.clone())),
        }
        self.count.store(list.len(), Ordering::SeqCst);
    }

    fn remove(&self, id: u64) {
        let mut list = self.lock();
        list.retain(|(i, _)| *i != id);
        self.count.store(list.len(), Ordering::SeqCst);
    }

    /// Wakes every waiter; each looks at its own target again when polled.
    fn wake_all(&self) {
        let woken = {
            let mut list = self.lock();
            self.count.store(0, Ordering::SeqCst);
            std::mem::take(&mut *list)
        };
        for (_, waker) in woken {
            waker.wake();
        }
    }
}
