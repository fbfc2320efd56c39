//! Authentication and authorization: who is calling, and may they?
//!
//! (`examples/auth.rs`, `cargo run --example auth`: API keys from a digest table, a JWT route, scopes per route and a live revoke.)
//!
//! * [`ApiKeyLayer`] authenticates API keys (stored as SHA-256 digests,
//!   managed live through an [`ApiKeyHandle`]);
//! * `JwtLayer` (feature `jwt`) authenticates bearer JWTs;
//! * both record an [`Identity`] in the request's extensions, which
//!   [`RequireScopes`] checks per route, the rate limiter can key on
//!   ([`KeyBy::identity`](crate::key::KeyBy::identity)) and your handlers
//!   read.
//!
//! Refusals are problem+json with `WWW-Authenticate` (RFC 6750): 401 for
//! missing or invalid credentials (never saying whether a key exists, was
//! revoked or expired), 403 naming a missing scope, 400 for unreadable
//! credentials.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use switchyard::auth::{ApiKey, ApiKeyLayer, Identity, RequireScopes};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = ApiKeyLayer::builder()
//!     .key(ApiKey::new("admin-key", Identity::new("ops").with_scopes(["admin"])))
//!     .key(ApiKey::new("user-key", Identity::new("alice")))
//!     .build()?;
//! let admin_only = ServiceBuilder::new()
//!     .layer(keys)
//!     .layer(RequireScopes::all(["admin"]))
//!     .service(service_fn(|_: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("welcome")))
//!     }));
//!
//! let as_ = |key: &str| Request::builder().header("x-api-key", key).body(String::new()).unwrap();
//! assert_eq!(admin_only.clone().oneshot(as_("admin-key")).await?.status(), 200);
//! assert_eq!(admin_only.clone().oneshot(as_("user-key")).await?.status(), 403);
//! assert_eq!(admin_only.clone().oneshot(as_("wrong")).await?.status(), 401);
//! # Ok(())
//! # }
//! ```

mod api_key;
mod credentials;
mod identity;
#[cfg(feature = "jwt")]
mod jwt;
mod reject;
mod scopes;

pub use api_key::{ApiKey, ApiKeyAuth, ApiKeyBuilder, ApiKeyHandle, ApiKeyLayer, digest};
pub use credentials::AuthStats;
pub use identity::Identity;
pub(crate) use identity::key_of;
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub use jwt::{JwtAuth, JwtBuilder, JwtHandle, JwtKeys, JwtLayer, MIN_HMAC_SECRET};
#[cfg(feature = "prometheus")]
pub(crate) use scopes::ScopeCounters;
pub use scopes::{RequireScopes, ScopeCheck, ScopeStats};

/// Why an authentication layer could not be built, or a key not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A digest that is not `sha256:` followed by 64 hex digits.
    #[error("invalid key digest `{0}`: expected `sha256:` and 64 hex digits")]
    InvalidDigest(String),
    /// Two keys with the same digest.
    #[error("the key with digest `{0}` is listed twice")]
    DuplicateKey(String),
    /// Every credential source was turned off.
    #[error("no credential source is enabled (bearer, header or query parameter)")]
    NoCredentialSource,
    /// A JWT layer without keys.
    #[error("a JWT layer needs at least one verification key")]
    NoJwtKey,
    /// A JWT verification key that could not be read.
    #[error("JWT key #{index} cannot be used: {reason}")]
    InvalidJwtKey {
        /// The key's position, from 0, in the order added.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}
