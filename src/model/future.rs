//! The response future of [`ModelRouter`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::Service;

use super::body::ModelBody;
use super::catalog::Compiled;
use super::openai::{OpenAiError, json_response, model_field};
use super::service::{
    ChoiceReason, ModelChoice, ModelRouter, Picked, set_length, splice, too_large,
};
use super::stats::Flight;
use crate::body::{CollectError, Collector, RequestBody};
use crate::split::Dispatch;

pin_project! {
    /// Response future of [`ModelRouter`](super::ModelRouter).
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<RequestBody<ReqB>>>,
    {
        #[pin]
        state: State<S, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB>
    where
        S: Service<Request<RequestBody<ReqB>>>,
    {
        // Reading the body to find the model.
        Reading {
            #[pin]
            body: ReqB,
            collector: Collector,
            pending: Option<Box<(ModelRouter<S>, Parts)>>,
        },
        Calling {
            #[pin]
            dispatch: Dispatch<S, Request<RequestBody<ReqB>>>,
            attempt: Option<Box<Attempt<S>>>,
        },
        // The router's own answer.
        Answer {
            answer: Option<(StatusCode, Vec<u8>)>,
        },
    }
}

/// One call to an upstream, and what to do if it fails.
struct Attempt<S> {
    router: ModelRouter<S>,
    catalog: Arc<Compiled>,
    model: usize,
    choice: ModelChoice,
    started: Instant,
    retry: Option<Retry>,
    /// Ends the in-flight count if this future is dropped (cancelled).
    flight: Flight,
}

/// What a retry on the fallback needs: the request as it was before the
/// model was rewritten.
struct Retry {
    head: Parts,
    body: Bytes,
    span: (usize, usize),
    model: usize,
}

impl<S, ReqB> ResponseFuture<S, ReqB>
where
    S: Service<Request<RequestBody<ReqB>>>,
{
    pub(crate) fn answer(status: StatusCode, json: Vec<u8>) -> Self {
        Self {
            state: State::Answer {
                answer: Some((status, json)),
            },
        }
    }

    pub(crate) fn error(error: OpenAiError) -> Self {
        let status = error.status();
        // Serializing strings cannot fail.
        let json = serde_json::to_vec(&error).unwrap_or_default();
        Self::answer(status, json)
    }

    pub(crate) fn reading(router: ModelRouter<S>, head: Parts, body: ReqB, limit: usize) -> Self {
        Self {
            state: State::Reading {
                body,
                collector: Collector::new(limit),
                pending: Some(Box::new((router, head))),
            },
        }
    }
}

impl<S, ReqB> ResponseFuture<S, ReqB>
where
    S: Service<Request<RequestBody<ReqB>>> + Clone,
{
    /// Calls the picked version's upstream.
    pub(crate) fn dispatch(
        router: &ModelRouter<S>,
        catalog: Arc<Compiled>,
        head: Parts,
        body: RequestBody<ReqB>,
        picked: Picked,
        choice: ModelChoice,
    ) -> Self {
        Self {
            state: start(router, catalog, head, body, picked.model, choice, None),
        }
    }
}

fn start<S, ReqB>(
    router: &ModelRouter<S>,
    catalog: Arc<Compiled>,
    mut head: Parts,
    body: RequestBody<ReqB>,
    model: usize,
    choice: ModelChoice,
    retry: Option<Retry>,
) -> State<S, ReqB>
where
    S: Service<Request<RequestBody<ReqB>>> + Clone,
{
    let entry = &catalog.models[model];
    let flight = Flight::start(Arc::clone(&entry.counters));
    head.extensions.insert(choice.clone());
    let service = router.upstreams[entry.upstream].clone();
    State::Calling {
        dispatch: Dispatch::new(service, Request::from_parts(head, body)),
        attempt: Some(Box::new(Attempt {
            router: router.clone(),
            catalog,
            model,
            choice,
            started: Instant::now(),
            retry,
            flight,
        })),
    }
}

/// The request for a version, from the body as the client sent it.
fn rewritten<B>(
    mut head: Parts,
    body: &Bytes,
    span: (usize, usize),
    json_name: &Bytes,
) -> (Parts, RequestBody<B>) {
    let body = splice(body, span, json_name);
    set_length(&mut head, body.len());
    (head, RequestBody::full(body, None))
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB>
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
                    let (router, head) = *pending;
                    match read {
                        Ok(()) => {
                            let data = collector.take().data;
                            match route_body(&router, head, data) {
                                Ok(state) => state,
                                Err(e) => return Poll::Ready(Ok(e.into_response())),
                            }
                        }
                        Err(CollectError::TooLarge) => {
                            return Poll::Ready(Ok(
                                too_large(router.config.body_limit).into_response()
                            ));
                        }
                        Err(CollectError::Body(_)) => {
                            return Poll::Ready(Ok(OpenAiError::new(
                                StatusCode::BAD_REQUEST,
                                "The request body failed while it was being read.",
                                "invalid_request_error",
                                None,
                                Some("body_error"),
                            )
                            .into_response()));
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
                    let Attempt {
                        router,
                        catalog,
                        model,
                        choice,
                        started,
                        retry,
                        flight,
                    } = *attempt;
                    let counters = flight.counters();
                    let on = router.config.fallback_on;
                    let failed = match &out {
                        Ok(res) => {
                            counters.response(res.status(), started.elapsed());
                            on.status(res.status())
                        }
                        Err(_) => {
                            counters.error();
                            on.errors
                        }
                    };
                    match (out, retry) {
                        (out, Some(retry)) if failed => {
                            // Before anything reached the client: retry on
                            // the fallback with the body as it came.
                            drop(out);
                            counters.fallback();
                            drop(flight);
                            let fallback = &catalog.models[retry.model];
                            let (head, body) =
                                rewritten(retry.head, &retry.body, retry.span, &fallback.json_name);
                            let choice = ModelChoice {
                                model: Arc::clone(&fallback.name),
                                upstream: router.shared.upstreams[fallback.upstream]
                                    .as_str()
                                    .into(),
                                reason: ChoiceReason::Fallback,
                                ..choice
                            };
                            let model = retry.model;
                            start(
                                &router,
                                Arc::clone(&catalog),
                                head,
                                body,
                                model,
                                choice,
                                None,
                            )
                        }
                        (Ok(res), _) => {
                            let (mut parts, body) = res.into_parts();
                            let entry = &catalog.models[model];
                            if let Some(name) = &router.config.response_header {
                                parts
                                    .headers
                                    .insert(name.clone(), entry.header_value.clone());
                            }
                            let scan = scans_usage(&parts.headers);
                            parts.extensions.insert(choice);
                            let body = ModelBody::tracked(body, flight, scan);
                            return Poll::Ready(Ok(Response::from_parts(parts, body)));
                        }
                        (Err(e), _) => {
                            drop(flight);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
            };
            state.set(next);
        }
    }
}

/// Reads the model from a buffered body, picks a version and starts the
/// call.
fn route_body<S, ReqB>(
    router: &ModelRouter<S>,
    head: Parts,
    data: Bytes,
) -> Result<State<S, ReqB>, OpenAiError>
where
    S: Service<Request<RequestBody<ReqB>>> + Clone,
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
            span: field.span,
            model,
        });
    let (head, body) = rewritten(
        head,
        &data,
        field.span,
        &catalog.models[picked.model].json_name,
    );
    Ok(start(
        router,
        catalog,
        head,
        body,
        picked.model,
        choice,
        retry,
    ))
}

/// Whether a response's usage can be read: JSON or an event stream, not
/// content-encoded.
fn scans_usage(headers: &http::HeaderMap) -> bool {
    if crate::body::is_encoded(headers) {
        return false;
    }
    let event_stream = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let essence = ct.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("text/event-stream")
        });
    event_stream || crate::body::is_json(headers)
}

impl<S, ReqB> std::fmt::Debug for ResponseFuture<S, ReqB>
where
    S: Service<Request<RequestBody<ReqB>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
