//! Leases and outcomes: leasing the original bytes once, recording retries and deliveries,
//! releasing jobs in flight, stale lease tokens, purging delivered callbacks.

use std::sync::Arc;
use std::time::Duration;

use wechat_fanout::store::{
    Accepted, DeadLetterFilter, Disposition, Job, LeaseToken, Leased, Recorded, Store,
};

use crate::support::{callback, key, lease_one, record, report};

/// Leasing returns the original bytes, never the same job twice, and leased jobs are not due.
pub(crate) async fn lease_returns_original_bytes_once(store: Arc<dyn Store>) {
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
pub(crate) async fn record_reschedules_buries_and_removes(store: Arc<dyn Store>) {
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
pub(crate) async fn purge_keeps_undelivered(store: Arc<dyn Store>) {
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

/// Jobs stored as in flight (handed to a worker) that the worker gives back are due again;
/// releasing a job that is not in flight, or under another lease, changes nothing.
pub(crate) async fn release_returns_jobs_in_flight_to_the_queue(store: Arc<dyn Store>) {
    let new = callback(&*store, "h1", &[("a", true), ("b", false), ("c", true)]).await;
    let tokens: Vec<Option<LeaseToken>> = new.jobs.iter().map(|j| j.lease).collect();
    let Accepted::New {
        jobs, callback: h1, ..
    } = store.accept(new).await.unwrap()
    else {
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

/// An outcome is applied only under the lease its attempt ran under: a stale token (a lease that
/// expired and was taken again) writes nothing, and the job stays with its current holder.
pub(crate) async fn record_with_a_stale_token_is_not_applied(store: Arc<dyn Store>) {
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

/// The same outcome sent twice at once (it may travel in one batch with its copy) applies once:
/// the callback's other target still counts, so the callback is not purged before it is
/// delivered there too.
pub(crate) async fn outcome_sent_twice_at_once_applies_once(store: Arc<dyn Store>) {
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
