//! Server-sent events, read incrementally and written.
//!
//! [`Parser`] takes a stream's bytes as they arrive, cut anywhere (inside
//! a line, between `\r` and `\n`, inside a UTF-8 character), and hands
//! out each complete event once its blank line arrives. It holds at most
//! one event's bytes; an event longer than its limit is refused rather
//! than buffered without end.
//!
//! ```
//! use switchyard::model::providers::sse::Parser;
//!
//! let mut parser = Parser::new(64 * 1024);
//! let mut seen = Vec::new();
//! for piece in [&b"event: ping\r\ndata: {\"a\""[..], b":1}\r\n\r", b"\ndata: [DONE]\n\n"] {
//!     parser.feed(piece, |e| seen.push((e.event.to_owned(), e.data.to_owned()))).unwrap();
//! }
//! assert_eq!(seen, [("ping".to_owned(), "{\"a\":1}".to_owned()), (String::new(), "[DONE]".to_owned())]);
//! ```

/// One event: its `event:` name (empty when it had none, which the
/// standard calls `message`) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The `event:` field, or `""`.
    pub event: &'a str,
    /// The `data:` lines, joined by `\n`.
    pub data: &'a str,
}

/// An event longer than the parser's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a server-sent event is longer than the limit of {limit} bytes")]
pub struct TooLong {
    /// The limit.
    pub limit: usize,
}

/// An incremental server-sent-event parser (the WHATWG event-stream
/// grammar: `\n`, `\r\n` or `\r` line ends, `:` comments, `field: value`
/// with one optional space, `data` lines joined). `id` and `retry` fields
/// are read and ignored.
#[derive(Debug)]
pub struct Parser {
    /// A line cut by the end of a chunk.
    line: Vec<u8>,
    /// The event being assembled.
    event: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    /// The last chunk ended with `\r`: a `\n` starting the next one ends
    /// the same line.
    after_cr: bool,
    limit: usize,
}

impl Parser {
    /// A parser refusing events (and lines) longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            line: Vec::new(),
            event: Vec::new(),
            data: Vec::new(),
            has_data: false,
            after_cr: false,
            limit,
        }
    }

    /// Reads `chunk`, calling `f` with every event it completes.
    ///
    /// After an error the parser is unusable (its state is dropped).
    pub fn feed(&mut self, chunk: &[u8], mut f: impl FnMut(&Event<'_>)) -> Result<(), TooLong> {
        let mut rest = chunk;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if let Some(r) = rest.strip_prefix(b"\n") {
                rest = r;
            }
        }
        // An event whose one `data:` line lies whole in this chunk is
        // handed out from the chunk, not copied (the common case: one
        // event per chunk). Held here until its blank line; copied only
        // if the chunk ends first.
        let mut borrowed: Option<&[u8]> = None;
        while !rest.is_empty() {
            let Some(end) = memchr::memchr2(b'\n', b'\r', rest) else {
                if self.line.len() + rest.len() > self.limit {
                    return Err(self.overflow());
                }
                self.line.extend_from_slice(rest);
                break;
            };
            let skip = if rest[end] == b'\r' {
                match rest.get(end + 1) {
                    Some(b'\n') => 2,
                    Some(_) => 1,
                    None => {
                        self.after_cr = true;
                        1
                    }
                }
            } else {
                1
            };
            if self.line.is_empty() {
                let line = &rest[..end];
                self.line_done(line, Some(line), &mut borrowed, &mut f)?;
            } else {
                if self.line.len() + end > self.limit {
                    return Err(self.overflow());
                }
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&rest[..end]);
                let r = self.line_done(&line, None, &mut borrowed, &mut f);
                line.clear();
                self.line = line;
                r?;
            }
            rest = &rest[end + skip..];
        }
        if let Some(data) = borrowed {
            self.data.extend_from_slice(data);
        }
        Ok(())
    }

    /// The stream ended: a last event not followed by its blank line is
    /// still handed out (servers that end without one are common).
    pub fn finish(&mut self, mut f: impl FnMut(&Event<'_>)) {
        let mut borrowed = None;
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            let _ = self.line_done(&line, None, &mut borrowed, &mut f);
        }
        self.dispatch(None, &mut f);
    }

    #[cold]
    fn overflow(&mut self) -> TooLong {
        *self = Self::new(self.limit);
        TooLong { limit: self.limit }
    }

    /// One line. `chunk` is the same line when it lies in the caller's
    /// chunk (so its data may be borrowed into `borrowed`).
    fn line_done<'c>(
        &mut self,
        line: &[u8],
        chunk: Option<&'c [u8]>,
        borrowed: &mut Option<&'c [u8]>,
        f: &mut impl FnMut(&Event<'_>),
    ) -> Result<(), TooLong> {
        if line.is_empty() {
            let data = borrowed.take();
            self.dispatch(data, f);
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (name, start) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = i + 1;
                (
                    &line[..i],
                    if line.get(v) == Some(&b' ') { v + 1 } else { v },
                )
            }
            None => (line, line.len()),
        };
        let value = &line[start..];
        match name {
            b"data" => {
                let held = self.data.len() + borrowed.map_or(0, <[u8]>::len);
                if self.event.len() + held + value.len() + 1 > self.limit {
                    return Err(self.overflow());
                }
                if !self.has_data
                    && let Some(chunk) = chunk
                {
                    *borrowed = Some(&chunk[start..]);
                } else {
                    if let Some(first) = borrowed.take() {
                        self.data.extend_from_slice(first);
                    }
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                }
                self.has_data = true;
            }
            b"event" => {
                if value.len() > self.limit {
                    return Err(self.overflow());
                }
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            _ => {}
        }
        Ok(())
    }

    fn dispatch(&mut self, borrowed: Option<&[u8]>, f: &mut impl FnMut(&Event<'_>)) {
        if self.has_data {
            let data = text(borrowed.unwrap_or(&self.data));
            let event = text(&self.event);
            f(&Event {
                event: &event,
                data: &data,
            });
        }
        self.data.clear();
        self.event.clear();
        self.has_data = false;
    }
}

/// UTF-8 text, invalid sequences replaced (the fast check first).
fn text(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => std::borrow::Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Appends `data: {data}\n\n`; data holding line breaks (an event
/// passed on as it came) gets one `data:` line per line, so it reads back
/// the same.
pub fn write_data(out: &mut Vec<u8>, data: &[u8]) {
    let mut rest = data;
    while let Some(i) = memchr::memchr2(b'\n', b'\r', rest) {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..i]);
        out.push(b'\n');
        let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[i + skip..];
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(rest);
    out.extend_from_slice(b"\n\n");
}

/// Appends `event: {event}\ndata: {data}\n\n`.
pub fn write_event(out: &mut Vec<u8>, event: &str, data: &[u8]) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.push(b'\n');
    write_data(out, data);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(pieces: &[&[u8]]) -> Vec<(String, String)> {
        let mut p = Parser::new(1 << 16);
        let mut seen = Vec::new();
        for piece in pieces {
            p.feed(piece, |e| {
                seen.push((e.event.to_owned(), e.data.to_owned()))
            })
            .unwrap();
        }
        p.finish(|e| seen.push((e.event.to_owned(), e.data.to_owned())));
        seen
    }

    #[test]
    fn every_cut_gives_the_same_events() {
        let stream = "event: a\r\ndata: x\r\ndata: é\r\n\r\n: comment\n\ndata:y\r\rdata: z\n\nid: 3\nretry: 5\ndata\n\n".as_bytes();
        let whole = events(&[stream]);
        assert_eq!(
            whole,
            [
                ("a".into(), "x\né".into()),
                (String::new(), "y".into()),
                (String::new(), "z".into()),
                (String::new(), String::new()),
            ]
        );
        for i in 0..stream.len() {
            for j in i..stream.len() {
                assert_eq!(
                    events(&[&stream[..i], &stream[i..j], &stream[j..]]),
                    whole,
                    "cut at {i}, {j}"
                );
            }
        }
    }

    #[test]
    fn a_last_event_without_its_blank_line_counts() {
        assert_eq!(
            events(&[b"data: 1\n\ndata: 2"]),
            [(String::new(), "1".into()), (String::new(), "2".into())]
        );
    }

    #[test]
    fn written_events_read_back_the_same() {
        let mut out = Vec::new();
        write_data(&mut out, b"[DONE]\n{\"a\":1}\r\nx");
        write_event(&mut out, "e", b"y");
        assert_eq!(
            events(&[&out]),
            [
                (String::new(), "[DONE]\n{\"a\":1}\nx".into()),
                ("e".into(), "y".into())
            ]
        );
    }

    #[test]
    fn long_events_are_refused() {
        let mut p = Parser::new(16);
        assert!(p.feed(b"data: 0123456789", |_| {}).is_ok());
        assert_eq!(p.feed(b"abcdefgh", |_| {}), Err(TooLong { limit: 16 }));
        let mut p = Parser::new(16);
        assert!(
            p.feed(b"data: 0123456789\ndata: 0123456789\n", |_| {})
                .is_err()
        );
    }
}
