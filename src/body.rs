//! The bodies of layers that may answer a request themselves or rewrite a
//! body.
//!
//! A layer that refuses a request (401, 429, ...) answers with a small body
//! of its own; otherwise the inner service's body passes through untouched,
//! frame by frame. [`ResponseBody`] is either of the two (or, after a layer
//! read the start of a body and then decided to leave it alone, the bytes
//! it read followed by the rest), so the layer's response type stays one
//! type. [`RequestBody`] is the same on the way in: the client's body
//! streamed through, or a body a layer buffered and rewrote.
//!
//! ```
//! use http_body_util::BodyExt;
//! use switchyard::body::ResponseBody;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let body: ResponseBody<String> = ResponseBody::full("refused");
//! assert_eq!(body.collect().await.unwrap().to_bytes(), "refused");
//!
//! let body = ResponseBody::new(String::from("inner"));
//! assert_eq!(body.collect().await.unwrap().to_bytes(), "inner");
//! # }
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Either the inner service's body or a complete body a layer wrote
    /// itself (a rejection). See the [module docs](self).
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
        // Held until the body ends or is dropped (an upstream endpoint's
        // in-flight count).
        guard: Option<InFlightGuard>,
        // The upstream connection the body comes over: back to its pool
        // when the body has ended, closed if it is dropped before.
        checkin: Option<Checkin>,
    }
}

#[cfg(feature = "proxy")]
pub(crate) use crate::proxy::Checkin;

/// Without the proxy, no body comes over a pooled connection.
#[cfg(not(feature = "proxy"))]
pub(crate) enum Checkin {}

#[cfg(not(feature = "proxy"))]
impl Checkin {
    fn finish(self) {
        match self {}
    }
}

pin_project! {
    /// What both [`ResponseBody`] and [`RequestBody`] are.
    #[project = KindProj]
    enum Kind<B> {
        // The body, passed through.
        Inner { #[pin] body: B },
        // Bytes a layer holds (a body it wrote, or read and kept), their
        // trailers, then the rest of the body it read them from, if any.
        Held {
            data: Option<Bytes>,
            // Boxed, being rare: inline, a header map would make every
            // body, the ones passed through too, three times as large.
            trailers: Option<Box<HeaderMap>>,
            // Boxed: the layer polled it inside its own pinned future before
            // deciding to hand it on, and a pinned value cannot move.
            rest: Option<Pin<Box<B>>>,
        },
    }
}

impl<B> Kind<B> {
    fn held(data: Bytes, trailers: Option<HeaderMap>, rest: Option<Pin<Box<B>>>) -> Self {
        Kind::Held {
            data: (!data.is_empty()).then_some(data),
            trailers: trailers.map(Box::new),
            rest,
        }
    }

    /// What a layer read of `rest` (every byte), then the rest.
    fn replay(read: Collected, rest: Pin<Box<B>>) -> Self {
        Self::held(read.data, read.trailers, (!read.ended).then_some(rest))
    }
}

impl<B: Body<Data = Bytes>> Kind<B> {
    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Held {
                data,
                trailers,
                rest,
            } => poll_held(data, trailers, rest, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Held {
                data,
                trailers,
                rest,
            } => {
                data.is_none()
                    && trailers.is_none()
                    && rest.as_ref().is_none_or(|r| r.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Kind::Inner { body } => body.size_hint(),
            Kind::Held { data, rest, .. } => {
                let held = data.as_ref().map_or(0, |d| d.len() as u64);
                let Some(rest) = rest else {
                    return SizeHint::with_exact(held);
                };
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(held));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(held));
                }
                hint
            }
        }
    }
}

impl<B> ResponseBody<B> {
    /// The inner body, when this one only passes it through (nothing
    /// held, no in-flight count, no pooled connection): what
    /// [`proxy::box_body`](crate::proxy) hands on without boxing it again.
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    // The `Err` is the body itself, handed back by value once to be boxed.
    #[allow(clippy::result_large_err)]
    pub(crate) fn into_passthrough(self) -> Result<B, Self> {
        match self {
            Self {
                kind: Kind::Inner { body },
                guard: None,
                checkin: None,
            } => Ok(body),
            other => Err(other),
        }
    }

    /// The inner service's body, passed through.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
            guard: None,
            checkin: None,
        }
    }

    /// A complete body written by a layer.
    pub fn full(data: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::held(data.into(), None, None),
            guard: None,
            checkin: None,
        }
    }

    /// An empty body written by a layer.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// The part of `rest` a layer already read (as [`Collected`]), then
    /// whatever `rest` still holds: what a layer answers with when it read
    /// the start of a body and decided to leave it alone.
    #[cfg_attr(not(feature = "transform"), allow(dead_code))]
    pub(crate) fn replay(read: Collected, rest: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::replay(read, rest),
            guard: None,
            checkin: None,
        }
    }

    /// Holds `guard` until the body ends or is dropped.
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    pub(crate) fn hold_guard(&mut self, guard: InFlightGuard) {
        self.guard = Some(guard);
    }
}

impl<B: Body<Data = Bytes>> ResponseBody<B> {
    /// Hands `checkin`'s connection back to its pool once the body has
    /// ended (at once if it already has).
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    pub(crate) fn hold_checkin(&mut self, checkin: Checkin) {
        if self.kind.is_end_stream() {
            checkin.finish();
        } else {
            self.checkin = Some(checkin);
        }
    }
}

/// One in-flight count, taken back when dropped.
pub(crate) struct InFlightGuard(Arc<AtomicU64>);

impl InFlightGuard {
    /// Counts one more in `count` until the guard is dropped.
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    pub(crate) fn new(count: &Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(count))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = this.kind.as_mut().poll_frame(cx);
        if this.guard.is_some() && matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            // Over: the count goes back now, not when the body is dropped.
            *this.guard = None;
        }
        if this.checkin.is_some() {
            let ended = match &frame {
                // A server stops polling a body that says it has ended.
                Poll::Ready(None) => true,
                Poll::Ready(Some(Ok(_))) => this.kind.is_end_stream(),
                Poll::Ready(Some(Err(_))) => {
                    *this.checkin = None;
                    false
                }
                Poll::Pending => false,
            };
            if ended && let Some(checkin) = this.checkin.take() {
                checkin.finish();
            }
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.kind.size_hint()
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        describe(&self.kind, f, "ResponseBody")
    }
}

/// `Kind::describe` without the `Body` bound `Debug` impls cannot ask for.
fn describe<B>(kind: &Kind<B>, f: &mut std::fmt::Formatter<'_>, name: &str) -> std::fmt::Result {
    match kind {
        Kind::Inner { .. } => write!(f, "{name}::Inner(..)"),
        Kind::Held {
            data, rest: None, ..
        } => f.debug_tuple(&format!("{name}::Full")).field(data).finish(),
        Kind::Held { .. } => write!(f, "{name}::Replay(..)"),
    }
}

/// [`Kind::poll_frame`] of held bytes, out of line: a passed-through body
/// (the common case) is polled through a few inlined instructions, not past
/// the moves of a frame that may carry trailers.
#[inline(never)]
fn poll_held<B: Body<Data = Bytes>>(
    data: &mut Option<Bytes>,
    trailers: &mut Option<Box<HeaderMap>>,
    rest: &mut Option<Pin<Box<B>>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
    if let Some(data) = data.take() {
        return Poll::Ready(Some(Ok(Frame::data(data))));
    }
    if let Some(trailers) = trailers.take() {
        return Poll::Ready(Some(Ok(Frame::trailers(*trailers))));
    }
    match rest {
        Some(rest) => rest.as_mut().poll_frame(cx),
        None => Poll::Ready(None),
    }
}

// === impl RequestBody ===

pin_project! {
    /// The body a layer hands to its inner service: the client's body
    /// streamed through untouched, or a complete body the layer buffered
    /// (and perhaps rewrote). See the [module docs](self).
    ///
    /// ```
    /// use http_body_util::BodyExt;
    /// use switchyard::body::RequestBody;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let body = RequestBody::new(String::from("streamed"));
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "streamed");
    /// # }
    /// ```
    pub struct RequestBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

impl<B> RequestBody<B> {
    /// The inner body, when this one only passes it through: what
    /// [`proxy::box_body`](crate::proxy) hands on without boxing it again.
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))]
    // The `Err` is the body itself, handed back by value once to be boxed.
    #[allow(clippy::result_large_err)]
    pub(crate) fn into_passthrough(self) -> Result<B, Self> {
        match self.kind {
            Kind::Inner { body } => Ok(body),
            kind => Err(Self { kind }),
        }
    }

    /// The client's body, passed through.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Inner { body },
        }
    }

    /// A complete body, with the trailers the original body had.
    #[cfg_attr(not(feature = "transform"), allow(dead_code))]
    pub(crate) fn full(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: Kind::held(data, trailers, None),
        }
    }

    /// What a layer read of `rest` (every byte of it), then the rest.
    #[cfg_attr(not(feature = "mirror"), allow(dead_code))]
    pub(crate) fn replay(read: Collected, rest: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::replay(read, rest),
        }
    }

    /// Whether this is the client's body, streamed through untouched.
    pub fn is_streamed(&self) -> bool {
        matches!(self.kind, Kind::Inner { .. })
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().kind.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.kind.size_hint()
    }
}

impl<B> std::fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        describe(&self.kind, f, "RequestBody")
    }
}

// === impl Collector ===

/// What [`Collector`] read of a body.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "transform"), allow(dead_code))]
pub(crate) struct Collected {
    pub(crate) data: Bytes,
    pub(crate) trailers: Option<HeaderMap>,
    /// Whether the body ended (the data and trailers are all of it).
    pub(crate) ended: bool,
}

/// Why [`Collector`] stopped before the end of the body.
#[derive(Debug)]
#[cfg_attr(not(feature = "transform"), allow(dead_code))]
pub(crate) enum CollectError<E> {
    /// The body is longer than the limit. What was read so far (including
    /// the frame that crossed the limit) is still in the collector.
    TooLarge,
    /// The body failed.
    Body(E),
}

/// Buffers a body up to a limit, poll by poll, inside a layer's future.
///
/// Written here rather than taken from `http-body-util`'s `Limited` +
/// `collect` because a layer that finds a body too large (a response it
/// meant to rewrite) must be able to hand back every byte it read, followed
/// by the rest of the body, which those adapters do not allow.
#[derive(Debug)]
#[cfg_attr(not(feature = "transform"), allow(dead_code))]
pub(crate) struct Collector {
    /// The first chunk, kept as is: a body that arrives in one chunk is
    /// never copied.
    first: Option<Bytes>,
    more: BytesMut,
    trailers: Option<HeaderMap>,
    len: usize,
    limit: usize,
    ended: bool,
}

#[cfg_attr(not(feature = "transform"), allow(dead_code))]
impl Collector {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            first: None,
            more: BytesMut::new(),
            trailers: None,
            len: 0,
            limit,
            ended: false,
        }
    }

    /// Reads frames until the body ends (`Ok`), fails, or passes the limit.
    pub(crate) fn poll_collect<B>(
        &mut self,
        mut body: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), CollectError<B::Error>>>
    where
        B: Body<Data = Bytes>,
    {
        if self.ended {
            return Poll::Ready(Ok(()));
        }
        loop {
            let Some(frame) = std::task::ready!(body.as_mut().poll_frame(cx)) else {
                self.ended = true;
                return Poll::Ready(Ok(()));
            };
            let frame = frame.map_err(CollectError::Body)?;
            match frame.into_data() {
                Ok(data) => {
                    self.len = self.len.saturating_add(data.len());
                    self.push(data);
                    if self.len > self.limit {
                        return Poll::Ready(Err(CollectError::TooLarge));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        // Trailers are the last frame of a body.
                        self.trailers = Some(trailers);
                        self.ended = true;
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }

    fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        match &self.first {
            None => self.first = Some(data),
            Some(first) => {
                if self.more.is_empty() {
                    self.more.reserve(first.len() + data.len());
                    self.more.extend_from_slice(first);
                }
                self.more.extend_from_slice(&data);
            }
        }
    }

    /// Everything read so far.
    pub(crate) fn take(&mut self) -> Collected {
        let data = if self.more.is_empty() {
            self.first.take().unwrap_or_default()
        } else {
            self.first = None;
            std::mem::take(&mut self.more).freeze()
        };
        self.len = 0;
        Collected {
            data,
            trailers: self.trailers.take(),
            ended: self.ended,
        }
    }
}

// === what the layers that read bodies check ===

/// Whether a `Content-Type` is JSON: `application/json` or
/// `application/*+json`, any parameters.
#[cfg_attr(
    not(any(feature = "transform", feature = "json", feature = "mirror")),
    allow(dead_code)
)]
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Whether a body is content-encoded (gzip, ...): its bytes are not the
/// text its `Content-Type` names. `Content-Encoding` is a list, over one
/// or several header lines (`gzip, identity`); any coding but `identity`
/// counts, and so does a value that is not text.
#[cfg_attr(not(any(feature = "transform", feature = "json")), allow(dead_code))]
pub(crate) fn is_encoded(headers: &HeaderMap) -> bool {
    headers.get_all(CONTENT_ENCODING).iter().any(|v| {
        let Ok(v) = v.to_str() else { return true };
        v.split(',')
            .map(str::trim)
            .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"))
    })
}

/// The declared `Content-Length`, if it parses.
#[cfg_attr(
    not(any(feature = "transform", feature = "json", feature = "mirror")),
    allow(dead_code)
)]
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether a body is known, before it is read, to be longer than `limit`:
/// by its `Content-Length` or by its own size hint.
#[cfg_attr(
    not(any(feature = "transform", feature = "json", feature = "mirror")),
    allow(dead_code)
)]
pub(crate) fn over_limit<B: Body>(headers: &HeaderMap, body: &B, limit: usize) -> bool {
    let limit = limit as u64;
    content_length(headers).unwrap_or(0) > limit || body.size_hint().lower() > limit
}

/// Sets `Content-Length` for a rewritten body (and drops any
/// `Transfer-Encoding`).
#[cfg_attr(not(any(feature = "transform", feature = "json")), allow(dead_code))]
pub(crate) fn set_length(headers: &mut HeaderMap, len: usize) {
    headers.remove(TRANSFER_ENCODING);
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
}
