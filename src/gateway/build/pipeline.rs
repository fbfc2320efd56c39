//! A route's pipeline behind one type: [`Pipeline`], a shared,
//! type-erased service whose calls box one future each.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::Service;

use crate::gateway::GatewayBody;
use crate::proxy::{BoxError, Upstream};
use crate::split::Split;

/// A route's whole pipeline, or the part of it under a layer, type-erased:
/// a clone shares it (a reference count, where a boxed clonable service
/// would clone every layer into a new box per request), and each call
/// clones the service inside and boxes one future.
///
/// Always ready: the service's own readiness is awaited in the future
/// ([`Oneshot`](tower::util::Oneshot)), as the gateway awaited it for each
/// request anyway.
#[derive(Clone)]
pub(crate) struct Pipeline(Arc<dyn ErasedService>);

/// The future of a [`Pipeline`].
pub(crate) type PipelineFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response<GatewayBody>, Infallible>> + Send>,
>;

trait ErasedService: Send + Sync {
    fn call(&self, req: Request<GatewayBody>) -> PipelineFuture;
}

/// A service behind a [`Pipeline`].
struct Erased<S>(S);

/// A split of upstreams behind a [`Pipeline`]: called in place
/// ([`Split::call_shared`]), not cloned per request.
struct ErasedSplit(Split<Upstream>);

impl ErasedService for ErasedSplit {
    fn call(&self, req: Request<GatewayBody>) -> PipelineFuture {
        Box::pin(Boxed {
            inner: self.0.call_with(req, Upstream::call_ref),
        })
    }
}

impl<S, B> ErasedService for Erased<S>
where
    S: Service<Request<GatewayBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn call(&self, req: Request<GatewayBody>) -> PipelineFuture {
        // `Dispatch` calls a service that is ready at once (every layer of
        // a route is, but for a limiter at its cap), so the request is not
        // moved into a waiting state and out again as `oneshot` would.
        Box::pin(Boxed {
            inner: crate::split::Dispatch::new(self.0.clone(), req),
        })
    }
}

pin_project_lite::pin_project! {
    /// A pipeline's response with its body boxed (see
    /// [`box_body`](crate::proxy::box_body)).
    struct Boxed<F> {
        #[pin]
        inner: F,
    }
}

impl<F, B> std::future::Future for Boxed<F>
where
    F: std::future::Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<GatewayBody>, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map_ok(|res| res.map(crate::proxy::box_body))
    }
}

impl Pipeline {
    /// A split of upstreams as a pipeline, called in place.
    pub(crate) fn split(split: Split<Upstream>) -> Self {
        Self(Arc::new(ErasedSplit(split)))
    }

    /// [`Service::call`] without `&mut` and without a clone: the gateway
    /// calls a route's pipeline in place (no reference count taken and
    /// given back on a line every serving thread shares).
    pub(crate) fn call_ref(&self, req: Request<GatewayBody>) -> PipelineFuture {
        self.0.call(req)
    }
}

impl Service<Request<GatewayBody>> for Pipeline {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = PipelineFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<GatewayBody>) -> PipelineFuture {
        self.call_ref(req)
    }
}

/// Erases a service whose responses have any body into a [`Pipeline`].
pub(crate) fn boxed<S, B>(svc: S) -> Pipeline
where
    S: Service<Request<GatewayBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Pipeline(Arc::new(Erased(svc)))
}
