#![cfg(all(feature = "proxy", feature = "config"))]
//! Service discovery over real loopback HTTP.
