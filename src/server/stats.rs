//! What the server counts.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The live counters, shared by the accept loop, the connections and the
/// bodies.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) active: AtomicUsize,
    pub(crate) refused_over_cap: AtomicU64,
    pub(crate) header_timeouts: AtomicU64,
    pub(crate) idle_closed: AtomicU64,
    pub(crate) body_timeouts: AtomicU64,
    pub(crate) tls_handshake_failures: AtomicU64,
    /// Requests answered with the server's 500 because the service
    /// panicked.
    pub(crate) panics: AtomicU64,
    /// Requests handed to the service: each serving thread's own count
    /// (every request adds to it).
    pub(crate) requests: crate::per_thread::Counters<1>,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ServerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerStats {
            accepted: get(&self.accepted),
            active: self.active.load(Ordering::Relaxed),
            refused_over_cap: get(&self.refused_over_cap),
            header_timeouts: get(&self.header_timeouts),
            idle_closed: get(&self.idle_closed),
            body_timeouts: get(&self.body_timeouts),
            tls_handshake_failures: get(&self.tls_handshake_failures),
            panics: get(&self.panics),
            requests: self.requests.get(0),
        }
    }
}

/// A snapshot of a server's counters (see
/// [`ServerHandle::stats`](super::ServerHandle::stats)). Every count but
/// `active` only grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections accepted and kept (those refused over the cap are not
    /// counted here).
    pub accepted: u64,
    /// Connections open now, upgraded ones (WebSockets) included.
    pub active: usize,
    /// Connections accepted and closed at once because `max_connections`
    /// were open.
    pub refused_over_cap: u64,
    /// Connections closed because a request head (or the TLS handshake,
    /// or HTTP/2's preface) took longer than the header read timeout.
    pub header_timeouts: u64,
    /// Connections closed after the idle timeout with no request in
    /// flight.
    pub idle_closed: u64,
    /// Request bodies cut because they stopped arriving for longer than
    /// the body idle timeout.
    pub body_timeouts: u64,
    /// TLS handshakes that failed (not counting those that timed out).
    pub tls_handshake_failures: u64,
    /// Requests handed to the service.
    pub requests: u64,
    /// Requests the service panicked on: in `poll_ready`, `call` or its
    /// future, each answered with the server's 500 and its connection
    /// closed, or in the response body, after the head went out, which
    /// cuts its connection (over HTTP/2, resets its stream; see the
    /// [module docs](super)). Also the panics a layer answered in its own
    /// shape (`model::OpenAiErrors` on AI routes).
    /// Anything but zero is a bug to look into.
    pub panics: u64,
}
