//! `trace::TraceParent::parse` and `trace::propagate` against a reference
//! reading of the W3C Trace Context recommendation (§3.2) written here:
//! what parses, what the ids are, and that the request always leaves with
//! exactly one valid `traceparent`, the caller's when it was valid.
#![no_main]

use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use switchyard::trace::{TraceParent, propagate};

fn lower_hex(b: &[u8]) -> bool {
    b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// §3.2: `version "-" trace-id "-" parent-id "-" trace-flags`, lower-case
/// hex; version `ff` invalid; version `00` exactly 55 bytes; a later one
/// longer only after a `-`; all-zero ids invalid.
fn reference(v: &[u8]) -> Option<(String, String, u8)> {
    if v.len() < 55 || !lower_hex(&v[0..2]) || &v[0..2] == b"ff" {
        return None;
    }
    if &v[0..2] == b"00" && v.len() != 55 {
        return None;
    }
    if v.len() > 55 && v[55] != b'-' {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let (trace, parent, flags) = (&v[3..35], &v[36..52], &v[53..55]);
    if !lower_hex(trace) || !lower_hex(parent) || !lower_hex(flags) {
        return None;
    }
    if trace.iter().all(|&c| c == b'0') || parent.iter().all(|&c| c == b'0') {
        return None;
    }
    let flags = u8::from_str_radix(std::str::from_utf8(flags).ok()?, 16).ok()?;
    Some((
        String::from_utf8(trace.to_vec()).ok()?,
        String::from_utf8(parent.to_vec()).ok()?,
        flags,
    ))
}

fuzz_target!(|data: &[u8]| {
    let (twice, value) = match data.split_first() {
        Some((&b, rest)) => (b & 1 == 1, rest),
        None => (false, data),
    };
    let parsed = TraceParent::parse(value);
    let want = reference(value);
    assert_eq!(
        parsed.map(|p| (p.trace_id(), p.parent_id(), p.sampled())),
        want.as_ref()
            .map(|(t, p, f)| (t.clone(), p.clone(), f & 1 == 1)),
        "{:?}",
        String::from_utf8_lossy(value)
    );
    if let Some(p) = parsed {
        assert_eq!(TraceParent::parse(p.to_header().as_bytes()), Some(p));
    }

    // On a request: one valid header leaves, the caller's when it was one.
    let Ok(header) = HeaderValue::from_bytes(value) else {
        return;
    };
    let mut req = Request::builder()
        .header("traceparent", header.clone())
        .header("tracestate", "k=v")
        .body(())
        .unwrap();
    if twice {
        req.headers_mut().append("traceparent", header.clone());
    }
    let out = propagate(&mut req);
    let sent: Vec<_> = req.headers().get_all("traceparent").iter().collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(TraceParent::parse(sent[0].as_bytes()), Some(out));
    if parsed.is_some() && !twice {
        assert_eq!(sent[0], &header, "a valid context changed");
        assert_eq!(out, parsed.unwrap());
        assert!(req.headers().contains_key("tracestate"));
    } else {
        assert!(!out.sampled(), "a new trace is not sampled");
        assert!(
            !req.headers().contains_key("tracestate"),
            "the state of a dropped context kept"
        );
    }
});
