//! Blue/green with axum: two versions of a handler behind a `Split`, and a
//! small admin API to shift, promote and roll back traffic while it serves.
//!
//! ```text
//! cargo run --example blue_green              # listens on 127.0.0.1:8080
//! cargo run --example blue_green -- --port 9000
//! ```
//!
//! Copy this file to start your own: replace the two `version` routers with
//! your real v1 and v2 (or with upstream proxies), and protect `/admin` with
//! authentication before you expose it anywhere.

use std::net::{Ipv4Addr, SocketAddr};

use axum::extract::{Path, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use switchyard::key::KeyBy;
use switchyard::server::Server;
use switchyard::split::{Split, SplitError, SplitHandle, Weights};

/// One version of the service. In a real app this is your v1 or v2 router.
fn version(name: &'static str) -> Router {
    Router::new().route("/", get(move || async move { format!("{name}\n") }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = port_from_args()?;

    let split = Split::builder()
        .target("blue", version("blue v1"), 100)
        .target("green", version("green v2"), 0)
        // The same user keeps the same version while weights stay put, and
        // raising green's share only ever moves users onto green.
        .sticky(KeyBy::header(HeaderName::from_static("x-user")))
        // Testers reach a version by name, whatever the weights.
        .override_header(HeaderName::from_static("x-switchyard-target"))
        // Every response says which version served it.
        .echo_header(HeaderName::from_static("x-switchyard-target"))
        .build()?;
    let handle = split.handle();

    let admin = Router::new()
        .route("/split", get(show).put(set_weights))
        .route("/promote/{target}", post(promote))
        .route("/rollback", post(rollback))
        .with_state(handle.clone());
    let app = Router::new().nest("/admin", admin).fallback_service(split);

    // Report when a version has no weight and nothing in flight: the moment
    // a deploy script may stop it.
    for target in ["blue", "green"] {
        let handle = handle.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(drained) = handle.drained(target) {
                    drained.await;
                }
                println!("[switchyard] {target} is drained: weight 0, nothing in flight");
                // Wait until it gets traffic again before reporting anew.
                while handle.weights().get(target) == Some(0) {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        });
    }

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let server = Server::bind(addr).await?;
    print_help(server.local_addr());
    server.serve(app).await?;
    Ok(())
}

// === admin routes ===

async fn show(State(handle): State<SplitHandle>) -> impl IntoResponse {
    Json(serde_json::json!({
        "weights": handle.weights(),
        "targets": handle.stats(),
    }))
}

#[derive(Deserialize)]
struct SetWeights {
    weights: Weights,
}

async fn set_weights(
    State(handle): State<SplitHandle>,
    Json(body): Json<SetWeights>,
) -> Result<impl IntoResponse, Problem> {
    handle.set_weights(body.weights)?;
    Ok(show(State(handle)).await)
}

async fn promote(
    State(handle): State<SplitHandle>,
    Path(target): Path<String>,
) -> Result<impl IntoResponse, Problem> {
    handle.promote(&target)?;
    Ok(show(State(handle)).await)
}

async fn rollback(State(handle): State<SplitHandle>) -> Result<impl IntoResponse, Problem> {
    handle.rollback()?;
    Ok(show(State(handle)).await)
}

/// A refused change, answered as `application/problem+json` (RFC 9457).
struct Problem(SplitError);

impl From<SplitError> for Problem {
    fn from(e: SplitError) -> Self {
        Problem(e)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = match self.0 {
            SplitError::UnknownTarget(_) => StatusCode::NOT_FOUND,
            SplitError::NothingToRollBack => StatusCode::CONFLICT,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let body = serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason(),
            "status": status.as_u16(),
            "detail": self.0.to_string(),
        });
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
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
                println!("usage: blue_green [--port PORT]   (default 8080; 0 picks a free port)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`; try --help")),
        }
    }
    Ok(port)
}

fn print_help(addr: SocketAddr) {
    println!(
        r#"switchyard blue/green demo listening on http://{addr}

  curl -i http://{addr}/                                   # blue v1 (blue 100 / green 0)
  curl -i -H 'x-switchyard-target: green' http://{addr}/   # a tester reaches green
  curl -s http://{addr}/admin/split                        # weights and counters
  curl -s -X PUT http://{addr}/admin/split \
       -H 'content-type: application/json' \
       -d '{{"weights": {{"blue": 90, "green": 10}}}}'        # 10 % canary
  curl -i -H 'x-user: alice' http://{addr}/                # sticky: alice keeps her version
  curl -s -X POST http://{addr}/admin/promote/green         # all traffic to green
  curl -s -X POST http://{addr}/admin/rollback              # back to the weights before
"#
    );
}
