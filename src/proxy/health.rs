//! Active health checks of an upstream's endpoints.

use std::sync::Arc;
use std::time::Duration;

use http::header;
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Uri, Version};
use http_body_util::BodyExt;

use super::endpoints::Endpoint;
use super::{Inner, ProxyBody};

/// Active health checks of an upstream's endpoints
/// ([`UpstreamBuilder::health_check`](super::UpstreamBuilder::health_check)): every `interval`, a `GET` of
/// `path` on each endpoint, passed by a 2xx answer within `timeout` (and,
/// from a gRPC server, without a `grpc-status` other than 0 in its head). An
/// endpoint failing `unhealthy_after` checks in a row is out of service
/// until it passes `healthy_after` in a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub(super) path: String,
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    pub(super) unhealthy_after: u32,
    pub(super) healthy_after: u32,
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

/// Checks every endpoint every interval, until the upstream is dropped.
pub(super) async fn health_checks(
    upstream: std::sync::Weak<Inner>,
    path: PathAndQuery,
    check: HealthCheck,
) {
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = upstream.upgrade() else {
            return;
        };
        // Each endpoint on a task of its own, so that one that hangs does
        // not hold the others' checks.
        // The set as it is now: an endpoint that joined since the last
        // round is checked from this one on.
        let probes: Vec<_> = inner
            .endpoints
            .list()
            .into_iter()
            .map(|e| {
                let (inner, path, check) = (Arc::clone(&inner), path.clone(), check.clone());
                tokio::spawn(async move {
                    let passed = inner.probe(&e, path, check.timeout).await;
                    e.checked(passed, check.unhealthy_after, check.healthy_after);
                })
            })
            .collect();
        drop(inner);
        for probe in probes {
            let _ = probe.await;
        }
    }
}

impl Inner {
    /// One health check of `endpoint`: a 2xx to `GET path` within
    /// `timeout`.
    async fn probe(&self, e: &Endpoint, path: PathAndQuery, timeout: Duration) -> bool {
        const AGENT: HeaderValue = HeaderValue::from_static("switchyard-health-check");
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
        match tokio::time::timeout(timeout, self.clients.get().request(req)).await {
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
}
