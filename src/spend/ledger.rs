//! scaffold
#![allow(missing_docs, dead_code, unreachable_pub)]
use crate::model::providers::Usage;
pub enum GroupBy {
    Identity,
}
#[derive(Debug, Default)]
pub struct Ledger;
impl Ledger {
    pub fn new() -> Self {
        Self
    }
    pub fn record(&self, _e: &LedgerEntry<'_>, _t: u64) {}
}
pub struct LedgerEntry<'a> {
    pub identity: Option<&'a str>,
    pub tenant: Option<&'a str>,
    pub alias: Option<&'a str>,
    pub model: &'a str,
    pub usage: &'a Usage,
    pub cost_micros: u64,
    pub priced: bool,
}
pub struct UsageRow;
