//! JSON body rewriting in `switchyard::transform::TransformLayer`, driven
//! with `oneshot`: for a fuzzed body and a fuzzed list of `remove` /
//! `rename` / `set` rules (pointers and values from a vocabulary that
//! includes RFC 6901 escapes, array indexes, `-` and templates), the body
//! the inner service receives, parsed by serde_json, equals what a
//! reference applying the same rules to a `serde_json::Value` intends; a
//! body no rule reached goes on byte for byte; invalid JSON is a 400.
#![no_main]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use switchyard::body::RequestBody;
use switchyard::transform::{RuleSet, Rules, TransformLayer};
use tower::{Layer, ServiceExt, service_fn};

const POINTERS: [&str; 20] = [
    "/a", "/b", "/a/b", "/a/0", "/0", "/arr", "/arr/-", "/arr/0", "/arr/1", "/arr/+0", "/arr/01",
    "/x~1y", "/~0", "/", "/a/b/c", "/model", "/user", "/arr/0/a", "/b/-", "/a/",
];

fn values() -> [(Value, Value); 8] {
    // (the rule's value, what it renders to for the request below)
    [
        (json!(1), json!(1)),
        (json!("s"), json!("s")),
        (json!(null), json!(null)),
        (json!({"k": [1, "{method}"]}), json!({"k": [1, "POST"]})),
        (json!([]), json!([])),
        (json!("{header.x-user}/{query.q}"), json!("bob/a b")),
        (json!("{{lit}}"), json!("{lit}")),
        (json!({"nested": {"user": "{identity.id}"}}), Value::Null), // missing: skipped
    ]
}

#[derive(Clone, Debug)]
enum Op {
    Remove(&'static str),
    Rename(&'static str, &'static str),
    Set(&'static str, usize),
}

/// Whether any object in `body` (valid JSON) names a key twice.
fn has_duplicate_keys(body: &[u8]) -> bool {
    use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
    struct Dups;
    impl<'de> Visitor<'de> for Dups {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
            let mut seen = std::collections::HashSet::new();
            let mut dup = false;
            while let Some(key) = map.next_key::<String>()? {
                dup |= !seen.insert(key);
                dup |= map.next_value_seed(Seed)?;
            }
            Ok(dup)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
            let mut dup = false;
            while let Some(d) = seq.next_element_seed(Seed)? {
                dup |= d;
            }
            Ok(dup)
        }
        fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_str<E>(self, _: &str) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }
    }
    struct Seed;
    impl<'de> serde::de::DeserializeSeed<'de> for Seed {
        type Value = bool;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_any(Dups)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(body);
    serde::de::DeserializeSeed::deserialize(Seed, &mut de).unwrap_or(false)
}

fn tokens(pointer: &str) -> Vec<String> {
    pointer[1..]
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// RFC 6901 array index: `0`, or digits without a leading zero.
fn index(token: &str) -> Option<usize> {
    let ok = token == "0"
        || (!token.is_empty()
            && !token.starts_with('0')
            && token.bytes().all(|b| b.is_ascii_digit()));
    ok.then(|| token.parse().ok()).flatten()
}

fn child<'v>(v: &'v mut Value, t: &str) -> Option<&'v mut Value> {
    match v {
        Value::Object(m) => m.get_mut(t),
        Value::Array(a) => {
            let i = index(t)?;
            a.get_mut(i)
        }
        _ => None,
    }
}

fn take(doc: &mut Value, tokens: &[String]) -> Option<Value> {
    let (last, path) = tokens.split_last()?;
    let mut at = doc;
    for t in path {
        at = child(at, t)?;
    }
    match at {
        Value::Object(m) => m.shift_remove(last.as_str()),
        Value::Array(a) => {
            let i = index(last).filter(|&i| i < a.len())?;
            Some(a.remove(i))
        }
        _ => None,
    }
}

fn set(doc: &mut Value, tokens: &[String], value: Value) -> bool {
    let Some((last, path)) = tokens.split_last() else {
        return false;
    };
    let mut at = doc;
    for t in path {
        at = match at {
            Value::Object(m) => m.entry(t.clone()).or_insert_with(|| json!({})),
            Value::Array(a) => match index(t).filter(|&i| i < a.len()) {
                Some(i) => &mut a[i],
                None => return false,
            },
            _ => return false,
        };
    }
    match at {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            true
        }
        Value::Array(a) if last == "-" => {
            a.push(value);
            true
        }
        Value::Array(a) => match index(last) {
            Some(i) if i < a.len() => {
                a[i] = value;
                true
            }
            Some(i) if i == a.len() => {
                a.push(value);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    // One byte: how many rules (1 to 4); three bytes a rule; the body.
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 4) + 1;
    if rest.len() < 3 * n {
        return;
    }
    let (spec, body) = rest.split_at(3 * n);
    let vals = values();
    let ops: Vec<Op> = spec
        .chunks(3)
        .filter(|c| c.len() == 3)
        .map(|c| {
            let p = |b: u8| POINTERS[usize::from(b) % POINTERS.len()];
            match c[0] % 3 {
                0 => Op::Remove(p(c[1])),
                1 => Op::Rename(p(c[1]), p(c[2])),
                _ => Op::Set(p(c[1]), usize::from(c[2]) % vals.len()),
            }
        })
        .collect();
    if ops.is_empty() {
        return;
    }
    let set_ops = ops.clone();
    let rules = Rules::new()
        .body_limit(1 << 20)
        .set(RuleSet::new().request(move |r| {
            for op in &set_ops {
                match *op {
                    Op::Remove(p) => {
                        r.body.remove(p);
                    }
                    Op::Rename(f, t) => {
                        r.body.rename(f, t);
                    }
                    Op::Set(p, v) => {
                        r.body.set(p, values()[v].0.clone());
                    }
                }
            }
        }));
    let layer = TransformLayer::new(rules).expect("the vocabulary is valid");

    let seen = Arc::new(Mutex::new(None));
    let record = Arc::clone(&seen);
    let svc = layer.layer(service_fn(move |req: Request<RequestBody<Full<Bytes>>>| {
        let record = Arc::clone(&record);
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            *record.lock().unwrap() = Some(body);
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    }));
    let req = Request::post("/p?q=a%20b")
        .header("content-type", "application/json")
        .header("x-user", "bob")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let res = common::runtime().block_on(svc.oneshot(req)).unwrap();
    let got = seen.lock().unwrap().take();

    if ops.iter().all(|o| matches!(o, Op::Set(_, 7))) {
        // Every rule skipped (its template is missing): no body rule
        // applies, so the body is not even read.
        assert_eq!(got.as_deref(), Some(body), "{}", res.status());
        return;
    }
    if body.is_empty() {
        // A request without a body streams through (documented).
        assert_eq!(got.as_deref(), Some(&b""[..]), "{}", res.status());
        return;
    }
    if res.status() == 400 && got.is_none() && has_duplicate_keys(body) {
        // Duplicate keys are refused (issue 16): a last-wins parser
        // upstream would read another value than the rules checked.
        return;
    }
    let Ok(mut doc) = serde_json::from_slice::<Value>(body) else {
        // Numbers out of f64's range parse as raw text but not as a
        // `Value`: only a panic is wrong there.
        if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
            assert_eq!(res.status(), 400, "invalid JSON was not refused");
            assert!(got.is_none());
        }
        return;
    };
    // Remove, rename, set: the documented order, whatever the order written.
    let mut changed = false;
    for op in ops.iter().filter(|o| matches!(o, Op::Remove(_))) {
        let Op::Remove(p) = op else { unreachable!() };
        changed |= take(&mut doc, &tokens(p)).is_some();
    }
    for op in ops.iter().filter(|o| matches!(o, Op::Rename(..))) {
        let Op::Rename(f, t) = op else { unreachable!() };
        if let Some(v) = take(&mut doc, &tokens(f)) {
            set(&mut doc, &tokens(t), v);
            changed = true;
        }
    }
    for op in ops.iter().filter(|o| matches!(o, Op::Set(..))) {
        let Op::Set(p, v) = *op else { unreachable!() };
        if v == 7 {
            continue; // its template is missing: the rule is skipped
        }
        changed |= set(&mut doc, &tokens(p), vals[v].1.clone());
    }
    let got = got.unwrap_or_else(|| panic!("valid JSON refused: {}", res.status()));
    if !changed {
        assert_eq!(&got[..], body, "a body no rule reached was rewritten");
    }
    let out: Value = serde_json::from_slice(&got).unwrap_or_else(|e| {
        panic!(
            "rewritten body is not JSON ({e}): {}",
            String::from_utf8_lossy(&got)
        )
    });
    assert_eq!(
        out,
        doc,
        "ops {ops:?} on {}\ngave {}",
        String::from_utf8_lossy(body),
        String::from_utf8_lossy(&got)
    );
});
