//! A fake downstream service: a real HTTP/1.1 server (hyper) on a local port, or an HTTP/2-only
//! one ([`Target::start_h2`]), that records every request it gets (method, path and query,
//! headers, body bytes, arrival time, HTTP version) before answering as told. What it answers
//! (status, extra headers, body, its framing, delay) can change mid-test, to play a service that
//! fails, recovers, throttles, is slow, or never answers. Dropping it stops it.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::header::HeaderMap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use wechat_fanout::wechat::{CallbackQuery, Credentials, open_callback, verify_url};

use super::eventually;

/// One request as the target saw it.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) method: String,
    /// The path and the raw query string, byte for byte as sent.
    pub(crate) path_and_query: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) at: Instant,
    /// The HTTP version it came over.
    pub(crate) version: hyper::Version,
    /// For a target playing a stock SDK ([`Target::start_sdk`]): what its check made of the
    /// request: the message (decrypted when encrypted; the echo for a handshake) or why it failed.
    pub(crate) verified: Option<Result<Vec<u8>, String>>,
    /// The status it was answered with, as [`Target::set_status`] said then (an SDK target
    /// answers by its check instead).
    pub(crate) status: u16,
}

impl Received {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `x-wechat-fanout-delivery`: the delivery (job) id.
    pub(crate) fn delivery(&self) -> i64 {
        self.header("x-wechat-fanout-delivery")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric delivery header: {self:?}"))
    }

    /// `x-wechat-fanout-attempt`: counts from 1.
    pub(crate) fn attempt(&self) -> u32 {
        self.header("x-wechat-fanout-attempt")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no numeric attempt header: {self:?}"))
    }
}

/// How the target answers the next requests.
#[derive(Debug, Clone)]
struct Behaviour {
    status: u16,
    delay: Duration,
    content_type: Option<String>,
    body: Bytes,
    /// Send the body without telling its length up front ([`Target::set_chunked`]).
    chunked: bool,
    headers: Vec<(String, String)>,
    /// Verify every request with these credentials, as a stock WeChat SDK does.
    sdk: Option<Credentials>,
    /// Requests whose body holds the first bytes are answered 503 this many more times
    /// ([`Target::fail_times`]).
    failing: Vec<(Vec<u8>, usize)>,
    /// The first request with a body not seen before is answered this status, whatever the
    /// status ([`Target::fail_first_of_each`]).
    first_of_each: Option<u16>,
}

#[derive(Debug)]
struct Shared {
    behaviour: Mutex<Behaviour>,
    received: Mutex<Vec<Received>>,
    /// Speaks HTTP/2 only (cleartext, prior knowledge), instead of HTTP/1.1 only.
    http2: bool,
    /// Connections accepted so far.
    connections: AtomicUsize,
    /// Every body received so far, for [`Behaviour::first_of_each`].
    seen: Mutex<HashSet<Bytes>>,
}

/// A running fake service; see the module docs.
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Target {
    /// A target on a fresh port answering `status` with an empty body.
    pub(crate) async fn start(status: u16) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Target::serve(listener, status, false)
    }

    /// A target on a fresh port that speaks cleartext HTTP/2 only (h2c, prior knowledge): an
    /// HTTP/1.1 request gets no answer from it.
    pub(crate) async fn start_h2(status: u16) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Target::serve(listener, status, true)
    }

    /// A target on `addr`: a port that refused connections until now comes up.
    pub(crate) async fn start_on(addr: SocketAddr, status: u16) -> Target {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr} again: {e}"));
        Target::serve(listener, status, false)
    }

    fn serve(listener: TcpListener, status: u16, http2: bool) -> Target {
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(Behaviour {
                status,
                delay: Duration::ZERO,
                content_type: None,
                body: Bytes::new(),
                chunked: false,
                headers: Vec::new(),
                sdk: None,
                failing: Vec::new(),
                first_of_each: None,
            }),
            received: Mutex::new(Vec::new()),
            http2,
            connections: AtomicUsize::new(0),
            seen: Mutex::new(HashSet::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        Target { addr, shared, stop }
    }

    /// A target that checks every request as a stock WeChat SDK set up with `credentials` does:
    /// the GET handshake is answered with the `echostr` plaintext, a callback with `success`,
    /// both only if the signature (and, encrypted, `msg_signature` and decryption) hold; 403
    /// otherwise. What it made of each request is in [`Received::verified`].
    pub(crate) async fn start_sdk(credentials: Credentials) -> Target {
        let target = Target::start(200).await;
        target.behave(|b| b.sdk = Some(credentials));
        target
    }

    /// [`Target::start_sdk`] speaking cleartext HTTP/2 only.
    pub(crate) async fn start_sdk_h2(credentials: Credentials) -> Target {
        let target = Target::start_h2(200).await;
        target.behave(|b| b.sdk = Some(credentials));
        target
    }

    /// The URL of `path` on this target, for a `[[accounts.targets]]` table.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn behave(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.shared.behaviour.lock().expect("behaviour lock"));
    }

    /// Answers the next `times` requests whose body holds `needle` 503, whatever the status.
    pub(crate) fn fail_times(&self, needle: &str, times: usize) {
        self.behave(|b| b.failing.push((needle.as_bytes().to_vec(), times)));
    }

    /// Answers `status` to the first request with each body (the first attempt of each
    /// callback), and as told to any request with a body it got before (its retries).
    pub(crate) fn fail_first_of_each(&self, status: u16) {
        self.behave(|b| b.first_of_each = Some(status));
    }

    pub(crate) fn set_status(&self, status: u16) {
        self.behave(|b| b.status = status);
    }

    /// Answers only after `delay` (a request still counts as received at once).
    pub(crate) fn set_delay(&self, delay: Duration) {
        self.behave(|b| b.delay = delay);
    }

    /// Never answers within any test's lifetime.
    pub(crate) fn hang(&self) {
        self.set_delay(Duration::from_secs(3600));
    }

    /// Answers with this Content-Type and body.
    pub(crate) fn set_reply(&self, content_type: &str, body: &str) {
        let body = Bytes::copy_from_slice(body.as_bytes());
        self.behave(|b| {
            b.content_type = Some(content_type.to_owned());
            b.body = body;
        });
    }

    /// Sends the body in pieces without telling its length up front: chunked over HTTP/1.1, DATA
    /// frames without `content-length` over HTTP/2.
    pub(crate) fn set_chunked(&self) {
        self.behave(|b| b.chunked = true);
    }

    /// Adds a header to every answer (`Retry-After`, …).
    pub(crate) fn set_header(&self, name: &str, value: &str) {
        self.behave(|b| b.headers.push((name.to_owned(), value.to_owned())));
    }

    /// Every request received so far, in arrival order.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("received lock").clone()
    }

    /// How many connections it accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    pub(crate) fn count(&self) -> usize {
        self.shared.received.lock().expect("received lock").len()
    }

    /// Waits (bounded) until at least `n` requests arrived; returns all of them.
    pub(crate) async fn wait_for(&self, n: usize) -> Vec<Received> {
        eventually(
            &format!("{n} request(s) at the target {}", self.addr),
            || {
                let received = self.received();
                (received.len() >= n).then_some(received)
            },
        )
        .await
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            () = stop.cancelled() => return,
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let (shared, stop) = (shared.clone(), stop.clone());
        tokio::spawn(async move {
            let handler_stop = stop.clone();
            let http2 = shared.http2;
            let service = service_fn(move |request| {
                let (shared, stop) = (shared.clone(), handler_stop.clone());
                async move { Ok::<_, Infallible>(answer(&shared, &stop, request).await) }
            });
            let io = TokioIo::new(stream);
            if http2 {
                let connection =
                    http2::Builder::new(TokioExecutor::new()).serve_connection(io, service);
                tokio::select! {
                    _ = connection => {}
                    () = stop.cancelled() => {}
                }
            } else {
                let connection = http1::Builder::new().serve_connection(io, service);
                tokio::select! {
                    _ = connection => {}
                    () = stop.cancelled() => {}
                }
            }
        });
    }
}

async fn answer(
    shared: &Shared,
    stop: &CancellationToken,
    request: Request<Incoming>,
) -> Response<Reply> {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (behaviour, failed) = {
        let mut behaviour = shared.behaviour.lock().expect("behaviour lock");
        let failing = behaviour.failing.iter_mut().find(|(needle, left)| {
            *left > 0 && body.windows(needle.len()).any(|w| w == &needle[..])
        });
        let failed = failing.map(|(_, left)| *left -= 1).is_some();
        let mut behaviour = behaviour.clone();
        if let Some(status) = behaviour.first_of_each {
            let new = (shared.seen.lock().expect("seen lock")).insert(body.clone());
            if new && !failed {
                behaviour.status = status;
            }
        }
        (behaviour, failed)
    };
    let is_get = parts.method == hyper::Method::GET;
    // A stock SDK's check, recorded with the request it belongs to.
    let verified = behaviour.sdk.as_ref().map(|credentials| {
        let query = parts.uri.query().unwrap_or("");
        CallbackQuery::parse(query)
            .map_err(|e| e.to_string())
            .and_then(|query| {
                if is_get {
                    verify_url(credentials, &query).map_err(|e| e.to_string())
                } else {
                    open_callback(credentials, &query, &body)
                        .map(|opened| opened.message(&body).to_vec())
                        .map_err(|e| e.to_string())
                }
            })
    });
    shared
        .received
        .lock()
        .expect("received lock")
        .push(Received {
            method: parts.method.to_string(),
            path_and_query: parts
                .uri
                .path_and_query()
                .map(ToString::to_string)
                .unwrap_or_default(),
            headers: parts.headers,
            body,
            at,
            version: parts.version,
            verified: verified.clone(),
            status: behaviour.status,
        });
    if let Some(verified) = verified {
        let (status, answer) = match verified {
            Ok(echo) if is_get => (200, echo),
            Ok(_) => (200, b"success".to_vec()),
            Err(e) => (403, e.into_bytes()),
        };
        let mut response = Response::new(Reply::whole(Bytes::from(answer)));
        *response.status_mut() = hyper::StatusCode::from_u16(status).expect("a valid status");
        return response;
    }
    if failed {
        let mut response = Response::new(Reply::whole(Bytes::new()));
        *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        return response;
    }
    if !behaviour.delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(behaviour.delay) => {}
            () = stop.cancelled() => {}
        }
    }
    let body = if behaviour.chunked {
        Reply::in_pieces(behaviour.body)
    } else {
        Reply::whole(behaviour.body)
    };
    let mut response = Response::new(body);
    *response.status_mut() = hyper::StatusCode::from_u16(behaviour.status).expect("a valid status");
    let headers = response.headers_mut();
    if let Some(content_type) = behaviour.content_type {
        headers.insert(
            hyper::header::CONTENT_TYPE,
            content_type.parse().expect("a valid content type"),
        );
    }
    for (name, value) in behaviour.headers {
        headers.append(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            value.parse().expect("a header value"),
        );
    }
    response
}

/// An answer's body: whole, with its length, or in pieces whose total is not told up front.
#[derive(Debug)]
pub(crate) struct Reply {
    pieces: VecDeque<Bytes>,
    chunked: bool,
}

impl Reply {
    fn whole(body: Bytes) -> Reply {
        Reply {
            pieces: VecDeque::from([body]),
            chunked: false,
        }
    }

    /// In pieces of 64 KiB.
    fn in_pieces(body: Bytes) -> Reply {
        const PIECE: usize = 64 * 1024;
        let pieces = (0..body.len())
            .step_by(PIECE)
            .map(|at| body.slice(at..body.len().min(at + PIECE)))
            .collect();
        Reply {
            pieces,
            chunked: true,
        }
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.pieces.pop_front().map(|piece| Ok(Frame::data(piece))))
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Exact unless chunked: a server then writes `content-length`.
    fn size_hint(&self) -> SizeHint {
        if self.chunked {
            return SizeHint::default();
        }
        SizeHint::with_exact(self.pieces.iter().map(|p| p.len() as u64).sum())
    }
}
