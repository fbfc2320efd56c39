//! `switchyard::path::normalize`, differentially against a reference
//! resolver written here from the module's documented rules: unreserved
//! escapes decoded and the others' hex upper-cased, runs of `/` merged,
//! then RFC 3986 section 5.2.4 `remove_dot_segments`; `%2F`, `%5C`, `%00`
//! and broken escapes refused. Also: the normal form is a fixed point, and
//! `NormalizePathLayer` hands its inner service that path with the query
//! untouched.
#![no_main]

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use http::{Request, Response, Uri};
use libfuzzer_sys::fuzz_target;
use switchyard::path::{NormalizePathLayer, PathError, normalize};
use tower::{Layer, ServiceExt, service_fn};

#[derive(Debug, PartialEq)]
enum RefError {
    EncodedSeparator,
    EncodedNul,
    InvalidEscape,
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The documented normal form, computed the textbook way.
fn reference(path: &str) -> Result<String, RefError> {
    if !path.starts_with('/') {
        return Ok(path.to_owned());
    }
    // 1. Percent-escapes, left to right (the first problem is reported).
    let b = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            decoded.push(b[i]);
            i += 1;
            continue;
        }
        let (Some(h), Some(l)) = (
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(RefError::InvalidEscape);
        };
        let v = h * 16 + l;
        if v == b'/' || v == b'\\' {
            return Err(RefError::EncodedSeparator);
        }
        if v == 0 {
            return Err(RefError::EncodedNul);
        }
        if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
            decoded.push(v);
        } else {
            decoded.extend_from_slice(format!("%{v:02X}").as_bytes());
        }
        i += 3;
    }
    let decoded = String::from_utf8(decoded).expect("only ASCII was decoded");
    // 2. Runs of `/` become one.
    let mut merged = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    // 3. RFC 3986 section 5.2.4, step by step.
    Ok(remove_dot_segments(merged))
}

fn remove_dot_segments(mut input: String) -> String {
    fn pop_segment(out: &mut String) {
        let at = out.rfind('/').unwrap_or(0);
        out.truncate(at);
    }
    let mut out = String::new();
    while !input.is_empty() {
        if input.starts_with("../") {
            input.drain(..3);
        } else if input.starts_with("./") {
            input.drain(..2);
        } else if input.starts_with("/./") {
            input.drain(..2);
        } else if input == "/." {
            input = "/".into();
        } else if input.starts_with("/../") {
            input.drain(..3);
            pop_segment(&mut out);
        } else if input == "/.." {
            input = "/".into();
            pop_segment(&mut out);
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            out.push_str(&input[..end]);
            input.drain(..end);
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Paths an engineer is about to refuse (`\` and `;`, raw or escaped):
/// either refused, or normalized as the reference says.
fn may_be_refused(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    path.contains('\\') || path.contains(';') || lower.contains("%5c") || lower.contains("%3b")
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    })
}

fn check_normal_form(out: &str) {
    assert!(out.starts_with('/'), "{out:?}");
    assert!(!out.contains("//"), "merged slashes: {out:?}");
    for seg in out.split('/') {
        assert!(seg != "." && seg != "..", "dot segment left: {out:?}");
    }
    let b = out.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'%' {
            let (h, l) = (b[i + 1], b[i + 2]);
            assert!(h.is_ascii_hexdigit() && !h.is_ascii_lowercase(), "{out:?}");
            assert!(l.is_ascii_hexdigit() && !l.is_ascii_lowercase(), "{out:?}");
            let v = hex(h).unwrap() * 16 + hex(l).unwrap();
            assert!(
                !(v.is_ascii_alphanumeric() || b"-._~/\\\0".contains(&v)),
                "escape left encoded: {out:?}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let path = String::from_utf8_lossy(data);
    let got = normalize(&path);
    if !path.starts_with('/') {
        assert!(
            matches!(got, Ok(Cow::Borrowed(p)) if p == path),
            "{path:?}: {got:?}"
        );
        return;
    }
    let want = reference(&path);
    match (&got, &want) {
        (Ok(g), Ok(w)) => assert_eq!(g.as_ref(), w.as_str(), "{path:?}"),
        (Err(_), _) if may_be_refused(&path) => {}
        (Err(g), Err(w)) => {
            let same = matches!(
                (g, w),
                (PathError::EncodedSeparator, RefError::EncodedSeparator)
                    | (PathError::EncodedNul, RefError::EncodedNul)
                    | (PathError::InvalidEscape, RefError::InvalidEscape)
            );
            assert!(same, "{path:?}: got {g:?}, reference {w:?}");
        }
        _ => panic!("{path:?}: got {got:?}, reference {want:?}"),
    }
    let Ok(out) = got else { return };
    check_normal_form(&out);
    // A fixed point. (Not always borrowed: a normal path with escapes in
    // it is rebuilt, equal.)
    assert_eq!(
        normalize(&out).as_deref(),
        Ok(out.as_ref()),
        "not idempotent: {path:?} -> {out:?}"
    );

    // Through the layer: the inner service sees the normal path and the
    // query exactly as sent.
    let Some((p, q)) = data.split_first().map(|_| {
        let text = path.as_ref();
        match text.split_once('#') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (text.to_owned(), None),
        }
    }) else {
        return;
    };
    let pq = match &q {
        Some(q) => format!("{p}?{q}"),
        None => p.clone(),
    };
    let Ok(uri) = pq.parse::<Uri>() else { return };
    let Some(path_only) = uri.path_and_query().map(|pq| pq.path().to_owned()) else {
        return;
    };
    let expect = normalize(&path_only).map(Cow::into_owned);
    let seen = Arc::new(Mutex::new(None));
    let seen2 = Arc::clone(&seen);
    let svc = NormalizePathLayer::new().layer(service_fn(move |req: Request<()>| {
        *seen2.lock().unwrap() = Some(req.uri().clone());
        async { Ok::<_, Infallible>(Response::new(())) }
    }));
    let res = runtime()
        .block_on(svc.oneshot(Request::builder().uri(uri.clone()).body(()).unwrap()))
        .unwrap();
    let seen = seen.lock().unwrap().take();
    match expect {
        Ok(normal) => {
            let seen = seen.expect("a normal path reaches the inner service");
            assert_eq!(seen.path(), normal, "{uri}");
            assert_eq!(seen.query(), uri.query(), "{uri}");
        }
        Err(_) => {
            assert!(
                seen.is_none(),
                "a refused path reached the inner service: {uri}"
            );
            assert_eq!(res.status(), 400);
        }
    }
});
