//! Forwarding to upstream servers (feature `proxy`).
//!
//! (`examples/gateway.rs`, `cargo run --example gateway`: a config-driven gateway forwarding to two upstream servers.)
//!
//! [`Upstream`] is a tower `Service` that sends each request to an upstream
//! base URL over a pooled hyper client (HTTP/1.1 keep-alive, or h2c for
//! gRPC upstreams; with the `tls` feature, `https://` upstreams too, over
//! rustls, HTTP/1.1 or HTTP/2 by ALPN, presenting a client certificate to
//! upstreams that ask for one), with a proxy's manners: hop-by-hop headers removed both
//! ways (never the forwarding headers, whatever `Connection` names; see
//! [`crate::ingress`] for the step a gateway runs first), `X-Forwarded-For`
//! appended (or, at the edge, replaced: [`ForwardedFor`]), `X-Real-IP` set
//! to the peer, `X-Forwarded-Proto` set to what this hop saw (`https`
//! over TLS, as the server's [`ConnectionInfo`](crate::conn::ConnectionInfo)
//! says) or what a [trusted proxy](UpstreamBuilder::trusted_proxies) in
//! front saw, `X-Forwarded-Host` set, `Host` set to the upstream, bodies and
//! trailers streamed both ways, and failures answered as problem+json
//! (502 when the upstream cannot be reached, 504 when it does not answer
//! in time: [`DEFAULT_RESPONSE_TIMEOUT`], 15 s, after the request is sent,
//! by default) so that a [`Split`](crate::split::Split) counts them against
//! the target. The details a client reads are generic ("upstream
//! unavailable"); the upstream's URL and the error go to the log
//! (`tracing`, at `WARN`). Circuit breakers
//! ([`UpstreamBuilder::max_in_flight`], [`UpstreamBuilder::max_pending`])
//! answer 503 with `Retry-After` instead of piling requests on an upstream
//! that has stopped answering.
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
//! Protocol upgrades (`Connection: upgrade` / `Upgrade: x` requests over
//! HTTP/1.1, for the protocols allowed: `websocket` by default,
//! [`UpstreamBuilder::upgrade_protocols`]; never `h2c`) are asked of the
//! upstream too; when
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

use std::sync::atomic::{AtomicU64, Ordering};

use crate::body::{InFlightGuard, ResponseBody};
use crate::future::Rejection;
use crate::key::TrustedProxies;
use crate::problem::Problem;

mod builder;
mod changes;
mod endpoints;
mod forward;
mod future;
mod health;
mod pool;
mod tunnel;

pub use builder::UpstreamBuilder;
pub use changes::{EndpointChanges, EndpointSpec, WeakUpstream};
pub use endpoints::{Balance, Draining, EndpointStats};
use endpoints::{Ejection, Endpoints};
pub use forward::remove_hop_by_hop;
pub use future::ResponseFuture;
use future::{Retry, answer};
pub use health::HealthCheck;
use tunnel::upgrade_request;

pub(crate) use pool::Checkin;

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

/// The connector under the pool: plain TCP, or TCP then rustls for
/// `https://` upstreams.
#[cfg(not(feature = "tls"))]
type Connector = HttpConnector;
#[cfg(feature = "tls")]
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// An upstream's connection pools: one per thread that sends requests.
///
/// A connection's task runs on the runtime that opened it; a request sent
/// on another thread would cross threads twice (there and back). With a
/// pool per thread, a server with threads of its own
/// ([`ServerBuilder::threads`](crate::server::ServerBuilder::threads))
/// serves a proxied request on one thread from end to end, and threads
/// never contend for a pool's lock. On a work-stealing runtime a task may
/// still move between threads; its connections were the thread's it
/// started on.
struct Clients {
    builder: hyper_util::client::legacy::Builder,
    connector: Connector,
    pools: thread_local::ThreadLocal<Client<Connector, ProxyBody>>,
}

impl Clients {
    fn new(builder: hyper_util::client::legacy::Builder, connector: Connector) -> Self {
        Self {
            builder,
            connector,
            pools: thread_local::ThreadLocal::new(),
        }
    }

    /// The calling thread's pool.
    #[inline]
    fn get(&self) -> &Client<Connector, ProxyBody> {
        self.pools
            .get_or(|| self.builder.build(self.connector.clone()))
    }
}

/// Forwards requests to an upstream: one server, or several taking turns.
/// See the [module docs](self).
///
/// Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    /// The URL it was built with.
    url: String,
    scheme: Scheme,
    endpoints: Endpoints,
    /// The URL's path, without a trailing `/`, put before every request
    /// path.
    prefix: String,
    clients: Clients,
    /// Plain `http://` HTTP/1.1 upstreams: the lean pool, instead of
    /// `clients` (which health checks still use).
    pool: Option<Arc<pool::Pool>>,
    response_timeout: Option<Duration>,
    preserve_host: bool,
    forwarded: bool,
    /// `X-Real-IP` written ([`UpstreamBuilder::real_ip_header`]).
    real_ip: bool,
    http2: bool,
    upgrade_idle_timeout: Option<Duration>,
    /// The protocols an `Upgrade` may ask for (lowercase names).
    upgrade_protocols: Vec<String>,
    /// The peers whose `X-Forwarded-*` this upstream believes.
    trusted: Option<TrustedProxies>,
    forwarded_for: ForwardedFor,
    limits: Limits,
}

/// The circuit breakers of an upstream and their counters.
#[derive(Default)]
struct Limits {
    max_in_flight: Option<u64>,
    max_pending: Option<u64>,
    /// Requests waiting for their response head.
    pending: Arc<AtomicU64>,
    rejected_in_flight: AtomicU64,
    rejected_pending: AtomicU64,
}

/// How an [`Upstream`] writes `X-Forwarded-For`
/// ([`UpstreamBuilder::forwarded_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ForwardedFor {
    /// Append the peer's address to whatever list the request carries (the
    /// default: behind a load balancer that appends, the list is the whole
    /// chain).
    #[default]
    Append,
    /// At the edge: a peer that is not a [trusted
    /// proxy](UpstreamBuilder::trusted_proxies) is the client, and any
    /// `X-Forwarded-For` (and, with the `Forwarded` header on, any
    /// `Forwarded`) it sent is replaced by its own address; a trusted
    /// peer's list is appended to.
    Replace,
}

/// An [`Upstream`]'s circuit-breaker counters ([`Upstream::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct UpstreamStats {
    /// Requests in flight on every endpoint (until their response body
    /// ends).
    pub in_flight: u64,
    /// Requests sent and waiting for their response head.
    pub pending: u64,
    /// Requests answered 503 because `max_in_flight` were in flight.
    pub rejected_in_flight: u64,
    /// Requests answered 503 because `max_pending` were waiting.
    pub rejected_pending: u64,
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
    /// An upstream with the default settings (5 s connect timeout, 15 s
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
            response_timeout: Some(DEFAULT_RESPONSE_TIMEOUT),
            http2: false,
            preserve_host: false,
            forwarded: false,
            real_ip: true,
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 64,
            upgrade_idle_timeout: Some(Duration::from_secs(300)),
            upgrade_protocols: vec!["websocket".to_owned()],
            trusted: None,
            forwarded_for: ForwardedFor::Append,
            max_in_flight: None,
            max_pending: None,
            #[cfg(feature = "tls")]
            roots_pem: None,
            #[cfg(feature = "tls")]
            client_auth: None,
        }
    }

    /// The upstream's URL: the one it was built with (its first
    /// endpoint's, or for an upstream whose endpoints are discovered, the
    /// scheme and path they share).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Each endpoint's counters and whether it is in service: those in
    /// the set in the order they joined it, then those that left it and
    /// are [draining](EndpointStats::draining).
    pub fn endpoints(&self) -> Vec<EndpointStats> {
        self.inner.endpoints.stats()
    }

    /// The upstream's in-flight and pending requests, and those its circuit
    /// breakers ([`UpstreamBuilder::max_in_flight`],
    /// [`UpstreamBuilder::max_pending`]) refused.
    pub fn stats(&self) -> UpstreamStats {
        let limits = &self.inner.limits;
        UpstreamStats {
            in_flight: self.inner.in_flight(),
            pending: limits.pending.load(Ordering::Relaxed),
            rejected_in_flight: limits.rejected_in_flight.load(Ordering::Relaxed),
            rejected_pending: limits.rejected_pending.load(Ordering::Relaxed),
        }
    }
}

/// The response timeout of an upstream built without
/// [`UpstreamBuilder::response_timeout`]: 15 s, as Envoy's route timeout.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

impl Inner {
    /// Requests in flight on every endpoint, those draining included.
    fn in_flight(&self) -> u64 {
        self.endpoints.in_flight()
    }

    /// Takes a place among the pending requests, or says which breaker is
    /// open.
    fn admit(&self) -> Result<InFlightGuard, &'static str> {
        let limits = &self.limits;
        if let Some(max) = limits.max_in_flight
            && self.in_flight() >= max
        {
            limits.rejected_in_flight.fetch_add(1, Ordering::Relaxed);
            return Err("too many requests in flight to the upstream");
        }
        let pending = InFlightGuard::new(&limits.pending);
        if let Some(max) = limits.max_pending
            && limits.pending.load(Ordering::Relaxed) > max
        {
            limits.rejected_pending.fetch_add(1, Ordering::Relaxed);
            return Err("too many requests waiting for the upstream");
        }
        Ok(pending)
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
        self.call_ref(req)
    }
}

impl Upstream {
    /// [`Service::call`] without `&mut`: an upstream is always ready and
    /// its state is shared, so an owner that shares one (a gateway route's
    /// split) calls it in place, neither cloning it nor waiting for it.
    pub(crate) fn call_ref<B>(&self, req: Request<B>) -> ResponseFuture
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = Arc::clone(&self.inner);
        let (mut parts, body) = req.into_parts();
        let Some(endpoint) = inner.endpoints.pick() else {
            let grpc = crate::grpc::is_grpc(&parts.headers);
            // Every endpoint has left (a discovery source listing none).
            let res = Rejection::new(
                Problem::new(StatusCode::SERVICE_UNAVAILABLE)
                    .detail("the upstream has no endpoints"),
            )
            .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            .grpc(grpc)
            .into_response();
            return ResponseFuture::answered(res, inner, grpc);
        };
        // The pool's HTTP/1.1 connections are to the endpoint itself: the
        // request goes in origin form, as it would be written.
        let origin_form = inner.pool.is_some() && parts.method != http::Method::CONNECT;
        let Some(uri) = inner.upstream_uri(&parts.uri, &endpoint, origin_form) else {
            let grpc = crate::grpc::is_grpc(&parts.headers);
            let res = answer(
                grpc,
                Problem::new(StatusCode::BAD_REQUEST).detail("invalid request path"),
            );
            return ResponseFuture::answered(res, inner, grpc);
        };
        let pending = match inner.admit() {
            Ok(pending) => pending,
            Err(why) => {
                let grpc = crate::grpc::is_grpc(&parts.headers);
                let res = Rejection::new(Problem::new(StatusCode::SERVICE_UNAVAILABLE).detail(why))
                    .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
                    .grpc(grpc)
                    .into_response();
                return ResponseFuture::answered(res, inner, grpc);
            }
        };
        // One pass over the lines: the hop-by-hop ones present, gRPC or
        // not, and the client's `Host`, made the endpoint's in place
        // unless it is to be kept.
        let head = forward::scan_request(
            &mut parts.headers,
            (!inner.preserve_host).then_some(&endpoint.host),
        );
        let grpc = head.grpc;
        let client_host = head.host.or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });

        // A protocol upgrade (WebSocket) the client's connection can make:
        // ask the upstream for it too, and tunnel once both sides agree.
        let upgrade = if head.hop_by_hop & forward::UPGRADE_BIT != 0 {
            upgrade_request(&inner, &mut parts)
        } else {
            None
        };
        forward::remove_present(&mut parts.headers, true, head.hop_by_hop);
        if let Some((protocol, _)) = &upgrade {
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(header::UPGRADE, protocol.clone());
        }
        inner.add_forwarded(
            &mut parts.headers,
            &parts.extensions,
            client_host.as_ref(),
            head.real_ip,
        );
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
        // The response timeout starts once the request is sent: at once
        // for a head alone, else when the client's body has ended.
        let (body, body_done) = if body.is_end_stream() {
            (box_body(body), None)
        } else {
            let (body, done) = future::SentBody::wrap(box_body(body));
            (body, Some(done))
        };
        let req = Request::from_parts(parts, body);
        // `Host` is set here unless the pass above set it.
        let sent = inner.send_request(Arc::clone(&endpoint), req, endpoint_host && !head.host_set);
        ResponseFuture::sent(
            sent, inner, grpc, upgrade, endpoint, retry, pending, body_done,
        )
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
    use crate::body::{RequestBody, ResponseBody};
    /// The body in `slot` if it is a `T`.
    fn take<T: 'static>(slot: &mut dyn std::any::Any) -> Option<T> {
        slot.downcast_mut::<Option<T>>()?.take()
    }
    let mut slot = Some(body);
    if let Some(boxed) = take::<ProxyBody>(&mut slot) {
        // `B` is `ProxyBody`: hand it on as it is.
        return boxed;
    }
    // A layer's body that only passes a boxed one through (a layer of a
    // gateway's route that let the request by): the boxed one, rather
    // than a box around a wrapper around it, for each layer of the route.
    if let Some(body) = take::<ResponseBody<ProxyBody>>(&mut slot) {
        return body.into_passthrough().unwrap_or_else(|b| b.boxed_unsync());
    }
    if let Some(body) = take::<RequestBody<ProxyBody>>(&mut slot) {
        return body.into_passthrough().unwrap_or_else(|b| b.boxed_unsync());
    }
    slot.map(|body| body.map_err(Into::into).boxed_unsync())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    use super::{ProxyBody, box_body};
    use crate::body::{RequestBody, ResponseBody};

    fn boxed(text: &'static str) -> ProxyBody {
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    async fn text(body: ProxyBody) -> Bytes {
        body.collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn box_body_unwraps_a_pass_through_and_keeps_the_rest() {
        assert_eq!(text(box_body(boxed("as is"))).await, "as is");
        assert_eq!(
            text(box_body(ResponseBody::new(boxed("inner")))).await,
            "inner"
        );
        assert_eq!(
            text(box_body(RequestBody::new(boxed("inner")))).await,
            "inner"
        );
        // A body a layer holds is not a pass-through: boxed with what it holds.
        let held: ResponseBody<ProxyBody> = ResponseBody::full("held");
        assert_eq!(text(box_body(held)).await, "held");
        assert_eq!(
            text(box_body(Full::new(Bytes::from("other")))).await,
            "other"
        );
    }
}
