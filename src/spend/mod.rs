//! Tokens and money: prices and the cost of an answer's usage.
//!
//! * [`price`]: a [`PriceCatalog`] of per-model [`Price`]s (LiteLLM's price
//!   file, with overrides) and the [`Cost`] of a
//!   [`Usage`](crate::model::providers::Usage), in integer micro-units.
//!
//! ```
//! use switchyard::model::providers::Usage;
//! use switchyard::spend::Price;
//!
//! let price = Price::per_million(150_000, 600_000); // $0.15 / $0.60
//! let mut usage = Usage::default();
//! (usage.input, usage.output) = (2_000, 500);
//! assert_eq!(price.cost(&usage).micros(), 300 + 300);
//! ```

pub mod price;

pub use price::{Cost, Micros, Price, PriceCatalog, PriceError, Rates};
