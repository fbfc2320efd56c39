//! Protocol upgrades (WebSocket and the like) through `proxy::Upstream`
//! and the gateway, over real loopback connections: the client's raw TCP
//! socket asks for `Upgrade: echo`, the upstream (a hyper server) answers
//! 101 and echoes every byte, and the proxy tunnels between them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, UPGRADE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::proxy::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

// axum hands hyper's upgrade handle on in the request's extensions.
use crate::support::net;
use net::serve;

const HANG_GUARD: Duration = Duration::from_secs(10);

/// The request heads the upstream received.
type Seen = Arc<Mutex<Vec<http::request::Parts>>>;

/// An upstream that switches to `echo` when asked (and only for `echo`),
/// then echoes every byte; anything else gets a plain 200.
async fn echo_upstream() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let log = Arc::clone(&log);
            let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let log = Arc::clone(&log);
                async move {
                    let wants_echo = req.headers().get(UPGRADE).is_some_and(|v| v == "echo");
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    log.lock().unwrap().push(req.into_parts().0);
                    if !wants_echo {
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                            "no upgrade",
                        ))));
                    }
                    tokio::spawn(async move {
                        let mut io = TokioIo::new(on_upgrade.await.unwrap());
                        let mut buf = [0u8; 1024];
                        loop {
                            let n = io.read(&mut buf).await.unwrap_or(0);
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                    let mut res = Response::new(Full::default());
                    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    res.headers_mut().insert(UPGRADE, "echo".parse().unwrap());
                    res.headers_mut()
                        .insert(CONNECTION, "upgrade".parse().unwrap());
                    Ok(res)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .with_upgrades(),
            );
        }
    });
    (addr, seen)
}

/// Sends a raw HTTP/1.1 request head and reads the response head.
async fn handshake(addr: SocketAddr, head: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(HANG_GUARD, tcp.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(n == 1, "closed after {:?}", String::from_utf8_lossy(&got));
        got.push(byte[0]);
    }
    (tcp, String::from_utf8(got).unwrap().to_ascii_lowercase())
}

async fn echo_round_trip(tcp: &mut TcpStream, message: &[u8]) {
    tcp.write_all(message).await.unwrap();
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(HANG_GUARD, tcp.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, message);
}

const ASK_ECHO: &str = "GET /chat HTTP/1.1\r\nHost: front\r\nConnection: keep-alive, Upgrade\r\nUpgrade: echo\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Hop: drop\r\n\r\n";

/// The proxy to an upstream that speaks `echo`: a protocol it must be
/// told to allow (issue 16: `websocket` alone is allowed by default).
fn echo_upstream_of(addr: SocketAddr) -> Upstream {
    Upstream::builder(&format!("http://{addr}"))
        .upgrade_protocols(["echo"])
        .build()
        .unwrap()
}

#[tokio::test]
async fn an_upgrade_is_tunnelled_both_ways() {
    let (upstream_addr, seen) = echo_upstream().await;
    let upstream = echo_upstream_of(upstream_addr);
    let front = serve(axum::Router::new().fallback_service(upstream)).await;

    let (mut tcp, head) = handshake(front, ASK_ECHO).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    for message in [
        &b"ping"[..],
        b"a longer message, twice",
        &[0u8, 255, 10, 13],
    ] {
        echo_round_trip(&mut tcp, message).await;
    }

    // The upstream was asked to upgrade, with the end-to-end headers and
    // without the other hop-by-hop ones.
    let parts = seen.lock().unwrap().pop().unwrap();
    assert_eq!(parts.headers[UPGRADE], "echo");
    assert_eq!(parts.headers[CONNECTION], "upgrade");
    assert_eq!(
        parts.headers["sec-websocket-key"],
        "dGhlIHNhbXBsZSBub25jZQ=="
    );
    assert!(parts.headers.contains_key("x-forwarded-for"));

    // Closing the client's side ends the tunnel; a new connection can
    // upgrade again.
    drop(tcp);
    let (mut tcp, head) = handshake(front, ASK_ECHO).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    echo_round_trip(&mut tcp, b"again").await;
}

#[tokio::test]
async fn a_refused_upgrade_is_a_plain_answer() {
    let (upstream_addr, seen) = echo_upstream().await;
    // `h2c-ish` is allowed (issue 16: only allowed protocols are asked
    // for), and the upstream refuses it.
    let upstream = Upstream::builder(&format!("http://{upstream_addr}"))
        .upgrade_protocols(["echo", "h2c-ish"])
        .build()
        .unwrap();
    let front = serve(axum::Router::new().fallback_service(upstream)).await;

    let ask = "GET /x HTTP/1.1\r\nHost: front\r\nConnection: upgrade\r\nUpgrade: h2c-ish\r\n\r\n";
    let (mut tcp, head) = handshake(front, ask).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("upgrade:"), "{head}");
    let mut body = [0u8; 10];
    tcp.read_exact(&mut body).await.unwrap();
    assert_eq!(&body, b"no upgrade");
    assert_eq!(
        seen.lock().unwrap().pop().unwrap().headers[UPGRADE],
        "h2c-ish"
    );

    // Without `Connection: upgrade`, `Upgrade` is a hop-by-hop header like
    // any other and is not passed on.
    let ask = "GET /y HTTP/1.1\r\nHost: front\r\nUpgrade: echo\r\n\r\n";
    let (_tcp, head) = handshake(front, ask).await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        !seen
            .lock()
            .unwrap()
            .pop()
            .unwrap()
            .headers
            .contains_key(UPGRADE)
    );
}

#[tokio::test]
async fn the_gateway_authenticates_then_tunnels() {
    let (upstream_addr, _) = echo_upstream().await;
    let config = GatewayConfig::from_toml(&format!(
        r#"
[upstreams.chat]
url = "http://{upstream_addr}"
upgrade_protocols = ["echo"]

[[api_keys]]
key = "sk-chat"
id = "chatter"

[[routes]]
name = "chat"
auth = {{}}
split.targets = [{{ name = "chat", upstream = "chat", weight = 1 }}]
"#
    ))
    .unwrap();
    let gateway = Gateway::from_config(config).unwrap();
    let front = serve(axum::Router::new().fallback_service(gateway)).await;

    let (_tcp, head) = handshake(front, ASK_ECHO).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");

    let ask = ASK_ECHO.replace("X-Hop: drop", "X-Api-Key: sk-chat");
    let (mut tcp, head) = handshake(front, &ask).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    echo_round_trip(&mut tcp, b"through the gateway").await;
}

/// Blue/green with an open WebSocket: after promoting green, new
/// connections go there while blue's tunnel keeps working, and blue is
/// `drained` only once that tunnel closes.
#[tokio::test]
async fn a_split_drains_only_when_tunnels_close() {
    use switchyard::split::Split;

    let (blue_addr, _) = echo_upstream().await;
    let (green_addr, green_seen) = echo_upstream().await;
    let split = Split::builder()
        .target("blue", echo_upstream_of(blue_addr), 100)
        .target("green", echo_upstream_of(green_addr), 0)
        .build()
        .unwrap();
    let handle = split.handle();
    let front = serve(axum::Router::new().fallback_service(split)).await;

    let (mut on_blue, head) = handshake(front, ASK_ECHO).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    echo_round_trip(&mut on_blue, b"blue, open").await;
    let blue = |h: &switchyard::split::SplitHandle| {
        h.stats().into_iter().find(|s| s.name == "blue").unwrap()
    };
    assert_eq!(blue(&handle).in_flight, 1, "the open tunnel is in flight");

    handle.promote("green").unwrap();
    let mut drained = Box::pin(handle.drained("blue").unwrap());
    // The tunnel still works, and keeps blue from being drained.
    echo_round_trip(&mut on_blue, b"still on blue").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), &mut drained)
            .await
            .is_err(),
        "drained while a WebSocket is open"
    );
    // New connections go to green.
    let (mut on_green, head) = handshake(front, ASK_ECHO).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    echo_round_trip(&mut on_green, b"green").await;
    assert_eq!(green_seen.lock().unwrap().len(), 1);

    // The client closes blue's tunnel: blue is drained.
    drop(on_blue);
    tokio::time::timeout(HANG_GUARD, drained)
        .await
        .expect("drained once the tunnel closed");
    assert_eq!(blue(&handle).in_flight, 0);
}

/// A tunnel nobody speaks on is closed after the upstream's idle timeout:
/// the client sees the connection end, and a split's version drains
/// without waiting for a client that may never close.
#[tokio::test]
async fn an_idle_tunnel_is_closed_and_lets_its_version_drain() {
    use switchyard::split::Split;

    let (blue_addr, _) = echo_upstream().await;
    let (green_addr, _) = echo_upstream().await;
    let idle = Duration::from_millis(300);
    let upstream = |addr: SocketAddr| {
        Upstream::builder(&format!("http://{addr}"))
            .upgrade_protocols(["echo"])
            .upgrade_idle_timeout(Some(idle))
            .build()
            .unwrap()
    };
    let split = Split::builder()
        .target("blue", upstream(blue_addr), 100)
        .target("green", upstream(green_addr), 0)
        .build()
        .unwrap();
    let handle = split.handle();
    let front = serve(axum::Router::new().fallback_service(split)).await;

    let (mut on_blue, head) = handshake(front, ASK_ECHO).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    echo_round_trip(&mut on_blue, b"then silence").await;
    handle.promote("green").unwrap();
    let drained = handle.drained("blue").unwrap();

    // The client holds its socket open and says nothing: the proxy ends
    // the tunnel, and the client reads the end of the stream.
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(HANG_GUARD, on_blue.read(&mut byte))
        .await
        .expect("the idle tunnel was closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    tokio::time::timeout(HANG_GUARD, drained)
        .await
        .expect("blue drained once its idle tunnel closed");
}
