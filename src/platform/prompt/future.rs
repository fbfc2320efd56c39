//! The response futures of a prompt API and of its versions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::request::Parts;
use http::{HeaderValue, Request, Response, response};
use http_body::Body;
use pin_project_lite::pin_project;
use serde_json::Value;
use tower::Service;

use super::config::ResponseMode;
use super::reply::Refusal;
use super::service::{PromptApi, PromptInput, PromptVersion, VersionState, too_large};
use crate::body::{CollectError, Collector, RequestBody, ResponseBody};
use crate::split::{Dispatch, SplitBody};

/// What the API answers: its own refusal, or the split's answer.
type Answer<ResB> = Response<ResponseBody<SplitBody<ResponseBody<ResB>>>>;

/// The split's future over the versions.
type SplitFuture<S, ReqB> =
    crate::split::ResponseFuture<Dispatch<PromptVersion<S>, Request<PromptInput<ReqB>>>>;

// === ResponseFuture ===

pin_project! {
    /// Response future of [`PromptApi`]: reads the caller's body, checks
    /// it, then waits for the version the split picked.
    pub struct ResponseFuture<S, ReqB, ResB>
    where
        S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
        ResB: Body<Data = Bytes>,
    {
        #[pin]
        state: State<S, ReqB, ResB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB, ResB>
    where
        S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
        ResB: Body<Data = Bytes>,
    {
        Refused { response: Option<Answer<ResB>> },
        Reading {
            #[pin]
            body: ReqB,
            collector: Collector,
            pending: Option<Box<(PromptApi<S>, Parts)>>,
        },
        Dispatched { #[pin] future: SplitFuture<S, ReqB> },
    }
}

impl<S, ReqB, ResB> ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    pub(crate) fn refused(response: Answer<ResB>) -> Self {
        Self {
            state: State::Refused {
                response: Some(response),
            },
        }
    }

    pub(crate) fn reading(api: PromptApi<S>, head: Parts, body: ReqB) -> Self {
        let limit = api.shared.config.body_limit;
        Self {
            state: State::Reading {
                body,
                collector: Collector::new(limit),
                pending: Some(Box::new((api, head))),
            },
        }
    }
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone,
    ReqB: Body<Data = Bytes>,
    ResB: Body<Data = Bytes>,
{
    type Output = Result<Answer<ResB>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Refused { response } => {
                    return match response.take() {
                        Some(res) => Poll::Ready(Ok(res)),
                        // Polled after it completed: a contract breach by
                        // the caller, but never a panic here.
                        None => Poll::Pending,
                    };
                }
                StateProj::Dispatched { future } => {
                    let res = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(res.map(ResponseBody::new)));
                }
                StateProj::Reading {
                    body,
                    collector,
                    pending,
                } => {
                    let read = ready!(collector.poll_collect(body, cx));
                    let Some(pending) = pending.take() else {
                        return Poll::Pending;
                    };
                    let (mut api, head) = *pending;
                    let limit = api.shared.config.body_limit;
                    let checked = match read {
                        Err(CollectError::TooLarge) => Err(too_large(limit)),
                        Err(CollectError::Body(_)) => Err(Refusal::bad(
                            "invalid_body",
                            "The request body could not be read.",
                        )),
                        Ok(()) => {
                            let data = collector.take().data;
                            let allow = api.shared.config.allow_extra_messages;
                            api.shared.variables.read_body(&data, allow)
                        }
                    };
                    match checked {
                        Err(refusal) => {
                            let response = Some(api.refuse(refusal));
                            state.set(State::Refused { response });
                        }
                        Ok(checked) => {
                            let req = Request::from_parts(head, PromptInput::new(checked));
                            let future = api.split.call(req);
                            state.set(State::Dispatched { future });
                        }
                    }
                }
            }
        }
    }
}

impl<S, ReqB, ResB> std::fmt::Debug for ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

// === VersionFuture ===

pin_project! {
    /// Response future of one version: waits for the model's answer and
    /// reads it (up to the answer limit) to hand it back in the API's
    /// mode.
    pub(crate) struct VersionFuture<F, ResB> {
        #[pin]
        state: VersionStep<F, ResB>,
        version: Arc<VersionState>,
    }
}

pin_project! {
    #[project = VersionProj]
    enum VersionStep<F, ResB> {
        Calling { #[pin] future: F },
        Reading {
            #[pin]
            body: ResB,
            collector: Collector,
            head: Option<response::Parts>,
        },
    }
}

impl<F, ResB> VersionFuture<F, ResB> {
    pub(crate) fn new(future: F, version: Arc<VersionState>) -> Self {
        Self {
            state: VersionStep::Calling { future },
            version,
        }
    }
}

impl<F, ResB, E> Future for VersionFuture<F, ResB>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<ResB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let version = &**this.version;
        let answering = &*version.answering;
        loop {
            match this.state.as_mut().project() {
                VersionProj::Calling { future } => {
                    let res = ready!(future.poll(cx))?;
                    let passes = !res.status().is_success()
                        || (crate::body::is_encoded(res.headers())
                            && matches!(answering.mode, ResponseMode::Full));
                    if passes {
                        // Errors of the model (or the router in front of
                        // it) pass with their status; an encoded answer in
                        // full mode passes as it is (its usage uncounted).
                        return Poll::Ready(Ok(res.map(ResponseBody::new)));
                    }
                    if crate::body::is_encoded(res.headers()) {
                        return Poll::Ready(Ok(bad_answer(
                            version,
                            "The model's answer is content-encoded and cannot be read.",
                        )));
                    }
                    if crate::body::over_limit(res.headers(), res.body(), answering.limit) {
                        return Poll::Ready(Ok(too_long(version)));
                    }
                    let (head, body) = res.into_parts();
                    this.state.set(VersionStep::Reading {
                        body,
                        collector: Collector::new(answering.limit),
                        head: Some(head),
                    });
                }
                VersionProj::Reading {
                    body,
                    collector,
                    head,
                } => {
                    let read = ready!(collector.poll_collect(body, cx));
                    let Some(head) = head.take() else {
                        return Poll::Pending;
                    };
                    return Poll::Ready(Ok(match read {
                        Err(CollectError::TooLarge) => too_long(version),
                        Err(CollectError::Body(_)) => {
                            bad_answer(version, "The model's answer broke off.")
                        }
                        Ok(()) => finish(version, head, collector.take().data),
                    }));
                }
            }
        }
    }
}

impl<F, ResB> std::fmt::Debug for VersionFuture<F, ResB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionFuture").finish_non_exhaustive()
    }
}

// === reading the answer ===

/// A 502 for an answer the mode cannot hand back, counted on the version.
fn bad_answer<B>(version: &VersionState, message: &str) -> Response<ResponseBody<B>> {
    version
        .counters
        .invalid_answers
        .fetch_add(1, Ordering::Relaxed);
    Refusal::bad_answer(message).into_response(version.answering.format)
}

fn too_long<B>(version: &VersionState) -> Response<ResponseBody<B>> {
    let limit = version.answering.limit;
    bad_answer(
        version,
        &format!("The model's answer is larger than {limit} bytes."),
    )
}

/// The answer in the API's mode, from the model's whole answer.
fn finish<B>(
    version: &VersionState,
    mut head: response::Parts,
    data: Bytes,
) -> Response<ResponseBody<B>> {
    // Read as a JSON value and walked by member names: a derived
    // `Deserialize` would also take arrays for objects (`[[["hi"]]]` as a
    // completion whose text is "hi").
    let completion = serde_json::from_slice::<Value>(&data)
        .ok()
        .filter(Value::is_object);
    // A metered model route says what the answer cost.
    if let Some(micros) = head
        .headers
        .get(&crate::spend::meter::COST_MICROS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        let counters = &version.counters;
        counters.cost_micros.fetch_add(micros, Ordering::Relaxed);
        counters.priced.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(usage) = completion
        .as_ref()
        .and_then(|c| c.get("usage"))
        .filter(|u| u.is_object())
    {
        let tokens = |name| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
        let counters = &version.counters;
        counters
            .prompt_tokens
            .fetch_add(tokens("prompt_tokens"), Ordering::Relaxed);
        counters
            .completion_tokens
            .fetch_add(tokens("completion_tokens"), Ordering::Relaxed);
    }
    let text = || {
        completion
            .as_ref()?
            .get("choices")?
            .get(0)?
            .get("message")?
            .get("content")?
            .as_str()
    };
    let out = match &version.answering.mode {
        ResponseMode::Full => data,
        ResponseMode::Text => match text() {
            Some(text) => {
                let mut object = serde_json::Map::with_capacity(1);
                object.insert("result".to_owned(), Value::from(text));
                Bytes::from(serde_json::to_vec(&object).unwrap_or_default())
            }
            None => return bad_answer(version, "The model's answer has no text."),
        },
        ResponseMode::Json { schema } => {
            let Some(text) = text() else {
                return bad_answer(version, "The model's answer has no text.");
            };
            let value: Value = match serde_json::from_str(text) {
                Ok(value) => value,
                Err(e) => {
                    return bad_answer(
                        version,
                        &format!("The model's answer is not valid JSON: {e}."),
                    );
                }
            };
            if let Err(reason) = schema.validate(&value) {
                return bad_answer(
                    version,
                    &format!("The model's answer does not match the schema: {reason}."),
                );
            }
            Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
        }
    };
    let headers = &mut head.headers;
    headers.remove(TRANSFER_ENCODING);
    headers.remove(CONTENT_ENCODING);
    if !matches!(version.answering.mode, ResponseMode::Full) || !headers.contains_key(CONTENT_TYPE)
    {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(out.len()));
    Response::from_parts(head, ResponseBody::full(out))
}
