//! A server for the edge (feature `server`): serves any tower `Service` (a
//! [`Gateway`](crate::gateway::Gateway), an axum `Router`) on a TCP
//! listener, HTTP/1.1 and h2c on hyper-util's auto builder, h2 and
//! HTTP/1.1 over TLS with feature `tls`, with limits that all have safe
//! defaults, and graceful shutdown.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response};
//! use switchyard::server::{IncomingBody, Server};
//! use tower::service_fn;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = service_fn(|_req: Request<IncomingBody>| async {
//!     Ok::<_, Infallible>(Response::new("hello\n".to_string()))
//! });
//! let server = Server::builder()
//!     .header_read_timeout(Duration::from_secs(10))
//!     .max_connections(5_000)
//!     .bind("127.0.0.1:8080")
//!     .await?;
//! println!("listening on http://{}", server.local_addr());
//!
//! // Ctrl-C: stop accepting, let requests in flight (and open WebSockets)
//! // finish for up to 30 s, then close everything.
//! let handle = server.handle();
//! tokio::spawn(async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     handle.shutdown(Duration::from_secs(30));
//! });
//! server.serve(app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # What every request carries
//!
//! The peer's [`SocketAddr`] (what [`KeyBy::peer_ip`](crate::key::KeyBy::peer_ip)
//! reads), axum's `ConnectInfo<SocketAddr>` with feature `axum` (so
//! `ConnectInfo` extractors work without `into_make_service_with_connect_info`),
//! and a [`ConnectionInfo`](crate::conn::ConnectionInfo) (peer, local
//! address, whether it came over TLS).
//!
//! # Limits
//!
//! Each is a field of [`ServerConfig`] (and a [`ServerBuilder`] method); the
//! defaults are safe for a server facing the internet.
//!
//! | limit | default | past it |
//! | --- | --- | --- |
//! | header read timeout: a request head must arrive within it, from its first byte (from the accept for a connection's first request, TLS handshake and h2 preface included) | 30 s | connection closed (slowloris) |
//! | idle timeout: no request in flight | 60 s | HTTP/1.1 closed, HTTP/2 sent a GOAWAY |
//! | body idle timeout: a request body stops arriving while the service reads it | 30 s | the service sees a [`BodyTimeout`] error; the client gets a `408` if no response has started; counted |
//! | request head size | 64 KiB | `431` |
//! | header fields (HTTP/1.1) | 100 | `431` |
//! | connections open at once (upgraded ones included) | 10000 | accepted and closed at once, counted |
//! | HTTP/2 concurrent streams per connection | 200 | refused streams |
//! | HTTP/2 keep-alive ping: interval, timeout | 20 s, 20 s | connection closed |
//!
//! For HTTP/2 the header read timeout bounds the preface and the first
//! request; after that a connection with no open stream is under the idle
//! timeout (the client's pings do not keep it open), and its streams under
//! hyper's HTTP/2 limits. A client that stops reading a response is not
//! timed out by the server: an upstream or handler timeout, and the
//! HTTP/2 keep-alive ping for dead peers, bound those.
//!
//! Over the connection cap the server accepts and closes at once rather
//! than leaving connections in the kernel's backlog: the accept loop never
//! stalls, the refusal is immediate, and a flood's own connections are
//! closed by the header read timeout, so that retrying clients get in.
//!
//! A panic in the service (a bug of a layer or a handler, in its
//! `poll_ready`, its `call` or its future) is the request's alone: it is
//! answered with a `500` problem+json and `Connection: close` (over
//! HTTP/2, the stream is answered and the connection's other streams go
//! on), the panic printed by the process's panic hook as usual and
//! counted in [`ServerStats::panics`]. Every
//! other request, connection and serving thread is untouched. A panic
//! in the response body, once its head has gone out, ends that response
//! with an error: its connection is cut (over HTTP/2, its stream is
//! reset and the others go on), and it is counted too. This holds as long as the application is built
//! with `panic = "unwind"`, Rust's default: with `"abort"` the process
//! ends.
//!
//! # Shutdown
//!
//! [`ServerHandle::shutdown`] stops accepting (the listener is closed, so
//! new connections are refused), closes idle connections, lets requests in
//! flight finish (HTTP/1.1 connections close after their response, HTTP/2
//! ones get a GOAWAY), waits for upgraded connections (WebSockets) to
//! close too, and at the deadline cuts whatever is left: then
//! [`Server::serve`] returns.
//!
//! # Threads
//!
//! By default connections are served on the tokio runtime that calls
//! [`Server::serve`], as tasks any of its workers may run.
//! [`ServerBuilder::threads`] (`threads` in `[server]`) gives the server
//! threads of its own instead, each running a single-threaded runtime with
//! its own listener (`SO_REUSEPORT` on Unix; elsewhere, and for a listener
//! given to [`ServerBuilder::listener`], duplicates of one socket). A new
//! connection is served by the thread with the fewest open, whichever
//! thread accepted it (haproxy's rule): the kernel's spread over
//! `SO_REUSEPORT` listeners, a hash of the addresses, often leaves one
//! thread with a third more connections than another, or three of four.
//! Once placed, a connection never leaves its thread, and a
//! [`proxy::Upstream`](crate::proxy::Upstream)
//! keeps a connection pool per thread, so a proxied request is served on
//! one thread from end to end: nginx's worker model, the fastest for a
//! gateway (see the README's figures). The limits are the server's, not
//! each thread's: `max_connections` counts every thread's connections.
//! Tasks the service spawns (a mirror's copies, say) run on the thread of
//! the request that spawned them.
//!
//! # TLS
//!
//! With feature `tls`, [`ServerBuilder::tls`] (or `[server.tls]`) terminates
//! TLS with a certificate chain and key read from PEM files, offering ALPN
//! `h2` and `http/1.1`. [`ServerHandle::reload_tls`] reads the files again:
//! new connections get the new certificate, open ones are left alone.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower::Service;

mod body;
mod config;
mod conn;
mod stats;
#[cfg(feature = "tls")]
mod tls;

pub use body::{BodyTimeout, BoxError, IncomingBody, OutgoingBody};
pub use config::{ServerConfig, TlsConfig};
pub use stats::ServerStats;

use config::Limits;
use conn::{ConnState, Io};
use stats::Counters;

/// Why a server could not be built, or its certificate not reloaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A limit out of range.
    #[error("invalid server configuration: {0}")]
    Config(String),
    /// Binding the listener failed.
    #[error("cannot listen: {0}")]
    Io(#[from] io::Error),
    /// The certificate or key could not be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// `tls` was configured but the crate was built without feature `tls`.
    #[error("TLS needs switchyard's `tls` feature")]
    TlsDisabled,
}

/// For functions that return `io::Result`: an I/O error as it was, the
/// others as [`io::ErrorKind::Other`] ones.
impl From<ServerError> for io::Error {
    fn from(err: ServerError) -> Self {
        match err {
            ServerError::Io(e) => e,
            other => io::Error::other(other),
        }
    }
}

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Serving,
    /// Shutting down gracefully until the deadline.
    Draining(Instant),
    /// The deadline passed: everything is cut.
    Killed,
}

/// What the accept loop, the connections and the handles share.
pub(crate) struct Shared {
    limits: Limits,
    counters: Arc<Counters>,
    phase: watch::Sender<Phase>,
    killed: AtomicBool,
    conns: Mutex<HashMap<u64, Weak<ConnState>>>,
    next_id: AtomicU64,
    closed_all: Notify,
    local: SocketAddr,
    builder: auto::Builder<TokioExecutor>,
    #[cfg(feature = "tls")]
    tls: Option<tls::Tls>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("local", &self.local)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A connection's byte stream was dropped.
    fn closed(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if self.counters.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.closed_all.notify_waiters();
        }
    }

    /// Cuts every connection still open (a shutdown's deadline).
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.phase.send_replace(Phase::Killed);
        let conns: Vec<_> = self
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for conn in conns {
            conn.wake_reader();
        }
    }

    /// Waits until no connection is open, or `deadline`; whether none is.
    async fn all_closed(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.closed_all.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.counters.active.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.counters.active.load(Ordering::Acquire) == 0;
            }
        }
    }
}

// === impl ServerBuilder ===

/// Builds a [`Server`]: limits (each defaults as in [`ServerConfig`]) and
/// TLS, then a listener.
#[derive(Debug, Clone, Default)]
pub struct ServerBuilder {
    config: ServerConfig,
}

fn ms(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

impl ServerBuilder {
    /// A builder with the default limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder with the limits and TLS of `config` (`[server]`).
    pub fn from_config(config: ServerConfig) -> Self {
        Self { config }
    }

    /// How long a request head may take from its first byte (`None`: no
    /// limit). See [`ServerConfig::header_read_timeout_ms`].
    pub fn header_read_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.header_read_timeout_ms = ms(timeout.into());
        self
    }

    /// How long a connection with no request in flight stays open (`None`:
    /// no limit). See [`ServerConfig::idle_timeout_ms`].
    pub fn idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.idle_timeout_ms = ms(timeout.into());
        self
    }

    /// How long a request body may stop arriving (`None`: no limit). See
    /// [`ServerConfig::body_idle_timeout_ms`].
    pub fn body_idle_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.config.body_idle_timeout_ms = ms(timeout.into());
        self
    }

    /// The largest request head in bytes (at least 8192). See
    /// [`ServerConfig::max_head_bytes`].
    pub fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.config.max_head_bytes = bytes;
        self
    }

    /// The most header fields in an HTTP/1.1 request.
    pub fn max_headers(mut self, headers: usize) -> Self {
        self.config.max_headers = headers;
        self
    }

    /// The most connections open at once. See
    /// [`ServerConfig::max_connections`].
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.max_connections = connections;
        self
    }

    /// Accept HTTP/2 (h2c, and ALPN `h2` over TLS); on by default.
    pub fn http2(mut self, enabled: bool) -> Self {
        self.config.http2 = enabled;
        self
    }

    /// The most concurrent streams per HTTP/2 connection.
    pub fn http2_max_concurrent_streams(mut self, streams: u32) -> Self {
        self.config.http2_max_concurrent_streams = streams;
        self
    }

    /// HTTP/2 keep-alive pings: every `interval` (`None`: none), closing
    /// the connection when one goes unanswered for `timeout`.
    pub fn http2_keep_alive(
        mut self,
        interval: impl Into<Option<Duration>>,
        timeout: Duration,
    ) -> Self {
        self.config.http2_keep_alive_interval_ms = ms(interval.into());
        self.config.http2_keep_alive_timeout_ms = ms(Some(timeout));
        self
    }

    /// The deadline [`ServerHandle::shutdown_default`] gives.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout_ms = ms(Some(timeout));
        self
    }

    /// Serve on `threads` threads of the server's own, each running a
    /// single-threaded tokio runtime with its own listener; `0` (the
    /// default) serves on the runtime that calls [`Server::serve`]. See
    /// [`ServerConfig::threads`] and [the module docs](self#threads).
    pub fn threads(mut self, threads: usize) -> Self {
        self.config.threads = Some(threads);
        self
    }

    /// Terminate TLS with the certificate chain in `cert_file` and its key
    /// in `key_file` (PEM; feature `tls`, else building fails).
    pub fn tls(mut self, cert_file: impl Into<String>, key_file: impl Into<String>) -> Self {
        self.config.tls = Some(TlsConfig::new(cert_file, key_file));
        self
    }

    /// The configuration this builder holds.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Binds a listener on `addr` and builds the server.
    pub async fn bind(self, addr: impl ToSocketAddrs) -> Result<Server, ServerError> {
        let reuseport = cfg!(unix) && self.config.threads.unwrap_or(0) > 1;
        let listener = if reuseport {
            bind_reuseport(addr).await?
        } else {
            TcpListener::bind(addr).await?
        };
        let mut server = self.listener(listener)?;
        server.reuseport = reuseport;
        Ok(server)
    }

    /// Builds the server on a listener of your own.
    pub fn listener(self, listener: TcpListener) -> Result<Server, ServerError> {
        let limits = Limits::from_config(&self.config).map_err(ServerError::Config)?;
        #[cfg(feature = "tls")]
        let tls = match &self.config.tls {
            Some(files) => Some(tls::Tls::new(files, limits.http2).map_err(ServerError::Tls)?),
            None => None,
        };
        #[cfg(not(feature = "tls"))]
        if self.config.tls.is_some() {
            return Err(ServerError::TlsDisabled);
        }
        let local = listener.local_addr()?;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            // The watchdog keeps the header read timeout, for every
            // protocol alike (hyper's would also bound keep-alive waits).
            .header_read_timeout(None)
            .max_buf_size(limits.max_head_bytes)
            .max_headers(limits.max_headers);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .keep_alive_interval(limits.http2_keep_alive_interval)
            .keep_alive_timeout(limits.http2_keep_alive_timeout)
            .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX));
        if !limits.http2 {
            builder = builder.http1_only();
        }
        let (phase, _) = watch::channel(Phase::Serving);
        let shared = Arc::new(Shared {
            limits,
            counters: Arc::new(Counters::default()),
            phase,
            killed: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            closed_all: Notify::new(),
            local,
            builder,
            #[cfg(feature = "tls")]
            tls,
        });
        Ok(Server {
            listener,
            shared,
            reuseport: false,
        })
    }
}

/// The first address of `addr` that a listener with `SO_REUSEADDR` and
/// `SO_REUSEPORT` binds to: the serving threads' other listeners then
/// bind to the same port.
async fn bind_reuseport(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        match listen_reuseport(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "could not resolve to any address",
        )
    }))
}

/// A listener on `addr` with `SO_REUSEPORT` (Unix; elsewhere never
/// called).
fn listen_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    // The backlog std's and tokio's own `bind` use.
    socket.listen(1024)
}

// === impl Server ===

/// A bound server, ready to [`serve`](Server::serve) a service. See the
/// [module docs](self).
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    shared: Arc<Shared>,
    /// The listener was bound with `SO_REUSEPORT`: the other serving
    /// threads bind their own to its address.
    reuseport: bool,
}

impl Server {
    /// A builder, with the default limits.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }

    /// A server with the default limits on `addr`.
    pub async fn bind(addr: impl ToSocketAddrs) -> Result<Server, ServerError> {
        ServerBuilder::new().bind(addr).await
    }

    /// The address the server listens on (with the port the system chose
    /// for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// A handle to shut the server down, read its counters and reload its
    /// certificate. Cheap to clone.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Serves `service` until a shutdown has finished: each request, with
    /// an [`IncomingBody`], goes to a clone of it. Returns once the
    /// listener is closed and every connection is closed (or cut at the
    /// shutdown's deadline). Accept errors (out of file descriptors, a
    /// connection reset before it was accepted) are waited out, never
    /// returned. The service need only be `Send`, not `Sync` (a tower
    /// `BoxCloneService` will do): the future is `Send` either way, so it
    /// can be spawned.
    pub async fn serve<S, B>(self, service: S) -> io::Result<()>
    where
        S: Service<Request<IncomingBody>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let Server {
            listener,
            shared,
            reuseport,
        } = self;
        if shared.limits.threads > 0 {
            return serve_on_threads(listener, shared, service, reuseport).await;
        }
        let deadline = accept_loop(&listener, &shared, service, None).await;
        // Stop accepting: new connections are refused from now on.
        drop(listener);
        finish(&shared, deadline).await;
        Ok(())
    }
}

/// What a server serves, its bounds in one place: a service of requests
/// with an [`IncomingBody`], cloned for each connection.
trait Serves<B>:
    Service<
        Request<IncomingBody>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> Serves<B> for S
where
    S: Service<Request<IncomingBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
}

/// The body of what a server serves: bytes, from any thread.
trait ServedBody: Body<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> ServedBody for B
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
}

/// Accepts connections until a shutdown starts; its deadline. On one of
/// several serving threads (`seats`), a connection goes to the thread with
/// the fewest open, and this thread also serves the connections the
/// others hand it.
///
/// The service is owned, not borrowed: a borrow held across the awaits
/// below would make [`Server::serve`]'s future `Send` only for a `Sync`
/// service, and so not spawnable with one that is `Send` alone (tower's
/// `BoxCloneService`).
async fn accept_loop<S, B>(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    service: S,
    mut seats: Option<&mut Seats>,
) -> Instant
where
    S: Serves<B>,
    B: ServedBody,
{
    let mut phase = shared.phase.subscribe();
    loop {
        // Killed counts too: with several threads, another may have passed
        // the deadline and killed everything before this one looked.
        match *phase.borrow_and_update() {
            Phase::Serving => {}
            Phase::Draining(deadline) => break deadline,
            Phase::Killed => break Instant::now(),
        }
        let handed = async {
            match seats.as_deref_mut() {
                Some(seats) => seats.inbox.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            changed = phase.changed() => {
                if changed.is_err() {
                    // Every handle and the server are gone: cannot happen
                    // while `shared` is held, but never spin.
                    std::future::pending::<()>().await;
                }
            }
            // Another thread's `spread` always holds a sender: never `None`.
            Some(handed) = handed => serve_handed(shared, &service, handed),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match seats.as_deref() {
                    Some(seats) => seats.place(shared, &service, stream, peer),
                    None => accept(shared, &service, stream, peer, None),
                },
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                    ) {
                        // Out of file descriptors, most likely: wait
                        // for some to close.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            },
        }
    }
}

/// After the listener is closed: waits for the connections to close until
/// `deadline`, then cuts what is left.
async fn finish(shared: &Shared, deadline: Instant) {
    if !shared.all_closed(deadline).await {
        shared.kill();
        // Cut connections notice at their next poll; give them a moment.
        shared
            .all_closed(Instant::now() + Duration::from_millis(100))
            .await;
    }
}

/// [`Server::serve`] on `shared.limits.threads` threads of its own, each
/// with a current-thread runtime and a listener: `first` (moved to the
/// first thread) and, for the others, a listener of their own on its
/// address (`reuseport`) or a duplicate of `first`'s socket.
async fn serve_on_threads<S, B>(
    first: TcpListener,
    shared: Arc<Shared>,
    service: S,
    reuseport: bool,
) -> io::Result<()>
where
    S: Serves<B>,
    B: ServedBody,
{
    let threads = shared.limits.threads;
    let first = first.into_std()?;
    let mut listeners = Vec::with_capacity(threads);
    for _ in 1..threads {
        listeners.push(if reuseport {
            listen_reuseport(shared.local)?.into_std()?
        } else {
            first.try_clone()?
        });
    }
    listeners.insert(0, first);
    // Dropped (the caller gave up on `serve`) before every thread is done:
    // shut down at once, so that no thread serves on unseen.
    struct Abandon<'a>(&'a Shared, bool);
    impl Drop for Abandon<'_> {
        fn drop(&mut self) {
            if !self.1 {
                self.0.phase.send_if_modified(|phase| match phase {
                    Phase::Serving => {
                        *phase = Phase::Draining(Instant::now());
                        true
                    }
                    _ => false,
                });
            }
        }
    }
    let mut abandon = Abandon(&shared, false);
    let mut done = Vec::with_capacity(threads);
    let (spread, inboxes) = Spread::new(threads);
    for ((i, listener), inbox) in listeners.into_iter().enumerate().zip(inboxes) {
        let (tx, rx) = tokio::sync::oneshot::channel::<io::Result<()>>();
        let shared = Arc::clone(&shared);
        let service = service.clone();
        let mut seats = Seats {
            spread: Arc::clone(&spread),
            me: i,
            inbox,
        };
        let spawned = std::thread::Builder::new()
            .name(format!("switchyard-server-{i}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        rt.block_on(async move {
                            let listener = TcpListener::from_std(listener)?;
                            let deadline =
                                accept_loop(&listener, &shared, service.clone(), Some(&mut seats))
                                    .await;
                            drop(listener);
                            seats.close(&shared, &service);
                            finish(&shared, deadline).await;
                            Ok(())
                        })
                    });
                let _ = tx.send(result);
            });
        match spawned {
            Ok(_) => done.push(rx),
            Err(e) => {
                // The threads already started stop with the shutdown.
                drop(abandon);
                return Err(e);
            }
        }
    }
    let mut result = Ok(());
    for rx in done {
        // A thread that panicked dropped its sender.
        let outcome = rx
            .await
            .unwrap_or_else(|_| Err(io::Error::other("a serving thread panicked")));
        if result.is_ok()
            && let Err(e) = outcome
        {
            // Stop the others too.
            ServerHandle {
                shared: Arc::clone(&shared),
            }
            .shutdown(Duration::ZERO);
            result = Err(e);
        }
    }
    abandon.1 = true;
    result
}

/// One accepted connection: refused over the cap, else served on a task
/// of its own, holding its `seat` in its thread's count until closed.
fn accept<S, B>(
    shared: &Arc<Shared>,
    service: &S,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    seat: Option<Seat>,
) where
    S: Serves<B>,
    B: ServedBody,
{
    let counters = &shared.counters;
    if counters.active.load(Ordering::Acquire) >= shared.limits.max_connections {
        return refuse_over_cap(shared, stream);
    }
    counters.active.fetch_add(1, Ordering::AcqRel);
    counters.accepted.fetch_add(1, Ordering::Relaxed);
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().unwrap_or(shared.local);
    let state = Arc::new(ConnState::new(Arc::clone(&shared.counters)));
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    shared
        .conns
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, Arc::downgrade(&state));
    // From here on, dropping the stream counts the connection closed.
    let io = Io::new(stream, Arc::clone(&state), Arc::clone(shared), id, seat);
    tokio::spawn(conn::serve(
        Arc::clone(shared),
        state,
        io,
        service.clone(),
        peer,
        local,
    ));
}

/// A connection refused over the cap: counted, and closed.
fn refuse_over_cap(shared: &Shared, stream: tokio::net::TcpStream) {
    shared
        .counters
        .refused_over_cap
        .fetch_add(1, Ordering::Relaxed);
    drop(stream);
}

/// A connection handed from the thread that accepted it to the one that
/// serves it, with its seat there.
type Handed = (std::net::TcpStream, SocketAddr, Seat);

/// The serving threads' open connections, and a way to hand each thread a
/// connection another accepted. A new connection goes to the thread with
/// the fewest open (haproxy's rule for its threads), not wherever the
/// kernel's hash of its addresses put it (`SO_REUSEPORT`: with 64
/// keep-alive connections over two threads, 36 and 28 is common, and the
/// busier thread's requests wait longer) or whichever thread woke first
/// (one shared socket).
struct Spread {
    open: Box<[std::sync::atomic::AtomicUsize]>,
    to: Box<[tokio::sync::mpsc::UnboundedSender<Handed>]>,
}

/// A thread's part in a [`Spread`]: its number and its inbox.
struct Seats {
    spread: Arc<Spread>,
    me: usize,
    inbox: tokio::sync::mpsc::UnboundedReceiver<Handed>,
}

/// A connection's place in its serving thread's count, given back when
/// dropped (when the connection's stream is, or with a connection refused
/// or never served).
pub(crate) struct Seat {
    spread: Arc<Spread>,
    thread: usize,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.spread.open[self.thread].fetch_sub(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Seat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seat")
            .field("thread", &self.thread)
            .finish()
    }
}

/// A count no thread reaches: a thread that stopped accepting is given
/// no more connections.
const CLOSED: usize = usize::MAX / 2;

impl Spread {
    fn new(threads: usize) -> (Arc<Self>, Vec<tokio::sync::mpsc::UnboundedReceiver<Handed>>) {
        let (to, inboxes) = (0..threads)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip::<_, _, Vec<_>, Vec<_>>();
        let open = (0..threads).map(|_| Default::default()).collect();
        let spread = Spread {
            open,
            to: to.into_boxed_slice(),
        };
        (Arc::new(spread), inboxes)
    }

    /// A seat on the thread with the fewest open connections (`me` unless
    /// another has fewer than it), and how many seats all the threads
    /// held before it: the connections served and those on their way to
    /// a thread, which the server's cap counts before they are served.
    fn seat(self: &Arc<Self>, me: usize) -> (Seat, usize) {
        let mut thread = me;
        let mut least = self.open[me].load(Ordering::Relaxed);
        let mut held = 0;
        for (i, open) in self.open.iter().enumerate() {
            let open = open.load(Ordering::Relaxed);
            // A stopped thread's count is `CLOSED` over its seats.
            held += open % CLOSED;
            if open < least {
                (thread, least) = (i, open);
            }
        }
        (self.seat_on(thread), held)
    }

    /// A seat on `thread`, whatever the others hold.
    fn seat_on(self: &Arc<Self>, thread: usize) -> Seat {
        self.open[thread].fetch_add(1, Ordering::Relaxed);
        Seat {
            spread: Arc::clone(self),
            thread,
        }
    }
}

impl Seats {
    /// A connection this thread accepted: served here, or handed to the
    /// thread with fewer open.
    fn place<S, B>(
        &self,
        shared: &Arc<Shared>,
        service: &S,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
    ) where
        S: Serves<B>,
        B: ServedBody,
    {
        let (seat, held) = self.spread.seat(self.me);
        // Over the cap, refused here: a connection handed to another
        // thread is not yet among the `active` that `accept` counts.
        if held >= shared.limits.max_connections {
            return refuse_over_cap(shared, stream);
        }
        if seat.thread == self.me {
            return accept(shared, service, stream, peer, Some(seat));
        }
        // Off this thread's reactor, onto the other's when it takes it.
        let Ok(stream) = stream.into_std() else {
            return;
        };
        if let Err(returned) = self.spread.to[seat.thread].send((stream, peer, seat)) {
            // That thread has stopped: served here after all.
            let (stream, peer, _) = returned.0;
            let seat = self.spread.seat_on(self.me);
            serve_handed(shared, service, (stream, peer, seat));
        }
    }

    /// This thread stops accepting: no more connections are handed to it,
    /// and those handed already are served.
    fn close<S, B>(&mut self, shared: &Arc<Shared>, service: &S)
    where
        S: Serves<B>,
        B: ServedBody,
    {
        self.spread.open[self.me].fetch_add(CLOSED, Ordering::Relaxed);
        self.inbox.close();
        while let Ok(handed) = self.inbox.try_recv() {
            serve_handed(shared, service, handed);
        }
    }
}

/// [`accept`] for a connection handed over from another thread's reactor
/// (or back from a thread that stopped): registered with this thread's
/// first.
fn serve_handed<S, B>(shared: &Arc<Shared>, service: &S, (stream, peer, seat): Handed)
where
    S: Serves<B>,
    B: ServedBody,
{
    // Fails only if the reactor cannot take it (out of memory, say): the
    // connection closes, as one the listener could not accept.
    if let Ok(stream) = tokio::net::TcpStream::from_std(stream) {
        accept(shared, service, stream, peer, Some(seat));
    }
}

// === impl ServerHandle ===

/// Shuts a [`Server`] down, reads its counters, reloads its certificate.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Starts a graceful shutdown with `deadline` to finish (see the
    /// [module docs](self#shutdown)); [`Server::serve`] returns when it has.
    /// A second call keeps the earlier deadline.
    pub fn shutdown(&self, deadline: Duration) {
        let at = Instant::now() + deadline;
        self.shared.phase.send_if_modified(|phase| match phase {
            Phase::Serving => {
                *phase = Phase::Draining(at);
                true
            }
            _ => false,
        });
    }

    /// [`shutdown`](Self::shutdown) with the configured deadline
    /// ([`ServerConfig::shutdown_timeout_ms`], 30 s by default).
    pub fn shutdown_default(&self) {
        self.shutdown(self.shared.limits.shutdown_timeout);
    }

    /// Whether a shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        !matches!(*self.shared.phase.borrow(), Phase::Serving)
    }

    /// The server's counters now.
    pub fn stats(&self) -> ServerStats {
        self.shared.counters.snapshot()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// Reads the certificate and key files again: new connections get what
    /// they hold now, open ones keep theirs. On an error the certificate in
    /// use stays. Without TLS, does nothing.
    pub fn reload_tls(&self) -> Result<(), ServerError> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.shared.tls {
            return tls.reload().map_err(ServerError::Tls);
        }
        Ok(())
    }
}
