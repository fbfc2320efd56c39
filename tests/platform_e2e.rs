//! API lifecycle over real sockets: two versions of one API behind the
//! API-key layer on a loopback axum server, moved through every stage by
//! their handles, called with a real hyper client.
//!
//! * a draft is a 404 problem for callers, and served to testers (by
//!   header, or by an identity's scope);
//! * published: served, no lifecycle headers;
//! * deprecated: served with `Deprecation` (`@` + Unix seconds),
//!   `Sunset` (an HTTP date) and the successor's `Link`, its callers
//!   counted by identity;
//! * retired: 410 Gone problem+json naming the successor, with its `Link`;
//! * the moves kept with who and when, a refused move an error.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use switchyard::auth::{ApiKey, ApiKeyLayer, Identity};
use switchyard::platform::lifecycle::{
    Api, LifecycleError, LifecycleHandle, LifecycleLayer, Stage,
};

use crate::support::net;

/// 2027-01-01T00:00:00Z.
const SUNSET: u64 = 1_798_761_600;

use net::HttpClient;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// `/v1/orders` (a draft, deprecated later, sunset 2027-01-01, successor
/// `/v2/orders`) and `/v2/orders` (published), behind API keys.
async fn serve() -> (SocketAddr, LifecycleHandle, LifecycleHandle) {
    let v1 = LifecycleLayer::new(
        Api::new("orders", "v1")
            .owner("team-orders")
            .sunset(SUNSET)
            .successor("/v2/orders")
            .tester_header(
                HeaderName::from_static("x-tester"),
                HeaderValue::from_static("team-orders"),
            )
            .tester_scope("orders:test"),
    )
    .unwrap();
    let v2 = LifecycleLayer::new(Api::new("orders", "v2").stage(Stage::Published)).unwrap();
    let (h1, h2) = (v1.handle(), v2.handle());
    let keys = ApiKeyLayer::builder()
        .key(ApiKey::new("alice-key", Identity::new("alice")))
        .key(ApiKey::new("bob-key", Identity::new("bob")))
        .key(ApiKey::new(
            "qa-key",
            Identity::new("qa").with_scopes(["orders:test"]),
        ))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/v1/orders", get(|| async { "v1 orders" }).layer(v1))
        .route("/v2/orders", get(|| async { "v2 orders" }).layer(v2))
        .layer(keys);
    (net::serve(app).await, h1, h2)
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
        headers: parts.headers,
        body,
    }
}

#[tokio::test]
async fn a_version_goes_through_every_stage() {
    let (addr, v1, v2) = serve().await;
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let alice = [("x-api-key", "alice-key")];

    // Draft: hidden from callers, served to testers by header or scope.
    assert_eq!(v1.stage(), Stage::Draft);
    let r = get_as(&client, addr, "/v1/orders", &alice).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.json()["status"], 404);
    let wrong = [("x-api-key", "alice-key"), ("x-tester", "someone")];
    assert_eq!(
        get_as(&client, addr, "/v1/orders", &wrong).await.status,
        404
    );
    let tester = [("x-api-key", "alice-key"), ("x-tester", "team-orders")];
    let r = get_as(&client, addr, "/v1/orders", &tester).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"v1 orders");
    let qa = [("x-api-key", "qa-key")];
    assert_eq!(get_as(&client, addr, "/v1/orders", &qa).await.status, 200);

    // Published: served as is.
    v1.transition_at(Stage::Published, "carol", 1_000).unwrap();
    let r = get_as(&client, addr, "/v1/orders", &alice).await;
    assert_eq!(r.status, StatusCode::OK);
    for name in ["deprecation", "sunset", "link"] {
        assert_eq!(r.header(name), None, "{name}");
    }

    // Deprecated: served with the three headers; callers counted.
    v1.transition_at(Stage::Deprecated, "carol", 1_767_225_600)
        .unwrap();
    let r = get_as(&client, addr, "/v1/orders", &alice).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"v1 orders");
    assert_eq!(r.header("deprecation"), Some("@1767225600"));
    assert_eq!(r.header("sunset"), Some("Fri, 01 Jan 2027 00:00:00 GMT"));
    assert_eq!(
        r.header("link"),
        Some(r#"</v2/orders>; rel="successor-version""#)
    );
    get_as(&client, addr, "/v1/orders", &alice).await;
    get_as(&client, addr, "/v1/orders", &[("x-api-key", "bob-key")]).await;
    let callers = v1.callers();
    assert_eq!(callers.by_identity.get("alice"), Some(&2));
    assert_eq!(callers.by_identity.get("bob"), Some(&1));
    assert_eq!(callers.others, 0);
    // The successor is untouched.
    let r = get_as(&client, addr, "/v2/orders", &alice).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("deprecation"), None);
    assert_eq!(v2.callers().by_identity.len(), 0);

    // Retired: 410 Gone, naming the successor.
    v1.transition_at(Stage::Retired, "dave", 1_798_761_600)
        .unwrap();
    let r = get_as(&client, addr, "/v1/orders", &alice).await;
    assert_eq!(r.status, StatusCode::GONE);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        r.header("link"),
        Some(r#"</v2/orders>; rel="successor-version""#)
    );
    let body = r.json();
    assert_eq!(body["status"], 410);
    assert_eq!(body["successor"], "/v2/orders");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("`orders` version `v1` is retired")
    );
    // Testers do not bring a retired version back.
    assert_eq!(
        get_as(&client, addr, "/v1/orders", &tester).await.status,
        410
    );

    // A retired version cannot be published again; the moves are kept.
    assert!(matches!(
        v1.transition(Stage::Published, "eve"),
        Err(LifecycleError::Move { .. })
    ));
    let moves: Vec<_> = v1
        .history()
        .into_iter()
        .map(|t| (t.from, t.to, t.by, t.at))
        .collect();
    assert_eq!(
        moves,
        [
            (Stage::Draft, Stage::Published, "carol".to_owned(), 1_000),
            (
                Stage::Published,
                Stage::Deprecated,
                "carol".to_owned(),
                1_767_225_600
            ),
            (
                Stage::Deprecated,
                Stage::Retired,
                "dave".to_owned(),
                1_798_761_600
            ),
        ]
    );

    // Undone: deprecated again, served again, with its first date.
    v1.transition(Stage::Deprecated, "dave").unwrap();
    let r = get_as(&client, addr, "/v1/orders", &alice).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("deprecation"), Some("@1767225600"));
}
