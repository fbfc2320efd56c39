//! A fleet of gateway replicas in this process over one Redis (a server,
//! a Redis Cluster, or the primary Redis Sentinel names): each built from
//! the same configuration as its own [`Gateway`] (its own connections,
//! sync task, subscriptions, limiter handles), each with a front — an
//! axum `Router` over it — that requests are sent to in-process.

#![cfg(feature = "redis")]
#![allow(dead_code, reason = "each test file uses a part")]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use switchyard::gateway::{Gateway, GatewayConfig};
use tower::ServiceExt;

/// How long a request, or a wait for the fleet, may take before the test
/// fails (a hang guard, not a speed claim).
pub const HANG_GUARD: Duration = Duration::from_secs(20);

/// `n` replicas of one configuration.
pub struct Fleet {
    /// Each replica.
    pub gateways: Vec<Gateway>,
    /// A front for each (shared with load tasks by cloning the `Arc`).
    pub fronts: Arc<Vec<Router>>,
}

impl Fleet {
    /// `n` replicas, each built from `config()` (inside the test's
    /// runtime: their tasks run on it).
    pub fn start(n: usize, config: impl Fn() -> GatewayConfig) -> Self {
        let gateways: Vec<Gateway> = (0..n)
            .map(|_| Gateway::from_config(config()).expect("the fleet's configuration builds"))
            .collect();
        let fronts = gateways
            .iter()
            .map(|g| Router::new().fallback_service(g.clone()))
            .collect();
        Self {
            gateways,
            fronts: Arc::new(fronts),
        }
    }

    /// How many replicas.
    pub fn len(&self) -> usize {
        self.gateways.len()
    }

    /// `GET /` with `x-user: user` through replica `i`; its status.
    pub async fn ask(&self, i: usize, user: &str) -> StatusCode {
        ask(&self.fronts[i], user).await
    }

    /// Waits until `f` holds for every replica.
    pub async fn until(&self, what: &str, f: impl Fn(&Gateway) -> bool) {
        tokio::time::timeout(HANG_GUARD, async {
            while !self.gateways.iter().all(&f) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("never, on every replica: {what}"));
    }

    /// Waits until every replica's weight sync ran its first round.
    pub async fn synced(&self) {
        self.until("a weight-sync round", |g| {
            g.weight_sync().is_some_and(|s| s.stats().rounds >= 1)
        })
        .await;
    }
}

/// `GET /` with `x-user: user` through `front`; its status.
pub async fn ask(front: &Router, user: &str) -> StatusCode {
    let req = Request::get("/")
        .header("x-user", user)
        .body(Body::empty())
        .unwrap();
    tokio::time::timeout(HANG_GUARD, front.clone().oneshot(req))
        .await
        .expect("a request hung")
        .unwrap()
        .status()
}
