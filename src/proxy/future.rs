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

use super::tunnel::tunnel;
use super::{Inner, ProxyBody, remove_hop_by_hop};

pin_project_lite::pin_project! {
    /// The response future of [`Upstream`].
    pub struct ResponseFuture {
        #[pin]
        pub(super) state: State,
        pub(super) inner: Arc<Inner>,
        pub(super) grpc: bool,
        // The protocol asked for and the client's side of the tunnel, for a
        // request asking to switch protocols.
        pub(super) upgrade: Option<(HeaderValue, hyper::upgrade::OnUpgrade)>,
        // The endpoint the request went to.
        pub(super) endpoint: usize,
        // The head of a request without a body, to send again to another
        // endpoint if this one cannot be reached.
        pub(super) retry: Option<Box<Retry>>,
        // The endpoint's in-flight count, handed to the response body.
        pub(super) guard: Option<InFlightGuard>,
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
        // Handed to the pool, with the response timeout.
        Timed { #[pin] sent: tokio::time::Timeout<hyper_util::client::legacy::ResponseFuture> },
        // Handed to the pool, no response timeout.
        Sent { #[pin] sent: hyper_util::client::legacy::ResponseFuture },
        // Answered without asking the upstream (taken when polled).
        Answered { res: Option<Response<ResponseBody<Incoming>>> },
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<ResponseBody<Incoming>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let endpoints = &this.inner.endpoints;
            let result = match this.state.as_mut().project() {
                StateProj::Timed { sent } => match std::task::ready!(sent.poll(cx)) {
                    Ok(result) => result,
                    Err(_) => {
                        endpoints.record(*this.endpoint, false);
                        *this.guard = None;
                        let limit = this.inner.response_timeout.unwrap_or_default();
                        return Poll::Ready(Ok(answer(
                            *this.grpc,
                            Problem::new(StatusCode::GATEWAY_TIMEOUT).detail(format!(
                                "upstream {} did not answer within {limit:?}",
                                endpoints.get(*this.endpoint).url
                            )),
                        )));
                    }
                },
                StateProj::Sent { sent } => std::task::ready!(sent.poll(cx)),
                StateProj::Answered { res } => {
                    return Poll::Ready(Ok(res.take().unwrap_or_else(|| {
                        // Polled again after completing: answer, never panic.
                        answer(*this.grpc, Problem::new(StatusCode::INTERNAL_SERVER_ERROR))
                    })));
                }
            };
            let ok = result
                .as_ref()
                .is_ok_and(|res| !endpoints.ejection().fails(res.status()));
            endpoints.record(*this.endpoint, ok);
            let e = match result {
                Ok(res) => {
                    let res = upstream_response(res, this.upgrade.take(), this.inner);
                    return Poll::Ready(Ok(match this.guard.take() {
                        Some(guard) => res.map(|body| body.with_guard(guard)),
                        None => res,
                    }));
                }
                Err(e) => {
                    *this.guard = None;
                    e
                }
            };
            // Nothing was sent: another endpoint may take it.
            if e.is_connect()
                && let Some(next) = endpoints.other_than(*this.endpoint)
                && let Some(retry) = this.retry.take()
            {
                *this.endpoint = next;
                let (state, guard) = this.inner.send(next, retry.parts, retry.endpoint_host);
                this.state.set(state);
                *this.guard = Some(guard);
                continue;
            }
            let url = &endpoints.get(*this.endpoint).url;
            let detail = if e.is_connect() {
                format!("could not connect to upstream {url}")
            } else {
                format!("upstream {url} failed: {}", error_chain(&e))
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
    /// Hands `req` (its URI already `endpoint`'s) to the pool; the state
    /// to wait in, and the request's count in the endpoint's in-flight.
    pub(super) fn send_request(
        &self,
        endpoint: usize,
        mut req: Request<ProxyBody>,
        host: bool,
    ) -> (State, InFlightGuard) {
        let e = self.endpoints.get(endpoint);
        if host {
            req.headers_mut().insert(header::HOST, e.host.clone());
        }
        self.endpoints.sent(endpoint);
        let guard = InFlightGuard::new(&e.in_flight);
        let sent = self.client.request(req);
        let state = match self.response_timeout {
            Some(limit) => State::Timed {
                sent: tokio::time::timeout(limit, sent),
            },
            None => State::Sent { sent },
        };
        (state, guard)
    }

    /// Sends the head of a request without a body to `endpoint`.
    fn send(
        &self,
        endpoint: usize,
        mut parts: http::request::Parts,
        host: bool,
    ) -> (State, InFlightGuard) {
        let authority = self.endpoints.get(endpoint).authority.clone();
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.authority = Some(authority);
        parts.uri = Uri::from_parts(uri).unwrap_or_default();
        self.send_request(
            endpoint,
            Request::from_parts(parts, ProxyBody::default()),
            host,
        )
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
