//! Rate-limit response headers: draft-ietf-httpapi-ratelimit-headers
//! (`RateLimit-Policy`, `RateLimit`), `Retry-After`, and the legacy
//! `X-RateLimit-*` trio.

use std::fmt::Write;

use http::header::{HeaderName, HeaderValue, RETRY_AFTER};

use super::gcra::ceil_secs;
use super::service::QuotaState;

pub(crate) static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub(crate) static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// `"name";q=100;w=60, ...`: one list member per quota. `w` is the period
/// in whole seconds, rounded up (a structured-field integer).
pub(crate) fn policy(quotas: &[(String, u32, u64)]) -> HeaderValue {
    let mut out = String::new();
    for (i, (name, q, period_nanos)) in quotas.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "\"{name}\";q={q};w={}",
            ceil_secs(*period_nanos).max(1)
        );
    }
    // Names are checked to be visible ASCII without `"` or `\`.
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The per-request headers for `states` (one per quota, in order, with
/// the quotas' `counts`: their `q`).
///
/// `r` never exceeds the quota's `q`: with a burst larger than the count,
/// more units can be free at once than the policy grants per window, and a
/// `RateLimit` saying `r=150` under a policy of `q=100` would contradict
/// it. Clients see at most `q` remaining; the burst above it still works.
pub(crate) fn write(
    headers: &mut Vec<(HeaderName, HeaderValue)>,
    names: &[String],
    counts: impl Iterator<Item = u32>,
    states: impl ExactSizeIterator<Item = QuotaState> + Clone,
    policy: &HeaderValue,
    legacy: bool,
) {
    let mut out = Text::default();
    // Pieces pushed in place, the numbers by `itoa`: `write!` through
    // `core::fmt` cost more than the rest of the value (every response
    // of a limited route carries it).
    let mut digits = itoa::Buffer::new();
    for (i, ((name, s), q)) in names.iter().zip(states.clone()).zip(counts).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str("\"");
        out.push_str(name);
        out.push_str("\";r=");
        out.push_str(digits.format(s.remaining.min(q)));
        out.push_str(";t=");
        out.push_str(digits.format(reset_secs(&s)));
    }
    if let Ok(v) = HeaderValue::from_bytes(out.as_bytes()) {
        headers.push((RATELIMIT.clone(), v));
    }
    headers.push((RATELIMIT_POLICY.clone(), policy.clone()));
    if legacy {
        // The most constrained quota speaks for all.
        if let Some(s) = states.min_by_key(|s| s.remaining) {
            headers.push((X_LIMIT.clone(), HeaderValue::from(s.limit)));
            headers.push((X_REMAINING.clone(), HeaderValue::from(s.remaining)));
            headers.push((X_RESET.clone(), HeaderValue::from(reset_secs(&s))));
        }
    }
}

/// A header value's text, written on the stack while it fits (one quota's
/// `RateLimit` member does) and on the heap past that: the value copies
/// it anyway, so a `String` would be an allocation made only to be
/// dropped.
struct Text {
    stack: [u8; 128],
    len: usize,
    heap: Option<String>,
}

impl Default for Text {
    fn default() -> Self {
        Self {
            stack: [0; 128],
            len: 0,
            heap: None,
        }
    }
}

impl Text {
    fn push_str(&mut self, s: &str) {
        if let Some(heap) = &mut self.heap {
            heap.push_str(s);
        } else if let Some(room) = self.stack.get_mut(self.len..self.len + s.len()) {
            room.copy_from_slice(s.as_bytes());
            self.len += s.len();
        } else {
            let mut heap = String::from_utf8_lossy(&self.stack[..self.len]).into_owned();
            heap.push_str(s);
            self.heap = Some(heap);
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match &self.heap {
            Some(heap) => heap.as_bytes(),
            None => &self.stack[..self.len],
        }
    }
}

/// `Retry-After` in whole seconds, rounded up and never 0.
pub(crate) fn retry_after(headers: &mut Vec<(HeaderName, HeaderValue)>, wait_nanos: u64) {
    headers.push((RETRY_AFTER, HeaderValue::from(retry_secs(wait_nanos))));
}

pub(crate) fn retry_secs(wait_nanos: u64) -> u64 {
    ceil_secs(wait_nanos).max(1)
}

fn reset_secs(s: &QuotaState) -> u64 {
    ceil_secs(u64::try_from(s.reset.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::Text;

    #[test]
    fn text_spills_to_the_heap_past_its_stack_and_keeps_every_byte() {
        let mut text = Text::default();
        let mut expected = String::new();
        for i in 0..40 {
            let member = format!("\"quota-{i}\";r={i};t=1, ");
            text.push_str(&member);
            expected.push_str(&member);
            assert_eq!(text.as_bytes(), expected.as_bytes(), "after {i}");
            assert_eq!(text.heap.is_some(), expected.len() > 128, "after {i}");
        }
    }
}
