#![cfg(feature = "config")]
//! Issue 16, "safe at the edge": header and host attacks against a real
//! gateway (or a bare `Upstream`) served by a real hyper server on
//! `127.0.0.1:0`, in front of a real upstream that echoes what it got.
//! Requests are written byte for byte on a raw socket, so that a client
//! library cannot tidy the attack away.
//!
//! Each test says what the same attack did before the fix.
//!
//! Timeouts here only guard against a hang; no assertion is about speed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use switchyard::conn::ConnectionInfo;
use switchyard::gateway::{Gateway, GatewayConfig};
use switchyard::key::TrustedProxies;
use switchyard::proxy::{BoxError, ForwardedFor, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::{Service, ServiceExt};

const HANG_GUARD: Duration = Duration::from_secs(10);

// === the echo upstream ===

/// An upstream that reads the whole request and answers its method,
/// headers (every value of each, in order) and body length as JSON; it
/// counts the requests it got.
struct Echo {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
}

#[derive(Clone)]
struct EchoState {
    hits: Arc<AtomicU64>,
    hold: Option<Arc<Notify>>,
}

async fn echo_handler(
    State(state): State<EchoState>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> axum::Json<Value> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    if let Some(hold) = &state.hold {
        hold.notified().await;
    }
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &headers {
        map.entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    axum::Json(serde_json::json!({
        "method": method.as_str(),
        "headers": map,
        "body_len": body.len(),
    }))
}

async fn echo_with(hold: Option<Arc<Notify>>) -> Echo {
    let hits = Arc::new(AtomicU64::new(0));
    let app = Router::new().fallback(echo_handler).with_state(EchoState {
        hits: Arc::clone(&hits),
        hold,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Echo { addr, hits }
}

async fn echo() -> Echo {
    echo_with(None).await
}

/// Every value of `name` the upstream received.
fn seen(doc: &Value, name: &str) -> Vec<String> {
    doc["headers"][name]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

// === the front: a real hyper server ===

/// Serves `svc` over HTTP/1.1 (upgrades on) on a fresh loopback port,
/// putting in each request what a server knows of its connection: the
/// peer's address and a [`ConnectionInfo`] saying whether it is TLS (as a
/// TLS listener would; the bytes here are plain).
async fn serve<S, B>(svc: S, tls: bool) -> SocketAddr
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else {
                return;
            };
            let svc = svc.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut()
                        .insert(ConnectionInfo::new(peer, local, tls));
                    req.extensions_mut().insert(peer);
                    svc.clone().oneshot(req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    local
}

async fn serve_upstream(upstream: Upstream) -> SocketAddr {
    serve(upstream, false).await
}

/// A gateway routing everything to `echo`, with `extra` TOML for the
/// upstream's table and `route` for the route's.
async fn serve_gateway(config: &str) -> (SocketAddr, Gateway) {
    let config = GatewayConfig::from_toml(config).unwrap();
    let gateway = Gateway::from_config(config).unwrap();
    (serve(gateway.clone(), false).await, gateway)
}

// === the raw client ===

/// What came back: the status, the head's lines (lowercase) and the body.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.trim() == name).then(|| v.trim())
        })
    }
}

/// Writes `request` as it is, then reads one response (its body by
/// `Content-Length`).
async fn raw(addr: SocketAddr, request: &str) -> Answer {
    tokio::time::timeout(HANG_GUARD, async {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        read_answer(&mut tcp).await
    })
    .await
    .expect("no answer")
}

async fn read_answer(tcp: &mut TcpStream) -> Answer {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed before a head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    Answer { status, head, body }
}

fn upstream(echo: &Echo) -> switchyard::proxy::UpstreamBuilder {
    Upstream::builder(&format!("http://{}", echo.addr))
}

fn gateway_config(echo: &Echo, upstream_extra: &str, route_extra: &str) -> String {
    format!(
        r#"
[upstreams.echo]
url = "http://{addr}"
{upstream_extra}

[[routes]]
name = "all"
path_prefix = "/"
{route_extra}

[routes.split]
targets = [{{ name = "echo", upstream = "echo", weight = 100 }}]
"#,
        addr = echo.addr
    )
}

// === 1. `Connection` cannot strip what the gateway or the LB added ===

/// Before: the proxy removed every header `Connection` named after the
/// layers had run, so the gateway's own `X-Request-Id` (set by a transform)
/// and the front load balancer's `X-Forwarded-For` chain were gone; the
/// upstream saw `X-Forwarded-For: 127.0.0.1` and no request id. The attack
/// worked.
#[tokio::test]
async fn connection_cannot_strip_gateway_or_load_balancer_headers() {
    let echo = echo().await;
    let config = gateway_config(
        &echo,
        "",
        r#"
[[routes.transform.sets]]
name = "id"
request.headers.add = [{ name = "x-request-id", value = "set-by-gateway" }]
"#,
    );
    let (front, _gateway) = serve_gateway(&config).await;
    let answer = raw(
        front,
        "GET /a HTTP/1.1\r\nHost: api.example\r\n\
         Connection: x-request-id, X-Forwarded-For, x-client-secret\r\n\
         X-Forwarded-For: 198.51.100.7\r\n\
         X-Client-Secret: hop\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 200);
    let doc = answer.json();
    assert_eq!(seen(&doc, "x-request-id"), ["set-by-gateway"]);
    assert_eq!(seen(&doc, "x-forwarded-for"), ["198.51.100.7, 127.0.0.1"]);
    // A header the client nominated, not protected: gone.
    assert!(seen(&doc, "x-client-secret").is_empty(), "{doc}");
    assert!(seen(&doc, "connection").is_empty(), "{doc}");
}

/// The same through a bare `Upstream` (no ingress step): the proxy's own
/// removal never takes protected headers. Before: `X-Forwarded-For`,
/// `X-Real-IP` and `Forwarded` named in `Connection` were removed.
#[tokio::test]
async fn a_bare_upstream_never_removes_protected_headers() {
    let echo = echo().await;
    let front = serve_upstream(
        upstream(&echo)
            .trusted_proxies(TrustedProxies::new(["127.0.0.1"]).unwrap())
            .build()
            .unwrap(),
    )
    .await;
    let answer = raw(
        front,
        "GET /a HTTP/1.1\r\nHost: api.example\r\n\
         Connection: X-Forwarded-For, x-real-ip, forwarded\r\n\
         X-Forwarded-For: 198.51.100.7\r\nX-Real-IP: 198.51.100.7\r\n\
         Forwarded: for=198.51.100.7\r\n\r\n",
    )
    .await;
    let doc = answer.json();
    assert_eq!(seen(&doc, "x-forwarded-for"), ["198.51.100.7, 127.0.0.1"]);
    assert_eq!(seen(&doc, "x-real-ip"), ["198.51.100.7"]);
    assert_eq!(seen(&doc, "forwarded"), ["for=198.51.100.7"]);
}

// === 2. upgrades ===

/// Before: a bare `Upstream` asked the upstream for any protocol the
/// client named, `h2c` included (`Connection: upgrade`, `Upgrade: h2c`
/// reached it), and passed `HTTP2-Settings` on when `Connection` did not
/// name it. The attack worked. Now neither the gateway nor a bare
/// `Upstream` passes `h2c` or a protocol off the allow-list.
#[tokio::test]
async fn h2c_and_unlisted_upgrades_never_reach_the_upstream() {
    let echo = echo().await;
    let bare = serve_upstream(upstream(&echo).build().unwrap()).await;
    let (gateway, _g) = serve_gateway(&gateway_config(&echo, "", "")).await;
    for front in [bare, gateway] {
        for (connection, upgrade) in [
            ("Upgrade, HTTP2-Settings", "h2c"),
            ("Upgrade", "h2c"),
            ("upgrade", "x-custom/1"),
        ] {
            let answer = raw(
                front,
                &format!(
                    "GET /up HTTP/1.1\r\nHost: api.example\r\nConnection: {connection}\r\n\
                     Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
                ),
            )
            .await;
            assert_eq!(answer.status, 200, "{upgrade}");
            let doc = answer.json();
            for name in ["upgrade", "http2-settings", "connection"] {
                assert!(seen(&doc, name).is_empty(), "{name}: {doc}");
            }
        }
    }
}

// === 3. `Host` ===

/// Before: the gateway passed any `Host` on (the upstream got `a"b` and
/// `X-Forwarded-Host: a"b`). Now a `Host` that is not `host[:port]` is a
/// 400 problem, and the upstream is never asked.
#[tokio::test]
async fn a_bad_host_is_a_400_problem() {
    let echo = echo().await;
    let (front, _g) = serve_gateway(&gateway_config(&echo, "", "")).await;
    for host in [
        "a\"b.example",
        "a.example\";for=evil",
        "evil.example:99999",
        "evil.example:80:80",
        "[::1",
        "[not-ip]:80",
        "a\\b",
        "x/y",
        "user@host",
    ] {
        let answer = raw(front, &format!("GET /h HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
        assert_eq!(answer.status, 400, "{host}");
        assert_eq!(
            answer.header("content-type"),
            Some("application/problem+json")
        );
        assert!(answer.json()["detail"].as_str().unwrap().contains("Host"));
    }
    let answer = raw(
        front,
        "GET /h HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 400);
    assert_eq!(echo.hits.load(Ordering::SeqCst), 0);
}

/// Before: `host="{Host}"` was written as it came, so a `"` in `Host`
/// ended the quoted string and the rest became `Forwarded` parameters of
/// the client's choosing (`for=evil`). The attack worked. Now the value is
/// escaped (a bare `Upstream`, no ingress step to refuse the host).
#[tokio::test]
async fn quotes_in_host_cannot_inject_forwarded_parameters() {
    let echo = echo().await;
    let front = serve_upstream(upstream(&echo).forwarded_header(true).build().unwrap()).await;
    let answer = raw(
        front,
        "GET /f HTTP/1.1\r\nHost: a.example\";for=6.6.6.6;by=\"x\r\n\r\n",
    )
    .await;
    let doc = answer.json();
    assert_eq!(
        seen(&doc, "forwarded"),
        [r#"for=127.0.0.1;host="a.example\";for=6.6.6.6;by=\"x";proto=http"#]
    );
}

/// Before: a route's host was compared with `Host` cut at its last `:`,
/// so `[::1]` (no port) became `[:` and `example.com.` (fully qualified)
/// did not match `example.com`: both were 404s.
#[tokio::test]
async fn portless_ipv6_and_trailing_dot_hosts_route() {
    let echo = echo().await;
    let config = format!(
        r#"
[upstreams.echo]
url = "http://{addr}"

[[routes]]
name = "named"
host = "example.com"
split.targets = [{{ name = "echo", upstream = "echo", weight = 100 }}]

[[routes]]
name = "v6"
host = "[::1]"
split.targets = [{{ name = "echo", upstream = "echo", weight = 100 }}]
"#,
        addr = echo.addr
    );
    let (front, _g) = serve_gateway(&config).await;
    for host in [
        "example.com",
        "example.com.",
        "EXAMPLE.com.:8080",
        "[::1]",
        "[::1]:8080",
    ] {
        let answer = raw(front, &format!("GET /r HTTP/1.1\r\nHost: {host}\r\n\r\n")).await;
        assert_eq!(answer.status, 200, "{host}");
        assert_eq!(seen(&answer.json(), "x-forwarded-host"), [host]);
    }
    let answer = raw(front, "GET /r HTTP/1.1\r\nHost: other.example\r\n\r\n").await;
    assert_eq!(answer.status, 404);
}

// === 4. forwarding headers ===

/// Over plain HTTP from an untrusted peer, a client's `X-Forwarded-Proto:
/// https` becomes `http`. Before: also `http`, but hard-coded: a TLS
/// listener's requests said `http` too, and a trusted proxy's `https` was
/// overwritten. Now TLS (the server's `ConnectionInfo`) says `https`, and a
/// trusted proxy's value is kept.
#[tokio::test]
async fn x_forwarded_proto_is_what_this_hop_or_a_trusted_proxy_saw() {
    let echo = echo().await;
    let ask = "GET /p HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-Proto: https\r\n\r\n";

    let plain = serve_upstream(upstream(&echo).forwarded_header(true).build().unwrap()).await;
    let doc = raw(plain, ask).await.json();
    assert_eq!(seen(&doc, "x-forwarded-proto"), ["http"]);
    assert!(seen(&doc, "forwarded")[0].ends_with(";proto=http"));

    let tls = serve(upstream(&echo).build().unwrap(), true).await;
    let doc = raw(tls, &ask.replace("https", "http")).await.json();
    assert_eq!(seen(&doc, "x-forwarded-proto"), ["https"]);

    let behind_lb = serve_upstream(
        upstream(&echo)
            .trusted_proxies(TrustedProxies::new(["127.0.0.0/8"]).unwrap())
            .build()
            .unwrap(),
    )
    .await;
    let doc = raw(behind_lb, ask).await.json();
    assert_eq!(seen(&doc, "x-forwarded-proto"), ["https"]);
}

/// Before: a client's `X-Real-IP: 6.6.6.6` went to the upstream as it
/// was, and an upstream trusting it logged (or rate-limited) the wrong
/// address. The attack worked. Now it is the peer's address.
#[tokio::test]
async fn a_clients_x_real_ip_is_replaced() {
    let echo = echo().await;
    let front = serve_upstream(upstream(&echo).build().unwrap()).await;
    let doc = raw(
        front,
        "GET /ip HTTP/1.1\r\nHost: a.example\r\nX-Real-IP: 6.6.6.6\r\nX-Real-IP: 7.7.7.7\r\n\r\n",
    )
    .await
    .json();
    assert_eq!(seen(&doc, "x-real-ip"), ["127.0.0.1"]);
}

/// With `X-Real-IP` turned off (`real_ip_header = false`, as a front that
/// adds only `X-Forwarded-*` does), a client's own still never reaches
/// the upstream: not written is not passed on. Behind a trusted proxy its
/// value is the proxy's word, and goes on.
#[tokio::test]
async fn without_x_real_ip_a_clients_is_still_removed() {
    let echo = echo().await;
    let ask = "GET /ip HTTP/1.1\r\nHost: a.example\r\nX-Real-IP: 6.6.6.6\r\n\r\n";
    let (front, _) = serve_gateway(&gateway_config(&echo, "real_ip_header = false", "")).await;
    let doc = raw(front, ask).await.json();
    assert!(seen(&doc, "x-real-ip").is_empty(), "{doc}");
    assert_eq!(seen(&doc, "x-forwarded-for"), ["127.0.0.1"]);
    let (front, _) = serve_gateway(&gateway_config(&echo, "", "")).await;
    let doc = raw(front, ask).await.json();
    assert_eq!(seen(&doc, "x-real-ip"), ["127.0.0.1"], "on by default");

    let behind_lb = serve_upstream(
        upstream(&echo)
            .real_ip_header(false)
            .trusted_proxies(TrustedProxies::new(["127.0.0.0/8"]).unwrap())
            .build()
            .unwrap(),
    )
    .await;
    let doc = raw(behind_lb, ask).await.json();
    assert_eq!(seen(&doc, "x-real-ip"), ["6.6.6.6"]);
    let doc = raw(behind_lb, "GET /ip HTTP/1.1\r\nHost: a.example\r\n\r\n")
        .await
        .json();
    assert!(seen(&doc, "x-real-ip").is_empty(), "{doc}");
}

/// Before: there was no edge mode; the client's `X-Forwarded-For: 6.6.6.6`
/// was kept and the peer appended (`6.6.6.6, 127.0.0.1`), so an upstream
/// reading the leftmost entry believed the client. Now `Replace` starts
/// the list afresh for an untrusted peer (and its `Forwarded` too), and
/// appends for a trusted one.
#[tokio::test]
async fn edge_mode_replaces_an_untrusted_x_forwarded_for() {
    let echo = echo().await;
    let ask = "GET /x HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 6.6.6.6\r\n\
               Forwarded: for=6.6.6.6\r\n\r\n";
    let edge = serve_upstream(
        upstream(&echo)
            .forwarded_for(ForwardedFor::Replace)
            .forwarded_header(true)
            .build()
            .unwrap(),
    )
    .await;
    let doc = raw(edge, ask).await.json();
    assert_eq!(seen(&doc, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(
        seen(&doc, "forwarded"),
        [r#"for=127.0.0.1;host="a.example";proto=http"#]
    );

    let appending = serve_upstream(upstream(&echo).build().unwrap()).await;
    let doc = raw(appending, ask).await.json();
    assert_eq!(seen(&doc, "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);

    let trusted = serve_upstream(
        upstream(&echo)
            .forwarded_for(ForwardedFor::Replace)
            .trusted_proxies(TrustedProxies::new(["127.0.0.1"]).unwrap())
            .build()
            .unwrap(),
    )
    .await;
    let doc = raw(trusted, ask).await.json();
    assert_eq!(seen(&doc, "x-forwarded-for"), ["6.6.6.6, 127.0.0.1"]);
}

// === 5. circuit breakers ===

/// Before: no limit; every request piled up on a stuck upstream (the
/// second request here hung too). Now past `max_in_flight` (or
/// `max_pending`) the answer is a 503 problem at once, with
/// `Retry-After`, counted.
#[tokio::test]
async fn over_max_in_flight_is_a_503_with_retry_after() {
    for pending in [false, true] {
        let hold = Arc::new(Notify::new());
        let echo = echo_with(Some(Arc::clone(&hold))).await;
        let builder = upstream(&echo);
        let up = if pending {
            builder.max_pending(1).build().unwrap()
        } else {
            builder.max_in_flight(1).build().unwrap()
        };
        let front = serve_upstream(up.clone()).await;
        let ask = "GET /slow HTTP/1.1\r\nHost: a.example\r\n\r\n";
        let mut first = TcpStream::connect(front).await.unwrap();
        first.write_all(ask.as_bytes()).await.unwrap();
        // Wait until the first request is with the upstream.
        tokio::time::timeout(HANG_GUARD, async {
            while echo.hits.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        let second = raw(front, ask).await;
        assert_eq!(second.status, 503);
        assert_eq!(second.header("retry-after"), Some("1"));
        assert_eq!(
            second.header("content-type"),
            Some("application/problem+json")
        );
        let stats = up.stats();
        assert_eq!(
            (stats.rejected_in_flight, stats.rejected_pending),
            if pending { (0, 1) } else { (1, 0) }
        );
        assert_eq!(stats.in_flight, 1);
        hold.notify_waiters();
        let first = tokio::time::timeout(HANG_GUARD, read_answer(&mut first))
            .await
            .unwrap();
        assert_eq!(first.status, 200);
        // Free again once the first answer's body is done with.
        tokio::time::timeout(HANG_GUARD, async {
            while up.stats().in_flight > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        hold.notify_one();
        assert_eq!(raw(front, ask).await.status, 200);
    }
}

// === 6. ejection and timeouts see only the upstream's failures ===

/// A request body that sends `abc` and then fails, as a client that
/// vanishes mid-upload does.
struct FailsAfterAbc(u8);

impl Body for FailsAfterAbc {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0 += 1;
        Poll::Ready(Some(match self.0 {
            1 => Ok(Frame::data(Bytes::from_static(b"abc"))),
            _ => Err("the client went away".into()),
        }))
    }
}

/// Before: a request whose body broke off on the client's side counted as
/// the endpoint's failure: with `eject_after(1, ..)` one aborting client
/// took a healthy endpoint out of service. The attack worked (the body
/// failure came back from the pool as an error and was recorded). Now it
/// is not counted, and the client gets a 400.
#[tokio::test]
async fn a_client_that_aborts_mid_upload_does_not_eject_the_endpoint() {
    let (a, b) = (echo().await, echo().await);
    let up = Upstream::builder(&format!("http://{}", a.addr))
        .endpoint(&format!("http://{}", b.addr))
        .eject_after(1, Duration::from_secs(60))
        .build()
        .unwrap();

    // Over a real socket: the client promises 1000 bytes, sends 10, and
    // closes.
    let front = serve_upstream(up.clone()).await;
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(front).await.unwrap();
        tcp.write_all(
            b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 1000\r\n\r\n0123456789",
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(tcp);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Called directly with a body that fails: the same, deterministically.
    for _ in 0..4 {
        let req = Request::post("http://a.example/upload")
            .body(FailsAfterAbc(0))
            .unwrap();
        let res = tokio::time::timeout(HANG_GUARD, up.clone().oneshot(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(!String::from_utf8_lossy(&body).contains("127.0.0.1"));
    }
    for e in up.endpoints() {
        assert!(e.in_service, "{e:?}");
        assert_eq!((e.failures, e.ejections), (0, 0), "{e:?}");
    }
}

/// Before: the response timeout ran from the call, so a client uploading
/// slowly (here 2 s of body against a 1 s timeout) got a 504 while the
/// upstream waited for its bytes. The attack (a slow upload blamed on the
/// upstream, and counted towards its ejection) worked. Now the clock starts
/// when the body has ended.
#[tokio::test]
async fn the_response_timeout_does_not_fire_on_a_slow_upload() {
    let echo = echo().await;
    let up = upstream(&echo)
        .response_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let front = serve_upstream(up).await;
    let mut tcp = TcpStream::connect(front).await.unwrap();
    tcp.write_all(b"POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 20\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tcp.write_all(b"12345").await.unwrap();
    }
    let answer = tokio::time::timeout(HANG_GUARD, read_answer(&mut tcp))
        .await
        .unwrap();
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["body_len"], 20);
}

/// The other side of the same clock: once the body has ended, an
/// upstream that reads it all and never answers still gets its 504 (the
/// clock starts when the pool lets the body go, whether or not it polled
/// it to its end).
#[tokio::test]
async fn the_response_timeout_still_fires_once_the_body_is_sent() {
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut tcp, _)) = silent.accept().await {
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            held.push(tcp);
        }
    });
    let up = Upstream::builder(&format!("http://{addr}"))
        .response_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let front = serve_upstream(up).await;
    let answer = raw(
        front,
        "POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\n12345",
    )
    .await;
    assert_eq!(answer.status, 504);
    let text = String::from_utf8_lossy(&answer.body);
    assert!(text.contains("did not answer within"), "{text}");
    assert!(!text.contains(&addr.port().to_string()), "{text}");
}

// === 7. what failures tell the client ===

/// Before: `could not connect to upstream http://127.0.0.1:PORT` and
/// `upstream http://... failed: <hyper, io, resolver or TLS error>` went to
/// every client. The leak worked. Now the detail is generic; the rest goes
/// to the log.
#[tokio::test]
async fn bad_gateway_details_do_not_leak_the_upstream() {
    // Refused.
    let refusing = crate::support::net::Refusing::new();
    let dead = refusing.addr;
    // Accepts, reads the head, closes without a word.
    let rude = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = tcp.read(&mut buf).await;
            }
        });
        addr
    };
    for (addr, detail) in [
        (dead, "could not connect to upstream"),
        (rude, "upstream unavailable"),
    ] {
        let up = Upstream::new(&format!("http://{addr}")).unwrap();
        let front = serve_upstream(up).await;
        let answer = raw(front, "GET /x HTTP/1.1\r\nHost: a.example\r\n\r\n").await;
        assert_eq!(answer.status, 502);
        let doc = answer.json();
        assert_eq!(doc["detail"], detail, "{doc}");
        let text = String::from_utf8_lossy(&answer.body);
        assert!(!text.contains(&addr.port().to_string()), "{text}");
        assert!(!text.contains("127.0.0.1"), "{text}");
    }
}
