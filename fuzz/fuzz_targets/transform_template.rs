//! Templates and query rewriting in `switchyard::transform`, through
//! `TransformLayer` and `oneshot`: a fuzzed query string and header meet
//! fixed rules (`add_prefix = "/t/{query.tenant}"`, query `remove`,
//! `rename`, `replace` with `{header.x-v}`, `add` with `{query.src}`, a
//! header from `{query.src}`). Checked: parameters no rule touches keep
//! their bytes and order; every parameter decodes (`+` as space, as the
//! layer reads names) to what a reference applying the rules intends, so
//! a rendered value never injects or splits a parameter; and a value put
//! into the path stays one segment under `/t/` once the upstream resolves
//! dot segments (it cannot climb out of its prefix), and never makes a
//! path the gateway's own normalization would refuse (`%2F`, `%5C`, `%00`).
#![no_main]

mod common;

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use http::{HeaderValue, Request, Response, Uri};
use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;
use switchyard::body::RequestBody;
use switchyard::path::normalize;
use switchyard::transform::{RuleSet, Rules, TransformLayer};
use tower::{Layer, ServiceExt, service_fn};

fn layer() -> &'static TransformLayer {
    static L: OnceLock<TransformLayer> = OnceLock::new();
    L.get_or_init(|| {
        TransformLayer::new(Rules::new().set(RuleSet::new().request(|r| {
            r.path.add_prefix("/t/{query.tenant}");
            r.query
                .remove("drop")
                .rename("old", "new")
                .replace("r", "{header.x-v}")
                .add("added", "{query.src}");
            r.headers.add("x-src", "{query.src}");
        })))
        .unwrap()
    })
}

fn decode(raw: &str) -> String {
    percent_decode_str(&raw.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

fn pairs(query: Option<&str>) -> Vec<(&str, Option<&str>)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        })
        .collect()
}

/// The first value of `name`, decoded, as templates read it.
fn param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (decode(k) == name).then(|| decode(v))
    })
}

fuzz_target!(|data: &[u8]| {
    let p = common::parts(data, 2);
    let Ok(query) = std::str::from_utf8(p[0]) else {
        return;
    };
    let Ok(uri) = format!("/base?{query}").parse::<Uri>() else {
        return;
    };
    let x_v = HeaderValue::from_bytes(p[1]).ok();
    let mut req = Request::get(uri.clone()).body(String::new()).unwrap();
    if let Some(v) = &x_v {
        req.headers_mut().insert("x-v", v.clone());
    }
    let seen = Arc::new(Mutex::new(None));
    let record = Arc::clone(&seen);
    let svc = layer().layer(service_fn(move |req: Request<RequestBody<String>>| {
        *record.lock().unwrap() = Some(req.map(|_| ()));
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    }));
    let res = common::runtime().block_on(svc.oneshot(req)).unwrap();
    let Some(inner) = seen.lock().unwrap().take() else {
        assert_eq!(res.status(), 400, "refused with {}", res.status());
        return;
    };
    let q = uri.query();
    let out = inner.uri();

    // The path: `/t/<tenant>/base`, one segment however the upstream
    // resolves dots; unchanged without a tenant.
    match param(q, "tenant") {
        None => assert_eq!(out.path(), "/base"),
        Some(tenant) if tenant.is_empty() => {}
        Some(tenant) => {
            let path = out.path();
            assert!(path.starts_with("/t/") && path.ends_with("/base"), "{path}");
            match normalize(path) {
                Ok(resolved) => {
                    let segs: Vec<&str> = resolved.split('/').collect();
                    assert!(
                        segs.len() == 4
                            && segs[1] == "t"
                            && !segs[2].is_empty()
                            && segs[3] == "base",
                        "tenant {tenant:?} escaped its segment: {path} resolves to {resolved}"
                    );
                }
                // `%2F`, `%5C`, `%00` in a path: servers disagree on them
                // (a server that decodes `%2F` splits the segment), which
                // is why the gateway refuses such paths from clients.
                Err(e) => panic!("tenant {tenant:?} made a path the gateway refuses ({e}): {path}"),
            }
        }
    }

    // The query, by the rules.
    let mut want: Vec<(Cow<'_, str>, Option<Cow<'_, str>>)> = pairs(q)
        .into_iter()
        .filter(|(k, _)| decode(k) != "drop")
        .map(|(k, v)| {
            let k = if decode(k) == "old" {
                Cow::Borrowed("new")
            } else {
                Cow::Borrowed(k)
            };
            (k, v.map(Cow::Borrowed))
        })
        .collect();
    if let Some(v) = &x_v {
        let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
        let mut first = true;
        want.retain_mut(|(k, val)| {
            if decode(k) != "r" {
                return true;
            }
            if std::mem::take(&mut first) {
                *val = Some(Cow::Owned(format!("\0{v}"))); // decoded form, marked
                return true;
            }
            false
        });
    }
    if let Some(src) = param(q, "src")
        && !want.iter().any(|(k, _)| decode(k) == "added")
    {
        want.push((Cow::Borrowed("added"), Some(Cow::Owned(format!("\0{src}")))));
    }
    let got = pairs(out.query());
    assert_eq!(got.len(), want.len(), "{uri} -> {out}: want {want:?}");
    for ((gk, gv), (wk, wv)) in got.iter().zip(&want) {
        assert_eq!(decode(gk), decode(wk), "{uri} -> {out}");
        match wv.as_deref() {
            // A rendered value: compare decoded.
            Some(w) if w.starts_with('\0') => {
                assert_eq!(gv.map(decode).as_deref(), Some(&w[1..]), "{uri} -> {out}")
            }
            // Untouched: the same bytes.
            w => assert_eq!(*gv, w, "{uri} -> {out}"),
        }
    }

    // The header from a decoded parameter: exactly that value, or none.
    if let Some(h) = inner.headers().get("x-src") {
        assert_eq!(
            Some(String::from_utf8_lossy(h.as_bytes()).into_owned()),
            param(q, "src")
        );
    }
});
