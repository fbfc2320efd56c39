//! Serving on loopback for the end-to-end tests: an axum app on
//! `127.0.0.1:0`, with the peer address in the request extensions (as
//! `KeyBy::peer_ip` and the proxy's `X-Forwarded-For` read it).

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Serves `app` on a free loopback port until the test ends; its address.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    addr
}
