use super::writer::{CHECKPOINT_EVERY, OUTCOME_LINGER};
use super::*;
use crate::store::{Disposition, NewJob};

fn callback(key: &str) -> NewCallback {
    NewCallback {
        id: CallbackId(1),
        account: Arc::from("a"),
        dedupe_key: key.to_owned(),
        legacy_dedupe_key: None,
        received_at_ms: 0,
        msg_type: None,
        event: None,
        msg_id: None,
        sender: None,
        instance: None,
        request: Arc::new(Replay {
            query: "q".into(),
            content_type: None,
            body: Bytes::from_static(b"<xml/>"),
            authorizer: None,
            trace: None,
            headers: Vec::new(),
            lane: None,
        }),
        jobs: vec![NewJob {
            id: JobId(2),
            target: Arc::from("t"),
            lease: None,
            ordered: false,
        }],
        answer_pending_ms: None,
    }
}

fn key() -> TargetKey {
    TargetKey {
        account: Arc::from("a"),
        target: Arc::from("t"),
    }
}

fn report(job: &Job, attempt: u32, disposition: Disposition) -> AttemptReport {
    AttemptReport {
        key: key(),
        job: job.id,
        callback: job.callback,
        lease: job.lease,
        attempt,
        at_ms: 0,
        status: Some(503),
        error: Some("target answered 503".into()),
        disposition,
        lane: job.lane.clone(),
    }
}

/// A fresh store (in the returned directory) with one callback whose job is leased.
async fn store_with_a_leased_job() -> (tempfile::TempDir, SqliteStore, Job) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("store.db"), Synchronous::Full).unwrap();
    store.accept(callback("k")).await.unwrap();
    let job = store.lease_due(&key(), 1).await.unwrap().remove(0);
    (dir, store, job)
}

/// An outcome alone is not committed at once: it waits up to OUTCOME_LINGER for company,
/// and is applied then. A command that needs its commit now (here a flush) takes the
/// waiting outcome along: once the flush returns, the outcome is stored.
///
/// In real time, not on a paused clock: the linger is timed by the writer's own OS thread (on
/// a runtime of its own), which no test clock reaches; so this test waits for it.
#[tokio::test]
async fn an_outcome_alone_waits_for_company_and_an_urgent_command_takes_it_along() {
    let (_dir, store, job) = store_with_a_leased_job().await;
    let started = std::time::Instant::now();
    let retry = report(&job, 1, Disposition::RetryIn(Duration::ZERO));
    assert_eq!(store.record(retry).await.unwrap(), Recorded::Applied);
    assert!(
        started.elapsed() >= OUTCOME_LINGER,
        "a lone outcome was committed after {:?}",
        started.elapsed()
    );

    let again = store.lease_due(&key(), 1).await.unwrap().remove(0);
    let store = Arc::new(store);
    let recording = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .record(report(&again, 2, Disposition::Delivered))
                .await
        }
    });
    // Let the outcome reach the writer and wait there.
    tokio::time::sleep(OUTCOME_LINGER / 4).await;
    store.flush().await.unwrap();
    assert!(
        store.queue_depths().await.unwrap().is_empty(),
        "the flush committed without the outcome waiting beside it"
    );
    assert_eq!(recording.await.unwrap().unwrap(), Recorded::Applied);
}

/// Committed pages reach the database file within a few checkpoint periods, long before
/// the writer's own checkpoint (at WRITER_CHECKPOINT_PAGES) would copy them.
///
/// In real time: the checkpointer is an OS thread waking every CHECKPOINT_EVERY on a blocking
/// channel, which no test clock reaches; the test polls the file's size meanwhile.
#[tokio::test]
async fn the_checkpointer_copies_commits_into_the_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path, Synchronous::Full).unwrap();
    let size = || std::fs::metadata(&path).unwrap().len();
    let empty = size();
    for n in 0..200 {
        let mut new = callback(&format!("k{n}"));
        new.id = CallbackId(10 * n + 1);
        new.jobs[0].id = JobId(10 * n + 2);
        new.request = Arc::new(Replay {
            query: "q".into(),
            content_type: None,
            body: Bytes::from(vec![b'x'; 2000]),
            authorizer: None,
            trace: None,
            headers: Vec::new(),
            lane: None,
        });
        assert!(matches!(
            store.accept(new).await.unwrap(),
            Accepted::New { .. }
        ));
    }
    // 200 callbacks of 2 kB: about 100 pages, far below the writer's own threshold.
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while size() < empty + 200 * 2000 && std::time::Instant::now() < until {
        tokio::time::sleep(CHECKPOINT_EVERY / 2).await;
    }
    assert!(
        size() >= empty + 200 * 2000,
        "the database file is still {} bytes ({empty} empty)",
        size()
    );
}

/// The probe must need as much new space as the largest callback: an empty transaction
/// (what readiness used to commit) writes nothing, and so succeeds on a full disk.
#[tokio::test]
async fn the_readiness_probe_writes_a_row_of_its_size_to_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = SqliteStore::open(&path, Synchronous::Full)
        .unwrap()
        .with_readiness(Readiness {
            min_free_bytes: 0,
            probe_bytes: 256 * 1024,
        });
    let wal = dir.path().join("store.db-wal");
    let before = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    store.check_writable().await.unwrap();
    let after = std::fs::metadata(&wal).unwrap().len();
    assert!(
        after >= before + 256 * 1024,
        "the WAL grew from {before} to {after} bytes only"
    );
    let rows: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM readiness_probe", [], |row| row.get(0))
        .unwrap();
    assert_eq!(
        rows, 0,
        "the probe's row is deleted in the same transaction"
    );
}

/// An outcome recorded twice (retried after a commit that was reported failed but reached
/// the disk) must not undo what happened since: here, the retry was leased again.
#[tokio::test]
async fn an_outcome_recorded_again_does_not_undo_a_later_lease() {
    let (_dir, store, job) = store_with_a_leased_job().await;
    let first = report(&job, 1, Disposition::RetryIn(Duration::ZERO));
    assert_eq!(
        store.record(first.clone()).await.unwrap(),
        Recorded::Applied
    );
    let again = store.lease_due(&key(), 1).await.unwrap().remove(0);
    assert_eq!((again.id, again.attempts), (job.id, 1));

    assert_eq!(store.record(first).await.unwrap(), Recorded::LeaseLost);
    assert_eq!(
        store.next_due(&key()).await.unwrap(),
        None,
        "still in flight"
    );
    assert!(store.lease_due(&key(), 1).await.unwrap().is_empty());
    let delivered = store
        .record(report(&again, 2, Disposition::Delivered))
        .await
        .unwrap();
    assert_eq!(delivered, Recorded::Applied);
    assert!(store.queue_depths().await.unwrap().is_empty());
}

/// A file that is not SQLite's (another file at the configured path, or one damaged beyond
/// reading) is named as such, with SQLite's words: not a fault to retry, nor a refusal.
#[test]
fn a_file_that_is_not_a_database_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    std::fs::write(&path, vec![b'x'; 4096]).unwrap();
    let err = SqliteStore::open(&path, Synchronous::Full).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    assert!(err.to_string().contains("not a database"), "{err}");
}
