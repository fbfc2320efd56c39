//! [`Budget`]: money (and optionally tokens) per identity, tenant, alias
//! or key over a calendar period, and its state in memory.
//!
//! A budget's spending starts again at each [`Period`]'s start, midnight
//! in the budget's own time zone (a fixed offset from UTC), so a budget
//! kept in Central Europe rolls over an hour before one kept in UTC. What
//! a request over it gets is its [`OverBudget`]: a 429, or a cheaper
//! version of its alias. A [`Meter`](super::Meter) enforces budgets (see
//! [its module](super::meter) for one at work).
//!
//! ```
//! use switchyard::spend::{Budget, BudgetScope, OverBudget, Period};
//!
//! // 2026-12-31 23:30 UTC: still December in UTC, January at UTC+1.
//! let t = 1_798_759_800;
//! let (december, new_year_utc) = Period::Month.at(t, 0);
//! let (january, february_cet) = Period::Month.at(t, 3_600);
//! assert_eq!(january, december + 1);
//! assert_eq!(new_year_utc, 1_798_761_600); // 2027-01-01 00:00 UTC
//! assert_eq!(february_cet, 1_801_436_400); // 2027-02-01 00:00 at UTC+1
//! assert_eq!(Period::Lifetime.at(t, 0), (0, u64::MAX));
//!
//! // $100 a day per caller, days from midnight at UTC+1; over it, the
//! // cheaper version of the alias asked for.
//! let daily = Budget::new(BudgetScope::Identity, 100_000_000, Period::Day)
//!     .utc_offset_minutes(60)
//!     .downgrade_to("gpt-4o-mini");
//! assert_eq!(daily.name(), "identity-day");
//! assert_eq!(daily.limit_micros(), 100_000_000);
//! ```

use crate::calendar::{civil_from_days, days_from_civil};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::key::KeyBy;

/// What a budget is kept per.
#[derive(Clone)]
#[non_exhaustive]
pub enum BudgetScope {
    /// Each authenticated caller ([`Identity::id`](crate::auth::Identity::id)).
    Identity,
    /// Each tenant ([`Identity::tenant`](crate::auth::Identity::tenant)).
    Tenant,
    /// Each alias asked for (a version asked for by name counts under its
    /// own name).
    Alias,
    /// Everyone together.
    Global,
    /// Each key `KeyBy` reads (a header, the client IP...).
    Key(KeyBy),
}

impl BudgetScope {
    /// Its name in metrics and the admin API.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Identity => "identity",
            Self::Tenant => "tenant",
            Self::Alias => "alias",
            Self::Global => "global",
            Self::Key(_) => "key",
        }
    }
}

impl fmt::Debug for BudgetScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(k) => f.debug_tuple("Key").field(k).finish(),
            other => f.write_str(other.as_str()),
        }
    }
}

/// The period a budget's spending is counted over; it starts again at
/// each period's start in the budget's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Period {
    /// A calendar day, from midnight.
    Day,
    /// A calendar month, from midnight on the 1st.
    Month,
    /// Never starts again.
    Lifetime,
}

impl Period {
    /// The index of the period holding `unix` seconds, and the Unix time
    /// its next period starts (`u64::MAX` for a lifetime), for a zone
    /// `offset_secs` east of UTC.
    pub fn at(self, unix: u64, offset_secs: i32) -> (u64, u64) {
        let (index, _, next) = self.bounds(unix, offset_secs);
        (index, next)
    }

    /// The index of the period holding `unix`, its start and its end, in
    /// Unix seconds (0 and `u64::MAX` for a lifetime).
    pub(crate) fn bounds(self, unix: u64, offset_secs: i32) -> (u64, u64, u64) {
        let local = unix as i64 + i64::from(offset_secs);
        let offset = i64::from(offset_secs);
        let unix_of = |local_secs: i64| (local_secs - offset).max(0) as u64;
        match self {
            Self::Lifetime => (0, 0, u64::MAX),
            Self::Day => {
                let day = local.div_euclid(86_400);
                (
                    day.max(0) as u64,
                    unix_of(day * 86_400),
                    unix_of((day + 1) * 86_400),
                )
            }
            Self::Month => {
                let (y, m, _) = civil_from_days(local.div_euclid(86_400));
                let index = y * 12 + i64::from(m) - 1;
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    index.max(0) as u64,
                    unix_of(days_from_civil(y, m, 1) * 86_400),
                    unix_of(days_from_civil(ny, nm, 1) * 86_400),
                )
            }
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
            Self::Lifetime => "lifetime",
        }
    }
}

/// Unix seconds at midnight UTC of (`y`, `m`, `d`), `None` before 1970 or
/// for a day the month does not have.
#[cfg_attr(not(feature = "admin"), allow(dead_code))]
pub(crate) fn unix_of_date(y: i64, m: u32, d: u32) -> Option<u64> {
    let days = days_from_civil(y, m, d);
    (civil_from_days(days) == (y, m, d))
        .then(|| u64::try_from(days).ok())
        .flatten()
        .map(|days| days * 86_400)
}

/// What happens to a request that does not fit its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverBudget {
    /// A 429 with OpenAI's `insufficient_quota` error.
    Reject,
    /// The request goes to this version of its alias instead (a cheaper
    /// one), if its worst case fits; otherwise, or for a request that
    /// names no alias with that version, a 429.
    Downgrade(String),
}

/// A spending limit.
///
/// ```
/// use switchyard::spend::{Budget, BudgetScope, Period};
///
/// // $50 a month per tenant (months start at midnight, UTC+1), an alert at
/// // 80 %, then the cheaper version of the alias.
/// let budget = Budget::new(BudgetScope::Tenant, 50_000_000, Period::Month)
///     .named("tenant-monthly")
///     .utc_offset_minutes(60)
///     .alert_at(80)
///     .downgrade_to("gpt-4o-mini");
/// assert_eq!(budget.name(), "tenant-monthly");
/// ```
#[derive(Debug, Clone)]
pub struct Budget {
    pub(crate) name: String,
    pub(crate) scope: BudgetScope,
    pub(crate) limit_micros: u64,
    pub(crate) tokens: Option<u64>,
    pub(crate) period: Period,
    pub(crate) offset_secs: i32,
    pub(crate) alerts: Vec<u8>,
    pub(crate) over: OverBudget,
}

impl Budget {
    /// At most `limit_micros` (micro-units of the price catalog's
    /// currency: 1 USD = 1,000,000) per `scope` per `period`.
    pub fn new(scope: BudgetScope, limit_micros: u64, period: Period) -> Self {
        Self {
            name: format!("{}-{}", scope.as_str(), period.as_str()),
            scope,
            limit_micros,
            tokens: None,
            period,
            offset_secs: 0,
            alerts: Vec::new(),
            over: OverBudget::Reject,
        }
    }

    /// Names it (metrics, the admin API, Redis keys); by default
    /// `<scope>-<period>`.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Also at most `tokens` tokens (input and output) per period.
    pub fn max_tokens(mut self, tokens: u64) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Periods start at midnight in a zone this many minutes east of UTC
    /// (a fixed offset: a zone with daylight saving time is one offset or
    /// the other).
    pub fn utc_offset_minutes(mut self, minutes: i32) -> Self {
        self.offset_secs = minutes.clamp(-24 * 60, 24 * 60) * 60;
        self
    }

    /// Raises an alert when spending crosses `percent` of the limit
    /// (once per key and period).
    pub fn alert_at(mut self, percent: u8) -> Self {
        self.alerts.push(percent.min(100));
        self.alerts.sort_unstable();
        self.alerts.dedup();
        self
    }

    /// Over budget, send requests to `version` of their alias instead.
    pub fn downgrade_to(mut self, version: impl Into<String>) -> Self {
        self.over = OverBudget::Downgrade(version.into());
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The limit, in micro-units.
    pub fn limit_micros(&self) -> u64 {
        self.limit_micros
    }

    /// The period.
    pub fn period(&self) -> Period {
        self.period
    }

    /// What it is kept per.
    pub fn scope(&self) -> &BudgetScope {
        &self.scope
    }
}

/// An alert: a key's spending crossed one of its budget's thresholds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BudgetAlert {
    /// The budget.
    pub budget: String,
    /// The key (identity, tenant, alias...).
    pub key: String,
    /// The threshold crossed, in percent.
    pub percent: u8,
    /// Spent so far in the period, in micro-units.
    pub spent_micros: u64,
    /// The limit.
    pub limit_micros: u64,
}

// === the current period, cached ===

/// The last period a budget's clock was in, so that finding it again is
/// two loads and two comparisons rather than calendar arithmetic.
///
/// Written only forward (a period starting at or after the cached one's
/// end) and by one thread at a time, its start and index first, its end
/// last. A reader loads the end, then the start: it may see a newer start
/// with an older end, but a newer period starts at or after every older
/// one's end, so no instant lies in both and such a pair never matches. A
/// clock that steps back is answered by arithmetic, as are periods the
/// packing cannot hold.
#[derive(Debug, Default)]
pub(crate) struct PeriodCache {
    /// Start in Unix seconds (high 40 bits) and index (low 24 bits).
    start_index: AtomicU64,
    /// End in Unix seconds; 0 (nothing cached) matches no instant.
    end: AtomicU64,
    writing: AtomicBool,
}

const INDEX_BITS: u32 = 24;

impl PeriodCache {
    /// The index and end of `period`'s period holding `unix`, as
    /// [`Period::at`] answers.
    pub(crate) fn at(&self, period: Period, unix: u64, offset_secs: i32) -> (u64, u64) {
        if period == Period::Lifetime {
            return (0, u64::MAX);
        }
        let end = self.end.load(Ordering::Acquire);
        let packed = self.start_index.load(Ordering::Acquire);
        if unix < end && unix >= packed >> INDEX_BITS {
            return (packed & ((1 << INDEX_BITS) - 1), end);
        }
        let (index, start, end_new) = period.bounds(unix, offset_secs);
        let fits = index < 1 << INDEX_BITS && start < 1 << (64 - INDEX_BITS);
        if fits && start >= end && !self.writing.swap(true, Ordering::Acquire) {
            // Re-read under the flag: another writer may have moved on.
            if start >= self.end.load(Ordering::Acquire) {
                self.start_index
                    .store(start << INDEX_BITS | index, Ordering::Release);
                self.end.store(end_new, Ordering::Release);
            }
            self.writing.store(false, Ordering::Release);
        }
        (index, end_new)
    }
}

// === memory state ===

/// Every [`Cell`] of one budget, in chunks that are neither moved nor
/// freed while the budget lives, so that a request holds its cell by
/// index from admission to settlement (no reference count, shared by
/// every request of the key, to take and give back).
///
/// Chunk `k` holds `FIRST << k` cells (fewer for the last, so that no
/// more than `cap` cells are ever made) and is made by the first request
/// that needs it. Cells are never removed, as budget cells are not.
pub(crate) struct Cells {
    chunks: [std::sync::OnceLock<Box<[Cell]>>; CHUNKS],
    next: AtomicU64,
    cap: u32,
}

/// The first chunk's size.
const FIRST: u32 = 64;
/// Enough chunks for `u32::MAX` cells: `FIRST * (2^(CHUNKS - 1) - 1)`,
/// where the last chunk starts, is below `u32::MAX - 1`.
const CHUNKS: usize = 27;

impl Cells {
    /// Room for `cap` cells.
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            chunks: Default::default(),
            next: AtomicU64::new(0),
            cap: u32::try_from(cap).unwrap_or(u32::MAX).min(u32::MAX - 1),
        }
    }

    /// Chunk and offset of index `i`.
    #[inline]
    fn locate(i: u32) -> (usize, usize) {
        let k = (i / FIRST + 1).ilog2();
        (
            k as usize,
            (u64::from(i) - Self::start(k as usize)) as usize,
        )
    }

    /// The first index of chunk `k`.
    #[inline]
    fn start(k: usize) -> u64 {
        u64::from(FIRST) * ((1u64 << k) - 1)
    }

    /// A new cell's index, or `None` when all `cap` are made.
    pub(crate) fn add(&self) -> Option<u32> {
        if self.next.load(Ordering::Relaxed) >= u64::from(self.cap) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        u32::try_from(i).ok().filter(|&i| i < self.cap)
    }

    /// Cell `i` (an index [`add`](Self::add) returned).
    #[inline]
    pub(crate) fn get(&self, i: u32) -> &Cell {
        let (k, offset) = Self::locate(i);
        let chunk = self.chunks[k].get_or_init(|| {
            let len = (u64::from(FIRST) << k).min(u64::from(self.cap) - Self::start(k));
            (0..len).map(|_| Cell::default()).collect()
        });
        &chunk[offset]
    }
}

/// One key's spending in one budget, in this process.
///
/// Lock-free on the request path: a reservation is one compare-exchange
/// on what is spent and held together, so of parallel requests only those
/// that fit get through; a settlement swaps a reservation for its cost in
/// one update. Only a new period takes a lock, once: it takes this
/// period's spending out of `used` (reservations in flight carry over).
#[derive(Debug, Default)]
pub(crate) struct Cell {
    /// The period counted.
    period: AtomicU64,
    /// Spent this period plus held by requests in flight: what a
    /// reservation is checked against.
    used: AtomicU64,
    /// Spent this period.
    spent: AtomicU64,
    /// The same two in tokens (kept only for a budget with a token
    /// limit: see [`Cell::reserve`]).
    used_tokens: AtomicU64,
    tokens: AtomicU64,
    /// Thresholds already alerted in this period (bit i: `alerts[i]`).
    alerted: AtomicU32,
    rolling: Mutex<()>,
}

/// A [`Cell`] as read.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CellState {
    pub(crate) spent: u64,
    pub(crate) reserved: u64,
    pub(crate) tokens: u64,
}

/// Lowers `a` by `by`, not below 0.
fn take(a: &AtomicU64, by: u64) {
    let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
        Some(v.saturating_sub(by))
    });
}

impl Cell {
    /// Starts period `period` if it is later than the one counted.
    #[inline]
    fn roll(&self, period: u64) {
        if self.period.load(Ordering::Acquire) < period {
            self.start(period);
        }
    }

    /// The rest of [`roll`](Self::roll), once a period: kept out of the
    /// request path's code.
    #[cold]
    #[inline(never)]
    fn start(&self, period: u64) {
        let _one = self.rolling.lock().unwrap_or_else(|e| e.into_inner());
        if self.period.load(Ordering::Acquire) >= period {
            return;
        }
        // Whatever is spent concurrently lands in one period or the
        // other, in `spent` and `used` alike: a settlement adds to both.
        take(&self.used, self.spent.swap(0, Ordering::AcqRel));
        take(&self.used_tokens, self.tokens.swap(0, Ordering::AcqRel));
        self.alerted.store(0, Ordering::Release);
        self.period.store(period, Ordering::Release);
    }

    /// Reserves `micros` (and, for a budget with a token limit, `tokens`)
    /// if they fit under the limits of period `period` (a new period
    /// starts with nothing spent; an earlier one counts as the current).
    pub(crate) fn reserve(
        &self,
        period: u64,
        limit: u64,
        tokens_limit: Option<u64>,
        micros: u64,
        tokens: u64,
    ) -> bool {
        self.roll(period);
        let fits = |limit: u64, add: u64| move |v: u64| v.checked_add(add).filter(|&n| n <= limit);
        if self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, fits(limit, micros))
            .is_err()
        {
            return false;
        }
        if let Some(t) = tokens_limit
            && self
                .used_tokens
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, fits(t, tokens))
                .is_err()
        {
            take(&self.used, micros);
            return false;
        }
        true
    }

    /// Replaces a reservation (`reserved`: micro-units and tokens) with
    /// what was spent; returns what is spent this period after, and the
    /// alerts crossed (indices into the budget's alerts). `tokens_limited`
    /// as the reservation was made.
    pub(crate) fn settle(
        &self,
        period: u64,
        reserved: (u64, u64),
        spent: (u64, u64),
        tokens_limited: bool,
        limit: u64,
        alerts: &[u8],
    ) -> (u64, u32) {
        self.roll(period);
        // `used` is this period's spending plus every reservation still
        // open, this one included, so it stays at least `reserved` and the
        // swap is one add of the (wrapping) difference: the result is
        // never below zero. (A new period takes out only what was spent.)
        self.used
            .fetch_add(spent.0.wrapping_sub(reserved.0), Ordering::AcqRel);
        if tokens_limited {
            self.used_tokens
                .fetch_add(spent.1.wrapping_sub(reserved.1), Ordering::AcqRel);
        }
        let now_spent = if spent.0 == 0 {
            self.spent.load(Ordering::Acquire)
        } else {
            self.spent
                .fetch_add(spent.0, Ordering::AcqRel)
                .saturating_add(spent.0)
        };
        if spent.1 != 0 {
            self.tokens.fetch_add(spent.1, Ordering::AcqRel);
        }
        let new = if alerts.is_empty() {
            0
        } else {
            self.alerts_crossed(alerts, now_spent, limit)
        };
        (now_spent, new)
    }

    /// The alerts `spent` crosses that were not raised yet this period
    /// (now marked raised).
    #[inline(never)]
    fn alerts_crossed(&self, alerts: &[u8], spent: u64, limit: u64) -> u32 {
        let bits = crossed(alerts, spent, limit);
        if bits == 0 {
            return 0;
        }
        bits & !self.alerted.fetch_or(bits, Ordering::AcqRel)
    }

    /// What is spent and held in period `period`.
    pub(crate) fn read(&self, period: u64) -> CellState {
        let current = self.period.load(Ordering::Acquire);
        let used = self.used.load(Ordering::Acquire);
        let spent = self.spent.load(Ordering::Acquire);
        let reserved = used.saturating_sub(spent);
        if current < period {
            // Not started yet: nothing spent in it.
            return CellState {
                spent: 0,
                reserved,
                tokens: 0,
            };
        }
        CellState {
            spent,
            reserved,
            tokens: self.tokens.load(Ordering::Acquire),
        }
    }
}

/// The thresholds `spent` has reached, as bits.
pub(crate) fn crossed(alerts: &[u8], spent: u64, limit: u64) -> u32 {
    let mut bits = 0;
    for (i, &p) in alerts.iter().enumerate().take(32) {
        if u128::from(spent) * 100 >= u128::from(limit) * u128::from(p) {
            bits |= 1 << i;
        }
    }
    bits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_are_found_where_they_were_made() {
        let cells = Cells::new(1000);
        let mut made = Vec::new();
        while let Some(i) = cells.add() {
            made.push(i);
        }
        assert_eq!(made, (0..1000).collect::<Vec<_>>());
        for &i in &made {
            assert!(
                cells
                    .get(i)
                    .reserve(1, 1_000_000, None, u64::from(i) + 1, 0)
            );
        }
        for &i in &made {
            assert_eq!(cells.get(i).read(1).reserved, u64::from(i) + 1, "cell {i}");
        }
        // Chunks cover every index exactly once, up to the largest.
        let mut next = 0u64;
        for k in 0..CHUNKS {
            assert_eq!(Cells::start(k), next);
            next += u64::from(FIRST) << k;
        }
        assert!(next > u64::from(u32::MAX));
        assert_eq!(Cells::locate(u32::MAX - 1).0, CHUNKS - 1);
        assert_eq!(Cells::locate(0), (0, 0));
        assert_eq!(Cells::locate(FIRST), (1, 0));
        assert_eq!(Cells::locate(3 * FIRST - 1), (1, 2 * FIRST as usize - 1));
    }

    #[test]
    fn calendar_round_trip() {
        for z in [-800_000i64, -1, 0, 1, 59, 365, 10_957, 20_000, 2_000_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z, "{z}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        // 2024-02-29 is day 19_782.
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn periods() {
        // 2026-12-03T04:00:00Z
        let t = days_from_civil(2026, 12, 3) as u64 * 86_400 + 4 * 3600;
        let (day, next) = Period::Day.at(t, 0);
        assert_eq!(day, t / 86_400);
        assert_eq!(next, (t / 86_400 + 1) * 86_400);
        // At UTC-5 it is still 2026-12-02, 23:00.
        let (west, next_west) = Period::Day.at(t, -5 * 3600);
        assert_eq!(west, day - 1);
        assert_eq!(next_west, next + 5 * 3600 - 86_400);
        let (month, next_month) = Period::Month.at(t, 0);
        assert_eq!(month, 2026 * 12 + 11);
        assert_eq!(next_month, days_from_civil(2027, 1, 1) as u64 * 86_400);
        // A month starts at local midnight: 2026-12-31T23:30Z at UTC+1 is
        // already January.
        let nye = days_from_civil(2026, 12, 31) as u64 * 86_400 + 23 * 3600 + 1800;
        assert_eq!(Period::Month.at(nye, 3600).0, 2027 * 12);
        assert_eq!(Period::Month.at(nye, 0).0, 2026 * 12 + 11);
        assert_eq!(Period::Lifetime.at(t, 0), (0, u64::MAX));
    }

    #[test]
    fn cached_periods_match_arithmetic() {
        let start = days_from_civil(2026, 12, 30) as u64 * 86_400;
        // Forward over two month ends, back (a stepped clock), and forward
        // again, at three offsets.
        let times: Vec<u64> = (0..200u64)
            .map(|i| start + i * 1_801)
            .chain((0..50).map(|i| start + 86_400 * 40 - i * 3_600 * 13))
            .chain((0..200).map(|i| start + i * 7_207))
            .collect();
        for offset in [0, 3_600, -5 * 3_600 - 1_800] {
            for period in [Period::Day, Period::Month, Period::Lifetime] {
                let cache = PeriodCache::default();
                for &t in &times {
                    assert_eq!(
                        cache.at(period, t, offset),
                        period.at(t, offset),
                        "{period:?} at {t} ({offset})"
                    );
                }
            }
        }
    }

    #[test]
    fn reserve_settle_roll() {
        let cell = Cell::default();
        assert!(cell.reserve(1, 100, None, 60, 0));
        assert!(!cell.reserve(1, 100, None, 41, 0));
        assert!(cell.reserve(1, 100, None, 40, 0));
        // Settled for less: room comes back.
        let (spent, crossed) = cell.settle(1, (60, 0), (10, 0), false, 100, &[5, 50]);
        assert_eq!(spent, 10);
        let s = cell.read(1);
        assert_eq!((s.spent, s.reserved), (10, 40));
        assert_eq!(crossed, 0b01);
        // Alerted once per period.
        let (_, crossed) = cell.settle(1, (0, 0), (1, 0), false, 100, &[5, 50]);
        assert_eq!(crossed, 0);
        assert!(cell.reserve(1, 100, None, 49, 0));
        assert!(!cell.reserve(1, 100, None, 1, 0));
        // A new period: spending starts again, reservations stay.
        let s = cell.read(2);
        assert_eq!((s.spent, s.reserved), (0, 89));
        assert!(cell.reserve(2, 100, None, 11, 0));
        assert!(!cell.reserve(2, 100, None, 1, 0));
        let s = cell.read(2);
        assert_eq!((s.spent, s.reserved), (0, 100));
        // A request of the old period settles into the new one.
        let (spent, crossed) = cell.settle(1, (40, 0), (40, 0), false, 100, &[5, 50]);
        assert_eq!((spent, crossed), (40, 0b01));
        // An earlier period counts as the current one.
        assert_eq!(cell.read(2).spent, 40);
        // Tokens.
        let cell = Cell::default();
        assert!(cell.reserve(1, u64::MAX, Some(10), 0, 10));
        assert!(!cell.reserve(1, u64::MAX, Some(10), 0, 1));
        // A refused token reservation holds no money either.
        let cell = Cell::default();
        assert!(cell.reserve(1, 10, Some(1), 5, 1));
        assert!(!cell.reserve(1, 10, Some(1), 5, 1));
        assert!(cell.reserve(1, 10, None, 5, 0));
    }

    /// Of parallel reservations, exactly as many as fit get through.
    #[test]
    fn parallel_reservations_never_overshoot() {
        use std::sync::Arc;
        for _ in 0..20 {
            let cell = Arc::new(Cell::default());
            let admitted: usize = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..8)
                    .map(|_| {
                        let cell = Arc::clone(&cell);
                        scope.spawn(move || {
                            (0..50)
                                .filter(|_| cell.reserve(7, 1_000, None, 7, 0))
                                .count()
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).sum()
            });
            assert_eq!(admitted, 1_000 / 7);
            assert_eq!(cell.read(7).reserved, 1_000 / 7 * 7);
        }
    }

    proptest::proptest! {
        /// Whatever the order of reservations, settlements and new
        /// periods, what is held is the sum of the reservations not
        /// settled, what is spent is the sum of this period's
        /// settlements, and nothing admitted takes `used` past the limit.
        #[test]
        fn cell_accounts(ops in proptest::collection::vec((0u8..3, 0u64..40, 0u64..40), 1..60)) {
            const LIMIT: u64 = 200;
            let cell = Cell::default();
            let mut period = 1;
            let mut open: Vec<u64> = Vec::new();
            let mut spent = 0;
            for (op, a, b) in ops {
                match op {
                    0 => {
                        let fits = spent + open.iter().sum::<u64>() + a <= LIMIT;
                        proptest::prop_assert_eq!(cell.reserve(period, LIMIT, None, a, 0), fits);
                        if fits {
                            open.push(a);
                        }
                    }
                    1 if !open.is_empty() => {
                        let r = open.remove(b as usize % open.len());
                        let (now, _) = cell.settle(period, (r, 0), (a, 0), false, LIMIT, &[]);
                        spent += a;
                        proptest::prop_assert_eq!(now, spent);
                    }
                    _ => {
                        period += 1;
                        spent = 0;
                    }
                }
                let s = cell.read(period);
                proptest::prop_assert_eq!(s.spent, spent);
                proptest::prop_assert_eq!(s.reserved, open.iter().sum::<u64>());
            }
        }
    }
}
