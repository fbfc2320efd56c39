//! Token limits and budgets shared by every replica, kept in Redis
//! (feature `redis`).
//!
//! A [`Meter`](super::Meter) built with
//! [`MeterBuilder::redis`](super::MeterBuilder::redis) keeps its counts in
//! Redis: **one script run to admit** a request (every token limit takes the
//! estimate and every budget reserves the worst case, or none does) and
//! **one to settle** it (each limit is charged or refunded the difference
//! between estimate and actual, each budget's reservation becomes what was
//! spent). Both read Redis's clock (`TIME`), so the replicas' clocks do not
//! matter, and both are atomic, so N replicas admit what one would.
//!
//! ```no_run
//! use switchyard::key::KeyBy;
//! use switchyard::ratelimit::Quota;
//! use switchyard::spend::redis::RedisSpendBuilder;
//! use switchyard::spend::{Budget, BudgetScope, Meter, Period, TokenLimit};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let redis = redis::Client::open("redis://127.0.0.1/")?
//!     .get_connection_manager()
//!     .await?;
//! let meter = Meter::builder()
//!     .token_limit(TokenLimit::new(KeyBy::identity(), Quota::per_minute(100_000)))
//!     .budget(Budget::new(BudgetScope::Tenant, 50_000_000, Period::Month))
//!     .redis(RedisSpendBuilder::new(redis).prefix("gw:spend:"))
//!     .build()?;
//! # let _ = meter;
//! # Ok(())
//! # }
//! ```
//!
//! # Keys
//!
//! A token limit's state is one arrival time per key, as the
//! [Redis rate limiter](crate::ratelimit::redis)'s, expiring when the key
//! is fresh again. A budget is a hash (`period`, `spent`, `reserved`,
//! `tokens`, `rtokens`, `alerted`) and a sorted set of the reservations in
//! flight, each scored with the time it lapses
//! ([`reservation_ttl`](RedisSpendBuilder::reservation_ttl), 10 minutes by
//! default): a replica that dies holding reservations does not block the
//! budget, since the next admission drops lapsed ones. Settling removes the
//! request's own reservation, once: a settlement that comes after its
//! reservation lapsed only adds what was spent. Calendar budgets expire a
//! reservation time after their period ends.
//!
//! All of a meter's keys carry one hash tag (`{prefix}`), so a script's keys
//! are on one node of a Redis Cluster; a meter's whole state is then on
//! that node.
//!
//! # When Redis fails
//!
//! An admission that fails or takes longer than the
//! [timeout](RedisSpendBuilder::timeout) (100 ms) follows
//! [`RedisFailure`]: `Allow` lets the request through holding nothing (its
//! answer is still charged when it settles, if Redis is back), `Reject`
//! answers 503, and `Local { replicas }` counts it in this process's memory
//! with each token limit's share for one of `replicas` replicas (budgets in
//! memory see only this replica's spending since it started: an outage
//! loosens them). After 3 failures in a row Redis is not asked for a second
//! (a [breaker](RedisSpendBuilder::breaker)). A settlement that fails is
//! counted in [`MeterStats::backend_errors`](super::MeterStats) and its
//! reservation lapses.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::redis_conn::RedisConnection;

use super::budget::BudgetAlert;
use super::meter::{Actual, Inner, Left, LimitLeft, Outcome, Plan, Where as Held};
use crate::key::Key;
use crate::ratelimit::gcra_api::{Breaker, Gate, Gcra};
use crate::ratelimit::redis::RedisFailure;
use crate::ratelimit::{Quota, RateLimitError};

/// Admission. `KEYS`: the limits' keys, then each budget's hash and
/// reservation set. `ARGV`: the number of limits and of budgets, the
/// reservation's member, its lifetime in microseconds, the furthest ahead
/// of now an arrival time may go; per limit its emission interval and
/// tolerance in microseconds and the estimated units; per budget its limit
/// in micro-units, its token limit (-1: none), the micro-units and tokens
/// to reserve, the period's index and the seconds until the budget's keys
/// may expire (0: never). Returns `{0, ahead...}` (each limit's arrival
/// time ahead of now, after), `{1, limit, wait}` (wait -1: never) or
/// `{2, budget, 0}`.
const ADMIT: &str = r"
-- Takes the decimal string `v` from field `f` (Redis refuses `-0`).
local function dec(h, f, v)
  if v ~= '0' then redis.call('HINCRBY', h, f, '-' .. v) end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nl, nb = tonumber(ARGV[1]), tonumber(ARGV[2])
local member, ttl, most = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local a = 6
local tats = {}
for i = 1, nl do
  local interval, tau, units = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local inc = units * interval
  if inc > tau then return {1, i, -1} end
  if tat + inc - now > tau then return {1, i, tat + inc - now - tau} end
  tats[i] = tat + inc
end
local b0 = a
for j = 1, nb do
  local h, z = KEYS[nl + 2 * j - 1], KEYS[nl + 2 * j]
  local limit, tlimit = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  local micros, tokens, period = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), ARGV[a + 4]
  a = a + 6
  local lapsed = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  for _, m in ipairs(lapsed) do
    local _, _, mm, mt = string.find(m, ':(%d+):(%d+)$')
    dec(h, 'reserved', mm)
    dec(h, 'rtokens', mt)
  end
  if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', now) end
  local s = redis.call('HMGET', h, 'period', 'spent', 'reserved', 'tokens', 'rtokens')
  local spent, used = tonumber(s[2] or 0), tonumber(s[4] or 0)
  if s[1] and s[1] ~= period then spent, used = 0, 0 end
  local reserved, rtok = tonumber(s[3] or 0), tonumber(s[5] or 0)
  if spent + reserved + micros > limit then return {2, j, 0} end
  if tlimit >= 0 and used + rtok + tokens > tlimit then return {2, j, 0} end
end
local out = {0}
for i = 1, nl do
  redis.call('SET', KEYS[i], string.format('%d', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1)
  out[#out + 1] = tats[i] - now
end
a = b0
for j = 1, nb do
  local h, z = KEYS[nl + 2 * j - 1], KEYS[nl + 2 * j]
  local micros, tokens, period, expire = ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], tonumber(ARGV[a + 5])
  a = a + 6
  if redis.call('HGET', h, 'period') ~= period then
    redis.call('HSET', h, 'period', period, 'spent', 0, 'tokens', 0, 'alerted', 0)
  end
  redis.call('HINCRBY', h, 'reserved', micros)
  redis.call('HINCRBY', h, 'rtokens', tokens)
  redis.call('ZADD', z, now + ttl, member .. ':' .. micros .. ':' .. tokens)
  if expire > 0 then
    redis.call('EXPIRE', h, expire)
    redis.call('EXPIRE', z, expire)
  end
end
return out
";

/// Settlement. `KEYS` as for admission. `ARGV`: the number of limits and
/// of budgets, the furthest ahead of now an arrival time may go; per limit
/// its emission interval in microseconds and the units to charge (positive)
/// or refund (negative); per budget the reservation's member (empty: none
/// was made), the micro-units and tokens it reserved, those spent, the
/// period's index, the seconds until its keys may expire, its limit, and
/// its alert thresholds in percent (comma-separated). Returns, per budget,
/// the micro-units spent this period and the bits of the thresholds newly
/// crossed.
const SETTLE: &str = r"
-- Takes the decimal string `v` from field `f` (Redis refuses `-0`).
local function dec(h, f, v)
  if v ~= '0' then redis.call('HINCRBY', h, f, '-' .. v) end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nl, nb, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local a = 4
for i = 1, nl do
  local interval, delta = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  local moved = false
  if delta > 0 then
    if tat < now then tat = now end
    tat = tat + delta * interval
    if tat > now + most then tat = now + most end
    moved = true
  elseif delta < 0 and tat > now then
    tat = tat + delta * interval
    if tat < now then tat = now end
    moved = true
  end
  if moved and tat > now then
    redis.call('SET', KEYS[i], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  elseif moved then
    redis.call('DEL', KEYS[i])
  end
end
local out = {}
for j = 1, nb do
  local h, z = KEYS[nl + 2 * j - 1], KEYS[nl + 2 * j]
  local member, rm, rt = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local sm, st, period, expire = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], tonumber(ARGV[a + 6])
  local limit, alerts = tonumber(ARGV[a + 7]), ARGV[a + 8]
  a = a + 9
  if member ~= '' and redis.call('ZREM', z, member .. ':' .. rm .. ':' .. rt) == 1 then
    dec(h, 'reserved', rm)
    dec(h, 'rtokens', rt)
  end
  if redis.call('HGET', h, 'period') ~= period then
    redis.call('HSET', h, 'period', period, 'spent', 0, 'tokens', 0, 'alerted', 0)
  end
  local spent = redis.call('HINCRBY', h, 'spent', sm)
  redis.call('HINCRBY', h, 'tokens', st)
  local alerted = tonumber(redis.call('HGET', h, 'alerted') or 0)
  local crossed, bit = 0, 1
  for p in string.gmatch(alerts, '%d+') do
    if spent * 100 >= limit * tonumber(p) and alerted % (2 * bit) < bit then
      crossed = crossed + bit
    end
    bit = bit * 2
  end
  if crossed > 0 then redis.call('HSET', h, 'alerted', alerted + crossed) end
  if expire > 0 then
    redis.call('EXPIRE', h, expire)
    redis.call('EXPIRE', z, expire)
  end
  out[#out + 1] = spent
  out[#out + 1] = crossed
end
return out
";

/// The furthest ahead an arrival time may go, in microseconds (as the
/// rate limiter's `MAX_TAU`).
const MOST: u64 = (1 << 62) / 1_000;

/// Builds the Redis store of a [`Meter`](super::Meter); give it to
/// [`MeterBuilder::redis`](super::MeterBuilder::redis).
pub struct RedisSpendBuilder {
    redis: RedisConnection,
    prefix: String,
    on_failure: RedisFailure,
    timeout: Duration,
    breaker: (u32, Duration),
    reservation_ttl: Duration,
}

impl RedisSpendBuilder {
    /// Counts in the Redis `redis` connects to (a
    /// `redis::aio::ConnectionManager`, or a [`RedisConnection`] to a
    /// cluster or through Sentinel).
    pub fn new(redis: impl Into<RedisConnection>) -> Self {
        Self {
            redis: redis.into(),
            prefix: String::from("switchyard:spend:"),
            on_failure: RedisFailure::Allow,
            timeout: Duration::from_millis(100),
            breaker: (3, Duration::from_secs(1)),
            reservation_ttl: Duration::from_secs(600),
        }
    }

    /// The start of every key (`switchyard:spend:` by default); replicas
    /// that count together use the same.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// What an admission Redis does not answer gets ([`RedisFailure::Allow`]
    /// by default).
    pub fn on_redis_failure(mut self, on_failure: RedisFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    /// How long an admission or settlement waits for Redis (100 ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// After `failures` failed admissions in a row, stop asking for
    /// `cooldown` (3 and 1 s; 0 failures: never stop).
    pub fn breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker = (failures, cooldown);
        self
    }

    /// How long a budget reservation lasts if it is never settled (a
    /// replica that died), 10 minutes by default: make it longer than any
    /// request.
    pub fn reservation_ttl(mut self, ttl: Duration) -> Self {
        self.reservation_ttl = ttl.max(Duration::from_secs(1));
        self
    }

    pub(crate) fn build(
        self,
        limits: &[Gcra],
        quotas: &[Quota],
    ) -> Result<RedisSpend, RateLimitError> {
        let local = match self.on_failure {
            RedisFailure::Local { replicas: 0 } => return Err(RateLimitError::NoReplicas),
            RedisFailure::Local { replicas } => quotas
                .iter()
                .map(|q| {
                    let shared = Quota::new(q.count(), q.period() * replicas)
                        .burst((q.burst_size() / replicas).max(1));
                    Gcra::new(&shared).ok_or_else(|| RateLimitError::InvalidQuota(q.name()))
                })
                .collect::<Result<Vec<_>, _>>()?,
            _ => limits.to_vec(),
        };
        Ok(RedisSpend {
            redis: self.redis,
            admit: Arc::new(redis::Script::new(ADMIT)),
            settle: Arc::new(redis::Script::new(SETTLE)),
            tag: {
                let mut tag = String::new();
                crate::ratelimit::redis::escape_tag(self.prefix.as_bytes(), &mut tag);
                format!("{}{{{tag}}}", self.prefix)
            },
            on_failure: self.on_failure,
            timeout: self.timeout,
            breaker: Arc::new(Breaker::new(self.breaker.0, self.breaker.1)),
            ttl: self.reservation_ttl,
            local: local.into(),
        })
    }
}

impl fmt::Debug for RedisSpendBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSpendBuilder")
            .field("prefix", &self.prefix)
            .field("on_failure", &self.on_failure)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The Redis store of a meter.
pub(crate) struct RedisSpend {
    redis: RedisConnection,
    admit: Arc<redis::Script>,
    settle: Arc<redis::Script>,
    /// `<prefix>{<prefix>}`: every key starts with it.
    tag: String,
    on_failure: RedisFailure,
    timeout: Duration,
    breaker: Arc<Breaker>,
    ttl: Duration,
    /// The token limits' parameters for [`RedisFailure::Local`] (each
    /// replica's share), else the limits' own.
    pub(crate) local: Box<[Gcra]>,
}

impl RedisSpend {
    /// A limit's key: the request key as the rate limiter names it (its
    /// kind included, so that a header value and an address never share
    /// a count).
    fn limit_key(&self, inner: &Inner, limit: usize, key: &Key<'_>) -> String {
        format!(
            "{}:tokens:{}:{}",
            self.tag,
            inner.limits[limit].def.name(),
            crate::ratelimit::redis::key_tag(key)
        )
    }

    fn budget_keys(&self, inner: &Inner, budget: usize, key: &str) -> (String, String) {
        let name = &inner.budgets[budget].def.name;
        (
            format!("{}:budget:{name}:{key}", self.tag),
            format!("{}:held:{name}:{key}", self.tag),
        )
    }

    /// The keys of `plan`'s limits, then its budgets' (hash, set) pairs.
    fn keys(&self, inner: &Inner, plan: &Plan) -> Vec<String> {
        let mut keys = Vec::with_capacity(plan.limits.len() + 2 * plan.budgets.len());
        for hold in &plan.limits {
            keys.push(self.limit_key(inner, hold.limit, &plan.limit_key(hold)));
        }
        for hold in &plan.budgets {
            let (h, z) = self.budget_keys(inner, hold.budget, &plan.budget_key(hold));
            keys.push(h);
            keys.push(z);
        }
        keys
    }

    /// Seconds until a budget's keys may expire: a reservation's lifetime
    /// after its period ends (0: a lifetime budget never expires).
    fn expire(&self, end: u64, unix: u64) -> u64 {
        if end == u64::MAX {
            0
        } else {
            end.saturating_sub(unix) + self.ttl.as_secs() + 1
        }
    }

    /// Runs the admission of `plan`; the plan comes back as it is held
    /// (nothing held when Redis failed and the request is let through).
    pub(crate) fn admit(
        &self,
        inner: &Arc<Inner>,
        mut plan: Plan,
    ) -> impl Future<Output = (Plan, Outcome)> + Send + 'static {
        let probe = match self.breaker.gate() {
            Gate::Skip => None,
            Gate::Ask => Some(false),
            Gate::Probe => Some(true),
        };
        plan.member = rand::random::<u64>() | 1;
        let unix = inner.unix_at(plan.now);
        let keys = self.keys(inner, &plan);
        let mut args: Vec<String> = vec![
            plan.limits.len().to_string(),
            plan.budgets.len().to_string(),
            format!("{:016x}", plan.member),
            u64::try_from(self.ttl.as_micros())
                .unwrap_or(u64::MAX)
                .to_string(),
            MOST.to_string(),
        ];
        for hold in &plan.limits {
            let g = &inner.limits[hold.limit].gcra;
            args.push(g.interval.div_ceil(1_000).to_string());
            args.push((g.tau / 1_000).to_string());
            args.push(hold.units.to_string());
        }
        for hold in &plan.budgets {
            let b = &inner.budgets[hold.budget].def;
            args.push(b.limit_micros.to_string());
            args.push(
                b.tokens
                    .map_or_else(|| String::from("-1"), |t| t.to_string()),
            );
            args.push(hold.micros.to_string());
            args.push(hold.tokens.to_string());
            args.push(hold.period.to_string());
            args.push(self.expire(hold.end, unix).to_string());
        }
        let script = Arc::clone(&self.admit);
        let mut redis = self.redis.clone();
        let timeout = self.timeout;
        let breaker = Arc::clone(&self.breaker);
        let inner = Arc::clone(inner);
        async move {
            let answer = match probe {
                None => None,
                Some(probe) => {
                    let mut turn = Turn(probe.then(|| Arc::clone(&breaker)));
                    let out = run(&script, &mut redis, keys, args, timeout).await;
                    turn.0 = None;
                    breaker.record(out.is_some(), probe);
                    out
                }
            };
            match answer.as_deref() {
                Some([0, ahead @ ..]) if ahead.len() == plan.limits.len() => {
                    let left = plan
                        .limits
                        .first()
                        .zip(ahead.first())
                        .map(|(hold, &ahead)| {
                            let g = &inner.limits[hold.limit].gcra;
                            let ahead = u64::try_from(ahead).unwrap_or(0).saturating_mul(1_000);
                            Left::Known(LimitLeft {
                                remaining: g.tau.saturating_sub(ahead) / g.interval,
                                reset: ahead,
                            })
                        });
                    plan.held = Held::Redis;
                    (plan, Outcome::Admitted(left))
                }
                Some(&[1, limit, wait]) if (1..=plan.limits.len() as i64).contains(&limit) => {
                    let limit = plan.limits[limit as usize - 1].limit;
                    let wait = u64::try_from(wait).map_or(u64::MAX, |w| w.saturating_mul(1_000));
                    (plan, Outcome::Tokens { limit, wait })
                }
                Some(&[2, budget, 0]) if (1..=plan.budgets.len() as i64).contains(&budget) => (
                    plan,
                    Outcome::Budget {
                        budget: budget as usize - 1,
                    },
                ),
                _ => {
                    inner
                        .counters
                        .backend_errors
                        .fetch_add(1, Ordering::Relaxed);
                    failed(&inner, plan)
                }
            }
        }
    }

    /// Settles `plan` with `actual`, in a task of its own.
    pub(crate) fn settle(&self, inner: &Arc<Inner>, plan: &Plan, actual: &Actual, now: u64) {
        if plan.held == Held::Memory {
            inner.settle_memory(plan, actual, Some(&self.local), now);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            inner
                .counters
                .backend_errors
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let held = plan.held == Held::Redis;
        let unix = inner.unix_at(now);
        let keys = self.keys(inner, plan);
        let mut args: Vec<String> = vec![
            plan.limits.len().to_string(),
            plan.budgets.len().to_string(),
            MOST.to_string(),
        ];
        for hold in &plan.limits {
            let units = actual.units(inner.limits[hold.limit].def.count, hold.units);
            let est = if held { hold.units } else { 0 };
            let delta = i128::from(units) - i128::from(est);
            args.push(
                inner.limits[hold.limit]
                    .gcra
                    .interval
                    .div_ceil(1_000)
                    .to_string(),
            );
            args.push(delta.to_string());
        }
        for hold in &plan.budgets {
            let state = &inner.budgets[hold.budget];
            let b = &state.def;
            // Spending counts in the period it settles in.
            let (period, end_now) = state.period_at(unix);
            let alerts: Vec<String> = b.alerts.iter().map(u8::to_string).collect();
            args.push(if held {
                format!("{:016x}", plan.member)
            } else {
                String::new()
            });
            args.push(hold.micros.to_string());
            args.push(hold.tokens.to_string());
            args.push(actual.micros.to_string());
            args.push(actual.tokens.to_string());
            args.push(period.to_string());
            args.push(self.expire(hold.end.max(end_now), unix).to_string());
            args.push(b.limit_micros.to_string());
            args.push(alerts.join(","));
        }
        let script = Arc::clone(&self.settle);
        let mut redis = self.redis.clone();
        let timeout = self.timeout;
        let inner = Arc::clone(inner);
        let budgets: Vec<(usize, String)> = plan
            .budgets
            .iter()
            .map(|hold| (hold.budget, plan.budget_key(hold).into_owned()))
            .collect();
        runtime.spawn(async move {
            match run(&script, &mut redis, keys, args, timeout).await {
                Some(out) if out.len() == 2 * budgets.len() => {
                    for ((i, key), pair) in budgets.iter().zip(out.chunks(2)) {
                        let b = &inner.budgets[*i].def;
                        for (bit, &percent) in b.alerts.iter().enumerate() {
                            if pair[1] & (1 << bit) != 0 {
                                inner.alert(&BudgetAlert {
                                    budget: b.name.clone(),
                                    key: key.clone(),
                                    percent,
                                    spent_micros: u64::try_from(pair[0]).unwrap_or(0),
                                    limit_micros: b.limit_micros,
                                });
                            }
                        }
                    }
                }
                _ => {
                    inner
                        .counters
                        .backend_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Runs `script` with `keys` and `args`: its answer, or `None` when Redis
/// failed or did not answer within `timeout`.
async fn run(
    script: &redis::Script,
    redis: &mut RedisConnection,
    keys: Vec<String>,
    args: Vec<String>,
    timeout: Duration,
) -> Option<Vec<i64>> {
    let mut invocation = script.prepare_invoke();
    for k in keys {
        invocation.key(k);
    }
    for a in args {
        invocation.arg(a);
    }
    let answer = invocation.invoke_async::<Vec<i64>>(redis);
    tokio::time::timeout(timeout, answer).await.ok()?.ok()
}

/// What an admission Redis did not answer gets.
fn failed(inner: &Arc<Inner>, mut plan: Plan) -> (Plan, Outcome) {
    let Some(redis) = inner.redis() else {
        return (plan, Outcome::Admitted(None));
    };
    match redis.on_failure {
        RedisFailure::Reject => (plan, Outcome::Unavailable),
        RedisFailure::Local { .. } => {
            plan.now = inner.now();
            let outcome = inner.admit_memory_with(&mut plan, Some(&redis.local));
            if matches!(outcome, Outcome::Admitted(_)) {
                plan.held = Held::Memory;
            }
            (plan, outcome)
        }
        _ => {
            plan.held = Held::Nothing;
            (plan, Outcome::Admitted(None))
        }
    }
}

/// A probe's turn, given back if its admission is dropped unanswered.
struct Turn(Option<Arc<Breaker>>);

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            b.abandon();
        }
    }
}
