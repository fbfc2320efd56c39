#![cfg(feature = "redis")]
//! A fleet of gateway replicas over highly available Redis: a 3-primary
//! Redis Cluster and a Sentinel-watched primary that is killed under load,
//! each started by the test on loopback (`tests/support/redis_ha.rs`);
//! the replicas are a `Fleet` in this process (`tests/support/fleet.rs`).
//!
//! Like the other Redis tests, these skip (with a note) when
//! `redis-server` is missing, unless `SWITCHYARD_REQUIRE_REDIS` is set.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use http::StatusCode;
use switchyard::gateway::{Gateway, GatewayConfig};

use crate::support::fleet::{Fleet, HANG_GUARD, ask};
use crate::support::redis_ha::{RedisCluster, RedisSentinel};

/// An upstream answering 200 to everything.
async fn upstream() -> std::net::SocketAddr {
    crate::support::net::serve(Router::new().fallback(|| async { "ok" })).await
}

/// The gateway configuration of every replica: `[redis]` as `redis`
/// gives it, one route with a shared limit of `limit` an hour per
/// `x-user` (and a second quota, so that each check touches two keys;
/// both long, so that no key expires while a test looks at them),
/// and a blue/green split, synced.
fn fleet_config(redis: &str, up: std::net::SocketAddr, limit: u32) -> GatewayConfig {
    GatewayConfig::from_toml(&format!(
        r#"
{redis}

[weight_sync]
interval_ms = 3600000
check_interval_ms = 10
prefix = "fleet:"

[upstreams.blue]
url = "http://{up}"
[upstreams.green]
url = "http://{up}"

[[routes]]
name = "api"
rate_limit = {{ key = {{ header = "x-user" }}, redis = true, quotas = [
    {{ name = "hourly", limit = {limit}, period = "1h" }},
    {{ name = "daily", limit = 1000, period = "1d" }},
] }}
split.targets = [
    {{ name = "blue", upstream = "blue", weight = 90 }},
    {{ name = "green", upstream = "green", weight = 10 }},
]
"#
    ))
    .unwrap()
}

/// Three replicas over a 3-primary Redis Cluster share each limit
/// exactly, whichever replica a request reaches; each user's keys (two
/// quotas: one script call touching both) sit on one node, the users
/// spread over the nodes; a promotion on one replica reaches the others
/// through the cluster's pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_replicas_share_limits_and_weights() {
    let Some(cluster) = RedisCluster::start().await else {
        return;
    };
    let up = upstream().await;
    let urls = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let section = format!("[redis]\ncluster = [{urls}]\nprefix = \"fleet:rl:\"");
    let fleet = Fleet::start(3, || fleet_config(&section, up, 10));
    let gateways = &fleet.gateways;

    // 30 users, 15 requests each, round-robin over the replicas: exactly
    // 10 each get through (an hour's quota of 10 refills nothing here).
    let mut admitted: HashMap<String, u32> = HashMap::new();
    for round in 0..15 {
        for u in 0..30 {
            let user = format!("user-{u}");
            let status = fleet.ask((round + u) % 3, &user).await;
            match status {
                StatusCode::OK => *admitted.entry(user).or_default() += 1,
                StatusCode::TOO_MANY_REQUESTS => {}
                other => panic!("{user}: {other}"),
            }
        }
    }
    for u in 0..30 {
        assert_eq!(admitted[&format!("user-{u}")], 10, "user-{u}");
    }
    for g in gateways {
        let stats = g.redis_rate_limit("api").unwrap().stats();
        assert_eq!(stats.errors, 0, "{stats:?}");
    }

    // The keys: each user's two on one node, the users on every node.
    let mut nodes_of: HashMap<String, Vec<u16>> = HashMap::new();
    let mut users_per_node = Vec::new();
    for (port, keys) in cluster.keys_on_each().await {
        let mut users = std::collections::HashSet::new();
        for key in keys.iter().filter(|k| k.starts_with("fleet:rl:")) {
            let tag = key
                .split_once('{')
                .and_then(|(_, rest)| rest.split_once('}'))
                .map(|(tag, _)| tag.to_owned())
                .unwrap_or_else(|| panic!("{key} has no hash tag"));
            nodes_of.entry(tag.clone()).or_default().push(port);
            users.insert(tag);
        }
        users_per_node.push(users.len());
    }
    assert_eq!(nodes_of.len(), 30, "a tag per user: {nodes_of:?}");
    for (tag, ports) in &nodes_of {
        assert_eq!(ports.len(), 2, "{tag}: a key per quota: {ports:?}");
        assert_eq!(ports[0], ports[1], "{tag}: both keys on one node");
    }
    assert!(
        users_per_node.iter().all(|n| *n > 0),
        "users on every node: {users_per_node:?}"
    );

    // Weights: every replica listens on some node; a promotion made on
    // one reaches the two others.
    fleet.synced().await;
    gateways[1].split("api").unwrap().promote("green").unwrap();
    fleet
        .until("green promoted", |g| {
            g.split("api").unwrap().weights().get("green") == Some(100)
        })
        .await;
    for g in gateways {
        assert_eq!(g.weight_sync().unwrap().stats().errors, 0);
    }
}

/// The same over TLS (`rediss://` nodes, a private CA in `ca_file`): two
/// replicas share a limit exactly through a cluster whose nodes speak TLS
/// to clients and to each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_over_tls_shares_limits() {
    let Some(cluster) = RedisCluster::start_tls().await else {
        return;
    };
    let up = upstream().await;
    let urls = cluster
        .tls_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");
    let section = format!(
        "[redis]\ncluster = [{urls}]\nca_file = \"{ca}\"\nprefix = \"fleet:rl:\"\ntimeout_ms = 1000"
    );
    let fleet = Fleet::start(2, || fleet_config(&section, up, 5));
    for u in 0..12 {
        let user = format!("tls-{u}");
        let mut admitted = 0;
        for i in 0..8 {
            if fleet.ask(i % 2, &user).await == StatusCode::OK {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 5, "{user}");
    }
    for g in &fleet.gateways {
        assert_eq!(g.redis_rate_limit("api").unwrap().stats().errors, 0);
    }
    let nodes_with_keys = cluster
        .keys_on_each()
        .await
        .into_iter()
        .filter(|(_, keys)| keys.iter().any(|k| k.starts_with("fleet:rl:")))
        .count();
    assert!(nodes_with_keys >= 2, "the users spread over the nodes");
}

/// Three replicas over a Sentinel-watched primary, under load from 6
/// clients (and 3 more from the kill on); the primary is killed. Checks
/// that Redis cannot answer during the failover are limited locally
/// (`on_failure = "local"`, a third of each quota per replica, a key
/// Redis refused before being refused locally too); once the sentinels
/// promote the replica, the
/// gateways follow it by themselves: the limits are shared again (a user
/// spent before the kill is still refused everywhere: the new primary has
/// the replicated state), weights sync again, and nothing failed but
/// Redis. The overshoot during the window is measured and printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_under_load() {
    let Some(mut ha) = RedisSentinel::start().await else {
        return;
    };
    let up = upstream().await;
    let sentinels = ha
        .sentinel_urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let section = format!(
        "[redis]\nsentinel = {{ master = \"{}\", urls = [{sentinels}] }}\nprefix = \"fleet:rl:\"\n\
         on_failure = \"local\"\nreplicas = 3\nbreaker_failures = 3\nbreaker_cooldown_ms = 100",
        ha.master_name()
    );
    let limit = 30;
    let fleet = Fleet::start(3, || fleet_config(&section, up, limit));
    let (gateways, fronts) = (&fleet.gateways, &fleet.fronts);
    fleet.synced().await;

    // Before: "spent" uses its whole quota through Redis.
    let mut spent = 0;
    for i in 0..limit + 5 {
        if fleet.ask(i as usize % 3, "spent").await == StatusCode::OK {
            spent += 1;
        }
    }
    assert_eq!(spent, limit, "shared before the failover");
    // Replication is asynchronous: what a primary acknowledged and did
    // not pass on before it died is lost in any failover. The test makes
    // sure the replica has it all before the kill, so that what it
    // measures is the gateways' own work.
    let primary = ha.primary_port();
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{primary}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    replicated(&mut conn).await;

    // Load: 6 clients, each its own user, spread over the replicas, spent
    // in Redis before the kill; 3 more users whose first requests come
    // once the primary is dead.
    let stop = Arc::new(AtomicBool::new(false));
    let kill = Arc::new(tokio::sync::Notify::new());
    // Refusals so far of each user that runs before the kill.
    let refused: Arc<Vec<std::sync::atomic::AtomicU32>> = Arc::new(
        (0..6)
            .map(|_| std::sync::atomic::AtomicU32::new(0))
            .collect(),
    );
    let load = |user: String, first: usize, after_kill: bool| {
        let (fronts, stop, kill) = (fronts.clone(), stop.clone(), kill.clone());
        let refused = refused.clone();
        tokio::spawn(async move {
            if after_kill {
                kill.notified().await;
            }
            let (mut ok, mut limited, mut i) = (0u32, 0u32, first);
            while !stop.load(Ordering::Relaxed) {
                match ask(&fronts[i % 3], &user).await {
                    StatusCode::OK => ok += 1,
                    StatusCode::TOO_MANY_REQUESTS => {
                        limited += 1;
                        if !after_kill {
                            refused[first].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    other => panic!("{user}: {other}"),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (ok, limited)
        })
    };
    let spent_users: Vec<_> = (0..6)
        .map(|c| load(format!("load-{c}"), c, false))
        .collect();
    let new_users: Vec<_> = (0..3).map(|c| load(format!("new-{c}"), c, true)).collect();
    // Each spent user refused on every replica before the kill, however
    // slow the machine (round robin: 3 refusals in a row will do).
    tokio::time::timeout(HANG_GUARD, async {
        while refused.iter().any(|r| r.load(Ordering::Relaxed) < 3) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the load users were never refused");
    let killed_at = std::time::Instant::now();
    // The load users are spent in Redis by now, and a refusal writes
    // nothing: once the replica has what came before, it has it all.
    replicated(&mut conn).await;
    let old = ha.kill_primary();
    kill.notify_waiters();
    let new = ha.wait_failover(old).await;
    let promoted_after = killed_at.elapsed();
    // The gateways find the new primary by themselves: "spent" is refused
    // by Redis again on every replica (locally, each would allow a third
    // of the quota), and the checks stop failing.
    shared_again(
        fronts,
        gateways,
        &format!("the gateways follow the new primary on {new}"),
    )
    .await;
    let shared_again_after = killed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut over = Vec::new();
    for client in spent_users {
        let (ok, limited) = client.await.expect("a client panicked");
        assert!(limited > 0, "each load user ran past its quota");
        over.push(ok.saturating_sub(limit));
    }
    let mut new_over = Vec::new();
    for client in new_users {
        let (ok, limited) = client.await.expect("a client panicked");
        assert!(limited > 0, "each new user ran past its quota");
        new_over.push(ok.saturating_sub(limit));
    }
    let skipped: u64 = gateways
        .iter()
        .map(|g| g.redis_rate_limit("api").unwrap().stats().skipped)
        .sum();
    eprintln!(
        "sentinel failover: primary {old} killed, {new} promoted after {promoted_after:?}, \
         limits shared again after {shared_again_after:?}; admitted over the quota of \
         {limit}: users spent before the kill {over:?}, users new in the failover \
         {new_over:?}; checks that skipped Redis: {skipped}"
    );
    // Users Redis refused before the kill stay refused: each replica
    // spent their local share when Redis refused them.
    assert!(over.iter().all(|o| *o == 0), "{over:?}");
    // A user new in the window gets at most the quota from the replicas'
    // local shares (a third each), which Redis does not know of once it
    // is back: one quota more at most.
    for o in &new_over {
        assert!(*o <= limit, "overshoot {o} > {limit}");
    }

    // Weights still sync, through the new primary's pub/sub.
    gateways[2].split("api").unwrap().promote("green").unwrap();
    fleet
        .until("green promoted after the failover", |g| {
            g.split("api").unwrap().weights().get("green") == Some(100)
        })
        .await;

    // The old primary comes back (empty) and is made a replica; nothing
    // changes for the fleet.
    ha.restart_killed().await;
    shared_again(fronts, gateways, "the fleet stays on the new primary").await;
}

/// Writes through `conn`, then waits until the replica has everything
/// the primary had up to that write (`WAIT` counts a connection's own
/// writes).
async fn replicated(conn: &mut redis::aio::MultiplexedConnection) {
    let () = redis::cmd("SET")
        .arg("fleet:probe")
        .arg(1)
        .query_async(conn)
        .await
        .unwrap();
    let synced: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(synced, 1, "the replica has the primary's writes");
}

/// Waits until "spent" is refused by every replica in a pass during
/// which no check failed: Redis, not a local fallback, refused it (a
/// check may still time out now and then on a loaded machine, and fall
/// back). Panics with `what` after [`HANG_GUARD`].
async fn shared_again(fronts: &[Router], gateways: &[Gateway], what: &str) {
    let failed = || -> u64 {
        gateways
            .iter()
            .map(|g| {
                let s = g.redis_rate_limit("api").unwrap().stats();
                s.errors + s.skipped
            })
            .sum()
    };
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let before = failed();
        let mut refused = 0;
        for front in fronts {
            if ask(front, "spent").await == StatusCode::TOO_MANY_REQUESTS {
                refused += 1;
            }
        }
        if refused == fronts.len() && failed() == before {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never: {what} (refused by {refused} of {} replicas)",
            fronts.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `[redis]` names one kind of Redis, and says where each mistake is.
#[tokio::test]
async fn redis_sections_are_checked() {
    let problems = |section: &str| -> String {
        let text = format!("{section}\n\n[upstreams.app]\nurl = \"http://127.0.0.1:1\"\n");
        match GatewayConfig::from_toml(&text).map(Gateway::from_config) {
            Ok(Ok(_)) => String::new(),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        }
    };
    let both =
        problems("[redis]\nurl = \"redis://127.0.0.1/\"\ncluster = [\"redis://127.0.0.1:7000/\"]");
    assert!(both.contains("redis: give one of"), "{both}");
    let none = problems("[redis]\nprefix = \"x:\"");
    assert!(
        none.contains("give `url`, `cluster` or `sentinel`"),
        "{none}"
    );
    let bad = problems("[redis]\ncluster = [\"redis://127.0.0.1:7000/\", \"nope\"]");
    assert!(bad.contains("redis.cluster[1]"), "{bad}");
    let mixed =
        problems("[redis]\ncluster = [\"redis://127.0.0.1:7000/\", \"rediss://127.0.0.1:7001/\"]");
    assert!(mixed.contains("mixes"), "{mixed}");
    let no_master = problems("[redis]\nsentinel = { urls = [\"redis://127.0.0.1:26379/\"] }");
    assert!(no_master.contains("redis.sentinel.master"), "{no_master}");
    let no_sentinels = problems("[redis]\nsentinel = { master = \"mymaster\" }");
    assert!(
        no_sentinels.contains("redis.sentinel.urls"),
        "{no_sentinels}"
    );
    let fine = problems(
        "[redis]\nsentinel = { master = \"mymaster\", urls = [\"redis://127.0.0.1:26379/\"] }",
    );
    assert_eq!(fine, "", "nothing is connected when the gateway is built");
}
