//! Counters of tokens and cost per identity, tenant, alias and model
//! version: all-time (for `/metrics`) and by the hour (for an admin query
//! such as `GET /usage?by=tenant&since=…`).
//!
//! ```
//! use switchyard::model::providers::Usage;
//! use switchyard::spend::ledger::{GroupBy, Ledger, LedgerEntry};
//!
//! let ledger = Ledger::new();
//! let mut usage = Usage::default();
//! (usage.input, usage.output) = (1_000, 200);
//!
//! let hour = 3_600;
//! let day_start = 1_700_006_400; // a multiple of 3 600
//! let answer = LedgerEntry::new("gpt-4o-2024-08-06", &usage)
//!     .identity("alice")
//!     .tenant("acme")
//!     .alias("gpt-4o")
//!     .cost(4_500);
//! ledger.record(&answer, day_start + 10);
//! ledger.record(&answer, day_start + 2 * hour);
//! // A model without a price: counted, at no cost, as unpriced.
//! ledger.record(&LedgerEntry::new("mystery", &usage).tenant("acme"), day_start + 2 * hour);
//!
//! let acme = &ledger.query(GroupBy::Tenant, day_start + hour, None)[0];
//! assert_eq!((acme.key.as_str(), acme.requests, acme.unpriced_requests), ("acme", 2, 1));
//! assert_eq!((acme.input_tokens, acme.cost_micros), (2_000, 4_500));
//!
//! let by_alias = ledger.totals("alias".parse().unwrap());
//! assert_eq!((by_alias[0].requests, by_alias[0].cost_micros), (2, 9_000));
//! ```
//!
//! # What is counted
//!
//! Each [`record`](Ledger::record) adds one request, its tokens and its
//! cost under its key in each [dimension](GroupBy): its identity, tenant,
//! alias and model version. An entry without an identity, tenant or alias
//! is not counted in that dimension; every entry has a model. An entry
//! not [priced](LedgerEntry::cost) adds to `unpriced_requests` and no
//! cost.
//!
//! # Time
//!
//! Times are passed in, as Unix seconds, so that callers (and tests)
//! control them. Counts are kept all-time and in hourly buckets, the last
//! [`with_retention`](Ledger::with_retention) hours of them (35 days by
//! default) counting back from the latest hour recorded. A
//! [`query`](Ledger::query) sums the buckets whose hour overlaps
//! `[since, until)`, so its bounds are rounded out to whole hours. A
//! record older than the retention counts in the all-time totals only.
//!
//! # Memory
//!
//! Memory is bounded per dimension:
//!
//! * at most [`with_max_keys`](Ledger::with_max_keys) keys (10 000 by
//!   default) plus `"(other)"`, all-time; a new key beyond them is counted
//!   under [`OTHER`]. Keys are never forgotten: the all-time counters of
//!   `/metrics` must not go back. Each costs its length and about 100
//!   bytes.
//! * per retained hour, one set of counters (about 100 bytes) for each key
//!   with traffic in that hour, and nothing for the others.
//!
//! The worst case is `(max_keys + 1) × retention × ~100 bytes` per
//! dimension (every key busy every hour: 840 MB with the defaults), the
//! usual far less (1 000 keys busy 12 hours a day for 35 days: 42 MB). A
//! gateway with many keys and little memory lowers the retention or the
//! key count.
//!
//! # Cost of a record
//!
//! [`record`](Ledger::record) takes no lock: per dimension, one lock-free
//! hash probe (papaya) for the key's all-time counters, one atomic load of
//! the hour's bucket and one probe in it, then relaxed atomic additions.
//! It allocates only for a key's first record and its first record of an
//! hour. Queries walk the retained buckets and allocate their answer.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};

use super::price::Micros;
use crate::model::UsageRecord;
use crate::model::providers::Usage;

/// The key under which keys beyond a dimension's
/// [`max_keys`](Ledger::with_max_keys) are counted. A real key spelled
/// the same shares its counters.
pub const OTHER: &str = "(other)";

/// Keys kept per dimension unless told otherwise.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// Hourly buckets kept unless told otherwise: 35 days, a calendar month
/// and some.
pub const DEFAULT_RETENTION_HOURS: u32 = 24 * 35;

const SECS_PER_HOUR: u64 = 3_600;

type Hasher = foldhash::fast::RandomState;

// === impl GroupBy ===

/// What usage is counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GroupBy {
    /// The caller's [identity id](crate::auth::Identity::id).
    Identity,
    /// The caller's tenant.
    Tenant,
    /// The model alias the client asked for.
    Alias,
    /// The model version that answered (`version` is accepted as its name
    /// too).
    #[serde(alias = "version")]
    Model,
}

impl GroupBy {
    /// Every dimension, in the order of the enum.
    pub const ALL: [GroupBy; 4] = [Self::Identity, Self::Tenant, Self::Alias, Self::Model];

    /// Its name: `identity`, `tenant`, `alias`, `model`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Tenant => "tenant",
            Self::Alias => "alias",
            Self::Model => "model",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Identity => 0,
            Self::Tenant => 1,
            Self::Alias => 2,
            Self::Model => 3,
        }
    }
}

impl fmt::Display for GroupBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A [`GroupBy`] name that is none of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot group usage by `{0}`: expected identity, tenant, alias or model")]
pub struct UnknownGroupBy(pub String);

impl FromStr for GroupBy {
    type Err = UnknownGroupBy;

    /// `identity`, `tenant`, `alias`, `model` or `version`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        Self::ALL
            .into_iter()
            .find(|by| by.as_str().eq_ignore_ascii_case(name))
            .or_else(|| name.eq_ignore_ascii_case("version").then_some(Self::Model))
            .ok_or_else(|| UnknownGroupBy(s.to_owned()))
    }
}

// === impl LedgerEntry ===

/// One answered request, as the ledger counts it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LedgerEntry<'a> {
    /// The caller's identity id, if authenticated.
    pub identity: Option<&'a str>,
    /// The caller's tenant, if any.
    pub tenant: Option<&'a str>,
    /// The alias asked for, if any.
    pub alias: Option<&'a str>,
    /// The model version that answered.
    pub model: &'a str,
    /// Its tokens.
    pub usage: &'a Usage,
    /// Its cost; 0 when not priced.
    pub cost_micros: Micros,
    /// Whether the model had a price.
    pub priced: bool,
}

impl<'a> LedgerEntry<'a> {
    /// An answer of `model` using `usage`, with no identity, tenant or
    /// alias, and not priced.
    pub fn new(model: &'a str, usage: &'a Usage) -> Self {
        Self {
            identity: None,
            tenant: None,
            alias: None,
            model,
            usage,
            cost_micros: 0,
            priced: false,
        }
    }

    /// The entry of a [`UsageRecord`]: its identity (unless anonymous),
    /// tenant, alias, model and usage; not priced.
    pub fn from_record(record: &'a UsageRecord) -> Self {
        let identity = record.identity.as_ref().filter(|i| !i.is_anonymous());
        Self {
            identity: identity.map(|i| i.id()),
            tenant: record.tenant(),
            alias: record.alias.as_deref(),
            ..Self::new(&record.model, &record.usage)
        }
    }

    /// With this identity.
    pub fn identity(mut self, identity: &'a str) -> Self {
        self.identity = Some(identity);
        self
    }

    /// With this tenant.
    pub fn tenant(mut self, tenant: &'a str) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// With this alias.
    pub fn alias(mut self, alias: &'a str) -> Self {
        self.alias = Some(alias);
        self
    }

    /// Priced, at `micros`.
    pub fn cost(mut self, micros: Micros) -> Self {
        self.cost_micros = micros;
        self.priced = true;
        self
    }
}

// === impl UsageRow ===

/// The usage of one key over some time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct UsageRow {
    /// The identity, tenant, alias or model, or [`OTHER`].
    pub key: String,
    /// Answered requests.
    pub requests: u64,
    /// Input tokens, cached ones included.
    pub input_tokens: u64,
    /// Output tokens, reasoning included.
    pub output_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cached_read_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_write_tokens: u64,
    /// Output tokens of reasoning.
    pub reasoning_tokens: u64,
    /// The cost of the priced requests, in micro-units.
    pub cost_micros: u64,
    /// Requests whose model had no price (counted in `requests` and the
    /// tokens, not in the cost).
    pub unpriced_requests: u64,
}

impl UsageRow {
    fn new(key: &str, counts: [u64; FIELDS]) -> Self {
        let [
            requests,
            input_tokens,
            output_tokens,
            cached_read_tokens,
            cache_write_tokens,
            reasoning_tokens,
            cost_micros,
            unpriced_requests,
        ] = counts;
        Self {
            key: key.to_owned(),
            requests,
            input_tokens,
            output_tokens,
            cached_read_tokens,
            cache_write_tokens,
            reasoning_tokens,
            cost_micros,
            unpriced_requests,
        }
    }
}

/// Most expensive first, then by key.
fn sorted(mut rows: Vec<UsageRow>) -> Vec<UsageRow> {
    rows.sort_unstable_by(|a, b| {
        b.cost_micros
            .cmp(&a.cost_micros)
            .then_with(|| a.key.cmp(&b.key))
    });
    rows
}

// === Counters ===

const FIELDS: usize = 8;

/// Requests, input, output, cached read, cache write, reasoning, cost,
/// unpriced: the fields of a [`UsageRow`], in order.
#[derive(Default)]
struct Counters([AtomicU64; FIELDS]);

impl Counters {
    fn add(&self, entry: &LedgerEntry<'_>) {
        let u = entry.usage;
        let counts = [
            1,
            u.input,
            u.output,
            u.cached_read,
            u.cache_write,
            u.reasoning,
            entry.cost_micros,
            u64::from(!entry.priced),
        ];
        for (counter, n) in self.0.iter().zip(counts) {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    fn load(&self) -> [u64; FIELDS] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }
}

fn add_into(sum: &mut [u64; FIELDS], counts: [u64; FIELDS]) {
    for (s, n) in sum.iter_mut().zip(counts) {
        *s = s.saturating_add(n);
    }
}

/// A key's all-time counters, with its name shared by its hourly ones.
struct KeySlot {
    name: Arc<str>,
    counters: Counters,
}

/// The counters of one hour, for the keys with traffic in it.
struct HourBucket {
    hour: u64,
    keys: papaya::HashMap<Arc<str>, Counters, Hasher>,
}

fn map<V>() -> papaya::HashMap<Arc<str>, V, Hasher> {
    // Blocking resizes: see `ratelimit::store` for why.
    papaya::HashMap::builder()
        .hasher(Hasher::default())
        .resize_mode(papaya::ResizeMode::Blocking)
        .build()
}

// === Dimension ===

/// The counters of one [`GroupBy`].
struct Dimension {
    totals: papaya::HashMap<Arc<str>, KeySlot, Hasher>,
    /// Keys admitted into `totals`, `OTHER` excepted; never above
    /// `max_keys`.
    admitted: AtomicUsize,
    /// Hour `h` lives in `hours[h % hours.len()]`.
    hours: Box<[ArcSwapOption<HourBucket>]>,
}

impl Dimension {
    fn new(retention: u32) -> Self {
        Self {
            totals: map(),
            admitted: AtomicUsize::new(0),
            hours: (0..retention.max(1))
                .map(|_| ArcSwapOption::empty())
                .collect(),
        }
    }

    fn record(&self, key: &str, entry: &LedgerEntry<'_>, hour: Option<u64>, max_keys: usize) {
        let totals = self.totals.pin();
        let slot = match totals.get(key) {
            Some(slot) => slot,
            None => self.admit(&totals, key, max_keys),
        };
        slot.counters.add(entry);

        let Some(hour) = hour else { return };
        let guard = self.bucket(hour);
        let Some(bucket) = guard.as_ref().and_then(|g| g.as_deref()) else {
            return;
        };
        let keys = bucket.keys.pin();
        let counters = match keys.get(&*slot.name) {
            Some(counters) => counters,
            None => keys.get_or_insert_with(slot.name.clone(), Counters::default),
        };
        counters.add(entry);
    }

    /// The slot of a key seen for the first time: its own while fewer than
    /// `max_keys` keys are, else [`OTHER`]'s.
    fn admit<'m>(
        &self,
        totals: &'m papaya::HashMapRef<'_, Arc<str>, KeySlot, Hasher, impl papaya::Guard>,
        key: &str,
        max_keys: usize,
    ) -> &'m KeySlot {
        let slot = |name: &str| {
            let name: Arc<str> = Arc::from(name);
            (
                name.clone(),
                KeySlot {
                    name,
                    counters: Counters::default(),
                },
            )
        };
        if self.admitted.fetch_add(1, Ordering::AcqRel) < max_keys {
            let (name, new) = slot(key);
            match totals.try_insert(name, new) {
                Ok(slot) => return slot,
                // Another thread admitted it meanwhile: give the place back.
                Err(occupied) => {
                    self.admitted.fetch_sub(1, Ordering::AcqRel);
                    return occupied.current;
                }
            }
        }
        self.admitted.fetch_sub(1, Ordering::AcqRel);
        match totals.get(OTHER) {
            Some(other) => other,
            None => {
                let (name, new) = slot(OTHER);
                totals.get_or_insert(name, new)
            }
        }
    }

    /// The bucket of `hour`, made if its place holds an older hour or
    /// none; `None` if it holds a newer one (`hour` is no longer kept).
    fn bucket(&self, hour: u64) -> Option<arc_swap::Guard<Option<Arc<HourBucket>>>> {
        let len = self.hours.len() as u64;
        // Below `hours.len()`, a `usize`.
        let place = &self.hours[(hour % len) as usize];
        loop {
            let current = place.load();
            match &*current {
                Some(bucket) if bucket.hour == hour => return Some(current),
                Some(bucket) if bucket.hour > hour => return None,
                _ => {
                    let fresh = Arc::new(HourBucket { hour, keys: map() });
                    // Whoever wins, the next load sees this hour's bucket
                    // (or a newer one).
                    place.compare_and_swap(&*current, Some(fresh));
                }
            }
        }
    }

    fn totals(&self) -> Vec<UsageRow> {
        let totals = self.totals.pin();
        let rows = totals
            .iter()
            .map(|(name, slot)| UsageRow::new(name, slot.counters.load()))
            .collect();
        sorted(rows)
    }

    fn query(&self, first_hour: u64, since: u64, until: Option<u64>) -> Vec<UsageRow> {
        let mut sums: HashMap<Arc<str>, [u64; FIELDS]> = HashMap::new();
        for place in &self.hours {
            let bucket = place.load();
            let Some(bucket) = &*bucket else { continue };
            let start = bucket.hour.saturating_mul(SECS_PER_HOUR);
            let end = start.saturating_add(SECS_PER_HOUR);
            if bucket.hour < first_hour || end <= since || until.is_some_and(|u| start >= u) {
                continue;
            }
            for (name, counters) in bucket.keys.pin().iter() {
                add_into(sums.entry(name.clone()).or_default(), counters.load());
            }
        }
        let rows = sums
            .into_iter()
            .map(|(name, counts)| UsageRow::new(&name, counts))
            .collect();
        sorted(rows)
    }
}

// === impl Ledger ===

/// Counters of tokens and cost per identity, tenant, alias and model
/// version, all-time and by the hour (see the [module docs](self)).
///
/// `Send + Sync`: share it behind an `Arc`.
pub struct Ledger {
    dimensions: [Dimension; 4],
    max_keys: usize,
    retention: u32,
    latest_hour: AtomicU64,
}

impl Default for Ledger {
    fn default() -> Self {
        Self::new()
    }
}

impl Ledger {
    /// An empty ledger: [`DEFAULT_MAX_KEYS`] keys per dimension,
    /// [`DEFAULT_RETENTION_HOURS`] hourly buckets.
    pub fn new() -> Self {
        Self::with_limits(DEFAULT_MAX_KEYS, DEFAULT_RETENTION_HOURS)
    }

    fn with_limits(max_keys: usize, retention: u32) -> Self {
        let retention = retention.max(1);
        Self {
            dimensions: std::array::from_fn(|_| Dimension::new(retention)),
            max_keys,
            retention,
            latest_hour: AtomicU64::new(0),
        }
    }

    /// At most `n` keys per dimension; further keys are counted under
    /// [`OTHER`]. Meant at construction: the ledger starts empty.
    pub fn with_max_keys(self, n: usize) -> Self {
        Self::with_limits(n, self.retention)
    }

    /// Keeps `hours` hourly buckets (at least one). Meant at construction:
    /// the ledger starts empty.
    pub fn with_retention(self, hours: u32) -> Self {
        Self::with_limits(self.max_keys, hours)
    }

    /// The keys kept per dimension.
    pub fn max_keys(&self) -> usize {
        self.max_keys
    }

    /// The hourly buckets kept.
    pub fn retention_hours(&self) -> u32 {
        self.retention
    }

    /// Counts `entry`, answered at `unix_secs`.
    pub fn record(&self, entry: &LedgerEntry<'_>, unix_secs: u64) {
        let hour = unix_secs / SECS_PER_HOUR;
        let latest = self.latest_hour.fetch_max(hour, Ordering::AcqRel).max(hour);
        let hour = (hour >= self.first_hour(latest)).then_some(hour);
        let keys = [entry.identity, entry.tenant, entry.alias, Some(entry.model)];
        for (dimension, key) in self.dimensions.iter().zip(keys) {
            if let Some(key) = key {
                dimension.record(key, entry, hour, self.max_keys);
            }
        }
    }

    /// Usage per key of `by` in the hours overlapping `[since_unix,
    /// until_unix)` (no end when `None`), among those retained; most
    /// expensive first, then by key. Keys without traffic in them are
    /// left out.
    pub fn query(&self, by: GroupBy, since_unix: u64, until_unix: Option<u64>) -> Vec<UsageRow> {
        let first = self.first_hour(self.latest_hour.load(Ordering::Acquire));
        self.dimensions[by.index()].query(first, since_unix, until_unix)
    }

    /// All-time usage per key of `by`, most expensive first, then by key.
    pub fn totals(&self, by: GroupBy) -> Vec<UsageRow> {
        self.dimensions[by.index()].totals()
    }

    /// How many keys `by` counts, [`OTHER`] included.
    pub fn keys(&self, by: GroupBy) -> usize {
        self.dimensions[by.index()].totals.len()
    }

    /// The oldest hour retained when `latest` is the newest recorded.
    fn first_hour(&self, latest: u64) -> u64 {
        (latest + 1).saturating_sub(u64::from(self.retention))
    }
}

impl fmt::Debug for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Ledger");
        for by in GroupBy::ALL {
            d.field(by.as_str(), &self.keys(by));
        }
        d.field("max_keys", &self.max_keys)
            .field("retention_hours", &self.retention)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::StatusCode;

    use super::*;
    use crate::auth::Identity;
    use crate::model::ClientApi;
    use crate::model::providers::Protocol;

    const H: u64 = SECS_PER_HOUR;
    /// An hour boundary.
    const T0: u64 = 1_700_002_800;

    fn usage(input: u64, output: u64) -> Usage {
        Usage {
            input,
            cached_read: input / 2,
            cache_write: input / 4,
            output,
            reasoning: output / 3,
            truncated: false,
        }
    }

    fn row<'r>(rows: &'r [UsageRow], key: &str) -> &'r UsageRow {
        rows.iter()
            .find(|r| r.key == key)
            .unwrap_or_else(|| panic!("no {key} in {rows:?}"))
    }

    fn keys(rows: &[UsageRow]) -> Vec<&str> {
        rows.iter().map(|r| r.key.as_str()).collect()
    }

    #[test]
    fn counts_per_dimension() {
        assert_eq!(T0 % H, 0);
        let ledger = Ledger::new();
        let u1 = usage(1_000, 300);
        let u2 = usage(40, 9);
        ledger.record(
            &LedgerEntry::new("gpt-4o-v2", &u1)
                .identity("alice")
                .tenant("acme")
                .alias("gpt-4o")
                .cost(7_000),
            T0,
        );
        ledger.record(
            &LedgerEntry::new("gpt-4o-v1", &u2)
                .identity("bob")
                .tenant("acme")
                .alias("gpt-4o")
                .cost(50),
            T0 + 1,
        );
        // No identity, tenant nor alias; no price.
        ledger.record(&LedgerEntry::new("local", &u2), T0 + 2);

        let tenants = ledger.totals(GroupBy::Tenant);
        assert_eq!(
            tenants,
            [UsageRow {
                key: "acme".into(),
                requests: 2,
                input_tokens: 1_040,
                output_tokens: 309,
                cached_read_tokens: 520,
                cache_write_tokens: 260,
                reasoning_tokens: 103,
                cost_micros: 7_050,
                unpriced_requests: 0,
            }]
        );
        let identities = ledger.totals(GroupBy::Identity);
        assert_eq!(keys(&identities), ["alice", "bob"]);
        assert_eq!(row(&identities, "bob").input_tokens, 40);
        assert_eq!(keys(&ledger.totals(GroupBy::Alias)), ["gpt-4o"]);

        let models = ledger.totals(GroupBy::Model);
        // Most expensive first; the unpriced one last.
        assert_eq!(keys(&models), ["gpt-4o-v2", "gpt-4o-v1", "local"]);
        let local = row(&models, "local");
        assert_eq!(
            (local.requests, local.unpriced_requests, local.cost_micros),
            (1, 1, 0)
        );

        // The same within the hour.
        assert_eq!(ledger.query(GroupBy::Tenant, T0, Some(T0 + H)), tenants);
        assert_eq!(ledger.query(GroupBy::Model, 0, None), models);
        assert_eq!(
            [ledger.keys(GroupBy::Identity), ledger.keys(GroupBy::Model)],
            [2, 3]
        );
    }

    #[test]
    fn rows_sort_by_cost_then_key() {
        let ledger = Ledger::new();
        let u = usage(1, 1);
        for (tenant, cost) in [("c", 5), ("a", 5), ("b", 9), ("d", 0)] {
            ledger.record(&LedgerEntry::new("m", &u).tenant(tenant).cost(cost), T0);
        }
        assert_eq!(keys(&ledger.totals(GroupBy::Tenant)), ["b", "a", "c", "d"]);
        assert_eq!(
            keys(&ledger.query(GroupBy::Tenant, T0, None)),
            ["b", "a", "c", "d"]
        );
    }

    #[test]
    fn since_and_until_select_whole_hours() {
        let ledger = Ledger::new();
        let u = usage(100, 10);
        // One request in each of hours 0, 1, 2, 5 after T0, costing 1, 2,
        // 4, 8.
        for (hour, cost) in [(0, 1), (1, 2), (2, 4), (5, 8)] {
            let entry = LedgerEntry::new("m", &u).tenant("t").cost(cost);
            ledger.record(&entry, T0 + hour * H + 1_800);
        }
        let cost = |since: u64, until: Option<u64>| {
            ledger
                .query(GroupBy::Tenant, since, until)
                .first()
                .map_or(0, |r| r.cost_micros)
        };
        assert_eq!(cost(0, None), 15);
        assert_eq!(cost(T0, None), 15);
        assert_eq!(cost(T0 + H, None), 14);
        // A bound inside an hour takes the whole hour.
        assert_eq!(cost(T0 + H + 3_599, None), 14);
        assert_eq!(cost(T0 + 2 * H, None), 12);
        assert_eq!(cost(T0 + 3 * H, None), 8);
        assert_eq!(cost(T0 + 6 * H, None), 0);
        assert_eq!(cost(T0, Some(T0 + H)), 1);
        assert_eq!(cost(T0, Some(T0 + H + 1)), 3);
        assert_eq!(cost(T0 + H, Some(T0 + 5 * H)), 6);
        assert_eq!(cost(T0 + H, Some(T0 + H)), 0);
        assert!(
            ledger
                .query(GroupBy::Tenant, T0 + 3 * H, Some(T0 + 5 * H))
                .is_empty()
        );
        let rows = ledger.query(GroupBy::Tenant, T0 + H, Some(T0 + 3 * H));
        assert_eq!((rows[0].requests, rows[0].input_tokens), (2, 200));
    }

    #[test]
    fn old_buckets_leave_the_queries_not_the_totals() {
        let ledger = Ledger::new().with_retention(24);
        assert_eq!(ledger.retention_hours(), 24);
        let u = usage(10, 1);
        let entry = LedgerEntry::new("m", &u).alias("a").cost(1);
        ledger.record(&entry, T0); // hour 0
        ledger.record(&entry, T0 + 3 * H); // hour 3
        assert_eq!(ledger.query(GroupBy::Alias, 0, None)[0].requests, 2);

        // Hour 23: hour 0 is the oldest kept.
        ledger.record(&entry, T0 + 23 * H);
        assert_eq!(ledger.query(GroupBy::Alias, 0, None)[0].requests, 3);

        // Hour 24 takes hour 0's place.
        ledger.record(&entry, T0 + 24 * H);
        assert_eq!(ledger.query(GroupBy::Alias, 0, None)[0].requests, 3);
        assert!(ledger.query(GroupBy::Alias, 0, Some(T0 + H)).is_empty());

        // Hour 30: hour 3 is out of the window though its place (hour 27)
        // was never taken.
        ledger.record(&entry, T0 + 30 * H);
        let rows = ledger.query(GroupBy::Alias, 0, None);
        assert_eq!(rows[0].requests, 3, "hours 23, 24 and 30");

        // A record older than the window counts all-time only, and does
        // not take the place of hour 30 (hour 6's place too).
        ledger.record(&entry, T0 + 6 * H);
        assert_eq!(ledger.query(GroupBy::Alias, 0, None)[0].requests, 3);
        assert_eq!(ledger.totals(GroupBy::Alias)[0].requests, 6);
        let hour_30 = ledger.query(GroupBy::Alias, T0 + 30 * H, Some(T0 + 31 * H));
        assert_eq!(hour_30[0].requests, 1);
    }

    #[test]
    fn keys_beyond_the_limit_share_other() {
        let ledger = Ledger::new().with_max_keys(3);
        assert_eq!(ledger.max_keys(), 3);
        let u = usage(10, 2);
        let ids = ["a", "b", "c", "d", "e", "a", "d"];
        for id in ids {
            ledger.record(&LedgerEntry::new("m", &u).identity(id).cost(1), T0);
        }
        let rows = ledger.totals(GroupBy::Identity);
        assert_eq!(keys(&rows), ["(other)", "a", "b", "c"]);
        assert_eq!(row(&rows, OTHER).requests, 3);
        assert_eq!(row(&rows, "a").requests, 2);
        assert_eq!(ledger.keys(GroupBy::Identity), 4);
        let hourly = ledger.query(GroupBy::Identity, T0, None);
        assert_eq!(hourly, rows);
        // Requests are all counted.
        assert_eq!(
            rows.iter().map(|r| r.requests).sum::<u64>(),
            ids.len() as u64
        );
        // Other dimensions have their own limit.
        assert_eq!(ledger.keys(GroupBy::Model), 1);
    }

    #[test]
    fn zero_keys_counts_everything_under_other() {
        let ledger = Ledger::new().with_max_keys(0).with_retention(0);
        assert_eq!(ledger.retention_hours(), 1);
        let u = usage(1, 1);
        ledger.record(&LedgerEntry::new("m", &u), T0);
        ledger.record(&LedgerEntry::new("n", &u), T0);
        assert_eq!(keys(&ledger.totals(GroupBy::Model)), [OTHER]);
        assert_eq!(ledger.totals(GroupBy::Model)[0].requests, 2);
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        const THREADS: u64 = 8;
        const PER_THREAD: u64 = 2_000;
        let ledger = Arc::new(Ledger::new().with_max_keys(20).with_retention(6));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let u = usage(i % 7, i % 5);
                        let id = format!("id-{}", (i * 7 + t) % 50); // 50 ids, 20 kept
                        let tenant = format!("tenant-{}", i % 3);
                        let entry = LedgerEntry::new("m", &u)
                            .identity(&id)
                            .tenant(&tenant)
                            .cost(i % 11);
                        // Four hours, each crossed by every thread.
                        ledger.record(&entry, T0 + (i * 4 / PER_THREAD) * H + t);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }

        let expected = |f: fn(u64) -> u64| THREADS * (0..PER_THREAD).map(f).sum::<u64>();
        for by in GroupBy::ALL {
            let sum = |rows: &[UsageRow]| {
                let mut s = UsageRow::default();
                for r in rows {
                    s.requests += r.requests;
                    s.input_tokens += r.input_tokens;
                    s.output_tokens += r.output_tokens;
                    s.cost_micros += r.cost_micros;
                }
                s
            };
            let totals = ledger.totals(by);
            let hourly = ledger.query(by, 0, None);
            if by == GroupBy::Alias {
                assert!(totals.is_empty() && hourly.is_empty());
                continue;
            }
            for s in [sum(&totals), sum(&hourly)] {
                assert_eq!(s.requests, THREADS * PER_THREAD, "{by}");
                assert_eq!(s.input_tokens, expected(|i| i % 7), "{by}");
                assert_eq!(s.output_tokens, expected(|i| i % 5), "{by}");
                assert_eq!(s.cost_micros, expected(|i| i % 11), "{by}");
            }
            assert_eq!(totals, hourly, "{by}");
        }
        // Exactly 20 identities kept, whatever the interleaving.
        assert_eq!(ledger.keys(GroupBy::Identity), 21);
        assert_eq!(ledger.keys(GroupBy::Tenant), 3);
        // Each of the four hours holds a quarter.
        for hour in 0..4 {
            let rows = ledger.query(GroupBy::Model, T0 + hour * H, Some(T0 + (hour + 1) * H));
            assert_eq!(rows[0].requests, THREADS * PER_THREAD / 4);
        }
    }

    #[test]
    fn group_by_names() {
        for by in GroupBy::ALL {
            assert_eq!(by.as_str().parse::<GroupBy>(), Ok(by));
            assert_eq!(by.to_string().to_uppercase().parse::<GroupBy>(), Ok(by));
            let json = serde_json::to_string(&by).unwrap();
            assert_eq!(json, format!("\"{by}\""));
            assert_eq!(serde_json::from_str::<GroupBy>(&json).unwrap(), by);
        }
        assert_eq!("version".parse::<GroupBy>(), Ok(GroupBy::Model));
        assert_eq!(
            serde_json::from_str::<GroupBy>("\"version\"").unwrap(),
            GroupBy::Model
        );
        let err = "team".parse::<GroupBy>().unwrap_err();
        assert_eq!(err, UnknownGroupBy("team".into()));
        assert!(err.to_string().contains("`team`"));
    }

    #[test]
    fn entries_from_usage_records() {
        let record = |identity: Option<Identity>| UsageRecord {
            identity,
            alias: Some(Arc::from("fast")),
            model: Arc::from("gpt-4o-mini"),
            upstream: Arc::from("openai"),
            provider: Protocol::OpenAi,
            client: ClientApi::ChatCompletions,
            usage: usage(12, 3),
            reported: true,
            status: StatusCode::OK,
            time_to_first_token: None,
            duration: Duration::from_millis(5),
        };
        let known = record(Some(Identity::new("alice").with_tenant("acme")));
        let entry = LedgerEntry::from_record(&known);
        assert_eq!(
            (entry.identity, entry.tenant, entry.alias, entry.model),
            (Some("alice"), Some("acme"), Some("fast"), "gpt-4o-mini")
        );
        assert_eq!((entry.usage, entry.priced), (&known.usage, false));
        let priced = entry.cost(12);
        assert_eq!((priced.cost_micros, priced.priced), (12, true));

        let anonymous = record(Some(Identity::anonymous()));
        let entry = LedgerEntry::from_record(&anonymous);
        assert_eq!((entry.identity, entry.tenant), (None, None));
        let nobody = record(None);
        assert_eq!(LedgerEntry::from_record(&nobody).identity, None);
    }

    #[test]
    fn ledger_is_send_and_sync() {
        fn check<T: Send + Sync + 'static>() {}
        check::<Ledger>();
        assert!(format!("{:?}", Ledger::new()).contains("max_keys: 10000"));
    }
}
