//! The gateway's access log: one `tracing` event per request, at `INFO`
//! under the target `switchyard::access`, once its response head is ready,
//! with the version that answered when the response names it (the split's
//! echo header, or the model router's `x-switchyard-model`).
//!
//! Nothing is recorded unless a subscriber listens to that target at that
//! level: the check is one cached lookup per request.

use std::net::IpAddr;
use std::time::Instant;

use http::{HeaderName, HeaderValue, Method, Request, Response};

/// The `tracing` target of the access log.
pub(crate) const TARGET: &str = "switchyard::access";

/// What the access log keeps of a request until its response.
pub(crate) struct Access {
    start: Instant,
    method: Method,
    path: String,
    route: Option<String>,
    /// The response header naming the version that answered: the route's
    /// split echo header, else the model router's.
    version: Option<HeaderName>,
    client: Option<IpAddr>,
    request_id: Option<HeaderValue>,
    /// The request's trace context, as it went upstream.
    trace: Option<crate::trace::TraceParent>,
}

impl Access {
    /// What to log of `req`, if anyone listens.
    #[inline]
    pub(crate) fn begin<B>(req: &Request<B>) -> Option<Box<Self>> {
        if !tracing::enabled!(target: TARGET, tracing::Level::INFO) {
            return None;
        }
        Some(Box::new(Self {
            start: Instant::now(),
            method: req.method().clone(),
            // The path only: a query may carry credentials.
            path: req.uri().path().to_owned(),
            route: None,
            version: None,
            client: crate::key::peer_ip(req.extensions()),
            request_id: req.headers().get(REQUEST_ID).cloned(),
            trace: None,
        }))
    }

    /// The route the request matched, and the header its split echoes the
    /// target in, if it does.
    pub(crate) fn route(&mut self, name: &str, echo: Option<&str>) {
        self.route = Some(name.to_owned());
        self.version = echo.and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok());
    }

    /// The request's trace context.
    pub(crate) fn trace(&mut self, trace: crate::trace::TraceParent) {
        self.trace = Some(trace);
    }

    /// Logs the request with its response.
    pub(crate) fn end<B>(self, res: &Response<B>) {
        let status = crate::grpc::effective_status(res.status(), res.headers());
        // The id the response carries (a transform may have made one), else
        // the one the request came with.
        let id = res.headers().get(REQUEST_ID).or(self.request_id.as_ref());
        let version = res
            .headers()
            .get(self.version.as_ref().unwrap_or(&MODEL))
            .and_then(|v| v.to_str().ok());
        tracing::info!(
            target: TARGET,
            route = self.route.as_deref().unwrap_or("-"),
            method = %self.method,
            path = %self.path,
            status = status.as_u16(),
            latency_us = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX),
            client = %self.client.map_or_else(|| "-".to_owned(), |ip| ip.to_string()),
            request_id = id.and_then(|v| v.to_str().ok()).unwrap_or("-"),
            version = version.unwrap_or("-"),
            trace_id = %self.trace.map_or_else(|| "-".to_owned(), |t| t.trace_id()),
            "request"
        );
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// What the model router names the version that answered in.
const MODEL: HeaderName = HeaderName::from_static("x-switchyard-model");
