//! The outbound request: the callback exactly as WeChat sent it, to one target.
//!
//! Same body bytes, same raw query string (so the target's WeChat SDK verifies `signature` /
//! `msg_signature` itself), same Content-Type, plus headers that name the delivery, the attempt
//! and the account, so a target can drop the duplicates that at-least-once delivery implies.
//! One pooled `reqwest::Client` serves every target; redirects are not followed and no proxy from
//! the environment is used. Used by the primary relay in `ingress` and by `delivery`, so neither
//! imports the other.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use std::sync::Arc;

use crate::metrics::Metrics;
use crate::retry::{self, Verdict};
use crate::store::{AttemptReport, Disposition, Job, Store};
use crate::targets::Target;

/// Names the delivery (the job id): the same for every attempt of one delivery.
pub const DELIVERY_HEADER: &str = "x-wechat-fanout-delivery";
/// Counts attempts from 1.
pub const ATTEMPT_HEADER: &str = "x-wechat-fanout-attempt";
/// The account id the callback came in for.
pub const ACCOUNT_HEADER: &str = "x-wechat-fanout-account";

/// A target's answer body is read up to this size (a passive reply is a few KiB at most).
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// The outcome of one attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub verdict: Verdict,
    pub status: Option<u16>,
    /// Set when the target answered 2xx: its body and content type (for the primary relay).
    pub reply: Option<(Option<String>, Bytes)>,
    pub error: Option<String>,
    pub elapsed: Duration,
}

#[derive(Debug, Clone)]
pub struct Downstream {
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Downstream {
    pub fn new(metrics: Arc<Metrics>) -> Result<Downstream, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("wechat-fanout/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Downstream { client, metrics })
    }

    /// Sends `job` to `target` once, within the target's timeout.
    pub async fn attempt(&self, target: &Target, job: &Job) -> Attempt {
        let started = std::time::Instant::now();
        let request = &job.request;
        let mut url = String::with_capacity(target.url.len() + request.query.len() + 1);
        url.push_str(&target.url);
        if !request.query.is_empty() {
            url.push(if target.url.contains('?') { '&' } else { '?' });
            url.push_str(&request.query);
        }
        let mut builder = self
            .client
            .post(url)
            .timeout(target.settings.timeout)
            .header(DELIVERY_HEADER, job.id)
            .header(ATTEMPT_HEADER, job.attempts + 1)
            .header(ACCOUNT_HEADER, &*job.key.account)
            .body(request.body.clone());
        if let Some(content_type) = request
            .content_type
            .as_deref()
            .and_then(|v| HeaderValue::from_str(v).ok())
        {
            builder = builder.header(CONTENT_TYPE, content_type);
        }
        let result = async {
            let mut response = builder.send().await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // Read the body even when it is not needed, so the connection can be reused.
            let mut body = BytesMut::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>((status, retry_after, content_type, body.freeze()))
        }
        .await;
        let elapsed = started.elapsed();
        match result {
            Ok((status, retry_after, content_type, body)) => {
                let verdict =
                    retry::classify_status(status, retry_after.as_deref(), SystemTime::now());
                let delivered = verdict == Verdict::Delivered;
                Attempt {
                    verdict,
                    status: Some(status),
                    reply: delivered.then_some((content_type, body)),
                    error: (!delivered).then(|| format!("target answered {status}")),
                    elapsed,
                }
            }
            Err(e) => Attempt {
                verdict: Verdict::Retry { after: None },
                status: e.status().map(|s| s.as_u16()),
                reply: None,
                error: Some(describe(&e)),
                elapsed,
            },
        }
    }
}

impl Attempt {
    /// What the store should record for this attempt of `job`.
    pub fn report(&self, target: &Target, job: &Job, now_ms: i64) -> AttemptReport {
        AttemptReport {
            job: job.id,
            attempt: job.attempts + 1,
            at_ms: now_ms,
            status: self.status,
            error: self.error.clone(),
            disposition: retry::disposition(
                &target.settings,
                job.attempt_in_round(),
                self.verdict,
                now_ms,
                rand::random(),
            ),
        }
    }
}

impl Downstream {
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
        if let Some(cool_down) = target
            .breaker
            .record(attempt.verdict, now, &target.settings)
        {
            tracing::warn!(
                account = &*target.key.account,
                target = &*target.key.target,
                cool_down_ms = cool_down.as_millis() as u64,
                "target failed {} attempts in a row: pausing its deliveries",
                crate::retry::TRIP_AFTER
            );
        }
        let result = match disposition {
            Disposition::Delivered => "delivered",
            Disposition::RetryAt(_) => "retry",
            Disposition::Dead => "dead",
        };
        let elapsed = attempt.elapsed;
        let (account, name) = (&*target.key.account, &*target.key.target);
        let elapsed_ms = elapsed.as_millis() as u64;
        if disposition == Disposition::Delivered {
            tracing::info!(
                account,
                target = name,
                callback = job.callback,
                delivery = job.id,
                attempt = report.attempt,
                status = attempt.status,
                elapsed_ms,
                outcome = result,
                "delivery"
            );
        } else {
            tracing::warn!(
                account,
                target = name,
                callback = job.callback,
                delivery = job.id,
                attempt = report.attempt,
                status = attempt.status,
                error = attempt.error.as_deref().unwrap_or("-"),
                elapsed_ms,
                outcome = result,
                "delivery"
            );
        }
        self.metrics
            .attempt(account, name, result, elapsed.as_secs_f64());
        if let Err(e) = store.record(report).await {
            tracing::error!(delivery = job.id, error = %e, "could not record an attempt; it will be sent again after a restart");
        }
        disposition
    }
}

/// A short reason without the URL (which may carry signatures) for logs and the store.
fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "reading the answer failed"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut innermost = None;
    while let Some(s) = source {
        innermost = Some(s.to_string());
        source = s.source();
    }
    match innermost {
        Some(cause) => format!("{kind}: {cause}"),
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
