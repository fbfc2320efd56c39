#![cfg(feature = "dns")]
//! DNS discovery over an in-process DNS server, as a `Source`, as an
//! upstream follows it, and from the gateway's config.
//!
//! The server answers on loopback (UDP and TCP, one port) from a table the
//! test changes as it goes: A and AAAA records, SRV records, and whether
//! it answers at all (SERVFAIL, NXDOMAIN, an empty answer, silence). The
//! upstreams' endpoints are real axum servers on `127.0.0.N`, all on one
//! port as an A-record source wants. Real time, short TTLs (1 s); every
//! wait is for a condition, with a deadline.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use switchyard::discovery::{self, DnsSource, Refresh, ResolverConfig, Source};
use switchyard::proxy::{EndpointSpec, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tower::ServiceExt;

// === the DNS server ===

/// How the server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// From the table.
    Records,
    /// SERVFAIL to everything.
    ServFail,
    /// No answer at all.
    Silent,
    /// NXDOMAIN to everything.
    NxDomain,
    /// NOERROR, no record, to everything.
    Empty,
}

/// One SRV record.
#[derive(Clone, Debug)]
struct Srv {
    priority: u16,
    weight: u16,
    port: u16,
    target: &'static str,
    ttl: u32,
}

/// What the server answers.
#[derive(Debug)]
struct Zone {
    /// A and AAAA records by name (lower case, no trailing dot): address, TTL.
    addrs: HashMap<String, Vec<(IpAddr, u32)>>,
    srv: HashMap<String, Vec<Srv>>,
    mode: Mode,
    /// Whether an SRV answer carries its targets' addresses.
    additionals: bool,
}

/// An in-process DNS server and its table.
#[derive(Clone, Debug)]
struct Dns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
}

impl Dns {
    /// A server on a free loopback port (UDP and TCP), answering from an
    /// empty table.
    async fn start() -> Self {
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
                break (udp, tcp);
            }
        };
        let dns = Self {
            addr: udp.local_addr().unwrap(),
            zone: Arc::new(Mutex::new(Zone {
                addrs: HashMap::new(),
                srv: HashMap::new(),
                mode: Mode::Records,
                additionals: false,
            })),
        };
        let zone = Arc::clone(&dns.zone);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else {
                    continue;
                };
                if let Some(answer) = respond(&zone, &buf[..n]) {
                    let _ = udp.send_to(&answer, peer).await;
                }
            }
        });
        let zone = Arc::clone(&dns.zone);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let zone = Arc::clone(&zone);
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = stream.read_u16().await else {
                            return;
                        };
                        let mut query = vec![0u8; usize::from(len)];
                        if stream.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        let Some(answer) = respond(&zone, &query) else {
                            continue;
                        };
                        let len = u16::try_from(answer.len()).unwrap();
                        if stream.write_u16(len).await.is_err()
                            || stream.write_all(&answer).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        dns
    }

    fn zone(&self) -> std::sync::MutexGuard<'_, Zone> {
        self.zone.lock().unwrap()
    }

    /// `name`'s A and AAAA records are `addrs` (address, TTL).
    fn set_addrs(&self, name: &str, addrs: &[(IpAddr, u32)]) {
        self.zone().addrs.insert(name.to_owned(), addrs.to_vec());
    }

    /// `name`'s SRV records are `records`.
    fn set_srv(&self, name: &str, records: Vec<Srv>) {
        self.zone().srv.insert(name.to_owned(), records);
    }

    fn set_mode(&self, mode: Mode) {
        self.zone().mode = mode;
    }

    /// A resolver asking this server only.
    fn config(&self) -> ResolverConfig {
        ResolverConfig::nameserver(self.addr)
    }
}

/// The answer to the query in `bytes`, or none (silence, or not a query).
fn respond(zone: &Mutex<Zone>, bytes: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(bytes).ok()?;
    let zone = zone.lock().unwrap();
    let mut res = Message::new();
    res.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    let Some(q) = query.queries().first() else {
        res.set_response_code(ResponseCode::FormErr);
        return res.to_vec().ok();
    };
    res.add_query(q.clone());
    match zone.mode {
        Mode::Silent => return None,
        Mode::ServFail => {
            res.set_response_code(ResponseCode::ServFail);
            return res.to_vec().ok();
        }
        Mode::NxDomain => {
            res.set_response_code(ResponseCode::NXDomain);
            return res.to_vec().ok();
        }
        Mode::Empty => return res.to_vec().ok(),
        Mode::Records => {}
    }
    let name = q.name().to_ascii().to_lowercase();
    let name = name.trim_end_matches('.');
    if !zone.addrs.contains_key(name) && !zone.srv.contains_key(name) {
        res.set_response_code(ResponseCode::NXDomain);
        return res.to_vec().ok();
    }
    match q.query_type() {
        RecordType::A | RecordType::AAAA => {
            for record in addr_records(&zone, name, q.name(), q.query_type()) {
                res.add_answer(record);
            }
        }
        RecordType::SRV => {
            for srv in zone.srv.get(name).into_iter().flatten() {
                let target = Name::from_ascii(format!("{}.", srv.target)).unwrap();
                res.add_answer(Record::from_rdata(
                    q.name().clone(),
                    srv.ttl,
                    RData::SRV(SRV::new(srv.priority, srv.weight, srv.port, target.clone())),
                ));
                if zone.additionals {
                    for record in addr_records(&zone, srv.target, &target, RecordType::A) {
                        res.add_additional(record);
                    }
                }
            }
        }
        _ => {}
    }
    res.to_vec().ok()
}

/// The records of `kind` (A or AAAA) the table has for `key`, named `name`.
fn addr_records(zone: &Zone, key: &str, name: &Name, kind: RecordType) -> Vec<Record> {
    let mut records = Vec::new();
    for (ip, ttl) in zone.addrs.get(key).into_iter().flatten() {
        let data = match (ip, kind) {
            (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
            (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
            _ => continue,
        };
        records.push(Record::from_rdata(name.clone(), *ttl, data));
    }
    records
}

// === servers and requests ===

/// What every follower here asks with: answers at most every 50 ms and
/// at least every 2 s, endpoints removed after 2 answers missing them.
fn refresh() -> Refresh {
    Refresh::default()
        .min(Duration::from_millis(50))
        .max(Duration::from_secs(2))
        .timeout(Duration::from_secs(3))
}

/// Who answered a request, and a `/slow` route answering once `release`
/// says so.
fn app(name: String, release: tokio::sync::watch::Receiver<bool>) -> axum::Router {
    let slow_name = name.clone();
    axum::Router::new()
        .route(
            "/slow",
            axum::routing::get(move || {
                let mut release = release.clone();
                let name = slow_name.clone();
                async move {
                    let _ = release.wait_for(|go| *go).await;
                    name
                }
            }),
        )
        .fallback(move || {
            let name = name.clone();
            async move { name }
        })
}

/// Servers on `127.0.0.{n}:P` for each `n` of `hosts`, all on one port P;
/// the port, and the sender releasing their `/slow` requests.
async fn servers(hosts: &[u8]) -> (u16, tokio::sync::watch::Sender<bool>) {
    let (release, rx) = tokio::sync::watch::channel(false);
    'port: loop {
        let first = TcpListener::bind((Ipv4Addr::new(127, 0, 0, hosts[0]), 0))
            .await
            .unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for n in &hosts[1..] {
            match TcpListener::bind((Ipv4Addr::new(127, 0, 0, *n), port)).await {
                Ok(l) => listeners.push(l),
                Err(_) => continue 'port,
            }
        }
        for listener in listeners {
            let name = listener.local_addr().unwrap().ip().to_string();
            let app = app(name, rx.clone());
            tokio::spawn(async move { axum::serve(listener, app).await });
        }
        return (port, release);
    }
}

/// `127.0.0.{n}`.
fn lo(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Sends `GET {path}` through `upstream`: the status and the body.
async fn get(upstream: &Upstream, path: &str) -> (StatusCode, String) {
    let req = Request::get(format!("http://client.example{path}"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), upstream.clone().oneshot(req))
        .await
        .expect("answered")
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The keys of the endpoints in `upstream`'s set (not draining), sorted.
fn keys(upstream: &Upstream) -> Vec<String> {
    let mut keys: Vec<String> = upstream
        .endpoints()
        .into_iter()
        .filter(|e| !e.draining)
        .map(|e| e.key)
        .collect();
    keys.sort();
    keys
}

/// Waits until `check` says yes, for 10 s at most.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "waited for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === tests ===

#[tokio::test]
async fn an_a_source_lists_the_addresses_on_its_port() {
    let dns = Dns::start().await;
    dns.set_addrs(
        "green.test",
        &[(lo(3), 5), (lo(2), 1), ("fd00::7".parse().unwrap(), 3)],
    );
    let mut source = DnsSource::a("green.test.", 8080).with_resolver(dns.config());
    assert_eq!(source.describe(), "dns:green.test.:8080");
    let snapshot = source.snapshot().await.unwrap();
    let spec = |authority: &str| {
        (
            authority.to_owned(),
            EndpointSpec::new(authority).host("green.test:8080"),
        )
    };
    assert_eq!(
        snapshot.endpoints,
        vec![
            spec("127.0.0.2:8080"),
            spec("127.0.0.3:8080"),
            spec("[fd00::7]:8080"),
        ]
    );
    // The least of the records' TTLs.
    assert_eq!(snapshot.ttl, Some(Duration::from_secs(1)));

    // A change is seen by the next answer: nothing is cached.
    dns.set_addrs("green.test", &[(lo(4), 30)]);
    let snapshot = source.snapshot().await.unwrap();
    assert_eq!(snapshot.endpoints, vec![spec("127.0.0.4:8080")]);
    assert_eq!(snapshot.ttl, Some(Duration::from_secs(30)));
}

#[tokio::test]
async fn failed_and_empty_answers_are_errors() {
    let dns = Dns::start().await;
    dns.set_addrs("green.test", &[(lo(2), 1)]);
    let mut source = DnsSource::a("green.test", 80).with_resolver(dns.config());
    assert_eq!(source.snapshot().await.unwrap().endpoints.len(), 1);

    let mut unknown = DnsSource::a("nobody.test", 80).with_resolver(dns.config());
    let e = unknown.snapshot().await.unwrap_err();
    assert!(
        e.0.contains("nobody.test") && e.0.contains("NXDOMAIN"),
        "{e}"
    );

    // The name is known, with no address record.
    dns.set_addrs("green.test", &[]);
    let e = source.snapshot().await.unwrap_err();
    assert!(e.0.contains("no A or AAAA record"), "{e}");

    dns.set_addrs("green.test", &[(lo(2), 1)]);
    for (mode, why) in [
        (Mode::Empty, "no A or AAAA record"),
        (Mode::NxDomain, "NXDOMAIN"),
        (Mode::ServFail, "SERVFAIL"),
    ] {
        dns.set_mode(mode);
        let e = source.snapshot().await.unwrap_err();
        assert!(e.0.contains(why), "{mode:?}: {e}");
    }
    dns.set_mode(Mode::Records);
    assert_eq!(source.snapshot().await.unwrap().endpoints.len(), 1);

    let mut srv = DnsSource::srv("_http._tcp.nobody.test").with_resolver(dns.config());
    assert_eq!(srv.describe(), "srv:_http._tcp.nobody.test");
    let e = srv.snapshot().await.unwrap_err();
    assert!(e.0.contains("NXDOMAIN"), "{e}");
}

#[tokio::test]
async fn an_upstream_follows_its_a_records_up_and_down() {
    let dns = Dns::start().await;
    let (port, release) = servers(&[2, 3, 4]).await;
    let key = |n: u8| format!("127.0.0.{n}:{port}");
    dns.set_addrs("green.test", &[(lo(2), 1)]);
    let upstream = Upstream::new(&format!("http://green.test:{port}")).unwrap();
    let following = discovery::follow(
        &upstream,
        DnsSource::a("green.test", port).with_resolver(dns.config()),
        refresh(),
    );
    until("the first answer", || keys(&upstream) == [key(2)]).await;
    assert_eq!(
        get(&upstream, "/").await,
        (StatusCode::OK, "127.0.0.2".into())
    );

    // Scale up: the new servers take requests.
    dns.set_addrs("green.test", &[(lo(2), 1), (lo(3), 1), (lo(4), 1)]);
    until("three endpoints", || {
        keys(&upstream) == [key(2), key(3), key(4)]
    })
    .await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        let (status, body) = get(&upstream, "/").await;
        assert_eq!(status, StatusCode::OK);
        answers.push(body);
    }
    answers.sort();
    assert_eq!(answers, ["127.0.0.2", "127.0.0.3", "127.0.0.4"]);

    // Scale down while slow requests are in flight, one on each server:
    // the one removed drains, and its request completes.
    let mut slow = Vec::new();
    for _ in 0..3 {
        let upstream = upstream.clone();
        slow.push(tokio::spawn(async move { get(&upstream, "/slow").await }));
    }
    until("the slow requests in flight", || {
        upstream.endpoints().iter().all(|e| e.in_flight == 1)
    })
    .await;
    dns.set_addrs("green.test", &[(lo(2), 1), (lo(3), 1)]);
    until("the removed endpoint draining", || {
        upstream
            .endpoints()
            .iter()
            .any(|e| e.key == key(4) && e.draining && e.in_flight == 1)
    })
    .await;
    assert_eq!(keys(&upstream), [key(2), key(3)]);
    // It takes no new request.
    for _ in 0..4 {
        let (status, body) = get(&upstream, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_ne!(body, "127.0.0.4");
    }
    release.send(true).unwrap();
    let mut answers = Vec::new();
    for request in slow {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        answers.push(body);
    }
    answers.sort();
    assert_eq!(answers, ["127.0.0.2", "127.0.0.3", "127.0.0.4"]);
    until("the drained endpoint gone", || {
        upstream.endpoints().iter().all(|e| e.key != key(4))
    })
    .await;
    let status = following.status();
    assert_eq!(status.source, format!("dns:green.test:{port}"));
    assert_eq!((status.endpoints, status.stale), (2, false));
    assert!(status.updates >= 3, "{status:?}");
}

#[tokio::test]
async fn an_outage_or_an_empty_answer_keeps_the_last_endpoints() {
    let dns = Dns::start().await;
    let (port, _release) = servers(&[2, 3]).await;
    let listed = vec![format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}")];
    dns.set_addrs("green.test", &[(lo(2), 1), (lo(3), 1)]);
    let upstream = Upstream::new(&format!("http://green.test:{port}")).unwrap();
    let following = discovery::follow(
        &upstream,
        DnsSource::a("green.test", port).with_resolver(dns.config()),
        refresh(),
    );
    until("the first answer", || keys(&upstream) == listed).await;

    for (mode, why) in [
        (Mode::ServFail, "SERVFAIL"),
        (Mode::Silent, ""),
        (Mode::Empty, "no A or AAAA record"),
        (Mode::NxDomain, "NXDOMAIN"),
    ] {
        dns.set_mode(mode);
        until(&format!("{mode:?} noted"), || {
            let s = following.status();
            s.stale && s.last_error.as_deref().is_some_and(|e| e.contains(why))
        })
        .await;
        // Longer than remove_after answers: the endpoints stay, and serve.
        let failures = following.status().failures;
        until("two more failures", || {
            following.status().failures >= failures + 2
        })
        .await;
        assert_eq!(keys(&upstream), listed, "{mode:?}");
        assert_eq!(get(&upstream, "/").await.0, StatusCode::OK);
        let status = following.status();
        assert!(status.stale && !status.expired, "{mode:?}: {status:?}");
        assert_eq!(status.endpoints, 2);

        dns.set_mode(Mode::Records);
        until("recovery", || {
            let s = following.status();
            !s.stale && s.last_error.is_none()
        })
        .await;
        assert_eq!(keys(&upstream), listed);
    }
}

#[tokio::test]
async fn srv_records_of_the_lowest_priority_give_targets_ports_and_weights() {
    let dns = Dns::start().await;
    let a = crate::support::net::serve(app("a".into(), tokio::sync::watch::channel(true).1)).await;
    let b = crate::support::net::serve(app("b".into(), tokio::sync::watch::channel(true).1)).await;
    let c = crate::support::net::serve(app("c".into(), tokio::sync::watch::channel(true).1)).await;
    dns.set_addrs("a.svc.test", &[(lo(1), 5)]);
    dns.set_addrs("b.svc.test", &[(lo(1), 2)]);
    dns.set_addrs("c.svc.test", &[(lo(1), 5)]);
    let srv = |priority, weight, port, target| Srv {
        priority,
        weight,
        port,
        target,
        ttl: 4,
    };
    dns.set_srv(
        "_http._tcp.svc.test",
        vec![
            srv(20, 5, c.port(), "c.svc.test"),
            srv(10, 3, a.port(), "a.svc.test"),
            // A weight of 0 counts as 1.
            srv(10, 0, b.port(), "b.svc.test"),
        ],
    );

    // Without the targets' addresses in the answer, and with them.
    for additionals in [false, true] {
        dns.zone().additionals = additionals;
        let mut source = DnsSource::srv("_http._tcp.svc.test").with_resolver(dns.config());
        let snapshot = source.snapshot().await.unwrap();
        let endpoint = |addr: SocketAddr, host: &str, weight| {
            (
                addr.to_string(),
                EndpointSpec::new(addr.to_string())
                    .host(host)
                    .weight(weight),
            )
        };
        let mut want = vec![
            endpoint(a, &format!("a.svc.test:{}", a.port()), 3),
            endpoint(b, &format!("b.svc.test:{}", b.port()), 1),
        ];
        want.sort_by_key(|(k, _)| k.parse::<SocketAddr>().unwrap());
        assert_eq!(snapshot.endpoints, want, "additionals: {additionals}");
        // The least TTL of the records used (b's address), not c's.
        assert_eq!(
            snapshot.ttl,
            Some(Duration::from_secs(2)),
            "additionals: {additionals}"
        );
    }

    let upstream = Upstream::new("http://svc.test").unwrap();
    let _following = discovery::follow(
        &upstream,
        DnsSource::srv("_http._tcp.svc.test").with_resolver(dns.config()),
        refresh(),
    );
    until("the SRV targets", || keys(&upstream).len() == 2).await;
    let mut weights: Vec<(String, u32)> = upstream
        .endpoints()
        .into_iter()
        .map(|e| (e.key, e.weight))
        .collect();
    weights.sort();
    let mut want = vec![(a.to_string(), 3), (b.to_string(), 1)];
    want.sort();
    assert_eq!(weights, want);
    let mut answers = Vec::new();
    for _ in 0..8 {
        let (status, body) = get(&upstream, "/").await;
        assert_eq!(status, StatusCode::OK);
        answers.push(body);
    }
    assert!(!answers.iter().any(|a| a == "c"), "{answers:?}");
    assert!(
        answers.iter().any(|x| x == "a") && answers.iter().any(|x| x == "b"),
        "{answers:?}"
    );

    // The backups take over only when the records say so.
    dns.set_srv(
        "_http._tcp.svc.test",
        vec![srv(20, 5, c.port(), "c.svc.test")],
    );
    until("the backup", || keys(&upstream) == [c.to_string()]).await;
    assert_eq!(get(&upstream, "/").await, (StatusCode::OK, "c".into()));
}

/// The gateway's `discovery = { dns = …, nameserver = … }`: the upstream
/// follows the name, `GET /upstreams` says where its servers came from,
/// and `/metrics` counts the source's answers.
#[tokio::test]
async fn a_gateway_upstream_follows_dns_from_its_config() {
    use switchyard::gateway::{Gateway, GatewayConfig, admin};

    let dns = Dns::start().await;
    let (port, _release) = servers(&[5, 6]).await;
    dns.set_addrs("green.test", &[(lo(5), 1)]);
    let config = format!(
        r#"
[admin]
keys = [{{ key = "root-key", id = "root" }}]
[upstreams.green]
url = "http://green.test:{port}"
discovery = {{ dns = "green.test", nameserver = "{}", refresh_min_ms = 50, refresh_max_ms = 2000 }}
[[routes]]
name = "api"
split.targets = [{{ name = "green", upstream = "green", weight = 100 }}]
"#,
        dns.addr
    );
    let gateway = Gateway::from_config(GatewayConfig::from_toml(&config).unwrap()).unwrap();
    let upstream = gateway.upstream("green").unwrap();
    until("the first answer", || {
        keys(&upstream) == [format!("127.0.0.5:{port}")]
    })
    .await;
    dns.set_addrs("green.test", &[(lo(5), 1), (lo(6), 1)]);
    until("two servers", || keys(&upstream).len() == 2).await;

    let admin = crate::support::net::serve(admin::router(&gateway).unwrap()).await;
    let client: crate::support::net::HttpClient =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let auth = [("authorization", "Bearer root-key")];
    let res = crate::support::net::get(&client, admin, "/upstreams/green", &auth).await;
    let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
    let source = format!("dns:green.test:{port}");
    assert_eq!(v["discovery"]["source"], source.as_str(), "{v}");
    assert_eq!(v["discovery"]["endpoints"], 2, "{v}");
    assert!(
        v["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["source"] == source.as_str()),
        "{v}"
    );
    let res = crate::support::net::get(&client, admin, "/metrics", &auth).await;
    let metrics = String::from_utf8_lossy(res.body()).into_owned();
    let want = format!(r#"switchyard_discovery_endpoints{{upstream="green",source="{source}"}} 2"#);
    assert!(metrics.contains(&want), "{metrics}");

    // Mistakes in the section are the config's.
    for (discovery, at) in [
        (r#"{ dns = "a", file = "b" }"#, "upstreams.green.discovery"),
        (r#"{ }"#, "upstreams.green.discovery"),
        (
            r#"{ dns = "a", nameserver = "nope" }"#,
            "upstreams.green.discovery.nameserver",
        ),
        (
            r#"{ file = "x", refresh_min_ms = 0 }"#,
            "upstreams.green.discovery.refresh_min_ms",
        ),
        (
            r#"{ file = "x", refresh_min_ms = 500, refresh_max_ms = 100 }"#,
            "upstreams.green.discovery.refresh_max_ms",
        ),
        (
            r#"{ file = "x", remove_after = 0 }"#,
            "upstreams.green.discovery.remove_after",
        ),
    ] {
        let bad =
            format!("[upstreams.green]\nurl = \"http://green.test:80\"\ndiscovery = {discovery}\n");
        let e = Gateway::from_config(GatewayConfig::from_toml(&bad).unwrap()).unwrap_err();
        assert!(e.problems.iter().any(|p| p.at == at), "{discovery}: {e}");
    }
    let both = "[upstreams.green]\nurl = \"http://green.test:80\"\nendpoints = [\"http://x:1\"]\ndiscovery = { file = \"x\" }\n";
    let e = Gateway::from_config(GatewayConfig::from_toml(both).unwrap()).unwrap_err();
    assert!(
        e.to_string().contains("cannot be given with `endpoints`"),
        "{e}"
    );
}
