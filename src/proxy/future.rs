//! [`ResponseFuture`]: waiting for the upstream, with the response timeout
//! and the retry to another endpoint.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;

use crate::body::{InFlightGuard, ResponseBody};
use crate::future::Rejection;
use crate::problem::Problem;

use tokio::sync::oneshot;

use super::endpoints::Endpoint;
use super::pool::Timer;
use super::tunnel::tunnel;
use super::{Inner, ProxyBody, remove_hop_by_hop};

pin_project_lite::pin_project! {
    /// The response future of [`Upstream`](super::Upstream).
    pub struct ResponseFuture {
        #[pin]
        pub(super) state: State,
        pub(super) inner: Arc<Inner>,
        pub(super) grpc: bool,
        // The protocol asked for and the client's side of the tunnel, for a
        // request asking to switch protocols.
        pub(super) upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
        // The endpoint the request went to (none when answered without
        // one).
        pub(super) endpoint: Option<Arc<Endpoint>>,
        // The head of a request without a body, to send again to another
        // endpoint if this one cannot be reached.
        pub(super) retry: Option<Box<Retry>>,
        // The endpoint's in-flight count, handed to the response body.
        pub(super) guard: Option<InFlightGuard>,
        // The request's place among the upstream's pending ones, until
        // the response head.
        pub(super) pending: Option<InFlightGuard>,
        // Told when the request's body has ended (`true`) or failed on
        // the client's side (`false`); `None` once told, or without a body.
        pub(super) body_done: Option<oneshot::Receiver<bool>>,
        // The client's body failed: the exchange's failure is the
        // client's, not the endpoint's.
        pub(super) client_failed: bool,
        // When the response timeout runs out: set once the request is
        // sent (for a request with a body, once the body has ended).
        pub(super) deadline: Option<tokio::time::Instant>,
        // What wakes the task at the deadline: the connection's (see
        // `pool::Timer`), or one made when it first waits.
        pub(super) timer: Option<Timer>,
    }
}

/// A request that can be sent again: its head (the body was empty), and
/// whether its `Host` is the endpoint's.
pub(super) struct Retry {
    pub(super) parts: http::request::Parts,
    pub(super) endpoint_host: bool,
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    pub(super) enum State {
        // Handed to hyper-util's pool.
        Sent { #[pin] sent: hyper_util::client::legacy::ResponseFuture },
        // Handed to the lean pool.
        Pooled { #[pin] sent: super::pool::Exchange },
        // Answered without asking the upstream (taken when polled). Boxed,
        // being rare: inline, a whole response would make every
        // request's future larger (it is moved into place each request).
        Answered { res: Option<Box<Response<ResponseBody<Incoming>>>> },
    }
}

impl ResponseFuture {
    /// Answered without asking the upstream.
    pub(super) fn answered(
        res: Response<ResponseBody<Incoming>>,
        inner: Arc<Inner>,
        grpc: bool,
    ) -> Self {
        Self {
            state: State::Answered {
                res: Some(Box::new(res)),
            },
            inner,
            grpc,
            upgrade: None,
            endpoint: None,
            retry: None,
            guard: None,
            pending: None,
            body_done: None,
            client_failed: false,
            deadline: None,
            timer: None,
        }
    }

    /// Handed to the pool (with the timer of the connection it took, if
    /// any); the response timeout starts now for a request without a
    /// body, else when `body_done` says the body has ended.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn sent(
        (state, guard, timer): (State, InFlightGuard, Option<Timer>),
        inner: Arc<Inner>,
        grpc: bool,
        upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
        endpoint: Arc<Endpoint>,
        retry: Option<Box<Retry>>,
        pending: InFlightGuard,
        body_done: Option<oneshot::Receiver<bool>>,
    ) -> Self {
        let deadline = match body_done {
            None => inner.deadline(),
            Some(_) => None,
        };
        Self {
            state,
            inner,
            grpc,
            upgrade,
            endpoint: Some(endpoint),
            retry,
            guard: Some(guard),
            pending: Some(pending),
            body_done,
            client_failed: false,
            deadline,
            timer,
        }
    }
}

/// Whether `deadline` has passed, by `timer`, which wakes the task then. A
/// connection's timer may be armed for an earlier deadline (an earlier
/// exchange's): when that passes, it is set to this one; one armed for a
/// later deadline (a shorter timeout since) is set to this one at once.
fn expired(timer: &mut Timer, deadline: tokio::time::Instant, cx: &mut Context<'_>) -> bool {
    loop {
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        if timer.deadline() >= deadline {
            return true;
        }
        timer.as_mut().reset(deadline);
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody<Incoming>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let endpoints = &this.inner.endpoints;
            let result = match this.state.as_mut().project() {
                StateProj::Sent { sent: _ } | StateProj::Pooled { sent: _ } => {
                    // The body's end starts the clock.
                    if let Some(done) = this.body_done.as_mut()
                        && let Poll::Ready(told) = Pin::new(done).poll(cx)
                    {
                        *this.body_done = None;
                        if told == Ok(false) {
                            *this.client_failed = true;
                        } else {
                            *this.deadline = this.inner.deadline();
                        }
                    }
                    let polled = match this.state.as_mut().project() {
                        StateProj::Sent { sent } => sent
                            .poll(cx)
                            .map(|r| r.map(|res| (res, None)).map_err(SendError::Legacy)),
                        StateProj::Pooled { sent } => sent
                            .poll(cx)
                            .map(|r| r.map(|(res, c)| (res, Some(c))).map_err(SendError::Pooled)),
                        StateProj::Answered { .. } => Poll::Pending,
                    };
                    match polled {
                        Poll::Ready(result) => result,
                        Poll::Pending => {
                            if let Some(deadline) = *this.deadline
                                && expired(
                                    this.timer.get_or_insert_with(|| {
                                        Box::pin(tokio::time::sleep_until(deadline))
                                    }),
                                    deadline,
                                    cx,
                                )
                            {
                                if let Some(e) = this.endpoint.as_deref() {
                                    endpoints.record(e, false);
                                }
                                *this.guard = None;
                                *this.pending = None;
                                *this.deadline = None;
                                *this.timer = None;
                                let limit = this.inner.response_timeout.unwrap_or_default();
                                tracing::warn!(
                                    upstream = this.endpoint.as_deref().map_or("", |e| &e.url),
                                    timeout = ?limit,
                                    "upstream did not answer in time"
                                );
                                // The state's future is dropped with `self`;
                                // answered now.
                                this.state.set(State::Answered { res: None });
                                return Poll::Ready(Ok(answer(
                                    *this.grpc,
                                    Problem::new(StatusCode::GATEWAY_TIMEOUT).detail(format!(
                                        "upstream did not answer within {limit:?}"
                                    )),
                                )));
                            }
                            return Poll::Pending;
                        }
                    }
                }
                StateProj::Answered { res } => {
                    return Poll::Ready(Ok(res.take().map_or_else(
                        || {
                            // Polled again after completing: answer, never
                            // panic.
                            answer(*this.grpc, Problem::new(StatusCode::INTERNAL_SERVER_ERROR))
                        },
                        |res| *res,
                    )));
                }
            };
            *this.pending = None;
            *this.deadline = None;
            // A body that failed may not have been told yet.
            if result.is_err()
                && let Some(done) = this.body_done.as_mut()
                && done.try_recv() == Ok(false)
            {
                *this.client_failed = true;
            }
            let ok = result
                .as_ref()
                .is_ok_and(|(res, _)| !endpoints.ejection().fails(res.status()));
            // A failure the client caused (its body broke off) says nothing
            // about the endpoint.
            if (ok || !*this.client_failed)
                && let Some(e) = this.endpoint.as_deref()
            {
                endpoints.record(e, ok);
            }
            let e = match result {
                Ok((res, checkin)) => {
                    let switched = res.status() == StatusCode::SWITCHING_PROTOCOLS;
                    let mut res = upstream_response(res, this.upgrade.take(), this.inner);
                    if let Some(guard) = this.guard.take() {
                        res.body_mut().hold_guard(guard);
                    }
                    // An upgraded connection is the tunnel's, never the
                    // pool's again.
                    if let Some(mut checkin) = checkin.filter(|_| !switched) {
                        // The timer goes with the connection, armed.
                        checkin.keep_timer(this.timer.take());
                        res.body_mut().hold_checkin(checkin);
                    }
                    return Poll::Ready(Ok(res));
                }
                Err(e) => {
                    *this.guard = None;
                    e
                }
            };
            // Nothing was sent: another endpoint may take it.
            if e.is_connect()
                && let Some(tried) = this.endpoint.as_deref()
                && let Some(next) = endpoints.other_than(tried)
                && let Some(retry) = this.retry.take()
            {
                let (state, guard, timer) =
                    this.inner
                        .send(Arc::clone(&next), retry.parts, retry.endpoint_host);
                *this.endpoint = Some(next);
                this.state.set(state);
                *this.guard = Some(guard);
                *this.pending = this.inner.limits_pending();
                *this.deadline = this.inner.deadline();
                if this.timer.is_none() {
                    *this.timer = timer;
                }
                continue;
            }
            if *this.client_failed {
                return Poll::Ready(Ok(answer(
                    *this.grpc,
                    Problem::new(StatusCode::BAD_REQUEST)
                        .detail("the request body broke off before it ended"),
                )));
            }
            // The details (the endpoint's URL, the resolver's or TLS's
            // error) go to the log, never to the client.
            tracing::warn!(
                upstream = this.endpoint.as_deref().map_or("", |e| &e.url),
                error = %error_chain(&e),
                "upstream unavailable"
            );
            let detail = if e.is_connect() {
                "could not connect to upstream"
            } else {
                "upstream unavailable"
            };
            return Poll::Ready(Ok(answer(
                *this.grpc,
                Problem::new(StatusCode::BAD_GATEWAY).detail(detail),
            )));
        }
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// A refusal or failure, as problem+json (or a gRPC status to gRPC
/// clients).
pub(super) fn answer(grpc: bool, problem: Problem) -> Response<ResponseBody<Incoming>> {
    Rejection::new(problem).grpc(grpc).into_response()
}

/// The upstream's response on its way to the client: hop-by-hop headers
/// removed, and the tunnel set up when both sides agreed to switch
/// protocols.
fn upstream_response(
    mut res: Response<Incoming>,
    upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
    inner: &Inner,
) -> Response<ResponseBody<Incoming>> {
    let agreed = upgrade
        .as_ref()
        .and_then(|_| res.headers().get(header::UPGRADE).cloned());
    remove_hop_by_hop(res.headers_mut(), false);
    if let (Some((_, client)), Some(protocol)) = (upgrade, agreed)
        && res.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        // Whatever a layer outside hands this hold lives as long as the
        // tunnel.
        let hold = crate::upgrade::UpgradeHold::new();
        res.extensions_mut().insert(hold.clone());
        tunnel(
            client,
            hyper::upgrade::on(&mut res),
            hold,
            inner.upgrade_idle_timeout,
        );
        let headers = res.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    res.map(ResponseBody::new)
}

impl Inner {
    /// When a response timeout starting now runs out.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.response_timeout
            .map(|limit| tokio::time::Instant::now() + limit)
    }

    /// Hands `req` (its URI already `endpoint`'s) to the pool; the state
    /// to wait in, the request's count in the endpoint's in-flight, and
    /// the timer of the pool's connection it went on, if it has one.
    pub(super) fn send_request(
        &self,
        endpoint: Arc<Endpoint>,
        mut req: Request<ProxyBody>,
        host: bool,
    ) -> (State, InFlightGuard, Option<Timer>) {
        if host {
            req.headers_mut()
                .insert(header::HOST, endpoint.host.clone());
        }
        self.endpoints.sent(&endpoint);
        let guard = InFlightGuard::new(&endpoint.in_flight);
        let (state, timer) = match &self.pool {
            Some(pool) => {
                let (sent, timer) = pool.send(endpoint, req);
                (State::Pooled { sent }, timer)
            }
            None => (
                State::Sent {
                    sent: self.clients.get().request(req),
                },
                None,
            ),
        };
        (state, guard, timer)
    }

    /// A place among the pending requests for a retry (its first place
    /// was let go with the failure).
    fn limits_pending(&self) -> Option<InFlightGuard> {
        Some(InFlightGuard::new(&self.limits.pending))
    }

    /// Sends the head of a request without a body to `endpoint`.
    fn send(
        &self,
        endpoint: Arc<Endpoint>,
        mut parts: http::request::Parts,
        host: bool,
    ) -> (State, InFlightGuard, Option<Timer>) {
        // An absolute URI names the endpoint; one in origin form (the
        // pool's) is the same on any.
        if parts.uri.scheme().is_some() {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.authority = Some(endpoint.authority.clone());
            parts.uri = Uri::from_parts(uri).unwrap_or_default();
        }
        self.send_request(
            endpoint,
            Request::from_parts(parts, ProxyBody::default()),
            host,
        )
    }
}

/// Why sending to an upstream failed, whichever pool it went through.
#[derive(Debug)]
enum SendError {
    Legacy(hyper_util::client::legacy::Error),
    Pooled(super::pool::Error),
}

impl SendError {
    /// No connection could be opened: nothing was sent.
    fn is_connect(&self) -> bool {
        match self {
            SendError::Legacy(e) => e.is_connect(),
            SendError::Pooled(e) => e.is_connect(),
        }
    }
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Legacy(e) => e.fmt(f),
            SendError::Pooled(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Legacy(e) => e.source(),
            SendError::Pooled(e) => e.source(),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pin_project_lite::pin_project! {
    /// A request body that says when it has ended, or failed on the
    /// client's side: the response timeout starts at its end, and a
    /// failure of its own is not the upstream's.
    pub(super) struct SentBody {
        #[pin]
        body: ProxyBody,
        done: Option<oneshot::Sender<bool>>,
    }
}

impl SentBody {
    /// `body`, boxed again, and where its end is told.
    pub(super) fn wrap(body: ProxyBody) -> (ProxyBody, oneshot::Receiver<bool>) {
        let (tx, rx) = oneshot::channel();
        let body = SentBody {
            body,
            done: Some(tx),
        };
        (http_body_util::BodyExt::boxed_unsync(body), rx)
    }
}

impl http_body::Body for SentBody {
    type Data = bytes::Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.body.poll_frame(cx));
        match &polled {
            None => {
                if let Some(tx) = this.done.take() {
                    let _ = tx.send(true);
                }
            }
            Some(Err(_)) => {
                if let Some(tx) = this.done.take() {
                    let _ = tx.send(false);
                }
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
