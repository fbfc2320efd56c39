//! The collector of [`switchyard::server`](crate::server)'s counters.

use std::fmt;

use prometheus_client::encoding::DescriptorEncoder;

use super::{LabelSet, counter, gauge, row, signed};
use crate::server::{ServerHandle, ServerStats};

/// A [`Server`](crate::server::Server)'s counters, read from its
/// [`ServerHandle`] when scraped (see [`ServerStats`]):
///
/// | family | what |
/// | --- | --- |
/// | `switchyard_server_connections_active` | connections open now (gauge) |
/// | `switchyard_server_connections_accepted_total` | connections accepted and kept |
/// | `switchyard_server_connections_refused_total` | connections closed at once over `max_connections` |
/// | `switchyard_server_header_timeouts_total` | connections closed by the header read timeout |
/// | `switchyard_server_idle_closed_total` | connections closed by the idle timeout |
/// | `switchyard_server_body_timeouts_total` | request bodies cut by the body idle timeout |
/// | `switchyard_server_tls_handshake_failures_total` | TLS handshakes that failed |
/// | `switchyard_server_requests_total` | requests handed to the service |
/// | `switchyard_server_panics_total` | requests the service panicked on (each answered with a 500, or, in its response body, cut short) |
///
/// ```
/// use std::convert::Infallible;
/// use http::Response;
/// use prometheus_client::registry::Registry;
/// use switchyard::prometheus::ServerCollector;
/// use switchyard::server::Server;
/// use tower::service_fn;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Server::builder().bind("127.0.0.1:0").await?;
/// let mut registry = Registry::default();
/// registry.register_collector(Box::new(ServerCollector::new(
///     server.handle(),
///     [("server", "public")],
/// )));
/// let handle = server.handle();
/// let app = service_fn(|_req| async { Ok::<_, Infallible>(Response::new(String::from("ok"))) });
/// let serving = tokio::spawn(server.serve(app));
///
/// let mut text = String::new();
/// prometheus_client::encoding::text::encode(&mut text, &registry)?;
/// assert!(text.contains("switchyard_server_connections_active{server=\"public\"} 0\n"));
/// assert!(text.contains("switchyard_server_panics_total{server=\"public\"} 0\n"));
/// handle.shutdown(std::time::Duration::from_secs(1));
/// serving.await??;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct ServerCollector {
    servers: Vec<(LabelSet, ServerHandle)>,
}

impl ServerCollector {
    /// The counters of the server behind `handle`, labelled `labels`.
    pub fn new(handle: ServerHandle, labels: impl Into<LabelSet>) -> Self {
        Self::default().with(handle, labels)
    }

    /// Adds another server (an admin listener, say) to the same families.
    pub fn with(mut self, handle: ServerHandle, labels: impl Into<LabelSet>) -> Self {
        self.servers.push((labels.into(), handle));
        self
    }
}

/// A counter family of one of [`ServerStats`]' counts.
type Count = (&'static str, &'static str, fn(&ServerStats) -> u64);

const COUNTS: [Count; 8] = [
    (
        "switchyard_server_connections_accepted_total",
        "Connections accepted and kept.",
        |s| s.accepted,
    ),
    (
        "switchyard_server_connections_refused_total",
        "Connections closed at once because max_connections were open.",
        |s| s.refused_over_cap,
    ),
    (
        "switchyard_server_header_timeouts_total",
        "Connections closed because a request head, TLS handshake or HTTP/2 preface took longer than the header read timeout.",
        |s| s.header_timeouts,
    ),
    (
        "switchyard_server_idle_closed_total",
        "Connections closed after the idle timeout with no request in flight.",
        |s| s.idle_closed,
    ),
    (
        "switchyard_server_body_timeouts_total",
        "Request bodies cut because they stopped arriving for longer than the body idle timeout.",
        |s| s.body_timeouts,
    ),
    (
        "switchyard_server_tls_handshake_failures_total",
        "TLS handshakes that failed (not those that timed out).",
        |s| s.tls_handshake_failures,
    ),
    (
        "switchyard_server_requests_total",
        "Requests handed to the service.",
        |s| s.requests,
    ),
    (
        "switchyard_server_panics_total",
        "Requests the service panicked on, each answered with the server's 500 or, when its response body panicked, cut short.",
        |s| s.panics,
    ),
];

impl crate::prometheus::EncodeInto for ServerCollector {
    fn encode_into(&self, enc: &mut DescriptorEncoder<'_>) -> fmt::Result {
        // Each server read once, so that its families agree.
        let read: Vec<(&LabelSet, ServerStats)> =
            self.servers.iter().map(|(l, h)| (l, h.stats())).collect();
        gauge(
            enc,
            "switchyard_server_connections_active",
            "Connections open now, upgraded ones (WebSockets) included.",
            read.iter()
                .map(|(l, s)| (row(l, []), signed(s.active as u64))),
        )?;
        for (name, help, get) in COUNTS {
            counter(
                enc,
                name,
                help,
                read.iter().map(|(l, s)| (row(l, []), get(s))),
            )?;
        }
        Ok(())
    }
}

crate::prometheus::collector!(ServerCollector);
