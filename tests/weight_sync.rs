#![cfg(feature = "redis")]
//! `switchyard::sync::WeightSync` against a real `redis-server` on
//! loopback (each test starts its own): replicas converging on the last
//! change and then making the same sticky picks, a joining replica taking
//! the fleet's weights, a set that does not fit refused, model aliases,
//! Redis going away and coming back empty, spawned rounds, and two gateway
//! replicas. Rounds are driven one at a time with `sync_once`, except in
//! the tests of spawned rounds.
//!
//! Like `ratelimit_redis`, these tests skip (with a note) when
//! `redis-server` is missing, unless `SWITCHYARD_REQUIRE_REDIS` is set.

use std::convert::Infallible;
use std::time::Duration;

use http::{HeaderName, Request, Response};
use http_body_util::BodyExt;
use switchyard::gateway::GatewayConfig;
use switchyard::key::KeyBy;
use switchyard::split::{Split, SplitHandle};
use switchyard::sync::{SyncError, SyncTask, WeightSync, WeightSyncBuilder, WeightSyncStats};
use tower::{ServiceExt, service_fn, util::BoxCloneService};

use crate::support::redis as redis_support;
use redis_support::RedisServer;

const HANG_GUARD: Duration = Duration::from_secs(10);

type Svc = BoxCloneService<Request<()>, Response<String>, Infallible>;

/// A service answering with its own name.
fn named(name: &'static str) -> Svc {
    BoxCloneService::new(service_fn(move |_: Request<()>| async move {
        Ok::<_, Infallible>(Response::new(name.to_owned()))
    }))
}

/// One replica's split: `blue` and `green` (and `canary` when asked),
/// sticky by `x-user`.
fn replica(weights: &[u32]) -> Split<Svc> {
    let names = ["blue", "green", "canary"];
    let mut b = Split::builder().sticky(KeyBy::header(HeaderName::from_static("x-user")));
    for (name, &w) in names.iter().zip(weights) {
        b = b.target(*name, named(name), w);
    }
    b.build().unwrap()
}

async fn sync_for(redis: &RedisServer, handle: &SplitHandle) -> WeightSync {
    WeightSync::builder(redis.manager().await)
        .split("checkout", handle.clone())
        .prefix("test:")
        .build()
        .unwrap()
}

fn weights(h: &SplitHandle) -> Vec<(String, u32)> {
    h.weights().iter().map(|(n, w)| (n.to_owned(), w)).collect()
}

fn pairs(list: &[(&str, u32)]) -> Vec<(String, u32)> {
    list.iter().map(|&(n, w)| (n.to_owned(), w)).collect()
}

/// Where each of `users` lands on `split`.
async fn picks(split: &Split<Svc>, users: std::ops::Range<u32>) -> Vec<String> {
    let mut out = Vec::new();
    for user in users {
        let req = Request::builder()
            .header("x-user", user.to_string())
            .body(())
            .unwrap();
        let body = split.clone().oneshot(req).await.unwrap().into_body();
        let bytes = body.collect().await.unwrap().to_bytes();
        out.push(String::from_utf8(bytes.to_vec()).unwrap());
    }
    out
}

fn counts(s: &WeightSync) -> (u64, u64, u64, u64) {
    let WeightSyncStats {
        published,
        applied,
        refused,
        errors,
        ..
    } = s.stats();
    (published, applied, refused, errors)
}

#[tokio::test]
async fn replicas_converge_on_the_last_change_and_pick_alike() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (replica(&[100, 0]), replica(&[100, 0]));
    let (ha, hb) = (a.handle(), b.handle());
    let (sa, sb) = (sync_for(&redis, &ha).await, sync_for(&redis, &hb).await);

    // The first replica publishes; the second finds the same weights.
    sa.sync_once().await;
    sb.sync_once().await;
    assert_eq!(counts(&sa), (1, 0, 0, 0));
    assert_eq!(counts(&sb), (0, 0, 0, 0));

    // A change on A reaches B in B's next round.
    ha.set_weights([("blue", 70), ("green", 30)]).unwrap();
    sb.sync_once().await;
    assert_eq!(weights(&hb), pairs(&[("blue", 100), ("green", 0)]));
    sa.sync_once().await;
    sb.sync_once().await;
    assert_eq!(weights(&hb), pairs(&[("blue", 70), ("green", 30)]));
    assert_eq!(counts(&sb), (0, 1, 0, 0));
    // Same weights, same sticky picks, whichever replica answers.
    let (on_a, on_b) = (picks(&a, 0..400).await, picks(&b, 0..400).await);
    assert_eq!(on_a, on_b);
    let green = on_a.iter().filter(|t| *t == "green").count();
    assert!((80..=160).contains(&green), "{green} of 400 on green");

    // Both change within one round: the later publication wins everywhere.
    ha.set_weights([("blue", 60), ("green", 40)]).unwrap();
    hb.set_weights([("blue", 20), ("green", 80)]).unwrap();
    sa.sync_once().await;
    sb.sync_once().await;
    sa.sync_once().await;
    sb.sync_once().await;
    assert_eq!(weights(&ha), pairs(&[("blue", 20), ("green", 80)]));
    assert_eq!(weights(&hb), pairs(&[("blue", 20), ("green", 80)]));

    // Promote and rollback travel as the weights they set.
    hb.promote("green").unwrap();
    sb.sync_once().await;
    sa.sync_once().await;
    assert_eq!(weights(&ha), pairs(&[("blue", 0), ("green", 100)]));
    hb.rollback().unwrap();
    sb.sync_once().await;
    sa.sync_once().await;
    assert_eq!(weights(&ha), pairs(&[("blue", 20), ("green", 80)]));

    // A replica that joins (or restarts) takes the fleet's weights.
    let c = replica(&[100, 0]);
    let sc = sync_for(&redis, &c.handle()).await;
    sc.sync_once().await;
    assert_eq!(weights(&c.handle()), pairs(&[("blue", 20), ("green", 80)]));
    assert_eq!(counts(&sc), (0, 1, 0, 0));
    assert_eq!(picks(&c, 0..200).await, picks(&a, 0..200).await);
    assert_eq!(sa.stats().errors + sb.stats().errors, 0);
}

#[tokio::test]
async fn a_set_that_does_not_fit_is_refused() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let a = replica(&[90, 10]);
    // A replica already on the next configuration, with a third target.
    let c = replica(&[80, 10, 10]);
    let sa = sync_for(&redis, &a.handle()).await;
    let sc = sync_for(&redis, &c.handle()).await;
    sa.sync_once().await;
    sc.sync_once().await;
    assert_eq!(counts(&sc), (0, 0, 1, 0));
    assert_eq!(
        weights(&c.handle()),
        pairs(&[("blue", 80), ("green", 10), ("canary", 10)])
    );
    // Its own change is published, and refused by the older replica.
    c.handle()
        .set_weights([("blue", 0), ("green", 0), ("canary", 1)])
        .unwrap();
    sc.sync_once().await;
    sa.sync_once().await;
    assert_eq!(counts(&sa), (1, 0, 1, 0));
    assert_eq!(weights(&a.handle()), pairs(&[("blue", 90), ("green", 10)]));
    // Refused once, not at every round.
    sa.sync_once().await;
    assert_eq!(counts(&sa), (1, 0, 1, 0));

    // Names must be unique and not empty.
    let m = redis.manager().await;
    let err = WeightSync::builder(m.clone())
        .split("x", a.handle())
        .split("x", c.handle())
        .build()
        .unwrap_err();
    assert!(
        matches!(err, SyncError::DuplicateName(ref n) if n == "x"),
        "{err}"
    );
    let err = WeightSync::builder(m.clone())
        .split("", a.handle())
        .build()
        .unwrap_err();
    assert!(matches!(err, SyncError::EmptyName), "{err}");
    let err = WeightSync::builder(m)
        .split("x", a.handle())
        .interval(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.to_string(), "the interval must be above zero");
}

/// A model router over `blue` and `green`: versions `v1` (on blue) and
/// `v2` (on green), alias `chat` over them with `weights`.
#[cfg(feature = "json")]
fn chat_router(weights: [u32; 2]) -> switchyard::model::ModelRouter<Svc> {
    use switchyard::model::{Alias, Catalog, Model, ModelRouter};
    ModelRouter::builder()
        .upstream("blue", named("blue"))
        .upstream("green", named("green"))
        .catalog(
            Catalog::new()
                .model(Model::new("v1", "blue"))
                .model(Model::new("v2", "green"))
                .alias(Alias::new("chat", [("v1", weights[0]), ("v2", weights[1])])),
        )
        .build()
        .unwrap()
}

#[cfg(feature = "json")]
#[tokio::test]
async fn model_alias_weights_follow() {
    use switchyard::model::{Alias, Catalog, Model, ModelHandle, ModelRouter};

    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let catalog = |w: [u32; 2]| {
        Catalog::new()
            .model(Model::new("v1", "blue"))
            .model(Model::new("v2", "green"))
            .alias(Alias::new("chat", [("v1", w[0]), ("v2", w[1])]))
            .alias(Alias::new("embed", [("v1", 1)]))
    };
    let router = |w| {
        ModelRouter::builder()
            .upstream("blue", named("blue"))
            .upstream("green", named("green"))
            .catalog(catalog(w))
            .build()
            .unwrap()
    };
    let (a, b) = (router([100, 0]), router([100, 0]));
    let (ha, hb): (ModelHandle, ModelHandle) = (a.handle(), b.handle());
    let sync = |h: ModelHandle, conn| {
        WeightSync::builder(conn)
            .model("ai", h)
            .prefix("test:")
            .build()
            .unwrap()
    };
    let sa = sync(ha.clone(), redis.manager().await);
    let sb = sync(hb.clone(), redis.manager().await);
    sa.sync_once().await;
    sb.sync_once().await;
    // The catalog's versions and pins, and one set per alias.
    assert_eq!(counts(&sa), (3, 0, 0, 0));

    ha.promote("chat", "v2").unwrap();
    sa.sync_once().await;
    sb.sync_once().await;
    assert_eq!(hb.weights("chat"), ha.weights("chat"));
    assert_eq!(hb.weights("chat").unwrap().get("v2"), Some(100));
    assert_eq!(hb.weights("embed").unwrap().get("v1"), Some(1));
    assert_eq!(counts(&sb), (0, 1, 0, 0));
}

/// A model router's catalog travels too: a version added and given
/// weight, a tenant pinned, a version retired after its weight moved, each
/// made on one replica, reach the other in one round (announced, with the
/// rounds an hour apart), whichever order the sets arrive in.
#[cfg(feature = "json")]
#[tokio::test]
async fn model_versions_and_pins_follow() {
    use switchyard::model::{Model, Pin, PinKey};

    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (chat_router([90, 10]), chat_router([90, 10]));
    let (ha, hb) = (a.handle(), b.handle());
    let (syncs, _tasks) = made_only(&redis, 2, |i, builder| {
        builder.model("ai", if i == 0 { ha.clone() } else { hb.clone() })
    })
    .await;

    // A version added, then given weight: two changes, one after the other.
    ha.add_model(Model::new("v3", "green")).unwrap();
    ha.set_weights("chat", [("v1", 80), ("v2", 10), ("v3", 10)])
        .unwrap();
    eventually("b has v3 with weight", || {
        hb.weights("chat").and_then(|w| w.get("v3")) == Some(10)
    })
    .await;
    assert!(hb.catalog().models.iter().any(|m| m.name == "v3"));

    // A tenant pinned to v3.
    ha.pin(Pin::tenant("acme", "chat", "v3")).unwrap();
    eventually("b pins acme", || hb.catalog().pins == ha.catalog().pins).await;
    assert_eq!(hb.catalog().pins.len(), 1);
    assert_eq!(hb.catalog().pins[0].who, PinKey::Tenant("acme".into()));

    // Unpinned, its weight moved away, then retired: b retires it too.
    // Depending on when b's round reads them, the catalog's set (no v3)
    // does not fit b's alias (still naming v3), nor the alias's set (no
    // v3) b's pin on v3: the round applies such sets together.
    assert!(ha.unpin(&PinKey::Tenant("acme".into()), "chat").unwrap());
    ha.set_weights("chat", [("v1", 90), ("v2", 10), ("v3", 0)])
        .unwrap();
    ha.retire_model("v3").unwrap();
    eventually("b retired v3", || {
        !hb.catalog().models.iter().any(|m| m.name == "v3")
    })
    .await;
    assert_eq!(hb.catalog(), ha.catalog());
    assert_eq!(syncs[1].stats().errors, 0);
}

/// Two sets that fit only together: a's alias drops v3 and a's catalog
/// drops the pin on v3 (and v3 itself). Read in one round by b, neither
/// fits alone (b's pin holds v3; b's alias names it): they are applied
/// together, and counted as applied, not refused.
#[cfg(feature = "json")]
#[tokio::test]
async fn sets_that_fit_only_together_are_applied_together() {
    use switchyard::model::{Alias, Catalog, Model, ModelRouter, Pin, PinKey};

    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let router = || {
        ModelRouter::builder()
            .upstream("blue", named("blue"))
            .catalog(
                Catalog::new()
                    .model(Model::new("v1", "blue"))
                    .model(Model::new("v3", "blue"))
                    .alias(Alias::new("chat", [("v1", 90), ("v3", 10)]))
                    .pin(Pin::tenant("acme", "chat", "v3")),
            )
            .build()
            .unwrap()
    };
    let (a, b) = (router(), router());
    let (ha, hb) = (a.handle(), b.handle());
    let sync = |h, conn| {
        WeightSync::builder(conn)
            .model("ai", h)
            .prefix("test:")
            .build()
            .unwrap()
    };
    let sa = sync(ha.clone(), redis.manager().await);
    let sb = sync(hb.clone(), redis.manager().await);
    sa.sync_once().await;
    sb.sync_once().await;

    assert!(ha.unpin(&PinKey::Tenant("acme".into()), "chat").unwrap());
    ha.set_weights("chat", [("v1", 100), ("v3", 0)]).unwrap();
    ha.retire_model("v3").unwrap();
    sa.sync_once().await;
    let before = sb.stats();
    sb.sync_once().await;
    assert_eq!(hb.catalog(), ha.catalog());
    let after = sb.stats();
    assert_eq!(after.applied - before.applied, 2);
    assert_eq!(after.refused, before.refused);
}

#[tokio::test]
async fn redis_going_away_keeps_local_weights_and_catches_up() {
    let Some(mut redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (replica(&[100, 0]), replica(&[100, 0]));
    let (ha, hb) = (a.handle(), b.handle());
    let (sa, sb) = (sync_for(&redis, &ha).await, sync_for(&redis, &hb).await);
    ha.set_weights([("blue", 90), ("green", 10)]).unwrap();
    sa.sync_once().await;
    sb.sync_once().await;
    assert_eq!(weights(&hb), pairs(&[("blue", 90), ("green", 10)]));

    // Redis stops: rounds fail and count it; both replicas keep serving
    // with what they have, including a change made meanwhile.
    redis.stop();
    ha.set_weights([("blue", 50), ("green", 50)]).unwrap();
    tokio::time::timeout(HANG_GUARD, sa.sync_once())
        .await
        .unwrap();
    tokio::time::timeout(HANG_GUARD, sb.sync_once())
        .await
        .unwrap();
    assert_eq!(sa.stats().errors, 1);
    assert_eq!(sb.stats().errors, 1);
    assert_eq!(weights(&ha), pairs(&[("blue", 50), ("green", 50)]));
    assert_eq!(weights(&hb), pairs(&[("blue", 90), ("green", 10)]));
    assert_eq!(picks(&b, 0..20).await.len(), 20);

    // It comes back empty (no persistence): the change made meanwhile is
    // published, and followed even though versions started over.
    redis.restart().await;
    let mut published = false;
    for _ in 0..100 {
        sa.sync_once().await;
        if sa.stats().published == 2 {
            published = true;
            break;
        }
        // The connection manager reconnects in the background.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(published, "{:?}", sa.stats());
    sb.sync_once().await;
    assert_eq!(weights(&hb), pairs(&[("blue", 50), ("green", 50)]));
}

#[tokio::test]
async fn spawned_rounds_carry_a_promotion_to_every_replica() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let replicas: Vec<Split<Svc>> = (0..3).map(|_| replica(&[100, 0])).collect();
    let mut tasks = Vec::new();
    let mut syncs = Vec::new();
    for r in &replicas {
        let s = WeightSync::builder(redis.manager().await)
            .split("checkout", r.handle())
            .prefix("test:")
            .interval(Duration::from_millis(20))
            .build()
            .unwrap();
        tasks.push(s.spawn());
        syncs.push(s);
    }
    // Let every replica find (or publish) the starting weights first.
    tokio::time::timeout(HANG_GUARD, async {
        while syncs.iter().any(|s| s.stats().rounds < 2) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    replicas[1].handle().promote("green").unwrap();
    tokio::time::timeout(HANG_GUARD, async {
        while replicas
            .iter()
            .any(|r| r.handle().weights().get("green") != Some(100))
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("every replica promoted green");

    // Dropping the task stops the rounds.
    drop(tasks);
    let rounds = syncs[0].stats().rounds;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(syncs[0].stats().rounds <= rounds + 1);
}

/// A sync of `split` that listens for announcements, with rounds an hour
/// apart (so that only announcements carry changes) and local changes
/// looked for every 10 ms.
async fn listening(redis: &RedisServer, split: &Split<Svc>) -> WeightSync {
    WeightSync::builder(redis.manager().await)
        .split("checkout", split.handle())
        .prefix("test:")
        .interval(Duration::from_secs(3600))
        .check_interval(Duration::from_millis(10))
        .notify(redis.client())
        .build()
        .unwrap()
}

/// A change made on a replica once its sync is spawned, but before its
/// first round, is a change to publish: it is not given up for the fleet's
/// weights (a rollout that sets its weight as its gateway starts, say).
#[tokio::test]
async fn a_change_before_the_first_round_is_published() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (replica(&[100, 0]), replica(&[100, 0]));
    let sb = listening(&redis, &b).await;
    let _tb = sb.spawn();
    eventually("b ran its first round", || sb.stats().rounds >= 1).await;
    // The fleet is at 100/0 in Redis. A joins, and changes at once: on
    // this (current-thread) runtime its task has not run yet.
    let sa = listening(&redis, &a).await;
    let _ta = sa.spawn();
    a.handle()
        .set_weights([("blue", 50), ("green", 50)])
        .unwrap();
    eventually("b took a's change", || {
        weights(&b.handle()) == pairs(&[("blue", 50), ("green", 50)])
    })
    .await;
    assert_eq!(weights(&a.handle()), pairs(&[("blue", 50), ("green", 50)]));
}

/// A listening sync of each replica, spawned, once each ran its first
/// round (each task subscribes before it).
async fn both_listening(
    redis: &RedisServer,
    replicas: [&Split<Svc>; 2],
) -> (Vec<WeightSync>, Vec<SyncTask>) {
    let mut tasks = Vec::new();
    let mut syncs = Vec::new();
    for r in replicas {
        let s = listening(redis, r).await;
        tasks.push(s.spawn());
        syncs.push(s);
    }
    eventually("both replicas ran their first round", || {
        syncs.iter().all(|s| s.stats().rounds >= 1)
    })
    .await;
    (syncs, tasks)
}

/// With `notify`, a change reaches the other replica at once: the rounds
/// every interval (an hour here) cannot be what carries it.
#[tokio::test]
async fn announced_changes_are_applied_at_once() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (replica(&[100, 0]), replica(&[100, 0]));
    let (syncs, tasks) = both_listening(&redis, [&a, &b]).await;
    a.handle().promote("green").unwrap();
    eventually("b promoted green", || {
        b.handle().weights().get("green") == Some(100)
    })
    .await;
    // Every round after the first ran on an announcement (one may still
    // be running: rounds are counted when they end).
    let (sa, sb) = (syncs[0].stats(), syncs[1].stats());
    assert_eq!(sb.applied, 1, "{sb:?}");
    assert!(sb.notified >= 1, "{sb:?}");
    assert!(sa.rounds <= 1 + sa.notified, "{sa:?}");
    assert!(sb.rounds <= 1 + sb.notified, "{sb:?}");

    // And back, the other way.
    b.handle().rollback().unwrap();
    eventually("a rolled back", || {
        a.handle().weights().get("green") == Some(0)
    })
    .await;
    assert_eq!(syncs[0].stats().applied, 1);
    drop(tasks);
}

/// A subscription Redis drops is taken again within about a timeout (1 s
/// by default), and the round after it makes up for what was announced
/// meanwhile: not at the next round, an hour away here.
#[tokio::test]
async fn a_lost_subscription_is_taken_again_soon() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (replica(&[100, 0]), replica(&[100, 0]));
    let (syncs, tasks) = both_listening(&redis, [&a, &b]).await;
    // Redis drops every subscriber; a's change is announced to no one.
    let mut conn = redis.manager().await;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(killed, 2);
    a.handle().promote("green").unwrap();
    eventually("b promoted green", || {
        b.handle().weights().get("green") == Some(100)
    })
    .await;
    // And b listens again: the way back arrives as an announcement.
    let heard = syncs[0].stats().notified;
    b.handle().rollback().unwrap();
    eventually("a rolled back", || {
        a.handle().weights().get("green") == Some(0)
    })
    .await;
    assert!(syncs[0].stats().notified > heard, "{:?}", syncs[0].stats());
    drop(tasks);
}

/// A replica's own announcements are no news to it: after its two
/// publications, only a third party's announcement (read after them, in
/// order) runs a round.
#[tokio::test]
async fn own_announcements_are_ignored() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let a = replica(&[100, 0]);
    let sync = listening(&redis, &a).await;
    let _task = sync.spawn();
    eventually("the first round published", || sync.stats().published == 1).await;
    a.handle().promote("green").unwrap();
    eventually("the promotion published", || sync.stats().published == 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut conn = redis.manager().await;
    redis::cmd("PUBLISH")
        .arg("test:changes")
        .arg("another-replica")
        .exec_async(&mut conn)
        .await
        .unwrap();
    eventually("the third party heard", || sync.stats().notified >= 1).await;
    // Rounds are counted when they end.
    eventually("its round ran", || sync.stats().rounds >= 2).await;
    let stats = sync.stats();
    assert_eq!((stats.notified, stats.rounds), (1, 2), "{stats:?}");
}

/// Waits (up to the hang guard) until `f` holds.
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    tokio::time::timeout(HANG_GUARD, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never: {what}"));
}

#[tokio::test]
async fn gateway_replicas_keep_their_weights_together() {
    use switchyard::gateway::{Gateway, GatewayConfig};

    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let config = |weights: [u32; 2], sync: &str| {
        GatewayConfig::from_toml(&format!(
            r#"
[redis]
url = "redis://127.0.0.1:{}/"

{sync}

[upstreams.blue]
url = "http://127.0.0.1:1"
[upstreams.green]
url = "http://127.0.0.1:2"

[[routes]]
name = "web"
split.targets = [
    {{ name = "blue", upstream = "blue", weight = {} }},
    {{ name = "green", upstream = "green", weight = {} }},
]
"#,
            redis.port, weights[0], weights[1]
        ))
        .unwrap()
    };
    // Rounds an hour apart: what carries the changes below is the
    // announcements (on by default), heard by every replica at once.
    let on = "[weight_sync]\ninterval_ms = 3600000\ncheck_interval_ms = 10\nprefix = \"test:\"";
    let a = Gateway::from_config(config([90, 10], on)).unwrap();
    let b = Gateway::from_config(config([90, 10], on)).unwrap();
    let green = |g: &Gateway| g.split("web").unwrap().weights().get("green");

    // A promotion on one replica (as the admin API makes it) reaches the
    // other, and shows in both replicas' metrics.
    eventually("both replicas ran a round", || {
        [&a, &b]
            .iter()
            .all(|g| g.weight_sync().unwrap().stats().rounds >= 1)
    })
    .await;
    a.split("web").unwrap().promote("green").unwrap();
    eventually("b promoted green", || green(&b) == Some(100)).await;
    let metric = |g: &Gateway, name: &str| -> u64 {
        let line = format!("switchyard_weight_sync_{name}_total ");
        g.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(&line).map(|v| v.parse().unwrap()))
            .unwrap_or_else(|| panic!("no {line}"))
    };
    assert!(metric(&a, "published") >= 1);
    assert_eq!(metric(&b, "applied"), 1);
    assert!(metric(&b, "notified") >= 1);
    assert_eq!(metric(&b, "errors"), 0);

    // A reload with other weights is a change like any other.
    b.reload(config([50, 50], on)).unwrap();
    eventually("a at 50/50", || green(&a) == Some(50)).await;

    // A replica that starts from the file's 90/10 takes the fleet's 50/50.
    let c = Gateway::from_config(config([90, 10], on)).unwrap();
    eventually("c at 50/50", || green(&c) == Some(50)).await;

    // Turned off by a reload: the rounds stop.
    c.reload(config([90, 10], "")).unwrap();
    assert!(c.weight_sync().is_none());
    assert!(!c.metrics().contains("switchyard_weight_sync"));
    assert_eq!(green(&c), Some(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(green(&c), Some(10));
    assert_eq!(green(&a), Some(50), "c's reload was not published");

    // Mistakes are located.
    let mut no_redis = config([90, 10], on);
    no_redis.redis = None;
    let err = Gateway::from_config(no_redis).unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.at == "weight_sync" && p.message.contains("[redis]")),
        "{err}"
    );
    for (section, at) in [
        ("[weight_sync]\ninterval_ms = 0", "weight_sync.interval_ms"),
        (
            "[weight_sync]\ncheck_interval_ms = 0",
            "weight_sync.check_interval_ms",
        ),
    ] {
        let err = Gateway::from_config(config([90, 10], section)).unwrap_err();
        assert!(err.problems.iter().any(|p| p.at == at), "{err}");
    }
}

/// A Redis rate limiter's quotas and dry-run travel like weights; a
/// published set the limiter refuses is counted and changes nothing.
#[tokio::test]
async fn rate_limit_quotas_and_dry_run_follow() {
    use switchyard::ratelimit::Quota;
    use switchyard::ratelimit::redis::RedisRateLimitLayer;

    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let mut layers = Vec::new();
    let mut syncs = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let layer = RedisRateLimitLayer::builder(redis.manager().await)
            .quota(Quota::per_minute(100).named("api"))
            .build()
            .unwrap();
        let sync = WeightSync::builder(redis.manager().await)
            .rate_limit("api", layer.handle())
            .prefix("test:")
            .interval(Duration::from_secs(3600))
            .check_interval(Duration::from_millis(10))
            .notify(redis.client())
            .build()
            .unwrap();
        tasks.push(sync.spawn());
        syncs.push(sync);
        layers.push(layer);
    }
    eventually("both replicas ran a round", || {
        syncs.iter().all(|s| s.stats().rounds >= 1)
    })
    .await;
    let (a, b) = (layers[0].handle(), layers[1].handle());
    a.set_quotas([
        Quota::per_minute(5).burst(2).named("api"),
        Quota::per_hour(50).named("hourly"),
    ])
    .unwrap();
    a.set_dry_run(true);
    eventually("b has a's quotas and dry-run", || {
        b.quotas().len() == 2 && b.dry_run()
    })
    .await;
    let q = b.quotas();
    assert_eq!(
        (q[0].name(), q[0].count(), q[0].burst_size()),
        ("api".into(), 5, 2)
    );
    assert_eq!(q[0].period(), Duration::from_secs(60));
    assert_eq!((q[1].name(), q[1].count()), ("hourly".into(), 50));

    // Something b cannot take (no quota at all): refused, b unchanged.
    drop(tasks);
    let mut conn = redis.manager().await;
    redis::cmd("HSET")
        .arg("test:limit:api")
        .arg("weights")
        .arg(r#"{"quotas":[],"dry_run":false}"#)
        .exec_async(&mut conn)
        .await
        .unwrap();
    redis::cmd("HINCRBY")
        .arg("test:limit:api")
        .arg("version")
        .arg(1)
        .exec_async(&mut conn)
        .await
        .unwrap();
    let refused = syncs[1].stats().refused;
    tokio::time::timeout(HANG_GUARD, syncs[1].sync_once())
        .await
        .unwrap();
    assert_eq!(syncs[1].stats().refused, refused + 1);
    assert_eq!(b.quotas().len(), 2);
    assert!(b.dry_run());
}

/// The servers of each upstream travel too: one added on a replica (as
/// the admin API adds it) is on the others, one removed there drains
/// everywhere, a replica that starts takes the fleet's set, and an
/// upstream that follows a discovery source, or a fleet with
/// `endpoints = false`, keeps its own.
#[tokio::test]
async fn gateway_replicas_share_their_upstreams_servers() {
    use switchyard::gateway::{Gateway, GatewayConfig};
    use switchyard::proxy::EndpointSpec;

    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let dir = crate::support::temp::TempDir::new("ws-endpoints");
    let file = dir.join("servers.json");
    std::fs::write(&file, r#"{"endpoints": ["127.0.0.1:7"]}"#).unwrap();
    let config = |extra: &str| {
        GatewayConfig::from_toml(&format!(
            r#"
[redis]
url = "redis://127.0.0.1:{}/"

[weight_sync]
interval_ms = 3600000
check_interval_ms = 10
prefix = "test:"
{extra}

[upstreams.green]
url = "http://127.0.0.1:1"
[upstreams.found]
url = "http://127.0.0.1:2"
discovery = {{ file = "{}", refresh_min_ms = 20, refresh_max_ms = 50 }}

[[routes]]
name = "web"
split.targets = [{{ name = "green", upstream = "green", weight = 1 }}]
"#,
            redis.port,
            file.display()
        ))
        .unwrap()
    };
    let keys = |g: &Gateway, name: &str| -> Vec<String> {
        let mut keys: Vec<String> = g
            .upstream(name)
            .unwrap()
            .endpoints()
            .into_iter()
            .filter(|e| !e.draining)
            .map(|e| e.key)
            .collect();
        keys.sort();
        keys
    };
    let a = Gateway::from_config(config("")).unwrap();
    let b = Gateway::from_config(config("")).unwrap();
    eventually("both replicas ran a round", || {
        [&a, &b]
            .iter()
            .all(|g| g.weight_sync().unwrap().stats().rounds >= 1)
    })
    .await;

    a.upstream("green")
        .unwrap()
        .insert_endpoint("extra", EndpointSpec::new("127.0.0.1:3").weight(5))
        .unwrap();
    eventually("b has a's server", || {
        keys(&b, "green").contains(&"extra".to_owned())
    })
    .await;
    let extra = b
        .upstream("green")
        .unwrap()
        .endpoints()
        .into_iter()
        .find(|e| e.key == "extra")
        .unwrap();
    assert_eq!(
        (extra.url.as_str(), extra.weight),
        ("http://127.0.0.1:3", 5)
    );

    assert!(
        b.upstream("green")
            .unwrap()
            .remove_endpoint("http://127.0.0.1:1")
            .is_some()
    );
    eventually("a lost the server b removed", || {
        keys(&a, "green") == ["extra"]
    })
    .await;

    // A replica that starts takes the fleet's set, not its file's.
    let c = Gateway::from_config(config("")).unwrap();
    eventually("c has the fleet's set", || keys(&c, "green") == ["extra"]).await;
    // The discovered upstream is each replica's own.
    eventually("a follows its file", || {
        keys(&a, "found") == ["127.0.0.1:7"]
    })
    .await;
    assert!(!redis_key_exists(&redis, "test:upstream:found").await);
    assert!(redis_key_exists(&redis, "test:upstream:green").await);

    // Off: a replica keeps its own servers.
    let d = Gateway::from_config(config("endpoints = false")).unwrap();
    eventually("d ran a round", || {
        d.weight_sync().unwrap().stats().rounds >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(keys(&d, "green"), ["http://127.0.0.1:1"]);
}

/// A mirror's share travels too: changed on one replica (as the admin
/// API's `/mirrors/{route}/percent` changes it), it is changed on the
/// others.
#[tokio::test]
async fn gateway_replicas_share_their_mirrors_share() {
    use crate::support::fleet::Fleet;
    use switchyard::gateway::Gateway;

    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let text = synced_config(
        &redis,
        r#"
[upstreams.blue]
url = "http://127.0.0.1:1"
[upstreams.green]
url = "http://127.0.0.1:2"

[[routes]]
name = "web"
split.targets = [{ name = "blue", upstream = "blue", weight = 1 }]
mirror = { upstream = "green", percent = 10.0 }
"#,
    );
    let fleet = Fleet::start(2, || GatewayConfig::from_toml(&text).unwrap());
    fleet.synced().await;
    let (a, b) = (&fleet.gateways[0], &fleet.gateways[1]);
    let mirror = |g: &Gateway| g.mirror("web").unwrap();
    assert_eq!(mirror(a).set_percent(35.5), 35.5);
    eventually("b mirrors 35.5 %", || mirror(b).percent() == 35.5).await;
    mirror(b).set_percent(0.0);
    eventually("a mirrors nothing", || mirror(a).percent() == 0.0).await;
}

/// A gateway configuration over `redis` with weight sync on (rounds an
/// hour apart, checks every 10 ms, announcements on), then `rest`.
fn synced_config(redis: &RedisServer, rest: &str) -> String {
    format!(
        r#"
[redis]
url = "redis://127.0.0.1:{}/"

[weight_sync]
interval_ms = 3600000
check_interval_ms = 10
prefix = "test:"
{rest}"#,
        redis.port
    )
}

async fn redis_key_exists(redis: &RedisServer, key: &str) -> bool {
    let mut conn = redis.manager().await;
    redis::cmd("EXISTS")
        .arg(key)
        .query_async::<bool>(&mut conn)
        .await
        .unwrap()
}

/// The gateway syncs its routes' Redis rate limits too.
#[tokio::test]
async fn gateway_replicas_keep_their_redis_limits_together() {
    use crate::support::fleet::Fleet;
    use switchyard::ratelimit::Quota;

    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let text = synced_config(
        &redis,
        r#"
[upstreams.app]
url = "http://127.0.0.1:1"

[[routes]]
name = "api"
rate_limit = { key = { header = "x-user" }, quotas = [{ name = "shared", limit = 100, period = "1m" }], redis = true }
split.targets = [{ name = "app", upstream = "app", weight = 1 }]
"#,
    );
    let fleet = Fleet::start(2, || GatewayConfig::from_toml(&text).unwrap());
    fleet.synced().await;
    let (a, b) = (&fleet.gateways[0], &fleet.gateways[1]);
    a.redis_rate_limit("api")
        .unwrap()
        .set_quotas([Quota::per_minute(10).named("shared")])
        .unwrap();
    let b_limit = b.redis_rate_limit("api").unwrap();
    eventually("b limits at 10 a minute", || {
        b_limit.quotas()[0].count() == 10
    })
    .await;
}

/// A sync per replica, each made by `add` on a connection of its own,
/// with checks and rounds an hour apart (so that only a change's own
/// publication, when it is made, can carry it) and announcements heard;
/// spawned, once each ran its first round.
async fn made_only(
    redis: &RedisServer,
    replicas: usize,
    add: impl Fn(usize, WeightSyncBuilder) -> WeightSyncBuilder,
) -> (Vec<WeightSync>, Vec<SyncTask>) {
    let mut tasks = Vec::new();
    let mut syncs = Vec::new();
    for i in 0..replicas {
        let builder = WeightSync::builder(redis.manager().await)
            .interval(Duration::from_secs(3600))
            .check_interval(Duration::from_secs(3600))
            .notify(redis.client());
        let s = add(i, builder).build().unwrap();
        tasks.push(s.spawn());
        syncs.push(s);
    }
    eventually("every replica ran its first round", || {
        syncs.iter().all(|s| s.stats().rounds >= 1)
    })
    .await;
    (syncs, tasks)
}

/// A change is published when it is made, not found by the check: with
/// the checks and the rounds an hour apart, a promotion on one replica
/// still reaches the other (through the announcement), for a split and
/// for a model alias.
#[tokio::test]
async fn changes_are_published_when_made() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (replica(&[100, 0]), replica(&[100, 0]));
    let handles = [a.handle(), b.handle()];
    let (syncs, tasks) = made_only(&redis, 2, |i, s| {
        s.split("checkout", handles[i].clone()).prefix("made:")
    })
    .await;
    // The first to sync published its weights: count from here.
    let published = |i: usize| syncs[i].stats().published;
    let before = (published(0), published(1));
    a.handle().promote("green").unwrap();
    eventually("b promoted green", || {
        b.handle().weights().get("green") == Some(100)
    })
    .await;
    assert_eq!(published(0), before.0 + 1, "{:?}", syncs[0].stats());
    b.handle()
        .set_weights([("blue", 30), ("green", 70)])
        .unwrap();
    eventually("a at 30/70", || {
        a.handle().weights().get("green") == Some(70)
    })
    .await;
    // Applying the other's change published nothing back.
    assert_eq!(published(0), before.0 + 1, "{:?}", syncs[0].stats());
    assert_eq!(published(1), before.1 + 1, "{:?}", syncs[1].stats());
    drop(tasks);
}

/// A model alias's change too is published when made (checks and rounds
/// an hour apart).
#[tokio::test]
async fn a_model_alias_change_is_published_when_made() {
    use switchyard::model::ModelHandle;

    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (chat_router([100, 0]), chat_router([100, 0]));
    let (ha, hb): (ModelHandle, ModelHandle) = (a.handle(), b.handle());
    let handles = [ha.clone(), hb.clone()];
    let (_syncs, tasks) = made_only(&redis, 2, |i, s| {
        s.model("ai", handles[i].clone()).prefix("alias-made:")
    })
    .await;
    ha.promote("chat", "v2").unwrap();
    eventually("b promoted v2", || {
        hb.weights("chat").and_then(|w| w.get("v2")) == Some(100)
    })
    .await;
    drop(tasks);
}

/// Changes made at the same moment on two replicas resolve the same way
/// on both: the one Redis took last (its version is the higher), never
/// one per replica.
#[tokio::test]
async fn concurrent_changes_resolve_alike_everywhere() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (replica(&[100, 0]), replica(&[100, 0]));
    let (syncs, tasks) = both_listening(&redis, [&a, &b]).await;
    for round in 0..10u32 {
        let (wa, wb) = (10 + round, 50 + round);
        // Both at once, each on its own replica.
        a.handle()
            .set_weights([("blue", 100 - wa), ("green", wa)])
            .unwrap();
        b.handle()
            .set_weights([("blue", 100 - wb), ("green", wb)])
            .unwrap();
        eventually("both agree", || {
            let (ga, gb) = (
                a.handle().weights().get("green"),
                b.handle().weights().get("green"),
            );
            ga == gb && (ga == Some(wa) || ga == Some(wb))
        })
        .await;
        // And stay agreed: no replica flips back.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            a.handle().weights().get("green"),
            b.handle().weights().get("green"),
            "{:?} {:?}",
            syncs[0].stats(),
            syncs[1].stats()
        );
    }
    drop(tasks);
}

/// A rollback on one replica undoes a change made on another: a change a
/// replica applies from the fleet enters its own history, as one made
/// there would.
#[tokio::test]
async fn a_rollback_on_one_replica_undoes_a_change_made_on_another() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let (a, b) = (replica(&[90, 10]), replica(&[90, 10]));
    let (_syncs, tasks) = both_listening(&redis, [&a, &b]).await;
    a.handle().promote("green").unwrap();
    eventually("b promoted green", || {
        b.handle().weights().get("green") == Some(100)
    })
    .await;
    b.handle().rollback().unwrap();
    eventually("a back at 90/10", || {
        a.handle().weights().get("green") == Some(10)
    })
    .await;
    assert_eq!(b.handle().weights().get("blue"), Some(90));
    drop(tasks);
}
