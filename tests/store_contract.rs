//! The store contract: what ingress and delivery rely on, run against every backend.
//! Each backend gets the same suite through `contract!` (today: the embedded SQLite store).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use bytes::Bytes;
use wechat_fanout::config::Synchronous;
use wechat_fanout::store::{
    Accepted, Answer, AttemptReport, DeadLetterFilter, Disposition, NewCallback, NewJob, Replay,
    Replayed, SqliteStore, Store, TargetKey,
};

fn callback(key: &str, targets: &[(&str, bool)]) -> NewCallback {
    NewCallback {
        account: Arc::from("main"),
        dedupe_key: key.to_owned(),
        received_at_ms: 1_000,
        msg_type: Some("text".into()),
        event: None,
        request: Arc::new(Replay {
            query: "signature=abc&timestamp=1&nonce=2".into(),
            content_type: Some("text/xml".into()),
            body: Bytes::from(format!("<xml><MsgId>{key}</MsgId></xml>")),
        }),
        jobs: targets
            .iter()
            .map(|(name, leased)| NewJob {
                target: Arc::from(*name),
                leased: *leased,
            })
            .collect(),
    }
}

fn key(target: &str) -> TargetKey {
    TargetKey {
        account: Arc::from("main"),
        target: Arc::from(target),
    }
}

fn report(job: i64, attempt: u32, disposition: Disposition) -> AttemptReport {
    AttemptReport {
        job,
        attempt,
        at_ms: 2_000,
        status: Some(500),
        error: Some("target answered 500".into()),
        disposition,
    }
}

/// Accepting twice yields one callback; the second sees the saved answer.
async fn insert_if_absent_is_the_dedupe(store: Arc<dyn Store>) {
    let first = store
        .accept(callback("k1", &[("a", false), ("b", false)]))
        .await
        .unwrap();
    let Accepted::New { callback: id, jobs } = first else {
        panic!("first accept must be new: {first:?}")
    };
    assert_eq!(jobs.len(), 2);
    let again = store.accept(callback("k1", &[("a", false)])).await.unwrap();
    assert_eq!(
        again,
        Accepted::Duplicate {
            callback: id,
            answer: None
        }
    );
    let answer = Answer {
        content_type: Some("text/xml".into()),
        body: Bytes::from_static(b"<xml>reply</xml>"),
    };
    store.save_answer(id, answer.clone()).await.unwrap();
    let third = store.accept(callback("k1", &[("a", false)])).await.unwrap();
    assert_eq!(
        third,
        Accepted::Duplicate {
            callback: id,
            answer: Some(answer)
        }
    );
    // Only the first accept created jobs.
    assert_eq!(
        store.lease_due(&key("a"), 10_000, 10).await.unwrap().len(),
        1
    );
}

/// Concurrent accepts of one key: exactly one is new.
async fn concurrent_resends_create_one_callback(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .accept(callback("same", &[("a", false)]))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut new = 0;
    for task in tasks {
        if matches!(task.await.unwrap(), Accepted::New { .. }) {
            new += 1;
        }
    }
    assert_eq!(new, 1);
    assert_eq!(
        store.lease_due(&key("a"), 10_000, 100).await.unwrap().len(),
        1
    );
}

/// Leasing returns the original bytes, never the same job twice, and leased jobs are not due.
async fn lease_returns_original_bytes_once(store: Arc<dyn Store>) {
    store
        .accept(callback("k2", &[("a", false), ("b", true)]))
        .await
        .unwrap();
    let jobs = store.lease_due(&key("a"), 10_000, 10).await.unwrap();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.attempts, 0);
    assert_eq!(job.key, key("a"));
    assert_eq!(job.request.query, "signature=abc&timestamp=1&nonce=2");
    assert_eq!(job.request.content_type.as_deref(), Some("text/xml"));
    assert_eq!(&job.request.body[..], b"<xml><MsgId>k2</MsgId></xml>");
    assert!(
        store
            .lease_due(&key("a"), 10_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // "b" was stored in flight for its caller: no worker may lease it.
    assert!(
        store
            .lease_due(&key("b"), 10_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Not due before it was received.
    store.accept(callback("k3", &[("c", false)])).await.unwrap();
    assert!(
        store
            .lease_due(&key("c"), 999, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.next_due(&key("c")).await.unwrap(), Some(1_000));
}

/// Retry reschedules with the attempt count; dead stays out of the queue; delivered disappears.
async fn record_reschedules_buries_and_removes(store: Arc<dyn Store>) {
    store.accept(callback("k4", &[("a", false)])).await.unwrap();
    let job = store
        .lease_due(&key("a"), 10_000, 1)
        .await
        .unwrap()
        .remove(0);
    store
        .record(report(job.id, 1, Disposition::RetryAt(5_000)))
        .await
        .unwrap();
    assert_eq!(store.next_due(&key("a")).await.unwrap(), Some(5_000));
    assert!(
        store
            .lease_due(&key("a"), 4_999, 1)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store
        .lease_due(&key("a"), 5_000, 1)
        .await
        .unwrap()
        .remove(0);
    assert_eq!((again.id, again.attempts), (job.id, 1));
    store
        .record(report(job.id, 2, Disposition::Dead))
        .await
        .unwrap();
    assert_eq!(store.next_due(&key("a")).await.unwrap(), None);
    assert!(
        store
            .lease_due(&key("a"), i64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );

    store.accept(callback("k5", &[("d", false)])).await.unwrap();
    let job = store
        .lease_due(&key("d"), 10_000, 1)
        .await
        .unwrap()
        .remove(0);
    store
        .record(report(job.id, 1, Disposition::Delivered))
        .await
        .unwrap();
    assert_eq!(store.next_due(&key("d")).await.unwrap(), None);
}

/// Delivered callbacks are purged after retention; undelivered ones never are.
async fn purge_keeps_undelivered(store: Arc<dyn Store>) {
    store.accept(callback("p1", &[("a", false)])).await.unwrap();
    store.accept(callback("p2", &[])).await.unwrap();
    assert_eq!(store.purge_delivered(500).await.unwrap(), 0);
    assert_eq!(store.purge_delivered(2_000).await.unwrap(), 1);
    // p2 is gone, so it is new again; p1 (pending) is still a duplicate.
    assert!(matches!(
        store.accept(callback("p2", &[])).await.unwrap(),
        Accepted::New { .. }
    ));
    assert!(matches!(
        store.accept(callback("p1", &[])).await.unwrap(),
        Accepted::Duplicate { .. }
    ));
    store.check_writable().await.unwrap();
    store.flush().await.unwrap();
}

/// Regression: a delivered job's row was deleted and its id handed to the next job, so a target
/// that dedupes on the delivery id would have dropped a new callback. Ids are never reused, not
/// after delivery, and not after purging every callback.
async fn delivery_ids_are_never_reused(store: Arc<dyn Store>) {
    let mut seen = std::collections::HashSet::new();
    for n in 0..3 {
        let Accepted::New { callback, jobs } = store
            .accept(callback(&format!("r{n}"), &[("a", false)]))
            .await
            .unwrap()
        else {
            panic!("r{n} is new");
        };
        assert!(seen.insert(jobs[0]), "job id {} handed out twice", jobs[0]);
        assert!(
            seen.insert(-callback),
            "callback id {callback} handed out twice"
        );
        let job = store
            .lease_due(&key("a"), 10_000, 1)
            .await
            .unwrap()
            .remove(0);
        store
            .record(report(job.id, 1, Disposition::Delivered))
            .await
            .unwrap();
        store.purge_delivered(i64::MAX).await.unwrap();
    }
}

/// Jobs stored as in flight (handed to a worker) that the worker gives back are due again, and
/// releasing a job that is no longer in flight changes nothing.
async fn release_returns_jobs_in_flight_to_the_queue(store: Arc<dyn Store>) {
    let Accepted::New { jobs, .. } = store
        .accept(callback("h1", &[("a", true), ("b", false)]))
        .await
        .unwrap()
    else {
        panic!("h1 is new");
    };
    assert!(
        store
            .lease_due(&key("a"), i64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    store.release(vec![jobs[0], jobs[1]], 3_000).await.unwrap();
    assert_eq!(store.next_due(&key("a")).await.unwrap(), Some(3_000));
    // b was pending, not in flight: it keeps its due time.
    assert_eq!(store.next_due(&key("b")).await.unwrap(), Some(1_000));
    let leased = store.lease_due(&key("a"), 3_000, 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!((leased[0].id, leased[0].attempts), (jobs[0], 0));
    assert_eq!(&leased[0].request.body[..], b"<xml><MsgId>h1</MsgId></xml>");
}

/// Pending jobs of targets that are not routed become dead letters with the reason; routed
/// targets and jobs in flight are untouched, and a second call finds nothing more to do.
async fn bury_unrouted_turns_orphaned_jobs_into_dead_letters(store: Arc<dyn Store>) {
    let Accepted::New { jobs, .. } = store
        .accept(callback(
            "o1",
            &[("kept", false), ("gone", false), ("running", true)],
        ))
        .await
        .unwrap()
    else {
        panic!("o1 is new");
    };
    store
        .accept(callback("o2", &[("gone", false)]))
        .await
        .unwrap();

    let buried = store
        .bury_unrouted(vec![key("kept")], "retired", 5_000)
        .await
        .unwrap();
    assert_eq!(buried, vec![(key("gone"), 2)]);
    assert_eq!(store.next_due(&key("kept")).await.unwrap(), Some(1_000));
    assert_eq!(store.next_due(&key("gone")).await.unwrap(), None);

    let letters = store
        .dead_letters(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    for letter in &letters {
        assert_eq!(letter.target, "gone");
        assert_eq!(letter.died_at_ms, 5_000);
        assert_eq!(letter.last_error.as_deref(), Some("retired"));
    }
    assert_eq!(letters[1].id, jobs[1]);

    // The job in flight finishes its attempt as usual.
    store
        .record(report(jobs[2], 1, Disposition::Delivered))
        .await
        .unwrap();
    assert!(
        store
            .bury_unrouted(vec![key("kept")], "retired", 6_000)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A replay makes the dead letters of routed targets due again with a fresh allowance, and
/// leaves those of other targets exactly as they were (still dead, same time of death).
async fn replay_dead_replays_letters_of_routed_targets_only(store: Arc<dyn Store>) {
    store
        .accept(callback("d1", &[("a", false), ("gone", false)]))
        .await
        .unwrap();
    for target in ["a", "gone"] {
        let job = store
            .lease_due(&key(target), 10_000, 1)
            .await
            .unwrap()
            .remove(0);
        store
            .record(report(job.id, 1, Disposition::Dead))
            .await
            .unwrap();
    }

    let everything = DeadLetterFilter::default();
    let replayed = store
        .replay_dead(None, &everything, vec![key("a")], 7_000)
        .await
        .unwrap();
    assert_eq!(
        replayed,
        Replayed {
            targets: vec![key("a")],
            not_routed: 1
        }
    );
    assert_eq!(store.next_due(&key("a")).await.unwrap(), Some(7_000));
    let again = store.lease_due(&key("a"), 7_000, 1).await.unwrap();
    assert_eq!((again[0].attempts, again[0].attempt_in_round()), (1, 1));
    let left = store.dead_letters(&everything).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!((&*left[0].target, left[0].died_at_ms), ("gone", 2_000));
    assert_eq!(store.next_due(&key("gone")).await.unwrap(), None);
}

/// The suite for one backend: `mod $backend` with one test per contract function, each on a
/// fresh store from `$open` (the store and a guard that keeps its files alive).
macro_rules! contract {
    ($backend:ident, $open:expr) => {
        contract!(@suite $backend, $open,
            #[tokio::test] insert_if_absent_is_the_dedupe,
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            concurrent_resends_create_one_callback,
            #[tokio::test] lease_returns_original_bytes_once,
            #[tokio::test] record_reschedules_buries_and_removes,
            #[tokio::test] purge_keeps_undelivered,
            #[tokio::test] delivery_ids_are_never_reused,
            #[tokio::test] release_returns_jobs_in_flight_to_the_queue,
            #[tokio::test] bury_unrouted_turns_orphaned_jobs_into_dead_letters,
            #[tokio::test] replay_dead_replays_letters_of_routed_targets_only,
        );
    };
    (@suite $backend:ident, $open:expr, $(#[$runtime:meta] $test:ident,)*) => {
        mod $backend {
            use super::*;
            $(
                #[$runtime]
                async fn $test() {
                    let (store, _guard) = $open;
                    super::$test(store).await;
                }
            )*
        }
    };
}

fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db"), Synchronous::Full).unwrap();
    (Arc::new(store), dir)
}

contract!(sqlite, sqlite());

/// SQLite only: the file has one owner, and jobs in flight at a crash are due again on reopen.
#[tokio::test]
async fn sqlite_reopen_resumes_jobs_in_flight_and_refuses_a_second_owner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let store = SqliteStore::open(&path, Synchronous::Full).unwrap();
        let err = SqliteStore::open(&path, Synchronous::Full).unwrap_err();
        assert!(
            err.to_string()
                .contains("in use by another wechat-fanout process"),
            "{err}"
        );
        store
            .accept(callback("r1", &[("a", true), ("b", false)]))
            .await
            .unwrap();
        assert_eq!(
            store.lease_due(&key("b"), 10_000, 10).await.unwrap().len(),
            1
        );
        store.flush().await.unwrap();
    }
    // The writer thread holds the connection until its channel closes; give it a moment.
    let reopened = loop {
        match SqliteStore::open(&path, Synchronous::Full) {
            Ok(store) => break store,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    };
    assert_eq!(
        reopened
            .lease_due(&key("a"), 10_000, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        reopened
            .lease_due(&key("b"), 10_000, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}
