//! [`UpstreamBuilder`]: an upstream's settings, checked into an [`Upstream`].

use std::sync::Arc;
use std::time::Duration;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::endpoints::{Ejection, Endpoint, Endpoints};
use super::health::health_checks;
use super::{Balance, ForwardedFor, HealthCheck, Inner, Limits, ProxyError, Upstream};
use crate::key::TrustedProxies;

/// Builds an [`Upstream`]; see [`Upstream::builder`].
#[derive(Debug, Clone)]
pub struct UpstreamBuilder {
    pub(super) url: String,
    pub(super) more: Vec<String>,
    pub(super) ejection: Ejection,
    pub(super) health_check: Option<HealthCheck>,
    pub(super) balance: Balance,
    pub(super) connect_timeout: Option<Duration>,
    pub(super) response_timeout: Option<Duration>,
    pub(super) http2: bool,
    pub(super) preserve_host: bool,
    pub(super) forwarded: bool,
    pub(super) real_ip: bool,
    pub(super) pool_idle_timeout: Duration,
    pub(super) pool_max_idle_per_host: usize,
    pub(super) upgrade_idle_timeout: Option<Duration>,
    pub(super) upgrade_protocols: Vec<String>,
    pub(super) trusted: Option<TrustedProxies>,
    pub(super) forwarded_for: ForwardedFor,
    pub(super) max_in_flight: Option<u64>,
    pub(super) max_pending: Option<u64>,
    #[cfg(feature = "tls")]
    pub(super) roots_pem: Option<Vec<u8>>,
    #[cfg(feature = "tls")]
    pub(super) client_auth: Option<(Vec<u8>, Vec<u8>)>,
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

    /// How long to wait for the response headers once the request has
    /// been sent ([`DEFAULT_RESPONSE_TIMEOUT`], 15 s, by default, as
    /// Envoy's). Past it the client gets a 504. The clock starts when the
    /// request's body has ended (at once for a request without one), so a
    /// client's slow upload is never the upstream's timeout. When a new
    /// connection must be opened first, connecting counts too (the pool
    /// does not say when the request goes out), so keep it above the
    /// connect timeout: an unreachable upstream then gets its 502. The
    /// response body is not limited: streams keep flowing after the head.
    ///
    /// [`DEFAULT_RESPONSE_TIMEOUT`]: super::DEFAULT_RESPONSE_TIMEOUT
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = Some(timeout);
        self
    }

    /// Waits for the response headers as long as the upstream takes (no
    /// [response timeout](Self::response_timeout)): only for upstreams that
    /// may think for minutes before they answer.
    pub fn no_response_timeout(mut self) -> Self {
        self.response_timeout = None;
        self
    }

    /// The protocols a client may ask to switch to (`Upgrade`), by name
    /// without case or version: `websocket` by default. A request asking
    /// for another goes on as a plain request without its `Upgrade`.
    /// `h2c` is never passed on, even if listed: a client must not switch
    /// the upstream's connection to HTTP/2 by itself.
    pub fn upgrade_protocols<I, P>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        self.upgrade_protocols = protocols
            .into_iter()
            .map(|p| p.into().to_ascii_lowercase())
            .collect();
        self
    }

    /// The reverse proxies in front whose forwarding headers are believed:
    /// from a peer in these ranges, the client's `X-Forwarded-Proto` and
    /// `X-Real-IP` are passed on (and, with [`ForwardedFor::Replace`], its
    /// `X-Forwarded-For` appended to). From any other peer (and by default,
    /// from every peer), `X-Forwarded-Proto` is what this hop saw (`https`
    /// when the server put a [`ConnectionInfo`](crate::conn::ConnectionInfo)
    /// saying TLS in the request, else `http`) and `X-Real-IP` is the peer.
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = Some(trusted);
        self
    }

    /// How `X-Forwarded-For` is written: appended to
    /// ([`ForwardedFor::Append`], the default) or, at the edge, replaced
    /// when the peer is not a [trusted proxy](Self::trusted_proxies)
    /// ([`ForwardedFor::Replace`]).
    pub fn forwarded_for(mut self, mode: ForwardedFor) -> Self {
        self.forwarded_for = mode;
        self
    }

    /// A circuit breaker: with `max` requests in flight to this upstream
    /// (every endpoint, until their response bodies end), more are
    /// answered 503 with `Retry-After: 1` at once, and counted
    /// ([`Upstream::stats`]). No limit by default. Checked when a request
    /// arrives: requests arriving at the same instant may pass it by a few.
    pub fn max_in_flight(mut self, max: u64) -> Self {
        self.max_in_flight = Some(max);
        self
    }

    /// A circuit breaker: with `max` requests sent and waiting for their
    /// response head (an upstream that has stopped answering), more are
    /// answered 503 with `Retry-After: 1` at once, and counted
    /// ([`Upstream::stats`]). No limit by default.
    pub fn max_pending(mut self, max: u64) -> Self {
        self.max_pending = Some(max);
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

    /// Writes `X-Real-IP` (on by default): the client's address, as
    /// [`trusted_proxies`](Self::trusted_proxies) says. With `false` the
    /// header is not written, and one a client sent is still removed
    /// unless it came through a trusted proxy: an upstream never reads an
    /// address the client made up.
    pub fn real_ip_header(mut self, yes: bool) -> Self {
        self.real_ip = yes;
        self
    }

    /// How long an idle pooled connection is kept (90 s by default).
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// How many idle connections are kept per upstream server and per
    /// thread (64 by default): each thread that sends requests keeps a
    /// pool of its own (see [`ServerBuilder::threads`](crate::server::ServerBuilder::threads)).
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
        let mut client = Client::builder(TokioExecutor::new());
        client
            .http2_only(self.http2)
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host);
        let clients = super::Clients::new(client, connector);
        let endpoints = Endpoints::new(list, self.ejection, self.balance);
        // Plain HTTP/1.1: the lean pool (see `pool`).
        let pool = (scheme == Scheme::HTTP && !self.http2).then(|| {
            let mut plain = HttpConnector::new();
            plain.set_connect_timeout(self.connect_timeout);
            plain.set_nodelay(true);
            Arc::new(super::pool::Pool::new(
                plain,
                self.pool_idle_timeout,
                self.pool_max_idle_per_host,
            ))
        });
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
                url: self.url.clone(),
                scheme,
                endpoints,
                pool,
                prefix,
                clients,
                response_timeout: self.response_timeout,
                preserve_host: self.preserve_host,
                forwarded: self.forwarded,
                real_ip: self.real_ip,
                http2: self.http2,
                upgrade_idle_timeout: self.upgrade_idle_timeout,
                upgrade_protocols: self.upgrade_protocols,
                trusted: self.trusted,
                forwarded_for: self.forwarded_for,
                limits: Limits {
                    max_in_flight: self.max_in_flight,
                    max_pending: self.max_pending,
                    ..Limits::default()
                },
            }),
        };
        if let Some((runtime, path, check)) = checks {
            runtime.spawn(health_checks(Arc::downgrade(&upstream.inner), path, check));
        }
        Ok(upstream)
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
        Endpoint::new(url.to_owned(), url.to_owned(), authority, host, 1),
    ))
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
