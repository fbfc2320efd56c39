//! Protocol upgrades (WebSocket): asking the upstream to switch too, and
//! the tunnel joining the two connections.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header;
use http::{HeaderValue, Version};

use super::Inner;

/// For a request asking to switch protocols (`Connection: upgrade` and an
/// `Upgrade` header for an allowed protocol, over HTTP/1.1) whose connection can be taken over (it
/// came through a hyper server, which leaves an `OnUpgrade` in the
/// extensions), and an HTTP/1.1 upstream: the protocol asked for and the
/// client side of the tunnel. Otherwise the request goes on as a plain one.
pub(super) fn upgrade_request(
    inner: &Inner,
    parts: &mut http::request::Parts,
) -> Option<(HeaderValue, hyper::upgrade::OnUpgrade)> {
    if inner.http2 || parts.version != Version::HTTP_11 {
        return None;
    }
    // Only the allowed protocols (never `h2c`) go on; a request asking
    // for none of them goes on as a plain request, `Upgrade` removed.
    let allowed: Vec<&str> = parts
        .headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| crate::ingress::upgrade_allowed(&inner.upgrade_protocols, p))
        .collect();
    if allowed.is_empty() {
        return None;
    }
    let protocol = HeaderValue::from_str(&allowed.join(", ")).ok()?;
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    let client = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()?;
    Some((protocol, client))
}

/// Once the client's and the upstream's connections are both handed over
/// (after the 101 reaches the client), copies bytes both ways until either
/// side closes or `idle` passes with no byte moving, then lets `hold` go
/// (and what it holds: a split's in-flight count).
pub(super) fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    hold: crate::upgrade::UpgradeHold,
    idle: Option<Duration>,
) {
    use hyper_util::rt::TokioIo;
    tokio::spawn(async move {
        let _hold = hold;
        // The upstream's side is ready with the 101; the client's once
        // hyper has written the 101 to it.
        let (Ok(upstream), Ok(client)) = (upstream.await, client.await) else {
            return;
        };
        let _ = splice(TokioIo::new(client), TokioIo::new(upstream), idle).await;
    });
}

/// How a [`splice`] ended.
#[derive(Debug, PartialEq, Eq)]
enum Spliced {
    /// A side closed (or failed).
    Closed,
    /// No byte moved for the idle timeout.
    Idle,
}

/// Copies bytes both ways between `a` and `b` until either closes or, with
/// `idle`, until no byte has moved either way for that long; both are
/// dropped (closed) when it returns.
///
/// Written around tokio's `copy_bidirectional`, which has no idle timeout:
/// each side is wrapped to note the time of its last transfer, and the copy
/// is raced against a deadline moved by those notes.
async fn splice<A, B>(a: A, b: B, idle: Option<Duration>) -> Spliced
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(idle) = idle else {
        let (mut a, mut b) = (a, b);
        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
        return Spliced::Closed;
    };
    let activity = Activity::new();
    let mut a = Watched {
        io: a,
        activity: &activity,
    };
    let mut b = Watched {
        io: b,
        activity: &activity,
    };
    let mut copy = std::pin::pin!(tokio::io::copy_bidirectional(&mut a, &mut b));
    loop {
        let deadline = activity.last() + idle;
        if tokio::time::timeout_at(deadline, copy.as_mut())
            .await
            .is_ok()
        {
            return Spliced::Closed;
        }
        if activity.last() + idle <= tokio::time::Instant::now() {
            return Spliced::Idle;
        }
    }
}

/// When a tunnel last moved a byte, in nanoseconds since it began (an
/// atomic only so that the copy future stays `Send`; one task touches it).
struct Activity {
    start: tokio::time::Instant,
    last: std::sync::atomic::AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let since = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.store(since, std::sync::atomic::Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_nanos(self.last.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// One side of a tunnel, noting each transfer in its [`Activity`].
struct Watched<'a, T> {
    io: T,
    activity: &'a Activity,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::time::{Instant, sleep};

    use super::{Spliced, splice};

    /// A client, a tunnel between two in-memory pipes, and a server.
    fn tunnel(
        idle: Option<Duration>,
    ) -> (DuplexStream, tokio::task::JoinHandle<Spliced>, DuplexStream) {
        let (client, a) = tokio::io::duplex(64);
        let (b, server) = tokio::io::duplex(64);
        (client, tokio::spawn(splice(a, b, idle)), server)
    }

    async fn carry(from: &mut DuplexStream, to: &mut DuplexStream, message: &[u8]) {
        from.write_all(message).await.unwrap();
        let mut got = vec![0; message.len()];
        to.read_exact(&mut got).await.unwrap();
        assert_eq!(got, message);
    }

    async fn closed(side: &mut DuplexStream) -> bool {
        let mut byte = [0; 1];
        side.read(&mut byte).await.unwrap() == 0
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_either_way_keeps_a_tunnel_open_and_silence_closes_it() {
        let idle = Duration::from_secs(60);
        let (mut client, task, mut server) = tunnel(Some(idle));
        // Four minutes of talk, 45 s apart: client to server, then server
        // to client only (a stream of pushes), never 60 s of silence.
        for _ in 0..2 {
            sleep(Duration::from_secs(45)).await;
            carry(&mut client, &mut server, b"ping").await;
        }
        for _ in 0..3 {
            sleep(Duration::from_secs(45)).await;
            carry(&mut server, &mut client, b"push").await;
        }
        assert!(!task.is_finished());
        let last = Instant::now();
        assert_eq!(task.await.unwrap(), Spliced::Idle);
        // Closed exactly one idle timeout after the last byte.
        assert_eq!(Instant::now() - last, idle);
        assert!(closed(&mut client).await);
        assert!(closed(&mut server).await);
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_idle_timeout_a_tunnel_lasts_until_a_side_closes() {
        let (mut client, task, mut server) = tunnel(None);
        sleep(Duration::from_secs(24 * 3600)).await;
        carry(&mut client, &mut server, b"still here").await;
        assert!(!task.is_finished());
        // The client's close reaches the server; the tunnel ends when the
        // server closes in turn.
        drop(client);
        assert!(closed(&mut server).await);
        drop(server);
        assert_eq!(task.await.unwrap(), Spliced::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_tunnel_ends_when_its_sides_close_before_its_idle_timeout() {
        let (mut client, task, server) = tunnel(Some(Duration::from_secs(60)));
        let start = Instant::now();
        sleep(Duration::from_secs(10)).await;
        // The server's close reaches the client (as TCP's half-close
        // would), and the tunnel ends when the client closes in turn.
        drop(server);
        assert!(closed(&mut client).await);
        assert!(!task.is_finished());
        drop(client);
        assert_eq!(task.await.unwrap(), Spliced::Closed);
        assert_eq!(Instant::now() - start, Duration::from_secs(10));
    }
}
