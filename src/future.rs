//! The response future shared by layers that may answer a request
//! themselves.
//!
//! Such a layer either calls its inner service, and then at most adds a few
//! headers to the response, or refuses the request with a [`Problem`]
//! response of its own without calling the inner service. [`ResponseFuture`] is that choice.
//! Its output is the inner response with its body wrapped in
//! [`ResponseBody`], which is also what a refusal's problem document is
//! sent in; name the type where a wrapper or a struct field needs it:
//!
//! ```
//! use std::convert::Infallible;
//! use std::future::Ready;
//! use http::{Request, Response};
//! use switchyard::auth::{ApiKey, ApiKeyLayer, Identity};
//! use switchyard::body::ResponseBody;
//! use switchyard::future::ResponseFuture;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! type Inner = Ready<Result<Response<String>, Infallible>>;
//!
//! /// A request on its way through the key check, held for later.
//! struct Pending {
//!     future: ResponseFuture<Inner>,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let auth = ApiKeyLayer::builder()
//!     .key(ApiKey::new("sk-1", Identity::new("alice")))
//!     .build()
//!     .unwrap();
//! let mut svc = auth.layer(service_fn(|_: Request<()>| {
//!     std::future::ready(Ok::<_, Infallible>(Response::new(String::from("hi"))))
//! }));
//! let pending = Pending {
//!     future: svc.ready().await.unwrap().call(Request::new(())),
//! };
//! // No key: refused by the layer, the inner service never called.
//! let res: Response<ResponseBody<String>> = pending.future.await.unwrap();
//! assert_eq!(res.status(), 401);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tower::Service;

use http::{HeaderMap, HeaderName, HeaderValue, Response};
use pin_project_lite::pin_project;

use crate::body::ResponseBody;
use crate::problem::Problem;

/// A refusal: the problem document and any headers that go with it
/// (`WWW-Authenticate`, `Retry-After`, ...), answered as problem+json, or
/// as a trailers-only gRPC response to a gRPC request (see
/// [`crate::grpc`]).
///
/// Boxed, so that the futures and results carrying one stay small on the
/// path where nothing is refused.
#[derive(Debug)]
pub(crate) struct Rejection(Box<Refusal>);

#[derive(Debug)]
struct Refusal {
    problem: Problem,
    headers: HeaderMap,
    grpc: bool,
}

impl Rejection {
    pub(crate) fn new(problem: Problem) -> Self {
        Self(Box::new(Refusal {
            problem,
            headers: HeaderMap::new(),
            grpc: false,
        }))
    }

    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.append(name, value);
        self
    }

    /// Answers in the request's protocol: gRPC requests get a gRPC status.
    pub(crate) fn for_request(self, request_headers: &HeaderMap) -> Self {
        self.grpc(crate::grpc::is_grpc(request_headers))
    }

    /// Answers as gRPC (or not).
    pub(crate) fn grpc(mut self, yes: bool) -> Self {
        self.0.grpc = yes;
        self
    }

    pub(crate) fn into_response<B>(self) -> Response<ResponseBody<B>> {
        let Refusal {
            problem,
            headers,
            grpc,
        } = *self.0;
        if grpc {
            let message = problem.message();
            let mut res = Response::new(ResponseBody::empty());
            *res.status_mut() = problem.status();
            res.headers_mut().extend(headers);
            let (mut parts, body) = res.into_parts();
            crate::grpc::trailers_only(&mut parts.headers, &mut parts.status, &message);
            return Response::from_parts(parts, body);
        }
        let mut res = problem.into_response();
        res.headers_mut().extend(headers);
        res
    }
}

pin_project! {
    /// Response future of switchyard's admission layers (authentication,
    /// scope checks, rate limiting): the inner service's response with the
    /// layer's headers added, or the layer's own rejection.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Inner {
            #[pin]
            future: F,
            headers: Vec<(HeaderName, HeaderValue)>,
        },
        Rejected {
            rejection: Option<Rejection>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(future: F) -> Self {
        Self::inner_with_headers(future, Vec::new())
    }

    pub(crate) fn inner_with_headers(future: F, headers: Vec<(HeaderName, HeaderValue)>) -> Self {
        Self {
            state: State::Inner { future, headers },
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

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future, headers } => {
                let mut res = ready!(future.poll(cx))?;
                let map = res.headers_mut();
                for (name, value) in headers.drain(..) {
                    map.insert(name, value);
                }
                Poll::Ready(Ok(res.map(ResponseBody::new)))
            }
            StateProj::Rejected { rejection } => {
                let rejection = rejection.take().unwrap_or_else(|| {
                    // Polled again after completing: answer, never panic.
                    Rejection::new(Problem::new(http::StatusCode::INTERNAL_SERVER_ERROR))
                });
                Poll::Ready(Ok(rejection.into_response()))
            }
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

// === answered panics ===

/// In a response's extensions: the answer a layer gave in place of a
/// panic under it (see [`OpenAiErrors`](crate::model::OpenAiErrors)), so
/// that the server still counts the panic (`ServerStats::panics`) though
/// it did not catch it itself.
#[cfg(feature = "json")]
#[derive(Clone, Copy, Debug)]
pub(crate) struct AnsweredPanic;

// === Dispatch ===

pin_project! {
    /// Calls a service with one request, as
    /// [`oneshot`](tower::ServiceExt::oneshot) does: waits until the
    /// service is ready, then calls it. The response future of a
    /// [`Split`](crate::split::Split) drives the chosen target with it; the
    /// server and the gateway drive their inner services with it.
    ///
    /// [`Dispatch::new`] first asks the service once whether it is ready
    /// already (with a no-op waker, which is harmless: a service that is
    /// not ready is asked again, with the task's waker, when this future is
    /// polled) and, if so, calls it at once, so the request is not moved
    /// into a waiting state and out again; the common case costs less.
    pub struct Dispatch<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: DispatchState<S, Req>,
    }
}

pin_project! {
    #[project = DispatchProj]
    enum DispatchState<S, Req>
    where
        S: Service<Req>,
    {
        // Boxed, being rare (every layer of a route is ready at once but
        // a limiter at its cap): inline, the request would make every
        // `Dispatch` as large as a request, moved with it on each call.
        Waiting { waiting: Box<(S, Option<Req>)> },
        Called { #[pin] future: S::Future },
        Failed { error: Option<S::Error> },
    }
}

impl<S: Service<Req>, Req> Dispatch<S, Req> {
    /// Calls `svc` with `req` at once if it is ready, else when polled
    /// once it is.
    pub fn new(mut svc: S, req: Req) -> Self {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let state = match svc.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => DispatchState::Called {
                future: svc.call(req),
            },
            Poll::Ready(Err(error)) => DispatchState::Failed { error: Some(error) },
            Poll::Pending => DispatchState::Waiting {
                waiting: Box::new((svc, Some(req))),
            },
        };
        Self { state }
    }
}

impl<S: Service<Req>, Req> Future for Dispatch<S, Req> {
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                DispatchProj::Called { future } => return future.poll(cx),
                DispatchProj::Failed { error } => match error.take() {
                    Some(e) => return Poll::Ready(Err(e)),
                    // Polled again after it failed: a contract breach by
                    // the caller, but never a panic here.
                    None => return Poll::Pending,
                },
                DispatchProj::Waiting { waiting } => {
                    let (svc, req) = &mut **waiting;
                    if let Err(e) = ready!(svc.poll_ready(cx)) {
                        return Poll::Ready(Err(e));
                    }
                    let Some(req) = req.take() else {
                        return Poll::Pending;
                    };
                    let future = svc.call(req);
                    this.state.set(DispatchState::Called { future });
                }
            }
        }
    }
}

impl<S: Service<Req>, Req> std::fmt::Debug for Dispatch<S, Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatch").finish_non_exhaustive()
    }
}
