//! Finding a credential in a request, telling malformed input apart, and
//! removing credentials before the request goes further.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{AUTHORIZATION, HeaderName};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Uri};
use percent_encoding::percent_decode_str;

use super::Identity;
use super::reject::Challenge;
use crate::future::Rejection;

// === impl Authenticator ===

/// What every authentication layer does around its own check of a
/// credential: find it, refuse what is missing or unreadable, admit
/// anonymous callers if configured, strip credentials, record the
/// identity, and count each outcome.
#[derive(Debug)]
pub(crate) struct Authenticator {
    pub(crate) sources: Sources,
    pub(crate) strip: bool,
    pub(crate) anonymous: Option<Identity>,
    pub(crate) challenge: Challenge,
    stats: Counters,
}

#[derive(Debug, Default)]
struct Counters {
    authenticated: AtomicU64,
    anonymous: AtomicU64,
    missing: AtomicU64,
    /// By [`Invalid`] reason.
    invalid: [AtomicU64; Invalid::COUNT],
    malformed: AtomicU64,
}

/// Why a credential that was found and read is not valid: counted per
/// reason (never told to the caller, who gets the same 401 for all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// An API key that is not in the table.
    UnknownKey,
    /// An API key that is disabled.
    DisabledKey,
    /// An API key past its `not_after`.
    ExpiredKey,
    /// A JWT past its `exp` (its signature verified).
    ExpiredToken,
    /// A JWT whose signature no key of its algorithm and `kid` verifies.
    BadSignature,
    /// A JWT signed right whose issuer, audience, `nbf` or `sub` is wrong.
    Claims,
    /// A JWT with no verification key of its algorithm and `kid`.
    NoMatchingKey,
    /// A bearer token that is not a JWT at all (bad header, base64, JSON).
    MalformedToken,
}

impl Invalid {
    /// How many reasons there are: the counters' array is indexed by them.
    const COUNT: usize = Invalid::MalformedToken as usize + 1;
}

impl Authenticator {
    pub(crate) fn new(
        sources: Sources,
        strip: bool,
        anonymous: Option<Identity>,
        realm: &str,
    ) -> Self {
        Self {
            sources,
            strip,
            anonymous,
            challenge: Challenge::new(realm),
            stats: Counters::default(),
        }
    }

    /// Admits `req` with the identity `verify` finds for its credential, or
    /// says how to refuse it. A wrong credential is refused even where
    /// anonymous access is allowed.
    pub(crate) fn admit<B>(
        &self,
        req: &mut Request<B>,
        verify: impl FnOnce(&str) -> Result<Identity, Invalid>,
    ) -> Result<(), Rejection> {
        let count = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
        let identity = match self.sources.find(req) {
            Err(Malformed(why)) => {
                count(&self.stats.malformed);
                return Err(self.challenge.malformed(why));
            }
            Ok(None) => match &self.anonymous {
                Some(anonymous) => {
                    count(&self.stats.anonymous);
                    anonymous.clone()
                }
                None => {
                    count(&self.stats.missing);
                    return Err(self.challenge.missing());
                }
            },
            Ok(Some(credential)) => match verify(&credential) {
                Ok(identity) => {
                    count(&self.stats.authenticated);
                    identity
                }
                Err(why) => {
                    count(&self.stats.invalid[why as usize]);
                    return Err(self.challenge.invalid());
                }
            },
        };
        if self.strip {
            self.sources.strip(req);
        }
        req.extensions_mut().insert(identity);
        Ok(())
    }

    pub(crate) fn stats(&self) -> AuthStats {
        let s = &self.stats;
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let invalid = |why: Invalid| read(&s.invalid[why as usize]);
        AuthStats {
            authenticated: read(&s.authenticated),
            anonymous: read(&s.anonymous),
            missing: read(&s.missing),
            invalid: s.invalid.iter().map(read).sum(),
            malformed: read(&s.malformed),
            unknown_key: invalid(Invalid::UnknownKey),
            disabled_key: invalid(Invalid::DisabledKey),
            expired_key: invalid(Invalid::ExpiredKey),
            expired_token: invalid(Invalid::ExpiredToken),
            bad_signature: invalid(Invalid::BadSignature),
            invalid_claims: invalid(Invalid::Claims),
            no_matching_key: invalid(Invalid::NoMatchingKey),
            malformed_token: invalid(Invalid::MalformedToken),
        }
    }
}

/// Counters of an authentication layer since it was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct AuthStats {
    /// Requests with valid credentials.
    pub authenticated: u64,
    /// Requests let through as anonymous.
    pub anonymous: u64,
    /// Requests refused for lack of credentials.
    pub missing: u64,
    /// Requests refused for invalid credentials: the sum of the reasons
    /// below, from `unknown_key` on.
    pub invalid: u64,
    /// Requests refused for unreadable credentials (answered 400).
    pub malformed: u64,
    /// Of `invalid`: an API key that is not known (never added, or
    /// revoked).
    pub unknown_key: u64,
    /// Of `invalid`: an API key that is disabled.
    pub disabled_key: u64,
    /// Of `invalid`: an API key past its expiry.
    pub expired_key: u64,
    /// Of `invalid`: a JWT past its `exp` (its signature was good).
    pub expired_token: u64,
    /// Of `invalid`: a JWT whose signature no key verified.
    pub bad_signature: u64,
    /// Of `invalid`: a JWT signed right whose issuer, audience,
    /// not-before or subject is not accepted.
    pub invalid_claims: u64,
    /// Of `invalid`: a JWT for which no key of its algorithm (and `kid`)
    /// is configured.
    pub no_matching_key: u64,
    /// Of `invalid`: a bearer token that is not a readable JWT.
    pub malformed_token: u64,
}

// === impl Sources ===

/// Where credentials are looked for, in this order: `Authorization:
/// Bearer`, a named header, a query parameter.
#[derive(Clone, Debug)]
pub(crate) struct Sources {
    pub(crate) bearer: bool,
    pub(crate) header: Option<HeaderName>,
    pub(crate) query: Option<String>,
}

/// Why a request's credentials could not be read at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

impl Sources {
    /// The first credential present, by source order.
    pub(crate) fn find<'r, B>(
        &self,
        req: &'r Request<B>,
    ) -> Result<Option<Cow<'r, str>>, Malformed> {
        if self.bearer
            && let Some(token) = bearer(req.headers())?
        {
            return Ok(Some(Cow::Borrowed(token)));
        }
        if let Some(name) = &self.header
            && let Some(key) = single(req.headers(), name)?
        {
            return Ok(Some(Cow::Borrowed(key)));
        }
        if let Some(param) = &self.query
            && let Some(key) = query_param(req.uri(), param)?
        {
            return Ok(Some(key));
        }
        Ok(None)
    }

    /// Removes every credential these sources would read, so that upstream
    /// services never see a client's key. Other headers, and the rest of the
    /// query string byte for byte, are kept.
    pub(crate) fn strip<B>(&self, req: &mut Request<B>) {
        if self.bearer && is_bearer(req.headers()) {
            req.headers_mut().remove(AUTHORIZATION);
        }
        if let Some(name) = &self.header {
            req.headers_mut().remove(name);
        }
        if let Some(param) = &self.query
            && let Some(uri) = without_param(req.uri(), param)
        {
            *req.uri_mut() = uri;
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (RFC 6750). An
/// `Authorization` header of another scheme is not ours: `Ok(None)`.
pub(crate) fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Malformed> {
    let mut all = headers.get_all(AUTHORIZATION).iter();
    let value = match (all.next(), all.next()) {
        (None, _) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(Malformed(
                "the request has more than one Authorization header",
            ));
        }
        (Some(value), None) => value,
    };
    let value = value
        .to_str()
        .map_err(|_| Malformed("the Authorization header is not visible ASCII"))?;
    // Tolerate tabs and stray spaces around the scheme: a key must never
    // slip past as "not a bearer token" and on to the upstream.
    let value = value.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_matches([' ', '\t']);
    if token.is_empty() {
        return Err(Malformed("`Bearer` is not followed by a token"));
    }
    // b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let body = token.trim_end_matches('=');
    let valid = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if !valid {
        return Err(Malformed("the bearer token is not a valid b64token"));
    }
    Ok(Some(token))
}

fn is_bearer(headers: &HeaderMap) -> bool {
    headers.get_all(AUTHORIZATION).iter().any(|v| {
        let v = v.as_bytes().trim_ascii_start();
        v.get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"bearer"))
            && v.get(6).is_none_or(|b| b.is_ascii_whitespace())
    })
}

/// The value of a header that must appear at most once.
fn single<'r>(headers: &'r HeaderMap, name: &HeaderName) -> Result<Option<&'r str>, Malformed> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(Malformed("the credential header appears more than once")),
        (Some(v), None) => {
            let v = v
                .to_str()
                .map_err(|_| Malformed("the credential header is not visible ASCII"))?
                .trim();
            if v.is_empty() {
                Err(Malformed("the credential header is empty"))
            } else {
                Ok(Some(v))
            }
        }
    }
}

/// A query parameter's value, percent-decoded (RFC 3986; `+` is kept as
/// it is, since keys often contain it).
fn query_param<'r>(uri: &'r Uri, name: &str) -> Result<Option<Cow<'r, str>>, Malformed> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !param_is(k, name) {
            continue;
        }
        if found.is_some() {
            return Err(Malformed(
                "the credential query parameter appears more than once",
            ));
        }
        let v = percent_decode_str(v)
            .decode_utf8()
            .map_err(|_| Malformed("the credential query parameter is not UTF-8"))?;
        if v.is_empty() {
            return Err(Malformed("the credential query parameter is empty"));
        }
        found = Some(v);
    }
    Ok(found)
}

/// Whether the query parameter named `key` (as written) is `name` once
/// percent-decoded, as the upstream's framework will read it:
/// `api%5Fkey` is `api_key` (found by the `credentials` fuzz target: it
/// was neither read nor stripped, and reached the upstream).
fn param_is(key: &str, name: &str) -> bool {
    key == name || (key.contains('%') && percent_decode_str(key).decode_utf8_lossy() == name)
}

/// `uri` without query parameter `name`; `None` if it has none.
fn without_param(uri: &Uri, name: &str) -> Option<Uri> {
    let query = uri.query()?;
    let is_it = |pair: &&str| param_is(pair.split_once('=').map_or(*pair, |(k, _)| k), name);
    if !query.split('&').any(|p| is_it(&p)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_it(p)).collect();
    let mut pq = String::with_capacity(uri.path().len() + query.len());
    pq.push_str(uri.path());
    if !kept.is_empty() {
        pq.push('?');
        pq.push_str(&kept.join("&"));
    }
    let mut parts = uri.clone().into_parts();
    // Removing a parameter from a valid path and query leaves a valid one.
    parts.path_and_query = Some(PathAndQuery::try_from(pq).ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &[u8])], uri: &str) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, http::HeaderValue::from_bytes(v).unwrap());
        }
        b.body(()).unwrap()
    }

    fn all() -> Sources {
        Sources {
            bearer: true,
            header: Some(HeaderName::from_static("x-api-key")),
            query: Some("api_key".into()),
        }
    }

    #[test]
    fn an_encoded_parameter_name_is_the_credential_and_is_stripped() {
        let s = all();
        let r = req(&[], "/p?api%5Fkey=leak&x=1");
        assert_eq!(s.find(&r).unwrap().as_deref(), Some("leak"));
        let stripped = without_param(r.uri(), "api_key").unwrap();
        assert_eq!(stripped.to_string(), "/p?x=1");
    }

    #[test]
    fn order_and_sources() {
        let s = all();
        let r = req(
            &[("authorization", b"Bearer tok"), ("x-api-key", b"hdr")],
            "/?api_key=q",
        );
        assert_eq!(s.find(&r).unwrap().as_deref(), Some("tok"));
        let r = req(&[("x-api-key", b"hdr")], "/?api_key=q");
        assert_eq!(s.find(&r).unwrap().as_deref(), Some("hdr"));
        let r = req(&[], "/p?a=1&api_key=q%2Bx+y&b=2");
        assert_eq!(s.find(&r).unwrap().as_deref(), Some("q+x+y"));
        // Another scheme is not ours.
        let r = req(&[("authorization", b"Basic dXNlcjpwYXNz")], "/");
        assert_eq!(s.find(&r).unwrap(), None);
    }

    #[test]
    fn malformed_inputs() {
        let s = all();
        for (headers, uri) in [
            (vec![("authorization", &b"Bearer"[..])], "/"),
            (vec![("authorization", &b"Bearer   "[..])], "/"),
            (vec![("authorization", &b"Bearer a b"[..])], "/"),
            (vec![("authorization", &b"Bearer \xff"[..])], "/"),
            (
                vec![
                    ("authorization", &b"Bearer a"[..]),
                    ("authorization", &b"Bearer b"[..]),
                ],
                "/",
            ),
            (vec![("x-api-key", &b""[..])], "/"),
            (
                vec![("x-api-key", &b"a"[..]), ("x-api-key", &b"b"[..])],
                "/",
            ),
            (vec![("x-api-key", &b"\xfe"[..])], "/"),
            (vec![], "/?api_key=a&api_key=b"),
            (vec![], "/?api_key=%ff"),
            (vec![], "/?api_key="),
        ] {
            let r = req(&headers, uri);
            assert!(s.find(&r).is_err(), "{headers:?} {uri}");
        }
    }

    #[test]
    fn strip_removes_only_credentials() {
        let mut r = req(
            &[
                ("authorization", b"Bearer tok"),
                ("x-api-key", b"k"),
                ("x-other", b"1"),
            ],
            "http://h/p/q?a=1&api_key=secret&b=%20x",
        );
        all().strip(&mut r);
        assert!(r.headers().get("authorization").is_none());
        assert!(r.headers().get("x-api-key").is_none());
        assert_eq!(r.headers()["x-other"], "1");
        assert_eq!(r.uri().to_string(), "http://h/p/q?a=1&b=%20x");

        let mut r = req(&[("authorization", b"Basic abc")], "/p?api_key=s");
        all().strip(&mut r);
        assert_eq!(r.headers()["authorization"], "Basic abc");
        assert_eq!(r.uri().to_string(), "/p");
    }
}
