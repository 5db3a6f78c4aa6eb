//! HTTP/1.1 pipelining, for plain `http` targets with `pipelining = true`.
//!
//! The requests to one target address share one connection. Whatever is queued when the
//! connection is ready to write goes out in one write, without waiting for the answers before
//! it; the answers come back in the order of the requests and are read as they arrive, several
//! per read when they came together. Under load that is a system call for many deliveries
//! instead of two for each, on both sides. The price is head-of-line blocking: a slow answer
//! holds up those behind it, and a connection whose oldest request is not answered within its
//! timeout is closed, failing every request on it (they are retried like any failed attempt).
//! Targets must answer pipelined requests in order, as HTTP/1.1 requires and most servers do;
//! it is an opt-in because some proxies in front of servers do not.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::Request;
use http::uri::{Authority, Scheme};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::MAX_RESPONSE_BYTES;

/// A connection that had nothing to send for this long is closed.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// An answer's head (status line and headers) larger than this is refused.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers read per answer; more is refused.
const MAX_HEADERS: usize = 100;
/// Connections a request is handed to at most when each ends before writing it.
const SEND_TRIES: u32 = 3;

/// A target's answer, as much of it as an attempt needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub content_type: Option<String>,
    /// Up to [`MAX_RESPONSE_BYTES`]; the rest is read and dropped.
    pub body: Bytes,
}

/// Why a pipelined request got no answer. Every request waiting on a connection that fails gets
/// the same one.
#[derive(Debug, Clone, thiserror::Error)]
pub(super) enum PipeError {
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("timed out after {0:?} (the connection is closed with every request on it)")]
    TimedOut(Duration),
    #[error("the target closed the connection before it answered")]
    Closed,
    #[error("request failed: {0}")]
    Io(String),
    #[error("the target's answer is not valid HTTP/1.1: {0}")]
    Malformed(&'static str),
    /// The connection ended before the request was written: it goes on another one.
    #[error("the connection ended before the request was sent")]
    NotSent,
}

/// A request on its way: its bytes, how long its answer may take, and where the answer goes.
struct Queued {
    request: Bytes,
    timeout: Duration,
    answer: oneshot::Sender<Result<Answer, PipeError>>,
}

/// A request written, waiting for its answer.
struct Waiting {
    deadline: Instant,
    timeout: Duration,
    answer: oneshot::Sender<Result<Answer, PipeError>>,
}

/// One pipelined connection per target address, each run by a task of its own.
pub(super) struct Pipelines {
    by_address: Mutex<HashMap<Authority, mpsc::UnboundedSender<Queued>>>,
    connector: HttpConnector,
}

impl std::fmt::Debug for Pipelines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipelines").finish_non_exhaustive()
    }
}

impl Pipelines {
    pub(super) fn new(connector: HttpConnector) -> Pipelines {
        Pipelines {
            by_address: Mutex::default(),
            connector,
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) to `address` on its pipelined connection
    /// (opened if there is none) and waits for its answer. The caller bounds the wait; `timeout`
    /// is how long the connection waits for this answer before it gives up on all of them.
    pub(super) async fn exchange(
        &self,
        address: &Authority,
        request: &Request<Bytes>,
        timeout: Duration,
    ) -> Result<Answer, PipeError> {
        let request = serialize(request);
        // A connection that ended before it wrote the request: the request goes on a new one
        // (a target that closes idle connections is not worth a retry's backoff).
        let mut tries = 0;
        loop {
            tries += 1;
            let (answer, answered) = oneshot::channel();
            self.queue(
                address,
                Queued {
                    request: request.clone(),
                    timeout,
                    answer,
                },
            );
            match answered.await.unwrap_or(Err(PipeError::Closed)) {
                Err(PipeError::NotSent) if tries < SEND_TRIES => continue,
                answer => return answer,
            }
        }
    }

    /// Hands `queued` to the connection of `address`: the open one, or a new one when there is
    /// none or it ended meanwhile.
    fn queue(&self, address: &Authority, mut queued: Queued) {
        loop {
            let sender = self.sender(address, queued.timeout);
            match sender.send(queued) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => {
                    queued = back;
                    let mut by_address = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
                    if by_address
                        .get(address)
                        .is_some_and(|s| s.same_channel(&sender))
                    {
                        by_address.remove(address);
                    }
                }
            }
        }
    }

    /// The queue of `address`'s connection; a new connection when there is none or it ended,
    /// which gives up connecting after `connect_within`.
    fn sender(
        &self,
        address: &Authority,
        connect_within: Duration,
    ) -> mpsc::UnboundedSender<Queued> {
        let mut by_address = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = by_address.get(address).filter(|s| !s.is_closed()) {
            return sender.clone();
        }
        // Ended connections of other addresses go too (a target removed by a reload).
        by_address.retain(|_, sender| !sender.is_closed());
        let (sender, queue) = mpsc::unbounded_channel();
        let connector = self.connector.clone();
        tokio::spawn(run(connector, address.clone(), connect_within, queue));
        by_address.insert(address.clone(), sender.clone());
        sender
    }
}

/// The request as it goes on the wire: request line, headers, `Content-Length`, body.
fn serialize(request: &Request<Bytes>) -> Bytes {
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let body = request.body();
    let mut out = BytesMut::with_capacity(256 + body.len());
    out.put_slice(request.method().as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in request.headers() {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.put_slice(body);
    out.freeze()
}

/// One connection: opens it, then writes what is queued and reads the answers until it fails,
/// the target closes it, or it stays idle for [`IDLE_FOR`].
async fn run(
    connector: HttpConnector,
    address: Authority,
    connect_within: Duration,
    mut queue: mpsc::UnboundedReceiver<Queued>,
) {
    // Bounded: requests that come meanwhile wait for this connection, not for one of their own.
    let connected = tokio::time::timeout(connect_within, connect(connector, &address)).await;
    let connected = connected.unwrap_or_else(|_| {
        Err(PipeError::Connect(format!(
            "timed out after {connect_within:?}"
        )))
    });
    let stream = match connected {
        Ok(stream) => stream,
        Err(e) => {
            queue.close();
            while let Ok(queued) = queue.try_recv() {
                let _ = queued.answer.send(Err(e.clone()));
            }
            return;
        }
    };
    let (mut read, mut write) = stream.into_split();
    let (written, mut waiting) = mpsc::unbounded_channel::<Waiting>();
    let ended = CancellationToken::new();
    let writer = async {
        let mut out = BytesMut::new();
        loop {
            let first = tokio::select! {
                queued = queue.recv() => match queued {
                    Some(queued) => queued,
                    None => break,
                },
                () = tokio::time::sleep(IDLE_FOR) => {
                    // Idle: refuse new requests, but send any that came meanwhile.
                    queue.close();
                    continue;
                }
                () = ended.cancelled() => break,
            };
            // Let the tasks that are ready run first: under load, each of them queues a
            // request too, and they all go out in this write.
            tokio::task::yield_now().await;
            let mut batch = vec![first];
            while let Ok(queued) = queue.try_recv() {
                batch.push(queued);
            }
            // The reader learns of each request before its answer can come.
            out.clear();
            let sent_at = Instant::now();
            let mut reader_ended = false;
            for queued in batch {
                if reader_ended {
                    let _ = queued.answer.send(Err(PipeError::NotSent));
                    continue;
                }
                out.put_slice(&queued.request);
                let waiting = Waiting {
                    deadline: sent_at + queued.timeout,
                    timeout: queued.timeout,
                    answer: queued.answer,
                };
                if let Err(mpsc::error::SendError(w)) = written.send(waiting) {
                    let _ = w.answer.send(Err(PipeError::NotSent));
                    reader_ended = true;
                }
            }
            if reader_ended {
                break;
            }
            tokio::select! {
                result = write.write_all(&out) => if let Err(e) = result {
                    // The reader fails what waits: its answers will not come.
                    ended.cancel();
                    tracing::debug!(error = %e, "pipelined write failed");
                    break;
                },
                () = ended.cancelled() => break,
            }
        }
        // No more requests here: what is queued goes to another connection; the reader ends
        // once it has the answers.
        queue.close();
        while let Ok(queued) = queue.try_recv() {
            let _ = queued.answer.send(Err(PipeError::NotSent));
        }
        drop(written);
    };
    let reader = async {
        let failure = read_answers(&mut read, &mut waiting, &ended).await;
        ended.cancel();
        waiting.close();
        while let Ok(w) = waiting.try_recv() {
            let _ = w
                .answer
                .send(Err(failure.clone().unwrap_or(PipeError::Closed)));
        }
    };
    tokio::join!(writer, reader);
}

/// Reads answers and hands each to the request it answers, in order, until the writer is done
/// and every request is answered (`None`), or the connection fails: then every request still
/// waiting gets the error returned.
async fn read_answers(
    read: &mut tokio::net::tcp::OwnedReadHalf,
    written: &mut mpsc::UnboundedReceiver<Waiting>,
    ended: &CancellationToken,
) -> Option<PipeError> {
    let mut waiting: VecDeque<Waiting> = VecDeque::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut decoder = Decoder::default();
    let fail = |waiting: &mut VecDeque<Waiting>, e: PipeError| {
        for w in waiting.drain(..) {
            let _ = w.answer.send(Err(e.clone()));
        }
        Some(e)
    };
    loop {
        while let Ok(w) = written.try_recv() {
            waiting.push_back(w);
        }
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some((answer, close))) => {
                    let Some(w) = waiting.pop_front() else {
                        return fail(
                            &mut waiting,
                            PipeError::Malformed("an answer to no request"),
                        );
                    };
                    let _ = w.answer.send(Ok(answer));
                    if close {
                        return fail(&mut waiting, PipeError::Closed);
                    }
                }
                Ok(None) => break,
                Err(e) => return fail(&mut waiting, e),
            }
        }
        let Some(front) = waiting.front() else {
            tokio::select! {
                w = written.recv() => match w {
                    Some(w) => waiting.push_back(w),
                    None => return None,
                },
                read = read.read_buf(&mut buf) => match read {
                    // Closed while nothing waits: a target's idle timeout.
                    Ok(0) => return None,
                    // The writer announced the request before writing it: taken in above (an
                    // answer to none fails the connection there).
                    Ok(_) => {}
                    Err(e) => return Some(PipeError::Io(e.to_string())),
                },
                () = ended.cancelled() => return None,
            }
            continue;
        };
        let (deadline, timeout) = (front.deadline, front.timeout);
        tokio::select! {
            read = read.read_buf(&mut buf) => match read {
                Ok(0) => {
                    // An answer that ends with the connection is complete now.
                    return match decoder.end_of_stream() {
                        Some(answer) => {
                            if let Some(w) = waiting.pop_front() {
                                let _ = w.answer.send(Ok(answer));
                            }
                            fail(&mut waiting, PipeError::Closed)
                        }
                        None => fail(&mut waiting, PipeError::Closed),
                    };
                }
                Ok(_) => {}
                Err(e) => return fail(&mut waiting, PipeError::Io(e.to_string())),
            },
            () = tokio::time::sleep_until(deadline) => {
                return fail(&mut waiting, PipeError::TimedOut(timeout));
            }
            () = ended.cancelled() => return fail(&mut waiting, PipeError::Closed),
        }
    }
}

/// A new connection to `address`, made as the other HTTP/1.1 connections are (see `h1`).
async fn connect(connector: HttpConnector, address: &Authority) -> Result<TcpStream, PipeError> {
    use tower_service::Service as _;
    let uri = http::Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(address.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| PipeError::Connect(e.to_string()))?;
    let mut connector = connector;
    let io: TokioIo<TcpStream> = connector
        .call(uri)
        .await
        .map_err(|e| PipeError::Connect(crate::error::innermost(&e)))?;
    Ok(io.into_inner())
}

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
pub(super) struct Decoder {
    /// The answer whose body is being read: its head, its body so far, how its body ends, and
    /// whether the connection closes after it.
    reading: Option<(Answer, BytesMut, Body, bool)>,
}

impl Decoder {
    /// The next complete answer in `buf` (taken out of it), and whether the target closes the
    /// connection after it; `None` until more bytes come.
    pub(super) fn decode(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<(Answer, bool)>, PipeError> {
        loop {
            if self.reading.is_none() {
                match parse_head(buf)? {
                    None => return Ok(None),
                    // An interim answer (100 Continue, 103 Early Hints): the real one follows.
                    Some(Head::Interim) => continue,
                    Some(Head::Final(answer, body, close)) => {
                        self.reading = Some((answer, BytesMut::new(), body, close));
                    }
                }
            }
            let Some((_, body, framing, _)) = &mut self.reading else {
                unreachable!("set above")
            };
            match read_body(buf, body, framing)? {
                false => return Ok(None),
                true => {
                    let (mut answer, body, _, close) = self.reading.take().expect("set above");
                    answer.body = body.freeze();
                    return Ok(Some((answer, close)));
                }
            }
        }
    }

    /// The connection ended: the answer being read is complete if its body runs until then.
    pub(super) fn end_of_stream(&mut self) -> Option<Answer> {
        match self.reading.take() {
            Some((mut answer, body, Body::UntilClose, _)) => {
                answer.body = body.freeze();
                Some(answer)
            }
            _ => None,
        }
    }
}

enum Head {
    Interim,
    Final(Answer, Body, bool),
}

/// The head of the next answer in `buf`, taken out of it; `None` until it is complete.
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, PipeError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err(PipeError::Malformed("the answer's head is too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(PipeError::Malformed("too many headers"));
        }
        Err(_) => return Err(PipeError::Malformed("not an HTTP/1.1 answer")),
    };
    let status = response.code.unwrap_or(0);
    if (100..200).contains(&status) {
        if status == 101 {
            return Err(PipeError::Malformed(
                "101 Switching Protocols, never asked for",
            ));
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
                .ok_or(PipeError::Malformed("an invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(PipeError::Malformed("two different Content-Lengths"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked only if it is the last coding; otherwise the body runs to the close.
            let last = text().and_then(|t| t.rsplit(',').next()).map(str::trim);
            chunked = Some(last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")));
        } else if name.eq_ignore_ascii_case("connection") {
            if let Some(t) = text() {
                if t.split(',').any(|o| o.trim().eq_ignore_ascii_case("close")) {
                    close = true;
                } else if t
                    .split(',')
                    .any(|o| o.trim().eq_ignore_ascii_case("keep-alive"))
                {
                    close = false;
                }
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
            (Some(false), _) => Body::UntilClose,
            (None, Some(n)) => Body::Length(n),
            (None, None) => Body::UntilClose,
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
    };
    Ok(Some(Head::Final(answer, body, close)))
}

/// Moves the body's bytes from `buf` into `body` (up to [`MAX_RESPONSE_BYTES`], the rest is
/// dropped); true once the body is complete.
fn read_body(
    buf: &mut BytesMut,
    body: &mut BytesMut,
    framing: &mut Body,
) -> Result<bool, PipeError> {
    let keep = |body: &mut BytesMut, bytes: &[u8]| {
        let room = MAX_RESPONSE_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&bytes[..bytes.len().min(room)]);
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
            Body::ChunkSize => match httparse::parse_chunk_size(buf) {
                Ok(httparse::Status::Complete((len, 0))) => {
                    buf.advance(len);
                    *framing = Body::Trailers;
                }
                Ok(httparse::Status::Complete((len, size))) => {
                    buf.advance(len);
                    *framing = Body::ChunkData(size);
                }
                Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
                    return Err(PipeError::Malformed("a chunk size line is too long"));
                }
                Ok(httparse::Status::Partial) => return Ok(false),
                Err(_) => return Err(PipeError::Malformed("an invalid chunk size")),
            },
            Body::ChunkEnd => {
                if buf.len() < 2 {
                    return Ok(false);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(PipeError::Malformed("a chunk not ended by CRLF"));
                }
                buf.advance(2);
                *framing = Body::ChunkSize;
            }
            Body::Trailers => {
                let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() > MAX_HEAD_BYTES {
                        return Err(PipeError::Malformed("a trailer line is too long"));
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

    /// Every answer in `stream`, fed to one decoder in pieces cut at `cuts`, with the close flag
    /// of each; then what the end of the stream completes.
    fn decode_all(stream: &[u8], cuts: &[usize]) -> Result<Vec<(Answer, bool)>, PipeError> {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::new();
        let mut answers = Vec::new();
        let mut at = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        ends.sort_unstable();
        ends.push(stream.len());
        for end in ends {
            buf.extend_from_slice(&stream[at..end.max(at)]);
            at = end.max(at);
            while let Some(answer) = decoder.decode(&mut buf)? {
                answers.push(answer);
            }
        }
        if let Some(answer) = decoder.end_of_stream() {
            answers.push((answer, true));
        }
        Ok(answers)
    }

    fn answer(status: u16, content_type: Option<&str>, body: &[u8]) -> Answer {
        Answer {
            status,
            retry_after: None,
            content_type: content_type.map(str::to_owned),
            body: Bytes::copy_from_slice(body),
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
        let close =
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            decode_all(close, &[]).unwrap(),
            vec![(answer(200, None, b""), true)]
        );
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            decode_all(old, &[]).unwrap(),
            vec![(answer(200, None, b""), true)]
        );
        let kept = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            decode_all(kept, &[]).unwrap(),
            vec![(answer(200, None, b""), false)]
        );
    }

    #[test]
    fn a_body_over_the_cap_is_cut_and_the_next_answer_still_read() {
        let big = MAX_RESPONSE_BYTES + 10;
        let mut stream = format!("HTTP/1.1 200 OK\r\nContent-Length: {big}\r\n\r\n").into_bytes();
        stream.resize(stream.len() + big, b'a');
        stream.extend_from_slice(b"HTTP/1.1 202 Accepted\r\nContent-Length: 1\r\n\r\nb");
        let answers = decode_all(&stream, &[1000, 70_000, 900_000]).unwrap();
        assert_eq!(answers.len(), 2);
        assert_eq!(answers[0].0.body.len(), MAX_RESPONSE_BYTES);
        assert_eq!(answers[1], (answer(202, None, b"b"), false));
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
    }

    #[test]
    fn a_request_goes_on_the_wire_with_its_length_and_its_exact_body() {
        let request = Request::post("/wx?signature=abc&nonce=1")
            .header("host", "127.0.0.1:9001")
            .header("x-wechat-fanout-delivery", "42")
            .body(Bytes::from_static(b"<xml>\xe4\xbd\xa0</xml>"))
            .unwrap();
        assert_eq!(
            &serialize(&request)[..],
            &b"POST /wx?signature=abc&nonce=1 HTTP/1.1\r\nhost: 127.0.0.1:9001\r\n\
               x-wechat-fanout-delivery: 42\r\ncontent-length: 14\r\n\r\n<xml>\xe4\xbd\xa0</xml>"[..]
        );
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
