//! [`Meter`]: token limits, budgets and cost as the model router's
//! admission hook.
//!
//! The meter reserves a request's worst case in each budget before the
//! request goes upstream (its input estimated from the body's size, its
//! output at `max_tokens`, priced), and settles at what the answer cost
//! when the answer ends. A request whose worst case does not fit is
//! refused (a 429, OpenAI's `insufficient_quota`) or downgraded; none
//! slips past a budget because others were in flight. (An answer whose
//! usage the router did not see, such as a stream the client left before
//! its last event, keeps what was reserved for it.)
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use switchyard::body::RequestBody;
//! use switchyard::model::{Alias, Catalog, Model, ModelRouter};
//! use switchyard::spend::{Budget, BudgetScope, Meter, Period, Price, PriceCatalog};
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A stand-in model server: 1,000 tokens in, 500 out.
//! let server = service_fn(|_: Request<RequestBody<Full<Bytes>>>| async {
//!     let json = r#"{"choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#;
//!     Ok::<_, Infallible>(
//!         Response::builder()
//!             .header("content-type", "application/json")
//!             .body(Full::new(Bytes::from(json)))
//!             .unwrap(),
//!     )
//! });
//! let meter = Meter::builder()
//!     // $2.50 in and $10 out per million tokens: an answer costs 7,500 µ$.
//!     .prices(PriceCatalog::new().with_price("gpt-4o", Price::per_million(2_500_000, 10_000_000)))
//!     // 20,000 µ$ for everyone, for good.
//!     .budget(Budget::new(BudgetScope::Global, 20_000, Period::Lifetime))
//!     .build()?;
//! let router = ModelRouter::builder()
//!     .upstream("openai", server)
//!     .catalog(Catalog::new().model(Model::new("gpt-4o", "openai")).alias(Alias::new("chat", [("gpt-4o", 1)])))
//!     .admit(meter.clone())
//!     .build()?;
//!
//! // Each request's worst case: 1,000 output tokens (10,000 µ$) and its
//! // input (30 µ$).
//! let ask = || {
//!     Request::post("/v1/chat/completions")
//!         .body(Full::new(Bytes::from_static(br#"{"model":"chat","max_tokens":1000,"messages":[]}"#)))
//!         .unwrap()
//! };
//! let mut statuses = Vec::new();
//! for _ in 0..3 {
//!     let res = router.clone().oneshot(ask()).await?;
//!     statuses.push(res.status().as_u16());
//!     res.into_body().collect().await?; // the answer ends: settled
//! }
//! // 0 + 10,030 fits, 7,500 + 10,030 fits, 15,000 + 10,030 does not.
//! assert_eq!(statuses, [200, 200, 429]);
//! let usage = meter.budget_usage("global-lifetime", "*").unwrap();
//! assert_eq!((usage.spent_micros, usage.reserved_micros), (15_000, 0));
//! assert_eq!(meter.stats().refused_budget, 1);
//! # Ok(())
//! # }
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use smallvec::SmallVec;
use thread_local::ThreadLocal;

use super::SpendError;
use super::budget::{Budget, BudgetAlert, BudgetScope, Cell, Cells, OverBudget, PeriodCache};
use super::ledger::{Ledger, LedgerEntry};
use super::limit::TokenLimit;
use super::price::{Price, PriceCatalog};
use crate::auth::Identity;
use crate::key::{Key, KeyBy, KeyParts};
use crate::model::providers::Usage;
use crate::model::{
    Admission, Admit, AdmitFuture, AdmitRequest, Refused, Settled, Ticket, UsageRecord,
};
use crate::per_thread::Swappable;
use crate::per_thread::{Near, Packed};
use crate::ratelimit::gcra_api::{Entry, Gcra, KeyState, Store, Verdict};
use crate::ratelimit::{Clock, ClockSource, MonotonicClock};

/// What to do with a request for a model the price catalog does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Unpriced {
    /// Refuse it: a 403 with code `model_not_priced`.
    Deny,
    /// Let it through, counted at no cost (token limits still apply).
    #[default]
    Free,
    /// Reserve and charge this many micro-units per request.
    Fixed(u64),
}

static LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
static REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
static RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The answer's cost in micro-units (a header, or an SSE comment line).
pub static COST_MICROS: HeaderName = HeaderName::from_static("x-switchyard-cost-micros");
/// The answer's input tokens.
pub static INPUT_TOKENS: HeaderName = HeaderName::from_static("x-switchyard-input-tokens");
/// The answer's output tokens.
pub static OUTPUT_TOKENS: HeaderName = HeaderName::from_static("x-switchyard-output-tokens");

// === impl Meter ===

/// Token limits, budgets and cost tracking for a
/// [`ModelRouter`](crate::model::ModelRouter): give it to
/// [`ModelRouterBuilder::admit`](crate::model::ModelRouterBuilder::admit).
///
/// Cheap to clone: clones share state. See the [module docs](super).
#[derive(Clone)]
pub struct Meter {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Read through each thread's cached reference (an `ArcSwap` load
    /// per request showed in the cost of admission).
    pub(crate) prices: Swappable<PriceCatalog>,
    unpriced: Unpriced,
    bytes_per_token: u64,
    default_max_tokens: u64,
    pub(crate) limits: Box<[Limit]>,
    pub(crate) budgets: Box<[BudgetState]>,
    concurrency: Option<Concurrency>,
    pub(crate) ledger: Option<Arc<Ledger>>,
    clock: ClockSource,
    wall: Wall,
    fields: bool,
    on_alert: Option<AlertHook>,
    pub(crate) counters: Counters,
    pub(crate) backend: Backend,
}

/// Where Unix time comes from.
enum Wall {
    /// The user's clock.
    Given(Box<dyn Fn() -> u64 + Send + Sync>),
    /// The system's, read once when the meter was built and advanced by
    /// the monotonic clock since (a read of the system clock per request
    /// costs more than the rest of a budget check; calendar periods do not
    /// need to follow a clock that is stepped).
    Derived { unix_nanos: u64 },
}

/// What is called with a budget alert.
type AlertHook = Arc<dyn Fn(&BudgetAlert) + Send + Sync>;

/// Where the counts live.
pub(crate) enum Backend {
    Memory,
    #[cfg(feature = "redis")]
    Redis(super::redis::RedisSpend),
}

/// One token limit and its state in this process.
pub(crate) struct Limit {
    pub(crate) def: TokenLimit,
    pub(crate) gcra: Gcra,
    pub(crate) policy: HeaderValue,
    /// Each key's state, shared: a request holds its key's from
    /// admission to settlement.
    store: Store<Arc<KeyState>>,
    /// The states of the keys each thread met last. A state the table
    /// removed reads as gone (its arrival time is the tombstone), so one
    /// found here is used only if it is still live.
    near: ThreadLocal<RefCell<Near<Option<Arc<KeyState>>>>>,
}

/// One budget and its state in this process.
pub(crate) struct BudgetState {
    pub(crate) def: Budget,
    /// Each key's cell, by index into `arena` ([`OVERFLOW`]: `overflow`).
    /// foldhash with a random seed, as the rate limiter's table (keys
    /// come from clients).
    cells: papaya::HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>,
    /// The cells of the keys each thread met last.
    near: ThreadLocal<RefCell<Near<u32>>>,
    arena: Cells,
    /// Shared by keys past `max_keys`.
    overflow: Cell,
    max_keys: usize,
    period: PeriodCache,
}

struct Concurrency {
    key_by: KeyBy,
    max: u32,
    held: Mutex<HashMap<Key<'static>, u32>>,
}

#[derive(Default)]
pub(crate) struct Counters {
    /// Admitted, settled, cost: added on every request, so kept per
    /// thread (see [`crate::per_thread`]); the index constants below.
    hot: Counters3,
    refused_tokens: AtomicU64,
    refused_budget: AtomicU64,
    refused_concurrency: AtomicU64,
    refused_unpriced: AtomicU64,
    downgraded: AtomicU64,
    unpriced: AtomicU64,
    alerts: AtomicU64,
    pub(crate) backend_errors: AtomicU64,
}

type Counters3 = crate::per_thread::Counters<3>;
const ADMITTED: usize = 0;
const SETTLED: usize = 1;
const COST_MICROS_SUM: usize = 2;

/// A [`Meter`]'s counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MeterStats {
    /// Requests admitted.
    pub admitted: u64,
    /// Requests refused by a token limit.
    pub refused_tokens: u64,
    /// Requests refused by a budget.
    pub refused_budget: u64,
    /// Requests refused by the concurrent-request cap.
    pub refused_concurrency: u64,
    /// Requests refused for an unpriced model ([`Unpriced::Deny`]).
    pub refused_unpriced: u64,
    /// Requests sent to a cheaper version by a budget.
    pub downgraded: u64,
    /// Answers settled.
    pub settled: u64,
    /// Their cost, in micro-units.
    pub cost_micros: u64,
    /// Answers of models with no price.
    pub unpriced: u64,
    /// Budget alerts raised.
    pub alerts: u64,
    /// Checks and settlements the shared store (Redis) failed.
    pub backend_errors: u64,
}

/// What one request holds, as the store sees it.
///
/// Held inline for one limit, one budget and short keys, so that
/// admitting a request allocates only its ticket (more spill to the heap);
/// kept small because the ticket is moved into its allocation whole.
#[derive(Debug, Clone, Default)]
pub(crate) struct Plan {
    /// The bytes of the keys below (limit keys, budget keys' text).
    text: Text,
    pub(crate) limits: SmallVec<[LimitHold; 1]>,
    pub(crate) budgets: SmallVec<[BudgetHold; 1]>,
    /// Where it is held.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) held: Where,
    /// Its reservations' name in a shared store.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) member: u64,
    /// The monotonic clock when it was made.
    pub(crate) now: u64,
}

/// Units a request holds in one token limit.
#[derive(Debug, Clone)]
pub(crate) struct LimitHold {
    /// The limit's index.
    pub(crate) limit: usize,
    key: HeldKey,
    /// The estimate taken.
    pub(crate) units: u64,
    /// The key's state in memory, once the estimate was taken there.
    state: Option<Arc<KeyState>>,
}

/// What a request holds in one budget.
#[derive(Debug, Clone)]
pub(crate) struct BudgetHold {
    /// The budget's index.
    pub(crate) budget: usize,
    /// The key's text in the plan's buffer.
    key: (u32, u32),
    /// Reserved micro-units.
    pub(crate) micros: u64,
    /// Reserved tokens.
    pub(crate) tokens: u64,
    /// The period's index.
    pub(crate) period: u64,
    /// Its end, in Unix seconds.
    pub(crate) end: u64,
    /// The key's cell in memory (see [`BudgetState::at`]), once reserved
    /// there.
    pub(crate) cell: Option<u32>,
}

/// A key kept in a plan: its bytes in the plan's buffer.
#[derive(Debug, Clone, Copy)]
enum HeldKey {
    Global,
    Ip(std::net::IpAddr),
    Bytes(u32, u32),
    Digest([u8; 16]),
}

/// The key bytes of a plan: inline while they fit, else on the heap.
///
/// `SmallVec::extend_from_slice` inserts (a move of the tail, then the
/// copy: two `memcpy` calls and a capacity check each), which is most of
/// what keeping a short key cost; this is one bounds check and one copy.
#[derive(Debug, Clone)]
struct Text {
    len: u32,
    inline: [u8; TEXT_INLINE],
    /// Every byte once they outgrow `inline` (empty before).
    heap: Vec<u8>,
}

const TEXT_INLINE: usize = 48;

impl Default for Text {
    fn default() -> Self {
        Self {
            len: 0,
            inline: [0; TEXT_INLINE],
            heap: Vec::new(),
        }
    }
}

impl Text {
    /// Appends `bytes`: their place.
    #[inline]
    fn push(&mut self, bytes: &[u8]) -> (u32, u32) {
        let start = self.len as usize;
        let end = start + bytes.len();
        if self.heap.is_empty() && end <= TEXT_INLINE {
            self.inline[start..end].copy_from_slice(bytes);
        } else {
            if self.heap.is_empty() {
                self.heap.extend_from_slice(&self.inline[..start]);
            }
            self.heap.extend_from_slice(bytes);
        }
        // A request's keys are bounded by its head's size (and a long
        // bytes key is kept as its digest), far below 4 GiB.
        self.len = end as u32;
        (start as u32, end as u32)
    }

    /// Empties it, keeping what it allocated.
    fn clear(&mut self) {
        self.len = 0;
        self.heap.clear();
    }

    /// The bytes at `start..end`.
    #[inline]
    fn get(&self, (start, end): (u32, u32)) -> &[u8] {
        let all = if self.heap.is_empty() {
            &self.inline[..]
        } else {
            &self.heap[..]
        };
        &all[start as usize..end as usize]
    }
}

impl Plan {
    /// Empties it for another request, keeping what it allocated.
    fn clear(&mut self) {
        self.text.clear();
        self.limits.clear();
        self.budgets.clear();
        self.held = Where::Memory;
        self.member = 0;
        self.now = 0;
    }

    /// Copies `bytes` into the buffer: their place.
    #[inline]
    fn keep(&mut self, bytes: &[u8]) -> (u32, u32) {
        self.text.push(bytes)
    }

    /// Keeps `key` as the limiter's table stores it (a long bytes key as
    /// its digest).
    fn hold_key(&mut self, key: &Key<'_>) -> HeldKey {
        let digest = key.digest_if_long();
        match digest.as_ref().unwrap_or(key).parts() {
            KeyParts::Global => HeldKey::Global,
            KeyParts::Ip(ip) => HeldKey::Ip(ip),
            KeyParts::Digest(d) => HeldKey::Digest(d),
            KeyParts::Bytes(b) => {
                let (start, end) = self.keep(b);
                HeldKey::Bytes(start, end)
            }
        }
    }

    /// The key of limit hold `hold`.
    pub(crate) fn limit_key(&self, hold: &LimitHold) -> Key<'_> {
        Key::from_parts(match hold.key {
            HeldKey::Global => KeyParts::Global,
            HeldKey::Ip(ip) => KeyParts::Ip(ip),
            HeldKey::Digest(d) => KeyParts::Digest(d),
            HeldKey::Bytes(start, end) => KeyParts::Bytes(self.text.get((start, end))),
        })
    }

    /// The key of budget hold `hold`, as its cell is found by.
    fn budget_bytes(&self, hold: &BudgetHold) -> &[u8] {
        self.text.get(hold.key)
    }

    /// The key of budget hold `hold`.
    pub(crate) fn budget_key(&self, hold: &BudgetHold) -> std::borrow::Cow<'_, str> {
        // Only text from `&str`s is kept for budgets: always borrowed.
        String::from_utf8_lossy(self.budget_bytes(hold))
    }
}

/// Where a plan's units and reservations are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Where {
    /// In this process's memory.
    #[default]
    Memory,
    /// In Redis, under the plan's member.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Redis,
    /// Nowhere: admitted while Redis failed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Nothing,
}

/// A token limit's state after an admission: units left, nanoseconds
/// until all are back.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LimitLeft {
    pub(crate) remaining: u64,
    pub(crate) reset: u64,
}

/// The first token limit's state after an admission, as its headers need
/// it: worked out only when they are asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Left {
    /// Worked out already (from Redis's answer).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Known(LimitLeft),
    /// The key's arrival time after the admission, at `now`, under `gcra`
    /// (the limit's own parameters, or a replica's share).
    At { gcra: Gcra, tat: u64, now: u64 },
}

/// The store's answer to a plan.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Admitted; the first limit's state after.
    Admitted(Option<Left>),
    /// Limit `limit` refused; allowed after `wait` nanoseconds
    /// (`u64::MAX`: the request is larger than the limit's burst).
    Tokens { limit: usize, wait: u64 },
    /// Budget `budget` (index into the plan's budgets) has no room.
    Budget { budget: usize },
    /// The shared store failed and the request is to be refused.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Unavailable,
}

impl Meter {
    /// A builder.
    pub fn builder() -> MeterBuilder {
        MeterBuilder::default()
    }

    /// Replaces the price catalog; requests admitted from now on use it.
    pub fn set_prices(&self, prices: impl Into<Arc<PriceCatalog>>) {
        self.inner.prices.store(prices.into());
    }

    /// The price catalog.
    pub fn prices(&self) -> Arc<PriceCatalog> {
        self.inner.prices.load_full()
    }

    /// The ledger of tokens and cost, if kept.
    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.inner.ledger.as_ref()
    }

    /// The token limits.
    pub fn token_limits(&self) -> impl Iterator<Item = &TokenLimit> {
        self.inner.limits.iter().map(|l| &l.def)
    }

    /// The budgets.
    pub fn budgets(&self) -> impl Iterator<Item = &Budget> {
        self.inner.budgets.iter().map(|b| &b.def)
    }

    /// What `key` has spent and holds in reservations in budget `budget`
    /// this period (`key` is the identity, tenant, alias or key the
    /// budget's scope names; `*` for a [`BudgetScope::Global`] budget), in
    /// this process's memory (a Redis meter's state is in
    /// Redis: see [`RedisSpend`](super::redis)). `None` for an unknown
    /// budget.
    pub fn budget_usage(&self, budget: &str, key: &str) -> Option<BudgetUsage> {
        let b = self.inner.budgets.iter().find(|b| b.def.name == budget)?;
        let (period, _) = b.period_at(self.inner.unix());
        let s = b
            .cells
            .pin()
            .get(key.as_bytes())
            .map(|&c| b.at(c).read(period))
            .unwrap_or_default();
        Some(BudgetUsage {
            spent_micros: s.spent,
            reserved_micros: s.reserved,
            limit_micros: b.def.limit_micros,
            tokens: s.tokens,
        })
    }

    /// The counters.
    pub fn stats(&self) -> MeterStats {
        let c = &self.inner.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MeterStats {
            admitted: c.hot.get(ADMITTED),
            refused_tokens: load(&c.refused_tokens),
            refused_budget: load(&c.refused_budget),
            refused_concurrency: load(&c.refused_concurrency),
            refused_unpriced: load(&c.refused_unpriced),
            downgraded: load(&c.downgraded),
            settled: c.hot.get(SETTLED),
            cost_micros: c.hot.get(COST_MICROS_SUM),
            unpriced: load(&c.unpriced),
            alerts: load(&c.alerts),
            backend_errors: load(&c.backend_errors),
        }
    }
}

/// A key's spending in a budget this period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BudgetUsage {
    /// Spent, in micro-units.
    pub spent_micros: u64,
    /// Held by requests in flight.
    pub reserved_micros: u64,
    /// The limit.
    pub limit_micros: u64,
    /// Tokens spent.
    pub tokens: u64,
}

impl fmt::Debug for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Meter")
            .field("prices", &self.inner.prices.with(PriceCatalog::len))
            .field("unpriced", &self.inner.unpriced)
            .field(
                "limits",
                &self.inner.limits.iter().map(|l| &l.def).collect::<Vec<_>>(),
            )
            .field(
                "budgets",
                &self
                    .inner
                    .budgets
                    .iter()
                    .map(|b| &b.def)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Limit {
    /// Takes `cost` units from `key`'s state under `gcra`: the verdict, and
    /// the state if the units were taken from it.
    ///
    /// The thread's table of recent keys is tried first (no guard, no
    /// lookup in the shared table); a state found there that the table
    /// removed meanwhile says so, and the key is then looked up afresh.
    #[inline]
    fn acquire(
        &self,
        key: &Key<'_>,
        gcra: &Gcra,
        now: u64,
        cost: u32,
    ) -> (Verdict, Option<Arc<KeyState>>) {
        let packed = near_key(key);
        let near = packed.map(|_| self.near.get_or_default());
        if let (Some(packed), Some(near)) = (&packed, near)
            && let Ok(n) = near.try_borrow()
            && let Some(Some(state)) = n.get(packed)
        {
            match gcra.acquire(&state.tats[0], now, cost) {
                Verdict::Gone => {}
                v @ Verdict::Allowed { .. } => return (v, Some(Arc::clone(state))),
                v => return (v, None),
            }
        }
        let mut tracked = None;
        let out = self.store.with(key, now, true, |entry| {
            tracked = None;
            let state = match entry {
                Entry::Tracked(s) => {
                    // Kept for the thread's table (a miss: not the
                    // common path).
                    tracked = Some(Arc::clone(s));
                    s
                }
                Entry::Overflow(s) => s,
                Entry::Untracked => return Some((Verdict::Allowed { tat: now }, None)),
            };
            match gcra.acquire(&state.tats[0], now, cost) {
                Verdict::Gone => None,
                v @ Verdict::Allowed { .. } => Some((v, Some(Arc::clone(state)))),
                v => Some((v, None)),
            }
        });
        if let (Some(packed), Some(near), Some(state)) = (packed, near, tracked)
            && let Ok(mut n) = near.try_borrow_mut()
        {
            n.put(packed, Some(state));
        }
        out
    }
}

/// A limit key as a thread's table of recent keys keeps it, if short
/// enough (a long key is kept as its digest by the shared table, and so
/// here).
#[inline]
fn near_key(key: &Key<'_>) -> Option<Packed> {
    let digest = key.digest_if_long();
    match digest.as_ref().unwrap_or(key).parts() {
        KeyParts::Global => Packed::of(0, &[]),
        KeyParts::Bytes(b) => Packed::of(1, b),
        KeyParts::Digest(d) => Packed::of(2, &d),
        KeyParts::Ip(std::net::IpAddr::V4(ip)) => Packed::of(3, &ip.octets()),
        KeyParts::Ip(std::net::IpAddr::V6(ip)) => Packed::of(4, &ip.octets()),
    }
}

/// The index of a budget's shared cell for keys past its `max_keys`.
const OVERFLOW: u32 = u32::MAX;

impl BudgetState {
    /// The index and end of the period holding `unix`.
    pub(crate) fn period_at(&self, unix: u64) -> (u64, u64) {
        self.period.at(self.def.period, unix, self.def.offset_secs)
    }

    /// The index of `key`'s cell, made if new.
    fn cell(&self, key: &[u8]) -> u32 {
        let Some(packed) = Packed::of(0, key) else {
            return self.cell_shared(key);
        };
        let near = self.near.get_or_default();
        if let Some(&c) = near
            .try_borrow()
            .ok()
            .as_deref()
            .and_then(|n| n.get(&packed))
        {
            return c;
        }
        let c = self.cell_shared(key);
        if let Ok(mut n) = near.try_borrow_mut() {
            n.put(packed, c);
        }
        c
    }

    /// The same, from the shared map.
    fn cell_shared(&self, key: &[u8]) -> u32 {
        let cells = self.cells.pin();
        if let Some(&c) = cells.get(key) {
            return c;
        }
        if cells.len() >= self.max_keys {
            return OVERFLOW;
        }
        // Two first requests of a key may both make a cell; one is kept
        // (the arena has room for such losers: see `build`).
        *cells.get_or_insert_with(key.into(), || self.arena.add().unwrap_or(OVERFLOW))
    }

    /// Cell `i`.
    #[inline]
    pub(crate) fn at(&self, i: u32) -> &Cell {
        match i {
            OVERFLOW => &self.overflow,
            i => self.arena.get(i),
        }
    }
}

// === admission ===

impl Plan {
    /// Keeps the text of `key`, as a budget names it: its bytes (as UTF-8,
    /// invalid sequences replaced), its address, or `*`.
    fn keep_key_text(&mut self, key: &Key<'_>) -> (u32, u32) {
        if let Some(ip) = key.as_ip() {
            // The longest address is 45 characters.
            let mut buf = [0u8; 64];
            let mut w = &mut buf[..];
            let _ = std::io::Write::write_fmt(&mut w, format_args!("{ip}"));
            let n = 64 - w.len();
            return self.keep(&buf[..n]);
        }
        match key.as_bytes() {
            Some(b) => self.keep(String::from_utf8_lossy(b).as_bytes()),
            None => self.keep(b"*"),
        }
    }
}

/// The estimate of a request: input tokens, output tokens, and the worst
/// case cost (`None`: unpriced).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Estimate {
    pub(crate) input: u64,
    pub(crate) output: u64,
    pub(crate) worst: u64,
}

impl Inner {
    fn estimate(&self, req: &AdmitRequest<'_>, price: Option<&Price>) -> Estimate {
        let input = div_ceil(req.body_len.unwrap_or(0), self.bytes_per_token);
        let max_out = price.and_then(|p| p.max_output_tokens).unwrap_or(u64::MAX);
        let output = req
            .max_tokens
            .unwrap_or(self.default_max_tokens)
            .min(max_out);
        let worst = match (price, self.unpriced) {
            // Nothing the answer can say costs more.
            (Some(p), _) => p.worst_case(input, output).micros(),
            (None, Unpriced::Fixed(micros)) => micros,
            (None, _) => 0,
        };
        Estimate {
            input,
            output,
            worst,
        }
    }

    pub(crate) fn now(&self) -> u64 {
        self.clock.now_nanos()
    }

    /// The wall clock, in Unix seconds.
    pub(crate) fn unix(&self) -> u64 {
        self.unix_at(self.now())
    }

    /// The wall clock when the monotonic clock read `now`.
    pub(crate) fn unix_at(&self, now: u64) -> u64 {
        match &self.wall {
            Wall::Given(f) => f(),
            Wall::Derived { unix_nanos } => unix_nanos.saturating_add(now) / 1_000_000_000,
        }
    }

    #[cfg(feature = "redis")]
    pub(crate) fn redis(&self) -> Option<&super::redis::RedisSpend> {
        match &self.backend {
            Backend::Redis(r) => Some(r),
            Backend::Memory => None,
        }
    }

    /// Builds the plan of `req`: the keys of each limit and budget and
    /// what they hold.
    fn plan(&self, req: &AdmitRequest<'_>, est: &Estimate, plan: &mut Plan) {
        plan.now = self.now();
        for (i, limit) in self.limits.iter().enumerate() {
            if let Some(key) = limit.def.key_by.extract_head(req.head) {
                let key = plan.hold_key(&key);
                plan.limits.push(LimitHold {
                    limit: i,
                    key,
                    units: limit.def.count.units(est.input, est.output),
                    state: None,
                });
            }
        }
        if !self.budgets.is_empty() {
            let unix = self.unix_at(plan.now);
            let identity = req.head.extensions.get::<Identity>();
            let tokens = est.input.saturating_add(est.output);
            for (i, b) in self.budgets.iter().enumerate() {
                let key = match &b.def.scope {
                    BudgetScope::Identity => identity.map(|id| plan.keep(id.id().as_bytes())),
                    BudgetScope::Tenant => identity
                        .and_then(|id| id.tenant())
                        .map(|t| plan.keep(t.as_bytes())),
                    BudgetScope::Alias => {
                        Some(plan.keep(req.alias.unwrap_or(req.model).as_bytes()))
                    }
                    BudgetScope::Global => Some(plan.keep(b"*")),
                    BudgetScope::Key(k) => k.extract_head(req.head).map(|k| plan.keep_key_text(&k)),
                };
                if let Some(key) = key {
                    let (period, end) = b.period_at(unix);
                    plan.budgets.push(BudgetHold {
                        budget: i,
                        key,
                        micros: est.worst,
                        tokens,
                        period,
                        end,
                        cell: None,
                    });
                }
            }
        }
    }

    /// Admits `plan` in this process's memory: every limit and budget, or
    /// none.
    fn admit_memory(&self, plan: &mut Plan) -> Outcome {
        self.admit_memory_with(plan, None)
    }

    /// The same, with each limit's parameters from `gcras` when given (a
    /// replica's share while Redis is out).
    pub(crate) fn admit_memory_with(&self, plan: &mut Plan, gcras: Option<&[Gcra]>) -> Outcome {
        let now = plan.now;
        let mut left = None;
        for n in 0..plan.limits.len() {
            let hold = &plan.limits[n];
            let limit = &self.limits[hold.limit];
            let gcra = gcras.and_then(|g| g.get(hold.limit)).unwrap_or(&limit.gcra);
            let cost = u32::try_from(hold.units).unwrap_or(u32::MAX);
            let key = plan.limit_key(hold);
            let (verdict, state) = limit.acquire(&key, gcra, now, cost);
            let hold = &mut plan.limits[n];
            hold.state = state;
            match verdict {
                Verdict::Allowed { tat } if n == 0 => {
                    left = Some(Left::At {
                        gcra: *gcra,
                        tat,
                        now,
                    });
                }
                Verdict::Allowed { .. } => {}
                Verdict::Refused { wait } => {
                    let limit = hold.limit;
                    self.release_limits(plan, n, gcras);
                    return Outcome::Tokens { limit, wait };
                }
                Verdict::Gone => unreachable!("retried by the store"),
            }
        }
        for n in 0..plan.budgets.len() {
            let hold = &plan.budgets[n];
            let b = &self.budgets[hold.budget];
            let cell = b.cell(plan.budget_bytes(hold));
            if !b.at(cell).reserve(
                hold.period,
                b.def.limit_micros,
                b.def.tokens,
                hold.micros,
                hold.tokens,
            ) {
                self.unreserve(plan, n, gcras);
                return Outcome::Budget { budget: n };
            }
            plan.budgets[n].cell = Some(cell);
        }
        Outcome::Admitted(left)
    }

    /// Gives back what `plan` holds when its budget `n` refused it: every
    /// limit's units and the first `n` budgets' reservations.
    #[cold]
    #[inline(never)]
    fn unreserve(&self, plan: &mut Plan, n: usize, gcras: Option<&[Gcra]>) {
        self.release_limits(plan, plan.limits.len(), gcras);
        for hold in &mut plan.budgets[..n] {
            if let Some(cell) = hold.cell.take() {
                self.budgets[hold.budget].at(cell).settle(
                    hold.period,
                    (hold.micros, hold.tokens),
                    (0, 0),
                    self.budgets[hold.budget].def.tokens.is_some(),
                    0,
                    &[],
                );
            }
        }
    }

    /// Gives back every estimated unit of the first `upto` limits of
    /// `plan` (never before now), which then hold nothing.
    #[cold]
    #[inline(never)]
    fn release_limits(&self, plan: &mut Plan, upto: usize, gcras: Option<&[Gcra]>) {
        self.adjust_limits(plan, upto, &Actual::default(), gcras, self.now());
        for hold in &mut plan.limits[..upto] {
            hold.state = None;
        }
    }

    /// Charges or refunds each of the first `upto` limits of `plan` the
    /// difference between its estimate and `actual`, at the parameters it
    /// was admitted with (`gcras`: a replica's share while Redis is out).
    fn adjust_limits(
        &self,
        plan: &Plan,
        upto: usize,
        used: &Actual,
        gcras: Option<&[Gcra]>,
        now: u64,
    ) {
        for hold in &plan.limits[..upto] {
            let limit = &self.limits[hold.limit];
            let est = hold.units;
            let actual = used.units(limit.def.count, est);
            if actual == est {
                continue;
            }
            let gcra = gcras.and_then(|g| g.get(hold.limit)).unwrap_or(&limit.gcra);
            let apply = |cell: &std::sync::atomic::AtomicU64| {
                if actual > est {
                    gcra.charge(cell, now, actual - est)
                } else {
                    gcra.refund_at(cell, now, est - actual)
                }
            };
            if let Some(state) = &hold.state {
                // The state the estimate was taken from. If the table
                // removed it meanwhile, it had become fresh: nothing to
                // refund, and a charge goes to the key's state now.
                if apply(&state.tats[0]) || actual < est {
                    continue;
                }
            }
            Self::adjust_in_table(limit, &plan.limit_key(hold), now, apply);
        }
    }

    /// Applies `apply` to `key`'s state in `limit`'s table (a plan that
    /// holds no state, or whose state was removed: not the common path).
    #[inline(never)]
    fn adjust_in_table(
        limit: &Limit,
        key: &Key<'_>,
        now: u64,
        apply: impl Fn(&std::sync::atomic::AtomicU64) -> bool,
    ) {
        limit.store.with(key, now, true, |entry| {
            let cell = match entry {
                Entry::Tracked(s) | Entry::Overflow(s) => &s.tats[0],
                Entry::Untracked => return Some(()),
            };
            apply(cell).then_some(())
        });
    }

    /// Settles `plan` in this process's memory, and raises the alerts it
    /// crosses.
    pub(crate) fn settle_memory(
        &self,
        plan: &Plan,
        actual: &Actual,
        gcras: Option<&[Gcra]>,
        now: u64,
    ) {
        self.adjust_limits(plan, plan.limits.len(), actual, gcras, now);
        if plan.budgets.is_empty() {
            return;
        }
        let unix = self.unix_at(now);
        for hold in &plan.budgets {
            let b = &self.budgets[hold.budget];
            // Spending counts in the period it settles in.
            let period = if unix < hold.end {
                hold.period
            } else {
                b.period_at(unix).0
            };
            // A plan admitted here holds every budget's cell; one that is
            // not held a reservation nowhere, and only spends.
            let (cell, reserved) = match hold.cell {
                Some(c) => (c, (hold.micros, hold.tokens)),
                None => (b.cell(plan.budget_bytes(hold)), (0, 0)),
            };
            let (spent, crossed) = b.at(cell).settle(
                period,
                reserved,
                (actual.micros, actual.tokens),
                b.def.tokens.is_some(),
                b.def.limit_micros,
                &b.def.alerts,
            );
            if crossed != 0 {
                self.raise(b, plan.budget_key(hold), crossed, spent);
            }
        }
    }

    /// Raises the alerts of `b` whose bits are in `crossed`, for `key`
    /// having spent `spent`.
    #[cold]
    #[inline(never)]
    fn raise(&self, b: &BudgetState, key: std::borrow::Cow<'_, str>, crossed: u32, spent: u64) {
        for (bit, &percent) in b.def.alerts.iter().enumerate() {
            if crossed & (1 << bit) != 0 {
                self.alert(&BudgetAlert {
                    budget: b.def.name.clone(),
                    key: key.clone().into_owned(),
                    percent,
                    spent_micros: spent,
                    limit_micros: b.def.limit_micros,
                });
            }
        }
    }

    /// Counts `alert` and calls the hook with it.
    pub(crate) fn alert(&self, alert: &BudgetAlert) {
        self.counters.alerts.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &self.on_alert {
            hook(alert);
        }
    }

    /// Takes an outcome of the store for `hold`: `Ok` if admitted (the
    /// hold is then live), else the refusal.
    #[inline]
    fn decide(
        &self,
        req_model: &str,
        downgrade: Option<&str>,
        hold: &mut Hold,
        est: Estimate,
        outcome: Outcome,
    ) -> Result<(), Admission> {
        if let Outcome::Admitted(left) = outcome {
            self.counters.hot.add(ADMITTED, 1);
            hold.left = left;
            hold.done = false;
            return Ok(());
        }
        Err(self.refuse(req_model, downgrade, hold, est, outcome))
    }

    /// The answer to a refusing outcome for `hold`.
    #[cold]
    fn refuse(
        &self,
        req_model: &str,
        downgrade: Option<&str>,
        hold: &mut Hold,
        est: Estimate,
        outcome: Outcome,
    ) -> Admission {
        // Refused: nothing is held but the concurrency slot.
        self.release_concurrency(hold.conc.take().as_ref());
        let plan = &hold.plan;
        match outcome {
            Outcome::Admitted(_) => unreachable!("answered above"),
            Outcome::Tokens { limit, wait } => {
                self.counters.refused_tokens.fetch_add(1, Ordering::Relaxed);
                let l = &self.limits[limit];
                let name = l.def.name();
                let message = if wait == u64::MAX {
                    format!(
                        "Request too large for {req_model}: its estimate of {} tokens is above the limit `{name}` of {} tokens per {:?}.",
                        l.def.count.units(est.input, est.output),
                        l.def.quota.count(),
                        l.def.quota.period()
                    )
                } else {
                    format!(
                        "Rate limit reached for {req_model} on tokens (`{name}`: {} per {:?}). Please try again in {}.",
                        l.def.quota.count(),
                        l.def.quota.period(),
                        openai_duration(wait)
                    )
                };
                let mut r = Refused::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    message,
                    "rate_limit_exceeded",
                )
                .kind("tokens");
                let mut headers = HeaderMap::new();
                limit_headers(
                    l,
                    LimitLeft {
                        remaining: 0,
                        reset: wait.min(l.gcra.tau),
                    },
                    &mut headers,
                );
                if wait != u64::MAX {
                    headers.insert(
                        http::header::RETRY_AFTER,
                        HeaderValue::from(wait.div_ceil(1_000_000_000).max(1)),
                    );
                }
                r.headers
                    .extend(headers.into_iter().filter_map(|(n, v)| Some((n?, v))));
                Admission::Refuse(r)
            }
            Outcome::Unavailable => Admission::Refuse(
                Refused::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The token limiter is unavailable; please try again.",
                    "limiter_unavailable",
                )
                .kind("api_error"),
            ),
            Outcome::Budget { budget } => {
                let hold = &plan.budgets[budget];
                let key = plan.budget_key(hold);
                let b = &self.budgets[hold.budget].def;
                if let (OverBudget::Downgrade(to), None) = (&b.over, downgrade)
                    && to != req_model
                {
                    self.counters.downgraded.fetch_add(1, Ordering::Relaxed);
                    return Admission::Downgrade(to.clone());
                }
                self.counters.refused_budget.fetch_add(1, Ordering::Relaxed);
                Admission::refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "You exceeded your current quota: budget `{}` for `{key}` has no room for this request this {}.",
                        b.name,
                        b.period.as_str()
                    ),
                    "insufficient_quota",
                )
            }
        }
    }

    #[inline]
    fn take_concurrency(&self, req: &AdmitRequest<'_>) -> Result<Option<Key<'static>>, ()> {
        let Some(c) = &self.concurrency else {
            return Ok(None);
        };
        let Some(key) = c.key_by.extract_head(req.head) else {
            return Ok(None);
        };
        let key = key.into_owned();
        let mut held = c.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= c.max {
            return Err(());
        }
        *n += 1;
        Ok(Some(key))
    }

    #[inline]
    fn release_concurrency(&self, key: Option<&Key<'static>>) {
        if let (Some(c), Some(key)) = (&self.concurrency, key) {
            let mut held = c.held.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = held.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    held.remove(key);
                }
            }
        }
    }
}

impl Admit for Meter {
    /// Answers are read whole for their cost headers only when the meter
    /// shows them ([`MeterBuilder::cost_fields`]).
    fn fields_on_answers(&self) -> bool {
        self.inner.fields
    }

    fn admit(&self, req: &AdmitRequest<'_>) -> AdmitFuture {
        let inner = &self.inner;
        let mut hold = Hold::new(inner, req.model);
        // Copied straight from the catalog into the ticket (a price is a
        // few hundred bytes), and the estimate made from the catalog's
        // (reading the copy back as it is written stalls).
        let est = inner.prices.with(|prices| {
            let price = prices
                .get(req.model)
                .or_else(|| prices.get(req.upstream_model));
            hold.price = price.copied();
            inner.estimate(req, price)
        });
        if hold.price.is_none() && inner.unpriced == Unpriced::Deny {
            Hold::recycle(hold);
            return AdmitFuture::ready(inner.refuse_unpriced(req.model));
        }
        hold.conc = match inner.take_concurrency(req) {
            Ok(c) => c,
            Err(()) => {
                Hold::recycle(hold);
                return AdmitFuture::ready(inner.refuse_concurrency());
            }
        };
        inner.plan(req, &est, &mut hold.plan);
        match &inner.backend {
            Backend::Memory => {
                let outcome = inner.admit_memory(&mut hold.plan);
                AdmitFuture::ready(
                    match inner.decide(req.model, req.downgraded_from, &mut hold, est, outcome) {
                        Ok(()) => Admission::Admit(hold),
                        Err(refused) => {
                            Hold::recycle(hold);
                            refused
                        }
                    },
                )
            }
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => admit_redis(inner, redis, req, hold, est),
        }
    }
}

/// Admission through Redis (kept out of the memory path's code).
#[cfg(feature = "redis")]
#[inline(never)]
fn admit_redis(
    inner: &Arc<Inner>,
    redis: &super::redis::RedisSpend,
    req: &AdmitRequest<'_>,
    mut hold: Box<Hold>,
    est: Estimate,
) -> AdmitFuture {
    let model = req.model.to_owned();
    let downgrade = req.downgraded_from.map(str::to_owned);
    let check = redis.admit(inner, std::mem::take(&mut hold.plan));
    let inner = Arc::clone(inner);
    AdmitFuture::new(async move {
        let (plan, outcome) = check.await;
        hold.plan = plan;
        match inner.decide(&model, downgrade.as_deref(), &mut hold, est, outcome) {
            Ok(()) => Admission::Admit(hold),
            Err(refused) => {
                Hold::recycle(hold);
                refused
            }
        }
    })
}

impl Inner {
    /// The refusal of a model with no price ([`Unpriced::Deny`]).
    #[cold]
    #[inline(never)]
    fn refuse_unpriced(&self, model: &str) -> Admission {
        self.counters
            .refused_unpriced
            .fetch_add(1, Ordering::Relaxed);
        Admission::refuse(
            StatusCode::FORBIDDEN,
            format!("The model `{model}` has no price here, so it cannot be used."),
            "model_not_priced",
        )
    }

    /// The refusal of a request over the concurrency cap.
    #[cold]
    #[inline(never)]
    fn refuse_concurrency(&self) -> Admission {
        self.counters
            .refused_concurrency
            .fetch_add(1, Ordering::Relaxed);
        let c = self.concurrency.as_ref().map_or(0, |c| c.max);
        Admission::Refuse(
            Refused::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("Too many concurrent requests: at most {c} at once."),
                "rate_limit_exceeded",
            )
            .kind("requests"),
        )
    }
}

// === impl Hold ===

/// What an admitted request holds until its answer is settled: the
/// ticket.
///
/// A settled ticket's allocation is kept, emptied, for the thread's next
/// admission (one per thread), so a request on a thread that settled one
/// allocates nothing, and its fields are written one by one rather than
/// built whole and copied in: `malloc`, `free` and that copy were about a
/// tenth of the instructions of an admission and its settlement.
struct Hold {
    /// The meter; `None` only while the allocation is a thread's spare.
    meter: Option<Arc<Inner>>,
    /// The version admitted: its name's address and length. The router
    /// reports the version that answered with the same allocation of its
    /// name (both are its catalog entry's), which is alive as long as the
    /// request, so equal addresses mean the version admitted; any other
    /// name (a fallback's) is priced afresh. Comparing addresses rather
    /// than names or their hashes keeps a hash of the name off both
    /// admission and settlement.
    model: (usize, usize),
    plan: Plan,
    price: Option<Price>,
    conc: Option<Key<'static>>,
    left: Option<Left>,
    /// Nothing to give back: settled, refused, or a spare.
    done: bool,
}

thread_local! {
    /// The allocation of the last ticket this thread settled.
    static SPARE: std::cell::Cell<Option<Box<Hold>>> = const { std::cell::Cell::new(None) };
}

impl Hold {
    /// A ticket of `meter` for version `model`, with no price and an
    /// empty plan, holding nothing yet.
    #[inline]
    fn new(meter: &Arc<Inner>, model: &str) -> Box<Hold> {
        let mut hold = SPARE
            .try_with(std::cell::Cell::take)
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                Box::new(Hold {
                    meter: None,
                    model: (0, 0),
                    plan: Plan::default(),
                    price: None,
                    conc: None,
                    left: None,
                    done: true,
                })
            });
        hold.meter = Some(Arc::clone(meter));
        hold.model = name_of(model);
        hold.price = None;
        hold.left = None;
        hold.done = true;
        hold
    }

    /// Empties `hold` (which holds nothing any more) and keeps its
    /// allocation as the thread's spare.
    #[inline]
    fn recycle(mut hold: Box<Hold>) {
        hold.meter = None;
        hold.conc = None;
        hold.plan.clear();
        // During the thread's exit it is simply freed.
        let _ = SPARE.try_with(move |spare| spare.set(Some(hold)));
    }
}

/// What an answer used, as the store counts it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Actual {
    pub(crate) input: u64,
    pub(crate) output: u64,
    /// Each limit keeps its estimate if it is more (the answer did not
    /// say what it used).
    pub(crate) keep_estimate: bool,
    pub(crate) micros: u64,
    pub(crate) tokens: u64,
}

impl Actual {
    /// The units a limit counting `count` is charged, against its
    /// estimate `est`.
    pub(crate) fn units(&self, count: super::limit::TokenCount, est: u64) -> u64 {
        let used = count.units(self.input, self.output);
        if self.keep_estimate {
            used.max(est)
        } else {
            used
        }
    }
}

impl Hold {
    fn actual(&self, inner: &Inner, model: &str, usage: &Usage) -> (Actual, bool) {
        // The version that answered (a fallback's may differ from the one
        // admitted), else the price the request was admitted at.
        let fallback_price;
        let price = if name_of(model) == self.model {
            self.price.as_ref()
        } else {
            fallback_price = inner.prices.with(|p| p.get(model).cloned());
            fallback_price.as_ref().or(self.price.as_ref())
        };
        let (micros, priced) = match (price, inner.unpriced) {
            (Some(p), _) => (p.cost(usage).micros(), true),
            (None, Unpriced::Fixed(m)) => (m, false),
            (None, _) => (0, false),
        };
        (
            Actual {
                input: usage.input,
                output: usage.output,
                keep_estimate: false,
                micros,
                tokens: usage.total(),
            },
            priced,
        )
    }

    /// Gives back or charges what the hold took, as `actual` says: the
    /// hold is then done.
    fn finish(&mut self, inner: &Arc<Inner>, actual: &Actual, now: u64) {
        self.done = true;
        inner.release_concurrency(self.conc.as_ref());
        match &inner.backend {
            Backend::Memory => {
                inner.settle_memory(&self.plan, actual, None, now);
            }
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.settle(inner, &self.plan, actual, now),
        }
    }
}

impl Ticket for Hold {
    fn headers(&self, headers: &mut HeaderMap) {
        let Some(inner) = &self.meter else { return };
        if let Some((hold, left)) = self.plan.limits.first().zip(self.left) {
            let limit = &inner.limits[hold.limit];
            let left = match left {
                Left::Known(left) => left,
                Left::At { gcra, tat, now } => LimitLeft {
                    remaining: u64::from(gcra.remaining(tat, now)),
                    reset: gcra.reset_after(tat, now),
                },
            };
            limit_headers(limit, left, headers);
        }
    }

    fn settle(mut self: Box<Self>, record: &UsageRecord) -> Settled {
        let Some(inner) = self.meter.take() else {
            return Settled::default();
        };
        let settled = self.settle_with(&inner, record);
        Hold::recycle(self);
        settled
    }
}

impl Hold {
    /// See [`Ticket::settle`].
    #[inline]
    fn settle_with(&mut self, inner: &Arc<Inner>, record: &UsageRecord) -> Settled {
        let (actual, priced) = self.actual(inner, &record.model, &record.usage);
        // The answer ended `record.duration` after its upstream call
        // started, which was after this admission: so this is at most
        // the few microseconds between them early. A refund is no
        // different for it (a key's state at or before now counts as
        // now), a charge is short by those microseconds, and spending
        // lands in the period it ended in unless it ended that close to
        // the period's end.
        let now = inner.clock.after(self.plan.now, record.duration);
        if record.status.is_success() && !record.reported {
            // An answer whose usage was not seen (an OpenAI stream the
            // client left before its last event, which carries it; a
            // compressed answer, which is not read): what the upstream
            // bills is unknown, so the limits and budgets keep the
            // estimate. Otherwise a client hanging up before the end would
            // never be charged. (A stream cut short after some usage was
            // seen settles from what was seen.)
            let mut held = actual;
            held.keep_estimate = true;
            if let Some(hold) = self.plan.budgets.first() {
                held.micros = held.micros.max(hold.micros);
                held.tokens = held.tokens.max(hold.tokens);
            }
            self.finish(inner, &held, now);
        } else {
            self.finish(inner, &actual, now);
        }
        inner
            .counters
            .hot
            .add_each([(SETTLED, 1), (COST_MICROS_SUM, actual.micros)]);
        if !priced {
            inner.counters.unpriced.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(ledger) = &inner.ledger {
            record_in(ledger, record, actual.micros, priced, inner.unix_at(now));
        }
        let settled = match priced {
            true => Settled::cost(actual.micros),
            false => Settled::default(),
        };
        if inner.fields {
            return with_fields(settled, actual.micros, record);
        }
        settled
    }
}

/// Records an answer in the ledger (its own function: the rest of
/// settlement stays small).
#[inline(never)]
fn record_in(ledger: &Ledger, record: &UsageRecord, micros: u64, priced: bool, unix: u64) {
    ledger.record(
        &LedgerEntry {
            identity: record.identity.as_ref().map(Identity::id),
            tenant: record.tenant(),
            alias: record.alias.as_deref(),
            model: &record.model,
            usage: &record.usage,
            cost_micros: micros,
            priced,
        },
        unix,
    );
}

/// `settled` with the answer's cost and tokens as fields.
#[inline(never)]
fn with_fields(settled: Settled, micros: u64, record: &UsageRecord) -> Settled {
    settled
        .field(COST_MICROS.clone(), HeaderValue::from(micros))
        .field(INPUT_TOKENS.clone(), HeaderValue::from(record.usage.input))
        .field(
            OUTPUT_TOKENS.clone(),
            HeaderValue::from(record.usage.output),
        )
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.done
            && let Some(inner) = self.meter.take()
        {
            // Never answered: everything held comes back.
            let now = inner.now();
            self.finish(&inner, &Actual::default(), now);
        }
    }
}

/// `n / k` rounded up: a shift for a power of two such as the default 4
/// (a division by a value known only at run time costs tens of cycles).
#[inline]
fn div_ceil(n: u64, k: u64) -> u64 {
    if k.is_power_of_two() {
        (n >> k.trailing_zeros()) + u64::from(n & (k - 1) != 0)
    } else {
        n.div_ceil(k)
    }
}

/// A version's name as a ticket keeps it (see [`Hold::model`]).
#[inline]
fn name_of(name: &str) -> (usize, usize) {
    (name.as_ptr() as usize, name.len())
}

/// OpenAI's token headers for one limit, and the IETF fields.
fn limit_headers(limit: &Limit, left: LimitLeft, headers: &mut HeaderMap) {
    let q = u64::from(limit.def.quota.count());
    let remaining = left.remaining.min(q);
    headers.insert(LIMIT_TOKENS.clone(), HeaderValue::from(q));
    headers.insert(REMAINING_TOKENS.clone(), HeaderValue::from(remaining));
    if let Ok(v) = HeaderValue::from_str(&openai_duration(left.reset)) {
        headers.insert(RESET_TOKENS.clone(), v);
    }
    let name = limit.def.name();
    let t = left.reset.div_ceil(1_000_000_000);
    if let Ok(v) = HeaderValue::from_str(&format!("\"{name}\";r={remaining};t={t}")) {
        headers.append(RATELIMIT.clone(), v);
    }
    headers.append(RATELIMIT_POLICY.clone(), limit.policy.clone());
}

/// A duration as OpenAI writes it in `x-ratelimit-reset-tokens`: `20ms`,
/// `1s`, `6m0s`, `1h2m3s`.
pub(crate) fn openai_duration(nanos: u64) -> String {
    let d = Duration::from_nanos(nanos);
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis().max(u128::from(nanos > 0)));
    }
    let secs = nanos.div_ceil(1_000_000_000);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        let _ = write!(out, "{h}h{m}m{s}s");
    } else if m > 0 {
        let _ = write!(out, "{m}m{s}s");
    } else {
        let _ = write!(out, "{s}s");
    }
    out
}

// === MeterBuilder ===

/// Builds a [`Meter`]; see [`Meter::builder`].
pub struct MeterBuilder {
    prices: PriceCatalog,
    unpriced: Unpriced,
    bytes_per_token: u64,
    default_max_tokens: u64,
    limits: Vec<TokenLimit>,
    budgets: Vec<Budget>,
    concurrency: Option<(KeyBy, u32)>,
    ledger: Option<Arc<Ledger>>,
    clock: Option<Box<dyn Clock>>,
    wall: Option<Box<dyn Fn() -> u64 + Send + Sync>>,
    fields: bool,
    max_keys: usize,
    on_alert: Option<AlertHook>,
    #[cfg(feature = "redis")]
    redis: Option<super::redis::RedisSpendBuilder>,
}

impl Default for MeterBuilder {
    fn default() -> Self {
        Self {
            prices: PriceCatalog::new(),
            unpriced: Unpriced::Free,
            bytes_per_token: 4,
            default_max_tokens: 4096,
            limits: Vec::new(),
            budgets: Vec::new(),
            concurrency: None,
            ledger: Some(Arc::new(Ledger::new())),
            clock: None,
            wall: None,
            fields: true,
            max_keys: 100_000,
            on_alert: None,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}

impl MeterBuilder {
    /// The prices answers are costed at (none by default: every model is
    /// [unpriced](Self::unpriced)).
    pub fn prices(mut self, prices: PriceCatalog) -> Self {
        self.prices = prices;
        self
    }

    /// What to do with a model that has no price ([`Unpriced::Free`] by
    /// default).
    pub fn unpriced(mut self, unpriced: Unpriced) -> Self {
        self.unpriced = unpriced;
        self
    }

    /// Input tokens are estimated at admission as the body's bytes divided
    /// by this (4 by default; 1 never underestimates).
    pub fn bytes_per_token(mut self, k: u64) -> Self {
        self.bytes_per_token = k.max(1);
        self
    }

    /// Output tokens estimated for a request that sets no `max_tokens`
    /// (4096 by default), capped by the model's `max_output_tokens`.
    pub fn default_max_tokens(mut self, tokens: u64) -> Self {
        self.default_max_tokens = tokens;
        self
    }

    /// Adds a token limit.
    pub fn token_limit(mut self, limit: TokenLimit) -> Self {
        self.limits.push(limit);
        self
    }

    /// Adds a budget.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budgets.push(budget);
        self
    }

    /// At most `max` requests in flight at once per key `key_by` reads.
    pub fn max_concurrent(mut self, key_by: KeyBy, max: u32) -> Self {
        self.concurrency = Some((key_by, max));
        self
    }

    /// Keeps tokens and cost per identity, tenant, alias and version in
    /// this ledger (a new one by default), or in none.
    pub fn ledger(mut self, ledger: Option<Arc<Ledger>>) -> Self {
        self.ledger = ledger;
        self
    }

    /// The clock token limits run on (monotonic by default).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Box::new(clock));
        self
    }

    /// The wall clock budgets' calendar periods and the ledger read, in
    /// Unix seconds (the system's by default).
    pub fn wall_clock(mut self, now: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.wall = Some(Box::new(now));
        self
    }

    /// Whether answers show their cost and tokens (headers, or comment
    /// lines at the end of a stream); on by default.
    pub fn cost_fields(mut self, on: bool) -> Self {
        self.fields = on;
        self
    }

    /// The most keys each token limit and budget keeps in memory (100,000
    /// by default). Beyond it new keys of a token limit share one state, as
    /// the rate limiter's do, and those of a budget share one cell.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n.max(1);
        self
    }

    /// Calls `hook` when a key's spending crosses one of its budget's
    /// [alert thresholds](Budget::alert_at) (once per key, threshold and
    /// period).
    pub fn on_alert(mut self, hook: impl Fn(&BudgetAlert) + Send + Sync + 'static) -> Self {
        self.on_alert = Some(Arc::new(hook));
        self
    }

    /// Counts limits and budgets in Redis, shared by every replica (feature
    /// `redis`), instead of this process's memory.
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis(mut self, redis: super::redis::RedisSpendBuilder) -> Self {
        self.redis = Some(redis);
        self
    }

    /// Checks and builds.
    pub fn build(self) -> Result<Meter, SpendError> {
        let mut names = std::collections::HashSet::new();
        let mut limits = Vec::with_capacity(self.limits.len());
        for def in self.limits {
            let name = def.name();
            if !names.insert(format!("limit:{name}")) {
                return Err(SpendError::Duplicate(name));
            }
            let gcra =
                Gcra::new(&def.quota).ok_or_else(|| SpendError::InvalidLimit(name.clone()))?;
            let policy = crate::ratelimit::gcra_api::policy(&[(
                name,
                def.quota.count(),
                u64::try_from(def.quota.period().as_nanos()).unwrap_or(u64::MAX),
            )]);
            limits.push(Limit {
                def,
                gcra,
                policy,
                store: Store::new(self.max_keys, true),
                near: ThreadLocal::new(),
            });
        }
        let mut budgets = Vec::with_capacity(self.budgets.len());
        for def in self.budgets {
            if !names.insert(format!("budget:{}", def.name)) {
                return Err(SpendError::Duplicate(def.name));
            }
            if def.name.is_empty()
                || !def
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            {
                return Err(SpendError::InvalidName(def.name));
            }
            budgets.push(BudgetState {
                def,
                cells: papaya::HashMap::builder()
                    .hasher(foldhash::fast::RandomState::default())
                    .build(),
                // Room for a few cells made by losing first requests.
                near: ThreadLocal::new(),
                arena: Cells::new(self.max_keys.saturating_add(256)),
                overflow: Cell::default(),
                max_keys: self.max_keys,
                period: PeriodCache::default(),
            });
        }
        #[cfg(feature = "redis")]
        let backend = match self.redis {
            Some(r) => {
                let gcras: Vec<Gcra> = limits.iter().map(|l| l.gcra).collect();
                let quotas: Vec<_> = limits.iter().map(|l| l.def.quota.clone()).collect();
                Backend::Redis(r.build(&gcras, &quotas).map_err(|e| match e {
                    crate::ratelimit::RateLimitError::NoReplicas => SpendError::NoReplicas,
                    other => SpendError::InvalidLimit(other.to_string()),
                })?)
            }
            None => Backend::Memory,
        };
        #[cfg(not(feature = "redis"))]
        let backend = Backend::Memory;
        Ok(Meter {
            inner: Arc::new(Inner {
                prices: Swappable::new(Arc::new(self.prices)),
                unpriced: self.unpriced,
                bytes_per_token: self.bytes_per_token,
                default_max_tokens: self.default_max_tokens,
                limits: limits.into(),
                budgets: budgets.into(),
                concurrency: self.concurrency.map(|(key_by, max)| Concurrency {
                    key_by,
                    max,
                    held: Mutex::default(),
                }),
                ledger: self.ledger,
                wall: match (self.wall, &self.clock) {
                    (Some(f), _) => Wall::Given(f),
                    (None, None) => Wall::Derived {
                        unix_nanos: unix_nanos_now(),
                    },
                    // A clock of the user's (a test's) with the system's
                    // wall clock: read it each time.
                    (None, Some(_)) => Wall::Given(Box::new(|| unix_nanos_now() / 1_000_000_000)),
                },
                clock: match self.clock {
                    Some(c) => ClockSource::Custom(c),
                    None => ClockSource::Monotonic(MonotonicClock::new()),
                },
                fields: self.fields,
                on_alert: self.on_alert,
                counters: Counters::default(),
                backend,
            }),
        })
    }
}

impl fmt::Debug for MeterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeterBuilder")
            .field("unpriced", &self.unpriced)
            .field("limits", &self.limits)
            .field("budgets", &self.budgets)
            .finish_non_exhaustive()
    }
}

fn unix_nanos_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn div_ceil_is_the_division_rounded_up() {
        for k in 1..=17u64 {
            for n in (0..100).chain([u64::MAX - 1, u64::MAX, 1 << 63, (1 << 63) + 1]) {
                assert_eq!(div_ceil(n, k), n.div_ceil(k), "{n} / {k}");
            }
        }
    }

    #[test]
    fn durations() {
        assert_eq!(openai_duration(20_000_000), "20ms");
        assert_eq!(openai_duration(1), "1ms");
        assert_eq!(openai_duration(1_000_000_000), "1s");
        assert_eq!(openai_duration(360_000_000_000), "6m0s");
        assert_eq!(openai_duration(3_723_000_000_000), "1h2m3s");
    }
}
