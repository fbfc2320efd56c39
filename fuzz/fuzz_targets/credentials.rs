//! Credentials parsing in `switchyard::auth::ApiKeyLayer` (bearer token,
//! `x-api-key` header, `api_key` query parameter): a request is admitted
//! as the key's identity only when a source holds exactly the key; an
//! anonymous admission means no source held anything; what reaches the
//! inner service carries no credential in any source — including a query
//! parameter whose name only decodes to `api_key`, as the upstream's
//! framework will read it — and everything else (path, other parameters
//! in order, other headers) byte for byte. Also `sha256:` digest parsing.
#![no_main]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};

use http::{HeaderMap, Request, Response, Uri, header};
use libfuzzer_sys::fuzz_target;
use percent_encoding::percent_decode_str;
use switchyard::auth::{ApiKey, ApiKeyLayer, Identity, digest};
use tower::{Layer, ServiceExt, service_fn};

const KEY: &str = "sk-fuzz_1.2~x+y/z=";
const PARAM: &str = "api_key";

fn layers() -> &'static (ApiKeyLayer, ApiKeyLayer) {
    static L: OnceLock<(ApiKeyLayer, ApiKeyLayer)> = OnceLock::new();
    L.get_or_init(|| {
        let build = |anonymous: bool| {
            let mut b = ApiKeyLayer::builder()
                .key(ApiKey::new(KEY, Identity::new("alice")))
                .query_param(PARAM);
            if anonymous {
                b = b.anonymous(Identity::anonymous());
            }
            b.build().unwrap()
        };
        (build(false), build(true))
    })
}

fn is_bearer(v: &[u8]) -> bool {
    let v = v.trim_ascii_start();
    v.len() >= 6
        && v[..6].eq_ignore_ascii_case(b"bearer")
        && v.get(6).is_none_or(|b| b.is_ascii_whitespace())
}

/// Query pairs whose name, percent-decoded, is `api_key`.
fn names_param(pair: &str) -> bool {
    let name = pair.split_once('=').map_or(pair, |(k, _)| k);
    percent_decode_str(name)
        .decode_utf8()
        .is_ok_and(|n| n == PARAM)
}

/// Whether any source holds exactly the key.
fn holds_key(headers: &HeaderMap, uri: &Uri) -> bool {
    let bearer = headers.get_all(header::AUTHORIZATION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            let v = v.trim_matches([' ', '\t']);
            v.split_once([' ', '\t']).is_some_and(|(s, t)| {
                s.eq_ignore_ascii_case("bearer") && t.trim_matches([' ', '\t']) == KEY
            })
        })
    });
    let header = headers
        .get_all("x-api-key")
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.trim() == KEY));
    let query = uri.query().is_some_and(|q| {
        q.split('&').any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k == PARAM && percent_decode_str(v).decode_utf8().is_ok_and(|v| v == KEY)
            })
        })
    });
    bearer || header || query
}

/// Whether any source holds anything at all.
fn holds_any(headers: &HeaderMap, uri: &Uri) -> bool {
    headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(|v| is_bearer(v.as_bytes()))
        || headers.contains_key("x-api-key")
        || uri.query().is_some_and(|q| {
            q.split('&')
                .any(|p| p.split_once('=').map_or(p, |(k, _)| k) == PARAM)
        })
}

fuzz_target!(|data: &[u8]| {
    let p = common::parts(data, 3);
    let Ok(digest_text) = std::str::from_utf8(p[2]) else {
        return;
    };
    // Digests: `sha256:` and 64 hex digits, and nothing else.
    let parsed = ApiKey::from_digest(digest_text, Identity::new("d"));
    let well_formed = digest_text
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(parsed.is_ok(), well_formed, "{digest_text:?}");
    if let Ok(k) = parsed {
        assert_eq!(k.digest(), digest_text.to_ascii_lowercase());
    }
    assert_eq!(
        ApiKey::from_digest(&digest(digest_text), Identity::new("d"))
            .unwrap()
            .digest(),
        digest(digest_text)
    );

    let Ok(uri) = Uri::try_from(p[0]) else { return };
    if uri.path_and_query().is_none() {
        return;
    }
    let headers = common::headers(p[1]);
    let (plain, anonymous) = layers();
    for (layer, anon) in [(plain, false), (anonymous, true)] {
        let seen = Arc::new(Mutex::new(None));
        let record = Arc::clone(&seen);
        let svc = layer.layer(service_fn(move |req: Request<()>| {
            *record.lock().unwrap() = Some(req);
            async { Ok::<_, Infallible>(Response::new(())) }
        }));
        let mut req = Request::builder().uri(uri.clone()).body(()).unwrap();
        *req.headers_mut() = headers.clone();
        let res = common::runtime().block_on(svc.oneshot(req)).unwrap();
        let Some(inner) = seen.lock().unwrap().take() else {
            assert!(
                matches!(res.status().as_u16(), 400 | 401),
                "{}",
                res.status()
            );
            // The key alone, in one well-formed source, is never refused.
            continue;
        };
        let who = inner.extensions().get::<Identity>().expect("an identity");
        if who.is_anonymous() {
            assert!(anon, "anonymous without the option");
            assert!(
                !holds_any(&headers, &uri),
                "a credential passed as anonymous: {uri} {headers:?}"
            );
        } else {
            assert_eq!(who.id(), "alice");
            assert!(
                holds_key(&headers, &uri),
                "admitted without the key: {uri} {headers:?}"
            );
        }
        // Stripped: no credential in any source the upstream may read.
        let h = inner.headers();
        assert!(
            !h.get_all(header::AUTHORIZATION)
                .iter()
                .any(|v| is_bearer(v.as_bytes())),
            "a bearer token went on: {h:?}"
        );
        assert!(!h.contains_key("x-api-key"), "x-api-key went on");
        let q = inner.uri().query().unwrap_or("");
        assert!(
            !q.split('&').any(names_param),
            "a parameter the upstream reads as {PARAM} went on: {q:?} (from {uri})"
        );
        // Everything else as sent: every parameter but those the upstream
        // reads as the credential's (`api%5Fkey` too, as stripped above).
        assert_eq!(inner.uri().path(), uri.path());
        let kept: Vec<&str> = uri
            .query()
            .map(|q| q.split('&').filter(|p| !names_param(p)).collect())
            .unwrap_or_default();
        let now: Vec<&str> = inner
            .uri()
            .query()
            .map(|q| q.split('&').collect())
            .unwrap_or_default();
        assert_eq!(
            now,
            kept,
            "other parameters changed: {uri} -> {}",
            inner.uri()
        );
        for name in headers.keys() {
            if name == header::AUTHORIZATION || name == "x-api-key" {
                continue;
            }
            let a: Vec<_> = headers.get_all(name).iter().collect();
            let b: Vec<_> = h.get_all(name).iter().collect();
            assert_eq!(a, b, "header {name} changed");
        }
    }
});
