//! The history: paging back newest first, its filters and searches, and per-minute counts of
//! several instances.

use std::sync::Arc;
use std::time::Duration;

use wechat_fanout::metrics::minutes::{MinuteCount, PENDING, minute_now};
use wechat_fanout::store::{
    Accepted, Disposition, HistoryEntry, HistoryQuery, JobId, NewCallback, Store, TargetState,
};

use crate::support::{callback, key, record, report_for};

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

pub(crate) async fn history_pages_back_newest_first_and_filters(store: Arc<dyn Store>) {
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
pub(crate) async fn history_searches_by_instance_and_target_state(store: Arc<dyn Store>) {
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
pub(crate) async fn minute_counts_of_instances_add_up(store: Arc<dyn Store>) {
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
