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

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;
use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::h1::dial;
use super::response::{Decoder, Malformed, Response};

/// A connection that had nothing to send for this long is closed.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// Connections a request is handed to at most when each ends before writing it.
const SEND_TRIES: u32 = 3;

/// Why a pipelined request got no answer. Every request waiting on a connection that fails gets
/// the same one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PipeError {
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("timed out after {0:?} (the connection is closed with every request on it)")]
    TimedOut(Duration),
    #[error("the target closed the connection before it answered")]
    Closed,
    #[error("request failed: {0}")]
    Io(String),
    #[error("the target's answer is not valid HTTP/1.1: {0}")]
    Malformed(#[from] Malformed),
    /// The connection ended before the request was written: it goes on another one.
    #[error("the connection ended before the request was sent")]
    NotSent,
}

/// A request on its way: its bytes, how long its answer may take, and where the answer goes.
struct Queued {
    request: Bytes,
    timeout: Duration,
    answer: oneshot::Sender<Result<Response, PipeError>>,
}

/// A request written, waiting for its answer.
struct Waiting {
    deadline: Instant,
    timeout: Duration,
    answer: oneshot::Sender<Result<Response, PipeError>>,
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

    /// Sends `request` (as [`serialize`] wrote it) to `address` on its pipelined connection
    /// (opened if there is none) and waits for its answer. The caller bounds the wait; `timeout`
    /// is how long the connection waits for this answer before it gives up on all of them.
    pub(super) async fn exchange(
        &self,
        address: &Authority,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Response, PipeError> {
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

/// A POST as it goes on the wire: request line (`target` in origin form), headers,
/// `Content-Length`, body.
pub(super) fn serialize(target: &str, headers: &HeaderMap, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(256 + body.len());
    out.put_slice(b"POST ");
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
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
    let connected = match tokio::time::timeout(connect_within, dial(&connector, &address)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(PipeError::Connect(crate::error::innermost(&*e))),
        Err(_) => Err(PipeError::Connect(format!(
            "timed out after {connect_within:?}"
        ))),
    };
    let stream = match connected {
        Ok(stream) => stream,
        Err(e) => return refuse_queued(&mut queue, &e),
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
            let batch = std::iter::once(first).chain(std::iter::from_fn(|| queue.try_recv().ok()));
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
        refuse_queued(&mut queue, &PipeError::NotSent);
        drop(written);
    };
    let reader = async {
        let failure = read_answers(&mut read, &mut waiting, &ended).await;
        ended.cancel();
        waiting.close();
        let failure = failure.unwrap_or(PipeError::Closed);
        while let Ok(w) = waiting.try_recv() {
            let _ = w.answer.send(Err(failure.clone()));
        }
    };
    tokio::join!(writer, reader);
}

/// Closes `queue` and answers what is still in it with `error`.
fn refuse_queued(queue: &mut mpsc::UnboundedReceiver<Queued>, error: &PipeError) {
    queue.close();
    while let Ok(queued) = queue.try_recv() {
        let _ = queued.answer.send(Err(error.clone()));
    }
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
                            PipeError::Malformed(Malformed("an answer to no request")),
                        );
                    };
                    let _ = w.answer.send(Ok(answer));
                    if close {
                        return fail(&mut waiting, PipeError::Closed);
                    }
                }
                Ok(None) => break,
                Err(e) => return fail(&mut waiting, e.into()),
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
                    if let Some(answer) = decoder.end_of_stream()
                        && let Some(w) = waiting.pop_front()
                    {
                        let _ = w.answer.send(Ok(answer));
                    }
                    return fail(&mut waiting, PipeError::Closed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_request_goes_on_the_wire_with_its_length_and_its_exact_body() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:9001"));
        headers.insert("x-wechat-fanout-delivery", HeaderValue::from(42));
        assert_eq!(
            &serialize(
                "/wx?signature=abc&nonce=1",
                &headers,
                b"<xml>\xe4\xbd\xa0</xml>"
            )[..],
            &b"POST /wx?signature=abc&nonce=1 HTTP/1.1\r\nhost: 127.0.0.1:9001\r\n\
               x-wechat-fanout-delivery: 42\r\ncontent-length: 14\r\n\r\n<xml>\xe4\xbd\xa0</xml>"[..]
        );
    }
}
