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
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName};
use http::uri::{PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::Service;

use crate::body::{InFlightGuard, ResponseBody};
use crate::future::Rejection;
use crate::problem::Problem;

mod endpoints;

pub use endpoints::{Balance, EndpointStats};
use endpoints::{Ejection, Endpoint, Endpoints};

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
/// ([`UpstreamBuilder::health_check`]): every `interval`, a `GET` of
/// `path` on each endpoint, passed by a 2xx answer within `timeout` (and,
/// from a gRPC server, without a `grpc-status` other than 0 in its head). An
/// endpoint failing `unhealthy_after` checks in a row is out of service
/// until it passes `healthy_after` in a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    path: String,
    interval: Duration,
    timeout: Duration,
    unhealthy_after: u32,
    healthy_after: u32,
}

impl HealthCheck {
    /// `GET path` (below the upstream's own path), every 5 s, 1 s to
    /// answer, out after 2 failed checks in a row, back after 2 passed.
    pub fn get(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            unhealthy_after: 2,
            healthy_after: 2,
        }
    }

    /// How often each endpoint is checked.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// How long a check may take.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Failed checks in a row that take a healthy endpoint out.
    pub fn unhealthy_after(mut self, checks: u32) -> Self {
        self.unhealthy_after = checks;
        self
    }

    /// Passed checks in a row that bring an unhealthy endpoint back.
    pub fn healthy_after(mut self, checks: u32) -> Self {
        self.healthy_after = checks;
        self
    }
}

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

/// Builds an [`Upstream`]; see [`Upstream::builder`].
#[derive(Debug, Clone)]
pub struct UpstreamBuilder {
    url: String,
    more: Vec<String>,
    ejection: Ejection,
    health_check: Option<HealthCheck>,
    balance: Balance,
    connect_timeout: Option<Duration>,
    response_timeout: Option<Duration>,
    http2: bool,
    preserve_host: bool,
    forwarded: bool,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    upgrade_idle_timeout: Option<Duration>,
    #[cfg(feature = "tls")]
    roots_pem: Option<Vec<u8>>,
    #[cfg(feature = "tls")]
    client_auth: Option<(Vec<u8>, Vec<u8>)>,
}

impl UpstreamBuilder {
    /// Another server of the same upstream (same scheme and path as the
    /// first URL): requests go to the endpoints in turn (round-robin),
    /// skipping those [out of service](Self::eject_after). A request
    /// without a body that cannot reach its endpoint (the connection is
    /// refused or times out, so nothing was sent) is sent once more, to
    /// the next endpoint in service; others get their 502.
    pub fn endpoint(mut self, url: &str) -> Self {
        self.more.push(url.to_owned());
        self
    }

    /// With several [endpoints](Self::endpoint): after `failures`
    /// requests in a row fail on one (it cannot be reached, breaks the
    /// exchange, or does not answer within the response timeout; an
    /// answer, 5xx included, is not a failure unless
    /// [`eject_on_5xx`](Self::eject_on_5xx)), it is out of service for
    /// `duration`, and back in service its first failure takes it out
    /// again (3 failures and 10 s by default, as nginx's `max_fails` and
    /// `fail_timeout` work). With every endpoint out, requests go to the
    /// one that returns first. A single endpoint is never taken out.
    pub fn eject_after(mut self, failures: u32, duration: Duration) -> Self {
        self.ejection.failures = failures;
        self.ejection.duration = duration;
        self
    }

    /// Counts a 5xx answer from an endpoint as a failure towards
    /// [ejection](Self::eject_after), as Envoy's outlier detection does
    /// (off by default: an answer is the upstream speaking). A server of
    /// the version that answers 500 to everything, while the others of the
    /// same version do not, is then taken out. The answer still goes to
    /// the client.
    pub fn eject_on_5xx(mut self, yes: bool) -> Self {
        self.ejection.server_errors = yes;
        self
    }

    /// Checks every endpoint actively, as `check` says, and keeps those
    /// that fail out of service (a single endpoint too: its requests then
    /// still go to it, as they go round when every endpoint fails). The
    /// checks run on a task of the Tokio runtime the upstream is built in
    /// (building outside one is an error) until the upstream and its
    /// clones are dropped. They go through the upstream's connection pool
    /// with `User-Agent: switchyard-health-check`.
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.health_check = Some(check);
        self
    }

    /// How requests are spread over the [endpoints](Self::endpoint):
    /// [`Balance::RoundRobin`] by default, or [`Balance::LeastRequests`].
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }

    /// How long to wait for a TCP connection (5 s by default; `None` waits
    /// as long as the OS does). Past it the client gets a 502.
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the response headers once the request is handed
    /// to the connection pool (no limit by default). Past it the client
    /// gets a 504. When a new connection must be opened first, connecting
    /// counts too (the pool does not say when the request goes out), so
    /// keep it above the connect timeout: an unreachable upstream then
    /// gets its 502. The body is not limited: streams may last.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = Some(timeout);
        self
    }

    /// Speaks HTTP/2 over cleartext (h2c, prior knowledge) to the upstream,
    /// as gRPC servers expect.
    pub fn http2(mut self, yes: bool) -> Self {
        self.http2 = yes;
        self
    }

    /// Passes the client's `Host` header on instead of the upstream's.
    pub fn preserve_host(mut self, yes: bool) -> Self {
        self.preserve_host = yes;
        self
    }

    /// Also adds an RFC 7239 `Forwarded` header.
    pub fn forwarded_header(mut self, yes: bool) -> Self {
        self.forwarded = yes;
        self
    }

    /// How long an idle pooled connection is kept (90 s by default).
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// How many idle connections are kept per upstream (64 by default).
    pub fn pool_max_idle(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = n;
        self
    }

    /// How long an upgraded connection (a WebSocket tunnel) may stay open
    /// with no byte moving either way before the proxy closes both sides
    /// (5 minutes by default, as Envoy's stream idle timeout; `None` keeps
    /// tunnels open until a side closes). A peer that vanished without
    /// closing its connection would otherwise hold the tunnel, its two
    /// sockets and, through a split, its version's in-flight count forever.
    /// Clients that ping more often than this are never cut.
    pub fn upgrade_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.upgrade_idle_timeout = timeout;
        self
    }

    /// Presents this client certificate to `https://` upstreams that ask
    /// for one (mutual TLS; feature `tls`): `chain` holds the certificate
    /// then any intermediates, PEM; `key` its private key, PEM (PKCS#8,
    /// PKCS#1 or SEC1). Both are checked by [`build`](Self::build).
    #[cfg(feature = "tls")]
    pub fn client_certificate_pem(
        mut self,
        chain: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.client_auth = Some((chain.into(), key.into()));
        self
    }

    /// Checks an `https://` upstream's certificate against these root
    /// certificates (PEM, one or more) instead of the system's (feature
    /// `tls`): a private CA, or a self-signed upstream in tests.
    #[cfg(feature = "tls")]
    pub fn root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.roots_pem = Some(pem.into());
        self
    }

    /// Checks the URLs and builds the upstream.
    pub fn build(self) -> Result<Upstream, ProxyError> {
        let (scheme, prefix, first) = parse_url(&self.url)?;
        let mut list = vec![first];
        for url in &self.more {
            let (s, p, endpoint) = parse_url(url)?;
            if s != scheme || p != prefix {
                return Err(ProxyError::InvalidUrl {
                    url: url.clone(),
                    reason: format!(
                        "every endpoint needs the first one's scheme and path (`{}`)",
                        self.url
                    ),
                });
            }
            list.push(endpoint);
        }

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(self.connect_timeout);
        connector.set_nodelay(true);
        #[cfg(feature = "tls")]
        let connector = tls::connector(
            connector,
            scheme == Scheme::HTTPS,
            self.http2,
            self.roots_pem.as_deref(),
            self.client_auth
                .as_ref()
                .map(|(chain, key)| (chain.as_slice(), key.as_slice())),
        )
        .map_err(|reason| ProxyError::Tls {
            url: self.url.clone(),
            reason,
        })?;
        let client = Client::builder(TokioExecutor::new())
            .http2_only(self.http2)
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host)
            .build(connector);
        let checks = match self.health_check {
            None => None,
            Some(check) => {
                let invalid = |reason: &str| ProxyError::HealthCheck {
                    url: self.url.clone(),
                    reason: reason.to_owned(),
                };
                let path = PathAndQuery::try_from(format!("{prefix}{}", check.path))
                    .ok()
                    .filter(|_| check.path.starts_with('/'))
                    .ok_or_else(|| invalid("the path must start with `/` and be a valid path"))?;
                if check.interval.is_zero() || check.timeout.is_zero() {
                    return Err(invalid("the interval and timeout must be above zero"));
                }
                if check.unhealthy_after == 0 || check.healthy_after == 0 {
                    return Err(invalid("the thresholds must be at least 1"));
                }
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|_| invalid("build the upstream inside a Tokio runtime"))?;
                Some((runtime, path, check))
            }
        };
        let upstream = Upstream {
            inner: Arc::new(Inner {
                scheme,
                endpoints: Endpoints::new(list, self.ejection, self.balance),
                prefix,
                client,
                response_timeout: self.response_timeout,
                preserve_host: self.preserve_host,
                forwarded: self.forwarded,
                http2: self.http2,
                upgrade_idle_timeout: self.upgrade_idle_timeout,
            }),
        };
        if let Some((runtime, path, check)) = checks {
            runtime.spawn(health_checks(Arc::downgrade(&upstream.inner), path, check));
        }
        Ok(upstream)
    }
}

/// Checks every endpoint every interval, until the upstream is dropped.
async fn health_checks(upstream: std::sync::Weak<Inner>, path: PathAndQuery, check: HealthCheck) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = upstream.upgrade() else {
            return;
        };
        // Each endpoint on a task of its own, so that one that hangs does
        // not hold the others' checks.
        let probes: Vec<_> = (0..inner.endpoints.len())
            .map(|i| {
                let (inner, path, check) = (Arc::clone(&inner), path.clone(), check.clone());
                tokio::spawn(async move {
                    let passed = inner.probe(i, path, check.timeout).await;
                    inner.endpoints.get(i).checked(
                        passed,
                        check.unhealthy_after,
                        check.healthy_after,
                    );
                })
            })
            .collect();
        drop(inner);
        for probe in probes {
            let _ = probe.await;
        }
    }
}

/// An upstream URL's scheme, path prefix (without a trailing `/`) and
/// endpoint.
fn parse_url(url: &str) -> Result<(Scheme, String, Endpoint), ProxyError> {
    let invalid = |reason: &str| ProxyError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| invalid("no scheme (write http://...)"))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(invalid("the scheme must be http:// or https://"));
    }
    if scheme == Scheme::HTTPS && !cfg!(feature = "tls") {
        return Err(invalid(
            "https:// upstreams need switchyard's `tls` feature",
        ));
    }
    let authority = uri.authority().cloned().ok_or_else(|| invalid("no host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("credentials in the URL are not supported"));
    }
    if uri.query().is_some() {
        return Err(invalid("a query is not allowed in an upstream URL"));
    }
    let host = HeaderValue::from_str(authority.as_str()).map_err(|_| invalid("bad host"))?;
    let prefix = uri.path().trim_end_matches('/').to_owned();
    Ok((
        scheme,
        prefix,
        Endpoint::new(url.to_owned(), authority, host),
    ))
}

pin_project_lite::pin_project! {
    /// The response future of [`Upstream`].
    pub struct ResponseFuture {
        #[pin]
        state: State,
        inner: Arc<Inner>,
        grpc: bool,
        // The protocol asked for and the client's side of the tunnel, for a
        // request asking to switch protocols.
        upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
        // The endpoint the request went to.
        endpoint: usize,
        // The head of a request without a body, to send again to another
        // endpoint if this one cannot be reached.
        retry: Option<Box<Retry>>,
        // The endpoint's in-flight count, handed to the response body.
        guard: Option<InFlightGuard>,
    }
}

/// A request that can be sent again: its head (the body was empty), and
/// whether its `Host` is the endpoint's.
struct Retry {
    parts: http::request::Parts,
    endpoint_host: bool,
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State {
        // Handed to the pool, with the response timeout.
        Timed { #[pin] sent: tokio::time::Timeout<hyper_util::client::legacy::ResponseFuture> },
        // Handed to the pool, no response timeout.
        Sent { #[pin] sent: hyper_util::client::legacy::ResponseFuture },
        // Answered without asking the upstream (taken when polled).
        Answered { res: Option<Response<ResponseBody<Incoming>>> },
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody<Incoming>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let endpoints = &this.inner.endpoints;
            let result = match this.state.as_mut().project() {
                StateProj::Timed { sent } => match std::task::ready!(sent.poll(cx)) {
                    Ok(result) => result,
                    Err(_) => {
                        endpoints.record(*this.endpoint, false);
                        *this.guard = None;
                        let limit = this.inner.response_timeout.unwrap_or_default();
                        return Poll::Ready(Ok(answer(
                            *this.grpc,
                            Problem::new(StatusCode::GATEWAY_TIMEOUT).detail(format!(
                                "upstream {} did not answer within {limit:?}",
                                endpoints.get(*this.endpoint).url
                            )),
                        )));
                    }
                },
                StateProj::Sent { sent } => std::task::ready!(sent.poll(cx)),
                StateProj::Answered { res } => {
                    return Poll::Ready(Ok(res.take().unwrap_or_else(|| {
                        // Polled again after completing: answer, never panic.
                        answer(*this.grpc, Problem::new(StatusCode::INTERNAL_SERVER_ERROR))
                    })));
                }
            };
            let ok = result
                .as_ref()
                .is_ok_and(|res| !endpoints.ejection().fails(res.status()));
            endpoints.record(*this.endpoint, ok);
            let e = match result {
                Ok(res) => {
                    let res = upstream_response(res, this.upgrade.take(), this.inner);
                    return Poll::Ready(Ok(match this.guard.take() {
                        Some(guard) => res.map(|body| body.with_guard(guard)),
                        None => res,
                    }));
                }
                Err(e) => {
                    *this.guard = None;
                    e
                }
            };
            // Nothing was sent: another endpoint may take it.
            if e.is_connect()
                && let Some(next) = endpoints.other_than(*this.endpoint)
                && let Some(retry) = this.retry.take()
            {
                *this.endpoint = next;
                let (state, guard) = this.inner.send(next, retry.parts, retry.endpoint_host);
                this.state.set(state);
                *this.guard = Some(guard);
                continue;
            }
            let url = &endpoints.get(*this.endpoint).url;
            let detail = if e.is_connect() {
                format!("could not connect to upstream {url}")
            } else {
                format!("upstream {url} failed: {}", error_chain(&e))
            };
            return Poll::Ready(Ok(answer(
                *this.grpc,
                Problem::new(StatusCode::BAD_GATEWAY).detail(detail),
            )));
        }
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// A refusal or failure, as problem+json (or a gRPC status to gRPC
/// clients).
fn answer(grpc: bool, problem: Problem) -> Response<ResponseBody<Incoming>> {
    Rejection::new(problem).grpc(grpc).into_response()
}

/// The upstream's response on its way to the client: hop-by-hop headers
/// removed, and the tunnel set up when both sides agreed to switch
/// protocols.
fn upstream_response(
    mut res: Response<Incoming>,
    upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
    inner: &Inner,
) -> Response<ResponseBody<Incoming>> {
    let agreed = upgrade
        .as_ref()
        .and_then(|_| res.headers().get(header::UPGRADE).cloned());
    remove_hop_by_hop(res.headers_mut(), false);
    if let (Some((_, client)), Some(protocol)) = (upgrade, agreed)
        && res.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        // Whatever a layer outside hands this hold lives as long as the
        // tunnel.
        let hold = crate::upgrade::UpgradeHold::new();
        res.extensions_mut().insert(hold.clone());
        tunnel(
            client,
            hyper::upgrade::on(&mut res),
            hold,
            inner.upgrade_idle_timeout,
        );
        let headers = res.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    res.map(ResponseBody::new)
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

impl Inner {
    /// One health check of `endpoint`: a 2xx to `GET path` within
    /// `timeout`.
    async fn probe(&self, endpoint: usize, path: PathAndQuery, timeout: Duration) -> bool {
        const AGENT: HeaderValue = HeaderValue::from_static("switchyard-health-check");
        let e = self.endpoints.get(endpoint);
        let Ok(uri) = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(e.authority.clone())
            .path_and_query(path)
            .build()
        else {
            return false;
        };
        let mut req = Request::new(ProxyBody::default());
        *req.uri_mut() = uri;
        if self.http2 {
            *req.version_mut() = Version::HTTP_2;
        }
        let headers = req.headers_mut();
        headers.insert(header::HOST, e.host.clone());
        headers.insert(header::USER_AGENT, AGENT);
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Ok(Ok(res)) => {
                // A gRPC server answers 200 to anything; a trailers-only
                // error carries its status in the headers.
                let passed = res.status().is_success()
                    && res
                        .headers()
                        .get("grpc-status")
                        .is_none_or(|s| s.as_bytes() == b"0");
                // Read the body (up to 64 KiB), so that the connection can
                // go back to the pool.
                let body = http_body_util::Limited::new(res.into_body(), 64 * 1024);
                let _ = tokio::time::timeout(timeout, body.collect()).await;
                passed
            }
            _ => false,
        }
    }

    /// Hands `req` (its URI already `endpoint`'s) to the pool; the state
    /// to wait in, and the request's count in the endpoint's in-flight.
    fn send_request(
        &self,
        endpoint: usize,
        mut req: Request<ProxyBody>,
        host: bool,
    ) -> (State, InFlightGuard) {
        let e = self.endpoints.get(endpoint);
        if host {
            req.headers_mut().insert(header::HOST, e.host.clone());
        }
        self.endpoints.sent(endpoint);
        let guard = InFlightGuard::new(&e.in_flight);
        let sent = self.client.request(req);
        let state = match self.response_timeout {
            Some(limit) => State::Timed {
                sent: tokio::time::timeout(limit, sent),
            },
            None => State::Sent { sent },
        };
        (state, guard)
    }

    /// Sends the head of a request without a body to `endpoint`.
    fn send(
        &self,
        endpoint: usize,
        mut parts: http::request::Parts,
        host: bool,
    ) -> (State, InFlightGuard) {
        let authority = self.endpoints.get(endpoint).authority.clone();
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.authority = Some(authority);
        parts.uri = Uri::from_parts(uri).unwrap_or_default();
        self.send_request(
            endpoint,
            Request::from_parts(parts, ProxyBody::default()),
            host,
        )
    }

    /// The request's URI on the upstream's `endpoint`; `None` if it cannot
    /// be one.
    fn upstream_uri(&self, uri: &Uri, endpoint: &Endpoint) -> Option<Uri> {
        let pq = if self.prefix.is_empty() {
            // Shares the request's bytes (a server's read buffer) rather
            // than copying them.
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"))
        } else {
            let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
            PathAndQuery::try_from(format!("{}{pq}", self.prefix)).ok()?
        };
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(endpoint.authority.clone())
            .path_and_query(pq)
            .build()
            .ok()
    }

    fn add_forwarded(
        &self,
        headers: &mut HeaderMap,
        peer: Option<IpAddr>,
        host: Option<&HeaderValue>,
    ) {
        const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
        const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
        const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
        if let Some(ip) = peer {
            // Several `X-Forwarded-For` lines are one list (RFC 9110
            // section 5.3): keep all of it, then add the peer.
            let ip = IpText::new(ip);
            let mut priors = headers.get_all(&XFF).iter().filter_map(|v| v.to_str().ok());
            let value = match priors.next() {
                // The usual case: the peer alone, without a `String`.
                None => HeaderValue::from_str(ip.as_str()),
                Some(first) => {
                    let mut value = String::new();
                    for prior in std::iter::once(first).chain(priors) {
                        value.push_str(prior);
                        value.push_str(", ");
                    }
                    value.push_str(ip.as_str());
                    HeaderValue::from_str(&value)
                }
            };
            if let Ok(v) = value {
                headers.insert(XFF, v);
            }
        }
        // What this hop saw, not what the client claims.
        headers.insert(XFP, HeaderValue::from_static("http"));
        match host {
            Some(host) => {
                headers.insert(XFH, host.clone());
            }
            None => {
                headers.remove(XFH);
            }
        }
        if self.forwarded {
            let mut element = String::new();
            if let Some(ip) = peer {
                match ip {
                    IpAddr::V4(v4) => element.push_str(&format!("for={v4}")),
                    IpAddr::V6(v6) => element.push_str(&format!("for=\"[{v6}]\"")),
                }
            }
            if let Some(host) = host.and_then(|h| h.to_str().ok()) {
                if !element.is_empty() {
                    element.push(';');
                }
                element.push_str(&format!("host=\"{host}\""));
            }
            if !element.is_empty() {
                element.push_str(";proto=http");
                if let Ok(v) = HeaderValue::from_str(&element) {
                    headers.append(header::FORWARDED, v);
                }
            }
        }
    }
}

/// An IP address written out as `Display` writes it, on the stack. IPv4,
/// the common case, is written by hand: `IpAddr::to_string` costs a
/// `String` and the formatting machinery on every proxied request (a unit
/// test holds the output to `Display`'s); IPv6 goes through `Display` into
/// the buffer.
struct IpText {
    // The longest IPv6 text is 45 bytes (`ffff:...:255.255.255.255`).
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn new(ip: IpAddr) -> Self {
        let mut text = Self {
            buf: [0; 48],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push(b'.');
                    }
                    if octet >= 100 {
                        text.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.push(b'0' + octet / 10 % 10);
                    }
                    text.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut rest = &mut text.buf[..];
                let _ = write!(rest, "{v6}");
                text.len = 48 - rest.len();
            }
        }
        text
    }

    fn push(&mut self, b: u8) {
        self.buf[self.len] = b;
        self.len += 1;
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits, dots, colons and hex letters were written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// The hop-by-hop headers every proxy removes, whether `Connection` names
/// them or not.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers (RFC 9110 section 7.6.1): `Connection`
/// and the headers it names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`,
/// `Transfer-Encoding`, `Upgrade`. On requests, `TE: trailers` is kept:
/// gRPC needs it end to end.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, request: bool) {
    // Most messages carry none: one pass over the names is cheaper than
    // nine lookups that find nothing.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let te_trailers = request
        && headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// For a request asking to switch protocols (`Connection: upgrade` and an
/// `Upgrade` header, over HTTP/1.1) whose connection can be taken over (it
/// came through a hyper server, which leaves an `OnUpgrade` in the
/// extensions), and an HTTP/1.1 upstream: the protocol asked for and the
/// client side of the tunnel. Otherwise the request goes on as a plain one.
fn upgrade_request(
    inner: &Inner,
    parts: &mut http::request::Parts,
) -> Option<(HeaderValue, hyper::upgrade::OnUpgrade)> {
    if inner.http2 || parts.version != Version::HTTP_11 {
        return None;
    }
    let protocol = parts.headers.get(header::UPGRADE)?.clone();
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    let client = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
    Some((protocol, client))
}

/// Once the client's and the upstream's connections are both handed over
/// (after the 101 reaches the client), copies bytes both ways until either
/// side closes or `idle` passes with no byte moving, then lets `hold` go
/// (and what it holds: a split's in-flight count).
fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    hold: crate::upgrade::UpgradeHold,
    idle: Option<Duration>,
) {
    use hyper_util::rt::TokioIo;
    tokio::spawn(async move {
        let _hold = hold;
        // The upstream's side is ready with the 101; the client's once
        // hyper has written the 101 to it.
        let (Ok(upstream), Ok(client)) = (upstream.await, client.await) else {
            return;
        };
        let _ = splice(TokioIo::new(client), TokioIo::new(upstream), idle).await;
    });
}

/// How a [`splice`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Spliced {
    /// A side closed (or failed).
    Closed,
    /// No byte moved for the idle timeout.
    Idle,
}

/// Copies bytes both ways between `a` and `b` until either closes or, with
/// `idle`, until no byte has moved either way for that long; both are
/// dropped (closed) when it returns.
///
/// Written around tokio's `copy_bidirectional`, which has no idle timeout:
/// each side is wrapped to note the time of its last transfer, and the copy
/// is raced against a deadline moved by those notes.
async fn splice<A, B>(a: A, b: B, idle: Option<Duration>) -> Spliced
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(idle) = idle else {
        let (mut a, mut b) = (a, b);
        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        return Spliced::Closed;
    };
    let activity = Activity::new();
    let mut a = Watched {
        io: a,
        activity: &activity,
    };
    let mut b = Watched {
        io: b,
        activity: &activity,
    };
    let mut copy = std::pin::pin!(tokio::io::copy_bidirectional(&mut a, &mut b));
    loop {
        let deadline = activity.last() + idle;
        if tokio::time::timeout_at(deadline, copy.as_mut())
            .await
            .is_ok()
        {
            return Spliced::Closed;
        }
        if activity.last() + idle <= tokio::time::Instant::now() {
            return Spliced::Idle;
        }
    }
}

/// When a tunnel last moved a byte, in nanoseconds since it began (an
/// atomic only so that the copy future stays `Send`; one task touches it).
struct Activity {
    start: tokio::time::Instant,
    last: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let since = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(since, std::sync::atomic::Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_nanos(self.last.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// One side of a tunnel, noting each transfer in its [`Activity`].
struct Watched<'a, T> {
    io: T,
    activity: &'a Activity,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// The rustls side of `https://` upstreams.
#[cfg(feature = "tls")]
mod tls {
    use std::sync::{Arc, OnceLock};

    use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
    use hyper_util::client::legacy::connect::HttpConnector;
    use rustls::RootCertStore;

    /// The connector for one upstream: TLS (ALPN `h2` or `http/1.1`, as the
    /// upstream is configured) for `https`, plain TCP otherwise.
    pub(super) fn connector(
        mut tcp: HttpConnector,
        https: bool,
        http2: bool,
        roots_pem: Option<&[u8]>,
        client_auth: Option<(&[u8], &[u8])>,
    ) -> Result<HttpsConnector<HttpConnector>, String> {
        // The TLS connector hands `https` URIs to the TCP one.
        tcp.enforce_http(false);
        let roots = match (https, roots_pem) {
            (false, _) => Arc::new(RootCertStore::empty()),
            (true, Some(pem)) => Arc::new(crate::tls::roots_from_pem(pem)?),
            (true, None) => system_roots()?,
        };
        if client_auth.is_some() && !https {
            return Err("a client certificate is presented only to https:// upstreams".into());
        }
        let config = crate::tls::client_config(roots, client_auth)?;
        let builder = HttpsConnectorBuilder::new().with_tls_config(config);
        let builder = if https {
            builder.https_only()
        } else {
            builder.https_or_http()
        };
        Ok(if http2 {
            builder.enable_http2().wrap_connector(tcp)
        } else {
            builder.enable_http1().wrap_connector(tcp)
        })
    }

    /// The system's root certificates, read once per process (reading them
    /// takes milliseconds, and a gateway reload builds every upstream
    /// again).
    fn system_roots() -> Result<Arc<RootCertStore>, String> {
        static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
        ROOTS
            .get_or_init(|| {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let why = found
                        .errors
                        .first()
                        .map_or_else(|| "none found".to_owned(), ToString::to_string);
                    return Err(format!("no usable system root certificates ({why})"));
                }
                Ok(Arc::new(roots))
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::{Instant, sleep};

    use super::{IpText, Spliced, splice};

    #[test]
    fn ip_text_is_what_display_writes() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.9.99.100",
            "255.255.255.255",
            "::",
            "::1",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:10.1.2.3",
            "::10.1.2.3",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }

    /// A client, a tunnel between two in-memory pipes, and a server.
    fn tunnel(
        idle: Option<Duration>,
    ) -> (DuplexStream, tokio::task::JoinHandle<Spliced>, DuplexStream) {
        let (client, a) = tokio::io::duplex(64);
        let (b, server) = tokio::io::duplex(64);
        (client, tokio::spawn(splice(a, b, idle)), server)
    }

    async fn carry(from: &mut DuplexStream, to: &mut DuplexStream, message: &[u8]) {
        from.write_all(message).await.unwrap();
        let mut got = vec![0; message.len()];
        to.read_exact(&mut got).await.unwrap();
        assert_eq!(got, message);
    }

    async fn closed(side: &mut DuplexStream) -> bool {
        let mut byte = [0; 1];
        side.read(&mut byte).await.unwrap() == 0
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_either_way_keeps_a_tunnel_open_and_silence_closes_it() {
        let idle = Duration::from_secs(60);
        let (mut client, task, mut server) = tunnel(Some(idle));
        // Four minutes of talk, 45 s apart: client to server, then server
        // to client only (a stream of pushes), never 60 s of silence.
        for _ in 0..2 {
            sleep(Duration::from_secs(45)).await;
            carry(&mut client, &mut server, b"ping").await;
        }
        for _ in 0..3 {
            sleep(Duration::from_secs(45)).await;
            carry(&mut server, &mut client, b"push").await;
        }
        assert!(!task.is_finished());
        let last = Instant::now();
        assert_eq!(task.await.unwrap(), Spliced::Idle);
        // Closed exactly one idle timeout after the last byte.
        assert_eq!(Instant::now() - last, idle);
        assert!(closed(&mut client).await);
        assert!(closed(&mut server).await);
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_timeout_a_tunnel_lasts_until_a_side_closes() {
        let (mut client, task, mut server) = tunnel(None);
        sleep(Duration::from_secs(24 * 3600)).await;
        carry(&mut client, &mut server, b"still here").await;
        assert!(!task.is_finished());
        // The client's close reaches the server; the tunnel ends when the
        // server closes in turn.
        drop(client);
        assert!(closed(&mut server).await);
        drop(server);
        assert_eq!(task.await.unwrap(), Spliced::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_ends_when_its_sides_close_before_its_idle_timeout() {
        let (mut client, task, server) = tunnel(Some(Duration::from_secs(60)));
        let start = Instant::now();
        sleep(Duration::from_secs(10)).await;
        // The server's close reaches the client (as TCP's half-close
        // would), and the tunnel ends when the client closes in turn.
        drop(server);
        assert!(closed(&mut client).await);
        assert!(!task.is_finished());
        drop(client);
        assert_eq!(task.await.unwrap(), Spliced::Closed);
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
    }
}
