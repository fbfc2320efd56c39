//! The response future of [`ModelRouter`].
//!
//! [`ResponseFuture`] reads the request body to find the model, waits for
//! the [admission hook](super::Admit) if there is one, calls the chosen
//! upstream (and the next one on a fallback), and hands back the answer
//! in a [`ModelBody`] that counts its tokens. Name it where a struct holds
//! a routed call in flight:
//!
//! ```
//! use std::convert::Infallible;
//! use std::future::{Ready, ready};
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use switchyard::body::RequestBody;
//! use switchyard::model::future::ResponseFuture;
//! use switchyard::model::{Alias, Catalog, Model, ModelBody, ModelRouter};
//! use tower::service_fn;
//! use tower::util::ServiceFn;
//! use tower::{Service, ServiceExt};
//!
//! type Reply = Ready<Result<Response<Full<Bytes>>, Infallible>>;
//! type Server = ServiceFn<fn(Request<RequestBody<Full<Bytes>>>) -> Reply>;
//!
//! /// A stand-in model server.
//! fn server(_: Request<RequestBody<Full<Bytes>>>) -> Reply {
//!     ready(Ok(Response::new(Full::new(Bytes::from_static(b"{}")))))
//! }
//!
//! /// A routed call, held for later.
//! struct Pending {
//!     future: ResponseFuture<Server, Full<Bytes>, Full<Bytes>>,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut router = ModelRouter::builder()
//!     .upstream("blue", service_fn(server as fn(_) -> _))
//!     .catalog(
//!         Catalog::new()
//!             .model(Model::new("llama-3.1-8b", "blue"))
//!             .alias(Alias::new("chat", [("llama-3.1-8b", 1)])),
//!     )
//!     .build()?;
//! let ask = Request::post("/v1/chat/completions")
//!     .body(Full::new(Bytes::from_static(br#"{"model":"chat","messages":[]}"#)))?;
//! let pending = Pending {
//!     future: router.ready().await?.call(ask),
//! };
//! let res: Response<ModelBody<Full<Bytes>>> = pending.future.await?;
//! assert_eq!(res.headers()["x-switchyard-model"], "llama-3.1-8b");
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::Service;

use super::admit::{Admission, AdmitFuture, AdmitRequest, Refused, Ticket};
use super::body::{ModelBody, Reader, Report, Tracker, last_usage};
use super::catalog::Compiled;
use super::handle::Upstream;
use super::openai::{BodyInfo, OpenAiError, json_response, model_field};
use super::provider::retry_after;
use super::providers::openai::HideUsage;
use super::providers::{Protocol, Usage};
use super::service::{ChoiceReason, ModelChoice, ModelRouter, Picked, too_large};
use super::stats::Flight;
use super::translate::{self, Refusal, Reply, prepare};
use super::usage::{ClientApi, UsageRecord};
use crate::auth::Identity;
use crate::body::{CollectError, Collector, RequestBody};
use crate::split::Dispatch;

pin_project! {
    /// Response future of [`ModelRouter`](super::ModelRouter).
    pub struct ResponseFuture<S, ReqB, ResB>
    where
        S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
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
    {
        // Reading the body to find the model.
        Reading {
            #[pin]
            body: ReqB,
            collector: Collector,
            pending: Option<Box<(ModelRouter<S>, Parts, ClientApi)>>,
        },
        // Waiting for the admission hook.
        Admitting {
            admit: AdmitFuture,
            pending: Option<Box<(ModelRouter<S>, Arc<Compiled>, Go<ReqB>)>>,
        },
        Calling {
            #[pin]
            dispatch: Dispatch<S, Request<RequestBody<ReqB>>>,
            attempt: Option<Box<Attempt<S>>>,
        },
        // Reading a whole answer to translate it.
        Converting {
            #[pin]
            body: ResB,
            collector: Collector,
            pending: Option<Box<(http::response::Parts, Box<Attempt<S>>)>>,
        },
        // The router's own answer.
        Answer {
            answer: Option<(StatusCode, Vec<u8>)>,
        },
        // A refusal of the admission hook.
        Refused {
            answer: Option<(StatusCode, Vec<u8>, Vec<(HeaderName, HeaderValue)>)>,
        },
    }
}

/// The most bytes of a whole answer read to translate it.
const ANSWER_LIMIT: usize = 32 * 1024 * 1024;
/// The most bytes of an error answer read to translate it.
const ERROR_LIMIT: usize = 64 * 1024;

/// One call to an upstream, and what to do if it fails.
struct Attempt<S> {
    router: ModelRouter<S>,
    catalog: Arc<Compiled>,
    model: usize,
    choice: ModelChoice,
    api: ClientApi,
    reply: Reply,
    key: Option<usize>,
    /// The provider settings and keys it was sent with.
    upstream: Arc<Upstream>,
    identity: Option<Identity>,
    started: Instant,
    retry: Option<Retry>,
    /// Ends the in-flight count if this future is dropped (cancelled).
    flight: Flight,
    /// What the admission hook holds for the request, settled with the
    /// answer.
    ticket: Option<Box<dyn Ticket>>,
}

/// A request whose version is chosen, on its way to the admission hook
/// and then upstream.
struct Go<ReqB> {
    head: Parts,
    body: Next<ReqB>,
    picked: Picked,
    choice: ModelChoice,
    api: ClientApi,
    /// The version first chosen, once the hook downgraded the request.
    downgraded_from: Option<Arc<str>>,
}

/// The body of a request on its way.
enum Next<ReqB> {
    /// Read whole (the model came from it), with what was read of it.
    Read(Bytes, BodyInfo),
    /// Not read: it passes as it comes.
    Streamed(RequestBody<ReqB>),
}

/// What a retry on the fallback needs: the request as the client sent
/// it.
struct Retry {
    head: Parts,
    body: Bytes,
    info: BodyInfo,
    model: usize,
}

impl<S, ReqB, ResB> ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
{
    pub(crate) fn answer(status: StatusCode, json: Vec<u8>) -> Self {
        Self {
            state: State::Answer {
                answer: Some((status, json)),
            },
        }
    }

    pub(crate) fn error(error: OpenAiError) -> Self {
        Self::refuse(error.into(), ClientApi::ChatCompletions)
    }

    pub(crate) fn refuse(refusal: Refusal, api: ClientApi) -> Self {
        let (status, json) = refusal.into_parts(api);
        Self::answer(status, json)
    }

    pub(crate) fn reading(
        router: ModelRouter<S>,
        head: Parts,
        body: ReqB,
        limit: usize,
        api: ClientApi,
    ) -> Self {
        Self {
            state: State::Reading {
                body,
                collector: Collector::new(limit),
                pending: Some(Box::new((router, head, api))),
            },
        }
    }
}

impl<S, ReqB, ResB> ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone,
{
    /// Calls the picked version's upstream (a model named in a header or
    /// the path: the body passes as it is), once the admission hook lets
    /// it.
    pub(crate) fn dispatch(
        router: &ModelRouter<S>,
        catalog: Arc<Compiled>,
        head: Parts,
        body: RequestBody<ReqB>,
        picked: Picked,
        choice: ModelChoice,
    ) -> Self {
        let go = Go {
            head,
            body: Next::Streamed(body),
            picked,
            choice,
            api: ClientApi::Other,
            downgraded_from: None,
        };
        Self {
            state: admit_then_call(router, catalog, go),
        }
    }
}

/// Asks the admission hook, if there is one, then calls the version.
fn admit_then_call<S, ReqB, ResB>(
    router: &ModelRouter<S>,
    catalog: Arc<Compiled>,
    go: Go<ReqB>,
) -> State<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone,
{
    let Some(hook) = &router.config.admit else {
        return proceed(router, catalog, go, None);
    };
    let entry = &catalog.models[go.picked.model];
    let protocol = router.shared.providers[entry.upstream]
        .load()
        .provider
        .protocol;
    let (body_len, max_tokens, stream) = match &go.body {
        Next::Read(data, info) => (Some(data.len() as u64), info.max_tokens, info.stream),
        Next::Streamed(_) => (crate::body::content_length(&go.head.headers), None, false),
    };
    let req = AdmitRequest {
        head: &go.head,
        alias: go.choice.alias.as_deref(),
        model: &entry.name,
        upstream_model: &entry.upstream_name,
        provider: protocol,
        client: go.api,
        body_len,
        max_tokens,
        stream,
        downgraded_from: go.downgraded_from.as_deref(),
        group: go.picked.alias.map(|g| (&*catalog, g)),
    };
    let mut admit = hook.admit(&req);
    match admit.now() {
        Some(admission) => admitted(router, catalog, go, admission),
        None => State::Admitting {
            admit,
            pending: Some(Box::new((router.clone(), catalog, go))),
        },
    }
}

/// Acts on the admission hook's answer.
fn admitted<S, ReqB, ResB>(
    router: &ModelRouter<S>,
    catalog: Arc<Compiled>,
    go: Go<ReqB>,
    admission: Admission,
) -> State<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone,
{
    match admission {
        Admission::Admit(ticket) => proceed(router, catalog, go, Some(ticket)),
        Admission::Refuse(refused) => refusal(refused, go.api),
        Admission::Downgrade(name) => {
            let to = go.picked.alias.and_then(|g| {
                catalog
                    .by_name
                    .get(name.as_str())
                    .copied()
                    .filter(|m| catalog.aliases[g].members.contains(m))
            });
            match to {
                Some(model) if go.downgraded_from.is_none() => {
                    let picked = Picked {
                        model,
                        alias: go.picked.alias,
                        reason: ChoiceReason::Downgraded,
                    };
                    let choice = router.choice(&catalog, &go.choice.requested, picked);
                    let go = Go {
                        downgraded_from: Some(Arc::clone(&go.choice.model)),
                        picked,
                        choice,
                        ..go
                    };
                    admit_then_call(router, catalog, go)
                }
                // A second downgrade, or to a version outside the alias:
                // the hook found nothing the caller may use.
                _ => refusal(
                    Refused::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "You exceeded your current quota and no cheaper version of this model is available.",
                        "insufficient_quota",
                    ),
                    go.api,
                ),
            }
        }
    }
}

fn refusal<S, ReqB, ResB>(refused: Refused, api: ClientApi) -> State<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
{
    let error = OpenAiError::new(
        refused.status,
        refused.message,
        refused.kind,
        None,
        Some(refused.code),
    );
    let (status, json) = Refusal::from(error).into_parts(api);
    State::Refused {
        answer: Some((status, json, refused.headers)),
    }
}

/// Calls the version, its request prepared for its upstream.
fn proceed<S, ReqB, ResB>(
    router: &ModelRouter<S>,
    catalog: Arc<Compiled>,
    go: Go<ReqB>,
    mut ticket: Option<Box<dyn Ticket>>,
) -> State<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone,
{
    let Go {
        mut head,
        body,
        picked,
        choice,
        api,
        ..
    } = go;
    match body {
        Next::Read(data, info) => {
            let retry = picked
                .alias
                .and_then(|g| catalog.aliases[g].fallback)
                .filter(|&fallback| fallback != picked.model)
                .map(|model| Retry {
                    head: head.clone(),
                    body: data.clone(),
                    info,
                    model,
                });
            match call_version(
                router,
                catalog,
                head,
                &data,
                info,
                picked.model,
                choice,
                api,
                retry,
                &mut ticket,
            ) {
                Ok(state) => state,
                Err(refusal) => {
                    let (status, json) = refusal.into_parts(api);
                    State::Answer {
                        answer: Some((status, json)),
                    }
                }
            }
        }
        Next::Streamed(body) => {
            let entry = &catalog.models[picked.model];
            let upstream = router.shared.providers[entry.upstream].load_full();
            let key = upstream.keys.apply(&mut head.headers, true);
            let reply = Reply::Pass(upstream.provider.protocol);
            start(
                router,
                catalog,
                head,
                body,
                picked.model,
                choice,
                (ClientApi::Other, reply, key, upstream),
                None,
                ticket,
            )
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn start<S, ReqB, ResB>(
    router: &ModelRouter<S>,
    catalog: Arc<Compiled>,
    mut head: Parts,
    body: RequestBody<ReqB>,
    model: usize,
    choice: ModelChoice,
    (api, reply, key, upstream): (ClientApi, Reply, Option<usize>, Arc<Upstream>),
    retry: Option<Retry>,
    ticket: Option<Box<dyn Ticket>>,
) -> State<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone,
{
    let entry = &catalog.models[model];
    let flight = Flight::start(Arc::clone(&entry.counters));
    head.extensions.insert(choice.clone());
    let identity = head.extensions.get::<Identity>().cloned();
    let service = router.upstreams[entry.upstream].clone();
    State::Calling {
        dispatch: Dispatch::new(service, Request::from_parts(head, body)),
        attempt: Some(Box::new(Attempt {
            router: router.clone(),
            catalog,
            model,
            choice,
            api,
            reply,
            key,
            upstream,
            identity,
            started: Instant::now(),
            retry,
            flight,
            ticket,
        })),
    }
}

/// Prepares and starts the call for `model`, from the client's body. The
/// ticket is taken only when the call starts.
#[allow(clippy::too_many_arguments)]
fn call_version<S, ReqB, ResB>(
    router: &ModelRouter<S>,
    catalog: Arc<Compiled>,
    head: Parts,
    data: &Bytes,
    info: BodyInfo,
    model: usize,
    choice: ModelChoice,
    api: ClientApi,
    retry: Option<Retry>,
    ticket: &mut Option<Box<dyn Ticket>>,
) -> Result<State<S, ReqB, ResB>, Refusal>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone,
{
    let entry = &catalog.models[model];
    let upstream = router.shared.providers[entry.upstream].load_full();
    let p = prepare(
        api,
        router.config.unsupported,
        head,
        data,
        info,
        entry,
        &upstream,
    )?;
    let body = RequestBody::full(p.body, None);
    Ok(start(
        router,
        catalog,
        p.head,
        body,
        model,
        choice,
        (api, p.reply, p.key, upstream),
        retry,
        ticket.take(),
    ))
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone,
    ReqB: Body<Data = Bytes>,
    ResB: Body<Data = Bytes>,
{
    type Output = Result<Response<ModelBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().project().state;
            let next = match state.as_mut().project() {
                StateProj::Answer { answer } => {
                    let (status, json) = answer
                        .take()
                        .unwrap_or((StatusCode::INTERNAL_SERVER_ERROR, Vec::new()));
                    return Poll::Ready(Ok(json_response(status, json)));
                }
                StateProj::Refused { answer } => {
                    let (status, json, headers) = answer.take().unwrap_or((
                        StatusCode::INTERNAL_SERVER_ERROR,
                        Vec::new(),
                        Vec::new(),
                    ));
                    let mut res = json_response(status, json);
                    for (name, value) in headers {
                        res.headers_mut().append(name, value);
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Admitting { admit, pending } => {
                    let admission = ready!(Pin::new(admit).poll(cx));
                    let Some(pending) = pending.take() else {
                        return Poll::Ready(Ok(json_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            Vec::new(),
                        )));
                    };
                    let (router, catalog, go) = *pending;
                    admitted(&router, catalog, go, admission)
                }
                StateProj::Reading {
                    body,
                    collector,
                    pending,
                } => {
                    let read = ready!(collector.poll_collect(body, cx));
                    let Some(pending) = pending.take() else {
                        return Poll::Ready(Ok(json_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            Vec::new(),
                        )));
                    };
                    let (router, head, api) = *pending;
                    match read {
                        Ok(()) => {
                            let data = collector.take().data;
                            match route_body(&router, head, data, api) {
                                Ok(state) => state,
                                Err(e) => return Poll::Ready(Ok(refused(e, api))),
                            }
                        }
                        Err(CollectError::TooLarge) => {
                            return Poll::Ready(Ok(refused(
                                too_large(router.config.body_limit).into(),
                                api,
                            )));
                        }
                        Err(CollectError::Body(_)) => {
                            return Poll::Ready(Ok(refused(
                                OpenAiError::new(
                                    StatusCode::BAD_REQUEST,
                                    "The request body failed while it was being read.",
                                    "invalid_request_error",
                                    None,
                                    Some("body_error"),
                                )
                                .into(),
                                api,
                            )));
                        }
                    }
                }
                StateProj::Calling { dispatch, attempt } => {
                    let out = ready!(dispatch.poll(cx));
                    let Some(attempt) = attempt.take() else {
                        return Poll::Ready(Ok(json_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            Vec::new(),
                        )));
                    };
                    let mut attempt = attempt;
                    let counters = attempt.flight.counters();
                    let on = attempt.router.config.fallback_on;
                    let failed = match &out {
                        Ok(res) => {
                            counters.response(res.status(), attempt.started.elapsed());
                            if res.status() == StatusCode::TOO_MANY_REQUESTS
                                && let Some(k) = attempt.key
                            {
                                attempt
                                    .upstream
                                    .keys
                                    .rate_limited(k, retry_after(res.headers()));
                            }
                            on.status(res.status())
                        }
                        Err(_) => {
                            counters.error();
                            on.errors
                        }
                    };
                    // Before anything reached the client: retry on the
                    // fallback with the body as it came, in the fallback's
                    // protocol.
                    let mut ticket = attempt.ticket.take();
                    let fallback = match attempt.retry.take() {
                        Some(retry) if failed => {
                            let fb = &attempt.catalog.models[retry.model];
                            let choice = ModelChoice {
                                model: Arc::clone(&fb.name),
                                upstream: attempt.router.shared.upstreams[fb.upstream]
                                    .as_str()
                                    .into(),
                                reason: ChoiceReason::Fallback,
                                ..attempt.choice.clone()
                            };
                            call_version(
                                &attempt.router,
                                Arc::clone(&attempt.catalog),
                                retry.head,
                                &retry.body,
                                retry.info,
                                retry.model,
                                choice,
                                attempt.api,
                                None,
                                &mut ticket,
                            )
                            .ok()
                        }
                        _ => None,
                    };
                    // Settled with this answer unless the fallback took it.
                    attempt.ticket = ticket;
                    match (out, fallback) {
                        (out, Some(next)) => {
                            attempt.flight.counters().fallback();
                            // Reported with no tokens: an upstream that
                            // could not be reached as a 502.
                            let status =
                                out.as_ref().map_or(StatusCode::BAD_GATEWAY, |r| r.status());
                            drop(out);
                            let mut parts = Response::new(()).into_parts().0;
                            parts.status = status;
                            tracker(&mut parts, attempt, Reader::None).0.finish();
                            next
                        }
                        (Ok(res), None) => match respond(res, attempt) {
                            Responded::Done(res) => return Poll::Ready(Ok(res)),
                            Responded::Convert(parts, body, attempt, limit) => State::Converting {
                                body,
                                collector: Collector::new(limit),
                                pending: Some(Box::new((parts, attempt))),
                            },
                        },
                        (Err(e), None) => return Poll::Ready(Err(e)),
                    }
                }
                StateProj::Converting {
                    body,
                    collector,
                    pending,
                } => {
                    let read = ready!(collector.poll_collect(body, cx));
                    let Some(pending) = pending.take() else {
                        return Poll::Ready(Ok(json_response(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            Vec::new(),
                        )));
                    };
                    let (parts, attempt) = *pending;
                    let complete = match read {
                        Ok(()) => true,
                        // An error answer is translated from what fits.
                        Err(CollectError::TooLarge) => !parts.status.is_success(),
                        Err(CollectError::Body(_)) => false,
                    };
                    let data = collector.take().data;
                    return Poll::Ready(Ok(converted(parts, &data, complete, attempt)));
                }
            };
            state.set(next);
        }
    }
}

fn refused<B>(refusal: Refusal, api: ClientApi) -> Response<ModelBody<B>> {
    let (status, json) = refusal.into_parts(api);
    json_response(status, json)
}

enum Responded<S, ResB> {
    Done(Response<ModelBody<ResB>>),
    Convert(http::response::Parts, ResB, Box<Attempt<S>>, usize),
}

/// The answer's head goes to the client now (passed or streamed), or
/// its body is read whole first, to be translated.
fn respond<S, ResB>(res: Response<ResB>, attempt: Box<Attempt<S>>) -> Responded<S, ResB> {
    let (mut parts, body) = res.into_parts();
    let encoded = crate::body::is_encoded(&parts.headers);
    let stream = translate::is_event_stream(&parts.headers);
    let json = crate::body::is_json(&parts.headers);
    // Some OpenAI-compatible servers send no `Content-Type` at all: such
    // an answer's usage is read from its tail if it opens as a JSON object
    // ([`Tracker::untyped_tail`]); unread, it would be charged its
    // estimate (see the meter's settlement).
    let untyped = !parts.headers.contains_key(CONTENT_TYPE);
    let reply = attempt.reply;
    let translating = !matches!(reply, Reply::Pass(_) | Reply::HideUsage);
    // A whole answer is read before its head goes when the admission
    // hook's settlement has fields for its headers.
    let settle_whole = !stream
        && !encoded
        && parts.status.is_success()
        && json
        && attempt.ticket.is_some()
        && attempt
            .router
            .config
            .admit
            .as_ref()
            .is_some_and(|a| a.fields_on_answers());
    if settle_whole || (translating && !(stream && parts.status.is_success() && !encoded)) {
        let limit = if parts.status.is_success() {
            ANSWER_LIMIT
        } else {
            ERROR_LIMIT
        };
        return Responded::Convert(parts, body, attempt, limit);
    }
    let entry = &attempt.catalog.models[attempt.model];
    let reader = match reply {
        _ if encoded => Reader::None,
        Reply::Pass(Protocol::Anthropic) if stream => Tracker::anthropic_events(),
        Reply::HideUsage if stream => Tracker::map(Box::new(HideUsage::new())),
        Reply::Pass(p) if stream || json => Tracker::tail(p),
        Reply::HideUsage if json => Tracker::tail(Protocol::OpenAi),
        Reply::Pass(p) if untyped => Tracker::untyped_tail(p),
        Reply::HideUsage if untyped => Tracker::untyped_tail(Protocol::OpenAi),
        Reply::Pass(_) | Reply::HideUsage => Reader::None,
        _ => match translate::mapper(reply, &entry.name) {
            Some(m) => Tracker::map(m),
            None => Reader::None,
        },
    };
    let mapped = matches!(reader, Reader::Map(_));
    if mapped {
        parts.headers.remove(CONTENT_LENGTH);
        parts
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    }
    let (mut tracker, choice) = tracker(&mut parts, attempt, reader);
    tracker.sse = mapped || (stream && !encoded);
    if tracker.may_trail() {
        parts.headers.remove(CONTENT_LENGTH);
    }
    parts.extensions.insert(choice);
    Responded::Done(Response::from_parts(
        parts,
        ModelBody::tracked(body, tracker),
    ))
}

/// The tracker of an answer, and its response header.
fn tracker<S>(
    parts: &mut http::response::Parts,
    attempt: Box<Attempt<S>>,
    reader: Reader,
) -> (Tracker, ModelChoice) {
    let Attempt {
        router,
        catalog,
        model,
        choice,
        api,
        identity,
        started,
        flight,
        upstream,
        ticket,
        ..
    } = *attempt;
    let entry = &catalog.models[model];
    if let Some(name) = &router.config.response_header {
        parts
            .headers
            .insert(name.clone(), entry.header_value.clone());
    }
    if let Some(ticket) = &ticket {
        ticket.headers(&mut parts.headers);
    }
    let hook = router.config.usage_hook.clone();
    let report = (hook.is_some() || ticket.is_some()).then(|| {
        Box::new(Report {
            hook,
            ticket,
            record: UsageRecord {
                identity,
                alias: choice.alias.clone(),
                model: Arc::clone(&choice.model),
                upstream: Arc::clone(&choice.upstream),
                provider: upstream.provider.protocol,
                client: api,
                usage: Usage::default(),
                reported: false,
                status: parts.status,
                time_to_first_token: None,
                duration: Duration::ZERO,
            },
        })
    });
    (Tracker::new(flight, reader, started, report), choice)
}

/// A whole answer, translated.
fn converted<S, ResB>(
    mut parts: http::response::Parts,
    data: &[u8],
    complete: bool,
    attempt: Box<Attempt<S>>,
) -> Response<ModelBody<ResB>> {
    let entry = &attempt.catalog.models[attempt.model];
    let (status, json, usage) = if crate::body::is_encoded(&parts.headers) || !complete {
        let why = if complete {
            "The upstream's answer is compressed and cannot be translated."
        } else {
            "The upstream's answer could not be read whole."
        };
        let e = OpenAiError::new(
            StatusCode::BAD_GATEWAY,
            why,
            "api_error",
            None,
            Some("bad_upstream_response"),
        );
        let (status, json) = Refusal::from(e).into_parts(attempt.api);
        (status, json, None)
    } else {
        match attempt.reply {
            // Read whole for the settlement's headers, passed as it came.
            Reply::Pass(p) => (parts.status, data.to_vec(), last_usage(data, p)),
            Reply::HideUsage => (
                parts.status,
                data.to_vec(),
                last_usage(data, Protocol::OpenAi),
            ),
            reply => translate::convert(reply, parts.status, data, &entry.name),
        }
    };
    parts.status = status;
    parts.headers.remove(http::header::CONTENT_ENCODING);
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    crate::body::set_length(&mut parts.headers, json.len());
    let reader = usage.map_or(Reader::None, Reader::Known);
    let (mut tracker, choice) = tracker(&mut parts, attempt, reader);
    for (name, value) in tracker.done() {
        parts.headers.insert(name, value);
    }
    parts.extensions.insert(choice);
    Response::from_parts(parts, ModelBody::full(json))
}

/// Reads the model from a buffered body, picks a version and starts the
/// call (once the admission hook lets it).
fn route_body<S, ReqB, ResB>(
    router: &ModelRouter<S>,
    head: Parts,
    data: Bytes,
    api: ClientApi,
) -> Result<State<S, ReqB, ResB>, Refusal>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone,
{
    let field = model_field(&data)?;
    let catalog = router.shared.catalog.load_full();
    let picked = router.select(&catalog, &head, &field.name)?;
    let choice = router.choice(&catalog, &field.name, picked);
    let go = Go {
        head,
        body: Next::Read(data, field.info()),
        picked,
        choice,
        api,
        downgraded_from: None,
    };
    Ok(admit_then_call(router, catalog, go))
}

impl<S, ReqB, ResB> std::fmt::Debug for ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
