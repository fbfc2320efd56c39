//! `switchyard::model::ModelRouter`, end to end with `oneshot`: the
//! `model` field splice and the usage scan.
//!
//! * A fuzzed request body naming the alias `chat` (or the version `m1`)
//!   reaches the upstream with `model` rewritten to the upstream's name
//!   (one that needs JSON escapes) and, parsed by serde_json, every other
//!   value as sent; `Content-Length` matches. A body that is not one JSON
//!   object with one `model` string naming a known model never reaches
//!   the upstream; one that is always does.
//! * The upstream answers a server-sent event stream: fuzzed bytes, then a
//!   final `usage` event, cut into fuzzed chunks. The version's token
//!   counts grow by exactly that event's counts.
//! * Or (an odd number of cuts) the same bytes with no `Content-Type`: for
//!   a request that does not mention `stream`, the counts grow by the
//!   final usage if the body opens (past whitespace) with `{`, and not at
//!   all otherwise.
#![no_main]

mod common;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use switchyard::body::RequestBody;
use switchyard::model::{Alias, Catalog, Model, ModelRouter};
use tower::{ServiceExt, service_fn};

const UPSTREAM_NAME: &str = "vendor/\"m1\"\\v\u{2028}é";

/// A response body in the chunks given.
struct Chunks(VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

struct Plan {
    chunks: VecDeque<Bytes>,
    untyped: bool,
    seen: Option<(http::HeaderMap, Bytes)>,
}

static PLAN: Mutex<Plan> = Mutex::new(Plan {
    chunks: VecDeque::new(),
    untyped: false,
    seen: None,
});

type Upstream = tower::util::ServiceFn<
    fn(
        Request<RequestBody<Full<Bytes>>>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Chunks>, Infallible>> + Send>>,
>;

fn serve(
    req: Request<RequestBody<Full<Bytes>>>,
) -> Pin<Box<dyn Future<Output = Result<Response<Chunks>, Infallible>> + Send>> {
    Box::pin(async move {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let mut plan = PLAN.lock().unwrap();
        plan.seen = Some((parts.headers, body));
        let chunks = std::mem::take(&mut plan.chunks);
        let mut res = Response::new(Chunks(chunks));
        if !plan.untyped {
            res.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("text/event-stream"),
            );
        }
        Ok(res)
    })
}

fn router() -> &'static ModelRouter<Upstream> {
    static R: OnceLock<ModelRouter<Upstream>> = OnceLock::new();
    R.get_or_init(|| {
        ModelRouter::builder()
            .upstream("a", service_fn(serve as fn(_) -> _))
            .catalog(
                Catalog::new()
                    .model(Model::new("m1", "a").upstream_model(UPSTREAM_NAME))
                    .alias(Alias::new("chat", [("m1", 100)])),
            )
            .build()
            .unwrap()
    })
}

/// How many top-level `model` keys a JSON object has (keys unescaped).
fn model_keys(body: &[u8]) -> Option<usize> {
    struct Count;
    impl<'de> Visitor<'de> for Count {
        type Value = usize;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
            let mut n = 0;
            while let Some(k) = map.next_key::<String>()? {
                n += usize::from(k == "model");
                map.next_value::<IgnoredAny>()?;
            }
            Ok(n)
        }
    }
    struct Doc(usize);
    impl<'de> serde::Deserialize<'de> for Doc {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(Count).map(Doc)
        }
    }
    serde_json::from_slice::<Doc>(body).ok().map(|d| d.0)
}

fuzz_target!(|data: &[u8]| {
    let p = common::parts(data, 3);
    let (body, prefix, spec) = (p[0], p[1], p[2]);
    let (tokens, cuts) = spec.split_at(spec.len().min(4));
    let mut t = [0u8; 4];
    t[..tokens.len()].copy_from_slice(tokens);
    let (prompt, completion) = (
        u64::from(u16::from_le_bytes([t[0], t[1]])),
        u64::from(u16::from_le_bytes([t[2], t[3]])),
    );
    let mut stream = prefix.to_vec();
    stream.extend_from_slice(
        format!("\n\ndata: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion}}}}}\n\ndata: [DONE]\n\n").as_bytes(),
    );
    let mut chunks = VecDeque::new();
    let mut rest = &stream[..];
    for &c in cuts {
        let n = (usize::from(c) * 37 + 1).min(rest.len());
        chunks.push_back(Bytes::copy_from_slice(&rest[..n]));
        rest = &rest[n..];
    }
    if !rest.is_empty() {
        chunks.push_back(Bytes::copy_from_slice(rest));
    }
    let untyped = cuts.len() % 2 == 1;
    let opens_object = stream.iter().find(|c| !c.is_ascii_whitespace()) == Some(&b'{');
    {
        let mut plan = PLAN.lock().unwrap();
        plan.chunks = chunks;
        plan.untyped = untyped;
        plan.seen = None;
    }

    let router = router();
    let before = router.handle().model_stats("m1").unwrap();
    let req = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let status = common::runtime().block_on(async {
        let res = router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        res.into_body().collect().await.unwrap();
        status
    });
    let seen = PLAN.lock().unwrap().seen.take();
    let after = router.handle().model_stats("m1").unwrap();

    let original: Option<Value> = serde_json::from_slice(body).ok();
    let names_known = original
        .as_ref()
        .and_then(|v| v.get("model"))
        .and_then(Value::as_str)
        .is_some_and(|m| m == "chat" || m == "m1");
    let single = model_keys(body) == Some(1);
    let Some((headers, sent)) = seen else {
        assert!(
            !(names_known && single),
            "a valid request was refused: {status}"
        );
        return;
    };
    assert!(single, "forwarded a body without exactly one model key");
    if let Some(mut want) = original {
        assert!(names_known, "forwarded a request for another model: {want}");
        want["model"] = Value::String(UPSTREAM_NAME.into());
        let got: Value = serde_json::from_slice(&sent).unwrap_or_else(|e| {
            panic!(
                "spliced body is not JSON ({e}): {}",
                String::from_utf8_lossy(&sent)
            )
        });
        assert_eq!(got, want, "splice changed more than the model");
    }
    if let Some(len) = headers.get("content-length") {
        assert_eq!(len.to_str().unwrap(), sent.len().to_string());
    }
    let grew = (
        after.prompt_tokens - before.prompt_tokens,
        after.completion_tokens - before.completion_tokens,
    );
    let mentions_stream = body.windows(6).any(|w| w == b"stream");
    if untyped && !mentions_stream && !opens_object {
        assert_eq!(
            grew,
            (0, 0),
            "usage read from an untyped body that is not JSON"
        );
    } else if (prompt > 0 || completion > 0) && (!untyped || !mentions_stream) {
        assert_eq!(
            grew,
            (prompt, completion),
            "usage scan missed the final event"
        );
    }
});
