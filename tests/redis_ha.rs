#![cfg(feature = "redis")]
//! Self-checks of the highly available Redis harness
//! (`support::redis_ha`): a three-primary Redis Cluster spreads keys over
//! its nodes and keeps a hash tag's keys on one, and a primary watched by
//! three Sentinels fails over to its replica when killed, and comes back
//! as a replica when started again.
//!
//! `.ci/run` installs `redis-server` (Debian's package) and sets
//! `SWITCHYARD_REQUIRE_REDIS=1`, so that these tests fail there when it is
//! missing; elsewhere, without `redis-server` on the `PATH`, each test
//! says so on stderr and returns.

use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

use crate::support::redis_ha::{RedisCluster, RedisSentinel, role};

async fn connect(port: u16) -> MultiplexedConnection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn cluster_spreads_keys_and_keeps_hash_tags_together() {
    let started = Instant::now();
    let Some(cluster) = RedisCluster::start().await else {
        return;
    };
    eprintln!("cluster up in {:?}", started.elapsed());
    let ports = cluster.ports();
    assert_eq!(ports.len(), 3);
    assert_eq!(
        cluster.urls(),
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}/"))
            .collect::<Vec<_>>()
    );
    let mut conns = Vec::new();
    for i in 0..ports.len() {
        conns.push(
            cluster
                .client(i)
                .get_multiplexed_async_connection()
                .await
                .unwrap(),
        );
    }
    let conn_for = |port: u16| ports.iter().position(|&p| p == port).unwrap();

    for i in 0..100 {
        let key = format!("k{i}");
        let owner = cluster.node_for_key(&key).await;
        let () = conns[conn_for(owner)].set(&key, i).await.unwrap();
    }

    // A node that does not own a key's slot redirects to the one that does.
    let owner = cluster.node_for_key("k0").await;
    let other = ports.iter().position(|&p| p != owner).unwrap();
    let err = conns[other].set::<_, _, ()>("k0", 0).await.unwrap_err();
    let moved_to = err
        .redirect_node()
        .and_then(|(addr, _slot)| addr.rsplit_once(':'))
        .and_then(|(_, port)| port.parse::<u16>().ok());
    assert_eq!(moved_to, Some(owner), "{err}");

    let each = cluster.keys_on_each().await;
    assert_eq!(each.iter().map(|(p, _)| *p).collect::<Vec<_>>(), ports);
    for (port, keys) in &each {
        assert!(!keys.is_empty(), "no key landed on node {port}: {each:?}");
    }
    assert_eq!(each.iter().map(|(_, keys)| keys.len()).sum::<usize>(), 100);

    let tagged = cluster.node_for_key("{t}:a").await;
    assert_eq!(cluster.node_for_key("{t}:b").await, tagged);
    for key in ["{t}:a", "{t}:b"] {
        let () = conns[conn_for(tagged)].set(key, 1).await.unwrap();
    }
    for (port, keys) in cluster.keys_on_each().await {
        let has = |k: &str| keys.iter().any(|key| key == k);
        assert_eq!(has("{t}:a"), port == tagged, "{{t}}:a on {port}");
        assert_eq!(has("{t}:b"), port == tagged, "{{t}}:b on {port}");
    }
    eprintln!("cluster test done in {:?}", started.elapsed());
}

#[tokio::test]
async fn sentinel_fails_over_and_the_old_primary_comes_back_as_replica() {
    let started = Instant::now();
    let Some(mut ha) = RedisSentinel::start().await else {
        return;
    };
    eprintln!("sentinels up in {:?}", started.elapsed());
    assert_eq!(ha.master_name(), "mymaster");
    assert_eq!(ha.sentinel_urls().len(), 3);

    let old = ha.primary_port();
    assert_eq!(role(old).await.as_deref(), Some("master"));
    let mut primary = connect(old).await;
    let () = primary.set("survives", "failover").await.unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(1000)
        .query_async(&mut primary)
        .await
        .unwrap();
    assert_eq!(acked, 1, "the replica did not acknowledge the write");

    assert_eq!(ha.kill_primary(), old);
    let killed = Instant::now();
    let new = ha.wait_failover(old).await;
    eprintln!(
        "failover from {old} to {new} in {:?} (from the kill until every Sentinel \
         names it and it says master)",
        killed.elapsed()
    );
    assert_ne!(new, old);
    assert_eq!(ha.primary_port(), new);
    assert_eq!(role(new).await.as_deref(), Some("master"));
    let value: Option<String> = connect(new).await.get("survives").await.unwrap();
    assert_eq!(value.as_deref(), Some("failover"));

    ha.restart_killed().await;
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(10);
    loop {
        let seen = role(old).await;
        if seen.as_deref() == Some("slave") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted server on {old} was not made a replica within 10 s (role {seen:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "the old primary {old} a replica {:?} after its restart",
        restarted.elapsed()
    );
    assert_eq!(ha.primary_port(), new);
    // Of the new primary: it syncs the key from there.
    let mut replica = connect(old).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value: Option<String> = replica.get("survives").await.unwrap();
        if value.as_deref() == Some("failover") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted server on {old} did not sync from {new} within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("sentinel test done in {:?}", started.elapsed());
}
