//! [`TransformLayer`], [`Transform`] and [`TransformHandle`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::{Layer, Service};

use super::TransformError;
use super::apply;
use super::compile::{Compiled, compile};
use super::future::ResponseFuture;
use super::rules::Rules;
use crate::body::{RequestBody, ResponseBody};

/// Applies [`Rules`] to requests and responses. See the
/// [module docs](super) for the rules and an example.
///
/// The inner service receives `Request<RequestBody<B>>`: the client's body
/// streamed through untouched, or a body the layer rewrote. axum's `Route`
/// and hyper clients accept any such body.
#[derive(Debug, Clone)]
pub struct TransformLayer {
    shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    rules: ArcSwap<Compiled>,
    pub(crate) stats: Stats,
}

impl TransformLayer {
    /// Checks `rules` and builds the layer. Every error names the rule it
    /// is about (`sets[1]("api").request.headers.add[0]: ...`).
    pub fn new(rules: Rules) -> Result<Self, TransformError> {
        let compiled = compile(rules)?;
        Ok(Self {
            shared: Arc::new(Shared {
                rules: ArcSwap::from_pointee(compiled),
                stats: Stats::default(),
            }),
        })
    }

    /// A handle to change the rules while serving and read the counters.
    pub fn handle(&self) -> TransformHandle {
        TransformHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> Layer<S> for TransformLayer {
    type Service = Transform<S>;

    fn layer(&self, inner: S) -> Transform<S> {
        Transform {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`TransformLayer`] makes.
#[derive(Debug, Clone)]
pub struct Transform<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Transform<S> {
    /// The handle of the layer this service came from.
    pub fn handle(&self) -> TransformHandle {
        TransformHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Transform<S>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone,
    ReqB: Body<Data = Bytes>,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let rules = self.shared.rules.load();
        let (mut parts, body) = req.into_parts();
        let plan = match apply::apply(&rules, &mut parts) {
            Ok(plan) => plan,
            Err(rejection) => {
                self.shared.stats.rejected_uri.fetch_add(1, Relaxed);
                return ResponseFuture::rejected(rejection.for_request(&parts.headers));
            }
        };
        if !plan.body.is_empty() {
            return super::future::with_body_rules(
                &mut self.inner,
                &self.shared,
                &rules,
                parts,
                body,
                plan,
            );
        }
        let req = Request::from_parts(parts, RequestBody::new(body));
        ResponseFuture::calling(self.inner.call(req), plan.response, &self.shared)
    }
}

/// Changes a [`TransformLayer`]'s rules while it serves, and reads its
/// counters. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TransformHandle {
    shared: Arc<Shared>,
}

impl TransformHandle {
    /// Checks `rules` and, if they are valid, makes them the rules of the
    /// next request. Requests already under way finish with the rules they
    /// started with. Invalid rules are refused and the old ones stay.
    pub fn set_rules(&self, rules: Rules) -> Result<(), TransformError> {
        let compiled = compile(rules)?;
        self.shared.rules.store(Arc::new(compiled));
        Ok(())
    }

    /// The rules in force.
    pub fn rules(&self) -> Rules {
        self.shared.rules.load().source.clone()
    }

    /// The counters.
    pub fn stats(&self) -> TransformStats {
        let s = &self.shared.stats;
        TransformStats {
            request_bodies_rewritten: s.request_bodies.load(Relaxed),
            response_bodies_rewritten: s.response_bodies.load(Relaxed),
            response_bodies_passed: s.response_passed.load(Relaxed),
            rejected_invalid_json: s.rejected_json.load(Relaxed),
            rejected_too_large: s.rejected_large.load(Relaxed),
            rejected_media_type: s.rejected_media.load(Relaxed),
            rejected_invalid_uri: s.rejected_uri.load(Relaxed),
            rejected_body_error: s.rejected_body.load(Relaxed),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) request_bodies: AtomicU64,
    pub(crate) response_bodies: AtomicU64,
    pub(crate) response_passed: AtomicU64,
    pub(crate) rejected_json: AtomicU64,
    pub(crate) rejected_large: AtomicU64,
    pub(crate) rejected_media: AtomicU64,
    pub(crate) rejected_uri: AtomicU64,
    pub(crate) rejected_body: AtomicU64,
}

/// A [`TransformLayer`]'s counters, since it was built. Requests whose head
/// alone is rewritten are not counted (that would cost every request an
/// atomic add).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransformStats {
    /// Request bodies buffered and rewritten.
    pub request_bodies_rewritten: u64,
    /// Response bodies buffered and rewritten.
    pub response_bodies_rewritten: u64,
    /// Responses with body rules passed through untouched: not JSON, larger
    /// than the limit, invalid JSON, or with trailers.
    pub response_bodies_passed: u64,
    /// Requests refused with 400 because their body was not valid JSON.
    pub rejected_invalid_json: u64,
    /// Requests refused with 413.
    pub rejected_too_large: u64,
    /// Requests refused with 415.
    pub rejected_media_type: u64,
    /// Requests refused with 400 because a rewrite made their URI invalid.
    pub rejected_invalid_uri: u64,
    /// Requests refused with 400 because their body failed while it was
    /// read.
    pub rejected_body_error: u64,
}
