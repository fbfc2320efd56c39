#![cfg(all(feature = "config", feature = "jwt"))]
//! `[jwt]` through a gateway, over real loopback HTTP: static keys from
//! files, and a `jwks_uri` served by a local JWKS server that rotates its
//! keys, fails, and serves garbage — the gateway follows the rotation and
//! keeps the last good set through the failures. And the settings,
//! refused with located problems.
//!
//! Real time, kept short (200 ms refresh); timeouts only guard against
//! hangs, no assertion is about speed.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use http::StatusCode;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use switchyard::gateway::{Gateway, GatewayConfig};

use crate::support::net::{HttpClient, get, serve};
use crate::support::temp::TempDir;

const HANG_GUARD: Duration = Duration::from_secs(10);

const EC1: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg07PwmRK2wLUU4M0f
Y8e3J03uWeDsxZODVRqkwNmZI9ihRANCAATMrVmVcRIbV3WKSZ77iYstYtWIUIvM
V0fIQxAYLR9T99hiY0BwippnFuzzuij1tT26A9qWqnmqBfh+W9T//2Dp
-----END PRIVATE KEY-----
";
const EC1_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEzK1ZlXESG1d1ikme+4mLLWLViFCL
zFdHyEMQGC0fU/fYYmNAcIqaZxbs87oo9bU9ugPalqp5qgX4flvU//9g6Q==
-----END PUBLIC KEY-----
";
const EC2: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgx78euIWE8eoqoj2X
buJdOBXEhI3W3eyfV1BV+9WzGNOhRANCAASM+peO7NpPbkPajJ/01GB+bojGiRwH
wBT+Dm79ygcDfBuwLBpC02JoN0AX+B4sbsuHkz0Bs2NJYS4tEb1RjJZM
-----END PRIVATE KEY-----
";
const SECRET: &str = "an HS256 test secret of more than 32 bytes";

fn token(pem: &str, kid: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    let claims = json!({ "sub": "alice", "aud": "orders", "exp": exp });
    encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn hs_token() -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("ci".to_owned());
    let claims = json!({ "sub": "ci", "aud": "orders", "exp": exp });
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn jwk(pem: &str, kid: &str) -> Value {
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(&jwk).unwrap()
}

/// A JWKS server: serves `document` (a 500 while `failing`), counting
/// fetches.
#[derive(Clone, Default)]
struct Jwks {
    document: Arc<Mutex<String>>,
    failing: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
}

impl Jwks {
    async fn serve(&self) -> SocketAddr {
        let me = self.clone();
        serve(Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let me = me.clone();
                async move {
                    me.fetches.fetch_add(1, SeqCst);
                    if me.failing.load(SeqCst) {
                        return (StatusCode::INTERNAL_SERVER_ERROR, String::new());
                    }
                    (StatusCode::OK, me.document.lock().unwrap().clone())
                }
            }),
        ))
        .await
    }

    fn set(&self, keys: &[Value]) {
        *self.document.lock().unwrap() = json!({ "keys": keys }).to_string();
    }

    /// Waits for `n` more fetches.
    async fn fetched(&self, n: usize) {
        let until = self.fetches.load(SeqCst) + n;
        tokio::time::timeout(HANG_GUARD, async {
            while self.fetches.load(SeqCst) < until {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the JWKS was not fetched again");
    }
}

fn config(up: SocketAddr, jwt: &str) -> String {
    format!(
        r#"
[upstreams.app]
url = "http://{up}"

{jwt}

[[routes]]
name = "api"
auth = {{ jwt = true }}
split.targets = [{{ name = "app", upstream = "app", weight = 100 }}]
"#
    )
}

async fn status(client: &HttpClient, gw: SocketAddr, token: &str) -> StatusCode {
    let bearer = format!("Bearer {token}");
    get(client, gw, "/", &[("authorization", &bearer)])
        .await
        .status()
}

/// Waits until `token` gets `want`.
async fn until(client: &HttpClient, gw: SocketAddr, token: &str, want: StatusCode) {
    tokio::time::timeout(HANG_GUARD, async {
        while status(client, gw, token).await != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never {want}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_uri_is_followed_through_rotation_and_failures() {
    let up = serve(Router::new().fallback(|| async { "ok" })).await;
    let jwks = Jwks::default();
    jwks.set(&[jwk(EC1, "k1")]);
    let at = jwks.serve().await;
    let text = config(
        up,
        &format!(
            r#"[jwt]
audiences = ["orders"]
jwks_uri = "http://{at}/.well-known/jwks.json"
jwks_refresh_ms = 200
"#
        ),
    );
    let gateway = Gateway::from_config(GatewayConfig::from_toml(&text).unwrap()).unwrap();
    let gw = serve(Router::new().fallback_service(gateway.clone())).await;
    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let (t1, t2) = (token(EC1, "k1"), token(EC2, "k2"));

    // Fetched at start: k1 verifies, k2 is unknown, no token is a 401.
    until(&client, gw, &t1, StatusCode::OK).await;
    assert_eq!(status(&client, gw, &t2).await, StatusCode::UNAUTHORIZED);
    let res = get(&client, gw, "/", &[]).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res.headers().contains_key("www-authenticate"));

    // Rotation: both for a while, then k2 alone.
    jwks.set(&[jwk(EC1, "k1"), jwk(EC2, "k2")]);
    until(&client, gw, &t2, StatusCode::OK).await;
    assert_eq!(status(&client, gw, &t1).await, StatusCode::OK);
    jwks.set(&[jwk(EC2, "k2")]);
    until(&client, gw, &t1, StatusCode::UNAUTHORIZED).await;

    // The server fails, then serves garbage, then a set with no usable
    // key: the last good set stays.
    jwks.failing.store(true, SeqCst);
    jwks.fetched(2).await;
    assert_eq!(status(&client, gw, &t2).await, StatusCode::OK);
    jwks.failing.store(false, SeqCst);
    *jwks.document.lock().unwrap() = "{\"keys\": [".to_owned();
    jwks.fetched(2).await;
    assert_eq!(status(&client, gw, &t2).await, StatusCode::OK);
    jwks.set(&[]);
    jwks.fetched(2).await;
    assert_eq!(status(&client, gw, &t2).await, StatusCode::OK);
    assert_eq!(status(&client, gw, &t1).await, StatusCode::UNAUTHORIZED);

    // A reload with another audience builds a new layer: it starts with
    // the set fetched from the same URI, not empty.
    jwks.failing.store(true, SeqCst);
    let other = text.replace(
        "audiences = [\"orders\"]",
        "audiences = [\"orders\", \"billing\"]",
    );
    gateway
        .reload(GatewayConfig::from_toml(&other).unwrap())
        .unwrap();
    assert_eq!(status(&client, gw, &t2).await, StatusCode::OK);
    // And recovers when the server does.
    jwks.failing.store(false, SeqCst);
    jwks.set(&[jwk(EC1, "k1")]);
    until(&client, gw, &t1, StatusCode::OK).await;
    assert_eq!(status(&client, gw, &t2).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn static_keys_from_files() {
    let up = serve(Router::new().fallback(|| async { "ok" })).await;
    let dir = TempDir::new("gw-jwt-static");
    std::fs::write(dir.join("secret"), format!("{SECRET}\n")).unwrap();
    std::fs::write(dir.join("ec1.pem"), EC1_PUBLIC).unwrap();
    let text = config(
        up,
        &format!(
            r#"[jwt]
audiences = ["orders"]
keys = [
    {{ kid = "ci", hs256_secret = {{ file = "{secret}" }} }},
    {{ kid = "k1", es256_pem_file = "{pem}" }},
]
"#,
            secret = dir.join("secret").display(),
            pem = dir.join("ec1.pem").display(),
        ),
    );
    let gateway = Gateway::from_config(GatewayConfig::from_toml(&text).unwrap()).unwrap();
    let gw = serve(Router::new().fallback_service(gateway)).await;
    let client: HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    assert_eq!(status(&client, gw, &hs_token()).await, StatusCode::OK);
    assert_eq!(status(&client, gw, &token(EC1, "k1")).await, StatusCode::OK);
    assert_eq!(
        status(&client, gw, &token(EC2, "k1")).await,
        StatusCode::UNAUTHORIZED
    );
}

#[test]
fn jwt_settings_are_read_and_checked() {
    let up: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let problems = |jwt: &str| -> Vec<(String, String)> {
        Gateway::from_config(GatewayConfig::from_toml(&config(up, jwt)).unwrap())
            .unwrap_err()
            .problems
            .into_iter()
            .map(|p| (p.at, p.message))
            .collect()
    };
    let ok = GatewayConfig::from_toml(&config(
        up,
        "[jwt]\nissuers = [\"https://login.example/\"]\njwks_uri = \"http://127.0.0.1:1/jwks\"\nleeway_ms = 5000",
    ))
    .unwrap();
    let jwt = ok.jwt.as_ref().unwrap();
    assert_eq!(jwt.leeway_ms, Some(5000));
    assert!(ok.routes[0].auth.as_ref().unwrap().jwt);
    // Built outside a runtime: nothing fetched yet, nothing refused.
    Gateway::from_config(ok).unwrap();

    let p = problems("");
    assert_eq!(p[0].0, "routes[0].auth.jwt", "{p:?}");
    let p = problems("[jwt]");
    assert_eq!(p[0].0, "jwt", "{p:?}");
    let p = problems("[jwt]\nkeys = [{ kid = \"a\" }]");
    assert_eq!(p[0].0, "jwt.keys[0]", "{p:?}");
    let p = problems(
        "[jwt]\nkeys = [{ hs256_secret = { env = \"SWITCHYARD_TEST_NO_SUCH_VARIABLE\" } }]",
    );
    assert_eq!(p[0].0, "jwt.keys[0]", "{p:?}");
    assert!(p[0].1.contains("SWITCHYARD_TEST_NO_SUCH_VARIABLE"), "{p:?}");
    let p = problems("[jwt]\nkeys = [{ es256_pem_file = \"/no/such/file.pem\" }]");
    assert_eq!(p[0].0, "jwt.keys[0]", "{p:?}");
    let p = problems("[jwt]\njwks_uri = \"ftp://example.com/jwks\"");
    assert_eq!(p[0].0, "jwt.jwks_uri", "{p:?}");
    let p = problems("[jwt]\njwks_uri = \"http://127.0.0.1:1/jwks\"\njwks_refresh_ms = 0");
    assert_eq!(p[0].0, "jwt.jwks_refresh_ms", "{p:?}");
    let p = problems("[jwt]\njwks_file = \"/no/such/jwks.json\"");
    assert_eq!(p[0].0, "jwt.jwks_file", "{p:?}");
    let err = GatewayConfig::from_toml(&config(up, "[jwt]\njwks_url = \"x\"")).unwrap_err();
    assert!(err.to_string().contains("jwks_url"), "{err}");
}
