//! Helpers the tests share: callbacks to accept, attempt reports, leasing one job, a target's
//! queue depth.

use std::sync::Arc;

use bytes::Bytes;
use wechat_fanout::store::{
    AttemptReport, CallbackId, Disposition, Job, JobId, LeaseToken, NewCallback, NewJob,
    QueueDepth, Recorded, Replay, Store, TargetKey, new_lease_token,
};

/// A callback for account `main` with ids from `store`; `(target, true)` is stored leased (with
/// a fresh token, in `jobs[i].lease`).
pub(crate) async fn callback(
    store: &dyn Store,
    key: &str,
    targets: &[(&str, bool)],
) -> NewCallback {
    let mut ids = store.next_ids(1 + targets.len()).await.unwrap().into_iter();
    NewCallback {
        id: CallbackId(ids.next().unwrap()),
        account: Arc::from("main"),
        dedupe_key: key.to_owned(),
        legacy_dedupe_key: None,
        received_at_ms: 1_000,
        msg_type: Some("text".into()),
        event: None,
        msg_id: None,
        sender: None,
        instance: None,
        request: Arc::new(Replay {
            query: "signature=abc&timestamp=1&nonce=2".into(),
            content_type: Some("text/xml".into()),
            body: Bytes::from(format!("<xml><MsgId>{key}</MsgId></xml>")),
            authorizer: None,
            trace: None,
            headers: Vec::new(),
            lane: None,
        }),
        jobs: targets
            .iter()
            .zip(ids)
            .map(|((name, leased), id)| NewJob {
                id: JobId(id),
                target: Arc::from(*name),
                lease: leased.then(new_lease_token),
                ordered: false,
            })
            .collect(),
        answer_pending_ms: None,
    }
}

pub(crate) fn key(target: &str) -> TargetKey {
    TargetKey {
        account: Arc::from("main"),
        target: Arc::from(target),
    }
}

/// The report of a failed (500) attempt of `job` of `target` under `lease`, at 2,000 ms.
pub(crate) fn report_for(
    target: &str,
    callback: CallbackId,
    job: JobId,
    lease: LeaseToken,
    attempt: u32,
    disposition: Disposition,
) -> AttemptReport {
    AttemptReport {
        key: key(target),
        job,
        callback,
        lease,
        attempt,
        at_ms: 2_000,
        status: Some(500),
        error: Some("target answered 500".into()),
        disposition,
        lane: None,
    }
}

/// The report of attempt `attempt` of a leased `job`.
pub(crate) fn report(job: &Job, attempt: u32, disposition: Disposition) -> AttemptReport {
    AttemptReport {
        lane: job.lane.clone(),
        ..report_for(
            &job.key.target,
            job.callback,
            job.id,
            job.lease,
            attempt,
            disposition,
        )
    }
}

pub(crate) async fn record(store: &dyn Store, report: AttemptReport) {
    assert_eq!(store.record(report).await.unwrap(), Recorded::Applied);
}

/// Leases exactly one due job of `target`.
pub(crate) async fn lease_one(store: &dyn Store, target: &str) -> Job {
    let mut jobs = store.lease_due(&key(target), 10).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    jobs.remove(0)
}

/// The open platform's authorizer, from ingress.
pub(crate) const AUTHORIZER: &str = "wxauthorized0001";

/// `callback` about [`AUTHORIZER`] (WeChat's query as received, the authorizer beside it).
pub(crate) async fn authorized_callback(
    store: &dyn Store,
    key: &str,
    targets: &[(&str, bool)],
) -> NewCallback {
    let mut new = callback(store, key, targets).await;
    new.request = Arc::new(Replay {
        authorizer: Some(AUTHORIZER.into()),
        ..(*new.request).clone()
    });
    new
}

/// The depth of `target` as `queue_depths` tells it (`None`: no job at all).
pub(crate) async fn depth(store: &dyn Store, target: &str) -> Option<QueueDepth> {
    let depths = store.queue_depths().await.unwrap();
    depths.into_iter().find(|d| d.target == target)
}
