//! The request body a service gets (cut when it stops arriving) and the
//! response body the server sends (holding the request's in-flight count).

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::conn::InFlight;
use super::stats::Counters;

/// Boxed errors, as hyper and tower carry them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error a request body ends with when it stopped arriving for longer
/// than [`ServerConfig::body_idle_timeout_ms`](super::ServerConfig::body_idle_timeout_ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body stopped arriving for {0:?}")]
pub struct BodyTimeout(pub Duration);

pin_project! {
    /// A request's body as the server hands it to the service: hyper's
    /// body, ended with a [`BodyTimeout`] error when it stops arriving for
    /// longer than the body idle timeout while the service waits for it.
    /// The clock only runs while the service is reading.
    pub struct IncomingBody {
        #[pin]
        inner: Incoming,
        #[pin]
        sleep: Option<Sleep>,
        timeout: Option<Duration>,
        waiting: bool,
        done: bool,
        timed_out: Option<Arc<AtomicBool>>,
        counters: Option<Arc<Counters>>,
    }
}

impl IncomingBody {
    pub(crate) fn new(
        inner: Incoming,
        timeout: Option<Duration>,
        timed_out: Option<Arc<AtomicBool>>,
        counters: Option<Arc<Counters>>,
    ) -> Self {
        Self {
            inner,
            sleep: None,
            timeout,
            waiting: false,
            done: false,
            timed_out,
            counters,
        }
    }
}

impl Body for IncomingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let Some(timeout) = *this.timeout else {
            return this.inner.poll_frame(cx).map_err(Into::into);
        };
        if *this.done {
            // Timed out already: the body is over.
            return Poll::Ready(None);
        }
        if !*this.waiting {
            // The clock starts when the service starts waiting.
            let deadline = Instant::now() + timeout;
            match this.sleep.as_mut().as_pin_mut() {
                Some(sleep) => sleep.reset(deadline),
                None => this.sleep.set(Some(tokio::time::sleep_until(deadline))),
            }
            *this.waiting = true;
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.waiting = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if let Some(sleep) = this.sleep.as_pin_mut() {
            ready!(sleep.poll(cx));
            *this.done = true;
            if let Some(counters) = this.counters.take() {
                counters.body_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(flag) = this.timed_out {
                flag.store(true, Ordering::Relaxed);
            }
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(timeout)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl fmt::Debug for IncomingBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingBody")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// A response body on its way out, holding its request's in-flight
    /// count until it ends or is dropped. A panic in the body it wraps
    /// ends it with an error (see the [module docs](super)).
    pub struct OutgoingBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
        // The body panicked: never polled again.
        poisoned: bool,
    }
}

impl<B> OutgoingBody<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Self {
        Self {
            inner,
            in_flight: Some(in_flight),
            poisoned: false,
        }
    }
}

/// The error a response body ends with when the body the service gave
/// panicked while it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the response body panicked")]
struct BodyPanicked;

impl<B> Body for OutgoingBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if *this.poisoned {
            return Poll::Ready(None);
        }
        let mut inner = this.inner;
        // A panic in the body (a bug of a layer or a handler, after the
        // head went out) ends it with an error, rather than unwinding
        // through hyper and ending the connection's task: hyper then cuts
        // the connection (HTTP/1.1: the response cannot be finished) or
        // resets the stream (HTTP/2), and the server counts it with the
        // service's panics. Whatever state the panic left the body in is
        // never observed: it is not polled again.
        let Ok(frame) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inner.as_mut().poll_frame(cx)
        })) else {
            *this.poisoned = true;
            if let Some(in_flight) = this.in_flight.take() {
                in_flight.count_panic();
            }
            return Poll::Ready(Some(Err(Box::new(BodyPanicked))));
        };
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            *this.in_flight = None;
        }
        frame.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.poisoned || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for OutgoingBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingBody").finish_non_exhaustive()
    }
}
