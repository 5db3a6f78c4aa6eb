//! Several instances on one Redis: expired leases taken over, renewals, ids, pacing and dead
//! letters shared across the deployment.

use std::sync::Arc;
use std::time::Duration;

use wechat_fanout::clock::now_ms;
use wechat_fanout::store::{
    Accepted, AttemptReport, DeadLetterFilter, Disposition, Leased, Recorded, Store,
};

use crate::backends::SHORT_LEASE;
use crate::support::{callback, depth, key, lease_one, record, report, report_for};

/// An instance that took a job (here: handed over in memory at accept) and died: once its lease
/// expires, another instance leases the same job (same delivery id, same bytes), and the dead
/// one's late outcome is not applied.
pub(crate) async fn lease_expiry_hands_the_job_to_another_instance(
    a: Arc<dyn Store>,
    b: Arc<dyn Store>,
) {
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
pub(crate) async fn renew_keeps_a_lease(a: Arc<dyn Store>, b: Arc<dyn Store>) {
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
pub(crate) async fn jobs_taken_at_accept_renew_release_and_outlive_their_holder(
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
pub(crate) async fn every_instance_sees_the_whole_deployment(a: Arc<dyn Store>, b: Arc<dyn Store>) {
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
pub(crate) async fn instances_never_share_an_id(a: Arc<dyn Store>, b: Arc<dyn Store>) {
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
pub(crate) async fn an_older_instance_finds_a_callback_of_this_build_under_its_key(
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
pub(crate) async fn instances_share_a_targets_pace(a: Arc<dyn Store>, b: Arc<dyn Store>) {
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
