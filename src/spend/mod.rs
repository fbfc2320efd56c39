//! Tokens and money: prices, the cost of an answer's usage, and usage
//! counters.
//!
//! * [`price`]: a [`PriceCatalog`] of per-model [`Price`]s (LiteLLM's price
//!   file, with overrides) and the [`Cost`] of a
//!   [`Usage`](crate::model::providers::Usage), in integer micro-units;
//! * [`ledger`]: a [`Ledger`] of tokens and cost per identity, tenant,
//!   alias and model version, all-time and by the hour.
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

pub mod ledger;
pub mod price;

pub use ledger::{GroupBy, Ledger, LedgerEntry, UsageRow};
pub use price::{Cost, Micros, Price, PriceCatalog, PriceError, Rates};
