//! [`OpenAiErrors`]: the rejections of the layers in front of a model
//! router, in the error shape OpenAI clients parse.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::openai::OpenAiError;
use crate::body::ResponseBody;
use crate::problem::{CONTENT_TYPE_PROBLEM, Problem};

/// Re-renders switchyard's problem+json rejections as OpenAI error
/// documents; see [`OpenAiErrors`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAiErrorsLayer;

impl OpenAiErrorsLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for OpenAiErrorsLayer {
    type Service = OpenAiErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        OpenAiErrors { inner }
    }
}

/// Answers OpenAI clients in their own error shape, whichever layer
/// refused them.
///
/// The [`ModelRouter`](super::ModelRouter) answers bad requests in OpenAI's
/// error shape itself, but the layers in front of it (authentication,
/// scopes, rate limiting, transform, the proxy's 502 and 504) answer
/// `application/problem+json`, which OpenAI SDKs do not read: they look for
/// `error.message`. Put this layer outermost on AI routes. A response that
/// carries a switchyard [`Problem`] in its extensions (every problem+json
/// response switchyard makes does) gets the same status and headers
/// (`WWW-Authenticate`, `Retry-After`, `RateLimit`, ...) and, as body,
/// `{"error":{"message","type","param","code"}}`, with the problem's detail
/// as message and a type and code chosen by status:
///
/// | status | `type` | `code` |
/// |---|---|---|
/// | 401 | `invalid_request_error` | `invalid_api_key` |
/// | 403 | `invalid_request_error` | `permission_denied` |
/// | 404 | `invalid_request_error` | `not_found` |
/// | 413 | `invalid_request_error` | `request_too_large` |
/// | 415 | `invalid_request_error` | `unsupported_media_type` |
/// | 429 | `requests` | `rate_limit_exceeded` |
/// | other 4xx | `invalid_request_error` | — |
/// | 502, 503, 504 | `server_error` | `bad_gateway`, `service_unavailable`, `gateway_timeout` |
/// | other 5xx | `server_error` | — |
///
/// Every other response passes untouched, its body streamed: answers from
/// the models, the router's own errors, gRPC statuses.
///
/// A panic under the layer (a bug: in the inner service's `call` or its
/// future) is answered here too, as a 500 `server_error` with
/// `Connection: close`, in place of the problem+json a server's own
/// panic handling answers with; the inner future is dropped, never polled
/// again. switchyard's `server::Server` closes the connection and counts
/// the panic in its `ServerStats::panics`, as it does for a panic it
/// catches itself. A panic in a response body, after the head went out,
/// is left to the server.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::{BodyExt, Full};
/// use bytes::Bytes;
/// use switchyard::auth::{ApiKey, ApiKeyLayer, Identity};
/// use switchyard::model::OpenAiErrorsLayer;
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let models = service_fn(|_req: Request<Full<Bytes>>| async {
///     Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
/// });
/// let ai = ServiceBuilder::new()
///     .layer(OpenAiErrorsLayer::new())
///     .layer(ApiKeyLayer::builder().key(ApiKey::new("sk-alice", Identity::new("alice"))).build()?)
///     .service(models);
///
/// let res = ai.oneshot(Request::post("/v1/chat/completions").body(Full::default())?).await?;
/// assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
/// assert_eq!(res.headers()["content-type"], "application/json");
/// let body: serde_json::Value = serde_json::from_slice(&res.into_body().collect().await?.to_bytes())?;
/// assert_eq!(body["error"]["code"], "invalid_api_key");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct OpenAiErrors<S> {
    inner: S,
}

impl<S> OpenAiErrors<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for OpenAiErrors<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = OpenAiErrorsFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // A panic under this layer is answered by it (see the type's docs).
        let inner = &mut self.inner;
        let state = match std::panic::catch_unwind(AssertUnwindSafe(|| inner.call(req))) {
            Ok(future) => State::Running { future },
            Err(_) => State::Panicked,
        };
        OpenAiErrorsFuture { state }
    }
}

pin_project! {
    /// Response future of [`OpenAiErrors`].
    pub struct OpenAiErrorsFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] future: F },
        // The inner service panicked, in `call` or in a poll of its
        // future (which is dropped then, never polled again).
        Panicked,
        Done,
    }
}

impl<F, ResB, E> Future for OpenAiErrorsFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<ResB>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        let answer = match state.as_mut().project() {
            StateProj::Running { future } => {
                match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(result)) => {
                        state.set(State::Done);
                        return Poll::Ready(result.map(reshape));
                    }
                    Err(_) => panic_answer(),
                }
            }
            StateProj::Panicked => panic_answer(),
            // Polled again after its answer: an answer still, never a panic.
            StateProj::Done => openai_answer(&Problem::new(StatusCode::INTERNAL_SERVER_ERROR)),
        };
        state.set(State::Done);
        Poll::Ready(Ok(answer))
    }
}

impl<F> std::fmt::Debug for OpenAiErrorsFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiErrorsFuture").finish_non_exhaustive()
    }
}

fn reshape<B>(res: Response<B>) -> Response<ResponseBody<B>> {
    let (mut parts, body) = res.into_parts();
    let is_problem = parts
        .headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == CONTENT_TYPE_PROBLEM.as_bytes());
    let problem = if is_problem {
        parts.extensions.remove::<Problem>()
    } else {
        None
    };
    let Some(problem) = problem else {
        return Response::from_parts(parts, ResponseBody::new(body));
    };
    // The problem's own body is replaced, unread.
    drop(body);
    let body = openai_body(&problem, &mut parts.headers);
    Response::from_parts(parts, body)
}

/// `problem`'s OpenAI error document as a body, its `Content-Type` and
/// `Content-Length` set in `headers`.
fn openai_body<B>(problem: &Problem, headers: &mut HeaderMap) -> ResponseBody<B> {
    let json = serde_json::to_vec(&from_problem(problem)).unwrap_or_default();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(json.len()));
    ResponseBody::full(json)
}

/// A response of `problem`'s status with its OpenAI error document.
fn openai_answer<B>(problem: &Problem) -> Response<ResponseBody<B>> {
    let mut res = Response::new(());
    *res.status_mut() = problem.status();
    let body = openai_body(problem, res.headers_mut());
    res.map(|()| body)
}

/// The answer to a panic under the layer: a 500 `server_error` that
/// closes its connection, as the server's own answer to a panic does,
/// marked for the server to count.
#[cold]
fn panic_answer<B>() -> Response<ResponseBody<B>> {
    let problem = Problem::new(StatusCode::INTERNAL_SERVER_ERROR)
        .detail("the server failed while handling the request");
    let mut res = openai_answer(&problem);
    res.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    res.extensions_mut().insert(crate::future::AnsweredPanic);
    res
}

/// The OpenAI error for a problem: its message, and a type and code by
/// status (the table on [`OpenAiErrors`]).
pub(crate) fn from_problem(problem: &Problem) -> OpenAiError {
    let status = problem.status();
    let (kind, code) = match status {
        StatusCode::UNAUTHORIZED => ("invalid_request_error", Some("invalid_api_key")),
        StatusCode::FORBIDDEN => ("invalid_request_error", Some("permission_denied")),
        StatusCode::NOT_FOUND => ("invalid_request_error", Some("not_found")),
        StatusCode::PAYLOAD_TOO_LARGE => ("invalid_request_error", Some("request_too_large")),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("invalid_request_error", Some("unsupported_media_type"))
        }
        StatusCode::TOO_MANY_REQUESTS => ("requests", Some("rate_limit_exceeded")),
        StatusCode::BAD_GATEWAY => ("server_error", Some("bad_gateway")),
        StatusCode::SERVICE_UNAVAILABLE => ("server_error", Some("service_unavailable")),
        StatusCode::GATEWAY_TIMEOUT => ("server_error", Some("gateway_timeout")),
        s if s.is_server_error() => ("server_error", None),
        _ => ("invalid_request_error", None),
    };
    OpenAiError::new(status, problem.message(), kind, None, code)
}
