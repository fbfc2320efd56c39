//! The response future of [`Transform`](super::Transform).
//!
//! [`ResponseFuture`] reads the request body first when a body rule asks
//! for it, then calls the inner service, then applies the response rules
//! (reading the response body only when a response body rule asks for
//! it). Name it where a struct holds a transformed call in flight:
//!
//! ```
//! use std::convert::Infallible;
//! use std::future::{Ready, ready};
//! use http::{Request, Response};
//! use http_body_util::BodyExt;
//! use switchyard::body::{RequestBody, ResponseBody};
//! use switchyard::transform::future::ResponseFuture;
//! use switchyard::transform::{RuleSet, Rules, TransformLayer};
//! use tower::service_fn;
//! use tower::util::ServiceFn;
//! use tower::{Layer, Service, ServiceExt};
//!
//! type Reply = Ready<Result<Response<String>, Infallible>>;
//! type Upstream = ServiceFn<fn(Request<RequestBody<String>>) -> Reply>;
//!
//! /// The upstream answers with the path it was asked for.
//! fn echo_path(req: Request<RequestBody<String>>) -> Reply {
//!     ready(Ok(Response::new(req.uri().path().to_owned())))
//! }
//!
//! /// A transformed call, held for later.
//! struct Pending {
//!     future: ResponseFuture<Upstream, String, String>,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = TransformLayer::new(Rules::new().set(RuleSet::named("v2").request(|r| {
//!     r.path.add_prefix("/v2");
//! })))?;
//! let upstream: Upstream = service_fn(echo_path as fn(_) -> _);
//! let mut svc = layer.layer(upstream);
//! let pending = Pending {
//!     future: svc.ready().await?.call(Request::get("/users").body(String::new())?),
//! };
//! let res: Response<ResponseBody<String>> = pending.future.await?;
//! assert_eq!(res.into_body().collect().await?.to_bytes(), "/v2/users");
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, Request, Response, StatusCode, request, response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::Service;

use super::apply::{Plan, ResponsePlan, is_json};
use super::compile::Compiled;
use super::json::{self, BodyOp, RewriteError};
use super::rules::NonJson;
use super::service::Shared;
use crate::body::{
    CollectError, Collector, RequestBody, ResponseBody, content_length, is_encoded, over_limit,
    set_length,
};
use crate::future::Rejection;
use crate::problem::Problem;

pin_project! {
    /// Response future of [`Transform`](super::Transform): reads and
    /// rewrites the request body when a body rule asks for it, calls the
    /// inner service, then applies the response rules.
    pub struct ResponseFuture<S, ReqB, ResB>
    where
        S: Service<Request<RequestBody<ReqB>>>,
    {
        #[pin]
        state: State<S, ReqB, ResB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB, ResB>
    where
        S: Service<Request<RequestBody<ReqB>>>,
    {
        // Reading the request body to rewrite it.
        Buffering {
            #[pin]
            body: ReqB,
            head: Option<Box<BufferedHead<S>>>,
            // Boxed, as the heads are: a rewrite that reads a body is the
            // rare case, and inline these would make every request's
            // future, `Calling` too, eight times as large.
            collector: Box<Collector>,
            shared: Arc<Shared>,
        },
        Calling {
            #[pin]
            future: S::Future,
            response: Option<(Box<ResponsePlan>, Arc<Shared>)>,
        },
        // Reading the response body to rewrite it.
        Reading {
            body: Option<Pin<Box<ResB>>>,
            head: Option<Box<(response::Parts, Box<ResponsePlan>)>>,
            collector: Box<Collector>,
            shared: Arc<Shared>,
        },
        Rejected {
            rejection: Option<Rejection>,
        },
    }
}

/// What waits while the request body is read.
struct BufferedHead<S> {
    parts: request::Parts,
    service: S,
    ops: Vec<BodyOp>,
    response: Option<Box<ResponsePlan>>,
    limit: usize,
}

impl<S, ReqB, ResB> ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>>,
{
    pub(crate) fn calling(
        future: S::Future,
        response: Option<Box<ResponsePlan>>,
        shared: &Arc<Shared>,
    ) -> Self {
        Self {
            state: State::Calling {
                future,
                response: response.map(|plan| (plan, Arc::clone(shared))),
            },
        }
    }

    pub(crate) fn rejected(rejection: Rejection) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
            },
        }
    }
}

/// Starts a request that has body rules: refuses it early (415, 413) when
/// its head says so, streams it through when there is nothing to rewrite,
/// or reads its body first.
pub(crate) fn with_body_rules<S, ReqB, ResB>(
    inner: &mut S,
    shared: &Arc<Shared>,
    rules: &Compiled,
    mut parts: request::Parts,
    body: ReqB,
    mut plan: Plan,
) -> ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>> + Clone,
    ReqB: Body<Data = Bytes>,
{
    let stats = &shared.stats;
    let stream = |inner: &mut S, parts, body, plan: Plan| {
        let req = Request::from_parts(parts, RequestBody::new(body));
        ResponseFuture::calling(inner.call(req), plan.response, shared)
    };
    let declared = content_length(&parts.headers);
    if body.is_end_stream() || declared == Some(0) {
        // No body: nothing to rewrite.
        return stream(inner, parts, body, plan);
    }
    if !is_json(&parts.headers) || is_encoded(&parts.headers) {
        return match rules.non_json {
            NonJson::Skip => stream(inner, parts, body, plan),
            NonJson::Reject => {
                stats.rejected_media.fetch_add(1, Relaxed);
                let got = parts
                    .headers
                    .get(CONTENT_TYPE)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                let detail = match got {
                    Some(got) => format!("this route rewrites JSON bodies; `{got}` is not JSON"),
                    None => "this route rewrites JSON bodies; the request has no Content-Type"
                        .to_owned(),
                };
                ResponseFuture::rejected(
                    Rejection::new(
                        Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE)
                            .detail(detail)
                            .with("accept", "application/json"),
                    )
                    .for_request(&parts.headers),
                )
            }
        };
    }
    let limit = rules.body_limit;
    if over_limit(&parts.headers, &body, limit) {
        stats.rejected_large.fetch_add(1, Relaxed);
        return ResponseFuture::rejected(too_large(limit).for_request(&parts.headers));
    }
    // The instance that was polled ready is the one called, once the body
    // is read; a clone takes its place here.
    let clone = inner.clone();
    let service = std::mem::replace(inner, clone);
    let ops = std::mem::take(&mut plan.body);
    parts.headers.remove(TRANSFER_ENCODING);
    ResponseFuture {
        state: State::Buffering {
            body,
            head: Some(Box::new(BufferedHead {
                parts,
                service,
                ops,
                response: plan.response,
                limit,
            })),
            collector: Box::new(Collector::new(limit)),
            shared: Arc::clone(shared),
        },
    }
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
    ReqB: Body<Data = Bytes>,
    ResB: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<ResB>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut state = self.as_mut().project().state;
            let next = match state.as_mut().project() {
                StateProj::Buffering {
                    body,
                    head,
                    collector,
                    shared,
                } => {
                    let read = ready!(collector.poll_collect(body, cx));
                    let Some(head) = head.take() else {
                        return Poll::Ready(Ok(polled_after_completion()));
                    };
                    let BufferedHead {
                        mut parts,
                        mut service,
                        ops,
                        response,
                        limit,
                    } = *head;
                    let stats = &shared.stats;
                    match read {
                        Ok(()) => {
                            let read = collector.take();
                            match json::rewrite(&read.data, ops) {
                                Ok(bytes) => {
                                    stats.request_bodies.fetch_add(1, Relaxed);
                                    set_length(&mut parts.headers, bytes.len());
                                    let body = RequestBody::full(Bytes::from(bytes), read.trailers);
                                    let future = service.call(Request::from_parts(parts, body));
                                    State::Calling {
                                        future,
                                        response: response.map(|p| (p, Arc::clone(shared))),
                                    }
                                }
                                Err(RewriteError::Invalid(e)) => {
                                    stats.rejected_json.fetch_add(1, Relaxed);
                                    rejected(
                                        Problem::new(StatusCode::BAD_REQUEST).detail(format!(
                                            "the request body is not valid JSON: {e}"
                                        )),
                                        &parts.headers,
                                    )
                                }
                                Err(RewriteError::DuplicateKey(key)) => {
                                    stats.rejected_json.fetch_add(1, Relaxed);
                                    let key: String = key.chars().take(64).collect();
                                    rejected(
                                        Problem::new(StatusCode::BAD_REQUEST).detail(format!(
                                            "the request body has the key `{key}` twice in one object"
                                        )),
                                        &parts.headers,
                                    )
                                }
                            }
                        }
                        Err(CollectError::TooLarge) => {
                            stats.rejected_large.fetch_add(1, Relaxed);
                            State::Rejected {
                                rejection: Some(too_large(limit).for_request(&parts.headers)),
                            }
                        }
                        Err(CollectError::Body(_)) => {
                            stats.rejected_body.fetch_add(1, Relaxed);
                            rejected(
                                Problem::new(StatusCode::BAD_REQUEST)
                                    .detail("the request body failed while it was being read"),
                                &parts.headers,
                            )
                        }
                    }
                }
                StateProj::Calling { future, response } => {
                    let res = ready!(future.poll(cx))?;
                    let Some((mut plan, shared)) = response.take() else {
                        return Poll::Ready(Ok(res.map(ResponseBody::new)));
                    };
                    let (mut parts, body) = res.into_parts();
                    plan.apply_headers(&mut parts.headers);
                    if !plan.rewrites_body() || body.is_end_stream() || !has_body(parts.status) {
                        return Poll::Ready(Ok(Response::from_parts(
                            parts,
                            ResponseBody::new(body),
                        )));
                    }
                    let limit = plan.rules.body_limit;
                    if !is_json(&parts.headers)
                        || is_encoded(&parts.headers)
                        || over_limit(&parts.headers, &body, limit)
                    {
                        shared.stats.response_passed.fetch_add(1, Relaxed);
                        plan.body.clear();
                        return Poll::Ready(Ok(Response::from_parts(
                            parts,
                            ResponseBody::new(body),
                        )));
                    }
                    State::Reading {
                        body: Some(Box::pin(body)),
                        head: Some(Box::new((parts, plan))),
                        collector: Box::new(Collector::new(limit)),
                        shared,
                    }
                }
                StateProj::Reading {
                    body,
                    head,
                    collector,
                    shared,
                } => {
                    let Some(rest) = body.as_mut() else {
                        return Poll::Ready(Ok(polled_after_completion()));
                    };
                    let read = ready!(collector.poll_collect(rest.as_mut(), cx));
                    let (Some(rest), Some(head)) = (body.take(), head.take()) else {
                        return Poll::Ready(Ok(polled_after_completion()));
                    };
                    let (mut parts, mut plan) = *head;
                    let stats = &shared.stats;
                    let collected = collector.take();
                    let ops = std::mem::take(&mut plan.body);
                    return Poll::Ready(Ok(match read {
                        Ok(()) if collected.trailers.is_none() => {
                            match json::rewrite(&collected.data, ops) {
                                Ok(bytes) => {
                                    stats.response_bodies.fetch_add(1, Relaxed);
                                    set_length(&mut parts.headers, bytes.len());
                                    Response::from_parts(parts, ResponseBody::full(bytes))
                                }
                                Err(RewriteError::Invalid(_) | RewriteError::DuplicateKey(_)) => {
                                    stats.response_passed.fetch_add(1, Relaxed);
                                    Response::from_parts(
                                        parts,
                                        ResponseBody::replay(collected, rest),
                                    )
                                }
                            }
                        }
                        Ok(()) | Err(CollectError::TooLarge) => {
                            stats.response_passed.fetch_add(1, Relaxed);
                            Response::from_parts(parts, ResponseBody::replay(collected, rest))
                        }
                        Err(CollectError::Body(_)) => Problem::new(StatusCode::BAD_GATEWAY)
                            .detail(
                                "the response body failed while it was being read for rewriting",
                            )
                            .into_response(),
                    }));
                }
                StateProj::Rejected { rejection } => {
                    return Poll::Ready(Ok(match rejection.take() {
                        Some(rejection) => rejection.into_response(),
                        None => polled_after_completion(),
                    }));
                }
            };
            state.set(next);
        }
    }
}

impl<S, ReqB, ResB> std::fmt::Debug for ResponseFuture<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

fn rejected<S, ReqB, ResB>(problem: Problem, request: &HeaderMap) -> State<S, ReqB, ResB>
where
    S: Service<Request<RequestBody<ReqB>>>,
{
    State::Rejected {
        rejection: Some(Rejection::new(problem).for_request(request)),
    }
}

fn too_large(limit: usize) -> Rejection {
    Rejection::new(
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE)
            .detail(format!(
                "this route rewrites request bodies of at most {limit} bytes"
            ))
            .with("limit", limit),
    )
}

/// Answers a future polled after it completed, without panicking.
fn polled_after_completion<B>() -> Response<ResponseBody<B>> {
    Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
        .detail("response future polled after completion")
        .into_response()
}

/// Whether a response with this status can carry a body.
fn has_body(status: StatusCode) -> bool {
    !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}
