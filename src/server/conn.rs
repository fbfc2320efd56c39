//! One connection: its byte stream (watched for activity, and cut at a
//! shutdown's deadline), the watchdog that enforces the header read and
//! idle timeouts, and the service wrapper that puts the connection's facts
//! in each request and counts the requests in flight.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tower::Service;
use tower::util::MapErr;

use super::Phase;
use super::Shared;
use super::body::{BoxError, IncomingBody, OutgoingBody};
use super::stats::Counters;
use crate::body::ResponseBody;
use crate::conn::ConnectionInfo;
use crate::future::Dispatch;
use crate::problem::Problem;

// === impl ConnState ===

/// What the watchdog, the byte stream and the requests of one connection
/// share. Times are milliseconds since `base` (the accept).
#[derive(Debug)]
pub(crate) struct ConnState {
    base: Instant,
    // The server's counters, for what a request's future counts (a
    // panic): one reference a connection, none a request.
    counters: Arc<Counters>,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    h2: AtomicBool,
    idle_since: AtomicU64,
    // Set when the connection goes idle; the first byte read after clears
    // it and records `head_started`.
    awaiting_head: AtomicBool,
    // Milliseconds since `base`, plus one; zero for none.
    head_started: AtomicU64,
    // The task waiting to read, woken when a shutdown's deadline cuts the
    // connection.
    reader: Mutex<Option<Waker>>,
}

impl ConnState {
    pub(crate) fn new(counters: Arc<Counters>) -> Self {
        Self {
            base: Instant::now(),
            counters,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            h2: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            awaiting_head: AtomicBool::new(true),
            head_started: AtomicU64::new(0),
            reader: Mutex::new(None),
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, millis: u64) -> Instant {
        self.base + Duration::from_millis(millis)
    }

    /// Wakes the task waiting to read. The waker stays registered: the
    /// reader keeps a copy, and registers again only for another waker.
    pub(crate) fn wake_reader(&self) {
        let reader = self.reader.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waker) = &*reader {
            waker.wake_by_ref();
        }
    }

    /// What the watchdog makes of the connection at `now`. Never asks to
    /// be woken later than the shorter timeout from now: a request that
    /// starts or ends meanwhile cannot make a deadline earlier than that.
    fn check(&self, now: Instant, header: Option<Duration>, idle: Option<Duration>) -> Verdict {
        let step = match (header, idle) {
            (Some(h), Some(i)) => h.min(i),
            (Some(d), None) | (None, Some(d)) => d,
            // Far enough to mean "never" without overflowing an Instant.
            (None, None) => Duration::from_secs(24 * 3600),
        };
        match self.deadline(now, step, header, idle) {
            Verdict::Until(at) => Verdict::Until(at.min(now + step)),
            verdict => verdict,
        }
    }

    fn deadline(
        &self,
        now: Instant,
        step: Duration,
        header: Option<Duration>,
        idle: Option<Duration>,
    ) -> Verdict {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Verdict::Until(now + step);
        }
        let first = self.requests.load(Ordering::Acquire) == 0;
        if first && let Some(header) = header {
            // The first request (TLS handshake and h2 preface included)
            // must arrive within the header timeout of the accept.
            let deadline = self.base + header;
            return if now >= deadline {
                Verdict::HeaderTimeout
            } else {
                Verdict::Until(deadline)
            };
        }
        if !self.h2.load(Ordering::Relaxed)
            && let Some(header) = header
        {
            let started = self.head_started.load(Ordering::Acquire);
            if started > 0 {
                let deadline = self.at(started - 1) + header;
                return if now >= deadline {
                    Verdict::HeaderTimeout
                } else {
                    Verdict::Until(deadline)
                };
            }
        }
        let Some(idle) = idle else {
            return Verdict::Until(now + step);
        };
        let deadline = self.at(self.idle_since.load(Ordering::Acquire)) + idle;
        if now >= deadline {
            Verdict::Idle
        } else {
            Verdict::Until(deadline)
        }
    }
}

/// The watchdog's finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Nothing to do before then.
    Until(Instant),
    /// No request in flight for the idle timeout: close gracefully.
    Idle,
    /// A request head (or the first request) is late: drop the connection.
    HeaderTimeout,
}

// === impl InFlight ===

/// One request in flight on a connection, until its response body ends or
/// is dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ConnState>);

impl InFlight {
    fn new(state: Arc<ConnState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(state)
    }

    /// Counts a panic of the service on this request (its future's, or
    /// its response body's).
    #[cold]
    pub(crate) fn count_panic(&self) {
        self.0.counters.panics.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let state = &self.0;
        if state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            state
                .idle_since
                .store(state.millis(Instant::now()), Ordering::Release);
            state.head_started.store(0, Ordering::Release);
            state.awaiting_head.store(true, Ordering::Release);
        }
    }
}

// === impl Io ===

pin_project_lite::pin_project! {
    /// The connection's byte stream: notes when a request head starts
    /// arriving, fails once a shutdown's deadline has passed, and counts
    /// the connection open until dropped (an upgraded connection keeps it
    /// after its HTTP connection is over).
    pub(crate) struct Io<T> {
        #[pin]
        inner: T,
        state: Arc<ConnState>,
        shared: Arc<Shared>,
        id: u64,
        // Its place in its serving thread's count (several threads).
        seat: Option<super::Seat>,
        // What `state.reader` holds, as this reader last registered it: a
        // read that waits with the same waker (the connection task's, read
        // after read) takes no lock.
        registered: Option<Waker>,
    }

    impl<T> PinnedDrop for Io<T> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            this.shared.closed(*this.id);
        }
    }
}

impl<T> Io<T> {
    pub(crate) fn new(
        inner: T,
        state: Arc<ConnState>,
        shared: Arc<Shared>,
        id: u64,
        seat: Option<super::Seat>,
    ) -> Self {
        Self {
            inner,
            state,
            shared,
            id,
            seat,
            registered: None,
        }
    }
}

fn cut() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the server's shutdown deadline passed",
    )
}

impl<T: AsyncRead> AsyncRead for Io<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.shared.killed.load(Ordering::Relaxed) {
            return Poll::Ready(Err(cut()));
        }
        let before = buf.filled().len();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let state = this.state;
                if buf.filled().len() > before
                    && state.awaiting_head.load(Ordering::Relaxed)
                    && state.awaiting_head.swap(false, Ordering::AcqRel)
                {
                    let now = state.millis(Instant::now());
                    state.head_started.store(now + 1, Ordering::Release);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let waker = cx.waker();
                if !this.registered.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    *this
                        .state
                        .reader
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(waker.clone());
                    *this.registered = Some(waker.clone());
                }
                // The deadline may have passed while registering.
                if this.shared.killed.load(Ordering::Relaxed) {
                    return Poll::Ready(Err(cut()));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for Io<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if this.shared.killed.load(Ordering::Relaxed) {
            return Poll::Ready(Err(cut()));
        }
        this.inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if this.shared.killed.load(Ordering::Relaxed) {
            return Poll::Ready(Err(cut()));
        }
        // A small response comes as hyper's head and the body's chunk in
        // two slices: one `send` of them costs the kernel less than a
        // `writev` (see `crate::gather`).
        crate::gather::write_vectored(this.inner, cx, bufs, T::poll_write, T::poll_write_vectored)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

// === impl ConnService ===

/// The service as one connection sees it: the connection's facts in each
/// request's extensions, the body idle timeout on its body, and its
/// response counted in flight until its body ends.
#[derive(Debug)]
pub(crate) struct ConnService<S> {
    /// Called in place when it is ready (hyper calls with `&self`; a tower
    /// service takes `&mut self`): no clone of it a request, which for the
    /// gateway is a reference count taken and given back on a line every
    /// serving thread shares. Calls never overlap: each borrow lasts one
    /// synchronous `call`.
    inner: std::cell::RefCell<S>,
    state: Arc<ConnState>,
    shared: Arc<Shared>,
    // What each request's extensions start with (the connection's facts):
    // cloned into them.
    extensions: http::Extensions,
}

/// The connection's facts as extensions, in a table with room for one
/// more: the split's `Target` then goes in without the table growing (a
/// clone keeps the table's size; one built by inserting three would be
/// full).
fn conn_extensions(info: ConnectionInfo) -> http::Extensions {
    /// Inserted only to size the table, and removed: with them it
    /// holds four or five values, which takes a table of eight.
    #[derive(Clone)]
    struct Room<const N: u8>;
    let mut extensions = http::Extensions::new();
    extensions.insert(info.peer);
    #[cfg(feature = "axum")]
    extensions.insert(axum::extract::ConnectInfo(info.peer));
    extensions.insert(info);
    extensions.insert(Room::<0>);
    extensions.insert(Room::<1>);
    extensions.remove::<Room<0>>();
    extensions.remove::<Room<1>>();
    extensions
}

impl<S, B> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<IncomingBody>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes>,
{
    type Response = Response<OutgoingBody<ResponseBody<B>>>;
    type Error = BoxError;
    type Future = ConnFuture<S, B>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let state = &self.state;
        self.shared.counters.requests.add(0, 1);
        if state.requests.fetch_add(1, Ordering::AcqRel) == 0 && req.version() == Version::HTTP_2 {
            state.h2.store(true, Ordering::Relaxed);
        }
        let in_flight = InFlight::new(Arc::clone(state));
        let (mut parts, body) = req.into_parts();
        // The peer's `SocketAddr`, axum's `ConnectInfo` of it (feature
        // `axum`) and the `ConnectionInfo`: one clone of the connection's.
        parts.extensions.extend(self.extensions.clone());
        let timeout = self
            .shared
            .limits
            .body_idle_timeout
            .filter(|_| !body.is_end_stream());
        let timed_out = timeout.map(|_| Arc::new(AtomicBool::new(false)));
        let body = IncomingBody::new(
            body,
            timeout,
            timed_out.clone(),
            timeout.map(|_| Arc::clone(&self.shared.counters)),
        );
        let req = Request::from_parts(parts, body);
        // The service called in place when it is ready already (the
        // gateway always is). One that is not goes into the future, to be
        // asked again with the task's waker, and a clone takes its place:
        // whatever its readiness reserved (a semaphore's place in line,
        // say) is the waiting request's, not left with an instance that
        // nothing polls until the connection's next request.
        //
        // A panic in `poll_ready` or `call` (before any future exists) is
        // answered like one in the future (see [`ConnFuture`]'s `poll`):
        // `call` stays `Panicked`. It is written from within the closure,
        // which returns nothing: a future handed out of `catch_unwind`
        // would be copied once more on its way, on every request.
        let mut call = Call::Panicked { _none: () };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            call = match self.inner.try_borrow_mut() {
                Ok(mut svc) => {
                    let mut cx = Context::from_waker(std::task::Waker::noop());
                    match svc.poll_ready(&mut cx) {
                        Poll::Ready(Ok(())) => Call::Called {
                            future: svc.call(req),
                        },
                        _ => {
                            let fresh = svc.clone();
                            let asked = std::mem::replace(&mut *svc, fresh);
                            Call::Waiting {
                                dispatch: Box::pin(Dispatch::new(
                                    MapErr::new(asked, Into::into),
                                    req,
                                )),
                            }
                        }
                    }
                }
                // Only if the service itself made this connection call it
                // again: never, but never a panic either.
                Err(_) => Call::Failed {
                    error: Some(
                        "the connection's service was called from within its own call".into(),
                    ),
                },
            };
        }));
        ConnFuture {
            inner: call,
            in_flight: Some(in_flight),
            timed_out,
        }
    }
}

pin_project! {
    /// How a [`ConnService`] called its service.
    #[project = CallProj]
    enum Call<S>
    where
        S: Service<Request<IncomingBody>>,
    {
        // Called in place.
        Called { #[pin] future: S::Future },
        // The instance that was not ready, awaited (a clone took its
        // place). Errors boxed when they happen: the future holds no
        // `S::Error` (which need not be `Send`). Boxed, being rare: inline,
        // its request would make every request's future as large as a
        // request (hyper moves that future three times a request).
        Waiting {
            dispatch: Pin<Box<Dispatch<MapErr<S, fn(S::Error) -> BoxError>, Request<IncomingBody>>>>,
        },
        Failed { error: Option<BoxError> },
        // The service panicked: answered with a 500, never polled (the
        // field only because pin-project-lite wants one).
        Panicked { _none: () },
    }
}

pin_project! {
    /// The response future of [`ConnService`].
    pub(crate) struct ConnFuture<S, B>
    where
        S: Service<Request<IncomingBody>, Response = Response<B>>,
    {
        #[pin]
        inner: Call<S>,
        in_flight: Option<InFlight>,
        timed_out: Option<Arc<AtomicBool>>,
    }
}

impl<S, B> Future for ConnFuture<S, B>
where
    S: Service<Request<IncomingBody>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<OutgoingBody<ResponseBody<B>>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut inner = this.inner;
        // A panic in the service's future (a bug of a layer or a handler)
        // is this request's alone: it is answered with a 500 and its
        // connection closed, rather than the connection's task ending with
        // no answer at all. The future is dropped and never polled again,
        // so whatever state the panic left it in is not observed.
        //
        // The service's result is written from within the closure (see
        // `call`); it is still `None` once ready if the service panicked.
        let mut result = None;
        let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match inner.as_mut().project() {
                CallProj::Called { future } => {
                    result = Some(ready!(future.poll(cx)).map_err(Into::into));
                }
                CallProj::Waiting { dispatch } => result = Some(ready!(dispatch.as_mut().poll(cx))),
                CallProj::Failed { error } => {
                    result = Some(Err(error
                        .take()
                        .unwrap_or_else(|| "polled after completion".into())));
                }
                CallProj::Panicked { .. } => {}
            }
            Poll::Ready(())
        }));
        match ready {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(())) => {}
            Err(_) => inner.set(Call::Panicked { _none: () }),
        }
        let Some(in_flight) = this.in_flight.take() else {
            return Poll::Ready(Err("polled after completion".into()));
        };
        let Some(result) = result else {
            in_flight.count_panic();
            return Poll::Ready(Ok(closing_answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server failed while handling the request",
                in_flight,
            )));
        };
        let timed_out = this
            .timed_out
            .as_ref()
            .is_some_and(|t| t.load(Ordering::Relaxed));
        if timed_out {
            // The body stopped arriving and nothing has been answered yet:
            // say so, and end the connection (the rest of the body will
            // not be read).
            return Poll::Ready(Ok(closing_answer(
                StatusCode::REQUEST_TIMEOUT,
                "the request body stopped arriving",
                in_flight,
            )));
        }
        Poll::Ready(match result {
            Ok(res) => {
                // A layer answered a panic under it in its own shape
                // (`OpenAiErrors`): counted as the server's own would be.
                #[cfg(feature = "json")]
                if res
                    .extensions()
                    .get::<crate::future::AnsweredPanic>()
                    .is_some()
                {
                    in_flight.count_panic();
                }
                Ok(res.map(|b| OutgoingBody::new(ResponseBody::new(b), in_flight)))
            }
            Err(e) => Err(e),
        })
    }
}

/// The server's own answer in place of the service's, a problem+json
/// with `Connection: close`.
#[cold]
fn closing_answer<B>(
    status: StatusCode,
    detail: &'static str,
    in_flight: InFlight,
) -> Response<OutgoingBody<ResponseBody<B>>> {
    let mut res = Problem::new(status).detail(detail).into_response::<B>();
    res.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    res.map(|b| OutgoingBody::new(b, in_flight))
}

// === serving one connection ===

/// Serves one accepted connection to the end: the TLS handshake if any,
/// then HTTP, under the watchdog, until the client closes, the watchdog
/// closes, or a shutdown does.
pub(crate) async fn serve<S, B>(
    shared: Arc<Shared>,
    state: Arc<ConnState>,
    io: Io<tokio::net::TcpStream>,
    service: S,
    peer: SocketAddr,
    local: SocketAddr,
) where
    S: Service<Request<IncomingBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let phase = shared.phase.subscribe();
    #[cfg(feature = "tls")]
    if let Some(tls) = &shared.tls {
        let mut phase = phase;
        let acceptor = tls.acceptor();
        let handshake = acceptor.accept(io);
        let deadline = shared.limits.header_read_timeout.map(|t| state.base + t);
        let stream = tokio::select! {
            r = async {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, handshake).await,
                    None => Ok(handshake.await),
                }
            } => r,
            () = wait_killed(&mut phase) => return,
        };
        match stream {
            Ok(Ok(stream)) => {
                let info = ConnectionInfo::new(peer, local, true);
                return http(&shared, state, TokioIo::new(stream), service, info, phase).await;
            }
            Ok(Err(_)) => {
                shared
                    .counters
                    .tls_handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                shared
                    .counters
                    .header_timeouts
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        return;
    }
    let info = ConnectionInfo::new(peer, local, false);
    http(&shared, state, TokioIo::new(io), service, info, phase).await;
}

/// Waits until a shutdown's deadline has passed.
#[cfg(feature = "tls")]
async fn wait_killed(phase: &mut tokio::sync::watch::Receiver<Phase>) {
    loop {
        if matches!(*phase.borrow_and_update(), Phase::Killed) {
            return;
        }
        if phase.changed().await.is_err() {
            // The server is gone: nothing will ever kill us.
            std::future::pending::<()>().await;
        }
    }
}

async fn http<I, S, B>(
    shared: &Arc<Shared>,
    state: Arc<ConnState>,
    io: I,
    service: S,
    info: ConnectionInfo,
    mut phase: tokio::sync::watch::Receiver<Phase>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service<Request<IncomingBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let service = ConnService {
        inner: std::cell::RefCell::new(service),
        state: Arc::clone(&state),
        shared: Arc::clone(shared),
        extensions: conn_extensions(info),
    };
    let conn = shared.builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let limits = &shared.limits;
    let header = limits.header_read_timeout;
    let idle = limits.idle_timeout;
    let first = match state.check(Instant::now(), header, idle) {
        Verdict::Until(at) => at,
        _ => Instant::now(),
    };
    let watchdog = tokio::time::sleep_until(first);
    tokio::pin!(watchdog);
    let mut closing = false;
    let mut draining = matches!(*phase.borrow_and_update(), Phase::Draining(_));
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    // The watchdog and the phase are polled only when one of them woke
    // the task, not on each of the connection's wakes (two a request).
    let side = Arc::new(Side::default());
    let side_waker = Waker::from(Arc::clone(&side));
    // The waker `side` holds, as registered last: the connection's task
    // registers again only with another waker, not on each poll.
    let mut registered: Option<Waker> = None;
    // Cleared if the server is gone: nothing will change the phase again.
    let mut phase_live = true;
    loop {
        let event = {
            let changed = phase.changed();
            tokio::pin!(changed);
            // A new `changed` (and a watchdog just reset) is polled once
            // to register.
            side.woken.store(true, Ordering::Relaxed);
            std::future::poll_fn(|cx| {
                if conn.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Done);
                }
                if !registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    side.register(cx.waker());
                    registered = Some(cx.waker().clone());
                }
                if side.woken.load(Ordering::Acquire) && side.woken.swap(false, Ordering::AcqRel) {
                    let mut side_cx = Context::from_waker(&side_waker);
                    if phase_live && let Poll::Ready(changed) = changed.as_mut().poll(&mut side_cx)
                    {
                        return Poll::Ready(Event::Phase(changed.is_ok()));
                    }
                    if watchdog.as_mut().poll(&mut side_cx).is_ready() {
                        return Poll::Ready(Event::Watchdog);
                    }
                }
                Poll::Pending
            })
            .await
        };
        match event {
            Event::Done => return,
            Event::Phase(false) => phase_live = false,
            Event::Phase(true) => match *phase.borrow_and_update() {
                Phase::Serving => {}
                Phase::Draining(_) => {
                    if !draining {
                        draining = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
                Phase::Killed => return,
            },
            Event::Watchdog => {
                let now = Instant::now();
                if closing {
                    // Closed gracefully a while ago and still not done.
                    return;
                }
                match state.check(now, header, idle) {
                    Verdict::Until(at) => watchdog.as_mut().reset(at),
                    Verdict::HeaderTimeout => {
                        shared
                            .counters
                            .header_timeouts
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Verdict::Idle => {
                        shared.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                        let grace = header.unwrap_or(Duration::from_secs(10));
                        watchdog.as_mut().reset(now + grace);
                    }
                }
            }
        }
    }
}

/// What woke the connection's loop.
enum Event {
    /// The connection is over.
    Done,
    /// The phase changed (`false`: the server is gone).
    Phase(bool),
    /// The watchdog's time came.
    Watchdog,
}

/// The waker of a connection's watchdog and phase: notes that one of them
/// woke, and wakes the connection's task.
#[derive(Default)]
struct Side {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Side {
    /// Wakes `waker` when the watchdog or the phase wakes.
    fn register(&self, waker: &Waker) {
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(waker.clone());
    }
}

impl std::task::Wake for Side {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = &*task {
            w.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn first_request_within_header_timeout_of_accept() {
        let state = Arc::new(ConnState::new(Arc::default()));
        let t0 = Instant::now();
        assert_eq!(
            state.check(t0, Some(10 * S), Some(60 * S)),
            Verdict::Until(t0 + 10 * S)
        );
        tokio::time::advance(10 * S).await;
        assert_eq!(
            state.check(Instant::now(), Some(10 * S), Some(60 * S)),
            Verdict::HeaderTimeout
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_then_a_late_head() {
        let state = Arc::new(ConnState::new(Arc::default()));
        state.requests.store(1, Ordering::Relaxed);
        let guard = InFlight::new(Arc::clone(&state));
        let t0 = Instant::now();
        // Busy: no deadline, look again in a while.
        assert_eq!(
            state.check(t0, Some(10 * S), Some(60 * S)),
            Verdict::Until(t0 + 10 * S)
        );
        drop(guard);
        tokio::time::advance(30 * S).await;
        // Idle 30 s, no byte yet: the idle deadline is 30 s away.
        let now = Instant::now();
        assert_eq!(
            state.check(now, Some(10 * S), Some(60 * S)),
            Verdict::Until(now + 10 * S)
        );
        // A head starts arriving: 10 s from now to finish it.
        state.awaiting_head.store(false, Ordering::Relaxed);
        state
            .head_started
            .store(state.millis(now) + 1, Ordering::Relaxed);
        tokio::time::advance(9 * S).await;
        assert_eq!(
            state.check(Instant::now(), Some(10 * S), Some(60 * S)),
            Verdict::Until(now + 10 * S)
        );
        tokio::time::advance(S).await;
        assert_eq!(
            state.check(Instant::now(), Some(10 * S), Some(60 * S)),
            Verdict::HeaderTimeout
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_without_a_byte() {
        let state = Arc::new(ConnState::new(Arc::default()));
        state.requests.store(1, Ordering::Relaxed);
        drop(InFlight::new(Arc::clone(&state)));
        tokio::time::advance(59 * S).await;
        assert!(matches!(
            state.check(Instant::now(), Some(10 * S), Some(60 * S)),
            Verdict::Until(_)
        ));
        tokio::time::advance(S).await;
        assert_eq!(
            state.check(Instant::now(), Some(10 * S), Some(60 * S)),
            Verdict::Idle
        );
    }

    #[tokio::test(start_paused = true)]
    async fn h2_ignores_bytes_between_streams() {
        let state = Arc::new(ConnState::new(Arc::default()));
        state.requests.store(1, Ordering::Relaxed);
        state.h2.store(true, Ordering::Relaxed);
        drop(InFlight::new(Arc::clone(&state)));
        // A PING arrives: not a request head.
        state.head_started.store(1, Ordering::Relaxed);
        tokio::time::advance(30 * S).await;
        assert!(matches!(
            state.check(Instant::now(), Some(10 * S), Some(60 * S)),
            Verdict::Until(_)
        ));
        tokio::time::advance(30 * S).await;
        assert_eq!(
            state.check(Instant::now(), Some(10 * S), Some(60 * S)),
            Verdict::Idle
        );
    }
}
