//! Blue/green for a tonic gRPC service: v1 and v2 of a greeter behind a
//! `Split`, with API-key authentication and a rate limit on
//! `Server::builder().layer(..)`. Refusals reach gRPC clients as gRPC
//! statuses (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, ...).
//!
//! ```text
//! cargo run --example grpc                  # serves on 127.0.0.1:50051 until Ctrl-C
//! cargo run --example grpc -- --port 0      # any free port
//! cargo run --example grpc -- --demo        # serves on a free port, runs a client against it, exits
//! ```
//!
//! The greeter is written by hand in `tests/support/greeter.rs` (what
//! `tonic-build` would generate), so this builds without `protoc`. Copy
//! this file to start your own: replace `Version` with your real v1 and v2
//! services (or with `switchyard::proxy::Upstream`s built with
//! `.http2(true)` in front of running gRPC servers).

#[path = "../tests/support/greeter.rs"]
mod greeter;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use greeter::{GreeterClient, GreeterServer, HelloRequest, Version};
use http::HeaderName;
use switchyard::auth::{ApiKey, ApiKeyLayer, Identity};
use switchyard::key::KeyBy;
use switchyard::ratelimit::{Quota, RateLimitLayer};
use switchyard::split::{Split, SplitHandle};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::service::Routes;
use tonic::transport::{Channel, Server};
use tonic::{Code, Status};

const TARGET: HeaderName = HeaderName::from_static("x-switchyard-target");
const KEY: &str = "demo-key";

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse()?;

    // Two versions of the service, each as tonic `Routes` (what
    // `Server::builder().add_service(..)` would serve on its own).
    let v1 = Routes::new(GreeterServer::new(Version::new("v1")));
    let v2 = Routes::new(GreeterServer::new(Version::new("v2")));
    let split = Split::builder()
        .target("v1", v1, 100)
        .target("v2", v2, 0)
        // A gRPC metadata key is an HTTP/2 header: the same caller keeps
        // the same version while the weights stay put.
        .sticky(KeyBy::header(HeaderName::from_static("x-user")))
        // Testers reach a version by name, whatever the weights.
        .override_header(TARGET)
        // Every response says which version served it (as metadata).
        .echo_header(TARGET)
        .build()?;
    let handle = split.handle();

    // Who is calling, and how often: 10 calls at once per caller, then one
    // a second.
    let auth = ApiKeyLayer::builder()
        .key(ApiKey::new(
            KEY,
            Identity::new("demo").with_scopes(["greet"]),
        ))
        .build()?;
    let limit = RateLimitLayer::builder()
        .key_by(KeyBy::identity())
        .quota(Quota::per_minute(60).burst(10).named("demo"))
        .build()?;

    let port = args.port.unwrap_or(if args.demo { 0 } else { 50051 });
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!("switchyard gRPC demo listening on http://{addr}");
    let server = Server::builder()
        .layer(auth)
        .layer(limit)
        .serve_with_incoming(split, TcpListenerStream::new(listener));
    let server = tokio::spawn(server);

    if args.demo {
        demo(addr, &handle).await?;
        println!("\ndemo done");
        return Ok(());
    }

    report_drained(&handle);
    print_help(addr);
    tokio::select! {
        result = server => result??,
        _ = tokio::signal::ctrl_c() => println!("\nbye"),
    }
    Ok(())
}

// === the client demo ===

/// A request with the demo key and optional extra metadata.
fn hello(name: &str, count: u32, extra: &[(&'static str, &str)]) -> tonic::Request<HelloRequest> {
    let mut req = tonic::Request::new(HelloRequest {
        name: name.to_owned(),
        count,
    });
    req.metadata_mut().insert("x-api-key", KEY.parse().unwrap());
    for (k, v) in extra {
        if let Ok(v) = v.parse() {
            req.metadata_mut().insert(*k, v);
        }
    }
    req
}

fn served_by<T>(res: &tonic::Response<T>) -> String {
    res.metadata()
        .get(TARGET.as_str())
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned()
}

/// `RESOURCE_EXHAUSTED (8): rate limit ...`
fn show(status: &Status) -> String {
    let name = match status.code() {
        Code::Unauthenticated => "UNAUTHENTICATED".to_owned(),
        Code::PermissionDenied => "PERMISSION_DENIED".to_owned(),
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED".to_owned(),
        Code::InvalidArgument => "INVALID_ARGUMENT".to_owned(),
        other => format!("{other:?}"),
    };
    format!("{name} ({}): {}", status.code() as i32, status.message())
}

/// `v1 100 / v2 0`
fn weights(handle: &SplitHandle) -> String {
    let weights = handle.weights();
    let parts: Vec<String> = weights.iter().map(|(n, w)| format!("{n} {w}")).collect();
    parts.join(" / ")
}

/// Fails the demo when what happened is not what the demo shows.
fn expect(ok: bool, what: &str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(format!("demo: expected {what}").into())
    }
}

async fn unary(
    client: &mut GreeterClient<Channel>,
    req: tonic::Request<HelloRequest>,
) -> Result<String, Error> {
    let res = client.say_hello(req).await?;
    let by = served_by(&res);
    let reply = res.into_inner();
    println!("   {}   [served by {by}]", reply.message);
    Ok(reply.version)
}

async fn demo(addr: SocketAddr, handle: &SplitHandle) -> Result<(), Error> {
    let mut client = GreeterClient::connect(format!("http://{addr}")).await?;

    println!("\n1. a call without an API key");
    let anonymous = tonic::Request::new(HelloRequest {
        name: "stranger".into(),
        count: 0,
    });
    let status = client
        .say_hello(anonymous)
        .await
        .expect_err("refused without a key");
    println!("   {}", show(&status));
    expect(status.code() == Code::Unauthenticated, "UNAUTHENTICATED")?;

    println!(
        "\n2. three calls with `x-api-key: {KEY}` (weights {})",
        weights(handle)
    );
    for _ in 0..3 {
        let version = unary(&mut client, hello("demo", 0, &[])).await?;
        expect(version == "v1", "v1 before the switch")?;
    }

    println!(
        "\n3. a tester asks for v2 by name (`{}: v2`)",
        TARGET.as_str()
    );
    let version = unary(
        &mut client,
        hello("tester", 0, &[("x-switchyard-target", "v2")]),
    )
    .await?;
    expect(version == "v2", "the override to reach v2")?;

    println!("\n4. a chat (bidirectional stream) opens on v1");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(HelloRequest {
        name: "first".into(),
        count: 0,
    })
    .await?;
    let res = client.chat(hello_stream(ReceiverStream::new(rx))).await?;
    let chat_on = served_by(&res);
    let mut chat = res.into_inner();
    let reply = chat.message().await?.ok_or("the chat ended early")?;
    println!("   {}   [chat served by {chat_on}]", reply.message);
    expect(reply.version == "v1", "the chat on v1")?;

    println!("\n5. promote v2");
    handle.promote("v2")?;
    println!("   weights now {}", weights(handle));

    println!("\n6. the open chat stays on the version it started on");
    tx.send(HelloRequest {
        name: "second".into(),
        count: 0,
    })
    .await?;
    let reply = chat.message().await?.ok_or("the chat ended early")?;
    println!("   {}", reply.message);
    expect(reply.version == "v1", "the open chat to stay on v1")?;

    println!("\n7. new calls go to v2");
    for _ in 0..2 {
        let version = unary(&mut client, hello("demo", 0, &[])).await?;
        expect(version == "v2", "v2 after the switch")?;
    }
    let res = client.say_hellos(hello("demo", 3, &[])).await?;
    let by = served_by(&res);
    let mut stream = res.into_inner();
    while let Some(reply) = stream.message().await? {
        println!("   {}   [stream served by {by}]", reply.message);
        expect(reply.version == "v2", "the new stream on v2")?;
    }

    println!("\n8. v1 has weight 0 but the chat is still open");
    let v1 = handle.target_stats("v1").ok_or("no v1")?;
    println!("   v1: weight {}, in flight {}", v1.weight, v1.in_flight);
    let mut drained = handle.drained("v1")?;
    let pending = tokio::time::timeout(Duration::from_millis(100), &mut drained).await;
    expect(pending.is_err(), "v1 not drained while the chat is open")?;
    println!("   drained(v1) is still pending: do not stop v1 yet");
    drop(tx); // the client ends the chat
    while chat.message().await?.is_some() {}
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .map_err(|_| "v1 did not drain")?;
    println!("   chat closed: v1 is drained (weight 0, nothing in flight), safe to stop");

    println!("\n9. calls until the rate limit answers (10 at once per caller, then 1 a second)");
    for n in 1..=30 {
        match client.say_hello(hello("demo", 0, &[])).await {
            Ok(res) => {
                let remaining = res
                    .metadata()
                    .get("ratelimit")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                println!(
                    "   call {n}: {}   [ratelimit: {remaining}]",
                    res.into_inner().message
                );
            }
            Err(status) => {
                let ratelimit = status
                    .metadata()
                    .get("ratelimit")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                println!("   call {n}: {}   [ratelimit: {ratelimit}]", show(&status));
                expect(
                    status.code() == Code::ResourceExhausted,
                    "RESOURCE_EXHAUSTED",
                )?;
                return Ok(());
            }
        }
    }
    Err("demo: the rate limit never answered RESOURCE_EXHAUSTED".into())
}

/// A chat request carrying the demo key.
fn hello_stream<S>(stream: S) -> tonic::Request<S> {
    let mut req = tonic::Request::new(stream);
    req.metadata_mut().insert("x-api-key", KEY.parse().unwrap());
    req
}

/// Says when a version has no weight and nothing in flight: the moment a
/// deploy script may stop it.
fn report_drained(handle: &SplitHandle) {
    for target in ["v1", "v2"] {
        let handle = handle.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(drained) = handle.drained(target) {
                    drained.await;
                }
                println!("[switchyard] {target} is drained: weight 0, nothing in flight");
                while handle.weights().get(target) == Some(0) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
    }
}

// === command line ===

struct Args {
    /// 50051 by default; with `--demo`, a free port.
    port: Option<u16>,
    demo: bool,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = std::env::args().skip(1);
        let mut out = Args {
            port: None,
            demo: false,
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--port" => {
                    let value = args.next().ok_or("--port needs a value")?;
                    let port = value
                        .parse()
                        .map_err(|_| format!("--port: `{value}` is not a port number"))?;
                    out.port = Some(port);
                }
                "--demo" => out.demo = true,
                "-h" | "--help" => {
                    println!(
                        "usage: grpc [--port PORT] [--demo]   (default port 50051, or a free one with --demo; 0 picks a free port)\n\
                         \n  --demo   serve, run a client against the server, print each step, exit"
                    );
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`; try --help")),
            }
        }
        Ok(out)
    }
}

fn print_help(addr: SocketAddr) {
    println!(
        r#"
  service  greeter.v1.Greeter (SayHello, SayHellos, Chat); v1 100 / v2 0
  API key  x-api-key: {KEY}   (or authorization: Bearer {KEY})
  limit    10 calls at once per caller, then 1 a second (RESOURCE_EXHAUSTED past it)
  metadata x-user: <name> keeps a caller on one version;
           {target}: v2 reaches v2 at weight 0; every reply names its version in {target}

  See the whole story, a client against a server of its own:
    cargo run --example grpc -- --demo

  With grpcurl (not needed; copy the .proto at the top of tests/support/greeter.rs
  into greeter.proto first):
    grpcurl -plaintext -proto greeter.proto -H 'x-api-key: {KEY}' \
            -d '{{"name": "you"}}' {addr} greeter.v1.Greeter/SayHello

  Ctrl-C stops the server."#,
        target = TARGET.as_str(),
    );
}
