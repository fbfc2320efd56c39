//! [`TokenLimit`]: tokens per period, keyed like every other limit.
//!
//! A [`Meter`](super::Meter) takes a request's estimate from each of its
//! token limits when it admits the request (its input, from the body's
//! size, and its `max_tokens`), and settles with what the answer says it
//! used. What a limit counts is a [`TokenCount`]:
//!
//! ```
//! use switchyard::key::KeyBy;
//! use switchyard::model::providers::Usage;
//! use switchyard::ratelimit::Quota;
//! use switchyard::spend::{TokenCount, TokenLimit};
//!
//! let mut usage = Usage::default();
//! (usage.input, usage.output) = (1_000, 250);
//! assert_eq!(TokenCount::Total.of(&usage), 1_250);
//! assert_eq!(TokenCount::Output.of(&usage), 250);
//! // Output priced four times input: count it four times.
//! let weighted = TokenCount::Weighted { input: 1, output: 4 };
//! assert_eq!(weighted.of(&usage), 2_000);
//!
//! // 10,000 weighted tokens an hour per caller.
//! let limit = TokenLimit::new(KeyBy::identity(), Quota::per_hour(10_000)).counting(weighted);
//! assert_eq!(limit.count(), weighted);
//! assert_eq!(limit.name(), "10000-per-3600s");
//! ```

use std::fmt;

use crate::key::KeyBy;
use crate::model::providers::Usage;
use crate::ratelimit::Quota;

/// Which tokens a [`TokenLimit`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TokenCount {
    /// Input tokens (cached ones included).
    Input,
    /// Output tokens (reasoning included).
    Output,
    /// Input and output.
    #[default]
    Total,
    /// `input × in + output × out`: e.g. output counted four times, as it
    /// costs four times as much.
    Weighted {
        /// Weight of an input token.
        input: u32,
        /// Weight of an output token.
        output: u32,
    },
}

impl TokenCount {
    /// The units `input` and `output` tokens make.
    pub fn units(self, input: u64, output: u64) -> u64 {
        match self {
            Self::Input => input,
            Self::Output => output,
            Self::Total => input.saturating_add(output),
            Self::Weighted {
                input: wi,
                output: wo,
            } => input
                .saturating_mul(u64::from(wi))
                .saturating_add(output.saturating_mul(u64::from(wo))),
        }
    }

    /// The units of an answer's usage.
    pub fn of(self, usage: &Usage) -> u64 {
        self.units(usage.input, usage.output)
    }
}

/// A token quota: `quota`'s count is tokens (or weighted units, see
/// [`TokenCount`]) per its period, for each key `key_by` reads from a
/// request (identity, tenant, header, client IP...).
///
/// ```
/// use switchyard::key::KeyBy;
/// use switchyard::ratelimit::Quota;
/// use switchyard::spend::{TokenCount, TokenLimit};
///
/// // 100,000 tokens a minute per caller, output counted four times.
/// let tpm = TokenLimit::new(KeyBy::identity(), Quota::per_minute(100_000))
///     .counting(TokenCount::Weighted { input: 1, output: 4 });
/// assert_eq!(tpm.name(), "100000-per-60s");
/// ```
#[derive(Clone)]
pub struct TokenLimit {
    pub(crate) key_by: KeyBy,
    pub(crate) quota: Quota,
    pub(crate) count: TokenCount,
}

impl TokenLimit {
    /// `quota` tokens (input and output) per key.
    pub fn new(key_by: KeyBy, quota: Quota) -> Self {
        Self {
            key_by,
            quota,
            count: TokenCount::Total,
        }
    }

    /// Counts these tokens instead of the total.
    pub fn counting(mut self, count: TokenCount) -> Self {
        self.count = count;
        self
    }

    /// The quota's name (in headers and refusals).
    pub fn name(&self) -> String {
        self.quota.name()
    }

    /// The quota.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// What it counts.
    pub fn count(&self) -> TokenCount {
        self.count
    }
}

impl fmt::Debug for TokenLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLimit")
            .field("key_by", &self.key_by)
            .field("quota", &self.quota)
            .field("count", &self.count)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(TokenCount::Input.units(10, 3), 10);
        assert_eq!(TokenCount::Output.units(10, 3), 3);
        assert_eq!(TokenCount::Total.units(10, 3), 13);
        let w = TokenCount::Weighted {
            input: 1,
            output: 4,
        };
        assert_eq!(w.units(10, 3), 22);
        assert_eq!(w.units(u64::MAX, 1), u64::MAX);
    }
}
