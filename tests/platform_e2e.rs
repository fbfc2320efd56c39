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
//!
//! Subscriptions and the catalog, over the same kind of server:
//!
//! * a subscription's whole path: 403 `subscription_required` with where
//!   to ask, asked for through the catalog, still 403 while pending,
//!   approved (200), another tenant still refused, revoked (403 again);
//! * a whole tenant subscribed at once, through an open API;
//! * the catalog shows what the caller may see (no drafts, no retired
//!   versions, team-only APIs to their teams), 401 without credentials,
//!   and every OpenAPI document it serves passes an OpenAPI 3.1 validator.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::Method;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use switchyard::auth::{ApiKey, ApiKeyLayer, Identity};
use switchyard::platform::catalog::{ApiCatalog, Listing, Visibility};
use switchyard::platform::lifecycle::{
    Api, LifecycleError, LifecycleHandle, LifecycleLayer, Stage,
};
use switchyard::platform::subscription::{Consumer, Policy, Status, Subscriptions};
use tower::ServiceBuilder;

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
    send_as(client, Method::GET, addr, path, headers).await
}

async fn send_as(
    client: &HttpClient,
    method: Method,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let (parts, body) = net::send(client, method, addr, path, headers)
        .await
        .into_parts();
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

/// Three APIs behind API keys, a catalog at `/catalog`:
///
/// * `orders` v1 (published, needs an approved subscription) at
///   `/v1/orders`, and v2 (a draft) at `/v2/orders`;
/// * `ledger` v1 (published, open subscriptions, seen by team `shop`
///   and its owner `finance` only) at `/v1/ledger`;
/// * `status` v1 (published, no subscriptions, retired later).
struct Platform {
    addr: SocketAddr,
    subs: Subscriptions,
    status: LifecycleHandle,
    client: HttpClient,
}

async fn platform() -> Platform {
    let subs = Subscriptions::new();
    let orders_v1 = LifecycleLayer::new(
        Api::new("orders", "v1")
            .owner("team-orders")
            .description("Orders of the shop.")
            .stage(Stage::Published),
    )
    .unwrap();
    let orders_v2 = LifecycleLayer::new(Api::new("orders", "v2").owner("team-orders")).unwrap();
    let ledger = LifecycleLayer::new(
        Api::new("ledger", "v1")
            .owner("finance")
            .stage(Stage::Published),
    )
    .unwrap();
    let status = LifecycleLayer::new(Api::new("status", "v1").stage(Stage::Published)).unwrap();
    let orders_subs = subs.register("orders", Policy::Approval).unwrap();
    let ledger_subs = subs.register("ledger", Policy::Open).unwrap();
    let catalog = ApiCatalog::new(subs.clone())
        .mounted_at("/catalog")
        .list(
            Listing::new(orders_v1.handle())
                .path("/v1/orders")
                .methods([Method::GET])
                .auth("api_key")
                .limits("100 requests per minute"),
        )
        .unwrap()
        .list(Listing::new(orders_v2.handle()).path("/v2/orders"))
        .unwrap()
        .list(
            Listing::new(ledger.handle())
                .path("/v1/ledger")
                .methods([Method::GET, Method::POST])
                .auth("bearer")
                .visibility(Visibility::Teams(vec!["shop".into()])),
        )
        .unwrap()
        .list(Listing::new(status.handle()).path("/v1/status"))
        .unwrap();
    let status_handle = status.handle();
    let keys = ApiKeyLayer::builder()
        .key(ApiKey::new(
            "alice-key",
            Identity::new("alice").with_tenant("shop"),
        ))
        .key(ApiKey::new(
            "carol-key",
            Identity::new("carol").with_tenant("shop"),
        ))
        .key(ApiKey::new(
            "bob-key",
            Identity::new("bob").with_tenant("bank"),
        ))
        .key(ApiKey::new(
            "fin-key",
            Identity::new("fran").with_tenant("finance"),
        ))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/v1/orders",
            get(|| async { "v1 orders" })
                .layer(ServiceBuilder::new().layer(orders_v1).layer(orders_subs)),
        )
        .route("/v2/orders", get(|| async { "v2 orders" }).layer(orders_v2))
        .route(
            "/v1/ledger",
            get(|| async { "ledger" })
                .layer(ServiceBuilder::new().layer(ledger).layer(ledger_subs)),
        )
        .route("/v1/status", get(|| async { "ok" }).layer(status))
        .nest_service("/catalog", catalog)
        .layer(keys);
    Platform {
        addr: net::serve(app).await,
        subs,
        status: status_handle,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl Platform {
    async fn get(&self, path: &str, key: &str) -> Reply {
        get_as(&self.client, self.addr, path, &[("x-api-key", key)]).await
    }

    async fn post(&self, path: &str, key: &str) -> Reply {
        send_as(
            &self.client,
            Method::POST,
            self.addr,
            path,
            &[("x-api-key", key)],
        )
        .await
    }
}

#[tokio::test]
async fn a_subscription_is_asked_for_approved_and_revoked() {
    let p = platform().await;

    // Not subscribed: 403 problem, code subscription_required, and where
    // to ask.
    let r = p.get("/v1/orders", "alice-key").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    let problem = r.json();
    assert_eq!(problem["code"], "subscription_required");
    assert_eq!(problem["api"], "orders");
    assert_eq!(problem["request_access"], "/catalog/orders/subscription");

    // Asked for through the catalog: pending, and still refused.
    let r = p.post("/catalog/orders/subscription", "alice-key").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.json()["status"], "pending");
    assert_eq!(r.json()["consumer"]["id"], "alice");
    assert_eq!(p.get("/v1/orders", "alice-key").await.status, 403);
    // Asking twice is a conflict.
    let r = p.post("/catalog/orders/subscription", "alice-key").await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = p.get("/catalog/orders/subscription", "alice-key").await;
    assert_eq!(r.json()["status"], "pending");

    // Approved by an owner: served.
    let alice = Consumer::member("shop", "alice");
    p.subs.approve("orders", &alice, "owner-olga").unwrap();
    let r = p.get("/v1/orders", "alice-key").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(&r.body[..], b"v1 orders");
    // Alice's own subscription: not her teammate's, nor another tenant's.
    assert_eq!(p.get("/v1/orders", "carol-key").await.status, 403);
    assert_eq!(p.get("/v1/orders", "bob-key").await.status, 403);
    let r = p.get("/catalog/orders", "alice-key").await;
    assert_eq!(r.json()["subscription"]["subscribed"], true);
    assert_eq!(r.json()["subscription"]["policy"], "approval");

    // Revoked: refused again.
    p.subs.revoke("orders", &alice, "owner-olga").unwrap();
    assert_eq!(p.get("/v1/orders", "alice-key").await.status, 403);
    let log: Vec<(Option<Status>, Status, String)> = p
        .subs
        .decisions("orders")
        .unwrap()
        .into_iter()
        .map(|d| (d.from, d.to, d.by))
        .collect();
    assert_eq!(
        log,
        [
            (None, Status::Pending, "alice".to_owned()),
            (
                Some(Status::Pending),
                Status::Approved,
                "owner-olga".to_owned()
            ),
            (
                Some(Status::Approved),
                Status::Revoked,
                "owner-olga".to_owned()
            ),
        ]
    );
    assert_eq!(p.subs.refused("orders").unwrap(), 5);

    // Without credentials the API key layer answers first; a subscription
    // never stands in for authentication.
    let r = get_as(&p.client, p.addr, "/v1/orders", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_whole_tenant_subscribes_to_an_open_api() {
    let p = platform().await;
    assert_eq!(p.get("/v1/ledger", "carol-key").await.status, 403);
    let r = p
        .post("/catalog/ledger/subscription?for=tenant", "alice-key")
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json()["status"], "approved");
    assert_eq!(
        r.json()["consumer"],
        serde_json::json!({"kind": "tenant", "tenant": "shop"})
    );
    // Open: approved at once, for every identity of the tenant.
    assert_eq!(p.get("/v1/ledger", "alice-key").await.status, 200);
    assert_eq!(p.get("/v1/ledger", "carol-key").await.status, 200);
    assert_eq!(p.get("/v1/ledger", "bob-key").await.status, 403);
    // Bob's team cannot see the ledger, so it cannot ask for it either.
    let r = p
        .post("/catalog/ledger/subscription?for=tenant", "bob-key")
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_catalog_shows_what_the_caller_may_see() {
    let p = platform().await;
    let names = |r: &Reply| -> Vec<String> {
        r.json()["apis"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect()
    };

    let r = p.get("/catalog", "alice-key").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(names(&r), ["ledger", "orders", "status"]);
    let apis = r.json()["apis"].clone();
    let orders = &apis[1];
    assert_eq!(orders["owner_team"], "team-orders");
    assert_eq!(orders["description"], "Orders of the shop.");
    // The draft v2 is not shown.
    assert_eq!(orders["versions"].as_array().unwrap().len(), 1);
    let v1 = &orders["versions"][0];
    assert_eq!(v1["version"], "v1");
    assert_eq!(v1["state"], "published");
    assert_eq!(v1["path"], "/v1/orders");
    assert_eq!(v1["auth"], "api_key");
    assert_eq!(v1["limits"], "100 requests per minute");
    assert_eq!(v1["openapi"], "/catalog/orders/v1/openapi.json");
    assert_eq!(orders["subscription"]["subscribed"], false);
    assert_eq!(apis[2]["subscription"], Value::Null);

    // The ledger is for teams shop and finance (its owner).
    assert_eq!(
        names(&p.get("/catalog", "bob-key").await),
        ["orders", "status"]
    );
    assert_eq!(
        names(&p.get("/catalog", "fin-key").await),
        ["ledger", "orders", "status"]
    );
    assert_eq!(p.get("/catalog/ledger", "bob-key").await.status, 404);
    assert_eq!(
        p.get("/catalog/ledger/v1/openapi.json", "bob-key")
            .await
            .status,
        404
    );
    assert_eq!(p.get("/catalog/nothing", "bob-key").await.status, 404);
    assert_eq!(
        p.get("/catalog/orders/v2/openapi.json", "bob-key")
            .await
            .status,
        404
    );

    // Retired: gone from the catalog.
    p.status.transition(Stage::Deprecated, "ops").unwrap();
    let r = p.get("/catalog/status", "bob-key").await;
    assert_eq!(r.json()["versions"][0]["state"], "deprecated");
    assert!(r.json()["versions"][0]["deprecated_at"].is_u64());
    p.status.transition(Stage::Retired, "ops").unwrap();
    assert_eq!(names(&p.get("/catalog", "bob-key").await), ["orders"]);

    // For consumers only.
    let r = get_as(&p.client, p.addr, "/catalog", &[]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = p.post("/catalog", "bob-key").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    // Every document served is OpenAPI 3.1, as a validator of 3.1 reads it.
    for path in [
        "/catalog/orders/v1/openapi.json",
        "/catalog/ledger/v1/openapi.json",
    ] {
        let r = p.get(path, "alice-key").await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let doc = r.json();
        crate::support::openapi::assert_valid_31(&doc);
        assert_eq!(doc["info"]["version"], "v1");
    }
    let doc = p
        .get("/catalog/orders/v1/openapi.json", "alice-key")
        .await
        .json();
    assert_eq!(doc["info"]["title"], "orders");
    assert_eq!(doc["info"]["x-owner-team"], "team-orders");
    assert_eq!(
        doc["components"]["securitySchemes"]["apiKey"]["in"],
        "header"
    );
    assert!(doc["paths"]["/v1/orders"]["get"]["responses"]["403"].is_object());
    let doc = p
        .get("/catalog/ledger/v1/openapi.json", "alice-key")
        .await
        .json();
    assert!(doc["paths"]["/v1/ledger"]["post"].is_object());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}
