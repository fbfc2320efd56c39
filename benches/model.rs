//! Cost of routing an OpenAI-style request through `ModelRouter`, and of
//! the token count it keeps while a response streams through it.
//!
//! Every function builds the same kind of request (`POST
//! /v1/chat/completions`, `content-type` and `content-length`, a
//! `Full<Bytes>` body cloned from a prebuilt one, so making it clones a
//! reference count) and drives `ready()` + `call` + the response future.
//! The upstreams answer with an immediately ready future and drop the
//! request (and its body) unread, whether the router called them or the
//! bench did, and a `Full` body is one chunk ready at once, so futures are
//! polled once with a no-op waker (which panics if they are not done)
//! instead of running an executor. Response bodies are polled the same
//! way.
//!
//! * `passthrough_2k`: a ~2 KiB chat-completions request straight to the
//!   upstream (an empty 200); the response is dropped.
//! * `select_rewrite_2k`: the same request through a `ModelRouter` with an
//!   alias `chat` over two versions weighted 90/10 (seeded), on two
//!   upstreams of the same type: the body is buffered (one chunk, not
//!   copied), parsed to find `model`, a version picked, the name spliced
//!   into a new body, the upstream called and the response wrapped.
//! * `passthrough_small` / `select_rewrite_small`: the same two with the
//!   small streaming request (~120 bytes) the streaming functions send.
//! * `stream_bare`: drain a 200-chunk SSE response body, frame by frame, to
//!   the end: 198 `chat.completion.chunk` deltas of ~160 bytes with
//!   `"usage":null`, one with the usage, then `data: [DONE]`, as an
//!   upstream streams them with `stream_options.include_usage`.
//! * `stream_scan`: the same body through the usage scanner: the
//!   `ModelBody` that the 90/10 `ModelRouter` (both of whose upstreams
//!   stream those events) answers with, which copies the last 4 KiB of
//!   chunks aside as they pass, reads the usage at the end and ends the
//!   version's in-flight count. (The tokens are checked once, untimed,
//!   through `ModelHandle::model_stats`.)
//!
//!   For both, the call that produces the response runs in Criterion's
//!   untimed setup (`iter_batched`): what is timed is the drain, so what
//!   differs between them is the scanner alone. The routing of the request
//!   is `select_rewrite_small` − `passthrough_small`.
//! * `stream_bare_http` / `stream_scan_http`: the same stream from a real
//!   hyper server on loopback, as the router meets it in production: the
//!   small request sent through `switchyard::proxy::Upstream` (pooled
//!   client, one kept-alive connection) straight, or through the 90/10
//!   router over two such upstreams, and the body drained as it arrives.
//!   One current-thread tokio runtime runs the server, the client's
//!   connection task and the measured request, as in `benches/gateway.rs`.
//!
//! The chunks are `Bytes` allocated once and shared, as a server's read
//! buffer hands them out: the body clones a reference count per chunk.
//!
//! ```text
//! cargo bench --bench model --features json -- --warm-up-time 1 --measurement-time 3
//! ```
//!
//! Budgets: `select_rewrite_2k` − `passthrough_2k` ≤ 5 µs; `stream_scan` ≤
//! 1.05 × `stream_bare`. In memory a frame costs ~15 ns (a reference count
//! taken and dropped), and copying a 160-byte chunk aside costs a few
//! nanoseconds of that, so the in-memory pair shows the scanner's cost per
//! frame rather than meeting the ratio; `stream_scan_http` /
//! `stream_bare_http` is the ratio a gateway sees.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Empty, Full};
use switchyard::model::{Alias, Catalog, Model, ModelChoice, ModelRouter};
use tower::{Service, ServiceExt};

// Only `now` is used here: `Noop` serves `Request<()>`, and the router
// hands its upstreams a `Request<RequestBody<_>>`.
#[allow(dead_code, reason = "the shared `Noop` target is not used here")]
mod support;
use support::now;

// === Requests ===

/// A ~2 KiB chat-completions request: a system prompt, a few turns, and
/// the usual sampling parameters.
fn chat_2k() -> Bytes {
    let turns = [
        (
            "user",
            "I am planning a three-day trip to Lisbon in early spring. What neighbourhoods should I stay in if I want to walk most places and eat well?",
        ),
        (
            "assistant",
            "Baixa and Chiado are central and flat by Lisbon standards; Alfama and Graca are older and hillier but full of small restaurants. Principe Real is quieter, with good cafes, and is a short walk downhill to the centre.",
        ),
        (
            "user",
            "Which of those is best for someone who does not like steep streets, and how far is it from the airport by metro?",
        ),
        (
            "assistant",
            "Baixa: it sits in the valley between the hills. The red metro line from the airport connects to the green or blue line, and the whole trip takes about thirty minutes with one change.",
        ),
        (
            "user",
            "Great. Can you suggest a rough plan for each day, with one museum, one viewpoint and one place for dinner per day? Keep it short.",
        ),
    ];
    let mut messages = vec![format!(
        r#"{{"role":"system","content":"{}"}}"#,
        "You are a helpful travel assistant. Answer concisely, prefer walking routes, mention opening hours when they matter, and never invent prices."
    )];
    messages.extend(
        turns
            .iter()
            .map(|(role, content)| format!(r#"{{"role":"{role}","content":"{content}"}}"#)),
    );
    let mut body = format!(
        r#"{{"model":"chat","messages":[{}],"temperature":0.7,"top_p":0.95,"max_tokens":1024,"presence_penalty":0,"frequency_penalty":0.2,"n":1,"stream":false,"user":"user-4711-","metadata":{{"session":"0f6c2a5e-9a41-4d2b-8d0c-3a9f1c7e5b21","team":"travel"}}}}"#,
        messages.join(","),
    );
    // Pad the `user` value to exactly 2 KiB.
    let pad = 2048 - body.len();
    let at = body.find("user-4711-").unwrap() + "user-4711-".len();
    body.insert_str(at, &"x".repeat(pad));
    assert_eq!(body.len(), 2048);
    serde_json::from_str::<serde_json::Value>(&body).expect("valid JSON");
    Bytes::from(body)
}

/// The small request of the streaming functions.
fn chat_small() -> Bytes {
    Bytes::from_static(
        br#"{"model":"chat","messages":[{"role":"user","content":"Say hi."}],"stream":true,"stream_options":{"include_usage":true}}"#,
    )
}

/// Makes the same request, over and over, from one prebuilt body.
struct Requests {
    body: Bytes,
    length: HeaderValue,
}

impl Requests {
    fn new(body: Bytes) -> Self {
        // Clone once: a `Bytes` from a `Vec` becomes shared on its first
        // clone, after which a clone is a reference count.
        drop(body.clone());
        Self {
            length: HeaderValue::from(body.len()),
            body,
        }
    }

    /// The request every function of a pair builds, identically.
    #[inline]
    fn build(&self) -> Request<Full<Bytes>> {
        Request::post("/v1/chat/completions")
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(CONTENT_LENGTH, self.length.clone())
            .body(Full::new(self.body.clone()))
            .unwrap()
    }
}

// === Upstreams ===

/// A model server that does nothing: always ready, drops the request (and
/// its body) unread, answers an empty 200 at once.
#[derive(Clone, Copy, Debug)]
struct Target;

impl<B> Service<Request<B>> for Target {
    type Response = Response<Empty<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        drop(req);
        ready(Ok(Response::new(Empty::new())))
    }
}

/// A model server that streams: always ready, drops the request unread,
/// answers at once with a `text/event-stream` of prebuilt events.
#[derive(Clone, Debug)]
struct Streamer {
    events: Arc<[Bytes]>,
}

impl<B> Service<Request<B>> for Streamer {
    type Response = Response<Events>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        drop(req);
        let mut res = Response::new(Events {
            events: Arc::clone(&self.events),
            next: 0,
        });
        res.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
        ready(Ok(res))
    }
}

/// A body of prebuilt chunks, each ready at once, one per frame.
#[derive(Debug)]
struct Events {
    events: Arc<[Bytes]>,
    next: usize,
}

impl Body for Events {
    type Data = Bytes;
    type Error = Infallible;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let frame = this.events.get(this.next).cloned().map(Frame::data);
        this.next += 1;
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.events.len()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.events.get(self.next..).unwrap_or_default();
        SizeHint::with_exact(rest.iter().map(|e| e.len() as u64).sum())
    }
}

const EVENTS: usize = 200;
const PROMPT_TOKENS: u64 = 17;
const COMPLETION_TOKENS: u64 = 198;

/// 200 server-sent events as OpenAI streams them with
/// `stream_options.include_usage`: deltas with `"usage":null`, a last
/// event with empty `choices` and the usage, then `[DONE]`. Each is
/// allocated once (a server's read buffer would hand out shared chunks).
fn sse_events() -> Arc<[Bytes]> {
    let head = r#"{"id":"chatcmpl-7","object":"chat.completion.chunk","model":"llama","#;
    let mut events: Vec<Bytes> = (0..EVENTS - 2)
        .map(|i| {
            format!(
                "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{i:03}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
            )
        })
        .chain([
            format!(
                "data: {head}\"choices\":[],\"usage\":{{\"prompt_tokens\":{PROMPT_TOKENS},\"completion_tokens\":{COMPLETION_TOKENS},\"total_tokens\":{}}}}}\n\n",
                PROMPT_TOKENS + COMPLETION_TOKENS
            ),
            "data: [DONE]\n\n".to_owned(),
        ])
        .map(Bytes::from)
        .collect();
    // Make each shared now (see `Requests::new`), not on the first poll.
    for e in &mut events {
        drop(e.clone());
    }
    assert_eq!(events.len(), EVENTS);
    events.into()
}

// === Driving ===

/// Ready, call and poll to completion (at once): the response.
#[inline]
fn call_once<S, B, R>(svc: &mut S, req: Request<B>) -> Response<R>
where
    S: Service<Request<B>, Response = Response<R>, Error = Infallible>,
{
    let svc = now(svc.ready()).unwrap();
    now(svc.call(req)).unwrap()
}

/// Polls a body to its end, every frame ready at once; the data bytes.
#[inline]
fn drain<B: Body<Data = Bytes>>(body: B) -> usize {
    let mut body = pin!(body);
    let mut cx = Context::from_waker(Waker::noop());
    let mut bytes = 0;
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                bytes += frame.data_ref().map_or(0, Bytes::len);
                drop(black_box(frame));
            }
            Poll::Ready(None) => return bytes,
            Poll::Ready(Some(Err(_))) => panic!("the benchmarked bodies do not fail"),
            Poll::Pending => panic!("the benchmarked bodies are always ready"),
        }
    }
}

// === Routers ===

/// `chat` over two versions weighted 90/10 on two upstreams, the second
/// renamed for its upstream (so every request's body is spliced).
fn router_90_10<S>(blue: S, green: S) -> ModelRouter<S> {
    ModelRouter::builder()
        .upstream("blue", blue)
        .upstream("green", green)
        .catalog(
            Catalog::new()
                .model(Model::new("llama-3.1-8b", "blue"))
                .model(Model::new("llama-3.3-70b", "green").upstream_model("meta/llama-3.3-70b"))
                .alias(Alias::new(
                    "chat",
                    [("llama-3.1-8b", 90), ("llama-3.3-70b", 10)],
                )),
        )
        .seed(0x5eed)
        .build()
        .unwrap()
}

// === Benchmarks ===

fn model(c: &mut Criterion) {
    let mut group = c.benchmark_group("model");

    // --- Routing a request ---

    let big = Requests::new(chat_2k());
    let small = Requests::new(chat_small());

    let mut direct = Target;
    let mut router = router_90_10(Target, Target);
    for reqs in [&big, &small] {
        let res = call_once(&mut router, reqs.build());
        assert_eq!(res.status(), 200);
        assert!(res.extensions().get::<ModelChoice>().is_some());
        assert!(res.headers().contains_key("x-switchyard-model"));
    }

    group.bench_function("passthrough_2k", |b| {
        b.iter(|| drop(black_box(call_once(&mut direct, big.build()))));
    });
    group.bench_function("select_rewrite_2k", |b| {
        b.iter(|| drop(black_box(call_once(&mut router, big.build()))));
    });
    group.bench_function("passthrough_small", |b| {
        b.iter(|| drop(black_box(call_once(&mut direct, small.build()))));
    });
    group.bench_function("select_rewrite_small", |b| {
        b.iter(|| drop(black_box(call_once(&mut router, small.build()))));
    });

    // --- Streaming a response ---

    let events = sse_events();
    let total: usize = events.iter().map(Bytes::len).sum();
    let mut direct = Streamer {
        events: Arc::clone(&events),
    };
    let streamer = direct.clone();
    let mut router = router_90_10(streamer.clone(), streamer);
    let handle = router.handle();

    // Once, untimed: the usage is counted, on whichever version served.
    const CHECKS: u64 = 10;
    let tokens = |h: &switchyard::model::ModelHandle| {
        ["llama-3.1-8b", "llama-3.3-70b"]
            .map(|m| h.model_stats(m).unwrap())
            .iter()
            .fold((0, 0, 0), |(p, c, f), s| {
                (
                    p + s.prompt_tokens,
                    c + s.completion_tokens,
                    f + s.in_flight,
                )
            })
    };
    let before = tokens(&handle);
    for _ in 0..CHECKS {
        let res = call_once(&mut router, small.build());
        assert_eq!(res.status(), 200);
        assert_eq!(drain(res.into_body()), total);
    }
    let after = tokens(&handle);
    assert_eq!(
        (after.0 - before.0, after.1 - before.1, after.2),
        (CHECKS * PROMPT_TOKENS, CHECKS * COMPLETION_TOKENS, 0),
        "tokens counted, nothing left in flight"
    );

    // The drain alone: the call (and the request's routing) in the untimed
    // setup, the response's head dropped there too.
    group.bench_function("stream_bare", |b| {
        b.iter_batched(
            || call_once(&mut direct, small.build()).into_body(),
            |body| black_box(drain(body)),
            BatchSize::SmallInput,
        );
    });
    group.bench_function("stream_scan", |b| {
        b.iter_batched(
            || call_once(&mut router, small.build()).into_body(),
            |body| black_box(drain(body)),
            BatchSize::SmallInput,
        );
    });

    translation(&mut group);
    over_loopback(&mut group);
    group.finish();

    let after = tokens(&handle);
    assert_eq!(after.2, 0, "nothing left in flight");
}

// === Translation ===

/// The 2 KiB chat request as an Anthropic Messages request.
fn messages_2k() -> Bytes {
    let chat: serde_json::Value = serde_json::from_slice(&chat_2k()).unwrap();
    let msgs = chat["messages"].as_array().unwrap();
    let body = serde_json::json!({
        "model": "chat",
        "system": msgs[0]["content"],
        "messages": msgs[1..],
        "max_tokens": 1024,
        "temperature": 0.7,
        "top_p": 0.95,
        "metadata": {"user_id": chat["user"]},
    });
    Bytes::from(serde_json::to_vec(&body).unwrap())
}

/// `n` events of a provider's stream, one per chunk: an opening, `n - 3`
/// text deltas of ~40 bytes of text, and the provider's closing events.
fn provider_stream(kind: &str, n: usize) -> Vec<Bytes> {
    let text = |i: usize| format!(" token {i:03} of a streamed answer, more");
    let mut out: Vec<String> = Vec::with_capacity(n);
    match kind {
        "anthropic" => {
            out.push(r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":17,"output_tokens":1}}}

"#.to_owned());
            out.push("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_owned());
            for i in 0..n - 5 {
                out.push(format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{}\"}}}}\n\n", text(i)));
            }
            out.push("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".to_owned());
            out.push("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":198}}\n\n".to_owned());
            out.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_owned());
        }
        "gemini" => {
            for i in 0..n {
                let finish = if i + 1 == n { r#","finishReason":"STOP""# } else { "" };
                out.push(format!(
                    "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{}\"}}],\"role\":\"model\"}},\"index\":0{finish}}}],\"usageMetadata\":{{\"promptTokenCount\":17,\"candidatesTokenCount\":{i},\"totalTokenCount\":{}}},\"modelVersion\":\"gemini-2.5-flash\",\"responseId\":\"r1\"}}\r\n\r\n",
                    text(i),
                    17 + i
                ));
            }
        }
        _ => {
            // OpenAI Chat chunks with the usage chunk and [DONE].
            let head = r#"{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1,"model":"gpt-4o","#;
            for i in 0..n - 2 {
                out.push(format!(
                    "data: {head}\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n",
                    text(i)
                ));
            }
            out.push(format!("data: {head}\"choices\":[],\"usage\":{{\"prompt_tokens\":17,\"completion_tokens\":198,\"total_tokens\":215}}}}\n\n"));
            out.push("data: [DONE]\n\n".to_owned());
        }
    }
    assert_eq!(out.len(), n, "{kind}");
    out.into_iter().map(Bytes::from).collect()
}

/// Request translation (a 2 KiB request, each provider), and stream
/// translation per event against handing the same chunks on untouched.
///
/// Budgets: `translate_request_2k/*` ≤ 10 µs; `(translate_stream/* −
/// stream_chunks_bare) / 200` ≤ 1 µs per event. `parse_2k` (serde_json
/// reading the request and throwing it away) is the floor any translation
/// that reads the body sits on.
fn translation(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    use switchyard::model::providers::sse::Parser;
    use switchyard::model::providers::{
        RequestOptions, StreamMapper, StreamOptions, anthropic, gemini, messages, openai,
    };

    let chat = chat_2k();
    let msgs = messages_2k();
    let opts = RequestOptions::new("claude-sonnet-4-5");
    assert!(anthropic::request_from_chat(&chat, &opts).is_ok());
    assert!(gemini::request_from_chat(&chat, &opts).is_ok());
    assert!(messages::request_to_chat(&msgs, &opts).is_ok());
    group.bench_function("parse_2k", |b| {
        b.iter(|| black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&chat)).unwrap()));
    });
    group.bench_function("translate_request_2k/anthropic", |b| {
        b.iter(|| black_box(anthropic::request_from_chat(black_box(&chat), &opts).unwrap()));
    });
    group.bench_function("translate_request_2k/gemini", |b| {
        b.iter(|| black_box(gemini::request_from_chat(black_box(&chat), &opts).unwrap()));
    });
    group.bench_function("translate_request_2k/messages_to_chat", |b| {
        b.iter(|| black_box(messages::request_to_chat(black_box(&msgs), &opts).unwrap()));
    });

    const N: usize = 200;
    let openai_events = provider_stream("openai", N);
    // The floor: the same chunks handed on, a reference count each.
    group.bench_function("stream_chunks_bare", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for e in &openai_events {
                let e = black_box(e.clone());
                bytes += e.len();
            }
            black_box(bytes)
        });
    });
    type Make = fn() -> Box<dyn StreamMapper>;
    let cases: [(&str, &str, Make); 4] = [
        ("anthropic_to_chat", "anthropic", || {
            Box::new(anthropic::ChatStream::new(StreamOptions::new("claude").created(1)))
        }),
        ("gemini_to_chat", "gemini", || {
            Box::new(gemini::ChatStream::new(StreamOptions::new("gemini").created(1)))
        }),
        ("chat_to_messages", "openai", || Box::new(messages::MessagesStream::new("gpt-4o"))),
        ("openai_hide_usage", "openai", || Box::new(openai::HideUsage::new())),
    ];
    for (name, kind, make) in cases {
        let events = provider_stream(kind, N);
        let run = |events: &[Bytes]| {
            let mut parser = Parser::new(1 << 20);
            let mut mapper = make();
            let mut written = 0;
            let mut out = Vec::new();
            for e in events {
                parser.feed(e, |ev| mapper.event(ev, &mut out)).unwrap();
                // What the router does per chunk: hand the output on.
                written += out.len();
                black_box(Bytes::from(std::mem::take(&mut out)));
            }
            mapper.finish(&mut out);
            written += out.len();
            assert!(!mapper.usage().truncated, "{name}");
            written
        };
        assert!(run(&events) > 0);
        group.bench_function(format!("translate_stream/{name}"), |b| {
            b.iter(|| black_box(run(black_box(&events))));
        });
    }
}

// === Over loopback ===

/// A hyper server streaming `sse_events()` for every request.
async fn sse_server(events: Arc<[Bytes]>) -> std::net::SocketAddr {
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let streamer = Streamer {
                events: Arc::clone(&events),
            };
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                streamer.clone().call(req)
            });
            tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        }
    });
    addr
}

/// Drains a body as it arrives.
async fn drain_async<B: Body<Data = Bytes>>(body: B) -> usize
where
    B::Error: std::fmt::Debug,
{
    let mut body = pin!(body);
    let mut bytes = 0;
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        bytes += frame.unwrap().data_ref().map_or(0, Bytes::len);
    }
    bytes
}

fn over_loopback(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    use switchyard::proxy::Upstream;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let events = sse_events();
    let total: usize = events.iter().map(Bytes::len).sum();
    let addr = rt.block_on(sse_server(events));
    let url = format!("http://{addr}");
    let direct = Upstream::new(&url).unwrap();
    let router = router_90_10(Upstream::new(&url).unwrap(), Upstream::new(&url).unwrap());
    let small = Requests::new(chat_small());

    // Warm the pools and check both ways once.
    rt.block_on(async {
        for _ in 0..4 {
            let res = direct.clone().oneshot(small.build()).await.unwrap();
            assert_eq!(drain_async(res.into_body()).await, total);
            let res = router.clone().oneshot(small.build()).await.unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(drain_async(res.into_body()).await, total);
        }
    });
    let before: u64 = router
        .handle()
        .stats()
        .iter()
        .map(|s| s.completion_tokens)
        .sum();
    assert!(
        before >= 4 * COMPLETION_TOKENS,
        "tokens counted over loopback"
    );

    group.bench_function("stream_bare_http", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = direct.clone().oneshot(small.build()).await.unwrap();
                black_box(drain_async(res.into_body()).await)
            })
        });
    });
    group.bench_function("stream_scan_http", |b| {
        b.iter(|| {
            rt.block_on(async {
                let res = router.clone().oneshot(small.build()).await.unwrap();
                black_box(drain_async(res.into_body()).await)
            })
        });
    });
}

criterion_group!(benches, model);
criterion_main!(benches);
