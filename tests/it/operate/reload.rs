//! Configuration reload on SIGHUP, with the real binary: a valid file replaces accounts and
//! targets without dropping work in flight; an invalid one is refused, said so in one clear log
//! line, and the old configuration keeps routing.

use std::time::Duration;

use wechat_fanout::config::Mode;
use wechat_fanout::store::JobState;
use wechat_fanout::wechat::Kind;

use super::{post_to_binary, run_command, write_binary_config};
use crate::support::{
    Binary, JobRow, StoreView, Target, Wx, eventually_async, free_addr, jobs, no_jobs_left,
    text_xml,
};

/// A new text callback to `main`, which must be answered `success`; returns its body.
async fn post(listen: std::net::SocketAddr, wx: &Wx, text: &str) -> String {
    let sealed = wx.seal(&text_xml(text));
    let answer = post_to_binary(listen, &sealed).await;
    assert_eq!(answer, (200, "success".to_owned()));
    sealed.body
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// The incident: a new consumer (`b`) must start getting callbacks without a restart. The
/// operator adds it to the file and sends SIGHUP while a delivery to the slow `a` is in flight:
/// the reload is logged, that delivery still completes (once), and new callbacks reach both.
/// Then a botched edit (a TOML syntax error, then a primary that names no target) is refused
/// with a log line naming the problem; the process keeps running on the last good config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_valid_config_and_refuses_an_invalid_one() {
    let a = Target::start(200).await;
    a.set_delay(Duration::from_millis(1500));
    let b = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Safe);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let only_a = format!(
        "{}{}",
        wx.account("main", ""),
        Wx::target("a", &a.url("/a"), "")
    );
    let config = write_binary_config(dir.path(), listen, &only_a);
    let text = std::fs::read_to_string(&config).unwrap();
    let mut binary = Binary::serve(&config, listen, &dir.path().join("serve.log")).await;
    binary.wait_listening().await;

    let in_flight = post(listen, &wx, "in flight during the reload").await;
    a.wait_for(1).await;

    let with_b = format!("{text}{}", Wx::target("b", &b.url("/b"), ""));
    std::fs::write(&config, &with_b).unwrap();
    binary.hangup();
    let log = binary
        .wait_log("the reload", |log| log.contains("configuration reloaded"))
        .await;
    assert!(!log.contains("take effect only after a restart"), "{log}");

    // The delivery that was in flight when the workers were replaced completes and is recorded.
    let stored = StoreView::admin_of(&config);
    no_jobs_left(&stored, "the in-flight delivery recorded").await;
    assert_eq!(a.received()[0].body, in_flight.as_bytes());
    a.set_delay(Duration::ZERO);

    let after = post(listen, &wx, "after the reload").await;
    assert_eq!(a.wait_for(2).await[1].body, after.as_bytes());
    assert_eq!(b.wait_for(1).await[0].body, after.as_bytes());
    no_jobs_left(&stored, "both deliveries recorded").await;
    assert_eq!(a.count(), 2, "no delivery was repeated: {:?}", a.received());

    // Botched edits: each is refused with the reason, and the process keeps running.
    let botched = [
        (
            format!("{with_b}\n[[accounts.targets]\n"),
            "TOML parse error",
        ),
        (
            with_b.replace("mode = \"safe\"", "mode = \"safe\"\nprimary = \"nobody\""),
            "accounts[0].primary",
        ),
    ];
    for (n, (bad, reason)) in botched.iter().enumerate() {
        std::fs::write(&config, bad).unwrap();
        binary.hangup();
        let log = binary
            .wait_log("the reload refused", |log| {
                count(log, "configuration reload refused, keeping the current one") == n + 1
            })
            .await;
        let line = log
            .lines()
            .filter(|l| l.contains("configuration reload refused"))
            .nth(n)
            .unwrap();
        assert!(line.contains("ERROR"), "{line}");
        assert!(line.contains(reason), "the line names the problem: {line}");
        assert!(line.contains(&*config.to_string_lossy()), "{line}");
        assert_eq!(count(&log, "configuration reloaded"), 1, "{log}");
        assert!(binary.is_running(), "{log}");

        // The last good config (a and b) still routes.
        let still = post(listen, &wx, &format!("after botched edit {n}")).await;
        assert_eq!(a.wait_for(3 + n).await[2 + n].body, still.as_bytes());
        assert_eq!(b.wait_for(2 + n).await[1 + n].body, still.as_bytes());
    }

    binary.terminate();
    let (status, _) = binary.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", binary.log());
}

/// A reload sent the moment the WeChat port answers, as a deploy script that restarts and then
/// reloads does: SIGHUP's default action is to end the process, so the handler must be in place
/// before the proxy is reachable, and the reload must happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_right_after_start_reloads_instead_of_killing_the_process() {
    let a = Target::start(200).await;
    let b = Target::start(200).await;
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let only_a = format!(
        "{}{}",
        wx.account("main", ""),
        Wx::target("a", &a.url("/a"), "")
    );
    let config = write_binary_config(dir.path(), listen, &only_a);
    let text = std::fs::read_to_string(&config).unwrap();
    // The file already names b when the process starts; the reload reads it again.
    std::fs::write(
        &config,
        format!("{text}{}", Wx::target("b", &b.url("/b"), "")),
    )
    .unwrap();
    let mut binary = Binary::spawn(&config, &dir.path().join("serve.log"), &[], &[]);
    // Not a poll every 20 ms: the signal goes out the moment the port opens.
    binary.wait_for_port(listen, Duration::ZERO).await;
    binary.hangup();

    binary
        .wait_log("the reload", |log| log.contains("configuration reloaded"))
        .await;
    assert!(binary.is_running(), "{}", binary.log());
    let sent = post(listen, &wx, "after an early reload").await;
    assert_eq!(b.wait_for(1).await[0].body, sent.as_bytes());
    assert_eq!(a.wait_for(1).await[0].body, sent.as_bytes());
}

/// Jobs waiting in a target's handoff when its worker is replaced are not stranded in flight:
/// the old worker gives them back to the store and the new one delivers each of them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_jobs_waiting_for_a_slow_target_delivers_each_once() {
    let a = Target::start(200).await;
    a.set_delay(Duration::from_millis(700));
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let account = format!(
        "{}{}",
        wx.account("main", ""),
        Wx::target("a", &a.url("/a"), "max_concurrency = 1")
    );
    let config = write_binary_config(dir.path(), listen, &account);
    let mut binary = Binary::serve(&config, listen, &dir.path().join("serve.log")).await;
    binary.wait_listening().await;

    let mut sent = Vec::new();
    for n in 0..5 {
        sent.push(post(listen, &wx, &format!("queued {n}")).await);
    }
    a.wait_for(1).await; // one in flight, the others waiting behind max_concurrency = 1
    binary.hangup();
    binary
        .wait_log("the reload", |log| log.contains("configuration reloaded"))
        .await;
    a.set_delay(Duration::ZERO);

    no_jobs_left(&StoreView::admin_of(&config), "every job delivered").await;
    let mut got: Vec<Vec<u8>> = a.received().into_iter().map(|r| r.body.to_vec()).collect();
    got.sort();
    let mut want: Vec<Vec<u8>> = sent.into_iter().map(String::into_bytes).collect();
    want.sort();
    assert_eq!(got, want, "each callback exactly once");
}

/// Target `b` at `addr`, which is down: after its first refused attempt, its job waits a
/// minute for the next one, so it is certainly pending (not in flight) when `b` is retired.
fn retiring_target(addr: std::net::SocketAddr) -> String {
    Wx::target(
        "b",
        &format!("http://{addr}/b"),
        "max_attempts = 100\nbackoff_initial_ms = 60000\nbackoff_max_ms = 60000",
    )
}

/// Waits for `b`'s job to be pending after one refused attempt; returns it.
async fn refused_once(view: &StoreView) -> JobRow {
    eventually_async("b's job pending after a refused attempt", || async {
        jobs(view)
            .await
            .into_iter()
            .find(|j| j.target == "b" && j.attempts == 1 && j.state == JobState::Pending)
    })
    .await
}

/// `log` warns about `b`'s one retired job, and that job (`id`) is the store's only one, dead,
/// with the reason.
async fn assert_retired(log: &str, view: &StoreView, id: i64) {
    let warning = log
        .lines()
        .find(|l| l.contains("no longer configured are now dead letters"))
        .unwrap_or_else(|| panic!("a warning names the retired target's jobs: {log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("target=\"b\""), "{warning}");
    assert!(warning.contains("jobs=1"), "{warning}");
    let buried = jobs(view).await;
    assert_eq!(buried.len(), 1, "{buried:?}");
    assert_eq!((buried[0].id, buried[0].state), (id, JobState::Dead));
    assert_eq!(
        buried[0].last_error.as_deref(),
        Some("target is no longer configured")
    );
}

/// The incident: a consumer (`b`) is retired, taken out of the file while it is down with a
/// callback queued for it. Its pending job becomes a dead letter that says why, named in a
/// warning, instead of waiting forever for a worker that no longer exists. Replaying it is
/// refused while `b` is not configured; once `b` is back in the file, the replay delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_target_leaves_its_pending_jobs_as_dead_letters() {
    let a = Target::start(200).await;
    let b_addr = free_addr();
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let b = retiring_target(b_addr);
    let account = format!(
        "{}{}{b}",
        wx.account("main", ""),
        Wx::target("a", &a.url("/a"), "")
    );
    let config = write_binary_config(dir.path(), listen, &account);
    let with_b = std::fs::read_to_string(&config).unwrap();
    let mut binary = Binary::serve(&config, listen, &dir.path().join("serve.log")).await;
    binary.wait_listening().await;

    let sent = post(listen, &wx, "for a consumer about to be retired").await;
    a.wait_for(1).await;
    let stored = StoreView::admin_of(&config);
    let waiting = refused_once(&stored).await;

    std::fs::write(&config, with_b.replace(&b, "")).unwrap();
    binary.hangup();
    let log = binary
        .wait_log("the reload", |log| log.contains("configuration reloaded"))
        .await;
    assert_retired(&log, &stored, waiting.id).await;

    let id = waiting.id.to_string();
    let replay = ["replay", id.as_str()];
    // Exit 1: what was asked for was not replayed, which a script must see.
    let not_replayed = run_command(&config, "dead-letters", &replay).await;
    assert_eq!(not_replayed.code, Some(1), "{not_replayed:#?}");
    assert_eq!(
        not_replayed.stdout,
        "replayed 0\nnot replayed 1: their targets are not configured\n"
    );
    assert_eq!(
        jobs(&stored).await[0].state,
        JobState::Dead,
        "still a dead letter"
    );

    let b_back = Target::start_on(b_addr, 200).await;
    std::fs::write(&config, &with_b).unwrap();
    binary.hangup();
    binary
        .wait_log("the second reload", |log| {
            log.matches("configuration reloaded").count() == 2
        })
        .await;
    assert_eq!(
        run_command(&config, "dead-letters", &replay).await.ok(),
        "replayed 1\n"
    );
    let got = b_back.wait_for(1).await;
    assert_eq!(got[0].body, sent.as_bytes());
    assert_eq!(got[0].delivery(), waiting.id, "the same delivery");
    no_jobs_left(&stored, "the replayed job delivered").await;
}

/// The same at start: a target taken out of the file while the proxy was stopped leaves its
/// pending job as a dead letter, with the warning, when the proxy starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_removed_while_stopped_leaves_its_pending_jobs_as_dead_letters() {
    let wx = Wx::new(Kind::OfficialAccount, Mode::Plaintext);
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let b = retiring_target(free_addr());
    let account = format!("{}{b}", wx.account("main", ""));
    let config = write_binary_config(dir.path(), listen, &account);
    let with_b = std::fs::read_to_string(&config).unwrap();
    let mut first = Binary::serve(&config, listen, &dir.path().join("first.log")).await;
    first.wait_listening().await;
    post(listen, &wx, "queued for b").await;
    let stored = StoreView::admin_of(&config);
    let waiting = refused_once(&stored).await;
    first.terminate();
    assert_eq!(first.wait_exit().await.0.code(), Some(0), "{}", first.log());

    std::fs::write(&config, with_b.replace(&b, "")).unwrap();
    let mut second = Binary::serve(&config, listen, &dir.path().join("second.log")).await;
    let log = second
        .wait_log("the warning", |log| {
            log.contains("no longer configured are now dead letters")
        })
        .await;
    assert_retired(&log, &stored, waiting.id).await;
}
