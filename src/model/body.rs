//! [`ModelBody`]: the upstream's response body passed through chunk by
//! chunk while its token usage is read, or the router's own answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use serde::Deserialize;

use super::stats::Flight;

pin_project! {
    /// The router's response body: the upstream's body, untouched and
    /// undelayed, or an answer of the router's own (an error, the model
    /// list).
    ///
    /// While the upstream's body passes, its last 4 KiB are copied aside
    /// and, when it ends, the last `"usage"` object in them is read: OpenAI-style JSON responses and server-sent event
    /// streams both end with it. The version's in-flight count ends when
    /// the body ends or is dropped.
    pub struct ModelBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Full { data: Option<Bytes> },
        Tracked {
            #[pin]
            body: B,
            tracker: Tracker,
        },
    }
}

impl<B> ModelBody<B> {
    pub(crate) fn full(data: impl Into<Bytes>) -> Self {
        let data: Bytes = data.into();
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn tracked(body: B, flight: Flight, scan: bool) -> Self {
        Self {
            kind: Kind::Tracked {
                body,
                tracker: Tracker {
                    flight: Some(flight),
                    tail: scan.then(Tail::default),
                },
            },
        }
    }
}

impl<B> Body for ModelBody<B>
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
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Tracked { mut body, tracker } => {
                let frame = std::task::ready!(body.as_mut().poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let (Some(tail), Some(data)) = (&mut tracker.tail, f.data_ref()) {
                            tail.push(data);
                        }
                        // hyper stops polling (and drops the body) once it
                        // says it has ended, without waiting for `None`.
                        if body.is_end_stream() {
                            tracker.finish();
                        }
                    }
                    Some(Err(_)) => tracker.failed(),
                    None => tracker.finish(),
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Tracked { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Tracked { body, .. } => body.size_hint(),
        }
    }
}

impl<B> std::fmt::Debug for ModelBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full { data } => f.debug_tuple("ModelBody::Full").field(data).finish(),
            Kind::Tracked { .. } => f.write_str("ModelBody::Tracked(..)"),
        }
    }
}

// === Tracker ===

/// Reads the usage at the end and ends the in-flight count. Dropped
/// before the end (the client went away), the flight ends with it and the
/// usage of the cut-off stream is not counted.
struct Tracker {
    flight: Option<Flight>,
    tail: Option<Tail>,
}

impl Tracker {
    #[cold]
    fn failed(&mut self) {
        if let Some(f) = &self.flight {
            f.counters().body_error();
        }
        self.tail = None;
        self.finish();
    }

    #[cold]
    fn finish(&mut self) {
        let Some(flight) = self.flight.take() else {
            return;
        };
        if let Some((prompt, completion)) = self.tail.take().and_then(|t| t.usage()) {
            flight.counters().tokens(prompt, completion);
        }
    }
}

/// The last [`TAIL_BYTES`] of a body, copied aside as chunks pass: first
/// appended, then, once that many are held, into a ring.
///
/// Usage sits at the end of a response (the last JSON field, the last
/// event before `[DONE]`), so the tail is enough, however the stream is cut
/// into chunks. Copying a chunk aside (a memcpy of its bytes, or of its
/// last 4 KiB) costs less per chunk than keeping references to the chunks
/// (two reference-count updates and a queue), and no more memory.
pub(crate) struct Tail {
    /// The bytes held, oldest first until it is full; then a ring.
    buf: Vec<u8>,
    /// Once `buf` is full: where the next byte goes (the oldest byte).
    at: usize,
}

/// A power of two, so that wrapping around the ring is a mask.
const TAIL_BYTES: usize = 4096;
const _: () = assert!(TAIL_BYTES.is_power_of_two());

impl Default for Tail {
    fn default() -> Self {
        // Not zeroed: only bytes of the body are ever read.
        Self {
            buf: Vec::with_capacity(TAIL_BYTES),
            at: 0,
        }
    }
}

impl Tail {
    #[inline]
    pub(crate) fn push(&mut self, data: &[u8]) {
        const CAP: usize = TAIL_BYTES;
        let mut data = &data[data.len().saturating_sub(CAP)..];
        let held = self.buf.len();
        if held < CAP {
            let n = data.len().min(CAP - held);
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if data.is_empty() {
                return;
            }
        }
        let at = self.at;
        let first = data.len().min(CAP - at);
        self.buf[at..at + first].copy_from_slice(&data[..first]);
        let rest = &data[first..];
        if !rest.is_empty() {
            self.buf[..rest.len()].copy_from_slice(rest);
        }
        self.at = (at + data.len()) & (CAP - 1);
    }

    /// The last `"usage"` object with token counts, as (prompt,
    /// completion).
    pub(crate) fn usage(&self) -> Option<(u64, u64)> {
        if self.buf.len() < TAIL_BYTES || self.at == 0 {
            return last_usage(&self.buf);
        }
        // The newest bytes first, in place: usage is near the end, so it
        // is almost always whole in them. Only one cut by the wrap, or
        // further back, needs the ring joined in order.
        if let Some(usage) = last_usage(&self.buf[..self.at]) {
            return Some(usage);
        }
        let mut joined = Vec::with_capacity(TAIL_BYTES);
        joined.extend_from_slice(&self.buf[self.at..]);
        joined.extend_from_slice(&self.buf[..self.at]);
        last_usage(&joined)
    }
}

/// The last `"usage"` key in `text` whose value is an object with token
/// counts. A `"usage"` inside a JSON string has escaped quotes, so an
/// unescaped one followed by `:` is a key.
pub(crate) fn last_usage(text: &[u8]) -> Option<(u64, u64)> {
    #[derive(Deserialize)]
    struct Usage {
        #[serde(default)]
        prompt_tokens: u64,
        #[serde(default)]
        completion_tokens: u64,
        #[serde(default)]
        total_tokens: Option<u64>,
    }
    const KEY: &[u8] = b"\"usage\"";
    let mut end = text.len();
    while let Some(at) = memchr::memmem::rfind(&text[..end], KEY) {
        end = at;
        let rest = &text[at + KEY.len()..];
        let rest = trim_start(rest);
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let rest = trim_start(rest);
        if !rest.starts_with(b"{") {
            continue; // `null`, or not a usage object
        }
        let mut values = serde_json::Deserializer::from_slice(rest).into_iter::<Usage>();
        if let Some(Ok(u)) = values.next()
            && (u.prompt_tokens > 0 || u.completion_tokens > 0 || u.total_tokens.is_some())
        {
            return Some((u.prompt_tokens, u.completion_tokens));
        }
    }
    None
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_from_json_and_sse() {
        let json = br#"{"id":"x","choices":[{"message":{"content":"\"usage\": {\"prompt_tokens\": 99}"}}],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#;
        assert_eq!(last_usage(json), Some((12, 34)));
        let sse = b"data: {\"choices\":[],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n";
        assert_eq!(last_usage(sse), Some((5, 7)));
        assert_eq!(last_usage(b"data: {\"usage\":null}\n\n"), None);
        assert_eq!(last_usage(b"{\"usage\": {\"prompt_tokens\": 1"), None);
    }

    #[test]
    fn tail_joins_chunks_split_mid_line() {
        let sse =
            b"data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
        let mut tail = Tail::default();
        for piece in sse.chunks(5) {
            tail.push(&Bytes::copy_from_slice(piece));
        }
        assert_eq!(tail.usage(), Some((3, 4)));

        // A long stream keeps only its last 4 KiB or so.
        let mut tail = Tail::default();
        let event =
            Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
        for _ in 0..10_000 {
            tail.push(&event);
        }
        for piece in sse.chunks(7) {
            tail.push(&Bytes::copy_from_slice(piece));
        }
        assert_eq!(tail.buf.len(), TAIL_BYTES);
        assert_eq!(tail.usage(), Some((3, 4)));
    }

    #[test]
    fn tail_holds_the_last_bytes_however_cut() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(7);
        for total in [0_usize, 1, 100, 4095, 4096, 4097, 9000, 20_000] {
            let stream: Vec<u8> = (0..total).map(|_| rng.random::<u8>()).collect();
            let mut tail = Tail::default();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                // Mostly small chunks, sometimes one larger than the ring.
                let max = if rng.random_ratio(1, 20) { 6000 } else { 300 };
                let n = rng.random_range(1..=max).min(rest.len());
                tail.push(&rest[..n]);
                rest = &rest[n..];
            }
            let mut held = tail.buf[tail.at..].to_vec();
            held.extend_from_slice(&tail.buf[..tail.at]);
            if tail.buf.len() < TAIL_BYTES {
                held = tail.buf.clone();
            }
            assert_eq!(
                held,
                stream[total.saturating_sub(TAIL_BYTES)..],
                "{total} bytes"
            );
        }
    }

    #[test]
    fn usage_cut_by_the_ring_wrap() {
        let event =
            b"data: {\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":9}}\n\ndata: [DONE]\n\n";
        for cut in [1, 10, 30, event.len() - 1] {
            let mut tail = Tail::default();
            tail.push(&[b' '; TAIL_BYTES]);
            tail.push(&vec![b' '; TAIL_BYTES - cut]);
            tail.push(event);
            assert!(tail.at > 0 && tail.at < event.len(), "the event wraps");
            assert_eq!(
                tail.usage(),
                Some((8, 9)),
                "cut {cut} bytes before the wrap"
            );
        }
    }
}
