//! Unit tests of the collectors: real layers driven with `oneshot`, then
//! the registry encoded and read back.

use std::convert::Infallible;
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::registry::Registry;
use tower::{Layer, ServiceExt, service_fn};

use super::*;
use crate::auth::{ApiKey, ApiKeyLayer, Identity, RequireScopes};
use crate::split::Split;

/// The registry of `collectors`, encoded; checked to announce each family
/// once, before its samples.
fn encode(collectors: Vec<Box<dyn Collector>>) -> String {
    let mut registry = Registry::default();
    for c in collectors {
        registry.register_collector(c);
    }
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap().to_owned();
            assert!(seen.insert(name.clone()), "{name} announced twice:\n{text}");
            current = name;
        } else if !line.starts_with('#') {
            assert!(
                line.starts_with(current.as_str()),
                "{line} outside its family:\n{text}"
            );
        }
    }
    text
}

/// The value of the series written exactly as `series`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn ok(
    name: &'static str,
) -> impl tower::Service<
    Request<String>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(move |_: Request<String>| async move { Ok(Response::new(name.to_owned())) })
}

#[tokio::test]
async fn two_splits_share_each_family() {
    let a = Split::builder()
        .target("blue", ok("a blue"), 100)
        .target("green", ok("a green"), 0)
        .latency(crate::ratelimit::MonotonicClock::new())
        .build()
        .unwrap();
    let b = Split::builder()
        .target("blue", ok("b blue"), 1)
        .build()
        .unwrap();
    for _ in 0..3 {
        a.clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
    }
    b.clone()
        .oneshot(Request::new(String::new()))
        .await
        .unwrap();

    let splits = SplitCollector::new(a.handle(), [("route", "a")])
        .with(b.handle(), LabelSet::new().with("route", "b"));
    let text = encode(vec![Box::new(splits)]);
    let a_blue = "{route=\"a\",target=\"blue\"}";
    assert_eq!(
        value(&text, &format!("switchyard_target_requests_total{a_blue}")),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "switchyard_target_requests_total{route=\"b\",target=\"blue\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&text, &format!("switchyard_target_weight{a_blue}")),
        100.0
    );
    assert_eq!(
        value(
            &text,
            "switchyard_target_weight{route=\"a\",target=\"green\"}"
        ),
        0.0
    );
    assert_eq!(
        value(
            &text,
            "switchyard_target_responses_total{route=\"a\",target=\"blue\",class=\"2xx\"}"
        ),
        3.0
    );
    assert_eq!(
        value(&text, &format!("switchyard_target_in_flight{a_blue}")),
        0.0
    );
    assert_eq!(
        value(&text, &format!("switchyard_target_errors_total{a_blue}")),
        0.0
    );
    assert_eq!(
        value(
            &text,
            &format!("switchyard_target_latency_seconds_count{a_blue}")
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "switchyard_target_latency_seconds_bucket{route=\"a\",target=\"blue\",le=\"+Inf\"}"
        ),
        3.0
    );
    assert!(text.contains("le=\"0.001\""), "{text}");
    assert!(text.contains("# TYPE switchyard_target_requests_total counter\n"));
}

#[test]
fn an_empty_collector_writes_nothing() {
    let text = encode(vec![
        Box::new(SplitCollector::default()),
        Box::new(AuthCollector::default()),
        Box::new(RateLimitCollector::default()),
    ]);
    assert_eq!(text, "");
}

#[tokio::test]
async fn api_key_refusals_are_counted_by_reason() {
    let past = SystemTime::now() - Duration::from_secs(60);
    let keys = ApiKeyLayer::builder()
        .key(ApiKey::new("good", Identity::new("alice")))
        .key(ApiKey::new("off", Identity::new("bob")).disabled(true))
        .key(ApiKey::new("old", Identity::new("carol")).not_after(past))
        .build()
        .unwrap();
    let svc = keys.layer(ok("in"));
    let call = |headers: &[&str]| {
        let mut req = Request::builder();
        for key in headers {
            req = req.header("x-api-key", *key);
        }
        svc.clone().oneshot(req.body(String::new()).unwrap())
    };
    let mut statuses = Vec::new();
    for keys in [
        &[][..],
        &["nope"],
        &["nope"],
        &["off"],
        &["old"],
        &["good", "good"],
        &["good"],
    ] {
        statuses.push(call(keys).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 400, 200]);

    let s = keys.handle().stats();
    assert_eq!(
        (s.missing, s.invalid, s.malformed, s.authenticated),
        (1, 4, 1, 1)
    );
    assert_eq!((s.unknown_key, s.disabled_key, s.expired_key), (2, 1, 1));

    let text = encode(vec![Box::new(AuthCollector::new(
        &keys,
        [("auth", "keys")],
    ))]);
    let refused = |reason: &str| {
        value(
            &text,
            &format!("switchyard_auth_refused_total{{auth=\"keys\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("missing"), 1.0);
    assert_eq!(refused("malformed"), 1.0);
    assert_eq!(refused("unknown_key"), 2.0);
    assert_eq!(refused("disabled_key"), 1.0);
    assert_eq!(refused("expired_key"), 1.0);
    assert_eq!(
        value(
            &text,
            "switchyard_auth_admitted_total{auth=\"keys\",identity=\"authenticated\"}"
        ),
        1.0
    );
    // An API-key layer has no JWT reasons.
    assert!(!text.contains("bad_signature"), "{text}");
}

#[cfg(feature = "jwt")]
#[tokio::test]
async fn jwt_refusals_are_counted_by_reason() {
    use jsonwebtoken::{EncodingKey, Header, encode as sign};
    use serde_json::json;

    const SECRET: &[u8] = b"a secret of at least 32 bytes, for HS256";
    let auth = crate::auth::JwtLayer::builder()
        .hs256(SECRET)
        .kid("k1")
        .issuer("https://issuer.example")
        .build()
        .unwrap();
    let svc = auth.layer(ok("in"));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = |claims: serde_json::Value, kid: &str, secret: &[u8]| {
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(kid.to_owned());
        sign(&header, &claims, &EncodingKey::from_secret(secret)).unwrap()
    };
    let iss = "https://issuer.example";
    let good = json!({ "sub": "alice", "iss": iss, "exp": now + 600 });
    let tokens = [
        token(good.clone(), "k1", SECRET),
        token(
            json!({ "sub": "alice", "iss": iss, "exp": now - 600 }),
            "k1",
            SECRET,
        ),
        token(good.clone(), "k1", b"another secret, also 32 bytes long!"),
        token(
            json!({ "sub": "alice", "iss": "https://evil.example", "exp": now + 600 }),
            "k1",
            SECRET,
        ),
        token(json!({ "iss": iss, "exp": now + 600 }), "k1", SECRET),
        token(good, "k2", SECRET),
        "abc.def.ghi".to_owned(),
    ];
    let mut statuses = Vec::new();
    for t in &tokens {
        let req = Request::builder()
            .header("authorization", format!("Bearer {t}"))
            .body(String::new())
            .unwrap();
        statuses.push(svc.clone().oneshot(req).await.unwrap().status());
    }
    assert_eq!(statuses[0], StatusCode::OK);
    assert!(statuses[1..].iter().all(|s| *s == StatusCode::UNAUTHORIZED));

    let s = auth.stats();
    assert_eq!(s.authenticated, 1);
    assert_eq!(s.invalid, 6);
    assert_eq!(
        (
            s.expired_token,
            s.bad_signature,
            s.invalid_claims,
            s.no_matching_key,
            s.malformed_token
        ),
        (1, 1, 2, 1, 1)
    );
    let text = encode(vec![Box::new(AuthCollector::new(&auth, [("auth", "jwt")]))]);
    let refused = |reason: &str| {
        value(
            &text,
            &format!("switchyard_auth_refused_total{{auth=\"jwt\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("expired_token"), 1.0);
    assert_eq!(refused("bad_signature"), 1.0);
    assert_eq!(refused("invalid_claims"), 2.0);
    assert_eq!(refused("no_matching_key"), 1.0);
    assert_eq!(refused("malformed_token"), 1.0);
    assert_eq!(refused("missing"), 0.0);
    assert!(!text.contains("unknown_key"), "{text}");
}

#[tokio::test]
async fn scope_refusals_are_counted_by_reason() {
    let keys = ApiKeyLayer::builder()
        .key(ApiKey::new(
            "admin",
            Identity::new("ops").with_scopes(["admin"]),
        ))
        .key(ApiKey::new("user", Identity::new("alice")))
        .build()
        .unwrap();
    let scopes = RequireScopes::all(["admin"]).realm("api");
    let checked = scopes.layer(ok("in"));
    let authed = keys.layer(checked.clone());
    let as_ = |key: &str| {
        Request::builder()
            .header("x-api-key", key)
            .body(String::new())
            .unwrap()
    };
    assert_eq!(
        authed.clone().oneshot(as_("admin")).await.unwrap().status(),
        200
    );
    assert_eq!(
        authed.clone().oneshot(as_("user")).await.unwrap().status(),
        403
    );
    assert_eq!(
        authed.clone().oneshot(as_("user")).await.unwrap().status(),
        403
    );
    // No authentication in front: no identity.
    let res = checked.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(res.status(), 401);

    let s = scopes.stats();
    assert_eq!((s.insufficient_scope, s.unauthenticated), (2, 1));
    let text = encode(vec![Box::new(ScopeCollector::new(
        &scopes,
        [("route", "admin")],
    ))]);
    assert_eq!(
        value(
            &text,
            "switchyard_scope_refused_total{route=\"admin\",reason=\"insufficient_scope\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "switchyard_scope_refused_total{route=\"admin\",reason=\"unauthenticated\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn rate_limits_take_a_prefix() {
    use crate::key::KeyBy;
    use crate::ratelimit::{Quota, RateLimitLayer};

    let limit = RateLimitLayer::builder()
        .key_by(KeyBy::global())
        .quota(Quota::per_hour(1))
        .build()
        .unwrap();
    let svc = limit.layer(ok("in"));
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let res = svc
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, [200, 429, 429]);
    let text = encode(vec![
        Box::new(RateLimitCollector::new(limit.handle(), [("route", "r")])),
        Box::new(RateLimitCollector::new(limit.handle(), LabelSet::new()).prefix("edge")),
    ]);
    assert_eq!(
        value(&text, "switchyard_ratelimit_allowed_total{route=\"r\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "switchyard_ratelimit_rejected_total{route=\"r\"}"),
        2.0
    );
    assert_eq!(value(&text, "edge_rejected_total"), 2.0);
    // No Redis, no Redis families.
    assert!(!text.contains("redis"), "{text}");
}

#[cfg(feature = "mirror")]
#[tokio::test]
async fn mirrored_requests_are_counted() {
    use bytes::Bytes;
    use http_body_util::Full;

    use crate::body::RequestBody;
    use crate::mirror::MirrorLayer;

    let primary = service_fn(|_: Request<RequestBody<Full<Bytes>>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("blue"))))
    });
    let shadow = service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .status(500)
                .body(Full::new(Bytes::from("green")))
                .unwrap(),
        )
    });
    let layer = MirrorLayer::builder(shadow).percent(100.0).build();
    let handle = layer.handle();
    let svc = layer.layer(primary);
    for method in ["GET", "GET", "POST"] {
        let req = Request::builder()
            .method(method)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        let _ = http_body_util::BodyExt::collect(res.into_body()).await;
    }
    // The shadow calls run on their own tasks: wait until both compared.
    for _ in 0..1000 {
        if handle.stats().compared == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let text = encode(vec![Box::new(MirrorCollector::new(
        handle,
        [("route", "m")],
    ))]);
    let outcome = |o: &str| {
        value(
            &text,
            &format!("switchyard_mirror_requests_total{{route=\"m\",outcome=\"{o}\"}}"),
        )
    };
    assert_eq!(outcome("mirrored"), 2.0);
    assert_eq!(outcome("skipped_method"), 1.0);
    assert_eq!(outcome("dropped"), 0.0);
    assert_eq!(
        value(&text, "switchyard_mirror_compared_total{route=\"m\"}"),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "switchyard_mirror_status_total{route=\"m\",result=\"mismatch\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "switchyard_mirror_latency_seconds_count{route=\"m\",side=\"shadow\"}"
        ),
        2.0
    );
    assert!(text.contains("# TYPE switchyard_mirror_latency_diff_seconds gauge\n"));
}

/// A real server's counters after a request answered and one the service
/// panicked on, both over loopback.
#[cfg(feature = "server")]
#[tokio::test]
async fn server_collector_counts_requests_connections_and_panics() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = crate::server::Server::bind("127.0.0.1:0").await.unwrap();
    let (addr, handle) = (server.local_addr(), server.handle());
    let collector = ServerCollector::new(server.handle(), [("server", "edge")]);
    let app = service_fn(|req: Request<crate::server::IncomingBody>| async move {
        assert_ne!(req.uri().path(), "/panic", "a bug in the service");
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    let serving = tokio::spawn(server.serve(app));
    // Each request on a connection of its own, read to its end.
    let exchange = |path: &'static str| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        answer
    };
    assert!(exchange("/").await.starts_with("HTTP/1.1 200"));
    assert!(exchange("/panic").await.starts_with("HTTP/1.1 500"));
    while handle.stats().active > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let text = encode(vec![Box::new(collector)]);
    let v = |name: &str| value(&text, &format!("{name}{{server=\"edge\"}}"));
    assert_eq!(v("switchyard_server_connections_accepted_total"), 2.0);
    assert_eq!(v("switchyard_server_connections_active"), 0.0);
    assert_eq!(v("switchyard_server_requests_total"), 2.0);
    assert_eq!(v("switchyard_server_panics_total"), 1.0);
    assert_eq!(v("switchyard_server_header_timeouts_total"), 0.0);
    assert!(text.contains("# TYPE switchyard_server_connections_active gauge\n"));
    assert!(text.contains("# TYPE switchyard_server_panics_total counter\n"));
    handle.shutdown(Duration::from_secs(1));
    serving.await.unwrap().unwrap();
}
