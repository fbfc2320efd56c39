//! Subscriptions: which consumers may call which API, and who decided.
//!
//! A consumer (one [`Identity`], or every identity of a tenant) asks to
//! use an API; the API's [`Policy`] says whether that is granted at once
//! (`open`) or waits for its owners (`approval`). Until a subscription is
//! approved, a [`SubscriptionLayer`] answers the consumer's calls with 403
//! `subscription_required` (problem+json) and a link to ask for access.
//! Owners [`approve`](Subscriptions::approve),
//! [`reject`](Subscriptions::reject) and [`revoke`](Subscriptions::revoke)
//! while the API serves; every decision is logged with who and when, and
//! (with a [`StateStore`]: a file, or Redis shared by
//! replicas) kept across restarts.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use switchyard::auth::Identity;
//! use switchyard::platform::subscription::{Consumer, Policy, Subscriptions};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let subs = Subscriptions::new();
//! let layer = subs.register("orders", Policy::Approval).unwrap();
//! let svc = layer.layer(service_fn(|_: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("orders")))
//! }));
//! let call = || {
//!     let mut req = Request::new(());
//!     req.extensions_mut().insert(Identity::new("alice").with_tenant("shop"));
//!     svc.clone().oneshot(req)
//! };
//!
//! // Not subscribed: 403 subscription_required.
//! assert_eq!(call().await.unwrap().status(), 403);
//!
//! // The shop team asks; the owners approve.
//! let shop = Consumer::tenant("shop");
//! subs.request("orders", &shop, "alice").unwrap();
//! assert_eq!(call().await.unwrap().status(), 403);
//! subs.approve("orders", &shop, "owner-bob").unwrap();
//! assert_eq!(call().await.unwrap().status(), 200);
//!
//! subs.revoke("orders", &shop, "owner-bob").unwrap();
//! assert_eq!(call().await.unwrap().status(), 403);
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::auth::{Identity, key_of};
use crate::future::{Rejection, ResponseFuture};
use crate::problem::Problem;
use crate::state::{StateStore, load_as};

/// Decisions kept per API (the oldest go first).
const MAX_DECISIONS: usize = 1_000;
/// Subscriptions kept per API: past this, new requests are refused, so a
/// caller cannot grow the table (and the state file) without bound.
pub const MAX_SUBSCRIPTIONS: usize = 10_000;
/// The section of a state file that subscriptions are kept in (one entry
/// per API, keyed by its name).
const SECTION: &str = "subscriptions";

// === Consumer, policy, status ===

/// Who subscribes: one identity, or every identity of a tenant.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum Consumer {
    /// The identity `id` (of `tenant`, when it has one: `alice` of
    /// tenant `shop` is not `alice` of tenant `bank`).
    Identity {
        /// The [`Identity::id`].
        id: String,
        /// The [`Identity::tenant`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
    },
    /// Every identity whose [`Identity::tenant`] is this.
    Tenant {
        /// The tenant.
        tenant: String,
    },
}

impl Consumer {
    /// The identity `id`, of no tenant.
    pub fn identity(id: impl Into<String>) -> Self {
        Consumer::Identity {
            id: id.into(),
            tenant: None,
        }
    }

    /// The identity `id` of `tenant`.
    pub fn member(tenant: impl Into<String>, id: impl Into<String>) -> Self {
        Consumer::Identity {
            id: id.into(),
            tenant: Some(tenant.into()),
        }
    }

    /// Every identity of `tenant`.
    pub fn tenant(tenant: impl Into<String>) -> Self {
        Consumer::Tenant {
            tenant: tenant.into(),
        }
    }

    /// The consumer that is exactly this identity.
    pub fn of(identity: &Identity) -> Self {
        Consumer::Identity {
            id: identity.id().to_owned(),
            tenant: identity.tenant().map(str::to_owned),
        }
    }

    /// Whether calls by `identity` are this consumer's.
    pub fn covers(&self, identity: &Identity) -> bool {
        match self {
            Consumer::Identity { id, tenant } => {
                identity.id() == id && identity.tenant() == tenant.as_deref()
            }
            Consumer::Tenant { tenant } => identity.tenant() == Some(tenant.as_str()),
        }
    }

    fn check(&self) -> Result<(), SubscriptionError> {
        let empty = match self {
            Consumer::Identity { id, tenant } => id.is_empty() || tenant.as_deref() == Some(""),
            Consumer::Tenant { tenant } => tenant.is_empty(),
        };
        if empty {
            return Err(SubscriptionError::BadConsumer);
        }
        Ok(())
    }
}

impl fmt::Display for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Consumer::Identity { id, tenant: None } => write!(f, "identity `{id}`"),
            Consumer::Identity {
                id,
                tenant: Some(t),
            } => write!(f, "identity `{id}` of tenant `{t}`"),
            Consumer::Tenant { tenant } => write!(f, "tenant `{tenant}`"),
        }
    }
}

/// How an API grants access.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// A request is approved when it is made.
    Open,
    /// A request waits for an owner to approve it.
    #[default]
    Approval,
}

/// Where a subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Asked for, not decided.
    Pending,
    /// Calls pass.
    Approved,
    /// Refused; the consumer may ask again.
    Rejected,
    /// Approved once, then withdrawn; the consumer may ask again.
    Revoked,
}

impl Status {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Revoked => "revoked",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a subscription could not be made or changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubscriptionError {
    /// No API of this name takes subscriptions.
    #[error("no API `{0}` takes subscriptions")]
    UnknownApi(String),
    /// An API was registered twice.
    #[error("API `{0}` is registered twice")]
    Duplicate(String),
    /// An API registered with an empty name.
    #[error("an API needs a name")]
    Unnamed,
    /// A consumer with an empty id or tenant.
    #[error("a consumer needs a non-empty id or tenant")]
    BadConsumer,
    /// The consumer has no subscription to this API.
    #[error("{consumer} has no subscription to API `{api}`")]
    NotFound {
        /// The API.
        api: String,
        /// The consumer.
        consumer: Consumer,
    },
    /// The decision does not apply to the subscription as it stands
    /// (approving a revoked one, revoking a pending one, asking again
    /// while approved or pending).
    #[error("the subscription of {consumer} to API `{api}` is {status}: cannot {action} it")]
    Conflict {
        /// The API.
        api: String,
        /// The consumer.
        consumer: Consumer,
        /// Where it stands.
        status: Status,
        /// What was asked.
        action: &'static str,
    },
    /// The API has as many subscriptions as it keeps.
    #[error("API `{0}` has 10000 subscriptions; no more are kept")]
    Full(String),
    /// The change could not be kept in the state file, so it was not made.
    #[error("the change could not be kept: {0}")]
    State(String),
}

impl SubscriptionError {
    /// The HTTP status an admin API answers this error with.
    pub fn status(&self) -> StatusCode {
        match self {
            SubscriptionError::UnknownApi(_) | SubscriptionError::NotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            SubscriptionError::Conflict { .. } | SubscriptionError::Duplicate(_) => {
                StatusCode::CONFLICT
            }
            SubscriptionError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
            SubscriptionError::State(_) => StatusCode::INTERNAL_SERVER_ERROR,
            SubscriptionError::Unnamed | SubscriptionError::BadConsumer => StatusCode::BAD_REQUEST,
        }
    }
}

// === Records ===

/// One consumer's subscription to one API.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Subscription {
    /// Who.
    pub consumer: Consumer,
    /// Where it stands.
    pub status: Status,
    /// Who asked for it (an identity id, or an admin).
    pub requested_by: String,
    /// When it was last asked for, in Unix seconds.
    pub requested_at: u64,
    /// Who made the last decision on it, if anyone has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// When, in Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<u64>,
}

/// One change to a subscription, as logged.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Decision {
    /// Whose subscription.
    pub consumer: Consumer,
    /// Where it stood (`None` for a first request).
    pub from: Option<Status>,
    /// Where it went.
    pub to: Status,
    /// Who changed it.
    pub by: String,
    /// When, in Unix seconds.
    pub at: u64,
}

/// What a state file keeps of one API's subscriptions.
#[derive(Debug, Default, serde::Deserialize)]
struct Saved {
    subscriptions: Vec<Subscription>,
    decisions: Vec<Decision>,
}

/// [`Saved`], as written.
#[derive(serde::Serialize)]
struct SavedRef<'a> {
    subscriptions: Vec<&'a Subscription>,
    decisions: &'a [Decision],
}

// === Registry ===

/// Who may call, as requests see it: rebuilt on every decision.
#[derive(Debug, Default)]
struct Allowed {
    /// [`Identity::key`]s of approved identities.
    identities: HashSet<String>,
    /// Approved tenants.
    tenants: HashSet<String>,
}

impl Allowed {
    fn of(subs: &BTreeMap<Consumer, Subscription>) -> Self {
        let mut allowed = Allowed::default();
        for sub in subs.values().filter(|s| s.status == Status::Approved) {
            match &sub.consumer {
                Consumer::Identity { id, tenant } => {
                    allowed.identities.insert(key_of(tenant.as_deref(), id));
                }
                Consumer::Tenant { tenant } => {
                    allowed.tenants.insert(tenant.clone());
                }
            }
        }
        allowed
    }

    fn admits(&self, identity: &Identity) -> bool {
        self.identities.contains(identity.key())
            || identity.tenant().is_some_and(|t| self.tenants.contains(t))
    }
}

/// One API's subscriptions.
struct Entry {
    name: String,
    /// [`Policy::Open`] when set.
    open: std::sync::atomic::AtomicBool,
    /// Where a consumer asks for access, shown in refusals.
    request_link: RwLock<Option<String>>,
    allowed: ArcSwap<Allowed>,
    /// The records; the lock also serialises changes.
    book: Mutex<Book>,
    refused: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Book {
    subs: BTreeMap<Consumer, Subscription>,
    decisions: Vec<Decision>,
    /// The state entry's JSON text as this process last saw it.
    seen: Option<String>,
}

/// Changes retried when another writer changed the entry in between.
const RETRIES: usize = 8;

struct Registry {
    apis: RwLock<HashMap<String, Arc<Entry>>>,
    state: Option<Arc<dyn StateStore>>,
}

impl Registry {
    /// Takes what the store holds for `entry`, if it changed since `book`
    /// saw it.
    fn adopt(&self, entry: &Entry, book: &mut Book) -> Result<(), SubscriptionError> {
        let Some(store) = &self.state else {
            return Ok(());
        };
        let loaded = load_as::<Saved>(store.as_ref(), SECTION, &entry.name)
            .map_err(|e| SubscriptionError::State(e.to_string()))?;
        let text = loaded.as_ref().map(|(_, t)| t.clone());
        if text == book.seen {
            return Ok(());
        }
        let saved = loaded.map(|(s, _)| s).unwrap_or_default();
        book.subs = saved
            .subscriptions
            .into_iter()
            .map(|s| (s.consumer.clone(), s))
            .collect();
        book.decisions = saved.decisions;
        book.seen = text;
        entry.allowed.store(Arc::new(Allowed::of(&book.subs)));
        Ok(())
    }
}

/// Every API's subscriptions, shared by the layers that guard the APIs,
/// the catalog where consumers ask for access and the admin API where
/// owners decide. Cloning is cheap; clones share everything.
#[derive(Clone)]
pub struct Subscriptions {
    registry: Arc<Registry>,
}

impl fmt::Debug for Subscriptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriptions")
            .field("apis", &self.apis())
            .finish_non_exhaustive()
    }
}

impl Default for Subscriptions {
    fn default() -> Self {
        Self::new()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Subscriptions {
    /// Subscriptions kept in memory only.
    pub fn new() -> Self {
        Self {
            registry: Arc::new(Registry {
                apis: RwLock::new(HashMap::new()),
                state: None,
            }),
        }
    }

    /// Subscriptions kept in `state` (a [`StateFile`](crate::state::StateFile),
    /// or a Redis store shared by replicas): an API registered here starts
    /// with what the store holds for it.
    pub fn with_state(state: Arc<dyn StateStore>) -> Self {
        Self {
            registry: Arc::new(Registry {
                apis: RwLock::new(HashMap::new()),
                state: Some(state),
            }),
        }
    }

    /// Takes subscriptions to `api` under `policy`, and returns the layer
    /// that guards it. Fails if `api` is registered already, or if the
    /// state file's entry for it cannot be read.
    pub fn register(
        &self,
        api: &str,
        policy: Policy,
    ) -> Result<SubscriptionLayer, SubscriptionError> {
        if api.is_empty() {
            return Err(SubscriptionError::Unnamed);
        }
        let loaded: Option<(Saved, String)> = match &self.registry.state {
            Some(state) => load_as(state.as_ref(), SECTION, api)
                .map_err(|e| SubscriptionError::State(e.to_string()))?,
            None => None,
        };
        let seen = loaded.as_ref().map(|(_, text)| text.clone());
        let saved = loaded.map(|(saved, _)| saved).unwrap_or_default();
        let subs: BTreeMap<Consumer, Subscription> = saved
            .subscriptions
            .into_iter()
            .map(|s| (s.consumer.clone(), s))
            .collect();
        let entry = Arc::new(Entry {
            name: api.to_owned(),
            open: std::sync::atomic::AtomicBool::new(policy == Policy::Open),
            request_link: RwLock::new(None),
            allowed: ArcSwap::from_pointee(Allowed::of(&subs)),
            book: Mutex::new(Book {
                subs,
                decisions: saved.decisions,
                seen,
            }),
            refused: std::sync::atomic::AtomicU64::new(0),
        });
        let mut apis = self
            .registry
            .apis
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if apis.contains_key(api) {
            return Err(SubscriptionError::Duplicate(api.to_owned()));
        }
        apis.insert(api.to_owned(), Arc::clone(&entry));
        Ok(SubscriptionLayer { entry })
    }

    /// Sets where consumers of `api` ask for access: the link that
    /// refusals carry (a catalog sets it to its own subscribe endpoint).
    pub fn set_request_link(
        &self,
        api: &str,
        link: impl Into<String>,
    ) -> Result<(), SubscriptionError> {
        let entry = self.entry(api)?;
        *entry
            .request_link
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(link.into());
        Ok(())
    }

    /// The APIs that take subscriptions, sorted.
    pub fn apis(&self) -> Vec<String> {
        let apis = self.registry.apis.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = apis.keys().cloned().collect();
        names.sort_unstable();
        names
    }

    /// `api`'s policy.
    pub fn policy(&self, api: &str) -> Result<Policy, SubscriptionError> {
        Ok(self.entry(api)?.policy())
    }

    /// Changes `api`'s policy: requests made from now on follow it (a
    /// pending one stays pending until decided).
    pub fn set_policy(&self, api: &str, policy: Policy) -> Result<(), SubscriptionError> {
        self.entry(api)?
            .open
            .store(policy == Policy::Open, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The layer that guards `api`, registered already.
    pub fn layer(&self, api: &str) -> Result<SubscriptionLayer, SubscriptionError> {
        Ok(SubscriptionLayer {
            entry: self.entry(api)?,
        })
    }

    /// `consumer` asks to use `api` (`by` is who asked): pending, or
    /// approved at once if the API is open. Asking again after a
    /// rejection or a revocation is allowed; while pending or approved it
    /// is a [`Conflict`](SubscriptionError::Conflict).
    pub fn request(
        &self,
        api: &str,
        consumer: &Consumer,
        by: &str,
    ) -> Result<Subscription, SubscriptionError> {
        self.request_at(api, consumer, by, now())
    }

    /// The same, dated `at` (Unix seconds).
    pub fn request_at(
        &self,
        api: &str,
        consumer: &Consumer,
        by: &str,
        at: u64,
    ) -> Result<Subscription, SubscriptionError> {
        consumer.check()?;
        let entry = self.entry(api)?;
        let to = match entry.policy() {
            Policy::Open => Status::Approved,
            Policy::Approval => Status::Pending,
        };
        self.change(&entry, consumer, "request", by, at, |old| match old {
            None | Some(Status::Rejected | Status::Revoked) => Ok(to),
            Some(_) => Err(()),
        })
    }

    /// An owner (`by`) approves `consumer`'s pending (or rejected)
    /// request for `api`.
    pub fn approve(
        &self,
        api: &str,
        consumer: &Consumer,
        by: &str,
    ) -> Result<Subscription, SubscriptionError> {
        self.decide(api, consumer, "approve", by, now(), |s| {
            matches!(s, Status::Pending | Status::Rejected).then_some(Status::Approved)
        })
    }

    /// An owner rejects `consumer`'s pending request for `api`.
    pub fn reject(
        &self,
        api: &str,
        consumer: &Consumer,
        by: &str,
    ) -> Result<Subscription, SubscriptionError> {
        self.decide(api, consumer, "reject", by, now(), |s| {
            (s == Status::Pending).then_some(Status::Rejected)
        })
    }

    /// An owner withdraws `consumer`'s approved subscription to `api`:
    /// its calls that start after this returns are refused.
    pub fn revoke(
        &self,
        api: &str,
        consumer: &Consumer,
        by: &str,
    ) -> Result<Subscription, SubscriptionError> {
        self.decide(api, consumer, "revoke", by, now(), |s| {
            (s == Status::Approved).then_some(Status::Revoked)
        })
    }

    /// `api`'s subscriptions, by consumer.
    pub fn list(&self, api: &str) -> Result<Vec<Subscription>, SubscriptionError> {
        let entry = self.entry(api)?;
        let book = entry.book.lock().unwrap_or_else(|e| e.into_inner());
        Ok(book.subs.values().cloned().collect())
    }

    /// `consumer`'s subscription to `api`, if it has one.
    pub fn get(
        &self,
        api: &str,
        consumer: &Consumer,
    ) -> Result<Option<Subscription>, SubscriptionError> {
        let entry = self.entry(api)?;
        let book = entry.book.lock().unwrap_or_else(|e| e.into_inner());
        Ok(book.subs.get(consumer).cloned())
    }

    /// `api`'s decisions, oldest first (the last 1,000).
    pub fn decisions(&self, api: &str) -> Result<Vec<Decision>, SubscriptionError> {
        let entry = self.entry(api)?;
        let book = entry.book.lock().unwrap_or_else(|e| e.into_inner());
        Ok(book.decisions.clone())
    }

    /// Whether calls by `identity` to `api` pass (its own subscription or
    /// its tenant's is approved). `false` for an API not registered.
    pub fn admits(&self, api: &str, identity: &Identity) -> bool {
        self.entry(api)
            .is_ok_and(|e| e.allowed.load().admits(identity))
    }

    /// Calls to `api` refused for want of a subscription.
    pub fn refused(&self, api: &str) -> Result<u64, SubscriptionError> {
        Ok(self
            .entry(api)?
            .refused
            .load(std::sync::atomic::Ordering::Relaxed))
    }

    fn entry(&self, api: &str) -> Result<Arc<Entry>, SubscriptionError> {
        let apis = self.registry.apis.read().unwrap_or_else(|e| e.into_inner());
        apis.get(api)
            .cloned()
            .ok_or_else(|| SubscriptionError::UnknownApi(api.to_owned()))
    }

    fn decide(
        &self,
        api: &str,
        consumer: &Consumer,
        action: &'static str,
        by: &str,
        at: u64,
        next: impl Fn(Status) -> Option<Status>,
    ) -> Result<Subscription, SubscriptionError> {
        let entry = self.entry(api)?;
        self.change(&entry, consumer, action, by, at, |old| match old {
            Some(s) => next(s).ok_or(()),
            None => Err(()),
        })
    }

    /// Applies one change: checked against what the store holds now,
    /// kept there (or not made at all), then seen by requests.
    #[allow(clippy::too_many_arguments)]
    fn change(
        &self,
        entry: &Entry,
        consumer: &Consumer,
        action: &'static str,
        by: &str,
        at: u64,
        next: impl Fn(Option<Status>) -> Result<Status, ()>,
    ) -> Result<Subscription, SubscriptionError> {
        let mut book = entry.book.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..RETRIES {
            // Another replica's change first, if there was one.
            self.registry.adopt(entry, &mut book)?;
            let old = book.subs.get(consumer);
            let from = old.map(|s| s.status);
            let to = match next(from) {
                Ok(to) => to,
                Err(()) => {
                    return Err(match from {
                        None => SubscriptionError::NotFound {
                            api: entry.name.clone(),
                            consumer: consumer.clone(),
                        },
                        Some(status) => SubscriptionError::Conflict {
                            api: entry.name.clone(),
                            consumer: consumer.clone(),
                            status,
                            action,
                        },
                    });
                }
            };
            if old.is_none() && book.subs.len() >= MAX_SUBSCRIPTIONS {
                return Err(SubscriptionError::Full(entry.name.clone()));
            }
            let sub = match (old, action) {
                (Some(old), a) if a != "request" => Subscription {
                    decided_by: Some(by.to_owned()),
                    decided_at: Some(at),
                    status: to,
                    ..old.clone()
                },
                _ => Subscription {
                    consumer: consumer.clone(),
                    status: to,
                    requested_by: by.to_owned(),
                    requested_at: at,
                    // An open API's request is its own approval.
                    decided_by: (to == Status::Approved).then(|| by.to_owned()),
                    decided_at: (to == Status::Approved).then_some(at),
                },
            };
            // Made in place, and undone if the store does not keep it.
            let previous = book.subs.insert(consumer.clone(), sub.clone());
            let dropped = (book.decisions.len() == MAX_DECISIONS).then(|| book.decisions.remove(0));
            book.decisions.push(Decision {
                consumer: consumer.clone(),
                from,
                to,
                by: by.to_owned(),
                at,
            });
            if let Some(state) = &self.registry.state {
                let saved = SavedRef {
                    subscriptions: book.subs.values().collect(),
                    decisions: &book.decisions,
                };
                let kept = serde_json::to_string(&saved)
                    .map_err(|e| SubscriptionError::State(e.to_string()))
                    .and_then(|text| {
                        state
                            .swap(SECTION, &entry.name, book.seen.as_deref(), &text)
                            .map(|swapped| swapped.then_some(text))
                            .map_err(|e| SubscriptionError::State(e.to_string()))
                    });
                match kept {
                    Ok(Some(text)) => book.seen = Some(text),
                    undone => {
                        book.decisions.pop();
                        if let Some(d) = dropped {
                            book.decisions.insert(0, d);
                        }
                        match previous {
                            Some(p) => book.subs.insert(consumer.clone(), p),
                            None => book.subs.remove(consumer),
                        };
                        match undone {
                            // Changed elsewhere since it was read: again.
                            Ok(_) => continue,
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
            if from == Some(Status::Approved) || to == Status::Approved {
                entry.allowed.store(Arc::new(Allowed::of(&book.subs)));
            }
            return Ok(sub);
        }
        Err(SubscriptionError::State(format!(
            "the subscriptions of API `{}` kept changing elsewhere; try again",
            entry.name
        )))
    }

    /// Takes what the state store holds for every API, where another
    /// process (a replica sharing a Redis store) changed it; a no-op
    /// without a store. The gateway calls this every second for a Redis
    /// store.
    pub fn refresh(&self) -> Result<(), SubscriptionError> {
        let entries: Vec<Arc<Entry>> = self
            .registry
            .apis
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for entry in entries {
            let mut book = entry.book.lock().unwrap_or_else(|e| e.into_inner());
            self.registry.adopt(&entry, &mut book)?;
        }
        Ok(())
    }
}

// === Layer ===

/// Lets through only calls whose [`Identity`] (or its tenant) holds an
/// approved subscription to the API (see the [module docs](self)).
///
/// It reads the identity that an authentication layer put in the
/// request's extensions, so it goes inside one: a call without an
/// identity, or with the anonymous one, is answered 401.
#[derive(Clone)]
pub struct SubscriptionLayer {
    entry: Arc<Entry>,
}

impl fmt::Debug for SubscriptionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionLayer")
            .field("api", &self.entry.name)
            .field("policy", &self.entry.policy())
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for SubscriptionLayer {
    type Service = Subscribed<S>;

    fn layer(&self, inner: S) -> Subscribed<S> {
        Subscribed {
            inner,
            entry: Arc::clone(&self.entry),
        }
    }
}

/// The service of [`SubscriptionLayer`].
#[derive(Clone)]
pub struct Subscribed<S> {
    inner: S,
    entry: Arc<Entry>,
}

impl<S> fmt::Debug for Subscribed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscribed")
            .field("api", &self.entry.name)
            .finish_non_exhaustive()
    }
}

impl Entry {
    fn policy(&self) -> Policy {
        if self.open.load(std::sync::atomic::Ordering::Relaxed) {
            Policy::Open
        } else {
            Policy::Approval
        }
    }

    fn refusal(&self) -> Rejection {
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut problem = Problem::new(StatusCode::FORBIDDEN)
            .title("Subscription required")
            .detail(format!(
                "calls to API `{}` need an approved subscription",
                self.name
            ))
            .with("code", "subscription_required")
            .with("api", self.name.as_str());
        if let Some(link) = &*self.request_link.read().unwrap_or_else(|e| e.into_inner()) {
            problem = problem.with("request_access", link.as_str());
        }
        Rejection::new(problem)
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Subscribed<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<crate::body::ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match req.extensions().get::<Identity>() {
            Some(id) if !id.is_anonymous() => {
                if self.entry.allowed.load().admits(id) {
                    ResponseFuture::inner(self.inner.call(req))
                } else {
                    ResponseFuture::rejected(self.entry.refusal())
                }
            }
            _ => ResponseFuture::rejected(Rejection::new(
                Problem::new(StatusCode::UNAUTHORIZED)
                    .detail(format!(
                        "API `{}` is for subscribed consumers: authenticate first",
                        self.entry.name
                    ))
                    .with("code", "authentication_required"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateFile;

    fn alice() -> Identity {
        Identity::new("alice").with_tenant("shop")
    }

    #[test]
    fn an_open_api_approves_at_once_and_an_approval_api_waits() {
        let subs = Subscriptions::new();
        subs.register("open", Policy::Open).unwrap();
        subs.register("gated", Policy::Approval).unwrap();
        let me = Consumer::of(&alice());
        let s = subs.request_at("open", &me, "alice", 5).unwrap();
        assert_eq!((s.status, s.decided_at), (Status::Approved, Some(5)));
        assert!(subs.admits("open", &alice()));
        let s = subs.request_at("gated", &me, "alice", 5).unwrap();
        assert_eq!(s.status, Status::Pending);
        assert!(!subs.admits("gated", &alice()));
        // Asking twice while pending is a conflict.
        assert!(matches!(
            subs.request("gated", &me, "alice"),
            Err(SubscriptionError::Conflict {
                status: Status::Pending,
                ..
            })
        ));
    }

    #[test]
    fn decisions_follow_the_rules_and_are_logged() {
        let subs = Subscriptions::new();
        subs.register("orders", Policy::Approval).unwrap();
        let shop = Consumer::tenant("shop");
        let err = subs.approve("orders", &shop, "bob").unwrap_err();
        assert_eq!(err.status(), StatusCode::NOT_FOUND);
        subs.request_at("orders", &shop, "alice", 1).unwrap();
        let err = subs.revoke("orders", &shop, "bob").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the subscription of tenant `shop` to API `orders` is pending: cannot revoke it"
        );
        subs.reject("orders", &shop, "bob").unwrap();
        assert!(!subs.admits("orders", &alice()));
        // Asked again after a rejection, approved this time.
        subs.request("orders", &shop, "alice").unwrap();
        let s = subs.approve("orders", &shop, "bob").unwrap();
        assert_eq!(s.decided_by.as_deref(), Some("bob"));
        assert!(subs.admits("orders", &alice()));
        // Every identity of the tenant, and nobody else.
        assert!(subs.admits("orders", &Identity::new("carol").with_tenant("shop")));
        assert!(!subs.admits("orders", &Identity::new("alice")));
        assert!(!subs.admits("orders", &Identity::new("alice").with_tenant("bank")));
        subs.revoke("orders", &shop, "bob").unwrap();
        assert!(!subs.admits("orders", &alice()));
        let log: Vec<_> = subs
            .decisions("orders")
            .unwrap()
            .into_iter()
            .map(|d| (d.from, d.to, d.by))
            .collect();
        assert_eq!(
            log,
            [
                (None, Status::Pending, "alice".to_owned()),
                (Some(Status::Pending), Status::Rejected, "bob".to_owned()),
                (Some(Status::Rejected), Status::Pending, "alice".to_owned()),
                (Some(Status::Pending), Status::Approved, "bob".to_owned()),
                (Some(Status::Approved), Status::Revoked, "bob".to_owned()),
            ]
        );
    }

    #[test]
    fn an_identity_is_matched_with_its_tenant() {
        let subs = Subscriptions::new();
        subs.register("a", Policy::Open).unwrap();
        // "alice" of no tenant and the tenant "i" + ... must not collide.
        subs.request("a", &Consumer::member("x", "alice"), "x")
            .unwrap();
        assert!(subs.admits("a", &Identity::new("alice").with_tenant("x")));
        assert!(!subs.admits("a", &Identity::new("alice")));
        assert!(!subs.admits("a", &Identity::new("alice").with_tenant("xa")));
        assert!(Consumer::member("x", "alice").covers(&Identity::new("alice").with_tenant("x")));
        assert!(matches!(
            subs.request("a", &Consumer::tenant(""), "x"),
            Err(SubscriptionError::BadConsumer)
        ));
    }

    #[test]
    fn registering_checks_names() {
        let subs = Subscriptions::new();
        subs.register("a", Policy::Open).unwrap();
        assert_eq!(
            subs.register("a", Policy::Open).unwrap_err(),
            SubscriptionError::Duplicate("a".into())
        );
        assert_eq!(
            subs.register("", Policy::Open).unwrap_err(),
            SubscriptionError::Unnamed
        );
        assert!(matches!(
            subs.request("b", &Consumer::tenant("t"), "x"),
            Err(SubscriptionError::UnknownApi(_))
        ));
        assert_eq!(subs.apis(), ["a"]);
    }

    #[test]
    fn subscriptions_survive_a_restart_and_a_failed_write_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("switchyard-subs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let shop = Consumer::tenant("shop");
        {
            let subs = Subscriptions::with_state(Arc::new(StateFile::open(&path).unwrap()));
            subs.register("orders", Policy::Approval).unwrap();
            subs.request_at("orders", &shop, "alice", 1).unwrap();
            subs.approve("orders", &shop, "bob").unwrap();
        }
        let subs = Subscriptions::with_state(Arc::new(StateFile::open(&path).unwrap()));
        subs.register("orders", Policy::Approval).unwrap();
        assert!(subs.admits("orders", &alice()));
        assert_eq!(subs.decisions("orders").unwrap().len(), 2);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let err = subs.revoke("orders", &shop, "bob").unwrap_err();
        assert!(matches!(err, SubscriptionError::State(_)), "{err}");
        assert!(subs.admits("orders", &alice()));
        assert_eq!(
            subs.get("orders", &shop).unwrap().unwrap().status,
            Status::Approved
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_writers_on_one_store_lose_nothing() {
        // Two registries over one store stand for two replicas over one
        // Redis: each writes from what it last read.
        let dir = std::env::temp_dir().join(format!("switchyard-subs2-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = Arc::new(StateFile::open(dir.join("state.json")).unwrap());
        let (one, two) = (
            Subscriptions::with_state(store.clone()),
            Subscriptions::with_state(store.clone()),
        );
        one.register("orders", Policy::Open).unwrap();
        two.register("orders", Policy::Open).unwrap();
        one.request("orders", &Consumer::tenant("shop"), "a")
            .unwrap();
        // `two` has not seen it: its write is refused, it reads, retries.
        two.request("orders", &Consumer::tenant("bank"), "b")
            .unwrap();
        assert!(two.admits("orders", &Identity::new("x").with_tenant("shop")));
        // `one` sees `two`'s after a refresh, and both are in the store.
        assert!(!one.admits("orders", &Identity::new("x").with_tenant("bank")));
        one.refresh().unwrap();
        assert!(one.admits("orders", &Identity::new("x").with_tenant("bank")));
        let three = Subscriptions::with_state(store);
        three.register("orders", Policy::Open).unwrap();
        assert_eq!(three.list("orders").unwrap().len(), 2);
        assert_eq!(three.decisions("orders").unwrap().len(), 2);
        // A conflict is judged on what the store holds: `one` revokes
        // bank's (seen by refresh), `two` cannot revoke it again.
        one.revoke("orders", &Consumer::tenant("bank"), "o")
            .unwrap();
        assert!(matches!(
            two.revoke("orders", &Consumer::tenant("bank"), "o"),
            Err(SubscriptionError::Conflict {
                status: Status::Revoked,
                ..
            })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A store where another writer gets in between a change's read and
    /// its write, once.
    #[derive(Debug)]
    struct Interfering {
        inner: StateFile,
        other: Mutex<Option<String>>,
    }

    impl StateStore for Interfering {
        fn location(&self) -> std::path::PathBuf {
            self.inner.location()
        }

        fn load(
            &self,
            section: &str,
            key: &str,
        ) -> Result<Option<String>, crate::state::StateError> {
            self.inner.load(section, key)
        }

        fn swap(
            &self,
            section: &str,
            key: &str,
            expected: Option<&str>,
            value: &str,
        ) -> Result<bool, crate::state::StateError> {
            if let Some(other) = self.other.lock().unwrap().take() {
                let now = self.inner.load(section, key)?;
                assert!(self.inner.swap(section, key, now.as_deref(), &other)?);
            }
            self.inner.swap(section, key, expected, value)
        }
    }

    #[test]
    fn a_write_that_lost_a_race_is_made_again_on_what_won() {
        let dir = std::env::temp_dir().join(format!("switchyard-subs3-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // What the other writer writes: bank approved.
        let bank = Subscription {
            consumer: Consumer::tenant("bank"),
            status: Status::Approved,
            requested_by: "b".into(),
            requested_at: 1,
            decided_by: Some("b".into()),
            decided_at: Some(1),
        };
        let other = serde_json::json!({ "subscriptions": [bank], "decisions": [] }).to_string();
        let store = Arc::new(Interfering {
            inner: StateFile::open(dir.join("state.json")).unwrap(),
            other: Mutex::new(Some(other)),
        });
        let subs = Subscriptions::with_state(store.clone());
        subs.register("orders", Policy::Open).unwrap();
        subs.request("orders", &Consumer::tenant("shop"), "a")
            .unwrap();
        // Its first write was refused; made again on top of bank's.
        assert!(store.other.lock().unwrap().is_none());
        assert!(subs.admits("orders", &Identity::new("x").with_tenant("shop")));
        assert!(subs.admits("orders", &Identity::new("x").with_tenant("bank")));
        let kept = Subscriptions::with_state(store);
        kept.register("orders", Policy::Open).unwrap();
        assert_eq!(kept.list("orders").unwrap().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_table_is_bounded() {
        let subs = Subscriptions::new();
        subs.register("a", Policy::Approval).unwrap();
        for i in 0..MAX_SUBSCRIPTIONS {
            subs.request("a", &Consumer::identity(format!("u{i}")), "x")
                .unwrap();
        }
        assert_eq!(
            subs.request("a", &Consumer::identity("late"), "x")
                .unwrap_err(),
            SubscriptionError::Full("a".into())
        );
        // Deciding on an existing one still works.
        subs.approve("a", &Consumer::identity("u0"), "owner")
            .unwrap();
    }
}
