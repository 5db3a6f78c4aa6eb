//! The stored callbacks, as the admin API shows them: the latest of an account, and one with
//! the jobs it still holds (what the console's callback detail reads). Like the console's view
//! of a dead letter, it shows no openid, body or answer unless `admin.show_content`.
//!
//! - `GET /callbacks?account=&limit=`: the ids of the latest callbacks (of every account
//!   without `account`; 100 unless `limit`), newest first.
//! - `GET /callbacks/{id}`: the callback, its answer, and each job it still holds with its
//!   state, attempts, due time and failed attempts; a job that is gone was delivered (or purged
//!   as a dead letter). 404 once the callback itself is purged.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use super::{Admin, Failure, ShownBytes, ShownRequest, store_error};
use crate::http::json;
use crate::store::{CallbackDetail, CallbackId, FailedAttempt, JobId, JobState};

/// Callbacks listed when the request names no `limit`.
const DEFAULT_LIMIT: usize = 100;

/// The callbacks, as the admin listener routes to them.
impl Admin {
    pub(super) async fn callbacks(&self, query: &str) -> Result<Response<Full<Bytes>>, Failure> {
        let (mut account, mut limit) = (None, DEFAULT_LIMIT);
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "account" => account = Some(value.into_owned()),
                "limit" => {
                    limit = value.parse().map_err(|_| {
                        (StatusCode::BAD_REQUEST, "limit must be a number".to_owned())
                    })?;
                }
                other => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        format!("unknown parameter {other:?}"),
                    ));
                }
            }
        }
        let ids = self
            .shared
            .store
            .callbacks(account.as_deref(), limit)
            .await
            .map_err(store_error)?;
        Ok(json(StatusCode::OK, &ids))
    }

    pub(super) async fn callback(&self, id: &str) -> Result<Response<Full<Bytes>>, Failure> {
        let id: CallbackId = id.parse().map_err(|_| {
            (
                StatusCode::BAD_REQUEST,
                format!("not a callback id: {id:?}"),
            )
        })?;
        let Some(detail) = self.shared.store.callback(id).await.map_err(store_error)? else {
            return Err((StatusCode::NOT_FOUND, format!("no callback {id}")));
        };
        Ok(json(StatusCode::OK, &self.shown(&detail)))
    }

    fn shown<'a>(&self, detail: &'a CallbackDetail) -> Shown<'a> {
        let answer = detail.answer.as_ref().map(|answer| ShownAnswer {
            content_type: answer.content_type.as_deref(),
            body: if self.console.show_content() {
                ShownBytes::of(&answer.body)
            } else {
                ShownBytes::hidden()
            },
        });
        Shown {
            id: detail.id,
            account: &detail.account,
            received_at_ms: detail.received_at_ms,
            msg_type: detail.msg_type.as_deref(),
            event: detail.event.as_deref(),
            instance: detail.instance.as_deref(),
            request: self.shown_request(&detail.account, &detail.request, true),
            answer,
            jobs: (detail.jobs.iter())
                .map(|job| ShownJob {
                    id: job.id,
                    target: &job.target,
                    state: job.state,
                    attempts: job.attempts,
                    due_in_ms: job
                        .due_in
                        .map(|due| u64::try_from(due.as_millis()).unwrap_or(u64::MAX)),
                    last_status: job.last_status,
                    last_error: job.last_error.as_deref(),
                    attempt_log: &job.failed,
                })
                .collect(),
        }
    }
}

/// `GET /callbacks/{id}`'s answer.
#[derive(Serialize)]
struct Shown<'a> {
    id: CallbackId,
    account: &'a str,
    received_at_ms: i64,
    msg_type: Option<&'a str>,
    event: Option<&'a str>,
    /// The instance that accepted it (`server.instance_name`); `null` for callbacks a build
    /// before shape version 6 stored.
    instance: Option<&'a str>,
    /// As the deliveries send it.
    request: ShownRequest,
    /// What WeChat got, if it was saved (a reply owner's relayed reply).
    answer: Option<ShownAnswer<'a>>,
    jobs: Vec<ShownJob<'a>>,
}

#[derive(Serialize)]
struct ShownAnswer<'a> {
    content_type: Option<&'a str>,
    #[serde(flatten)]
    body: ShownBytes,
}

#[derive(Serialize)]
struct ShownJob<'a> {
    /// The delivery id.
    id: JobId,
    target: &'a str,
    state: JobState,
    attempts: u32,
    /// Pending: in how many milliseconds it is due, by the store's clock.
    due_in_ms: Option<u64>,
    last_status: Option<u16>,
    last_error: Option<&'a str>,
    attempt_log: &'a [FailedAttempt],
}
