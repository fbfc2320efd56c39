//! Tokens and money: prices, cost tracking, token limits and budgets for
//! the AI gateway.
//!
//! (`examples/ai_spend.rs`, `cargo run --example ai_spend`: a priced alias,
//! a token limit, a budget that downgrades, cost headers.)
//!
//! A [`Meter`] is the [model router](crate::model)'s
//! [admission hook](crate::model::Admit): once the router knows which
//! version will answer a request, the meter prices it, takes its estimate
//! from every [`TokenLimit`] and reserves its worst-case cost in every
//! [`Budget`] — all or nothing — and settles the difference when the
//! answer ends, from the [`Usage`](crate::model::providers::Usage) the
//! router read (streams included, and a stream the client abandons, from
//! what it saw).
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use switchyard::body::RequestBody;
//! use switchyard::key::KeyBy;
//! use switchyard::model::{Alias, Catalog, Model, ModelRouter};
//! use switchyard::ratelimit::Quota;
//! use switchyard::spend::{Meter, Price, PriceCatalog, TokenLimit};
//! use tower::{service_fn, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A stand-in model server: 1,000 tokens in, 500 out.
//! let server = service_fn(|_: Request<RequestBody<Full<Bytes>>>| async {
//!     let json = r#"{"choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#;
//!     Ok::<_, Infallible>(
//!         Response::builder()
//!             .header("content-type", "application/json")
//!             .body(Full::new(Bytes::from(json)))
//!             .unwrap(),
//!     )
//! });
//! let meter = Meter::builder()
//!     // $2.50 in and $10 out per million tokens.
//!     .prices(PriceCatalog::new().with_price("gpt-4o", Price::per_million(2_500_000, 10_000_000)))
//!     // 10,000 tokens a minute per API key; a request is held to its
//!     // estimate until its answer says what it used.
//!     .token_limit(TokenLimit::new(KeyBy::header(http::HeaderName::from_static("x-api-key")), Quota::per_minute(10_000)))
//!     .build()?;
//! let router = ModelRouter::builder()
//!     .upstream("openai", server)
//!     .catalog(Catalog::new().model(Model::new("gpt-4o", "openai")).alias(Alias::new("chat", [("gpt-4o", 1)])))
//!     .admit(meter.clone())
//!     .build()?;
//!
//! let ask = Request::post("/v1/chat/completions")
//!     .header("x-api-key", "k1")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"chat","max_tokens":1000,"messages":[]}"#)))?;
//! let res = router.oneshot(ask).await?;
//! // The estimate (1,000 output tokens and the body's bytes / 4) was held.
//! assert_eq!(res.headers()["x-ratelimit-limit-tokens"], "10000");
//! assert_eq!(res.headers()["x-ratelimit-remaining-tokens"], "8988");
//! // The answer was read whole to show its cost: 1000 × 2.5 + 500 × 10 µ$.
//! assert_eq!(res.headers()["x-switchyard-cost-micros"], "7500");
//! res.into_body().collect().await?;
//! assert_eq!(meter.stats().cost_micros, 7500);
//! # Ok(())
//! # }
//! ```
//!
//! The parts stand on their own too:
//!
//! * [`price`]: a [`PriceCatalog`] of per-model [`Price`]s (LiteLLM's price
//!   file, with overrides) and the [`Cost`] of a
//!   [`Usage`](crate::model::providers::Usage), in integer micro-units;
//! * [`ledger`]: a [`Ledger`] of tokens and cost per identity, tenant,
//!   alias and model version, all-time and by the hour;
//! * [`limit`] and [`budget`]: what a [`Meter`] enforces;
//! * [`redis`] (feature `redis`): the same counts shared by every replica.
//!
//! ```
//! use switchyard::model::providers::Usage;
//! use switchyard::spend::{GroupBy, Ledger, LedgerEntry, Price};
//!
//! let price = Price::per_million(150_000, 600_000); // $0.15 / $0.60
//! let mut usage = Usage::default();
//! (usage.input, usage.output) = (2_000, 500);
//! let cost = price.cost(&usage);
//! assert_eq!(cost.micros(), 300 + 300);
//!
//! let ledger = Ledger::new();
//! let entry = LedgerEntry::new("gpt-4o-mini", &usage)
//!     .tenant("acme")
//!     .cost(cost.micros());
//! ledger.record(&entry, 1_700_000_000);
//! let rows = ledger.totals(GroupBy::Tenant);
//! assert_eq!((rows[0].key.as_str(), rows[0].cost_micros), ("acme", 600));
//! ```

pub mod budget;
pub mod ledger;
pub mod limit;
pub mod meter;
pub mod price;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;

pub use budget::{Budget, BudgetAlert, BudgetScope, OverBudget, Period};
pub use ledger::{GroupBy, Ledger, LedgerEntry, UsageRow};
pub use limit::{TokenCount, TokenLimit};
pub use meter::{BudgetUsage, Meter, MeterBuilder, MeterStats, Unpriced};
pub use price::{Cost, Micros, Price, PriceCatalog, PriceError, Rates};

/// Why a [`Meter`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpendError {
    /// A token limit's quota is out of range.
    #[error(
        "token limit `{0}`: count, period and burst must be above zero, and burst × period / count below 146 years"
    )]
    InvalidLimit(String),
    /// Two limits or two budgets share a name.
    #[error("`{0}` is named twice")]
    Duplicate(String),
    /// A budget name unusable in headers and keys.
    #[error("budget name `{0}`: use visible ASCII characters without `\"` or `\\`")]
    InvalidName(String),
    /// A Redis meter's local fallback shared among zero replicas.
    #[error("the local fallback's replicas must be at least 1")]
    NoReplicas,
}
