//! The outbound request: the callback exactly as WeChat sent it, to one target.
//!
//! Same body bytes, same raw query string (so the target's WeChat SDK verifies `signature` /
//! `msg_signature` itself), same Content-Type, plus headers that name the delivery, the attempt
//! and the account, so a target can drop the duplicates that at-least-once delivery implies.
//! Plain `http` targets get HTTP/1.1 over kept-alive connections of our own, each driven by
//! the attempt that uses it (`h1`), or with `pipelining = true` one pipelined connection per
//! address (`pipeline`). hyper's pooled client serves `https` targets (HTTP/1.1
//! keep-alive, TLS by rustls with Mozilla's roots), and a second one the targets with
//! `http2 = true` (HTTP/2 only: cleartext with prior knowledge, or ALPN `h2` over TLS; the
//! requests in flight to one target share a connection). Redirects are not followed and no
//! proxy from the environment is used. It is hyper rather than reqwest because this is the hot
//! path: reqwest re-parses every URL with the `url` crate and adds layers the fan-out does not
//! use. Used by the primary relay in `ingress` and by `delivery`, so neither imports the other.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{
    CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER, USER_AGENT,
};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use std::sync::Arc;

use crate::events::{AttemptEvent, Event, EventFeed};
use crate::metrics::Metrics;
use crate::outbound::wechat_api::{ApiError, WechatApi};
use crate::routing::Target;
use crate::routing::retry::{self, Verdict};
use crate::store::{AttemptReport, Disposition, Job, JobId, Recorded, Store, StoreError};
use crate::telemetry::event_at;
use crate::wechat::authorizer::AUTHORIZER_HEADER;
use crate::wechat::resign::{self, ResignError};
use answer::Answer;

pub mod answer;
mod h1;
mod pipeline;
pub mod wechat_api;

pub use h1::Origin;

/// Names the delivery (the job id): the same for every attempt of one delivery.
pub const DELIVERY_HEADER: &str = "x-wechat-fanout-delivery";
/// Counts attempts from 1.
pub const ATTEMPT_HEADER: &str = "x-wechat-fanout-attempt";
/// The account id the callback came in for.
pub const ACCOUNT_HEADER: &str = "x-wechat-fanout-account";
const DELIVERY: HeaderName = HeaderName::from_static(DELIVERY_HEADER);
const ATTEMPT: HeaderName = HeaderName::from_static(ATTEMPT_HEADER);
const ACCOUNT: HeaderName = HeaderName::from_static(ACCOUNT_HEADER);
const AUTHORIZER: HeaderName = HeaderName::from_static(AUTHORIZER_HEADER);

/// A target's answer body is read up to this size (a passive reply is a few KiB at most); a
/// longer one is no reply ([`Withheld::TooLarge`], whose message, like the README, says 1 MiB).
const MAX_RESPONSE_BYTES: usize = 1 << 20;
/// How long after a failed record of an outcome it is tried again, doubling up to the maximum.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(100);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);
/// An HTTP/2 connection that sent nothing for this long while requests are in flight on it is
/// pinged, and closed if the ping is not answered within the same time. A timed-out request only
/// resets its stream and the connection stays pooled, so without this a connection whose peer
/// vanished without a reset would take (and time out) every attempt to its target for as long
/// as TCP takes to give up (many minutes). An HTTP/1.1 connection is dropped with its request.
const HTTP2_PING_AFTER: Duration = Duration::from_secs(2);
const USER_AGENT_VALUE: &str = concat!("wechat-fanout/", env!("CARGO_PKG_VERSION"));

/// The outcome of one attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub verdict: Verdict,
    pub status: Option<u16>,
    /// Set when the target answered 2xx with a body that can be relayed: its body and content
    /// type (for the primary relay).
    pub reply: Option<(Option<String>, Bytes)>,
    /// Set when the target answered 2xx (delivered) but its answer cannot be relayed: why.
    pub withheld: Option<Withheld>,
    pub error: Option<String>,
    pub elapsed: Duration,
    /// The failure belongs to this request, not to the target (its URL could not be built; the
    /// target refused it as too large): the target's circuit breaker does not count it.
    pub request_fault: bool,
}

/// Why a target's 2xx answer is no reply: WeChat gets `success` instead of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Withheld {
    /// Its body was over [`MAX_RESPONSE_BYTES`], so it was not read to its end: relaying the
    /// part that was read would show the user a cut reply.
    #[error("the answer exceeded the 1 MiB cap on a target's answer")]
    TooLarge,
}

impl Withheld {
    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            Withheld::TooLarge => "too_large",
        }
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug, Clone)]
pub struct Downstream {
    /// HTTP/1.1 with keep-alive, for `https` targets without `http2 = true`.
    client: HttpClient,
    /// HTTP/2 only, for the targets with `http2 = true`.
    http2: HttpClient,
    /// Plain `http` targets over HTTP/1.1: connections of our own.
    h1: Arc<h1::Connections>,
    /// Plain `http` targets with `pipelining = true`: one pipelined connection per address.
    pipelines: Arc<pipeline::Pipelines>,
    metrics: Arc<Metrics>,
    /// Every attempt's outcome, for the live console.
    events: Arc<dyn EventFeed>,
    /// The process's WeChat API client and token cache, for late replies' customer-service
    /// messages (a target with `api`).
    api: Arc<WechatApi>,
}

/// Why an attempt got no answer; never names the URL (its query carries signatures).
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("the target's URL with the callback's query is not a valid URI: {0}")]
    Uri(#[from] http::Error),
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    #[error(transparent)]
    Resign(#[from] ResignError),
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

impl Downstream {
    pub fn new(
        metrics: Arc<Metrics>,
        events: Arc<dyn EventFeed>,
        api: Arc<WechatApi>,
    ) -> Downstream {
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
        Downstream {
            client,
            http2,
            h1: Arc::new(h1::Connections::new()),
            pipelines: Arc::new(pipeline::Pipelines::new(h1::connector())),
            metrics,
            events,
            api,
        }
    }

    /// Sends `job` to `target` once, within the target's timeout.
    pub async fn attempt(&self, target: &Target, job: &Job) -> Attempt {
        let started = std::time::Instant::now();
        let timeout = target.settings.timeout;
        if let Some(api) = &target.api {
            // A late reply: the stored body is the customer-service API's JSON.
            let sent = tokio::time::timeout(timeout, self.api.send_custom(api, &job.request.body));
            let result = sent.await.unwrap_or_else(|_| {
                Err(ApiError::Unreachable(format!(
                    "timed out after {timeout:?}"
                )))
            });
            let verdict = match &result {
                Ok(()) => Verdict::Delivered,
                Err(e) if e.is_passing() => Verdict::Retry { after: None },
                Err(_) => Verdict::GiveUp,
            };
            return Attempt {
                verdict,
                status: api_status(&result),
                reply: None,
                withheld: None,
                error: result.err().map(|e| e.to_string()),
                elapsed: started.elapsed(),
                request_fault: false,
            };
        }
        let result = match tokio::time::timeout(timeout, self.exchange(target, job)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::TimedOut(timeout)),
        };
        let elapsed = started.elapsed();
        match result {
            Ok(Answer {
                status,
                retry_after,
                content_type,
                body,
                whole,
            }) => {
                let verdict =
                    retry::classify_status(status, retry_after.as_deref(), SystemTime::now());
                let delivered = verdict == Verdict::Delivered;
                // Still delivered: the target took the callback. Only its answer is no reply.
                let withheld = (delivered && !whole).then_some(Withheld::TooLarge);
                // A reply sealed with the target's own key is sealed again with the account's.
                let reply = match &target.resign {
                    _ if withheld.is_some() => None,
                    Some(resign) if delivered => resign.reply(&body).map(|b| (content_type, b)),
                    _ => delivered.then_some((content_type, body)),
                };
                Attempt {
                    verdict,
                    status: Some(status),
                    reply,
                    withheld,
                    error: (!delivered).then(|| format!("target answered {status}")),
                    elapsed,
                    request_fault: retry::refuses_the_request(status),
                }
            }
            Err(e) => {
                // A request that cannot be built fails the same way on every attempt, at any
                // target: give up at once, and do not hold it against the target.
                let request_fault = matches!(e, Failure::Uri(_) | Failure::Resign(_));
                Attempt {
                    verdict: if request_fault {
                        Verdict::GiveUp
                    } else {
                        Verdict::Retry { after: None }
                    },
                    status: None,
                    reply: None,
                    withheld: None,
                    error: Some(e.to_string()),
                    elapsed,
                    request_fault,
                }
            }
        }
    }

    /// One request and its answer.
    async fn exchange(&self, target: &Target, job: &Job) -> Result<Answer, Failure> {
        let request = &job.request;
        // Open platform: the authorized account the callback concerns.
        let (authorizer, wechat_query) = (request.authorizer.as_deref(), request.query.as_str());
        // A target with its own credentials gets a copy re-signed for this attempt.
        let resigned = match &target.resign {
            Some(resign) => Some(resign::for_attempt(resign, wechat_query, &request.body)?),
            None => None,
        };
        let (query, body) = match &resigned {
            Some((query, body)) => (query.as_str(), body.clone()),
            None => (wechat_query, request.body.clone()),
        };
        let http2 = target.settings.http2;
        // Plain HTTP/1.1 goes over connections of our own (see `h1` and `pipeline`): the request
        // target is the path and query alone, with the address in `Host`, as any client sends it.
        let origin = target.origin_for(authorizer).filter(|_| !http2);
        let host = origin.as_ref().and_then(|o| o.host.clone());
        let headers = delivery_headers(host, job, authorizer, request.content_type.as_deref())?;
        let (head, body, whole) = match origin {
            Some(origin) => {
                let path = origin.target(query)?;
                if target.settings.pipelining {
                    let wire = pipeline::serialize(path.as_str(), &headers, &body);
                    let timeout = target.settings.timeout;
                    return Ok(self
                        .pipelines
                        .exchange(&origin.address, wire, timeout)
                        .await?);
                }
                let request = post(Uri::from(path), headers, body);
                self.h1.exchange(&origin.address, request).await?
            }
            None => {
                let url = with_query(&target.url_for(authorizer), query);
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
                (head, body, whole)
            }
        };
        let header = |name| header_text(&head.headers, name);
        Ok(Answer {
            status: head.status.as_u16(),
            retry_after: header(RETRY_AFTER),
            content_type: header(CONTENT_TYPE),
            body,
            whole,
        })
    }

    /// Ends an attempt the same way for the primary relay and the workers: decides what becomes
    /// of the job, logs one line, counts it, and records it in the store.
    pub async fn finish(
        &self,
        store: &dyn Store,
        target: &Target,
        job: &Job,
        attempt: &Attempt,
    ) -> Disposition {
        let now = now_ms();
        let report = attempt.report(target, job, now);
        let disposition = report.disposition;
        // A failure of this one request says nothing about the target: its breaker never sees it.
        let tripped = if attempt.request_fault {
            None
        } else {
            target
                .breaker
                .record(attempt.verdict, now, &target.settings)
        };
        if let Some(cool_down) = tripped {
            tracing::warn!(
                account = &*target.key.account,
                target = &*target.key.target,
                cool_down_ms = cool_down.as_millis() as u64,
                "target failed {} attempts in a row: pausing its deliveries",
                crate::routing::retry::TRIP_AFTER
            );
        }
        // The metric's label, and the console's word for it.
        let (result, outcome) = match disposition {
            Disposition::Delivered => ("delivered", "delivered"),
            Disposition::RetryIn(_) => ("retry", "retrying"),
            Disposition::Dead => ("dead", "dead"),
        };
        let elapsed = attempt.elapsed;
        let (account, name) = (&*target.key.account, &*target.key.target);
        let elapsed_ms = elapsed.as_millis() as u64;
        // A failed attempt is worth a warning; the error field is absent on success.
        let level = match disposition {
            Disposition::Delivered => tracing::Level::INFO,
            _ => tracing::Level::WARN,
        };
        event_at!(
            level,
            account,
            target = name,
            callback = job.callback,
            delivery = job.id,
            attempt = report.attempt,
            status = attempt.status,
            error = attempt.error.as_deref(),
            elapsed_ms,
            outcome = result,
            "delivery"
        );
        self.metrics
            .attempt(account, name, result, elapsed.as_secs_f64());
        // Published once recorded: a console that shows `dead` finds the dead letter.
        let event = Event::Attempt(AttemptEvent {
            at_ms: now,
            account: account.to_owned(),
            target: name.to_owned(),
            callback: job.callback,
            job: job.id,
            attempt: report.attempt,
            outcome: outcome.to_owned(),
            status: attempt.status,
            error: attempt.error.clone(),
            // For people: this machine's clock, near enough to the store's.
            next_at_ms: match disposition {
                Disposition::RetryIn(delay) => {
                    Some(now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX)))
                }
                _ => None,
            },
            elapsed_ms,
        });
        record_until_stored(store, job.id, report).await;
        self.events.publish(event);
        disposition
    }
}

/// Records an attempt's outcome, trying again with backoff until the store takes it: until then
/// the job stays in flight, and only a restart would send it again (a full disk refuses every
/// write for a while). Recording the same outcome twice changes nothing. Gives up only when the
/// store is closed; shutdown abandons it after the grace period; the next start resends the job.
async fn record_until_stored(store: &dyn Store, delivery: JobId, report: AttemptReport) {
    let mut delay = RECORD_RETRY_FIRST;
    let mut tries = 1u32;
    loop {
        match store.record(report.clone()).await {
            Ok(Recorded::Applied) => {
                if tries > 1 {
                    tracing::info!(delivery, tries, "attempt recorded once the store took it");
                }
                return;
            }
            Ok(Recorded::LeaseLost) => {
                tracing::warn!(
                    delivery,
                    "the job's lease expired during the attempt and another attempt owns it now; \
                     this outcome was not recorded"
                );
                return;
            }
            Err(StoreError::Closed) => {
                tracing::error!(
                    delivery,
                    "could not record an attempt: the store is closed; it will be sent again after a restart"
                );
                return;
            }
            Err(e) => {
                if tries == 1 {
                    tracing::error!(delivery, error = %e, "could not record an attempt; trying again until the store takes it");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RECORD_RETRY_MAX);
                tries = tries.saturating_add(1);
            }
        }
    }
}

impl Attempt {
    /// What the store should record for this attempt of `job`.
    pub fn report(&self, target: &Target, job: &Job, now_ms: i64) -> AttemptReport {
        AttemptReport {
            key: job.key.clone(),
            job: job.id,
            lease: job.lease,
            attempt: job.attempts + 1,
            at_ms: now_ms,
            status: self.status,
            error: self.error.clone(),
            disposition: retry::disposition(
                &target.settings,
                job.attempt_in_round(),
                self.verdict,
                rand::random(),
            ),
        }
    }
}

/// The headers of a delivery but `Content-Length`, in the order they are sent; `host` for a
/// request in origin form.
fn delivery_headers(
    host: Option<HeaderValue>,
    job: &Job,
    authorizer: Option<&str>,
    content_type: Option<&str>,
) -> Result<HeaderMap, http::Error> {
    let mut headers = HeaderMap::with_capacity(8);
    if let Some(host) = host {
        headers.insert(HOST, host);
    }
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    headers.insert(DELIVERY, HeaderValue::from(job.id));
    headers.insert(ATTEMPT, HeaderValue::from(job.attempts + 1));
    headers.insert(ACCOUNT, HeaderValue::from_str(&job.key.account)?);
    if let Some(appid) = authorizer {
        headers.insert(AUTHORIZER, HeaderValue::from_str(appid)?);
    }
    // WeChat's own header, kept when a header can carry it.
    if let Some(content_type) = content_type.and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert(CONTENT_TYPE, content_type);
    }
    Ok(headers)
}

/// `base` (a URL, or a path) with the callback's `query` appended: after `&` when `base` has a
/// query of its own.
fn with_query(base: &str, query: &str) -> String {
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

/// The answer's body and whether it is whole (see [`Answer::whole`]): read to its end, even when
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

/// Milliseconds since the Unix epoch: the store's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The HTTP status a late reply's attempt reports: the customer-service API's (200 when it
/// answered with a WeChat error code), none when it was not reached.
fn api_status(result: &Result<(), ApiError>) -> Option<u16> {
    match result {
        Err(ApiError::Status(status)) => Some(*status),
        Err(ApiError::Unreachable(_)) => None,
        Ok(()) | Err(ApiError::WeChat { .. } | ApiError::Malformed(_)) => Some(200),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_reply_reports_the_status_the_api_answered_and_none_when_unreached() {
        assert_eq!(api_status(&Ok(())), Some(200));
        assert_eq!(api_status(&Err(ApiError::Status(503))), Some(503));
        let refused = ApiError::WeChat {
            code: 45015,
            message: "response out of time limit".into(),
        };
        assert_eq!(api_status(&Err(refused)), Some(200));
        let unreachable = ApiError::Unreachable("timed out after 5s".into());
        assert_eq!(api_status(&Err(unreachable)), None);
    }
}
