//! The connection pool of plain `http://` HTTP/1.1 upstreams: one per
//! thread, on hyper's connection API.
//!
//! hyper-util's pooled client (still used for `https://` and h2c
//! upstreams) costs a proxied request more than the exchange itself: a
//! pool key hashed with SipHash and compared under a lock, the connector
//! cloned for a connection that is almost never opened, the whole request
//! future boxed, and a task spawned per response to put the connection
//! back once it is ready. Here a thread's idle connections to an endpoint
//! are a stack only that thread touches, a connection goes back when its
//! response body has been read to its end (by the body, no task), and a
//! request sent on a connection the upstream had just closed, which comes
//! back unsent, goes again on another.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::Service;

use super::ProxyBody;
use super::endpoints::Endpoint;

/// A connection's sending half.
type Sender = http1::SendRequest<ProxyBody>;

/// A response timer that goes with a connection from exchange to
/// exchange (see [`ResponseFuture`](super::ResponseFuture)): set once for
/// a connection's first exchange, it stays armed in the runtime's timer
/// wheel, and each later exchange, whose deadline is later, leaves it as
/// it is until it fires and only then sets it again, about once a
/// timeout's length rather than a timer made, registered and cancelled
/// a request. It belongs to the runtime of the connection's task, which
/// is the one its exchanges are polled in.
pub(super) type Timer = Pin<Box<tokio::time::Sleep>>;

/// What an exchange on the pool yields: the response head and the
/// connection, to hand back when the body has ended.
pub(super) type Exchange =
    Pin<Box<dyn Future<Output = Result<(Response<Incoming>, Checkin), Error>> + Send>>;

/// Why an exchange failed.
#[derive(Debug)]
pub(super) enum Error {
    /// No connection could be opened: nothing was sent.
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The exchange failed on an open connection.
    Http(hyper::Error),
}

impl Error {
    pub(super) fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Connect(_) => f.write_str("could not connect"),
            Error::Http(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect(e) => Some(&**e),
            Error::Http(e) => e.source(),
        }
    }
}

/// An idle connection and since when.
pub(super) struct Idle {
    sender: Sender,
    since: Instant,
    timer: Option<Timer>,
}

/// The pool: shared by an upstream's clones; each thread keeps its own
/// idle connections, in each endpoint (see [`Endpoint::idle`]), so that an
/// endpoint's connections go with it when it leaves its upstream.
pub(super) struct Pool {
    connector: HttpConnector,
    idle_timeout: Duration,
    max_idle: usize,
}

impl Pool {
    pub(super) fn new(connector: HttpConnector, idle_timeout: Duration, max_idle: usize) -> Self {
        Self {
            connector,
            idle_timeout,
            max_idle,
        }
    }

    /// The calling thread's most recently used idle connection to
    /// `endpoint` that is still open and young enough, and its timer.
    fn checkout(&self, endpoint: &Endpoint) -> Option<(Sender, Option<Timer>)> {
        let mut list = endpoint.idle.get()?.borrow_mut();
        let now = Instant::now();
        while let Some(conn) = list.pop() {
            if !conn.sender.is_closed()
                && now.saturating_duration_since(conn.since) < self.idle_timeout
            {
                return Some((conn.sender, conn.timer));
            }
        }
        None
    }

    /// Puts a connection whose exchange is over back, unless it is closed
    /// or the thread keeps enough.
    /// An endpoint that has left its set keeps none.
    fn checkin(&self, endpoint: &Endpoint, sender: Sender, timer: Option<Timer>) {
        if sender.is_closed() || endpoint.left.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut list = endpoint.idle.get_or_default().borrow_mut();
        if list.len() < self.max_idle {
            list.push(Idle {
                sender,
                since: Instant::now(),
                timer,
            });
        }
    }

    /// Opens a connection to `endpoint`; its task runs on the calling
    /// thread's runtime.
    async fn connect(&self, endpoint: &Endpoint) -> Result<Sender, Error> {
        let uri = endpoint.base.clone();
        let io = self
            .connector
            .clone()
            .call(uri)
            .await
            .map_err(|e| Error::Connect(e.into()))?;
        let (sender, conn) = http1::Builder::new()
            .handshake::<_, ProxyBody>(Gathered(io))
            .await
            .map_err(Error::Http)?;
        tokio::spawn(async move {
            // Its errors are the exchange's, which sees them.
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    /// Sends `req` to `endpoint` on an idle connection, or a new one.
    /// HTTP/1.1 to an origin server: `req`'s target is in origin form
    /// already (the upstream builds it so; the endpoint is the
    /// connection's, and `Host` names it), but for `CONNECT`.
    ///
    /// With the exchange comes the timer of the idle connection it takes,
    /// if it has one.
    pub(super) fn send(
        self: &Arc<Self>,
        endpoint: Arc<Endpoint>,
        req: Request<ProxyBody>,
    ) -> (Exchange, Option<Timer>) {
        debug_assert!(
            req.method() == http::Method::CONNECT || req.uri().scheme().is_none(),
            "the pool sends requests in origin form"
        );
        let (pooled, timer) = match self.checkout(&endpoint) {
            Some((sender, timer)) => (Some(sender), timer),
            None => (None, None),
        };
        let pool = Arc::clone(self);
        if let Some(mut sender) = pooled {
            // The common case: an idle connection that wants a request
            // takes this one now, and the exchange is only the wait for
            // its answer ([`Sent`]). That future is some 300 bytes against
            // the whole loop's 850 (whose connect and readiness states it
            // does not carry), and it is moved into its box every request.
            let mut cx = Context::from_waker(std::task::Waker::noop());
            if let Poll::Ready(Ok(())) = sender.poll_ready(&mut cx) {
                let exchange = Box::pin(Sent::Waiting {
                    sent: sender.try_send_request(req),
                    rest: Some((sender, pool, endpoint)),
                });
                return (exchange, timer);
            }
            // Not ready (closing, or still busy with its last exchange):
            // the loop waits for it or takes another.
            return (
                Pool::boxed_exchange(pool, endpoint, req, Some(sender)),
                timer,
            );
        }
        (Pool::boxed_exchange(pool, endpoint, req, None), timer)
    }

    /// [`exchange`](Self::exchange), boxed: an [`Exchange`] of its own
    /// for a request that no idle connection took at once, and the retry
    /// of [`Sent`].
    fn boxed_exchange(
        pool: Arc<Self>,
        endpoint: Arc<Endpoint>,
        req: Request<ProxyBody>,
        pooled: Option<Sender>,
    ) -> Exchange {
        Box::pin(pool.exchange(endpoint, req, pooled))
    }

    /// Sends `req` on `pooled` (an idle connection taken from the pool,
    /// when it is ready) or on another or a new one.
    async fn exchange(
        self: Arc<Self>,
        endpoint: Arc<Endpoint>,
        mut req: Request<ProxyBody>,
        mut pooled: Option<Sender>,
    ) -> Result<(Response<Incoming>, Checkin), Error> {
        loop {
            let reused = pooled.is_some();
            let mut sender = match pooled.take() {
                Some(sender) => sender,
                None => self.connect(&endpoint).await?,
            };
            if let Err(e) = sender.ready().await {
                if reused {
                    // Closed while idle: another, or a new one.
                    pooled = self.checkout(&endpoint).map(|(sender, _)| sender);
                    continue;
                }
                return Err(Error::Http(e));
            }
            match sender.try_send_request(req).await {
                Ok(res) => {
                    return Ok((
                        res,
                        Checkin {
                            sender,
                            pool: self,
                            endpoint,
                            timer: None,
                        },
                    ));
                }
                Err(mut e) => match e.take_message() {
                    // The connection closed before taking the request
                    // (the upstream closed it while idle): nothing was
                    // sent, so it goes again, on a new connection after
                    // a reused one failed this way.
                    Some(back) if reused => {
                        req = back;
                        pooled = self.checkout(&endpoint).map(|(sender, _)| sender);
                    }
                    _ => return Err(Error::Http(e.into_error())),
                },
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The exchange of a request an idle connection took at once (see
    /// [`Pool::send`]): hyper's answer awaited, and the request sent
    /// again on another connection if this one had closed before taking
    /// it. A future of its own rather than an `async` block: the block
    /// would keep room for hyper's future twice (as captured and as
    /// awaited) and for its result across the retry's wait, over 1 KiB
    /// moved into its box on every request.
    #[project = SentProj]
    enum Sent<F> {
        Waiting {
            #[pin]
            sent: F,
            // Taken when the answer comes.
            rest: Option<(Sender, Arc<Pool>, Arc<Endpoint>)>,
        },
        Again { again: Exchange },
        Done,
    }
}

impl<F> Future for Sent<F>
where
    F: Future<
        Output = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ProxyBody>>>,
    >,
{
    type Output = Result<(Response<Incoming>, Checkin), Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (result, (sender, pool, endpoint)) = match self.as_mut().project() {
            SentProj::Waiting { sent, rest } => {
                let result = std::task::ready!(sent.poll(cx));
                let Some(rest) = rest.take() else {
                    return Poll::Pending;
                };
                (result, rest)
            }
            SentProj::Again { again } => return again.as_mut().poll(cx),
            // Polled again after completing: a breach by the caller, never
            // a panic here.
            SentProj::Done => return Poll::Pending,
        };
        match result {
            Ok(res) => {
                self.set(Sent::Done);
                Poll::Ready(Ok((
                    res,
                    Checkin {
                        sender,
                        pool,
                        endpoint,
                        timer: None,
                    },
                )))
            }
            Err(mut e) => match e.take_message() {
                // Closed by the upstream while idle, before taking the
                // request: it goes again, as in the loop.
                Some(back) => {
                    drop(sender);
                    let again = pool.checkout(&endpoint).map(|(sender, _)| sender);
                    self.set(Sent::Again {
                        again: Pool::boxed_exchange(pool, endpoint, back, again),
                    });
                    self.poll(cx)
                }
                None => {
                    self.set(Sent::Done);
                    Poll::Ready(Err(Error::Http(e.into_error())))
                }
            },
        }
    }
}

/// An upstream connection's socket, its small vectored writes sent as one
/// buffer (see [`crate::gather`]): a request's head, or its head and a
/// small body, goes in one `send` rather than a `writev`.
struct Gathered<T>(T);

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Gathered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Gathered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        crate::gather::write_vectored(
            Pin::new(&mut self.0),
            cx,
            bufs,
            T::poll_write,
            T::poll_write_vectored,
        )
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A connection whose response is on its way to the client: back to its
/// thread's pool when the body has ended ([`Checkin::finish`]), closed if
/// dropped before.
pub(crate) struct Checkin {
    sender: Sender,
    pool: Arc<Pool>,
    endpoint: Arc<Endpoint>,
    timer: Option<Timer>,
}

impl Checkin {
    /// The response body has been read to its end: the connection may
    /// carry another request.
    pub(crate) fn finish(self) {
        self.pool.checkin(&self.endpoint, self.sender, self.timer);
    }

    /// The exchange's response timer, to go with the connection.
    pub(super) fn keep_timer(&mut self, timer: Option<Timer>) {
        self.timer = timer;
    }
}

impl std::fmt::Debug for Checkin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkin")
            .field("endpoint", &self.endpoint.url)
            .finish_non_exhaustive()
    }
}
