//! The options of a `rate_limit` section beyond its key and quotas, checked
//! (every problem located) and turned into what the limiters' builders
//! take: cost, dry-run, allow list, tiers, table size, missing keys,
//! headers.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;

use http::{HeaderName, StatusCode};

use super::build::{Problems, quotas};
use super::config::{CostConfig, KeyConfig, MissingKeyConfig, RateLimitConfig, WhenFullConfig};
use crate::key::{Key, RequestView};
use crate::ratelimit::{MissingKey, Quota, RateLimitBuilder, Settings};

/// A request's cost as the configuration says.
#[derive(Debug, Clone)]
pub(super) enum Cost {
    /// Every request the same.
    Fixed(u32),
    /// The whole number in a header, or the default.
    Header(HeaderName, u32),
}

impl Cost {
    /// The cost of the request `req` shows.
    pub(super) fn of(&self, req: &RequestView<'_>) -> u32 {
        match self {
            Cost::Fixed(n) => *n,
            Cost::Header(name, default) => req
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u32>().ok())
                .filter(|&n| n > 0)
                .unwrap_or(*default),
        }
    }
}

/// A `rate_limit` section's options, checked.
#[derive(Debug, Clone)]
pub(super) struct Options {
    pub(super) cost: Option<Cost>,
    pub(super) dry_run: bool,
    pub(super) allow: HashSet<Key<'static>>,
    pub(super) tiers: BTreeMap<String, Vec<Quota>>,
    pub(super) max_keys: Option<usize>,
    pub(super) unlimited_when_full: bool,
    pub(super) on_missing: MissingKey,
    pub(super) headers_on_allowed: bool,
    pub(super) legacy_headers: bool,
}

impl Options {
    /// The live part, with the default quotas `quotas`: what a reload
    /// changes in a limiter it keeps.
    pub(super) fn settings(&self, quotas: Vec<Quota>) -> Settings {
        Settings {
            quotas,
            tiers: self.tiers.clone(),
            dry_run: self.dry_run,
            allow: self.allow.clone(),
        }
    }

    /// `builder` with these options.
    pub(super) fn local(self, mut builder: RateLimitBuilder) -> RateLimitBuilder {
        if let Some(cost) = self.cost {
            builder = builder.cost(move |req| cost.of(req));
        }
        for (tier, quotas) in self.tiers {
            builder = builder.tier(tier, quotas);
        }
        for key in self.allow {
            builder = builder.allow(key);
        }
        if let Some(n) = self.max_keys {
            builder = builder.max_keys(n);
        }
        if self.unlimited_when_full {
            builder = builder.unlimited_when_full();
        }
        builder
            .dry_run(self.dry_run)
            .on_missing_key(self.on_missing)
            .headers_on_allowed(self.headers_on_allowed)
            .legacy_headers(self.legacy_headers)
    }

    /// `builder` with these options (those a Redis limiter cannot honour
    /// were refused by [`options`]).
    #[cfg(feature = "redis")]
    pub(super) fn redis(
        self,
        mut builder: crate::ratelimit::redis::RedisRateLimitBuilder,
    ) -> crate::ratelimit::redis::RedisRateLimitBuilder {
        if let Some(cost) = self.cost {
            builder = builder.cost(move |req| cost.of(req));
        }
        for key in self.allow {
            builder = builder.allow(key);
        }
        builder
            .dry_run(self.dry_run)
            .on_missing_key(self.on_missing)
            .headers_on_allowed(self.headers_on_allowed)
            .legacy_headers(self.legacy_headers)
    }
}

/// Where a section is, for what it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// `pre_auth_limit`: no identity yet.
    PreAuth,
    /// A route's, `authenticated` when the route has `auth`.
    Route { authenticated: bool },
}

/// Checks `rl`'s options at `here` (`routes[0].rate_limit`), pushing every
/// problem; `None` if there was one.
pub(super) fn options(
    rl: &RateLimitConfig,
    here: &str,
    place: Place,
    problems: &mut Problems,
) -> Option<Options> {
    let before = problems.len();
    let cost = rl
        .cost
        .as_ref()
        .and_then(|c| cost(c, &format!("{here}.cost"), problems));
    let allow = allow_list(&rl.key, &rl.allow, &format!("{here}.allow"), problems);

    let mut tiers = BTreeMap::new();
    if !rl.tiers.is_empty() {
        let why_not = match place {
            Place::PreAuth => Some("no tier is known before authentication"),
            Place::Route { .. } if rl.redis => {
                Some("a limit counted in Redis has no tiers: count it in this process")
            }
            Place::Route {
                authenticated: false,
            } => Some("needs `auth` on the route: the tier is the caller's API key's"),
            Place::Route { .. } => None,
        };
        if let Some(why) = why_not {
            problems.push(format!("{here}.tiers"), why);
        }
    }
    for (tier, list) in &rl.tiers {
        let at = format!("{here}.tiers.{tier}");
        if tier.is_empty() {
            problems.push(&at, "a tier needs a name");
        }
        let qs = quotas(list, &at, problems);
        if list.is_empty() {
            problems.push(&at, "at least one quota");
        }
        tiers.insert(tier.clone(), qs);
    }

    if rl.max_keys == Some(0) {
        problems.push(format!("{here}.max_keys"), "must be at least 1");
    }
    if rl.redis {
        let local_only = [
            ("max_keys", rl.max_keys.is_some()),
            ("when_full", rl.when_full.is_some()),
        ];
        for (field, set) in local_only {
            if set {
                problems.push(
                    format!("{here}.{field}"),
                    "is for limits counted in this process: Redis keeps the keys of `redis = true`",
                );
            }
        }
    }

    let status = match (rl.on_missing_key, rl.missing_key_status) {
        (Some(MissingKeyConfig::Allow), Some(_)) => {
            problems.push(
                format!("{here}.missing_key_status"),
                "only with `on_missing_key = \"reject\"`",
            );
            None
        }
        (_, Some(code)) => match StatusCode::from_u16(code) {
            Ok(s) if s.is_client_error() => Some(s),
            _ => {
                problems.push(
                    format!("{here}.missing_key_status"),
                    format!("`{code}` is not a 4xx status"),
                );
                None
            }
        },
        (_, None) => None,
    };
    let on_missing = match rl.on_missing_key {
        Some(MissingKeyConfig::Allow) => MissingKey::Allow,
        Some(MissingKeyConfig::Reject) | None => {
            MissingKey::Reject(status.unwrap_or(StatusCode::BAD_REQUEST))
        }
    };

    (problems.len() == before).then(|| Options {
        cost,
        dry_run: rl.dry_run,
        allow,
        tiers,
        max_keys: rl.max_keys,
        unlimited_when_full: rl.when_full == Some(WhenFullConfig::Allow),
        on_missing,
        headers_on_allowed: rl.headers_on_allowed.unwrap_or(true),
        legacy_headers: rl.legacy_headers,
    })
}

/// Whether `old` and `new` build the same limiter, apart from what its
/// handle changes live (quotas, tiers, dry-run, allow list): a reload keeps
/// the old one, and its keys' state, only then.
pub(super) fn same_build(old: &RateLimitConfig, new: &RateLimitConfig) -> bool {
    old.key == new.key
        && old.cost == new.cost
        && old.max_keys == new.max_keys
        && old.when_full == new.when_full
        && old.on_missing_key == new.on_missing_key
        && old.missing_key_status == new.missing_key_status
        && old.headers_on_allowed == new.headers_on_allowed
        && old.legacy_headers == new.legacy_headers
}

fn cost(c: &CostConfig, at: &str, problems: &mut Problems) -> Option<Cost> {
    match (c.fixed, &c.header) {
        (Some(_), Some(_)) | (None, None) => {
            problems.push(at, "give exactly one of `fixed` and `header`");
            None
        }
        (Some(n), None) => {
            if c.default.is_some() {
                problems.push(format!("{at}.default"), "only with `header`");
            }
            if n == 0 {
                problems.push(format!("{at}.fixed"), "a request costs at least 1");
                return None;
            }
            Some(Cost::Fixed(n))
        }
        (None, Some(name)) => {
            let default = c.default.unwrap_or(1);
            if default == 0 {
                problems.push(format!("{at}.default"), "a request costs at least 1");
            }
            match HeaderName::from_str(name) {
                Ok(h) => Some(Cost::Header(h, default.max(1))),
                Err(_) => {
                    problems.push(
                        format!("{at}.header"),
                        format!("invalid header name `{name}`"),
                    );
                    None
                }
            }
        }
    }
}

/// The allow list as keys of the kind `key` reads.
fn allow_list(
    key: &KeyConfig,
    list: &[String],
    at: &str,
    problems: &mut Problems,
) -> HashSet<Key<'static>> {
    let mut out = HashSet::new();
    if list.is_empty() {
        return out;
    }
    if *key == KeyConfig::Global {
        problems.push(
            at,
            "every request has the one global key: remove the limit instead",
        );
        return out;
    }
    for (i, entry) in list.iter().enumerate() {
        let here = format!("{at}[{i}]");
        let parsed = match key {
            KeyConfig::PeerIp | KeyConfig::ClientIp(_) => match entry.parse::<IpAddr>() {
                Ok(ip) => Some(Key::from(ip)),
                Err(_) => {
                    problems.push(&here, format!("`{entry}` is not an IP address"));
                    None
                }
            },
            KeyConfig::Identity => {
                let (tenant, id) = match entry.split_once('/') {
                    Some((tenant, id)) => (Some(tenant), id),
                    None => (None, entry.as_str()),
                };
                if id.is_empty() || tenant.is_some_and(str::is_empty) {
                    problems.push(&here, "an identity is `id` or `tenant/id`");
                    None
                } else {
                    Some(Key::from(crate::auth::key_of(tenant, id)))
                }
            }
            KeyConfig::Header(_) | KeyConfig::Cookie(_) if entry.is_empty() => {
                problems.push(&here, "an empty value is no key");
                None
            }
            _ => Some(Key::from(entry.clone())),
        };
        out.extend(parsed);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    #[test]
    fn header_cost_is_at_least_one() {
        let cost = Cost::Header(HeaderName::from_static("x-cost"), 7);
        let at = |v: Option<&str>| {
            let mut b = Request::builder();
            if let Some(v) = v {
                b = b.header("x-cost", v);
            }
            cost.of(&RequestView::of(&b.body(()).unwrap()))
        };
        assert_eq!(at(Some("12")), 12);
        assert_eq!(at(Some(" 3 ")), 3);
        assert_eq!(at(None), 7);
        assert_eq!(at(Some("0")), 7);
        assert_eq!(at(Some("-4")), 7);
        assert_eq!(at(Some("many")), 7);
        assert_eq!(at(Some("99999999999")), 7);
    }

    #[test]
    fn identity_allow_entries_match_identity_keys() {
        let mut problems = Problems::default();
        let keys = allow_list(
            &KeyConfig::Identity,
            &["bot".to_owned(), "acme/ci".to_owned()],
            "allow",
            &mut problems,
        );
        assert_eq!(problems.len(), 0);
        let bot = crate::auth::Identity::new("bot");
        let ci = crate::auth::Identity::new("ci").with_tenant("acme");
        assert!(keys.contains(&Key::from(bot.key().to_owned())));
        assert!(keys.contains(&Key::from(ci.key().to_owned())));
    }
}
