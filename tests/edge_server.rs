#![cfg(feature = "server")]
//! Attacks on `switchyard::server` over real loopback sockets: slowloris
//! (connections that send their request head a byte at a time) and a
//! connection flood past the connection cap. In both, ordinary clients
//! must still be served, and the attacking connections closed.
//!
//! The header read timeout is a short real-clock one (1 s), so each test
//! takes a few seconds; every wait is bounded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use switchyard::server::{IncomingBody, Server, ServerBuilder, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::service_fn;

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// How much later than the header timeout an attacking connection may be
/// closed: the server's watchdog is exact, this is for a loaded machine.
const SLACK: Duration = Duration::from_secs(3);

async fn hello(_req: Request<IncomingBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello"))))
}

async fn start(builder: ServerBuilder) -> (SocketAddr, ServerHandle) {
    let server = builder.bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr();
    let handle = server.handle();
    tokio::spawn(async move { server.serve(service_fn(hello)).await.unwrap() });
    (addr, handle)
}

/// One ordinary `GET /` on a fresh connection: whether it was answered
/// `hello`.
async fn ordinary(addr: SocketAddr) -> bool {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = Request::get("/")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = send.send_request(req).await.ok()?;
        let status = res.status();
        let body = res.into_body().collect().await.ok()?.to_bytes();
        Some(status == StatusCode::OK && body == "hello")
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// A slowloris connection: a request line, then a header one byte every
/// 100 ms, forever. Returns how long after connecting the server closed
/// it (or `None` if it never did within the header timeout and slack).
async fn slowloris(addr: SocketAddr) -> Option<Duration> {
    let start = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    if tcp
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .is_err()
    {
        return Some(start.elapsed());
    }
    let deadline = start + HEADER_TIMEOUT + SLACK;
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            read = tcp.read(&mut buf) => match read {
                // Closed (or anything answered, which it must not be).
                Ok(0) | Err(_) => return Some(start.elapsed()),
                Ok(_) => return None,
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if Instant::now() > deadline {
                    return None;
                }
                if tcp.write_all(b"x").await.is_err() {
                    return Some(start.elapsed());
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_within_the_header_timeout() {
    let (addr, handle) = start(Server::builder().header_read_timeout(HEADER_TIMEOUT)).await;
    let mut attackers = JoinSet::new();
    for _ in 0..200 {
        attackers.spawn(slowloris(addr));
    }
    // Meanwhile, ordinary clients are served.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut served = 0;
    for _ in 0..10 {
        served += usize::from(ordinary(addr).await);
    }
    assert_eq!(
        served, 10,
        "ordinary clients were not served during the attack"
    );
    let mut closed = 0;
    while let Some(result) = attackers.join_next().await {
        let after = result
            .unwrap()
            .expect("a slowloris connection outlived the header timeout");
        assert!(after < HEADER_TIMEOUT + SLACK, "{after:?}");
        closed += 1;
    }
    assert_eq!(closed, 200);
    assert_eq!(handle.stats().header_timeouts, 200);
    // And after the attack.
    assert!(ordinary(addr).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_between_keep_alive_requests_is_closed_too() {
    let (addr, handle) = start(Server::builder().header_read_timeout(HEADER_TIMEOUT)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // One honest request, then the next head a byte at a time.
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let start = Instant::now();
    tcp.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    let closed = loop {
        tokio::select! {
            read = tcp.read(&mut buf) => break matches!(read, Ok(0) | Err(_)),
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                assert!(start.elapsed() < HEADER_TIMEOUT + SLACK, "never closed");
                if tcp.write_all(b"x").await.is_err() {
                    break true;
                }
            }
        }
    };
    assert!(closed);
    assert_eq!(handle.stats().header_timeouts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_over_the_cap_does_not_stop_service() {
    const CAP: usize = 50;
    let (addr, handle) = start(
        Server::builder()
            .header_read_timeout(HEADER_TIMEOUT)
            .max_connections(CAP),
    )
    .await;
    // Three times the cap, each connection silent.
    let mut flood = Vec::new();
    for _ in 0..3 * CAP {
        if let Ok(tcp) = TcpStream::connect(addr).await {
            flood.push(tcp);
        }
    }
    // The server keeps up: every connection is either held or refused.
    let start = Instant::now();
    loop {
        let stats = handle.stats();
        if stats.accepted + stats.refused_over_cap >= flood.len() as u64 {
            break;
        }
        assert!(start.elapsed() < SLACK, "{stats:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = handle.stats();
    assert!(stats.refused_over_cap >= (2 * CAP) as u64, "{stats:?}");
    assert!(stats.active <= CAP, "{stats:?}");
    // An ordinary client retrying is served once the flood's connections
    // time out, while the flood's sockets are still open on its side.
    let start = Instant::now();
    let mut tries = 0;
    while !ordinary(addr).await {
        tries += 1;
        assert!(
            start.elapsed() < HEADER_TIMEOUT + SLACK,
            "not served after {tries} tries: {:?}",
            handle.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every flood connection the server took is closed by the header
    // timeout (the flood's side never closed one).
    let start = Instant::now();
    while handle.stats().header_timeouts < CAP as u64 {
        assert!(
            start.elapsed() < HEADER_TIMEOUT + SLACK,
            "{:?}",
            handle.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handle.stats().header_timeouts, CAP as u64);
    drop(flood);
}
