//! `switchyard::proxy::remove_hop_by_hop`: every hop-by-hop header goes
//! (the fixed list, and every header `Connection` names), every other
//! header stays with its values in order, `TE: trailers` stays on
//! requests that asked for it, and the headers a proxy must keep — `Host`,
//! `X-Forwarded-*`, `Forwarded`, `X-Real-IP` — survive even when
//! `Connection` names them (a client must not strip what an earlier proxy
//! wrote).
#![no_main]

mod common;

use http::{HeaderMap, HeaderName, header};
use libfuzzer_sys::fuzz_target;
use switchyard::proxy::remove_hop_by_hop;

const HOP_BY_HOP: [&str; 10] = [
    "http2-settings",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fuzz_target!(|data: &[u8]| {
    let Some((&flag, rest)) = data.split_first() else {
        return;
    };
    let request = flag & 1 == 1;
    let before: HeaderMap = common::headers(rest);
    let mut after = before.clone();
    remove_hop_by_hop(&mut after, request);

    // The names `Connection` lists (a list of tokens, RFC 9110 7.6.1).
    let named: Vec<HeaderName> = before
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    let asked_trailers = before.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });

    for name in before.keys() {
        let was: Vec<_> = before.get_all(name).iter().collect();
        let now: Vec<_> = after.get_all(name).iter().collect();
        if common::protected(name) {
            assert_eq!(
                now, was,
                "protected header {name} changed (Connection: {named:?})"
            );
        } else if *name == header::TE {
            if request && asked_trailers {
                // `TE: trailers` alone, unless `Connection` named `te`.
                assert!(
                    now.is_empty() && named.contains(name) || now == ["trailers"],
                    "TE: {now:?}"
                );
            } else {
                assert!(now.is_empty(), "TE kept: {now:?}");
            }
        } else if HOP_BY_HOP.contains(&name.as_str()) || named.contains(name) {
            assert!(now.is_empty(), "hop-by-hop header {name} kept: {now:?}");
        } else {
            assert_eq!(now, was, "end-to-end header {name} changed");
        }
    }
    for name in after.keys() {
        assert!(
            before.contains_key(name),
            "header {name} appeared from nowhere"
        );
    }
});
