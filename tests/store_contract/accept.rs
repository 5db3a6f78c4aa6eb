//! Accepting callbacks: one callback per dedupe key however often it is resent, the legacy
//! key, what is stored beside a callback (authorizer, trace context), ids and kept values.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wechat_fanout::store::{
    Accepted, Answer, Disposition, JobId, LEGACY_KEY_WINDOW, Replay, Store,
};

use crate::support::{AUTHORIZER, authorized_callback, callback, key, lease_one, record, report};

/// Accepting twice yields one callback; the second sees the saved answer.
pub(crate) async fn insert_if_absent_is_the_dedupe(store: Arc<dyn Store>) {
    let first = store
        .accept(callback(&*store, "k1", &[("a", false), ("b", false)]).await)
        .await
        .unwrap();
    let Accepted::New {
        callback: id, jobs, ..
    } = first
    else {
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
pub(crate) async fn concurrent_resends_create_one_callback(store: Arc<dyn Store>) {
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

/// The same accept sent twice (a resend after a reconnect, with the same client-made ids) writes
/// once and answers `New` with the same ids both times; another copy is a duplicate.
pub(crate) async fn accept_sent_twice_writes_once(store: Arc<dyn Store>) {
    let new = callback(&*store, "t1", &[("a", false), ("b", true)]).await;
    let first = store.accept(new.clone()).await.unwrap();
    let expected = Accepted::New {
        callback: new.id,
        jobs: new.jobs.iter().map(|j| j.id).collect(),
        waiting: vec![],
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
pub(crate) async fn duplicate_sees_the_pending_answer(store: Arc<dyn Store>) {
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

/// The build before keyed some callbacks otherwise (`wechat::dedupe`): a resend whose first copy
/// it stored under its key is a duplicate of that copy, for as long as WeChat may resend
/// ([`LEGACY_KEY_WINDOW`]) and no longer.
pub(crate) async fn a_resend_finds_its_first_copy_under_the_legacy_key(store: Arc<dyn Store>) {
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
pub(crate) async fn callbacks_sharing_a_legacy_key_stay_apart(store: Arc<dyn Store>) {
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

/// Open platform: a callback about an authorizer comes back with it and with WeChat's query
/// alone, whether leased or shown as a dead letter; a callback about none comes back without.
pub(crate) async fn the_authorizer_is_stored_beside_wechats_query(store: Arc<dyn Store>) {
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

/// The callback's trace context (shape version 3) and its replayed headers (WeChat Pay's,
/// version 4) are stored with it and come back with every lease, so an attempt made later,
/// anywhere, joins the callback's trace and sends the headers as they were received.
pub(crate) async fn the_trace_context_comes_back_with_each_lease(store: Arc<dyn Store>) {
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

/// Regression: a delivered job's row was deleted and its id handed to the next job, so a target
/// that dedupes on the delivery id would have dropped a new callback. Ids are never reused, not
/// after delivery, and not after purging every callback.
pub(crate) async fn delivery_ids_are_never_reused(store: Arc<dyn Store>) {
    let mut seen = std::collections::HashSet::new();
    for n in 0..3 {
        let Accepted::New { callback, jobs, .. } = store
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
pub(crate) async fn ids_increase_and_survive_a_double(store: Arc<dyn Store>) {
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
pub(crate) async fn kept_values_read_back_and_are_replaced(store: Arc<dyn Store>) {
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
