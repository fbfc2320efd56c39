//! Blue/green and canary traffic splitting.
//!
//! A [`Split`] sends each request to one of several named versions of a
//! service ("targets") by relative weight; its [`SplitHandle`] changes the
//! weights live (set, [`promote`](SplitHandle::promote),
//! [`rollback`](SplitHandle::rollback)), reads per-target counters, and
//! awaits a target's [`drained`](SplitHandle::drained) state before you stop
//! it. See [`Split`] for how a target is chosen (override header, sticky
//! key, random by weight) and the readiness contract.
//!
//! `examples/blue_green.rs` is a complete axum app with admin routes;
//! `examples/canary_sticky.rs` ramps a sticky canary and proves that no user
//! moves back.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use switchyard::split::Split;
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let version = |v: &'static str| service_fn(move |_: Request<()>| async move {
//!     Ok::<_, Infallible>(Response::new(v))
//! });
//! let split = Split::builder()
//!     .target("blue", version("v1"), 100)
//!     .target("green", version("v2"), 0)
//!     .build()?;
//! let handle = split.handle();
//!
//! // Canary: 10 % to green.
//! handle.set_weights([("blue", 90), ("green", 10)])?;
//!
//! // All good: promote green, then wait for blue to finish its requests.
//! handle.promote("green")?;
//! handle.drained("blue")?.await;
//! // ... now stop blue.
//!
//! let res = split.oneshot(Request::new(())).await?;
//! assert_eq!(*res.body().get_ref(), "v2");
//! # Ok(())
//! # }
//! ```

mod error;
mod future;
mod handle;
mod service;
pub(crate) mod weights;

pub use crate::future::Dispatch;
pub use error::SplitError;
pub use future::{ResponseFuture, SplitBody};
pub use handle::{Drained, SplitHandle, StatusClasses, TargetStats};
pub use service::{Split, SplitBuilder, Target};
pub use weights::Weights;
