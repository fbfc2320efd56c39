#![cfg(feature = "tls")]
//! `https://` upstreams (feature `tls`): `Upstream` over rustls to a real
//! TLS server on loopback, HTTP/1.1 and HTTP/2 by ALPN, a certificate from
//! an unrelated CA refused with a 502, and the gateway's `ca_file`.
//!
//! The certificates in `tests/fixtures/tls` are test-only: a CA, a server
//! certificate it signed for `localhost` and `127.0.0.1` (valid until
//! 2126), an unrelated CA, and for mutual TLS a client CA and a client
//! certificate it signed (`client-ca.pem`, `client.pem`, `client.key`);
//! made with `openssl req -x509 -newkey ec` and `openssl x509 -req`, the
//! CAs' keys thrown away.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use switchyard::gateway::{ConfigError, Gateway, GatewayConfig};
use switchyard::proxy::{ProxyError, Upstream};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

const HANG_GUARD: Duration = Duration::from_secs(10);
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

/// A TLS server on loopback answering every request with what it saw:
/// `<version> <method> <path> host=<host> proto=<x-forwarded-proto>
/// alpn=<protocol> body=<bytes>`.
async fn tls_server() -> SocketAddr {
    tls_server_with(None).await
}

/// [`tls_server`], asking each client for a certificate signed by
/// `client_ca` (mutual TLS) when given, and then adding ` client=<number
/// of certificates the client presented>` to its answers.
async fn tls_server_with(client_ca: Option<&str>) -> SocketAddr {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&fixture("server.pem"))
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&fixture("server.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let mutual = client_ca.is_some();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&fixture(ca)) {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let session = tls.get_ref().1;
                let mut alpn = session
                    .alpn_protocol()
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .unwrap_or_else(|| "none".to_owned());
                if mutual {
                    let presented = session.peer_certificates().map_or(0, <[_]>::len);
                    alpn = format!("{alpn} client={presented}");
                }
                let h2 = alpn.starts_with("h2");
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let alpn = alpn.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let host = parts
                            .headers
                            .get(HOST)
                            .map(|h| h.to_str().unwrap().to_owned())
                            .or_else(|| parts.uri.authority().map(ToString::to_string))
                            .unwrap_or_default();
                        let proto = parts
                            .headers
                            .get("x-forwarded-proto")
                            .map_or("-", |h| h.to_str().unwrap());
                        let text = format!(
                            "{:?} {} {} host={host} proto={proto} alpn={alpn} body={}",
                            parts.version,
                            parts.method,
                            parts.uri.path(),
                            body.len()
                        );
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                    }
                });
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    addr
}

async fn call(upstream: &Upstream, path: &str) -> (StatusCode, String, String) {
    let req = Request::post(path)
        .header(HOST, "gateway.example")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let res = tokio::time::timeout(HANG_GUARD, upstream.clone().oneshot(req))
        .await
        .unwrap()
        .unwrap();
    let status = res.status();
    let ct = res
        .headers()
        .get(CONTENT_TYPE)
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, ct, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn https_upstream_over_http1_and_http2() {
    let addr = tls_server().await;
    let port = addr.port();

    // By name (the certificate is for `localhost`), with a path prefix.
    let upstream = Upstream::builder(&format!("https://localhost:{port}/base"))
        .root_certificates_pem(fixture("ca.pem"))
        .build()
        .unwrap();
    let (status, _, body) = call(&upstream, "/v1/x").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        format!("HTTP/1.1 POST /base/v1/x host=localhost:{port} proto=http alpn=none body=5")
    );
    // A second request reuses the pooled TLS connection.
    let (status, _, _) = call(&upstream, "/again").await;
    assert_eq!(status, StatusCode::OK);

    // By address (the certificate names 127.0.0.1 too), HTTP/2 by ALPN.
    let upstream = Upstream::builder(&format!("https://127.0.0.1:{port}"))
        .root_certificates_pem(fixture("ca.pem"))
        .http2(true)
        .build()
        .unwrap();
    let (status, _, body) = call(&upstream, "/h2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.starts_with("HTTP/2.0 POST /h2 "), "{body}");
    assert!(body.ends_with("alpn=h2 body=5"), "{body}");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_a_502() {
    let addr = tls_server().await;
    let upstream = Upstream::builder(&format!("https://localhost:{}", addr.port()))
        .root_certificates_pem(fixture("other-ca.pem"))
        .build()
        .unwrap();
    let (status, ct, body) = call(&upstream, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(ct, "application/problem+json");

    // The right CA, but a name the certificate does not carry.
    let upstream = Upstream::builder(&format!("https://127.0.0.2:{}", addr.port()))
        .root_certificates_pem(fixture("ca.pem"))
        .build()
        .unwrap();
    let (status, _, body) = call(&upstream, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
}

#[tokio::test]
async fn a_client_certificate_for_upstreams_that_ask_for_one() {
    let addr = tls_server_with(Some("client-ca.pem")).await;
    let url = format!("https://localhost:{}", addr.port());
    let with_cert = |b: switchyard::proxy::UpstreamBuilder| {
        b.root_certificates_pem(fixture("ca.pem"))
            .client_certificate_pem(fixture("client.pem"), fixture("client.key"))
    };

    // The certificate is presented and accepted, over HTTP/1.1 and h2.
    let upstream = with_cert(Upstream::builder(&url)).build().unwrap();
    let (status, _, body) = call(&upstream, "/m").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.ends_with("alpn=none client=1 body=5"), "{body}");
    let upstream = with_cert(Upstream::builder(&url).http2(true))
        .build()
        .unwrap();
    let (status, _, body) = call(&upstream, "/m2").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.ends_with("alpn=h2 client=1 body=5"), "{body}");

    // Without one, or with one the server's CA did not sign (the server's
    // own certificate, from another CA), the handshake fails: a 502.
    let upstream = Upstream::builder(&url)
        .root_certificates_pem(fixture("ca.pem"))
        .build()
        .unwrap();
    let (status, ct, body) = call(&upstream, "/m").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(ct, "application/problem+json");
    let upstream = Upstream::builder(&url)
        .root_certificates_pem(fixture("ca.pem"))
        .client_certificate_pem(fixture("server.pem"), fixture("server.key"))
        .build()
        .unwrap();
    let (status, _, body) = call(&upstream, "/m").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
}

#[test]
fn client_certificate_build_errors() {
    let tls_reason = |b: switchyard::proxy::UpstreamBuilder| match b.build() {
        Err(ProxyError::Tls { reason, .. }) => reason,
        other => panic!("expected a TLS error, got {other:?}"),
    };
    let https = || Upstream::builder("https://localhost:1");
    let reason =
        tls_reason(https().client_certificate_pem(b"no pem".to_vec(), fixture("client.key")));
    assert!(reason.contains("holds no certificate"), "{reason}");
    let reason =
        tls_reason(https().client_certificate_pem(fixture("client.pem"), b"no key".to_vec()));
    assert!(reason.contains("invalid client key"), "{reason}");
    // A key that does not belong to the certificate.
    let reason =
        tls_reason(https().client_certificate_pem(fixture("client.pem"), fixture("server.key")));
    assert!(reason.contains("unusable client certificate"), "{reason}");
    // Over plain http:// it would never be presented.
    let reason = tls_reason(
        Upstream::builder("http://localhost:1")
            .client_certificate_pem(fixture("client.pem"), fixture("client.key")),
    );
    assert!(reason.contains("only to https://"), "{reason}");
}

#[test]
fn build_errors() {
    let err = Upstream::builder("https://localhost:1")
        .root_certificates_pem(b"not a certificate".to_vec())
        .build()
        .unwrap_err();
    assert!(
        matches!(&err, ProxyError::Tls { reason, .. } if reason.contains("no certificate")),
        "{err}"
    );
    let err = Upstream::new("ftp://localhost:1").unwrap_err();
    assert!(matches!(err, ProxyError::InvalidUrl { .. }), "{err}");
    // The system's roots are used when none are given (Debian's
    // ca-certificates here); building does not connect.
    Upstream::new("https://example.com").unwrap();
}

/// One route to the TLS server at `addr`, checked against `ca_file`;
/// `extra` adds lines to the upstream's table.
fn gateway_config(addr: SocketAddr, ca_file: &str, extra: &str) -> GatewayConfig {
    GatewayConfig::from_toml(&format!(
        r#"
[upstreams.secure]
url = "https://localhost:{}"
ca_file = "{ca_file}"
{extra}

[[routes]]
name = "all"
split.targets = [{{ name = "secure", upstream = "secure", weight = 1 }}]
"#,
        addr.port()
    ))
    .unwrap()
}

/// `GET path` through `gateway`: the status and the body.
async fn get_through(gateway: &Gateway, path: &str) -> (StatusCode, Bytes) {
    let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
    let res = tokio::time::timeout(HANG_GUARD, gateway.clone().oneshot(req))
        .await
        .unwrap()
        .unwrap();
    let status = res.status();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn the_gateway_reads_ca_file() {
    let addr = tls_server().await;
    let gateway =
        Gateway::from_config(gateway_config(addr, &format!("{FIXTURES}/ca.pem"), "")).unwrap();
    let (status, body) = get_through(&gateway, "/through").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with(b"HTTP/1.1 GET /through "), "{body:?}");

    let Err(ConfigError { problems, .. }) =
        Gateway::from_config(gateway_config(addr, "/nonexistent/ca.pem", ""))
    else {
        panic!("a missing ca_file is refused");
    };
    assert!(
        problems
            .iter()
            .any(|p| p.at == "upstreams.secure.ca_file" && p.message.contains("cannot read")),
        "{problems:?}"
    );
}

#[tokio::test]
async fn the_gateway_reads_client_certificate_files() {
    let addr = tls_server_with(Some("client-ca.pem")).await;
    let ca = format!("{FIXTURES}/ca.pem");
    let config = |extra: &str| gateway_config(addr, &ca, extra);
    let gateway = Gateway::from_config(config(&format!(
        "client_cert_file = \"{FIXTURES}/client.pem\"\nclient_key_file = \"{FIXTURES}/client.key\""
    )))
    .unwrap();
    let (status, body) = get_through(&gateway, "/mutual").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.ends_with(b"client=1 body=0"), "{body:?}");

    for (extra, at, says) in [
        (
            format!("client_cert_file = \"{FIXTURES}/client.pem\""),
            "upstreams.secure.client_key_file",
            "needs `client_key_file`",
        ),
        (
            format!("client_key_file = \"{FIXTURES}/client.key\""),
            "upstreams.secure.client_cert_file",
            "needs `client_cert_file`",
        ),
        (
            format!(
                "client_cert_file = \"{FIXTURES}/client.pem\"\nclient_key_file = \"/nonexistent/client.key\""
            ),
            "upstreams.secure.client_key_file",
            "cannot read",
        ),
    ] {
        let Err(ConfigError { problems, .. }) = Gateway::from_config(config(&extra)) else {
            panic!("{extra} is refused");
        };
        assert!(
            problems
                .iter()
                .any(|p| p.at == at && p.message.contains(says)),
            "{extra}: {problems:?}"
        );
    }
}
