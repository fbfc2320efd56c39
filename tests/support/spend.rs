//! A scripted stand-in model server and small helpers for the tests of
//! token limits, budgets and cost (`tests/spend.rs`,
//! `tests/spend_redis.rs`).
//!
//! The stand-in ([`Upstream::service`]) answers in OpenAI's Chat
//! Completions shape, or in Anthropic's Messages shape when the request's
//! path ends in `/messages` (the router sends Anthropic requests there),
//! as the request's headers say (the router passes the client's headers
//! on):
//!
//! | header | effect |
//! | --- | --- |
//! | `x-usage: IN,OUT` | the usage it reports (default `100,50`) |
//! | `x-mode: json` | a whole JSON answer (the default) |
//! | `x-mode: untyped` | the same JSON answer with no `Content-Type` |
//! | `x-mode: text` | the same JSON answer as `text/plain` |
//! | `x-mode: stream` | an event stream, its usage in its last events |
//! | `x-mode: hang` | an event stream that stops after its first content events and never ends |
//! | `x-mode: gate` | an event stream whose end (usage included) waits for [`Upstream::gate`] `x-gate` |
//! | `x-mode: wait` | a JSON answer sent once [`Upstream::release`] allows one more |
//! | `x-mode: 500` | a 500 in the provider's error shape (also any request for the model `broken`) |
//! | `x-mode: error` | the call fails (an `io::Error`: the upstream could not be reached) |
//!
//! Every request it answers is recorded ([`Upstream::seen`]).

#![allow(dead_code, reason = "each test file uses a part")]

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{Value, json};
use switchyard::body::RequestBody;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tower::service_fn;
use tower::util::BoxCloneSyncService;

/// The stand-in's response body.
pub type UpBody = UnsyncBoxBody<Bytes, io::Error>;

/// The stand-in as a service the router can own.
pub type Up<B> = BoxCloneSyncService<Request<RequestBody<B>>, Response<UpBody>, io::Error>;

/// One request the stand-in answered.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The model it was asked for (as the upstream knows it).
    pub model: String,
    /// The body's length as received.
    pub body_len: usize,
    /// The usage it reported.
    pub usage: (u64, u64),
    /// Its `x-id` header, if any.
    pub id: Option<String>,
}

/// The scripted stand-in; clones share their state.
#[derive(Clone)]
pub struct Upstream {
    gates: Arc<Mutex<HashMap<String, oneshot::Receiver<()>>>>,
    release: Arc<Semaphore>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            gates: Arc::default(),
            release: Arc::new(Semaphore::new(0)),
            seen: Arc::default(),
        }
    }
}

impl Upstream {
    /// A stand-in.
    pub fn new() -> Self {
        Self::default()
    }

    /// A gate for the stream of the request sent with `x-gate: name`: the
    /// stream ends (its usage included) when the sender is used or
    /// dropped.
    pub fn gate(&self, name: &str) -> oneshot::Sender<()> {
        let (tx, rx) = oneshot::channel();
        self.gates.lock().unwrap().insert(name.to_owned(), rx);
        tx
    }

    /// Lets `n` more `x-mode: wait` requests be answered.
    pub fn release(&self, n: usize) {
        self.release.add_permits(n);
    }

    /// Every request answered so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The stand-in as a service for a router whose clients send `B`.
    pub fn service<B>(&self) -> Up<B>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Debug,
    {
        let up = self.clone();
        BoxCloneSyncService::new(service_fn(move |req: Request<RequestBody<B>>| {
            let up = up.clone();
            async move {
                let (head, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|e| io::Error::other(format!("{e:?}")))?
                    .to_bytes();
                up.answer(head, body).await
            }
        }))
    }

    async fn answer(
        &self,
        head: http::request::Parts,
        body: Bytes,
    ) -> Result<Response<UpBody>, io::Error> {
        let text = |name: &str| {
            head.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let model = parsed["model"].as_str().unwrap_or("").to_owned();
        let usage = text("x-usage").map_or((100, 50), |u| {
            let (i, o) = u.split_once(',').expect("x-usage: IN,OUT");
            (i.trim().parse().unwrap(), o.trim().parse().unwrap())
        });
        let mode = text("x-mode").unwrap_or_else(|| "json".into());
        let anthropic = head.uri.path().ends_with("/messages");
        self.seen.lock().unwrap().push(Seen {
            model: model.clone(),
            body_len: body.len(),
            usage,
            id: text("x-id"),
        });
        if mode == "error" {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "the stand-in is down",
            ));
        }
        if mode == "500" || model == "broken" {
            let error = if anthropic {
                json!({"type": "error", "error": {"type": "api_error", "message": "boom"}})
            } else {
                json!({"error": {"message": "boom", "type": "server_error", "param": null, "code": null}})
            };
            return Ok(json_answer(StatusCode::INTERNAL_SERVER_ERROR, &error));
        }
        if mode == "wait" {
            self.release
                .acquire()
                .await
                .expect("the semaphore stays open")
                .forget();
        }
        let events = if anthropic {
            anthropic_events(&model, usage)
        } else {
            openai_events(&model, usage)
        };
        match mode.as_str() {
            "stream" => Ok(stream_answer(events, End::Now)),
            "hang" => Ok(stream_answer(events, End::Never)),
            "gate" => {
                let name = text("x-gate").expect("x-gate names the gate");
                let gate = self
                    .gates
                    .lock()
                    .unwrap()
                    .remove(&name)
                    .unwrap_or_else(|| panic!("no gate {name}"));
                Ok(stream_answer(events, End::After(gate)))
            }
            _ => {
                let answer = if anthropic {
                    anthropic_json(&model, usage)
                } else {
                    openai_json(&model, usage)
                };
                let mut res = json_answer(StatusCode::OK, &answer);
                match mode.as_str() {
                    "untyped" => {
                        res.headers_mut().remove(http::header::CONTENT_TYPE);
                    }
                    "text" => {
                        res.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain"),
                        );
                    }
                    _ => {}
                }
                Ok(res)
            }
        }
    }
}

fn json_answer(status: StatusCode, json: &Value) -> Response<UpBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(serde_json::to_vec(json).unwrap()))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .unwrap()
}

/// How a stand-in stream ends.
enum End {
    /// Right after its events.
    Now,
    /// Its last events (the usage) once the gate opens.
    After(oneshot::Receiver<()>),
    /// Never: it stops after its first content events, open until the
    /// reader goes away.
    Never,
}

/// How many of a stand-in stream's events come before the end an
/// [`End`] holds back (the first content events; the usage is later).
const HELD_BACK_AFTER: usize = 3;

fn stream_answer(events: Vec<String>, end: End) -> Response<UpBody> {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        let (first, rest) = events.split_at(HELD_BACK_AFTER.min(events.len()));
        for e in first {
            if tx.send(Bytes::from(e.clone())).is_err() {
                return;
            }
        }
        match end {
            End::Now => {}
            End::After(gate) => {
                // The reader may go away first.
                tokio::select! {
                    _ = gate => {}
                    () = tx.closed() => return,
                }
            }
            End::Never => {
                tx.closed().await;
                return;
            }
        }
        for e in rest {
            if tx.send(Bytes::from(e.clone())).is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(
        UnboundedReceiverStream::new(rx).map(|b| Ok::<_, io::Error>(Frame::data(b))),
    );
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body.boxed_unsync())
        .unwrap()
}

// === the stand-in's answers ===

/// An OpenAI `chat.completion` with this usage.
pub fn openai_json(model: &str, (input, output): (u64, u64)) -> Value {
    json!({
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}
    })
}

/// An Anthropic `message` with this usage.
pub fn anthropic_json(model: &str, (input, output): (u64, u64)) -> Value {
    json!({
        "id": "msg_standin",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": input, "output_tokens": output}
    })
}

/// OpenAI `chat.completion.chunk` events: a role, two pieces of text, the
/// finish, then the usage chunk and `[DONE]`, each a whole SSE event.
pub fn openai_events(model: &str, (input, output): (u64, u64)) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": "chatcmpl-standin",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        })
    };
    let usage = json!({
        "id": "chatcmpl-standin",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [],
        "usage": {"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output}
    });
    [
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Hel"}), Value::Null),
        chunk(json!({"content": "lo"}), Value::Null),
        chunk(json!({}), json!("stop")),
        usage,
    ]
    .iter()
    .map(|v| format!("data: {v}\n\n"))
    .chain(std::iter::once("data: [DONE]\n\n".to_owned()))
    .collect()
}

/// Anthropic's named events: `message_start` (the input tokens, and one
/// output token), a text block in two deltas, `message_delta` (the output
/// tokens), `message_stop`.
pub fn anthropic_events(model: &str, (input, output): (u64, u64)) -> Vec<String> {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_standin", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": input, "output_tokens": 1}}}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
        ),
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}}),
        ),
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ),
        event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": output}}),
        ),
        event("message_stop", json!({"type": "message_stop"})),
    ]
}

// === clients ===

/// A request to the router, and what its estimate is.
#[derive(Debug, Clone)]
pub struct Ask {
    path: &'static str,
    body: String,
    max_tokens: u64,
    headers: Vec<(String, String)>,
    identity: Option<switchyard::auth::Identity>,
}

impl Ask {
    /// An OpenAI Chat Completions request for `model`.
    pub fn chat(model: &str, max_tokens: u64) -> Self {
        Self::with_body(
            "/v1/chat/completions",
            json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hello there"}]}),
            max_tokens,
        )
    }

    /// The same, streamed (with `stream_options.include_usage`, so that the
    /// stream passes through byte for byte).
    pub fn chat_stream(model: &str, max_tokens: u64) -> Self {
        Self::with_body(
            "/v1/chat/completions",
            json!({"model": model, "max_tokens": max_tokens, "stream": true,
                   "stream_options": {"include_usage": true},
                   "messages": [{"role": "user", "content": "hello there"}]}),
            max_tokens,
        )
    }

    /// An Anthropic Messages request for `model`.
    pub fn messages(model: &str, max_tokens: u64, stream: bool) -> Self {
        Self::with_body(
            "/v1/messages",
            json!({"model": model, "max_tokens": max_tokens, "stream": stream,
                   "messages": [{"role": "user", "content": "hello there"}]}),
            max_tokens,
        )
    }

    /// A request with this body.
    pub fn with_body(path: &'static str, body: Value, max_tokens: u64) -> Self {
        Self {
            path,
            body: body.to_string(),
            max_tokens,
            headers: Vec::new(),
            identity: None,
        }
    }

    /// The same with a header.
    pub fn header(mut self, name: &str, value: impl ToString) -> Self {
        self.headers.push((name.to_owned(), value.to_string()));
        self
    }

    /// The same with `x-usage: input,output`.
    pub fn usage(self, input: u64, output: u64) -> Self {
        self.header("x-usage", format!("{input},{output}"))
    }

    /// The same with `x-mode: mode`.
    pub fn mode(self, mode: &str) -> Self {
        self.header("x-mode", mode)
    }

    /// The same, from this caller.
    pub fn identity(mut self, identity: switchyard::auth::Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// The body's length in bytes.
    pub fn body_len(&self) -> u64 {
        self.body.len() as u64
    }

    /// The estimate a meter with the defaults (4 bytes a token) takes:
    /// the body's bytes / 4, rounded up, plus `max_tokens`.
    pub fn estimate(&self) -> u64 {
        self.input_estimate() + self.max_tokens
    }

    /// The input part of the estimate.
    pub fn input_estimate(&self) -> u64 {
        self.body_len().div_ceil(4)
    }

    /// The request, for an in-process router.
    pub fn request(&self) -> Request<Full<Bytes>> {
        self.build(|b| Full::new(Bytes::from(b)))
    }

    /// The request with any body type.
    pub fn build<B>(&self, body: impl FnOnce(String) -> B) -> Request<B> {
        let mut req = Request::post(self.path).header("content-type", "application/json");
        for (n, v) in &self.headers {
            req = req.header(n.as_str(), v.as_str());
        }
        let mut req = req.body(body(self.body.clone())).unwrap();
        if let Some(id) = &self.identity {
            req.extensions_mut().insert(id.clone());
        }
        req
    }
}

/// A response header as text ("" when absent).
pub fn header<B>(res: &Response<B>, name: &str) -> String {
    res.headers()
        .get(name)
        .map_or(String::new(), |v| v.to_str().unwrap().to_owned())
}

/// A response header as a number.
pub fn number<B>(res: &Response<B>, name: &str) -> u64 {
    let text = header(res, name);
    text.parse()
        .unwrap_or_else(|_| panic!("{name}: {text:?} is not a number"))
}

/// The body of `res`, whole.
pub async fn bytes<B>(res: Response<B>) -> Bytes
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    res.into_body().collect().await.unwrap().to_bytes()
}

/// The body of `res` as JSON.
pub async fn json_body<B>(res: Response<B>) -> Value
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let b = bytes(res).await;
    serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&b)))
}

/// Micro-units for `input` and `output` tokens at these prices (micro-units
/// per million tokens), rounded up as the price catalog does.
pub fn micros(input: u64, output: u64, (per_in, per_out): (u64, u64)) -> u64 {
    (input * per_in + output * per_out).div_ceil(1_000_000)
}

// === an SSE reader ===

/// One event of an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its `event:` name ("" when none: a `message`).
    pub name: String,
    /// Its `data:` lines, joined with `\n`.
    pub data: String,
}

/// Reads an event stream as the WHATWG algorithm (and OpenAI's and
/// Anthropic's SDKs) does: lines ending in LF, CRLF or CR; a line starting
/// with `:` is a comment and never an event; `event:` and `data:` fields
/// (one optional space after the colon); a blank line dispatches an event
/// with data. Returns the events and, apart, the comment lines (without
/// their `:` and the space after it).
pub fn read_sse(text: &str) -> (Vec<Event>, Vec<String>) {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut events = Vec::new();
    let mut comments = Vec::new();
    let (mut name, mut data): (String, Option<String>) = (String::new(), None);
    for line in text.split('\n') {
        if line.is_empty() {
            if let Some(d) = data.take() {
                events.push(Event {
                    name: std::mem::take(&mut name),
                    data: d,
                });
            }
            name.clear();
            continue;
        }
        if let Some(comment) = line.strip_prefix(':') {
            comments.push(comment.strip_prefix(' ').unwrap_or(comment).to_owned());
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => name = value.to_owned(),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            _ => {}
        }
    }
    (events, comments)
}
