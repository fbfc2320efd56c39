//! [`ModelBody`]: the upstream's response body passed through chunk by
//! chunk while its token usage is read, or the router's own answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::time::{Duration, Instant};

use super::admit::Ticket;
use super::providers::sse::Parser;
use super::providers::{Protocol, StreamMapper, Usage, anthropic};
use super::service::UsageHook;
use super::stats::Flight;
use super::translate::{usage_key, usage_of};
use super::usage::UsageRecord;

pin_project! {
    /// The router's response body: the upstream's body, passed through
    /// chunk by chunk or translated event by event into the client's
    /// protocol, never delayed; or an answer of the router's own (an
    /// error, the model list, a translated JSON answer).
    ///
    /// While the upstream's body passes, its token usage is read: from the
    /// last `usage` object of its last 4 KiB (OpenAI and Gemini put it at
    /// the end), from its events (Anthropic's input tokens come first), or
    /// from the translation. The version's in-flight count and its usage
    /// report end when the body ends or is dropped.
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

    pub(crate) fn tracked(body: B, tracker: Tracker) -> Self {
        Self {
            kind: Kind::Tracked { body, tracker },
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
                if let Some(trailer) = tracker.trailer.take() {
                    return Poll::Ready(Some(Ok(Frame::data(trailer))));
                }
                if tracker.mapping() {
                    return tracker.poll_mapped(body, cx);
                }
                if tracker.flight.is_none() && tracker.sse {
                    // Ended, and its comment lines written.
                    return Poll::Ready(None);
                }
                let frame = std::task::ready!(body.as_mut().poll_frame(cx));
                match &frame {
                    Some(Ok(f)) => {
                        if let Some(data) = f.data_ref() {
                            tracker.observe(data);
                        }
                        // hyper stops polling (and drops the body) once it
                        // says it has ended, without waiting for `None`.
                        if body.is_end_stream() {
                            tracker.finish();
                        }
                    }
                    Some(Err(_)) => tracker.failed(),
                    None => {
                        tracker.finish();
                        if let Some(trailer) = tracker.trailer.take() {
                            return Poll::Ready(Some(Ok(Frame::data(trailer))));
                        }
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Tracked { body, tracker } => {
                if tracker.trailer.is_some() || (tracker.flight.is_some() && tracker.may_trail()) {
                    false
                } else if tracker.mapping() {
                    tracker.ended
                } else {
                    body.is_end_stream() || (tracker.sse && tracker.flight.is_none())
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Tracked { body, tracker } => {
                if tracker.mapping() || tracker.may_trail() || tracker.trailer.is_some() {
                    SizeHint::default()
                } else {
                    body.size_hint()
                }
            }
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

/// How a body's usage is read.
pub(crate) enum Reader {
    /// Not at all (content-encoded, or not JSON nor events).
    None,
    /// From the last usage object of the tail, in this protocol's shape.
    Tail(Box<Tail>, Protocol),
    /// From an Anthropic event stream passed through.
    Anthropic(Box<(Parser, anthropic::StreamUsage)>),
    /// Translated: the mapper writes what the client gets and counts.
    Map(Box<(Parser, Box<dyn StreamMapper>)>),
    /// Already known (a translated JSON answer).
    Known(Usage),
}

/// Who and what a usage report is about, and who is told: the router's
/// usage hook, the request's admission ticket, or both.
pub(crate) struct Report {
    pub(crate) hook: Option<UsageHook>,
    pub(crate) ticket: Option<Box<dyn Ticket>>,
    pub(crate) record: UsageRecord,
}

/// Reads the usage, ends the in-flight count and reports, exactly once:
/// at the end of the body, or when it is dropped before (the client went
/// away: what was counted is reported, flagged truncated).
pub(crate) struct Tracker {
    flight: Option<Flight>,
    reader: Reader,
    /// Only when there is a usage hook to call.
    report: Option<Box<Report>>,
    started: Instant,
    first_byte: Option<Duration>,
    /// A translated stream has written its end.
    ended: bool,
    /// The answer is an event stream: what the ticket's settlement shows
    /// goes after its last event, as comment lines.
    pub(crate) sse: bool,
    /// Those comment lines, once settled, until written.
    trailer: Option<Bytes>,
    /// What the ticket's settlement showed (an answer read whole puts it
    /// in its headers).
    settled: Option<Vec<(HeaderName, HeaderValue)>>,
}

/// The longest event a translated stream accepts from an upstream.
const EVENT_LIMIT: usize = 8 * 1024 * 1024;

impl Tracker {
    pub(crate) fn new(
        flight: Flight,
        reader: Reader,
        started: Instant,
        report: Option<Box<Report>>,
    ) -> Self {
        Self {
            flight: Some(flight),
            reader,
            report,
            started,
            first_byte: None,
            ended: false,
            sse: false,
            trailer: None,
            settled: None,
        }
    }

    /// Whether settling may add comment lines after the last event (the
    /// body's length is then unknown).
    pub(crate) fn may_trail(&self) -> bool {
        self.sse && self.report.as_ref().is_some_and(|r| r.ticket.is_some())
    }

    pub(crate) fn tail(protocol: Protocol) -> Reader {
        Reader::Tail(Box::default(), protocol)
    }

    /// [`tail`](Self::tail) for an answer that does not say it is JSON
    /// (no `Content-Type`): its usage is read only if the body opens as a
    /// JSON object, so that a body of plain text (a model's words passed
    /// on raw) cannot name its own usage.
    pub(crate) fn untyped_tail(protocol: Protocol) -> Reader {
        let mut tail = Box::<Tail>::default();
        tail.opening = Opening::Unseen;
        Reader::Tail(tail, protocol)
    }

    pub(crate) fn anthropic_events() -> Reader {
        Reader::Anthropic(Box::new((
            Parser::new(EVENT_LIMIT),
            anthropic::StreamUsage::new(),
        )))
    }

    pub(crate) fn map(mapper: Box<dyn StreamMapper>) -> Reader {
        Reader::Map(Box::new((Parser::new(EVENT_LIMIT), mapper)))
    }

    fn mapping(&self) -> bool {
        matches!(self.reader, Reader::Map(_))
    }

    fn first(&mut self) {
        if self.first_byte.is_none() {
            self.first_byte = Some(self.started.elapsed());
        }
    }

    #[inline]
    fn observe(&mut self, data: &Bytes) {
        self.first();
        match &mut self.reader {
            Reader::Tail(tail, _) => tail.push(data),
            Reader::Anthropic(b) => {
                let (parser, usage) = &mut **b;
                if parser.feed(data, |e| usage.event(e)).is_err() {
                    self.reader = Reader::None;
                }
            }
            _ => {}
        }
    }

    /// A translated stream: reads upstream frames until the mapper has
    /// something to write.
    fn poll_mapped<B: Body<Data = Bytes>>(
        &mut self,
        mut body: Pin<&mut B>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut out = Vec::new();
        loop {
            if self.ended {
                return Poll::Ready(self.trailer.take().map(|t| Ok(Frame::data(t))));
            }
            let Reader::Map(b) = &mut self.reader else {
                return Poll::Ready(None);
            };
            let (parser, mapper) = &mut **b;
            match std::task::ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers: the client's protocol has none
                    };
                    if parser.feed(&data, |e| mapper.event(e, &mut out)).is_err() {
                        mapper.fail(
                            "The upstream sent an event longer than the limit.",
                            &mut out,
                        );
                        self.end();
                    } else if body.is_end_stream() {
                        parser.finish(|e| mapper.event(e, &mut out));
                        mapper.finish(&mut out);
                        self.end();
                    }
                    self.first();
                }
                Some(Err(_)) => {
                    mapper.fail("The upstream's stream failed.", &mut out);
                    if let Some(f) = &self.flight {
                        f.counters().body_error();
                    }
                    self.end();
                }
                None => {
                    parser.finish(|e| mapper.event(e, &mut out));
                    mapper.finish(&mut out);
                    self.end();
                }
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }

    /// The whole answer is here (read whole): counts and reports now, and
    /// returns what the ticket's settlement shows.
    pub(crate) fn done(&mut self) -> Vec<(HeaderName, HeaderValue)> {
        self.first();
        self.finish();
        self.settled.take().unwrap_or_default()
    }

    fn end(&mut self) {
        self.ended = true;
        self.finish();
    }

    #[cold]
    fn failed(&mut self) {
        if let Some(f) = &self.flight {
            f.counters().body_error();
        }
        self.finish_with(true);
    }

    #[cold]
    pub(crate) fn finish(&mut self) {
        self.finish_with(false);
    }

    fn finish_with(&mut self, cut: bool) {
        let Some(flight) = self.flight.take() else {
            return;
        };
        let reader = std::mem::replace(&mut self.reader, Reader::None);
        let tail = matches!(reader, Reader::Tail(..) | Reader::Known(_));
        let usage = match reader {
            Reader::None => None,
            Reader::Tail(tail, protocol) => tail.usage(protocol),
            Reader::Anthropic(mut b) => {
                let (parser, usage) = &mut *b;
                if !cut {
                    parser.finish(|e| usage.event(e));
                    usage.finish();
                }
                Some(usage.usage())
            }
            Reader::Map(b) => {
                let u = b.1.usage();
                // Put it back: a stream may still have its end to write.
                self.reader = Reader::Map(b);
                Some(u)
            }
            Reader::Known(u) => Some(u),
        };
        // A usage object found at the tail, or any token counted from
        // events: the answer said what it used.
        let reported = usage.is_some_and(|u| tail || !u.is_empty());
        let mut usage = usage.unwrap_or_default();
        usage.truncated |= cut;
        let counters = flight.counters();
        counters.usage(&usage);
        if let Some(t) = self.first_byte {
            counters.first_byte(t);
        }
        if let Some(report) = self.report.take() {
            let Report {
                hook,
                ticket,
                mut record,
            } = *report;
            record.usage = usage;
            record.reported = reported;
            record.time_to_first_token = self.first_byte;
            record.duration = self.started.elapsed();
            if let Some(hook) = hook {
                hook(&record);
            }
            if let Some(ticket) = ticket {
                let settled = ticket.settle(&record);
                if let Some(micros) = settled.cost_micros {
                    counters.cost(micros);
                }
                if self.sse && !cut && !settled.fields.is_empty() {
                    self.trailer = Some(comment_lines(&settled.fields));
                }
                self.settled = Some(settled.fields);
            }
        }
    }
}

/// SSE comment lines (`: name: value`) ending in a blank line: clients
/// skip them.
fn comment_lines(fields: &[(HeaderName, HeaderValue)]) -> Bytes {
    let mut out = Vec::with_capacity(64 * fields.len() + 1);
    for (name, value) in fields {
        out.extend_from_slice(b": ");
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    Bytes::from(out)
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if self.flight.is_some() {
            // Cut short: the client went away, or the answer was dropped.
            self.finish_with(true);
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
    /// Whether the body must open with `{` for its usage to count.
    opening: Opening,
}

/// What a [`Tail`] requires of its body's first byte (past whitespace).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// Nothing (more): the answer said it is JSON or is an event stream,
    /// or it opened with `{`.
    Any,
    /// `{`, not seen yet.
    Unseen,
    /// Something else came first: no usage is read.
    NotJson,
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
            opening: Opening::Any,
        }
    }
}

impl Tail {
    #[inline]
    pub(crate) fn push(&mut self, data: &[u8]) {
        const CAP: usize = TAIL_BYTES;
        if self.opening == Opening::Unseen
            && let Some(&first) = data.iter().find(|c| !c.is_ascii_whitespace())
        {
            self.opening = if first == b'{' {
                Opening::Any
            } else {
                Opening::NotJson
            };
        }
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

    /// The last usage object with token counts, read in `protocol`'s
    /// shape.
    pub(crate) fn usage(&self, protocol: Protocol) -> Option<Usage> {
        if matches!(self.opening, Opening::Unseen | Opening::NotJson) {
            return None;
        }
        let last_usage = |b: &[u8]| last_usage(b, protocol);
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

/// The last usage key in `text` (`"usage"`, Gemini's `"usageMetadata"`)
/// whose value is an object with token counts. A key inside a JSON string
/// has escaped quotes, so an unescaped one followed by `:` is a key.
pub(crate) fn last_usage(text: &[u8], protocol: Protocol) -> Option<Usage> {
    let key = usage_key(protocol);
    let mut end = text.len();
    while let Some(at) = memchr::memmem::rfind(&text[..end], key) {
        end = at;
        let rest = &text[at + key.len()..];
        let rest = trim_start(rest);
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let rest = trim_start(rest);
        if !rest.starts_with(b"{") {
            continue; // `null`, or not a usage object
        }
        let mut values =
            serde_json::Deserializer::from_slice(rest).into_iter::<&serde_json::value::RawValue>();
        if let Some(Ok(raw)) = values.next()
            && let Some(u) = usage_of(protocol, raw.get().as_bytes())
        {
            return Some(u);
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
        let last_usage = |b: &[u8]| last_usage(b, Protocol::OpenAi).map(|u| (u.input, u.output));
        assert_eq!(last_usage(json), Some((12, 34)));
        let sse = b"data: {\"choices\":[],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\ndata: [DONE]\n\n";
        assert_eq!(last_usage(sse), Some((5, 7)));
        assert_eq!(last_usage(b"data: {\"usage\":null}\n\n"), None);
        assert_eq!(last_usage(b"{\"usage\": {\"prompt_tokens\": 1"), None);
    }

    #[test]
    fn an_untyped_tail_reads_usage_only_from_a_json_object() {
        let usage = br#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
        let read = |chunks: &[&[u8]]| {
            let Reader::Tail(mut tail, protocol) = Tracker::untyped_tail(Protocol::OpenAi) else {
                unreachable!()
            };
            for c in chunks {
                tail.push(c);
            }
            tail.usage(protocol).map(|u| (u.input, u.output))
        };
        assert_eq!(read(&[usage]), Some((3, 4)));
        // Whitespace first, even a whole chunk of it, then the object.
        assert_eq!(read(&[b" \r\n", b"", b"\t", usage]), Some((3, 4)));
        // Text that names a usage object is not JSON: none is read.
        assert_eq!(read(&[b"Sure! ", usage]), None);
        assert_eq!(read(&[b"[", usage, b"]"]), None);
        // Nothing but whitespace, or nothing at all.
        assert_eq!(read(&[b"  "]), None);
        assert_eq!(read(&[]), None);
        // A typed tail reads text as before.
        let mut tail = Tail::default();
        tail.push(b"Sure! ");
        tail.push(usage);
        assert!(tail.usage(Protocol::OpenAi).is_some());
    }

    #[test]
    fn tail_joins_chunks_split_mid_line() {
        let sse =
            b"data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\ndata: [DONE]\n\n";
        let mut tail = Tail::default();
        for piece in sse.chunks(5) {
            tail.push(&Bytes::copy_from_slice(piece));
        }
        assert_eq!(
            tail.usage(Protocol::OpenAi).map(|u| (u.input, u.output)),
            Some((3, 4))
        );

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
        assert_eq!(
            tail.usage(Protocol::OpenAi).map(|u| (u.input, u.output)),
            Some((3, 4))
        );
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
                tail.usage(Protocol::OpenAi).map(|u| (u.input, u.output)),
                Some((8, 9)),
                "cut {cut} bytes before the wrap"
            );
        }
    }
}
