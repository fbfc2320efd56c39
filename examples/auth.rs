//! Authentication and authorization with axum: API keys loaded from a table
//! of digests, a JWT-protected copy of the same routes, scopes per route,
//! and revoking a caller's keys while the server runs.
//!
//! ```text
//! cargo run --example auth              # listens on 127.0.0.1:8080
//! cargo run --example auth -- --port 0  # any free port
//! ```
//!
//! | route | credential | needs scope |
//! | --- | --- | --- |
//! | `GET /whoami` | API key | — |
//! | `GET /reports` | API key | `reports:read` |
//! | `POST /admin/revoke/{id}` | API key | `admin` or `keys:revoke` |
//! | `GET /jwt/whoami` | HS256 JWT | — |
//! | `GET /jwt/reports` | HS256 JWT | `reports:read` |
//!
//! Copy this file to start your own: load the digest table from your
//! configuration or secret store, replace the demo JWT secret (or use
//! `JwtBuilder::rs256_pem` / `jwk` with your identity provider's public
//! key) and put your own handlers behind the layers.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use switchyard::auth::{ApiKey, ApiKeyHandle, ApiKeyLayer, Identity, JwtLayer, RequireScopes};
use switchyard::server::Server;

/// The demo's API keys in plain text. They exist only so that the help text
/// can print working `curl` commands: a real service never sees them, it
/// loads [`key_table`]'s digests from its configuration.
const DEMO_KEYS: [(&str, &str); 3] = [
    ("alice", "demo-alice-key"),
    ("bob", "demo-bob-key"),
    ("ops", "demo-admin-key"),
];

/// The HS256 secret shared with the (here: pretend) token issuer. At least
/// 32 random bytes in real life, read from a secret store.
const JWT_SECRET: &[u8] = b"demo secret: at least 32 bytes for HS256, never this one";
const JWT_ISSUER: &str = "https://issuer.example";
const JWT_AUDIENCE: &str = "switchyard-demo";

/// One row of the key table: what a configuration file holds. The digest
/// is `sha256:<hex>` of the key, so the file can be read by anyone who
/// runs the service without leaking a single credential.
struct KeyEntry {
    digest: String,
    identity: Identity,
}

/// The key table, as it would be loaded from a config file. For the demo
/// the digests are computed from [`DEMO_KEYS`] at startup; in your service
/// they come from the file, made once with `switchyard::auth::digest(key)`
/// (or `printf %s KEY | sha256sum`) when the key is issued.
fn key_table() -> Vec<KeyEntry> {
    DEMO_KEYS
        .iter()
        .map(|&(id, key)| {
            // Scopes belong to the identity, not to the route: a route says
            // what it needs (`RequireScopes`), a key says what it may do.
            let identity = match id {
                "alice" => Identity::new(id)
                    .with_tenant("acme")
                    .with_scopes(["reports:read"]),
                "ops" => Identity::new(id).with_scopes(["admin"]),
                _ => Identity::new(id).with_tenant("acme"),
            };
            KeyEntry {
                digest: switchyard::auth::digest(key),
                identity,
            }
        })
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = port_from_args()?;

    // --- API keys, built from digests only ---
    let table = key_table();
    let mut keys = ApiKeyLayer::builder();
    for entry in &table {
        // `from_digest` checks the format (`sha256:` + 64 hex digits), so a
        // typo in the config fails here, at startup, not at the first call.
        keys = keys.key(ApiKey::from_digest(&entry.digest, entry.identity.clone())?);
    }
    // Keys are read from `Authorization: Bearer <key>` or `x-api-key`, and
    // removed from the request before it reaches a handler.
    let keys = keys.build()?;
    // The handle changes the live key table: one atomic swap, seen by the
    // very next request. `insert(ApiKey::from_digest(..)?)` adds a key the
    // same way `revoke_identity` below removes them.
    let handle = keys.handle();

    // --- JWTs: HS256 with a shared secret, `iss` and `aud` checked ---
    // `exp` is always required. Claims become the `Identity`: `sub` the id,
    // `tenant` the tenant, `scope` (space-separated) the scopes.
    let jwt = JwtLayer::builder()
        .hs256(JWT_SECRET)
        .issuer(JWT_ISSUER)
        .audience(JWT_AUDIENCE)
        .build()?;

    // Routes authenticated by API key, plus the admin route that needs the
    // key table's handle. `.layer(keys)` comes last so it runs first: by the
    // time a scope check or handler runs, the `Identity` is there.
    let with_keys = Router::new()
        .merge(caller_routes())
        .merge(admin_routes(handle))
        .layer(keys);
    // The same caller routes again, authenticated by JWT instead. Each
    // credential type gets its own prefix: an API-key layer in front of a
    // JWT layer would refuse every JWT as an unknown key.
    let with_jwt = caller_routes().layer(jwt);
    // Paths no route matches (`/jwt/...` included) reach `with_keys`'s
    // fallback, which the key layer wraps too: without a valid API key they
    // get 401 rather than 404, so routes cannot be mapped anonymously.
    let app = Router::new().merge(with_keys).nest("/jwt", with_jwt);

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let server = Server::bind(addr).await?;
    print_help(server.local_addr(), &table, &demo_token()?);
    server.serve(app).await?;
    Ok(())
}

/// The routes any caller reaches, whichever layer authenticated them.
fn caller_routes() -> Router {
    Router::new()
        .route("/reports", get(reports))
        // `route_layer` wraps the routes added above it (`/reports`, not
        // `/whoami`) and never the fallback, so it runs only once a route
        // matched. Without the scope, `/reports` answers 403 naming it.
        .route_layer(RequireScopes::all(["reports:read"]))
        .route("/whoami", get(whoami))
}

/// `POST /admin/revoke/{id}`, for identities holding `admin` or the
/// narrower `keys:revoke`.
fn admin_routes(handle: ApiKeyHandle) -> Router {
    Router::new()
        .route("/admin/revoke/{id}", post(revoke))
        // `any`: one of the scopes is enough (`all` needs every one).
        .route_layer(RequireScopes::any(["admin", "keys:revoke"]))
        .with_state(handle)
}

// === handlers: they never see a credential, only the `Identity` ===

/// Who the caller is, as the authentication layer recorded it.
async fn whoami(Extension(who): Extension<Identity>) -> Json<Value> {
    Json(describe(&who))
}

async fn reports(Extension(who): Extension<Identity>) -> Json<Value> {
    // A handler can still refine per caller: here, reports of the caller's
    // own tenant.
    let tenant = who.tenant().unwrap_or("none");
    Json(json!({
        "caller": describe(&who),
        "reports": [format!("{tenant}: 2 releases promoted, 0 rolled back")],
    }))
}

/// Revokes every key of one identity. The caller's next request with any
/// of those keys gets 401, without a restart or a reload.
async fn revoke(
    State(handle): State<ApiKeyHandle>,
    Extension(admin): Extension<Identity>,
    Path(id): Path<String>,
) -> (StatusCode, Json<Value>) {
    let revoked = handle.revoke_identity(&id);
    println!("[auth] {} revoked {revoked} key(s) of `{id}`", admin.id());
    let status = if revoked == 0 {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    (status, Json(json!({ "id": id, "revoked": revoked })))
}

fn describe(who: &Identity) -> Value {
    json!({
        "id": who.id(),
        "tenant": who.tenant(),
        "scopes": who.scopes(),
    })
}

// === the demo token ===

/// Signs a token the way an identity provider would. Only for the demo:
/// your service verifies tokens, it does not issue them. (`jsonwebtoken`
/// is the crate switchyard's `jwt` feature verifies with.)
fn demo_token() -> Result<String, Box<dyn std::error::Error>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let claims = json!({
        "sub": "carol",
        "tenant": "globex",
        "scope": "reports:read",
        "iss": JWT_ISSUER,
        "aud": JWT_AUDIENCE,
        "iat": now.as_secs(),
        // Valid for an hour; restart the example for a fresh one.
        "exp": (now + Duration::from_secs(3600)).as_secs(),
    });
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET),
    )?;
    Ok(token)
}

// === command line ===

fn port_from_args() -> Result<u16, String> {
    let mut args = std::env::args().skip(1);
    let mut port = 8080;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                let value = args.next().ok_or("--port needs a value")?;
                port = value
                    .parse()
                    .map_err(|_| format!("--port: `{value}` is not a port number"))?;
            }
            "-h" | "--help" => {
                println!("usage: auth [--port PORT]   (default 8080; 0 picks a free port)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`; try --help")),
        }
    }
    Ok(port)
}

fn print_help(addr: SocketAddr, table: &[KeyEntry], token: &str) {
    println!("switchyard auth demo listening on http://{addr}\n");
    println!("The key table (a config file holds these digests, never the keys):");
    for entry in table {
        let scopes = entry.identity.scopes().join(" ");
        println!(
            "  {:<6} {}  scopes: [{scopes}]",
            entry.identity.id(),
            entry.digest
        );
    }
    println!(
        r#"
Demo keys: alice `demo-alice-key`, bob `demo-bob-key`, ops `demo-admin-key`.
Demo JWT (HS256; sub carol, tenant globex, scope reports:read; valid 1 h). Set it in your shell:
  TOKEN={token}

Try:
  curl -s http://{addr}/whoami -H 'x-api-key: demo-alice-key'              # alice, tenant acme
  curl -s http://{addr}/whoami -H 'authorization: Bearer demo-bob-key'     # bob (bearer works too)
  curl -si http://{addr}/whoami                                            # 401 problem+json
  curl -s http://{addr}/reports -H 'x-api-key: demo-alice-key'             # 200: alice has reports:read
  curl -si http://{addr}/reports -H 'x-api-key: demo-bob-key'              # 403: bob lacks it
  curl -s http://{addr}/jwt/whoami -H "authorization: Bearer $TOKEN"     # carol, from the claims
  curl -s http://{addr}/jwt/reports -H "authorization: Bearer $TOKEN"    # 200: scope claim
  curl -si http://{addr}/jwt/whoami -H 'authorization: Bearer demo-alice-key'   # 401: not a JWT
  curl -si -X POST http://{addr}/admin/revoke/alice -H 'x-api-key: demo-bob-key'    # 403: not admin
  curl -s -X POST http://{addr}/admin/revoke/alice -H 'x-api-key: demo-admin-key'   # revokes alice's keys
  curl -si http://{addr}/whoami -H 'x-api-key: demo-alice-key'             # now 401
"#
    );
}
