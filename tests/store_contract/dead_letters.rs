//! Dead letters: burying jobs of unrouted targets or waiting too long, replaying, purging and
//! listing them.

use std::sync::Arc;
use std::time::Duration;

use wechat_fanout::store::{Accepted, DeadLetterFilter, Disposition, Replayed, Store};

use crate::support::{callback, depth, key, lease_one, record, report, report_for};

/// Pending jobs of targets that are not routed become dead letters with the reason; routed
/// targets and jobs in flight are untouched, and a second call finds nothing more to do.
pub(crate) async fn bury_unrouted_turns_orphaned_jobs_into_dead_letters(store: Arc<dyn Store>) {
    let new = callback(
        &*store,
        "o1",
        &[("kept", false), ("gone", false), ("running", true)],
    )
    .await;
    let running = new.jobs[2].lease.unwrap();
    let Accepted::New {
        jobs, callback: o1, ..
    } = store.accept(new).await.unwrap()
    else {
        panic!("o1 is new");
    };
    store
        .accept(callback(&*store, "o2", &[("gone", false)]).await)
        .await
        .unwrap();

    let buried = store
        .bury_unrouted(vec![key("kept")], "retired", 5_000)
        .await
        .unwrap();
    assert_eq!(buried, vec![(key("gone"), 2)]);
    assert_eq!(
        store.next_due(&key("kept")).await.unwrap(),
        Some(Duration::ZERO)
    );
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
    record(
        &*store,
        report_for("running", o1, jobs[2], running, 1, Disposition::Delivered),
    )
    .await;
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
pub(crate) async fn replay_dead_replays_letters_of_routed_targets_only(store: Arc<dyn Store>) {
    store
        .accept(callback(&*store, "d1", &[("a", false), ("gone", false)]).await)
        .await
        .unwrap();
    for target in ["a", "gone"] {
        let job = lease_one(&*store, target).await;
        record(&*store, report(&job, 1, Disposition::Dead)).await;
    }

    let everything = DeadLetterFilter::default();
    let replayed = store
        .replay_dead(None, &everything, vec![key("a")])
        .await
        .unwrap();
    assert_eq!(
        replayed,
        Replayed {
            targets: vec![key("a")],
            not_routed: 1
        }
    );
    assert_eq!(
        store.next_due(&key("a")).await.unwrap(),
        Some(Duration::ZERO)
    );
    let again = lease_one(&*store, "a").await;
    assert_eq!((again.attempts, again.attempt_in_round()), (1, 1));
    let left = store.dead_letters(&everything).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!((&*left[0].target, left[0].died_at_ms), ("gone", 2_000));
    assert_eq!(store.next_due(&key("gone")).await.unwrap(), None);
    let detail = store.dead_letter(left[0].id).await.unwrap().unwrap();
    assert_eq!(detail.attempts.len(), 1);
    assert_eq!(detail.attempts[0].status, Some(500));
    assert_eq!(&detail.request.body[..], b"<xml><MsgId>d1</MsgId></xml>");
    assert!(store.dead_letter(again.id).await.unwrap().is_none());
}

/// Purging dead letters deletes them, by id or by filter, and nothing else; a callback whose
/// last letter is purged is forgotten by the next retention purge.
pub(crate) async fn purge_dead_deletes_letters_by_id_and_by_filter(store: Arc<dyn Store>) {
    let mut letters = Vec::new();
    for (key, targets) in [
        ("e1", &[("a", false), ("b", false)][..]),
        ("e2", &[("a", false)]),
    ] {
        store
            .accept(callback(&*store, key, targets).await)
            .await
            .unwrap();
        for (target, _) in targets {
            let job = lease_one(&*store, target).await;
            record(&*store, report(&job, 1, Disposition::Dead)).await;
            letters.push(job.id);
        }
    }
    let everything = DeadLetterFilter::default();
    assert_eq!(
        store
            .purge_dead(Some(letters[0]), &everything)
            .await
            .unwrap(),
        1
    );
    assert!(store.dead_letter(letters[0]).await.unwrap().is_none());
    assert_eq!(
        store
            .purge_dead(Some(letters[0]), &everything)
            .await
            .unwrap(),
        0
    );
    let only_a = DeadLetterFilter {
        target: Some("a".into()),
        ..DeadLetterFilter::default()
    };
    // By id, a letter of another target than the filter's is left alone.
    assert_eq!(
        store.purge_dead(Some(letters[1]), &only_a).await.unwrap(),
        0
    );
    assert_eq!(store.purge_dead(None, &only_a).await.unwrap(), 1);
    let left = store.dead_letters(&everything).await.unwrap();
    assert_eq!(
        left.iter().map(|l| l.id).collect::<Vec<_>>(),
        vec![letters[1]]
    );
    // e2 has no job left; e1 still has its letter for b.
    assert_eq!(store.purge_delivered(i64::MAX).await.unwrap(), 1);
    assert_eq!(store.purge_dead(None, &everything).await.unwrap(), 1);
    assert_eq!(store.purge_delivered(i64::MAX).await.unwrap(), 1);
    assert!(store.dead_letters(&everything).await.unwrap().is_empty());
}

/// Dead letters are listed newest death first, filtered by account, target and time of death
/// (since inclusive, until exclusive), at most `limit`.
pub(crate) async fn dead_letters_are_filtered_and_newest_first(store: Arc<dyn Store>) {
    let mut died = Vec::new();
    for (n, (target, at_ms)) in [("a", 2_000), ("b", 3_000), ("a", 4_000)]
        .into_iter()
        .enumerate()
    {
        store
            .accept(callback(&*store, &format!("f{n}"), &[(target, false)]).await)
            .await
            .unwrap();
        let job = lease_one(&*store, target).await;
        let mut dead = report(&job, 1, Disposition::Dead);
        dead.at_ms = at_ms;
        record(&*store, dead).await;
        died.push(job.id);
    }
    let list = |filter: DeadLetterFilter| {
        let store = store.clone();
        async move {
            let letters = store.dead_letters(&filter).await.unwrap();
            letters.iter().map(|l| l.id).collect::<Vec<_>>()
        }
    };
    let all = DeadLetterFilter::default();
    assert_eq!(list(all.clone()).await, vec![died[2], died[1], died[0]]);
    let since = DeadLetterFilter {
        since_ms: Some(3_000),
        ..all.clone()
    };
    assert_eq!(list(since).await, vec![died[2], died[1]]);
    let until = DeadLetterFilter {
        until_ms: Some(3_000),
        ..all.clone()
    };
    assert_eq!(list(until).await, vec![died[0]]);
    let target = DeadLetterFilter {
        target: Some("a".into()),
        ..all.clone()
    };
    assert_eq!(list(target).await, vec![died[2], died[0]]);
    let limit = DeadLetterFilter {
        limit: Some(1),
        ..all.clone()
    };
    assert_eq!(list(limit).await, vec![died[2]]);
    let other = DeadLetterFilter {
        account: Some("other".into()),
        ..all.clone()
    };
    assert!(list(other).await.is_empty());
    let letter = &store.dead_letters(&all).await.unwrap()[0];
    assert_eq!(
        (
            letter.account.as_str(),
            letter.msg_type.as_deref(),
            letter.received_at_ms
        ),
        ("main", Some("text"), 1_000)
    );
    assert_eq!((letter.attempts, letter.last_status), (1, Some(500)));
}

/// A listen target's callbacks that waited past its backlog become dead letters with the
/// reason; younger ones, and other targets', keep waiting.
pub(crate) async fn jobs_due_for_too_long_become_dead_letters(store: Arc<dyn Store>) {
    store
        .accept(callback(&*store, "w1", &[("a", false), ("b", false)]).await)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    store
        .accept(callback(&*store, "w2", &[("a", false)]).await)
        .await
        .unwrap();
    let reason = "no listen client connected for listen_backlog_secs (1 s)";
    let n = store
        .bury_waiting(&key("a"), Duration::from_millis(150), reason)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let letters = store
        .dead_letters(&DeadLetterFilter::default())
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].target, "a");
    assert_eq!(letters[0].last_error.as_deref(), Some(reason));
    let a = depth(&*store, "a").await.unwrap();
    assert_eq!((a.pending, a.dead), (1, 1), "{a:?}");
    assert_eq!(
        depth(&*store, "b").await.unwrap().pending,
        1,
        "another target's job waits"
    );
}
