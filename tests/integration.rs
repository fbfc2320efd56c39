//! Every integration test in one binary, one module per file: one link of
//! the crate and its dependencies instead of one per file (each test
//! binary was 40–80 MB, and linking three dozen of them filled a check
//! machine's disk). Run one file's tests with
//! `cargo test --all-features --test integration <file>::`.
//!
//! The tests that count heap bytes with a global allocator keep binaries
//! of their own (`alloc`, `ratelimit_memory`, `ratelimit_key_memory`):
//! other tests running beside them would be counted too.

mod support;

mod admin_openapi;
mod ai_providers_e2e;
mod auth;
mod auth_e2e;
mod dashboard;
mod discovery;
mod discovery_dns;
mod edge_admin;
mod edge_headers;
mod edge_paths;
mod edge_server;
mod endpoints;
mod fleet_ha;
mod gateway_e2e;
mod gateway_jwt;
mod gateway_mirror;
mod gateway_options;
mod gateway_platform;
mod gateway_rollouts;
mod gateway_spend;
mod grpc;
mod mirror;
mod model;
mod model_e2e;
mod model_errors;
mod model_providers;
mod path;
mod platform_e2e;
mod platform_prompt;
mod proxy_e2e;
mod ratelimit;
mod ratelimit_e2e;
mod ratelimit_redis;
mod redis_ha;
mod rollout;
mod rollout_cost;
mod rollout_e2e;
mod server;
mod spend;
mod spend_prices;
mod spend_redis;
mod split;
mod split_e2e;
mod tls;
mod transform;
mod transform_e2e;
mod upgrade;
mod weight_sync;
