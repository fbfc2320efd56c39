//! Rate limiting with axum: per client IP behind a trusted proxy, per API
//! key with two quotas at once, and requests that cost more than one unit.
//!
//! ```text
//! cargo run --example rate_limit                 # listens on 127.0.0.1:8080
//! cargo run --example rate_limit -- --port 0     # a free port
//! ```
//!
//! * `GET /public`, limited per client IP (read from `X-Forwarded-For` when
//!   the peer is the trusted proxy 127.0.0.1): `per-ip`, 2/s with bursts of 5;
//! * `GET /api/cheap` (1 unit) and `GET /api/expensive` (5 units), limited
//!   per API key (`x-api-key: alice-key`, `bob-key` or `carol-key`) by two
//!   quotas at once: `per-second`, 5/s with bursts of 10, and `per-minute`,
//!   20/min.
//!
//! A refused request gets `429 Too Many Requests` with an
//! `application/problem+json` body naming the quota, `Retry-After`, and
//! the IETF `RateLimit` / `RateLimit-Policy` headers (which allowed
//! responses carry too). The numbers are small so that curl can reach
//! them; pick yours from real traffic, and try them with `.dry_run(true)`
//! first.
//!
//! Copy this file to start your own: list your proxies' addresses in
//! `TrustedProxies`, load API keys from your configuration (as `sha256:`
//! digests, see `ApiKey::from_digest`), and price your routes in `cost`.

use std::net::{Ipv4Addr, SocketAddr};

use axum::extract::{Request, State};
use axum::routing::get;
use axum::{Extension, Router};
use switchyard::auth::{ApiKey, ApiKeyLayer, Identity};
use switchyard::key::{KeyBy, TrustedProxies};
use switchyard::ratelimit::{Quota, RateLimitHandle, RateLimitLayer};
use switchyard::server::Server;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = port_from_args()?;

    // (a) Per client IP. Behind a reverse proxy every connection comes from
    // the proxy, so the peer address alone would put all clients in one
    // bucket; the proxy says who the client is in `X-Forwarded-For`. That
    // header is believed only when the peer is a proxy we trust, and read
    // from the right, skipping trusted hops: a client cannot choose its own
    // key by sending the header itself. Here the "proxy" is curl on
    // 127.0.0.1; list your load balancers' ranges instead.
    let per_ip = RateLimitLayer::builder()
        .key_by(KeyBy::client_ip(TrustedProxies::new(["127.0.0.1/32"])?))
        .quota(Quota::per_second(2).burst(5).named("per-ip"))
        .build()?;

    // (b) Per API key. Authenticate first and limit by the identity the
    // key stands for (`KeyBy::identity`), rather than by the raw
    // `x-api-key` header: a made-up key then gets a 401, not a fresh quota
    // of its own, and a caller holding two keys still has one allowance.
    let auth = ApiKeyLayer::builder()
        .key(ApiKey::new("alice-key", Identity::new("alice")))
        .key(ApiKey::new("bob-key", Identity::new("bob")))
        .key(ApiKey::new("carol-key", Identity::new("carol")))
        .build()?;
    let per_key = RateLimitLayer::builder()
        .key_by(KeyBy::identity())
        // Two quotas, both must pass (and a refused request uses neither):
        // the first absorbs bursts, the second caps sustained use well
        // below 5/s. Names appear in the headers and the problem document.
        .quota(Quota::per_second(5).burst(10).named("per-second"))
        .quota(Quota::per_minute(20).named("per-minute"))
        // (c) Costs: an expensive call takes 5 units of every quota, so it
        // drains a burst five times faster than a cheap one. The closure
        // sees the request head before the handler runs; a cost above a
        // quota's burst could never pass, and is refused as such.
        .cost(|req| match req.uri.path() {
            "/api/expensive" => 5,
            _ => 1,
        })
        .build()?;

    // Each limiter covers its own routes here, to show them apart. In a
    // gateway the per-IP limit usually goes in front of everything, auth
    // included, so that a flood of bad keys is cut off early too.
    let public = Router::new()
        .route("/public", get(public))
        // `route_layer`, not `layer`: unknown paths stay 404s instead of
        // counting against a quota (or, below, asking for a key).
        .route_layer(per_ip.clone())
        .with_state(per_ip.handle());
    let api = Router::new()
        .route("/api/cheap", get(cheap))
        .route("/api/expensive", get(expensive))
        // The last layer added runs first: authenticate, then limit.
        .route_layer(per_key)
        .route_layer(auth);
    let app = public.merge(api);

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // `KeyBy::client_ip` starts from the peer address, which the server
    // puts in each request. Without it the per-IP limiter finds no key,
    // and refuses every request with a 400.
    let server = Server::bind(addr).await?;
    print_help(server.local_addr());
    server.serve(app).await?;
    Ok(())
}

// === handlers ===

/// Says which key the per-IP limiter counted this request against: the
/// limiter's own handle reads it the way the limiter does.
async fn public(State(limit): State<RateLimitHandle>, req: Request) -> String {
    match limit.key_of(&req).and_then(|key| key.as_ip()) {
        Some(ip) => format!("hello {ip}\n"),
        None => "hello stranger\n".to_owned(),
    }
}

async fn cheap(Extension(caller): Extension<Identity>) -> String {
    format!("a cheap answer for {} (1 unit)\n", caller.id())
}

async fn expensive(Extension(caller): Extension<Identity>) -> String {
    format!("an expensive answer for {} (5 units)\n", caller.id())
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
                println!("usage: rate_limit [--port PORT]   (default 8080; 0 picks a free port)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`; try --help")),
        }
    }
    Ok(port)
}

fn print_help(addr: SocketAddr) {
    let code = "-o /dev/null -w '%{http_code} '";
    println!(
        r#"switchyard rate-limit demo listening on http://{addr}

(a) per client IP behind a trusted proxy (127.0.0.1 plays the proxy): "per-ip" 2/s, bursts of 5
  for i in $(seq 8); do curl -s {code} -H 'x-forwarded-for: 203.0.113.7' http://{addr}/public; done; echo   # 5 × 200, then 429
  curl -si -H 'x-forwarded-for: 203.0.113.7' http://{addr}/public      # the 429: problem+json, Retry-After, RateLimit
  curl -s -H 'x-forwarded-for: 203.0.113.8' http://{addr}/public       # another client, its own quota
  curl -s --interface 127.0.0.2 -H 'x-forwarded-for: 203.0.113.9' http://{addr}/public
                                  # (Linux) an untrusted peer: its X-Forwarded-For is ignored

(b) per API key: "per-second" 5/s, bursts of 10, AND "per-minute" 20/min
  curl -si http://{addr}/api/cheap                                     # 401: no key, no quota
  curl -si -H 'x-api-key: alice-key' http://{addr}/api/cheap           # a 200 carries RateLimit and RateLimit-Policy too
  for i in $(seq 12); do curl -s {code} -H 'x-api-key: alice-key' http://{addr}/api/cheap; done; echo   # 9 × 200, then 429
  curl -si -H 'x-api-key: alice-key' http://{addr}/api/cheap           # 429 from "per-second", Retry-After: 1
  curl -s -H 'x-api-key: bob-key' http://{addr}/api/cheap              # bob has his own quotas

(c) costs: /api/expensive takes 5 units of each quota
  for i in $(seq 3); do curl -s {code} -H 'x-api-key: carol-key' http://{addr}/api/expensive; done; echo   # 200 200 429
  for i in $(seq 4); do sleep 1; curl -s {code} -H 'x-api-key: carol-key' http://{addr}/api/expensive; done; echo   # 200 200 429 429
  curl -si -H 'x-api-key: carol-key' http://{addr}/api/expensive       # 429 from "per-minute", a longer Retry-After
"#
    );
}
