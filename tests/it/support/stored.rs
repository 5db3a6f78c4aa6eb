//! What the proxy stored, seen as a user sees it: through the `Store` trait of a proxy running
//! in-process ([`Proxy::store`](super::Proxy::store)), or through the admin API of a running
//! binary ([`StoreView::admin_of`]): the stored callbacks (`Store::callbacks`, `GET
//! /callbacks`) and each with the jobs it still holds (`Store::callback`, `GET
//! /callbacks/{id}`). Never the SQLite file's tables: how a store keeps things is its own.
//!
//! Delivered jobs are gone from the store, so "no job left" is "every delivery recorded".

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::Value;
use wechat_fanout::store::{CallbackDetail, CallbackId, JobState, Store};

use super::{client, eventually_async};

/// More callbacks than any test stores: the helpers read them all.
const ALL: usize = 10_000;

/// Where a test looks at what the proxy stored.
#[derive(Clone)]
pub(crate) enum StoreView {
    /// The store an in-process proxy runs on.
    Store(Arc<dyn Store>),
    /// The admin API at this base URL (`http://127.0.0.1:port`), which has no token.
    Admin(String),
}

impl StoreView {
    /// The admin API of the binary started with `config` (its `admin.listen`).
    pub(crate) fn admin_of(config: &Path) -> StoreView {
        StoreView::Admin(super::binary::admin_url(config, ""))
    }
}

/// One job of a stored callback, as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobRow {
    /// The delivery id.
    pub(crate) id: i64,
    pub(crate) target: String,
    pub(crate) state: JobState,
    /// Attempts made over the job's whole life.
    pub(crate) attempts: u32,
    pub(crate) last_status: Option<u16>,
    pub(crate) last_error: Option<String>,
    /// Its failed attempts: (attempt, status).
    failed: Vec<(u32, Option<u16>)>,
}

/// A stored callback, as the tests compare it.
struct Seen {
    account: String,
    /// WeChat's query and the body; `None` where the admin API hides them (no
    /// `admin.show_content`).
    request: Option<(String, Vec<u8>)>,
    jobs: Vec<JobRow>,
}

impl From<CallbackDetail> for Seen {
    fn from(detail: CallbackDetail) -> Seen {
        let jobs = (detail.jobs.into_iter())
            .map(|job| JobRow {
                id: job.id.0,
                target: job.target,
                state: job.state,
                attempts: job.attempts,
                last_status: job.last_status,
                last_error: job.last_error,
                failed: (job.failed.iter()).map(|a| (a.attempt, a.status)).collect(),
            })
            .collect();
        Seen {
            account: detail.account,
            request: Some((detail.request.query, detail.request.body.to_vec())),
            jobs,
        }
    }
}

/// `GET {base}{path}` on an admin API: `None` for a 404, the JSON otherwise.
async fn admin_get(base: &str, path: &str) -> Option<Value> {
    let response = (client().get(format!("{base}{path}")).send().await)
        .unwrap_or_else(|e| panic!("GET {base}{path}: {e}"));
    let status = response.status().as_u16();
    let body = response.bytes().await.expect("the admin API's answer");
    if status == 404 {
        return None;
    }
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&body)
    );
    Some(serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e})")))
}

/// A callback as `GET /callbacks/{id}` shows it.
fn seen_in(shown: &Value) -> Seen {
    let text = |v: &Value| v.as_str().map(str::to_owned);
    let number = |v: &Value| {
        v.as_u64()
            .map(|n| u32::try_from(n).expect("a small number"))
    };
    let status = |v: &Value| {
        v.as_u64()
            .map(|n| u16::try_from(n).expect("an HTTP status"))
    };
    let list = |v: &Value| v.as_array().cloned().expect("a list");
    let jobs = (list(&shown["jobs"]).iter())
        .map(|job| JobRow {
            id: job["id"].as_i64().expect("a job's id"),
            target: text(&job["target"]).expect("a job's target"),
            state: serde_json::from_value(job["state"].clone()).expect("a job's state"),
            attempts: number(&job["attempts"]).expect("a job's attempts"),
            last_status: status(&job["last_status"]),
            last_error: text(&job["last_error"]),
            failed: (list(&job["attempt_log"]).iter())
                .map(|a| {
                    (
                        number(&a["attempt"]).expect("an attempt"),
                        status(&a["status"]),
                    )
                })
                .collect(),
        })
        .collect();
    let request = &shown["request"];
    // Hidden without `admin.show_content`: then the exact body is not given.
    let body = request["body_base64"].as_str().filter(|b| !b.is_empty());
    Seen {
        account: text(&shown["account"]).expect("a callback's account"),
        request: body.map(|body| {
            let body = base64::engine::general_purpose::STANDARD.decode(body);
            let query = text(&request["query"]).expect("a callback's query");
            (query, body.expect("base64"))
        }),
        jobs,
    }
}

/// Every stored callback, in arrival order (by id).
async fn seen(view: &StoreView) -> Vec<Seen> {
    let mut all = Vec::new();
    match view {
        StoreView::Store(store) => {
            let mut ids = store.callbacks(None, ALL).await.expect("list callbacks");
            ids.reverse();
            for id in ids {
                // A callback purged since it was listed is not there any more.
                if let Some(detail) = store.callback(id).await.expect("read a callback") {
                    all.push(Seen::from(detail));
                }
            }
        }
        StoreView::Admin(base) => {
            let listed = admin_get(base, &format!("/callbacks?limit={ALL}")).await;
            let mut ids: Vec<CallbackId> =
                serde_json::from_value(listed.expect("the callbacks")).expect("callback ids");
            ids.reverse();
            for id in ids {
                if let Some(shown) = admin_get(base, &format!("/callbacks/{id}")).await {
                    all.push(seen_in(&shown));
                }
            }
        }
    }
    all
}

/// Every job the store holds now (delivered ones are gone), by id.
pub(crate) async fn jobs(view: &StoreView) -> Vec<JobRow> {
    let mut jobs: Vec<JobRow> = seen(view).await.into_iter().flat_map(|c| c.jobs).collect();
    jobs.sort_by_key(|job| job.id);
    jobs
}

/// Waits (bounded) until a job has `attempts` attempts or more recorded, and returns it.
pub(crate) async fn a_job_after(view: &StoreView, attempts: u32, what: &str) -> JobRow {
    eventually_async(what, || async {
        jobs(view)
            .await
            .into_iter()
            .find(|j| j.attempts >= attempts)
    })
    .await
}

/// Waits (bounded) until the store holds no job: every delivery done and recorded.
pub(crate) async fn no_jobs_left(view: &StoreView, what: &str) {
    eventually_async(what, || async {
        let none = match view {
            StoreView::Store(store) => (store.queue_depths().await.expect("queue depths").iter())
                .all(|d| d.pending == 0 && d.in_flight == 0 && d.dead == 0),
            StoreView::Admin(_) => jobs(view).await.is_empty(),
        };
        none.then_some(())
    })
    .await;
}

/// The failed attempts recorded for job `job`: (attempt, status), in order.
pub(crate) async fn attempts(view: &StoreView, job: i64) -> Vec<(u32, Option<u16>)> {
    let job = jobs(view).await.into_iter().find(|j| j.id == job);
    job.map(|j| j.failed).unwrap_or_default()
}

/// The states of the jobs of the stored callback with this body, by id: none once every
/// delivery of it is recorded. Through the admin API, only with `admin.show_content`.
pub(crate) async fn job_states_of(view: &StoreView, body: &[u8]) -> Vec<JobState> {
    let callbacks = seen(view).await;
    let of_body = (callbacks.into_iter()).find(|c| {
        let (_, stored) = c
            .request
            .as_ref()
            .expect("bodies shown (admin.show_content)");
        stored == body
    });
    of_body.map_or_else(Vec::new, |c| c.jobs.iter().map(|j| j.state).collect())
}

/// How many callbacks are stored.
pub(crate) async fn callbacks(view: &StoreView) -> usize {
    match view {
        StoreView::Store(store) => store
            .callbacks(None, ALL)
            .await
            .expect("list callbacks")
            .len(),
        StoreView::Admin(base) => {
            let listed = admin_get(base, &format!("/callbacks?limit={ALL}")).await;
            listed
                .and_then(|ids| Some(ids.as_array()?.len()))
                .expect("the callbacks")
        }
    }
}

/// The raw query and body of every stored callback of `account`, in arrival order: exactly what
/// the proxy received. Through the admin API, only with `admin.show_content`.
pub(crate) async fn stored(view: &StoreView, account: &str) -> Vec<(String, Vec<u8>)> {
    (seen(view).await.into_iter())
        .filter(|c| c.account == account)
        .map(|c| c.request.expect("bodies shown (admin.show_content)"))
        .collect()
}
