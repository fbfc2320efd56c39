//! Forwarding to upstream servers (feature `proxy`).
//!
//! (`examples/gateway.rs`, `cargo run --example gateway`: a config-driven gateway forwarding to two upstream servers.)
//!
//! [`Upstream`] is a tower `Service` that sends each request to an upstream
//! base URL over a pooled hyper client (HTTP/1.1 keep-alive, or h2c for
//! gRPC upstreams; with the `tls` feature, `https://` upstreams too, over
//! rustls, HTTP/1.1 or HTTP/2 by ALPN, presenting a client certificate to
//! upstreams that ask for one), with a proxy's manners: hop-by-hop headers removed both
//! ways, `X-Forwarded-For` appended, `X-Forwarded-Proto` and
//! `X-Forwarded-Host` set to what this hop saw, `Host` set to the upstream, bodies and
//! trailers streamed both ways, and failures answered as problem+json
//! (502 when the upstream cannot be reached, 504 when it does not answer
//! in time) so that a [`Split`](crate::split::Split) counts them against
//! the target.
//!
//! An upstream may be several servers ([`UpstreamBuilder::endpoint`]):
//! requests take turns among them (round-robin), or go to the one with the
//! fewest requests in flight ([`Balance::LeastRequests`], counting a
//! stream until its last byte), and one that fails
//! requests in a row (cannot be reached, breaks the exchange, or does not
//! answer in time) is out of service for a while
//! ([`UpstreamBuilder::eject_after`]), as nginx's `max_fails` and
//! `fail_timeout` do. A request without a body that cannot connect to its
//! server is sent on to the next one: nothing reached the first, so
//! sending it again is safe whatever its method. Active checks
//! ([`UpstreamBuilder::health_check`], a [`HealthCheck`]: `GET /healthz`
//! on every server every few seconds) keep a server that fails them out
//! of service until it passes again. [`Upstream::endpoints`] reports each
//! server's counters and state.
//!
//! Protocol upgrades (WebSocket, or any `Connection: upgrade` /
//! `Upgrade: x` request over HTTP/1.1) are asked of the upstream too; when
//! it answers 101, the client's and the upstream's connections are joined
//! and bytes are copied both ways until both sides have closed, or until no
//! byte has moved for the idle timeout (five minutes by default,
//! [`UpstreamBuilder::upgrade_idle_timeout`]). That needs the
//! request to come through a hyper server (axum and `hyper-util` leave the
//! connection's upgrade handle in the request's extensions). The tunnel
//! outlives the response; the 101 carries an
//! [`UpgradeHold`](crate::upgrade::UpgradeHold) that lasts as long as the
//! tunnel, with which a [`Split`](crate::split::Split) keeps the request in
//! flight until the connection closes.
//!
//! ```no_run
//! use switchyard::proxy::Upstream;
//! use switchyard::split::Split;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let blue = Upstream::builder("http://10.0.0.1:8080")
//!     .response_timeout(std::time::Duration::from_secs(30))
//!     .build()?;
//! // Green runs on two servers; requests take turns.
//! let green = Upstream::builder("http://10.0.0.2:8080")
//!     .endpoint("http://10.0.0.3:8080")
//!     .build()?;
//! let split = Split::builder()
//!     .target("blue", blue, 100)
//!     .target("green", green, 0)
//!     .build()?;
//! // `split` is a tower Service: serve it with axum or hyper.
//! # Ok(())
//! # }
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header;
use http::uri::Scheme;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::Service;

use crate::body::ResponseBody;
use crate::problem::Problem;

mod builder;
mod endpoints;
mod forward;
mod future;
mod health;
mod tunnel;

pub use builder::UpstreamBuilder;
pub use endpoints::{Balance, EndpointStats};
use endpoints::{Ejection, Endpoints};
pub use forward::remove_hop_by_hop;
pub use future::ResponseFuture;
use future::{Retry, State, answer};
pub use health::HealthCheck;
use tunnel::upgrade_request;

/// A boxed error, as hyper and tower use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body an [`Upstream`] sends: whatever body the request had, boxed.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why an [`Upstream`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The URL does not parse, or is not `http://host[:port][/prefix]`
    /// (or `https://`, with the `tls` feature).
    #[error("invalid upstream URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No root certificates to check an `https://` upstream against: the
    /// PEM given holds none, or the system has none.
    #[error("TLS for upstream `{url}`: {reason}")]
    Tls {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A [`HealthCheck`] that cannot run: a path that is not one, a zero
    /// interval, timeout or threshold, or no Tokio runtime to run in.
    #[error("health check of upstream `{url}`: {reason}")]
    HealthCheck {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
}

/// Active health checks of an upstream's endpoints
/// The connector under the pool: plain TCP, or TCP then rustls for
/// `https://` upstreams.
#[cfg(not(feature = "tls"))]
type Connector = HttpConnector;
#[cfg(feature = "tls")]
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Forwards requests to an upstream: one server, or several taking turns.
/// See the [module docs](self).
///
/// Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    scheme: Scheme,
    endpoints: Endpoints,
    /// The URL's path, without a trailing `/`, put before every request
    /// path.
    prefix: String,
    client: Client<Connector, ProxyBody>,
    response_timeout: Option<Duration>,
    preserve_host: bool,
    forwarded: bool,
    http2: bool,
    upgrade_idle_timeout: Option<Duration>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("url", &self.url())
            .field("endpoints", &self.inner.endpoints.len())
            .field("http2", &self.inner.http2)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// An upstream with the default settings (5 s connect timeout, no
    /// response timeout, HTTP/1.1).
    pub fn new(url: &str) -> Result<Self, ProxyError> {
        Self::builder(url).build()
    }

    /// A builder for the upstream at `url` (`http://host[:port][/prefix]`).
    pub fn builder(url: &str) -> UpstreamBuilder {
        UpstreamBuilder {
            url: url.to_owned(),
            more: Vec::new(),
            ejection: Ejection {
                failures: 3,
                duration: Duration::from_secs(10),
                server_errors: false,
            },
            health_check: None,
            balance: Balance::RoundRobin,
            connect_timeout: Some(Duration::from_secs(5)),
            response_timeout: None,
            http2: false,
            preserve_host: false,
            forwarded: false,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
            upgrade_idle_timeout: Some(Duration::from_secs(300)),
            #[cfg(feature = "tls")]
            roots_pem: None,
            #[cfg(feature = "tls")]
            client_auth: None,
        }
    }

    /// The upstream's URL (its first endpoint's).
    pub fn url(&self) -> &str {
        &self.inner.endpoints.get(0).url
    }

    /// Each endpoint's counters and whether it is in service, in the order
    /// they were given.
    pub fn endpoints(&self) -> Vec<EndpointStats> {
        self.inner.endpoints.stats()
    }
}

impl<B> Service<Request<B>> for Upstream
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<Incoming>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    /// Always ready: the pool opens connections as requests need them.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        let inner = Arc::clone(&self.inner);
        let (mut parts, body) = req.into_parts();
        let grpc = crate::grpc::is_grpc(&parts.headers);
        let endpoint = inner.endpoints.pick();
        let Some(uri) = inner.upstream_uri(&parts.uri, inner.endpoints.get(endpoint)) else {
            let res = answer(
                grpc,
                Problem::new(StatusCode::BAD_REQUEST).detail("invalid request path"),
            );
            return ResponseFuture {
                state: State::Answered { res: Some(res) },
                inner,
                grpc,
                upgrade: None,
                endpoint,
                retry: None,
                guard: None,
            };
        };
        let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let peer = crate::key::peer_ip(&parts.extensions);

        // A protocol upgrade (WebSocket) the client's connection can make:
        // ask the upstream for it too, and tunnel once both sides agree.
        let upgrade = upgrade_request(&inner, &mut parts);
        remove_hop_by_hop(&mut parts.headers, true);
        if let Some((protocol, _)) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        inner.add_forwarded(&mut parts.headers, peer, client_host.as_ref());
        let endpoint_host = !inner.preserve_host || client_host.is_none();
        parts.uri = uri;
        parts.version = if inner.http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };

        // Only with somewhere else to go, and nothing that cannot be
        // repeated (a body, a connection to take over).
        let retry =
            (inner.endpoints.len() > 1 && body.is_end_stream() && upgrade.is_none()).then(|| {
                Box::new(Retry {
                    parts: parts.clone(),
                    endpoint_host,
                })
            });
        let req = Request::from_parts(parts, box_body(body));
        let (state, guard) = inner.send_request(endpoint, req, endpoint_host);
        ResponseFuture {
            state,
            inner,
            grpc,
            upgrade,
            endpoint,
            retry,
            guard: Some(guard),
        }
    }
}

/// `body` boxed, unless it already is: a body a
/// [`Gateway`](crate::gateway::Gateway) or an inner layer boxed goes on as
/// it is (boxing it again would cost an allocation, and an indirection per
/// frame).
pub(crate) fn box_body<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut slot = Some(body);
    if let Some(boxed) = (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<ProxyBody>>() {
        // `B` is `ProxyBody`: hand it on as it is.
        return boxed.take().unwrap_or_default();
    }
    slot.map(|body| body.map_err(Into::into).boxed_unsync())
        .unwrap_or_default()
}
