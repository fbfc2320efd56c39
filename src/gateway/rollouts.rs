//! Rollout plans per route (`[routes.rollout]`), run by the gateway:
//! started, paused, resumed, skipped and aborted through the admin API
//! (or [`Gateway::start_rollout`] and [`Gateway::rollout`]), kept in the
//! platform's state store, told to webhooks.
//!
//! A rollout drives its route by name: each step resolves the route in
//! the configuration in force, so a reload that rebuilds the route's split
//! (or model router) leaves the rollout driving the new one, and a reload
//! that sets the route's weights has the rollout's weight put back before
//! the new configuration takes requests.
//!
//! **One leader for the fleet.** A rollout's record (state, step,
//! weights, verdicts, history, and the gateway leading it) is written to
//! the state store on every event, and its lease renewed every
//! `[rollouts] heartbeat_ms` (10 s) while it runs: one gateway runs it,
//! the others over the same store show its record and follow its weights
//! (with `[weight_sync]`). When the leader stops, the first gateway to
//! find the lease older than `lease_ms` (30 s) **takes the lead**: it
//! claims the record (a compare-and-swap, so one gateway wins) and
//! carries the rollout on from the recorded step and weight (a pause or
//! analysis under way starts over; a manual pause stays paused); the
//! history and the webhooks say `lead`. A leader that finds the record
//! taken (it was cut off for longer than the lease) hands over: it stops
//! without touching the weights. Commands given to a follower's admin
//! API (pause, resume, skip, abort) are left in the record, and the
//! leader carries them out when the store announces the change (Redis),
//! or at its next heartbeat. A gateway that cannot run the plan as
//! recorded (the route's plan or versions changed) **aborts** it instead:
//! traffic goes back to the stable version, the record says why, and the
//! webhooks are told (`aborted`).
//!
//! **The fleet's traffic.** With `[redis]`, every gateway shares its
//! counters of the versions of each route with a plan every `[rollouts]
//! samples_ms` (500 ms), and the leader's analysis judges their sum: a
//! canary is judged on all of its traffic, whichever replica served it
//! (the other replicas' part lags by up to that period).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Inner;
use super::build::State;
use super::config::{RouteRolloutConfig, WebhookConfig};
use crate::rollout::{
    EventKind, ModelTraffic, Rollout, RolloutError, RolloutEvent, RolloutHandle, RolloutState,
    Sample, SplitTraffic, Step, Traffic,
};
use crate::state::{StateError, StateStore, load_as};

/// The state store's section of rollout records (one entry per route).
const SECTION: &str = "rollouts";
/// Verdicts and history entries a record keeps.
const KEEP: usize = 256;
/// How often a running rollout's heartbeat is written, and stale records
/// looked for, by default (`[rollouts] heartbeat_ms`).
const BEAT: Duration = Duration::from_secs(10);
/// A running record whose heartbeat is older than this (milliseconds) by
/// default has no gateway running it (`[rollouts] lease_ms`).
const LEASE_MS: u64 = 30_000;

/// How often `state`'s heartbeats are written.
fn heartbeat(state: &State) -> Duration {
    state
        .config
        .rollouts
        .heartbeat_ms
        .map_or(BEAT, Duration::from_millis)
        .max(Duration::from_millis(1))
}

/// How long `state`'s leases hold, in milliseconds.
fn lease_ms(state: &State) -> u64 {
    state.config.rollouts.lease_ms.unwrap_or(LEASE_MS)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
/// Events waiting per webhook, at most.
const QUEUE: usize = 1024;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a rollout could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RolloutStartError {
    /// The route has no `[routes.rollout]`.
    #[error("route `{0}` has no rollout plan (`[routes.rollout]`)")]
    NoPlan(String),
    /// A rollout of the route is running (here, or on another gateway
    /// sharing the state store).
    #[error("a rollout of route `{0}` is running")]
    Running(String),
    /// The plan cannot run on the route as it is.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// Not called from a tokio runtime.
    #[error("a rollout runs on a tokio runtime; none is running here")]
    NoRuntime,
}

/// What the state store keeps of a route's rollout, and what the admin
/// API shows of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) route: String,
    pub(crate) stable: String,
    pub(crate) canary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) alias: Option<String>,
    pub(crate) steps: Vec<Step>,
    /// `idle`, `running`, `paused`, `promoted` or `aborted`.
    pub(crate) state: String,
    #[serde(default)]
    pub(crate) reason: Option<String>,
    pub(crate) step: usize,
    pub(crate) canary_weight: u32,
    #[serde(default)]
    pub(crate) verdicts: VecDeque<Value>,
    #[serde(default)]
    pub(crate) history: VecDeque<Value>,
    #[serde(default)]
    pub(crate) started_by: Option<String>,
    #[serde(default)]
    pub(crate) started_at: Option<u64>,
    /// The heartbeat of the gateway running it (Unix seconds).
    #[serde(default)]
    pub(crate) beat: u64,
    /// The same, in Unix milliseconds (0 in records written before it
    /// was kept).
    #[serde(default)]
    pub(crate) beat_ms: u64,
    /// Set when this gateway takes the lead: its first event is `lead`,
    /// after how long the leader was silent (ms).
    #[serde(skip)]
    pub(crate) lead_from: Option<u64>,
    /// Events so far.
    #[serde(default)]
    pub(crate) seq: u64,
    /// The gateway running it (a number drawn when the gateway was made).
    #[serde(default)]
    pub(crate) owner: u64,
    /// Commands given through another gateway's admin API, for the one
    /// leading the rollout to carry out (`{"op", "reason", "step", "by"}`),
    /// oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) pending: Vec<Value>,
}

impl Record {
    fn idle(route: &str, rc: &RouteRolloutConfig) -> Self {
        Record {
            route: route.to_owned(),
            stable: rc.stable.clone(),
            canary: rc.canary.clone(),
            alias: rc.alias.clone(),
            steps: rc.plan.steps.clone(),
            state: "idle".to_owned(),
            reason: None,
            step: 0,
            canary_weight: 0,
            verdicts: VecDeque::new(),
            history: VecDeque::new(),
            started_by: None,
            started_at: None,
            beat: 0,
            beat_ms: 0,
            lead_from: None,
            seq: 0,
            owner: 0,
            pending: Vec::new(),
        }
    }

    fn live(&self) -> bool {
        matches!(self.state.as_str(), "running" | "paused")
    }

    /// When its leader last renewed the lease (Unix milliseconds).
    fn beat_at(&self) -> u64 {
        if self.beat_ms > 0 {
            self.beat_ms
        } else {
            self.beat.saturating_mul(1000)
        }
    }

    /// Whether its leader's lease has run out.
    fn lapsed(&self, lease_ms: u64) -> bool {
        now_ms().saturating_sub(self.beat_at()) > lease_ms
    }

    /// Renews the lease.
    fn renew(&mut self) {
        self.beat = now();
        self.beat_ms = now_ms();
    }

    /// Records one event; its webhook event's name and detail.
    fn record(&mut self, event: &RolloutEvent) -> (&'static str, Value) {
        self.seq += 1;
        self.step = event.step;
        let (name, detail) = match &event.kind {
            EventKind::State(state) => {
                let lead = match state {
                    RolloutState::Running => self.lead_from.take(),
                    _ => None,
                };
                let (name, s, reason) = match state {
                    RolloutState::Running if lead.is_some() => (
                        "lead",
                        "running",
                        Some(format!(
                            "the gateway leading it stopped (no heartbeat for {} ms); this one carries it on from step {}",
                            lead.unwrap_or(0),
                            event.step
                        )),
                    ),
                    RolloutState::Running if self.seq == 1 => ("started", "running", None),
                    RolloutState::Running => ("resumed", "running", None),
                    RolloutState::Paused { reason } => (
                        "paused",
                        "paused",
                        Some(
                            serde_json::to_value(reason)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default(),
                        ),
                    ),
                    RolloutState::Promoted => {
                        self.canary_weight = 100;
                        ("promoted", "promoted", None)
                    }
                    RolloutState::Aborted { reason } => {
                        self.canary_weight = 0;
                        ("aborted", "aborted", Some(reason.clone()))
                    }
                };
                self.state = s.to_owned();
                self.reason = reason;
                (name, json!({ "state": s, "reason": self.reason }))
            }
            EventKind::Step(step) => {
                if let Step::SetWeight(w) = step {
                    self.canary_weight = *w;
                }
                ("step", json!(step))
            }
            EventKind::Verdict(v) => {
                let v = json!(v);
                if self.verdicts.len() == KEEP {
                    self.verdicts.pop_front();
                }
                self.verdicts.push_back(v.clone());
                ("verdict", v)
            }
            EventKind::Skip { from, to, weight } => {
                self.canary_weight = *weight;
                (
                    "skipped",
                    json!({ "from": from, "to": to, "weight": weight }),
                )
            }
        };
        let at = event
            .at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.history.len() == KEEP {
            self.history.pop_front();
        }
        self.history.push_back(json!({
            "seq": self.seq,
            "at": at,
            "step": event.step,
            "kind": name,
            "detail": detail,
        }));
        self.renew();
        (name, detail)
    }

    /// What a webhook is sent for the latest event.
    fn hook_body(&self, event: &str, detail: &Value) -> Value {
        json!({
            "route": self.route,
            "event": event,
            "seq": self.seq,
            "at": now(),
            "step": self.step,
            "state": self.state,
            "reason": self.reason,
            "stable": self.stable,
            "canary": self.canary,
            "canary_weight": self.canary_weight,
            "detail": detail,
        })
    }

    /// The admin API's view.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn json(&self) -> Value {
        let mut v = json!(self);
        if let Some(o) = v.as_object_mut() {
            o.remove("beat");
            o.remove("beat_ms");
            o.remove("owner");
        }
        v
    }
}

struct Entry {
    record: Record,
    /// The rollout this gateway runs, if it runs one.
    handle: Option<RolloutHandle>,
    /// The record's text in the store, as last read or written.
    seen: Option<String>,
    /// Set by the `start_rollout` that put the entry in place (0 for any
    /// other): a start that fails takes away only its own entry, not one
    /// that took its place meanwhile (this gateway's sweep taking over
    /// the route's lapsed record).
    start: u64,
}

/// The rollouts of one gateway, for its whole life (across reloads).
pub(crate) struct Rollouts {
    /// This gateway, in the records of the rollouts it runs.
    id: u64,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// One queue per webhook (by its configuration).
    hooks: Mutex<HashMap<String, tokio::sync::mpsc::Sender<Value>>>,
    /// Routes whose record is to be written.
    dirty: Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
    /// The other replicas' counters of each route's versions (their sum,
    /// read from Redis), added to this replica's own when a rollout led
    /// here samples its route.
    fleet: Mutex<HashMap<String, Sample>>,
}

impl Default for Rollouts {
    fn default() -> Self {
        Self {
            // Non-zero: 0 is a record written before owners were kept.
            id: rand::random::<u64>() | 1,
            entries: Mutex::default(),
            hooks: Mutex::default(),
            dirty: Mutex::default(),
            fleet: Mutex::default(),
        }
    }
}

impl Rollouts {
    fn entries(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live rollout of `route`.
    pub(crate) fn handle(&self, route: &str) -> Option<RolloutHandle> {
        let entries = self.entries();
        let handle = entries.get(route)?.handle.clone()?;
        (!handle.state().is_final()).then_some(handle)
    }

    /// Every route with a plan or a record: its record.
    pub(crate) fn records(&self, state: &State) -> Vec<Record> {
        let entries = self.entries();
        let mut out: BTreeMap<String, Record> = entries
            .iter()
            .map(|(route, e)| (route.clone(), e.record.clone()))
            .collect();
        for rc in &state.config.routes {
            if let Some(plan) = &rc.rollout {
                out.entry(rc.name.clone())
                    .or_insert_with(|| Record::idle(&rc.name, plan));
            }
        }
        out.into_values().collect()
    }

    /// Takes away the entry of `route` that the `start_rollout` marked
    /// `start` put in place, if it is still there.
    fn forget_start(&self, route: &str, start: u64) {
        let mut entries = self.entries();
        if entries.get(route).is_some_and(|e| e.start == start) {
            entries.remove(route);
        }
    }

    /// `route`'s record (idle when it has a plan and none ran).
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn record(&self, state: &State, route: &str) -> Option<Record> {
        if let Some(e) = self.entries().get(route) {
            return Some(e.record.clone());
        }
        let rc = state.config.routes.iter().find(|r| r.name == route)?;
        rc.rollout.as_ref().map(|plan| Record::idle(route, plan))
    }

    /// The routes of the rollouts running here, their heartbeats renewed.
    fn beat(&self) -> Vec<String> {
        let mut entries = self.entries();
        let mut routes = Vec::new();
        for (route, e) in entries.iter_mut() {
            if e.handle.is_some() && e.record.live() {
                e.record.renew();
                routes.push(route.clone());
            }
        }
        routes
    }

    /// After a reload's changes, before its routes take requests: every
    /// live rollout's weight, set again on the routes as they are now.
    pub(crate) fn reassert(&self, state: &State) {
        let entries = self.entries();
        for (route, e) in entries.iter() {
            if e.handle.as_ref().is_some_and(|h| !h.state().is_final()) {
                let r = &e.record;
                match resolve(state, route, &r.stable, &r.canary, r.alias.as_deref()) {
                    Ok(traffic) => {
                        if let Err(e) = traffic.set_canary(r.canary_weight) {
                            tracing::warn!(route, error = %e, "rollout: weights not kept over the reload");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(route, error = %e, "rollout: its route changed under it")
                    }
                }
            }
        }
    }
}

// === the traffic a gateway rollout drives ===

/// A route's traffic, resolved in the state in force at each use.
fn resolve(
    state: &State,
    route: &str,
    stable: &str,
    canary: &str,
    alias: Option<&str>,
) -> Result<Box<dyn Traffic>, RolloutError> {
    let r = state
        .routes
        .iter()
        .find(|r| r.name == route)
        .ok_or_else(|| RolloutError::UnknownTarget(format!("route {route}")))?;
    if let Some(alias) = alias {
        let (_, handle) = r.model.as_ref().ok_or_else(|| {
            RolloutError::InvalidPlan(format!("route `{route}` has no model router"))
        })?;
        return Ok(Box::new(ModelTraffic::new(
            handle.clone(),
            alias,
            stable,
            canary,
        )?));
    }
    let split = r
        .split
        .as_ref()
        .map(|s| s.handle.clone())
        .or_else(|| r.prompt.as_ref().map(|p| p.split().clone()))
        .ok_or_else(|| {
            RolloutError::InvalidPlan(format!(
                "route `{route}` has no split (a model route's rollout needs `alias`)"
            ))
        })?;
    Ok(Box::new(SplitTraffic::new(split, stable, canary)?))
}

struct RouteTraffic {
    gateway: Weak<Inner>,
    route: String,
    stable: String,
    canary: String,
    alias: Option<String>,
}

impl RouteTraffic {
    fn now(&self) -> Result<Box<dyn Traffic>, String> {
        let inner = self
            .gateway
            .upgrade()
            .ok_or_else(|| "the gateway is gone".to_owned())?;
        let state = inner.state.load();
        resolve(
            &state,
            &self.route,
            &self.stable,
            &self.canary,
            self.alias.as_deref(),
        )
        .map_err(|e| e.to_string())
    }
}

impl Traffic for RouteTraffic {
    fn set_canary(&self, percent: u32) -> Result<(), String> {
        self.now()?.set_canary(percent)
    }

    fn promote(&self) -> Result<(), String> {
        self.now()?.promote()
    }

    fn sample(&self) -> Sample {
        let mut sample = self.now().map(|t| t.sample()).unwrap_or_default();
        if let Some(inner) = self.gateway.upgrade()
            && let Some(others) = inner
                .rollouts
                .fleet
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&self.route)
        {
            sample.add(others);
        }
        sample
    }
}

// === starting and following ===

impl super::Gateway {
    /// Starts `route`'s rollout plan (`[routes.rollout]`), recorded as
    /// started `by` someone. Refused while one runs on the route (here or
    /// on a gateway sharing the state store).
    pub fn start_rollout(&self, route: &str, by: &str) -> Result<RolloutHandle, RolloutStartError> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(RolloutStartError::NoRuntime);
        };
        let state = self.inner.state.load_full();
        let rc = state
            .config
            .routes
            .iter()
            .find(|r| r.name == route)
            .and_then(|r| r.rollout.clone())
            .ok_or_else(|| RolloutStartError::NoPlan(route.to_owned()))?;
        // Checked on the route as it is now.
        resolve(&state, route, &rc.stable, &rc.canary, rc.alias.as_deref())?;
        let rollouts = &self.inner.rollouts;
        let start = rand::random::<u64>() | 1;
        let stored = state.platform.store.as_ref().and_then(|(_, store)| {
            load_as::<Record>(store.as_ref(), SECTION, route)
                .ok()
                .flatten()
        });
        {
            let mut entries = rollouts.entries();
            if entries
                .get(route)
                .is_some_and(|e| e.handle.as_ref().is_some_and(|h| !h.state().is_final()))
            {
                return Err(RolloutStartError::Running(route.to_owned()));
            }
            let mut seen = entries.get(route).and_then(|e| e.seen.clone());
            if let Some((record, text)) = stored {
                // Another gateway's, running with a fresh heartbeat (one of
                // ours that says running has ended here: its last write is
                // on its way).
                if record.live() && record.owner != rollouts.id && !record.lapsed(lease_ms(&state))
                {
                    return Err(RolloutStartError::Running(route.to_owned()));
                }
                seen = Some(text);
            }
            let mut record = Record::idle(route, &rc);
            record.state = "running".to_owned();
            record.started_by = Some(by.to_owned());
            record.started_at = Some(now());
            record.renew();
            record.owner = rollouts.id;
            // In place before the rollout's first event.
            entries.insert(
                route.to_owned(),
                Entry {
                    record,
                    handle: None,
                    seen,
                    start,
                },
            );
        }
        // Claimed in the store before anything runs: a compare-and-swap
        // against the record read above, so that of two gateways starting
        // at once one wins, and a gateway that starts just after this one
        // answers finds its record (its later writes are in the
        // background).
        if let Some((_, store)) = &state.platform.store
            && let Err(e) = claim(store.as_ref(), rollouts, route, lease_ms(&state))
        {
            rollouts.forget_start(route, start);
            return Err(e);
        }
        let rollout = match route_rollout(&self.inner, route, &rc) {
            Ok(r) => r,
            Err(e) => {
                rollouts.forget_start(route, start);
                return Err(e.into());
            }
        };
        let _entered = runtime.enter();
        self.run_rollout_tasks();
        let handle = run(&self.inner, route, rollout);
        if let Some(e) = rollouts.entries().get_mut(route) {
            e.handle = Some(handle.clone());
        }
        tracing::info!(route, by, "rollout started");
        Ok(handle)
    }

    /// The rollout running on `route`, if one is.
    pub fn rollout(&self, route: &str) -> Option<RolloutHandle> {
        self.inner.rollouts.handle(route)
    }

    /// Starts the task that writes records and heartbeats, and aborts
    /// stale ones, if it is not running (on the current runtime).
    pub(crate) fn run_rollout_tasks(&self) {
        let rollouts = &self.inner.rollouts;
        let mut dirty = rollouts.dirty.lock().unwrap_or_else(|e| e.into_inner());
        if dirty.as_ref().is_some_and(|tx| !tx.is_closed()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        *dirty = Some(tx);
        let weak = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            // The first beat at once (as an interval's first tick was).
            let mut next = tokio::time::Instant::now();
            loop {
                let mut routes = Vec::new();
                tokio::select! {
                    route = rx.recv() => match route {
                        Some(r) => routes.push(r),
                        None => return,
                    },
                    () = tokio::time::sleep_until(next) => {
                        let Some(inner) = weak.upgrade() else { return };
                        // Read at each beat: a reload may change it.
                        next = tokio::time::Instant::now() + heartbeat(&inner.state.load());
                        routes = inner.rollouts.beat();
                        let _ = tokio::task::spawn_blocking(move || sweep(&inner)).await;
                    }
                }
                while let Ok(r) = rx.try_recv() {
                    routes.push(r);
                }
                routes.sort();
                routes.dedup();
                let Some(inner) = weak.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || {
                    for route in routes {
                        write(&inner, &route);
                    }
                })
                .await;
            }
        });
    }
}

/// What a replica shares of a route's versions: when, which versions, and
/// its counters of them (since it was built).
#[cfg(feature = "redis")]
#[derive(Serialize, Deserialize)]
struct Shared {
    at: u64,
    stable: String,
    canary: String,
    sample: Sample,
}

/// A share older than this is no longer counted (a replica gone an hour).
#[cfg(feature = "redis")]
const SHARED_FOR_MS: u64 = 3_600_000;

impl super::Gateway {
    /// Shares this replica's counters of the versions of every route with
    /// a rollout plan through Redis every `[rollouts] samples_ms`, and
    /// reads the other replicas' (their sum), for the rollouts led here to
    /// judge the whole fleet's traffic. A replica that stops keeps counting
    /// with its last counters (so that the sum never goes back) for an
    /// hour. Runs until the gateway is dropped; started when a gateway is
    /// built with `[redis]`.
    #[cfg(feature = "redis")]
    pub(crate) fn run_fleet_samples(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            loop {
                let every = {
                    let Some(inner) = weak.upgrade() else { return };
                    let state = inner.state.load_full();
                    let every = state.config.rollouts.samples_ms.unwrap_or(500);
                    if every > 0
                        && let Some(redis) = &state.redis
                    {
                        share_samples(&inner, &state, redis.connection()).await;
                    }
                    every
                };
                let pause = if every == 0 { 1000 } else { every };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        });
    }
}

/// One round of [`run_fleet_samples`](super::Gateway::run_fleet_samples).
#[cfg(feature = "redis")]
async fn share_samples(
    inner: &Arc<Inner>,
    state: &State,
    mut redis: crate::redis_conn::RedisConnection,
) {
    let prefix = state
        .config
        .platform
        .redis_prefix
        .as_deref()
        .unwrap_or(crate::state::redis::DEFAULT_PREFIX);
    let me = format!("{:016x}", inner.rollouts.id);
    let bound = Duration::from_secs(1);
    for rc in &state.config.routes {
        let Some(plan) = &rc.rollout else { continue };
        let Ok(traffic) = resolve(
            state,
            &rc.name,
            &plan.stable,
            &plan.canary,
            plan.alias.as_deref(),
        ) else {
            continue;
        };
        let key = format!("{prefix}samples:{}", rc.name);
        let mine = Shared {
            at: now_ms(),
            stable: plan.stable.clone(),
            canary: plan.canary.clone(),
            sample: traffic.sample(),
        };
        let Ok(text) = serde_json::to_string(&mine) else {
            continue;
        };
        let round = async {
            redis::cmd("HSET")
                .arg(&key)
                .arg(&me)
                .arg(&text)
                .query_async::<()>(&mut redis)
                .await?;
            redis::cmd("PEXPIRE")
                .arg(&key)
                .arg(SHARED_FOR_MS)
                .query_async::<()>(&mut redis)
                .await?;
            redis::cmd("HGETALL")
                .arg(&key)
                .query_async::<HashMap<String, String>>(&mut redis)
                .await
        };
        let all = match tokio::time::timeout(bound, round).await {
            Ok(Ok(all)) => all,
            Ok(Err(e)) => {
                tracing::debug!(route = %rc.name, error = %e, "rollout: counters not shared");
                continue;
            }
            Err(_) => continue,
        };
        let now = now_ms();
        let mut others = Sample::default();
        for (replica, text) in all {
            if replica == me {
                continue;
            }
            let Ok(theirs) = serde_json::from_str::<Shared>(&text) else {
                continue;
            };
            if theirs.stable == plan.stable
                && theirs.canary == plan.canary
                && now.saturating_sub(theirs.at) <= SHARED_FOR_MS
            {
                others.add(&theirs.sample);
            }
        }
        inner
            .rollouts
            .fleet
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(rc.name.clone(), others);
    }
}

/// `route`'s plan as a rollout of the route, driving it by name.
fn route_rollout(
    inner: &Arc<Inner>,
    route: &str,
    rc: &RouteRolloutConfig,
) -> Result<Rollout, RolloutError> {
    let traffic = RouteTraffic {
        gateway: Arc::downgrade(inner),
        route: route.to_owned(),
        stable: rc.stable.clone(),
        canary: rc.canary.clone(),
        alias: rc.alias.clone(),
    };
    Rollout::new(rc.plan.clone(), traffic)
}

/// Starts `rollout` of `route` (on the current runtime), its events
/// recorded and told by [`on_event`].
fn run(inner: &Arc<Inner>, route: &str, rollout: Rollout) -> RolloutHandle {
    let weak = Arc::downgrade(inner);
    let name = route.to_owned();
    rollout
        .on_event(move |event| {
            if let Some(inner) = weak.upgrade() {
                on_event(&inner, &name, event);
            }
        })
        .start()
}

/// One event of `route`'s rollout: recorded, queued for the store and the
/// webhooks, in order (called from the rollout's task).
fn on_event(inner: &Arc<Inner>, route: &str, event: &RolloutEvent) {
    let body = {
        let mut entries = inner.rollouts.entries();
        let Some(entry) = entries.get_mut(route) else {
            return;
        };
        if entry.record.owner != inner.rollouts.id {
            // Handed over: another gateway tells its events.
            return;
        }
        let (name, detail) = entry.record.record(event);
        let body = entry.record.hook_body(name, &detail);
        if name != "verdict" {
            tracing::info!(
                route,
                event = name,
                step = entry.record.step,
                "rollout event"
            );
        }
        body
    };
    notify(inner, route, body);
}

/// Queues `route`'s record to be written, and `body` for the webhooks.
fn notify(inner: &Arc<Inner>, route: &str, body: Value) {
    if let Some(tx) = inner
        .rollouts
        .dirty
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        let _ = tx.send(route.to_owned());
    }
    let state = inner.state.load();
    let event = body["event"].as_str().unwrap_or_default();
    for hook in &state.config.rollouts.webhooks {
        if !hook.events.is_empty() && !hook.events.iter().any(|e| e == event) {
            continue;
        }
        let queue = webhook_queue(&inner.rollouts, hook);
        if let Some(queue) = queue
            && queue.try_send(body.clone()).is_err()
        {
            tracing::warn!(url = %super::redact::redact_url(&hook.url), route, event, "rollout webhook: queue full, event dropped");
        }
    }
}

/// The queue of `hook`, its delivery task started when new.
fn webhook_queue(
    rollouts: &Rollouts,
    hook: &WebhookConfig,
) -> Option<tokio::sync::mpsc::Sender<Value>> {
    let key = serde_json::to_string(hook).unwrap_or_default();
    let mut hooks = rollouts.hooks.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(q) = hooks.get(&key)
        && !q.is_closed()
    {
        return Some(q.clone());
    }
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    runtime.spawn(deliver(hook.clone(), rx));
    hooks.insert(key, tx.clone());
    Some(tx)
}

/// Delivers a webhook's events in order, each retried with backoff.
async fn deliver(hook: WebhookConfig, mut rx: tokio::sync::mpsc::Receiver<Value>) {
    use tower::ServiceExt;
    let shown = super::redact::redact_url(&hook.url);
    let Some((base, path)) = split_url(&hook.url) else {
        tracing::warn!(url = %shown, "rollout webhook: not an http(s) URL");
        return;
    };
    let timeout = Duration::from_millis(hook.timeout_ms.unwrap_or(5000).max(1));
    let upstream = match crate::proxy::Upstream::builder(&base)
        .response_timeout(timeout)
        .connect_timeout(Some(timeout))
        .build()
    {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(url = %shown, error = %e, "rollout webhook: not usable");
            return;
        }
    };
    let retries = hook.retries.unwrap_or(5);
    while let Some(body) = rx.recv().await {
        let bytes = Bytes::from(body.to_string());
        let mut backoff = Duration::from_millis(500);
        for attempt in 0..=retries {
            let mut req = http::Request::post(path.as_str())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::USER_AGENT, "switchyard-rollouts");
            for (name, value) in &hook.headers {
                req = req.header(name.as_str(), value.as_str());
            }
            let Ok(req) = req.body(http_body_util::Full::new(bytes.clone())) else {
                tracing::warn!(url = %shown, "rollout webhook: invalid header");
                break;
            };
            let status = match upstream.clone().oneshot(req).await {
                Ok(res) => res.status(),
                Err(never) => match never {},
            };
            if status.is_success() {
                break;
            }
            tracing::warn!(url = %shown, %status, attempt, event = %body["event"], "rollout webhook: delivery failed");
            if attempt == retries {
                tracing::warn!(url = %shown, event = %body["event"], "rollout webhook: event given up");
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(60));
        }
    }
}

/// `http://host:port/path?query` as (`http://host:port`, `/path?query`).
pub(crate) fn split_url(url: &str) -> Option<(String, String)> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = uri.authority()?.as_str();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let path = if path.is_empty() {
        "/".to_owned()
    } else {
        path
    };
    Some((format!("{scheme}://{authority}"), path))
}

/// Writes the record just put in place for `route` to the store if the
/// store still holds what was read (blocking); else reads it again, and
/// refuses if another gateway's rollout runs there now. A store that
/// cannot be reached does not stop the start (the record is written
/// again with the next event), as for every other write.
fn claim(
    store: &dyn StateStore,
    rollouts: &Rollouts,
    route: &str,
    lease_ms: u64,
) -> Result<(), RolloutStartError> {
    for _ in 0..3 {
        let (text, seen) = {
            let entries = rollouts.entries();
            let Some(e) = entries.get(route) else {
                return Ok(());
            };
            (serde_json::to_string(&e.record), e.seen.clone())
        };
        let Ok(text) = text else { return Ok(()) };
        match store.swap(SECTION, route, seen.as_deref(), &text) {
            Ok(true) => {
                if let Some(e) = rollouts.entries().get_mut(route) {
                    e.seen = Some(text);
                }
                return Ok(());
            }
            Ok(false) => {
                // Written in between: by a gateway that runs a rollout of
                // the route now, or not.
                let current = load_as::<Record>(store, SECTION, route).ok().flatten();
                if let Some((record, _)) = &current
                    && record.live()
                    && record.owner != rollouts.id
                    && !record.lapsed(lease_ms)
                {
                    return Err(RolloutStartError::Running(route.to_owned()));
                }
                if let Some(e) = rollouts.entries().get_mut(route) {
                    e.seen = current.map(|(_, text)| text);
                }
            }
            Err(e) => {
                tracing::warn!(route, error = %e, "rollout: record not kept");
                return Ok(());
            }
        }
    }
    Err(RolloutStartError::Running(route.to_owned()))
}

/// Writes `route`'s record to the state store (blocking). Commands other
/// gateways left in it for this one are carried out first.
fn write(inner: &Arc<Inner>, route: &str) {
    let state = inner.state.load();
    let Some((_, store)) = &state.platform.store else {
        return;
    };
    for _ in 0..3 {
        let (text, seen) = {
            let entries = inner.rollouts.entries();
            let Some(e) = entries.get(route) else { return };
            (serde_json::to_string(&e.record), e.seen.clone())
        };
        let Ok(text) = text else { return };
        if seen.as_deref() == Some(text.as_str()) {
            // Nothing new here: write only if the store changed (commands
            // left for this gateway, or its lead taken), so that hearing
            // its own announcement does not make it write again.
            match store.load(SECTION, route) {
                Ok(current) if current.as_deref() == seen.as_deref() => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(route, error = %e, "rollout: record not read");
                    return;
                }
            }
        }
        match put(
            store.as_ref(),
            route,
            seen.as_deref(),
            &text,
            inner.rollouts.id,
        ) {
            Ok(Put::Written) => {
                if let Some(e) = inner.rollouts.entries().get_mut(route) {
                    e.seen = Some(text);
                }
                return;
            }
            Ok(Put::Commands(commands, current)) => {
                // Ours still, with commands left in it: carried out, then
                // the record written over that text (without them).
                let handle = {
                    let mut entries = inner.rollouts.entries();
                    let Some(e) = entries.get_mut(route) else {
                        return;
                    };
                    e.seen = Some(current);
                    e.handle.clone()
                };
                if let Some(handle) = handle {
                    for c in &commands {
                        carry_out(&handle, route, c);
                    }
                }
            }
            Ok(Put::Taken(record, current)) => {
                // Cut off for longer than the lease: another gateway leads
                // it now. Stop here without touching the weights, and show
                // its record; the events of the rollout stopping are not
                // ours to tell.
                let mut entries = inner.rollouts.entries();
                if let Some(e) = entries.get_mut(route) {
                    if let Some(handle) = e.handle.take() {
                        handle.hand_over("another gateway leads it now");
                    }
                    e.record = *record;
                    e.seen = Some(current);
                }
                tracing::warn!(route, "rollout: another gateway took its lead; handed over");
                return;
            }
            Err(e) => {
                tracing::warn!(route, error = %e, "rollout: record not kept");
                return;
            }
        }
    }
}

/// Carries out a command another gateway's admin API left in the record.
fn carry_out(handle: &RolloutHandle, route: &str, command: &Value) {
    let by = command["by"].as_str().unwrap_or("another gateway");
    match command["op"].as_str() {
        Some("pause") => handle.pause(),
        Some("resume") => handle.resume(),
        Some("abort") => {
            let reason = command["reason"].as_str().unwrap_or("by the admin API");
            handle.abort(format!("{reason} ({by})"));
        }
        Some("skip") => {
            let step = command["step"]
                .as_u64()
                .and_then(|s| usize::try_from(s).ok());
            if let Some(Err(e)) = step.map(|s| handle.skip_to(s)) {
                tracing::warn!(route, error = %e, "rollout: a forwarded skip refused");
            }
        }
        other => tracing::warn!(route, op = ?other, "rollout: an unknown forwarded command"),
    }
    tracing::info!(admin = %by, route, op = ?command["op"], "rollout changed (forwarded)");
}

/// Leaves `command` in `route`'s record for the gateway leading it
/// (blocking): a compare-and-swap, tried again if the record changed. The
/// record as it is then, or why not.
#[cfg_attr(not(feature = "admin"), allow(dead_code))]
pub(crate) fn forward(state: &State, route: &str, command: Value) -> Result<Value, String> {
    let Some((_, store)) = &state.platform.store else {
        return Err("no state store is shared with the leader".to_owned());
    };
    for _ in 0..5 {
        let (mut record, text) = match load_as::<Record>(store.as_ref(), SECTION, route) {
            Ok(Some(found)) => found,
            Ok(None) => return Err(format!("no rollout of route `{route}` is running")),
            Err(e) => return Err(e.to_string()),
        };
        if !record.live() {
            return Err(format!("no rollout of route `{route}` is running"));
        }
        record.pending.push(command.clone());
        let Ok(new_text) = serde_json::to_string(&record) else {
            return Err("the record cannot be written".to_owned());
        };
        match store.swap(SECTION, route, Some(&text), &new_text) {
            Ok(true) => return Ok(record.json()),
            Ok(false) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the record kept changing".to_owned())
}

impl Rollouts {
    /// Queues the records of the rollouts led here to be written (another
    /// gateway changed the store: commands may wait in them).
    #[cfg(feature = "redis")]
    pub(crate) fn look_for_commands(&self) {
        let routes: Vec<String> = self
            .entries()
            .iter()
            .filter(|(_, e)| e.handle.is_some())
            .map(|(r, _)| r.clone())
            .collect();
        if let Some(tx) = self
            .dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            for r in routes {
                let _ = tx.send(r);
            }
        }
    }
}

/// What [`put`] did.
enum Put {
    Written,
    /// Still ours, with commands other gateways left (and the text read).
    Commands(Vec<Value>, String),
    /// Another gateway leads the rollout now: its record, and its text.
    Taken(Box<Record>, String),
}

/// Replaces the record, ours while it runs here: another writer's change
/// in between is overwritten, unless it is another gateway (`owner` is
/// this one) taking the lead of a live rollout.
fn put(
    store: &dyn StateStore,
    route: &str,
    seen: Option<&str>,
    text: &str,
    owner: u64,
) -> Result<Put, StateError> {
    if store.swap(SECTION, route, seen, text)? {
        return Ok(Put::Written);
    }
    let current = store.load(SECTION, route)?;
    if let Some(current) = &current
        && let Ok(record) = serde_json::from_str::<Record>(current)
    {
        if record.live() && record.owner != owner && record.owner != 0 {
            return Ok(Put::Taken(Box::new(record), current.clone()));
        }
        if record.owner == owner && !record.pending.is_empty() {
            return Ok(Put::Commands(record.pending, current.clone()));
        }
    }
    store
        .swap(SECTION, route, current.as_deref(), text)
        .map(|_| Put::Written)
}

/// Reads the records of every route with a plan that no rollout here
/// runs; aborts those still running with a stale heartbeat (blocking).
pub(crate) fn sweep(inner: &Arc<Inner>) {
    let state = inner.state.load_full();
    let Some((_, store)) = &state.platform.store else {
        return;
    };
    for rc in &state.config.routes {
        if rc.rollout.is_none() {
            continue;
        }
        let route = rc.name.as_str();
        if inner.rollouts.handle(route).is_some() {
            // Running here: this gateway keeps its record.
            continue;
        }
        let (mut record, text) = match load_as::<Record>(store.as_ref(), SECTION, route) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(route, error = %e, "rollout: record not read");
                continue;
            }
        };
        if record.owner == inner.rollouts.id {
            // One of ours, ended here: what this gateway holds is newer.
            continue;
        }
        if !record.live() || !record.lapsed(lease_ms(&state)) {
            let mut entries = inner.rollouts.entries();
            // A rollout started here since the record was read keeps its
            // entry (its record is newer): one that holds its handle, and
            // one still starting, whose entry is ours and live before its
            // handle is in place (`start_rollout`).
            let ours = |e: &Entry| {
                e.handle.is_some() || (e.record.owner == inner.rollouts.id && e.record.live())
            };
            if !entries.get(route).is_some_and(ours) {
                entries.insert(
                    route.to_owned(),
                    Entry {
                        record,
                        handle: None,
                        seen: Some(text),
                        start: 0,
                    },
                );
            }
            continue;
        }
        // Nobody runs it: this gateway carries it on if it can.
        if take_over(inner, &state, store.as_ref(), route, &record, &text) {
            continue;
        }
        // It cannot: traffic back to stable, then the record.
        let back = resolve(
            &state,
            route,
            &record.stable,
            &record.canary,
            record.alias.as_deref(),
        )
        .map_err(|e| e.to_string())
        .and_then(|t| t.set_canary(0));
        let reason = format!(
            "the gateway running it stopped (no heartbeat for {} s), and this one cannot carry on its plan; {}",
            now_ms().saturating_sub(record.beat_at()) / 1000,
            match &back {
                Ok(()) => format!("traffic is back on `{}`", record.stable),
                Err(e) => format!("traffic could not be moved back: {e}"),
            }
        );
        record.seq += 1;
        record.state = "aborted".to_owned();
        record.reason = Some(reason.clone());
        record.canary_weight = 0;
        let detail = json!({ "state": "aborted", "reason": reason });
        if record.history.len() == KEEP {
            record.history.pop_front();
        }
        record.history.push_back(json!({
            "seq": record.seq, "at": now(), "step": record.step, "kind": "aborted", "detail": detail,
        }));
        let Ok(new_text) = serde_json::to_string(&record) else {
            continue;
        };
        match store.swap(SECTION, route, Some(&text), &new_text) {
            Ok(true) => {
                tracing::warn!(route, %reason, "rollout aborted: its gateway stopped");
                let body = record.hook_body("aborted", &detail);
                inner.rollouts.entries().insert(
                    route.to_owned(),
                    Entry {
                        record,
                        handle: None,
                        seen: Some(new_text),
                        start: 0,
                    },
                );
                notify(inner, route, body);
            }
            // Another gateway got there first.
            Ok(false) => {}
            Err(e) => tracing::warn!(route, error = %e, "rollout: stale record not aborted"),
        }
    }
}

/// Takes the lead of `route`'s rollout, whose leader's lease ran out
/// (`record`, read as `text`): claims the record, then carries the plan
/// on from the recorded step and weight. `false` when this gateway cannot
/// run that plan (the route's plan or versions are not the record's, or
/// no runtime), for the caller to abort it; `true` when it leads it now,
/// or another gateway claimed it first, or the store could not be asked.
fn take_over(
    inner: &Arc<Inner>,
    state: &Arc<State>,
    store: &dyn StateStore,
    route: &str,
    record: &Record,
    text: &str,
) -> bool {
    let Some(rc) = state
        .config
        .routes
        .iter()
        .find(|r| r.name == route)
        .and_then(|r| r.rollout.as_ref())
    else {
        return false;
    };
    if rc.plan.steps != record.steps
        || rc.stable != record.stable
        || rc.canary != record.canary
        || rc.alias != record.alias
    {
        return false;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    let Ok(rollout) = route_rollout(inner, route, rc)
        .and_then(|r| r.from_step(record.step, record.canary_weight))
    else {
        return false;
    };
    let silent = now_ms().saturating_sub(record.beat_at());
    let mut next = record.clone();
    next.owner = inner.rollouts.id;
    next.renew();
    let Ok(new_text) = serde_json::to_string(&next) else {
        return false;
    };
    match store.swap(SECTION, route, Some(text), &new_text) {
        Ok(true) => {}
        // Another gateway took it first.
        Ok(false) => return true,
        Err(e) => {
            tracing::warn!(route, error = %e, "rollout: its lead not taken (the store did not answer)");
            return true;
        }
    }
    let manual_pause = record.state == "paused" && record.reason.as_deref() == Some("manual");
    next.lead_from = Some(silent);
    inner.rollouts.entries().insert(
        route.to_owned(),
        Entry {
            record: next,
            handle: None,
            seen: Some(new_text),
            start: 0,
        },
    );
    let _entered = runtime.enter();
    let handle = run(inner, route, rollout);
    if manual_pause {
        handle.pause();
    }
    if let Some(e) = inner.rollouts.entries().get_mut(route) {
        e.handle = Some(handle);
    }
    tracing::warn!(
        route,
        step = record.step,
        silent_ms = silent,
        "rollout: the gateway leading it stopped; this one leads it now"
    );
    true
}

/// Checks every route's `rollout` against the route as built.
pub(crate) fn check(
    config: &super::GatewayConfig,
    routes: &[super::build::BuiltRoute],
    problems: &mut super::build::Problems,
) {
    for (i, rc) in config.routes.iter().enumerate() {
        let Some(plan) = &rc.rollout else { continue };
        let at = format!("routes[{i}].rollout");
        if let Err(e) = crate::rollout::check_plan(&plan.plan) {
            problems.push(format!("{at}.plan"), e);
        }
        let Some(route) = routes.iter().find(|r| r.name == rc.name) else {
            continue;
        };
        let state_free = |stable: &str, canary: &str| -> Result<(), RolloutError> {
            if let Some(alias) = &plan.alias {
                let (_, handle) = route.model.as_ref().ok_or_else(|| {
                    RolloutError::InvalidPlan("`alias` needs a model route".into())
                })?;
                ModelTraffic::new(handle.clone(), alias, stable, canary).map(drop)
            } else {
                let split = route
                    .split
                    .as_ref()
                    .map(|s| s.handle.clone())
                    .or_else(|| route.prompt.as_ref().map(|p| p.split().clone()))
                    .ok_or_else(|| {
                        RolloutError::InvalidPlan(
                            "the route has no split (on a model route, give `alias`)".into(),
                        )
                    })?;
                SplitTraffic::new(split, stable, canary).map(drop)
            }
        };
        if let Err(e) = state_free(&plan.stable, &plan.canary) {
            problems.push(at, e);
        }
    }
    let beat = config.rollouts.heartbeat_ms.unwrap_or(10_000);
    if beat == 0 {
        problems.push("rollouts.heartbeat_ms", "must be above zero");
    } else if config.rollouts.lease_ms.unwrap_or(LEASE_MS) <= beat {
        problems.push(
            "rollouts.lease_ms",
            format!(
                "must be more than `heartbeat_ms` ({beat}), or every leader would lose its lease"
            ),
        );
    }
    for (i, hook) in config.rollouts.webhooks.iter().enumerate() {
        let at = format!("rollouts.webhooks[{i}]");
        if split_url(&hook.url).is_none() {
            problems.push(format!("{at}.url"), "an http:// or https:// URL");
        }
        for name in hook.headers.keys() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push(
                    format!("{at}.headers"),
                    format!("`{name}` is not a header name"),
                );
            }
        }
        for e in &hook.events {
            if !EVENTS.contains(&e.as_str()) {
                problems.push(
                    format!("{at}.events"),
                    format!("unknown event `{e}` (one of {})", EVENTS.join(", ")),
                );
            }
        }
    }
}

/// The events a webhook may ask for.
const EVENTS: [&str; 9] = [
    "started", "step", "paused", "resumed", "skipped", "verdict", "promoted", "aborted", "lead",
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A gateway with a rollout plan on route `api` and a state file as
    /// its store, and the file's directory (to remove).
    fn gateway() -> (crate::gateway::Gateway, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-sweep-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.json");
        let text = format!(
            r#"
[platform]
state_file = "{}"

[upstreams.blue]
url = "http://127.0.0.1:9"
[upstreams.green]
url = "http://127.0.0.1:9"

[[routes]]
name = "api"
split.targets = [
    {{ name = "blue", upstream = "blue", weight = 100 }},
    {{ name = "green", upstream = "green", weight = 0 }},
]
[routes.rollout]
stable = "blue"
canary = "green"
plan.steps = [{{ set_weight = 30 }}, "pause_until_resumed"]
"#,
            file.display()
        );
        let gw = crate::gateway::Gateway::from_config(
            crate::gateway::GatewayConfig::from_toml(&text).unwrap(),
        )
        .unwrap();
        (gw, dir)
    }

    /// A rollout being started here has its entry in place, ours and
    /// running, before its handle is: a sweep that read another gateway's
    /// ended record just before this one's claim must not put that record
    /// over it (it did, once in a while, under a loaded test run: the
    /// started rollout then showed the ended one's record for good).
    #[test]
    fn a_sweep_leaves_a_rollout_being_started_here_its_entry() {
        let (gw, dir) = gateway();
        let inner = &gw.inner;
        let state = inner.state.load_full();
        let plan = state.config.routes[0].rollout.clone().unwrap();
        let (_, store) = state.platform.store.as_ref().unwrap();

        // Another gateway's rollout of the route, ended.
        let mut theirs = Record::idle("api", &plan);
        theirs.state = "aborted".to_owned();
        theirs.owner = inner.rollouts.id ^ 2;
        let stored = serde_json::to_string(&theirs).unwrap();
        assert!(store.swap(SECTION, "api", None, &stored).unwrap());

        // This gateway's, as `start_rollout` puts it before its handle.
        let mut mine = Record::idle("api", &plan);
        mine.state = "running".to_owned();
        mine.owner = inner.rollouts.id;
        mine.renew();
        inner.rollouts.entries().insert(
            "api".to_owned(),
            Entry {
                record: mine,
                handle: None,
                seen: Some(stored),
                start: 0,
            },
        );
        sweep(inner);
        let entries = inner.rollouts.entries();
        let kept = &entries["api"].record;
        assert_eq!(
            (kept.owner, kept.state.as_str()),
            (inner.rollouts.id, "running")
        );
        drop(entries);

        // With no rollout of its own, the gateway shows the ended record.
        inner.rollouts.entries().remove("api");
        sweep(inner);
        let entries = inner.rollouts.entries();
        let shown = &entries["api"].record;
        assert_eq!(
            (shown.owner, shown.state.as_str()),
            (inner.rollouts.id ^ 2, "aborted")
        );
        drop(entries);
        drop(gw);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A start whose claim fails takes its entry away, and only its own:
    /// not one that took its place meanwhile (this gateway's sweep taking
    /// over the route's lapsed record).
    #[test]
    fn a_failed_start_takes_away_only_its_own_entry() {
        let (gw, dir) = gateway();
        let rollouts = &gw.inner.rollouts;
        let plan = gw.inner.state.load().config.routes[0]
            .rollout
            .clone()
            .unwrap();
        let entry = |start| Entry {
            record: Record::idle("api", &plan),
            handle: None,
            seen: None,
            start,
        };
        rollouts.entries().insert("api".to_owned(), entry(7));
        rollouts.forget_start("api", 7);
        assert!(rollouts.entries().get("api").is_none());
        // Another entry in its place: kept.
        rollouts.entries().insert("api".to_owned(), entry(0));
        rollouts.forget_start("api", 7);
        assert!(rollouts.entries().get("api").is_some());
        drop(gw);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
