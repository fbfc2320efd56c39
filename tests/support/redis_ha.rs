//! Highly available Redis of a test's own on loopback: a Redis Cluster of
//! three primaries ([`RedisCluster`]), and a primary with one replica
//! watched by three Sentinels ([`RedisSentinel`]), each on free ports,
//! with its configuration files and logs in a temporary directory of its
//! own; all killed, and the directory removed, on drop (kept, and named on
//! stderr, when the test panics).
//!
//! Only `redis-server` and `redis-cli` are needed: a Sentinel is
//! `redis-server <conf> --sentinel` (Debian's `redis-server` runs as one
//! that way; the `redis-sentinel` package is not needed).
//!
//! As in `support::redis`: `.ci/run` installs `redis-server` (Debian's
//! package) and sets `SWITCHYARD_REQUIRE_REDIS=1`, so that these tests fail
//! there when it is missing; elsewhere, without `redis-server` on the
//! `PATH`, each test says so on stderr and returns.

#![cfg(feature = "redis")]
#![allow(dead_code, reason = "each test file uses a part")]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::temp::TempDir;

use redis::Value;

/// The number of hash slots of a Redis Cluster.
const SLOTS: usize = 16384;

/// The master name the Sentinels monitor.
const MASTER: &str = "mymaster";

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}

/// `n` distinct free loopback ports (all probed at once, so that none is
/// given twice).
fn free_ports(n: usize) -> Vec<u16> {
    let probes: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    probes
        .iter()
        .map(|p| p.local_addr().unwrap().port())
        .collect()
}

/// `None` (with a note) when a Redis program could not be started and
/// Redis is not required; a panic when it is.
fn not_started<T>(what: &str, e: &std::io::Error) -> Option<T> {
    if std::env::var_os("SWITCHYARD_REQUIRE_REDIS").is_none() {
        eprintln!("{what} not started ({e}): Redis tests skipped");
        None
    } else {
        panic!("{what} is required (SWITCHYARD_REQUIRE_REDIS): {e}");
    }
}

/// One `redis-server` process (a server, a cluster node or a Sentinel),
/// which can be killed and started again with the same arguments.
struct Process {
    port: u16,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl Process {
    fn new(port: u16, args: Vec<String>, dir: &Path) -> Self {
        Process {
            port,
            args,
            dir: dir.to_path_buf(),
            child: None,
        }
    }

    fn run(&mut self) -> std::io::Result<()> {
        let child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, and reaped.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `cmd` on a new connection to `127.0.0.1:port`, with short timeouts (a
/// killed server answers with an error, not a hang).
async fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(url(port))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    cmd.query_async(&mut conn).await
}

/// The same, blocking (for the harness's methods that are not `async`).
fn query_blocking<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(url(port))?;
    let mut conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    cmd.query(&mut conn)
}

/// Waits (5 s at most) until `redis-server` on `port` answers PING.
async fn wait_ping(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if query::<String>(port, &redis::cmd("PING")).await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} on port {port} did not answer PING within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The role (`ROLE`'s first element: `master`, `slave` or `sentinel`) of
/// the server on `port`; `None` when it does not answer.
pub async fn role(port: u16) -> Option<String> {
    let answer: Vec<Value> = query(port, &redis::cmd("ROLE")).await.ok()?;
    redis::from_redis_value_ref(answer.first()?).ok()
}

fn int(v: &Value) -> Option<i64> {
    redis::from_redis_value_ref(v).ok()
}

/// `CLUSTER SLOTS` as `(first slot, last slot, primary's port)`.
fn slot_ranges(slots: &[Vec<Value>]) -> Vec<(u16, u16, u16)> {
    slots
        .iter()
        .filter_map(|range| {
            let first = u16::try_from(int(range.first()?)?).ok()?;
            let last = u16::try_from(int(range.get(1)?)?).ok()?;
            let primary: Vec<Value> = redis::from_redis_value_ref(range.get(2)?).ok()?;
            let port = u16::try_from(int(primary.get(1)?)?).ok()?;
            Some((first, last, port))
        })
        .collect()
}

/// A Redis Cluster of three primaries (no replicas) on loopback, killed
/// on drop.
pub struct RedisCluster {
    nodes: Vec<Process>,
    dir: TempDir,
    /// With TLS ([`RedisCluster::start_tls`]): each node's TLS port.
    tls_ports: Vec<u16>,
}

impl RedisCluster {
    /// Starts three cluster nodes, joins them with `redis-cli --cluster
    /// create`, and waits until every node says the cluster is `ok` with
    /// all 16384 slots covered; `None` (with a note) when `redis-server`
    /// is not installed and not required.
    pub async fn start() -> Option<Self> {
        Self::start_with(false).await
    }

    /// As [`start`](Self::start), with TLS between the nodes (cluster bus,
    /// `tls-cluster yes`) and for clients on a TLS port of each node (see
    /// [`tls_urls`](Self::tls_urls)), with the certificates of
    /// `tests/fixtures/tls` (the server's for `localhost` and 127.0.0.1,
    /// by `ca.pem`); the plain port stays, for the harness's own checks.
    pub async fn start_tls() -> Option<Self> {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Option<Self> {
        let dir = TempDir::unique("redis-cluster").keep_on_panic("Redis logs and configuration");
        // A client port, a cluster bus port and a TLS port for each node:
        // the bus port is given, as the default (port + 10000) can be past
        // 65535.
        let ports = free_ports(9);
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            dir,
            tls_ports: Vec::new(),
        };
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
        // The nodes present the client certificate to each other on the
        // bus (the server's is for servers only), and trust both CAs.
        let bundle = cluster.dir.join("cas.pem");
        if tls {
            let mut pem = std::fs::read(format!("{fixtures}/ca.pem")).unwrap();
            pem.extend(std::fs::read(format!("{fixtures}/client-ca.pem")).unwrap());
            std::fs::write(&bundle, pem).unwrap();
        }
        for triple in ports.chunks(3) {
            let (port, bus, tls_port) = (triple[0], triple[1], triple[2]);
            let conf = cluster.dir.join(format!("nodes-{port}.conf"));
            let log = cluster.dir.join(format!("node-{port}.log"));
            let args = [
                "--port",
                &port.to_string(),
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-config-file",
                &conf.to_string_lossy(),
                "--cluster-node-timeout",
                "2000",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                &log.to_string_lossy(),
            ]
            .map(String::from)
            .to_vec();
            let mut args = args;
            if tls {
                let f = |name: &str| format!("{fixtures}/{name}");
                args.extend([
                    "--tls-port".to_owned(),
                    tls_port.to_string(),
                    "--tls-cluster".to_owned(),
                    "yes".to_owned(),
                    "--tls-cert-file".to_owned(),
                    f("server.pem"),
                    "--tls-key-file".to_owned(),
                    f("server.key"),
                    "--tls-client-cert-file".to_owned(),
                    f("client.pem"),
                    "--tls-client-key-file".to_owned(),
                    f("client.key"),
                    "--tls-ca-cert-file".to_owned(),
                    bundle.to_string_lossy().into_owned(),
                    "--tls-auth-clients".to_owned(),
                    "optional".to_owned(),
                ]);
                cluster.tls_ports.push(tls_port);
            }
            let mut node = Process::new(port, args, &cluster.dir);
            if let Err(e) = node.run() {
                return not_started("redis-server", &e);
            }
            cluster.nodes.push(node);
        }
        for port in cluster.ports() {
            wait_ping(port, "Redis Cluster node").await;
        }
        cluster.create().await?;
        cluster.wait_ok().await;
        Some(cluster)
    }

    /// `redis-cli --cluster create` over the three nodes (15 s at most).
    async fn create(&self) -> Option<()> {
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(self.ports().iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let mut cli = match Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(cli) => cli,
            Err(e) => return not_started("redis-cli", &e),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while cli.try_wait().expect("wait for redis-cli").is_none() {
            if Instant::now() >= deadline {
                let _ = cli.kill();
                let out = cli.wait_with_output().expect("redis-cli's output");
                panic!(
                    "redis-cli --cluster create did not finish within 15 s:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out = cli.wait_with_output().expect("redis-cli's output");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        Some(())
    }

    /// Waits (10 s at most) until every node's `CLUSTER INFO` says
    /// `cluster_state:ok` and its `CLUSTER SLOTS` covers every slot.
    async fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        loop {
            let mut ok = true;
            for port in self.ports() {
                let info: String = query(port, redis::cmd("CLUSTER").arg("INFO"))
                    .await
                    .unwrap_or_default();
                let covered: usize = match query::<Vec<Vec<Value>>>(
                    port,
                    redis::cmd("CLUSTER").arg("SLOTS"),
                )
                .await
                {
                    Ok(slots) => slot_ranges(&slots)
                        .iter()
                        .map(|&(first, last, _)| usize::from(last - first) + 1)
                        .sum(),
                    Err(_) => 0,
                };
                let state_ok = info.lines().any(|l| l.trim() == "cluster_state:ok");
                if !state_ok || covered != SLOTS {
                    ok = false;
                    let state = info
                        .lines()
                        .find(|l| l.starts_with("cluster_state:"))
                        .unwrap_or("no CLUSTER INFO")
                        .trim();
                    last = format!("node {port}: {state}, {covered} of {SLOTS} slots covered");
                    break;
                }
            }
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster (ports {:?}) was not ok within 10 s: {last}",
                self.ports()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `redis://127.0.0.1:P/` for each node.
    pub fn urls(&self) -> Vec<String> {
        self.ports().into_iter().map(url).collect()
    }

    /// `rediss://127.0.0.1:T/` for each node's TLS port (empty without
    /// TLS).
    pub fn tls_urls(&self) -> Vec<String> {
        self.tls_ports
            .iter()
            .map(|p| format!("rediss://127.0.0.1:{p}/"))
            .collect()
    }

    /// Each node's client port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// A plain (not cluster-aware) client for node `i` (0, 1 or 2).
    pub fn client(&self, i: usize) -> redis::Client {
        redis::Client::open(url(self.nodes[i].port)).unwrap()
    }

    /// The port of the primary that owns `key`'s slot (`CLUSTER KEYSLOT`,
    /// then `CLUSTER SLOTS`).
    pub async fn node_for_key(&self, key: &str) -> u16 {
        let mut last = None;
        for port in self.ports() {
            let answer = async {
                let slot: i64 = query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)).await?;
                let slots: Vec<Vec<Value>> =
                    query(port, redis::cmd("CLUSTER").arg("SLOTS")).await?;
                Ok::<_, redis::RedisError>((slot, slot_ranges(&slots)))
            };
            match answer.await {
                Ok((slot, ranges)) => {
                    return ranges
                        .iter()
                        .find(|&&(first, last, _)| {
                            (i64::from(first)..=i64::from(last)).contains(&slot)
                        })
                        .map(|&(_, _, owner)| owner)
                        .unwrap_or_else(|| panic!("no node owns slot {slot} (of key {key:?})"));
                }
                Err(e) => last = Some(e),
            }
        }
        panic!("no Redis Cluster node answered CLUSTER KEYSLOT/SLOTS: {last:?}");
    }

    /// Each node's port and its keys (`KEYS *`, sorted).
    pub async fn keys_on_each(&self) -> Vec<(u16, Vec<String>)> {
        let mut each = Vec::new();
        for port in self.ports() {
            let mut keys: Vec<String> = query(port, redis::cmd("KEYS").arg("*"))
                .await
                .unwrap_or_else(|e| panic!("KEYS * on cluster node {port}: {e}"));
            keys.sort();
            each.push((port, keys));
        }
        each
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        // Every node before the directory their files are in.
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// A primary and one replica watched by three Sentinels (quorum 2) under
/// the master name `mymaster`, on loopback; all killed on drop.
pub struct RedisSentinel {
    /// The primary as started, then the replica.
    servers: Vec<Process>,
    sentinels: Vec<Process>,
    /// The index in `servers` of the one `kill_primary` killed.
    killed: Option<usize>,
    dir: TempDir,
}

impl RedisSentinel {
    /// Starts a primary and a replica, waits until the replica is in sync,
    /// then starts three Sentinels and waits until each names the primary
    /// and knows the replica and the two other Sentinels; `None` (with a
    /// note) when `redis-server` is not installed and not required.
    pub async fn start() -> Option<Self> {
        let dir = TempDir::unique("redis-sentinel").keep_on_panic("Redis logs and configuration");
        let ports = free_ports(5);
        let (primary, replica) = (ports[0], ports[1]);
        let mut ha = RedisSentinel {
            servers: Vec::new(),
            sentinels: Vec::new(),
            killed: None,
            dir,
        };
        let server_args = |port: u16| {
            let log = ha.dir.join(format!("server-{port}.log"));
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                &log.to_string_lossy(),
                // A replica keeps the snapshot it syncs from: one file each,
                // so that a server started again does not load another's.
                "--dbfilename",
                &format!("dump-{port}.rdb"),
                // A replica's full sync at once, not after the default 5 s
                // (diskless sync waits for more replicas to join).
                "--repl-diskless-sync-delay",
                "0",
            ]
            .map(String::from)
            .to_vec()
        };
        let mut replica_args = server_args(replica);
        replica_args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.to_string(),
        ]);
        // The primary first: a replica that finds no primary tries again
        // only a second later.
        for (port, args) in [(primary, server_args(primary)), (replica, replica_args)] {
            let mut server = Process::new(port, args, &ha.dir);
            if let Err(e) = server.run() {
                return not_started("redis-server", &e);
            }
            ha.servers.push(server);
            wait_ping(port, "a Redis server").await;
        }
        ha.wait_replica_in_sync(replica).await;

        // Started once the replica is in sync, so that a Sentinel's first
        // INFO of the primary already lists it.
        for &port in &ports[2..] {
            let conf = ha.dir.join(format!("sentinel-{port}.conf"));
            let log = ha.dir.join(format!("sentinel-{port}.log"));
            let text = format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 logfile \"{}\"\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER} 500\n\
                 sentinel failover-timeout {MASTER} 3000\n\
                 sentinel parallel-syncs {MASTER} 1\n",
                log.display(),
            );
            std::fs::write(&conf, text).expect("write a Sentinel's configuration file");
            let args = vec![conf.to_string_lossy().into_owned(), "--sentinel".into()];
            let mut sentinel = Process::new(port, args, &ha.dir);
            if let Err(e) = sentinel.run() {
                return not_started("redis-server --sentinel", &e);
            }
            ha.sentinels.push(sentinel);
        }
        for port in ha.sentinel_ports() {
            wait_ping(port, "a Redis Sentinel").await;
            // Sentinel's timers, to go with `down-after-milliseconds 500`
            // (`SENTINEL DEBUG`, Redis 7.0+, not kept in the file):
            // - A Sentinel reconnects to an instance at most once a ping
            //   period (1 s by default). After a failover its link to the
            //   new primary was then often not back within 500 ms: it found
            //   the new primary down and failed over again (back to the old
            //   one, when that had been started again meanwhile). 300 ms,
            //   not less: while the primary is down, a replica can be
            //   promoted only if its last INFO (sent once a second then) is
            //   younger than 5 ping periods; with 100 ms, no replica ever
            //   was ("-failover-abort-no-good-slave").
            // - INFO each second and hello messages each 500 ms (10 s and
            //   2 s by default): the Sentinels find each other sooner, and
            //   make a restarted old primary a replica about 2 s after it
            //   is back (4 hello periods after the first INFO that finds it
            //   a primary; 10 s by default).
            query::<Value>(
                port,
                redis::cmd("SENTINEL")
                    .arg("DEBUG")
                    .arg("ping-period")
                    .arg(300)
                    .arg("info-period")
                    .arg(1000)
                    .arg("publish-period")
                    .arg(500),
            )
            .await
            .unwrap_or_else(|e| panic!("SENTINEL DEBUG on Sentinel {port}: {e}"));
        }
        ha.wait_sentinels_ready(primary).await;
        Some(ha)
    }

    /// Waits (10 s at most) until the replica's `INFO replication` says
    /// `master_link_status:up`.
    async fn wait_replica_in_sync(&self, replica: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info: String = query(replica, redis::cmd("INFO").arg("replication"))
                .await
                .unwrap_or_default();
            if info.lines().any(|l| l.trim() == "master_link_status:up") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Redis replica on port {replica} was not in sync within 10 s:\n{info}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits (10 s at most) until every Sentinel names `primary`, lists a
    /// replica, and lists the two other Sentinels.
    async fn wait_sentinels_ready(&self, primary: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut pending = None;
            for port in self.sentinel_ports() {
                let named = sentinel_primary(port).await;
                let replicas: Vec<Value> =
                    query(port, redis::cmd("SENTINEL").arg("replicas").arg(MASTER))
                        .await
                        .unwrap_or_default();
                let sentinels: Vec<Value> =
                    query(port, redis::cmd("SENTINEL").arg("sentinels").arg(MASTER))
                        .await
                        .unwrap_or_default();
                if named != Some(primary) || replicas.is_empty() || sentinels.len() != 2 {
                    pending = Some(format!(
                        "Sentinel {port} names primary {named:?} (want {primary}), knows {} \
                         replica(s) (want 1) and {} other Sentinel(s) (want 2)",
                        replicas.len(),
                        sentinels.len(),
                    ));
                    break;
                }
            }
            let Some(pending) = pending else { return };
            assert!(
                Instant::now() < deadline,
                "the Redis Sentinels were not ready within 10 s: {pending}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The master name the Sentinels monitor: `mymaster`.
    pub fn master_name(&self) -> &str {
        MASTER
    }

    /// `redis://127.0.0.1:S/` for each Sentinel.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinel_ports().into_iter().map(url).collect()
    }

    /// Each Sentinel's port.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The current primary's port, as the first Sentinel that answers
    /// names it (a blocking query on loopback, of a few milliseconds).
    pub fn primary_port(&self) -> u16 {
        let mut last = None;
        for port in self.sentinel_ports() {
            let cmd = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(MASTER)
                .clone();
            match query_blocking::<(String, u16)>(port, &cmd) {
                Ok((_, primary)) => return primary,
                Err(e) => last = Some(e),
            }
        }
        panic!("no Redis Sentinel named the primary: {last:?}");
    }

    /// SIGKILLs the server that is primary now (as the Sentinels see it),
    /// and returns its port.
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port();
        let i = self
            .servers
            .iter()
            .position(|s| s.port == port && s.running())
            .unwrap_or_else(|| {
                panic!("the primary on port {port} is not a running server of ours")
            });
        self.servers[i].kill();
        self.killed = Some(i);
        port
    }

    /// Waits (15 s at most) until every Sentinel names the same primary,
    /// other than `old`, and sees it up with no failover under way, and
    /// that server's `ROLE` says `master`; returns its port.
    pub async fn wait_failover(&self, old: u16) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let mut named = Vec::new();
            for port in self.sentinel_ports() {
                named.push(sentinel_primary(port).await);
            }
            let mut flags = Vec::new();
            let seen = match named.first() {
                Some(&Some(new)) if new != old && named.iter().all(|&n| n == Some(new)) => {
                    for port in self.sentinel_ports() {
                        flags.push(sentinel_master_flags(port).await);
                    }
                    let seen = role(new).await;
                    // Every Sentinel sees it up, and no failover under way.
                    let settled = flags.iter().all(|f| f.as_deref() == Some("master"));
                    if seen.as_deref() == Some("master") && settled {
                        return new;
                    }
                    seen
                }
                _ => None,
            };
            assert!(
                Instant::now() < deadline,
                "no failover from port {old} within 15 s: the Sentinels name {named:?} \
                 (its role: {seen:?}; their flags for it: {flags:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the server `kill_primary` killed again on its port, with its
    /// arguments, and waits until it answers PING: a primary (empty, or
    /// with what it last synced as a replica) that the Sentinels turn into
    /// a replica of the new primary about 2 s later.
    pub async fn restart_killed(&mut self) {
        let i = self
            .killed
            .take()
            .expect("restart_killed without a kill_primary before");
        let server = &mut self.servers[i];
        server.run().expect("redis-server restarts");
        wait_ping(server.port, "the restarted Redis server").await;
    }
}

/// The primary's port that the Sentinel on `port` names; `None` when it
/// does not answer.
async fn sentinel_primary(port: u16) -> Option<u16> {
    let addr: Option<(String, u16)> = query(
        port,
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER),
    )
    .await
    .ok()?;
    addr.map(|(_, p)| p)
}

/// The flags of the primary that the Sentinel on `port` names (`master`
/// when it is up and no failover is under way); `None` when it does not
/// answer.
async fn sentinel_master_flags(port: u16) -> Option<String> {
    let fields: Vec<String> = query(port, redis::cmd("SENTINEL").arg("master").arg(MASTER))
        .await
        .ok()?;
    fields
        .chunks(2)
        .find(|pair| pair[0] == "flags")
        .and_then(|pair| pair.get(1).cloned())
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        // Every process before the directory their files are in.
        for process in self.sentinels.iter_mut().chain(&mut self.servers) {
            process.kill();
        }
    }
}
