//! `switchyard::auth` in a real axum app over loopback HTTP: the whole
//! router behind an `ApiKeyLayer`, `/admin` behind `RequireScopes` as a
//! route layer, a real hyper client, and live revocation through the
//! handle while the server runs.
//!
//! Timeouts here only guard against a hang; no assertion is about speed.

use std::net::SocketAddr;

use axum::routing::get;
use axum::{Extension, Json, Router};
use http::{HeaderMap, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use switchyard::auth::{ApiKey, ApiKeyHandle, ApiKeyLayer, Identity, RequireScopes, digest};
use tokio::net::TcpListener;

use crate::support::net;

const MISSING: &str = r#"Bearer realm="switchyard""#;
const INVALID: &str = r#"Bearer realm="switchyard", error="invalid_token""#;
const FORBIDDEN: &str = r#"Bearer realm="switchyard", error="insufficient_scope", scope="admin""#;

use net::HttpClient;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

/// What a handler reports about the request it got.
async fn report(Extension(who): Extension<Identity>, headers: HeaderMap) -> Json<Value> {
    Json(json!({
        "id": who.id(),
        "tenant": who.tenant(),
        "scopes": who.scopes(),
        "x_api_key": headers.contains_key("x-api-key"),
        "authorization": headers.get("authorization").map(|v| v.to_str().unwrap().to_owned()),
        "x_trace": headers.get("x-trace").map(|v| v.to_str().unwrap().to_owned()),
    }))
}

/// Serves the app on `127.0.0.1:0`; its address and the key handle.
async fn serve() -> (SocketAddr, ApiKeyHandle) {
    let keys = ApiKeyLayer::builder()
        .key(ApiKey::new(
            "admin-key",
            Identity::new("ops").with_scopes(["admin", "chat"]),
        ))
        .key(ApiKey::new(
            "user-key",
            Identity::new("alice")
                .with_tenant("acme")
                .with_scopes(["chat"]),
        ))
        .key(ApiKey::from_digest(&digest("digest-key"), Identity::new("bob")).unwrap())
        .build()
        .unwrap();
    let handle = keys.handle();
    let app = Router::new()
        .route("/admin", get(report))
        .route_layer(RequireScopes::all(["admin"]))
        .route("/v1", get(report))
        .layer(keys);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, handle)
}

async fn get_as(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let (parts, body) = net::get(client, addr, path, headers).await.into_parts();
    Reply {
        status: parts.status,
        body: if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).expect("a JSON body")
        },
        headers: parts.headers,
    }
}

fn key(k: &str) -> [(&'static str, String); 1] {
    [("x-api-key", k.to_owned())]
}

impl Reply {
    fn assert_refused(&self, status: StatusCode, challenge: &str) {
        assert_eq!(self.status, status, "{:?}", self.body);
        assert_eq!(self.headers["content-type"], "application/problem+json");
        assert_eq!(self.headers["www-authenticate"], challenge);
        assert_eq!(self.body["status"], status.as_u16());
    }
}

#[tokio::test]
async fn axum_app_authenticates_authorizes_and_revokes_live() {
    let (addr, handle) = serve().await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let call = |path: &'static str, headers: Vec<(&'static str, String)>| {
        let client = client.clone();
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            get_as(&client, addr, path, &headers).await
        }
    };

    // Any valid key reaches /v1; the handler sees the identity and no key.
    let r = call("/v1", key("user-key").into()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["id"], "alice");
    assert_eq!(r.body["tenant"], "acme");
    assert_eq!(r.body["scopes"], json!(["chat"]));
    assert_eq!(r.body["x_api_key"], false);
    assert_eq!(r.body["authorization"], Value::Null);

    let r = call(
        "/v1",
        vec![
            ("authorization", "Bearer digest-key".to_owned()),
            ("x-trace", "t-1".to_owned()),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["id"], "bob");
    assert_eq!(r.body["authorization"], Value::Null, "bearer stripped");
    assert_eq!(r.body["x_trace"], "t-1", "other headers kept");

    // /admin needs the admin scope.
    let r = call("/admin", key("admin-key").into()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["id"], "ops");
    assert_eq!(r.body["x_api_key"], false);
    let r = call("/admin", key("user-key").into()).await;
    r.assert_refused(StatusCode::FORBIDDEN, FORBIDDEN);
    assert_eq!(r.body["missing_scopes"], json!(["admin"]));
    let r = call("/admin", key("digest-key").into()).await;
    r.assert_refused(StatusCode::FORBIDDEN, FORBIDDEN);

    // Without a key, or with a wrong one: 401 everywhere, 404s included
    // (authentication comes before routing).
    for path in ["/v1", "/admin", "/nowhere"] {
        let r = call(path, vec![]).await;
        r.assert_refused(StatusCode::UNAUTHORIZED, MISSING);
        let r = call(path, key("wrong-key").into()).await;
        r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    }
    assert_eq!(
        call("/nowhere", key("user-key").into()).await.status,
        StatusCode::NOT_FOUND
    );
    // Unreadable credentials: 400.
    let r = call(
        "/v1",
        vec![
            ("x-api-key", "user-key".to_owned()),
            ("x-api-key", "admin-key".to_owned()),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.headers["content-type"], "application/problem+json");

    // Revoke mid-test: the very next request is refused, like an unknown
    // key; the other keys keep working.
    assert!(handle.revoke("user-key"));
    let revoked = call("/v1", key("user-key").into()).await;
    revoked.assert_refused(StatusCode::UNAUTHORIZED, INVALID);
    let unknown = call("/v1", key("wrong-key").into()).await;
    assert_eq!(revoked.body, unknown.body);
    assert_eq!(
        revoked.headers["www-authenticate"],
        unknown.headers["www-authenticate"]
    );
    assert_eq!(
        call("/v1", key("admin-key").into()).await.status,
        StatusCode::OK
    );

    // Granting admin live: a replaced key carries its new scopes at once.
    handle.insert(ApiKey::new(
        "digest-key",
        Identity::new("bob").with_scopes(["admin"]),
    ));
    let r = call("/admin", key("digest-key").into()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["scopes"], json!(["admin"]));

    // Revoking an identity removes its keys.
    assert_eq!(handle.revoke_identity("ops"), 1);
    let r = call("/admin", key("admin-key").into()).await;
    r.assert_refused(StatusCode::UNAUTHORIZED, INVALID);

    let s = handle.stats();
    assert_eq!(
        (
            s.authenticated,
            s.missing,
            s.invalid,
            s.malformed,
            s.anonymous
        ),
        (8, 3, 6, 1, 0),
        "{s:?}"
    );
}
