//! Prices per model and the cost of a [`Usage`], in integers.
//!
//! ```
//! use switchyard::model::providers::Usage;
//! use switchyard::spend::price::{Price, PriceCatalog};
//!
//! // $3 and $15 per million input and output tokens, cache reads at $0.30
//! // and cache writes at $3.75 per million.
//! let sonnet = Price::per_million(3_000_000, 15_000_000)
//!     .cache_read_per_million(300_000)
//!     .cache_write_per_million(3_750_000);
//! let catalog = PriceCatalog::new().with_price("anthropic/claude-sonnet-4", sonnet);
//!
//! let mut usage = Usage::default();
//! (usage.input, usage.cached_read, usage.cache_write, usage.output) = (10_000, 6_000, 2_000, 500);
//!
//! // The request names the model without its provider prefix.
//! let cost = catalog.get("claude-sonnet-4").unwrap().cost(&usage);
//! // 2 000 × 3 + 6 000 × 0.3 + 2 000 × 3.75 + 500 × 15 micro-dollars.
//! assert_eq!(cost.micros(), 6_000 + 1_800 + 7_500 + 7_500);
//! ```
//!
//! # Units
//!
//! Costs are counted in **micro-units** ([`Micros`]) of the catalog's
//! currency (1 USD = 1 000 000), and per-token prices in **pico-units**
//! (10⁻¹² of the currency) per token, a `u64`. One pico-unit per token is
//! one micro-unit per million tokens, so that [`Price::per_million`] takes
//! the figures of a price list as they are, and $0.15 per million tokens
//! (1.5·10⁻⁷ per token) is exactly 150 000. No float is read on the
//! counting path: the LiteLLM loader converts each JSON number once,
//! rounded to the nearest pico-unit.
//!
//! # The cost of a usage
//!
//! [`Price::cost`] applies these rules, in this order:
//!
//! 1. **Tier.** When the price has [`above_200k`](Price::above_200k) rates
//!    and `usage.input > 200_000` ([`LONG_CONTEXT_THRESHOLD`]), those rates
//!    price the *whole* request, input and output, as Anthropic and Gemini
//!    bill long contexts. Otherwise the base [`rates`](Price::rates) do.
//! 2. **Input.** `input - cached_read - cache_write` (saturating at 0) at
//!    the [`input`](Rates::input) rate; `cached_read` at
//!    [`cache_read`](Rates::cache_read) (the input rate when absent);
//!    `cache_write` at [`cache_write`](Rates::cache_write) (the input rate
//!    when absent). A cache-write token is priced **once**, at the
//!    cache-write price, never also as input (LiteLLM double-charged them,
//!    its issue #9812).
//! 3. **Output.** `output - reasoning` (saturating) at the
//!    [`output`](Rates::output) rate; `reasoning` at
//!    [`reasoning`](Rates::reasoning) (the output rate when absent: Gemini
//!    thinking tokens are priced as output).
//! 4. **Sum.** The five parts are products of `u64`s summed in `u128`
//!    pico-units (saturating, which no real usage comes near), and
//!    [`Cost::micros`] rounds **up** to the micro-unit: a request is never
//!    undercharged.
//!
//! A usage whose parts exceed their whole (more `cached_read +
//! cache_write` than `input`) is charged for every part it names.
//!
//! # The catalog
//!
//! A [`PriceCatalog`] maps model names to prices. It loads LiteLLM's
//! `model_prices_and_context_window.json` ([`PriceCatalog::from_file`],
//! [`PriceCatalog::from_litellm_json`]) and takes per-model additions and
//! overrides ([`PriceCatalog::with_price`]). [`PriceCatalog::get`] finds a
//! model by its exact name, then by the part after the last `/` of the
//! catalog's names (`gemini/gemini-2.5-pro` answers `gemini-2.5-pro`),
//! then by the part after the last `/` of the name asked for
//! (`openai/gpt-4o` finds `gpt-4o`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::model::providers::Usage;

/// An amount of money in micro-units of the catalog's currency
/// (1 USD = 1 000 000).
pub type Micros = u64;

/// Pico-units in a micro-unit.
pub const PICOS_PER_MICRO: u64 = 1_000_000;

/// Input tokens above which a price's [`above_200k`](Price::above_200k)
/// rates apply (to the whole request).
pub const LONG_CONTEXT_THRESHOLD: u64 = 200_000;

/// The highest per-token price the LiteLLM loader accepts, in pico-units:
/// one unit of currency per token. The dearest real price is four orders
/// of magnitude below; anything above is a mistake in the file.
pub const MAX_PICOS_PER_TOKEN: u64 = 1_000_000_000_000;

// === impl Rates ===

/// Per-token prices of one tier, in pico-units per token (micro-units per
/// million tokens).
///
/// The optional rates fall back: `cache_read` and `cache_write` to
/// `input`, `reasoning` to `output`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Rates {
    /// Uncached input tokens.
    pub input: u64,
    /// Output tokens that are not reasoning.
    pub output: u64,
    /// Input tokens read from the prompt cache; `input` when absent.
    pub cache_read: Option<u64>,
    /// Input tokens written to the prompt cache; `input` when absent.
    pub cache_write: Option<u64>,
    /// Reasoning (thinking) output tokens; `output` when absent.
    pub reasoning: Option<u64>,
}

impl Rates {
    /// Input and output rates, in pico-units per token (equally,
    /// micro-units per million tokens); the others fall back to them.
    pub const fn new(input: u64, output: u64) -> Self {
        Self {
            input,
            output,
            cache_read: None,
            cache_write: None,
            reasoning: None,
        }
    }

    /// Sets [`cache_read`](Self::cache_read).
    pub const fn with_cache_read(mut self, rate: u64) -> Self {
        self.cache_read = Some(rate);
        self
    }

    /// Sets [`cache_write`](Self::cache_write).
    pub const fn with_cache_write(mut self, rate: u64) -> Self {
        self.cache_write = Some(rate);
        self
    }

    /// Sets [`reasoning`](Self::reasoning).
    pub const fn with_reasoning(mut self, rate: u64) -> Self {
        self.reasoning = Some(rate);
        self
    }

    /// The cost of `usage` at these rates, whatever its size (rules 2 to 4
    /// of the [module docs](self)).
    pub fn cost(&self, usage: &Usage) -> Cost {
        let uncached = usage
            .input
            .saturating_sub(usage.cached_read)
            .saturating_sub(usage.cache_write);
        let answer = usage.output.saturating_sub(usage.reasoning);
        let parts = [
            (uncached, self.input),
            (usage.cached_read, self.cache_read.unwrap_or(self.input)),
            (usage.cache_write, self.cache_write.unwrap_or(self.input)),
            (answer, self.output),
            (usage.reasoning, self.reasoning.unwrap_or(self.output)),
        ];
        // In 64 bits when the sum fits (up to $18 million: every ordinary
        // answer), else in 128.
        let narrow = parts.iter().try_fold(0u64, |sum, &(tokens, rate)| {
            sum.checked_add(tokens.checked_mul(rate)?)
        });
        match narrow {
            Some(picos) => Cost::from_picos(u128::from(picos)),
            None => Cost::from_picos(parts.iter().fold(0u128, |sum, &(tokens, rate)| {
                sum.saturating_add(u128::from(tokens) * u128::from(rate))
            })),
        }
    }
}

// === impl Price ===

/// The price of one model: base rates, optionally long-context rates, and
/// its token limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Price {
    /// The rates of a request with at most [`LONG_CONTEXT_THRESHOLD`] input
    /// tokens (of every request, when `above_200k` is absent).
    pub rates: Rates,
    /// The rates of a whole request with more than
    /// [`LONG_CONTEXT_THRESHOLD`] input tokens.
    pub above_200k: Option<Rates>,
    /// The most input tokens the model takes, if known.
    pub max_input_tokens: Option<u64>,
    /// The most output tokens the model writes in one answer, if known.
    pub max_output_tokens: Option<u64>,
}

impl Price {
    /// A price with these base rates and nothing else.
    pub const fn new(rates: Rates) -> Self {
        Self {
            rates,
            above_200k: None,
            max_input_tokens: None,
            max_output_tokens: None,
        }
    }

    /// A price of `input_micros` and `output_micros` per million input
    /// and output tokens: the figures of a price list in micro-units
    /// (`per_million(150_000, 600_000)` is $0.15 and $0.60).
    pub const fn per_million(input_micros: u64, output_micros: u64) -> Self {
        Self::new(Rates::new(input_micros, output_micros))
    }

    /// Cache reads at `micros` per million tokens (base rates).
    pub const fn cache_read_per_million(mut self, micros: u64) -> Self {
        self.rates.cache_read = Some(micros);
        self
    }

    /// Cache writes at `micros` per million tokens (base rates).
    pub const fn cache_write_per_million(mut self, micros: u64) -> Self {
        self.rates.cache_write = Some(micros);
        self
    }

    /// Reasoning tokens at `micros` per million tokens (base rates).
    pub const fn reasoning_per_million(mut self, micros: u64) -> Self {
        self.rates.reasoning = Some(micros);
        self
    }

    /// Sets the long-context rates, [`above_200k`](Self::above_200k).
    pub const fn above_200k(mut self, rates: Rates) -> Self {
        self.above_200k = Some(rates);
        self
    }

    /// Sets [`max_input_tokens`](Self::max_input_tokens).
    pub const fn max_input_tokens(mut self, tokens: u64) -> Self {
        self.max_input_tokens = Some(tokens);
        self
    }

    /// Sets [`max_output_tokens`](Self::max_output_tokens).
    pub const fn max_output_tokens(mut self, tokens: u64) -> Self {
        self.max_output_tokens = Some(tokens);
        self
    }

    /// The rates that price `usage`: `above_200k` when present and
    /// `usage.input > 200_000`, else the base rates.
    pub fn rates_for(&self, usage: &Usage) -> &Rates {
        match &self.above_200k {
            Some(long) if usage.input > LONG_CONTEXT_THRESHOLD => long,
            _ => &self.rates,
        }
    }

    /// The cost of `usage` (the rules of the [module docs](self)).
    pub fn cost(&self, usage: &Usage) -> Cost {
        self.rates_for(usage).cost(usage)
    }

    /// The most an answer to a request of `input` input tokens and at most
    /// `output` output tokens can cost, however it splits them (read from
    /// or written to the prompt cache, reasoning or not): every input token
    /// at the dearest input rate, every output token at the dearer of the
    /// output and reasoning rates, in the tier `input` tokens fall in.
    pub fn worst_case(&self, input: u64, output: u64) -> Cost {
        let r = self.rates_for(&Usage {
            input,
            ..Usage::default()
        });
        let in_rate = r
            .input
            .max(r.cache_read.unwrap_or(0))
            .max(r.cache_write.unwrap_or(0));
        let out_rate = r.output.max(r.reasoning.unwrap_or(0));
        Cost::from_picos(
            (u128::from(input) * u128::from(in_rate))
                .saturating_add(u128::from(output) * u128::from(out_rate)),
        )
    }
}

// === impl Cost ===

/// An exact cost, in pico-units of the catalog's currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cost {
    picos: u128,
}

impl Cost {
    /// Nothing.
    pub const ZERO: Self = Self { picos: 0 };

    /// A cost of `picos` pico-units.
    pub const fn from_picos(picos: u128) -> Self {
        Self { picos }
    }

    /// A cost of `micros` micro-units.
    pub const fn from_micros(micros: Micros) -> Self {
        Self {
            picos: micros as u128 * PICOS_PER_MICRO as u128,
        }
    }

    /// The exact cost, in pico-units.
    pub const fn picos(self) -> u128 {
        self.picos
    }

    /// The cost in micro-units, rounded **up** (never undercharge), and
    /// saturating at `u64::MAX` (18 trillion dollars).
    pub fn micros(self) -> Micros {
        // A u128 division is a library call; nearly every cost fits a u64,
        // whose division by a constant is a multiplication.
        if let Ok(picos) = u64::try_from(self.picos) {
            return picos.div_ceil(PICOS_PER_MICRO);
        }
        let micros = self.picos.div_ceil(u128::from(PICOS_PER_MICRO));
        Micros::try_from(micros).unwrap_or(Micros::MAX)
    }
}

impl Add for Cost {
    type Output = Cost;

    /// Saturating addition.
    fn add(self, other: Cost) -> Cost {
        Cost::from_picos(self.picos.saturating_add(other.picos))
    }
}

impl AddAssign for Cost {
    fn add_assign(&mut self, other: Cost) {
        *self = *self + other;
    }
}

impl Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost::ZERO, Add::add)
    }
}

impl fmt::Display for Cost {
    /// The cost in units of the currency with six decimals, rounded up to
    /// the micro-unit (`0.000123`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.micros();
        write!(
            f,
            "{}.{:06}",
            micros / PICOS_PER_MICRO,
            micros % PICOS_PER_MICRO
        )
    }
}

// === impl PriceError ===

/// Why a price catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PriceError {
    /// The file could not be read.
    #[error("cannot read the price file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The document is not JSON, or not an object of model names.
    #[error("the price file is not a JSON object of models: {0}")]
    Json(#[from] serde_json::Error),
    /// A price or token limit that is negative, not finite, not a number,
    /// a fraction of a token, or above [`MAX_PICOS_PER_TOKEN`].
    #[error("model `{model}`: `{field}` is {value}, which is not a valid value for it")]
    InvalidPrice {
        /// The model's name in the file.
        model: String,
        /// The field.
        field: &'static str,
        /// The value, as JSON.
        value: String,
    },
}

// === impl PriceCatalog ===

type Hasher = foldhash::fast::RandomState;

/// Prices by model name.
///
/// Lookups ([`get`](Self::get)) probe one hash table for an exact name,
/// then one built at insertion for the names' last `/` segments; they do
/// not allocate. Names come from clients, so the tables hash with a random
/// seed (foldhash).
///
/// When several names share a last segment (`azure/gpt-4o`,
/// `openrouter/openai/gpt-4o`) and none is the segment itself, the
/// shortest name answers for it, the first in byte order among equals.
#[derive(Clone, Default)]
pub struct PriceCatalog {
    entries: Vec<(Box<str>, Price)>,
    exact: HashMap<Box<str>, usize, Hasher>,
    by_suffix: HashMap<Box<str>, usize, Hasher>,
}

impl PriceCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads LiteLLM's `model_prices_and_context_window.json`.
    ///
    /// The document is an object of model name to entry. Skipped, without
    /// failing: the `sample_spec` key, entries that are not objects, and
    /// entries without both `input_cost_per_token` and
    /// `output_cost_per_token` (image, audio and other models priced by
    /// some other unit, and those whose token price is half known: such a
    /// model stays unpriced, so the route's policy for unpriced models
    /// decides, rather than a silent zero; an override can complete it).
    ///
    /// Fields read, each a number or a string holding one (`null` is
    /// absent); all others are ignored:
    ///
    /// | field | becomes |
    /// | --- | --- |
    /// | `input_cost_per_token`, `output_cost_per_token` | [`Rates::input`], [`Rates::output`] |
    /// | `cache_read_input_token_cost` | [`Rates::cache_read`] |
    /// | `cache_creation_input_token_cost` | [`Rates::cache_write`] |
    /// | `output_cost_per_reasoning_token` | [`Rates::reasoning`] |
    /// | `…_above_200k_tokens` of the four above but reasoning | [`Price::above_200k`]; a missing input or output rate there is the base one, a missing cache rate falls back to the tier's input rate |
    /// | `max_input_tokens` | [`Price::max_input_tokens`] |
    /// | `max_output_tokens`, else `max_tokens` | [`Price::max_output_tokens`] |
    ///
    /// A price must be finite, non-negative and at most
    /// [`MAX_PICOS_PER_TOKEN`]; it is rounded to the nearest pico-unit. A
    /// token limit must be a non-negative whole number. Anything else is a
    /// [`PriceError::InvalidPrice`].
    pub fn from_litellm_json(json: &[u8]) -> Result<Self, PriceError> {
        let models: BTreeMap<String, &RawValue> = serde_json::from_slice(json)?;
        let mut catalog = Self::new();
        for (name, raw) in models {
            if name == "sample_spec" || !raw.get().starts_with('{') {
                continue;
            }
            let entry: LiteLlmEntry = serde_json::from_str(raw.get())?;
            if let Some(price) = entry.price(&name)? {
                catalog.set_price(name, price);
            }
        }
        Ok(catalog)
    }

    /// Reads and loads a LiteLLM price file (see
    /// [`from_litellm_json`](Self::from_litellm_json)).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, PriceError> {
        let path = path.as_ref();
        let json = std::fs::read(path).map_err(|source| PriceError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_litellm_json(&json)
    }

    /// With `model` priced at `price`, replacing any price it had.
    pub fn with_price(mut self, model: impl Into<String>, price: Price) -> Self {
        self.set_price(model, price);
        self
    }

    /// Prices `model` at `price`, replacing any price it had, and returns
    /// the price it replaces.
    pub fn set_price(&mut self, model: impl Into<String>, price: Price) -> Option<Price> {
        let model = model.into();
        if let Some(&i) = self.exact.get(model.as_str()) {
            return Some(std::mem::replace(&mut self.entries[i].1, price));
        }
        let i = self.entries.len();
        let name: Box<str> = model.into_boxed_str();
        if let Some((_, suffix)) = name.rsplit_once('/')
            && !suffix.is_empty()
        {
            let better = |j: usize| {
                let other = &self.entries[j].0;
                (name.len(), &*name) < (other.len(), &**other)
            };
            match self.by_suffix.get(suffix) {
                Some(&j) if !better(j) => {}
                _ => {
                    self.by_suffix.insert(suffix.into(), i);
                }
            }
        }
        self.exact.insert(name.clone(), i);
        self.entries.push((name, price));
        None
    }

    /// The price of `model`: by its exact name; else by the catalog's
    /// names' last `/` segment; else, when `model` has a `/`, the same two
    /// for its last segment.
    pub fn get(&self, model: &str) -> Option<&Price> {
        self.resolve(model).map(|(_, price)| price)
    }

    /// Like [`get`](Self::get), with the catalog's name of the price
    /// found.
    pub fn resolve(&self, model: &str) -> Option<(&str, &Price)> {
        let find = |name: &str| {
            let i = self.exact.get(name).or_else(|| self.by_suffix.get(name))?;
            let (name, price) = &self.entries[*i];
            Some((&**name, price))
        };
        find(model).or_else(|| {
            let (_, tail) = model.rsplit_once('/')?;
            find(tail)
        })
    }

    /// Every model and its price, in insertion order (a loaded file's in
    /// byte order of names).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Price)> {
        self.entries.iter().map(|(name, price)| (&**name, price))
    }

    /// How many models have a price.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no model has a price.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl fmt::Debug for PriceCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PriceCatalog")
            .field("models", &self.entries.len())
            .finish_non_exhaustive()
    }
}

// === LiteLLM entries ===

/// The fields of a LiteLLM entry that make a [`Price`]; others are
/// skipped by serde without being kept.
#[derive(Deserialize)]
struct LiteLlmEntry {
    input_cost_per_token: Option<Value>,
    output_cost_per_token: Option<Value>,
    cache_read_input_token_cost: Option<Value>,
    cache_creation_input_token_cost: Option<Value>,
    output_cost_per_reasoning_token: Option<Value>,
    input_cost_per_token_above_200k_tokens: Option<Value>,
    output_cost_per_token_above_200k_tokens: Option<Value>,
    cache_read_input_token_cost_above_200k_tokens: Option<Value>,
    cache_creation_input_token_cost_above_200k_tokens: Option<Value>,
    max_input_tokens: Option<Value>,
    max_output_tokens: Option<Value>,
    max_tokens: Option<Value>,
}

impl LiteLlmEntry {
    /// The entry's price; `None` when it has no token price.
    fn price(&self, model: &str) -> Result<Option<Price>, PriceError> {
        let rate = |field: &'static str, value: &Option<Value>| match value {
            None | Some(Value::Null) => Ok(None),
            Some(value) => picos_per_token(value)
                .map(Some)
                .ok_or_else(|| invalid(model, field, value)),
        };
        let tokens = |field: &'static str, value: &Option<Value>| match value {
            None | Some(Value::Null) => Ok(None),
            Some(value) => token_count(value)
                .map(Some)
                .ok_or_else(|| invalid(model, field, value)),
        };

        let input = rate("input_cost_per_token", &self.input_cost_per_token)?;
        let output = rate("output_cost_per_token", &self.output_cost_per_token)?;
        let cache_read = rate(
            "cache_read_input_token_cost",
            &self.cache_read_input_token_cost,
        )?;
        let cache_write = rate(
            "cache_creation_input_token_cost",
            &self.cache_creation_input_token_cost,
        )?;
        let reasoning = rate(
            "output_cost_per_reasoning_token",
            &self.output_cost_per_reasoning_token,
        )?;
        let long_input = rate(
            "input_cost_per_token_above_200k_tokens",
            &self.input_cost_per_token_above_200k_tokens,
        )?;
        let long_output = rate(
            "output_cost_per_token_above_200k_tokens",
            &self.output_cost_per_token_above_200k_tokens,
        )?;
        let long_cache_read = rate(
            "cache_read_input_token_cost_above_200k_tokens",
            &self.cache_read_input_token_cost_above_200k_tokens,
        )?;
        let long_cache_write = rate(
            "cache_creation_input_token_cost_above_200k_tokens",
            &self.cache_creation_input_token_cost_above_200k_tokens,
        )?;
        let max_input = tokens("max_input_tokens", &self.max_input_tokens)?;
        let max_output = tokens("max_output_tokens", &self.max_output_tokens)?;
        let max_tokens = tokens("max_tokens", &self.max_tokens)?;

        let (Some(input), Some(output)) = (input, output) else {
            return Ok(None);
        };
        let rates = Rates {
            input,
            output,
            cache_read,
            cache_write,
            reasoning,
        };
        let long = [long_input, long_output, long_cache_read, long_cache_write]
            .iter()
            .any(Option::is_some)
            .then(|| Rates {
                input: long_input.unwrap_or(input),
                output: long_output.unwrap_or(output),
                cache_read: long_cache_read,
                cache_write: long_cache_write,
                reasoning: None,
            });
        Ok(Some(Price {
            rates,
            above_200k: long,
            max_input_tokens: max_input,
            max_output_tokens: max_output.or(max_tokens),
        }))
    }
}

fn invalid(model: &str, field: &'static str, value: &Value) -> PriceError {
    PriceError::InvalidPrice {
        model: model.to_owned(),
        field,
        value: value.to_string(),
    }
}

/// A number, or a string holding one.
fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A price per token in currency units, as pico-units rounded to the
/// nearest; `None` when negative, not finite or above the maximum.
fn picos_per_token(value: &Value) -> Option<u64> {
    let units = number(value)?;
    if !units.is_finite() || units < 0.0 {
        return None;
    }
    let picos = (units * 1e12).round();
    // Exact: MAX_PICOS_PER_TOKEN is far below 2^53.
    if picos > MAX_PICOS_PER_TOKEN as f64 {
        return None;
    }
    // In range: checked above.
    Some(picos as u64)
}

/// A whole, non-negative number of tokens.
fn token_count(value: &Value) -> Option<u64> {
    if let Some(n) = value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
    {
        return Some(n);
    }
    let n = number(value)?;
    // 2^53: beyond it a float no longer says which integer it is.
    let whole = n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= 9_007_199_254_740_992.0;
    // In range: checked just above.
    whole.then_some(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usage(input: u64, cached_read: u64, cache_write: u64, output: u64, reasoning: u64) -> Usage {
        Usage {
            input,
            cached_read,
            cache_write,
            output,
            reasoning,
            truncated: false,
        }
    }

    fn fixture() -> PriceCatalog {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/spend/model_prices.json"
        );
        PriceCatalog::from_file(path).unwrap()
    }

    #[test]
    fn per_million_is_pico_per_token() {
        // $0.15 per million tokens: 1.5e-7 per token, 150 000 pico.
        let price = Price::per_million(150_000, 600_000);
        let cost = price.cost(&usage(1_000_000, 0, 0, 1_000_000, 0));
        assert_eq!(cost.picos(), 750_000 * 1_000_000);
        assert_eq!(cost.micros(), 750_000);
        assert_eq!(cost.to_string(), "0.750000");
    }

    #[test]
    fn cache_write_is_priced_once_at_the_cache_write_price() {
        // Anthropic: input 3, cache write 3.75, cache read 0.30 per million.
        let price = Price::per_million(3_000_000, 15_000_000)
            .cache_read_per_million(300_000)
            .cache_write_per_million(3_750_000);
        // 1 000 input tokens of which 1 000 written to the cache: only
        // the cache-write price, never input on top.
        let cost = price.cost(&usage(1_000, 0, 1_000, 0, 0));
        assert_eq!(cost.picos(), 1_000 * 3_750_000);
        // LiteLLM #9812 charged 1 000 × 3 + 1 000 × 3.75.
        assert_ne!(cost.picos(), 1_000 * (3_000_000 + 3_750_000));
        // Mixed: 100 uncached, 600 read, 300 written.
        let cost = price.cost(&usage(1_000, 600, 300, 0, 0));
        assert_eq!(
            cost.picos(),
            100 * 3_000_000 + 600 * 300_000 + 300 * 3_750_000
        );
    }

    #[test]
    fn cache_rates_fall_back_to_input() {
        let price = Price::per_million(2_000_000, 8_000_000);
        let all_input = price.cost(&usage(1_000, 0, 0, 0, 0));
        assert_eq!(price.cost(&usage(1_000, 400, 600, 0, 0)), all_input);
    }

    #[test]
    fn thinking_tokens_are_priced_as_output_unless_priced_apart() {
        // Gemini 2.5 Flash: no reasoning price of its own.
        let flash = Price::per_million(300_000, 2_500_000);
        let thinking = flash.cost(&usage(0, 0, 0, 1_000, 800));
        let plain = flash.cost(&usage(0, 0, 0, 1_000, 0));
        assert_eq!(thinking, plain);
        assert_eq!(thinking.picos(), 1_000 * 2_500_000);
        // A reasoning price of its own applies to reasoning tokens only.
        let priced = flash.reasoning_per_million(3_500_000);
        assert_eq!(
            priced.cost(&usage(0, 0, 0, 1_000, 800)).picos(),
            200 * 2_500_000 + 800 * 3_500_000
        );
    }

    #[test]
    fn long_context_tier_switches_above_200k_input_tokens() {
        let base = Rates::new(1_250_000, 10_000_000).with_cache_read(125_000);
        let long = Rates::new(2_500_000, 15_000_000).with_cache_read(250_000);
        let price = Price::new(base).above_200k(long);

        let at = usage(200_000, 50_000, 0, 1_000, 0);
        assert_eq!(price.rates_for(&at), &base);
        assert_eq!(
            price.cost(&at).picos(),
            150_000 * 1_250_000 + 50_000 * 125_000 + 1_000 * 10_000_000
        );

        let above = usage(200_001, 50_000, 0, 1_000, 0);
        assert_eq!(price.rates_for(&above), &long);
        // The whole request, output included, at the long-context rates.
        assert_eq!(
            price.cost(&above).picos(),
            150_001 * 2_500_000 + 50_000 * 250_000 + 1_000 * 15_000_000
        );

        // No tier: base rates whatever the size.
        let flat = Price::new(base);
        assert_eq!(flat.rates_for(&above), &base);
    }

    #[test]
    fn micros_round_up() {
        assert_eq!(Cost::from_picos(0).micros(), 0);
        assert_eq!(Cost::from_picos(1).micros(), 1);
        assert_eq!(Cost::from_picos(999_999).micros(), 1);
        assert_eq!(Cost::from_picos(1_000_000).micros(), 1);
        assert_eq!(Cost::from_picos(1_000_001).micros(), 2);
        assert_eq!(Cost::from_picos(u128::MAX).micros(), u64::MAX);
        assert_eq!(Cost::from_micros(7).picos(), 7_000_000);
        // One gpt-4o-mini input token costs 0.15 micro-dollars: 1 micro.
        let one = Price::per_million(150_000, 600_000).cost(&usage(1, 0, 0, 0, 0));
        assert_eq!((one.picos(), one.micros()), (150_000, 1));
    }

    #[test]
    fn inconsistent_usage_charges_every_part() {
        let price = Price::per_million(1_000_000, 2_000_000)
            .cache_read_per_million(100_000)
            .cache_write_per_million(1_250_000);
        // More cached than input; more reasoning than output.
        let cost = price.cost(&usage(10, 8, 8, 5, 9));
        assert_eq!(cost.picos(), 8 * 100_000 + 8 * 1_250_000 + 9 * 2_000_000);
    }

    #[test]
    fn extreme_counts_do_not_overflow() {
        let price = Price::per_million(u64::MAX, u64::MAX);
        let max = usage(u64::MAX, 0, 0, u64::MAX, 0);
        assert_eq!(price.cost(&max).micros(), u64::MAX);
        assert_eq!(
            Cost::from_picos(u128::MAX) + Cost::from_picos(1),
            Cost::from_picos(u128::MAX)
        );
    }

    #[test]
    fn loads_the_fixture() {
        let catalog = fixture();
        // sample_spec, two DALL·E entries and gpt-image-1 (no output token
        // price) are skipped.
        assert_eq!(
            catalog.len(),
            8,
            "{:?}",
            catalog.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        assert!(catalog.get("sample_spec").is_none());
        assert!(catalog.get("aiml/dall-e-3").is_none());
        assert!(catalog.get("azure/standard/1024-x-1024/dall-e-3").is_none());
        assert!(catalog.get("gpt-image-1").is_none());

        let mini = catalog.get("gpt-4o-mini").unwrap();
        assert_eq!(
            mini.rates,
            Rates::new(150_000, 600_000).with_cache_read(75_000)
        );
        assert_eq!(mini.above_200k, None);
        assert_eq!(
            (mini.max_input_tokens, mini.max_output_tokens),
            (Some(128_000), Some(16_384))
        );

        let sonnet = catalog.get("claude-sonnet-4-20250514").unwrap();
        assert_eq!(
            sonnet.rates,
            Rates::new(3_000_000, 15_000_000)
                .with_cache_read(300_000)
                .with_cache_write(3_750_000)
        );
        assert_eq!(
            sonnet.above_200k,
            Some(
                Rates::new(6_000_000, 22_500_000)
                    .with_cache_read(600_000)
                    .with_cache_write(7_500_000)
            )
        );

        // Vertex's Gemini 2.5 Pro: a long-context cache-write price with no
        // base one.
        let pro = catalog.get("gemini-2.5-pro").unwrap();
        assert_eq!(pro.rates.cache_write, None);
        assert_eq!(pro.above_200k.unwrap().cache_write, Some(250_000));

        let flash = catalog.get("gemini/gemini-2.5-flash").unwrap();
        assert_eq!(flash.rates.reasoning, Some(2_500_000));

        let embedding = catalog.get("text-embedding-3-small").unwrap();
        assert_eq!(embedding.rates, Rates::new(20_000, 0));
        assert_eq!(embedding.max_output_tokens, None);

        // max_tokens stands in for a missing max_output_tokens.
        let opus = catalog.get("claude-opus-4-1").unwrap();
        assert_eq!(opus.max_output_tokens, Some(32_000));
    }

    #[test]
    fn prices_a_fixture_request() {
        let catalog = fixture();
        // A Claude Sonnet 4 answer: 12 000 input tokens, 10 000 of them
        // read from the cache and 1 500 written to it; 800 output.
        let cost = catalog
            .get("claude-sonnet-4-20250514")
            .unwrap()
            .cost(&usage(12_000, 10_000, 1_500, 800, 0));
        let picos = 500 * 3_000_000 + 10_000 * 300_000 + 1_500 * 3_750_000 + 800 * 15_000_000;
        assert_eq!(cost.picos(), picos);
        assert_eq!(cost.micros(), 22_125);
    }

    #[test]
    fn lookup_by_last_segment_both_ways() {
        let catalog = fixture();
        // The catalog's `gemini/gemini-2.5-flash` answers the bare name.
        let (name, _) = catalog.resolve("gemini-2.5-flash").unwrap();
        assert_eq!(name, "gemini/gemini-2.5-flash");
        // An exact name wins over a suffix: Vertex's bare entry.
        let (name, _) = catalog.resolve("gemini-2.5-pro").unwrap();
        assert_eq!(name, "gemini-2.5-pro");
        assert_eq!(
            catalog.resolve("gemini/gemini-2.5-pro").unwrap().0,
            "gemini/gemini-2.5-pro"
        );
        // A request's provider prefix is dropped when nothing matches it.
        assert_eq!(catalog.resolve("openai/gpt-4o").unwrap().0, "gpt-4o");
        assert_eq!(
            catalog.resolve("openrouter/openai/gpt-4o").unwrap().0,
            "gpt-4o"
        );
        assert_eq!(
            catalog.resolve("vertex_ai/gemini-2.5-flash").unwrap().0,
            "gemini/gemini-2.5-flash"
        );
        assert!(catalog.get("gpt-4").is_none());
        assert!(catalog.get("").is_none());
        assert!(catalog.get("openai/").is_none());
    }

    #[test]
    fn shortest_name_answers_a_shared_suffix_whatever_the_order() {
        let a = Price::per_million(1, 1);
        let b = Price::per_million(2, 2);
        let c = Price::per_million(3, 3);
        let one = PriceCatalog::new()
            .with_price("openrouter/openai/m", a)
            .with_price("azure/m", b)
            .with_price("zure/m", c);
        let two = PriceCatalog::new()
            .with_price("zure/m", c)
            .with_price("azure/m", b)
            .with_price("openrouter/openai/m", a);
        assert_eq!(one.resolve("m"), Some(("zure/m", &c)));
        assert_eq!(two.resolve("m"), Some(("zure/m", &c)));
        // Equal lengths: byte order.
        let three = PriceCatalog::new()
            .with_price("b/m", b)
            .with_price("a/m", a);
        assert_eq!(three.resolve("m"), Some(("a/m", &a)));
    }

    #[test]
    fn overrides_replace_and_add() {
        let mut catalog = fixture();
        let before = catalog.len();
        let cheaper = Price::per_million(100_000, 400_000);
        let old = catalog.set_price("gpt-4o-mini", cheaper);
        assert_eq!(old.unwrap().rates.input, 150_000);
        assert_eq!(catalog.get("gpt-4o-mini"), Some(&cheaper));
        assert_eq!(catalog.get("openai/gpt-4o-mini"), Some(&cheaper));
        let catalog = catalog.with_price("local/llama-3", Price::per_million(0, 0));
        assert_eq!(catalog.len(), before + 1);
        assert_eq!(catalog.get("llama-3"), Some(&Price::per_million(0, 0)));
    }

    #[test]
    fn numbers_may_be_ints_or_strings() {
        let json = br#"{
            "m": {"input_cost_per_token": "1.5e-07", "output_cost_per_token": 0,
                  "max_input_tokens": "8192", "max_output_tokens": 4096.0,
                  "cache_read_input_token_cost": null, "mode": "chat"},
            "n": {"input_cost_per_token": 1, "output_cost_per_token": 2e-6, "max_tokens": 1000}
        }"#;
        let catalog = PriceCatalog::from_litellm_json(json).unwrap();
        let m = catalog.get("m").unwrap();
        assert_eq!(m.rates, Rates::new(150_000, 0));
        assert_eq!(
            (m.max_input_tokens, m.max_output_tokens),
            (Some(8_192), Some(4_096))
        );
        let n = catalog.get("n").unwrap();
        assert_eq!(n.rates, Rates::new(MAX_PICOS_PER_TOKEN, 2_000_000));
        assert_eq!(n.max_output_tokens, Some(1_000));
    }

    #[test]
    fn float_prices_round_to_the_nearest_pico() {
        for (text, picos) in [
            ("1.5e-07", 150_000),
            ("2.999997e-05", 29_999_970),
            ("3.625e-09", 3_625),
            ("1e-13", 0),
            ("6e-13", 1),
            ("0.1", 100_000_000_000),
        ] {
            let json = format!(
                r#"{{"m": {{"input_cost_per_token": {text}, "output_cost_per_token": 0}}}}"#
            );
            let catalog = PriceCatalog::from_litellm_json(json.as_bytes()).unwrap();
            assert_eq!(catalog.get("m").unwrap().rates.input, picos, "{text}");
        }
    }

    #[test]
    fn bad_values_are_refused() {
        for (field, value) in [
            ("input_cost_per_token", "-1e-6"),
            ("output_cost_per_token", "\"NaN\""),
            ("output_cost_per_token", "\"inf\""),
            ("output_cost_per_token", "\"cheap\""),
            ("output_cost_per_token", "true"),
            ("cache_read_input_token_cost", "[1]"),
            ("input_cost_per_token", "1.5"),
            ("input_cost_per_token_above_200k_tokens", "1e300"),
            ("max_output_tokens", "-1"),
            ("max_input_tokens", "8191.5"),
            ("max_tokens", "\"lots\""),
        ] {
            let mut entry = serde_json::json!({
                "input_cost_per_token": 1e-6,
                "output_cost_per_token": 2e-6,
            });
            entry[field] = serde_json::from_str(value).unwrap();
            let json = serde_json::json!({ "bad-model": entry }).to_string();
            match PriceCatalog::from_litellm_json(json.as_bytes()) {
                Err(PriceError::InvalidPrice {
                    model,
                    field: f,
                    value: v,
                }) => {
                    assert_eq!((model.as_str(), f), ("bad-model", field));
                    assert_eq!(v, serde_json::from_str::<Value>(value).unwrap().to_string());
                }
                other => panic!("{field}: {value} gave {other:?}"),
            }
        }
    }

    #[test]
    fn unpriced_and_odd_entries_are_skipped() {
        let json = br#"{
            "sample_spec": {"input_cost_per_token": 0.0, "output_cost_per_token": 0.0,
                            "max_tokens": "LEGACY parameter"},
            "a-list": [1, 2],
            "a-string": "not an entry",
            "image": {"output_cost_per_image": 0.04, "mode": "image_generation"},
            "half": {"input_cost_per_token": 5e-06},
            "ok": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}
        }"#;
        let catalog = PriceCatalog::from_litellm_json(json).unwrap();
        assert_eq!(catalog.iter().map(|(n, _)| n).collect::<Vec<_>>(), ["ok"]);
    }

    #[test]
    fn documents_that_are_not_catalogs_are_refused() {
        for json in [&b"[]"[..], b"{", b"not json", b"{\"m\": 1} trailing"] {
            assert!(matches!(
                PriceCatalog::from_litellm_json(json),
                Err(PriceError::Json(_))
            ));
        }
        assert!(PriceCatalog::from_litellm_json(b"{}").unwrap().is_empty());
        let missing = PriceCatalog::from_file("/nonexistent/prices.json").unwrap_err();
        assert!(matches!(missing, PriceError::Io { .. }));
        assert!(missing.to_string().contains("/nonexistent/prices.json"));
    }

    fn arb_rates() -> impl Strategy<Value = Rates> {
        let rate = 0u64..50_000_000;
        (
            rate.clone(),
            rate.clone(),
            proptest::option::of(rate.clone()),
            proptest::option::of(rate.clone()),
            proptest::option::of(rate),
        )
            .prop_map(
                |(input, output, cache_read, cache_write, reasoning)| Rates {
                    input,
                    output,
                    cache_read,
                    cache_write,
                    reasoning,
                },
            )
    }

    /// A consistent usage from its five disjoint parts: uncached input,
    /// cache reads, cache writes, plain output, reasoning.
    fn from_parts(p: [u64; 5]) -> Usage {
        usage(p[0] + p[1] + p[2], p[1], p[2], p[3] + p[4], p[4])
    }

    /// Long-context rates at least the base ones, each rate after
    /// fallback, as every real price list has them.
    fn raised(base: &Rates, by: &Rates) -> Rates {
        let input = base.input + by.input;
        let output = base.output + by.output;
        Rates {
            input,
            output,
            cache_read: Some(base.cache_read.unwrap_or(base.input) + by.cache_read.unwrap_or(0)),
            cache_write: Some(base.cache_write.unwrap_or(base.input) + by.cache_write.unwrap_or(0)),
            reasoning: Some(base.reasoning.unwrap_or(base.output) + by.reasoning.unwrap_or(0)),
        }
    }

    proptest! {
        #[test]
        fn cost_is_the_sum_of_its_parts(rates in arb_rates(), parts in proptest::array::uniform5(0u64..1_000_000)) {
            let whole = rates.cost(&from_parts(parts));
            let mut sum = Cost::ZERO;
            for i in 0..5 {
                let mut only = [0; 5];
                only[i] = parts[i];
                sum += rates.cost(&from_parts(only));
            }
            prop_assert_eq!(whole, sum);
            // And a part alone is its tokens at its rate.
            let one = |i: usize| { let mut p = [0; 5]; p[i] = 1; rates.cost(&from_parts(p)).picos() };
            let expected: u128 = (0..5).map(|i| u128::from(parts[i]) * one(i)).sum();
            prop_assert_eq!(whole.picos(), expected);
            prop_assert_eq!(whole.micros(), u64::try_from(expected.div_ceil(1_000_000)).unwrap());
        }

        #[test]
        fn a_price_is_its_tier_s_rates(base in arb_rates(), by in arb_rates(), parts in proptest::array::uniform5(0u64..400_000)) {
            let long = raised(&base, &by);
            let price = Price::new(base).above_200k(long);
            let u = from_parts(parts);
            let rates = if u.input > LONG_CONTEXT_THRESHOLD { long } else { base };
            prop_assert_eq!(price.cost(&u), rates.cost(&u));
        }

        #[test]
        fn cost_is_monotonic_in_every_token_count(
            base in arb_rates(),
            by in arb_rates(),
            tiered in any::<bool>(),
            parts in proptest::array::uniform5(0u64..300_000),
            part in 0usize..5,
            more in 1u64..300_000,
        ) {
            let mut price = Price::new(base);
            if tiered {
                price = price.above_200k(raised(&base, &by));
            }
            let mut bigger = parts;
            bigger[part] += more;
            prop_assert!(price.cost(&from_parts(parts)) <= price.cost(&from_parts(bigger)));
            // Input and output counts alone (the others held) too.
            let u = from_parts(parts);
            let mut more_input = u;
            more_input.input += more;
            let mut more_output = u;
            more_output.output += more;
            prop_assert!(price.cost(&u) <= price.cost(&more_input));
            prop_assert!(price.cost(&u) <= price.cost(&more_output));
        }
    }
}
