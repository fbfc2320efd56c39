//! The response future and response body of [`Split`](super::Split).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::handle::Shared;

/// One request in flight on one target; leaving it (by drop) ends the
/// request's in-flight time.
pub(crate) struct InFlight {
    shared: Arc<Shared>,
    index: usize,
    /// When the request was sent, on the split's latency clock (0 without
    /// one).
    started: u64,
    /// A gRPC response whose status comes in the trailers: counted when
    /// they arrive.
    grpc_pending: bool,
}

impl InFlight {
    /// Takes over a request already counted in flight by `Shared::enter`.
    #[inline]
    pub(crate) fn adopt(shared: Arc<Shared>, index: usize) -> Self {
        let started = shared.clock.as_ref().map_or(0, |c| c.now_nanos());
        Self {
            shared,
            index,
            started,
            grpc_pending: false,
        }
    }
}

impl InFlight {
    /// Counts a gRPC status from the trailers.
    #[cold]
    fn grpc_trailers(&mut self, trailers: &http::HeaderMap) {
        if std::mem::take(&mut self.grpc_pending) {
            let counters = self.shared.counters(self.index);
            match crate::grpc::status_in(trailers) {
                Some(code) => counters.response(crate::grpc::http_status_for(code)),
                None => counters.body_error(),
            }
        }
    }
}

impl Drop for InFlight {
    #[inline]
    fn drop(&mut self) {
        if self.grpc_pending {
            self.cut_off();
        }
        self.shared.exit(self.index);
    }
}

impl InFlight {
    /// A gRPC stream that ended without a status.
    #[cold]
    fn cut_off(&self) {
        self.shared.counters(self.index).body_error();
    }
}

pin_project! {
    /// Response future of [`Split`](super::Split).
    ///
    /// Counts the response's status class (or the error) on the chosen
    /// target, adds the echo header if configured, and hands the in-flight
    /// count over to the [`SplitBody`]. Dropping it before it completes
    /// ends the request's in-flight time.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, in_flight: InFlight) -> Self {
        Self {
            inner,
            in_flight: Some(in_flight),
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<SplitBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut in_flight = this.in_flight.take();
        match result {
            Ok(mut res) => {
                if let Some(f) = &mut in_flight {
                    // A gRPC answer's outcome is its grpc-status: in the
                    // headers (trailers-only) or, later, in the trailers.
                    let status = res.status();
                    if status == http::StatusCode::OK && crate::grpc::is_grpc(res.headers()) {
                        count_grpc(f, res.headers());
                    } else {
                        f.shared.counters(f.index).response(status);
                    }
                    if f.shared.clock.is_some() {
                        record_latency(f);
                    }
                    let meta = &f.shared.targets[f.index];
                    if let Some(name) = &f.shared.echo_header {
                        res.headers_mut()
                            .insert(name.clone(), meta.header_value.clone());
                    }
                }
                if res.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    hold_while_upgraded(&res, &mut in_flight);
                }
                Poll::Ready(Ok(res.map(|inner| SplitBody { inner, in_flight })))
            }
            Err(e) => {
                if let Some(f) = &in_flight {
                    f.shared.counters(f.index).error();
                }
                Poll::Ready(Err(e))
            }
        }
    }
}

/// Counts a gRPC answer: its status now (trailers-only) or when the
/// trailers come.
#[cold]
fn count_grpc(f: &mut InFlight, headers: &http::HeaderMap) {
    match crate::grpc::status_in(headers) {
        Some(code) => f
            .shared
            .counters(f.index)
            .response(crate::grpc::http_status_for(code)),
        None => f.grpc_pending = true,
    }
}

/// A 101 whose connection the target keeps open (a WebSocket through
/// `proxy::Upstream`): the request stays in flight until it closes, so
/// that `drained` waits for it.
#[cold]
fn hold_while_upgraded<B>(res: &Response<B>, in_flight: &mut Option<InFlight>) {
    if let Some(hold) = res.extensions().get::<crate::upgrade::UpgradeHold>()
        && let Some(f) = in_flight.take()
    {
        hold.hold(f);
    }
}

#[cold]
fn record_latency(f: &InFlight) {
    if let Some(clock) = &f.shared.clock {
        let took = clock.now_nanos().saturating_sub(f.started);
        f.shared.targets[f.index]
            .latency
            .record(std::time::Duration::from_nanos(took));
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// Response body of [`Split`](super::Split): the target's body, which
    /// keeps the request counted in flight on its target until the body
    /// has ended (its last frame, or an error) or been dropped.
    pub struct SplitBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B> SplitBody<B> {
    /// The target's body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// The target's body, ending its in-flight time.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> Body for SplitBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            None => drop(this.in_flight.take()),
            Some(Err(_)) => {
                if let Some(mut f) = this.in_flight.take() {
                    f.grpc_pending = false;
                    f.shared.counters(f.index).body_error();
                }
            }
            Some(Ok(frame)) => {
                if let (Some(f), Some(trailers)) = (this.in_flight.as_mut(), frame.trailers_ref()) {
                    f.grpc_trailers(trailers);
                }
                if this.inner.is_end_stream() {
                    drop(this.in_flight.take());
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> std::fmt::Debug for SplitBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitBody")
            .field("in_flight", &self.in_flight.is_some())
            .finish_non_exhaustive()
    }
}
