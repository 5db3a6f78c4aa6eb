//! A target's HTTP/1.1 answers, read from the bytes of a connection as they arrive: for the
//! pipelined connections (`pipeline`), where several answers can come in one read and one
//! answer in many. Pure (no I/O), so that it is tested and fuzzed on bytes alone: whatever
//! pieces the bytes come in, the answers, and the first error, are the same.
//!
//! Bodies are framed by `Content-Length`, chunked (extensions and trailers skipped), or run to
//! the close; interim `1xx` answers are skipped; `204` and `304` have no body. A body is kept
//! up to [`MAX_RESPONSE_BYTES`]; a longer one is read to its end and dropped, so the next answer
//! is still found, and its answer is marked as not whole ([`Response::whole`]). A head, chunk size
//! line or trailer line over 64 KiB, an invalid or conflicting length, a malformed chunk, or
//! `101` is refused with the reason.

use bytes::{Buf, Bytes, BytesMut};

/// A target's answer body is read up to this size (a passive reply is a few KiB at most); a
/// longer one is no reply (see `attempt::Withheld::TooLarge`, whose message, like the README,
/// says 1 MiB).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// An answer's head (status line and headers), a chunk size line or a trailer line longer than
/// this is refused.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers read per answer; more is refused.
const MAX_HEADERS: usize = 100;

/// A target's answer, as much of it as an attempt needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    /// The whole body when [`Response::whole`]; empty otherwise.
    pub body: Bytes,
    /// The body was at most [`MAX_RESPONSE_BYTES`] and is all here. A longer one is read to its
    /// end and dropped: part of an answer is no answer.
    pub whole: bool,
}

/// Why bytes from a target are not an HTTP/1.1 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub &'static str);

/// How the body of the answer being read ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// This many bytes left.
    Length(u64),
    /// Chunked: a chunk's size line is next.
    ChunkSize,
    /// Chunked: this many bytes of the chunk left, then its CRLF.
    ChunkData(u64),
    /// Chunked: the CRLF after a chunk's data.
    ChunkEnd,
    /// Chunked: trailer lines, up to an empty one.
    Trailers,
    /// Everything until the target closes the connection.
    UntilClose,
}

/// Reads answers from the bytes of a connection, one after another, as they arrive in any
/// pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The answer whose body is being read: its head, its body so far, how its body ends, and
    /// whether the connection closes after it.
    reading: Option<(Response, BytesMut, Body, bool)>,
}

impl Decoder {
    /// The next complete answer in `buf` (taken out of it), and whether the target closes the
    /// connection after it; `None` until more bytes come.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<(Response, bool)>, Malformed> {
        loop {
            let (answer, body, framing, _) = match &mut self.reading {
                Some(reading) => reading,
                None => match parse_head(buf)? {
                    None => return Ok(None),
                    // An interim answer (100 Continue, 103 Early Hints): the real one follows.
                    Some(Head::Interim) => continue,
                    Some(Head::Final(answer, framing, close)) => {
                        self.reading
                            .insert((answer, BytesMut::new(), framing, close))
                    }
                },
            };
            if !read_body(buf, body, &mut answer.whole, framing)? {
                return Ok(None);
            }
            if let Some((mut answer, body, _, close)) = self.reading.take() {
                answer.body = body.freeze();
                return Ok(Some((answer, close)));
            }
        }
    }

    /// The connection ended: the answer being read is complete if its body runs until then.
    pub fn end_of_stream(&mut self) -> Option<Response> {
        match self.reading.take() {
            Some((mut answer, body, Body::UntilClose, _)) => {
                answer.body = body.freeze();
                Some(answer)
            }
            _ => None,
        }
    }
}

/// Every answer in `stream` when its bytes arrive in pieces that end at `ends` (ascending;
/// the last piece ends with the stream), and whether the connection closes after each; then
/// the answer the end of the stream completes. Or the first error. For tests and the fuzz
/// target: whatever `ends` are, the result is the same.
pub fn read_all(stream: &[u8], ends: &[usize]) -> Result<Vec<(Response, bool)>, Malformed> {
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::new();
    let mut answers = Vec::new();
    let mut at = 0;
    for &end in ends.iter().chain([&stream.len()]) {
        let end = end.clamp(at, stream.len());
        buf.extend_from_slice(&stream[at..end]);
        at = end;
        while let Some(answer) = decoder.decode(&mut buf)? {
            answers.push(answer);
        }
    }
    if let Some(answer) = decoder.end_of_stream() {
        answers.push((answer, true));
    }
    Ok(answers)
}

/// The first [`MAX_HEAD_BYTES`] of `buf`: a head or line is looked for there only, so that it
/// is refused for its length alike whether it came in one read or in pieces.
fn window(buf: &[u8]) -> &[u8] {
    &buf[..buf.len().min(MAX_HEAD_BYTES)]
}

enum Head {
    Interim,
    Final(Response, Body, bool),
}

/// The head of the next answer in `buf`, taken out of it; `None` until it is complete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(window(buf)) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(Malformed("the answer's head is too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Malformed("too many headers"));
        }
        Err(_) => return Err(Malformed("not an HTTP/1.1 answer")),
    };
    let status = response.code.unwrap_or(0);
    if (100..200).contains(&status) {
        if status == 101 {
            return Err(Malformed("101 Switching Protocols, never asked for"));
        }
        buf.advance(len);
        return Ok(Some(Head::Interim));
    }
    let mut close = response.version == Some(0);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut retry_after = None;
    let mut content_type = None;
    for header in response.headers.iter() {
        let text = || std::str::from_utf8(header.value).ok().map(str::trim);
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = text()
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or(Malformed("an invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Malformed("two different Content-Lengths"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only if it is the last coding; otherwise the body runs to the close.
            let last = text().and_then(|t| t.rsplit(',').next()).map(str::trim);
            chunked = Some(last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")));
        } else if name.eq_ignore_ascii_case("connection") {
            let says = |option: &str| {
                text().is_some_and(|t| t.split(',').any(|o| o.trim().eq_ignore_ascii_case(option)))
            };
            if says("close") {
                close = true;
            } else if says("keep-alive") {
                close = false;
            }
        } else if name.eq_ignore_ascii_case("retry-after") {
            retry_after = text().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = text().map(str::to_owned);
        }
    }
    let body = if status == 204 || status == 304 {
        Body::Length(0)
    } else {
        match (chunked, length) {
            (Some(true), _) => Body::ChunkSize,
            (None, Some(n)) => Body::Length(n),
            (Some(false), _) | (None, None) => Body::UntilClose,
        }
    };
    if body == Body::UntilClose {
        close = true;
    }
    buf.advance(len);
    let answer = Response {
        status,
        retry_after,
        content_type,
        body: Bytes::new(),
        whole: true,
    };
    Ok(Some(Head::Final(answer, body, close)))
}

/// Moves the body's bytes from `buf` into `body`; true once the body is complete. A body over
/// [`MAX_RESPONSE_BYTES`] is not `whole`: what was kept of it is let go, and the rest dropped as
/// it comes.
fn read_body(
    buf: &mut BytesMut,
    body: &mut BytesMut,
    whole: &mut bool,
    framing: &mut Body,
) -> Result<bool, Malformed> {
    let mut keep = |body: &mut BytesMut, bytes: &[u8]| {
        if !*whole {
            return;
        }
        if bytes.len() > MAX_RESPONSE_BYTES.saturating_sub(body.len()) {
            *whole = false;
            *body = BytesMut::new();
            return;
        }
        body.extend_from_slice(bytes);
    };
    loop {
        match framing {
            Body::Length(0) => return Ok(true),
            Body::Length(left) | Body::ChunkData(left) => {
                if buf.is_empty() {
                    return Ok(false);
                }
                let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                keep(body, &buf[..n]);
                buf.advance(n);
                *left -= n as u64;
                if let Body::ChunkData(0) = framing {
                    *framing = Body::ChunkEnd;
                }
            }
            Body::ChunkSize => match httparse::parse_chunk_size(window(buf)) {
                Ok(httparse::Status::Complete((len, 0))) => {
                    buf.advance(len);
                    *framing = Body::Trailers;
                }
                Ok(httparse::Status::Complete((len, size))) => {
                    buf.advance(len);
                    *framing = Body::ChunkData(size);
                }
                Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
                    return Err(Malformed("a chunk size line is too long"));
                }
                Ok(httparse::Status::Partial) => return Ok(false),
                Err(_) => return Err(Malformed("an invalid chunk size")),
            },
            Body::ChunkEnd => {
                if buf.len() < 2 {
                    return Ok(false);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Malformed("a chunk not ended by CRLF"));
                }
                buf.advance(2);
                *framing = Body::ChunkSize;
            }
            Body::Trailers => {
                let Some(end) = window(buf).windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() >= MAX_HEAD_BYTES {
                        return Err(Malformed("a trailer line is too long"));
                    }
                    return Ok(false);
                };
                buf.advance(end + 2);
                if end == 0 {
                    return Ok(true);
                }
            }
            Body::UntilClose => {
                keep(body, buf);
                buf.clear();
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests;
