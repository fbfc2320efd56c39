//! # switchyard
//!
//! Tower [`Layer`](tower::Layer)s and [`Service`](tower::Service)s to assemble
//! an API and AI gateway in code, inside your own hyper, axum or tonic
//! application, built around **blue/green and canary releases**.
//!
//! Put the current version of a service (blue) and the next one (green)
//! behind a [`Split`](split::Split), keep its [`SplitHandle`](split::SplitHandle),
//! send chosen traffic to green, watch each version's counters, then promote
//! green or roll back in one call, with no request dropped.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use switchyard::split::{Split, Target};
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Two versions of one service; any `Service + Clone` will do (axum
//! // `Router`s, tonic services, `switchyard` proxies, closures).
//! let version = |name: &'static str| {
//!     service_fn(move |_req: Request<String>| async move {
//!         Ok::<_, Infallible>(Response::new(name.to_string()))
//!     })
//! };
//!
//! let split = Split::builder()
//!     .target("blue", version("blue v1"), 100)
//!     .target("green", version("green v2"), 0)
//!     .build()?;
//! let handle = split.handle();
//!
//! let res = split.clone().oneshot(Request::new(String::new())).await?;
//! assert_eq!(res.into_body().into_inner(), "blue v1");
//!
//! // Promote green: the very next request goes there.
//! handle.promote("green")?;
//! let res = split.clone().oneshot(Request::new(String::new())).await?;
//! assert_eq!(res.into_body().into_inner(), "green v2");
//!
//! // Changed our mind: back to the weights before the last change.
//! handle.rollback()?;
//! assert_eq!(handle.weights().get("blue"), Some(100));
//! # Ok(())
//! # }
//! ```
//!
//! ## Modules
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`split`] | [`Split`](split::Split): weighted, sticky blue/green and canary routing with a live handle, per-target counters and `drained` |
//! | [`auth`] | [`ApiKeyLayer`](auth::ApiKeyLayer), `JwtLayer` (feature `jwt`), [`RequireScopes`](auth::RequireScopes) and the [`Identity`](auth::Identity) they record |
//! | [`ratelimit`] | [`RateLimitLayer`](ratelimit::RateLimitLayer): keyed GCRA rate limiting with several quotas, costs, IETF `RateLimit` headers and bounded memory; `RedisRateLimitLayer` (feature `redis`) shares the quotas between replicas |
//! | `transform` (feature `transform`) | `TransformLayer`: header, path, query, method, host and JSON body rewriting from rules checked at build time |
//! | `gateway` (feature `config`; `admin` for its admin API) | `Gateway`: a whole gateway from one TOML configuration, reloadable while serving, with an admin API and Prometheus metrics |
//! | `rollout` (feature `rollout`) | `Rollout`: step plans with live analysis of canary against stable, automatic promotion and rollback |
//! | [`grpc`] | how every layer's refusals look to gRPC clients (trailers-only responses with `grpc-status`) |
//! | [`path`] | [`NormalizePathLayer`](path::NormalizePathLayer): request paths in normal form (`..` resolved, `//` merged, escapes decoded) before anything routes on them |
//! | [`upgrade`] | [`UpgradeHold`](upgrade::UpgradeHold): what must live as long as an upgraded connection (a WebSocket) does |
//! | [`platform`] | APIs as products: [`LifecycleLayer`](platform::lifecycle::LifecycleLayer) (draft, published, deprecated with `Deprecation`/`Sunset`/successor `Link` and callers counted, retired with 410), [`Subscriptions`](platform::subscription::Subscriptions) (open or by approval; 403 `subscription_required`), [`ApiCatalog`](platform::catalog::ApiCatalog) (what a consumer may see, OpenAPI 3.1 documents), `PromptApi` (feature `json`: a prompt template published as an API, its versions a split) |
//! | [`state`] | [`StateStore`](state::StateStore): runtime state that survives a restart, in a JSON file replaced atomically ([`StateFile`](state::StateFile); a corrupt file refused with where it breaks) or in Redis for every replica (`state::redis::RedisState`, feature `redis`), each change a compare-and-swap |
//! | [`trace`] | W3C `traceparent` at the edge: a valid one passed on unchanged, a missing or broken one replaced by a new trace (and `tracestate` dropped); the gateway logs the trace id |
//! | [`key`] | [`KeyBy`](key::KeyBy): the one way every layer reads a key (header, cookie, peer IP, client IP behind trusted proxies, custom) from a request |
//! | `model` (feature `json`) | `ModelRouter`: OpenAI-compatible model aliases over weighted versions, pins, sticky picks, fallback, token counts |
//! | `spend` (feature `json`) | `Meter`: the model router's admission hook for token limits and budgets (in memory, or in Redis for a fleet), settled with each answer's usage; `PriceCatalog`: model prices (LiteLLM's file) and the cost of a usage in integer micro-units; `Ledger`: tokens and cost per identity, tenant, alias and version |
//! | `mirror` (feature `mirror`) | `MirrorLayer`: shadow traffic to a new version, bounded and never delaying the client, with answer comparison |
//! | `prometheus` (feature `prometheus`) | the layers' counters as `prometheus-client` collectors, read when scraped (`SplitCollector`, `ModelCollector`, `AuthCollector`, …) |
//! | [`metrics`] | [`LatencyHistogram`](metrics::LatencyHistogram): fixed-bucket latency counters with quantile estimates |
//! | `proxy` (feature `proxy`) | `Upstream`: forwards to an upstream server over a pooled hyper client (HTTP/1.1, h2c; `https://` with feature `tls`), with proxy semantics, 502/504 as problem+json |
//! | `redis_conn` (feature `redis`) | where Redis is: one server, a Redis Cluster (slots followed), or the primary Redis Sentinel names (asked again after a failover); the connection every Redis-backed layer takes |
//! | `discovery` (feature `proxy`) | an `Upstream`'s endpoints following a source: DNS A/AAAA or SRV (`DnsSource`, feature `dns`), a file (`FileSource`), your own `Source`; TTL bounds, damping, the last endpoints kept through failures |
//! | `server` (feature `server`) | `Server`: serves any service on a TCP listener, HTTP/1.1 and h2c (h2 over TLS with `tls`), with connection limits and timeouts that have safe defaults, graceful shutdown, certificate reload |
//! | [`problem`] | [`Problem`](problem::Problem): the `application/problem+json` rejections every layer answers with |
//! | [`conn`] | [`ConnectionInfo`](conn::ConnectionInfo): what the server knows of a request's connection (peer, local address, TLS) |
//! | [`body`] | [`ResponseBody`](body::ResponseBody): the inner body, or a layer's own answer |
//! | [`future`] | [`ResponseFuture`](future::ResponseFuture): the response future of the admission layers (auth, scopes, rate limit) |
//!
//! ## Feature flags
//!
//! | feature | enables |
//! | --- | --- |
//! | `jwt` | `auth::JwtLayer`: bearer JWTs (HS256, RS256, ES256, JWK) with `jsonwebtoken` |
//! | `axum` | [`KeyBy::peer_ip`](key::KeyBy::peer_ip) also reads axum's `ConnectInfo<SocketAddr>`; [`Problem`](problem::Problem) implements `IntoResponse` |
//! | `transform` | `transform`: header, path, query, method and host rules (`regex`, `uuid`) |
//! | `json` | JSON body rules in `transform`, and the `model` router (`serde_json` with key order kept, `memchr`) |
//! | `proxy` | `proxy::Upstream` over a pooled hyper client (`hyper`, `hyper-util`, `tokio`) |
//! | `dns` | `discovery::DnsSource`: endpoints from DNS A/AAAA and SRV records (`hickory-resolver`) |
//! | `tls` | `https://` upstreams in `proxy` (rustls with ring; the system's roots or your own; client certificates), and `rediss://` with `redis` |
//! | `config` | `gateway`: a whole gateway from TOML (`proxy`, `transform`, `json`, `prometheus`, `toml`) |
//! | `prometheus` | `prometheus`: the layers' counters as collectors for a `prometheus-client` registry (`prometheus-client`) |
//! | `admin` | `gateway::admin`: the admin API on axum, changes logged with `tracing` |
//! | `rollout` | `rollout`: step plans with live analysis (`tokio`) |
//! | `mirror` | `mirror`: shadow traffic (`tokio`) |
//! | `redis` | `ratelimit::redis`: rate limits shared by every replica, kept in Redis; `sync`: split and model weights (model versions and pins, upstreams' servers, mirrors' shares) kept the same on every replica; `redis_conn`: one server, a Redis Cluster, or Sentinel's primary, for all of them (`redis`) |
//! | `server` | `server`: a server of our own on hyper-util (`hyper`, `hyper-util`, `tokio`); with `tls`, TLS termination (`tokio-rustls`) |
//! | `tonic` | a [`Split`](split::Split) of tonic services is a tonic `NamedService`, for `Server::builder().add_service(split)` |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod auth;
pub mod body;
mod calendar;
pub mod conn;
#[cfg(feature = "proxy")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy")))]
pub mod discovery;
pub mod future;
#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub mod gateway;
#[cfg(any(feature = "server", feature = "proxy"))]
mod gather;
pub mod grpc;
pub mod ingress;
pub mod key;
pub mod metrics;
#[cfg(feature = "mirror")]
#[cfg_attr(docsrs, doc(cfg(feature = "mirror")))]
pub mod mirror;
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
pub mod model;
pub mod path;
mod per_thread;
pub mod platform;
pub mod problem;
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub mod prometheus;
#[cfg(feature = "proxy")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy")))]
pub mod proxy;
pub mod ratelimit;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis_conn;
mod rng;
#[cfg(feature = "rollout")]
#[cfg_attr(docsrs, doc(cfg(feature = "rollout")))]
pub mod rollout;
mod seqlock;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
mod signal;
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
pub mod spend;
pub mod split;
pub mod state;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod sync;
#[cfg(feature = "tls")]
mod tls;
pub mod trace;
#[cfg(feature = "transform")]
#[cfg_attr(docsrs, doc(cfg(feature = "transform")))]
pub mod transform;
pub mod upgrade;

/// The README's examples, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
