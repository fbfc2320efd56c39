//! W3C Trace Context (`traceparent`) at the gateway's edge.
//!
//! A request that comes with a valid `traceparent` keeps it, unchanged, on
//! its way upstream: the gateway records no spans of its own, so it passes
//! the caller's context on as the recommendation asks of a participant
//! that does not trace. A request without one, or with one that does not
//! parse (or with two), starts a new trace: a fresh `traceparent` (random
//! trace and parent ids, not sampled) replaces it, and any `tracestate`
//! goes, since it belonged to a context that is no more. Either way the
//! trace id is known, for the access log.
//!
//! ```
//! use http::Request;
//! use switchyard::trace::{TraceParent, propagate};
//!
//! let mut req = Request::builder()
//!     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!     .body(())
//!     .unwrap();
//! let trace = propagate(&mut req);
//! assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! assert!(trace.sampled());
//!
//! // None sent: one is made, and the upstream gets it.
//! let mut req = Request::new(());
//! let trace = propagate(&mut req);
//! let sent = req.headers()["traceparent"].as_bytes();
//! assert_eq!(TraceParent::parse(sent), Some(trace));
//! ```

use std::fmt;

use http::{HeaderName, HeaderValue, Request};

/// The `traceparent` header.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` header.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A parsed `traceparent`: trace id, parent id and flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.header_bytes()).unwrap_or("?"))
    }
}

/// Lower-case hex digits only, as the recommendation requires.
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_into(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = hex_digit(pair[0])? << 4 | hex_digit(pair[1])?;
    }
    Some(())
}

impl TraceParent {
    /// Parses a `traceparent` value: `version-traceid-parentid-flags`,
    /// lower-case hex, 2-32-16-2 digits. Version `00` is exactly that;
    /// a later version (not `ff`) may carry more after a `-`, which is
    /// ignored. An all-zero trace id or parent id is invalid.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < 55 {
            return None;
        }
        let mut version = [0u8; 1];
        hex_into(&value[0..2], &mut version)?;
        match version[0] {
            0xff => return None,
            0x00 if value.len() != 55 => return None,
            _ if value.len() > 55 && value[55] != b'-' => return None,
            _ => {}
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut parsed = TraceParent {
            trace_id: [0; 16],
            parent_id: [0; 8],
            flags: 0,
        };
        hex_into(&value[3..35], &mut parsed.trace_id)?;
        hex_into(&value[36..52], &mut parsed.parent_id)?;
        let mut flags = [0u8; 1];
        hex_into(&value[53..55], &mut flags)?;
        parsed.flags = flags[0];
        if parsed.trace_id == [0; 16] || parsed.parent_id == [0; 8] {
            return None;
        }
        Some(parsed)
    }

    /// The trace context `headers` carry, if they hold one `traceparent`
    /// line and it [parses](Self::parse): what [`propagate`] would keep.
    /// Nothing is changed.
    ///
    /// ```
    /// use http::{HeaderMap, HeaderValue};
    /// use switchyard::trace::TraceParent;
    ///
    /// let mut headers = HeaderMap::new();
    /// assert_eq!(TraceParent::from_headers(&headers), None);
    /// let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    /// headers.append("traceparent", HeaderValue::from_static(sent));
    /// let trace = TraceParent::from_headers(&headers).unwrap();
    /// assert_eq!(trace.parent_id(), "00f067aa0ba902b7");
    /// // Two lines are none.
    /// headers.append("traceparent", HeaderValue::from_static(sent));
    /// assert_eq!(TraceParent::from_headers(&headers), None);
    /// ```
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let mut values = headers.get_all(&TRACEPARENT).iter();
        match (values.next(), values.next()) {
            (Some(one), None) => Self::parse(one.as_bytes()),
            _ => None,
        }
    }

    /// A new trace: random trace and parent ids (from the thread's
    /// cryptographically secure generator, so they cannot be guessed),
    /// not sampled.
    pub fn new_root() -> Self {
        let mut parsed = TraceParent {
            trace_id: [0; 16],
            parent_id: [0; 8],
            flags: 0,
        };
        let mut rng = rand::rng();
        // Both ids from one draw. All zeros is invalid for either; a retry
        // is as likely as never.
        let mut bytes = [0u8; 24];
        while parsed.trace_id == [0; 16] || parsed.parent_id == [0; 8] {
            rand::Rng::fill_bytes(&mut rng, &mut bytes);
            let (trace, parent) = bytes.split_at(16);
            parsed.trace_id.copy_from_slice(trace);
            parsed.parent_id.copy_from_slice(parent);
        }
        parsed
    }

    /// The trace id, 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The parent id, 16 lower-case hex digits.
    pub fn parent_id(&self) -> String {
        hex(&self.parent_id)
    }

    /// Whether the caller sampled the trace (flag `01`).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// As a version `00` header value.
    pub fn to_header(&self) -> HeaderValue {
        // One allocation (the value's own bytes): the gateway makes one a
        // request that comes without a trace context.
        HeaderValue::from_bytes(&self.header_bytes())
            .expect("hex and dashes are a valid header value")
    }

    /// `00-{trace id}-{parent id}-{flags}`, on the stack.
    fn header_bytes(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[0] = b'0';
        out[1] = b'0';
        hex_to(&self.trace_id, &mut out[3..35]);
        hex_to(&self.parent_id, &mut out[36..52]);
        hex_to(&[self.flags], &mut out[53..55]);
        out
    }
}

/// Each byte's two lower-case hex digits: one load a byte where the
/// digits are written for every request's new trace context.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    table
};

/// `bytes` as lower-case hex into `out` (twice as long).
fn hex_to(bytes: &[u8], out: &mut [u8]) {
    for (&b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0; bytes.len() * 2];
    hex_to(bytes, &mut out);
    // Hex digits only.
    String::from_utf8(out).unwrap_or_default()
}

/// The request's trace context, made valid (see the [module docs](self)):
/// its one valid `traceparent` kept as it is, else a new trace in its
/// place and no `tracestate`.
pub fn propagate<B>(req: &mut Request<B>) -> TraceParent {
    let headers = req.headers_mut();
    // One lookup of the name for reading it and for replacing it.
    let root = match headers.entry(TRACEPARENT.clone()) {
        http::header::Entry::Occupied(mut sent) => {
            let mut values = sent.iter();
            if let (Some(one), None) = (values.next(), values.next())
                && let Some(parent) = TraceParent::parse(one.as_bytes())
            {
                return parent;
            }
            let root = TraceParent::new_root();
            sent.insert(root.to_header());
            root
        }
        http::header::Entry::Vacant(none) => {
            let root = TraceParent::new_root();
            none.insert(root.to_header());
            root
        }
    };
    headers.remove(&TRACESTATE);
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_recommendations_examples_and_its_rules() {
        let p = TraceParent::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(p.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.parent_id(), "00f067aa0ba902b7");
        assert!(p.sampled());
        assert_eq!(p.to_header(), EXAMPLE);
        // A later version may carry more, after a dash.
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes";
        assert!(TraceParent::parse(later.as_bytes()).is_some());
        for bad in [
            "",
            &EXAMPLE[..54],
            &format!("{EXAMPLE}-x"), // 00 with more
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", // upper case
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // separator
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", // more, no dash
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn a_bad_or_doubled_context_starts_a_new_trace() {
        let mut req = Request::builder()
            .header("traceparent", "00-zz-00f067aa0ba902b7-01")
            .header("tracestate", "vendor=1")
            .body(())
            .unwrap();
        let made = propagate(&mut req);
        assert_eq!(req.headers()["traceparent"], made.to_header());
        assert!(!req.headers().contains_key("tracestate"));
        assert!(!made.sampled());

        let mut req = Request::builder()
            .header("traceparent", EXAMPLE)
            .header("traceparent", EXAMPLE)
            .body(())
            .unwrap();
        let made = propagate(&mut req);
        assert_ne!(made.to_header(), EXAMPLE);
        assert_eq!(req.headers().get_all("traceparent").iter().count(), 1);

        // A good one, with its state, goes on unchanged.
        let mut req = Request::builder()
            .header("traceparent", EXAMPLE)
            .header("tracestate", "vendor=1")
            .body(())
            .unwrap();
        propagate(&mut req);
        assert_eq!(req.headers()["traceparent"], EXAMPLE);
        assert_eq!(req.headers()["tracestate"], "vendor=1");
        // Two new traces differ.
        assert_ne!(TraceParent::new_root(), TraceParent::new_root());
    }
}
