//! A target's HTTP/1.1 answers, read from the bytes of a connection as they arrive: for the
//! pipelined connections (`pipeline`), where several answers can come in one read and one
//! answer in many. Pure (no I/O), so that it is tested and fuzzed on bytes alone: whatever
//! pieces the bytes come in, the answers, and the first error, are the same.
//!
//! Bodies are framed by `Content-Length`, chunked (extensions and trailers skipped), or run to
//! the close; interim `1xx` answers are skipped; `204` and `304` have no body. A body is kept
//! up to [`MAX_RESPONSE_BYTES`]; a longer one is read to its end and dropped, so the next answer
//! is still found, and its answer is marked as not whole ([`Answer::whole`]). A head, chunk size
//! line or trailer line over 64 KiB, an invalid or conflicting length, a malformed chunk, or
//! `101` is refused with the reason.

use bytes::{Buf, Bytes, BytesMut};

use super::MAX_RESPONSE_BYTES;

/// An answer's head (status line and headers), a chunk size line or a trailer line longer than
/// this is refused.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers read per answer; more is refused.
const MAX_HEADERS: usize = 100;

/// A target's answer, as much of it as an attempt needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    /// The whole body when [`Answer::whole`]; empty otherwise.
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
    reading: Option<(Answer, BytesMut, Body, bool)>,
}

impl Decoder {
    /// The next complete answer in `buf` (taken out of it), and whether the target closes the
    /// connection after it; `None` until more bytes come.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<(Answer, bool)>, Malformed> {
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
    pub fn end_of_stream(&mut self) -> Option<Answer> {
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
pub fn read_all(stream: &[u8], ends: &[usize]) -> Result<Vec<(Answer, bool)>, Malformed> {
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
    Final(Answer, Body, bool),
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
    let answer = Answer {
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// [`read_all`] with the stream cut at `cuts`, each taken modulo its length.
    fn decode_all(stream: &[u8], cuts: &[usize]) -> Result<Vec<(Answer, bool)>, Malformed> {
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        ends.sort_unstable();
        read_all(stream, &ends)
    }

    fn answer(status: u16, content_type: Option<&str>, body: &[u8]) -> Answer {
        Answer {
            status,
            retry_after: None,
            content_type: content_type.map(str::to_owned),
            body: Bytes::copy_from_slice(body),
            whole: true,
        }
    }

    const MIXED: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n\
        HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\ncontent-length: 7\r\n\r\n<xml/>\n\
        HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nsucc\r\n3\r\ness\r\n0\r\nX-Trailer: t\r\n\r\n\
        HTTP/1.1 204 No Content\r\n\r\n\
        HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n\
        HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n";

    fn mixed() -> Vec<(Answer, bool)> {
        let mut busy = answer(503, None, b"");
        busy.retry_after = Some("7".into());
        vec![
            (answer(200, Some("text/xml"), b"<xml/>\n"), false),
            (answer(200, None, b"success"), false),
            (answer(204, None, b""), false),
            (busy, false),
            (answer(304, None, b""), false),
        ]
    }

    #[test]
    fn answers_back_to_back_are_read_in_order_with_every_framing() {
        assert_eq!(decode_all(MIXED, &[]).unwrap(), mixed());
    }

    #[test]
    fn answers_read_in_pieces_of_any_size_are_the_same() {
        for cut in 1..MIXED.len() {
            assert_eq!(decode_all(MIXED, &[cut]).unwrap(), mixed(), "cut at {cut}");
        }
        let every_byte: Vec<usize> = (1..MIXED.len()).collect();
        assert_eq!(decode_all(MIXED, &every_byte).unwrap(), mixed());
    }

    #[test]
    fn a_body_without_length_runs_until_the_close_and_closes() {
        let stream =
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\nto the end";
        assert_eq!(
            decode_all(stream, &[40]).unwrap(),
            vec![
                (answer(200, None, b"ok"), false),
                (answer(200, None, b"to the end"), true)
            ]
        );
        // A coding other than chunked last: the body also runs to the close.
        let gzip = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz";
        assert_eq!(
            decode_all(gzip, &[]).unwrap(),
            vec![(answer(200, None, b"zz"), true)]
        );
    }

    #[test]
    fn connection_close_and_http_1_0_end_the_connection_after_the_answer() {
        let cases: [(&[u8], bool); 3] = [
            (
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
                true,
            ),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            (
                b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
        ];
        for (stream, closes) in cases {
            assert_eq!(
                decode_all(stream, &[]).unwrap(),
                vec![(answer(200, None, b""), closes)],
                "{}",
                String::from_utf8_lossy(stream)
            );
        }
    }

    #[test]
    fn a_body_over_the_cap_is_not_whole_and_the_next_answer_still_read() {
        let mut stream = Vec::new();
        let over = vec![b'a'; MAX_RESPONSE_BYTES + 1];
        let at_the_cap = vec![b'b'; MAX_RESPONSE_BYTES];
        stream.extend(on_the_wire(200, &over, None));
        stream.extend(on_the_wire(200, &over, Some(&[70_000, 500_000])));
        stream.extend(on_the_wire(200, &at_the_cap, Some(&[1000])));
        stream.extend_from_slice(b"HTTP/1.1 202 Accepted\r\nContent-Length: 1\r\n\r\nb");
        // And one that runs to the close.
        stream.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        stream.extend_from_slice(&over);
        let cut = Answer {
            body: Bytes::new(),
            whole: false,
            ..answer(200, None, b"")
        };
        let expected = vec![
            (cut.clone(), false),
            (cut.clone(), false),
            (answer(200, None, &at_the_cap), false),
            (answer(202, None, b"b"), false),
            (cut, true),
        ];
        // Status, body length, whole, and whether the connection closes: a failure then does
        // not print megabytes.
        let summary = |answers: &[(Answer, bool)]| -> Vec<(u16, usize, bool, bool)> {
            (answers.iter())
                .map(|(a, close)| (a.status, a.body.len(), a.whole, *close))
                .collect()
        };
        for cuts in [&[][..], &[1000, 70_000, 900_000, 1_100_000, 2_200_000]] {
            let answers = decode_all(&stream, cuts).unwrap();
            assert_eq!(summary(&answers), summary(&expected), "cut at {cuts:?}");
            assert!(answers == expected, "cut at {cuts:?}");
        }
    }

    #[test]
    fn what_is_not_http_is_refused_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.1 answer"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "an invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "two different Content-Lengths",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "an invalid chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
                "a chunk not ended by CRLF",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                "101 Switching Protocols",
            ),
        ];
        for (stream, reason) in cases {
            let error = decode_all(stream, &[]).unwrap_err().to_string();
            assert!(error.contains(reason), "{error}");
        }
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        endless.resize(MAX_HEAD_BYTES + 100, b'a');
        let error = decode_all(&endless, &[]).unwrap_err().to_string();
        assert!(error.contains("head is too large"), "{error}");
        // Refused for its length whether it came whole or in pieces.
        let mut long = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
        long.resize(MAX_HEAD_BYTES + 100, b'a');
        long.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
        for cuts in [&[][..], &[1000, 40_000]] {
            let error = decode_all(&long, cuts).unwrap_err().to_string();
            assert!(error.contains("head is too large"), "{error}");
        }
    }

    /// One answer on the wire, framed by length or in chunks of the given sizes.
    fn on_the_wire(status: u16, body: &[u8], chunks: Option<&[usize]>) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {status} X\r\n").into_bytes();
        match chunks {
            None => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            }
            Some(sizes) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let mut rest = body;
                for size in sizes
                    .iter()
                    .map(|s| s % (rest.len() + 1))
                    .chain([body.len()])
                {
                    let size = size.min(rest.len());
                    if size == 0 {
                        continue;
                    }
                    out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
                    out.extend_from_slice(&rest[..size]);
                    out.extend_from_slice(b"\r\n");
                    rest = &rest[size..];
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
        }
        out
    }

    proptest! {
        #[test]
        fn bytes_from_the_network_never_panic(
            stream in proptest::collection::vec(any::<u8>(), 0..600),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            let _ = decode_all(&stream, &cuts);
        }

        #[test]
        fn the_pieces_bytes_come_in_never_change_what_is_read(
            stream in proptest::collection::vec(
                prop_oneof![
                    Just(b"HTTP/1.1 200 OK\r\n".to_vec()),
                    Just(b"Content-Length: 3\r\n".to_vec()),
                    Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
                    Just(b"\r\n".to_vec()),
                    Just(b"3;x\r\nabc\r\n0\r\n".to_vec()),
                    proptest::collection::vec(any::<u8>(), 0..8),
                ],
                0..20,
            ).prop_map(|parts| parts.concat()),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            prop_assert_eq!(decode_all(&stream, &cuts), decode_all(&stream, &[]));
        }

        #[test]
        fn any_answers_cut_anywhere_come_out_whole(
            answers in proptest::collection::vec(
                (200u16..600, proptest::collection::vec(any::<u8>(), 0..300),
                 proptest::option::of(proptest::collection::vec(any::<usize>(), 0..4))),
                1..5),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (status, body, chunks) in &answers {
                // 204 and 304 have no body whatever the head says.
                let (body, chunks): (&[u8], _) = match status {
                    204 | 304 => (b"", None),
                    _ => (body, chunks.as_deref()),
                };
                stream.extend(on_the_wire(*status, body, chunks));
                expected.push((answer(*status, None, body), false));
            }
            prop_assert_eq!(decode_all(&stream, &cuts).unwrap(), expected);
        }
    }
}
