//! The wire to targets: a POST of given bytes to a URL, and its answer. It knows no job and no
//! target: [`crate::attempt`] says what to send ([`Outgoing`]) and makes sense of the answer.
//!
//! Plain `http` URLs get HTTP/1.1 over kept-alive connections of our own, each driven by the
//! request that uses it (`h1`), or with pipelining one pipelined connection per address
//! (`pipeline`). hyper's pooled client serves `https` (HTTP/1.1 keep-alive, TLS by rustls with
//! Mozilla's roots), and a second one requests that must go over HTTP/2 (cleartext with prior
//! knowledge, or ALPN `h2` over TLS; the requests in flight to one address share a connection).
//! Redirects are not followed and no proxy from the environment is used. It is hyper rather than
//! reqwest because this is the hot path: reqwest re-parses every URL with the `url` crate and
//! adds layers the fan-out does not use. [`wechat_api`] is the other way out: WeChat's own API.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use response::{MAX_RESPONSE_BYTES, Response};

mod h1;
pub mod listen;
mod origin;
mod pipeline;
pub mod response;
pub mod signing;
pub mod wechat_api;

pub use origin::Origin;
pub use pipeline::PipeError;

/// An HTTP/2 connection that sent nothing for this long while requests are in flight on it is
/// pinged, and closed if the ping is not answered within the same time. A timed-out request only
/// resets its stream and the connection stays pooled, so without this a connection whose peer
/// vanished without a reset would take (and time out) every attempt to its target for as long
/// as TCP takes to give up (many minutes). An HTTP/1.1 connection is dropped with its request.
const HTTP2_PING_AFTER: Duration = Duration::from_secs(2);

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One POST to send.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// The URL the query is appended to (for a request not in `origin` form).
    pub url: Cow<'a, str>,
    /// Where a plain `http://` URL's requests go, parsed once: then the request goes over
    /// HTTP/1.1 connections of our own, in origin form.
    pub origin: Option<Cow<'a, Origin>>,
    /// The raw query string, appended to the URL (after `&` when it has a query of its own).
    pub query: &'a str,
    /// Every header but `Content-Length` (`Host` too, for a request in origin form).
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Over HTTP/2 only.
    pub http2: bool,
    /// Over one pipelined HTTP/1.1 connection per address (`origin` form only).
    pub pipelining: bool,
    /// The whole exchange, answer's body included, within this.
    pub timeout: Duration,
}

/// The clients, and the connections they keep.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// HTTP/1.1 with keep-alive, for `https` URLs without HTTP/2.
    client: HttpClient,
    /// HTTP/2 only.
    http2: HttpClient,
    /// Plain `http` URLs over HTTP/1.1: connections of our own.
    h1: Arc<h1::Connections>,
    /// Plain `http` URLs with pipelining: one pipelined connection per address.
    pipelines: Arc<pipeline::Pipelines>,
}

/// Why a request got no answer; never names the URL (its query carries signatures).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("the target's URL with the callback's query is not a valid URI: {0}")]
    Uri(#[from] http::Error),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    #[error("{}", describe("connection failed", .0))]
    Connect(hyper_util::client::legacy::Error),
    #[error("{}", describe("request failed", .0))]
    Request(hyper_util::client::legacy::Error),
    /// A target that does not speak HTTP/2 closes the connection at its preface.
    #[error("{}", describe("request failed over HTTP/2", .0))]
    Http2Request(hyper_util::client::legacy::Error),
    #[error("{}", describe("reading the answer failed", .0))]
    Body(hyper::Error),
    #[error("connection failed: {}", crate::error::innermost(&**.0))]
    TcpConnect(Box<dyn std::error::Error + Send + Sync>),
    #[error("request failed: {}", crate::error::innermost(.0))]
    H1Request(hyper::Error),
    #[error(transparent)]
    Pipelined(#[from] pipeline::PipeError),
}

impl Failure {
    /// The request itself is at fault (its URL cannot be built), not the target it goes to.
    pub fn belongs_to_the_request(&self) -> bool {
        matches!(self, Failure::Uri(_))
    }
}

impl Default for Outbound {
    fn default() -> Outbound {
        Outbound::new()
    }
}

impl Outbound {
    pub fn new() -> Outbound {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        // The TLS layer takes `https` URLs; plain ones pass through.
        http.enforce_http(false);
        let tls = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_webpki_roots()
                .https_or_http()
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new());
        let client = builder.build(tls().enable_http1().wrap_connector(http.clone()));
        // ALPN offers `h2` alone; a cleartext connection starts with the HTTP/2 preface.
        let http2 = builder
            .http2_only(true)
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(HTTP2_PING_AFTER)
            .http2_keep_alive_timeout(HTTP2_PING_AFTER)
            .build(tls().enable_http2().wrap_connector(http));
        Outbound {
            client,
            http2,
            h1: Arc::new(h1::Connections::new()),
            pipelines: Arc::new(pipeline::Pipelines::new(h1::connector())),
        }
    }

    /// Sends `outgoing` and reads its answer, within its timeout.
    pub async fn send(&self, outgoing: Outgoing<'_>) -> Result<Response, Failure> {
        let timeout = outgoing.timeout;
        match tokio::time::timeout(timeout, self.exchange(outgoing)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::TimedOut(timeout)),
        }
    }

    /// One request and its answer.
    async fn exchange(&self, outgoing: Outgoing<'_>) -> Result<Response, Failure> {
        let Outgoing {
            url,
            origin,
            query,
            headers,
            body,
            http2,
            pipelining,
            timeout,
        } = outgoing;
        let (head, body, whole) = match origin {
            Some(origin) => {
                let path = origin.target(query)?;
                if pipelining {
                    let wire = pipeline::serialize(path.as_str(), &headers, &body);
                    return Ok(self
                        .pipelines
                        .exchange(&origin.address, wire, timeout)
                        .await?);
                }
                let request = post(Uri::from(path), headers, body);
                self.h1.exchange(&origin.address, request).await?
            }
            // Boxed: the pooled client's future is several KiB, and every attempt's future would
            // carry (and move) it, though plain http targets never use it.
            None => Box::pin(self.pooled(&url, query, headers, body, http2)).await?,
        };
        let header = |name| header_text(&head.headers, name);
        Ok(Response {
            status: head.status.as_u16(),
            retry_after: header(RETRY_AFTER),
            content_type: header(CONTENT_TYPE),
            body,
            whole,
        })
    }
}

impl Outbound {
    /// A request through hyper's pooled client (`https`, or HTTP/2), and its answer.
    async fn pooled(
        &self,
        url: &str,
        query: &str,
        headers: HeaderMap,
        body: Bytes,
        http2: bool,
    ) -> Result<(http::response::Parts, Bytes, bool), Failure> {
        let url = with_query(url, query);
        let uri = Uri::try_from(url).map_err(http::Error::from)?;
        let client = if http2 { &self.http2 } else { &self.client };
        let response = client
            .request(post(uri, headers, body))
            .await
            .map_err(|e| {
                if e.is_connect() {
                    Failure::Connect(e)
                } else if http2 {
                    Failure::Http2Request(e)
                } else {
                    Failure::Request(e)
                }
            })?;
        let (head, mut incoming) = response.into_parts();
        let (body, whole) = read_body(&mut incoming).await.map_err(Failure::Body)?;
        Ok((head, body, whole))
    }
}

/// `base` (a URL, or a path) with the callback's `query` appended: after `&` when `base` has a
/// query of its own.
pub fn with_query(base: &str, query: &str) -> String {
    let mut url = String::with_capacity(base.len() + query.len() + 1);
    url.push_str(base);
    if !query.is_empty() {
        url.push(if base.contains('?') { '&' } else { '?' });
        url.push_str(query);
    }
    url
}

/// A POST of `body` to `uri` with `headers`.
fn post<B>(uri: Uri, headers: HeaderMap, body: B) -> Request<Full<B>>
where
    B: bytes::Buf,
{
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}

/// The answer's body and whether it is whole (see [`Response::whole`]): read to its end, even when
/// it is not needed, so that the connection can be used again; but a body over
/// [`MAX_RESPONSE_BYTES`] is not read further, and comes back empty and not whole (its
/// connection is not used again).
async fn read_body(incoming: &mut Incoming) -> hyper::Result<(Bytes, bool)> {
    let mut body = BytesMut::new();
    while let Some(frame) = incoming.frame().await {
        let Ok(chunk) = frame?.into_data() else {
            continue;
        };
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Ok((Bytes::new(), false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body.freeze(), true))
}

/// A header's value as text, if it is there and is text.
fn header_text(headers: &http::HeaderMap, name: http::header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `kind` and the innermost cause, the most specific of the error's chain (e.g. "connection
/// refused").
fn describe(kind: &str, error: &(dyn std::error::Error + 'static)) -> String {
    match error.source() {
        Some(cause) => format!("{kind}: {}", crate::error::innermost(cause)),
        None => kind.to_owned(),
    }
}
