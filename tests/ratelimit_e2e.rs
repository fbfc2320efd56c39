//! The rate limiter in a real axum app over loopback HTTP, keyed by the
//! peer address from `into_make_service_with_connect_info`.
#![cfg(feature = "axum")]

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use switchyard::key::KeyBy;
use switchyard::ratelimit::{Quota, RateLimitLayer};
use tokio::net::TcpSocket;

use crate::support::net;

/// Sends `GET /` from the loopback address `from` (127.0.0.0/8 is all
/// loopback, so each address is a distinct peer).
async fn get_from(from: [u8; 4], server: SocketAddr) -> (StatusCode, http::HeaderMap, Bytes) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    let stream = socket.connect(server).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let (parts, body) = res.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn axum_app_limits_each_peer_ip() {
    let limit = RateLimitLayer::builder()
        .key_by(KeyBy::peer_ip())
        .quota(Quota::per_minute(2).named("per-ip"))
        .build()
        .unwrap();
    let handle = limit.handle();
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(limit);

    let addr = net::serve(app).await;

    let (status, headers, body) = get_from([127, 0, 0, 1], addr).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "hello");
    assert_eq!(headers["ratelimit-policy"], r#""per-ip";q=2;w=60"#);
    assert_eq!(headers["ratelimit"], r#""per-ip";r=1;t=30"#);

    assert_eq!(get_from([127, 0, 0, 1], addr).await.0, StatusCode::OK);
    let (status, headers, body) = get_from([127, 0, 0, 1], addr).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(headers["ratelimit"], r#""per-ip";r=0;t=60"#);
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["policy"], "per-ip");

    // Another client address has its own budget.
    assert_eq!(get_from([127, 0, 0, 2], addr).await.0, StatusCode::OK);

    let stats = handle.stats();
    assert_eq!(
        (stats.allowed, stats.rejected, stats.tracked_keys),
        (3, 1, 2)
    );
}
