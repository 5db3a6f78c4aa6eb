//! The store contract: what ingress and delivery rely on, run against every backend.
//! Each backend gets the same suite through `contract!`: the embedded SQLite store, a standalone
//! Redis and a 3-master Redis Cluster (real servers, started once per test binary; each test has
//! its own key prefix). Behaviour only several processes can show (a lease expiring and another
//! instance taking the job) runs on Redis through `instances!`, two stores on one server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use wechat_fanout::clock::now_ms;
use wechat_fanout::config::Synchronous;
use wechat_fanout::metrics::minutes::{MinuteCount, PENDING, minute_now};
use wechat_fanout::store::{
    Accepted, Answer, AttemptReport, CallbackId, DeadLetterFilter, Disposition, FailedAttempt,
    HistoryEntry, HistoryQuery, Job, JobId, JobState, LEGACY_KEY_WINDOW, LeaseToken, Leased,
    NewCallback, NewJob, QueueDepth, Recorded, RedisOptions, RedisStore, Replay, Replayed,
    SHAPE_VERSION, SqliteStore, Store, StoreError, TargetKey, TargetState, new_lease_token,
};

#[path = "support/redis.rs"]
mod redis_server;
use redis_server::{RedisCluster, RedisSentinelSet, RedisServer};

/// A callback for account `main` with ids from `store`; `(target, true)` is stored leased (with
/// a fresh token, in `jobs[i].lease`).
async fn callback(store: &dyn Store, key: &str, targets: &[(&str, bool)]) -> NewCallback {
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

/// Every callback `query` finds, following its cursors (a page may be short, even empty, and
/// still have one: Redis examines a bounded number per call).
async fn whole_history(store: &dyn Store, mut query: HistoryQuery) -> Vec<HistoryEntry> {
    let mut found = Vec::new();
    for _ in 0..100 {
        let page = store.history(&query).await.unwrap();
        assert!(page.callbacks.len() <= query.limit);
        found.extend(page.callbacks);
        match page.next {
            Some(next) => query.before = Some(next),
            None => return found,
        }
    }
    panic!("the history never ended");
}

async fn history_pages_back_newest_first_and_filters(store: Arc<dyn Store>) {
    // (account, received, msg type, event, MsgId, sender hash)
    let stored = [
        ("main", 1_000, "text", None, Some("m1"), Some("h-ann")),
        (
            "main",
            2_000,
            "event",
            Some("subscribe"),
            None,
            Some("h-bob"),
        ),
        (
            "other",
            2_500,
            "text",
            None,
            Some("m3"),
            Some("h-ann-other"),
        ),
        ("main", 3_000, "text", None, Some("m4"), Some("h-ann")),
        ("main", 3_000, "image", None, Some("m5"), None),
        ("main", 4_000, "event", Some("CLICK"), None, Some("h-bob")),
    ];
    let mut ids = Vec::new();
    for (i, (account, at, msg_type, event, msg_id, sender)) in stored.iter().enumerate() {
        let mut cb = callback(&*store, &format!("history-{i}"), &[("t", false)]).await;
        cb.account = Arc::from(*account);
        cb.received_at_ms = *at;
        cb.msg_type = Some((*msg_type).into());
        cb.event = event.map(Into::into);
        cb.msg_id = msg_id.map(Into::into);
        cb.sender = sender.map(Into::into);
        ids.push(cb.id);
        assert!(matches!(
            store.accept(cb).await.unwrap(),
            Accepted::New { .. }
        ));
    }
    let found = |entries: &[HistoryEntry]| entries.iter().map(|e| e.id).collect::<Vec<_>>();
    let all = HistoryQuery {
        limit: 2,
        ..HistoryQuery::default()
    };
    // Newest first, by time then id (ties at 3,000 ms: the higher id first), pages of 2.
    let every = whole_history(&*store, all.clone()).await;
    assert_eq!(
        found(&every),
        [ids[5], ids[4], ids[3], ids[2], ids[1], ids[0]]
    );
    let first = store.history(&all).await.unwrap();
    assert!(first.callbacks.len() <= 2 && first.next.is_some());
    // What each entry says.
    let click = &every[0];
    assert_eq!(click.account, "main");
    assert_eq!(click.received_at_ms, 4_000);
    assert_eq!(click.event.as_deref(), Some("CLICK"));
    assert_eq!(click.routed, Some(vec!["t".to_owned()]));
    assert_eq!(every[2].msg_id.as_deref(), Some("m4"));
    let search = |change: &dyn Fn(&mut HistoryQuery)| {
        let mut query = HistoryQuery {
            limit: 10,
            ..HistoryQuery::default()
        };
        change(&mut query);
        query
    };
    let by_msg_id = search(&|q| q.msg_id = Some("m3".into()));
    assert_eq!(found(&whole_history(&*store, by_msg_id).await), [ids[2]]);
    let by_user = search(&|q| q.senders = vec!["h-ann".into(), "h-ann-other".into()]);
    assert_eq!(
        found(&whole_history(&*store, by_user).await),
        [ids[3], ids[2], ids[0]]
    );
    let by_event = search(&|q| q.kind = Some("click".into()));
    assert_eq!(found(&whole_history(&*store, by_event).await), [ids[5]]);
    let by_type = search(&|q| q.kind = Some("text".into()));
    assert_eq!(
        found(&whole_history(&*store, by_type).await),
        [ids[3], ids[2], ids[0]]
    );
    let window = search(&|q| {
        q.since_ms = Some(2_000);
        q.until_ms = Some(3_000);
        q.account = Some("main".into());
    });
    assert_eq!(found(&whole_history(&*store, window).await), [ids[1]]);
    let none = search(&|q| q.msg_id = Some("nowhere".into()));
    assert!(whole_history(&*store, none).await.is_empty());
}

/// The history finds callbacks by the instance that accepted them and by where they stand for
/// a target (delivered, pending, failing, dead), and each entry says where it stands for each
/// of its targets, a backfill's too.
async fn history_searches_by_instance_and_target_state(store: Arc<dyn Store>) {
    let mut stored = Vec::new();
    for (key, instance, targets) in [
        ("state-1", Some("one"), &[("a", true), ("b", true)][..]),
        ("state-2", Some("two"), &[("a", true), ("b", true)][..]),
        ("state-3", None, &[("a", false)][..]),
    ] {
        let mut cb = callback(&*store, key, targets).await;
        cb.instance = instance.map(Arc::from);
        store.accept(cb.clone()).await.unwrap();
        stored.push(cb);
    }
    let lease = |cb: &NewCallback, i: usize| cb.jobs[i].lease.unwrap();
    let (one, two, three) = (&stored[0], &stored[1], &stored[2]);
    for (target, cb, i, disposition) in [
        ("a", one, 0, Disposition::Delivered),
        ("b", one, 1, Disposition::RetryIn(Duration::from_secs(3600))),
        ("a", two, 0, Disposition::Dead),
    ] {
        let report = report_for(target, cb.id, cb.jobs[i].id, lease(cb, i), 1, disposition);
        record(&*store, report).await;
    }
    let find = |change: &dyn Fn(&mut HistoryQuery)| {
        let mut query = HistoryQuery {
            limit: 10,
            ..HistoryQuery::default()
        };
        change(&mut query);
        let store = store.clone();
        async move {
            let entries = whole_history(&*store, query).await;
            entries.iter().map(|e| e.id).collect::<Vec<_>>()
        }
    };
    let in_state = |target: &'static str, state: Option<TargetState>| {
        move |q: &mut HistoryQuery| {
            q.target = Some(target.into());
            q.target_state = state;
        }
    };
    assert_eq!(find(&|q| q.instance = Some("one".into())).await, [one.id]);
    assert_eq!(find(&|q| q.instance = Some("two".into())).await, [two.id]);
    use TargetState::{Dead, Delivered, Failing, Pending};
    assert_eq!(find(&in_state("a", Some(Delivered))).await, [one.id]);
    assert_eq!(find(&in_state("a", Some(Dead))).await, [two.id]);
    assert_eq!(find(&in_state("a", Some(Pending))).await, [three.id]);
    assert_eq!(find(&in_state("b", Some(Failing))).await, [one.id]);
    assert_eq!(find(&in_state("b", Some(Pending))).await, [two.id]);
    assert!(find(&in_state("b", Some(Delivered))).await.is_empty());
    assert_eq!(find(&in_state("b", None)).await, [two.id, one.id]);

    // A backfill's job, whose id does not follow the callback's, is found too.
    let job = JobId(store.next_ids(1).await.unwrap()[0]);
    assert_eq!(
        store
            .backfill(&key("b"), vec![(three.id, job)])
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        find(&in_state("b", Some(Pending))).await,
        [three.id, two.id]
    );
    let every = whole_history(
        &*store,
        HistoryQuery {
            limit: 10,
            ..HistoryQuery::default()
        },
    )
    .await;
    let states = |e: &HistoryEntry| {
        (e.targets.iter())
            .map(|t| (t.target.clone(), t.state, t.job))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        states(&every[0]),
        [
            ("a".to_owned(), Pending, Some(three.jobs[0].id)),
            ("b".to_owned(), Pending, Some(job)),
        ]
    );
    assert_eq!(
        states(&every[2]),
        [
            ("a".to_owned(), Delivered, None),
            ("b".to_owned(), Failing, Some(one.jobs[1].id)),
        ]
    );
    assert_eq!(every[2].instance.as_deref(), Some("one"));
    assert_eq!(every[0].instance, None);
    let detail = store.callback(one.id).await.unwrap().unwrap();
    assert_eq!(detail.instance.as_deref(), Some("one"));
}

/// Per-minute counts of several instances make the deployment's: counts add up, readings of
/// the queue keep the highest, and a minute older than what is kept is gone.
async fn minute_counts_of_instances_add_up(store: Arc<dyn Store>) {
    let now = minute_now();
    let count = |minute: i64, target: &str, name: &str, value: i64| MinuteCount {
        minute,
        account: "main".into(),
        target: target.into(),
        name: name.into(),
        value,
    };
    // Two instances' counts of the same minutes.
    for (accepted, pending) in [(3, 7), (4, 5)] {
        store
            .add_minutes(vec![
                count(now, "", "accepted", accepted),
                count(now - 1, "crm", "delivered", 2),
                count(now, "crm", PENDING, pending),
                count(now - 3 * 24 * 60, "", "accepted", 1),
            ])
            .await
            .unwrap();
    }
    let mut read: Vec<(i64, String, String, i64)> = (store.minutes(now - 5).await.unwrap())
        .into_iter()
        .map(|c| (now - c.minute, c.target, c.name, c.value))
        .collect();
    read.sort();
    let own = |ago: i64, target: &str, name: &str, value: i64| {
        (ago, target.to_owned(), name.to_owned(), value)
    };
    assert_eq!(
        read,
        [
            own(0, "", "accepted", 7),
            own(0, "crm", PENDING, 7),
            own(1, "crm", "delivered", 4),
        ]
    );
    // Older than what is kept: forgotten.
    assert!(
        (store.minutes(now - 4 * 24 * 60).await.unwrap())
            .iter()
            .all(|c| c.minute > now - 2 * 24 * 60)
    );
}

fn key(target: &str) -> TargetKey {
    TargetKey {
        account: Arc::from("main"),
        target: Arc::from(target),
    }
}

/// The report of a failed (500) attempt of `job` of `target` under `lease`, at 2,000 ms.
fn report_for(
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
fn report(job: &Job, attempt: u32, disposition: Disposition) -> AttemptReport {
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

async fn record(store: &dyn Store, report: AttemptReport) {
    assert_eq!(store.record(report).await.unwrap(), Recorded::Applied);
}

/// Leases exactly one due job of `target`.
async fn lease_one(store: &dyn Store, target: &str) -> Job {
    let mut jobs = store.lease_due(&key(target), 10).await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    jobs.remove(0)
}

/// Accepting twice yields one callback; the second sees the saved answer.
async fn insert_if_absent_is_the_dedupe(store: Arc<dyn Store>) {
    let first = store
        .accept(callback(&*store, "k1", &[("a", false), ("b", false)]).await)
        .await
        .unwrap();
    let Accepted::New { callback: id, jobs } = first else {
        panic!("first accept must be new: {first:?}")
    };
    assert_eq!(jobs.len(), 2);
    let again = store
        .accept(callback(&*store, "k1", &[("a", false)]).await)
        .await
        .unwrap();
    assert_eq!(
        again,
        Accepted::Duplicate {
            callback: id,
            answer: None,
            answer_pending: None,
        }
    );
    let answer = Answer {
        content_type: Some("text/xml".into()),
        body: Bytes::from_static(b"<xml>reply</xml>"),
    };
    store.save_answer("main", id, answer.clone()).await.unwrap();
    let third = store
        .accept(callback(&*store, "k1", &[("a", false)]).await)
        .await
        .unwrap();
    assert_eq!(
        third,
        Accepted::Duplicate {
            callback: id,
            answer: Some(answer),
            answer_pending: None,
        }
    );
    // Only the first accept created jobs.
    assert_eq!(store.lease_due(&key("a"), 10).await.unwrap().len(), 1);
}

/// Concurrent accepts of two keys (on Redis most of them in one batch): exactly one of each is
/// new, and every other names it as its first copy.
async fn concurrent_resends_create_one_callback(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            let key = if i % 2 == 0 { "same" } else { "other" };
            tokio::spawn(async move {
                let accepted = store
                    .accept(callback(&*store, key, &[("a", false)]).await)
                    .await
                    .unwrap();
                (key, accepted)
            })
        })
        .collect();
    let mut new = std::collections::HashMap::new();
    let mut firsts = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (key, Accepted::New { callback, .. }) => {
                assert!(new.insert(key, callback).is_none(), "{key} stored twice");
            }
            (key, Accepted::Duplicate { callback, .. }) => firsts.push((key, callback)),
        }
    }
    assert_eq!(new.len(), 2);
    assert_eq!(firsts.len(), 30);
    for (key, first) in firsts {
        assert_eq!(first, new[key], "a resend of {key} names another callback");
    }
    assert_eq!(store.lease_due(&key("a"), 100).await.unwrap().len(), 2);
}

/// Leasing returns the original bytes, never the same job twice, and leased jobs are not due.
async fn lease_returns_original_bytes_once(store: Arc<dyn Store>) {
    store
        .accept(callback(&*store, "k2", &[("a", false), ("b", true)]).await)
        .await
        .unwrap();
    let job = lease_one(&*store, "a").await;
    assert_eq!(job.attempts, 0);
    assert_eq!(job.key, key("a"));
    assert_ne!(job.lease, 0);
    assert_eq!(job.request.query, "signature=abc&timestamp=1&nonce=2");
    assert_eq!(job.request.content_type.as_deref(), Some("text/xml"));
    assert_eq!(&job.request.body[..], b"<xml><MsgId>k2</MsgId></xml>");
    assert!(store.lease_due(&key("a"), 10).await.unwrap().is_empty());
    // "b" was stored in flight for its caller: no worker may lease it.
    assert!(store.lease_due(&key("b"), 10).await.unwrap().is_empty());
    assert_eq!(store.next_due(&key("b")).await.unwrap(), None);
    // A new job is due at once.
    store
        .accept(callback(&*store, "k3", &[("c", false)]).await)
        .await
        .unwrap();
    assert_eq!(
        store.next_due(&key("c")).await.unwrap(),
        Some(Duration::ZERO)
    );
}

/// Retry reschedules with the attempt count (by the store's clock); dead stays out of the queue;
/// delivered disappears.
async fn record_reschedules_buries_and_removes(store: Arc<dyn Store>) {
    store
        .accept(callback(&*store, "k4", &[("a", false)]).await)
        .await
        .unwrap();
    let job = lease_one(&*store, "a").await;
    let delay = Duration::from_millis(400);
    record(&*store, report(&job, 1, Disposition::RetryIn(delay))).await;
    let due_in = store.next_due(&key("a")).await.unwrap().unwrap();
    assert!(due_in > Duration::ZERO && due_in <= delay, "{due_in:?}");
    assert!(store.lease_due(&key("a"), 1).await.unwrap().is_empty());
    tokio::time::sleep(due_in + Duration::from_millis(20)).await;
    let again = lease_one(&*store, "a").await;
    assert_eq!((again.id, again.attempts), (job.id, 1));
    assert_ne!(again.lease, job.lease, "a new lease gets a new token");
    record(&*store, report(&again, 2, Disposition::Dead)).await;
    assert_eq!(store.next_due(&key("a")).await.unwrap(), None);
    assert!(store.lease_due(&key("a"), 10).await.unwrap().is_empty());

    store
        .accept(callback(&*store, "k5", &[("d", false)]).await)
        .await
        .unwrap();
    let job = lease_one(&*store, "d").await;
    record(&*store, report(&job, 1, Disposition::Delivered)).await;
    assert_eq!(store.next_due(&key("d")).await.unwrap(), None);
    assert!(store.lease_due(&key("d"), 10).await.unwrap().is_empty());
}

/// Delivered callbacks are purged after retention; undelivered ones never are.
async fn purge_keeps_undelivered(store: Arc<dyn Store>) {
    store
        .accept(callback(&*store, "p1", &[("a", false)]).await)
        .await
        .unwrap();
    store
        .accept(callback(&*store, "p2", &[]).await)
        .await
        .unwrap();
    assert_eq!(store.purge_delivered(500).await.unwrap(), 0);
    assert_eq!(store.purge_delivered(2_000).await.unwrap(), 1);
    // p2 is gone, so it is new again; p1 (pending) is still a duplicate.
    assert!(matches!(
        store
            .accept(callback(&*store, "p2", &[]).await)
            .await
            .unwrap(),
        Accepted::New { .. }
    ));
    assert!(matches!(
        store
            .accept(callback(&*store, "p1", &[]).await)
            .await
            .unwrap(),
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
            .accept(callback(&*store, &format!("r{n}"), &[("a", false)]).await)
            .await
            .unwrap()
        else {
            panic!("r{n} is new");
        };
        assert!(seen.insert(jobs[0]), "job id {} handed out twice", jobs[0]);
        assert!(
            seen.insert(JobId(callback.0)),
            "callback id {callback} handed out twice"
        );
        let job = lease_one(&*store, "a").await;
        record(&*store, report(&job, 1, Disposition::Delivered)).await;
        store.purge_delivered(i64::MAX).await.unwrap();
    }
}

/// Regression: ids were 63-bit numbers, which a browser (the console) and `jq` read as doubles,
/// rounded: two jobs of one callback showed as one, and a listed dead letter's id named another.
/// Ids strictly increase within one store and stay exact as a JSON number read as a double.
async fn ids_increase_and_survive_a_double(store: Arc<dyn Store>) {
    let mut last = 0;
    for n in [1, 3, 1000, 2, 5000, 1] {
        let ids = store.next_ids(n).await.unwrap();
        assert_eq!(ids.len(), n);
        for id in ids {
            assert!(id > last, "{id} after {last}");
            assert_eq!(id as f64 as i64, id, "{id} is not exact as a double");
            assert!(id < 1 << 53, "{id}");
            last = id;
        }
    }
}

/// Kept values (WeChat's callback IP lists) read back as written; a new value replaces the old.
async fn kept_values_read_back_and_are_replaced(store: Arc<dyn Store>) {
    assert_eq!(store.kept_value("lists").await.unwrap(), None);
    store
        .keep_value("lists", Bytes::from_static(b"{\"a\":1}"))
        .await
        .unwrap();
    store
        .keep_value("other", Bytes::from_static(b"x"))
        .await
        .unwrap();
    store
        .keep_value("lists", Bytes::from_static(b"{\"a\":2}"))
        .await
        .unwrap();
    assert_eq!(
        store.kept_value("lists").await.unwrap(),
        Some(Bytes::from_static(b"{\"a\":2}"))
    );
    assert_eq!(
        store.kept_value("other").await.unwrap(),
        Some(Bytes::from_static(b"x"))
    );
}

/// Jobs stored as in flight (handed to a worker) that the worker gives back are due again;
/// releasing a job that is not in flight, or under another lease, changes nothing.
async fn release_returns_jobs_in_flight_to_the_queue(store: Arc<dyn Store>) {
    let new = callback(&*store, "h1", &[("a", true), ("b", false), ("c", true)]).await;
    let tokens: Vec<Option<LeaseToken>> = new.jobs.iter().map(|j| j.lease).collect();
    let Accepted::New { jobs, callback: h1 } = store.accept(new).await.unwrap() else {
        panic!("h1 is new");
    };
    assert!(store.lease_due(&key("a"), 10).await.unwrap().is_empty());
    let leased = |target: &str, job, token| Leased {
        key: key(target),
        job,
        callback: h1,
        token,
    };
    store
        .release(vec![
            leased("a", jobs[0], tokens[0].unwrap()),
            leased("b", jobs[1], 7),
            // Not the token c is held under.
            leased("c", jobs[2], tokens[2].unwrap().wrapping_add(1).max(1)),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.next_due(&key("a")).await.unwrap(),
        Some(Duration::ZERO)
    );
    assert!(store.lease_due(&key("c"), 10).await.unwrap().is_empty());
    // b was pending, not in flight: still exactly one job.
    assert_eq!(store.lease_due(&key("b"), 10).await.unwrap().len(), 1);
    let again = lease_one(&*store, "a").await;
    assert_eq!((again.id, again.attempts), (jobs[0], 0));
    assert_eq!(&again.request.body[..], b"<xml><MsgId>h1</MsgId></xml>");
}

/// Pending jobs of targets that are not routed become dead letters with the reason; routed
/// targets and jobs in flight are untouched, and a second call finds nothing more to do.
async fn bury_unrouted_turns_orphaned_jobs_into_dead_letters(store: Arc<dyn Store>) {
    let new = callback(
        &*store,
        "o1",
        &[("kept", false), ("gone", false), ("running", true)],
    )
    .await;
    let running = new.jobs[2].lease.unwrap();
    let Accepted::New { jobs, callback: o1 } = store.accept(new).await.unwrap() else {
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
async fn replay_dead_replays_letters_of_routed_targets_only(store: Arc<dyn Store>) {
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
async fn purge_dead_deletes_letters_by_id_and_by_filter(store: Arc<dyn Store>) {
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
async fn dead_letters_are_filtered_and_newest_first(store: Arc<dyn Store>) {
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

/// An outcome is applied only under the lease its attempt ran under: a stale token (a lease that
/// expired and was taken again) writes nothing, and the job stays with its current holder.
async fn record_with_a_stale_token_is_not_applied(store: Arc<dyn Store>) {
    store
        .accept(callback(&*store, "s1", &[("a", false)]).await)
        .await
        .unwrap();
    let job = lease_one(&*store, "a").await;
    let stale = Job {
        lease: job.lease.wrapping_add(1).max(1),
        ..job.clone()
    };
    for disposition in [
        Disposition::Delivered,
        Disposition::Dead,
        Disposition::RetryIn(Duration::ZERO),
    ] {
        assert_eq!(
            store.record(report(&stale, 1, disposition)).await.unwrap(),
            Recorded::LeaseLost
        );
    }
    // Still in flight under the real lease: not due, not dead.
    assert!(store.lease_due(&key("a"), 10).await.unwrap().is_empty());
    assert!(
        store
            .dead_letters(&DeadLetterFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    record(&*store, report(&job, 1, Disposition::Delivered)).await;
    // Done: a second outcome under the same lease finds nothing to apply.
    assert_eq!(
        store
            .record(report(&job, 1, Disposition::Delivered))
            .await
            .unwrap(),
        Recorded::LeaseLost
    );
}

/// The same accept sent twice (a resend after a reconnect, with the same client-made ids) writes
/// once and answers `New` with the same ids both times; another copy is a duplicate.
async fn accept_sent_twice_writes_once(store: Arc<dyn Store>) {
    let new = callback(&*store, "t1", &[("a", false), ("b", true)]).await;
    let first = store.accept(new.clone()).await.unwrap();
    let expected = Accepted::New {
        callback: new.id,
        jobs: new.jobs.iter().map(|j| j.id).collect(),
    };
    assert_eq!(first, expected);
    assert_eq!(store.accept(new.clone()).await.unwrap(), expected);
    assert_eq!(store.lease_due(&key("a"), 10).await.unwrap().len(), 1);
    assert!(store.lease_due(&key("b"), 10).await.unwrap().is_empty());
    assert!(matches!(
        store.accept(callback(&*store, "t1", &[("a", false)]).await).await.unwrap(),
        Accepted::Duplicate { callback, .. } if callback == new.id
    ));
}

/// While the first copy's primary relay may still answer, a resend hears how long it may take,
/// and can read the answer once it is saved.
async fn duplicate_sees_the_pending_answer(store: Arc<dyn Store>) {
    let mut new = callback(&*store, "w1", &[("primary", true)]).await;
    new.answer_pending_ms = Some(5_000);
    let id = new.id;
    store.accept(new).await.unwrap();
    let Accepted::Duplicate {
        callback: first,
        answer: None,
        answer_pending: Some(left),
    } = store
        .accept(callback(&*store, "w1", &[("primary", true)]).await)
        .await
        .unwrap()
    else {
        panic!("a resend while the relay runs sees the answer pending");
    };
    assert_eq!(first, id);
    assert!(
        left > Duration::from_secs(3) && left <= Duration::from_secs(5),
        "{left:?}"
    );
    assert_eq!(store.answer("main", id).await.unwrap(), None);
    let answer = Answer {
        content_type: Some("text/xml".into()),
        body: Bytes::from_static(b"<xml>relayed</xml>"),
    };
    store.save_answer("main", id, answer.clone()).await.unwrap();
    assert_eq!(
        store.answer("main", id).await.unwrap(),
        Some(answer.clone())
    );
    assert_eq!(
        store
            .accept(callback(&*store, "w1", &[("primary", true)]).await)
            .await
            .unwrap(),
        Accepted::Duplicate {
            callback: id,
            answer: Some(answer),
            answer_pending: None,
        }
    );
}

/// The same outcome sent twice at once (it may travel in one batch with its copy) applies once:
/// the callback's other target still counts, so the callback is not purged before it is
/// delivered there too.
async fn outcome_sent_twice_at_once_applies_once(store: Arc<dyn Store>) {
    store
        .accept(callback(&*store, "twice", &[("a", false), ("b", false)]).await)
        .await
        .unwrap();
    let job = lease_one(&*store, "a").await;
    let (first, second) = tokio::join!(
        store.record(report(&job, 1, Disposition::Delivered)),
        store.record(report(&job, 1, Disposition::Delivered)),
    );
    let mut outcomes = [first.unwrap(), second.unwrap()];
    outcomes.sort_by_key(|o| *o == Recorded::LeaseLost);
    assert_eq!(outcomes, [Recorded::Applied, Recorded::LeaseLost]);
    assert_eq!(store.purge_delivered(i64::MAX).await.unwrap(), 0);
    let job = lease_one(&*store, "b").await;
    record(&*store, report(&job, 1, Disposition::Delivered)).await;
    assert_eq!(store.purge_delivered(i64::MAX).await.unwrap(), 1);
}

/// The build before keyed some callbacks otherwise (`wechat::dedupe`): a resend whose first copy
/// it stored under its key is a duplicate of that copy, for as long as WeChat may resend
/// ([`LEGACY_KEY_WINDOW`]) and no longer.
async fn a_resend_finds_its_first_copy_under_the_legacy_key(store: Arc<dyn Store>) {
    let old = callback(&*store, "e:old", &[("a", false)]).await;
    store.accept(old.clone()).await.unwrap();
    let mut resend = callback(&*store, "d:new", &[("a", false)]).await;
    resend.legacy_dedupe_key = Some("e:old".into());
    resend.received_at_ms = old.received_at_ms + 20_000;
    assert!(matches!(
        store.accept(resend).await.unwrap(),
        Accepted::Duplicate { callback, .. } if callback == old.id
    ));
    let mut late = callback(&*store, "d:late", &[("a", false)]).await;
    late.legacy_dedupe_key = Some("e:old".into());
    late.received_at_ms = old.received_at_ms + LEGACY_KEY_WINDOW.as_millis() as i64 + 1;
    assert!(matches!(
        store.accept(late).await.unwrap(),
        Accepted::New { .. }
    ));
    assert_eq!(store.lease_due(&key("a"), 10).await.unwrap().len(), 2);
}

/// Callbacks this build tells apart stay apart, though the build before gave them one key.
async fn callbacks_sharing_a_legacy_key_stay_apart(store: Arc<dyn Store>) {
    for key in ["d:first", "d:second", "d:third"] {
        let mut new = callback(&*store, key, &[("a", false)]).await;
        new.legacy_dedupe_key = Some("e:shared".into());
        let accepted = store.accept(new).await.unwrap();
        assert!(
            matches!(accepted, Accepted::New { .. }),
            "{key}: {accepted:?}"
        );
    }
    assert_eq!(store.lease_due(&key("a"), 10).await.unwrap().len(), 3);
}

/// The open platform's authorizer, from ingress.
const AUTHORIZER: &str = "wxauthorized0001";

/// `callback` about [`AUTHORIZER`] (WeChat's query as received, the authorizer beside it).
async fn authorized_callback(
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

/// Open platform: a callback about an authorizer comes back with it and with WeChat's query
/// alone, whether leased or shown as a dead letter; a callback about none comes back without.
async fn the_authorizer_is_stored_beside_wechats_query(store: Arc<dyn Store>) {
    let about = authorized_callback(&*store, "au1", &[("a", false)]).await;
    store.accept(about.clone()).await.unwrap();
    let plain = callback(&*store, "au2", &[("a", false)]).await;
    store.accept(plain.clone()).await.unwrap();
    let jobs = store.lease_due(&key("a"), 10).await.unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for job in &jobs {
        let sent = if job.callback == about.id {
            &about
        } else {
            &plain
        };
        assert_eq!(*job.request, *sent.request);
    }
    let job = jobs.iter().find(|j| j.callback == about.id).unwrap();
    assert_eq!(job.request.authorizer.as_deref(), Some(AUTHORIZER));
    assert_eq!(job.request.query, "signature=abc&timestamp=1&nonce=2");
    record(&*store, report(job, 1, Disposition::Dead)).await;
    let letter = store.dead_letter(job.id).await.unwrap().unwrap();
    assert_eq!(letter.request, *about.request);
    for sent in [&about, &plain] {
        let shown = store.callback(sent.id).await.unwrap().unwrap();
        assert_eq!(shown.request, *sent.request);
    }
}

/// One callback as the admin sees it: what was stored of it and saved for it, and each job it
/// still holds with its state, attempts, due time and failed attempts. A job that is gone was
/// delivered; a callback with no job left is shown until it is purged.
async fn a_callback_is_shown_with_the_jobs_it_still_holds(store: Arc<dyn Store>) {
    let new = callback(&*store, "s1", &[("a", false), ("b", true), ("c", false)]).await;
    let b_lease = new.jobs[1].lease.unwrap();
    let Accepted::New { callback: id, jobs } = store.accept(new.clone()).await.unwrap() else {
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
async fn a_callbacks_jobs_are_found_whatever_their_ids(store: Arc<dyn Store>) {
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
async fn callbacks_are_listed_newest_first(store: Arc<dyn Store>) {
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

/// The callback's trace context (shape version 3) and its replayed headers (WeChat Pay's,
/// version 4) are stored with it and come back with every lease, so an attempt made later,
/// anywhere, joins the callback's trace and sends the headers as they were received.
async fn the_trace_context_comes_back_with_each_lease(store: Arc<dyn Store>) {
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = vec![
        ("wechatpay-serial".to_owned(), "PUB_KEY_ID_0114".to_owned()),
        ("wechatpay-signature".to_owned(), "mfI1+/k8==".to_owned()),
        ("wechatpay-nonce".to_owned(), "d824f2e0: 86d3".to_owned()),
    ];
    let mut traced = callback(&*store, "t1", &[("a", false)]).await;
    traced.request = Arc::new(Replay {
        trace: Some(traceparent.to_owned()),
        headers: headers.clone(),
        ..(*traced.request).clone()
    });
    store.accept(traced).await.unwrap();
    store
        .accept(callback(&*store, "t2", &[("a", false)]).await)
        .await
        .unwrap();
    let mut jobs = store.lease_due(&key("a"), 10).await.unwrap();
    jobs.sort_by_key(|j| j.id);
    let traces: Vec<Option<&str>> = jobs.iter().map(|j| j.request.trace.as_deref()).collect();
    assert_eq!(traces, [Some(traceparent), None]);
    assert_eq!(jobs[0].request.headers, headers);
    assert!(jobs[1].request.headers.is_empty());
    // Again after a failed attempt: the retry is in the same trace.
    record(
        &*store,
        report(&jobs[0], 1, Disposition::RetryIn(Duration::from_millis(1))),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = lease_one(&*store, "a").await;
    assert_eq!(again.request.trace.as_deref(), Some(traceparent));
    assert_eq!(again.request.headers, headers);
    // The admin's views show them too: the callback, and its dead letter.
    let shown = store.callback(again.callback).await.unwrap().unwrap();
    assert_eq!(shown.request.headers, headers);
    record(&*store, report(&again, 2, Disposition::Dead)).await;
    let letter = store.dead_letter(again.id).await.unwrap().unwrap();
    assert_eq!(letter.request.headers, headers);
    assert_eq!(letter.request.trace.as_deref(), Some(traceparent));
}

/// A listen target's callbacks that waited past its backlog become dead letters with the
/// reason; younger ones, and other targets', keep waiting.
async fn jobs_due_for_too_long_become_dead_letters(store: Arc<dyn Store>) {
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

/// The depth of `target` as `queue_depths` tells it (`None`: no job at all).
async fn depth(store: &dyn Store, target: &str) -> Option<QueueDepth> {
    let depths = store.queue_depths().await.unwrap();
    depths.into_iter().find(|d| d.target == target)
}

/// Each target's oldest open job (pending or in flight) is told by when its callback arrived,
/// whether it was never attempted, failed and waits, or is in flight; delivered and dead jobs
/// are not open. What an alert on a target's backlog reads.
async fn the_oldest_open_job_of_each_target_is_told(store: Arc<dyn Store>) {
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

/// A paced target's starts are reserved one interval apart, each target on its own; a target
/// idle for a while starts at once again, with no burst saved up.
async fn a_paced_targets_starts_are_reserved_one_interval_apart(store: Arc<dyn Store>) {
    let every = Duration::from_millis(200);
    let waits = [
        store.pace(&key("crm"), every).await.unwrap(),
        store.pace(&key("crm"), every).await.unwrap(),
        store.pace(&key("crm"), every).await.unwrap(),
    ];
    assert_eq!(waits[0], Duration::ZERO);
    let near = |wait: Duration, want: u64| {
        let want = Duration::from_millis(want);
        wait <= want && wait + Duration::from_millis(100) > want
    };
    assert!(near(waits[1], 200) && near(waits[2], 400), "{waits:?}");
    assert_eq!(store.pace(&key("bi"), every).await.unwrap(), Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        store.pace(&key("crm"), every).await.unwrap(),
        Duration::ZERO
    );
    assert!(near(store.pace(&key("crm"), every).await.unwrap(), 200));
}

/// A window of arrivals lists the account's callbacks in order, page by page, each with the
/// targets it was queued for; a backfill queues each of them once for a target it never had,
/// however often it is asked.
async fn a_backfill_queues_each_callback_of_a_window_once(store: Arc<dyn Store>) {
    let mut stored = Vec::new();
    for (i, targets) in [&[("a", false)][..], &[("a", false), ("b", false)], &[]]
        .into_iter()
        .enumerate()
    {
        let mut new = callback(&*store, &format!("bf{i}"), targets).await;
        new.received_at_ms = 10_000 + 1_000 * i64::try_from(i).unwrap();
        stored.push(new.id);
        store.accept(new).await.unwrap();
    }
    let mut early = callback(&*store, "before", &[]).await;
    early.received_at_ms = 5_000;
    store.accept(early).await.unwrap();

    let first = store
        .arrivals("main", 10_000, 20_000, None, 2)
        .await
        .unwrap();
    let rest = (store.arrivals("main", 10_000, 20_000, first.last().map(|a| a.id), 2))
        .await
        .unwrap();
    let seen: Vec<CallbackId> = first.iter().chain(&rest).map(|a| a.id).collect();
    assert_eq!(seen, stored, "the window, in arrival order, in two pages");
    let routed: Vec<Option<Vec<String>>> = first
        .iter()
        .chain(&rest)
        .map(|a| a.routed.clone())
        .collect();
    assert_eq!(
        routed,
        [
            Some(vec!["a".to_owned()]),
            Some(vec!["a".to_owned(), "b".to_owned()]),
            Some(vec![])
        ]
    );
    assert_eq!(
        first[0].request.body,
        Bytes::from("<xml><MsgId>bf0</MsgId></xml>")
    );
    assert_eq!(first[0].received_at_ms, 10_000);
    assert!(
        store
            .arrivals("other", 0, 20_000, None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    let mut ids = store.next_ids(6).await.unwrap().into_iter().map(JobId);
    let ask = |ids: &mut dyn Iterator<Item = JobId>| {
        stored
            .iter()
            .map(|cb| (*cb, ids.next().unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(store.backfill(&key("b"), ask(&mut ids)).await.unwrap(), 2);
    assert_eq!(
        store.backfill(&key("b"), ask(&mut ids)).await.unwrap(),
        0,
        "once"
    );
    let mut jobs = store.lease_due(&key("b"), 10).await.unwrap();
    jobs.sort_by_key(|j| j.callback);
    let callbacks: Vec<CallbackId> = jobs.iter().map(|j| j.callback).collect();
    // The second had a job of `b` from its accept: it got no second one.
    assert_eq!(callbacks, stored);
    assert_eq!(
        jobs[2].request.body,
        Bytes::from("<xml><MsgId>bf2</MsgId></xml>")
    );
    let listed = store
        .arrivals("main", 10_000, 20_000, None, 10)
        .await
        .unwrap();
    assert!(listed.iter().all(|a| {
        a.routed
            .as_ref()
            .is_some_and(|r| r.contains(&"b".to_owned()))
    }));
    // Delivered, the callback with no other job is done again, and kept for the retention.
    for job in &jobs {
        record(&*store, report(job, 1, Disposition::Delivered)).await;
    }
    assert_eq!(
        store
            .arrivals("main", 10_000, 20_000, None, 10)
            .await
            .unwrap()
            .len(),
        3
    );
}

/// Callbacks of one millisecond (ids across a power of ten: `10` sorts before `9` as text) are
/// listed in id order, and a window read one callback a page misses none and repeats none.
async fn arrivals_of_one_millisecond_come_page_by_page_in_id_order(store: Arc<dyn Store>) {
    let mut stored = Vec::new();
    for i in 0..15 {
        let mut new = callback(&*store, &format!("tie{i}"), &[]).await;
        new.received_at_ms = 30_000;
        stored.push(new.id);
        store.accept(new).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .arrivals("main", 30_000, 30_001, after, 1)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        seen.push(last.id);
        assert!(seen.len() <= stored.len(), "repeated: {seen:?}");
    }
    assert_eq!(seen, stored);
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
            #[tokio::test] ids_increase_and_survive_a_double,
            #[tokio::test] kept_values_read_back_and_are_replaced,
            #[tokio::test] release_returns_jobs_in_flight_to_the_queue,
            #[tokio::test] bury_unrouted_turns_orphaned_jobs_into_dead_letters,
            #[tokio::test] replay_dead_replays_letters_of_routed_targets_only,
            #[tokio::test] purge_dead_deletes_letters_by_id_and_by_filter,
            #[tokio::test] dead_letters_are_filtered_and_newest_first,
            #[tokio::test] record_with_a_stale_token_is_not_applied,
            #[tokio::test] accept_sent_twice_writes_once,
            #[tokio::test] duplicate_sees_the_pending_answer,
            #[tokio::test] outcome_sent_twice_at_once_applies_once,
            #[tokio::test] a_resend_finds_its_first_copy_under_the_legacy_key,
            #[tokio::test] callbacks_sharing_a_legacy_key_stay_apart,
            #[tokio::test] the_authorizer_is_stored_beside_wechats_query,
            #[tokio::test] a_callback_is_shown_with_the_jobs_it_still_holds,
            #[tokio::test] a_callbacks_jobs_are_found_whatever_their_ids,
            #[tokio::test] callbacks_are_listed_newest_first,
            #[tokio::test] the_oldest_open_job_of_each_target_is_told,
            #[tokio::test] the_trace_context_comes_back_with_each_lease,
            #[tokio::test] jobs_due_for_too_long_become_dead_letters,
            #[tokio::test] a_paced_targets_starts_are_reserved_one_interval_apart,
            #[tokio::test] a_backfill_queues_each_callback_of_a_window_once,
            #[tokio::test] arrivals_of_one_millisecond_come_page_by_page_in_id_order,
            #[tokio::test] a_lane_goes_one_job_at_a_time_in_order,
            #[tokio::test] a_dead_letter_releases_its_lane_and_rejoins_it_at_the_end,
            #[tokio::test] a_released_first_keeps_its_place_and_unrouted_lanes_are_buried,
            #[tokio::test] history_pages_back_newest_first_and_filters,
            #[tokio::test] history_searches_by_instance_and_target_state,
            #[tokio::test] minute_counts_of_instances_add_up,
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

static STANDALONE: OnceLock<RedisServer> = OnceLock::new();
static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();

/// A key prefix no other test of this run uses.
fn prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "contract-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The options of a store on the test's Redis, as `[store.redis]`'s defaults would make them.
fn redis_options(urls: Vec<String>, cluster: bool, prefix: &str, lease_ms: u64) -> RedisOptions {
    RedisOptions {
        urls,
        cluster,
        key_prefix: prefix.to_owned(),
        lease_ms,
        max_memory_used_ratio: 0.95,
        min_replicas: 0,
        min_replicas_timeout_ms: 1000,
        accept_linger_ms: 1,
        password: None,
        sentinel_master: None,
        sentinel_password: None,
    }
}

async fn open_redis(urls: Vec<String>, cluster: bool, prefix: &str, lease_ms: u64) -> RedisStore {
    RedisStore::open(&redis_options(urls, cluster, prefix, lease_ms))
        .await
        .expect("the store opens on the test's redis")
}

fn standalone_urls() -> Vec<String> {
    vec![STANDALONE.get_or_init(|| RedisServer::start(&[])).url()]
}

fn cluster_urls() -> Vec<String> {
    CLUSTER.get_or_init(|| RedisCluster::start(3)).urls()
}

async fn redis_standalone() -> (Arc<dyn Store>, ()) {
    let store = open_redis(standalone_urls(), false, &prefix(), 30_000).await;
    (Arc::new(store), ())
}

async fn redis_cluster() -> (Arc<dyn Store>, ()) {
    let store = open_redis(cluster_urls(), true, &prefix(), 30_000).await;
    (Arc::new(store), ())
}

contract!(redis_standalone, redis_standalone().await);
contract!(redis_cluster, redis_cluster().await);

/// How long a lease lasts in the tests of several instances.
const SHORT_LEASE: Duration = Duration::from_millis(400);

/// Two instances (two stores, one server and prefix) with [`SHORT_LEASE`].
async fn two_instances(urls: Vec<String>, cluster: bool) -> (Arc<dyn Store>, Arc<dyn Store>) {
    let prefix = prefix();
    let lease_ms = SHORT_LEASE.as_millis() as u64;
    let a = open_redis(urls.clone(), cluster, &prefix, lease_ms).await;
    let b = open_redis(urls, cluster, &prefix, lease_ms).await;
    (Arc::new(a), Arc::new(b))
}

/// An instance that took a job (here: handed over in memory at accept) and died: once its lease
/// expires, another instance leases the same job (same delivery id, same bytes), and the dead
/// one's late outcome is not applied.
async fn lease_expiry_hands_the_job_to_another_instance(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let new = callback(&*a, "x1", &[("a", true)]).await;
    let (job_id, token, cb) = (new.jobs[0].id, new.jobs[0].lease.unwrap(), new.id);
    a.accept(new).await.unwrap();
    assert!(b.lease_due(&key("a"), 10).await.unwrap().is_empty());
    assert_eq!(b.next_due(&key("a")).await.unwrap(), None);
    tokio::time::sleep(SHORT_LEASE + Duration::from_millis(100)).await;
    let taken = lease_one(&*b, "a").await;
    assert_eq!((taken.id, taken.attempts), (job_id, 0));
    assert_eq!(&taken.request.body[..], b"<xml><MsgId>x1</MsgId></xml>");
    assert_ne!(taken.lease, token);
    assert_eq!(
        a.record(report_for(
            "a",
            cb,
            job_id,
            token,
            1,
            Disposition::Delivered
        ))
        .await
        .unwrap(),
        Recorded::LeaseLost
    );
    record(&*b, report(&taken, 1, Disposition::Delivered)).await;
    assert!(a.lease_due(&key("a"), 10).await.unwrap().is_empty());
}

/// An attempt longer than the lease renews it, so no other instance takes the job meanwhile; a
/// lease that was lost is reported by renew.
async fn renew_keeps_a_lease(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    a.accept(callback(&*a, "y1", &[("a", false)]).await)
        .await
        .unwrap();
    let job = lease_one(&*a, "a").await;
    for _ in 0..4 {
        tokio::time::sleep(SHORT_LEASE / 2).await;
        assert!(a.renew(&[job.leased()]).await.unwrap().is_empty());
        assert!(b.lease_due(&key("a"), 10).await.unwrap().is_empty());
    }
    // Twice the lease has passed since it was taken: only renewals kept it.
    tokio::time::sleep(SHORT_LEASE + Duration::from_millis(100)).await;
    let taken = lease_one(&*b, "a").await;
    assert_eq!(taken.id, job.id);
    assert_eq!(a.renew(&[job.leased()]).await.unwrap(), vec![job.id]);
    record(&*b, report(&taken, 1, Disposition::Delivered)).await;
}

/// Jobs handed over in memory at accept: counted in flight with their callback's arrival as
/// the oldest; renewed, no other instance takes them; released, another does (under a new
/// lease, the old one's outcome not applied). When their holder dies, the one lease call that
/// finds them expired makes every target's job of the callback due, not only its own.
async fn jobs_taken_at_accept_renew_release_and_outlive_their_holder(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) {
    let received = now_ms();
    let mut kept = callback(&*a, "k1", &[("a", true), ("b", true)]).await;
    kept.received_at_ms = received;
    let held: Vec<Leased> = kept
        .jobs
        .iter()
        .map(|j| Leased {
            key: key(&j.target),
            job: j.id,
            callback: kept.id,
            token: j.lease.unwrap(),
        })
        .collect();
    a.accept(kept).await.unwrap();
    let d = depth(&*b, "a").await.unwrap();
    assert_eq!((d.pending, d.in_flight), (0, 1), "{d:?}");
    let oldest = d.oldest_pending_ms.unwrap();
    assert!((oldest - received).abs() < 1_000, "{oldest} vs {received}");
    for _ in 0..4 {
        tokio::time::sleep(SHORT_LEASE / 2).await;
        assert!(a.renew(&held).await.unwrap().is_empty());
        assert!(b.lease_due(&key("a"), 10).await.unwrap().is_empty());
        assert!(b.lease_due(&key("b"), 10).await.unwrap().is_empty());
    }
    a.release(vec![held[0].clone()]).await.unwrap();
    let released = lease_one(&*b, "a").await;
    assert_eq!((released.id, released.attempts), (held[0].job, 0));
    assert_eq!(a.renew(&held[..1]).await.unwrap(), vec![held[0].job]);
    let late = AttemptReport {
        lease: held[0].token,
        ..report(&released, 1, Disposition::Delivered)
    };
    assert_eq!(a.record(late).await.unwrap(), Recorded::LeaseLost);
    record(&*b, report(&released, 1, Disposition::Delivered)).await;

    // Its holder dies: b's job is found once its lease expires, by a lease of another target.
    let lost = callback(&*a, "k2", &[("a", true), ("b", true)]).await;
    let (lost_a, lost_b) = (lost.jobs[0].id, lost.jobs[1].id);
    a.accept(lost).await.unwrap();
    tokio::time::sleep(SHORT_LEASE + Duration::from_millis(100)).await;
    assert!(
        a.renew(&held[1..]).await.unwrap().is_empty(),
        "renewed in time"
    );
    assert_eq!(lease_one(&*b, "a").await.id, lost_a);
    assert_eq!(b.next_due(&key("b")).await.unwrap(), Some(Duration::ZERO));
    let taken = b.lease_due(&key("b"), 10).await.unwrap();
    assert_eq!(
        taken.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![lost_b],
        "k1's job for b is still held"
    );
    assert_eq!(&taken[0].request.body[..], b"<xml><MsgId>k2</MsgId></xml>");
}

/// Dead letters, queue depths and purges cover the whole deployment, not one instance's work:
/// what one instance buried, another lists, shows, counts and replays.
async fn every_instance_sees_the_whole_deployment(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let mut other = callback(&*a, "z1", &[("a", false)]).await;
    other.account = Arc::from("second");
    a.accept(other).await.unwrap();
    a.accept(callback(&*a, "z2", &[("a", false)]).await)
        .await
        .unwrap();
    let job = lease_one(&*a, "a").await;
    record(&*a, report(&job, 1, Disposition::Dead)).await;

    let depths = b.queue_depths().await.unwrap();
    assert_eq!(depths.len(), 2, "{depths:?}");
    let letters = b.dead_letters(&DeadLetterFilter::default()).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].id, job.id);
    assert!(b.dead_letter(job.id).await.unwrap().is_some());
    let replayed = b
        .replay_dead(Some(job.id), &DeadLetterFilter::default(), vec![key("a")])
        .await
        .unwrap();
    assert_eq!(replayed.targets, vec![key("a")]);
    let again = lease_one(&*a, "a").await;
    assert_eq!(again.id, job.id);
    // What one instance buries again, another purges.
    record(&*a, report(&again, 2, Disposition::Dead)).await;
    assert_eq!(
        b.purge_dead(Some(job.id), &DeadLetterFilter::default())
            .await
            .unwrap(),
        1
    );
    assert!(a.dead_letter(job.id).await.unwrap().is_none());
}

/// Two instances taking ids at once, in blocks and one by one, never get the same id.
async fn instances_never_share_an_id(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let take = |store: Arc<dyn Store>| {
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for n in [1, 700, 3, 2000, 1] {
                ids.extend(store.next_ids(n).await.unwrap());
            }
            ids
        })
    };
    let (from_a, from_b) = (take(a), take(b));
    let (from_a, from_b) = (from_a.await.unwrap(), from_b.await.unwrap());
    let mut all: std::collections::HashSet<i64> = from_a.iter().copied().collect();
    assert_eq!(all.len(), from_a.len());
    for id in from_b {
        assert!(all.insert(id), "id {id} handed to both instances");
    }
}

/// A rolling deploy across the change of dedupe keys: an instance of the build before (which
/// knows only its own key, as `b` is used here) finds a callback this build stored, so a resend
/// that reaches it is not delivered twice; once the callback is delivered and purged, both keys
/// are forgotten.
async fn an_older_instance_finds_a_callback_of_this_build_under_its_key(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) {
    let mut new = callback(&*a, "d:new", &[("a", false)]).await;
    new.legacy_dedupe_key = Some("e:old".into());
    let id = new.id;
    a.accept(new).await.unwrap();
    assert!(matches!(
        b.accept(callback(&*b, "e:old", &[("a", false)]).await).await.unwrap(),
        Accepted::Duplicate { callback, .. } if callback == id
    ));
    let job = lease_one(&*a, "a").await;
    record(&*a, report(&job, 1, Disposition::Delivered)).await;
    assert_eq!(a.purge_delivered(i64::MAX).await.unwrap(), 1);
    for (store, key) in [(&b, "e:old"), (&a, "d:new")] {
        let accepted = store
            .accept(callback(&**store, key, &[("a", false)]).await)
            .await
            .unwrap();
        assert!(
            matches!(accepted, Accepted::New { .. }),
            "{key}: {accepted:?}"
        );
    }
}

/// Two instances pacing one target count against one limit: their reservations interleave.
async fn instances_share_a_targets_pace(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let every = Duration::from_millis(300);
    let mut waits = Vec::new();
    for store in [&a, &b, &a, &b] {
        waits.push(store.pace(&key("crm"), every).await.unwrap());
    }
    for (i, wait) in waits.iter().enumerate() {
        let want = every * u32::try_from(i).unwrap();
        assert!(
            *wait <= want && *wait + Duration::from_millis(150) > want,
            "{waits:?}"
        );
    }
}

/// Tests of several instances for one Redis deployment: `mod $backend` with one test each.
macro_rules! instances {
    ($backend:ident, $urls:expr, $cluster:expr) => {
        mod $backend {
            use super::*;
            instances!(@test $urls, $cluster, lease_expiry_hands_the_job_to_another_instance);
            instances!(@test $urls, $cluster, renew_keeps_a_lease);
            instances!(@test $urls, $cluster, jobs_taken_at_accept_renew_release_and_outlive_their_holder);
            instances!(@test $urls, $cluster, every_instance_sees_the_whole_deployment);
            instances!(@test $urls, $cluster, instances_never_share_an_id);
            instances!(@test $urls, $cluster, an_older_instance_finds_a_callback_of_this_build_under_its_key);
            instances!(@test $urls, $cluster, instances_share_a_targets_pace);
            instances!(@test $urls, $cluster, two_instances_never_hold_two_jobs_of_one_lane);
            instances!(@test $urls, $cluster, a_lanes_first_whose_lease_expired_goes_first);
        }
    };
    (@test $urls:expr, $cluster:expr, $test:ident) => {
        #[tokio::test]
        async fn $test() {
            let (a, b) = two_instances($urls, $cluster).await;
            super::$test(a, b).await;
        }
    };
}

instances!(redis_standalone_instances, standalone_urls(), false);
instances!(redis_cluster_instances, cluster_urls(), true);

/// Opens the SQLite store at `path` once the previous store's writer thread has let go of it
/// (it holds the file until its channel closes, a moment after the store is dropped).
async fn open_when_released(path: &std::path::Path) -> SqliteStore {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match SqliteStore::open(path, Synchronous::Full) {
            Ok(store) => return store,
            Err(e) if std::time::Instant::now() > until => {
                panic!("{} does not open: {e}", path.display())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// SQLite only: the file has one owner, and jobs in flight at a crash are due again on reopen.
#[tokio::test]
async fn sqlite_reopen_resumes_jobs_in_flight_and_refuses_a_second_owner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let store = SqliteStore::open(&path, Synchronous::Full).unwrap();
        let err = SqliteStore::open(&path, Synchronous::Full).unwrap_err();
        assert!(matches!(err, StoreError::Refused(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("in use by another wechat-fanout process"),
            "{err}"
        );
        store
            .accept(callback(&store, "r1", &[("a", true), ("b", false)]).await)
            .await
            .unwrap();
        assert_eq!(store.lease_due(&key("b"), 10).await.unwrap().len(), 1);
        store.flush().await.unwrap();
    }
    let reopened = open_when_released(&path).await;
    assert_eq!(reopened.lease_due(&key("a"), 10).await.unwrap().len(), 1);
    assert_eq!(reopened.lease_due(&key("b"), 10).await.unwrap().len(), 1);
}

/// SQLite only: ids are reserved in blocks recorded in the file, so a restart after every row
/// was delivered and purged (nothing left to read the highest id from) still never hands out an
/// id again.
#[tokio::test]
async fn sqlite_reopen_after_everything_was_purged_never_hands_out_an_id_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let mut last = JobId(0);
    for round in 0..3 {
        let store = open_when_released(&path).await;
        let Accepted::New { callback: id, jobs } = store
            .accept(callback(&store, &format!("r{round}"), &[("a", false)]).await)
            .await
            .unwrap()
        else {
            panic!("r{round} is new");
        };
        assert!(
            id.0 > last.0 && jobs[0].0 > id.0,
            "{id}, {jobs:?} after {last}"
        );
        last = jobs[0];
        let job = lease_one(&store, "a").await;
        record(&store, report(&job, 1, Disposition::Delivered)).await;
        assert_eq!(store.purge_delivered(i64::MAX).await.unwrap(), 1);
        store.flush().await.unwrap();
        let rows: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT (SELECT COUNT(*) FROM callbacks) + (SELECT COUNT(*) FROM jobs)",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(
            rows, 0,
            "round {round}: every row is gone before the restart"
        );
    }
}

/// Issue 25: ids go on from the last one used after a clean stop (`close`), instead of jumping
/// by the rest of a reserved block; after a crash (no `close`) they still skip it, and after a
/// clean stop with a purge in between they are still never handed out twice.
#[tokio::test]
async fn sqlite_ids_go_on_after_a_clean_stop_and_skip_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = open_when_released(&path).await;
    let first = store.next_ids(3).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let store = open_when_released(&path).await;
    let after_stop = store.next_ids(1).await.unwrap()[0];
    assert_eq!(after_stop, first[2] + 1, "{first:?}");
    // A crash: no close. The rest of the block is skipped, never handed out twice.
    drop(store);
    let store = open_when_released(&path).await;
    let after_crash = store.next_ids(1).await.unwrap()[0];
    assert!(
        after_crash > after_stop + 1_000,
        "{after_crash} after {after_stop}"
    );
    store.close().await.unwrap();
}

/// The same on Redis, whose counter every instance shares: an instance gives back the rest of
/// its block only if no other instance reserved a block after it.
#[tokio::test]
async fn redis_ids_go_on_after_a_clean_stop_unless_another_instance_reserved_since() {
    let urls = standalone_urls();
    let prefix = prefix();
    let a = open_redis(urls.clone(), false, &prefix, 30_000).await;
    let first = a.next_ids(2).await.unwrap();
    a.close().await.unwrap();
    let b = open_redis(urls.clone(), false, &prefix, 30_000).await;
    assert_eq!(b.next_ids(1).await.unwrap()[0], first[1] + 1);
    let c = open_redis(urls, false, &prefix, 30_000).await;
    let c_first = c.next_ids(1).await.unwrap()[0];
    // b's block is no longer the latest: b gives nothing back, and c's ids stay c's.
    b.close().await.unwrap();
    let d = open_redis(standalone_urls(), false, &prefix, 30_000).await;
    assert!(d.next_ids(1).await.unwrap()[0] > c_first + 1_000);
}

/// SQLite only: a file made before leases had tokens (no `jobs.lease`, no
/// `callbacks.answer_due`) opens, gains the columns, and its pending job is delivered.
#[tokio::test]
async fn sqlite_file_from_before_lease_tokens_opens_and_its_jobs_resume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let old = rusqlite::Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE callbacks (id INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL,
                dedupe_key TEXT NOT NULL, received_at INTEGER NOT NULL, msg_type TEXT, event TEXT,
                query TEXT NOT NULL, content_type TEXT, body BLOB NOT NULL, answer_type TEXT,
                answer BLOB, UNIQUE (account, dedupe_key));
             CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, callback_id INTEGER NOT NULL,
                account TEXT NOT NULL, target TEXT NOT NULL, state INTEGER NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0, retry_base INTEGER NOT NULL DEFAULT 0,
                next_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, last_status INTEGER,
                last_error TEXT);
             INSERT INTO callbacks (account, dedupe_key, received_at, query, body)
                VALUES ('main', 'old', 1000, 'a=1', x'3c786d6c2f3e');
             INSERT INTO jobs (callback_id, account, target, state, next_at, updated_at)
                VALUES (1, 'main', 'a', 1, 1000, 1000);",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path, Synchronous::Full).unwrap();
    let job = lease_one(&store, "a").await;
    assert_eq!((job.id, &job.request.body[..]), (JobId(1), &b"<xml/>"[..]));
    record(&store, report(&job, 1, Disposition::Delivered)).await;
    let Accepted::New { jobs, .. } = store
        .accept(callback(&store, "new", &[("a", false)]).await)
        .await
        .unwrap()
    else {
        panic!("new is new");
    };
    assert!(jobs[0] > JobId(1));
}

/// The authorizer of the callbacks stored by the build before, in their query's tag.
const OLD_AUTHORIZER: &str = "wxstoredbefore01";
/// WeChat's query of those callbacks, and the query as that build stored it.
const OLD_QUERY: &str = "signature=old&timestamp=1&nonce=2";

fn tagged_old_query() -> String {
    format!("#{OLD_AUTHORIZER}#{OLD_QUERY}")
}

/// The job of a callback the build before stored (its authorizer in the query's tag, no shape
/// version), job id `job`, body `body`, pending for target `a`: this build leases it with the
/// authorizer read from the tag and WeChat's query alone, shows it so as a dead letter, and
/// delivers it once replayed.
async fn a_callback_of_the_build_before_is_delivered(store: &dyn Store, job: JobId, body: &[u8]) {
    let expected = Replay {
        query: OLD_QUERY.into(),
        content_type: Some("text/xml".into()),
        body: Bytes::copy_from_slice(body),
        authorizer: Some(OLD_AUTHORIZER.into()),
        trace: None,
        headers: Vec::new(),
        lane: None,
    };
    let leased = lease_one(store, "a").await;
    assert_eq!((leased.id, &*leased.request), (job, &expected));
    record(store, report(&leased, 1, Disposition::Dead)).await;
    let letter = store.dead_letter(job).await.unwrap().unwrap();
    assert_eq!(letter.request, expected);
    let shown = store
        .callback(letter.letter.callback)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(shown.request, expected);
    let states: Vec<_> = shown.jobs.iter().map(|j| (j.id, j.state)).collect();
    assert_eq!(states, [(job, JobState::Dead)]);
    store
        .replay_dead(Some(job), &DeadLetterFilter::default(), vec![key("a")])
        .await
        .unwrap();
    let again = lease_one(store, "a").await;
    assert_eq!((again.id, &*again.request), (job, &expected));
    record(store, report(&again, 2, Disposition::Delivered)).await;
    assert!(store.queue_depths().await.unwrap().is_empty());
}

/// SQLite only, a rolling deploy's two directions. A file the build before made (its tables,
/// a callback as its INSERT wrote it: the authorizer in the query's tag) opens, and its job is
/// delivered with the authorizer; so is one that build writes into the file after this build
/// added its columns (started again on it: a rollback). And a callback this build stores keeps
/// the tagged query in `query`, where that build reads it.
#[tokio::test]
async fn sqlite_callbacks_of_the_build_before_and_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    // As the build before wrote a callback and its pending job (`?1`: callback id, `?2`: job id).
    let insert_as_before = |conn: &rusqlite::Connection, callback: i64, job: i64, body: &str| {
        conn.execute(
            "INSERT INTO callbacks (id, account, dedupe_key, received_at, msg_type, event, query, content_type, body, answer_due)
             VALUES (?1, 'main', ?3, 1000, 'text', NULL, ?4, 'text/xml', ?5, NULL)",
            rusqlite::params![callback, job, format!("before-{callback}"), tagged_old_query(), body.as_bytes()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO jobs (id, callback_id, account, target, state, attempts, next_at, updated_at, lease)
             VALUES (?2, ?1, 'main', 'a', 0, 0, 1000, 1000, 0)",
            rusqlite::params![callback, job],
        )
        .unwrap();
    };
    {
        let before = rusqlite::Connection::open(&path).unwrap();
        before
            .execute_batch(
                "CREATE TABLE callbacks (id INTEGER PRIMARY KEY, account TEXT NOT NULL,
                    dedupe_key TEXT NOT NULL, received_at INTEGER NOT NULL, msg_type TEXT,
                    event TEXT, query TEXT NOT NULL, content_type TEXT, body BLOB NOT NULL,
                    answer_type TEXT, answer BLOB, answer_due INTEGER,
                    UNIQUE (account, dedupe_key));
                 CREATE TABLE jobs (id INTEGER PRIMARY KEY, callback_id INTEGER NOT NULL,
                    account TEXT NOT NULL, target TEXT NOT NULL, state INTEGER NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0, retry_base INTEGER NOT NULL DEFAULT 0,
                    next_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, last_status INTEGER,
                    last_error TEXT, lease INTEGER NOT NULL DEFAULT 0);",
            )
            .unwrap();
        insert_as_before(&before, 1, 2, "<xml>made before</xml>");
    }
    let store = SqliteStore::open(&path, Synchronous::Full).unwrap();
    a_callback_of_the_build_before_is_delivered(&store, JobId(2), b"<xml>made before</xml>").await;

    let rollback = rusqlite::Connection::open(&path).unwrap();
    rollback.busy_timeout(Duration::from_secs(5)).unwrap();
    insert_as_before(&rollback, 10, 11, "<xml>written by a rollback</xml>");
    a_callback_of_the_build_before_is_delivered(
        &store,
        JobId(11),
        b"<xml>written by a rollback</xml>",
    )
    .await;

    let new = authorized_callback(&store, "for-the-build-before", &[("a", false)]).await;
    store.accept(new.clone()).await.unwrap();
    store.flush().await.unwrap();
    let stored: (String, String, u32) = rollback
        .query_row(
            "SELECT query, authorizer, shape_version FROM callbacks WHERE id = ?1",
            [new.id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .unwrap();
    let tagged = format!("#{AUTHORIZER}#{}", new.request.query);
    assert_eq!(stored, (tagged, AUTHORIZER.to_owned(), SHAPE_VERSION));
}

/// A plain connection to the tests' Redis (standalone or Cluster), for what the build before's
/// scripts wrote and read.
enum RawRedis {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl RawRedis {
    async fn connect(urls: &[String], cluster: bool) -> RawRedis {
        if cluster {
            let client = redis::cluster::ClusterClient::new(urls.to_vec()).unwrap();
            RawRedis::Cluster(client.get_async_connection().await.unwrap())
        } else {
            let client = redis::Client::open(urls[0].as_str()).unwrap();
            RawRedis::Single(client.get_multiplexed_async_connection().await.unwrap())
        }
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> T {
        match self {
            RawRedis::Single(c) => cmd.query_async(c).await.unwrap(),
            RawRedis::Cluster(c) => cmd.query_async(c).await.unwrap(),
        }
    }
}

/// Redis, a rolling deploy's first direction: a callback an instance of the build before
/// stored (the hash fields, due set and sets its accept script wrote: no `v`, no `authorizer`,
/// the authorizer in the query's tag) is leased and delivered by this build with the
/// authorizer.
async fn redis_a_callback_stored_by_the_build_before_is_delivered(
    urls: Vec<String>,
    cluster: bool,
) {
    let prefix = prefix();
    let store = open_redis(urls.clone(), cluster, &prefix, 30_000).await;
    let ids = store.next_ids(2).await.unwrap();
    let (callback, job) = (ids[0], ids[1]);
    let base = format!("{prefix}:{{main}}");
    let body = "<xml>stored before</xml>";
    let mut raw = RawRedis::connect(&urls, cluster).await;
    let () = raw
        .query(
            redis::cmd("SADD")
                .arg(format!("{prefix}:accounts"))
                .arg("main"),
        )
        .await;
    let () = raw
        .query(
            redis::cmd("HSET")
                .arg(format!("{base}:dedupe"))
                .arg("before")
                .arg(callback),
        )
        .await;
    let () = raw
        .query(
            redis::cmd("HSET")
                .arg(format!("{base}:cb:{callback}"))
                .arg(&["dedupe", "before", "received", "1000"])
                .arg("query")
                .arg(tagged_old_query())
                .arg(&[
                    "body", body, "open", "1", "msg_type", "text", "ctype", "text/xml",
                ]),
        )
        .await;
    let () = raw
        .query(
            redis::cmd("HSET")
                .arg(format!("{base}:job:{job}"))
                .arg("cb")
                .arg(callback)
                .arg(&[
                    "target", "a", "state", "p", "lease", "0", "attempts", "0", "base", "0",
                ]),
        )
        .await;
    // Due since it arrived, long ago by Redis's clock.
    let () = raw
        .query(
            redis::cmd("ZADD")
                .arg(format!("{base}:due:a"))
                .arg(1000)
                .arg(job),
        )
        .await;
    let () = raw
        .query(redis::cmd("SADD").arg(format!("{base}:targets")).arg("a"))
        .await;
    a_callback_of_the_build_before_is_delivered(&store, JobId(job), body.as_bytes()).await;
}

/// Redis, a rolling deploy's other direction: a callback this build stores keeps the tagged
/// query in its `query` field, which an instance of the build before reads (its lease script
/// takes `query`, `ctype` and `body`, and it parses the tag), beside the shape's own fields.
async fn redis_the_build_before_reads_a_callback_of_this_build(urls: Vec<String>, cluster: bool) {
    let prefix = prefix();
    let store = open_redis(urls.clone(), cluster, &prefix, 30_000).await;
    let new = authorized_callback(&store, "for-the-build-before", &[("a", false)]).await;
    store.accept(new.clone()).await.unwrap();
    let mut raw = RawRedis::connect(&urls, cluster).await;
    let (query, content_type, body, authorizer, version): (String, String, Vec<u8>, String, u32) =
        raw.query(
            redis::cmd("HMGET")
                .arg(format!("{prefix}:{{main}}:cb:{}", new.id))
                .arg(&["query", "ctype", "body", "authorizer", "v"]),
        )
        .await;
    assert_eq!(query, format!("#{AUTHORIZER}#{}", new.request.query));
    assert_eq!(content_type, "text/xml");
    assert_eq!(body, new.request.body);
    assert_eq!((&*authorizer, version), (AUTHORIZER, SHAPE_VERSION));
}

/// The tests of the build before's forms on Redis: `mod $backend` with one test each.
macro_rules! build_before {
    ($backend:ident, $urls:expr, $cluster:expr) => {
        mod $backend {
            #[tokio::test]
            async fn a_callback_stored_by_the_build_before_is_delivered() {
                super::redis_a_callback_stored_by_the_build_before_is_delivered($urls, $cluster)
                    .await;
            }

            #[tokio::test]
            async fn the_build_before_reads_a_callback_of_this_build() {
                super::redis_the_build_before_reads_a_callback_of_this_build($urls, $cluster).await;
            }
        }
    };
}

build_before!(
    redis_standalone_build_before,
    super::standalone_urls(),
    false
);
build_before!(redis_cluster_build_before, super::cluster_urls(), true);

/// Redis only: at its `maxmemory` (with `noeviction`, as it should run) Redis refuses writes:
/// the store says it is full, in Redis's words, rather than an error this build does not expect.
#[tokio::test]
async fn redis_at_its_maxmemory_is_full() {
    let server = RedisServer::start(&["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]);
    let store = open_redis(vec![server.url()], false, &prefix(), 30_000).await;
    let body = Bytes::from(vec![b'x'; 64 * 1024]);
    for n in 0.. {
        let mut new = callback(&store, &format!("m{n}"), &[("a", false)]).await;
        new.request = Arc::new(Replay {
            body: body.clone(),
            ..(*new.request).clone()
        });
        match store.accept(new).await {
            Ok(_) => assert!(n < 1_000, "{n} callbacks of 64 KiB stored in 4 MiB"),
            Err(e) => {
                assert!(matches!(e, StoreError::Full(_)), "{e:?}");
                assert!(e.to_string().contains("OOM"), "{e}");
                break;
            }
        }
    }
}

/// Redis only, issue 25: readiness fails once Redis uses `max_memory_used_percent` of its
/// `maxmemory`, while writes still succeed: the load balancer and an alert act before Redis
/// refuses them. `usage` is the fraction an alert reads; without a `maxmemory` there is none.
#[tokio::test]
async fn redis_is_not_ready_before_its_maxmemory_refuses_writes() {
    let unlimited = open_redis(standalone_urls(), false, &prefix(), 30_000).await;
    assert_eq!(unlimited.usage().await.unwrap(), None);
    let server = RedisServer::start(&["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]);
    let store = RedisStore::open(&RedisOptions {
        max_memory_used_ratio: 0.9,
        ..redis_options(vec![server.url()], false, &prefix(), 30_000)
    })
    .await
    .unwrap();
    store.check_writable().await.unwrap();
    let body = Bytes::from(vec![b'x'; 32 * 1024]);
    let mut n = 0;
    while store.usage().await.unwrap().unwrap() < 0.9 {
        let mut new = callback(&store, &format!("f{n}"), &[("a", false)]).await;
        new.request = Arc::new(Replay {
            body: body.clone(),
            ..(*new.request).clone()
        });
        store.accept(new).await.unwrap();
        n += 1;
        assert!(n < 1_000, "{n} callbacks of 32 KiB stored in 8 MiB");
    }
    let refused = store.check_writable().await.unwrap_err();
    assert!(matches!(refused, StoreError::Full(_)), "{refused:?}");
    assert!(
        refused
            .to_string()
            .contains("store.redis.max_memory_used_percent"),
        "{refused}"
    );
    // Not yet full: a callback is still stored.
    let one_more = callback(&store, "still", &[("a", false)]).await;
    assert!(matches!(
        store.accept(one_more).await,
        Ok(Accepted::New { .. })
    ));
}

/// Redis only: SIGKILLed and started again (AOF `always`), Redis keeps every accepted callback;
/// while it is down the store fails (it never claims a write), and the same store value works
/// again once Redis is back, without being reopened.
#[tokio::test]
async fn redis_killed_and_restarted_keeps_what_was_accepted_and_the_store_recovers() {
    let mut server = RedisServer::start(&[]);
    let store = open_redis(vec![server.url()], false, &prefix(), 30_000).await;
    let kept = callback(&store, "before", &[("a", false)]).await;
    store.accept(kept.clone()).await.unwrap();

    server.signal("KILL");
    let down = store
        .accept(callback(&store, "during", &[("a", false)]).await)
        .await;
    // Down is a fault to retry later, not a refusal or a reply this build does not expect.
    assert!(
        matches!(
            down,
            Err(StoreError::Unavailable(_) | StoreError::Timeout(_))
        ),
        "{down:?}"
    );
    assert!(matches!(
        store.check_writable().await,
        Err(StoreError::Unavailable(_) | StoreError::Timeout(_))
    ));

    server.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.check_writable().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not recover"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let job = lease_one(&store, "a").await;
    assert_eq!(job.id, kept.jobs[0].id);
    assert_eq!(&job.request.body[..], b"<xml><MsgId>before</MsgId></xml>");
    assert!(matches!(
        store
            .accept(callback(&store, "during", &[("a", false)]).await)
            .await
            .unwrap(),
        Accepted::New { .. }
    ));
}

/// Redis behind a Sentinel, issue 26: the primary's machine dies (SIGKILL) and the Sentinel
/// promotes the replica; the same store value, neither reopened nor reconfigured, follows it by
/// itself within seconds: it writes to the new primary, reads what the replica had, and stays
/// there although the old primary comes back at once (restarted on its port and data, a primary
/// for some seconds until the Sentinel makes it the new one's replica). Also what asynchronous replication loses: a write the old primary
/// acknowledged while the replica's link was cut is gone (the gap `min_replicas` closes).
#[tokio::test]
#[allow(clippy::print_stderr)] // its figures, for --nocapture
async fn redis_sentinel_a_store_follows_a_failover_by_itself() {
    let mut set = RedisSentinelSet::start();
    assert_eq!(set.primary_port(), Some(set.primary.port));
    let prefix = prefix();
    let store = open_behind_sentinel(&set, &prefix, 0).await;
    let before = callback(&store, "before", &[("a", false)]).await;
    let before_job = before.jobs[0].id;
    assert!(matches!(
        store.accept(before).await.unwrap(),
        Accepted::New { .. }
    ));
    // Everything so far is on the replica (a later write acknowledged covers the earlier ones).
    assert!(set.primary.command("SET kept 1").starts_with("+OK"));
    assert_eq!(set.primary.values("WAIT 1 2000"), ["1"]);

    set.replica.send_signal("STOP");
    RedisSentinelSet::cut_replica_links(&set.primary);
    assert!(set.primary.command("SET lost 1").starts_with("+OK"));
    set.primary.signal("KILL");
    let killed = std::time::Instant::now();
    set.replica.send_signal("CONT");
    let promoted = set.await_primary(set.replica.port, Duration::from_secs(15));
    // The old primary comes back at once, on its port and data: a primary again for a few
    // seconds, until the Sentinel makes it a replica. The store must not go back to it.
    set.primary.restart();

    // The same store value writes again, to the new primary, by itself.
    let mut refused = 0;
    let after = loop {
        let new = callback(&store, "after", &[("a", false)]).await;
        let id = new.id;
        match store.accept(new).await {
            Ok(Accepted::New { .. }) => break id,
            Ok(other) => panic!("a first copy taken for a duplicate: {other:?}"),
            Err(e) => {
                assert!(
                    matches!(e, StoreError::Unavailable(_) | StoreError::Timeout(_)),
                    "{e:?}"
                );
                refused += 1;
            }
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the store did not follow the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let recovered = killed.elapsed();
    store.check_writable().await.unwrap();
    let stored_at = |server: &RedisServer, id: CallbackId| {
        server.values(&format!("EXISTS {prefix}:{{main}}:cb:{}", id.0))
    };
    assert_eq!(stored_at(&set.replica, after), ["1"]);
    let due: Vec<JobId> = store
        .lease_due(&key("a"), 10)
        .await
        .unwrap()
        .iter()
        .map(|job| job.id)
        .collect();
    assert!(due.contains(&before_job), "{due:?}");
    assert_eq!(set.replica.values("EXISTS kept"), ["1"]);
    assert_eq!(set.replica.values("EXISTS lost"), ["0"]);
    eprintln!(
        "promoted {promoted:?} and written again {recovered:?} after the primary died \
         ({refused} accepts refused meanwhile)"
    );

    // The old primary is the new one's replica now; writes still go to the new one.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while set.primary.info_field("role").as_deref() != Some("slave") {
        assert!(
            std::time::Instant::now() < deadline,
            "the old primary did not become a replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = callback(&store, "last", &[("a", false)]).await;
    let last_id = last.id;
    assert!(matches!(
        store.accept(last).await.unwrap(),
        Accepted::New { .. }
    ));
    assert_eq!(stored_at(&set.replica, last_id), ["1"]);
    assert_eq!(set.primary_port(), Some(set.replica.port));
}

/// A store that asks `set`'s Sentinel for the primary, with `min_replicas` (waiting 300 ms).
async fn open_behind_sentinel(
    set: &RedisSentinelSet,
    prefix: &str,
    min_replicas: u32,
) -> RedisStore {
    RedisStore::open(&RedisOptions {
        sentinel_master: Some(redis_server::MASTER_NAME.to_owned()),
        min_replicas,
        min_replicas_timeout_ms: 300,
        accept_linger_ms: 1,
        ..redis_options(vec![set.sentinel_url()], false, prefix, 30_000)
    })
    .await
    .expect("the store opens through the Sentinel")
}

/// What [`a_failover_after_the_replica_stalled`] saw.
#[derive(Debug)]
struct Stalled {
    /// Accepts answered (Ok: WeChat would get 200) while the replica was stalled.
    answered: usize,
    /// Accepts refused as not replicated meanwhile (503).
    refused: usize,
    /// Callbacks answered (before or during the stall) that the promoted replica lacks.
    lost: Vec<CallbackId>,
}

/// Issue 26's sequence on the store: callbacks accepted; the replica stalls (SIGSTOP) and its
/// link is cut on the primary; two seconds of accepts (and a resend of an earlier callback);
/// the primary's machine dies (SIGKILL), the replica resumes at once and is promoted, the old
/// primary comes back on its port and data. Then the same store accepts again by itself, and
/// what it had answered is looked for on the new primary.
#[allow(clippy::print_stderr)] // its figures, for --nocapture
async fn a_failover_after_the_replica_stalled(min_replicas: u32) -> Stalled {
    let mut set = RedisSentinelSet::start();
    let prefix = prefix();
    let store = open_behind_sentinel(&set, &prefix, min_replicas).await;
    let mut answered = Vec::new();
    for n in 0..5 {
        let new = callback(&store, &format!("before {n}"), &[("a", false)]).await;
        let id = new.id;
        assert!(matches!(
            store.accept(new).await.unwrap(),
            Accepted::New { .. }
        ));
        answered.push(id);
    }

    set.replica.send_signal("STOP");
    RedisSentinelSet::cut_replica_links(&set.primary);
    // A resend of a callback stored before: the write it is answered from may be replicated,
    // but this copy cannot know that without the replicas' word.
    let resend = callback(&store, "before 0", &[("a", false)]).await;
    let resent = store.accept(resend).await;
    // Ids: a block reserved now is not on the replica either.
    let fresh = open_behind_sentinel(&set, &prefix, min_replicas).await;
    let ids = fresh.next_ids(1).await;
    let ready = store.check_writable().await;
    if min_replicas > 0 {
        assert!(
            matches!(resent, Err(StoreError::NotReplicated(_))),
            "{resent:?}"
        );
        assert!(matches!(ids, Err(StoreError::NotReplicated(_))), "{ids:?}");
        assert!(
            matches!(ready, Err(StoreError::NotReplicated(_))),
            "{ready:?}"
        );
    } else {
        assert!(
            matches!(resent, Ok(Accepted::Duplicate { .. })),
            "{resent:?}"
        );
        assert!(ids.is_ok() && ready.is_ok(), "{ids:?} {ready:?}");
    }
    let (mut during, mut refused) = (0, 0);
    let stalled = std::time::Instant::now();
    while stalled.elapsed() < Duration::from_secs(2) {
        let new = callback(
            &store,
            &format!("stalled {during} {refused}"),
            &[("a", false)],
        )
        .await;
        let id = new.id;
        match store.accept(new).await {
            Ok(Accepted::New { .. }) => {
                answered.push(id);
                during += 1;
            }
            Err(StoreError::NotReplicated(_)) => refused += 1,
            other => panic!("{other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    set.primary.signal("KILL");
    let killed = std::time::Instant::now();
    set.replica.send_signal("CONT");
    let promoted = set.await_primary(set.replica.port, Duration::from_secs(20));
    set.primary.restart();
    // With min_replicas = 1 the new primary has no replica until the Sentinel has made the old
    // one its replica and it has synced: 503 until then (the recipe has two replicas).
    let within = Duration::from_secs(if min_replicas > 0 { 45 } else { 20 });
    loop {
        let new = callback(&store, "after", &[("a", false)]).await;
        if store.accept(new).await.is_ok() {
            break;
        }
        assert!(
            killed.elapsed() < within,
            "the store did not follow the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    store.check_writable().await.unwrap();
    let recovered = killed.elapsed();
    let lost: Vec<CallbackId> = answered
        .into_iter()
        .filter(|id| {
            set.replica
                .values(&format!("EXISTS {prefix}:{{main}}:cb:{}", id.0))
                != ["1"]
        })
        .collect();
    eprintln!(
        "min_replicas = {min_replicas}: {during} answered and {refused} refused while the replica \
         stalled; {} answered callbacks lost; promoted {promoted:?} and writing again \
         {recovered:?} after the primary died",
        lost.len()
    );
    Stalled {
        answered: during,
        refused,
        lost,
    }
}

/// With `min_replicas = 1`, nothing answered is lost: while the replica stalls every accept,
/// resend, id block and readiness check says not replicated (503), and after the failover
/// every callback answered before is on the new primary.
#[tokio::test]
async fn redis_sentinel_min_replicas_loses_nothing_answered_when_the_primary_dies() {
    let seen = a_failover_after_the_replica_stalled(1).await;
    assert_eq!(seen.answered, 0, "{seen:?}");
    assert!(seen.refused > 0, "{seen:?}");
    assert_eq!(seen.lost, [], "{seen:?}");
}

/// Without it (`min_replicas = 0`, asynchronous replication) the same failover loses what was
/// answered while the replica stalled: the gap the setting closes, shown so that the test above
/// can fail.
#[tokio::test]
async fn redis_sentinel_without_min_replicas_a_failover_loses_answered_callbacks() {
    let seen = a_failover_after_the_replica_stalled(0).await;
    assert_eq!(seen.refused, 0, "{seen:?}");
    assert!(seen.answered > 0, "{seen:?}");
    assert!(!seen.lost.is_empty(), "{seen:?}");
}

// ---- Lanes (`order = "per_user"`) ----

/// A callback of `lane` (`dedupe key` `key`) for the lane-ordered target `o`, and for `p`
/// (not ordered) when `with_plain`.
async fn in_lane(store: &dyn Store, key: &str, lane: &str, with_plain: bool) -> NewCallback {
    let targets: &[(&str, bool)] = if with_plain {
        &[("o", false), ("p", false)]
    } else {
        &[("o", false)]
    };
    let mut new = callback(store, key, targets).await;
    let mut request = (*new.request).clone();
    request.lane = Some(lane.to_owned());
    new.request = Arc::new(request);
    new.jobs[0].ordered = true;
    new
}

/// The dedupe keys (`<MsgId>`) of leased jobs, in the order leased.
fn keys_of(jobs: &[Job]) -> Vec<String> {
    jobs.iter()
        .map(|job| {
            let body = String::from_utf8_lossy(&job.request.body).into_owned();
            body.trim_start_matches("<xml><MsgId>")
                .trim_end_matches("</MsgId></xml>")
                .to_owned()
        })
        .collect()
}

/// One lane's jobs go one at a time, in the order stored: the second is not leased while the
/// first is in flight or waiting to be retried; another lane's is; a target without order
/// gets them all at once; a delivery, and a dead letter, let the next go.
async fn a_lane_goes_one_job_at_a_time_in_order(store: Arc<dyn Store>) {
    for (key, lane) in [("u1", "uA"), ("u2", "uA"), ("v1", "uB"), ("u3", "uA")] {
        store
            .accept(in_lane(&*store, key, lane, true).await)
            .await
            .unwrap();
    }
    let plain = store.lease_due(&key("p"), 10).await.unwrap();
    assert_eq!(plain.len(), 4, "a target without order is not held back");
    assert!(plain.iter().all(|job| job.lane.is_none()));
    let first = store.lease_due(&key("o"), 10).await.unwrap();
    assert_eq!(keys_of(&first), ["u1", "v1"], "each lane's first only");
    assert_eq!(first[0].lane.as_deref(), Some("uA"));
    assert_eq!(first[0].request.lane.as_deref(), Some("uA"));
    let pending = depth(&*store, "o").await.unwrap();
    assert_eq!(
        (pending.pending, pending.in_flight),
        (2, 2),
        "held jobs count as pending"
    );
    // In flight: the lane waits.
    assert!(store.lease_due(&key("o"), 10).await.unwrap().is_empty());
    // Waiting to be retried: the lane still waits, the retry is its first.
    record(
        &*store,
        report(&first[0], 1, Disposition::RetryIn(Duration::ZERO)),
    )
    .await;
    record(&*store, report(&first[1], 1, Disposition::Delivered)).await;
    let retried = store.lease_due(&key("o"), 10).await.unwrap();
    assert_eq!(keys_of(&retried), ["u1"]);
    record(&*store, report(&retried[0], 2, Disposition::Delivered)).await;
    for next in ["u2", "u3"] {
        let job = lease_one(&*store, "o").await;
        assert_eq!(keys_of(std::slice::from_ref(&job)), [next]);
        assert!(store.lease_due(&key("o"), 10).await.unwrap().is_empty());
        record(&*store, report(&job, 1, Disposition::Delivered)).await;
    }
    assert!(store.lease_due(&key("o"), 10).await.unwrap().is_empty());
    assert_eq!(store.next_due(&key("o")).await.unwrap(), None);
}

/// A dead letter releases its lane at once, and the lane's next job goes; replayed, the letter
/// rejoins its lane at the end, behind the jobs open in it.
async fn a_dead_letter_releases_its_lane_and_rejoins_it_at_the_end(store: Arc<dyn Store>) {
    for key in ["d1", "d2", "d3"] {
        store
            .accept(in_lane(&*store, key, "uD", false).await)
            .await
            .unwrap();
    }
    let first = lease_one(&*store, "o").await;
    record(&*store, report(&first, 1, Disposition::Dead)).await;
    let second = lease_one(&*store, "o").await;
    assert_eq!(keys_of(std::slice::from_ref(&second)), ["d2"]);
    let replayed = store
        .replay_dead(Some(first.id), &DeadLetterFilter::default(), vec![key("o")])
        .await
        .unwrap();
    assert_eq!(replayed.targets, vec![key("o")]);
    assert!(store.lease_due(&key("o"), 10).await.unwrap().is_empty());
    record(&*store, report(&second, 1, Disposition::Delivered)).await;
    let third = lease_one(&*store, "o").await;
    assert_eq!(keys_of(std::slice::from_ref(&third)), ["d3"]);
    record(&*store, report(&third, 1, Disposition::Delivered)).await;
    let again = lease_one(&*store, "o").await;
    assert_eq!((again.id, again.attempts), (first.id, 1));
    record(&*store, report(&again, 2, Disposition::Delivered)).await;
    assert!(store.lease_due(&key("o"), 10).await.unwrap().is_empty());
    assert_eq!(depth(&*store, "o").await.map_or(0, |d| d.pending), 0);
}

/// A lane's first job handed back (a worker stopping) is still its first: the lane keeps its
/// order; a target removed from the configuration buries its held jobs with the rest.
async fn a_released_first_keeps_its_place_and_unrouted_lanes_are_buried(store: Arc<dyn Store>) {
    for key in ["r1", "r2"] {
        store
            .accept(in_lane(&*store, key, "uR", false).await)
            .await
            .unwrap();
    }
    let first = lease_one(&*store, "o").await;
    store.release(vec![first.leased()]).await.unwrap();
    let again = lease_one(&*store, "o").await;
    assert_eq!(keys_of(std::slice::from_ref(&again)), ["r1"]);
    store.release(vec![again.leased()]).await.unwrap();
    let buried = store.bury_unrouted(vec![], "gone", 5_000).await.unwrap();
    assert_eq!(buried, vec![(key("o"), 2)]);
    assert!(store.lease_due(&key("o"), 10).await.unwrap().is_empty());
    assert_eq!(
        depth(&*store, "o").await.map(|d| (d.pending, d.dead)),
        Some((0, 2))
    );
}

/// Two instances leasing at once, callbacks of 4 lanes arriving on both: at no time are two
/// jobs of one lane in flight, and each lane's jobs are leased in the order stored.
async fn two_instances_never_hold_two_jobs_of_one_lane(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    let lanes = ["uA", "uB", "uC", "uD"];
    for i in 0..5 {
        for (n, lane) in lanes.iter().enumerate() {
            let on: &Arc<dyn Store> = if (i + n) % 2 == 0 { &a } else { &b };
            let new = in_lane(&**on, &format!("{lane}-{i}"), lane, false).await;
            on.accept(new).await.unwrap();
        }
    }
    let mut seen: Vec<String> = Vec::new();
    for round in 0..40 {
        let o = key("o");
        let (from_a, from_b) = tokio::join!(a.lease_due(&o, 10), b.lease_due(&o, 10));
        let leased: Vec<(Arc<dyn Store>, Job)> =
            (from_a.unwrap().into_iter().map(|j| (a.clone(), j)))
                .chain(from_b.unwrap().into_iter().map(|j| (b.clone(), j)))
                .collect();
        let mut lanes_in_flight: Vec<&str> = leased
            .iter()
            .map(|(_, j)| j.lane.as_deref().unwrap())
            .collect();
        lanes_in_flight.sort_unstable();
        let all = lanes_in_flight.len();
        lanes_in_flight.dedup();
        assert_eq!(
            all,
            lanes_in_flight.len(),
            "round {round}: two jobs of one lane in flight"
        );
        if leased.is_empty() {
            break;
        }
        for (store, job) in leased {
            seen.extend(keys_of(std::slice::from_ref(&job)));
            record(&*store, report(&job, 1, Disposition::Delivered)).await;
        }
    }
    assert_eq!(seen.len(), 20, "{seen:?}");
    for lane in lanes {
        let order: Vec<&String> = seen.iter().filter(|k| k.starts_with(lane)).collect();
        let expected: Vec<String> = (0..5).map(|i| format!("{lane}-{i}")).collect();
        assert_eq!(order, expected.iter().collect::<Vec<_>>());
    }
}

/// An instance that died with a lane's first job in flight: once its lease expires the other
/// instance takes that job, not the next of the lane; the dead one's late outcome does not
/// release the lane.
async fn a_lanes_first_whose_lease_expired_goes_first(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    for key in ["e1", "e2"] {
        a.accept(in_lane(&*a, key, "uE", false).await)
            .await
            .unwrap();
    }
    let first = lease_one(&*a, "o").await;
    assert!(b.lease_due(&key("o"), 10).await.unwrap().is_empty());
    tokio::time::sleep(SHORT_LEASE + Duration::from_millis(100)).await;
    let taken = lease_one(&*b, "o").await;
    assert_eq!(taken.id, first.id);
    assert_eq!(
        a.record(report(&first, 1, Disposition::Delivered))
            .await
            .unwrap(),
        Recorded::LeaseLost
    );
    assert!(b.lease_due(&key("o"), 10).await.unwrap().is_empty());
    record(&*b, report(&taken, 1, Disposition::Delivered)).await;
    let second = lease_one(&*a, "o").await;
    assert_eq!(keys_of(&[second]), ["e2"]);
}

/// SQLite only: after a restart a lane keeps its order: its first, in flight at the crash, is
/// due again and still first; the jobs behind it still wait.
#[tokio::test]
async fn sqlite_reopen_keeps_each_lanes_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let store = SqliteStore::open(&path, Synchronous::Full).unwrap();
        for key in ["k1", "k2", "k3"] {
            store
                .accept(in_lane(&store, key, "uK", false).await)
                .await
                .unwrap();
        }
        let first = lease_one(&store, "o").await;
        assert_eq!(keys_of(&[first]), ["k1"]);
        store.flush().await.unwrap();
    }
    let reopened = open_when_released(&path).await;
    for next in ["k1", "k2", "k3"] {
        let job = lease_one(&reopened, "o").await;
        assert_eq!(keys_of(std::slice::from_ref(&job)), [next]);
        assert!(reopened.lease_due(&key("o"), 10).await.unwrap().is_empty());
        record(
            &reopened,
            report(&job, job.attempts + 1, Disposition::Delivered),
        )
        .await;
    }
}

/// Redis only: a lane whose first an older build delivered without releasing the lane (its
/// record script knows no lanes) is let go by the next look at the target's lanes.
#[tokio::test]
async fn redis_a_lane_left_blocked_by_an_older_build_is_let_go() {
    let prefix = prefix();
    let store = open_redis(standalone_urls(), false, &prefix, 30_000).await;
    for key in ["b1", "b2"] {
        store
            .accept(in_lane(&store, key, "uO", false).await)
            .await
            .unwrap();
    }
    let first = lease_one(&store, "o").await;
    // What the build before's record script does with a delivered job: it deletes it, and
    // leaves the lane as it was.
    let client = redis::Client::open(standalone_urls()[0].as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let base = format!("{prefix}:{{main}}");
    let _: () = redis::cmd("DEL")
        .arg(format!("{base}:job:{}", first.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("ZREM")
        .arg(format!("{base}:lease:o"))
        .arg(first.id.0)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(store.lease_due(&key("o"), 10).await.unwrap().is_empty());
    store.tend_lanes(&key("o")).await.unwrap();
    let second = lease_one(&store, "o").await;
    assert_eq!(keys_of(&[second]), ["b2"]);
}

/// Redis only: an accept writes its callback's hash ahead of the script, in one transaction.
/// A resend's hash (a copy alone, copies beside their first in one batch or the next, a copy
/// of one whose jobs were leased at accept) is deleted again, so only first copies have one; and after the
/// server lost its scripts (`SCRIPT FLUSH`, as after a restart), the next accept loads the
/// script and is stored once.
#[tokio::test]
async fn a_resend_leaves_no_hash_behind_and_a_lost_script_is_loaded_again() {
    let prefix = prefix();
    let store: Arc<dyn Store> =
        Arc::new(open_redis(standalone_urls(), false, &prefix, 30_000).await);
    let first = store
        .accept(callback(&*store, "r1", &[("a", true), ("b", true)]).await)
        .await
        .unwrap();
    assert!(matches!(first, Accepted::New { .. }), "{first:?}");
    let again = store
        .accept(callback(&*store, "r1", &[("a", true), ("b", true)]).await)
        .await
        .unwrap();
    assert!(matches!(again, Accepted::Duplicate { .. }), "{again:?}");
    concurrent_resends_create_one_callback(store.clone()).await;
    let client = redis::Client::open(standalone_urls()[0].as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let reader = conn.clone();
    let hashes = || {
        let mut conn = reader.clone();
        let pattern = format!("{prefix}:{{main}}:cb:*");
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut conn)
                .await
                .unwrap();
            keys.len()
        }
    };
    assert_eq!(hashes().await, 3, "r1, same and other");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let next = store
        .accept(callback(&*store, "r2", &[("a", false)]).await)
        .await
        .unwrap();
    assert!(matches!(next, Accepted::New { .. }), "{next:?}");
    let resend = store
        .accept(callback(&*store, "r2", &[("a", false)]).await)
        .await
        .unwrap();
    assert!(matches!(resend, Accepted::Duplicate { .. }), "{resend:?}");
    assert_eq!(hashes().await, 4);
}
