//! Request and response rewriting with axum: a `TransformLayer` built from
//! TOML, in front of an echo handler that answers with exactly what it
//! received, so every rule's effect is visible.
//!
//! ```text
//! cargo run --example transform              # listens on 127.0.0.1:8080
//! cargo run --example transform -- --port 0  # any free port
//! ```
//!
//! Copy this file to start your own: move `RULES` into your configuration
//! file and put your real router (or a `switchyard::proxy` upstream) where
//! the echo handler is.

use std::net::{Ipv4Addr, SocketAddr};

use axum::Router;
use axum::extract::Request;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use serde_json::json;
use switchyard::server::Server;
use switchyard::transform::{Rules, TransformLayer};
use tower::Layer;

/// The rules, as they would sit in a configuration file. `Rules` is plain
/// serde data, so TOML, JSON or YAML all work; an unknown key is refused
/// by the deserializer, a bad value by `TransformLayer::new`.
const RULES: &str = r#"
# A body rule buffers the request, up to this many bytes (413 beyond).
body_limit = 65536
# What a body rule does with a request that is not JSON: "skip" streams it
# through untouched (the other rules still apply), "reject" answers 415.
non_json = "skip"

[[sets]]
name = "api v1 to v2"
# Only requests under /api (segment-wise: not /apis). Conditions look at
# the request as the client sent it.
when = { path_prefix = "/api" }

# Header rules apply in this fixed order, however the file lists them:
# remove, rename, replace (only if present), add (only if absent), append.
# So `add` below sees the header `rename` made: a client sending x-user
# keeps its value, one without gets "anonymous".
[sets.request.headers]
remove = ["x-debug"]
rename = [{ from = "x-user", to = "x-forwarded-user" }]
replace = [{ name = "user-agent", value = "switchyard-demo" }]
add = [
  { name = "x-forwarded-user", value = "anonymous" },
  { name = "x-request-id", value = "{uuid}" },
  { name = "x-user-id", value = "{path.id}" },
]
append = [{ name = "via", value = "1.1 switchyard" }]

# Path rules run strip_prefix, regex, add_prefix: /api/users/42 becomes
# /users/42, then /v2/users/42. The regex's groups are also the {path.N}
# and {path.NAME} templates of this set. Other paths under /api are only
# stripped.
[sets.request.path]
strip_prefix = "/api"
regex = { pattern = '^/users/(?<id>\d+)$', replace = '/v2/users/${id}' }

# ?q=blue becomes ?search=blue; other parameters keep their exact bytes.
[sets.request.query]
rename = [{ from = "q", to = "search" }]

# JSON body rules (JSON requests only) run remove, rename, set. Templates
# read the request as it reached this set, before its rules ran: that is
# why {header.x-user} still finds the header renamed above. A template
# whose value is missing skips its rule (set on_missing = "empty" to write
# "" instead).
[sets.request.body]
remove = ["/password"]
rename = [{ from = "/name", to = "/display_name" }]
set = [
  { pointer = "/request_id", value = "{uuid}" },
  { pointer = "/meta/user", value = "{header.x-user}" },
  { pointer = "/meta/user_id", value = "{path.id}" },
  { pointer = "/meta/version", value = 2 },
]

# Response templates read the request as it was sent on: the client gets
# back the request id the upstream saw ({uuid} is one value per request).
[sets.response.headers]
add = [{ name = "x-request-id", value = "{header.x-request-id}" }]
"#;

/// A rule with a typo, to show what a mistake looks like: templates are
/// checked when the layer is built, so it fails at startup, not on the
/// first request that reaches the rule.
const BROKEN: &str = r#"
[[sets]]
name = "typo"
request.headers.add = [{ name = "x-user-id", value = "{user.id}" }]
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = port_from_args()?;

    let rules: Rules = toml::from_str(RULES)?;
    // `new` compiles everything up front (regexes, templates, header names,
    // JSON pointers); every error names the rule it is about.
    let transform = TransformLayer::new(rules)?;

    // Wrap the whole router rather than calling `Router::layer`: a layer
    // added with `Router::layer` runs after routing, so a path rewrite
    // could not change which route answers. Wrapped like this, the router
    // routes the rewritten request (`/v2/users/42`).
    let app = Router::new().fallback(echo);
    let app = Router::new().fallback_service(transform.layer(app));

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let server = Server::bind(addr).await?;
    print_help(server.local_addr())?;
    server.serve(app).await?;
    Ok(())
}

/// Answers with what it received: method, URI, headers (as `name: value`
/// lines, in order, one per value) and the body as text, pretty-printed so
/// that curl output reads well. Stands in for your upstream.
async fn echo(req: Request) -> impl IntoResponse {
    let (parts, body) = req.into_parts();
    let headers: Vec<String> = parts
        .headers
        .iter()
        .map(|(name, value)| format!("{name}: {}", String::from_utf8_lossy(value.as_bytes())))
        .collect();
    let body = match axum::body::to_bytes(body, 1024 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<unreadable body: {e}>"),
    };
    let seen = json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "headers": headers,
        "body": body,
    });
    let text = serde_json::to_string_pretty(&seen).unwrap_or_default() + "\n";
    ([(CONTENT_TYPE, "application/json")], text)
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
                println!("usage: transform [--port PORT]   (default 8080; 0 picks a free port)");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`; try --help")),
        }
    }
    Ok(port)
}

fn print_help(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    println!("switchyard transform demo listening on http://{addr}");
    println!("\nThe rules in front of the echo handler:\n{RULES}");

    // The broken rule, for the record: this is the error your service
    // would stop with.
    let broken: Rules = toml::from_str(BROKEN)?;
    match TransformLayer::new(broken) {
        Err(e) => println!("A broken rule is refused at build time:{BROKEN}  error: {e}\n"),
        Ok(_) => println!("(the broken rule was accepted: this should not happen)\n"),
    }

    println!(
        r#"Try:
  curl -s 'http://{addr}/api/users/42?q=blue&page=2' \
       -H 'x-user: ada' -H 'x-debug: 1' -H 'content-type: application/json' \
       -d '{{"name": "Ada", "password": "hunter2", "age": 36}}'         # every rule at once
  curl -si http://{addr}/api/users/42                                # x-request-id comes back
  curl -s 'http://{addr}/api/status?q=blue'                          # path only stripped; x-forwarded-user: anonymous
  curl -s 'http://{addr}/other?q=blue' -H 'x-debug: 1'               # outside /api: untouched
  curl -s http://{addr}/api/users/42 -H 'content-type: text/plain' -d 'name=Ada'       # not JSON: body streams through
  curl -si http://{addr}/api/users/42 -H 'content-type: application/json' -d '{{nope'   # 400: invalid JSON
"#
    );
    Ok(())
}
