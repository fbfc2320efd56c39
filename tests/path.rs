//! Path normalization: `switchyard::path::normalize` (properties), the
//! `NormalizePathLayer` in front of an axum app, and the gateway routing on
//! normal paths over real loopback HTTP, so `..`, `//` and `%61` cannot
//! walk past a route's authentication.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proptest::prelude::*;
use switchyard::auth::{ApiKey, ApiKeyLayer, Identity};
use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::path::{
    NormalizePathLayer, PathError, normalize, normalize_with_params, without_params,
};
use tower::{Layer, ServiceExt};

use crate::support::net;
use net::serve;

const HANG_GUARD: Duration = Duration::from_secs(10);

proptest! {
    /// Any string: no panic; an absolute path comes out absolute, without
    /// `.`/`..`/empty segments, unchanged by a second pass, and still a
    /// valid URI path when it was one.
    #[test]
    fn normal_form_properties(path in "/[a-zA-Z0-9./%~_-]{0,40}") {
        let Ok(out) = normalize(&path) else { return Ok(()); };
        prop_assert!(out.starts_with('/'));
        // Every segment is a name; only the last may be empty (a trailing
        // slash).
        let segments: Vec<&str> = out[1..].split('/').collect();
        let (last, inner) = segments.split_last().unwrap();
        for segment in inner {
            prop_assert!(!segment.is_empty() && *segment != "." && *segment != "..", "{out}");
        }
        prop_assert!(*last != "." && *last != "..", "{out}");
        prop_assert_eq!(normalize(&out).unwrap(), out.clone());
        if path.parse::<Uri>().is_ok() {
            prop_assert!(out.parse::<Uri>().is_ok(), "{out}");
        }
    }

    /// Paths built from separators, dots, `;`, `\\` and their escapes:
    /// a strict normal form has neither `;` nor `\\`; one with parameters
    /// has no `\\`, and no segment whose name (before `;`) is empty, `.`
    /// or `..`, so that a server dropping parameters reads the same
    /// path; both are unchanged by a second pass.
    #[test]
    fn separators_dots_and_parameters(
        tokens in proptest::collection::vec(
            proptest::sample::select(vec![
                "/", "/", "a", "b", ".", "..", ";", ";x=1", "\\", "%5C", "%5c", "%3B",
                "%3b", "%2e", "%2E", "%2F", "%", "~", "_", "-",
            ]),
            0..16,
        )
    ) {
        let path = format!("/{}", tokens.concat());
        match normalize(&path) {
            Ok(out) => {
                prop_assert!(!out.contains(';') && !out.contains('\\'), "{path} -> {out}");
                prop_assert!(!path.contains(';') && !path.contains('\\'), "{path}");
                prop_assert_eq!(normalize(&out).unwrap(), out.clone());
            }
            Err(PathError::PathParameter) => prop_assert!(path.contains(';')),
            Err(PathError::Backslash) => prop_assert!(path.contains('\\')),
            Err(_) => {}
        }
        if let Ok(out) = normalize_with_params(&path) {
            prop_assert!(!out.contains('\\'), "{path} -> {out}");
            prop_assert_eq!(normalize_with_params(&out).unwrap(), out.clone());
            let routed = without_params(&out);
            let segments: Vec<&str> = routed[1..].split('/').collect();
            let (last, inner) = segments.split_last().unwrap();
            for segment in inner {
                prop_assert!(!segment.is_empty() && *segment != "." && *segment != "..", "{path} -> {out}");
            }
            prop_assert!(*last != "." && *last != "..", "{path} -> {out}");
            if !path.contains(';') {
                prop_assert_eq!(normalize(&path).unwrap(), out.clone());
            }
        }
    }

    /// Whatever is put around it, a path never climbs above the root, and
    /// escaped separators are always refused.
    #[test]
    fn never_above_root_and_no_escaped_slash(ups in 1usize..6, tail in "[a-z]{1,8}") {
        let path = format!("{}{tail}", "/..".repeat(ups) + "/");
        prop_assert_eq!(normalize(&path).unwrap(), format!("/{tail}"));
        let escaped = format!("/a%2f{tail}");
        prop_assert_eq!(normalize(&escaped), Err(PathError::EncodedSeparator));
    }
}

fn keys() -> ApiKeyLayer {
    ApiKeyLayer::builder()
        .key(ApiKey::new("sk-ops", Identity::new("ops")))
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_layer_lets_axum_route_on_the_normal_path() {
    let admin = Router::new()
        .route("/admin/keys", get(|| async { "keys" }))
        .route_layer(keys());
    let app = Router::new()
        .merge(admin)
        .fallback(|uri: Uri| async move { format!("public {uri}") });
    let app = NormalizePathLayer::new().layer(app);

    for path in [
        "/admin/keys",
        "/public/../admin/keys",
        "//admin//keys",
        "/%61dmin/%6beys",
        "/admin/./keys",
    ] {
        let req = Request::get(path).body(Full::<Bytes>::default()).unwrap();
        let res = app.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let req = Request::get("/public/./a/../b?x=..")
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "public /public/b?x=..");

    let req = Request::get("/admin%2Fkeys")
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.headers()[CONTENT_TYPE], "application/problem+json");
}

/// A gateway with an authenticated `/admin` route and an open `/` route,
/// over one upstream that echoes the path it was asked for.
async fn gateway(raw_paths: bool) -> std::net::SocketAddr {
    let echo = Router::new().fallback(|uri: Uri| async move { format!("upstream saw {uri}") });
    let upstream_addr = serve(echo).await;

    let config = format!(
        r#"
raw_paths = {raw_paths}

[upstreams.app]
url = "http://{upstream_addr}"

[[api_keys]]
key = "sk-ops"
id = "ops"

[[routes]]
name = "admin"
path_prefix = "/admin"
auth = {{}}
split.targets = [{{ name = "app", upstream = "app", weight = 1 }}]

[[routes]]
name = "public"
split.targets = [{{ name = "app", upstream = "app", weight = 1 }}]
"#
    );
    let config = GatewayConfig::from_toml(&config).unwrap();
    let gateway = Gateway::from_config(config).unwrap();
    serve(Router::new().fallback_service(gateway)).await
}

async fn get_path(addr: std::net::SocketAddr, path: &str) -> (StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::default())
        .unwrap();
    let res = tokio::time::timeout(HANG_GUARD, client.request(req))
        .await
        .unwrap()
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_gateway_routes_and_forwards_the_normal_path() {
    let addr = gateway(false).await;
    for path in [
        "/public/../admin/secret",
        "//admin/secret",
        "/%61dmin/secret",
        "/./admin/secret",
        "/x/%2e%2e/admin/secret",
    ] {
        let (status, body) = get_path(addr, path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
    let (status, body) = get_path(addr, "/a/./b//c/../d?q=%2e").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "upstream saw /a/b/d?q=%2e");
    let (status, body) = get_path(addr, "/admin%2fsecret").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("escaped"), "{body}");
}

#[tokio::test]
async fn raw_paths_route_on_the_path_as_it_came() {
    // What normalization prevents: the open route takes the request, and
    // the upstream is asked for a path that walks into `/admin`.
    let addr = gateway(true).await;
    let (status, body) = get_path(addr, "/public/../admin/secret").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "upstream saw /public/../admin/secret");
    let (status, _) = get_path(addr, "/admin/secret").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
