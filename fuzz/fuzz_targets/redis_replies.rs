//! Everything switchyard parses back from Redis, through its public API
//! against a fake Redis on 127.0.0.1 that answers with fuzzed (well-formed
//! RESP) replies:
//!
//! * the rate limiter's script answer (`EVALSHA`, read as the refusing
//!   quota, the wait and one arrival time per quota), through a
//!   `RedisRateLimitLayer` with two quotas and its handle's `check`: no
//!   panic; a request is allowed, or refused with 429 only when the
//!   answer names one of the quotas;
//! * the weight sync's `HMGET version weights` (a JSON document), through
//!   `WeightSync::sync_once` over a split, a model router (its catalog's
//!   versions and pins, and an alias), a Redis rate limiter and an
//!   upstream's servers: no panic; whatever a round applies is valid, and is then
//!   exactly what this replica would publish (so replicas converge
//!   instead of publishing back and forth).
#![no_main]

mod common;

use std::convert::Infallible;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use switchyard::body::RequestBody;
use switchyard::key::{Key, KeyBy};
use switchyard::model::{Alias, Catalog, Model, ModelHandle, ModelRouter};
use switchyard::ratelimit::Quota;
use switchyard::ratelimit::redis::{RedisFailure, RedisRateLimitHandle, RedisRateLimitLayer};
use switchyard::split::{Split, SplitHandle};
use switchyard::sync::WeightSync;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tower::{Layer, ServiceExt, service_fn};

/// The replies the fake Redis gives: to `EVALSHA`/`EVAL`, to `HMGET`.
static REPLIES: Mutex<(Vec<u8>, Vec<u8>)> = Mutex::new((Vec::new(), Vec::new()));

async fn read_command<R: AsyncReadExt + Unpin>(r: &mut R) -> Option<Vec<Vec<u8>>> {
    async fn line<R: AsyncReadExt + Unpin>(r: &mut R) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let b = r.read_u8().await.ok()?;
            if b == b'\n' {
                out.pop();
                return Some(out);
            }
            out.push(b);
        }
    }
    let head = line(r).await?;
    let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let len = line(r).await?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        let mut arg = vec![0; len + 2];
        r.read_exact(&mut arg).await.ok()?;
        arg.truncate(len);
        args.push(arg);
    }
    Some(args)
}

fn start_fake_redis() -> String {
    let rt = common::runtime();
    let _entered = rt.enter();
    let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std.set_nonblocking(true).unwrap();
    let addr = std.local_addr().unwrap();
    let listener = tokio::net::TcpListener::from_std(std).unwrap();
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut r = BufReader::new(r);
                while let Some(args) = read_command(&mut r).await {
                    let cmd = args
                        .first()
                        .map(|c| c.to_ascii_uppercase())
                        .unwrap_or_default();
                    let reply = {
                        let replies = REPLIES.lock().unwrap();
                        match &cmd[..] {
                            b"EVALSHA" | b"EVAL" => replies.0.clone(),
                            b"HMGET" => replies.1.clone(),
                            b"PING" => b"+PONG\r\n".to_vec(),
                            _ => b"+OK\r\n".to_vec(),
                        }
                    };
                    if w.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("redis://{addr}/")
}

/// A well-formed RESP value from fuzz bytes.
fn resp(data: &mut &[u8], depth: u32, out: &mut Vec<u8>) {
    let take = |data: &mut &[u8], n: usize| -> Vec<u8> {
        let n = n.min(data.len());
        let (a, b) = data.split_at(n);
        *data = b;
        a.to_vec()
    };
    let Some((&tag, rest)) = data.split_first() else {
        out.extend_from_slice(b":0\r\n");
        return;
    };
    *data = rest;
    match tag % 8 {
        0 | 1 | 2 => {
            // Small integers mostly, sometimes any i64.
            let v = if tag & 0x80 == 0 {
                i64::from(tag as i8 >> 3)
            } else {
                let mut b = [0u8; 8];
                let t = take(data, 8);
                b[..t.len()].copy_from_slice(&t);
                i64::from_le_bytes(b)
            };
            out.extend_from_slice(format!(":{v}\r\n").as_bytes());
        }
        3 => {
            let n = usize::from(data.first().copied().unwrap_or(0) % 64);
            *data = data.get(1..).unwrap_or_default();
            let s = take(data, n);
            out.extend_from_slice(format!("${}\r\n", s.len()).as_bytes());
            out.extend_from_slice(&s);
            out.extend_from_slice(b"\r\n");
        }
        4 => out.extend_from_slice(b"$-1\r\n"),
        5 if depth < 3 => {
            let n = usize::from(tag >> 3) % 8;
            out.extend_from_slice(format!("*{n}\r\n").as_bytes());
            for _ in 0..n {
                resp(data, depth + 1, out);
            }
        }
        6 => out.extend_from_slice(b"-ERR fuzz\r\n"),
        _ => out.extend_from_slice(b"+OK\r\n"),
    }
}

fn bulk(s: &[u8]) -> Vec<u8> {
    let mut out = format!("${}\r\n", s.len()).into_bytes();
    out.extend_from_slice(s);
    out.extend_from_slice(b"\r\n");
    out
}

type Answer = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

/// A split's or a model router's target (they hand it a `RequestBody`).
fn ok(_: Request<RequestBody<Full<Bytes>>>) -> Answer {
    std::future::ready(Ok(Response::new(Full::new(Bytes::new()))))
}

/// The rate limiter's inner service.
fn ok_plain(_: Request<Full<Bytes>>) -> Answer {
    std::future::ready(Ok(Response::new(Full::new(Bytes::new()))))
}

struct World {
    limit: RedisRateLimitLayer,
    limit_handle: RedisRateLimitHandle,
    split: SplitHandle,
    model: ModelHandle,
    upstream: switchyard::proxy::Upstream,
    sync: WeightSync,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let url = start_fake_redis();
        let rt = common::runtime();
        rt.block_on(async {
            let conn = redis::Client::open(url.as_str())
                .unwrap()
                .get_connection_manager()
                .await
                .unwrap();
            let limit = RedisRateLimitLayer::builder(conn.clone())
                .key_by(KeyBy::header(http::HeaderName::from_static("x-user")))
                .quota(Quota::per_second(10).named("second"))
                .quota(Quota::per_minute(100).burst(20).named("minute"))
                .on_redis_failure(RedisFailure::Allow)
                .breaker(u32::MAX, Duration::from_millis(1))
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let limit_handle = limit.handle();
            let split = Split::builder()
                .target("blue", service_fn(ok as fn(_) -> _), 90)
                .target("green", service_fn(ok as fn(_) -> _), 10)
                .build()
                .unwrap()
                .handle();
            let model = ModelRouter::builder()
                .upstream("a", service_fn(ok as fn(_) -> _))
                .catalog(
                    Catalog::new()
                        .model(Model::new("blue", "a"))
                        .model(Model::new("green", "a"))
                        .alias(Alias::new("chat", [("blue", 90), ("green", 10)])),
                )
                .build()
                .unwrap()
                .handle();
            let upstream = switchyard::proxy::Upstream::builder("http://127.0.0.1:1")
                .endpoint("http://127.0.0.1:2")
                .build()
                .unwrap();
            let sync = WeightSync::builder(conn)
                .split("s", split.clone())
                .model("m", model.clone())
                .rate_limit("l", limit_handle.clone())
                .upstream("u", upstream.clone())
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            World {
                limit,
                limit_handle,
                split,
                model,
                upstream,
                sync,
            }
        })
    })
}

/// What a replica publishes for its limiter (as `sync` documents it).
fn limit_doc(h: &RedisRateLimitHandle) -> Value {
    let quotas: Vec<Value> = h
        .quotas()
        .iter()
        .map(|q| {
            json!({
                "name": q.name(),
                "count": q.count(),
                "period_us": u64::try_from(q.period().as_micros()).unwrap_or(u64::MAX),
                "burst": q.burst_size(),
            })
        })
        .collect();
    json!({ "quotas": quotas, "dry_run": h.dry_run() })
}

/// What a replica publishes for a model router's catalog.
fn catalog_doc(h: &ModelHandle) -> Value {
    let catalog = h.catalog();
    json!({ "models": catalog.models, "pins": catalog.pins })
}

/// What a replica publishes for an upstream's servers.
fn endpoints_doc(u: &switchyard::proxy::Upstream) -> Value {
    let list: Vec<Value> = u
        .endpoint_specs()
        .into_iter()
        .map(|(key, spec)| {
            json!({ "key": key, "authority": spec.authority, "host": spec.host, "weight": spec.weight })
        })
        .collect();
    Value::Array(list)
}

/// The answer as the limiter reads it (redis' conversion to `Vec<i64>`):
/// an array of four, each an integer, or a bulk or simple string that
/// parses as one (a found crash: `$1\r\n0` is read as 0). `None` for any
/// other shape.
fn four_ints(answer: &[u8]) -> Option<Vec<i64>> {
    // One line from `at`, without its CRLF, and where the next begins.
    fn line(answer: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let rest = answer.get(at..)?;
        let end = rest.windows(2).position(|w| w == b"\r\n")?;
        Some((&rest[..end], at + end + 2))
    }
    let int = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<i64>().ok();
    let (head, mut at) = line(answer, 0)?;
    if head != b"*4" {
        return None;
    }
    let mut ints = Vec::new();
    for _ in 0..4 {
        let (l, next) = line(answer, at)?;
        let (&kind, rest) = l.split_first()?;
        at = next;
        ints.push(match kind {
            b':' | b'+' => int(rest)?,
            b'$' => {
                let len: usize = std::str::from_utf8(rest).ok()?.parse().ok()?;
                let bytes = answer.get(at..at + len)?;
                at += len + 2;
                int(bytes)?
            }
            _ => return None,
        });
    }
    Some(ints)
}

fn weights_doc(w: impl serde::Serialize) -> Value {
    serde_json::to_value(w).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut data)) = data.split_first() else {
        return;
    };
    let w = world();
    let rt = common::runtime();
    if mode & 1 == 0 {
        // The limiter's script answer.
        let mut answer = Vec::new();
        resp(&mut data, 0, &mut answer);
        REPLIES.lock().unwrap().0 = answer.clone();
        let svc = w.limit.layer(service_fn(ok_plain as fn(_) -> _));
        let req = Request::get("/")
            .header("x-user", "alice")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = rt.block_on(svc.oneshot(req)).unwrap();
        let status = res.status().as_u16();
        // Which quota the answer names, if it is the documented shape.
        let text = String::from_utf8_lossy(&answer);
        let ints = four_ints(&answer);
        match status {
            200 => {}
            429 => {
                let ints =
                    ints.unwrap_or_else(|| panic!("429 from an answer of another shape: {text:?}"));
                assert!((1..=2).contains(&ints[0]), "429 naming no quota: {text:?}");
            }
            s => panic!("status {s} for answer {text:?}"),
        }
        for d in [
            rt.block_on(w.limit_handle.check(&Key::from("bob"), 1)),
            rt.block_on(w.limit_handle.peek(&Key::from("bob"), 1)),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(i) = d.refused_by() {
                assert!(i < 2, "a decision refused by quota {i} of 2: {text:?}");
            }
            for i in 0..2 {
                let _ = d.quota(i);
            }
            let _ = d.retry_after();
        }
    } else {
        // The weight sync's read.
        let version = data.first().copied().unwrap_or(1);
        let json = data.get(2..).unwrap_or_default();
        let mut reply = b"*2\r\n".to_vec();
        reply.extend(bulk(version.to_string().as_bytes()));
        reply.extend(bulk(json));
        REPLIES.lock().unwrap().1 = reply;
        // What a publication is answered with (a version, or not).
        let publish: &[u8] = match data.get(1).copied().unwrap_or(0) % 8 {
            0 => b":0\r\n",
            1 => b":-1\r\n",
            2 => b"$-1\r\n",
            3 => b"-ERR fuzz\r\n",
            4 => b"*0\r\n",
            5 => b":18446744073709551615\r\n",
            _ => b":7\r\n",
        };
        REPLIES.lock().unwrap().0 = publish.to_vec();
        let before = w.sync.stats();
        let (split0, model0, limit0, catalog0, upstream0) = (
            weights_doc(w.split.weights()),
            weights_doc(w.model.weights("chat").unwrap()),
            limit_doc(&w.limit_handle),
            catalog_doc(&w.model),
            endpoints_doc(&w.upstream),
        );
        rt.block_on(w.sync.sync_once());
        let after = w.sync.stats();
        let doc: Option<Value> = serde_json::from_slice(json).ok();
        let now = [
            (split0, weights_doc(w.split.weights())),
            (model0, weights_doc(w.model.weights("chat").unwrap())),
            (limit0, limit_doc(&w.limit_handle)),
            (catalog0, catalog_doc(&w.model)),
            (upstream0, endpoints_doc(&w.upstream)),
        ];
        for (was, is) in &now {
            if was != is {
                let doc = doc
                    .as_ref()
                    .expect("changed by a document that is not JSON");
                assert_eq!(
                    is, doc,
                    "applied, but this replica would now publish something else"
                );
            }
        }
        assert!(after.applied >= before.applied);
        // Weights stay usable: some target still takes traffic.
        assert!(
            w.split.weights().iter().any(|(_, weight)| weight > 0),
            "{:?}",
            w.split.weights()
        );
        assert!(
            w.model
                .weights("chat")
                .unwrap()
                .iter()
                .any(|(_, weight)| weight > 0)
        );
    }
});
