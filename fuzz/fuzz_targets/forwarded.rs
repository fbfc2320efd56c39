//! `switchyard::proxy::Upstream` with `forwarded_header(true)`, against a
//! real upstream on 127.0.0.1 that records the headers it received: the
//! `Forwarded` lines the client sent arrive unchanged and in order, and
//! exactly one more arrives after them, holding exactly one valid RFC 7239
//! element (`for=` the peer, `host=` the client's `Host`, `proto=http`);
//! `X-Forwarded-For` ends with the peer.
#![no_main]

mod common;

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use switchyard::proxy::Upstream;
use tower::ServiceExt;

type Seen = Arc<Mutex<Option<HeaderMap>>>;

fn upstream() -> &'static (Upstream, Seen) {
    static UP: OnceLock<(Upstream, Seen)> = OnceLock::new();
    UP.get_or_init(|| {
        let rt = common::runtime();
        let _entered = rt.enter();
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        let addr = std.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(std).unwrap();
        let seen: Seen = Arc::default();
        let record = Arc::clone(&seen);
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let record = Arc::clone(&record);
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            *record.lock().unwrap() = Some(req.headers().clone());
                            async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let up = Upstream::builder(&format!("http://{addr}"))
            .forwarded_header(true)
            .build()
            .unwrap();
        (up, seen)
    })
}

fn peer(spec: &[u8]) -> Option<IpAddr> {
    let (&kind, rest) = spec.split_first()?;
    match kind % 3 {
        1 => {
            let o: [u8; 4] = rest.get(..4)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(o)))
        }
        2 => {
            let o: [u8; 16] = rest.get(..16)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    // One byte for the kind of peer, 16 for its address, then headers.
    let (spec, lines) = data.split_at(data.len().min(17));
    let peer = peer(spec);
    let mut headers = common::headers(lines);
    // Framing is the client's business with this hop, not the test's.
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::EXPECT);
    let mut req = Request::get("/fuzz").body(Empty::<Bytes>::new()).unwrap();
    *req.headers_mut() = headers.clone();
    if let Some(ip) = peer {
        req.extensions_mut().insert(SocketAddr::new(ip, 40000));
    }
    let (up, seen) = upstream();
    seen.lock().unwrap().take();
    let rt = common::runtime();
    let status = rt.block_on(async {
        let res = up.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let _ = res.into_body().collect().await;
        status
    });
    let Some(got) = seen.lock().unwrap().take() else {
        // Refused before it was sent (a header hyper will not write).
        assert_ne!(status, 200);
        return;
    };

    let peer = peer.map(|ip| ip.to_canonical());
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let sent: Vec<_> = headers.get_all(header::FORWARDED).iter().collect();
    let arrived: Vec<_> = got.get_all(header::FORWARDED).iter().collect();
    assert!(
        arrived.len() >= sent.len() && arrived[..sent.len()] == sent[..],
        "the client's Forwarded lines did not arrive as sent: sent {sent:?}, arrived {arrived:?}"
    );
    let added = &arrived[sent.len()..];
    if peer.is_none() && host.is_none() {
        // Nothing known of the client (no peer address, no readable
        // `Host`): an element is not required.
        assert!(added.len() <= 1, "{added:?}");
    } else {
        assert_eq!(
            added.len(),
            1,
            "not exactly one Forwarded line added: {arrived:?}"
        );
    }
    if let Some(line) = added.first() {
        let text = line.to_str().expect("visible ASCII");
        let elements = common::split_quoted(text, b',')
            .unwrap_or_else(|| panic!("unbalanced quotes in {text:?}"));
        assert_eq!(elements.len(), 1, "more than one element in {text:?}");
        let pairs = common::forwarded_element(elements[0])
            .unwrap_or_else(|| panic!("not a valid forwarded-element: {text:?}"));
        let want_for = peer.map(|ip| match ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        });
        let get = |n: &str| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        assert_eq!(get("for"), want_for, "{text:?}");
        assert_eq!(get("host"), host, "{text:?}");
        assert_eq!(get("proto").as_deref(), Some("http"), "{text:?}");
        assert!(
            pairs
                .iter()
                .all(|(k, _)| ["for", "host", "proto"].contains(&k.as_str())),
            "{text:?}"
        );
    }
    if let Some(ip) = peer {
        let xff: Vec<_> = got
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        let last = xff.last().and_then(|v| v.rsplit(',').next()).map(str::trim);
        assert_eq!(
            last,
            Some(ip.to_string().as_str()),
            "X-Forwarded-For: {xff:?}"
        );
    }
});
