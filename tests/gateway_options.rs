//! Every rate-limit option and the model fallback rules, reached through a
//! gateway's configuration (issue 20): each read from TOML, each refused
//! with its place in the configuration when wrong, and each doing what it
//! says to requests through a whole `Gateway` over real loopback
//! upstreams.
//!
//! Rate-limit requests go to the gateway service itself
//! (`ServiceExt::oneshot`); the quotas are per hour, so no assertion
//! depends on how long a test takes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use switchyard::gateway::{
    ConfigError, CostConfig, Gateway, GatewayConfig, MissingKeyConfig, WhenFullConfig,
};
use tower::ServiceExt;

use crate::support::net;

// === helpers ===

/// An upstream answering `ok` to everything.
async fn upstream() -> SocketAddr {
    net::serve(Router::new().fallback(|| async { "ok" })).await
}

/// A gateway over one upstream (`UP` in `routes`), with API keys of three
/// tiers, and `routes` (TOML) after them.
async fn gateway(routes: &str) -> Gateway {
    let up = upstream().await;
    Gateway::from_config(config(&routes.replace("UP", &up.to_string()))).unwrap()
}

fn config(routes: &str) -> GatewayConfig {
    let toml = format!(
        r#"
[upstreams.app]
url = "http://127.0.0.1:1"

[[api_keys]]
key = "gold-key"
id = "ann"
tier = "gold"
[[api_keys]]
key = "free-key"
id = "bob"
[[api_keys]]
key = "silver-key"
id = "cid"
tier = "silver"
[[api_keys]]
key = "ci-key"
id = "ci"
tenant = "acme"
{routes}
"#,
        routes = routes.replace("http://UP", "http://127.0.0.1:1")
    );
    let mut config = GatewayConfig::from_toml(&toml).unwrap();
    if let Some(url) = routes.lines().find_map(|l| l.strip_prefix("# upstream ")) {
        config.upstreams.get_mut("app").unwrap().url = url.to_owned();
    }
    config
}

/// One `GET /` with `headers`: its status, headers and body.
async fn get(gateway: &Gateway, headers: &[(&str, &str)]) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::get("http://gw/");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = gateway
        .clone()
        .oneshot(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// The statuses of `n` requests with `headers`.
async fn statuses(gateway: &Gateway, headers: &[(&str, &str)], n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get(gateway, headers).await.0.as_u16());
    }
    out
}

/// The places of a refused configuration's problems.
fn places(e: &ConfigError) -> Vec<&str> {
    e.problems.iter().map(|p| p.at.as_str()).collect()
}

/// A route `api` over the upstream with this `rate_limit` table (TOML
/// lines under `[routes.rate_limit]`) and `auth` when `auth`.
fn limited(auth: bool, rate_limit: &str) -> String {
    let auth = if auth { "auth = {}\n" } else { "" };
    format!(
        r#"
# upstream http://UP
[[routes]]
name = "api"
{auth}split.targets = [{{ name = "app", upstream = "app", weight = 1 }}]
[routes.rate_limit]
{rate_limit}
"#
    )
}

// === rate limits: TOML ===

#[test]
fn every_rate_limit_option_reads_from_toml_and_back() {
    let config = config(&limited(
        true,
        r#"
key = "identity"
quotas = [{ limit = 2, period = "1h", name = "free" }]
tiers.gold = [{ limit = 5, period = "1h", name = "gold" }, { limit = 50, period = "1d" }]
cost = { header = "x-cost", default = 3 }
dry_run = true
allow = ["ops", "acme/ci"]
max_keys = 1000
when_full = "allow"
on_missing_key = "reject"
missing_key_status = 401
headers_on_allowed = false
legacy_headers = true
"#,
    ));
    let rl = config.routes[0].rate_limit.as_ref().unwrap();
    assert_eq!(rl.tiers["gold"].len(), 2);
    assert_eq!(rl.tiers["gold"][0].limit, 5);
    let mut cost = CostConfig::default();
    cost.header = Some("x-cost".into());
    cost.default = Some(3);
    assert_eq!(rl.cost, Some(cost));
    assert!(rl.dry_run);
    assert_eq!(rl.allow, ["ops", "acme/ci"]);
    assert_eq!(rl.max_keys, Some(1000));
    assert_eq!(rl.when_full, Some(WhenFullConfig::Allow));
    assert_eq!(rl.on_missing_key, Some(MissingKeyConfig::Reject));
    assert_eq!(rl.missing_key_status, Some(401));
    assert_eq!(rl.headers_on_allowed, Some(false));
    assert!(rl.legacy_headers);
    // Written out and read back the same.
    let again = GatewayConfig::from_toml(&config.to_toml().unwrap()).unwrap();
    assert_eq!(again, config);

    // Left out: the defaults, and nothing new written out.
    let plain = self::config(&limited(
        false,
        r#"key = "peer_ip"
quotas = [{ limit = 2, period = "1h" }]"#,
    ));
    let rl = plain.routes[0].rate_limit.as_ref().unwrap();
    assert!(rl.tiers.is_empty() && rl.allow.is_empty() && !rl.dry_run && !rl.legacy_headers);
    assert_eq!(
        (
            rl.cost.as_ref(),
            rl.max_keys,
            rl.when_full,
            rl.on_missing_key
        ),
        (None, None, None, None)
    );
    let json = serde_json::to_value(rl).unwrap();
    assert_eq!(
        json.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["key", "quotas", "redis"]
    );

    // Unknown fields are refused, with their line.
    let typo = GatewayConfig::from_toml(
        "[[routes]]\nname = \"a\"\n[routes.rate_limit]\nkey = \"global\"\nquotas = []\nmax_key = 3\n",
    )
    .unwrap_err();
    assert!(
        typo.to_string().contains("unknown field `max_key`"),
        "{typo}"
    );
    assert!(typo.to_string().contains("line 6"), "{typo}");
    let typo = GatewayConfig::from_toml(
        "[[routes]]\nname = \"a\"\n[routes.rate_limit]\nkey = \"global\"\nquotas = []\ncost = { fixd = 3 }\n",
    )
    .unwrap_err();
    assert!(typo.to_string().contains("unknown field `fixd`"), "{typo}");
}

// === rate limits: what they do ===

#[tokio::test]
async fn each_api_keys_tier_meets_its_own_quotas() {
    let gw = gateway(&limited(
        true,
        r#"
key = "identity"
quotas = [{ limit = 1, period = "1h", name = "free" }]
tiers.gold = [{ limit = 3, period = "1h", name = "gold" }]
"#,
    ))
    .await;
    let gold = [("x-api-key", "gold-key")];
    assert_eq!(statuses(&gw, &gold, 4).await, [200, 200, 200, 429]);
    let (_, headers, _) = get(&gw, &gold).await;
    assert_eq!(headers["ratelimit-policy"], r#""gold";q=3;w=3600"#);
    // No tier, and a tier without quotas of its own: the default quotas.
    let free = [("x-api-key", "free-key")];
    assert_eq!(statuses(&gw, &free, 2).await, [200, 429]);
    let silver = [("x-api-key", "silver-key")];
    assert_eq!(statuses(&gw, &silver, 2).await, [200, 429]);
    let (_, headers, body) = get(&gw, &silver).await;
    assert_eq!(headers["ratelimit-policy"], r#""free";q=1;w=3600"#);
    let doc: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["policy"], "free");
    let handle = gw.rate_limit("api").unwrap();
    assert_eq!(handle.tier_quotas()["gold"].len(), 1);
    assert_eq!(handle.stats().rejected, 5);
}

#[tokio::test]
async fn a_request_costs_what_the_configuration_says() {
    let gw = gateway(&limited(
        false,
        r#"
key = { header = "x-user" }
quotas = [{ limit = 10, period = "1h", name = "units" }]
cost = { header = "x-cost", default = 2 }
"#,
    ))
    .await;
    let (status, headers, _) = get(&gw, &[("x-user", "a"), ("x-cost", "4")]).await;
    assert_eq!(status, 200);
    assert!(headers["ratelimit"].to_str().unwrap().contains("r=6"));
    // No header, or an unreadable one: the default, 2.
    let (_, headers, _) = get(&gw, &[("x-user", "a")]).await;
    assert!(headers["ratelimit"].to_str().unwrap().contains("r=4"));
    let (_, headers, _) = get(&gw, &[("x-user", "a"), ("x-cost", "0")]).await;
    assert!(headers["ratelimit"].to_str().unwrap().contains("r=2"));
    // More than is left: refused, nothing taken.
    let (status, _, _) = get(&gw, &[("x-user", "a"), ("x-cost", "3")]).await;
    assert_eq!(status, 429);
    let (status, _, _) = get(&gw, &[("x-user", "a"), ("x-cost", "2")]).await;
    assert_eq!(status, 200);

    let fixed = gateway(&limited(
        false,
        r#"
key = { header = "x-user" }
quotas = [{ limit = 10, period = "1h" }]
cost = { fixed = 4 }
"#,
    ))
    .await;
    // The header means nothing here.
    let user = [("x-user", "a"), ("x-cost", "1")];
    assert_eq!(statuses(&fixed, &user, 3).await, [200, 200, 429]);
}

#[tokio::test]
async fn dry_run_counts_but_never_refuses() {
    let gw = gateway(&limited(
        false,
        r#"
key = { header = "x-user" }
quotas = [{ limit = 1, period = "1h" }]
dry_run = true
"#,
    ))
    .await;
    let user = [("x-user", "a")];
    assert_eq!(statuses(&gw, &user, 3).await, [200, 200, 200]);
    // The headers of a refusal go with what would have been one.
    let (_, headers, _) = get(&gw, &user).await;
    assert!(headers["ratelimit"].to_str().unwrap().contains("r=0"));
    let stats = gw.rate_limit("api").unwrap().stats();
    assert_eq!(
        (stats.allowed, stats.dry_run_rejected, stats.rejected),
        (1, 3, 0)
    );
}

#[tokio::test]
async fn allow_listed_keys_are_never_limited() {
    let gw = gateway(&limited(
        false,
        r#"
key = { header = "x-user" }
quotas = [{ limit = 1, period = "1h" }]
allow = ["ops"]
"#,
    ))
    .await;
    assert_eq!(
        statuses(&gw, &[("x-user", "ops")], 3).await,
        [200, 200, 200]
    );
    assert_eq!(statuses(&gw, &[("x-user", "dev")], 2).await, [200, 429]);
    assert_eq!(gw.rate_limit("api").unwrap().stats().bypassed, 3);

    // By identity: an `id`, or `tenant/id` for a key with a tenant.
    let gw = gateway(&limited(
        true,
        r#"
key = "identity"
quotas = [{ limit = 1, period = "1h" }]
allow = ["acme/ci"]
"#,
    ))
    .await;
    assert_eq!(
        statuses(&gw, &[("x-api-key", "ci-key")], 3).await,
        [200, 200, 200]
    );
    assert_eq!(
        statuses(&gw, &[("x-api-key", "free-key")], 2).await,
        [200, 429]
    );

    // By address: IP addresses.
    let gw = gateway(&limited(
        false,
        r#"
key = "peer_ip"
quotas = [{ limit = 1, period = "1h" }]
allow = ["127.0.0.1"]
"#,
    ))
    .await;
    let addr = net::serve(Router::new().fallback_service(gw)).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    for _ in 0..3 {
        assert_eq!(net::get(&client, addr, "/", &[]).await.status(), 200);
    }
}

#[tokio::test]
async fn requests_without_a_key_get_what_the_policy_says() {
    let rl = |policy: &str| {
        limited(
            false,
            &format!(
                "key = {{ header = \"x-user\" }}\nquotas = [{{ limit = 1, period = \"1h\" }}]\n{policy}"
            ),
        )
    };
    let gw = gateway(&rl("")).await;
    let (status, headers, _) = get(&gw, &[]).await;
    assert_eq!(status, 400);
    assert_eq!(headers["content-type"], "application/problem+json");

    let gw = gateway(&rl("missing_key_status = 401")).await;
    assert_eq!(get(&gw, &[]).await.0, 401);

    let gw = gateway(&rl("on_missing_key = \"allow\"")).await;
    assert_eq!(statuses(&gw, &[], 3).await, [200, 200, 200]);
    assert_eq!(gw.rate_limit("api").unwrap().stats().missing_key, 3);
}

#[tokio::test]
async fn max_keys_bounds_the_table_and_when_full_says_what_new_keys_get() {
    let rl = |extra: &str| {
        limited(
            false,
            &format!(
                "key = {{ header = \"x-user\" }}\nquotas = [{{ limit = 1, period = \"1h\" }}]\nmax_keys = 2\n{extra}"
            ),
        )
    };
    let gw = gateway(&rl("")).await;
    for user in ["a", "b"] {
        assert_eq!(get(&gw, &[("x-user", user)]).await.0, 200);
    }
    // Full of live keys: newcomers share one state.
    assert_eq!(get(&gw, &[("x-user", "c")]).await.0, 200);
    assert_eq!(get(&gw, &[("x-user", "d")]).await.0, 429);
    let stats = gw.rate_limit("api").unwrap().stats();
    assert_eq!((stats.tracked_keys, stats.overflowed), (2, 2));

    let gw = gateway(&rl("when_full = \"allow\"")).await;
    for user in ["a", "b"] {
        assert_eq!(get(&gw, &[("x-user", user)]).await.0, 200);
    }
    assert_eq!(statuses(&gw, &[("x-user", "c")], 3).await, [200, 200, 200]);
}

#[tokio::test]
async fn header_options_shape_the_answers() {
    let gw = gateway(&limited(
        false,
        r#"
key = { header = "x-user" }
quotas = [{ limit = 1, period = "1h" }]
headers_on_allowed = false
legacy_headers = true
"#,
    ))
    .await;
    let (status, headers, _) = get(&gw, &[("x-user", "a")]).await;
    assert_eq!(status, 200);
    assert!(headers.get("ratelimit").is_none());
    let (status, headers, _) = get(&gw, &[("x-user", "a")]).await;
    assert_eq!(status, 429);
    assert_eq!(headers["x-ratelimit-limit"], "1");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert!(headers.get("ratelimit").is_some());
}

#[tokio::test]
async fn pre_auth_limit_takes_the_options_too() {
    let up = upstream().await;
    let mut config = config(&limited(
        false,
        r#"key = "global"
quotas = [{ limit = 100, period = "1h" }]"#,
    ));
    config.upstreams.get_mut("app").unwrap().url = format!("http://{up}");
    config.pre_auth_limit = Some(
        toml::from_str(
            r#"
key = "peer_ip"
quotas = [{ limit = 1, period = "1h" }]
allow = ["127.0.0.1"]
"#,
        )
        .unwrap(),
    );
    let gw = Gateway::from_config(config).unwrap();
    let addr = net::serve(Router::new().fallback_service(gw)).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    for _ in 0..3 {
        assert_eq!(net::get(&client, addr, "/", &[]).await.status(), 200);
    }
}

#[tokio::test]
async fn a_reload_changes_live_options_in_place_and_rebuilds_for_the_others() {
    let route = |rate_limit: &str| {
        limited(
            true,
            &format!(
                "key = \"identity\"\nquotas = [{{ limit = 2, period = \"1h\" }}]\n{rate_limit}"
            ),
        )
    };
    let gw = gateway(&route("")).await;
    let free = [("x-api-key", "free-key")];
    let gold = [("x-api-key", "gold-key")];
    assert_eq!(statuses(&gw, &free, 1).await, [200]);
    assert_eq!(statuses(&gw, &gold, 1).await, [200]);
    let before = gw.rate_limit("api").unwrap();

    // Tiers, dry-run and the allow list: changed in the same limiter,
    // every key's state kept.
    let mut next = gw.config();
    let up = next.upstreams["app"].url.clone();
    let mut changed = config(&route(
        "tiers.gold = [{ limit = 5, period = \"1h\" }]\nallow = [\"cid\"]",
    ));
    changed.upstreams.get_mut("app").unwrap().url = up.clone();
    next.routes = changed.routes.clone();
    gw.reload(next).unwrap();
    let after = gw.rate_limit("api").unwrap();
    assert_eq!(after.stats(), before.stats());
    assert_eq!(after.tier_quotas()["gold"][0].count(), 5);
    // Each key's state is kept as time: both keys are half an hour
    // ahead (one request of 2 an hour). `free` has one request left; under
    // gold's 5 an hour (12 minutes each, an hour of tolerance) `gold` has
    // two.
    assert_eq!(statuses(&gw, &free, 2).await, [200, 429]);
    assert_eq!(statuses(&gw, &gold, 3).await, [200, 200, 429]);
    assert_eq!(
        statuses(&gw, &[("x-api-key", "silver-key")], 3).await,
        [200, 200, 200]
    );

    // Dry-run on, then off again: the same limiter.
    let mut dry = changed.clone();
    dry.routes[0].rate_limit.as_mut().unwrap().dry_run = true;
    let mut next = gw.config();
    next.routes = dry.routes.clone();
    gw.reload(next).unwrap();
    assert!(gw.rate_limit("api").unwrap().dry_run());
    assert_eq!(statuses(&gw, &free, 1).await, [200]);

    // A build option (max_keys): a new limiter, every key fresh.
    let mut rebuilt = changed.clone();
    rebuilt.routes[0].rate_limit.as_mut().unwrap().max_keys = Some(10);
    let mut next = gw.config();
    next.routes = rebuilt.routes.clone();
    gw.reload(next).unwrap();
    let fresh = gw.rate_limit("api").unwrap();
    assert_eq!(fresh.stats().allowed, 0);
    assert!(!fresh.dry_run());
    assert_eq!(statuses(&gw, &free, 3).await, [200, 200, 429]);
}

// === rate limits: refused ===

/// The places of the problems of `routes` (TOML), which must be refused.
fn refused(routes: &str) -> (Vec<String>, String) {
    let e = Gateway::from_config(config(routes)).unwrap_err();
    (
        places(&e).into_iter().map(str::to_owned).collect(),
        e.to_string(),
    )
}

#[tokio::test]
async fn wrong_rate_limit_options_are_refused_with_their_place() {
    let cases: &[(bool, &str, &[&str], &str)] = &[
        (
            false,
            "cost = { fixed = 1, header = \"x-cost\" }",
            &["routes[0].rate_limit.cost"],
            "exactly one",
        ),
        (
            false,
            "cost = {}",
            &["routes[0].rate_limit.cost"],
            "exactly one",
        ),
        (
            false,
            "cost = { fixed = 0 }",
            &["routes[0].rate_limit.cost.fixed"],
            "at least 1",
        ),
        (
            false,
            "cost = { fixed = 2, default = 1 }",
            &["routes[0].rate_limit.cost.default"],
            "only with `header`",
        ),
        (
            false,
            "cost = { header = \"bad header\" }",
            &["routes[0].rate_limit.cost.header"],
            "invalid header name",
        ),
        (
            false,
            "cost = { header = \"x-cost\", default = 0 }",
            &["routes[0].rate_limit.cost.default"],
            "at least 1",
        ),
        (
            false,
            "max_keys = 0",
            &["routes[0].rate_limit.max_keys"],
            "at least 1",
        ),
        (
            false,
            "missing_key_status = 200",
            &["routes[0].rate_limit.missing_key_status"],
            "not a 4xx",
        ),
        (
            false,
            "on_missing_key = \"allow\"\nmissing_key_status = 429",
            &["routes[0].rate_limit.missing_key_status"],
            "only with",
        ),
        (
            false,
            "allow = [\"\"]",
            &["routes[0].rate_limit.allow[0]"],
            "empty",
        ),
        (
            false,
            "tiers.gold = [{ limit = 5, period = \"1h\" }]",
            &["routes[0].rate_limit.tiers"],
            "needs `auth`",
        ),
        (
            true,
            "tiers.gold = [{ limit = 5, period = \"soon\" }]",
            &["routes[0].rate_limit.tiers.gold[0].period"],
            "invalid period",
        ),
        (
            true,
            "tiers.gold = []",
            &["routes[0].rate_limit.tiers.gold"],
            "at least one quota",
        ),
        (
            true,
            "tiers.gold = [{ limit = 5, period = \"1h\", name = \"a b\" }]",
            &["routes[0].rate_limit.tiers.gold"],
            "quota name `a b`",
        ),
    ];
    for (auth, extra, want, says) in cases {
        let (at, message) = refused(&limited(
            *auth,
            &format!(
                "key = {{ header = \"x-user\" }}\nquotas = [{{ limit = 1, period = \"1h\" }}]\n{extra}"
            ),
        ));
        assert_eq!(at, *want, "{extra}: {message}");
        assert!(message.contains(says), "{extra}: {message}");
    }

    // Allow lists in the key's own terms.
    let (at, message) = refused(&limited(
        false,
        "key = \"peer_ip\"\nquotas = [{ limit = 1, period = \"1h\" }]\nallow = [\"10.0.0.1\", \"ops\"]",
    ));
    assert_eq!(at, ["routes[0].rate_limit.allow[1]"]);
    assert!(message.contains("`ops` is not an IP address"), "{message}");
    let (at, _) = refused(&limited(
        false,
        "key = \"global\"\nquotas = [{ limit = 1, period = \"1h\" }]\nallow = [\"x\"]",
    ));
    assert_eq!(at, ["routes[0].rate_limit.allow"]);
    let (at, _) = refused(&limited(
        true,
        "key = \"identity\"\nquotas = [{ limit = 1, period = \"1h\" }]\nallow = [\"acme/\"]",
    ));
    assert_eq!(at, ["routes[0].rate_limit.allow[0]"]);

    // Before authentication there is no tier.
    let mut config = config(&limited(
        false,
        "key = \"global\"\nquotas = [{ limit = 1, period = \"1h\" }]",
    ));
    config.pre_auth_limit = Some(
        toml::from_str(
            "key = \"peer_ip\"\nquotas = [{ limit = 1, period = \"1h\" }]\ntiers.gold = [{ limit = 5, period = \"1h\" }]",
        )
        .unwrap(),
    );
    let e = Gateway::from_config(config).unwrap_err();
    assert_eq!(places(&e), ["pre_auth_limit.tiers"]);

    // Several at once, all reported; a refused reload changes nothing.
    let gw = gateway(&limited(
        false,
        "key = { header = \"x-user\" }\nquotas = [{ limit = 1, period = \"1h\" }]",
    ))
    .await;
    let mut next = gw.config();
    let rl = next.routes[0].rate_limit.as_mut().unwrap();
    rl.max_keys = Some(0);
    rl.allow = vec![String::new()];
    rl.dry_run = true;
    let e = gw.reload(next).unwrap_err();
    assert_eq!(
        places(&e),
        [
            "routes[0].rate_limit.allow[0]",
            "routes[0].rate_limit.max_keys"
        ]
    );
    assert!(!gw.rate_limit("api").unwrap().dry_run());
    // A limiter kept by a reload is checked as a new one would be: a bad
    // tier quota is located, not found when the change is applied.
    let mut next = gw.config();
    let rl = next.routes[0].rate_limit.as_mut().unwrap();
    rl.dry_run = true;
    rl.quotas[0].name = Some("a b".into());
    let e = gw.reload(next).unwrap_err();
    assert_eq!(places(&e), ["routes[0].rate_limit.quotas"]);
    assert!(!gw.rate_limit("api").unwrap().dry_run());
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_limits_refuse_what_redis_cannot_honour() {
    let mut config = config(&limited(
        true,
        r#"key = "identity"
quotas = [{ limit = 1, period = "1h" }]
redis = true
tiers.gold = [{ limit = 5, period = "1h" }]
max_keys = 10
when_full = "allow"
"#,
    ));
    config.redis = Some(toml::from_str("url = \"redis://127.0.0.1:1/\"").unwrap());
    let e = Gateway::from_config(config).unwrap_err();
    assert_eq!(
        places(&e),
        [
            "routes[0].rate_limit.tiers",
            "routes[0].rate_limit.max_keys",
            "routes[0].rate_limit.when_full",
        ]
    );
    assert!(e.problems[0].message.contains("Redis"), "{e}");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_limits_take_cost_dry_run_allow_and_the_missing_key_policy() {
    let Some(server) = crate::support::redis::RedisServer::start().await else {
        return;
    };
    let up = upstream().await;
    let mut config = config(&limited(
        false,
        r#"key = { header = "x-user" }
quotas = [{ limit = 10, period = "1h", name = "shared" }]
redis = true
cost = { header = "x-cost" }
allow = ["ops"]
on_missing_key = "allow"
legacy_headers = true
"#,
    ));
    config.upstreams.get_mut("app").unwrap().url = format!("http://{up}");
    config.redis = Some(
        toml::from_str(&format!(
            "url = \"redis://127.0.0.1:{}/\"\nprefix = \"options:\"\ntimeout_ms = 2000",
            server.port
        ))
        .unwrap(),
    );
    let gw = Gateway::from_config(config.clone()).unwrap();
    let (status, headers, _) = get(&gw, &[("x-user", "a"), ("x-cost", "7")]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-ratelimit-remaining"], "3");
    assert_eq!(get(&gw, &[("x-user", "a"), ("x-cost", "4")]).await.0, 429);
    assert_eq!(
        statuses(&gw, &[("x-user", "ops"), ("x-cost", "9")], 3).await,
        [200, 200, 200]
    );
    assert_eq!(statuses(&gw, &[], 2).await, [200, 200]);
    let stats = gw.redis_rate_limit("api").unwrap().stats();
    assert_eq!(
        (
            stats.allowed,
            stats.rejected,
            stats.bypassed,
            stats.missing_key
        ),
        (1, 1, 3, 2)
    );

    // Dry-run through a reload: a new limiter over the same state.
    config.routes[0].rate_limit.as_mut().unwrap().dry_run = true;
    gw.reload(config).unwrap();
    assert!(gw.redis_rate_limit("api").unwrap().dry_run());
    assert_eq!(get(&gw, &[("x-user", "a"), ("x-cost", "4")]).await.0, 200);
    assert_eq!(
        gw.redis_rate_limit("api").unwrap().stats().dry_run_rejected,
        1
    );
}

// === model fallback ===

/// An OpenAI-style upstream: answers `status` (shared, changed by the
/// test) with an error, or 200 with a completion naming `name`; counts its
/// requests.
async fn llm(name: &'static str, status: Arc<AtomicU16>, hits: Arc<AtomicU64>) -> SocketAddr {
    net::serve(Router::new().fallback(move |body: Bytes| {
        let status = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
        hits.fetch_add(1, Ordering::SeqCst);
        async move {
            let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let reply = if status.is_success() {
                json!({
                    "id": "c1", "object": "chat.completion", "model": asked["model"],
                    "choices": [{ "index": 0, "finish_reason": "stop",
                                  "message": { "role": "assistant", "content": name } }],
                    "usage": { "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2 }
                })
            } else {
                json!({ "error": { "message": format!("{name} failed"), "type": "server_error" } })
            };
            (status, axum::Json(reply))
        }
    }))
    .await
}

fn model_config(primary: SocketAddr, backup: SocketAddr, extra: &str) -> GatewayConfig {
    GatewayConfig::from_toml(&format!(
        r#"
[upstreams.primary]
url = "http://{primary}"
[upstreams.backup]
url = "http://{backup}"

[[routes]]
name = "ai"
path_prefix = "/v1"
[routes.model]
{extra}
[routes.model.catalog]
models = [
  {{ name = "big", upstream = "primary" }},
  {{ name = "small", upstream = "backup" }},
]
aliases = [{{ name = "chat", versions = {{ big = 100 }}, fallback = "small" }}]
"#
    ))
    .unwrap()
}

async fn chat(gw: &Gateway) -> (StatusCode, HeaderMap, Value) {
    let req = Request::post("http://gw/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            json!({ "model": "chat", "messages": [{ "role": "user", "content": "hi" }] })
                .to_string(),
        )))
        .unwrap();
    let res = gw.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[test]
fn fallback_rules_read_from_toml() {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let config = model_config(addr, addr, "fallback_on = { too_many_requests = false }");
    let mc = config.routes[0].model.as_ref().unwrap();
    assert_eq!(mc.catalog.aliases[0].fallback.as_deref(), Some("small"));
    let on = mc.fallback_on;
    assert!(on.errors && on.server_errors && !on.too_many_requests);
    let again = GatewayConfig::from_toml(&config.to_toml().unwrap()).unwrap();
    assert_eq!(again, config);
    // The default: all three, and not written out.
    let plain = model_config(addr, addr, "");
    assert_eq!(
        plain.routes[0].model.as_ref().unwrap().fallback_on,
        switchyard::model::FallbackOn::default()
    );
    assert!(!plain.to_toml().unwrap().contains("fallback_on"));
    // Unknown rules are refused.
    let e = GatewayConfig::from_toml(
        "[[routes]]\nname = \"a\"\n[routes.model]\nfallback_on = { timeouts = true }\n",
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown field `timeouts`"), "{e}");
}

#[tokio::test]
async fn wrong_fallbacks_are_refused_with_their_place() {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut config = model_config(addr, addr, "");
    config.routes[0].model.as_mut().unwrap().catalog.aliases[0].fallback = Some("huge".into());
    let e = Gateway::from_config(config).unwrap_err();
    assert_eq!(places(&e), ["routes[0].model.catalog"]);
    assert!(
        e.problems[0]
            .message
            .contains("aliases[0].fallback: unknown model `huge`"),
        "{e}"
    );
    // An alias is not a model to fall back to.
    let mut config = model_config(addr, addr, "");
    config.routes[0].model.as_mut().unwrap().catalog.aliases[0].fallback = Some("chat".into());
    let e = Gateway::from_config(config).unwrap_err();
    assert_eq!(places(&e), ["routes[0].model.catalog"]);
    assert!(
        e.problems[0].message.contains("unknown model `chat`"),
        "{e}"
    );
}

#[tokio::test]
async fn a_failing_upstream_falls_back_through_the_gateway() {
    let primary_status = Arc::new(AtomicU16::new(500));
    let primary_hits = Arc::new(AtomicU64::new(0));
    let backup_hits = Arc::new(AtomicU64::new(0));
    let primary = llm("big", primary_status.clone(), primary_hits.clone()).await;
    let backup = llm("small", Arc::new(AtomicU16::new(200)), backup_hits.clone()).await;

    let gw = Gateway::from_config(model_config(primary, backup, "")).unwrap();
    // A 500, then a 429: both fall back.
    for (status, n) in [(500, 1), (429, 2)] {
        primary_status.store(status, Ordering::SeqCst);
        let (status, headers, body) = chat(&gw).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-switchyard-model"], "small");
        assert_eq!(body["choices"][0]["message"]["content"], "small");
        assert_eq!(primary_hits.load(Ordering::SeqCst), n);
        assert_eq!(backup_hits.load(Ordering::SeqCst), n);
    }
    assert!(
        gw.metrics()
            .contains("switchyard_model_fallbacks_total{route=\"ai\",model=\"big\"} 2"),
        "{}",
        gw.metrics()
    );

    // Not on a 429 any more (a reload): the 429 reaches the client.
    gw.reload(model_config(
        primary,
        backup,
        "fallback_on = { too_many_requests = false }",
    ))
    .unwrap();
    let (status, _, _) = chat(&gw).await;
    assert_eq!(status, 429);
    assert_eq!(backup_hits.load(Ordering::SeqCst), 2);
    primary_status.store(500, Ordering::SeqCst);
    let (status, headers, _) = chat(&gw).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-switchyard-model"], "small");

    // Never: every failure reaches the client.
    let never =
        "fallback_on = { errors = false, server_errors = false, too_many_requests = false }";
    gw.reload(model_config(primary, backup, never)).unwrap();
    let (status, _, _) = chat(&gw).await;
    assert_eq!(status, 500);
    assert_eq!(backup_hits.load(Ordering::SeqCst), 3);

    // A primary that cannot be reached falls back on `errors`.
    let refusing = net::Refusing::new();
    let gone = refusing.addr;
    gw.reload(model_config(gone, backup, "")).unwrap();
    let (status, headers, _) = chat(&gw).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-switchyard-model"], "small");
}
