//! The platform around the gateway: APIs as products that teams publish,
//! find and subscribe to.
//!
//! * [API lifecycle](lifecycle): an API version is `draft` (reachable by
//!   testers only), `published`, `deprecated` (answers carry
//!   `Deprecation`, `Sunset` and a `Link` to the successor, and callers
//!   are counted) or `retired` (410 Gone with the successor's link),
//!   moved between stages through a live handle that logs who moved it
//!   and when, and (with a [`StateFile`](crate::state::StateFile)) keeps
//!   the moves across restarts.
//! * [Subscriptions](subscription): consumers (identities or whole
//!   tenants) ask for access to an API, open or by approval; until
//!   approved their calls get 403 `subscription_required`; owners
//!   approve, reject and revoke, every decision logged and kept.
//! * [The catalog](catalog): the APIs a consumer may see, with their
//!   versions, stages, owners, limits and OpenAPI 3.1 documents, and
//!   where to ask for access.
//! * Prompt APIs (`prompt`, feature `json`) run versioned prompt
//!   templates on a model alias for callers who send variables, each
//!   version a split target.
//!
//! Runtime changes (moves, subscriptions) are kept in a
//! [`StateStore`](crate::state::StateStore): a file, or Redis shared by
//! replicas (each refreshes with `refresh`). The gateway configures all of
//! this with `[routes.api]`, `[routes.prompt]`, `catalog = true` routes
//! and `[platform]`, and serves the owners' side in its admin API, with
//! team-scoped and read-only admin keys (see [`crate::gateway`]).
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use switchyard::platform::lifecycle::{Api, LifecycleLayer, Stage};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = LifecycleLayer::new(
//!     Api::new("orders", "v1")
//!         .stage(Stage::Published)
//!         .successor("/v2/orders"),
//! )
//! .unwrap();
//! let handle = layer.handle();
//! let svc = layer.layer(service_fn(|_: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("orders")))
//! }));
//!
//! handle.transition(Stage::Deprecated, "alice").unwrap();
//! let res = svc.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert!(res.headers().contains_key("deprecation"));
//! assert_eq!(res.headers()["link"], r#"</v2/orders>; rel="successor-version""#);
//!
//! handle.transition(Stage::Retired, "alice").unwrap();
//! let res = svc.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 410);
//! # }
//! ```

pub mod catalog;
pub mod lifecycle;
pub mod prompt;
pub mod subscription;
