//! The open platform: APIs with a lifecycle, a catalog consumers browse
//! and subscribe from, owners who approve, and a prompt published as an
//! API.
//!
//! ```sh
//! cargo run --example open_platform                  # gateway on :8080, admin on :9901
//! cargo run --example open_platform -- --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
//! cargo run --example open_platform -- --state my-state.json
//! ```
//!
//! It starts two servers of its own on loopback (an orders service that
//! says which version of its path it served, and a model server that
//! "summarizes" by quoting the first words it was given, saying which
//! system prompt it got) and serves `examples/open_platform.toml` in front
//! of them:
//!
//! * team `team-orders` owns `orders`: v1 is deprecated (its answers carry
//!   `Deprecation`, `Sunset` and a `Link` to v2), v2 is published and
//!   needs a subscription its owners approve;
//! * team `team-ml` owns `summarize`, a prompt API: callers send
//!   `{"variables": {"text": …}}` and get `{"result": …}`; its two template
//!   versions are a split the team canaries;
//! * consumers `shop-key` (tenant `shop`) and `bank-key` (tenant `bank`)
//!   browse `/catalog`, read OpenAPI documents and ask for access there;
//! * admin keys: `root-admin-key` (everything), `orders-admin-key` and
//!   `ml-admin-key` (their team's APIs only), `viewer-key` (reads only).
//!
//! Lifecycle moves and subscriptions are kept in a state file (a temporary
//! one unless `--state FILE`), so they survive a restart.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Request;
use serde_json::{Value, json};
use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::server::Server;

const CONFIG: &str = include_str!("open_platform.toml");

struct Args {
    listen: String,
    admin_listen: String,
    state: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        listen: "127.0.0.1:8080".into(),
        admin_listen: "127.0.0.1:9901".into(),
        state: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => args.listen = value()?,
            "--admin-listen" => args.admin_listen = value()?,
            "--state" => args.state = Some(value()?),
            "-h" | "--help" => {
                println!(
                    "usage: open_platform [--listen ADDR] [--admin-listen ADDR] [--state FILE]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(args)
}

async fn serve(app: Router) -> std::io::Result<SocketAddr> {
    let server = Server::bind("127.0.0.1:0").await?;
    let addr = server.local_addr();
    tokio::spawn(server.serve(app));
    Ok(addr)
}

/// The orders service: `{"served": "<path>"}`.
async fn orders() -> std::io::Result<SocketAddr> {
    serve(
        Router::new().fallback(|req: Request| async move {
            axum::Json(json!({ "served": req.uri().path() }))
        }),
    )
    .await
}

/// A stand-in model server, in OpenAI's chat-completions shape: the
/// "summary" is the first eight words of the last message, marked with
/// the first words of the system prompt it was given.
async fn model() -> std::io::Result<SocketAddr> {
    serve(Router::new().fallback(|body: Bytes| async move {
        let req: Value = serde_json::from_slice(&body).unwrap_or_default();
        let messages = req["messages"].as_array().cloned().unwrap_or_default();
        let system = messages
            .first()
            .and_then(|m| m["content"].as_str())
            .unwrap_or("");
        let text = messages
            .last()
            .and_then(|m| m["content"].as_str())
            .unwrap_or("");
        let text = text.rsplit("Summarize:\n").next().unwrap_or(text);
        let summary: Vec<&str> = text.split_whitespace().take(8).collect();
        let marker: Vec<&str> = system.split_whitespace().take(6).collect();
        axum::Json(json!({
            "id": "chatcmpl-demo",
            "object": "chat.completion",
            "model": req["model"],
            "choices": [{
                "index": 0,
                "finish_reason": "stop",
                "message": {
                    "role": "assistant",
                    "content": format!("{} ({})", summary.join(" "), marker.join(" ")),
                },
            }],
            "usage": { "prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52 },
        }))
    }))
    .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::INFO)
        .init();
    let mut config = GatewayConfig::from_toml(CONFIG)?;
    config
        .upstreams
        .get_mut("orders")
        .ok_or("no upstream `orders`")?
        .url = format!("http://{}", orders().await?);
    config
        .upstreams
        .get_mut("llm")
        .ok_or("no upstream `llm`")?
        .url = format!("http://{}", model().await?);
    let state = args.state.unwrap_or_else(|| {
        std::env::temp_dir()
            .join(format!(
                "switchyard-open-platform-{}.json",
                std::process::id()
            ))
            .display()
            .to_string()
    });
    config.platform.state_file = Some(state.clone());

    let gateway = Gateway::from_config(config)?;
    let admin = switchyard::gateway::admin::router(&gateway)?;
    let server = Server::bind(&args.listen).await?;
    let admin_server = Server::bind(&args.admin_listen).await?;
    let (addr, admin_addr) = (server.local_addr(), admin_server.local_addr());
    let (handle, admin_handle) = (server.handle(), admin_server.handle());
    let serve = tokio::spawn(server.serve(gateway.clone()));
    let serve_admin = tokio::spawn(admin_server.serve(admin));

    let (g, a) = (format!("http://{addr}"), format!("http://{admin_addr}"));
    println!("gateway: {g}");
    println!("admin:   {a}");
    println!("state:   {state}");
    println!(
        r#"
Try (a consumer of tenant shop, then the owners):
  curl -s {g}/catalog -H 'x-api-key: shop-key'                          # what shop may see
  curl -s {g}/catalog/orders/v2/openapi.json -H 'x-api-key: shop-key'   # an OpenAPI 3.1 document
  curl -si {g}/v1/orders/7 -H 'x-api-key: shop-key'                     # 403 subscription_required
  curl -s -X POST {g}/catalog/orders/subscription -H 'x-api-key: shop-key'   # ask: pending
  curl -s -X POST {a}/subscriptions/orders/approve -H 'x-api-key: orders-admin-key' \
       -H 'content-type: application/json' -d '{{"consumer": {{"kind": "identity", "id": "alice", "tenant": "shop"}}}}'
  curl -si {g}/v1/orders/7 -H 'x-api-key: shop-key'                     # 200, Deprecation, Sunset, Link to v2
  curl -s {g}/v2/orders/7 -H 'x-api-key: shop-key'

  curl -s -X POST {g}/catalog/summarize/subscription?for=tenant -H 'x-api-key: shop-key'   # open: approved at once
  curl -s {g}/v1/prompts/summarize -H 'x-api-key: shop-key' -H 'content-type: application/json' \
       -d '{{"variables": {{"text": "The quarterly report shows revenue up ten percent and costs flat."}}}}'
  curl -s -X POST {a}/splits/summarize/promote/v2 -H 'x-api-key: ml-admin-key'      # the new prompt, for everyone
  curl -s -X POST {a}/splits/summarize/rollback -H 'x-api-key: ml-admin-key'

  curl -s -X POST {a}/apis/orders-v1/stage -H 'x-api-key: orders-admin-key' \
       -H 'content-type: application/json' -d '{{"stage": "retired"}}'                 # v1: 410 Gone from now on
  curl -s -X POST {a}/apis/summarize/stage -H 'x-api-key: orders-admin-key' \
       -H 'content-type: application/json' -d '{{"stage": "deprecated"}}'              # 403: not team-orders' API
  curl -s {a}/apis/orders-v1 -H 'x-api-key: viewer-key'                  # stage, moves, callers
  curl -s {a}/subscriptions/orders -H 'x-api-key: viewer-key'            # subscriptions and decisions
"#
    );
    tokio::signal::ctrl_c().await?;
    eprintln!("open_platform: shutting down");
    handle.shutdown_default();
    admin_handle.shutdown(std::time::Duration::from_secs(5));
    serve.await??;
    serve_admin.await??;
    Ok(())
}
