//! Weights (and model catalogs' versions and pins, and Redis rate limits'
//! quotas) shared by every replica, through Redis (feature `redis`).
//!
//! A [`Split`](crate::split::Split)'s weights and a model router's alias
//! weights, versions and pins live in each process. Behind a load balancer, promoting green on
//! one replica would leave the others on blue, and a user's sticky pick
//! would depend on which replica answered. [`WeightSync`] keeps them
//! together: it publishes a change made on this replica, by handle, admin
//! API, rollout or reload, when it is made (the handle tells the sync's
//! task; it is also looked for every 100 ms by default, the safety net),
//! and applies a change another replica published: at once when it is
//! announced to the replicas that listen ([`notify`](WeightSyncBuilder::notify)),
//! and in any case at the next round (each second by default). On
//! loopback, three replicas over one Redis all answer with a change
//! 1.6 ms (median; 2.4 ms at most over 100 changes) after it was made on
//! one of them (`benches/propagation.rs`; 79 ms when changes were only
//! found by the check). Replicas with the same
//! weights make the same sticky picks (the pick is a function of the key,
//! the target names and the weights), so once they converge a user lands
//! on the same version whichever replica serves them.
//!
//! ```no_run
//! use switchyard::split::Split;
//! use switchyard::sync::WeightSync;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! # let blue = tower::service_fn(|_: http::Request<()>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(()))
//! # });
//! # let green = blue.clone();
//! let split = Split::builder()
//!     .target("blue", blue, 100)
//!     .target("green", green, 0)
//!     .build()?;
//! let handle = split.handle();
//!
//! let redis = redis::Client::open("redis://127.0.0.1/")?
//!     .get_connection_manager()
//!     .await?;
//! let sync = WeightSync::builder(redis)
//!     .split("checkout", handle.clone())
//!     // Hear the other replicas' changes as they are published.
//!     .notify(redis::Client::open("redis://127.0.0.1/")?)
//!     .build()?;
//! // One round now (a joining replica takes the fleet's weights), then
//! // one every second, and at once on an announcement, for as long as
//! // `task` is kept.
//! sync.sync_once().await;
//! let task = sync.spawn();
//!
//! // On this replica, or any other: every replica follows within a round.
//! handle.promote("green")?;
//! # drop(task);
//! # Ok(())
//! # }
//! ```
//!
//! # How replicas agree
//!
//! Each synced set of weights is one Redis hash holding the weights (JSON,
//! `{"blue":90,"green":10}`) and a version that every publication raises
//! by one, in one atomic script. A replica remembers the last weights it
//! published or applied and the version they had. In a round, for each
//! set:
//!
//! * if its local weights changed since then, it publishes them;
//! * otherwise, if Redis holds a newer version, it applies those weights.
//!
//! Each publication is also announced on the channel `<prefix>changes`.
//! A replica that listens ([`notify`](WeightSyncBuilder::notify), a pub/sub
//! connection of its own) runs a round as soon as another replica
//! announces, so a change reaches it within a few Redis round trips of
//! being made. A change a replica applies enters its rollback history as
//! one made there would: a rollback on any replica undoes the fleet's
//! last change. Announcements are not stored: a replica whose subscription
//! failed or was lost, or whose round failed, subscribes again if need be
//! at its first check a [`timeout`](WeightSyncBuilder::timeout) later and
//! runs a round then, which makes up for what it missed.
//!
//! Two replicas changing the same set within one round both publish; the
//! later version wins, and the other replica applies it in its next round
//! (last writer wins). A replica's first round takes the weights in Redis
//! (a replica that joins or restarts follows the fleet) or, when there are
//! none yet, publishes its own.
//!
//! A Redis that loses its data (a restart without persistence) starts the
//! versions over; replicas take whatever it holds that differs from what
//! they last knew, so they converge again on the first set published.
//!
//! A published set that does not fit this replica (a target or model
//! version it does not have, during a rolling configuration change) is
//! refused and counted ([`WeightSyncStats::refused`]); the replica keeps
//! its weights until a set that fits is published. Weights travel, and a
//! Redis rate limiter's quotas and dry-run
//! ([`rate_limit`](WeightSyncBuilder::rate_limit)), so that every replica
//! checks the shared counts against the same quotas. Counters, pins, the
//! catalog's versions, limiters' allow lists and each replica's rollback
//! history stay local (a rollback is a change like any other, and
//! travels as the weights it sets).
//!
//! # When Redis fails
//!
//! Every replica keeps serving with the weights it has. A round that
//! cannot reach Redis within the timeout (1 s by default) is counted in
//! [`WeightSyncStats::errors`] and the next round tries again: a change
//! made meanwhile is published then, and one made elsewhere is applied
//! then.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::redis_conn::{RedisConnection, RedisTarget};
use futures_core::Stream;

#[cfg(feature = "json")]
use crate::model::ModelHandle;
use crate::ratelimit::Quota;
use crate::ratelimit::redis::RedisRateLimitHandle;
use crate::split::{SplitHandle, Weights};

/// Publishes a set of weights: raises the version and stores the weights
/// in one step, then tells the subscribed replicas. `KEYS[1]`: the hash;
/// `ARGV[1]`: the weights as JSON; `ARGV[2]`: the channel; `ARGV[3]`: the
/// message (the publishing replica's id). Returns the new version.
const PUBLISH: &str = r"
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'weights', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return v
";

/// Reads a set, or, when nothing was published for it yet, publishes
/// this replica's weights as its first version, in one step: a replica
/// that found nothing cannot then publish its unchanged weights over a
/// change another replica published in between (last writer wins only
/// between changes). `KEYS[1]`, `ARGV` as [`PUBLISH`]'s. Returns
/// `{1, version, nil}` when it published, else `{0, version, weights}`
/// as found (`weights` nil when missing).
const READ_OR_CLAIM: &str = r"
local found = redis.call('HMGET', KEYS[1], 'version', 'weights')
if found[1] then
  return {0, found[1], found[2]}
end
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HSET', KEYS[1], 'weights', ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return {1, v, false}
";

/// What [`READ_OR_CLAIM`], or a publish of a change made here, did.
enum Claim {
    /// Published this replica's weights: as the set's first version, or
    /// over a newer one after a change made here.
    Published(u64),
    /// Found the set: its version and weights (`None`: unreadable).
    Found(u64, Option<Doc>),
}

/// What a [`WeightSync`] could not be built with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Two sources were given the same name.
    #[error("two synced sources are named `{0}`")]
    DuplicateName(String),
    /// A name that is empty.
    #[error("a synced source needs a name")]
    EmptyName,
    /// An interval or timeout of zero.
    #[error("the {0} must be above zero")]
    Zero(&'static str),
}

/// The counters of a [`WeightSync`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WeightSyncStats {
    /// Full rounds run to their end.
    pub rounds: u64,
    /// Local changes published.
    pub published: u64,
    /// Changes from other replicas applied here.
    pub applied: u64,
    /// Published sets that did not fit this replica, left unapplied.
    pub refused: u64,
    /// Redis calls that failed or timed out.
    pub errors: u64,
    /// Rounds run at once because another replica announced a change
    /// (with [`notify`](WeightSyncBuilder::notify)).
    pub notified: u64,
}

/// Something whose settings are synced: a split, a model router (each of
/// its aliases), or a Redis rate limiter.
#[derive(Clone)]
pub(crate) enum Source {
    Split(SplitHandle),
    #[cfg(feature = "json")]
    Model(ModelHandle),
    Limit(RedisRateLimitHandle),
    #[cfg(feature = "proxy")]
    Upstream(crate::proxy::Upstream),
    #[cfg(feature = "mirror")]
    Mirror(crate::mirror::MirrorHandle),
}

impl Source {
    /// Every set of weights this source has, by its key suffix.
    fn sets(&self, name: &str) -> Vec<(String, Set)> {
        match self {
            Source::Split(h) => vec![(format!("split:{}", escape(name)), Set::Split(h.clone()))],
            // The catalog's versions and pins first, so that a version
            // added is there before an alias's weights name it.
            #[cfg(feature = "json")]
            Source::Model(h) => {
                std::iter::once((format!("catalog:{}", escape(name)), Set::Catalog(h.clone())))
                    .chain(h.catalog().aliases.iter().map(|a| {
                        (
                            format!("model:{}:{}", escape(name), escape(&a.name)),
                            Set::Alias(h.clone(), a.name.clone()),
                        )
                    }))
                    .collect()
            }
            Source::Limit(h) => vec![(format!("limit:{}", escape(name)), Set::Limit(h.clone()))],
            #[cfg(feature = "proxy")]
            Source::Upstream(u) => vec![(
                format!("upstream:{}", escape(name)),
                Set::Endpoints(u.clone()),
            )],
            #[cfg(feature = "mirror")]
            Source::Mirror(h) => vec![(format!("mirror:{}", escape(name)), Set::Mirror(h.clone()))],
        }
    }
}

impl Source {
    /// Tells `listener` of each change to this source's settings.
    fn listen(&self, listener: &Arc<dyn crate::signal::Listener>) {
        match self {
            Source::Split(h) => h.listen(listener),
            #[cfg(feature = "json")]
            Source::Model(h) => h.listen(listener),
            Source::Limit(h) => h.listen(listener),
            #[cfg(feature = "proxy")]
            Source::Upstream(u) => u.listen(listener),
            #[cfg(feature = "mirror")]
            Source::Mirror(h) => h.listen(listener),
        }
    }
}

/// Wakes a sync's task when a synced setting changes on this replica, so
/// that it publishes the change at once (the check every
/// [`check_interval`](WeightSyncBuilder::check_interval) stays as the
/// safety net). Changes coalesce: one pending wake is enough.
struct Wake(tokio::sync::mpsc::Sender<()>);

impl crate::signal::Listener for Wake {
    fn changed(&self) {
        let _ = self.0.try_send(());
    }
}

/// One synced set: weights, a model catalog's versions and pins, or a
/// limiter's quotas and dry-run.
enum Set {
    Split(SplitHandle),
    #[cfg(feature = "json")]
    Alias(ModelHandle, String),
    #[cfg(feature = "json")]
    Catalog(ModelHandle),
    Limit(RedisRateLimitHandle),
    #[cfg(feature = "proxy")]
    Endpoints(crate::proxy::Upstream),
    #[cfg(feature = "mirror")]
    Mirror(crate::mirror::MirrorHandle),
}

impl Set {
    /// The set as it is here, as the JSON published for it.
    fn doc(&self) -> Option<Doc> {
        let weights = match self {
            Set::Split(h) => h.weights(),
            #[cfg(feature = "json")]
            Set::Alias(h, alias) => h.weights(alias)?,
            #[cfg(feature = "json")]
            Set::Catalog(h) => {
                let catalog = h.catalog();
                return Some(serde_json::json!({
                    "models": catalog.models,
                    "pins": catalog.pins,
                }));
            }
            Set::Limit(h) => return Some(limit_doc(h)),
            #[cfg(feature = "proxy")]
            Set::Endpoints(u) => return Some(endpoints_doc(u)),
            #[cfg(feature = "mirror")]
            Set::Mirror(h) => return Some(serde_json::json!({ "percent": h.percent() })),
        };
        serde_json::to_value(weights).ok()
    }

    /// Applies `doc`; `false` when it does not fit.
    fn apply(&self, doc: &Doc) -> bool {
        match self {
            Set::Split(h) => weights_of(doc).is_some_and(|w| h.set_weights(w.iter()).is_ok()),
            #[cfg(feature = "json")]
            Set::Alias(h, alias) => {
                weights_of(doc).is_some_and(|w| h.set_weights(alias, w.iter()).is_ok())
            }
            #[cfg(feature = "json")]
            Set::Catalog(h) => {
                catalog_of(doc).is_some_and(|c| h.apply_synced(Some(c), Vec::new()).is_ok())
            }
            Set::Limit(h) => apply_limit(h, doc),
            #[cfg(feature = "proxy")]
            Set::Endpoints(u) => apply_endpoints(u, doc),
            #[cfg(feature = "mirror")]
            Set::Mirror(h) => match doc["percent"].as_f64() {
                Some(p) if (0.0..=100.0).contains(&p) => {
                    h.set_percent(p);
                    true
                }
                _ => false,
            },
        }
    }
}

/// What a set is published as: JSON (weights as `{"blue":90,"green":10}`;
/// a limiter as `{"quotas":[{"name":..,"count":..,"period_us":..,"burst":..}],"dry_run":false}`).
type Doc = serde_json::Value;

/// A catalog set's versions and pins (`{"models": [..], "pins": [..]}`).
#[cfg(feature = "json")]
fn catalog_of(doc: &Doc) -> Option<(Vec<crate::model::Model>, Vec<crate::model::Pin>)> {
    let models = serde_json::from_value(doc["models"].clone()).ok()?;
    let pins = serde_json::from_value(doc["pins"].clone()).ok()?;
    Some((models, pins))
}

fn weights_of(doc: &Doc) -> Option<Weights> {
    serde_json::from_value(doc.clone()).ok()
}

/// A limiter's quotas (periods in whole microseconds, as the Redis
/// limiter counts) and dry-run.
fn limit_doc(h: &RedisRateLimitHandle) -> Doc {
    let quotas: Vec<Doc> = h
        .quotas()
        .iter()
        .map(|q| {
            serde_json::json!({
                "name": q.name(),
                "count": q.count(),
                "period_us": u64::try_from(q.period().as_micros()).unwrap_or(u64::MAX),
                "burst": q.burst_size(),
            })
        })
        .collect();
    serde_json::json!({ "quotas": quotas, "dry_run": h.dry_run() })
}

/// Sets a limiter's quotas and dry-run from `doc`; `false` when it does not
/// fit (unreadable, or quotas the limiter refuses).
fn apply_limit(h: &RedisRateLimitHandle, doc: &Doc) -> bool {
    let quota = |q: &Doc| -> Option<Quota> {
        let count = u32::try_from(q["count"].as_u64()?).ok()?;
        let burst = u32::try_from(q["burst"].as_u64()?).ok()?;
        let period = Duration::from_micros(q["period_us"].as_u64()?);
        Some(
            Quota::new(count, period)
                .burst(burst)
                .named(q["name"].as_str()?),
        )
    };
    let Some(quotas) = doc["quotas"]
        .as_array()
        .and_then(|qs| qs.iter().map(quota).collect::<Option<Vec<_>>>())
    else {
        return false;
    };
    let Some(dry_run) = doc["dry_run"].as_bool() else {
        return false;
    };
    if h.set_quotas(quotas).is_err() {
        return false;
    }
    h.set_dry_run(dry_run);
    true
}

/// An upstream's endpoints: `[{"key":..,"authority":..,"host":..,"weight":..}]`
/// (`host` null when it is the authority), in the set's order.
#[cfg(feature = "proxy")]
fn endpoints_doc(u: &crate::proxy::Upstream) -> Doc {
    let list: Vec<Doc> = u
        .endpoint_specs()
        .into_iter()
        .map(|(key, spec)| {
            serde_json::json!({
                "key": key,
                "authority": spec.authority,
                "host": spec.host,
                "weight": spec.weight,
            })
        })
        .collect();
    Doc::Array(list)
}

/// Makes an upstream's set the one `doc` lists; `false` when it does not
/// fit (unreadable, or an address the upstream refuses).
#[cfg(feature = "proxy")]
fn apply_endpoints(u: &crate::proxy::Upstream, doc: &Doc) -> bool {
    // Only what `endpoints_doc` writes: a weight of 1 or more, a `Host`
    // other than the authority (else this replica would read back another
    // document than it applied, and publish it again).
    let spec = |e: &Doc| -> Option<(String, crate::proxy::EndpointSpec)> {
        let authority = e["authority"].as_str()?;
        let weight = u32::try_from(e["weight"].as_u64()?)
            .ok()
            .filter(|w| *w > 0)?;
        let mut spec = crate::proxy::EndpointSpec::new(authority).weight(weight);
        match &e["host"] {
            Doc::Null => {}
            Doc::String(host) if host != authority => spec = spec.host(host.as_str()),
            _ => return None,
        }
        Some((e["key"].as_str()?.to_owned(), spec))
    };
    let Some(list) = doc
        .as_array()
        .and_then(|l| l.iter().map(spec).collect::<Option<Vec<_>>>())
    else {
        return false;
    };
    u.set_endpoints(list).is_ok()
}

/// `:` and `%` escaped, so that names made of parts never collide.
fn escape(name: &str) -> String {
    name.replace('%', "%25").replace(':', "%3A")
}

/// The same document (objects compare whatever their key order).
fn same(a: &Doc, b: &Doc) -> bool {
    a == b
}

/// Applies, router by router, the refused catalog and alias sets of each
/// model router in one change (what Redis holds of each); how many sets
/// were applied.
#[cfg(feature = "json")]
fn apply_jointly(all: &[(String, Set)], known: &mut HashMap<String, Known>) -> usize {
    let mut done = 0;
    let mut handled: Vec<&ModelHandle> = Vec::new();
    for (_, set) in all {
        let (Set::Catalog(h) | Set::Alias(h, _)) = set else {
            continue;
        };
        if handled.iter().any(|seen| seen.same_router(h)) {
            continue;
        }
        handled.push(h);
        let mut models_and_pins = None;
        let mut aliases = Vec::new();
        let mut keys = Vec::new();
        for (key, set) in all {
            let remote = match known.get(key) {
                Some(Known {
                    refused: true,
                    redis: Some((_, Some(doc))),
                    ..
                }) => doc.clone(),
                _ => continue,
            };
            match set {
                Set::Catalog(other) if other.same_router(h) => {
                    let Some(catalog) = catalog_of(&remote) else {
                        continue;
                    };
                    models_and_pins = Some(catalog);
                }
                Set::Alias(other, alias) if other.same_router(h) => {
                    let Some(weights) = weights_of(&remote) else {
                        continue;
                    };
                    aliases.push((alias.clone(), weights));
                }
                _ => continue,
            }
            keys.push((key.clone(), remote));
        }
        if keys.len() < 2 || h.apply_synced(models_and_pins, aliases).is_err() {
            continue;
        }
        for (key, remote) in keys {
            if let Some(k) = known.get_mut(&key) {
                k.last = Some(remote);
                k.refused = false;
                done += 1;
            }
        }
    }
    done
}

/// What syncing one set came to.
enum Outcome {
    /// Another replica's change, applied here.
    Applied,
    /// Redis's set does not fit here (counted by the round, which may try
    /// it again).
    Refused,
    /// Published, unchanged, or failed (counted as an error).
    Other,
}

/// What a replica remembers of one set between rounds.
#[derive(Debug, Default)]
struct Known {
    /// The weights it last published or applied (or found, before its
    /// first successful round, or kept when it refused Redis's).
    last: Option<Doc>,
    /// Whether Redis's set was refused here, and not replaced since (by
    /// one that fitted, or one published from here).
    refused: bool,
    /// What Redis held when it last looked: the version, and the weights
    /// (`None` if unreadable). `None` before the first successful round.
    redis: Option<(u64, Option<Doc>)>,
}

/// What a round works with: the connection, the client to subscribe with
/// (for [`notify`](WeightSyncBuilder::notify)), and the sources.
pub(crate) struct Round {
    pub(crate) redis: RedisConnection,
    pub(crate) notify: Option<RedisTarget>,
    pub(crate) sources: Vec<(String, Source)>,
}

type Sources = Box<dyn Fn() -> Option<Round> + Send + Sync>;

struct Inner {
    sources: Sources,
    prefix: String,
    interval: Duration,
    check: Duration,
    timeout: Duration,
    script: redis::Script,
    /// [`READ_OR_CLAIM`].
    read_or_claim: redis::Script,
    /// This replica's id in change announcements (its own are ignored).
    id: String,
    known: tokio::sync::Mutex<HashMap<String, Known>>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    rounds: AtomicU64,
    published: AtomicU64,
    applied: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    notified: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Keeps weights the same on every replica through Redis; see the
/// [module docs](self). Cheap to clone: clones share the state.
#[derive(Clone)]
pub struct WeightSync {
    inner: Arc<Inner>,
}

impl fmt::Debug for WeightSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightSync")
            .field("prefix", &self.inner.prefix)
            .field("interval", &self.inner.interval)
            .finish_non_exhaustive()
    }
}

impl WeightSync {
    /// A builder over this connection (a `redis::aio::ConnectionManager`,
    /// which reconnects by itself, or a
    /// [`RedisConnection`] to a
    /// cluster or through Sentinel); add the splits and model routers to
    /// sync.
    pub fn builder(redis: impl Into<RedisConnection>) -> WeightSyncBuilder {
        WeightSyncBuilder {
            redis: redis.into(),
            sources: Vec::new(),
            prefix: "switchyard:weights:".to_owned(),
            interval: Duration::from_secs(1),
            check: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
            notify: None,
        }
    }

    /// A sync whose connection and sources are read at every round (the
    /// gateway's, which change on reload); `None` skips the round.
    pub(crate) fn dynamic(
        sources: impl Fn() -> Option<Round> + Send + Sync + 'static,
        prefix: String,
        interval: Duration,
        check: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                sources: Box::new(sources),
                prefix,
                interval,
                check,
                timeout,
                script: redis::Script::new(PUBLISH),
                read_or_claim: redis::Script::new(READ_OR_CLAIM),
                id: format!("{:016x}", rand::random::<u64>()),
                known: tokio::sync::Mutex::default(),
                counters: Counters::default(),
            }),
        }
    }

    /// Runs one round: publishes what changed here, applies what changed
    /// elsewhere. Rounds never overlap: a second call waits for the first.
    pub async fn sync_once(&self) {
        self.round(true).await;
    }

    /// A full round, or (`full` false) only the publication of what
    /// changed here, which asks Redis nothing when nothing did; `false`
    /// when Redis failed for some set.
    async fn round(&self, full: bool) -> bool {
        let inner = &*self.inner;
        let Some(Round {
            mut redis, sources, ..
        }) = (inner.sources)()
        else {
            return true;
        };
        let mut known = inner.known.lock().await;
        let errors = inner.counters.errors.load(Ordering::Relaxed);
        let (mut all, mut refused, mut applied) = (Vec::new(), 0, false);
        for (name, source) in &sources {
            for (suffix, set) in source.sets(name) {
                let key = format!("{}{suffix}", inner.prefix);
                let Some(local) = set.doc() else {
                    continue;
                };
                let entry = known.entry(key.clone()).or_default();
                let changed_here = entry.last.as_ref().is_some_and(|last| !same(last, &local));
                if full || changed_here {
                    match self.sync_set(&mut redis, &key, &set, local, entry).await {
                        Outcome::Refused => refused += 1,
                        Outcome::Applied => applied = true,
                        Outcome::Other => {}
                    }
                }
                all.push((key, set));
            }
        }
        // A set may not fit until another is applied: an alias's weights
        // naming a version the catalog's set adds, or a catalog retiring
        // a version an alias still names until its set comes. Once
        // something was applied, the sets Redis holds that were refused
        // (in this round or an earlier one) are tried again.
        if applied {
            for (key, set) in &all {
                let (Some(local), Some(entry)) = (set.doc(), known.get_mut(key)) else {
                    continue;
                };
                if !entry.refused {
                    continue;
                }
                // Read again, as if never seen.
                entry.redis = None;
                if let Outcome::Refused = self.sync_set(&mut redis, key, set, local, entry).await {
                    refused += 1;
                }
            }
        }
        // Sets of one model router that fit only together (a pin moved
        // off a version an alias's new weights leave): applied together.
        #[cfg(feature = "json")]
        if refused >= 2 {
            let joined = apply_jointly(&all, &mut known);
            refused -= joined;
            for _ in 0..joined {
                Counters::add(&inner.counters.applied);
            }
        }
        for _ in 0..refused {
            Counters::add(&inner.counters.refused);
        }
        // Sets that went away (a route or alias removed) are forgotten.
        known.retain(|k, _| all.iter().any(|(key, _)| key == k));
        // Counted when done: a replica that "ran a round" has published
        // or taken every set.
        if full {
            Counters::add(&inner.counters.rounds);
        }
        // Rounds never overlap (`known` is held), so a new error is this
        // round's.
        inner.counters.errors.load(Ordering::Relaxed) == errors
    }

    async fn sync_set(
        &self,
        redis: &mut RedisConnection,
        key: &str,
        set: &Set,
        local: Doc,
        known: &mut Known,
    ) -> Outcome {
        let c = &self.inner.counters;
        let changed_here = known.last.as_ref().is_some_and(|last| !same(last, &local));
        // Changed here: publish. Otherwise read what Redis holds, or claim
        // the set as its first publisher.
        let claim = if changed_here {
            self.publish(redis, key, &local).await.map(Claim::Published)
        } else {
            self.read_or_claim(redis, key, &local).await
        };
        let (version, remote) = match claim {
            Ok(Claim::Published(version)) => {
                Counters::add(&c.published);
                known.refused = false;
                known.redis = Some((version, Some(local.clone())));
                known.last = Some(local);
                return Outcome::Other;
            }
            Ok(Claim::Found(version, remote)) => (version, remote),
            Err(()) => {
                Counters::add(&c.errors);
                // Remember what was found, so that a change made while
                // Redis is away is published when it is back.
                known.last.get_or_insert(local);
                return Outcome::Other;
            }
        };
        // Nothing new in Redis since this replica last looked. (Any other
        // difference is news: a newer version, or, from a Redis that lost
        // its data and started over, an older or equal one.)
        let unchanged = known.redis.as_ref().is_some_and(|(v, w)| {
            *v == version
                && match (w, &remote) {
                    (Some(a), Some(b)) => same(a, b),
                    (None, None) => true,
                    _ => false,
                }
        });
        if unchanged {
            return Outcome::Other;
        }
        known.redis = Some((version, remote.clone()));
        let Some(remote) = remote else {
            // Unreadable weights: wait for the next publication.
            known.last = Some(local);
            known.refused = true;
            return Outcome::Refused;
        };
        if same(&remote, &local) {
            known.last = Some(local);
            known.refused = false;
            Outcome::Other
        } else if set.doc().is_some_and(|now| !same(&now, &local)) {
            // Changed here while Redis was asked: that change is newer,
            // and the next round publishes it.
            known.last = Some(local);
            Outcome::Other
        } else if set.apply(&remote) {
            Counters::add(&c.applied);
            known.last = Some(remote);
            known.refused = false;
            Outcome::Applied
        } else {
            known.last = Some(local);
            known.refused = true;
            Outcome::Refused
        }
    }

    async fn publish(&self, redis: &mut RedisConnection, key: &str, doc: &Doc) -> Result<u64, ()> {
        let json = serde_json::to_string(doc).map_err(|_| ())?;
        let mut invocation = self.inner.script.key(key);
        invocation.arg(json).arg(self.channel()).arg(&self.inner.id);
        let run = invocation.invoke_async::<u64>(redis);
        match tokio::time::timeout(self.inner.timeout, run).await {
            Ok(Ok(version)) => Ok(version),
            _ => Err(()),
        }
    }

    /// The version and weights in Redis or, when nothing was published
    /// yet, `local` published as the first version (see
    /// [`READ_OR_CLAIM`]).
    async fn read_or_claim(
        &self,
        redis: &mut RedisConnection,
        key: &str,
        local: &Doc,
    ) -> Result<Claim, ()> {
        let json = serde_json::to_string(local).map_err(|_| ())?;
        let mut invocation = self.inner.read_or_claim.key(key);
        invocation.arg(json).arg(self.channel()).arg(&self.inner.id);
        let run = invocation.invoke_async::<(u8, u64, Option<String>)>(redis);
        let (published, version, json) = match tokio::time::timeout(self.inner.timeout, run).await {
            Ok(Ok(found)) => found,
            _ => return Err(()),
        };
        if published == 1 {
            return Ok(Claim::Published(version));
        }
        let remote = json.and_then(|j| serde_json::from_str(&j).ok());
        Ok(Claim::Found(version, remote))
    }

    /// The channel changes are announced on.
    fn channel(&self) -> String {
        format!("{}changes", self.inner.prefix)
    }

    /// Remembers each set as it is now, before the first round: a change
    /// made here from now on, even before that round, is a change to
    /// publish (a rollout's weight, an admin's), not the local state a
    /// joining replica gives up for the fleet's. Sets already known are
    /// left as they are.
    fn seed(&self) {
        let inner = &*self.inner;
        let Some(Round { sources, .. }) = (inner.sources)() else {
            return;
        };
        // Nothing runs yet when a sync is spawned: the lock is free.
        let Ok(mut known) = inner.known.try_lock() else {
            return;
        };
        for (name, source) in &sources {
            for (suffix, set) in source.sets(name) {
                if let Some(local) = set.doc() {
                    let entry = known
                        .entry(format!("{}{suffix}", inner.prefix))
                        .or_default();
                    entry.last.get_or_insert(local);
                }
            }
        }
    }

    /// Runs on the current Tokio runtime, until the returned task is
    /// dropped or [aborted](SyncTask::abort): a round every
    /// [`interval`](WeightSyncBuilder::interval); every
    /// [`check_interval`](WeightSyncBuilder::check_interval), the
    /// publication of what changed here; and, with
    /// [`notify`](WeightSyncBuilder::notify), a round as soon as another
    /// replica announces a change.
    pub fn spawn(&self) -> SyncTask {
        self.seed();
        let this = self.clone();
        SyncTask(tokio::spawn(async move {
            let (tx, mut changed) = tokio::sync::mpsc::channel(1);
            let wake: Arc<dyn crate::signal::Listener> = Arc::new(Wake(tx));
            this.listen(&wake);
            let ticker = |every: Duration| {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            };
            let (mut full, mut check) = (ticker(this.inner.interval), ticker(this.inner.check));
            let mut changes: Option<Changes> = None;
            // When to catch up after a failed round or a failed or lost
            // subscription: subscribe again if need be, then a full round,
            // at a check a timeout later, not at the next round (an hour
            // away, maybe), so that a replica is behind for seconds at
            // most.
            let mut retry: Option<tokio::time::Instant> = None;
            loop {
                let event = std::future::poll_fn(|cx| {
                    if changed.poll_recv(cx).is_ready() {
                        return Poll::Ready(Event::Changed);
                    }
                    if full.poll_tick(cx).is_ready() {
                        return Poll::Ready(Event::Round);
                    }
                    if let Some(stream) = &mut changes {
                        match stream.as_mut().poll_next(cx) {
                            Poll::Ready(Some(msg)) => return Poll::Ready(Event::Announced(msg)),
                            Poll::Ready(None) => return Poll::Ready(Event::Lost),
                            Poll::Pending => {}
                        }
                    }
                    if check.poll_tick(cx).is_ready() {
                        return Poll::Ready(Event::Check);
                    }
                    Poll::Pending
                })
                .await;
                match event {
                    // Published now, not at the next check.
                    Event::Changed => {
                        this.round(false).await;
                    }
                    Event::Round => {
                        retry = this.full_round(&mut changes).await;
                        // Sources a reload brought are listened to too.
                        this.listen(&wake);
                    }
                    Event::Announced(msg) => {
                        let id = this.inner.id.as_bytes();
                        let mut others = msg.get_payload_bytes() != id;
                        if let Some(stream) = &mut changes {
                            let (more, ended) = drain(stream, id);
                            others |= more;
                            if ended {
                                changes = None;
                                retry = Some(tokio::time::Instant::now());
                            }
                        }
                        if others {
                            Counters::add(&this.inner.counters.notified);
                            if !this.round(true).await {
                                retry = Some(this.retry_at());
                            }
                        }
                    }
                    Event::Lost => {
                        changes = None;
                        retry = Some(tokio::time::Instant::now());
                    }
                    Event::Check => match retry {
                        // What was announced while deaf, or what the failed
                        // round missed.
                        Some(at) if tokio::time::Instant::now() >= at => {
                            retry = this.full_round(&mut changes).await;
                        }
                        // A publication that fails is tried again at the
                        // next check anyway (the change is still new).
                        _ => {
                            this.round(false).await;
                        }
                    },
                }
            }
        }))
    }

    /// Listens to every source's changes (again: a reload may have
    /// brought new ones; a source already listened to is not added twice).
    fn listen(&self, wake: &Arc<dyn crate::signal::Listener>) {
        if let Some(round) = (self.inner.sources)() {
            for (_, source) in &round.sources {
                source.listen(wake);
            }
        }
    }

    /// Subscribes if `changes` has no stream (before the round reads, so
    /// that no change published meanwhile goes unheard), then runs a full
    /// round; when to try again if either failed.
    async fn full_round(&self, changes: &mut Option<Changes>) -> Option<tokio::time::Instant> {
        let mut retry = None;
        if changes.is_none() {
            match self.subscribe().await {
                Ok(stream) => *changes = stream,
                Err(()) => retry = Some(self.retry_at()),
            }
        }
        if !self.round(true).await {
            retry = Some(self.retry_at());
        }
        retry
    }

    /// When a failed subscription or round is tried again.
    fn retry_at(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.inner.timeout
    }

    /// The stream of change announcements when notifications are on
    /// (`None` when they are off), or `Err` when Redis did not answer.
    async fn subscribe(&self) -> Result<Option<Changes>, ()> {
        let Some(target) = (self.inner.sources)().and_then(|s| s.notify) else {
            return Ok(None);
        };
        // Bounded by the target's own timeout, for each node it tries.
        match target.subscribe(&self.channel()).await {
            Ok(stream) => Ok(Some(stream)),
            _ => {
                Counters::add(&self.inner.counters.errors);
                Err(())
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> WeightSyncStats {
        let c = &self.inner.counters;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WeightSyncStats {
            rounds: read(&c.rounds),
            published: read(&c.published),
            applied: read(&c.applied),
            refused: read(&c.refused),
            errors: read(&c.errors),
            notified: read(&c.notified),
        }
    }
}

/// Change announcements from other replicas.
type Changes = Pin<Box<dyn Stream<Item = redis::Msg> + Send>>;

/// What the spawned task does next.
enum Event {
    Changed,
    Round,
    Check,
    Announced(redis::Msg),
    Lost,
}

/// Takes the announcements already waiting (one round covers them all):
/// whether one came from another replica than `id`, and whether the
/// stream ended.
fn drain(changes: &mut Changes, id: &[u8]) -> (bool, bool) {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut others = false;
    loop {
        match changes.as_mut().poll_next(&mut cx) {
            Poll::Ready(Some(msg)) => others |= msg.get_payload_bytes() != id,
            Poll::Ready(None) => return (others, true),
            Poll::Pending => return (others, false),
        }
    }
}

/// The background rounds of a [`WeightSync`]; dropping it stops them.
#[derive(Debug)]
pub struct SyncTask(tokio::task::JoinHandle<()>);

impl SyncTask {
    /// Stops the rounds (as dropping does).
    pub fn abort(&self) {
        self.0.abort();
    }
}

impl Drop for SyncTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Builds a [`WeightSync`]; see [`WeightSync::builder`].
pub struct WeightSyncBuilder {
    redis: RedisConnection,
    sources: Vec<(String, Source)>,
    prefix: String,
    interval: Duration,
    check: Duration,
    timeout: Duration,
    notify: Option<RedisTarget>,
}

impl fmt::Debug for WeightSyncBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightSyncBuilder")
            .field(
                "sources",
                &self.sources.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl WeightSyncBuilder {
    /// Syncs a split's weights under `name`, which must be the same on
    /// every replica (the route's name, say).
    pub fn split(mut self, name: impl Into<String>, handle: SplitHandle) -> Self {
        self.sources.push((name.into(), Source::Split(handle)));
        self
    }

    /// Syncs a Redis rate limiter's quotas and dry-run under `name` (its
    /// allow list stays this replica's own): a change made through its
    /// [handle](crate::ratelimit::redis::RedisRateLimitHandle) on one
    /// replica is made on every other, so that they all check the shared
    /// state against the same quotas.
    pub fn rate_limit(mut self, name: impl Into<String>, handle: RedisRateLimitHandle) -> Self {
        self.sources.push((name.into(), Source::Limit(handle)));
        self
    }

    /// Syncs the weights of every alias of a model router under `name`
    /// (feature `json`), and its catalog's versions and pins: a version
    /// added or retired, or a tenant pinned, on one replica is on every
    /// other (the aliases themselves, and their fallbacks, stay each
    /// replica's configuration). Aliases are read at every round, so one
    /// added later is synced too.
    #[cfg(feature = "json")]
    pub fn model(mut self, name: impl Into<String>, handle: ModelHandle) -> Self {
        self.sources.push((name.into(), Source::Model(handle)));
        self
    }

    /// Syncs an upstream's set of endpoints under `name` (feature
    /// `proxy`): an endpoint added, removed or reweighted on one replica
    /// ([`Upstream::insert_endpoint`](crate::proxy::Upstream::insert_endpoint)
    /// and the others, the admin API's `/upstreams`) is on every other,
    /// leaving and draining there as here. Leave out upstreams that follow
    /// a [discovery](crate::discovery) source: each replica follows it.
    #[cfg(feature = "proxy")]
    pub fn upstream(mut self, name: impl Into<String>, upstream: crate::proxy::Upstream) -> Self {
        self.sources.push((name.into(), Source::Upstream(upstream)));
        self
    }

    /// Syncs a mirror's share (feature `mirror`) under `name`: a change
    /// made on one replica ([`MirrorHandle::set_percent`](crate::mirror::MirrorHandle::set_percent),
    /// the admin API's `/mirrors/{route}/percent`) is made on every other.
    #[cfg(feature = "mirror")]
    pub fn mirror(mut self, name: impl Into<String>, handle: crate::mirror::MirrorHandle) -> Self {
        self.sources.push((name.into(), Source::Mirror(handle)));
        self
    }

    /// The prefix of every Redis key (`switchyard:weights:` by default):
    /// fleets that must not share weights need different prefixes.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How often [`spawn`](WeightSync::spawn)ed rounds run (1 s by
    /// default): how long a change takes to reach every replica, at most.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How often [`spawn`](WeightSync::spawn)ed tasks look for changes
    /// made on this replica, to publish them (100 ms by default): the
    /// safety net, since a change is published when it is made. Looking
    /// reads the weights in memory; Redis is asked only when one changed.
    pub fn check_interval(mut self, every: Duration) -> Self {
        self.check = every;
        self
    }

    /// Announces each publication on a Redis channel (`<prefix>changes`),
    /// and has [`spawn`](WeightSync::spawn)ed tasks listen on it through a
    /// connection of their own to `target` (a `redis::Client` for the same
    /// server as the connection's, or the same
    /// [`RedisTarget`] the connection was
    /// made from: a cluster's node, Sentinel's primary), running a round as soon as another replica
    /// announces a change. A change then reaches every replica within
    /// about one [check interval](Self::check_interval) rather than one
    /// [interval](Self::interval); the rounds every interval go on, for
    /// announcements missed while the subscription was down (it is made
    /// again at the next round).
    ///
    /// Publications are announced whether or not this is set, so replicas
    /// that listen hear the ones that do not.
    pub fn notify(mut self, target: impl Into<RedisTarget>) -> Self {
        self.notify = Some(target.into());
        self
    }

    /// How long one Redis call may take before the round counts it as
    /// failed (1 s by default).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks the names and builds the sync.
    pub fn build(self) -> Result<WeightSync, SyncError> {
        if self.interval.is_zero() {
            return Err(SyncError::Zero("interval"));
        }
        if self.check.is_zero() {
            return Err(SyncError::Zero("check interval"));
        }
        if self.timeout.is_zero() {
            return Err(SyncError::Zero("timeout"));
        }
        for (i, (name, _)) in self.sources.iter().enumerate() {
            if name.is_empty() {
                return Err(SyncError::EmptyName);
            }
            if self.sources[..i].iter().any(|(n, _)| n == name) {
                return Err(SyncError::DuplicateName(name.clone()));
            }
        }
        let (redis, sources, notify) = (self.redis, self.sources, self.notify);
        Ok(WeightSync::dynamic(
            move || {
                Some(Round {
                    redis: redis.clone(),
                    notify: notify.clone(),
                    sources: sources.clone(),
                })
            },
            self.prefix,
            self.interval,
            self.check,
            self.timeout,
        ))
    }
}
