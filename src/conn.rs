//! What a server knows about the connection a request came on.
//!
//! A server (such as `switchyard::server`) inserts one [`ConnectionInfo`]
//! into every request's extensions, beside the peer's [`SocketAddr`] (which
//! is what [`KeyBy::peer_ip`](crate::key::KeyBy::peer_ip) reads). Layers
//! that must know whether the client reached the gateway over TLS (the
//! proxy's `X-Forwarded-Proto`, for one) read it from there.
//!
//! ```
//! use switchyard::conn::ConnectionInfo;
//!
//! let mut req = http::Request::new(());
//! req.extensions_mut().insert(ConnectionInfo::new(
//!     "192.0.2.7:50000".parse()?,
//!     "127.0.0.1:8443".parse()?,
//!     true,
//! ));
//! let info = req.extensions().get::<ConnectionInfo>().copied();
//! assert_eq!(info.map(|i| i.scheme()), Some("https"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::net::SocketAddr;

/// The connection a request arrived on, as the server that accepted it saw
/// it. Never taken from anything the client sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// The peer's address (the client, or the load balancer in front).
    pub peer: SocketAddr,
    /// The local address the connection was accepted on.
    pub local: SocketAddr,
    /// Whether the connection is TLS (the server terminated it).
    pub tls: bool,
}

impl ConnectionInfo {
    /// A connection from `peer` accepted on `local`, `tls` or not.
    pub fn new(peer: SocketAddr, local: SocketAddr, tls: bool) -> Self {
        Self { peer, local, tls }
    }

    /// `"https"` over TLS, else `"http"`: what this hop saw.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}
