//! Where Redis is: one server, a Redis Cluster, or the primary Redis
//! Sentinel names (feature `redis`).
//!
//! Every part of switchyard that keeps state in Redis (shared rate limits,
//! [weight sync](crate::sync), [spend](crate::spend), the platform's
//! [state](crate::state)) talks to it through a [`RedisConnection`] made
//! from a [`RedisTarget`], so each works the same over the three:
//!
//! * **one server**: a [`ConnectionManager`], which reconnects by itself;
//! * **Cluster**: the `redis` crate's cluster connection, which follows the
//!   slot map (`MOVED`, `ASK`) and the replicas promoted when a primary
//!   fails. Every key a switchyard script touches in one call shares a
//!   `{hash tag}` with the others, so each call runs on the one node that
//!   owns the slot (a `CROSSSLOT` refusal would be a bug);
//! * **Sentinel**: a connection to the primary the sentinels name, asked
//!   again when a command fails in a way a failover explains (connection
//!   lost or refused, timeout, `READONLY` from a demoted primary). The ask
//!   runs in the background, at most every 50 ms, so the failing command
//!   fails at once (its caller's `on_failure` decides) and the next ones
//!   go to the new primary as soon as the sentinels have promoted it.
//!
//! Announcements (pub/sub) are heard through [`RedisTarget::subscribe`]:
//! on a cluster from any node that answers (Redis Cluster forwards every
//! `PUBLISH` to every node), under Sentinel from the current primary. A
//! subscription ends when its node goes; subscribing again finds another.
//!
//! ```no_run
//! use switchyard::redis_conn::RedisTarget;
//!
//! # async fn demo() -> redis::RedisResult<()> {
//! // Three primaries: any of them is enough to find the others.
//! let cluster = RedisTarget::cluster([
//!     "redis://10.0.0.1:7000/",
//!     "redis://10.0.0.2:7000/",
//!     "redis://10.0.0.3:7000/",
//! ])?;
//! let mut conn = cluster.connection();
//! let () = redis::cmd("SET")
//!     .arg("{user:1}:hits")
//!     .arg(1)
//!     .query_async(&mut conn)
//!     .await?;
//!
//! // The primary of `mymaster`, wherever the sentinels say it is.
//! let ha = RedisTarget::sentinel("mymaster", ["redis://10.0.0.1:26379/"])?;
//! let _conn = ha.connection();
//! # Ok(()) }
//! ```

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_core::Stream;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value};

/// Messages heard on a channel ([`RedisTarget::subscribe`]); the stream
/// ends when the connection is lost.
pub type Messages = Pin<Box<dyn Stream<Item = redis::Msg> + Send>>;

/// How long connecting may take by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long an ask to the sentinels may take, at least.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);

/// How often, at most, the sentinels are asked for the primary.
const RESOLVE_EVERY: Duration = Duration::from_millis(50);

/// Where a Redis is (see the [module docs](self)). Cheap to clone.
#[derive(Clone)]
pub struct RedisTarget {
    kind: Kind,
    timeout: Duration,
}

#[derive(Clone)]
enum Kind {
    Single(Arc<redis::Client>),
    Cluster(Arc<ClusterAt>),
    Sentinel(Arc<SentinelAt>),
}

/// A cluster: the client, and a client per node given, to subscribe with.
struct ClusterAt {
    infos: Vec<ConnectionInfo>,
    client: redis::cluster::ClusterClient,
    nodes: Vec<redis::Client>,
    /// The node the next subscription tries first.
    next: AtomicUsize,
    #[cfg(feature = "tls")]
    certs: Option<redis::TlsCertificates>,
}

/// The sentinels, the service they watch, and how to log in to its
/// primary.
struct SentinelAt {
    master: String,
    sentinels: Vec<ConnectionInfo>,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    #[cfg(feature = "tls")]
    certs: Option<redis::TlsCertificates>,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Addresses only: the connection infos carry passwords.
        let mut d = f.debug_struct("RedisTarget");
        match &self.kind {
            Kind::Single(c) => d.field("server", &c.get_connection_info().addr().to_string()),
            Kind::Cluster(c) => d.field(
                "cluster",
                &c.infos
                    .iter()
                    .map(|i| i.addr().to_string())
                    .collect::<Vec<_>>(),
            ),
            Kind::Sentinel(s) => d.field("sentinel", &s.master).field(
                "sentinels",
                &s.sentinels
                    .iter()
                    .map(|i| i.addr().to_string())
                    .collect::<Vec<_>>(),
            ),
        };
        d.field("timeout", &self.timeout).finish()
    }
}

impl From<redis::Client> for RedisTarget {
    fn from(client: redis::Client) -> Self {
        Self::single(client)
    }
}

/// True for a `rediss://` (TLS) address.
fn is_tls(info: &ConnectionInfo) -> bool {
    matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. })
}

impl RedisTarget {
    /// One server, through `client`.
    pub fn single(client: redis::Client) -> Self {
        Self {
            kind: Kind::Single(Arc::new(client)),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A Redis Cluster, found from `nodes` (any one that answers is
    /// enough; give several). Nothing is connected until first used.
    ///
    /// # Errors
    ///
    /// An address that does not parse, or none at all.
    pub fn cluster<T: IntoConnectionInfo>(nodes: impl IntoIterator<Item = T>) -> RedisResult<Self> {
        let infos = nodes
            .into_iter()
            .map(IntoConnectionInfo::into_connection_info)
            .collect::<RedisResult<Vec<_>>>()?;
        if infos.is_empty() {
            return Err(no_address("a cluster needs at least one node"));
        }
        let cluster = ClusterAt::new(
            infos,
            DEFAULT_TIMEOUT,
            #[cfg(feature = "tls")]
            None,
        )?;
        Ok(Self {
            kind: Kind::Cluster(Arc::new(cluster)),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The primary of the service `master`, as the `sentinels` name it.
    /// The primary is spoken to over TLS when the sentinels' addresses are
    /// `rediss://`, with the username, password and database of
    /// [`sentinel_auth`](Self::sentinel_auth). Nothing is connected until
    /// first used.
    ///
    /// # Errors
    ///
    /// An address that does not parse, or none at all.
    pub fn sentinel<T: IntoConnectionInfo>(
        master: impl Into<String>,
        sentinels: impl IntoIterator<Item = T>,
    ) -> RedisResult<Self> {
        let sentinels = sentinels
            .into_iter()
            .map(IntoConnectionInfo::into_connection_info)
            .collect::<RedisResult<Vec<_>>>()?;
        if sentinels.is_empty() {
            return Err(no_address("Sentinel needs at least one sentinel"));
        }
        Ok(Self {
            kind: Kind::Sentinel(Arc::new(SentinelAt {
                master: master.into(),
                sentinels,
                username: None,
                password: None,
                db: 0,
                #[cfg(feature = "tls")]
                certs: None,
            })),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Under Sentinel, how to log in to the primary (the sentinels' own
    /// credentials are in their addresses): its username, password and
    /// database. Ignored for the other kinds, whose addresses carry them.
    #[must_use]
    pub fn sentinel_auth(
        mut self,
        username: Option<String>,
        password: Option<String>,
        db: i64,
    ) -> Self {
        if let Kind::Sentinel(s) = &self.kind {
            self.kind = Kind::Sentinel(Arc::new(SentinelAt {
                master: s.master.clone(),
                sentinels: s.sentinels.clone(),
                username,
                password,
                db,
                #[cfg(feature = "tls")]
                certs: s.certs.clone(),
            }));
        }
        self
    }

    /// The certificates for `rediss://` addresses (a private CA's roots,
    /// a client certificate) of a cluster's nodes, or of the sentinels and
    /// the primary (feature `tls`). A single server's are given to its
    /// client (`redis::Client::build_with_tls`).
    ///
    /// # Errors
    ///
    /// Certificates the `redis` crate refuses.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn certificates(mut self, certs: redis::TlsCertificates) -> RedisResult<Self> {
        match &self.kind {
            Kind::Single(_) => {}
            Kind::Cluster(c) => {
                let cluster = ClusterAt::new(c.infos.clone(), self.timeout, Some(certs))?;
                self.kind = Kind::Cluster(Arc::new(cluster));
            }
            Kind::Sentinel(s) => {
                self.kind = Kind::Sentinel(Arc::new(SentinelAt {
                    master: s.master.clone(),
                    sentinels: s.sentinels.clone(),
                    username: s.username.clone(),
                    password: s.password.clone(),
                    db: s.db,
                    certs: Some(certs),
                }));
            }
        }
        Ok(self)
    }

    /// How long connecting may take (1 s by default); also the bound of a
    /// [subscription](Self::subscribe) to each node, of an ask to the
    /// sentinels, and of each read and write of a
    /// [blocking](Self::blocking) connection. The callers of an async
    /// [connection](Self::connection) bound their commands themselves.
    ///
    /// # Errors
    ///
    /// For a cluster, settings its client refuses (none known).
    pub fn timeout(mut self, timeout: Duration) -> RedisResult<Self> {
        self.timeout = timeout;
        if let Kind::Cluster(c) = &self.kind {
            let cluster = ClusterAt::new(
                c.infos.clone(),
                timeout,
                #[cfg(feature = "tls")]
                c.certs.clone(),
            )?;
            self.kind = Kind::Cluster(Arc::new(cluster));
        }
        Ok(self)
    }

    /// Which kind this is: `"server"`, `"cluster"` or `"sentinel"`.
    pub fn kind(&self) -> &'static str {
        match self.kind {
            Kind::Single(_) => "server",
            Kind::Cluster(_) => "cluster",
            Kind::Sentinel(_) => "sentinel",
        }
    }

    /// A connection that connects on first use and again after it is
    /// lost (see the [module docs](self) for each kind). Clones share it.
    ///
    /// Must be called inside a Tokio runtime: the connection's tasks run
    /// on it.
    pub fn connection(&self) -> RedisConnection {
        let config = ConnectionManagerConfig::new().set_connection_timeout(Some(self.timeout));
        let conn = match &self.kind {
            Kind::Single(client) => {
                match ConnectionManager::new_lazy_with_config(redis::Client::clone(client), config)
                {
                    Ok(m) => Conn::Manager(m),
                    // Only when no runtime runs: the first command says so.
                    Err(e) => Conn::Broken(Arc::new(e.to_string())),
                }
            }
            Kind::Cluster(c) => Conn::Cluster(Arc::new(ClusterConn {
                at: c.clone(),
                conn: tokio::sync::OnceCell::new(),
            })),
            Kind::Sentinel(s) => Conn::Sentinel(Arc::new(SentinelConn {
                at: s.clone(),
                // A primary that is gone fails the command at once (and
                // the sentinels are asked), rather than after the
                // manager's reconnection attempts.
                config: config.set_number_of_retries(1),
                timeout: self.timeout,
                current: ArcSwapOption::empty(),
                resolving: tokio::sync::Mutex::new(None),
            })),
        };
        RedisConnection { conn }
    }

    /// A blocking connection, made now (for code off the async workers,
    /// like the platform's [state](crate::state::redis)), each read and
    /// write bounded by the timeout.
    ///
    /// # Errors
    ///
    /// Redis did not answer, or (Sentinel) no sentinel named a primary.
    pub fn blocking(&self) -> RedisResult<BlockingConnection> {
        let single = |client: &redis::Client| -> RedisResult<BlockingConnection> {
            let c = client.get_connection_with_timeout(self.timeout)?;
            c.set_read_timeout(Some(self.timeout))?;
            c.set_write_timeout(Some(self.timeout))?;
            Ok(BlockingConnection(Blocking::Single(c)))
        };
        match &self.kind {
            Kind::Single(client) => single(client),
            Kind::Cluster(c) => {
                let conn = c.client.get_connection()?;
                Ok(BlockingConnection(Blocking::Cluster(Box::new(conn))))
            }
            Kind::Sentinel(s) => single(&s.builder()?.build()?.get_client()?),
        }
    }

    /// Subscribes to `channel` (see the [module docs](self) for where).
    ///
    /// # Errors
    ///
    /// No node answered within the timeout.
    pub async fn subscribe(&self, channel: &str) -> RedisResult<Messages> {
        let on = |client: redis::Client| async move {
            let run = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok::<_, redis::RedisError>(pubsub.into_on_message())
            };
            match tokio::time::timeout(self.timeout, run).await {
                Ok(Ok(stream)) => Ok(Box::pin(stream) as Messages),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(timed_out()),
            }
        };
        match &self.kind {
            Kind::Single(client) => on(redis::Client::clone(client)).await,
            Kind::Cluster(c) => {
                // Each try starts at the next node, so one that is gone
                // is not always tried first.
                let start = c.next.fetch_add(1, Ordering::Relaxed);
                let mut last = None;
                for i in 0..c.nodes.len() {
                    match on(c.nodes[(start + i) % c.nodes.len()].clone()).await {
                        Ok(stream) => return Ok(stream),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| no_address("no node")))
            }
            Kind::Sentinel(s) => {
                let bound = self.timeout.max(RESOLVE_TIMEOUT);
                let client = match tokio::time::timeout(bound, s.primary()).await {
                    Ok(found) => found?,
                    Err(_) => return Err(timed_out()),
                };
                on(client).await
            }
        }
    }
}

fn no_address(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, what))
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}

// === impl ClusterAt ===

impl ClusterAt {
    fn new(
        infos: Vec<ConnectionInfo>,
        timeout: Duration,
        #[cfg(feature = "tls")] certs: Option<redis::TlsCertificates>,
    ) -> RedisResult<Self> {
        let builder = redis::cluster::ClusterClient::builder(infos.clone())
            .connection_timeout(timeout)
            // A command that meets a failover retries for up to ~1.5 s
            // (the crate's default is longer), then its caller decides.
            .retries(3);
        #[cfg(feature = "tls")]
        let builder = match &certs {
            Some(certs) => builder.certs(certs.clone()),
            None => builder,
        };
        let client = builder.build()?;
        let nodes = infos
            .iter()
            .map(|info| {
                #[cfg(feature = "tls")]
                if let Some(certs) = &certs
                    && is_tls(info)
                {
                    return redis::Client::build_with_tls(info.clone(), certs.clone());
                }
                redis::Client::open(info.clone())
            })
            .collect::<RedisResult<Vec<_>>>()?;
        Ok(Self {
            infos,
            client,
            nodes,
            next: AtomicUsize::new(0),
            #[cfg(feature = "tls")]
            certs,
        })
    }
}

// === impl SentinelAt ===

impl SentinelAt {
    /// A sentinel client, made anew for each ask (asks are rare: on the
    /// first use, and after a failure).
    fn builder(&self) -> RedisResult<redis::sentinel::SentinelClientBuilder> {
        let first = &self.sentinels[0];
        let mut b = redis::sentinel::SentinelClientBuilder::new(
            self.sentinels.iter().map(|i| i.addr().clone()),
            &self.master,
            redis::sentinel::SentinelServerType::Master,
        )?;
        if is_tls(first) {
            b = b
                .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
        }
        let theirs = first.redis_settings();
        if let Some(u) = theirs.username() {
            b = b.set_client_to_sentinel_username(u);
        }
        if let Some(p) = theirs.password() {
            b = b.set_client_to_sentinel_password(p);
        }
        if let Some(u) = &self.username {
            b = b.set_client_to_redis_username(u);
        }
        if let Some(p) = &self.password {
            b = b.set_client_to_redis_password(p);
        }
        if self.db != 0 {
            b = b.set_client_to_redis_db(self.db);
        }
        #[cfg(feature = "tls")]
        if let Some(certs) = &self.certs {
            b = b
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs.clone());
        }
        Ok(b)
    }

    /// A client for the primary the sentinels name now.
    async fn primary(&self) -> RedisResult<redis::Client> {
        self.builder()?.build()?.async_get_client().await
    }
}

// === impl RedisConnection ===

/// A connection to a [`RedisTarget`], made by
/// [`RedisTarget::connection`]; clones share it. It is a
/// [`redis::aio::ConnectionLike`], so commands, pipelines and scripts run
/// on it as on any `redis` connection.
#[derive(Clone)]
pub struct RedisConnection {
    conn: Conn,
}

#[derive(Clone)]
enum Conn {
    Manager(ConnectionManager),
    Cluster(Arc<ClusterConn>),
    Sentinel(Arc<SentinelConn>),
    /// A manager that could not be made (no runtime): every command fails.
    Broken(Arc<String>),
}

struct ClusterConn {
    at: Arc<ClusterAt>,
    /// Made by the first command; one that fails leaves it empty, for the
    /// next to try again.
    conn: tokio::sync::OnceCell<redis::cluster_async::ClusterConnection>,
}

struct SentinelConn {
    at: Arc<SentinelAt>,
    config: ConnectionManagerConfig,
    timeout: Duration,
    /// The primary's address and the connection to it.
    current: ArcSwapOption<(String, ConnectionManager)>,
    /// Held while asking; when the last ask was.
    resolving: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.conn {
            Conn::Manager(_) | Conn::Broken(_) => "server",
            Conn::Cluster(_) => "cluster",
            Conn::Sentinel(_) => "sentinel",
        };
        f.debug_struct("RedisConnection")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl From<ConnectionManager> for RedisConnection {
    fn from(manager: ConnectionManager) -> Self {
        Self {
            conn: Conn::Manager(manager),
        }
    }
}

impl RedisConnection {
    /// Under Sentinel, the primary's address as last asked (`None` before
    /// the first ask, and for the other kinds).
    pub fn primary(&self) -> Option<String> {
        match &self.conn {
            Conn::Sentinel(s) => s.current.load().as_ref().map(|c| c.0.clone()),
            _ => None,
        }
    }
}

impl ClusterConn {
    async fn get(&self) -> RedisResult<redis::cluster_async::ClusterConnection> {
        let made = self
            .conn
            .get_or_try_init(|| self.at.client.get_async_connection())
            .await?;
        Ok(made.clone())
    }
}

/// True for the failures a failover explains.
fn failover_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

impl SentinelConn {
    /// The connection to the primary, asking the sentinels first if none
    /// was found yet.
    async fn get(self: &Arc<Self>) -> RedisResult<ConnectionManager> {
        if let Some(c) = self.current.load_full() {
            return Ok(c.1.clone());
        }
        self.resolve(None).await?;
        match self.current.load_full() {
            Some(c) => Ok(c.1.clone()),
            None => Err(no_address("no primary known yet")),
        }
    }

    /// Asks the sentinels for the primary, unless another caller is
    /// asking, or asked since `failed` (the address a command failed on)
    /// was replaced, or asked less than [`RESOLVE_EVERY`] ago.
    async fn resolve(&self, failed: Option<&str>) -> RedisResult<()> {
        let mut last = self.resolving.lock().await;
        let current = self.current.load_full();
        let now = tokio::time::Instant::now();
        if let Some(c) = &current {
            if failed.is_some_and(|f| f != c.0) {
                return Ok(());
            }
            if last.is_some_and(|at| now.duration_since(at) < RESOLVE_EVERY) {
                return Ok(());
            }
        }
        *last = Some(now);
        // Asking takes several round trips (a sentinel, then the primary
        // it names, to check its role): at least a second, whatever the
        // commands' timeout.
        let bound = self.timeout.max(RESOLVE_TIMEOUT);
        let client = match tokio::time::timeout(bound, self.at.primary()).await {
            Ok(found) => found?,
            Err(_) => return Err(timed_out()),
        };
        let addr = client.get_connection_info().addr().to_string();
        if current.as_ref().is_some_and(|c| c.0 == addr) {
            return Ok(());
        }
        let manager = ConnectionManager::new_lazy_with_config(client, self.config.clone())?;
        tracing::info!(
            master = %self.at.master,
            primary = %addr,
            "redis: the sentinels name a new primary"
        );
        self.current.store(Some(Arc::new((addr, manager))));
        Ok(())
    }

    /// After a command failed on `addr`: asks again in the background if
    /// a failover explains the failure.
    fn failed(self: &Arc<Self>, addr: String, e: &redis::RedisError) {
        if !failover_error(e) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _ = this.resolve(Some(&addr)).await;
        });
    }

    async fn run<'a, T>(
        self: &Arc<Self>,
        f: impl FnOnce(ConnectionManager) -> RedisFuture<'a, T> + Send + 'a,
    ) -> RedisResult<T>
    where
        T: Send + 'a,
    {
        let manager = self.get().await?;
        let addr = self.current.load().as_ref().map(|c| c.0.clone());
        // A caller that gives up first (its own timeout: a rate limit
        // check waits 100 ms) drops this future before the manager says
        // anything: that counts as a failure too.
        let mut unanswered = Unanswered {
            conn: Some(self.clone()),
            addr: addr.clone(),
        };
        let done = f(manager).await;
        unanswered.conn = None;
        if let (Err(e), Some(addr)) = (&done, addr) {
            self.failed(addr, e);
        }
        done
    }
}

/// Asks the sentinels again (in the background) when dropped armed: a
/// command whose caller stopped waiting for it.
struct Unanswered {
    conn: Option<Arc<SentinelConn>>,
    addr: Option<String>,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        let (Some(conn), Some(addr)) = (self.conn.take(), self.addr.take()) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = conn.resolve(Some(&addr)).await;
            });
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.conn {
            Conn::Manager(m) => m.req_packed_command(cmd),
            Conn::Cluster(c) => Box::pin(async move {
                let mut conn = c.get().await?;
                conn.req_packed_command(cmd).await
            }),
            Conn::Sentinel(s) => Box::pin(async move {
                s.run(move |mut m| Box::pin(async move { m.req_packed_command(cmd).await }))
                    .await
            }),
            Conn::Broken(why) => {
                let why = why.clone();
                Box::pin(async move { Err(broken(&why)) })
            }
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.conn {
            Conn::Manager(m) => m.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => Box::pin(async move {
                let mut conn = c.get().await?;
                conn.req_packed_commands(pipeline, offset, count).await
            }),
            Conn::Sentinel(s) => Box::pin(async move {
                s.run(move |mut m| {
                    Box::pin(async move { m.req_packed_commands(pipeline, offset, count).await })
                })
                .await
            }),
            Conn::Broken(why) => {
                let why = why.clone();
                Box::pin(async move { Err(broken(&why)) })
            }
        }
    }

    fn get_db(&self) -> i64 {
        match &self.conn {
            Conn::Manager(m) => m.get_db(),
            Conn::Sentinel(s) => s.at.db,
            Conn::Cluster(_) | Conn::Broken(_) => 0,
        }
    }
}

fn broken(why: &str) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "no Redis connection",
        why.to_owned(),
    ))
}

// === impl BlockingConnection ===

/// A blocking connection, made by [`RedisTarget::blocking`]: a
/// [`redis::ConnectionLike`]. Under Sentinel it goes to the primary named
/// when it was made: after an error, make another.
pub struct BlockingConnection(Blocking);

enum Blocking {
    Single(redis::Connection),
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl fmt::Debug for BlockingConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingConnection").finish_non_exhaustive()
    }
}

impl redis::ConnectionLike for BlockingConnection {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match &mut self.0 {
            Blocking::Single(c) => c.req_packed_command(cmd),
            Blocking::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        match &mut self.0 {
            Blocking::Single(c) => c.req_packed_commands(cmd, offset, count),
            Blocking::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        // The cluster routes by the command, not its packed bytes.
        match &mut self.0 {
            Blocking::Single(c) => c.req_command(cmd),
            Blocking::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Blocking::Single(c) => c.get_db(),
            Blocking::Cluster(c) => c.get_db(),
        }
    }

    fn check_connection(&mut self) -> bool {
        match &mut self.0 {
            Blocking::Single(c) => c.check_connection(),
            Blocking::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match &self.0 {
            Blocking::Single(c) => c.is_open(),
            Blocking::Cluster(c) => c.is_open(),
        }
    }
}
