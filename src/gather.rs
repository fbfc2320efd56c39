//! Small vectored writes made one buffer, for one `send` where hyper asks
//! for a `writev`.
//!
//! hyper writes a message's head and its body's chunks as slices of one
//! vectored write when the socket takes them (the server's responses, the
//! proxy's requests upstream). For a small message the kernel's `writev`
//! costs more than a `send` of the same bytes (the vectored path through
//! the file layer, the slices copied in and walked): measured at about
//! 2 % of a small proxied request's CPU for the responses, and 1-2 % more
//! requests a second when the requests upstream went the same way. So
//! slices that fit in [`GATHER`] bytes are copied into
//! one buffer on the stack and a single slice goes as it is; larger
//! writes pass as they are, without a copy (hyper's own flattening, the
//! other way to get one buffer, would copy every byte of every body into
//! a buffer that stays as large as the largest message).

use std::io::IoSlice;
use std::task::Context;

/// The most bytes gathered into one write.
pub(crate) const GATHER: usize = 2048;

/// `bufs` as one buffer: the slice itself when there is one, else copied
/// into `scratch` when they fit; `None` when they do not (write them
/// vectored).
pub(crate) fn one_buffer<'a>(
    bufs: &'a [IoSlice<'_>],
    scratch: &'a mut [u8; GATHER],
) -> Option<&'a [u8]> {
    if let [one] = bufs {
        return Some(one);
    }
    let mut len = 0;
    for buf in bufs {
        scratch.get_mut(len..len + buf.len())?.copy_from_slice(buf);
        len += buf.len();
    }
    Some(&scratch[..len])
}

/// A vectored write of `bufs` to `io`, made with `write` when they are
/// one buffer (see [`one_buffer`]; a single slice without touching the
/// scratch buffer), else with `writev`: the body of a socket wrapper's
/// `poll_write_vectored`, whichever trait it implements.
pub(crate) fn write_vectored<W, R>(
    io: W,
    cx: &mut Context<'_>,
    bufs: &[IoSlice<'_>],
    write: impl FnOnce(W, &mut Context<'_>, &[u8]) -> R,
    writev: impl FnOnce(W, &mut Context<'_>, &[IoSlice<'_>]) -> R,
) -> R {
    if let [one] = bufs {
        return write(io, cx, one);
    }
    let mut scratch = [0u8; GATHER];
    match one_buffer(bufs, &mut scratch) {
        Some(all) => write(io, cx, all),
        None => writev(io, cx, bufs),
    }
}

#[cfg(test)]
mod tests {
    use super::{GATHER, one_buffer};
    use std::io::IoSlice;

    #[test]
    fn small_slices_become_one_buffer_and_large_ones_do_not() {
        let mut scratch = [0u8; GATHER];
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".as_slice();
        let bufs = [IoSlice::new(head), IoSlice::new(b"blue\n")];
        let got = one_buffer(&bufs, &mut scratch);
        assert_eq!(got, Some([head, b"blue\n"].concat().as_slice()));
        let big = vec![7u8; GATHER * 2];
        assert_eq!(
            one_buffer(&[IoSlice::new(&big)], &mut scratch),
            Some(big.as_slice()),
            "one slice goes as it is, whatever its size"
        );
        let half = vec![1u8; GATHER / 2 + 1];
        assert_eq!(
            one_buffer(&[IoSlice::new(&half), IoSlice::new(&half)], &mut scratch),
            None
        );
        let exact = vec![2u8; GATHER / 2];
        assert_eq!(
            one_buffer(&[IoSlice::new(&exact), IoSlice::new(&exact)], &mut scratch)
                .map(<[u8]>::len),
            Some(GATHER)
        );
        assert_eq!(one_buffer(&[], &mut scratch), Some([].as_slice()));
    }
}
