//! The response future of [`ModelRouter`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::Service;

use super::body::{ModelBody, Reader, Report, Tracker};
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
    /// the path: the body passes as it is).
    pub(crate) fn dispatch(
        router: &ModelRouter<S>,
        catalog: Arc<Compiled>,
        mut head: Parts,
        body: RequestBody<ReqB>,
        picked: Picked,
        choice: ModelChoice,
    ) -> Self {
        let entry = &catalog.models[picked.model];
        let upstream = router.shared.providers[entry.upstream].load_full();
        let key = upstream.keys.apply(&mut head.headers, true);
        let reply = Reply::Pass(upstream.provider.protocol);
        Self {
            state: start(
                router,
                catalog,
                head,
                body,
                picked.model,
                choice,
                (ClientApi::Other, reply, key, upstream),
                None,
            ),
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
        })),
    }
}

/// Prepares and starts the call for `model`, from the client's body.
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
                            )
                            .ok()
                        }
                        _ => None,
                    };
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
    let reply = attempt.reply;
    let translating = !matches!(reply, Reply::Pass(_) | Reply::HideUsage);
    if translating && !(stream && parts.status.is_success() && !encoded) {
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
        Reply::Pass(p) if stream || crate::body::is_json(&parts.headers) => Tracker::tail(p),
        Reply::HideUsage if crate::body::is_json(&parts.headers) => Tracker::tail(Protocol::OpenAi),
        Reply::Pass(_) | Reply::HideUsage => Reader::None,
        _ => match translate::mapper(reply, &entry.name) {
            Some(m) => Tracker::map(m),
            None => Reader::None,
        },
    };
    if matches!(reader, Reader::Map(_)) {
        parts.headers.remove(CONTENT_LENGTH);
        parts
            .headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    }
    let (tracker, choice) = tracker(&mut parts, attempt, reader);
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
        ..
    } = *attempt;
    let entry = &catalog.models[model];
    if let Some(name) = &router.config.response_header {
        parts
            .headers
            .insert(name.clone(), entry.header_value.clone());
    }
    let report = router.config.usage_hook.clone().map(|hook| {
        Box::new(Report {
            hook,
            record: UsageRecord {
                identity,
                alias: choice.alias.clone(),
                model: Arc::clone(&choice.model),
                upstream: Arc::clone(&choice.upstream),
                provider: upstream.provider.protocol,
                client: api,
                usage: Usage::default(),
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
        translate::convert(attempt.reply, parts.status, data, &entry.name)
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
    tracker.done();
    parts.extensions.insert(choice);
    Response::from_parts(parts, ModelBody::full(json))
}

/// Reads the model from a buffered body, picks a version and starts the
/// call.
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
    let retry = picked
        .alias
        .and_then(|g| catalog.aliases[g].fallback)
        .filter(|&fallback| fallback != picked.model)
        .map(|model| Retry {
            head: head.clone(),
            body: data.clone(),
            info: field.info(),
            model,
        });
    call_version(
        router,
        catalog,
        head,
        &data,
        field.info(),
        picked.model,
        choice,
        api,
        retry,
    )
}

impl<S, ReqB, ResB> std::fmt::Debug for ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
