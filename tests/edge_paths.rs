//! Attacks at the edge, over real loopback sockets against a whole
//! gateway: `\` and `;` in paths, duplicate JSON keys, bodies that are not
//! JSON, huge rate-limit keys, the split's override header without its
//! scope, an identity header pre-seeded by the client, and a short JWT
//! secret.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use http::{HeaderMap, Uri};
use switchyard::gateway::{Gateway, GatewayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::net;
use net::serve;

const HANG_GUARD: Duration = Duration::from_secs(10);

/// The path a Tomcat-style server acts on: `;` parameters dropped from
/// every segment, `\` read as `/`, then `.` and `..` resolved.
fn tomcat_path(path: &str) -> String {
    let path = path.replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        let name = segment.split(';').next().unwrap_or("");
        match name {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// An upstream that routes as Tomcat does and tells what it served, the
/// `x-caller` values it got, and the body it got.
async fn tomcat_upstream() -> SocketAddr {
    let app = Router::new().fallback(|uri: Uri, headers: HeaderMap, body: Bytes| async move {
        let served = tomcat_path(uri.path());
        let area = if served.starts_with("/admin") {
            "ADMIN AREA"
        } else {
            "public area"
        };
        let callers: Vec<&str> = headers
            .get_all("x-caller")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        format!(
            "{area}; raw {uri}; served {served}; x-caller {callers:?}; body {}",
            String::from_utf8_lossy(&body)
        )
    });
    serve(app).await
}

async fn gateway(toml: &str) -> SocketAddr {
    let config = GatewayConfig::from_toml(toml).unwrap();
    let gateway = Gateway::from_config(config).unwrap();
    serve(Router::new().fallback_service(gateway)).await
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body` as written, and returns the status code and the response body.
async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req = format!(
            "{head}\r\nhost: gw\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        stream.write_all(&req).await.unwrap();
        let mut res = Vec::new();
        stream.read_to_end(&mut res).await.unwrap();
        res
    };
    let res = tokio::time::timeout(HANG_GUARD, exchange).await.unwrap();
    let text = String::from_utf8_lossy(&res).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn get(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let head = if headers.is_empty() {
        format!("GET {path} HTTP/1.1")
    } else {
        format!("GET {path} HTTP/1.1\r\n{headers}")
    };
    raw(addr, &head, b"").await
}

fn routes(upstream: SocketAddr, public_params: bool) -> String {
    format!(
        r#"
[upstreams.app]
url = "http://{upstream}"

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
allow_path_params = {public_params}
split.targets = [{{ name = "app", upstream = "app", weight = 1 }}]
"#
    )
}

fn routes_without_params(upstream: SocketAddr) -> String {
    routes(upstream, false).replace("allow_path_params = false\n", "")
}

#[tokio::test]
async fn backslash_and_semicolon_paths_do_not_reach_admin() {
    let upstream = tomcat_upstream().await;
    let addr = gateway(&routes_without_params(upstream)).await;

    // The route works, and admin needs a key.
    let (status, body) = get(addr, "/public/page", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("public area"), "{body}");
    let (status, body) = get(addr, "/admin/users", "").await;
    assert_eq!(status, 401, "{body}");

    for path in [
        "/public/..;/admin/users",
        "/admin;x/users",
        "/public/..;x=1/admin",
        "/public/a;/../../admin",
        "/public\\..\\admin",
        "/public/%2e%2e;/admin",
    ] {
        let (status, body) = get(addr, path, "").await;
        assert!(!body.contains("ADMIN AREA"), "{path} reached admin: {body}");
        assert_eq!(status, 400, "{path}: {body}");
    }
    // Escaped, `;` and `\` are data, not syntax: `%3B` passes, `%5C` is
    // refused as an escaped separator.
    let (status, body) = get(addr, "/public/a%3Bb", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("raw /public/a%3Bb"), "{body}");
    let (status, _) = get(addr, "/public/..%5C..%5Cadmin", "").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_route_that_allows_path_params_still_cannot_be_escaped() {
    let upstream = tomcat_upstream().await;
    let addr = gateway(&routes(upstream, true)).await;

    // The opted-in route takes parameters.
    let (status, body) = get(addr, "/public;jsessionid=1/page", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("raw /public;jsessionid=1/page"), "{body}");

    // `..;` is a `..` as Tomcat reads it: resolved before routing, so the
    // request is admin's, which takes no parameters.
    let (status, body) = get(addr, "/public/..;/admin/users", "").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(addr, "/public/a;x/..;y/page", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("raw /public/page"), "{body}");
    // A parameter does not hide the admin prefix: the request is admin's,
    // which does not allow parameters.
    let (status, body) = get(addr, "/admin;x/users", "").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(addr, "/admin;x/users", "x-api-key: sk-ops").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = get(addr, "/admin/users", "x-api-key: sk-ops").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ADMIN AREA"), "{body}");
}

fn body_rule_gateway(upstream: SocketAddr, non_json: &str) -> String {
    format!(
        r#"
[upstreams.app]
url = "http://{upstream}"

[[api_keys]]
key = "sk-mallory"
id = "mallory"

[[routes]]
name = "api"
auth = {{}}
split.targets = [{{ name = "app", upstream = "app", weight = 1 }}]
{non_json}

[[routes.transform.sets]]
name = "caller"
request.body.set = [{{ pointer = "/user_id", value = "{{identity.id}}" }}]
"#
    )
}

async fn post(addr: SocketAddr, content_type: &str, body: &str) -> (u16, String) {
    let head =
        format!("POST /orders HTTP/1.1\r\nx-api-key: sk-mallory\r\ncontent-type: {content_type}");
    raw(addr, &head, body.as_bytes()).await
}

#[tokio::test]
async fn duplicate_json_keys_cannot_smuggle_a_field_past_a_body_rule() {
    let upstream = tomcat_upstream().await;
    let addr = gateway(&body_rule_gateway(upstream, "")).await;

    let (status, body) = post(addr, "application/json", r#"{"user_id":"x"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with(r#"body {"user_id":"mallory"}"#), "{body}");

    for smuggled in [
        r#"{"user_id":"x","user_id":"alice"}"#,
        r#"{"user_id":"alice","user_id":"x"}"#,
        r#"{"user_id":"x","user\u005fid":"alice"}"#,
    ] {
        let (status, body) = post(addr, "application/json", smuggled).await;
        assert!(!body.contains("alice"), "{smuggled}: {body}");
        assert_eq!(status, 400, "{smuggled}: {body}");
    }
}

#[tokio::test]
async fn a_body_rule_refuses_a_body_that_is_not_declared_json() {
    let upstream = tomcat_upstream().await;
    let addr = gateway(&body_rule_gateway(upstream, "")).await;
    let smuggled = r#"{"user_id":"alice"}"#;
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "text/json",
    ] {
        let (status, body) = post(addr, content_type, smuggled).await;
        assert!(!body.contains("alice"), "{content_type}: {body}");
        assert_eq!(status, 415, "{content_type}: {body}");
    }
    // An encoded body is not JSON text either, whatever the list says.
    for encoding in ["gzip", "identity, gzip", "gzip, identity"] {
        let head = format!(
            "POST /orders HTTP/1.1\r\nx-api-key: sk-mallory\r\ncontent-type: application/json\r\ncontent-encoding: {encoding}"
        );
        let (status, body) = raw(addr, &head, smuggled.as_bytes()).await;
        assert_eq!(status, 415, "{encoding}: {body}");
    }
    // `identity` (in a list, too) is no encoding.
    let head = "POST /orders HTTP/1.1\r\nx-api-key: sk-mallory\r\ncontent-type: application/json\r\ncontent-encoding: identity, identity";
    let (status, body) = raw(addr, head, smuggled.as_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with(r#"body {"user_id":"mallory"}"#), "{body}");

    // The opt-out streams such bodies through untouched.
    let addr = gateway(&body_rule_gateway(
        upstream,
        "transform.non_json = \"skip\"",
    ))
    .await;
    let (status, body) = post(addr, "text/plain", smuggled).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with(smuggled), "{body}");
}

#[tokio::test]
async fn huge_header_keys_are_limited_as_themselves() {
    let upstream = tomcat_upstream().await;
    let addr = gateway(&format!(
        r#"
[upstreams.app]
url = "http://{upstream}"

[[routes]]
name = "api"
rate_limit = {{ key = {{ header = "x-user" }}, quotas = [{{ limit = 1, period = "1h" }}] }}
split.targets = [{{ name = "app", upstream = "app", weight = 1 }}]
"#
    ))
    .await;
    // 64 KiB keys that differ only in their last byte: each keeps its own
    // limit (the stored form tells them apart), and a repeat is limited.
    let long = "k".repeat(64 * 1024);
    for last in ['a', 'b'] {
        let header = format!("x-user: {long}{last}");
        let (status, body) = get(addr, "/", &header).await;
        assert_eq!(status, 200, "{body}");
        let (status, _) = get(addr, "/", &header).await;
        assert_eq!(status, 429);
    }
}

/// The demo configuration, with its upstreams pointed at `upstream`.
fn demo_config(upstream: SocketAddr) -> GatewayConfig {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/gateway.toml"
    ))
    .unwrap();
    let mut config = GatewayConfig::from_toml(&text).unwrap();
    for upstream_config in config.upstreams.values_mut() {
        upstream_config.url = format!("http://{upstream}");
        upstream_config.endpoints.clear();
        upstream_config.health_check = None;
    }
    config
}

#[tokio::test]
async fn the_override_header_needs_its_scope() {
    let blue = tomcat_upstream().await;
    let green = serve(Router::new().fallback(|| async { "green" })).await;
    let mut config = demo_config(blue);
    config.upstreams.get_mut("green").unwrap().url = format!("http://{green}");
    config.api_keys[0].scopes.retain(|s| s != "tester");
    let with_tester = config.api_keys[0].clone();
    let mut tester = with_tester.clone();
    tester.key = Some("sk-tester".to_owned());
    tester.id = "tester".to_owned();
    tester.scopes.push("tester".to_owned());
    config.api_keys.push(tester);
    let gateway = Gateway::from_config(config).unwrap();
    let addr = serve(Router::new().fallback_service(gateway)).await;

    let steer = "x-switchyard-target: green";
    let (status, body) = get(addr, "/", &format!("x-api-key: demo-key\r\n{steer}")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("public area"),
        "steered without the scope: {body}"
    );
    let (status, body) = get(addr, "/", &format!("x-api-key: sk-tester\r\n{steer}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "green");
}

#[tokio::test]
async fn a_pre_seeded_identity_header_does_not_reach_the_upstream() {
    let upstream = tomcat_upstream().await;
    let gateway = Gateway::from_config(demo_config(upstream)).unwrap();
    let addr = serve(Router::new().fallback_service(gateway)).await;
    let (status, body) = get(
        addr,
        "/",
        "x-api-key: demo-key\r\nx-caller: admin\r\nx-request-id: chosen-by-client",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#"x-caller ["demo"]"#), "{body}");
}

#[cfg(feature = "jwt")]
#[test]
fn a_short_hmac_secret_is_refused_at_build() {
    use switchyard::auth::{JwtKeys, JwtLayer};
    assert!(
        JwtLayer::builder()
            .hs256(b"password".to_vec())
            .build()
            .is_err()
    );
    assert!(
        JwtLayer::builder()
            .hs256(b"31 bytes of secret, one too few".to_vec())
            .build()
            .is_err()
    );
    assert!(
        JwtLayer::builder()
            .hs256(b"a secret of 32 bytes, just right".to_vec())
            .build()
            .is_ok()
    );
    // A JWK Set is for public keys: a symmetric (`oct`) key in it is
    // refused unless allowed.
    let jwks = r#"{"keys":[{"kty":"oct","alg":"HS256","kid":"s","k":"YSBzZWNyZXQgb2YgMzIgYnl0ZXMsIGp1c3QgcmlnaHQ"}]}"#;
    let layer = JwtLayer::builder().keys(JwtKeys::new().jwks(jwks)).build();
    assert!(layer.is_err());
    let layer = JwtLayer::builder()
        .allow_oct_in_jwks()
        .keys(JwtKeys::new().jwks(jwks))
        .build();
    assert!(layer.is_ok(), "{layer:?}");
    // Allowed, it is still held to the length of a secret.
    let short = r#"{"keys":[{"kty":"oct","alg":"HS256","k":"c2VjcmV0"}]}"#;
    let layer = JwtLayer::builder()
        .allow_oct_in_jwks()
        .keys(JwtKeys::new().jwks(short))
        .build();
    assert!(layer.is_err());
}
