//! RFC 6587 framing of a TCP syslog stream: octet counting or a newline, decided per
//! frame, with the limits of the module above.

use std::ops::Range;

/// Splits a TCP byte stream into frames (RFC 6587): octet-counted or newline-terminated,
/// decided per frame. A frame longer than the limit is cut to it and the rest skipped as
/// it arrives, so the buffer never holds more than one frame of at most the limit and
/// one read.
#[derive(Debug, Default)]
pub(super) struct Framer {
    pub(super) buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    pos: usize,
    /// Bytes of an over-long octet-counted frame still to be skipped.
    skip: usize,
    /// Skipping up to the next newline.
    discard: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    Frame(Range<usize>),
    /// The first `limit` bytes of a longer frame; the rest is skipped.
    Truncated(Range<usize>),
    Malformed(&'static str),
    /// Nothing more until more bytes arrive.
    More,
}

impl Framer {
    /// The next frame of what was received, cut to `limit` bytes. `eof`: nothing more
    /// will come, so an unterminated newline-framed message is complete.
    pub(super) fn next(&mut self, eof: bool, limit: usize) -> Next {
        loop {
            let data = &self.buf[self.pos..];
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.pos += n;
                self.skip -= n;
                if self.skip > 0 {
                    return Next::More;
                }
                continue;
            }
            if self.discard {
                match memchr::memchr(b'\n', data) {
                    Some(i) => {
                        self.pos += i + 1;
                        self.discard = false;
                        continue;
                    }
                    None => {
                        self.pos = self.buf.len();
                        return Next::More;
                    }
                }
            }
            let Some(&first) = data.first() else {
                return Next::More;
            };
            // Separators some senders put between frames.
            if matches!(first, b'\n' | b'\r' | b'\0' | b' ') {
                self.pos += 1;
                continue;
            }
            if first.is_ascii_digit() {
                return self.octet_counted(eof, limit);
            }
            let start = self.pos;
            return match memchr::memchr(b'\n', data) {
                Some(i) if i > limit => {
                    self.pos += i + 1;
                    Next::Truncated(start..start + limit)
                }
                Some(i) => {
                    self.pos += i + 1;
                    Next::Frame(start..start + trim_frame(&data[..i]).len())
                }
                None if data.len() > limit => {
                    self.discard = true;
                    self.pos = self.buf.len();
                    Next::Truncated(start..start + limit)
                }
                None if eof => {
                    self.pos = self.buf.len();
                    Next::Frame(start..start + trim_frame(data).len())
                }
                None => Next::More,
            };
        }
    }

    fn octet_counted(&mut self, eof: bool, limit: usize) -> Next {
        let data = &self.buf[self.pos..];
        let digits = data.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits > 9 {
            self.discard = true;
            return Next::Malformed("bad octet count");
        }
        let Some(&after) = data.get(digits) else {
            if eof {
                self.pos = self.buf.len();
                return Next::Malformed("bad octet count");
            }
            return Next::More;
        };
        if after != b' ' {
            self.discard = true;
            return Next::Malformed("bad octet count");
        }
        let len: usize = std::str::from_utf8(&data[..digits])
            .ok()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        let body = self.pos + digits + 1;
        if len == 0 {
            self.pos = body;
            return Next::Malformed("octet count of zero");
        }
        let kept = len.min(limit);
        if self.buf.len() - body < kept {
            if eof {
                self.pos = self.buf.len();
                return Next::Malformed("connection closed inside an octet-counted frame");
            }
            return Next::More;
        }
        self.pos = body + kept;
        if kept < len {
            self.skip = len - kept;
            return Next::Truncated(body..body + kept);
        }
        let frame = &self.buf[body..body + len];
        Next::Frame(body..body + trim_frame(frame).len())
    }

    /// Ends the frame in progress now, as a truncated one of what is buffered of it, and
    /// skips the rest as it arrives; `None` if nothing of a message is buffered.
    pub(super) fn cut(&mut self) -> Option<Range<usize>> {
        if self.skip > 0 || self.discard {
            return None;
        }
        let data = &self.buf[self.pos..];
        let digits = data.iter().take_while(|b| b.is_ascii_digit()).count();
        let start = if digits > 0 {
            // An octet-counted frame whose body has begun.
            let len: usize = std::str::from_utf8(&data[..digits])
                .ok()
                .and_then(|d| d.parse().ok())?;
            let body = self.pos + digits + 1;
            if data.get(digits) != Some(&b' ') || body >= self.buf.len() {
                return None;
            }
            self.skip = len.checked_sub(self.buf.len() - body)?;
            body
        } else if data.is_empty() {
            return None;
        } else {
            self.discard = true;
            self.pos
        };
        self.pos = self.buf.len();
        Some(start..self.buf.len())
    }

    /// True while a frame has begun and not ended: part of it is buffered, or the rest of
    /// an over-long one is still being skipped.
    pub(super) fn in_frame(&self) -> bool {
        self.pos < self.buf.len() || self.skip > 0 || self.discard
    }

    /// Drops what was read, keeping an incomplete frame; an empty buffer gives back its
    /// memory beyond a few KiB, so idle connections stay cheap.
    pub(super) fn compact(&mut self) {
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.buf.shrink_to(16 * 1024);
        } else if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

/// A message without the line ending or NULs that senders append.
pub(super) fn trim_frame(frame: &[u8]) -> &[u8] {
    let mut end = frame.len();
    while end > 0 && matches!(frame[end - 1], b'\n' | b'\r' | b'\0') {
        end -= 1;
    }
    &frame[..end]
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LIMIT: usize = 64 * 1024;

    fn frames(input: &[&[u8]], eof: bool) -> Vec<Result<String, &'static str>> {
        frames_cut(input, eof, LIMIT)
    }

    /// Frames as text; a truncated one is marked with a trailing `…`.
    fn frames_cut(input: &[&[u8]], eof: bool, limit: usize) -> Vec<Result<String, &'static str>> {
        let mut f = Framer::default();
        let mut out = Vec::new();
        for (i, chunk) in input.iter().enumerate() {
            f.buf.extend_from_slice(chunk);
            let last = eof && i + 1 == input.len();
            loop {
                match f.next(last, limit) {
                    Next::More => break,
                    Next::Frame(r) => out.push(Ok(String::from_utf8_lossy(&f.buf[r]).into_owned())),
                    Next::Truncated(r) => {
                        out.push(Ok(format!("{}…", String::from_utf8_lossy(&f.buf[r]))))
                    }
                    Next::Malformed(why) => out.push(Err(why)),
                }
            }
            f.compact();
        }
        out
    }

    #[test]
    fn tcp_framing_octet_counted_and_newline_terminated_mixed() {
        let got = frames(
            &[
                b"12 <13>1 - a b",
                b"c\n<14>two\r\n",
                b"5 <15>x",
                b"<16>y\n\n<17>last",
            ],
            true,
        );
        assert_eq!(
            got,
            vec![
                Ok("<13>1 - a bc".into()),
                Ok("<14>two".into()),
                Ok("<15>x".into()),
                Ok("<16>y".into()),
                Ok("<17>last".into()),
            ]
        );
    }

    #[test]
    fn given_bad_octet_counts_then_they_are_skipped_and_the_stream_resyncs() {
        let got = frames(
            &[b"12x <13>broken\n<14>after bad count\n", b"6 <15>ok"],
            true,
        );
        assert_eq!(
            got,
            vec![
                Err("bad octet count"),
                Ok("<14>after bad count".into()),
                Ok("<15>ok".into()),
            ]
        );
    }

    #[test]
    fn given_frames_longer_than_the_limit_then_they_are_cut_to_it_and_the_rest_skipped() {
        let limit = 16;
        let long = "x".repeat(40);
        let octet = format!("{} <13>{long}", long.len() + 4);
        let (a, b) = octet.split_at(20);
        let newline = format!("<14>{long}\n");
        let (c, d) = newline.split_at(30);
        let got = frames_cut(
            &[
                a.as_bytes(),
                b.as_bytes(),
                b"6 <15>ok",
                c.as_bytes(),
                d.as_bytes(),
                b"<16>after\n",
            ],
            true,
            limit,
        );
        let cut = |pri: &str| Ok(format!("{pri}{}…", &long[..limit - pri.len()]));
        assert_eq!(
            got,
            vec![
                cut("<13>"),
                Ok("<15>ok".into()),
                cut("<14>"),
                Ok("<16>after".into()),
            ]
        );
    }

    #[test]
    fn given_a_frame_cut_to_the_limit_then_the_buffer_holds_no_more_than_the_limit_and_a_read() {
        let mut f = Framer::default();
        let limit = 1024;
        let mut cut = 0;
        for _ in 0..1000 {
            f.buf.extend_from_slice(&[b'y'; 4096]);
            loop {
                match f.next(false, limit) {
                    Next::More => break,
                    Next::Truncated(_) => cut += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
            f.compact();
            assert!(f.buf.len() <= limit + 4096, "{} bytes held", f.buf.len());
            assert!(f.in_frame(), "still inside the over-long frame");
        }
        assert_eq!(cut, 1, "one over-long line is one truncated frame");
        f.buf.extend_from_slice(b"\n<13>next\n");
        assert_eq!(
            f.next(false, limit),
            Next::Frame(f.buf.len() - 9..f.buf.len() - 1)
        );
        assert_eq!(f.next(false, limit), Next::More);
        f.compact();
        assert!(!f.in_frame());
    }

    #[test]
    fn given_a_frame_cut_midway_then_what_was_buffered_is_its_message_and_the_rest_is_skipped() {
        let mut f = Framer::default();
        f.buf.extend_from_slice(b"20 <13>0123");
        assert_eq!(f.next(false, LIMIT), Next::More);
        assert_eq!(
            f.cut().map(|r| f.buf[r].to_vec()),
            Some(b"<13>0123".to_vec())
        );
        f.compact();
        f.buf.extend_from_slice(b"456789abcdef<14>next\n");
        assert_eq!(
            f.next(false, LIMIT),
            Next::Frame(12..20),
            "12 bytes skipped"
        );
        f.compact();
        f.buf.extend_from_slice(b"<15>no newline yet");
        assert_eq!(f.next(false, LIMIT), Next::More);
        assert_eq!(f.cut(), Some(0..18));
        f.compact();
        f.buf
            .extend_from_slice(b" still the same line\n<16>after\n");
        assert_eq!(f.next(false, LIMIT), Next::Frame(21..30));
        f.compact();
        assert_eq!(f.cut(), None, "nothing in progress");
        f.buf.extend_from_slice(b"12");
        assert_eq!(f.cut(), None, "an octet count alone is no message yet");
    }

    proptest! {
        #[test]
        fn framing_never_panics_nor_loops(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
            let input: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let total: usize = chunks.iter().map(Vec::len).sum();
            let got = frames(&input, true);
            prop_assert!(got.len() <= total + 1);
        }
    }
}
