//! One delivery attempt and its record: the stored job sent to its target once (through
//! [`crate::outbound`], or the customer-service API for a late reply), the answer classified,
//! and the outcome logged, counted, published and recorded in the store. The primary relay in
//! `ingress` and the workers in `delivery` both attempt through here, so neither imports the
//! other; [`Shared`] is what both (and the admin listener) are handed, built once by `app`.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{CONTENT_TYPE, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT};

use crate::clock::{self, now_ms};
use crate::events::{AttemptEvent, Event, EventFeed};
use crate::metrics::Metrics;
use crate::outbound::listen::{DeliveryFrame, Hub, ListenError};
use crate::outbound::signing::{WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};
use crate::outbound::wechat_api::{ApiError, WechatApi};
use crate::outbound::{Failure, Outbound, Outgoing, Response};
use crate::routing::retry::{self, Verdict};
use crate::routing::{Routes, Target};
use crate::shutdown::InFlight;
use crate::store::leases::Leases;
use crate::store::{Answer, AttemptReport, Disposition, Job, JobId, Recorded, Store, StoreError};
use crate::telemetry::event_at;
use crate::telemetry::traces::{Traced, Traces};
use crate::wechat::AUTHORIZER_HEADER;
use crate::wechat::Fresh;
use crate::wechat::ResignError;

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
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const USER_AGENT_VALUE: &str = concat!("wechat-fanout/", env!("CARGO_PKG_VERSION"));
/// How long after a failed record of an outcome it is tried again, doubling up to the maximum.
const RECORD_RETRY_FIRST: Duration = Duration::from_millis(100);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(5);

/// What ingress, the delivery workers and the admin listener share: built once in `app`.
#[derive(Clone)]
pub struct Shared {
    /// The routing table; replaced as a whole on reload.
    pub routes: Arc<ArcSwap<Routes>>,
    pub store: Arc<dyn Store>,
    pub attempts: Attempts,
    /// Connections, attempts that outlive their request, answers being saved: drained at
    /// shutdown within the grace period.
    pub in_flight: InFlight,
    /// Jobs held in flight by this process, their leases kept alive until their attempt ends.
    pub leases: Leases,
    pub metrics: Arc<Metrics>,
    /// What the live console shows.
    pub events: Arc<dyn EventFeed>,
    /// Spans of callbacks and attempts (off unless `traces.otlp_endpoint`).
    pub traces: Traces,
    /// The `listen` targets' connections open on this process.
    pub listeners: Arc<Hub>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// The outcome of one attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub verdict: Verdict,
    pub status: Option<u16>,
    /// Set when the target answered 2xx with a body that can be relayed: the answer WeChat
    /// would get (for the reply owner's relay).
    pub reply: Option<Answer>,
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
    /// Its body was over [`crate::outbound::MAX_RESPONSE_BYTES`], so it was not read to its end: relaying the
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

/// Why an attempt's request was not answered.
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    #[error(transparent)]
    Resign(#[from] ResignError),
    #[error(transparent)]
    Outbound(#[from] Failure),
    #[error(transparent)]
    Listen(ListenError),
}

impl Unanswered {
    /// The failure belongs to this request, not to its target: it fails the same way on every
    /// attempt, at any target.
    fn belongs_to_the_request(&self) -> bool {
        match self {
            Unanswered::Resign(_) => true,
            Unanswered::Outbound(failure) => failure.belongs_to_the_request(),
            Unanswered::Listen(_) => false,
        }
    }
}

/// Sends jobs to their targets and records what came of them.
#[derive(Debug, Clone)]
pub struct Attempts {
    outbound: Outbound,
    metrics: Arc<Metrics>,
    /// Every attempt's outcome, for the live console.
    events: Arc<dyn EventFeed>,
    /// The process's WeChat API client and token cache, for late replies' customer-service
    /// messages (a target with `api`).
    api: Arc<WechatApi>,
    /// Each attempt's span, under its callback's trace.
    traces: Traces,
    /// Where a `listen` target's deliveries go: the WebSockets its clients opened.
    listeners: Arc<Hub>,
}

impl Attempts {
    pub fn new(
        outbound: Outbound,
        metrics: Arc<Metrics>,
        events: Arc<dyn EventFeed>,
        api: Arc<WechatApi>,
        traces: Traces,
        listeners: Arc<Hub>,
    ) -> Attempts {
        Attempts {
            outbound,
            metrics,
            events,
            api,
            traces,
            listeners,
        }
    }

    /// Sends `job` to `target` once, within the target's timeout; with traces on, in a span of
    /// the callback's trace.
    pub async fn attempt(&self, target: &Target, job: &Job) -> Attempt {
        let key = &job.key;
        let traced = self.traces.attempt(
            job.request.trace.as_deref(),
            &key.account,
            &key.target,
            job.attempts + 1,
        );
        let attempt = self.send(target, job, &traced).await;
        if let Some(status) = attempt.status {
            traced.set("http.response.status_code", i64::from(status));
        }
        traced.set(
            "wechat_fanout.result",
            match attempt.verdict {
                Verdict::Delivered => "delivered",
                Verdict::Retry { .. } => "retry",
                Verdict::GiveUp => "given_up",
            },
        );
        if let Some(error) = &attempt.error {
            traced.fail(error.clone());
        }
        attempt
    }

    /// [`Attempts::attempt`] within `traced`.
    async fn send(&self, target: &Target, job: &Job, traced: &Traced) -> Attempt {
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
        let traceparent = traced.traceparent().filter(|_| target.settings.traceparent);
        let result = self.exchange(target, job, traceparent).await;
        let elapsed = started.elapsed();
        match result {
            Ok(Response {
                status,
                retry_after,
                content_type,
                body,
                whole,
            }) => {
                let verdict = retry::classify_status(status, retry_after.as_deref(), clock::now());
                let delivered = verdict == Verdict::Delivered;
                // Still delivered: the target took the callback. Only its answer is no reply.
                let withheld = (delivered && !whole).then_some(Withheld::TooLarge);
                // A reply sealed with the target's own key is sealed again with the account's.
                let reply = match &target.resign {
                    _ if withheld.is_some() => None,
                    Some(resign) if delivered => resign
                        .reply(&body, rand::random())
                        .map(|body| Answer { content_type, body }),
                    _ => delivered.then_some(Answer { content_type, body }),
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
                let request_fault = e.belongs_to_the_request();
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

    /// One request and its answer: the stored job as WeChat sent it (or re-signed, for a
    /// target with its own credentials), with the delivery's headers.
    async fn exchange(
        &self,
        target: &Target,
        job: &Job,
        traceparent: Option<String>,
    ) -> Result<Response, Unanswered> {
        let request = &job.request;
        // Open platform: the authorized account the callback concerns.
        let (authorizer, wechat_query) = (request.authorizer.as_deref(), request.query.as_str());
        // A target with its own credentials gets a copy re-signed for this attempt.
        let resigned = match &target.resign {
            Some(resign) => Some(resign.request(wechat_query, &request.body, &fresh())?),
            None => None,
        };
        let (query, body) = match &resigned {
            Some((query, body)) => (query.as_str(), body.clone()),
            None => (wechat_query, request.body.clone()),
        };
        let settings = &target.settings;
        if target.listen.is_some() {
            let mut headers =
                delivery_headers(None, job, authorizer, request.content_type.as_deref())
                    .map_err(Failure::from)?;
            sign(&mut headers, target, job, &body);
            return self.over_listen(target, job, query, headers, &body).await;
        }
        // Plain HTTP/1.1 goes over connections of our own: the request target is the path and
        // query alone, with the address in `Host`, as any client sends it.
        let origin = target.origin_for(authorizer).filter(|_| !settings.http2);
        let host = origin.as_ref().and_then(|o| o.host());
        let mut headers = delivery_headers(host, job, authorizer, request.content_type.as_deref())
            .map_err(Failure::from)?;
        sign(&mut headers, target, job, &body);
        // The attempt's span, for a target that joins the trace (`traceparent = true`).
        if let Some(value) = traceparent.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(TRACEPARENT, value);
        }
        let outgoing = Outgoing {
            url: target.url_for(authorizer),
            origin,
            query,
            headers,
            body,
            http2: settings.http2,
            pipelining: settings.pipelining,
            timeout: settings.timeout,
        };
        Ok(self.outbound.send(outgoing).await?)
    }

    /// Ends an attempt the same way for the primary relay and the workers: decides what becomes
    /// of the job, logs one line, counts it, and records it in the store.
    pub async fn finish(
        &self,
        store: &dyn Store,
        target: &Target,
        job: &Job,
        attempt: &Attempt,
    ) -> Finished {
        let now = now_ms();
        let report = attempt.report(target, job, now);
        let disposition = report.disposition;
        // A failure of this one request says nothing about the target: its breaker never sees it.
        let tripped = if attempt.request_fault {
            None
        } else {
            target
                .plumbing
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
            callback = job.callback.0,
            delivery = job.id.0,
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
            callback: job.callback.0,
            job: job.id.0,
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
        let lane_next_due = record_until_stored(store, job.id, report).await;
        self.events.publish(event);
        Finished {
            disposition,
            lane_next_due,
        }
    }
}

/// How a recorded attempt ended, for its target's worker.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    pub disposition: Disposition,
    /// Its job let its lane's next job go, due now ([`Recorded::LaneNextDue`]).
    pub lane_next_due: bool,
}

/// Records an attempt's outcome, trying again with backoff until the store takes it: until then
/// the job stays in flight, and only a restart would send it again (a full disk refuses every
/// write for a while). Recording the same outcome twice changes nothing. Gives up only when the
/// store is closed; shutdown abandons it after the grace period; the next start resends the job.
/// True when the outcome let the job's lane's next job go.
async fn record_until_stored(store: &dyn Store, job: JobId, report: AttemptReport) -> bool {
    let delivery = job.0;
    let mut delay = RECORD_RETRY_FIRST;
    let mut tries = 1u32;
    loop {
        match store.record(report.clone()).await {
            Ok(recorded @ (Recorded::Applied | Recorded::LaneNextDue)) => {
                if tries > 1 {
                    tracing::info!(delivery, tries, "attempt recorded once the store took it");
                }
                return recorded == Recorded::LaneNextDue;
            }
            Ok(Recorded::LeaseLost) => {
                tracing::warn!(
                    delivery,
                    "the job's lease expired during the attempt and another attempt owns it now; \
                     this outcome was not recorded"
                );
                return false;
            }
            Err(StoreError::Closed) => {
                tracing::error!(
                    delivery,
                    "could not record an attempt: the store is closed; it will be sent again after a restart"
                );
                return false;
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
            callback: job.callback,
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
            lane: job.lane.clone(),
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
    headers.insert(DELIVERY, HeaderValue::from(job.id.0));
    headers.insert(ATTEMPT, HeaderValue::from(job.attempts + 1));
    headers.insert(ACCOUNT, HeaderValue::from_str(&job.key.account)?);
    if let Some(appid) = authorizer {
        headers.insert(AUTHORIZER, HeaderValue::from_str(appid)?);
    }
    // WeChat's own header, kept when a header can carry it.
    if let Some(content_type) = content_type.and_then(|v| HeaderValue::from_str(v).ok()) {
        headers.insert(CONTENT_TYPE, content_type);
    }
    // WeChat Pay's `Wechatpay-*`, exactly as received: each target's SDK checks them.
    for (name, value) in &job.request.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    Ok(headers)
}

/// For a target with `signing_secret_env`: the proxy's own Standard Webhooks signature of
/// `body` as this attempt sends it, at this attempt's time; the delivery id names the message,
/// the same on every attempt.
fn sign(headers: &mut HeaderMap, target: &Target, job: &Job, body: &[u8]) {
    let Some(signer) = &target.signing else {
        return;
    };
    let (id, now) = (job.id.0.to_string(), clock::now_secs());
    let signature = signer.sign(&id, now, body);
    headers.insert(WEBHOOK_ID, HeaderValue::from(job.id.0));
    headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(now));
    if let Ok(value) = HeaderValue::from_str(&signature) {
        headers.insert(WEBHOOK_SIGNATURE, value);
    }
}

impl Attempts {
    /// A delivery to a `listen` target: one frame down one of its clients' WebSockets, its
    /// answer back, within the target's timeout.
    async fn over_listen(
        &self,
        target: &Target,
        job: &Job,
        query: &str,
        headers: HeaderMap,
        body: &[u8],
    ) -> Result<Response, Unanswered> {
        let headers = headers
            .iter()
            .filter(|(name, _)| *name != USER_AGENT)
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect();
        let frame = DeliveryFrame::new(job.id.0, job.attempts + 1, query, headers, body);
        let (account, name) = (&target.key.account, &target.key.target);
        let answered = self
            .listeners
            .deliver(account, name, &frame, target.settings.timeout)
            .await
            .map_err(Unanswered::Listen)?;
        Ok(Response {
            status: answered.status,
            retry_after: None,
            content_type: answered.content_type,
            body: answered.body,
            whole: true,
        })
    }
}

/// The time, a nonce and a random prefix for a request the proxy signs itself now: what the
/// protocol's sealing functions take, drawn here so that the protocol stays pure.
pub fn fresh() -> Fresh {
    Fresh::new(clock::now_secs(), rand::random(), rand::random())
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
