//! Helpers shared by the integration tests (`tests/integration.rs`), each
//! compiled once, under the features of the tests that use it.

#[cfg(feature = "redis")]
pub mod fleet;
pub mod greeter;
pub mod net;
pub mod openapi;
#[cfg(feature = "json")]
pub mod providers;
#[cfg(feature = "redis")]
pub mod redis;
pub mod redis_ha;
#[cfg(feature = "json")]
pub mod spend;
pub mod temp;
