//! The demo gateway: blue/green behind API keys, a rate limit and a request
//! id, with an admin API to shift traffic.
//!
//! ```sh
//! cargo run --example gateway                      # demo upstreams + gateway on :8080, admin on :9901
//! cargo run --example gateway -- --config my.toml  # your configuration, your upstreams
//! cargo run --example gateway -- --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0
//! cargo run --release --example gateway -- --config my.toml --no-access-log
//! ```
//!
//! Without `--config` it starts demo upstream servers on loopback (blue
//! answers `blue v1`, green, on two servers, `green v2`; `/headers` echoes
//! what they received) and serves `examples/gateway.toml` in front of
//! them. Every request is logged on stderr (the access log), and every
//! change made through the admin API.
//!
//! The data plane is served by `switchyard::server` with the limits of the
//! configuration's `[server]` section (TLS too, with `[server.tls]`), on
//! one thread per CPU with a runtime and a listener each unless
//! `[server] threads` says otherwise. `--no-access-log` turns the access
//! log off (nginx's `access_log off`): what the throughput figures in the
//! README measure.
//! Ctrl-C or SIGTERM shuts down gracefully: no new connections, requests
//! in flight and open WebSockets get up to `shutdown_timeout_ms` to
//! finish. SIGHUP reloads the TLS certificate.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::routing::get;
use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::server::{Server, ServerBuilder, ServerHandle};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;

const DEMO_CONFIG: &str = include_str!("gateway.toml");

// mimalloc rather than the system's allocator: a proxied request makes a
// few dozen short-lived allocations (hyper's, the gateway's), and glibc's
// malloc costs more CPU per request than mimalloc's thread-local heaps
// (the README's figures). The library itself leaves the choice to the
// application.
#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

/// mimalloc, asked the way the standard library asks the system allocator:
/// plain `mi_malloc` for the alignments every block of that size has
/// anyway (mimalloc's blocks are 16-aligned from 16 bytes up), the aligned
/// API only beyond. The `mimalloc` crate's allocator calls the aligned API
/// for every allocation, and mimalloc 3 serves an aligned request whose
/// size class is not a power of two, when the page at hand has no free
/// block left, by over-allocating from a larger size class: six of a
/// proxied request's allocations took that path, ~200 instructions each
/// (callgrind, `benches/vs_proxies.rs`'s split).
struct MiMalloc;

impl MiMalloc {
    /// Whether `mi_malloc(size)` is aligned enough for `align`: 16 bytes
    /// for blocks of 16 bytes and more, a block's own size below.
    fn plain(align: usize, size: usize) -> bool {
        align <= 16 && align <= size
    }
}

// SAFETY: every block comes from mimalloc, is sized and aligned as asked
// (`plain` holds only where mimalloc guarantees the alignment), and goes
// back to it with `mi_free`, which takes aligned and plain blocks alike.
unsafe impl std::alloc::GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_malloc, mi_malloc_aligned};
        // SAFETY: mimalloc's allocation functions take any size.
        unsafe {
            if Self::plain(layout.align(), layout.size()) {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        use libmimalloc_sys::{mi_zalloc, mi_zalloc_aligned};
        // SAFETY: as `alloc`.
        unsafe {
            if Self::plain(layout.align(), layout.size()) {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from mimalloc.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys::{mi_realloc, mi_realloc_aligned};
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe {
            if Self::plain(layout.align(), new_size) {
                mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

struct Args {
    config: Option<String>,
    listen: String,
    admin_listen: String,
    access_log: bool,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        config: None,
        listen: "127.0.0.1:8080".into(),
        admin_listen: "127.0.0.1:9901".into(),
        access_log: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => args.config = Some(value()?),
            "--listen" => args.listen = value()?,
            "--admin-listen" => args.admin_listen = value()?,
            "--no-access-log" => args.access_log = false,
            "-h" | "--help" => {
                println!(
                    "usage: gateway [--config FILE] [--listen ADDR] [--admin-listen ADDR] [--no-access-log]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
        }
    }
    Ok(args)
}

/// A demo upstream: `GET /` names its version, `/headers` echoes the
/// request headers as JSON, `/healthz` answers 200.
async fn demo_upstream(version: &'static str) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/headers",
            get(move |req: Request| async move {
                let headers: serde_json::Map<String, serde_json::Value> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                    .collect();
                axum::Json(serde_json::json!({ "version": version, "headers": headers }))
            }),
        )
        .fallback(move || async move { format!("{version}\n") });
    let server = Server::bind("127.0.0.1:0").await?;
    let addr = server.local_addr();
    tokio::spawn(server.serve(app));
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    // The access log (target `switchyard::access`) and the admin API's
    // changes, on stderr.
    // `--no-access-log` (nginx's `access_log off`): nobody listens to the
    // access log's target, so the gateway records nothing for it.
    let access = if args.access_log {
        LevelFilter::INFO
    } else {
        LevelFilter::OFF
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::INFO)
        .finish()
        .with(
            Targets::new()
                .with_default(LevelFilter::INFO)
                .with_target("switchyard::access", access),
        );
    tracing::subscriber::set_global_default(subscriber)?;
    let config = match &args.config {
        Some(path) => GatewayConfig::from_toml(&std::fs::read_to_string(path)?)?,
        None => {
            let mut config = GatewayConfig::from_toml(DEMO_CONFIG)?;
            for (name, version) in [("blue", "blue v1"), ("green", "green v2")] {
                if let Some(upstream) = config.upstreams.get_mut(name) {
                    upstream.url = format!("http://{}", demo_upstream(version).await?);
                    // Every further server of the upstream, another demo one.
                    for endpoint in &mut upstream.endpoints {
                        *endpoint = format!("http://{}", demo_upstream(version).await?);
                    }
                }
            }
            config
        }
    };
    // `[server]`: the data plane's limits, TLS and shutdown deadline. Its
    // `threads`, unless the configuration says otherwise: one per CPU,
    // each with its own runtime and listener (the fastest way to serve;
    // see the README's figures).
    let mut config = config;
    if config.server.threads.is_none() {
        config.server.threads = Some(std::thread::available_parallelism().map_or(1, |n| n.get()));
    }
    let server = ServerBuilder::from_config(config.server.clone())
        .bind(&args.listen)
        .await?;
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let gateway = Gateway::from_config(config)?;
    // The admin API, unless the configuration has no admin key (it is
    // never served unprotected).
    let admin = match switchyard::gateway::admin::router(&gateway) {
        Ok(admin) => Some(admin),
        Err(switchyard::gateway::admin::AdminError::NoKeys) => {
            eprintln!("gateway: no admin keys ([admin] keys): the admin API is off");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let admin_server = match admin {
        Some(_) => Some(Server::bind(&args.admin_listen).await?),
        None => None,
    };
    let addr = server.local_addr();
    let admin_addr = admin_server.as_ref().map(Server::local_addr);
    let handle = server.handle();
    let admin_handle = admin_server.as_ref().map(Server::handle);
    // Both servers' connections, timeouts and panics on `/metrics`.
    gateway.report_server("gateway", handle.clone());
    if let Some(admin) = &admin_handle {
        gateway.report_server("admin", admin.clone());
    }

    // The server puts the peer address in each request (for
    // X-Forwarded-For and per-IP limits).
    let serve = tokio::spawn(server.serve(gateway.clone()));
    let serve_admin = admin_server
        .zip(admin)
        .map(|(server, admin)| tokio::spawn(server.serve(admin)));
    tokio::spawn(signals(handle.clone(), admin_handle));

    println!("gateway: {scheme}://{addr}");
    if let Some(admin_addr) = admin_addr {
        println!("admin:   http://{admin_addr}");
        println!(
            "dashboard: http://{admin_addr}/ui (paste an admin key: demo-admin-key for the demo)"
        );
    }
    if args.config.is_none() {
        let g = format!("http://{addr}");
        let a = format!("http://{}", admin_addr.ok_or("the demo has admin keys")?);
        println!(
            r#"
Try:
  curl -s {g}/ -H 'x-api-key: demo-key'                                  # blue v1
  curl -s {g}/ -H 'x-api-key: demo-key' -H 'x-switchyard-target: green'  # a tester reaches green v2
  curl -s {g}/headers -H 'x-api-key: demo-key'                           # what the upstream sees
  curl -si {g}/                                                          # 401 problem+json

  curl -s -X PUT {a}/splits/api/weights -H 'authorization: Bearer demo-admin-key' \
       -H 'content-type: application/json' -d '{{"blue": 90, "green": 10}}'   # 10 % of users (sticky by x-user)
  for u in 1 2 3 4 5 6 7 8 9 10; do curl -s {g}/ -H 'x-api-key: demo-key' -H "x-user: $u"; done
  curl -s -X POST {a}/splits/api/promote/green -H 'authorization: Bearer demo-admin-key'
  curl -s -X POST {a}/splits/api/rollback -H 'authorization: Bearer demo-admin-key'
  seq 300 | xargs -P 30 -I@ curl -s -o /dev/null -w '%{{http_code}}\n' {g}/ -H 'x-api-key: demo-key' | sort | uniq -c   # 429s past the burst
  curl -s {a}/upstreams -H 'authorization: Bearer demo-admin-key'        # green's two servers
  curl -s {a}/servers -H 'authorization: Bearer demo-admin-key'          # this gateway's own: connections, requests
  curl -s {a}/metrics -H 'authorization: Bearer demo-admin-key'
"#
        );
    }
    // Both return once a shutdown has finished.
    serve.await??;
    if let Some(serve_admin) = serve_admin {
        serve_admin.await??;
    }
    let stats = handle.stats();
    eprintln!(
        "gateway: stopped after {} connections, {} requests",
        stats.accepted, stats.requests
    );
    Ok(())
}

/// Ctrl-C or SIGTERM: graceful shutdown of both servers (the data plane
/// with `[server] shutdown_timeout_ms`). SIGHUP: reload the certificate.
async fn signals(gateway: ServerHandle, admin: Option<ServerHandle>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => match gateway.reload_tls() {
                    Ok(()) => eprintln!("gateway: TLS certificate reloaded"),
                    Err(e) => eprintln!("gateway: TLS reload failed: {e}"),
                },
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("gateway: shutting down");
    gateway.shutdown_default();
    if let Some(admin) = admin {
        admin.shutdown(Duration::from_secs(5));
    }
}
