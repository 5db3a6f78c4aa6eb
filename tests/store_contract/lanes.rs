//! Lanes (`order = "per_user"`), pacing and backfills: one job of a lane at a time in order,
//! starts of a paced target an interval apart, a window of arrivals queued once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wechat_fanout::config::Synchronous;
use wechat_fanout::store::{
    Accepted, AttemptReport, CallbackId, DeadLetterFilter, Disposition, Job, JobId, NewCallback,
    Recorded, SqliteStore, Store, new_lease_token,
};

use crate::backends::{SHORT_LEASE, open_redis, open_when_released, prefix, standalone_urls};
use crate::support::{callback, depth, key, lease_one, record, report, report_for};

/// A paced target's starts are reserved one interval apart, each target on its own; a target
/// idle for a while starts at once again, with no burst saved up.
pub(crate) async fn a_paced_targets_starts_are_reserved_one_interval_apart(store: Arc<dyn Store>) {
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
pub(crate) async fn a_backfill_queues_each_callback_of_a_window_once(store: Arc<dyn Store>) {
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
pub(crate) async fn arrivals_of_one_millisecond_come_page_by_page_in_id_order(
    store: Arc<dyn Store>,
) {
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

/// A lane-ordered job leased at accept (handed to the accepting instance's worker) starts only
/// if its lane has no open job; the store names the one that waits instead, the same when the
/// write is sent twice (a reconnect). Delivered under the accept's lease, the first lets it go.
pub(crate) async fn a_lane_ordered_job_leased_at_accept_starts_only_in_an_empty_lane(
    store: Arc<dyn Store>,
) {
    let waiting_of = |accepted: Accepted| match accepted {
        Accepted::New { waiting, .. } => waiting,
        other => panic!("not new: {other:?}"),
    };
    let first = leased_in_lane(&*store, "w1").await;
    let second = leased_in_lane(&*store, "w2").await;
    assert_eq!(waiting_of(store.accept(first.clone()).await.unwrap()), []);
    assert_eq!(
        waiting_of(store.accept(second.clone()).await.unwrap()),
        [second.jobs[0].id],
        "its lane's first is in flight"
    );
    // Sent again: the same answers.
    assert_eq!(waiting_of(store.accept(first.clone()).await.unwrap()), []);
    assert_eq!(
        waiting_of(store.accept(second.clone()).await.unwrap()),
        [second.jobs[0].id]
    );
    assert!(store.lease_due(&key("o"), 10).await.unwrap().is_empty());
    record_in_lane(&*store, delivered_at_accept(&first), true).await;
    let next = lease_one(&*store, "o").await;
    assert_eq!(keys_of(std::slice::from_ref(&next)), ["w2"]);
    // Its accept's token no longer holds: the lease is the worker's.
    let stale = delivered_at_accept(&second);
    assert_eq!(store.record(stale).await.unwrap(), Recorded::LeaseLost);
    record_in_lane(&*store, report(&next, 1, Disposition::Delivered), false).await;
    assert_eq!(store.next_due(&key("o")).await.unwrap(), None);
}

/// A callback of lane `uW` for `o` whose job the accept is asked to lease.
async fn leased_in_lane(store: &dyn Store, key: &str) -> NewCallback {
    let mut new = in_lane(store, key, "uW", false).await;
    new.jobs[0].lease = Some(new_lease_token());
    new
}

/// The delivery of `new`'s job under the lease its accept asked for.
fn delivered_at_accept(new: &NewCallback) -> AttemptReport {
    let job = &new.jobs[0];
    AttemptReport {
        lane: Some(Arc::from("uW")),
        ..report_for(
            "o",
            new.id,
            job.id,
            job.lease.unwrap_or(0),
            1,
            Disposition::Delivered,
        )
    }
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
pub(crate) async fn a_lane_goes_one_job_at_a_time_in_order(store: Arc<dyn Store>) {
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
    record_in_lane(
        &*store,
        report(&first[0], 1, Disposition::RetryIn(Duration::ZERO)),
        false,
    )
    .await;
    // Its lane empty now: no next job to tell of.
    record_in_lane(&*store, report(&first[1], 1, Disposition::Delivered), false).await;
    let retried = store.lease_due(&key("o"), 10).await.unwrap();
    assert_eq!(keys_of(&retried), ["u1"]);
    record_in_lane(
        &*store,
        report(&retried[0], 2, Disposition::Delivered),
        true,
    )
    .await;
    for (next, more) in [("u2", true), ("u3", false)] {
        let job = lease_one(&*store, "o").await;
        assert_eq!(keys_of(std::slice::from_ref(&job)), [next]);
        assert!(store.lease_due(&key("o"), 10).await.unwrap().is_empty());
        record_in_lane(&*store, report(&job, 1, Disposition::Delivered), more).await;
    }
    assert!(store.lease_due(&key("o"), 10).await.unwrap().is_empty());
    assert_eq!(store.next_due(&key("o")).await.unwrap(), None);
}

/// A dead letter releases its lane at once, and the lane's next job goes; replayed, the letter
/// rejoins its lane at the end, behind the jobs open in it.
pub(crate) async fn a_dead_letter_releases_its_lane_and_rejoins_it_at_the_end(
    store: Arc<dyn Store>,
) {
    for key in ["d1", "d2", "d3"] {
        store
            .accept(in_lane(&*store, key, "uD", false).await)
            .await
            .unwrap();
    }
    let first = lease_one(&*store, "o").await;
    record_in_lane(&*store, report(&first, 1, Disposition::Dead), true).await;
    let second = lease_one(&*store, "o").await;
    assert_eq!(keys_of(std::slice::from_ref(&second)), ["d2"]);
    let replayed = store
        .replay_dead(Some(first.id), &DeadLetterFilter::default(), vec![key("o")])
        .await
        .unwrap();
    assert_eq!(replayed.targets, vec![key("o")]);
    assert!(store.lease_due(&key("o"), 10).await.unwrap().is_empty());
    record_in_lane(&*store, report(&second, 1, Disposition::Delivered), true).await;
    let third = lease_one(&*store, "o").await;
    assert_eq!(keys_of(std::slice::from_ref(&third)), ["d3"]);
    record_in_lane(&*store, report(&third, 1, Disposition::Delivered), true).await;
    let again = lease_one(&*store, "o").await;
    assert_eq!((again.id, again.attempts), (first.id, 1));
    record_in_lane(&*store, report(&again, 2, Disposition::Delivered), false).await;
    assert!(store.lease_due(&key("o"), 10).await.unwrap().is_empty());
    assert_eq!(depth(&*store, "o").await.map_or(0, |d| d.pending), 0);
}

/// A lane's first job handed back (a worker stopping) is still its first: the lane keeps its
/// order; a target removed from the configuration buries its held jobs with the rest.
pub(crate) async fn a_released_first_keeps_its_place_and_unrouted_lanes_are_buried(
    store: Arc<dyn Store>,
) {
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
pub(crate) async fn two_instances_never_hold_two_jobs_of_one_lane(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) {
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
            let key = keys_of(std::slice::from_ref(&job)).remove(0);
            // The lane's last (its fifth) lets no next job go.
            let more = !key.ends_with("-4");
            seen.push(key);
            record_in_lane(&*store, report(&job, 1, Disposition::Delivered), more).await;
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
pub(crate) async fn a_lanes_first_whose_lease_expired_goes_first(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) {
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
    record_in_lane(&*b, report(&taken, 1, Disposition::Delivered), true).await;
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
    for (next, more) in [("k1", true), ("k2", true), ("k3", false)] {
        let job = lease_one(&reopened, "o").await;
        assert_eq!(keys_of(std::slice::from_ref(&job)), [next]);
        assert!(reopened.lease_due(&key("o"), 10).await.unwrap().is_empty());
        record_in_lane(
            &reopened,
            report(&job, job.attempts + 1, Disposition::Delivered),
            more,
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

/// Records a lane-ordered job's outcome, which tells whether it let its lane's next job go
/// (`next_due`): the worker is woken for that, not for every outcome in a lane.
async fn record_in_lane(store: &dyn Store, report: AttemptReport, next_due: bool) {
    let expected = if next_due {
        Recorded::LaneNextDue
    } else {
        Recorded::Applied
    };
    assert_eq!(store.record(report).await.unwrap(), expected);
}
