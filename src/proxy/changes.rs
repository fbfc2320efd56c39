//! An upstream's set of endpoints changing while it serves: endpoints
//! inserted, removed (they drain), the whole set replaced, or followed
//! from a [`tower::discover::Discover`] source.
//!
//! Where the endpoints come from (DNS, a file, the admin API) is not this
//! module's business: the [`discovery`](crate::discovery) sources, or the
//! application, hand it [`Change`]s or whole sets.

use std::fmt::Display;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;

use http::HeaderValue;
use http::uri::Authority;
use tower::discover::{Change, Discover};

use super::endpoints::{Changed, Draining, Endpoint};
use super::{Inner, ProxyError, Upstream};

/// An endpoint to add to an [`Upstream`]: where to connect, the `Host` it
/// is asked for, and its weight. It shares the upstream's scheme and path
/// (its URL is `scheme://authority/path`).
///
/// ```
/// use switchyard::proxy::EndpointSpec;
///
/// let spec = EndpointSpec::new("10.0.0.7:8080").weight(3).host("green.internal:8080");
/// assert_eq!(spec.authority, "10.0.0.7:8080");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct EndpointSpec {
    /// `host[:port]` to connect to: an address, or a name resolved for
    /// each new connection.
    pub authority: String,
    /// The `Host` header requests to it carry (unless the upstream
    /// [preserves the client's](super::UpstreamBuilder::preserve_host));
    /// `None`: the authority. Over `https://`, the certificate is checked
    /// against the authority, which must then be a name it covers.
    pub host: Option<String>,
    /// Its share of the requests, relative to the other endpoints'
    /// weights (1 unless set; 0 counts as 1).
    pub weight: u32,
}

impl EndpointSpec {
    /// An endpoint at `authority` (`host[:port]`), weight 1.
    pub fn new(authority: impl Into<String>) -> Self {
        Self {
            authority: authority.into(),
            host: None,
            weight: 1,
        }
    }

    /// Its share of the requests, relative to the others' weights.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// The `Host` header requests to it carry.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }
}

/// What [`Upstream::set_endpoints`] changed.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct EndpointChanges {
    /// The keys of the endpoints that joined (or whose address, `Host` or
    /// weight changed).
    pub added: Vec<String>,
    /// The endpoints that left, draining.
    pub removed: Vec<Draining>,
}

impl EndpointChanges {
    fn from(changed: Changed) -> Self {
        Self {
            added: changed.added,
            removed: changed.removed.iter().map(|e| Draining::new(e)).collect(),
        }
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl Inner {
    /// The endpoint `spec` names, under `key`.
    fn endpoint(&self, key: String, spec: &EndpointSpec) -> Result<Endpoint, ProxyError> {
        let invalid = |reason: &str| ProxyError::InvalidUrl {
            url: format!("{}://{}{}", self.scheme, spec.authority, self.prefix),
            reason: reason.to_owned(),
        };
        let authority: Authority = spec
            .authority
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        if authority.as_str().contains('@') {
            return Err(invalid("credentials in the URL are not supported"));
        }
        let host = HeaderValue::from_str(spec.host.as_deref().unwrap_or(authority.as_str()))
            .map_err(|_| invalid("bad host"))?;
        let url = format!("{}://{}{}", self.scheme, authority, self.prefix);
        Ok(Endpoint::new(key, url, authority, host, spec.weight))
    }
}

impl Upstream {
    /// Adds the endpoint `spec` under `key`, or replaces the one of that
    /// key: it takes requests from the next one on. Inserting an endpoint
    /// that is already there as it is (same address, `Host` and weight)
    /// changes nothing: it keeps its counters, health and connections. The
    /// one replaced, if any, drains.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use switchyard::proxy::{EndpointSpec, Upstream};
    ///
    /// let green = Upstream::new("http://10.0.0.2:8080")?;
    /// green.insert_endpoint("10.0.0.3:8080", EndpointSpec::new("10.0.0.3:8080"))?;
    /// assert_eq!(green.endpoints().len(), 2);
    /// let leaving = green.remove_endpoint("http://10.0.0.2:8080").expect("it was there");
    /// assert!(leaving.is_drained()); // nothing was in flight
    /// # Ok(())
    /// # }
    /// ```
    pub fn insert_endpoint(
        &self,
        key: impl Into<String>,
        spec: EndpointSpec,
    ) -> Result<Option<Draining>, ProxyError> {
        let endpoint = self.inner.endpoint(key.into(), &spec)?;
        let changed = self.inner.endpoints.insert(endpoint);
        Ok(changed.removed.first().map(|e| Draining::new(e)))
    }

    /// Takes the endpoint of `key` out: it takes no new request, and those
    /// in flight finish (the [`Draining`] says when). `None` when no
    /// endpoint has that key. An upstream may be left with none: its
    /// requests are then answered 503 until one joins.
    pub fn remove_endpoint(&self, key: &str) -> Option<Draining> {
        let changed = self.inner.endpoints.remove(key);
        changed.removed.first().map(|e| Draining::new(e))
    }

    /// Makes the upstream's set exactly `endpoints` (key, spec), as a
    /// source that lists every endpoint each time (a DNS answer, a file)
    /// says it: those already there as they are stay untouched, the others
    /// join, and the ones not listed leave and drain. All or nothing: an
    /// invalid spec changes nothing.
    pub fn set_endpoints<K: Into<String>>(
        &self,
        endpoints: impl IntoIterator<Item = (K, EndpointSpec)>,
    ) -> Result<EndpointChanges, ProxyError> {
        let mut list = Vec::new();
        for (key, spec) in endpoints {
            let key = key.into();
            if list.iter().any(|e: &Endpoint| e.key == key) {
                return Err(ProxyError::InvalidUrl {
                    url: spec.authority,
                    reason: format!("the key `{key}` is listed twice"),
                });
            }
            list.push(self.inner.endpoint(key, &spec)?);
        }
        Ok(EndpointChanges::from(self.inner.endpoints.replace(list)))
    }

    /// The endpoints as `(key, spec)` pairs, in order (those draining
    /// left out): what [`set_endpoints`](Self::set_endpoints) takes to make
    /// the set again, here or on another replica.
    pub fn endpoint_specs(&self) -> Vec<(String, EndpointSpec)> {
        self.inner.endpoints.specs()
    }

    /// Tells `listener` of each change of the endpoint set from now on.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn listen(&self, listener: &std::sync::Arc<dyn crate::signal::Listener>) {
        self.inner.endpoints.listeners.add(listener);
    }

    /// Applies one change of a discovery source, as
    /// [`tower::discover`] names them: `Insert(key, spec)` is
    /// [`insert_endpoint`](Self::insert_endpoint), `Remove(key)`
    /// [`remove_endpoint`](Self::remove_endpoint). The endpoint that left,
    /// if any, drains.
    pub fn apply<K: Display>(
        &self,
        change: Change<K, EndpointSpec>,
    ) -> Result<Option<Draining>, ProxyError> {
        match change {
            Change::Insert(key, spec) => self.insert_endpoint(key.to_string(), spec),
            Change::Remove(key) => Ok(self.remove_endpoint(&key.to_string())),
        }
    }

    /// Follows `discover` (any [`Discover`] of [`EndpointSpec`]s, such as
    /// a stream of [`Change`]s): each change is [applied](Self::apply) as
    /// it comes, on a task of the current Tokio runtime, until the source
    /// ends or the upstream (every clone of it) is dropped. A change that
    /// cannot be applied (an invalid address) and an error of the source
    /// are logged (`tracing`, `WARN`) and skipped.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::convert::Infallible;
    /// use switchyard::proxy::{EndpointSpec, Upstream};
    /// use tower::discover::Change;
    ///
    /// let green = Upstream::new("http://10.0.0.2:8080")?;
    /// let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<_, Infallible>>();
    /// let following = green.follow(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
    /// tx.send(Ok(Change::Insert("b", EndpointSpec::new("10.0.0.3:8080"))))?;
    /// drop(tx); // the source ends
    /// following.await?;
    /// assert_eq!(green.endpoints().len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn follow<D>(&self, discover: D) -> tokio::task::JoinHandle<()>
    where
        D: Discover<Service = EndpointSpec> + Send + 'static,
        D::Key: Display + Send,
        D::Error: Display + Send,
    {
        let upstream = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut discover = pin!(discover);
            while let Some(next) = poll_fn(|cx| discover.as_mut().poll_discover(cx)).await {
                let Some(inner) = upstream.upgrade() else {
                    return;
                };
                let upstream = Upstream { inner };
                match next {
                    Ok(change) => {
                        if let Err(e) = upstream.apply(change) {
                            tracing::warn!(upstream = upstream.url(), error = %e, "endpoint change refused");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(upstream = upstream.url(), error = %e, "discovery source failed");
                    }
                }
            }
        })
    }
}

/// A handle on an [`Upstream`] that does not keep it alive
/// ([`Upstream::downgrade`]): for a task that follows a source for as
/// long as the upstream is in use.
#[derive(Clone, Debug)]
pub struct WeakUpstream(std::sync::Weak<Inner>);

impl WeakUpstream {
    /// The upstream, unless every clone of it has been dropped.
    pub fn upgrade(&self) -> Option<Upstream> {
        self.0.upgrade().map(|inner| Upstream { inner })
    }
}

impl Upstream {
    /// A handle that does not keep the upstream alive.
    pub fn downgrade(&self) -> WeakUpstream {
        WeakUpstream(Arc::downgrade(&self.inner))
    }
}
