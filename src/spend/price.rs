//! scaffold
#![allow(missing_docs, dead_code, unreachable_pub)]
use crate::model::providers::Usage;
pub type Micros = u64;
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    pub input: u64,
    pub output: u64,
    pub cache_read: Option<u64>,
    pub cache_write: Option<u64>,
    pub reasoning: Option<u64>,
}
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Price {
    pub rates: Rates,
    pub above_200k: Option<Rates>,
    pub max_input_tokens: Option<u64>,
    pub max_output_tokens: Option<u64>,
}
impl Price {
    pub fn per_million(i: u64, o: u64) -> Self {
        Self {
            rates: Rates {
                input: i,
                output: o,
                ..Default::default()
            },
            ..Default::default()
        }
    }
    pub fn cost(&self, u: &Usage) -> Cost {
        Cost {
            picos: u128::from(u.input) * u128::from(self.rates.input)
                + u128::from(u.output) * u128::from(self.rates.output),
        }
    }
}
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    picos: u128,
}
impl Cost {
    pub fn micros(&self) -> u64 {
        u64::try_from(self.picos.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}
#[derive(Debug, Default, Clone)]
pub struct PriceCatalog {
    m: std::collections::HashMap<String, Price>,
}
impl PriceCatalog {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn with_price(mut self, n: impl Into<String>, p: Price) -> Self {
        self.m.insert(n.into(), p);
        self
    }
    pub fn get(&self, n: &str) -> Option<&Price> {
        self.m.get(n)
    }
    pub fn len(&self) -> usize {
        self.m.len()
    }
}
#[derive(Debug, thiserror::Error)]
pub enum PriceError {
    #[error("x")]
    X,
}
