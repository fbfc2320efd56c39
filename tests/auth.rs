//! Behaviour of `switchyard::auth`: API keys (credential sources, digests,
//! live revocation, stripping, anonymous access, malformed input), scope
//! checks, the rate limiter keyed by identity, and bearer JWTs (feature
//! `jwt`). Every stack is driven in process with `ServiceExt::oneshot`.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde_json::{Value, json};
use switchyard::auth::{ApiKey, ApiKeyBuilder, ApiKeyLayer, AuthError, Identity, RequireScopes};
use switchyard::key::KeyBy;
use switchyard::ratelimit::{ManualClock, Quota, RateLimitLayer};
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

const MISSING: &str = r#"Bearer realm="switchyard""#;
const INVALID: &str = r#"Bearer realm="switchyard", error="invalid_token""#;
const MALFORMED: &str = r#"Bearer realm="switchyard", error="invalid_request""#;
const PROBLEM_JSON: &str = "application/problem+json";

// === helpers ===

/// What the inner service saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    identity: Option<Identity>,
    headers: HeaderMap,
    uri: Uri,
}

/// An inner service that records every request it is called with.
#[derive(Clone, Default)]
struct Inner {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Inner {
    fn service(
        &self,
    ) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible> + Clone + use<>
    {
        let seen = self.seen.clone();
        service_fn(move |req: Request<String>| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(Seen {
                    identity: req.extensions().get::<Identity>().cloned(),
                    headers: req.headers().clone(),
                    uri: req.uri().clone(),
                });
                Ok::<_, Infallible>(Response::new(String::from("inner")))
            }
        })
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the inner service was never called")
    }

    fn last_id(&self) -> String {
        self.last()
            .identity
            .expect("no identity in the extensions")
            .id()
            .to_owned()
    }
}

/// A complete response.
#[derive(Clone, Debug, PartialEq)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("missing header {name}"))
            .to_str()
            .unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Asserts a problem+json refusal with this status and challenge.
    fn assert_refused(&self, status: StatusCode, challenge: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), PROBLEM_JSON);
        assert_eq!(self.header("www-authenticate"), challenge);
        let problem = self.json();
        assert_eq!(problem["status"], status.as_u16());
        assert_eq!(problem["type"], "about:blank");
        assert_eq!(problem["title"], status.canonical_reason().unwrap());
        assert_eq!(
            self.header("content-length"),
            self.body.len().to_string(),
            "content-length matches the body"
        );
    }
}

async fn send<S, B>(svc: &S, req: Request<String>) -> Reply
where
    S: Service<Request<String>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let res = svc.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A request to `uri` with these headers (in order; repeated names append).
fn req(uri: &str, headers: &[(&str, &[u8])]) -> Request<String> {
    let mut b = Request::builder().uri(uri);
    for (name, value) in headers {
        b = b.header(*name, HeaderValue::from_bytes(value).unwrap());
    }
    b.body(String::new()).unwrap()
}

fn with_key(key: &str) -> Request<String> {
    req("/", &[("x-api-key", key.as_bytes())])
}

fn with_bearer(token: &str) -> Request<String> {
    req(
        "/",
        &[("authorization", format!("Bearer {token}").as_bytes())],
    )
}

fn alice() -> Identity {
    Identity::new("alice")
        .with_tenant("acme")
        .with_scopes(["chat", "admin"])
        .with_tier("gold")
        .with_label("team", "core")
        .with_label("region", "eu")
}

fn bob() -> Identity {
    Identity::new("bob").with_scopes(["chat"])
}

/// Keys `alice-key` (alice) and `bob-key` (bob), default sources.
fn keys() -> ApiKeyBuilder {
    ApiKeyLayer::builder()
        .key(ApiKey::new("alice-key", alice()))
        .key(ApiKey::new("bob-key", bob()))
}

fn stack(
    builder: ApiKeyBuilder,
) -> (
    Inner,
    impl Service<
        Request<String>,
        Response = Response<impl http_body::Body<Data = Bytes, Error = Infallible>>,
        Error = Infallible,
    > + Clone,
) {
    let inner = Inner::default();
    let svc = builder.build().unwrap().layer(inner.service());
    (inner, svc)
}

fn past() -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600)
}

fn future() -> SystemTime {
    SystemTime::now() + Duration::from_secs(3600)
}

// === 1. credential sources ===

#[tokio::test]
async fn bearer_token_authenticates() {
    let (inner, svc) = stack(keys());
    let r = send(&svc, with_bearer("alice-key")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "inner");
    assert_eq!(inner.last_id(), "alice");

    // The scheme is case-insensitive (RFC 7235), extra spaces are tolerated.
    for value in ["bearer bob-key", "BEARER bob-key", "Bearer   bob-key"] {
        let r = send(&svc, req("/", &[("authorization", value.as_bytes())])).await;
        assert_eq!(r.status, StatusCode::OK, "{value}");
        assert_eq!(inner.last_id(), "bob");
    }
}

#[tokio::test]
async fn x_api_key_header_authenticates() {
    let (inner, svc) = stack(keys());
    let r = send(&svc, with_key("bob-key")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(inner.last_id(), "bob");
    assert_eq!(inner.calls(), 1);
}

#[tokio::test]
async fn a_custom_header_name_replaces_x_api_key() {
    let (inner, svc) = stack(keys().header(Some(HeaderName::from_static("x-token"))));
    let r = send(&svc, req("/", &[("x-token", b"alice-key")])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(inner.last_id(), "alice");

    // `x-api-key` is no longer a source: not read at all.
    let r = send(&svc, with_key("alice-key")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, MISSING);
    assert_eq!(inner.calls(), 1);

    // ... and, not being a credential source, it is not stripped either.
    let r = send(
        &svc,
        req("/", &[("x-token", b"bob-key"), ("x-api-key", b"other")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = inner.last();
    assert_eq!(seen.identity.unwrap().id(), "bob");
    assert!(seen.headers.get("x-token").is_none());
    assert_eq!(seen.headers["x-api-key"], "other");
}

#[tokio::test]
async fn header_none_and_bearer_off_turn_those_sources_off() {
    let (_, svc) = stack(keys().header(None));
    let r = send(&svc, with_key("alice-key")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, MISSING);
    assert_eq!(send(&svc, with_bearer("alice-key")).await.status, 200);

    let (inner, svc) = stack(keys().bearer(false));
    let r = send(&svc, with_bearer("alice-key")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, MISSING);
    // A Bearer header is not ours when bearer is off: it is left in place.
    let r = send(
        &svc,
        req(
            "/",
            &[
                ("authorization", b"Bearer whatever"),
                ("x-api-key", b"bob-key"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(inner.last().headers["authorization"], "Bearer whatever");
}

#[tokio::test]
async fn query_param_is_read_only_when_opted_in() {
    // Not opted in: the parameter is not a credential.
    let (inner, svc) = stack(keys());
    let r = send(&svc, req("/p?api_key=alice-key", &[])).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, MISSING);
    assert_eq!(inner.calls(), 0);
    // ... and it passes through untouched when another source authenticates.
    let r = send(
        &svc,
        req("/p?api_key=alice-key&x=1", &[("x-api-key", b"bob-key")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(inner.last().uri, "/p?api_key=alice-key&x=1");

    // Opted in.
    let (inner, svc) = stack(
        keys()
            .key(ApiKey::new("k+1/2 x", Identity::new("carol")))
            .query_param("api_key"),
    );
    let r = send(&svc, req("/p?api_key=alice-key", &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(inner.last_id(), "alice");
    // Percent-decoded; `+` stays `+`.
    let r = send(&svc, req("/p?a=1&api_key=k+1%2F2%20x", &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(inner.last_id(), "carol");
    // Another parameter name is not read.
    let r = send(&svc, req("/p?apikey=alice-key&key=alice-key", &[])).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, MISSING);
}

#[tokio::test]
async fn sources_are_tried_in_the_documented_order() {
    let (inner, svc) = stack(
        keys()
            .key(ApiKey::new("carol-key", Identity::new("carol")))
            .query_param("api_key"),
    );
    let all = |bearer: &str, header: &str, query: &str| {
        req(
            &format!("/?api_key={query}"),
            &[
                ("authorization", format!("Bearer {bearer}").as_bytes()),
                ("x-api-key", header.as_bytes()),
            ],
        )
    };
    // Bearer first.
    assert_eq!(
        send(&svc, all("alice-key", "bob-key", "carol-key"))
            .await
            .status,
        200
    );
    assert_eq!(inner.last_id(), "alice");
    // Then the header.
    let r = send(
        &svc,
        req("/?api_key=carol-key", &[("x-api-key", b"bob-key")]),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(inner.last_id(), "bob");
    // Then the query.
    assert_eq!(
        send(&svc, req("/?api_key=carol-key", &[])).await.status,
        200
    );
    assert_eq!(inner.last_id(), "carol");

    // The first present is used, with no fall back to the next source.
    let r = send(&svc, all("wrong", "bob-key", "carol-key")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    let r = send(&svc, req("/?api_key=carol-key", &[("x-api-key", b"wrong")])).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);

    // Another scheme in Authorization is not a credential of ours: the
    // header source is used.
    let r = send(
        &svc,
        req(
            "/",
            &[
                ("authorization", b"Basic dXNlcjpwYXNz"),
                ("x-api-key", b"bob-key"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(inner.last_id(), "bob");
    assert_eq!(inner.calls(), 4);
}

// === 2. keys: plaintext, digests, build errors ===

#[tokio::test]
async fn digest_keys_authenticate_like_plaintext_ones() {
    use switchyard::auth::digest;
    // FIPS 180-2 test vector for "abc".
    assert_eq!(
        digest("abc"),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let upper = digest("upper-key")
        .to_uppercase()
        .replace("SHA256:", "sha256:");
    let (inner, svc) = stack(
        ApiKeyLayer::builder()
            .key(ApiKey::from_digest(&digest("s3cret"), Identity::new("dora")).unwrap())
            .key(ApiKey::from_digest(&upper, Identity::new("eve")).unwrap()),
    );
    assert_eq!(send(&svc, with_key("s3cret")).await.status, 200);
    assert_eq!(inner.last_id(), "dora");
    assert_eq!(send(&svc, with_bearer("upper-key")).await.status, 200);
    assert_eq!(inner.last_id(), "eve");
    // The digest itself is not a key.
    let r = send(&svc, with_key(&digest("s3cret"))).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);

    let plain = ApiKey::new("s3cret", Identity::new("dora"));
    assert_eq!(plain.digest(), digest("s3cret"));
    assert_eq!(
        ApiKey::from_digest(&upper, Identity::new("eve"))
            .unwrap()
            .digest(),
        digest("upper-key"),
        "digests are shown in lower case"
    );
}

#[test]
fn invalid_digests_are_refused() {
    use switchyard::auth::digest;
    let good = digest("k");
    let hex = good.strip_prefix("sha256:").unwrap();
    let bad = [
        String::new(),
        "sha256:".to_owned(),
        hex.to_owned(),
        format!("SHA256:{hex}"),
        format!("sha512:{hex}"),
        format!("sha256:{}", &hex[..63]),
        format!("sha256:{hex}0"),
        format!("sha256:{}zz", &hex[..62]),
        format!("sha256: {}", &hex[..63]),
        format!("sha256:{}é", &hex[..62]),
        format!(" {good}"),
    ];
    for s in &bad {
        assert_eq!(
            ApiKey::from_digest(s, Identity::new("x")).unwrap_err(),
            AuthError::InvalidDigest(s.clone()),
            "{s:?}"
        );
    }
    let layer = keys().build().unwrap();
    let handle = layer.handle();
    for s in &bad {
        assert_eq!(
            handle.revoke_digest(s),
            Err(AuthError::InvalidDigest(s.clone()))
        );
    }
    assert_eq!(handle.keys().len(), 2, "nothing was revoked");
}

#[test]
fn duplicate_keys_are_a_build_error() {
    use switchyard::auth::digest;
    let err = ApiKeyLayer::builder()
        .key(ApiKey::new("dup", Identity::new("a")))
        .key(ApiKey::new("dup", Identity::new("b")))
        .build()
        .unwrap_err();
    assert_eq!(err, AuthError::DuplicateKey(digest("dup")));

    let err = ApiKeyLayer::builder()
        .keys([
            ApiKey::new("one", Identity::new("a")),
            ApiKey::new("dup", Identity::new("a")),
            ApiKey::from_digest(&digest("dup"), Identity::new("b")).unwrap(),
        ])
        .build()
        .unwrap_err();
    assert_eq!(err, AuthError::DuplicateKey(digest("dup")));
    assert!(!err.to_string().contains("\"dup\""));
}

#[test]
fn no_credential_source_is_a_build_error() {
    let err = keys().bearer(false).header(None).build().unwrap_err();
    assert_eq!(err, AuthError::NoCredentialSource);
    // Any one source is enough.
    assert!(
        keys()
            .bearer(false)
            .header(None)
            .query_param("k")
            .build()
            .is_ok()
    );
    assert!(keys().header(None).build().is_ok());
    assert!(keys().bearer(false).build().is_ok());
    // No keys at all is allowed (keys can be added live).
    assert!(ApiKeyLayer::builder().build().is_ok());
}

#[test]
fn secrets_are_never_shown() {
    let layer = keys().build().unwrap();
    let listed = layer.handle().keys();
    assert_eq!(listed.len(), 2);
    let debug = format!("{layer:?} {:?} {listed:?}", layer.handle());
    assert!(
        !debug.contains("alice-key") && !debug.contains("bob-key"),
        "{debug}"
    );
    let mut digests: Vec<String> = listed.iter().map(ApiKey::digest).collect();
    digests.sort();
    let mut expected = vec![
        switchyard::auth::digest("alice-key"),
        switchyard::auth::digest("bob-key"),
    ];
    expected.sort();
    assert_eq!(digests, expected);
}

// === 3. key state: disabled, expired, revoked, replaced ===

#[tokio::test]
async fn a_disabled_key_is_refused() {
    let (inner, svc) =
        stack(keys().key(ApiKey::new("off-key", Identity::new("off")).disabled(true)));
    let r = send(&svc, with_key("off-key")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    assert_eq!(inner.calls(), 0);

    let key = ApiKey::new("k", Identity::new("k")).disabled(true);
    assert!(key.is_disabled());
    assert!(!key.disabled(false).is_disabled());
}

#[tokio::test]
async fn an_expired_key_is_refused_and_a_future_expiry_works() {
    let (inner, svc) = stack(
        keys()
            .key(ApiKey::new("old-key", Identity::new("old")).not_after(past()))
            .key(ApiKey::new("new-key", Identity::new("new")).not_after(future())),
    );
    let r = send(&svc, with_key("old-key")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    assert_eq!(send(&svc, with_key("new-key")).await.status, 200);
    assert_eq!(inner.last_id(), "new");
    assert_eq!(inner.calls(), 1);
}

#[tokio::test]
async fn revoke_takes_effect_on_the_very_next_request() {
    let layer = keys().build().unwrap();
    let handle = layer.handle();
    let inner = Inner::default();
    let svc = layer.layer(inner.service());

    assert_eq!(send(&svc, with_key("alice-key")).await.status, 200);
    assert!(handle.revoke("alice-key"));
    let r = send(&svc, with_key("alice-key")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    let r = send(&svc, with_bearer("alice-key")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    assert!(!handle.revoke("alice-key"), "already gone");
    assert!(!handle.revoke("never-existed"));
    // Other keys are unaffected.
    assert_eq!(send(&svc, with_key("bob-key")).await.status, 200);
    assert_eq!(inner.calls(), 2);
    assert_eq!(handle.keys().len(), 1);
}

#[tokio::test]
async fn revoke_digest_takes_effect_on_the_very_next_request() {
    use switchyard::auth::digest;
    let layer = keys().build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Inner::default().service());

    assert_eq!(send(&svc, with_key("bob-key")).await.status, 200);
    assert_eq!(handle.revoke_digest(&digest("bob-key")), Ok(true));
    let r = send(&svc, with_key("bob-key")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    assert_eq!(handle.revoke_digest(&digest("bob-key")), Ok(false));
    assert_eq!(send(&svc, with_key("alice-key")).await.status, 200);
}

#[tokio::test]
async fn revoke_identity_removes_every_key_of_that_identity() {
    let layer = keys()
        .key(ApiKey::new("alice-key-2", Identity::new("alice")))
        .key(ApiKey::new("alice-key-3", alice().with_tier("silver")))
        .key(ApiKey::new("alice-off", Identity::new("alice")).disabled(true))
        .build()
        .unwrap();
    let handle = layer.handle();
    let inner = Inner::default();
    let svc = layer.layer(inner.service());

    for k in ["alice-key", "alice-key-2", "alice-key-3"] {
        assert_eq!(send(&svc, with_key(k)).await.status, 200, "{k}");
    }
    assert_eq!(handle.revoke_identity("alice"), 4, "disabled keys too");
    let left: Vec<String> = handle
        .keys()
        .iter()
        .map(|k| k.identity().id().to_owned())
        .collect();
    assert_eq!(left, ["bob"]);
    for k in ["alice-key", "alice-key-2", "alice-key-3"] {
        let r = send(&svc, with_key(k)).await;
        r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    }
    assert_eq!(handle.revoke_identity("alice"), 0);
    assert_eq!(handle.revoke_identity("nobody"), 0);
    assert_eq!(send(&svc, with_key("bob-key")).await.status, 200);
    assert_eq!(inner.last_id(), "bob");
}

#[tokio::test]
async fn insert_adds_and_replaces_keys_for_the_next_request() {
    let layer = keys().build().unwrap();
    let handle = layer.handle();
    let inner = Inner::default();
    let svc = layer.layer(inner.service());

    // A new key works at once.
    let r = send(&svc, with_key("carol-key")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    handle.insert(ApiKey::new("carol-key", Identity::new("carol")));
    assert_eq!(send(&svc, with_key("carol-key")).await.status, 200);
    assert_eq!(inner.last_id(), "carol");

    // Replacing a key with a disabled copy refuses it.
    handle.insert(ApiKey::new("alice-key", alice()).disabled(true));
    let r = send(&svc, with_key("alice-key")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    // Re-enabled with another identity: the new identity is recorded.
    handle.insert(ApiKey::new("alice-key", Identity::new("alice-2")));
    assert_eq!(send(&svc, with_key("alice-key")).await.status, 200);
    assert_eq!(inner.last_id(), "alice-2");
    // Replaced with an expired copy.
    handle.insert(ApiKey::new("alice-key", alice()).not_after(past()));
    let r = send(&svc, with_key("alice-key")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    assert_eq!(handle.keys().len(), 3, "replaced, not added");
}

#[tokio::test]
async fn clones_of_the_layer_and_service_share_the_keys() {
    let layer = keys().build().unwrap();
    let handle = layer.handle();
    let a = layer.clone().layer(Inner::default().service());
    let b = layer.layer(Inner::default().service());
    // A handle on another layer does not touch this one.
    keys().build().unwrap().handle().revoke("alice-key");
    assert_eq!(send(&a, with_key("alice-key")).await.status, 200);
    // This layer's handle reaches every service built from it or its clones.
    assert!(handle.clone().revoke("alice-key"));
    for svc in [a.clone(), a] {
        assert_eq!(send(&svc, with_key("alice-key")).await.status, 401);
    }
    assert_eq!(send(&b.clone(), with_key("alice-key")).await.status, 401);
}

// === 4. the 401 answers ===

#[tokio::test]
async fn missing_credentials_get_a_401_problem() {
    let (inner, svc) = stack(keys());
    let r = send(&svc, req("/", &[])).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, MISSING);
    assert_eq!(r.json()["title"], "Unauthorized");
    assert!(r.json()["detail"].is_string());
    assert_eq!(inner.calls(), 0);
}

#[tokio::test]
async fn invalid_credentials_all_get_the_same_answer() {
    let layer = keys()
        .key(ApiKey::new("off-key", Identity::new("off")).disabled(true))
        .key(ApiKey::new("old-key", Identity::new("old")).not_after(past()))
        .key(ApiKey::new("gone-key", Identity::new("gone")))
        .build()
        .unwrap();
    let handle = layer.handle();
    let inner = Inner::default();
    let svc = layer.layer(inner.service());
    assert!(handle.revoke("gone-key"));

    let mut answers = Vec::new();
    for key in ["unknown-key", "off-key", "old-key", "gone-key"] {
        for req in [with_key(key), with_bearer(key)] {
            let r = send(&svc, req).await;
            r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
            answers.push((key, r));
        }
    }
    let (_, first) = &answers[0];
    for (key, r) in &answers {
        assert_eq!(r, first, "the answer for {key} reveals why it was refused");
    }
    assert_eq!(inner.calls(), 0);
}

#[tokio::test]
async fn the_realm_is_configurable() {
    let (_, svc) = stack(keys().realm("my \"api\""));
    let r = send(&svc, req("/", &[])).await;
    // Quotes cannot be in a quoted-string unescaped: they are dropped.
    r.assert_refused(StatusCode::UNAUTHORIZED, r#"Bearer realm="my api""#);
    let r = send(&svc, with_key("nope")).await;
    r.assert_refused(
        StatusCode::UNAUTHORIZED,
        r#"Bearer realm="my api", error="invalid_token""#,
    );
}

// === 5. stripping ===

#[tokio::test]
async fn credentials_are_stripped_before_the_inner_service() {
    let (inner, svc) = stack(keys().query_param("api_key"));

    let r = send(
        &svc,
        req(
            "/",
            &[("authorization", b"Bearer alice-key"), ("x-other", b"1")],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = inner.last();
    assert!(seen.headers.get("authorization").is_none());
    assert_eq!(seen.headers["x-other"], "1");

    assert_eq!(send(&svc, with_key("alice-key")).await.status, 200);
    assert!(inner.last().headers.get("x-api-key").is_none());

    // Every source is removed, not just the one used.
    let r = send(
        &svc,
        req(
            "/p/q?a=1&api_key=zzz&b=%20x",
            &[
                ("authorization", b"Bearer bob-key"),
                ("x-api-key", b"other"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = inner.last();
    assert!(seen.headers.get("authorization").is_none());
    assert!(seen.headers.get("x-api-key").is_none());
    assert_eq!(seen.uri, "/p/q?a=1&b=%20x");

    // The rest of the query is kept byte for byte.
    for (uri, expected) in [
        ("/p/q?a=1&api_key=alice-key&b=%20x&c", "/p/q?a=1&b=%20x&c"),
        ("/p/q?api_key=alice-key", "/p/q"),
        ("/p/q?api_key=alice-key&z=%2F%2f+~", "/p/q?z=%2F%2f+~"),
        (
            "/p/q?x=&&api_key=alice-key&api_keyx=1&=2",
            "/p/q?x=&&api_keyx=1&=2",
        ),
        (
            "http://example.com:8080/p?q=1&api_key=alice-key",
            "http://example.com:8080/p?q=1",
        ),
    ] {
        let r = send(&svc, req(uri, &[])).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        assert_eq!(inner.last().uri.to_string(), expected, "{uri}");
        assert_eq!(inner.last_id(), "alice");
    }
}

#[tokio::test]
async fn keep_credentials_leaves_them_on_the_request() {
    let (inner, svc) = stack(keys().query_param("api_key").keep_credentials());
    let r = send(
        &svc,
        req(
            "/p?a=1&api_key=alice-key",
            &[
                ("authorization", b"Bearer alice-key"),
                ("x-api-key", b"bob-key"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = inner.last();
    assert_eq!(seen.headers["authorization"], "Bearer alice-key");
    assert_eq!(seen.headers["x-api-key"], "bob-key");
    assert_eq!(seen.uri, "/p?a=1&api_key=alice-key");
    assert_eq!(seen.identity.unwrap().id(), "alice");
}

#[tokio::test]
async fn a_non_bearer_authorization_is_left_alone() {
    let (inner, svc) = stack(keys());
    let r = send(
        &svc,
        req(
            "/",
            &[
                ("authorization", b"Basic dXNlcjpwYXNz"),
                ("x-api-key", b"bob-key"),
            ],
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let seen = inner.last();
    assert_eq!(seen.headers["authorization"], "Basic dXNlcjpwYXNz");
    assert!(seen.headers.get("x-api-key").is_none());

    // Alone, a Basic header is no credential of ours: 401 "missing".
    let r = send(&svc, req("/", &[("authorization", b"Basic dXNlcjpwYXNz")])).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, MISSING);
}

// === 6. identity ===

#[tokio::test]
async fn the_identity_reaches_the_inner_service() {
    let (inner, svc) = stack(keys());
    assert_eq!(send(&svc, with_bearer("alice-key")).await.status, 200);
    let who = inner.last().identity.unwrap();
    assert_eq!(who, alice());
    assert_eq!(who.id(), "alice");
    assert_eq!(who.tenant(), Some("acme"));
    assert_eq!(who.scopes(), ["admin", "chat"]);
    assert!(who.has_scope("admin") && who.has_scope("chat") && !who.has_scope("x"));
    assert_eq!(who.tier(), Some("gold"));
    assert_eq!(who.label("team"), Some("core"));
    assert_eq!(who.label("region"), Some("eu"));
    assert_eq!(who.labels().len(), 2);
    assert!(!who.is_anonymous());

    assert_eq!(send(&svc, with_key("bob-key")).await.status, 200);
    let who = inner.last().identity.unwrap();
    assert_eq!(who, bob());
    assert_eq!(who.tenant(), None);
    assert_eq!(who.tier(), None);
}

#[tokio::test]
async fn an_identity_planted_in_the_request_is_replaced() {
    let (inner, svc) = stack(keys());
    let mut r = with_key("bob-key");
    r.extensions_mut()
        .insert(Identity::new("root").with_scopes(["admin"]));
    assert_eq!(send(&svc, r).await.status, 200);
    assert_eq!(inner.last().identity.unwrap(), bob());
}

// === 7. anonymous access ===

#[tokio::test]
async fn anonymous_access_lets_requests_without_credentials_through() {
    let (inner, svc) = stack(keys().anonymous(Identity::anonymous()));

    let r = send(&svc, req("/", &[])).await;
    assert_eq!(r.status, StatusCode::OK);
    let who = inner.last().identity.unwrap();
    assert_eq!(who, Identity::anonymous());
    assert!(who.is_anonymous());
    assert_eq!(who.id(), "anonymous");
    assert!(who.scopes().is_empty());

    // A wrong credential is still refused.
    let r = send(&svc, with_key("wrong")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    let r = send(&svc, with_bearer("wrong")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    // So is an unreadable one: it must not downgrade to anonymous.
    let r = send(&svc, req("/", &[("authorization", b"Bearer")])).await;
    r.assert_refused(StatusCode::BAD_REQUEST, MALFORMED);
    // A valid one authenticates as usual.
    assert_eq!(send(&svc, with_key("alice-key")).await.status, 200);
    assert_eq!(inner.last().identity.unwrap(), alice());
    assert_eq!(inner.calls(), 2);
}

// === 8. malformed inputs ===

/// A request URI and its headers.
type Case<'a> = (&'a str, Vec<(&'a str, &'a [u8])>);

#[tokio::test]
async fn unreadable_credentials_get_400_never_500() {
    let (inner, svc) = stack(keys().query_param("api_key"));
    let cases: Vec<Case<'_>> = vec![
        ("/", vec![("authorization", b"Bearer")]),
        ("/", vec![("authorization", b"bearer")]),
        ("/", vec![("authorization", b"Bearer ")]),
        ("/", vec![("authorization", b"Bearer    ")]),
        ("/", vec![("authorization", b"Bearer a b")]),
        ("/", vec![("authorization", b"Bearer alice-key!")]),
        ("/", vec![("authorization", b"Bearer \xff\xfe")]),
        ("/", vec![("authorization", b"Bearer alice-key\x80")]),
        ("/", vec![("authorization", b"\xc3\xa9")]),
        (
            "/",
            vec![
                ("authorization", b"Bearer alice-key"),
                ("authorization", b"Bearer alice-key"),
            ],
        ),
        (
            "/",
            vec![
                ("authorization", b"Bearer alice-key"),
                ("authorization", b"Basic dXNlcjpwYXNz"),
            ],
        ),
        ("/", vec![("x-api-key", b"\xff")]),
        ("/", vec![("x-api-key", b"alice-key\xe9")]),
        ("/", vec![("x-api-key", b"")]),
        ("/", vec![("x-api-key", b"   ")]),
        (
            "/",
            vec![("x-api-key", b"alice-key"), ("x-api-key", b"alice-key")],
        ),
        (
            "/",
            vec![("x-api-key", b"alice-key"), ("x-api-key", b"bob-key")],
        ),
        ("/?api_key=alice-key&api_key=alice-key", vec![]),
        ("/?api_key=%ff", vec![]),
        ("/?api_key=", vec![]),
        ("/?api_key", vec![]),
    ];
    for (uri, headers) in &cases {
        let r = send(&svc, req(uri, headers)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri} {headers:?}");
        r.assert_refused(StatusCode::BAD_REQUEST, MALFORMED);
        assert!(r.json()["detail"].is_string());
    }
    assert_eq!(inner.calls(), 0);
}

#[tokio::test]
async fn stats_count_each_outcome() {
    let layer = keys().anonymous(Identity::anonymous()).build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Inner::default().service());
    send(&svc, with_key("alice-key")).await;
    send(&svc, with_bearer("bob-key")).await;
    send(&svc, req("/", &[])).await;
    send(&svc, with_key("wrong")).await;
    send(&svc, req("/", &[("authorization", b"Bearer")])).await;
    let s = handle.stats();
    assert_eq!(
        (
            s.authenticated,
            s.anonymous,
            s.missing,
            s.invalid,
            s.malformed
        ),
        (2, 1, 0, 1, 1)
    );

    let layer = keys().build().unwrap();
    let handle = layer.handle();
    let svc = layer.layer(Inner::default().service());
    send(&svc, req("/", &[])).await;
    assert_eq!(handle.stats().missing, 1);
}

// === 9. proptest: arbitrary header bytes and query strings ===

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x5eed_a117),
        ..ProptestConfig::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Bytes a `HeaderValue` accepts: visible ASCII, space, tab, obs-text.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => prop::collection::vec(
            prop_oneof![8 => 0x20u8..=0x7e, 1 => 0x80u8..=0xff, 1 => Just(b'\t')],
            0..24,
        ),
        1 => prop::sample::select(vec![
            b"alice-key".to_vec(),
            b"bob-key".to_vec(),
            b" alice-key ".to_vec(),
            b"alice-key=".to_vec(),
            Vec::new(),
        ]),
    ]
}

fn authorization() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![
            "", "Bearer ", "bearer ", "Bearer", "Basic ", "Bearer  ",
        ]),
        header_bytes(),
    )
        .prop_map(|(prefix, rest)| [prefix.as_bytes(), &rest].concat())
}

/// Percent-decodes `s` as RFC 3986 says (`+` is not a space).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// A query string as `name[=value]` pairs, with the names and values
/// that matter over-represented.
fn query_pairs() -> impl Strategy<Value = Vec<(String, Option<String>)>> {
    let name = prop_oneof![
        3 => Just("api_key".to_owned()),
        1 => prop::sample::select(vec!["a", "b", "api_keyx", "API_KEY", "xapi_key", ""])
            .prop_map(str::to_owned),
        1 => "[a-z_]{1,8}",
    ];
    let value = prop_oneof![
        3 => "[A-Za-z0-9._~+%-]{0,8}",
        1 => prop::sample::select(vec![
            "sk+1", "sk%2B1", "%73k%2b1", "sk%2B1%", "%ff", "%c3%a9", "", "alice-key",
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec((name, prop::option::weighted(0.85, value)), 0..6)
}

fn join(pairs: &[(String, Option<String>)]) -> String {
    pairs
        .iter()
        .map(|(n, v)| match v {
            Some(v) => format!("{n}={v}"),
            None => n.clone(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

proptest! {
    #![proptest_config(config())]

    /// Whatever the bytes in `Authorization` and `x-api-key`, the answer is
    /// 200, 400 or 401 with the right challenge, the inner service is called
    /// only for 200, and then without the credentials.
    #[test]
    fn arbitrary_credential_headers_never_fail(
        auth in prop::collection::vec(authorization(), 0..3),
        api in prop::collection::vec(header_bytes(), 0..3),
        anonymous in any::<bool>(),
    ) {
        let mut builder = keys();
        if anonymous {
            builder = builder.anonymous(Identity::anonymous());
        }
        let (inner, svc) = stack(builder);
        let mut r = Request::builder().uri("/");
        for v in auth.iter().map(|v| ("authorization", v)).chain(api.iter().map(|v| ("x-api-key", v))) {
            r = r.header(v.0, HeaderValue::from_bytes(v.1).unwrap());
        }
        let reply = runtime().block_on(send(&svc, r.body(String::new()).unwrap()));
        match reply.status.as_u16() {
            200 => {
                prop_assert_eq!(inner.calls(), 1);
                let seen = inner.last();
                let who = seen.identity.unwrap();
                prop_assert!(["alice", "bob", "anonymous"].contains(&who.id()), "{:?}", who);
                prop_assert!(anonymous || !who.is_anonymous());
                prop_assert!(seen.headers.get("x-api-key").is_none());
                // A `Bearer` credential (scheme, then a space) never gets
                // through; another scheme (or `Bearer\t...`, which is not
                // the Bearer scheme followed by SP) is not ours.
                if let Some(a) = seen.headers.get("authorization") {
                    let lower = a.as_bytes().to_ascii_lowercase();
                    prop_assert!(
                        !lower.starts_with(b"bearer ") && lower != b"bearer",
                        "{:?}", a
                    );
                }
            }
            400 => {
                prop_assert_eq!(inner.calls(), 0);
                prop_assert_eq!(&reply.headers[WWW_AUTHENTICATE], MALFORMED);
            }
            401 => {
                prop_assert_eq!(inner.calls(), 0);
                let challenge = reply.headers[WWW_AUTHENTICATE].to_str().unwrap();
                prop_assert!(challenge == MISSING || challenge == INVALID, "{}", challenge);
                prop_assert!(!anonymous || challenge == INVALID);
            }
            other => prop_assert!(false, "status {other}"),
        }
        if reply.status != StatusCode::OK {
            prop_assert_eq!(&reply.headers[CONTENT_TYPE], PROBLEM_JSON);
        }
        // Both headers absent is always "missing".
        if auth.is_empty() && api.is_empty() {
            prop_assert_eq!(reply.status, if anonymous { 200 } else { 401 });
        }
    }

    /// The query-parameter source follows its model exactly, and strips
    /// only its own parameter, keeping the rest of the query byte for byte.
    #[test]
    fn query_param_source_follows_its_model(pairs in query_pairs()) {
        let query = join(&pairs);
        let uri = format!("/p?{query}");
        prop_assume!(uri.parse::<Uri>().is_ok());
        let (inner, svc) = stack(
            ApiKeyLayer::builder()
                .key(ApiKey::new("sk+1", Identity::new("sk")))
                .query_param("api_key"),
        );
        let reply = runtime().block_on(send(&svc, req(&uri, &[])));

        let ours: Vec<&Option<String>> =
            pairs.iter().filter(|(n, _)| n == "api_key").map(|(_, v)| v).collect();
        let expected = match ours.as_slice() {
            [] => 401,
            [v] => match String::from_utf8(percent_decode(v.as_deref().unwrap_or(""))) {
                Err(_) => 400,
                Ok(s) if s.is_empty() => 400,
                Ok(s) if s == "sk+1" => 200,
                Ok(_) => 401,
            },
            _ => 400,
        };
        prop_assert_eq!(reply.status.as_u16(), expected, "{}", uri);
        if expected == 200 {
            let rest: Vec<_> = pairs.iter().filter(|(n, _)| n != "api_key").cloned().collect();
            let expected_uri = if rest.is_empty() {
                "/p".to_owned()
            } else {
                format!("/p?{}", join(&rest))
            };
            prop_assert_eq!(inner.last().uri.to_string(), expected_uri);
            prop_assert_eq!(inner.last_id(), "sk");
        } else {
            prop_assert_eq!(inner.calls(), 0);
        }
    }

    /// Free-form query strings (whatever `http::Uri` accepts) never panic
    /// and answer 200, 400 or 401 only.
    #[test]
    fn arbitrary_query_strings_never_fail(query in "[ -~]{0,40}", header in any::<bool>()) {
        let uri = format!("/p?{query}");
        let Ok(parsed) = uri.parse::<Uri>() else {
            return Ok(());
        };
        let (inner, svc) = stack(keys().query_param("api_key"));
        let mut r = Request::builder().uri(parsed);
        if header {
            r = r.header("x-api-key", "alice-key");
        }
        let reply = runtime().block_on(send(&svc, r.body(String::new()).unwrap()));
        prop_assert!([200, 400, 401].contains(&reply.status.as_u16()), "{:?}", reply);
        if reply.status == StatusCode::OK {
            let seen = inner.last();
            let kept = seen.uri.query().unwrap_or("");
            prop_assert!(
                kept.split('&').all(|p| p.split_once('=').map_or(p, |(k, _)| k) != "api_key"),
                "{}", kept
            );
        }
    }
}

// === 10. scopes ===

fn scoped(
    rule: RequireScopes,
) -> impl Service<
    Request<String>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = Infallible>>,
    Error = Infallible,
> + Clone {
    ServiceBuilder::new()
        .layer(
            ApiKeyLayer::builder()
                .key(ApiKey::new("none", Identity::new("n")))
                .key(ApiKey::new("a", Identity::new("a").with_scopes(["a"])))
                .key(ApiKey::new("b", Identity::new("b").with_scopes(["b"])))
                .key(ApiKey::new(
                    "ab",
                    Identity::new("ab").with_scopes(["a", "b", "z"]),
                ))
                .key(ApiKey::new("c", Identity::new("c").with_scopes(["c"])))
                .anonymous(Identity::anonymous())
                .build()
                .unwrap(),
        )
        .layer(rule)
        .service(Inner::default().service())
}

#[tokio::test]
async fn require_all_scopes() {
    let svc = scoped(RequireScopes::all(["a", "b"]));
    assert_eq!(send(&svc, with_key("ab")).await.status, 200);

    let forbidden = r#"Bearer realm="switchyard", error="insufficient_scope", scope="a b""#;
    let r = send(&svc, with_key("a")).await;
    r.assert_refused(StatusCode::FORBIDDEN, forbidden);
    assert_eq!(r.json()["missing_scopes"], json!(["b"]));
    assert_eq!(r.json()["detail"], "missing scope: b");
    assert_eq!(r.json()["title"], "Forbidden");

    let r = send(&svc, with_key("c")).await;
    r.assert_refused(StatusCode::FORBIDDEN, forbidden);
    assert_eq!(r.json()["missing_scopes"], json!(["a", "b"]));
    assert_eq!(r.json()["detail"], "missing scope: a, b");

    let r = send(&svc, with_key("none")).await;
    r.assert_refused(StatusCode::FORBIDDEN, forbidden);
    assert_eq!(r.json()["missing_scopes"], json!(["a", "b"]));
}

#[tokio::test]
async fn require_any_scope() {
    let svc = scoped(RequireScopes::any(["a", "b"]));
    for key in ["a", "b", "ab"] {
        assert_eq!(send(&svc, with_key(key)).await.status, 200, "{key}");
    }
    let forbidden = r#"Bearer realm="switchyard", error="insufficient_scope", scope="a b""#;
    for key in ["c", "none"] {
        let r = send(&svc, with_key(key)).await;
        r.assert_refused(StatusCode::FORBIDDEN, forbidden);
        assert_eq!(r.json()["missing_scopes"], json!(["a", "b"]));
        assert_eq!(r.json()["detail"], "needs one of the scopes: a, b");
    }
}

#[tokio::test]
async fn empty_scope_rules_admit_any_authenticated_caller() {
    for rule in [
        RequireScopes::all(Vec::<String>::new()),
        RequireScopes::any(Vec::<String>::new()),
    ] {
        let svc = scoped(rule);
        assert_eq!(send(&svc, with_key("none")).await.status, 200);
        let r = send(&svc, req("/", &[])).await;
        r.assert_refused(StatusCode::UNAUTHORIZED, MISSING);
    }
}

#[tokio::test]
async fn scopes_without_an_identity_get_401() {
    // No authentication layer in front at all.
    let inner = Inner::default();
    let svc = RequireScopes::all(["a"]).layer(inner.service());
    let r = send(&svc, req("/", &[])).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, MISSING);
    // A planted identity is honoured (a layer in front is trusted).
    let mut planted = req("/", &[]);
    planted
        .extensions_mut()
        .insert(Identity::new("x").with_scopes(["a"]));
    assert_eq!(send(&svc, planted).await.status, 200);
    assert_eq!(inner.calls(), 1);

    // An anonymous identity is no identity.
    let svc = scoped(RequireScopes::any(["a"]));
    let r = send(&svc, req("/", &[])).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, MISSING);

    let svc = RequireScopes::all(["a"])
        .realm("inner")
        .layer(Inner::default().service());
    let r = send(&svc, req("/", &[])).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, r#"Bearer realm="inner""#);
}

// === 11. rate limiting keyed by identity ===

#[tokio::test]
async fn rate_limit_keyed_by_identity_gives_each_identity_its_budget() {
    let inner = Inner::default();
    let svc = ServiceBuilder::new()
        .layer(
            keys()
                .key(ApiKey::new("alice-key-2", alice()))
                .build()
                .unwrap(),
        )
        .layer(
            RateLimitLayer::builder()
                .key_by(KeyBy::identity())
                .quota(Quota::per_minute(2).named("per-caller"))
                .clock(ManualClock::new())
                .build()
                .unwrap(),
        )
        .service(inner.service());

    assert_eq!(send(&svc, with_key("alice-key")).await.status, 200);
    assert_eq!(send(&svc, with_bearer("alice-key")).await.status, 200);
    let r = send(&svc, with_key("alice-key")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.header("content-type"), PROBLEM_JSON);
    // Another key of the same identity shares its budget.
    assert_eq!(send(&svc, with_key("alice-key-2")).await.status, 429);
    // Another identity has its own.
    assert_eq!(send(&svc, with_key("bob-key")).await.status, 200);
    assert_eq!(send(&svc, with_key("bob-key")).await.status, 200);
    assert_eq!(send(&svc, with_key("bob-key")).await.status, 429);
    // Unauthenticated requests never reach the limiter (nor use a budget).
    let r = send(&svc, with_key("wrong")).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    assert_eq!(inner.calls(), 4);
}

// === 12. JWT ===

#[cfg(feature = "jwt")]
mod jwt {
    use std::time::UNIX_EPOCH;

    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use switchyard::auth::{AuthError, JwtKeys, JwtLayer};

    use super::*;

    const SECRET: &[u8] = b"an HS256 test secret of more than 32 bytes";
    const OTHER_SECRET: &[u8] = b"another HS256 secret, also over 32 bytes";

    // Test-only key pairs, generated with openssl for these tests.
    const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQDSxrNKeqA23Zig
0ptIIcg+JfOOml9CW7NaiPJ+v62OyI5VUedICUFOV/OQEIt7DJz6/FK2pExz5EgR
H1zQewewlguNPqcRW0FcCBVre2PP13TvkvM8fOQ9xnCJRKBVYuEDL5681dcrVpTf
Z4vyvObNwzzRMo5PJRRqUm+3swV2LR3RNVz70cUcNn4CVVGPJzTqX84L2huuY+Ec
GQLpv/V7BNs533tijbvwKO05IGHqDfWlqoX3gHye5dYUg4YiJG5OVC34+Sbfq+OV
o2P9X9jrbcPEcORFqayMlTSdMu7Wyw4/uQfGAW0ISP/cmO9d3HvPJZfdEgPp1AHM
BMkv9E4bAgMBAAECggEAPP4Tvs8qUoYgVxVqqt5fuCA6UP855pVrmpy7c1MbMZC2
o1jekPlgpP+NcxhejF5zhKuEceasWvLpqc7GCGw5pu9ca2SAauTZznxmWmJr2SaT
Z4pCCbRoRboJMaeir+K7kzTx/dnxeFCHJvirRjREo7FGBZFYHe3wcO3m9yT+RRo1
sPWJqfOzVEfU0k8b1OFjYirLzv2aGzg7Yl2JncCFDQfm/+86Y1HdEpi+XMFRl6zF
iZpa7VLHlWjH2VGDw/DcmnB8vj+IhN/lPb3LE0dypiCH/uHEvk5pJ0zYrNv8v9RT
bF9e8T54wi9hi/rBSrnsz4g5MkDXi7vd2X6NF3hHQQKBgQDoskF7Iv3s7pmNjt0Q
h/d/9Of1S5x6y4HGw5CafoKdDJgPi1qYbnEYaOB7FEJe8HN63mcyZBH5Ooq/3bh/
3IlZLlaB604ms2ADb+HA2+u1V8xrY8ciD+qInTwBxSZ6qzwqkJxTqKZ7wbAEAtHi
QX0Sj2lEPr9MiR+KFOgiND4xWwKBgQDn4ne85NRytsJ/o4iV9p0NGyCvQF3nLW7f
9jU24XmGti+QbjNSYS+21RmUBrp9xk82rZbrBIlGrZpKuu3PX1izeEXEbCgVrZOZ
txCddBLK5r9RYSwpwlC/Mk9MKIpZkPe5qMU59iYZ2fMjzXZkPxv045QCUlSb32ni
kxI5JHIyQQKBgQDDo3siSB0tYr1/IqoCCA6yafnLZjK9mvQVZL7i5ZJy7++4wfT9
S32ShDqXwES9BXRRzUL+PtxNqkaVYZiJB6YCcM8Sk/800oLa4Onw9/WIlbSsZUs6
/B63lVqqMlNTtzvynXqRa63tRr7x4F0N2PmK7UAXvJmhg3gc4873Uu0nGQKBgQCl
AU8pGEBg/NH8l7b614k8KUCh1JC9j2PldMK7MckTZhMEmJZmmYeld5CC+CK+m14E
z5Oj2w+APsqbQNc2iGeLFhu3QSto+aIdcNoe4Nj6jyY214ngkUh6NWeeDv8b6v+M
mp71tsW4AZJ1uJ/1h77yDPtmh4VzgZBMTVFbXibwwQKBgQC0dRDsmv22kfHX+5/2
yu/ZNdj7dajfTBaG8b9Chsc/RWD3J9sHF52pSJjc+EfULiwnaqm1iFQAtxAzvyG8
w8d531xWx9RiREBmuxSbvlQshyUIRjFIXwYxP4aayrfmwJqdj/g3kzsbSkKzD0ph
eLsFunmgd2NwXDGYFclOUe0ApQ==
-----END PRIVATE KEY-----
";
    const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA0sazSnqgNt2YoNKbSCHI
PiXzjppfQluzWojyfr+tjsiOVVHnSAlBTlfzkBCLewyc+vxStqRMc+RIER9c0HsH
sJYLjT6nEVtBXAgVa3tjz9d075LzPHzkPcZwiUSgVWLhAy+evNXXK1aU32eL8rzm
zcM80TKOTyUUalJvt7MFdi0d0TVc+9HFHDZ+AlVRjyc06l/OC9obrmPhHBkC6b/1
ewTbOd97Yo278CjtOSBh6g31paqF94B8nuXWFIOGIiRuTlQt+Pkm36vjlaNj/V/Y
623DxHDkRamsjJU0nTLu1ssOP7kHxgFtCEj/3JjvXdx7zyWX3RID6dQBzATJL/RO
GwIDAQAB
-----END PUBLIC KEY-----
";
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg07PwmRK2wLUU4M0f
Y8e3J03uWeDsxZODVRqkwNmZI9ihRANCAATMrVmVcRIbV3WKSZ77iYstYtWIUIvM
V0fIQxAYLR9T99hiY0BwippnFuzzuij1tT26A9qWqnmqBfh+W9T//2Dp
-----END PRIVATE KEY-----
";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEzK1ZlXESG1d1ikme+4mLLWLViFCL
zFdHyEMQGC0fU/fYYmNAcIqaZxbs87oo9bU9ugPalqp5qgX4flvU//9g6Q==
-----END PUBLIC KEY-----
";
    const EC2_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgx78euIWE8eoqoj2X
buJdOBXEhI3W3eyfV1BV+9WzGNOhRANCAASM+peO7NpPbkPajJ/01GB+bojGiRwH
wBT+Dm79ygcDfBuwLBpC02JoN0AX+B4sbsuHkz0Bs2NJYS4tEb1RjJZM
-----END PRIVATE KEY-----
";
    const EC2_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEjPqXjuzaT25D2oyf9NRgfm6Ixokc
B8AU/g5u/coHA3wbsCwaQtNiaDdAF/geLG7Lh5M9AbNjSWEuLRG9UYyWTA==
-----END PUBLIC KEY-----
";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// `sub: alice`, expiring in an hour, with `extra` merged in (a `null`
    /// removes a claim).
    fn claims(extra: Value) -> Value {
        let mut c = json!({ "sub": "alice", "exp": now() + 3600 });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, key).unwrap()
    }

    fn hs256(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(SECRET),
            claims,
        )
    }

    fn rs256(claims: &Value) -> String {
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        sign(Algorithm::RS256, None, &key, claims)
    }

    fn es256(pem: &str, kid: Option<&str>, claims: &Value) -> String {
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
        sign(Algorithm::ES256, kid, &key, claims)
    }

    fn b64url(data: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn b64url_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
            ("\u{fb}\u{ff}", "w7vDvw"),
        ] {
            assert_eq!(b64url(plain.as_bytes()), encoded);
        }
    }

    /// A token's three parts.
    fn parts(token: &str) -> (String, String, String) {
        let mut it = token.split('.').map(str::to_owned);
        (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
    }

    fn jwt_stack(
        layer: JwtLayer,
    ) -> (
        Inner,
        impl Service<
            Request<String>,
            Response = Response<impl http_body::Body<Data = Bytes, Error = Infallible>>,
            Error = Infallible,
        > + Clone,
    ) {
        let inner = Inner::default();
        let svc = layer.layer(inner.service());
        (inner, svc)
    }

    fn hs_layer() -> JwtLayer {
        JwtLayer::builder().hs256(SECRET).build().unwrap()
    }

    /// Asserts that every token in `tokens` is refused alike with 401
    /// `invalid_token`, without calling the inner service.
    async fn assert_all_invalid(layer: JwtLayer, tokens: &[(&str, String)]) {
        let (inner, svc) = jwt_stack(layer);
        let mut first: Option<Reply> = None;
        for (why, token) in tokens {
            let r = send(&svc, with_bearer(token)).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{why}: {r:?}");
            r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
            match &first {
                None => first = Some(r),
                Some(f) => assert_eq!(&r, f, "{why}: the answer reveals the reason"),
            }
        }
        assert_eq!(inner.calls(), 0);
    }

    #[tokio::test]
    async fn hs256_happy_path_maps_claims_to_the_identity() {
        let (inner, svc) = jwt_stack(hs_layer());
        let token = hs256(&claims(json!({
            "tenant": "acme",
            "scope": "read  write",
            "scp": ["admin", "read"],
        })));
        let r = send(&svc, with_bearer(&token)).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        let seen = inner.last();
        let who = seen.identity.unwrap();
        assert_eq!(who.id(), "alice");
        assert_eq!(who.tenant(), Some("acme"));
        assert_eq!(who.scopes(), ["admin", "read", "write"]);
        assert!(!who.is_anonymous());
        assert!(seen.headers.get("authorization").is_none(), "stripped");

        // `scp` as a space-separated string too; no tenant claim, no tenant.
        let token = hs256(&claims(json!({ "sub": "bob", "scp": "x y" })));
        assert_eq!(send(&svc, with_bearer(&token)).await.status, 200);
        let who = inner.last().identity.unwrap();
        assert_eq!(who.id(), "bob");
        assert_eq!(who.tenant(), None);
        assert_eq!(who.scopes(), ["x", "y"]);
    }

    #[tokio::test]
    async fn jwt_options_tenant_claim_keep_credentials_anonymous() {
        let layer = JwtLayer::builder()
            .hs256(SECRET)
            .tenant_claim("org")
            .keep_credentials()
            .anonymous(Identity::anonymous())
            .build()
            .unwrap();
        let (inner, svc) = jwt_stack(layer);
        let token = hs256(&claims(json!({ "org": "initech", "tenant": "acme" })));
        assert_eq!(send(&svc, with_bearer(&token)).await.status, 200);
        let seen = inner.last();
        assert_eq!(seen.identity.unwrap().tenant(), Some("initech"));
        assert_eq!(
            seen.headers["authorization"],
            format!("Bearer {token}").as_str()
        );

        assert_eq!(send(&svc, req("/", &[])).await.status, 200);
        assert!(inner.last().identity.unwrap().is_anonymous());
        // An invalid token is still refused; so is an unreadable header.
        let r = send(&svc, with_bearer("not-a-jwt")).await;
        r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
        let r = send(&svc, req("/", &[("authorization", b"Bearer")])).await;
        r.assert_refused(StatusCode::BAD_REQUEST, MALFORMED);
    }

    #[tokio::test]
    async fn jwt_missing_and_unreadable_tokens() {
        let (_, svc) = jwt_stack(hs_layer());
        let r = send(&svc, req("/", &[])).await;
        r.assert_refused(StatusCode::UNAUTHORIZED, MISSING);
        // The JWT layer reads only `Authorization: Bearer`.
        let r = send(&svc, with_key(&hs256(&claims(json!({}))))).await;
        r.assert_refused(StatusCode::UNAUTHORIZED, MISSING);
        let r = send(&svc, req("/", &[("authorization", b"Basic dXNlcjpwYXNz")])).await;
        r.assert_refused(StatusCode::UNAUTHORIZED, MISSING);
        let token = hs256(&claims(json!({})));
        let twice = format!("Bearer {token}");
        let r = send(
            &svc,
            req(
                "/",
                &[
                    ("authorization", twice.as_bytes()),
                    ("authorization", twice.as_bytes()),
                ],
            ),
        )
        .await;
        r.assert_refused(StatusCode::BAD_REQUEST, MALFORMED);
        let r = send(&svc, req("/", &[("authorization", b"Bearer \xff")])).await;
        r.assert_refused(StatusCode::BAD_REQUEST, MALFORMED);
    }

    #[tokio::test]
    async fn rs256_happy_path() {
        let layer = JwtLayer::builder()
            .rs256_pem(RSA_PUBLIC)
            .issuer("https://issuer.example")
            .audience("switchyard")
            .build()
            .unwrap();
        let (inner, svc) = jwt_stack(layer);
        let token = rs256(&claims(json!({
            "iss": "https://issuer.example",
            "aud": "switchyard",
            "scope": "chat",
        })));
        let r = send(&svc, with_bearer(&token)).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        let who = inner.last().identity.unwrap();
        assert_eq!(who.id(), "alice");
        assert_eq!(who.scopes(), ["chat"]);
        // An audience list containing ours is accepted too.
        let token = rs256(&claims(json!({
            "iss": "https://issuer.example",
            "aud": ["other", "switchyard"],
        })));
        assert_eq!(send(&svc, with_bearer(&token)).await.status, 200);
    }

    #[tokio::test]
    async fn es256_happy_path() {
        let (inner, svc) = jwt_stack(JwtLayer::builder().es256_pem(EC_PUBLIC).build().unwrap());
        let token = es256(EC_PRIVATE, None, &claims(json!({ "tenant": "acme" })));
        let r = send(&svc, with_bearer(&token)).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        let who = inner.last().identity.unwrap();
        assert_eq!((who.id(), who.tenant()), ("alice", Some("acme")));
    }

    #[tokio::test]
    async fn jwk_happy_path() {
        let private = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&private, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some("ec-1".to_owned());
        let jwk_json = serde_json::to_string(&jwk).unwrap();
        let parsed: Value = serde_json::from_str(&jwk_json).unwrap();
        assert_eq!(parsed["alg"], "ES256");
        assert_eq!(parsed["kty"], "EC");
        assert!(parsed.get("d").is_none(), "a public JWK");

        let (inner, svc) = jwt_stack(JwtLayer::builder().jwk(jwk_json).build().unwrap());
        let token = es256(
            EC_PRIVATE,
            Some("ec-1"),
            &claims(json!({ "sub": "jwk-user" })),
        );
        let r = send(&svc, with_bearer(&token)).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        assert_eq!(inner.last_id(), "jwk-user");
        // No kid: tried against every key of its algorithm.
        let token = es256(EC_PRIVATE, None, &claims(json!({})));
        assert_eq!(send(&svc, with_bearer(&token)).await.status, 200);
        // The JWK's kid is the key's id: another kid is refused.
        let token = es256(EC_PRIVATE, Some("ec-2"), &claims(json!({})));
        let r = send(&svc, with_bearer(&token)).await;
        r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    }

    /// A public JWK for an EC private key, with `alg` or without.
    fn ec_jwk(private_pem: &str, kid: &str, with_alg: bool) -> Value {
        let private = EncodingKey::from_ec_pem(private_pem.as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&private, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(kid.to_owned());
        let mut v = serde_json::to_value(&jwk).unwrap();
        if !with_alg {
            v.as_object_mut().unwrap().remove("alg");
        }
        v
    }

    #[tokio::test]
    async fn keys_rotate_while_serving() {
        let layer = JwtLayer::builder()
            .hs256(SECRET)
            .kid("old")
            .build()
            .unwrap();
        let handle = layer.handle();
        let (inner, svc) = jwt_stack(layer);
        let old = sign(
            Algorithm::HS256,
            Some("old"),
            &EncodingKey::from_secret(SECRET),
            &claims(json!({})),
        );
        let new = sign(
            Algorithm::HS256,
            Some("new"),
            &EncodingKey::from_secret(OTHER_SECRET),
            &claims(json!({ "sub": "bob" })),
        );
        assert_eq!(send(&svc, with_bearer(&old)).await.status, 200);
        send(&svc, with_bearer(&new))
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, INVALID);

        // Overlap: both keys.
        handle
            .set_keys(
                JwtKeys::new()
                    .hs256(SECRET)
                    .kid("old")
                    .hs256(OTHER_SECRET)
                    .kid("new"),
            )
            .unwrap();
        assert_eq!(
            handle.key_ids(),
            [Some("old".to_owned()), Some("new".to_owned())]
        );
        assert_eq!(send(&svc, with_bearer(&old)).await.status, 200);
        assert_eq!(send(&svc, with_bearer(&new)).await.status, 200);
        assert_eq!(inner.last_id(), "bob");

        // The old key retired: its tokens are refused at once, by every
        // clone of the service.
        handle
            .set_keys(JwtKeys::new().hs256(OTHER_SECRET).kid("new"))
            .unwrap();
        for svc in [svc.clone(), svc] {
            send(&svc, with_bearer(&old))
                .await
                .assert_refused(StatusCode::UNAUTHORIZED, INVALID);
            assert_eq!(send(&svc, with_bearer(&new)).await.status, 200);
        }

        // A refused set changes nothing.
        assert!(matches!(
            handle.set_keys(JwtKeys::new()),
            Err(AuthError::NoJwtKey)
        ));
        assert!(matches!(
            handle.set_keys(JwtKeys::new().hs256(SECRET).rs256_pem("not a key")),
            Err(AuthError::InvalidJwtKey { index: 1, .. })
        ));
        assert_eq!(handle.key_ids(), [Some("new".to_owned())]);
    }

    #[tokio::test]
    async fn a_jwk_set_rotates_by_kid() {
        // An identity provider's JWKS: two signing keys (one without
        // `alg`, as some publish them) and an encryption key left out.
        let jwks = json!({ "keys": [
            ec_jwk(EC_PRIVATE, "2026-10", true),
            ec_jwk(EC2_PRIVATE, "2026-11", false),
            { "kty": "RSA", "use": "enc", "kid": "enc-1", "n": "AQAB", "e": "AQAB" },
        ]});
        let layer = JwtLayer::builder()
            .jwks(jwks.to_string())
            .issuer("https://idp.example")
            .build()
            .unwrap();
        let handle = layer.handle();
        assert_eq!(
            handle.key_ids(),
            [Some("2026-10".to_owned()), Some("2026-11".to_owned())]
        );
        let (_, svc) = jwt_stack(layer);
        let october = es256(
            EC_PRIVATE,
            Some("2026-10"),
            &claims(json!({ "iss": "https://idp.example" })),
        );
        let november = es256(
            EC2_PRIVATE,
            Some("2026-11"),
            &claims(json!({ "iss": "https://idp.example" })),
        );
        assert_eq!(send(&svc, with_bearer(&october)).await.status, 200);
        assert_eq!(send(&svc, with_bearer(&november)).await.status, 200);
        // The issuer check applies to rotated-in keys too.
        let elsewhere = es256(
            EC2_PRIVATE,
            Some("2026-11"),
            &claims(json!({ "iss": "https://other.example" })),
        );
        send(&svc, with_bearer(&elsewhere))
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, INVALID);

        // The provider drops October's key.
        let jwks = json!({ "keys": [ec_jwk(EC2_PRIVATE, "2026-11", true)] });
        assert_eq!(handle.set_jwks(&jwks.to_string()).unwrap(), 1);
        send(&svc, with_bearer(&october))
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, INVALID);
        assert_eq!(send(&svc, with_bearer(&november)).await.status, 200);

        // Bad documents are refused, the keys stay.
        for bad in [
            "not json".to_owned(),
            json!({ "keys": [] }).to_string(),
            json!({ "keys": [{ "kty": "oct", "k": "c2VjcmV0", "kid": "x" }] }).to_string(),
        ] {
            assert!(
                matches!(handle.set_jwks(&bad), Err(AuthError::InvalidJwtKey { .. })),
                "{bad}"
            );
        }
        assert_eq!(handle.key_ids(), [Some("2026-11".to_owned())]);
    }

    #[tokio::test]
    async fn kid_selects_the_verification_key() {
        let layer = JwtLayer::builder()
            .hs256(SECRET)
            .kid("a")
            .hs256(OTHER_SECRET)
            .kid("b")
            .es256_pem(EC_PUBLIC)
            .kid("ec")
            .es256_pem(EC2_PUBLIC)
            .kid("ec2")
            .build()
            .unwrap();
        let (inner, svc) = jwt_stack(layer);
        let other = EncodingKey::from_secret(OTHER_SECRET);
        let ours = EncodingKey::from_secret(SECRET);
        let c = claims(json!({}));

        let ok = [
            sign(Algorithm::HS256, Some("a"), &ours, &c),
            sign(Algorithm::HS256, Some("b"), &other, &c),
            sign(Algorithm::HS256, None, &other, &c),
            sign(Algorithm::HS256, None, &ours, &c),
            es256(EC_PRIVATE, Some("ec"), &c),
            es256(EC2_PRIVATE, Some("ec2"), &c),
            es256(EC2_PRIVATE, None, &c),
        ];
        for (i, token) in ok.iter().enumerate() {
            assert_eq!(send(&svc, with_bearer(token)).await.status, 200, "#{i}");
        }
        assert_eq!(inner.calls(), ok.len());

        assert_all_invalid(
            JwtLayer::builder()
                .hs256(SECRET)
                .kid("a")
                .hs256(OTHER_SECRET)
                .kid("b")
                .es256_pem(EC_PUBLIC)
                .kid("ec")
                .es256_pem(EC2_PUBLIC)
                .kid("ec2")
                .build()
                .unwrap(),
            &[
                (
                    "kid a, signed by b",
                    sign(Algorithm::HS256, Some("a"), &other, &c),
                ),
                (
                    "kid b, signed by a",
                    sign(Algorithm::HS256, Some("b"), &ours, &c),
                ),
                ("unknown kid", sign(Algorithm::HS256, Some("zz"), &ours, &c)),
                ("kid ec, signed by ec2", es256(EC2_PRIVATE, Some("ec"), &c)),
                ("kid ec2, signed by ec", es256(EC_PRIVATE, Some("ec2"), &c)),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn bad_signatures_are_refused() {
        let c = claims(json!({}));
        let forged = |token: &str, payload: &Value| {
            let (h, _, s) = parts(token);
            format!("{h}.{}.{s}", b64url(payload.to_string().as_bytes()))
        };
        let good = hs256(&c);
        let (h, p, _) = parts(&good);
        assert_all_invalid(
            hs_layer(),
            &[
                (
                    "other secret",
                    sign(
                        Algorithm::HS256,
                        None,
                        &EncodingKey::from_secret(OTHER_SECRET),
                        &c,
                    ),
                ),
                (
                    "payload changed",
                    forged(&good, &claims(json!({ "sub": "root" }))),
                ),
                ("signature cut", format!("{h}.{p}.")),
                ("signature of another token", {
                    let (_, _, s) = parts(&hs256(&claims(json!({ "sub": "x" }))));
                    format!("{h}.{p}.{s}")
                }),
            ],
        )
        .await;

        let good = rs256(&c);
        assert_all_invalid(
            JwtLayer::builder().rs256_pem(RSA_PUBLIC).build().unwrap(),
            &[(
                "payload changed",
                forged(&good, &claims(json!({ "sub": "root" }))),
            )],
        )
        .await;
        let good = es256(EC_PRIVATE, None, &c);
        assert_all_invalid(
            JwtLayer::builder().es256_pem(EC_PUBLIC).build().unwrap(),
            &[
                ("another key", es256(EC2_PRIVATE, None, &c)),
                (
                    "payload changed",
                    forged(&good, &claims(json!({ "sub": "root" }))),
                ),
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn time_claims_are_checked_with_leeway() {
        let n = now();
        assert_all_invalid(
            hs_layer(),
            &[
                ("expired", hs256(&claims(json!({ "exp": n - 3600 })))),
                (
                    "expired beyond leeway",
                    hs256(&claims(json!({ "exp": n - 120 }))),
                ),
                ("not yet valid", hs256(&claims(json!({ "nbf": n + 3600 })))),
                ("no exp", hs256(&claims(json!({ "exp": null })))),
                ("exp not a number", hs256(&claims(json!({ "exp": "soon" })))),
            ],
        )
        .await;

        // Within the default 60 s leeway, both ways.
        let (_, svc) = jwt_stack(hs_layer());
        let within = hs256(&claims(json!({ "exp": n - 10, "nbf": n + 10 })));
        assert_eq!(send(&svc, with_bearer(&within)).await.status, 200);
        let past_nbf = hs256(&claims(json!({ "nbf": n - 10 })));
        assert_eq!(send(&svc, with_bearer(&past_nbf)).await.status, 200);

        // With no leeway, a token expired ten seconds ago is refused.
        let strict = JwtLayer::builder()
            .hs256(SECRET)
            .leeway(Duration::ZERO)
            .build()
            .unwrap();
        assert_all_invalid(
            strict,
            &[
                ("expired 10 s ago", hs256(&claims(json!({ "exp": n - 10 })))),
                ("valid in 600 s", hs256(&claims(json!({ "nbf": n + 600 })))),
            ],
        )
        .await;
    }

    fn iss_aud_layer() -> JwtLayer {
        JwtLayer::builder()
            .hs256(SECRET)
            .issuer("https://issuer.example")
            .issuer("https://other-issuer.example")
            .audience("switchyard")
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn issuer_and_audience_are_checked_when_configured() {
        let (_, svc) = jwt_stack(iss_aud_layer());
        for iss in ["https://issuer.example", "https://other-issuer.example"] {
            let t = hs256(&claims(json!({ "iss": iss, "aud": "switchyard" })));
            assert_eq!(send(&svc, with_bearer(&t)).await.status, 200, "{iss}");
        }
        assert_all_invalid(
            iss_aud_layer(),
            &[
                (
                    "wrong aud",
                    hs256(&claims(
                        json!({ "iss": "https://issuer.example", "aud": "elsewhere" }),
                    )),
                ),
                (
                    "wrong aud list",
                    hs256(&claims(
                        json!({ "iss": "https://issuer.example", "aud": ["a", "b"] }),
                    )),
                ),
                (
                    "wrong iss",
                    hs256(&claims(
                        json!({ "iss": "https://evil.example", "aud": "switchyard" }),
                    )),
                ),
            ],
        )
        .await;

        // Not configured: not checked.
        let (_, svc) = jwt_stack(hs_layer());
        let t = hs256(&claims(json!({ "iss": "anyone", "aud": "anything" })));
        assert_eq!(send(&svc, with_bearer(&t)).await.status, 200);
    }

    /// The builder says "`iss` and `aud` are checked when configured"; a
    /// token that carries no `iss` (or no `aud`) at all must then be refused,
    /// otherwise any token signed with the key for another purpose passes.
    #[tokio::test]
    async fn a_token_without_iss_is_refused_when_an_issuer_is_configured() {
        assert_all_invalid(
            iss_aud_layer(),
            &[("no iss", hs256(&claims(json!({ "aud": "switchyard" }))))],
        )
        .await;
    }

    #[tokio::test]
    async fn a_token_without_aud_is_refused_when_an_audience_is_configured() {
        assert_all_invalid(
            iss_aud_layer(),
            &[(
                "no aud",
                hs256(&claims(json!({ "iss": "https://issuer.example" }))),
            )],
        )
        .await;
    }

    #[tokio::test]
    async fn other_algorithms_are_refused() {
        let c = claims(json!({}));
        // The classic confusion: HS256 "signed" with the RSA public key.
        let confused = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
            &c,
        );
        assert_all_invalid(
            JwtLayer::builder().rs256_pem(RSA_PUBLIC).build().unwrap(),
            &[
                ("HS256 with the public key", confused),
                ("HS256 with a secret", hs256(&c)),
                ("ES256", es256(EC_PRIVATE, None, &c)),
            ],
        )
        .await;
        let secret = EncodingKey::from_secret(SECRET);
        assert_all_invalid(
            hs_layer(),
            &[
                ("HS384", sign(Algorithm::HS384, None, &secret, &c)),
                ("HS512", sign(Algorithm::HS512, None, &secret, &c)),
                ("RS256", rs256(&c)),
            ],
        )
        .await;
        // An HS256 header on an HS384 signature.
        let hs384 = sign(Algorithm::HS384, None, &secret, &c);
        let (_, p, s) = parts(&hs384);
        let (h, _, _) = parts(&hs256(&c));
        assert_all_invalid(hs_layer(), &[("relabelled", format!("{h}.{p}.{s}"))]).await;
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let payload = b64url(claims(json!({})).to_string().as_bytes());
        let mut tokens = Vec::new();
        for alg in ["none", "None", "NONE", "nOnE"] {
            let header = b64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
            tokens.push((alg, format!("{header}.{payload}.")));
        }
        // A real header with no signature.
        let header = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
        tokens.push(("HS256, empty signature", format!("{header}.{payload}.")));
        let tokens: Vec<(&str, String)> = tokens;
        assert_all_invalid(hs_layer(), &tokens).await;
        assert_all_invalid(
            JwtLayer::builder().rs256_pem(RSA_PUBLIC).build().unwrap(),
            &tokens,
        )
        .await;
    }

    #[tokio::test]
    async fn garbage_and_claimless_tokens_are_refused() {
        let good = hs256(&claims(json!({})));
        let (h, p, s) = parts(&good);
        assert_all_invalid(
            hs_layer(),
            &[
                ("one word", "garbage".to_owned()),
                ("three words", "a.b.c".to_owned()),
                ("two parts", format!("{h}.{p}")),
                ("four parts", format!("{good}.{s}")),
                ("header only", h.clone()),
                ("not base64url", format!("{h}.{p}.{s}~")),
                ("b64 json, not an object", {
                    let p = b64url(b"[1,2]");
                    format!("{h}.{p}.{s}")
                }),
                ("no sub", hs256(&claims(json!({ "sub": null })))),
                ("sub not a string", hs256(&claims(json!({ "sub": 42 })))),
                (
                    "sub an object",
                    hs256(&claims(json!({ "sub": { "id": "x" } }))),
                ),
            ],
        )
        .await;
    }

    #[test]
    fn jwt_build_errors() {
        assert_eq!(
            JwtLayer::builder().build().unwrap_err(),
            AuthError::NoJwtKey
        );
        let err = JwtLayer::builder()
            .hs256(SECRET)
            .rs256_pem("not a pem")
            .build()
            .unwrap_err();
        assert!(
            matches!(err, AuthError::InvalidJwtKey { index: 1, .. }),
            "{err:?}"
        );
        let err = JwtLayer::builder()
            .es256_pem(RSA_PUBLIC)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, AuthError::InvalidJwtKey { index: 0, .. }),
            "{err:?}"
        );
        let err = JwtLayer::builder()
            .jwk(r#"{"kty":"oct","k":"c2VjcmV0"}"#)
            .build()
            .unwrap_err();
        assert!(
            matches!(err, AuthError::InvalidJwtKey { index: 0, .. }),
            "a JWK without alg: {err:?}"
        );
        let err = JwtLayer::builder().jwk("{").build().unwrap_err();
        assert!(matches!(err, AuthError::InvalidJwtKey { index: 0, .. }));
    }

    #[tokio::test]
    async fn jwt_identity_feeds_scopes_and_rate_limits() {
        let inner = Inner::default();
        let svc = ServiceBuilder::new()
            .layer(hs_layer())
            .layer(
                RateLimitLayer::builder()
                    .key_by(KeyBy::identity())
                    .quota(Quota::per_minute(1))
                    .clock(ManualClock::new())
                    .build()
                    .unwrap(),
            )
            .layer(RequireScopes::all(["chat"]))
            .service(inner.service());
        let token = |sub: &str, scope: &str| hs256(&claims(json!({ "sub": sub, "scope": scope })));
        assert_eq!(
            send(&svc, with_bearer(&token("a", "chat"))).await.status,
            200
        );
        assert_eq!(
            send(&svc, with_bearer(&token("a", "chat"))).await.status,
            429
        );
        assert_eq!(
            send(&svc, with_bearer(&token("b", "chat"))).await.status,
            200
        );
        let r = send(&svc, with_bearer(&token("c", "read"))).await;
        r.assert_refused(
            StatusCode::FORBIDDEN,
            r#"Bearer realm="switchyard", error="insufficient_scope", scope="chat""#,
        );
        assert_eq!(inner.calls(), 2);
    }
}

/// A tab or stray spaces around `Bearer` must not let a key slip past as
/// "not a bearer token" and on to the upstream.
#[tokio::test]
async fn bearer_with_tabs_or_spaces_is_still_read_and_stripped() {
    let (inner, svc) = stack(keys());
    for value in [
        &b"Bearer\talice-key"[..],
        b" Bearer alice-key",
        b"Bearer  alice-key ",
        b"bearer\t alice-key",
    ] {
        let r = send(&svc, req("/", &[("authorization", value)])).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{:?}",
            String::from_utf8_lossy(value)
        );
        assert!(inner.last().headers.get("authorization").is_none());
    }
    let r = send(&svc, req("/", &[("authorization", b"Bearer\twrong-key")])).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

/// The same id under two tenants is two rate-limit keys.
#[test]
fn identity_keys_tell_tenants_apart() {
    let a = Identity::new("svc").with_tenant("acme");
    let b = Identity::new("svc").with_tenant("globex");
    let none = Identity::new("svc");
    assert_ne!(a.key(), b.key());
    assert_ne!(a.key(), none.key());
    // Injective even when ids and tenants share characters.
    assert_ne!(
        Identity::new("bc").with_tenant("a").key(),
        Identity::new("c").with_tenant("ab").key()
    );
    assert_ne!(
        Identity::new("t1:ax").key(),
        Identity::new("x").with_tenant("a").key()
    );
    let round_trip: Identity = serde_json::from_value(serde_json::to_value(&a).unwrap()).unwrap();
    assert_eq!(round_trip.key(), a.key());
}
