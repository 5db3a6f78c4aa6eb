//! What the admin reads: one callback with the jobs it still holds, the latest callbacks, and
//! each target's oldest open job.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wechat_fanout::clock::now_ms;
use wechat_fanout::store::{
    Accepted, Answer, CallbackId, Disposition, FailedAttempt, HistoryQuery, JobId, JobState,
    NewJob, Store, TargetState,
};

use crate::support::{callback, depth, key, lease_one, record, report, report_for};

/// One callback as the admin sees it: what was stored of it and saved for it, and each job it
/// still holds with its state, attempts, due time and failed attempts. A job that is gone was
/// delivered; a callback with no job left is shown until it is purged.
pub(crate) async fn a_callback_is_shown_with_the_jobs_it_still_holds(store: Arc<dyn Store>) {
    let new = callback(&*store, "s1", &[("a", false), ("b", true), ("c", false)]).await;
    let b_lease = new.jobs[1].lease.unwrap();
    let Accepted::New {
        callback: id, jobs, ..
    } = store.accept(new.clone()).await.unwrap()
    else {
        panic!("new is new")
    };
    let detail = store.callback(id).await.unwrap().unwrap();
    assert_eq!(
        (
            &*detail.account,
            detail.received_at_ms,
            detail.msg_type.as_deref(),
            &detail.event
        ),
        ("main", 1_000, Some("text"), &None)
    );
    assert_eq!(
        (detail.id, &detail.request, &detail.answer),
        (id, &*new.request, &None)
    );
    let states: Vec<_> = detail
        .jobs
        .iter()
        .map(|j| (j.id, &*j.target, j.state, j.due_in))
        .collect();
    assert_eq!(
        states,
        [
            (jobs[0], "a", JobState::Pending, Some(Duration::ZERO)),
            (jobs[1], "b", JobState::InFlight, None),
            (jobs[2], "c", JobState::Pending, Some(Duration::ZERO)),
        ]
    );
    for job in &detail.jobs {
        assert_eq!(
            (job.attempts, job.last_status, &job.last_error),
            (0, None, &None)
        );
        assert!(job.failed.is_empty());
    }

    let answer = Answer {
        content_type: Some("text/xml".into()),
        body: Bytes::from_static(b"<xml>the reply</xml>"),
    };
    store.save_answer("main", id, answer.clone()).await.unwrap();
    let a = lease_one(&*store, "a").await;
    let later = Duration::from_secs(3600);
    record(&*store, report(&a, 1, Disposition::RetryIn(later))).await;
    record(
        &*store,
        report_for("b", id, jobs[1], b_lease, 1, Disposition::Dead),
    )
    .await;
    let c = lease_one(&*store, "c").await;
    record(&*store, report(&c, 1, Disposition::Delivered)).await;
    let detail = store.callback(id).await.unwrap().unwrap();
    assert_eq!(detail.answer, Some(answer));
    let [a, b] = &detail.jobs[..] else {
        panic!("c was delivered, a and b are held: {:?}", detail.jobs)
    };
    assert_eq!(
        (a.id, a.state, b.id, b.state),
        (jobs[0], JobState::Pending, jobs[1], JobState::Dead)
    );
    let due_in = a.due_in.unwrap();
    assert!(
        due_in > later - Duration::from_secs(60) && due_in <= later,
        "{due_in:?}"
    );
    assert_eq!(b.due_in, None);
    let failed = FailedAttempt {
        attempt: 1,
        at_ms: 2_000,
        status: Some(500),
        error: Some("target answered 500".into()),
    };
    for job in [a, b] {
        assert_eq!(
            (job.attempts, job.last_status, job.last_error.as_deref()),
            (1, Some(500), Some("target answered 500"))
        );
        assert_eq!(job.failed, std::slice::from_ref(&failed));
    }
    assert_eq!(
        store.callback(CallbackId(id.0 + 1_000_000)).await.unwrap(),
        None
    );

    // Delivered, a callback is shown without jobs until it is purged.
    let done = callback(&*store, "s2", &[("d", false)]).await;
    store.accept(done.clone()).await.unwrap();
    let d = lease_one(&*store, "d").await;
    record(&*store, report(&d, 1, Disposition::Delivered)).await;
    assert_eq!(store.callback(done.id).await.unwrap().unwrap().jobs, []);
    assert_eq!(store.purge_delivered(i64::MAX).await.unwrap(), 1);
    assert_eq!(store.callback(done.id).await.unwrap(), None);
    assert!(store.callback(id).await.unwrap().is_some(), "it holds jobs");
}

/// The caller makes the ids, so a callback's jobs are found whatever ids they have, among
/// other callbacks' jobs in every state: here the jobs' ids come before the callback's.
pub(crate) async fn a_callbacks_jobs_are_found_whatever_their_ids(store: Arc<dyn Store>) {
    let others = callback(&*store, "o1", &[("a", false), ("b", false), ("c", true)]).await;
    store.accept(others).await.unwrap();
    let mut new = callback(&*store, "o2", &[("a", false), ("b", false), ("c", true)]).await;
    let ids = store.next_ids(1).await.unwrap();
    let lease = new.jobs[2].lease;
    new.jobs[2].lease = None;
    new.jobs.push(NewJob {
        id: JobId(new.id.0),
        target: Arc::from("d"),
        lease,
        ordered: false,
    });
    new.jobs.swap(2, 3);
    new.id = CallbackId(ids[0]);
    store.accept(new.clone()).await.unwrap();
    // One job of each callback dead, for the dead sets too.
    for job in store.lease_due(&key("b"), 10).await.unwrap() {
        record(&*store, report(&job, 1, Disposition::Dead)).await;
    }
    // The history finds each job where it stands, whatever its id.
    let history = store
        .history(&HistoryQuery {
            limit: 10,
            ..HistoryQuery::default()
        })
        .await
        .unwrap();
    let entry = (history.callbacks.iter())
        .find(|e| e.id == new.id)
        .expect("the callback in the history");
    let states: Vec<(&str, TargetState, Option<JobId>)> = (entry.targets.iter())
        .map(|t| (t.target.as_str(), t.state, t.job))
        .collect();
    assert_eq!(
        states,
        [
            ("a", TargetState::Pending, Some(new.jobs[0].id)),
            ("b", TargetState::Dead, Some(new.jobs[1].id)),
            ("d", TargetState::Pending, Some(new.jobs[2].id)),
            ("c", TargetState::Pending, Some(new.jobs[3].id)),
        ]
    );
    let detail = store.callback(new.id).await.unwrap().unwrap();
    let mut expected: Vec<(JobId, &str, JobState)> = vec![
        (new.jobs[0].id, "a", JobState::Pending),
        (new.jobs[1].id, "b", JobState::Dead),
        (new.jobs[2].id, "d", JobState::InFlight),
        (new.jobs[3].id, "c", JobState::Pending),
    ];
    expected.sort_by_key(|(id, _, _)| *id);
    let found: Vec<_> = detail
        .jobs
        .iter()
        .map(|j| (j.id, &*j.target, j.state))
        .collect();
    assert_eq!(found, expected);
}

/// The latest callbacks' ids, newest first, of one account or of all: each once (a resend is
/// no callback; one stored under two keys is one), purged ones no longer.
pub(crate) async fn callbacks_are_listed_newest_first(store: Arc<dyn Store>) {
    let mut stored = Vec::new();
    for key in ["l1", "l2", "l3"] {
        let mut new = callback(&*store, key, &[("a", false)]).await;
        if key == "l2" {
            new.legacy_dedupe_key = Some("l2-before".into());
        }
        stored.push(new.id);
        store.accept(new).await.unwrap();
    }
    store
        .accept(callback(&*store, "l1", &[("a", false)]).await)
        .await
        .unwrap();
    let mut other = callback(&*store, "l4", &[]).await;
    other.account = Arc::from("second");
    store.accept(other.clone()).await.unwrap();
    let [l1, l2, l3] = stored[..] else {
        unreachable!()
    };

    assert_eq!(
        store.callbacks(Some("main"), 10).await.unwrap(),
        [l3, l2, l1]
    );
    assert_eq!(store.callbacks(Some("main"), 2).await.unwrap(), [l3, l2]);
    assert_eq!(
        store.callbacks(Some("second"), 10).await.unwrap(),
        [other.id]
    );
    assert_eq!(
        store.callbacks(None, 10).await.unwrap(),
        [other.id, l3, l2, l1]
    );
    assert_eq!(store.callbacks(None, 1).await.unwrap(), [other.id]);
    assert_eq!(store.callbacks(Some("nobody"), 10).await.unwrap(), []);
    // `second`'s callback had no job: it is purged with the retention.
    assert_eq!(store.purge_delivered(i64::MAX).await.unwrap(), 1);
    assert_eq!(store.callbacks(None, 10).await.unwrap(), [l3, l2, l1]);
}

/// Each target's oldest open job (pending or in flight) is told by when its callback arrived,
/// whether it was never attempted, failed and waits, or is in flight; delivered and dead jobs
/// are not open. What an alert on a target's backlog reads.
pub(crate) async fn the_oldest_open_job_of_each_target_is_told(store: Arc<dyn Store>) {
    let first_at = now_ms();
    let mut first = callback(&*store, "o1", &[("a", false), ("b", false)]).await;
    first.received_at_ms = first_at;
    store.accept(first).await.unwrap();
    // Never attempted: due since it arrived (Redis counts that by its own clock).
    for target in ["a", "b"] {
        let oldest = depth(&*store, target)
            .await
            .unwrap()
            .oldest_pending_ms
            .unwrap();
        assert!(
            (oldest - first_at).abs() < 1_000,
            "{target}: {oldest} vs {first_at}"
        );
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut second = callback(&*store, "o2", &[("a", false)]).await;
    second.received_at_ms = now_ms();
    store.accept(second).await.unwrap();

    let mut jobs = store.lease_due(&key("a"), 10).await.unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    jobs.sort_by_key(|j| j.id);
    let (older, newer) = (jobs.remove(0), jobs.remove(0));
    // In flight, then failed and waiting: the first callback's arrival, exactly.
    record(
        &*store,
        report(&older, 1, Disposition::RetryIn(Duration::from_millis(1))),
    )
    .await;
    let a = depth(&*store, "a").await.unwrap();
    assert_eq!((a.pending, a.in_flight), (1, 1), "{a:?}");
    assert_eq!(a.oldest_pending_ms, Some(first_at), "{a:?}");
    record(&*store, report(&newer, 1, Disposition::Delivered)).await;
    assert_eq!(
        depth(&*store, "a").await.unwrap().oldest_pending_ms,
        Some(first_at)
    );

    let b = lease_one(&*store, "b").await;
    record(&*store, report(&b, 1, Disposition::Delivered)).await;
    assert_eq!(
        depth(&*store, "b").await.and_then(|d| d.oldest_pending_ms),
        None
    );

    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = lease_one(&*store, "a").await;
    assert_eq!(again.id, older.id);
    record(&*store, report(&again, 2, Disposition::Dead)).await;
    let a = depth(&*store, "a").await.unwrap();
    assert_eq!((a.pending, a.in_flight, a.dead), (0, 0, 1), "{a:?}");
    assert_eq!(
        a.oldest_pending_ms, None,
        "a dead letter is not waiting: {a:?}"
    );
}
