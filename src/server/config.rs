//! The server's limits as plain serde data (`[server]` in a gateway's
//! TOML), and what they resolve to.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The server's limits and TLS, as plain data: `[server]` in a gateway's
/// configuration, or built in code. Every field has a safe default (see
/// each); timeouts are in milliseconds, and `0` turns a timeout off.
///
/// ```
/// use switchyard::server::ServerConfig;
///
/// let config: ServerConfig = toml::from_str(r#"
///     header_read_timeout_ms = 10000
///     max_connections = 2000
/// "#)?;
/// assert_eq!(config.header_read_timeout_ms, 10_000);
/// assert_eq!(config.idle_timeout_ms, ServerConfig::default().idle_timeout_ms);
/// # Ok::<(), toml::de::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// How long a client may take to send a request head, from the first
    /// byte of it (from the connection's accept, for its first request,
    /// which includes the TLS handshake and HTTP/2's preface): 30000 (30 s)
    /// by default, nginx's and Envoy's order. A connection that misses it
    /// is closed (slowloris).
    pub header_read_timeout_ms: u64,
    /// How long a connection with no request in flight may stay open
    /// waiting for the next one (HTTP/1.1 keep-alive, an HTTP/2 connection
    /// with no open stream): 60000 (60 s) by default. HTTP/1.1 connections
    /// are closed, HTTP/2 ones sent a GOAWAY.
    pub idle_timeout_ms: u64,
    /// How long a request body may stop arriving while the service waits
    /// for it: 30000 (30 s) by default. The service sees a body error; the
    /// client gets a `408` (problem+json) if no response has started, and
    /// the connection is closed.
    pub body_idle_timeout_ms: u64,
    /// The largest request head (request line and headers) in bytes:
    /// 65536 (64 KiB) by default, at least 8192. A larger one is answered
    /// `431`. For HTTP/2, the largest header list.
    pub max_head_bytes: usize,
    /// The most header fields in an HTTP/1.1 request head: 100 by default
    /// (a head with more is answered `431`).
    pub max_headers: usize,
    /// The most connections open at once, upgraded ones (WebSockets)
    /// included: 10000 by default. A connection over the cap is accepted
    /// and closed at once (counted in
    /// [`ServerStats::refused_over_cap`](super::ServerStats::refused_over_cap)),
    /// so that a flood never stalls the accept loop; clients retry, and
    /// the flood's own connections are closed by `header_read_timeout_ms`.
    pub max_connections: usize,
    /// Accept HTTP/2: h2c (prior knowledge) in clear, ALPN `h2` over TLS.
    /// On by default.
    pub http2: bool,
    /// The most concurrent streams per HTTP/2 connection: 200 by default.
    pub http2_max_concurrent_streams: u32,
    /// The interval of HTTP/2 keep-alive pings the server sends: 20000
    /// (20 s) by default, `0` for none.
    pub http2_keep_alive_interval_ms: u64,
    /// How long an HTTP/2 keep-alive ping may go unanswered before the
    /// connection is closed: 20000 (20 s) by default.
    pub http2_keep_alive_timeout_ms: u64,
    /// How long a graceful shutdown waits for requests in flight and
    /// upgraded connections before closing everything: 30000 (30 s) by
    /// default (what [`ServerHandle::shutdown_default`](super::ServerHandle::shutdown_default) uses).
    pub shutdown_timeout_ms: u64,
    /// Threads of the server's own to serve on. Unset or `0` (the
    /// default): connections are served on the tokio runtime that calls
    /// [`Server::serve`](super::Server::serve). `n`: `n` threads, each
    /// running a single-threaded tokio runtime with a listener of its own
    /// (`SO_REUSEPORT` on Unix), a new connection served by the thread with
    /// the fewest open; nginx's worker model: a connection, its requests and the
    /// upstream connections they use stay on one thread, with no task
    /// moving between threads. What the `gateway` example uses, one per
    /// CPU, when the configuration leaves it unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// TLS termination (feature `tls`): certificate and key from PEM
    /// files. None by default (plain HTTP and h2c).
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            body_idle_timeout_ms: 30_000,
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            http2: true,
            http2_max_concurrent_streams: 200,
            http2_keep_alive_interval_ms: 20_000,
            http2_keep_alive_timeout_ms: 20_000,
            shutdown_timeout_ms: 30_000,
            threads: None,
            tls: None,
        }
    }
}

/// `[server.tls]`: the certificate chain and private key, each a PEM file.
/// Read when the server is built and again on every
/// [`ServerHandle::reload_tls`](super::ServerHandle::reload_tls); a reload
/// serves the new certificate to new connections and leaves open ones
/// alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsConfig {
    /// The PEM file of the certificate, then any intermediates.
    pub cert_file: String,
    /// The PEM file of its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

impl TlsConfig {
    /// The certificate chain in `cert_file`, its key in `key_file`.
    pub fn new(cert_file: impl Into<String>, key_file: impl Into<String>) -> Self {
        Self {
            cert_file: cert_file.into(),
            key_file: key_file.into(),
        }
    }
}

/// The most serving threads a server may have.
const MAX_THREADS: usize = 1024;

/// A timeout in milliseconds, `0` for none.
fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// [`ServerConfig`] resolved into what the connections use.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) body_idle_timeout: Option<Duration>,
    pub(crate) max_head_bytes: usize,
    pub(crate) max_headers: usize,
    pub(crate) max_connections: usize,
    pub(crate) http2: bool,
    pub(crate) http2_max_concurrent_streams: u32,
    pub(crate) http2_keep_alive_interval: Option<Duration>,
    pub(crate) http2_keep_alive_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
    /// Threads of the server's own; `0`: the caller's runtime.
    pub(crate) threads: usize,
}

impl Limits {
    pub(crate) fn from_config(config: &ServerConfig) -> Result<Self, String> {
        if config.max_head_bytes < 8192 {
            return Err(format!(
                "max_head_bytes must be at least 8192 (got {})",
                config.max_head_bytes
            ));
        }
        if config.max_connections == 0 {
            return Err("max_connections must be at least 1".to_owned());
        }
        if config.threads.is_some_and(|n| n > MAX_THREADS) {
            return Err(format!(
                "threads must be at most {MAX_THREADS} (got {})",
                config.threads.unwrap_or_default()
            ));
        }
        if config.http2_max_concurrent_streams == 0 {
            return Err("http2_max_concurrent_streams must be at least 1".to_owned());
        }
        Ok(Self {
            header_read_timeout: millis(config.header_read_timeout_ms),
            idle_timeout: millis(config.idle_timeout_ms),
            body_idle_timeout: millis(config.body_idle_timeout_ms),
            max_head_bytes: config.max_head_bytes,
            max_headers: config.max_headers,
            max_connections: config.max_connections,
            http2: config.http2,
            http2_max_concurrent_streams: config.http2_max_concurrent_streams,
            http2_keep_alive_interval: millis(config.http2_keep_alive_interval_ms),
            http2_keep_alive_timeout: millis(config.http2_keep_alive_timeout_ms)
                .unwrap_or(Duration::from_secs(20)),
            shutdown_timeout: Duration::from_millis(config.shutdown_timeout_ms),
            threads: config.threads.unwrap_or(0),
        })
    }
}
