//! The store's disk fails under the running binary (and, for the details of readiness, under
//! the store alone): it fills up, runs low on space, or the SQLite file is deleted. Whatever happens, no callback is answered 200 unless it is durably
//! stored, `/readyz` says 503 while a real callback could not be stored (so a load balancer
//! sends WeChat elsewhere), and what was delivered meanwhile is recorded once the disk is back.
//!
//! The full and nearly full disks are real: a small tmpfs mounted for the test (the tests run as
//! root, as CI does; a mount that fails fails the test).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use wechat_fanout::attempt::DELIVERY_HEADER;
use wechat_fanout::config::{Mode, Synchronous};
use wechat_fanout::store::{
    Accepted, CallbackId, JobId, JobState, NewCallback, NewJob, Readiness, Replay, SqliteStore,
    Store as _, StoreError,
};
use wechat_fanout::wechat::{Kind, SealedRequest};

use crate::operate::{get_admin_of_binary, post_to_binary, write_binary_config};
use crate::support::{
    Binary, StoreView, Target, Wx, eventually, eventually_async, free_addr, job_states_of,
    no_jobs_left, settle, text_xml,
};

/// A tmpfs of a given size mounted on a fresh temporary folder, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temporary folder");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount -t tmpfs failed ({status}): these tests need root, as CI has"
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `bytes` of zeros to a new file `name`; returns its path.
    fn write(&self, name: &str, bytes: usize) -> PathBuf {
        let path = self.path().join(name);
        let mut file = std::fs::File::create(&path).expect("create the filler");
        file.write_all(&vec![0u8; bytes]).expect("write the filler");
        file.sync_all().expect("sync the filler");
        path
    }

    /// Fills the file system to the last byte with a new file `name`; returns its path.
    fn fill(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        let mut file = std::fs::File::create(&path).expect("create the filler");
        for chunk in [1 << 16, 1 << 12, 1] {
            let zeros = vec![0u8; chunk];
            while file.write_all(&zeros).is_ok() {}
        }
        let free = rustix::fs::statvfs(self.path()).expect("statvfs");
        assert_eq!(free.f_bavail, 0, "the tmpfs is full");
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(self.dir.path()).status();
        if !matches!(unmounted, Ok(status) if status.success()) {
            // Something still holds it open: detach it now, the kernel frees it when released.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// The real binary with its store (and config file) in `store_dir`, `store` added to its
/// `[store]` table, and one safe-mode account whose only target is `target`; its log is
/// `log_dir/serve.log`. Returns it, its WeChat port and its config file.
async fn serve(
    store_dir: &Path,
    log_dir: &Path,
    store: &str,
    target: &Target,
) -> (Binary, SocketAddr, PathBuf) {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    // `write_binary_config` ends with the `[store]` table: the first lines here land in it.
    let rest = format!(
        "{store}\n{}{}",
        wx.account("main", ""),
        Wx::target(
            "t",
            &target.url("/hook"),
            "timeout_ms = 10000\nmax_attempts = 1000"
        ),
    );
    let listen = free_addr();
    let config = write_binary_config(store_dir, listen, &rest);
    // The admin API shows what was stored as it came: `job_states_of` finds a callback by its
    // body.
    let text = std::fs::read_to_string(&config).unwrap();
    let shown = text.replacen("[admin]\n", "[admin]\nshow_content = true\n", 1);
    assert_ne!(text, shown);
    std::fs::write(&config, shown).unwrap();
    let mut binary = Binary::serve(&config, listen, &log_dir.join("serve.log")).await;
    binary.wait_listening().await;
    (binary, listen, config)
}

async fn readyz(config: &Path) -> (u16, String) {
    get_admin_of_binary(config, "/readyz").await
}

async fn wait_ready(config: &Path, what: &str) {
    eventually_async(what, || async {
        (readyz(config).await.0 == 200).then_some(())
    })
    .await;
}

/// How many requests with this body the target got.
fn copies(target: &Target, body: &str) -> usize {
    target
        .received()
        .iter()
        .filter(|r| r.body == body.as_bytes())
        .count()
}

/// How long the tests wait after a refused write before the next one: several of the store's
/// checkpoint periods, so a WAL that could restart in the space it has did so meanwhile.
const AFTER_A_REFUSAL: Duration = Duration::from_millis(100);

/// How many refusals in a row, [`AFTER_A_REFUSAL`] apart, show that the store cannot take
/// another callback until space is freed. A full file system does not refuse every write at
/// once: once the checkpointer has copied the WAL back, the WAL restarts in the space its file
/// already has, and commits that fit there are stored, durably. The WAL stays put only once it
/// holds a commit whose pages need the database file to grow, which a full file system
/// refuses; then only what fits in the rest of its file (less than a callback) is written.
const REFUSALS_IN_A_ROW: usize = 3;

/// Writes with `write(n)` for n = 0, 1, … until [`REFUSALS_IN_A_ROW`] in a row are refused
/// (`None`), [`AFTER_A_REFUSAL`] apart; returns what the stored ones gave (`Some`).
async fn write_until_refused<T, F>(what: &str, mut write: impl FnMut(usize) -> F) -> Vec<T>
where
    F: std::future::Future<Output = Option<T>>,
{
    let (mut stored, mut refused) = (Vec::new(), 0);
    for n in 0..5000 {
        match write(n).await {
            Some(value) => {
                stored.push(value);
                refused = 0;
            }
            None => {
                refused += 1;
                if refused == REFUSALS_IN_A_ROW {
                    return stored;
                }
                tokio::time::sleep(AFTER_A_REFUSAL).await;
            }
        }
    }
    panic!("5000 {what} on a full disk and never {REFUSALS_IN_A_ROW} refused in a row");
}

/// Posts new callbacks until [`REFUSALS_IN_A_ROW`] in a row are refused (503); returns those
/// answered 200 meanwhile, which were stored.
async fn post_until_refused(listen: SocketAddr, wx: &Wx) -> Vec<SealedRequest> {
    write_until_refused("callbacks", |n| async move {
        let sealed = wx.seal(&text_xml(&format!("arrives on a full disk, {n}")));
        match post_to_binary(listen, &sealed).await {
            (200, _) => Some(sealed),
            (503, _) => None,
            (status, text) => panic!("a callback on a full disk got {status}: {text}"),
        }
    })
    .await
}

/// The incident: the store's disk fills up. Callbacks get 503 (WeChat resends them), and
/// `/readyz` must say 503 too (it used to commit an empty transaction, which needs no space,
/// and said 200). Deliveries under way succeed meanwhile: their outcomes cannot be written,
/// and used to stay "in flight" until a restart sent them again. Once space is freed: ready
/// again, the resend is accepted and delivered, the earlier deliveries are recorded, and a
/// restart sends nothing twice. Callbacks that still fitted in the space the store already
/// had were answered 200 and are delivered like any other, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_turns_readyz_503_and_what_was_delivered_meanwhile_is_recorded() {
    let disk = Tmpfs::mount("4m");
    let target = Target::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut binary, listen, config) =
        serve(disk.path(), dir.path(), "min_free_bytes = 0", &target).await;
    assert_eq!(readyz(&config).await, (200, "ready\n".to_owned()));

    // Deliveries under way when the disk fills up. Their outcomes come 300 ms apart, each in a
    // commit of its own: the space the WAL has left takes one or two of them, not all.
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let mut during = Vec::new();
    for n in 0..6 {
        target.set_delay(Duration::from_millis(4000 + 300 * n));
        let sealed = wx.seal(&text_xml(&format!("delivered while the disk is full, {n}")));
        assert_eq!(
            post_to_binary(listen, &sealed).await,
            (200, "success".to_owned())
        );
        target.wait_for(during.len() + 1).await;
        during.push(sealed);
    }
    target.set_delay(Duration::ZERO);
    let filler = disk.fill("filler");

    let stored = post_until_refused(listen, &wx).await;
    let refused = wx.seal(&text_xml("refused on a full disk"));
    let (status, text) = post_to_binary(listen, &refused).await;
    assert_eq!(status, 503, "{text}\n{}", binary.log());
    let (status, text) = readyz(&config).await;
    assert_eq!(status, 503, "/readyz on a full disk: {text}");
    assert!(text.starts_with("not ready: "), "{text}");

    // The deliveries under way succeed, and some of their outcomes cannot be written yet.
    let delivery_of = |body: &str| {
        target
            .received()
            .iter()
            .find(|r| r.body == body.as_bytes())
            .and_then(|r| {
                r.headers
                    .get(DELIVERY_HEADER)?
                    .to_str()
                    .ok()
                    .map(str::to_owned)
            })
            .expect("a delivery names itself")
    };
    let deliveries: Vec<String> = during.iter().map(|s| delivery_of(&s.body)).collect();
    let unrecorded_in = |log: &str| {
        deliveries.iter().position(|delivery| {
            log.lines().any(|line| {
                line.contains("could not record an attempt")
                    && line.contains(&format!("delivery={delivery} "))
            })
        })
    };
    let log = binary
        .wait_log("an outcome that cannot be recorded", |log| {
            unrecorded_in(log).is_some()
        })
        .await;
    let unrecorded = &during[unrecorded_in(&log).expect("found above")];
    let admin = StoreView::admin_of(&config);
    assert_eq!(
        job_states_of(&admin, unrecorded.body.as_bytes()).await,
        [JobState::InFlight],
        "the delivered job is still in flight"
    );

    std::fs::remove_file(&filler).unwrap();
    wait_ready(&config, "/readyz to say 200 once space is back").await;
    no_jobs_left(
        &admin,
        "the deliveries made on the full disk to be recorded",
    )
    .await;
    // WeChat's resend of the refused callback.
    assert_eq!(
        post_to_binary(listen, &refused).await,
        (200, "success".to_owned())
    );
    eventually("the resend at the target", || {
        (copies(&target, &refused.body) == 1).then_some(())
    })
    .await;
    no_jobs_left(&admin, "every job recorded").await;

    // A restart sends nothing again: every outcome was recorded.
    binary.terminate();
    let (status, _) = binary.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", binary.log());
    let mut again = Binary::serve(&config, listen, &dir.path().join("again.log")).await;
    again.wait_listening().await;
    settle().await;
    for sealed in during.iter().chain(&stored).chain([&refused]) {
        assert_eq!(copies(&target, &sealed.body), 1, "{:?}", target.received());
    }
    assert_eq!(target.count(), during.len() + stored.len() + 1);
    drop(again);
    drop(binary);
}

/// `store.min_free_bytes`: below it `/readyz` says 503 and why, before the disk is actually
/// full (callbacks are still stored meanwhile), and 200 again once space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_free_space_is_below_min_free_bytes() {
    let disk = Tmpfs::mount("8m");
    let target = Target::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let (binary, listen, config) =
        serve(disk.path(), dir.path(), "min_free_bytes = 4194304", &target).await;
    assert_eq!(readyz(&config).await, (200, "ready\n".to_owned()));

    let filler = disk.write("filler", 5 << 20);
    let (status, text) = readyz(&config).await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.contains("below store.min_free_bytes (4194304)"),
        "the reason names the key: {text}"
    );
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let sealed = wx.seal(&text_xml("low on space, not out of it"));
    assert_eq!(
        post_to_binary(listen, &sealed).await,
        (200, "success".to_owned())
    );
    target.wait_for(1).await;

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(readyz(&config).await, (200, "ready\n".to_owned()));
    drop(binary);
}

/// The incident: someone deletes the SQLite file under the running proxy. New callbacks used to
/// get 200 and went into the deleted file, lost at the next restart. Now they get 503 (WeChat
/// resends them), `/readyz` says 503, and the log has an ERROR naming the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_store_file_refuses_callbacks_and_turns_readyz_503() {
    let target = Target::start(200).await;
    let dir = tempfile::tempdir().unwrap();
    let (mut binary, listen, config) = serve(dir.path(), dir.path(), "", &target).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let before = wx.seal(&text_xml("before the deletion"));
    assert_eq!(
        post_to_binary(listen, &before).await,
        (200, "success".to_owned())
    );
    target.wait_for(1).await;
    assert_eq!(readyz(&config).await, (200, "ready\n".to_owned()));

    let db = dir.path().join("fanout.db");
    std::fs::remove_file(&db).unwrap();
    let after = wx.seal(&text_xml("after the deletion"));
    let (status, text) = post_to_binary(listen, &after).await;
    assert_eq!(status, 503, "{text}\n{}", binary.log());
    let (status, text) = readyz(&config).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains(&db.display().to_string()), "{text}");
    let log = binary
        .wait_log("an ERROR naming the deleted file", |log| {
            log.lines()
                .any(|l| l.contains("ERROR") && l.contains(&db.display().to_string()))
        })
        .await;
    assert!(!log.contains("panicked"), "{log}");
}

/// A callback for account `main` with one job for `t`, accepted as ingress does it: its ids
/// first (which may need a reservation written to the store), then the write.
async fn accept_new(store: &SqliteStore, dedupe_key: &str) -> Result<Accepted, StoreError> {
    let ids = store.next_ids(2).await?;
    store.accept(new_callback(ids, dedupe_key)).await
}

fn new_callback(ids: Vec<i64>, dedupe_key: &str) -> NewCallback {
    NewCallback {
        id: CallbackId(ids[0]),
        account: Arc::from("main"),
        dedupe_key: dedupe_key.to_owned(),
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
            body: Bytes::from(format!("<xml><MsgId>{dedupe_key}</MsgId></xml>")),
            authorizer: None,
            trace: None,
            headers: Vec::new(),
            lane: None,
        }),
        jobs: vec![NewJob {
            id: JobId(ids[1]),
            target: Arc::from("t"),
            lease: None,
            ordered: false,
        }],
        answer_pending_ms: None,
    }
}

/// The store itself on a full disk: callbacks are accepted until [`REFUSALS_IN_A_ROW`] in a
/// row fail to commit (those accepted meanwhile fitted in space the store already had), and
/// readiness fails with its own test write. Once space is back, readiness reports the failed
/// commits once more (its test write succeeds and resets them), then says ready, and callbacks
/// commit again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_commits_fail_in_a_row_readiness_says_so_once_more_then_recovers() {
    let disk = Tmpfs::mount("2m");
    let store = SqliteStore::open(&disk.path().join("store.db"), Synchronous::Full)
        .unwrap()
        .with_readiness(Readiness {
            min_free_bytes: 0,
            probe_bytes: 8192,
        });
    store.check_writable().await.unwrap();
    let filler = disk.fill("filler");
    let store = &store;
    write_until_refused("commits", |n| async move {
        match accept_new(store, &format!("full-{n}")).await {
            Ok(_) => Some(()),
            Err(error) => {
                // The kind a caller can act on, and SQLite's own words.
                assert!(matches!(error, StoreError::Full(_)), "{error:?}");
                assert!(error.to_string().contains("full"), "{error}");
                None
            }
        }
    })
    .await;
    let not_ready = store.check_writable().await.unwrap_err();
    assert!(matches!(not_ready, StoreError::Full(_)), "{not_ready:?}");
    let not_ready = not_ready.to_string();
    assert!(
        not_ready.contains("a test write of 8192 bytes failed"),
        "{not_ready}"
    );

    std::fs::remove_file(&filler).unwrap();
    let once_more = store.check_writable().await.unwrap_err().to_string();
    assert!(
        once_more.contains(&format!("the last {REFUSALS_IN_A_ROW} commits failed")),
        "{once_more}"
    );
    store.check_writable().await.unwrap();
    let stored = accept_new(store, "full-again").await.unwrap();
    assert!(matches!(stored, Accepted::New { .. }), "{stored:?}");
}
